"""Beholder on a remote logdir, through fsspec's in-process memory:// store (docs/remote.md)."""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import uuid

import numpy as np
import pytest
from support import set_config

from beholder_plugin import Beholder
from beholder_plugin.protocol import remote_files
from beholder_plugin.protocol.files import files_for
from beholder_plugin.protocol.history import list_history
from beholder_plugin.protocol.names import plugin_dir
from beholder_plugin.protocol.runfiles import read_config, read_ended, read_frame_file, write_config
from beholder_plugin.trainer import run_settings, run_store

IMAGE = np.arange(48, dtype=np.float32).reshape(6, 8)


@pytest.fixture
def url(tmp_path, monkeypatch):
    """A fresh memory:// run; the working directory is an empty folder, so local writes would show."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return f"memory://bucket-{uuid.uuid4().hex[:12]}/run"


def wait_until(predicate, timeout=20.0):
    """Poll predicate until it is true; AssertionError after timeout s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def frames_until(beholder, predicate, timeout=20.0):
    """Call update(frame=...) until predicate() holds (the settings reach the trainer between calls)."""
    wait_until(lambda: (beholder.update(frame=IMAGE), beholder.flush(), predicate())[-1], timeout)


def test_a_remote_run_writes_its_files_to_the_store_and_nothing_locally(url):
    set_config(url, values="frames", FPS=30)
    with Beholder(url, strict=True, max_remote_fps=20, config_poll_seconds=0.05) as beholder:
        assert beholder.remote and beholder.storage == "memory" and beholder.max_fps == 20
        frames_until(beholder, lambda: beholder.frames_written >= 3)
    frame = read_frame_file(url)
    assert frame.header["values"] == "frames" and frame.header["frame_id"] == beholder.frames_written
    assert read_ended(url)["frame_id"] == beholder.frames_written  # (close() said the training ended)
    assert frame.header["storage"] == "memory" and frame.header["max_fps"] == 20
    kept = list_history(url)
    assert kept and kept[-1].frame_id == frame.header["frame_id"]
    assert os.listdir(".") == []  # no "memory:" folder, nothing else either


def test_local_runs_say_so_in_the_frame_header(run_dir):
    set_config(run_dir, values="frames")
    with Beholder(run_dir, strict=True) as beholder:
        assert beholder.update(frame=IMAGE)
    header = read_frame_file(run_dir).header
    assert header["storage"] == "local" and header["max_fps"] is None
    assert beholder.remote is False


def test_file_urls_write_to_the_local_directory(run_dir):
    with Beholder("file://" + run_dir, strict=True) as beholder:
        assert beholder.remote is False and beholder.logdir == run_dir
    assert os.path.isfile(os.path.join(plugin_dir(run_dir), "config.json"))


def test_the_frame_rate_and_history_are_capped_on_remote_runs(url):
    set_config(url, values="frames", FPS=30, history_mb=1024, history_seconds=3600)
    beholder = Beholder(url, strict=True, max_remote_fps=0.5)
    try:
        assert beholder.update(frame=IMAGE)
        handed = [beholder.update(frame=IMAGE) for _ in range(10) if time.sleep(0.02) is None]
        assert not any(handed)  # due every 1/30 s locally; at most every 2 s here
        assert beholder.config["FPS"] == 30  # config.json is unchanged: the cap applies below it
        assert beholder.store.history.max_seconds == run_settings.REMOTE_HISTORY_SECONDS
        assert beholder.store.history.max_bytes == run_settings.REMOTE_HISTORY_MB << 20
    finally:
        beholder.close()


def test_bad_caps_are_refused_with_a_clear_error(url):
    with pytest.raises(ValueError, match="max_remote_fps must be a number"):
        Beholder(url, max_remote_fps=0)
    with pytest.raises(ValueError, match="config_poll_seconds"):
        Beholder(url, config_poll_seconds=float("nan"))


def test_update_never_touches_the_store_on_the_training_thread(url):
    set_config(url, values="frames", FPS=30)
    beholder = Beholder(url, strict=True, max_remote_fps=30, config_poll_seconds=0.05)
    fs = files_for(url).fs
    calls: list[str] = []
    main = threading.get_ident()
    names = ("info", "cat_file", "pipe_file", "ls", "copy", "rm_file")
    originals = {name: getattr(fs, name) for name in names}

    def counting(name):
        def call(*args, **kwargs):
            if threading.get_ident() == main:
                calls.append(name)
            return originals[name](*args, **kwargs)
        return call

    try:
        for name in originals:
            setattr(fs, name, counting(name))
        handed = 0
        for _ in range(300):
            handed += beholder.update(frame=IMAGE)
            time.sleep(0.002)
        beholder.flush()
    finally:
        for name in originals:
            delattr(fs, name)  # back to the class's methods
        beholder.close()
    assert handed >= 1 and beholder.frames_written >= 1
    assert calls == []


