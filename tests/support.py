"""Helpers for the trainer-side tests."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np

from beholder_plugin import DEFAULT_CONFIG, write_config


def set_config(run: str, **changes) -> dict:
    """Write a full config.json: the defaults with these changes; returns it."""
    config = {**DEFAULT_CONFIG, **changes}
    write_config(run, config)
    return config


def run_script(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run a Python script in a fresh process that imports these helpers (tests/ on its path), with these
    environment variables set and XLA_FLAGS left out (a script sets its own); its output, as text."""
    tests = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])
    environment = {**os.environ, **env, "PYTHONPATH": path}
    environment.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-c", script, *args], env=environment, capture_output=True,
                          text=True, timeout=300)


def framed_steps(beholder) -> list[int]:
    """Make each update() of this Beholder take a frame (the last one written first); the steps of the
    frames taken, as they are taken."""
    real, steps = beholder.update, []

    def update(**kwargs):
        beholder.flush()
        beholder.frame_due_now()
        handed = real(**kwargs)
        if handed:
            steps.append(beholder.step)
        return handed

    beholder.update = update
    return steps


def due(beholder) -> None:
    """Wait until a frame is due again at the beholder's FPS (no timing is asserted)."""
    time.sleep(1.0 / max(1, beholder.config["FPS"]) + 0.005)


def update_compiled(beholder, **inputs) -> bool:
    """update() with a frame due; when that frame started compiling a device gather (JAX, TensorFlow)
    and was skipped, wait for the compile and take the frame again. Whether a frame was taken."""
    beholder.frame_due_now()
    if beholder.update(**inputs):
        return True
    assert beholder.gatherer.wait_compiled(120), "the device gather did not compile in 2 minutes"
    beholder.frame_due_now()
    return beholder.update(**inputs)


class HeldCompile:
    """A traced batch class's warm() (its background compile) held until ``release.set()``; records each
    call's thread and array shapes, and which calls finished."""

    def __init__(self, monkeypatch, gather_class, released: bool = False) -> None:
        self.release = threading.Event()
        if released:
            self.release.set()
        self.started = threading.Semaphore(0)  # released once per call that reached warm()
        self.threads: list[int] = []
        self.shapes: list[tuple] = []
        self.finished: list[bool] = []
        real = gather_class.warm

        def held(gather, function, abstract, positions):
            self.threads.append(threading.get_ident())
            self.shapes.append(tuple(tuple(a.shape) for a in abstract))
            self.started.release()
            assert self.release.wait(60)
            real(gather, function, abstract, positions)
            self.finished.append(True)

        monkeypatch.setattr(gather_class, "warm", held)


def assert_sections_hold(frame, truth: dict) -> None:
    """Each section of a frame (current values) holds its named array's values, compared sorted (so in
    any layout); none is missing."""
    for i, record in enumerate(frame.sections):
        assert "missing" not in record, record
        want = np.asarray(truth[record["name"]]).ravel()
        np.testing.assert_array_equal(np.sort(frame.section_values(i).ravel()), np.sort(want),
                                      err_msg=record["name"])
