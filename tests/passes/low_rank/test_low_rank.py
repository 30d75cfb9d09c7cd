"""Low-rank pass: exactness at full rank, error formulas vs numpy, ALDS allocation, every graph form in ORT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import random_input, run
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress.errors import BadInputError, RecipeError
from onnxslim_compress.graph.index import UniqueNames
from onnxslim_compress.graph.io import main_opset
from onnxslim_compress.graph.shapes import infer_shapes
from onnxslim_compress.passes.context import Context
from onnxslim_compress.passes.low_rank import decompose as lm
from onnxslim_compress.passes.low_rank.low_rank import LowRank, LowRankParams, find_layers, rewrite
from onnxslim_compress.runtime.session import Target, make_session


def one_node_model(op: str, x_shape: list[int], weights: dict[str, np.ndarray], opset: int = 13, name: str = "layer",
                   **attrs) -> onnx.ModelProto:
    """x -> op(x, *weights) -> y, with y's shape from onnx inference."""
    node = helper.make_node(op, ["x", *weights], ["y"], name, **attrs)
    g = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_empty_tensor_value_info("y")],
                          [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    m.graph.output[0].CopyFrom(onnx.shape_inference.infer_shapes(m).graph.output[0])
    onnx.checker.check_model(m)
    return m


def rng_w(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape) * 0.3


# Every graph form: (id, model builder, input shape)
FORMS = {
    "gemm_transB1": lambda o=13: one_node_model("Gemm", [5, 48], {"w": rng_w(40, 48), "c": rng_w(40)}, o,
                                                transB=1, alpha=0.7, beta=1.3),
    "gemm_transB0": lambda o=13: one_node_model("Gemm", [5, 48], {"w": rng_w(48, 40), "c": rng_w(40)}, o,
                                                transB=0, alpha=1.5, beta=0.5),
    "gemm_transA": lambda o=13: one_node_model("Gemm", [48, 5], {"w": rng_w(48, 40), "c": rng_w(40)}, o, transA=1),
    "matmul_batch": lambda o=13: one_node_model("MatMul", [2, 3, 7, 48], {"w": rng_w(48, 40)}, o),
    "conv_stride_pad_dil": lambda o=13: one_node_model("Conv", [1, 12, 15, 17], {"w": rng_w(16, 12, 3, 3), "b": rng_w(16)},
                                                       o, strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2]),
    "conv_same_upper": lambda o=13: one_node_model("Conv", [1, 12, 15, 17], {"w": rng_w(16, 12, 3, 3)}, o,
                                                   strides=[2, 2], auto_pad="SAME_UPPER"),
}


def factorize_exactly(model: onnx.ModelProto, key: tuple, gram: np.ndarray | None = None) -> onnx.ModelProto:
    """Factorize the only layer at its full rank in the given form (no rank rule involved)."""
    p = LowRankParams(min_params=0)
    layers, _ = find_layers(model, infer_shapes(model)[0], p)
    (L,) = layers
    opts = dict(lm.layer_options(L, key[1] > 1, "spatial" if key[0] == "spatial" else "channel", gram, 1e-6))
    d = opts[key]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rewrite(out, {L.node.output[0]: lm.emit(L, key, d.max_rank, d, UniqueNames(out.graph), main_opset(out))}, {L.node.input[1]})
    onnx.checker.check_model(out)
    return out


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("opset", [9, 13, 18])
def test_full_rank_reproduces_outputs(form: str, opset: int):
    m = FORMS[form](opset)
    x = random_input([d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim])
    ref = run(m, {"x": x})[0]
    keys = [("channel", 1)] + ([("channel", 2), ("channel", 4)] if form != "gemm_transA" else [])
    if form == "conv_stride_pad_dil":
        keys.append(("spatial", 1))
    for key in keys:
        got = run(factorize_exactly(m, key), {"x": x})[0]
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, err_msg=str(key))


