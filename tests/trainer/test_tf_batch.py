"""The tf.function batch (sources.tf_batch): the same frames as the per-section path, one call a frame.

Run on CPU tensors (``tf_batch.BATCH_CPU_TENSORS``): CI has no GPU.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from support import HeldCompile, set_config, update_compiled

from beholder_plugin import Beholder
from beholder_plugin.protocol.runfiles import read_frame_file
from beholder_plugin.trainer.sources import tf_batch, traced_batch

tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.tf


def arrays_for(variables: dict, seed: int) -> dict:
    """The variables after a fake step, and tensors of several dtypes beside them."""
    rng = np.random.default_rng(seed)
    for v in variables.values():
        v.assign(tf.cast(rng.normal(size=v.shape), v.dtype))
    return {
        **variables,
        "half": tf.constant(rng.normal(size=(7, 5)), tf.bfloat16),
        "counts": tf.constant(rng.integers(0, 9, size=(11,)), tf.int32),
        "wave": tf.complex(tf.constant(rng.normal(size=(4, 6)), tf.float32),
                           tf.constant(rng.normal(size=(4, 6)), tf.float32)),
        "plain": rng.normal(size=(5, 5)).astype(np.float32),  # NumPy beside them: the host path
    }


@pytest.mark.parametrize("mode", ["current", "variance"])
def test_tf_batch_frames_equal_per_section_frames(tmp_path, monkeypatch, mode):
    frames, traced = {}, []
    real = tf_batch.TfGather.trace

    def counting(self, sections, bounds):
        traced.append(sections)
        return real(self, sections, bounds)

    monkeypatch.setattr(tf_batch.TfGather, "trace", counting)
    traced_batch.forget_compiled()  # (the other mode's run compiled this plan's gather)
    for batched in (False, True):
        monkeypatch.setattr(tf_batch, "BATCH_CPU_TENSORS", batched)
        variables = {"kernel": tf.Variable(tf.zeros((3, 3, 16, 40))), "bias": tf.Variable(tf.zeros(40)),
                     "h16": tf.Variable(tf.zeros((6, 6), tf.float16))}
        run = str(tmp_path / f"run-{batched}")
        set_config(run, values="arrays", FPS=30, mode=mode, window_size=2)
        beholder = Beholder(run, strict=True)
        for k in range(3):
            assert update_compiled(beholder, arrays=arrays_for(variables, k))
            beholder.flush()
        beholder.close()
        frames[batched] = read_frame_file(run)
    assert len(traced) == 1  # one traced function for the plan, called for every frame
    a, b = frames[False], frames[True]
    for i, (ra, rb) in enumerate(zip(a.sections, b.sections)):
        if ra["name"] == "wave":  # |complex|: TF's abs on the device, NumPy's on the host
            np.testing.assert_allclose(a.section_values(i), b.section_values(i), rtol=1e-4, atol=1e-6)
            continue
        assert ra == rb
        np.testing.assert_array_equal(a.section_values(i), b.section_values(i))
        top, height = ra["top"], ra["height"]
        np.testing.assert_array_equal(a.pixels[top : top + height], b.pixels[top : top + height])


def test_the_tf_gather_is_traced_in_the_background(tmp_path, monkeypatch):
    """The first frame-due update() returns without a frame while the tf.function is traced on
    another thread; once it is traced, the next frame is written and shows the variables' values."""
    import threading

    monkeypatch.setattr(tf_batch, "BATCH_CPU_TENSORS", True)
    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=30, mode="current")
    held = HeldCompile(monkeypatch, tf_batch.TfGather)
    traced_batch.forget_compiled()
    variables = {"kernel": tf.Variable(tf.zeros((3, 3, 16, 40))), "bias": tf.Variable(tf.zeros(40))}
    with Beholder(run, strict=True, background=False) as beholder:
        for k in range(2):
            beholder.frame_due_now()
            assert beholder.update(arrays=arrays_for(variables, k)) is False
        assert beholder.frames_written == 0 and beholder.failures == 0
        held.release.set()
        assert beholder.gatherer.wait_compiled(60)
        beholder.frame_due_now()
        assert beholder.update(arrays=arrays_for(variables, 2))
        assert beholder.frames_written == 1
    assert len(held.threads) == 1 and held.threads[0] != threading.get_ident()
    records = {rec["name"]: rec for rec in read_frame_file(run).sections}
    assert "missing" not in records["kernel"] and "missing" not in records["bias"]
    bias = variables["bias"].numpy()
    assert records["bias"]["shape"] == [40]
    assert np.isclose(records["bias"]["max"], bias.max()) and np.isclose(records["bias"]["min"], bias.min())


