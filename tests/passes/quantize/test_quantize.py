"""Quantize pass: placement per target on synthetic graphs, formats, opset upgrade, recovery, ORT runs."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import ctc_head
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress import Context, Target
from onnxslim_compress.errors import RecipeError
from onnxslim_compress.graph.io import clamp_ir_version
from onnxslim_compress.passes import REGISTRY
from onnxslim_compress.passes.quantize.placement import build_units, fuse_hardswish
from onnxslim_compress.passes.quantize.quantize import Quantize, count_integer_kernels
from onnxslim_compress.passes.quantize.sensitivity import smoothquant
from onnxslim_compress.runtime.session import make_session

RNG = np.random.default_rng(0)


def _w(inits: list, name: str, *shape: int, s: float = 0.2) -> str:
    """A weight seeded by its name, so every build of a test graph has the same weights."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    inits.append(numpy_helper.from_array((rng.standard_normal(shape) * s).astype(np.float32), name))
    return name


def _model(nodes, inputs, outputs, inits, opset=13) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "t", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7
    onnx.checker.check_model(m)
    return m


def conv_net(opset: int = 13) -> onnx.ModelProto:
    """conv-relu-conv + residual Add, MaxPool, 1x1 conv, Concat, GlobalAveragePool, Flatten, Gemm."""
    i: list = []
    nodes = [
        helper.make_node("Conv", ["x", _w(i, "w1", 8, 3, 3, 3), _w(i, "b1", 8)], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", _w(i, "w2", 8, 8, 3, 3, s=0.1), _w(i, "b2", 8)], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Add", ["c2", "r1"], ["a1"], name="add1"),
        helper.make_node("MaxPool", ["a1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
        helper.make_node("Conv", ["p1", _w(i, "w3", 8, 8, 1, 1), _w(i, "b3", 8)], ["c3"], name="conv3"),
        helper.make_node("Concat", ["p1", "c3"], ["cat"], axis=1, name="cat1"),
        helper.make_node("GlobalAveragePool", ["cat"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["fl"], name="flat"),
        helper.make_node("Gemm", ["fl", _w(i, "wf", 10, 16), _w(i, "bf", 10)], ["y"], transB=1, name="fc"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10]),
                   helper.make_tensor_value_info("cat", TensorProto.FLOAT, [1, 16, 8, 8])], i, opset)


def concat_net() -> onnx.ModelProto:
    """Two convs -> Concat -> conv: TensorRT wants one scale across the Concat."""
    i: list = []
    nodes = [
        helper.make_node("Conv", ["x", _w(i, "wa", 4, 3, 1, 1)], ["a"], name="conva"),
        helper.make_node("Conv", ["x", _w(i, "wb", 4, 3, 1, 1, s=2.0)], ["b"], name="convb"),
        helper.make_node("Concat", ["a", "b"], ["cat"], axis=1, name="cat"),
        helper.make_node("Conv", ["cat", _w(i, "wc", 2, 8, 1, 1)], ["y"], name="convc"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], i)


def matmul_net(outlier: bool = False) -> onnx.ModelProto:
    """MatMul with batch dims [2, 4, 16] x [16, 32], then attention-like activation x activation MatMul."""
    i: list = []
    nodes = [
        helper.make_node("MatMul", ["x", _w(i, "wq", 16, 32)], ["h"], name="proj"),
        helper.make_node("Add", ["h", _w(i, "bq", 32)], ["hb"], name="bias"),
        helper.make_node("Transpose", ["hb"], ["ht"], perm=[0, 2, 1], name="tr"),
        helper.make_node("MatMul", ["hb", "ht"], ["y"], name="scores"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 4])], i)


def _calib(shape, n=16, outlier=False):
    out = []
    for _ in range(n):
        x = RNG.standard_normal(shape).astype(np.float32)
        if outlier:
            x[..., 3] *= 30.0
        out.append({"x": x})
    return out


def _ctx(shape, **kw):
    return Context(target=Target("cpu", threads=1), calib=_calib(shape, **kw))


