"""What a watch() hook keeps of a torch tensor on an armed step: the shown slice, never the tensor.

``copy_shown`` copies the compact section a frame shows and its statistics
sample: on an accelerator sliced where the tensor lies (one launch, no
wait, gathered later with the frame's other sections), on the CPU into
NumPy at once. With show_all, whose frame width depends on every section,
it keeps a private copy of the whole tensor instead. The layout's checks
and the plan are worked out once per shape, layout and sizing, in the
caller's ``plans`` cache.

Nothing here imports torch: the tensors come from the caller's hooks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from beholder_plugin.protocol.layout import FRAME_WIDTH, resolve_layout
from beholder_plugin.protocol.plans import KeptPlans, make_plan
from beholder_plugin.trainer import sources
from beholder_plugin.trainer.sources import torch_batch, torch_modules, torch_tensors
from beholder_plugin.trainer.sources.captured import Captured
from beholder_plugin.trainer.views.stats import sample_runs, sample_size

# At most this many (shape, layout, sizing) plans are kept in a hook's cache (and PLANS_KEPT_BYTES of
# them); the oldest go first.
MAX_PLANS = 4096


def copy_shown(name: str, tensor: Any, layout: str | None, show_all: bool, sizing: str,
               plans: KeptPlans, max_height: int | None = None) -> Captured:
    """The shown slice of a tensor (or its private copy, with show_all), as a Captured; raises when the
    tensor cannot be read (the hook decides what becomes of the error). ``max_height``: the section's
    height cap (Watch.height_cap), which the frame keeps too."""
    if tensor is None:
        return Captured((), None, error="no gradient (None)")
    if torch_modules.sharded(tensor):  # (FSDP2's sharded gradient: this rank's shard, as prepare() shows
        tensor = tensor.to_local()  # a DTensor; the whole would be a collective)
    tensor = torch_tensors.dense(tensor, name)  # (a sparse embedding gradient)
    shape = tuple(tensor.shape)
    if show_all:  # the frame's width depends on every section: keep a copy to slice later
        if layout is None:
            layout = sources.adapter("torch").default_layout(tensor, shape)
        return Captured(shape, resolve_layout(layout, shape, name), tensor=tensor.detach().clone())
    key = (shape, layout, sizing, type(tensor), max_height)  # (a default layout: from shape and type only)
    found = plans.get(key)
    if found is None:  # once per shape and layout: the layout's checks and the plan
        if layout is None:
            layout = sources.adapter("torch").default_layout(tensor, shape)
        layout = resolve_layout(layout, shape, name)
        plan = make_plan(shape, FRAME_WIDTH, False, name, layout, sizing, max_height)
        count = math.prod(shape)
        found = (layout, plan, sample_runs(count), sample_size(count), plan.compact_shape)
        plans.put(key, found, plan.nbytes)
    layout, plan, runs, sampled, compact_shape = found
    tensor = tensor.detach()
    if torch_batch.batch_device(tensor) is not None:  # on an accelerator: one launch, no wait
        part = torch_batch.section_part(tensor, plan, runs, sampled)
        return Captured(shape, layout, width=FRAME_WIDTH, part=part, compact_shape=compact_shape)
    source, prepared = sources.in_place(tensor)  # a CPU tensor is read where it lies, once
    compact = np.empty(compact_shape, np.float32)
    sources.gather_into(source, prepared, plan, compact, name)
    sample = np.empty(sampled, np.float32)
    sources.gather_sample(source, prepared, runs, sample)
    return Captured(shape, layout, compact=compact, width=FRAME_WIDTH, sample=sample)
