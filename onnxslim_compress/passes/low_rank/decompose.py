"""Low-rank factorization machinery: (whitened) SVD of weight groups, rank rules, ALDS, the candidate
forms of a layer with their cost, and the graph nodes of each form (im2col rows: graph/index.py).

Kept apart from low_rank.py (which finds layers, collects data and decides) so the formulas
can be tested on plain matrices against a numpy reference. Conventions: a layer is a matrix W of
shape (out m, in n) acting as y = W x; its Conv form is folded to (f, c*kh*kw) in the (c, kh, kw)
order of an im2col patch. A factorization is W' = Dec @ Enc with Enc (r, n) and Dec (m, r).

Two errors. The reported one (and the energy rule's) is the relative Frobenius norm
sqrt(sum of dropped sigma^2 / sum of all sigma^2): for plain SVD ||W - W'||_F / ||W||_F, for the
whitened SVD the output error ||(W - W') X^T||_F / ||W X^T||_F on the calibration rows X. ALDS
allocates with its own operator-norm error sigma_{j+1} / sigma_1 (see Decomposition.spectral_errors).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxslim_compress.graph.index import UniqueNames, conv_pads
from onnxslim_compress.graph.weights import Workspace, new_tensor


def whitener(gram: np.ndarray, ridge: float) -> np.ndarray | None:
    """Lower-triangular S with S S^T = C + lambda I, lambda = ridge * mean(diag C).

    The ridge is relative so it means the same for inputs of any scale; it grows tenfold until the
    Cholesky succeeds (a dead input channel makes C singular). None when C is all zeros.
    """
    n = gram.shape[0]
    scale = float(np.trace(gram)) / max(n, 1)
    if not np.isfinite(scale) or scale <= 0:
        return None
    lam = max(ridge, 1e-12) * scale
    for _ in range(10):
        try:
            return np.linalg.cholesky(gram + lam * np.eye(n))
        except np.linalg.LinAlgError:
            lam *= 10.0
    return None


@dataclass
class Decomposition:
    """SVDs of the k contiguous input-column groups of W (k = 1 is plain SVD).

    With a Gram matrix each group is whitened (SVD of W_i S_i). The factors never use S^-1:
    W_i' = U_r Sigma_r V_r^T S^-1 = U_r U_r^T W_i, so Enc_i = U_r^T W_i and Dec_i = U_r, which stays
    finite when C is near-singular.
    """

    w: np.ndarray
    k: int
    us: list[np.ndarray]
    svals: list[np.ndarray]
    whitened: bool
    norm2: float  # spectral norm of the (whitened) matrix the groups come from

    def lighten(self) -> Decomposition:
        """Drop W and the U factors, keep the spectra: enough to choose ranks. A lightened
        decomposition is recomputed for the layers that get factorized (option_decomposition)."""
        self.w, self.us = None, []
        return self

    @property
    def max_rank(self) -> int:
        return min(len(s) for s in self.svals)

    def rel_errors(self) -> np.ndarray:
        """err[j] for j = 0..max_rank (per-group rank j)."""
        q = self.max_rank
        tail = np.zeros(q + 1)
        for s in self.svals:
            sq = np.concatenate([s[:q] ** 2, [float(np.sum(s[q:] ** 2))]])
            tail += np.cumsum(sq[::-1])[::-1]  # tail[j] = sum_{t >= j} sigma_t^2
        total = tail[0]
        if total <= 0:
            return np.zeros(q + 1)
        return np.sqrt(np.clip(tail / total, 0.0, None))

    def spectral_errors(self) -> np.ndarray:
        """ALDS's error: eps[j] = max_i sigma_{j+1}(W_i S_i) / ||[W_1 S_1 ... W_k S_k]||_2, j = 0..max_rank.

        ALDS allocates with this operator-norm error, as in its paper. On paraphrase-MiniLM-L3 at
        37.5 % of the parameters (plain SVD) it beat a uniform rank fraction (cosine 0.681 vs 0.580)
        where the Frobenius error of rel_errors() lost to it (0.559).
        """
        q = self.max_rank
        eps = np.zeros(q + 1)
        for s in self.svals:
            eps = np.maximum(eps, np.concatenate([s, np.zeros(q + 1)])[: q + 1])
        return eps / self.norm2 if self.norm2 > 0 else eps

    def factors(self, j: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(Enc_i (j, n/k), Dec_i (m, j))]; rows rescaled so Enc and Dec rows have equal norms."""
        out = []
        g = self.w.shape[1] // self.k
        for i, u in enumerate(self.us):
            wi = self.w[:, i * g : (i + 1) * g]
            dec = u[:, :j].copy()
            enc = dec.T @ wi
            scale = np.sqrt(np.linalg.norm(enc, axis=1))
            scale[scale == 0] = 1.0
            out.append((enc / scale[:, None], dec * scale[None, :]))
        return out


