"""User frames (update(frame=...)): a 2-D array shown in gray, or an RGB image shown as it is."""

from __future__ import annotations

from typing import Any

import numpy as np

from beholder_plugin.protocol.layout import RenderError
from beholder_plugin.trainer import sources
from beholder_plugin.trainer.colormaps import palette_for
from beholder_plugin.trainer.views.render import scale_frame

# A user frame larger than this on a side is shown downsampled by a whole stride.
MAX_FRAME_SIDE = 4096


def capture(frame: Any, warn: Any = None) -> np.ndarray:
    """A private copy of the image to show (called on the training thread: the caller may reuse its array).

    Calls ``frame`` when it is a function, converts tensors, drops a trailing
    channel of 1 and strides images larger than MAX_FRAME_SIDE on a side.
    """
    if callable(frame):
        frame = frame()
    image = sources.to_numpy(frame, "frame")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim in (2, 3) and max(image.shape[:2]) > MAX_FRAME_SIDE:
        stride = -(-max(image.shape[:2]) // MAX_FRAME_SIDE)
        if warn is not None:
            warn(
                "huge-frame",
                "Beholder: a %s frame is larger than %d px on a side; showing every %dth pixel",
                "x".join(map(str, image.shape)),
                MAX_FRAME_SIDE,
                stride,
            )
        image = image[::stride, ::stride]
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3):
        if image.size == 0:
            raise RenderError(f"frame: the image is empty (shape {image.shape})")
        if image.ndim == 3 and image.dtype != np.uint8:
            raise RenderError(
                f"frame: an H x W x 3 image must be uint8 RGB, not {image.dtype}; "
                "pass a 2-D array to have it scaled"
            )
        return np.array(image, copy=True)
    raise RenderError(f"frame: expected a 2-D array or an H x W x 3 uint8 image, got shape {image.shape}")


def pixels(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixels and palette for a captured image: gray palette indices for 2-D, RGB as it is."""
    if image.ndim == 2:
        return scale_frame(image), palette_for("grayscale")
    return image, None
