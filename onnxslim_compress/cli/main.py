"""Command line: inspect, profile, compare, compress (DESIGN.md "CLI shape").

Errors are one line on stderr with the exit codes of DESIGN.md (2 bad input, 3 accuracy gate, 1
internal); `--debug` adds the traceback. Output files are written atomically by graph.io, so an
interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import traceback
from typing import Any

from onnxslim_compress import __version__
from onnxslim_compress.cli.groups import DataArgs, DataFlags, ModelArgs, OutputArgs, TargetArgs
from onnxslim_compress.errors import BadInputError, CompressError

PROG = "onnxslim-compress"


class _Parser(argparse.ArgumentParser):
    """argparse prints usage plus the error; DESIGN.md wants one line and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        raise BadInputError(f"{message} (see {self.prog} --help)")


def _fmt(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Make .onnx models smaller and faster on the runtime they ship on.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_fmt(
            f"""
            examples:
              {PROG} inspect model.onnx --json
              {PROG} compress model.onnx -o model.slim.onnx            # lossless: simplify, fold BN, drop dead nodes
              {PROG} compress model.onnx -o small.onnx --prune 0.3 --calib calib.npz
              {PROG} compress model.onnx -o lr.onnx --lowrank energy=0.9
              {PROG} compress model.onnx -o q.onnx --quantize int8 --calib calib.npz --target cpu
              {PROG} profile model.onnx small.onnx --threads 2        # latency ratio, interleaved runs
              {PROG} compare model.onnx small.onnx --data eval.npz --labels labels.npy
              {PROG} search model.onnx -o best.onnx --calib calib.npz --eval eval.npz --labels labels.npy \
                  --metric accuracy --max-drop 0.01 --trials 20 --threads 2

            exit codes: 0 ok, 2 bad input, 3 accuracy gate not met, 1 internal error
            """
        ),
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    common.add_argument("--seed", type=int, default=0, help="seed for sampling and generated data (default 0)")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name: str, help: str, epilog: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help, description=help, parents=[common], epilog=_fmt(epilog),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    ins = add("inspect", "MACs, parameters and size per layer; prunable channel groups", f"""
        examples:
          {PROG} inspect model.onnx
          {PROG} inspect model.onnx --input-shape images:1x3x640x640 --top 40
          {PROG} inspect model.onnx --groups --json > cost.json
        """)
    ins.add_argument("model")
    ins.add_argument("--top", type=int, default=20, help="layers shown in the table (default 20)")
    ins.add_argument("--groups", action="store_true", help="also list channel-pruning dependency groups")
    ModelArgs.add(ins)
    OutputArgs.add(ins)

    prof = add("profile", "latency on the target runtime; with two models, the B/A ratio from interleaved runs", f"""
        examples:
          {PROG} profile model.onnx --threads 2
          {PROG} profile model.onnx compressed.onnx --runs 100 --threads 2
          {PROG} profile model.onnx --ops        # time per op type from onnxruntime's profiler
        """)
    prof.add_argument("model")
    prof.add_argument("model_b", nargs="?", help="second model: report latency(B)/latency(A)")
    prof.add_argument("--warmup", type=int, default=10)
    prof.add_argument("--runs", type=int, default=50)
    prof.add_argument("--ops", action="store_true", help="per-op-type time summary")
    ModelArgs.add(prof)
    TargetArgs.add(prof)
    DataArgs.add(prof, DataFlags("data", "input sample (first sample is used); default: generated from the signature"))
    OutputArgs.add(prof)

    cmp_ = add("compare", "fidelity of model B against model A on data", f"""
        examples:
          {PROG} compare model.onnx small.onnx --data eval.npz
          {PROG} compare model.onnx small.onnx --data eval.npz --labels labels.npy --json
          {PROG} compare model.onnx small.onnx --data images/ --image-size 224x224 --metric mypkg.metrics:map50
        """)
    cmp_.add_argument("model")
    cmp_.add_argument("model_b")
    cmp_.add_argument("--labels", metavar="FILE", help="labels (.npy or one per line) for accuracy of each model")
    cmp_.add_argument("--metric", metavar="MODULE:FUNC", help="extra metric f(outputs_a, outputs_b) -> float")
    ModelArgs.add(cmp_)
    TargetArgs.add(cmp_)
    DataArgs.add(cmp_, DataFlags("data", "evaluation data; default: generated from the signature (weak)"))
    OutputArgs.add(cmp_)

    comp = add("compress", "run passes and write a smaller/faster model", f"""
        With no pass options, compress runs the lossless passes (simplify, fold_batchnorm, eliminate_dead).
        Pass options build the pipeline simplify -> prune -> fold_batchnorm -> low rank -> eliminate_dead
        -> quantize; --recipe R.yaml gives any pipeline (see --print-recipe).

        examples:
          {PROG} compress model.onnx -o slim.onnx
          {PROG} compress model.onnx -o pruned.onnx --prune 0.3 --round-to 8 --calib calib.npz
          {PROG} compress model.onnx -o lr.onnx --lowrank alds=0.7 --calib calib.npz
          {PROG} compress model.onnx -o int8.onnx --quantize int8 --calib calib.npz --target cpu
          {PROG} compress model.onnx -o out.onnx --recipe recipe.yaml --json
          {PROG} compress model.onnx -o out.onnx --prune 0.3 --print-recipe > recipe.yaml
          {PROG} compress llm.onnx -o llm.int8.onnx --quantize int8 --calib calib.npz   # external data: offloaded
        """)
    comp.add_argument("model")
    comp.add_argument("-o", "--output", required=True, help="output .onnx path (written atomically)")
    comp.add_argument("--recipe", metavar="R.yaml", help="pipeline from a YAML recipe")
    comp.add_argument("--print-recipe", action="store_true", help="print the pipeline as a YAML recipe and exit")
    g = comp.add_argument_group("pruning")
    g.add_argument("--prune", type=float, metavar="RATIO", help="remove this fraction of prunable MACs")
    g.add_argument("--prune-criterion", choices=["l1", "l2", "bn_scale", "activation"])
    g.add_argument("--round-to", type=int, metavar="N", help="keep channel counts (and ranks) a multiple of N")
    g = comp.add_argument_group("low rank")
    g.add_argument("--lowrank", metavar="MODE=V", help="energy=0.9 | ratio=0.5 | alds=0.7")
    g = comp.add_argument_group("quantization")
    g.add_argument("--quantize", choices=["int8", "fp8", "int4-weight", "fp16"])
    g.add_argument("--calibration", choices=["minmax", "percentile", "entropy", "mse"])
    g.add_argument("--min-fidelity", metavar="M=V", help="e.g. cosine=0.995 or top1=0.99: keep sensitive layers float")
    comp.add_argument("--exclude", action="append", metavar="REGEX", help="node names to leave untouched (repeatable)")
    comp.add_argument(
        "--verify", nargs="?", const="", metavar="METRIC=V",
        help="check every pass on --eval (else --calib) data; bisect and exclude the nodes of a pass that costs "
        "more than the threshold (default cosine=0.999; also rel_l2, snr_db, top1, max_abs)",
    )
    comp.add_argument("--labels", metavar="FILE", help="labels of --eval: report accuracy before and after")
    comp.add_argument("--measure", action="store_true", help="measure latency of output vs input on --target (interleaved)")
    comp.add_argument("--report", metavar="FILE.html", help="write a self-contained HTML report")
    comp.add_argument(
        "--offload", choices=["auto", "on", "off"], default="auto",
        help="keep weights in files beside the output and memory-map them (peak memory near the model size); "
        "auto: when the input has external data",
    )
    ModelArgs.add(comp)
    TargetArgs.add(comp)
    DataArgs.add(
        comp,
        DataFlags("calib", "calibration data for recovery/quantization"),
        DataFlags("eval", "evaluation data: report fidelity of the output against the input"),
    )
    OutputArgs.add(comp)

    from onnxslim_compress.cli.search_commands import add_commands

    handlers = dict(COMMANDS)
    handlers.update(add_commands(sub, common))
    p.set_defaults(_handlers=handlers)
    return p


def _pipeline_from_flags(ns: argparse.Namespace):
    from onnxslim_compress.jobs.compress import flags_pipeline, lossless_pipeline
    from onnxslim_compress.passes.recipe import load_recipe

    pass_flags = [ns.prune, ns.lowrank, ns.quantize]
    if ns.recipe:
        if any(f is not None for f in pass_flags):
            raise BadInputError("--recipe cannot be combined with --prune/--lowrank/--quantize")
        return load_recipe(ns.recipe)
    if all(f is None for f in pass_flags):
        return lossless_pipeline()
    exclude = list(ns.exclude or []) or None
    round_to = ns.round_to
    if not round_to and ns.target != "cpu":
        # hardware-aware default: tensor cores want multiples of 8 (fp16) or 16/32 (int8)
        from onnxslim_compress.runtime.latency_table import default_round_to

        precision = "int8" if ns.quantize in ("int8", "fp8") else "fp16"
        round_to = default_round_to(TargetArgs.target(ns), precision)
    prune = lowrank = quant = None
    if ns.prune is not None:
        prune = _given(ratio=ns.prune, criterion=ns.prune_criterion, round_to=round_to, exclude=exclude)
    if ns.lowrank is not None:
        mode, sep, value = ns.lowrank.partition("=")
        try:
            v = float(value) if sep else None
        except ValueError:
            v = None
        if v is None:
            raise BadInputError(f"--lowrank {ns.lowrank!r}: expected energy=0.9, ratio=0.5 or alds=0.7")
        lowrank = _given(mode=mode, value=v, round_to=round_to, exclude=exclude)
    if ns.quantize is not None:
        quant = _given(mode=ns.quantize, calibration=ns.calibration, min_fidelity=ns.min_fidelity, exclude=exclude)
    return flags_pipeline(prune, lowrank, quant)


def _given(**params: Any) -> dict[str, Any]:
    """Pass parameters the user set on the command line; the rest keep the pass's defaults."""
    return {k: v for k, v in params.items() if v is not None}


def cmd_compress(ns: argparse.Namespace) -> int:
    from onnxslim_compress.graph.io import check_output_path, load_model
    from onnxslim_compress.jobs.compress import compress
    from onnxslim_compress.passes.recipe import dump_recipe

    pipeline = _pipeline_from_flags(ns)
    if ns.print_recipe:
        print(dump_recipe(pipeline), end="")
        return 0
    check_output_path(ns.output, [ns.model])
    # the graph is enough for the data's input specs; compress() loads the weights (one copy, not two)
    model = load_model(ns.model, load_external_data=False)
    shapes = ModelArgs.shapes(ns)
    if shapes:  # a wrong --input-shape fails here, before any work (not midway, nor silently)
        from onnxslim_compress.graph.shapes import bind_input_shapes

        bind_input_shapes(model, shapes)
    target = TargetArgs.target(ns)
    calib = DataArgs.open(ns, "calib", model, shapes, seed=ns.seed) if ns.calib else None
    eval_data = DataArgs.open(ns, "eval", model, shapes, seed=ns.seed) if ns.eval else None
    verify = None
    if ns.verify is not None:
        from onnxslim_compress.jobs.verify import VerifySpec

        verify = VerifySpec.parse(ns.verify)
        if calib is None and eval_data is None:
            raise BadInputError("--verify needs --eval or --calib data")
    if ns.report:
        check_output_path(ns.report, [ns.model])
    res = compress(
        ns.model, ns.output, pipeline=pipeline, calib=calib, eval_data=eval_data, target=target,
        input_shapes=shapes, seed=ns.seed, progress=_progress(ns), verify=verify, measure_latency=ns.measure,
        eval_labels=_labels(ns, eval_data), offload={"auto": None, "on": True, "off": False}[ns.offload],
    )
    if ns.report:
        from onnxslim_compress.report.html import write

        write(res.report, ns.report)
    if ns.json:
        _print_json(res.report)
    else:
        _print_compress_summary(res.report)
    return 0


def _labels(ns: argparse.Namespace, eval_data: Any):
    if not ns.labels:
        return None
    if eval_data is None:
        raise BadInputError("--labels needs --eval data")
    from onnxslim_compress.data import load_labels

    return load_labels(ns.labels)


def _progress(ns: argparse.Namespace) -> bool:
    return not ns.no_progress and not getattr(ns, "json", False) and sys.stderr.isatty()


def _print_compress_summary(r: dict[str, Any]) -> None:
    b, a = r["before"], r["after"]

    def ratio(k: str) -> str:
        if k in b and k in a and b[k]:
            return f"{b[k]:,} -> {a[k]:,} ({a[k] / b[k]:.1%})"
        return "n/a"

    print(f"wrote {r['output']}")
    for s in r["passes"]:
        keys = {k: v for k, v in s["stats"].items() if not isinstance(v, (list, dict))}
        skipped = len(s["stats"].get("skipped", []))
        extra = f", {skipped} skipped (see --json)" if skipped else ""
        print(f"  {s['name']:<16} {'changed' if s['modified'] else 'no change':<10} {keys}{extra}")
    for k in ("macs", "params", "size_bytes", "nodes"):
        print(f"  {k:<10} {ratio(k)}")
    for sg in r.get("subgraphs_untouched", []):
        print(f"  left as is: {sg['op']} {sg['node']} ({sg['body_nodes']} nodes in its bodies; {sg['reason']})")
    lat = r.get("latency")
    if lat:
        print(f"  latency    {lat['b']['median']:.3f} ms vs {lat['a']['median']:.3f} ms: ratio {lat['ratio']:.3f} "
              f"(p10-p90 {lat['ratio_p10']:.2f}-{lat['ratio_p90']:.2f}, {lat['runs']} interleaved runs, {lat['target']})")
    for s in r["passes"]:
        ver = s["stats"].get("verify")
        if ver and ver.get("excluded"):
            print(f"  verify: {s['name']} excluded {', '.join(ver['excluded'])} ({ver['reruns']} re-runs)")
    if "fidelity" in r:
        from onnxslim_compress.runtime.metrics import FidelityReport

        print(FidelityReport.from_dict(r["fidelity"]).table())


def cmd_inspect(ns: argparse.Namespace) -> int:
    from onnxslim_compress.graph.costs import count_costs, format_table
    from onnxslim_compress.graph.io import load_model, normalize

    model = load_model(ns.model)
    normalize(model)
    cost = count_costs(model, ModelArgs.shapes(ns))
    out = cost.as_dict()
    groups = None
    if ns.groups:
        groups = _groups(model, ModelArgs.shapes(ns))
        out["groups"] = groups
    if ns.json:
        _print_json(out)
        return 0
    print(format_table(cost, top=ns.top))
    if groups is not None:
        print(f"\nchannel groups: {len(groups)}")
        for gr in groups:
            state = "prunable" if gr.get("prunable") else f"frozen ({gr.get('reason', '')})"
            print(f"  {gr.get('name', '?'):<40} {gr.get('channels', '?'):>6} ch  {state}")
    return 0


def _groups(model, shapes) -> list[dict]:
    try:
        from onnxslim_compress.passes.prune.groups import describe_groups
    except ImportError:
        raise CompressError("channel-group analysis is not available in this build") from None
    return describe_groups(model, shapes)


def cmd_profile(ns: argparse.Namespace) -> int:
    from onnxslim_compress.graph.io import load_model
    from onnxslim_compress.runtime.profiler import compare, measure, op_type_profile
    from onnxslim_compress.runtime.session import make_session

    target = TargetArgs.target(ns)
    model = load_model(ns.model)
    shapes = ModelArgs.shapes(ns)
    data = DataArgs.open(ns, "data", model, shapes, seed=ns.seed)
    feeds = next(iter(data))
    out: dict[str, Any] = {"target": target.kind, "threads": target.threads}
    if ns.model_b:
        b = load_model(ns.model_b)
        ab = compare(model, b, feeds, target, warmup=ns.warmup, runs=ns.runs)
        out["ab"] = ab.as_dict()
        text = ab.summary()
    else:
        st = measure(make_session(model, target, timing=True), feeds, warmup=ns.warmup, runs=ns.runs)
        out["latency_ms"] = {"median": st.median, "p90": st.p90, "p95": st.p95, "mean": st.mean, "min": st.min, "runs": st.n}
        text = f"median {st.median:.3f} ms  p90 {st.p90:.3f}  p95 {st.p95:.3f}  ({st.n} runs, {target.kind})"
    if ns.ops:
        rows = op_type_profile(model, feeds, target)
        out["ops"] = [{"op_type": r[0], "ms": r[1], "share": r[2], "count": r[3]} for r in rows]
        text += "\n" + "\n".join(f"  {r[0]:<24} {r[1]:9.3f} ms {r[2]:6.1%}  x{r[3]}" for r in rows)
    if ns.json:
        _print_json(out)
    else:
        print(text)
    return 0


def cmd_compare(ns: argparse.Namespace) -> int:
    from onnxslim_compress.data import load_labels
    from onnxslim_compress.graph.io import load_model
    from onnxslim_compress.runtime.metrics import compare_models, load_metric

    a, b = load_model(ns.model), load_model(ns.model_b)
    shapes = ModelArgs.shapes(ns)
    data = DataArgs.open(ns, "data", a, shapes, seed=ns.seed)
    labels = load_labels(ns.labels) if ns.labels else None
    metric = load_metric(ns.metric) if ns.metric else None
    rep = compare_models(a, b, data, target=TargetArgs.target(ns), labels=labels, metric=metric, progress=_progress(ns))
    if ns.json:
        _print_json(rep.as_dict())
    else:
        print(rep.table())
    return 0


def _print_json(obj: Any) -> None:
    from onnxslim_compress.jobs.compress import _json_default

    print(json.dumps(obj, indent=2, default=_json_default))


COMMANDS = {"compress": cmd_compress, "inspect": cmd_inspect, "profile": cmd_profile, "compare": cmd_compare}


def main(argv: list[str] | None = None) -> int:
    from onnxslim_compress.runtime.session import cpu_runtime_conflict

    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        warn = cpu_runtime_conflict()
        if warn:
            print(f"{PROG}: warning: {warn}", file=sys.stderr)
        parser = build_parser()
        ns = parser.parse_args(argv)
        if not ns.command:
            parser.print_help()
            return 2
        return ns._handlers[ns.command](ns)
    except CompressError as e:
        if debug:
            traceback.print_exc()
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no output was written", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - last resort: one line, exit 1, traceback with --debug
        if debug:
            traceback.print_exc()
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"{PROG}: internal error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
