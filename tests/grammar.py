"""A hypothesis strategy for random valid CNN/MLP graphs (the grammar of issue 8).

A graph is a list of steps drawn from: conv (1x1/3x3, stride 1/2, grouped or depthwise), conv-bn-relu,
activation, residual block (Add), two-branch Concat, Split + Concat, max/avg pooling, NHWC transpose
round trip; it ends in GlobalAveragePool -> Flatten -> Gemm or in Reshape -> MatMul. Shapes are tracked
while drawing so every graph is valid by construction.
"""

from __future__ import annotations

import numpy as np
from builders import GraphBuilder
from hypothesis import strategies as st

STEPS = ("conv", "cbr", "act", "residual", "concat", "split", "pool", "transpose")


@st.composite
def cnn_graphs(draw, max_steps: int = 6):
    seed = draw(st.integers(0, 10_000))
    b = GraphBuilder(seed)
    c = draw(st.sampled_from([2, 3, 4]))
    hw = draw(st.sampled_from([8, 12]))
    x, shape, c0 = "x", [1, c, hw, hw], c
    steps = draw(st.lists(st.sampled_from(STEPS), min_size=1, max_size=max_steps))
    for s in steps:
        c, h = shape[1], shape[2]
        if s == "conv":
            k = draw(st.sampled_from([1, 3]))
            stride = 2 if h >= 8 and draw(st.booleans()) else 1
            group = c if draw(st.booleans()) else 1
            cout = c if group > 1 else draw(st.sampled_from([2, 4, 6]))
            x = b.conv(x, c, cout, k=k, stride=stride, group=group, bias=draw(st.booleans()))
            shape = [1, cout, (h + 2 * (k // 2) - k) // stride + 1, (h + 2 * (k // 2) - k) // stride + 1]
        elif s == "cbr":
            cout = draw(st.sampled_from([4, 8]))
            x = b.conv_bn_relu(x, c, cout)
            shape = [1, cout, h, h]
        elif s == "act":
            x = b.node(draw(st.sampled_from(["Relu", "Sigmoid", "Tanh", "LeakyRelu"])), [x])
        elif s == "residual":
            y = b.bn(b.conv(x, c, c, bias=False), c)
            x = b.node("Relu", [b.node("Add", [y, x])])
        elif s == "concat":
            y1 = b.conv(x, c, 2, k=1)
            y2 = b.conv(x, c, 3)
            x = b.node("Concat", [y1, y2], axis=1)
            shape = [1, 5, h, h]
        elif s == "split" and c % 2 == 0:
            parts = b.node("Split", [x, b.init("split", np.array([c // 2, c // 2], np.int64))], n_out=2, axis=1)
            y = b.conv(parts[1], c // 2, c // 2)
            x = b.node("Concat", [parts[0], y], axis=1)
        elif s == "pool" and h >= 4:
            op = draw(st.sampled_from(["MaxPool", "AveragePool"]))
            x = b.node(op, [x], kernel_shape=[2, 2], strides=[2, 2])
            shape = [1, c, h // 2, h // 2]
        elif s == "transpose":
            t = b.node("Transpose", [x], perm=[0, 2, 3, 1])
            t = b.node("Relu", [t])
            x = b.node("Transpose", [t], perm=[0, 3, 1, 2])
    c = shape[1]
    if draw(st.booleans()):
        p = b.node("GlobalAveragePool", [x])
        f = b.node("Flatten", [p], axis=1)
        out = b.gemm(f, c, 5, trans_b=draw(st.sampled_from([0, 1])))
    else:
        r = b.node("Reshape", [x, b.init("shape", np.array([1, c, -1], np.int64))])
        t = b.node("Transpose", [r], perm=[0, 2, 1])  # [1, HW, C]
        w = b.init("M", (b.rng.standard_normal((c, 5)) * 0.3).astype(np.float32))
        out = b.node("MatMul", [t, w])
    return b.model([("x", [1, c0, hw, hw])], [(out, None)]), [1, c0, hw, hw]
