"""The trainer of tests/e2e/test_browser_inspect.py: ``python tests/inspect_trainer.py GRID MNIST TALL``.

Writes three runs until a file named ``stop`` appears in the first: "grid"
(np.arange-filled float32 arrays plus the step, so every value is known
exactly from the step a frame names), "mnist" (a 28x28 image) and "tall"
(TALL_SECTIONS small arrays, a frame taller than the browser window).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

GRID = np.arange(40 * 30, dtype=np.float32).reshape(40, 30) * np.float32(0.25)
KERNEL = np.arange(3 * 3 * 4 * 5, dtype=np.float32).reshape(3, 3, 4, 5) - np.float32(90)
ARRAYS = {"grid": GRID, "kernel": KERNEL}
FAILING_STEP = 3  # from here, no arrays at all (an error) until one update has failed
TALL_SECTIONS = 40


def values_at(step: int) -> dict[str, np.ndarray]:
    """The arrays the grid run gets at a step (float32 throughout, so the sums are exact)."""
    return {name: arr + np.float32(step) for name, arr in ARRAYS.items()}


def main(run_dirs: list[str]) -> int:
    """Update the grid, mnist and tall runs until a file named stop appears next to the first."""
    from beholder_plugin import Beholder

    grid, mnist, tall = (Beholder(run) for run in run_dirs)
    image = (np.add.outer(np.arange(28), np.arange(28)) * 4 % 256).astype(np.uint8)
    small = {f"s{i:02d}": np.arange(64, dtype=np.float32).reshape(8, 8) * i for i in range(TALL_SECTIONS)}
    stop = Path(run_dirs[0], "stop")
    step = 0
    while not stop.exists():
        step += 1
        # One failed update, so that later frames report a failure and its message.
        failing = step >= FAILING_STEP and grid.failures == 0
        grid.update(arrays={} if failing else values_at(step))
        mnist.update(frame=image)
        tall.update(arrays=small)
        time.sleep(0.01)
    for beholder in (grid, mnist, tall):
        beholder.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
