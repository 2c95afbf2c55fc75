"""Hostile input and faults on the trainer side: odd arrays and frames, read-only and full disks, a soak."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from support import due, set_config

from beholder_plugin import Beholder, read_frame, read_section_info
from beholder_plugin.protocol.frame_format import value_at
from beholder_plugin.protocol.layout import RenderError
from beholder_plugin.protocol.runfiles import FRAME_FILE, config_path, frame_path, plugin_dir, read_frame_file

pytestmark = pytest.mark.usefixtures("flushed_updates")

# name -> (array, expected section max, or None when refused)
ODD_ARRAYS = {
    "nan": (np.array([np.nan, 1.0, 2.0]), 2.0),
    "inf": (np.array([-np.inf, 0.0, np.inf, 3.0]), 3.0),
    "all nan": (np.full(4, np.nan), None),
    "all equal": (np.full((3, 3), 7.0), 7.0),
    "scalar": (np.array(5.0), 5.0),
    "rank 5": (np.arange(720.0).reshape(2, 3, 4, 5, 6), 714.0),  # 11 x 65 grid: 715 shown
    "rank 7": (np.ones((2,) * 7), 1.0),
    "bool": (np.array([[True, False]]), 1.0),
    "int8": (np.array([-128, 127], np.int8), 127.0),
    "int16": (np.array([-5, 5], np.int16), 5.0),
    "int32": (np.array([1, 2], np.int32), 2.0),
    "int64": (np.array([2**40, 0], np.int64), float(2**40)),
    "uint64": (np.array([0, 2**63], np.uint64), float(2**63)),
    "float16": (np.array([0.5, 65504.0], np.float16), 65504.0),
    "complex": (np.array([3 + 4j, 1j]), 5.0),
    "non-contiguous": (np.arange(64.0).reshape(8, 8).T[::2], 62.0),
    "zero-stride": (np.broadcast_to(np.arange(3.0), (50, 3)), 2.0),
    "nested list": ([[1, 2, 3], [4, 5, 6]], 6.0),
    "masked, none masked": (np.ma.masked_array([1.0, 4.0], mask=False), 4.0),
}
REFUSED = {
    "empty": np.zeros((0,)),
    "empty matrix": np.zeros((3, 0)),
    "strings": np.array(["a", "b"]),
    "not an array": object(),
    "ragged": [[1, 2], [3]],
    "none": None,
    "masked": np.ma.masked_array([1.0, 9.0, 3.0], mask=[0, 1, 0]),  # its data is not what to show
}


def test_odd_arrays_each_render_sensibly(run_dir):
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    beholder = Beholder(run_dir, strict=True)
    for name, (array, expected_max) in ODD_ARRAYS.items():
        due(beholder)
        assert beholder.update(arrays={name: array}), name
        (info,) = read_section_info(run_dir)
        assert info["max"] == expected_max, name
        pixels = read_frame(run_dir)
        assert pixels.shape[1] == 768 and pixels.dtype == np.uint8


def test_odd_arrays_render_alongside_each_other(run_dir):
    set_config(run_dir, values="arrays", mode="variance", FPS=30, scaling="network")
    beholder = Beholder(run_dir, strict=True)
    arrays = {name: array for name, (array, _) in ODD_ARRAYS.items()}
    for _ in range(3):
        assert beholder.update(arrays=arrays)
        due(beholder)
    infos = read_section_info(run_dir)
    assert [i["name"] for i in infos] == list(ODD_ARRAYS)
    assert all(i["min"] is None or i["min"] >= 0 for i in infos)  # variances


# What the empty section of each refused input says.
REASONS = {
    "empty": "empty", "empty matrix": "empty", "strings": "not a numeric array",
    "not an array": "not a numeric array", "ragged": "cannot be read as an array", "none": "None",
    "masked": "1 of 3 elements masked",
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_a_bad_array_is_an_empty_section_saying_why_and_the_others_render(run_dir, name, caplog):
    set_config(run_dir, values="arrays", FPS=30, mode="current")
    if name != "none":  # None is not an error (a frozen layer's gradient): never raised
        strict = Beholder(run_dir, strict=True)
        with pytest.raises(RenderError, match=f"section {name}"):
            strict.update(arrays={name: REFUSED[name], "fine": np.ones(3)})
        strict.close()
    lenient = Beholder(run_dir)
    with caplog.at_level(logging.WARNING, logger="beholder"):
        assert lenient.update(arrays={name: REFUSED[name], "fine": np.arange(3.0)})
        lenient.flush()
    assert lenient.failures == 0
    frame = read_frame_file(run_dir)
    bad, fine = frame.sections
    assert bad["name"] == name and bad["layout"] == "missing" and REASONS[name] in bad["missing"]
    assert bad["height"] == 32 and bad["bounds"] == [None, None]
    assert "missing" not in fine and fine["max"] == 2.0 and fine["top"] == 32 + 5
    assert (frame.pixels[: bad["height"]] == 0).all()  # a black band; the dashboard labels it
    assert value_at(frame_path(run_dir), 5, 5) is None  # nothing to look up in it
    assert value_at(frame_path(run_dir), 767, fine["top"])["value"] == 2.0
    assert (name in caplog.text) == (name != "none")  # logged once, except plain None


BOUNDED = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from beholder_plugin import Beholder, write_config, DEFAULT_CONFIG, read_section_info
    run = sys.argv[1]
    write_config(run, {**DEFAULT_CONFIG, "values": "arrays", "mode": "current", "FPS": 30})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    huge = np.broadcast_to(np.arange(1000.0), (1000, 1000, 1000))  # 10**9 values
    kernel = np.broadcast_to(np.float32(1.0), (3, 3, 30000, 40000))  # 10.8 * 10**9 values
    b = Beholder(run, strict=True)
    assert b.update(arrays={"huge": huge, "kernel": kernel})
    b.flush()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) // 1024, read_section_info(run)[0]["max"])
    """
)


