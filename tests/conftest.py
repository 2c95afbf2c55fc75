"""Shared fixtures for the whole suite."""

from __future__ import annotations

import pytest


@pytest.fixture
def run_dir(tmp_path):
    """A fresh run directory."""
    path = tmp_path / "run"
    path.mkdir()
    return str(path)
