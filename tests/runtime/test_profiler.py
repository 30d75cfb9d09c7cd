"""Latency statistics, interleaved A/B comparison, ORT profile parsing, and GPU paths failing loudly."""

from __future__ import annotations

import glob
import json
import os
import tempfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress.errors import BadInputError, ProviderError
from onnxslim_compress.runtime.profiler import (
    IOBindingPlan,
    LatencyStats,
    _binding_runner,
    ab_from_samples,
    compare,
    first_feed,
    interleaved,
    io_binding_plan,
    measure,
    op_type_profile,
    parse_profile,
    profile_model,
    with_cuda_graph,
)
from onnxslim_compress.runtime.session import Target, make_session

RNG = np.random.default_rng(0)
CPU1 = Target("cpu", threads=1)


def _conv_stack(depth: int, channels: int = 16, size: int = 24) -> onnx.ModelProto:
    """`depth` 3x3 convs in a row: depth 8 does 8x the MACs of depth 1 on the same input."""
    nodes, inits, cur = [], [], "x"
    for k in range(depth):
        w = numpy_helper.from_array(0.05 * RNG.standard_normal((channels, channels, 3, 3)).astype(np.float32), f"W{k}")
        inits.append(w)
        nodes.append(helper.make_node("Conv", [cur, w.name], [f"c{k}"], name=f"conv{k}", pads=[1, 1, 1, 1]))
        cur = f"c{k}"
    nodes.append(helper.make_node("Identity", [cur], ["y"]))
    g = helper.make_graph(
        nodes, "stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", channels, size, size])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    return m


