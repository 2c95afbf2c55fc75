"""What the Lightning and Hugging Face callbacks share: a Beholder that watch()es a torch model for one fit.

No framework is imported here. The Beholder is created when training starts
(after the trainer has set up distributed training, so Beholder sees the
right rank) and closed when it ends; a second fit with the same callback
gets a fresh Beholder on the same run. A Beholder passed in instead of a
logdir is used as it is: training's end removes the hooks and waits for the
frame in progress, and closing it is left to its owner.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from beholder_plugin.trainer.beholder import Beholder


class WatchSession:
    """A Beholder for one training run: start() watches the model, update() once per step, close()."""

    def __init__(
        self,
        logdir: str | os.PathLike | Beholder,
        frame: Callable[[], Any] | None,
        activations: bool | list[str],
        gradients: bool,
        strict: bool,
        beholder_kwargs: dict[str, Any],
        gradients_from_backward: bool = False,
    ) -> None:
        if frame is not None and not callable(frame):
            raise TypeError(f"frame must be a zero-argument callable, not {type(frame).__name__}")
        self.given = logdir if isinstance(logdir, Beholder) else None
        if self.given is not None and (beholder_kwargs or strict):
            raise TypeError("strict= and Beholder's arguments go to Beholder(...) when a Beholder is passed")
        self.logdir = logdir
        self.frame = frame
        self.activations = activations
        self.gradients = gradients
        # gradients caught by hooks as the backward pass ends, not read from .grad at update()
        self.gradients_from_backward = gradients_from_backward
        self.strict = strict
        self.beholder_kwargs = dict(beholder_kwargs)
        self.beholder: Beholder | None = None
        self.running = False
        self.framed_at: int | None = None  # the step of the last frame update() handed over

    @property
    def every_rank(self) -> bool:
        """Whether every process writes (``ranks="all"``) rather than only the main one."""
        return self.beholder_kwargs.get("ranks", "zero") == "all"

    def start(self, model: Any, main_process: bool) -> None:
        """Create the Beholder (on the main process, or on every one with ranks="all") and watch the model."""
        self.close()
        self.framed_at = None
        if self.given is not None:  # its own ranks setting decides whether this process writes
            self.beholder = self.given
        elif main_process or self.every_rank:
            self.beholder = Beholder(self.logdir, strict=self.strict, **self.beholder_kwargs)
        else:
            return
        self.running = True
        if model is not None:
            self.beholder.watch(model, activations=self.activations, gradients=self.gradients)
            if self.gradients_from_backward and self.beholder.watched is not None:
                self.beholder.watched.read_gradients = False
                self.beholder.watched.update_before_step = True

    def grad_scaler(self, scaler: Any) -> None:
        """Tell the watch which loss scaler (torch GradScaler, or None) scales the model's gradients."""
        if self.beholder is not None and self.beholder.watched is not None:
            self.beholder.watched.grad_scaler = scaler

    def update(self, step: int | None = None) -> bool:
        """Beholder.update() for this step (never raises unless strict); True when a frame was handed over.

        ``step``: the training step the frame is stamped with (the trainer's own count, which a resumed
        run takes up from its checkpoint, and which its logged scalars carry); None, or a step not past
        the last one (a Beholder passed in, used by a second fit; an update with no optimizer step in
        between): update() counts on, so that steps never repeat or go back.
        """
        if not self.running or self.beholder is None:
            return False
        if step is not None and step > self.beholder.step:
            self.beholder.step = step - 1  # (update() counts one more)
        taken = self.beholder.update(frame=self.frame)
        if taken:
            self.framed_at = self.beholder.step
        return taken

    def final_weights(self, step: int) -> None:
        """A frame of the weights fit() ends with, stamped ``step`` (the optimizer steps taken), when the
        dashboard shows weights and the last frame is of an earlier step: a fit faster than the frame
        rate otherwise ends on a frame of an early step, which the dashboard calls the training's last."""
        beholder = self.beholder if self.running else None
        if beholder is None or beholder.settings.shown != "trainable_variables":
            return
        if (self.framed_at is not None and self.framed_at >= step) or step < beholder.step:
            return  # (shown already; or a Beholder passed in counts on past this fit's steps)
        beholder.flush()  # (training is over: the frame in progress must not make this one skipped)
        beholder.frame_due_now()
        beholder.step = step - 1  # (update() counts one more; no frame has this step yet)
        self.update()

    def last_weights(self, step: int) -> None:
        """A frame of the weights after the last optimizer step, when the dashboard shows weights, stamped
        as update(step) stamps them: for callbacks that offer frames before each optimizer step, which
        never see the last one's."""
        beholder = self.beholder if self.running else None
        if beholder is not None and beholder.settings.shown == "trainable_variables":
            beholder.frame_due_now()
            self.update(step)

    def updates_after_step(self) -> None:
        """update() comes after the optimizer step after all (a transformers without on_pre_optimizer_step):
        the weights it reads are those of its own step."""
        if self.beholder is not None and self.beholder.watched is not None:
            self.beholder.watched.update_before_step = False

    def close(self) -> None:
        """Remove the hooks, finish the frame in progress and any recording (again: nothing happens)."""
        if not self.running or self.beholder is None:
            return
        self.running = False
        if self.given is not None:
            self.beholder.unwatch()
            self.beholder.flush()
        else:
            self.beholder.close()
