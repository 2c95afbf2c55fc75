"""BeholderCallback in a real model.fit(), and Keras 3 objects going through the TF adapter."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from pixel_checks import check_sampled_pixels
from support import framed_steps, run_script
from tf_support_helpers import PYTHON_ENV, configure, tiny_convnet, tiny_data

import beholder_plugin
from beholder_plugin import Beholder, read_frame, read_section_info
from beholder_plugin.protocol.history import list_history
from beholder_plugin.protocol.runfiles import plugin_dir, read_frame_file

pytestmark = pytest.mark.tf
keras = pytest.importorskip("keras")


def _fit(model, callbacks, epochs=2):
    x, y = tiny_data()
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=8, epochs=epochs, shuffle=True, verbose=0, callbacks=callbacks)
    return [v.numpy() for v in model.weights]


def test_import_does_not_load_tensorflow_and_callback_is_lazy():
    code = (
        "import sys, beholder_plugin\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
        "cb = beholder_plugin.BeholderCallback\n"
        "import keras\n"
        "assert issubclass(cb, keras.callbacks.Callback)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, **PYTHON_ENV)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_fit_writes_frames_named_by_variable_paths(run_dir):
    configure(run_dir)
    model = tiny_convnet()
    callback = beholder_plugin.BeholderCallback(run_dir, strict=True)
    _fit(model, [callback])
    assert callback.beholder.frames_written >= 1
    assert callback.beholder.failures == 0
    frame = read_frame_file(run_dir)
    assert frame is not None and frame.header["values"] == "trainable_variables"
    names = [s["name"] for s in read_section_info(run_dir)]
    assert names == [v.path for v in model.trainable_variables]
    assert names == ["tiny/conv/kernel", "tiny/conv/bias", "tiny/out/kernel", "tiny/out/bias"]


def test_frame_matches_the_trained_weights(run_dir):
    """The last frame written during fit is what Beholder renders from the final weights."""
    configure(run_dir, FPS=30)
    model = tiny_convnet()
    callback = beholder_plugin.BeholderCallback(run_dir, strict=True)
    # one batch per epoch: the frame of the first (always due) batch shows the weights after it
    x, y = tiny_data(8)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    model.fit(x, np.eye(3)[y], batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    fit_pixels = read_frame(run_dir)
    expected_run = os.path.join(run_dir, "expected")
    configure(expected_run, FPS=30)
    with Beholder(expected_run, strict=True) as reference:
        assert reference.update(variables={v.path: v.numpy() for v in model.trainable_variables})
    np.testing.assert_array_equal(fit_pixels, read_frame(expected_run))


def test_callback_does_not_change_training(run_dir):
    """Same seed, with and without the callback (rendering every batch): identical weights."""
    without = _fit(tiny_convnet(seed=3, dropout=True), [])
    configure(run_dir, FPS=30)
    callback = beholder_plugin.BeholderCallback(run_dir, strict=True)
    with_cb = _fit(tiny_convnet(seed=3, dropout=True), [callback])
    assert callback.beholder.frames_written >= 1
    assert len(without) == len(with_cb)
    for a, b in zip(without, with_cb):
        np.testing.assert_array_equal(a, b)
    # and the seed does matter, so the comparison above can fail
    other = _fit(tiny_convnet(seed=4, dropout=True), [])
    assert any(not np.array_equal(a, b) for a, b in zip(without, other))


def test_frame_callable_is_used_only_for_frames(run_dir):
    calls = []
    image = np.arange(20 * 30, dtype=np.float32).reshape(20, 30)

    def frame():
        calls.append(1)
        return image

    configure(run_dir, values="trainable_variables")
    callback = beholder_plugin.BeholderCallback(run_dir, frame=frame, strict=True)
    _fit(tiny_convnet(), [callback], epochs=1)
    assert calls == []
    configure(run_dir, values="frames")
    _fit(tiny_convnet(), [callback], epochs=1)
    assert len(calls) >= 1
    shown = read_frame(run_dir)
    assert shown.shape[:2] == image.shape
    assert read_frame_file(run_dir).header["values"] == "frames"


def test_frame_must_be_callable(run_dir):
    with pytest.raises(TypeError, match="callable"):
        beholder_plugin.BeholderCallback(run_dir, frame=np.zeros((4, 4)))


def test_a_fit_faster_than_the_frame_rate_ends_on_a_frame_of_the_trained_model(run_dir):
    """A fit of 16 batches at 1 frame/s wrote its first frame and no other: the run's last frame showed
    the weights after 1 batch, and the dashboard said "showing its last frame, step 1" when it ended."""
    configure(run_dir, FPS=1)
    model = tiny_convnet()
    callback = beholder_plugin.BeholderCallback(run_dir, strict=True)
    weights = _fit(model, [callback])
    frame = read_frame_file(run_dir)
    assert frame.header["step"] == 16  # (2 epochs of 8 batches)
    names = [s["name"] for s in frame.sections]
    for variable, value in zip(model.weights, weights, strict=True):
        if value.ndim == 1:  # (the biases: shown whole, in order)
            np.testing.assert_array_equal(frame.section_values(names.index(variable.path)).ravel(),
                                          value.astype(np.float32))
    written = callback.beholder.frames_written
    configure(run_dir, FPS=30)  # (a frame due at every batch: none is added at the end, whose step it has)
    callback = beholder_plugin.BeholderCallback(run_dir, strict=True)

    class EveryBatch(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            callback.beholder.frame_due_now()

    _fit(model, [EveryBatch(), callback], epochs=1)
    steps = [e.step for e in list_history(run_dir)[written:]]
    assert steps == sorted(set(steps)) and steps[-1] == 8, steps  # (one a busy worker skipped may lack)


def test_recording_is_finished_when_training_ends(run_dir):
    configure(run_dir, is_recording=True)
    callback = beholder_plugin.BeholderCallback(run_dir, strict=True)
    closed = []
    original_close = callback.beholder.close

    def close():
        closed.append(True)
        original_close()

    callback.beholder.close = close
    _fit(tiny_convnet(), [callback], epochs=1)
    assert closed == [True]
    recorded = [n for n in os.listdir(plugin_dir(run_dir)) if n.startswith("video-")]
    assert recorded, os.listdir(plugin_dir(run_dir))


def test_keras_variables_and_half_precision(run_dir):
    """Keras variables of float16/bfloat16 and tf tensors render like their float32 values."""
    import tensorflow as tf

    configure(run_dir, values="arrays")
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 3, 8, 16)).astype(np.float32)
    vector = rng.normal(size=40).astype(np.float32)
    # values exactly representable in bfloat16, so every variant must give the same pixels
    base = tf.cast(tf.cast(base, tf.bfloat16), tf.float32).numpy()
    vector = tf.cast(tf.cast(vector, tf.bfloat16), tf.float32).numpy()
    variants = {
        "numpy": {"w": base, "b": vector},
        "keras_f32": {"w": keras.Variable(base), "b": keras.Variable(vector)},
        "keras_f16": {
            "w": keras.Variable(base, dtype="float16"),
            "b": keras.Variable(vector, dtype="float16"),
        },
        "tf_bf16": {
            "w": tf.constant(base, tf.bfloat16),
            "b": tf.Variable(vector, dtype=tf.bfloat16),
        },
    }
    pixels = {}
    for name, arrays in variants.items():
        run = os.path.join(run_dir, name)
        configure(run, values="arrays")
        with Beholder(run, strict=True) as beholder:
            assert beholder.update(arrays=arrays)
        pixels[name] = read_frame(run)
    for name in variants:
        np.testing.assert_array_equal(pixels[name], pixels["numpy"], err_msg=name)


ASYNC_FIT = """
import sys, threading
import numpy as np
import keras
from beholder_plugin import BeholderCallback, write_config, DEFAULT_CONFIG
from beholder_plugin.protocol.runfiles import read_frame_file

