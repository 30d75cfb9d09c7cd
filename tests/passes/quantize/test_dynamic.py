"""Dynamic MatMul units (activations=auto/dynamic) on a generated SDPA-mask encoder block."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from encoder import encoder_block, encoder_feeds
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress import Context, Target
from onnxslim_compress.errors import RecipeError
from onnxslim_compress.passes.quantize import sensitivity as qs
from onnxslim_compress.passes.quantize.quantize import Quantize
from onnxslim_compress.runtime.session import make_session

CPU1 = Target("cpu", threads=1)


def _outputs(model, feeds):
    s = make_session(model, CPU1)
    return [s.run(None, f)[0] for f in feeds]


def _mean_cos(ref, got) -> float:
    return float(np.mean([np.ravel(a).astype(np.float64) @ np.ravel(b) / np.linalg.norm(a) / np.linalg.norm(b)
                          for a, b in zip(ref, got, strict=True)]))


@pytest.fixture(scope="module")
def block():
    m = encoder_block()
    ev = encoder_feeds(16, seed=5)
    return m, encoder_feeds(32), ev, _outputs(m, ev)


def test_auto_runs_the_weight_matmuls_dynamic_and_keeps_the_mask_paths_float(block):
    m, calib, ev, ref = block
    res = Quantize()(m, Context(target=CPU1, calib=calib))
    st = res.stats
    assert st["activations"] == "auto" and st["dynamic_units"] == 6  # q, k, v, o, ffn1, ffn2
    # ORT fused every unit into its dynamic integer kernels (and nothing else is integer)
    assert st["integer_kernels_by_op"] == {"MatMulIntegerToFloat": 3, "DynamicQuantizeMatMul": 3}
    ops = [n.op_type for n in res.model.graph.node]
    assert "QuantizeLinear" not in ops  # no static Q on the LayerNorm / Softmax / mask paths
    assert ops.count("DynamicQuantizeLinear") == 4  # q/k/v share one; o, ffn1, ffn2
    assert ops.count("MatMul") == 2  # the two activation x activation MatMuls stay float
    for name in ("mask_cast", "mask_expand", "mask_mul", "mask_isnan", "mask_where", "softmax", "ln1", "ln2"):
        assert name in {n.name for n in res.model.graph.node}
    cos_auto = _mean_cos(ref, _outputs(res.model, ev))
    static = Quantize(activations="static")(m, Context(target=CPU1, calib=calib))
    cos_static = _mean_cos(ref, _outputs(static.model, ev))
    # measured: auto 0.9966, static percentile 0.9926 (the outlier channel costs the static ranges)
    assert cos_auto >= 0.995
    assert cos_auto > cos_static


def test_dynamic_is_orts_structure_and_static_keeps_the_old_placement(block):
    m, calib, ev, ref = block
    dyn = Quantize(activations="dynamic")(m, Context(target=CPU1, calib=calib))
    assert dyn.stats["dynamic_units"] == 6 and dyn.stats["quantized_units"] == 6
    static = Quantize(activations="static")(m, Context(target=CPU1, calib=calib))
    assert static.stats["dynamic_units"] == 0
    assert "QLinearMatMul" in static.stats["integer_kernels_by_op"]
    assert "DynamicQuantizeLinear" not in {n.op_type for n in static.model.graph.node}


def test_dynamic_per_channel_weight_scales_are_per_column(block):
    m, calib, _, _ = block
    res = Quantize(activations="dynamic")(m, Context(target=CPU1, calib=calib))
    inits = {t.name: t for t in res.model.graph.initializer}
    mmi = next(n for n in res.model.graph.node if n.op_type == "MatMulInteger" and n.name.startswith("ffn1"))
    assert list(inits[mmi.input[1]].dims) == [64, 128] and list(inits[mmi.input[3]].dims) == [128]
    pt = Quantize(activations="dynamic", per_channel=False)(m, Context(target=CPU1, calib=calib))
    inits = {t.name: t for t in pt.model.graph.initializer}
    mmi = next(n for n in pt.model.graph.node if n.op_type == "MatMulInteger" and n.name.startswith("ffn1"))
    assert list(inits[mmi.input[3]].dims) == []


def _w(name: str, *shape: int, s: float = 0.15):
    """A weight seeded by its name (stable across graphs that share names)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return numpy_helper.from_array((rng.standard_normal(shape) * s).astype(np.float32), name)


