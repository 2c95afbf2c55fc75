"""Recording: mp4 through imageio-ffmpeg, a new file per frame size, SIGKILL survival, PNG fallback."""

from __future__ import annotations

import glob
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import imageio_ffmpeg
import numpy as np
import pytest
from support import due, set_config

from beholder_plugin import Beholder
from beholder_plugin.protocol.runfiles import plugin_dir
from beholder_plugin.trainer import recording as recording_module

pytestmark = pytest.mark.usefixtures("flushed_updates")


def decode(path: str) -> tuple[tuple[int, int], list[np.ndarray]]:
    """(width, height) and the RGB frames of a video file."""
    reader = imageio_ffmpeg.read_frames(path)
    meta = reader.__next__()
    size = tuple(meta["size"])
    frames = [np.frombuffer(f, np.uint8).reshape(size[1], size[0], 3) for f in reader]
    return size, frames


def test_recording_writes_an_mp4_with_every_frame(run_dir):
    set_config(run_dir, values="arrays", mode="current", FPS=30, is_recording=True, colormap="grayscale")
    with Beholder(run_dir, strict=True) as beholder:
        for step in range(12):
            assert beholder.update(arrays=[np.array([0.0, 1.0]) * (step + 1)])
            due(beholder)
    videos = glob.glob(os.path.join(plugin_dir(run_dir), "video-*.mp4"))
    assert len(videos) == 1
    size, frames = decode(videos[0])
    # each frame is held for the video frames until the next one was taken: 12 or more in all
    assert size == (768, 128) and len(frames) >= 12
    # the left half is black and the right half white, give or take compression
    assert frames[5][:, :300].mean() < 20 and frames[5][:, 468:].mean() > 235


def test_a_new_file_starts_when_the_frame_size_changes_and_odd_sizes_are_padded(run_dir):
    set_config(run_dir, values="frames", FPS=30, is_recording=True)
    beholder = Beholder(run_dir, strict=True)
    for shape in [(31, 45)] * 3 + [(20, 20)] * 2:
        beholder.update(frame=np.random.default_rng(0).normal(size=shape))
        due(beholder)
        time.sleep(0.002)  # distinct millisecond timestamps in the file names
    beholder.close()
    videos = sorted(glob.glob(os.path.join(plugin_dir(run_dir), "video-*.mp4")))
    assert len(videos) == 2
    sizes_counts = sorted((decode(v)[0], len(decode(v)[1])) for v in videos)
    assert [size for size, _ in sizes_counts] == [(20, 20), (46, 32)]
    # 2 and 3 frames, each held until the next one was taken: at least that many video frames
    assert sizes_counts[0][1] >= 2 and sizes_counts[1][1] >= 3


def four_frames_recorded(run_dir) -> Beholder:
    """A Beholder that recorded four frames; recording is then switched off in config.json."""
    set_config(run_dir, values="arrays", FPS=30, is_recording=True)
    beholder = Beholder(run_dir, strict=True)
    for _ in range(4):
        beholder.update(arrays=[np.arange(4.0)])
        due(beholder)
    set_config(run_dir, values="arrays", FPS=30, is_recording=False)
    return beholder


def test_switching_recording_off_finishes_the_file(run_dir):
    beholder = four_frames_recorded(run_dir)
    beholder.update(arrays=[np.arange(4.0)])  # notices the change and closes the file (in the background)
    deadline = time.monotonic() + 60
    while beholder.store.recorder.finishing and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not beholder.store.recorder.finishing  # finished while the Beholder is still open
    (video,) = glob.glob(os.path.join(plugin_dir(run_dir), "video-*.mp4"))
    assert len(decode(video)[1]) >= 4  # 4 frames, each held until the next was taken
    beholder.close()


def test_switching_recording_off_never_waits_for_the_encoder_on_the_training_thread(run_dir, monkeypatch):
    """Recording switched off while the encoder still has its queue to work through (seconds of big
    frames, each held for many video frames): update() returns at once and the file is finished in the
    background; close() waits for it. Before, update() waited for the whole queue (9 s for 8-Mpx
    frames at FPS 30 on a slow step)."""
    import threading

    release, real_close = threading.Event(), recording_module._Mp4Sink.close

    def slow_close(sink):
        release.wait(60)  # an encoder with a long queue
        real_close(sink)

    monkeypatch.setattr(recording_module._Mp4Sink, "close", slow_close)
    beholder = four_frames_recorded(run_dir)
    returned = threading.Event()
    training = threading.Thread(target=lambda: (beholder.update(arrays=[np.arange(4.0)]), returned.set()))
    training.start()
    assert returned.wait(30)  # (it waited for release before: 60 s)
    assert not release.is_set() and beholder.store.recorder.finishing
    # recording on again at once: the new file opens without waiting for the old one either
    set_config(run_dir, values="arrays", FPS=30, is_recording=True)
    due(beholder)
    returned.clear()
    training = threading.Thread(target=lambda: (beholder.update(arrays=[np.arange(4.0)]), returned.set()))
    training.start()
    assert returned.wait(30) and not release.is_set()
    release.set()
    beholder.close()  # waits for both files
    assert not beholder.store.recorder.finishing
    videos = sorted(glob.glob(os.path.join(plugin_dir(run_dir), "video-*.mp4")))
    assert len(videos) == 2 and len(decode(videos[0])[1]) >= 4 and len(decode(videos[1])[1]) >= 1


