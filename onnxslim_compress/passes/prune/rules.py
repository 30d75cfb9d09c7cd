"""Per-op coupling rules for channel dependency analysis.

A *space* is (tensor name, axis). Each rule looks at one node and one space of one of its tensors
and says which other spaces of that node are coupled to it (`link`, with index maps for Concat,
Split, Flatten, Reshape and grouped convs), which must be frozen (`block`, with a reason), and which
node attributes or shape constants must be rewritten after pruning (`rewrite`). The tables are
explicit: an op that is not listed is a blocker, never assumed elementwise, because guessing wrong
silently corrupts the pruned model.
"""

from __future__ import annotations

import numpy as np

from onnxslim_compress.graph.index import attr
from onnxslim_compress.passes.prune.layout import (
    rule_concat,
    rule_expand_tile,
    rule_flatten,
    rule_gather,
    rule_pad,
    rule_reduce,
    rule_reshape,
    rule_resize,
    rule_shape,
    rule_slice,
    rule_softmax,
    rule_split,
    rule_squeeze,
    rule_transpose,
    rule_unsqueeze,
)
from onnxslim_compress.passes.prune.view import GraphView, Outcome, Rewrite, Rule, SpaceKey, norm_axis
from onnxslim_compress.passes.prune.weight_rules import rule_conv, rule_conv_transpose, rule_gemm, rule_matmul

__all__ = ["GraphView", "Outcome", "Rewrite", "SpaceKey", "apply_rule"]