def decompose(w: np.ndarray, k: int = 1, gram: np.ndarray | None = None, ridge: float = 1e-6) -> Decomposition:
    """SVD of each of k column groups of `w`, whitened by the matching diagonal block of `gram`.

    With k > 1 the whitening uses each group's own block C_ii, so the cross terms between groups are
    ignored; the pass reports the exact output error computed with the full C.
    """
    w = np.asarray(w, dtype=np.float64)
    m, n = w.shape
    if n % k:
        raise ValueError(f"k={k} does not divide the {n} input columns")
    g = n // k
    us, svals, blocks, whitened = [], [], [], gram is not None
    for i in range(k):
        wi = w[:, i * g : (i + 1) * g]
        a = wi
        if gram is not None:
            s = whitener(np.asarray(gram, dtype=np.float64)[i * g : (i + 1) * g, i * g : (i + 1) * g], ridge)
            if s is None:
                whitened = False
            else:
                a = wi @ s
        u, sv, _ = np.linalg.svd(a, full_matrices=False)
        us.append(u)
        svals.append(sv)
        blocks.append(a)
    norm2 = float(svals[0][0]) if k == 1 else float(np.linalg.svd(np.hstack(blocks), compute_uv=False)[0])
    return Decomposition(w, k, us, svals, whitened, norm2)


def output_error(dw: np.ndarray, w: np.ndarray, gram: np.ndarray) -> float:
    """Exact relative output error sqrt(tr(dW C dW^T) / tr(W C W^T)) on the calibration rows."""
    num = float(np.sum((dw @ gram) * dw))
    den = float(np.sum((w @ gram) * w))
    return math.sqrt(max(num, 0.0) / den) if den > 0 else 0.0


def round_rank(j: int, round_to: int, max_rank: int) -> int:
    """Round up to a multiple of round_to (never below round_to, never above max_rank)."""
    if round_to > 1:
        j = int(math.ceil(j / round_to) * round_to)
    return max(1, min(j, max_rank))


def energy_rank(errs: np.ndarray, energy: float) -> int:
    """TRP rule: smallest j keeping `energy` of sum sigma^2, i.e. err[j]^2 <= 1 - energy."""
    ok = np.nonzero(errs**2 <= (1.0 - energy) + 1e-12)[0]
    return max(1, int(ok[0])) if len(ok) else len(errs) - 1


def ratio_rank(max_rank: int, ratio: float) -> int:
    return max(1, int(math.ceil(ratio * max_rank)))


# ----------------------------------------------------------------------------------------- ALDS


@dataclass
class Option:
    """One way to factorize one layer (a form and a group count k) with its error curve."""

    key: tuple
    cost: float  # size per unit of per-group rank j (params or MACs)
    ranks: np.ndarray  # allowed j, ascending
    errs: np.ndarray  # relative error at each allowed j (non-increasing)


@dataclass
class AldsLayer:
    full: float  # size of the unfactorized layer
    options: list[Option]


@dataclass
class AldsResult:
    choice: list[tuple[int, int | None]]  # (option index, j) per layer; j None = keep the layer
    errors: list[float]
    size: float
    budget: float
    eps: float
    feasible: bool


def _pick(opt: Option, full: float, eps: float) -> tuple[int | None, float, float]:
    """Smallest allowed j whose error is <= eps: (j, size, err); (None, full, 0) if no saving."""
    idx = np.nonzero(opt.errs <= eps)[0]
    if len(idx) == 0:
        return None, full, 0.0
    j = int(opt.ranks[idx[0]])
    size = j * opt.cost
    return (None, full, 0.0) if size >= full else (j, size, float(opt.errs[idx[0]]))


def _level(layers: list[AldsLayer], cfg: list[int], budget: float) -> tuple[float, bool]:
    """Smallest error level whose total size fits the budget (bisection over the step function).

    The total size is a non-increasing step function of the level, so a bisection over the sorted
    error values that occur is exact (Brent's method on a step function would only bisect too).
    """
    levels = np.unique(np.concatenate([[0.0]] + [layers[i].options[c].errs for i, c in enumerate(cfg)]))

    def size(eps: float) -> float:
        return sum(_pick(L.options[c], L.full, eps)[1] for L, c in zip(layers, cfg, strict=True))

    if size(levels[-1]) > budget:
        return float(levels[-1]), False
    lo, hi = 0, len(levels) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if size(levels[mid]) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return float(levels[lo]), True


