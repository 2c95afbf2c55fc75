"""Finding Beholder runs under a TensorBoard logdir and resolving run names safely."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass

from beholder_plugin.protocol.runfiles import FRAME_FILE, plugin_dir

logger = logging.getLogger("beholder")

# Directories that never hold runs: TensorBoard's own plugin data and hidden folders.
_SKIP_DIRS = ("plugins",)
# Bounds of a logdir scan: levels below the logdir, and directory entries read in all.
MAX_SCAN_DEPTH = 32
MAX_SCAN_ENTRIES = 100_000


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

    @property
    def beholder_dir(self) -> str:
        """The run's plugins/beholder directory."""
        return plugin_dir(self.path)

    def frame_mtime(self) -> float | None:
        """Modification time of the run's latest frame, or None when it has none."""
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


class RunIndex:
    """The runs of one logdir, rescanned at most every `max_age` seconds."""

    def __init__(self, logdir: str | None, max_age: float = 5.0):
        self.logdir = os.path.abspath(os.path.expanduser(logdir)) if logdir else None
        self.max_age = max_age
        self._lock = threading.Lock()
        self._runs: list[Run] = []
        self._scanned_at = float("-inf")

    def runs(self, fresh: bool = False) -> list[Run]:
        """The runs found by the latest scan, rescanning if it is older than max_age (or fresh)."""
        if self.logdir is None:
            return []
        with self._lock:
            now = time.monotonic()
            if fresh or now - self._scanned_at > self.max_age:
                self._runs = scan_runs(self.logdir)
                self._scanned_at = now
            return list(self._runs)

    def resolve(self, name: str | None) -> Run:
        """The run called `name`; RunError if it is missing, not a run, or outside the logdir."""
        if self.logdir is None:
            raise RunError("TensorBoard was started without a local --logdir", 404)
        if not name:
            raise RunError("missing query parameter 'run'")
        if "\x00" in name or os.path.isabs(name) or (os.altsep and name.startswith(os.altsep)):
            raise RunError(f"run {name!r} is not a path relative to the logdir")
        root = os.path.realpath(self.logdir)
        path = os.path.normpath(os.path.join(self.logdir, name))
        # Check both the run directory and its plugins/beholder: either may be a symlink.
        for candidate in (path, plugin_dir(path)):
            if not _is_inside(os.path.realpath(candidate), root):
                raise RunError(f"run {name!r} is outside the logdir", 403)
        if not os.path.isdir(plugin_dir(path)):
            raise RunError(f"no Beholder run called {name!r} in the logdir", 404)
        return Run(name=os.path.relpath(path, self.logdir), path=path)

    def file_path(self, run: Run, name: str) -> str:
        """The path of a file (or folder) in the run's plugins/beholder; RunError (403) if it leads out.

        ``name`` may have a folder part ("history/f-...bin"): any symlink on
        the way is resolved, and the result must lie inside the logdir.
        """
        path = os.path.join(run.beholder_dir, name)
        if not _is_inside(os.path.realpath(path), os.path.realpath(self.logdir)):
            raise RunError(f"{name} of run {run.name!r} leads outside the logdir", 403)
        return path


def is_writable(directory: str) -> bool:
    """Whether this process can create files in directory (tried for real: root ignores modes)."""
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
