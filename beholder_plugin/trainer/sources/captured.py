"""Values captured by watch() hooks during a step, ready for the frame that is due.

A hook copies only the values a frame shows (the compact section, sliced on
the device) when the frame width is known in advance; with show_all it keeps
a private copy of the whole tensor instead, sliced when the frame is gathered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from beholder_plugin.protocol.layout import NoValues, RenderError
from beholder_plugin.protocol.plans import SectionPlan


@dataclass
class Captured:
    """One section captured by a hook: its shape and layout, and its compact values or a copy."""

    shape: tuple[int, ...]
    layout: str | None
    compact: np.ndarray | None = None  # the compact section for `width` (no show_all)
    width: int = 0
    tensor: Any = None  # a private copy of the whole tensor (show_all)
    error: str | None = None  # why nothing could be captured
    sample: np.ndarray | None = None  # every k-th value, for the statistics (views.stats)
    # On a device (sources.torch_batch): the shown values then the sample, side by side, still on the
    # device and in the tensor's dtype; gathered into the frame's device buffer with the other sections.
    part: Any = None
    compact_shape: tuple[int, int] | None = None
    norm: Any = None  # an activation's L2 norm over all its values (0-d float32 tensor), for the timeline


def scale_values(obj: Captured, factor: Any) -> None:
    """Multiply a capture's values by ``factor`` (a scalar tensor on their device), in place: a capture
    holds copies, never the tensor it was taken from."""
    for name in ("part", "tensor"):
        values = getattr(obj, name)
        if values is not None:
            values.mul_(factor)
    if obj.compact is not None:  # (on the host: the factor is a CPU tensor, read without a device sync)
        number = float(factor)
        obj.compact = obj.compact * np.float32(number)
        if obj.sample is not None:
            obj.sample = obj.sample * np.float32(number)


def prepare(obj: Captured, label: str) -> Captured:
    """The capture itself; refused (naming the section) when its hook could not capture."""
    if obj.error is not None:
        raise NoValues(f"section {label}: {obj.error}")
    return obj


def compact(obj: Captured, plan: SectionPlan, label: str) -> np.ndarray:
    """The captured compact section, or the plan's slice of the kept copy."""
    if obj.compact is not None and plan.width == obj.width and plan.compact_shape == obj.compact.shape:
        return obj.compact
    if obj.tensor is not None:
        from beholder_plugin.trainer import sources

        source, values = sources.in_place(obj.tensor)
        return source.compact(values, plan, label)
    raise RenderError(f"section {label}: captured for another frame layout; the next frame will show it")


def sample(obj: Captured, runs: tuple[int, int, int]) -> np.ndarray:
    """The values the hook sampled for the statistics (the same runs: they depend on the size alone)."""
    if obj.sample is not None:
        return obj.sample
    if obj.tensor is not None:
        from beholder_plugin.trainer import sources

        source, values = sources.in_place(obj.tensor)
        return source.sample(values, runs)
    return np.empty(0, np.float32)


def default_layout(obj: Captured, shape: tuple[int, ...]) -> str | None:
    """The layout the hook chose (from the module or parameter it watched)."""
    return obj.layout


def whole(obj: Captured, label: str) -> np.ndarray:
    """Captures are sections, never user frames."""
    raise RenderError(f"{label}: a captured section cannot be shown as a frame")