def _seq_model(nodes, inits, name: str, cols: int, seed: int) -> tuple:
    """x [1, 32, 64] -> y [1, 32, cols] at opset 17, with 16 calibration and 8 eval feeds."""
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, cols])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    rng = np.random.default_rng(seed)
    feeds = [{"x": rng.standard_normal((1, 32, 64)).astype(np.float32)} for _ in range(24)]
    return m, feeds[:16], feeds[16:]


def _ffn(outlier: float) -> tuple:
    """LayerNorm -> MatMul [64 -> 96] + bias -> Relu -> MatMul [96 -> 32] + bias; LayerNorm's scale
    makes channel 7 `outlier` times the others (BERT's pattern on a FFN input)."""
    gamma = np.ones(64, np.float32)
    gamma[7] = outlier
    i = [numpy_helper.from_array(gamma, "g"), _w("b", 64, s=0.02), _w("w1", 64, 96), _w("b1", 96, s=0.02),
         _w("w2", 96, 32), _w("b2", 32, s=0.02)]
    N = helper.make_node
    nodes = [N("LayerNormalization", ["x", "g", "b"], ["h"], axis=-1, name="ln"),
             N("MatMul", ["h", "w1"], ["f0"], name="ffn1"), N("Add", ["f0", "b1"], ["f1"], name="ffn1_bias"),
             N("Relu", ["f1"], ["f2"], name="relu"),
             N("MatMul", ["f2", "w2"], ["f3"], name="ffn2"), N("Add", ["f3", "b2"], ["y"], name="ffn2_bias")]
    return _seq_model(nodes, i, "ffn", 32, seed=0)


def test_outlier_channels_run_float_beside_the_integer_matmul():
    m, calib, ev = _ffn(40.0)
    ref = _outputs(m, ev)
    split = Quantize(activations="dynamic", outlier_goal=None)(m, Context(target=CPU1, calib=calib))
    plain = Quantize(activations="dynamic", outlier_split=False)(m, Context(target=CPU1, calib=calib))
    assert split.stats["outlier_channels"] == [{"node": "ffn1", "channels": [7]}]  # ffn2 reads Relu outputs: no outlier channel
    ops = [n.op_type for n in split.model.graph.node]
    assert ops.count("Gather") == 1 and ops.count("MatMulInteger") == 2
    # the integer parts still fuse (bias included): the float part is one Gather, one Mul, one Add
    assert split.stats["integer_kernels_by_op"] == plain.stats["integer_kernels_by_op"]
    inits = {t.name: numpy_helper.to_array(t) for t in split.model.graph.initializer}
    mmi = next(n for n in split.model.graph.node if n.op_type == "MatMulInteger" and n.name.startswith("ffn1"))
    assert not inits[mmi.input[1]][7].any()  # the outlier row is not in the integer weight
    err_split = 1 - _mean_cos(ref, _outputs(split.model, ev))
    err_plain = 1 - _mean_cos(ref, _outputs(plain.model, ev))
    assert err_split < err_plain / 4  # measured: 1 - cosine 2.9e-05 split vs 6.7e-04 plain
    assert _mean_cos(ref, _outputs(split.model, ev)) > 0.9995


