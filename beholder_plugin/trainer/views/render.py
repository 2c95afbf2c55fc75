"""The batched renderer: one flat float32 buffer of compact sections -> values, bounds and statistics.

All sections of a frame sit side by side in one flat buffer (``FramePlan``
says where). Each step is a few whole-buffer NumPy passes, whatever the
number of sections:

- variance: running sums over the flat buffer (``FlatWindow``);
- statistics and bounds: segment reductions (``np.minimum.reduceat`` ...);
- scaling: one subtract and one multiply with per-element bounds;
- no pixels at all: the frame stores the values and each section's bounds,
  and readers turn them into palette indices (protocol.scaling) and widen
  them (protocol.layout), so no work is spent on frames nobody looks at.

Per-section Python work is bookkeeping only (the section records). Because a
nearest-neighbour resize only copies values, working on the compact sections
and expanding afterwards gives the pixels of the full-size sections.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from beholder_plugin.protocol.colormaps import palette_for
from beholder_plugin.protocol.layout import (
    MISSING,
    SEPARATOR_HEIGHT,
    RenderError,
    axis_names,
    expand_sections,
)
from beholder_plugin.protocol.plans import SectionPlan
from beholder_plugin.protocol.scaling import palette_indices, scale_factor
from beholder_plugin.trainer.views.stats import (
    StatsLayout,
    json_floats,
    sample_runs,
    sample_size,
    section_stats,
)
from beholder_plugin.trainer.worker import let_training_run


class FramePlan:
    """What a frame of these sections looks like, from shapes alone: offsets, tops and weights."""

    def __init__(self, names: Sequence[str], plans: Sequence[SectionPlan]) -> None:
        if not plans:
            raise RenderError("there are no arrays to show")
        self.names = [str(n) for n in names]
        self.plans = list(plans)
        self.problems: dict[int, str] = {}  # sections that could not be laid out, and why
        self.key: tuple | None = None  # what the gatherer made it from, when it did (gather.frame_plan)
        self.width = plans[0].width
        sizes = [p.compact_shape[0] * p.compact_shape[1] for p in plans]
        self.sizes = np.asarray(sizes, dtype=np.intp)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.intp)
        self.starts = self.offsets[:-1]
        self.value_count = int(self.offsets[-1])
        self.tops: list[int] = []
        self.height = sum(p.height for p in plans) + SEPARATOR_HEIGHT * (len(plans) - 1)
        # For the means: how many pixel columns each compact value fills, and per compact row how
        # many pixel rows; sums go row by row in float32 (at most a frame's width of values),
        # then section by section in float64.
        col_weights = np.empty(self.value_count, dtype=np.float32)
        row_starts, row_weights, row_offsets = [], [], [0]
        y = 0
        for plan, start in zip(plans, self.starts):
            rows, cols = plan.compact_shape
            self.tops.append(y)
            col_weights[start : start + rows * cols] = np.tile(plan.col_weight, rows)
            row_starts.append(start + cols * np.arange(rows))
            row_weights.append(plan.row_weight)
            row_offsets.append(row_offsets[-1] + rows)
            y += plan.height + SEPARATOR_HEIGHT
        self.col_weights = col_weights
        self.row_starts = np.concatenate(row_starts).astype(np.intp)
        self.row_weights = np.concatenate(row_weights).astype(np.float64)
        self.row_offsets = np.asarray(row_offsets[:-1], dtype=np.intp)
        self.pixel_counts = np.asarray([p.height * p.width for p in plans], dtype=np.float64)
        # The statistics' samples (views.stats): every k-th value of each array, side by side.
        self.counts = [0 if p.layout == MISSING else math.prod(p.shape) for p in plans]
        self.sample_steps = [sample_runs(count) for count in self.counts]
        sizes = [sample_size(count) for count in self.counts]
        self.sample_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.intp)
        self.sample_count = int(self.sample_offsets[-1])
        self.stats_layout = StatsLayout(self.sample_offsets, self.counts)
        # The parts of each section's record that follow from the plan alone (read, never changed).
        self.record_bases = [
            {
                "name": name,
                "shape": list(p.shape),
                "layout": p.layout,
                "axes": axis_names(p.layout, len(p.shape)),
                "top": top,
                "height": p.height,
                "source": list(p.source_shape),
                "compact": list(p.compact_shape),
                "values": int(start),
            }
            for name, p, top, start in zip(self.names, self.plans, self.tops, self.starts)
        ]

    def section_views(self, buffer: np.ndarray) -> list[np.ndarray]:
        """Every section's compact (rows, columns) view of a flat buffer."""
        return [self.section_view(buffer, i) for i in range(len(self.plans))]

    def sample_views(self, buffer: np.ndarray) -> list[np.ndarray]:
        """Every section's part of a flat buffer of statistics samples."""
        o = self.sample_offsets
        return [buffer[o[i] : o[i + 1]] for i in range(len(self.plans))]

    def section_view(self, buffer: np.ndarray, i: int) -> np.ndarray:
        """Section i's compact (rows, columns) view of a flat buffer."""
        start = self.offsets[i]
        return buffer[start : self.offsets[i + 1]].reshape(self.plans[i].compact_shape)


