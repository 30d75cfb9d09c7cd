"""Timing a candidate model against the model it came from, interleaved on the target: shared by
the passes that keep a rewrite only when it is measurably not slower (quantize's speed check,
fuse_attention).

"Measurably faster" is read off the timing itself, not a fixed margin: the 95 % interval of the
interleaved A/B ratio (runtime/profiler.py ratio_ci95, a bootstrap over the runs). The timer is
injectable (Context.timer), so tests decide what "loses" without timing anything; it may return a
bare ratio (an exact timing: a zero-width interval), a Timing, or an ABResult.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from onnxslim_compress.runtime.profiler import compare
from onnxslim_compress.runtime.session import Target

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class Timing:
    """Latency ratio candidate / float (median of interleaved runs) with its 95 % interval."""

    ratio: float
    lo: float
    hi: float

    @property
    def wins(self) -> bool:
        """Measurably faster: the whole interval lies below 1."""
        return self.hi < 1.0

    def text(self) -> str:
        return f"{self.ratio:.2f} (95 % interval {self.lo:.2f}-{self.hi:.2f})"


def as_timing(t: object) -> Timing:
    """A timer's answer as a Timing: a bare number is an exact ratio (zero-width interval); an
    ABResult (runtime/profiler.compare) brings its bootstrap ratio_ci95."""
    if isinstance(t, Timing):
        return t
    ci = getattr(t, "ratio_ci95", None)
    if ci is not None:
        r = float(t.ratio)
        return Timing(r, min(float(ci[0]), r), max(float(ci[1]), r))
    if isinstance(t, (tuple, list)):
        r, lo, hi = (float(x) for x in t)
        return Timing(r, lo, hi)
    r = float(t)
    return Timing(r, r, r)


#: timer(float model, candidate, feed) -> ratio candidate / float: a Timing, an ABResult or a number
Timer = Callable[[onnx.ModelProto, onnx.ModelProto, Feed], Timing | float]
#: env switch that turns the real timing off (tests/conftest.py sets it: timing is slow and noisy)
NO_SPEED_CHECK_ENV = "ONNXSLIM_COMPRESS_NO_SPEED_CHECK"
#: seconds one interleaved comparison should take, and the bounds on its runs
_COMPARE_S = 2.0
_RUNS = (10, 200)


def real_timer(target: Target) -> Timer:
    """Interleaved A/B on `target` (runtime/profiler.compare), runs sized to ~_COMPARE_S seconds."""

    def timer(a: onnx.ModelProto, b: onnx.ModelProto, feed: Feed) -> Timing:
        probe = compare(a, b, feed, target, warmup=2, runs=3)
        per_pair = max(probe.a.median + probe.b.median, 1e-3) / 1000.0
        runs = int(np.clip(_COMPARE_S / per_pair, *_RUNS))
        return as_timing(compare(a, b, feed, target, warmup=3, runs=runs))

    return timer


def timer_for(ctx, target: Target) -> Timer | None:
    """The Context's timer if one is set, else the real one unless the env switch turns it off."""
    t = getattr(ctx, "timer", None)
    if t is not None:
        return t
    if os.environ.get(NO_SPEED_CHECK_ENV, "") not in ("", "0"):
        return None
    return real_timer(target)
