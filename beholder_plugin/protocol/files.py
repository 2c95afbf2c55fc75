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
from typing import Any

# A read during which the file changed is tried this many times.
# Every frame file starts with this many bytes that no other frame shares (see frame_format).
STAMP_BYTES = 128
# A file rewritten in place starts with these bytes until it is whole again.
_REWRITING = b"\x00" * 8
_RETRIES = 3
# Directory listings stop after this many entries.
MAX_LIST_ENTRIES = 100_000
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC
_WRITE_FLAGS = _CLOEXEC | getattr(os, "O_BINARY", 0)  # (O_BINARY: Windows)
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _WRITE_FLAGS
_VECTORED = hasattr(os, "writev") and hasattr(os, "pwritev")


class FileRefused(ValueError):
    """A file that is not read: not a regular file, or larger than its cap. The message names it."""


# Directories whose files are checked once opened (confine()): (the name as given, its real path).
_CONFINED: list[tuple[str, str]] = []
_CONFINED_LOCK = threading.Lock()


def confine(root: str | os.PathLike) -> None:
    """From now on, every file opened under root must turn out, once open, to lie inside root.

    The server confines its logdir: a name is checked before it is opened
    (runs.py), and what was opened is checked again here from the open file
    itself, so a symlink swapped in between is found out (docs/reliability.md).
    """
    given = os.path.abspath(os.fspath(root))
    pair = (given.rstrip(os.sep) + os.sep, os.path.realpath(given))
    with _CONFINED_LOCK:
        if pair not in _CONFINED:
            _CONFINED.append(pair)


def _confined_root(path: str) -> str | None:
    """The real path of the confined directory path lies under, if any (the deepest one)."""
    if not _CONFINED:
        return None
    full = os.path.abspath(path)
    found = None
    for given, real in _CONFINED:
        if full.startswith(given) or full.startswith(real.rstrip(os.sep) + os.sep):
            if found is None or len(real) > len(found):
                found = real
    return found


