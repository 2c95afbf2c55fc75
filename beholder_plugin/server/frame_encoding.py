"""Frames as the server sends them: PNG encoding, ETags and the HTTP headers that describe a frame.

`EncodedFrame` is a frame file read and encoded once (server/frame_hub.py
caches it per file identity for every viewer); the headers carry the
frame header's main fields (docs/http-api.md).
"""

from __future__ import annotations

import hashlib
import io
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from beholder_plugin.protocol.frame_format import Frame, decode_frame

# zlib level 1: about three times faster than the default for a ~1000 x 768 frame,
# and palette frames compress well anyway.
PNG_COMPRESS_LEVEL = 1
# The trainer's last error is sent in a header cut to this many characters.
MAX_ERROR_CHARS = 500


def encode_png(frame: Frame) -> bytes:
    """The frame as PNG bytes: palette frames as mode "P" with their palette, others as RGB."""
    if frame.palette is not None:
        return encode_palette_png(frame.pixels, frame.palette)
    return _png_bytes(Image.fromarray(frame.pixels, "RGB"))


def encode_palette_png(pixels: np.ndarray, palette: np.ndarray) -> bytes:
    """H x W palette indices and a (256, 3) palette as a palette ("P") PNG."""
    height, width = pixels.shape
    data = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    image = Image.frombuffer("P", (width, height), data, "raw", "P", 0, 1)
    image.putpalette(np.ascontiguousarray(palette, dtype=np.uint8).tobytes())
    return _png_bytes(image)


def _png_bytes(image: Image.Image) -> bytes:
    """An image as PNG bytes, at the zlib level the server uses everywhere."""
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out.getvalue()


@dataclass
class EncodedFrame:
    """A frame file's latest contents, encoded once and shared by all requests."""

    identity: tuple
    etag: str
    png: bytes
    header: dict[str, Any]
    data_offset: int = 0  # where the frame file's values block starts (for value look-ups)
    encoded_at: float = field(default_factory=time.time)
    table_json: bytes | None = None  # the /section-info answer, made on first request

    def matches(self, expect: tuple[str, int] | None) -> bool:
        """Whether this frame is the one a kept frame's name promises (any frame for None)."""
        return expect is None or frame_stamp(self.header) == expect

    def headers(self) -> list[tuple[str, str]]:
        """HTTP headers describing this frame (ETag plus the frame header's main fields)."""
        return frame_headers(self.etag, self.header)


def frame_headers(etag: str, head: dict[str, Any]) -> list[tuple[str, str]]:
    """HTTP headers describing a frame: its ETag plus the frame header's main fields."""
    out = [("ETag", etag)]
    for key, name in (
        ("frame_id", "X-Beholder-Frame-Id"),
        ("time", "X-Beholder-Frame-Time"),
        ("writer", "X-Beholder-Writer"),
        ("values", "X-Beholder-Values"),
        ("step", "X-Beholder-Step"),
    ):
        if key in head and isinstance(head[key], (str, int, float)):
            out.append((name, str(head[key])))
    out.append(("X-Beholder-Size", f"{head.get('width')}x{head.get('height')}"))
    out.extend(trainer_health_headers(head))
    out.extend(storage_headers(head))
    out.extend(offered_headers(head))
    return out


_VALUES_CHOICES = frozenset(("trainable_variables", "gradients", "activations", "arrays", "frames"))


def offered_headers(head: dict[str, Any]) -> list[tuple[str, str]]:
    """X-Beholder-Offered: a placeholder's Values choices that update() was given something for."""
    offered = head.get("offered")
    if not isinstance(offered, list):
        return []
    kept = [name for name in offered[:8] if isinstance(name, str) and name in _VALUES_CHOICES]
    return [("X-Beholder-Offered", ",".join(kept))] if kept else []


def storage_headers(head: dict[str, Any]) -> list[tuple[str, str]]:
    """X-Beholder-Storage ("local", "s3", "gs", ...) and X-Beholder-Max-Fps (remote runs' frame-rate cap)."""
    out = []
    storage = head.get("storage")
    if isinstance(storage, str) and storage.isascii() and storage.isalnum():
        out.append(("X-Beholder-Storage", storage))
    cap = head.get("max_fps")
    if isinstance(cap, (int, float)) and not isinstance(cap, bool) and 0 < cap < 1e6:
        out.append(("X-Beholder-Max-Fps", f"{cap:g}"))
    return out


def trainer_health_headers(head: dict[str, Any]) -> list[tuple[str, str]]:
    """X-Beholder-Colormap, -Mode, -Failures, -Skipped, -Ending and -Last-Error (percent-encoded UTF-8) of a
    header."""
    out = []
    for key, name in (("colormap", "X-Beholder-Colormap"), ("mode", "X-Beholder-Mode")):
        if isinstance(head.get(key), str) and head[key].isascii() and head[key].isprintable():
            out.append((name, head[key]))
    for key, name in (("failures", "X-Beholder-Failures"), ("skipped", "X-Beholder-Skipped")):
        value = head.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            out.append((name, str(value)))
    if head.get("ending") is True:
        out.append(("X-Beholder-Ending", "1"))
    error = head.get("last_error")
    if isinstance(error, str) and error:
        out.append(("X-Beholder-Last-Error", urllib.parse.quote(error[:MAX_ERROR_CHARS], safe="")))
    return out


def encode_frame_file(data: bytes, identity: tuple) -> EncodedFrame:
    """Decode a frame file's bytes and encode it as PNG (FrameFormatError for a bad file)."""
    frame = decode_frame(data)
    return EncodedFrame(
        identity=identity,
        etag=etag_for(frame.header, identity),
        png=encode_png(frame),
        header=frame.header,
        data_offset=data_offset(data),
    )



def data_offset(data: bytes) -> int:
    """Where the values block of a (valid) frame file starts."""
    head_len = int.from_bytes(data[8:12], "little")
    return (12 + head_len + 7) & ~7



def frame_stamp(header: dict[str, Any]) -> tuple[Any, Any]:
    """(writer, frame id) of a frame header."""
    return (header.get("writer"), header.get("frame_id"))



def etag_for(header: dict[str, Any], identity: tuple) -> str:
    """A strong ETag: writer id and frame id when present, else a digest of the file identity."""
    writer, frame_id = header.get("writer"), header.get("frame_id")
    if isinstance(writer, str) and writer.isalnum() and isinstance(frame_id, int):
        return f'"{writer}-{frame_id}"'
    return '"' + hashlib.sha1(repr(identity).encode()).hexdigest()[:16] + '"'
