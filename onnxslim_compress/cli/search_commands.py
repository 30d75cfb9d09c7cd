"""The `search` and `worker` subcommands, built from the same argument groups as the others.

    search MODEL -o OUT --target cpu|cuda|tensorrt --calib DATA --eval DATA [--labels FILE]
           --metric accuracy|top1|cosine --max-drop 0.01 --trials N [--timeout S] [--recipe R]
           [--storage URL --study NAME] [--json]
    worker --storage URL --study NAME

The search package is imported inside `run`: it pulls in optuna (and matplotlib for the plot),
heavy optional dependencies that `inspect` or `compress` should not pay for at start-up.
"""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from onnxslim_compress.cli.groups import (
    PROG,
    ArgGroup,
    Command,
    DataArgs,
    DataFlags,
    LabelsArgs,
    MetricArgs,
    ModelArgs,
    OutputArgs,
    OutputModelArgs,
    RecipeArgs,
    TargetArgs,
    TimingArgs,
)
from onnxslim_compress.errors import AccuracyGateError, BadInputError
from onnxslim_compress.files import write_atomic
from onnxslim_compress.graph.io import load_model
from onnxslim_compress.report import html
from onnxslim_compress.runtime.metrics import MetricSpec, OutputsMetricEvaluate
from onnxslim_compress.runtime.session import Target

#: the built-in metrics a search can constrain (the label-free agreement ones and labelled accuracy)
SEARCH_METRICS = ("accuracy", "top1", "sequence", "cosine")


def _quiet_optuna(debug: bool) -> None:
    """Optuna logs every trial at INFO; the live table says it better. Kept with --debug."""
    if not debug:
        import optuna  # heavy optional dependency: only the search commands need it

        optuna.logging.set_verbosity(optuna.logging.ERROR)


def _print_json(out: OutputArgs, obj: Any) -> None:
    from onnxslim_compress.search.runner import json_safe  # the search package imports optuna

    out.print_json(json_safe(obj))


