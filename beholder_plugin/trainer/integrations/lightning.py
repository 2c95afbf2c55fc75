"""BeholderLightningCallback: a LightningModule's weights, gradients and activations in the Beholder tab.

This module imports Lightning (``lightning.pytorch``, or the older
``pytorch_lightning`` when only that is installed) when it is imported;
``beholder_plugin`` loads it only when ``BeholderLightningCallback`` is first
asked for.

How gradients reach the frame: ``Beholder.watch()`` hooks the module's
parameters, and a frame of gradients takes two steps. The ``update()`` after
one optimizer step finds a frame due and arms the hooks; during the next
step's backward pass they copy the shown slice of each gradient; the
``update()`` after that step writes the frame. So ``update()`` must come
once per optimizer step, after the backward pass: the callback calls it in
``on_train_batch_end`` of the batches in which an optimizer stepped
(``on_before_optimizer_step`` notes that), so with gradient accumulation
the frame shows the accumulated gradient, as the optimizer used it (before
gradient clipping, which Lightning applies after that hook).
"""

from __future__ import annotations

import os
from typing import Any, Callable

try:
    from lightning.pytorch import Callback
except ImportError:  # only the older distribution is installed
    from pytorch_lightning import Callback

from beholder_plugin.trainer.beholder import Beholder
from beholder_plugin.trainer.integrations.watching import WatchSession


class BeholderLightningCallback(Callback):
    """Lightning callback showing the module's weights, gradients or activations in the Beholder tab.

    On ``on_fit_start`` it creates a ``Beholder`` on ``logdir`` and
    ``watch()``es the LightningModule (on the global rank 0 process only,
    unless ``ranks="all"``); after every training batch in which an optimizer
    stepped it calls ``update()``, which gathers a frame only when the
    dashboard's FPS setting says one is due (other batches cost one
    ``stat()``); ``on_fit_end`` (or an exception that ends ``fit()``) closes
    the Beholder, finishing the frame in progress and any recording.

    Sections are named by parameter path (``encoder.0.weight``) for weights
    and gradients, and by module path for activations (every leaf module's
    output, or the module paths listed in ``activations``).

    Args:
        logdir: the run directory, e.g. ``trainer.logger.log_dir`` or any
            directory under the one TensorBoard is started on.
            Or a ``Beholder`` to use: it is not closed at the end (its
            owner closes it), and its own ``ranks`` decide which process writes.
        frame: optional zero-argument callable returning an image, called
            only when the dashboard shows "frames" and a frame is due.
        activations: True for every leaf module's output, a list of module
            paths for those only, False for none.
        gradients: hook the parameters' gradients.
        strict: raise errors from Beholder into ``fit()`` instead of logging
            the first one and carrying on.
        **beholder_kwargs: passed to ``Beholder`` (``background``,
            ``ranks``, ``max_remote_fps``, ...).

    Attributes:
        beholder: the ``Beholder`` of the current or last fit (None before
            the first fit and on processes that do not write).
    """

    def __init__(
        self,
        logdir: str | os.PathLike | Beholder,
        frame: Callable[[], Any] | None = None,
        activations: bool | list[str] = True,
        gradients: bool = True,
        strict: bool = False,
        **beholder_kwargs: Any,
    ) -> None:
        super().__init__()
        self._session = WatchSession(logdir, frame, activations, gradients, strict, beholder_kwargs)
        self._stepped = False  # an optimizer stepped since the last batch end

    @property
    def beholder(self) -> Beholder | None:
        """The Beholder of the current or last fit (None before the first, and on non-writing ranks)."""
        return self._session.beholder

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Create the Beholder and watch the module (global rank 0 only, unless ranks="all")."""
        self._stepped = False
        self._session.start(pl_module, main_process=bool(trainer.is_global_zero))
        # precision="16-mixed": the precision plugin's loss scaler (its overflows are not anomalies)
        self._session.grad_scaler(getattr(getattr(trainer, "precision_plugin", None), "scaler", None))

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        """Note that this batch ends an optimizer step: its gradients are complete."""
        self._stepped = True

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Offer a frame once per optimizer step (every batch with manual optimization)."""
        stepped, self._stepped = self._stepped, False
        if stepped or not getattr(pl_module, "automatic_optimization", True):
            # (after the optimizer step: the weights after global_step steps, the gradients and
            # activations of the last one, which a resumed fit's count goes on from)
            self._session.update(int(trainer.global_step))

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        """Show the weights fit() ends with (unless the last frame does), remove the hooks and finish the
        last frame and any recording."""
        try:
            step = getattr(trainer, "global_step", None)
            if step is not None:
                self._session.final_weights(int(step))
        finally:
            self._session.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """fit() is ending with an exception: close the Beholder all the same."""
        self._session.close()
