"""CI gates (issue 19): `compare --assert` and `compress --max-drop` exit 3 with one line naming what
failed and the value measured; a passing gate exits 0."""

import json

import numpy as np
import onnx
import pytest
from builders import random_input, resnet_like, run
from onnx import numpy_helper

from onnxslim_compress.cli.main import main
from onnxslim_compress.runtime.metrics import Assertion


def call(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def pair(tmp_path):
    """A and B where B's logits are A's plus exactly 0.5 (the Gemm bias shifted)."""
    a = resnet_like()
    b = onnx.ModelProto()
    b.CopyFrom(a)
    gemm = next(n for n in b.graph.node if n.op_type == "Gemm")
    init = next(t for t in b.graph.initializer if t.name == gemm.input[2])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(0.5), init.name))
    pa, pb = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(a, str(pa))
    onnx.save(b, str(pb))
    data = tmp_path / "d.npz"
    np.savez(data, input=np.stack([random_input((1, 3, 16, 16), seed=s) for s in range(8)]))
    x = random_input((1, 3, 16, 16), seed=0)
    diff = np.abs(run(a, {"input": x})[0] - run(b, {"input": x})[0]).max()
    assert abs(diff - 0.5) < 1e-5
    return pa, pb, data


def test_assertion_parse_all_operators():
    assert [str(Assertion.parse(t)) for t in ("cosine>=0.99", "max_abs<=1e-3", "snr_db>20", "rel_l2[logits]<0.5")] == [
        "cosine>=0.99", "max_abs<=0.001", "snr_db>20", "rel_l2[logits]<0.5"]
    a = Assertion.parse("max_abs[out]<=1e-3")
    assert (a.metric, a.op, a.value, a.output) == ("max_abs", "<=", 1e-3, "out")


def test_compare_assert_fails_with_exit_3_and_one_line(pair, capsys):
    pa, pb, data = pair
    code, out, err = call(["compare", pa, pb, "--data", data, "--assert", "cosine>=0.5", "--assert", "max_abs<=1e-3"], capsys)
    assert code == 3, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1
    assert "max_abs<=0.001 failed: max_abs 0.5" in lines[0] and "output logits" in lines[0]
    assert "cosine" not in lines[0]  # the one that held is not named
    assert "assert cosine>=0.5: ok" in out
    assert f"B ({pb}) against A ({pa}):" in out  # which is which


def test_compare_assert_passes_exit_0(pair, capsys):
    pa, pb, data = pair
    code, out, err = call(["compare", pa, pb, "--data", data, "--assert", "max_abs[logits]<0.51",
                           "--assert", "max_abs>0.49", "--json"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["assertions"] == [{"assert": "max_abs[logits]<0.51", "ok": True}, {"assert": "max_abs>0.49", "ok": True}]
    assert d["tool"] == "onnxslim-compress" and d["version"]


def test_compare_assert_bad_metric_is_bad_input(pair, capsys):
    pa, pb, data = pair
    code, _, err = call(["compare", pa, pb, "--data", data, "--assert", "cosin>=0.5"], capsys)
    assert code == 2 and "unknown metric 'cosin'" in err
    code, _, err = call(["compare", pa, pb, "--data", data, "--assert", "cosine=0.5"], capsys)
    assert code == 2 and "expected METRIC>=V" in err


def test_compress_max_drop_gate(tmp_path, capsys):
    m = tmp_path / "m.onnx"
    onnx.save(resnet_like(), str(m))
    data = tmp_path / "e.npz"
    np.savez(data, input=np.stack([random_input((1, 3, 16, 16), seed=s) for s in range(8)]))
    out = tmp_path / "o.onnx"
    # the fidelity floor would back the prune off first (issue 14); off, the gate sees the 0.5 prune
    code, _, err = call(["compress", m, "-o", out, "--prune", "0.5", "--eval", data, "--max-drop", "cosine=0",
                         "--min-fidelity", "none"], capsys)
    assert code == 3, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--max-drop cosine=0 failed: cosine 0." in lines[0] and "output logits" in lines[0]
    assert not out.exists()
    code, _, err = call(["compress", m, "-o", out, "--eval", data, "--max-drop", "cosine=1e-4,max_abs=1e-3"], capsys)
    assert code == 0, err
    assert out.exists()


def test_compress_max_drop_needs_eval_and_known_metric(tmp_path, capsys):
    m = tmp_path / "m.onnx"
    onnx.save(resnet_like(), str(m))
    code, _, err = call(["compress", m, "-o", tmp_path / "o.onnx", "--max-drop", "cosine=0.01"], capsys)
    assert code == 2 and "--max-drop needs --eval" in err
    code, _, err = call(["compress", m, "-o", tmp_path / "o.onnx", "--max-drop", "snr=1"], capsys)
    assert code == 2 and "METRIC one of" in err
