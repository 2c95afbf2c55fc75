"""trainer/gather.py: what the gatherer copies off update()'s inputs, and what it reuses between frames."""

from __future__ import annotations

import numpy as np
import pytest
from support import due, set_config

from beholder_plugin import Beholder, read_frame, read_section_info
from beholder_plugin.protocol.runfiles import read_frame_file
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


@pytest.mark.usefixtures("flushed_updates")
def test_list_arrays_are_named_by_index_and_dict_arrays_by_key(run_dir):
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    beholder = Beholder(run_dir, strict=True)
    assert beholder.update(arrays=[np.arange(4.0), np.ones((2, 3))])
    assert [s["name"] for s in read_section_info(run_dir)] == ["0", "1"]
    due(beholder)
    assert beholder.update(arrays={"conv1/grad": np.arange(4.0), "dense/grad": np.ones((2, 3))})
    infos = read_section_info(run_dir)
    assert [s["name"] for s in infos] == ["conv1/grad", "dense/grad"]
    assert [s["shape"] for s in infos] == [[4], [2, 3]]
    frame = read_frame(run_dir)
    assert frame.shape == (128 + 5 + 128, 768, 3) and frame.dtype == np.uint8


@pytest.mark.usefixtures("flushed_updates")
def test_variables_are_named_from_a_dict_and_a_list(run_dir):
    set_config(run_dir, values="trainable_variables", mode="current", FPS=30)
    beholder = Beholder(run_dir, variables={"w": np.ones((3, 3)), "b": np.arange(3.0)}, strict=True)
    assert beholder.update()
    assert [s["name"] for s in read_section_info(run_dir)] == ["w", "b"]
    due(beholder)
    assert beholder.update(variables=[np.ones(2)])  # per-call override
    assert [s["name"] for s in read_section_info(run_dir)] == ["0"]


@pytest.mark.usefixtures("flushed_updates")
def test_array_likes_of_many_dtypes_render(run_dir):
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    beholder = Beholder(run_dir, strict=True)
    arrays = {
        "nested list": [[1, 2], [3, 4]],
        "bool": np.array([True, False, True]),
        "int8": np.arange(-3, 3, dtype=np.int8),
        "uint64": np.arange(5, dtype=np.uint64),
        "float16": np.linspace(0, 1, 7, dtype=np.float16),
        "scalar": np.float32(2.5),
        "strided view": np.arange(100.0).reshape(10, 10)[::2, ::3],
    }
    assert beholder.update(arrays=arrays)
    infos = {s["name"]: s for s in read_section_info(run_dir)}
    assert infos["nested list"]["max"] == 4.0 and infos["bool"]["max"] == 1.0
    assert infos["int8"]["min"] == -3.0 and infos["uint64"]["max"] == 4.0
    assert infos["float16"]["max"] == 1.0 and infos["scalar"]["mean"] == 2.5
    assert infos["strided view"]["max"] == 89.0 and infos["strided view"]["shape"] == [5, 4]


@pytest.mark.usefixtures("flushed_updates")
def test_a_huge_broadcast_view_is_never_copied_whole(run_dir):
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    huge = np.broadcast_to(np.arange(1000.0), (1000, 1000, 1000))  # 10^9 values, 8 KB of memory
    beholder = Beholder(run_dir, strict=True)
    assert beholder.update(arrays={"huge": huge})
    info = read_section_info(run_dir)[0]
    assert info["shape"] == [1000, 1000, 1000] and info["max"] == 999.0


@pytest.mark.usefixtures("flushed_updates")
def test_the_frame_callable_is_called_only_while_frames_are_shown(run_dir):
    calls = []

    def frame():
        calls.append(1)
        return np.arange(12.0).reshape(3, 4)

    set_config(run_dir, values="arrays", FPS=30)
    beholder = Beholder(run_dir, strict=True)
    beholder.update(arrays=[np.ones(3)], frame=frame)
    assert calls == []
    set_config(run_dir, values="frames", FPS=30)
    due(beholder)
    beholder.update(arrays=[np.ones(3)], frame=frame)
    assert calls == [1]
    stored = read_frame_file(run_dir)
    assert stored.header["values"] == "frames" and read_section_info(run_dir) == []
    gray = read_frame(run_dir)[:, :, 0]
    np.testing.assert_array_equal(gray, (np.arange(12.0).reshape(3, 4) * 255 / 11).astype(np.uint8))


@pytest.mark.usefixtures("flushed_updates")
def test_a_placeholder_says_which_values_update_was_given_instead(run_dir):
    """Arrays passed while Values is on its default: the frame names them, for the dashboard to offer."""
    from beholder_plugin.trainer.views.placeholder import message

    set_config(run_dir, values="trainable_variables", FPS=30)
    with Beholder(run_dir, strict=True) as beholder:
        assert beholder.update(arrays={"w": np.ones(3)}, frame=np.eye(4))
    stored = read_frame_file(run_dir)
    assert stored.header["values"] == "placeholder"
    assert stored.header["offered"] == ["arrays", "frames"]
    text = message("trainable_variables", ("arrays", "frames"))
    assert 'Pick "Arrays" under Values' in text and "given arrays and a frame" in text
    set_config(run_dir, values="gradients", FPS=30)
    with Beholder(run_dir, strict=True) as beholder:
        assert beholder.update()  # nothing passed at all: nothing to offer, the usual advice
    assert read_frame_file(run_dir).header["offered"] == []


def test_a_section_shown_empty_leaves_no_stale_sample_behind():
    """A section whose array cannot be read (a deleted JAX array, a PRNG key) has NaN for values and for
    its statistics sample: the reused buffers held the last frame's figures, which the statistics (and a
    histogram of leftover memory) were taken from."""
    jax = pytest.importorskip("jax")
    gatherer = Gatherer(strict=False, warn_once=lambda *args: None)
    settings = RunSettings.starting("arrays")
    key = jax.random.key(0)
    first = gatherer.gather(settings, Inputs(1, arrays={"g": jax.numpy.full((6, 6), 3.0), "key": key}))
    gone = jax.numpy.full((6, 6), 5.0)
    gone.delete()
    second = gatherer.gather(settings, Inputs(2, arrays={"g": gone, "key": key}))
    plan = second.plan
    assert second.samples is first.samples and set(second.missing) == {0, 1}  # (sorted: g, key)
    for i in (0, 1):
        assert np.isnan(second.samples[plan.sample_offsets[i] : plan.sample_offsets[i + 1]]).all()
        assert np.isnan(second.buffer[plan.offsets[i] : plan.offsets[i + 1]]).all()


def test_a_placeholder_for_gradients_or_activations_offers_the_arrays_passed_first():
    """A JAX loop passes update(variables=params, arrays=grads): with Gradients (or Activations) picked
    and no model watched, the placeholder's button offered "Trainable variables", the wrong fix; the
    arrays come first there, and after them for the other choices."""
    inputs = Inputs(1, arrays={"w_grad": np.zeros(3)}, variables={"w": np.ones(3)})
    for shown in ("gradients", "activations"):
        job = _gatherer().gather(RunSettings.starting(shown), inputs)
        assert job.kind is JobKind.PLACEHOLDER and job.offered == ("arrays", "trainable_variables")
    job = _gatherer().gather(RunSettings.starting("frames"), inputs)  # (the order given otherwise)
    assert job.kind is JobKind.PLACEHOLDER and job.offered == ("trainable_variables", "arrays")
