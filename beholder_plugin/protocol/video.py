"""Encoding frames to H.264 mp4 with imageio-ffmpeg's bundled ffmpeg: one writer for recordings and exports.

The trainer's recordings (trainer/recording.py) and the server's exports of
kept frames (server/videos.py) are opened here with the same parameters:
libx264 at CRF 18, yuv420p (so both sides are padded to even sizes with
pad_even), a key frame every second, and a `comment` metadata line saying
at what rate the frames play. They differ only where a file written while
training differs from one made of finished frames (see open_mp4_writer).
"""

from __future__ import annotations

import time
from collections.abc import Generator

import numpy as np

VIDEO_FPS = 15  # the default rate of recordings and exports
MAX_VIDEO_FPS = 60

# A file being written while the trainer runs: cheap to encode, and fragmented, so that a file
# cut short by a killed trainer still plays up to its last fragment.
_LIVE_PARAMS = ["-preset", "ultrafast", "-movflags", "frag_keyframe+empty_moov+default_base_moof"]
# A file made at once from frames on disk: smaller, with its index at the front (+faststart), so
# that a browser starts playing a download before it has all of it.
_FINISHED_PARAMS = ["-preset", "veryfast", "-movflags", "+faststart"]


def ffmpeg_exe() -> str:
    """The path of the ffmpeg binary shipped with imageio-ffmpeg (RuntimeError when there is none)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def open_mp4_writer(path: str, width: int, height: int, fps: int, comment: str, *,
                    live: bool) -> Generator[None, bytes | None, None]:
    """A started ffmpeg writer of an H.264 mp4 at path: send() each frame's RGB bytes, close() to finish.

    width and height must be even (pad_even). ``live`` is for a file
    written while training (a recording): the fastest preset, since the
    encoder shares the trainer's CPU, and a fragmented file. Otherwise
    (an export of kept frames) a slower preset that makes smaller files,
    and the index at the front. Raises when ffmpeg cannot run.
    """
    import imageio_ffmpeg

    ffmpeg_exe()  # raises when there is no usable ffmpeg
    params = [*(_LIVE_PARAMS if live else _FINISHED_PARAMS), "-crf", "18", "-g", str(fps),
              "-metadata", f"comment={comment}"]
    writer = imageio_ffmpeg.write_frames(
        path, (width, height), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
        quality=None, macro_block_size=2, ffmpeg_log_level="error", output_params=params,
    )
    writer.send(None)  # starts ffmpeg; raises if it cannot
    return writer


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
