"""Serving frames: PNGs or palette indices computed once for all viewers, and waiting without spinning.

One `FrameHub` belongs to the plugin. For each frame file it keeps the last
encoded PNG keyed by the file's identity (inode, size, mtime) of exactly the
bytes that were read, so a frame is read and encoded once however many
viewers ask for it. For the frame-data route it likewise keeps, per file
identity, the palette index of every value of a "sections" frame
(`FrameData`), which browsers widen and colour themselves: no image is
encoded for them. Encodings and indices of files nobody has asked for
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

import hashlib
import io
import json
import os
import threading
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from beholder_plugin.protocol.files import FileRefused, check_resolved, files_for
from beholder_plugin.protocol.frame_format import (
    MAX_FRAME_BYTES,
    PALETTE_BYTES,
    PREFIX_BYTES,
    Frame,
    FrameFormatError,
    data_size,
    decode_frame,
    header_span,
    parse_header,
    value_at,
)
from beholder_plugin.protocol.scaling import palette_indices
from beholder_plugin.server.runs import recent_realpath

# zlib level 1: about three times faster than the default for a ~1000 x 768 frame,
# and palette frames compress well anyway.
PNG_COMPRESS_LEVEL = 1
# Frame files with a cache slot at most (the latest frames of runs, and kept frames looked at).
MAX_SLOTS = 256
# Encoded PNGs kept in all (a show_all frame of a large network is a few MB of PNG):
# past this, the encodings asked for least recently are dropped (and re-encoded if asked again).
MAX_CACHED_PNG_BYTES = 128 << 20
# Parsed frame headers kept for value look-ups, one per (file, identity).
MAX_HEADERS = 64
# The trainer's last error is sent in a header cut to this many characters.
MAX_ERROR_CHARS = 500
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
        return expect is None or _stamp(self.header) == expect

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
    """X-Beholder-Colormap, -Mode, -Failures, -Skipped and -Last-Error (percent-encoded UTF-8) of a header."""
    out = []
    for key, name in (("colormap", "X-Beholder-Colormap"), ("mode", "X-Beholder-Mode")):
        if isinstance(head.get(key), str) and head[key].isascii() and head[key].isprintable():
            out.append((name, head[key]))
    for key, name in (("failures", "X-Beholder-Failures"), ("skipped", "X-Beholder-Skipped")):
        value = head.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            out.append((name, str(value)))
    error = head.get("last_error")
    if isinstance(error, str) and error:
        out.append(("X-Beholder-Last-Error", urllib.parse.quote(error[:MAX_ERROR_CHARS], safe="")))
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


# The frame-data payload (docs/http-api.md): magic, JSON length, JSON, palette, then the indices.
DATA_MAGIC = b"BHDATA1\0"
MAX_ANSWERS = 8  # frame-data answers kept per frame: one per request shape (viewport) in use


class FrameGone(Exception):
    """A frame's file was replaced or removed after its header was read: its values are gone with it."""


