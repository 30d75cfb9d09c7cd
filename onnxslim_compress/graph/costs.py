"""Cost analysis of an ONNX graph: multiply-accumulates, parameters and weight bytes.

Why: `inspect` shows where the compute is so a user (and the search) knows which layers are worth
pruning or factorizing, and every pass reports its savings in the same units. MACs depend on the
input shapes, so they are counted at the shapes bound by onnxslim_compress.shapes (dynamic dims not
given by the user count as 1, and the result says which ones were assumed).

Only the main graph is counted; compute nodes inside If/Loop/Scan bodies are reported as not counted
rather than guessed (a loop body's trip count is not known statically). A node whose shapes cannot be
determined goes to `skipped` with the reason; the analysis never crashes on a model it cannot fully
understand.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper

from onnxslim_compress.graph import weights
from onnxslim_compress.graph.index import (
    DEFAULT_DOMAINS,
    GraphIndex,
    attr,
    constant_tensor,
    has_subgraph,
    node_subgraphs,
)
from onnxslim_compress.graph.shapes import ShapeMap, ShapeRunner, infer_shapes


@dataclass(frozen=True)
class _ConvSpec:
    """Where the operands of a convolution-like op sit (standard and integer/QLinear variants)."""

    x: int
    w: int
    bias: tuple[int, ...]
    transposed: bool = False


@dataclass(frozen=True)
class _MatMulSpec:
    a: int
    b: int
    bias: tuple[int, ...] = ()
    gemm: bool = False


#: Explicit op tables (standard domain). Integer/QLinear variants appear in QOperator-format models
#: from ORT's quantizer; they do the same multiply-accumulates as their float versions.
_CONV_OPS: dict[str, _ConvSpec] = {
    "Conv": _ConvSpec(x=0, w=1, bias=(2,)),
    "ConvInteger": _ConvSpec(x=0, w=1, bias=()),
    "QLinearConv": _ConvSpec(x=0, w=3, bias=(8,)),
    "ConvTranspose": _ConvSpec(x=0, w=1, bias=(2,), transposed=True),
}
_MATMUL_OPS: dict[str, _MatMulSpec] = {
    "MatMul": _MatMulSpec(a=0, b=1),
    "MatMulInteger": _MatMulSpec(a=0, b=1),
    "QLinearMatMul": _MatMulSpec(a=0, b=3),
    "Gemm": _MatMulSpec(a=0, b=1, bias=(2,), gemm=True),
}
COMPUTE_OPS: frozenset[str] = frozenset(_CONV_OPS) | frozenset(_MATMUL_OPS)

#: Ops through which a constant stays a constant weight: a QDQ model feeds Conv from
#: DequantizeLinear(int8 initializer), some exporters transpose or reshape a weight in the graph.
#: The value is the data input; the other inputs must be constants too for the chain to count.
_WEIGHT_PASSTHROUGH: dict[str, int] = {
    "DequantizeLinear": 0,
    "Identity": 0,
    "Cast": 0,
    "Transpose": 0,
    "Reshape": 0,
    "Squeeze": 0,
    "Unsqueeze": 0,
    "Flatten": 0,
}

#: Float inputs that are settings, not learned parameters (scales, pads, clip bounds, sizes).
_NON_PARAM_INPUTS: dict[str, frozenset[int]] = {
    "QuantizeLinear": frozenset({1, 2}),
    "DequantizeLinear": frozenset({1, 2}),
    "Resize": frozenset({1, 2, 3}),
    "Upsample": frozenset({1}),
    "Pad": frozenset({1, 2, 3}),
    "Clip": frozenset({1, 2}),
    "Range": frozenset({0, 1, 2}),
    "ConstantOfShape": frozenset({0}),
    "Expand": frozenset({1}),
    "Tile": frozenset({1}),
}

_FLOAT_TYPES = frozenset(
    {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
)


@dataclass
class NodeCost:
    """Cost of one compute node at the bound shapes. params counts its constant weight/bias inputs."""

    name: str
    op_type: str
    macs: int
    params: int
    inputs_shapes: list[list[int] | None]
    output_shape: list[int] | None
    #: names of the constant tensors counted in `params` (after following DequantizeLinear etc.)
    weights: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "op_type": self.op_type,
            "macs": self.macs,
            "params": self.params,
            "output_shape": self.output_shape,
        }


@dataclass
class CostTotals:
    macs: int = 0
    #: elements of unique parameter tensors (shared weights once; see count_costs)
    params: int = 0
    #: bytes of initializers and Constant tensors (the weight payload of the file)
    size_bytes: int = 0
    #: nodes in the main graph
    nodes: int = 0

    def as_dict(self) -> dict:
        return {"macs": self.macs, "params": self.params, "size_bytes": self.size_bytes, "nodes": self.nodes}


@dataclass
class OpTypeCost:
    count: int = 0
    macs: int = 0
    params: int = 0

    def as_dict(self) -> dict:
        return {"count": self.count, "macs": self.macs, "params": self.params}


@dataclass
class ModelCost:
    total: CostTotals
    nodes: list[NodeCost]
    by_op_type: dict[str, OpTypeCost]
    #: dynamic input dims that were bound to 1 because the user did not give them
    assumed: list[str]
    #: [{"node", "op_type", "reason"}] compute nodes not counted (unknown shapes, subgraphs)
    skipped: list[dict]
    #: how the shapes were obtained: "onnx", "onnxruntime" or "partial"
    shape_method: str = "onnx"
    #: the concrete input shapes the counts refer to
    input_shapes: ShapeMap = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "total": self.total.as_dict(),
            "by_op_type": {k: v.as_dict() for k, v in self.by_op_type.items()},
            "nodes": [n.as_dict() for n in self.nodes],
            "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
            "assumed": list(self.assumed),
            "skipped": [dict(s) for s in self.skipped],
            "shape_method": self.shape_method,
        }


class _Constants:
    """Constant tensors of the main graph (initializers and Constant nodes): name -> (dtype, numel)."""

    def __init__(self, graph: onnx.GraphProto):
        self.info: dict[str, tuple[int, int]] = {}
        for t in graph.initializer:
            # an initializer that is also a graph input can be overridden at run time; it is still
            # a weight for costing (that is how old exporters wrote every weight)
            self.info[t.name] = (t.data_type, _numel(t.dims))
        self.producer: dict[str, onnx.NodeProto] = GraphIndex(graph).producer
        for node in graph.node:
            t = constant_tensor(node) if node.output else None
            if t is not None:
                self.info[node.output[0]] = (t.data_type, _numel(t.dims))

    def is_const(self, name: str) -> bool:
        return bool(name) and name in self.info

    def resolve(self, name: str, depth: int = 0) -> list[str]:
        """The source constants behind a weight input; [] when it is not a constant."""
        if not name:
            return []
        if name in self.info:
            return [name]
        node = self.producer.get(name)
        if node is None or depth > 8 or node.domain not in DEFAULT_DOMAINS:
            return []
        data_idx = _WEIGHT_PASSTHROUGH.get(node.op_type)
        if data_idx is None or data_idx >= len(node.input):
            return []
        others = [i for k, i in enumerate(node.input) if k != data_idx and i]
        if not all(self.is_const(i) for i in others):
            return []
        return self.resolve(node.input[data_idx], depth + 1)


def _numel(dims: Iterable[int]) -> int:
    return int(math.prod(int(d) for d in dims))


def _tensor_bytes(t: TensorProto) -> int:
    """Bytes of a tensor's payload, without loading external data."""
    if t.HasField("raw_data"):
        return len(t.raw_data)
    if t.data_type == TensorProto.STRING:
        return sum(len(s) for s in t.string_data)
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except Exception:  # noqa: BLE001 - exotic dtypes (float8, int4): count one byte per element
        itemsize = 1
    if t.data_type in (TensorProto.INT4, TensorProto.UINT4):
        return (_numel(t.dims) + 1) // 2
    return _numel(t.dims) * itemsize


