"""End-to-end CLI behaviour: exit codes, one-line errors, untouched inputs, no partial outputs."""

import importlib.metadata as md
import json
import os
import signal
import subprocess
import sys

import numpy as np
import onnx
import pytest
import yaml
from builders import GraphBuilder, random_input, resnet_like, run
from onnx import TensorProto, helper

import onnxslim_compress.cli.main as cli_main
from onnxslim_compress.cli.main import main
from onnxslim_compress.graph.io import save_model
from onnxslim_compress.jobs.compress import get_report
from onnxslim_compress.passes import REGISTRY


@pytest.fixture
def model_path(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(resnet_like(batch="N"), str(p))
    return p


def snapshot(folder):
    return {f: (folder / f).read_bytes() for f in sorted(os.listdir(folder))}


def call(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_bad_input(argv, capsys, folder, match):
    before = snapshot(folder)
    code, out, err = call(argv, capsys)
    assert code == 2, (code, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert match in lines[0], lines[0]
    assert snapshot(folder) == before  # input untouched, no partial output


def test_not_onnx(tmp_path, capsys):
    p = tmp_path / "junk.onnx"
    p.write_bytes(os.urandom(2000))
    assert_bad_input(["compress", p, "-o", tmp_path / "o.onnx"], capsys, tmp_path, "not a valid ONNX model")


def test_truncated(tmp_path, capsys, model_path):
    data = model_path.read_bytes()
    model_path.write_bytes(data[: len(data) // 3])
    assert_bad_input(["compress", model_path, "-o", tmp_path / "o.onnx"], capsys, tmp_path, "not a valid ONNX model")


def test_missing_external_data(tmp_path, capsys):
    p = tmp_path / "ext.onnx"
    save_model(resnet_like(), p, external_data=True)
    os.remove(tmp_path / "ext.onnx.data")
    assert_bad_input(["compress", p, "-o", tmp_path / "o.onnx"], capsys, tmp_path, "external data file missing")


def test_output_equals_input(tmp_path, capsys, model_path):
    assert_bad_input(["compress", model_path, "-o", model_path], capsys, tmp_path, "is the input file")


def test_unwritable_output_folder(tmp_path, capsys, model_path, unwritable_dir):
    out = os.path.join(unwritable_dir, "o.onnx")
    assert_bad_input(["compress", model_path, "-o", out], capsys, tmp_path, "not writable")


def test_missing_output_folder(tmp_path, capsys, model_path):
    assert_bad_input(["compress", model_path, "-o", tmp_path / "no" / "o.onnx"], capsys, tmp_path, "does not exist")


@pytest.mark.parametrize(
    "recipe,match",
    [
        ("passes:\n  - fold_batchnorm: {}\n  - simplify: {keep_bn: true}\n", "unknown parameter 'keep_bn'"),
        ("passes:\n  - simplify: {keep_batchnorm: maybe}\n", "'keep_batchnorm'"),
        ("passes:\n  - fold_batchnrm\n", "unknown pass 'fold_batchnrm'"),
    ],
)
def test_bad_recipe(tmp_path, capsys, model_path, recipe, match):
    r = tmp_path / "r.yaml"
    r.write_text(recipe)
    assert_bad_input(["compress", model_path, "-o", tmp_path / "o.onnx", "--recipe", r], capsys, tmp_path, match)


def test_bad_arguments(tmp_path, capsys, model_path):
    assert_bad_input(["compress", model_path], capsys, tmp_path, "-o/--output")
    assert_bad_input(["compress", model_path, "-o", tmp_path / "o.onnx", "--lowrank", "energy"], capsys, tmp_path, "--lowrank")
    assert_bad_input(["inspect", model_path, "--input-shape", "nope:1x3"], capsys, tmp_path, "not a model input")
    assert_bad_input(["inspect", model_path, "--input-shape", "input:1x3x16"], capsys, tmp_path, "rank 3 given")


def test_lossless_compress_writes_report_and_keeps_outputs(tmp_path, capsys, model_path):
    out = tmp_path / "o.onnx"
    code, stdout, err = call(["compress", model_path, "-o", out, "--json"], capsys)
    assert code == 0, err
    rep = json.loads(stdout)
    assert [p["name"] for p in rep["passes"]] == ["simplify", "fold_batchnorm", "fuse_attention", "eliminate_dead"]
    assert rep["passes"][1]["stats"]["folded"] == 6
    assert rep["after"]["nodes"] < rep["before"]["nodes"]
    written = onnx.load(str(out))
    assert get_report(written)["passes"] == rep["passes"]
    x = random_input([2, 3, 16, 16])
    a = run(onnx.load(str(model_path)), {"input": x})[0]
    b = run(written, {"input": x})[0]
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-5
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "o.onnx"]


def _custom_and_if_model():
    b = GraphBuilder(11)
    c = b.conv_bn_relu("x", 3, 4)
    cu = b.node("Scale2", [c], domain="my.ops")
    then_g = helper.make_graph(
        [helper.make_node("Neg", [c], ["t"])], "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4, 6, 6])]
    )
    else_g = helper.make_graph(
        [helper.make_node("Abs", [c], ["e"])], "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4, 6, 6])]
    )
    b.nodes.append(helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g, name="branch"))
    g = helper.make_graph(
        b.nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6]), helper.make_tensor_value_info(cu, TensorProto.FLOAT, [1, 4, 6, 6])],
        b.inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("my.ops", 1)])


