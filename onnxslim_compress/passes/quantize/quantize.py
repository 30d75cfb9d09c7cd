"""Quantize: calibrated QDQ placed for the target runtime (int8, fp8), int4 weight-only, fp16.

The pass is the orchestration; the parts live in onnxslim_compress: streamed calibration
(calibration.py), per-target placement and the QDQ rewrite (placement.py), bias correction,
SmoothQuant and sensitivity-driven mixed precision (sensitivity.py). The CPU result is checked
against what ORT really does: the optimized model is saved and its integer kernels counted, because a
QDQ model that ORT does not fuse runs slower than fp32.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto

from onnxslim_compress import files
from onnxslim_compress.errors import AccuracyGateError, BadInputError
from onnxslim_compress.graph import io as model_io
from onnxslim_compress.graph import weights
from onnxslim_compress.graph.index import drop_unused_initializers, iter_bodies, uniquify_body_names
from onnxslim_compress.graph.io import main_opset, upgrade_opset
from onnxslim_compress.graph.shapes import bind_input_shapes
from onnxslim_compress.passes import bodies as bd
from onnxslim_compress.passes import timing
from onnxslim_compress.passes.base import (
    FIDELITY_GOAL,
    Choices,
    Flag,
    Pass,
    PassResult,
    PerTarget,
    Pinned,
    When,
    param,
)
from onnxslim_compress.passes.context import fingerprint
from onnxslim_compress.passes.fold_batchnorm import FoldBatchNorm
from onnxslim_compress.passes.quantize import calibration as cal
from onnxslim_compress.passes.quantize import placement as qp
from onnxslim_compress.passes.quantize import sensitivity as qs
from onnxslim_compress.passes.quantize import speed as qspeed
from onnxslim_compress.passes.quantize.embedding import quantize_gather_tables
from onnxslim_compress.passes.to_fp16 import convert_fp16
from onnxslim_compress.runtime.activations import iterate_tensors
from onnxslim_compress.runtime.session import Target, make_session

QUANTIZED_OPS = {"QuantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger",
                 "ConvInteger", "QLinearAdd", "QLinearMul", "QGemm", "MatMulNBits", "MatMulIntegerToFloat"}
#: what ORT's optimized model contains when QDQ units were fused into integer kernels
INTEGER_KERNELS = {"QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearConcat", "QGemm",
                   "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSigmoid", "QLinearLeakyRelu",
                   "QLinearSoftmax", "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat",
                   "DynamicQuantizeMatMul", "MatMulNBits", "QLinearWhere"}
#: candidate ops whose inputs/outputs are probed for float dtype before placement
_PROBE = qp.WEIGHTED | qp.CPU_QLINEAR_OUT | qp.SHARED_SCALE | qp.FOLDABLE_RELU | {"Concat", "Add"}


@dataclass
class QuantizeParams:
    #: the default search pins the format per target: ORT's CPU EP runs U8S8 QDQ as integer kernels,
    #: the CUDA EP has no int8 QDQ kernels (fp16 is what speeds it up), TensorRT runs int8 QDQ
    mode: Literal["int8", "fp8", "int4-weight", "fp16"] = param(
        "int8", help="int8/fp8: calibrated QDQ; int4-weight: weight-only MatMulNBits; fp16: half precision "
        "(graph edges stay fp32)",
        flag=Flag("--quantize", enables=True, const="int8", help="quantization format"),
        search=PerTarget((("cpu", Pinned("int8")), ("cuda", Pinned("fp16")), ("tensorrt", Pinned("int8"))),
                         default=Pinned("int8")),
    )
    target: Literal["cpu", "cuda", "tensorrt"] | None = param(None, help="placement rules of this runtime; None = the run's --target")
    #: auto: no single method wins everywhere - percentile measured best on the CNNs of BENCHMARKS.md
    #: "Quantization" (minmax lets one outlier sample stretch every scale), while it clips the outlier
    #: channels BERT-class encoders depend on (cosine 0.874 vs minmax 0.985, issue 16)
    calibration: Literal["auto", "minmax", "percentile", "entropy", "mse"] = param(
        "auto", help="how activation ranges are calibrated; auto: per tensor, the method whose range gives the "
        "lowest error at the consumer's output on the calibration rows (If/Loop/Scan bodies too)",
        flag=Flag("--calibrate-method", aliases=("--calibration",), help="how activation ranges are calibrated "
                  "(ORT's calibrate_method; --calibration is the old spelling)"),
        # auto first: the search's "int8" preset is then what `compress --quantize int8` does (on
        # PP-OCRv4 rec, 32 lines, sequence goal: auto keeps 38 of 56 units float, percentile 49)
        search=When("mode", ("int8",), Choices(("auto", "percentile", "minmax", "entropy"))),
    )
    percentile: float = param(99.99, help="the percentile of the percentile calibration, in (50, 100]",
                              flag=Flag("--percentile", metavar="P"))
    exclude: list[str] = param(default_factory=list, help="regexes on node names: matching nodes stay float", flag="--exclude")
    nodes_to_exclude: list[str] = param(
        default_factory=list, help="exact node names that stay float (ORT's nodes_to_exclude)",
        flag=Flag("--nodes-to-exclude", metavar="NAME", help="exact node names that stay float (repeatable)"),
    )
    op_types_to_exclude: list[str] = param(
        default_factory=list, help="op types whose nodes stay float, e.g. Gemm (ORT's op_types_to_exclude)",
        flag=Flag("--op-types-to-exclude", metavar="OP", help="op types whose nodes stay float, e.g. Gemm (repeatable)"),
    )
    #: with the search's fidelity goal, the search decides per candidate whether to keep layers float
    min_fidelity: str | None = param(
        None, help="e.g. cosine=0.995, pearson=0.99, top1=0.99 or sequence=0.97 (CTC-decoded text equal): keep the "
        "most sensitive layers float until this holds",
        flag=Flag("--quantize-goal", metavar="M=V", parse=qs.quantize_goal_flag,
                  help="the quantize pass's own goal (cosine, pearson, top1 or sequence): keep the most sensitive "
                  "layers float until it holds on the calibration rows; default: the --min-fidelity floor's first "
                  "such bound when --min-fidelity is given, else none (the floor's back-off keeps layers float)"),
        search=When("mode", ("int8",), Choices((None, FIDELITY_GOAL))),
    )
    #: set by the fidelity floor's back-off (jobs/guard.py), which doubles it each round: a goal met on
    #: the pass's own estimate can still miss the floor on the check data (silero VAD: goal 0.995 met,
    #: floor missed), so each round must keep more float than the last, whatever the estimate says
    min_float_units: int = param(0, help="keep at least this many of the most sensitive units float (ranked by the "
                                 "output error each causes alone; body units of If/Loop/Scan included)")
    #: the search's per-layer precision knob (issue 18): a fidelity goal is a proxy read on the
    #: calibration rows and can overshoot the task (PP-OCRv4 rec, sequence goal 0.975 on 16 rows: 38 of 56
    #: units float, while 13 float already decode every eval text exactly), so the search can also ask
    #: for a share of the ranked units directly; a share, not a count, so one ladder fits every model size
    float_share: float = param(
        0.0, help="keep at least this share of the candidate units float, the most sensitive first (the same "
        "ranking as min_fidelity; with a goal too, the larger of the two counts)",
        search=When("mode", ("int8",), Choices((0.0, 0.125, 0.25, 0.5))),
    )
    bias_correction: bool = param(True, help="correct the bias for the mean error the weight quantization adds")
    smoothquant: float | None = param(
        None, help="SmoothQuant alpha in [0, 1] (None = off)",
        flag=Flag("--smoothquant", metavar="ALPHA", aliases=("--smoothquant-alpha",), const=0.5,
                  help="SmoothQuant: migrate activation outliers into the weights; alone, alpha 0.5"),
    )
    block_size: int = param(32, help="int4-weight block size (a power of two >= 16)")
    calib_samples: int = param(128, help="calibration samples")
    per_channel: bool = param(True, help="per-channel weight scales", flag="--per-channel")
    #: measured: QGemm cosine 0.96 -> 0.9999 on a CPU without VNNI
    reduce_range: bool | None = param(
        None, help="7-bit weights for the CPU EP; None = auto: on when the CPU lacks VNNI, where ORT's U8S8 "
        "kernels (vpmaddubsw) saturate int16 pair sums and give wrong results",
        flag=Flag("--reduce-range", help="7-bit weights (--no-reduce-range: 8-bit); unset: on when the CPU lacks VNNI"),
    )
    #: a voice-activity model failed inside calibration on made-up data, and exited 0 before that
    synthetic_calib: bool = param(
        False, help="calibrate int8/fp8 on generated inputs when no calibration data is given (weak); off: "
        "no calibration data is an error that says so",
        flag=Flag("--synthetic-calib", help="quantize int8/fp8 on generated inputs when no --calib is given (weak)"),
    )
    #: measured on paraphrase-MiniLM-L3 (AVX512-VNNI, 1 thread): static percentile QDQ keeps cosine
    #: 0.874 on the L6 export; MatMul-only dynamic units with per-channel weights keep 0.997 at ORT
    #: quantize_dynamic's speed (BENCHMARKS.md "Zoo")
    activations: Literal["static", "dynamic", "auto"] = param(
        "auto", help="CPU int8 activations: static (calibrated QDQ everywhere), dynamic (only MatMuls with a "
        "constant weight, activation range taken at run time: ORT quantize_dynamic's structure), auto (dynamic for "
        "MatMuls whose input no integer kernel produces - LayerNorm/Gelu outputs in transformers - static elsewhere)",
        flag=Flag("--activations", help="CPU int8: static, dynamic or auto (dynamic MatMuls where the input is float-fed)"),
    )
    #: measured on all-MiniLM-L6 (AVX512-VNNI, 1 thread): the FFN output MatMuls read Gelu outputs
    #: whose few huge channels per-tensor dynamic ranges cannot hold (last_hidden_state pearson 0.976)
    outlier_split: bool = param(
        True, help="CPU dynamic MatMuls: input channels whose range is > 12x the median channel's (at most 8) run "
        "as a small float MatMul beside the integer one (LLM.int8()'s decomposition)",
    )
    #: measured on all-MiniLM-L6 (AVX512-VNNI + AMX, 1 thread): splitting every outlier activation (9, 36 ops)
    #: gave pearson 0.996 at 5-10 % more latency; 4 splits in gain-per-op order (16 ops) give 0.9926 on eval
    #: rows (0.994 on the calibration rows the goal reads: the goal keeps that margin over the 0.99 floor)
    outlier_goal: float | None = param(
        0.994, help="the pearson (worst output vs float, calibration rows) the outlier split aims for: splits are "
        "added in order of measured gain per added op until it holds (a pearson/cosine --min-fidelity goal, when "
        "stricter, wins; a run floor looser than the default lowers it to the floor's bound); None: split every "
        "outlier activation",
    )
    speed_check: bool = param(
        True, help="CPU int8: time the result against the float model (interleaved) and leave float the units whose "
        "integer kernels lose; a model int8 cannot speed up comes back unchanged, with the ratio as the reason",
        flag=Flag("--speed-check", help="CPU int8: keep only what measures faster than fp32 (--no-speed-check: skip the timing)"),
        # off in search trials: the search times every candidate itself against the original (always a
        # candidate), so a second timing inside each trial would only double the cost
        search=When("mode", ("int8",), Pinned(False)),
    )
    quantize_embeddings: bool = param(
        True, help="CPU int8: store large embedding tables (Gather) as uint8; ORT runs a uint8 Gather (MiniLM: 53 -> 17.5 MB)",
    )

    def __post_init__(self):
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ValueError("block_size must be a power of two >= 16")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError("percentile must be in (50, 100]")
        if self.calib_samples < 1:
            raise ValueError("calib_samples must be >= 1")
        for rx in self.exclude:
            try:
                re.compile(rx)
            except re.error as e:
                raise ValueError(f"exclude {rx!r} is not a regular expression: {e}") from None
        if self.min_fidelity is not None:
            try:
                qs.parse_min_fidelity(self.min_fidelity)
            except BadInputError as e:
                raise ValueError(str(e)) from None
        if self.min_float_units < 0:
            raise ValueError("min_float_units must be >= 0")
        if not 0.0 <= self.float_share <= 1.0:
            raise ValueError("float_share must be in [0, 1]")
        if self.outlier_goal is not None and not 0.0 < self.outlier_goal <= 1.0:
            raise ValueError("outlier_goal must be in (0, 1] (or None: split every outlier activation)")
        if self.smoothquant is not None and not 0.0 <= self.smoothquant <= 1.0:
            raise ValueError("smoothquant alpha must be in [0, 1]")


@dataclass
class BodyQuant:
    """The quantization of If/Loop/Scan bodies, planned and calibrated once (Quantize._static_bodies),
    applied to any candidate model: `apply(model, only)` quantizes, in place, the body units whose
    node is in `only` (None: every calibrated one) and returns the per-body rows."""

    units: list[qp.Unit]
    apply: Callable[[onnx.ModelProto, frozenset[str] | None], list[dict]]


def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has VNNI/AMX int8 dot products (Linux /proc/cpuinfo; non-x86 counts as yes)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return True
    if "avx2" not in flags:
        return True
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def already_quantized(model: onnx.ModelProto) -> str | None:
    """Why the model must not be quantized again: it holds quantized ops (bodies included)."""
    graphs = [model.graph] + [b for _, _, b, _ in iter_bodies(model.graph)]
    ops = sorted({n.op_type for g in graphs for n in g.node} & QUANTIZED_OPS)
    return f"model is already quantized (contains {', '.join(ops)})" if ops else None


def count_integer_kernels(model: onnx.ModelProto, threads: int = 1) -> dict[str, int]:
    """Op counts of integer kernels in ORT's optimized CPU model (what really runs)."""
    with tempfile.TemporaryDirectory() as d:
        p = str(Path(d) / "opt.onnx")
        config = {}
        if weights.has_offloaded(model):  # ORT would otherwise embed every weight in the optimized file
            config = {"session.optimized_model_external_initializers_file_name": "opt.onnx.data",
                      "session.optimized_model_external_initializers_min_size_in_bytes": "1024"}
        try:
            make_session(model, Target(kind="cpu", threads=threads, opt_level="all"), optimized_model_path=p, config=config)
            opt = onnx.load(p, load_external_data=False)
        except Exception as e:  # ORT says "Protobuf serialization failed" when TMPDIR is full
            files.raise_if_full(d, model_io.model_bytes(model) * 2, e)
            raise
    counts: dict[str, int] = {}
    for n in [n for g in [opt.graph] + [b for _, _, b, _ in iter_bodies(opt.graph)] for n in g.node]:  # bodies too
        if n.op_type in INTEGER_KERNELS:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