def test_a_billion_value_broadcast_view_is_never_copied_whole(run_dir):
    out = subprocess.run(
        [sys.executable, "-c", BOUNDED, run_dir], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    grown_mb, shown_max = out.stdout.split()
    assert float(shown_max) == 999.0
    assert int(grown_mb) < 200  # a copy would be 8000 MB


def test_bad_frames_are_refused_with_a_clear_message(run_dir):
    set_config(run_dir, values="frames", FPS=30)
    beholder = Beholder(run_dir, strict=True)
    cases = [
        (np.zeros(5), "got shape \\(5,\\)"),
        (np.zeros((2, 3, 4, 5)), "got shape"),
        (np.zeros((5, 4, 2), np.float32), "1, 3 or 4 channels"),  # float RGB in [0, 1] is fine now
        (np.array([["a"]]), "not a numeric array"),
        (np.zeros((0, 5)), "empty"),
    ]
    for frame, message in cases:
        with pytest.raises(RenderError, match=message):
            beholder.update(frame=frame)
        due(beholder)

    def broken():
        raise ValueError("the generator fell over")

    with pytest.raises(ValueError, match="fell over"):
        beholder.update(frame=broken)
    lenient = Beholder(run_dir)
    due(lenient)
    assert lenient.update(frame=broken) is False and lenient.failures == 1


def test_a_huge_frame_is_shown_downsampled(run_dir, caplog):
    set_config(run_dir, values="frames", FPS=30)
    frame = np.broadcast_to(np.arange(20000.0), (12000, 20000))  # 240 M pixels, a view
    beholder = Beholder(run_dir, strict=True)
    with caplog.at_level(logging.WARNING, logger="beholder"):
        assert beholder.update(frame=frame)
    stored = read_frame_file(run_dir)
    assert (stored.height, stored.width) == (2400, 4000)  # every 5th pixel
    assert stored.pixels[0, 0] == 0 and stored.pixels[0, -1] == 255
    assert "showing one pixel in 5 along each side" in caplog.text


def _mount_tmpfs(path: str, size: str) -> None:
    os.makedirs(path, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs of our own (needs mount rights: root on this machine kind)."""
    path = str(tmp_path / "tmpfs")
    _mount_tmpfs(path, "2m")
    yield path
    subprocess.run(["umount", "-l", path], check=False)


def test_a_read_only_logdir_warns_once_and_training_goes_on(tmpfs, caplog):
    run = os.path.join(tmpfs, "run")
    set_config(run, values="arrays", FPS=30)
    Beholder(run, strict=True).update(arrays=[np.arange(3.0)])
    subprocess.run(["mount", "-o", "remount,ro", tmpfs], check=True)
    beholder = Beholder(run)  # not strict
    with caplog.at_level(logging.WARNING, logger="beholder"):
        handed = []
        for _ in range(3):
            due(beholder)
            handed.append(beholder.update(arrays=[np.arange(5.0)]))
    # the first frame is handed to the worker, whose write fails; then Beholder backs off
    assert handed == [True, False, False] and beholder.frames_written == 0
    assert beholder.failures == 0 and beholder.write_errors == 1
    assert caplog.text.count("cannot write frames") == 1 and "Read-only" in caplog.text
    assert read_section_info(run)[0]["shape"] == [3]  # the old frame is still there
    subprocess.run(["mount", "-o", "remount,rw", tmpfs], check=True)


def test_a_full_disk_keeps_the_previous_frame_readable(tmpfs, caplog, monkeypatch):
    import beholder_plugin.trainer.run_store as run_store

    monkeypatch.setattr(run_store, "WRITE_RETRY_SECONDS", 0.0)
    run = os.path.join(tmpfs, "run")
    set_config(run, values="frames", FPS=30)
    beholder = Beholder(run)
    assert beholder.update(frame=np.zeros((10, 10)))
    with open(os.path.join(tmpfs, "filler"), "wb") as f:  # fill the disk
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    due(beholder)
    with caplog.at_level(logging.WARNING, logger="beholder"):
        beholder.update(frame=np.ones((900, 900)))
    # The ring gave up its one kept frame (issue 21: down to none) and the write still failed; frame.bin
    # keeps its picture, its header rewritten in place (a new frame id) to say since when.
    assert beholder.write_errors == 1 and beholder.frames_written == 2
    assert "No space left" in caplog.text
    stalled = read_frame_file(run)
    assert stalled.height == 10 and stalled.header["frame_id"] == 2
    assert stalled.header["last_error"].startswith("disk full: frames not written since ")
    assert beholder.last_error == stalled.header["last_error"]
    assert sorted(os.listdir(plugin_dir(run))) == ["config.json", FRAME_FILE, "history"]
    assert os.listdir(os.path.join(plugin_dir(run), "history")) == []  # no partial file either
    os.unlink(os.path.join(tmpfs, "filler"))
    due(beholder)
    assert beholder.update(frame=np.ones((900, 900)))  # space again: frames resume
    assert read_frame_file(run).height == 900
    assert beholder.last_error.startswith("disk full from ") and "1 frame not written" in beholder.last_error
    assert read_frame_file(run).header["last_error"] == beholder.last_error  # (the frame says so too)


def test_a_full_disk_shrinks_the_history_ring_says_so_and_recovers(tmpfs, monkeypatch):
    """Issue 21 item 4: the ring (256 MB configured) on a 2 MB disk gives up old frames; frame.bin moves on.

    Then the disk is filled by someone else: the ring goes down to none, and frame.bin keeps its
    picture with "disk full: frames not written since ..." in its header; space back, frames resume.
    """
    import beholder_plugin.trainer.run_store as run_store

    monkeypatch.setattr(run_store, "WRITE_RETRY_SECONDS", 0.0)
    run = os.path.join(tmpfs, "run")
    set_config(run, values="frames", FPS=30, history_mb=256)
    beholder = Beholder(run, background=False)
    picture = np.zeros((300, 300, 3), np.uint8)  # 270 KB a frame: the disk holds about 7
    for step in range(40):
        due(beholder)
        picture[...] = step
        assert beholder.update(frame=picture)
        assert read_frame_file(run).header["step"] == beholder.step  # frame.bin never stops moving
    kept = os.listdir(os.path.join(plugin_dir(run), "history"))
    assert 1 <= len(kept) < 8 and beholder.write_errors == 0 and beholder.last_error is None
    moved, larger = 0, np.full((420, 420, 3), 7, np.uint8)
    with open(os.path.join(tmpfs, "filler"), "wb", buffering=0) as f:  # someone else fills the disk, again
        for _ in range(20):
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
            due(beholder)
            last = beholder.step
            beholder.update(frame=larger)  # larger than the spare files the ring rewrites in place
            if beholder.write_errors:
                break
            moved += 1  # written: the ring gave up old frames to make room
    stalled = read_frame_file(run)
    assert moved >= 1 and beholder.write_errors == 1 and stalled.header["step"] == last
    assert stalled.header["last_error"].startswith("disk full: frames not written since ")
    assert os.listdir(os.path.join(plugin_dir(run), "history")) == []  # down to none first
    os.unlink(os.path.join(tmpfs, "filler"))
    due(beholder)
    assert beholder.update(frame=picture + 2)  # by itself: no restart, no setting
    assert read_frame_file(run).header["step"] == beholder.step == last + 2
    assert beholder.last_error.startswith("disk full from ") and "1 frame not written" in beholder.last_error
    due(beholder)
    assert beholder.update(frame=picture + 3)
    assert read_frame_file(run).header["last_error"] == beholder.last_error  # the next header says so


def test_enospc_mid_write_leaves_no_partial_file(run_dir):
    # /dev/full fails every write with ENOSPC; put it where the temp file goes
    set_config(run_dir, values="arrays", FPS=30, history_mb=0)  # frame.bin written directly
    beholder = Beholder(run_dir, background=False)  # the temporary name carries the writing thread
    assert beholder.update(arrays=[np.arange(4.0)])
    temp = os.path.join(plugin_dir(run_dir), f".{FRAME_FILE}.{os.getpid()}-{threading.get_ident()}.tmp")
    os.symlink("/dev/full", temp)
    due(beholder)
    beholder.update(arrays=[np.arange(8.0)])
    # not written; frame.bin keeps its frame, its header marked in place (frame id 2) with the reason
    assert beholder.write_errors == 1 and beholder.frames_written == 2
    kept = read_frame_file(run_dir)
    assert kept.header["frame_id"] == 2 and kept.sections[0]["shape"] == [4]
    assert kept.header["last_error"].startswith("disk full: frames not written since")
    assert not os.path.lexists(temp)


SOAK = textwrap.dedent(
    """
    import gc, os, resource, sys, threading, time
    import numpy as np
    from beholder_plugin import Beholder, write_config, DEFAULT_CONFIG

    class Clock:  # every update() is a frame: the throttle sees a second pass per call
        now = 0.0
        @classmethod
        def monotonic(cls):
            cls.now += 1.0
            return cls.now

    run, calls = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(0)
    base = [rng.normal(size=s).astype(np.float32) for s in
            [(3, 3, 4, 8), (8,), (32, 10), (10,), (2, 5, 5, 3), (4, 4, 4)]]
    settings = [dict(mode="current"), dict(mode="variance", window_size=3), dict(scaling="network"),
                dict(show_all=True), dict(colormap="viridis"), dict(values="frames"),
                dict(filter="/a[0-2]/"), dict(filter="/^nothing$/"), dict(section_size="proportional"),
                dict(history_mb=1), dict(history_mb=0, history_seconds=0)]
    history = os.path.join(run, "plugins", "beholder", "history")
    on_disk = lambda: sum(e.stat().st_size for e in os.scandir(history)  # the ring's (keyframes: their own)
                          if e.name.startswith("f-") and e.name not in b.store.history.pins)
    over_budget = 0
    b = Beholder(run, strict=True, clock=Clock.monotonic)
    fds = lambda: len(os.listdir("/proc/self/fd"))

    def children():  # processes whose parent is this one (ffmpeg for recordings, if any were left)
        me, found = str(os.getpid()), 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    found += f.read().rsplit(")", 1)[1].split()[1] == me
            except OSError:
                pass
        return found

    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    marks = {}
    handed = 0
    for extra in settings:  # every code path once before counting (imports are not leaks)
        write_config(run, {**DEFAULT_CONFIG, "values": "arrays", "FPS": 30, **extra})
        for _ in range(3):
            b.update(arrays={f"a{j}": a for j, a in enumerate(base)}, frame=lambda: rng.normal(size=(20, 30)))
            b.flush()
    warm_frames, warm_skipped = b.frames_written, b.skipped
    for i in range(1, calls + 1):
        if i % 5000 == 1:
            cfg = {**DEFAULT_CONFIG, "values": "arrays", "FPS": 30, **settings[(i // 5000) % len(settings)]}
            write_config(run, cfg)
        k = i % 7  # shapes change from call to call
        arrays = {f"a{j}": a[..., : max(1, a.shape[-1] - k)] for j, a in enumerate(base)}
        layout = {"a0": ("auto", "oihw", "hwio")[i % 3], "a4": ("auto", "nchw")[i % 2]}
        handed += b.update(arrays=arrays, frame=lambda: rng.normal(size=(20 + k, 30)), layout=layout)
        if i % 50 == 0:
            b.flush()  # the next call finds the worker idle: at least calls / 50 frames, however fast it is
        if i % 5000 == 4999 and cfg.get("history_mb") == 1:
            b.flush()
            over_budget += on_disk() > 1 << 20  # the ring never holds more than its budget
        if i in (1000, calls):
            b.flush()  # the worker may be mid-write, holding a file open
            gc.collect()
            marks[i] = (rss(), fds(), threading.active_count(), children())
    b.close()
    leftovers = [n for d, _, files in os.walk(run) for n in files if n.endswith(".tmp")]
    print(marks[1000][0], marks[calls][0], marks[1000][1], marks[calls][1], marks[1000][2], marks[calls][2],
          b.frames_written - warm_frames, handed, b.skipped - warm_skipped, b.failures, over_budget,
          len(leftovers),
          marks[1000][3], marks[calls][3], children())
    """
)


@pytest.mark.slow
def test_soak_100k_updates_with_changing_shapes_and_settings(run_dir):
    out = subprocess.run(
        [sys.executable, "-c", SOAK, run_dir, "100000"], capture_output=True, text=True, timeout=1200
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (rss_1k, rss_100k, fd_1k, fd_100k, threads_1k, threads_100k, frames, handed, skipped, failures,
     over_budget, leftovers, children_1k, children_100k, children_end) = map(int, out.stdout.split())
    # every call was due: each one either handed a frame to the worker or was skipped while it was busy
    assert handed + skipped == 100000 and frames == handed and failures == 0
    assert handed >= 100000 // 50
    assert rss_100k <= rss_1k * 1.10, (rss_1k, rss_100k)
    assert fd_100k == fd_1k and threads_100k == threads_1k
    assert over_budget == 0 and leftovers == 0  # the history ring kept its budget; no temporary files
    assert children_1k == children_100k == children_end == 0  # no child process left behind


@pytest.mark.parametrize("kind", ["fifo", "sparse"])
def test_a_fifo_or_a_huge_sparse_config_never_blocks_or_swamps_update(run_dir, kind, caplog):
    """A FIFO named config.json once hung update() forever; a 4 GB sparse one took 32 s and 8 GB."""
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    beholder = Beholder(run_dir)
    assert beholder.update(arrays=[np.arange(3.0)])
    os.unlink(config_path(run_dir))
    if kind == "fifo":
        os.mkfifo(config_path(run_dir))
    else:
        with open(config_path(run_dir), "wb") as f:
            f.truncate(4 << 30)
    result = {}
    caller = threading.Thread(target=lambda: result.update(ok=_updates(beholder)), daemon=True)
    with caplog.at_level(logging.WARNING, logger="beholder"):
        caller.start()
        caller.join(20)
    assert not caller.is_alive(), "update() blocked on config.json"
    assert result["ok"] == 3 and beholder.failures == 0  # the settings in force are kept
    assert caplog.text.count("keeping the last good settings") == 1  # once per change of the file
    reason = "not a regular file" if kind == "fifo" else "more than the"
    assert reason in caplog.text


def _updates(beholder) -> int:
    handed = 0
    for _ in range(3):
        due(beholder)
        handed += beholder.update(arrays=[np.arange(4.0)])
    return handed


@pytest.mark.parametrize("name", ["part", "anomalies"])
def test_a_fifo_in_the_timeline_never_blocks_frames_or_close(run_dir, name, caplog):
    """A FIFO put where the current timeline part or anomalies.jsonl belongs once blocked the worker in
    open() for good: every later frame skipped, no warning, and close() never returned."""
    from beholder_plugin.protocol import timeline as tl

    set_config(run_dir, values="arrays", mode="current", FPS=30)
    beholder = Beholder(run_dir, background=False)
    assert beholder.update(arrays={"w": np.arange(4.0)})
    directory = tl.timeline_dir(run_dir)
    path = os.path.join(directory, tl.part_name(0) if name == "part" else tl.ANOMALIES_FILE)
    if os.path.exists(path):
        os.unlink(path)
    os.mkfifo(path)
    result = {}

    def train():
        """Three more frames, the last with a NaN (an anomaly to write), then close()."""
        for value in (1.0, 2.0, np.nan):
            due(beholder)
            result["handed"] = result.get("handed", 0) + beholder.update(arrays={"w": np.full(4, value)})
        beholder.close()
        result["closed"] = True

    caller = threading.Thread(target=train, daemon=True)
    with caplog.at_level(logging.WARNING, logger="beholder"):
        caller.start()
        caller.join(20)
    assert not caller.is_alive(), f"a FIFO named {os.path.basename(path)} blocked training"
    assert result == {"handed": 3, "closed": True} and beholder.failures == 0
    assert "not a regular file" in caplog.text and os.path.basename(path) in caplog.text


def test_a_long_bad_layout_is_quoted_short_in_every_section(run_dir):
    """A 100,000-character layout= was quoted whole in each section's record: 50 small arrays made a
    5 MB frame.bin at every frame."""
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    beholder = Beholder(run_dir)
    assert beholder.update(arrays={f"a{i}": np.ones((4, 4)) for i in range(50)}, layout="x" * 100_000)
    records = read_section_info(run_dir)
    assert len(records) == 50 and all("unknown layout 'xxx" in r["missing"] for r in records)
    assert max(len(r["missing"]) for r in records) < 500
    assert os.path.getsize(frame_path(run_dir)) < 100_000