@pytest.fixture
def conv_mm() -> onnx.ModelProto:
    """Conv -> Conv -> Flatten -> MatMul: two op types that carry the time."""
    w1 = numpy_helper.from_array(RNG.standard_normal((8, 3, 3, 3)).astype(np.float32), "W1")
    w2 = numpy_helper.from_array(RNG.standard_normal((8, 8, 3, 3)).astype(np.float32), "W2")
    wm = numpy_helper.from_array(RNG.standard_normal((8 * 16 * 16, 32)).astype(np.float32), "Wm")
    n = helper.make_node
    g = helper.make_graph(
        [
            n("Conv", ["x", "W1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
            n("Conv", ["c1", "W2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
            n("Flatten", ["c2"], ["f"]),
            n("MatMul", ["f", "Wm"], ["y"], name="mm"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
        [w1, w2, wm],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    return m


def _x(shape=(1, 16, 24, 24)) -> dict[str, np.ndarray]:
    return {"x": RNG.standard_normal(shape).astype(np.float32)}


# ------------------------------------------------------------------ statistics


def test_latency_stats_math():
    s = LatencyStats.from_samples([3, 1, 2, 10, 4, 5, 6, 7, 8, 9])
    assert s.n == 10
    assert s.median == pytest.approx(5.5)
    assert s.mean == pytest.approx(5.5)
    assert s.min == 1.0
    # linear interpolation between order statistics: 9 + 0.1 * (10 - 9), 9 + 0.55 * 1
    assert s.p90 == pytest.approx(9.1)
    assert s.p95 == pytest.approx(9.55)
    assert s.runs[:2] == [3.0, 1.0]
    assert "runs" not in s.as_dict() and s.as_dict(with_runs=True)["runs"][3] == 10.0
    with pytest.raises(ValueError):
        LatencyStats.from_samples([])


def test_ab_from_samples_ratio_and_spread():
    ta = [1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0]
    # per-pair ratios: 0.5 for the first nine pairs, 1.5 for the last
    tb = [0.5, 1.0, 0.5, 1.0, 0.5, 1.0, 0.5, 1.0, 0.5, 3.0]
    r = ab_from_samples(ta, tb, CPU1)
    assert r.a.median == pytest.approx(1.5)
    assert r.b.median == pytest.approx(0.75)
    assert r.ratio == pytest.approx(0.5)
    assert r.ratio_p10 == pytest.approx(0.5)
    assert r.ratio_p90 == pytest.approx(0.6)  # np.percentile of [0.5]*9 + [1.5] at 90: 0.5 + 0.1 * 1.0
    lo, hi = r.ratio_ci95
    assert lo <= r.ratio <= hi
    assert r.summary() == (
        "B/A latency ratio 0.50 (p10-p90 0.50-0.60), A median 1.50 ms, B median 0.75 ms, 10 runs, cpu, 1 threads"
    )
    d = json.loads(json.dumps(r.as_dict()))
    assert d["ratio"] == pytest.approx(0.5) and d["runs"] == 10 and d["threads"] == 1


def test_interleaved_alternates_order():
    calls: list[str] = []
    ta, tb = interleaved(lambda: calls.append("A"), lambda: calls.append("B"), warmup=1, runs=4)
    assert calls == ["A", "B", "A", "B", "B", "A", "A", "B", "B", "A"]
    assert len(ta) == len(tb) == 4


# ------------------------------------------------------------------ feeds


def test_first_feed_accepts_dict_and_iterables():
    x = np.ones((1, 2), np.float32)
    assert first_feed({"x": x})["x"] is not None
    gen = ({"x": x * k} for k in (2, 3))
    assert first_feed(gen)["x"][0, 0] == 2.0
    assert first_feed([{"x": x * 5}])["x"][0, 0] == 5.0
    with pytest.raises(BadInputError):
        first_feed([])
    with pytest.raises(BadInputError):
        first_feed([x])
    with pytest.raises(BadInputError):
        first_feed(None)


def test_missing_input_is_bad_input():
    sess = make_session(_conv_stack(1), CPU1)
    with pytest.raises(BadInputError, match="'x'"):
        measure(sess, {"other": np.zeros(1, np.float32)}, warmup=0, runs=1)


# ------------------------------------------------------------------ measuring on the CPU


def test_measure_returns_requested_runs():
    sess = make_session(_conv_stack(1), CPU1)
    s = measure(sess, _x(), warmup=2, runs=7)
    assert s.n == 7 and len(s.runs) == 7
    assert all(v > 0 for v in s.runs)
    assert s.min <= s.median <= s.p90 <= s.p95 <= max(s.runs)


def test_measure_with_cpu_io_binding():
    """The IO-binding runner works end to end where it can here: bound on the CPU."""
    sess = make_session(_conv_stack(1), CPU1)
    s = measure(sess, _x(), warmup=1, runs=3, io_binding=True)
    assert s.n == 3


def test_cpu_binding_outputs_match_plain_run(conv_mm):
    """Static outputs are preallocated (as CUDA graphs need), dynamic ones allocated by ORT."""
    x = {"x": RNG.standard_normal((1, 3, 16, 16)).astype(np.float32)}
    sess = make_session(conv_mm, CPU1)
    run = _binding_runner(sess, x, io_binding_plan(sess, x))
    assert set(run.bound_values) == {"x", "y"}  # [1, 32] output is static: preallocated
    got = run().copy_outputs_to_cpu()[0]
    np.testing.assert_allclose(got, sess.run(None, x)[0], rtol=1e-5, atol=1e-4)

    dyn = make_session(_conv_stack(2), CPU1)
    xd = _x()
    run_d = _binding_runner(dyn, xd, io_binding_plan(dyn, xd))
    assert set(run_d.bound_values) == {"x"}  # batch is symbolic: ORT allocates the output
    np.testing.assert_allclose(run_d().copy_outputs_to_cpu()[0], dyn.run(None, xd)[0], rtol=1e-5, atol=1e-5)


def test_compare_eight_times_the_work_is_slower():
    """Loose bound: B runs 8 convs where A runs 1 (expected ratio ~8; asserting > 2)."""
    r = compare(_conv_stack(1), _conv_stack(8), _x(), CPU1, warmup=3, runs=21)
    assert r.a.n == r.b.n == 21
    assert r.ratio > 2.0
    assert r.ratio_p10 <= r.ratio_p90
    assert r.providers == {"a": ["CPUExecutionProvider"], "b": ["CPUExecutionProvider"]}
    assert r.summary().startswith("B/A latency ratio ")


# ------------------------------------------------------------------ ORT profiler


def _event(cat, name, ts, dur, op=None):
    e = {"cat": cat, "name": name, "ts": ts, "dur": dur, "ph": "X", "pid": 1, "tid": 1}
    if op:
        e["args"] = {"op_name": op, "provider": "CPUExecutionProvider"}
    return e


def test_parse_profile_skips_warmup_runs():
    events = [_event("Session", "session_initialization", 0, 50)]
    # run 0 (warm-up) has huge kernel times that must not count
    for r, (conv, mm) in enumerate([(9000, 9000), (300, 100), (500, 100)]):
        t0 = 1000 * (r + 1) * 100
        events += [
            _event("Node", "c1_kernel_time", t0 + 1, conv, "Conv"),
            _event("Node", "c1_fence_before", t0 + 1, 0, "Conv"),
            _event("Node", "mm_kernel_time", t0 + 2 + conv, mm, "MatMul"),
            _event("Session", "model_run", t0, conv + mm + 10),
        ]
    rows = parse_profile(events, skip_runs=1)
    assert [r.op_type for r in rows] == ["Conv", "MatMul"]
    conv, mm = rows
    assert conv.total_ms == pytest.approx((300 + 500) / 2 / 1000)
    assert mm.total_ms == pytest.approx(0.1)
    assert conv.share == pytest.approx(800 / 1000)
    assert conv.count == 1 and mm.count == 1
    assert parse_profile(events, skip_runs=3) == []


def test_op_type_profile_finds_conv_and_matmul(conv_mm):
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "osc_prof_*")))
    # "basic" keeps Conv and MatMul as they are (no fused kernels with other names)
    rows = op_type_profile(conv_mm, {"x": RNG.standard_normal((1, 3, 16, 16)).astype(np.float32)},
                           Target("cpu", threads=1, opt_level="basic"), runs=5, warmup=2)
    by = {r.op_type: r for r in rows}
    assert {"Conv", "MatMul"} <= set(by)
    assert by["Conv"].count == 2 and by["MatMul"].count == 1
    assert sum(r.share for r in rows) == pytest.approx(1.0, abs=1e-6)
    assert all(r.total_ms >= 0 for r in rows)
    # the profile JSON and its folder are gone
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "osc_prof_*"))) == before


def test_profile_model_with_and_without_data(conv_mm):
    rep = profile_model(conv_mm, CPU1, None, warmup=1, runs=5, profile_runs=3)
    assert rep.feeds_from == "signature"
    assert rep.latency.n == 5
    assert {"Conv", "MatMul"} <= {r.op_type for r in rep.op_types}
    d = json.loads(json.dumps(rep.as_dict()))
    assert d["providers"] == ["CPUExecutionProvider"] and "compare" not in d
    assert "generated from the model signature" in rep.format()

    data = [{"x": RNG.standard_normal((1, 3, 16, 16)).astype(np.float32)}]
    rep2 = profile_model(conv_mm, CPU1, data, model_b=conv_mm, warmup=1, runs=5, by_op_type=False)
    assert rep2.feeds_from == "data" and rep2.op_types == []
    assert rep2.ab is not None and rep2.ab.a.n == 5
    assert "B/A latency ratio" in rep2.format()


# ------------------------------------------------------------------ GPU paths (no GPU here: fail loudly)


def test_cuda_graph_option_building():
    t = with_cuda_graph(Target("cuda", ep_options={"cudnn_conv_algo_search": "EXHAUSTIVE"}))
    assert t.ep_options == {"cudnn_conv_algo_search": "EXHAUSTIVE", "enable_cuda_graph": "1"}
    assert t.providers()[0] == ("CUDAExecutionProvider", {"device_id": 0, "cudnn_conv_algo_search": "EXHAUSTIVE",
                                                          "enable_cuda_graph": "1"})
    trt = with_cuda_graph(Target("tensorrt", device_id=1))
    assert trt.providers()[0] == ("TensorrtExecutionProvider", {"device_id": 1, "trt_cuda_graph_enable": "1"})
    with pytest.raises(BadInputError):
        with_cuda_graph(Target("cpu"))


def test_io_binding_plan_defaults_and_refusals():
    sess = make_session(_conv_stack(1), CPU1)
    plan = io_binding_plan(sess, _x())
    assert plan == IOBindingPlan(device="cpu", device_id=0, inputs=["x"], outputs=["y"])
    with pytest.raises(ProviderError, match="CPUExecutionProvider"):
        io_binding_plan(sess, _x(), device="cuda")


@pytest.fixture
def no_gpu() -> None:
    """These tests check the failure paths; on a machine where CUDA works they do not apply."""
    try:
        make_session(_conv_stack(1), Target("cuda"))
    except ProviderError:
        return
    pytest.skip("CUDA works here: the no-GPU failure paths do not apply")


def test_cuda_binding_without_gpu_raises_provider_error(no_gpu):
    sess = make_session(_conv_stack(1), CPU1)
    # force the device path past the plan check: creating device buffers must fail loudly
    with pytest.raises(ProviderError, match="IO binding on cuda"):
        _binding_runner(sess, _x(), IOBindingPlan(device="cuda", device_id=0, inputs=["x"], outputs=["y"]))


@pytest.mark.parametrize("kind", ["cuda", "tensorrt"])
def test_gpu_targets_raise_provider_error_not_fallback(kind, no_gpu):
    m = _conv_stack(1)
    with pytest.raises(ProviderError):
        compare(m, m, _x(), Target(kind), warmup=0, runs=1)
    with pytest.raises(ProviderError):
        op_type_profile(m, _x(), Target(kind), runs=1, warmup=0)
    with pytest.raises(ProviderError):
        profile_model(m, with_cuda_graph(Target(kind)), _x(), warmup=0, runs=1)
