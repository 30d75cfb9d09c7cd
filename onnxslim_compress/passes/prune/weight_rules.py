"""Coupling rules of weight-bearing ops: which weight axis is a channel's producer or consumer side.

Weights are spaces like any tensor, so a weight shared by two nodes couples them, and slicing every
initializer space is all the apply step has to do. Grouped and depthwise convs map channels onto
weight positions with index maps (equal count per group).
"""

from __future__ import annotations

import numpy as np

from onnxslim_compress.graph.index import attr
from onnxslim_compress.passes.prune.view import GraphView, Outcome, Rewrite


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


