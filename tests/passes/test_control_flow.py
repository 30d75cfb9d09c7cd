"""Control flow: specialization on fixed inputs (If inlining) and passes inside If/Loop/Scan bodies.

Every model here is generated: an If whose branches read weights of the outer graph, a Loop with a
body MatMul, a Scan with a body Gemm, Ifs nested three deep, and a body holding an op the passes
do not know. Outputs are compared with the float model run in ONNX Runtime.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import run
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress.cli.main import main
from onnxslim_compress.errors import BadInputError
from onnxslim_compress.graph.index import iter_bodies, uniquify_body_names
from onnxslim_compress.jobs.compress import compress, flags_pipeline
from onnxslim_compress.passes import bodies as bd
from onnxslim_compress.passes.context import Context
from onnxslim_compress.passes.low_rank.low_rank import LowRank
from onnxslim_compress.passes.quantize import placement
from onnxslim_compress.passes.quantize.quantize import Quantize
from onnxslim_compress.passes.recipe import pipeline_from_dict
from onnxslim_compress.passes.specialize import Specialize, parse_fix_inputs
from onnxslim_compress.runtime.activations import iterate_tensors

D = 64
RNG = np.random.default_rng(0)


def _w(shape, seed: int, rank: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if rank is None:
        return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)
    a = rng.standard_normal((shape[0], rank)) @ rng.standard_normal((rank, shape[1]))
    return (a / np.sqrt(shape[0] * rank) + 1e-4 * rng.standard_normal(shape)).astype(np.float32)


def _model(nodes, inputs, outputs, inits, opset: int = 17, extra_opsets=()) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "cf", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _branch(name: str, nodes, out: str) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])


def if_outer_weights(rank: int | None = None) -> onnx.ModelProto:
    """y = If(sr == 16000): relu(x @ Wa) ; (x @ Wb + b). Wa, Wb, b live in the outer graph."""
    then = _branch("then", [helper.make_node("MatMul", ["x", "Wa"], ["t_mm"], name="t_mm"),
                            helper.make_node("Relu", ["t_mm"], ["t_out"], name="t_relu")], "t_out")
    els = _branch("else", [helper.make_node("MatMul", ["x", "Wb"], ["e_mm"], name="e_mm"),
                           helper.make_node("Add", ["e_mm", "b"], ["e_out"], name="e_add")], "e_out")
    nodes = [helper.make_node("Equal", ["sr", "k16000"], ["cond"], name="eq"),
             helper.make_node("If", ["cond"], ["y"], name="if0", then_branch=then, else_branch=els)]
    inits = [numpy_helper.from_array(_w((D, D), 1, rank), "Wa"), numpy_helper.from_array(_w((D, D), 2, rank), "Wb"),
             numpy_helper.from_array(np.full(D, 0.1, np.float32), "b"),
             numpy_helper.from_array(np.array(16000, np.int64), "k16000")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, D]),
                          helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, D])], inits)


def loop_matmul(rank: int | None = None) -> onnx.ModelProto:
    """h_{k+1} = tanh(h_k @ W + x), three iterations; outputs the final h and every h (scan output)."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "Wl"], ["l_mm"], name="l_mm"),
         helper.make_node("Add", ["l_mm", "x"], ["l_add"], name="l_add"),
         helper.make_node("Tanh", ["l_add"], ["h_out"], name="l_tanh"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="l_cond"),
         helper.make_node("Identity", ["h_out"], ["h_scan"], name="l_scan")],
        "loop_body",
        [helper.make_tensor_value_info("it", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [2, D])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [2, D]),
         helper.make_tensor_value_info("h_scan", TensorProto.FLOAT, [2, D])],
        [numpy_helper.from_array(_w((D, D), 3, rank), "Wl")],
    )
    nodes = [helper.make_node("Loop", ["trips", "true", "h0"], ["h_final", "h_all"], name="loop0", body=body)]
    inits = [numpy_helper.from_array(np.array(3, np.int64), "trips"), numpy_helper.from_array(np.array(True), "true"),
             numpy_helper.from_array(np.zeros((2, D), np.float32), "h0")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, D])],
                  [helper.make_tensor_value_info("h_final", TensorProto.FLOAT, [2, D]),
                   helper.make_tensor_value_info("h_all", TensorProto.FLOAT, [3, 2, D])], inits)


