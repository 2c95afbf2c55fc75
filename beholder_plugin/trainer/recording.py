"""Recording frames to a fragmented MP4 (protocol/video.py's writer), or to PNGs.

A recording runs in a background thread with a bounded queue so that a slow
encoder drops frames (and says so) instead of stalling the training loop.
The MP4 is fragmented: a file cut short by a killed trainer still plays.

A recording plays at the rate its frames were taken. The video's frame rate
is the dashboard's FPS when the file was opened (at most ``MAX_VIDEO_FPS``);
each frame stays on screen until the time the next one was made, held for
whole video frames (a trainer that makes 5 frames/s under FPS 15 gives each
one 3 video frames), and never longer than ``MAX_HOLD_SECONDS`` (a pause in
training is not minutes of a still picture). The rate is in the file's
metadata (``comment``).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any, Callable

import numpy as np

from beholder_plugin.protocol.video import (
    MAX_VIDEO_FPS,
    VIDEO_FPS,
    ffmpeg_exe,
    open_mp4_writer,
    pad_even,
    timestamp,
)

logger = logging.getLogger("beholder")

MAX_HOLD_SECONDS = 5.0
_QUEUE_BYTES = 256 << 20


def rate_comment(fps: float) -> str:
    """The metadata comment saying at what rate a video's frames were taken and play."""
    return (f"Beholder: {fps:g} frames/s; each training frame is held until the next was taken, "
            "so the video plays at the rate they were taken")


def video_rate(fps: Any) -> int:
    """The frame rate of a recording for the dashboard's FPS setting: a whole number from 1 to 60."""
    try:
        return max(1, min(MAX_VIDEO_FPS, round(float(fps))))
    except (TypeError, ValueError, OverflowError):
        return VIDEO_FPS


def _ffmpeg_exe() -> str:
    """The ffmpeg binary a recording would use (raises when there is none; tests replace it)."""
    return ffmpeg_exe()


