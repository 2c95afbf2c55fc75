"""The trainer side: Beholder.update() gathers what the dashboard asks for and hands it to a worker.

On the training thread, update() checks whether a frame is due (a clock
read; config.json's ``stat()`` only when one may be due, and at least every
quarter second), and if so the gatherer (gather.py) copies the values the
frame will show (sliced on their device) into a reused flat buffer. A
background worker does the rest (job.py): variance, scaling, expansion,
encoding, then the run store (run_store.py) writes the frame, its history
and any recording. If the worker is still busy when the next frame is due,
that frame is skipped and counted in ``skipped``. The settings come from
run_settings.py's readers, which report changes to ``_settings_changed``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any

from beholder_plugin.protocol.files import files_for
from beholder_plugin.protocol.remote_files import normalize_location
from beholder_plugin.trainer import sources
from beholder_plugin.trainer.deadlines import (
    REMOTE_CLOSE_SECONDS,
    REMOTE_OPEN_SECONDS,
    Background,
    run_within,
)
from beholder_plugin.trainer.gather import Gatherer, Inputs, section_filter
from beholder_plugin.trainer.job import FAILED, FrameJobs, Job, JobKind, ending_failed
from beholder_plugin.trainer.ranks import process_rank, run_for_rank
from beholder_plugin.trainer.run_settings import RunSettings, positive, reader_for
from beholder_plugin.trainer.run_status import RunStatus
from beholder_plugin.trainer.run_store import store_for
from beholder_plugin.trainer.timeline import NORM_JUMP, Timeline
from beholder_plugin.trainer.views.render import Renderer
from beholder_plugin.trainer.watch import Watch, WatchHandle
from beholder_plugin.trainer.worker import Worker

logger = logging.getLogger("beholder")

_LIVE: weakref.WeakSet = weakref.WeakSet()
# At interpreter exit, wait at most this long for a busy worker before giving up on its frame.
EXIT_TIMEOUT_SECONDS = 5.0
# With no frame due, update() looks at config.json at most this often (a paused run
# notices the dashboard's new frame rate within this time).
CONFIG_CHECK_SECONDS = 0.25
# Remote logdirs (any fsspec URL): frames per second at most, by default (a constructor argument),
REMOTE_MAX_FPS = 2.0
# and how often config.json's metadata is polled (on a background thread, never in update()).
REMOTE_CONFIG_POLL_SECONDS = 2.0


def _counted(name: str, doc: str) -> property:
    """A Beholder attribute that reads (and sets) the run status's count of that name."""
    return property(lambda self: getattr(self.status, name), lambda self, v: setattr(self.status, name, v),
                    doc=doc)


