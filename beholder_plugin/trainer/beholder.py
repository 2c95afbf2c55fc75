"""The trainer side: Beholder.update() gathers what the dashboard asks for and hands it to a worker.

On the training thread, update() checks whether a frame is due (one
``stat()`` of config.json and a clock read), and if so copies the values the
frame will show (sliced on their device) into a reused flat buffer. A
background worker does the rest: variance, scaling, expansion, encoding,
writing, history and recording. If the worker is still busy when the next
frame is due, that frame is skipped and counted in ``skipped``.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import sys
import time
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from beholder_plugin.protocol import names
from beholder_plugin.protocol.files import files_for
from beholder_plugin.protocol.frame_format import encode_frame
from beholder_plugin.protocol.history import HistoryEntry, HistoryRing, history_name
from beholder_plugin.protocol.layout import (
    MISSING,
    NoValues,
    PlanCache,
    RenderError,
    frame_width,
    layout_for,
    resolve_layout,
)
from beholder_plugin.protocol.runfiles import load_config, write_config
from beholder_plugin.protocol.settings import DEFAULT_CONFIG, ConfigError
from beholder_plugin.trainer import sources
from beholder_plugin.trainer.colormaps import palette_for
from beholder_plugin.trainer.ranks import process_rank, run_for_rank
from beholder_plugin.trainer.recording import Recorder
from beholder_plugin.trainer.views import user_frame
from beholder_plugin.trainer.views.placeholder import placeholder_frame
from beholder_plugin.trainer.views.render import FramePlan, Renderer
from beholder_plugin.trainer.watch import Watch, WatchHandle
from beholder_plugin.trainer.worker import Worker

logger = logging.getLogger("beholder")

_LIVE: weakref.WeakSet = weakref.WeakSet()
# After a failed write (read-only or full disk) frames are not rendered for this long.
WRITE_RETRY_SECONDS = 5.0
# At interpreter exit, wait at most this long for a busy worker before giving up on its frame.
EXIT_TIMEOUT_SECONDS = 5.0
# A change of any of these starts the variance window afresh, as in the original.
_HISTORY_KEYS = ("values", "mode", "show_all")
MB = 1 << 20
# Dropped history files kept to be rewritten in place: cheaper than fresh pages.
MAX_SPARES = 2


@dataclass
class _Job:
    """One frame for the worker: what to draw, the settings, and when it was asked for."""

    kind: str  # "sections", "image" or "placeholder"
    config: dict[str, Any]
    values: str  # which input the frame shows
    step: int
    time: float
    plan: FramePlan | None = None
    buffer: np.ndarray | None = None
    image: np.ndarray | None = None
    missing: dict[int, str] | None = None  # sections shown empty, and why


class Beholder:
    """Writes frames of a run's arrays, variables or images for the TensorBoard Beholder tab.

    Args:
      logdir: the run directory; files go to ``<logdir>/plugins/beholder/``,
        which is created (with a config.json of default settings, unless one
        exists) right away, so the run shows in TensorBoard before its first frame.
      variables: what "trainable variables" means for this run: a Keras model
        or ``tf.Module`` (anything with ``trainable_variables``), a torch module
        (``named_parameters()``), or a list or dict of arrays. Can also be
        given per call to ``update()``.
      strict: re-raise errors from ``update()`` (and, at the next call, from
        the background worker) instead of logging the first one and carrying on.
      background: render and write on a background thread (the default).
        False does everything inside ``update()``; the frames are the same.
      ranks: in data-parallel training, which processes write: ``"zero"``
        (the default) only rank 0 (other ranks create nothing and
        ``update()`` returns at once), ``"all"`` every rank, each to its own
        run ``<logdir>/rank-N``. The rank comes from torch.distributed (once
        initialised), JAX, ``TF_CONFIG``, or the ``RANK``/``LOCAL_RANK``
        variables; construct Beholder after ``init_process_group()``.

    Use it as a context manager, or call ``close()``, to finish the last
    frame and any recording; both also happen at interpreter exit.
    """

    def __init__(
        self,
        logdir: str | os.PathLike,
        variables: Any = None,
        strict: bool = False,
        background: bool = True,
        ranks: str = "zero",
    ):
        self.rank = process_rank()
        run = run_for_rank(os.fspath(logdir), ranks, self.rank)
        self.active = run is not None  # False on ranks other than 0 (ranks="zero"): update() does nothing
        self.logdir = run if run is not None else os.fspath(logdir)
        self._files = files_for(self.logdir)
        self.directory = names.plugin_dir(self.logdir)
        self.variables = variables
        self.strict = strict
        self.failures = 0
        self.write_errors = 0
        self.frames_written = 0
        self.skipped = 0
        self.last_error: str | None = None
        self._write_retry_at = float("-inf")
        self._plans = PlanCache()
        self._frame_plans: dict[tuple, FramePlan] = {}
        self._buffers: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {}
        self._renderer = Renderer()
        self._recorder = Recorder(self.directory)
        self._config = dict(DEFAULT_CONFIG)
        self._config_path = names.config_path(self.logdir)
        self._frame_path = names.frame_path(self.logdir)
        self._history_dir = names.history_dir(self.logdir)
        self._config_stat: tuple | None = None
        self._last_frame_time = float("-inf")
        self._writer_id = secrets.token_hex(6)
        self._step = 0
        self._warned: set[str] = set()
        self._history = HistoryRing(0, 0)
        self._spares: list[str] = []  # dropped history files, rewritten in place for new frames
        self._watch: Watch | None = None
        self._worker = Worker(self._run_job) if background and self.active else None
        if not self.active:
            return
        self._history.adopt(self._history_dir, self._files)
        self._files.remove_stale_temp_files(self.directory)
        self._files.remove_stale_temp_files(self._history_dir)
        self._poll_config()  # creates the directory and config.json, or reads the one there
        _LIVE.add(self)

    # ------------------------------------------------------------ public

    @property
    def config(self) -> dict[str, Any]:
        """The settings in force (the last good config.json)."""
        return dict(self._config)

    def update(
        self,
        arrays: Any = None,
        frame: Any = None,
        variables: Any = None,
        session: Any = None,
        layout: str | dict[str, str] | None = None,
    ) -> bool:
        """Hand a frame to the worker if one is due; returns True when it did.

        With no arguments after ``watch(model)``, shows whichever of the
        model's weights, gradients or activations the dashboard's Values
        setting picks.

        Args:
          arrays: a list/tuple (sections named by index) or dict (named by key)
            of arrays: NumPy, tf.Tensor/Variable, torch tensor, JAX array or
            nested lists, any numeric or bool dtype. An entry that is not an
            array (None, empty, a model) is shown as an empty section that
            says why; the others still render.
          frame: a 2-D array (min-max scaled, shown in gray), an H x W x 3
            uint8 RGB image, or a zero-argument callable returning either,
            called only while "frames" is selected.
          variables: overrides the constructor's ``variables`` for this call.
          session: a TF1 ``tf.compat.v1.Session``; trainable variables are then
            that graph's ``tf.compat.v1.trainable_variables()``.
          layout: how to draw ``arrays``: one layout for all, or a dict by
            section name (docs/rendering.md): ``"hwio"``/``"oihw"`` kernels,
            ``"nhwc"``/``"nchw"`` activations, ``"in_out"``/``"out_in"``
            matrices, ``"grid"``, ``"auto"``. Default: the original's rule
            for TensorFlow's axis order; torch tensors get PyTorch's.

        The values shown are copied before update() returns, so the caller may
        change its arrays right after. Never raises into the training loop
        unless ``strict=True``: the first failure is logged with its
        traceback, later ones are counted in ``failures``.
        """
        if not self.active:
            return False
        self._step += 1
        try:
            return self._update(arrays, frame, variables, session, layout)
        except Exception as exc:
            if self.strict:
                raise
            self._failed(exc)
            return False

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the frame handed to the worker is written; False if timeout s passed first."""
        done = True if self._worker is None else self._worker.drain(timeout)
        self._report_worker_error()
        return done

    def watch(
        self,
        model: Any,
        activations: bool | list[str] = True,
        gradients: bool = True,
        probe: Any = None,
    ) -> WatchHandle:
        """Show a model's weights, gradients or activations, whichever the dashboard picks, at each update().

        ``model`` is a torch ``nn.Module`` or a Keras model. For torch,
        forward hooks on the leaf modules (or on the module paths listed in
        ``activations``) and gradient hooks on the trainable parameters copy
        the shown values on the step after a frame falls due, so
        ``update()`` shows gradients and activations of the step it follows.
        For Keras, activations come from running the model on ``probe`` (a
        fixed batch) when a frame is due. Returns a handle whose
        ``remove()`` (or ``with``) removes the hooks; so does ``unwatch()``.
        """
        self.unwatch()
        if not self.active:
            return WatchHandle(lambda: None)
        watch = Watch(model, activations=activations, gradients=gradients, probe=probe, strict=self.strict)
        self._watch = watch

        def remove() -> None:
            watch.remove()
            if self._watch is watch:
                self._watch = None

        return WatchHandle(remove)

    def unwatch(self) -> None:
        """Remove the hooks of watch() (nothing happens when no model is watched)."""
        if self._watch is not None:
            self._watch.remove()
            self._watch = None

    def close(self, timeout: float | None = None) -> None:
        """Write the frame in progress, stop the worker and finish any recording."""
        self.unwatch()
        try:
            if self._worker is not None:
                self._worker.stop(timeout)
            self._report_worker_error()
        finally:
            self._recorder.close()
            _LIVE.discard(self)

    def __enter__(self) -> Beholder:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ------------------------------------------------------------ errors

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    def _failed(self, exc: BaseException) -> None:
        """Count a failure; log the first one with its traceback."""
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.failures == 1:
            logger.error(
                "Beholder.update() failed; training goes on and later failures are only "
                "counted (see Beholder.failures). Pass strict=True to raise instead.",
                exc_info=(type(exc), exc, exc.__traceback__),
            )

    def _report_worker_error(self) -> None:
        """Raise (strict) or log and count an error the worker met since the last call."""
        if self._worker is None or self._worker.error is None:
            return
        error = self._worker.take_error()
        if error is None:
            return
        if self.strict:
            raise error
        self._failed(error)

    # ------------------------------------------------------------ config

    def _poll_config(self) -> dict[str, Any]:
        """The config in force, re-read only when config.json's stat changes."""
        try:
            st = os.stat(self._config_path)
        except FileNotFoundError:
            self._create_config()
            return self._config
        except OSError as exc:
            self._warn_once("stat", "Beholder: cannot stat %s (%s)", self._config_path, exc)
            return self._config
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if key != self._config_stat:
            self._config_stat = key
            self._reload_config()
        return self._config

    def _create_config(self) -> None:
        """Write config.json when it is missing: the defaults on a first run, else the settings in force.

        Settings in force are kept when the file (or the whole plugin
        directory) is deleted while training runs, so that cleaning up a
        logdir does not silently reset what the user chose. On a read-only
        logdir this is tried again only after the write back-off.
        """
        if time.monotonic() < self._write_retry_at:
            return
        try:
            write_config(self.logdir, self._config)
        except OSError as exc:
            self._write_failed(exc)
            return
        self._config_stat = None

    def _reload_config(self) -> None:
        try:
            config, problems = load_config(self.logdir)
        except ConfigError as exc:
            logger.warning(
                "Beholder: %s is unreadable or invalid (%s); keeping the last good settings",
                self._config_path,
                exc,
            )
            return
        for problem in problems:
            logger.warning("Beholder: %s: %s", self._config_path, problem)
        self._apply_config(config)

    def _apply_config(self, config: dict[str, Any]) -> None:
        old = self._config
        self._config = config
        if any(old[k] != config[k] for k in _HISTORY_KEYS):
            self._drain()
            self._renderer.clear_history()
        if old["is_recording"] and not config["is_recording"]:
            self._drain()
            self._recorder.close()

    def _drain(self) -> None:
        """Let the worker finish before changing state it uses (rare: only on some config changes)."""
        if self._worker is not None:
            self._worker.drain()

    # ------------------------------------------------------------ the training thread's part

    def _update(self, arrays: Any, frame: Any, variables: Any, session: Any, layout: Any) -> bool:
        _refuse_inside_tf_function()
        if self._worker is not None and self._worker.error is not None:
            self._report_worker_error()
        config = self._poll_config()
        fps = config["FPS"]
        if fps == 0:
            return False
        now = time.monotonic()
        if now - self._last_frame_time < 1.0 / fps or now < self._write_retry_at:
            return False
        watch = self._watch
        if watch is not None and watch.needs_capture(config["values"]) and watch.armed != config["values"]:
            watch.arm(config["values"], config["show_all"])  # the coming step's hooks copy what is shown
            return False
        self._last_frame_time = now
        if self._worker is not None and self._worker.busy:
            self.skipped += 1
            if watch is not None:
                watch.armed = None
            return False
        job = self._gather(config, arrays, frame, variables, session, layout)
        if self._worker is None:
            self._run_job(job)
        else:
            self._worker.submit(job)
        return True

    def _gather(
        self, config: dict, arrays: Any, frame: Any, variables: Any, session: Any, layout: Any
    ) -> _Job:
        """Copy what the frame shows (only that) off the caller's arrays, for the worker."""
        values = config["values"]
        job = _Job(kind="placeholder", config=config, values=values, step=self._step, time=time.time())
        if values == "frames":
            if frame is not None:
                job.kind, job.image = "image", user_frame.capture(frame, self._warn_once)
            return job
        if values == "arrays":
            if arrays is not None:
                self._gather_named(job, sources.named_arrays(arrays, layout))
            return job
        if values in ("gradients", "activations"):
            if self._watch is not None:
                self._gather_named(job, self._watch.take(values))
            return job
        if session is not None:
            self._gather_session(job, session)
            return job
        source = variables if variables is not None else self.variables
        if source is not None:
            self._gather_named(job, sources.named_variables(source))
        elif self._watch is not None:
            self._gather_named(job, self._watch.variables())
        return job

    def _frame_plan(
        self,
        labels: list[str],
        shapes: list[tuple[int, ...]],
        show_all: bool,
        layouts: list[str] | None = None,
    ) -> FramePlan:
        """The cached FramePlan for these sections (a training run has few distinct ones).

        A section that cannot be laid out (too few values for its layout) gets
        an empty placeholder; ``plan.problems`` says why.
        """
        layouts = layouts or [layout_for(shape) for shape in shapes]
        key = (tuple(labels), tuple(shapes), tuple(layouts), show_all)
        plan = self._frame_plans.get(key)
        if plan is None:
            if len(self._frame_plans) >= 16:
                self._frame_plans.clear()
                self._buffers.clear()
            width = frame_width(shapes, show_all, layouts)
            plans, problems = [], {}
            for i, (label, shape, layout) in enumerate(zip(labels, shapes, layouts)):
                try:
                    plans.append(self._plans.plan(shape, width, show_all, label, layout))
                except RenderError as exc:
                    plans.append(self._plans.plan((), width, show_all, label, MISSING))
                    problems[i] = _reason(label, exc)
            plan = self._frame_plans[key] = FramePlan(labels, plans)
            plan.problems = problems
        return plan

    def _buffer(self, plan: FramePlan) -> tuple[np.ndarray, list[np.ndarray]]:
        """The reused flat buffer for a plan and its section views (the worker is idle when it is filled)."""
        found = self._buffers.get(id(plan))
        if found is None or found[0].shape[0] != plan.value_count:
            buffer = np.empty(plan.value_count, np.float32)
            found = self._buffers[id(plan)] = (buffer, plan.section_views(buffer))
        return found

    def _gather_named(self, job: _Job, named: list[sources.Named]) -> None:
        """Copy the shown values of (name, array, layout) sections into the flat buffer.

        A section whose array cannot be read (None, empty, not an array, a
        failed gather) becomes an empty section whose record says why; the
        others still render. With ``strict`` anything but None raises.
        """
        if not named:
            raise RenderError("there are no arrays to show (an empty list or dict was passed)")
        labels, adapters, prepared, shapes, layouts = [], [], [], [], []
        missing: dict[int, str] = {}
        for i, (name, obj, layout) in enumerate(named):
            try:
                adapter, prep = sources.prepare_section(obj, name)
                shape = sources.shape_of(prep)
                if layout is None:
                    default = getattr(adapter, "default_layout", None)
                    layout = default(obj, shape) if default is not None else None
                layout = resolve_layout(layout, shape, name)
                if 0 in shape:
                    raise RenderError(f"section {name}: the array is empty (shape {shape})")
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
        plan = self._frame_plan(labels, shapes, job.config["show_all"], layouts)
        for i, reason in plan.problems.items():
            missing[i] = reason
        buffer, views = self._buffer(plan)
        gather = sources.gather_into
        sections = zip(adapters, prepared, plan.plans, views, labels)
        for i, (adapter, obj, section, out, label) in enumerate(sections):
            if i in missing:
                out.fill(np.nan)
                continue
            try:
                gather(adapter, obj, section, out, label)
            except Exception as exc:
                if self.strict:
                    raise
                out.fill(np.nan)
                missing[i] = self._section_problem(label, exc)
        job.kind, job.plan, job.buffer, job.missing = "sections", plan, buffer, missing

    def _section_problem(self, name: str, exc: Exception) -> str:
        """Why a section is shown empty (logged once per section name unless it is just None)."""
        reason = _reason(name, exc)
        if not isinstance(exc, NoValues):
            self._warn_once(f"section:{name}", "Beholder: section %s is shown empty: %s", name, reason)
        return reason

    def _gather_session(self, job: _Job, session: Any) -> None:
        from beholder_plugin.trainer.sources import tf_tensors

        labels, shapes = tf_tensors.session_variable_shapes(session)
        plan = self._frame_plan(labels, shapes, job.config["show_all"])
        compacts = tf_tensors.session_fetch(session, plan.plans)
        buffer, views = self._buffer(plan)
        with np.errstate(over="ignore", invalid="ignore"):
            for out, compact in zip(views, compacts):
                np.copyto(out, compact, casting="unsafe")
        job.kind, job.plan, job.buffer = "sections", plan, buffer

    # ------------------------------------------------------------ the worker's part

    def _run_job(self, job: _Job) -> None:
        """Render, encode, write and record one frame (on the worker thread)."""
        config = job.config
        header: dict[str, Any] = {"values": job.values, "sections": []}
        values = rendered = height = row_index = None
        if job.kind == "sections":
            rendered = self._renderer.render(job.plan, job.buffer, config, job.missing)
            pixels, palette, values = None, rendered.palette, rendered.values
            height = rendered.height
            header.update(
                width=rendered.width,
                sections=rendered.sections,
                mode=config["mode"],
                scaling=config["scaling"],
                show_all=config["show_all"],
                window_size=config["window_size"],
            )
        elif job.kind == "image":
            pixels, palette = user_frame.pixels(job.image)
        else:  # the selected input was not passed: say what to pass
            pixels, palette = placeholder_frame(job.values), palette_for("grayscale")
            header["values"] = "placeholder"
        frame_id = self.frames_written + 1
        header.update(
            frame_id=frame_id,
            writer=self._writer_id,
            time=job.time,
            step=job.step,
            colormap=config["colormap"] if palette is not None else None,
            failures=self.failures,
            skipped=self.skipped,
            last_error=self.last_error,
        )
        buffers = encode_frame(header, rows=pixels, palette=palette, values=values, height=height)
        try:
            self._write(buffers, job, frame_id, config)
        except OSError as exc:
            self._write_failed(exc)
            return
        self.frames_written = frame_id
        self._write_retry_at = float("-inf")
        if config["is_recording"]:
            if rendered is not None:
                pixels, row_index = rendered.rows()
            if palette is None:
                rgb = pixels
            else:
                coloured = palette[pixels]
                rgb = coloured if row_index is None else np.take(coloured, row_index, axis=0)
            self._recorder.append(rgb)

    def _write(self, buffers: list, job: _Job, frame_id: int, config: dict[str, Any]) -> None:
        """Write the frame: into the history ring and linked as frame.bin, or straight to frame.bin."""
        ring = self._history
        ring.max_bytes = config["history_mb"] * MB
        ring.max_seconds = config["history_seconds"]
        if not ring.enabled:
            self._files.write_atomic(self._frame_path, buffers)
            for name in ring.expired(job.time) + self._spares:
                self._files.remove(os.path.join(self._history_dir, name))
            self._spares = []
            return
        name = history_name(job.time, self._writer_id, frame_id, job.step)
        path = os.path.join(self._history_dir, name)
        spare = os.path.join(self._history_dir, self._spares.pop()) if self._spares else None
        size = self._files.write_atomic(path, buffers, reuse=spare)
        try:
            self._files.link_atomic(path, self._frame_path)
        except OSError:  # no hard links here (or a race with a deleted directory): write it again
            self._files.write_atomic(self._frame_path, buffers)
        ring.add(HistoryEntry(name, job.time, self._writer_id, frame_id, job.step, size))
        for old in ring.expired(job.time):
            self._recycle(old)

    def _recycle(self, name: str) -> None:
        """Keep a dropped history file as a spare to rewrite in place (a couple at most), else delete it."""
        old = os.path.join(self._history_dir, name)
        if len(self._spares) < MAX_SPARES:
            spare = f".spare-{self._writer_id}-{len(self._spares)}.tmp"
            try:
                os.replace(old, os.path.join(self._history_dir, spare))
                self._spares.append(spare)
                return
            except OSError:
                pass
        self._files.remove(old)

    def _write_failed(self, exc: OSError) -> None:
        """Note a failed write (read-only logdir, full disk): warn once, pause rendering, retry later."""
        self.write_errors += 1
        self._write_retry_at = time.monotonic() + WRITE_RETRY_SECONDS
        self._warn_once(
            "write",
            "Beholder: cannot write frames to %s (%s); training goes on, the previous frame stays "
            "readable, and Beholder tries again every %g s",
            self.directory,
            exc,
            WRITE_RETRY_SECONDS,
        )


