"""Pruning a BERT-style FFN (MatMul+Add -> Gelu in Erf form -> MatMul+Add -> residual -> LayerNorm).

The pass's own error figures (per-group error_added, recovery fidelity_before/after) must be the
error the written model really has on its float outputs. MiniLM-L3 echoes its input_ids as an int64
output ('output' = Identity(input_ids)); pooled into one vector with the embeddings, the token ids'
norm (~11 000 against ~48) diluted a real rel_l2 of 0.1 to 0.0004.
"""

from __future__ import annotations

import numpy as np
import onnx
from builders import run
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress.passes import PruneChannels
from onnxslim_compress.passes.context import Context
from onnxslim_compress.runtime.metrics import FidelityAccumulator, pooled_fidelity

B, S, D, H = 2, 6, 16, 64


def _ffn(seed: int = 0) -> onnx.ModelProto:
    """x [B, S, D] -> LN -> FFN (D -> H -> D) + residual -> LN -> y, and ids [B, S] echoed as an output."""
    rng = np.random.default_rng(seed)

    def t(name: str, arr) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(arr, np.float32), name)

    inits = [
        t("ln0_g", rng.random(D) + 0.5), t("ln0_b", rng.standard_normal(D) * 0.1),
        t("w1", rng.standard_normal((D, H)) * 0.3), t("b1", rng.standard_normal(H) * 0.1),
        t("w2", rng.standard_normal((H, D)) * 0.3), t("b2", rng.standard_normal(D) * 0.1),
        t("ln1_g", rng.random(D) + 0.5), t("ln1_b", rng.standard_normal(D) * 0.1),
        t("sqrt2", 1.4142135), t("one", 1.0), t("half", 0.5),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "ln0_g", "ln0_b"], ["a"], name="ln0", axis=-1),
        helper.make_node("MatMul", ["a", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["b1", "h0"], ["h1"], name="fc1_bias"),  # bias first, as torch exports it
        helper.make_node("Div", ["h1", "sqrt2"], ["g0"], name="g_div"),
        helper.make_node("Erf", ["g0"], ["g1"], name="g_erf"),
        helper.make_node("Add", ["g1", "one"], ["g2"], name="g_add"),
        helper.make_node("Mul", ["h1", "g2"], ["g3"], name="g_mul"),
        helper.make_node("Mul", ["g3", "half"], ["h2"], name="g_half"),
        helper.make_node("MatMul", ["h2", "w2"], ["o0"], name="fc2"),
        helper.make_node("Add", ["b2", "o0"], ["o1"], name="fc2_bias"),
        helper.make_node("Add", ["o1", "a"], ["r"], name="residual"),
        helper.make_node("LayerNormalization", ["r", "ln1_g", "ln1_b"], ["y"], name="ln1", axis=-1),
        helper.make_node("Identity", ["ids"], ["ids_out"], name="echo"),
    ]
    g = helper.make_graph(
        nodes, "ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, S, D]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, [B, S])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, S, D]),
         helper.make_tensor_value_info("ids_out", TensorProto.INT64, [B, S])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _calib(n: int) -> list[dict]:
    rng = np.random.default_rng(1)
    # token ids of a 30k vocabulary, as BERT's: their norm dwarfs the float output's
    return [{"x": rng.standard_normal((B, S, D)).astype(np.float32),
             "ids": rng.integers(1000, 30000, (B, S)).astype(np.int64)} for _ in range(n)]


def _y_error(ref: onnx.ModelProto, got: onnx.ModelProto, data: list[dict]) -> dict:
    """rel_l2 / cosine of output y alone, pooled over `data` (the figure `compare` reports)."""
    acc = FidelityAccumulator(["y"])
    for f in data:
        acc.update({"y": run(ref, f)[0]}, {"y": run(got, f)[0]})
    return acc.result()["y"]


def _pruned_hidden(m: onnx.ModelProto, pm: onnx.ModelProto) -> np.ndarray:
    """Hidden channels of the original that the pruned w1 no longer has (its columns are a subset)."""
    w1 = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "w1"))
    fc1 = next(n for n in pm.graph.node if n.op_type == "MatMul" and n.name == "fc1")
    w1p = numpy_helper.to_array(next(t for t in pm.graph.initializer if t.name == fc1.input[1]))
    kept = [int(np.argmin(np.abs(w1 - w1p[:, [j]]).sum(0))) for j in range(w1p.shape[1])]
    return np.setdiff1d(np.arange(H), kept)


