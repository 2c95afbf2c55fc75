"""The demos' step counter, which Ctrl-C always stops.

Python drops an exception raised inside a garbage-collection callback
(it only prints "Exception ignored"), and a Ctrl-C can land there: the
KeyboardInterrupt would be lost and the demo would train on until killed.
``steps`` remembers every SIGINT and raises at the next step instead.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Iterator


def steps(count: int | None) -> Iterator[int]:
    """0, 1, 2, ... (count of them, or endless); KeyboardInterrupt at the next step after any Ctrl-C."""
    received: list[int] = []

    def on_sigint(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    for step in range(count) if count is not None else itertools.count():
        if received:
            raise KeyboardInterrupt
        yield step