class HostOps:
    """FlatWindow's buffers and operations on the host: NumPy float32 (the device's: torch_batch.TorchOps)."""

    subtract, add, multiply = np.subtract, np.add, np.multiply

    @staticmethod
    def zeros(count: int) -> np.ndarray:
        """A new buffer of count zeros."""
        return np.zeros(count, np.float32)

    @staticmethod
    def copy(dst: np.ndarray, src: np.ndarray) -> None:
        """dst[...] = src."""
        np.copyto(dst, src)

    @staticmethod
    def zero(x: np.ndarray) -> None:
        """x[...] = 0."""
        x.fill(0)

    @staticmethod
    def clamp0(x: np.ndarray) -> None:
        """x = max(x, 0) in place (NaN stays NaN)."""
        np.maximum(x, 0, out=x)

    @staticmethod
    def scalar(value: float) -> np.float32:
        """A float32 scalar for the arithmetic."""
        return np.float32(value)

    @staticmethod
    def quiet() -> Any:
        """No warnings for non-finite input (its variance is NaN, shown low)."""
        return np.errstate(invalid="ignore", over="ignore")


# The host's variance window keeps its samples and 7 work buffers of a frame's values: at most this
# many bytes in all, by a shorter window, down to 2 frames (9 frames' worth of memory, then: a frame's
# values are at most MAX_FRAME_BYTES). Show all of arrays of tens of millions of values took 4 GB at
# window 20; a model of 160 large weight matrices (15.7 M values shown) gets 9 frames instead of 15.
HOST_WINDOW_BYTES = 1 << 30


