"""File access for both sides, behind one small interface: bounded reads and atomic writes.

Every file another process reads is written to a temporary name in the same
directory and moved into place with ``os.replace``, so a reader sees the old
file or the new one, never a mix. Every read is bounded: only regular files
are read (opened non-blocking, checked with ``fstat``), and never more than a
cap the caller names, so nothing a logdir holds (a FIFO, a device, a sparse
4 GB file) can block or swamp the reader.

Example::

    from beholder_plugin.protocol.files import LOCAL
    LOCAL.write_atomic("run/plugins/beholder/x.json", [b"{}"])
    LOCAL.read("run/plugins/beholder/x.json", limit=4096)   # b'{}'
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Sequence

# Directory listings stop after this many entries.
MAX_LIST_ENTRIES = 100_000
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


class FileRefused(ValueError):
    """A file that is not read: not a regular file, or larger than its cap. The message names it."""


def _open_regular(path: str, limit: int | None) -> tuple[int, os.stat_result]:
    """An fd of a regular file no larger than limit; FileRefused otherwise (FileNotFoundError passes)."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(f"{os.path.basename(path)} is not a regular file")
        if limit is not None and st.st_size > limit:
            raise FileRefused(
                f"{os.path.basename(path)} is {st.st_size} bytes, more than the {limit} bytes allowed"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def identity_of(st: os.stat_result) -> tuple[int, int, int]:
    """(inode, size, mtime_ns): what changes whenever a file is replaced or rewritten."""
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class LocalFiles:
    """The local file system (the fast path). Remote stores implement the same methods."""

    def identity(self, path: str) -> tuple | None:
        """A key that changes whenever the file is replaced, or None when there is no file."""
        try:
            return identity_of(os.stat(path))
        except OSError:
            return None

    def read(self, path: str, limit: int) -> bytes | None:
        """The whole file (at most limit bytes, else FileRefused), or None when there is no file."""
        try:
            fd, st = _open_regular(path, limit)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:  # grew after fstat
            raise FileRefused(f"{os.path.basename(path)} is more than the {limit} bytes allowed")
        return data

    def read_with_identity(self, path: str, limit: int) -> tuple[bytes, tuple] | None:
        """The file's bytes and the identity of exactly what was read, or None when there is no file."""
        try:
            fd, st = _open_regular(path, limit)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise FileRefused(f"{os.path.basename(path)} is more than the {limit} bytes allowed")
        return data, identity_of(st)

    def read_range(self, path: str, offset: int, length: int, limit: int) -> bytes | None:
        """length bytes at offset of a regular file no larger than limit; None when there is no file."""
        try:
            fd, _ = _open_regular(path, limit)
        except FileNotFoundError:
            return None
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def write_atomic(self, path: str, buffers: Sequence[bytes | memoryview]) -> int:
        """Replace path by these bytes atomically, creating its directory if needed; returns the size."""
        directory, name = os.path.split(path)
        tmp = os.path.join(directory, temp_name(name))
        size = 0
        try:
            try:
                f = open(tmp, "wb")
            except FileNotFoundError:  # first write, or the directory was deleted: make it
                os.makedirs(directory, exist_ok=True)
                f = open(tmp, "wb")
            with f:
                for chunk in buffers:
                    size += f.write(chunk)
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return size

    def link_atomic(self, source: str, path: str) -> None:
        """Replace path by a hard link to source atomically (OSError where links are not supported)."""
        directory, name = os.path.split(path)
        tmp = os.path.join(directory, temp_name(name))
        try:
            os.link(source, tmp)
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise

    def remove(self, path: str) -> None:
        """Delete a file; a file that is already gone is fine."""
        _unlink_quietly(path)

    def makedirs(self, path: str) -> None:
        """Create a directory and its parents."""
        os.makedirs(path, exist_ok=True)

    def listdir(self, path: str) -> list[str]:
        """Names of the regular files in a directory (at most MAX_LIST_ENTRIES); [] if there is none."""
        out: list[str] = []
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    if len(out) >= MAX_LIST_ENTRIES:
                        break
                    try:
                        if entry.is_file(follow_symlinks=False):
                            out.append(entry.name)
                    except OSError:
                        continue
        except (FileNotFoundError, NotADirectoryError):
            return []
        return out

    def remove_stale_temp_files(self, directory: str, older_than: float = 60.0) -> int:
        """Delete temporary files left by writers killed mid-write; returns how many were removed.

        A temporary file lives only for the milliseconds of one write, so one
        older than ``older_than`` seconds belongs to a writer that died.
        """
        removed = 0
        cutoff = time.time() - older_than
        for name in self.listdir(directory):
            if not is_temp_name(name):
                continue
            path = os.path.join(directory, name)
            try:
                if os.lstat(path).st_mtime < cutoff:
                    os.unlink(path)
                    removed += 1
            except OSError:
                pass
        return removed


def temp_name(name: str) -> str:
    """The temporary name a writer uses for name: one per process and thread, hidden, ending .tmp."""
    return f".{name}.{os.getpid()}-{threading.get_ident()}.tmp"


def is_temp_name(name: str) -> bool:
    """Whether a file name is a writer's temporary file (readers skip them)."""
    return name.startswith(".") and name.endswith(".tmp")


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


LOCAL = LocalFiles()


def files_for(path: str | os.PathLike) -> LocalFiles:
    """The file access for a path: the local file system; a URL is refused rather than written locally."""
    text = os.fspath(path)
    scheme, sep, _ = text.partition("://")
    if sep and scheme.isidentifier():
        if scheme == "file":
            return LOCAL
        raise ValueError(
            f"{text!r} is a {scheme}:// URL; this version of Beholder writes to local directories "
            "only, and would otherwise create a local directory named '{scheme}:'"
        )
    return LOCAL
