"""The trainer of tests/e2e/test_browser_sections.py: ``python tests/sections_trainer.py NET LEFT RIGHT``.

Writes three runs until a file named ``stop`` appears in the first:
"net" (arrays named in scopes, as a Keras or PyTorch model names them; all
constant, so their statistics are known; once a file named ``inject-nan``
appears in the run, one element of ``sequential/dense/bias`` is NaN), and
"left" and "right" (constant arrays whose difference LEFT - RIGHT is known).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

RNG = np.random.default_rng(7)
NET = {
    "sequential/conv1/kernel": RNG.normal(size=(3, 3, 2, 4)).astype(np.float32),
    "sequential/conv1/bias": np.linspace(-1, 1, 4, dtype=np.float32),
    "sequential/dense/kernel": RNG.normal(size=(8, 6)).astype(np.float32),
    "sequential/dense/bias": np.array([0, 0, 1, 2, 3, 0], np.float32),
    "head.weight": RNG.uniform(-3, 3, size=(5, 5)).astype(np.float32),
}
# LEFT["w"] - RIGHT["w"] = DIFF: every value from -2 to 2, so m = 2 (docs/http-api.md, GET diff).
SIGNS = np.array([[1], [-1], [1], [0], [1], [-1], [1], [1]], np.float32)
DIFF = np.array([[-2, -1, 0, 1, 2, 0]] * 8, np.float32) * SIGNS
RIGHT_W = np.arange(48, dtype=np.float32).reshape(8, 6) / np.float32(8)
LEFT = {"w": RIGHT_W + DIFF, "b": np.arange(6, dtype=np.float32), "only_left": np.ones((4, 4), np.float32)}
RIGHT = {"w": RIGHT_W, "b": np.arange(5, dtype=np.float32),
         "only_right": np.array([0, np.nan, 0], np.float32)}  # (a NaN: flagged in the compare view)


def net_arrays(nan: bool) -> dict[str, np.ndarray]:
    """The net run's arrays; with nan, sequential/dense/bias[1] is NaN."""
    if not nan:
        return NET
    bias = NET["sequential/dense/bias"].copy()
    bias[1] = np.nan
    return {**NET, "sequential/dense/bias": bias}


def main(run_dirs: list[str]) -> int:
    """Update the three runs until a file named stop appears in the first."""
    from beholder_plugin import Beholder

    net, left, right = (Beholder(run) for run in run_dirs)
    stop, inject = Path(run_dirs[0], "stop"), Path(run_dirs[0], "inject-nan")
    while not stop.exists():
        net.update(arrays=net_arrays(inject.exists()))
        left.update(arrays=LEFT)
        right.update(arrays=RIGHT)
        time.sleep(0.01)
    for beholder in (net, left, right):
        beholder.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