def _cos(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _run_all(model, feed, target=None):
    sess = make_session(model, target or Target("cpu"))
    return sess.run(None, feed)


def _ops(model):
    out: dict[str, int] = {}
    for n in model.graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


def _q_inputs(model) -> set[str]:
    return {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_registered_and_params_validated():
    assert REGISTRY["quantize"] is Quantize
    with pytest.raises(RecipeError):
        Quantize(mode="int3")
    with pytest.raises(RecipeError):
        Quantize(min_fidelity="psnr=30")
    with pytest.raises(RecipeError):
        Quantize(block_size=48)


def test_cpu_placement_and_integer_kernels():
    m = conv_net()
    ctx = _ctx((1, 3, 16, 16))
    res = Quantize(calibration="minmax")(m, ctx)
    q = res.model
    qin = _q_inputs(q)
    # Relu folded: Q after the Relu, not after conv1; MaxPool output shares the Add's scale
    assert "r1" in qin and "c1" not in qin
    assert {"x", "c2", "a1", "p1", "c3", "cat", "gap", "fl"} <= qin
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    assert inits["a1__scale"] == inits["p1__scale"] and inits["a1__zp"] == inits["p1__zp"]
    assert inits["x__zp"].dtype == np.uint8
    # every consumer has its own DequantizeLinear: r1 feeds conv2 and add1
    assert sum(1 for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "r1__q") == 2
    # S8 per-channel weights, int32 bias on the CPU
    w = [t for n, t in inits.items() if n.startswith("w2__w")]
    qmax = {7: 63, 8: 127}[res.stats["weight_bits"]]
    assert w and w[0].dtype == np.int8 and np.abs(w[0]).max() == qmax
    assert any(n.startswith("b2__b") and t.dtype == np.int32 for n, t in inits.items())
    # hand count: 3 QLinearConv + QLinearAdd + QLinearGlobalAveragePool + QGemm; the Concat stays float
    # because its output is also a graph output (ORT fuses a node unit only when Q is the sole consumer)
    kern = res.stats["integer_kernels_by_op"]
    assert kern == {"QLinearConv": 3, "QLinearAdd": 1, "QLinearGlobalAveragePool": 1, "QGemm": 1}
    assert res.stats["integer_kernels"] == 6 == sum(count_integer_kernels(q).values())
    feed = _calib((1, 3, 16, 16), 1)[0]
    ref, got = _run_all(m, feed), _run_all(q, feed)
    assert len(got) == 2  # ORT runs every output
    for r, g in zip(ref, got, strict=True):
        assert _cos(r, g) > 0.99


def test_reduced_range_integer_kernels_match_the_qdq_simulation():
    # without VNNI, ORT's U8S8 kernels saturate int16 pair sums; 7-bit weights keep the fused
    # integer result equal to the DequantizeLinear simulation (checked here on every CPU)
    m = conv_net()
    res = Quantize(reduce_range=True, calibration="minmax")(m, _ctx((1, 3, 16, 16)))
    assert res.stats["weight_bits"] == 7
    feed = _calib((1, 3, 16, 16), 1)[0]
    fused = _run_all(res.model, feed, Target("cpu", opt_level="all"))[0]
    simulated = _run_all(res.model, feed, Target("cpu", opt_level="basic"))[0]
    assert _cos(fused, simulated) > 0.9999


@pytest.mark.parametrize("opset", [9, 11])
def test_old_opsets_are_upgraded(opset):
    m = conv_net(opset)
    res = Quantize()(m, _ctx((1, 3, 16, 16)))
    assert res.stats["opset_in"] == opset and res.stats["opset_out"] == 14  # 13 for per-axis DQ, 14 for HardSwish
    onnx.checker.check_model(res.model)
    feed = _calib((1, 3, 16, 16), 1)[0]
    assert _cos(_run_all(m, feed)[0], _run_all(res.model, feed)[0]) > 0.99
    assert res.stats["integer_kernels"] > 0


def test_tensorrt_placement_residual_concat_no_outputs():
    m = conv_net()
    res = Quantize(target="tensorrt")(m, _ctx((1, 3, 16, 16)))
    qin = _q_inputs(res.model)
    # inputs of weighted ops + the identity branch (r1) of the residual Add; no conv outputs, no graph outputs
    assert qin == {"x", "r1", "p1", "fl"}
    inits = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    assert all(inits[f"{t}__zp"] == 0 and inits[f"{t}__zp"].dtype == np.int8 for t in qin)
    assert "bf" in inits  # TensorRT keeps the bias float

    m2 = concat_net()
    res2 = Quantize(target="tensorrt", calibration="minmax")(m2, _ctx((1, 3, 8, 8)))
    qin2 = _q_inputs(res2.model)
    assert qin2 == {"x", "a", "b", "cat"}
    inits2 = {t.name: numpy_helper.to_array(t) for t in res2.model.graph.initializer}
    assert inits2["a__scale"] == inits2["b__scale"] == inits2["cat__scale"]  # one scale across the Concat
    feed = _calib((1, 3, 8, 8), 1)[0]
    assert _cos(_run_all(m2, feed)[0], _run_all(res2.model, feed)[0]) > 0.99


def test_fp8_tensorrt_format():
    res = Quantize(target="tensorrt", mode="fp8")(conv_net(), _ctx((1, 3, 16, 16)))
    assert res.stats["opset_out"] >= 19
    types = {t.data_type for t in res.model.graph.initializer if t.name.endswith("__zp")}
    assert types == {TensorProto.FLOAT8E4M3FN}
    onnx.checker.check_model(res.model)
    feed = _calib((1, 3, 16, 16), 1)[0]
    got = _run_all(res.model, feed, Target("cpu", opt_level="basic"))  # TensorRT runs it; ORT CPU checks the math
    assert _cos(_run_all(conv_net(), feed)[0], got[0]) > 0.99


def test_matmul_with_batch_dims_and_activation_matmul():
    m = matmul_net()
    res = Quantize(calibration="minmax", activations="static")(m, _ctx((2, 4, 16)))
    units, _ = build_units(m, "cpu", {"x", "h", "hb", "ht", "y"}, {t.name: numpy_helper.to_array(t) for t in m.graph.initializer})
    proj = next(u for u in units if u.node == "proj")
    assert proj.weights == {1: 1} and proj.acts == ["x"]  # per output column of the [16, 32] weight
    scores = next(u for u in units if u.node == "scores")
    assert scores.acts == ["hb", "ht"] and not scores.weights
    assert res.stats["integer_kernels"] >= 2
    feed = _calib((2, 4, 16), 1)[0]
    assert _cos(_run_all(m, feed)[0], _run_all(res.model, feed)[0]) > 0.99


def test_already_quantized_is_skipped():
    first = Quantize()(conv_net(), _ctx((1, 3, 16, 16))).model
    res = Quantize()(first, _ctx((1, 3, 16, 16)))
    assert res.modified is False and "already quantized" in res.stats["skipped"][0]["reason"]


def test_exclude_keeps_layer_float():
    res = Quantize(exclude=["^conv2$"])(conv_net(), _ctx((1, 3, 16, 16)))
    assert res.stats["excluded"] == ["conv2"]
    conv2 = next(n for n in res.model.graph.node if n.name == "conv2")
    assert conv2.input[1] == "w2"  # float weight


def test_min_fidelity_keeps_sensitive_layers_float():
    m = conv_net()
    res = Quantize(min_fidelity="cosine=0.99995")(m, _ctx((1, 3, 16, 16)))
    table = res.stats["layer_table"]
    kept = len(res.stats["kept_float"])
    assert len(table) == res.stats["quantized_units"] + kept  # quantized_units: those really int8
    assert res.stats["float_units"]["sensitive (fidelity goal)"] == kept
    assert res.stats["left_float"] == sum(res.stats["float_units"].values()) >= kept
    assert [r["sensitivity"] for r in table] == sorted((r["sensitivity"] for r in table), reverse=True)
    assert res.stats["fidelity"]["cosine"] >= 0.99995
    assert sum(r["float"] for r in table) == len(res.stats["kept_float"]) >= 1


def test_bias_correction_reduces_channel_mean_error():
    m = conv_net()
    feeds = _calib((1, 3, 16, 16), 32)
    ctx = Context(target=Target("cpu", threads=1), calib=feeds)
    ref = np.stack([_run_all(m, f)[1] for f in feeds])
    errs = []
    for bc in (False, True):
        q = Quantize(bias_correction=bc, calibration="minmax")(m, ctx).model
        got = np.stack([_run_all(q, f)[1] for f in feeds])
        errs.append(np.abs((got - ref).mean(axis=(0, 1, 3, 4))).mean())
    assert errs[1] < errs[0]


def test_smoothquant_is_exact_before_quantization():
    m = matmul_net()
    feeds = _calib((2, 4, 16), 8, outlier=True)
    units, _ = build_units(m, "cpu", {"x", "h", "hb", "ht", "y"}, {t.name: numpy_helper.to_array(t) for t in m.graph.initializer})
    sm, n = smoothquant(m, units, feeds, 0.5)
    assert n == 1 and any(node.op_type == "Mul" for node in sm.graph.node)
    np.testing.assert_allclose(_run_all(sm, feeds[0])[0], _run_all(m, feeds[0])[0], rtol=1e-4, atol=1e-4)
    res = Quantize(smoothquant=0.5)(m, Context(calib=feeds))
    assert res.stats["smoothquant_activations"] == 1
    assert _cos(_run_all(m, feeds[0])[0], _run_all(res.model, feeds[0])[0]) > 0.99


def test_int4_weight_only_blocks():
    i: list = []
    nodes = [helper.make_node("MatMul", ["x", _w(i, "w", 64, 32)], ["y"], name="mm")]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 64])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 32])], i)
    res = Quantize(mode="int4-weight", block_size=32)(m, Context())
    assert res.stats["opset_out"] >= 21
    dq = next(n for n in res.model.graph.node if n.op_type == "DequantizeLinear")
    assert {a.name: helper.get_attribute_value(a) for a in dq.attribute} == {"axis": 0, "block_size": 32}
    inits = {t.name: t for t in res.model.graph.initializer}
    assert inits[dq.input[0]].data_type == TensorProto.INT4 and list(inits[dq.input[1]].dims) == [2, 32]
    feed = {"x": RNG.standard_normal((3, 64)).astype(np.float32)}
    assert _cos(_run_all(m, feed)[0], _run_all(res.model, feed)[0]) > 0.99
    assert count_integer_kernels(res.model).get("MatMulNBits") == 1  # ORT fuses DQ(int4 blocks) -> MatMul


