"""The frame-data answer: a "sections" frame's palette indices, which the browser widens and colours.

For the frame-data route (docs/http-api.md) the server sends, per frame,
the palette index of every value of a "sections" frame (`FrameData`),
computed from the file's values on demand and shared by every viewer; no
image is encoded for it. Any other frame is answered as PNG
(server/frame_encoding.py). Reading a header here reads only the header,
never the values.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from beholder_plugin.protocol.files import FileRefused, files_for
from beholder_plugin.protocol.frame_format import (
    MAX_FRAME_BYTES,
    PALETTE_BYTES,
    PREFIX_BYTES,
    FrameFormatError,
    data_size,
    header_span,
    parse_header,
)
from beholder_plugin.protocol.scaling import palette_indices
from beholder_plugin.server.frame_encoding import EncodedFrame, encode_frame_file, etag_for, frame_headers

# The frame-data payload (docs/http-api.md): magic, JSON length, JSON, palette, then the indices.
DATA_MAGIC = b"BHDATA1\0"
MAX_ANSWERS = 8  # frame-data answers kept per frame: one per request shape (viewport) in use


class FrameGone(Exception):
    """A frame's file was replaced or removed after its header was read: its values are gone with it."""


# A parsed JSON header (dicts, lists, floats, short strings) takes about this many bytes of Python
# objects per byte of its text: a frame of 3,000 sections holds some 10 MB that way, its PNG 2 MB.
HEADER_COST = 6

