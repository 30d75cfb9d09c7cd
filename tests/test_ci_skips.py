"""Under CI=true a skipped test fails the run (tests/conftest.py): a missing test dependency once hid
the graphsurgeon conversion test as '1 skipped' in a green CI run."""

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def run_pytest(tmp_path, ci: bool) -> subprocess.CompletedProcess:
    (tmp_path / "test_probe.py").write_text(
        "import pytest\n"
        "def test_missing_dep():\n    pytest.skip('no module named foo')\n"
        "def test_gpu_only():\n    pytest.skip('CUDA works here: the no-GPU paths do not apply')\n")
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    env.pop("CI", None)
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
                           str(tmp_path / "test_probe.py"), "--rootdir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def test_a_skip_fails_under_ci_except_for_gpu_reasons(tmp_path):
    proc = run_pytest(tmp_path, ci=True)
    assert proc.returncode == 1, proc.stdout
    assert "1 failed, 1 skipped" in proc.stdout
    assert "skipped under CI=true (a check CI must run): Skipped: no module named foo" in proc.stdout


def test_a_skip_is_a_skip_outside_ci(tmp_path):
    proc = run_pytest(tmp_path, ci=False)
    assert proc.returncode == 0, proc.stdout
    assert "2 skipped" in proc.stdout
