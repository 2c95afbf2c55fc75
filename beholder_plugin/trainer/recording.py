"""Recording frames to a fragmented MP4 through imageio-ffmpeg's bundled ffmpeg, or to PNGs.

A recording runs in a background thread with a bounded queue so that a slow
encoder drops frames (and says so) instead of stalling the training loop.
The MP4 is fragmented: a file cut short by a killed trainer still plays.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any, Callable

import numpy as np

logger = logging.getLogger("beholder")

VIDEO_FPS = 15
_QUEUE_BYTES = 256 << 20
_FFMPEG_OUTPUT = [
    "-preset", "ultrafast",
    "-crf", "18",
    "-g", str(VIDEO_FPS),
    "-movflags", "frag_keyframe+empty_moov+default_base_moof",
]  # fmt: skip


def timestamp() -> str:
    """A file-name timestamp with milliseconds, e.g. 20261121-214501-123."""
    now = time.time()
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f"-{int(now * 1000) % 1000:03d}"


def pad_even(rgb: np.ndarray) -> np.ndarray:
    """Pad an RGB frame with black to even width and height (yuv420p needs both even)."""
    h, w = rgb.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return rgb
    out = np.zeros((h + h % 2, w + w % 2, 3), dtype=np.uint8)
    out[:h, :w] = rgb
    return out


def _ffmpeg_exe() -> str:
    """The ffmpeg binary shipped with imageio-ffmpeg."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


class _Mp4Sink:
    """One MP4 file being written by an ffmpeg subprocess, fed from a worker thread."""

    def __init__(self, path: str, width: int, height: int) -> None:
        import imageio_ffmpeg

        self.path = path
        _ffmpeg_exe()  # raises when there is no usable ffmpeg
        self._gen = imageio_ffmpeg.write_frames(
            path,
            (width, height),
            fps=VIDEO_FPS,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            quality=None,
            macro_block_size=2,
            ffmpeg_log_level="error",
            output_params=list(_FFMPEG_OUTPUT),
        )
        self._gen.send(None)  # starts ffmpeg; raises if it cannot
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
            try:
                self._gen.send(item)
                self.written += 1
            except BaseException as exc:  # ffmpeg died: keep draining, report on close
                self.error = exc

    def write(self, rgb: np.ndarray) -> None:
        """Queue one frame; dropped (and counted) if the encoder is behind."""
        try:
            self._queue.put_nowait(np.ascontiguousarray(rgb).tobytes())
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

    def write(self, rgb: np.ndarray) -> None:
        """Save one frame as the next numbered PNG."""
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

    @property
    def active(self) -> bool:
        """True while a file is open."""
        return self._sink is not None

    def append(self, rgb: np.ndarray) -> None:
        """Record one H x W x 3 uint8 frame."""
        rgb = pad_even(rgb)
        if rgb.shape != self._shape:
            self.close()
            self._sink = self._open(rgb.shape[1], rgb.shape[0])
            self._shape = rgb.shape
            self.files.append(self._sink.path)
        self._sink.write(rgb)

    def _open(self, width: int, height: int) -> Any:
        stamp = timestamp()
        os.makedirs(self.directory, exist_ok=True)  # a remote run's local staging folder is made lazily
        if not self._ffmpeg_failed:
            path = os.path.join(self.directory, f"video-{stamp}.mp4")
            try:
                return _Mp4Sink(path, width, height)
            except Exception as exc:
                self._ffmpeg_failed = True
                logger.warning("Beholder: ffmpeg could not start (%s); recording numbered PNGs instead", exc)
                try:
                    os.unlink(path)
                except OSError:
                    pass
        return _PngSink(os.path.join(self.directory, f"video-frames-{stamp}"))

    def close(self) -> None:
        """Finish the current file, if any."""
        sink, self._sink, self._shape = self._sink, None, None
        if sink is not None:
            sink.close()
            if self.on_finished is not None:
                self.on_finished(sink.path)
