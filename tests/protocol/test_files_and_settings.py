"""Bounded file access, the settings validator and config.json reading, and the layout arithmetic."""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beholder_plugin import ConfigError, read_config
from beholder_plugin.protocol.files import LOCAL, FileRefused, files_for
from beholder_plugin.protocol.layout import resize_indices
from beholder_plugin.protocol.names import config_path, plugin_dir
from beholder_plugin.protocol.plans import make_plan
from beholder_plugin.protocol.runfiles import MAX_CONFIG_BYTES
from beholder_plugin.protocol.settings import DEFAULT_CONFIG, parse_config_document, validate_changes


def test_validate_changes_accepts_partial_updates_and_names_the_bad_key():
    assert validate_changes({"FPS": 0, "colormap": "plasma"}) == {"FPS": 0, "colormap": "plasma"}
    assert validate_changes({"history_mb": 0}) == {"history_mb": 0}
    bad = [
        ({"FPS": 31}, "'FPS'"),
        ({"FPS": True}, "'FPS'"),
        ({"FPS": "10"}, "'FPS'"),
        ({"window_size": 1}, "'window_size'"),
        ({"is_recording": 1}, "'is_recording'"),
        ({"colormap": "jet"}, "'colormap'"),
        ({"values": None}, "'values'"),
        ({"history_mb": -1}, "'history_mb'"),
        ({"history_seconds": 1.5}, "'history_seconds'"),
        ({"zoom": 2}, "'zoom'"),
        ({"version": 9}, "'version'"),
    ]
    for changes, key in bad:
        with pytest.raises(ConfigError, match=key):
            validate_changes(changes)
    with pytest.raises(ConfigError, match="object"):
        validate_changes(["FPS", 3])


