"""How the next trial is chosen.

- One numeric knob (Condensa's sample-efficient mode): bracketing then bisection on the constraint.
  Both ends of the range are measured first; if one end meets the constraint and the other does
  not, the boundary between them is bisected. Compression grows monotonically with the knob in
  either direction, so the feasible point next to the boundary is the largest compression that
  meets the constraint. A float range is resolved to 1/64 of its width (2 + 6 = 8 evaluations), an
  integer range to adjacent integers; Condensa's budget is 10. The sampler is stateless: the next
  point is computed from the study's finished trials, so a resumed or shared study carries on.
- Joint knobs: Optuna's TPE (default: its dependencies are Optuna's own) or GPSampler (needs torch
  and scipy, not dependencies: without them it falls back to TPE and the report says `sampler: tpe`), both with `constraints_func` so infeasible trials
  guide the search without being picked. Multi-objective mode minimizes (cost, drop) and returns the
  Pareto front.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import optuna
from optuna.distributions import BaseDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from onnxslim_compress.errors import BadInputError
from onnxslim_compress.search.space import Dim

SamplerKind = Literal["gp", "tpe", "random"]
#: bisection stops when the bracket is narrower than this fraction of a float range
_FLOAT_RESOLUTION = 1 / 64
#: whether this Optuna stores constraints on the trial (5.0+) instead of taking constraints_func
TRIAL_CONSTRAINTS = hasattr(optuna.trial.Trial, "set_constraint")
#: Condensa's per-search budget for the one-knob mode
ONE_KNOB_BUDGET = 10


def constraint_of(t: FrozenTrial) -> Sequence[float]:
    """drop - max_drop (<= 0 is feasible). Trials that never measured count as infeasible."""
    c = t.user_attrs.get("constraint")
    return [float(x) for x in c] if c else [1.0]


def _feasible(t: FrozenTrial) -> bool | None:
    f = t.user_attrs.get("feasible")
    return None if f is None else bool(f)


class BisectionSampler(BaseSampler):
    """Bracket-then-bisect on one knob; the point is a pure function of the finished trials."""

    def __init__(self, dim: Dim):
        self.dim = dim

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return {}

    def sample_independent(self, study, trial, param_name: str, param_distribution: BaseDistribution) -> Any:
        if param_name != self.dim.name:
            return optuna.samplers.RandomSampler().sample_independent(study, trial, param_name, param_distribution)
        x = self.next_point(study.get_trials(deepcopy=False), exclude_number=trial.number)
        return int(x) if isinstance(param_distribution, IntDistribution) else float(x)

    # --------------------------------------------------------------- the rule

    def _points(self, trials: list[FrozenTrial], exclude_number: int) -> tuple[dict[float, bool | None], set[float]]:
        done: dict[float, bool | None] = {}
        pending: set[float] = set()
        for t in trials:
            if t.number == exclude_number or self.dim.name not in t.params:
                continue
            x = float(t.params[self.dim.name])
            if t.state == TrialState.COMPLETE:
                done[x] = _feasible(t)
            elif t.state == TrialState.FAIL:
                done.setdefault(x, False)  # a candidate that cannot be built is not feasible
            elif t.state == TrialState.RUNNING:
                pending.add(x)
        return done, pending

    def _close(self, a: float, b: float) -> bool:
        if self.dim.kind == "int":
            return abs(a - b) <= float(self.dim.step or 1)
        return abs(a - b) <= (float(self.dim.high) - float(self.dim.low)) * _FLOAT_RESOLUTION

    def _mid(self, a: float, b: float) -> float:
        return float(self.dim.snap((a + b) / 2))

    def next_point(self, trials: list[FrozenTrial], exclude_number: int = -1) -> float:
        """The next knob value to evaluate (see the module docstring)."""
        lo, hi = float(self.dim.low), float(self.dim.high)
        done, pending = self._points(trials, exclude_number)
        tried = set(done) | pending
        for end in (lo, hi):
            if end not in tried:
                return end
        bracket = self.bracket(done)
        if bracket is not None:
            a, b = bracket
            if not self._close(a, b):
                m = self._mid(a, b)
                if m not in tried:
                    return m
        # converged (or all-feasible / all-infeasible): fill the widest gap between tried points,
        # which refines the objective inside the range rather than repeating a point
        xs = sorted(tried)
        gaps = sorted(((b - a, a, b) for a, b in zip(xs, xs[1:], strict=False)), reverse=True)
        for _, a, b in gaps:
            m = self._mid(a, b)
            if m not in tried:
                return m
        return lo

    @staticmethod
    def bracket(done: dict[float, bool | None]) -> tuple[float, float] | None:
        """(feasible x, infeasible x) adjacent on the axis, nearest the boundary; None if no boundary."""
        xs = sorted(x for x, f in done.items() if f is not None)
        pairs = [(a, b) for a, b in zip(xs, xs[1:], strict=False) if done[a] != done[b]]
        if not pairs:
            return None
        # with a monotone constraint there is exactly one boundary; if noise made several, resolve
        # the first one (the others get their turn once it is closed)
        a, b = pairs[0]
        return (a, b) if done[a] else (b, a)

    def converged(self, trials: list[FrozenTrial]) -> bool:
        """True when the boundary is resolved, or when both ends agree (nothing to bisect)."""
        done, _ = self._points(trials, -1)
        lo, hi = float(self.dim.low), float(self.dim.high)
        if lo not in done or hi not in done:
            return False
        b = self.bracket(done)
        if b is None:
            return True
        return self._close(*b)


def make_sampler(
    kind: SamplerKind,
    *,
    seed: int,
    n_trials: int,
    multi_objective: bool = False,
    one_knob: Dim | None = None,
    strategy: Literal["auto", "bisect", "optuna"] = "auto",
    finite: int | None = None,
) -> BaseSampler:
    """The sampler for this space and budget (see the module docstring).

    `finite`: the number of distinct candidates of an all-categorical space; when the budget covers
    them all, they are enumerated (BruteForceSampler) instead of sampled with repeats."""
    if strategy == "bisect" and one_knob is None:
        raise BadInputError("--strategy bisect needs a space with exactly one numeric knob")
    if one_knob is not None and strategy != "optuna" and not multi_objective:
        return BisectionSampler(one_knob)
    if finite is not None and finite <= n_trials:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.BruteForceSampler(seed=seed)
    n_startup = max(2, min(8, n_trials // 4))
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "gp":
        try:
            import scipy  # noqa: F401
            import torch  # noqa: F401 - GPSampler needs torch; fall back to TPE without it
        except ImportError:
            warnings.warn("GPSampler needs torch and scipy; using TPE instead", RuntimeWarning, stacklevel=2)
            kind = "tpe"
    # Optuna >= 5 reads constraints stored on the trial (Trial.set_constraint, which the trial loop
    # calls); older releases need constraints_func
    cons: dict[str, Any] = {} if TRIAL_CONSTRAINTS else {"constraints_func": constraint_of}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup, deterministic_objective=False, **cons)
        if kind == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, multivariate=True, constant_liar=True, **cons)
    raise BadInputError(f"unknown sampler {kind!r} (gp, tpe or random)")


def sampler_name(sampler: BaseSampler) -> str:
    """What the report records as the sampler used: 'gp', 'tpe', 'random', 'bruteforce', 'bisect'
    (or the class name of another sampler), so a fallback never hides behind the requested name."""
    names = {
        optuna.samplers.TPESampler: "tpe", optuna.samplers.RandomSampler: "random",
        optuna.samplers.BruteForceSampler: "bruteforce", BisectionSampler: "bisect",
    }
    if hasattr(optuna.samplers, "GPSampler"):
        names[optuna.samplers.GPSampler] = "gp"
    return names.get(type(sampler), type(sampler).__name__)


def finite(x: float | None) -> bool:
    return x is not None and not (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))