run = sys.argv[1]
write_config(run, {**DEFAULT_CONFIG, "FPS": 30, "mode": "current"})
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"),
                          keras.layers.Flatten(), keras.layers.Dense(3, name="dense")])
model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
threads = set()

class Spy(BeholderCallback):
    def on_train_batch_end(self, batch, logs=None):
        threads.add(threading.current_thread() is threading.main_thread())
        super().on_train_batch_end(batch, logs)

x = np.random.default_rng(0).normal(size=(512, 8, 8, 1)).astype("float32")
y = np.arange(512) % 3
callback = Spy(run, strict=True)
model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])
frames = callback.beholder.frames_written
frame = read_frame_file(run)
names = [s["name"] for s in frame.sections]
kernel = model.get_layer("dense").kernel
shown = frame.section_values(names.index(kernel.path))
print(keras.backend.backend(), sorted(threads), frames, callback.beholder.failures,
      names == [v.path for v in model.trainable_variables], shown.shape)
"""


def test_on_a_thread_safe_backend_keras_runs_the_hook_off_the_training_thread(run_dir):
    """Keras's torch backend dispatches async_safe batch hooks to a pool; frames still arrive whole."""
    pytest.importorskip("torch")
    env = dict(os.environ, **PYTHON_ENV, KERAS_BACKEND="torch")
    out = subprocess.run([sys.executable, "-c", ASYNC_FIT, run_dir], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    backend, on_main, frames, failures, named, shape = out.stdout.strip().split(" ", 5)
    assert backend == "torch" and on_main == "[False]"  # every hook ran on a Keras worker thread
    assert int(frames) >= 2 and failures == "0" and named == "True"
    assert shape == "(128, 3)"  # the dense kernel (144, 3): its 128 sampled rows, all 3 columns


def test_the_callback_declares_itself_async_safe_and_never_overlaps_its_hooks(run_dir):
    import threading

    configure(run_dir)
    callback = beholder_plugin.BeholderCallback(run_dir, strict=True)
    assert callback.async_safe is True
    entered = threading.Event()
    release = threading.Event()
    calls = []

    def slow_update(**kwargs):
        calls.append(kwargs)
        entered.set()
        release.wait(10)

    callback.beholder.update = slow_update
    first = threading.Thread(target=callback.on_train_batch_end, args=(0,))
    first.start()
    assert entered.wait(10)
    callback.on_train_batch_end(1)  # the first hook still runs: this one returns at once
    release.set()
    first.join(10)
    callback.on_train_batch_end(2)
    assert len(calls) == 2


def test_a_worker_hook_that_comes_after_the_next_step_began_leaves_the_read_to_the_training_thread(run_dir):
    """The gate: variables are read between steps only, on whichever thread gets there in time."""
    import threading

    configure(run_dir)
    callback = beholder_plugin.BeholderCallback(run_dir, strict=True)
    reads = []
    callback.beholder.update = lambda **kw: reads.append(threading.get_ident())
    callback.on_train_begin()
    callback.on_epoch_begin(0)
    callback.on_train_batch_begin(0)
    callback.on_train_batch_begin(1)  # step 1 has begun before batch 0's hook runs

    def late_hook():
        callback.on_train_batch_end(0)

    worker = threading.Thread(target=late_hook)
    worker.start()
    worker.join(10)
    assert reads == []  # too late: the weights were already changing
    callback.on_train_batch_begin(2)  # the training thread makes the update, between steps
    assert reads == [threading.get_ident()]

    worker = threading.Thread(target=callback.on_train_batch_end, args=(2,))  # in time: reads there
    worker.start()
    worker.join(10)
    assert len(reads) == 2 and reads[1] != threading.get_ident()
    callback.on_train_batch_begin(3)  # (the epoch's last batch)
    callback.on_test_begin()  # validation: no reading until the next batch begins
    worker = threading.Thread(target=callback.on_train_batch_end, args=(3,))  # batch 3's hook, after it
    worker.start()
    worker.join(10)
    assert len(reads) == 2
    callback.on_epoch_end(0)  # the late update is made at the epoch's end
    assert len(reads) == 3 and reads[2] == threading.get_ident()
    callback.beholder.close()


def _stamping_callback(run_dir):
    """A callback whose Beholder's update() only counts the step and notes it: (callback, steps noted)."""
    callback, stamped = beholder_plugin.BeholderCallback(run_dir, strict=True), []

    def update(**kwargs):
        callback.beholder.step += 1  # (as update() does)
        stamped.append(callback.beholder.step)

    callback.beholder.update = update
    return callback, stamped


def test_each_frame_is_stamped_with_the_batches_whose_weights_it_shows(run_dir):
    """Where late worker-thread hooks leave their update to the next batch, update() calls are fewer than
    batches (73 for 128 on Keras's JAX backend), and the step was their count: a frame stamped step 2
    showed the weights after batch 8. The step is now the number of batches the weights have seen."""
    import threading

    configure(run_dir)
    callback, stamped = _stamping_callback(run_dir)
    callback.on_train_begin()
    callback.on_epoch_begin(0)
    for batch in range(3):  # in time, on the training thread: after batch b, b + 1 batches
        callback.on_train_batch_begin(batch)
        callback.on_train_batch_end(batch)
    callback.on_train_batch_begin(3)
    callback.on_train_batch_begin(4)  # batch 3's hook comes after batch 4 began: left to batch 5's begin
    worker = threading.Thread(target=callback.on_train_batch_end, args=(3,))
    worker.start()
    worker.join(10)
    callback.on_train_batch_begin(5)  # the weights after batches 0-4
    worker = threading.Thread(target=callback.on_train_batch_end, args=(5,))  # in time: after 0-5
    worker.start()
    worker.join(10)
    callback.on_epoch_end(0)
    callback.on_epoch_begin(1)
    callback.on_train_batch_begin(0)
    callback.on_train_batch_end(0)  # the second epoch's first batch: 7 in all
    assert stamped == [1, 2, 3, 5, 6, 7]
    callback.beholder.update()  # the user's own update() between two fits (a Beholder passed in): step 8
    callback.on_train_begin()  # a second fit goes on from there, never backwards
    callback.on_epoch_begin(0)
    callback.on_train_batch_begin(0)
    callback.on_train_batch_end(0)
    assert stamped == [1, 2, 3, 5, 6, 7, 8, 9]
    callback.beholder.close()


def test_with_steps_per_execution_a_frame_is_stamped_with_the_batches_run(run_dir):
    """With compile(steps_per_execution=4), Keras calls the batch hooks once per 4 batches (their first
    and last batch numbers), and a frame was stamped with the number of hooks: step 3 held the weights
    after 10 batches. The step now counts the batches, and the epoch's short last execution counts the
    batches it ran."""
    configure(run_dir)
    model = tiny_convnet()
    x, y = tiny_data(n=40)  # 10 batches of 4: executions of 4, 4 and 2 batches
    model.compile(optimizer=keras.optimizers.SGD(0.05), steps_per_execution=4,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    stamped = []

    class Stamps(beholder_plugin.BeholderCallback):
        def on_train_batch_end(self, batch, logs=None):
            self.beholder.frame_due_now()  # (every hook's frame is due, however fast the machine)
            super().on_train_batch_end(batch, logs)
            stamped.append((self.beholder.step, [v.numpy().copy() for v in model.trainable_variables]))

    callback = Stamps(run_dir, strict=True)
    model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[callback])
    assert [step for step, _ in stamped] == [4, 8, 10, 14, 18, 20]
    # the frame stamped 20 holds the weights after all 20 batches
    frame = read_frame_file(run_dir)
    assert frame.header["step"] == 20
    final = [v.numpy() for v in model.trainable_variables]
    assert all(np.array_equal(a, b) for a, b in zip(stamped[-1][1], final))
    assert np.array_equal(np.sort(frame.section_values(0).ravel()), np.sort(final[0].ravel()))  # (laid out)


def _framed_steps(callback) -> list[int]:
    """Make each update() of the callback's Beholder take a frame; the steps of those frames, as taken."""
    return framed_steps(callback.beholder)


def _timeline_last_step(run: str) -> int:
    from beholder_plugin.protocol.timeline import read_timeline

    return max(int(columns["step"].max()) for columns in read_timeline(run).values())


def _compiled(model, **compile_args):
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), **compile_args)
    return model


