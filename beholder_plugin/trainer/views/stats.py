"""Per-section statistics over the whole array (or an evenly strided sample of it): health and distribution.

The frame's pixels show a sample of each array (truncated and resized, as
the original drew it), and the section record's min/mean/max describe that
shown sample. These figures describe the array itself instead: every value
of arrays of up to ``SAMPLE_CAP`` values, and for larger ones ``RUNS``
evenly spaced runs of ``RUN_LENGTH`` consecutive values in flat (C) order
(run i starts at ``i * (size // RUNS)``), so the cost per frame is bounded
whatever the model, and the copy reads whole cache lines. The sample is taken on the array's
device (``sources`` adapters) and the figures are computed on the worker,
for all sections at once, from one flat buffer.

Per section: count, norm (the L2 norm; from a sample, scaled up to the whole
array), mean and standard deviation of the finite values, the fractions of
NaN, infinite and exactly zero values, and a 32-bin histogram of the finite
values over [lo, hi] (the bins and edge rules of ``np.histogram(values,
bins=32, range=(lo, hi))``), its counts stored as base64 of 32 little-endian
uint16 (``hist_counts`` reads them).
"""

from __future__ import annotations

import base64
import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from beholder_plugin.trainer.worker import let_training_run

# Arrays with more values than this are described from RUNS runs of RUN_LENGTH consecutive values.
SAMPLE_CAP = 512
RUNS = 8
RUN_LENGTH = SAMPLE_CAP // RUNS
BINS = 32


def sample_runs(count: int) -> tuple[int, int, int]:
    """(runs, stride, length): the values taken from an array of `count` values (flat order).

    Run i covers ``[i * stride, i * stride + length)``; the whole array is one run.
    """
    if count <= SAMPLE_CAP:
        return 1, count, count
    return RUNS, count // RUNS, RUN_LENGTH


def sample_size(count: int) -> int:
    """How many values the statistics of an array of `count` values use."""
    runs, _, length = sample_runs(count)
    return runs * length


@functools.lru_cache(maxsize=4096)
def over_text(count: int) -> str:
    """What the figures of an array of this size are computed over, in words."""
    runs, stride, length = sample_runs(count)
    if runs == 1:
        return f"the whole array ({count} values)"
    return (f"{runs} evenly spaced runs of {length} consecutive values (one every {stride}): "
            f"{runs * length} of {count} values")


class StatsLayout:
    """What section_stats needs that depends on the sections' sizes alone (kept with a frame's plan)."""

    def __init__(self, offsets: Sequence[int], counts: Sequence[int]) -> None:
        offsets = np.asarray(offsets, dtype=np.intp)
        sizes = np.diff(offsets)
        self.sections = len(sizes)
        self.active = np.flatnonzero(sizes > 0)
        self.active_list = self.active.tolist()
        self.starts = offsets[self.active]
        self.sizes = sizes[self.active]
        self.sizes_list = self.sizes.tolist()
        self.end = int(offsets[-1])
        self.totals = np.asarray(counts, dtype=np.float64)[self.active]
        self.counts = [int(counts[i]) for i in self.active_list]
        self.over = [over_text(c) for c in self.counts]
        # per sampled value: its section (among the active ones), and the first bin of that section
        self.section_of = np.repeat(np.arange(len(self.active), dtype=np.intp), self.sizes)
        self.bin_base = (self.section_of * BINS).astype(np.int32)


# The figures section_stats also hands over as arrays (one value per section, NaN for an empty one).
COLUMNS = ("norm", "mean", "std", "min", "max", "nan", "inf", "zero", "count")


def section_stats(samples: np.ndarray, offsets: Sequence[int], counts: Sequence[int],
                  layout: StatsLayout | None = None,
                  columns: dict[str, np.ndarray] | None = None) -> list[dict | None]:
    """The statistics of each section's sample (samples[offsets[i]:offsets[i + 1]]); None for an empty one.

    ``layout`` is ``StatsLayout(offsets, counts)``, made once per frame plan.
    ``columns``, when given, is filled with the same figures as float64
    arrays over all sections (COLUMNS; NaN for an empty section; infinities
    kept), which the timeline reads without walking the records.
    """
    layout = layout or StatsLayout(offsets, counts)
    out: list[dict[str, Any] | None] = [None] * layout.sections
    if columns is not None:
        columns.update({name: np.full(layout.sections, np.nan) for name in COLUMNS})
    if not len(layout.active):
        return out
    starts, sizes = layout.starts, layout.sizes
    values = samples[: layout.end]
    finite = np.isfinite(values)
    if finite.all():  # the usual case: no masks needed
        finite = None
        n_finite = sizes.astype(np.float64)
        nans = infs = np.zeros(len(sizes), np.intp)
        clean, lows_in, highs_in = values, values, values
    else:
        n_finite = np.add.reduceat(finite, starts).astype(np.float64)
        nans = np.add.reduceat(np.isnan(values), starts)
        infs = np.add.reduceat(np.isinf(values), starts)
        clean = np.where(finite, values, np.float32(0))
        lows_in = np.where(finite, values, np.float32(np.inf))
        highs_in = np.where(finite, values, np.float32(-np.inf))
    zeros = np.add.reduceat(values == 0, starts)
    wide = clean.astype(np.float64)
    s1 = np.add.reduceat(wide, starts)
    s2 = np.add.reduceat(wide * wide, starts)
    lows = np.minimum.reduceat(lows_in, starts).astype(np.float64)
    highs = np.maximum.reduceat(highs_in, starts).astype(np.float64)
    hists = _histograms(wide, finite, layout, lows, highs)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = s1 / n_finite
        stds = np.sqrt(np.maximum(s2 / n_finite - means * means, 0.0))
        norms = np.sqrt(s2 * layout.totals / n_finite)  # a sample's sum of squares, scaled to the whole array
    fraction_arrays = np.stack([nans, infs, zeros]) / sizes
    if columns is not None:
        active = layout.active
        for name, array in zip(COLUMNS, (norms, means, stds, lows, highs, *fraction_arrays, layout.totals)):
            columns[name][active] = array
    # Plain Python numbers, converted once for all sections (JSON null where not finite).
    figures = [json_floats(a) for a in (norms, means, stds, lows, highs)]
    fractions = fraction_arrays.tolist()
    # The counts (at most SAMPLE_CAP each) as base64 of little-endian uint16: one JSON string per
    # section instead of 32 numbers, which halved the cost of encoding a ResNet-50 frame's header.
    raw = hists.astype("<u2").tobytes()
    row = 2 * BINS
    hist_rows = [base64.b64encode(raw[k : k + row]).decode("ascii") for k in range(0, len(raw), row)]
    # (one zip over the columns: the worker builds these holding the GIL, 214 of them per ResNet-50 frame)
    columns_of_active = (layout.active_list, layout.over, layout.counts, layout.sizes_list, *figures,
                         *fractions, hist_rows)
    for i, over, count, sampled, norm, mean, std, lo, hi, nan, inf, zero, counts in zip(*columns_of_active):
        let_training_run()
        out[i] = {"over": over, "count": count, "sampled": sampled, "norm": norm, "mean": mean, "std": std,
                  "nan": nan, "inf": inf, "zero": zero, "hist": {"lo": lo, "hi": hi, "counts": counts}}
    return out


