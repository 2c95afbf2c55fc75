"""The jitted JAX batch (sources.jax_batch): the same frames as the per-section path, one dispatch a frame.

Run on CPU arrays (``jax_batch.BATCH_CPU_ARRAYS``): CI has no accelerator.
"""

from __future__ import annotations

import numpy as np
import pytest
from pixel_checks import check_sampled_pixels
from support import HeldCompile, run_script, set_config, update_compiled

from beholder_plugin import Beholder
from beholder_plugin.protocol.runfiles import read_frame_file
from beholder_plugin.trainer.sources import jax_batch, traced_batch

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
        # (dtypes NumPy knows only through ml_dtypes, and unsigned ones past the signed range)
        "fp8": jnp.asarray(rng.normal(size=(3, 8)), jnp.float8_e4m3fn),
        "nibbles": jnp.asarray(rng.integers(-8, 8, size=(4, 4)), jnp.int4),
        "wide": jnp.asarray(rng.integers(2**31, 2**32, size=(6,)), jnp.uint32),
    }


@pytest.fixture
def traced(monkeypatch) -> list:
    """The batched path on CPU arrays, no gather compiled yet; each gather traced (its sections) is
    appended to the list."""
    monkeypatch.setattr(jax_batch, "BATCH_CPU_ARRAYS", True)
    calls: list = []
    real = jax_batch.JaxGather.trace

    def counting(self, sections, bounds):
        calls.append(tuple(sections))
        return real(self, sections, bounds)

    monkeypatch.setattr(jax_batch.JaxGather, "trace", counting)
    traced_batch.forget_compiled()  # (another test's Beholder may have compiled these shapes' gather)
    return calls


def section(frame, name: str) -> dict:
    """A frame's record of the section of this name (a dict of JAX arrays is shown in sorted key order)."""
    return next(s for s in frame.sections if s["name"] == name)


@pytest.mark.parametrize("mode", ["current", "variance"])
def test_jax_batch_frames_equal_per_section_frames(tmp_path, monkeypatch, mode):
    frames = {}
    for batched in (False, True):
        monkeypatch.setattr(jax_batch, "BATCH_CPU_ARRAYS", batched)
        run = str(tmp_path / f"run-{batched}")
        set_config(run, values="arrays", FPS=30, mode=mode, window_size=2)
        beholder = Beholder(run, strict=True)
        for k in range(3):
            assert update_compiled(beholder, arrays=arrays_for(k))
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


def test_one_jitted_function_per_plan(tmp_path, traced):
    """Frames of the same shapes reuse one compiled gather: nothing is traced again after the first."""
    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=30)
    with Beholder(run, strict=True) as beholder:
        for k in range(4):
            arrays = {name: x for name, x in arrays_for(k).items() if name != "plain"}
            assert update_compiled(beholder, arrays=arrays)
            beholder.flush()
            # one batch of new arrays of the same shapes: the next frame reuses this one's checks
            assert beholder.gatherer.memo is not None and beholder.gatherer.memo.kind == "arrays"
        changed = dict(arrays, kernel=jnp.zeros((5, 5)))
        assert update_compiled(beholder, arrays=changed)  # another shape: checked in full, a new plan
        beholder.flush()
    assert len(traced) == 2
    assert section(read_frame_file(run), "kernel")["shape"] == [5, 5]


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
            assert update_compiled(beholder, arrays=params)
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


