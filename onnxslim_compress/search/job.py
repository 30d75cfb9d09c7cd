"""The search as a function (Python API) and the worker's entry point.

`search()` loads the model and data once, derives the space from the recipe, opens (or resumes) the
study, runs trials, waits for other workers' last trials, then rebuilds the best feasible candidate,
saves it atomically with its report in the metadata, and writes the JSON report and Pareto plot
beside it. `run_worker()` joins an existing study with only its storage URL and name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import optuna
import yaml

from onnxslim_compress.data import ImageOptions, open_data
from onnxslim_compress.errors import AccuracyGateError, BadInputError, RecipeError
from onnxslim_compress.files import write_atomic
from onnxslim_compress.graph.io import check_output_path, load_model, normalize, save_model
from onnxslim_compress.jobs.compress import json_default, set_report
from onnxslim_compress.passes.context import Context
from onnxslim_compress.runtime.metrics import load_labels_any
from onnxslim_compress.runtime.session import Target
from onnxslim_compress.search.build import TrialBuilder
from onnxslim_compress.search.objective import EvaluateFn, Evaluator, LatencyTimer, default_metric
from onnxslim_compress.search.report import (
    LiveTable,
    TrialRecord,
    best_feasible,
    claim,
    measured,
    pareto_front,
    pareto_plot,
    pick_on_intervals,
    trials_to_best,
    trials_to_feasible,
)
from onnxslim_compress.search.runner import LoopSettings, TrialLoop, json_safe, wait_for_running
from onnxslim_compress.search.space import Registry, SearchSpace, default_recipe
from onnxslim_compress.search.storage import (
    HEARTBEAT_S,
    KeyClaims,
    StudySettings,
    create_or_resume,
    default_storage_url,
    load_settings,
    open_storage,
    redact,
)
from onnxslim_compress.search.strategy import BisectionSampler, finite, make_sampler, sampler_name
from onnxslim_compress.version import __version__


@dataclass
class SearchResult:
    """The chosen model (None if no trial met the constraint), every trial, and the report."""

    model: onnx.ModelProto | None
    best: TrialRecord | None
    trials: list[TrialRecord]
    pareto: list[TrialRecord]
    report: dict[str, Any]
    output: Path | None = None
    study: Any = field(default=None, repr=False)


@dataclass
class _Prepared:
    """Everything a process needs to run trials of one search."""

    model: onnx.ModelProto
    space: SearchSpace
    evaluator: Evaluator
    builder: TrialBuilder
    target: Target
    eval_desc: str


def _as_target(target: Target | str | Mapping | None) -> Target:
    if target is None:
        return Target()
    if isinstance(target, Target):
        return target
    if isinstance(target, str):
        return Target(kind=target)  # type: ignore[arg-type]
    return Target(**dict(target))


def fidelity_goal(metric: str | None, max_drop: float) -> str | None:
    """The quantizer's keep-layers-float goal for the default recipe: half the allowed drop, on the
    label-free proxy of the constraint metric (top-1 agreement for accuracy, since labels are not
    the quantizer's business; the decoded sequences themselves for `sequence`: per-frame top-1 is
    no proxy of a CTC text, one flipped frame in 40 may change every string, as PP-OCRv4 rec showed
    at top1=0.975 with 8 of 32 strings changed). None for a user's own metric, whose scale is unknown."""
    if metric in (None, "custom") or max_drop <= 0:
        return None
    kind = metric if metric in ("cosine", "sequence") else "top1"
    return f"{kind}={max(1.0 - max_drop / 2, 0.5):.6g}"


def recipe_data(recipe: Any, target: Target, registry: Registry | None, goal: str | None = None) -> dict[str, Any]:
    """The search recipe as plain data (what the study stores and `--dry-run` prints): None gives
    the target's default, a SearchSpace its description, a dict itself, a path its YAML."""
    if recipe is None:
        return default_recipe(target.kind, registry, goal)
    if isinstance(recipe, SearchSpace):
        return recipe.describe()
    if isinstance(recipe, dict):
        return recipe
    p = Path(recipe)
    if not p.is_file():
        raise RecipeError(f"recipe {p}: no such file")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {p}: not valid YAML ({str(e).splitlines()[0]})") from None