def _graph_weight_bytes(graph: onnx.GraphProto) -> int:
    """Bytes of the initializers and Constant tensors of a graph and of every body in it."""
    total = 0
    for g in weights.graphs(graph):
        total += sum(_tensor_bytes(t) for t in g.initializer)
        for node in g.node:
            if node.op_type == "Constant":
                total += sum(_tensor_bytes(a.t) for a in node.attribute if a.type == AttributeProto.TENSOR)
    return total


def _subgraph_compute_count(node: onnx.NodeProto) -> int:
    """Compute nodes (Conv/Gemm/MatMul...) inside the subgraphs of a control-flow node."""
    return sum(
        1
        for body in node_subgraphs(node)
        for g in weights.graphs(body)
        for n in g.node
        if n.op_type in COMPUTE_OPS and n.domain in DEFAULT_DOMAINS
    )


class _Unknown(Exception):
    """A shape needed for the count is not known; the message is the skip reason."""


def _shape(shapes: ShapeMap, name: str, what: str) -> list[int]:
    s = shapes.get(name) if name else None
    if s is None:
        raise _Unknown(f"shape of {what} {name!r} unknown")
    return list(s)


def conv_macs(out_shape: list[int], w_shape: list[int]) -> int:
    """N * Cout * prod(out spatial) * (Cin/group) * prod(kernel) = numel(out) * prod(W.shape[1:])."""
    return _numel(out_shape) * _numel(w_shape[1:])


