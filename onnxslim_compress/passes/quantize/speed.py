"""Never slower (issue 16): time the quantized candidate against float and back off units that lose.

Why: an int8 unit only pays when ORT's integer kernel beats the float one by more than the Q/DQ
around it costs. On tiny layers and on islands of unfused ops (PRelu, Transpose, a QLinearAdd
between float code) it does not: a 0.2 ms keras NHWC net ran 3x slower as int8 than as fp32. No
static rule knows the machine, so the pass measures: the whole candidate first, then a ladder of
smaller ones (no non-weighted units, then the weighted units with the fewest MACs dropped a
quarter at a time), keeping the fastest measured; when none beats float by WIN_RATIO, the caller returns its
input unchanged with the ratio as the reason.

The timer is injectable (Context.timer), so tests decide what "loses" without timing anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from onnxslim_compress.passes.quantize.placement import Unit
from onnxslim_compress.runtime.profiler import compare, first_feed
from onnxslim_compress.runtime.session import Target

Feed = dict[str, np.ndarray]
#: timer(float model, candidate, feed) -> latency ratio candidate / float (median of interleaved runs)
Timer = Callable[[onnx.ModelProto, onnx.ModelProto, Feed], float]
#: env switch that turns the real timing off (tests/conftest.py sets it: timing is slow and noisy)
NO_SPEED_CHECK_ENV = "ONNXSLIM_COMPRESS_NO_SPEED_CHECK"
#: a candidate is kept only when at least this much faster than float: a smaller gain is within the
#: noise of a shared machine (the zoo's intervals are +-3 %) and not worth int8's rounding
WIN_RATIO = 0.95
#: seconds one interleaved comparison should take, and the bounds on its runs
_COMPARE_S = 2.0
_RUNS = (10, 200)


def real_timer(target: Target) -> Timer:
    """Interleaved A/B on `target` (runtime/profiler.compare), runs sized to ~_COMPARE_S seconds."""

    def timer(a: onnx.ModelProto, b: onnx.ModelProto, feed: Feed) -> float:
        probe = compare(a, b, feed, target, warmup=2, runs=3)
        per_pair = max(probe.a.median + probe.b.median, 1e-3) / 1000.0
        runs = int(np.clip(_COMPARE_S / per_pair, *_RUNS))
        return float(compare(a, b, feed, target, warmup=3, runs=runs).ratio)

    return timer


def timer_for(ctx, target: Target) -> Timer | None:
    """The Context's timer if one is set, else the real one unless the env switch turns it off."""
    t = getattr(ctx, "timer", None)
    if t is not None:
        return t
    if os.environ.get(NO_SPEED_CHECK_ENV, "") not in ("", "0"):
        return None
    return real_timer(target)


def unit_macs(model: onnx.ModelProto, units: list[Unit], values: dict[str, np.ndarray],
              inits: dict[str, np.ndarray]) -> dict[str, int]:
    """MACs per weighted unit from its output on one calibration sample: out.size x weight.size /
    out_channels (Conv, MatMul, Gemm alike); non-weighted units count 0."""
    by_name = {n.name: n for n in model.graph.node}
    out: dict[str, int] = {}
    for u in units:
        n = by_name[u.node]
        y = values.get(n.output[0])
        w = inits.get(n.input[1]) if len(n.input) > 1 else None
        if u.weight_out_axis is None or y is None or w is None or y.ndim == 0:
            out[u.node] = 0
            continue
        co = y.shape[u.weight_out_axis] or 1
        out[u.node] = int(y.size * int(np.prod(w.shape)) // co)
    return out


@dataclass
class Step:
    name: str
    units: list[Unit]


def ladder(units: list[Unit], macs: dict[str, int]) -> list[Step]:
    """Ever smaller candidates: all units; no non-weighted units; then the weighted units with the
    fewest MACs dropped a quarter, a half, three quarters at a time (distinct sets only)."""
    steps = [Step("all units", list(units))]
    weighted = [u for u in units if macs.get(u.node, 0) > 0]
    if len(weighted) < len(units) and weighted:
        steps.append(Step("non-weighted units float (QLinearAdd/Mul/Concat/pool islands)", weighted))
    order = sorted(weighted, key=lambda u: macs[u.node])
    for frac in (0.25, 0.5, 0.75):
        k = int(round(frac * len(order)))
        rest = order[k:]
        if rest and k > 0 and len(rest) < len(steps[-1].units):
            steps.append(Step(f"{k} smallest weighted units float (below {macs[rest[0].node]:,} MACs)", rest))
    return steps


def fastest(base: onnx.ModelProto, steps: list[Step], build: Callable[[list[Unit]], onnx.ModelProto],
            feed: Feed, timer: Timer, tick: Callable[[int, int], None] | None = None,
            ) -> tuple[Step | None, onnx.ModelProto | None, list[dict]]:
    """Time the full candidate; if it is not faster than `base`, walk the ladder. The fastest step
    that beats float (ratio < WIN_RATIO, twice: a second timing confirms it) with its model, or
    (None, None) when none does; the rows measured."""
    rows: list[dict] = []
    best: tuple[float, Step, onnx.ModelProto] | None = None
    for k, step in enumerate(steps):
        cand = build(step.units)
        r = float(timer(base, cand, feed))
        rows.append({"step": step.name, "units": len(step.units), "ratio": round(r, 4)})
        if tick is not None:
            tick(k + 1, len(steps))
        if best is None or r < best[0]:
            best = (r, step, cand)
        if k == 0 and r < WIN_RATIO:
            break  # the full candidate already wins: nothing to back off
    if best is None or best[0] >= WIN_RATIO:
        return None, None, rows
    # a win is confirmed by a second timing (the least of several is biased low on a noisy machine)
    again = float(timer(base, best[2], feed))
    rows.append({"step": f"{best[1].name} (confirmation)", "units": len(best[1].units), "ratio": round(again, 4)})
    if again >= WIN_RATIO:
        return None, None, rows
    return best[1], best[2], rows


def sample_feed(data) -> Feed:
    """The first calibration sample, as the timing input."""
    return first_feed(data)
