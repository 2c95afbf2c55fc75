"""A slow, literal reading of the spec's rendering rules, to check the fast renderer against.

Written from the rules in docs/rendering.md alone: full-size float32 sections,
TensorFlow's float32 nearest-neighbour rule evaluated pixel by pixel, np.var
over stacked full-size sections, scaling in float32 and truncation to uint8.
No shortcuts.
"""

from __future__ import annotations

import math

import numpy as np

HEIGHT, WIDTH, BUDGET = 128, 768, 32768


def _width(arrays, show_all):
    width = WIDTH
    if show_all:
        for a in arrays:
            if a.ndim == 1:
                width = max(width, a.shape[0])
            elif a.ndim == 2:
                width = max(width, a.shape[1])
            elif a.ndim == 4:
                width = max(width, a.shape[1] * a.shape[3])
    return width


def _height(a, show_all):
    if not show_all or a.ndim == 1:
        return HEIGHT
    if a.ndim == 2:
        return max(HEIGHT, a.shape[0])
    if a.ndim == 4:
        return max(HEIGHT, a.shape[0] * a.shape[2])
    return max(HEIGHT, a.size // WIDTH)


def section_2d(a: np.ndarray, show_all: bool, height: int, width: int) -> np.ndarray:
    """The array laid out as a 2-D section at its natural size."""
    if a.ndim == 1:
        return a[None, :]
    if a.ndim == 2:
        return a
    if a.ndim == 4:
        if a.shape[1] == a.shape[2] and a.shape[0] != a.shape[1]:
            a = np.moveaxis(a, 0, 2)  # (n, h, w, c) -> (h, w, n, c)
        kh, kw, n_in, n_out = a.shape
        rows = []
        for i in range(n_in):
            if i > 0 and not show_all and (i - 1) * (kh * kw * n_in) >= BUDGET:
                break
            blocks = [a[:, :, i, j] for j in range(n_out)]
            rows.append(np.concatenate(blocks, axis=1))
        return np.concatenate(rows, axis=0)
    flat = a.reshape(-1)
    if not show_all:
        flat = flat[:BUDGET]
    side = max(1, math.floor(math.sqrt(height * width / flat.size)))
    n_rows = max(1, height // side)
    n_cols = flat.size // n_rows
    return flat[: n_rows * n_cols].reshape(n_rows, n_cols)


def _source(dst: int, src_size: int, dst_size: int) -> int:
    """TensorFlow's nearest-neighbour source index, one output pixel at a time, in float32."""
    scale = np.float32(src_size) / np.float32(dst_size)
    return min(int(np.floor(np.float32(dst) * scale)), src_size - 1)


def resize(section: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D section, pixel by pixel (float32 values)."""
    sh, sw = section.shape
    src_y = np.array([_source(y, sh, height) for y in range(height)])
    src_x = np.array([_source(x, sw, width) for x in range(width)])
    return section[src_y[:, None], src_x[None, :]].astype(np.float32)


def full_sections(arrays, show_all):
    """Full-size float32 sections for a list of arrays."""
    width = _width(arrays, show_all)
    out = []
    for a in arrays:
        height = _height(a, show_all)
        out.append(
            resize(section_2d(np.asarray(a, dtype=np.float32), show_all, height, width), height, width)
        )
    return out


def reference_frame(history, mode: str, scaling: str, show_all: bool = False):
    """Palette indices and stats for the newest entry of history (a list of lists of arrays)."""
    if mode == "variance":
        per_step = [full_sections(arrays, show_all) for arrays in history]
        count = len(per_step[0])
        stacks = [np.stack([step[k] for step in per_step]).astype(np.float64) for k in range(count)]
        sections = [np.var(stack, axis=0).astype(np.float32) for stack in stacks]
    else:
        sections = full_sections(history[-1], show_all)
    stats = [(float(s.min()), float(s.astype(np.float64).mean()), float(s.max())) for s in sections]
    scaled = []
    g_lo = min(s.min() for s in sections)
    g_hi = max(s.max() for s in sections)
    for s in sections:
        lo, hi = (s.min(), s.max()) if scaling == "layer" else (g_lo, g_hi)
        if hi == lo:
            scaled.append(np.zeros(s.shape, np.uint8))
        else:
            k = np.float32(255.0 / (float(hi) - float(lo)))
            scaled.append(((s - np.float32(lo)) * k).astype(np.uint8))
    parts = [scaled[0]]
    for s in scaled[1:]:
        parts.append(np.zeros((5, s.shape[1]), np.uint8))
        parts.append(s)
    return np.concatenate(parts, axis=0), stats