def _best_within(opt: Option, cap: float) -> tuple[int | None, float]:
    """Largest allowed j of `opt` whose size fits `cap`: (j, err), or (None, inf)."""
    idx = np.nonzero(opt.ranks * opt.cost <= cap)[0]
    if len(idx) == 0:
        return None, math.inf
    return int(opt.ranks[idx[-1]]), float(opt.errs[idx[-1]])


def alds(layers: list[AldsLayer], budget: float, seeds: int = 3, seed: int = 0, rounds: int = 8) -> AldsResult:
    """Minimize the maximum relative error across layers subject to total size <= budget.

    Per seed: start from an option per layer (seed 0: option 0 everywhere; others random), find the
    error level that meets the budget, then let every layer keep its share of the budget and re-pick
    the option (e.g. k) with the smallest error at that size; repeat until stable. Best seed wins.
    """
    rng = np.random.default_rng(seed)
    best: AldsResult | None = None
    for s in range(max(1, seeds)):
        cfg = [0 if s == 0 else int(rng.integers(len(L.options))) for L in layers]
        for _ in range(rounds):
            eps, feasible = _level(layers, cfg, budget)
            new = list(cfg)
            for i, L in enumerate(layers):
                j, size, err = _pick(L.options[cfg[i]], L.full, eps)
                if j is None:
                    continue
                scored = [(_best_within(o, size)[1], c != cfg[i], c) for c, o in enumerate(L.options)]
                new[i] = min(scored)[2]
            if new == cfg:
                break
            cfg = new
        eps, feasible = _level(layers, cfg, budget)
        picks = [_pick(L.options[c], L.full, eps) for L, c in zip(layers, cfg, strict=True)]
        res = AldsResult(
            choice=[(c, p[0]) for c, p in zip(cfg, picks, strict=True)],
            errors=[p[2] for p in picks],
            size=sum(p[1] for p in picks),
            budget=budget,
            eps=max([p[2] for p in picks], default=0.0),
            feasible=feasible,
        )
        if best is None or (res.feasible, -res.eps, -res.size) > (best.feasible, -best.eps, -best.size):
            best = res
    assert best is not None
    return best


# ------------------------------------------------------------------- layers, options, graph forms


@dataclass
class Layer:
    """A factorizable node: its weight folded to (m, n) and what the data statistics need.

    `weight` is the folded float64 array, or a function that reads it: offloaded models (weights.py)
    read each weight when it is needed instead of holding all of them (then `shape_hint` gives the
    folded shape without a read)."""

    node: onnx.NodeProto
    weight: np.ndarray | Callable[[], np.ndarray]
    dtype: Any
    act: str
    spec: tuple  # ("axis", a) for Gemm/MatMul rows, ("patch", kernel, strides, dilations, pads, auto_pad)
    rows: int | None  # output positions per run (MACs = rows * weight size); None when shapes unknown
    act_rank: int | None
    in_spatial: list[int] | None = None
    shape_hint: tuple[int, int] | None = None

    @property
    def w(self) -> np.ndarray:
        return self.weight() if callable(self.weight) else self.weight

    @property
    def lazy(self) -> bool:
        return callable(self.weight)

    @property
    def shape(self) -> tuple[int, int]:
        return self.shape_hint if self.shape_hint is not None else self.weight.shape

    @property
    def size(self) -> int:
        return int(self.shape[0]) * int(self.shape[1])

    @property
    def name(self) -> str:
        return self.node.name or self.node.output[0]


def node_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}