def conv_transpose_macs(in_shape: list[int], w_shape: list[int]) -> int:
    """N * Cin * prod(in spatial) * (Cout/group) * prod(kernel): every input pixel scatters a kernel."""
    return _numel(in_shape) * _numel(w_shape[1:])


def matmul_macs(a_shape: list[int], b_shape: list[int]) -> int:
    """numpy matmul rules: 1-D operands get a unit dim, batch dims broadcast."""
    a = list(a_shape)
    b = list(b_shape)
    if not a or not b:
        raise _Unknown("MatMul of a scalar")
    if len(a) == 1:
        a = [1, a[0]]
    if len(b) == 1:
        b = [b[0], 1]
    if a[-1] != b[-2]:
        raise _Unknown(f"MatMul inner dims disagree ({a_shape} x {b_shape})")
    try:
        batch = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    except ValueError:
        raise _Unknown(f"MatMul batch dims do not broadcast ({a_shape} x {b_shape})") from None
    return _numel(batch) * a[-2] * b[-1] * a[-1]


def gemm_macs(a_shape: list[int], b_shape: list[int], trans_a: int, trans_b: int) -> int:
    if len(a_shape) != 2 or len(b_shape) != 2:
        raise _Unknown(f"Gemm operands must be 2-D ({a_shape}, {b_shape})")
    m, k = (a_shape[1], a_shape[0]) if trans_a else (a_shape[0], a_shape[1])
    kb, n = (b_shape[1], b_shape[0]) if trans_b else (b_shape[0], b_shape[1])
    if k != kb:
        raise _Unknown(f"Gemm inner dims disagree ({a_shape} x {b_shape}, transA={trans_a}, transB={trans_b})")
    return m * n * k


def _compute_weights(node: onnx.NodeProto, consts: _Constants) -> list[str]:
    """Source constants of a compute node's weight/bias operands (known without any shapes)."""
    if node.op_type in _CONV_OPS:
        spec = _CONV_OPS[node.op_type]
        slots = [spec.w, *spec.bias]
    else:
        spec_m = _MATMUL_OPS[node.op_type]
        slots = [spec_m.a, spec_m.b, *spec_m.bias]
    weights: list[str] = []
    for k in slots:
        if k < len(node.input):
            for src in consts.resolve(node.input[k]):
                if src not in weights:
                    weights.append(src)
    return weights


