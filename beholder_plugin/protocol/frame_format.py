"""The frame file, version 2: pixels, the section table and the float32 values behind the pixels.

One file holds one whole frame, so its section table can never belong to
another frame. The byte layout is in docs/protocol.md:

    magic "BHFRAME\\0" | u32 header length N | N bytes of JSON header | zeros to a multiple of 8
    | values: V float32 | row index: H uint32 (encoding "rows") | palette: 768 bytes (channels 1)
    | pixels ("raw", "rows"): R x W (x 3) uint8 stored rows

Frames of arrays use the "sections" encoding, which stores no pixel block:
a section's pixels are its values scaled by its bounds
(``scaling.palette_indices``), one per distinct sampled row and column, and
widened with the layout arithmetic (``layout.expand_sections``). So the
writer neither scales, expands nor writes pixels that readers can derive
exactly.

Everything after the header has a size the header implies, so a reader can
find one value by reading the header and four bytes (``value_at``).

Example::

    data = b"".join(encode_frame(header, rows=rows, row_index=index, palette=pal, values=vals))
    frame = decode_frame(data)
    frame.pixels          # (H, W) palette indices
    frame.section_values(0)   # the float32 values behind section 0's pixels
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:
    import orjson
except ImportError:  # a speed-up only: the json module reads the same headers
    orjson = None

from beholder_plugin.protocol.files import FileRefused, LocalFiles, files_for
from beholder_plugin.protocol.frame_checks import (
    MAX_FRAME_BYTES,
    MAX_FRAME_PIXELS,
    PALETTE_BYTES,
    FrameFormatError,
    check_header,
    data_size,
)
from beholder_plugin.protocol.layout import (
    MAX_FRAME_WIDTH,
    expand_sections,
    locate,
)
from beholder_plugin.protocol.names import FRAME_MAGIC, FRAME_VERSION
from beholder_plugin.protocol.scaling import palette_indices

_LENGTH = struct.Struct("<I")
PREFIX_BYTES = len(FRAME_MAGIC) + _LENGTH.size  # 12
MAX_HEADER_BYTES = 16 << 20


def _align8(n: int) -> int:
    return (n + 7) & ~7


@dataclass
class Frame:
    """One decoded frame: palette-indexed or RGB pixels (maybe row-encoded) and its values.

    ``rows[row_index[y]]`` is row y of the frame when ``row_index`` is set,
    else ``rows`` is the whole frame. ``values`` is the flat float32 values
    block; each section record says where its values start (``values``) and
    their compact shape (``compact``).
    """

    header: dict[str, Any]
    rows: np.ndarray
    row_index: np.ndarray | None = None
    palette: np.ndarray | None = None
    values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    @property
    def sections(self) -> list[dict[str, Any]]:
        """The section records, top to bottom ([] for a user frame or a placeholder)."""
        return self.header.get("sections", [])

    @property
    def height(self) -> int:
        """Frame height in pixels."""
        return int(len(self.row_index) if self.row_index is not None else self.rows.shape[0])

    @property
    def width(self) -> int:
        """Frame width in pixels."""
        return int(self.rows.shape[1])

    @property
    def pixels(self) -> np.ndarray:
        """(H, W) uint8 palette indices, or (H, W, 3) uint8 RGB: the full frame."""
        if self.row_index is None:
            return self.rows
        return np.take(self.rows, self.row_index, axis=0)

    def rgb(self) -> np.ndarray:
        """The frame as an H x W x 3 uint8 RGB array."""
        if self.palette is None:
            return self.pixels
        coloured = self.palette[self.rows]
        return coloured if self.row_index is None else np.take(coloured, self.row_index, axis=0)

    def section_values(self, i: int) -> np.ndarray:
        """The float32 values behind section i, as its compact (rows, columns) array."""
        rec = self.sections[i]
        rows, cols = rec["compact"]
        start = rec["values"]
        return self.values[start : start + rows * cols].reshape(rows, cols)


def encode_frame(
    header: dict[str, Any],
    *,
    rows: np.ndarray,
    row_index: np.ndarray | None = None,
    palette: np.ndarray | None = None,
    values: np.ndarray | None = None,
    height: int | None = None,
) -> list:
    """The buffers making up a frame file (header first), without copying pixels or values.

    With ``height`` set, the frame is the header's sections (the "sections"
    encoding: ``rows`` is ignored, ``width`` comes from the header).
    """
    if height is not None:
        return _encode_sections(header, palette, values, height)
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    if rows.ndim == 2:
        channels = 1
        if palette is None:
            raise ValueError("palette-indexed pixels need a palette")
        palette = np.ascontiguousarray(palette, dtype=np.uint8)
        if palette.shape != (256, 3):
            raise ValueError(f"palette must be 256 x 3, not {palette.shape}")
    elif rows.ndim == 3 and rows.shape[2] == 3:
        channels, palette = 3, None
    else:
        raise ValueError(f"frame pixels must be H x W or H x W x 3, not {rows.shape}")
    if rows.shape[0] < 1 or rows.shape[1] < 1:
        raise ValueError(f"a frame needs at least one pixel, not {rows.shape}")
    values = np.zeros(0, np.float32) if values is None else np.ascontiguousarray(values, dtype="<f4")
    head = dict(header)
    head.update(
        format="beholder-frame",
        version=FRAME_VERSION,
        width=int(rows.shape[1]),
        channels=channels,
        value_count=int(values.size),
    )
    if row_index is None:
        head.update(encoding="raw", height=int(rows.shape[0]), rows=int(rows.shape[0]))
    else:
        row_index = np.ascontiguousarray(row_index, dtype="<u4")
        if row_index.size == 0 or int(row_index.max()) >= rows.shape[0]:
            raise ValueError("row_index must be non-empty and point at stored rows")
        head.update(encoding="rows", height=int(row_index.size), rows=int(rows.shape[0]))
    _check_writable(head)
    buffers: list = [_prefix(head)]
    if values.size:
        buffers.append(values.data)
    if row_index is not None:
        buffers.append(row_index.data)
    if palette is not None:
        buffers.append(palette.data)
    buffers.append(rows.data)
    return buffers


def _encode_sections(header: dict[str, Any], palette: np.ndarray | None, values: np.ndarray | None,
                     height: int) -> list:
    """The buffers of a frame of sections: its values and palette (its pixels follow from them)."""
    palette = np.ascontiguousarray(palette, dtype=np.uint8)
    if palette.shape != (256, 3) or not header.get("sections"):
        raise ValueError("a sections frame needs sections and a 256 x 3 palette")
    head = dict(header)
    head.update(format="beholder-frame", version=FRAME_VERSION, channels=1, encoding="sections",
                height=int(height), rows=0, value_count=int(np.size(values)))
    _check_writable(head)
    values = np.ascontiguousarray(values, dtype="<f4").reshape(-1)
    return [_prefix(head), values.data, palette.data]


def _check_writable(head: dict[str, Any]) -> None:
    """Refuse to write a frame past the caps every reader holds it to (it could never be shown)."""
    if int(head["width"]) > MAX_FRAME_WIDTH or int(head["width"]) * int(head["height"]) > MAX_FRAME_PIXELS:
        raise FrameFormatError(f"the frame would be {head['width']} x {head['height']} pixels, past the "
                               f"{MAX_FRAME_WIDTH} columns or {MAX_FRAME_PIXELS} pixels a reader takes")
    if data_size(head) > MAX_FRAME_BYTES:
        raise FrameFormatError(f"the frame would hold {data_size(head)} bytes, more than the "
                               f"{MAX_FRAME_BYTES} a reader takes (fewer sections, or show_all off, fit)")


def with_header(data: bytes | memoryview, changes: dict[str, Any]) -> list:
    """The buffers of a frame file's bytes with some header keys changed (values and pixels as they are)."""
    frame = decode_frame(data)
    offset = len(data) - data_size(frame.header)
    return [_prefix({**frame.header, **changes}), memoryview(data)[offset:]]


