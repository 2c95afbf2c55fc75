"""Keras 3 adapter: a Keras variable is read through its backend's tensor, whatever the backend.

``keras.Variable.value`` is a ``tf.Variable`` on the TensorFlow backend, a
torch ``Parameter`` on the torch backend and a ``jax.Array`` on JAX; each is
then gathered by its own framework's adapter, on its device.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from beholder_plugin.protocol.layout import RenderError, SectionPlan
from beholder_plugin.trainer import sources


def _backend_value(obj: Any, label: str) -> Any:
    """The backend tensor behind a Keras object; symbolic KerasTensors are refused, saying why."""
    if type(obj).__name__ == "KerasTensor" or getattr(obj, "value", None) is None:
        if "tensorflow" in sys.modules:
            from beholder_plugin.trainer.sources import tf_tensors

            return tf_tensors.prepare(obj, label)  # raises with the TensorFlow-specific advice
        raise RenderError(
            f"section {label}: got a symbolic {type(obj).__name__} (a layer output), which has no "
            "value; pass model weights, or the NumPy or backend arrays of a forward pass"
        )
    value = obj.value
    return value() if callable(value) else value


def prepare(obj: Any, label: str) -> Any:
    """The backend tensor, prepared by its own framework's adapter."""
    value = _backend_value(obj, label)
    return sources.adapter_for(value).prepare(value, label)


def compact(prepared: Any, plan: SectionPlan, label: str) -> np.ndarray:
    """The plan's compact section, gathered by the backend tensor's adapter."""
    return sources.adapter_for(prepared).compact(prepared, plan, label)


def whole(obj: Any, label: str) -> np.ndarray:
    """The whole variable as NumPy."""
    value = _backend_value(obj, label)
    return sources.adapter_for(value).whole(value, label)
