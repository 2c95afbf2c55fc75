"""Two runs' latest frames subtracted section by section: the `diff` route (docs/http-api.md).

For every section of run A whose name is also in run B with the same
"shape", "layout" and "compact" size, the stored float32 values of B are
subtracted from A's (A - B, in float32) and drawn with a diverging palette
over [-m, m], m = the largest finite |A - B| of that section:

    index = 128 + rint(d * float32(127 / m))    clipped to 1..255 (ties to even)

so 0 is index 128 (white), -m index 1 (blue) and +m index 255 (red). A
section whose differences are all 0 (m = 0) is all white; NaN differences
are index 0 (black), +inf 255, -inf 1. Sections without a match, and the
separators, are black (index 0). The picture is laid out like A's frame
(`beholder_plugin.protocol.layout.expand_sections`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from beholder_plugin.protocol.files import FileRefused, files_for
from beholder_plugin.protocol.frame_format import MAX_FRAME_BYTES, FrameFormatError
from beholder_plugin.protocol.layout import MISSING, expand_sections
from beholder_plugin.server.frame_encoding import encode_palette_png
from beholder_plugin.server.frame_hub import FrameHub, file_identity, file_key

# The ends and the middle of the diverging palette (ColorBrewer's RdBu ends, white at 0).
NEGATIVE_RGB = (33, 102, 172)
ZERO_RGB = (255, 255, 255)
POSITIVE_RGB = (178, 24, 43)
ZERO_INDEX = 128
# Differences kept (two runs' frame identities -> PNG and description).
MAX_CACHED_DIFFS = 8
# Attempts at reading a values block that the trainer replaces meanwhile.
_ATTEMPTS = 3
# Sections compared must agree on these keys of their records.
MATCH_KEYS = ("shape", "layout", "compact")


class DiffError(ValueError):
    """A difference that cannot be computed; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def diverging_palette() -> np.ndarray:
    """256 x 3 uint8: index 0 black, 1 blue (-m) through 128 white (0) to 255 red (+m)."""
    t = (np.arange(256, dtype=np.float64) - ZERO_INDEX) / (255 - ZERO_INDEX)
    zero, neg, pos = (np.asarray(c, np.float64) for c in (ZERO_RGB, NEGATIVE_RGB, POSITIVE_RGB))
    end = np.where(t[:, None] < 0, neg, pos)
    rgb = zero + (end - zero) * np.abs(t)[:, None]
    rgb[0] = 0
    return np.rint(rgb).astype(np.uint8)


DIFF_PALETTE = diverging_palette()


def difference_indices(diff: np.ndarray) -> tuple[np.ndarray, float | None]:
    """Palette indices of one section's float32 differences, and m (None when none is finite)."""
    diff = np.asarray(diff, np.float32)
    finite = np.isfinite(diff)
    m = float(np.max(np.abs(diff[finite]))) if finite.any() else None
    out = np.full(diff.shape, ZERO_INDEX, np.uint8)
    if m:
        scaled = np.rint(diff[finite] * np.float32(127 / np.float32(m)))
        out[finite] = np.clip(ZERO_INDEX + scaled, 1, 255).astype(np.uint8)
    out[np.isnan(diff)] = 0
    out[np.isposinf(diff)] = 255
    out[np.isneginf(diff)] = 1
    return out, m


def _mismatch(rec: dict[str, Any], other: dict[str, Any] | None) -> str | None:
    """Why two section records cannot be subtracted (None when they can)."""
    if other is None:
        return "not in the other run"
    if MISSING in (rec.get("layout"), other.get("layout")) or "missing" in rec or "missing" in other:
        return "no values in one of the runs"
    for key in MATCH_KEYS:
        if rec.get(key) != other.get(key):
            return f"{key} {rec.get(key)} vs {other.get(key)}"
    return None


