"""Remote logdirs: any fsspec URL (gs://, s3://, az://, hdfs://, memory://) behind LocalFiles' interface.

Local paths keep the fast path of ``files.LocalFiles``; every other URL goes
through fsspec, for the trainer and the plugin alike. Object stores have no
rename and no hard links, but a whole-object PUT is atomic: a reader gets
the old object or the new one, so every write here is one ``pipe_file`` of
the whole file. A file's identity is its object metadata (size plus ETag,
generation, version or modification time, whichever the store gives), and
every read checks that metadata before and after, so bytes of two versions
are never returned together.

Every error of the backend (a botocore connection error, an HTTP error) is
raised as ``RemoteError``, an OSError, so callers handle an unreachable bucket
exactly like a full or read-only disk.

Example::

    from beholder_plugin.protocol.files import files_for
    files = files_for("s3://bucket/run1")        # RemoteFiles for s3 (needs s3fs)
    files.write_atomic("s3://bucket/run1/x.json", [b"{}"])
    files.read("s3://bucket/run1/x.json", limit=4096)   # b'{}'
"""

from __future__ import annotations

import datetime
import errno
import os
import posixpath
import secrets
import threading
from collections.abc import Sequence
from typing import Any, Callable

from beholder_plugin.protocol.files import MAX_LIST_ENTRIES, FileRefused

# The package that implements each scheme, and this distribution's extra that installs it.
SCHEME_PACKAGES = {
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "s3": "s3fs",
    "s3a": "s3fs",
    "az": "adlfs",
    "abfs": "adlfs",
    "abfss": "adlfs",
    "adl": "adlfs",
    "hdfs": "pyarrow",
    "viewfs": "pyarrow",
}
EXTRAS = {"gcsfs": "gcs", "s3fs": "s3"}
# Schemes that are object stores: no directories to make, writes are whole-object PUTs.
OBJECT_STORES = frozenset({"gs", "gcs", "s3", "s3a", "az", "abfs", "abfss", "adl"})
# Object metadata that changes whenever an object is replaced, most specific first.
_IDENTITY_KEYS = (
    "generation", "ETag", "etag", "md5Hash", "VersionId", "version_id",
    "LastModified", "last_modified", "updated", "mtime", "created",
)  # fmt: skip
_MTIME_KEYS = ("LastModified", "last_modified", "updated", "mtime", "created", "timeCreated")
# A read whose object changed under it is tried this many times.
_RETRIES = 3


class BackendMissing(ImportError):
    """The fsspec implementation of a URL's scheme is not installed; the message names the package."""


class RemoteError(OSError):
    """A remote store's failure (unreachable endpoint, HTTP error), raised as an OSError."""


# What stores say when credentials are missing, wrong or expired (S3 error codes, GCS and Azure words).
_CREDENTIAL_WORDS = (
    "expiredtoken", "token has expired", "invalidaccesskeyid", "signaturedoesnotmatch",
    "invalidtoken", "credentials", "unauthenticated", "authenticationfailed", "invalid_grant",
)


def _refused_credentials(exc: BaseException) -> bool:
    """Whether a backend error says the credentials were refused (not a plain permission problem)."""
    text = f"{type(exc).__name__} {exc}".lower()
    return any(word in text for word in _CREDENTIAL_WORDS)


def url_scheme(path: str | os.PathLike) -> str | None:
    """The scheme of a URL ("s3" for "s3://b/x"), or None for a local path."""
    text = os.fspath(path)
    scheme, sep, _ = text.partition("://")
    if sep and scheme.isidentifier():
        return scheme.lower()
    return None


def is_remote(path: str | os.PathLike) -> bool:
    """Whether a logdir or run path goes through fsspec (a URL other than file://)."""
    return url_scheme(path) not in (None, "file")


def normalize_location(path: str | os.PathLike) -> str:
    """A logdir or run as the code uses it: file:// URLs become local paths, URLs lose trailing slashes."""
    text = os.fspath(path)
    scheme = url_scheme(text)
    if scheme is None:
        return text
    if scheme == "file":
        local = text.partition("://")[2]
        return local if local.startswith("/") else "/" + local
    head, _, rest = text.partition("://")
    return f"{scheme}://{rest.rstrip('/')}" if rest.rstrip("/") else f"{scheme}://{rest}"


def missing_backend_message(url: str, scheme: str, detail: str = "") -> str:
    """What to install for a scheme whose fsspec implementation is missing."""
    package = SCHEME_PACKAGES.get(scheme)
    if package is None:
        return f"{url!r}: no installed fsspec implementation handles {scheme}:// URLs ({detail})"
    hint = f"pip install {package}"
    extra = EXTRAS.get(package)
    if extra:
        hint += f" (or pip install 'tensorboard-plugin-beholder[{extra}]')"
    return (
        f"{url!r} is a {scheme}:// URL, which needs the {package} package: {hint}. "
        "Nothing is written to a local directory instead."
    )


_CACHE: dict[str, RemoteFiles] = {}
_CACHE_LOCK = threading.Lock()