class FrameData:
    """A "sections" frame as the browser draws it, from its header; palette indices are made on demand.

    A section's indices are computed the first time an answer needs them
    (reading only that section's values from the file) and kept, and each
    answer (the whole frame, or the sections overlapping a row range) is
    built once per request shape and shared by every viewer asking the
    same. A viewport of a 30-screen frame so reads and scales a thirtieth
    of its values. payload() raises FrameGone if the file changed since the
    header was read.
    """

    def __init__(self, path: str, identity: tuple, header: dict[str, Any], data_offset: int, palette: bytes,
                 header_text: bytes = b""):
        self.path = path
        self.header_text = header_text  # the header's JSON as stored (section-info quotes its sections)
        self.identity = identity
        self.etag = _etag_for(header, identity)
        self.header = header
        self.data_offset = data_offset
        self.palette = palette
        self.table_json: bytes | None = None  # the /section-info answer (gzip), made on first request
        self._parts: dict[int, bytes] = {}  # section index -> its palette indices
        self._answers: OrderedDict[tuple[int, int] | None, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._headers: list[tuple[str, str]] | None = None

    def headers(self) -> list[tuple[str, str]]:
        """The same HTTP headers as the frame's PNG answer (made once; each answer gets a copy)."""
        if self._headers is None:
            self._headers = frame_headers(self.etag, self.header)
        return list(self._headers)

    def overlapping(self, first: int, last: int) -> list[int]:
        """Indices of the sections that share a row with rows first..last (inclusive)."""
        return [i for i, rec in enumerate(self.header["sections"])
                if rec["top"] <= last and rec["top"] + rec["height"] > first]

    def payload(self, rows: tuple[int, int] | None = None) -> bytes:
        """The binary answer: all sections, or those overlapping rows (first, last) inclusive."""
        with self._lock:
            found = self._answers.get(rows)
            if found is not None:
                self._answers.move_to_end(rows)
                return found
            chosen = range(len(self.header["sections"])) if rows is None else self.overlapping(*rows)
            self._compute([i for i in chosen if i not in self._parts])
            answer = _data_answer(self.header, chosen, rows, self.palette, [self._parts[i] for i in chosen])
            self._answers[rows] = answer
            while len(self._answers) > MAX_ANSWERS:
                self._answers.popitem(last=False)
            return answer

    def cached_bytes(self) -> int:
        """Bytes this frame's indices and answers hold."""
        return sum(map(len, self._parts.values())) + sum(map(len, self._answers.values()))

    def _compute(self, wanted: list[int]) -> None:
        """Palette indices of these sections, one file read per run of sections whose values are adjacent."""
        sections = self.header["sections"]
        runs: list[list[int]] = []
        for i in wanted:
            if runs and runs[-1][-1] == i - 1 and int(sections[i]["values"]) == _values_end(sections[i - 1]):
                runs[-1].append(i)
            else:
                runs.append([i])
        for run in runs:
            start, end = int(sections[run[0]]["values"]), _values_end(sections[run[-1]])
            raw = self._read(self.data_offset + 4 * start, 4 * (end - start))
            values = np.frombuffer(raw, "<f4")
            records = [dict(sections[i], values=int(sections[i]["values"]) - start) for i in run]
            indices = palette_indices(values, records)
            for i, rec in zip(run, records):
                self._parts[i] = indices[rec["values"] : rec["values"] + _compact_size(rec)].tobytes()

    def _read(self, offset: int, length: int) -> bytes:
        """length bytes at offset of this frame's file, as long as it is still this frame (else FrameGone)."""
        try:
            raw = files_for(self.path).read_range(self.path, offset, length, MAX_FRAME_BYTES, self.identity)
        except FileRefused as exc:
            raise FrameGone(str(exc)) from None
        if raw is None or len(raw) != length:
            raise FrameGone(f"{os.path.basename(self.path)} is gone or shorter than its header implies")
        return raw


def _values_end(rec: dict[str, Any]) -> int:
    """Where a section's compact values end in the values block."""
    return int(rec["values"]) + _compact_size(rec)


def _compact_size(rec: dict[str, Any]) -> int:
    """How many compact values (and palette indices) a section record has."""
    return int(rec["compact"][0]) * int(rec["compact"][1])


def _data_answer(head: dict[str, Any], chosen: Any, rows: tuple[int, int] | None, palette: Any,
                 parts: list[Any]) -> bytes:
    """A frame-data answer: magic, description length, description, palette, then the sections' indices."""
    records, offset = [], 0
    for i, part in zip(chosen, parts):
        rec = head["sections"][i]
        records.append({"index": i, "top": rec["top"], "height": rec["height"], "source": rec["source"],
                        "compact": rec["compact"], "offset": offset})
        offset += len(part)
    doc = {"width": head["width"], "height": head["height"], "colormap": head.get("colormap"),
           "sections": records, "rows": None if rows is None else list(rows), "bytes": offset}
    text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    return b"".join([DATA_MAGIC, len(text).to_bytes(4, "little"), text, palette, *parts])


def frame_data_of(path: str, identity: tuple) -> FrameData | EncodedFrame | None:
    """The frame file at path (which must still be `identity`) as FrameData, or PNG for any other frame.

    For a "sections" frame only the header and the palette are read here;
    None when the file is gone. FileRefused when it is no longer
    `identity`, FrameFormatError when it is not a valid frame.
    """
    parsed = _read_header(path, identity)
    if parsed is None:
        return None
    header, offset, text = parsed
    if header["encoding"] != "sections":
        found = files_for(path).read_with_identity(path, MAX_FRAME_BYTES)
        if found is None:
            return None
        if found[1] != identity:
            raise FileRefused(f"{os.path.basename(path)} was replaced")
        return encode_frame_file(*found)
    at = offset + 4 * header["value_count"]
    palette = files_for(path).read_range(path, at, PALETTE_BYTES, MAX_FRAME_BYTES, identity)
    if palette is None:
        return None
    if len(palette) != PALETTE_BYTES:
        raise FrameFormatError("frame file is shorter than its header implies")
    return FrameData(path, identity, header, offset, palette, text)


def _data_offset(data: bytes) -> int:
    """Where the values block of a (valid) frame file starts."""
    head_len = int.from_bytes(data[8:12], "little")
    return (12 + head_len + 7) & ~7


def _axes(record: dict[str, Any], rank: int) -> list[str] | None:
    """A section record's axis names when they are a list of `rank` strings, else None."""
    axes = record.get("axes")
    if isinstance(axes, list) and len(axes) == rank and all(isinstance(a, str) for a in axes):
        return axes
    return None


def _stamp(header: dict[str, Any]) -> tuple[Any, Any]:
    """(writer, frame id) of a frame header."""
    return (header.get("writer"), header.get("frame_id"))


def read_header_of(path: str, identity: tuple) -> tuple[dict[str, Any], int] | None:
    """The header and data offset of the frame file at path, which must still be `identity`.

    Reads the magic and length, then the header, then two bytes at the end
    the header implies (so a torn or foreign file is refused as decode_frame
    would refuse it); never the values or pixels. None when the file is
    gone; FileRefused when it is not a regular file, or is no longer
    `identity`; FrameFormatError when it is not a valid frame file.
    """
    found = _read_header(path, identity)
    return None if found is None else found[:2]


def _read_header(path: str, identity: tuple) -> tuple[dict[str, Any], int, bytes] | None:
    """read_header_of(), plus the header's JSON text as stored."""
    files = files_for(path)
    first = files.read_range(path, 0, PREFIX_BYTES, MAX_FRAME_BYTES, identity)
    if first is None:
        return None
    span = header_span(first)
    prefix = files.read_range(path, 0, span, MAX_FRAME_BYTES, identity)
    if prefix is None:
        return None
    if len(prefix) < span:
        raise FrameFormatError("frame file is shorter than its header")
    header, offset = parse_header(prefix)
    end = offset + data_size(header)
    tail = files.read_range(path, end - 1, 2, MAX_FRAME_BYTES, identity)
    if tail is None:
        return None
    if len(tail) != 1:
        raise FrameFormatError(
            f"frame file is not the {end} bytes its header implies (a torn or foreign file)"
        )
    return header, offset, bytes(prefix[PREFIX_BYTES:span])


def _etag_for(header: dict[str, Any], identity: tuple) -> str:
    """A strong ETag: writer id and frame id when present, else a digest of the file identity."""
    writer, frame_id = header.get("writer"), header.get("frame_id")
    if isinstance(writer, str) and writer.isalnum() and isinstance(frame_id, int):
        return f'"{writer}-{frame_id}"'
    return '"' + hashlib.sha1(repr(identity).encode()).hexdigest()[:16] + '"'


def _cached_bytes(slot: _Slot) -> int:
    """Bytes a slot's cached PNG and palette indices hold."""
    png = len(slot.encoded.png) if slot.encoded is not None else 0
    return png + (slot.data.cached_bytes() if slot.data is not None else 0)


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
                    return cached if _stamp(cached.header) == expect or expect is None else None
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
            return made if expect is None or _stamp(made.header) == expect else None

    def _trim_encodings(self, keep: _Slot) -> None:
        """Drop the least recently used encodings while cached PNGs and indices pass MAX_CACHED_PNG_BYTES."""
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
                self._headers[(key, identity)] = parsed
                while len(self._headers) > MAX_HEADERS:
                    self._headers.popitem(last=False)
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
                if expect is not None and _stamp(head) != expect:
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
