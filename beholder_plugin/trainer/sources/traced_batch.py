"""What the traced device batches (JAX's jit, TensorFlow's tf.function) share: one function per plan.

A subclass says how to upload a section's flat positions (``_upload``), how
to trace the gather (``trace``, with ``arrange`` laying the parts out in
the frame's order) and how to call it (``_call``); this class keeps the
traced functions and uploaded positions, made once per plan.

Example::

    class MyGather(TracedGather):
        def _upload(self, flat): ...
        def trace(self, sections): ...
        def _call(self, function, arrays, indices, sections): ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from beholder_plugin.trainer.sources.torch_batch import storage_offsets


def c_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides of a C-ordered array of this shape (JAX and TF arrays are indexed in that order)."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


@dataclass
class TracedPending:
    """A traced batch's result on the device: ``wait()`` (on the worker) brings it to the host."""

    result: Any  # a jax.Array (its copy to the host already started) or a tf.Tensor
    sections: list[int]

    def wait(self) -> np.ndarray:
        """Block until the values are on the host, then a writable float32 NumPy array."""
        host = np.asarray(self.result)
        return host if host.flags.writeable else host.copy()


class TracedGather:
    """The traced gathers and uploaded positions of one frame plan's sections on one device."""

    def __init__(self, device: Any, plan: Any) -> None:
        self.device = device
        self.plan = plan
        self._functions: dict[tuple, Any] = {}
        self._indices: dict[tuple, Any] = {}

    def launch(self, entries: list[tuple[int, Any]]) -> Any:
        """Dispatch the gather of these (section, array) entries; never waits for the device."""
        return self.launch_sections([i for i, _ in entries], [x for _, x in entries])

    def launch_sections(self, sections: list[int], arrays: list[Any]) -> Any:
        """launch() with the sections and their arrays as two lists."""
        shapes = [tuple(int(s) for s in x.shape) for x in arrays]
        key = (tuple(sections), tuple(zip(shapes, (str(x.dtype) for x in arrays))))
        function = self._functions.get(key)
        if function is None:
            if len(self._functions) >= 8:
                self._functions.clear()
            function = self._functions[key] = self.trace(list(sections))
        indices = [self._index(i, shape) for i, shape in zip(sections, shapes)]
        return self._call(function, list(arrays), indices, list(sections))

    def _index(self, i: int, shape: tuple[int, ...]) -> Any:
        """Section i's flat positions (shown values, then sample) on the device, uploaded once."""
        key = (i, shape)
        found = self._indices.get(key)
        if found is None:
            plan = self.plan
            n = int(plan.sample_offsets[i + 1] - plan.sample_offsets[i])
            flat = storage_offsets(plan.plans[i], shape, c_strides(shape), plan.sample_steps[i], n)
            found = self._indices[key] = self._upload(flat)
        return found

    def arrange(self, sections: list[int], parts: list[Any], zeros: Callable[[int], Any]) -> list[Any]:
        """The pieces of the frame's order: every section's shown values, then every sample; the parts
        (shown values then sample, per section of ``sections``) where they are, zeros elsewhere."""
        plan = self.plan
        ours = {i: k for k, i in enumerate(sections)}
        count = len(plan.plans)
        shown = [int(s) for s in plan.sizes]
        sampled = [int(plan.sample_offsets[i + 1] - plan.sample_offsets[i]) for i in range(count)]
        values = [parts[ours[i]][: shown[i]] if i in ours else zeros(shown[i]) for i in range(count)]
        samples = [parts[ours[i]][shown[i]:] if i in ours else zeros(sampled[i]) for i in range(count)]
        return values + samples

    def _upload(self, flat: np.ndarray) -> Any:
        raise NotImplementedError

    def trace(self, sections: list[int]) -> Any:
        raise NotImplementedError

    def _call(self, function: Any, arrays: list[Any], indices: list[Any], sections: list[int]) -> Any:
        raise NotImplementedError
