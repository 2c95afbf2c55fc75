"""BeholderHFCallback: a Hugging Face model's weights, gradients and activations during Trainer.train().

This module imports ``transformers`` when it is imported; ``beholder_plugin``
loads it only when ``BeholderHFCallback`` is first asked for.

``update()`` is called once per optimizer step, in ``on_pre_optimizer_step``
(after the backward passes of the step, gradients accumulated and, on
several processes, averaged). The Trainer has clipped the gradients in
place by then (``max_grad_norm``, 1.0 by default), so they are not read
from ``.grad`` there: a gradients frame takes two steps, the update of one
step arms the hooks, the next step's backward pass copies the shown slices
when it ends, and that step's update writes the frame. So the frame shows
them before clipping, with their true size (a norm jump is not hidden).
Under fp16 AMP the copies are unscaled by the loss scaler's inverse scale
(accelerate's optimizer holds the scaler), as the Trainer's own unscaling
does. A ``transformers`` without ``on_pre_optimizer_step`` calls ``on_step_end``
only; the callback then updates there.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from transformers import TrainerCallback

from beholder_plugin.trainer.beholder import Beholder
from beholder_plugin.trainer.integrations.watching import WatchSession


class BeholderHFCallback(TrainerCallback):
    """``transformers.Trainer`` callback that shows the model's tensors in TensorBoard's Beholder tab.

    On ``on_train_begin`` it creates a ``Beholder`` on ``logdir`` and
    ``watch()``es the model (on the main process only,
    ``state.is_world_process_zero``, unless ``ranks="all"``); before every
    optimizer step it calls ``update()``, which gathers a frame only when the
    dashboard's FPS setting says one is due (other steps cost one
    ``stat()``); ``on_train_end`` closes the Beholder, finishing the frame in
    progress and any recording.

    Sections are named by parameter path (``transformer.h.0.attn.c_attn.weight``)
    for weights and gradients (tied weights once), and by module path for
    activations.

    Args:
        logdir: the run directory, e.g. ``os.path.join(args.logging_dir, "beholder")``
            or any directory under the one TensorBoard is started on.
            Or a ``Beholder`` to use: it is not closed at the end (its
            owner closes it), and its own ``ranks`` decide which process writes.
        frame: optional zero-argument callable returning an image, called
            only when the dashboard shows "frames" and a frame is due.
        activations: True for every leaf module's output, a list of module
            paths for those only, False for none.
        gradients: hook the parameters' gradients.
        strict: raise errors from Beholder into ``train()`` instead of
            logging the first one and carrying on.
        **beholder_kwargs: passed to ``Beholder`` (``background``,
            ``ranks``, ``max_remote_fps``, ...).

    Attributes:
        beholder: the ``Beholder`` of the current or last training run (None
            before the first, and on processes that do not write).
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
        self._session = WatchSession(logdir, frame, activations, gradients, strict, beholder_kwargs,
                                     gradients_from_backward=True)  # before the Trainer clips them
        self._pre_step_seen = False  # this transformers calls on_pre_optimizer_step

    @property
    def beholder(self) -> Beholder | None:
        """The Beholder of the current or last training run (None before the first, and on other ranks)."""
        return self._session.beholder

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """Create the Beholder and watch the model (main process only, unless ranks="all")."""
        self._pre_step_seen = False
        self._session.start(model, main_process=bool(state.is_world_process_zero))
        # fp16 AMP: accelerate's optimizer holds the loss scaler, whose scaled gradients the hooks catch
        self._session.grad_scaler(getattr(kwargs.get("optimizer"), "scaler", None))

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Offer a frame: the step's gradients are complete and the weights not yet changed.

        Stamped with the Trainer's step (a resumed run's goes on from its checkpoint): the gradients and
        activations are those of the step about to be taken, ``global_step + 1``; the weights, read
        before it, those after ``global_step`` steps, and stamped so (the watch's update_before_step).
        """
        self._pre_step_seen = True
        self._session.update(_step(state, 1))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Offer a frame here only on a transformers without on_pre_optimizer_step (after the step:
        global_step counts it)."""
        if not self._pre_step_seen:
            self._session.updates_after_step()
            self._session.update(_step(state))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Show the final weights, remove the hooks and finish the last frame and any recording."""
        step = _step(state, 1)  # (its weights frame is stamped one lower: global_step, the last step's)
        if self._pre_step_seen and step is not None:
            self._session.last_weights(step)
        self._session.close()


def _step(state: Any, ahead: int = 0) -> int | None:
    """The Trainer's step (``global_step``, optimizer steps taken), plus ``ahead``; None if it has none."""
    step = getattr(state, "global_step", None)
    return None if step is None else int(step) + ahead