def test_the_first_frame_compiles_in_the_background_and_training_goes_on(tmp_path, monkeypatch, caplog):
    """A new set of shapes: update() returns at once with no frame while the gather compiles on
    another thread; once it is compiled, frames are written (the next frame-due update())."""
    import threading

    monkeypatch.setattr(jax_batch, "BATCH_CPU_ARRAYS", True)
    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=30, mode="current")
    held = HeldCompile(monkeypatch, jax_batch.JaxGather)
    traced_batch.forget_compiled()
    arrays = {name: x for name, x in arrays_for(0).items() if name != "plain"}
    with caplog.at_level("INFO", logger="beholder"), Beholder(run, strict=True, background=False) as beholder:
        for _ in range(3):  # held: every frame-due update() returns without a frame, none starts another
            beholder.frame_due_now()
            assert beholder.update(arrays=arrays) is False
        assert beholder.frames_written == 0 and beholder.skipped == 0 and beholder.failures == 0
        assert not beholder.gatherer.wait_compiled(0.05)
        held.release.set()
        assert beholder.gatherer.wait_compiled(60)
        beholder.frame_due_now()
        assert beholder.update(arrays=arrays)
        assert beholder.frames_written == 1
    assert len(held.threads) == 1 and held.threads[0] != threading.get_ident()
    notes = [r.getMessage() for r in caplog.records if "compiling in the background" in r.getMessage()]
    assert len(notes) == 1, notes  # said once


def test_a_gather_that_fails_to_compile_shows_why_and_is_not_compiled_again(tmp_path, monkeypatch):
    """The compile's error on every frame of those shapes, as the sections' reason; not retried before
    RETRY_FAILED_S (a minute)."""
    monkeypatch.setattr(jax_batch, "BATCH_CPU_ARRAYS", True)
    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=30, mode="current")
    calls = []

    def broken(self, function, abstract, positions):
        calls.append(1)
        raise RuntimeError("XLA ran out of registers")

    monkeypatch.setattr(jax_batch.JaxGather, "warm", broken)
    traced_batch.forget_compiled()
    arrays = {name: x for name, x in arrays_for(0).items() if name != "plain"}
    with Beholder(run, background=False) as beholder:
        assert update_compiled(beholder, arrays=arrays)
        for _ in range(2):
            beholder.frame_due_now()
            assert beholder.update(arrays=arrays)
        assert beholder.failures == 0
    assert calls == [1]
    records = read_frame_file(run).sections
    assert all("XLA ran out of registers" in rec.get("missing", "") for rec in records), records


def test_a_failed_compile_is_tried_again_later_and_its_frames_come_back(tmp_path, monkeypatch):
    """A compile that failed for a passing reason (the device's memory full at that moment) is tried
    again once RETRY_FAILED_S has passed; when it succeeds the sections show values."""
    monkeypatch.setattr(jax_batch, "BATCH_CPU_ARRAYS", True)
    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=30, mode="current")
    calls = []
    real = jax_batch.JaxGather.warm

    def fails_once(self, function, abstract, positions):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory while compiling")
        return real(self, function, abstract, positions)

    monkeypatch.setattr(jax_batch.JaxGather, "warm", fails_once)
    traced_batch.forget_compiled()
    arrays = {name: x for name, x in arrays_for(0).items() if name != "plain"}
    with Beholder(run, background=False) as beholder:
        assert update_compiled(beholder, arrays=arrays)  # the failed compile's frame
        assert all("RESOURCE_EXHAUSTED" in rec.get("missing", "") for rec in read_frame_file(run).sections)
        monkeypatch.setattr(traced_batch, "RETRY_FAILED_S", 0.0)  # (as if the time had passed)
        assert update_compiled(beholder, arrays=arrays)  # compiled again, this time for good
        assert beholder.failures == 0
    assert calls == [1, 1]
    assert check_sampled_pixels(read_frame_file(run), {k: np.abs(np.asarray(v)) if k == "wave"
                                                       else np.asarray(v) for k, v in arrays.items()}) > 50


