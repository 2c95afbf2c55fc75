"""Layout arithmetic: where each array's values land in a frame, decided from shapes alone.

Pure NumPy, no I/O, no framework import. The work is split so that a caller
can read only the values that will be shown:

1. ``Renderer.plans(shapes, show_all)`` decides, from shapes alone, the frame
   width and, for each array, a ``SectionPlan``: which elements of the array
   end up on screen after the layout rules and the nearest-neighbour resize.
2. The caller fetches just those elements (``SectionPlan.take`` for NumPy;
   ``beholder_plugin.trainer.sources`` for tensors) as a small "compact" 2-D array:
   one row per distinct source row the resize samples, one column per
   distinct source column.
3. ``Renderer.render(...)`` applies the mode (variance over a window),
   computes the statistics, scales to 0..255 and expands the compact sections
   to full size, section by section, into a uint8 frame of palette indices.

Because a nearest-neighbour resize only copies pixels, taking the variance,
minimum, maximum and scaling of the compact section and expanding afterwards
gives exactly the pixels the original computed on the full-size section.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SECTION_HEIGHT = 128
FRAME_WIDTH = 768
SEPARATOR_HEIGHT = 5
# Bounds of the "proportional" section size.
MIN_PROPORTIONAL_HEIGHT = 32
MAX_PROPORTIONAL_HEIGHT = 512
MIN_BLOCK = 3
# When show_all is off, about this many values of one array are shown at most.
TRUNCATION_BUDGET = SECTION_HEIGHT * (FRAME_WIDTH // MIN_BLOCK)  # 32768
# Hard caps that the writer keeps to and every reader checks (frame_format.py, docs/protocol.md).
# "Show all data" shows a wider or taller array as a strided sample of this many columns or rows
# (the nearest-neighbour resize picks them), so one section holds at most 8 M values (32 MB): with
# the variance window, update() on a 200 M-value array stays near 0.3 s and 0.6 GB (docs/reliability.md).
MAX_FRAME_WIDTH = 4096
MAX_SECTION_HEIGHT = 2048


class RenderError(ValueError):
    """An array that cannot be laid out; the message names the section."""


class NoValues(RenderError):
    """A section with nothing to show this frame (None, a gradient that never came): not an error, even
    with strict; the section is drawn empty with the reason."""


# ---------------------------------------------------------------- geometry


def frame_width(
    shapes: Sequence[tuple[int, ...]], show_all: bool, layouts: Sequence[str | None] | None = None
) -> int:
    """The frame width for these array shapes: 768, or wider with show_all (layouts: the original's rule)."""
    width = FRAME_WIDTH
    if show_all:
        for shape, layout in zip(shapes, layouts or [None] * len(shapes)):
            natural = _natural_size(layout or layout_for(shape), tuple(shape))[1]
            if natural is not None:
                width = max(width, natural)
    return min(width, MAX_FRAME_WIDTH)


def section_height(
    shape: tuple[int, ...], show_all: bool, layout: str | None = None, sizing: str = "fixed"
) -> int:
    """The pixel height of one array's section (layout: the original's rule for the shape).

    ``sizing`` "fixed" is the original's 128 px; "proportional" grows with
    the number of values, 16 px per doubling (``16 * ceil(log2(n + 1))``),
    from 32 to 512 px. show_all's natural heights take precedence.
    """
    layout = layout or layout_for(shape)
    if layout == MISSING:
        return MISSING_HEIGHT
    if show_all and layout != "vector":
        return min(MAX_SECTION_HEIGHT, max(SECTION_HEIGHT, _natural_size(layout, tuple(shape))[0]))
    if sizing == "proportional":
        grown = 16 * math.ceil(math.log2(math.prod(shape) + 1))
        return min(MAX_PROPORTIONAL_HEIGHT, max(MIN_PROPORTIONAL_HEIGHT, grown))
    return SECTION_HEIGHT


def _natural_size(layout: str, shape: tuple[int, ...]) -> tuple[int, int | None]:
    """The unresized (height, width) show_all gives a layout; width None where it never widens the frame."""
    if layout == "vector":
        return (1, shape[0])
    if layout == "matrix":
        return (shape[0], shape[1])
    if layout == "matrix_out_in":
        return (shape[1], shape[0])
    perm = BLOCK_PERMS.get(layout)
    if perm is not None:
        view = view_shape(layout, shape)
        return (view[perm[0]] * view[perm[2]], view[perm[1]] * view[perm[3]])
    if layout == MISSING:
        return (MISSING_HEIGHT, None)
    return (math.prod(shape) // FRAME_WIDTH, None)


def looks_like_activation(shape: tuple[int, ...]) -> bool:
    """True for a rank-4 shape (n, h, w, c) with h == w and n != h, laid out as feature maps."""
    return len(shape) == 4 and shape[1] == shape[2] and shape[0] != shape[1]


def conv_rows_kept(block_h: int, block_w: int, rows: int, show_all: bool) -> int:
    """How many block rows of a rank-4 layout are kept (the original's counting quirk included)."""
    if show_all:
        return rows
    per_row = block_h * block_w * rows  # the original counts kh*kw*in per row, not kh*kw*out
    return min(rows, (TRUNCATION_BUDGET - 1) // per_row + 2)


def irregular_grid(count: int, height: int, width: int) -> tuple[int, int]:
    """Rows and columns of the near-square grid an array of another rank is reshaped to."""
    side = max(1, math.floor(math.sqrt(height * width / count)))
    rows = max(1, height // side)
    return rows, count // rows


def resize_indices(src: int, dst: int) -> np.ndarray:
    """Nearest-neighbour source index for each of dst outputs, in the original's float32 arithmetic.

    TensorFlow's resize computes ``scale = float32(src) / float32(dst)`` and
    ``min(floor(float32(i) * scale), src - 1)`` in float32. Where ``i * src / dst``
    is a whole number the float32 product can fall just below it and pick the
    previous source index (112 -> 768 takes column 62 at x = 432, not 63).
    """
    scale = np.float32(src) / np.float32(dst)
    product = np.arange(dst, dtype=np.float32) * scale
    return np.minimum(np.floor(product).astype(np.int64), src - 1)


# ---------------------------------------------------------------- plans


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


def _unique_sorted(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct values of a non-decreasing index vector, the inverse map, and counts."""
    keep = np.ones(len(indices), dtype=bool)
    keep[1:] = indices[1:] != indices[:-1]
    unique = indices[keep]
    inverse = np.cumsum(keep) - 1
    counts = np.bincount(inverse, minlength=len(unique))
    return unique, inverse, counts


# Layouts drawn as a grid of blocks: which axis of the array's 4-D view holds
# (the block's rows, the block's columns, the grid's rows, the grid's columns).
# Kernels put input channels down and output channels across, whatever the
# framework's axis order, so the same weights give the same picture.
BLOCK_PERMS: dict[str, tuple[int, int, int, int]] = {
    "kernel_hwio": (0, 1, 2, 3),  # TensorFlow/Keras convolutions: w[:, :, in, out]
    "kernel_hwoi": (0, 1, 3, 2),  # Keras transposed convolutions (h, w, out, in)
    "kernel_oihw": (2, 3, 1, 0),  # PyTorch/ONNX convolutions (out, in, h, w)
    "kernel_iohw": (2, 3, 0, 1),  # PyTorch transposed convolutions (in, out, h, w)
    "activation_nhwc": (1, 2, 0, 3),  # feature maps a[n, :, :, c]; grid rows = n, columns = c
    "activation_nchw": (2, 3, 0, 1),  # the same from (n, c, h, w)
}
_CHANNELS_FIRST = ("kernel_oihw", "kernel_iohw", "activation_nchw")
# A section whose array could not be read (None, empty, not an array): a short black band whose
# record says why ("missing"); it has no values to look up.
MISSING = "missing"
MISSING_HEIGHT = 32
LAYOUTS = ("scalar", "vector", "matrix", "matrix_out_in", *BLOCK_PERMS, "grid", MISSING)
# Names update(layout=...) accepts besides the layouts themselves.
LAYOUT_ALIASES = {
    "hwio": "kernel_hwio", "hwoi": "kernel_hwoi", "oihw": "kernel_oihw", "iohw": "kernel_iohw",
    "nhwc": "activation_nhwc", "nchw": "activation_nchw", "in_out": "matrix", "out_in": "matrix_out_in",
}
_SPATIAL = {3: ("l",), 4: ("h", "w"), 5: ("d", "h", "w")}


def layout_for(shape: tuple[int, ...]) -> str:
    """The original's layout for an array of this shape (TensorFlow's axis order)."""
    rank = len(shape)
    if rank == 0:
        return "scalar"
    if rank == 1:
        return "vector"
    if rank == 2:
        return "matrix"
    if rank == 4:
        return "activation_nhwc" if looks_like_activation(shape) else "kernel_hwio"
    return "grid"


def resolve_layout(layout: str | None, shape: tuple[int, ...], label: str = "?") -> str:
    """A layout name (or alias, or None/"auto" for the original's rule) checked against the array's rank."""
    if layout is None or layout == "auto":
        return layout_for(shape)
    name = LAYOUT_ALIASES.get(layout, layout) if isinstance(layout, str) else layout
    if name not in LAYOUTS or name == MISSING:
        known = ", ".join(sorted({*LAYOUTS, *LAYOUT_ALIASES} - {MISSING}))
        raise RenderError(f"section {label}: unknown layout {layout!r} (known: auto, {known})")
    if name in BLOCK_PERMS:
        ranks: tuple[int, ...] = (3, 4, 5)
    else:
        ranks = {"scalar": (0,), "vector": (1,), "matrix": (2,), "matrix_out_in": (2,)}.get(name, ())
    if (ranks and len(shape) not in ranks) or (name == "grid" and not shape):
        raise RenderError(f"section {label}: layout {name} does not fit an array of shape {tuple(shape)}")
    return name


def view_shape(layout: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The 4-D shape a block layout works on: 1-D and 3-D convolutions and activations are reshaped.

    Rank 3 gets a unit height (a kernel (k, in, out) is 1 x k blocks); rank 5
    stacks depth slices inside each block (depth x height rows). Plain C-order
    reshapes, so flat indices are unchanged. Other layouts: the shape itself.
    """
    rank = len(shape)
    if layout not in BLOCK_PERMS or rank not in (3, 5):
        return shape
    if layout in _CHANNELS_FIRST:
        return (*shape[:2], 1, shape[2]) if rank == 3 else (*shape[:2], shape[2] * shape[3], shape[4])
    if layout.startswith("activation"):
        return (shape[0], 1, *shape[1:]) if rank == 3 else (shape[0], shape[1] * shape[2], *shape[3:])
    return (1, *shape) if rank == 3 else (shape[0] * shape[1], *shape[2:])


def axis_names(layout: str, rank: int) -> list[str]:
    """Names of an array's own axes under a layout, for read-outs: ["out", "in", "kh", "kw"], ["i", "j"]..."""
    if layout == "vector" and rank == 1:
        return ["i"]
    if layout == "matrix" and rank == 2:
        return ["i", "j"]
    if layout == "matrix_out_in":
        return ["out", "in"]
    if layout in BLOCK_PERMS and rank in _SPATIAL:
        spatial = list(_SPATIAL[rank])
        if layout.startswith("kernel"):
            spatial = ["k" if a == "l" else "k" + a for a in spatial]
        return {
            "kernel_hwio": [*spatial, "in", "out"],
            "kernel_hwoi": [*spatial, "out", "in"],
            "kernel_oihw": ["out", "in", *spatial],
            "kernel_iohw": ["in", "out", *spatial],
            "activation_nhwc": ["n", *spatial, "c"],
            "activation_nchw": ["n", "c", *spatial],
        }[layout]
    return [f"d{k}" for k in range(rank)]


def source_shape(layout: str, shape: tuple[int, ...], height: int, width: int, show_all: bool,
                 label: str = "?") -> tuple[int, int]:
    """Rows and columns of the 2-D section an array is laid out as, before the resize."""
    count = math.prod(shape)
    if count == 0 and layout != MISSING:
        raise RenderError(f"section {label}: the array is empty (shape {shape})")
    if layout in ("scalar", MISSING):
        return (1, 1)
    if layout in ("vector", "matrix", "matrix_out_in"):
        return _natural_size(layout, shape)  # drawn whole, one value per cell
    perm = BLOCK_PERMS.get(layout)
    if perm is not None:
        view = view_shape(layout, shape)
        bh, bw, n_rows, n_cols = (view[p] for p in perm)
        return (conv_rows_kept(bh, bw, n_rows, show_all) * bh, n_cols * bw)
    if not show_all:
        count = min(count, TRUNCATION_BUDGET)
    rows, cols = irregular_grid(count, height, width)
    if cols == 0:
        raise RenderError(f"section {label}: too few values ({count}) to fill a section")
    return (rows, cols)


def source_index(layout: str, shape: tuple[int, ...], source_cols: int, r: Any, c: Any) -> tuple:
    """The array index shown at row r, column c of the 2-D section (r and c may be arrays)."""
    if layout in ("scalar", MISSING):
        return ()
    if layout == "vector":
        return (c,)
    if layout == "matrix":
        return (r, c)
    if layout == "matrix_out_in":
        return (c, r)
    perm = BLOCK_PERMS.get(layout)
    if perm is not None:
        view = view_shape(layout, shape)
        bh, bw = view[perm[0]], view[perm[1]]
        logical = (r % bh, c % bw, r // bh, c // bw)
        physical: list[Any] = [None] * 4
        for axis, p in enumerate(perm):
            physical[p] = logical[axis]
        if view == shape:
            return tuple(physical)
        return tuple(np.unravel_index(np.ravel_multi_index(tuple(physical), view), shape))
    return tuple(np.unravel_index(r * source_cols + c, shape))


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
) -> SectionPlan:
    """The plan for one array of this shape in a frame of this width (layout: the original's rule)."""
    shape = tuple(int(s) for s in shape)
    layout = resolve_layout(layout, shape, label) if layout != MISSING else MISSING
    height = section_height(shape, show_all, layout, sizing)
    src_h, src_w = source_shape(layout, shape, height, width, show_all, label)
    rows, row_map, row_weight = _unique_sorted(resize_indices(src_h, height))
    cols, col_map, col_weight = _unique_sorted(resize_indices(src_w, width))
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


class PlanCache:
    """Plans by (shape, width, show_all, layout); a training run has few distinct shapes."""

    def __init__(self, limit: int = 1024) -> None:
        self._plans: dict[tuple, SectionPlan] = {}
        self._limit = limit

    def plan(
        self,
        shape: tuple[int, ...],
        width: int,
        show_all: bool,
        label: str = "?",
        layout: str | None = None,
        sizing: str = "fixed",
    ) -> SectionPlan:
        """The plan for one array in a frame of this width (cached)."""
        key = (tuple(shape), width, show_all, layout, sizing)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= self._limit:
                self._plans.clear()
            plan = self._plans[key] = make_plan(shape, width, show_all, label, layout, sizing)
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


# ---------------------------------------------------------------- compact sections -> pixels


@functools.lru_cache(maxsize=4096)
def compact_map(src: int, dst: int) -> np.ndarray:
    """For each of dst pixels, which distinct sampled source index (compact row or column) it shows."""
    _, inverse, _ = _unique_sorted(resize_indices(src, dst))
    inverse.setflags(write=False)
    return inverse


def expand_sections(
    sections: Sequence[dict[str, Any]], width: int, height: int, compact: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A frame stored as compact section pixels, as distinct rows and a row index (rows[index] is the frame).

    ``compact`` holds each section's compact pixels at the section's
    ``values`` offset. Rows outside every section (separators) are black.
    """
    covered = sum(int(rec["height"]) for rec in sections)
    black = 1 if covered < height else 0
    rows = np.zeros((black + sum(int(rec["compact"][0]) for rec in sections), width), dtype=np.uint8)
    row_index = np.zeros(height, dtype=np.uint32)
    base = black
    for rec in sections:
        (src_h, src_w), (n_rows, n_cols) = rec["source"], rec["compact"]
        start, top, sec_height = int(rec["values"]), int(rec["top"]), int(rec["height"])
        small = compact[start : start + n_rows * n_cols].reshape(n_rows, n_cols)
        np.take(small, compact_map(src_w, width), axis=1, out=rows[base : base + n_rows])
        row_index[top : top + sec_height] = compact_map(src_h, sec_height) + base
        base += n_rows
    return rows, row_index


# ---------------------------------------------------------------- pixel -> array index


def locate(sections: Sequence[dict[str, Any]], width: int, x: int, y: int) -> dict[str, Any] | None:
    """What pixel (x, y) of a frame shows: the section, the array index, and the value's offset.

    ``sections`` are a frame's section records (docs/protocol.md). Returns
    None for a separator row or a pixel outside every section. The offset
    counts float32 elements from the start of the frame's values block.
    Pure arithmetic on the records: nothing is rendered or read.
    """
    if not 0 <= x < width:
        return None
    tops = [int(rec["top"]) for rec in sections]
    i = bisect.bisect_right(tops, y) - 1
    if i < 0:
        return None
    rec = sections[i]
    local_y = y - int(rec["top"])
    if not 0 <= local_y < int(rec["height"]) or rec["layout"] == MISSING or "missing" in rec:
        return None
    src_h, src_w = (int(v) for v in rec["source"])
    sec_height = int(rec["height"])
    compact_row = int(compact_map(src_h, sec_height)[local_y])
    compact_col = int(compact_map(src_w, width)[x])
    compact_cols = int(rec["compact"][1])
    shape = tuple(int(v) for v in rec["shape"])
    source_row = int(resize_indices(src_h, sec_height)[local_y])
    source_col = int(resize_indices(src_w, width)[x])
    index = source_index(rec["layout"], shape, src_w, source_row, source_col)
    return {
        "section": i,
        "name": rec["name"],
        "index": [int(v) for v in index],
        "offset": int(rec["values"]) + compact_row * compact_cols + compact_col,
    }


def pixel_of(sections: Sequence[dict[str, Any]], width: int, name: str,
             index: Sequence[int]) -> tuple[int, int] | None:
    """The first pixel (x, y) showing element ``index`` of section ``name`` (the inverse of locate).

    None when the frame has no such section, or its layout does not show
    that element (a resized section shows a sample of its rows and columns).
    Pure arithmetic on the records, over the section's distinct rows and columns.
    """
    for rec in sections:
        if rec.get("name") != name or rec.get("layout") == MISSING or "missing" in rec:
            continue
        src_h, src_w = (int(v) for v in rec["source"])
        height, shape = int(rec["height"]), tuple(int(v) for v in rec["shape"])
        rows, cols = resize_indices(src_h, height), resize_indices(src_w, width)
        shown_rows, shown_cols = np.unique(rows), np.unique(cols)
        found = source_index(rec["layout"], shape, src_w, shown_rows[:, None], shown_cols[None, :])
        if len(found) != len(index):
            return None
        hit = np.ones((len(shown_rows), len(shown_cols)), bool)
        for axis, want in zip(found, index):
            hit &= np.broadcast_to(np.asarray(axis), hit.shape) == int(want)
        where = np.argwhere(hit)
        if not len(where):
            return None
        row, col = shown_rows[where[0][0]], shown_cols[where[0][1]]
        return int(np.argmax(cols == col)), int(rec["top"]) + int(np.argmax(rows == row))
    return None
