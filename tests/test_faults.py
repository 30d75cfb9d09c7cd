"""Faults and awkward inputs (issue 15): no fault corrupts an output, every bad input exits 2.

Cases: a kill between the renames of the `.onnx` + `.data` pair, NaN/Inf in calibration or eval
data, an input with an initializer default (IR >= 4), rank-0 inputs, invalid graphs, decompression
bombs, huge declared dims, compare with mismatched inputs, a full TMPDIR, a full workspace disk,
Ctrl-C during start-up, the search entry point's catch-all, and leftovers of killed runs.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import GraphBuilder, resnet_like, run
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress.cli.main import main
from onnxslim_compress.data import open_data
from onnxslim_compress.errors import BadInputError, CompressError
from onnxslim_compress.files import HOST_TAG, LEGACY_AGE_S
from onnxslim_compress.graph import io as model_io
from onnxslim_compress.graph import weights
from onnxslim_compress.graph.weights import Workspace
from onnxslim_compress.search import __main__ as search_main
from onnxslim_compress.search import job

ROOT = Path(__file__).resolve().parents[1]


def matmul_model(n_out: int = 64, seed: int = 0, n_in: int = 64) -> onnx.ModelProto:
    w = np.random.default_rng(seed).standard_normal((n_in, n_out)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n_out])],
        [numpy_helper.from_array(w, "W")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def run_cli(argv: list, capsys) -> tuple[int, list[str]]:
    code = main([str(a) for a in argv])
    _, err = capsys.readouterr()
    return code, [ln for ln in err.splitlines() if ln.strip()]


def one_line_exit_2(argv: list, capsys, *needles: str) -> str:
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    assert len(err) == 1, err
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


X = np.random.default_rng(5).standard_normal((1, 64)).astype(np.float32)


def outputs_of(path: Path) -> np.ndarray:
    return run(onnx.load(str(path)), {"x": X})[0]


# ---- case 5: the .onnx + .data pair is replaced atomically ----


class Crash(OSError):
    pass


def crash_at(monkeypatch, k: int) -> list[str]:
    """Make the k-th rename/link (1-based) raise, as a kill at that moment would stop the writer."""
    calls: list[str] = []
    for name in ("replace", "rename", "link"):
        real = getattr(os, name)

        def fake(*a, _real=real, _name=name, **kw):
            calls.append(_name)
            if len(calls) >= k:
                raise Crash(errno.EIO, f"simulated kill at {_name} #{len(calls)}")
            return _real(*a, **kw)

        monkeypatch.setattr(os, name, fake)
    return calls


@pytest.mark.parametrize("offloaded", [False, True], ids=["in_memory", "offloaded"])
def test_a_kill_between_the_renames_leaves_the_old_or_the_new_pair(tmp_path, monkeypatch, offloaded):
    out = tmp_path / "o.onnx"
    old, new = matmul_model(64, seed=1), matmul_model(32, seed=2)
    model_io.save_model(old, out, external_data=True)
    ref_old = outputs_of(out)
    ref_new = run(new, {"x": X})[0]
    saw_old = saw_new = False
    for k in range(1, 10):
        src = onnx.ModelProto()
        src.CopyFrom(new)
        ws = None
        if offloaded:
            ws = Workspace.create(tmp_path)
            ws.adopt(src, None)
        with monkeypatch.context() as mp:
            calls = crash_at(mp, k)
            try:
                model_io.save_model(src, out, external_data=True)
                finished = True
            except (CompressError, OSError):
                finished = False
        got = outputs_of(out)  # loads with its data file and runs: never a mixed pair
        if got.shape == ref_old.shape and np.array_equal(got, ref_old):
            saw_old = True
            assert not finished
        else:
            np.testing.assert_array_equal(got, ref_new)
            saw_new = True
        if ws is not None:
            ws.close()
        # restore the old pair for the next crash point
        for p in tmp_path.iterdir():
            if p.name.startswith("o.onnx") or p.name.startswith(".o.onnx"):
                p.unlink() if p.is_file() else None
        model_io.save_model(old, out, external_data=True)
        if finished and len(calls) < k:
            break
    assert saw_old and saw_new
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("osc-weights"))
    assert left == ["o.onnx", *[n for n in left if n.startswith("o.onnx.") and n.endswith(".data")]] and len(left) == 2


def test_rewriting_an_output_removes_its_previous_data_file(tmp_path):
    out = tmp_path / "o.onnx"
    for seed in range(3):
        model_io.save_model(matmul_model(64, seed=seed), out, external_data=True)
        np.testing.assert_array_equal(outputs_of(out), run(matmul_model(64, seed=seed), {"x": X})[0])
        files = sorted(p.name for p in tmp_path.iterdir())
        assert len(files) == 2 and files[0] == "o.onnx" and files[1].endswith(".data"), files


def test_a_crash_after_the_model_rename_keeps_the_new_pair(tmp_path, monkeypatch):
    """The old data file goes only after the new .onnx is in place; failing to remove it is harmless."""
    out = tmp_path / "o.onnx"
    model_io.save_model(matmul_model(64, seed=1), out, external_data=True)
    real_unlink = os.unlink

    def unlink(path, *a, **k):
        if Path(path) == tmp_path / "o.onnx.data":  # the old pair's data file cannot be removed
            raise Crash(errno.EIO, "no unlink")
        return real_unlink(path, *a, **k)

    monkeypatch.setattr(os, "unlink", unlink)
    model_io.save_model(matmul_model(32, seed=2), out, external_data=True)
    monkeypatch.undo()
    np.testing.assert_array_equal(outputs_of(out), run(matmul_model(32, seed=2), {"x": X})[0])


# ---- case 6: non-finite data ----


@pytest.fixture
def digits(tmp_path):
    onnx.save(resnet_like(batch="N"), str(tmp_path / "m.onnx"))
    x = np.random.default_rng(0).standard_normal((6, 1, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "good.npz", input=x)
    bad = x.copy()
    bad[3, 0, 1, 2, 2] = np.nan
    np.savez(tmp_path / "nan.npz", input=bad)
    inf = x.copy()
    inf[4, 0, 0, 0, 0] = -np.inf
    np.savez(tmp_path / "inf.npz", input=inf)
    d = tmp_path / "folder"
    d.mkdir()
    for i in range(3):
        np.save(d / f"{i}.npy", bad[3] if i == 1 else x[i])
    return tmp_path


@pytest.mark.parametrize("passes", [["--quantize", "int8"], ["--prune", "0.3"]], ids=["int8", "prune"])
def test_nan_calibration_data_is_refused(digits, capsys, passes):
    line = one_line_exit_2(["compress", digits / "m.onnx", "-o", digits / "o.onnx", *passes, "--calib", digits / "nan.npz",
                            "--no-progress"], capsys, "'input'", "sample 3")
    assert "NaN" in line or "non-finite" in line
    assert not (digits / "o.onnx").exists()


def test_inf_eval_data_is_refused(digits, capsys):
    one_line_exit_2(["compress", digits / "m.onnx", "-o", digits / "o.onnx", "--eval", digits / "inf.npz", "--no-progress"],
                    capsys, "'input'", "sample 4")


def test_nan_in_a_folder_sample_is_refused(digits, capsys):
    one_line_exit_2(["compress", digits / "m.onnx", "-o", digits / "o.onnx", "--quantize", "int8", "--calib",
                     digits / "folder", "--no-progress"], capsys, "'input'", "1.npy")


def test_nan_compare_data_is_refused(digits, capsys):
    one_line_exit_2(["compare", digits / "m.onnx", digits / "m.onnx", "--data", digits / "nan.npz"], capsys, "sample 3")


def test_drop_nonfinite_in_a_folder_whose_first_sample_is_nan(digits, capsys):
    d = digits / "first_bad"
    d.mkdir()
    x = np.load(digits / "nan.npz")["input"]
    for i in (3, 0, 1):  # natural order: a.npy (the NaN one), b.npy, c.npy
        np.save(d / f"{'abc'[[3, 0, 1].index(i)]}.npy", x[i])
    with pytest.raises(BadInputError, match=r"input 'input' in a.npy \(sample 0\)"):
        list(open_data(d, digits / "m.onnx"))
    src = open_data(d, digits / "m.onnx", drop_nonfinite=True)
    assert len(src) == 2 and [f["input"].tolist() for f in src] == [x[0].tolist(), x[1].tolist()]
    assert "dropped 1 of 3" in capsys.readouterr().err


def test_drop_nonfinite_drops_the_sample_with_a_warning(digits, capsys):
    code, err = run_cli(["compress", digits / "m.onnx", "-o", digits / "o.onnx", "--quantize", "int8", "--calib",
                         digits / "nan.npz", "--drop-nonfinite", "--no-progress", "--json"], capsys)
    assert code == 0, err
    assert any("warning" in ln and "1 of 6" in ln and "sample 3" in ln for ln in err), err
    src = open_data(digits / "nan.npz", digits / "m.onnx", drop_nonfinite=True)
    feeds = list(src)
    assert len(src) == 5 and len(feeds) == 5
    assert all(np.isfinite(f["input"]).all() for f in feeds)


# ---- case 7: an input with an initializer default stays an input ----


def default_input_model(ir: int) -> onnx.ModelProto:
    """y = MatMul(x, W) * scale, where `scale` is a graph input whose initializer is its default."""
    b = GraphBuilder(3)
    y = b.node("MatMul", ["x", b.init("W", b.rng.standard_normal((64, 8)).astype(np.float32))])
    y = b.node("Mul", [y, "scale"])
    b.nodes[-1].output[0] = "y"
    b.inits.append(numpy_helper.from_array(np.full((1, 8), 2.0, np.float32), "scale"))
    m = b.model([("x", [1, 64]), ("scale", [1, 8])], [("y", [1, 8])])
    m.ir_version = ir
    return m


def test_an_input_with_an_initializer_default_survives_a_lossless_compress(tmp_path, capsys):
    onnx.save(default_input_model(8), str(tmp_path / "m.onnx"))
    code, err = run_cli(["compress", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--no-progress"], capsys)
    assert code == 0, err
    a, b = onnx.load(str(tmp_path / "m.onnx")), onnx.load(str(tmp_path / "o.onnx"))
    assert "scale" in [i.name for i in b.graph.input]
    other = np.arange(8, dtype=np.float32).reshape(1, 8) - 3.0
    np.testing.assert_allclose(run(b, {"x": X, "scale": other})[0], run(a, {"x": X, "scale": other})[0], rtol=1e-5)
    np.testing.assert_allclose(run(b, {"x": X})[0], run(a, {"x": X})[0], rtol=1e-5)  # the default still applies


def test_ir3_initializers_listed_as_inputs_are_still_dropped():
    m = default_input_model(3)
    rep = model_io.normalize(m)
    assert rep.initializers_removed_from_inputs == ["scale"]
    assert [i.name for i in m.graph.input] == ["x"]


# ---- case 8: rank-0 inputs ----


def scalar_input_model() -> onnx.ModelProto:
    """y = MatMul(x, W) * Cast(rate): `rate` is a rank-0 int64 input (a sample rate, a step)."""
    b = GraphBuilder(4)
    y = b.node("MatMul", ["x", b.init("W", b.rng.standard_normal((64, 8)).astype(np.float32))])
    r = b.node("Cast", ["rate"], to=TensorProto.FLOAT)
    y = b.node("Mul", [y, r])
    b.nodes[-1].output[0] = "y"
    g = helper.make_graph(
        b.nodes, "scalar",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64]), helper.make_tensor_value_info("rate", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], b.inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("layout", ["npz", "folder"])
def test_scalar_inputs_are_fed_from_data(tmp_path, capsys, layout):
    onnx.save(scalar_input_model(), str(tmp_path / "m.onnx"))
    x = np.random.default_rng(0).standard_normal((4, 1, 64)).astype(np.float32)
    rate = np.array([1, 2, 3, 4], np.int64)
    if layout == "npz":
        data = tmp_path / "d.npz"
        np.savez(data, x=x, rate=rate)
    else:
        data = tmp_path / "d"
        data.mkdir()
        for i in range(4):
            np.savez(data / f"{i}.npz", x=x[i], rate=rate[i])
    code, err = run_cli(["compress", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--quantize", "int8", "--calib", data,
                         "--eval", data, "--no-progress"], capsys)
    assert code == 0, err
    code, err = run_cli(["compare", tmp_path / "m.onnx", tmp_path / "m.onnx", "--data", data], capsys)
    assert code == 0, err
    feeds = list(open_data(data, tmp_path / "m.onnx"))
    assert [int(f["rate"]) for f in feeds] == [1, 2, 3, 4]
    assert all(isinstance(f["rate"], np.ndarray) and f["rate"].shape == () for f in feeds)


# ---- case 9: exit 2 where the input is at fault ----


@pytest.mark.parametrize("command", ["compress", "profile", "compare"])
def test_an_invalid_input_graph_exits_2(tmp_path, capsys, command):
    """A node reading a tensor nothing defines: the input's fault (it was blamed on simplify, or
    came out of ORT as an internal error)."""
    m = matmul_model()
    m.graph.node.append(helper.make_node("Add", ["y", "undefined_tensor"], ["z"], name="bad"))
    m.graph.output[0].name = "z"
    onnx.save(m, str(tmp_path / "m.onnx"))
    argv = {"compress": ["compress", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--no-progress"],
            "profile": ["profile", tmp_path / "m.onnx", "--runs", "1", "--warmup", "0"],
            "compare": ["compare", tmp_path / "m.onnx", tmp_path / "m.onnx"]}[command]
    line = one_line_exit_2(argv, capsys, "undefined_tensor")
    assert "invalid model" in line and "internal" not in line
    assert not (tmp_path / "o.onnx").exists()


def test_a_decompression_bomb_image_exits_2(tmp_path, capsys, monkeypatch):
    PIL_Image = pytest.importorskip("PIL.Image")
    onnx.save(resnet_like(), str(tmp_path / "m.onnx"))
    d = tmp_path / "imgs"
    d.mkdir()
    PIL_Image.new("RGB", (64, 64), (10, 20, 30)).save(d / "a.png")
    monkeypatch.setattr(PIL_Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 px > 2x the limit: Pillow's bomb error
    one_line_exit_2(["compress", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--quantize", "int8", "--calib", d,
                     "--no-progress"], capsys, "a.png")


def huge_dim_model() -> onnx.ModelProto:
    b = GraphBuilder(1)
    b.conv_bn_relu("input", 3, 8)
    b.nodes[-1].output[0] = "y"
    return b.model([("input", [1, 3, 200000, 200000])], [("y", [1, 8, 200000, 200000])])


@pytest.mark.parametrize("argv", [
    ["profile", "{m}", "--runs", "1", "--warmup", "0"],
    ["compare", "{m}", "{m}"],
    # --synthetic-calib: without it, int8 with no --calib exits 2 earlier, for the missing data (issue 14)
    ["compress", "{m}", "-o", "{o}", "--quantize", "int8", "--synthetic-calib", "--no-progress"],
], ids=["profile", "compare", "int8"])
def test_a_huge_declared_dim_exits_2(tmp_path, capsys, argv):
    onnx.save(huge_dim_model(), str(tmp_path / "m.onnx"))
    args = [a.format(m=tmp_path / "m.onnx", o=tmp_path / "o.onnx") for a in argv]
    one_line_exit_2(args, capsys, "'input'", "--input-shape")


@pytest.mark.parametrize("change", ["name", "shape", "dtype"])
def test_compare_with_mismatched_inputs_exits_2(tmp_path, capsys, change):
    onnx.save(matmul_model(), str(tmp_path / "a.onnx"))
    b = matmul_model(n_in=32) if change == "shape" else matmul_model()
    if change == "name":
        b.graph.input[0].name = "other"
        b.graph.node[0].input[0] = "other"
    if change == "dtype":
        b.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64
        b.graph.node.insert(0, helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT))
        b.graph.node[1].input[0] = "xf"
    onnx.save(b, str(tmp_path / "b.onnx"))
    np.savez(tmp_path / "d.npz", x=np.ones((2, 1, 64), np.float32))
    for data in ([], ["--data", tmp_path / "d.npz"]):
        line = one_line_exit_2(["compare", tmp_path / "a.onnx", tmp_path / "b.onnx", *data], capsys, "input")
        assert "internal" not in line


@pytest.fixture
def full_tmpdir(tmp_path):
    """A real, nearly full filesystem: a 256 KiB tmpfs with 16 KiB left (so Python's tempfile
    still accepts it as TMPDIR, and ORT's writes fail). Needs mount rights (root)."""
    d = tmp_path / "full"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()})")
    try:
        (d / "filler").write_bytes(b"\0" * (240 << 10))
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def wide_model(channels: int = 64, hw: int = 16, blocks: int = 2) -> onnx.ModelProto:
    b = GraphBuilder(3)
    y = b.conv_bn_relu("input", 3, channels)
    for _ in range(blocks):
        y = b.conv_bn_relu(y, channels, channels)
    p = b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1)
    b.gemm(p, channels, 10)
    b.nodes[-1].output[0] = "logits"
    return b.model([("input", [1, 3, hw, hw])], [("logits", [1, 10])])