def remote_files(url: str) -> RemoteFiles:
    """The RemoteFiles for a URL's scheme (one per scheme); BackendMissing names what to install."""
    scheme = url_scheme(url)
    if scheme is None or scheme == "file":
        raise ValueError(f"{url!r} is not a remote URL")
    with _CACHE_LOCK:
        found = _CACHE.get(scheme)
        if found is None:
            found = _CACHE[scheme] = RemoteFiles(scheme, _filesystem(url, scheme))
        return found


def _filesystem(url: str, scheme: str) -> Any:
    """An fsspec filesystem for a scheme, with listing caches off (metadata must be fresh)."""
    import fsspec

    try:
        cls = fsspec.get_filesystem_class(scheme)
    except ImportError as exc:
        raise BackendMissing(missing_backend_message(url, scheme, str(exc))) from None
    except ValueError as exc:  # "Protocol not known"
        raise ValueError(f"{url!r}: {exc}; Beholder reads and writes local paths and fsspec URLs") from None
    try:
        return cls(use_listings_cache=False)
    except TypeError:  # an implementation without listing caches
        return cls()


def _timestamp(value: Any) -> float | None:
    """Seconds since the epoch from a datetime, an ISO string or a number; None if it is none of them."""
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) / 1000.0 if value > 1e11 else float(value)  # milliseconds on some stores
    if isinstance(value, str):
        try:
            return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def modified_time(info: dict[str, Any]) -> float | None:
    """An object's modification time (Unix seconds) from its listing or info entry, or None."""
    times = (_timestamp(info.get(key)) for key in _MTIME_KEYS)
    return next((t for t in times if t is not None), None)


def identity_of_info(info: dict[str, Any]) -> tuple:
    """A key that changes whenever the object is replaced: its size and every version-like field."""
    out: list[Any] = [int(info.get("size") or 0)]
    for key in _IDENTITY_KEYS:
        value = info.get(key)
        if value is not None:
            out.append((key, str(value)))
    return tuple(out)


