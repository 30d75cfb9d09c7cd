"""Hostile inputs (issue 15): nothing outside the model's folder is read, nothing but the outputs is
written, the input is never modified.

Each test is one case of the issue's attack list: external-data path traversal (`..`, absolute
locations, symlinks out of the folder) for every command, device nodes as outputs, outputs that are
the input's own data file, and symlinks planted at the names of temp files.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import run
from onnx import TensorProto, helper, numpy_helper

from onnxslim_compress import BadInputError, load_model
from onnxslim_compress.cli.main import main

SECRET = np.random.default_rng(42).integers(0, 256, 64 * 64 * 4, dtype=np.uint8).tobytes()


def matmul_model() -> onnx.ModelProto:
    """y = x[1, 64] @ W[64, 64]: one 16 KiB weight, enough to go to external data."""
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [numpy_helper.from_array(w, "W")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def save_external(model: onnx.ModelProto, path: Path, location: str) -> None:
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)


def point_weights_at(path: Path, location: str) -> None:
    """Rewrite every external location of the saved model (the attacker's edit)."""
    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        for kv in t.external_data:
            if kv.key == "location":
                kv.value = location
    onnx.save(m, str(path))


def all_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def run_cli(argv: list, capsys) -> tuple[int, list[str], str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, [ln for ln in err.splitlines() if ln.strip()], out


@pytest.fixture
def hostile(tmp_path, request):
    """tmp/outside/secret.bin (16 KiB, the size of W) and tmp/model/m.onnx whose W points at it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(SECRET)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    m = model_dir / "m.onnx"
    save_external(matmul_model(), m, "m.onnx.data")
    kind = request.param
    if kind == "dotdot":
        point_weights_at(m, "../../../../../../../../" + str(outside / "secret.bin").lstrip("/"))
    elif kind == "relative":
        point_weights_at(m, "../outside/secret.bin")
    elif kind == "absolute":
        point_weights_at(m, str(outside / "secret.bin"))
    elif kind == "symlink":
        (model_dir / "m.onnx.data").unlink()
        (model_dir / "m.onnx.data").symlink_to(outside / "secret.bin")
    (model_dir / "other.onnx").write_bytes(m.read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    np.savez(tmp_path / "data.npz", x=np.ones((2, 1, 64), np.float32))
    return tmp_path


COMMANDS = {
    "inspect": lambda t: ["inspect", t / "model/m.onnx", "--json"],
    "profile": lambda t: ["profile", t / "model/m.onnx", "--runs", "1", "--warmup", "0"],
    "profile_ab": lambda t: ["profile", t / "model/m.onnx", t / "model/other.onnx", "--runs", "1", "--warmup", "0"],
    "compare": lambda t: ["compare", t / "model/m.onnx", t / "model/other.onnx", "--data", t / "data.npz"],
    "compress": lambda t: ["compress", t / "model/m.onnx", "-o", t / "out/o.onnx", "--no-progress"],
    "compress_off": lambda t: ["compress", t / "model/m.onnx", "-o", t / "out/o.onnx", "--offload", "off", "--no-progress"],
    "compress_on": lambda t: ["compress", t / "model/m.onnx", "-o", t / "out/o.onnx", "--offload", "on",
                              "--lowrank", "ratio=0.5", "--no-progress"],
    "search": lambda t: ["search", t / "model/m.onnx", "-o", t / "out/o.onnx", "--trials", "1", "--objective", "macs",
                         "--no-progress", "--eval", t / "data.npz", "--metric", "cosine"],
}


@pytest.mark.parametrize("hostile", ["dotdot", "relative", "absolute", "symlink"], indirect=True)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_external_data_outside_the_model_folder_is_refused(hostile, command, capsys):
    """Case 1: exit 2 with one line naming the tensor's file, and no byte of the outside file in any
    output (it used to be hard-linked into the workspace and come out as o.onnx.data)."""
    before = all_bytes(hostile)
    code, err, out = run_cli(COMMANDS[command](hostile), capsys)
    assert code == 2, err
    assert len(err) == 1, err
    assert "outside" in err[0] and "model's folder" in err[0], err[0]
    assert os.listdir(hostile / "out") == []
    assert all_bytes(hostile) == before  # nothing written anywhere, input untouched
    assert SECRET[:256].hex() not in out and SECRET[:64] not in out.encode()


def test_external_data_inside_a_subfolder_still_loads(tmp_path, capsys):
    """The rule is "inside the folder", not "beside the file": weights/w.bin is fine."""
    (tmp_path / "weights").mkdir()
    save_external(matmul_model(), tmp_path / "m.onnx", "weights/w.bin")
    code, err, _ = run_cli(["compress", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--no-progress"], capsys)
    assert code == 0, err
    x = np.ones((1, 64), np.float32)
    ref = x @ numpy_helper.to_array(matmul_model().graph.initializer[0])
    np.testing.assert_allclose(run(onnx.load(str(tmp_path / "o.onnx")), {"x": x})[0], ref, rtol=1e-5)


def test_traversal_refused_by_the_python_api(hostile_api):
    with pytest.raises(BadInputError, match="outside"):
        load_model(hostile_api)
    with pytest.raises(BadInputError, match="outside"):
        load_model(hostile_api, load_external_data=False)


@pytest.fixture
def hostile_api(tmp_path):
    (tmp_path / "secret.bin").write_bytes(SECRET)
    (tmp_path / "m").mkdir()
    save_external(matmul_model(), tmp_path / "m/m.onnx", "w.bin")
    point_weights_at(tmp_path / "m/m.onnx", "../secret.bin")
    return tmp_path / "m/m.onnx"


# ---- case 2: device nodes ----


@pytest.fixture
def device(tmp_path):
    """A character device to aim at: a private twin of /dev/null where we may create one (root),
    so that a regression replaces a node in tmp_path, not the system's; else /dev/null itself (a
    normal user cannot replace it, so a regression then fails without harm)."""
    if os.geteuid() == 0:
        node = tmp_path / "null"
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        return node
    return Path("/dev/null")


@pytest.mark.parametrize("flag", ["-o", "--report"])
def test_device_node_output_is_refused(tmp_path, capsys, flag, device):
    onnx.save(matmul_model(), str(tmp_path / "m.onnx"))
    argv = ["compress", tmp_path / "m.onnx", "--no-progress"]
    argv += ["-o", device] if flag == "-o" else ["-o", tmp_path / "o.onnx", "--report", device]
    code, err, _ = run_cli(argv, capsys)
    assert code == 2 and len(err) == 1 and str(device) in err[0] and "regular file" in err[0], err
    assert device.is_char_device()
    assert not (tmp_path / "o.onnx").exists()


def test_search_device_node_output_is_refused(tmp_path, capsys, device):
    onnx.save(matmul_model(), str(tmp_path / "m.onnx"))
    code, err, _ = run_cli(["search", tmp_path / "m.onnx", "-o", device, "--no-progress"], capsys)
    assert code == 2 and len(err) == 1 and "regular file" in err[0], err
    assert device.is_char_device()


def test_fifo_output_is_refused(tmp_path, capsys):
    onnx.save(matmul_model(), str(tmp_path / "m.onnx"))
    os.mkfifo(tmp_path / "pipe.onnx")
    code, err, _ = run_cli(["compress", tmp_path / "m.onnx", "-o", tmp_path / "pipe.onnx", "--no-progress"], capsys)
    assert code == 2 and "regular file" in err[0], err
    assert (tmp_path / "pipe.onnx").is_fifo()


# ---- case 3: outputs that are the input's data ----


@pytest.mark.parametrize("offload", ["auto", "off"])
def test_output_onto_the_inputs_data_file_is_refused(tmp_path, capsys, offload):
    save_external(matmul_model(), tmp_path / "m.onnx", "m.data")
    before = all_bytes(tmp_path)
    code, err, _ = run_cli(["compress", tmp_path / "m.onnx", "-o", tmp_path / "m.data", "--offload", offload,
                            "--no-progress"], capsys)
    assert code == 2 and len(err) == 1 and "m.data" in err[0] and "input" in err[0], err
    assert all_bytes(tmp_path) == before


@pytest.mark.parametrize("offload", ["auto", "off"])
def test_output_whose_data_file_is_the_inputs_is_refused(tmp_path, capsys, offload):
    """a.onnx keeps its weights in b.onnx.data: writing b.onnx (and so b.onnx.data) would clobber them."""
    save_external(matmul_model(), tmp_path / "a.onnx", "b.onnx.data")
    before = all_bytes(tmp_path)
    code, err, _ = run_cli(["compress", tmp_path / "a.onnx", "-o", tmp_path / "b.onnx", "--offload", offload,
                            "--no-progress"], capsys)
    assert code == 2 and len(err) == 1 and "b.onnx.data" in err[0], err
    assert all_bytes(tmp_path) == before


def test_output_symlinked_to_the_inputs_data_is_refused(tmp_path, capsys):
    save_external(matmul_model(), tmp_path / "m.onnx", "m.data")
    (tmp_path / "o.onnx").symlink_to(tmp_path / "m.data")
    before = all_bytes(tmp_path)
    code, err, _ = run_cli(["compress", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--no-progress"], capsys)
    assert code == 2 and len(err) == 1 and "input" in err[0], err
    assert all_bytes(tmp_path) == before


def test_report_onto_the_input_is_refused(tmp_path, capsys):
    save_external(matmul_model(), tmp_path / "m.onnx", "m.data")
    before = all_bytes(tmp_path)
    code, err, _ = run_cli(["compress", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--report", tmp_path / "m.data",
                            "--no-progress"], capsys)
    assert code == 2 and len(err) == 1, err
    assert all_bytes(tmp_path) == before and not (tmp_path / "o.onnx").exists()


# ---- case 4: planted symlinks at temp names ----


def test_planted_symlink_at_the_report_temp_name_is_not_followed(tmp_path, capsys):
    onnx.save(matmul_model(), str(tmp_path / "m.onnx"))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / ".r.html.tmp").symlink_to(victim)
    code, err, _ = run_cli(["compress", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--report", tmp_path / "r.html",
                            "--no-progress"], capsys)
    assert code == 0, err
    assert victim.read_text() == "precious"
    assert (tmp_path / "r.html").read_text().startswith("<!doctype html>")
    assert not (tmp_path / "r.html").is_symlink()


def test_planted_symlinks_at_the_search_temp_names_are_not_followed(tmp_path, capsys):
    onnx.save(matmul_model(), str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "eval.npz", x=np.random.default_rng(0).standard_normal((4, 1, 64)).astype(np.float32))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in ("o.search.json.tmp", "o.pareto.png.tmp.png", ".o.search.json.tmp"):
        (tmp_path / name).symlink_to(victim)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("passes:\n  - low_rank: {mode: ratio, value: {search: [0.3, 0.9]}}\n")
    code, err, _ = run_cli(["search", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--recipe", recipe, "--trials", "2",
                            "--objective", "macs", "--eval", tmp_path / "eval.npz", "--metric", "cosine",
                            "--max-drop", "1", "--no-progress"], capsys)
    assert code == 0, err
    assert victim.read_text() == "precious"
    assert (tmp_path / "o.search.json").is_file() and not (tmp_path / "o.search.json").is_symlink()
