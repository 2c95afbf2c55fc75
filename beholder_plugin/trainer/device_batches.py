"""Sections gathered on their accelerator as one batch per device, and what the next frame can reuse.

The gatherer (gather.py) asks ``batch_key`` which sections go into a
device batch (torch tensors, JAX arrays and TensorFlow tensors off the CPU,
and what watch() hooks gathered on a device), hands each batch to the
gatherer ``make_gather`` made for the frame plan and device
(``sources.torch_batch``, ``sources.jax_batch``, ``sources.tf_batch``),
and the worker calls ``receive`` before rendering. When a frame was one
batch, ``BatchMemo`` keeps what its checks found, so that the next frame of
the same arrays (or hook parts, or arrays of the same shapes) skips them.

Example::

    key = batch_key(adapter, tensor, section_plan, frame_plan.width)
    gather = make_gather(frame_plan, key)
    job.pending = [gather.launch([(0, tensor)])]
    receive(job)   # on the worker
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from beholder_plugin.trainer import sources
from beholder_plugin.trainer.sources.captured import Captured
from beholder_plugin.trainer.views.render import FramePlan


def batch_key(adapter: Any, obj: Any, section: Any, width: int) -> Any:
    """Which device batch a section is gathered in (a torch.device, or (framework, device)), or None."""
    if type(obj) is np.ndarray:
        return None
    if type(obj) is Captured:
        part = obj.part
        if part is None:  # a hook's whole copy (show_all): gathered from it as a tensor, when on a device
            return None if obj.tensor is None else batch_key(adapter, obj.tensor, section, width)
        if obj.width != width or obj.compact_shape != section.compact_shape:
            return None
        return part.device
    framework = sources.framework_of(obj)
    if framework == "torch":
        from beholder_plugin.trainer.sources import torch_batch

        return torch_batch.batch_device(obj)
    if framework in ("jax", "tensorflow"):
        from beholder_plugin.trainer.sources import jax_batch, tf_batch

        device = (jax_batch if framework == "jax" else tf_batch).batch_device(obj)
        return None if device is None else (framework, device)
    return None


def make_gather(plan: FramePlan, key: Any) -> Any:
    """The gatherer of a plan's sections in one batch (its buffers, indices, graph or compiled function)."""
    if not isinstance(key, tuple):  # a torch.device
        from beholder_plugin.trainer.sources.torch_batch import DeviceGather

        return DeviceGather(key, plan)
    if key[0] == "jax":
        from beholder_plugin.trainer.sources.jax_batch import JaxGather

        return JaxGather(key[1], plan)
    from beholder_plugin.trainer.sources.tf_batch import TfGather

    return TfGather(key[1], plan)


def receive(job: Any) -> None:
    """Wait for a job's device batches to reach the host and put their sections in the job's buffers."""
    plan, pending = job.plan, job.pending
    total = plan.value_count + plan.sample_count
    exact = getattr(job, "exact", None)
    if exact is not None:  # a traced batch's whole-array figures (JAX, TF) go to the frame's exact pass
        for batch in pending:
            put = getattr(batch, "put_exact", None)
            if put is not None:
                put(exact, total)
    if len(pending) == 1 and len(pending[0].sections) == len(plan.plans):  # the usual case: adopt it
        host = pending[0].wait()
        job.buffer, job.samples = host[: plan.value_count], host[plan.value_count : total]
        return
    for batch in pending:
        host = batch.wait()
        samples = host[plan.value_count : total]
        for i in batch.sections:
            a, b = plan.offsets[i], plan.offsets[i + 1]
            job.buffer[a:b] = host[a:b]
            a, b = plan.sample_offsets[i], plan.sample_offsets[i + 1]
            job.samples[a:b] = samples[a:b]