def test_a_new_callback_on_a_resumed_fit_goes_on_from_the_optimizers_steps(run_dir):
    """A fit resumed with initial_epoch (or any second fit) given a new callback stamped its frames from 1
    again, while optimizer.iterations (TensorBoard's evaluation_*_vs_iterations) went on from 10: the
    frame of step 20 showed the weights after 30 batches. The steps now go on from the optimizer's."""
    configure(run_dir)
    model = _compiled(tiny_convnet())
    x, y = tiny_data(n=40)  # 10 batches of 4
    first = beholder_plugin.BeholderCallback(run_dir, strict=True)
    first_steps = _framed_steps(first)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[first])
    assert first_steps == list(range(1, 11))
    resumed = beholder_plugin.BeholderCallback(run_dir, strict=True)
    steps = _framed_steps(resumed)
    model.fit(x, y, batch_size=4, epochs=3, initial_epoch=1, shuffle=False, verbose=0, callbacks=[resumed])
    assert int(model.optimizer.iterations.numpy()) == 30
    assert steps == list(range(11, 31))
    frame = read_frame_file(run_dir)
    assert frame.header["step"] == 30 and _timeline_last_step(run_dir) == 30
    weights = {v.path: v.numpy() for v in model.trainable_variables}
    assert check_sampled_pixels(frame, weights) > 50  # (the trained weights)


