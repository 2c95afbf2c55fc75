"""Image data drawn in code for the demos: 28 x 28 gray pictures of four shapes, no downloads."""

from __future__ import annotations

import numpy as np

SIZE = 28
CLASSES = ("disk", "square", "plus", "cross")


def make_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n noisy images (n, 28, 28, 1) float32 in about [0, 1] and their labels (n,) int32."""
    labels = rng.integers(0, len(CLASSES), size=n).astype(np.int32)
    radius = rng.uniform(5.0, 10.0, size=(n, 1, 1))
    cy = rng.uniform(radius[:, 0, 0] + 1, SIZE - radius[:, 0, 0] - 1)[:, None, None]
    cx = rng.uniform(radius[:, 0, 0] + 1, SIZE - radius[:, 0, 0] - 1)[:, None, None]
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    dy, dx = np.abs(yy[None] - cy), np.abs(xx[None] - cx)
    width = 1.3
    shapes = np.stack(
        [
            dx**2 + dy**2 <= radius**2,  # disk
            (np.maximum(dx, dy) <= radius) & (np.maximum(dx, dy) >= radius - 2 * width),  # square
            ((dx <= width) & (dy <= radius)) | ((dy <= width) & (dx <= radius)),  # plus
            (np.abs(dx - dy) <= width) & (np.maximum(dx, dy) <= radius),  # diagonal cross
        ]
    )
    images = shapes[labels, np.arange(n)].astype(np.float32)
    images += rng.normal(0.0, 0.15, size=images.shape).astype(np.float32)
    return images[..., None], labels
