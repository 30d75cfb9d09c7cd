"""The graph view and result types shared by the channel coupling rules.

A *space* is (tensor name, axis). A rule looks at one node and one space of one of its tensors and
returns an Outcome: which other spaces are coupled (`link`, with index maps), which are frozen
(`block`, with a reason) and which attributes or shape constants the apply step must rewrite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxslim_compress.graph.index import Constants, attr, captures, node_links

SpaceKey = tuple[str, int]


class GraphView:
    """Read-only indexes over a model's main graph that every rule needs."""

    def __init__(self, model: onnx.ModelProto, shapes: dict[str, list[int]]):
        self.model = model
        self.graph = model.graph
        self.nodes = list(model.graph.node)
        self.shapes = shapes
        self.init = {t.name: t for t in model.graph.initializer}
        self._constants = Constants(model.graph, nodes=False)
        self.producer, self.consumers = node_links(self.nodes)
        self.outputs = {o.name for o in model.graph.output}
        self.inputs = {i.name for i in model.graph.input if i.name not in self.init}
        #: names read inside If/Loop/Scan bodies (outer-scope captures) -> the control-flow node
        self.implicit: dict[str, int] = captures(model.graph)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)

    def const(self, name: str) -> np.ndarray | None:
        """Value of an initializer (Constant nodes were turned into initializers beforehand)."""
        # offloaded weights are re-read, never all held (Constants caches only in-memory ones)
        return self._constants.get(name) if name else None

    def const_dtype(self, name: str) -> np.dtype:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(self.init[name].data_type))

    def shape(self, name: str) -> list[int] | None:
        return self.shapes.get(name)

    def dim(self, name: str, axis: int) -> int | None:
        s = self.shapes.get(name)
        if s is None or axis >= len(s):
            return None
        return int(s[axis])


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


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def axes_of(g: GraphView, node: onnx.NodeProto, input_pos: int) -> list[int] | None:
    """`axes` from the attribute (old opsets) or from a constant input (new opsets)."""
    a = attr(node, "axes")
    if a is not None:
        return list(a)
    if len(node.input) > input_pos and node.input[input_pos]:
        v = g.const(node.input[input_pos])
        return None if v is None else [int(x) for x in v.reshape(-1)]
    return []


def renumber(g: GraphView, i: int, t: str, a: int, fwd: Callable[[int], int | None], what: str) -> Outcome:
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