def _normal_tensors() -> Any:
    """Where the tensors Beholder keeps (buffers, the per-step check's state) are made: outside
    torch.inference_mode() even when update() is called inside it, where they would be inference
    tensors, which no later step nor the worker thread may write."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.is_inference_mode_enabled():
        return contextlib.nullcontext()
    return torch.inference_mode(False)


class Beholder:
    """Writes frames of a run's arrays, variables or images for the TensorBoard Beholder tab.

    Args:
      logdir: the run directory; files go to ``<logdir>/plugins/beholder/``,
        which is created (with a config.json of default settings, unless one
        exists) right away, so the run shows in TensorBoard before its first frame.
      variables: what "trainable variables" means for this run: a Keras model
        or ``tf.Module`` (anything with ``trainable_variables``), a torch module
        (``named_parameters()``), a Flax NNX module, or a list, dict or pytree
        of arrays (JAX: the parameters). Can also be given per call to
        ``update()``. Anything else raises TypeError here.
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
      mode: the Mode the run starts on, ``"current"`` (the values
        themselves) or ``"variance"`` (over the last frames: the original's
        default), written as ``values`` is; None keeps the run's setting.
      on_anomaly: at the timeline's anomalies (a section's first NaN or Inf,
        a norm jump; docs/integration.md), besides a log line: ``"raise"``
        (AnomalyError from update()) or a function called with each record.
      norm_jump: a norm this many times its recent median is an anomaly (more for norms that spread
        widely; see docs/integration.md).
      clock: monotonic seconds, for when frames fall due (a test's own clock;
        ``frame_due_now()`` makes the next update() take a frame without one).

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
        mode: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_anomaly: Any = None,
        norm_jump: float = NORM_JUMP,
    ):
        problem = None if variables is None else sources.variables_problem(variables)
        if problem is not None:  # (a mistake of the script's: said before training starts)
            raise TypeError(problem)
        self.rank = process_rank()
        logdir = os.fsdecode(logdir)  # (bytes too; "~/runs/x" is the user's home, as TensorBoard reads it)
        if logdir.startswith("~"):
            logdir = os.path.expanduser(logdir)
        run = run_for_rank(logdir, ranks, self.rank)
        self.active = run is not None  # False on ranks other than 0 (ranks="zero"): update() does nothing
        self.logdir = normalize_location(run if run is not None else logdir)
        files = files_for(self.logdir)  # ImportError naming the package for a missing backend
        self.remote = bool(files.remote)
        poll_seconds = positive(config_poll_seconds, "config_poll_seconds")
        self.variables = variables
        self.strict = strict
        self.step = 0  # update() calls so far: the step a frame is stamped with (settable, e.g. on resume)
        self._clock = clock
        self.status = RunStatus()  # the counts and one-time warnings (run_status.py)
        max_fps = positive(max_remote_fps, "max_remote_fps") if self.remote else None
        self.store = store_for(self.logdir, files, self.status, strict, clock, max_fps)  # run_store.py
        self.directory = self.store.directory
        self.storage = self.store.storage  # "local", or the remote store's URL scheme
        self.max_fps = self.store.max_fps  # a remote logdir's frame-rate cap (None for a local one)
        settings = RunSettings.starting(values, mode)  # config.json's now (new, or over the one there)
        chosen = {key: value for key, value in (("shown", values), ("mode", mode)) if value is not None}
        self._reader = reader_for(self.logdir, files, settings, self._settings_changed, self.status.warn_once,
                                  self.store.writable, self.store.write_failed, poll_seconds, max_fps)
        self.timeline = Timeline(self.logdir, files, on_anomaly, norm_jump)  # the whole run (timeline.py)
        self.gatherer = Gatherer(strict, self.status.warn_once, exact_pass=self.timeline.gather)  # gather.py
        self.jobs = FrameJobs(Renderer(), self.store, self.status, self.timeline)  # the worker (job.py)
        self._settings_checked = float("-inf")  # when update() last looked at config.json
        self._last_frame_time = float("-inf")
        self._frame_interval = settings.interval  # 1 / FPS of the settings in force
        self._watch: Watch | None = None
        self._failure_shown_at = float("-inf")  # when a frame last said that update() failed
        self._framed_step = -1  # the step of the last frame handed over (close() adds the final weights')
        self.worker = Worker(self.jobs.run) if background and self.active else None  # None: in update()
        self._opening: Background | None = None  # a remote run still opening (update() takes no frame)
        self._closed = False
        if not self.active:
            return
        if self.remote:
            _register_exit_hook()
            opening = Background(lambda: self._open(chosen), "beholder-open")
            if not opening.wait(REMOTE_OPEN_SECONDS):  # (a store that hangs: training goes on meanwhile)
                self._opening = opening
                logger.warning("Beholder: %s did not answer within %g s; training goes on, and frames "
                               "start once it does", self.logdir, REMOTE_OPEN_SECONDS)
            elif opening.error is not None:
                raise opening.error
        else:
            self._open(chosen)
        _LIVE.add(self)

    def _open(self, chosen: dict[str, str]) -> None:
        """Open the run: adopt the kept frames and pins of an earlier writer, create or read config.json
        (a remote run still opening when close() came: no further)."""
        self.store.open()
        self.timeline.adopt(self.store.history)  # the pins of an earlier writer's anomaly
        if self._closed:
            return
        self._reader.start()  # creates the directory and config.json, or reads the one there
        if self._closed:  # (close() came meanwhile: its poller stops too)
            self._reader.close()
            return
        in_force = self._reader.settings
        changes = {key: value for key, value in chosen.items() if getattr(in_force, key) != value}
        if changes:
            self._reader.choose(**changes)

    # ------------------------------------------------------------ public

    @property
    def config(self) -> dict[str, Any]:
        """The settings in force (the last good config.json)."""
        return dict(self._reader.settings.config)

    @property
    def settings(self) -> RunSettings:
        """The settings in force, typed (the last good config.json)."""
        return self._reader.settings

    @property
    def watched(self) -> Watch | None:
        """The model watch() is showing (its hooks and captured values), or None."""
        return self._watch

    failures = _counted("failures", "update() and worker failures counted (the first one is logged).")
    skipped = _counted("skipped", "Frames skipped because the worker was still busy.")
    write_errors = _counted("write_errors", "Frame writes that failed (read-only logdir, full disk).")
    last_error = _counted("last_error", "The last error, as the frame headers say it.")
    frames_written = _counted("frames_written", "Frames written so far (the last frame's id; settable).")

    def frame_due_now(self) -> None:
        """Make the next update() read the settings and take a frame (unless paused), whatever the FPS.

        For tests and integrations that need a frame at a given step (the rate goes on from it).
        """
        self._last_frame_time = float("-inf")
        self._settings_checked = float("-inf")

    def check_settings(self, now: float | None = None) -> RunSettings:
        """Read the settings now (config.json, or what the remote poller read), as update() does often."""
        self._settings_checked = self._clock() if now is None else now
        return self._reader.poll()

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
        self.step += 1
        if self.timeline.hot:  # the per-step device check; anomalies handed to on_anomaly (may raise)
            with _normal_tensors():
                self.timeline.on_step(self.step)
        now = self._clock()
        if (  # the common case, answered here: nothing due, no config to look at, no error to report
            now - self._last_frame_time < self._frame_interval
            and now - self._settings_checked < CONFIG_CHECK_SECONDS
            and (self.worker is None or self.worker.error is None)
            and "tensorflow" not in sys.modules  # else _update checks for tf.function tracing
        ):
            return False
        try:
            return self._update(Inputs(self.step, arrays, frame, variables if variables is not None
                                       else self.variables, session, layout, self._watch))
        except Exception as exc:
            if self.strict:
                raise
            if self.status.failed(exc):  # (a frame's failure in FrameJobs.run, without a worker, is
                self._show_failure()  # counted and shown there already)
            return False

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the frame handed to the worker is written; False if timeout s passed first (None: no
        limit; on a remote logdir, REMOTE_CLOSE_SECONDS, as a store that stopped answering never writes)."""
        if timeout is None and self.remote:
            timeout = REMOTE_CLOSE_SECONDS
        done = True if self.worker is None else self.worker.drain(timeout)
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
        import io

        image, out = self.snapshot(), io.BytesIO()
        return None if image is None else image.save(out, format="PNG") or out.getvalue()

    def watch(
        self,
        model: Any,
        activations: bool | list[str] = True,
        gradients: bool = True,
        probe: Any = None,
        grad_scaler: Any = None,
    ) -> WatchHandle:
        """Show a model's weights, gradients or activations, whichever the dashboard picks, at each update().

        ``model`` is a torch ``nn.Module`` or a Keras model. For torch,
        gradients are read from ``.grad`` when a frame falls due; forward
        hooks on the leaf modules (or on the module paths listed in
        ``activations``), and gradient hooks when ``.grad`` was already
        cleared, copy the shown values on the step after a frame falls due.
        For Keras, activations come from running the model on ``probe`` (a
        fixed batch) when a frame is due. Returns a handle whose
        ``remove()`` (or ``with``) removes the hooks; so does ``unwatch()``.

        ``grad_scaler``: the ``torch.amp.GradScaler`` of an fp16 AMP loop.
        Gradients caught by hooks are unscaled as its ``unscale_()`` does,
        and non-finite gradients (its overflows, steps it skips) are
        recorded in the timeline but not reported as anomalies. The Hugging
        Face and Lightning callbacks pass theirs.
        """
        old = self._watch
        if old is not None and old.model is not model and old.model is not getattr(model, "_orig_mod", None):
            logger.warning("Beholder: watch() replaces the model watched so far: one model is watched at a "
                           "time. To show two (a GAN's generator and discriminator), watch one module "
                           "holding both, e.g. torch.nn.ModuleDict({'G': G, 'D': D})")
        self.unwatch()
        if not self.active:
            return WatchHandle(lambda: None)
        watch = self._watch = Watch(model, activations, gradients, probe, self.strict)
        _unhook_other(watch.model, self.logdir)
        with contextlib.suppress(TypeError):  # (a model that takes no weak reference is not tracked)
            _WATCHING.setdefault(watch.model, []).append((weakref.ref(watch), self.logdir, weakref.ref(self)))
        watch.grad_scaler = grad_scaler

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
        """Write the frame in progress, stop the worker, finish any recording, let a gather's compile end.

        On a remote logdir the frame's and the timeline's last writes are waited for at most ``timeout``
        s (None: REMOTE_CLOSE_SECONDS), so that a store that stopped answering cannot hold the end of
        training; a recording's upload, at most UPLOAD_EXIT_SECONDS longer (run_store.py).

        After ``watch(model)``, when the dashboard shows weights and the last frame is of an earlier
        step, one more frame shows the weights training ended with, stamped with the last step. In
        variance mode that frame is taken even at the last frame's step, drawn as current values (its
        header says ``"ending": true``): the variance of a finished run's last frames is near black.
        """
        if timeout is None and self.remote:
            timeout = REMOTE_CLOSE_SECONDS
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._final_weights(deadline)
        finally:
            self.unwatch()
        self._closed = True
        stopped = False
        try:
            stopped = self.worker is None or self.worker.stop(_left(deadline))
            if not stopped and self.remote:
                logger.warning("Beholder: the last frame was not written to %s within %g s",
                               self.logdir, timeout)
            self._report_worker_error()
        finally:
            if stopped and self._opening is None:  # (its last frame is written: say the training ended)
                self._closing_write(self.store.mark_ended, deadline)
            self.gatherer.wait_compiled(60.0 if timeout is None else timeout)  # (in XLA at exit: abort)
            self._reader.close()
            if self._opening is None and not self._closing_write(self.timeline.close, deadline):
                logger.warning("Beholder: %s did not answer within %g s; the timeline's last records may be "
                               "missing", self.logdir, timeout)
            self.store.close(timeout, worker_idle=self.worker is None or not self.worker.busy)
            _LIVE.discard(self)

    def _final_weights(self, deadline: float | None) -> None:
        """Hand over a frame of the watched model's weights at the last step, when the dashboard shows
        weights and the last frame is older: a loop faster than the frame rate otherwise ends on a frame
        of an earlier step, which the dashboard calls the training's last (never raises: counted, logged).

        With a deadline (interpreter exit, a remote logdir) only when the worker is idle now: the frame in
        progress, the end mark and the timeline's last records come first within it."""
        if (self._watch is None or self._closed or not self.active or self._opening is not None
                or self.step < 1):
            return
        try:
            settings = self.check_settings()
            if settings.shown != "trainable_variables" or settings.fps == 0:
                return
            ending = settings.mode == "variance"
            if self.step <= self._framed_step and (not ending or deadline is not None):
                return  # (a second frame of the last step: not worth the end mark's time at exit)
            if self.worker is not None and not self.worker.drain(None if deadline is None else 0.0):
                return  # (the frame in progress is still being written: it must not be skipped for this one)
            if self.worker is not None and self.worker.error is not None:
                return  # (close() reports it, raising under strict)
            self.frame_due_now()
            self._update(Inputs(self.step, None, None, self.variables, None, None, self._watch), ending)
        except Exception as exc:
            if ending:
                ending_failed(exc)
            elif self.status.failed(exc):
                self._show_failure()

    def _closing_write(self, call: Any, deadline: float | None) -> bool:
        """Run one of close()'s writes: at once on a local logdir; on a remote one until the deadline at
        most (False: it had not ended then, and goes on on its own thread)."""
        if not self.remote:
            call()
            return True
        return run_within(_left(deadline), call, "beholder-close")

    def __enter__(self) -> Beholder:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ------------------------------------------------------------ errors

    def _show_failure(self) -> None:
        """Write a frame saying that update() failed, so the dashboard shows it at once (at most 1/s).

        A trainer whose every update() fails writes no frame of its own; this
        one keeps the run's status fresh, and its header carries the failure
        count and the last error. Never raises.
        """
        now = self._clock()
        if now - self._failure_shown_at < 1.0 or (self.worker is not None and self.worker.busy):
            return
        self._failure_shown_at = now
        settings = self._reader.settings.replace(is_recording=False)
        job = Job(kind=JobKind.PLACEHOLDER, settings=settings, shown=FAILED, step=self.step, time=time.time())
        try:
            if self.worker is None:
                self.jobs.run(job)
            else:
                self.worker.submit(job)
        except Exception:  # the failure is already counted and logged
            logger.debug("Beholder: could not write the failure frame", exc_info=True)

    def _opened(self) -> bool:
        """Whether the remote run that was still opening when the constructor returned has opened (what
        its opening raised, update() raises or counts)."""
        opening = self._opening
        if opening is None or not opening.wait(0):
            return opening is None
        self._opening = None
        if opening.error is not None:
            raise opening.error
        return True

    def _report_worker_error(self) -> None:
        """Raise (strict) or log and count an error the worker met since the last call."""
        if self.worker is None or self.worker.error is None:
            return
        error = self.worker.take_error()
        if error is not None and self.strict:
            raise error
        if error is not None:
            self.status.failed(error)  # (no-op: FrameJobs.run counted it)

    # ------------------------------------------------------------ settings

    def _settings_changed(self, old: RunSettings, new: RunSettings) -> None:
        """What a change of settings restarts: the frame rate, the variance window, the recording."""
        self._frame_interval = new.interval
        restart, stop = new.restarts_window(old), old.is_recording and not new.is_recording
        if (restart or stop) and self.worker is not None:
            self.worker.drain()  # let it finish before changing state it uses (rare: a few changes only)
        if restart:
            self.jobs.renderer.clear_history()
            self.gatherer.restart_windows()  # a variance window kept on the device starts afresh too
        if stop:
            self.store.close_recording()

    # ------------------------------------------------------------ the training thread's part

    def _update(self, inputs: Inputs, ending: bool = False) -> bool:
        """Take a frame if one is due: read the settings, arm the watch's hooks, gather, hand over.

        ``ending``: close()'s frame of the weights training ended with, drawn as current values and
        never recorded."""
        sources.refuse_inside_tf_function()
        if self._opening is not None and not self._opened():
            return False
        if _cuda_graph_capturing():
            # (update() inside the caller's torch.cuda.graph: a gather there would upload, sync or be
            # baked into the graph, and a replay runs no Python to take a frame anyway)
            self.status.warn_once("capture", "Beholder: update() was called while a CUDA graph was being "
                                  "captured; no frame is taken inside a capture: call update() outside "
                                  "the captured region (after graph.replay()) to see the model")
            return False
        if self.worker is not None and self.worker.error is not None:
            self._report_worker_error()  # (the worker wrote the frame saying so: FrameJobs.run)
        now = self._clock()
        settings = self._reader.settings
        if (
            self.remote
            or now - self._settings_checked >= CONFIG_CHECK_SECONDS
            or (settings.fps > 0 and now - self._last_frame_time >= 1.0 / settings.fps)
        ):
            # (not a stat() at every call: that was half of what a call with no frame due cost)
            settings = self.check_settings(now)
        fps, shown, watch = settings.fps, settings.shown, self._watch
        if watch is not None and watch.hooked and (fps == 0 or not watch.needs_capture(shown)):
            watch.remove()  # no hook costs the training loop anything while it is not needed
        if fps == 0:
            return False
        interval = 1.0 / fps
        if now - self._last_frame_time < interval or not self.store.writable(now):
            return False
        busy = self.worker is not None and self.worker.busy
        if (not busy and watch is not None and watch.needs_capture(shown) and watch.armed != shown
                and not watch.reads_now(shown)):
            # the coming step's hooks copy what is shown
            watch.arm(shown, settings.show_all, settings.section_size, section_filter(settings.filter))
            return False
        # Frames fall due on a fixed grid (every interval from the first), so that the rate is the
        # setting's whatever the step time; a trainer that fell behind by more than a frame starts afresh.
        due = self._last_frame_time + interval
        self._last_frame_time = due if now - due < interval else now
        if busy:
            self.status.skipped += 1
            if watch is not None:
                watch.remove()  # the frame is skipped: no hook waits for it
            return False
        again = ending and inputs.step <= self._framed_step
        self._framed_step = inputs.step  # (a failed frame too: close() takes no second one of its step)
        if ending:
            settings = settings.replace(mode="current", is_recording=False)
        with _normal_tensors():
            job = self.gatherer.gather(settings, inputs)
        job.ending, job.again = ending, again
        if ending and (job.kind is not JobKind.SECTIONS or job.missing):
            return False  # (the weights could not all be read, freed by a teardown say: the last frame stays)
        if job.waiting is not None:  # nothing to hand over this time (a device gather compiling)
            return self.status.note_once("waiting", "Beholder: %s", job.waiting)
        if self.worker is None:
            self.jobs.run(job)
        else:
            self.worker.submit(job)
        return True


