"""The jitted JAX batch (sources.jax_batch): the same frames as the per-section path, one dispatch a frame.

Run on CPU arrays (``jax_batch.BATCH_CPU_ARRAYS``): CI has no accelerator.
"""

from __future__ import annotations

import numpy as np
import pytest
from support import set_config

from beholder_plugin import Beholder
from beholder_plugin.protocol.runfiles import read_frame_file
from beholder_plugin.trainer.sources import jax_batch

jax = pytest.importorskip("jax")
jnp = jax.numpy


def arrays_for(seed: int) -> dict:
    """Arrays of several shapes and dtypes, one past the statistics' sample cap and wider than a frame."""
    rng = np.random.default_rng(seed)
    return {
        "kernel": jnp.asarray(rng.normal(size=(3, 3, 16, 40)), jnp.float32),
        "half": jnp.asarray(rng.normal(size=(7, 5)), jnp.bfloat16),
        "counts": jnp.asarray(rng.integers(0, 9, size=(11,)), jnp.int32),
        "wave": jnp.asarray(rng.normal(size=(4, 6)) + 1j * rng.normal(size=(4, 6)), jnp.complex64),
        "scalar": jnp.asarray(2.5, jnp.float32),
        "plain": rng.normal(size=(5, 5)).astype(np.float32),  # NumPy beside them: the host path
    }


@pytest.mark.parametrize("mode", ["current", "variance"])
def test_jax_batch_frames_equal_per_section_frames(tmp_path, monkeypatch, mode):
    frames = {}
    for batched in (False, True):
        monkeypatch.setattr(jax_batch, "BATCH_CPU_ARRAYS", batched)
        run = str(tmp_path / f"run-{batched}")
        set_config(run, values="arrays", FPS=30, mode=mode, window_size=2)
        beholder = Beholder(run, strict=True)
        for k in range(3):
            beholder.frame_due_now()
            assert beholder.update(arrays=arrays_for(k))
            beholder.flush()
        beholder.close()
        frames[batched] = read_frame_file(run)
        gathers = beholder.gatherer.device_gathers
        assert len(gathers) == (1 if batched else 0)
        if batched:  # not one batch (a NumPy array beside them): every frame is checked in full
            assert beholder.gatherer.memo is None
    a, b = frames[False], frames[True]
    np.testing.assert_array_equal(a.pixels, b.pixels)
    for i, (ra, rb) in enumerate(zip(a.sections, b.sections)):
        assert ra == rb
        np.testing.assert_array_equal(a.section_values(i), b.section_values(i))


def test_one_jitted_function_per_plan(tmp_path, monkeypatch):
    """Frames of the same shapes reuse one compiled gather: nothing is traced again after the first."""
    monkeypatch.setattr(jax_batch, "BATCH_CPU_ARRAYS", True)
    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=30)
    traced = []
    real = jax_batch.JaxGather.trace

    def counting(self, sections, bounds):
        traced.append(tuple(sections))
        return real(self, sections, bounds)

    monkeypatch.setattr(jax_batch.JaxGather, "trace", counting)
    with Beholder(run, strict=True) as beholder:
        for k in range(4):
            beholder.frame_due_now()
            arrays = {name: x for name, x in arrays_for(k).items() if name != "plain"}
            assert beholder.update(arrays=arrays)
            beholder.flush()
            # one batch of new arrays of the same shapes: the next frame reuses this one's checks
            assert beholder.gatherer.memo is not None and beholder.gatherer.memo.kind == "arrays"
        changed = dict(arrays, kernel=jnp.zeros((5, 5)))
        beholder.frame_due_now()
        assert beholder.update(arrays=changed)  # another shape: checked in full, a new plan
        beholder.flush()
    assert len(traced) == 2
    assert read_frame_file(run).sections[0]["shape"] == [5, 5]


def test_donated_arrays_keep_working(tmp_path, monkeypatch):
    """A training step that donates its parameters: frames gathered before the step are whole, and
    arrays already donated (deleted) show as empty sections that say why, without an exception."""
    monkeypatch.setattr(jax_batch, "BATCH_CPU_ARRAYS", True)
    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=30, mode="current")

    @jax.jit
    def make(seed):
        return {"w": jax.random.normal(jax.random.PRNGKey(seed), (16, 24)), "b": jnp.zeros(24) + seed}

    step = jax.jit(lambda p: jax.tree_util.tree_map(lambda a: a * 0.5, p), donate_argnums=0)
    params = make(1)
    with Beholder(run) as beholder:
        for _ in range(3):
            beholder.frame_due_now()
            assert beholder.update(arrays=params)
            expected = np.asarray(params["b"]).copy()
            old, params = params, step(params)  # donates what the frame was gathered from
            beholder.flush()
            frame = read_frame_file(run)
            at = [rec["name"] for rec in frame.sections].index("b")
            np.testing.assert_array_equal(frame.section_values(at).reshape(-1)[:24], expected)
        if not old["w"].is_deleted():
            pytest.skip("this JAX does not donate on the CPU")
        beholder.frame_due_now()
        beholder.update(arrays=old)
        beholder.flush()
        assert beholder.failures == 0
    records = read_frame_file(run).sections
    assert all("deleted" in rec.get("missing", "").lower() or "donat" in rec.get("missing", "").lower()
               for rec in records), records
