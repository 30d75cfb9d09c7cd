"""`compress --verify`: check fidelity after every pass and bisect a lossy pass to the nodes at fault.

Why bisection and not per-node sensitivity: a pass may touch hundreds of layers, and measuring each
alone costs one run per layer. Adaptive group testing (exclude half the touched nodes, keep the half
whose exclusion helps more, recurse) finds one offender in about 2*log2(n) re-runs of the pass; the
loop repeats until the pass fits the threshold or `max_excluded` offenders were taken out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import onnx

from onnxslim_compress.errors import BadInputError
from onnxslim_compress.passes.base import Pass, PassResult, build_params, params_to_dict
from onnxslim_compress.runtime.metrics import HIGHER_IS_WORSE, compare_models


@dataclass
class VerifySpec:
    """Threshold on one fidelity metric of each pass's output against its input."""

    metric: str = "cosine"
    threshold: float = 0.999
    max_excluded: int = 8
    samples: int = 8

    @classmethod
    def parse(cls, text: str | None) -> VerifySpec:
        if not text:
            return cls()
        metric, sep, value = text.partition("=")
        if not sep or metric not in ("cosine", "rel_l2", "snr_db", "top1", "max_abs"):
            raise BadInputError(f"--verify {text!r}: expected METRIC=VALUE with METRIC cosine, rel_l2, snr_db, top1 or max_abs")
        try:
            return cls(metric=metric, threshold=float(value))
        except ValueError:
            raise BadInputError(f"--verify {text!r}: {value!r} is not a number") from None

    def ok(self, value: float) -> bool:
        return value <= self.threshold if HIGHER_IS_WORSE[self.metric] else value >= self.threshold


def touched_nodes(stats: dict[str, Any]) -> list[str]:
    """Node names a pass reports as changed: `layers` rows with `node`, `nodes` or `members` keys."""
    names: list[str] = []
    for row in stats.get("layers", []) or []:
        if not isinstance(row, dict):
            continue
        for key in ("node", "nodes", "members"):
            v = row.get(key)
            if isinstance(v, str):
                names.append(v)
            elif isinstance(v, (list, tuple)):
                names.extend(x for x in v if isinstance(x, str))
    seen: set[str] = set()
    return [n for n in names if not (n in seen or seen.add(n))]


def supports_exclude(p: Pass) -> bool:
    return "exclude" in params_to_dict(p.params)


def _with_exclude(p: Pass, names: Iterable[str]) -> Pass:
    params = params_to_dict(p.params)
    extra = [f"^{re.escape(n)}$" for n in names]
    params["exclude"] = list(params.get("exclude") or []) + extra
    return type(p)(build_params(type(p).Params, params, f"pass '{p.name}'"))


@dataclass
class VerifyOutcome:
    name: str
    value: float
    ok: bool
    excluded: list[str] = field(default_factory=list)
    runs: int = 0
    note: str = ""
    metric: str = ""
    threshold: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"pass": self.name, "metric": self.metric, "threshold": self.threshold, "value": self.value, "ok": self.ok,
                "excluded": self.excluded, "reruns": self.runs, "note": self.note}


class Verifier:
    """Measures one pass against its input and, when it is too lossy, bisects and re-runs it."""

    def __init__(self, spec: VerifySpec, data: Any):
        self.spec = spec
        self.data = list(_take(data, spec.samples))
        if not self.data:
            raise BadInputError("--verify needs data: give --eval or --calib")

    def measure(self, before: onnx.ModelProto, after: onnx.ModelProto) -> float:
        rep = compare_models(before, after, self.data)
        return rep.worst(self.spec.metric)

    def check(self, p: Pass, before: onnx.ModelProto, res: PassResult, ctx: Any) -> tuple[PassResult, VerifyOutcome]:
        value = self.measure(before, res.model)
        out = VerifyOutcome(p.name, value, self.spec.ok(value), metric=self.spec.metric, threshold=self.spec.threshold)
        if out.ok or not res.modified:
            return res, out
        if not supports_exclude(p):
            out.note = "pass has no exclude parameter; cannot bisect"
            return res, out
        candidates = touched_nodes(res.stats)
        if not candidates:
            out.note = "pass reported no per-node changes; cannot bisect"
            return res, out
        excluded: list[str] = []
        best_res, best_value = res, value
        while not self.spec.ok(best_value) and len(excluded) < self.spec.max_excluded:
            remaining = [c for c in candidates if c not in excluded]
            if not remaining:
                break
            culprit, runs = self._bisect(p, before, ctx, excluded, remaining)
            out.runs += runs
            excluded.append(culprit)
            best_res = _with_exclude(p, excluded)(before, ctx)
            out.runs += 1
            best_value = self.measure(before, best_res.model)
        out.value, out.ok, out.excluded = best_value, self.spec.ok(best_value), excluded
        best_res.stats = {**best_res.stats, "verify_excluded": [{"node": n, "reason": f"bisected: {self.spec.metric} over threshold"} for n in excluded]}
        return best_res, out

    def _score(self, p: Pass, before, ctx, excluded: list[str]) -> float:
        res = _with_exclude(p, excluded)(before, ctx)
        v = self.measure(before, res.model)
        return v if HIGHER_IS_WORSE[self.spec.metric] else -v  # lower is better

    def _bisect(self, p: Pass, before, ctx, excluded: list[str], cand: list[str]) -> tuple[str, int]:
        runs = 0
        while len(cand) > 1:
            half = len(cand) // 2
            left, right = cand[:half], cand[half:]
            s_left = self._score(p, before, ctx, excluded + left)
            s_right = self._score(p, before, ctx, excluded + right)
            runs += 2
            cand = left if s_left <= s_right else right
        return cand[0], runs


def _take(data: Any, n: int):
    for k, x in enumerate(data):
        if k >= n:
            break
        yield x
