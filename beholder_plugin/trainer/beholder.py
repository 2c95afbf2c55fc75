"""The trainer side: Beholder.update() gathers what the dashboard asks for and hands it to a worker.

On the training thread, update() checks whether a frame is due (a clock
read; config.json's ``stat()`` only when one may be due, and at least every
quarter second), and if so copies the values the
frame will show (sliced on their device) into a reused flat buffer. A
background worker does the rest: variance, scaling, expansion, encoding,
writing, history and recording. If the worker is still busy when the next
frame is due, that frame is skipped and counted in ``skipped``.
"""

from __future__ import annotations

import atexit
import errno
import functools
import logging
import os
import posixpath
import secrets
import shutil
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from beholder_plugin.protocol import names
from beholder_plugin.protocol.colormaps import palette_for
from beholder_plugin.protocol.files import files_for
from beholder_plugin.protocol.filters import SectionFilter, compile_filter
from beholder_plugin.protocol.frame_format import encode_frame, with_header
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
from beholder_plugin.protocol.remote_files import identity_of_info, normalize_location, url_scheme
from beholder_plugin.protocol.runfiles import load_config, write_config
from beholder_plugin.protocol.settings import DEFAULT_CONFIG, VALUES, ConfigError
from beholder_plugin.trainer import sources
from beholder_plugin.trainer.device_batches import BatchMemo, batch_key, make_gather, receive
from beholder_plugin.trainer.ranks import process_rank, run_for_rank
from beholder_plugin.trainer.recording import Recorder
from beholder_plugin.trainer.sources.captured import Captured
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
# With no frame due, update() looks at config.json at most this often (a paused run
# notices the dashboard's new frame rate within this time).
CONFIG_CHECK_SECONDS = 0.25
# A change of any of these starts the variance window afresh, as in the original.
_HISTORY_KEYS = ("values", "mode", "show_all")
MB = 1 << 20
# After the disk was found full, the history ring keeps to the bytes it held then for this long,
# then tries its configured budget again (a full disk again shrinks it again).
DISK_FULL_HOLD_SECONDS = 60.0
# A frame.bin up to this size gets its header rewritten in place to say frames are not written.
MAX_MARKED_FRAME_BYTES = 64 * MB
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
# Dropped history files kept to be rewritten in place: cheaper than fresh pages.
MAX_SPARES = 2
# Remote logdirs (any fsspec URL): frames per second at most, by default (a constructor argument),
REMOTE_MAX_FPS = 2.0
# how often config.json's metadata is polled (on a background thread, never in update()),
REMOTE_CONFIG_POLL_SECONDS = 2.0
# and the history ring's caps (the dashboard's history settings apply below them).
REMOTE_HISTORY_MB = 32
REMOTE_HISTORY_SECONDS = 60
# A placeholder frame's values when update() failed (views/placeholder.py says so, with the error).
FAILED = "failed"
# At interpreter exit, wait at most this long for recordings still being uploaded.
UPLOAD_EXIT_SECONDS = 300.0


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
    samples: np.ndarray | None = None  # the statistics' samples (views.stats), when taken
    image: np.ndarray | None = None
    missing: dict[int, str] | None = None  # sections shown empty, and why
    pending: list | None = None  # device batches still being copied to the host (sources.torch_batch)
    variance_done: bool = False  # the buffer holds the variance window's values, computed on the device
    offered: tuple[str, ...] = ()  # a placeholder's: the values update() was given instead (its header says)


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
      max_remote_fps: frames per second at most when ``logdir`` is a remote
        URL (``gs://``, ``s3://``, any fsspec URL; see docs/remote.md), below
        the dashboard's setting. Local logdirs are not capped.
      config_poll_seconds: on a remote logdir, how often a background thread
        looks at config.json's metadata for changes made in the dashboard.
      ranks: in data-parallel training, which processes write: ``"zero"``
        (the default) only rank 0 (other ranks create nothing and
        ``update()`` returns at once), ``"all"`` every rank, each to its own
        run ``<logdir>/rank-N``. The rank comes from torch.distributed (once
        initialised), JAX, ``TF_CONFIG``, or the ``RANK``/``LOCAL_RANK``
        variables; construct Beholder after ``init_process_group()``.
      values: the dashboard's Values choice the run starts on
        (``"arrays"``, ``"frames"``, ``"gradients"``, ``"activations"`` or
        ``"trainable_variables"``), written to its config.json now, also
        over a setting already there (the dashboard can change it later).
        None (the default) keeps the run's setting, ``"trainable_variables"``
        for a new run. E.g. ``Beholder(logdir, values="arrays")`` when
        passing ``update(arrays=...)``.

    A remote ``logdir`` whose fsspec implementation is not installed raises
    ImportError here (even with ``strict=False``), naming the package.

    Use it as a context manager, or call ``close()``, to finish the last
    frame and any recording; both also happen at interpreter exit.
    """

    def __init__(
        self,
        logdir: str | os.PathLike,
        variables: Any = None,
        strict: bool = False,
        background: bool = True,
        max_remote_fps: float = REMOTE_MAX_FPS,
        config_poll_seconds: float = REMOTE_CONFIG_POLL_SECONDS,
        ranks: str = "zero",
        values: str | None = None,
    ):
        self.rank = process_rank()
        run = run_for_rank(os.fspath(logdir), ranks, self.rank)
        self.active = run is not None  # False on ranks other than 0 (ranks="zero"): update() does nothing
        self.logdir = normalize_location(run if run is not None else logdir)
        self._files = files_for(self.logdir)  # ImportError naming the package for a missing backend
        self.remote = bool(self._files.remote)
        self.storage = url_scheme(self.logdir) if self.remote else "local"
        self.max_fps = _positive(max_remote_fps, "max_remote_fps") if self.remote else None
        self._config_poll_seconds = _positive(config_poll_seconds, "config_poll_seconds")
        self.directory = names.plugin_dir(self.logdir)
        self.variables = variables
        self.strict = strict
        self.failures = 0
        self.write_errors = 0
        self.frames_written = 0
        self.skipped = 0
        self.last_error: str | None = None
        self._write_retry_at = float("-inf")
        self._unwritten_since: float | None = None  # when frames stopped being written (a failing disk)
        self._unwritten = 0  # frames not written since then
        self._disk_budget: tuple[int, float] | None = None  # (ring bytes, until when) after a full disk
        self._plans = PlanCache()
        self._frame_plans: dict[tuple, FramePlan] = {}
        self._buffers: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {}
        # (plan, device) -> the reused buffers of a device batch (sources.torch_batch, sources.jax_batch)
        self._device_gathers: dict[tuple, Any] = {}
        self._memo: BatchMemo | None = None  # the last frame's checks, when it was one device batch
        self._renderer = Renderer()
        self._writer_id = secrets.token_hex(6)
        self._recorder = self._make_recorder()
        self._config = dict(DEFAULT_CONFIG)
        if values is not None:  # what config.json gets now (a new one, or the one there, below)
            if values not in VALUES:
                raise ValueError(f"values must be one of {', '.join(VALUES)}, not {values!r}")
            self._config["values"] = values
        self._config_path = names.config_path(self.logdir)
        self._frame_path = names.frame_path(self.logdir)
        self._history_dir = names.history_dir(self.logdir)
        self._config_stat: tuple | None = None
        self._config_checked = float("-inf")  # when update() last looked at config.json
        self._last_frame_time = float("-inf")
        self._frame_interval = _frame_interval(self._config)  # 1 / FPS of the config in force
        self._step = 0
        self._warned: set[str] = set()
        self._history = HistoryRing(0, 0)
        self._spares: list[str] = []  # dropped history files, rewritten in place for new frames
        self._effective = self._capped(self._config)  # the config update() uses (remote caps applied)
        self._pending_config: dict[str, Any] | None = None  # read by the remote poller, applied by update()
        self._pending_lock = threading.Lock()
        self._poller_pid: int | None = None
        self._poll_stop = threading.Event()
        self._uploads: list[threading.Thread] = []
        self._watch: Watch | None = None
        self._failure_shown_at = float("-inf")  # when a frame last said that update() failed
        self._filter_cache: dict[tuple, list[int]] = {}
        self._worker = Worker(self._run_job) if background and self.active else None
        if not self.active:
            return
        if not self.remote:
            _check_directory(self.directory, self.logdir)  # a setup mistake: said now, not at every write
        self._adopt_history()
        self._files.remove_stale_temp_files(self.directory)
        self._files.remove_stale_temp_files(self._history_dir)
        if self.remote:
            self._poll_remote_config()  # once now, so the settings are known before the first update()
            _register_exit_hook()
        self._poll_config()  # creates the directory and config.json, or reads the one there
        if values is not None and self._config["values"] != values:
            self._choose_values(values)
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
        now = time.monotonic()
        if (  # the common case, answered here: nothing due, no config to look at, no error to report
            now - self._last_frame_time < self._frame_interval
            and now - self._config_checked < CONFIG_CHECK_SECONDS
            and (self._worker is None or self._worker.error is None)
            and "tensorflow" not in sys.modules  # else _update checks for tf.function tracing
        ):
            return False
        try:
            return self._update(arrays, frame, variables, session, layout)
        except Exception as exc:
            if self.strict:
                raise
            self._failed(exc)
            self._show_failure()
            return False

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the frame handed to the worker is written; False if timeout s passed first."""
        done = True if self._worker is None else self._worker.drain(timeout)
        self._report_worker_error()
        return done

    def snapshot(self) -> Any:
        """The run's current frame as a PIL.Image (after flush()), or None when there is no frame yet."""
        if not self.active:
            return None
        self.flush()
        from PIL import Image

        from beholder_plugin.protocol.runfiles import read_frame

        rgb = read_frame(self.logdir)
        return None if rgb is None else Image.fromarray(rgb, "RGB")

    def _repr_png_(self) -> bytes | None:
        """PNG bytes of snapshot(), so that a notebook cell ending with the Beholder shows its frame."""
        image = self.snapshot()
        if image is None:
            return None
        import io

        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()

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
            watch.close()
            if self._watch is watch:
                self._watch = None

        return WatchHandle(remove)

    def unwatch(self) -> None:
        """Remove the hooks of watch() (nothing happens when no model is watched)."""
        if self._watch is not None:
            self._watch.close()
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
            self._finish_remote(timeout)
            if self._worker is None or not self._worker.busy:
                self._drop_spares()
            _LIVE.discard(self)

    def _drop_spares(self) -> None:
        """Delete the dropped history files kept for rewriting (no temporary file outlives a Beholder)."""
        spares, self._spares = self._spares, []
        for name in spares:
            try:
                self._files.remove(os.path.join(self._history_dir, name))
            except OSError:
                pass

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

    def _show_failure(self) -> None:
        """Write a frame saying that update() failed, so the dashboard shows it at once (at most 1/s).

        A trainer whose every update() fails writes no frame of its own; this
        one keeps the run's status fresh, and its header carries the failure
        count and the last error. Never raises.
        """
        now = time.monotonic()
        if now - self._failure_shown_at < 1.0 or (self._worker is not None and self._worker.busy):
            return
        self._failure_shown_at = now
        job = _Job(kind="placeholder", config={**self._config, "is_recording": False}, values=FAILED,
                   step=self._step, time=time.time())
        try:
            if self._worker is None:
                self._run_job(job)
            else:
                self._worker.submit(job)
        except Exception:  # the failure is already counted and logged
            logger.debug("Beholder: could not write the failure frame", exc_info=True)

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
        """The config in force, re-read only when config.json's stat changes.

        On a remote logdir nothing here touches the network: a background
        thread polls the object's metadata (_poll_remote_config) and leaves a
        changed config for this call to apply.
        """
        if self.remote:
            return self._take_remote_config()
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

    def _choose_values(self, values: str) -> None:
        """Write the constructor's values= into config.json over the one there (a warning if it cannot)."""
        config = {**self._config, "values": values}
        try:
            write_config(self.logdir, config)
        except OSError as exc:
            self._warn_once("values", "Beholder: cannot write %s (%s); Values stays %r",
                            self._config_path, exc, self._config["values"])
            return
        self._config_stat = None  # read back at the next look, as written
        if self.remote:
            with self._pending_lock:
                self._pending_config = config
            self._poll_config()
        else:
            self._apply_config(config)

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
        if self.remote:  # read on the poller thread: the training thread applies it
            with self._pending_lock:
                self._pending_config = config
            return
        self._apply_config(config)

    def _apply_config(self, config: dict[str, Any]) -> None:
        old = self._config
        self._config = config
        self._frame_interval = _frame_interval(config)
        if any(old[k] != config[k] for k in _HISTORY_KEYS):
            self._drain()
            self._renderer.clear_history()
            for gather in self._device_gathers.values():
                gather.window = None  # a variance window kept on the device starts afresh too
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
        now = time.monotonic()
        config = self._config
        if (
            self.remote
            or now - self._config_checked >= CONFIG_CHECK_SECONDS
            or (config["FPS"] > 0 and now - self._last_frame_time >= 1.0 / config["FPS"])
        ):
            # config.json is looked at when a frame may be due, and at least every
            # CONFIG_CHECK_SECONDS: a stat() in every call was half of what a call with no
            # frame due cost a training loop (its path is cold after a training step).
            self._config_checked = now
            config = self._poll_config()
        fps = config["FPS"]
        watch = self._watch
        if watch is not None and watch.hooked and (fps == 0 or not watch.needs_capture(config["values"])):
            watch.remove()  # no hook costs the training loop anything while it is not needed
        if fps == 0:
            return False
        interval = 1.0 / fps
        if now - self._last_frame_time < interval or now < self._write_retry_at:
            return False
        busy = self._worker is not None and self._worker.busy
        if (not busy and watch is not None and watch.needs_capture(config["values"])
                and watch.armed != config["values"]):
            # the coming step's hooks copy what is shown
            watch.arm(config["values"], config["show_all"], config["section_size"], _filter(config["filter"]))
            return False
        # Frames fall due on a fixed grid (every interval from the first), so that the rate is the
        # setting's whatever the step time; a trainer that fell behind by more than a frame starts afresh.
        due = self._last_frame_time + interval
        self._last_frame_time = due if now - due < interval else now
        if busy:
            self.skipped += 1
            if watch is not None:
                watch.remove()  # the frame is skipped: no hook waits for it
            return False
        job = self._gather(config, arrays, frame, variables, session, layout)
        if job.kind == "placeholder":  # say what update() was given instead, so the dashboard offers it
            job.offered = _offered(arrays, frame, variables if variables is not None else self.variables,
                                   session, self._watch)
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
                self._gather_named(job, self._watch.take(values, _filter(config["filter"])))
            return job
        if session is not None:
            self._gather_session(job, session)
            return job
        source = variables if variables is not None else self.variables
        if source is not None:
            self._gather_named(job, sources.named_variables(source))
        elif self._watch is not None and self._watch.needs_capture(values):  # sharded: copied inside forward
            self._gather_named(job, self._watch.take(values, _filter(config["filter"])))
        elif self._watch is not None:
            self._gather_named(job, self._watch.variables())
        return job

    def _frame_plan(
        self,
        labels: list[str],
        shapes: list[tuple[int, ...]],
        show_all: bool,
        layouts: list[str] | None = None,
        sizing: str = "fixed",
    ) -> FramePlan:
        """The cached FramePlan for these sections (a training run has few distinct ones).

        A section that cannot be laid out (too few values for its layout) gets
        an empty placeholder; ``plan.problems`` says why.
        """
        layouts = layouts or [layout_for(shape) for shape in shapes]
        key = (tuple(labels), tuple(shapes), tuple(layouts), show_all, sizing)
        plan = self._frame_plans.get(key)
        if plan is None:
            if len(self._frame_plans) >= 16:
                self._frame_plans.clear()
                self._buffers.clear()
                self._device_gathers.clear()
            width = frame_width(shapes, show_all, layouts)
            plans, problems = [], {}
            for i, (label, shape, layout) in enumerate(zip(labels, shapes, layouts)):
                try:
                    plans.append(self._plans.plan(shape, width, show_all, label, layout, sizing))
                except RenderError as exc:
                    plans.append(self._plans.plan((), width, show_all, label, MISSING))
                    problems[i] = _reason(label, exc)
            plan = self._frame_plans[key] = FramePlan(labels, plans)
            plan.problems = problems
        return plan

    def _buffer(self, plan: FramePlan) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, list[np.ndarray]]:
        """The reused flat buffers for a plan (shown values, statistics samples) and their section views.

        The worker is idle when they are filled.
        """
        found = self._buffers.get(id(plan))
        if found is None or found[0].shape[0] != plan.value_count:
            buffer = np.empty(plan.value_count, np.float32)
            samples = np.empty(plan.sample_count, np.float32)
            found = self._buffers[id(plan)] = (
                buffer, plan.section_views(buffer), samples, plan.sample_views(samples)
            )
        return found

    def _gather_named(self, job: _Job, named: list[sources.Named]) -> None:
        """Copy the shown values of (name, array, layout) sections into the flat buffer.

        A section whose array cannot be read (None, empty, not an array, a
        failed gather) becomes an empty section whose record says why; the
        others still render. With ``strict`` anything but None raises.
        """
        if not named:
            raise RenderError("there are no arrays to show (an empty list or dict was passed)")
        pattern = _filter(job.config["filter"])
        if pattern is not None:
            count = len(named)
            named = [named[i] for i in self._matching(pattern, named)]
            if not named:
                why = f"the section filter {pattern.pattern!r} matches none of the {count} sections"
                named = [("(filter)", Captured((), None, error=why), None)]
        memo = self._memo
        if memo is not None and memo.fits(named, job.config) and self._gather_again(job, memo, named):
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
        config = job.config
        plan = self._frame_plan(labels, shapes, config["show_all"], layouts, config["section_size"])
        for i, reason in plan.problems.items():
            missing[i] = reason
        buffer, views, samples, sample_views = self._buffer(plan)
        gather, gather_sample = sources.gather_into, sources.gather_sample
        batches: dict[Any, list[tuple[int, Any]]] = {}  # device -> sections gathered there in one batch
        sections = zip(adapters, prepared, plan.plans, views, labels, sample_views, plan.sample_steps)
        for i, (adapter, obj, section, out, label, sample, step) in enumerate(sections):
            if i in missing:
                out.fill(np.nan)
                continue
            device = batch_key(adapter, obj, section, plan.width)
            if device is not None:  # on an accelerator: issued now, copied to the host once per device
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
                missing[i] = self._section_problem(label, exc)
        job.kind, job.plan, job.buffer, job.missing = "sections", plan, buffer, missing
        job.samples = samples
        self._memo = BatchMemo.of(named, job.config, plan, batches, missing, shapes)
        job.pending = []
        for device, entries in batches.items():
            try:
                gather = self._device_gather(plan, device)
                if len(entries) == len(plan.plans) and not missing:  # the whole frame: variance there too
                    job.variance_done = _device_variance(gather, job.config)
                job.pending.append(gather.launch(entries))
            except Exception as exc:
                if self.strict:
                    raise
                self._batch_failed(job, [i for i, _ in entries], views, sample_views, exc)

    def _gather_again(self, job: _Job, memo: BatchMemo, named: list[sources.Named]) -> bool:
        """The frame of the same tensors as the last one, all on one device: checks and plan reused.

        Each tensor is still detached afresh (a parameter's ``.data`` may have
        been replaced) and its shape compared with the plan's; False (the
        full path) when one changed.
        """
        plan = memo.plan
        buffer, views, samples, sample_views = self._buffer(plan)
        job.kind, job.plan, job.buffer, job.missing, job.samples = "sections", plan, buffer, {}, samples
        gather = self._device_gather(plan, memo.device)
        job.variance_done = _device_variance(gather, job.config)
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
        except Exception as exc:
            if self.strict:
                raise
            self._memo, job.pending = None, []
            self._batch_failed(job, memo.sections, views, sample_views, exc)
        return True

    def _batch_failed(self, job: _Job, sections: Any, views: list, sample_views: list,
                      exc: Exception) -> None:
        """Show a device batch whose launch failed as empty sections that say why (the others render)."""
        job.variance_done = False
        for i in sections:
            views[i].fill(np.nan)
            sample_views[i].fill(np.nan)
            job.missing[i] = self._section_problem(job.plan.names[i], exc)

    def _device_gather(self, plan: FramePlan, device: Any) -> Any:
        """The reused device buffers (and CUDA graph) that gather a plan's sections on one device."""
        key = (id(plan), device)
        found = self._device_gathers.get(key)
        if found is None or found.plan is not plan:
            found = make_gather(plan, device)
            self._device_gathers[key] = found
        return found

    def _matching(self, pattern: SectionFilter, named: list[sources.Named]) -> list[int]:
        """Which sections a filter keeps, remembered per set of names (searched once, not every frame)."""
        key = (pattern.pattern, tuple(entry[0] for entry in named))
        found = self._filter_cache.get(key)
        if found is None:
            if len(self._filter_cache) >= 16:
                self._filter_cache.clear()
            found = self._filter_cache[key] = [i for i, entry in enumerate(named) if pattern.search(entry[0])]
        return found

    def _section_problem(self, name: str, exc: Exception) -> str:
        """Why a section is shown empty (logged once per section name unless it is just None)."""
        reason = _reason(name, exc)
        if not isinstance(exc, NoValues):
            self._warn_once(f"section:{name}", "Beholder: section %s is shown empty: %s", name, reason)
        return reason

    def _gather_session(self, job: _Job, session: Any) -> None:
        from beholder_plugin.trainer.sources import tf_tensors

        labels, shapes = tf_tensors.session_variable_shapes(session)
        plan = self._frame_plan(labels, shapes, job.config["show_all"], sizing=job.config["section_size"])
        compacts = tf_tensors.session_fetch(session, plan.plans)
        buffer, views, _samples, _ = self._buffer(plan)  # no statistics in TF1 (one session.run fetches)
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
            if job.pending:
                receive(job)
            done = {"variance_done": True} if job.variance_done else {}
            rendered = self._renderer.render(job.plan, job.buffer, config, job.missing, job.samples, **done)
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
        else:  # the selected input was not passed (or update() failed): say what to do
            detail = self.last_error if job.values == FAILED else None
            pixels, palette = placeholder_frame(job.values, job.offered, detail), palette_for("grayscale")
            header["values"] = "placeholder"
            header["offered"] = list(job.offered)
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
            **self._storage_header(),
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
            self._recorder.append(rgb, job.time, config["FPS"])  # plays at the rate frames were taken

    def _write(self, buffers: list, job: _Job, frame_id: int, config: dict[str, Any]) -> None:
        """Write the frame; on a full disk the history ring first gives up its oldest frames, down to none."""
        if self.remote:
            self._write_remote(buffers, job, frame_id, config)
            return
        while True:
            try:
                self._write_local(buffers, job, frame_id, config)
                break
            except OSError as exc:
                needed = sum(memoryview(b).nbytes for b in buffers)
                if exc.errno not in _DISK_FULL or not self._make_room(needed):
                    raise
        if self._unwritten_since is not None:  # the disk had room again
            self.last_error = (f"disk full from {_clock(self._unwritten_since)} to {_clock(time.time())}: "
                               f"{self._unwritten} frame{'s' if self._unwritten != 1 else ''} not written")
            self._unwritten_since, self._unwritten = None, 0

    def _make_room(self, needed: int) -> bool:
        """Delete the spare files and the oldest kept frames (at least needed bytes); False if none are left.

        The ring then keeps to what it still holds for DISK_FULL_HOLD_SECONDS,
        so the next frames expire old ones by budget instead of failing first.
        """
        freed = 0
        for spare in self._spares:
            freed += _size_quietly(os.path.join(self._history_dir, spare))
            self._files.remove(os.path.join(self._history_dir, spare))
        self._spares = []
        ring = self._history
        dropped = 0
        while ring.entries and freed < needed:
            entry = ring.entries.popleft()
            ring.bytes -= entry.size
            freed += entry.size
            dropped += 1
            self._files.remove(os.path.join(self._history_dir, entry.name))
        # what is left, less room for the next frame in flight, so that it expires an old one instead
        self._disk_budget = (max(0, ring.bytes - needed), time.monotonic() + DISK_FULL_HOLD_SECONDS)
        if dropped:
            self._warn_once("disk-full-ring", "Beholder: the disk under %s is full; the history ring gives "
                            "up its oldest frames to keep frame.bin moving", self.directory)
        return freed > 0

    def _write_local(self, buffers: list, job: _Job, frame_id: int, config: dict[str, Any]) -> None:
        """Write the frame: into the history ring and linked as frame.bin, or straight to frame.bin."""
        ring = self._history
        ring.max_bytes = config["history_mb"] * MB
        if self._disk_budget is not None:
            if time.monotonic() < self._disk_budget[1]:
                ring.max_bytes = min(ring.max_bytes, self._disk_budget[0])
            else:
                self._disk_budget = None  # try the configured budget again
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
        """Note a failed write (read-only logdir, full disk): warn once, say so, pause rendering, retry later.

        ``last_error`` says since when frames are not written; on a full disk
        it is also written into frame.bin's header, in place, so the dashboard
        shows it while the picture stays the last one written.
        """
        self.write_errors += 1
        if self._unwritten_since is None:
            self._unwritten_since = time.time()
        self._unwritten += 1
        full = getattr(exc, "errno", None) in _DISK_FULL
        reason = "disk full" if full else f"cannot write ({getattr(exc, 'strerror', None) or exc})"
        self.last_error = f"{reason}: frames not written since {_clock(self._unwritten_since)}"
        if full and not self.remote:
            self._mark_frame_file()
        self._write_retry_at = time.monotonic() + WRITE_RETRY_SECONDS
        self._warn_once(
            "write",
            "Beholder: cannot write frames to %s (%s); training goes on, the previous frame stays "
            "readable, and Beholder tries again every %g s",
            self.directory,
            exc,
            WRITE_RETRY_SECONDS,
        )

    def _mark_frame_file(self) -> None:
        """Rewrite frame.bin in place with last_error in its header (skipped if that needs more space)."""
        changes = {"frame_id": self.frames_written + 1, "last_error": self.last_error,
                   "failures": self.failures, "skipped": self.skipped}
        try:
            data = self._files.read(self._frame_path, MAX_MARKED_FRAME_BYTES)
            if data is None:
                return
            buffers = with_header(data, changes)
        except (OSError, ValueError):
            return
        try:
            marked = self._files.rewrite_in_place(self._frame_path, buffers)
        except OSError:
            return
        if marked:
            self.frames_written += 1  # a new frame id, so that viewers fetch the new header

    # ------------------------------------------------------------ remote logdirs (docs/remote.md)

    def _capped(self, config: dict[str, Any]) -> dict[str, Any]:
        """The config update() uses: on a remote logdir, FPS and the history ring capped."""
        if not self.remote:
            return config
        out = dict(config)
        out["FPS"] = min(config["FPS"], self.max_fps)
        out["history_mb"] = min(config["history_mb"], REMOTE_HISTORY_MB)
        out["history_seconds"] = min(config["history_seconds"], REMOTE_HISTORY_SECONDS)
        return out

    def _take_remote_config(self) -> dict[str, Any]:
        """Apply a config the poller thread read (no network here); start the poller if needed."""
        if self._pending_config is not None:
            with self._pending_lock:  # taken and cleared at once: a newer one is never lost
                pending, self._pending_config = self._pending_config, None
            self._apply_config(pending)
            self._effective = self._capped(self._config)
        if self._poller_pid != os.getpid():  # first call, or a forked child without the thread
            self._start_poller()
        return self._effective

    def _start_poller(self) -> None:
        """Start the thread that polls config.json's metadata every config_poll_seconds."""
        self._poller_pid = os.getpid()
        self._poll_stop = threading.Event()
        thread = threading.Thread(
            target=_poll_loop,
            args=(weakref.ref(self), self._poll_stop, self._config_poll_seconds),
            name="beholder-config",
            daemon=True,
        )
        thread.start()

    def _poll_remote_config(self) -> None:
        """One look at config.json's metadata: read it when it changed, create it when it is missing."""
        try:
            info = self._files.info(self._config_path)
        except OSError as exc:
            self._warn_once(
                "poll",
                "Beholder: cannot reach %s (%s); keeping the settings in force and trying again every %g s",
                self._config_path,
                exc,
                self._config_poll_seconds,
            )
            return
        if info is None:
            self._create_config()
            return
        key = identity_of_info(info)
        if key != self._config_stat:
            self._config_stat = key
            self._reload_config()

    def _adopt_history(self) -> None:
        """Take over the kept frames of an earlier writer (an unreachable store: warn, or raise if strict)."""
        try:
            self._history.adopt(self._history_dir, self._files)
        except OSError as exc:
            if self.strict:
                raise
            self._warn_once("adopt", "Beholder: cannot list %s (%s)", self._history_dir, exc)

    def _write_remote(self, buffers: list, job: _Job, frame_id: int, config: dict[str, Any]) -> None:
        """Write a frame remotely: frame.bin as its own object, then a server-side copy into history.

        frame.bin first, because it is what viewers wait for. A failed copy
        into the history ring is only logged (the frame itself is written).
        """
        ring = self._history
        ring.max_bytes = config["history_mb"] * MB
        ring.max_seconds = config["history_seconds"]
        size = self._files.write_atomic(self._frame_path, buffers)
        if ring.enabled:
            name = history_name(job.time, self._writer_id, frame_id, job.step)
            try:
                self._files.copy(self._frame_path, posixpath.join(self._history_dir, name))
                ring.add(HistoryEntry(name, job.time, self._writer_id, frame_id, job.step, size))
            except OSError as exc:
                self._warn_once("history", "Beholder: cannot keep frames in %s (%s)", self._history_dir, exc)
        for old in ring.expired(job.time):
            self._files.remove(posixpath.join(self._history_dir, old))

    def _storage_header(self) -> dict[str, Any]:
        """Frame header fields for the dashboard: where frames go and the remote frame-rate cap."""
        return {"storage": self.storage, "max_fps": self.max_fps}

    def _make_recorder(self) -> Recorder:
        """The recorder: into the run's folder, or (remote runs) a local staging folder, then uploaded."""
        if not self.remote:
            return Recorder(self.directory)
        staging = os.path.join(tempfile.gettempdir(), f"beholder-recordings-{self._writer_id}")
        return Recorder(staging, on_finished=self._upload_recording)

    def _upload_recording(self, local_path: str) -> None:
        """Upload a finished recording to the run on a background thread (never the training thread)."""
        target = posixpath.join(self.directory, os.path.basename(local_path))
        thread = threading.Thread(
            target=self._upload, args=(local_path, target), name="beholder-upload", daemon=True
        )
        self._uploads = [t for t in self._uploads if t.is_alive()] + [thread]
        thread.start()

    def _upload(self, local_path: str, target: str) -> None:
        """Copy one recording to the store and delete the local copy; keep it (and say where) on failure."""
        try:
            self._files.upload(local_path, target)
        except OSError as exc:
            logger.warning(
                "Beholder: could not upload the recording to %s (%s); it is kept at %s",
                target, exc, local_path,
            )
            return
        if os.path.isdir(local_path):
            shutil.rmtree(local_path, ignore_errors=True)
        else:
            _remove_quietly(local_path)
        logger.info("Beholder: recording uploaded to %s", target)

    def _finish_remote(self, timeout: float | None) -> None:
        """Stop the config poller and wait for recordings still uploading (bounded at interpreter exit)."""
        if not self.remote:
            return
        self._poll_stop.set()
        deadline = None if timeout is None else time.monotonic() + max(timeout, UPLOAD_EXIT_SECONDS)
        for thread in self._uploads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                logger.warning("Beholder: a recording is still uploading to %s", self.directory)
        try:
            os.rmdir(self._recorder.directory)  # the staging folder, when everything was uploaded
        except OSError:
            pass


