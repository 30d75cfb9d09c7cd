"""MAC and parameter counts against hand counts on small graphs built with onnx.helper."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress.graph.costs import count_costs, format_table, gemm_macs, matmul_macs

RNG = np.random.default_rng(0)


def _w(name: str, *shape: int, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(dtype), name)


def _model(nodes, inputs, outputs, inits, opset: int = 17, extra_opsets=()) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])
    m.ir_version = 10
    return m


# Hand counts at batch 1 (name -> (MACs, params)). Each line is the formula from the docstring of
# macs.py written out with this model's numbers.
EXPECTED = {
    # stem: 7x7 stride 2 pad 3, 3 -> 16 channels, 32x32 -> 16x16, bias
    "stem": (16 * 16 * 16 * 3 * 7 * 7, 16 * 3 * 7 * 7 + 16),
    # basic block, two 3x3 convs 16 -> 16 at 16x16, no bias
    "b1_conv1": (16 * 16 * 16 * 16 * 3 * 3, 16 * 16 * 9),
    "b1_conv2": (16 * 16 * 16 * 16 * 3 * 3, 16 * 16 * 9),
    # projection block: 3x3 stride 2 16 -> 32 with bias, 1x1 stride 2 shortcut; 8x8 out
    "b2_conv": (32 * 8 * 8 * 16 * 3 * 3, 32 * 16 * 9 + 32),
    "b2_short": (32 * 8 * 8 * 16 * 1 * 1, 32 * 16),
    # grouped conv 32 -> 32, group 4 (8 input channels per group)
    "grouped": (32 * 8 * 8 * 8 * 3 * 3, 32 * 8 * 9),
    # depthwise 3x3
    "depthwise": (32 * 8 * 8 * 1 * 3 * 3, 32 * 9),
    # ConvTranspose 3x3 stride 2 pad 1 output_padding 1, group 2: Cin=32 at 8x8 -> 16 channels at
    # 16x16; Cout/group = 8, bias 16. (Counting at the output instead would give twice as much.)
    "deconv": (32 * 8 * 8 * 8 * 3 * 3, 32 * 8 * 9 + 16),
    # Gemm transB=1: [1,16] x [20,16]^T + b
    "fc1": (1 * 20 * 16, 20 * 16 + 20),
    # Gemm transB=0: [1,20] x [20,12] + b
    "fc2": (1 * 12 * 20, 20 * 12 + 12),
    # Gemm transA=1 on a transposed activation [12,1]: M=1, K=12, N=6
    "fc3": (1 * 6 * 12, 12 * 6),
    # MatMul with batch dims: [1,4,10,16] x [16,24]
    "proj": (1 * 4 * 10 * 24 * 16, 16 * 24),
    # MatMul of two activations: [1,4,10,24] x [1,4,24,10]
    "scores": (1 * 4 * 10 * 10 * 24, 0),
    # broadcast batch, constant on the left: [4,3,10] x [1,4,10,10] -> batch (1,4), out [1,4,3,10]
    "bcast": (1 * 4 * 3 * 10 * 10, 4 * 3 * 10),
    # 1-D right operand: [1,4,3,10] x [10] -> [1,4,3]
    "vec": (1 * 4 * 3 * 1 * 10, 10),
}
BN_PARAMS = 4 * 16


@pytest.fixture
def resnet_like() -> onnx.ModelProto:
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "W0", "B0"], ["s"], name="stem", strides=[2, 2], pads=[3, 3, 3, 3]),
        n("Relu", ["s"], ["s_r"]),
        n("Conv", ["s_r", "W1"], ["c1"], name="b1_conv1", pads=[1, 1, 1, 1]),
        n("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["c1n"], name="bn"),
        n("Relu", ["c1n"], ["c1r"]),
        n("Conv", ["c1r", "W2"], ["c2"], name="b1_conv2", pads=[1, 1, 1, 1]),
        n("Add", ["c2", "s_r"], ["b1"]),
        n("Relu", ["b1"], ["b1r"]),
        n("Conv", ["b1r", "W3", "B3"], ["c3"], name="b2_conv", strides=[2, 2], pads=[1, 1, 1, 1]),
        n("Conv", ["b1r", "Wp"], ["sc"], name="b2_short", strides=[2, 2]),
        n("Add", ["c3", "sc"], ["b2"]),
        n("Conv", ["b2", "Wg"], ["g"], name="grouped", group=4, pads=[1, 1, 1, 1]),
        n("Conv", ["g", "Wd"], ["d"], name="depthwise", group=32, pads=[1, 1, 1, 1]),
        n("ConvTranspose", ["d", "Wt", "Bt"], ["u"], name="deconv", strides=[2, 2], group=2, pads=[1, 1, 1, 1],
          output_padding=[1, 1]),
        n("GlobalAveragePool", ["u"], ["gp"]),
        n("Flatten", ["gp"], ["f"]),
        n("Gemm", ["f", "Wf1", "Bf1"], ["h1"], name="fc1", transB=1),
        n("Gemm", ["h1", "Wf2", "Bf2"], ["h2"], name="fc2"),
        n("Transpose", ["h2"], ["h2t"], perm=[1, 0]),
        n("Gemm", ["h2t", "Wf3"], ["y1"], name="fc3", transA=1),
        n("MatMul", ["t", "Wm"], ["q"], name="proj"),
        n("Transpose", ["q"], ["qt"], perm=[0, 1, 3, 2]),
        n("MatMul", ["q", "qt"], ["att"], name="scores"),
        n("MatMul", ["Wb", "att"], ["bc"], name="bcast"),
        n("MatMul", ["bc", "v"], ["y2"], name="vec"),
    ]
    inits = [
        _w("W0", 16, 3, 7, 7), _w("B0", 16),
        _w("W1", 16, 16, 3, 3), _w("W2", 16, 16, 3, 3),
        _w("bn_s", 16), _w("bn_b", 16), _w("bn_m", 16),
        numpy_helper.from_array(np.ones(16, np.float32), "bn_v"),
        _w("W3", 32, 16, 3, 3), _w("B3", 32), _w("Wp", 32, 16, 1, 1),
        _w("Wg", 32, 8, 3, 3), _w("Wd", 32, 1, 3, 3),
        _w("Wt", 32, 8, 3, 3), _w("Bt", 16),
        _w("Wf1", 20, 16), _w("Bf1", 20), _w("Wf2", 20, 12), _w("Bf2", 12), _w("Wf3", 12, 6),
        _w("Wm", 16, 24), _w("Wb", 4, 3, 10), _w("v", 10),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 32, 32]),
        helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch", 4, 10, 16]),
    ]
    outputs = [
        helper.make_tensor_value_info("y1", TensorProto.FLOAT, ["batch", 6]),
        helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["batch", 4, 3]),
    ]
    m = _model(nodes, inputs, outputs, inits)
    onnx.checker.check_model(m, full_check=True)
    return m


def test_per_node_macs_and_params_equal_hand_count(resnet_like):
    cost = count_costs(resnet_like)
    got = {n.name: (n.macs, n.params) for n in cost.nodes}
    assert got == EXPECTED
    assert cost.skipped == []
    assert cost.total.macs == sum(m for m, _ in EXPECTED.values())
    assert cost.total.params == sum(p for _, p in EXPECTED.values()) + BN_PARAMS
    assert cost.total.nodes == len(resnet_like.graph.node)
    assert cost.total.size_bytes == 4 * (sum(p for _, p in EXPECTED.values()) + BN_PARAMS)
    # the dynamic batch of both inputs was bound to 1 and the result says so
    assert len(cost.assumed) == 2 and all("batch" in a for a in cost.assumed)
    assert cost.input_shapes == {"x": [1, 3, 32, 32], "t": [1, 4, 10, 16]}


def test_output_shapes_and_by_op_type(resnet_like):
    cost = count_costs(resnet_like)
    shapes = {n.name: n.output_shape for n in cost.nodes}
    assert shapes["stem"] == [1, 16, 16, 16]
    assert shapes["b2_short"] == [1, 32, 8, 8]
    assert shapes["deconv"] == [1, 16, 16, 16]
    assert shapes["vec"] == [1, 4, 3]
    by = cost.by_op_type
    conv_names = ["stem", "b1_conv1", "b1_conv2", "b2_conv", "b2_short", "grouped", "depthwise"]
    assert by["Conv"].count == 7
    assert by["Conv"].macs == sum(EXPECTED[k][0] for k in conv_names)
    assert by["ConvTranspose"].macs == EXPECTED["deconv"][0]
    assert by["Gemm"].macs == sum(EXPECTED[k][0] for k in ("fc1", "fc2", "fc3"))
    assert by["MatMul"].count == 4
    assert by["BatchNormalization"].params == BN_PARAMS
    assert by["BatchNormalization"].macs == 0
    assert by["Relu"].count == 3


def test_batch_bound_by_input_shapes_doubles_macs(resnet_like):
    one = count_costs(resnet_like)
    two = count_costs(resnet_like, {"x": [2, 3, 32, 32], "t": [2, 4, 10, 16]})
    assert two.assumed == []
    assert two.total.macs == 2 * one.total.macs
    assert {n.name: n.macs for n in two.nodes} == {k: 2 * m for k, (m, _) in EXPECTED.items()}
    assert two.total.params == one.total.params


def test_as_dict_is_json_ready(resnet_like):
    d = json.loads(json.dumps(count_costs(resnet_like).as_dict()))
    assert d["total"]["macs"] == sum(m for m, _ in EXPECTED.values())
    assert set(d["total"]) >= {"macs", "params", "size_bytes", "nodes"}
    assert {n["name"] for n in d["nodes"]} == set(EXPECTED)
    first = next(n for n in d["nodes"] if n["name"] == "stem")
    assert first == {"name": "stem", "op_type": "Conv", "macs": EXPECTED["stem"][0], "params": EXPECTED["stem"][1],
                     "output_shape": [1, 16, 16, 16]}
    assert d["by_op_type"]["Conv"]["count"] == 7
    assert len(d["assumed"]) == 2 and d["skipped"] == []


def test_format_table_lists_top_nodes(resnet_like):
    text = format_table(count_costs(resnet_like), top=3)
    lines = text.splitlines()
    # top 3 by MACs: stem (602k) then the two basic-block convs (590k each)
    body = [ln.split()[0] for ln in lines if ln.split() and ln.split()[0] in EXPECTED]
    assert body[:3] == ["stem", "b1_conv1", "b1_conv2"] or body[:3] == ["stem", "b1_conv2", "b1_conv1"]
    assert len(body) == 3
    assert "12 more compute nodes" in text
    assert "assumed" in text


@pytest.mark.parametrize(
    ("a", "b", "macs"),
    [
        ([2, 1, 5, 3], [4, 3, 6], 2 * 4 * 5 * 6 * 3),  # batch dims broadcast from both sides
        ([3], [2, 3, 4], 2 * 1 * 4 * 3),  # 1-D left operand: a row vector
        ([5, 3], [3], 5 * 1 * 3),  # 1-D right operand: a column vector
        ([3], [3], 3),  # dot product
        ([7, 1, 2, 3], [1, 6, 3, 4], 7 * 6 * 2 * 4 * 3),
    ],
)
def test_matmul_numpy_rules(a, b, macs):
    assert matmul_macs(a, b) == macs
    # and the count agrees with what numpy's matmul produces: prod(out) * K
    out = np.matmul(np.zeros(a), np.zeros(b)).shape
    assert macs == int(np.prod(out)) * a[-1]


def test_gemm_transposes():
    assert gemm_macs([4, 8], [8, 5], 0, 0) == 4 * 5 * 8
    assert gemm_macs([8, 4], [8, 5], 1, 0) == 4 * 5 * 8
    assert gemm_macs([4, 8], [5, 8], 0, 1) == 4 * 5 * 8
    assert gemm_macs([8, 4], [5, 8], 1, 1) == 4 * 5 * 8


def test_shared_weight_counted_once():
    n = helper.make_node
    m = _model(
        [n("MatMul", ["x", "W"], ["a"], name="m1"), n("Relu", ["a"], ["r"]), n("MatMul", ["r", "W"], ["y"], name="m2")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 8])],
        [_w("W", 8, 8)],
    )
    cost = count_costs(m)
    assert [(c.name, c.macs, c.params) for c in cost.nodes] == [("m1", 3 * 8 * 8, 64), ("m2", 3 * 8 * 8, 64)]
    assert cost.total.params == 64
    assert cost.by_op_type["MatMul"].params == 64
    assert cost.total.size_bytes == 64 * 4


def test_constant_node_weight_and_qdq_weight():
    """Weights given as a Constant node, and int8 weights behind DequantizeLinear, are parameters."""
    n = helper.make_node
    wq = numpy_helper.from_array(RNG.integers(-127, 127, (4, 2, 3, 3)).astype(np.int8), "Wq")
    scale = numpy_helper.from_array(np.full(4, 0.1, np.float32), "w_scale")
    zp = numpy_helper.from_array(np.zeros(4, np.int8), "w_zp")
    m = _model(
        [
            n("Constant", [], ["Wc"], value=_w("Wc_val", 4, 6)),
            n("DequantizeLinear", ["Wq", "w_scale", "w_zp"], ["Wdq"], axis=0),
            n("Conv", ["x", "Wdq"], ["c"], name="qconv"),
            n("Flatten", ["c"], ["f"]),
            n("MatMul", ["f", "Wc"], ["y"], name="mm"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],
        [wq, scale, zp],
        opset=13,
    )
    onnx.checker.check_model(m, full_check=True)
    cost = count_costs(m)
    got = {c.name: (c.macs, c.params) for c in cost.nodes}
    assert got == {"qconv": (4 * 1 * 1 * 2 * 3 * 3, 4 * 2 * 9), "mm": (1 * 6 * 4, 24)}
    # scales and zero points are settings, not parameters
    assert cost.total.params == 72 + 24
    assert cost.total.size_bytes == 72 * 1 + 4 * 4 + 4 * 1 + 24 * 4


def test_unknown_shapes_are_skipped_not_fatal():
    """A custom op neither onnx nor ORT knows leaves the Conv after it without shapes."""
    n = helper.make_node
    m = _model(
        [
            n("Mystery", ["x"], ["z"], domain="example.custom"),
            n("Conv", ["z", "W"], ["c"], name="after_custom"),
            n("MatMul", ["x2", "M"], ["y2"], name="fine"),
        ],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5]),
            helper.make_tensor_value_info("x2", TensorProto.FLOAT, [2, 3]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, None), helper.make_tensor_value_info("y2", TensorProto.FLOAT, None)],
        [_w("W", 4, 2, 3, 3), _w("M", 3, 5)],
        extra_opsets=[helper.make_opsetid("example.custom", 1)],
    )
    cost = count_costs(m)
    assert [c.name for c in cost.nodes] == ["fine"]
    assert cost.total.macs == 2 * 5 * 3
    # the skipped Conv's weight is still a parameter: params do not depend on shapes
    assert cost.total.params == 4 * 2 * 9 + 3 * 5
    assert len(cost.skipped) == 1
    s = cost.skipped[0]
    assert s["node"] == "after_custom" and s["op_type"] == "Conv" and "unknown" in s["reason"]
    assert cost.shape_method == "partial"
    assert cost.by_op_type["example.custom.Mystery"].count == 1


def test_subgraph_compute_is_reported_not_counted():
    n = helper.make_node
    then_g = helper.make_graph(
        [n("MatMul", ["x", "M"], ["t_out"], name="inner_mm")], "then", [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [2, 5])],
    )
    else_g = helper.make_graph(
        [n("Identity", ["x5"], ["e_out"])], "else", [], [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [2, 5])]
    )
    m = _model(
        [
            n("MatMul", ["x", "M"], ["x5"], name="outer_mm"),
            n("If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g),
        ],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
        [_w("M", 3, 5)],
    )
    cost = count_costs(m)
    assert [(c.name, c.macs) for c in cost.nodes] == [("outer_mm", 2 * 5 * 3)]
    assert cost.skipped == [
        {"node": "branch", "op_type": "If", "reason": "subgraph with 1 compute node(s) not counted (only the main graph is)"}
    ]