def test_custom_op_and_if_are_left_untouched(tmp_path, capsys):
    p = tmp_path / "c.onnx"
    onnx.save(_custom_and_if_model(), str(p))
    out = tmp_path / "o.onnx"
    code, stdout, err = call(["compress", p, "-o", out, "--json"], capsys)
    assert code == 0, err
    m = onnx.load(str(out))
    ops = [n.op_type for n in m.graph.node]
    assert "Scale2" in ops and "If" in ops and "BatchNormalization" not in ops
    ifn = next(n for n in m.graph.node if n.op_type == "If")
    assert [n.op_type for n in ifn.attribute[0].g.node] in (["Neg"], ["Abs"])


def test_inspect_json(tmp_path, capsys, model_path):
    code, stdout, err = call(["inspect", model_path, "--json", "--input-shape", "input:2x3x16x16"], capsys)
    assert code == 0, err
    rep = json.loads(stdout)
    assert rep["total"]["macs"] == 2 * RESNET_MACS
    assert rep["total"]["params"] == RESNET_PARAMS
    assert {n["op_type"] for n in rep["nodes"]} >= {"Conv", "Gemm"}


# hand count for resnet_like at 1x3x16x16 (see builders.resnet_like)
RESNET_MACS = (
    8 * 16 * 16 * 3 * 9  # stem 3->8 3x3 at 16x16
    + 2 * 8 * 16 * 16 * 8 * 9  # block 1: two 8->8 3x3 at 16x16
    + 16 * 8 * 8 * 8 * 9  # block 2 conv a: 8->16 3x3 stride 2 -> 8x8
    + 16 * 8 * 8 * 16 * 9  # block 2 conv b: 16->16 3x3 at 8x8
    + 16 * 8 * 8 * 8  # projection 1x1 stride 2
    + 16 * 10  # Gemm
)
RESNET_PARAMS = (
    8 * 3 * 9 + 8 * 8 * 9 * 2 + 16 * 8 * 9 + 16 * 16 * 9 + 16 * 8  # conv weights (no conv biases)
    + 16 * 10 + 10  # gemm
    + 4 * (8 + 8 + 8 + 16 + 16 + 16)  # six BatchNormalization layers: scale, bias, mean, var
)


def test_inspect_mac_count_equals_hand_count(tmp_path, capsys, model_path):
    code, stdout, _ = call(["inspect", model_path, "--json"], capsys)
    assert json.loads(stdout)["total"]["macs"] == RESNET_MACS