def test_fp16_keeps_io_fp32_and_sensitive_ops():
    i: list = []
    nodes = [
        helper.make_node("MatMul", ["x", _w(i, "w", 16, 16)], ["h"], name="mm"),
        helper.make_node("Add", ["h", _w(i, "b", 16)], ["hb"], name="add"),
        helper.make_node("LayerNormalization", ["hb", _w(i, "g", 16), _w(i, "beta", 16)], ["y"], axis=-1, epsilon=1e-12, name="ln"),
    ]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16])], i, opset=17)
    res = Quantize(mode="fp16")(m, Context())
    q = res.model
    assert q.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert q.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert res.stats["fp16_nodes"] == 2 and res.stats["kept_fp32"][0]["node"] == "ln"
    inits = {t.name: t.data_type for t in q.graph.initializer}
    assert inits["w__fp16"] == TensorProto.FLOAT16 and inits["g"] == TensorProto.FLOAT
    assert _ops(q)["Cast"] == 2  # input -> fp16 before the MatMul, Add output -> fp32 before the LayerNorm
    feed = {"x": RNG.standard_normal((2, 16)).astype(np.float32)}
    np.testing.assert_allclose(_run_all(q, feed)[0], _run_all(m, feed)[0], atol=2e-2)


def test_int8_for_cuda_becomes_fp16_with_a_note():
    res = Quantize(mode="int8", target="cuda")(conv_net(), _ctx((1, 3, 16, 16)))
    assert "fp16" in res.stats["note"] and res.stats["fp16_nodes"] > 0
    assert not any(n.op_type == "QuantizeLinear" for n in res.model.graph.node)


