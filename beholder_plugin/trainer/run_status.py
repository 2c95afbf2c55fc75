"""What a run has counted (failures, skipped and written frames, write errors) and its one-time warnings.

Shared by the Beholder front, the gatherer and the run store: each counts
what it sees here, and every frame header reports it.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("beholder")


class RunStatus:
    """The run's counts, its last error, and the warnings already given (each is logged once)."""

    def __init__(self) -> None:
        self.failures = 0
        self.write_errors = 0
        self.frames_written = 0
        self.skipped = 0
        self.last_error: str | None = None
        self._warned: set[str] = set()

    def warn_once(self, key: str, message: str, *args: Any) -> None:
        """Log a warning the first time its key comes up."""
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    def note_once(self, key: str, message: str, *args: Any) -> bool:
        """Log an information line the first time its key comes up; False (update() took no frame)."""
        if key not in self._warned:
            self._warned.add(key)
            logger.info(message, *args)
        return False

    def failed(self, exc: BaseException) -> bool:
        """Count a failure of update() or the worker, once per exception (the worker's FrameJobs.run
        counts a frame's, and update() or the report of the worker's error may meet it again); log the
        first one with its traceback. False when this exception was counted already."""
        if getattr(exc, "beholder_counted", False):
            return False
        try:
            exc.beholder_counted = True
        except AttributeError:  # (an exception type that takes no attributes: counted each time)
            pass
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.failures == 1:
            logger.error(
                "Beholder.update() failed; training goes on and later failures are only "
                "counted (see Beholder.failures). Pass strict=True to raise instead.",
                exc_info=(type(exc), exc, exc.__traceback__),
            )
        return True

    def header(self) -> dict[str, Any]:
        """The counts a frame header carries."""
        return {"failures": self.failures, "skipped": self.skipped, "last_error": self.last_error}
