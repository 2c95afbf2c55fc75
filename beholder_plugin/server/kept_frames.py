"""A run's kept frames (its history ring) as GET history and GET timeline answer them, listed once per change.

At the ring's cap (50,000 frames) one listing, parsed and sorted, took 0.3 s
and its JSON 7 MB, and the dashboard asks for it every few seconds. The
listing is kept per run directory with the directory's identity (device,
inode, modification and change time in ns) and used again while that is the
same, unless the directory had changed less than FRESH_S before it was
listed: a change within a coarse file system's timestamp granularity could
leave the same times, so such a listing is used once. At most LIST_SLOTS
listings run at once; requests for a directory whose listing is under way
wait for it. Remote runs are listed on every request (within the slots).

Example::

    listing = kept_listing("logs/run1")
    listing.entries[-1].step        # the newest kept frame
    listing.history_json()          # GET history's answer, as bytes
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from typing import Any

from beholder_plugin.protocol import history
from beholder_plugin.protocol.files import files_for
from beholder_plugin.protocol.names import history_dir
from beholder_plugin.server.flights import Flights, Slots
from beholder_plugin.server.http_answers import json_bytes

FRESH_S = 2.0  # a directory changed less than this before its listing is listed again at the next request
MAX_KEPT = 4096  # GET timeline's "kept" at most (besides the frames anomalies name): 18,600 kept frames
# made 1.97 MB of a 4-section run's 2.06 MB answer, sent again at every 5 s refresh of a live run
CACHED_LISTINGS = 4  # run directories whose listing is kept (about 30 MB each at the ring's cap)
LIST_SLOTS = 2  # listings at once


class Listing:
    """One listing of a run's kept frames, and the answers made of it (each built once, on first use)."""

    def __init__(self, entries: list[history.HistoryEntry]) -> None:
        self.entries = entries
        self.names = tuple(e.name for e in entries)  # (what the listing says: equal names, equal answers)
        self._lock = threading.Lock()
        self._history_json: bytes | None = None
        self._kept: list[dict[str, Any]] | None = None
        self._kept_json: bytes | None = None
        self._kept_for: frozenset[str] = frozenset()  # the names kept() had to keep

    def history_json(self) -> bytes:
        """GET history's answer: every kept frame's name, time, step, frame id and writer, as JSON bytes."""
        with self._lock:
            if self._history_json is None:
                self._history_json = json_bytes(
                    [{"name": e.name, "time": e.time, "step": e.step, "frame_id": e.frame_id,
                      "writer": e.writer} for e in self.entries])
            return self._history_json

    def kept_json(self, keep: frozenset[str] = frozenset()) -> bytes:
        """GET timeline's "kept" as JSON bytes (kept(keep), as a JSON answer writes it)."""
        with self._lock:  # (one hold: the list and its JSON are of the same keep)
            self._fill(keep)
            if self._kept_json is None:
                self._kept_json = json_bytes(self._kept)
            return self._kept_json

    def kept(self, keep: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
        """GET timeline's "kept": the kept frames' names, steps and times (shared: read it only), at most
        MAX_KEPT of them besides those named in ``keep`` (an anomaly's frames): half spread evenly over the
        listing (the ring's recent frames), half over the run's time (the keyframes far back), the first
        and the newest always; enough for a click on a timeline of at most 4096 points."""
        with self._lock:
            self._fill(keep)
            return self._kept

    def _fill(self, keep: frozenset[str]) -> None:
        """Make the kept list for keep, unless it is the one made last (under the lock)."""
        if self._kept is None or self._kept_for != keep:
            self._kept = [{"name": e.name, "step": e.step, "time": e.time}
                          for e in thinned(self.entries, keep)]
            self._kept_json, self._kept_for = None, keep


def thinned(entries: list[history.HistoryEntry], keep: frozenset[str] = frozenset(),
            most: int | None = None) -> list[history.HistoryEntry]:
    """At most `most` (MAX_KEPT) entries, oldest first, besides those named in `keep` (see Listing.kept)."""
    most = MAX_KEPT if most is None else most
    count = len(entries)
    if count <= most:
        return entries
    half = most // 2
    chosen = {round(i * (count - 1) / max(half - 1, 1)) for i in range(half)}  # spread by index
    first, last = entries[0].time, entries[-1].time
    span = max(last - first, 1e-9)
    seen: set[int] = set()
    for i, entry in enumerate(entries):  # the first entry of each of `half` spans of time
        bucket = min(half - 1, int((entry.time - first) / span * half))
        if bucket not in seen:
            seen.add(bucket)
            chosen.add(i)
    chosen.update(i for i, entry in enumerate(entries) if entry.name in keep)
    return [entries[i] for i in sorted(chosen)]


_cache: OrderedDict[str, tuple[tuple, Listing]] = OrderedDict()  # directory -> (identity, listing)
_cache_lock = threading.Lock()
_flights = Flights()
_slots = Slots(LIST_SLOTS, "history")


def forget() -> None:
    """Drop every kept listing (the next request lists the directory again)."""
    with _cache_lock:
        _cache.clear()


def _identity(directory: str) -> tuple[tuple, bool] | None:
    """(What the directory is now, whether a listing of it may be used again), or None when it cannot be
    told (no directory, or not one the system can stat)."""
    now = time.time()
    try:
        st = os.stat(directory)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns), now - st.st_mtime_ns / 1e9 >= FRESH_S


def kept_listing(run_dir: str, files: Any = None) -> Listing:
    """The run's kept frames, oldest first, as list_history lists them now (listed again only when the
    history directory changed, or had changed just before its last listing)."""
    directory = history_dir(run_dir)
    files = files or files_for(directory)
    if getattr(files, "remote", False):
        with _slots:
            return Listing(history.list_history(run_dir, files))
    found = _identity(directory)
    if found is None:
        with _slots:
            return Listing(history.list_history(run_dir, files))
    identity, reusable = found
    with _cache_lock:
        kept = _cache.get(directory)
    if kept is not None and kept[0] == identity:
        return kept[1]
    return _flights.run((directory, identity), lambda: _listed(run_dir, files, directory, identity, reusable))


def _listed(run_dir: str, files: Any, directory: str, identity: tuple, reusable: bool) -> Listing:
    """List the directory (within a slot) and keep the listing when it may be used again."""
    with _slots:
        listing = Listing(history.list_history(run_dir, files))
    with _cache_lock:
        if reusable:
            _cache[directory] = (identity, listing)
            _cache.move_to_end(directory)
            while len(_cache) > CACHED_LISTINGS:
                _cache.popitem(last=False)
        else:
            _cache.pop(directory, None)
    return listing
