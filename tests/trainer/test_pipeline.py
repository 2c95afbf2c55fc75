"""The background worker: same frames as inline, skips instead of queues, errors, draining, exit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from support import due, set_config

from beholder_plugin import Beholder, read_config
from beholder_plugin.protocol.history import list_history, read_history_frame
from beholder_plugin.protocol.names import config_path, frame_path
from beholder_plugin.protocol.runfiles import read_frame_file
from beholder_plugin.protocol.settings import DEFAULT_CONFIG
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
    strict._worker.drain()
    with pytest.raises(RuntimeError, match="renderer broke"):
        strict.update(arrays=[np.arange(4.0)])
    lenient = Beholder(run_dir)
    assert lenient.update(arrays=[np.arange(4.0)])
    lenient.flush()
    assert lenient.failures == 1 and "renderer broke" in lenient.last_error
    lenient.close()
    strict.close()


def test_the_constructor_creates_the_run_and_keeps_an_existing_config(tmp_path):
    fresh = str(tmp_path / "fresh")
    Beholder(fresh).close()
    assert read_config(fresh) == DEFAULT_CONFIG and os.path.isfile(config_path(fresh))
    kept = str(tmp_path / "kept")
    set_config(kept, FPS=3, colormap="viridis")
    Beholder(kept).close()
    assert read_config(kept)["FPS"] == 3 and read_config(kept)["colormap"] == "viridis"


def test_history_keeps_every_frame_with_its_step_and_frame_bin_is_the_newest(run_dir):
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    beholder = Beholder(run_dir, strict=True)
    for step in range(5):
        due(beholder)
        assert beholder.update(arrays={"v": np.full(3, float(step)) + np.arange(3)})
        beholder.flush()
    beholder.close()
    entries = list_history(run_dir)
    assert [e.step for e in entries] == [1, 2, 3, 4, 5] and [e.frame_id for e in entries] == [1, 2, 3, 4, 5]
    for step, entry in enumerate(entries):
        np.testing.assert_array_equal(read_history_frame(run_dir, entry.name).values, step + np.arange(3))
    assert os.path.samefile(frame_path(run_dir), os.path.join(os.path.dirname(frame_path(run_dir)),
                                                              "history", entries[-1].name))


def test_history_stays_within_its_byte_budget_and_zero_turns_it_off(run_dir):
    set_config(run_dir, values="arrays", mode="current", FPS=30, history_mb=1)
    beholder = Beholder(run_dir, strict=True)
    big = {"w": np.random.default_rng(0).normal(size=(128, 768))}  # ~ 0.5 MB of values a frame
    for _ in range(6):
        due(beholder)
        beholder.update(arrays=big)
        beholder.flush()
    sizes = [os.path.getsize(os.path.join(os.path.dirname(frame_path(run_dir)), "history", e.name))
             for e in list_history(run_dir)
             if e.name not in beholder._history.pins]  # keyframes (pinned) have their own budget
    assert sum(sizes) <= 1 << 20 and len(sizes) == (1 << 20) // sizes[-1]  # as many as fit, no more
    set_config(run_dir, values="arrays", mode="current", FPS=30, history_mb=0)
    due(beholder)
    beholder.update(arrays=big)
    beholder.close()
    assert list_history(run_dir) == [] and read_frame_file(run_dir).header["frame_id"] == 7


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
            assert not beholder._worker.busy and not beholder._worker.alive
            due(beholder)
            beholder.update(arrays=[np.arange(5.0)])
            beholder.flush(timeout=10)
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    beholder.close()
