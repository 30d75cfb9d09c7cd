"""What one trial measures: the cost of a candidate (latency, MACs or size relative to the baseline)
and how far its quality dropped (the constraint).

Why ratios: latency on a shared machine drifts, so the candidate is timed interleaved with the
baseline in one process (profiler.compare) and only median(candidate)/median(baseline) is trusted.
MACs and size are exact and make deterministic objectives for tests and for targets that cannot be
measured here.

Quality is one of: labelled accuracy (`accuracy`, needs labels), agreement with the original model
(`top1`: argmax agreement; `sequence`: CTC-decoded sequences equal; `cosine`: output cosine
similarity), or the user's own
`evaluate(session) -> float` (higher is better; Condensa's programmable objective). The drop is
always "baseline value minus candidate value", so `max_drop` reads the same for all of them. The
baseline's outputs are computed once and kept, so a trial only runs the candidate.

Early stop: for the counting metrics (accuracy, top1, sequence) every eval sample already seen
bounds the final figure (the unseen samples can at best all agree), so the candidate stops being
evaluated as soon as that bound breaks the constraint, and its latency is not measured (a "screened"
trial: infeasible for sure, its drop a lower bound). A feasible candidate is never stopped.

Timing goes through an injectable `timer` with profiler.compare's signature (the default), so the
trial's latency is what `profile A B` measures (same EP, threads, session options, interleaving) and
a test can replace it by a fake one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import onnx

from onnxslim_compress.errors import BadInputError
from onnxslim_compress.graph import weights
from onnxslim_compress.graph.costs import count_costs
from onnxslim_compress.graph.io import all_initializers
from onnxslim_compress.runtime.metrics import FidelityAccumulator, accuracy, feed_for, predictions
from onnxslim_compress.runtime.profiler import ABResult, compare
from onnxslim_compress.runtime.session import Target, make_session, shapes_from_run

ObjectiveKind = Literal["latency", "macs", "size"]
MetricKind = Literal["accuracy", "top1", "sequence", "cosine", "custom"]
EvaluateFn = Callable[[Any], float]
#: timer(model_a, model_b, feeds, target, warmup=, runs=) -> ABResult: profiler.compare or a fake
LatencyTimer = Callable[..., ABResult]

#: keep the baseline's eval outputs in memory up to this many bytes; above, rerun the baseline
_MAX_CACHED_OUTPUT_BYTES = 1 << 30


@dataclass
class Measurement:
    """One candidate's figures. Ratios are candidate / baseline (below 1 = better)."""

    objective: float
    drop: float
    metric: float
    feasible: bool
    latency_ratio: float | None = None
    latency_ms: float | None = None
    baseline_latency_ms: float | None = None
    latency_ci95: list[float] | None = None
    macs_ratio: float | None = None
    size_ratio: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all initializers (subgraphs included): what quantization and factorization shrink.

    Not graph.io.model_bytes, which adds a fixed allowance for the graph: on small models that
    allowance would hide the change the size objective is meant to see.
    """
    return sum(weights.nbytes(t) for t in all_initializers(model.graph))


def default_metric(model: onnx.ModelProto, labels: Any, evaluate: EvaluateFn | None) -> MetricKind:
    """accuracy with labels; the user's callable if given; top1 for a [N, C] classifier output; else cosine."""
    if evaluate is not None:
        return "custom"
    if labels is not None:
        return "accuracy"
    out = model.graph.output[0].type.tensor_type
    rank = len(out.shape.dim) if out.HasField("shape") else 0
    return "top1" if rank == 2 else "cosine"