@pytest.mark.parametrize("opset", [9, 13, 18])
def test_k_split_of_layers_sharing_an_input(opset: int):
    """q/k/v-like MatMuls on one tensor split with different k (ORT's CSE once merged such Splits)."""
    w = {f"w{i}": rng_w(48, 40, seed=i) for i in range(3)}
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], f"mm{i}") for i in range(3)]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 48])],
                          [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, 5, 40]) for i in range(3)],
                          [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    layers, _ = find_layers(m, infer_shapes(m)[0], LowRankParams(min_params=0))
    replace = {}
    names = UniqueNames(m.graph)
    for L, k in zip(layers, (2, 3, 4), strict=True):
        d = lm.decompose(L.w, k)
        replace[L.node.output[0]] = lm.emit(L, ("channel", k), d.max_rank, d, names, opset)
    out = onnx.ModelProto()
    out.CopyFrom(m)
    rewrite(out, replace, {"w0", "w1", "w2"})
    x = random_input([1, 5, 48])
    for got, ref in zip(run(out, {"x": x}), run(m, {"x": x}), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_full_rank_whitened_reproduces_outputs():
    m = FORMS["matmul_batch"]()
    x = random_input([2, 3, 7, 48])
    gram = x.reshape(-1, 48).astype(np.float64).T @ x.reshape(-1, 48)
    got = run(factorize_exactly(m, ("channel", 1), gram), {"x": x})[0]
    np.testing.assert_allclose(got, run(m, {"x": x})[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(30, 50), (50, 30)])
def test_weight_error_equals_tail_singular_values(shape):
    w = rng_w(*shape, seed=3)
    s = np.linalg.svd(w, compute_uv=False)
    d = lm.decompose(w)
    errs = d.rel_errors()
    for j in (1, 5, 17, len(s)):
        approx = lm.approximation(lm.Layer(None, w, np.float32, "x", ("axis", -1), None, 2), ("channel", 1), d, j)
        tail = np.sqrt(np.sum(s[j:] ** 2))
        assert np.linalg.norm(w - approx) == pytest.approx(tail, rel=1e-9, abs=1e-12)
        assert errs[j] == pytest.approx(tail / np.linalg.norm(w), rel=1e-9, abs=1e-12)


def test_whitened_output_error_equals_whitened_tail():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((24, 40))
    x = rng.standard_normal((500, 40)) @ rng.standard_normal((40, 40))  # correlated input features
    gram = x.T @ x
    ws = w @ np.linalg.cholesky(gram)
    s = np.linalg.svd(ws, compute_uv=False)
    d = lm.decompose(w, gram=gram, ridge=0.0)
    layer = lm.Layer(None, w, np.float32, "x", ("axis", -1), None, 2)
    plain = lm.decompose(w)
    for j in (1, 6, 12, 20):
        out_err = np.linalg.norm((w - lm.approximation(layer, ("channel", 1), d, j)) @ x.T)
        assert out_err == pytest.approx(np.sqrt(np.sum(s[j:] ** 2)), rel=1e-6)
        assert d.rel_errors()[j] == pytest.approx(out_err / np.linalg.norm(w @ x.T), rel=1e-6)
        # the whitened SVD is optimal for the output: plain SVD at the same rank is worse
        plain_err = np.linalg.norm((w - lm.approximation(layer, ("channel", 1), plain, j)) @ x.T)
        assert out_err < plain_err


def test_alds_spectral_error_matches_numpy():
    """ALDS's error: max over groups of sigma_{j+1}(W_i) relative to ||W||_2 (whitened: of W_i S_i)."""
    w = rng_w(20, 36, seed=4)
    for k in (1, 2, 3):
        eps = lm.decompose(w, k).spectral_errors()
        groups = [np.linalg.svd(g, compute_uv=False) for g in np.split(w, k, axis=1)]
        for j in (0, 3, 11):
            assert eps[j] == pytest.approx(max(s[j] for s in groups) / np.linalg.norm(w, 2), rel=1e-9)
    gram = np.cov(np.random.default_rng(1).standard_normal((36, 200))) * 200
    eps = lm.decompose(w, 1, gram, ridge=0.0).spectral_errors()
    s = np.linalg.svd(w @ np.linalg.cholesky(gram), compute_uv=False)
    assert eps[5] == pytest.approx(s[5] / s[0], rel=1e-9)


def _mlp(seed: int = 0) -> onnx.ModelProto:
    """x(…,64) -> MatMul 64x96 -> Relu -> MatMul 96x80 -> Add bias; a second branch Gemm from x."""
    r = np.random.default_rng(seed)
    spec = 1.0 / (1 + np.arange(64)) ** 0.7
    w1 = (r.standard_normal((64, 64)) * spec) @ r.standard_normal((64, 96)) * 0.2  # decaying spectrum
    w2 = r.standard_normal((96, 80)) * 0.1
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], "fc1"), helper.make_node("Relu", ["h"], ["hr"], "relu"),
             helper.make_node("MatMul", ["hr", "w2"], ["h2"], "fc2"), helper.make_node("Add", ["h2", "b2"], ["y"], "add")]
    inits = {"w1": w1, "w2": w2, "b2": r.standard_normal(80)}
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 80])],
                          [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _calib(n: int = 16, seed: int = 9) -> list[dict[str, np.ndarray]]:
    r = np.random.default_rng(seed)
    mix = r.standard_normal((64, 64)) * (1.0 / (1 + np.arange(64)))[:, None]
    return [{"x": (r.standard_normal((1, 4, 64)) @ mix).astype(np.float32)} for _ in range(n)]


def test_pass_stats_output_error_matches_ort():
    m, calib = _mlp(), _calib()
    res = LowRank(mode="ratio", value=0.25, min_params=0)(m, Context(calib=calib))
    fc1 = next(r for r in res.stats["layers"] if r["node"] == "fc1")
    assert fc1["whitened"] and fc1["rank"] == 16 and fc1["params_after"] == 16 * (64 + 96)
    # the reported output error of fc1 equals what ORT computes on the calibration data
    ref = [i for i in m.graph.initializer if i.name == "w1"][0]
    xs = np.concatenate([c["x"].reshape(-1, 64) for c in calib])
    ya = xs @ numpy_helper.to_array(ref)
    probe = onnx.ModelProto()
    probe.CopyFrom(res.model)
    probe.graph.output.append(helper.make_empty_tensor_value_info("h"))
    yb = np.concatenate([run(probe, c)[1].reshape(-1, 96) for c in calib])
    assert np.linalg.norm(yb - ya) / np.linalg.norm(ya) == pytest.approx(fc1["output_error"], rel=1e-3)
    assert fc1["macs_before"] == 4 * 64 * 96 and fc1["macs_after"] == 4 * 16 * (64 + 96)


def test_data_aware_beats_plain_svd_at_equal_rank():
    m, calib = _mlp(), _calib()
    plain = LowRank(mode="ratio", value=0.25, min_params=0, data_aware=False)(m, Context())
    white = LowRank(mode="ratio", value=0.25, min_params=0)(m, Context(calib=calib))
    assert plain.stats["params_after"] == white.stats["params_after"]
    ref = [run(m, c)[0] for c in calib]
    err = {k: sum(np.linalg.norm(run(r.model, c)[0] - y) for c, y in zip(calib, ref, strict=True))
           for k, r in (("plain", plain), ("white", white))}
    assert err["white"] < 0.8 * err["plain"]


def test_pass_weight_error_equals_numpy_tail_and_input_untouched():
    m = _mlp()
    before = m.SerializeToString()
    res = LowRank(mode="energy", value=0.8, min_params=0)(m, Context())
    assert m.SerializeToString() == before
    w1 = numpy_helper.to_array([i for i in m.graph.initializer if i.name == "w1"][0]).astype(np.float64)
    s = np.linalg.svd(w1, compute_uv=False)
    fc1 = next(r for r in res.stats["layers"] if r["node"] == "fc1")
    r = fc1["rank"]
    assert np.sum(s[:r] ** 2) / np.sum(s**2) >= 0.8 > np.sum(s[: r - 1] ** 2) / np.sum(s**2)
    assert fc1["weight_error"] == pytest.approx(np.sqrt(np.sum(s[r:] ** 2) / np.sum(s**2)), rel=1e-4)
    # dynamic batch still runs; the replaced weights are gone and every name is unique
    x = random_input([3, 4, 64])
    assert run(res.model, {"x": x})[0].shape == (3, 4, 80)
    inits = [i.name for i in res.model.graph.initializer]
    assert "w1" not in inits and len(set(inits)) == len(inits)
    names = [n.name for n in res.model.graph.node]
    assert len(set(names)) == len(names) and all(n.startswith(("fc1_lr", "fc2_lr", "relu", "add")) for n in names)


def _alds_layers(n_layers: int = 5, seed: int = 0) -> list[lm.AldsLayer]:
    rng = np.random.default_rng(seed)
    layers = []
    for i in range(n_layers):
        m, n = 64 + 16 * i, 96
        w = rng.standard_normal((m, n)) * (1.0 / (1 + np.arange(n)) ** (0.3 + 0.3 * i))  # different decays
        opts = []
        for k in (1, 2, 4):
            d = lm.decompose(w, k)
            ranks = np.arange(1, d.max_rank + 1)
            opts.append(lm.Option(("channel", k), k * m + n, ranks, d.spectral_errors()[ranks]))
        layers.append(lm.AldsLayer(float(m * n), opts))
    return layers


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.7])
def test_alds_respects_budget_equalizes_and_beats_uniform(keep: float):
    layers = _alds_layers()
    full = sum(L.full for L in layers)
    res = lm.alds(layers, keep * full, seeds=3)
    assert res.feasible and res.size <= keep * full
    done = [(layers[i].options[c], j, e) for i, ((c, j), e) in enumerate(zip(res.choice, res.errors, strict=True))
            if j is not None]
    assert len(done) >= 2
    for opt, j, e in done:
        # equalized: each factorized layer is at the smallest rank whose error is <= the common level,
        # and (tolerance, because ranks are discrete) within 0.05 of it when the rank is >= 5
        assert e <= res.eps
        assert j == opt.ranks[0] or opt.errs[list(opt.ranks).index(j) - 1] > res.eps
        assert j < 5 or res.eps - e <= 0.05
    # a uniform rank fraction with k=1 at no more parameters has a worse maximum error
    for frac in np.linspace(0.05, 1.0, 96):
        sizes, worst = 0.0, 0.0
        for L in layers:
            o = L.options[0]
            j = max(1, int(np.ceil(frac * o.ranks[-1])))
            if j * o.cost < L.full:
                sizes += j * o.cost
                worst = max(worst, o.errs[j - 1])
            else:
                sizes += L.full
        if sizes <= res.size:
            assert worst >= res.eps - 1e-12


