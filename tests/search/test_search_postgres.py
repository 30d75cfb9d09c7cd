"""Several processes on one study: `search` plus two `worker`s, on SQLite and on a real PostgreSQL
server started on loopback by the fixture (Debian's postgresql-15; skipped when it or psycopg2 is
missing). The study must finish with every candidate built exactly once and the budget respected.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` system user in a
temporary data directory it owns; the fixture stops it and deletes the directory afterwards.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import optuna
import pytest
from builders import GraphBuilder

from onnxslim_compress.passes import REGISTRY

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_user(cmd: list[str], user: str | None) -> list[str]:
    return cmd if user is None else ["runuser", "-u", user, "--", *cmd]


@pytest.fixture(scope="module")
def postgres_url():
    pytest.importorskip("psycopg2")
    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed")
    user = None
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no 'postgres' user to run the server as")
        user = "postgres"
    base = Path(tempfile.mkdtemp(prefix="osc_pg_"))
    data = base / "data"
    if user is not None:
        os.chown(base, pw.pw_uid, pw.pw_gid)
    port = _free_port()
    subprocess.run(_as_user(["initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"], user),
                   check=True, capture_output=True)
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(_as_user(["pg_ctl", "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "start"], user),
                   check=True, capture_output=True)
    try:
        subprocess.run(_as_user(["createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "optuna"], user),
                       check=True, capture_output=True)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run(_as_user(["pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"], user), capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def files(tmp_path):
    b = GraphBuilder(0)
    x = b.conv_bn_relu("x", 3, 16)
    x = b.conv_bn_relu(x, 16, 32)
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    y = b.gemm(x, 32, 10)
    onnx.save(b.model([("x", [1, 3, 16, 16])], [(y, [1, 10])]), tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((8, 3, 16, 16)).astype(np.float32))
    np.savez(tmp_path / "eval.npz", x=rng.standard_normal((16, 3, 16, 16)).astype(np.float32))
    (tmp_path / "r.yaml").write_text(
        "passes:\n"
        "  - prune_channels: {ratio: {choices: [0.1, 0.2, 0.3]}}\n"
        "  - quantize: {enabled: {choices: [true, false]}}\n"
    )
    return tmp_path


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "onnxslim_compress.search", *args]


def _run_shared_study(url: str, d: Path, study: str) -> None:
    if not {"prune_channels", "quantize"} <= set(REGISTRY):
        pytest.skip("prune_channels and quantize passes are needed")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # the coordinator creates the study and only waits; the two workers do every trial
    main = subprocess.Popen(
        _cmd("search", str(d / "m.onnx"), "-o", str(d / "out.onnx"), "--calib", str(d / "calib.npz"), "--eval", str(d / "eval.npz"),
             "--recipe", str(d / "r.yaml"), "--metric", "cosine", "--max-drop", "0.5", "--objective", "size", "--trials", "6",
             "--storage", url, "--study", study, "--threads", "1", "--json", "--wait-for-workers", "--timeout", "240"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=d,
    )
    workers = [
        subprocess.Popen(_cmd("worker", "--storage", url, "--study", study, "--wait", "120", "--json"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=d)
        for _ in range(2)
    ]
    outs = [w.communicate(timeout=300) for w in workers]
    main_out, main_err = main.communicate(timeout=300)
    assert main.returncode == 0, main_err[-2000:]
    for w, (_, err) in zip(workers, outs, strict=True):
        assert w.returncode == 0, err[-2000:]
    report = json.loads(main_out)
    done = [json.loads(o) for o, _ in outs]

    st = optuna.load_study(study_name=study, storage=url)
    trials = [t for t in st.get_trials() if not t.user_attrs.get("over_budget")]
    built = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]
    keys = [t.user_attrs["key"] for t in built]
    # 3 ratios x (quantized or not) = 6 distinct candidates, each built exactly once
    assert len(keys) == len(set(keys)) == 6
    # which process built what: the worker reports and the trials agree, nobody built the same trial
    by_worker = [set(d_["computed_trials"]) for d_ in done]
    assert not (by_worker[0] & by_worker[1])
    numbers = {t.number: t for t in built}
    for d_, mine in zip(done, by_worker, strict=True):
        assert all(numbers[n].user_attrs["worker"] == d_["worker"] for n in mine)
    # every candidate was built by one of the two workers (the coordinator built none)
    assert by_worker[0] | by_worker[1] == {t.number for t in built}
    assert report["cache"]["trials_computed_here"] == 0
    assert (d / "out.onnx").is_file() and report["best"] is not None
    assert len(report["trials"]) == len(trials)


def test_two_workers_sqlite(files):
    _run_shared_study(f"sqlite:///{files / 'shared.db'}", files, "shared-sqlite")


def test_two_workers_postgresql(files, postgres_url):
    _run_shared_study(postgres_url, files, f"shared-pg-{int(time.time())}")
