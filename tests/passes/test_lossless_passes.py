import numpy as np
import onnx
import pytest
from builders import GraphBuilder, random_input, resnet_like, run
from onnx import helper

from onnxslim_compress.graph.index import op_counts
from onnxslim_compress.jobs.compress import lossless_pipeline
from onnxslim_compress.passes import EliminateDead, FoldBatchNorm, Simplify
from onnxslim_compress.passes.simplify import _dedupe_value_info


def assert_same_outputs(a, b, feeds, rtol=1e-5):
    ra, rb = run(a, feeds), run(b, feeds)
    for x, y in zip(ra, rb, strict=True):
        err = np.linalg.norm(x - y) / max(np.linalg.norm(x), 1e-12)
        assert err < rtol, err


def test_fold_batchnorm_resnet_exact():
    m = resnet_like()
    res = FoldBatchNorm()(m)
    assert res.modified and res.stats["folded"] == 6 and res.stats["skipped"] == []
    assert "BatchNormalization" not in op_counts(res.model)
    assert_same_outputs(m, res.model, {"input": random_input([1, 3, 16, 16])})


@pytest.mark.parametrize("bias", [True, False])
def test_fold_into_conv_with_and_without_bias(bias):
    b = GraphBuilder(3)
    y = b.bn(b.conv("x", 4, 6, bias=bias), 6)
    m = b.model([("x", [2, 4, 5, 5])], [(y, None)])
    res = FoldBatchNorm()(m)
    assert res.stats["folded"] == 1
    assert_same_outputs(m, res.model, {"x": random_input([2, 4, 5, 5])})


@pytest.mark.parametrize("group", [1, 2])
def test_fold_into_conv_transpose(group):
    b = GraphBuilder(4)
    w = b.init("Wt", b.rng.standard_normal((4, 6 // group, 3, 3)).astype(np.float32))
    y = b.node("ConvTranspose", ["x", w], group=group, strides=[2, 2])
    y = b.bn(y, 6)
    m = b.model([("x", [1, 4, 5, 5])], [(y, None)])
    res = FoldBatchNorm()(m)
    assert res.stats["folded"] == 1
    assert_same_outputs(m, res.model, {"x": random_input([1, 4, 5, 5])})


@pytest.mark.parametrize("trans_b", [0, 1])
def test_fold_into_gemm(trans_b):
    b = GraphBuilder(5)
    y = b.bn(b.gemm("x", 7, 5, trans_b=trans_b, alpha=0.7, beta=1.3), 5)
    m = b.model([("x", [3, 7])], [(y, None)])
    res = FoldBatchNorm()(m)
    assert res.stats["folded"] == 1
    assert_same_outputs(m, res.model, {"x": random_input([3, 7])})


def test_bn_without_foldable_producer_stays_and_says_why():
    b = GraphBuilder(6)
    r = b.node("Relu", [b.conv("x", 3, 4)])
    y = b.bn(r, 4)  # Relu -> BN: not foldable
    c = b.conv("x", 3, 4)
    z = b.bn(c, 4)
    t = b.node("Add", [c, z])  # conv output read twice: not foldable
    m = b.model([("x", [1, 3, 6, 6])], [(y, None), (t, None)])
    res = FoldBatchNorm()(m)
    assert res.stats["folded"] == 0 and not res.modified
    reasons = sorted(s["reason"] for s in res.stats["skipped"])
    assert reasons[0].startswith("output of") and "other readers" in reasons[0]
    assert reasons[1].startswith("producer is Relu")


def test_shared_weight_is_not_mutated_for_other_reader():
    b = GraphBuilder(7)
    w = b.init("W", b.rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    c1 = b.node("Conv", ["x", w], pads=[1] * 4)
    c2 = b.node("Conv", ["x", w], pads=[1] * 4)
    y = b.bn(c1, 4)
    m = b.model([("x", [1, 3, 6, 6])], [(y, None), (c2, None)])
    res = FoldBatchNorm()(m)
    assert res.stats["folded"] == 1
    assert_same_outputs(m, res.model, {"x": random_input([1, 3, 6, 6])})


def test_eliminate_dead_removes_unused_nodes_and_weights_but_not_custom_ops():
    b = GraphBuilder(8)
    y = b.node("Relu", ["x"])
    dead = b.node("Sigmoid", [b.conv("x", 3, 3)])  # conv + sigmoid are dead
    b.node("Exp", [dead])
    b.node("MyOp", ["x"], domain="custom.domain")  # unknown op: kept
    b.init("unused", np.ones(3, np.float32))
    m = b.model([("x", [1, 3, 4, 4])], [(y, [1, 3, 4, 4])], domains={"custom.domain": 1})
    res = EliminateDead()(m)
    assert res.stats["nodes_removed"] == 3
    assert res.stats["initializers_removed"] == 3  # conv W, conv B, unused
    assert [n.op_type for n in res.model.graph.node] == ["Relu", "MyOp"]
    assert res.stats["skipped"][0]["reason"].startswith("unused output of a custom-domain")


def test_eliminate_dead_keeps_tensors_read_by_subgraphs():
    b = GraphBuilder(9)
    c = b.node("Relu", ["x"])  # read only inside the If branches
    then_g = helper.make_graph(
        [helper.make_node("Neg", [c], ["t"])], "then", [], [helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [2])]
    )
    else_g = helper.make_graph(
        [helper.make_node("Abs", [c], ["e"])], "else", [], [helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, [2])]
    )
    b.nodes.append(helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g))
    g = helper.make_graph(
        b.nodes, "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2]), helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    res = EliminateDead()(m)
    assert not res.modified and len(res.model.graph.node) == 2


def test_simplify_folds_constants_and_keeps_outputs():
    b = GraphBuilder(10)
    c = b.init("c", np.full((1, 3, 1, 1), 2.0, np.float32))
    c2 = b.node("Mul", [c, c])  # constant subexpression
    y = b.node("Add", [b.conv("x", 3, 3), c2])
    s = b.node("Shape", [y])
    r = b.node("Reshape", [y, s])  # reshape to own shape: removable
    m = b.model([("x", [1, 3, 4, 4])], [(r, [1, 3, 4, 4])])
    res = Simplify()(m)
    assert res.modified and res.stats["nodes_after"] < res.stats["nodes_before"]
    assert_same_outputs(m, res.model, {"x": random_input([1, 3, 4, 4])})


def test_simplify_keeps_batchnorm_by_default():
    res = Simplify()(resnet_like())
    assert op_counts(res.model).get("BatchNormalization") == 6


def test_lossless_pipeline_on_resnet():
    m = resnet_like(batch="N")
    res = lossless_pipeline().run(m)
    assert op_counts(res.model).get("BatchNormalization") is None
    assert len(res.model.graph.node) < len(m.graph.node)
    assert_same_outputs(m, res.model, {"input": random_input([3, 3, 16, 16])})


def test_simplify_never_leaves_duplicate_value_info():
    m = resnet_like()
    res = Simplify()(m)
    names = [v.name for v in res.model.graph.value_info]
    assert len(names) == len(set(names))
    # a model that arrives with duplicates (as onnxslim writes for YOLOv8n) leaves without them
    dup = onnx.ModelProto()
    dup.CopyFrom(res.model)
    dup.graph.value_info.extend(list(dup.graph.value_info))

    assert _dedupe_value_info(dup) == len(names) and len(dup.graph.value_info) == len(names)