def scan_gemm(rank: int | None = None) -> onnx.ModelProto:
    """s_{t+1} = tanh(Gemm(x_t, W, b) + s_t) over 4 steps of xs; outputs the final s and every s."""
    body = helper.make_graph(
        [helper.make_node("Gemm", ["x_t", "Ws", "bs"], ["s_gemm"], name="s_gemm", transB=1),
         helper.make_node("Add", ["s_gemm", "s_in"], ["s_add"], name="s_add"),
         helper.make_node("Tanh", ["s_add"], ["s_out"], name="s_tanh"),
         helper.make_node("Identity", ["s_out"], ["y_t"], name="s_y")],
        "scan_body",
        [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [2, D]), helper.make_tensor_value_info("x_t", TensorProto.FLOAT, [2, D])],
        [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [2, D]), helper.make_tensor_value_info("y_t", TensorProto.FLOAT, [2, D])],
        [numpy_helper.from_array(_w((D, D), 4, rank), "Ws"), numpy_helper.from_array(np.full(D, 0.05, np.float32), "bs")],
    )
    nodes = [helper.make_node("Scan", ["s0", "xs"], ["s_final", "ys"], name="scan0", body=body, num_scan_inputs=1)]
    inits = [numpy_helper.from_array(np.zeros((2, D), np.float32), "s0")]
    return _model(nodes, [helper.make_tensor_value_info("xs", TensorProto.FLOAT, [4, 2, D])],
                  [helper.make_tensor_value_info("s_final", TensorProto.FLOAT, [2, D]),
                   helper.make_tensor_value_info("ys", TensorProto.FLOAT, [4, 2, D])], inits)


def nested_if3() -> onnx.ModelProto:
    """Three Ifs deep, each level deciding on `sr` (read from the outermost scope) and each branch
    holding a MatMul on an outer weight (level k: W{k}a / W{k}b)."""
    def level(k: int, x: str) -> tuple[list, str]:
        out = f"y{k}"
        if k == 4:
            return [helper.make_node("MatMul", [x, "W4"], [out], name="mm4")], out
        inner_nodes, inner_out = level(k + 1, f"h{k}")
        then = _branch(f"then{k}", [helper.make_node("MatMul", [x, f"W{k}a"], [f"h{k}"], name=f"mm{k}a"), *inner_nodes,
                                    helper.make_node("Relu", [inner_out], [f"t{k}"], name=f"relu{k}")], f"t{k}")
        els = _branch(f"else{k}", [helper.make_node("MatMul", [x, f"W{k}b"], [f"e{k}"], name=f"mm{k}b")], f"e{k}")
        return [helper.make_node("Greater", ["sr", f"lim{k}"], [f"c{k}"], name=f"gt{k}"),
                helper.make_node("If", [f"c{k}"], [out], name=f"if{k}", then_branch=then, else_branch=els)], out

    nodes, out = level(1, "x")
    inits = [numpy_helper.from_array(_w((D, D), 10 + k), f"W{k}{s}") for k in (1, 2, 3) for s in "ab"]
    inits += [numpy_helper.from_array(_w((D, D), 20), "W4")]
    inits += [numpy_helper.from_array(np.array(v, np.int64), f"lim{k}") for k, v in ((1, 4000), (2, 8000), (3, 12000))]
    nodes.append(helper.make_node("Identity", [out], ["y"], name="out"))
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, D]),
                          helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, D])], inits)


def if_unknown_op() -> onnx.ModelProto:
    """An If whose then-branch holds com.microsoft.Gelu (ORT runs it; the pass rules do not know it)."""
    m = if_outer_weights()
    then = next(a.g for a in m.graph.node[1].attribute if a.name == "then_branch")
    then.node[1].CopyFrom(helper.make_node("Gelu", ["t_mm"], ["t_out"], name="t_gelu", domain="com.microsoft"))
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return m


def x_feeds(n: int, srs=(16000, 8000), seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((2, D)).astype(np.float32), "sr": np.array(srs[k % len(srs)], np.int64)}
            for k in range(n)]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def body_ops(model: onnx.ModelProto) -> dict[str, list[str]]:
    return {path: [n.op_type for n in body.node] for path, _, body, _ in iter_bodies(model.graph)}


def check(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)


# ------------------------------------------------------------------------------------------------
# specialization