def _two_ffn() -> tuple:
    """Two LayerNorm -> MatMul + bias branches summed: branch a's channel 7 is 60x the others, branch
    b's channel 3 16x (both over the split ratio), so a split buys much more on a than on b."""
    ga, gb = np.ones(64, np.float32), np.ones(64, np.float32)
    ga[7], gb[3] = 60.0, 16.0
    i = [numpy_helper.from_array(ga, "ga"), numpy_helper.from_array(gb, "gb"), _w("ba", 64, s=0.02), _w("bb", 64, s=0.02),
         _w("wa", 64, 48), _w("wb", 64, 48), _w("ca", 48, s=0.02), _w("cb", 48, s=0.02)]
    N = helper.make_node
    nodes = [N("LayerNormalization", ["x", "ga", "ba"], ["ha"], axis=-1, name="ln_a"),
             N("LayerNormalization", ["x", "gb", "bb"], ["hb"], axis=-1, name="ln_b"),
             N("MatMul", ["ha", "wa"], ["ma"], name="mm_a"), N("Add", ["ma", "ca"], ["ya"], name="mm_a_bias"),
             N("MatMul", ["hb", "wb"], ["mb"], name="mm_b"), N("Add", ["mb", "cb"], ["yb"], name="mm_b_bias"),
             N("Add", ["ya", "yb"], ["y"], name="sum")]
    return _seq_model(nodes, i, "two_ffn", 48, seed=1)


def test_outlier_split_keeps_only_the_splits_the_goal_needs():
    m, calib, ev = _two_ffn()
    ref = _outputs(m, ev)
    ctx = lambda: Context(target=CPU1, calib=calib)  # noqa: E731
    full = Quantize(activations="dynamic", outlier_goal=None, speed_check=False)(m, ctx())
    plain = Quantize(activations="dynamic", outlier_split=False, speed_check=False)(m, ctx())
    some = Quantize(activations="dynamic", outlier_goal=0.9995, speed_check=False)(m, ctx())
    assert full.stats["outlier_channels"] == [{"node": "mm_a", "channels": [7]}, {"node": "mm_b", "channels": [3]}]
    assert some.stats["outlier_channels"] == [{"node": "mm_a", "channels": [7]}]
    rows = {r["activation"]: r for r in some.stats["outlier_split_rows"]}
    assert rows["ha"]["chosen"] and not rows["hb"]["chosen"] and rows["ha"]["gain"] > 10 * rows["hb"]["gain"]
    n_full, n_some, n_plain = (len(r.model.graph.node) for r in (full, some, plain))
    assert n_full - n_plain == 8 and n_some - n_plain == 4  # Mul + Gather + float product + Add per split
    cos = {k: _mean_cos(ref, _outputs(r.model, ev)) for k, r in (("full", full), ("some", some), ("plain", plain))}
    # measured: 1 - cosine 1.5e-06 full, 5.2e-05 one split, 6.5e-04 none
    assert cos["some"] > 0.9995 > cos["plain"] and cos["full"] > cos["some"]


def test_choose_splits_takes_the_best_gain_per_op_first_and_stops_at_the_goal():
    table = {frozenset(): 0.95, frozenset({"a"}): 0.96, frozenset({"b"}): 0.985, frozenset({"c"}): 0.949,
             frozenset({"b", "a"}): 0.991, frozenset({"b", "a", "c"}): 0.993}
    asked = []

    def score(keys):
        asked.append(keys)
        return table[keys]

    # b gains 0.035 for 6 ops, a 0.01 for 4, c loses: order b, a, c; {b, a} meets 0.99
    chosen, rows = qs.choose_splits(score, {"a": 4, "b": 6, "c": 4}, 0.99)
    assert chosen == {"a", "b"} and [r["activation"] for r in rows] == ["b", "a", "c"]
    assert [r["chosen"] for r in rows] == [True, True, False] and frozenset({"a", "b", "c"}) not in asked
    # unreachable goal: the best-scoring prefix (all three here); already met: no split at all
    assert qs.choose_splits(score, {"a": 4, "b": 6, "c": 4}, 0.999)[0] == {"a", "b", "c"}
    assert qs.choose_splits(score, {"a": 4, "b": 6, "c": 4}, 0.9)[0] == frozenset()


def test_outlier_goal_outside_0_1_is_refused():
    with pytest.raises(RecipeError, match=r"outlier_goal must be in \(0, 1\]"):
        Quantize(outlier_goal=1.5)