def host_window_size(asked: int, count: int) -> int:
    """The variance window's length for frames of ``count`` values: ``asked``, or fewer (at least 2)
    within HOST_WINDOW_BYTES."""
    return max(2, min(asked, HOST_WINDOW_BYTES // (4 * max(count, 1)) - 7))


class FlatWindow:
    """The last few flat buffers, with running float32 sums for their per-value variance.

    ``s1`` and ``s2`` sum the deviations from a reference sample and their
    squares. Replacing the oldest sample ``o`` by a new one ``n`` changes them
    by ``n - o`` and ``(n - o) * (n + o - 2 ref)``: six whole-buffer passes.
    The sums are rebuilt from the stored samples every ``size`` pushes, so
    rounding does not build up, and at once when a sample marked unclean
    (``mark_newest_unclean``: it held NaN or inf) leaves, so that the
    variance is NaN exactly while such a sample is in the window, as the
    original's variance over the stored frames was. ``ops`` holds the buffers where they are
    (HostOps: NumPy; sources.torch_batch.TorchOps: on the training device),
    with the same float32 operations in the same order either way.
    """

    def __init__(self, size: int, count: int, ops: Any = HostOps) -> None:
        self.size = size
        self.count = count
        self.ops = ops
        self.samples: list[Any] = []  # oldest first
        self.unclean: list[bool] = []  # per sample: it held NaN or inf (the sums are NaN while it stays)
        self.pushes = 0
        self.ref = ops.zeros(count)
        self.ref2 = ops.zeros(count)  # twice the reference sample
        self.s1 = ops.zeros(count)
        self.s2 = ops.zeros(count)
        self._a = ops.zeros(count)
        self._b = ops.zeros(count)
        self._out = ops.zeros(count)
        self._spare: list[Any] = []

    def resize(self, size: int) -> None:
        """Change the window length, keeping the newest samples."""
        if size != self.size:
            self.size = size
            while len(self.samples) > size:
                self._spare.append(self.samples.pop(0))
                self.unclean.pop(0)
            self._rebuild()

    def _rebuild(self) -> None:
        self.pushes = 0
        if not self.samples:
            return
        ops, ref = self.ops, self.ref
        ops.copy(ref, self.samples[-1])
        ops.zero(self.s1)
        ops.zero(self.s2)
        d = self._a
        with ops.quiet():  # non-finite input (or values past 1.7e38): NaN variance, shown low
            ops.add(ref, ref, out=self.ref2)
            for sample in self.samples:
                ops.subtract(sample, ref, out=d)
                self.s1 += d
                ops.multiply(d, d, out=d)
                self.s2 += d

    def push(self, values: Any, out: Any = None) -> Any:
        """Add a copy of the newest flat buffer and return the variance over the window (in ``out``, or a
        reused buffer)."""
        ops = self.ops
        sample = self._spare.pop() if self._spare else ops.zeros(self.count)
        ops.copy(sample, values)
        self.samples.append(sample)
        self.unclean.append(False)
        if len(self.samples) == 1:
            self._rebuild()
            return self.variance(out)
        left_unclean = False
        with ops.quiet():
            if len(self.samples) > self.size:
                oldest = self.samples.pop(0)
                left_unclean = self.unclean.pop(0)
                diff = ops.subtract(sample, oldest, out=self._a)
                self.s1 += diff
                both = ops.add(sample, oldest, out=self._b)
                both -= self.ref2
                diff *= both
                self.s2 += diff
                self._spare.append(oldest)
            else:
                self._add(sample)
        self.pushes += 1
        if self.pushes >= self.size or left_unclean:
            self._rebuild()
        return self.variance(out)

    def mark_newest_unclean(self) -> None:
        """Note that the newest sample held NaN or inf: the sums are rebuilt when it leaves."""
        if self.unclean:
            self.unclean[-1] = True

    def _add(self, sample: Any) -> None:
        """Add one sample's deviation from the reference to the sums (while the window fills)."""
        ops = self.ops
        d = ops.subtract(sample, self.ref, out=self._b)
        self.s1 += d
        ops.multiply(d, d, out=d)
        self.s2 += d

    def variance(self, out: Any = None) -> Any:
        """Per-value population variance over the samples in the window."""
        ops = self.ops
        inv_n = ops.scalar(1.0 / len(self.samples))
        with ops.quiet():
            mean = ops.multiply(self.s1, inv_n, out=self._a)
            ops.multiply(mean, mean, out=mean)
            var = ops.multiply(self.s2, inv_n, out=self._out if out is None else out)
            ops.subtract(var, mean, out=var)
            ops.clamp0(var)
        return var


@dataclass
class Rendered:
    """A rendered frame: the values to show and the section table; its pixels follow from them."""

    values: np.ndarray  # (V,) float32: the values to scale (current values or variance)
    palette: np.ndarray  # (256, 3) uint8
    sections: list[dict[str, Any]]
    width: int
    height: int
    stats_columns: dict[str, np.ndarray] | None = None  # views.stats.COLUMNS over all sections, if sampled

    @property
    def unclean(self) -> bool:
        """Whether the frame's statistics sample held NaN or inf (what a variance window is told)."""
        columns = self.stats_columns
        return columns is not None and bool((columns["nan"] > 0).any() or (columns["inf"] > 0).any())

    @property
    def compact(self) -> np.ndarray:
        """(V,) uint8 palette indices, one per value (the shared scaling rule)."""
        return palette_indices(self.values, self.sections)

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The frame's distinct rows and row index (rows[index] is the full frame)."""
        return expand_sections(self.sections, self.width, self.height, self.compact)

    @property
    def pixels(self) -> np.ndarray:
        """The full (H, W) frame of palette indices."""
        rows, index = self.rows()
        return np.take(rows, index, axis=0)


class Renderer:
    """Turns flat buffers of compact sections into frames, keeping the variance window between calls."""

    def __init__(self) -> None:
        self._window: FlatWindow | None = None
        self._window_key: tuple | None = None
        self._spare: np.ndarray | None = None

    def _scratch(self, count: int) -> np.ndarray:
        """A reused float32 buffer of count values (a fresh one would cost page faults every frame)."""
        if self._spare is None or self._spare.shape[0] != count:
            self._spare = np.empty(count, np.float32)
        return self._spare

    def clear_history(self) -> None:
        """Forget the variance window (the original did so when values, mode or show_all changed)."""
        self._window = None
        self._window_key = None

    @property
    def window_frames(self) -> int:
        """How many frames the host's variance window holds (0: none kept)."""
        return 0 if self._window is None else len(self._window.samples)

    @property
    def window_size(self) -> int | None:
        """The host's variance window's length (None: none kept): the setting's, or fewer
        (host_window_size)."""
        return None if self._window is None else self._window.size

    def render(
        self,
        plan: FramePlan,
        values: np.ndarray,
        config: dict[str, Any],
        missing: dict[int, str] | None = None,
        samples: np.ndarray | None = None,
        variance_done: bool = False,
    ) -> Rendered:
        """Apply the mode, and take the bounds and statistics of a flat buffer of compact sections.

        ``missing`` maps the sections whose arrays could not be read to the
        reason; their values are NaN and their records say why. ``samples``
        (the plan's statistics samples) adds each record's "stats".
        ``variance_done``: the values are already the variance window's
        (kept on the device, FlatWindow with sources.torch_batch.TorchOps).
        """
        if values.shape != (plan.value_count,) or values.dtype != np.float32:
            got = f"{values.dtype} {values.shape}"
            raise RenderError(f"expected {plan.value_count} float32 values, got {got}")
        pushed = None  # the host window this frame went into
        if variance_done:
            self.clear_history()  # the window is the device's now; the host's would start afresh
            shown = values
        elif config["mode"] == "variance":
            # (names too: the filter showing other sections of the same shapes starts the window again)
            key = (tuple((p.shape, p.width, p.height, p.layout) for p in plan.plans), tuple(plan.names))
            size = host_window_size(config["window_size"], plan.value_count)
            if key != self._window_key or self._window is None:
                self._window = None  # (the old one's memory goes before the new one's comes)
                self._window = FlatWindow(size, plan.value_count)
                self._window_key = key
            self._window.resize(size)
            shown = self._window.push(values)
            pushed = self._window
        else:
            self.clear_history()
            shown = values
        lows, highs, unclean = _segment_bounds(plan, shown)
        with np.errstate(invalid="ignore", over="ignore"):
            weighted = np.multiply(shown, plan.col_weights, out=self._scratch(plan.value_count))
            row_sums = np.add.reduceat(weighted, plan.row_starts).astype(np.float64)
            means = np.add.reduceat(row_sums * plan.row_weights, plan.row_offsets) / plan.pixel_counts
        _means_again(plan, shown, means, lows, highs, unclean)
        if config["scaling"] == "network":
            finite = np.isfinite(lows)
            g_lo = float(lows[finite].min()) if finite.any() else 0.0
            g_hi = float(highs[finite].max()) if finite.any() else 0.0
            lo_b = np.full(len(lows), g_lo)
            hi_b = np.full(len(lows), g_hi)
        else:
            lo_b, hi_b = lows, highs
        missing = missing or {}
        stats = columns = None
        if samples is not None:
            columns = {}
            stats = section_stats(samples, plan.sample_offsets, plan.counts, plan.stats_layout, columns)
        # Plain Python numbers for all sections at once (JSON null where not finite).
        low, high, mean = json_floats(lows), json_floats(highs), json_floats(means)
        spread = json_floats(highs - lows)
        low_bound, high_bound = (low, high) if lo_b is lows else (json_floats(lo_b), json_floats(hi_b))
        unclean_list = unclean.tolist()
        records = []
        per_section = zip(plan.record_bases, low_bound, high_bound, low, mean, high, spread, unclean_list)
        for i, (base, bound_lo, bound_hi, lo, average, hi, span, unclean_i) in enumerate(per_section):
            let_training_run()  # (the worker builds these holding the GIL: one zip, no indexing)
            record = {**base, "bounds": [bound_lo, bound_hi], "min": lo, "mean": average, "max": hi,
                      "range": span, "finite": not unclean_i or i in missing}
            if i in missing:
                record["missing"] = missing[i]
            elif stats is not None and stats[i] is not None:
                record["stats"] = stats[i]
            records.append(record)
        rendered = Rendered(
            values=shown,
            palette=palette_for(config["colormap"]),
            sections=records,
            width=plan.width,
            height=plan.height,
            stats_columns=columns,
        )
        if pushed is not None and rendered.unclean:
            pushed.mark_newest_unclean()
        return rendered


def _segment_bounds(plan: FramePlan, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-section min and max over the finite values (NaN when none), and which sections had others."""
    lows = np.minimum.reduceat(values, plan.starts).astype(np.float64)
    highs = np.maximum.reduceat(values, plan.starts).astype(np.float64)
    unclean = ~(np.isfinite(lows) & np.isfinite(highs))
    for i in np.flatnonzero(unclean):  # rare: NaN or inf in the section
        seg = values[plan.offsets[i] : plan.offsets[i + 1]]
        finite = seg[np.isfinite(seg)]
        lows[i], highs[i] = (finite.min(), finite.max()) if finite.size else (math.nan, math.nan)
    return lows, highs, unclean


def _means_again(plan: FramePlan, values: np.ndarray, means: np.ndarray, lows: np.ndarray, highs: np.ndarray,
                 unclean: np.ndarray) -> None:
    """Fix the means of finite sections that the float32 row sums got wrong: taken again in float64
    where they overflowed (values past about 4e35), and held within the section's min and max (float32
    rounding of a near-constant section)."""
    for i in np.flatnonzero(~np.isfinite(means) & ~unclean):  # rare: values near float32's largest
        a, b = plan.offsets[i], plan.offsets[i + 1]
        r0 = plan.row_offsets[i]
        r1 = r0 + plan.plans[i].compact_shape[0]
        rows = (values[a:b].astype(np.float64) * plan.col_weights[a:b]).reshape(r1 - r0, -1).sum(axis=1)
        means[i] = float(rows @ plan.row_weights[r0:r1]) / plan.pixel_counts[i]
    clean = ~unclean
    means[clean] = np.clip(means[clean], lows[clean], highs[clean])


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
    k = scale_factor(lo, hi)
    if k == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    return ((values - lo) * k).astype(np.uint8)
