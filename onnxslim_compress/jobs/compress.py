"""The compress job as a function: load, normalize, run a pipeline, measure, save with a report.

The CLI's `compress` and deployment pipelines (`from onnxslim_compress import compress`) share this
function, so both get the same guarantees: input untouched, atomic output, report in metadata.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tqdm import tqdm

from onnxslim_compress.data import generated_failure, open_data
from onnxslim_compress.errors import AccuracyGateError, BadInputError, CompressError, PassFailure
from onnxslim_compress.graph import weights
from onnxslim_compress.graph.convert import as_model
from onnxslim_compress.graph.costs import count_costs
from onnxslim_compress.graph.io import (
    EXTERNAL_DATA_THRESHOLD,
    check_output_path,
    graph_problem,
    load_model,
    load_weights,
    model_bytes,
    normalize,
    save_model,
    uses_external_data,
)
from onnxslim_compress.graph.shapes import bind_input_shapes, shapes_from_feed
from onnxslim_compress.graph.weights import Workspace
from onnxslim_compress.jobs import guard
from onnxslim_compress.jobs.verify import Verifier
from onnxslim_compress.passes.base import Pipeline, PipelineResult
from onnxslim_compress.passes.bodies import untouched_rows
from onnxslim_compress.passes.context import Context
from onnxslim_compress.passes.recipe import canonical_pipeline
from onnxslim_compress.passes.specialize import Specialize, with_fixed
from onnxslim_compress.runtime.metrics import FidelityReport, compare_models
from onnxslim_compress.runtime.profiler import compare, first_feed, op_type_profile
from onnxslim_compress.runtime.session import Target, load_in_child, make_session, shapes_from_run
from onnxslim_compress.version import __version__

REPORT_KEY = "onnxslim_compress"


def lossless_pipeline() -> Pipeline:
    return canonical_pipeline({})


def flags_pipeline(prune: dict | None = None, lowrank: dict | None = None, quantize: dict | None = None) -> Pipeline:
    """The canonical order (REGISTRY's): simplify, prune (BN still there for bn_scale), fold BN, low rank, clean, QDQ last."""
    chosen = {"prune_channels": prune, "low_rank": lowrank, "quantize": quantize}
    return canonical_pipeline({k: v for k, v in chosen.items() if v is not None})


@dataclass
class CompressResult:
    model: onnx.ModelProto
    report: dict[str, Any]
    output: Path | None = None
    pipeline_result: PipelineResult | None = field(default=None, repr=False)


def _costs(model: onnx.ModelProto, shapes: dict) -> dict[str, Any]:
    try:
        c = count_costs(model, shapes, runner=shapes_from_run).as_dict()["total"]
        return {"macs": c["macs"], "params": c["params"], "size_bytes": c["size_bytes"], "nodes": c["nodes"]}
    except Exception as e:  # noqa: BLE001 - cost figures are informative, never fatal
        return {"nodes": len(model.graph.node), "size_bytes": model_bytes(model), "error": str(e).splitlines()[0]}


def compress(
    model: str | os.PathLike | onnx.ModelProto,
    output: str | os.PathLike | None = None,
    *,
    pipeline: Pipeline | None = None,
    calib: Any = None,
    eval_data: Any = None,
    eval_labels: Any = None,
    target: Target | None = None,
    input_shapes: dict[str, list[int]] | None = None,
    seed: int = 0,
    progress: bool = False,
    verify: Any = None,
    measure_latency: bool = False,
    offload: bool | None = None,
    max_drop: dict[str, float] | None = None,
    fix_inputs: dict[str, Any] | None = None,
    min_fidelity: str | None = None,
) -> CompressResult:
    """Run `pipeline` (default: the lossless passes) and optionally save to `output`.

    With `eval_data` (an iterable of feeds) the report includes the fidelity of the result against
    the input model. `verify` (a verify.VerifySpec) checks each pass on eval (else calib) data and
    bisects a pass that costs more than its threshold; `measure_latency` adds the latency ratio of
    the result against the input on the target (interleaved runs).

    `offload` (None = when the input has external data) keeps the weights out of memory: they stay
    in files in a workspace folder beside the output (weights.py), ORT memory-maps them, and passes
    read one weight at a time, so peak memory stays near the model's size instead of a multiple of
    it. The returned model's weights then live in the output's `.data` file (or, without an
    output, are read back into the proto).

    `model`: a path, a ModelProto, an onnx_graphsurgeon Graph or an onnx_ir Model (converted when
    that package is importable, else refused with a clear BadInputError). `calib` / `eval_data`: a
    path (.npz, .npy, a folder), a {input name: array of samples} dict, a list of feed dicts or an
    `open_data` source. `max_drop` ({metric: largest drop}, see parse_max_drop) is a CI gate on the fidelity measured
    on `eval_data`: when a drop is larger, nothing is written and AccuracyGateError (exit 3) is
    raised with the report attached as `.report`.

    `fix_inputs` ({input name: scalar or list}) binds those inputs to constants and inlines the
    Ifs they decide (the `specialize` pass, run first; the same as `--fix-input`); fidelity is
    then measured against the input model fed the same fixed values.

    Do no harm (jobs/guard.py): dynamic input dims are bound from the data, else the model's
    metadata, else `input_shapes`; the result is opened in ORT in a child process and run against
    the input on the calibration (else eval, else generated) data before anything is written. A
    lossless pipeline whose outputs differ (shape or value) writes the input graph instead, saying
    why; a lossy one below `min_fidelity` (guard.DEFAULT_MIN_FIDELITY; "none" opts out) backs off
    and raises AccuracyGateError (exit 3) if that does not reach the floor. A floor given here is
    also the goal of a quantize pass that has none of its own (guard.goal_from_floor), so the first round already keeps the layers float it needs.
    """
    if max_drop and eval_data is None:
        raise BadInputError("--max-drop needs --eval data (the drop is measured on it against the input)")
    model = as_model(model)
    if fix_inputs:
        pipeline = with_fixed_inputs(pipeline or lossless_pipeline(), fix_inputs)
    if output is not None:
        check_output_path(output, [model] if not isinstance(model, onnx.ModelProto) else [])
    # parsed once, graph-only: whether to offload depends on it, and then the weights are attached
    src = model if isinstance(model, onnx.ModelProto) else load_model(model, load_external_data=False)
    if offload is None:
        offload = uses_external_data(src)
    ws = Workspace.create(Path(output).absolute().parent if output is not None else None) if offload else None
    try:
        if isinstance(model, onnx.ModelProto):
            if ws is not None:  # offload a copy; the caller's proto stays as it was
                src = onnx.ModelProto()
                src.CopyFrom(model)
                ws.adopt(src, None)
        else:
            load_weights(src, model, offload_to=ws)
        # data as paths, numpy dicts, feed lists or DataSources: one form for the passes (open_data)
        calib, eval_data = (None if d is None else open_data(d, src, input_shapes=input_shapes, seed=seed)
                            for d in (calib, eval_data))
        return _compress(model, src, output, ws, pipeline=pipeline, calib=calib, eval_data=eval_data,
                         eval_labels=eval_labels, target=target, input_shapes=input_shapes, seed=seed,
                         progress=progress, verify=verify, measure_latency=measure_latency,
                         max_drop=max_drop, floor=guard.FidelityFloor.parse(min_fidelity),
                         floor_given=min_fidelity is not None)
    finally:
        if ws is not None:
            ws.close()


def resolve_input_shapes(model: onnx.ModelProto, given: dict[str, list[int]] | None, *data: Any) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Shapes for every input with dynamic dims, from evidence: the user's --input-shape, else
    the first sample of the data, else the model's metadata (`imgsz`); what is left counts as 1
    (said once on stderr by bind_input_shapes) and is left out of the result. Returns (shapes of
    the inputs with evidence, source per input)."""
    shapes = {k: list(v) for k, v in (given or {}).items()}
    source = dict.fromkeys(shapes, "--input-shape")
    for d in data:
        if d is None or isinstance(d, (str, os.PathLike)):
            continue
        first = next(iter(d), None)
        for name, shape in shapes_from_feed(model, first).items():
            if name not in shapes:
                shapes[name], source[name] = shape, "data"
    bound = bind_input_shapes(model, shapes)
    guessed = {a.split("[", 1)[0] for a in bound.assumed}
    for a in bound.from_metadata:
        source.setdefault(a.split("[", 1)[0], "metadata")
    # guessed dims stay unbound here, so generated data and the passes still know they are guesses
    return {k: v for k, v in bound.inputs.items() if k in source and k not in guessed}, source


def _compress(
    model: str | os.PathLike | onnx.ModelProto, src: onnx.ModelProto, output: str | os.PathLike | None,
    ws: Workspace | None, *,
    pipeline: Pipeline | None, calib: Any, eval_data: Any, eval_labels: Any, target: Target | None,
    input_shapes: dict[str, list[int]] | None, seed: int, progress: bool, verify: Any, measure_latency: bool,
    max_drop: dict[str, float] | None = None,
    floor: guard.FidelityFloor | None,
    floor_given: bool = False,
) -> CompressResult:
    inputs = [model] if not isinstance(model, onnx.ModelProto) else []
    shapes, shape_source = resolve_input_shapes(src, input_shapes, calib, eval_data)
    ctx = Context(target=target or Target(), calib=calib, input_shapes=shapes, seed=seed, progress=progress)
    before = _costs(src, ctx.input_shapes)
    # Memory: a model we loaded ourselves is handed to the pipeline as is (no copy); the checks
    # keep only the input's outputs on the check data, computed before the pipeline runs, and a
    # back-off reloads the file, so a 2 GB model costs one copy of its weights here instead of three
    # (BENCHMARKS.md "Robustness"). Eval fidelity and latency need the input itself: kept then.
    keep_src = isinstance(model, onnx.ModelProto) or eval_data is not None or measure_latency or ws is not None
    # the checks' data: the calibration data (what the floor is defined on), else eval, else generated
    check_data = calib if calib is not None else eval_data
    check_kind = "calibration" if calib is not None else "eval" if eval_data is not None else "generated"
    if check_data is None:
        check_data = open_data(None, src, input_shapes=ctx.input_shapes, limit=2, seed=seed)
    check_feeds = guard.take(check_data)
    data_desc = check_data.describe() if hasattr(check_data, "describe") else f"{len(check_feeds)} given samples"
    check_target = Target(kind="cpu", threads=ctx.target.threads)

    def fresh() -> onnx.ModelProto:
        """A new working copy of the input (the first run may have consumed it)."""
        if src is not None:
            m = onnx.ModelProto()
            m.CopyFrom(src)
        else:
            m = load_model(model, load_external_data=False)
            load_weights(m, model, offload_to=ws)
        return m

    work = fresh() if keep_src else src
    if not keep_src:
        src = None
    norm = normalize(work)
    pipeline = guard.split_goal_within_floor(pipeline or lossless_pipeline(), floor)
    if floor_given:
        pipeline = guard.goal_from_floor(pipeline, floor)
    lossless = guard.is_lossless(pipeline)
    # the reference is the normalized input (unique names, clamped IR), run before the pipeline
    # consumes it: no second copy of the weights is kept for the checks
    # with a specialize step the input is run later, fed the fixed values: the check data alone may
    # pick a branch the input model cannot run (a generated sample rate, say)
    specializes = any(isinstance(p, Specialize) for p in pipeline.passes)
    ref_out, not_checked = (None, None) if specializes else _reference_outputs(work, check_feeds, check_target, check_data)
    # the passes fit on the calibration data (recovery's refit, int8 ranges), so a floor read there
    # alone is in-sample: PP-OCR cls pruned 0.3 read rel_l2 0.0003 on it and 0.0276 on held-out
    # images. With --eval as well, the floor must also hold on (up to CHECK_SAMPLES of) it.
    held: tuple[list, list, str] | None = None
    if calib is not None and eval_data is not None and not specializes and ref_out is not None:
        held_feeds = guard.take(eval_data)
        held_ref, _ = _reference_outputs(work, held_feeds, check_target, eval_data)
        if held_ref is not None:
            held = (held_feeds, held_ref, eval_data.describe() if hasattr(eval_data, "describe") else
                    f"{len(held_feeds)} given samples")
    in_bytes = _proto_bytes(work)
    t0 = time.perf_counter()
    attempts: list[dict[str, Any]] = []
    reports: list[Any] = []  # each round's fidelity report, to tell whether a back-off raised it
    no_harm: dict[str, Any] = {"checked_on": data_desc, "samples": len(check_feeds), "lossless": lossless,
                               "input_shapes": {k: {"shape": v, "source": shape_source[k]}
                                                for k, v in ctx.input_shapes.items()}}
    if not_checked:
        no_harm["not_checked"] = not_checked
    if held is not None:
        no_harm["held_out"] = {"checked_on": held[2], "samples": len(held[0])}
    while True:
        res = _run_pipeline(pipeline, work, ctx, progress, verify, eval_data, calib, model)
        del work
        # inputs a specialize step fixed: the input model is compared fed the same fixed values
        run_feeds, ref = check_feeds, ref_out
        fixed = _with_fixed_values(check_feeds, res)
        if specializes and not not_checked:
            run_feeds = list(fixed)
            base = fresh()
            normalize(base)
            ref, why_not = _reference_outputs(base, run_feeds, check_target, check_data)
            del base
            if why_not:
                no_harm["not_checked"] = why_not
        # in a child first: a result that crashes ORT must not take this process (and the report) down
        why = load_in_child(res.model, check_target, run_feeds[0]) if ref is not None else None
        if why and not lossless:
            raise CompressError(f"the compressed model failed in a child onnxruntime session ({why}); nothing was written")
        verdict = guard.Verdict(failure=f"it failed in a child onnxruntime session ({why})") if why else \
            _check(res.model, ref, run_feeds, check_target, data_desc, check_data)
        if lossless:
            problems = verdict.lossless_problems()
            if problems:
                # keep the input graph: a lossless result that is not equal is a bug, never an output
                no_harm["kept_input"] = f"the lossless result was not equal to the input ({'; '.join(problems)})"
                kept = fresh()
                normalize(kept)
                res = PipelineResult(kept, False, res.steps)
            elif not _no_bigger(res, in_bytes, no_harm):
                no_harm["kept_input"] = "the lossless result was larger than the input"
                kept = fresh()
                normalize(kept)
                res = PipelineResult(kept, False, res.steps)
            break
        kind = check_kind
        if held is not None and not (verdict.failure or verdict.shape_changes):
            other = _check(res.model, held[1], held[0], check_target, held[2], eval_data)
            if other.failure or other.shape_changes or (
                    floor is not None and other.report is not None and verdict.report is not None
                    and floor.margin(other.report) < floor.margin(verdict.report)):
                verdict, kind = other, "eval"
        if verdict.failure or verdict.shape_changes:
            what = verdict.failure or "; ".join(verdict.shape_changes)
            raise CompressError(f"the compressed model does not match the input's outputs ({what}); nothing was written")
        short = floor.shortfalls(verdict.report) if floor is not None and verdict.report is not None else []
        attempts.append({"passes": [p.describe() for p in pipeline.passes if not p.lossless], "shortfalls": short,
                         "worst": _worst(verdict), "worst_on": kind})
        if not short:
            break
        # back off while each round raises fidelity (jobs/guard.py): a round that does not is the last
        stalled = len(attempts) > 1 and not floor.improved(reports[-1], verdict.report)
        reports.append(verdict.report)
        nxt = None if stalled else guard.backed_off(pipeline, floor, len(attempts), res.steps)
        if nxt is None:
            why = (f"; the last back-off did not raise fidelity (worst {_figures(attempts[-2]['worst'])} -> "
                   f"{_figures(attempts[-1]['worst'])})") if stalled else "; nothing is left to back off"
            raise AccuracyGateError(
                f"fidelity floor {floor.spec()} not met after {len(attempts) - 1} back-off(s): {short[0]} on "
                f"{len(held[0]) if kind == 'eval' and held is not None else len(check_feeds)} "
                f"samples of the {kind} data{why}; compress less or pass --min-fidelity none"
            )
        pipeline, changes = nxt
        attempts[-1]["backed_off"] = changes
        if not any(not p.lossless for p in pipeline.passes):
            # every lossy pass was dropped: the next round gives the input back (lossless passes only)
            no_harm["kept_input"] = f"no lossy pass met the floor {floor.spec()} ({'; '.join(changes)})"
        work = fresh()
        normalize(work)
    if floor is not None and not lossless:
        no_harm["floor"] = floor.spec()
    no_harm["attempts"] = attempts
    if verdict.report is not None:
        no_harm["measured"] = _worst(verdict)
    guard.measured_stats(res.steps, verdict)
    report: dict[str, Any] = {
        "tool": "onnxslim-compress",
        "version": __version__,
        "input": Path(model).name if inputs else None,
        "output": Path(output).name if output is not None else None,
        "seed": seed,
        "target": ctx.target.kind,
        "normalize": norm.as_dict(),
        "subgraphs_untouched": subgraph_bodies(res.model, res.steps),
        "passes": [
            {"name": s.name, "params": s.params, "modified": s.modified, "seconds": round(s.seconds, 3), "stats": s.stats}
            for s in res.steps
        ],
        "modified": res.modified,
        "seconds": round(time.perf_counter() - t0, 3),
        "before": before,
        "after": _costs(res.model, ctx.input_shapes),
        "no_harm": no_harm,
    }
    if eval_data is not None:
        report["fidelity"] = compare_models(src, res.model, _with_fixed_values(eval_data, res), target=Target(kind="cpu"),
                                            labels=eval_labels).as_dict()
    if measure_latency:
        feed = first_feed(check_data)
        report["latency"] = compare(src, res.model, feed, ctx.target).as_dict()
        # where the time went, per op type, before and after (the report's bar chart)
        report["latency"]["ops"] = {
            which: [{"op_type": r.op_type, "ms": r.total_ms, "share": r.share, "count": r.count}
                    for r in op_type_profile(m, feed, ctx.target, runs=10, warmup=2)]
            for which, m in (("original", src), ("compressed", res.model))
        }
    if ws is not None:
        report["offloaded"] = True
    if max_drop:
        check_max_drop(report, max_drop)
    set_report(res.model, report)
    out_path = save_model(res.model, output) if output is not None else None
    if ws is not None and weights.has_offloaded(res.model) and Workspace.of(res.model).path == ws.path:
        weights.materialize(res.model)  # no output: the workspace goes, so the weights come back in
    return CompressResult(res.model, report, out_path, res)


def _figures(worst: dict[str, float]) -> str:
    """'pearson 0.9880, rel_l2 0.1612' for the error message of a stalled back-off."""
    return ", ".join(f"{k} {v:.4f}" for k, v in worst.items() if k in ("pearson", "cosine", "rel_l2", "top1"))


#: metric -> how its drop is read from a fidelity report (the input model scores 1 on the
#: agreement metrics and 0 on the error metrics against itself)
DROP_METRICS = ("accuracy", "top1", "sequence", "cosine", "rel_l2", "max_abs", "mean_abs")


def parse_max_drop(specs: list[str] | str | None) -> dict[str, float]:
    """`accuracy=0.01`, `cosine=0.005` (repeatable, or comma-separated) -> {metric: largest drop}."""
    items = [specs] if isinstance(specs, str) else list(specs or [])
    out: dict[str, float] = {}
    for item in (x for s in items for x in s.split(",") if x.strip()):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in DROP_METRICS:
            raise BadInputError(f"--max-drop {item!r}: expected METRIC=V with METRIC one of {', '.join(DROP_METRICS)}")
        try:
            out[name] = float(value)
        except ValueError:
            raise BadInputError(f"--max-drop {item!r}: {value!r} is not a number") from None
        if out[name] < 0:
            raise BadInputError(f"--max-drop {item!r}: the drop must be >= 0")
    return out


def max_drop_failures(fidelity: dict[str, Any], limits: dict[str, float]) -> list[str]:
    """One line per metric whose drop (input model vs output, on --eval) exceeds its limit."""
    rep = FidelityReport.from_dict(fidelity)
    fails = []
    for name, limit in limits.items():
        if name == "accuracy":
            if rep.accuracy_drop is None:
                raise BadInputError("--max-drop accuracy=V needs --labels for the --eval data")
            drop, shown = rep.accuracy_drop, f"accuracy {rep.accuracy_a:.4f} -> {rep.accuracy_b:.4f}"
        else:
            where = rep.worst_output(name)
            v = rep.per_output[where][name]
            drop = (1.0 - v) if name in ("top1", "sequence", "cosine") else v
            shown = f"{name} {v:.6g} (output {where})"
        if not drop <= limit:  # NaN fails
            fails.append(f"--max-drop {name}={limit:g} failed: {shown}, drop {drop:.6g}")
    return fails


def check_max_drop(report: dict[str, Any], limits: dict[str, float]) -> None:
    """The --max-drop gate: AccuracyGateError (exit 3) naming what failed, report attached."""
    fails = max_drop_failures(report["fidelity"], limits)
    if fails:
        err = AccuracyGateError("; ".join(fails) + " (nothing written)")
        err.report = report  # type: ignore[attr-defined]
        raise err


class PassBar:
    """The pass bar of compress: one step per finished pass, and inside a long pass its stage and
    count (Context.on_progress), refreshed, so the elapsed time keeps moving instead of freezing."""

    def __init__(self, bar: Any):
        self.bar, self.current = bar, ""

    def start(self, name: str) -> None:
        """Pipeline.run's progress hook: `name` starts, so the one before it is done."""
        if self.current:
            self.bar.update(1)
        self.current = name
        self.bar.set_postfix_str(name)

    def stage(self, stage: str, done: int, total: int | None) -> None:
        count = f"{done}/{total}" if total else str(done)
        self.bar.set_postfix_str(f"{self.current}: {stage} {count}", refresh=True)

    def close(self) -> None:
        if self.current:
            self.bar.update(1)
        self.bar.close()


def _blame_input(e: PassFailure, work: onnx.ModelProto, model: Any) -> CompressError:
    """A pass failing on an input that onnx.checker refuses is the input's fault (exit 2), not a
    bug in the pass. Passes never mutate their input, so `work` is still the normalized input."""
    if e.exit_code != 1:
        return e
    problem = graph_problem(work)
    if problem is None:
        return e
    name = str(model) if isinstance(model, (str, os.PathLike)) else "the input model"  # or a gs.Graph / onnx-ir model
    return BadInputError(f"{name}: invalid model ({problem})")


def subgraph_bodies(model: onnx.ModelProto, steps: list[Any] = ()) -> list[dict[str, Any]]:
    """Every If/Loop/Scan body (nested ones included) that no pass changed, with the reasons the
    passes gave (passes/bodies.py `untouched_rows`): quantize and low_rank work inside bodies,
    specialize removes the Ifs a fixed input decides; what is listed here stayed as it was."""
    return untouched_rows(model, list(steps))


def with_fixed_inputs(pipeline: Pipeline, fix_inputs: dict[str, Any]) -> Pipeline:
    """`pipeline` with a specialize pass binding `fix_inputs` first (BadInputError if it has one)."""
    if any(isinstance(p, Specialize) for p in pipeline.passes):
        raise BadInputError("fix_inputs: the pipeline already has a specialize pass; give the inputs there")
    return Pipeline([Specialize(fix_inputs=dict(fix_inputs)), *pipeline.passes])


def _with_fixed_values(data: Any, res: PipelineResult) -> Any:
    """Eval feeds for the input model: the inputs a specialize step fixed carry the fixed values."""
    fixed = {}
    for s in res.steps:
        if s.name == Specialize.name:
            for k, v in s.stats.get("fixed", {}).items():
                fixed[k] = np.asarray(v["value"], dtype=v["dtype"]).reshape(v["shape"])
    return with_fixed(data, fixed) if fixed else data


def _run_pipeline(pipeline: Pipeline, work: onnx.ModelProto, ctx: Context, progress: bool, verify: Any,
                  eval_data: Any, calib: Any, model: Any) -> PipelineResult:
    bar = None
    if progress:
        bar = PassBar(tqdm(total=len(pipeline), desc="compress", unit="pass", leave=False))
        ctx.on_progress = bar.stage
    verifier = Verifier(verify, eval_data if eval_data is not None else calib) if verify is not None else None
    try:
        try:
            return pipeline.run(work, ctx, progress=bar.start if bar else None, verifier=verifier, copy_input=False)
        except PassFailure as e:
            raise _blame_input(e, work, model) from e
    finally:
        if bar is not None:
            bar.close()


def _reference_outputs(reference: onnx.ModelProto, feeds: list, target: Target, data: Any) -> tuple[list | None, str | None]:
    """(the input model's outputs on the check data, why not). An input ORT cannot load (a custom
    op) cannot be compared: (None, reason), and the report says so. An input that loads but fails
    on the data is a data problem (exit 2), named after the guessed dim when the data is generated."""
    if not feeds:
        return None, "no check data"
    try:
        sess = make_session(reference, target)
    except CompressError:
        raise
    except Exception as e:  # noqa: BLE001 - ORT raises several types
        return None, f"the input does not load in onnxruntime ({_last_line(e)})"
    try:
        return guard.run_session(sess, feeds), None
    except Exception as e:  # noqa: BLE001
        bad = generated_failure(data, e, "running the input model")
        if bad is not None:
            raise bad from e
        raise BadInputError(f"the input model fails on the check data: {_last_line(e)}") from e


def _last_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__


def _check(model: onnx.ModelProto, ref_out: list | None, feeds: list, target: Target, desc: str, data: Any) -> guard.Verdict:
    if ref_out is None:
        return guard.Verdict()
    try:
        got = guard.run_all(model, feeds, target)
    except Exception as e:  # noqa: BLE001 - the result failing where the input runs is the finding
        return guard.Verdict(failure=f"the result fails where the input runs: {_last_line(e)}")
    return guard.compare_outputs(ref_out, got, desc)


def _proto_bytes(model: onnx.ModelProto) -> int | None:
    """Serialized size of an in-memory model under 2 GB (None otherwise: not measured)."""
    if weights.has_offloaded(model) or model_bytes(model) > EXTERNAL_DATA_THRESHOLD:
        return None
    return model.ByteSize()


def _no_bigger(res: PipelineResult, in_bytes: int | None, no_harm: dict[str, Any]) -> bool:
    """Whether the lossless result is no bigger than the input, once onnxslim's shape annotations
    (value_info) are dropped where they made it bigger (PP-OCRv4 det: +45 kB with them)."""
    if in_bytes is None or res.model.ByteSize() <= in_bytes:
        return True
    n = len(res.model.graph.value_info)
    del res.model.graph.value_info[:]
    no_harm["value_info_dropped"] = f"{n} shape annotations dropped: with them the lossless result was larger than the input"
    return res.model.ByteSize() <= in_bytes


def _worst(verdict: guard.Verdict) -> dict[str, float]:
    rep = verdict.report
    if rep is None or not rep.per_output:
        return {}
    return {m: rep.worst(m) for m in ("pearson", "rel_l2", "cosine")
            if any(m in v and v.get("exact") is None for v in rep.per_output.values())}


#: an absolute path inside a string (POSIX, ~, or a Windows drive): what a shipped model must not carry
_ABS_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:[\\/]|/|~/)[^\s'\"():,]*")


def file_names_only(obj: Any) -> Any:
    """The report as it goes into the shipped model: every absolute path (the build machine's
    folders: input, output, data sets) shortened to its file name."""
    if isinstance(obj, dict):
        return {k: file_names_only(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [file_names_only(v) for v in obj]
    if isinstance(obj, Path):
        return obj.name
    if isinstance(obj, str):
        return _ABS_PATH.sub(lambda m: Path(m.group(0).replace("\\", "/")).name or m.group(0), obj)
    return obj


def set_report(model: onnx.ModelProto, report: dict[str, Any]) -> None:
    """Store the report in metadata_props so the output file says what was done to it (file names
    only: no folder of the machine that built it)."""
    for p in list(model.metadata_props):
        if p.key == REPORT_KEY:
            model.metadata_props.remove(p)
    entry = model.metadata_props.add()
    entry.key = REPORT_KEY
    entry.value = json.dumps(file_names_only(json.loads(json.dumps(report, default=json_default))), sort_keys=False)


def get_report(model: onnx.ModelProto) -> dict[str, Any] | None:
    for p in model.metadata_props:
        if p.key == REPORT_KEY:
            return json.loads(p.value)
    return None


def json_default(o: Any):
    """`default=` for json.dumps of reports: numpy scalars and arrays become numbers and lists, the
    rest (paths, enums) its str(), so writing a report never fails on a stray type."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)