def _reason(name: str, exc: Exception) -> str:
    """An exception's message without the "section NAME: " prefix (the section record names it)."""
    text = str(exc)
    prefix = f"section {name}: "
    if text.startswith(prefix):
        return text[len(prefix):]
    return text if isinstance(exc, RenderError) else f"{type(exc).__name__}: {text}"


def _refuse_inside_tf_function() -> None:
    """Raise when update() is being traced inside tf.function, where it would see no values.

    Checked on every call, not only when a frame is due, so that the mistake
    shows on the first trace rather than never. Costs nothing without TensorFlow.
    """
    if "tensorflow" not in sys.modules:
        return
    from beholder_plugin.trainer.sources import tf_tensors

    if tf_tensors.in_tf_function():
        raise tf_tensors.SymbolicTensorError(
            "Beholder.update() was called inside tf.function, where Python runs only while "
            "tracing and sees no values: call update() outside it (return the tensors you want "
            "to see from the tf.function), or use BeholderCallback with model.fit()"
        )


@atexit.register
def _close_all() -> None:
    """Finish every frame and recording still open when the interpreter exits (bounded wait)."""
    for beholder in list(_LIVE):
        try:
            beholder.close(timeout=EXIT_TIMEOUT_SECONDS)
        except Exception:  # pragma: no cover - best effort at exit
            logger.exception("Beholder: could not finish at exit")
