"""Bad input end to end through the CLI (issue 8): one line on stderr, exit 2, input untouched, no output.

Complements test_cli.py (not ONNX, truncated, missing external data, output == input, output folder,
recipe typos): wrong --input-shape, calibration data whose names or shapes do not match the model,
an empty calibration folder, and Ctrl-C in the middle of a run (a real subprocess and SIGINT).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import GraphBuilder, resnet_like

from onnxslim_compress.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def work(tmp_path):
    """A folder with the model (dynamic batch, input [N,3,16,16]) and a good calibration file."""
    onnx.save(resnet_like(batch="N"), str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal((4, 1, 3, 16, 16)).astype(np.float32))
    return tmp_path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def bad(argv: list, capsys, folder: Path, *needles: str) -> str:
    before = snapshot(folder)
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    assert snapshot(folder) == before  # input untouched, nothing written
    return lines[0]


def compress_argv(work: Path, *extra) -> list:
    return ["compress", work / "m.onnx", "-o", work / "out.onnx", "--no-progress", *extra]


@pytest.mark.parametrize(
    "spec, needles",
    [
        ("nope:1x3x16x16", ["'nope'", "not a model input", "input"]),
        ("input:1x3x16", ["input"]),  # wrong rank
        ("input:1x4x16x16", ["input", "3"]),  # a dim the model fixes
        ("input:1x3xabcx16", ["dims must be integers"]),
        ("input:0x3x16x16", ["positive"]),
        ("1x3x16x16", ["NAME:"]),
    ],
)
@pytest.mark.parametrize("passes", [[], ["--prune", "0.3"]], ids=["lossless", "prune"])
def test_wrong_input_shape(work, capsys, spec, needles, passes):
    """Checked before any work; with the lossless passes alone it was silently ignored (exit 0)."""
    line = bad(compress_argv(work, "--input-shape", spec, *passes), capsys, work, *needles)
    assert "failed" not in line  # rejected up front, not by a pass midway


def test_calibration_names_do_not_match(work, capsys):
    np.savez(work / "wrong.npz", images=np.zeros((2, 1, 3, 16, 16), np.float32))
    bad(compress_argv(work, "--quantize", "int8", "--calib", work / "wrong.npz"), capsys, work, "'input'", "images")


def test_calibration_shape_does_not_match(work, capsys):
    np.savez(work / "small.npz", input=np.zeros((2, 1, 3, 8, 8), np.float32))
    line = bad(compress_argv(work, "--prune", "0.3", "--calib", work / "small.npz"), capsys, work, "'input'")
    assert "16" in line and "8" in line  # what the model expects and what was given


def test_calibration_rank_does_not_match(work, capsys):
    np.savez(work / "flat.npz", input=np.zeros((2, 768), np.float32))
    bad(compress_argv(work, "--quantize", "int8", "--calib", work / "flat.npz"), capsys, work, "'input'")


def test_calibration_folder_is_empty(work, capsys):
    (work / "calib_dir").mkdir()
    bad(compress_argv(work, "--quantize", "int8", "--calib", work / "calib_dir"), capsys, work, "calib_dir")


def test_calibration_folder_with_mismatched_sample(work, capsys):
    d = work / "samples"
    d.mkdir()
    np.save(d / "0.npy", np.zeros((1, 3, 16, 16), np.float32))
    np.save(d / "1.npy", np.zeros((1, 3, 16, 15), np.float32))
    bad(compress_argv(work, "--quantize", "int8", "--calib", d), capsys, work, "input")


# ---- Ctrl-C ----


def slow_model(path: Path) -> None:
    """Wide convolutions on 48x48 maps: pruning with recovery takes many seconds on calibration data."""
    b = GraphBuilder(3)
    y = b.conv_bn_relu("input", 3, 64)
    for _ in range(4):
        y = b.conv_bn_relu(y, 64, 64)
    p = b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1)
    b.gemm(p, 64, 10)
    b.nodes[-1].output[0] = "logits"
    onnx.save(b.model([("input", [1, 3, 48, 48])], [("logits", [1, 10])]), str(path))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to see when the run is busy")
def test_ctrl_c_leaves_no_output(tmp_path):
    slow_model(tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal((64, 1, 3, 48, 48)).astype(np.float32))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = snapshot(tmp_path)
    cmd = [sys.executable, "-m", "onnxslim_compress", "compress", str(tmp_path / "m.onnx"), "-o", str(out_dir / "o.onnx"),
           "--prune", "0.5", "--lowrank", "ratio=0.5", "--quantize", "int8", "--calib", str(tmp_path / "calib.npz"),
           "--no-progress"]
    # SIG_DFL in the child: a test run started in the background (`cmd &`) inherits SIGINT ignored,
    # and the CLI rightly leaves an inherited disposition alone
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # past the imports and the argument checks: well into the passes
        deadline = time.monotonic() + 60
        while proc.poll() is None and cpu_seconds(proc.pid) < 4.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode in (130, 2), (proc.returncode, err)
    assert len(lines) == 1 and "interrupted" in lines[0], err
    assert os.listdir(out_dir) == []  # no output, no temp file or folder
    assert snapshot(tmp_path) == before
