"""The trial loop shared by `search` (which also picks and writes the result) and `worker`.

No trial redoes an earlier trial's work:
- a parameter set already measured (in this process or by any worker, found through the study) is
  not rebuilt: the trial copies the stored measurement and says `duplicate_of`;
- before building, a trial claims its candidate's key atomically in the study's database
  (storage.KeyClaims): exactly one trial wins and builds, every other trial with that key waits for
  it and copies its measurement, so no two workers ever build the same candidate. A claim whose
  trial died (a SIGKILLed worker's trial, failed by the heartbeat and re-queued by
  RetryFailedTrialCallback) is taken over by one trial, which rebuilds the candidate;
- pipeline prefixes and pass statistics are reused through TrialBuilder and the shared Context.
The budget counts evaluated candidates: a repeated parameter set costs nothing, so it does not use
up the budget (Optuna's samplers do propose repeats, e.g. two trials differing only in a knob of a
disabled pass). A trial that would evaluate past the budget is pruned before doing any work; two
workers deciding at the same instant can overshoot by one trial each. The total number of trials,
repeats included, is capped at MAX_TRIALS_FACTOR x budget (or the number of raw combinations of an
enumerated categorical space).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from onnxslim_compress.errors import CompressError
from onnxslim_compress.search.build import TrialBuilder
from onnxslim_compress.search.objective import Evaluator, Measurement
from onnxslim_compress.search.space import SearchSpace
from onnxslim_compress.search.storage import KeyClaims
from onnxslim_compress.search.strategy import TRIAL_CONSTRAINTS, BisectionSampler, constraint_of

#: how long a trial waits for a twin running in another worker before computing it itself
_TWIN_WAIT_S = 3600.0
_POLL_S = 0.5
MAX_TRIALS_FACTOR = 3


def _scalar_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """The per-pass stats worth storing per trial: scalars, plus how many nodes were skipped."""
    out = {k: v for k, v in stats.items() if isinstance(v, (bool, int, float, str)) or v is None}
    if isinstance(stats.get("skipped"), list):
        out["skipped"] = len(stats["skipped"])
    return out


def set_constraint(trial: optuna.Trial, value: float) -> None:
    """drop - max_drop (<= 0 feasible), kept where every Optuna version's samplers find it."""
    trial.set_user_attr("constraint", [value])
    if TRIAL_CONSTRAINTS:
        trial.set_constraint("drop", value)


def evaluated(trials: list[FrozenTrial], exclude: int = -1) -> int:
    """Trials that build a candidate (or are building one now): repeats and pruned trials excluded."""
    n = 0
    for t in trials:
        if t.number == exclude or "duplicate_of" in t.user_attrs:
            continue
        # a FAIL without "error" is a killed worker's trial (failed by the heartbeat): it built nothing
        finished = "key" in t.user_attrs and (
            t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and "error" in t.user_attrs)
        )
        busy = t.state == TrialState.RUNNING and bool(t.user_attrs.get("computing"))
        n += int(finished or busy)
    return n


@dataclass
class LoopSettings:
    budget: int
    max_drop: float
    multi_objective: bool = False
    timeout: float | None = None
    debug: bool = False
    #: when the sampler repeats a measured candidate, queue a neighbour of it as the next trial
    explore_on_repeat: bool = True
    #: when a candidate breaks the constraint, queue it backed off halfway toward its passes'
    #: gentle ends (SearchSpace.gentler): the feasible edge of a lossy knob is found in a few
    #: halvings, where a sampler that saw prune 0.3 fail may never try 0.1 (MiniLM-L3: 16 trials,
    #: every pruned candidate at 0.3-0.5, none below)
    soften_infeasible: bool = True
    seed: int = 0
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    #: how long to wait for another trial that owns the same candidate (or for the fleet's last trials)
    twin_wait: float = _TWIN_WAIT_S


