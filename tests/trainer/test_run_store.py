"""trainer/run_store.py: frame writes, the history ring, failed writes and their back-off."""

from __future__ import annotations

import errno
import os
import time

import numpy as np
import pytest
from support import due, set_config

from beholder_plugin import Beholder
from beholder_plugin.protocol.files import LOCAL, LocalFiles
from beholder_plugin.protocol.history import list_history, read_history_frame
from beholder_plugin.protocol.names import frame_path, plugin_dir
from beholder_plugin.protocol.runfiles import read_ended, read_frame_file
from beholder_plugin.trainer.run_settings import RunSettings
from beholder_plugin.trainer.run_status import RunStatus
from beholder_plugin.trainer.run_store import WRITE_RETRY_SECONDS, LocalRunStore
from beholder_plugin.trainer.views import user_frame


def _store(run_dir, files=LOCAL, clock=time.monotonic):
    """A local store of a fresh run, opened."""
    store = LocalRunStore(run_dir, files, RunStatus(), strict=True, clock=clock)
    store.open()
    return store


def test_write_frame_stamps_writes_and_counts_a_frame_and_keeps_it_in_history(run_dir):
    store = _store(run_dir)
    settings = RunSettings.starting("frames")
    header = {"values": "frames", "sections": []}
    pixels, palette = user_frame.pixels(np.full((4, 6, 3), 7, np.uint8))
    assert store.write_frame(header, 123.5, 9, settings, None, rows=pixels, palette=palette)
    frame = read_frame_file(run_dir)
    assert frame.header["frame_id"] == 1 and frame.header["step"] == 9 and frame.header["storage"] == "local"
    assert frame.header["writer"] == store.writer_id and frame.rgb().shape == (4, 6, 3)
    assert store.status.frames_written == 1 and [e.step for e in list_history(run_dir)] == [9]


def test_a_failed_write_is_counted_and_writes_back_off_on_the_store_s_clock(run_dir):
    class ReadOnly(LocalFiles):
        def write_atomic(self, path, buffers, reuse=None):
            raise OSError(errno.EROFS, "Read-only file system")

    now = [100.0]
    store = _store(run_dir, ReadOnly(), clock=lambda: now[0])
    pixels, palette = user_frame.pixels(np.zeros((2, 2), np.float32))
    header = {"values": "frames", "sections": []}
    assert not store.write_frame(header, 1.0, 1, RunSettings.starting(), "grayscale", rows=pixels,
                                 palette=palette)
    assert store.status.write_errors == 1 and store.status.frames_written == 0
    assert store.status.last_error.startswith("cannot write (Read-only file system)")
    assert not store.writable()
    now[0] += WRITE_RETRY_SECONDS
    assert store.writable()


def test_a_failed_write_names_the_folder_it_could_not_write_in(run_dir):
    class Blocked(LocalFiles):
        def write_atomic(self, path, buffers, reuse=None):
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path + ".1234-5.tmp")

    store = _store(run_dir, Blocked())
    pixels, palette = user_frame.pixels(np.zeros((2, 2), np.float32))
    header = {"values": "frames", "sections": []}
    assert not store.write_frame(header, 1.0, 1, RunSettings.starting(), "grayscale", rows=pixels,
                                 palette=palette)
    folder = os.path.dirname(plugin_dir(run_dir) + "/x").replace(os.sep, "/")
    assert store.status.last_error.startswith(f"cannot write (Not a directory: {folder}")
    assert ".tmp" not in store.status.last_error


@pytest.mark.usefixtures("flushed_updates")
def test_a_new_beholder_clears_temp_files_left_by_a_killed_one(run_dir):
    os.makedirs(plugin_dir(run_dir))
    leftover = os.path.join(plugin_dir(run_dir), ".frame.bin.12345-678.tmp")
    with open(leftover, "wb") as f:
        f.write(b"half a frame")
    os.utime(leftover, (0, 0))
    Beholder(run_dir)
    assert not os.path.exists(leftover)


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
             if e.name not in beholder.store.history.pins]  # keyframes (pinned) have their own budget
    assert sum(sizes) <= 1 << 20 and len(sizes) == (1 << 20) // sizes[-1]  # as many as fit, no more
    set_config(run_dir, values="arrays", mode="current", FPS=30, history_mb=0)
    due(beholder)
    beholder.update(arrays=big)
    beholder.close()
    assert list_history(run_dir) == [] and read_frame_file(run_dir).header["frame_id"] == 7


def test_close_leaves_a_mark_naming_the_writers_last_frame(run_dir):
    """A finished run read "No frame for 20 s: trainer stopped?", as a killed trainer's does: close()
    now leaves ended.json naming its last frame (none for a Beholder that wrote no frame), and frame.bin
    stays the newest kept frame."""
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    idle = Beholder(run_dir, strict=True)
    idle.close()
    assert read_ended(run_dir) is None
    beholder = Beholder(run_dir, strict=True)
    for step in range(3):
        beholder.frame_due_now()
        assert beholder.update(arrays={"w": np.full((3, 4), float(step))})
        beholder.flush()
    assert read_ended(run_dir) is None  # (not while it trains)
    t0 = time.time()
    beholder.close()
    mark, frame = read_ended(run_dir), read_frame_file(run_dir)
    assert (mark["writer"], mark["frame_id"]) == (frame.header["writer"], frame.header["frame_id"]) == \
        (beholder.store.writer_id, beholder.frames_written) and beholder.frames_written == 3
    assert t0 <= mark["time"] <= time.time()
    assert list_history(run_dir)[-1].frame_id == frame.header["frame_id"]


def test_a_run_deleted_before_close_does_not_come_back_as_a_mark(tmp_path):
    """"Delete the run and train again": the old trainer's close() made plugins/beholder/ended.json, a
    run of one file that TensorBoard then listed."""
    import shutil

    run = str(tmp_path / "run")
    set_config(run, values="arrays", mode="current", FPS=30)
    beholder = Beholder(run, strict=True)
    beholder.frame_due_now()
    assert beholder.update(arrays={"w": np.ones((2, 2))})
    beholder.flush()
    shutil.rmtree(run)
    beholder.close()
    assert not os.path.exists(run)


def test_a_beholder_whose_frame_another_replaced_leaves_no_mark(run_dir):
    """A notebook cell run again: a second Beholder of the run writes frames, then the first one is
    closed (at exit, say). Its mark named its own last frame, not the one on screen, so the run read
    "trainer stopped?" for good; now only the writer of the frame in frame.bin leaves one."""
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    first = Beholder(run_dir, strict=True)
    first.frame_due_now()
    assert first.update(arrays={"w": np.ones((2, 2))})
    first.flush()
    second = Beholder(run_dir, strict=True)
    second.frame_due_now()
    assert second.update(arrays={"w": np.zeros((2, 2))})
    second.close()
    first.close()
    mark = read_ended(run_dir)
    assert mark is not None and mark["writer"] == second.store.writer_id
    assert read_frame_file(run_dir).header["writer"] == second.store.writer_id
