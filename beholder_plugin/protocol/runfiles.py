"""The files of one run, read and written the same way by both sides: settings and the latest frame.

Example::

    from beholder_plugin.protocol import runfiles
    runfiles.read_config("logs/run1")        # the dashboard's settings
    runfiles.read_frame("logs/run1")         # H x W x 3 uint8 RGB of the latest frame
    runfiles.read_section_info("logs/run1")  # that frame's section records
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from beholder_plugin.protocol.files import FileRefused, files_for
from beholder_plugin.protocol.frame_format import Frame, FrameFormatError
from beholder_plugin.protocol.frame_format import read_frame_file as _read_path
from beholder_plugin.protocol.names import (
    CONFIG_FILE,
    FRAME_FILE,
    config_path,
    ended_path,
    frame_path,
    plugin_dir,
)
from beholder_plugin.protocol.settings import (
    DEFAULT_CONFIG,
    ConfigError,
    config_document,
    parse_config_document,
)

# config.json is about 300 bytes; anything far larger is not a config.
MAX_CONFIG_BYTES = 64 << 10
# ended.json is about 70 bytes.
MAX_ENDED_BYTES = 4 << 10


def _load_json(path: str, error: type[ValueError], limit: int) -> Any:
    """A JSON file's document, or None when there is no file; ``error`` for anything unreadable.

    Unreadable covers a directory, FIFO or other non-regular file in its
    place, a file over ``limit`` bytes, bad UTF-8, bad JSON, and JSON nested
    deeper than the decoder's recursion limit.
    """
    name = os.path.basename(path)
    try:
        raw = files_for(path).read(path, limit)
    except FileRefused as exc:
        raise error(str(exc)) from None
    except OSError as exc:
        raise error(f"{name} cannot be read: {exc.strerror or exc}") from None
    if raw is None:
        return None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise error(f"{name} is not valid JSON: {detail}") from None
    if doc is None:  # (not "no file": that would mean the defaults, and a paused run resuming)
        raise error(f"{name} holds JSON null, not an object")
    return doc


def load_config(run_dir: str | os.PathLike) -> tuple[dict[str, Any], list[str]]:
    """The run's settings and the problems ignored reading them (see parse_config_document).

    Defaults when there is no file; ConfigError for a file that cannot be
    read or is invalid.
    """
    doc = _load_json(config_path(run_dir), ConfigError, MAX_CONFIG_BYTES)
    if doc is None:
        return dict(DEFAULT_CONFIG), []
    return parse_config_document(doc)


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's settings; defaults when there is no file. Raises ConfigError if the file is bad."""
    return load_config(run_dir)[0]


def write_config(run_dir: str | os.PathLike, config: dict[str, Any]) -> None:
    """Atomically write a full, already validated config."""
    text = json.dumps(config_document(config), indent=1, allow_nan=False)
    path = config_path(run_dir)
    files_for(path).write_atomic(path, [text.encode("utf-8") + b"\n"])


def write_ended(run_dir: str | os.PathLike, writer: str, frame_id: int, when: float) -> None:
    """Say that the trainer ``writer`` closed its Beholder at ``when`` (Unix time), frame ``frame_id``
    being the last it wrote, so that viewers tell a finished run from a stopped trainer."""
    text = json.dumps({"writer": writer, "frame_id": frame_id, "time": when}, allow_nan=False)
    path = ended_path(run_dir)
    files_for(path).write_atomic(path, [text.encode("utf-8") + b"\n"])


def read_ended(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """What a closing trainer left in ended.json ({writer, frame_id, time}), or None: no such file, or
    one that is unreadable or not of that form (it only ever changes what the status line says)."""
    try:
        doc = _load_json(ended_path(run_dir), ValueError, MAX_ENDED_BYTES)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    writer, frame_id, when = doc.get("writer"), doc.get("frame_id"), doc.get("time")
    if not (isinstance(writer, str) and 0 < len(writer) <= 64 and writer.isascii() and writer.isalnum()):
        return None
    if not (isinstance(frame_id, int) and not isinstance(frame_id, bool) and 0 < frame_id < 2**53):
        return None
    if not (isinstance(when, (int, float)) and not isinstance(when, bool) and 0 < when < 1e11):  # (NaN: no)
        return None
    return {"writer": writer, "frame_id": frame_id, "time": float(when)}


def read_frame_file(run_dir: str | os.PathLike) -> Frame | None:
    """The run's latest frame as stored, or None when there is none yet."""
    try:
        return _read_path(frame_path(run_dir))
    except FileRefused as exc:
        raise FrameFormatError(str(exc)) from None


def read_frame(run_dir: str | os.PathLike) -> np.ndarray | None:
    """The run's latest frame as an H x W x 3 uint8 RGB array, or None when there is none yet."""
    frame = read_frame_file(run_dir)
    return None if frame is None else frame.rgb()


def read_section_info(run_dir: str | os.PathLike) -> list[dict]:
    """The section records of the run's latest frame, top to bottom ([] when there is no frame)."""
    frame = read_frame_file(run_dir)
    return [] if frame is None else frame.sections


__all__ = [
    "CONFIG_FILE",
    "FRAME_FILE",
    "ConfigError",
    "Frame",
    "FrameFormatError",
    "config_path",
    "frame_path",
    "load_config",
    "plugin_dir",
    "read_config",
    "read_frame",
    "read_frame_file",
    "read_section_info",
    "write_config",
]
