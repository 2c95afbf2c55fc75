"""The trainer's timeline: each frame's section figures appended for the whole run, and anomalies caught.

``Beholder`` owns one ``Timeline``. Its three hooks, each one call site in
trainer/beholder.py:

- ``on_step(step)``, in every ``update()`` while ``hot``: the per-step check
  of device tensors (torch: one ``torch._foreach_norm`` pass and a few
  element-wise ops, all queued on the device, no host sync; the first
  non-finite step per section stays on the device and is copied back with the
  next frame), and hands anomalies found since to ``on_anomaly``;
- ``gather(job, named)``, when a frame is gathered (training thread): the
  exact pass. Torch tensors on an accelerator: every frame, one fused norm
  pass queued on the device (the per-step check's, at the same step) and
  copied back in the frame's own copy (torch_batch.DeviceGather.extra), read
  by the worker. NumPy arrays and CPU tensors: at most ``HOST_EXACT_VALUES`` values
  per frame on average (a model of 1M values gets an exact pass every 4th
  frame; the records in between carry the sample's figures, and say so);
- ``written(job, sections, ring)``, on the worker once the frame is written:
  the records are appended to the timeline, anomalies are looked for and, at
  the first, the frame before and the anomaly's frame are pinned in the ring.

Exact vs sampled: ``norm`` and ``nonfinite`` are exact where the exact pass
ran (record flags say so); ``min``, ``max``, ``mean``, ``std`` and the
``zero``/``nan``/``inf`` fractions come from the statistics' sample
(views/stats.py). A non-finite norm tells NaN (a NaN anywhere makes it NaN)
from infinity exactly; the device pass counts non-finite values only as
"none" (a finite norm) and otherwise estimates the count from the sample.
"""

from __future__ import annotations

import collections
import logging
import os
import posixpath
import time
from typing import Any, Callable

import numpy as np

from beholder_plugin.protocol import timeline as tl
from beholder_plugin.protocol.history import HistoryRing
from beholder_plugin.protocol.names import history_dir
from beholder_plugin.trainer.exact_pass import HOST_EXACT_VALUES, ExactPass, StepCheck
from beholder_plugin.trainer.keyframes import Keyframes
from beholder_plugin.trainer.timeline_writer import REMOTE_CHUNK_SECONDS, TimelineWriter

logger = logging.getLogger("beholder")

