"""`--min-fidelity` on the CLI is the run's floor, always; its first cosine/pearson/top1/sequence
bound is also the quantize pass's goal unless `--quantize-goal` gives one. `sequence=V`: the floor
reads a recognizer's decoded text, and the pass keeps layers float until that text holds."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from builders import ctc_head

from onnxslim_compress.cli.main import main
from onnxslim_compress.jobs.guard import FidelityFloor, goal_from_floor
from onnxslim_compress.passes.base import Pipeline
from onnxslim_compress.passes.quantize.quantize import Quantize, QuantizeParams
from onnxslim_compress.passes.quantize.sensitivity import quantize_goal_flag
from onnxslim_compress.runtime.metrics import FidelityReport, ctc_collapse
from onnxslim_compress.runtime.session import Target, make_session


def _texts(model, feeds) -> list[tuple[int, ...]]:
    sess = make_session(model, Target("cpu", threads=1))
    return [ctc_collapse(sess.run(None, f)[0][0].argmax(-1)) for f in feeds]


def test_one_sequence_bound_is_both_the_floor_and_the_quantize_goal():
    assert quantize_goal_flag("sequence=0.97") == {"min_fidelity": "sequence=0.97"}
    assert quantize_goal_flag("none") == {"min_fidelity": None}
    floor = FidelityFloor.parse("sequence=0.97")
    assert floor.bounds == (("sequence", 0.97),) and floor.quantize_goal() == "sequence=0.97"


def test_the_floor_is_the_goal_of_a_quantize_pass_without_one():
    pipe = Pipeline([Quantize(QuantizeParams(mode="int8")), Quantize(QuantizeParams(mode="int8", min_fidelity="top1=0.9"))])
    got = goal_from_floor(pipe, FidelityFloor.parse("rel_l2=0.1,cosine=0.995"))
    assert [p.params.min_fidelity for p in got.passes] == ["cosine=0.995", "top1=0.9"]  # its own goal stays
    # a rel_l2 bound alone: the pearson it implies, as the back-off reads it (1 - r^2 / 2)
    assert goal_from_floor(pipe, FidelityFloor.parse("rel_l2=0.1")).passes[0].params.min_fidelity == "pearson=0.995"
    assert goal_from_floor(pipe, None) is pipe
    fp16 = Pipeline([Quantize(QuantizeParams(mode="fp16"))])
    assert goal_from_floor(fp16, FidelityFloor.parse("cosine=0.9")).passes[0].params.min_fidelity is None


@pytest.fixture
def ctc_files(tmp_path):
    src = tmp_path / "ctc.onnx"
    onnx.save(ctc_head(), src)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.stack([np.random.default_rng(k).standard_normal((1, 12, 16)).astype(np.float32) for k in range(16)]))
    return src, calib


def _run_json(argv, capsys) -> dict:
    assert main([*map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_lone_cosine_bound_is_the_floor_not_a_goal_under_the_default_floor(ctc_files, tmp_path, capsys):
    """It used to be the pass's goal only, with the default floor pearson=0.99,rel_l2=0.15 still in
    force (the floor as written needed `cosine=X,cosine=X`)."""
    src, calib = ctc_files
    args = ["compress", src, "-o", tmp_path / "o.onnx", "--quantize", "int8", "--calib", calib, "--calibration", "minmax"]
    rep = _run_json([*args, "--min-fidelity", "cosine=0.5"], capsys)
    assert rep["no_harm"]["floor"] == "cosine=0.5"
    q = next(s for s in rep["passes"] if s["name"] == "quantize")
    assert q["params"]["min_fidelity"] == "cosine=0.5"
    (tmp_path / "o.onnx").unlink()
    rep = _run_json([*args, "--quantize-goal", "pearson=0.9"], capsys)  # a goal alone: the default floor stays
    assert rep["no_harm"]["floor"] == "pearson=0.99,rel_l2=0.15"
    q = next(s for s in rep["passes"] if s["name"] == "quantize")
    assert q["params"]["min_fidelity"] == "pearson=0.9"


def test_the_sequence_floor_reads_integer_id_outputs_too():
    """ddddocr argmaxes inside the graph: its output is integer ids, checked for shape only by the
    other metrics, but its decoded text is what a sequence floor is for."""
    rep = FidelityReport(per_output={"ids": {"exact": 0.9, "sequence": 0.75}, "scores": {"sequence": 1.0, "cosine": 0.5}},
                         samples=4)
    assert FidelityFloor.parse("sequence=0.97").shortfalls(rep) == ["output 'ids' sequence 0.75 < 0.97"]
    assert FidelityFloor.parse("cosine=0.9,sequence=0.5").shortfalls(rep) == ["output 'scores' cosine 0.5 < 0.9"]


def test_compress_min_fidelity_sequence_keeps_the_decoded_text(tmp_path, capsys):
    m = ctc_head()
    src = tmp_path / "ctc.onnx"
    onnx.save(m, src)
    feeds = [{"x": np.random.default_rng(k).standard_normal((1, 12, 16)).astype(np.float32)} for k in range(16)]
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.stack([f["x"] for f in feeds]))
    out = tmp_path / "ctc.int8.onnx"
    args = ["compress", str(src), "-o", str(out), "--quantize", "int8", "--calib", str(calib), "--calibration", "minmax"]
    # a pearson floor is met while 4 of the 16 texts change (frames flip between near-equal classes)
    assert main([*args, "--min-fidelity", "pearson=0.9"]) == 0
    ref = _texts(m, feeds)
    assert sum(a != b for a, b in zip(ref, _texts(onnx.load(out), feeds), strict=True)) == 4
    out.unlink()
    assert main([*args, "--min-fidelity", "sequence=1.0"]) == 0
    assert _texts(onnx.load(out), feeds) == ref


@pytest.mark.parametrize("spec", ["sequence=0", "sequence=1.5", "sequence=x"])
def test_bad_sequence_bound_is_exit_2(spec, tmp_path, capsys):
    src = tmp_path / "ctc.onnx"
    onnx.save(ctc_head(), src)
    assert main(["compress", str(src), "-o", str(tmp_path / "o.onnx"), "--min-fidelity", spec]) == 2
    assert not (tmp_path / "o.onnx").exists()
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