class SearchCommand(Command):
    name = "search"
    summary = "search pass parameters for the fastest model within an accuracy budget"
    epilog = f"""
        The space comes from a recipe whose parameters may be ranges ({{search: [0.1, 0.6]}}) or choices
        ({{choices: [a, b]}}), and a pass may be switchable (enabled: {{choices: [true, false]}}).
        The default recipe searches every installed compression pass over the ranges its parameters
        declare (see --print-recipe).
        One numeric knob: bracketing + bisection on the constraint (<= 10 trials). Several knobs:
        Optuna's TPE sampler (or GP) with the constraint; --pareto: latency and drop both minimized.
        The study lives in OUT's folder as <OUT stem>.search.db (re-running the command resumes it);
        --storage postgresql://... --study NAME shares it with `worker` processes on other machines.
        Writes OUT (the fastest candidate meeting the constraint), <stem>.search.json (every trial)
        and <stem>.pareto.png (needs matplotlib). The input model is always a candidate: when no
        candidate meets the constraint (or none is faster for sure), OUT is the input model, exit 0,
        with the reason on stderr and in the report; exit 3 only when no trial could be measured.

        examples:
          {PROG} search model.onnx -o fast.onnx --calib calib.npz --eval test.npz --labels labels.npy \\
              --metric accuracy --max-drop 0.01 --trials 20 --threads 2
          {PROG} search model.onnx -o fast.onnx --calib calib.npz --eval val.npz --metric cosine --max-drop 0.002
          {PROG} search model.onnx -o p.onnx --recipe prune.yaml --eval val.npz --objective macs
          {PROG} search model.onnx -o fast.onnx --eval val.npz --storage postgresql://u:p@db/optuna --study yolo
          {PROG} search model.onnx -o x.onnx --print-recipe > space.yaml
        """

    def __init__(self) -> None:
        super().__init__()
        self.model, self.output = ModelArgs(), OutputModelArgs()
        self.recipe = RecipeArgs("search recipe (default: every installed compression pass)",
                                 "print the search recipe as YAML and exit")
        self.labels = LabelsArgs("labels (.npy or one per line) of the --eval samples")
        self.timing, self.target, self.out = TimingArgs(), TargetArgs(), OutputArgs()
        self.metric = MetricArgs(
            "; the constraint, its drop measured from the input model's own score (default: accuracy with "
            "--labels, else top1 for [N, C] outputs, else cosine; sequence: CTC-decoded sequences equal)",
            allowed=SEARCH_METRICS)
        self.data = DataArgs(
            DataFlags("calib", "calibration data for recovery/quantization"),
            DataFlags("eval", "evaluation data for the constraint (default: --calib)"),
        )

    def groups(self) -> list[ArgGroup]:
        return [self.model, self.output, self.recipe, self.labels, self.metric, self.timing, self.target, self.data, self.out]

    def add_arguments(self, s: argparse.ArgumentParser) -> None:
        s.add_argument("--max-drop", type=float, default=0.01, help="largest allowed metric drop vs the input model (default 0.01)")
        s.add_argument("--trials", type=int, default=20, help="trials in the study (default 20; a resumed study counts earlier ones)")
        s.add_argument("--timeout", type=float, metavar="S", help="stop starting new trials after S seconds")
        s.add_argument("--objective", choices=["latency", "macs", "size"], default="latency",
                       help="what to minimize (default: latency measured on --target, interleaved with the input model)")
        s.add_argument("--sampler", choices=["gp", "tpe", "random"], default="tpe",
                       help="Optuna sampler for joint knobs (default tpe; gp needs torch and scipy, else falls back to tpe)")
        s.add_argument("--strategy", choices=["auto", "bisect", "optuna"], default="auto",
                       help="auto: bisection for one numeric knob, the sampler otherwise")
        s.add_argument("--pareto", action="store_true", help="multi-objective: minimize cost and drop, report the Pareto front")
        s.add_argument("--storage", metavar="URL", help="SQLAlchemy URL of the study (default: sqlite beside OUT)")
        s.add_argument("--study", metavar="NAME", help="study name (default: derived from the model and settings)")
        s.add_argument("--wait-for-workers", action="store_true",
                       help="run no trials here: create/resume the study, wait for `worker`s to finish it, write the result")
        s.add_argument("--report", metavar="FILE.html", help="write a self-contained HTML report (Pareto plot, trials)")
        s.add_argument("--worker-idle", type=float, default=600.0, metavar="S",
                       help="with --wait-for-workers: stop waiting after S s in which no trial ran (default 600)")
        _heartbeat_arg(s)
        s.add_argument("--finalists", type=int, default=3, metavar="K",
                       help="re-time the K fastest feasible candidates (and the best preset) against the input with "
                       "--final-runs interleaved runs and pick on those 95 %% intervals (0: pick on the trials' own)")
        s.add_argument("--final-runs", type=int, metavar="N", help="interleaved runs of the finalists' re-measure (default 4x --runs)")
        s.add_argument("--no-cache", action="store_true", help="do not reuse work between trials (for benchmarking the cache)")

    def run(self, ns: argparse.Namespace) -> int:
        # the search package imports optuna at module level (heavy): loaded only when searching
        from onnxslim_compress.search.job import fidelity_goal, recipe_data, search
        from onnxslim_compress.search.space import SearchSpace

        target = self.target.target
        spec = self.metric.spec
        metric, evaluate = (None, self._evaluate(spec)) if spec is not None and spec.custom else (self.metric.builtin, None)
        if self.recipe.print_only:
            goal = fidelity_goal(metric or ("accuracy" if self.labels.path else None), ns.max_drop)
            data = recipe_data(self.recipe.path, target, None, goal)
            SearchSpace.from_recipe(data)  # validate before printing
            print(yaml.safe_dump(data, sort_keys=False), end="")
            return 0
        if self.data.drop_nonfinite:  # the study's workers re-open the data from its settings
            raise BadInputError("--drop-nonfinite is not supported by search: remove the NaN/Inf samples from the data")
        _quiet_optuna(self.common.debug)
        as_json = self.out.json
        try:
            res = search(
                self.model.path, self.output.require(), recipe=self.recipe.path, target=target, calib=self.data.paths["calib"],
                eval_data=self.data.paths["eval"], labels=self.labels.path, metric=metric, max_drop=ns.max_drop,
                evaluate=evaluate,
                trials=ns.trials, timeout=ns.timeout, objective=ns.objective, sampler=ns.sampler, strategy=ns.strategy,
                multi_objective=ns.pareto, storage=ns.storage, study_name=ns.study, seed=self.common.seed,
                runs=self.timing.runs, warmup=self.timing.warmup, input_shapes=self.model.shapes,
                num_samples=self.data.limit, image=self.data.image, reuse=not ns.no_cache,
                progress=self.common.progress(as_json), table=self.common.table(as_json), debug=self.common.debug,
                run_trials=not ns.wait_for_workers, heartbeat=ns.heartbeat, worker_idle=ns.worker_idle,
                finalists=ns.finalists, final_runs=ns.final_runs,
            )
        except AccuracyGateError as e:
            if ns.report and hasattr(e, "report"):
                write_atomic(ns.report, html.page(e.report))
            if as_json and hasattr(e, "report"):
                _print_json(self.out, e.report)
            raise
        if ns.report:
            write_atomic(ns.report, html.page(res.report))
        if as_json:
            _print_json(self.out, res.report)
        else:
            _print_summary(res.report)
        return 0


    def _evaluate(self, spec: MetricSpec) -> OutputsMetricEvaluate:
        """A compare-style metric as the search's evaluate(session): scored against the input's outputs."""
        assert spec.fn is not None
        model = load_model(self.model.path)
        which = "eval" if self.data.paths["eval"] else "calib"
        return OutputsMetricEvaluate(spec.fn, model, self.data.open(which, model, self.model.shapes, seed=self.common.seed),
                                     Target(kind="cpu"))


