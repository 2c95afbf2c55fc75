"""What a frame header may claim: the checks every reader runs before it allocates anything.

A header's sizes and section records are held to hard caps and to what the
file's stored values can fill (frame_format.py reads and writes the file;
docs/protocol.md describes the format).
"""

from __future__ import annotations

import math
from typing import Any

from beholder_plugin.protocol.layout import (
    FRAME_WIDTH,
    LAYOUTS,
    MAX_FRAME_WIDTH,
    MAX_PROPORTIONAL_HEIGHT,
    MAX_SECTION_HEIGHT,
    SEPARATOR_HEIGHT,
    compact_map,
)

# No frame file is ever larger than this, whatever its header says; the writer refuses to write one.
MAX_FRAME_BYTES = 1 << 30
# No frame has more pixels than this (width x height): what a reader may have to expand and encode.
MAX_FRAME_PIXELS = 1 << 28
# A section is at most this many times as tall as the distinct rows it stores, or 512 px ("proportional"),
# so a small file cannot claim a tall frame (show_all's grids of other ranks store half their rows or more).
_SECTION_STRETCH = 4
PALETTE_BYTES = 256 * 3


class FrameFormatError(ValueError):
    """A frame file that is not a valid Beholder frame (wrong magic, version or size)."""


def int_field(header: dict, key: str, lo: int, hi: int) -> int:
    """header[key] as a whole number from lo to hi; FrameFormatError naming the key otherwise."""
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise FrameFormatError(f"frame header key {key!r} is missing or out of range ({value!r})")
    return value


def check_header(header: dict[str, Any]) -> None:
    """Refuse a header whose sizes or section records are impossible, before anything is allocated.

    Width and height are held to hard caps, and a frame of sections (which
    stores no pixels) to what its stored values can fill: a small file that
    claims a huge picture is refused here, not expanded.
    """
    height = int_field(header, "height", 1, MAX_FRAME_PIXELS)
    width = int_field(header, "width", 1, MAX_FRAME_WIDTH)
    if width * height > MAX_FRAME_PIXELS:
        raise FrameFormatError(f"frame header claims {width} x {height} pixels, more than {MAX_FRAME_PIXELS}")
    channels = int_field(header, "channels", 1, 3)
    if channels == 2:
        raise FrameFormatError("frame header has 2 channels (1 or 3 expected)")
    encoding = header.get("encoding")
    if encoding not in ("raw", "rows", "sections"):
        raise FrameFormatError(f"unknown frame encoding {encoding!r}")
    stored = int_field(header, "rows", 0 if encoding == "sections" else 1, MAX_FRAME_BYTES)
    count = int_field(header, "value_count", 0, MAX_FRAME_BYTES)
    if encoding == "raw" and stored != height:
        raise FrameFormatError("a raw frame must store exactly its height in rows")
    if encoding == "sections" and (channels != 1 or not header.get("sections")):
        raise FrameFormatError("a sections frame must be palette-indexed and have sections")
    if data_size(header) > MAX_FRAME_BYTES:
        raise FrameFormatError(f"frame header implies more than {MAX_FRAME_BYTES} bytes")
    sections = header.get("sections", [])
    if not isinstance(sections, list):
        raise FrameFormatError("frame header 'sections' is not a list")
    bottom, widest = 0, 0
    for i, rec in enumerate(sections):
        _check_section(rec, i, width, height, count, bottom)
        bottom = rec["top"] + rec["height"]
        widest = max(widest, rec["compact"][1])
    if encoding == "sections":
        if width > max(FRAME_WIDTH, widest):
            raise FrameFormatError(f"frame header claims a width of {width} for sections at most {widest} "
                                   "wide")
        if height - bottom > SEPARATOR_HEIGHT:
            raise FrameFormatError(f"frame header claims a height of {height} below sections ending at "
                                   f"{bottom}")


def _check_section(rec: Any, i: int, width: int, height: int, count: int, bottom: int) -> None:
    """Refuse a section record a reader could not use safely (value lookups index with it)."""
    where = f"section record {i}"
    if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
        raise FrameFormatError(f"{where} is not an object with a name")
    try:
        top, sec_height, start = int_field(rec, "top", bottom, height - 1), \
            int_field(rec, "height", 1, min(height, MAX_SECTION_HEIGHT)), int_field(rec, "values", 0, count)
        shape = rec["shape"]
        src = rec["source"]
        compact = rec["compact"]
        ok = (
            isinstance(shape, list)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape)
            and _pair(src) and _pair(compact)
            and rec.get("layout") in LAYOUTS
            and _bounds(rec.get("bounds"))
        )
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise FrameFormatError(f"{where} lacks shape, layout, source, compact size or bounds")
    if top + sec_height > height or start + compact[0] * compact[1] > count:
        raise FrameFormatError(f"{where} points outside the frame or its values")
    if top - bottom > SEPARATOR_HEIGHT:
        raise FrameFormatError(f"{where} starts {top - bottom} rows below the one before")
    if sec_height > max(MAX_PROPORTIONAL_HEIGHT, _SECTION_STRETCH * compact[0]):
        raise FrameFormatError(f"{where} is {sec_height} rows tall for {compact[0]} stored rows")
    if compact[0] > min(src[0], sec_height) or compact[1] > min(src[1], width):
        raise FrameFormatError(f"{where} has more compact values than its source section")
    if (compact[0], compact[1]) != (_distinct(src[0], sec_height), _distinct(src[1], width)):
        raise FrameFormatError(f"{where} has a compact size its layout does not give")
    if src[0] * src[1] > max(1, math.prod(shape)):
        raise FrameFormatError(f"{where} has a source section larger than its array")


def _bounds(value: Any) -> bool:
    """Whether a section's bounds are [lo, hi], each a number or null."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in value)
    )


def _distinct(src: int, dst: int) -> int:
    """How many distinct source indices a resize from src to dst samples."""
    return int(compact_map(src, dst)[-1]) + 1


def _pair(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    )


def data_size(header: dict[str, Any]) -> int:
    """The bytes after the header that a frame with this header holds."""
    channels = header["channels"]
    if header["encoding"] == "sections":
        return 4 * header["value_count"] + PALETTE_BYTES
    size = 4 * header["value_count"] + header["rows"] * header["width"] * channels
    if header["encoding"] == "rows":
        size += 4 * header["height"]
    if channels == 1:
        size += PALETTE_BYTES
    return size
