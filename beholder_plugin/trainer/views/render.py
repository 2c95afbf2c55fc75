"""The renderer: compact sections -> one palette-indexed frame (mode, statistics, scaling, expansion)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from beholder_plugin.protocol.layout import SEPARATOR_HEIGHT, PlanCache, RenderError, SectionPlan
from beholder_plugin.trainer.colormaps import palette_for

# ---------------------------------------------------------------- variance window


class _Window:
    """The last few compact sections of one array, with running sums for their variance.

    Sums are kept of the deviation from a reference sample and rebuilt from
    the stored samples every ``size`` pushes, so rounding does not build up.
    Scratch buffers are reused: variance() returns a buffer that the next
    call overwrites.
    """

    def __init__(self, size: int) -> None:
        self.samples: deque[np.ndarray] = deque(maxlen=size)
        self.pushes = 0
        self.ref: np.ndarray | None = None
        self.s1: np.ndarray | None = None
        self.s2: np.ndarray | None = None
        self._scratch: np.ndarray | None = None
        self._out: np.ndarray | None = None

    def resize(self, size: int) -> None:
        """Change the window length, keeping the newest samples."""
        if size != self.samples.maxlen:
            self.samples = deque(self.samples, maxlen=size)
            self._rebuild()

    def _rebuild(self) -> None:
        self.pushes = 0
        if not self.samples:
            self.ref = self.s1 = self.s2 = None
            return
        self.ref = self.samples[-1]
        self.s1 = np.zeros_like(self.ref)
        self.s2 = np.zeros_like(self.ref)
        self._scratch = np.empty_like(self.ref)
        self._out = np.empty_like(self.ref)
        for sample in self.samples:
            self._accumulate(sample, 1.0)

    def _accumulate(self, sample: np.ndarray, sign: float) -> None:
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite input: NaN variance, shown low
            self._accumulate_finite(sample, sign)

    def _accumulate_finite(self, sample: np.ndarray, sign: float) -> None:
        d = np.subtract(sample, self.ref, out=self._scratch)
        if sign > 0:
            self.s1 += d
            np.multiply(d, d, out=d)
            self.s2 += d
        else:
            self.s1 -= d
            np.multiply(d, d, out=d)
            self.s2 -= d

    def push(self, sample: np.ndarray) -> None:
        """Add the newest compact section, dropping the oldest when full."""
        if self.ref is None:
            self.samples.append(sample)
            self._rebuild()
            return
        if len(self.samples) == self.samples.maxlen:
            self._accumulate(self.samples[0], -1.0)
        self.samples.append(sample)
        self._accumulate(sample, 1.0)
        self.pushes += 1
        if self.pushes >= self.samples.maxlen:
            self._rebuild()

    def variance(self) -> np.ndarray:
        """Per-pixel population variance over the samples in the window."""
        inv_n = 1.0 / len(self.samples)
        mean_sq = np.multiply(self.s1, inv_n, out=self._scratch)
        np.multiply(mean_sq, mean_sq, out=mean_sq)
        var = np.multiply(self.s2, inv_n, out=self._out)
        np.subtract(var, mean_sq, out=var)
        np.maximum(var, 0.0, out=var)
        return var


# ---------------------------------------------------------------- rendering


@dataclass
class Rendered:
    """A rendered frame, row-encoded: ``rows[row_index]`` are its palette indices."""

    rows: np.ndarray  # (R, W) uint8 distinct rows; rows[0] is the black separator row
    row_index: np.ndarray  # (H,) uint32
    palette: np.ndarray  # (256, 3) uint8
    sections: list[dict[str, Any]]

    @property
    def pixels(self) -> np.ndarray:
        """The full (H, W) frame of palette indices."""
        return np.take(self.rows, self.row_index, axis=0)


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _scale(values: np.ndarray, lo: float, hi: float, in_place: bool = False) -> np.ndarray:
    """Map lo..hi to 0..255 and truncate to uint8, as the original; a flat range gives 0.

    Values must lie within lo..hi (so no clipping is needed); with in_place
    the float array is used as scratch.
    """
    span = hi - lo
    if not span > 0 or not math.isfinite(span):
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = np.subtract(values, lo, out=values if in_place else None)
    scaled *= 255.0 / span
    return scaled.astype(np.uint8)


def _extrema(value: np.ndarray) -> tuple[float, float, bool]:
    """Min and max over the finite values (NaN when there are none), and whether all were finite."""
    lo, hi = float(value.min()), float(value.max())
    if math.isfinite(lo) and math.isfinite(hi):
        return lo, hi, True
    finite = value[np.isfinite(value)]
    if finite.size == 0:
        return float("nan"), float("nan"), False
    return float(finite.min()), float(finite.max()), False


class Renderer:
    """Turns compact sections into frames, keeping the variance history between calls."""

    def __init__(self) -> None:
        self.plan_cache = PlanCache()
        self._windows: list[_Window] = []
        self._history_key: tuple | None = None

    def plans(
        self, shapes: Sequence[tuple[int, ...]], show_all: bool, labels: Sequence[str] | None = None
    ) -> list[SectionPlan]:
        """Plans for arrays of these shapes (see SectionPlan)."""
        labels = labels if labels is not None else [str(i) for i in range(len(shapes))]
        return self.plan_cache.plans(shapes, show_all, labels)

    def clear_history(self) -> None:
        """Forget the variance window (the original did so when values, mode or show_all changed)."""
        self._windows = []
        self._history_key = None

    def render(
        self,
        names: Sequence[str],
        plans: Sequence[SectionPlan],
        compacts: Sequence[np.ndarray],
        config: dict[str, Any],
    ) -> Rendered:
        """Apply mode, statistics, scaling and colormap to compact sections and build the frame."""
        if not plans:
            raise RenderError("there are no arrays to show")
        values = [np.asarray(c, dtype=np.float64) for c in compacts]
        for name, plan, value in zip(names, plans, values):
            if value.shape != plan.compact_shape:
                raise RenderError(
                    f"section {name}: compact values have shape {value.shape}, expected {plan.compact_shape}"
                )
        if config["mode"] == "variance":
            values = self._variance(plans, values, config)
        else:
            self.clear_history()

        infos = []
        lows, highs, clean = [], [], []
        for name, plan, value in zip(names, plans, values):
            lo, hi, all_finite = _extrema(value)
            clean.append(all_finite)
            # the mean of the full-size section: each compact pixel weighted by its copies
            with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: reported as null
                mean = float(plan.row_weight @ value @ plan.col_weight) / (plan.height * plan.width)
            lows.append(lo)
            highs.append(hi)
            infos.append(
                {
                    "name": str(name),
                    "shape": list(plan.shape),
                    "min": _finite_or_none(lo),
                    "mean": _finite_or_none(mean),
                    "max": _finite_or_none(hi),
                    "range": _finite_or_none(hi - lo),
                    "height": plan.height,
                }
            )

        if config["scaling"] == "network":
            finite_lows = [v for v in lows if math.isfinite(v)]
            finite_highs = [v for v in highs if math.isfinite(v)]
            g_lo = min(finite_lows) if finite_lows else 0.0
            g_hi = max(finite_highs) if finite_highs else 0.0
            bounds = [(g_lo, g_hi)] * len(values)
        else:
            bounds = list(zip(lows, highs))

        width = plans[0].width
        total = sum(p.height for p in plans) + SEPARATOR_HEIGHT * (len(plans) - 1)
        rows = np.empty((1 + sum(p.compact_shape[0] for p in plans), width), dtype=np.uint8)
        rows[0] = 0  # the separator row
        row_index = np.zeros(total, dtype=np.uint32)
        stored, y = 1, 0
        scratch = config["mode"] == "variance"  # variance values are buffers we may overwrite
        for plan, value, (lo, hi), all_finite in zip(plans, values, bounds, clean):
            if not all_finite:  # NaN shows as the low end, +/-inf as the ends
                value = np.nan_to_num(value, nan=lo, posinf=hi, neginf=lo)
            small = _scale(value, lo, hi, in_place=scratch or not all_finite)
            count = small.shape[0]
            np.take(small, plan.col_map, axis=1, out=rows[stored : stored + count])
            row_index[y : y + plan.height] = plan.row_map + stored
            stored += count
            y += plan.height + SEPARATOR_HEIGHT
        return Rendered(
            rows=rows, row_index=row_index, palette=palette_for(config["colormap"]), sections=infos
        )

    def _variance(
        self, plans: Sequence[SectionPlan], values: list[np.ndarray], config: dict[str, Any]
    ) -> list[np.ndarray]:
        key = tuple((p.shape, p.width, p.height) for p in plans)
        if key != self._history_key:
            self._windows = [_Window(config["window_size"]) for _ in plans]
            self._history_key = key
        out = []
        for window, value in zip(self._windows, values):
            window.resize(config["window_size"])
            window.push(value)
            out.append(window.variance())
        return out


def scale_frame(frame: np.ndarray) -> np.ndarray:
    """A 2-D user frame min-max scaled to uint8 (constant: all 0), as the original showed it."""
    values = np.asarray(frame, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.uint8)
    lo = float(values[finite].min())
    hi = float(values[finite].max())
    if not finite.all():
        values = np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo)
    return _scale(values, lo, hi)
