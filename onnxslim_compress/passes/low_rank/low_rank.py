"""Low-rank factorization of Gemm, MatMul and Conv weights (SVD, TRP energy rule, ALDS, whitened SVD).

A weight W (out m x in n) becomes Dec @ Enc, two thinner ops, which saves work only when the rank r
is below m*n/(m+n). Ranks come from a rank fraction, the energy rule of TRP, or ALDS's global
allocation (minimize the worst relative error under a size budget). With calibration data the SVD is
whitened by the input Gram matrix (im2col patches for Conv), so the dropped directions are the ones
the data barely excites, the reported error is the output error, and the energy rule keeps a share
of the output energy rather than of the weight energy. Formulas: decompose.py.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx

from onnxslim_compress.errors import BadInputError
from onnxslim_compress.graph import weights
from onnxslim_compress.graph.index import (
    Constants,
    UniqueNames,
    conv_pads,
    drop_unused_initializers,
    patches,
    used_names,
)
from onnxslim_compress.graph.io import main_opset
from onnxslim_compress.graph.shapes import infer_shapes
from onnxslim_compress.passes import bodies as bd
from onnxslim_compress.passes.base import Flag, Pass, PassResult, Pinned, Range, param
from onnxslim_compress.passes.context import Context, fingerprint
from onnxslim_compress.passes.low_rank import decompose as lm
from onnxslim_compress.runtime.activations import Moments, accumulate
from onnxslim_compress.runtime.session import shapes_from_run

#: weight element types the SVD can round-trip (bfloat16/int weights are left alone)
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
#: largest ALDS group count tried (more groups = more SVDs for rarely useful, very thin groups)
_MAX_K = 16
#: calibration rows kept per sample and layer (a seeded subsample bounds the Gram cost on big maps)
_MAX_ROWS = 8192
#: widest layer input whitened with a dense float64 Gram (8192: 512 MiB); wider ones get the plain SVD
MAX_GRAM_FEATURES = 8192


def _mode_value(text: str) -> dict[str, Any]:
    """`--lowrank energy=0.9` -> {mode: energy, value: 0.9} (the mode itself is checked by the params)."""
    mode, sep, value = text.partition("=")
    try:
        v = float(value) if sep else None
    except ValueError:
        v = None
    if v is None:
        raise BadInputError(f"--lowrank {text!r}: expected energy=0.9, ratio=0.5 or alds=0.7")
    return {"mode": mode, "value": v}


@dataclass
class LowRankParams:
    """Layers under min_params weights or whose node name matches an `exclude` regex are skipped,
    with the reason in stats."""

    mode: Literal["ratio", "energy", "alds"] = param(
        "energy", help="how `value` picks ranks: ratio = rank fraction, energy = share of sigma^2 kept (TRP), "
        "alds = share of the factorizable params (or MACs, alds_measure) kept",
        flag=Flag("--lowrank", metavar="MODE=V", enables=True, help="energy=0.9 | ratio=0.5 | alds=0.7 (sets mode and value)",
                  parse=_mode_value),
        search=Pinned("energy"),
    )
    #: keeping less than 80 % of the spectral energy rarely survives a 1 % budget without retraining
    value: float = param(0.9, help="the rank fraction / energy share / ALDS budget, in (0, 1]",
                         search=Range(0.8, 0.995, step=0.005, gentle="high"))
    alds_measure: Literal["params", "macs"] = param("params", help="what the ALDS budget counts")
    conv_form: Literal["channel", "spatial", "auto"] = param("channel", help="how a Conv weight is flattened for the SVD")
    round_to: int = param(1, help="keep ranks a multiple of N", flag="--round-to")
    data_aware: bool | None = param(None, help="whiten the SVD by the input Gram matrix; None = on when calibration data is given")
    calib_samples: int = param(64, help="calibration samples for the input Gram matrices")
    ridge: float = param(1e-6, help="ridge of the whitening, relative to mean(diag C)")
    alds_seeds: int = param(3, help="random restarts of the ALDS allocation")
    min_params: int = param(4096, help="layers with fewer weights are skipped")
    exclude: list[str] = param(default_factory=list, help="regexes on node names: matching layers are skipped",
                               flag="--exclude")

    def __post_init__(self):
        if not 0.0 < self.value <= 1.0:
            raise ValueError(f"low_rank: value must be in (0, 1] for mode {self.mode}, got {self.value}")
        for key in ("round_to", "calib_samples", "alds_seeds"):
            if getattr(self, key) < 1:
                raise ValueError(f"low_rank: {key} must be >= 1")
        if self.ridge < 0 or self.min_params < 0:
            raise ValueError("low_rank: ridge and min_params must be >= 0")
        for rx in self.exclude:
            try:
                re.compile(rx)
            except re.error as e:
                raise ValueError(f"low_rank: exclude pattern {rx!r} is not a regex ({e})") from None


def find_layers(model: onnx.ModelProto, shapes: dict, p: LowRankParams) -> tuple[list[lm.Layer], list[dict]]:
    """Gemm/MatMul with a constant 2-D weight and group=1 Conv; everything else is skipped with a reason."""
    consts, layers, skipped = Constants(model.graph).tensors, [], []
    for node in model.graph.node:
        if node.op_type not in ("Gemm", "MatMul", "Conv"):
            continue
        name = node.name or node.output[0]

        def skip(reason: str, name: str = name) -> None:
            skipped.append({"node": name, "reason": reason})

        if any(re.search(rx, name) for rx in p.exclude):
            skip("excluded by pattern")
            continue
        a = lm.node_attrs(node)
        if node.input[0] in consts:
            skip("the data operand is a constant (weight on the left)")
            continue
        wname = node.input[1]
        if wname not in consts:
            skip("weight is not a constant")
            continue
        t = consts[wname]
        if t.data_type not in _FLOAT_TYPES:
            skip(f"weight type {onnx.TensorProto.DataType.Name(t.data_type)} not supported")
            continue
        w = _WeightShape(t) if weights.is_offloaded(t) else weights.read(t)
        out_shape, in_shape = shapes.get(node.output[0]), shapes.get(node.input[0])
        if node.op_type == "Conv":
            if a.get("group", 1) != 1:
                skip(f"grouped Conv (group={a['group']})")
                continue
            nd = w.ndim - 2
            spec = ("patch", tuple(w.shape[2:]), tuple(a.get("strides", [1] * nd)), tuple(a.get("dilations", [1] * nd)),
                    tuple(a.get("pads", [0] * 2 * nd)), a.get("auto_pad", b"NOTSET").decode())
            rows = int(np.prod([out_shape[0]] + out_shape[2:])) if out_shape else None
            fold = _folder(t, lambda a: a.reshape(a.shape[0], -1), w)
            layer = lm.Layer(node, fold, w.dtype, node.input[0], spec, rows, len(in_shape) if in_shape else None,
                             in_shape[2:] if in_shape else None, (w.shape[0], int(np.prod(w.shape[1:]))))
        else:
            if w.ndim != 2:
                skip(f"weight has rank {w.ndim}, not 2")
                continue
            trans_a, trans_b = a.get("transA", 0), a.get("transB", 0)
            fold = _folder(t, (lambda a: a) if trans_b else (lambda a: a.T), w)  # (out, in)
            axis = (0 if trans_a else 1) if node.op_type == "Gemm" else -1
            rows = int(np.prod(out_shape[:-1])) if out_shape else None
            layer = lm.Layer(node, fold, w.dtype, node.input[0], ("axis", axis), rows,
                             len(in_shape) if in_shape else None, None,
                             (w.shape[0], w.shape[1]) if trans_b else (w.shape[1], w.shape[0]))
        if layer.size < p.min_params:
            skip(f"small layer: {layer.size} params < min_params={p.min_params}")
            continue
        layers.append(layer)
    return layers, skipped


class _WeightShape:
    """Shape and dtype of an offloaded weight, without reading it."""

    def __init__(self, t: onnx.TensorProto):
        self.shape = tuple(int(d) for d in t.dims)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))


def _folder(t: onnx.TensorProto, fold, w):
    """The folded float64 weight, or (offloaded: `w` is a _WeightShape) a function that reads and
    folds it on demand."""
    if isinstance(w, _WeightShape):
        return lambda: fold(weights.read(t)).astype(np.float64)
    return fold(w).astype(np.float64)


def collect_grams(model: onnx.ModelProto, layers: list[lm.Layer], ctx: Any, p: LowRankParams) -> dict[tuple, np.ndarray]:
    """Stream the Gram matrix of every target layer's input rows (im2col patches for Conv)."""
    requests = sorted({(L.act, L.spec) for L in layers}, key=repr)
    rng = np.random.default_rng(ctx.seed)

    def compute() -> dict[tuple, np.ndarray]:
        moments = {r: Moments(axis=-1) for r in requests}
        pending: dict[tuple, list[np.ndarray]] = {r: [] for r in requests}

        def flush(r: tuple) -> None:  # one big X^T X per ~_MAX_ROWS rows: BLAS is slow on thin slabs
            if pending[r]:
                moments[r].update(np.concatenate(pending[r]))
                pending[r] = []

        def update(values: dict[str, np.ndarray]) -> None:
            for act, spec in requests:
                x = values[act]
                if spec[0] == "axis":
                    rows = np.moveaxis(x, spec[1], -1).reshape(-1, x.shape[spec[1]])
                else:
                    _, kernel, strides, dil, pads, auto = spec
                    pads = conv_pads(list(x.shape[2:]), list(kernel), list(strides), list(dil), list(pads), auto)
                    rows = patches(x, list(kernel), list(strides), list(dil), pads)
                if rows.shape[0] > _MAX_ROWS:
                    rows = rows[rng.choice(rows.shape[0], _MAX_ROWS, replace=False)]
                pending[(act, spec)].append(rows)
                if sum(len(b) for b in pending[(act, spec)]) >= _MAX_ROWS:
                    flush((act, spec))

        accumulate(model, sorted({r[0] for r in requests}), ctx.calib, update, limit=p.calib_samples,
                   progress=ctx.ticker("input Gram samples", p.calib_samples))
        for r in requests:
            flush(r)
        return {r: m.xtx for r, m in moments.items() if m.xtx is not None}

    key = (fingerprint(model), "low_rank.gram", tuple(requests), p.calib_samples, id(ctx.calib), ctx.seed)
    return ctx.cache.get_or_compute(key, compute)