def test_fix_input_inlines_the_taken_branch_with_outer_weights():
    m = if_outer_weights()
    res = Specialize(fix_inputs={"sr": 16000})(m)
    out = res.model
    check(out)
    assert [i.name for i in out.graph.input] == ["x"]
    assert not any(n.op_type == "If" for n in out.graph.node) and not list(iter_bodies(out.graph))
    assert [n.op_type for n in out.graph.node] == ["MatMul", "Relu"]
    st = res.stats
    assert st["fixed"] == {"sr": {"value": 16000, "dtype": "int64", "shape": []}}
    assert st["branches_dropped"] == ["if0/else_branch"] and st["ifs_folded"][0]["taken"] == "then_branch"
    for sr, branch_ok in ((16000, True), (8000, False)):
        feed = x_feeds(1, (sr,))[0]
        ref = run(m, feed)[0]
        got = run(out, {"x": feed["x"]})[0]
        assert np.allclose(ref, got, atol=1e-6) is branch_ok
    assert len(m.graph.node) == 2  # the input model is not mutated


def test_fix_input_other_value_takes_the_else_branch():
    m = if_outer_weights()
    out = Specialize(fix_inputs={"sr": 8000})(m).model
    check(out)
    feed = x_feeds(1, (8000,))[0]
    assert np.allclose(run(m, feed)[0], run(out, {"x": feed["x"]})[0], atol=1e-6)
    assert [n.op_type for n in out.graph.node] == ["MatMul", "Add"]


@pytest.mark.parametrize("sr", [16000, 10000, 6000, 2000])
def test_fix_input_folds_ifs_nested_three_deep(sr):
    m = nested_if3()
    res = Specialize(fix_inputs={"sr": sr})(m)
    out = res.model
    check(out)
    assert not list(iter_bodies(out.graph))
    depth = {16000: 3, 10000: 3, 6000: 2, 2000: 1}[sr]  # 2000 takes the else at level 1: one If folded
    assert len(res.stats["ifs_folded"]) == depth
    feed = x_feeds(1, (sr,))[0]
    assert np.abs(run(m, feed)[0] - run(out, {"x": feed["x"]})[0]).max() <= 1e-6


def test_fix_input_folds_an_if_inside_a_loop_body():
    """The If stays inside the Loop body (the Loop is not flattened); its condition depends on sr only."""
    m = nested_if3()
    loop_body = helper.make_graph(
        [*m.graph.node, helper.make_node("Identity", ["cond_in"], ["cond_out"], name="lc")], "body",
        [helper.make_tensor_value_info("it", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, D])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, D])])
    inits = list(m.graph.initializer) + [numpy_helper.from_array(np.array(2, np.int64), "n"),
                                         numpy_helper.from_array(np.array(True), "t")]
    lm = _model([helper.make_node("Loop", ["n", "t", "x0"], ["yf"], name="loop", body=loop_body)],
                [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [2, D]), helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                [helper.make_tensor_value_info("yf", TensorProto.FLOAT, [2, D])], inits)
    res = Specialize(fix_inputs={"sr": 16000})(lm)
    check(res.model)
    assert body_ops(res.model) == {"loop/body": ["MatMul", "MatMul", "MatMul", "MatMul", "Relu", "Relu", "Relu", "Identity", "Identity"]}
    feed = {"x0": x_feeds(1)[0]["x"] * 0.1}
    assert np.abs(run(lm, {**feed, "sr": np.array(16000, np.int64)})[0] - run(res.model, feed)[0]).max() <= 1e-6


def test_fix_input_parsing_and_errors():
    assert parse_fix_inputs(["sr=16000", "mask=1,0,1", "gain=0.5", "on=true"]) == {
        "fix_inputs": {"sr": 16000, "mask": [1, 0, 1], "gain": 0.5, "on": True}}
    for bad in ("sr", "=3", "sr=abc"):
        with pytest.raises(BadInputError):
            parse_fix_inputs([bad])
    with pytest.raises(BadInputError, match="no such graph input"):
        Specialize(fix_inputs={"rate": 1})(if_outer_weights())


