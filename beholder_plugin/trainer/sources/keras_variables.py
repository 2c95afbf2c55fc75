"""Keras 3 adapter: a Keras variable is read through its backend's tensor, whatever the backend.

``keras.Variable.value`` is a ``tf.Variable`` on the TensorFlow backend, a
torch ``Parameter`` on the torch backend and a ``jax.Array`` on JAX; each is
then gathered by its own framework's adapter, on its device.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

import numpy as np

from beholder_plugin.protocol.layout import RenderError
from beholder_plugin.protocol.plans import SectionPlan
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


def host_view(prepared: Any) -> np.ndarray | None:
    """A NumPy view of the backend tensor where its adapter can give one (CPU torch and JAX), else None."""
    view = getattr(sources.adapter_for(prepared), "host_view", None)
    return None if view is None else view(prepared)


def compact(prepared: Any, plan: SectionPlan, label: str) -> np.ndarray:
    """The plan's compact section, gathered by the backend tensor's adapter."""
    return sources.adapter_for(prepared).compact(prepared, plan, label)


def sample(prepared: Any, runs: tuple[int, int, int]) -> np.ndarray:
    """The statistics' sample, taken by the backend tensor's adapter."""
    return sources.adapter_for(prepared).sample(prepared, runs)


def whole(obj: Any, label: str) -> np.ndarray:
    """The whole variable as NumPy."""
    value = _backend_value(obj, label)
    return sources.adapter_for(value).whole(value, label)


# Keras layer class names (anywhere in the type's MRO) -> the layout of their rank-3 to rank-5 kernels.
# Checked in this order: Keras's transposed convolutions subclass its BaseConv too.
_KERNEL_LAYOUTS = (
    ("BaseConvTranspose", "kernel_hwoi"),  # Conv1D/2D/3DTranspose: (*k, out, in)
    ("BaseConv", "kernel_hwio"),  # Conv1D/2D/3D: (*k, in, out)
    ("BaseDepthwiseConv", "kernel_hwio"),  # (*k, in, multiplier)
    ("BaseSeparableConv", "kernel_hwio"),  # depthwise (*k, in, multiplier) and pointwise (1.., in, out)
)


def _layers(model: Any) -> list:
    """Every layer inside a model, nested models included."""
    flatten = getattr(model, "_flatten_layers", None)
    if callable(flatten):
        return list(flatten(include_self=True, recursive=True))
    found, stack = [], [model]
    while stack:
        layer = stack.pop()
        found.append(layer)
        stack.extend(getattr(layer, "layers", []) or [])
    return found


def layer_layout(layer: Any, rank: int) -> str | None:
    """The layout of a layer's variable of this rank (None: the original's rule)."""
    classes = {cls.__name__ for cls in type(layer).__mro__}
    if rank in (3, 4, 5):
        for cls, layout in _KERNEL_LAYOUTS:
            if cls in classes:
                return layout
    if rank == 2 and ("Dense" in classes or "Embedding" in classes):
        return "matrix"  # Dense (in, out) and Embedding (tokens, dim), as the original drew them
    return None


_LAYOUT_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def layouts_by_variable(model: Any) -> dict[int, str]:
    """id(variable) -> layout for the variables of a Keras model whose layer says how to draw them.

    Kept per model until its number of variables changes (walking the layers
    of a large model on every frame would cost more than the frame).
    """
    count = len(model.trainable_variables)
    cached = _LAYOUT_CACHE.get(model)
    if cached is not None and cached[0] == count:
        return cached[1]
    out: dict[int, str] = {}
    for layer in _layers(model):
        for variable in getattr(layer, "_trainable_variables", None) or []:
            layout = layer_layout(layer, len(variable.shape))
            if layout is not None:
                out.setdefault(id(variable), layout)
    _LAYOUT_CACHE[model] = (count, out)
    return out
