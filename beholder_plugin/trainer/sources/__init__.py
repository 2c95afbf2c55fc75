"""Source adapters: one per framework, behind one interface, found through a registry.

An adapter is a module with these functions (the last is optional):

- ``prepare(obj, label)``: the object to plan and gather from (tensors stay
  on their device; refuses what cannot be shown, naming the section);
- ``compact(prepared, plan, label)``: the plan's compact section as a NumPy
  array, reading only the values a frame shows (sliced on the device first);
- ``whole(obj, label)``: the whole array as NumPy (for user frames);
- ``sample(prepared, runs)``: the statistics' sample (views.stats): runs
  of consecutive values in flat order, taken on the device;
- ``default_layout(obj, shape)``: the layout an array of this framework gets
  when nobody says (PyTorch: channels first); without it, the original's
  rule for TensorFlow's axis order.

Adapters are chosen by the root module of an object's type, so nothing here
imports TensorFlow, PyTorch or JAX: an adapter is imported only when an
object of its framework arrives, and by then the framework is loaded.

Example::

    from beholder_plugin.trainer import sources
    adapter = sources.adapter_for(tensor)
    prepared = adapter.prepare(tensor, "conv1/kernel")
    sources.gather_into(adapter, prepared, plan, out, "conv1/kernel")
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from beholder_plugin.protocol.layout import NoValues, RenderError
from beholder_plugin.protocol.plans import SectionPlan

# framework -> adapter module; the root package names of an object's type that select it
REGISTRY: dict[str, str] = {
    "numpy": "beholder_plugin.trainer.sources.numpy_arrays",
    "torch": "beholder_plugin.trainer.sources.torch_tensors",
    "tensorflow": "beholder_plugin.trainer.sources.tf_tensors",
    "jax": "beholder_plugin.trainer.sources.jax_arrays",
    "keras": "beholder_plugin.trainer.sources.keras_variables",
    "captured": "beholder_plugin.trainer.sources.captured",
}
ROOTS: dict[str, str] = {
    "torch": "torch",
    "tensorflow": "tensorflow",
    "keras": "keras",
    "tf_keras": "tensorflow",
    "jax": "jax",
    "jaxlib": "jax",
    "beholder_plugin": "captured",  # values watch() hooks captured (sources.captured.Captured)
}
_LOADED: dict[str, ModuleType] = {}
_BY_TYPE: dict[type, ModuleType] = {}
_NUMPY: ModuleType | None = None  # the NumPy adapter, which can gather straight into the buffer


def framework_of(obj: Any) -> str:
    """The registry key for an object, from its type alone ('numpy' for anything unknown)."""
    if isinstance(obj, np.ndarray):
        return "numpy"
    return ROOTS.get(type(obj).__module__.split(".", 1)[0], "numpy")


def adapter(framework: str) -> ModuleType:
    """The adapter module registered for a framework (imported on first use)."""
    global _NUMPY
    module = _LOADED.get(framework)
    if module is None:
        module = _LOADED[framework] = importlib.import_module(REGISTRY[framework])
        if framework == "numpy":
            _NUMPY = module
    return module


def adapter_for(obj: Any) -> ModuleType:
    """The adapter module for an object (looked up once per type)."""
    kind = type(obj)
    found = _BY_TYPE.get(kind)
    if found is None:
        found = adapter(framework_of(obj))
        if len(_BY_TYPE) < 256:
            _BY_TYPE[kind] = found
    return found


def shape_of(obj: Any) -> tuple[int, ...]:
    """The shape of a prepared array-like as a tuple of ints."""
    if type(obj) is np.ndarray:
        return obj.shape
    return tuple(int(s) for s in obj.shape)


def gather_into(source: ModuleType, prepared: Any, plan: SectionPlan, out: np.ndarray, label: str) -> None:
    """Copy the plan's compact section of a prepared array into out (float32, compact shape).

    Values beyond float32's range become inf, as they would be shown anyway.
    """
    if source is _NUMPY:  # NumPy arrays, and tensors read in place (in_place): straight into out
        values = source.compact(prepared, plan, label, out)
        if values is out or values.base is out:
            return
    else:
        values = source.compact(prepared, plan, label)
    if values.dtype == np.float32 and values.shape == out.shape:
        out[...] = values
        return
    kind = values.dtype.kind
    if kind == "c":
        values = np.abs(values)
    elif kind not in "biuf":
        try:  # ml_dtypes' bfloat16 and friends
            values = values.astype(np.float32)
        except (TypeError, ValueError):
            raise RenderError(f"section {label}: {_not_numbers(values)} cannot be shown") from None
    if values.shape != out.shape:
        values = np.broadcast_to(values, out.shape)
    with np.errstate(over="ignore", invalid="ignore"):
        np.copyto(out, values, casting="unsafe")


def run_positions(runs: tuple[int, int, int]) -> np.ndarray:
    """The flat positions of a statistics sample's runs (views.stats.sample_runs), in order."""
    count, stride, length = runs
    return (np.arange(count)[:, None] * stride + np.arange(length)[None, :]).reshape(-1)