# A norm above NORM_JUMP times the median of its section's last RECENT_NORMS frames (per value: over the
# square root of the section's count) is an anomaly.
NORM_JUMP = 10.0
RECENT_NORMS = 16
# Sections whose recent norms are kept at most (272 bytes each): past this, they all start again.
MAX_JUDGED_SECTIONS = 1 << 16
_MIDDLE = (RECENT_NORMS // 2 - 1, RECENT_NORMS // 2)  # a full window's median: the mean of these two
MIN_NORMS = 4
# Recent norms that spread widely (gradients of a model that fits most batches, and a few badly) are
# judged against their spread: their upper quartile over the lower, to this power, times the median.
SPREAD_POWER = 3
# A section's highest jump bars its next ones (see _norm_jumps) for this many of its norms.
QUIET_NORMS = 1000
# anomalies.jsonl holds at most this many records (later ones are only logged).
MAX_ANOMALIES = 1000
KINDS = ("nan", "inf", "norm_jump")
__all__ = ["AnomalyError", "HOST_EXACT_VALUES", "NORM_JUMP", "REMOTE_CHUNK_SECONDS", "StepCheck", "Timeline",
           "TimelineWriter", "describe"]


class AnomalyError(RuntimeError):
    """Raised from update() after an anomaly, with ``Beholder(..., on_anomaly="raise")``."""

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__(describe(record))
        self.record = record


def describe(record: dict[str, Any]) -> str:
    """One line naming an anomaly's section, kind and step (or steps)."""
    what = {"nan": "a NaN", "inf": "an infinite value", "norm_jump": "a norm jump"}.get(record["kind"],
                                                                                      record["kind"])
    if "step" in record:
        when = f"at step {record['step']}"
    else:
        first, last = record["steps"]
        when = f"between steps {first} and {last}"
    return f"Beholder: first anomaly: {what} in {record['values']} section {record['section']} {when}"


def scaler_hint(record: dict[str, Any]) -> str:
    """What the first-anomaly log line adds when gradients turned non-finite (no loss scaler was given):
    fp16 AMP's first overflows look exactly so, and passing the scaler makes them no anomaly."""
    if record["values"] != "gradients" or record["kind"] not in ("nan", "inf"):
        return ""
    return ("; if the loop scales its loss (fp16 AMP), this may be a loss scaler's overflow: pass its "
            "GradScaler, watch(model, grad_scaler=scaler), and overflows are not anomalies")


class Timeline:
    """One run's timeline and anomaly checks (see the module's docstring)."""

    def __init__(self, run_dir: str, files: Any, on_anomaly: Any = None, norm_jump: float = NORM_JUMP,
                 clock: Callable[[], float] = time.time, enabled: bool = True) -> None:
        if on_anomaly not in (None, "raise") and not callable(on_anomaly):
            raise ValueError(f'on_anomaly must be None, "raise" or a function, not {on_anomaly!r}')
        if not norm_jump > 1:
            raise ValueError(f"norm_jump must be a number above 1, not {norm_jump!r}")
        self.enabled = enabled
        self.writer = TimelineWriter(run_dir, files, clock=clock)
        self.keyframes = Keyframes(run_dir, files, history_dir(run_dir))
        self.on_anomaly = on_anomaly
        self.norm_jump = float(norm_jump)
        self.hot = False  # update() calls on_step(): a per-step check runs, or an anomaly waits for delivery
        self.exact_pass = ExactPass()
        self._delivery: collections.deque = collections.deque()
        self._raise: AnomalyError | None = None
        # (values, section name) -> n (rows 2n, 2n + 1 of _ring: its recent norms): a section's weights and
        # gradients (the dashboard's Values changed) have norms of other sizes, judged apart
        self._slots: dict[tuple[str, str], int] = {}
        self._slot_cache: dict[tuple, np.ndarray] = {}
        self._ring = np.full((0, RECENT_NORMS), np.nan)
        self._ring_steps = np.full((0, RECENT_NORMS), np.nan)  # the step of each of those norms
        self._seen = np.zeros(0, np.int64)
        self._jumping = np.zeros(0, bool)
        self._highest = np.zeros(0)  # per row of _ring: the highest norm (per value) reported as a jump
        self._highest_at = np.zeros(0, np.int64)  # ... and that row's count of norms (_seen) then
        self._reported: set[tuple[str, str, str]] = set()  # (values, name, kind) reported once
        self._last_step: int | None = None
        # (values, section name) -> the last step it had a record, and the last one it was known free of
        # NaN and infinity (an exact count of none): where an anomaly's range of steps starts
        self._framed_at: dict[tuple[str, str], int] = {}
        self._clean_at: dict[tuple[str, str], int] = {}
        self.anomalies = 0
        self.first_anomaly: dict[str, Any] | None = None
        self._failed = False

    @property
    def per_step(self) -> list[StepCheck]:
        """The per-step device checks running now, one per device (empty: none runs)."""
        return list(self.exact_pass.checks)

    def stop_checks(self) -> None:
        """Stop the per-step checks (the next frame of device tensors starts them again)."""
        self.exact_pass.stop()
        self.hot = bool(self._delivery) or self._raise is not None

    # ------------------------------------------------------------ the training thread

    def on_step(self, step: int) -> None:
        """Every update() while hot: queue the per-step device check, hand over anomalies found since."""
        try:
            for check in self.exact_pass.checks:
                check.check(step)
        except Exception:  # never into the training loop: the checks stop for good, frames still check
            self.exact_pass.fail()
            self.hot = bool(self._delivery) or self._raise is not None
            logger.warning("Beholder: the per-step anomaly check failed and is off; frames are still "
                           "checked", exc_info=True)
        if self._delivery or self._raise is not None:
            self._deliver()

    def _deliver(self) -> None:
        """Call on_anomaly with each new record, or raise AnomalyError (once) for "raise"."""
        while self._delivery:
            record = self._delivery.popleft()
            if callable(self.on_anomaly):
                self.on_anomaly(record)
        self.hot = bool(self.exact_pass.checks)
        error, self._raise = self._raise, None
        if error is not None:
            raise error

    def gather(self, job: Any, named: list, watch: Any = None) -> None:
        """The exact pass over a frame's sections (torch on a device: queued; host arrays: within budget).

        With a torch model's ``watch`` showing gradients, the parameters' whole
        ``.grad`` are read instead of the shown part; when hooks caught them,
        the norms the hooks took as the backward pass ended (before clipping).
        """
        if not self.enabled:
            return
        try:
            self._gather(job, named, watch)
        except Exception:  # the timeline never costs the frame
            if not self._failed:
                self._failed = True
                logger.warning("Beholder: the timeline's exact pass failed; records carry sampled figures",
                               exc_info=True)

    def _gather(self, job: Any, named: list, watch: Any) -> None:
        """gather() itself: the exact pass, then whether update() must call on_step()."""
        self.exact_pass.gather(job, named, watch)
        self.hot = bool(self.exact_pass.checks) or bool(self._delivery) or self._raise is not None

    # ------------------------------------------------------------ the worker

    def written(self, job: Any, sections: list[dict], ring: HistoryRing | None, names: list[str],
                columns: dict[str, np.ndarray] | None = None) -> None:
        """Append a written frame's records and look for anomalies (never raises into the worker).

        ``columns`` are the sections' statistics as arrays (views.stats.COLUMNS),
        as the renderer made them (Rendered.stats_columns).
        """
        if not self.enabled:
            return
        try:
            self._written(job, sections, ring, names, columns)
        except Exception:
            if not self._failed:
                self._failed = True
                logger.warning("Beholder: could not append to the timeline", exc_info=True)

    def _written(self, job: Any, sections: list[dict], ring: HistoryRing | None, names: list[str],
                 columns: dict[str, np.ndarray] | None) -> None:
        """written() itself: the records column by column, the anomalies, the keyframe, the appends."""
        exact = job.exact
        if exact is not None:
            exact.resolve()
        count_names = len(names)
        rows = [i for i, record in enumerate(sections) if i < count_names and record.get("stats") is not None]
        if not rows or columns is None:  # (no statistics samples: no record has "stats" either)
            self._last_step = job.step
            return
        kept = [names[i] for i in rows]
        if len(rows) == len(sections):  # every section (the usual case): the columns as they are
            figures = columns
        else:
            figures = {name: column[rows] for name, column in columns.items()}
        records = tl.make_records(len(rows))
        records["step"] = job.step
        records["time"] = job.time
        records["section"] = np.arange(len(rows))
        for column in ("min", "max", "mean", "std", "zero"):
            records[column] = figures[column]
        nan_frac, inf_frac, count = figures["nan"], figures["inf"], figures["count"]
        records["nan"], records["inf"] = nan_frac, inf_frac
        records["count"] = count
        norm = figures["norm"]
        nonfinite = (np.fmax(nan_frac, 0.0) + np.fmax(inf_frac, 0.0)) * count  # (NaN: none known)
        is_nan, is_inf = nan_frac > 0, (inf_frac > 0) & ~(nan_frac > 0)
        flags = np.full(len(rows), tl.values_flag(job.shown), np.uint32)
        step_first = np.full(len(rows), -1, np.int64)
        if exact is not None:
            idx = np.asarray(rows)
            inside = idx < len(exact.norm)
            idx = np.where(inside, idx, 0)
            known = exact.exact[idx] & inside
            norm = np.where(known, exact.norm[idx], norm)
            counted = known & ~np.isnan(exact.nonfinite[idx])
            nonfinite = np.where(counted, exact.nonfinite[idx], nonfinite)
            is_nan = np.where(known, np.isnan(exact.norm[idx]), is_nan)
            is_inf = np.where(known, np.isinf(exact.norm[idx]), is_inf)
            checked = exact.step_checked[idx] & inside
            flagged = checked & (exact.step_first[idx] >= 0)
            step_first = np.where(flagged, exact.step_first[idx], -1)
            is_nan |= flagged & np.isnan(exact.step_value[idx])
            is_inf |= flagged & np.isinf(exact.step_value[idx])
            flags |= np.where(known, tl.EXACT_NORM, 0).astype(np.uint32)
            flags |= np.where(counted, tl.EXACT_NONFINITE, 0).astype(np.uint32)
            flags |= np.where(checked, tl.STEP_CHECKED, 0).astype(np.uint32)
        with np.errstate(over="ignore"):  # (a finite norm past float32's range is stored as inf)
            records["norm"] = norm
        # an exact non-finite norm with a count estimated from a sample that missed it: at least one
        nonfinite = np.where((is_nan | is_inf) & ~(nonfinite >= 1) & ~(flags & tl.EXACT_NONFINITE > 0), 1.0,
                             nonfinite)
        records["nonfinite"] = nonfinite
        jumps, medians, factors = self._norm_jumps(job.shown, kept, norm, count, (flags & tl.EXACT_NORM) > 0,
                                          job.step)
        found = []
        if job.loss_scaled:  # gradients under a loss scaler: a non-finite one is an overflow it skips
            is_nan = is_inf = np.zeros(len(rows), bool)
        for j in np.flatnonzero(is_nan | is_inf | jumps).tolist():
            name = kept[j]
            kind = "nan" if is_nan[j] else "inf" if is_inf[j] else None
            new = False
            if kind is not None and (job.shown, name, kind) not in self._reported:
                first = int(step_first[j]) if step_first[j] >= 0 else None
                found.append(self._anomaly(job, name, kind, first, float(norm[j]), float(nonfinite[j]),
                                           bool(flags[j] & tl.EXACT_NONFINITE)))
                new = True
            if jumps[j]:
                found.append(self._anomaly(job, name, "norm_jump", None, float(norm[j]), 0.0, True,
                                           median=float(medians[j]), factor=float(factors[j])))
                new = True
            if new:  # (a section that stays NaN: only where it was found, not every record after it,
                flags[j] |= tl.ANOMALY  # which thinning would keep in place of the run before it)
        records["flags"] = flags
        self.writer.append(kept, records)
        self._keyframe(ring, job.step)
        found.sort(key=lambda r: r["step"] if "step" in r else r["steps"][0])  # the earliest is the first
        for record in found:
            self._report(record, ring)
        self._last_step = job.step
        self._note_steps(job, kept, (flags & tl.EXACT_NONFINITE > 0) & (nonfinite == 0))

    def _note_steps(self, job: Any, kept: list[str], clean: np.ndarray) -> None:
        """Note the frame's step for its sections (and, for those with an exact count of no NaN or infinity,
        as known clean): the next anomaly's range starts after it."""
        if len(self._framed_at) > 2 * MAX_JUDGED_SECTIONS:  # (names that change every frame)
            self._framed_at, self._clean_at = {}, {}
        step, shown = job.step, job.shown
        for name, known in zip(kept, clean.tolist()):
            self._framed_at[shown, name] = step
            if known:
                self._clean_at[shown, name] = step

    def _keyframe(self, ring: HistoryRing | None, step: int) -> None:
        """Maybe make this frame a keyframe; delete the files of keyframes dropped for the budget."""
        if ring is None:
            return
        files = self.writer.files
        join = posixpath.join if self.writer.remote else os.path.join
        for name in self.keyframes.consider(ring, step):
            files.remove(join(self.keyframes.history_dir, name))

    def _norm_jumps(self, values: str, kept: list[str], norm: np.ndarray, count: np.ndarray,
                    exact: np.ndarray, step: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Which norms newly jumped past norm_jump times their section's recent median, the medians, and
        the factors they were judged by.

        Each section keeps its last RECENT_NORMS finite norms (a jumped norm
        does not join them, so it does not become the new normal at once),
        per value: divided by the square root of the section's count, since
        a norm grows with the size of what it is taken over, and a section's
        shape may change (activations of text of another length, a larger
        batch) with no change in its values. Exact norms and norms scaled up
        from the statistics' sample are kept and judged apart (``exact``):
        a big section gets an exact norm only every few frames, and a spike
        outside the sample would make each of those look like a jump over
        the sampled ones. The medians returned are at each section's present
        count.

        A section whose recent norms grow steadily with the step (a bias that
        starts at zero) is judged against its median moved on to this step at
        their median growth per step: frames taken at steps 1-4, then at step
        50 (slow first steps, then fast ones under a frame rate), are no jump.

        A section jumps again only once its norm came back under the bar and
        then passed the highest norm it was reported at, or QUIET_NORMS
        norms after that report: a section whose norms spike now and then
        reports a new extreme, not every spike, and one that spiked early in
        the run is judged afresh later.

        A section whose recent norms spread widely is judged against that
        spread (``_factors``): the gradients of a model that fits most of its
        batches swing by 30x from batch to batch, and each swing was reported
        (88 jumps late in the demo's run, none of them a problem).
        """
        with np.errstate(invalid="ignore"):
            size = np.sqrt(np.fmax(count, 1.0))
        norm = norm / size
        key = (values, tuple(kept))
        sections = self._slot_cache.get(key)
        if sections is None:
            if len(self._slots) + len(kept) > MAX_JUDGED_SECTIONS:  # (names that change every frame:
                self._slots, self._slot_cache = {}, {}  # their recent norms start again, not grow for ever)
                self._ring, self._seen = np.full((0, RECENT_NORMS), np.nan), np.zeros(0, np.int64)
                self._ring_steps = np.full((0, RECENT_NORMS), np.nan)
                self._jumping, self._highest = np.zeros(0, bool), np.zeros(0)
                self._highest_at = np.zeros(0, np.int64)
            for name in kept:
                if (values, name) not in self._slots:
                    self._slots[values, name] = len(self._slots)
            if len(self._slots) > len(self._jumping):
                grow = max(len(self._slots), 2 * len(self._jumping))
                rows = 2 * grow - len(self._ring)  # (two rows a section: sampled norms, exact norms)
                self._ring = np.vstack([self._ring, np.full((rows, RECENT_NORMS), np.nan)])
                self._ring_steps = np.vstack([self._ring_steps, np.full((rows, RECENT_NORMS), np.nan)])
                self._seen = np.concatenate([self._seen, np.zeros(rows, np.int64)])
                self._highest = np.concatenate([self._highest, np.zeros(rows)])
                self._highest_at = np.concatenate([self._highest_at, np.zeros(rows, np.int64)])
                self._jumping = np.concatenate([self._jumping, np.zeros(grow - len(self._jumping), bool)])
            if len(self._slot_cache) >= 16:
                self._slot_cache.clear()
            sections = self._slot_cache[key] = np.array([self._slots[values, n] for n in kept], np.intp)
        slots = 2 * sections + exact
        seen = self._seen[slots]
        enough = seen >= MIN_NORMS
        medians = np.full(len(slots), np.nan)
        if enough.all() and seen.min() >= RECENT_NORMS:  # the usual case: every window full
            middle = np.partition(self._ring[slots], _MIDDLE, axis=1)  # (finite norms only)
            medians = 0.5 * (middle[:, _MIDDLE[0]] + middle[:, _MIDDLE[1]])
        elif enough.any():
            window = self._ring[slots[enough]]
            full = seen[enough] >= RECENT_NORMS
            medians[np.flatnonzero(enough)[full]] = np.median(window[full], axis=1)
            for k in np.flatnonzero(~full).tolist():  # not yet RECENT_NORMS norms: the median of those seen
                medians[np.flatnonzero(enough)[k]] = np.median(window[k, : seen[enough][k]])
        finite = np.isfinite(norm)
        with np.errstate(invalid="ignore"):
            over = finite & enough & (medians > 0) & (norm > self.norm_jump * medians)
        factors = np.full(len(slots), self.norm_jump)
        if over.any():  # (rare: only those are looked at again, for a steady growth and a wide spread)
            factors[over] = self._factors(slots[over])
            over[over] = norm[over] > factors[over] * self._moved_on(slots[over], medians[over], step)
        higher = (norm > self._highest[slots]) | (seen - self._highest_at[slots] >= QUIET_NORMS)
        jumps = over & ~self._jumping[sections] & higher
        self._highest[slots[jumps]], self._highest_at[slots[jumps]] = norm[jumps], seen[jumps]
        self._jumping[sections] = np.where(finite, over, self._jumping[sections])
        add = finite & ~over
        if add.any():
            targets = slots[add]
            self._ring[targets, self._seen[targets] % RECENT_NORMS] = norm[add]
            self._ring_steps[targets, self._seen[targets] % RECENT_NORMS] = step
            self._seen[targets] += 1
        return jumps, medians * size, factors

    def _factors(self, slots: np.ndarray) -> np.ndarray:
        """How many times its median a norm must pass to be a jump: norm_jump, or for recent norms that
        spread widely (upper quartile r times the lower) r cubed, up to norm_jump cubed."""
        with np.errstate(invalid="ignore", divide="ignore"):
            lower, upper = np.nanquantile(self._ring[slots], [0.25, 0.75], axis=1)
            spread = np.where(lower > 0, upper / lower, np.inf) ** SPREAD_POWER
        return np.clip(spread, self.norm_jump, self.norm_jump ** SPREAD_POWER)

    def _moved_on(self, slots: np.ndarray, medians: np.ndarray, step: int) -> np.ndarray:
        """The medians moved on from their norms' median step to ``step`` at the median growth per step
        between their consecutive norms (none when they do not grow, or the steps went back)."""
        steps, norms = self._ring_steps[slots], self._ring[slots]
        order = np.argsort(steps, axis=1)  # (in step order; the empty places, NaN, last)
        steps, norms = np.take_along_axis(steps, order, 1), np.take_along_axis(norms, order, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            gaps = np.diff(steps, axis=1)
            rates = np.where(gaps > 0, np.diff(norms, axis=1) / gaps, np.nan)
            known = np.isfinite(rates).any(axis=1)
            rate = np.zeros(len(slots))
            middle = np.zeros(len(slots))
            if known.any():
                rate[known] = np.nanmedian(rates[known], axis=1)
                middle[known] = np.nanmedian(steps[known], axis=1)
            ahead = np.where(known, np.fmax(step - middle, 0.0), 0.0)
            return medians + np.fmax(np.nan_to_num(rate), 0.0) * ahead

    def _anomaly(self, job: Any, name: str, kind: str, step_first: int | None, norm: float,
                 nonfinite: float, exact_count: bool, median: float | None = None,
                 factor: float | None = None) -> dict[str, Any]:
        """An anomaly record: the exact step (per-step check), else the steps since the section's last frame
        of these values (a NaN or infinity: since it was last known to have none)."""
        self._reported.add((job.shown, name, kind))
        record: dict[str, Any] = {"section": name, "values": job.shown, "kind": kind}
        since = (self._framed_at if kind == "norm_jump" else self._clean_at).get((job.shown, name))
        first = 1 if since is None or since >= job.step else since + 1  # (a restart counts from 1 again)
        if step_first is not None:
            record["step"] = step_first
            record["checked"] = "step"
        elif first >= job.step:
            record["step"] = job.step
            record["checked"] = "frame"
        else:
            record["steps"] = [first, job.step]
            record["checked"] = "frame"
        record["time"] = job.time
        record["frame_step"] = job.step
        found: dict[str, Any] = {"norm": norm if np.isfinite(norm) else str(norm)}
        if kind != "norm_jump":
            found["nonfinite"] = nonfinite
            found["nonfinite_exact"] = exact_count
        if median is not None:
            found["median"] = median
            found["threshold"] = factor
        record["found"] = found
        return record

    def _report(self, record: dict[str, Any], ring: HistoryRing | None) -> None:
        """Pin (first anomaly), append, log, and queue the record for on_anomaly."""
        self.anomalies += 1
        if self.first_anomaly is None:
            record["first"] = True
            frames = self._pin(ring, record["frame_step"])
            if frames:
                record["frames"] = frames
            self.first_anomaly = record
            logger.warning("%s%s", describe(record), scaler_hint(record))
            if self.on_anomaly == "raise":
                self._raise = AnomalyError(record)
                self.hot = True
        if self.anomalies <= MAX_ANOMALIES:
            self.writer.add_anomaly(record, MAX_ANOMALIES)
        if callable(self.on_anomaly):
            self._delivery.append(record)
            self.hot = True

    def _pin(self, ring: HistoryRing | None, step: int) -> list[str]:
        """Pin the anomaly's frame and the one before in the history ring; their steps in the thinning."""
        names = []
        if ring is not None and ring.entries and ring.entries[-1].step == step:
            entries = list(ring.entries)[-2:]
            for entry in entries:
                ring.pin(entry.name)
                self.keyframes.protected.add(entry.name)
                names.append(entry.name)
                self.writer.protected.add(entry.step)
        self.writer.protected.add(step)
        if self._last_step is not None:
            self.writer.protected.add(self._last_step)
        return names

    def adopt(self, ring: HistoryRing) -> None:
        """Pin again the frames an earlier writer pinned (its anomaly records name them)."""
        self.keyframes.adopt(ring)
        try:  # a trainer killed while it rewrote base.bht may have left the temporary file
            self.writer.files.remove_stale_temp_files(self.writer.directory)
            records = tl.read_anomalies(self.writer.run_dir, self.writer.files)
        except (OSError, ValueError):
            return
        kept = {e.name for e in ring.entries}
        for record in records:
            for name in record.get("frames", []):
                if isinstance(name, str) and name in kept:
                    ring.pin(name)
                    self.keyframes.protected.add(name)
            if record.get("first") is not True:  # (as _pin does: each writer's first anomaly's frames;
                continue  # steps start again at each restart, so every record's would pin everywhere)
            for key in ("frame_step", "step"):
                if isinstance(record.get(key), int):
                    self.writer.protected.add(record[key])

    def close(self) -> None:
        """Finish the part in progress (remote: upload it)."""
        try:
            self.writer.close()
        except OSError as exc:
            logger.warning("Beholder: could not finish the timeline (%s)", exc)
