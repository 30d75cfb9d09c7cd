"""Command line: inspect, profile, compare, compress, search, worker (docs/ARCHITECTURE.md "Data flow").

Every subcommand is a Command built from the argument groups of cli/groups.py. `main()` is the one
entry point (also behind `python -m onnxslim_compress` and `python -m onnxslim_compress.search`) and
the one error handler: one line on stderr, exit 0 ok, 2 bad input, 3 accuracy gate, 1 internal,
130 on Ctrl-C; `--debug` adds the traceback. Output files are written atomically by graph.io, so an
interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import sys
import textwrap
import threading
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
    Parser,
    PassArgs,
    RecipeArgs,
    TargetArgs,
    TimingArgs,
    dedent,
)
from onnxslim_compress.cli.search_commands import SearchCommand, WorkerCommand
from onnxslim_compress.data import generated_failure
from onnxslim_compress.errors import AccuracyGateError, BadInputError, CompressError, as_bad_input
from onnxslim_compress.files import write_atomic
from onnxslim_compress.graph.costs import count_costs, format_table
from onnxslim_compress.graph.io import check_output_path, load_model, normalize
from onnxslim_compress.graph.shapes import bind_input_shapes
from onnxslim_compress.jobs.compress import DROP_METRICS, compress, parse_max_drop
from onnxslim_compress.jobs.guard import FidelityFloor
from onnxslim_compress.jobs.verify import VerifySpec
from onnxslim_compress.passes.base import Pass, Pipeline
from onnxslim_compress.passes.prune.describe import describe_groups
from onnxslim_compress.passes.recipe import canonical_pipeline, dump_recipe, load_recipe, pass_registry
from onnxslim_compress.report import html
from onnxslim_compress.runtime.latency_table import default_round_to
from onnxslim_compress.runtime.metrics import (
    Assertion,
    FidelityReport,
    assertion_failures,
    compare_models,
)
from onnxslim_compress.runtime.profiler import compare, measure, op_type_profile
from onnxslim_compress.runtime.session import cpu_runtime_conflict, make_session, shapes_from_run
from onnxslim_compress.version import __version__


@contextlib.contextmanager
def generated_inputs_named(data: Any, what: str):
    """A run on generated inputs that fails while a dynamic dim was guessed exits 2 naming the dim
    and --input-shape (the guess is the likely cause, and the flag the fix)."""
    try:
        yield
    except CompressError:
        raise
    except Exception as e:  # noqa: BLE001 - ORT raises several types
        bad = generated_failure(data, e, what)
        if bad is None:
            raise
        raise bad from e


class InspectCommand(Command):
    name = "inspect"
    summary = "MACs, parameters and size per layer; prunable channel groups"
    epilog = f"""
        examples:
          {PROG} inspect model.onnx
          {PROG} inspect model.onnx --input-shape images:1x3x640x640 --top 40
          {PROG} inspect model.onnx --groups --json > cost.json
        """

    def __init__(self) -> None:
        super().__init__()
        self.model, self.out = ModelArgs(), OutputArgs()

    def groups(self) -> list[ArgGroup]:
        return [self.model, self.out]

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--top", type=int, default=20, help="layers shown in the table (default 20)")
        p.add_argument("--groups", action="store_true", help="also list channel-pruning dependency groups")

    def run(self, ns: argparse.Namespace) -> int:
        model = load_model(self.model.path)
        normalize(model)
        cost = count_costs(model, self.model.shapes, runner=shapes_from_run)
        out = {"tool": PROG, "version": __version__, **cost.as_dict()}
        groups = None
        if ns.groups:
            groups = describe_groups(model, self.model.shapes)
            out["groups"] = groups
        if self.out.json:
            self.out.print_json(out)
            return 0
        print(format_table(cost, top=ns.top))
        if groups is not None:
            print(f"\nchannel groups: {len(groups)}")
            for gr in groups:
                state = "prunable" if gr.get("prunable") else f"frozen ({gr.get('reason', '')})"
                print(f"  {gr.get('name', '?'):<40} {gr.get('channels', '?'):>6} ch  {state}")
        return 0


class ProfileCommand(Command):
    name = "profile"
    summary = "latency on the target runtime; with two models, the B/A ratio from interleaved runs"
    epilog = f"""
        examples:
          {PROG} profile model.onnx --threads 2
          {PROG} profile model.onnx compressed.onnx --runs 100 --threads 2
          {PROG} profile model.onnx --ops        # time per op type from onnxruntime's profiler
        """

    def __init__(self) -> None:
        super().__init__()
        self.model = ModelArgs("optional", "second model: report latency(B)/latency(A)")
        self.timing, self.target, self.out = TimingArgs(), TargetArgs(), OutputArgs()
        self.data = DataArgs(DataFlags("data", "input sample (first sample is used); default: generated from the signature"))

    def groups(self) -> list[ArgGroup]:
        return [self.model, self.timing, self.target, self.data, self.out]

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--ops", action="store_true", help="per-op-type time summary")

    def run(self, ns: argparse.Namespace) -> int:
        model = load_model(self.model.path)
        data = self.data.open("data", model, self.model.shapes, seed=self.common.seed)
        with generated_inputs_named(data, "profile"):
            return self._run(ns, model, next(iter(data)))

    def _run(self, ns: argparse.Namespace, model: Any, feeds: dict) -> int:
        target, warmup, runs = self.target.target, self.timing.warmup, self.timing.runs
        out: dict[str, Any] = {"tool": PROG, "version": __version__, "target": target.kind, "threads": target.threads}
        if self.model.path_b:
            b = load_model(self.model.path_b)
            ab = compare(model, b, feeds, target, warmup=warmup, runs=runs)
            out["ab"] = ab.as_dict()
            text = f"A = {self.model.path}, B = {self.model.path_b}\n{ab.summary()}"
        else:
            st = measure(make_session(model, target, timing=True), feeds, warmup=warmup, runs=runs)
            out["latency_ms"] = {"median": st.median, "p90": st.p90, "p95": st.p95, "mean": st.mean, "min": st.min, "runs": st.n}
            text = f"median {st.median:.3f} ms  p90 {st.p90:.3f}  p95 {st.p95:.3f}  ({st.n} runs, {target.kind})"
        if ns.ops:
            rows = op_type_profile(model, feeds, target, runs=runs, warmup=warmup)
            out["ops"] = [{"op_type": r[0], "ms": r[1], "share": r[2], "count": r[3]} for r in rows]
            if self.model.path_b:
                rows_b = op_type_profile(b, feeds, target, runs=runs, warmup=warmup)
                out["ops_b"] = [{"op_type": r[0], "ms": r[1], "share": r[2], "count": r[3]} for r in rows_b]
                names = (f"A {Path(self.model.path).name}", f"B {Path(self.model.path_b).name}")
                text += "\n" + "\n".join(op_table(rows, rows_b, names))
            else:
                text += "\n" + "\n".join(f"  {r[0]:<24} {r[1]:9.3f} ms {r[2]:6.1%}  x{r[3]}" for r in rows)
        if self.out.json:
            self.out.print_json(out)
        else:
            print(text)
        return 0


def op_table(rows_a: list[Any], rows_b: list[Any], names: tuple[str, str] = ("A", "B")) -> list[str]:
    """Per op type, A's and B's kernel time per run (median) side by side, A's order first."""
    a = {r[0]: r for r in rows_a}
    b = {r[0]: r for r in rows_b}
    ops = [*a, *(op for op in b if op not in a)]
    body = [[op, f"{a[op][1]:.3f} ms x{a[op][3]}" if op in a else "-", f"{b[op][1]:.3f} ms x{b[op][3]}" if op in b else "-"]
            for op in ops]
    return [f"  {ln}" for ln in text_table(["op type (per run, median)", *names], body)]


