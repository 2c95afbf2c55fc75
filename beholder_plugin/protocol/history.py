"""The history ring: a run's recent frames, each a whole frame file named by its time, writer, id and step.

Files live in ``<run>/plugins/beholder/history/`` and are named
``f-<unix time in us, 16 digits>-<writer>-<frame id>-<step>.bin``, so a
reader lists the kept frames, with their step and time, from the directory
alone and opens any one of them as an ordinary frame file. The trainer
deletes the oldest files once the ring is over its byte or age budget.

Example::

    for entry in list_history("logs/run1"):
        print(entry.step, entry.time, entry.name)
    frame = read_history_frame("logs/run1", entry.name)
"""

from __future__ import annotations

import os
import re
from collections import deque
from dataclasses import dataclass

from beholder_plugin.protocol.files import LocalFiles, files_for
from beholder_plugin.protocol.frame_format import Frame, read_frame_file
from beholder_plugin.protocol.names import history_dir

_NAME = re.compile(r"^f-(\d{16})-([0-9a-f]{1,32})-(\d{1,12})-(\d{1,15})\.bin$")


@dataclass(frozen=True)
class HistoryEntry:
    """One kept frame: its file name, wall time, writer, frame id, training step and size."""

    name: str
    time: float
    writer: str
    frame_id: int
    step: int
    size: int = 0


def history_name(time_s: float, writer: str, frame_id: int, step: int) -> str:
    """The file name of a kept frame."""
    return f"f-{int(time_s * 1e6):016d}-{writer}-{frame_id}-{step}.bin"


def parse_history_name(name: str) -> HistoryEntry | None:
    """The entry a history file name stands for, or None for any other name."""
    m = _NAME.match(name)
    if m is None:
        return None
    return HistoryEntry(name, int(m[1]) / 1e6, m[2], int(m[3]), int(m[4]))


def list_history(run_dir: str | os.PathLike, files: LocalFiles | None = None) -> list[HistoryEntry]:
    """The run's kept frames, oldest first."""
    directory = history_dir(run_dir)
    files = files or files_for(directory)
    entries = [e for e in map(parse_history_name, files.listdir(directory)) if e is not None]
    entries.sort(key=lambda e: (e.time, e.writer, e.frame_id))
    return entries


def history_frame_path(run_dir: str | os.PathLike, name: str) -> str:
    """The path of a kept frame; ValueError for a name that is not a history file name."""
    if parse_history_name(name) is None:
        raise ValueError(f"{name!r} is not the name of a kept frame")
    return os.path.join(history_dir(run_dir), name)


def read_history_frame(run_dir: str | os.PathLike, name: str, files: LocalFiles | None = None) -> Frame:
    """A kept frame by name; FileNotFoundError once the ring has dropped it."""
    path = history_frame_path(run_dir, name)
    frame = read_frame_file(path, files)
    if frame is None:
        raise FileNotFoundError(f"frame {name} is no longer kept")
    return frame


# The ring holds at most this many frames whatever its budgets (small frames at 30 a second for a
# week would be 18 million files, and the trainer's account of them gigabytes): under the number of
# names a directory listing returns (files.MAX_LIST_ENTRIES), so that a new writer adopts them all.
MAX_RING_FRAMES = 50_000


class HistoryRing:
    """The trainer's account of the ring: which files it holds and which to delete next."""

    def __init__(self, max_bytes: int, max_seconds: float) -> None:
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self.entries: deque[HistoryEntry] = deque()
        self.bytes = 0
        # timeline: pinned frames (an anomaly's, trainer/timeline.py) outlive the budgets; past them, in kept
        self.pins: set[str] = set()
        self.kept: dict[str, HistoryEntry] = {}

    @property
    def enabled(self) -> bool:
        """False when either budget is 0 (history off)."""
        return self.max_bytes > 0 and self.max_seconds > 0

    def adopt(self, directory: str, files: LocalFiles) -> None:
        """Take over the frames already in the directory (from an earlier writer), oldest first."""
        found = []
        for name, size in files.list_sizes(directory).items():  # one listing, also on object stores
            entry = parse_history_name(name)
            if entry is not None:
                found.append(HistoryEntry(name, entry.time, entry.writer, entry.frame_id, entry.step, size))
        found.sort(key=lambda e: (e.time, e.writer, e.frame_id))
        self.entries = deque(found)
        self.bytes = sum(e.size for e in found)

    def add(self, entry: HistoryEntry) -> None:
        """Count a frame just written."""
        self.entries.append(entry)
        self.bytes += entry.size

    def expired(self, now: float) -> list[str]:
        """Drop and return the names over budget (oldest first); the newest frame is always kept."""
        out = []
        while len(self.entries) > 1 and (
            self.bytes > self.max_bytes or now - self.entries[0].time > self.max_seconds
            or len(self.entries) > MAX_RING_FRAMES
        ):
            entry = self.entries.popleft()
            self.bytes -= entry.size
            if entry.name in self.pins:  # timeline: a pinned frame is set aside, not dropped
                self.kept[entry.name] = entry
                continue
            out.append(entry.name)
        if not self.enabled:  # history off: nothing is kept, pinned frames included
            out.extend(e.name for e in self.entries)
            out.extend(self.kept)  # timeline:
            self.kept.clear()  # timeline:
            self.pins.clear()  # timeline:
            self.entries.clear()
            self.bytes = 0
        return out

    def pin(self, name: str) -> None:
        """timeline: keep this frame whatever the budgets (its file stays in the ring's directory)."""
        self.pins.add(name)

    def unpin(self, name: str) -> bool:
        """timeline: let a pinned frame go; True when the ring is already past it (delete its file)."""
        self.pins.discard(name)
        return self.kept.pop(name, None) is not None
