"""Layout arithmetic: where each array's values land in a frame, decided from shapes alone.

Pure NumPy, no I/O, no framework import. The work is split so that a caller
can read only the values that will be shown:

1. ``Renderer.plans(shapes, show_all)`` decides, from shapes alone, the frame
   width and, for each array, a ``SectionPlan`` (plans.py): which elements of
   the array end up on screen after the layout rules and the nearest-neighbour resize.
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
from typing import Any

import numpy as np

from beholder_plugin.protocol.settings import shown

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


def unique_sorted(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
        raise RenderError(f"section {label}: unknown layout {shown(layout)} (known: auto, {known})")
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


# ---------------------------------------------------------------- compact sections -> pixels


@functools.lru_cache(maxsize=4096)
def compact_map(src: int, dst: int) -> np.ndarray:
    """For each of dst pixels, which distinct sampled source index (compact row or column) it shows."""
    _, inverse, _ = unique_sorted(resize_indices(src, dst))
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