@functools.lru_cache(maxsize=64)
def _filter(pattern: str) -> SectionFilter | None:
    """The parsed section filter (None: show every section); settings.py checked it parses."""
    return compile_filter(pattern)


def _check_directory(directory: str, logdir: str) -> None:
    """Raise NotADirectoryError when something on the way to directory exists and is not a directory."""
    path = os.path.abspath(directory)
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent
    if not os.path.isdir(path):
        kind = "a file" if os.path.isfile(path) else "not a directory"
        raise NotADirectoryError(
            f"Beholder cannot write under the logdir {logdir!r}: {path!r} is {kind}. Pass a directory "
            "(it is created if missing), the one TensorBoard is started with as --logdir"
        )


def _clock(when: float) -> str:
    """A time of day as the dashboard's status line shows it (local time, to the second)."""
    return time.strftime("%H:%M:%S", time.localtime(when))


def _size_quietly(path: str) -> int:
    """A file's size, 0 if it cannot be read."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _device_variance(gather: Any, config: dict[str, Any]) -> bool:
    """Whether a device batch holding a whole frame computes its variance window there too."""
    use = getattr(gather, "use_variance", None)
    return use is not None and use(config)


def _frame_interval(config: dict[str, Any]) -> float:
    """Seconds between frames at the config's FPS (inf when paused)."""
    return 1.0 / config["FPS"] if config["FPS"] > 0 else float("inf")


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


