"""Small ONNX graphs for tests, built with onnx.helper. Weights are seeded random numbers."""

from __future__ import annotations

import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress.graph.costs import count_costs


class GraphBuilder:
    """Accumulates nodes/initializers; `conv_bn_relu` etc. return the output tensor name."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.k = 0

    def name(self, base: str) -> str:
        self.k += 1
        return f"{base}{self.k}"

    def init(self, base: str, arr: np.ndarray) -> str:
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), n))
        return n

    def node(self, op: str, inputs: list[str], n_out: int = 1, domain: str = "", **attrs) -> str | list[str]:
        nm = self.name(op.lower())
        outs = [f"{nm}_out{i}" if n_out > 1 else f"{nm}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=nm, domain=domain, **attrs))
        return outs if n_out > 1 else outs[0]

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, group: int = 1, bias: bool = True, dilation: int = 1) -> str:
        w = self.init("W", (self.rng.standard_normal((cout, cin // group, k, k)) * 0.3).astype(np.float32))
        ins = [x, w]
        if bias:
            ins.append(self.init("B", self.rng.standard_normal(cout).astype(np.float32) * 0.1))
        pad = (k // 2) * dilation
        return self.node("Conv", ins, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, group=group, dilations=[dilation] * 2)

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        ins = [
            x,
            self.init("gamma", (r.random(c) + 0.5).astype(np.float32)),
            self.init("beta", r.standard_normal(c).astype(np.float32) * 0.1),
            self.init("mean", r.standard_normal(c).astype(np.float32) * 0.1),
            self.init("var", (r.random(c) + 0.5).astype(np.float32)),
        ]
        return self.node("BatchNormalization", ins, epsilon=1e-5)

    def conv_bn_relu(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, bias: bool = False) -> str:
        return self.node("Relu", [self.bn(self.conv(x, cin, cout, k, stride, bias=bias), cout)])

    def gemm(self, x: str, k: int, n: int, trans_b: int = 1, alpha: float = 1.0, beta: float = 1.0) -> str:
        shape = (n, k) if trans_b else (k, n)
        w = self.init("G", (self.rng.standard_normal(shape) * 0.2).astype(np.float32))
        b = self.init("C", self.rng.standard_normal(n).astype(np.float32) * 0.1)
        return self.node("Gemm", [x, w, b], transB=trans_b, alpha=alpha, beta=beta)

    def model(
        self, inputs: list[tuple[str, list]], outputs: list[tuple[str, list | None]], opset: int = 13,
        domains: dict[str, int] | None = None,
    ) -> onnx.ModelProto:
        g = helper.make_graph(
            self.nodes,
            "test",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
            self.inits,
        )
        ops = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (domains or {}).items()]
        m = helper.make_model(g, opset_imports=ops)
        m.ir_version = 8
        if any(s is None for _, s in outputs):  # fill unknown output shapes from inference
            inf = onnx.shape_inference.infer_shapes(m).graph
            inferred = {v.name: v for v in list(inf.value_info) + list(inf.output) if v.type.tensor_type.HasField("shape")}
            for o in m.graph.output:
                if o.name in inferred:
                    o.CopyFrom(inferred[o.name])
        onnx.checker.check_model(m)
        return m


def resnet_like(seed: int = 0, batch: int | str = 1, opset: int = 13) -> onnx.ModelProto:
    """Stem conv-bn-relu, one basic block with identity residual, one with a stride-2 projection, GAP, Gemm.

    The MAC count for batch 1 at 3x16x16 input is computed by hand in test_macs / test_cli.
    """
    b = GraphBuilder(seed)
    x = "input"
    s = b.conv_bn_relu(x, 3, 8)  # 8x16x16
    y = b.conv_bn_relu(s, 8, 8)
    y = b.bn(b.conv(y, 8, 8, bias=False), 8)
    s = b.node("Relu", [b.node("Add", [y, s])])
    y = b.conv_bn_relu(s, 8, 16, stride=2)  # 16x8x8
    y = b.bn(b.conv(y, 16, 16, bias=False), 16)
    proj = b.bn(b.conv(s, 8, 16, k=1, stride=2, bias=False), 16)
    s = b.node("Relu", [b.node("Add", [y, proj])])
    p = b.node("GlobalAveragePool", [s])
    f = b.node("Flatten", [p], axis=1)
    b.gemm(f, 16, 10)
    b.nodes[-1].output[0] = "logits"
    return b.model([("input", [batch, 3, 16, 16])], [("logits", [batch, 10])], opset=opset)


def lstm_net(hidden: int = 8, seq: int = 6) -> onnx.ModelProto:
    """x [seq, 1, 5] -> LSTM -> Squeeze -> MatMul: out [seq, 1, 3] (the speech models of issue 14)."""
    rng = np.random.default_rng(0)
    b = GraphBuilder(0)
    w = b.init("W", (rng.standard_normal((1, 4 * hidden, 5)) * 0.3).astype(np.float32))
    r = b.init("R", (rng.standard_normal((1, 4 * hidden, hidden)) * 0.3).astype(np.float32))
    bias = b.init("Bb", (rng.standard_normal((1, 8 * hidden)) * 0.1).astype(np.float32))
    y, _, _ = b.node("LSTM", ["x", w, r, bias], n_out=3, hidden_size=hidden)
    sq = b.node("Squeeze", [y, b.init("ax", np.array([1], np.int64))])
    b.node("MatMul", [sq, b.init("P", (rng.standard_normal((hidden, 3)) * 0.5).astype(np.float32))])
    b.nodes[-1].output[0] = "out"
    return b.model([("x", [seq, 1, 5])], [("out", [seq, 1, 3])], opset=13)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    from onnxslim_compress.runtime.session import Target, make_session

    return make_session(model, Target(kind="cpu", threads=1)).run(None, feeds)


def random_input(shape, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def zero_channels(b: GraphBuilder, name: str, axis: int, idx: list[int]) -> None:
    """Zero the channels `idx` of initializer `name` along `axis` (makes those channels dead)."""
    for k, t in enumerate(b.inits):
        if t.name == name:
            a = numpy_helper.to_array(t).copy()
            sl = [slice(None)] * a.ndim
            sl[axis] = idx
            a[tuple(sl)] = 0
            b.inits[k] = numpy_helper.from_array(a, name)
            return
    raise KeyError(name)


def conv_dead(b: GraphBuilder, x: str, cin: int, cout: int, k: int = 3, group: int = 1, bias: bool = True, dead=()):
    """Conv whose output channels in `dead` are zero (weights and bias)."""
    n0 = len(b.inits)
    y = b.conv(x, cin, cout, k=k, group=group, bias=bias)
    names = [t.name for t in b.inits[n0:]]
    for nm in names:
        zero_channels(b, nm, 0, list(dead))
    return y


def bn_dead(b: GraphBuilder, x: str, c: int, dead=()) -> str:
    """BatchNorm whose channels in `dead` have gamma = beta = 0."""
    n0 = len(b.inits)
    y = b.bn(x, c)
    gamma, beta = b.inits[n0].name, b.inits[n0 + 1].name
    zero_channels(b, gamma, 0, list(dead))
    zero_channels(b, beta, 0, list(dead))
    return y


def cbr_dead(b, x, cin, cout, dead=(), k=3, act="Relu"):
    """Conv-BN-activation whose output channels in `dead` are exactly zero."""
    y = bn_dead(b, conv_dead(b, x, cin, cout, k=k, bias=False, dead=dead), cout, dead)
    if act == "SiLU":
        return b.node("Mul", [y, b.node("Sigmoid", [y])])
    return b.node(act, [y])


def ref_macs(m: onnx.ModelProto) -> int:
    """MACs of Conv/Gemm/MatMul from the independent counter (onnxslim_compress.graph.costs)."""
    return sum(n.macs for n in count_costs(m).nodes if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"))


class StairTable:
    """A fake latency table: ms = (cout rounded up to `step`) * (cin rounded up to `step`; cin/group
    for grouped convs) * k^2 * output positions * 1e-6 + 1e-3, i.e. linear in MACs with stair-steps
    of `step` channels in both channel dimensions. Deterministic.

    `noise` (relative) gives every entry `rounds` repeats spread deterministically (seeded by the
    key) within +-noise of it, and a measured noise of noise x the entry; 0 is an exact table."""

    def __init__(self, target=None, step: int = 8, flat: bool = False, noise: float = 0.0, rounds: int = 5, **_):
        self.step, self.flat, self.measured = step, flat, 0
        self.noise_share, self.rounds = noise, rounds
        self.calls = 0

    def latency(self, spec, cout: int) -> float:
        self.calls += 1
        if self.flat:
            return 1.0
        c = -(-cout // self.step) * self.step
        group, kernel = getattr(spec, "group", 1), getattr(spec, "kernel", 1)  # a MatMulSpec: 1x1, rows positions
        hw, stride = getattr(spec, "hw", (1, getattr(spec, "rows", 1))), getattr(spec, "stride", 1)
        cin = -(-spec.cin // self.step) * self.step if group == 1 else spec.cin // group
        h, w = hw[0] // stride, hw[1] // stride
        return c * cin * kernel**2 * h * w * 1e-6 + 1e-3

    def repeats(self, spec, cout: int) -> list[float]:
        ms = self.latency(spec, cout)
        if not self.noise_share:
            return [ms]
        rng = np.random.default_rng(zlib.crc32(spec.key(cout).encode()))
        return [ms * (1.0 + self.noise_share * u) for u in rng.uniform(-1.0, 1.0, self.rounds)]

    def noise(self, spec, cout: int) -> float:
        return self.noise_share * self.latency(spec, cout)

    def save(self):
        return None


def ctc_head() -> onnx.ModelProto:
    """A CTC-like head: x [1, 12, 16] -> MatMul -> Relu -> MatMul -> Relu -> MatMul -> scores
    [1, 12, 6] whose six class columns differ by little (0.02), so int8 rounding flips frames
    (minmax int8 changes 4 of 16 decoded texts on standard-normal inputs of seeds 0-15)."""
    rng = np.random.default_rng(1)
    w1 = (rng.standard_normal((16, 32)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((32, 32)) * 0.2).astype(np.float32)
    w3 = (rng.standard_normal((32, 1)) * 0.3 + 0.02 * rng.standard_normal((32, 6))).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "s1"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "s2"], ["h2"], name="mm2"), helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("MatMul", ["r2", "s3"], ["y"], name="mm3"),
    ]
    inits = [numpy_helper.from_array(w, n) for w, n in ((w1, "s1"), (w2, "s2"), (w3, "s3"))]
    g = helper.make_graph(nodes, "ctc_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12, 6])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    onnx.checker.check_model(m)
    return m
