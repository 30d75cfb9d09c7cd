"""Where QuantizeLinear/DequantizeLinear go for each target runtime, and the graph rewrite itself.

Placement decides speed: ONNX Runtime's CPU EP only gains when a whole node unit (DQ on every input,
Q on the output where its kernel needs one) matches one of its integer kernels; TensorRT wants Q/DQ
on the inputs of weighted ops, the identity branch of residual Adds and one scale across a Concat,
and no quantized outputs. Both rule sets are explicit op tables (docs/ARCHITECTURE.md "Runtime facts"), never name matching.

A `Unit` is one node that will run quantized: the activation tensors it wants as Q->DQ, and the
constant inputs it wants stored as integers. The rewrite is tensor-centric: each chosen tensor gets
one Q after its producer and one DQ per consumer (ORT fuses a DQ into one node unit only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx
from networkx.utils import UnionFind
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress.graph import weights
from onnxslim_compress.graph.index import GraphIndex, attr, drop_unused_initializers
from onnxslim_compress.passes.quantize.calibration import (
    asymmetric_qparams,
    symmetric_qparams,
)

WEIGHTED_AXIS = {"Conv": 0, "ConvTranspose": 1}  # per-output-channel axis of the weight tensor
WEIGHTED = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
#: ORT CPU integer kernels reached through QDQ node units (QLinearConv/MatMul, QGemm, QLinearAdd/Mul,
#: QLinearConcat, QLinear pools, QLinearSigmoid/LeakyRelu): these want their output quantized too.
CPU_QLINEAR_OUT = {"Conv", "Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool", "Sigmoid", "LeakyRelu"}
#: ops whose output ORT keeps integer when input and output share one scale (Q/DQ pairs dropped).
#: Not Resize: measured on PP-OCRv4 det (CPU EP, 2 threads), its uint8 kernel took 4x the fp32 time.
SHARED_SCALE = {"MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten"}
#: activations ORT folds into the Q after them when the zero point sits at the type's minimum
FOLDABLE_RELU = {"Relu"}

TargetKind = Literal["cpu", "cuda", "tensorrt"]


@dataclass
class Unit:
    node: str
    op: str
    acts: list[str] = field(default_factory=list)
    #: constant inputs to store as integers: input index -> per-channel axis (None: per tensor)
    weights: dict[int, int | None] = field(default_factory=dict)
    #: constant inputs quantized like activations (Add/Mul/Concat constants: same type as the others)
    const_acts: list[int] = field(default_factory=list)
    bias: int | None = None  # input index of a bias stored as int32 (CPU kernels need it)
    weight_out_axis: int | None = None  # axis of the output that holds the output channels
    #: CPU: quantize the activation at run time (DynamicQuantizeLinear + MatMulInteger), no static Q
    dynamic: bool = False
    #: dynamic units: input channels that stay float (a small float MatMul beside the integer one)
    outliers: list[int] = field(default_factory=list)


@dataclass
class ActQ:
    scale: float
    zero_point: int | float
    elem_type: int  # TensorProto.UINT8 / INT8 / FLOAT8E4M3FN


def ensure_node_names(model: onnx.ModelProto) -> None:
    """Units, exclusions and the layer table refer to nodes by name; give unnamed nodes one."""
    seen: set[str] = set()
    for k, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{k}"
        seen.add(n.name)


def build_units(
    model: onnx.ModelProto, target: TargetKind, is_float: set[str], inits: dict[str, np.ndarray]
) -> tuple[list[Unit], list[dict]]:
    """Candidate units per target, and skipped nodes with the reason."""
    g = model.graph
    producer = GraphIndex(g).producer
    units: list[Unit] = []
    skipped: list[dict] = []

    def act_ok(t: str) -> bool:
        return bool(t) and t in is_float and t not in inits

    for n in g.node:
        op = n.op_type
        u = Unit(n.name, op)
        other = [t for t in n.input if t in inits and inits[t].dtype.kind == "f" and inits[t].dtype != np.float32]
        if op in WEIGHTED and other:  # DQ would give float32 next to fp16/double operands: a type error
            skipped.append({"node": n.name, "reason": f"weight {other[0]} is {inits[other[0]].dtype}, only float32 is quantized"})
            continue
        if op in ("Conv", "ConvTranspose"):
            if len(n.input) < 2 or n.input[1] not in inits:
                skipped.append({"node": n.name, "reason": "weight is not a constant"})
                continue
            if op == "ConvTranspose" and (target == "cpu" or attr(n, "group", 1) != 1):
                skipped.append({"node": n.name, "reason": "no integer ConvTranspose kernel for this target/group"})
                continue
            if act_ok(n.input[0]):
                u.acts.append(n.input[0])
            u.weights[1] = WEIGHTED_AXIS[op]
            u.weight_out_axis = 1
            if len(n.input) > 2 and n.input[2] in inits and target == "cpu":
                u.bias = 2
        elif op == "MatMul":
            for k in (0, 1):
                t = n.input[k]
                if t in inits:
                    rank = inits[t].ndim
                    u.weights[k] = 1 if (k == 1 and rank == 2) else None
                elif act_ok(t):
                    u.acts.append(t)
            if 1 in u.weights and u.weights[1] == 1:
                u.weight_out_axis = -1
        elif op == "Gemm":
            if attr(n, "transA", 0) or n.input[1] not in inits:
                skipped.append({"node": n.name, "reason": "Gemm with transA or a non-constant B"})
                continue
            if act_ok(n.input[0]):
                u.acts.append(n.input[0])
            u.weights[1] = 0 if attr(n, "transB", 0) else 1
            u.weight_out_axis = -1
            plain = attr(n, "alpha", 1.0) == 1.0 and attr(n, "beta", 1.0) == 1.0
            if len(n.input) > 2 and n.input[2] in inits and inits[n.input[2]].ndim == 1 and plain and target == "cpu":
                u.bias = 2
        elif target == "cpu" and op in CPU_QLINEAR_OUT:
            arity = {"Add": 2, "Mul": 2, "Concat": len(n.input)}.get(op, 1)
            for k in range(arity):
                t = n.input[k]
                if t in inits:
                    u.const_acts.append(k)
                elif act_ok(t):
                    u.acts.append(t)
                else:
                    break
            else:
                if not u.acts:
                    continue
                if n.output[0] in is_float:
                    u.acts.append(n.output[0])
                units.append(u)
            continue
        elif target == "tensorrt" and op == "Add":
            a, b = n.input[0], n.input[1]
            if not (act_ok(a) and act_ok(b)):
                continue
            pa, pb = producer.get(a), producer.get(b)
            a_w = pa is not None and pa.op_type in WEIGHTED
            b_w = pb is not None and pb.op_type in WEIGHTED
            if a_w and not b_w:
                u.acts.append(b)
            elif b_w and not a_w:
                u.acts.append(a)
            elif a_w and b_w:
                u.acts.append(b)
            else:
                continue
            units.append(u)
            continue
        else:
            continue
        if target == "cpu" and op == "Conv" and n.output[0] in is_float:
            u.acts.append(n.output[0])  # QLinearConv needs a Q on its output
        units.append(u)
    return units, skipped


def prune_isolated(model: onnx.ModelProto, units: list[Unit]) -> tuple[list[Unit], list[dict]]:
    """Drop non-weighted units that do not sit inside an integer chain (CPU).

    QLinearAdd/Mul/Concat/pools only pay when they keep data integer between integer kernels; one
    whose input comes from float code or whose output only feeds float code adds a requantization and
    its rounding for nothing. Typical cases: the attention-mask Add before a float Softmax (a -10000
    mask would wipe out the scores' resolution), residual Adds that feed LayerNorm, detection heads.
    Iterated to a fixpoint, looking through shared-scale ops and Relu.
    """
    g = model.graph
    idx = GraphIndex(g)
    producer, consumers = idx.producer, idx.consumers
    through = SHARED_SCALE | FOLDABLE_RELU
    keep = {u.node for u in units}
    by_name = {n.name: n for n in g.node}

    def up(t: str) -> str | None:
        n = producer.get(t)
        while n is not None and n.op_type in through:
            n = producer.get(n.input[0])
        return n.name if n is not None else None

    def down(t: str) -> set[str]:
        out, todo = set(), [t]
        while todo:
            for c in consumers.get(todo.pop(), []):
                if c.op_type in through:
                    todo.append(c.output[0])
                else:
                    out.add(c.name)
        return out

    dropped: list[dict] = []
    changed = True
    while changed:
        changed = False
        for u in units:
            if u.op in WEIGHTED or u.node not in keep:
                continue
            n = by_name[u.node]
            ok_in = any(up(t) in keep for t in n.input if t)
            ok_out = bool(down(n.output[0]) & keep)
            if not (ok_in and ok_out):
                keep.discard(u.node)
                dropped.append({"node": u.node, "reason": "not between integer kernels: left float"})
                changed = True
    return [u for u in units if u.node in keep], dropped


def choose_tensors(
    model: onnx.ModelProto, units: list[Unit], target: TargetKind, is_float: set[str]
) -> tuple[set[str], dict[str, str]]:
    """The activation tensors to quantize and a group id per tensor (tensors of a group share a scale)."""
    g = model.graph
    consumers = GraphIndex(g).consumers
    outputs = {o.name for o in g.output}
    chosen: set[str] = set()
    for u in units:
        chosen.update(u.acts)
    uf = UnionFind()
    if target == "cpu":
        # move a Q from before a lone Relu to after it, so ORT folds the Relu into the integer kernel
        for t in list(chosen):
            cs = consumers.get(t, [])
            if len(cs) == 1 and cs[0].op_type in FOLDABLE_RELU and t not in outputs and cs[0].output[0] in is_float:
                produced_by_unit = any(t in u.acts and u.op in CPU_QLINEAR_OUT for u in units)
                if produced_by_unit:
                    chosen.discard(t)
                    chosen.add(cs[0].output[0])
        for n in g.node:  # forward: shared-scale ops keep the integer chain going
            if n.op_type in SHARED_SCALE and n.input and n.input[0] in chosen and n.output[0] in is_float:
                chosen.add(n.output[0])
                uf.union(n.output[0], n.input[0])
    else:
        changed = True
        while changed:  # backward: one scale across a Concat (TensorRT cancels the DQ->Q pairs)
            changed = False
            for n in reversed(g.node):
                if n.op_type == "Concat" and n.output[0] in chosen:
                    for t in n.input:
                        if t in is_float and t not in chosen:
                            chosen.add(t)
                            changed = True
                        if t in is_float:
                            uf.union(t, n.output[0])
        chosen -= outputs  # TensorRT: no output quantization
    return chosen, {t: uf[t] for t in chosen}


def quantize_weight(w: np.ndarray, axis: int | None, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric integer weight and its scale (per channel along `axis`, else per tensor)."""
    w = w.astype(np.float32)
    if axis is None:
        amax = np.array(np.abs(w).max() if w.size else 0.0, dtype=np.float32)
        scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
        return np.clip(np.round(w / scale), -qmax, qmax), scale.reshape(())
    ax = axis % w.ndim
    red = tuple(i for i in range(w.ndim) if i != ax)
    amax = np.abs(w).max(axis=red) if red else np.abs(w)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[ax] = -1
    return np.clip(np.round(w / scale.reshape(shape)), -qmax, qmax), scale


def _int_tensor(name: str, q: np.ndarray, elem_type: int, ws: weights.Workspace | None = None) -> TensorProto:
    if elem_type in (TensorProto.FLOAT8E4M3FN,):
        return helper.make_tensor(name, elem_type, q.shape, q.astype(np.float32).ravel().tolist())
    dt = helper.tensor_dtype_to_np_dtype(elem_type)
    return weights.new_tensor(q.astype(dt), name, ws)


def _zp_tensor(name: str, zp, elem_type: int, shape: tuple = ()) -> TensorProto:
    if elem_type == TensorProto.FLOAT8E4M3FN:
        return helper.make_tensor(name, elem_type, shape, [0.0] * int(np.prod(shape or (1,))))
    dt = helper.tensor_dtype_to_np_dtype(elem_type)
    return numpy_helper.from_array(np.full(shape, zp, dtype=dt), name)


@dataclass
class Format:
    """Number format of a target: activation type/symmetry, weight type and range."""

    act_type: int = TensorProto.UINT8
    act_symmetric: bool = False
    weight_type: int = TensorProto.INT8
    weight_qmax: float = 127
    int32_bias: bool = True


def insert_qdq(
    model: onnx.ModelProto,
    units: list[Unit],
    chosen: set[str],
    act_q: dict[str, ActQ],
    fmt: Format,
    float_readers: set[str] = frozenset(),
) -> onnx.ModelProto:
    """A new model with Q->DQ on `chosen` tensors and integer weights for `units`; the nodes in
    `float_readers` (dynamic units, quantized afterwards by insert_dynamic) keep their float inputs."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    ws = weights.Workspace.of(m)
    unit_by_node = {u.node: u for u in units}
    new_inits: list[TensorProto] = []
    drop_inits: set[str] = set()
    q_after: dict[str, list[onnx.NodeProto]] = {}
    q_name: dict[str, str] = {}
    for t in sorted(chosen):
        if t not in act_q:
            continue
        a = act_q[t]
        s, z = f"{t}__scale", f"{t}__zp"
        new_inits += [numpy_helper.from_array(np.array(a.scale, np.float32), s), _zp_tensor(z, a.zero_point, a.elem_type)]
        q_name[t] = f"{t}__q"
        q_after.setdefault(t, []).append(helper.make_node("QuantizeLinear", [t, s, z], [q_name[t]], name=f"{t}__Q"))
    nodes: list[onnx.NodeProto] = []
    graph_inputs = {i.name for i in g.input}
    for t in graph_inputs:
        nodes += q_after.pop(t, [])
    k = 0
    for n in g.node:
        u = unit_by_node.get(n.name)
        original = list(n.input)
        for idx, t in enumerate(original):
            if not t or n.name in float_readers:
                continue
            k += 1
            if u is not None and idx in u.weights and t in inits:
                w = weights.read(inits[t])
                q, scale = quantize_weight(w, u.weights[idx], fmt.weight_qmax)
                base = f"{t}__w{k}"
                axis = u.weights[idx]
                new_inits += [
                    _int_tensor(base, q, fmt.weight_type, ws),
                    numpy_helper.from_array(scale.astype(np.float32), base + "_scale"),
                    _zp_tensor(base + "_zp", 0, fmt.weight_type, tuple(scale.shape)),
                ]
                kw = {"axis": axis % w.ndim} if axis is not None else {}
                nodes.append(helper.make_node("DequantizeLinear", [base, base + "_scale", base + "_zp"], [base + "_dq"], name=base + "_DQ", **kw))
                n.input[idx] = base + "_dq"
                drop_inits.add(t)
            elif u is not None and idx == u.bias and t in inits and fmt.int32_bias:
                x = original[0] if original[0] in u.acts else None
                w_t = n.input[1]
                if x is None or x not in act_q or not w_t.endswith("_dq"):
                    continue
                b = weights.read(inits[t]).astype(np.float64)
                w_scale = weights.read(next(i for i in new_inits if i.name == w_t[:-3] + "_scale"))
                bs = (act_q[x].scale * w_scale.astype(np.float64)).reshape(-1) * np.ones(b.shape[0])
                qb = np.clip(np.round(b / bs), -(2**31) + 1, 2**31 - 1).astype(np.int32)
                base = f"{t}__b{k}"
                new_inits += [
                    numpy_helper.from_array(qb, base),
                    numpy_helper.from_array(bs.astype(np.float32), base + "_scale"),
                    numpy_helper.from_array(np.zeros(b.shape[0], np.int32), base + "_zp"),
                ]
                nodes.append(helper.make_node("DequantizeLinear", [base, base + "_scale", base + "_zp"], [base + "_dq"], name=base + "_DQ", axis=0))
                n.input[idx] = base + "_dq"
                drop_inits.add(t)
            elif u is not None and idx in u.const_acts and t in inits:
                c = weights.read(inits[t]).astype(np.float32)
                lo, hi = float(min(c.min(), 0)), float(max(c.max(), 0))
                qp = symmetric_qparams(lo, hi) if fmt.act_symmetric else asymmetric_qparams(lo, hi)
                qmin, qmax = (-128, 127) if fmt.act_type == TensorProto.INT8 else (0, 255)
                q = np.clip(np.round(c / qp.scale) + qp.zero_point, qmin, qmax)
                base = f"{t}__c{k}"
                new_inits += [
                    _int_tensor(base, q, fmt.act_type),
                    numpy_helper.from_array(np.array(qp.scale, np.float32), base + "_scale"),
                    _zp_tensor(base + "_zp", qp.zero_point, fmt.act_type),
                ]
                nodes.append(helper.make_node("DequantizeLinear", [base, base + "_scale", base + "_zp"], [base + "_dq"], name=base + "_DQ"))
                n.input[idx] = base + "_dq"
                drop_inits.add(t)
            elif t in q_name:
                a = act_q[t]
                d = f"{t}__dq{k}"
                nodes.append(helper.make_node("DequantizeLinear", [q_name[t], f"{t}__scale", f"{t}__zp"], [d], name=d))
                n.input[idx] = d
        nodes.append(n)
        for o in n.output:
            nodes += q_after.pop(o, [])
    del g.node[:]
    g.node.extend(nodes)
    drop_unused_initializers(g, only=drop_inits)
    g.initializer.extend(new_inits)
    return m


def apply_float_bias_delta(model: onnx.ModelProto, delta: dict[str, np.ndarray], bias_input: dict[str, str]) -> None:
    """In place: add a correction to float bias initializers (bias_input maps node -> initializer)."""
    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, int] = {}
    for n in model.graph.node:
        for t in set(n.input):
            readers[t] = readers.get(t, 0) + 1
    for node, name in bias_input.items():
        if node in delta and name in inits and readers.get(name, 0) == 1:
            b = weights.read(inits[name]).astype(np.float32)
            d = delta[node].reshape(-1)
            if b.size == 1 and d.size > 1:  # a broadcast Gemm C (e.g. [1] before opset 11) becomes per-output
                b = np.full(d.shape, b.reshape(-1)[0], np.float32)
            inits[name].CopyFrom(weights.new_tensor((b + d.reshape(b.shape)).astype(np.float32), name,
                                                    weights.Workspace.of(model)))


def _const_value(inits: dict[str, TensorProto], t: str) -> float | None:
    if t not in inits:
        return None
    a = weights.read(inits[t])
    return float(a.reshape(-1)[0]) if a.size == 1 else None


def fuse_hardswish(model: onnx.ModelProto) -> int:
    """In place: x * Clip(x + 3, 0, 6) / 6 (paddle2onnx's hard_swish) -> one HardSwish node (opset 14).

    Why here: between two integer convolutions those four float ops cost more than the convolution
    they follow once it is int8 (PP-OCRv4), and no integer kernel covers the chain; one HardSwish
    is a single float pass between DQ and Q. Exact: HardSwish(x) = x * max(0, min(1, x/6 + 1/2)).
    Returns the number of chains fused; the caller must make sure the opset is >= 14.
    """
    g = model.graph
    idx = GraphIndex(g)
    inits, producer = idx.initializers, idx.producer
    drop: set[int] = set()
    replace: dict[int, onnx.NodeProto] = {}
    for k, d in enumerate(g.node):
        if d.op_type != "Div" or _const_value(inits, d.input[1]) != 6.0:
            continue
        m = producer.get(d.input[0])
        if m is None or m.op_type != "Mul" or idx.n_readers(m.output[0]) != 1:
            continue
        for xi in (0, 1):
            x, c_t = m.input[xi], m.input[1 - xi]
            c = producer.get(c_t)
            if c is None or c.op_type != "Clip" or idx.n_readers(c_t) != 1 or len(c.input) < 3:
                continue
            if _const_value(inits, c.input[1]) != 0.0 or _const_value(inits, c.input[2]) != 6.0:
                continue
            a = producer.get(c.input[0])
            if a is None or a.op_type != "Add" or idx.n_readers(a.output[0]) != 1 or x not in a.input:
                continue
            other = a.input[1] if a.input[0] == x else a.input[0]
            if _const_value(inits, other) != 3.0:
                continue
            ids = [i for i, n in enumerate(g.node) if n is a or n is c or n is m]
            drop.update(ids)
            replace[k] = helper.make_node("HardSwish", [x], [d.output[0]], name=d.name or f"HardSwish_{k}")
            break
    if not replace:
        return 0
    nodes = [replace.get(i, n) for i, n in enumerate(g.node) if i not in drop]
    del g.node[:]
    g.node.extend(nodes)
    return len(replace)


def constants_to_initializers(model: onnx.ModelProto) -> None:
    """In place: Constant nodes holding a tensor become initializers (paddle2onnx stores weights so)."""
    keep = []
    for n in model.graph.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(n.attribute[0].t)
            t.name = n.output[0]
            model.graph.initializer.append(t)
        else:
            keep.append(n)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def int4_weight_only(model: onnx.ModelProto, block: int, exclude: list[str]) -> tuple[onnx.ModelProto, list[dict], list[dict]]:
    """MatMul/Gemm constant weights -> int4 blocks along the reduction axis + DequantizeLinear (opset 21).

    Per block the clip factor that minimizes the block's squared error is chosen (a small grid), which
    beats plain absmax scaling at the same size. ORT fuses DQ(axis 0)->MatMul into MatMulNBits.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name: t for t in m.graph.initializer}
    ws = weights.Workspace.of(m)
    rows, skipped, nodes = [], [], []
    for n in m.graph.node:
        if n.op_type in ("MatMul", "Gemm") and not any(re.search(rx, n.name) for rx in exclude):
            w_name = n.input[1]
            trans = n.op_type == "Gemm" and bool(attr(n, "transB", 0))
            if w_name not in inits or len(inits[w_name].dims) != 2:
                skipped.append({"node": n.name, "reason": "weight is not a constant 2-D tensor"})
            else:
                w = weights.read(inits[w_name]).astype(np.float32)
                wk = w.T if trans else w  # [K, N]; blocks run along K
                k_dim, n_dim = wk.shape
                pad = (-k_dim) % block
                wp = np.pad(wk, ((0, pad), (0, 0))).reshape(-1, block, n_dim)
                amax = np.maximum(np.abs(wp).max(1, keepdims=True), 1e-12)
                best_s, best_e = amax / 7, np.full(amax.shape, np.inf)
                for f in np.linspace(0.6, 1.0, 9):
                    s = amax * f / 7
                    e = ((np.clip(np.round(wp / s), -8, 7) * s - wp) ** 2).sum(1, keepdims=True)
                    better = e < best_e
                    best_s, best_e = np.where(better, s, best_s), np.where(better, e, best_e)
                q = np.clip(np.round(wp / best_s), -8, 7).reshape(-1, n_dim)[:k_dim]
                scale = best_s[:, 0, :]  # [ceil(K/B), N]
                if trans:
                    q, scale = q.T, scale.T
                base = f"{w_name}__int4_{n.name}"
                m.graph.initializer.extend([
                    weights.new_int4_tensor(q, base, ws),
                    numpy_helper.from_array(scale.astype(np.float32), base + "_scale"),
                ])
                nodes.append(helper.make_node("DequantizeLinear", [base, base + "_scale"], [base + "_dq"],
                                              name=base + "_DQ", axis=1 if trans else 0, block_size=block))
                n.input[1] = base + "_dq"
                rows.append({"node": n.name, "shape": list(w.shape), "block": block})
        nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    drop_unused_initializers(m.graph)
    return m, rows, skipped


#: ops a CPU integer chain passes through without leaving integers (the producer look-up of
#: float_fed walks through them)
_THROUGH = SHARED_SCALE | FOLDABLE_RELU


def dynamic_candidate(model_inits: dict[str, np.ndarray], node: onnx.NodeProto, u: Unit) -> bool:
    """A MatMul of one float activation (input 0) by a constant 2-D weight (input 1): the shape
    ORT's MatMulIntegerToFloat / DynamicQuantizeMatMul kernels take."""
    return (u.op == "MatMul" and u.acts == [node.input[0]] and 1 in u.weights and 0 not in u.weights
            and node.input[1] in model_inits and model_inits[node.input[1]].ndim == 2)


def float_fed(model: onnx.ModelProto, units: list[Unit]) -> set[str]:
    """Activation tensors of `units` that no integer-output unit produces (looking through
    shared-scale ops and Relu): a static Q there is a standalone QuantizeLinear on float data, so a
    run-time range costs the same pass over the tensor and can never clip (ARCHITECTURE.md
    "Runtime facts": MatMulIntegerToFloat)."""
    producer = GraphIndex(model.graph).producer
    outs = {n.name: n.output[0] for n in model.graph.node}
    int_out = {u.node for u in units if not u.dynamic and u.op in CPU_QLINEAR_OUT and outs[u.node] in u.acts}
    out: set[str] = set()
    for u in units:
        for t in u.acts:
            n = producer.get(t)
            while n is not None and n.op_type in _THROUGH:
                n = producer.get(n.input[0])
            if n is None or n.name not in int_out:
                out.add(t)
    return out


def split_dynamic(model: onnx.ModelProto, units: list[Unit], activations: str,
                  inits: dict[str, np.ndarray]) -> tuple[list[Unit], list[dict]]:
    """Mark the MatMul units that quantize their activation at run time; drop what no longer pays.

    `static`: nothing changes. `dynamic`: ORT quantize_dynamic's structure - every MatMul with a
    constant 2-D weight dynamic, no static unit kept. `auto`: a MatMul whose activation is float-fed
    (a LayerNorm, Gelu or Softmax output - the transformer case, where static percentile ranges
    clip the outlier channels) runs dynamic; a MatMul of two float-fed activations (attention
    scores) stays float, as in ORT's dynamic structure, since a static Q on each operand costs
    more than the integer product saves at these sizes. Returns the units and the dropped rows.
    """
    if activations == "static":
        return units, []
    by_name = {n.name: n for n in model.graph.node}
    dynamic: list[Unit] = []
    static: list[Unit] = list(units)
    dropped: list[dict] = []
    if activations == "dynamic":
        for u in units:
            if dynamic_candidate(inits, by_name[u.node], u):
                u.dynamic = True
                dynamic.append(u)
            else:
                dropped.append({"node": u.node, "reason": "activations=dynamic: only MatMuls with a constant weight are quantized"})
        return dynamic, dropped
    while True:  # to a fixpoint: a MatMul turned dynamic can leave the static chain before the next one float-fed
        fed = float_fed(model, static)
        now = [u for u in static if dynamic_candidate(inits, by_name[u.node], u) and u.acts[0] in fed]
        if not now:
            break
        for u in now:
            u.dynamic = True
        dynamic += now
        static, iso = prune_isolated(model, [u for u in static if not u.dynamic])
        dropped += iso
    if dynamic:
        fed = float_fed(model, static)
        keep = []
        for u in static:
            if u.op == "MatMul" and not u.weights and len(u.acts) == 2 and all(t in fed for t in u.acts):
                dropped.append({"node": u.node, "reason": "MatMul of two float-fed activations: a static Q on each costs more "
                                "than the integer product saves (left float, as in ORT's dynamic structure)"})
            else:
                keep.append(u)
        static, iso = prune_isolated(model, keep)
        dropped += iso
    return static + dynamic, dropped


#: a channel whose calibrated max |x| exceeds this multiple of the median channel's is an outlier
OUTLIER_RATIO = 12.0
#: at most this many outlier channels per activation (LLM.int8()'s decomposition pays for a few)
MAX_OUTLIERS = 8


def outlier_channels(absmax: np.ndarray) -> list[int]:
    """The channels a per-tensor dynamic range cannot hold with the rest: max |x| above
    OUTLIER_RATIO x the median channel's, the largest MAX_OUTLIERS of them (none if more than
    that are: then the range is wide everywhere and a split does not help)."""
    if absmax.size < 16:
        return []
    med = float(np.median(absmax))
    if med <= 0:
        return []
    big = np.nonzero(absmax > OUTLIER_RATIO * med)[0]
    if len(big) == 0 or len(big) > MAX_OUTLIERS:
        return []
    return sorted(int(i) for i in big)


def _bias_add(readers: list[onnx.NodeProto], inits: dict[str, TensorProto]) -> onnx.NodeProto | None:
    """The lone Add with a constant operand that reads a MatMul output (its bias), if that is its only reader."""
    if len(readers) == 1 and readers[0].op_type == "Add" and any(t in inits for t in readers[0].input):
        return readers[0]
    return None


def split_weight(w: np.ndarray, outliers: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(W with the outlier input rows zeroed: what the integer MatMul gets, the outlier rows: the
    float MatMul's weight)."""
    wn = np.array(w, dtype=np.float32, copy=True)
    wn[outliers] = 0.0
    return wn, np.asarray(w, dtype=np.float32)[outliers]


def insert_dynamic(model: onnx.ModelProto, units: list[Unit], fmt: Format) -> onnx.ModelProto:
    """In place: each dynamic MatMul unit becomes DynamicQuantizeLinear (one per activation, shared
    by its readers) -> MatMulInteger(uint8 x, int8 W, zero points) -> Cast -> Mul(x_scale * w_scale).

    That is the pattern ORT's CPU optimizer fuses into MatMulIntegerToFloat / DynamicQuantizeMatMul
    (with a following bias Add); per-channel weights carry a per-column scale and zero point.
    """
    dyn = {u.node: u for u in units if u.dynamic}
    if not dyn:
        return model
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    ws = weights.Workspace.of(model)
    new_inits: list[TensorProto] = []
    drop: set[str] = set()
    done: dict[tuple, tuple[str, str, str]] = {}
    nodes: list[onnx.NodeProto] = []
    readers = GraphIndex(g).consumers
    late: dict[str, tuple[str, str]] = {}  # bias Add node -> (unit output, float outlier part)
    for k, n in enumerate(g.node):
        u = dyn.get(n.name)
        if u is None:
            if n.name in late:  # x@W_int + b first (fused), then + the outlier channels' float part
                y, flt = late[n.name]
                out = n.output[0]
                n.input[list(n.input).index(y)] = f"{y}__int"
                n.output[0] = f"{out}__biased"
                nodes += [n, helper.make_node("Add", [f"{out}__biased", flt], [out], name=f"{n.name}__outlier_add")]
                continue
            nodes.append(n)
            continue
        x, w_name, y = n.input[0], n.input[1], n.output[0]
        w = weights.read(inits[w_name])
        key = (x, tuple(u.outliers))
        if key not in done:
            src = x
            tag = f"{x}__o{len(done)}" if u.outliers else x
            if u.outliers:  # zero the outlier channels for the integer path, gather them for the float one
                keep = np.ones(w.shape[0], np.float32)
                keep[u.outliers] = 0.0
                new_inits += [numpy_helper.from_array(keep, f"{tag}__keep"),
                              numpy_helper.from_array(np.array(u.outliers, np.int64), f"{tag}__idx")]
                nodes += [helper.make_node("Mul", [x, f"{tag}__keep"], [f"{tag}__inl"], name=f"{tag}__Inliers"),
                          helper.make_node("Gather", [x, f"{tag}__idx"], [f"{tag}__outl"], axis=-1, name=f"{tag}__Outliers")]
                src = f"{tag}__inl"
            done[key] = (f"{tag}__dq8", f"{tag}__dscale", f"{tag}__dzp")
            nodes.append(helper.make_node("DynamicQuantizeLinear", [src], list(done[key]), name=f"{tag}__DynQ"))
        xq, xs, xz = done[key]
        w_int, w_out = split_weight(w, u.outliers) if u.outliers else (w, None)
        q, scale = quantize_weight(w_int, u.weights[1], fmt.weight_qmax)
        base = f"{w_name}__dyn{k}"
        new_inits += [weights.new_tensor(q.astype(np.int8), base, ws),
                      numpy_helper.from_array(scale.astype(np.float32).reshape(-1) if scale.ndim else scale.astype(np.float32), base + "_scale"),
                      numpy_helper.from_array(np.zeros(scale.shape, np.int8), base + "_zp")]
        drop.add(w_name)
        nodes += [
            helper.make_node("MatMulInteger", [xq, base, xz, base + "_zp"], [f"{y}__i32"], name=f"{n.name}__MatMulInteger"),
            helper.make_node("Cast", [f"{y}__i32"], [f"{y}__f32"], to=TensorProto.FLOAT, name=f"{n.name}__Cast"),
            helper.make_node("Mul", [xs, base + "_scale"], [f"{y}__scales"], name=f"{n.name}__scales"),
            helper.make_node("Mul", [f"{y}__f32", f"{y}__scales"], [f"{y}__int" if u.outliers else y], name=f"{n.name}__rescale"),
        ]
        if u.outliers:
            tag = xq[: -len("__dq8")]
            # one channel: an outer product by broadcasting (Mul [.., 1] x [N]) is cheaper than a K=1 MatMul
            one = len(u.outliers) == 1
            new_inits.append(numpy_helper.from_array(w_out.reshape(-1) if one else w_out, base + "_outliers"))
            nodes.append(helper.make_node("Mul" if one else "MatMul", [f"{tag}__outl", base + "_outliers"], [f"{y}__flt"],
                                          name=f"{n.name}__outlier_mm"))
            bias = _bias_add(readers.get(y, []), inits)
            if bias is not None:  # keep Mul -> bias Add adjacent: ORT fuses the bias into MatMulIntegerToFloat
                late[bias.name] = (y, f"{y}__flt")
            else:
                nodes.append(helper.make_node("Add", [f"{y}__int", f"{y}__flt"], [y], name=f"{n.name}__outlier_add"))
    del g.node[:]
    g.node.extend(nodes)
    drop_unused_initializers(g, only=drop)
    g.initializer.extend(new_inits)
    return model