def _zeroed(m: onnx.ModelProto, channels: np.ndarray) -> onnx.ModelProto:
    """The original with `channels` of the FFN hidden activation (fc2's input) multiplied by 0."""
    z = onnx.ModelProto()
    z.CopyFrom(m)
    mask = np.ones(H, np.float32)
    mask[channels] = 0
    z.graph.initializer.append(numpy_helper.from_array(mask, "hmask"))
    fc2 = next(n for n in z.graph.node if n.name == "fc2")
    fc2.input[0] = "h2z"
    z.graph.node.insert(list(z.graph.node).index(fc2), helper.make_node("Mul", ["h2", "hmask"], ["h2z"], name="zero"))
    return z


def test_pooled_fidelity_is_the_float_outputs_error_not_diluted_by_an_int_echo():
    m = _ffn()
    data = _calib(4)
    z = _zeroed(m, np.arange(0, H, 4))
    want = _y_error(m, z, data)
    got = pooled_fidelity(m, [z], data, 4)[0]
    assert want["rel_l2"] > 0.05  # a real error, which the ids must not hide
    assert abs(got["rel_l2"] - want["rel_l2"]) <= 1e-4 * want["rel_l2"] + 1e-7
    assert abs(got["cosine"] - want["cosine"]) <= 1e-6


def test_error_added_is_the_written_models_error_and_apply_equals_zeroing():
    m = _ffn()
    data = _calib(8)
    res = PruneChannels(ratio=0.25, round_to=1, recover=False, latency_check=False, sensitivity_samples=4,
                        max_group_error=None)(m, Context(calib=data))
    pm = res.model
    assert res.modified and [r["channels"] for r in res.stats["per_group"]] == [[H, H - len(_pruned_hidden(m, pm))]]
    gone = _pruned_hidden(m, pm)
    assert 0 < len(gone) < H
    # apply writes exactly "those channels are zero" (bias Add, Gelu chain and fc2 rows all cut alike)
    z = _zeroed(m, gone)
    for f in data:
        np.testing.assert_allclose(run(pm, f)[0], run(z, f)[0], atol=1e-5, rtol=0)
        np.testing.assert_array_equal(run(pm, f)[1], f["ids"])
    # the group's error the pass reports is the pruned model's error on y over the same 4 samples
    want = _y_error(m, pm, data[:4])["rel_l2"]
    got = res.stats["per_group"][0]["error_added"]
    assert want > 0.01
    assert abs(got - want) <= 1e-3 * want + 1e-5, (got, want)


def test_recovery_fidelity_before_is_the_held_out_error_of_y():
    m = _ffn()
    data = _calib(16)
    res = PruneChannels(ratio=0.25, round_to=1, recover=True, latency_check=False, calib_samples=16,
                        sensitivity_samples=0, recover_stages=1)(m, Context(calib=data))
    rec = res.stats["recovery"]
    n_val = rec["samples_validate"]
    held = data[16 - n_val:]
    unrecovered = PruneChannels(ratio=0.25, round_to=1, recover=False, latency_check=False,
                                sensitivity_samples=0)(m, Context(calib=data)).model
    want = _y_error(m, unrecovered, held)["rel_l2"]
    assert abs(rec["fidelity_before"]["rel_l2"] - want) <= 1e-3 * want + 1e-6
    kept = res.model if rec["kept"] == "recovered" else unrecovered
    key = "fidelity_after" if rec["kept"] == "recovered" else "fidelity_before"
    assert abs(_y_error(m, kept, held)["rel_l2"] - rec[key]["rel_l2"]) <= 1e-3 * want + 1e-6