def test_hardswish_chain_is_fused_exactly():
    i = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("three", 3.0), ("zero", 0.0), ("six", 6.0))]
    nodes = [
        helper.make_node("Add", ["x", "three"], ["a"]),
        helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
        helper.make_node("Mul", ["x", "c"], ["m"]),
        helper.make_node("Div", ["m", "six"], ["y"]),
    ]
    m = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])], i, opset=14)
    fused = onnx.ModelProto()
    fused.CopyFrom(m)
    assert fuse_hardswish(fused) == 1 and _ops(fused) == {"HardSwish": 1}
    feed = {"x": np.linspace(-8, 8, 64).astype(np.float32)}
    np.testing.assert_allclose(_run_all(fused, feed)[0], _run_all(m, feed)[0], atol=1e-6)
    # a chain whose intermediate has a second reader is left alone
    m.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [64]))
    assert fuse_hardswish(m) == 0


@pytest.mark.slow
def test_bundled_digits_model_keeps_accuracy_with_integer_kernels():
    root = Path(__file__).resolve().parents[3] / "models"
    if not (root / "digits_cnn.onnx").exists():
        pytest.skip("models/digits_cnn.onnx not built")
    m = onnx.load(str(root / "digits_cnn.onnx"))
    calib = np.load(root / "digits_calib.npz")["input"][:64]
    test = np.load(root / "digits_test.npz")["input"]
    labels = np.load(root / "digits_test_labels.npy")
    res = Quantize()(m, Context(target=Target("cpu", threads=1), calib=[{"input": x} for x in calib]))
    assert res.stats["integer_kernels_by_op"]["QLinearConv"] == 11  # every Conv of the model
    sf, sq = make_session(m, Target("cpu")), make_session(res.model, Target("cpu"))
    acc_f = np.mean([sf.run(None, {"input": x})[0].argmax() == y for x, y in zip(test, labels, strict=True)])
    acc_q = np.mean([sq.run(None, {"input": x})[0].argmax() == y for x, y in zip(test, labels, strict=True)])
    assert acc_q >= acc_f - 0.005


