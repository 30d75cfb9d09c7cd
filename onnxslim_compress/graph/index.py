"""The one home of the small graph questions every pass asks, and of the index that answers them.

Who produces and who consumes each tensor, what a constant's value is, which outer tensors an
If/Loop/Scan body reads, which names are free, which initializers nothing reads any more, and how a
Conv pads: passes ask these many times, so the answers live here once (docs/ARCHITECTURE.md, "graph/").
Building the maps once per pass keeps each question linear.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, numpy_helper

from onnxslim_compress.graph import weights

DEFAULT_DOMAINS = ("", "ai.onnx")

# --------------------------------------------------------------------------------------------------
# Attributes
# --------------------------------------------------------------------------------------------------


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of a node's attribute (ints, floats, strings as bytes, tensors...), else `default`."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def set_attr(node: onnx.NodeProto, name: str, value: Any) -> None:
    """Set (or replace) one attribute in place."""
    for k, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[k]
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Nodes of the main graph per op type, sorted by op type."""
    counts: dict[str, int] = defaultdict(int)
    for n in model.graph.node:
        counts[n.op_type] += 1
    return dict(sorted(counts.items()))


# --------------------------------------------------------------------------------------------------
# Subgraphs (If/Loop/Scan bodies)
# --------------------------------------------------------------------------------------------------


def node_subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The bodies a control-flow node holds directly (If branches, a Loop or Scan body)."""
    subs: list[onnx.GraphProto] = []
    for a in node.attribute:
        if a.type == AttributeProto.GRAPH:
            subs.append(a.g)
        elif a.type == AttributeProto.GRAPHS:
            subs.extend(a.graphs)
    return subs


def has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute)


def outer_names(body: onnx.GraphProto) -> set[str]:
    """Names a body reads (node inputs, and outputs passed straight through) but does not define:
    its implicit captures from the enclosing scopes, nested bodies included."""
    defined = {i.name for i in body.input} | {t.name for t in body.initializer}
    used: set[str] = set()
    for n in body.node:
        used.update(x for x in n.input if x)
        defined.update(n.output)
        for s in node_subgraphs(n):
            used |= outer_names(s)
    used.update(o.name for o in body.output)
    return used - defined


def captures(graph: onnx.GraphProto) -> dict[str, int]:
    """Tensor of `graph` read inside a body -> index of the (first) control-flow node whose body reads it."""
    out: dict[str, int] = {}
    for i, n in enumerate(graph.node):
        for s in node_subgraphs(n):
            for name in outer_names(s):
                out.setdefault(name, i)
    return out


def subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    """Every tensor of `graph` read inside the bodies of its nodes (implicit captures)."""
    return set(captures(graph))


def used_names(graph: onnx.GraphProto) -> set[str]:
    """Tensors something reads: a node input, a graph output or a body's capture."""
    used = {i for n in graph.node for i in n.input if i}
    used.update(o.name for o in graph.output)
    return used | subgraph_inputs(graph)


def drop_unused_initializers(graph: onnx.GraphProto, only: set[str] | None = None) -> set[str]:
    """In place: remove the initializers nothing reads (of those in `only`, if given); returns their names."""
    used = used_names(graph)
    gone = {t.name for t in graph.initializer if t.name not in used and (only is None or t.name in only)}
    if gone:
        keep = [t for t in graph.initializer if t.name not in gone]
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return gone


# --------------------------------------------------------------------------------------------------
# Producers and consumers
# --------------------------------------------------------------------------------------------------


def node_links(nodes: Sequence[onnx.NodeProto]) -> tuple[dict[str, int], dict[str, list[tuple[int, int]]]]:
    """(producer, consumers) by position: tensor -> index of the node writing it, and tensor ->
    [(node index, input slot)] in node order. Empty (omitted optional) names are left out."""
    producer: dict[str, int] = {}
    consumers: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for i, n in enumerate(nodes):
        for o in n.output:
            if o:
                producer[o] = i
        for k, x in enumerate(n.input):
            if x:
                consumers[x].append((i, k))
    return producer, consumers


# --------------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------------


def constant_tensor(node: onnx.NodeProto) -> TensorProto | None:
    """The tensor a standard Constant node holds (`value`, or `value_float(s)` / `value_int(s)` made
    into one), else None (sparse and string constants, other ops)."""
    if node.op_type != "Constant" or node.domain not in DEFAULT_DOMAINS:
        return None
    for a in node.attribute:
        if a.name == "value" and a.type == AttributeProto.TENSOR:
            return a.t
        if a.name == "value_float":
            return numpy_helper.from_array(np.array(a.f, dtype=np.float32))
        if a.name == "value_floats":
            return numpy_helper.from_array(np.array(list(a.floats), dtype=np.float32))
        if a.name == "value_int":
            return numpy_helper.from_array(np.array(a.i, dtype=np.int64))
        if a.name == "value_ints":
            return numpy_helper.from_array(np.array(list(a.ints), dtype=np.int64))
    return None