def _node_cost(node: onnx.NodeProto, shapes: ShapeMap, consts: _Constants) -> NodeCost:
    op = node.op_type
    ins = list(node.input)
    out = node.output[0] if node.output else ""
    out_shape = shapes.get(out)
    in_shapes = [shapes.get(i) if i else None for i in ins]
    if op in _CONV_OPS:
        spec = _CONV_OPS[op]
        w_shape = _shape(shapes, ins[spec.w] if spec.w < len(ins) else "", "weight")
        if len(w_shape) < 3:
            raise _Unknown(f"weight rank {len(w_shape)} < 3")
        if spec.transposed:
            macs = conv_transpose_macs(_shape(shapes, ins[spec.x], "input"), w_shape)
        else:
            macs = conv_macs(_shape(shapes, out, "output"), w_shape)
    else:
        spec_m = _MATMUL_OPS[op]
        a_shape = _shape(shapes, ins[spec_m.a] if spec_m.a < len(ins) else "", "input A")
        b_shape = _shape(shapes, ins[spec_m.b] if spec_m.b < len(ins) else "", "input B")
        if spec_m.gemm:
            macs = gemm_macs(a_shape, b_shape, int(attr(node, "transA", 0)), int(attr(node, "transB", 0)))
        else:
            macs = matmul_macs(a_shape, b_shape)
    weights = _compute_weights(node, consts)
    params = sum(consts.info[w][1] for w in weights)
    return NodeCost(
        name=node.name or out,
        op_type=op,
        macs=int(macs),
        params=int(params),
        inputs_shapes=[list(s) if s is not None else None for s in in_shapes],
        output_shape=list(out_shape) if out_shape is not None else None,
        weights=weights,
    )


def _attention_cost(node: onnx.NodeProto, shapes: ShapeMap) -> NodeCost:
    """com.microsoft.MultiHeadAttention with separate [B, S, H*D] query / [B, T, H*D] key /
    [B, T, H*Dv] value: Q K^T is B*S*T*(H*D) MACs and P V is B*S*T*(H*Dv)."""
    ins = list(node.input)
    if len(ins) < 3 or not all(ins[:3]):
        raise _Unknown("MultiHeadAttention without separate query, key and value inputs")
    q, k, v = (_shape(shapes, ins[i], what) for i, what in ((0, "query"), (1, "key"), (2, "value")))
    if len(q) != 3 or len(k) != 3 or len(v) != 3:
        raise _Unknown(f"MultiHeadAttention inputs are not rank 3 ({q}, {k}, {v})")
    b, s, t = q[0], q[1], k[1]
    out = node.output[0]
    return NodeCost(name=node.name or out, op_type=node.op_type, macs=int(b * s * t * (q[2] + v[2])), params=0,
                    inputs_shapes=[q, k, v], output_shape=shapes.get(out), weights=[])


def _is_param_input(node: onnx.NodeProto, k: int, name: str, consts: _Constants) -> bool:
    """A constant consumed by a non-compute node that holds learned values (BN, LayerNorm, Add bias).

    Scalars (eps, 1.0, sqrt(d)) and integer tensors (shapes, axes, indices) are settings, not
    parameters; DequantizeLinear's integer data input is a quantized weight and does count.
    """
    dtype, numel = consts.info[name]
    if node.op_type == "DequantizeLinear" and k == 0:
        return True
    if k in _NON_PARAM_INPUTS.get(node.op_type, frozenset()):
        return False
    return dtype in _FLOAT_TYPES and numel > 1


