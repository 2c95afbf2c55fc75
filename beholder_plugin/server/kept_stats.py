"""GET history/stats: the per-section "stats" of a run's kept frames of one kind of values, read from headers.

The dashboard's Distributions view holds only the frames its page received;
this answer lets it reach back over the frames the trainer kept (the ring,
pinned frames and keyframes). Only each file's header is read (its first
12 bytes, then the header they announce, never the values), and what a file
says is kept per file (kept files are immutable under their names), within
CACHED_BYTES. A request looks at MAX_SCAN files spread over the kept ones
(the newest always among them; fewer when so many of their entries would not
fit in half the cache), reads at most READ_BYTES of headers not yet kept,
and answers at most MAX_FRAMES of those of the kind asked for, spread the
same way, in at most ANSWER_BYTES.

Example::

    body = stats_json("logs/run1", "arrays")    # JSON bytes: {"frames": [{"step", "sections"...}]}
"""

from __future__ import annotations

import json
import os
import posixpath
import threading
from collections import OrderedDict
from typing import Any

from beholder_plugin.protocol.files import FileRefused, files_for
from beholder_plugin.protocol.frame_checks import MAX_FRAME_BYTES, FrameFormatError
from beholder_plugin.protocol.frame_format import PREFIX_BYTES, header_span, parse_header
from beholder_plugin.protocol.names import history_dir
from beholder_plugin.protocol.timeline import VALUES_CODES
from beholder_plugin.server.flights import Slots
from beholder_plugin.server.http_answers import json_bytes
from beholder_plugin.server.kept_frames import kept_listing

MAX_FRAMES = 300  # frames answered at most (the dashboard's KEEP_FRAMES)
MAX_SCAN = 1200  # kept files looked at per request, spread over the ring (the newest always)
MAX_HEADER = 4 << 20  # bytes: a longer header is refused unread (a 300-section header is about 150 KB)
READ_BYTES = 32 << 20  # header bytes read per request (files already kept cost nothing)
CACHED_BYTES = 32 << 20  # what the kept files said, as JSON, over all runs
ANSWER_BYTES = 8 << 20  # an answer's frames, at most (300 frames of a 300-section run made 35 MB)
SIZE_FROM = 8  # kept files looked back at, newest first, for an entry that sizes the scan
READ_SLOTS = 2  # answers built at once
_SKIPPED = b""  # a file that is no frame of stats (torn, foreign, refused): kept too, it stays so

# (history directory, file name) -> (its values, its answer entry as JSON)
_cache: OrderedDict[tuple[str, str], tuple[str | None, bytes]] = OrderedDict()
_cache_bytes = 0
_lock = threading.Lock()
_slots = Slots(READ_SLOTS, "history/stats")


class StatsRequestError(ValueError):
    """A bad query parameter (the route answers 400)."""


def parse_kind(raw: str | None) -> str:
    """The ?values= parameter: one of the kinds of values whose frames carry stats."""
    if raw not in VALUES_CODES:
        shown = "nothing" if raw is None else repr(raw[:40])
        raise StatsRequestError(f"values must be one of {', '.join(VALUES_CODES)}, not {shown}")
    return raw


def forget() -> None:
    """Drop everything kept (tests)."""
    global _cache_bytes
    with _lock:
        _cache.clear()
        _cache_bytes = 0


def spread(count: int, most: int) -> list[int]:
    """At most `most` indices of range(count), evenly spread, the last one always among them."""
    if count <= most:
        return list(range(count))
    if most <= 1:
        return [count - 1]
    return sorted({round(i * (count - 1) / (most - 1)) for i in range(most)})


def _kept(key: tuple[str, str]) -> tuple[str | None, bytes] | None:
    """What a kept file said, if it is kept (and now the most recently used)."""
    with _lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
        return found


def _keep(key: tuple[str, str], found: tuple[str | None, bytes]) -> None:
    """Keep what a file said, dropping the least recently used past CACHED_BYTES."""
    global _cache_bytes
    with _lock:
        if key in _cache:
            return
        _cache[key] = found
        _cache_bytes += len(found[1]) + 200  # (the key and tuple: about 200 bytes)
        while _cache_bytes > CACHED_BYTES and _cache:
            _, (_values, body) = _cache.popitem(last=False)
            _cache_bytes -= len(body) + 200