def gather_sample(source: ModuleType, prepared: Any, runs: tuple[int, int, int], out: np.ndarray) -> None:
    """Copy a prepared array's statistics sample (views.stats) into out (float32), as gather_into does."""
    values = np.asarray(source.sample(prepared, runs))
    if values.dtype == np.float32:  # the usual case: a plain copy, nothing to convert or clip
        out[...] = values.reshape(-1)[: out.shape[0]]
        return
    kind = values.dtype.kind
    if kind == "c":
        values = np.abs(values)
    elif kind not in "biuf":
        values = values.astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        np.copyto(out, values.reshape(-1)[: out.shape[0]], casting="unsafe")


def in_place(obj: Any, source: ModuleType | None = None) -> tuple[ModuleType, Any]:
    """(adapter, object) to gather from: the NumPy adapter and a view of the object's memory where it can
    be read where it lies (a CPU torch tensor), else the object's own adapter (``source``) and the object."""
    source = source or adapter_for(obj)
    host_view = getattr(source, "host_view", None)
    if host_view is not None:
        view = host_view(obj)
        if view is not None:
            return adapter("numpy"), view
    return source, obj


def prepare(obj: Any, label: str) -> Any:
    """The object to plan and gather from, prepared by its framework's adapter."""
    return adapter_for(obj).prepare(obj, label)


def fetch_compact(obj: Any, plan: SectionPlan, label: str) -> np.ndarray:
    """The plan's compact section of a prepared object as a new float32 array."""
    out = np.empty(plan.compact_shape, np.float32)
    source, values = in_place(obj)
    gather_into(source, values, plan, out, label)
    return out


def finish(sub: np.ndarray, plan: SectionPlan) -> np.ndarray:
    """Index a gathered sub-array (``array[np.ix_(*plan.axes)]``) down to the compact section."""
    if not plan.shape:
        return np.asarray(sub).reshape(1, 1)
    return np.asarray(sub[plan.local])


# (section name, the object to show, its layout or None for the framework's default)
Named = tuple[str, Any, "str | None"]


def named_arrays(arrays: Any, layout: Any = None, warn: Callable[..., None] | None = None) -> list[Named]:
    """(name, array, layout) triples from update(arrays=..., layout=...).

    A dict names sections by key (a dict of JAX arrays in sorted key order,
    as JAX orders it), a list or tuple by index; a nested pytree
    of JAX arrays (Flax parameters) by key path, ``params/Dense_0/kernel``. ``layout`` is one
    layout for every array, or a dict of layouts by section name (sections
    not in it get their framework's default); names in it that were not
    passed are refused, or, given ``warn`` (``warn_once(key, message,
    *args)``), told once and ignored.
    """
    tree = _tree_pairs(arrays)
    if tree is not None:  # a nested pytree of JAX arrays: named by key path
        pairs = tree
    elif isinstance(arrays, Mapping):
        pairs = [(str(k), v) for k, v in _in_pytree_order(arrays)]
    elif isinstance(arrays, (list, tuple)) and not _is_numeric_list(arrays):
        pairs = [(str(i), v) for i, v in enumerate(arrays)]
    else:
        pairs = [("0", arrays)]
    if isinstance(layout, Mapping):
        chosen = {str(k): v for k, v in layout.items()}
        unknown = sorted(set(chosen) - {name for name, _ in pairs})
        if unknown and warn is None:
            raise RenderError(f"layout names sections that were not passed: {', '.join(unknown)}")
        if unknown:  # (a dict of layouts for arrays passed at some steps only: the others are shown)
            warn(f"layout:{','.join(unknown)}", "Beholder: layout= names sections that were not passed, "
                 "ignored: %s", ", ".join(unknown))
        return [(name, obj, chosen.get(name)) for name, obj in pairs]
    if layout is not None and not isinstance(layout, str):
        raise TypeError(f"layout must be a layout name or a dict of them, not {type(layout).__name__}")
    return [(name, obj, layout) for name, obj in pairs]


