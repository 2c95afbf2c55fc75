"""Finding Beholder runs under a TensorBoard logdir and resolving run names safely.

A logdir that is a URL other than file:// (``s3://bucket/logs``, ``gs://...``,
any fsspec URL) is listed and read through fsspec (docs/remote.md): the same
run names, statuses and bounds, with object listings instead of directory
scans and no symlinks to follow.
"""

from __future__ import annotations

import logging
import os
import posixpath
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from beholder_plugin.protocol.files import files_for, recent_realpath
from beholder_plugin.protocol.remote_files import BackendMissing, is_remote, normalize_location
from beholder_plugin.protocol.runfiles import FRAME_FILE, plugin_dir, read_ended

logger = logging.getLogger("beholder")

# Directories that never hold runs: TensorBoard's own plugin data and hidden folders.
_SKIP_DIRS = ("plugins",)
# Bounds of a logdir scan: levels below the logdir, and directory entries read in all.
MAX_SCAN_DEPTH = 32
MAX_SCAN_ENTRIES = 100_000
# A frame fresher than this is a running trainer's: its run's ended.json is not looked at.
ENDED_CHECK_AGE = 2.0
# How long an unchanged frame's run is believed not to have ended before ended.json is read again.
ENDED_RECHECK_SECONDS = 10.0
# Runs whose ended.json answer is remembered (past that, all are forgotten and read again when asked).
MAX_ENDED_KEPT = 4096


class RunError(ValueError):
    """A run name that is missing, malformed, or resolves outside the logdir."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Run:
    """One run: its TensorBoard-style name and its directory."""

    name: str
    path: str
    files: Any = field(default=None, compare=False, repr=False)  # RemoteFiles for a remote run

    @property
    def beholder_dir(self) -> str:
        """The run's plugins/beholder directory."""
        return plugin_dir(self.path)

    def frame_mtime(self) -> float | None:
        """Modification time of the run's latest frame, or None when it has none."""
        if self.files is not None:
            return self.files.mtime(posixpath.join(self.beholder_dir, FRAME_FILE))
        try:
            return os.stat(os.path.join(self.beholder_dir, FRAME_FILE)).st_mtime
        except OSError:
            return None


