"""Values to palette indices: the one scaling rule every writer and reader applies.

A value ``v`` of a section whose bounds are ``lo < hi`` gets the palette
index ``uint8((float32(v) - float32(lo)) * float32(255 / (hi - lo)))``,
computed in float32 and truncated; NaN and -inf give 0, +inf gives 255, and
a section whose bounds are equal (or unknown) is all 0.

Frames of arrays store the values and each section's bounds; their pixels
are this function of them, so the trainer never spends time on pixels that
nobody looks at, and every reader gets exactly the same ones.

Example::

    indices = palette_indices(frame.values, frame.sections)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def scale_factor(lo: float | None, hi: float | None) -> float:
    """255 / (hi - lo), or 0 for a flat, unknown or non-finite range (such a section is all 0)."""
    if lo is None or hi is None:
        return 0.0
    span = float(hi) - float(lo)
    return 255.0 / span if span > 0 and math.isfinite(span) else 0.0


def palette_indices(values: np.ndarray, sections: Sequence[dict[str, Any]]) -> np.ndarray:
    """The palette index of every value of a frame's values block, section by section (uint8)."""
    values = np.asarray(values, dtype=np.float32)
    out = np.zeros(values.shape, np.uint8)
    if not sections:
        return out
    starts = [int(rec["values"]) for rec in sections]
    sizes = [int(rec["compact"][0]) * int(rec["compact"][1]) for rec in sections]
    lows = [rec["bounds"][0] if rec["bounds"][0] is not None else 0.0 for rec in sections]
    factors = [scale_factor(*rec["bounds"]) for rec in sections]
    contiguous = starts == list(np.cumsum([0, *sizes[:-1]])) and sum(sizes) == values.size
    if contiguous:  # a frame as the trainer writes it: one pass over all values
        lo = np.repeat(np.asarray(lows, np.float32), sizes)
        with np.errstate(over="ignore"):  # (a range of denormals: float32(255 / span) is inf, as specified)
            k = np.repeat(np.asarray(factors, np.float32), sizes)
        _scale_into(values, lo, k, out)
    else:  # any other layout of the values block: section by section
        for start, size, lo_s, k_s in zip(starts, sizes, lows, factors):
            part = slice(start, start + size)
            _scale_into(values[part], np.float32(lo_s), np.float32(k_s), out[part])
    return out


def _scale_into(values: np.ndarray, lo: Any, k: Any, out: np.ndarray) -> None:
    """out = uint8((values - lo) * k) in float32, with NaN and -inf at 0 and +inf at 255."""
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = np.subtract(values, lo, dtype=np.float32)
        scaled *= k
    if not np.isfinite(scaled).all():  # NaN or inf among the values (or an infinite range)
        np.nan_to_num(scaled, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        if np.ndim(k) == 0:
            if k == 0:
                scaled.fill(0)
        else:
            scaled[k == 0] = 0
    np.copyto(out, scaled, casting="unsafe")