def test_alds_pass_budget_in_params_and_macs():
    m = _mlp()
    for measure in ("params", "macs"):
        res = LowRank(mode="alds", value=0.5, alds_measure=measure, min_params=0)(m, Context())
        key = "params" if measure == "params" else "macs"
        assert res.stats[f"{key}_after"] <= 0.5 * res.stats[f"{key}_before"]
        assert res.stats["alds"]["feasible"]
        x = random_input([2, 4, 64])
        ref, got = run(m, {"x": x})[0], run(res.model, {"x": x})[0]
        assert got.shape == ref.shape and np.linalg.norm(got - ref) < np.linalg.norm(ref)


def test_conv_whitened_im2col_gram_predicts_ort_error():
    """The reported output error of a strided, padded, dilated Conv matches ORT: checks the im2col order."""
    m = FORMS["conv_stride_pad_dil"]()
    rng = np.random.default_rng(2)
    base = rng.standard_normal((12, 12))
    calib = [{"x": np.einsum("ij,njhw->nihw", base, rng.standard_normal((1, 12, 15, 17))).astype(np.float32)}
             for _ in range(6)]
    res = LowRank(mode="ratio", value=0.4, min_params=0)(m, Context(calib=calib))
    (row,) = res.stats["layers"]
    b = numpy_helper.to_array(m.graph.initializer[1])[None, :, None, None]
    ya = np.concatenate([run(m, c)[0] - b for c in calib])
    yb = np.concatenate([run(res.model, c)[0] - b for c in calib])
    assert np.linalg.norm(yb - ya) / np.linalg.norm(ya) == pytest.approx(row["output_error"], rel=1e-3)