class RemoteFiles:
    """One fsspec file system with the methods of LocalFiles that Beholder uses."""

    remote = True

    def __init__(self, scheme: str, fs: Any) -> None:
        self.scheme = scheme
        self.fs = fs
        self.object_store = scheme in OBJECT_STORES

    # ------------------------------------------------------------ errors

    def _call(self, path: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """fn(*args), with any failure of the backend raised as an OSError that names path."""
        try:
            return fn(*args, **kwargs)
        except (FileNotFoundError, FileRefused, RemoteError):
            raise
        except Exception as exc:
            if _refused_credentials(exc):
                raise RemoteError(
                    errno.EACCES,
                    f"{path}: the store refused the credentials ({type(exc).__name__}: {exc}); refresh "
                    "or fix them (for S3 the AWS_* variables or ~/.aws, for GCS gcloud auth "
                    "application-default login); frames resume once they work",
                ) from exc
            raise self._remote_error(path, exc) from exc

    @staticmethod
    def _remote_error(path: str, exc: Exception) -> RemoteError:
        """The RemoteError for a backend failure, naming the object.

        OSErrors keep their code; others (ConnectionError without a code,
        botocore, aiohttp, google-auth errors) are named by type.
        """
        if isinstance(exc, OSError) and exc.errno is not None:
            return RemoteError(exc.errno, f"{path}: {exc.strerror or exc}")
        return RemoteError(f"{path}: {type(exc).__name__}: {exc}")

    def info(self, path: str) -> dict[str, Any] | None:
        """The object's metadata, or None when there is none."""
        try:
            return self._call(path, self.fs.info, path)
        except FileNotFoundError:
            return None

    # ------------------------------------------------------------ reading

    def identity(self, path: str) -> tuple | None:
        """A key that changes whenever the object is replaced, or None when there is no object."""
        try:
            info = self.info(path)
        except OSError:
            return None
        return None if info is None or info.get("type") != "file" else identity_of_info(info)

    def _checked(self, path: str, limit: int) -> dict[str, Any] | None:
        """The metadata of a file no larger than limit; None if there is none; FileRefused otherwise."""
        info = self.info(path)
        if info is None:
            return None
        name = posixpath.basename(path)
        if info.get("type") != "file":
            raise FileRefused(f"{name} is not a regular file")
        size = int(info.get("size") or 0)
        if size > limit:
            raise FileRefused(f"{name} is {size} bytes, more than the {limit} bytes allowed")
        return info

    def _range(self, path: str, start: int, end: int) -> bytes:
        """Bytes start..end (exclusive) of an object that holds at least end bytes."""
        if end <= start:
            return b""
        return bytes(self._call(path, self.fs.cat_file, path, start=start, end=end))

    def read(self, path: str, limit: int) -> bytes | None:
        """The whole object (at most limit bytes, else FileRefused), or None when there is none."""
        found = self.read_with_identity(path, limit)
        return None if found is None else found[0]

    def read_with_identity(self, path: str, limit: int) -> tuple[bytes, tuple] | None:
        """The object's bytes and the identity of exactly what was read, or None when there is none.

        The metadata is read before and after the bytes; if it changed, the
        object was replaced during the read and it is read again.
        """
        for _ in range(_RETRIES):
            info = self._checked(path, limit)
            if info is None:
                return None
            size = int(info.get("size") or 0)
            data = self._range(path, 0, size)
            after = self.info(path)
            if after is None:
                return None
            identity = identity_of_info(info)
            if identity_of_info(after) == identity and len(data) == size:
                return data, identity
        raise FileRefused(f"{posixpath.basename(path)} kept changing while it was read")

    def read_range(self, path: str, offset: int, length: int, limit: int,
                   identity: tuple | None = None) -> bytes | None:
        """length bytes at offset (fewer at the end) of an object no larger than limit; None if there is none.

        With ``identity``, FileRefused unless the object is still that one,
        before and after the bytes are read.
        """
        name = posixpath.basename(path)
        for _ in range(_RETRIES):
            info = self._checked(path, limit)
            if info is None:
                return None
            before = identity_of_info(info)
            if identity is not None and before != identity:
                raise FileRefused(f"{name} was replaced")
            size = int(info.get("size") or 0)
            data = self._range(path, min(offset, size), min(offset + length, size))
            after = self.info(path)
            if after is None:
                return None
            if identity_of_info(after) == before:
                return data
            if identity is not None:
                raise FileRefused(f"{name} was replaced")
        raise FileRefused(f"{name} kept changing while it was read")

    def mtime(self, path: str) -> float | None:
        """The object's modification time (Unix seconds), or None when there is none."""
        try:
            info = self.info(path)
        except OSError:
            return None
        return None if info is None else modified_time(info)

    # ------------------------------------------------------------ writing

    def write_atomic(self, path: str, buffers: Sequence[bytes | memoryview], reuse: str | None = None) -> int:
        """Replace the object by these bytes with one whole-object PUT; returns the size.

        ``reuse`` (a local optimisation) is ignored: objects are never rewritten in place.
        """
        data = b"".join(memoryview(b).cast("B") for b in buffers)
        self._call(path, self.fs.pipe_file, path, data)
        return len(data)

    def link_atomic(self, source: str, path: str) -> None:
        """Object stores have no hard links: always an OSError (callers copy or write instead)."""
        raise RemoteError(f"{path}: {self.scheme}:// has no hard links")

    def copy(self, source: str, path: str) -> None:
        """Replace path by a copy of source made by the store itself (no bytes through this process)."""
        self._call(path, self.fs.copy, source, path)

    def upload(self, local_path: str, path: str) -> None:
        """Upload a local file or folder (recursively) to path."""
        self._call(path, self.fs.put, local_path, path, recursive=os.path.isdir(local_path))

    def remove(self, path: str) -> None:
        """Delete an object; one that is already gone, or cannot be deleted, is left (as LocalFiles does)."""
        try:
            self._call(path, self.fs.rm_file, path)
        except OSError:
            pass

    def makedirs(self, path: str) -> None:
        """Object stores have no directories; other file systems make it."""
        if not self.object_store:
            self._call(path, self.fs.makedirs, path, exist_ok=True)

    def writable(self, directory: str) -> bool:
        """Whether an object can be written in directory (tried for real, then deleted)."""
        probe = posixpath.join(directory, f".write-probe.{secrets.token_hex(6)}.tmp")
        try:
            self.write_atomic(probe, [b""])
        except OSError:
            return False
        self.remove(probe)
        return True

    # ------------------------------------------------------------ listing

    def entries(self, path: str) -> list[dict[str, Any]]:
        """The metadata of what a directory holds (at most MAX_LIST_ENTRIES); [] if there is none."""
        try:
            found = self._call(path, self.fs.ls, path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return list(found[:MAX_LIST_ENTRIES])

    def _names(self, path: str, kind: str) -> list[str]:
        """Names of the entries of one type ("file" or "directory") directly in a directory."""
        entries = self.entries(path)
        return [posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == kind]

    def listdir(self, path: str) -> list[str]:
        """Names of the objects (not folders) directly in a directory; [] if there is none."""
        return self._names(path, "file")

    def list_sizes(self, path: str) -> dict[str, int]:
        """Name to size of the objects directly in a directory (one listing, no per-object request)."""
        return {
            posixpath.basename(e["name"].rstrip("/")): int(e.get("size") or 0)
            for e in self.entries(path)
            if e.get("type") == "file"
        }

    def subdirs(self, path: str) -> list[str]:
        """Names of the folders (common prefixes) directly in a directory."""
        return self._names(path, "directory")

    def isdir(self, path: str) -> bool:
        """Whether anything lies under path (on object stores: any object with that prefix)."""
        try:
            return bool(self._call(path, self.fs.isdir, path))
        except FileNotFoundError:
            return False

    def remove_stale_temp_files(self, directory: str, older_than: float = 60.0) -> int:
        """Nothing to do: remote writes use no temporary objects."""
        return 0
