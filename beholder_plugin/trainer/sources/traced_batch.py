"""What the traced device batches (JAX's jit, TensorFlow's tf.function) share: one function per plan.

A subclass says how to upload a section's flat positions (``_upload``), how
to trace the gather (``trace``, with ``arrange`` laying the parts out in
the frame's order) and how to call it (``_call``); this class keeps the
traced functions and uploaded positions, made once per plan: one array of
every section's positions (section k's are ``positions[bounds[k]:bounds[k+1]]``),
so a frame's call passes its arrays and one more argument.

Example::

    class MyGather(TracedGather):
        def _upload(self, flat): ...
        def trace(self, sections, bounds): ...
        def _call(self, function, arrays, positions, sections): ...
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
        self._functions: dict[tuple, tuple[Any, Any]] = {}  # (traced function, positions on the device)

    def launch(self, entries: list[tuple[int, Any]]) -> Any:
        """Dispatch the gather of these (section, array) entries; never waits for the device."""
        return self.launch_sections([i for i, _ in entries], [x for _, x in entries])

    def launch_sections(self, sections: list[int], arrays: list[Any]) -> Any:
        """launch() with the sections and their arrays as two lists."""
        key = (tuple(sections), tuple((tuple(x.shape), x.dtype) for x in arrays))
        found = self._functions.get(key)
        if found is None:  # once per plan, sections, shapes and dtypes: trace, and upload the positions
            if len(self._functions) >= 8:
                self._functions.clear()
            flats = [self._positions(i, shape) for i, (shape, _dtype) in zip(sections, key[1])]
            bounds = np.cumsum([0] + [flat.size for flat in flats]).tolist()
            found = self._functions[key] = (self.trace(list(sections), bounds),
                                            self._upload(np.concatenate(flats)))
        function, positions = found
        return self._call(function, list(arrays), positions, list(sections))

    def _positions(self, i: int, shape: tuple[int, ...]) -> np.ndarray:
        """Section i's flat positions in an array of this shape: its shown values, then its sample."""
        plan = self.plan
        n = int(plan.sample_offsets[i + 1] - plan.sample_offsets[i])
        return storage_offsets(plan.plans[i], shape, c_strides(shape), plan.sample_steps[i], n)

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

    def trace(self, sections: list[int], bounds: list[int]) -> Any:
        raise NotImplementedError

    def _call(self, function: Any, arrays: list[Any], positions: Any, sections: list[int]) -> Any:
        raise NotImplementedError