def test_a_new_compile_between_two_fits_never_takes_the_steps_back(run_dir):
    """A second compile() starts a fresh optimizer counting from 0: the frames go on from the last one's step
    (steps going back read as a restarted trainer in the timeline)."""
    configure(run_dir)
    model = _compiled(tiny_convnet())
    x, y = tiny_data(n=40)  # 10 batches of 4
    callback = beholder_plugin.BeholderCallback(run_dir, strict=True)
    steps = _framed_steps(callback)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[callback])
    model = _compiled(model)  # (a new optimizer: iterations 0)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[callback])
    assert int(model.optimizer.iterations.numpy()) == 10
    assert steps == list(range(1, 21))
    assert read_frame_file(run_dir).header["step"] == 20 and _timeline_last_step(run_dir) == 20


@pytest.mark.parametrize("scaler", [True, False])
def test_an_optimizer_that_counts_fewer_steps_than_batches_never_takes_the_frames_back(run_dir, scaler):
    """A loss scaler leaves the steps it skips out of optimizer.iterations, and a train_step with optimizers
    of its own leaves compile()'s at 0: with steps_per_execution=2, each epoch's end took the steps back to
    the optimizer's count (frames 2..10, 9, 11, ..., the timeline read as restarts)."""
    configure(run_dir)
    model = tiny_convnet()
    optimizer = keras.optimizers.SGD(0.05)
    if scaler:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=2.0 ** 15)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=2)
    x, y = tiny_data(n=40)  # 10 batches of 4
    x[:12] = np.inf  # the first 3 batches: non-finite gradients, steps the scaler skips
    callback = beholder_plugin.BeholderCallback(run_dir, strict=True)
    steps = _framed_steps(callback)
    if not scaler:  # (the optimizer's count stays behind: as if a train_step used optimizers of its own)
        model.optimizer.iterations.assign(0)
        real = model.optimizer.apply

        def apply(*args, **kwargs):
            real(*args, **kwargs)
            model.optimizer.iterations.assign(0)

        model.optimizer.apply = apply
    model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0, callbacks=[callback])
    assert steps == list(range(2, 31, 2))
    assert _timeline_last_step(run_dir) == 30


