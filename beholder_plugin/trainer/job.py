"""One frame's job: what the gatherer copied on the training thread, and the worker's part with it.

The gatherer (gather.py) fills a ``Job``; ``FrameJobs.run`` (on the worker
thread, or inside update() without one) renders it, has the run store
encode and write it, and hands its pixels to the recording.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from beholder_plugin.protocol.colormaps import palette_for
from beholder_plugin.protocol.layout import MISSING
from beholder_plugin.trainer.device_batches import receive
from beholder_plugin.trainer.run_settings import RunSettings
from beholder_plugin.trainer.run_status import RunStatus
from beholder_plugin.trainer.views import user_frame
from beholder_plugin.trainer.views.placeholder import placeholder_frame
from beholder_plugin.trainer.views.render import FramePlan, Renderer
from beholder_plugin.trainer.worker import let_training_run

logger = logging.getLogger("beholder")

# A placeholder frame's ``shown`` when update() failed (views/placeholder.py says so, with the error).
FAILED = "failed"


class JobKind(enum.Enum):
    """What a frame is drawn from."""

    SECTIONS = "sections"  # arrays gathered into a flat buffer, rendered as sections
    IMAGE = "image"  # the user's own picture (update(frame=...))
    PLACEHOLDER = "placeholder"  # the shown input was not given (or update() failed): says what to do


def ending_failed(exc: BaseException) -> None:
    """Say that close()'s frame of the weights training ended with was not drawn: it is an extra, so the
    last frame written stays, and nothing is counted or raised."""
    logger.warning("Beholder: no frame of the weights training ended with (%s: %s); the last frame stays",
                   type(exc).__name__, exc)


@dataclass
class Job:
    """One frame for the worker: what to draw, the settings, and when it was asked for."""

    kind: JobKind
    settings: RunSettings
    shown: str  # which input the frame shows (the Values choice), or FAILED
    step: int
    time: float
    plan: FramePlan | None = None
    buffer: np.ndarray | None = None  # the shown float values, section after section
    samples: np.ndarray | None = None  # the statistics' samples (views.stats), when taken
    image: np.ndarray | None = None
    missing: dict[int, str] | None = None  # sections shown empty, and why
    pending: list | None = None  # device batches still being copied to the host (sources.torch_batch)
    variance_done: bool = False  # the buffer holds the variance window's values, computed on the device
    offered: tuple[str, ...] = ()  # a placeholder's: the inputs update() was given instead (its header says)
    exact: Any = None  # the timeline's whole-array figures, still on their way from a device (timeline.py)
    waiting: str | None = None  # why this frame is not taken after all (a device gather still compiling)
    # gradients under a loss scaler (fp16 AMP): a non-finite one is an overflow the scaler skips, recorded
    # in the timeline but not reported as an anomaly
    loss_scaled: bool = False
    ending: bool = False  # close()'s frame of the weights training ended with (its header says so)
    again: bool = False  # a second frame of its step (close()'s ending one): not in the timeline twice


class FrameJobs:
    """The worker's part: render a job, have the store write it, and record it when recording."""

    def __init__(self, renderer: Renderer, store: Any, status: RunStatus, timeline: Any = None) -> None:
        self.renderer = renderer
        self.store = store
        self.status = status
        self.timeline = timeline  # told of each written frame's sections (timeline.py)
        self._shapes: dict[str, tuple] | None = None  # the last variance frame's section shapes
        self._failure_at = float("-inf")  # when run() last wrote a failure frame (time.monotonic())

    def run(self, job: Job) -> None:
        """Render, encode, write and record one frame (on the worker thread); when that fails, write the
        frame that says so (at most one a second) and raise the error for the trainer to count.

        A run whose every frame fails here (one too big to write, say) would otherwise never have a
        frame, and its dashboard would wait for the first one for the whole run.
        """
        try:
            self._run(job)
        except Exception as exc:
            if job.ending:  # (close() goes on)
                ending_failed(exc)
                return
            self.status.failed(exc)  # (counted here, so that the frame below says so; once: run_status)
            if job.kind is not JobKind.PLACEHOLDER and time.monotonic() - self._failure_at >= 1.0:
                self._failure_at = time.monotonic()
                failure = Job(JobKind.PLACEHOLDER, job.settings.replace(is_recording=False), FAILED, job.step,
                              job.time)
                try:
                    self._run(failure)
                except Exception:  # (the error raised is the frame's)
                    pass
            raise

    def _run(self, job: Job) -> None:
        """run() itself."""
        settings = job.settings
        header: dict[str, Any] = {"values": job.shown, "sections": []}
        floats = rendered = height = row_index = None
        if job.kind is JobKind.SECTIONS:
            if job.pending:
                receive(job)
                let_training_run()
            done = {"variance_done": True} if job.variance_done else {}
            rendered = self.renderer.render(job.plan, job.buffer, settings.config, job.missing, job.samples,
                                            **done)
            if job.variance_done and rendered.unclean:  # (the host window is told by render())
                for batch in job.pending or ():
                    if getattr(batch, "window", None) is not None:
                        batch.window.mark_newest_unclean()
            pixels, palette, floats = None, rendered.palette, rendered.values
            height = rendered.height
            header.update(
                width=rendered.width,
                sections=rendered.sections,
                mode=settings.mode,
                scaling=settings.scaling,
                show_all=settings.show_all,
                window_size=settings.window_size,
            )
            window = self._window(job)
            if window is not None:
                header["window"] = window
            if job.ending:
                header["ending"] = True
        elif job.kind is JobKind.IMAGE:
            pixels, palette = user_frame.pixels(job.image)
        else:  # the selected input was not passed (or update() failed): say what to do
            detail = self.status.last_error if job.shown == FAILED else None
            pixels, palette = placeholder_frame(job.shown, job.offered, detail), palette_for("grayscale")
            header["values"] = "placeholder"
            header["offered"] = list(job.offered)
        if "window" not in header:
            self._shapes = None
        colormap = settings.colormap if palette is not None else None
        let_training_run()
        written = self.store.write_frame(header, job.time, job.step, settings, colormap,
                                         rows=pixels, palette=palette, values=floats, height=height)
        if written and rendered is not None and self.timeline is not None and not job.again:
            let_training_run()
            self.timeline.written(job, rendered.sections, self.store.history, job.plan.names,
                                 rendered.stats_columns)
        if not written or not settings.is_recording:
            return
        if rendered is not None:
            pixels, row_index = rendered.rows()
        if palette is None:
            rgb = pixels
        else:
            coloured = palette[pixels]
            rgb = coloured if row_index is None else np.take(coloured, row_index, axis=0)
        self.store.record(rgb, job.time, settings.fps)  # plays at the rate frames were taken

    def _window(self, job: Job) -> dict[str, Any] | None:
        """In variance mode, the header's "window": how many frames the variance is over and, when the
        window started again because sections changed shape, the first of them (docs/protocol.md)."""
        if job.settings.mode != "variance":
            return None
        size = job.settings.window_size
        if job.variance_done:
            windows = [window for batch in job.pending or () if (window := getattr(batch, "window", None))]
            frames = min((len(window.samples) for window in windows), default=0)
            size = min((window.size for window in windows), default=size)
        else:
            frames, size = self.renderer.window_frames, self.renderer.window_size or size
        plan = job.plan
        shapes = {name: tuple(p.shape) for name, p in zip(plan.names, plan.plans)
                  if p.layout != MISSING}  # (a section missing this frame changed no shape)
        last, self._shapes = self._shapes, shapes
        window: dict[str, Any] = {"frames": frames, "size": size}
        if frames == 1 and last is not None:
            changed = [name for name, shape in shapes.items() if name in last and last[name] != shape]
            if changed:
                first = changed[0]
                window["changed"] = {"name": first, "was": list(last[first]), "now": list(shapes[first]),
                                     "sections": len(changed)}
        return window
