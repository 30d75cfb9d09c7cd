"""Accuracy-safe and never slower by default: the guard's floor keeps sensitive layers float (named,
with the number), and quantize's speed check leaves float what a (fake, injected) timer says loses."""

from __future__ import annotations

import zlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress import Context, Target
from onnxslim_compress.cli.main import kept_float_lines
from onnxslim_compress.jobs.compress import compress, flags_pipeline
from onnxslim_compress.passes.quantize.quantize import Quantize
from onnxslim_compress.passes.timing import Timing, as_timing
from onnxslim_compress.runtime.profiler import ab_from_samples

CPU1 = Target("cpu", threads=1)


def _w(inits: list, name: str, *shape: int, s: float = 0.2) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return (rng.standard_normal(shape) * s).astype(np.float32)


def three_convs(big: int = 8) -> onnx.ModelProto:
    """conv1 (3 -> big, 3x3) -> relu -> conv2 (big -> big, 3x3) -> relu -> conv3 (big -> 4, 1x1).

    conv1 barely reads input channel 2 (weights x1e-5), the channel that carries a large constant in
    the data: conv1's per-tensor input range then spans it and rounds channels 0 and 1 away."""
    w1 = _w([], "w1", big, 3, 3, 3)
    w1[:, 2] *= 1e-5
    i = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(_w([], "b1", big), "b1"),
         numpy_helper.from_array(_w([], "w2", big, big, 3, 3, s=0.1), "w2"), numpy_helper.from_array(_w([], "b2", big), "b2"),
         numpy_helper.from_array(_w([], "w3", 4, big, 1, 1), "w3"), numpy_helper.from_array(_w([], "b3", 4), "b3")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], name="conv3")]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], i)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    onnx.checker.check_model(m)
    return m


