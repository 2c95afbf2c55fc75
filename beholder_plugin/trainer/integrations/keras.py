"""BeholderCallback: stream a Keras 3 model's trainable variables to the Beholder tab during fit().

This module imports Keras when it is imported; ``beholder_plugin`` loads it
only when ``BeholderCallback`` is first asked for.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import keras

from beholder_plugin.trainer.beholder import Beholder


class BeholderCallback(keras.callbacks.Callback):
    """Callback that shows the model's trainable variables in TensorBoard's Beholder tab.

    After every training batch it hands the model to ``Beholder.update()``,
    which renders a frame only when one is due by the dashboard's FPS setting
    (other batches cost one ``stat()`` of the config file). Sections are the
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
            ``failures``).

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

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        """Offer the model's variables and frame to Beholder; cheap when no frame is due."""
        self.beholder.update(variables=self.model, frame=self._frame)

    def on_train_end(self, logs: dict | None = None) -> None:
        """Finish the recording, if one is in progress."""
        self.beholder.close()
