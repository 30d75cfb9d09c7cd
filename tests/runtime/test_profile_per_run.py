"""Op-type times are per run and robust to stalled runs (issue 19: they exceeded the median latency)."""

import pytest

from onnxslim_compress.runtime.profiler import parse_profile


def _event(cat, name, ts, dur, op=None):
    e = {"cat": cat, "name": name, "ts": ts, "dur": dur, "ph": "X", "pid": 1, "tid": 1}
    if op:
        e["args"] = {"op_name": op}
    return e


def test_a_stalled_run_does_not_inflate_the_op_time():
    events = []
    for r, conv in enumerate([300, 310, 30000, 290, 305]):  # run 2 stalled (the machine, not the model)
        t0 = 1_000_000 * (r + 1)
        events += [_event("Node", "c1_kernel_time", t0 + 1, conv, "Conv"), _event("Session", "model_run", t0, conv + 10)]
    (conv,) = parse_profile(events)
    assert conv.total_ms == pytest.approx(0.305)  # the median run; the mean would be 6.24 ms
    assert conv.total_ms < sorted([310, 320, 30010, 300, 315])[2] / 1000  # below the median model_run


def test_an_op_missing_from_some_runs_counts_zero_there():
    events = []
    for r in range(3):
        t0 = 1_000_000 * (r + 1)
        events.append(_event("Session", "model_run", t0, 1000))
        events.append(_event("Node", "c_kernel_time", t0 + 1, 100, "Conv"))
        if r == 0:
            events.append(_event("Node", "m_kernel_time", t0 + 200, 500, "MatMul"))
    by = {r.op_type: r for r in parse_profile(events)}
    assert by["Conv"].total_ms == pytest.approx(0.1) and by["MatMul"].total_ms == 0.0