def test_settings_changed_in_the_store_reach_the_trainer(url):
    set_config(url, values="frames", FPS=30)
    with Beholder(url, strict=True, max_remote_fps=30, config_poll_seconds=0.05) as beholder:
        assert beholder.config["colormap"] == "magma"
        write_config(url, {**read_config(url), "colormap": "viridis"})
        frames_until(beholder, lambda: read_frame_file(url).header["colormap"] == "viridis")
        assert beholder.config["colormap"] == "viridis"


def test_a_deleted_config_is_written_again_with_the_settings_in_force(url):
    set_config(url, values="frames", colormap="plasma")
    with Beholder(url, strict=True, config_poll_seconds=0.05) as beholder:
        files_for(url).remove(url + "/plugins/beholder/config.json")
        wait_until(lambda: files_for(url).identity(url + "/plugins/beholder/config.json") is not None)
        assert read_config(url)["colormap"] == "plasma" and beholder.config["colormap"] == "plasma"


def test_a_missing_backend_fails_at_construction_even_when_not_strict(url, monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if gcsfs were not installed
    monkeypatch.setattr(remote_files, "_CACHE", {})
    extra = r"pip install gcsfs \(or pip install 'tensorboard-plugin-beholder\[gcs\]'"
    with pytest.raises(ImportError, match=extra):
        Beholder("gs://bucket/run1", strict=False)
    assert os.listdir(".") == []


def store_fault(monkeypatch, fs, error: Exception, methods: tuple[str, ...]) -> threading.Event:
    """Make the store's methods raise `error` while the returned event is set (as a store going away does)."""
    failing = threading.Event()
    for name in methods:
        real = getattr(fs, name)

        def method(*args, _real=real, **kwargs):
            if failing.is_set():
                raise error
            return _real(*args, **kwargs)

        monkeypatch.setattr(fs, name, method)
    return failing


def fault_then_recovery(beholder, failing: threading.Event, caplog, errors: int) -> list[str]:
    """Frames, then `errors` failed writes while the fault lasts (none written), then frames again.

    Returns the "cannot write frames" warnings logged meanwhile; the Beholder is closed.
    """
    try:
        with caplog.at_level(logging.WARNING, logger="beholder"):
            frames_until(beholder, lambda: beholder.frames_written >= 1)
            failing.set()
            written = beholder.frames_written
            frames_until(beholder, lambda: beholder.write_errors >= errors)
            assert beholder.frames_written == written and beholder.failures == 0
            failing.clear()  # the store is back (or the credentials were refreshed)
            frames_until(beholder, lambda: beholder.frames_written > written)
    finally:
        beholder.close()
    return [r.getMessage() for r in caplog.records if "cannot write frames" in r.getMessage()]


def test_an_unreachable_store_skips_frames_warns_once_and_frames_resume(url, monkeypatch, caplog):
    set_config(url, values="frames", FPS=30)
    monkeypatch.setattr(run_store, "WRITE_RETRY_SECONDS", 0.05)
    beholder = Beholder(url, max_remote_fps=30, config_poll_seconds=0.05)
    refused = ConnectionError("Could not connect to the endpoint URL")
    down = store_fault(monkeypatch, files_for(url).fs, refused, ("pipe_file", "info"))
    warnings = fault_then_recovery(beholder, down, caplog, errors=3)
    assert len(warnings) == 1 and "Could not connect" in warnings[0]
    frame = read_frame_file(url)
    assert frame.header["frame_id"] == beholder.frames_written
    # the frames written since say the outage is over (they said "frames not written since ..." for good)
    assert frame.header["last_error"] == beholder.last_error
    assert beholder.last_error.startswith("cannot write (") and "Could not connect" in beholder.last_error
    outage = r"\) from \d\d:\d\d:\d\d to \d\d:\d\d:\d\d: \d+ frames not written$"
    assert re.search(outage, beholder.last_error)


def test_a_recording_is_made_locally_and_uploaded_when_it_ends(url):
    set_config(url, values="frames", FPS=30, is_recording=True)
    beholder = Beholder(url, strict=True, max_remote_fps=30, config_poll_seconds=0.05)
    staging = beholder.store.recorder.directory
    frames_until(beholder, lambda: beholder.frames_written >= 5)
    files = files_for(url)
    assert not [n for n in files.listdir(plugin_dir(url)) if n.startswith("video")]  # not before it ends
    beholder.close()
    sizes = files.list_sizes(plugin_dir(url))
    videos = [n for n in sizes if n.startswith("video-") and n.endswith(".mp4")]
    assert len(videos) == 1 and sizes[videos[0]] > 0
    assert not os.path.exists(staging)  # the local copy is gone once uploaded
    assert os.listdir(".") == []


def test_expired_credentials_get_a_clear_message_and_frames_resume(url, monkeypatch, caplog):
    """What S3 answers when a session token expires, raised by the store on every write for a while."""
    set_config(url, values="frames", FPS=30)
    monkeypatch.setattr(run_store, "WRITE_RETRY_SECONDS", 0.05)
    beholder = Beholder(url, max_remote_fps=30, config_poll_seconds=0.05)

    class ClientError(Exception):  # botocore's, as s3fs lets it through: not an OSError
        pass

    token = ClientError("An error occurred (ExpiredToken) when calling the PutObject operation: "
                        "The provided token has expired.")
    expired = store_fault(monkeypatch, files_for(url).fs, token, ("pipe_file",))
    (warning,) = fault_then_recovery(beholder, expired, caplog, errors=2)
    assert "the store refused the credentials" in warning and "ExpiredToken" in warning
    assert "refresh or fix them" in warning


def test_a_remote_timeline_is_uploaded_in_chunks_and_reads_back(url, monkeypatch):
    """timeline: on a remote logdir the records go up as part objects (one per interval), read back whole."""
    from beholder_plugin import read_anomalies, read_timeline
    from beholder_plugin.protocol import timeline as tl
    from beholder_plugin.trainer import timeline as trainer_timeline

    set_config(url, values="arrays", FPS=30)
    with Beholder(url, background=False) as beholder:
        writer = beholder.timeline.writer
        for step in range(1, 7):
            if step == 4:
                monkeypatch.setattr(writer, "remote_chunk_seconds", 0.0)  # from now on, a part a frame
            w = np.full((4, 4), float(step), np.float32)
            if step == 6:
                w[0, 0] = np.nan
            beholder.frame_due_now()
            beholder.update(arrays={"w": w})
        parts = [n for n in files_for(url).listdir(tl.timeline_dir(url)) if tl.part_seq(n) is not None]
        assert len(parts) == 3  # frames 1-4 in one part, then 5 and 6 one each
    assert trainer_timeline.REMOTE_CHUNK_SECONDS > 0
    assert read_timeline(url)["w"]["step"].tolist() == [1, 2, 3, 4, 5, 6]
    assert [(a["section"], a["kind"], a["step"]) for a in read_anomalies(url)] == [("w", "nan", 6)]
    assert not os.listdir(".")  # nothing written locally


def store_hang(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """(hang, answer): while hang is set, every call to the store waits for answer, as calls to a bucket
    that stopped answering wait out the client's timeouts and retries."""
    hang, answer = threading.Event(), threading.Event()
    real = remote_files.RemoteFiles._call

    def call(self, path, fn, *args, **kwargs):
        if hang.is_set():
            answer.wait(60)
        return real(self, path, fn, *args, **kwargs)

    monkeypatch.setattr(remote_files.RemoteFiles, "_call", call)
    return hang, answer


def test_a_bucket_that_hangs_holds_neither_the_constructor_nor_close(url, monkeypatch, caplog):
    """A bucket that hangs (not refuses): Beholder(...) waited in the run's opening, and close() (which
    every callback calls when training ends) in the timeline's last upload, 15 minutes and more. Both
    are bounded now; frames start once the run has opened."""
    from beholder_plugin.trainer import beholder as beholder_module

    monkeypatch.setattr(beholder_module, "REMOTE_OPEN_SECONDS", 0.5)
    monkeypatch.setattr(beholder_module, "REMOTE_CLOSE_SECONDS", 0.5)
    set_config(url, values="frames", FPS=30)
    hang, answer = store_hang(monkeypatch)
    hang.set()
    try:
        with caplog.at_level(logging.WARNING, logger="beholder"):
            started = time.monotonic()
            beholder = Beholder(url, max_remote_fps=30, config_poll_seconds=0.05)
            assert time.monotonic() - started < 10
            assert "did not answer within 0.5 s; training goes on" in caplog.text
            assert not beholder.update(frame=IMAGE)  # (not opened: no frame, no wait)
            hang.clear()
            answer.set()  # the bucket answers again: the run opens, frames start
            frames_until(beholder, lambda: beholder.frames_written >= 1)
            answer.clear()
            hang.set()  # and hangs again, with a frame on its way and timeline records to upload
            beholder.frame_due_now()
            beholder.update(frame=IMAGE)
            started = time.monotonic()
            beholder.close()
            assert time.monotonic() - started < 10
        assert "the last frame was not written" in caplog.text or "timeline's last records" in caplog.text
    finally:
        hang.clear()
        answer.set()


def test_a_remote_run_deleted_before_close_gets_no_mark(url):
    """The store's run was deleted while its trainer ran on: close() leaves no ended.json behind."""
    set_config(url, values="frames", FPS=30)
    beholder = Beholder(url, strict=True, max_remote_fps=30, config_poll_seconds=0.05)
    frames_until(beholder, lambda: beholder.frames_written >= 1)
    files_for(url).fs.rm(url, recursive=True)
    beholder.close()
    assert read_ended(url) is None and read_frame_file(url) is None

