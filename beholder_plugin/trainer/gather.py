"""The gatherer: on the training thread, copy what a frame shows (only that) off the caller's arrays.

``Gatherer.gather(settings, inputs)`` returns the worker's ``Job``. It keeps
what makes that cheap frame after frame: the frame plans (one per set of
section names, shapes and layouts), the reused flat buffers, the section
filter's matches, and the device batches that copy a frame's sections off
an accelerator in one go (device_batches.py, sources/*_batch.py).
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from beholder_plugin.protocol.filters import SectionFilter, compile_filter
from beholder_plugin.protocol.layout import (
    MISSING,
    NoValues,
    RenderError,
    frame_width,
    layout_for,
    resolve_layout,
)
from beholder_plugin.protocol.plans import KeptPlans, PlanCache, arrays_bytes, fit_heights
from beholder_plugin.trainer import sources
from beholder_plugin.trainer.device_batches import BatchMemo, batch_key, make_gather
from beholder_plugin.trainer.job import Job, JobKind
from beholder_plugin.trainer.run_settings import RunSettings
from beholder_plugin.trainer.sources.captured import Captured
from beholder_plugin.trainer.sources.traced_batch import GatherCompiling
from beholder_plugin.trainer.views import user_frame
from beholder_plugin.trainer.views.placeholder import UNBUILT
from beholder_plugin.trainer.views.render import FramePlan

# At most this many frame plans (and PLANS_KEPT_BYTES of them) are kept, the oldest dropped first; and
# this many section-filter matches (more start that cache afresh).
MAX_PLANS = 16
# Device gathers kept per device, and host buffers kept, the least recently used dropped first: a device
# gather holds its plan's buffers on the device and in pinned host memory (three of the frame's size),
# the host two (values and samples), and activations whose shapes change from frame to frame (text of
# varying lengths) would keep them for each of MAX_PLANS plans.
DEVICE_GATHERS_KEPT = 4
# What a frame with no sections at all says: arrays passed, or a model's (or variables') trainable ones.
EMPTY_ARRAYS = "there are no arrays to show (an empty list or dict was passed)"
EMPTY_VARIABLES = ("the model has no trainable variables (every parameter frozen, requires_grad=False or "
                   "trainable=False? or a list of them taken before a Keras model was built: pass the model "
                   "itself)")


@functools.lru_cache(maxsize=64)
def section_filter(pattern: str) -> SectionFilter | None:
    """The parsed section filter (None: show every section); settings.py checked it parses."""
    return compile_filter(pattern)


@dataclass
class Inputs:
    """What one update() call was given, and the watched model (if any)."""

    step: int
    arrays: Any = None
    frame: Any = None
    variables: Any = None  # update()'s, else the constructor's
    session: Any = None
    layout: Any = None
    watch: Any = None

    def offered(self, shown: str = "") -> tuple[str, ...]:
        """The Values choices that update() was given something for (a placeholder offers them, the first
        on its button): arrays first when gradients or activations are asked for, as those passed by hand
        come as arrays (a JAX loop's update(variables=params, arrays=grads))."""
        offered = []
        if self.variables is not None or self.session is not None or self.watch is not None:
            offered.append("trainable_variables")
        if self.arrays is not None:
            offered.insert(0 if shown in ("gradients", "activations") else len(offered), "arrays")
        if self.frame is not None:
            offered.append("frames")
        return tuple(offered)


class Gatherer:
    """Turns an update()'s inputs into a Job, reusing plans, buffers and device batches between frames.

    Args:
      strict: raise a section's error instead of showing it as an empty section.
      warn_once: ``warn_once(key, message, *args)``, the run's one-time warnings.
      exact_pass: ``exact_pass(job, sections, watch)``, called with each frame's
        sections once filtered (the timeline's whole-array norms, timeline.py).
    """

    def __init__(self, strict: bool, warn_once: Callable[..., None],
                 exact_pass: Callable[[Job, list, Any], None] | None = None) -> None:
        self.strict = strict
        self._warn_once = warn_once
        self._exact_pass = exact_pass
        self._watch: Any = None  # the watch of the update() being gathered (for the exact pass)
        self._variables_of: Any = None  # its model, or update()'s variables (gather() says)
        self._plans = PlanCache()
        self._frame_plans = KeptPlans(MAX_PLANS)
        self._buffers: dict[int, tuple[np.ndarray, list[np.ndarray], np.ndarray, list[np.ndarray]]] = {}
        # (plan, device) -> the reused buffers of a device batch (sources.torch_batch, sources.jax_batch)
        self._device_gathers: dict[tuple, Any] = {}
        self._memo: BatchMemo | None = None  # the last frame's checks, when it was one device batch
        self._filter_cache: dict[tuple, list[int]] = {}

    @property
    def memo(self) -> BatchMemo | None:
        """What the last frame's checks found, when it was one device batch (else None)."""
        return self._memo

    @property
    def device_gathers(self) -> list[Any]:
        """The device batches kept for reuse (one per plan and device)."""
        return list(self._device_gathers.values())

    @property
    def frame_plans(self) -> list[FramePlan]:
        """The frame plans kept, oldest first."""
        return list(self._frame_plans.values())

    def restart_windows(self) -> None:
        """Start the variance windows kept on a device afresh (the shown values changed, or a frame's
        variance is taken on the host: one window at a time, as the host's is dropped by a frame whose
        variance the device takes)."""
        for gather in self._device_gathers.values():
            gather.window = None
            gather.variance = False  # (set again by use_variance() for a whole frame's batch)

    def gather(self, settings: RunSettings, inputs: Inputs) -> Job:
        """Copy what the frame shows (only that) off the caller's arrays, for the worker."""
        shown, watch = settings.shown, inputs.watch
        self._watch = watch
        # whose trainable variables a frame of them shows (when there are none: built yet?)
        self._variables_of = getattr(watch, "model", None) if inputs.variables is None else inputs.variables
        job = Job(JobKind.PLACEHOLDER, settings, shown, inputs.step, time.time())
        if shown == "frames":
            if inputs.frame is not None:
                job.kind, job.image = JobKind.IMAGE, user_frame.capture(inputs.frame, self._warn_once)
        elif shown == "arrays":
            if inputs.arrays is not None:
                self._gather_named(job, sources.named_arrays(inputs.arrays, inputs.layout, self._warn_once))
        elif shown in ("gradients", "activations"):
            if watch is not None:
                job.loss_scaled = shown == "gradients" and watch.loss_scaled()
                self._gather_named(job, watch.take(shown, section_filter(settings.filter), settings.show_all,
                                                   settings.section_size))
        elif inputs.session is not None:
            self._gather_session(job, inputs.session)
        elif inputs.variables is not None:
            self._gather_named(job, sources.named_variables(inputs.variables), EMPTY_VARIABLES)
        elif watch is not None and watch.needs_capture(shown):  # sharded: copied inside forward
            # (the forward after the update() that armed the hooks: the weights of the step before this)
            job.step -= 1
            self._gather_named(job, watch.take(shown, section_filter(settings.filter)), EMPTY_VARIABLES)
        elif watch is not None:
            # (update() called before the optimizer step, as the Hugging Face callback does: the weights
            # of the step before the one whose gradients it shows)
            job.step -= watch.update_before_step
            self._gather_named(job, watch.variables(), EMPTY_VARIABLES)
        if job.kind is JobKind.PLACEHOLDER:  # say what update() was given instead, so the dashboard offers it
            job.offered = inputs.offered(job.shown)
        return job

    def frame_plan(
        self,
        labels: list[str],
        shapes: list[tuple[int, ...]],
        show_all: bool,
        layouts: list[str] | None = None,
        sizing: str = "fixed",
        max_height: int | None = None,
    ) -> FramePlan:
        """The cached FramePlan for these sections (a training run has few distinct ones).

        A section that cannot be laid out (too few values for its layout) gets
        an empty placeholder; ``plan.problems`` says why. ``max_height``: the
        sections' height cap a watch's hooks cut theirs for (Watch.height_cap).
        """
        layouts = layouts or [layout_for(shape) for shape in shapes]
        key = (tuple(labels), tuple(shapes), tuple(layouts), show_all, sizing, max_height)
        plan = self._frame_plans.get(key)
        if plan is None:
            width = frame_width(shapes, show_all, layouts)
            plans, problems = self._section_plans(labels, shapes, layouts, width, show_all, sizing,
                                                  max_height)
            cap = fit_heights([p.height for p in plans], width)
            if cap is not None:  # (very many sections: all cut to one height that fits a frame)
                self._warn_once(f"fitted:{len(plans)}", "Beholder: %d sections are too many for one frame at "
                                "their heights: each is shown at most %d px tall (the Sections filter shows "
                                "fewer, taller)", len(plans), cap)
                plans, problems = self._section_plans(labels, shapes, layouts, width, show_all, sizing, cap)
            plan = FramePlan(labels, plans)
            plan.problems = problems
            plan.key = key  # what made it (the same key makes the same plan: traced_batch's cache)
            # (its own arrays and its sections' plans, which the plan cache may have dropped already)
            nbytes = arrays_bytes(vars(plan).values()) + sum({id(p): p.nbytes for p in plans}.values())
            for dropped in self._frame_plans.put(key, plan, nbytes):
                self._buffers.pop(id(dropped), None)  # (a later plan may get its id)
                for old in [k for k in self._device_gathers if k[0] == id(dropped)]:
                    del self._device_gathers[old]
        return plan

    def _section_plans(self, labels: list[str], shapes: list[tuple[int, ...]], layouts: list[str], width: int,
                       show_all: bool, sizing: str, cap: int | None = None) -> tuple[list, dict[int, str]]:
        """The sections' plans (at most ``cap`` px tall), an empty one for each that cannot be laid out,
        and why."""
        plans, problems = [], {}
        for i, (label, shape, layout) in enumerate(zip(labels, shapes, layouts)):
            try:
                plans.append(self._plans.plan(shape, width, show_all, label, layout, sizing, cap))
            except RenderError as exc:
                plans.append(self._plans.plan((), width, show_all, label, MISSING, max_height=cap))
                problems[i] = section_reason(label, exc)
        return plans, problems

    def _buffer(self, plan: FramePlan) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, list[np.ndarray]]:
        """The reused flat buffers for a plan (shown values, statistics samples) and their section views.

        The worker is idle when they are filled.
        """
        found = self._buffers.pop(id(plan), None)  # (put back last: the least recently used go first)
        if found is None or found[0].shape[0] != plan.value_count:
            while len(self._buffers) >= DEVICE_GATHERS_KEPT:  # (a job in flight keeps its own alive)
                del self._buffers[next(iter(self._buffers))]
            buffer = np.empty(plan.value_count, np.float32)
            samples = np.empty(plan.sample_count, np.float32)
            found = (buffer, plan.section_views(buffer), samples, plan.sample_views(samples))
        self._buffers[id(plan)] = found
        return found

    def _gather_named(self, job: Job, named: list[sources.Named], empty: str = EMPTY_ARRAYS) -> None:
        """Copy the shown values of (name, array, layout) sections into the flat buffer.

        A section whose array cannot be read (None, empty, not an array, a
        failed gather) becomes an empty section whose record says why; the
        others still render. With ``strict`` anything but None raises.
        ``empty``: what the error says when there are no sections at all.
        """
        if not named:
            if empty is not EMPTY_VARIABLES or not sources.not_built(self._variables_of):
                raise RenderError(empty)  # (all frozen, an empty list: a setup mistake, said as a failure)
            job.shown = UNBUILT  # a model not built yet: a frame saying so, no failure (not even strict)
            self._warn_once("unbuilt", "Beholder: the model is not built yet, so it has no trainable "
                            "variables; frames of them start once it has them")
            return
        settings = job.settings
        pattern = section_filter(settings.filter)
        if pattern is not None:
            count = len(named)
            named = [named[i] for i in self._matching(pattern, named)]
            if not named:
                why = f"the section filter {pattern.pattern!r} matches none of the {count} sections"
                named = [("(filter)", Captured((), None, error=why), None)]
        if self._exact_pass is not None:
            self._exact_pass(job, named, self._watch)
        riding: list[Any] = []  # device gathers handed the timeline's figures to copy with the frame
        try:
            self._gather_sections(job, named, riding)
        finally:
            if job.exact is not None:
                for gather in riding:  # a launch that did not happen leaves its figures behind
                    if gather.extra is not None:
                        gather.extra[0].queued.extend(gather.extra[1])
                        gather.extra = None
                try:
                    job.exact.copy_back_rest()  # the figures no frame copy took: copied on their own
                except Exception:  # the timeline never costs the frame: its records keep sampled figures
                    job.exact.queued = []

    def _gather_sections(self, job: Job, named: list[sources.Named], riding: list[Any]) -> None:
        """_gather_named after the exact pass: the memo's reuse, or each section sorted and gathered."""
        settings = job.settings
        memo = self._memo
        if (memo is not None and memo.fits(named, settings)
                and self._gather_again(job, memo, named, riding)):
            return
        labels, adapters, prepared, shapes, layouts = [], [], [], [], []
        missing: dict[int, str] = {}
        numpy_source, captured_source = sources.adapter("numpy"), sources.adapter("captured")
        for i, (name, obj, layout) in enumerate(named):
            kind = type(obj)
            if kind is np.ndarray and layout is None and obj.size and obj.dtype.kind in "biufc":
                # a plain NumPy array: what prepare_section would find, in a few attribute reads
                adapter, prep, shape, layout = numpy_source, obj, obj.shape, layout_for(obj.shape)
            elif kind is Captured and layout is None and obj.error is None and 0 not in obj.shape:
                # what a watch() hook copied, its layout already checked against its shape
                adapter, prep, shape, layout = captured_source, obj, obj.shape, obj.layout
            else:
                try:
                    adapter, prep = sources.prepare_section(obj, name)
                    shape = sources.shape_of(prep)
                    if layout is None:
                        default = getattr(adapter, "default_layout", None)
                        layout = default(obj, shape) if default is not None else None
                    layout = resolve_layout(layout, shape, name)
                    if 0 in shape:
                        raise RenderError(f"section {name}: the array is empty (shape {shape})")
                    adapter, prep = sources.in_place(prep, adapter)  # a CPU tensor: read where it lies
                except Exception as exc:
                    if self.strict and not isinstance(exc, NoValues):
                        raise
                    adapter, prep, shape, layout = None, None, (), MISSING
                    missing[i] = self._section_problem(name, exc)
            labels.append(name)
            adapters.append(adapter)
            prepared.append(prep)
            shapes.append(shape)
            layouts.append(layout)
        watch = self._watch  # (a watch's hooks cut their sections for a height cap: the frame keeps it)
        cap = getattr(watch, "height_cap", None) if job.shown in ("gradients", "activations") else None
        plan = self.frame_plan(labels, shapes, settings.show_all, layouts, settings.section_size, cap)
        for i, reason in plan.problems.items():
            missing[i] = reason
        buffer, views, samples, sample_views = self._buffer(plan)
        gather, gather_sample = sources.gather_into, sources.gather_sample
        batches: dict[Any, list[tuple[int, Any]]] = {}  # device -> sections gathered there in one batch
        sections = zip(adapters, prepared, plan.plans, views, labels, sample_views, plan.sample_steps)
        for i, (adapter, obj, section, out, label, sample, step) in enumerate(sections):
            if i in missing:  # (its sample too: else the statistics read the buffer's last contents)
                out.fill(np.nan)
                sample.fill(np.nan)
                continue
            device = batch_key(adapter, obj, section, plan.width)
            if device is not None:  # on an accelerator: issued now, copied to the host once per device
                if type(obj) is Captured and obj.part is None:
                    obj = obj.tensor  # (a hook's whole copy, show_all: sliced like any tensor)
                batches.setdefault(device, []).append((i, obj))
                continue
            try:
                gather(adapter, obj, section, out, label)
                if step[0] == 1 and out.size == plan.counts[i]:
                    sample[...] = out.reshape(-1)  # every value is shown once: the same figures, no new read
                else:
                    gather_sample(adapter, obj, step, sample)
            except Exception as exc:
                if self.strict:
                    raise
                out.fill(np.nan)
                sample.fill(np.nan)
                missing[i] = self._section_problem(label, exc)
        job.kind, job.plan, job.buffer, job.missing = JobKind.SECTIONS, plan, buffer, missing
        job.samples = samples
        self._memo = BatchMemo.of(named, settings, plan, batches, missing, shapes)
        job.pending = []
        whole = not missing and any(len(entries) == len(plan.plans) for entries in batches.values())
        if not whole:  # the host takes this frame's variance: a window on a device would go stale
            self.restart_windows()
        for device, entries in batches.items():
            try:
                gather = self._device_gather(plan, device)
                if whole:  # the whole frame in one batch: its variance there too
                    job.variance_done = self._device_variance(gather, settings)
                _ride_along(job, gather, device, riding)
                job.pending.append(gather.launch(entries))
            except GatherCompiling as exc:  # the frame waits for it (skipped), with nothing half-launched
                job.waiting, job.pending = str(exc), []
                self._memo = None
                for other, entries_there in batches.items():  # (other devices' gathers compile beside it)
                    if other != device:
                        start = getattr(self._device_gather(plan, other), "start_compile", None)
                        if start is not None:
                            start(entries_there)
                return
            except Exception as exc:
                if self.strict:
                    raise
                self._batch_failed(job, [i for i, _ in entries], views, sample_views, exc)

    def _gather_again(self, job: Job, memo: BatchMemo, named: list[sources.Named], riding: list[Any]) -> bool:
        """The frame of the same tensors as the last one, all on one device: checks and plan reused.

        Each tensor is still detached afresh (a parameter's ``.data`` may have
        been replaced) and its shape compared with the plan's; False (the
        full path) when one changed, or when the launch failed.
        """
        plan = memo.plan
        buffer, _views, samples, _sample_views = self._buffer(plan)
        job.kind, job.plan, job.buffer, job.missing, job.samples = JobKind.SECTIONS, plan, buffer, {}, samples
        gather = self._device_gather(plan, memo.device)
        job.variance_done = self._device_variance(gather, job.settings)
        _ride_along(job, gather, memo.device, riding)
        if memo.kind != "tensors":  # hook parts or arrays, already checked against the plan by fits()
            tensors = [entry[1] for entry in named]
        else:
            pending = gather.replay(memo.sections, [entry[1] for entry in named])  # CUDA: the same storage
            if pending is not None:
                job.pending = [pending]
                return True
            tensors = [entry[1].detach() for entry in named]
            if any(t.shape != shape for t, shape in zip(tensors, memo.shapes)):
                self._memo = None
                return False
        try:
            job.pending = [gather.launch_sections(list(memo.sections), tensors)]
        except GatherCompiling as exc:
            job.waiting, job.pending = str(exc), []
        except Exception:  # one array the memo's checks let by (donated, moved to another device): the
            # full path checks each again, batches the rest and says why for that one alone, this frame
            self._memo, job.pending, job.variance_done = None, [], False
            return False
        return True

    def wait_compiled(self, timeout: float | None = None) -> bool:
        """Wait until no device gather is compiling in the background (True), or for timeout seconds (False).

        A frame that meets a new set of array shapes on an accelerator (JAX,
        TensorFlow) starts compiling its gather and is skipped; tests and
        scripts that need the next frame written can wait here first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        for gather in list(self._device_gathers.values()):
            wait = getattr(gather, "wait_compiled", None)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if wait is not None and not wait(left):
                return False
        # (and a compile of a gather dropped since: its thread would still be in XLA at exit)
        traced = sys.modules.get("beholder_plugin.trainer.sources.traced_batch")
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return traced is None or traced.wait_in_flight(left)

    def _batch_failed(self, job: Job, sections: Any, views: list, sample_views: list,
                      exc: Exception) -> None:
        """Show a device batch whose launch failed as empty sections that say why (the others render)."""
        job.variance_done = False
        self.restart_windows()  # (the host takes this frame's variance)
        for i in sections:
            views[i].fill(np.nan)
            sample_views[i].fill(np.nan)
            job.missing[i] = self._section_problem(job.plan.names[i], exc)

    def _device_variance(self, gather: Any, settings: RunSettings) -> bool:
        """Whether a device batch holding a whole frame computes its variance window there too.

        One window per device, as the host keeps one: a frame of another
        plan (activations of another length, say) drops the last plan's and
        starts its own, where each plan kept one (up to 1 % of the device's
        memory each, for as many plans as were kept) and took up its old
        samples again when its plan came back, unlike the host's.
        """
        use = getattr(gather, "use_variance", None)
        if use is None:
            return False
        for other in self._device_gathers.values():
            if other is not gather and other.device == gather.device and getattr(other, "window", None):
                other.window = None
        return use(settings)

    def _device_gather(self, plan: FramePlan, device: Any) -> Any:
        """The reused device buffers (and CUDA graph) that gather a plan's sections on one device."""
        key = (id(plan), device)
        found = self._device_gathers.pop(key, None)  # (put back last: the least recently used go first)
        if found is None or found.plan is not plan:
            mine = [k for k in self._device_gathers if k[1] == device]
            for old in mine[: max(0, len(mine) - DEVICE_GATHERS_KEPT + 1)]:
                del self._device_gathers[old]  # (its buffers go once no frame in flight holds them)
            found = make_gather(plan, device)
        self._device_gathers[key] = found
        return found

    def _matching(self, pattern: SectionFilter, named: list[sources.Named]) -> list[int]:
        """Which sections a filter keeps, remembered per set of names (searched once, not every frame)."""
        key = (pattern.pattern, tuple(entry[0] for entry in named))
        found = self._filter_cache.get(key)
        if found is None:
            if len(self._filter_cache) >= MAX_PLANS:
                self._filter_cache.clear()
            found = self._filter_cache[key] = [i for i, entry in enumerate(named) if pattern.search(entry[0])]
        return found

    def _section_problem(self, name: str, exc: Exception) -> str:
        """Why a section is shown empty (logged once per section name unless it is just None)."""
        reason = section_reason(name, exc)
        if not isinstance(exc, NoValues):
            self._warn_once(f"section:{name}", "Beholder: section %s is shown empty: %s", name, reason)
        return reason

    def _gather_session(self, job: Job, session: Any) -> None:
        """Fetch a TF1 session's trainable variables (the shown values only) into the flat buffer."""
        from beholder_plugin.trainer.sources import tf_tensors

        settings = job.settings
        labels, shapes = tf_tensors.session_variable_shapes(session)
        plan = self.frame_plan(labels, shapes, settings.show_all, sizing=settings.section_size)
        compacts = tf_tensors.session_fetch(session, plan.plans)
        buffer, views, _samples, _ = self._buffer(plan)  # no statistics in TF1 (one session.run fetches)
        with np.errstate(over="ignore", invalid="ignore"):
            for out, compact in zip(views, compacts):
                np.copyto(out, compact, casting="unsafe")
        job.kind, job.plan, job.buffer = JobKind.SECTIONS, plan, buffer


def section_reason(name: str, exc: Exception) -> str:
    """An exception's message without the "section NAME: " prefix (the section record names it)."""
    text = str(exc)
    prefix = f"section {name}: "
    if text.startswith(prefix):
        return text[len(prefix):]
    return text if isinstance(exc, RenderError) else f"{type(exc).__name__}: {text}"


def _ride_along(job: Job, gather: Any, device: Any, riding: list[Any]) -> None:
    """Hand a torch device gather the timeline's figures queued for its device, to be copied back in
    the frame's one copy (sources.torch_batch.DeviceGather.extra)."""
    exact = job.exact
    if exact is None or not exact.queued or not hasattr(gather, "extra"):
        return
    taken = exact.take(device)
    if taken:
        if gather.extra is not None:  # (not launched since: back on its queue first)
            gather.extra[0].queued.extend(gather.extra[1])
        gather.extra = (exact, taken)
        riding.append(gather)


