"""graph/index.py, the one home of the small graph helpers: exact answers on hand-built graphs."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress.graph.index import (
    Constants,
    GraphIndex,
    UniqueNames,
    attr,
    captures,
    constant_tensor,
    conv_pads,
    drop_unused_initializers,
    node_links,
    outer_names,
    patches,
    set_attr,
    used_names,
)


def _if_model() -> onnx.ModelProto:
    """y = If(c) then: W + x (W captured), else: x passed straight through (a capture with no reader node)."""
    then = helper.make_graph([helper.make_node("Add", ["W", "x"], ["t_out"]), helper.make_node("Relu", ["t_out"], ["t_y"])],
                             "then", [], [helper.make_tensor_value_info("t_y", TensorProto.FLOAT, [2])])
    els = helper.make_graph([], "else", [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])])
    nodes = [helper.make_node("Greater", ["x", "Z"], ["gt"]), helper.make_node("ReduceMax", ["gt_f"], ["c"], keepdims=0),
             helper.make_node("Cast", ["gt"], ["gt_f"], to=TensorProto.FLOAT),
             helper.make_node("If", ["c_b"], ["y"], then_branch=then, else_branch=els),
             helper.make_node("Cast", ["c"], ["c_b"], to=TensorProto.BOOL)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                          [numpy_helper.from_array(np.ones(2, np.float32), "W"),
                           numpy_helper.from_array(np.zeros(2, np.float32), "Z"),
                           numpy_helper.from_array(np.zeros(3, np.float32), "unused")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_outer_names_are_the_captures_and_include_passed_through_outputs():
    m = _if_model()
    if_node = m.graph.node[3]
    then, els = attr(if_node, "then_branch"), attr(if_node, "else_branch")
    assert outer_names(then) == {"W", "x"}  # t_out and t_y are defined inside
    assert outer_names(els) == {"x"}  # read by no node: returned as the branch output
    assert captures(m.graph) == {"W": 3, "x": 3}
    assert used_names(m.graph) == {"x", "Z", "gt", "gt_f", "c", "c_b", "y", "W"}


def test_drop_unused_initializers_keeps_captures_and_honours_only():
    m = _if_model()
    assert drop_unused_initializers(m.graph, only={"W"}) == set()
    assert [t.name for t in m.graph.initializer] == ["W", "Z", "unused"]
    assert drop_unused_initializers(m.graph) == {"unused"}
    assert [t.name for t in m.graph.initializer] == ["W", "Z"]


def test_node_links_and_the_index_agree():
    m = _if_model()
    prod, cons = node_links(list(m.graph.node))
    assert prod == {"gt": 0, "c": 1, "gt_f": 2, "y": 3, "c_b": 4}
    assert cons["gt"] == [(2, 0)] and cons["x"] == [(0, 0)] and "" not in cons
    idx = GraphIndex(m.graph)
    assert idx.producer["y"] is m.graph.node[3]
    assert [n.op_type for n in idx.consumers["gt"]] == ["Cast"]
    assert idx.n_readers("x") == 2  # Greater and the If bodies
    assert idx.n_readers("W") == 1 and idx.n_readers("unused") == 0


def test_constant_tensor_reads_every_value_attribute():
    mk = helper.make_node
    cases = {
        "value": (mk("Constant", [], ["a"], value=numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3))),
                  np.arange(6, dtype=np.float32).reshape(2, 3)),
        "value_float": (mk("Constant", [], ["b"], value_float=2.5), np.array(2.5, np.float32)),
        "value_floats": (mk("Constant", [], ["c"], value_floats=[1.0, 2.0]), np.array([1.0, 2.0], np.float32)),
        "value_int": (mk("Constant", [], ["d"], value_int=7), np.array(7, np.int64)),
        "value_ints": (mk("Constant", [], ["e"], value_ints=[3, 4, 5]), np.array([3, 4, 5], np.int64)),
    }
    for node, want in cases.values():
        got = numpy_helper.to_array(constant_tensor(node))
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
    assert constant_tensor(mk("Constant", [], ["s"], value_string="x")) is None
    assert constant_tensor(mk("Constant", [], ["z"], value_int=1, domain="custom")) is None
    assert constant_tensor(mk("Identity", ["x"], ["y"])) is None


def test_constants_table_and_index_constant():
    g = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value_ints=[1, 2]), helper.make_node("Add", ["x", "W"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]), helper.make_tensor_value_info("W", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [numpy_helper.from_array(np.full(2, 3, np.float32), "W")])
    c = Constants(g)
    assert sorted(c) == ["W", "k"] and len(c) == 2 and c["k"].tolist() == [1, 2] and c["W"] is c["W"]  # cached
    assert sorted(Constants(g, nodes=False)) == ["W"]
    idx = GraphIndex(g)
    assert idx.constant("k").tolist() == [1, 2]
    assert idx.constant("W") is None  # also a graph input: can be overridden at run time
    assert idx.constant("x") is None


def test_unique_names_skip_every_taken_name():
    m = _if_model()
    names = UniqueNames(m.graph)
    assert names("W") == "W_1" and names("W") == "W_2" and names("fresh") == "fresh"
    only_nodes = UniqueNames.of(["conv", "conv_1"])
    assert only_nodes("conv") == "conv_2" and only_nodes("x") == "x"
    assert GraphIndex(m.graph).unique_name("gt") == "gt_1"


def test_attr_and_set_attr():
    n = helper.make_node("Conv", ["x", "w"], ["y"], group=2, pads=[1, 1, 1, 1], auto_pad="NOTSET")
    assert attr(n, "group") == 2 and attr(n, "pads") == [1, 1, 1, 1] and attr(n, "auto_pad") == b"NOTSET"
    assert attr(n, "strides", [1, 1]) == [1, 1]
    set_attr(n, "group", 4)
    assert attr(n, "group") == 4 and [a.name for a in n.attribute] == ["auto_pad", "pads", "group"]


def test_conv_pads_resolve_auto_pad():
    assert conv_pads([5, 6], [3, 3], [2, 2], [1, 1], [], "SAME_UPPER") == [1, 0, 1, 1]
    assert conv_pads([5, 6], [3, 3], [2, 2], [1, 1], [], b"SAME_LOWER") == [1, 1, 1, 0]
    assert conv_pads([5, 6], [3, 3], [2, 2], [1, 1], [9, 9, 9, 9], "VALID") == [0, 0, 0, 0]
    assert conv_pads([5, 6], [3, 3], [1, 1], [1, 1], [1, 2, 3, 4], "NOTSET") == [1, 2, 3, 4]
    assert conv_pads([5], [3], [1], [1], [], "") == [0, 0]


def test_patches_match_a_direct_convolution_and_sampled_rows():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    k, s, d, pads = [3, 2], [2, 1], [1, 2], [1, 0, 1, 2]
    rows = patches(x, k, s, d, pads)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 2)))
    ho, wo = (7 + 2 - 3) // 2 + 1, (6 + 2 - 3) // 1 + 1
    ref = np.zeros((2, 4, ho, wo), np.float64)
    for oy in range(ho):
        for ox in range(wo):
            win = xp[:, :, oy * 2 : oy * 2 + 3, ox : ox + 3 : 2]
            ref[:, :, oy, ox] = np.einsum("nckl,fckl->nf", win, w)
    got = (rows @ w.reshape(4, -1).T).reshape(2, ho, wo, 4).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    pos = np.array([5, 0, ho * wo - 1])
    np.testing.assert_array_equal(patches(x[1:2], k, s, d, pads, positions=pos), rows[ho * wo + pos])