def _is_inside(path: str, root: str) -> bool:
    """Whether real path `path` is `root` or below it (both already realpaths)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def scan_runs(logdir: str) -> list[Run]:
    """Every directory under logdir (itself included) holding plugins/beholder/ inside it, by name.

    The walk is bounded: it never follows symlinked directories (so no loop),
    goes at most MAX_SCAN_DEPTH levels down, and reads at most
    MAX_SCAN_ENTRIES directory entries in all; what lies beyond is not listed
    (logged once per scan). Names that are not valid UTF-8 are skipped.
    """
    runs: list[Run] = []
    if not os.path.isdir(logdir):
        return runs
    root = os.path.realpath(logdir)
    pending = [(logdir, 0)]
    seen = 0
    while pending:
        dirpath, depth = pending.pop()
        beholder_dir = plugin_dir(dirpath)
        # A plugins/beholder that is a symlink out of the logdir is not listed: resolve() refuses it.
        if os.path.isdir(beholder_dir) and _is_inside(os.path.realpath(beholder_dir), root):
            runs.append(Run(name=os.path.relpath(dirpath, logdir), path=dirpath))
        if depth >= MAX_SCAN_DEPTH:
            continue
        try:
            with os.scandir(dirpath) as entries:
                for entry in entries:
                    seen += 1
                    if seen > MAX_SCAN_ENTRIES:
                        logger.warning("Beholder: stopped scanning %s at %d entries", logdir, seen - 1)
                        pending.clear()
                        break
                    name = entry.name
                    if name in _SKIP_DIRS or name.startswith(".") or not _is_utf8(name):
                        continue
                    try:
                        if entry.is_dir(follow_symlinks=False):  # symlinked folders are not walked
                            pending.append((entry.path, depth + 1))
                    except OSError:
                        continue
        except OSError:
            continue
    runs.sort(key=lambda run: run.name)
    return runs


def _is_utf8(name: str) -> bool:
    """False for a file name holding bytes that are not UTF-8 (decoded by Python as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def scan_remote_runs(logdir: str, files: Any) -> list[Run]:
    """scan_runs for a remote logdir: one listing per folder, the same depth and entry bounds."""
    runs: list[Run] = []
    pending = [(logdir, 0)]
    seen = 0
    while pending:
        dirpath, depth = pending.pop()
        try:
            entries = files.entries(dirpath)
        except OSError as exc:
            logger.warning("Beholder: cannot list %s: %s", dirpath, exc)
            continue
        names = [posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory"]
        seen += len(entries)
        if "plugins" in names and "beholder" in _remote_subdirs(files, posixpath.join(dirpath, "plugins")):
            runs.append(Run(name=_relative(dirpath, logdir), path=dirpath, files=files))
        if seen > MAX_SCAN_ENTRIES:
            logger.warning("Beholder: stopped scanning %s at %d entries", logdir, seen)
            break
        if depth < MAX_SCAN_DEPTH:
            pending.extend(
                (posixpath.join(dirpath, name), depth + 1)
                for name in names
                if name not in _SKIP_DIRS and not name.startswith(".")
            )
    runs.sort(key=lambda run: run.name)
    return runs


def _remote_subdirs(files: Any, path: str) -> list[str]:
    """The folder names directly under a remote path ([] when it cannot be listed)."""
    try:
        return files.subdirs(path)
    except OSError:
        return []


def _relative(path: str, logdir: str) -> str:
    """A remote run's name: its path below the logdir ("." for the logdir itself)."""
    return "." if path == logdir else path[len(logdir.rstrip("/")) + 1:]


class RunIndex:
    """The runs of one logdir, rescanned at most every `max_age` seconds."""

    def __init__(self, logdir: str | None, max_age: float = 5.0):
        self.files: Any = None  # RemoteFiles when the logdir is a remote URL
        self.error: str | None = None  # why a remote logdir cannot be read (a backend not installed)
        if logdir and is_remote(logdir):
            self.logdir: str | None = normalize_location(logdir)
            try:
                self.files = files_for(self.logdir)
            except (BackendMissing, ValueError) as exc:
                self.error = str(exc)
                logger.error("Beholder: cannot read the logdir: %s", exc)
        elif logdir:
            self.logdir = os.path.abspath(os.path.expanduser(normalize_location(logdir)))
        else:
            self.logdir = None
        self.max_age = max_age
        self._lock = threading.Lock()
        self._runs: list[Run] = []
        self._scanned_at = float("-inf")
        self._found: dict[str, float] = {}  # remote run paths resolved lately, and when

    def setup_hint(self) -> str | None:
        """What to do when TensorBoard's --logdir does not exist or is inside a run (its plugins/ or
        plugins/beholder/ folder, where no run can be found), else None."""
        if self.logdir is None or self.files is not None or self.error is not None:
            return None
        if not os.path.isdir(self.logdir):
            return (f"--logdir {self.logdir} does not exist (yet): a trainer writing under it creates it, "
                    f"e.g. Beholder(\"{os.path.join(self.logdir, 'run1')}\"). A typo? Start TensorBoard "
                    "with --logdir set to the folder your script's Beholder(...) writes its runs under")
        parent, name = os.path.split(self.logdir)
        if name == "beholder" and os.path.basename(parent) == "plugins":
            run = os.path.dirname(parent)
        elif name == "plugins" and os.path.isdir(os.path.join(self.logdir, "beholder")):
            run = parent
        else:
            return None
        return (f"--logdir {self.logdir} is inside the run {run}: start TensorBoard with "
                f"--logdir {os.path.dirname(run) or run} (the folder that holds the run folders)")

    @property
    def storage(self) -> str:
        """Where the logdir is: "local", or the scheme of a remote URL ("s3", "gs", ...)."""
        return "local" if self.files is None and self.error is None else self.logdir.partition("://")[0]

    def runs(self, fresh: bool = False) -> list[Run]:
        """The runs found by the latest scan, rescanning if it is older than max_age (or fresh)."""
        if self.logdir is None or self.error is not None:
            return []
        with self._lock:
            now = time.monotonic()
            if fresh or now - self._scanned_at > self.max_age:
                if self.files is not None:
                    self._runs = scan_remote_runs(self.logdir, self.files)
                else:
                    self._runs = scan_runs(self.logdir)
                self._scanned_at = now
            return list(self._runs)

    def expire(self) -> None:
        """Make the next runs() scan the logdir again, however recent the last scan."""
        with self._lock:
            self._scanned_at = float("-inf")

    def resolve(self, name: str | None) -> Run:
        """The run called `name`; RunError if it is missing, not a run, or outside the logdir."""
        if self.logdir is None:
            raise RunError("TensorBoard was started without a local --logdir", 404)
        if not name:
            raise RunError("missing query parameter 'run'")
        if "\x00" in name or os.path.isabs(name) or (os.altsep and name.startswith(os.altsep)):
            raise RunError(f"run {name!r} is not a path relative to the logdir")
        if self.error is not None:
            raise RunError(self.error, 500)
        if self.files is not None:
            return self._resolve_remote(name)
        root = recent_realpath(self.logdir)
        path = os.path.normpath(os.path.join(self.logdir, name))
        # Check both the run directory and its plugins/beholder: either may be a symlink.
        for candidate in (path, plugin_dir(path)):
            if not _is_inside(os.path.realpath(candidate), root):
                raise RunError(f"run {name!r} is outside the logdir", 403)
        if not os.path.isdir(plugin_dir(path)):
            raise RunError(f"no Beholder run called {name!r} in the logdir", 404)
        return Run(name=os.path.relpath(path, self.logdir), path=path)

    def _resolve_remote(self, name: str) -> Run:
        """resolve() for a remote logdir: no symlinks, so "outside" means the name climbs out with "..".

        A run found by the latest scan costs no request; another name costs
        one listing (is there anything under its plugins/beholder/?).
        """
        norm = posixpath.normpath(name)
        if norm == ".." or norm.startswith("../"):
            raise RunError(f"run {name!r} is outside the logdir", 403)
        path = self.logdir if norm == "." else posixpath.join(self.logdir, norm)
        now = time.monotonic()
        with self._lock:
            fresh = now - self._scanned_at <= self.max_age
            known = (fresh and any(r.path == path for r in self._runs)) or (
                now - self._found.get(path, float("-inf")) <= self.max_age
            )
        try:
            found = known or self.files.isdir(plugin_dir(path))
        except OSError as exc:
            raise RunError(f"cannot read run {name!r}: {exc}", 500) from None
        if not found:
            raise RunError(f"no Beholder run called {name!r} in the logdir", 404)
        if not known:
            with self._lock:
                if len(self._found) >= 1024:  # names come from requests: keep the memo bounded
                    self._found.clear()
                self._found[path] = now
        return Run(name=norm, path=path, files=self.files)

    def file_path(self, run: Run, name: str) -> str:
        """The path of a file (or folder) in the run's plugins/beholder; RunError (403) if it leads out.

        ``name`` may have a folder part ("history/f-...bin"): any symlink on
        the way is resolved, and the result must lie inside the logdir.
        """
        if run.files is not None:  # no symlinks in object stores; the names come from this package
            inside = posixpath.normpath(name)
            if inside == ".." or inside.startswith(("../", "/")):
                raise RunError(f"{name} of run {run.name!r} leads outside the logdir", 403)
            return posixpath.join(run.beholder_dir, inside)
        path = os.path.join(run.beholder_dir, name)
        if not _is_inside(os.path.realpath(path), recent_realpath(self.logdir)):
            raise RunError(f"{name} of run {run.name!r} leads outside the logdir", 403)
        return path


def is_writable(directory: str) -> bool:
    """Whether this process can create files in directory (tried for real: root ignores modes)."""
    if is_remote(directory):
        return files_for(directory).writable(directory)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=directory)
    except OSError:
        return False
    os.close(fd)
    try:
        os.unlink(tmp)
    except OSError:
        pass
    return True


class EndedMarks:
    """Which runs' trainers closed their Beholder (ended.json, runfiles.read_ended): read only for runs
    whose latest frame is not fresh, and remembered per frame version, so that listing runs costs
    no more reads while they train."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, dict[str, Any] | None, float]] = {}  # path: (mtime, mark, read at)

    def of(self, run: Run, frame_mtime: float | None, age: float | None) -> dict[str, Any] | None:
        """The run's ended mark ({writer, frame_id, time}) when its frame is not fresh, else None."""
        if frame_mtime is None or age is None or age < ENDED_CHECK_AGE:
            return None
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(run.path)
        if seen is not None and seen[0] == frame_mtime and (seen[1] is not None
                                                            or now - seen[2] < ENDED_RECHECK_SECONDS):
            return seen[1]
        try:
            mark = read_ended(run.path)
        except Exception as exc:  # (a store error: the status line asks "trainer stopped?" as before)
            logger.debug("Beholder: cannot read %s's ended mark: %s", run.name, exc)
            mark = None
        with self._lock:
            if len(self._seen) >= MAX_ENDED_KEPT:
                self._seen.clear()
            self._seen[run.path] = (frame_mtime, mark, now)
        return mark