@pytest.mark.parametrize("argv", [["compress", "{m}", "-o", "{o}", "--quantize", "int8", "--calib", "{c}", "--no-progress"],
                                  ["profile", "{m}", "--ops", "--runs", "20", "--warmup", "0"]], ids=["int8", "profile_ops"])
def test_a_full_tmpdir_exits_2(tmp_path, full_tmpdir, argv):
    """ORT fails writing its optimized model ("Protobuf serialization failed") or profile JSON."""
    onnx.save(wide_model(), str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "c.npz", input=np.random.default_rng(0).standard_normal((2, 1, 3, 16, 16)).astype(np.float32))
    env = dict(os.environ, TMPDIR=str(full_tmpdir), PYTHONPATH=str(ROOT))
    args = [a.format(m=tmp_path / "m.onnx", o=tmp_path / "o.onnx", c=tmp_path / "c.npz") for a in argv]
    r = subprocess.run([sys.executable, "-m", "onnxslim_compress", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "warning" not in ln]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and "No space left" in lines[0] and "internal" not in lines[0], r.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_disk_full_in_the_workspace_exits_2_and_says_so(tmp_path, capsys, monkeypatch):
    onnx.save_model(matmul_model(), str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=0)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(weights.os, "link", full)
    monkeypatch.setattr(weights.shutil, "copyfile", full)
    line = one_line_exit_2(["compress", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--no-progress"], capsys,
                           "No space left on device")
    assert "cannot read" not in line
    assert set(os.listdir(tmp_path)) == {"m.onnx", "m.data"}  # no output, no workspace left


def test_disk_full_during_a_pass_exits_2(tmp_path, capsys, monkeypatch):
    # 1 MB weight: the low-rank factors are big enough to be written to the workspace
    onnx.save_model(matmul_model(1024, n_in=256), str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.data",
                    size_threshold=0)

    def full(self, arr, name):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Workspace, "put", full)
    one_line_exit_2(["compress", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--lowrank", "ratio=0.5",
                     "--offload", "on", "--no-progress"], capsys, "No space left on device")
    assert set(os.listdir(tmp_path)) == {"m.onnx", "m.data"}


def maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see what the child has loaded")
@pytest.mark.parametrize("loaded", ["onnx_cpp2py_export", "onnxruntime_pybind11_state"], ids=["onnx", "onnxruntime"])
def test_an_early_ctrl_c_prints_no_traceback(tmp_path, loaded):
    """SIGINT while the CLI is still importing onnx (the ~0.6 s before any work) or onnxruntime:
    one line and exit 130, as later on. The moment is found from the child's memory maps (a
    fixed delay would land in the interpreter's own start-up on a busy machine)."""
    onnx.save(resnet_like(), str(tmp_path / "m.onnx"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "onnxslim_compress", "compress", str(tmp_path / "m.onnx"), "-o",
                             str(tmp_path / "o.onnx"), "--no-progress"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while proc.poll() is None and loaded not in maps(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    if proc.returncode != 0:  # finished before the signal arrived: 0 is fine too
        assert proc.returncode == 130, (proc.returncode, err)
        assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    assert not (tmp_path / "o.onnx").exists() or proc.returncode == 0


def test_the_search_entry_point_has_a_catch_all(tmp_path, capsys, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("something broke\nsecond line")

    monkeypatch.setattr(job, "search", boom)
    onnx.save(matmul_model(), str(tmp_path / "m.onnx"))
    code = search_main.main(["search", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"), "--no-progress"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 1 and len(err) == 1 and "internal error" in err[0] and "something broke" in err[0], err


def test_the_search_entry_point_maps_bad_input_to_2(tmp_path, capsys):
    (tmp_path / "m.onnx").write_bytes(b"not onnx")
    code = search_main.main(["search", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"), "--no-progress"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1, err


# ---- case 10: leftovers of killed runs are cleaned on the next run ----


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_leftovers_of_dead_processes_are_cleaned_on_the_next_run(tmp_path, capsys):
    onnx.save(matmul_model(), str(tmp_path / "m.onnx"))
    pid = dead_pid()
    # a workspace of an older version (no PID in its name): its scratch file names the dead PID
    legacy = tmp_path / "osc-weights-abc123"
    legacy.mkdir()
    (legacy / f"scratch-{pid}.bin").write_bytes(b"\0" * 100)
    (legacy / "input-0.bin").write_bytes(b"\0" * 100)
    old = time.time() - LEGACY_AGE_S - 60
    for p in (legacy / f"scratch-{pid}.bin", legacy / "input-0.bin", legacy):
        os.utime(p, (old, old))
    named = tmp_path / f"osc-weights-{pid}.{HOST_TAG}-xyz"
    named.mkdir()
    (named / "input-0.bin").write_bytes(b"\0" * 10)
    tmpdir = tmp_path / f".o.onnx.osc-{pid}.{HOST_TAG}-q1w2e3"
    tmpdir.mkdir()
    (tmpdir / "o.onnx").write_bytes(b"half")
    (tmp_path / f".r.html.osc-{pid}.{HOST_TAG}-abc.tmp").write_bytes(b"half")
    # what stays: a live process's workspace, another host's, a fresh legacy one, the user's files
    keep = [f"osc-weights-{os.getpid()}.{HOST_TAG}-live", f"osc-weights-{pid}.{'0' * 6 if HOST_TAG != '0' * 6 else '1' * 6}-far",
            "osc-weights-recent1", ".notes.txt", f".backup.{pid}.old"]
    for name in keep:
        if name.startswith("osc-weights"):
            (tmp_path / name).mkdir()
            (tmp_path / name / f"scratch-{pid}.bin").write_bytes(b"x")
        else:
            (tmp_path / name).write_text("mine")
    code, err = run_cli(["compress", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--no-progress"], capsys)
    assert code == 0, err
    left = sorted(os.listdir(tmp_path))
    assert left == sorted(["m.onnx", "o.onnx", *keep]), left


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_a_killed_offloaded_run_leaves_nothing_after_the_next_run(tmp_path, sig):
    m = wide_model(64, 48, blocks=4)
    src = tmp_path / "src"
    src.mkdir()
    onnx.save_model(m, str(src / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=0)
    np.savez(src / "calib.npz", input=np.random.default_rng(0).standard_normal((64, 1, 3, 48, 48)).astype(np.float32))
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "onnxslim_compress", "compress", str(src / "m.onnx"), "-o", str(out / "o.onnx"),
           "--prune", "0.5", "--calib", str(src / "calib.npz"), "--offload", "on", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while proc.poll() is None and not any(n.startswith("osc-weights") for n in os.listdir(out)) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    assert proc.poll() is None, "finished before it could be killed"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err
    if sig == signal.SIGTERM:
        assert os.listdir(out) == [], os.listdir(out)  # cleaned up on the way out
    r = subprocess.run([sys.executable, "-m", "onnxslim_compress", "compress", str(src / "m.onnx"), "-o", str(out / "o.onnx"),
                        "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["o.onnx", *[n for n in os.listdir(out) if n.endswith(".data")]]
    assert len(os.listdir(out)) == 2