class CompareCommand(Command):
    name = "compare"
    summary = "fidelity of model B against model A on data"
    epilog = f"""
        examples:
          {PROG} compare model.onnx small.onnx --data eval.npz
          {PROG} compare model.onnx small.onnx --data eval.npz --labels labels.npy --json
          {PROG} compare model.onnx small.onnx --data images/ --image-size 224x224 --metric mypkg.metrics:map50
          {PROG} compare model.onnx small.onnx --data eval.npz --assert 'cosine>=0.99' --assert 'max_abs<=1e-3'   # CI gate

        --assert METRIC OP V (OP: >=, <=, >, <) checks a figure of the report: a per-output metric
        (max_abs, mean_abs, rel_l2, cosine, snr_db, top1, exact: on every output it applies to, or
        one output with METRIC[NAME]), accuracy_a/accuracy_b/accuracy_drop (with --labels), or a
        --metric function's name. A failed assertion exits 3 with one line naming it and the value.
        """

    def __init__(self) -> None:
        super().__init__()
        self.model = ModelArgs("required")
        self.labels = LabelsArgs("labels (.npy or one per line) for accuracy of each model")
        self.target, self.out = TargetArgs(), OutputArgs()
        self.metric = MetricArgs("; printed as the headline figure")
        self.data = DataArgs(DataFlags("data", "evaluation data; default: generated from the signature (weak)"))

    def groups(self) -> list[ArgGroup]:
        return [self.model, self.labels, self.metric, self.target, self.data, self.out]

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--assert", dest="asserts", action="append", metavar="METRIC>=V",
                       help="CI gate, repeatable: exit 3 unless the figure holds, e.g. cosine>=0.99, max_abs[logits]<=1e-3")

    def run(self, ns: argparse.Namespace) -> int:
        asserts = [Assertion.parse(t) for t in ns.asserts or []]  # a typo fails before any work
        spec = self.metric.spec
        a, b = load_model(self.model.path), load_model(self.model.path_b)
        data = self.data.open("data", a, self.model.shapes, seed=self.common.seed)
        labels = self.labels.load()
        if spec is not None and spec.name == "accuracy" and labels is None:
            raise BadInputError("--metric accuracy needs --labels")
        with generated_inputs_named(data, "compare"):
            rep = compare_models(a, b, data, target=self.target.target, labels=labels,
                                 metric=spec.name if spec is not None and spec.custom else None,
                                 progress=self.common.progress(self.out.json))
        fails = assertion_failures(rep, asserts)
        if self.out.json:
            d = rep.as_dict()
            d["tool"], d["version"] = PROG, __version__
            if spec is not None:
                d["metric"] = {"name": spec.name, "value": spec.value(rep)}
            if asserts:
                d["assertions"] = [{"assert": str(x), "ok": x.failure(rep) is None} for x in asserts]
            self.out.print_json(d)
        else:
            print(f"B ({self.model.path_b}) against A ({self.model.path}):")
            print(rep.table(names=(Path(self.model.path).name, Path(self.model.path_b).name)))
            if spec is not None and not spec.custom:
                print(f"{spec.name}: {spec.value(rep):.6g}")
            for x in asserts:
                if x.failure(rep) is None:
                    print(f"assert {x}: ok")
        if fails:
            raise AccuracyGateError("compare: " + "; ".join(fails))
        return 0