def test_with_steps_per_execution_on_data_of_unknown_length_the_short_execution_counts_the_batches_run(
        run_dir):
    """With data of unknown length (a filtered tf.data.Dataset, a generator) and steps_per_execution=4,
    Keras reports an epoch's last execution as 4 batches when it ran 2, and calls on_train_batch_begin
    once more before finding no data: the frames were stamped 4, 8, 12, 16, 20, 24 for 20 batches. The
    short execution now counts the batches the optimizer ran."""
    import tensorflow as tf

    configure(run_dir)
    model = _compiled(tiny_convnet(), steps_per_execution=4)
    x, y = tiny_data(n=40)  # 10 batches of 4: executions of 4, 4 and 2 batches
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4).filter(lambda a, b: True)
    assert data.cardinality() == tf.data.UNKNOWN_CARDINALITY
    callback = beholder_plugin.BeholderCallback(run_dir, strict=True)
    steps = _framed_steps(callback)
    model.fit(data, epochs=2, verbose=0, callbacks=[callback])
    assert int(model.optimizer.iterations.numpy()) == 20
    assert steps == [4, 8, 10, 14, 18, 20]
    frame = read_frame_file(run_dir)
    assert frame.header["step"] == 20 and _timeline_last_step(run_dir) == 20
    assert check_sampled_pixels(frame, {v.path: v.numpy() for v in model.trainable_variables}) > 50