def _tree_pairs(arrays: Any) -> list[tuple[str, Any]] | None:
    """(key path, array) pairs when arrays is a nested pytree of JAX arrays (JAX loaded), else None."""
    if "jax" not in sys.modules or not isinstance(arrays, (Mapping, list, tuple)):
        return None
    values = arrays.values() if isinstance(arrays, Mapping) else arrays
    nested = (isinstance(v, (Mapping, list, tuple)) or type(v).__module__.startswith("flax.") for v in values)
    if not any(nested):
        return None  # a flat dict or list: the usual rules name it
    from beholder_plugin.trainer.sources import pytrees

    return pytrees.flatten(arrays)


def _in_pytree_order(arrays: Mapping) -> list[tuple[Any, Any]]:
    """A dict's items; a dict of JAX arrays in JAX's own pytree order (sorted keys), the order every
    jitted function returns it in, so that the dict made before training and the ones a step returns
    show the same sections in the same order (and share one compiled device gather)."""
    items = list(arrays.items())
    jax = sys.modules.get("jax")
    if jax is None or not items or not isinstance(items[0][1], jax.Array):
        return items
    try:
        return sorted(items, key=lambda item: item[0])
    except TypeError:  # keys that do not sort (JAX itself refuses such a dict)
        return items


def _is_numeric_list(value: Sequence) -> bool:
    """True for a flat list of numbers, which is one array rather than a list of arrays."""
    return len(value) > 0 and all(isinstance(v, (int, float, bool, np.number)) for v in value)


def named_variables(variables: Any) -> list[Named]:
    """(name, variable, layout) triples for what 'trainable variables' means for this run.

    Layouts come from the layer or module that owns each variable: a Keras
    model's convolution kernels are HWIO whatever the backend, a torch
    module's are OIHW, a torch ``Linear`` weight is (out, in).
    """
    problem = variables_problem(variables)  # (what is accepted is said there, once)
    if problem is not None:
        raise TypeError(problem)
    # (a Keras model first: on Keras's torch backend it is a torch module too, whose parameters would be
    # named after its private tracker and laid out as torch's OIHW)
    if is_torch_module(variables) and not is_keras_layer(variables):
        from beholder_plugin.trainer.sources import torch_modules

        return torch_modules.trainable_parameters(variables)
    if is_nnx_module(variables):  # Flax NNX: its nnx.Param variables, named by path
        from beholder_plugin.trainer.sources import pytrees

        return pytrees.nnx_parameters(variables)
    if hasattr(variables, "trainable_variables"):
        found = list(variables.trainable_variables)
        layouts: dict[int, str] = {}
        owner = variables if is_keras_layer(variables) else getattr(variables, "keras_model", None)
        if is_keras_layer(owner):
            from beholder_plugin.trainer.sources import keras_variables

            layouts = keras_variables.layouts_by_variable(owner)
        return [(variable_name(v, i), v, layouts.get(id(v))) for i, v in enumerate(found)]
    if hasattr(variables, "named_parameters"):
        return [(name, p, None) for name, p in variables.named_parameters() if p.requires_grad]
    return named_arrays(variables)  # (a list, dict or pytree of arrays)


