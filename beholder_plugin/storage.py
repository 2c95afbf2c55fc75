"""The on-disk protocol under <run>/plugins/beholder/: paths, atomic writes, frame and JSON files.

See docs/protocol.md for the byte layout. Nothing here imports a framework.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from beholder_plugin.config import (
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
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in data if isinstance(data, list) else [data]:
                f.write(chunk)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_json(path: str, doc: Any) -> None:
    """Write a JSON document atomically (no NaN or Infinity: strict JSON only)."""
    atomic_write(path, json.dumps(doc, indent=1, allow_nan=False).encode("utf-8") + b"\n")


# ---------------------------------------------------------------- frames


@dataclass
class Frame:
    """One frame as stored: palette indices with a 256 x 3 palette, or RGB pixels."""

    pixels: np.ndarray  # (H, W) uint8 palette indices, or (H, W, 3) uint8 RGB
    palette: np.ndarray | None  # (256, 3) uint8 when pixels are indices
    header: dict[str, Any] = field(default_factory=dict)

    @property
    def height(self) -> int:
        """Frame height in pixels."""
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        """Frame width in pixels."""
        return int(self.pixels.shape[1])

    def rgb(self) -> np.ndarray:
        """The frame as an H x W x 3 uint8 RGB array."""
        if self.palette is None:
            return self.pixels
        return self.palette[self.pixels]


def encode_frame(frame: Frame) -> list:
    """The buffers that make up a frame file (header first), without copying the pixels."""
    pixels = np.ascontiguousarray(frame.pixels, dtype=np.uint8)
    if pixels.ndim == 2:
        if frame.palette is None:
            raise ValueError("a 2-D frame needs a palette")
        palette = np.ascontiguousarray(frame.palette, dtype=np.uint8)
        if palette.shape != (256, 3):
            raise ValueError(f"palette must be 256 x 3, not {palette.shape}")
        buffers = [palette.data, pixels.data]
        channels = 1
    elif pixels.ndim == 3 and pixels.shape[2] == 3:
        buffers = [pixels.data]
        channels = 3
    else:
        raise ValueError(f"frame pixels must be H x W or H x W x 3, not {pixels.shape}")
    header = dict(frame.header)
    header.update(
        format="beholder-frame",
        version=FRAME_VERSION,
        height=int(pixels.shape[0]),
        width=int(pixels.shape[1]),
        channels=channels,
    )
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
    expected = height * width * channels
    if len(data) - offset != expected:
        raise FrameFormatError(f"frame has {len(data) - offset} pixel bytes, expected {expected}")
    shape = (height, width) if channels == 1 else (height, width, 3)
    pixels = np.frombuffer(data, np.uint8, expected, offset).reshape(shape)
    return Frame(pixels=pixels, palette=palette, header=header)


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


def read_section_info_document(run_dir: str | os.PathLike) -> dict | None:
    """The whole section-info.json document, or None when there is none yet."""
    try:
        with open(os.path.join(plugin_dir(run_dir), SECTION_INFO_FILE), "rb") as f:
            doc = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
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


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's settings; defaults when there is no file. Raises ConfigError if the file is bad."""
    try:
        with open(config_path(run_dir), "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return dict(DEFAULT_CONFIG)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"config.json is not valid JSON: {exc}") from None
    config, _problems = parse_config_document(doc)
    return config


def write_config(run_dir: str | os.PathLike, config: dict[str, Any]) -> None:
    """Atomically write a full, already validated config."""
    os.makedirs(plugin_dir(run_dir), exist_ok=True)
    atomic_write_json(config_path(run_dir), config_document(config))


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
