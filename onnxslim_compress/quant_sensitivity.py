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

from .activations import iterate_tensors
from .errors import BadInputError
from .qdq_placement import Unit
from .runtime import Target, make_session

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class FidelityTarget:
    metric: str  # "cosine" | "top1"
    value: float


def parse_min_fidelity(spec: str) -> FidelityTarget:
    """'cosine=0.995' or 'top1=0.99' -> FidelityTarget; anything else is a bad argument."""
    name, sep, val = spec.partition("=")
    name = name.strip().lower()
    if not sep or name not in ("cosine", "top1"):
        raise BadInputError(f"--min-fidelity {spec!r}: expected cosine=0.995 or top1=0.99")
    try:
        v = float(val)
    except ValueError:
        raise BadInputError(f"--min-fidelity {spec!r}: {val!r} is not a number") from None
    if not 0.0 < v <= 1.0:
        raise BadInputError(f"--min-fidelity {spec!r}: value must be in (0, 1]")
    return FidelityTarget(name, v)


def run_outputs(model: onnx.ModelProto, feeds: list[Feed], target: Target) -> list[list[np.ndarray]]:
    sess = make_session(model, target)
    names = [i.name for i in sess.get_inputs()]
    return [sess.run(None, {n: f[n] for n in names if n in f}) for f in feeds]


def fidelity(ref: list[list[np.ndarray]], got: list[list[np.ndarray]], metric: str) -> float:
    """Mean per-sample cosine of all float outputs concatenated, or top-1 agreement of output 0."""
    vals = []
    for r, q in zip(ref, got, strict=True):
        if metric == "top1":
            a, b = np.asarray(r[0]), np.asarray(q[0])
            vals.append(float(np.mean(a.reshape(-1, a.shape[-1]).argmax(-1) == b.reshape(-1, b.shape[-1]).argmax(-1))))
            continue
        fa = np.concatenate([np.asarray(x, np.float64).ravel() for x in r if np.issubdtype(np.asarray(x).dtype, np.floating)])
        fb = np.concatenate([np.asarray(x, np.float64).ravel() for x in q if np.issubdtype(np.asarray(x).dtype, np.floating)])
        na, nb = np.linalg.norm(fa), np.linalg.norm(fb)
        vals.append(1.0 if na == nb == 0 else float(fa @ fb / max(na * nb, 1e-30)))
    return float(np.mean(vals)) if vals else 1.0


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
        rows.append((u, 1.0 - fidelity(ref, got, "cosine")))
    return rows


def keep_float_until(
    build: Callable[[list[Unit]], onnx.ModelProto],
    ranked: list[Unit],
    feeds: list[Feed],
    ref: list[list[np.ndarray]],
    goal: FidelityTarget,
    target: Target,
) -> tuple[int, float, list[tuple[int, float]]]:
    """Smallest k such that keeping the k most sensitive units float meets `goal` (doubling, then bisect)."""
    tried: dict[int, float] = {}

    def score(k: int) -> float:
        if k not in tried:
            tried[k] = fidelity(ref, run_outputs(build(ranked[k:]), feeds, target), goal.metric)
        return tried[k]

    if score(0) >= goal.value:
        return 0, tried[0], sorted(tried.items())
    lo, hi = 0, 1
    while hi < len(ranked) and score(hi) < goal.value:
        lo, hi = hi, min(2 * hi, len(ranked))
    if score(hi) < goal.value:
        return hi, tried[hi], sorted(tried.items())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if score(mid) >= goal.value:
            hi = mid
        else:
            lo = mid
    return hi, tried[hi], sorted(tried.items())


def _channel_mean(x: np.ndarray, axis: int) -> tuple[np.ndarray, int]:
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    rows = x.reshape(-1, x.shape[-1])
    return rows.sum(0), rows.shape[0]


def bias_shift(
    float_model: onnx.ModelProto, qmodel: onnx.ModelProto, units: list[Unit], feeds: list[Feed]
) -> dict[str, np.ndarray]:
    """Per weighted unit: mean(float output - quantized output) per output channel, over `feeds`.

    Adding it to the bias removes the systematic shift quantization puts on each channel (empirical
    bias correction); the outputs are compared at the same tensor, before any output Q.
    """
    node_out = {n.name: n.output[0] for n in float_model.graph.node}
    todo = {u.node: (node_out[u.node], u.weight_out_axis) for u in units if u.weight_out_axis is not None}
    names = sorted({t for t, _ in todo.values()})
    if not names:
        return {}
    basic = Target(kind="cpu", opt_level="basic")
    sums: dict[str, np.ndarray] = {}
    count: dict[str, int] = {}
    for fv, qv in zip(iterate_tensors(float_model, names, feeds, target=basic), iterate_tensors(qmodel, names, feeds, target=basic), strict=True):
        for node, (t, ax) in todo.items():
            s, c = _channel_mean(fv[t] - qv[t], ax)
            sums[node] = sums.get(node, 0) + s
            count[node] = count.get(node, 0) + c
    return {k: (sums[k] / max(count[k], 1)).astype(np.float32) for k in sums}


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
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    producer = {o: n for n in g.node for o in n.output}
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
        ws = [numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in ns]
        wmax = np.max([np.abs(w).max(1) for w in ws], axis=0)
        s = np.power(np.maximum(absmax[x], 1e-5), alpha) / np.power(np.maximum(wmax, 1e-5), 1 - alpha)
        s = np.clip(s, 1e-2, 1e2).astype(np.float32)
        p = producer.get(x)
        if p is not None and p.op_type == "LayerNormalization" and len(p.input) > 2 and all(t in inits for t in p.input[1:3]):
            for t in p.input[1:3]:
                v = numpy_helper.to_array(inits[t]).astype(np.float32) / s
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
            m.graph.initializer.append(numpy_helper.from_array((w * s[:, None]).astype(np.float32), wn))
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
