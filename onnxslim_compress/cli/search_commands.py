"""The `search` and `worker` subcommands. The lead's cli.py wires them in with `add_commands`.

    search MODEL -o OUT --target cpu|cuda|tensorrt --calib DATA --eval DATA [--labels FILE]
           --metric accuracy|top1|cosine --max-drop 0.01 --trials N [--timeout S] [--recipe R]
           [--storage URL --study NAME] [--json]
    worker --storage URL --study NAME
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable
from typing import Any

from onnxslim_compress.cli.groups import DataArgs, DataFlags, ModelArgs, OutputArgs, TargetArgs
from onnxslim_compress.errors import AccuracyGateError

PROG = "onnxslim-compress"


def _fmt(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def add_commands(sub: Any, common_parent: argparse.ArgumentParser) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add `search` and `worker` to `sub` (argparse subparsers); returns {name: handler}."""

    def add(name: str, help: str, epilog: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help, description=help, parents=[common_parent], epilog=_fmt(epilog),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    s = add("search", "search pass parameters for the fastest model within an accuracy budget", f"""
        The space comes from a recipe whose parameters may be ranges ({{search: [0.1, 0.6]}}) or choices
        ({{choices: [a, b]}}), and a pass may be switchable (enabled: {{choices: [true, false]}}).
        The default recipe searches every installed compression pass (see --print-recipe).
        One numeric knob: bracketing + bisection on the constraint (<= 10 trials). Several knobs:
        Optuna's GP sampler (or TPE) with the constraint; --pareto: latency and drop both minimized.
        The study lives in OUT's folder as <OUT stem>.search.db (re-running the command resumes it);
        --storage postgresql://... --study NAME shares it with `worker` processes on other machines.
        Writes OUT (the fastest candidate meeting the constraint), <stem>.search.json (every trial)
        and <stem>.pareto.png (needs matplotlib). Exit code 3 when no candidate meets the constraint.

        examples:
          {PROG} search model.onnx -o fast.onnx --calib calib.npz --eval test.npz --labels labels.npy \\
              --metric accuracy --max-drop 0.01 --trials 20 --threads 2
          {PROG} search model.onnx -o fast.onnx --calib calib.npz --eval val.npz --metric cosine --max-drop 0.002
          {PROG} search model.onnx -o p.onnx --recipe prune.yaml --eval val.npz --objective macs
          {PROG} search model.onnx -o fast.onnx --eval val.npz --storage postgresql://u:p@db/optuna --study yolo
          {PROG} search model.onnx -o x.onnx --print-recipe > space.yaml
        """)
    s.add_argument("model")
    s.add_argument("-o", "--output", required=True, help="output .onnx path (written atomically)")
    s.add_argument("--recipe", metavar="R.yaml", help="search recipe (default: every installed compression pass)")
    s.add_argument("--print-recipe", action="store_true", help="print the search recipe as YAML and exit")
    s.add_argument("--labels", metavar="FILE", help="labels (.npy or one per line) of the --eval samples")
    s.add_argument("--metric", choices=["accuracy", "top1", "cosine"],
                   help="constraint metric (default: accuracy with --labels, else top1 for [N, C] outputs, else cosine)")
    s.add_argument("--max-drop", type=float, default=0.01, help="largest allowed metric drop vs the input model (default 0.01)")
    s.add_argument("--trials", type=int, default=20, help="trials in the study (default 20; a resumed study counts earlier ones)")
    s.add_argument("--timeout", type=float, metavar="S", help="stop starting new trials after S seconds")
    s.add_argument("--objective", choices=["latency", "macs", "size"], default="latency",
                   help="what to minimize (default: latency measured on --target, interleaved with the input model)")
    s.add_argument("--sampler", choices=["gp", "tpe", "random"], default="gp", help="Optuna sampler for joint knobs (default gp)")
    s.add_argument("--strategy", choices=["auto", "bisect", "optuna"], default="auto",
                   help="auto: bisection for one numeric knob, the sampler otherwise")
    s.add_argument("--pareto", action="store_true", help="multi-objective: minimize cost and drop, report the Pareto front")
    s.add_argument("--storage", metavar="URL", help="SQLAlchemy URL of the study (default: sqlite beside OUT)")
    s.add_argument("--study", metavar="NAME", help="study name (default: derived from the model and settings)")
    s.add_argument("--wait-for-workers", action="store_true",
                   help="run no trials here: create/resume the study, wait for `worker`s to finish it, write the result")
    s.add_argument("--runs", type=int, default=50, help="timed runs per latency comparison (default 50)")
    s.add_argument("--warmup", type=int, default=10, help="untimed runs before timing (default 10)")
    s.add_argument("--no-cache", action="store_true", help="do not reuse work between trials (for benchmarking the cache)")
    ModelArgs.add(s)
    TargetArgs.add(s)
    DataArgs.add(
        s,
        DataFlags("calib", "calibration data for recovery/quantization"),
        DataFlags("eval", "evaluation data for the constraint (default: --calib)"),
    )
    OutputArgs.add(s)

    w = add("worker", "run trials of an existing search study (started by `search --storage URL --study NAME`)", f"""
        The study holds the model path, recipe, data paths and settings; the worker needs only the
        storage and the study name (the files must be readable at the same paths). Several workers
        share the work; a parameter set another worker measured is never rebuilt.

        examples:
          {PROG} worker --storage postgresql://u:p@db/optuna --study yolo
        """)
    w.add_argument("--storage", metavar="URL", required=True, help="SQLAlchemy URL of the study")
    w.add_argument("--study", metavar="NAME", required=True, help="study name")
    w.add_argument("--wait", type=float, default=0.0, metavar="S", help="wait up to S seconds for the study to be created")
    OutputArgs.add(w)
    return {"search": cmd_search, "worker": cmd_worker}


def _progress(ns: argparse.Namespace) -> bool:
    return not ns.no_progress and not getattr(ns, "json", False) and sys.stderr.isatty()


def _table(ns: argparse.Namespace) -> bool:
    """Trial rows go to stderr even when it is not a terminal (logs), unless asked for quiet/JSON."""
    return not ns.no_progress and not getattr(ns, "json", False)


def _print_json(obj: Any) -> None:
    from onnxslim_compress.jobs.compress import _json_default
    from onnxslim_compress.search.runner import _json_safe

    print(json.dumps(_json_safe(obj), indent=2, default=_json_default))


def _quiet_optuna(ns: argparse.Namespace) -> None:
    """Optuna logs every trial at INFO; the live table says it better. Kept with --debug."""
    if not ns.debug:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)


