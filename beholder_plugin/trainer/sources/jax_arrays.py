"""JAX adapter: arrays sliced with jnp.take per axis, then copied to the host (sharded ones too)."""

from __future__ import annotations

from typing import Any

import numpy as np

from beholder_plugin.protocol.layout import RenderError
from beholder_plugin.protocol.plans import SectionPlan
from beholder_plugin.trainer.sources import finish, jax_batch


def prepare(obj: Any, label: str) -> Any:
    """The array itself; refused (naming the section) when it is a tracer inside jax.jit or grad."""
    import jax

    tracer = getattr(getattr(jax, "core", None), "Tracer", None)
    if tracer is not None and isinstance(obj, tracer):
        raise RenderError(
            f"section {label}: a JAX tracer has no values (update() was called inside jax.jit, grad or "
            "vmap, where Python runs only while tracing): call update() outside, on the arrays the "
            "function returns"
        )
    if isinstance(obj, jax.ShapeDtypeStruct):
        raise RenderError(
            f"section {label}: a jax.ShapeDtypeStruct ({obj.dtype}{list(obj.shape)}) holds a shape and a "
            "dtype, no values (what jax.eval_shape returns): pass the arrays themselves"
        )
    return obj


def host_view(x: Any) -> np.ndarray | None:
    """A NumPy view of an array held whole by one CPU device (no copy), else None (GPU, TPU, sharded).

    Slicing on the device costs a dispatch per axis (60 us for a small kernel
    here); an array already in host memory is read where it lies, as NumPy.
    """
    if jax_batch.BATCH_CPU_ARRAYS:
        return None
    try:
        devices = x.sharding.device_set
        if len(devices) != 1 or next(iter(devices)).platform != "cpu" or not x.is_fully_addressable:
            return None
        return np.asarray(x)
    except Exception:  # a deleted (donated) buffer, an unusual array type: the device path says why
        return None


def compact(x: Any, plan: SectionPlan, label: str) -> np.ndarray:
    """The plan's compact section: the shown rows and columns taken on the device first."""
    import jax.numpy as jnp

    for axis, idx in enumerate(plan.axes):
        if idx is not None:
            x = jnp.take(x, jnp.asarray(idx), axis=axis)
    return finish(np.asarray(x), plan)


def sample(x: Any, runs: tuple[int, int, int]) -> np.ndarray:
    """The sample's runs of consecutive values (views.stats), taken on the device first."""
    count, stride, length = runs
    return np.asarray(x.reshape(-1)[: count * stride].reshape(count, stride)[:, :length])


def whole(obj: Any, label: str) -> np.ndarray:
    """The whole array on the host."""
    return np.asarray(obj)