def test_tensors_after_variables_of_the_same_shapes_are_traced_in_the_background(tmp_path, monkeypatch):
    """A loop showing its variables, then tensors of the same names and shapes (its gradients): a
    tf.function traces a variable apart from a tensor, so the tensors get their own gather, traced and
    run on the compile thread like the first, never on the training thread."""
    import threading

    monkeypatch.setattr(tf_batch, "BATCH_CPU_TENSORS", True)
    traced_batch.forget_compiled()
    threads = []
    real = tf_batch.TfGather.trace

    def spying(self, sections, bounds):
        inner = real(self, sections, bounds).python_function

        def gather(*args):
            threads.append(threading.current_thread().name)
            return inner(*args)

        return tf.function(gather, reduce_retracing=True)

    monkeypatch.setattr(tf_batch.TfGather, "trace", spying)
    rng = np.random.default_rng(0)
    values = {"kernel": rng.normal(size=(3, 3, 4, 8)), "bias": rng.normal(size=8)}
    variables = {k: tf.Variable(v, dtype=tf.float32) for k, v in values.items()}
    tensors = {k: tf.constant(v * 2, tf.float32) for k, v in values.items()}
    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=30, mode="current")
    with Beholder(run, strict=True, background=False) as beholder:
        assert update_compiled(beholder, arrays=variables)
        assert update_compiled(beholder, arrays=tensors)
        frame = read_frame_file(run)
        beholder.frame_due_now()
        assert beholder.update(arrays=tensors)
    assert threads and set(threads) == {"beholder-compile"}, threads
    bias = [s["name"] for s in frame.sections].index("bias")
    assert frame.section_values(bias).max() == np.float32(2 * values["bias"].max())  # the tensors' values


# TensorFlow's GPU GatherV2 kernels (tensorflow/core/kernels/gather_op.cc registers int32, int64 and
# TF_CALL_GPU_ALL_TYPES): a gather of any other dtype is placed on the CPU, which blocks the step.
GPU_GATHER = {tf.int32, tf.int64, tf.float16, tf.bfloat16, tf.float32, tf.float64, tf.complex64,
              tf.complex128, tf.bool}


def test_integer_tensors_are_gathered_with_a_kernel_the_gpu_has(tmp_path, monkeypatch):
    """Tensors of every integer dtype (and bool) are shown with the values the per-section path shows,
    and each gather in the traced function reads a dtype TensorFlow has a GPU kernel for: int8, uint8,
    int16, uint16, uint32 and uint64 are cast to float32 on the device first."""
    dtypes = [tf.int8, tf.uint8, tf.int16, tf.uint16, tf.int32, tf.uint32, tf.int64, tf.uint64, tf.bool]
    rng = np.random.default_rng(0)
    big = {tf.uint32: 2**32 - 1, tf.int64: 2**40, tf.uint64: 2**63}
    arrays = {}
    for dtype in dtypes:
        high = 2 if dtype == tf.bool else big.get(dtype, min(dtype.max, 2**15))
        values = rng.integers(0, high, size=(6, 7), dtype=np.uint64)
        arrays[dtype.name] = tf.constant(values.astype(dtype.as_numpy_dtype))
    functions = []
    real = tf_batch.TfGather.trace

    def keeping(self, sections, bounds):
        functions.append(real(self, sections, bounds))
        return functions[-1]

    monkeypatch.setattr(tf_batch.TfGather, "trace", keeping)
    frames = {}
    for batched in (False, True):
        monkeypatch.setattr(tf_batch, "BATCH_CPU_TENSORS", batched)
        traced_batch.forget_compiled()
        run = str(tmp_path / f"run-{batched}")
        set_config(run, values="arrays", FPS=30, mode="current")
        with Beholder(run, strict=True, background=False) as beholder:
            assert update_compiled(beholder, arrays=arrays)
            gather, = beholder.gatherer.device_gathers if batched else [None]
        frames[batched] = read_frame_file(run)
    a, b = frames[False], frames[True]
    for i, (ra, rb) in enumerate(zip(a.sections, b.sections)):
        assert ra == rb
        np.testing.assert_array_equal(a.section_values(i), b.section_values(i))
    entry, = gather._functions.values()
    tensors = [arrays[name] for name in sorted(arrays)]
    graph = functions[0].get_concrete_function(tensors, entry.positions).graph
    read = {op.inputs[0].dtype for op in graph.get_operations() if op.type == "GatherV2"}
    assert len([op for op in graph.get_operations() if op.type == "GatherV2"]) == len(dtypes)
    assert read <= GPU_GATHER, read - GPU_GATHER