class Constants(Mapping[str, np.ndarray]):
    """name -> value of a graph's initializers (and Constant-node outputs unless nodes=False), read on access.

    In-memory values are cached; offloaded ones (weights.py) are read again each time, so iterating
    over every weight never holds them all."""

    def __init__(self, graph: onnx.GraphProto, *, nodes: bool = True):
        self.tensors: dict[str, TensorProto] = {t.name: t for t in graph.initializer}
        if nodes:
            for n in graph.node:
                t = constant_tensor(n)
                if t is not None and n.output:
                    self.tensors[n.output[0]] = t
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._cache:
            return self._cache[name]
        t = self.tensors[name]
        arr = weights.read(t)
        if not weights.is_offloaded(t):
            self._cache[name] = arr
        return arr

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __contains__(self, name: object) -> bool:
        return name in self.tensors


# --------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------


class UniqueNames:
    """Fresh names for new nodes and tensors: `base`, else `base_1`, `base_2`... never one in use."""

    def __init__(self, graph: onnx.GraphProto | None = None):
        """Every node and tensor name of `graph` counts as taken (None: nothing yet)."""
        self.used: set[str] = set()
        if graph is not None:
            self.used = {n.name for n in graph.node} | {t.name for t in graph.initializer}
            self.used |= {v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info)}
            self.used |= {x for n in graph.node for x in list(n.input) + list(n.output)}

    @classmethod
    def of(cls, taken: Iterable[str]) -> UniqueNames:
        """Fresh names avoiding exactly `taken` (e.g. node names only, which are their own namespace)."""
        names = cls()
        names.used = set(taken)
        return names

    def __call__(self, base: str) -> str:
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name


# --------------------------------------------------------------------------------------------------
# The index
# --------------------------------------------------------------------------------------------------