class CompressCommand(Command):
    name = "compress"
    summary = "run passes and write a smaller/faster model"
    epilog = f"""
        With no pass options, compress runs the lossless passes (simplify, fold_batchnorm, fuse_attention, eliminate_dead).
        Pass options build the pipeline simplify -> prune -> fold_batchnorm -> low rank -> eliminate_dead
        -> quantize; --recipe R.yaml gives any pipeline (see --print-recipe). Each pass option sets the
        recipe parameter it names; the others keep the pass's defaults.

        examples:
          {PROG} compress model.onnx -o slim.onnx
          {PROG} compress model.onnx -o pruned.onnx --prune 0.3 --round-to 8 --calib calib.npz
          {PROG} compress model.onnx -o lr.onnx --lowrank alds=0.7 --calib calib.npz
          {PROG} compress model.onnx -o int8.onnx --quantize int8 --calib calib.npz --target cpu
          {PROG} compress model.onnx -o out.onnx --recipe recipe.yaml --json
          {PROG} compress model.onnx -o out.onnx --prune 0.3 --print-recipe > recipe.yaml
          {PROG} compress llm.onnx -o llm.int8.onnx --quantize int8 --calib calib.npz   # external data: offloaded
        """

    def __init__(self, registry: Mapping[str, type[Pass]]) -> None:
        super().__init__()
        self.registry = registry
        self.model, self.output = ModelArgs(), OutputModelArgs()
        self.recipe = RecipeArgs("pipeline from a YAML recipe", "print the pipeline as a YAML recipe and exit")
        self.passes = PassArgs(registry)
        self.labels = LabelsArgs("labels of --eval: report accuracy before and after")
        self.target, self.out = TargetArgs(), OutputArgs()
        self.data = DataArgs(
            DataFlags("calib", "calibration data for recovery/quantization"),
            DataFlags("eval", "evaluation data: report fidelity of the output against the input"),
        )

    def groups(self) -> list[ArgGroup]:
        return [self.model, self.output, self.recipe, self.passes, self.labels, self.target, self.data, self.out]

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--verify", nargs="?", const="", metavar="METRIC=V",
            help="check every pass on --eval (else --calib) data; bisect and exclude the nodes of a pass that costs "
            "more than the threshold (default cosine=0.999; also rel_l2, snr_db, top1, max_abs)",
        )
        p.add_argument(
            "--max-drop", action="append", metavar="METRIC=V",
            help="CI gate, repeatable: exit 3 (nothing written) when the drop measured on --eval against the input "
            f"exceeds V, e.g. accuracy=0.01 (with --labels) or cosine=0.005; METRIC: {', '.join(DROP_METRICS)}",
        )
        p.add_argument(
            "--min-fidelity", metavar="M=V[,M=V]",
            help="fidelity floor of the output against the input on --calib data, never written below (pearson, "
            "rel_l2, cosine, top1, sequence; default pearson=0.99,rel_l2=0.15; none: no floor): below it the lossy "
            "passes back off, else exit 3; its first cosine/pearson/top1/sequence bound (else the pearson its rel_l2 "
            "bound implies) is also quantize's goal unless --quantize-goal is given",
        )
        p.add_argument("--measure", action="store_true", help="measure latency of output vs input on --target (interleaved)")
        p.add_argument("--report", metavar="FILE.html", help="write a self-contained HTML report")
        p.add_argument(
            "--offload", choices=["auto", "on", "off"], default="auto",
            help="keep weights in files beside the output and memory-map them (peak memory near the model size); "
            "auto: when the input has external data",
        )

    def pipeline(self) -> Pipeline:
        """The recipe, or the lossless passes plus the ones the pass flags turned on."""
        given = self.passes.given()
        if self.recipe.path:
            if given:
                raise BadInputError(f"--recipe cannot be combined with {'/'.join(self.passes.enabling)}")
            return load_recipe(self.recipe.path)
        overrides: dict[str, Any] = {}
        values = self.passes.values
        if given and not values.get("--round-to") and self.target.target.kind != "cpu":
            # hardware-aware default: tensor cores want multiples of 8 (fp16) or 16/32 (int8)
            precision = "int8" if values.get("--quantize") in ("int8", "fp8") else "fp16"
            overrides["--round-to"] = default_round_to(self.target.target, precision)
        return canonical_pipeline(self.passes.chosen(overrides), self.registry)

    def run(self, ns: argparse.Namespace) -> int:
        max_drop = parse_max_drop(ns.max_drop)
        FidelityFloor.parse(ns.min_fidelity)  # a bad floor fails here, before the model is read
        pipeline = self.pipeline()
        if self.recipe.print_only:
            print(dump_recipe(pipeline), end="")
            return 0
        src, out_path = self.model.path, self.output.require()
        check_output_path(out_path, [src])
        # the graph is enough for the data's input specs; compress() loads the weights (one copy, not two)
        model = load_model(src, load_external_data=False)
        shapes = self.model.shapes
        if shapes:  # a wrong --input-shape fails here, before any work (not midway, nor silently)
            bind_input_shapes(model, shapes)
        seed = self.common.seed
        values = self.passes.values
        if (values.get("--quantize") in ("int8", "fp8") and not self.data.paths["calib"]
                and not values.get("--synthetic-calib") and self.target.target.kind != "cuda"):
            raise BadInputError(f"--quantize {values['--quantize']} needs calibration data: give --calib DATA (real "
                                "inputs), or --synthetic-calib to calibrate on generated inputs (weak)")
        calib = self.data.open("calib", model, shapes, seed=seed) if self.data.paths["calib"] else None
        eval_data = self.data.open("eval", model, shapes, seed=seed) if self.data.paths["eval"] else None
        verify = None
        if ns.verify is not None:
            verify = VerifySpec.parse(ns.verify)
            if calib is None and eval_data is None:
                raise BadInputError("--verify needs --eval or --calib data")
        if ns.report:
            check_output_path(ns.report, [src])
        if self.labels.path and eval_data is None:
            raise BadInputError("--labels needs --eval data")
        if max_drop and eval_data is None:
            raise BadInputError("--max-drop needs --eval data (the drop is measured on it against the input)")
        try:
            res = self._compress(ns, src, out_path, pipeline, calib, eval_data, verify, max_drop)
        except AccuracyGateError as e:
            if self.out.json and hasattr(e, "report"):
                self.out.print_json(e.report)
            raise
        if ns.report:
            write_atomic(ns.report, html.page(res.report))
        if self.out.json:
            self.out.print_json(res.report)
        else:
            print_compress_summary(res.report, written=str(res.output or out_path))
        return 0

    def _compress(self, ns: argparse.Namespace, src: str, out_path: str, pipeline: Pipeline, calib: Any,
                  eval_data: Any, verify: Any, max_drop: dict[str, float]) -> Any:
        return compress(
            src, out_path, pipeline=pipeline, calib=calib, eval_data=eval_data, target=self.target.target,
            input_shapes=self.model.shapes, seed=self.common.seed, progress=self.common.progress(self.out.json), verify=verify,
            measure_latency=ns.measure, eval_labels=self.labels.load(),
            offload={"auto": None, "on": True, "off": False}[ns.offload], max_drop=max_drop,
            min_fidelity=ns.min_fidelity,
        )