def test_a_beholder_made_again_finds_its_gather_compiled(tmp_path, monkeypatch):
    """The same model's arrays in a new Beholder (a notebook cell run again): the first frame is taken
    at once, from the gather the first Beholder compiled; other shapes compile anew."""
    monkeypatch.setattr(jax_batch, "BATCH_CPU_ARRAYS", True)
    traced_batch.forget_compiled()
    arrays = {name: x for name, x in arrays_for(0).items() if name != "plain"}
    for k in range(2):
        run = str(tmp_path / f"run{k}")
        set_config(run, values="arrays", FPS=30, mode="current")
        with Beholder(run, strict=True, background=False) as beholder:
            beholder.frame_due_now()
            assert beholder.update(arrays=arrays) is (k == 1)  # the first Beholder compiles it
            assert update_compiled(beholder, arrays=arrays)
            beholder.frame_due_now()
            assert beholder.update(arrays=dict(arrays, kernel=jnp.zeros((2, 3 + k)))) is False  # new shapes
    frame = read_frame_file(run)
    assert section(frame, "kernel")["shape"] == [3, 3, 16, 40]


def test_a_changed_shape_compiles_once_however_many_frames_wait(tmp_path, monkeypatch):
    """A shape that changes after frames are written: one new compile, started by the first frame of
    the new shapes; the frames due while it is held are skipped without starting another, and the
    frame after it shows the new shape."""
    monkeypatch.setattr(jax_batch, "BATCH_CPU_ARRAYS", True)
    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=30, mode="current")
    held = HeldCompile(monkeypatch, jax_batch.JaxGather, released=True)
    traced_batch.forget_compiled()
    arrays = {name: x for name, x in arrays_for(0).items() if name != "plain"}
    with Beholder(run, strict=True, background=False) as beholder:
        assert update_compiled(beholder, arrays=arrays)
        assert len(held.shapes) == 1
        held.release.clear()
        changed = dict(arrays, kernel=jnp.ones((6, 4)))
        for _ in range(4):  # held: every one skipped, and only the first starts a compile
            beholder.frame_due_now()
            assert beholder.update(arrays=changed) is False
        assert held.started.acquire(timeout=60) and held.started.acquire(timeout=60)  # both reached warm()
        assert len(held.shapes) == 2 and (6, 4) in held.shapes[1] and (6, 4) not in held.shapes[0]
        written = beholder.frames_written
        held.release.set()
        assert beholder.gatherer.wait_compiled(60)
        beholder.frame_due_now()
        assert beholder.update(arrays=changed)
        assert beholder.frames_written == written + 1 and beholder.failures == 0
    assert len(held.shapes) == 2
    assert section(read_frame_file(run), "kernel")["shape"] == [6, 4]


def test_close_waits_for_a_compile_in_flight(tmp_path, monkeypatch):
    """close() lets a gather's compile end (a thread still inside XLA at interpreter exit can abort it)."""
    import threading

    monkeypatch.setattr(jax_batch, "BATCH_CPU_ARRAYS", True)
    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=30, mode="current")
    held = HeldCompile(monkeypatch, jax_batch.JaxGather)
    traced_batch.forget_compiled()
    beholder = Beholder(run, background=False)
    beholder.frame_due_now()
    assert beholder.update(arrays={"w": jnp.ones((7, 9))}) is False
    threading.Timer(0.2, held.release.set).start()
    beholder.close()
    assert held.finished == [True]


def test_the_dict_made_before_training_shares_the_steps_gather(tmp_path, traced):
    """A jitted step returns a dict in sorted key order, whatever order it was given: the dict made
    before training is shown in that order too, so its frame and the steps' frames have the same
    sections in the same places and one compiled gather (else a second compile, frames skipped while
    it runs, and the sections reordered after the first frame)."""
    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=30, mode="current")
    made = {name: x for name, x in reversed(arrays_for(5).items()) if name != "plain"}
    step = jax.jit(lambda tree: jax.tree_util.tree_map(lambda x: x * 2, tree))
    names, kernels = [], []
    with Beholder(run, strict=True) as beholder:
        for arrays in (made, step(made), step(step(made))):
            assert update_compiled(beholder, arrays=arrays)
            beholder.flush()
            frame = read_frame_file(run)
            names.append([s["name"] for s in frame.sections])
            kernels.append(frame.section_values(names[-1].index("kernel")))
    assert names == [sorted(made)] * 3 and list(step(made)) == sorted(made)
    assert len(traced) == 1
    np.testing.assert_array_equal(kernels[1], 2 * kernels[0])  # each frame the step's own values
    np.testing.assert_array_equal(kernels[2], 4 * kernels[0])


