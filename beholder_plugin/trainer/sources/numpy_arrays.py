"""NumPy adapter, also used for anything else array-like (lists, scalars, objects with __array__)."""

from __future__ import annotations

from typing import Any

import numpy as np

from beholder_plugin.protocol.layout import RenderError
from beholder_plugin.protocol.plans import SectionPlan
from beholder_plugin.trainer import sources


def prepare(obj: Any, label: str) -> np.ndarray:
    """A NumPy array for obj, with a clear error for ragged or non-numeric input."""
    if type(obj) is np.ndarray:
        array = obj
    else:
        if isinstance(obj, np.ma.MaskedArray):
            obj = _unmasked(obj, label)
        try:
            array = np.asarray(obj)
        except Exception as exc:  # ragged lists and the like
            raise RenderError(f"section {label}: cannot be read as an array ({exc})") from None
    if array.dtype == object or array.dtype.kind in "USMm":
        raise RenderError(
            f"section {label}: {type(obj).__name__} is not a numeric array (dtype {array.dtype})"
        )
    return array


def _unmasked(array: np.ma.MaskedArray, label: str) -> np.ndarray:
    """A masked array's data when nothing is masked; else RenderError (every element is shown)."""
    masked = int(np.ma.count_masked(array))
    if masked:
        raise RenderError(
            f"section {label}: a masked array ({masked} of {array.size} elements masked); every "
            "element is shown, so pass array.filled(value) to choose what the masked ones show"
        )
    return array.data


def compact(array: np.ndarray, plan: SectionPlan, label: str, out: np.ndarray | None = None) -> np.ndarray:
    """The plan's compact section, reading only the shown elements (float32 arrays: straight into out)."""
    if out is not None and array.dtype == np.float32:
        return plan.take(array, out=out)
    return plan.take(array)


def sample(array: np.ndarray, runs: tuple[int, int, int]) -> np.ndarray:
    """The sample's runs of consecutive values in flat (C) order (views.stats), reading only those."""
    count, stride, length = runs
    if array.flags.c_contiguous:
        return array.reshape(-1)[: count * stride].reshape(count, stride)[:, :length]
    return array[np.unravel_index(sources.run_positions(runs), array.shape)]


def whole(obj: Any, label: str) -> np.ndarray:
    """The whole array."""
    return prepare(obj, label)