def _feeds(n: int = 16, spike: float = 200.0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
        x[0, 2] = spike
        out.append({"x": x})
    return out


def test_default_floor_keeps_the_sensitive_layer_float_and_the_result_meets_it():
    res = compress(three_convs(), pipeline=flags_pipeline(quantize={"mode": "int8"}), calib=_feeds(), target=CPU1)
    nh = res.report["no_harm"]
    assert nh["floor"] == "pearson=0.99,rel_l2=0.15"
    first, last = nh["attempts"][0], nh["attempts"][-1]
    # measured: all three convs int8 give pearson 0.985, rel_l2 0.174 - under the default floor
    assert first["worst"]["pearson"] < 0.99 and first["worst"]["rel_l2"] > 0.15
    assert first["backed_off"] == ["quantize keeps sensitive layers float (min_fidelity pearson=0.995, at least 1 of 3 units)"]
    assert not last["shortfalls"] and nh["measured"]["pearson"] >= 0.99 and nh["measured"]["rel_l2"] <= 0.15
    st = next(p for p in res.report["passes"] if p["name"] == "quantize")["stats"]
    assert st["kept_float"] == ["conv1"] and st["quantized_units"] == 2
    reason = next(r["reason"] for r in st["layers"] if r["node"] == "conv1")
    cos_alone = float(reason.split("output cosine ")[1].split()[0])
    assert 0.97 < cos_alone < 0.99  # the number that made it float: conv1 alone int8 costs 1.4 % cosine
    lines = "\n".join(kept_float_lines(res.report))
    assert "float: conv1: sensitive: output cosine" in lines and "goal pearson=0.995" in lines


def _quantized(model: onnx.ModelProto, node: str) -> bool:
    """Whether `node` reads an integer weight (a DequantizeLinear output) in `model`."""
    dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    n = next(n for n in model.graph.node if n.name == node)
    return n.input[1] in dq


def test_a_unit_whose_integer_kernel_loses_is_left_float():
    calls = []

    def timer(base, cand, feed):  # conv2 int8 saves 40 %, the 1x1 conv3 int8 costs 50 %
        r = 1.0 - 0.4 * _quantized(cand, "conv2") + 0.5 * _quantized(cand, "conv3") - 0.05 * _quantized(cand, "conv1")
        calls.append(round(r, 3))
        return r

    m = three_convs(big=16)
    res = Quantize()(m, Context(target=CPU1, calib=_feeds(spike=1.0), timer=timer))
    st = res.stats
    assert res.modified and calls[0] == 1.05  # the full candidate loses
    assert not _quantized(res.model, "conv3") and _quantized(res.model, "conv2")
    assert st["speed"][0] == {"step": "all units", "units": 3, "ratio": 1.05, "ci95": [1.05, 1.05]}  # exact timer
    assert min(r["ratio"] for r in st["speed"]) == 0.55 and st["speed"][-1]["step"].endswith("(confirmation)")
    row = next(r for r in st["layers"] if r["node"] == "conv3")
    assert row["precision"] == "float" and "measured slower" in row["reason"] and "0.55" in row["reason"]
    assert st["float_units"] == {"integer kernel measured slower than float (speed check)": 1}


def test_when_every_candidate_loses_the_model_comes_back_unchanged_with_the_ratio():
    m = three_convs()
    res = Quantize()(m, Context(target=CPU1, calib=_feeds(spike=1.0), timer=lambda a, b, f: 1.3))
    assert res.modified is False and res.model is m
    why = res.stats["skipped"][-1]
    assert why["node"] == "*" and why["reason"].startswith("int8 not measurably faster than fp32 on this target "
                                                           "(ratio 1.30, 95 % interval 1.30-1.30")
    assert res.stats["quantized_units"] == 0


def test_a_winning_full_candidate_is_confirmed_not_laddered_and_the_switch_turns_the_real_timer_off():
    calls = []
    res = Quantize()(three_convs(), Context(target=CPU1, calib=_feeds(spike=1.0), timer=lambda a, b, f: calls.append(1) or 0.5))
    assert calls == [1, 1] and res.stats["quantized_units"] == 3  # timed, then timed again to confirm
    assert [r["step"] for r in res.stats["speed"]] == ["all units", "all units (confirmation)"]
    seq = iter([0.6, 1.1])  # a win the second timing does not confirm (noise) is no win
    flaky = Quantize()(three_convs(), Context(target=CPU1, calib=_feeds(spike=1.0), timer=lambda a, b, f: next(seq)))
    assert flaky.modified is False and "0.60, 95 % interval 0.60-0.60, 1.10 (1.10-1.10) when timed again" in \
        flaky.stats["skipped"][-1]["reason"]
    off = Quantize()(three_convs(), Context(target=CPU1, calib=_feeds(spike=1.0)))  # conftest sets the env switch
    assert off.stats["speed_check"].startswith("off (ONNXSLIM_COMPRESS_NO_SPEED_CHECK")
    assert "speed" not in off.stats
    none = Quantize(speed_check=False)(three_convs(), Context(target=CPU1, calib=_feeds(spike=1.0), timer=lambda a, b, f: 9.0))
    assert none.modified and none.stats["quantized_units"] == 3


def test_a_win_is_read_off_the_ratios_interval_not_a_fixed_margin():
    # a real 3 % win on a quiet machine: the interval lies below 1, twice -> kept
    quiet = Quantize()(three_convs(), Context(target=CPU1, calib=_feeds(spike=1.0),
                                              timer=lambda a, b, f: Timing(0.97, 0.96, 0.98)))
    assert quiet.modified and quiet.stats["quantized_units"] == 3
    assert quiet.stats["speed"][0]["ci95"] == [0.96, 0.98]
    # a noisy 0.93: its interval reaches past 1 on every rung of the ladder -> the model comes back
    m = three_convs()
    noisy = Quantize()(m, Context(target=CPU1, calib=_feeds(spike=1.0), timer=lambda a, b, f: Timing(0.93, 0.85, 1.02)))
    assert noisy.modified is False and noisy.model is m
    assert "ratio 0.93, 95 % interval 0.85-1.02" in noisy.stats["skipped"][-1]["reason"]
    assert "confirmation" not in noisy.stats["speed"][-1]["step"]  # nothing won, nothing to confirm


def test_the_real_timers_answer_carries_the_bootstrap_interval():
    # planted interleaved samples (no timing): B takes 0.97 of A's time with +-0.5 % jitter
    rng = np.random.default_rng(0)
    ta = list(1.0 + 0.005 * rng.standard_normal(200))
    tb = list(0.97 + 0.005 * rng.standard_normal(200))
    t = as_timing(ab_from_samples(ta, tb, CPU1))
    assert t.ratio == pytest.approx(0.97, abs=0.003) and t.lo < t.ratio < t.hi < 1.0 and t.wins
    # the same 3 % on a noisy machine (+-20 % jitter): the interval reaches 1, no win
    ta = list(1.0 + 0.2 * rng.standard_normal(200))
    tb = list(0.97 + 0.2 * rng.standard_normal(200))
    assert not as_timing(ab_from_samples(ta, tb, CPU1)).wins
    assert as_timing(0.9) == Timing(0.9, 0.9, 0.9)
