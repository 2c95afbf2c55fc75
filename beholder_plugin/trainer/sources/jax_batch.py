"""A frame's JAX arrays on an accelerator gathered by one jitted function, copied to the host asynchronously.

Per frame plan and set of array shapes, one ``jax.jit`` function takes
every section's shown values and statistics sample (flat positions uploaded
once per plan, kept on the device), converts them to float32 and lays them
out in the frame's order. ``update()`` only dispatches it and starts
``copy_to_host_async()``; the worker reads the result. Arrays held whole by
one device, or replicated over several (data parallel: read from the
first), are batched; sharded arrays keep the per-section path.

Example::

    gather = JaxGather(device, plan)
    pending = gather.launch([(0, params["w"]), (1, params["b"])])
    host = pending.wait()   # on the worker
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from beholder_plugin.trainer.sources.traced_batch import TracedGather, TracedPending

# Gather CPU arrays through the batched path too (tests; BEHOLDER_BATCH_CPU_TENSORS=1 in the environment).
BATCH_CPU_ARRAYS = os.environ.get("BEHOLDER_BATCH_CPU_TENSORS") == "1"


def batch_device(x: Any) -> Any:
    """The one device an array is gathered on in a batch (a replicated array's first), or None (sharded,
    on the CPU, or not an array; or one the frame's one jitted gather could not take: then it alone
    would fail, not every section).

    Those are a deleted (donated) array, one of an extended dtype (a typed
    PRNG key), one in host memory (``memory_kind`` "pinned_host": a jitted
    function takes inputs of one memory space), and one of 2**31 values or
    more without 64-bit JAX (its positions would be truncated to int32).
    """
    try:
        if x.is_deleted():
            return None
        jax = sys.modules["jax"]
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.extended):
            return None
        sharding = x.sharding
        if getattr(sharding, "memory_kind", None) not in (None, "device"):
            return None
        if not x.is_fully_addressable or (x.size >= 2**31 and not jax.config.jax_enable_x64):
            return None
        devices = sharding.device_set
        if len(devices) == 1:
            device = next(iter(devices))
        elif x.is_fully_replicated:  # (data parallel: each device holds all of it; read the first's)
            device = x.addressable_shards[0].device
        else:
            return None
    except Exception:  # not a JAX array, or an unusual one: the per-section path says why
        return None
    if device.platform == "cpu" and not BATCH_CPU_ARRAYS:
        return None
    return device


def one_copy(x: Any) -> Any:
    """An array held by one device as it is; a replicated one as its copy on batch_device()'s device."""
    return x if len(x.sharding.device_set) == 1 else x.addressable_data(0)


class JaxGather(TracedGather):
    """The jitted gathers and device positions of one frame plan's sections on one JAX device."""

    def _upload(self, flat: np.ndarray) -> Any:
        """Positions on the device (int32 where they fit)."""
        import jax

        dtype = np.int32 if flat.size == 0 or flat.max() < 2**31 else np.int64
        return jax.device_put(flat.astype(dtype), self.device)

    def trace(self, sections: list[int], bounds: list[int]) -> Any:
        """A jitted function: arrays and positions -> the frame's float32 values then samples."""
        import jax
        import jax.numpy as jnp

        def figures(x: Any) -> Any:
            """The array's FIGURES (traced_batch): one pass over its magnitudes."""
            a = x.reshape(-1)
            if jnp.iscomplexobj(a):
                a = jnp.abs(a)
            elif not jnp.issubdtype(a.dtype, jnp.floating) or a.dtype.itemsize < 4:
                a = a.astype(jnp.float32)  # (first: narrow integers have no abs)
            a = jnp.abs(a)
            finite = jnp.isfinite(a)
            clean = jnp.where(finite, a, 0)
            largest = jnp.max(clean)
            exponent = jnp.where(largest > 0, jnp.floor(jnp.log2(largest)), 0)
            half = jnp.floor(exponent / 2)  # (2**-exponent in two factors: it may not fit the dtype)
            scaled = clean * jnp.exp2(-half) * jnp.exp2(half - exponent)
            norm = jnp.sqrt(jnp.sum(scaled * scaled))
            counts = jnp.stack([jnp.sum(~finite), jnp.sum(jnp.isnan(a))]).astype(jnp.float32)
            return jnp.concatenate([jnp.stack([exponent, norm]).astype(jnp.float32), counts])

        def gather(arrays: tuple, positions: Any) -> Any:
            parts = []
            for k, x in enumerate(arrays):
                part = jnp.take(x.reshape(-1), positions[bounds[k] : bounds[k + 1]])
                if jnp.iscomplexobj(part):
                    part = jnp.abs(part)
                parts.append(part.astype(jnp.float32))
            whole = [figures(x) for x in arrays]
            pieces = self.arrange(sections, parts, lambda n: jnp.zeros(n, jnp.float32), whole)
            return jnp.concatenate(pieces)

        return jax.jit(gather)  # runs where its inputs are: on the arrays' device

    def abstract(self, arrays: list[Any]) -> Any:
        """Each array's shape, dtype, weak type and (when committed to it) sharding: what warm()
        compiles for (a donated array is gone by the time warm() runs)."""
        import jax

        return tuple(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding if x.committed else None,
                                          weak_type=x.weak_type)
                     for x in map(one_copy, arrays))

    def warm(self, function: Any, abstract: Any, positions: Any) -> Any:
        """Lower and compile the jitted gather; the frames call that executable itself.

        jit's own cache would not always find it: its key holds what the
        calling thread has set (``jax.default_device``, a mesh, x64,
        matmul precision: the training thread's, not this one's) and the
        arrays' committed-ness, which may change between frames. Arrays the
        executable was not compiled for (it raises TypeError or ValueError
        before running) go to the jitted function, which compiles for them.
        """
        compiled = function.lower(abstract, positions).compile()

        def call(arrays: tuple, positions: Any) -> Any:
            try:
                return compiled(arrays, positions)
            except (TypeError, ValueError):
                return function(arrays, positions)

        return call

    def _call(self, function: Any, arrays: list[Any], positions: Any, sections: list[int]) -> TracedPending:
        """Dispatch the function and start the copy to the host."""
        result = function(tuple(map(one_copy, arrays)), positions)
        result.copy_to_host_async()
        return TracedPending(result, sections)