def test_compress_api_fix_inputs_reports_fixed_and_dropped_and_fidelity():
    m = if_outer_weights()
    res = compress(m, fix_inputs={"sr": 16000}, eval_data=x_feeds(4, (16000,)))
    check(res.model)
    step = res.report["passes"][0]
    assert step["name"] == "specialize" and step["stats"]["branches_dropped"] == ["if0/else_branch"]
    assert res.report["subgraphs_untouched"] == []
    fid = res.report["fidelity"]
    assert fid["per_output"]["y"]["max_abs"] <= 1e-6
    assert [i.name for i in res.model.graph.input] == ["x"]


def if_else_fails_at_run_time() -> onnx.ModelProto:
    """y = If(sr == 16000): relu(x) ; Reshape(x, [3]) — the else branch cannot run on x [2, D], as a
    real model's branch for another sample rate cannot run on this rate's window length."""
    then = _branch("then", [helper.make_node("Relu", ["x"], ["t_out"], name="t_relu")], "t_out")
    els = _branch("else", [helper.make_node("Reshape", ["x", "bad_shape"], ["e_out"], name="e_reshape")], "e_out")
    nodes = [helper.make_node("Equal", ["sr", "k16000"], ["cond"], name="eq"),
             helper.make_node("If", ["cond"], ["y"], name="if0", then_branch=then, else_branch=els)]
    inits = [numpy_helper.from_array(np.array(16000, np.int64), "k16000"),
             numpy_helper.from_array(np.array([3], np.int64), "bad_shape")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, D]),
                          helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, D])], inits)


def test_fix_input_checks_the_input_fed_the_fixed_value_not_the_generated_one():
    """Regression (silero VAD): with no data the generated `sr` picks the else branch, which fails;
    the input model must be checked fed sr=16000, so the run succeeds and equals relu(x)."""
    m = if_else_fails_at_run_time()
    with pytest.raises(BadInputError):  # without the fix the generated sample rate cannot run
        compress(m)
    res = compress(m, fix_inputs={"sr": 16000})
    check(res.model)
    assert res.report["no_harm"]["samples"] >= 1 and "not_checked" not in res.report["no_harm"]
    x = np.random.default_rng(3).standard_normal((2, D)).astype(np.float32)
    np.testing.assert_allclose(run(res.model, {"x": x})[0], np.maximum(x, 0), atol=1e-6)


def test_cli_fix_input_flag(tmp_path):
    src, dst = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(nested_if3(), src)
    assert main(["compress", str(src), "-o", str(dst), "--fix-input", "sr=16000", "--fix-input", "x=0", "--json"]) == 0
    out = onnx.load(dst)
    check(out)
    assert [i.name for i in out.graph.input] == [] and not list(iter_bodies(out.graph))


def test_cli_summary_names_untouched_bodies(tmp_path, capsys):
    src, dst = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(if_unknown_op(), src)
    assert main(["compress", str(src), "-o", str(dst), "--lowrank", "energy=0.9"]) == 0
    rows = sorted(line for line in capsys.readouterr().out.splitlines() if "left as is" in line)
    assert len(rows) == 2 and "If body if0/else_branch" in rows[0] and "low_rank: no saving" in rows[0]
    assert "If body if0/then_branch" in rows[1] and "com.microsoft.Gelu" in rows[1]


def test_recipe_specialize_entry():
    pipe = pipeline_from_dict({"passes": [{"specialize": {"fix_inputs": {"sr": 8000}}}, "simplify"]})
    out = pipe.run(if_outer_weights()).model
    check(out)
    assert not list(iter_bodies(out.graph))


# ------------------------------------------------------------------------------------------------
# body tensors carried out for calibration


def test_expose_carries_body_tensors_of_if_loop_and_scan():
    m = loop_matmul()
    bd.prepare(m)
    types = bd.tensor_types(m)
    exposed, mapping, depth = bd.expose(m, ["l_mm", "h_in"], types)
    assert depth == {"l_mm": 1, "h_in": 1}
    feed = {"x": x_feeds(1)[0]["x"]}
    vals = next(iterate_tensors(exposed, [mapping["l_mm"], mapping["h_in"], "h_all"], [feed]))
    h_all = vals["h_all"]
    assert vals[mapping["l_mm"]].shape == (3, 2, D)
    assert np.allclose(np.tanh(vals[mapping["l_mm"]] + feed["x"]), h_all, atol=1e-6)
    assert np.allclose(vals[mapping["h_in"]][1:], h_all[:-1], atol=1e-6)
    m = if_outer_weights()
    exposed, mapping, depth = bd.expose(m, ["t_mm", "e_mm"], bd.tensor_types(m))
    assert depth == {"t_mm": 0, "e_mm": 0}
    f = x_feeds(1, (16000,))[0]
    vals = next(iterate_tensors(exposed, [mapping["t_mm"], mapping["e_mm"]], [f]))
    assert np.allclose(vals[mapping["t_mm"]], f["x"] @ _w((D, D), 1), atol=1e-5) and vals[mapping["e_mm"]].size == 0