class _Mp4Sink:
    """One MP4 file being written by an ffmpeg subprocess, fed from a worker thread."""

    def __init__(self, path: str, width: int, height: int, fps: int = VIDEO_FPS) -> None:
        self.path = path
        _ffmpeg_exe()  # raises when there is no usable ffmpeg
        self._gen = open_mp4_writer(path, width, height, fps, rate_comment(fps), live=True)
        frame_bytes = width * height * 3
        self._queue: queue.Queue = queue.Queue(maxsize=max(2, min(64, _QUEUE_BYTES // frame_bytes)))
        self.written = 0
        self.dropped = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="beholder-recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self.error is not None:
                continue
            data, repeat = item
            try:
                for _ in range(repeat):
                    self._gen.send(data)
                self.written += 1
            except BaseException as exc:  # ffmpeg died: keep draining, report on close
                self.error = exc

    def write(self, rgb: np.ndarray, repeat: int = 1) -> None:
        """Queue one frame, shown for `repeat` video frames; dropped (and counted) if the encoder lags."""
        try:
            self._queue.put_nowait((np.ascontiguousarray(rgb).tobytes(), repeat))
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        """Finish the file: drain the queue and let ffmpeg write its last fragment."""
        self._queue.put(None)
        self._thread.join()
        try:
            self._gen.close()
        except Exception as exc:
            self.error = self.error or exc
        if self.error is not None:
            logger.warning("Beholder: recording %s ended with an error: %s", self.path, self.error)
        if self.dropped:
            logger.warning(
                "Beholder: the encoder could not keep up; %d frames were not recorded in %s",
                self.dropped,
                self.path,
            )


class _PngSink:
    """Numbered PNG files in a directory: the fallback when ffmpeg cannot run."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.path = directory
        self.written = 0

    def write(self, rgb: np.ndarray, repeat: int = 1) -> None:
        """Save one frame as the next numbered PNG (once: PNGs carry no time)."""
        from PIL import Image

        name = os.path.join(self.path, f"{self.written:06d}.png")
        Image.fromarray(rgb).save(name, compress_level=1)
        self.written += 1

    def close(self) -> None:
        """Nothing to finish: every PNG is complete when written."""


class Recorder:
    """Appends frames to the current recording, starting a new file when the frame size changes.

    ``on_finished(path)``, if given, is called with each file (or PNG folder)
    once it is complete: how a remote run uploads recordings made locally.
    """

    def __init__(self, directory: str, on_finished: Callable[[str], None] | None = None) -> None:
        self.directory = directory
        self.on_finished = on_finished
        self._sink: Any = None
        self._shape: tuple | None = None
        self._ffmpeg_failed = False
        self.files: list[str] = []
        self._fps = VIDEO_FPS  # the open file's frame rate
        self._held: tuple[np.ndarray, float] | None = None  # the last frame and its time, not yet written
        self._slot = 0  # video frames written to the open file
        self._elapsed = 0.0  # seconds from its first frame to the held one (each pause capped)
        self._finishing: list[threading.Thread] = []  # files being finished in the background

    @property
    def active(self) -> bool:
        """True while a file is open."""
        return self._sink is not None

    @property
    def finishing(self) -> bool:
        """True while a file closed with ``wait=False`` is still being written out."""
        return any(thread.is_alive() for thread in self._finishing)

    def append(self, rgb: np.ndarray, taken: float | None = None, fps: Any = VIDEO_FPS) -> None:
        """Record one H x W x 3 uint8 frame, taken at time `taken` (seconds; now if None).

        The frame before it is written now, held for the video frames that
        fill the time between the two (at least one); this one waits for the
        next frame or for close(). `fps` (the dashboard's) sets the rate of a
        new file.
        """
        rgb = pad_even(rgb)
        taken = time.time() if taken is None else float(taken)
        if rgb.shape != self._shape:
            self.close(wait=False)  # (a file ending, or still being finished: never waited for here)
            self._fps = video_rate(fps)
            self._sink = self._open(rgb.shape[1], rgb.shape[0])
            self._shape = rgb.shape
            self._slot, self._elapsed = 0, 0.0
            self.files.append(self._sink.path)
        elif self._held is not None:
            held, since = self._held
            # the time since the file's first frame (pauses capped), in whole video frames: no drift
            self._elapsed += min(max(taken - since, 0.0), MAX_HOLD_SECONDS)
            repeat = max(1, round(self._elapsed * self._fps) - self._slot)
            self._sink.write(held, repeat)
            self._slot += repeat
        self._held = (rgb, taken)

    def _open(self, width: int, height: int) -> Any:
        stamp = timestamp()
        os.makedirs(self.directory, exist_ok=True)  # a remote run's local staging folder is made lazily
        if not self._ffmpeg_failed:
            path = os.path.join(self.directory, f"video-{stamp}.mp4")
            try:
                return _Mp4Sink(path, width, height, self._fps)
            except Exception as exc:
                self._ffmpeg_failed = True
                logger.warning("Beholder: ffmpeg could not start (%s); recording numbered PNGs instead", exc)
                try:
                    os.unlink(path)
                except OSError:
                    pass
        return _PngSink(os.path.join(self.directory, f"video-frames-{stamp}"))

    def close(self, wait: bool = True) -> None:
        """Finish the current file, if any; ``wait=False`` finishes it on a thread of its own (recording
        turned off while training: the encoder may have seconds of queued frames), and a later close()
        waits for it."""
        sink, self._sink, self._shape = self._sink, None, None
        held, self._held = self._held, None
        if sink is not None:
            if held is not None:  # the last frame: one video frame (its time on screen is unknown)
                sink.write(held[0])
            if wait:
                self._finish(sink)
            else:
                thread = threading.Thread(target=self._finish, args=(sink,), name="beholder-recording-end",
                                          daemon=True)
                self._finishing = [t for t in self._finishing if t.is_alive()] + [thread]
                thread.start()
        if wait:
            finishing, self._finishing = self._finishing, []
            for thread in finishing:
                thread.join()

    def _finish(self, sink: Any) -> None:
        """Let a sink write out its queue and end its file; hand the file over (on_finished)."""
        sink.close()
        if self.on_finished is not None:
            self.on_finished(sink.path)
