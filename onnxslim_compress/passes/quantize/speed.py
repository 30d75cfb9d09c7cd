"""Never slower (issue 16): time the quantized candidate against float and back off units that lose.

Why: an int8 unit only pays when ORT's integer kernel beats the float one by more than the Q/DQ
around it costs. On tiny layers and on islands of unfused ops (PRelu, Transpose, a QLinearAdd
between float code) it does not: a 0.2 ms keras NHWC net ran 3x slower as int8 than as fp32. No
static rule knows the machine, so the pass measures: the whole candidate first, then a ladder of
smaller ones (no non-weighted units, then the weighted units with the fewest MACs dropped a
quarter at a time), keeping the fastest measured; when none is measurably faster than float, the
caller returns its input unchanged with the ratio and its interval as the reason.

"Measurably faster" is read off the timing itself, not a fixed margin: a candidate wins when the 95 %
interval of its interleaved A/B ratio (runtime/profiler.py ratio_ci95, a bootstrap over the runs)
lies wholly below 1, and a second timing confirms it the same way. A real 3 % win on a quiet
machine (0.97, interval 0.96-0.98) is kept; a noisy 0.93 (interval 0.85-1.02) is not.

The timer is injectable (Context.timer), so tests decide what "loses" without timing anything; it
may return a bare ratio (an exact timing: a zero-width interval), a Timing, or an ABResult.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from onnxslim_compress.passes.quantize.placement import Unit
from onnxslim_compress.passes.timing import (
    Timer,
    Timing,
    as_timing,
)
from onnxslim_compress.runtime.profiler import first_feed

Feed = dict[str, np.ndarray]


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


def _row(name: str, units: int, t: Timing) -> dict:
    return {"step": name, "units": units, "ratio": round(t.ratio, 4), "ci95": [round(t.lo, 4), round(t.hi, 4)]}


def fastest(base: onnx.ModelProto, steps: list[Step], build: Callable[[list[Unit]], onnx.ModelProto],
            feed: Feed, timer: Timer, tick: Callable[[int, int], None] | None = None,
            ) -> tuple[Step | None, onnx.ModelProto | None, list[dict]]:
    """Time the full candidate; if it does not win, walk the ladder. The fastest step that wins
    (its ratio's 95 % interval wholly below 1, and again when timed a second time) with its model,
    or (None, None) when none does; the rows measured, each with its ratio and interval."""
    rows: list[dict] = []
    best: tuple[Timing, Step, onnx.ModelProto] | None = None
    for k, step in enumerate(steps):
        cand = build(step.units)
        t = as_timing(timer(base, cand, feed))
        rows.append(_row(step.name, len(step.units), t))
        if tick is not None:
            tick(k + 1, len(steps))
        if t.wins and (best is None or t.ratio < best[0].ratio):
            best = (t, step, cand)
        if k == 0 and t.wins:
            break  # the full candidate already wins: nothing to back off
    if best is None:
        return None, None, rows
    # a win is confirmed by a second timing (the best of several is biased low on a noisy machine)
    again = as_timing(timer(base, best[2], feed))
    rows.append(_row(f"{best[1].name} (confirmation)", len(best[1].units), again))
    if not again.wins:
        return None, None, rows
    return best[1], best[2], rows


def sample_feed(data) -> Feed:
    """The first calibration sample, as the timing input."""
    return first_feed(data)