def test_uniquify_renames_clashing_branch_names():
    m = if_outer_weights()
    els = next(a.g for a in m.graph.node[1].attribute if a.name == "else_branch")
    for n in els.node:  # the else branch now defines t_mm too, as exporters often do
        n.output[:] = ["t_mm" if o == "e_mm" else o for o in n.output]
        n.input[:] = ["t_mm" if i == "e_mm" else i for i in n.input]
    then = next(a.g for a in m.graph.node[1].attribute if a.name == "then_branch")
    ref = [run(m, f)[0] for f in x_feeds(2)]
    assert uniquify_body_names(m.graph) == 1
    then_defs = {o for n in then.node for o in n.output}
    else_defs = {o for n in els.node for o in n.output}
    assert then_defs.isdisjoint(else_defs) and "t_mm__1" in then_defs | else_defs
    onnx.checker.check_model(m, full_check=True)
    assert all(np.allclose(run(m, f)[0], r) for f, r in zip(x_feeds(2), ref, strict=True))


# ------------------------------------------------------------------------------------------------
# passes inside bodies


def _quantized_matmuls(model: onnx.ModelProto) -> dict[str, int]:
    """Per body: how many MatMul/Gemm read a DequantizeLinear output (weights quantized)."""
    out = {}
    for path, _, body, _ in iter_bodies(model.graph):
        dq = {n.output[0] for n in body.node if n.op_type == "DequantizeLinear"}
        out[path] = sum(1 for n in body.node if n.op_type in ("MatMul", "Gemm", "Conv") and n.input[1] in dq)
    return out


def test_quantize_int8_inside_both_if_branches_with_outer_weights():
    m = if_outer_weights()
    feeds = x_feeds(16)
    res = compress(m, pipeline=flags_pipeline(quantize={"mode": "int8"}), calib=feeds)
    out = res.model
    check(out)
    assert _quantized_matmuls(out) == {"if0/then_branch": 1, "if0/else_branch": 1}
    qstats = next(s for s in res.report["passes"] if s["name"] == "quantize")["stats"]
    assert qstats["body_quantized_units"] == 2
    assert sum(r.get("bias_corrected", 0) for r in qstats["bodies"]) == 2
    # ORT fuses QDQ inside both branches (simplify made the else branch MatMul+Add a Gemm)
    assert qstats["integer_kernels_by_op"] == {"MatMulIntegerToFloat": 1, "QGemm": 1}
    assert res.report["subgraphs_untouched"] == []
    assert {t.name for t in out.graph.initializer}.isdisjoint({"Wa", "Wb"})  # the float weights went
    for f in x_feeds(4, seed=5):
        assert cosine(run(m, f)[0], run(out, f)[0]) > 0.999


def test_bias_correction_of_an_outer_bias_gives_the_branch_its_own_copy():
    """The else branch's MatMul -> Add(b) reads b from the outer graph; bias correction edits it,
    so the branch gets b__body and the outer b (still read by nobody else) stays as it was."""
    m = if_outer_weights()
    out = Quantize(mode="int8")(m, _ctx(x_feeds(16))).model
    check(out)
    els = next(b for p, _, b, _ in iter_bodies(out.graph) if p == "if0/else_branch")
    body_b = next(t for t in els.initializer if t.name == "b__body")
    assert not np.array_equal(numpy_helper.to_array(body_b), np.full(D, 0.1, np.float32))
    assert "b__body" in {i for n in els.node for i in n.input} and "b" not in {i for n in els.node for i in n.input}
    for f in x_feeds(4, seed=8):
        assert cosine(run(m, f)[0], run(out, f)[0]) > 0.999


