"""Per-op coupling rules for channel dependency analysis.

A *space* is (tensor name, axis). Each rule looks at one node and one space of one of its tensors
and says which other spaces of that node are coupled to it (`link`, with index maps for Concat,
Split, Flatten, Reshape and grouped convs), which must be frozen (`block`, with a reason), and which
node attributes or shape constants must be rewritten after pruning (`rewrite`). The tables are
explicit: an op that is not listed is a blocker, never assumed elementwise, because guessing wrong
silently corrupts the pruned model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

SpaceKey = tuple[str, int]


class GraphView:
    """Read-only indexes over a model's main graph that every rule needs."""

    def __init__(self, model: onnx.ModelProto, shapes: dict[str, list[int]]):
        self.model = model
        self.graph = model.graph
        self.nodes = list(model.graph.node)
        self.shapes = shapes
        self.init = {t.name: t for t in model.graph.initializer}
        self._arrays: dict[str, np.ndarray] = {}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for i, n in enumerate(self.nodes):
            for o in n.output:
                if o:
                    self.producer[o] = i
            for k, x in enumerate(n.input):
                if x:
                    self.consumers[x].append((i, k))
        self.outputs = {o.name for o in model.graph.output}
        self.inputs = {i.name for i in model.graph.input if i.name not in self.init}
        #: names read inside If/Loop/Scan bodies (outer-scope captures) -> the control-flow node
        self.implicit: dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            for a in n.attribute:
                subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
                for g in subs:
                    for name in _outer_names(g):
                        self.implicit.setdefault(name, i)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)

    def const(self, name: str) -> np.ndarray | None:
        """Value of an initializer (Constant nodes were turned into initializers beforehand)."""
        if not name or name not in self.init:
            return None
        if name not in self._arrays:
            self._arrays[name] = numpy_helper.to_array(self.init[name])
        return self._arrays[name]

    def shape(self, name: str) -> list[int] | None:
        return self.shapes.get(name)

    def dim(self, name: str, axis: int) -> int | None:
        s = self.shapes.get(name)
        if s is None or axis >= len(s):
            return None
        return int(s[axis])


