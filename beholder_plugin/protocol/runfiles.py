"""The on-disk protocol under <run>/plugins/beholder/: paths, atomic writes, frame and JSON files.

See docs/protocol.md for the byte layout. Nothing here imports a framework.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from typing import Any

import numpy as np

from beholder_plugin.protocol.settings import (
    DEFAULT_CONFIG,
    ConfigError,
    config_document,
    parse_config_document,
)

PLUGIN_NAME = "beholder"
CONFIG_FILE = "config.json"
FRAME_FILE = "frame.bin"
SECTION_INFO_FILE = "section-info.json"

FRAME_MAGIC = b"BHFRAME\x00"
FRAME_VERSION = 1
SECTION_INFO_VERSION = 1
_LENGTH = struct.Struct("<I")
MAX_HEADER_BYTES = 1 << 16


class FrameFormatError(ValueError):
    """A frame file that is not a valid Beholder frame (wrong magic, version or size)."""


def plugin_dir(run_dir: str | os.PathLike) -> str:
    """The directory inside a run where Beholder keeps its files."""
    return os.path.join(os.fspath(run_dir), "plugins", PLUGIN_NAME)


def atomic_write(path: str, data: bytes | list) -> None:
    """Write bytes (or a list of buffers) to path so that readers see the old or the new file, never a mix."""
    directory, name = os.path.split(path)
    # One temporary name per writing thread: cheaper than mkstemp, and no two writers share it.
    tmp = os.path.join(directory, f".{name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        try:
            f = open(tmp, "wb")
        except FileNotFoundError:  # first write, or the directory was deleted: make it
            os.makedirs(directory, exist_ok=True)
            f = open(tmp, "wb")
        with f:
            for chunk in data if isinstance(data, list) else [data]:
                f.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_json(path: str, doc: Any, indent: int | None = None) -> None:
    """Write a JSON document atomically (no NaN or Infinity: strict JSON only)."""
    separators = None if indent else (",", ":")
    text = json.dumps(doc, indent=indent, separators=separators, allow_nan=False)
    atomic_write(path, text.encode("utf-8") + b"\n")


# ---------------------------------------------------------------- frames


class Frame:
    """One frame as stored: palette indices with a 256 x 3 palette, or RGB pixels.

    A frame may be held row-encoded: ``rows`` are its distinct rows and
    ``row_index[y]`` says which of them is row y. Sections are
    nearest-neighbour blow-ups, so this is several times smaller than the
    full frame. ``pixels`` always gives the full frame.
    """

    def __init__(
        self,
        pixels: np.ndarray | None = None,
        palette: np.ndarray | None = None,
        header: dict[str, Any] | None = None,
        *,
        rows: np.ndarray | None = None,
        row_index: np.ndarray | None = None,
    ) -> None:
        if (pixels is None) == (rows is None):
            raise ValueError("give either pixels or rows (with row_index)")
        if rows is not None and row_index is None:
            raise ValueError("rows need a row_index")
        self.rows = pixels if pixels is not None else rows
        self.row_index = None if pixels is not None else np.asarray(row_index)
        self.palette = palette
        self.header: dict[str, Any] = dict(header or {})
        self._pixels = pixels

    @property
    def pixels(self) -> np.ndarray:
        """(H, W) uint8 palette indices, or (H, W, 3) uint8 RGB: the full frame."""
        if self._pixels is None:
            self._pixels = np.take(self.rows, self.row_index, axis=0)
        return self._pixels

    @property
    def height(self) -> int:
        """Frame height in pixels."""
        return int(len(self.row_index) if self.row_index is not None else self.rows.shape[0])

    @property
    def width(self) -> int:
        """Frame width in pixels."""
        return int(self.rows.shape[1])

    def rgb(self) -> np.ndarray:
        """The frame as an H x W x 3 uint8 RGB array."""
        if self.palette is None:
            return self.pixels
        if self.row_index is None:
            return self.palette[self.rows]
        return np.take(self.palette[self.rows], self.row_index, axis=0)


def encode_frame(frame: Frame) -> list:
    """The buffers that make up a frame file (header first), without copying the pixels."""
    rows = np.ascontiguousarray(frame.rows, dtype=np.uint8)
    buffers = []
    if rows.ndim == 2:
        if frame.palette is None:
            raise ValueError("a 2-D frame needs a palette")
        palette = np.ascontiguousarray(frame.palette, dtype=np.uint8)
        if palette.shape != (256, 3):
            raise ValueError(f"palette must be 256 x 3, not {palette.shape}")
        buffers.append(palette.data)
        channels = 1
    elif rows.ndim == 3 and rows.shape[2] == 3:
        channels = 3
    else:
        raise ValueError(f"frame pixels must be H x W or H x W x 3, not {rows.shape}")
    header = dict(frame.header)
    header.update(
        format="beholder-frame",
        version=FRAME_VERSION,
        height=frame.height,
        width=int(rows.shape[1]),
        channels=channels,
        encoding="raw",
    )
    if frame.row_index is not None:
        index = np.ascontiguousarray(frame.row_index, dtype="<u4")
        if index.size and int(index.max()) >= rows.shape[0]:
            raise ValueError("row_index points past the stored rows")
        header.update(encoding="rows", rows=int(rows.shape[0]))
        buffers.append(index.data)
    buffers.append(rows.data)
    head = json.dumps(header, allow_nan=False).encode("utf-8")
    return [FRAME_MAGIC + _LENGTH.pack(len(head)) + head, *buffers]


def write_frame(run_dir: str | os.PathLike, frame: Frame) -> None:
    """Atomically replace the run's latest frame."""
    atomic_write(os.path.join(plugin_dir(run_dir), FRAME_FILE), encode_frame(frame))