def test_a_late_hook_that_a_later_hook_overtook_adds_no_second_frame_of_the_same_step(run_dir):
    """On the JAX and torch backends a hook left late by the next batch's begin asked the training thread
    for an update even when the next batch's own hook had read in time since: a second update of the
    same weights, stamped the same step (frames 10, 10 at an epoch's end, 5, 5 within one)."""
    import threading

    configure(run_dir)
    callback, stamped = _stamping_callback(run_dir)
    callback.on_train_begin()
    callback.on_epoch_begin(0)
    callback.on_train_batch_begin(0)
    callback.on_train_batch_begin(1)
    for batch in (0, 1):  # batch 0's hook is late; batch 1's, in time, reads the weights after 2 batches
        worker = threading.Thread(target=callback.on_train_batch_end, args=(batch,))
        worker.start()
        worker.join(10)
    assert stamped == [2]
    callback.on_train_batch_begin(2)  # (no weights changed since batch 1's read: nothing to update)
    callback.on_train_batch_begin(3)
    for batch in (2, 3):
        worker = threading.Thread(target=callback.on_train_batch_end, args=(batch,))
        worker.start()
        worker.join(10)
    callback.on_epoch_end(0)
    assert stamped == [2, 4]
    callback.beholder.close()


def test_the_callback_shows_chosen_layers_activations_for_a_probe_batch(run_dir):
    configure(run_dir, values="activations")
    model = tiny_convnet()
    probe, _ = tiny_data(n=5, seed=7)
    callback = beholder_plugin.BeholderCallback(run_dir, probe=probe, layers=["conv", "out"], strict=True)
    x, y = tiny_data()
    model.compile(optimizer=keras.optimizers.SGD(0.0),  # the weights stay put: every frame is comparable
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    assert callback.beholder.frames_written >= 1 and callback.beholder.failures == 0
    frame = read_frame_file(run_dir)
    assert [rec["name"] for rec in frame.sections] == ["conv", "out"]
    assert frame.sections[0]["layout"] == "activation_nhwc" and frame.sections[0]["shape"] == [5, 10, 10, 4]
    taps = keras.Model(model.inputs, [model.get_layer("conv").output, model.get_layer("out").output])
    conv, out = (np.asarray(a) for a in taps(probe, training=False))
    assert check_sampled_pixels(frame, {"conv": conv, "out": out}) > 100



def test_the_callback_takes_beholders_arguments_or_a_beholder(run_dir, tmp_path):
    """values=, ranks=, on_anomaly=... raised TypeError, and a Beholder could not be passed, where the
    Lightning and Hugging Face callbacks take both."""
    model = tiny_convnet()
    probe, _ = tiny_data(n=5, seed=7)
    callback = beholder_plugin.BeholderCallback(run_dir, probe=probe, values="activations", norm_jump=4.0)
    _fit(model, [callback], epochs=1)
    assert beholder_plugin.read_config(run_dir)["values"] == "activations"  # (the run's first settings)
    assert callback.beholder.timeline.norm_jump == 4.0
    assert read_frame_file(run_dir).header["values"] == "activations"
    own = Beholder(str(tmp_path / "own"), strict=True)
    given = beholder_plugin.BeholderCallback(own)
    assert given.beholder is own
    _fit(model, [given], epochs=1)
    written = own.frames_written
    assert written >= 1 and own.watched is None  # (unwatched at the end, not closed:)
    own.frame_due_now()
    assert own.update(variables=model) and own.flush() and own.frames_written == written + 1
    with pytest.raises(TypeError, match="go to Beholder"):
        beholder_plugin.BeholderCallback(own, ranks="all")
    own.close()


def test_activations_without_a_probe_say_where_to_pass_one(run_dir):
    """The callback given no probe batch: the empty section says how to give one, to the callback too."""
    configure(run_dir, values="activations")
    model = tiny_convnet()
    callback = beholder_plugin.BeholderCallback(run_dir, strict=True)
    x, y = tiny_data()
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    (rec,) = read_frame_file(run_dir).sections
    assert rec["name"] == "activations"
    assert "probe=<a batch of inputs> to BeholderCallback(...) or watch()" in rec["missing"]

TORCH_BACKEND_FIT = """
import sys, warnings
import numpy as np
import keras
from beholder_plugin import BeholderCallback, write_config, DEFAULT_CONFIG
from beholder_plugin.protocol.runfiles import read_frame_file
from pixel_checks import check_sampled_pixels

acts, grads = sys.argv[1], sys.argv[2]
write_config(acts, {**DEFAULT_CONFIG, "FPS": 30, "mode": "current", "values": "activations"})
write_config(grads, {**DEFAULT_CONFIG, "FPS": 30, "mode": "current", "values": "gradients"})
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv1"),
                          keras.layers.Flatten(name="flatten"), keras.layers.Dense(3, name="dense")],
                         name="sequential")
model.compile(optimizer=keras.optimizers.SGD(0.0),  # the weights stay put: the probe's outputs are known
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
x = np.random.default_rng(0).normal(size=(32, 8, 8, 1)).astype("float32")
y = np.arange(32) % 3
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    first = BeholderCallback(acts, probe=x[:4], strict=True)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[first])
print("structure warnings", sum("structure" in str(w.message) for w in caught))
frame = read_frame_file(acts)
taps = keras.Model(model.inputs[0], [model.get_layer(n).output for n in ("conv1", "flatten", "dense")])
expected = dict(zip(("conv1", "flatten", "dense"),
                    (keras.ops.convert_to_numpy(a) for a in taps(x[:4], training=False))))
print("activations", first.beholder.frames_written >= 1, first.beholder.failures,
      [s["name"] for s in frame.sections], check_sampled_pixels(frame, expected) > 50)
second = BeholderCallback(grads, strict=True)
model.fit(x[:8], y[:8], batch_size=8, epochs=1, verbose=0, callbacks=[second])  # one step, one frame
frame = read_frame_file(grads)
names = [s["name"] for s in frame.sections]
got = {v.path: keras.ops.convert_to_numpy(v.value.grad) for v in model.trainable_variables}
print("gradients", second.beholder.frames_written, names == [v.path for v in model.trainable_variables],
      names[:2], check_sampled_pixels(frame, got) > 50)
"""


def test_on_the_torch_backend_a_probe_shows_activations_and_gradients_are_named_by_variable_path(tmp_path):
    """Keras's torch model is a torch module too: it is still watched as Keras (probe, variable paths)."""
    pytest.importorskip("torch")
    runs = [str(tmp_path / "activations"), str(tmp_path / "gradients")]
    out = run_script(TORCH_BACKEND_FIT, *runs, **PYTHON_ENV, KERAS_BACKEND="torch")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.split(" ")[0] in
             ("structure", "activations", "gradients")]
    assert lines[0] == "structure warnings 0"  # the probe is called in the structure the model takes
    assert lines[1] == "activations True 0 ['conv1', 'flatten', 'dense'] True"
    assert lines[2] == "gradients 1 True ['sequential/conv1/kernel', 'sequential/conv1/bias'] True"


