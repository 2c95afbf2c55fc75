"""Work shared by concurrent requests: one build per key while others wait for it, and a cap on heavy work.

A dashboard's requests come in bursts (every viewer of a live run asks again
once a file changed), and some answers take a whole run's files to build
(a timeline, a ring of 50,000 kept frames): built once per request, 32 of them
at once took 2 GB. ``Flights`` lets the first request for a key build its
answer while later ones for the same key wait and share it; ``Slots`` bounds
how many builds of a kind run at once, and a request waiting for a slot is
answered when one frees (503 "busy" only after SLOT_WAIT_S).

Example::

    flights, reads = Flights(), Slots(2, "timeline")

    def build() -> dict:
        with reads:                      # at most 2 of these at once
            return read_everything()

    answer = flights.run(("run1", signature), build)   # callers with this key at once: one build
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any, Callable, TypeVar

from beholder_plugin.server.runs import RunError

T = TypeVar("T")
SLOT_WAIT_S = 60.0  # how long a request waits for a slot before it is answered 503


class Busy(RunError):
    """No slot freed within SLOT_WAIT_S (the route answers 503)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 503)


class _Flight:
    """One build in progress: the event its waiters wait on, and its value or error once done."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class Flights:
    """Builds by key: while one runs, callers asking for the same key wait for it and get its result."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[Hashable, _Flight] = {}

    def run(self, key: Hashable, build: Callable[[], T]) -> T:
        """build()'s value, built by this caller or, when one for key is under way, by that one (its error
        is raised to every caller that waited for it)."""
        with self._lock:
            flight = self._running.get(key)
            leader = flight is None
            if flight is None:
                flight = self._running[key] = _Flight()
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            flight.value = build()
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._running[key]
            flight.done.set()
        return flight.value

    def running(self) -> int:
        """How many builds are under way (for tests and stats)."""
        with self._lock:
            return len(self._running)


class Slots:
    """At most `count` holders at once (a context manager); Busy when none frees within SLOT_WAIT_S."""

    def __init__(self, count: int, what: str) -> None:
        self.count = count
        self.what = what
        self._semaphore = threading.BoundedSemaphore(count)

    def __enter__(self) -> Slots:
        """Wait for a slot (SLOT_WAIT_S at most, then Busy)."""
        if not self._semaphore.acquire(timeout=SLOT_WAIT_S):
            raise Busy(f"the server is busy building other {self.what} answers; try again in a moment")
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Give the slot back."""
        self._semaphore.release()