class Evaluator:
    """Measures candidates against one baseline model; the baseline figures are computed once."""

    def __init__(
        self,
        baseline: onnx.ModelProto,
        *,
        target: Target,
        eval_data: Iterable[dict[str, np.ndarray]],
        metric: MetricKind,
        max_drop: float,
        objective: ObjectiveKind = "latency",
        labels: np.ndarray | None = None,
        evaluate: EvaluateFn | None = None,
        input_shapes: dict[str, list[int]] | None = None,
        warmup: int = 10,
        runs: int = 50,
        metric_target: Target | None = None,
        timer: LatencyTimer | None = None,
        early_stop: bool = True,
    ):
        if metric == "accuracy" and labels is None:
            raise BadInputError("--metric accuracy needs --labels")
        if metric == "custom" and evaluate is None:
            raise BadInputError("metric 'custom' needs an evaluate(session) callable")
        if objective not in ("latency", "macs", "size"):
            raise BadInputError(f"unknown objective {objective!r} (latency, macs or size)")
        if runs < 1:
            raise BadInputError("runs must be >= 1")
        self.baseline = baseline
        self.target = target
        # quality is measured where the model will run (a TensorRT int8 engine rounds differently
        # from ORT's CPU kernels); metric_target overrides it, e.g. for a CPU-only CI
        self.metric_target = metric_target or target
        self.eval_data = eval_data
        self.metric = metric
        self.max_drop = float(max_drop)
        self.objective = objective
        self.labels = None if labels is None else np.asarray(labels)
        self.evaluate = evaluate
        self.input_shapes = dict(input_shapes or {})
        self.warmup, self.runs = warmup, runs
        self.timer: LatencyTimer = timer or compare
        self.early_stop = early_stop
        self._feed: dict[str, np.ndarray] | None = None
        self._base_outputs: list[dict[str, np.ndarray]] | None = None
        self._base_value: float | None = None
        self._base_costs: dict[str, float] | None = None
        self._row_counts: dict[str, dict[str, int]] = {}
        self._out_names = [o.name for o in baseline.graph.output]

    # ------------------------------------------------------------------ baseline

    @property
    def feed(self) -> dict[str, np.ndarray]:
        """The sample latency is measured on: the first eval sample."""
        if self._feed is None:
            for f in self.eval_data:
                self._feed = {k: np.asarray(v) for k, v in f.items()}
                break
            else:
                raise BadInputError("evaluation data is empty")
        return self._feed

    def _run_all(self, model: onnx.ModelProto) -> Iterable[dict[str, np.ndarray]]:
        sess = make_session(model, self.metric_target)
        for feed in self.eval_data:
            outs = sess.run(self._out_names, feed_for(sess, feed, "candidate"))
            yield dict(zip(self._out_names, outs, strict=True))

    def baseline_outputs(self) -> Iterable[dict[str, np.ndarray]]:
        if self._base_outputs is not None:
            return self._base_outputs
        kept: list[dict[str, np.ndarray]] = []
        size = 0
        for o in self._run_all(self.baseline):
            size += sum(v.nbytes for v in o.values())
            if size > _MAX_CACHED_OUTPUT_BYTES:
                return self._run_all(self.baseline)
            kept.append(o)
        if not kept:
            raise BadInputError("evaluation data is empty")
        self._base_outputs = kept
        return kept

    def baseline_value(self) -> float:
        """The baseline's metric value (1.0 for the agreement metrics, by definition)."""
        if self._base_value is None:
            if self.metric in ("top1", "sequence", "cosine"):
                self._base_value = 1.0
            elif self.metric == "accuracy":
                self._base_value = self._accuracy(self.baseline_outputs())
            else:
                self._base_value = self._custom(self.baseline)
        return self._base_value

    def baseline_costs(self) -> dict[str, float]:
        if self._base_costs is None:
            self._base_costs = self._costs(self.baseline)
        return self._base_costs

    # ------------------------------------------------------------------ pieces

    def _costs(self, model: onnx.ModelProto) -> dict[str, float]:
        out: dict[str, float] = {"size_bytes": float(weight_bytes(model))}
        if self.objective == "macs" or self.objective == "latency":
            try:
                out["macs"] = float(count_costs(model, self.input_shapes, runner=shapes_from_run).as_dict()["total"]["macs"])
            except Exception:  # noqa: BLE001 - MACs are informative for latency; required only for 'macs'
                if self.objective == "macs":
                    raise
        return out

    def _accuracy(self, outputs: Iterable[dict[str, np.ndarray]]) -> float:
        first = self._out_names[0]
        preds = np.concatenate([predictions(o[first]) for o in outputs])
        return accuracy(preds, self._flat_labels(preds.size))

    def _flat_labels(self, n: int) -> np.ndarray:
        labels = self.labels
        assert labels is not None
        flat = labels.argmax(-1).reshape(-1) if (labels.ndim >= 2 and labels.dtype.kind == "f") else labels.reshape(-1)
        if flat.size < n:
            raise BadInputError(f"labels: {flat.size} labels for {n} predictions of output {self._out_names[0]!r}")
        return flat[:n]

    def _custom(self, model: onnx.ModelProto) -> float:
        assert self.evaluate is not None
        v = self.evaluate(make_session(model, self.metric_target))
        try:
            return float(v)
        except (TypeError, ValueError):
            raise BadInputError(f"evaluate() returned {type(v).__name__}, expected a float") from None

    def _rows(self, key: str) -> dict[str, int] | None:
        """Rows per output the counting metric `key` will see over the whole eval set (from the kept
        baseline outputs), or None when they are not kept (then no early stop)."""
        self.baseline_outputs()  # kept on first use (the agreement metrics' baseline value needs no run)
        if self._base_outputs is None:
            return None
        if key not in self._row_counts:
            acc = FidelityAccumulator(self._out_names)
            for o in self._base_outputs:
                acc.update(o, o)
            self._row_counts[key] = {n: c for n, (_, c) in acc.counts(key).items()}
        return self._row_counts[key]

    def quality(self, model: onnx.ModelProto) -> tuple[float, float, dict[str, Any]]:
        """(candidate value, drop, details) for the configured metric; `details["screened"]` when the
        evaluation stopped early because the constraint was already broken for sure."""
        base = self.baseline_value()
        extra: dict[str, Any] = {}
        if self.metric == "custom":
            value = self._custom(model)
        elif self.metric == "accuracy":
            value = self._accuracy_streamed(model, base, extra)
        else:
            acc = FidelityAccumulator(self._out_names)
            key = self.metric
            rows = self._rows(key) if (self.early_stop and key in ("top1", "sequence")) else None
            for seen, (a, b) in enumerate(zip(self.baseline_outputs(), self._run_all(model), strict=False), 1):
                acc.update(a, b)
                if rows:
                    bound = max((c - m) / rows[n] for n, (m, c) in acc.counts(key).items() if rows.get(n))
                    if bound > self.max_drop + 1e-12:
                        extra.update(screened=True, screened_after=seen, drop_lower_bound=bound)
                        return base - bound, bound, extra
            res = acc.result()
            vals = [m[key] for m in res.values() if key in m]
            if not vals:
                raise BadInputError(
                    f"metric {self.metric} applies to no output of this model (top1 needs a float output of rank "
                    ">= 2, sequence class scores [N, T, C] or ids [N, T])"
                )
            value = min(vals) if not any(math.isnan(v) for v in vals) else math.nan
            extra["cosine"] = min((m["cosine"] for m in res.values()), default=None)
        drop = base - value if not math.isnan(value) else math.inf
        return value, drop, extra

    def _accuracy_streamed(self, model: onnx.ModelProto, base: float, extra: dict[str, Any]) -> float:
        """Labelled accuracy, stopping once even all-correct unseen samples could not meet the constraint."""
        self.baseline_outputs()
        if not self.early_stop or self._base_outputs is None:
            return self._accuracy(self._run_all(model))
        first = self._out_names[0]
        total = sum(predictions(o[first]).size for o in self._base_outputs)
        labels = self._flat_labels(total)
        done, correct, outs = 0, 0, []
        for o in self._run_all(model):
            p = predictions(o[first])
            correct += int(np.count_nonzero(p == labels[done : done + p.size]))
            done += p.size
            outs.append(o)
            best_case = (correct + (total - done)) / total
            if base - best_case > self.max_drop + 1e-12 and done < total:
                extra.update(screened=True, screened_after=len(outs), drop_lower_bound=base - best_case)
                return best_case
        return self._accuracy(outs)

    def latency(self, model: onnx.ModelProto, runs: int) -> ABResult:
        """Candidate vs baseline, interleaved, `runs` rounds: the trial's timing and the finalists'
        re-measure (more rounds) use the same timer, so they differ only in how long they look."""
        return self.timer(self.baseline, model, self.feed, self.target, warmup=self.warmup, runs=runs)

    def measure(self, model: onnx.ModelProto) -> Measurement:
        """Quality first: a candidate that breaks the constraint still gets its cost measured, so the
        surrogate model learns the whole trade-off and the Pareto front is complete."""
        t0 = time.perf_counter()
        value, drop, extra = self.quality(model)
        extra["quality_seconds"] = round(time.perf_counter() - t0, 3)
        base = self.baseline_costs()
        costs = self._costs(model)
        m = Measurement(objective=math.nan, drop=drop, metric=value, feasible=bool(drop <= self.max_drop + 1e-12), extra=extra)
        m.size_ratio = costs["size_bytes"] / base["size_bytes"] if base["size_bytes"] else None
        if "macs" in costs and base.get("macs"):
            m.macs_ratio = costs["macs"] / base["macs"]
        if extra.get("screened"):
            # infeasible for sure: its latency is not worth measuring. Constrained TPE ranks
            # infeasible trials by their violation, not their cost, so a stand-in cost is enough
            m.objective = float(m.macs_ratio if m.macs_ratio is not None else (m.size_ratio or 1.0))
        elif self.objective == "latency":
            t1 = time.perf_counter()
            ab = self.latency(model, self.runs)
            extra["latency_seconds"] = round(time.perf_counter() - t1, 3)
            m.latency_ratio = ab.ratio
            m.latency_ms = ab.b.median
            m.baseline_latency_ms = ab.a.median
            m.latency_ci95 = list(ab.ratio_ci95)
            m.objective = ab.ratio
        elif self.objective == "macs":
            m.objective = float(m.macs_ratio if m.macs_ratio is not None else math.nan)
        else:
            m.objective = float(m.size_ratio if m.size_ratio is not None else math.nan)
        return m
