"""Framework adapters: names and shapes of array-likes, and copying only the shown values to NumPy.

Frameworks are recognised by the module of an object's type, so nothing here
imports TensorFlow, PyTorch or JAX; the adapter for one is used only when an
object of that framework is passed, and by then the framework is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from beholder_plugin.protocol.layout import RenderError, SectionPlan


def framework_of(obj: Any) -> str:
    """'numpy', 'torch', 'tensorflow', 'jax' or 'other', from the object's type alone."""
    if isinstance(obj, np.ndarray):
        return "numpy"
    root = type(obj).__module__.split(".", 1)[0]
    if root == "torch":
        return "torch"
    if root in ("tensorflow", "keras", "tf_keras"):
        return "tensorflow"
    if root in ("jax", "jaxlib"):
        return "jax"
    return "other"


def _as_numpy(obj: Any, label: str) -> np.ndarray:
    """np.asarray for plain inputs (lists, scalars, __array__ objects), with a clear error."""
    try:
        array = np.asarray(obj)
    except Exception as exc:  # ragged lists and the like
        raise RenderError(f"section {label}: cannot be read as an array ({exc})") from None
    if array.dtype == object or array.dtype.kind in "USV":
        raise RenderError(
            f"section {label}: {type(obj).__name__} is not a numeric array (dtype {array.dtype})"
        )
    return array


def prepare(obj: Any, label: str) -> Any:
    """The object to plan and fetch from: tensors stay on their device, other inputs become NumPy."""
    kind = framework_of(obj)
    if kind == "numpy":
        return obj if type(obj) is np.ndarray else np.asarray(obj)
    if kind in ("torch", "jax"):
        return obj
    if kind == "tensorflow":
        from beholder_plugin.trainer.sources import tf_tensors as tf_support

        return tf_support.prepare(obj, label)
    return _as_numpy(obj, label)


def shape_of(obj: Any) -> tuple[int, ...]:
    """The shape of a prepared array-like as a tuple of ints."""
    return tuple(int(s) for s in obj.shape)


def to_float(values: Any, label: str) -> np.ndarray:
    """Compact values as float64: bool and ints converted, complex shown as magnitude."""
    values = np.asarray(values)
    kind = values.dtype.kind
    if kind == "c":
        return np.abs(values).astype(np.float64)
    if kind in "biuf":
        return values.astype(np.float64)
    if kind == "V" or values.dtype.name == "bfloat16":  # ml_dtypes types
        try:
            return values.astype(np.float32).astype(np.float64)
        except (TypeError, ValueError):
            pass
    raise RenderError(f"section {label}: values of dtype {values.dtype} cannot be shown")


def _finish(sub: np.ndarray, plan: SectionPlan) -> np.ndarray:
    """Index the fetched sub-array down to the compact section."""
    compact = np.asarray(sub[plan.local]) if plan.shape else np.asarray(sub).reshape(1, 1)
    if compact.shape != plan.compact_shape:
        compact = np.broadcast_to(compact, plan.compact_shape)
    return compact


def _fetch_torch(obj: Any, plan: SectionPlan) -> np.ndarray:
    import torch

    t = obj.detach()
    for axis, idx in enumerate(plan.axes):
        if idx is not None:
            t = t.index_select(axis, torch.as_tensor(idx, device=t.device))
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    if t.is_complex():
        t = t.abs()
    return _finish(t.cpu().numpy(), plan)


def _fetch_jax(obj: Any, plan: SectionPlan) -> np.ndarray:
    import jax.numpy as jnp

    x = obj
    for axis, idx in enumerate(plan.axes):
        if idx is not None:
            x = jnp.take(x, jnp.asarray(idx), axis=axis)
    return _finish(np.asarray(x), plan)


def fetch_compact(obj: Any, plan: SectionPlan, label: str) -> np.ndarray:
    """The plan's compact section of a prepared array, as float64, reading only what is shown."""
    kind = framework_of(obj)
    if kind == "numpy":
        values = plan.take(obj)
    elif kind == "torch":
        values = _fetch_torch(obj, plan)
    elif kind == "jax":
        values = _fetch_jax(obj, plan)
    elif kind == "tensorflow":
        from beholder_plugin.trainer.sources import tf_tensors as tf_support

        values = _finish(tf_support.fetch_sub(obj, plan.axes), plan)
    else:
        values = plan.take(_as_numpy(obj, label))
    return to_float(values, label)


def to_numpy(obj: Any, label: str = "frame") -> np.ndarray:
    """A whole array-like as NumPy (used for user frames, which are shown whole)."""
    kind = framework_of(obj)
    if kind == "torch":
        import torch

        t = obj.detach()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        return t.cpu().numpy()
    if kind == "tensorflow":
        from beholder_plugin.trainer.sources import tf_tensors as tf_support

        return tf_support.to_numpy(obj, label)
    return _as_numpy(obj, label)


def named_arrays(arrays: Any) -> list[tuple[str, Any]]:
    """(name, array) pairs from update(arrays=...): a dict names by key, a list or tuple by index."""
    if isinstance(arrays, Mapping):
        return [(str(k), v) for k, v in arrays.items()]
    if isinstance(arrays, (list, tuple)) and not _is_numeric_list(arrays):
        return [(str(i), v) for i, v in enumerate(arrays)]
    return [("0", arrays)]


def _is_numeric_list(value: Sequence) -> bool:
    """True for a flat list of numbers, which is one array rather than a list of arrays."""
    return len(value) > 0 and all(isinstance(v, (int, float, bool, np.number)) for v in value)


def named_variables(variables: Any) -> list[tuple[str, Any]]:
    """(name, variable) pairs for what 'trainable variables' means for this run."""
    if hasattr(variables, "trainable_variables"):
        found = list(variables.trainable_variables)
        return [(variable_name(v, i), v) for i, v in enumerate(found)]
    if hasattr(variables, "named_parameters"):
        return [(name, p) for name, p in variables.named_parameters() if p.requires_grad]
    if isinstance(variables, (Mapping, list, tuple)):
        return named_arrays(variables)
    raise TypeError(
        "variables must be a Keras model or tf.Module (with trainable_variables), a torch "
        f"module (with named_parameters()), or a list or dict of arrays; got {type(variables).__name__}"
    )


def variable_name(variable: Any, index: int) -> str:
    """A variable's path (Keras 3), else its name (tf.Variable), else its index."""
    for attr in ("path", "name"):
        value = getattr(variable, attr, None)
        if isinstance(value, str) and value:
            return value
    return str(index)
