"""The argument-group system: every subcommand is a Command of groups under one parser and one main()."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from builders import resnet_like

import onnxslim_compress.cli as cli_pkg
from onnxslim_compress.cli.groups import Command
from onnxslim_compress.cli.main import build_parser, commands, main
from onnxslim_compress.errors import BadInputError
from onnxslim_compress.search import __main__ as search_main

ROOT = Path(__file__).resolve().parents[2]


def test_cli_imports_nothing_inside_functions_but_the_search_package():
    """cli/ imports at the top; only the search package (optuna, heavy and optional) loads lazily."""
    for path in Path(cli_pkg.__path__[0]).glob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    assert all(a.name == "optuna" for a in node.names), (path.name, fn.name)
                elif isinstance(node, ast.ImportFrom):
                    assert (node.module or "").startswith("onnxslim_compress.search"), (path.name, fn.name, node.module)


def test_every_subcommand_is_a_command_of_groups_with_the_common_flags():
    cmds = commands()
    assert [c.name for c in cmds] == ["inspect", "profile", "compare", "compress", "search", "worker"]
    assert all(isinstance(c, Command) for c in cmds)
    p = build_parser()
    for argv in (["inspect", "m.onnx"], ["profile", "m.onnx"], ["compare", "a.onnx", "b.onnx"],
                 ["compress", "m.onnx", "-o", "o.onnx"], ["search", "m.onnx", "-o", "o.onnx"],
                 ["worker", "--storage", "sqlite:///x.db", "--study", "s"]):
        ns = p.parse_args([*argv, "--seed", "7", "--debug", "--no-progress"])
        ns._command.parse(ns)
        assert (ns._command.common.seed, ns._command.common.debug, ns._command.common.no_progress) == (7, True, True)


def test_groups_parse_once_into_ready_objects():
    p = build_parser()
    ns = p.parse_args(["compress", "m.onnx", "-o", "o.onnx", "--target", "cuda", "--threads", "3",
                       "--input-shape", "x:1x3x8x8", "--image-size", "32x48", "--labels", "l.npy"])
    cmd = ns._command
    cmd.parse(ns)
    assert (cmd.target.target.kind, cmd.target.target.threads) == ("cuda", 3)
    assert cmd.model.shapes == {"x": [1, 3, 8, 8]} and cmd.data.image.size == (32, 48)
    assert (cmd.model.path, cmd.output.path, cmd.labels.path) == ("m.onnx", "o.onnx", "l.npy")
    ns = p.parse_args(["profile", "m.onnx", "--image-size", "32"])
    with pytest.raises(BadInputError, match="--image-size '32': expected HxW"):
        ns._command.parse(ns)


def test_one_error_handler_exit_codes(tmp_path, capsys, monkeypatch):
    assert main(["inspect", str(tmp_path / "missing.onnx")]) == 2
    assert main([]) == 2
    assert main(["compress", "m.onnx"]) == 2  # argparse error: one line, exit 2
    err = capsys.readouterr().err
    assert "the following arguments are required: -o/--output" in err and "Traceback" not in err
    model = tmp_path / "m.onnx"
    onnx.save(resnet_like(), model)

    def boom(*a, **k):
        raise RuntimeError("kaput")

    monkeypatch.setattr("onnxslim_compress.cli.main.count_costs", boom)
    assert main(["inspect", str(model)]) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: kaput" in err and "Traceback" not in err
    assert main(["inspect", str(model), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("onnxslim_compress.cli.main.count_costs", interrupted)
    assert main(["inspect", str(model)]) == 130


def test_python_m_search_is_the_same_main(tmp_path):
    """`python -m onnxslim_compress.search worker ...` (how the postgres test starts workers) runs main()."""
    assert search_main.main is main
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "onnxslim_compress.search", "worker", "--storage",
                        f"sqlite:///{tmp_path / 'none.db'}", "--study", "nope"], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "nope" in r.stderr
    r = subprocess.run([sys.executable, "-m", "onnxslim_compress.search", "search", "--help"], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m onnxslim_compress.search search")


def test_search_times_like_profile_by_default():
    """A trial's latency must be what `profile A B` measures: the same Target (EP, threads, session
    options) and the same warmup/runs unless told otherwise, from the one TargetArgs/TimingArgs."""
    p = build_parser()
    prof = p.parse_args(["profile", "a.onnx", "b.onnx"])
    srch = p.parse_args(["search", "a.onnx", "-o", "o.onnx"])
    for ns in (prof, srch):
        ns._command.parse(ns)
    pc, sc = prof._command, srch._command
    assert pc.target.target == sc.target.target and sc.target.target.threads == 0
    assert (pc.timing.warmup, pc.timing.runs) == (sc.timing.warmup, sc.timing.runs) == (10, 50)
    ns = p.parse_args(["search", "a.onnx", "-o", "o.onnx", "--threads", "1"])
    ns._command.parse(ns)
    assert ns._command.target.target.threads == 1
