"""A frame's TensorFlow tensors and variables on a GPU gathered by one ``tf.function`` per plan.

The function takes every section's shown values and statistics sample
(flat positions made once per plan and kept on the device as constants),
casts them to float32 and lays them out in the frame's order, in one call;
``update()`` only dispatches it, and the worker reads the result. Keras
variables on the TensorFlow backend arrive here as their ``tf.Variable``.

Example::

    gather = TfGather("/device:GPU:0", plan)
    pending = gather.launch([(0, dense.kernel.value), (1, dense.bias.value)])
    host = pending.wait()   # on the worker
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from beholder_plugin.trainer.sources.jax_batch import c_strides
from beholder_plugin.trainer.sources.torch_batch import storage_offsets

# Gather CPU tensors through the batched path too (tests; BEHOLDER_BATCH_CPU_TENSORS=1 in the environment).
BATCH_CPU_TENSORS = os.environ.get("BEHOLDER_BATCH_CPU_TENSORS") == "1"


def batch_device(x: Any) -> str | None:
    """The device a prepared tensor or variable is gathered on in a batch, or None (on the CPU)."""
    device = getattr(x, "device", None)
    if not isinstance(device, str) or not device:
        return None
    if "GPU" not in device.upper() and not BATCH_CPU_TENSORS:
        return None
    return device


@dataclass
class TfPending:
    """A batch's result, computed on the device: ``wait()`` (on the worker) copies it to the host."""

    result: Any
    sections: list[int]

    def wait(self) -> np.ndarray:
        """Block until the values are on the host, then a float32 NumPy array."""
        host = self.result.numpy()
        return host if host.flags.writeable else host.copy()


class TfGather:
    """The traced gather and device index constants of one frame plan's sections on one device."""

    def __init__(self, device: str, plan: Any) -> None:
        self.device = device
        self.plan = plan
        self._functions: dict[tuple, Any] = {}
        self._indices: dict[tuple, Any] = {}

    def launch(self, entries: list[tuple[int, Any]]) -> TfPending:
        """Dispatch the gather of these (section, tensor or variable) entries; never waits for the device."""
        return self.launch_sections([i for i, _ in entries], [x for _, x in entries])

    def launch_sections(self, sections: list[int], tensors: list[Any]) -> TfPending:
        """launch() with the sections and their tensors as two lists."""
        import tensorflow as tf

        sections = tuple(sections)
        function = self._functions.get(sections)
        if function is None:
            if len(self._functions) >= 8:
                self._functions.clear()
            function = self._functions[sections] = self._trace(sections)
        indices = [self._index(i, tuple(int(s) for s in x.shape)) for i, x in zip(sections, tensors)]
        with tf.device(self.device):
            result = function(tensors, indices)
        return TfPending(result, list(sections))

    def _index(self, i: int, shape: tuple[int, ...]) -> Any:
        """Section i's flat positions (shown values, then sample) on the device, made once."""
        key = (i, shape)
        found = self._indices.get(key)
        if found is None:
            import tensorflow as tf

            plan = self.plan
            n = int(plan.sample_offsets[i + 1] - plan.sample_offsets[i])
            flat = storage_offsets(plan.plans[i], shape, c_strides(shape), plan.sample_steps[i], n)
            with tf.device(self.device):
                found = self._indices[key] = tf.identity(tf.constant(flat, dtype=tf.int64))
        return found

    def _trace(self, sections: tuple[int, ...]) -> Any:
        """A tf.function: tensors and indices -> the frame's float32 values then samples (others zero)."""
        import tensorflow as tf

        plan = self.plan
        ours = {i: k for k, i in enumerate(sections)}
        shown = [int(s) for s in plan.sizes]
        sampled = [int(plan.sample_offsets[i + 1] - plan.sample_offsets[i]) for i in range(len(shown))]

        def gather(tensors: list, indices: list) -> Any:
            parts = []
            for x, index in zip(tensors, indices):
                part = tf.gather(tf.reshape(x, [-1]), index)
                if part.dtype.is_complex:
                    part = tf.abs(part)
                parts.append(tf.cast(part, tf.float32))
            values = [parts[ours[i]][: shown[i]] if i in ours else tf.zeros([shown[i]], tf.float32)
                      for i in range(len(shown))]
            samples = [parts[ours[i]][shown[i]:] if i in ours else tf.zeros([sampled[i]], tf.float32)
                       for i in range(len(shown))]
            return tf.concat(values + samples, axis=0)

        return tf.function(gather, reduce_retracing=True)
