"""The frame hub: frames read and encoded once for all viewers, and waiting for the next without spinning.

One `FrameHub` belongs to the plugin. For each frame file it keeps the last
encoded PNG (server/frame_encoding.py) keyed by the file's identity (inode,
size, mtime) of exactly the bytes that were read, so a frame is read and
encoded once however many viewers ask for it. For the frame-data route it
likewise keeps, per file identity, the frame's palette indices
(server/frame_data.py). Encodings and indices of files nobody has asked for
lately are dropped once together they pass `MAX_CACHED_PNG_BYTES`.

Value look-ups use the frame's parsed header, cached per (file, identity):
the first look-up on a frame reads its header (or takes it from the cached
encoding), every later one reads four bytes.

Viewers that wait for the next frame sleep on a condition; a single watcher
thread per watched file stats it (every `fast_poll` s while frames are
arriving, every `slow_poll` s when idle) and wakes them. The watcher exits
once nobody has waited for `idle_exit` s, and every wait is bounded by the
caller's timeout.

On a remote logdir (docs/remote.md) "stat" means reading the object's
metadata through fsspec, and the watcher polls every REMOTE_FAST_POLL /
REMOTE_SLOW_POLL s instead.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from beholder_plugin.protocol.files import FileRefused, check_resolved, files_for, recent_realpath
from beholder_plugin.protocol.frame_format import MAX_FRAME_BYTES, FrameFormatError, value_at
from beholder_plugin.server.frame_data import HEADER_COST, FrameData, frame_data_of, read_header_of
from beholder_plugin.server.frame_encoding import EncodedFrame, encode_frame_file, frame_stamp

# Frame files with a cache slot at most (the latest frames of runs, and kept frames looked at).
MAX_SLOTS = 256
# Encoded PNGs kept in all (a show_all frame of a large network is a few MB of PNG):
# past this, the encodings asked for least recently are dropped (and re-encoded if asked again).
MAX_CACHED_PNG_BYTES = 128 << 20
# Parsed frame headers kept for value look-ups, one per (file, identity), and at most so many bytes.
MAX_HEADERS = 64
MAX_HEADER_BYTES = 64 << 20
# A file replaced while it is being read is read again this many times at most.
_ATTEMPTS = 3


# How often a watcher looks at a remote frame's metadata (one request each): while frames
# arrive, and when idle. Remote trainers write at most a few frames a second (docs/remote.md).
REMOTE_FAST_POLL = 0.1
REMOTE_SLOW_POLL = 1.0


def file_identity(path: str) -> tuple | None:
    """(inode, size, mtime_ns) of a file (its object metadata when remote), or None when it does not exist."""
    return files_for(path).identity(path)


def file_key(path: str) -> str:
    """The key a file is cached under: its real path, or the URL itself for a remote file (no symlinks).

    FileRefused when the real path found is outside the logdir (a link swapped in after the name check).
    """
    if files_for(path).remote:
        return path
    real = recent_realpath(path)
    check_resolved(real, path)
    return real



def _axes(record: dict[str, Any], rank: int) -> list[str] | None:
    """A section record's axis names when they are a list of `rank` strings, else None."""
    axes = record.get("axes")
    if isinstance(axes, list) and len(axes) == rank and all(isinstance(a, str) for a in axes):
        return axes
    return None



def _cached_bytes(slot: _Slot) -> int:
    """Bytes a slot's cached PNG, palette indices, answers and parsed headers hold."""
    total = 0
    encoded = slot.encoded
    if encoded is not None:
        total += len(encoded.png) + HEADER_COST * encoded.data_offset + len(encoded.table_json or b"")
    return total + (slot.data.cached_bytes() if slot.data is not None else 0)