LOSS_SCALED_FIT = """
import sys
import numpy as np
import keras
from beholder_plugin import Beholder, read_anomalies, read_timeline, write_config, DEFAULT_CONFIG
from beholder_plugin.protocol.runfiles import read_frame_file
from pixel_checks import check_sampled_pixels

root = sys.argv[1]
x = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype("float32")
cases = {"counted": {}, "grown": {"dynamic_growth_steps": 1}, "overflowed": {"initial_scale": 1e38},
         "unscaled": None}
for case, options in cases.items():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"),
                              keras.layers.Flatten(), keras.layers.Dense(3, name="dense")], name="net")
    optimizer = keras.optimizers.SGD(0.01)
    if options is not None:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, **options)
    model.compile(optimizer=optimizer, loss="mse")
    y = np.full((16, 3), 1e3 if case == "overflowed" else 0.5, "float32")
    model.train_on_batch(x, y)
    run = f"{root}/{case}"
    write_config(run, {**DEFAULT_CONFIG, "FPS": 1, "mode": "current", "values": "gradients"})
    with Beholder(run, strict=True) as beholder:
        beholder.watch(model)
        beholder.frame_due_now()
        assert beholder.update()
    used = 1.0 if options is None else float(options.get("initial_scale", 2.0 ** 15))
    grads = {v.path: keras.ops.convert_to_numpy(v.value.grad) for v in model.trainable_variables}
    unscaled = {name: g * np.float32(1 / used) for name, g in grads.items()}
    frame = read_frame_file(run)
    if case == "overflowed":
        print(case, "non-finite", not np.isfinite(frame.values).all(), "anomalies", len(read_anomalies(run)))
        continue
    columns = read_timeline(run)
    norms_right = all(np.isclose(columns[n]["norm"][0], np.linalg.norm(g), rtol=1e-5)
                      for n, g in unscaled.items())
    print(case, "pixels", check_sampled_pixels(frame, unscaled) > 50, "norms", norms_right,
          "largest", float(np.abs(frame.values[np.isfinite(frame.values)]).max()) < 100)
"""