def diff_frames(
    head_a: dict[str, Any], values_a: np.ndarray, head_b: dict[str, Any], values_b: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    """(H x W palette indices laid out like frame A, description) of A - B, section by section."""
    sections_a = head_a.get("sections") or []
    by_name: dict[str, dict[str, Any]] = {}
    for rec in head_b.get("sections") or []:
        by_name.setdefault(rec["name"], rec)
    compact = np.zeros(values_a.size, np.uint8)
    matched, unmatched = [], []
    for rec in sections_a:
        other = by_name.get(rec["name"])
        reason = _mismatch(rec, other)
        if reason is not None:
            unmatched.append({"name": rec["name"], "reason": reason})
            continue
        rows, cols = (int(v) for v in rec["compact"])
        start_a, start_b, size = int(rec["values"]), int(other["values"]), rows * cols
        with np.errstate(invalid="ignore", over="ignore"):
            diff = values_a[start_a : start_a + size] - values_b[start_b : start_b + size]
        compact[start_a : start_a + size], m = difference_indices(diff)
        matched.append({"name": rec["name"], "top": rec["top"], "height": rec["height"], "max_abs": m})
    names_a = {rec["name"] for rec in sections_a}
    width, height = int(head_a["width"]), int(head_a["height"])
    rows, row_index = expand_sections(sections_a, width, height, compact)
    info = {
        "width": width,
        "height": height,
        "sections": matched,
        "unmatched": unmatched,
        "only_in_other": [name for name in by_name if name not in names_a],
    }
    return np.take(rows, row_index, axis=0), info


@dataclass
class Diff:
    """One computed difference: the PNG and its description (both frames named in it)."""

    png: bytes
    info: dict[str, Any]


class DiffCache:
    """Differences of two runs' latest frames, computed once per pair of frame files' versions."""

    def __init__(self, hub: FrameHub):
        self._hub = hub
        self._done: OrderedDict[tuple, Diff] = OrderedDict()
        self._lock = threading.Lock()

    def diff(self, path_a: str, path_b: str) -> Diff | None:
        """A - B of the latest frames at two paths (None when either run has no frame yet).

        DiffError 409 when a frame shows an image rather than arrays;
        FrameFormatError for a file that is not a valid frame.
        """
        for _ in range(_ATTEMPTS):
            found_a, found_b = self._hub.header(path_a), self._hub.header(path_b)
            if found_a is None or found_b is None:
                return None
            (head_a, offset_a), id_a = found_a
            (head_b, offset_b), id_b = found_b
            key = (file_key(path_a), id_a, file_key(path_b), id_b)
            with self._lock:
                if key in self._done:
                    self._done.move_to_end(key)
                    return self._done[key]
            for head, name in ((head_a, "run"), (head_b, "other")):
                if not head.get("sections"):
                    raise DiffError(f"the latest frame of ?{name}= shows an image, not arrays: "
                                    "there is nothing to subtract", 409)
            try:
                values_a = _values(path_a, head_a, offset_a, id_a)
                values_b = _values(path_b, head_b, offset_b, id_b)
            except FileRefused:
                if file_identity(path_a) != id_a or file_identity(path_b) != id_b:
                    continue  # a newer frame replaced one of them while it was read: once more
                raise
            if values_a is None or values_b is None:
                return None
            pixels, info = diff_frames(head_a, values_a, head_b, values_b)
            for prefix, head in (("", head_a), ("other_", head_b)):
                for field in ("frame_id", "writer", "step"):
                    info[prefix + field] = head.get(field)
            result = Diff(png=encode_palette_png(pixels, DIFF_PALETTE), info=info)
            with self._lock:
                self._done[key] = result
                while len(self._done) > MAX_CACHED_DIFFS:
                    self._done.popitem(last=False)
            return result
        raise FrameFormatError("the frame files kept changing while they were read")


def _values(path: str, head: dict[str, Any], offset: int, identity: tuple) -> np.ndarray | None:
    """The float32 values block of the frame file at path, which must still be `identity`."""
    count = int(head.get("value_count", 0))
    raw = files_for(path).read_range(path, offset, 4 * count, MAX_FRAME_BYTES, identity)
    if raw is None:
        return None
    if len(raw) != 4 * count:
        raise FrameFormatError("frame file is shorter than its header implies")
    return np.frombuffer(raw, "<f4").astype(np.float32)
