"""Keyframes: a sparse, log-spaced set of a run's frames kept beside the history ring, for the whole run.

The ring keeps the last minutes at full rate. A keyframe is a ring frame
pinned (protocol/history.py: ``HistoryRing.pin``) so that the ring never
drops it: its file stays in ``history/`` under its usual name, so the
dashboard's history slider and ``list_history`` reach it like any kept
frame. A frame becomes a keyframe when ``MIN_GAP_SECONDS`` have passed since
the last one. Over the budget (``KEYFRAME_MB``, or ``MAX_KEYFRAMES``
frames), the keyframe whose neighbours are closest in log age goes (never
the first, never the newest), so that what stays is spaced evenly in log
age: dense near the present, sparse far back, the run's first frame always.
A frame larger than half the budget is never a keyframe: the first and the
newest always stay, and two of them must fit (134 MB "show all" frames kept
268 MB of keyframes under a 128 MB budget; at the 1 GiB frame cap, 2 GiB).
A dropped keyframe's file is deleted once the ring is past it. The names
are kept in ``timeline/keyframes.json``, so a restarted trainer keeps them.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
from typing import Any

from beholder_plugin.protocol import timeline as tl
from beholder_plugin.protocol.history import HistoryEntry, HistoryRing, parse_history_name

KEYFRAME_MB = 128
MIN_GAP_SECONDS = 10.0
MAX_KEYFRAMES = 4096
KEYFRAMES_FILE = "keyframes.json"


class Keyframes:
    """Chooses, pins and drops a run's keyframes (on the worker, after each frame is written)."""

    def __init__(self, run_dir: str, files: Any, history_dir: str, budget_bytes: int = KEYFRAME_MB << 20,
                 min_gap: float | None = None, max_count: int = MAX_KEYFRAMES) -> None:
        self.files = files
        self.remote = bool(getattr(files, "remote", False))
        self.history_dir = history_dir
        join = posixpath.join if self.remote else os.path.join
        self.path = join(tl.timeline_dir(run_dir), KEYFRAMES_FILE)
        self.budget = budget_bytes
        self.min_gap = MIN_GAP_SECONDS if min_gap is None else min_gap
        self.max_count = max_count
        self.entries: list[HistoryEntry] = []  # oldest first
        self.bytes = 0
        self.protected: set[str] = set()  # pinned for another reason (an anomaly's frames): kept pinned

    def adopt(self, ring: HistoryRing) -> None:
        """Pin again the keyframes an earlier writer kept (those whose files are still there)."""
        try:
            data = self.files.read(self.path, 1 << 20)
            names = json.loads(data) if data else []
        except (OSError, ValueError):
            return
        present = {e.name: e for e in ring.entries}
        for name in names if isinstance(names, list) else []:
            entry = present.get(name) if isinstance(name, str) else None
            if entry is not None:
                ring.pin(name)
                self.entries.append(entry)
                self.bytes += entry.size
        self.entries.sort(key=lambda e: e.time)

    def consider(self, ring: HistoryRing, step: int) -> list[str]:
        """Make the frame just written (the ring's newest) a keyframe if due; returns files to delete."""
        if not ring.enabled:  # history off: its frames and pins are gone
            self.entries, self.bytes = [], 0
            return []
        if not ring.entries or ring.entries[-1].step != step:
            return []
        entry = ring.entries[-1]
        if self.entries and entry.time - self.entries[-1].time < self.min_gap:
            return []
        if 2 * entry.size > self.budget:  # (the first and the newest always stay: two must fit)
            return []
        ring.pin(entry.name)
        self.entries.append(entry)
        self.bytes += entry.size
        dropped = []
        while len(self.entries) > 2 and (self.bytes > self.budget or len(self.entries) > self.max_count):
            dropped.append(self._drop(ring, entry.time))
        self._save()
        return [d for d in dropped if d is not None]

    def _drop(self, ring: HistoryRing, now: float) -> str | None:
        """Drop the keyframe whose neighbours are closest in log age (not the first, not the newest)."""
        ages = [max(now - e.time, 1e-3) for e in self.entries]
        best, best_gap = 1, math.inf
        for i in range(1, len(self.entries) - 1):
            gap = math.log(ages[i - 1]) - math.log(ages[i + 1])
            if gap < best_gap:
                best, best_gap = i, gap
        entry = self.entries.pop(best)
        self.bytes -= entry.size
        if entry.name in self.protected:
            return None
        return entry.name if ring.unpin(entry.name) else None

    def _save(self) -> None:
        """Write keyframes.json (a failure is not worth a frame: the pins hold in this process anyway)."""
        try:
            self.files.write_atomic(self.path, [json.dumps([e.name for e in self.entries]).encode()])
        except OSError:
            pass

    def names(self) -> list[str]:
        """The keyframes' file names, oldest first."""
        return [e.name for e in self.entries if parse_history_name(e.name) is not None]