class FrameData:
    """A "sections" frame as the browser draws it, from its header; palette indices are made on demand.

    A section's indices are computed the first time an answer needs them
    (reading only that section's values from the file) and kept, and each
    answer (the whole frame, or the sections overlapping a row range) is
    built once per request shape and shared by every viewer asking the
    same. A viewport of a 30-screen frame so reads and scales a thirtieth
    of its values. payload() raises FrameGone if the file changed since the
    header was read.
    """

    def __init__(self, path: str, identity: tuple, header: dict[str, Any], data_offset: int, palette: bytes,
                 header_text: bytes = b""):
        self.path = path
        self.header_text = header_text  # the header's JSON as stored (section-info quotes its sections)
        self.identity = identity
        self.etag = etag_for(header, identity)
        self.header = header
        self.data_offset = data_offset
        self.palette = palette
        self.table_json: bytes | None = None  # the /section-info answer (gzip), made on first request
        self._parts: dict[int, bytes] = {}  # section index -> its palette indices
        self._answers: OrderedDict[tuple[int, int] | None, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._headers: list[tuple[str, str]] | None = None

    def headers(self) -> list[tuple[str, str]]:
        """The same HTTP headers as the frame's PNG answer (made once; each answer gets a copy)."""
        if self._headers is None:
            self._headers = frame_headers(self.etag, self.header)
        return list(self._headers)

    def overlapping(self, first: int, last: int) -> list[int]:
        """Indices of the sections that share a row with rows first..last (inclusive)."""
        return [i for i, rec in enumerate(self.header["sections"])
                if rec["top"] <= last and rec["top"] + rec["height"] > first]

    def payload(self, rows: tuple[int, int] | None = None) -> bytes:
        """The binary answer: all sections, or those overlapping rows (first, last) inclusive."""
        with self._lock:
            found = self._answers.get(rows)
            if found is not None:
                self._answers.move_to_end(rows)
                return found
            chosen = range(len(self.header["sections"])) if rows is None else self.overlapping(*rows)
            self._compute([i for i in chosen if i not in self._parts])
            answer = _data_answer(self.header, chosen, rows, self.palette, [self._parts[i] for i in chosen])
            self._answers[rows] = answer
            while len(self._answers) > MAX_ANSWERS:
                self._answers.popitem(last=False)
            return answer

    def cached_bytes(self) -> int:
        """Bytes this frame's indices, answers and header (parsed: HEADER_COST times its text) hold."""
        header = HEADER_COST * self.data_offset + len(self.header_text) + len(self.table_json or b"")
        return header + sum(map(len, self._parts.values())) + sum(map(len, self._answers.values()))

    def _compute(self, wanted: list[int]) -> None:
        """Palette indices of these sections, one file read per run of sections whose values are adjacent."""
        sections = self.header["sections"]
        runs: list[list[int]] = []
        for i in wanted:
            if runs and runs[-1][-1] == i - 1 and int(sections[i]["values"]) == _values_end(sections[i - 1]):
                runs[-1].append(i)
            else:
                runs.append([i])
        for run in runs:
            start, end = int(sections[run[0]]["values"]), _values_end(sections[run[-1]])
            raw = self._read(self.data_offset + 4 * start, 4 * (end - start))
            values = np.frombuffer(raw, "<f4")
            records = [dict(sections[i], values=int(sections[i]["values"]) - start) for i in run]
            indices = palette_indices(values, records)
            for i, rec in zip(run, records):
                self._parts[i] = indices[rec["values"] : rec["values"] + _compact_size(rec)].tobytes()

    def _read(self, offset: int, length: int) -> bytes:
        """length bytes at offset of this frame's file, as long as it is still this frame (else FrameGone)."""
        try:
            raw = files_for(self.path).read_range(self.path, offset, length, MAX_FRAME_BYTES, self.identity)
        except FileRefused as exc:
            raise FrameGone(str(exc)) from None
        if raw is None or len(raw) != length:
            raise FrameGone(f"{os.path.basename(self.path)} is gone or shorter than its header implies")
        return raw


def _values_end(rec: dict[str, Any]) -> int:
    """Where a section's compact values end in the values block."""
    return int(rec["values"]) + _compact_size(rec)


def _compact_size(rec: dict[str, Any]) -> int:
    """How many compact values (and palette indices) a section record has."""
    return int(rec["compact"][0]) * int(rec["compact"][1])


def _data_answer(head: dict[str, Any], chosen: Any, rows: tuple[int, int] | None, palette: Any,
                 parts: list[Any]) -> bytes:
    """A frame-data answer: magic, description length, description, palette, then the sections' indices."""
    records, offset = [], 0
    for i, part in zip(chosen, parts):
        rec = head["sections"][i]
        records.append({"index": i, "top": rec["top"], "height": rec["height"], "source": rec["source"],
                        "compact": rec["compact"], "offset": offset})
        offset += len(part)
    doc = {"width": head["width"], "height": head["height"], "colormap": head.get("colormap"),
           "sections": records, "rows": None if rows is None else list(rows), "bytes": offset}
    text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    return b"".join([DATA_MAGIC, len(text).to_bytes(4, "little"), text, palette, *parts])


def frame_data_of(path: str, identity: tuple) -> FrameData | EncodedFrame | None:
    """The frame file at path (which must still be `identity`) as FrameData, or PNG for any other frame.

    For a "sections" frame only the header and the palette are read here;
    None when the file is gone. FileRefused when it is no longer
    `identity`, FrameFormatError when it is not a valid frame.
    """
    parsed = _read_header(path, identity)
    if parsed is None:
        return None
    header, offset, text = parsed
    if header["encoding"] != "sections":
        found = files_for(path).read_with_identity(path, MAX_FRAME_BYTES)
        if found is None:
            return None
        if found[1] != identity:
            raise FileRefused(f"{os.path.basename(path)} was replaced")
        return encode_frame_file(*found)
    at = offset + 4 * header["value_count"]
    palette = files_for(path).read_range(path, at, PALETTE_BYTES, MAX_FRAME_BYTES, identity)
    if palette is None:
        return None
    if len(palette) != PALETTE_BYTES:
        raise FrameFormatError("frame file is shorter than its header implies")
    return FrameData(path, identity, header, offset, palette, text)



def read_header_of(path: str, identity: tuple) -> tuple[dict[str, Any], int] | None:
    """The header and data offset of the frame file at path, which must still be `identity`.

    Reads the magic and length, then the header, then two bytes at the end
    the header implies (so a torn or foreign file is refused as decode_frame
    would refuse it); never the values or pixels. None when the file is
    gone; FileRefused when it is not a regular file, or is no longer
    `identity`; FrameFormatError when it is not a valid frame file.
    """
    found = _read_header(path, identity)
    return None if found is None else found[:2]


def _read_header(path: str, identity: tuple) -> tuple[dict[str, Any], int, bytes] | None:
    """read_header_of(), plus the header's JSON text as stored."""
    files = files_for(path)
    first = files.read_range(path, 0, PREFIX_BYTES, MAX_FRAME_BYTES, identity)
    if first is None:
        return None
    span = header_span(first)
    prefix = files.read_range(path, 0, span, MAX_FRAME_BYTES, identity)
    if prefix is None:
        return None
    if len(prefix) < span:
        raise FrameFormatError("frame file is shorter than its header")
    header, offset = parse_header(prefix)
    end = offset + data_size(header)
    tail = files.read_range(path, end - 1, 2, MAX_FRAME_BYTES, identity)
    if tail is None:
        return None
    if len(tail) != 1:
        raise FrameFormatError(
            f"frame file is not the {end} bytes its header implies (a torn or foreign file)"
        )
    return header, offset, bytes(prefix[PREFIX_BYTES:span])