def test_an_array_the_gather_cannot_take_leaves_only_its_own_section_empty(tmp_path, monkeypatch):
    """A typed PRNG key, a deleted (donated) array and one in host memory beside plain arrays: the one
    jitted gather would fail for all of them; each keeps the per-section path instead, which shows the
    plain arrays batched and equal to the host path's, and says why for a section it cannot show."""
    from jax.sharding import SingleDeviceSharding

    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(5,)), jnp.float32)
    gone = jnp.ones((3, 3))
    gone.delete()
    host_memory = SingleDeviceSharding(jax.devices()[0], memory_kind="pinned_host")
    odd = {"key": jax.random.key(0), "gone": gone,
           "offloaded": jax.device_put(np.arange(12.0, dtype=np.float32).reshape(3, 4), host_memory)}
    for name, array in odd.items():
        assert jax_batch.batch_device(array) is None, name
    monkeypatch.setattr(jax_batch, "BATCH_CPU_ARRAYS", True)
    assert jax_batch.batch_device(w) is not None
    run = str(tmp_path / "run")
    set_config(run, values="arrays", mode="current", FPS=30)
    with Beholder(run, background=False) as beholder:
        assert update_compiled(beholder, arrays={"w": w, "b": b, **odd})
        frame = read_frame_file(run)
        assert any(g.__class__.__name__ == "JaxGather" for g in beholder.gatherer.device_gathers)
    for name in ("w", "b", "offloaded"):  # (read on the host, where it lies)
        assert not section(frame, name).get("missing"), name
    shown = {name: np.asarray(a) for name, a in (("w", w), ("b", b), ("offloaded", odd["offloaded"]))}
    assert check_sampled_pixels(frame, shown) > 50
    assert "deleted" in section(frame, "gone")["missing"]
    assert section(frame, "key").get("missing")


def test_an_array_donated_after_the_memo_fits_leaves_only_its_own_section_empty(tmp_path, monkeypatch,
                                                                                 caplog):
    """Frames of the same shapes skip the per-array checks (the memo); when one array of such a frame was
    donated (deleted), the one jitted gather fails: the frame takes the full path, which batches the
    others, and only that array's section says why. Before, every section of the frame was shown empty
    with the deleted array's error."""
    monkeypatch.setattr(jax_batch, "BATCH_CPU_ARRAYS", True)
    run = str(tmp_path / "run")
    set_config(run, values="arrays", mode="current", FPS=30)

    def arrays(step: int) -> dict:
        return {"w": jnp.full((8, 6), float(step)), "b": jnp.arange(6, dtype=jnp.float32) + step}

    with Beholder(run, background=False) as beholder:
        for step in range(2):
            assert update_compiled(beholder, arrays=arrays(step))
        assert beholder.gatherer.memo is not None and beholder.gatherer.memo.kind == "arrays"
        donated = arrays(5)
        donated["w"].delete()
        caplog.clear()
        assert update_compiled(beholder, arrays=donated)
        frame = read_frame_file(run)
    assert "deleted" in section(frame, "w")["missing"]
    assert not section(frame, "b").get("missing")
    np.testing.assert_array_equal(frame.section_values(0).reshape(-1)[:6], np.arange(6) + 5.0)
    assert not any("section b" in record.getMessage() for record in caplog.records)