def _outer_names(g: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads but does not define (captured from the enclosing graph)."""
    defined = {i.name for i in g.input} | {t.name for t in g.initializer}
    used: set[str] = set()
    for n in g.node:
        used.update(x for x in n.input if x)
        defined.update(n.output)
        for a in n.attribute:
            subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for s in subs:
                used.update(_outer_names(s))
    return used - defined


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


@dataclass
class Rewrite:
    """A node edit the apply step performs once the kept channel counts are known.

    kind "group": Conv attribute group = new size of `space`.
    kind "shape_entry": constant input `pos` of the node, entry `entry` = new size of `space`.
    kind "split": Split sizes along `space[1]` from the new sizes of every output.
    """

    kind: str
    node: int
    space: SpaceKey
    pos: int = 0
    entry: int = 0


@dataclass
class Outcome:
    links: list[tuple[SpaceKey, SpaceKey, np.ndarray | None, np.ndarray | None]] = field(default_factory=list)
    blocks: list[tuple[SpaceKey, str]] = field(default_factory=list)
    rewrites: list[Rewrite] = field(default_factory=list)
    role: str = "pass"

    def link(self, a: SpaceKey, b: SpaceKey, ia: np.ndarray | None = None, ib: np.ndarray | None = None) -> None:
        self.links.append((a, b, ia, ib))

    def block(self, key: SpaceKey, reason: str) -> Outcome:
        self.blocks.append((key, reason))
        self.role = "blocker"
        return self


Rule = Callable[[GraphView, int, str, int], Outcome]

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


def _norm(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _in_pos(node: onnx.NodeProto, tensor: str) -> list[int]:
    return [k for k, x in enumerate(node.input) if x == tensor]


def _axes_of(g: GraphView, node: onnx.NodeProto, input_pos: int) -> list[int] | None:
    """`axes` from the attribute (old opsets) or from a constant input (new opsets)."""
    a = attr(node, "axes")
    if a is not None:
        return list(a)
    if len(node.input) > input_pos and node.input[input_pos]:
        v = g.const(node.input[input_pos])
        return None if v is None else [int(x) for x in v.reshape(-1)]
    return []


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
    ax = _norm(attr(n, "axis", -1), r)
    if t not in (x, y) or a >= ax:
        return out.block((t, a), "LayerNormalization normalizes over the channel axis")
    if any(o for o in n.output[1:]):
        return out.block((t, a), "LayerNormalization statistics outputs used")
    out.link((x, a), (y, a))
    return out


def rule_transpose(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    x, y = n.input[0], n.output[0]
    r = len(g.shape(x) or [])
    perm = list(attr(n, "perm", list(range(r))[::-1]))
    out = Outcome()
    if t == x:
        out.link((x, a), (y, perm.index(a)))
    else:
        out.link((x, perm[a]), (y, a))
    return out


def _renumber(g: GraphView, i: int, t: str, a: int, fwd: Callable[[int], int | None], what: str) -> Outcome:
    """Single-input ops that only renumber axes: fwd maps an input axis to its output axis."""
    n = g.nodes[i]
    x, y = n.input[0], n.output[0]
    out = Outcome()
    if t == x:
        b = fwd(a)
        if b is None:
            return out.block((t, a), what)
        out.link((x, a), (y, b))
        return out
    if t != y:
        return out.block((t, a), f"{n.op_type} parameter input")
    for ax in range(len(g.shape(x) or [])):
        if fwd(ax) == a:
            out.link((x, ax), (y, a))
            return out
    return out.block((t, a), what)


def rule_squeeze(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    s = g.shape(n.input[0]) or []
    axes = _axes_of(g, n, 1)
    if axes is None:
        return Outcome().block((t, a), "Squeeze with computed axes")
    axes = [_norm(x, len(s)) for x in axes] or [k for k, d in enumerate(s) if d == 1]
    return _renumber(g, i, t, a, lambda ax: None if ax in axes else ax - sum(1 for z in axes if z < ax), "squeezed")


def rule_unsqueeze(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    ro = len(g.shape(n.output[0]) or [])
    axes = _axes_of(g, n, 1)
    if axes is None:
        return Outcome().block((t, a), "Unsqueeze with computed axes")
    axes = sorted(_norm(x, ro) for x in axes)
    kept = [k for k in range(ro) if k not in axes]
    return _renumber(g, i, t, a, lambda ax: kept[ax] if ax < len(kept) else None, "Unsqueeze axes unknown")


def rule_reduce(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    s = g.shape(n.input[0]) or []
    new_style = g.opset >= 18 or (n.op_type == "ReduceSum" and g.opset >= 13)
    axes = _axes_of(g, n, 1) if new_style else list(attr(n, "axes", []))
    if axes is None:
        return Outcome().block((t, a), f"{n.op_type} with computed axes")
    axes = [_norm(x, len(s)) for x in axes]
    if not axes:
        if attr(n, "noop_with_empty_axes", 0):
            return _renumber(g, i, t, a, lambda ax: ax, "")
        return Outcome().block((t, a), f"{n.op_type} over every axis")
    keep = attr(n, "keepdims", 1)

    def fwd(ax: int) -> int | None:
        if ax in axes:
            return None
        return ax if keep else ax - sum(1 for z in axes if z < ax)

    return _renumber(g, i, t, a, fwd, f"{n.op_type} along the channel axis")


def rule_softmax(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    r = len(g.shape(n.input[0]) or [])
    if g.opset < 13:
        ax = _norm(attr(n, "axis", 1), r)
        ok = a < ax  # old semantics flatten [axis:] into one normalized dim
    else:
        ax = _norm(attr(n, "axis", -1), r)
        ok = a != ax
    if not ok:
        return Outcome().block((t, a), f"{n.op_type} along the channel axis")
    return _renumber(g, i, t, a, lambda z: z, "")


def rule_flatten(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    x, y = n.input[0], n.output[0]
    s = g.shape(x) or []
    k = _norm(attr(n, "axis", 1), len(s))
    out = Outcome(role="map")
    if t == y and a == 0 or t == x and a < k:
        return out.block((t, a), "Flatten merges the channel axis into the batch")
    if t == y:
        # find the input axis: the first non-1 axis at or after k (only the leading one maps cleanly)
        cand = [z for z in range(k, len(s)) if s[z] > 1]
        if not cand:
            return out.block((t, a), "Flatten of unit dims")
        a = cand[0]
    inner = int(np.prod(s[a + 1 :])) if a + 1 < len(s) else 1
    if int(np.prod(s[k:a])) != 1:
        return out.block((t, a), "Flatten: channel axis is not the leading merged axis")
    c = s[a]
    f = np.arange(c * inner)
    out.link((y, 1), (x, a), f, f // inner)
    return out


def _reshape_map(s: list[int], tshape: list[int], a: int) -> tuple[int, int, str] | None:
    """Where axis `a` of shape s lands in tshape: (out axis, factor, 'same'|'merge'|'split')."""
    outer = int(np.prod(s[:a])) if a else 1
    c = s[a]
    acc = 1
    for o, d in enumerate(tshape):
        if acc == outer and d != 1:
            if d == c:
                return o, 1, "same"
            if d % c == 0:
                return o, d // c, "merge"
            if c % d == 0:
                return o, c // d, "split"
            return None
        acc *= d
        if acc > outer:
            return None
    return None


def rule_reshape(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    x, y = n.input[0], n.output[0]
    s, ts = g.shape(x), g.shape(y)
    out = Outcome(role="map")
    if t not in (x, y):
        return out.block((t, a), "Reshape shape input")
    if s is None or ts is None:
        return out.block((t, a), "Reshape with unknown shapes")
    if t == y:
        m = _reshape_map(ts, s, a)
        if m is None:
            return out.block((t, a), "Reshape mixes the channel axis with other axes")
        xa, f, kind = m
        kind = {"merge": "split", "split": "merge", "same": "same"}[kind]
        ya = a
    else:
        m = _reshape_map(s, ts, a)
        if m is None:
            return out.block((t, a), "Reshape mixes the channel axis with other axes")
        ya, f, kind = m
        xa = a
    shp = g.const(n.input[1]) if len(n.input) > 1 else None
    if shp is not None:
        if shp.reshape(-1)[ya] > 0:
            out.rewrites.append(Rewrite("shape_entry", i, (y, ya), pos=1, entry=ya))
    else:
        # exporters build the shape as Concat(batch from Shape, ..., constant head count, ...): the
        # entry for the channel axis is then a constant piece that can be rewritten
        piece = _shape_piece(g, n.input[1], ya)
        if piece is None:
            return out.block((t, a), "Reshape with a computed shape")
        j, pos = piece
        if g.const(g.nodes[j].input[pos]).reshape(-1)[0] > 0:
            out.rewrites.append(Rewrite("shape_entry", j, (y, ya), pos=pos, entry=0))
    if kind == "same":
        out.link((x, xa), (y, ya))
    elif kind == "merge":  # output index j comes from input channel j // f
        j = np.arange(s[xa] * f)
        out.link((y, ya), (x, xa), j, j // f)
    else:  # split: input channel c goes to output index c // f (heads)
        c = np.arange(s[xa])
        out.link((x, xa), (y, ya), c, c // f)
    return out


def _shape_piece(g: GraphView, name: str, entry: int) -> tuple[int, int] | None:
    """(Concat node, input position) of the constant 1-element piece giving `entry` of a shape vector."""
    j = g.producer.get(name)
    if j is None or g.nodes[j].op_type != "Concat" or attr(g.nodes[j], "axis", 0) != 0:
        return None
    pos = 0
    for k, x in enumerate(g.nodes[j].input):
        s = g.shape(x)
        if s is None or len(s) != 1:
            return None
        if pos == entry:
            v = g.const(x)
            return (j, k) if s[0] == 1 and v is not None else None
        pos += s[0]
    return None


def rule_concat(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    y = n.output[0]
    r = len(g.shape(y) or [])
    ax = _norm(attr(n, "axis", 0), r)
    out = Outcome(role="map")
    off = 0
    for x in n.input:
        s = g.shape(x)
        if s is None:
            return out.block((t, a), "Concat operand with unknown shape")
        if a == ax:
            c = np.arange(s[ax])
            out.link((x, ax), (y, ax), c, c + off)
            off += s[ax]
        else:
            out.link((x, a), (y, a))
    return out


def rule_split(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    x = n.input[0]
    r = len(g.shape(x) or [])
    ax = _norm(attr(n, "axis", 0), r)
    out = Outcome(role="map")
    if t != x and t not in n.output:
        return out.block((t, a), "Split sizes input")
    if a != ax:
        for o in n.output:
            out.link((x, a), (o, a))
        return out
    off = 0
    for o in n.output:
        c = np.arange(g.dim(o, ax))
        out.link((x, ax), (o, ax), c + off, c)
        off += len(c)
    out.rewrites.append(Rewrite("split", i, (x, ax)))
    return out


def rule_slice(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    x, y = n.input[0], n.output[0]
    r = len(g.shape(x) or [])
    if g.opset < 10:
        axes = attr(n, "axes", list(range(len(attr(n, "starts", [])))))
    else:
        axes = _axes_of(g, n, 3) if len(n.input) > 3 and n.input[3] else None
        if axes is None:
            starts = g.const(n.input[1])
            axes = None if starts is None else list(range(starts.size))
    if axes is None or t not in (x, y):
        return Outcome().block((t, a), "Slice with computed axes")
    if a in [_norm(z, r) for z in axes]:
        return Outcome().block((t, a), "Slice along the channel axis")
    return _renumber(g, i, t, a, lambda z: z, "")


def rule_resize(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    x, y = n.input[0], n.output[0]
    out = Outcome()
    if t not in (x, y) or g.dim(x, a) != g.dim(y, a):
        return out.block((t, a), f"{n.op_type} scales the channel axis")
    sizes_pos = 3 if n.op_type == "Resize" else -1
    if sizes_pos > 0 and len(n.input) > 3 and n.input[3]:
        v = g.const(n.input[3])
        if v is None:
            return out.block((t, a), "Resize with computed sizes")
        out.rewrites.append(Rewrite("shape_entry", i, (y, a), pos=3, entry=a))
    out.link((x, a), (y, a))
    return out


def rule_pad(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    x, y = n.input[0], n.output[0]
    if t not in (x, y) or g.dim(x, a) != g.dim(y, a):
        return Outcome().block((t, a), "Pad along the channel axis")
    if len(n.input) > 2 and n.input[2]:
        v = g.const(n.input[2])
        if v is None or v.size != 1:
            return Outcome().block((t, a), "Pad with a non-scalar value")
    return _renumber(g, i, t, a, lambda z: z, "")


def rule_expand_tile(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    x, y = n.input[0], n.output[0]
    out = Outcome()
    rx, ry = len(g.shape(x) or []), len(g.shape(y) or [])
    if t not in (x, y):
        return out.block((t, a), f"{n.op_type} shape input")
    xa, ya = (a, a + ry - rx) if t == x else (a - (ry - rx), a)
    if xa < 0 or g.dim(x, xa) != g.dim(y, ya):
        return out.block((t, a), f"{n.op_type} along the channel axis")
    v = g.const(n.input[1])
    if v is None:
        return out.block((t, a), f"{n.op_type} with a computed shape")
    if n.op_type == "Expand":
        vi = ya - (ry - v.size)
        if vi >= 0 and v.reshape(-1)[vi] > 1:
            out.rewrites.append(Rewrite("shape_entry", i, (y, ya), pos=1, entry=vi))
    out.link((x, xa), (y, ya))
    return out


def rule_gather(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    x, idx, _y = n.input[0], n.input[1], n.output[0]
    rx = len(g.shape(x) or [])
    ax = _norm(attr(n, "axis", 0), rx)
    ri = len(g.shape(idx) or [])
    if t == idx:
        return Outcome().block((t, a), "Gather indices")

    def fwd(z: int) -> int | None:
        if z == ax:
            return None
        return z if z < ax else z - 1 + ri

    return _renumber(g, i, t, a, fwd, "Gather selects along the channel axis")


def rule_shape(g: GraphView, i: int, t: str, a: int) -> Outcome:
    """Shape only reads sizes; harmless unless the channel count flows somewhere."""
    n = g.nodes[i]
    r = len(g.shape(t) or [])
    start = _norm(attr(n, "start", 0), r)
    end = attr(n, "end")
    end = r if end is None else _norm(end, r)
    out = Outcome(role="reads shape")
    if not start <= a < end:
        return out
    for j, _ in g.consumers.get(n.output[0], []):
        c = g.nodes[j]
        v = g.const(c.input[1]) if c.op_type == "Gather" and len(c.input) > 1 else None
        if v is None or attr(c, "axis", 0) != 0 or (a - start) in v.reshape(-1).tolist():
            return out.block((t, a), "Shape reads the channel count")
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
        ax = _norm(attr(n, "axis", 1), len(g.shape(x) or []))
        if ax != a:
            return out.block((t, a), f"{n.op_type} per-axis on another axis")
        for p in n.input[1:3]:
            if p:
                out.link((y, a), (p, 0))
    return out


def rule_conv(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    x, w, y = n.input[0], n.input[1], n.output[0]
    b = n.input[2] if len(n.input) > 2 and n.input[2] else None
    out = Outcome(role="weight")
    if w not in g.init or (b and b not in g.init):
        return out.block((t, a), "Conv with a non-constant weight")
    ws = g.shape(w)
    grp = attr(n, "group", 1)
    cin, k = g.dim(x, 1), ws[0]
    on_out = (t == y and a == 1) or (t == w and a == 0) or (t == b and a == 0)
    on_in = (t == x and a == 1) or (t == w and a == 1)
    if not (on_out or on_in):
        return out.block((t, a), "Conv spatial or batch axis")
    out.link((y, 1), (w, 0))
    if b:
        out.link((y, 1), (b, 0))
    if grp == 1:
        out.link((x, 1), (w, 1))
        return out
    if grp == cin and ws[1] == 1:  # depthwise (channel multiplier m): input c feeds outputs c*m .. c*m+m-1
        kk = np.arange(k)
        out.link((y, 1), (x, 1), kk, kk // (k // cin))
        out.rewrites.append(Rewrite("group", i, (x, 1)))
        return out
    # grouped: the weight's input positions are shared by every group, so position p of each group is
    # one unit; outputs likewise keep an equal count per group (the group attribute stays).
    cg, kg = cin // grp, k // grp
    c = np.arange(cin)
    out.link((x, 1), (w, 1), c, c % cg)
    kk = np.arange(k)
    out.link((y, 1), (y, 1), kk, kk % kg)
    return out


def rule_conv_transpose(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    x, w, y = n.input[0], n.input[1], n.output[0]
    b = n.input[2] if len(n.input) > 2 and n.input[2] else None
    out = Outcome(role="weight")
    if w not in g.init or (b and b not in g.init):
        return out.block((t, a), "ConvTranspose with a non-constant weight")
    if attr(n, "group", 1) != 1:
        return out.block((t, a), "grouped ConvTranspose")
    if attr(n, "output_shape") is not None:
        return out.block((t, a), "ConvTranspose with output_shape")
    ok = (t in (x, y) and a == 1) or (t == w and a in (0, 1)) or (t == b and a == 0)
    if not ok:
        return out.block((t, a), "ConvTranspose spatial or batch axis")
    out.link((x, 1), (w, 0))
    out.link((y, 1), (w, 1))
    if b:
        out.link((y, 1), (b, 0))
    return out


def rule_gemm(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    x, w, y = n.input[0], n.input[1], n.output[0]
    c = n.input[2] if len(n.input) > 2 and n.input[2] else None
    out = Outcome(role="weight")
    if w not in g.init or (c and c not in g.init):
        return out.block((t, a), "Gemm with a non-constant weight")
    if attr(n, "transA", 0):
        return out.block((t, a), "Gemm with transA")
    tb = attr(n, "transB", 0)
    win, wout = (1, 0) if tb else (0, 1)
    if (t == x and a == 1) or (t == w and a == win):
        out.link((x, 1), (w, win))
        return out
    if (t == y and a == 1) or (t == w and a == wout) or (t == c):
        out.link((y, 1), (w, wout))
        cs = g.shape(c) if c else None
        if cs and cs[-1] > 1:
            out.link((y, 1), (c, len(cs) - 1))
        return out
    if t in (x, y) and a == 0:
        out.link((x, 0), (y, 0))
        return out
    return out.block((t, a), "Gemm axis")


def rule_matmul(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    x, w, y = n.input[0], n.input[1], n.output[0]
    sx, sw, sy = g.shape(x), g.shape(w), g.shape(y)
    out = Outcome(role="weight" if w in g.init else "pass")
    if x in g.init or sx is None or sw is None or sy is None or len(sx) < 2 or len(sw) < 2:
        return out.block((t, a), "MatMul with a constant left operand or 1-D operand")
    rx, rw, ry = len(sx), len(sw), len(sy)
    # contraction: x[-1] with w[-2]; rows: x[-2] with y[-2]; cols: w[-1] with y[-1]; batch: broadcast
    pairs = [((x, rx - 1), (w, rw - 2)), ((x, rx - 2), (y, ry - 2)), ((w, rw - 1), (y, ry - 1))]
    for k in range(ry - 2):
        members = [(y, k)]
        for tt, s in ((x, sx), (w, sw)):
            kk = k - (ry - len(s))
            if kk >= 0 and s[kk] == sy[k]:
                members.append((tt, kk))
        pairs.extend((members[0], m) for m in members[1:])
    for p, q in pairs:
        if (t, a) in (p, q):
            out.link(p, q)
    if not out.links:
        # a batch dim of a broadcast (size-1) operand, or no pairing
        return out.block((t, a), "MatMul broadcast axis")
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
