"""Training-free recovery after channel pruning: least-squares refit of the consumers.

A consumer whose input channels were removed computes a different function; refitting its weights
on the kept inputs against the ORIGINAL model's outputs (ThiNet / He et al. 2017) moves it back,
and an intercept column in the fit is the bias compensation for the removed channels' mean
contribution. X comes from the pruned model and Y from the original, so error that built up in
earlier layers is absorbed too. Only Gram matrices (X^T X, X^T Y) are kept while streaming the
calibration data; conv inputs are unfolded at a random subset of output positions. Layers whose
unfolded width is too large for a dense solve get empirical bias correction only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx

from onnxslim_compress.graph import weights
from onnxslim_compress.graph.index import attr, conv_pads, patches
from onnxslim_compress.passes.prune.apply import kept_positions
from onnxslim_compress.passes.prune.groups import ChannelAnalysis
from onnxslim_compress.runtime.activations import iterate_tensors
from onnxslim_compress.runtime.metrics import error_tensors, pooled_fidelity
from onnxslim_compress.runtime.session import Target

#: widest unfolded input (C*kh*kw) solved densely; wider layers get bias correction only
MAX_FEATURES = 2304
#: output positions sampled per image and conv layer (enough rows for a well-posed fit)
POSITIONS = 256


@dataclass
class _Target:
    node: int
    kind: str  # conv | gemm | matmul
    x: str
    y: str
    kept_out: np.ndarray
    mode: str  # refit | bias
    bias_add: tuple[int, str] | None = None  # MatMul: following Add (node, constant name)
    gram: np.ndarray | None = None
    cross: np.ndarray | None = None
    #: the same statistics from every 4th sample, to pick the ridge per layer on unseen rows
    gram_v: np.ndarray | None = None
    cross_v: np.ndarray | None = None
    ridge_used: float = 0.0
    kept_in: np.ndarray | None = None
    x_sum: np.ndarray | None = None
    rows: int = 0
    rows_x: int = 0


def _unfold(n: onnx.NodeProto, x: np.ndarray, y: np.ndarray, w_shape: list[int], rng: np.random.Generator):
    """Rows of the conv's input patches (c, ky, kx order) at sampled output positions, with targets."""
    k = list(w_shape[2:])
    s = list(attr(n, "strides", [1, 1]))
    d = list(attr(n, "dilations", [1, 1]))
    pads = conv_pads(list(x.shape[2:]), k, s, d, list(attr(n, "pads", [])), attr(n, "auto_pad", b"NOTSET"))
    ho, wo = y.shape[2:]
    feats, targets = [], []
    for b in range(x.shape[0]):
        m = min(POSITIONS, ho * wo)
        pos = rng.choice(ho * wo, size=m, replace=False)
        feats.append(patches(x[b : b + 1], k, s, d, pads, positions=pos))
        targets.append(y[b][:, pos // wo, pos % wo].T)
    return np.concatenate(feats), np.concatenate(targets)


def _targets(an: ChannelAnalysis, pruned_model: onnx.ModelProto, pruned: np.ndarray) -> tuple[list[_Target], list[dict]]:
    v = an.view
    out: list[_Target] = []
    skipped: list[dict] = []
    inits = {t.name for t in pruned_model.graph.initializer}
    uses: dict[str, int] = {}
    for n in pruned_model.graph.node:
        for x in n.input:
            uses[x] = uses.get(x, 0) + 1
    for i in an.weight_nodes:
        n = v.nodes[i]
        x, w, y = n.input[0], n.input[1], n.output[0]
        if w not in v.init:
            continue
        rank_x = len(v.shape(x) or [])
        in_ax = rank_x - 1 if n.op_type == "MatMul" else 1
        if (x, in_ax) not in an.spaces or len(kept_positions(an, (x, in_ax), pruned)) == an.spaces[(x, in_ax)].size:
            continue
        name = n.name or f"#{i}"
        if uses.get(w, 0) > 1:
            skipped.append({"node": name, "reason": "shared weight"})
            continue
        out_ax = len(v.shape(y)) - 1 if n.op_type == "MatMul" else 1
        kept_out = kept_positions(an, (y, out_ax), pruned) if (y, out_ax) in an.spaces else np.arange(v.dim(y, out_ax))
        ws = list(v.shape(w))
        if n.op_type == "Conv":
            if attr(n, "group", 1) != 1 or len(ws) != 4:
                if ws[1] != 1:  # depthwise convs lose whole channels: nothing to refit there
                    skipped.append({"node": name, "reason": "grouped or non-2D conv"})
                continue
            feats = int(len(kept_positions(an, (w, 1), pruned)) * ws[2] * ws[3])
            kind = "conv"
        elif n.op_type == "Gemm":
            if attr(n, "transA", 0) or attr(n, "alpha", 1.0) != 1.0 or attr(n, "beta", 1.0) != 1.0:
                skipped.append({"node": name, "reason": "Gemm with transA/alpha/beta"})
                continue
            feats = len(kept_positions(an, (x, 1), pruned))
            kind = "gemm"
        elif n.op_type == "MatMul" and len(ws) == 2:
            feats = len(kept_positions(an, (x, in_ax), pruned))
            kind = "matmul"
        else:
            skipped.append({"node": name, "reason": f"{n.op_type} not refitted"})
            continue
        t = _Target(i, kind, x, y, kept_out, "refit" if feats <= MAX_FEATURES else "bias")
        t.kept_in = kept_positions(an, (x, in_ax), pruned)
        if kind == "matmul":
            cons = [c for c in pruned_model.graph.node if y in c.input]
            if len(cons) == 1 and cons[0].op_type == "Add":
                other = [z for z in cons[0].input if z != y]
                if other and other[0] in inits and uses.get(other[0], 0) == 1:
                    t.bias_add = (list(pruned_model.graph.node).index(cons[0]), other[0])
        out.append(t)
    return out, skipped


def _collect(
    an: ChannelAnalysis, targets: list[_Target], data: Iterable, limit: int, seed: int,
    x_model: onnx.ModelProto | None = None, progress: Callable[[int], None] | None = None,
) -> None:
    """Gram matrices of each layer's kept inputs against the ORIGINAL model's outputs.

    Without x_model the inputs come from the original model too (ThiNet): each layer is fitted to
    reproduce its original output from the original values of the channels it keeps, so one pass
    fits every layer consistently. With x_model (staged recovery) the inputs are what that partly
    recovered model really feeds the layer, which also absorbs error built up upstream; fitting
    all layers at once that way would over-compensate, hence the stages.
    """
    rng = np.random.default_rng(seed)
    v = an.view
    # one ORT thread: idle ORT workers spin and starve the numpy Gram updates running in between
    tgt = Target(kind="cpu", threads=1, opt_level="basic")
    if x_model is None:
        names = list(dict.fromkeys([t.x for t in targets] + [t.y for t in targets]))
        stream = iterate_tensors(an.model, names, data, limit=limit, target=tgt)
    else:
        # bias-only layers need the removed channels' means, which only the original has
        names_o = list(dict.fromkeys([t.y for t in targets] + [t.x for t in targets if t.mode != "refit"]))
        names_p = list(dict.fromkeys(t.x for t in targets))
        stream = (
            {**{k: vo[k] for k in names_o}, **{"__x__" + k: vp[k] for k in names_p}}
            for vo, vp in _paired(an.model, names_o, x_model, names_p, data, limit, tgt)
        )
    for k, vals in enumerate(stream):
        held = k % 4 == 3
        for t in targets:
            n = v.nodes[t.node]
            ax = 1 if t.kind != "matmul" else vals[t.y].ndim - 1
            if t.x in vals:  # original input: channel means for bias compensation
                xorig = vals[t.x].astype(np.float64)
                xax = 1 if t.kind != "matmul" else xorig.ndim - 1
                xrows = np.moveaxis(xorig, xax, -1).reshape(-1, xorig.shape[xax])
                if t.x_sum is None:
                    t.x_sum = np.zeros(xrows.shape[1])
                t.x_sum += xrows.sum(0)
                t.rows_x += xrows.shape[0]
            if t.mode != "refit":
                continue
            xo = vals[t.x if x_model is None else "__x__" + t.x].astype(np.float64)
            xax = 1 if t.kind != "matmul" else xo.ndim - 1
            yo = np.take(vals[t.y], t.kept_out, axis=ax).astype(np.float64)
            xk = np.take(xo, t.kept_in, axis=xax) if x_model is None else xo
            if t.kind == "conv":
                feats, want = _unfold(n, xk, yo, list(v.shape(n.input[1])), rng)
            else:
                feats = xk.reshape(-1, xk.shape[-1])
                want = np.moveaxis(yo, ax, -1).reshape(-1, yo.shape[ax])
            feats = np.concatenate([feats, np.ones((feats.shape[0], 1))], axis=1)
            if t.gram is None:
                t.gram = np.zeros((feats.shape[1], feats.shape[1]))
                t.cross = np.zeros((feats.shape[1], want.shape[1]))
                t.gram_v = np.zeros_like(t.gram)
                t.cross_v = np.zeros_like(t.cross)
            if held:
                t.gram_v += feats.T @ feats
                t.cross_v += feats.T @ want
            else:
                t.gram += feats.T @ feats
                t.cross += feats.T @ want
                t.rows += feats.shape[0]
        if progress is not None:
            progress(k + 1)


#: samples per chunk when the two models of staged recovery run one after the other
PAIR_CHUNK = 16


def _paired(model_a: onnx.ModelProto, names_a: list[str], model_b: onnx.ModelProto, names_b: list[str],
            data: Iterable, limit: int, tgt: Target):
    """(values of model_a, values of model_b) per sample.

    In memory both sessions run side by side. With offloaded weights (weights.py) each session maps
    the whole model, and two at once would cost the original plus the pruned model (1.7x its size,
    measured on a 2 GB MLP): there, per chunk of samples, model_a runs first and its values are kept,
    then its session is gone before model_b's starts."""
    if not weights.has_offloaded(model_a):
        yield from zip(iterate_tensors(model_a, names_a, data, limit=limit, target=tgt),
                       iterate_tensors(model_b, names_b, data, limit=limit, target=tgt), strict=False)
        return
    for start in range(0, limit, PAIR_CHUNK):
        window = _Window(data, start, min(start + PAIR_CHUNK, limit))
        first = list(iterate_tensors(model_a, names_a, window, target=tgt))
        if not first:
            return
        yield from zip(first, iterate_tensors(model_b, names_b, window, target=tgt), strict=False)
        if len(first) < PAIR_CHUNK:
            return


def _solve(gram: np.ndarray, cross: np.ndarray, ridge: float, intercept: bool,
           prior: np.ndarray | None = None) -> np.ndarray:
    """Ridge least squares, shrunk toward `prior` (the layer's pruned weights) rather than toward 0.

    A pruned FFN output dense keeps ~1400 inputs, and 28 calibration sentences of 32 tokens give
    ~700 fit rows: the plain fit is underdetermined, and shrinking toward 0 only trades overfitting
    for weights that are too small. Toward the pruned weights, a large ridge is the unrecovered
    layer again, so the held-out choice of the ridge (_solve_validated) can only end near the better
    of the two. The intercept is not penalized (its prior is irrelevant)."""
    f = gram.shape[0] - 1
    if not intercept:
        gram, cross = gram[:f, :f], cross[:f]
    lam = ridge * max(np.trace(gram[:f, :f]) / max(f, 1), 1e-12)
    reg = np.full(gram.shape[0], lam)
    if intercept:
        reg[-1] = 0.0
    a = gram + np.diag(reg)
    rhs = cross.copy()
    if prior is not None:
        rhs[:f] += lam * prior
    try:
        return np.linalg.solve(a, rhs)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(a, rhs, rcond=None)[0]


#: ridge factors tried per layer (times the `ridge` parameter), chosen on held-out rows; with the
#: fit shrunk toward the pruned weights the largest (10x the mean input energy at ridge 1e-3) is
#: close to no refit at all, the smallest close to the plain least-squares fit
RIDGE_FACTORS = (1.0, 10.0, 100.0, 1e3, 1e4)


def _solve_validated(t: _Target, ridge: float, intercept: bool,
                     prior: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Solve for each ridge in RIDGE_FACTORS * ridge; keep the lowest error on the held-out Gram.

    The output error ||Y - X W||^2 on held-out rows is tr(W^T G W) - 2 tr(W^T C) + const, so no
    held-out activations need to be kept, only their Gram matrices.
    """
    f = t.gram.shape[0] - 1
    gv, cv = (t.gram_v, t.cross_v) if intercept else (t.gram_v[:f, :f], t.cross_v[:f])
    best = None
    for r in ([ridge * k for k in RIDGE_FACTORS] if gv.any() else [ridge]):
        sol = _solve(t.gram, t.cross, r, intercept, prior)
        err = float(np.sum(sol * (gv @ sol)) - 2 * np.sum(sol * cv))
        if best is None or err < best[0]:
            best = (err, r)
    # the held-out rows only chose the ridge; the final fit uses every row
    return _solve(t.gram + t.gram_v, t.cross + t.cross_v, best[1], intercept, prior), best[1]


def _write(model: onnx.ModelProto, targets: list[_Target], an: ChannelAnalysis, ridge: float) -> int:
    g = model.graph
    by_name = {t.name: t for t in g.initializer}
    ws = weights.Workspace.of(model)

    def get(name: str) -> np.ndarray:
        return weights.read(by_name[name])

    def put(name: str, arr: np.ndarray, like: str | None = None) -> None:
        src = by_name.get(like or name)
        dt = onnx.helper.tensor_dtype_to_np_dtype(src.data_type) if src is not None else np.float32
        t = weights.new_tensor(np.asarray(arr).astype(dt), name, ws)
        if name in by_name:
            by_name[name].CopyFrom(t)
        else:
            g.initializer.append(t)
            by_name[name] = g.initializer[-1]

    done = 0
    for t in targets:
        n = g.node[t.node]
        w = n.input[1]
        bias_name = n.input[2] if len(n.input) > 2 and n.input[2] else None
        if t.kind == "matmul":
            bias_name = t.bias_add[1] if t.bias_add else None
        if t.mode == "refit" and t.gram is not None and t.rows:
            intercept = t.kind != "matmul" or bias_name is not None
            old = get(w)
            sol, t.ridge_used = _solve_validated(t, ridge, intercept, _as_features(t, n, old))
            f = t.gram.shape[0] - 1
            wmat, b = sol[:f], (sol[f] if sol.shape[0] > f else None)
            if t.kind == "conv":
                put(w, wmat.T.reshape(old.shape))
            elif t.kind == "gemm":
                put(w, wmat.T if attr(n, "transB", 0) else wmat)
            else:
                put(w, wmat)
            if b is not None:
                if t.kind == "matmul":  # the fit is on the MatMul output; the Add's constant takes the offset
                    old_b = get(bias_name)
                    put(bias_name, (old_b.reshape(-1) + b).reshape(old_b.shape))
                else:
                    _set_bias(n, w, bias_name, b, put, get, by_name)
            done += 1
        elif t.rows_x:
            if t.kind == "matmul" and bias_name is None:
                continue
            shift = _removed_contribution(an, t)
            cur = get(bias_name).reshape(-1).astype(np.float64) if bias_name else np.zeros_like(shift)
            if cur.size == 1 and shift.size > 1:
                cur = np.full_like(shift, cur.item())
            _set_bias(n, w, bias_name, cur + shift, put, get, by_name)
            done += 1
    return done


def _as_features(t: _Target, n: onnx.NodeProto, w: np.ndarray) -> np.ndarray:
    """The layer's current (pruned) weight in the fit's layout: one row per kept input feature
    (conv: c, ky, kx order), one column per kept output; the solve's prior."""
    w = w.astype(np.float64)
    if t.kind == "conv":
        return w.reshape(w.shape[0], -1).T
    if t.kind == "gemm":
        return w.T if attr(n, "transB", 0) else w
    return w


def _removed_contribution(an: ChannelAnalysis, t: _Target) -> np.ndarray:
    """W[:, removed] . E[x_removed] with the original weights (padding borders ignored)."""
    n = an.view.nodes[t.node]
    w = an.view.const(n.input[1]).astype(np.float64)
    mean = t.x_sum / t.rows_x
    removed = np.setdiff1d(np.arange(len(mean)), t.kept_in)
    if t.kind == "conv":
        wm = w[t.kept_out][:, removed].sum(axis=(2, 3))
    elif t.kind == "gemm":
        wm = (w.T if attr(n, "transB", 0) else w)[removed][:, t.kept_out].T
    else:
        wm = w[removed][:, t.kept_out].T
    return wm @ mean[removed]


def _set_bias(n, w, bias_name, b, put, get, by_name) -> None:
    """Write a bias vector, adding a bias input to the node when it had none."""
    if bias_name is None:
        bias_name = f"{w}__bias"
        while bias_name in by_name:
            bias_name += "_"
        put(bias_name, b, like=w)
        n.input.append(bias_name)
        return
    old = get(bias_name)
    put(bias_name, b.reshape(old.shape) if old.size == b.size else b.reshape(-1))


class _Window:
    """Samples [start, stop) of a re-iterable data source, itself re-iterable."""

    def __init__(self, data: Iterable, start: int, stop: int):
        self.data, self.start, self.stop = data, start, stop

    def __iter__(self):
        for k, feed in enumerate(self.data):
            if k >= self.stop:
                return
            if k >= self.start:
                yield feed


def recover_model(
    an: ChannelAnalysis, pruned_model: onnx.ModelProto, pruned: np.ndarray, data: Iterable, *, ridge: float,
    limit: int, seed: int = 0, stages: int = 1, tick: Callable[[str, int, int | None], None] | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """Refit consumers of pruned channels; keep the result only if fidelity improved.

    stages=1 fits every layer at once on the original model's inputs. stages>1 splits the layers
    (in graph order) into that many runs; each run fits its layers on the inputs the pruned model,
    as recovered so far, really produces, which also absorbs error built up upstream.
    `tick(stage, samples done, samples)` reports progress (Context.tick).
    """
    targets, skipped = _targets(an, pruned_model, pruned)
    stats: dict = {"refit": 0, "bias_only": 0, "skipped": skipped, "stages": stages}
    if not targets:
        return pruned_model, stats
    # hold an eighth of the samples out of the fit: the keep-or-revert decision and the reported
    # fidelity must not be measured on the data the least-squares fit has seen
    n = sum(1 for _ in _Window(data, 0, limit))
    n_val = max(2, n // 8) if n >= 8 else 0
    fit = _Window(data, 0, n - n_val)
    val = _Window(data, n - n_val, n) if n_val else fit
    stats["samples_fit"], stats["samples_validate"] = n - n_val, n_val or n
    rec = onnx.ModelProto()
    rec.CopyFrom(pruned_model)

    def samples(stage: str) -> Callable[[int], None] | None:
        return None if tick is None else (lambda k: tick(stage, k, n - n_val))

    if stages <= 1:
        _collect(an, targets, fit, limit, seed, progress=samples("recovery"))
        _write(rec, targets, an, ridge)
    else:
        buckets = np.array_split(np.arange(len(targets)), min(stages, len(targets)))
        for s, bucket in enumerate(buckets):
            part = [targets[k] for k in bucket]
            _collect(an, part, fit, limit, seed, x_model=rec, progress=samples(f"recovery stage {s + 1}/{len(buckets)}"))
            _write(rec, part, an, ridge)
    stats["refit"] = sum(1 for t in targets if t.mode == "refit")
    used = [t.ridge_used for t in targets if t.ridge_used]
    if used:
        stats["ridge_chosen"] = {f"{r:g}": used.count(r) for r in sorted(set(used))}
    stats["bias_only"] = sum(1 for t in targets if t.mode == "bias")
    # on the logits under a softmax: the saturated probabilities hide the error on a few samples
    stats["measured_on"] = error_tensors(an.model)
    before, after = pooled_fidelity(an.model, [pruned_model, rec], val, limit, tensors=stats["measured_on"])
    stats["fidelity_before"] = before
    stats["fidelity_after"] = after
    if after["rel_l2"] > before["rel_l2"]:
        stats["kept"] = "unrecovered (refit did not improve fidelity on held-out calibration samples)"
        return pruned_model, stats
    stats["kept"] = "recovered"
    return rec, stats