def test_spatial_and_auto_conv_forms():
    """Spatial form (kh x 1 then 1 x kw): its size, and its ORT output error equals the reported one."""
    m = FORMS["conv_stride_pad_dil"]()
    rng = np.random.default_rng(3)
    calib = [{"x": rng.standard_normal((1, 12, 15, 17)).astype(np.float32)} for _ in range(4)]
    res = LowRank(mode="ratio", value=0.4, conv_form="spatial", min_params=0)(m, Context(calib=calib))
    (row,) = res.stats["layers"]
    assert row["form"] == "spatial" and not row["whitened"]
    r = row["rank"]
    assert r == int(np.ceil(0.4 * min(12 * 3, 16 * 3))) and row["params_after"] == r * (12 * 3 + 16 * 3)
    assert [n.op_type for n in res.model.graph.node] == ["Conv", "Conv"]
    b = numpy_helper.to_array(m.graph.initializer[1])[None, :, None, None]
    ya = np.concatenate([run(m, c)[0] - b for c in calib])
    yb = np.concatenate([run(res.model, c)[0] - b for c in calib])
    assert np.linalg.norm(yb - ya) / np.linalg.norm(ya) == pytest.approx(row["output_error"], rel=1e-3)
    # auto picks, per layer, whichever form meets the rule with fewer parameters
    auto = LowRank(mode="energy", value=0.8, conv_form="auto", min_params=0)(m, Context())
    chan = LowRank(mode="energy", value=0.8, conv_form="channel", min_params=0)(m, Context())
    spat = LowRank(mode="energy", value=0.8, conv_form="spatial", min_params=0)(m, Context())
    sizes = [x.stats["params_after"] for x in (chan, spat)]
    assert sizes[0] != sizes[1] and auto.stats["params_after"] == min(sizes) < 16 * 12 * 9