def test_config_documents_fill_defaults_and_ignore_unknown_keys():
    config, problems = parse_config_document({"mode": "current", "future": 1, "version": 2})
    assert config == {**DEFAULT_CONFIG, "mode": "current"}
    assert len(problems) == 2
    with pytest.raises(ConfigError, match="'mode'"):
        parse_config_document({"mode": "loud"})


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (lambda p: os.mkdir(p), "not a regular file"),
        (lambda p: os.mkfifo(p), "not a regular file"),
        (lambda p: open(p, "w").write("[" * 5000 + "]" * 5000), "nested too deeply"),
        (lambda p: open(p, "wb").write(b"\xff\xfe"), "not valid JSON"),
        (lambda p: open(p, "w").write("{nope"), "not valid JSON"),
        (lambda p: os.truncate(open(p, "wb").name, 4 << 30), "more than the"),
    ],
)
def test_unreadable_config_files_raise_a_clear_error_at_once(run_dir, make_bad, message):
    """A FIFO or a 4 GB sparse file in place of config.json is refused without blocking or reading it."""
    os.makedirs(plugin_dir(run_dir))
    make_bad(config_path(run_dir))
    outcome = {}
    reader = threading.Thread(target=lambda: outcome.update(r=_catch(read_config, run_dir)), daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "read_config blocked"
    assert isinstance(outcome["r"], ConfigError) and message in str(outcome["r"])
    assert "config.json" in str(outcome["r"])


def _catch(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - returned for the assertion
        return exc


def test_reads_are_capped(tmp_path):
    path = str(tmp_path / "f")
    LOCAL.write_atomic(path, [b"x" * 100])
    assert LOCAL.read(path, 100) == b"x" * 100
    with pytest.raises(FileRefused, match="100 bytes"):
        LOCAL.read(path, 99)
    assert LOCAL.read(str(tmp_path / "missing"), 10) is None
    assert MAX_CONFIG_BYTES < 1 << 20


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = str(tmp_path / "frame.bin")
    LOCAL.write_atomic(path, [b"old"])
    with pytest.raises(TypeError):  # fails after the first chunk, like a full disk would
        LOCAL.write_atomic(path, [b"new", object()])
    assert LOCAL.read(path, 10) == b"old"
    assert os.listdir(tmp_path) == ["frame.bin"]


def test_stale_temp_files_of_killed_writers_are_removed(run_dir):
    os.makedirs(plugin_dir(run_dir))
    stale = os.path.join(plugin_dir(run_dir), ".frame.bin.999-1.tmp")
    fresh = os.path.join(plugin_dir(run_dir), ".frame.bin.998-1.tmp")
    keep = os.path.join(plugin_dir(run_dir), "notes.tmp")
    for path in (stale, fresh, keep):
        open(path, "wb").close()
    os.utime(stale, (0, 0))
    os.utime(keep, (0, 0))
    assert LOCAL.remove_stale_temp_files(plugin_dir(run_dir)) == 1
    assert not os.path.exists(stale) and os.path.exists(fresh) and os.path.exists(keep)


def test_urls_without_their_backend_are_refused_rather_than_written_to_a_local_directory(monkeypatch):
    from beholder_plugin.protocol import remote_files

    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if gcsfs were not installed
    monkeypatch.setattr(remote_files, "_CACHE", {})
    with pytest.raises(ImportError, match="gs:// URL, which needs the gcsfs package: pip install gcsfs"):
        files_for("gs://bucket/run1")
    assert files_for("file:///tmp/x") is LOCAL and files_for("logs/run1") is LOCAL


def test_the_resize_follows_tensorflows_float32_rule():
    """112 source columns resized to 768 take column 62 at x = 432 (the integer rule says 63)."""
    cols = resize_indices(112, 768)
    assert cols[432] == 62 and cols[431] == 62 and cols[433] == 63
    assert (np.arange(768) * 112) // 768 @ np.ones(768) != cols @ np.ones(768)
    for src, dst in ((1, 128), (5, 768), (768, 768), (3000, 128), (7, 3)):
        got = resize_indices(src, dst)
        assert got.min() >= 0 and got.max() <= src - 1 and (np.diff(got) >= 0).all()
    plan = make_plan((112,), 768, False)
    assert plan.index[0][0, plan.col_map[432]] == 62


def test_a_file_rewritten_in_place_while_read_is_never_returned_torn(tmp_path):
    """The trainer rewrites dropped history files in place; a reader gets one whole version
    or a refusal.

    As in frame files, every version starts with bytes of its own (here a counter).
    """
    path = str(tmp_path / "recycled.bin")
    size = 4 << 20
    fills = [bytes([v]) * (size - 8) for v in range(256)]

    def version(n):
        return n.to_bytes(8, "little") + fills[n % 256]

    LOCAL.write_atomic(path, [version(0)])
    stop = threading.Event()

    def rewrite():  # what the trainer does to a spare: rewrite it in place, then move it into place
        n = 0
        while not stop.is_set():
            n += 1
            LOCAL.write_atomic(path, [version(n)], reuse=path)
            time.sleep(0.01)  # frames come at some rate; reads still overlap rewrites often

    writer = threading.Thread(target=rewrite)
    writer.start()
    whole = missed = 0
    seen: set[int] = set()
    deadline = time.monotonic() + 20
    try:
        while (whole < 30 or len(seen) < 3) and time.monotonic() < deadline:
            try:
                data = LOCAL.read(path, size)
            except FileRefused as exc:  # overlapped rewrites three times running
                assert "kept changing" in str(exc)
                missed += 1
                continue
            if data is None:  # moved away to be rewritten at that moment: as a dropped frame reads
                missed += 1
                continue
            n = int.from_bytes(data[:8], "little")
            assert data == version(n)  # one version throughout, never a mix
            seen.add(n)
            whole += 1
    finally:
        stop.set()
        writer.join()
    # Reads ran while the file was being rewritten (several versions were read, and how many reads
    # met a rewrite depends on the machine's timing), and none returned a torn file.
    assert whole >= 30 and len(seen) >= 3, (whole, missed, len(seen))


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=300), max_size=6),
    caps=st.lists(st.integers(1, 400), min_size=1, max_size=20),
    reuse=st.booleans(),
)
def test_writes_the_kernel_cuts_short_are_finished(tmp_path_factory, chunks, caps, reuse):
    """writev and pwritev may write fewer bytes than asked: whatever they cut, the file holds every buffer."""
    import beholder_plugin.protocol.files as files

    real_writev, real_pwritev = os.writev, os.pwritev
    cuts = iter(caps * 1000)

    def cut(views):  # the first `next(cuts)` bytes of the vector, as one buffer
        return [b"".join(bytes(v) for v in views)[: next(cuts)]]

    path = str(tmp_path_factory.mktemp("w") / "f.bin")
    spare = None
    if reuse:  # an older, longer file rewritten in place
        spare = path + ".spare"
        with open(spare, "wb") as f:
            f.write(b"x" * 2000)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(files.os, "writev", lambda fd, views: real_writev(fd, cut(views)))
        patch.setattr(files.os, "pwritev", lambda fd, views, at: real_pwritev(fd, cut(views), at))
        size = LOCAL.write_atomic(path, [memoryview(c) for c in chunks], reuse=spare)
    with open(path, "rb") as f:
        assert f.read() == b"".join(chunks)
    assert size == sum(len(c) for c in chunks)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_in_place_of_the_spare_file_is_replaced_by_a_fresh_file(tmp_path):
    """The ring recycles a dropped frame's file as the next frame's spare. A FIFO put there made every
    rewrite fail ("Illegal seek") and stopped frames for seconds; now it is dropped and the frame is
    written to a fresh file, and a plain file spare is still rewritten in place."""
    path, spare = str(tmp_path / "frame.bin"), str(tmp_path / "spare")
    os.mkfifo(spare)
    assert LOCAL.write_atomic(path, [b"new frame"], reuse=spare) == 9
    assert open(path, "rb").read() == b"new frame" and not os.path.lexists(spare)
    assert sorted(os.listdir(tmp_path)) == ["frame.bin"]  # (no temporary file, no FIFO left)
    with open(spare, "wb") as f:
        f.write(b"x" * 100)
    inode = os.stat(spare).st_ino
    LOCAL.write_atomic(path, [b"next"], reuse=spare)
    assert os.stat(path).st_ino == inode and open(path, "rb").read() == b"next"  # rewritten in place
