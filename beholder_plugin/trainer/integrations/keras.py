"""BeholderCallback: stream a Keras 3 model's trainable variables to the Beholder tab during fit().

This module imports Keras when it is imported; ``beholder_plugin`` loads it
only when ``BeholderCallback`` is first asked for.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

import keras

from beholder_plugin.trainer.beholder import Beholder


class BeholderCallback(keras.callbacks.Callback):
    """Callback that shows the model's trainable variables in TensorBoard's Beholder tab.

    After every training batch it hands the model to ``Beholder.update()``,
    which gathers a frame only when one is due by the dashboard's FPS setting
    (other batches cost one ``stat()`` of the config file); Beholder's own
    background thread renders and writes it.

    The callback is ``async_safe``: on the Keras backends that allow it
    (JAX and torch; TensorFlow's runs every callback on the training thread),
    Keras calls its batch hook on a worker thread, so training never waits
    for it. Two batches' hooks never run at once: a hook that finds the
    previous one still running returns at once. Variables are read through
    their backend tensors on that thread; each is read whole at one moment,
    but different variables may be read on either side of an optimizer step. Sections are the
    model's trainable variables, named by their paths (``variable.path``, e.g.
    ``sequential/conv2d/kernel``), in ``model.trainable_variables`` order.
    The recording, if one was started from the dashboard, is finished when
    training ends.

    The callback reads variables only; it draws no random numbers and never
    changes the model, so training with it gives the same weights as without.
    Errors inside Beholder are logged once and training goes on, unless
    ``strict=True``.

    Args:
        logdir: the run directory to write to, usually the same directory
            given to ``keras.callbacks.TensorBoard(log_dir=...)`` or a
            subdirectory of the directory TensorBoard is started on.
            Beholder's files go to ``<logdir>/plugins/beholder/``.
        frame: optional zero-argument callable returning an image to show
            when the dashboard's Values selector is on "frames": a 2-D array
            (scaled to gray) or an H x W x 3 uint8 RGB image. It is called only
            when such a frame is due.
        strict: raise errors from Beholder into ``fit()`` instead of logging
            the first one and carrying on.

    Attributes:
        beholder: the ``Beholder`` writing the frames (``frames_written``,
            ``failures``, ``skipped``).
        async_safe: True: Keras may run the batch hook on a worker thread.

    Example:

    ```python
    from beholder_plugin import BeholderCallback

    model.fit(x_train, y_train, epochs=5,
              callbacks=[BeholderCallback("logs/run1",
                                          frame=lambda: x_train[0, :, :, 0])])
    # then: tensorboard --logdir logs   and open the "Beholder" tab
    ```
    """

    def __init__(
        self,
        logdir: str | os.PathLike,
        frame: Callable[[], Any] | None = None,
        strict: bool = False,
    ) -> None:
        super().__init__()
        if frame is not None and not callable(frame):
            raise TypeError(f"frame must be a zero-argument callable, not {type(frame).__name__}")
        self.beholder = Beholder(logdir, strict=strict)
        self._frame = frame
        self._in_hook = threading.Lock()

    # Keras 3 dispatches the batch hooks of callbacks that declare this on a thread pool.
    async_safe = True

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        """Offer the model's variables and frame to Beholder; cheap when no frame is due."""
        if not self._in_hook.acquire(blocking=False):
            return  # the previous batch's hook still runs on another worker thread
        try:
            self.beholder.update(variables=self.model, frame=self._frame)
        finally:
            self._in_hook.release()

    def on_train_end(self, logs: dict | None = None) -> None:
        """Write the last frame and finish the recording (Keras has waited for every batch hook)."""
        self.beholder.close()