def _heartbeat_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--heartbeat", type=float, default=30.0, metavar="S",
                   help="seconds between a running trial's heartbeats; a trial silent for 4x that (its worker "
                        "was killed) is failed and re-queued for another worker (default 30)")


def _print_summary(r: dict[str, Any]) -> None:
    b = r["best"]
    base = r["baseline"]
    print(f"wrote {r['output']}")
    print(f"  study {r['study']} ({r['storage']}), {len(r['trials'])} trials, report {r.get('report_path')}")
    print(f"  baseline {base['metric']} {base['value']:.4f}")
    if r.get("picked") == "original" and r.get("picked_reason"):
        print(f"  the original model: {r['picked_reason']}")
    elif r.get("picked") == "original":
        print(f"  the original model: no candidate beat it (best was trial {r['rejected_best']['number']}, "
              f"{r['settings']['objective']} ratio {r['rejected_best']['objective']:.3f})")
    elif b:
        cost = f"{b['objective']:.3f}" if isinstance(b["objective"], float) else b["objective"]
        print(f"  best trial {b['number']}: {r['settings']['objective']} ratio {cost}, drop {b['drop']:+.4f}, params {b['params']}")
    c = r.get("claim")
    if c and c.get("ci95"):
        lo, hi = c["speedup_ci95"]
        print(f"  claimed speedup x{c['speedup']:.2f} (95 % interval x{lo:.2f}-x{hi:.2f}; latency ratio {c['latency_ratio']:.3f}, "
              f"{c['runs']} interleaved runs, {c['source']})")
    if r.get("finalists"):
        print("  finalists: " + ", ".join(
            f"trial {f['number']} x{1 / f['ratio']:.2f}" + (" (beats the original)" if f["beats_original"] else "")
            for f in r["finalists"] if f.get("ratio")))
        if r.get("vs_best_preset"):
            print(f"  {r['vs_best_preset']:.2f}x better than the best single preset (trial {r['best_preset']['number']})")
    if r.get("trials_to_best"):
        print(f"  found after {r['trials_to_best']} trials; first feasible after {r['trials_to_feasible']}")
    c = r["cache"]
    print(f"  reuse: {c['prefix_hits']} pipeline prefixes, {c['pass_cache_hits']} pass statistics, {c['duplicates']} repeated parameter sets")
    for n in r.get("notes", []):
        print(f"  note: {n}")


class WorkerCommand(Command):
    name = "worker"
    summary = "run trials of an existing search study (started by `search --storage URL --study NAME`)"
    epilog = f"""
        The study holds the model path, recipe, data paths and settings; the worker needs only the
        storage and the study name (the files must be readable at the same paths). Several workers
        share the work; a parameter set another worker measured is never rebuilt.

        examples:
          {PROG} worker --storage postgresql://u:p@db/optuna --study yolo
        """

    def __init__(self) -> None:
        super().__init__()
        self.out = OutputArgs()

    def groups(self) -> list[ArgGroup]:
        return [self.out]

    def add_arguments(self, w: argparse.ArgumentParser) -> None:
        w.add_argument("--storage", metavar="URL", required=True, help="SQLAlchemy URL of the study")
        w.add_argument("--study", metavar="NAME", required=True, help="study name")
        w.add_argument("--wait", type=float, default=0.0, metavar="S", help="wait up to S seconds for the study to be created")
        _heartbeat_arg(w)

    def run(self, ns: argparse.Namespace) -> int:
        from onnxslim_compress.search.job import run_worker  # imports optuna (heavy): only when a worker runs

        _quiet_optuna(self.common.debug)
        as_json = self.out.json
        out = run_worker(ns.storage, ns.study, progress=self.common.progress(as_json), table=self.common.table(as_json),
                         debug=self.common.debug, wait=ns.wait, heartbeat=ns.heartbeat)
        if as_json:
            _print_json(self.out, out)
        else:
            print(f"worker {out['worker']}: computed trials {out['computed_trials']} of study {out['study']} in {out['wall_seconds']:.1f} s")
        return 0