class _Slot:
    """Per-file state: the cached encoding and the watcher's bookkeeping."""

    def __init__(self, path: str):
        self.path = path
        self.encode_lock = threading.Lock()
        self.encoded: EncodedFrame | None = None
        self.data: FrameData | None = None  # the frame's palette indices, for the frame-data route
        self.cond = threading.Condition()
        self.version = 0  # bumped by the watcher whenever the file's identity changes
        self.identity: tuple | None = None
        self.waiters = 0
        self.last_wait = 0.0
        self.last_used = 0.0  # when a request last asked for this file's frame
        self.watcher: threading.Thread | None = None


class FrameHub:
    """Shared frame cache and change watcher for every frame file the plugin serves."""

    def __init__(self, fast_poll: float = 0.008, slow_poll: float = 0.1, idle_exit: float = 5.0):
        self.fast_poll = fast_poll
        self.slow_poll = slow_poll
        self.idle_exit = idle_exit
        self.encodings = 0  # how many times a frame was read and encoded (for tests and stats)
        self.index_computations = 0  # how many times a frame's palette indices were computed (likewise)
        self.header_reads = 0  # how many times a header was read for value look-ups (likewise)
        self._slots: dict[str, _Slot] = {}
        self._headers: OrderedDict[tuple, tuple[dict[str, Any], int]] = OrderedDict()
        self._header_bytes = 0  # what the parsed headers kept take, by HEADER_COST
        self._lock = threading.Lock()
        self._headers_lock = threading.Lock()

    def _slot(self, path: str) -> _Slot:
        key = file_key(path)
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                if len(self._slots) >= MAX_SLOTS:  # kept frames come and go: forget idle ones
                    for old in [k for k, v in self._slots.items() if v.watcher is None][: MAX_SLOTS // 2]:
                        del self._slots[old]
                slot = self._slots[key] = _Slot(key)
            return slot

    def latest(self, path: str, expect: tuple[str, int] | None = None) -> EncodedFrame | None:
        """The file's current frame, encoded (from cache if unchanged); None if there is no file.

        With ``expect`` (writer, frame id), as a kept frame's name gives
        them, a file holding another frame counts as no file: the trainer
        recycles dropped history files in place, so a name read a moment ago
        may have become another frame. Raises FrameFormatError (a
        ValueError) when the file is not a valid frame or not a regular file.
        """
        slot = self._slot(path)
        slot.last_used = time.monotonic()
        identity = file_identity(slot.path)
        with slot.encode_lock:
            cached = slot.encoded
            if identity is None:
                return None
            if cached is not None and cached.identity == identity:
                return cached if cached.matches(expect) else None
            try:
                found = files_for(slot.path).read_with_identity(slot.path, MAX_FRAME_BYTES)
            except FileRefused as exc:
                raise FrameFormatError(str(exc)) from None
            if found is None:
                return None
            # The identity of what was actually read: the file may have been replaced after stat().
            data, identity = found
            if cached is None or cached.identity != identity:
                cached = encode_frame_file(data, identity)
                self.encodings += 1
                slot.encoded = cached
                self._trim_encodings(keep=slot)
            return cached if cached.matches(expect) else None

    def frame_data(self, path: str, expect: tuple[str, int] | None = None) -> FrameData | EncodedFrame | None:
        """The current frame as palette indices (FrameData), or as PNG when it is not a "sections" frame.

        Like latest(): cached per file identity and shared by all viewers
        (the indices are computed once per frame version, and no image is
        encoded for a "sections" frame), None when there is no file or it
        holds another frame than ``expect``.
        """
        slot = self._slot(path)
        slot.last_used = time.monotonic()
        identity = file_identity(slot.path)
        with slot.encode_lock:
            if identity is None:
                return None
            for cached in (slot.data, slot.encoded):
                if cached is not None and cached.identity == identity and (
                    isinstance(cached, FrameData) or cached.header.get("encoding") != "sections"
                ):
                    return cached if frame_stamp(cached.header) == expect or expect is None else None
            made = None
            for attempt in range(_ATTEMPTS):
                try:
                    made = frame_data_of(slot.path, identity)
                    break
                except FileRefused as exc:
                    now = file_identity(slot.path)
                    if now is None:
                        return None
                    if attempt + 1 < _ATTEMPTS and now != identity:
                        identity = now  # replaced while we read it: read the new file
                        continue
                    raise FrameFormatError(str(exc)) from None
            if made is None:
                return None
            if isinstance(made, FrameData):
                self.index_computations += 1
                slot.data = made
            else:
                self.encodings += 1
                slot.encoded = made
            self._trim_encodings(keep=slot)
            return made if expect is None or frame_stamp(made.header) == expect else None

    def _trim_encodings(self, keep: _Slot) -> None:
        """Drop the least recently used encodings while what they hold (PNGs, indices, headers) passes
        MAX_CACHED_PNG_BYTES."""
        with self._lock:
            slots = [s for s in self._slots.values() if s.encoded is not None or s.data is not None]
        total = sum(_cached_bytes(s) for s in slots)
        for slot in sorted(slots, key=lambda s: s.last_used):
            if total <= MAX_CACHED_PNG_BYTES:
                break
            if slot is keep:
                continue
            total -= _cached_bytes(slot)
            slot.encoded = None  # a request holding it keeps its reference; the next one re-reads
            slot.data = None

    def header(self, path: str) -> tuple[tuple[dict[str, Any], int], tuple] | None:
        """((header, data offset), identity) of the frame file at path; None if there is no file.

        From the cache when the file is unchanged (the header of the cached
        encoding counts), else read with read_header_of. Raises
        FrameFormatError for a file that is not a valid frame or not a
        regular file.
        """
        key = file_key(path)
        for attempt in range(_ATTEMPTS):
            identity = file_identity(key)
            if identity is None:
                return None
            cached = self._cached_header(key, identity)
            if cached is not None:
                return cached, identity
            try:
                parsed = read_header_of(key, identity)
            except FileRefused as exc:
                if attempt + 1 < _ATTEMPTS and file_identity(key) != identity:
                    continue  # replaced while we read it: read the new file
                raise FrameFormatError(str(exc)) from None
            if parsed is None:
                return None
            self.header_reads += 1
            with self._headers_lock:
                if (key, identity) not in self._headers:  # (two requests may have read it at once)
                    self._header_bytes += HEADER_COST * parsed[1]
                self._headers[(key, identity)] = parsed
                while len(self._headers) > 1 and (len(self._headers) > MAX_HEADERS
                                                  or self._header_bytes > MAX_HEADER_BYTES):
                    _, (_, offset) = self._headers.popitem(last=False)
                    self._header_bytes -= HEADER_COST * offset
            return parsed, identity
        return None

    def _cached_header(self, key: str, identity: tuple) -> tuple[dict[str, Any], int] | None:
        """A header already parsed for this exact file: from the header cache or the encoded frame."""
        with self._headers_lock:
            found = self._headers.get((key, identity))
            if found is not None:
                self._headers.move_to_end((key, identity))
                return found
        with self._lock:
            slot = self._slots.get(key)
        for cached in (slot.encoded, slot.data) if slot is not None else ():
            if cached is not None and cached.identity == identity:
                return cached.header, cached.data_offset
        return None

    def value_at(
        self, path: str, x: int, y: int, expect: tuple[str, int] | None = None
    ) -> dict[str, Any] | None:
        """Pixel (x, y) of the frame at path: {"section", "name", "index", "value", "frame_id", "step", ...}.

        Also the section's "bounds" and the frame's "colormap", to place the value on a colour bar.

        None on a separator, outside the frame or for a frame without
        sections. Reads the header once per frame file (see header()) and
        then four bytes per look-up, checking that the file is still the
        frame the header came from. FileNotFoundError when there is no such
        frame (with ``expect``: none holding that writer's frame id).
        """
        key = file_key(path)
        for attempt in range(_ATTEMPTS):
            before = file_identity(key)
            try:
                found = self.header(key)
                if found is None:
                    break
                (head, offset), identity = found
                if expect is not None and frame_stamp(head) != expect:
                    break
                where = value_at(key, x, y, header=(head, offset), files=files_for(key), identity=identity)
            except FileRefused as exc:
                if attempt + 1 < _ATTEMPTS:
                    continue  # replaced while it was read: once more with the new file
                if expect is not None:
                    break  # a kept frame that kept changing under the reads: recycled, so gone
                raise FrameFormatError(str(exc)) from None
            except FrameFormatError:
                # A kept frame's file caught while the trainer writes it in place reads as torn, and
                # its identity moves under the read: that name holds no whole frame (a 404, as once
                # the ring drops it). A file that stays as it is and is not a frame is a 500.
                if expect is not None and file_identity(key) != before:
                    break
                raise
            if where is None:
                return None
            return {
                "section": where["section"],
                "name": where["name"],
                "index": where["index"],
                "value": where["value"],
                "frame_id": head.get("frame_id"),
                "step": head.get("step"),
                "bounds": head["sections"][where["section"]].get("bounds"),
                "colormap": head.get("colormap"),
                "axes": _axes(head["sections"][where["section"]], len(where["index"])),
            }
        raise FileNotFoundError(path)

    def wait_newer(self, path: str, etag: str | None, timeout: float, as_data: bool = False) -> Any:
        """The first frame whose ETag is not `etag`, waiting at most `timeout` s (None if none).

        An EncodedFrame, or with ``as_data`` what frame_data() gives.
        """
        slot = self._slot(path)
        deadline = time.monotonic() + max(0.0, timeout)
        load = self.frame_data if as_data else self.latest
        while True:
            with slot.cond:
                seen = slot.version
            frame = load(path)
            if frame is not None and frame.etag != etag:
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._wait_change(slot, seen, remaining, None if frame is None else frame.identity)

    def _wait_change(self, slot: _Slot, seen: int, timeout: float, shown: tuple | None = None) -> None:
        """Sleep until the watcher sees the file change after version `seen`, or timeout s.

        ``shown`` is the identity of the frame the caller already has: a
        watcher started now compares against it, so a file replaced between
        the caller's read and the watcher's start still wakes the caller
        (on a remote store that gap is a few requests long).
        """
        with slot.cond:
            slot.waiters += 1
            self._ensure_watcher(slot, shown)
            try:
                slot.cond.wait_for(lambda: slot.version != seen, timeout=timeout)
            finally:
                slot.waiters -= 1
                slot.last_wait = time.monotonic()

    def cached_pngs(self) -> list[EncodedFrame]:
        """The encoded frames the hub holds now (for tests: they stay within MAX_CACHED_PNG_BYTES)."""
        with self._lock:
            slots = list(self._slots.values())
        return [s.encoded for s in slots if s.encoded is not None]

    def changes_seen(self, path: str) -> int:
        """How many times a watcher has seen the file at path change (for tests: who woke a waiter)."""
        return self._slot(path).version

    def watcher_count(self) -> int:
        """How many watcher threads are running (for tests: they must end when viewers leave)."""
        with self._lock:
            slots = list(self._slots.values())
        return sum(1 for s in slots if s.watcher is not None and s.watcher.is_alive())

    def _ensure_watcher(self, slot: _Slot, shown: tuple | None = None) -> None:
        """Start the slot's watcher thread if it is not running (call with slot.cond held)."""
        if slot.watcher is None:
            slot.identity = shown
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
            time.sleep(self._poll_interval(slot, now - last_change < 2.0))

    def _poll_interval(self, slot: _Slot, active: bool) -> float:
        """Seconds between two looks at a watched file: stat() locally, a metadata request remotely."""
        if files_for(slot.path).remote:
            return max(self.fast_poll, REMOTE_FAST_POLL) if active else max(self.slow_poll, REMOTE_SLOW_POLL)
        return self.fast_poll if active else self.slow_poll