class GraphIndex:
    """Producers, consumers and constants of one graph (not its subgraphs)."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        nodes = list(graph.node)
        prod, cons = node_links(nodes)
        self.producer: dict[str, onnx.NodeProto] = {t: nodes[i] for t, i in prod.items()}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for t, slots in cons.items():
            self.consumers[t] = [nodes[i] for i, _ in slots]
        self.initializers = {t.name: t for t in graph.initializer}
        self.outputs = {o.name for o in graph.output}
        self.inputs = {i.name for i in graph.input}
        self.captured = subgraph_inputs(graph)
        self.names = UniqueNames(graph)
        #: where new big tensors go when the model's weights are offloaded (weights.py), else None
        self.workspace = weights.Workspace.of(graph)

    def constant(self, name: str) -> np.ndarray | None:
        """Value of an initializer or Constant-node output, else None (a runtime tensor)."""
        if name in self.initializers and name not in self.inputs:
            return weights.read(self.initializers[name])
        node = self.producer.get(name)
        t = constant_tensor(node) if node is not None else None
        return None if t is None else weights.read(t)

    def n_readers(self, name: str) -> int:
        """Readers of a tensor: consumer nodes, graph outputs and subgraph captures all count."""
        return len(self.consumers.get(name, [])) + (name in self.outputs) + (name in self.captured)

    def unique_name(self, base: str) -> str:
        return self.names(base)

    def add_initializer(self, base: str, value: np.ndarray) -> str:
        name = self.unique_name(base)
        t = weights.new_tensor(value, name, self.workspace)
        self.graph.initializer.append(t)
        self.initializers[name] = t
        return name

    def replace_initializer(self, name: str, value: np.ndarray) -> None:
        self.initializers[name].CopyFrom(weights.new_tensor(value, name, self.workspace))


# --------------------------------------------------------------------------------------------------
# Conv geometry
# --------------------------------------------------------------------------------------------------


def conv_pads(in_spatial: list[int], kernel: list[int], strides: list[int], dilations: list[int],
              pads: list[int], auto_pad: str | bytes) -> list[int]:
    """Explicit [begin..., end...] pads of a Conv, resolving auto_pad against the input size."""
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    nd = len(kernel)
    if auto_pad in ("", "NOTSET"):
        return list(pads) if pads else [0] * (2 * nd)
    if auto_pad == "VALID":
        return [0] * (2 * nd)
    begin, end = [], []
    for size, k, s, d in zip(in_spatial, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        b = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        begin.append(b)
        end.append(total - b)
    return begin + end


def patches(x: np.ndarray, kernel: list[int], strides: list[int], dilations: list[int], pads: list[int],
            positions: np.ndarray | None = None) -> np.ndarray:
    """im2col: rows of (c, k1, k2, ...) patches of an (N, C, *spatial) tensor, one row per output
    position (raster order), or only at the flat output `positions` (for N = 1, without building the rest).

    The column order matches W.reshape(f, -1), so the Gram of these rows whitens the folded Conv
    weight exactly as X^T X whitens a Gemm weight.
    """
    nd = len(kernel)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)])
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    v = np.lib.stride_tricks.sliding_window_view(xp, eff, axis=tuple(range(2, 2 + nd)))
    # v: (N, C, O1', ..., e1, ...): stride over the output axes, dilate over the window axes
    v = v[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)
          + tuple(slice(None, None, d) for d in dilations)]
    n, c = v.shape[:2]
    out = v.shape[2 : 2 + nd]
    if positions is not None:
        idx = np.unravel_index(positions, out)
        sel = v[(slice(None), slice(None)) + idx]  # (N, C, P, k1, ...)
        return np.moveaxis(sel, 2, 1).reshape(n * len(positions), c * int(np.prod(kernel)))
    order = [0] + list(range(2, 2 + nd)) + [1] + list(range(2 + nd, 2 + 2 * nd))
    return v.transpose(order).reshape(n * int(np.prod(out)), c * int(np.prod(kernel)))


# ------------------------------------------------------------------------------------------------
# control-flow bodies (If / Loop / Scan): walking them, the names they define, renaming inside them


def node_bodies(node: onnx.NodeProto) -> list[tuple[str, onnx.GraphProto]]:
    """(attribute name, graph) of every subgraph attribute of `node` (GRAPHS lists get `name[k]`)."""
    out: list[tuple[str, onnx.GraphProto]] = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append((a.name, a.g))
        elif a.type == onnx.AttributeProto.GRAPHS:
            out += [(f"{a.name}[{k}]", g) for k, g in enumerate(a.graphs)]
    return out


def iter_bodies(graph: onnx.GraphProto, prefix: str = "") -> list[tuple[str, onnx.NodeProto, onnx.GraphProto, onnx.GraphProto]]:
    """Every body below `graph`, outer before inner: (path, owning node, body, parent graph).

    The path ("If_0/then_branch/Loop_3/body") names a body in reports; it is stable across passes
    that keep node names.
    """
    out = []
    for node in graph.node:
        for attr_name, body in node_bodies(node):
            path = f"{prefix}{node.name or node.output[0]}/{attr_name}"
            out.append((path, node, body, graph))
            out += iter_bodies(body, path + "/")
    return out


def graph_defs(graph: onnx.GraphProto) -> list[str]:
    """Names `graph` itself defines: its inputs, initializers and node outputs (not its bodies')."""
    names = [i.name for i in graph.input] + [t.name for t in graph.initializer]
    names += [o for n in graph.node for o in n.output if o]
    return names


def rename_tensors(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """In place: rename tensors in `graph` and in the bodies below it (defs and every reference).

    A body that defines a name itself shadows the outer one there, so the mapping stops at it.
    """
    if not mapping:
        return
    for coll in (graph.input, graph.output, graph.value_info):
        for vi in coll:
            if vi.name in mapping:
                vi.name = mapping[vi.name]
    for t in graph.initializer:
        if t.name in mapping:
            t.name = mapping[t.name]
    for n in graph.node:
        for k, i in enumerate(n.input):
            if i in mapping:
                n.input[k] = mapping[i]
        for k, o in enumerate(n.output):
            if o in mapping:
                n.output[k] = mapping[o]
        for _, body in node_bodies(n):
            local = set(graph_defs(body))
            rename_tensors(body, {k: v for k, v in mapping.items() if k not in local})


def all_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name defined or read anywhere in `graph` and its bodies."""
    names = set(graph_defs(graph)) | {o.name for o in graph.output}
    names |= {i for n in graph.node for i in n.input if i}
    for _, _, body, _ in iter_bodies(graph):
        names |= set(graph_defs(body)) | {o.name for o in body.output}
        names |= {i for n in body.node for i in n.input if i}
    return names


def uniquify_body_names(graph: onnx.GraphProto) -> int:
    """In place: rename every body-defined tensor whose name is defined elsewhere too (the parent,
    a sibling branch, a body visited earlier), so each name in the model means one tensor.

    Why: inlining a branch, lifting body tensors out for calibration and merging a rewritten body
    back all key tensors by name; two branches that both define `x` would clash. Returns the count.
    """
    taken = all_names(graph)
    seen = set(graph_defs(graph))
    renamed = 0

    def fresh(base: str) -> str:
        k = 1
        while f"{base}__{k}" in taken:
            k += 1
        taken.add(f"{base}__{k}")
        return f"{base}__{k}"

    def visit(g: onnx.GraphProto) -> None:
        nonlocal renamed
        for n in g.node:
            for _, body in node_bodies(n):
                mapping = {}
                for name in graph_defs(body):
                    if name in seen and name not in mapping:
                        mapping[name] = fresh(name)
                    seen.add(mapping.get(name, name))
                rename_tensors(body, mapping)
                renamed += len(mapping)
                visit(body)

    visit(graph)
    return renamed
