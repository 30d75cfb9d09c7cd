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
    assert code == 2 and "the search constrains accuracy, top1, cosine" in err


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