def test_quantize_leaves_an_uncalibrated_branch_float_and_says_so():
    """Calibrated on sr=2000 only: the outer else branch runs; the inner Ifs never do. A unit that
    reads only outer tensors (mm1a reads x) is still calibrated; units on body-local tensors are not."""
    m = nested_if3()
    res = Quantize(mode="int8")(m, _ctx(x_feeds(8, (2000,))))
    out = res.model
    check(out)
    got = _quantized_matmuls(out)
    assert got["if1/else_branch"] == 1 and got["if1/then_branch"] == 1
    assert sum(v for k, v in got.items() if "/if2/" in k) == 0
    row = next(r for r in res.stats["bodies"] if r["body"] == "if1/then_branch/if2/else_branch")
    assert row["changed"] is False and "no calibration sample reached it" in row["reason"]
    for sr in (2000, 16000):
        f = x_feeds(1, (sr,))[0]
        assert cosine(run(m, f)[0], run(out, f)[0]) > 0.999


def _ctx(calib):
    return Context(calib=calib)


def test_quantize_int8_loop_body_matmul():
    m = loop_matmul()
    feeds = [{"x": f["x"]} for f in x_feeds(16)]
    res = Quantize(mode="int8")(m, _ctx(feeds))
    out = res.model
    check(out)
    assert _quantized_matmuls(out) == {"loop0/body": 1}
    for f in feeds[:4]:
        for a, b in zip(run(m, f), run(out, f), strict=True):
            assert cosine(a, b) > 0.999


def test_quantize_twice_leaves_quantized_bodies_alone():
    once = Quantize(mode="int8")(loop_matmul(), _ctx([{"x": f["x"]} for f in x_feeds(8)]))
    twice = Quantize(mode="int8")(once.model, _ctx([{"x": f["x"]} for f in x_feeds(8)]))
    assert twice.modified is False and "already quantized" in twice.stats["skipped"][0]["reason"]


def loop_with_alternating_if() -> onnx.ModelProto:
    """A Loop whose body If takes the then branch on even iterations and the else branch on odd ones:
    the branch's tensors exist only in some iterations, so they cannot be stacked as scan outputs."""
    then = _branch("then", [helper.make_node("MatMul", ["h_in", "Wt"], ["a_mm"], name="a_mm"),
                            helper.make_node("MatMul", ["a_mm", "Wt2"], ["a_mm2"], name="a_mm2"),
                            helper.make_node("Relu", ["a_mm2"], ["a_out"], name="a_relu")], "a_out")
    els = _branch("else", [helper.make_node("MatMul", ["h_in", "We"], ["b_mm"], name="b_mm"),
                           helper.make_node("Tanh", ["b_mm"], ["b_out"], name="b_tanh")], "b_out")
    body = helper.make_graph(
        [helper.make_node("Mod", ["it", "two"], ["par"], name="par"), helper.make_node("Equal", ["par", "zero"], ["even"], name="even"),
         helper.make_node("If", ["even"], ["h_out"], name="alt", then_branch=then, else_branch=els),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="lc")],
        "loop_body",
        [helper.make_tensor_value_info("it", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [2, D])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [2, D])],
        [numpy_helper.from_array(np.array(2, np.int64), "two"), numpy_helper.from_array(np.array(0, np.int64), "zero")],
    )
    inits = [numpy_helper.from_array(_w((D, D), 30), "Wt"), numpy_helper.from_array(_w((D, D), 31), "We"),
             numpy_helper.from_array(_w((D, D), 32), "Wt2"),
             numpy_helper.from_array(np.array(4, np.int64), "trips"), numpy_helper.from_array(np.array(True), "true")]
    return _model([helper.make_node("Loop", ["trips", "true", "x"], ["y"], name="loop0", body=body)],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, D])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, D])], inits)


def test_quantize_never_crashes_on_an_if_whose_branch_changes_between_loop_iterations():
    """a_mm2 reads a_mm, a tensor of the then branch only: carried out of the Loop it would be
    [2, 64] on even iterations and empty on odd ones, which ORT cannot stack. The calibration run is
    retried without such tensors: a_mm2 stays float (said so), a_mm (reads h_in) is quantized."""
    m = loop_with_alternating_if()
    feeds = [{"x": f["x"]} for f in x_feeds(8)]
    res = Quantize(mode="int8")(m, _ctx(feeds))
    out = res.model
    check(out)
    assert "tensors of Ifs inside Loop/Scan bodies were not calibrated" in res.stats["body_calibration"]
    assert "Inconsistent shape in loop output" in res.stats["body_calibration"]
    row = next(r for r in res.stats["bodies"] if r["body"] == "loop0/body/alt/then_branch")
    assert row["changed"] is True and [u["node"] for u in row["layers"]] == ["a_mm"]
    assert any(s["node"] == "a_mm2" and "were not calibrated" in s["reason"] for s in row["skipped"])
    assert _quantized_matmuls(out)["loop0/body/alt/then_branch"] == 1
    for f in feeds[:3]:
        assert cosine(run(m, f)[0], run(out, f)[0]) > 0.999