def variables_problem(variables: Any) -> str | None:
    """Why ``variables`` cannot be a run's trainable variables (None when it can), said to the user."""
    if (is_torch_module(variables) or is_nnx_module(variables)
            or hasattr(variables, "trainable_variables") or hasattr(variables, "named_parameters")
            or isinstance(variables, (Mapping, list, tuple))):
        return None
    kind = type(variables)
    linen = getattr(sys.modules.get("flax.linen"), "Module", None)
    if linen is not None and isinstance(variables, linen):
        return (f"variables got a Flax linen module ({kind.__name__}), which holds no arrays: pass its "
                "parameters, the pytree model.init() returns (params = model.init(key, x)), and, as a "
                "JAX step returns new arrays, hand the current ones to each update(variables=params)")
    return ("variables must be a Keras model or tf.Module (with trainable_variables), a torch module "
            "(with named_parameters()), a Flax NNX module, or a list, dict or pytree of arrays (JAX: the "
            f"parameters, e.g. what model.init() returns); got {kind.__name__}")


def is_torch_module(obj: Any) -> bool:
    """True for a torch.nn.Module (user subclasses included); never imports torch."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def is_nnx_module(obj: Any) -> bool:
    """True for a Flax NNX module (user subclasses included); never imports Flax."""
    nnx = sys.modules.get("flax.nnx")
    module = getattr(nnx, "Module", None)
    return module is not None and isinstance(obj, module)


def not_built(model: Any) -> bool:
    """Whether a model has no variables yet only because it is not built: a Keras model before its first
    call (no Input), a torch module whose Lazy layers have not run forward."""
    if is_keras_layer(model):
        return not getattr(model, "built", True)
    if is_torch_module(model):
        lazy = sys.modules["torch"].nn.parameter.UninitializedParameter
        return any(isinstance(p, lazy) for p in model.parameters())
    return False


def is_keras_layer(obj: Any) -> bool:
    """True for a Keras 3 layer or model (user subclasses included); never imports Keras."""
    keras = sys.modules.get("keras")
    layer = getattr(getattr(keras, "layers", None), "Layer", None)
    return layer is not None and isinstance(obj, layer)


def variable_name(variable: Any, index: int) -> str:
    """A variable's path (Keras 3), else its name (tf.Variable), else its index."""
    for attr in ("path", "name"):
        value = getattr(variable, attr, None)
        if isinstance(value, str) and value:
            return value
    return str(index)


def to_numpy(obj: Any, label: str = "frame") -> np.ndarray:
    """A whole array-like as NumPy (used for user frames, which are shown whole)."""
    return adapter_for(obj).whole(obj, label)


def prepare_section(obj: Any, label: str) -> tuple[ModuleType, Any]:
    """The adapter and prepared object for one section; RenderError naming the section if it is no array."""
    if obj is None:
        raise NoValues(
            f"section {label}: no array (None), e.g. the gradient of a frozen or unused parameter"
        )
    if is_torch_module(obj) or is_keras_layer(obj) or is_nnx_module(obj):
        raise RenderError(
            f"section {label}: got a model ({type(obj).__name__}), not an array; to see its weights "
            "pass variables=model, or call beholder.watch(model)"
        )
    source = adapter_for(obj)
    return source, source.prepare(obj, label)


def _not_numbers(values: np.ndarray) -> str:
    """What the values of an array whose dtype has no conversion to float32 are, in words."""
    dtype = values.dtype
    if dtype.names == ("float0",):
        return "a float0 array (JAX's gradient of an integer value: it holds no numbers)"
    what = {"O": "Python objects", "S": "bytes strings", "U": "strings", "V": "structured or raw bytes"}
    if dtype.kind == "O" and values.size and isinstance(values.flat[0], (bytes, str)):
        what["O"] = "strings"  # (a tf.string tensor's values, which TF hands NumPy as bytes objects)
    return f"values of dtype {dtype} ({what.get(dtype.kind, 'not numbers')})"


def refuse_inside_tf_function() -> None:
    """Raise when update() is being traced inside tf.function, where it would see no values.

    Checked on every call, not only when a frame is due, so that the mistake
    shows on the first trace rather than never. Costs nothing without TensorFlow.
    """
    if "tensorflow" not in sys.modules:
        return
    from beholder_plugin.trainer.sources import tf_tensors

    if tf_tensors.in_tf_function():
        raise tf_tensors.SymbolicTensorError(
            "Beholder.update() was called inside tf.function, where Python runs only while "
            "tracing and sees no values: call update() outside it (return the tensors you want "
            "to see from the tf.function), or use BeholderCallback with model.fit()"
        )
