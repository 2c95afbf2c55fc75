"""protocol/video.py: the one mp4 writer of recordings (live) and exports (finished)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from beholder_plugin.protocol.video import ffmpeg_exe, open_mp4_writer, pad_even, timestamp


def _write(path, live: bool, frames: int = 20, fps: int = 5) -> bytes:
    writer = open_mp4_writer(str(path), 16, 8, fps, "made by a test", live=live)
    ramp = np.arange(16, dtype=np.uint8)[None, :, None] * 8
    for i in range(frames):  # a ramp that moves a little each frame: no scene cut
        writer.send(np.broadcast_to(ramp + i, (8, 16, 3)).astype(np.uint8).tobytes())
    writer.close()
    return path.read_bytes()


def _probe(path) -> str:
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    return out.stderr


@pytest.mark.parametrize("live", [True, False])
def test_both_kinds_are_h264_yuv420p_at_the_rate_with_the_comment(tmp_path, live):
    path = tmp_path / "out.mp4"
    _write(path, live)
    info = _probe(path)
    assert "h264" in info and "yuv420p" in info and "16x8" in info
    assert "5 fps" in info
    assert "made by a test" in info


def test_a_live_file_is_fragmented_and_a_finished_one_has_its_index_first(tmp_path):
    live = _write(tmp_path / "live.mp4", live=True)
    finished = _write(tmp_path / "finished.mp4", live=False)
    assert b"moof" in live  # fragments: a file cut short by a killed trainer still plays
    assert b"moof" not in finished
    assert finished.index(b"moov") < finished.index(b"mdat")  # +faststart


def test_a_key_frame_every_second(tmp_path):
    path = tmp_path / "out.mp4"
    _write(path, live=False, frames=20, fps=5)
    command = [ffmpeg_exe(), "-hide_banner", "-i", str(path), "-vf", "showinfo", "-f", "null", "-"]
    out = subprocess.run(command, capture_output=True, text=True)
    key = [int(line.split(" n:")[1].split()[0]) for line in out.stderr.splitlines() if "iskey:1" in line]
    assert key[0] == 0 and len(key) >= 4  # 20 frames at 5 fps: a key frame at least every second
    assert all(b - a <= 5 for a, b in zip(key, key[1:] + [20]))


def test_pad_even_and_timestamp():
    odd = np.full((3, 5, 3), 7, np.uint8)
    padded = pad_even(odd)
    assert padded.shape == (4, 6, 3) and (padded[:3, :5] == 7).all() and padded[3].sum() == 0
    even = np.zeros((4, 6, 3), np.uint8)
    assert pad_even(even) is even
    stamp = timestamp()
    assert len(stamp) == len("20261121-214501-123") and stamp[8] == "-" and stamp[15] == "-"
