"""Bounded waits on a remote store that may stop answering: the call runs on a thread of its own.

A bucket that refuses connections fails fast, but one that hangs (a network
partition, a stalled proxy) holds each fsspec call for the client's timeouts
and retries: many minutes. What Beholder must do on the caller's thread
against such a store (open a run, finish its timeline at ``close()``) runs
here instead, and the caller waits only so long; the thread is a daemon, so
it never holds the interpreter's exit.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

# How long Beholder(...) waits for a remote run to open (read its history, its anomalies and config.json)
# before training goes on without it: frames start once it has opened.
REMOTE_OPEN_SECONDS = 30.0
# How long close() (and flush()) with no timeout waits for a remote store's last writes.
REMOTE_CLOSE_SECONDS = 60.0


class Background:
    """A call running on a daemon thread: ``wait()`` for it a bounded time; ``error`` is what it raised."""

    def __init__(self, call: Callable[[], Any], name: str) -> None:
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), name=name, daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            call()
        except BaseException as exc:  # (handed to whoever waits: they decide to raise or log it)
            self.error = exc

    def wait(self, seconds: float | None) -> bool:
        """Whether the call has ended, after waiting at most ``seconds`` (None: until it does)."""
        self._thread.join(seconds)
        return not self._thread.is_alive()


def run_within(seconds: float | None, call: Callable[[], Any], name: str) -> bool:
    """Run ``call`` and wait at most ``seconds`` (None: until it ends); False when it had not ended then
    (it goes on, on its own thread). What it raised in time is raised here."""
    running = Background(call, name)
    if not running.wait(seconds):
        return False
    if running.error is not None:
        raise running.error
    return True
