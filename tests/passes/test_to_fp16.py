"""fp16 that works (issue 14): mixed-type nodes get their casts, fp16-weight and fp16 graphs load,
ordinary trained weights convert (a real ~2x size cut), constants that fp16 cannot hold stay fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from builders import GraphBuilder, lstm_net, random_input
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress.passes.to_fp16 import CONST_REL_ERROR, const_fits_fp16, convert_fp16

DIGITS = Path(__file__).resolve().parents[2] / "models" / "digits_cnn.onnx"


def _run(m: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def test_one_tiny_subnormal_weight_does_not_keep_a_layer_fp32():
    w = np.random.default_rng(0).standard_normal(1000).astype(np.float32) * 0.1
    w[3] = 1e-9  # below fp16's smallest normal (6.1e-5): the old rule kept the whole tensor fp32
    assert const_fits_fp16(w)
    assert not const_fits_fp16(np.array([1e-12], np.float32))  # an epsilon that would become 0
    assert not const_fits_fp16(np.array([1.0, 7e4], np.float32))  # overflows fp16 (65504)
    assert not const_fits_fp16(np.array([1.0, np.inf], np.float32))
    assert const_fits_fp16(np.zeros(4, np.float32)) and CONST_REL_ERROR == 1e-3


def test_fp16_halves_the_bundled_digits_cnn_and_keeps_its_predictions():
    m = onnx.load(str(DIGITS))
    h, st = convert_fp16(m)
    assert st["fp32_nodes"] == 0 and not st["kept_fp32"]
    ratio = len(h.SerializeToString()) / len(m.SerializeToString())
    assert 0.49 < ratio < 0.53, ratio  # 397 kB -> 203 kB
    with np.load(DIGITS.parent / "digits_test.npz") as d:
        x = d[d.files[0]][:64].astype(np.float32)
    name = m.graph.input[0].name
    ya = np.concatenate([_run(m, {name: x[i]})[0] for i in range(len(x))])
    yb = np.concatenate([_run(h, {name: x[i]})[0] for i in range(len(x))])
    assert (ya.argmax(-1) == yb.argmax(-1)).all()
    assert np.linalg.norm(yb - ya) / np.linalg.norm(ya) < 3e-3  # 1.1e-3 measured


def test_unnamed_nodes_reading_fp16_weights_through_casts_load_in_ort():
    """fp16 initializers behind Cast(to fp32) and no node names: the old converter marked every
    node fp16 (all names were ''), Cast outputs included, and ORT refused Sub(float16, float)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float16), "W16"),
             numpy_helper.from_array(rng.standard_normal((1, 3, 1, 1)).astype(np.float16), "M16")]
    nodes = [helper.make_node("Cast", ["W16"], ["W"], to=TensorProto.FLOAT),
             helper.make_node("Cast", ["M16"], ["M"], to=TensorProto.FLOAT),
             helper.make_node("Sub", ["x", "M"], ["xs"]),
             helper.make_node("Conv", ["xs", "W"], ["y"], pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    h, st = convert_fp16(m)
    x = random_input([1, 3, 6, 6])
    ya, yb = _run(m, {"x": x})[0], _run(h, {"x": x})[0]
    assert np.linalg.norm(yb - ya) / np.linalg.norm(ya) < 2e-3
    assert st["fp16_nodes"] == 2  # Sub and Conv; the weight Casts are read through and dropped
    assert [n.op_type for n in h.graph.node] == ["Cast", "Sub", "Conv", "Cast"]
    assert sorted(t.name for t in h.graph.initializer) == ["M16", "W16"]


def test_an_fp16_graph_is_left_as_it_is_and_still_loads():
    b = GraphBuilder(0)
    w = b.init("W", (b.rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float16))
    b.node("Conv", ["x", w], pads=[1, 1, 1, 1])
    b.nodes[-1].output[0] = "y"
    g = helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 3, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4, 6, 6])], b.inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    h, st = convert_fp16(m)
    assert st["casts"] == 0 and not st["kept_fp32"]
    assert [n.op_type for n in h.graph.node] == ["Conv"]
    x = random_input([1, 3, 6, 6]).astype(np.float16)
    np.testing.assert_array_equal(_run(h, {"x": x})[0], _run(m, {"x": x})[0])


def test_lstm_stays_fp32_with_its_reason_and_the_rest_converts():
    m = lstm_net()
    h, st = convert_fp16(m)
    reasons = [r["reason"] for r in st["kept_fp32"]]
    assert reasons == ["no fp16 rule for LSTM: kept fp32"]
    x = random_input([6, 1, 5])
    ya, yb = _run(m, {"x": x})[0], _run(h, {"x": x})[0]
    assert np.linalg.norm(yb - ya) / np.linalg.norm(ya) < 2e-3


def test_weights_held_in_constant_nodes_are_not_stored_twice():
    """Paddle exports keep weights in Constant nodes: the fp16 copy replaces them (PP-OCRv4 det
    4.7 -> 2.4 MB; before, both copies stayed and the file grew to 7.0 MB)."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w, "W")),
             helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1], name="conv")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 6, 6])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    h, _ = convert_fp16(m)
    assert [n.op_type for n in h.graph.node] == ["Cast", "Conv", "Cast"]
    assert len(h.SerializeToString()) < 0.55 * len(m.SerializeToString())
    x = random_input([1, 8, 6, 6])
    ya, yb = _run(m, {"x": x})[0], _run(h, {"x": x})[0]
    assert np.linalg.norm(yb - ya) / np.linalg.norm(ya) < 2e-3
