"""trainer/run_store.py: frame writes, the history ring, failed writes and their back-off."""

from __future__ import annotations

import errno
import time

import numpy as np

from beholder_plugin.protocol.files import LOCAL, LocalFiles
from beholder_plugin.protocol.history import list_history
from beholder_plugin.protocol.runfiles import read_frame_file
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