def _figure(v: Any) -> str:
    """A stat as a person reads it: thousands separated, floats to 4 significant digits."""
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


_NUMBER = re.compile(r"^[-+]?[\d,.]+(%|s| ms)?$|^n/a$")


def text_table(header: list[str], rows: list[list[str]], wrap: int | None = None) -> list[str]:
    """Aligned plain-text columns (first left, numbers right); the last column wraps at `wrap`
    characters onto indented continuation lines."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    numeric = [i > 0 and all(_NUMBER.match(r[i]) for r in rows) for i in range(len(header))]
    lines = []

    def line(r: list[str]) -> list[str]:
        head = "  ".join(c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(r[:-1], widths, strict=True)))
        last = textwrap.wrap(r[-1], wrap, break_on_hyphens=False) if wrap and r[-1] else [r[-1]]
        return [f"{head}  {last[0]}".rstrip(), *(f"{' ' * len(head)}  {x}" for x in last[1:])]

    lines += line(header)
    lines.append("  ".join("-" * w for w in [*widths, max(len(header[-1]), 12)]))
    for r in rows:
        lines += line(r)
    return lines


def pass_table(r: dict[str, Any]) -> list[str]:
    """One row per pass: result, time and its figures (lists and tables stay in --json / --report)."""
    rows = []
    for s in r["passes"]:
        st = s["stats"]
        figures = [f"{k} {_figure(v)}" for k, v in st.items() if not isinstance(v, (list, dict))]
        skipped = len(st.get("skipped", []) or [])
        if skipped:
            figures.append(f"{skipped} skipped (see --json)")
        rows.append([s["name"], "changed" if s["modified"] else "no change", f"{s.get('seconds', 0):.2f}s",
                     ", ".join(figures) or "-"])
    return text_table(["pass", "result", "time", "figures"], rows, wrap=72)


def alignment_lines(r: dict[str, Any]) -> list[str]:
    """The channel step pruning probed on this CPU, and the measured figure that decided it."""
    out = []
    for s in r["passes"]:
        al = s["stats"].get("alignment") or {}
        if al.get("source") == "probe":
            isa = ", ".join(al.get("isa") or []) or "unknown ISA"
            out.append(f"{s['name']}: round_to {al.get('step')} probed for {al.get('precision')} ({isa}): "
                       f"{al.get('reason', '')}")
    return out


def kept_float_lines(r: dict[str, Any]) -> list[str]:
    """What stayed float and why, beside what ORT really runs as integer kernels."""
    out = []
    for s in r["passes"]:
        st = s["stats"]
        if "float_units" not in st and "quantized_units" not in st:
            continue
        # body units (If/Loop/Scan) are ranked and kept float with the top-level ones: counted together
        q, fl = st.get("quantized_units", 0) + st.get("body_quantized_units", 0), st.get("float_units", {}) or {}
        total = q + sum(v for k, v in fl.items() if not k.startswith("isolated"))
        why = ", ".join(f"{v} {k}" for k, v in fl.items()) or "none"
        line = f"{s['name']}: {q} of {total} units quantized; kept float: {why}"
        if "integer_kernels" in st:
            line += f"; ORT runs {st['integer_kernels']} integer kernels"
        whole = [x["reason"] for x in st.get("skipped", []) or [] if isinstance(x, dict) and x.get("node") == "*"]
        if not s["modified"] and whole:
            line = f"{s['name']}: model left unchanged: {whole[0]}"
        out.append(line)
        if st.get("speed"):
            out.append("  speed check (int8/fp32, interleaved): "
                       + "; ".join(f"{row['step']} x{row['ratio']:.2f}"
                                   + (f" ({row['ci95'][0]:.2f}-{row['ci95'][1]:.2f})" if row.get("ci95") else "")
                                   for row in st["speed"]))
        named = [(row["node"], row["reason"]) for row in st.get("layers", []) or []
                 if isinstance(row, dict) and row.get("precision") == "float" and row.get("reason", "") != "excluded"]
        for node, reason in named[:8]:  # which layers, and the number that kept each float
            out.append(f"  float: {node}: {reason}")
        if len(named) > 8:
            out.append(f"  float: {len(named) - 8} more (see --json)")
    return out


def print_compress_summary(r: dict[str, Any], written: str | None = None) -> None:
    """The human summary: passes as a table, sizes original vs compressed, latency and fidelity
    with A and B named, what stayed float and why, and verify's outcome (passed or not)."""
    b, a = r["before"], r["after"]
    print(f"wrote {written or r['output']}")
    for ln in pass_table(r):
        print(f"  {ln}")
    rows = []
    for k in ("macs", "params", "size_bytes", "nodes"):
        if k in b and k in a:
            rows.append([k, f"{b[k]:,}", f"{a[k]:,}", f"{a[k] / b[k]:.1%}" if b[k] else "n/a"])
    print()
    for ln in text_table(["", "original", "compressed", "compressed/original"], rows):
        print(f"  {ln}")
    for ln in alignment_lines(r) + kept_float_lines(r):
        print(f"  {ln}")
    nh = r.get("no_harm") or {}
    if nh.get("measured"):
        figures = " ".join(f"{k} {v:.4g}" for k, v in nh["measured"].items())
        floor = f", floor {nh['floor']}" if nh.get("floor") else ""
        print(f"  checked    {figures} against the input on {nh['samples']} samples{floor}")
    for a_ in nh.get("attempts", []):
        if a_.get("backed_off"):
            print(f"  backed off {'; '.join(a_['backed_off'])} ({a_['shortfalls'][0]})")
    for key in ("kept_input", "not_checked"):
        if nh.get(key):
            print(f"  {key.replace('_', ' '):<10} {nh[key]}")
    untouched = r.get("subgraphs_untouched", [])
    for sg in untouched[:5]:  # one row per body: a model with nested Ifs has dozens
        print(f"  left as is: {sg['op']} body {sg.get('body', sg['node'])} ({sg['body_nodes']} nodes; {sg['reason']})")
    if len(untouched) > 5:
        print(f"  left as is: {len(untouched) - 5} more bodies (see --json)")
    lat = r.get("latency")
    if lat:
        print(f"  latency: original {lat['a']['median']:.3f} ms, compressed {lat['b']['median']:.3f} ms (medians); "
              f"compressed/original {lat['ratio']:.3f} (p10-p90 {lat['ratio_p10']:.2f}-{lat['ratio_p90']:.2f}, "
              f"{lat['runs']} interleaved runs, {lat['target']})")
    for s in r["passes"]:
        ver = s["stats"].get("verify")
        if not ver:
            continue
        metric = f"{ver.get('metric', 'value')} {ver['value']:.6g}" + (f" (threshold {ver['threshold']:g})" if "threshold" in ver else "")
        state = "ok" if ver.get("ok") else "FAILED"
        extra = f"; excluded {', '.join(ver['excluded'])} ({ver['reruns']} re-runs)" if ver.get("excluded") else ""
        note = f"; {ver['note']}" if ver.get("note") else ""
        print(f"  verify {s['name']}: {state}, {metric}{extra}{note}")
    if "fidelity" in r:
        print("\n  fidelity of compressed vs original:")
        for ln in FidelityReport.from_dict(r["fidelity"]).table(names=("original", "compressed")).splitlines():
            print(f"  {ln}")