def test_quantize_int8_scan_body_gemm():
    m = scan_gemm()
    rng = np.random.default_rng(3)
    feeds = [{"xs": rng.standard_normal((4, 2, D)).astype(np.float32)} for _ in range(16)]
    res = Quantize(mode="int8")(m, _ctx(feeds))
    out = res.model
    check(out)
    assert _quantized_matmuls(out) == {"scan0/body": 1}
    for f in feeds[:4]:
        for a, b in zip(run(m, f), run(out, f), strict=True):
            assert cosine(a, b) > 0.999


def test_quantize_int8_nested_if_three_deep():
    m = nested_if3()
    feeds = x_feeds(24, (16000, 10000, 6000, 2000))
    res = Quantize(mode="int8")(m, _ctx(feeds))
    out = res.model
    check(out)
    got = _quantized_matmuls(out)
    assert got == {"if1/then_branch": 1, "if1/else_branch": 1, "if1/then_branch/if2/then_branch": 1,
                   "if1/then_branch/if2/else_branch": 1, "if1/then_branch/if2/then_branch/if3/then_branch": 2,
                   "if1/then_branch/if2/then_branch/if3/else_branch": 1}
    for f in x_feeds(8, (16000, 10000, 6000, 2000), seed=9):  # up to four int8 MatMuls in a row
        assert cosine(run(m, f)[0], run(out, f)[0]) > 0.995


def test_quantize_nested_three_deep_after_fix_input_is_flat():
    m = nested_if3()
    res = compress(m, pipeline=flags_pipeline(quantize={"mode": "int8"}), fix_inputs={"sr": 16000},
                   calib=x_feeds(16, (16000,)))
    out = res.model
    check(out)
    assert not list(iter_bodies(out.graph))
    # flat now: the four chained MatMuls read float-fed activations, so activations=auto runs them dynamic
    assert not [n for n in out.graph.node if n.op_type == "MatMul"]
    assert sum(n.op_type == "MatMulInteger" for n in out.graph.node) == 4
    f = x_feeds(1, (16000,), seed=4)[0]
    assert cosine(run(m, f)[0], run(out, {"x": f["x"]})[0]) > 0.999


def test_unknown_body_op_left_untouched_and_reported():
    m = if_unknown_op()
    res = compress(m, pipeline=flags_pipeline(quantize={"mode": "int8"}), calib=x_feeds(8))
    out = res.model
    check(out)
    then_before = next(a.g for a in m.graph.node[1].attribute if a.name == "then_branch")
    if_node = next(n for n in out.graph.node if n.op_type == "If")
    then_after = next(a.g for a in if_node.attribute if a.name == "then_branch")
    assert [n.op_type for n in then_after.node] == [n.op_type for n in then_before.node]
    assert _quantized_matmuls(out) == {"if0/then_branch": 0, "if0/else_branch": 1}
    untouched = res.report["subgraphs_untouched"]
    assert [u["body"] for u in untouched] == ["if0/then_branch"]
    assert "com.microsoft.Gelu" in untouched[0]["reason"]
    for f in x_feeds(2, seed=3):
        assert cosine(run(m, f)[0], run(out, f)[0]) > 0.999


def test_lossless_run_lists_every_body_untouched_byte_for_byte():
    m = scan_gemm()
    res = compress(m)
    assert [(u["body"], u["op"], u["body_nodes"]) for u in res.report["subgraphs_untouched"]] == [("scan0/body", "Scan", 4)]
    (_, _, before, _), = iter_bodies(m.graph)
    (_, _, after, _), = iter_bodies(res.model.graph)
    assert [n.SerializeToString() for n in before.node] == [n.SerializeToString() for n in after.node]
    # onnxslim (simplify) hoists body initializers into the main graph: same values, same names
    inits_after = {t.name: t for t in [*after.initializer, *res.model.graph.initializer]}
    assert all(np.array_equal(numpy_helper.to_array(t), numpy_helper.to_array(inits_after[t.name])) for t in before.initializer)


