"""Read-mostly index over an ONNX graph: who produces and who consumes each tensor, and constants.

Passes ask the same questions (is this weight a constant? who else reads it? is this tensor a graph
output?) many times; building the maps once per pass keeps that linear and in one place.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

from onnxslim_compress.graph import weights

DEFAULT_DOMAINS = ("", "ai.onnx")


def subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name read inside the subgraphs of `graph`'s nodes (implicit captures included)."""
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for g in subs:
                for n in g.node:
                    names.update(i for i in n.input if i)
                names.update(o.name for o in g.output)
                names |= subgraph_inputs(g)
    return names


def has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


class GraphIndex:
    """Producers, consumers and constants of one graph (not its subgraphs)."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for o in node.output:
                if o:
                    self.producer[o] = node
            for i in node.input:
                if i:
                    self.consumers[i].append(node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.outputs = {o.name for o in graph.output}
        self.inputs = {i.name for i in graph.input}
        self.captured = subgraph_inputs(graph)
        self._names = {n.name for n in graph.node} | set(self.producer) | set(self.initializers) | self.inputs
        #: where new big tensors go when the model's weights are offloaded (weights.py), else None
        self.workspace = weights.Workspace.of(graph)

    def constant(self, name: str) -> np.ndarray | None:
        """Value of an initializer or Constant-node output, else None (a runtime tensor)."""
        if name in self.initializers and name not in self.inputs:
            return weights.read(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name == "value_float":
                    return np.array(a.f, dtype=np.float32)
                if a.name == "value_floats":
                    return np.array(list(a.floats), dtype=np.float32)
                if a.name == "value_int":
                    return np.array(a.i, dtype=np.int64)
                if a.name == "value_ints":
                    return np.array(list(a.ints), dtype=np.int64)
        return None

    def n_readers(self, name: str) -> int:
        """Readers of a tensor: consumer nodes, graph outputs and subgraph captures all count."""
        return len(self.consumers.get(name, [])) + (name in self.outputs) + (name in self.captured)

    def unique_name(self, base: str) -> str:
        name, k = base, 0
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def add_initializer(self, base: str, value: np.ndarray) -> str:
        name = self.unique_name(base)
        t = weights.new_tensor(value, name, self.workspace)
        self.graph.initializer.append(t)
        self.initializers[name] = t
        return name

    def replace_initializer(self, name: str, value: np.ndarray) -> None:
        self.initializers[name].CopyFrom(weights.new_tensor(value, name, self.workspace))


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for k, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[k]
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for n in model.graph.node:
        counts[n.op_type] += 1
    return dict(sorted(counts.items()))
