"""fuse_attention: the SDPA-export and classic-export attention patterns become one
com.microsoft.MultiHeadAttention with the same outputs; what does not match is left as it was, with
the reason; the fused kernel's MACs are the two MatMuls it replaced."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import run
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress.graph.costs import count_costs
from onnxslim_compress.passes.context import Context
from onnxslim_compress.passes.eliminate_dead import EliminateDead
from onnxslim_compress.passes.fuse_attention import FuseAttention
from onnxslim_compress.runtime.session import Target, shapes_from_run

B, S, H, D = 2, 8, 4, 8
HID = H * D


def _attention(*, sdpa: bool = True, k_two_transposes: bool = False, score_div: bool = False,
               leak_heads: bool = False, opset: int = 17) -> onnx.ModelProto:
    """One self-attention block as exporters write it. sdpa: the torch SDPA export (scale Mul on Q
    and on K, a [B, 1, S, T] -inf mask built with Where/Expand, the IsNaN guard, a no-op Reshape of
    the context); else the classic export ([B, 1, 1, T] additive (1 - mask) * -10000 key mask)."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(op, ins, out, **kw):
        nodes.append(helper.make_node(op, ins, [out], name=out, **kw))
        return out

    x = "x"
    heads = const("heads_shape", np.array([0, 0, H, D], dtype=np.int64))
    proj = {}
    for p in "qkv":
        w = const(f"W{p}", (rng.standard_normal((HID, HID)) / np.sqrt(HID)).astype(np.float32))
        bb = const(f"b{p}", rng.standard_normal(HID).astype(np.float32) * 0.1)
        proj[p] = node("Add", [bb, node("MatMul", [x, w], f"{p}_mm")], f"{p}_proj")
    qh = node("Transpose", [node("Reshape", [proj["q"], heads], "q_split")], "q_heads", perm=[0, 2, 1, 3])
    if k_two_transposes:
        kh = node("Transpose", [node("Reshape", [proj["k"], heads], "k_split")], "k_heads0", perm=[0, 2, 1, 3])
        kt = node("Transpose", [kh], "k_heads", perm=[0, 1, 3, 2])
    else:
        kt = node("Transpose", [node("Reshape", [proj["k"], heads], "k_split")], "k_heads", perm=[0, 2, 3, 1])
    vh = node("Transpose", [node("Reshape", [proj["v"], heads], "v_split")], "v_heads", perm=[0, 2, 1, 3])
    if leak_heads:
        nodes.append(helper.make_node("Identity", [qh], ["q_heads_out"], name="leak"))
    if sdpa:
        c = const("c", np.array(D ** -0.25, dtype=np.float32))
        qh, kt = node("Mul", [qh, c], "q_scaled"), node("Mul", [kt, c], "k_scaled")
    scores = node("MatMul", [qh, kt], "scores")
    if score_div:
        scores = node("Div", [scores, const("sqrt_d", np.array(np.sqrt(D), dtype=np.float32))], "scores_scaled")
    elif not sdpa:
        scores = node("Mul", [scores, const("inv_sqrt_d", np.array(D ** -0.5, dtype=np.float32))], "scores_scaled")
    keep = node("Cast", [node("Unsqueeze", ["mask", const("ax12", np.array([1, 2], dtype=np.int64))], "mask4")], "keep", to=TensorProto.BOOL)
    if sdpa:
        full = node("Expand", [keep, const("bss", np.array([1, 1, S, 1], dtype=np.int64))], "keep_full")
        bias = node("Where", [full, const("zero", np.array([0.0], dtype=np.float32)),
                              const("ninf", np.array([-np.inf], dtype=np.float32))], "bias")
    else:
        m4 = node("Cast", [keep], "mask_f", to=TensorProto.FLOAT)
        inv = node("Sub", [const("one", np.array(1.0, dtype=np.float32)), m4], "inv")
        bias = node("Mul", [inv, const("big", np.array(-10000.0, dtype=np.float32))], "bias")
    probs = node("Softmax", [node("Add", [scores, bias], "scores_masked")], "probs", axis=-1)
    if sdpa:
        nan = node("IsNaN", [probs], "probs_nan")
        probs = node("Where", [nan, const("z", np.array([0.0], dtype=np.float32)), probs], "probs_safe")
    ctx = node("MatMul", [probs, vh], "ctx")
    if sdpa:
        ctx = node("Reshape", [ctx, const("same", np.array([0, -1, S, D], dtype=np.int64))], "ctx_same")
    merged = node("Reshape", [node("Transpose", [ctx], "ctx_t", perm=[0, 2, 1, 3]),
                              const("merge", np.array([0, 0, HID], dtype=np.int64))], "ctx_merged")
    wo = const("Wo", (rng.standard_normal((HID, HID)) / np.sqrt(HID)).astype(np.float32))
    node("MatMul", [merged, wo], "y")
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, S, HID])]
    if leak_heads:
        outs.append(helper.make_tensor_value_info("q_heads_out", TensorProto.FLOAT, [B, H, S, D]))
    g = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, S, HID]),
                                           helper.make_tensor_value_info("mask", TensorProto.INT64, [B, S])], outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _feeds() -> dict[str, np.ndarray]:
    mask = np.ones((B, S), dtype=np.int64)
    mask[1, 5:] = 0  # the second sequence is padded
    return {"x": np.random.default_rng(1).standard_normal((B, S, HID)).astype(np.float32), "mask": mask}


