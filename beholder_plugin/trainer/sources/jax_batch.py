"""A frame's JAX arrays on an accelerator gathered by one jitted function, copied to the host asynchronously.

Per frame plan and set of array shapes, one ``jax.jit`` function takes
every section's shown values and statistics sample (flat positions uploaded
once per plan, kept on the device), converts them to float32 and lays them
out in the frame's order. ``update()`` only dispatches it and starts
``copy_to_host_async()``; the worker reads the result. Arrays held whole by
one device are batched; sharded arrays keep the per-section path.

Example::

    gather = JaxGather(device, plan)
    pending = gather.launch([(0, params["w"]), (1, params["b"])])
    host = pending.wait()   # on the worker
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from beholder_plugin.trainer.sources.torch_batch import storage_offsets

# Gather CPU arrays through the batched path too (tests; BEHOLDER_BATCH_CPU_TENSORS=1 in the environment).
BATCH_CPU_ARRAYS = os.environ.get("BEHOLDER_BATCH_CPU_TENSORS") == "1"


def batch_device(x: Any) -> Any:
    """The one device an array is gathered on in a batch, or None (sharded, on the CPU, or not an array)."""
    try:
        devices = x.sharding.device_set
        if len(devices) != 1 or not x.is_fully_addressable:
            return None
        device = next(iter(devices))
    except Exception:  # a deleted (donated) buffer or an unusual array: the per-section path says why
        return None
    if device.platform == "cpu" and not BATCH_CPU_ARRAYS:
        return None
    return device


def c_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides of a C-ordered array of this shape (JAX arrays are indexed in that order)."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


@dataclass
class JaxPending:
    """A batch's result on its way to the host: ``wait()`` (on the worker) returns it as NumPy."""

    result: Any
    sections: list[int]

    def wait(self) -> np.ndarray:
        """Block until the values are on the host, then a writable float32 NumPy array."""
        host = np.asarray(self.result)
        return host if host.flags.writeable else host.copy()


class JaxGather:
    """The jitted gathers and device indices of one frame plan's sections on one JAX device."""

    def __init__(self, device: Any, plan: Any) -> None:
        self.device = device
        self.plan = plan
        self._functions: dict[tuple, Any] = {}
        self._indices: dict[tuple, Any] = {}

    def launch(self, entries: list[tuple[int, Any]]) -> JaxPending:
        """Dispatch the gather of these (section, array) entries and start the copy; never waits."""
        return self.launch_sections([i for i, _ in entries], [x for _, x in entries])

    def launch_sections(self, sections: list[int], arrays: list[Any]) -> JaxPending:
        """launch() with the sections and their arrays as two lists."""
        arrays = tuple(arrays)
        key = (tuple(sections), tuple((tuple(x.shape), str(x.dtype)) for x in arrays))
        function = self._functions.get(key)
        if function is None:
            if len(self._functions) >= 8:
                self._functions.clear()
            function = self._functions[key] = self._compile(sections)
        indices = tuple(self._index(i, tuple(x.shape)) for i, x in zip(sections, arrays))
        result = function(arrays, indices)
        result.copy_to_host_async()
        return JaxPending(result, sections)

    def _index(self, i: int, shape: tuple[int, ...]) -> Any:
        """Section i's flat positions (shown values, then sample) on the device, uploaded once."""
        key = (i, shape)
        found = self._indices.get(key)
        if found is None:
            import jax

            plan = self.plan
            n = int(plan.sample_offsets[i + 1] - plan.sample_offsets[i])
            flat = storage_offsets(plan.plans[i], shape, c_strides(shape), plan.sample_steps[i], n)
            dtype = np.int32 if flat.size == 0 or flat.max() < 2**31 else np.int64
            found = self._indices[key] = jax.device_put(flat.astype(dtype), self.device)
        return found

    def _compile(self, sections: list[int]) -> Any:
        """A jitted function: arrays and indices -> the frame's float32 values then samples (others zero)."""
        import jax
        import jax.numpy as jnp

        plan = self.plan
        ours = {i: k for k, i in enumerate(sections)}
        shown = [int(s) for s in plan.sizes]
        sampled = [int(plan.sample_offsets[i + 1] - plan.sample_offsets[i]) for i in range(len(shown))]

        def gather(arrays: tuple, indices: tuple) -> Any:
            parts = []
            for x, index in zip(arrays, indices):
                part = jnp.take(x.reshape(-1), index)
                if jnp.iscomplexobj(part):
                    part = jnp.abs(part)
                parts.append(part.astype(jnp.float32))
            values = [parts[ours[i]][: shown[i]] if i in ours else jnp.zeros(shown[i], jnp.float32)
                      for i in range(len(shown))]
            samples = [parts[ours[i]][shown[i]:] if i in ours else jnp.zeros(sampled[i], jnp.float32)
                       for i in range(len(shown))]
            return jnp.concatenate(values + samples)

        return jax.jit(gather)  # runs where its inputs are: on the arrays' device