def commands(registry: Mapping[str, type[Pass]] | None = None) -> list[Command]:
    """Every subcommand; `registry` (default: the installed passes) feeds compress's pass flags."""
    reg = registry if registry is not None else pass_registry()
    return [InspectCommand(), ProfileCommand(), CompareCommand(), CompressCommand(reg), SearchCommand(), WorkerCommand()]


def build_parser(registry: Mapping[str, type[Pass]] | None = None, prog: str = PROG) -> argparse.ArgumentParser:
    p = Parser(
        prog=prog,
        description="Make .onnx models smaller and faster on the runtime they ship on.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=dedent(
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

            exit codes: 0 ok, 2 bad input, 3 accuracy gate not met, 1 internal error, 130 interrupted
            """
        ),
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for c in commands(registry):
        c.attach(sub)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every `finally` (workspace, temp files) runs on the way out."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


class _Signals:
    """SIGTERM raises Terminated; SIGINT raises KeyboardInterrupt as usual but is also recorded:
    a Ctrl-C that lands inside a C extension's import comes out as ImportError("initialization
    failed"), which is an interruption too, not an internal error. Only default handlers are
    replaced (an embedding application's own stay), and only in the main thread."""

    def __init__(self) -> None:
        self.interrupted = False
        self.previous: list[tuple[int, Any]] = []

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.interrupted = True
        raise KeyboardInterrupt()

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            defaults = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}
            for sig, handler in ((signal.SIGTERM, _on_sigterm), (signal.SIGINT, self._on_sigint)):
                if signal.getsignal(sig) is not defaults[sig]:
                    continue
                self.previous.append((sig, signal.signal(sig, handler)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous:
            signal.signal(sig, handler)


def main(argv: list[str] | None = None, *, prog: str = PROG) -> int:
    """The one entry point and error handler of every subcommand."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    with _Signals() as signals:
        try:
            warn = cpu_runtime_conflict()
            if warn:
                print(f"{PROG}: warning: {warn}", file=sys.stderr)
            parser = build_parser(prog=prog)
            ns = parser.parse_args(argv)
            if not ns.command:
                parser.print_help()
                return 2
            rc = ns._command(ns)
            if signals.interrupted:  # a KeyboardInterrupt swallowed under the command: still a Ctrl-C
                print(f"{PROG}: interrupted after the command had finished; its output, if any, is complete",
                      file=sys.stderr)
                return 130
            return rc
        except Terminated:
            print(f"{PROG}: terminated; no output was written", file=sys.stderr)
            return 143
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted; no output was written", file=sys.stderr)
            return 130
        except CompressError as e:
            if debug:
                traceback.print_exc()
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return e.exit_code
        except Exception as e:  # noqa: BLE001 - last resort: one line, exit 1, traceback with --debug
            if debug:
                traceback.print_exc()
            if signals.interrupted:
                print(f"{PROG}: interrupted; no output was written", file=sys.stderr)
                return 130
            bad = as_bad_input(e)  # a full disk: the environment, exit 2
            if bad is not None:
                print(f"{PROG}: error: {bad}", file=sys.stderr)
                return bad.exit_code
            msg = str(e).splitlines()[0] if str(e) else ""
            print(f"{PROG}: internal error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)",
                  file=sys.stderr)
            return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