def _image_options(image: Any):
    if image is None:
        return None

    if isinstance(image, ImageOptions):
        return image
    d = dict(image)
    for k in ("size", "mean", "std"):
        if isinstance(d.get(k), list):
            d[k] = tuple(d[k])
    return ImageOptions(**d)


def _prepare(
    model: onnx.ModelProto,
    recipe: dict[str, Any],
    *,
    target: Target,
    calib: Any,
    eval_data: Any,
    labels: Any,
    metric: str | None,
    evaluate: EvaluateFn | None,
    max_drop: float,
    objective: str,
    seed: int,
    runs: int,
    warmup: int,
    input_shapes: dict[str, list[int]],
    num_samples: int | None,
    image: Any,
    registry: Registry | None,
    reuse: bool,
    timer: LatencyTimer | None = None,
    early_stop: bool = True,
) -> _Prepared:
    space = SearchSpace.from_recipe(recipe, registry)
    img = _image_options(image)
    calib_src = open_data(calib, model, input_shapes=input_shapes, limit=num_samples, seed=seed, image=img) if calib is not None else None
    if eval_data is not None:
        eval_src = open_data(eval_data, model, input_shapes=input_shapes, limit=num_samples, seed=seed, image=img)
        desc = eval_src.describe()
    elif calib_src is not None:
        eval_src, desc = calib_src, f"{calib_src.describe()} (calibration data: no --eval given)"
    else:
        eval_src = open_data(None, model, input_shapes=input_shapes, limit=num_samples, seed=seed)
        desc = f"{eval_src.describe()} (generated from the signature: a weak check, give --eval)"
    label_arr = load_labels_any(labels)
    metric = metric or default_metric(model, label_arr, evaluate)
    if evaluate is not None and metric != "custom":
        raise BadInputError("an evaluate() callable is the metric: leave metric unset (or 'custom')")
    if label_arr is not None and metric != "accuracy":
        raise BadInputError(f"--labels are given but --metric is {metric}: use --metric accuracy")
    evaluator = Evaluator(
        model, target=target, eval_data=eval_src, metric=metric, max_drop=max_drop, objective=objective,  # type: ignore[arg-type]
        labels=label_arr, evaluate=evaluate, input_shapes=input_shapes, warmup=warmup, runs=runs,
        timer=timer, early_stop=early_stop,
    )
    ctx = Context(target=target, calib=calib_src, input_shapes=dict(input_shapes), seed=seed)
    builder = TrialBuilder(model, ctx, reuse=reuse)
    return _Prepared(model, space, evaluator, builder, target, desc)