@dataclass
class BatchMemo:
    """What the last frame's sections resolved to, when all of them were one device batch.

    ``kind`` says what the next frame must hand over to reuse it:
    ``"tensors"``, the same parameters (by identity) and, in place of
    other torch tensors (a step's new gradients), tensors of the same
    shapes on the same device, which the memo does not keep alive; ``"captured"``,
    hook parts of the same names, shapes, layouts and frame width;
    ``"arrays"``, JAX or TensorFlow arrays of the same names, types and
    shapes (a training step returns new arrays every time).
    """

    kind: str
    objects: list[Any]  # "tensors": parameters by identity, None for other tensors (never held); "arrays":
    # None each
    names: list[str]
    layouts: list[Any]  # the layouts asked for (None: the framework's default); a hook part's own
    settings: tuple  # the settings the plan depends on
    shapes: list[tuple[int, ...]]
    plan: FramePlan
    device: Any
    sections: tuple[int, ...]
    # "tensors" of parameters only: the list they came in (a watch's, which it never changes: it makes a
    # new one when it walks the model again), so that the same list fits without a look at each entry
    source: list | None = None
    array_type: Any = None  # "arrays": the type of the arrays (the arrays themselves are not kept)

    def __post_init__(self) -> None:
        # "tensors": where the kept parameters are, where the other tensors (gradients) are, their shapes
        self.kept = [i for i, obj in enumerate(self.objects) if obj is not None]
        self.others = [i for i, obj in enumerate(self.objects) if obj is None]
        self.other_shapes = [self.shapes[i] for i in self.others]

    @staticmethod
    def of(named: list, settings: Any, plan: FramePlan, batches: dict, missing: dict,
           shapes: list) -> BatchMemo | None:
        """A memo of this frame, or None unless it was one device batch of one kind of section."""
        if len(batches) != 1 or missing or plan.problems:
            return None
        (device, entries), = batches.items()
        if len(entries) != len(named):
            return None
        if all(type(entry[1]) is Captured for entry in named):
            kind = "captured"
        elif all(type(entry[1]) in _plain_tensor_types() for entry in named):
            kind = "tensors"
        elif (isinstance(device, tuple) and len({type(entry[1]) for entry in named}) == 1
              and all(got is entry[1] for (_, got), entry in zip(entries, named))):
            kind = "arrays"  # gathered as passed (a Keras variable, read through its value, is not)
        else:
            return None
        layouts = [e[1].layout if kind == "captured" else e[2] for e in named]
        objects = [e[1] for e in named]
        array_type = type(objects[0])
        if kind == "arrays":  # (not kept: each holds its device memory until the next frame otherwise)
            objects = [None] * len(objects)
        if kind == "tensors":  # a gradient or an activation is not kept alive until the next frame
            parameter = sys.modules["torch"].nn.Parameter
            objects = [x if type(x) is parameter else None for x in objects]
        source = named if kind == "tensors" and all(x is not None for x in objects) else None
        return BatchMemo(kind, objects, [e[0] for e in named], layouts,
                         (settings.show_all, settings.section_size), [tuple(s) for s in shapes], plan,
                         device, tuple(range(len(named))), source, array_type)

    def fits(self, named: list, settings: Any) -> bool:
        """Whether these sections can reuse the memo (see the class)."""
        if len(named) != len(self.objects) or (settings.show_all, settings.section_size) != self.settings:
            return False
        if self.kind == "tensors":  # the same parameters; other tensors (gradients): alike, on the device
            if named is self.source:
                return True
            return self._tensors_fit(named)
        if self.kind == "captured":
            width = self.plan.width
            return all(
                type(c) is Captured and c.part is not None and c.width == width and c.shape == shape
                and c.layout == layout and name == entry_name and entry_layout is None
                for (entry_name, c, entry_layout), name, shape, layout
                in zip(named, self.names, self.shapes, self.layouts)
            )
        kind = self.array_type
        return all(
            type(x) is kind and tuple(x.shape) == shape and name == entry_name and entry_layout == layout
            for (entry_name, x, entry_layout), name, shape, layout
            in zip(named, self.names, self.shapes, self.layouts)
        )

    def _tensors_fit(self, named: list) -> bool:
        """fits() for "tensors": the same names and layouts; each kept parameter the same object, and in
        place of each other tensor a plain strided torch tensor (not a Parameter: that one's default layout
        is a kernel's) of the same shape on the memo's device.

        Looked at a column at a time (a frame of gradients hands over 214 new
        tensors): half the time of a look at each entry in turn.
        """
        if [entry[0] for entry in named] != self.names or [entry[2] for entry in named] != self.layouts:
            return False
        got = [entry[1] for entry in named]
        if not all(got[i] is self.objects[i] for i in self.kept):
            return False
        others = [got[i] for i in self.others] if self.kept else got
        if not others:
            return True
        torch = sys.modules["torch"]
        return ({type(t) for t in others} == {torch.Tensor}
                and {t.layout for t in others} == {torch.strided}
                and {t.device for t in others} == {self.device}
                and [t.shape for t in others] == self.other_shapes)


def _plain_tensor_types() -> tuple:
    """torch.Tensor and nn.Parameter (whose prepare() is a detach), when torch is loaded."""
    torch = sys.modules.get("torch")
    return () if torch is None else (torch.Tensor, torch.nn.Parameter)
