"""Turning a choice of pruned units into a smaller model, and counting its MACs.

MACs are counted per weight-bearing node from the analysed shapes with each channel dim replaced by
its kept count, so ratio targeting can evaluate thousands of candidate selections without building
a model. Apply slices every initializer space (weights, biases, BN parameters, broadcast constants)
and rewrites the attributes and shape constants the rules recorded (Conv group, Reshape/Expand/Resize
entries, Split sizes).
"""

from __future__ import annotations

import copy
from collections import defaultdict

import numpy as np
import onnx

from onnxslim_compress.graph import weights
from onnxslim_compress.graph.index import attr, drop_unused_initializers, set_attr
from onnxslim_compress.passes.prune.groups import ChannelAnalysis
from onnxslim_compress.passes.prune.rules import SpaceKey

Factor = tuple[str, int] | int


class MacModel:
    """MACs of every Conv/ConvTranspose/Gemm/MatMul as a product of (possibly pruned) dims."""

    def __init__(self, an: ChannelAnalysis):
        self.an = an
        self.formulas: dict[int, list[Factor]] = {}
        v = an.view
        for i in an.weight_nodes:
            n = v.nodes[i]
            x, y = n.input[0], n.output[0]
            sx, sy = v.shape(x), v.shape(y)
            sw = v.shape(n.input[1]) if len(n.input) > 1 else None
            if sx is None or sy is None or sw is None:
                continue
            if n.op_type == "Conv":
                f: list[Factor] = [(y, k) for k in range(len(sy))] + [(n.input[1], 1)] + [int(d) for d in sw[2:]]
            elif n.op_type == "ConvTranspose":
                f = [(x, k) for k in range(len(sx))] + [(n.input[1], 1)] + [int(d) for d in sw[2:]]
            elif n.op_type == "Gemm":
                f = [(y, 0), (y, 1), (x, 0 if attr(n, "transA", 0) else 1)]
            else:
                f = [(y, k) for k in range(len(sy))] + [(x, len(sx) - 1)]
            self.formulas[i] = f
        self._units = {k: an.units_of(k) for k in an.spaces}

    def dim(self, key: SpaceKey, pruned: np.ndarray) -> int:
        if key in self._units:
            u = self._units[key]
            return int(len(u) - pruned[u].sum())
        d = self.an.view.dim(*key)
        return int(d) if d is not None else 1

    def per_node(self, pruned: np.ndarray) -> dict[int, int]:
        out = {}
        for i, f in self.formulas.items():
            m = 1
            for x in f:
                m *= x if isinstance(x, int) else self.dim(x, pruned)
            out[i] = m
        return out

    def total(self, pruned: np.ndarray) -> int:
        return sum(self.per_node(pruned).values())

    def touches(self, i: int, gid: int) -> bool:
        return any(not isinstance(x, int) and self.an.space_group.get(x) == gid for x in self.formulas.get(i, []))

    def prunable_nodes(self) -> list[int]:
        """Nodes with at least one dim that holds a unit which is not frozen."""
        free = ~self.an.frozen
        return [
            i
            for i, f in self.formulas.items()
            if any(not isinstance(x, int) and x in self._units and free[self._units[x]].any() for x in f)
        ]


def kept_positions(an: ChannelAnalysis, key: SpaceKey, pruned: np.ndarray) -> np.ndarray:
    return np.nonzero(~pruned[an.units_of(key)])[0]


def new_dim(an: ChannelAnalysis, key: SpaceKey, pruned: np.ndarray) -> int:
    if key in an.spaces:
        return int(len(kept_positions(an, key, pruned)))
    d = an.view.dim(*key)
    return int(d) if d is not None else 0


def apply_pruning(an: ChannelAnalysis, pruned: np.ndarray) -> onnx.ModelProto:
    """A new model with the `pruned` units removed (the analysed model is not changed)."""
    m = copy.deepcopy(an.model)
    g = m.graph
    v = an.view
    ws = weights.Workspace.of(m)
    by_name = {t.name: t for t in g.initializer}
    axes: dict[str, list[int]] = defaultdict(list)
    for t, a in an.spaces:
        if t in v.init:
            axes[t].append(a)
    # one weight at a time, written as soon as it is cut: offloaded models never hold them all
    arrays: dict[str, np.ndarray] = {}  # small cut tensors, which shape rewrites below may read
    for t, t_axes in axes.items():
        arr, cut = None, False
        for a in t_axes:
            keep = kept_positions(an, (t, a), pruned)
            if len(keep) == an.spaces[(t, a)].size:
                continue
            arr = np.take(v.const(t) if arr is None else arr, keep, axis=a)
            cut = True
        if cut:
            arr = arr.astype(v.const_dtype(t))
            by_name[t].CopyFrom(weights.new_tensor(arr, t, ws))
            if not weights.is_offloaded(by_name[t]):
                arrays[t] = arr
    new_inits: dict[str, np.ndarray] = {}
    for r in an.rewrites:
        n = g.node[r.node]
        if r.kind == "group":
            for a in n.attribute:
                if a.name == "group":
                    a.i = new_dim(an, r.space, pruned)
        elif r.kind == "shape_entry":
            src = n.input[r.pos]
            name = src if src in new_inits else f"{src}__pruned{r.node}"
            arr = new_inits.get(name, np.array(arrays.get(src, v.const(src)), copy=True))
            arr.reshape(-1)[r.entry] = new_dim(an, r.space, pruned)
            new_inits[name] = arr
            n.input[r.pos] = name
        elif r.kind == "split":
            _rewrite_split(an, n, r.node, r.space[1], pruned, new_inits)
    for name, arr in new_inits.items():
        g.initializer.append(weights.new_tensor(arr, name, ws))
    drop_unused_initializers(g)
    del g.value_info[:]
    return m


def _rewrite_split(
    an: ChannelAnalysis, n: onnx.NodeProto, idx: int, axis: int, pruned: np.ndarray, new_inits: dict
) -> None:
    """Explicit split sizes after pruning (pieces may become unequal, so num_outputs cannot stay)."""
    sizes = [new_dim(an, (o, axis), pruned) for o in n.output]
    if an.view.opset < 13:
        set_attr(n, "split", sizes)
        return
    for a in list(n.attribute):
        if a.name == "num_outputs":
            n.attribute.remove(a)
    name = f"{n.name or 'split'}__sizes{idx}"
    new_inits[name] = np.asarray(sizes, dtype=np.int64)
    if len(n.input) > 1:
        n.input[1] = name
    else:
        n.input.append(name)