class LowRank(Pass):
    """Replace large Gemm/MatMul/Conv weights by two thinner factors (see the module docstring)."""

    name = "low_rank"
    Params = LowRankParams
    #: edits the graph it is given; Pass.__call__ hands it a copy unless the caller (Pipeline) owns one
    in_place = True

    def run(self, model: onnx.ModelProto, ctx: Any) -> PassResult:
        p, opset = self.params, main_opset(model)
        shapes, bound, _ = infer_shapes(model, ctx.input_shapes, runner=shapes_from_run)
        layers, skipped = find_layers(model, shapes, p)
        data_aware = p.data_aware if p.data_aware is not None else ctx.calib is not None
        if data_aware and ctx.calib is None:
            raise BadInputError("low_rank: data_aware=true needs calibration data (--calib)")
        narrow = [L for L in layers if L.shape[1] <= MAX_GRAM_FEATURES]
        not_whitened = [
            {"node": L.name, "reason": f"{L.shape[1]} inputs: a dense Gram would take "
             f"{L.shape[1] ** 2 * 8 / 2**30:.1f} GiB (limit {MAX_GRAM_FEATURES} features); plain SVD used"}
            for L in layers if data_aware and L.shape[1] > MAX_GRAM_FEATURES
        ]
        grams = collect_grams(model, narrow, ctx, p) if data_aware and narrow else {}
        measure = p.alds_measure if p.mode == "alds" else "params"
        cands = []  # (layer, [(key, decomposition, cost, allowed ranks, errors)], full size, gram)
        for i, L in enumerate(layers):
            ctx.tick("SVD layers", i, len(layers))
            gram = grams.get((L.act, L.spec))
            full = L.size if measure == "params" else (None if L.rows is None else L.size * L.rows)
            opts = []
            for key, d in lm.layer_options(L, p.mode == "alds", p.conv_form, gram, p.ridge, _MAX_K,
                                           spectra=p.mode != "ratio"):
                cost = lm.option_cost(L, key, measure)
                errs = d.spectral_errors() if p.mode == "alds" else d.rel_errors()
                ranks = np.unique([lm.round_rank(j, p.round_to, d.max_rank) for j in range(1, d.max_rank + 1)])
                if cost is not None:
                    opts.append((key, d, cost, ranks, errs[ranks]))
            if full is None or not opts:
                skipped.append({"node": L.name, "reason": "MACs unknown (no static shape)"})
                continue
            cands.append((L, opts, float(full), gram))
        decisions, alds_info = self._decide(cands, p, ctx.seed)
        names, replace, removed, rows = UniqueNames(model.graph), {}, set(), []
        ws = weights.Workspace.of(model)
        for (L, opts, full, gram), (oi, j) in zip(cands, decisions, strict=True):
            key, d, cost = opts[oi][:3]
            m, n = L.shape
            if j is None:
                skipped.append({"node": L.name, "reason": f"ALDS keeps it: no saving at error level {alds_info['max_error']:.4f}"})
                continue
            if j * cost >= full:
                form = "" if key == ("channel", 1) else f" (form {key[0]}, k={key[1]})"
                skipped.append({"node": L.name, "reason": f"no saving: rank {j * key[1]} >= m*n/(m+n) = {full / cost:.1f}{form}"})
                continue
            w = L.w
            if L.lazy:  # a lightened decomposition: recompute this one option (one weight in memory)
                d = lm.option_decomposition(L, key, gram, p.ridge, w)
            replace[L.node.output[0]] = lm.emit(L, key, j, d, names, opset, ws)
            removed.add(L.node.input[1])
            dw = w - lm.approximation(L, key, d, j)
            params_after = j * lm.option_cost(L, key, "params")
            mc = lm.option_cost(L, key, "macs")
            rows.append({
                "node": L.name, "op": L.node.op_type, "form": key[0], "k": key[1], "rank": j * key[1],
                "shape": [m, n], "whitened": d.whitened,
                "weight_error": float(np.linalg.norm(dw) / max(np.linalg.norm(w), 1e-30)),
                "output_error": None if gram is None else lm.output_error(dw, w, gram),
                "params_before": int(L.size), "params_after": int(params_after),
                "macs_before": None if L.rows is None else int(L.size * L.rows),
                "macs_after": None if mc is None else int(j * mc),
            })
        stats = self._stats(rows, skipped, cands, data_aware, alds_info)
        stats["not_whitened"] = not_whitened
        stats["macs_at_assumed_dims"] = bound.assumed  # dynamic dims counted as 1 unless the user gave shapes
        if replace:
            rewrite(model, replace, removed)
        body_changed = False
        if bd.has_bodies(model):
            stats["bodies"] = self._bodies(model, ctx)
            body_changed = any(r["changed"] for r in stats["bodies"])
        return PassResult(model, bool(replace) or body_changed, stats)

    def _bodies(self, model: onnx.ModelProto, ctx: Any) -> list[dict]:
        """In place: factorize Gemm/MatMul/Conv inside If/Loop/Scan bodies (passes/bodies.py).

        Plain SVD there: whitening needs the input Gram of each layer over the calibration data,
        which the body rows of one run do not give per layer yet.
        """
        inner = LowRank(dataclasses.replace(self.params, data_aware=False))
        body_ctx = Context(target=ctx.target, seed=ctx.seed)

        def one(v: bd.View) -> tuple[onnx.ModelProto | None, dict]:
            res = inner.run(v.model, body_ctx)
            st = {k: res.stats[k] for k in ("factorized", "candidates", "params_before", "params_after", "layers", "skipped")}
            st["data_aware"] = False
            if not res.modified:
                st["reason"] = "no layer worth factorizing" if not st["skipped"] else st["skipped"][0]["reason"]
            return (res.model if res.modified else None), st

        return bd.apply_to_bodies(model, one)

    @staticmethod
    def _decide(cands: list, p: LowRankParams, seed: int) -> tuple[list[tuple[int, int | None]], dict | None]:
        """(option index, per-group rank) per candidate layer, by the rank rule of the mode."""
        if p.mode == "alds":
            alayers = [lm.AldsLayer(full, [lm.Option(o[0], o[2], o[3], o[4]) for o in opts]) for _, opts, full, _ in cands]
            budget = p.value * sum(c[2] for c in cands)
            res = lm.alds(alayers, budget, p.alds_seeds, seed)
            info = {"budget": budget, "size": res.size, "max_error": res.eps, "feasible": res.feasible,
                    "measure": p.alds_measure}
            return res.choice, info
        out = []
        for _, opts, _, _ in cands:
            picks = []
            for oi, (_, d, cost, _, _) in enumerate(opts):
                j = (lm.ratio_rank(d.max_rank, p.value) if p.mode == "ratio"
                     else lm.energy_rank(d.rel_errors(), p.value))
                j = lm.round_rank(j, p.round_to, d.max_rank)
                picks.append((j * cost, oi, j))
            _, oi, j = min(picks)
            out.append((oi, j))
        return out, None

    @staticmethod
    def _stats(rows: list[dict], skipped: list[dict], cands: list, data_aware: bool, alds_info: dict | None) -> dict:
        done = {r["node"]: r for r in rows}
        total: dict[str, Any] = {"params_before": 0, "params_after": 0, "macs_before": 0, "macs_after": 0}
        for L, *_ in cands:
            r = done.get(L.name)
            total["params_before"] += L.size
            total["params_after"] += r["params_after"] if r else L.size
            macs = None if L.rows is None else L.size * L.rows
            for key, val in (("macs_before", macs), ("macs_after", r["macs_after"] if r else macs)):
                total[key] = None if val is None or total[key] is None else total[key] + val
        return {"factorized": len(rows), "candidates": len(cands), "data_aware": data_aware, **total,
                "alds": alds_info, "layers": rows, "skipped": skipped}


def rewrite(model: onnx.ModelProto, replace: dict[str, tuple[list, list]], removed: set[str]) -> None:
    """In place: swap each node (keyed by its first output) for its new nodes, then drop dead weights."""
    new_nodes = []
    for node in model.graph.node:
        if node.output and node.output[0] in replace and node.op_type in ("Gemm", "MatMul", "Conv"):
            new_nodes.extend(replace[node.output[0]][0])
            model.graph.initializer.extend(replace[node.output[0]][1])
        else:
            new_nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    _drop_unused(model, removed)


def _drop_unused(model: onnx.ModelProto, names: set[str]) -> None:
    """Remove replaced weights (initializers or Constant nodes) that nothing reads any more."""
    gone = names - used_names(model.graph)
    drop_unused_initializers(model.graph, only=gone)
    nodes = [n for n in model.graph.node if not (n.op_type == "Constant" and n.output[0] in gone)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