UNARY = frozenset(
    ["Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Gelu", "Erf", "Elu", "Selu", "Celu", "Softplus", "Softsign", "Clip", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Cast", "CastLike", "Identity", "Dropout", "Mish", "Sin", "Cos", "Floor", "Ceil", "Round", "Sign", "Not", "IsNaN", "IsInf", "ThresholdedRelu", "Shrink"]
)
BROADCAST = frozenset(
    ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "PRelu", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Mod", "BitShift"]
)
POOLS = frozenset(["MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"])
REDUCES = frozenset(
    ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"]
)
SOFTMAX = frozenset(["Softmax", "LogSoftmax", "Hardmax"])
#: ops that always freeze a channel space that reaches them, with the reason shown to the user
BLOCKERS = {
    "If": "used by control flow (If)",
    "Loop": "used by control flow (Loop)",
    "Scan": "used by control flow (Scan)",
    "LSTM": "recurrent op (LSTM)",
    "GRU": "recurrent op (GRU)",
    "RNN": "recurrent op (RNN)",
    "Einsum": "Einsum (axes not analysed)",
    "DepthToSpace": "DepthToSpace mixes channels and space",
    "SpaceToDepth": "SpaceToDepth mixes channels and space",
    "LRN": "LRN normalizes across channels",
    "LpNormalization": "LpNormalization across an axis",
    "GroupNormalization": "GroupNormalization statistics span channel groups",
    "NonZero": "NonZero",
    "Size": "Size reads the element count",
    "ScatterND": "ScatterND",
    "ScatterElements": "ScatterElements",
    "GatherND": "GatherND",
    "GatherElements": "GatherElements",
    "TopK": "TopK",
    "ArgMax": "ArgMax",
    "ArgMin": "ArgMin",
    "CumSum": "CumSum",
    "NonMaxSuppression": "NonMaxSuppression",
}


def rule_unary(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    out = Outcome()
    src = n.input[0]
    if t != src and t not in n.output:
        if n.op_type == "CastLike":
            return out  # the second input only gives the element type
        if n.op_type == "Clip" or n.op_type == "Dropout":
            v = g.const(t)
            if v is not None and v.size == 1:
                return out
        return out.block((t, a), f"{n.op_type} parameter input")
    if n.op_type == "Clip":
        for x in n.input[1:]:
            v = g.const(x) if x else np.zeros(())
            if v is None or v.size != 1:
                return out.block((t, a), "Clip with non-scalar bounds")
    for o in n.output:
        if o:
            out.link((src, a), (o, a))
    return out


def rule_broadcast(g: GraphView, i: int, t: str, a: int) -> Outcome:
    """Numpy broadcasting: operands aligned on the right; a size-1 operand dim is not coupled."""
    n = g.nodes[i]
    out = Outcome()
    y = n.output[0]
    ry = len(g.shape(y) or [])
    rt = len(g.shape(t) or [])
    if not ry:
        return out.block((t, a), f"{n.op_type}: unknown output rank")
    ya = a + (ry - rt) if t != y else a
    c = g.dim(y, ya)
    if t != y and g.dim(t, a) != c:
        return out.block((t, a), f"{n.op_type}: channel axis broadcast")
    out.link((t, a), (y, ya))
    for x in n.input:
        if not x or x == t:
            continue
        s = g.shape(x)
        if s is None:
            return out.block((t, a), f"{n.op_type}: operand {x} has unknown shape")
        xa = ya - (ry - len(s))
        if xa < 0 or s[xa] == 1:
            continue
        if s[xa] != c:
            return out.block((t, a), f"{n.op_type}: operand {x} does not match the channel count")
        out.link((y, ya), (x, xa))
        if x in g.init:
            out.role = "follower"
    return out


def rule_pool(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    out = Outcome()
    if a != 1:
        return out.block((t, a), f"{n.op_type} over a non-channel axis")
    if len(n.output) > 1 and n.output[1]:
        return out.block((t, a), f"{n.op_type} index output encodes channels")
    out.link((n.input[0], 1), (n.output[0], 1))
    return out


def rule_batchnorm(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    out = Outcome(role="follower")
    x, y = n.input[0], n.output[0]
    if t in (x, y):
        if a != 1:
            return out.block((t, a), f"{n.op_type} on a non-channel axis")
    elif a != 0:
        return out.block((t, a), f"{n.op_type} parameter axis")
    if any(o for o in n.output[1:]):
        return out.block((t, a), f"{n.op_type} in training mode")
    out.link((x, 1), (y, 1))
    for p in n.input[1:]:
        if p:
            if p not in g.init:
                return out.block((t, a), f"{n.op_type} with non-constant parameters")
            out.link((y, 1), (p, 0))
    return out


def rule_layernorm(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    out = Outcome()
    x, y = n.input[0], n.output[0]
    r = len(g.shape(x) or [])
    ax = norm_axis(attr(n, "axis", -1), r)
    if t not in (x, y) or a >= ax:
        return out.block((t, a), "LayerNormalization normalizes over the channel axis")
    if any(o for o in n.output[1:]):
        return out.block((t, a), "LayerNormalization statistics outputs used")
    out.link((x, a), (y, a))
    return out


def rule_qdq(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    x, y = n.input[0], n.output[0]
    out = Outcome()
    if t not in (x, y):
        return out.block((t, a), f"{n.op_type} parameter")
    scale = g.const(n.input[1])
    if scale is None:
        return out.block((t, a), f"{n.op_type} with a computed scale")
    out.link((x, a), (y, a))
    if scale.size > 1:
        ax = norm_axis(attr(n, "axis", 1), len(g.shape(x) or []))
        if ax != a:
            return out.block((t, a), f"{n.op_type} per-axis on another axis")
        for p in n.input[1:3]:
            if p:
                out.link((y, a), (p, 0))
    return out


RULES: dict[str, Rule] = {}
RULES.update(dict.fromkeys(UNARY, rule_unary))
RULES.update(dict.fromkeys(BROADCAST, rule_broadcast))
RULES.update(dict.fromkeys(POOLS, rule_pool))
RULES.update(dict.fromkeys(REDUCES, rule_reduce))
RULES.update(dict.fromkeys(SOFTMAX, rule_softmax))
RULES.update(
    {
        "BatchNormalization": rule_batchnorm,
        "InstanceNormalization": rule_batchnorm,
        "LayerNormalization": rule_layernorm,
        "Transpose": rule_transpose,
        "Squeeze": rule_squeeze,
        "Unsqueeze": rule_unsqueeze,
        "Flatten": rule_flatten,
        "Reshape": rule_reshape,
        "Concat": rule_concat,
        "Split": rule_split,
        "Slice": rule_slice,
        "Resize": rule_resize,
        "Upsample": rule_resize,
        "Pad": rule_pad,
        "Expand": rule_expand_tile,
        "Tile": rule_expand_tile,
        "Gather": rule_gather,
        "Shape": rule_shape,
        "QuantizeLinear": rule_qdq,
        "DequantizeLinear": rule_qdq,
        "Conv": rule_conv,
        "ConvTranspose": rule_conv_transpose,
        "Gemm": rule_gemm,
        "MatMul": rule_matmul,
    }
)


def apply_rule(g: GraphView, i: int, t: str, a: int) -> Outcome:
    """The outcome of node i for space (t, a); unknown and custom ops block."""
    n = g.nodes[i]
    if n.domain not in ("", "ai.onnx"):
        return Outcome().block((t, a), f"custom-domain op {n.domain}.{n.op_type}")
    if n.op_type in BLOCKERS:
        return Outcome().block((t, a), BLOCKERS[n.op_type])
    rule = RULES.get(n.op_type)
    if rule is None:
        return Outcome().block((t, a), f"unknown op {n.op_type}")
    return rule(g, i, t, a)