def test_embedding_table_stored_as_uint8_and_run_as_uint8_gather(tmp_path):
    """CPU int8 stores a large Gather table as uint8; ORT fuses DQ->Gather->Q into a uint8 Gather."""
    rng = np.random.default_rng(0)
    table = (rng.standard_normal((400, 256)) * 0.1).astype(np.float32)  # 102400 elements
    w = (rng.standard_normal((256, 8)) * 0.1).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed"),
         helper.make_node("MatMul", ["e", "w"], ["y"], name="proj")],
        "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 8])],
        [numpy_helper.from_array(table, "emb"), numpy_helper.from_array(w, "w")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    feeds = [{"ids": rng.integers(0, 400, (1, 6)).astype(np.int64)} for _ in range(8)]
    res = Quantize()(m, Context(calib=feeds, target=Target(threads=1)))
    row = next(r for r in res.stats["layers"] if r["node"] == "embed")
    assert row["precision"] == "uint8 table" and row["elements"] == 102400
    tables = {t.name: t for t in res.model.graph.initializer}
    assert "emb" not in tables and any(t.data_type == TensorProto.UINT8 and list(t.dims) == [400, 256] for t in tables.values())
    # ORT's optimized graph gathers from the uint8 table (no full-table DequantizeLinear left before it)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")

    clamp_ir_version(res.model)
    sess = ort.InferenceSession(res.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    opt = onnx.load(str(tmp_path / "opt.onnx"))
    producer = {o: n for n in opt.graph.node for o in n.output}
    gather = next(n for n in opt.graph.node if n.op_type == "Gather")
    assert gather.input[0] not in producer  # reads the uint8 initializer directly
    ref = (table[feeds[0]["ids"]] @ w)
    out = sess.run(None, feeds[0])[0]
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()


def test_calibration_statistics_are_shared_through_the_context_cache(monkeypatch):
    """Two quantize runs that differ only in the calibration method, on one Context: one streamed
    calibration run (the histograms come from the cache the second time), and each model equals
    the one a fresh Context builds."""
    from builders import random_input, resnet_like

    from onnxslim_compress.passes.context import Context
    from onnxslim_compress.passes.quantize import calibration as cal_mod
    from onnxslim_compress.passes.quantize.quantize import Quantize

    model = resnet_like()
    calib = [{"input": random_input((1, 3, 16, 16), seed=s)} for s in range(4)]
    runs = []
    real = cal_mod.collect_histograms
    monkeypatch.setattr(cal_mod, "collect_histograms", lambda *a, **k: runs.append(1) or real(*a, **k))
    shared = Context(calib=calib)
    got = [Quantize(mode="int8", calibration=m)(model, shared).model for m in ("minmax", "entropy")]
    assert len(runs) == 1 and shared.cache.hits == 1
    fresh = [Quantize(mode="int8", calibration=m)(model, Context(calib=calib)).model for m in ("minmax", "entropy")]
    assert len(runs) == 3
    for g, f in zip(got, fresh, strict=True):
        assert g.SerializeToString() == f.SerializeToString()
    assert got[0].SerializeToString() != got[1].SerializeToString()  # the methods really differ


def test_min_fidelity_sequence_keeps_layers_float_until_the_decoded_text_holds():
    """min_fidelity="sequence=1.0": every calibration sample's greedy CTC text equals the float
    model's (counted here by hand), where plain int8 changes some of them."""
    from onnxslim_compress.runtime.metrics import ctc_collapse

    m = ctc_head()
    feeds = [{"x": np.random.default_rng(k).standard_normal((1, 12, 16)).astype(np.float32)} for k in range(16)]
    ctx = Context(target=Target("cpu", threads=1), calib=feeds)

    def texts(model):
        sess = make_session(model, Target("cpu", threads=1))
        return [ctc_collapse(sess.run(None, f)[0][0].argmax(-1)) for f in feeds]

    ref = texts(m)
    plain = Quantize(calibration="minmax", speed_check=False)(m, ctx)
    assert plain.stats["quantized_units"] == 3
    assert sum(a != b for a, b in zip(ref, texts(plain.model), strict=True)) == 4  # 4 of 16 texts change
    res = Quantize(calibration="minmax", speed_check=False, min_fidelity="sequence=1.0")(m, ctx)
    assert res.stats["fidelity"] == {"sequence": 1.0}
    assert texts(res.model) == ref
    assert res.stats["kept_float"] == ["mm2", "mm3"] and res.stats["quantized_units"] == 1


def test_float_share_keeps_the_most_sensitive_share_float():
    """float_share=0.5 with no goal: exactly ceil(0.5 * n) units stay float, and they are the top of
    the sensitivity ranking (the knob the search orders per-layer precision by)."""
    from builders import random_input, resnet_like

    m = resnet_like()
    calib = [{"input": random_input((1, 3, 16, 16), seed=s)} for s in range(4)]

    def ctx():
        return Context(target=Target("cpu", threads=1), calib=calib)

    res = Quantize(calibration="minmax", speed_check=False, float_share=0.5)(m, ctx())
    table = res.stats["layer_table"]
    n = len(table)
    k = -(-n // 2)
    assert n >= 3 and len(res.stats["kept_float"]) == k
    assert sorted(res.stats["kept_float"]) == sorted(r["node"] for r in table[:k])
    assert res.stats["quantized_units"] == n - k
    none = Quantize(calibration="minmax", speed_check=False, float_share=0.0)(m, ctx())
    assert none.stats["quantized_units"] == n and "kept_float" not in none.stats
    with pytest.raises(RecipeError, match="float_share"):
        Quantize(float_share=1.5)


def test_sensitivity_ranking_is_shared_through_the_context_cache(monkeypatch):
    """Two runs on one Context that differ only in what decides how many units stay float rank the
    units once and give the models fresh Contexts give; another calibration method ranks again."""
    from builders import random_input, resnet_like

    from onnxslim_compress.passes.quantize import sensitivity as qs_mod

    model = resnet_like()
    calib = [{"input": random_input((1, 3, 16, 16), seed=s)} for s in range(4)]
    ranks = []
    real = qs_mod.layer_sensitivity
    monkeypatch.setattr(qs_mod, "layer_sensitivity", lambda *a, **k: ranks.append(1) or real(*a, **k))
    shared = Context(target=Target("cpu", threads=1), calib=calib)
    kw = [dict(float_share=0.25), dict(float_share=0.5), dict(min_fidelity="cosine=0.9999")]
    got = [Quantize(calibration="minmax", speed_check=False, **k)(model, shared) for k in kw]
    assert len(ranks) == 1
    fresh = [Quantize(calibration="minmax", speed_check=False, **k)(model, Context(target=Target("cpu", threads=1), calib=calib))
             for k in kw]
    assert len(ranks) == 4
    for g, f in zip(got, fresh, strict=True):
        assert g.model.SerializeToString() == f.model.SerializeToString()
        assert g.stats["layer_table"] == f.stats["layer_table"]
    assert len(got[0].stats["kept_float"]) < len(got[1].stats["kept_float"])
    Quantize(calibration="entropy", speed_check=False, float_share=0.25)(model, shared)
    assert len(ranks) == 5  # the units quantize differently: a new ranking
