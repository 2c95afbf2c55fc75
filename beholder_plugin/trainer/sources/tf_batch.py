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
from typing import Any

import numpy as np

from beholder_plugin.trainer.sources.traced_batch import TracedGather, TracedPending

# Gather CPU tensors through the batched path too (tests; BEHOLDER_BATCH_CPU_TENSORS=1 in the environment).
BATCH_CPU_TENSORS = os.environ.get("BEHOLDER_BATCH_CPU_TENSORS") == "1"
# The dtypes TensorFlow has a GPU GatherV2 kernel for (gather_op.cc: int32, int64 and the GPU types). A
# tensor of another (int8, uint8, int16, uint16, uint32, uint64) is cast to float32 on the device first:
# its gather would otherwise be placed on the CPU, and copy the whole tensor there and back, blocking.
GPU_GATHER_DTYPES = frozenset(
    ["int32", "int64", "float16", "bfloat16", "float32", "float64", "complex64", "complex128", "bool"])


def batch_device(x: Any) -> str | None:
    """The device a prepared tensor or variable is gathered on in a batch, or None (on the CPU; or not of
    numbers, a tf.string say, whose cast would fail the whole batch: the host path says why)."""
    device = getattr(x, "device", None)
    if not isinstance(device, str) or not device:
        return None
    dtype = getattr(x, "dtype", None)
    if not (getattr(dtype, "is_floating", False) or getattr(dtype, "is_integer", False)
            or getattr(dtype, "is_complex", False) or getattr(dtype, "is_bool", False)
            or getattr(dtype, "is_quantized", False)):
        return None
    if "GPU" not in device.upper() and not BATCH_CPU_TENSORS:
        return None
    return device


class TfGather(TracedGather):
    """The traced gathers and device positions of one frame plan's sections on one TF device."""

    def _upload(self, flat: np.ndarray) -> Any:
        """Positions as a constant on the device."""
        import tensorflow as tf

        with tf.device(self.device):
            return tf.identity(tf.constant(flat, dtype=tf.int64))

    def trace(self, sections: list[int], bounds: list[int]) -> Any:
        """A tf.function: tensors and positions -> the frame's float32 values then samples."""
        import tensorflow as tf

        def figures(x: Any) -> Any:
            """The tensor's FIGURES (traced_batch): one pass over its magnitudes."""
            a = tf.reshape(x, [-1])
            if a.dtype.is_complex:
                a = tf.abs(a)
            if a.dtype not in (tf.float32, tf.float64):
                a = tf.cast(a, tf.float32)
            a = tf.abs(a)
            finite = tf.math.is_finite(a)
            clean = tf.where(finite, a, tf.zeros_like(a))
            largest = tf.reduce_max(clean) if a.shape[0] else tf.zeros([], a.dtype)
            two = tf.constant(2, a.dtype)
            exponent = tf.where(largest > 0, tf.floor(tf.math.log(largest) / tf.math.log(two)),
                                tf.zeros_like(largest))
            half = tf.floor(exponent / 2)  # (2**-exponent in two factors: it may not fit the dtype)
            scaled = clean * tf.pow(two, -half) * tf.pow(two, half - exponent)
            norm = tf.sqrt(tf.reduce_sum(scaled * scaled))
            counts = [tf.reduce_sum(tf.cast(~finite, tf.float32)),
                      tf.reduce_sum(tf.cast(tf.math.is_nan(a), tf.float32))]
            return tf.concat([tf.cast(tf.stack([exponent, norm]), tf.float32), tf.stack(counts)], axis=0)

        def gather(tensors: list, positions: Any) -> Any:
            parts, whole = [], []
            for k, x in enumerate(tensors):
                if x.dtype.name not in GPU_GATHER_DTYPES:  # (cast then gathered: the same float32 values)
                    x = tf.cast(x, tf.float32)
                whole.append(figures(x))
                part = tf.gather(tf.reshape(x, [-1]), positions[bounds[k] : bounds[k + 1]])
                if part.dtype.is_complex:
                    part = tf.abs(part)
                parts.append(tf.cast(part, tf.float32))
            pieces = self.arrange(sections, parts, lambda n: tf.zeros([n], tf.float32), whole)
            return tf.concat(pieces, axis=0)

        return tf.function(gather, reduce_retracing=True)

    def abstract(self, arrays: list[Any]) -> Any:
        """The tensors themselves (a tf.Variable traces differently from a tensor of its shape)."""
        return list(arrays)

    def warm(self, function: Any, abstract: Any, positions: Any) -> None:
        """Trace the tf.function for these tensors and run it once, here: tracing builds its graph, and
        TF optimizes, places and partitions that graph and makes its kernels at its first run, which
        took 0.85 s for 214 variables (on the CPU) in the training thread's first frame."""
        import tensorflow as tf

        with tf.device(self.device):
            function(abstract, positions)  # (the values read are dropped)

    def _call(self, function: Any, tensors: list[Any], positions: Any, sections: list[int]) -> TracedPending:
        """Dispatch the function on the device (the worker reads the result)."""
        import tensorflow as tf

        with tf.device(self.device):
            return TracedPending(function(tensors, positions), sections)
