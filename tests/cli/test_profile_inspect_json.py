"""profile A B --ops profiles both models; inspect/profile JSON carry tool and version (issue 19)."""

import json

import onnx
from builders import resnet_like

from onnxslim_compress import __version__
from onnxslim_compress.cli.main import main


def test_profile_ops_of_both_models_and_json_tool_version(tmp_path, capsys):
    a = tmp_path / "a.onnx"
    onnx.save(resnet_like(), str(a))
    b = tmp_path / "b.onnx"
    code = main(["compress", str(a), "-o", str(b), "--quantize", "--synthetic-calib", "--json"])  # no --calib: opt in
    capsys.readouterr()
    assert code == 0
    code = main(["profile", str(a), str(b), "--ops", "--runs", "5", "--warmup", "1", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (out["tool"], out["version"]) == ("onnxslim-compress", __version__)
    ops_a, ops_b = {r["op_type"] for r in out["ops"]}, {r["op_type"] for r in out["ops_b"]}
    assert "QLinearConv" in ops_b and "QLinearConv" not in ops_a
    code = main(["profile", str(a), str(b), "--ops", "--runs", "5", "--warmup", "1"])
    text = capsys.readouterr().out
    assert "A a.onnx" in text and "B b.onnx" in text and "QLinearConv" in text
    code = main(["inspect", str(a), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert (out["tool"], out["version"]) == ("onnxslim-compress", __version__)


def test_print_recipe_needs_no_output(tmp_path, capsys):
    a = tmp_path / "a.onnx"
    onnx.save(resnet_like(), str(a))
    code = main(["compress", str(a), "--prune", "0.3", "--print-recipe"])
    out, err = capsys.readouterr()
    assert code == 0, err and "prune_channels" in out
    assert "ratio: 0.3" in out
    code = main(["compress", str(a), "--prune", "0.3"])
    err = capsys.readouterr().err
    assert code == 2 and "-o/--output" in err


def test_shipped_metadata_has_file_names_only(tmp_path, capsys):
    import numpy as np
    from builders import random_input

    from onnxslim_compress.jobs.compress import file_names_only, get_report

    a = tmp_path / "a.onnx"
    onnx.save(resnet_like(), str(a))
    data = tmp_path / "eval.npz"
    np.savez(data, input=np.stack([random_input((1, 3, 16, 16), seed=s) for s in range(4)]))
    out = tmp_path / "sub" / "o.onnx"
    out.parent.mkdir()
    assert main(["compress", str(a.absolute()), "-o", str(out.absolute()), "--eval", str(data.absolute())]) == 0
    assert f"wrote {out.absolute()}" in capsys.readouterr().out  # the terminal still says where
    meta = next(p.value for p in onnx.load(str(out)).metadata_props if p.key == "onnxslim_compress")
    assert str(tmp_path) not in meta
    rep = get_report(onnx.load(str(out)))
    assert (rep["input"], rep["output"]) == ("a.onnx", "o.onnx")
    assert "eval.npz" in rep["fidelity"]["data"]
    assert file_names_only({"d": "C:\\\\b\\\\m.onnx and /x/y/z.npz (2 of 2)", "n": 1}) == {"d": "m.onnx and z.npz (2 of 2)", "n": 1}
