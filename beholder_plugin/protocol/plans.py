"""Section plans: which elements of an array a frame shows, decided from its shape alone (layout.py).

``make_plan`` turns a shape, a layout and the frame's width into a
``SectionPlan``: the compact section's indices into the array, the sub-array
a framework adapter gathers on its device, and the maps that expand the
compact section to pixels. ``PlanCache`` keeps the plans a run needs, and
``KeptPlans`` keeps whatever is made from plans within a count and a byte
budget (a plan's index arrays can be a megabyte, and activations whose shapes
change every step, such as text of varying lengths, make new ones each frame).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from beholder_plugin.protocol.frame_checks import MAX_FRAME_PIXELS
from beholder_plugin.protocol.layout import (
    BLOCK_PERMS,
    MISSING,
    SEPARATOR_HEIGHT,
    RenderError,
    frame_width,
    resize_indices,
    resolve_layout,
    section_height,
    source_index,
    source_shape,
    unique_sorted,
    view_shape,
)


@dataclass(frozen=True, eq=False)
class SectionPlan:
    """What one array contributes to the frame, decided from its shape alone.

    ``index`` is a tuple of integer arrays into the original array, of
    shapes (rows, 1) or (1, cols) where the layout allows (they broadcast),
    giving the compact section: ``array[index]`` has shape ``compact_shape``.
    ``axes`` lists, per axis of the array, the sorted distinct indices that
    are read (``None``: the whole axis), and ``local`` indexes the sub-array
    ``array[np.ix_(*axes)]`` the same way; framework adapters gather that
    sub-array on the device first and copy only it. ``row_map`` and
    ``col_map`` expand the compact section to ``height`` x ``width`` pixels.
    """

    layout: str  # one of LAYOUTS
    shape: tuple[int, ...]
    height: int
    width: int
    source_shape: tuple[int, int]  # the 2-D section before resizing
    index: tuple[np.ndarray, ...]
    axes: tuple[np.ndarray | None, ...]
    local: tuple[np.ndarray, ...]
    row_map: np.ndarray
    col_map: np.ndarray
    row_weight: np.ndarray  # how many frame rows each compact row fills
    col_weight: np.ndarray
    kind: str = "index"  # which fast path take() uses: vector, matrix, blocks, flat, scalar
    parts: tuple = ()  # that path's 1-D index arrays

    @functools.cached_property
    def nbytes(self) -> int:
        """The memory its arrays take."""
        return arrays_bytes([self.index, self.axes, self.local, self.parts, self.row_map, self.col_map,
                             self.row_weight, self.col_weight])

    @property
    def compact_shape(self) -> tuple[int, int]:
        """Shape of the compact section: distinct sampled rows x distinct sampled columns."""
        return (len(self.row_weight), len(self.col_weight))

    def take(self, array: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The compact section of a NumPy array (reads only the elements shown, never copies it whole).

        Uses 1-D takes along axes where the layout allows, which is several
        times faster than one pointwise fancy index. Only on C-contiguous
        arrays: ndarray.take copies any other array whole first, which for a
        transposed or broadcast view can be gigabytes. With ``out`` (of the
        compact shape and the array's dtype) the last take writes into it.
        """
        kind, parts = self.kind, self.parts
        if kind == MISSING:
            return np.full((1, 1), np.nan, np.float32)
        if kind == "scalar":
            return np.full((1, 1), array[()])
        if not array.flags.c_contiguous:
            return array[self.index]
        if kind == "vector":
            return array.take(parts[0], out=None if out is None else out[0])[None, :]
        if kind == "matrix":
            return array.take(parts[0], axis=0).take(parts[1], axis=1, out=out)
        if kind == "matrix_out_in":  # rows of the section are the array's columns
            picked = array.take(parts[1], axis=0).take(parts[0], axis=1).T
            if out is None:
                return picked
            out[...] = picked
            return out
        if kind == "blocks":
            perm, block_rows, block_cols, row_pos, col_pos, view = parts
            if array.shape != view:
                array = array.reshape(view)
            sub = _pick(_pick(array, block_rows, perm[2]), block_cols, perm[3])
            sub = sub.transpose(perm[2], perm[0], perm[3], perm[1])  # (grid row, y, grid column, x)
            grid_rows, block_h, grid_cols, block_w = sub.shape
            if row_pos is None and col_pos is None:  # every row and column of the kept blocks: one copy
                if out is None:
                    out = np.empty((grid_rows * block_h, grid_cols * block_w), array.dtype)
                out.reshape(sub.shape)[...] = sub
                return out
            sub = sub.reshape(grid_rows * block_h, grid_cols * block_w)
            if row_pos is not None:
                sub = sub.take(row_pos, axis=0)
            if col_pos is None:
                if out is None:
                    return sub
                out[...] = sub
                return out
            return sub.take(col_pos, axis=1, out=out)
        if kind == "flat":
            rows, cols, row_src, col_src = parts
            grid = array.reshape(-1)[: rows * cols].reshape(rows, cols)
            return grid.take(row_src, axis=0).take(col_src, axis=1, out=out)
        return array[self.index]