def test_skips_small_excluded_grouped_and_no_saving_layers():
    m = _mlp()
    res = LowRank(mode="ratio", value=0.3, exclude=["^fc2$"], min_params=6000)(m, Context())
    reasons = {s["node"]: s["reason"] for s in res.stats["skipped"]}
    assert reasons["fc2"] == "excluded by pattern"
    assert res.stats["factorized"] == 1
    res = LowRank(mode="ratio", value=0.3, min_params=8000)(m, Context())
    reasons = {s["node"]: s["reason"] for s in res.stats["skipped"]}
    assert reasons["fc1"] == "small layer: 6144 params < min_params=8000"
    assert reasons["fc2"] == "small layer: 7680 params < min_params=8000"
    assert not res.modified
    # rank 32 of a 64x96 layer: 32 >= 64*96/160 = 38.4 is false, but ratio 0.7 -> 45 >= 38.4 is
    res = LowRank(mode="ratio", value=0.7, min_params=0)(m, Context())
    reasons = {s["node"]: s["reason"] for s in res.stats["skipped"]}
    assert reasons["fc1"] == "no saving: rank 45 >= m*n/(m+n) = 38.4"
    grouped = one_node_model("Conv", [1, 32, 8, 8], {"w": rng_w(64, 8, 3, 3)}, group=4)
    res = LowRank(min_params=0)(grouped, Context())
    assert res.stats["skipped"] == [{"node": "layer", "reason": "grouped Conv (group=4)"}]


def test_weight_from_constant_node_is_factorized_and_removed():
    w = rng_w(64, 80, seed=6).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["w"], "wconst", value=numpy_helper.from_array(w, "w")),
             helper.make_node("MatMul", ["x", "w"], ["y"], "mm")]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 80])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    res = LowRank(mode="ratio", value=0.5, min_params=0)(m, Context())
    assert [n.op_type for n in res.model.graph.node] == ["MatMul", "MatMul"]
    x = random_input([3, 64])
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    err = np.linalg.norm(run(res.model, {"x": x})[0] - x @ w) / np.linalg.norm(x @ w)
    assert res.stats["layers"][0]["weight_error"] == pytest.approx(np.sqrt(np.sum(s[32:] ** 2) / np.sum(s**2)), rel=1e-4)
    assert 0 < err < 1


def test_round_to_and_unique_names_against_collisions():
    m = _mlp()
    m.graph.node[1].name = "fc1_lr_enc"  # a name the pass would derive
    res = LowRank(mode="ratio", value=0.2, round_to=8, min_params=0)(m, Context())
    assert [r["rank"] % 8 for r in res.stats["layers"]] == [0, 0]
    names = [n.name for n in res.model.graph.node]
    assert len(set(names)) == len(names) and "fc1_lr_enc_1" in names
    onnx.checker.check_model(res.model)


@pytest.mark.parametrize("bad", [{"value": 0.0}, {"value": 1.5}, {"round_to": 0}, {"exclude": ["("]},
                                 {"mode": "svd"}, {"ridge": -1.0}])
def test_params_validation(bad):
    with pytest.raises(RecipeError):
        LowRank(**bad)


def test_data_aware_without_data_is_a_clear_error():
    with pytest.raises(BadInputError, match="calibration data"):
        LowRank(data_aware=True)(_mlp(), Context())


@pytest.mark.slow
def test_digits_whitened_beats_plain_and_alds_keeps_budget():
    """Bundled digits CNN: at equal ranks the whitened SVD keeps more test accuracy than plain SVD."""
    root = Path(__file__).resolve().parents[3] / "models"
    if not (root / "digits_cnn.onnx").exists():
        pytest.skip("models/digits_cnn.onnx not built")
    m = onnx.load(str(root / "digits_cnn.onnx"))
    z, t = np.load(root / "digits_calib.npz"), np.load(root / "digits_test.npz")
    calib = [{"input": z[z.files[0]][i]} for i in range(32)]
    xs, labels = t[t.files[0]][:200], np.load(root / "digits_test_labels.npy")[:200]

    def acc(model):
        sess = make_session(model, Target(kind="cpu", threads=1))
        return np.mean([int(np.argmax(sess.run(None, {"input": x})[0])) == y for x, y in zip(xs, labels, strict=True)])

    plain = LowRank(mode="ratio", value=0.3, data_aware=False)(m, Context())
    white = LowRank(mode="ratio", value=0.3)(m, Context(calib=calib))
    assert plain.stats["params_after"] == white.stats["params_after"] < 0.5 * white.stats["params_before"]
    assert acc(white.model) > acc(plain.model) + 0.05
    alds = LowRank(mode="alds", value=0.4)(m, Context(calib=calib))
    assert alds.stats["params_after"] <= 0.4 * alds.stats["params_before"]
    assert acc(alds.model) > 0.9