def _fuse(m: onnx.ModelProto, kind: str = "cpu"):
    res = FuseAttention()(m, Context(target=Target(kind)))
    return res, EliminateDead()(res.model, Context()).model


@pytest.mark.parametrize("kw", [{}, {"sdpa": False}, {"k_two_transposes": True, "sdpa": False, "score_div": True},
                                {"opset": 13}])
def test_attention_exports_fuse_to_one_kernel_with_the_same_outputs(kw):
    m = _attention(**kw)
    res, fused = _fuse(m)
    ops = [n.op_type for n in fused.graph.node]
    assert res.stats["fused"] == 1 and ops.count("MultiHeadAttention") == 1
    assert "Softmax" not in ops and "Transpose" not in ops and "IsNaN" not in ops
    mha = next(n for n in fused.graph.node if n.op_type == "MultiHeadAttention")
    a = {x.name: helper.get_attribute_value(x) for x in mha.attribute}
    assert a["num_heads"] == H and a["scale"] == pytest.approx(D ** -0.5, rel=1e-6)
    ref, got = run(m, _feeds())[0], run(fused, _feeds())[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_the_fused_kernel_counts_the_macs_of_the_matmuls_it_replaced():
    m = _attention()
    _, fused = _fuse(m)
    shapes = {"x": [B, S, HID], "mask": [B, S]}
    # onnx's inference does not know the contrib op: the shapes after it are read off a run
    before, after = (count_costs(x, shapes, runner=shapes_from_run).as_dict()["total"]["macs"] for x in (m, fused))
    projections = 4 * B * S * HID * HID
    assert before == after == projections + 2 * B * H * S * S * D


def test_an_intermediate_read_elsewhere_stops_the_fusion_with_the_reason():
    m = _attention(leak_heads=True)
    res, _ = _fuse(m)
    assert res.stats["fused"] == 0 and not res.modified
    assert "q_heads" in res.stats["skipped"][0]["reason"] and "read outside" in res.stats["skipped"][0]["reason"]


def test_tensorrt_target_is_left_unfused():
    res, _ = _fuse(_attention(), kind="tensorrt")
    assert res.stats["fused"] == 0 and "tensorrt" in res.stats["skipped"][0]["reason"]


def test_a_softmax_that_is_not_attention_is_named_and_kept():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])
    m = helper.make_model(helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=-1)], "g", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 17)])
    res = FuseAttention()(m, Context())
    assert res.stats["fused"] == 0 and not res.modified
    assert res.stats["skipped"] == [{"node": "*", "reason": "no Softmax between a score MatMul and a context MatMul"}]


def test_a_fully_padded_sequence_stays_finite_and_the_others_equal():
    """The SDPA export's -inf mask would make the kernel's row NaN where the graph's IsNaN guard gave
    0; the fused model clamps the mask, so the row is finite (the mean of V) and the rest is equal."""
    m = _attention()
    _, fused = _fuse(m)
    feeds = _feeds()
    feeds["mask"][1, :] = 0
    ref, got = run(m, feeds)[0], run(fused, feeds)[0]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-5)


def test_a_model_with_unbound_dims_fuses_without_data():
    """Dims nothing binds count as 1 elsewhere; a sequence of 1 hides the mask's layout, so the
    pass probes unbound dims at PROBE_DIM: `compress model.onnx -o out.onnx` with no data fuses."""
    m = _attention(sdpa=False)
    for vi in [*m.graph.input, *m.graph.output]:
        for d, sym in zip(vi.type.tensor_type.shape.dim, ("batch", "seq"), strict=False):
            d.ClearField("dim_value")
            d.dim_param = sym
    res = FuseAttention()(m, Context())
    assert res.stats["fused"] == 1
    fused = EliminateDead()(res.model, Context()).model
    np.testing.assert_allclose(run(fused, _feeds())[0], run(m, _feeds())[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("ratio", "fused"), [(0.9, 1), (1.0, 0), (1.05, 0)])
def test_the_fusion_is_kept_only_where_it_measures_faster(ratio, fused):
    """The kernel is not faster everywhere (MiniLM-L3's classic export at 128 tokens: a tie), so
    the pass times fused against unfused on the target and keeps the input when it does not win."""
    m = _attention()
    calls = []

    def timer(a, b, feed):
        calls.append((sum(n.op_type == "MultiHeadAttention" for n in a.graph.node),
                      sum(n.op_type == "MultiHeadAttention" for n in b.graph.node), sorted(feed)))
        return ratio

    res = FuseAttention()(m, Context(target=Target("cpu"), timer=timer))
    assert calls == [(0, 1, ["mask", "x"])]  # unfused vs fused, on a generated feed (no calibration data)
    assert res.stats["fused"] == fused and res.modified == bool(fused)
    assert sum(n.op_type == "MultiHeadAttention" for n in res.model.graph.node) == fused
    if not fused:
        assert "not faster" in res.stats["skipped"][-1]["reason"] and res.stats["timed"]["ratio"] == ratio