def cmd_search(ns: argparse.Namespace) -> int:
    import yaml

    from onnxslim_compress.search.job import _recipe_data, fidelity_goal, search
    from onnxslim_compress.search.space import SearchSpace

    target = TargetArgs.target(ns)
    if ns.print_recipe:
        data = _recipe_data(ns.recipe, target, None, fidelity_goal(ns.metric or ("accuracy" if ns.labels else None), ns.max_drop))
        SearchSpace.from_recipe(data)  # validate before printing
        print(yaml.safe_dump(data, sort_keys=False), end="")
        return 0
    image = DataArgs.image_options(ns)
    _quiet_optuna(ns)
    try:
        res = search(
            ns.model, ns.output, recipe=ns.recipe, target=target, calib=ns.calib, eval_data=ns.eval,
            labels=ns.labels, metric=ns.metric, max_drop=ns.max_drop, trials=ns.trials, timeout=ns.timeout,
            objective=ns.objective, sampler=ns.sampler, strategy=ns.strategy, multi_objective=ns.pareto,
            storage=ns.storage, study_name=ns.study, seed=ns.seed, runs=ns.runs, warmup=ns.warmup,
            input_shapes=ModelArgs.shapes(ns), num_samples=ns.num_samples, image=image, reuse=not ns.no_cache,
            progress=_progress(ns), table=_table(ns), debug=ns.debug, run_trials=not ns.wait_for_workers,
        )
    except AccuracyGateError as e:
        if ns.json and hasattr(e, "report"):
            _print_json(e.report)
        raise
    if ns.json:
        _print_json(res.report)
    else:
        _print_summary(res.report)
    return 0


def _print_summary(r: dict[str, Any]) -> None:
    b = r["best"]
    base = r["baseline"]
    print(f"wrote {r['output']}")
    print(f"  study {r['study']} ({r['storage']}), {len(r['trials'])} trials, report {r.get('report_path')}")
    print(f"  baseline {base['metric']} {base['value']:.4f}")
    if b:
        cost = f"{b['objective']:.3f}" if isinstance(b["objective"], float) else b["objective"]
        print(f"  best trial {b['number']}: {r['settings']['objective']} ratio {cost}, drop {b['drop']:+.4f}, params {b['params']}")
        if r.get("vs_best_preset"):
            print(f"  {r['vs_best_preset']:.2f}x better than the best single preset (trial {r['best_preset']['number']})")
    if r.get("trials_to_best"):
        print(f"  found after {r['trials_to_best']} trials; first feasible after {r['trials_to_feasible']}")
    c = r["cache"]
    print(f"  reuse: {c['prefix_hits']} pipeline prefixes, {c['pass_cache_hits']} pass statistics, {c['duplicates']} repeated parameter sets")
    for n in r.get("notes", []):
        print(f"  note: {n}")


def cmd_worker(ns: argparse.Namespace) -> int:
    from onnxslim_compress.search.job import run_worker

    _quiet_optuna(ns)
    out = run_worker(ns.storage, ns.study, progress=_progress(ns), table=_table(ns), debug=ns.debug, wait=ns.wait)
    if ns.json:
        _print_json(out)
    else:
        print(f"worker {out['worker']}: computed trials {out['computed_trials']} of study {out['study']} in {out['wall_seconds']:.1f} s")
    return 0