def test_the_last_frame_keeps_no_array_alive(tmp_path, monkeypatch):
    """Arrays a frame was gathered from are not kept after it (the memo that lets the next frame of
    the same shapes skip its checks keeps only their type): on an accelerator each would hold its device
    memory until the next frame, for good when frames stop."""
    import gc
    import weakref

    monkeypatch.setattr(jax_batch, "BATCH_CPU_ARRAYS", True)
    run = str(tmp_path / "run")
    set_config(run, values="arrays", mode="current", FPS=30)
    refs = []
    with Beholder(run, background=False) as beholder:
        for step in range(3):
            arrays = {"w": jnp.full((8, 6), float(step)), "b": jnp.full((6,), float(step))}
            assert update_compiled(beholder, arrays=arrays)
            refs += [weakref.ref(a) for a in arrays.values()]
        assert beholder.gatherer.memo is not None and beholder.gatherer.memo.kind == "arrays"
        del arrays
        gc.collect()
        assert [r() for r in refs] == [None] * 6
        beholder.frame_due_now()  # the memo still fits arrays of those shapes
        assert beholder.update(arrays={"w": jnp.zeros((8, 6)), "b": jnp.ones((6,))})
    assert read_frame_file(run).section_values(0).max() == 1.0


@pytest.mark.parametrize("case", ["weak-typed arrays", "a context on the training thread"])
def test_the_frames_after_the_background_compile_compile_nothing(tmp_path, monkeypatch, case):
    """The gather compiled in the background is the executable the frames run: jit's own cache would
    miss it for weak-typed arrays (made from Python scalars) and under what the training thread has set
    (here jax.default_matmul_precision), and compile again on the training thread, for seconds on a GPU."""
    import contextlib

    from jax import monitoring

    monkeypatch.setattr(jax_batch, "BATCH_CPU_ARRAYS", True)
    traced_batch.forget_compiled()
    weak = case == "weak-typed arrays"
    context = contextlib.nullcontext() if weak else jax.default_matmul_precision("float32")

    def arrays(step: int) -> dict:
        strong = jnp.full((6, 5), step, jnp.float32)
        w = jnp.broadcast_to(jnp.asarray(float(step)), (6, 5)) if weak else strong
        return {"w": w, "b": jnp.arange(5, dtype=jnp.float32) + step}

    assert arrays(0)["w"].weak_type is weak
    compiles: list[str] = []

    def listen(name: str, *args, **kwargs) -> None:
        if "backend_compile" in name:
            compiles.append(name)

    monitoring.register_event_duration_secs_listener(listen)
    run = str(tmp_path / "run")
    set_config(run, values="arrays", mode="current", FPS=30)
    try:
        with context, Beholder(run, background=False) as beholder:
            beholder.frame_due_now()
            assert not beholder.update(arrays=arrays(0))  # starts the compile, skipped
            assert beholder.gatherer.wait_compiled(120)
            compiles.clear()
            for step in range(1, 4):
                beholder.frame_due_now()
                assert beholder.update(arrays=arrays(step))
            assert compiles == []
            assert read_frame_file(run).section_values(1).max() == 3.0  # (sorted: b, w)
    finally:
        monitoring.unregister_event_duration_listener(listen)


# How the scripts below start: two CPU devices stand in for two GPUs, CPU arrays take the batched path,
# and the run directory (argv[1]) shows arrays' current values.
TWO_DEVICES = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["BEHOLDER_BATCH_CPU_TENSORS"] = "1"
import jax, jax.numpy as jnp, numpy as np
from beholder_plugin import Beholder, write_config, DEFAULT_CONFIG
from beholder_plugin.protocol.runfiles import read_frame_file
from pixel_checks import check_sampled_pixels
from support import update_compiled

run = sys.argv[1]
write_config(run, {**DEFAULT_CONFIG, "values": "arrays", "FPS": 30, "mode": "current"})
first, second = jax.devices()
"""

REPLICATED = TWO_DEVICES + """
from jax.sharding import NamedSharding, PartitionSpec as P
mesh = jax.make_mesh((2,), ("data",))
rng = np.random.default_rng(0)
values = {"kernel": rng.normal(size=(3, 3, 4, 8)).astype(np.float32),
          "bias": rng.normal(size=8).astype(np.float32)}