def test_a_string_tensor_beside_variables_leaves_them_batched_and_shown(tmp_path, monkeypatch):
    """A tf.string tensor (no cast to numbers) is kept out of the device batch: its section says why, the
    variables beside it are gathered in the batch and shown. Before, the batch's one cast failed and
    every section of the frame was empty with a graph execution error. TF hands its strings to NumPy
    as bytes objects: the section says strings, not Python objects."""
    monkeypatch.setattr(tf_batch, "BATCH_CPU_TENSORS", True)
    traced_batch.forget_compiled()
    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=30, mode="current")
    kernel = tf.Variable(tf.reshape(tf.range(12.0), (3, 4)))
    with Beholder(run, background=False) as beholder:
        assert update_compiled(beholder, arrays={"kernel": kernel, "names": tf.constant([["a", "b"]])})
        assert [g.__class__.__name__ for g in beholder.gatherer.device_gathers] == ["TfGather"]
    frame = read_frame_file(run)
    records = {s["name"]: s for s in frame.sections}
    assert "(strings) cannot be shown" in records["names"]["missing"]
    assert not records["kernel"].get("missing")
    assert frame.section_values([s["name"] for s in frame.sections].index("kernel")).max() == 11.0


@pytest.mark.parametrize("mode", ["current", "variance"])
def test_a_frame_due_reads_no_tensor_back_on_the_training_thread(tmp_path, monkeypatch, mode):
    """Once a plan's tf.function is traced, a frame-due update() reads no tensor's values on the training
    thread (numpy(), which on a GPU copies and waits): the worker reads the gather's one result."""
    from tensorflow.python.framework import ops

    monkeypatch.setattr(tf_batch, "BATCH_CPU_TENSORS", True)
    thread, reading, reads = threading.get_ident(), [False], []

    def recorded(name, real):
        def read(self, *args, **kwargs):
            if reading[0] and threading.get_ident() == thread:
                reads.append(name)
            return real(self, *args, **kwargs)
        return read

    for name in ("numpy", "__array__"):
        monkeypatch.setattr(ops._EagerTensorBase, name, recorded(name, getattr(ops._EagerTensorBase, name)))
    variables = {"kernel": tf.Variable(tf.zeros((3, 3, 16, 40))),
                 "h16": tf.Variable(tf.zeros((6, 6), tf.float16))}
    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=30, mode=mode)
    with Beholder(run, strict=True) as beholder:
        for k in range(5):
            arrays = {name: x for name, x in arrays_for(variables, k).items() if name != "plain"}
            if k < 2:  # (the plan's first frames: traced in the background)
                assert update_compiled(beholder, arrays=arrays)
            else:
                beholder.frame_due_now()
                reading[0] = True
                assert beholder.update(arrays=arrays)
                reading[0] = False
            beholder.flush()
        assert beholder.frames_written == 5 and beholder.failures == 0
    assert reads == []
    if mode == "current":
        frame = read_frame_file(run)
        i = [record["name"] for record in frame.sections].index("counts")
        np.testing.assert_array_equal(frame.section_values(i).ravel(), arrays["counts"].numpy())