def layer_options(L: Layer, alds_mode: bool, conv_form: str, gram: np.ndarray | None, ridge: float,
                  max_k: int = 16, spectra: bool = True) -> list[tuple[tuple, Decomposition]]:
    """Candidate (form, k) decompositions of one layer; ALDS chooses among them, other modes take k=1.

    k runs over the divisors of the input channels up to max_k (more groups = more SVDs for very thin
    groups). The spatial form (kh x 1 then 1 x kw) needs a 2-D kernel > 1x1 and explicit pads; it
    has no whitened variant (its factors mix output and kernel positions), so with data it is used
    only when asked for explicitly (plain SVD, reported as whitened=false) and "auto" means channel.
    """
    m, n = L.shape
    conv = L.spec[0] == "patch"
    c = n // int(np.prod(L.spec[1])) if conv else n
    ks = [1]
    if alds_mode and not node_attrs(L.node).get("transA", 0):
        ks = [k for k in range(1, min(max_k, c) + 1) if c % k == 0]
    if not conv and L.act_rank is None:
        ks = [1]  # Split/Concat need the activation's rank
    keys = []
    spatial_ok = conv and len(L.spec[1]) == 2 and min(L.spec[1]) > 1 and L.spec[5] in ("NOTSET", "VALID")
    if not (conv_form == "spatial" and spatial_ok):
        keys += [("channel", k) for k in ks]
    if spatial_ok and (conv_form == "spatial" or (conv_form == "auto" and gram is None)):
        keys.append(("spatial", 1))
    if not spectra and L.lazy:
        # the rank rule needs only the shapes (a rank fraction): no read, no SVD until emission
        return [(key, _shape_only(L, key, gram is not None)) for key in keys]
    w = L.w  # one read of a lazy weight for all options
    opts = []
    for key in keys:
        d = option_decomposition(L, key, gram, ridge, w)
        opts.append((key, d.lighten() if L.lazy else d))
    return opts