class Quantize(Pass):
    """Quantize for the target runtime; see the module docstring and BENCHMARKS.md."""

    name = "quantize"
    Params = QuantizeParams

    def run(self, model: onnx.ModelProto, ctx) -> PassResult:
        p: QuantizeParams = self.params
        kind = p.target or ctx.target.kind
        source = model
        reason = already_quantized(model)
        if reason:
            return PassResult(model, False, {"skipped": [{"node": "*", "reason": reason}]})
        stats: dict = {"mode": p.mode, "target": kind, "opset_in": main_opset(model)}
        mode = p.mode
        if kind == "cuda" and mode in ("int8", "fp8"):
            stats["note"] = f"the CUDA EP does not run QDQ as {mode}; converted to fp16 instead (use --target tensorrt for int8)"
            mode = "fp16"
        if mode == "fp16":
            out, st = convert_fp16(model, keep_io_fp32=True)
            stats.update(st)
            if bd.has_bodies(out):
                stats["bodies"] = bd.apply_to_bodies(out, _fp16_body)
            return PassResult(out, True, stats)
        # int8 on CPU: 14, for the HardSwish fusion (PP-OCR); ORT needs >= 13 for per-axis DQ
        need = {"int8": 14 if kind == "cpu" else 13, "fp8": 19, "int4-weight": 21}[mode]
        model, up = upgrade_opset(model, need)
        stats["opset_out"] = main_opset(model)
        if mode == "int4-weight":
            out, rows, skipped = qp.int4_weight_only(model, p.block_size, self._exclusions(model))
            stats.update(layers=rows, skipped=skipped, quantized=len(rows))
            changed = False
            if bd.has_bodies(out):
                stats["bodies"] = bd.apply_to_bodies(out, lambda v: _int4_body(v, p.block_size, p.exclude))
                changed = any(r["changed"] for r in stats["bodies"])
            return PassResult(out, bool(rows) or up or changed, stats)
        if not bd.has_bodies(model):
            return self._static(model, ctx, kind, mode, stats, source)
        model = _copy(model)
        body_q = self._static_bodies(model, ctx, kind, mode, stats)
        return self._static(model, ctx, kind, mode, stats, source, body_q)

    def _plan_body(self, model: onnx.ModelProto, path: str, node: onnx.NodeProto, body: onnx.GraphProto,
                   consts: dict, types: dict[str, int], kind: str, mode: str, is_float: set[str],
                   ) -> tuple[list[qp.Unit], list[dict], dict[str, str], dict[str, int], dict]:
        """One body as a flat graph: its units, skipped nodes, scale groups, bias-correction axes and,
        for calibration="auto", the consumer matrices of its chosen tensors (read in the view, where
        the borrowed outer weights are constants)."""
        p: QuantizeParams = self.params
        vm = bd.make_view(model, path, node, body, consts, types).model
        qp.constants_to_initializers(vm)
        inits = {t.name: weights.info(t) for t in vm.graph.initializer}
        units, skipped = qp.build_units(vm, kind, is_float, inits)
        skipped += [{"node": u.node, "reason": "excluded"} for u in units if any(re.search(rx, u.node) for rx in p.exclude)]
        units = [u for u in units if not any(re.search(rx, u.node) for rx in p.exclude)]
        if kind == "cpu":  # as in the main graph: a QLinearConcat of LSTM states alone only loses accuracy
            units, isolated = qp.prune_isolated(vm, units)
            skipped += isolated
        if not p.per_channel:
            for u in units:
                u.weights = dict.fromkeys(u.weights)
        chosen, groups = qp.choose_tensors(vm, units, kind, is_float)
        axes = {}
        if p.bias_correction and mode == "int8":
            axes = {vm.graph.node[i].input[0]: (1 if u.op == "Conv" else -1) for i, u in _weighted(vm, units)}
        consumers = cal.consumer_matrices(vm, sorted(chosen)) if p.calibration == "auto" and mode == "int8" else {}
        return units, skipped, groups, axes, consumers

    def _calibrate_bodies(self, model: onnx.ModelProto, wanted: list[str], axes: dict[str, int], types: dict[str, int],
                          data, row_axes: dict[str, int] | None = None,
                          ) -> tuple[dict[str, cal.Histogram], dict[str, np.ndarray], dict[str, str], str, dict]:
        """Histograms (and bias-correction means, and calibration="auto"'s rows of the tensors in
        `row_axes`) of body tensors, carried out by bodies.expose.

        If the rewritten model cannot run (an If inside a Loop whose branch changes between
        iterations: its stand-in outputs cannot be stacked), the tensors of such Ifs are left out
        and the run retried; if that fails too, nothing is calibrated and the reason is returned,
        so those bodies stay float instead of the pass failing.
        """
        p: QuantizeParams = self.params
        failure = ""
        for ifs_in_loops in (True, False):
            exposed, carried, depth = bd.expose(model, sorted(set(wanted) | set(axes)), types, ifs_in_loops=ifs_in_loops)
            top_axes = {carried[t]: (a + depth[t] if a >= 0 else a) for t, a in axes.items() if t in carried}
            # a Loop/Scan stacks a body tensor on a leading axis: its channel axis moves by the levels
            top_rows = {carried[t]: (a + depth[t] if a >= 0 else a) for t, a in (row_axes or {}).items() if t in carried}
            rows_c: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            try:
                hists, top_means = cal.collect_histograms(exposed, sorted({carried[t] for t in wanted if t in carried}), data,
                                                          limit=p.calib_samples, channel_axes=top_axes or None,
                                                          row_axes=top_rows or None, rows_out=rows_c)
            except Exception as e:  # noqa: BLE001 - ORT refuses the rewritten model: retry narrower, then give up
                failure = f"the calibration run of body tensors failed: {str(e).splitlines()[0][:200]}"
                continue
            means = {t: top_means[carried[t]] for t in axes if t in carried and carried[t] in top_means}
            if not ifs_in_loops:
                failure = "tensors of Ifs inside Loop/Scan bodies were not calibrated (" + failure + ")"
            else:
                failure = ""
            rows = {t: rows_c[carried[t]] for t in (row_axes or {}) if t in carried and carried[t] in rows_c}
            return hists, means, carried, failure, rows
        return {}, {}, {}, failure, {}

    def _format(self, kind: str, mode: str, stats: dict) -> qp.Format:
        """The integer format of the target: TensorRT symmetric int8/fp8, else U8S8 (7-bit weights without VNNI)."""
        p: QuantizeParams = self.params
        if kind == "tensorrt":
            fp8 = mode == "fp8"
            et = TensorProto.FLOAT8E4M3FN if fp8 else TensorProto.INT8
            return qp.Format(act_type=et, act_symmetric=True, weight_type=et, weight_qmax=448.0 if fp8 else 127, int32_bias=False)
        reduce = p.reduce_range if p.reduce_range is not None else not cpu_has_vnni()
        stats["weight_bits"] = 7 if reduce else 8
        return qp.Format(weight_qmax=63 if reduce else 127)

    def _static_bodies(self, model: onnx.ModelProto, ctx, kind: str, mode: str, stats: dict) -> BodyQuant | None:
        """QDQ inside If/Loop/Scan bodies (passes/bodies.py), calibrated on body tensors: planned
        and calibrated here (`model` is prepared in place: unique body names, bodies still float),
        applied to each candidate the main graph's build makes (BodyQuant), so the sensitivity
        ranking and the floor's back-off can keep body units float like top-level ones.

        Each body is planned as a flat graph (its units and chosen tensors), every chosen body
        tensor is carried out of its body in one rewritten copy and calibrated in one streamed
        pass, then each body gets its Q/DQ. A unit whose tensors no calibration sample reached (a
        branch never taken on the data) stays float, reported.
        """
        p: QuantizeParams = self.params
        if mode == "fp8" and kind != "tensorrt":
            return None  # _static raises the error for the whole model
        fmt = self._format(kind, mode, {})
        snap = bd.snapshot(model)
        bd.prepare(model)
        types = bd.tensor_types(model)
        consts = bd.model_constants(model)
        is_float = {t for t, e in types.items() if e == TensorProto.FLOAT}
        todo, _ = bd.bodies_to_process(model)
        plan: dict[str, tuple[list[qp.Unit], list[dict]]] = {}
        groups: dict[str, str] = {}
        axes: dict[str, int] = {}  # input of a weighted unit -> its channel axis (bias correction means)
        consumers: dict[str, tuple[int, list[np.ndarray | None]]] = {}  # calibration="auto": as at the top level
        for path, node, body in todo:
            try:
                units, skipped, g, ax, cons = self._plan_body(model, path, node, body, consts, types, kind, mode, is_float)
            except Exception as e:  # noqa: BLE001 - a body the placement rules cannot read stays float, said so
                units, skipped, g, ax, cons = [], [{"node": "*", "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}], {}, {}, {}
            plan[path] = (units, skipped)
            groups.update(g)
            axes.update(ax)
            for t, (a, mats) in cons.items():  # an outer tensor read in several bodies: one range for all
                if t in consumers and consumers[t][0] == a:  # readers, so it is chosen on all of them
                    consumers[t] = (a, consumers[t][1] + mats)
                else:
                    consumers.setdefault(t, (a, mats))
        wanted = sorted({t for path, _, _ in todo for u in plan[path][0] for t in u.acts} | set(groups))
        data = ctx.calib
        if data is None:
            bound = bind_input_shapes(model, ctx.input_shapes)
            data = cal.synthetic_feeds(model, bound.inputs, min(p.calib_samples, 16), ctx.seed)
        hists, means, carried, failure, rows = self._calibrate_bodies(model, wanted, axes, types, data,
                                                                      {t: a for t, (a, _) in consumers.items()})
        if failure:
            stats["body_calibration"] = failure
        seen = {t: hists[carried[t]] for t in carried if hists[carried[t]].max >= hists[carried[t]].min}
        # the same per-tensor choice as the top level (calibration="auto": the method whose range costs
        # least at the consumers' outputs), on rows of the body tensors carried out of their bodies
        body_stats: dict = {}
        act_q = self._act_params(seen, groups, fmt, rows, consumers, body_stats)
        if "calibration_choices" in body_stats:
            stats["body_calibration_choices"] = body_stats["calibration_choices"]

        def quantize_view(v: bd.View, only: frozenset[str] | None) -> tuple[onnx.ModelProto | None, dict]:
            units, skipped = plan[v.path]
            vm = v.model
            qp.constants_to_initializers(vm)
            ok = [u for u in units if all(a in act_q for a in u.acts)]
            skipped = skipped + [{"node": u.node, "reason": "no calibration sample reached it (branch or body never run on the "
                                  "data)" if not failure else f"its tensors were not calibrated ({failure})"}
                                 for u in units if u not in ok]
            if only is not None:  # a candidate of the sensitivity ranking / back-off: the others stay float
                skipped += [{"node": u.node, "reason": "kept float (sensitive)"} for u in ok if u.node not in only]
                ok = [u for u in ok if u.node in only]
            if not ok:
                return None, {"quantized_units": 0, "skipped": skipped,
                              "reason": next((s["reason"] for s in skipped if s["node"] == "*"), None)
                              or ("nothing to quantize" if not units else skipped[-1]["reason"])}
            chosen, _ = qp.choose_tensors(vm, ok, kind, is_float)
            corrected = 0
            if means:  # bias correction, as in the main graph (a borrowed outer bias becomes a body copy)
                delta = qs.weight_bias_shift(vm, ok, means, fmt.weight_qmax)
                qp.apply_float_bias_delta(vm, delta, qs.bias_inputs(vm, ok))
                corrected = len(delta)
            out = qp.insert_qdq(vm, ok, chosen, act_q, fmt)
            layers = [{"node": u.node, "op": u.op, "precision": "fp8" if mode == "fp8" else "int8"} for u in ok]
            return out, {"quantized_units": len(ok), "bias_corrected": corrected, "layers": layers, "skipped": skipped}

        stats["body_tensors_calibrated"] = len(seen)
        calibrated = [u for path, _, _ in todo for u in plan[path][0] if all(a in act_q for a in u.acts)]

        def apply(m: onnx.ModelProto, only: frozenset[str] | None) -> list[dict]:
            return bd.apply_to_bodies(m, lambda v: quantize_view(v, only), bd.rebind(snap, m))

        return BodyQuant(calibrated, apply)

    def _static(self, model: onnx.ModelProto, ctx, kind: str, mode: str, stats: dict,
                source: onnx.ModelProto | None = None, body_q: BodyQuant | None = None) -> PassResult:
        """QDQ / dynamic units on the main graph, and the body units of `body_q` in every candidate;
        `source` is the pass's input (what the speed check times against, and what comes back when
        int8 cannot win)."""
        p: QuantizeParams = self.params
        source = model if source is None else source
        model = _copy(model)
        qp.constants_to_initializers(model)
        if kind == "cpu" and main_opset(model) >= 14:
            stats["hardswish_fused"] = qp.fuse_hardswish(model)
        # a BatchNormalization between a Conv and its output Q blocks QLinearConv; folding it is exact
        folded = FoldBatchNorm()(model, ctx, copy_input=False)
        model = folded.model
        stats["batchnorm_folded"] = folded.stats.get("folded", 0)
        qp.ensure_node_names(model)
        data = ctx.calib
        if data is None:
            if not p.synthetic_calib:
                raise BadInputError(
                    f"quantize {mode}: no calibration data; give --calib DATA (real inputs), or --synthetic-calib "
                    "to calibrate on generated inputs (weak)"
                )
            bound = bind_input_shapes(model, ctx.input_shapes)
            data = cal.synthetic_feeds(model, bound.inputs, min(p.calib_samples, 16), ctx.seed)
            stats["calibration_data"] = "synthetic (no --calib given: weak fallback)"
        inits = {t.name: weights.info(t) for t in model.graph.initializer}  # dtype/ndim only: no reads
        probe = sorted({t for n in model.graph.node if n.op_type in _PROBE for t in [*n.input, *n.output]
                        if t and t not in inits})
        first = next(iterate_tensors(model, probe, cal.take(data, 1)), None)
        if first is None:
            raise BadInputError("quantize: the calibration data set is empty")
        is_float = {t for t, v in first.items() if v.dtype == np.float32}
        units, skipped = qp.build_units(model, kind, is_float, inits)
        isolated: list[dict] = []
        if kind == "cpu":
            units, isolated = qp.prune_isolated(model, units)
        exclude = self._exclusions(model)
        excluded = [u.node for u in units if any(re.search(rx, u.node) for rx in exclude)]
        units = [u for u in units if u.node not in excluded]
        if not p.per_channel:
            for u in units:
                u.weights = dict.fromkeys(u.weights)
        dyn_dropped: list[dict] = []
        if kind == "cpu" and mode == "int8":
            units, dyn_dropped = qp.split_dynamic(model, units, p.activations, inits)
        if p.smoothquant is not None:
            model, n_smooth = qs.smoothquant(model, units, list(cal.take(data, min(p.calib_samples, 32))), p.smoothquant)
            stats["smoothquant_activations"] = n_smooth
        fmt = self._format(kind, mode, stats)
        if kind != "tensorrt" and mode == "fp8":
            raise BadInputError("quantize: fp8 is a TensorRT format (--target tensorrt); ORT's CPU EP has no fp8 kernels")
        all_chosen, groups = qp.choose_tensors(model, [u for u in units if not u.dynamic], kind, is_float)
        axes = {model.graph.node[i].input[0]: (1 if u.op == "Conv" else -1) for i, u in _weighted(model, units)}
        consumers = cal.consumer_matrices(model, sorted(all_chosen)) if p.calibration == "auto" and mode == "int8" else {}
        dyn_x = {model.graph.node[i].input[0]: -1 for i, u in _weighted(model, units) if u.dynamic}
        channel_axes = (axes if p.bias_correction else dyn_x) if p.outlier_split else (axes if p.bias_correction else None)
        row_axes = {t: a for t, (a, _) in consumers.items()}

        def collect() -> tuple[dict[str, cal.Histogram], dict[str, np.ndarray], dict, dict]:
            rows_c: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            absmax_c: dict[str, np.ndarray] = {}
            h, m = cal.collect_histograms(model, sorted(all_chosen), data, limit=p.calib_samples, channel_axes=channel_axes,
                                          progress=ctx.ticker("calibration samples", _total(data, p.calib_samples)),
                                          row_axes=row_axes, rows_out=rows_c, absmax_out=absmax_c)
            return h, m, rows_c, absmax_c

        if data is ctx.calib:
            # the statistics depend on the model, the tensors, the samples and nothing else: search
            # trials that differ only in the calibration method (or percentile, or a later pass)
            # share one calibration run through the Context cache (all of it is read-only after it)
            key = ("quantize.histograms", fingerprint(model), tuple(sorted(all_chosen)), p.calib_samples,
                   tuple(sorted(channel_axes.items())) if channel_axes else None, tuple(sorted(row_axes.items())),
                   id(ctx.calib))
            hists, means, rows, absmax = ctx.cache.get_or_compute(key, collect)
        else:
            hists, means, rows, absmax = collect()
        if not p.bias_correction:
            means = {}
        if p.outlier_split:
            for i, u in _weighted(model, units):
                x = model.graph.node[i].input[0]
                if u.dynamic and x in absmax:
                    u.outliers = qp.outlier_channels(absmax[x])
            # rows, not a node-keyed mapping: the report renders lists of rows as scrolling tables
            stats["outlier_channels"] = [{"node": u.node, "channels": u.outliers} for u in units if u.outliers]
        act_q = self._act_params(hists, groups, fmt, rows, consumers, stats)

        bodies = bd.has_bodies(model)

        delta: dict[str, np.ndarray] = {}
        bias_in: dict[str, str] = {}
        if p.bias_correction and units and mode == "int8":
            delta = qs.weight_bias_shift(model, units, means, fmt.weight_qmax)
            bias_in = qs.bias_inputs(model, units)
            stats["bias_corrected"] = len(delta)

        body_units = list(body_q.units) if body_q is not None else []
        body_names = {u.node for u in body_units}
        body_rows: dict[frozenset[str], list[dict]] = {}

        def build(subset: list[qp.Unit], base: onnx.ModelProto = model) -> onnx.ModelProto:
            names = {u.node for u in subset}
            subset = [u for u in subset if u.node not in body_names]
            if delta:  # bias correction for the units quantized in this candidate only (a float unit keeps its bias)
                base = _copy(base)
                qp.apply_float_bias_delta(base, {k: v for k, v in delta.items() if k in names}, bias_in)
            static = [u for u in subset if not u.dynamic]
            chosen, _ = qp.choose_tensors(base, static, kind, is_float)
            dyn = [u for u in subset if u.dynamic]
            out = qp.insert_qdq(base, static, chosen, act_q, fmt, float_readers={u.node for u in dyn})
            qp.insert_dynamic(out, dyn, fmt)
            if body_q is not None:  # the body units of this candidate (the others stay float)
                only = frozenset(names & body_names)
                body_rows[only] = body_q.apply(out, only)
            if bodies:  # main-graph Q/DQ names (x__q) may repeat a body's for the same captured x: SSA
                uniquify_body_names(out.graph)
            return out

        if p.outlier_split and p.outlier_goal is not None and any(u.outliers for u in units):
            self._choose_splits(model, units, lambda s: build([*s, *body_units]), data, ctx, stats)
            if delta:  # the weight rows that now stay in the integer MatMul need their bias correction
                delta.clear()
                delta.update(qs.weight_bias_shift(model, units, means, fmt.weight_qmax))
        final = [*units, *body_units]
        stats["candidate_units"] = len(final)  # what the sensitivity ranking orders (the floor's back-off reads it)
        if p.min_fidelity or p.min_float_units or p.float_share:
            final = self._mixed_precision(model, final, build, data, kind, ctx, stats)
        body_final = [u for u in final if u.node in body_names]
        final = [u for u in final if u.node not in body_names]
        qmodel = build([*final, *body_final])
        slow: dict[str, str] = {}
        if kind == "cpu" and mode == "int8" and p.speed_check and final and ctx.target.kind == "cpu":
            timer = timing.timer_for(ctx, ctx.target)
            if timer is None:
                stats["speed_check"] = f"off ({timing.NO_SPEED_CHECK_ENV} is set)"
            else:
                steps = qspeed.ladder(final, qspeed.unit_macs(model, final, first, inits))
                step, cand, rows = qspeed.fastest(source, steps, lambda s: build([*s, *body_final]), qspeed.sample_feed(data), timer,
                                                  lambda d, t: ctx.tick("speed check (int8 vs fp32)", d, t))
                stats["speed"] = rows
                if step is None:
                    best = min((r for r in rows if not r["step"].endswith("(confirmation)")), key=lambda r: r["ratio"])
                    again = [r for r in rows if r["step"].endswith("(confirmation)")]
                    note = (f", {again[0]['ratio']:.2f} ({again[0]['ci95'][0]:.2f}-{again[0]['ci95'][1]:.2f}) when "
                            f"timed again" if again else "")
                    stats["skipped"] = skipped + [{"node": "*", "reason": f"int8 not measurably faster than fp32 on this target "
                                                   f"(ratio {best['ratio']:.2f}, 95 % interval {best['ci95'][0]:.2f}-"
                                                   f"{best['ci95'][1]:.2f}{note}, best of {len(steps)} candidates; a win "
                                                   f"needs the interval wholly below 1, twice)"}]
                    stats["quantized_units"] = 0
                    return PassResult(source, False, stats)
                if step is not steps[0]:
                    keep = {u.node for u in step.units}
                    got = rows[[st.name for st in steps].index(step.name)]["ratio"]
                    slow = {u.node: f"integer kernel measured slower: left float by the speed check ('{step.name}': "
                            f"int8/fp32 {got:.2f}, with every unit {rows[0]['ratio']:.2f})" for u in final if u.node not in keep}
                    final, qmodel = step.units, cand
        if kind == "cpu" and mode == "int8" and p.quantize_embeddings:
            emb_rows, emb_skipped = quantize_gather_tables(qmodel, self._exclusions(qmodel))
            layers_extra, skipped = emb_rows, skipped + emb_skipped
        else:
            layers_extra = []
        drop_unused_initializers(qmodel.graph)
        prec = "fp8" if mode == "fp8" else "int8"
        layers = [{"node": u.node, "op": u.op, "precision": prec + (" dynamic" if u.dynamic else ""),
                   "weights": ("per-channel" if p.per_channel else "per-tensor") if u.weights else ""} for u in units]
        layers += [{"node": n, "op": "", "precision": "float", "weights": "", "reason": "excluded"} for n in excluded]
        kept_early = stats.get("kept_float_reasons", {})
        layers += [{"node": u.node, "op": u.op, "precision": "float", "weights": "", "body": True}
                   for u in body_units if u.node in kept_early]  # body units the ranking kept float (the rest: stats["bodies"])
        layers += layers_extra
        kept = stats.pop("kept_float_reasons", {})  # the reasons live in the layer rows
        for row in layers:
            if row["node"] in kept:
                row.update(precision="float", reason=kept[row["node"]])
            elif row["node"] in slow:
                row.update(precision="float", reason=slow[row["node"]])
        n_kept = sum(1 for u in [*units, *body_units] if u.node in kept)
        # every unit that stays float, by reason: the count a reader compares with quantized_units
        reasons = {"sensitive (fidelity goal)": n_kept, "excluded": len(excluded),
                   "integer kernel measured slower than float (speed check)": len(slow),
                   "isolated (no integer neighbour: Q/DQ would only add rounding)": len(isolated),
                   f"activations={p.activations}: no integer neighbour once MatMuls run dynamic": len(dyn_dropped)}
        stats["float_units"] = {k: v for k, v in reasons.items() if v}
        stats["left_float"] = sum(reasons.values())
        if body_q is not None:
            stats["bodies"] = body_rows[frozenset(u.node for u in body_final)]
            stats["body_quantized_units"] = len(body_final)
        stats.update(quantized_units=len(final), quantized_tensors=len(all_chosen), excluded=excluded, layers=layers,
                     isolated=isolated + dyn_dropped, skipped=skipped, calibration=p.calibration, activations=p.activations,
                     dynamic_units=sum(1 for u in final if u.dynamic),
                     activation_type=TensorProto.DataType.Name(fmt.act_type))
        if kind == "cpu":
            kern = count_integer_kernels(qmodel, ctx.target.threads or 1)
            stats["integer_kernels"] = sum(kern.values())
            stats["integer_kernels_by_op"] = kern
        return PassResult(qmodel, True, stats)

    def _exclusions(self, model: onnx.ModelProto) -> list[str]:
        """One list of node-name regexes for the three ways to keep nodes float: `exclude` (regexes),
        `nodes_to_exclude` (exact names) and `op_types_to_exclude` (op types), the last two as
        anchored literal patterns, so every consumer (units, int4, embeddings) applies all three."""
        p: QuantizeParams = self.params
        names = set(p.nodes_to_exclude)
        if p.op_types_to_exclude:
            ops = set(p.op_types_to_exclude)
            names.update(n.name for n in model.graph.node if n.op_type in ops and n.name)
        return [*p.exclude, *(f"^{re.escape(n)}$" for n in sorted(names))]

    def _act_params(self, hists: dict[str, cal.Histogram], groups: dict[str, str], fmt: qp.Format,
                    rows: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                    consumers: dict[str, tuple[int, list[np.ndarray | None]]] | None = None,
                    stats: dict | None = None) -> dict[str, qp.ActQ]:
        """Scale and zero point per tensor (one range per shared-scale group). calibration="auto"
        picks each tensor's method by the error at its consumers (calibration.choose_range) where
        rows of it were kept (tensors read by a weighted op), else percentile (the measured CNN default); the picks are counted in stats["calibration_choices"]."""
        p: QuantizeParams = self.params
        bits = 8
        ranges: dict[str, tuple[float, float]] = {}
        choices: dict[str, int] = {}
        picked: dict[str, str] = {}
        for t, h in hists.items():
            method = p.calibration
            if method == "auto":
                if rows and consumers and t in rows and t in consumers and h.max >= h.min:
                    method, ranges[t], _ = cal.choose_range(h, rows[t], consumers[t][1], symmetric=fmt.act_symmetric,
                                                            percentile=p.percentile)
                    choices[method] = choices.get(method, 0) + 1
                    picked[t] = method
                    continue
                method = "percentile"
                choices["percentile (no weighted consumer)"] = choices.get("percentile (no weighted consumer)", 0) + 1
            ranges[t] = cal.compute_range(h, method, symmetric=fmt.act_symmetric, percentile=p.percentile, bits=bits)
        if stats is not None and p.calibration == "auto":
            stats["calibration_choices"] = dict(sorted(choices.items()))
            stats["calibration_picks"] = [{"tensor": t, "method": m, "range": [round(float(ranges[t][0]), 6),
                                                                               round(float(ranges[t][1]), 6)]}
                                          for t, m in picked.items()]
        merged: dict[str, tuple[float, float]] = {}
        for t, (lo, hi) in ranges.items():
            g = groups.get(t, t)
            a, b = merged.get(g, (lo, hi))
            merged[g] = (min(a, lo), max(b, hi))
        out = {}
        for t in ranges:
            lo, hi = merged[groups.get(t, t)]
            if fmt.act_type == TensorProto.FLOAT8E4M3FN:
                out[t] = qp.ActQ(max(abs(lo), abs(hi)) / 448.0 or 1.0, 0.0, fmt.act_type)
            elif fmt.act_symmetric:
                q = cal.symmetric_qparams(lo, hi)
                out[t] = qp.ActQ(q.scale, 0, fmt.act_type)
            else:
                q = cal.asymmetric_qparams(lo, hi)
                out[t] = qp.ActQ(q.scale, q.zero_point, fmt.act_type)
        return out

    def _choose_splits(self, model, units, build, data, ctx, stats) -> None:
        """Keep the outlier splits (u.outliers) of the activations where they buy the most fidelity
        per added op, until the model-level estimate meets the goal (sensitivity.choose_splits); the
        others run as plain dynamic units. Measured with the real integer kernels on calibration rows."""
        p: QuantizeParams = self.params
        goal, metric = p.outlier_goal, "pearson"
        if p.min_fidelity:
            g = qs.parse_min_fidelity(p.min_fidelity)
            if g.metric in ("pearson", "cosine") and g.value > goal:
                goal, metric = g.value, g.metric
        by_name = {n.name: n for n in model.graph.node}
        full = {u.node: list(u.outliers) for u in units if u.outliers}
        groups: dict[str, list[qp.Unit]] = {}
        for u in units:
            if u.outliers:
                groups.setdefault(by_name[u.node].input[0], []).append(u)
        # ops per split activation: Mul (inliers) + Gather (outliers), then per reader a float product + Add
        costs = {x: 2 + 2 * len(us) for x, us in groups.items()}
        target = ctx.target if ctx.target.kind == "cpu" else Target(kind="cpu", opt_level="all")
        feeds = list(cal.take(data, 8))
        ref = qs.run_outputs(model, feeds, target)
        seen: dict[frozenset[str], float] = {}

        def score(keys: frozenset[str]) -> float:
            if keys not in seen:
                for x, us in groups.items():
                    for u in us:
                        u.outliers = full[u.node] if x in keys else []
                ctx.tick("outlier split (fidelity per added op)", len(seen) + 1, 2 * len(groups) + 1)
                seen[keys] = qs.worst_output_fidelity(ref, qs.run_outputs(build(units), feeds, target), metric)
            return seen[keys]

        chosen, rows = qs.choose_splits(score, costs, goal)
        for x, us in groups.items():
            for u in us:
                u.outliers = full[u.node] if x in chosen else []
        stats["outlier_split"] = {"goal": f"{metric}={goal:g}", "fidelity_none": round(seen[frozenset()], 6),
                                  "fidelity": round(seen.get(chosen, seen[frozenset()]), 6), "trials": len(seen),
                                  "ops_added": sum(costs[x] for x in chosen), "ops_all": sum(costs.values())}
        stats["outlier_split_rows"] = rows
        stats["outlier_channels"] = [{"node": u.node, "channels": u.outliers} for u in units if u.outliers]

    def _ranking_params(self) -> tuple:
        """The parameters a unit's quantized form depends on (everything but what only decides how
        many units stay float, whether the result is timed, and the embedding tables done after)."""
        skip = {"min_fidelity", "min_float_units", "float_share", "speed_check", "quantize_embeddings"}
        return tuple((k, repr(v)) for k, v in sorted(dataclasses.asdict(self.params).items()) if k not in skip)

    def _mixed_precision(self, model, units, build, data, kind, ctx, stats) -> list[qp.Unit]:
        """Rank units by the error each causes alone; keep the worst float until the goal holds.

        CPU: measured with the real integer kernels (the session ORT will run). Other targets are
        measured as the QDQ simulation on the CPU EP (no fusion), the numerics TensorRT reproduces.
        """
        p: QuantizeParams = self.params
        # no goal, only a count to keep float (the back-off's): the count alone decides
        goal = qs.parse_min_fidelity(p.min_fidelity) if p.min_fidelity else qs.FidelityTarget("cosine", 0.0)
        target = ctx.target if kind == ctx.target.kind == "cpu" else Target(kind="cpu", opt_level="all" if kind == "cpu" else "basic")
        feeds = list(cal.take(data, 16))
        ref = qs.run_outputs(model, feeds, target)
        done = [0]

        def one_unit(s: list[qp.Unit]) -> onnx.ModelProto:  # one model per unit: say how far it got
            done[0] += 1
            ctx.tick("sensitivity (one unit quantized at a time)", done[0], len(units))
            return build(s, model)

        def ranking() -> list[tuple[str, float]]:
            return [(u.node, e) for u, e in qs.layer_sensitivity(one_unit, units, feeds[:4], ref[:4], target)]

        if data is ctx.calib:
            # the ranking depends on the model, its units, how they are quantized and the samples, not
            # on the goal or the count kept float: search trials that differ only there (or in a
            # later pass) rank once (PP-OCRv4 rec: 56 builds and runs per trial before)
            # (a unit's outlier split is chosen against the goal, so the units' splits are in the key)
            key = ("quantize.sensitivity", fingerprint(model),
                   tuple((u.node, u.dynamic, tuple(u.outliers or ())) for u in units), self._ranking_params(),
                   repr(target), kind, id(ctx.calib))
            node_err = ctx.cache.get_or_compute(key, ranking)
        else:
            node_err = ranking()
        err = dict(node_err)
        by_node = {u.node: u for u in units}
        sens = [(by_node[n], e) for n, e in node_err]
        ranked = [u for u, _ in sorted(sens, key=lambda r: -r[1])]
        floor_k = max(p.min_float_units, math.ceil(p.float_share * len(units) - 1e-9))
        k, fid, tried = qs.keep_float_until(lambda s: build(s, model), ranked, feeds, ref, goal, target,
                                            at_least=floor_k)
        kept = {u.node for u in ranked[:k]}
        # the reason the report and the summary show: the fidelity this layer alone costs
        at_least = f", at least {floor_k} float" if floor_k else ""
        stats["kept_float_reasons"] = {u.node: f"sensitive: output cosine {1 - err[u.node]:.4f} with only this layer int8 "
                                       f"(goal {goal.metric}={goal.value:g}{at_least}, reached {fid:.4f})" for u in ranked[:k]}
        stats["layer_table"] = [{"node": u.node, "op": u.op, "sensitivity": round(e, 6), "float": u.node in kept}
                                for u, e in sorted(sens, key=lambda r: -r[1])]
        stats.update(kept_float=sorted(kept), fidelity={goal.metric: round(fid, 6)}, fidelity_trials=tried)
        if fid < goal.value:
            raise AccuracyGateError(f"quantize: {goal.metric}={fid:.4f} < {goal.value} even with every unit float")
        return ranked[k:]


def _fp16_body(v: bd.View) -> tuple[onnx.ModelProto | None, dict]:
    """fp16 inside one body: its inputs and outputs (and the outer tensors it reads) stay fp32."""
    out, st = convert_fp16(v.model, keep_io_fp32=True)
    return (out if st["fp16_nodes"] else None), {"fp16_nodes": st["fp16_nodes"], "casts": st["casts"]}


def _int4_body(v: bd.View, block: int, exclude: list[str]) -> tuple[onnx.ModelProto | None, dict]:
    out, rows, skipped = qp.int4_weight_only(v.model, block, exclude)
    return (out if rows else None), {"quantized": len(rows), "layers": rows, "skipped": skipped,
                                      **({} if rows else {"reason": "no MatMul/Gemm with a constant 2-D weight"})}


def _weighted(model: onnx.ModelProto, units: list[qp.Unit]) -> list[tuple[int, qp.Unit]]:
    """(node index, unit) of weighted units whose first input is a quantized activation."""
    pos = {n.name: i for i, n in enumerate(model.graph.node)}
    return [(pos[u.node], u) for u in units if u.weight_out_axis is not None and model.graph.node[pos[u.node]].input[0] in u.acts]


def _total(data: Any, limit: int) -> int:
    """How many samples a loop over `data` capped at `limit` sees (for the progress bar)."""
    return min(limit, len(data)) if hasattr(data, "__len__") else limit


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m