def test_console_script_one_line_error(tmp_path):
    junk = tmp_path / "x.onnx"
    junk.write_text("not a model")
    r = subprocess.run(
        [sys.executable, "-m", "onnxslim_compress", "inspect", str(junk)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "not a valid ONNX model" in r.stderr


def test_print_recipe_roundtrips(tmp_path, capsys, model_path):
    code, stdout, _ = call(["compress", model_path, "-o", tmp_path / "o.onnx", "--print-recipe"], capsys)
    assert code == 0
    r = tmp_path / "r.yaml"
    r.write_text(stdout)
    code, _, err = call(["compress", model_path, "-o", tmp_path / "o.onnx", "--recipe", r], capsys)
    assert code == 0, err
    assert (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize(
    "target,extra,round_to",
    [("cpu", [], None), ("cuda", [], 8), ("tensorrt", ["--quantize", "int8"], 32), ("cuda", ["--round-to", "4"], 4)],
)
def test_hardware_aware_round_to(tmp_path, capsys, model_path, target, extra, round_to):
    code, stdout, err = call(
        ["compress", model_path, "-o", tmp_path / "o.onnx", "--prune", "0.3", "--target", target, "--print-recipe", *extra], capsys
    )
    assert code == 0, err
    steps = {k: v for d in yaml.safe_load(stdout)["passes"] for k, v in d.items()}
    if round_to is None:  # cpu: the pass's own default

        round_to = REGISTRY["prune_channels"].Params().round_to
    assert steps["prune_channels"]["round_to"] == round_to


def test_warns_when_cpu_onnxruntime_is_installed_too(tmp_path, capsys, model_path, monkeypatch):
    real = md.version
    monkeypatch.setattr(md, "version", lambda d: "1.31.1" if d == "onnxruntime" else real(d))
    code, _, err = call(["inspect", model_path, "--json"], capsys)
    assert code == 0
    assert "both onnxruntime 1.31.1 and onnxruntime-gpu" in err and "reinstall only onnxruntime-gpu" in err


def test_pass_flags_map_onto_params_and_zero_is_kept(tmp_path, capsys, model_path):
    code, stdout, err = call(
        ["compress", model_path, "-o", tmp_path / "o.onnx", "--prune", "0", "--lowrank", "alds=0.7", "--quantize", "int8",
         "--calibration", "mse", "--exclude", "^head", "--print-recipe"], capsys,
    )
    assert code == 0, err
    steps = {k: v for d in yaml.safe_load(stdout)["passes"] for k, v in d.items()}
    assert steps["prune_channels"]["ratio"] == 0.0  # an explicit 0 is not replaced by the default
    assert (steps["low_rank"]["mode"], steps["low_rank"]["value"]) == ("alds", 0.7)
    assert steps["quantize"]["calibration"] == "mse"
    assert all(steps[p]["exclude"] == ["^head"] for p in ("prune_channels", "low_rank", "quantize"))


def test_ctrl_c_swallowed_inside_a_command_still_exits_130(monkeypatch, capsys, tmp_path):
    """A KeyboardInterrupt swallowed by code under the command (a C callback, a broad handler in a
    library) must not end the run as exit 0: the recorded SIGINT decides (seen once under load)."""
    def swallowing_run(self, ns):
        try:  # noqa: SIM105 - spelled out: this is the swallowing being simulated
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pass  # what a broad handler deep in a library does
        return 0

    monkeypatch.setattr(cli_main.InspectCommand, "run", swallowing_run)
    model = tmp_path / "m.onnx"
    save_model(resnet_like(), model)
    # Python's own handler, as in a foreground run (started with `&`, the test process inherits
    # SIGINT ignored, and the CLI rightly leaves an inherited disposition alone)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert main(["inspect", str(model)]) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "interrupted" in capsys.readouterr().err
