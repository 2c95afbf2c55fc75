"""Compare a frame's pixels with the arrays they show, by sampling (shared by the framework tests)."""

from __future__ import annotations

import numpy as np

from beholder_plugin.protocol.layout import locate


def check_sampled_pixels(frame, arrays: dict, samples: int = 300, seed: int = 0) -> int:
    """Assert that sampled pixels hold the value at the index they name in arrays[name]; returns the count."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(samples):
        x, y = int(rng.integers(frame.width)), int(rng.integers(frame.height))
        where = locate(frame.sections, frame.width, x, y)
        if where is None:
            continue
        expected = np.asarray(arrays[where["name"]])[tuple(where["index"])]
        assert frame.values[where["offset"]] == np.float32(expected), where
        hits += 1
    return hits