# model -> [(weak references of a Watch of it, the logdir, the Beholder that made it)]: a model is watched
# by one Beholder per run at a time (weak: a strong Watch would hold its model, the key, for good)
_WATCHING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _unhook_other(model: Any, logdir: str) -> None:
    """Remove the hooks another Beholder's watch() left on this model, with a warning, where that one was
    dropped or writes this same run: a notebook cell run again makes a new Beholder, and the last one kept
    capturing. An open Beholder of another run keeps its watch (two runs may show one model)."""
    try:
        found = _WATCHING.get(model, [])
    except TypeError:
        return
    kept = []
    for entry in found:
        watch, owner = entry[0](), entry[2]()
        if watch is None or watch.closed:
            continue
        if owner is not None and not owner._closed and entry[1] != logdir:
            kept.append(entry)
            continue
        if owner is not None and owner._watch is watch:
            owner.unwatch()  # (still open: it shows no model now)
        else:
            watch.close()
        logger.warning("Beholder: %s was watched by another Beholder (on %s), whose hooks are removed: a "
                       "model is watched by one Beholder per run at a time. Close a Beholder "
                       "(beholder.close()) before a cell that makes a new one runs again",
                       type(model).__name__, entry[1])
    found[:] = kept


def _cuda_graph_capturing() -> bool:
    """Whether torch is capturing a CUDA graph on the current stream (False without torch or CUDA)."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    return bool(cuda is not None and cuda.is_initialized() and cuda.is_current_stream_capturing())


def _left(deadline: float | None) -> float | None:
    """The seconds left until a time.monotonic() deadline (None: no deadline)."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


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