def hist_counts(stats: dict) -> list[int]:
    """The 32 histogram counts of a section's ``stats`` record (stored as base64 of little-endian uint16)."""
    return np.frombuffer(base64.b64decode(stats["hist"]["counts"]), dtype="<u2").astype(int).tolist()


def json_floats(values: np.ndarray) -> list[float | None]:
    """The values as Python floats, None where not finite (JSON has no NaN)."""
    if np.isfinite(values).all():  # the usual case: no element to look at in Python
        return values.tolist()
    return [v if v == v and v not in (math.inf, -math.inf) else None for v in values.tolist()]


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _histograms(values: np.ndarray, finite: np.ndarray | None, layout: StatsLayout, lows: np.ndarray,
                highs: np.ndarray) -> np.ndarray:
    """(sections, BINS) counts of the finite values between each section's lo and hi, as np.histogram bins.

    Bins are ``floor((v - lo) * BINS / (hi - lo))``, first in float32; where
    that lands within rounding of a bin edge, np.histogram's float64 edge
    comparisons decide, so the counts are exactly
    ``np.histogram(v, BINS, (lo, hi))``'s (where NumPy can make them: one
    value past 2**53 is counted in the middle bin, as a smaller one is).
    """
    lo = np.where(np.isfinite(lows), lows, 0.0)
    hi = np.where(np.isfinite(highs), highs, 0.0)
    flat = lo == hi
    lo = np.where(flat, lo - 0.5, lo)  # np.histogram widens an empty range to [x - 0.5, x + 0.5]
    hi = np.where(flat, hi + 0.5, hi)
    empty = hi == lo  # still empty past 2**53 (NumPy refuses it): the values go to the middle bin alike
    section_of = layout.section_of
    lo_v = lo.astype(np.float32)[section_of]
    v = values.astype(np.float32) if finite is None else np.where(finite, values, lo_v).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # (a range wider than float32's: binned again below)
        scaled = np.subtract(v, lo_v, out=lo_v)
    factor = BINS / np.where(empty, 1.0, hi - lo)
    # a range of denormals (the factor is past float32), or one wider than float32 reaches (v - lo
    # overflows): binned in float64 below
    tiny = (factor > FLOAT32_MAX) | (hi - lo >= FLOAT32_MAX)
    with np.errstate(over="ignore", invalid="ignore"):
        scaled *= np.minimum(factor, FLOAT32_MAX).astype(np.float32)[section_of]
        index = scaled.astype(np.int32)  # (garbage where v - lo overflowed: binned again below)
        scaled -= index
    near = np.flatnonzero((scaled < 1e-4) | (scaled > 1 - 1e-4))  # within rounding of an edge
    if len(near):
        section = section_of[near]
        index[near] = _numpy_bins(values[near].astype(np.float64), index[near], lo[section], hi[section])
    if tiny.any():
        at = np.flatnonzero(tiny[section_of])
        section, wide = section_of[at], v[at].astype(np.float64)
        guess = np.floor((wide - lo[section]) * factor[section]).astype(np.int32)
        index[at] = _numpy_bins(wide, guess, lo[section], hi[section])
    np.clip(index, 0, BINS - 1, out=index)
    if empty.any():
        index[empty[section_of]] = BINS // 2
    index += layout.bin_base
    if finite is not None:
        index = index[finite]
    return np.bincount(index, minlength=len(layout.sizes) * BINS).reshape(len(layout.sizes), BINS)


def _numpy_bins(v: np.ndarray, index: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """np.histogram's bin of each value, from a first guess: its edge comparisons, edges as np.linspace's."""
    index = np.clip(index, 0, BINS - 1)
    width = (hi - lo) / BINS
    index = np.where(v < lo + index * width, index - 1, index)
    upper = np.where(index + 1 >= BINS, hi, lo + (index + 1) * width)
    return np.where((v >= upper) & (index != BINS - 1), index + 1, index)
