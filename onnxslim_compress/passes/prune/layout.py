"""Coupling rules of ops that move or remap the channel axis without weights.

Transpose/Squeeze/Unsqueeze renumber the axis (NHWC graphs); Concat/Split add offsets; Flatten and
Reshape merge or split it (Flatten->Gemm heads, attention heads); Resize/Pad/Expand/Tile/Gather/Slice
pass it through when they leave it alone and block otherwise. Reduce*/Softmax renumber or block
depending on whether they act along the channel axis.
"""

from __future__ import annotations

import numpy as np

from onnxslim_compress.graph.index import attr
from onnxslim_compress.passes.prune.view import (
    GraphView,
    Outcome,
    Rewrite,
    axes_of,
    norm_axis,
    renumber,
)


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


def rule_squeeze(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    s = g.shape(n.input[0]) or []
    axes = axes_of(g, n, 1)
    if axes is None:
        return Outcome().block((t, a), "Squeeze with computed axes")
    axes = [norm_axis(x, len(s)) for x in axes] or [k for k, d in enumerate(s) if d == 1]
    return renumber(g, i, t, a, lambda ax: None if ax in axes else ax - sum(1 for z in axes if z < ax), "squeezed")


def rule_unsqueeze(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    ro = len(g.shape(n.output[0]) or [])
    axes = axes_of(g, n, 1)
    if axes is None:
        return Outcome().block((t, a), "Unsqueeze with computed axes")
    axes = sorted(norm_axis(x, ro) for x in axes)
    kept = [k for k in range(ro) if k not in axes]
    return renumber(g, i, t, a, lambda ax: kept[ax] if ax < len(kept) else None, "Unsqueeze axes unknown")


def rule_reduce(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    s = g.shape(n.input[0]) or []
    new_style = g.opset >= 18 or (n.op_type == "ReduceSum" and g.opset >= 13)
    axes = axes_of(g, n, 1) if new_style else list(attr(n, "axes", []))
    if axes is None:
        return Outcome().block((t, a), f"{n.op_type} with computed axes")
    axes = [norm_axis(x, len(s)) for x in axes]
    if not axes:
        if attr(n, "noop_with_empty_axes", 0):
            return renumber(g, i, t, a, lambda ax: ax, "")
        return Outcome().block((t, a), f"{n.op_type} over every axis")
    keep = attr(n, "keepdims", 1)

    def fwd(ax: int) -> int | None:
        if ax in axes:
            return None
        return ax if keep else ax - sum(1 for z in axes if z < ax)

    return renumber(g, i, t, a, fwd, f"{n.op_type} along the channel axis")


def rule_softmax(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    r = len(g.shape(n.input[0]) or [])
    if g.opset < 13:
        ax = norm_axis(attr(n, "axis", 1), r)
        ok = a < ax  # old semantics flatten [axis:] into one normalized dim
    else:
        ax = norm_axis(attr(n, "axis", -1), r)
        ok = a != ax
    if not ok:
        return Outcome().block((t, a), f"{n.op_type} along the channel axis")
    return renumber(g, i, t, a, lambda z: z, "")


def rule_flatten(g: GraphView, i: int, t: str, a: int) -> Outcome:
    n = g.nodes[i]
    x, y = n.input[0], n.output[0]
    s = g.shape(x) or []
    k = norm_axis(attr(n, "axis", 1), len(s))
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
    ax = norm_axis(attr(n, "axis", 0), r)
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
    ax = norm_axis(attr(n, "axis", 0), r)
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
        axes = axes_of(g, n, 3) if len(n.input) > 3 and n.input[3] else None
        if axes is None:
            starts = g.const(n.input[1])
            axes = None if starts is None else list(range(starts.size))
    if axes is None or t not in (x, y):
        return Outcome().block((t, a), "Slice with computed axes")
    if a in [norm_axis(z, r) for z in axes]:
        return Outcome().block((t, a), "Slice along the channel axis")
    return renumber(g, i, t, a, lambda z: z, "")


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
    return renumber(g, i, t, a, lambda z: z, "")


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
    ax = norm_axis(attr(n, "axis", 0), rx)
    ri = len(g.shape(idx) or [])
    if t == idx:
        return Outcome().block((t, a), "Gather indices")

    def fwd(z: int) -> int | None:
        if z == ax:
            return None
        return z if z < ax else z - 1 + ri

    return renumber(g, i, t, a, fwd, "Gather selects along the channel axis")


def rule_shape(g: GraphView, i: int, t: str, a: int) -> Outcome:
    """Shape only reads sizes; harmless unless the channel count flows somewhere."""
    n = g.nodes[i]
    r = len(g.shape(t) or [])
    start = norm_axis(attr(n, "start", 0), r)
    end = attr(n, "end")
    end = r if end is None else norm_axis(end, r)
    out = Outcome(role="reads shape")
    if not start <= a < end:
        return out
    for j, _ in g.consumers.get(n.output[0], []):
        c = g.nodes[j]
        if c.op_type == "Slice":
            picked = _sliced_entries(g, c, end - start)
            if picked is not None and (a - start) not in picked:
                continue  # e.g. Slice(Shape(t), 0, 1): the batch size of a flatten, not the channels
            return out.block((t, a), "Shape reads the channel count")
        v = g.const(c.input[1]) if c.op_type == "Gather" and len(c.input) > 1 else None
        if v is None or attr(c, "axis", 0) != 0 or (a - start) in v.reshape(-1).tolist():
            return out.block((t, a), "Shape reads the channel count")
    return out


def _sliced_entries(g: GraphView, n, size: int) -> range | None:
    """The entries of a 1-D tensor of `size` that Slice (opset >= 10, constant starts/ends) keeps;
    None when they are not constant."""
    if len(n.input) < 3:
        return None
    starts, ends, axes, steps = (g.const(n.input[k]) if k < len(n.input) and n.input[k] else None for k in range(1, 5))
    if starts is None or ends is None or starts.size != 1 or ends.size != 1:
        return None
    if axes is not None and int(axes.reshape(-1)[0]) not in (0, -1):
        return None
    step = 1 if steps is None else int(steps.reshape(-1)[0])
    return range(size)[slice(int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0]), step)]