def _low_rank_calib(n: int, noise: float, h_seed: int = 3) -> list[dict]:
    """Inputs near a 3-dim subspace plus noise: correlated activations, as a transformer's are."""
    rng = np.random.default_rng(h_seed)
    a = rng.standard_normal((3, D))
    return [{"x": (rng.standard_normal((B, S, 3)) @ a + noise * rng.standard_normal((B, S, D))).astype(np.float32),
             "ids": rng.integers(1000, 30000, (B, S)).astype(np.int64)} for _ in range(n)]


def _wide_ffn_recovery(data: list[dict], **kw) -> dict:
    global H
    h, H = H, 256  # 192 kept hidden channels against 6 x 12 fit rows: an underdetermined refit
    try:
        res = PruneChannels(ratio=0.25, round_to=1, recover=True, latency_check=False, calib_samples=len(data),
                            sensitivity_samples=0, recover_stages=1, **kw)(_ffn(), Context(calib=data))
    finally:
        H = h
    return res.stats["recovery"]


def test_recovery_with_fewer_rows_than_kept_channels_shrinks_toward_the_pruned_weights():
    # shrunk toward 0 the fit kept 0.76 of the error (ridge 1e-3 chosen); toward the pruned weights 0.42
    rec = _wide_ffn_recovery(_low_rank_calib(8, noise=1.0))
    assert rec["kept"] == "recovered"
    assert rec["fidelity_after"]["rel_l2"] < 0.55 * rec["fidelity_before"]["rel_l2"]


def test_recovery_with_a_huge_ridge_is_the_pruned_model_plus_bias_correction():
    # toward 0 a huge ridge wiped the weights (held-out rel_l2 ~1, reverted); toward the pruned
    # weights it leaves them, and the unpenalized intercept only corrects the bias
    rec = _wide_ffn_recovery(_low_rank_calib(8, noise=1.0), ridge=1e3)
    before, after = rec["fidelity_before"]["rel_l2"], rec["fidelity_after"]["rel_l2"]
    assert after <= before * 1.001
    assert after >= 0.8 * before


class _KindTable:
    """A latency table whose MatMul layers step every 4 channels and whose convs every 16 (both
    exact); it records which layer kinds were asked for."""

    def __init__(self):
        self.kinds: set[str] = set()

    def latency(self, spec, cout: int) -> float:
        kind = type(spec).__name__
        self.kinds.add(kind)
        step = 4 if kind == "MatMulSpec" else 16
        return (-(-cout // step) * step) * (-(-spec.cin // step) * step) * 1e-5 + 1e-3

    def save(self):
        return None


def test_alignment_probe_times_the_layer_kind_the_model_prunes():
    table = _KindTable()
    res = PruneChannels(ratio=0.25, round_to=0, recover=False, latency_check=False, criterion="l1",
                        sensitivity_samples=0)(_ffn(), Context(latency_table=table))
    al = res.stats["alignment"]
    # MiniLM-L3 (MatMul only) had its step from "the 3x3 conv, cin swept"
    assert table.kinds == {"MatMulSpec"}
    assert al["source"] == "probe" and al["step"] == 4
    assert all(row["layer"].startswith("MatMul") for row in al["layers"])


def test_matmul_spec_times_a_real_dense_layer():
    from onnxslim_compress.runtime.latency_table import MatMulSpec

    for precision in ("fp32", "int8"):
        spec = MatMulSpec(cin=8, rows=4, precision=precision)
        x = np.random.default_rng(0).standard_normal(spec.input_shape).astype(np.float32)
        y = run(spec.model(12), {"x": x})[0]
        assert y.shape == (1, 4, 12)
    assert MatMulSpec(cin=8).key(12) != MatMulSpec(cin=8, precision="int8").key(12)
