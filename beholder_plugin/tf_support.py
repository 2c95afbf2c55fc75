"""TensorFlow adapter: eager tensors and variables, sliced on their device before copying.

Imported only when a TensorFlow or Keras object reaches Beholder, so
TensorFlow is already loaded by then.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from beholder_plugin.render import RenderError


def prepare(obj: Any, label: str) -> Any:
    """A tensor or variable that can be sliced eagerly; refuses symbolic tensors with a clear message."""
    import tensorflow as tf

    value = getattr(obj, "value", None)
    if type(obj).__module__.split(".", 1)[0] == "keras" and value is not None:
        obj = value() if callable(value) else value
    if tf.is_tensor(obj) and not hasattr(obj, "numpy") and not isinstance(obj, tf.Variable):
        raise RenderError(
            f"section {label}: got a symbolic tensor; call Beholder.update() outside tf.function "
            "(or pass session= in TF1 graph mode)"
        )
    return obj


def fetch_sub(obj: Any, axes: tuple) -> np.ndarray:
    """obj[np.ix_(*axes)] computed on the device (None: whole axis), copied to NumPy."""
    import tensorflow as tf

    x = obj
    for axis, idx in enumerate(axes):
        if idx is not None:
            x = tf.gather(x, idx, axis=axis)
    if x.dtype in (tf.bfloat16, tf.float16):
        x = tf.cast(x, tf.float32)
    return np.asarray(x)


def to_numpy(obj: Any, label: str) -> np.ndarray:
    """A whole tensor as NumPy."""
    obj = prepare(obj, label)
    return np.asarray(obj)
