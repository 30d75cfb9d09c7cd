"""One meaning of --metric (a built-in name or MODULE:FUNC) on compare and search, and the ORT-style
exclusion flags really keeping nodes float (issue 19)."""

import json

import numpy as np
import onnx
import pytest
from builders import random_input, resnet_like

from onnxslim_compress.cli.main import main
from onnxslim_compress.jobs.compress import get_report


def call(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def files(tmp_path):
    m = tmp_path / "m.onnx"
    onnx.save(resnet_like(), str(m))
    data = tmp_path / "d.npz"
    np.savez(data, input=np.stack([random_input((1, 3, 16, 16), seed=s) for s in range(8)]))
    metric = tmp_path / "mymetric.py"
    metric.write_text("import numpy as np\n\ndef neg_l1(a, b):\n"
                      "    return -float(np.abs(a['logits'] - b['logits']).mean())\n")
    return m, data, metric


def test_compare_metric_builtin_name_and_function(files, capsys):
    m, data, metric = files
    code, out, err = call(["compare", m, m, "--data", data, "--metric", "cosine"], capsys)
    assert code == 0, err
    line = [ln for ln in out.splitlines() if ln.startswith("cosine:")]
    assert len(line) == 1 and abs(float(line[0].split()[1]) - 1.0) < 1e-6
    code, out, err = call(["compare", m, m, "--data", data, "--metric", f"{metric}:neg_l1", "--json",
                           "--assert", f"{metric}:neg_l1>=-1e-6"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["metric"]["name"] == f"{metric}:neg_l1" and d["metric"]["value"] == 0.0
    code, _, err = call(["compare", m, m, "--data", data, "--metric", "nonsense"], capsys)
    assert code == 2 and "expected one of accuracy" in err


def test_search_metric_accepts_a_function(files, tmp_path, capsys):
    m, data, metric = files
    out = tmp_path / "best.onnx"
    code, stdout, err = call(["search", m, "-o", out, "--calib", data, "--eval", data, "--metric", f"{metric}:neg_l1",
                              "--max-drop", "10", "--trials", "2", "--objective", "size", "--json", "--no-progress",
                              "--report", tmp_path / "search.html"], capsys)
    assert code == 0, err
    rep = json.loads(stdout)
    assert rep["baseline"]["value"] == 0.0  # the input scored against itself: mean |A - A| = 0
    assert out.exists()
    page = (tmp_path / "search.html").read_text()
    assert "<h2>Search</h2>" in page and page.count("<circle") >= 1  # the Pareto plot of the trials
    code, _, err = call(["search", m, "-o", out, "--eval", data, "--metric", "max_abs", "--trials", "1"], capsys)
    assert code == 2 and "expected one of accuracy, top1, sequence, cosine or MODULE:FUNC" in err


def test_op_types_and_node_names_to_exclude_stay_float(files, tmp_path, capsys):
    m, data, _ = files
    out = tmp_path / "q.onnx"
    model = onnx.load(str(m))
    first_conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    code, _, err = call(["compress", m, "-o", out, "--quantize", "--calib", data, "--op-types-to-exclude", "Gemm",
                         "--nodes-to-exclude", first_conv], capsys)
    assert code == 0, err
    q = next(p for p in get_report(onnx.load(str(out)))["passes"] if p["name"] == "quantize")
    rows = {r["node"]: r for r in q["stats"]["layers"]}
    gemm = next(n.name for n in model.graph.node if n.op_type == "Gemm")
    assert rows[gemm]["precision"] == "float" and rows[first_conv]["precision"] == "float"
    assert sorted(q["stats"]["excluded"]) == sorted([gemm, first_conv])
    assert sum(r["precision"] == "int8" for r in rows.values()) == q["stats"]["quantized_units"]


def _add_model(delta: np.ndarray):
    """y = x + delta on [1, 4, 4] scores: delta moves chosen frames' argmax (a CTC recognizer's
    per-frame scores [N, T, C] made different on purpose)."""
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph([helper.make_node("Add", ["x", "d"], ["y"])], "ctc",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4])],
                          [numpy_helper.from_array(delta.astype(np.float32), "d")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def test_sequence_metric_on_compare_and_compress_gate(tmp_path, capsys):
    """Sample 0 frames a a _ b, sample 1 frames a _ a b (ids 1 1 0 2 / 1 0 1 2). B adds 10 to class 0
    at frame 1: sample 0 becomes a _ _ b (still "ab"), sample 1 stays a _ a b: per-frame top-1 7/8,
    sequences 2/2. B2 adds 10 to class 1 at frame 1 instead: sample 0 stays "ab", sample 1 becomes
    a a a b = "ab" instead of "aab": top-1 7/8 again, sequences 1/2."""
    x = np.zeros((2, 1, 4, 4), np.float32)
    for n, frames in enumerate([[1, 1, 0, 2], [1, 0, 1, 2]]):
        for t, c in enumerate(frames):
            x[n, 0, t, c] = 5.0
    data = tmp_path / "x.npz"
    np.savez(data, x=x)
    a, b, b2 = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "b2.onnx"
    onnx.save(_add_model(np.zeros((1, 4, 4))), str(a))
    d = np.zeros((1, 4, 4))
    d[0, 1, 0] = 10.0
    onnx.save(_add_model(d), str(b))
    d2 = np.zeros((1, 4, 4))
    d2[0, 1, 1] = 10.0
    onnx.save(_add_model(d2), str(b2))
    for model, seq in ((b, 1.0), (b2, 0.5)):
        code, out, err = call(["compare", a, model, "--data", data, "--metric", "sequence", "--json"], capsys)
        assert code == 0, err
        rep = json.loads(out)
        assert rep["metric"] == {"name": "sequence", "value": seq}
        assert rep["per_output"]["y"]["top1"] == 7 / 8
    # compress --eval --max-drop sequence=V gates on the same figure (the identity graph is kept lossless)
    code, out, err = call(["compress", b2, "-o", tmp_path / "c.onnx", "--eval", data, "--max-drop", "sequence=0.0", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["fidelity"]["per_output"]["y"]["sequence"] == 1.0
    code, out, err = call(["search", a, "-o", tmp_path / "s.onnx", "--metric", "sequence", "--print-recipe"], capsys)
    assert code == 0, err