# Header keys written first, so that a frame's first bytes differ from every other frame's.
_STAMP_KEYS = ("writer", "frame_id", "time", "step")


def _prefix(head: dict[str, Any]) -> bytes:
    """Magic, length and JSON header, padded to a multiple of 8 bytes.

    Its identifying keys come first; "sections" comes last, so that a reader
    can quote the section table as stored instead of writing it again.
    """
    rest = {k: v for k, v in head.items() if k not in _STAMP_KEYS and k != "sections"}
    head = {**{k: head[k] for k in _STAMP_KEYS if k in head}, **rest,
            **({"sections": head["sections"]} if "sections" in head else {})}
    text = dump_header_json(head)
    pad = _align8(PREFIX_BYTES + len(text)) - PREFIX_BYTES - len(text)
    return FRAME_MAGIC + _LENGTH.pack(len(text)) + text + b"\x00" * pad


def parse_header(prefix: bytes) -> tuple[dict[str, Any], int]:
    """The header of a frame file from its first bytes, and where its data starts.

    ``prefix`` must hold at least the magic, the length and the header
    (``header_span(prefix[:12])`` bytes). Checks everything the header
    implies about the file, except its length.
    """
    if len(prefix) < PREFIX_BYTES or prefix[:8] != FRAME_MAGIC:
        raise FrameFormatError("not a Beholder frame file (bad magic)")
    (head_len,) = _LENGTH.unpack_from(prefix, 8)
    if head_len > MAX_HEADER_BYTES or PREFIX_BYTES + head_len > len(prefix):
        raise FrameFormatError("frame header length is out of range")
    try:
        header = load_header_json(bytes(prefix[PREFIX_BYTES : PREFIX_BYTES + head_len]))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FrameFormatError(f"frame header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FrameFormatError("frame header is not a JSON object")
    version = header.get("version")
    if version != FRAME_VERSION:
        if isinstance(version, int) and version < FRAME_VERSION:
            raise FrameFormatError(
                f"this frame file is version {version}, written by an older Beholder; this reader "
                f"reads version {FRAME_VERSION}. Upgrade the package on the training side "
                "(pip install -U tensorboard-plugin-beholder) and restart training"
            )
        raise FrameFormatError(f"unsupported frame version {version!r} (this reader reads {FRAME_VERSION})")
    check_header(header)
    return header, _align8(PREFIX_BYTES + head_len)


def dump_header_json(head: dict[str, Any]) -> bytes:
    """Compact JSON of a header, in UTF-8: with orjson where it takes the objects (a ResNet-50 header in
    a seventh of the time, on the worker, every frame), else with the json module, which refuses NaN.

    The writer's own headers hold only str, int, bool, None, finite floats, lists and dicts.
    """
    if orjson is not None:
        try:
            return orjson.dumps(head)
        except TypeError:  # a float or int subclass, a huge int, a lone surrogate: json decides
            pass
    return json.dumps(head, allow_nan=False, separators=(",", ":")).encode("utf-8")


def load_header_json(raw: bytes) -> Any:
    """JSON text as Python objects: with orjson where it takes the text (a ResNet-50 header in a quarter
    of the time; readers parse one per frame), else, and with its own errors, with the json module."""
    if orjson is not None:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # NaN literals, very deep nesting, bad UTF-8: the json module decides
    return json.loads(raw.decode("utf-8"))


def header_span(first12: bytes) -> int:
    """How many bytes from the start of a frame file hold its magic, length and header."""
    if len(first12) < PREFIX_BYTES or first12[:8] != FRAME_MAGIC:
        raise FrameFormatError("not a Beholder frame file (bad magic)")
    (head_len,) = _LENGTH.unpack_from(first12, 8)
    if head_len > MAX_HEADER_BYTES:
        raise FrameFormatError("frame header length is out of range")
    return PREFIX_BYTES + head_len


def decode_frame(data: bytes | memoryview) -> Frame:
    """Parse the bytes of a frame file; raises FrameFormatError on anything unexpected."""
    header, offset = parse_header(bytes(data[: PREFIX_BYTES + MAX_HEADER_BYTES]))
    if len(data) != offset + data_size(header):
        raise FrameFormatError(
            f"frame file is {len(data)} bytes, its header implies {offset + data_size(header)} "
            "(a torn or foreign file)"
        )
    height, width, stored = header["height"], header["width"], header["rows"]
    count = header["value_count"]
    values = np.frombuffer(data, "<f4", count, offset)
    offset += 4 * count
    row_index = None
    if header["encoding"] == "sections":
        palette = np.frombuffer(data, np.uint8, PALETTE_BYTES, offset).reshape(256, 3)
        compact = palette_indices(values, header["sections"])
        rows, row_index = expand_sections(header["sections"], width, height, compact)
        return Frame(header=header, rows=rows, row_index=row_index, palette=palette, values=values)
    if header["encoding"] == "rows":
        row_index = np.frombuffer(data, "<u4", height, offset)
        offset += 4 * height
        if int(row_index.max()) >= stored:
            raise FrameFormatError("frame row index points past the stored rows")
    palette = None
    if header["channels"] == 1:
        palette = np.frombuffer(data, np.uint8, PALETTE_BYTES, offset).reshape(256, 3)
        offset += PALETTE_BYTES
        shape: tuple[int, ...] = (stored, width)
    else:
        shape = (stored, width, 3)
    rows = np.frombuffer(data, np.uint8, math.prod(shape), offset).reshape(shape)
    return Frame(header=header, rows=rows, row_index=row_index, palette=palette, values=values)


def read_frame_file(path: str, files: LocalFiles | None = None) -> Frame | None:
    """The frame stored at path, or None when there is none."""
    files = files or files_for(path)
    data = files.read(path, MAX_FRAME_BYTES)
    return None if data is None else decode_frame(data)


def read_header(path: str, files: LocalFiles | None = None) -> tuple[dict[str, Any], int] | None:
    """A frame file's header and data offset, reading only the header's bytes; None if no file."""
    files = files or files_for(path)
    for attempt in range(3):  # the file may be replaced between the two reads: read the new one
        identity = files.identity(path)
        try:
            first = files.read_range(path, 0, PREFIX_BYTES, MAX_FRAME_BYTES, identity)
            if first is None:
                return None
            span = header_span(first)
            prefix = files.read_range(path, 0, span, MAX_FRAME_BYTES, identity)
        except FileRefused:
            if attempt == 2:
                raise
            continue
        if prefix is None or len(prefix) < span:
            raise FrameFormatError("frame file is shorter than its header")
        return parse_header(prefix)
    return None


def value_at(
    path: str, x: int, y: int, header: tuple[dict[str, Any], int] | None = None,
    files: LocalFiles | None = None, identity: tuple | None = None,
) -> dict[str, Any] | None:
    """What pixel (x, y) of the frame at path shows: section name, array index and float32 value.

    Reads the header (or takes it, parsed, from a cache, with the identity of
    the file it came from: FileRefused if the file has been replaced since)
    and the value's four bytes; renders nothing. None on a separator,
    outside the frame, for a frame without sections, or when there is no file.
    """
    files = files or files_for(path)
    if header is None:
        identity = files.identity(path)
        header = read_header(path, files)
    if header is None:
        return None
    head, offset = header
    if not 0 <= y < head["height"]:
        return None
    where = locate(head.get("sections", []), head["width"], x, y)
    if where is None:
        return None
    raw = files.read_range(path, offset + 4 * where["offset"], 4, MAX_FRAME_BYTES, identity)
    if raw is None or len(raw) != 4:
        raise FrameFormatError("frame file is shorter than its header implies")
    value = float(np.frombuffer(raw, "<f4")[0])
    where["value"] = value if math.isfinite(value) else repr(value)
    return where
