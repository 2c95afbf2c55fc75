"""trainer/gather.py: what the gatherer copies off update()'s inputs, and what it reuses between frames."""

from __future__ import annotations

import numpy as np

from beholder_plugin.trainer.gather import Gatherer, Inputs
from beholder_plugin.trainer.job import JobKind
from beholder_plugin.trainer.run_settings import RunSettings


def _gatherer() -> Gatherer:
    warnings = []
    return Gatherer(strict=True, warn_once=lambda *args: warnings.append(args))


def test_gather_copies_the_shown_arrays_into_a_sections_job():
    settings = RunSettings.starting("arrays").replace(mode="current")
    job = _gatherer().gather(settings, Inputs(3, arrays={"w": np.arange(6.0).reshape(2, 3)}))
    assert job.kind is JobKind.SECTIONS and job.step == 3 and job.shown == "arrays"
    assert job.plan.names == ["w"] and job.buffer.tolist() == [0, 1, 2, 3, 4, 5] and job.missing == {}


def test_the_same_sections_reuse_their_plan_and_buffer():
    gatherer = _gatherer()
    settings = RunSettings.starting("arrays")
    first = gatherer.gather(settings, Inputs(1, arrays=[np.zeros((2, 3))]))
    second = gatherer.gather(settings, Inputs(2, arrays=[np.ones((2, 3))]))
    assert second.plan is first.plan and second.buffer is first.buffer and len(gatherer.frame_plans) == 1
    gatherer.gather(settings, Inputs(3, arrays=[np.ones((4, 3))]))  # another shape: another plan
    assert len(gatherer.frame_plans) == 2


def test_a_missing_input_gives_a_placeholder_job_naming_what_was_given():
    job = _gatherer().gather(RunSettings.starting("frames"), Inputs(1, arrays=[np.zeros(3)]))
    assert job.kind is JobKind.PLACEHOLDER and job.offered == ("arrays",)
    image = np.zeros((2, 2, 3), np.uint8)
    job = _gatherer().gather(RunSettings.starting("frames"), Inputs(1, frame=image))
    assert job.kind is JobKind.IMAGE and job.image.shape == (2, 2, 3)
