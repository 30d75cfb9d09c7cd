"""Shared fixtures for the whole suite (graph builders live in builders.py, on pytest's pythonpath)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def unwritable_dir(tmp_path):
    """A folder this process cannot write: chmod for normal users, sysfs for root (which ignores modes)."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o500)
        return str(d)
    return "/sys"