def _fast_path(
    layout: str, shape: tuple[int, ...], source: tuple[int, int], rows: np.ndarray, cols: np.ndarray
) -> tuple[str, tuple]:
    """The take() fast path for a layout: its kind and 1-D index arrays."""
    if layout in ("scalar", "vector", "matrix", "matrix_out_in"):
        return layout, {"scalar": (), "vector": (cols,)}.get(layout, (rows, cols))
    if layout == MISSING:
        return MISSING, ()
    perm = BLOCK_PERMS.get(layout)
    if perm is not None:
        view = view_shape(layout, shape)
        bh, bw = view[perm[0]], view[perm[1]]
        block_rows = np.unique(rows // bh)
        block_cols = np.unique(cols // bw)
        row_pos = np.searchsorted(block_rows, rows // bh) * bh + rows % bh
        col_pos = np.searchsorted(block_cols, cols // bw) * bw + cols % bw
        # Runs of consecutive indices are read as slices (views), and positions that keep every
        # row or column of the kept blocks are skipped (None): most sections copy once.
        row_pos = None if np.array_equal(row_pos, np.arange(len(block_rows) * bh)) else row_pos
        col_pos = None if np.array_equal(col_pos, np.arange(len(block_cols) * bw)) else col_pos
        return "blocks", (perm, _as_slice(block_rows), _as_slice(block_cols), row_pos, col_pos, view)
    return "flat", (source[0], source[1], rows, cols)


def _as_slice(indices: np.ndarray) -> slice | np.ndarray:
    """A slice for indices that step evenly (a view instead of a copy), else the indices."""
    if len(indices) == 1:
        return slice(int(indices[0]), int(indices[0]) + 1)
    steps = np.diff(indices)
    if len(indices) and steps[0] > 0 and (steps == steps[0]).all():
        return slice(int(indices[0]), int(indices[-1]) + 1, int(steps[0]))
    return indices


def _pick(array: np.ndarray, indices: slice | np.ndarray, axis: int) -> np.ndarray:
    """array's entries at indices along axis: a view for a slice, a copy for an index array."""
    if isinstance(indices, slice):
        return array[(slice(None),) * axis + (indices,)]
    return array.take(indices, axis=axis)


def make_plan(
    shape: tuple[int, ...],
    width: int,
    show_all: bool,
    label: str = "?",
    layout: str | None = None,
    sizing: str = "fixed",
    max_height: int | None = None,
) -> SectionPlan:
    """The plan for one array of this shape in a frame of this width (layout: the original's rule;
    ``max_height``: at most so many pixels tall, fit_heights's cap for a frame of very many sections)."""
    shape = tuple(int(s) for s in shape)
    layout = resolve_layout(layout, shape, label) if layout != MISSING else MISSING
    height = section_height(shape, show_all, layout, sizing)
    if max_height is not None:
        height = min(height, max_height)
    src_h, src_w = source_shape(layout, shape, height, width, show_all, label)
    rows, row_map, row_weight = unique_sorted(resize_indices(src_h, height))
    cols, col_map, col_weight = unique_sorted(resize_indices(src_w, width))
    index = tuple(
        np.asarray(i, dtype=np.intp) for i in source_index(layout, shape, src_w, rows[:, None], cols[None, :])
    )
    axes: list[np.ndarray | None] = []
    local: list[np.ndarray] = []
    for axis, idx in enumerate(index):
        distinct = np.unique(idx)
        if len(distinct) == shape[axis]:
            axes.append(None)
            local.append(idx)
        else:
            axes.append(distinct)
            local.append(np.searchsorted(distinct, idx).astype(np.intp))
    kind, parts = _fast_path(layout, shape, (src_h, src_w), rows, cols)
    return SectionPlan(
        layout=layout,
        kind=kind,
        parts=parts,
        shape=shape,
        height=height,
        width=width,
        source_shape=(src_h, src_w),
        index=index,
        axes=tuple(axes),
        local=tuple(local),
        row_map=row_map,
        col_map=col_map,
        row_weight=row_weight,
        col_weight=col_weight,
    )


# A frame of more sections than fit a reader's pixel cap at their own heights (a mixture of experts:
# 3,000 parameters at 128 px) has them all cut to one height that fits; this is the least it may be.
MIN_FITTED_HEIGHT = 4


def fit_heights(heights: Sequence[int], width: int) -> int | None:
    """The largest section height that fits sections of these heights (5 px apart) into a frame a
    reader takes at this width (None: they fit as they are); RenderError when not even
    MIN_FITTED_HEIGHT does."""
    rows = MAX_FRAME_PIXELS // width - SEPARATOR_HEIGHT * (len(heights) - 1)
    if sum(heights) <= rows:
        return None
    ordered = np.sort(np.asarray(heights, np.int64))
    low, high = MIN_FITTED_HEIGHT, int(ordered[-1])  # (the sum grows with the cap: bisect it)
    if np.minimum(ordered, low).sum() > rows:
        most = MAX_FRAME_PIXELS // (width * (MIN_FITTED_HEIGHT + SEPARATOR_HEIGHT))
        raise RenderError(
            f"{len(heights)} sections do not fit in one frame ({most} at most, each {MIN_FITTED_HEIGHT} px "
            f"tall at width {width}): show fewer, with the dashboard's Sections filter (a name, or a "
            "/regex/) or by passing fewer arrays")
    while low < high:
        mid = (low + high + 1) // 2
        if np.minimum(ordered, mid).sum() <= rows:
            low = mid
        else:
            high = mid - 1
    return low


# The memory the plans one cache keeps may take at most (a frame of a 24-layer transformer's
# activations, about 200 sections of 1 MB each, fits).
PLANS_KEPT_BYTES = 256 * 2**20


def arrays_bytes(values: Iterable[Any]) -> int:
    """The memory the NumPy arrays among values take (in tuples and lists too), each counted once."""
    seen: set[int] = set()
    total = 0
    todo = list(values)
    while todo:
        value = todo.pop()
        if isinstance(value, np.ndarray):
            base = value if value.base is None or not isinstance(value.base, np.ndarray) else value.base
            if id(base) not in seen:
                seen.add(id(base))
                total += base.nbytes
        elif isinstance(value, (tuple, list)):
            todo.extend(value)
    return total


class KeptPlans:
    """What was made from plans (a plan, a frame plan, a tuple holding one), by key: at most ``limit``
    entries and ``max_bytes`` of their arrays, the oldest dropped first."""

    def __init__(self, limit: int, max_bytes: int | None = None) -> None:
        self.limit = limit
        self.max_bytes = PLANS_KEPT_BYTES if max_bytes is None else max_bytes
        self.bytes = 0
        self._entries: dict[Any, Any] = {}
        self._sizes: dict[Any, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Any) -> Any:
        """The entry kept for key, or None."""
        return self._entries.get(key)

    def values(self) -> list[Any]:
        """The entries kept, oldest first."""
        return list(self._entries.values())

    def put(self, key: Any, entry: Any, nbytes: int) -> list[Any]:
        """Keep an entry whose arrays take nbytes; the entries dropped to make room for it."""
        dropped = []
        while self._entries and (len(self._entries) >= self.limit or self.bytes + nbytes > self.max_bytes):
            oldest = next(iter(self._entries))
            dropped.append(self._entries.pop(oldest))
            self.bytes -= self._sizes.pop(oldest)
        self._entries[key] = entry
        self._sizes[key] = nbytes
        self.bytes += nbytes
        return dropped

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
        self._sizes.clear()
        self.bytes = 0


class PlanCache:
    """Plans by (shape, width, show_all, layout); a training run has few distinct shapes (KeptPlans)."""

    def __init__(self, limit: int = 1024, max_bytes: int | None = None) -> None:
        self._plans = KeptPlans(limit, max_bytes)

    def plan(
        self,
        shape: tuple[int, ...],
        width: int,
        show_all: bool,
        label: str = "?",
        layout: str | None = None,
        sizing: str = "fixed",
        max_height: int | None = None,
    ) -> SectionPlan:
        """The plan for one array in a frame of this width (cached)."""
        key = (tuple(shape), width, show_all, layout, sizing, max_height)
        plan = self._plans.get(key)
        if plan is None:
            plan = make_plan(shape, width, show_all, label, layout, sizing, max_height)
            self._plans.put(key, plan, plan.nbytes)
        return plan

    def plans(
        self,
        shapes: Sequence[tuple[int, ...]],
        show_all: bool,
        labels: Sequence[str],
        layouts: Sequence[str | None] | None = None,
        sizing: str = "fixed",
    ) -> list[SectionPlan]:
        """One plan per shape, for a frame holding all of them."""
        layouts = layouts or [None] * len(shapes)
        width = frame_width(shapes, show_all, layouts)
        return [self.plan(shape, width, show_all, label, layout, sizing)
                for shape, label, layout in zip(shapes, labels, layouts)]