def _load(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    src = load_model(model) if not isinstance(model, onnx.ModelProto) else model
    work = onnx.ModelProto()
    work.CopyFrom(src)
    normalize(work)
    return work


def _path_or_none(x: Any) -> str | None:
    return str(Path(x).resolve()) if isinstance(x, (str, os.PathLike)) else None


def search(
    model: str | os.PathLike | onnx.ModelProto,
    output: str | os.PathLike | None = None,
    *,
    recipe: dict[str, Any] | str | os.PathLike | SearchSpace | None = None,
    target: Target | str | None = None,
    calib: Any = None,
    eval_data: Any = None,
    labels: np.ndarray | str | os.PathLike | None = None,
    metric: str | None = None,
    evaluate: EvaluateFn | None = None,
    max_drop: float = 0.01,
    trials: int = 20,
    timeout: float | None = None,
    objective: str = "latency",
    sampler: str = "tpe",
    strategy: str = "auto",
    multi_objective: bool = False,
    storage: str | None = None,
    study_name: str | None = None,
    seed: int = 0,
    runs: int = 50,
    warmup: int = 10,
    input_shapes: dict[str, list[int]] | None = None,
    num_samples: int | None = None,
    image: Any = None,
    registry: Registry | None = None,
    reuse: bool = True,
    presets: bool = True,
    progress: bool = False,
    table: bool | None = None,
    report_path: str | os.PathLike | None = None,
    plot_path: str | os.PathLike | None = None,
    debug: bool = False,
    run_trials: bool = True,
    heartbeat: float = HEARTBEAT_S,
    worker_idle: float = 600.0,
    finalists: int = 3,
    final_runs: int | None = None,
    timer: LatencyTimer | None = None,
    early_stop: bool = True,
) -> SearchResult:
    """Search pass parameters for the fastest model whose metric drop stays within `max_drop`.

    `evaluate(session) -> float` (higher is better) replaces the built-in metrics with the user's own
    accuracy. Without `storage`, a search with an `output` keeps its study in
    `<output stem>.search.db` (re-running resumes it); without an output it stays in memory.
    The input model is always a candidate (drop 0, ratio 1): when no trial meets the constraint, or
    none is faster for sure, it is the result (`report["picked"] == "original"`, the reason in the
    notes and, for the infeasible case, `report["picked_reason"]`, also one line on stderr).
    Raises AccuracyGateError (exit 3) only when nothing was measured (every trial errored, or no
    worker ran one); the report is still written and attached to the exception as `.report`. `run_trials=False` only coordinates: it creates (or
    resumes) the study, waits until `worker` processes have spent the budget, then picks and writes
    the result (for a coordinator that is not the target machine); it never waits forever: after
    `worker_idle` seconds in which no trial ran it picks from what finished, and says so in the
    report's notes. `heartbeat`: seconds between a running trial's heartbeats in an RDB storage; a
    trial without one for 4x that is failed and re-queued (its worker was killed).

    Latency pick (ARCHITECTURE.md "Data flow / search"): the `finalists` best feasible candidates
    are re-timed against the original with `final_runs` interleaved rounds (default 4x `runs`), and
    the pick is the fastest whose 95 % interval lies wholly below 1 (faster than the original for
    sure); none such: the original. The report's `claim` is the pick's ratio and interval.
    `timer` replaces profiler.compare (tests: a fake timer); `early_stop` stops evaluating a
    candidate whose counting metric has already broken the constraint (objective.py).
    """
    if finalists < 0:
        raise BadInputError("--finalists must be >= 0")
    if final_runs is not None and final_runs < 1:
        raise BadInputError("--final-runs must be >= 1")
    if trials < 1:
        raise BadInputError("--trials must be >= 1")
    if max_drop < 0:
        raise BadInputError("--max-drop must be >= 0")
    if timeout is not None and timeout <= 0:
        raise BadInputError("--timeout must be > 0")
    if strategy not in ("auto", "bisect", "optuna"):
        raise BadInputError(f"unknown strategy {strategy!r} (auto, bisect or optuna)")
    if output is not None:
        check_output_path(output, [model] if not isinstance(model, onnx.ModelProto) else [])
    tgt = _as_target(target)
    work = _load(model)
    goal = None
    if recipe is None and evaluate is None:
        goal = fidelity_goal(metric or default_metric(work, load_labels_any(labels), None), max_drop)
    space_data = recipe_data(recipe, tgt, registry, goal)
    prep = _prepare(
        work, space_data, target=tgt, calib=calib, eval_data=eval_data, labels=labels, metric=metric,
        evaluate=evaluate, max_drop=max_drop, objective=objective, seed=seed, runs=runs, warmup=warmup,
        input_shapes=dict(input_shapes or {}), num_samples=num_samples, image=image, registry=registry, reuse=reuse,
        # the Pareto front needs every candidate's true drop, not a bound
        timer=timer, early_stop=early_stop and not multi_objective,
    )
    settings = StudySettings(
        model=_path_or_none(model) or "<in memory>",
        recipe=prep.space.describe(),
        target={"kind": tgt.kind, "threads": tgt.threads, "device_id": tgt.device_id, "ep_options": dict(tgt.ep_options), "opt_level": tgt.opt_level},
        max_drop=float(max_drop), metric=prep.evaluator.metric, objective=objective, trials=trials,
        calib=_path_or_none(calib), eval=_path_or_none(eval_data), labels=_path_or_none(labels), seed=seed, runs=runs,
        warmup=warmup, sampler=sampler, strategy=strategy, multi_objective=multi_objective,
        input_shapes=dict(input_shapes or {}), num_samples=num_samples,
        image=_image_dict(image), timeout=timeout,
    )
    if storage is None and output is not None:
        storage = default_storage_url(output)
    rdb = open_storage(storage, heartbeat) if storage is not None else optuna.storages.InMemoryStorage()
    name = study_name or settings.default_study_name()
    smp = make_sampler(sampler, seed=seed, n_trials=trials, multi_objective=multi_objective,  # type: ignore[arg-type]
                       one_knob=prep.space.one_knob(), strategy=strategy, finite=prep.space.cardinality())  # type: ignore[arg-type]
    study = create_or_resume(rdb, name, settings, smp)
    _check_baseline(prep)
    if presets and not isinstance(smp, BisectionSampler) and not study.get_trials(deepcopy=False):
        named = prep.space.named_presets()
        n_fixed = len(prep.space.fixed_presets())
        # every fixed preset first (the pick is then never worse than the best of them), then the
        # central points up to a third of the budget; never more than the budget
        for _, v in named[: min(trials, max(n_fixed, trials // 3, 1))]:
            study.enqueue_trial(v, skip_if_exists=True)
    t0 = time.perf_counter()
    n_before = len([t for t in study.get_trials(deepcopy=False) if t.state.is_finished()])
    loop, live = _loop(study, prep, trials, max_drop, multi_objective, timeout, debug, progress, table, objective, seed,
                       KeyClaims(rdb, name))
    notes: list[str] = []
    try:
        if run_trials:
            loop.run()
        else:
            note = loop.wait_for_fleet(worker_idle, lambda m: print(f"search: {m}", file=sys.stderr, flush=True))
            if note:
                notes.append(note)
    finally:
        live.close()
    note = wait_for_running(study, timeout=worker_idle)
    if note:
        notes.append(note)
    wall = time.perf_counter() - t0
    return _finish(
        study, prep, settings, output=output, storage=storage, study_name=name, loop=loop, wall=wall,
        n_before=n_before, report_path=report_path, plot_path=plot_path, input_desc=_path_or_none(model), notes=notes,
        finalists=finalists if run_trials else 0, final_runs=final_runs or 4 * runs,
    )


def _image_dict(image: Any) -> dict[str, Any] | None:
    if image is None:
        return None
    if isinstance(image, Mapping):
        return dict(image)

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(image).items()}


def _check_baseline(prep: _Prepared) -> None:
    """Measure the baseline once before any trial: bad data or labels fail here, with exit code 2."""
    prep.evaluator.baseline_value()
    prep.evaluator.baseline_costs()
    _ = prep.evaluator.feed


def _loop(study, prep, trials, max_drop, multi_objective, timeout, debug, progress, table, objective, seed=0, claims=None):
    space = prep.space
    done = len([t for t in study.get_trials(deepcopy=False) if t.state.is_finished()])
    live = LiveTable(trials, done, bar=progress, rows=progress if table is None else table, objective=objective)

    def on_trial(t) -> None:
        eff = space.effective(t.params) if all(d.name in t.params for d in space.dims) else dict(t.params)
        live.row(TrialRecord.from_trial(t, eff))

    loop = TrialLoop(
        study, space, prep.builder, prep.evaluator,
        LoopSettings(budget=trials, max_drop=max_drop, multi_objective=multi_objective, timeout=timeout, debug=debug,
                     explore_on_repeat=not isinstance(study.sampler, (BisectionSampler, optuna.samplers.BruteForceSampler)),
                     seed=seed),
        on_trial=on_trial,
        claims=claims,
    )
    return loop, live


def _records(study, space: SearchSpace) -> list[TrialRecord]:
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("over_budget") or t.state in (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING):
            continue
        eff = space.effective(t.params) if all(d.name in t.params for d in space.dims) else dict(t.params)
        out.append(TrialRecord.from_trial(t, eff))
    return sorted(out, key=lambda r: r.number)


def _finalists(study, prep: _Prepared, records: list[TrialRecord], best_preset: TrialRecord | None, k: int,
               runs: int, trial_runs: int) -> list[dict[str, Any]]:
    """The k fastest distinct feasible candidates (and the best preset, so the pick is never worse
    than it), re-timed against the original with `runs` interleaved rounds; k == 0 keeps the trials'
    own figures (a coordinator that is not the target machine must not time anything)."""
    space = prep.space
    ok = sorted((r for r in measured(records) if r.feasible and r.duplicate_of is None and not r.screened),
                key=lambda r: (r.objective, r.drop, r.number))
    pool = ok[: max(k, 1)]
    if best_preset is not None and all(r.number != best_preset.number for r in pool):
        pool.append(best_preset)
    rows = []
    for r in pool:
        row: dict[str, Any] = {"number": r.number, "params": r.params, "trial_ratio": r.objective,
                               "trial_ci95": r.latency_ci95, "drop": r.drop}
        if k > 0:
            values = {**{d.name: d.midpoint() for d in space.dims}, **_trial_params(study, r)}
            built = prep.builder.build(space.passes(values))
            ab = prep.evaluator.latency(built.model, runs)
            row.update(ratio=ab.ratio, ci95=list(ab.ratio_ci95), runs=runs, source="finalist re-measure",
                       baseline_ms=ab.a.median, latency_ms=ab.b.median, model=built.model)
        else:
            row.update(ratio=r.objective, ci95=r.latency_ci95, runs=trial_runs, source="trial")
        row["beats_original"] = bool(row.get("ci95")) and float(row["ci95"][1]) < 1.0
        rows.append(row)
    return rows


def _finish(study, prep: _Prepared, settings: StudySettings, *, output, storage, study_name, loop: TrialLoop, wall: float,
            n_before: int, report_path, plot_path, input_desc, notes: list[str] | None = None, finalists: int = 3,
            final_runs: int = 200) -> SearchResult:
    space = prep.space
    records = _records(study, space)
    best = best_feasible(records)
    multi = bool(settings.multi_objective)
    front = pareto_front(records)
    preset_names = {space.key(v): n for n, v in space.named_presets()}
    preset_recs = [r for r in records if r.duplicate_of is None and r.state == "COMPLETE" and _key(space, r.params) in preset_names]
    best_preset = best_feasible(preset_recs)
    computed = [r for r in records if r.duplicate_of is None and r.state == "COMPLETE"]
    per_trial = [r.build.get("trial_seconds") for r in computed if r.build.get("trial_seconds") is not None]
    ev = prep.evaluator
    report: dict[str, Any] = {
        "tool": "onnxslim-compress search",
        "version": __version__,
        "input": input_desc,
        "output": str(output) if output is not None else None,
        "study": study_name,
        "storage": redact(storage) if storage else "memory",
        "settings": settings.as_dict(),
        # the sampler that actually ran (settings.sampler is what was asked for: gp falls back to TPE without torch)
        "sampler": sampler_name(study.sampler),
        "eval_data": prep.eval_desc,
        "baseline": {
            "metric": ev.metric,
            "value": ev.baseline_value(),
            **{k: v for k, v in ev.baseline_costs().items()},
        },
        "space": space.describe(),
        "trials": [r.as_dict() for r in records],
        "best": best.as_dict() if best else None,
        "best_recipe": None,
        "pareto": [r.number for r in front],
        "trials_to_feasible": trials_to_feasible(records),
        "trials_to_best": trials_to_best(records, best),
        "best_preset": {**best_preset.as_dict(), "preset": preset_names.get(_key(space, best_preset.params))} if best_preset else None,
        "presets": {preset_names[k]: next((r.number for r in preset_recs if _key(space, r.params) == k), None) for k in preset_names},
        "vs_best_preset": (best_preset.objective / best.objective) if (best and best_preset and best.objective) else None,
        "cache": {**prep.builder.cache_stats(), "trials_computed_here": len(loop.computed),
                  "duplicates": sum(1 for r in records if r.duplicate_of is not None)},
        "timing": {"wall_seconds": round(wall, 3), "trials_this_run": len(records) - n_before,
                   "mean_trial_seconds": round(float(np.mean(per_trial)), 3) if per_trial else None},
        "notes": list(notes or []),
    }
    model_out: onnx.ModelProto | None = None
    out_path: Path | None = None
    report["picked"] = "trial" if best is not None else None
    prebuilt: onnx.ModelProto | None = None
    unmet: str | None = None  # why the rebuilt pick was refused, if it was
    if best is not None and not multi and settings.objective == "latency":
        rows = _finalists(study, prep, records, best_preset, finalists, final_runs, settings.runs)
        if finalists == 0:
            report["notes"].append("finalists not re-measured (this process only coordinated: it may not be the "
                                   "target machine); the pick is made on the trials' intervals")
        chosen = pick_on_intervals(rows)
        report["finalists"] = [{k: v for k, v in r.items() if k != "model"} for r in rows]
        by_number = {r.number: r for r in records}
        if chosen is None:
            report["notes"].append(
                "no finalist's 95 % latency interval lies below the original's (1.0): "
                + "; ".join(f"trial {r['number']} ratio {r['ratio']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
                            if r.get("ci95") else f"trial {r['number']} ratio {r['ratio']}" for r in rows)
                + "; the result is the original model")
            best = _as_original(report, best)
            model_out = onnx.ModelProto()
            model_out.CopyFrom(prep.model)
            report["claim"] = claim(1.0, None, None, "original")
        else:
            if chosen["number"] != best.number:
                report["notes"].append(
                    f"finalist re-measure changed the pick: trial {chosen['number']} (ratio {chosen['ratio']:.3f}) over "
                    f"trial {best.number} (trial ratio {best.objective:.3f}, re-measured "
                    f"{next(r['ratio'] for r in rows if r['number'] == best.number):.3f})")
            best = by_number[chosen["number"]]
            report["best"] = {**best.as_dict(), "final_ratio": chosen["ratio"], "final_ci95": chosen["ci95"]}
            report["trials_to_best"] = trials_to_best(records, best)
            prebuilt = chosen.get("model")
            if prebuilt is not None:
                # the minimum of several noisy figures is biased low (the winner's curse): the claim
                # is a fresh run of the pick alone, not the figure it was picked on
                ab = ev.latency(prebuilt, final_runs)
                report["claim"] = {**claim(ab.ratio, list(ab.ratio_ci95), final_runs, "confirmation run of the pick"),
                                   "selection_ratio": chosen["ratio"], "selection_ci95": chosen["ci95"]}
                if ab.ratio_ci95[1] >= 1.0:
                    report["notes"].append(f"the pick's confirmation run does not show it faster for sure: ratio {ab.ratio:.3f} "
                                           f"[{ab.ratio_ci95[0]:.3f}, {ab.ratio_ci95[1]:.3f}]")
            else:
                report["claim"] = claim(chosen["ratio"], chosen["ci95"], chosen.get("runs"), chosen["source"])
            bp = next((r for r in rows if best_preset is not None and r["number"] == best_preset.number), None)
            report["vs_best_preset"] = (bp["ratio"] / chosen["ratio"]) if bp and chosen["ratio"] else None
    elif best is not None and not multi and finite(best.objective) and best.objective >= 1.0:
        # the original model is always a candidate (ratio 1.0, drop 0): a pick that is no better
        # than it (every candidate slower, or bigger) would make the model worse, so it is the result
        report["notes"].append(
            f"no candidate beat the original model (best trial {best.number}: {settings.objective} ratio "
            f"{best.objective:.3f} >= 1); the result is the original model"
        )
        best = _as_original(report, best)
        model_out = onnx.ModelProto()
        model_out.CopyFrom(prep.model)
    if best is not None:
        values = {**{d.name: d.midpoint() for d in space.dims}, **_trial_params(study, best)}
        report["best_recipe"] = space.recipe(values)
        built_model = prebuilt if prebuilt is not None else prep.builder.build(space.passes(values)).model
        model_out = onnx.ModelProto()
        model_out.CopyFrom(built_model)
        _, drop, _ = ev.quality(model_out)
        if best.drop is not None and math.isfinite(drop) and abs(drop - best.drop) > 1e-6:
            report["notes"].append(f"the rebuilt model's drop {drop:.6f} differs from trial {best.number}'s {best.drop:.6f}")
        if drop > settings.max_drop + 1e-12:
            report["notes"].append("the rebuilt best model does not meet the constraint; not written")
            model_out = None
            unmet = f"the rebuilt pick (trial {best.number}) does not meet the constraint (drop {drop:.4g} > {settings.max_drop})"
    n_measured = len([r for r in records if r.state == "COMPLETE"])
    if model_out is None and n_measured:
        # the original is always a candidate (drop 0, ratio 1): when no trial meets the constraint
        # it is the answer, as when none beats it; only a search that measured nothing is an error
        reason = unmet or _infeasible_reason(records, settings, ev.metric)
        report["notes"].append(f"{reason}; the result is the original model")
        report["picked_reason"] = reason
        print(f"search: {reason}", file=sys.stderr, flush=True)
        best = _as_original(report, best)
        model_out = onnx.ModelProto()
        model_out.CopyFrom(prep.model)
        report["claim"] = claim(1.0, None, None, "original")
    base = Path(output) if output is not None else None
    if base is not None or plot_path is not None:
        plot = Path(plot_path) if plot_path is not None else base.with_name(base.stem + ".pareto.png")  # type: ignore[union-attr]
        note = pareto_plot(records, plot, objective=settings.objective, max_drop=settings.max_drop, best=best)
        report["plot"] = None if note else str(plot)
        if note:
            report["notes"].append(note)
    if model_out is not None:
        summary = {k: report.get(k) for k in ("tool", "version", "study", "baseline", "picked", "picked_reason", "best", "best_recipe",
                                          "trials_to_best", "claim") if k in report}
        summary["settings"] = {k: v for k, v in settings.as_dict().items() if k not in ("recipe",)}
        set_report(model_out, json_safe(summary))
        if output is not None:
            out_path = save_model(model_out, output)
    rp = Path(report_path) if report_path is not None else (base.with_name(base.stem + ".search.json") if base is not None else None)
    if rp is not None:
        _write_json(rp, report)
        report["report_path"] = str(rp)
    result = SearchResult(model_out, best, records, front, report, out_path, study)
    if model_out is None:  # nothing was measured: every trial errored, or no worker ran one
        errors = sorted({r.error for r in records if r.error})
        hint = f"; trial errors: {errors[0]}" if errors else ""
        err = AccuracyGateError(
            f"no candidate met the constraint (max drop {settings.max_drop} on {ev.metric}) in {len(records)} trials{hint}"
        )
        err.report = report  # type: ignore[attr-defined]
        err.result = result  # type: ignore[attr-defined]
        raise err
    return result


def _infeasible_reason(records: list[TrialRecord], settings: StudySettings, metric: str) -> str:
    """Why no trial is the result: none met the constraint, with the closest one (a lower bound
    for a screened trial, whose evaluation stopped once it broke the constraint)."""
    done = [r for r in records if r.state == "COMPLETE" and r.duplicate_of is None and r.drop is not None and math.isfinite(r.drop)]
    text = f"no candidate met the constraint (max drop {settings.max_drop} on {metric}) in {len(records)} trials"
    if done:
        near = min(done, key=lambda r: (r.drop, r.number))
        text += f" (closest: trial {near.number}, drop {'>= ' if near.screened else ''}{near.drop:.4g})"
    return text


def _as_original(report: dict[str, Any], best: TrialRecord | None) -> None:
    """Record in the report that the original model is the result instead of trial `best`."""
    report["picked"] = "original"
    report["rejected_best"] = report["best"]
    report["best"] = {"number": None, "original": True, "objective": 1.0, "drop": 0.0, "params": {}, "feasible": True}
    report["vs_best_preset"] = None
    return None


def _key(space: SearchSpace, params: dict[str, Any]) -> str | None:
    try:
        return space.key(params)
    except KeyError:
        return None


def _trial_params(study, rec: TrialRecord) -> dict[str, Any]:
    for t in study.get_trials(deepcopy=False):
        if t.number == rec.number:
            return dict(t.params)
    return dict(rec.params)  # pragma: no cover


def _write_json(path: Path, obj: Any) -> None:
    """Write `obj` as JSON next to `path`, then move it in place (a reader never sees half a file)."""
    write_atomic(path, json.dumps(json_safe(obj), indent=2, default=json_default))


def run_worker(
    storage: str,
    study_name: str,
    *,
    registry: Registry | None = None,
    progress: bool = False,
    table: bool | None = None,
    debug: bool = False,
    wait: float = 0.0,
    heartbeat: float = HEARTBEAT_S,
) -> dict[str, Any]:
    """Join an existing study and run trials until its budget is reached; returns what this worker did.

    `wait` seconds: how long to wait for `search` to create the study (workers are often started
    first on a fleet)."""
    rdb = open_storage(storage, heartbeat)
    deadline = time.monotonic() + max(wait, 0.0)
    while True:
        try:
            s = load_settings(rdb, study_name)
            break
        except BadInputError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)
    if s.model == "<in memory>":
        raise BadInputError(f"study {study_name!r} was started from an in-memory model: workers need a model file")
    tgt = Target(**s.target)
    work = _load(s.model)
    prep = _prepare(
        work, s.recipe, target=tgt, calib=s.calib, eval_data=s.eval, labels=s.labels, metric=s.metric, evaluate=None,
        max_drop=s.max_drop, objective=s.objective, seed=s.seed, runs=s.runs, warmup=s.warmup,
        input_shapes=s.input_shapes, num_samples=s.num_samples, image=s.image, registry=registry, reuse=True,
        early_stop=not s.multi_objective,
    )
    smp = make_sampler(s.sampler, seed=s.seed + os.getpid() % 1000, n_trials=s.trials,  # type: ignore[arg-type]
                       multi_objective=s.multi_objective, one_knob=prep.space.one_knob(), strategy=s.strategy,  # type: ignore[arg-type]
                       finite=prep.space.cardinality())
    study = optuna.load_study(study_name=study_name, storage=rdb, sampler=smp)
    _check_baseline(prep)
    loop, live = _loop(study, prep, s.trials, s.max_drop, s.multi_objective, s.timeout, debug, progress, table, s.objective, s.seed,
                       KeyClaims(rdb, study_name))
    t0 = time.perf_counter()
    try:
        loop.run()
    finally:
        live.close()
    return {
        "study": study_name,
        "worker": loop.settings.worker,
        "computed_trials": loop.computed,
        "sampler": sampler_name(study.sampler),
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "cache": prep.builder.cache_stats(),
    }
