"""Serving frames: PNGs encoded once for all viewers, and waiting for new frames without spinning.

One `FrameHub` belongs to the plugin. For each frame file it keeps the last
encoded PNG keyed by the file's identity (inode, size, mtime), so a frame is
read and encoded once however many viewers ask for it. Viewers that wait for
the next frame sleep on a condition; a single watcher thread per watched file
stats it (every `fast_poll` s while frames are arriving, every `slow_poll` s
when idle) and wakes them. The watcher exits once nobody has waited for
`idle_exit` s, and every wait is bounded by the caller's timeout.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from beholder_plugin.protocol.files import LOCAL, FileRefused
from beholder_plugin.protocol.frame_format import (
    MAX_FRAME_BYTES,
    Frame,
    FrameFormatError,
    decode_frame,
    read_header,
    value_at,
)

# zlib level 1: about three times faster than the default for a ~1000 x 768 frame,
# and palette frames compress well anyway.
PNG_COMPRESS_LEVEL = 1
# Frame files with a cache slot at most (the latest frames of runs, and kept frames looked at).
MAX_SLOTS = 256


def file_identity(path: str) -> tuple | None:
    """(inode, size, mtime_ns) of a file, or None when it does not exist."""
    return LOCAL.identity(path)


def encode_png(frame: Frame) -> bytes:
    """The frame as PNG bytes: palette frames as mode "P" with their palette, others as RGB."""
    if frame.palette is not None:
        size = (frame.width, frame.height)
        image = Image.frombuffer("P", size, frame.pixels.tobytes(), "raw", "P", 0, 1)
        image.putpalette(frame.palette.tobytes())
    else:
        image = Image.fromarray(frame.pixels, "RGB")
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

    def headers(self) -> list[tuple[str, str]]:
        """HTTP headers describing this frame (ETag plus the frame header's main fields)."""
        head = self.header
        out = [("ETag", self.etag)]
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
        return out


def encode_frame_file(data: bytes, identity: tuple) -> EncodedFrame:
    """Decode a frame file's bytes and encode it as PNG (FrameFormatError for a bad file)."""
    frame = decode_frame(data)
    return EncodedFrame(
        identity=identity,
        etag=_etag_for(frame.header, identity),
        png=encode_png(frame),
        header=frame.header,
        data_offset=_data_offset(data),
    )


def _data_offset(data: bytes) -> int:
    """Where the values block of a (valid) frame file starts."""
    head_len = int.from_bytes(data[8:12], "little")
    return (12 + head_len + 7) & ~7


def _etag_for(header: dict[str, Any], identity: tuple) -> str:
    """A strong ETag: writer id and frame id when present, else a digest of the file identity."""
    writer, frame_id = header.get("writer"), header.get("frame_id")
    if isinstance(writer, str) and writer.isalnum() and isinstance(frame_id, int):
        return f'"{writer}-{frame_id}"'
    return '"' + hashlib.sha1(repr(identity).encode()).hexdigest()[:16] + '"'


class _Slot:
    """Per-file state: the cached encoding and the watcher's bookkeeping."""

    def __init__(self, path: str):
        self.path = path
        self.encode_lock = threading.Lock()
        self.encoded: EncodedFrame | None = None
        self.cond = threading.Condition()
        self.version = 0  # bumped by the watcher whenever the file's identity changes
        self.identity: tuple | None = None
        self.waiters = 0
        self.last_wait = 0.0
        self.watcher: threading.Thread | None = None


class FrameHub:
    """Shared frame cache and change watcher for every frame file the plugin serves."""

    def __init__(self, fast_poll: float = 0.008, slow_poll: float = 0.1, idle_exit: float = 5.0):
        self.fast_poll = fast_poll
        self.slow_poll = slow_poll
        self.idle_exit = idle_exit
        self.encodings = 0  # how many times a frame was read and encoded (for tests and stats)
        self._slots: dict[str, _Slot] = {}
        self._headers: dict[tuple, tuple[dict[str, Any], int]] = {}
        self._lock = threading.Lock()

    def _slot(self, path: str) -> _Slot:
        key = os.path.realpath(path)
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                if len(self._slots) >= MAX_SLOTS:  # kept frames come and go: forget idle ones
                    for old in [k for k, v in self._slots.items() if v.watcher is None][: MAX_SLOTS // 2]:
                        del self._slots[old]
                slot = self._slots[key] = _Slot(key)
            return slot

    def latest(self, path: str) -> EncodedFrame | None:
        """The file's current frame, encoded (from cache if unchanged); None if there is no file.

        Raises FrameFormatError (a ValueError) when the file is not a valid frame.
        """
        slot = self._slot(path)
        identity = file_identity(slot.path)
        with slot.encode_lock:
            cached = slot.encoded
            if identity is None:
                return None
            if cached is not None and cached.identity == identity:
                return cached
            try:
                found = LOCAL.read_with_identity(slot.path, MAX_FRAME_BYTES)
            except FileRefused as exc:
                raise FrameFormatError(str(exc)) from None
            if found is None:
                return None
            # The identity of what was actually read: the file may have been replaced after stat().
            data, identity = found
            if cached is not None and cached.identity == identity:
                return cached
            encoded = encode_frame_file(data, identity)
            self.encodings += 1
            slot.encoded = encoded
            return encoded

    def value_at(self, path: str, x: int, y: int) -> dict[str, Any] | None:
        """Pixel (x, y) of the frame at path: section, index, value, frame id and step.

        The header is parsed once per frame file and kept; each look-up then
        reads four bytes (and checks the file is still the frame the header
        came from). FileNotFoundError when there is no such frame.
        """
        for attempt in range(3):
            identity = file_identity(path)
            if identity is None:
                raise FileNotFoundError("there is no such frame (any more)")
            header = self._headers.get((path, identity))
            if header is None:
                header = read_header(path)
                if header is None:
                    continue
                if len(self._headers) >= 64:
                    self._headers.clear()
                self._headers[(path, identity)] = header
            try:
                found = value_at(path, x, y, header=header, identity=identity)
            except FileRefused:  # replaced since the header was read: once more with the new one
                if attempt == 2:
                    raise
                continue
            if found is not None:
                found["frame_id"] = header[0].get("frame_id")
                found["step"] = header[0].get("step")
            return found
        raise FileNotFoundError("there is no such frame (any more)")

    def wait_newer(self, path: str, etag: str | None, timeout: float) -> EncodedFrame | None:
        """The first frame whose ETag is not `etag`, waiting at most `timeout` s (None if none)."""
        slot = self._slot(path)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            with slot.cond:
                seen = slot.version
            frame = self.latest(path)
            if frame is not None and frame.etag != etag:
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._wait_change(slot, seen, remaining)

    def _wait_change(self, slot: _Slot, seen: int, timeout: float) -> None:
        """Sleep until the watcher sees the file change after version `seen`, or timeout s."""
        with slot.cond:
            slot.waiters += 1
            self._ensure_watcher(slot)
            try:
                slot.cond.wait_for(lambda: slot.version != seen, timeout=timeout)
            finally:
                slot.waiters -= 1
                slot.last_wait = time.monotonic()

    def watcher_count(self) -> int:
        """How many watcher threads are running (for tests: they must end when viewers leave)."""
        with self._lock:
            slots = list(self._slots.values())
        return sum(1 for s in slots if s.watcher is not None and s.watcher.is_alive())

    def _ensure_watcher(self, slot: _Slot) -> None:
        """Start the slot's watcher thread if it is not running (call with slot.cond held)."""
        if slot.watcher is None:
            slot.identity = file_identity(slot.path)
            slot.watcher = threading.Thread(
                target=self._watch, args=(slot,), name="beholder-watch", daemon=True
            )
            slot.watcher.start()

    def _watch(self, slot: _Slot) -> None:
        """Stat the file until nobody has waited for idle_exit s, waking waiters on each change."""
        last_change = time.monotonic()
        while True:
            now = time.monotonic()
            with slot.cond:
                if slot.waiters == 0 and now - slot.last_wait > self.idle_exit:
                    slot.watcher = None
                    return
            identity = file_identity(slot.path)
            if identity != slot.identity:
                last_change = now
                with slot.cond:
                    slot.identity = identity
                    slot.version += 1
                    slot.cond.notify_all()
            # Poll fast only while frames keep coming; an idle run costs a few stats a second.
            time.sleep(self.fast_poll if now - last_change < 2.0 else self.slow_poll)