@pytest.mark.parametrize("batched", ["0", "1"])
def test_on_the_torch_backend_gradients_a_loss_scaler_scaled_are_shown_unscaled(tmp_path, batched):
    """mixed_float16 compiles a LossScaleOptimizer: Keras's torch backend leaves each gradient in .grad
    times the loss scale, and its step has already doubled or halved the scale when the frame reads
    them. The frame shows them divided by the scale the step used (bit for bit), the timeline's norms
    too, after a counted step, one that grew the scale and one that overflowed; an overflow is not an
    anomaly (the optimizer skips the step). Without a loss scaler nothing is divided."""
    pytest.importorskip("torch")
    out = run_script(LOSS_SCALED_FIT, str(tmp_path), **PYTHON_ENV, KERAS_BACKEND="torch",
                     BEHOLDER_BATCH_CPU_TENSORS=batched)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = {line.split(" ")[0]: line for line in out.stdout.splitlines()}
    for case in ("counted", "grown", "unscaled"):
        assert lines[case] == f"{case} pixels True norms True largest True"
    assert lines["overflowed"] == "overflowed non-finite True anomalies 0"


def test_a_model_not_built_yet_says_so_then_its_frames_come(run_dir):
    """A Keras model with no Input, not called yet, has no variables: the frame says the model is not
    built yet (it said "an empty list or dict was passed", which the user never did), which is no
    failure (it was counted as one, with a traceback, and the dashboard showed it in red for the rest of
    the run), and once the model has been called the frames show its variables."""
    from beholder_plugin.trainer.views.placeholder import UNBUILT, placeholder_frame

    configure(run_dir, values="trainable_variables")
    model = keras.Sequential([keras.layers.Dense(3, name="d")], name="not_built")
    with Beholder(run_dir, variables=model, strict=True) as beholder:
        beholder.frame_due_now()
        assert beholder.update()
        beholder.flush()
        assert beholder.failures == 0 and beholder.last_error is None
        frame = read_frame_file(run_dir)
        assert frame.header["values"] == "placeholder"
        np.testing.assert_array_equal(frame.pixels, placeholder_frame(UNBUILT))
        model(np.ones((2, 4), "float32"))
        beholder.frame_due_now()
        assert beholder.update()
        beholder.flush()
    names = [s["name"] for s in read_frame_file(run_dir).sections]
    assert names == [v.path for v in model.trainable_variables]