def _shape_only(L: Layer, key: tuple, whitened: bool) -> Decomposition:
    """A lightened decomposition with the option's max rank and no spectrum (rel_errors are zeros)."""
    m, n = L.shape
    form, k = key
    if form == "channel":
        q = min(m, n // k)
    else:
        c, (kh, kw) = n // int(np.prod(L.spec[1])), L.spec[1]
        q = min(m * kw, c * kh)
    return Decomposition(None, k, [], [np.zeros(q)] * k, whitened, 0.0)


def option_decomposition(L: Layer, key: tuple, gram: np.ndarray | None, ridge: float,
                         w: np.ndarray | None = None) -> Decomposition:
    """The decomposition of one (form, k) option of a layer."""
    w = L.w if w is None else w
    form, k = key
    if form == "channel":
        return decompose(w, k, gram, ridge)
    m, n = L.shape
    c, (kh, kw) = n // int(np.prod(L.spec[1])), L.spec[1]
    return decompose(w.reshape(m, c, kh, kw).transpose(0, 3, 1, 2).reshape(m * kw, c * kh), 1)


def option_cost(L: Layer, key: tuple, measure: str) -> float | None:
    """Size per unit of per-group rank j, in params or MACs."""
    m, n = L.shape
    form, k = key
    if form == "channel":
        per = k * m + n
        return per if measure == "params" else (None if L.rows is None else per * L.rows)
    c, (kh, kw) = n // int(np.prod(L.spec[1])), L.spec[1]
    if measure == "params":
        return c * kh + m * kw
    if L.rows is None or L.in_spatial is None:
        return None
    pads = conv_pads(L.in_spatial, list(L.spec[1]), list(L.spec[2]), list(L.spec[3]), list(L.spec[4]), L.spec[5])
    w_out = (L.in_spatial[1] + pads[1] + pads[3] - (kw - 1) * L.spec[3][1] - 1) // L.spec[2][1] + 1
    nh_out = L.rows // w_out  # batch * output height
    return nh_out * L.in_spatial[1] * c * kh + L.rows * m * kw


def approximation(L: Layer, key: tuple, d: Decomposition, j: int) -> np.ndarray:
    """The folded (m, n) weight that the factorization at per-group rank j computes."""
    approx = np.concatenate([dec @ enc for enc, dec in d.factors(j)], axis=1)
    if key[0] == "spatial":  # undo the (f*kw, c*kh) rearrangement
        f, (kh, kw) = L.shape[0], L.spec[1]
        approx = approx.reshape(f, kw, -1, kh).transpose(0, 2, 3, 1).reshape(f, -1)
    return approx


def emit(L: Layer, key: tuple, j: int, d: Decomposition, names: UniqueNames, opset: int, ws: Workspace | None = None):
    """New nodes and initializers computing the layer's output as Dec(Enc(x)); the bias goes last.
    Factors go to the workspace `ws` when the model's weights are offloaded."""
    node, a, base = L.node, node_attrs(L.node), L.name + "_lr"
    facs = d.factors(j)
    enc = [e for e, _ in facs]
    dec = np.concatenate([dd for _, dd in facs], axis=1)  # (m, k*j)
    inits, nodes = [], []

    def init(arr: np.ndarray, suffix: str) -> str:
        nm = names(f"{base}_{suffix}")
        inits.append(new_tensor(np.ascontiguousarray(arr).astype(L.dtype), nm, ws))
        return nm

    hid, out = names(f"{base}_h"), node.output[0]
    form, k = key
    if form == "spatial":
        f, (kh, kw) = L.shape[0], L.spec[1]
        c = L.shape[1] // (kh * kw)
        pads, st, dl = list(L.spec[4]) or [0] * 4, L.spec[2], L.spec[3]
        v = enc[0].reshape(j, c, kh, 1)
        h = dec.reshape(f, kw, j).transpose(0, 2, 1)[:, :, None, :]
        nodes.append(helper.make_node("Conv", [node.input[0], init(v, "enc_w")], [hid], names(f"{base}_enc"),
                                      kernel_shape=[kh, 1], strides=[st[0], 1], dilations=[dl[0], 1],
                                      pads=[pads[0], 0, pads[2], 0]))
        nodes.append(helper.make_node("Conv", [hid, init(h, "dec_w")] + list(node.input[2:3]), [out],
                                      names(f"{base}_dec"), kernel_shape=[1, kw], strides=[1, st[1]],
                                      dilations=[1, dl[1]], pads=[0, pads[1], 0, pads[3]]))
        return nodes, inits
    if node.op_type == "Conv":
        ksz = L.spec[1]
        e4 = np.concatenate([e.reshape((j, -1) + tuple(ksz)) for e in enc], axis=0)
        kept = {kk: v for kk, v in a.items() if kk in ("auto_pad", "pads", "strides", "dilations", "kernel_shape")}
        nodes.append(helper.make_node("Conv", [node.input[0], init(e4, "enc_w")], [hid], names(f"{base}_enc"),
                                      group=k, **kept))
        d4 = dec.reshape(dec.shape + (1,) * len(ksz))
        nodes.append(helper.make_node("Conv", [hid, init(d4, "dec_w")] + list(node.input[2:3]), [out],
                                      names(f"{base}_dec")))
        return nodes, inits
    gemm = node.op_type == "Gemm"
    tb = a.get("transB", 0) if gemm else 0
    if k == 1 and gemm:
        ins = [node.input[0], init(enc[0] if tb else enc[0].T, "enc_w")]
        if opset < 11:
            ins.append(init(np.zeros([1]), "enc_c"))  # C is required before opset 11
        nodes.append(helper.make_node("Gemm", ins, [hid], names(f"{base}_enc"), transA=a.get("transA", 0),
                                      transB=tb, alpha=a.get("alpha", 1.0)))
    elif k == 1:
        nodes.append(helper.make_node("MatMul", [node.input[0], init(enc[0].T, "enc_w")], [hid], names(f"{base}_enc")))
    else:  # ALDS k-split: k chunk products, concatenated, then one product
        axis = L.act_rank - 1
        parts = [names(f"{base}_x{i}") for i in range(k)]
        # explicit sizes: ORT's common-subexpression elimination merges Splits of one tensor that differ
        # only in their number of outputs (seen on MiniLM, where q/k/v share an input but got different k)
        g = L.shape[1] // k
        if opset >= 13:
            sizes = names(f"{base}_split_sizes")
            inits.append(numpy_helper.from_array(np.full(k, g, dtype=np.int64), sizes))
            nodes.append(helper.make_node("Split", [node.input[0], sizes], parts, names(f"{base}_split"), axis=axis))
        else:
            nodes.append(helper.make_node("Split", [node.input[0]], parts, names(f"{base}_split"), axis=axis, split=[g] * k))
        hs = [names(f"{base}_h{i}") for i in range(k)]
        for i in range(k):
            nodes.append(helper.make_node("MatMul", [parts[i], init(enc[i].T, f"enc{i}_w")], [hs[i]],
                                          names(f"{base}_enc{i}")))
        nodes.append(helper.make_node("Concat", hs, [hid], names(f"{base}_concat"), axis=axis))
    if gemm:
        alpha = 1.0 if k == 1 else a.get("alpha", 1.0)
        nodes.append(helper.make_node("Gemm", [hid, init(dec if tb else dec.T, "dec_w")] + list(node.input[2:3]),
                                      [out], names(f"{base}_dec"), transB=tb, alpha=alpha, beta=a.get("beta", 1.0)))
    else:
        nodes.append(helper.make_node("MatMul", [hid, init(dec.T, "dec_w")], [out], names(f"{base}_dec")))
    return nodes, inits