def _opened_path(fd: int) -> str | None:
    """The real path of what an open fd is (Linux /proc, macOS F_GETPATH), or None where neither works."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        pass
    try:
        import fcntl

        getpath = getattr(fcntl, "F_GETPATH", None)  # macOS only
        if getpath is None:
            return None
        raw = fcntl.fcntl(fd, getpath, bytes(4096))
        return os.fsdecode(raw.split(b"\0", 1)[0])
    except (ImportError, OSError, ValueError):
        return None


def check_opened(fd: int, path: str) -> None:
    """FileRefused unless the file open as fd lies inside the confined directory path is under.

    Where the system cannot name an open file, the name is resolved again and
    must still be the same file as the one open (same device and inode).
    """
    root = _confined_root(path)
    if root is None:
        return
    real = _opened_path(fd)
    if real is None:
        real = os.path.realpath(path)
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(real))
        except OSError:
            same = False
        if not same:
            raise FileRefused(f"{os.path.basename(path)} changed while it was opened")
    if not (real == root or real.startswith(root.rstrip(os.sep) + os.sep)):
        raise FileRefused(f"{os.path.basename(path)} leads outside the logdir")


_REALPATHS: dict[str, tuple[float, str]] = {}
REALPATH_TTL = 1.0  # seconds a remembered real path is used


def recent_realpath(path: str) -> str:
    """os.path.realpath(path) as found in the last REALPATH_TTL s: one lstat per path component saved.

    For the logdir itself and for the server's cache keys, never for the check that a
    run or file lies inside the logdir (that one looks every time).
    """
    now = time.monotonic()
    found = _REALPATHS.get(path)
    if found is not None and now - found[0] < REALPATH_TTL:
        return found[1]
    if len(_REALPATHS) > 4096:
        _REALPATHS.clear()
    real = os.path.realpath(path)
    _REALPATHS[path] = (now, real)
    return real


def check_resolved(real: str, path: str) -> None:
    """FileRefused when path lies under a confined directory but its resolved real path does not.

    For callers that resolve a name once and then use the result (the
    server's frame cache keys files by real path): a link swapped in during
    that resolution must not carry the key out of the logdir.
    """
    root = _confined_root(path)
    if root is not None and not (real == root or real.startswith(root.rstrip(os.sep) + os.sep)):
        raise FileRefused(f"{os.path.basename(path)} leads outside the logdir")


def open_checked(path: str, flags: int = _OPEN_FLAGS) -> int:
    """os.open, then check_opened: an fd of a file inside the confined directory (FileRefused if not)."""
    fd = os.open(path, flags)
    try:
        check_opened(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_regular(path: str, limit: int | None) -> tuple[int, os.stat_result]:
    """An fd of a regular file no larger than limit; FileRefused otherwise (FileNotFoundError passes)."""
    fd = open_checked(path)
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
    """The local file system (the fast path). Remote stores implement the same methods (remote_files)."""

    remote = False

    def identity(self, path: str) -> tuple | None:
        """A key that changes whenever the file is replaced, or None when there is no file."""
        try:
            return identity_of(os.stat(path))
        except OSError:
            return None

    def read(self, path: str, limit: int) -> bytes | None:
        """The whole file (at most limit bytes, else FileRefused), or None when there is no file."""
        found = self.read_with_identity(path, limit)
        return None if found is None else found[0]

    def read_with_identity(self, path: str, limit: int) -> tuple[bytes, tuple] | None:
        """The file's bytes and the identity of exactly what was read, or None when there is no file.

        The trainer recycles dropped history files by rewriting them in place
        (see write_atomic), and every frame begins with its own writer id,
        frame id and time. So a read is whole if the file's first bytes are
        the same after it and are not the "being rewritten" mark; otherwise
        it is done again.
        """
        for _ in range(_RETRIES):
            try:
                fd, st = _open_regular(path, limit)
            except FileNotFoundError:
                return None
            with os.fdopen(fd, "rb") as f:
                # One byte more than fstat saw shows growth; asking for limit + 1 would have Python
                # allocate (and then shrink) a buffer of the whole limit on every read.
                data = f.read(min(st.st_size, limit) + 1)
                check = os.pread(f.fileno(), STAMP_BYTES, 0)
                after = os.fstat(f.fileno())
            if len(data) > limit:  # grew after fstat
                raise FileRefused(f"{os.path.basename(path)} is more than the {limit} bytes allowed")
            if check == data[:STAMP_BYTES] and not data.startswith(_REWRITING) and len(data) == after.st_size:
                return data, identity_of(after)
        raise FileRefused(f"{os.path.basename(path)} kept changing while it was read")

    def read_range(self, path: str, offset: int, length: int, limit: int,
                   identity: tuple | None = None) -> bytes | None:
        """length bytes at offset of a regular file no larger than limit; None when there is no file.

        With ``identity``, FileRefused unless the file is still that one (so a
        cached header and the bytes read belong to the same frame). The
        file's first bytes are compared before and after, as in read_with_identity.
        """
        for _ in range(_RETRIES):
            try:
                fd, st = _open_regular(path, limit)
            except FileNotFoundError:
                return None
            try:
                if identity is not None and identity_of(st) != identity:
                    raise FileRefused(f"{os.path.basename(path)} was replaced")
                before = os.pread(fd, STAMP_BYTES, 0)
                data = os.pread(fd, length, offset)
                if os.pread(fd, STAMP_BYTES, 0) == before and not before.startswith(_REWRITING):
                    return data
            finally:
                os.close(fd)
        raise FileRefused(f"{os.path.basename(path)} kept changing while it was read")

    def write_atomic(self, path: str, buffers: Sequence[bytes | memoryview], reuse: str | None = None) -> int:
        """Replace path by these bytes atomically, creating its directory if needed; returns the size.

        ``reuse`` names a spare file (a temporary name in the same directory)
        to rewrite in place instead of creating a new one: on this kind of
        file system, filling fresh pages costs ten times more than
        overwriting pages a file already has.
        """
        directory, name = os.path.split(path)
        tmp = os.path.join(directory, temp_name(name))
        try:
            fd = None
            in_place = False
            if reuse is not None:
                try:
                    os.replace(reuse, tmp)
                    fd = os.open(tmp, os.O_RDWR | _WRITE_FLAGS)
                    in_place = True
                except OSError:
                    fd = None
            if in_place and not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or a device where the spare
                os.close(fd)  # was: nothing to rewrite (its writes failed, "Illegal seek"); it goes, and
                fd, in_place = None, False  # a failure to remove it raises before any open of that name,
                os.unlink(tmp)  # which would wait on a FIFO for good
            if fd is None:
                try:
                    fd = os.open(tmp, _CREATE_FLAGS, 0o666)
                except FileNotFoundError:  # first write, or the directory was deleted: make it
                    os.makedirs(directory, exist_ok=True)
                    fd = os.open(tmp, _CREATE_FLAGS, 0o666)
            try:
                check_opened(fd, tmp)  # a folder swapped for a link out: nothing is written there
            except BaseException:
                os.close(fd)
                raise
            try:
                size = _rewrite_in_place(fd, buffers) if in_place else _write_all(fd, buffers)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return size

    def rewrite_in_place(self, path: str, buffers: Sequence[bytes | memoryview]) -> bool:
        """Overwrite a file where its bytes lie, as readers can tell (_rewrite_in_place); False if not done.

        For a full disk: nothing is done when the new bytes would need more
        space than the file already has, or when the file has other names
        (a kept history frame). A failure part way puts the old bytes back.
        """
        fd = open_checked(path, os.O_RDWR | _WRITE_FLAGS)
        try:
            st = os.fstat(fd)
            size = sum(memoryview(b).nbytes for b in buffers)
            room = max(st.st_size, getattr(st, "st_blocks", 0) * 512)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or size > room:
                return False
            old = os.pread(fd, st.st_size, 0)
            try:
                _rewrite_in_place(fd, buffers)
            except OSError:
                _rewrite_in_place(fd, [old])
                raise
            return True
        finally:
            os.close(fd)

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

    def list_sizes(self, path: str) -> dict[str, int]:
        """Name to size of the regular files in a directory; {} if there is none."""
        out = {}
        for name in self.listdir(path):
            try:
                out[name] = os.stat(os.path.join(path, name)).st_size
            except OSError:
                continue
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


def _write_all(fd: int, buffers: Sequence[bytes | memoryview], offset: int | None = None) -> int:
    """Write the buffers in order (at offset, else at the file position); returns the bytes written.

    One ``writev`` for a whole frame where the system has it (one system call
    instead of one per buffer), repeated only if the kernel writes less.
    """
    views = [v for v in (memoryview(b).cast("B") for b in buffers) if v.nbytes]
    total = sum(v.nbytes for v in views)
    position = offset
    while views:
        batch = views if _VECTORED else views[:1]
        if position is None:
            n = os.writev(fd, batch) if _VECTORED else os.write(fd, batch[0])
        else:
            n = os.pwritev(fd, batch, position) if _VECTORED else _pwrite(fd, batch[0], position)
            position += n
        while views and n >= views[0].nbytes:  # drop what was written
            n -= views[0].nbytes
            views.pop(0)
        if n:
            views[0] = views[0][n:]
    return total


def _pwrite(fd: int, data: bytes | memoryview, position: int) -> int:
    """os.pwrite, or a seek and a write where there is none (Windows)."""
    if hasattr(os, "pwrite"):
        return os.pwrite(fd, data, position)
    os.lseek(fd, position, os.SEEK_SET)
    return os.write(fd, data)


def _rewrite_in_place(fd: int, buffers: Sequence[bytes | memoryview]) -> int:
    """Overwrite an open file so a concurrent reader can tell: mark the start, write the rest, then the start.

    A reader that saw any byte of the new contents finds, after its read,
    either the mark or new first bytes, and reads again (LocalFiles.read_with_identity).
    """
    data = [memoryview(b).cast("B") for b in buffers]
    head = bytes(data[0][:STAMP_BYTES]) if data else b""
    _pwrite(fd, _REWRITING, 0)
    size = len(head) + _write_all(fd, [data[0][len(head):], *data[1:]] if data else [], offset=len(head))
    os.ftruncate(fd, size)
    _pwrite(fd, head, 0)
    return size


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


def files_for(path: str | os.PathLike) -> Any:
    """The file access for a path: LOCAL for local paths (and file:// URLs), RemoteFiles for other URLs.

    A URL whose scheme's fsspec implementation is not installed raises
    remote_files.BackendMissing (an ImportError) naming the package to
    install; nothing is ever written to a local directory named like the URL.
    """
    text = os.fspath(path)
    scheme, sep, _ = text.partition("://")
    if sep and scheme.isidentifier() and scheme.lower() != "file":
        from beholder_plugin.protocol.remote_files import remote_files

        return remote_files(text)
    return LOCAL