def _positive(value: float, name: str) -> float:
    """value as a float; ValueError unless it is a finite number above 0."""
    number = float(value)
    if not 0 < number < float("inf"):
        raise ValueError(f"{name} must be a number of seconds or frames per second above 0, not {value!r}")
    return number


def _remove_quietly(path: str) -> None:
    """Delete a local file; one that is already gone is fine."""
    try:
        os.unlink(path)
    except OSError:
        pass


def _poll_loop(ref: weakref.ref, stop: threading.Event, interval: float) -> None:
    """The remote config poller: one metadata request per interval until stopped or the Beholder is gone."""
    while not stop.wait(interval):
        beholder = ref()
        if beholder is None:
            return
        try:
            beholder._poll_remote_config()
        except Exception:  # pragma: no cover - never let the poller die silently
            logger.exception("Beholder: polling %s failed", beholder._config_path)
        del beholder


_EXIT_HOOK: list[bool] = []


def _register_exit_hook() -> None:
    """Register _close_all again after fsspec's backends were imported, so it runs before their exit hooks."""
    if not _EXIT_HOOK:
        _EXIT_HOOK.append(True)
        atexit.register(_close_all)


@atexit.register
def _close_all() -> None:
    """Finish every frame and recording still open when the interpreter exits (bounded wait)."""
    for beholder in list(_LIVE):
        try:
            beholder.close(timeout=EXIT_TIMEOUT_SECONDS)
        except Exception:  # pragma: no cover - best effort at exit
            logger.exception("Beholder: could not finish at exit")


def _offered(arrays: Any, frame: Any, variables: Any, session: Any, watch: Any) -> tuple[str, ...]:
    """The Values choices that update() was given something for (a placeholder offers them)."""
    offered = []
    if variables is not None or session is not None or watch is not None:
        offered.append("trainable_variables")
    if arrays is not None:
        offered.append("arrays")
    if frame is not None:
        offered.append("frames")
    return tuple(offered)
