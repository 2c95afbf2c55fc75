"""Shared fixtures for the whole suite."""

from __future__ import annotations

import os
import sys

import pytest


@pytest.fixture
def run_dir(tmp_path):
    """A fresh run directory."""
    path = tmp_path / "run"
    path.mkdir()
    return str(path)


# Test modules in the subfolders import the shared helpers (support, server_support, reference_render).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# On a machine with a GPU and a CUDA build of JAX, JAX would take 75 % of the GPU's memory at its first use,
# before the torch tests marked gpu run in the same process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# One intra-op thread for torch (its OpenMP pool reads this when torch is imported, after this file) and
# for the trainers the tests start as subprocesses. The tests' tensors are tiny: with two threads each op
# waits at an OpenMP barrier for a second core that Beholder's worker thread, a server or another
# process holds: a small CPU training step took 10-40x longer on a 2-core machine with the other core
# busy (test_compile.py's 200-step tests: 6-39 s each, by the load, against 2 s). Nothing here measures
# intra-op parallelism.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def flushed_updates(monkeypatch):
    """Make Beholder.update() wait until the frame it handed to the worker is written.

    For tests about what a frame shows, which read the files right after
    update(). The frame still goes through the background worker; the tests
    of the worker itself (trainer/test_worker.py) do not use this.
    """
    from beholder_plugin.trainer.beholder import Beholder

    real = Beholder.update

    def update(self, *args, **kwargs):
        handed = real(self, *args, **kwargs)
        self.flush()
        return handed

    monkeypatch.setattr(Beholder, "update", update)