KILLED = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from beholder_plugin import Beholder, write_config, DEFAULT_CONFIG
    run = sys.argv[1]
    write_config(run, {**DEFAULT_CONFIG, "values": "arrays", "mode": "current", "FPS": 30,
                       "is_recording": True})
    b = Beholder(run, strict=True)
    n = 0
    while True:
        n += b.update(arrays=[np.sin(np.arange(64.0) + n)])
        time.sleep(0.01)
        if n == 75:  # five seconds of video at 15 fps
            print("recorded", flush=True)
    """
)


def test_a_sigkilled_recorder_leaves_a_file_that_still_plays(run_dir):
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, run_dir],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the kill takes ffmpeg down too
    )
    try:
        assert proc.stdout.readline().strip() == "recorded"
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    (video,) = glob.glob(os.path.join(plugin_dir(run_dir), "video-*.mp4"))
    size, frames = decode(video)
    assert size == (768, 128)
    assert len(frames) >= 30  # complete fragments up to about the kill are playable


def test_without_ffmpeg_frames_become_numbered_pngs_and_that_is_said_once(run_dir, monkeypatch, caplog):
    def no_ffmpeg():
        raise RuntimeError("no ffmpeg here")

    monkeypatch.setattr(recording_module, "_ffmpeg_exe", no_ffmpeg)
    set_config(run_dir, values="frames", FPS=30, is_recording=True)
    beholder = Beholder(run_dir, strict=True)
    with caplog.at_level(logging.WARNING, logger="beholder"):
        for shape in [(10, 12)] * 3 + [(8, 8)]:
            beholder.update(frame=np.arange(np.prod(shape), dtype=float).reshape(shape))
            due(beholder)
    beholder.close()
    folders = sorted(glob.glob(os.path.join(plugin_dir(run_dir), "video-frames-*")))
    assert [len(os.listdir(f)) for f in folders] == [3, 1]
    from PIL import Image

    first = np.asarray(Image.open(os.path.join(folders[0], "000000.png")))
    assert first.shape == (10, 12, 3) and first[-1, -1, 0] == 255
    warnings = [r for r in caplog.records if "ffmpeg" in r.getMessage()]
    assert len(warnings) == 1
    assert glob.glob(os.path.join(plugin_dir(run_dir), "*.mp4")) == []


@pytest.mark.parametrize("shape", [(3, 5), (4, 6)])
def test_pad_even(shape):
    rgb = np.full((*shape, 3), 200, np.uint8)
    padded = recording_module.pad_even(rgb)
    assert padded.shape[0] % 2 == 0 and padded.shape[1] % 2 == 0
    assert (padded[: shape[0], : shape[1]] == 200).all() and padded.sum() == rgb.sum()


EXITS = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from beholder_plugin import Beholder, write_config, DEFAULT_CONFIG
    run = sys.argv[1]
    write_config(run, {**DEFAULT_CONFIG, "values": "arrays", "FPS": 30, "is_recording": True})
    b = Beholder(run, strict=True)
    n = 0
    while n < 9:
        n += b.update(arrays=[np.arange(8.0) * n])
        time.sleep(0.01)
    # no close(): the interpreter's exit must finish the file
    """
)


def test_a_recording_is_finished_at_interpreter_exit(run_dir):
    subprocess.run([sys.executable, "-c", EXITS, run_dir], check=True, timeout=120)
    (video,) = glob.glob(os.path.join(plugin_dir(run_dir), "video-*.mp4"))
    size, frames = decode(video)
    assert size == (768, 128) and len(frames) >= 9  # 9 frames, held for their time


def _metadata_comment(path: str) -> str:
    """The comment in an mp4's metadata, as ffmpeg reports it."""
    out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", path],
                         capture_output=True, text=True)
    for line in out.stderr.splitlines():
        if line.strip().startswith("comment"):
            return line.split(":", 1)[1].strip()
    return ""


def test_a_recording_plays_at_the_rate_its_frames_were_taken(tmp_path):
    """5 frames/s taken under FPS 15: each frame is held for 3 video frames, and the file says its rate."""
    recorder = recording_module.Recorder(str(tmp_path))
    shades = [20 * i for i in range(8)]
    for i, shade in enumerate(shades):
        recorder.append(np.full((16, 16, 3), shade, np.uint8), taken=1000.0 + 0.2 * i, fps=15)
    recorder.append(np.full((16, 16, 3), 250, np.uint8), taken=1000.0 + 0.2 * 7 + 600, fps=15)  # a pause
    recorder.close()
    (video,) = recorder.files
    reader = imageio_ffmpeg.read_frames(video)
    meta = reader.__next__()
    assert meta["fps"] == 15
    levels = [int(np.frombuffer(f, np.uint8).mean().round()) for f in reader]
    runs = []  # (level, how many video frames in a row)
    for level in levels:
        if runs and abs(runs[-1][0] - level) <= 3:
            runs[-1][1] += 1
        else:
            runs.append([level, 1])
    assert [n for _, n in runs[:7]] == [3] * 7  # 0.2 s at 15 frames/s, whatever the encoder
    assert runs[7][1] == recording_module.MAX_HOLD_SECONDS * 15  # a 10-minute pause is held 5 s, no more
    assert runs[-1][1] == 1 and len(runs) == 9
    assert _metadata_comment(video).startswith("Beholder: 15 frames/s")


def test_a_recording_takes_the_dashboards_fps_as_its_rate(run_dir):
    set_config(run_dir, values="frames", FPS=4, is_recording=True)
    with Beholder(run_dir, strict=True) as beholder:
        for step in range(3):
            assert beholder.update(frame=np.full((8, 8), float(step)))
            due(beholder)
    (video,) = glob.glob(os.path.join(plugin_dir(run_dir), "video-*.mp4"))
    assert imageio_ffmpeg.read_frames(video).__next__()["fps"] == 4
    assert _metadata_comment(video).startswith("Beholder: 4 frames/s")