def fail_stale(study: optuna.Study) -> None:
    """Fail the running trials whose worker stopped sending heartbeats (killed), which re-queues
    them through the storage's RetryFailedTrialCallback; a no-op on storages without heartbeats."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


class TrialLoop:
    """Runs trials of one study until its budget (or the timeout, or convergence) is reached."""

    def __init__(
        self,
        study: optuna.Study,
        space: SearchSpace,
        builder: TrialBuilder,
        evaluator: Evaluator,
        settings: LoopSettings,
        on_trial: Callable[[FrozenTrial], None] | None = None,
        claims: KeyClaims | None = None,
    ):
        self.study = study
        #: where candidate keys are claimed: the study's database for a fleet (in memory otherwise)
        self.claims = claims if claims is not None else KeyClaims(None, study.study_name)
        self.space = space
        self.builder = builder
        self.evaluator = evaluator
        self.settings = settings
        self.on_trial = on_trial
        #: key -> (values, attrs) measured in this process
        self.memo: dict[str, tuple[Any, dict[str, Any]]] = {}
        self.computed: list[int] = []
        card = space.cardinality()
        #: evaluations allowed: the budget, or fewer when the space has fewer distinct candidates
        self.budget = settings.budget if card is None else min(settings.budget, card)
        #: total trials (repeats included) after which the loop gives up proposing new points
        self.cap = max(MAX_TRIALS_FACTOR * settings.budget, space.raw_size() or 0)

    # ------------------------------------------------------------------ one trial

    def _values(self, m: Measurement) -> float | tuple[float, float]:
        return (m.objective, m.drop) if self.settings.multi_objective else m.objective

    def _copy_from(self, trial: optuna.Trial, twin: FrozenTrial) -> Any:
        for k in ("measurement", "feasible", "build"):
            if k in twin.user_attrs:
                trial.set_user_attr(k, twin.user_attrs[k])
        set_constraint(trial, constraint_of(twin)[0])
        trial.set_user_attr("duplicate_of", twin.number)
        return tuple(twin.values) if self.settings.multi_objective else twin.values[0]

    def _trial(self, number: int) -> FrozenTrial | None:
        for t in self.study.get_trials(deepcopy=False):
            if t.number == number:
                return t
        return None

    def objective(self, trial: optuna.Trial) -> Any:
        trial.set_user_attr("worker", self.settings.worker)
        if trial.number >= self.cap:
            self._over_budget(trial)
        values = self.space.suggest(trial)
        key = self.space.key(values)
        trial.set_user_attr("key", key)
        if key in self.memo:
            self._explore(trial, values)
            vals, attrs = self.memo[key]
            for k, v in attrs.items():
                if k == "constraint":
                    set_constraint(trial, v[0])
                else:
                    trial.set_user_attr(k, v)
            return vals
        # a candidate measured earlier is copied without claiming (or spending budget)
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.user_attrs.get("key") == key and "measurement" in t.user_attrs:
                self._explore(trial, values)
                return self._copy_from(trial, t)
        if evaluated(self.study.get_trials(deepcopy=False), exclude=trial.number) >= self.budget:
            self._over_budget(trial)
        self._beat(trial)
        deadline = time.monotonic() + self.settings.twin_wait
        while True:
            owner = self.claims.claim(key, trial.number, self.settings.worker)
            if owner == trial.number:
                break
            twin = self._trial(owner)
            state = twin.state if twin is not None else None
            if twin is not None and state == TrialState.COMPLETE:
                self._explore(trial, values)
                return self._copy_from(trial, twin)
            if twin is not None and state == TrialState.FAIL and "error" in twin.user_attrs:
                trial.set_user_attr("duplicate_of", twin.number)
                trial.set_user_attr("error", twin.user_attrs["error"])
                raise CompressError(twin.user_attrs["error"])
            if state in (TrialState.FAIL, TrialState.PRUNED):
                # its worker died (failed by the heartbeat) or it stopped before building: one trial
                # takes the claim over and builds; a lost race goes round again
                if self.claims.take_over(key, owner, trial.number, self.settings.worker):
                    trial.set_user_attr("rebuilds", owner)
                    break
                continue
            if time.monotonic() > deadline:
                trial.set_user_attr("error", f"waited {self.settings.twin_wait:.0f} s for trial {owner} building the same candidate")
                raise CompressError(trial.user_attrs["error"])
            time.sleep(_POLL_S)
            fail_stale(self.study)
        trial.set_user_attr("computing", True)
        return self._compute(trial, values, key)

    def _beat(self, trial: optuna.Trial) -> None:
        """Record this trial's heartbeat now, before it claims a candidate. Optuna's heartbeat thread
        records its first beat asynchronously, and a trial with no beat at all is never failed as
        stale: a worker SIGKILLed right after claiming left its trial RUNNING for good (seen in
        the kill test on a loaded machine)."""
        storage = self.study._storage  # noqa: SLF001 - Optuna keeps the study's storage private
        if hasattr(storage, "record_heartbeat") and getattr(storage, "get_heartbeat_interval", lambda: None)():
            storage.record_heartbeat(trial._trial_id)  # noqa: SLF001 - the storage id Optuna keys heartbeats by

    def _explore(self, trial: optuna.Trial, values: dict[str, Any]) -> None:
        """A repeat teaches the sampler nothing, and a GP that likes one point keeps proposing it
        (seen on PP-OCR det: 22 repeats of one candidate in 30 trials). So each repeat queues a
        not-yet-seen neighbour of the repeated point as the next trial (any worker may take it)."""
        if not self.settings.explore_on_repeat:
            return
        seen = self._seen_keys()
        rng = np.random.default_rng([self.settings.seed, trial.number])
        for _ in range(64):
            cand = self.space.neighbor(values, rng)
            if self.space.key(cand) not in seen:
                self.study.enqueue_trial(cand)
                return

    def _seen_keys(self) -> set[str]:
        """Keys of every trial so far and of those queued (waiting with fixed parameters)."""
        trials = self.study.get_trials(deepcopy=False)
        seen = {t.user_attrs.get("key") for t in trials}
        for t in trials:
            fixed = t.system_attrs.get("fixed_params")
            if t.state == TrialState.WAITING and fixed:
                with contextlib.suppress(KeyError):
                    seen.add(self.space.key(fixed))
        return seen

    def _over_budget(self, trial: optuna.Trial) -> None:
        trial.set_user_attr("over_budget", True)
        raise optuna.TrialPruned("budget reached")

    def _compute(self, trial: optuna.Trial, values: dict[str, Any], key: str) -> Any:
        t0 = time.perf_counter()
        try:
            built = self.builder.build(self.space.passes(values))
            m = self.evaluator.measure(built.model)
        except Exception as e:
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            trial.set_user_attr("error", msg)
            if self.settings.debug:
                traceback.print_exc(file=sys.stderr)
            raise
        self.computed.append(trial.number)
        build = {
            "seconds": round(built.seconds, 3),
            "trial_seconds": round(time.perf_counter() - t0, 3),
            "reused_steps": built.reused_steps,
            "steps": [{"name": s.name, "modified": s.modified, "seconds": round(s.seconds, 3), "stats": _scalar_stats(s.stats)} for s in built.steps],
            "cache": self.builder.cache_stats(),
        }
        attrs = {
            "measurement": json_safe(m.as_dict()),
            "constraint": [m.drop - self.settings.max_drop if math.isfinite(m.drop) else 1.0],
            "feasible": m.feasible,
            "build": build,
        }
        for k, v in attrs.items():
            if k == "constraint":
                set_constraint(trial, v[0])
            else:
                trial.set_user_attr(k, v)
        vals = self._values(m)
        self.memo[key] = (vals, {**attrs, "duplicate_of": trial.number})
        if not m.feasible and self.settings.soften_infeasible:
            self._soften(trial, values)
        return vals

    def _soften(self, trial: optuna.Trial, values: dict[str, Any]) -> None:
        """Queue the backed-off candidate (SearchSpace.gentler) unless it was seen or is queued, or
        back-offs already hold half the budget: the sampler keeps the other half. (MiniLM-L3, 16
        trials, uncapped: three chains - prune + int8, prune, low rank - took every trial after the
        presets, none reached the constraint, and the sampler proposed nothing.)"""
        cand = self.space.gentler(values)
        if cand is None:
            return
        key = self.space.key(cand)
        if key in self._seen_keys():
            return
        queued = sum(1 for t in self.study.get_trials(deepcopy=False) if "softened_from" in t.user_attrs)
        if queued >= self.budget // 2:
            trial.set_user_attr("softened_to", f"not queued: back-offs already hold {queued} of the {self.budget} trials")
            return
        self.study.enqueue_trial(cand, user_attrs={"softened_from": trial.number})
        trial.set_user_attr("softened_to", key)

    # ------------------------------------------------------------------ the loop

    def n_trials(self) -> int:
        return len(self.study.get_trials(deepcopy=False))

    def done(self, started: float) -> bool:
        trials = self.study.get_trials(deepcopy=False)
        if evaluated(trials) >= self.budget or len(trials) >= self.cap:
            return True
        if self.settings.timeout is not None and time.monotonic() - started >= self.settings.timeout:
            return True
        sampler = self.study.sampler
        return isinstance(sampler, BisectionSampler) and sampler.converged(list(trials))

    def others_running(self) -> bool:
        """Whether some worker is still building a candidate (its trial may yet die and be re-queued)."""
        return any(t.user_attrs.get("computing") for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    def run(self) -> None:
        """Trials until done; then, while other workers' last trials run, wait for them (bounded by
        twin_wait), because a killed one is re-queued and this worker should rebuild it."""
        started = time.monotonic()
        callbacks = [self._callback] if self.on_trial else []
        waiting_since: float | None = None
        while True:
            fail_stale(self.study)
            if self.done(started):
                if not self.others_running():
                    return
                if self.settings.timeout is not None and time.monotonic() - started >= self.settings.timeout:
                    return
                waiting_since = waiting_since or time.monotonic()
                if time.monotonic() - waiting_since > self.settings.twin_wait:
                    print(f"worker {self.settings.worker}: other workers' trials still running after "
                          f"{self.settings.twin_wait:.0f} s; leaving them", file=sys.stderr)
                    return
                time.sleep(_POLL_S)
                continue
            waiting_since = None
            self.study.optimize(self.objective, n_trials=1, catch=(Exception,), callbacks=callbacks, gc_after_trial=False)

    def wait_for_fleet(self, idle_limit: float, log: Callable[[str], None]) -> str | None:
        """The coordinator's wait (`search --wait-for-workers`): until the budget is spent and no
        trial runs. A killed worker's trial is failed by the heartbeat and re-queued here (the
        coordinator checks for stale trials too). Never forever: after `idle_limit` seconds in which
        no trial ran or finished (no worker alive), it stops and returns why, so the pick is made
        from the trials finished so far."""
        started = time.monotonic()
        last_change = time.monotonic()
        last: tuple[Any, ...] | None = None
        log(f"waiting for workers on study {self.study.study_name} (budget {self.budget} candidates)")
        while True:
            fail_stale(self.study)
            trials = self.study.get_trials(deepcopy=False)
            running = [t for t in trials if t.state == TrialState.RUNNING]
            if self.done(started) and not running:
                return None
            sig = tuple((t.number, t.state) for t in trials)
            if running or sig != last:
                last_change = time.monotonic()
            last = sig
            idle = time.monotonic() - last_change
            if idle >= idle_limit:
                msg = (f"no worker ran a trial for {idle:.0f} s (--worker-idle); stopped waiting with "
                       f"{evaluated(trials)} of {self.budget} candidates evaluated")
                log(msg)
                return msg
            time.sleep(_POLL_S)

    def _callback(self, study: optuna.Study, t: FrozenTrial) -> None:
        if self.on_trial is not None and not t.user_attrs.get("over_budget"):
            self.on_trial(t)


def wait_for_running(study: optuna.Study, timeout: float = _TWIN_WAIT_S) -> str | None:
    """Wait until no trial of the study is running (other workers finishing their last trial); a
    killed worker's trial is failed by the heartbeat meanwhile. Returns a note if it gave up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fail_stale(study)
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return None
        time.sleep(_POLL_S)
    return f"trials still running after {timeout:.0f} s; picked from the finished ones"


def json_safe(d: Any) -> Any:
    """NaN/inf are not JSON: Optuna's RDB stores user attrs as JSON text."""
    if isinstance(d, dict):
        return {k: json_safe(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [json_safe(v) for v in d]
    if isinstance(d, float) and not math.isfinite(d):
        return "nan" if math.isnan(d) else ("inf" if d > 0 else "-inf")
    try:
        json.dumps(d)
        return d
    except TypeError:
        return str(d)


__all__ = ["LoopSettings", "TrialLoop", "constraint_of", "evaluated", "fail_stale", "set_constraint", "wait_for_running"]
