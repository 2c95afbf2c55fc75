"""The trainer's timeline files: records appended as parts, thinned into base.bht, and anomalies.jsonl."""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import stat
import time
from typing import Any, Callable

import numpy as np

from beholder_plugin.protocol import timeline as tl

logger = logging.getLogger("beholder")

# On a remote logdir the records are uploaded as one part object at most this often.
REMOTE_CHUNK_SECONDS = 10.0
# When compaction keeps failing (base.bht cannot be read or replaced), records stop being appended once
# the parts reach twice their budget, and compaction is tried again this often (seconds).
STOPPED_RETRY_SECONDS = 300.0
# Appends never wait: a FIFO put where a part or anomalies.jsonl belongs would block open() for good.
_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NONBLOCK", 0)


def open_for_append(path: str) -> int:
    """Open a timeline file to append to, without waiting; OSError naming it unless it is a regular file."""
    try:
        fd = os.open(path, _APPEND_FLAGS, 0o666)
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # (ENXIO: a FIFO that no one reads)
            raise
        fd = None
    if fd is None or not stat.S_ISREG(os.fstat(fd).st_mode):
        if fd is not None:
            os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", path)
    return fd


class TimelineWriter:
    """Appends records to a run's timeline files and thins them into base.bht (protocol/timeline.py)."""

    def __init__(self, run_dir: str, files: Any, clock: Callable[[], float] = time.time,
                 parts_budget: int | None = None, cap: int = tl.MAX_PER_SECTION,
                 remote_chunk_seconds: float = REMOTE_CHUNK_SECONDS) -> None:
        self.run_dir = run_dir
        self.files = files
        self.remote = bool(getattr(files, "remote", False))
        self.directory = tl.timeline_dir(run_dir)
        self.clock = clock
        self.parts_budget = parts_budget  # None: tl.parts_budget(sections seen)
        self.sections: set[str] = set()  # every section name appended by this writer
        self.cap = cap
        self.remote_chunk_seconds = remote_chunk_seconds
        self.seq: int | None = None
        self.ids: dict[str, int] = {}  # the current part's section ids
        self._ids_of: dict[tuple, np.ndarray] = {}  # a frame's names -> their ids (the current part's)
        self.part_open = False  # the current part has records (local)
        self.parts_bytes = 0
        self.pending: list[bytes] = []  # remote: chunks not uploaded yet
        self.uploaded_at = clock()
        self.protected: set[int] = set()  # steps whose records thinning keeps (an anomaly's frames)
        self.anomalies: list[bytes] = []  # remote: the lines of anomalies.jsonl
        self._retry_at = 0  # after a failed compaction: the parts' size at which to try again
        self.stopped: str | None = None  # why records are not appended now (compaction keeps failing)
        self._stopped_retry = 0.0  # when compaction is tried again, while stopped
        self.anomaly_lines: int | None = 0  # in anomalies.jsonl, as _start() found it (None: unreadable)

    def _join(self, name: str) -> str:
        """The path of a file of the timeline's directory."""
        return (posixpath.join if self.remote else os.path.join)(self.directory, name)

    def _start(self) -> None:
        """Find the next part number (after every part and base.bht already there) and the parts' size."""
        sizes = self.files.list_sizes(self.directory)
        seqs = [s for s in map(tl.part_seq, sizes) if s is not None]
        # (after base.bht's parts too: an earlier writer whose last frame compacted left no part, and
        # parts numbered from 0 again would be taken as held by base.bht, never read, then deleted)
        through = tl.base_through(self.directory, self.files) if tl.BASE_FILE in sizes else -1
        self.seq = max(max(seqs, default=-1), through) + 1
        self.parts_bytes = sum(size for name, size in sizes.items() if tl.part_seq(name) is not None)
        try:  # (earlier writers' records count towards the file's cap)
            found = self.files.read(self._join(tl.ANOMALIES_FILE), tl.MAX_ANOMALY_BYTES) or b""
        except (OSError, ValueError):  # (unreadable, or past the cap already: no more are added)
            found = None
        self.anomaly_lines = found.count(b"\n") if found is not None else None
        if self.remote:
            self.anomalies = [tl.anomaly_line(r) for r in tl.parse_anomalies(found or b"")]
        else:
            self.files.makedirs(self.directory)

    def append(self, names: list[str], records: np.ndarray) -> None:
        """Append one frame's records (``records["section"]`` indexes ``names``)."""
        if self.stopped is not None and not self._resumed():
            return
        if self.seq is None:
            self._start()
        chunks = []
        key = tuple(names)
        ids = self._ids_of.get(key)
        if ids is None:  # names not seen in this part yet (else the same frame's sections again)
            new = {name: len(self.ids) + k for k, name in enumerate(n for n in dict.fromkeys(names)
                                                                     if n not in self.ids)}
            if new:
                self.ids.update(new)
                if len(self.sections) < tl.MAX_COUNTED_SECTIONS:  # (what parts_budget() needs to know)
                    self.sections.update(new)
                chunks.append(tl.names_chunk(new))
            if len(self._ids_of) >= 16:
                self._ids_of.clear()
            ids = self._ids_of[key] = np.array([self.ids[n] for n in names], np.uint32)
        records = records.copy()
        records["section"] = ids[records["section"]]
        chunks.append(tl.records_chunk(records))
        data = b"".join(chunks)
        if self.remote:
            self.pending.append(data)
            if self.clock() - self.uploaded_at >= self.remote_chunk_seconds:
                self.upload()
        else:
            self._append_local(data)
        self.parts_bytes += len(data)
        budget = tl.parts_budget(len(self.sections)) if self.parts_budget is None else self.parts_budget
        if self.parts_bytes >= max(budget, self._retry_at):
            self._retry_at = self.parts_bytes + budget  # (a compaction that fails is tried again later,
            try:  # not at every frame, each leaving a part behind)
                self.compact()
            except Exception as exc:
                if self.parts_bytes >= 2 * budget:
                    self._stop(exc)
                raise
            self._retry_at = 0

    def _stop(self, exc: Exception) -> None:
        """Compaction failed with the parts at twice their budget (base.bht cannot be read or replaced):
        stop appending, so that they stay there instead of growing for the rest of the run."""
        self.stopped = f"{type(exc).__name__}: {exc}"
        self._stopped_retry = self.clock() + STOPPED_RETRY_SECONDS
        logger.warning("Beholder: the timeline in %s takes no records for now: it cannot be compacted (%s). "
                       "Frames go on; it is tried again every %.0f s (move %s aside if it stands in the "
                       "way)", self.directory, self.stopped, STOPPED_RETRY_SECONDS, self._join(tl.BASE_FILE))

    def _resumed(self) -> bool:
        """While stopped: whether compaction, tried again when its time has come, now works."""
        now = self.clock()
        if now < self._stopped_retry:
            return False
        self._stopped_retry = now + STOPPED_RETRY_SECONDS
        try:
            self.compact()
        except Exception:  # (said when it stopped: not again every few minutes)
            return False
        self.stopped, self._retry_at = None, 0
        logger.warning("Beholder: the timeline in %s takes records again (a gap since it stopped)",
                       self.directory)
        return True

    def _append_local(self, data: bytes) -> None:
        """One write() of whole chunks to the current part (opened for appending, closed again: no file
        stays open between frames)."""
        path = self._join(tl.part_name(self.seq))
        try:
            fd = open_for_append(path)
        except FileNotFoundError:  # the directory was deleted: make it again
            os.makedirs(self.directory, exist_ok=True)
            fd = open_for_append(path)
        self.part_open = True
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def upload(self) -> None:
        """Remote: write the pending chunks as the next part object."""
        self.uploaded_at = self.clock()
        if not self.pending:
            return
        data, self.pending = self.pending, []
        self.files.write_atomic(self._join(tl.part_name(self.seq)), data)
        self.seq += 1
        self.ids, self._ids_of = {}, {}

    def close_part(self) -> None:
        """End the current part; the next record starts a new one."""
        if self.remote:
            self.upload()
            return
        if self.part_open:
            self.part_open = False
            self.seq += 1
            self.ids, self._ids_of = {}, {}

    def compact(self) -> None:
        """Thin base.bht and every closed part into a new base.bht, then delete those parts."""
        if self.seq is None:
            return
        self.close_part()
        through = self.seq - 1
        by_section = tl.read_records(self.run_dir, self.files)
        if self.protected:
            steps = np.fromiter(self.protected, np.int64)
            for recs in by_section.values():
                recs["flags"][np.isin(recs["step"], steps)] |= tl.PINNED
        thinned = tl.thin_all(by_section, self.clock(), cap=self.cap)
        self.files.write_atomic(self._join(tl.BASE_FILE), tl.base_bytes(thinned, through))
        for name in self.files.listdir(self.directory):
            seq = tl.part_seq(name)
            if seq is not None and seq <= through:
                self.files.remove(self._join(name))
        self.parts_bytes = 0

    def add_anomaly(self, record: dict[str, Any], most: int | None = None) -> None:
        """Append one anomaly record unless the file holds ``most`` already, earlier writers' included
        (remote: anomalies.jsonl is written whole, it is small)."""
        if self.seq is None:
            self._start()
        if self.anomaly_lines is None or (most is not None and self.anomaly_lines >= most):
            return
        self.anomaly_lines += 1
        line = tl.anomaly_line(record)
        path = self._join(tl.ANOMALIES_FILE)
        if self.remote:
            self.anomalies.append(line)
            self.files.write_atomic(path, self.anomalies)
            return
        fd = open_for_append(path)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Upload or close what is open."""
        self.close_part()
