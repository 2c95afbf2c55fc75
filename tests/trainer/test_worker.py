"""The background worker: same frames as inline, skips instead of queues, errors, draining, exit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from support import due, set_config

from beholder_plugin import Beholder
from beholder_plugin.protocol.runfiles import read_frame_file
from beholder_plugin.trainer import worker as worker_module
from beholder_plugin.trainer.views import render as render_module


def _arrays(rng, step):
    return {
        "conv/kernel": rng.normal(size=(3, 3, 4, 6)).astype(np.float32) * step,
        "dense/kernel": rng.normal(size=(50, 10)),
        "bias": rng.normal(size=(10,)).astype(np.float16),
        "act": rng.normal(size=(2, 7, 7, 3)).astype(np.float32),
        "odd": rng.normal(size=(3, 5, 7)),
    }


@pytest.mark.parametrize("mode", ["current", "variance"])
def test_background_frames_are_bit_for_bit_the_inline_frames(tmp_path, mode):
    runs = {kind: str(tmp_path / kind) for kind in ("inline", "background")}
    for run in runs.values():
        set_config(run, values="arrays", mode=mode, window_size=4, FPS=30)
    inline = Beholder(runs["inline"], strict=True, background=False)
    background = Beholder(runs["background"], strict=True)
    for step in range(7):
        arrays = _arrays(np.random.default_rng(step), step + 1)
        due(background)
        assert inline.update(arrays=arrays) and background.update(arrays=arrays)
        background.flush()
        a, b = read_frame_file(runs["inline"]), read_frame_file(runs["background"])
        np.testing.assert_array_equal(a.pixels, b.pixels)
        np.testing.assert_array_equal(a.values, b.values)
        assert a.sections == b.sections
    inline.close()
    background.close()


def test_a_frame_due_while_the_worker_is_busy_is_skipped_and_counted(run_dir, monkeypatch):
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    gate = threading.Event()
    real = render_module.Renderer.render

    def slow_render(self, *args):
        gate.wait(10)
        return real(self, *args)

    monkeypatch.setattr(render_module.Renderer, "render", slow_render)
    beholder = Beholder(run_dir, strict=True)
    assert beholder.update(arrays=[np.arange(4.0)])
    for _ in range(3):
        due(beholder)
        assert beholder.update(arrays=[np.arange(4.0)]) is False
    assert beholder.skipped == 3 and beholder.frames_written == 0
    gate.set()
    beholder.flush()
    assert beholder.frames_written == 1
    due(beholder)
    assert beholder.update(arrays=[np.arange(4.0)])  # idle again: frames flow
    beholder.close()
    assert beholder.frames_written == 2 and read_frame_file(run_dir).header["skipped"] == 3


def test_the_caller_may_change_its_arrays_right_after_update(run_dir, monkeypatch):
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    gate = threading.Event()
    real = render_module.Renderer.render
    monkeypatch.setattr(render_module.Renderer, "render", lambda self, *a: gate.wait(10) and real(self, *a))
    beholder = Beholder(run_dir, strict=True)
    weights = np.arange(6.0).reshape(2, 3)
    assert beholder.update(arrays={"w": weights})
    weights[:] = -1  # the optimizer steps while the worker still renders
    gate.set()
    beholder.close()
    np.testing.assert_array_equal(read_frame_file(run_dir).section_values(0), np.arange(6.0).reshape(2, 3))


def test_a_worker_error_is_raised_by_the_next_update_under_strict(run_dir, monkeypatch):
    set_config(run_dir, values="arrays", mode="current", FPS=30)

    def broken(self, *args):
        raise RuntimeError("renderer broke")

    monkeypatch.setattr(render_module.Renderer, "render", broken)
    strict = Beholder(run_dir, strict=True)
    assert strict.update(arrays=[np.arange(4.0)])  # handed over; the worker fails later
    strict.worker.drain()
    with pytest.raises(RuntimeError, match="renderer broke"):
        strict.update(arrays=[np.arange(4.0)])
    lenient = Beholder(run_dir)
    assert lenient.update(arrays=[np.arange(4.0)])
    lenient.flush()
    assert lenient.failures == 1 and "renderer broke" in lenient.last_error
    lenient.close()
    strict.close()


def test_a_worker_error_writes_the_frame_that_says_so(run_dir, monkeypatch):
    """A frame that fails in the worker, every time, left the run with no frame at all, and the dashboard
    waiting for its first: the failure placeholder (update()'s own failures' frame) says why now."""
    set_config(run_dir, values="arrays", mode="current", FPS=30)

    def broken(self, *args):
        raise RuntimeError("renderer broke")

    monkeypatch.setattr(render_module.Renderer, "render", broken)
    beholder = Beholder(run_dir)
    assert beholder.update(arrays=[np.arange(4.0)])  # handed over; the worker fails, writes why
    beholder.flush()
    frame = read_frame_file(run_dir)
    assert frame is not None and frame.header["values"] == "placeholder"
    assert frame.header["failures"] == 1 and "renderer broke" in frame.header["last_error"]
    assert beholder.failures == 1  # (counted once: by the worker, not again when reported)
    beholder.frame_due_now()
    assert beholder.update(arrays=[np.arange(4.0)])  # a frame due each step: one handed over each time
    beholder.flush()
    assert beholder.failures == 2 and read_frame_file(run_dir).header["values"] == "placeholder"
    beholder.close()


def test_a_failed_frame_without_a_worker_is_counted_and_shown_once(run_dir, monkeypatch):
    """background=False: FrameJobs.run counts the failure and writes the frame saying so, and update()'s
    own failure handling met the same exception again: 2 failures and 2 placeholders for one frame."""
    set_config(run_dir, values="arrays", mode="current", FPS=30)

    def broken(self, *args):
        raise RuntimeError("renderer broke")

    monkeypatch.setattr(render_module.Renderer, "render", broken)
    beholder = Beholder(run_dir, background=False)
    assert not beholder.update(arrays=[np.arange(4.0)])
    assert beholder.failures == 1 and beholder.frames_written == 1
    assert "renderer broke" in read_frame_file(run_dir).header["last_error"]
    beholder.close()


def test_interpreter_exit_writes_the_frame_in_progress(run_dir):
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from beholder_plugin import Beholder, write_config, DEFAULT_CONFIG
        write_config(sys.argv[1], {**DEFAULT_CONFIG, "values": "arrays", "mode": "current", "FPS": 30})
        b = Beholder(sys.argv[1], strict=True)
        assert b.update(arrays={"w": np.ones((500, 500))})
        # no close(): the atexit handler drains the worker
        """
    )
    out = subprocess.run([sys.executable, "-c", script, run_dir], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert read_frame_file(run_dir).header["frame_id"] == 1


def test_a_forked_child_does_not_inherit_a_busy_worker(run_dir):
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    beholder = Beholder(run_dir, strict=True)
    assert beholder.update(arrays=[np.arange(4.0)])
    pid = os.fork()
    if pid == 0:  # the child: a DataLoader worker, say
        code = 0
        try:
            assert not beholder.worker.busy and not beholder.worker.alive
            due(beholder)
            beholder.update(arrays=[np.arange(5.0)])
            beholder.flush(timeout=10)
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    beholder.close()


def _recorded_sleeps(monkeypatch) -> list[tuple[int, float, float]]:
    """Every time.sleep() the worker module makes, as (thread ident, seconds, when), the sleep still done."""
    calls: list[tuple[int, float, float]] = []
    real = time.sleep

    def sleep(seconds):
        calls.append((threading.get_ident(), seconds, time.perf_counter()))
        real(seconds)

    monkeypatch.setattr(worker_module.time, "sleep", sleep)
    return calls


def test_a_worker_gives_the_gil_away_once_per_slice_and_the_caller_never(monkeypatch):
    sleeps = _recorded_sleeps(monkeypatch)
    start = time.perf_counter()
    while time.perf_counter() - start < 3 * worker_module.GIL_SLICE_SECONDS + 0.002:
        worker_module.let_training_run()  # not a worker's thread: a frame rendered inside update()
    assert sleeps == []
    ran_on = []

    def job(_):
        ran_on.append(threading.get_ident())
        began = time.perf_counter()
        while sum(ident == ran_on[0] for ident, *_ in sleeps) < 3 and time.perf_counter() - began < 10:
            worker_module.let_training_run()

    worker = worker_module.Worker(job)
    worker.submit("a job")
    assert worker.drain(timeout=20)
    worker.stop(timeout=5)
    assert len(sleeps) == 3 and all(ident == ran_on[0] and seconds == 0 for ident, seconds, _ in sleeps)
    gaps = [b[2] - a[2] for a, b in zip(sleeps, sleeps[1:])]
    assert min(gaps) >= worker_module.GIL_SLICE_SECONDS  # not at every call: once per slice


def test_a_frame_rendered_by_the_worker_pauses_for_training_between_sections(tmp_path, monkeypatch):
    # with a slice of zero, each pause point gives the GIL away: at least one per section record, and
    # one per section's statistics
    monkeypatch.setattr(worker_module, "GIL_SLICE_SECONDS", 0.0)
    sleeps = _recorded_sleeps(monkeypatch)
    arrays = {f"layer{i}/kernel": np.full((4, 3), float(i), np.float32) for i in range(40)}
    written = {}
    for background in (False, True):
        run = str(tmp_path / str(background))
        set_config(run, values="arrays", mode="current", FPS=30)
        beholder = Beholder(run, strict=True, background=background)
        assert beholder.update(arrays=arrays)
        beholder.close()
        written[background] = read_frame_file(run)
        if not background:
            assert sleeps == []  # rendered inside update(): the training thread itself, no pause
    assert {ident for ident, *_ in sleeps} != {threading.get_ident()}
    assert len(sleeps) >= 2 * len(arrays)
    np.testing.assert_array_equal(written[False].pixels, written[True].pixels)
    assert written[False].sections == written[True].sections
