"""BeholderCallback: stream a Keras 3 model's trainable variables to the Beholder tab during fit().

This module imports Keras when it is imported; ``beholder_plugin`` loads it
only when ``BeholderCallback`` is first asked for.

How the callback shares the model with the training thread
----------------------------------------------------------

Keras 3's ``CallbackList`` (``keras/src/callbacks/callback_list.py``) runs
the ``on_train_batch_end`` hooks of a fit on a ``ThreadPoolExecutor`` when
the backend declares ``IS_THREAD_SAFE`` (JAX, torch; not TensorFlow) and
every callback either leaves the batch-end hooks alone or exposes
``async_safe = True``. The training thread then goes on to the next batch at
once. So a hook of batch N may run while step N + 1 changes the weights:
torch's optimizers add to the parameters in place (``torch._foreach_add_``,
which a concurrent ``index_select`` can see half done), and JAX donates the
state arrays of step N to step N + 1 (reading them then fails with "Buffer has
been deleted or donated"), while ``Callback.model`` on JAX writes that state
back into the model (``jax_state_sync``), which must not race the trainer.

So the variables are read only between steps, through a small gate:

- ``on_train_batch_begin`` and ``on_test_begin`` always run on the training
  thread, before the weights change again. They close the gate (record the
  batch that begins) and wait for a read in progress to finish.
- A batch-end hook reads only if no later batch has begun yet, and marks
  itself reading under the same lock, so the training thread waits for it.
  Otherwise it is late: it reads nothing, and the training thread makes the
  update itself at the next batch begin (or epoch end), between steps.

A hook on the training thread (TensorFlow, or a Keras that runs every hook
synchronously) is between steps by construction and reads at once.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

import keras

from beholder_plugin.protocol.layout import RenderError
from beholder_plugin.trainer.beholder import Beholder


class _ModelVariables:
    """What the callback shows as trainable variables: the model's, looked up only when a frame is due.

    ``Beholder.update`` evaluates ``trainable_variables`` only when it gathers
    a frame, so the model is not touched on batches without one (on JAX,
    ``Callback.model`` syncs the trainer's state into the model).
    """

    def __init__(self, callback: BeholderCallback) -> None:
        self._callback = callback

    @property
    def keras_model(self) -> Any:
        """The model, so that sections get the layouts of their layers."""
        return self._callback.model

    @property
    def trainable_variables(self) -> list:
        model = self._callback.model
        if model is None:
            raise RenderError(
                "BeholderCallback has no model: pass it to model.fit(callbacks=[...]) "
                "or call set_model() first"
            )
        return model.trainable_variables


class BeholderCallback(keras.callbacks.Callback):
    """Callback that shows the model's trainable variables in TensorBoard's Beholder tab.

    After every training batch it offers the model to ``Beholder.update()``,
    which gathers a frame only when one is due by the dashboard's FPS setting
    (other batches cost a clock read); Beholder's own
    background thread renders and writes it.

    The callback is ``async_safe``. Where Keras runs such batch hooks on a
    worker thread (the JAX and torch backends), ``on_train_batch_end`` runs on
    a thread of Keras's pool and the training thread does not wait for it;
    on TensorFlow, and on a Keras without asynchronous callbacks, it runs on
    the training thread. Either way the variables are read only between two
    training steps: a worker-thread hook reads before the next batch begins,
    and ``on_train_batch_begin`` (always on the training thread) waits for
    that read to finish; a hook that starts after the next batch has begun
    reads nothing and leaves the update to the training thread at the next
    batch begin or epoch end. So every frame shows the weights of one step,
    whole, and reading never races an optimizer update. A frame costs the
    training thread at most the wait for that read; rendering and writing
    happen on Beholder's own thread.

    Sections are the model's trainable variables, named by their paths
    (``variable.path``, e.g. ``sequential/conv2d/kernel``), in
    ``model.trainable_variables`` order. The model is looked up only when a
    frame is due. ``on_train_end`` waits for a read in progress, then closes
    the Beholder: the frame being written is finished, and so is the
    recording, if one was started from the dashboard.

    The callback reads variables only; it draws no random numbers and never
    changes the model, so training with it gives the same weights as without.
    Errors inside Beholder are logged once (with their traceback; later ones
    are counted in ``beholder.failures``) and training goes on, on whichever
    thread they happen. With ``strict=True`` they are raised instead: on the
    training thread into ``fit()`` directly, and from a Keras worker thread
    by Keras, into ``fit()`` at a later batch or at the end of the epoch.

    Args:
        logdir: the run directory to write to, usually the same directory
            given to ``keras.callbacks.TensorBoard(log_dir=...)`` or a
            subdirectory of the directory TensorBoard is started on.
            Beholder's files go to ``<logdir>/plugins/beholder/``.
        frame: optional zero-argument callable returning an image to show
            when the dashboard's Values selector is on "frames": a 2-D array
            (scaled to gray) or an H x W x 3 uint8 RGB image. It is called only
            when such a frame is due, between two training steps, on the
            thread that makes the update (see above).
        strict: raise errors from Beholder into ``fit()`` instead of logging
            the first one and carrying on.
        probe: a fixed batch of inputs: with "activations" selected in the
            dashboard, each frame shows the layers' outputs for it (the model
            run in inference mode, between two steps). Without it that
            choice shows a section saying to pass one.
        layers: the names of the layers whose activations are shown (default:
            every layer).
        **beholder_kwargs: ``Beholder``'s own arguments (``values=``,
            ``ranks=``, ``on_anomaly=``, ``norm_jump=``...), as the Lightning
            and Hugging Face callbacks take them. ``logdir`` may also be a
            ``Beholder`` (then these go to it instead); it is flushed, not
            closed, when training ends.

    Attributes:
        beholder: the ``Beholder`` writing the frames (``frames_written``,
            ``failures``, ``skipped``).
        async_safe: True: a Keras that supports asynchronous callbacks may
            run ``on_train_batch_end`` on a worker thread. Keras versions
            without the notion ignore it and call every hook on the training
            thread, where the callback works the same.

    Example:

    ```python
    from beholder_plugin import BeholderCallback

    model.fit(x_train, y_train, epochs=5,
              callbacks=[BeholderCallback("logs/run1",
                                          frame=lambda: x_train[0, :, :, 0])])
    # then: tensorboard --logdir logs   and open the "Beholder" tab
    ```
    """

    # Keras 3 reads this with getattr(callback, "async_safe", False) (keras/src/callbacks/
    # callback_list.py); a Keras without asynchronous callbacks never looks at it.
    async_safe = True

    def __init__(
        self,
        logdir: str | os.PathLike | Beholder,
        frame: Callable[[], Any] | None = None,
        strict: bool = False,
        probe: Any = None,
        layers: list[str] | None = None,
        **beholder_kwargs: Any,
    ) -> None:
        super().__init__()
        self._probe, self._layers = probe, layers
        if frame is not None and not callable(frame):
            raise TypeError(f"frame must be a zero-argument callable, not {type(frame).__name__}")
        self._given = isinstance(logdir, Beholder)  # (the caller's: flushed at the end, not closed)
        if self._given and (beholder_kwargs or strict):
            raise TypeError("strict= and Beholder's arguments go to Beholder(...) when a Beholder is passed")
        self.beholder = logdir if self._given else Beholder(logdir, strict=strict, **beholder_kwargs)
        self._frame = frame
        self._variables = _ModelVariables(self)
        self._gate = threading.Condition()
        self._training_thread: int | None = None  # the thread that runs fit(), from on_train_begin
        self._begun = -1  # the last batch that began in this epoch (its begin step)
        self._closed = False  # evaluation runs: the weights may be in use, no reading until the next batch
        self._reading = False  # an update is in progress (on whichever thread)
        self._late = False  # a worker-thread hook found the next step started: the training thread updates
        # training batches run, for the step each frame is stamped with: the batches whose weights it
        # shows (update() calls are fewer where late worker-thread hooks leave theirs to the next batch,
        # and with steps_per_execution one hook follows several batches)
        self._epoch_start = 0  # batches run before this epoch (this callback's fits, all together)
        self._seen = 0  # batches run so far, as far as the hooks have said
        # the step before this fit's first batch less the batches run before it: optimizer.iterations
        # at the fit's start where it counts the batches, else the Beholder's step
        self._base: int | None = None
        self._framed_at: int | None = None  # the step of the last frame this callback's updates took
        self._offered = -1  # the batches run when update() was last called (a late update after it is stale)
        self._per_execution = 1  # the model's steps_per_execution, in this fit
        self._counted = False  # this fit's steps come from optimizer.iterations (checked at epoch ends)
        # Data of unknown length with steps_per_execution > 1: Keras says an epoch's last, shorter
        # execution ran a whole one, and then calls on_train_batch_begin once more before it finds no
        # data left. On TensorFlow the hook (on the training thread, after an execution fit() has waited
        # for) asks the optimizer how many batches ran; elsewhere it leaves its update to the training
        # thread, which asks it at the next batch begin or the epoch's end.
        self._ask_optimizer = False
        self._defer = False
        self._counted_at = self._fit_seen = 0  # optimizer.iterations and batches seen at this fit's start

    # ------------------------------------------------------------ the training thread

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Note the training thread, open the gate, watch the model, and go on from optimizer.iterations."""
        counted = _optimizer_steps(self.model)
        per_execution = int(getattr(self.model, "steps_per_execution", 1) or 1)
        watched = self.beholder.watched
        if self.model is not None and (watched is None or watched.model is not self.model):
            self.beholder.watch(self.model, probe=self._probe, activations=self._layers or True)
            watched = self.beholder.watched
        if watched is not None and watched.model is self.model:  # (on JAX, fit() empties the variables)
            watched.read_through(lambda: self.model)
        with self._gate:
            self._gate.wait_for(lambda: not self._reading)
            self._training_thread = threading.get_ident()
            self._begun, self._closed, self._late = -1, False, False
            # (the frames line up with Keras's own count: a resumed fit or a new callback goes on from
            # the optimizer's steps; without one, from the Beholder's, which a Beholder passed in may
            # have counted on between two fits: never backwards)
            # (a new compile() restarts the optimizer's count: the steps still never go back, which the
            # timeline would read as a restarted trainer)
            self._base = max(counted or 0, self.beholder.step) - self._seen
            self._per_execution, self._counted = per_execution, counted is not None
            self._counted_at, self._fit_seen = counted or 0, self._seen
            unknown = per_execution > 1 and not (self.params or {}).get("steps")
            # (TensorFlow's fit() calls on_train_batch_begin before it knows whether data is left:
            # there a batch begin may follow a short execution)
            self._ask_optimizer = unknown and self._counted and keras.backend.backend() == "tensorflow"
            self._defer = unknown and not self._ask_optimizer

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Batch numbers start again from 0 (Keras has waited for the last epoch's hooks)."""
        with self._gate:
            self._begun, self._closed = -1, False
            self._epoch_start = self._seen

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        """Close the gate before this step changes the weights: wait for a read in progress.

        If the previous batch's hook came too late to read, make its update here,
        between the steps.
        """
        with self._gate:
            self._begun, self._closed = batch, False
            before = self._epoch_start + batch  # (batch: the first of those this execution runs)
            self._seen = max(self._seen, before)
            if self._reading:
                self._gate.wait_for(lambda: not self._reading)
            late, self._late = self._late, False
        if late and self._defer:
            before = self._ran(before)  # (this may be the begin that finds no data left)
        if late and self._offered < before:  # (unless a later hook has offered these weights already)
            self._update_between_steps(before)  # (this batch has not run yet)

    def on_test_begin(self, logs: dict | None = None) -> None:
        """Validation inside fit() (JAX donates the weights to it): no reading until the next batch."""
        with self._gate:
            self._closed = True
            self._gate.wait_for(lambda: not self._reading)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Make the update a late hook left, now that Keras has waited for every batch hook."""
        if self._per_execution > 1:  # (an epoch's last execution may have run fewer than the hooks said)
            ran = self._ran(self._seen)  # (once an epoch; on JAX, Keras has just synced the state)
            with self._gate:
                self._seen = ran
                self._offered = min(self._offered, ran)
        self._catch_up()

    def _ran(self, said: int) -> int:
        """``said`` batches run, or fewer where the optimizer counted fewer (training thread only)."""
        # (fewer: the epoch's last execution ran short; never below the epoch's start)
        counted = _optimizer_steps(self.model) if self._counted else None
        if counted is None or self._base is None:
            return said
        by_optimizer = self._fit_seen + counted - self._counted_at
        if by_optimizer < said - (self._per_execution - 1):
            # (behind by more than one short execution: it does not count this fit's batches (a train_step
            # with optimizers of its own): the hooks' count stands, and the optimizer is not asked again)
            self._counted = self._ask_optimizer = False
            return said
        return max(self._epoch_start, min(said, by_optimizer))

    def on_train_end(self, logs: dict | None = None) -> None:
        """Wait for an update in progress, make a late one and one of the trained model (unless the last
        frame shows it already), then finish the frame and the recording."""
        try:
            self._catch_up()
            self._last_frame()
        finally:
            if self._given:
                self.beholder.unwatch()
                self.beholder.flush()
            else:
                self.beholder.close()

    def _last_frame(self) -> None:
        """A frame of the model as fit() left it, where the last one is older: a fit faster than the
        frame rate otherwise ends on a frame of an early step ("showing its last frame, step 64" of 192)."""
        shown = self.beholder.settings.shown
        final = None if self._base is None else self._base + self._seen
        if final is None or self._framed_at == final or not (
                shown == "trainable_variables" or (shown == "activations" and self._probe is not None)
                or (shown == "frames" and self._frame is not None)):
            return
        self.beholder.flush()  # (training is over: the frame in progress must not make this one skipped)
        self.beholder.frame_due_now()
        self._update_between_steps(self._seen)

    def _catch_up(self) -> None:
        with self._gate:
            self._gate.wait_for(lambda: not self._reading)
            late, self._late = self._late, False
        if late and self._offered < self._seen:  # (a hook that read after the late one left nothing to do)
            self._update_between_steps(self._seen)

    # ------------------------------------------------------------ any thread

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        """Offer the model's variables and frame to Beholder; cheap when no frame is due.

        Runs on the training thread or, where Keras dispatches it
        asynchronously, on a worker thread; there it reads only while the
        training thread has not begun the next batch (which then waits).
        """
        training = self._training_thread
        steps = (self.params or {}).get("steps")  # (an epoch's batches, where the data's length is known)
        # batch: the last of those one execution ran (steps_per_execution of them; an epoch's last
        # execution may run fewer)
        done = self._epoch_start + (batch + 1 if not steps else min(batch + 1, steps))
        if self._ask_optimizer and threading.get_ident() == training:
            done = self._ran(done)
        with self._gate:
            self._seen = max(self._seen, done)
            if self._defer:  # (done may count batches that did not run: the training thread updates)
                self._late = True
                return
            if self._reading:
                return  # another update is in progress: this batch's frame is skipped
            if training is not None and threading.get_ident() != training and (
                self._closed or self._begun > batch
            ):
                self._late = True  # the next step has begun: the training thread updates instead
                return
            self._reading = True  # (this batch's weights: the next has not begun)
        self._update_and_release(done)

    def _update_between_steps(self, done: int) -> None:
        """An update made on the training thread (unless a stray hook is still reading), of the weights
        after ``done`` batches."""
        with self._gate:
            if self._reading:
                return
            self._reading = True
        self._update_and_release(done)

    def _update_and_release(self, done: int) -> None:
        """Beholder.update() of the weights after ``done`` batches, stamped with that step, with the gate
        marked reading; never leaves it marked."""
        try:
            if self._base is not None:  # (update() counts one more: the frame's step is base + done)
                self.beholder.step = self._base + done - 1
            if self.beholder.update(variables=self._variables, frame=self._frame):
                self._framed_at = self.beholder.step
        finally:
            with self._gate:
                self._reading = False
                self._offered = max(self._offered, done)
                self._gate.notify_all()


def _optimizer_steps(model: Any) -> int | None:
    """The batches the model's optimizer has counted (``optimizer.iterations``), or None."""
    # (None: no optimizer, a loss scaler or one that accumulates gradients (they count updates, not
    # batches), or a counter that cannot be read; TensorBoard's evaluation_*_vs_iterations use this count)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return None  # (a loss scaler's iterations leave out the steps it skipped)
    for each in (optimizer, getattr(optimizer, "inner_optimizer", None)):  # (a LossScaleOptimizer's)
        if getattr(each, "gradient_accumulation_steps", None):
            return None
    try:
        return int(keras.ops.convert_to_numpy(optimizer.iterations))
    except Exception:  # (not built, or a backend's state not in the variables)
        return None