def frame_stats(header: dict[str, Any], name: str) -> bytes:
    """One answer entry as JSON bytes: the frame's name, time, step, writer, frame id and its sections'
    names and stats (sections without stats left out; b"" when none has them)."""
    records = [rec for rec in header.get("sections") or [] if isinstance(rec, dict)]
    sections = [{"name": rec["name"], "stats": rec["stats"]} for rec in records
                if isinstance(rec.get("name"), str) and isinstance(rec.get("stats"), dict)]
    if not sections:
        return _SKIPPED
    return json_bytes({"name": name, "time": header.get("time"), "step": header.get("step"),
                       "writer": header.get("writer"), "frame_id": header.get("frame_id"),
                       "sections": sections})


def stats_json(run_dir: str, kind: str) -> bytes:
    """GET history/stats's answer for a run and a kind of values, as JSON bytes."""
    directory = history_dir(run_dir)
    files = files_for(directory)
    entries = kept_listing(run_dir, files).entries
    join = posixpath.join if getattr(files, "remote", False) else os.path.join
    budget, partial, looked = READ_BYTES, False, []

    def said(name: str) -> tuple[str | None, bytes] | None:
        """What a kept file says, as kept or read now; None once the read budget is spent."""
        nonlocal budget
        key = (directory, name)
        found = _kept(key)
        if found is None and budget > 0:
            found, cost, final = _read(join(directory, name), name, files)
            budget -= cost
            if final:
                _keep(key, found)
        return found

    with _slots:
        # the scan is sized by the newest entry (a placeholder, an image or a torn file has none and says
        # nothing of the frames' size: the one before it, SIZE_FROM back at most); kept, not read twice
        size = 0
        for entry in reversed(entries[-SIZE_FROM:]):
            found = said(entry.name)
            size = len(found[1]) if found is not None else 0
            if size:
                break
        scan = spread(len(entries), _scan_size(size))
        for index in reversed(scan):  # newest first: a cut-short answer has them
            found = said(entries[index].name)
            if found is None:
                partial = True
            elif found[0] == kind and found[1]:
                looked.append(found[1])
    looked.reverse()  # oldest first
    largest = max((len(entry) for entry in looked), default=1)
    chosen = [looked[i] for i in spread(len(looked), max(1, min(MAX_FRAMES, ANSWER_BYTES // largest)))]
    head = {"values": kind, "kept": len(entries), "scanned": len(scan), "matched": len(looked),
            "partial": partial}
    return json_bytes(head)[:-1] + b', "frames": [' + b", ".join(chosen) + b"]}"


def _scan_size(entry_bytes: int) -> int:
    """How many kept files a request looks at: MAX_SCAN, or as many entries of this size as half the cache
    holds (the other half: other runs and kinds). Past that, each request would drop from the cache what
    the last one read, read it again and still be cut short (a 300-section frame's entry is 116 KB)."""
    return MAX_SCAN if entry_bytes == 0 else max(2, min(MAX_SCAN, CACHED_BYTES // (2 * entry_bytes)))


def _read(path: str, name: str, files: Any) -> tuple[tuple[str | None, bytes], int, bool]:
    """(values, entry JSON) of one kept file, the bytes read (at least the first 12, charged whatever
    came of them), and whether that is final (to be kept): a file that is no frame (torn, foreign, or
    a header past MAX_HEADER, refused after its first 12 bytes) is skipped for good, one gone or
    changing only this time. Only the header is read: its first 12 bytes, then what they announce."""
    read = PREFIX_BYTES
    try:
        identity = files.identity(path)
        first = None if identity is None else files.read_range(path, 0, PREFIX_BYTES, MAX_FRAME_BYTES,
                                                                identity)
        if first is None:
            return (None, _SKIPPED), read, False
        span = header_span(first)
        if span > MAX_HEADER:
            raise FrameFormatError(f"frame header of {span} bytes is longer than the {MAX_HEADER} read here")
        prefix = files.read_range(path, 0, span, MAX_FRAME_BYTES, identity)
        if prefix is None:
            return (None, _SKIPPED), read, False
        read += len(prefix)
        if len(prefix) < span:
            raise FrameFormatError("frame file is shorter than its header")
        header = parse_header(prefix)[0]
    except (FrameFormatError, json.JSONDecodeError):
        return (None, _SKIPPED), read, True
    except (FileRefused, OSError):
        return (None, _SKIPPED), read, False
    values = header.get("values") if isinstance(header.get("values"), str) else None
    body = frame_stats(header, name) if values in VALUES_CODES else _SKIPPED
    return (values, body), read, True
