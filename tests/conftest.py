"""Shared fixtures for the whole suite (graph builders live in builders.py, on pytest's pythonpath)."""

from __future__ import annotations

import os
import re

import pytest

#: under CI=true a skip is a failure unless it is about hardware this CI machine cannot have (a GPU)
#: or resources a slow test checks for: a missing test dependency must not pass as green
CI_ALLOWED_SKIPS = re.compile(r"GPU|CUDA|free memory|free disk")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if os.environ.get("CI") == "true" and rep.skipped and not hasattr(rep, "wasxfail"):
        reason = str(rep.longrepr[2] if isinstance(rep.longrepr, tuple) else rep.longrepr)
        if not CI_ALLOWED_SKIPS.search(reason):
            rep.outcome = "failed"
            rep.longrepr = f"skipped under CI=true (a check CI must run): {reason}"


@pytest.fixture
def unwritable_dir(tmp_path):
    """A folder this process cannot write: chmod for normal users, sysfs for root (which ignores modes)."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o500)
        return str(d)
    return "/sys"


#: quantize's speed check times real models (slow and noisy): off for the whole session (module
#: fixtures and child processes included) unless a test injects a timer (Context.timer) or clears
#: the variable itself with monkeypatch
os.environ["ONNXSLIM_COMPRESS_NO_SPEED_CHECK"] = "1"


@pytest.fixture(autouse=True)
def modelled_latency(monkeypatch, tmp_path_factory):
    """Pruning times layers on the target (round_to probe, groups that save no time); in tests the
    table is a deterministic stair model (steps of 8, latency linear in MACs), so no result depends
    on this machine's timing. Tests of the real table build LatencyTable themselves."""
    from builders import StairTable

    from onnxslim_compress.passes.prune import prune_channels

    monkeypatch.setattr(prune_channels, "LatencyTable", StairTable)
    monkeypatch.setenv("ONNXSLIM_COMPRESS_LATENCY_DIR", str(tmp_path_factory.getbasetemp() / "latency"))
