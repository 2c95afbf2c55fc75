"""TensorFlow adapter: eager tensors and variables sliced on their device, and the TF1 session path.

Imported only when a TensorFlow or Keras object reaches Beholder (or when
``update(session=...)`` is used), so TensorFlow is already loaded by then.

Two ways in:

- eager (TF2, Keras 3): ``prepare`` turns a Keras variable, ``tf.Variable``,
  ``tf.Tensor`` or ``tf.IndexedSlices`` into something ``fetch_sub`` can
  gather from on the device, so only the values a frame shows are copied.
- graph (TF1 through ``tf.compat.v1``): ``session_variable_shapes`` lists the
  session graph's trainable variables and ``session_fetch`` runs cached
  gather ops for them in one ``session.run``.

Symbolic tensors (inside ``tf.function``, a Keras functional graph, or a TF1
graph without a session) are refused with a ``SymbolicTensorError`` that says
what to do instead; they never reach NumPy.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from beholder_plugin.protocol.layout import RenderError
from beholder_plugin.protocol.plans import SectionPlan
from beholder_plugin.trainer.sources import finish, run_positions


class SymbolicTensorError(RenderError):
    """A symbolic tensor, or a call inside tf.function: Beholder needs concrete values."""

    # AutoGraph re-raises an error from traced code under its own type only when the type's
    # __init__ is Exception's (otherwise it becomes a StagingError); keep it catchable.
    __init__ = Exception.__init__


_IN_FUNCTION_HINT = (
    "Beholder.update() runs Python at trace time only, so it cannot see values inside "
    "tf.function (or a Keras train_step). Return the tensors from the tf.function and call "
    "update() outside it, or use BeholderCallback with model.fit()"
)


def _tf():
    import tensorflow as tf

    return tf


def in_tf_function() -> bool:
    """True while a tf.function (or Keras' compiled train step) is being traced."""
    return bool(_tf().inside_function())


def _is_keras_object(obj: Any) -> bool:
    return type(obj).__module__.split(".", 1)[0] in ("keras", "tf_keras")


def _refuse_symbolic(label: str, what: str) -> SymbolicTensorError:
    if in_tf_function():
        return SymbolicTensorError(
            f"section {label}: got {what} inside tf.function. {_IN_FUNCTION_HINT}"
        )
    return SymbolicTensorError(
        f"section {label}: got {what}, which has no value yet. In TF1 graph mode pass "
        "session= to update() for the trainable variables, or session.run() the tensors "
        "and pass the resulting NumPy arrays"
    )


def prepare(obj: Any, label: str) -> Any:
    """A tensor or variable that can be sliced eagerly; refuses symbolic tensors, saying why."""
    tf = _tf()
    if _is_keras_object(obj):
        if type(obj).__name__ == "KerasTensor":
            raise _refuse_symbolic(label, "a symbolic KerasTensor (a layer output)")
        value = getattr(obj, "value", None)  # keras.Variable -> the backend tf.Variable
        if value is not None:
            obj = value() if callable(value) else value
    if in_tf_function():
        raise _refuse_symbolic(label, f"a {type(obj).__name__}")
    if isinstance(obj, tf.IndexedSlices):  # sparse gradients, e.g. of an embedding
        if not tf.executing_eagerly():
            raise _refuse_symbolic(label, "a symbolic tf.IndexedSlices")
        obj = tf.convert_to_tensor(obj)
    if isinstance(obj, (tf.RaggedTensor, tf.SparseTensor)):
        raise RenderError(
            f"section {label}: {type(obj).__name__} has no fixed shape; pass .to_tensor() "
            "(RaggedTensor) or tf.sparse.to_dense() (SparseTensor)"
        )
    if isinstance(obj, tf.Variable):
        if not tf.executing_eagerly():
            raise _refuse_symbolic(label, f"the graph variable {obj.name}")
    elif tf.is_tensor(obj):
        if not hasattr(obj, "numpy") or not tf.executing_eagerly():
            name = getattr(obj, "name", "")
            raise _refuse_symbolic(label, f"the symbolic tensor {name}".rstrip())
    else:
        raise RenderError(f"section {label}: {type(obj).__name__} is not a tensor or variable")
    if not obj.shape.is_fully_defined():
        raise RenderError(f"section {label}: the shape {obj.shape} is not fully known")
    return obj


def _to_host(x: Any) -> np.ndarray:
    """An eager tensor as NumPy; half floats become float32; a symbolic tensor is refused."""
    tf = _tf()
    if x.dtype in (tf.bfloat16, tf.float16):
        x = tf.cast(x, tf.float32)
    if not hasattr(x, "numpy") or not tf.executing_eagerly():
        raise _refuse_symbolic("?", "a symbolic tensor")
    return x.numpy()


def fetch_sub(obj: Any, axes: tuple) -> np.ndarray:
    """obj[np.ix_(*axes)] computed on the device (None: whole axis), copied to NumPy."""
    tf = _tf()
    x = obj
    for axis, idx in enumerate(axes):
        if idx is not None:
            x = tf.gather(x, idx, axis=axis)
    if isinstance(x, tf.Variable):  # no axis was gathered: the whole (small) variable is shown
        x = x.read_value()
    return _to_host(x)


def compact(obj: Any, plan: SectionPlan, label: str) -> np.ndarray:
    """The plan's compact section of a prepared tensor, gathered on the device first."""
    return finish(fetch_sub(obj, plan.axes), plan)


def sample(obj: Any, runs: tuple[int, int, int]) -> np.ndarray:
    """The sample's runs of consecutive values (views.stats), sliced on the device, then copied."""
    tf = _tf()
    flat = tf.reshape(obj, [-1])
    if runs[0] == 1:  # the whole (small) array
        return _to_host(flat)
    return _to_host(tf.gather(flat, run_positions(runs)))  # two eager ops whatever the number of runs


def whole(obj: Any, label: str) -> np.ndarray:
    """A whole tensor as NumPy (bfloat16 and float16 as float32)."""
    obj = prepare(obj, label)
    tf = _tf()
    if isinstance(obj, tf.Variable):
        obj = obj.read_value()
    return _to_host(obj)


# ---------------------------------------------------------------- TF1 sessions


class _GraphCache:
    """Gather ops built once per (variable, plan) in one session graph."""

    def __init__(self) -> None:
        self.ops: dict[tuple[str, int], tuple[SectionPlan, Any]] = {}
        self.lock = threading.Lock()


_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CACHE_LIMIT = 8192


def _trainable_variables(session: Any) -> list:
    tf = _tf()
    graph = session.graph
    return list(graph.get_collection(tf.compat.v1.GraphKeys.TRAINABLE_VARIABLES))


def session_variable_shapes(session: Any) -> tuple[list[str], list[tuple[int, ...]]]:
    """Names (var.name) and shapes of the session graph's TF1 trainable variables."""
    names: list[str] = []
    shapes: list[tuple[int, ...]] = []
    for var in _trainable_variables(session):
        shape = var.shape
        if not shape.is_fully_defined():
            raise RenderError(f"section {var.name}: the shape {shape} is not fully known")
        names.append(var.name)
        shapes.append(tuple(int(s) for s in shape))
    if not names:
        raise RenderError(
            "the session's graph has no trainable variables (was the session made for "
            "another graph?)"
        )
    return names, shapes


def _gather_op(var: Any, plan: SectionPlan) -> Any:
    """The graph op reading just the plan's sub-array of var (half floats cast to float32)."""
    tf = _tf()
    with tf.name_scope("beholder"):
        x = var.value() if hasattr(var, "value") else var
        for axis, idx in enumerate(plan.axes):
            if idx is not None:
                x = tf.gather(x, tf.constant(idx, dtype=tf.int64), axis=axis)
        if x.dtype in (tf.bfloat16, tf.float16):
            x = tf.cast(x, tf.float32)
        return tf.identity(x)


def session_fetch(session: Any, plans: Sequence[SectionPlan]) -> list[np.ndarray]:
    """The compact section of each trainable variable of the session's graph, in one session.run.

    Gather ops are built in the session's graph the first time a (variable,
    plan) pair is seen and reused afterwards, so the graph stops growing once
    the dashboard settings stop changing. If the graph is finalized (as in a
    ``MonitoredTrainingSession``) and an op is missing, whole variables are
    fetched instead.
    """
    variables = _trainable_variables(session)
    if len(variables) != len(plans):
        raise RenderError(
            f"the session graph has {len(variables)} trainable variables but {len(plans)} "
            "plans were given (was a variable added between calls?)"
        )
    graph = session.graph
    cache = _CACHES.get(graph)
    if cache is None:
        cache = _CACHES.setdefault(graph, _GraphCache())
    fetches = []
    whole = []
    with cache.lock:
        for var, plan in zip(variables, plans):
            key = (var.name, id(plan))
            hit = cache.ops.get(key)
            if hit is not None and hit[0] is plan:
                fetches.append(hit[1])
                whole.append(False)
                continue
            if graph.finalized:
                fetches.append(var)
                whole.append(True)
                continue
            if len(cache.ops) >= _CACHE_LIMIT:
                cache.ops.clear()
            with graph.as_default():
                op = _gather_op(var, plan)
            cache.ops[key] = (plan, op)
            fetches.append(op)
            whole.append(False)
    values = session.run(fetches)
    out = []
    for value, plan, is_whole in zip(values, plans, whole):
        value = np.asarray(value)
        if is_whole:
            compact = plan.take(value)
        elif plan.shape:
            compact = value[plan.local]
        else:
            compact = value.reshape(1, 1)
        if compact.dtype.name == "bfloat16":
            compact = compact.astype(np.float32)
        out.append(np.asarray(compact).reshape(plan.compact_shape))
    return out