def count_costs(model: onnx.ModelProto, input_shapes: ShapeMap | None = None, *,
                runner: ShapeRunner | None = None) -> ModelCost:
    """MACs and parameters of every compute node of the main graph, with totals.

    `runner` finishes the shapes onnx cannot infer by running the model (see shapes.infer_shapes).

    total.params counts each parameter tensor once (a weight shared by two nodes is one tensor):
    the weights/biases of compute nodes, quantized weights behind DequantizeLinear, and the
    non-scalar float constants of other nodes (BatchNorm, LayerNorm, bias Adds).
    """
    shapes, bound, method = infer_shapes(model, input_shapes, runner=runner)
    graph = model.graph
    consts = _Constants(graph)
    nodes: list[NodeCost] = []
    skipped: list[dict] = []
    by_op: dict[str, OpTypeCost] = {}
    param_tensors: dict[str, int] = {}
    owner_op: dict[str, str] = {}

    for node in graph.node:
        key = node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"
        entry = by_op.setdefault(key, OpTypeCost())
        entry.count += 1
        name = node.name or (node.output[0] if node.output else node.op_type)
        if has_subgraph(node):
            inner = _subgraph_compute_count(node)
            if inner:
                skipped.append(
                    {
                        "node": name,
                        "op_type": node.op_type,
                        "reason": f"subgraph with {inner} compute node(s) not counted (only the main graph is)",
                    }
                )
        if node.op_type == "Constant":
            continue
        # the fused attention (passes/fuse_attention.py) does the two MatMuls it replaced
        attention = node.op_type == "MultiHeadAttention" and node.domain == "com.microsoft"
        if attention or (node.op_type in COMPUTE_OPS and node.domain in DEFAULT_DOMAINS):
            # parameters do not depend on shapes: a node whose MACs are unknown still has weights
            for w in [] if attention else _compute_weights(node, consts):
                if w not in param_tensors:
                    param_tensors[w] = consts.info[w][1]
                    owner_op[w] = key
            try:
                cost = _attention_cost(node, shapes) if attention else _node_cost(node, shapes, consts)
            except _Unknown as e:
                skipped.append({"node": name, "op_type": node.op_type, "reason": str(e)})
                continue
            nodes.append(cost)
            entry.macs += cost.macs
            continue
        for k, i in enumerate(node.input):
            if consts.is_const(i) and i not in param_tensors and _is_param_input(node, k, i, consts):
                param_tensors[i] = consts.info[i][1]
                owner_op[i] = key

    for w, n in param_tensors.items():
        by_op[owner_op[w]].params += n

    total = CostTotals(
        macs=sum(n.macs for n in nodes),
        params=sum(param_tensors.values()),
        size_bytes=_graph_weight_bytes(graph),
        nodes=len(graph.node),
    )
    return ModelCost(
        total=total,
        nodes=nodes,
        by_op_type=by_op,
        assumed=list(bound.assumed),
        skipped=skipped,
        shape_method=method,
        input_shapes={k: list(v) for k, v in bound.inputs.items()},
    )


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23 M' (decimal prefixes, as MAC and parameter counts are usually quoted)."""
    for div, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {prefix}{unit}"
    return f"{int(n)} {unit}".rstrip()


def human_bytes(n: int) -> str:
    for div, prefix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= div:
            return f"{n / div:.2f} {prefix}"
    return f"{n} B"


def format_table(cost: ModelCost, top: int = 20) -> str:
    """Human-readable summary: totals, the `top` most expensive nodes, totals by op type, notes."""
    t = cost.total
    shapes = ", ".join(f"{k}={'x'.join(str(d) for d in v)}" for k, v in cost.input_shapes.items())
    lines = [
        f"MACs {human(t.macs)}  params {human(t.params)}  weights {human_bytes(t.size_bytes)}  nodes {t.nodes}",
        f"at input shapes {shapes or '(none)'}",
    ]
    if cost.assumed:
        lines.append("assumed (dynamic dims not given; pass --input-shape): " + "; ".join(cost.assumed))
    ranked = sorted(cost.nodes, key=lambda n: n.macs, reverse=True)[: max(top, 0)]
    if ranked:
        name_w = min(max(len(n.name) for n in ranked), 48)
        lines.append("")
        lines.append(f"{'node':<{name_w}}  {'op':<14} {'output':<20} {'MACs':>11} {'share':>6} {'params':>10}")
        for n in ranked:
            share = n.macs / t.macs if t.macs else 0.0
            out = "x".join(str(d) for d in n.output_shape) if n.output_shape is not None else "?"
            nm = n.name if len(n.name) <= name_w else "..." + n.name[-(name_w - 3) :]
            lines.append(
                f"{nm:<{name_w}}  {n.op_type:<14} {out:<20} {human(n.macs):>11} {share:>6.1%} {human(n.params):>10}"
            )
        if len(cost.nodes) > len(ranked):
            rest = sum(n.macs for n in sorted(cost.nodes, key=lambda n: n.macs, reverse=True)[len(ranked) :])
            lines.append(f"... {len(cost.nodes) - len(ranked)} more compute nodes, {human(rest)} MACs")
    lines.append("")
    lines.append(f"{'op type':<24} {'count':>6} {'MACs':>11} {'params':>10}")
    for op, c in sorted(cost.by_op_type.items(), key=lambda kv: (-kv[1].macs, -kv[1].params, kv[0])):
        lines.append(f"{op:<24} {c.count:>6} {human(c.macs):>11} {human(c.params):>10}")
    if cost.skipped:
        lines.append("")
        lines.append(f"not counted ({len(cost.skipped)}):")
        for s in cost.skipped:
            lines.append(f"  {s['node']} ({s['op_type']}): {s['reason']}")
    return "\n".join(lines)