def decode_frame(data: bytes) -> Frame:
    """Parse the bytes of a frame file; raises FrameFormatError on anything unexpected."""
    if len(data) < 12 or data[:8] != FRAME_MAGIC:
        raise FrameFormatError("not a Beholder frame file (bad magic)")
    (head_len,) = _LENGTH.unpack_from(data, 8)
    if head_len > MAX_HEADER_BYTES or 12 + head_len > len(data):
        raise FrameFormatError("frame header length is out of range")
    try:
        header = json.loads(data[12 : 12 + head_len].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FrameFormatError(f"frame header is not JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("version") != FRAME_VERSION:
        raise FrameFormatError(f"unsupported frame version {header.get('version')!r}")
    try:
        height, width, channels = (int(header[k]) for k in ("height", "width", "channels"))
    except (KeyError, TypeError, ValueError):
        raise FrameFormatError("frame header lacks height, width or channels") from None
    if height < 1 or width < 1 or channels not in (1, 3):
        raise FrameFormatError("frame header has an impossible size")
    offset = 12 + head_len
    palette = None
    if channels == 1:
        palette_end = offset + 256 * 3
        if palette_end > len(data):
            raise FrameFormatError("frame file is too short for its palette")
        palette = np.frombuffer(data, np.uint8, 768, offset).reshape(256, 3)
        offset = palette_end
    encoding = header.get("encoding", "raw")
    row_index = None
    stored_rows = height
    if encoding == "rows":
        stored_rows = header.get("rows")
        if not isinstance(stored_rows, int) or not 1 <= stored_rows <= height:
            raise FrameFormatError("row-encoded frame has an impossible 'rows' count")
        if offset + 4 * height > len(data):
            raise FrameFormatError("frame file is too short for its row index")
        row_index = np.frombuffer(data, "<u4", height, offset)
        offset += 4 * height
        if int(row_index.max()) >= stored_rows:
            raise FrameFormatError("frame row index points past the stored rows")
    elif encoding != "raw":
        raise FrameFormatError(f"unknown frame encoding {encoding!r}")
    expected = stored_rows * width * channels
    if len(data) - offset != expected:
        raise FrameFormatError(f"frame has {len(data) - offset} pixel bytes, expected {expected}")
    shape = (stored_rows, width) if channels == 1 else (stored_rows, width, 3)
    pixels = np.frombuffer(data, np.uint8, expected, offset).reshape(shape)
    if row_index is None:
        return Frame(pixels, palette, header)
    return Frame(palette=palette, header=header, rows=pixels, row_index=row_index)


def read_frame_file(run_dir: str | os.PathLike) -> Frame | None:
    """The run's latest frame as stored, or None when there is none yet."""
    try:
        with open(os.path.join(plugin_dir(run_dir), FRAME_FILE), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return decode_frame(data)


def read_frame(run_dir: str | os.PathLike) -> np.ndarray | None:
    """The run's latest frame as an H x W x 3 uint8 RGB array, or None when there is none yet."""
    frame = read_frame_file(run_dir)
    return None if frame is None else frame.rgb()


# ---------------------------------------------------------------- section info


def write_section_info(run_dir: str | os.PathLike, sections: list[dict], frame_id: int) -> None:
    """Atomically replace the run's section info (one dict per section, top to bottom)."""
    doc = {"version": SECTION_INFO_VERSION, "frame_id": frame_id, "sections": sections}
    atomic_write_json(os.path.join(plugin_dir(run_dir), SECTION_INFO_FILE), doc)


_MISSING = object()


def _load_json(path: str, error: type[ValueError] = ValueError) -> Any:
    """A JSON file's document, or _MISSING when there is no file; ``error`` for anything unreadable.

    Unreadable covers a directory or unreadable file in its place, bad UTF-8,
    bad JSON, and JSON nested deeper than the decoder's recursion limit.
    """
    name = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return _MISSING
    except OSError as exc:
        raise error(f"{name} cannot be read: {exc.strerror or exc}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise error(f"{name} is not valid JSON: {detail}") from None


def read_section_info_document(run_dir: str | os.PathLike) -> dict | None:
    """The whole section-info.json document, or None when there is none yet; ValueError if unreadable."""
    doc = _load_json(os.path.join(plugin_dir(run_dir), SECTION_INFO_FILE))
    if doc is _MISSING:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("sections"), list):
        raise ValueError("section-info.json does not hold a 'sections' list")
    return doc


def read_section_info(run_dir: str | os.PathLike) -> list[dict]:
    """The section info of the run's latest frame: a list of dicts, top to bottom."""
    doc = read_section_info_document(run_dir)
    return [] if doc is None else doc["sections"]


# ---------------------------------------------------------------- config


def config_path(run_dir: str | os.PathLike) -> str:
    """Where the run's dashboard settings live."""
    return os.path.join(plugin_dir(run_dir), CONFIG_FILE)


def load_config(run_dir: str | os.PathLike) -> tuple[dict[str, Any], list[str]]:
    """The run's settings and the problems ignored reading them (see parse_config_document).

    Defaults when there is no file; ConfigError for a file that cannot be
    read or is invalid.
    """
    doc = _load_json(config_path(run_dir), ConfigError)
    if doc is _MISSING:
        return dict(DEFAULT_CONFIG), []
    return parse_config_document(doc)


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's settings; defaults when there is no file. Raises ConfigError if the file is bad."""
    return load_config(run_dir)[0]


def remove_stale_temp_files(run_dir: str | os.PathLike, older_than: float = 60.0) -> int:
    """Delete temporary files left by writers killed mid-write; returns how many were removed.

    A temporary file lives only for the milliseconds of one write, so one
    older than ``older_than`` seconds belongs to a writer that died.
    """
    directory = plugin_dir(run_dir)
    removed = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    cutoff = time.time() - older_than
    for name in names:
        if not (name.startswith(".") and name.endswith(".tmp")):
            continue
        path = os.path.join(directory, name)
        try:
            if os.lstat(path).st_mtime < cutoff:
                os.unlink(path)
                removed += 1
        except OSError:
            pass
    return removed


def write_config(run_dir: str | os.PathLike, config: dict[str, Any]) -> None:
    """Atomically write a full, already validated config."""
    os.makedirs(plugin_dir(run_dir), exist_ok=True)
    atomic_write_json(config_path(run_dir), config_document(config), indent=1)


__all__ = [
    "ConfigError",
    "Frame",
    "FrameFormatError",
    "atomic_write",
    "plugin_dir",
    "read_config",
    "read_frame",
    "read_frame_file",
    "read_section_info",
    "write_config",
    "write_frame",
    "write_section_info",
]
