"""User frames (update(frame=...)): a 2-D array shown in gray, or an RGB image shown as it is."""

from __future__ import annotations

from typing import Any

import numpy as np

from beholder_plugin.protocol.colormaps import palette_for
from beholder_plugin.protocol.layout import RenderError
from beholder_plugin.trainer import sources
from beholder_plugin.trainer.views.render import scale_frame

# A user frame larger than this on a side is shown downsampled by a whole stride.
MAX_FRAME_SIDE = 4096


def capture(frame: Any, warn: Any = None) -> np.ndarray:
    """A private copy of the image to show (called on the training thread: the caller may reuse its array).

    Calls ``frame`` when it is a function and converts tensors. Accepts a 2-D
    array (shown in gray, min-max scaled) or a colour image, channels last
    (H x W x C) or first (C x H x W, as PyTorch keeps images) with 1, 3 or 4
    channels (alpha is dropped). Colour images are uint8, or floats in
    [0, 1]; other values are min-max scaled. Images larger than
    MAX_FRAME_SIDE on a side are strided.
    """
    if callable(frame):
        frame = frame()
    image = _channels_last(sources.to_numpy(frame, "frame"))
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim in (2, 3) and max(image.shape[:2]) > MAX_FRAME_SIDE:
        stride = -(-max(image.shape[:2]) // MAX_FRAME_SIDE)
        if warn is not None:
            warn(
                "huge-frame",
                "Beholder: a %s frame is larger than %d px on a side; showing one pixel in %d along each "
                "side",
                "x".join(map(str, image.shape)),
                MAX_FRAME_SIDE,
                stride,
            )
        image = image[::stride, ::stride]
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3):
        if image.size == 0:
            raise RenderError(f"frame: the image is empty (shape {image.shape})")
        if image.ndim == 3:
            return _rgb_uint8(image)
        return np.array(image, copy=True)
    raise RenderError(
        "frame: expected a 2-D array or an image of 1, 3 or 4 channels (H x W x C or C x H x W), "
        f"got shape {image.shape}"
    )


def _channels_last(image: np.ndarray) -> np.ndarray:
    """An H x W x C view of a 3-D image given channels last or first; alpha dropped. Others as they are."""
    if image.ndim != 3:
        return image
    if image.shape[2] not in (1, 3, 4) and image.shape[0] in (1, 3, 4):
        image = np.moveaxis(image, 0, 2)
    if image.shape[2] == 4:
        image = image[:, :, :3]
    return image


def _rgb_uint8(image: np.ndarray) -> np.ndarray:
    """An RGB image as a new uint8 array: uint8 as it is, floats in [0, 1] times 255, else min-max scaled."""
    if image.dtype == np.uint8:
        return np.array(image, copy=True)
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255
    values = image.astype(np.float32)
    finite = np.isfinite(values)
    values = np.where(finite, values, 0.0)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
        return np.rint(values * 255.0).astype(np.uint8)
    if image.dtype.kind in "iu" and lo >= 0 and hi <= 255:
        return values.astype(np.uint8)
    return scale_frame(values) if hi > lo else np.zeros(values.shape, np.uint8)


def pixels(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixels and palette for a captured image: gray palette indices for 2-D, RGB as it is."""
    if image.ndim == 2:
        return scale_frame(image), palette_for("grayscale")
    return image, None
