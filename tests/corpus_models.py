"""Models shaped like the ones real exporters write (issue 8 corpus), built with onnx.helper.

Each builder returns a CorpusModel: the model plus concrete feeds (a few samples, used both as
calibration data and to compare outputs). What each one imitates:
  opset{7..21}   a ResNet-like CNN (conv/BN/relu/residual/GAP/Gemm) declared at that opset
  nhwc           tf2onnx: NHWC input, Transpose to NCHW first, Dense as MatMul + Add
  dynamic        transformer MLP block with symbolic batch and sequence dims, Erf-GELU, LayerNorm
  control_flow   If (weights inside both branches), Loop and Scan bodies between convolutions
  contrib        com.microsoft FusedConv and Gelu (ORT contrib ops) between plain convolutions
  fp16           an all-float16 model (weights, inputs and outputs)
  init_inputs    initializers also listed as graph inputs (IR 3 exporters)
  shared         one weight read by two Convs and one by two MatMuls
  empty_names / dup_names   nodes without names / all with the same name
  no_shapes      value_info stripped, outputs without shape, input dims symbolic
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from builders import GraphBuilder, resnet_like
from onnx import TensorProto, helper, numpy_helper


@dataclass
class CorpusModel:
    name: str
    model: onnx.ModelProto
    feeds: list[dict[str, np.ndarray]]


def _feeds(shapes: dict[str, list[int]], n: int = 4, seed: int = 1, dtype=np.float32) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()} for _ in range(n)]


def opset_cnn(opset: int) -> CorpusModel:
    m = resnet_like(seed=opset, opset=opset)
    return CorpusModel(f"opset{opset}", m, _feeds({"input": [1, 3, 16, 16]}))


def nhwc() -> CorpusModel:
    b = GraphBuilder(11)
    t = b.node("Transpose", ["input"], perm=[0, 3, 1, 2])
    y = b.conv_bn_relu(t, 3, 16)
    y = b.node("Relu", [b.conv(y, 16, 16)])
    y = b.conv(y, 16, 8, k=1)
    y = b.node("Transpose", [y], perm=[0, 2, 3, 1])  # back to NHWC as TF graphs do
    y = b.node("ReduceMean", [y], axes=[1, 2], keepdims=0)
    w = b.init("dense_W", (b.rng.standard_normal((8, 10)) * 0.3).astype(np.float32))
    y = b.node("MatMul", [y, w])
    y = b.node("Add", [y, b.init("dense_b", b.rng.standard_normal(10).astype(np.float32))])
    b.nodes[-1].output[0] = "logits"
    m = b.model([("input", [1, 16, 16, 3])], [("logits", [1, 10])], opset=13)
    return CorpusModel("nhwc", m, _feeds({"input": [1, 16, 16, 3]}))


def dynamic() -> CorpusModel:
    b = GraphBuilder(12)
    d, h = 32, 96
    w1 = b.init("fc1_W", (b.rng.standard_normal((d, h)) * 0.2).astype(np.float32))
    y = b.node("Add", [b.node("MatMul", ["tokens", w1]), b.init("fc1_b", np.zeros(h, np.float32) + 0.1)])
    # GELU as exporters write it before opset 20: x * 0.5 * (1 + erf(x / sqrt 2))
    e = b.node("Erf", [b.node("Div", [y, b.init("sqrt2", np.array(np.sqrt(2.0), np.float32))])])
    e = b.node("Add", [e, b.init("one", np.array(1.0, np.float32))])
    y = b.node("Mul", [b.node("Mul", [y, e]), b.init("half", np.array(0.5, np.float32))])
    w2 = b.init("fc2_W", (b.rng.standard_normal((h, d)) * 0.2).astype(np.float32))
    y = b.node("Add", [b.node("MatMul", [y, w2]), b.init("fc2_b", np.zeros(d, np.float32))])
    y = b.node("Add", [y, "tokens"])
    y = b.node("LayerNormalization", [y, b.init("ln_g", np.ones(d, np.float32)), b.init("ln_b", np.zeros(d, np.float32))],
               axis=-1, epsilon=1e-5)
    b.nodes[-1].output[0] = "hidden"
    m = b.model([("tokens", ["batch", "seq", d])], [("hidden", ["batch", "seq", d])], opset=17)
    return CorpusModel("dynamic", m, _feeds({"tokens": [2, 7, d]}))


def control_flow() -> CorpusModel:
    """conv -> If(cond from a ReduceMean) with a Conv in each branch -> Loop (3 x Relu+Add) -> Scan over rows."""
    b = GraphBuilder(13)
    y = b.conv_bn_relu("input", 3, 8)
    c = b.node("Greater", [b.node("ReduceMean", [y], keepdims=0), b.init("zero", np.array(0.0, np.float32))])

    def branch(tag: str, scale: float) -> onnx.GraphProto:
        w = numpy_helper.from_array((b.rng.standard_normal((8, 8, 3, 3)) * 0.3 * scale).astype(np.float32), f"{tag}_W")
        n = helper.make_node("Conv", [y, f"{tag}_W"], [f"{tag}_out"], name=f"{tag}_conv", pads=[1, 1, 1, 1])
        return helper.make_graph([n], tag, [], [helper.make_tensor_value_info(f"{tag}_out", TensorProto.FLOAT, None)], [w])

    iff = helper.make_node("If", [c], ["if_out"], name="if0", then_branch=branch("then", 1.0), else_branch=branch("else", 0.5))
    b.nodes.append(iff)
    # Loop: 3 iterations of acc = relu(acc) + bias (bias captured from the outer graph)
    bias = b.init("loop_bias", np.full((1, 8, 1, 1), 0.01, np.float32))
    body = helper.make_graph(
        [helper.make_node("Relu", ["acc_in"], ["r"]), helper.make_node("Add", ["r", bias], ["acc_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "loop_body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None)],
    )
    trip = b.init("trip", np.array(3, np.int64))
    cond = b.init("cond", np.array(True))
    b.nodes.append(helper.make_node("Loop", [trip, cond, "if_out"], ["loop_out"], name="loop0", body=body))
    y = b.conv("loop_out", 8, 8, k=1)
    p = b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1)  # [1, 8]
    # Scan over the rows of p reshaped to [4, 2]: running sum state, MatMul per row inside the body
    rows = b.node("Reshape", [p, b.init("rs", np.array([4, 2], np.int64))])
    sw = numpy_helper.from_array(np.array([[1.0, -1.0, 0.5], [0.25, 2.0, -0.5]], np.float32), "scan_W")
    sbody = helper.make_graph(
        [helper.make_node("Unsqueeze", ["row", "ax0"], ["row2"]), helper.make_node("MatMul", ["row2", "scan_W"], ["prod"]),
         helper.make_node("Add", ["s_in", "prod"], ["s_out"]), helper.make_node("Identity", ["prod"], ["scan_out"])],
        "scan_body",
        [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [1, 3]), helper.make_tensor_value_info("row", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [1, 3]), helper.make_tensor_value_info("scan_out", TensorProto.FLOAT, [1, 3])],
        [sw, numpy_helper.from_array(np.array([0], np.int64), "ax0")],
    )
    s0 = b.init("s0", np.zeros((1, 3), np.float32))
    b.nodes.append(helper.make_node("Scan", [s0, rows], ["final", "per_row"], name="scan0", body=sbody, num_scan_inputs=1))
    m = b.model([("input", [1, 3, 16, 16])], [("final", [1, 3]), ("per_row", [4, 1, 3])], opset=13)
    return CorpusModel("control_flow", m, _feeds({"input": [1, 3, 16, 16]}))


def contrib() -> CorpusModel:
    b = GraphBuilder(14)
    y = b.conv_bn_relu("input", 3, 16)
    w = b.init("fc_W", (b.rng.standard_normal((16, 16, 3, 3)) * 0.3).astype(np.float32))
    bias = b.init("fc_B", b.rng.standard_normal(16).astype(np.float32) * 0.1)
    y = b.node("FusedConv", [y, w, bias], domain="com.microsoft", activation="Relu", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = b.conv(y, 16, 16)
    y = b.node("Gelu", [y], domain="com.microsoft")
    y = b.conv(y, 16, 8, k=1)
    p = b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1)
    b.gemm(p, 8, 4)
    b.nodes[-1].output[0] = "out"
    # the checker does not know com.microsoft ops, so build without GraphBuilder.model's check
    g = helper.make_graph(b.nodes, "contrib", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])], b.inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    return CorpusModel("contrib", m, _feeds({"input": [1, 3, 16, 16]}))


def fp16() -> CorpusModel:
    """MLP + conv in float16 throughout (weights, activations, inputs and outputs)."""
    b = GraphBuilder(15)
    h = b.node("Relu", [b.conv("input", 3, 16)])
    h = b.node("Relu", [b.conv(h, 16, 16)])
    p = b.node("Flatten", [b.node("GlobalAveragePool", [h])], axis=1)
    p = b.node("Relu", [b.gemm(p, 16, 64)])
    b.gemm(p, 64, 10)
    b.nodes[-1].output[0] = "out"
    for i, t in enumerate(b.inits):
        b.inits[i] = numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name)
    g = helper.make_graph(b.nodes, "fp16", [helper.make_tensor_value_info("input", TensorProto.FLOAT16, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT16, [1, 10])], b.inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return CorpusModel("fp16", m, _feeds({"input": [1, 3, 16, 16]}, dtype=np.float16))


def init_inputs() -> CorpusModel:
    m = resnet_like(seed=16, opset=9)
    m.graph.input.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in m.graph.initializer
    )
    m.ir_version = 3
    return CorpusModel("init_inputs", m, _feeds({"input": [1, 3, 16, 16]}))


def shared() -> CorpusModel:
    """Two branches share one conv weight; a MatMul weight is read twice (tied embeddings style)."""
    b = GraphBuilder(17)
    y = b.conv_bn_relu("input", 3, 8)
    w = b.init("shared_W", (b.rng.standard_normal((8, 8, 3, 3)) * 0.3).astype(np.float32))
    a1 = b.node("Relu", [b.node("Conv", [y, w], pads=[1, 1, 1, 1])])
    a2 = b.node("Conv", [a1, w], pads=[1, 1, 1, 1])
    y = b.node("Relu", [b.node("Add", [a2, y])])
    p = b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1)  # [1, 8]
    mw = b.init("tied_W", (b.rng.standard_normal((8, 8)) * 0.3).astype(np.float32))
    z = b.node("MatMul", [b.node("Relu", [b.node("MatMul", [p, mw])]), mw])
    b.nodes[-1].output[0] = "out"
    del z
    m = b.model([("input", [1, 3, 16, 16])], [("out", [1, 8])], opset=13)
    return CorpusModel("shared", m, _feeds({"input": [1, 3, 16, 16]}))


def empty_names() -> CorpusModel:
    m = resnet_like(seed=18)
    for n in m.graph.node:
        n.name = ""
    return CorpusModel("empty_names", m, _feeds({"input": [1, 3, 16, 16]}))


def dup_names() -> CorpusModel:
    m = resnet_like(seed=19)
    for n in m.graph.node:
        n.name = "node"
    return CorpusModel("dup_names", m, _feeds({"input": [1, 3, 16, 16]}))


def no_shapes() -> CorpusModel:
    m = resnet_like(seed=20)
    del m.graph.value_info[:]
    for vi in [*m.graph.input, *m.graph.output]:
        if vi.name == "input":
            for i, dim in enumerate(vi.type.tensor_type.shape.dim):
                dim.Clear()
                dim.dim_param = f"d{i}"
        else:  # rank known, every dim unknown (no value, no name)
            for dim in vi.type.tensor_type.shape.dim:
                dim.Clear()
    return CorpusModel("no_shapes", m, _feeds({"input": [1, 3, 16, 16]}))


BUILDERS = {
    **{f"opset{o}": (lambda o=o: opset_cnn(o)) for o in (7, 9, 11, 13, 17, 21)},
    "nhwc": nhwc,
    "dynamic": dynamic,
    "control_flow": control_flow,
    "contrib": contrib,
    "fp16": fp16,
    "init_inputs": init_inputs,
    "shared": shared,
    "empty_names": empty_names,
    "dup_names": dup_names,
    "no_shapes": no_shapes,
}