replicated = {k: jax.device_put(v, NamedSharding(mesh, P())) for k, v in values.items()}
split = jax.device_put(rng.normal(size=(4, 6)).astype(np.float32), NamedSharding(mesh, P("data")))
with Beholder(run, strict=True) as beholder:
    for _ in range(2):  # the first frame starts the compile and is skipped
        beholder.frame_due_now()
        if beholder.update(arrays={**replicated, "split": split}):
            break
        assert beholder.gatherer.wait_compiled(120)
    beholder.flush()
    batched = sorted(str(g.device) for g in beholder.gatherer.device_gathers)
frame = read_frame_file(run)
shown = {**values, "split": np.asarray(split)}
print(batched, frame.header["step"] >= 0, check_sampled_pixels(frame, shown) > 50,
      [s.get("missing") for s in frame.sections])
"""


def test_arrays_replicated_over_devices_are_batched_from_one_copy(tmp_path):
    """Data parallel: parameters replicated over every device (NamedSharding, PartitionSpec()) go
    through the one jitted gather, read from the first device's copy, and show their values; an array
    split over the devices keeps the per-section path. Two CPU devices stand in for two GPUs."""
    out = run_script(REPLICATED, str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "['cpu:0'] True True [None, None, None]"


MOVED = TWO_DEVICES + """
def arrays(step, device):
    return {"w": jax.device_put(jnp.full((8, 6), float(step)), device),
            "b": jax.device_put(jnp.arange(6, dtype=jnp.float32) + step, device)}

with Beholder(run, background=False) as beholder:
    for step in range(2):
        assert update_compiled(beholder, arrays=arrays(step, first))
    fits = beholder.gatherer.memo.fits(
        [(name, x, None) for name, x in sorted(arrays(7, second).items())], beholder.settings)
    taken = []
    for step in range(7, 10):  # the frames after the arrays moved (the first starts a compile there)
        beholder.frame_due_now()
        taken.append(beholder.update(arrays=arrays(step, second)))
        if not taken[-1]:
            assert beholder.gatherer.wait_compiled(120)
            continue
        frame = read_frame_file(run)
        print(step, [s.get("missing") for s in frame.sections], float(frame.section_values(1).max()))
    devices = sorted(str(g.device) for g in beholder.gatherer.device_gathers)
print(fits, taken, devices)
"""


def test_arrays_moved_to_another_device_lose_no_frame(tmp_path):
    """Arrays of the same names and shapes on another device fit the memo of the last frame (it does not
    look at devices, to stay cheap); their gather fails there and the frame takes the full path, which
    gathers them on their new device (after compiling for it: that frame is skipped). Before, that frame
    was written with every section empty. Two CPU devices stand in for two GPUs."""
    out = run_script(MOVED, str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-3:] == [
        "8 [None, None] 8.0", "9 [None, None] 9.0", "True [False, True, True] ['cpu:0', 'cpu:1']"]


SPLIT = TWO_DEVICES + """
arrays = {"a": jax.device_put(jnp.full((8, 6), 1.0), first), "b": jax.device_put(jnp.full((7,), 2.0), second)}
skipped = 0
with Beholder(run, background=False) as beholder:
    while True:
        beholder.frame_due_now()
        if beholder.update(arrays=arrays):
            break
        skipped += 1
        assert beholder.gatherer.wait_compiled(120) and skipped < 5
    devices = sorted(str(g.device) for g in beholder.gatherer.device_gathers)