@pytest.mark.parametrize("make", [if_outer_weights, loop_matmul, scan_gemm])
def test_low_rank_inside_bodies(make):
    m = make(rank=8)
    out = LowRank(mode="energy", value=0.999)(m).model
    check(out)
    n_before = sum(len(b.initializer) for _, _, b, _ in iter_bodies(m.graph))
    factor_nodes = {p: ops.count("MatMul") + ops.count("Gemm") for p, ops in body_ops(out).items()}
    orig_nodes = {p: ops.count("MatMul") + ops.count("Gemm") for p, ops in body_ops(m).items()}
    assert all(factor_nodes[p] == 2 * orig_nodes[p] for p in orig_nodes), (factor_nodes, n_before)
    params = sum(int(np.prod(t.dims)) for _, _, b, _ in iter_bodies(out.graph) for t in b.initializer if len(t.dims) == 2)
    assert params <= len(orig_nodes) * 2 * 2 * D * 8 + 1
    feeds = ([{"xs": np.random.default_rng(1).standard_normal((4, 2, D)).astype(np.float32)}] if make is scan_gemm
             else [f if make is if_outer_weights else {"x": f["x"]} for f in x_feeds(2)])
    for f in feeds:
        for a, b in zip(run(m, f), run(out, f), strict=True):
            assert np.abs(a - b).max() < 1e-2 * max(1.0, float(np.abs(a).max()))


@pytest.mark.parametrize("mode", ["fp16", "int4-weight"])
@pytest.mark.parametrize("make", [if_outer_weights, loop_matmul])
def test_fp16_and_int4_weights_inside_bodies(make, mode):
    m = make()
    for _, _, body, _ in [(None, None, m.graph, None), *iter_bodies(m.graph)]:
        for t in body.initializer:  # no weight below fp16's normal range: to_fp16 would keep it fp32
            w = numpy_helper.to_array(t)
            if w.dtype == np.float32 and w.ndim == 2:
                t.CopyFrom(numpy_helper.from_array((np.where(w < 0, -1, 1) * np.maximum(np.abs(w), 1e-3)).astype(np.float32), t.name))
    res = Quantize(mode=mode)(m, _ctx(None))
    out = res.model
    check(out)
    assert res.stats["bodies"] and all(r["changed"] for r in res.stats["bodies"])
    want = TensorProto.FLOAT16 if mode == "fp16" else TensorProto.INT4
    body_types = {t.data_type for _, _, b, _ in iter_bodies(out.graph) for t in b.initializer}
    assert want in body_types
    tol = 1e-2 if mode == "fp16" else 0.99
    for f in (x_feeds(2) if make is if_outer_weights else [{"x": f["x"]} for f in x_feeds(2)]):
        for a, b in zip(run(m, f), run(out, f), strict=True):
            if mode == "fp16":
                assert np.abs(a - b).max() < tol
            else:
                assert cosine(a, b) > tol


def test_prune_says_it_does_not_work_inside_bodies():
    res = compress(if_outer_weights(), pipeline=flags_pipeline(prune={"ratio": 0.3}), calib=x_feeds(4))
    rows = res.report["subgraphs_untouched"]
    assert [r["body"] for r in rows] == ["if0/else_branch", "if0/then_branch"]
    assert all("prune_channels: channel pruning inside control-flow bodies is not implemented" in r["reason"] for r in rows)


def test_a_body_the_placement_rules_cannot_read_stays_float_with_the_reason(monkeypatch):
    real = placement.build_units

    def odd(vm, *args):
        if vm.graph.name == "view_if0/then_branch":
            raise ValueError("odd body")
        return real(vm, *args)

    monkeypatch.setattr(placement, "build_units", odd)
    m = if_outer_weights()
    res = Quantize(mode="int8")(m, _ctx(x_feeds(8)))
    check(res.model)
    rows = {r["body"]: r for r in res.stats["bodies"]}
    assert rows["if0/then_branch"]["changed"] is False and rows["if0/then_branch"]["reason"] == "ValueError: odd body"
    assert rows["if0/else_branch"]["changed"] is True