frame = read_frame_file(run)
print(skipped, devices, [s.get("missing") for s in frame.sections], float(frame.section_values(1).max()))
"""


def test_a_frame_over_two_devices_compiles_both_gathers_at_once(tmp_path):
    """Arrays on two devices (a model split over two GPUs): the first frame starts both devices' gathers
    compiling, so one frame waits, not one per device (each compile takes seconds on a GPU). Two CPU
    devices stand in for two GPUs."""
    out = run_script(SPLIT, str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "1 ['cpu:0', 'cpu:1'] [None, None] 2.0"


@pytest.mark.parametrize("mode", ["current", "variance"])
def test_frames_after_a_plans_first_copy_nothing_to_the_device(tmp_path, traced, mode):
    """Once a plan's gather is compiled and its positions are on the device, a frame-due update() moves
    nothing from the host to the device (no index, no Python scalar of the variance window): JAX's
    transfer guard, which raises on any such copy made on this thread, lets every frame through."""
    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=30, mode=mode)
    arrays = {name: x for name, x in arrays_for(0).items() if name != "plain"}
    with Beholder(run, strict=True) as beholder:
        for _ in range(2):
            assert update_compiled(beholder, arrays=arrays)
            beholder.flush()
        for _ in range(3):
            arrays = dict(arrays, kernel=arrays["kernel"] + 1.0, half=-arrays["half"])  # (new arrays)
            beholder.frame_due_now()
            with jax.transfer_guard_host_to_device("disallow"):
                assert beholder.update(arrays=arrays)
            beholder.flush()
        assert beholder.frames_written == 5 and beholder.failures == 0
    assert len(traced) == 1
    if mode == "current":  # (the last frame shows the last arrays)
        frame = read_frame_file(run)
        shown = frame.section_values(frame.sections.index(section(frame, "half")))
        np.testing.assert_array_equal(shown.reshape(7, 5), np.asarray(arrays["half"], np.float32))


def test_shapes_that_change_every_frame_compile_one_gather_at_a_time(tmp_path, traced):
    """Arrays whose shapes change at every frame (a sequence length): a frame that meets new shapes while
    another gather compiles waits for it rather than starting a compile of its own, so at most one
    compile thread runs; close() waits for it, also when its gather was dropped since. Before, each
    frame started one (40 frames, 40 threads in XLA at once, update() slowed to tens of ms by them,
    and the interpreter's exit aborted inside XLA while they ran)."""
    import threading

    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=30, mode="current")
    weights = {f"w{i}": jnp.ones((16, 16)) for i in range(8)}
    peak = 0
    with Beholder(run, strict=True) as beholder:
        for k in range(30):
            beholder.frame_due_now()
            beholder.update(arrays=dict(weights, act=jnp.ones((4 + k, 8))))
            peak = max(peak, sum(t.name == "beholder-compile" for t in threading.enumerate()))
    assert peak == 1 and 1 <= len(traced) < 30
    assert not [t for t in threading.enumerate() if t.name == "beholder-compile"]
    assert beholder.failures == 0


def test_a_gather_whose_compile_cannot_start_frees_its_device_for_the_next(tmp_path, traced, monkeypatch):
    """A compile that fails before its thread starts (taking the arrays' shapes failed) marks its gather
    failed, and the next shapes' compile can start. Before, that gather was left compiling forever."""
    real, calls = jax_batch.JaxGather.abstract, []

    def refuse_once(self, arrays):
        calls.append(len(arrays))
        if len(calls) == 1:
            raise RuntimeError("no shapes today")
        return real(self, arrays)

    monkeypatch.setattr(jax_batch.JaxGather, "abstract", refuse_once)
    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=30, mode="current")
    with Beholder(run) as beholder:
        beholder.frame_due_now()
        beholder.update(arrays={"a": jnp.ones((3, 4))})
        assert beholder.failures == 0  # (the frame's section says why)
        assert beholder.gatherer.wait_compiled(5)  # (nothing is left compiling)
        assert update_compiled(beholder, arrays={"b": jnp.full((5, 2), 2.0)})
        beholder.flush()
    frame = read_frame_file(run)
    assert len(calls) == 2 and frame.sections[0]["name"] == "b" and frame.section_values(0).max() == 2.0
