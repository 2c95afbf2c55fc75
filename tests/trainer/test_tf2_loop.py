"""Custom TF2 loops: GradientTape, the gradient helpers, eager slicing, and update() inside tf.function."""

from __future__ import annotations

import doctest
import logging
import os

import numpy as np
import pytest
from support import due
from tf_support_helpers import configure, tiny_convnet, tiny_data

from beholder_plugin import (
    Beholder,
    gradient_step,
    named_gradients,
    read_frame,
    read_section_info,
)
from beholder_plugin.protocol.plans import make_plan
from beholder_plugin.protocol.runfiles import read_frame_file
from beholder_plugin.trainer.integrations import gradients as gradients_module
from beholder_plugin.trainer.sources import tf_tensors as tf_support

pytestmark = [pytest.mark.tf, pytest.mark.usefixtures("flushed_updates")]
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")


def test_custom_loop_from_the_issue(run_dir):
    """The README's loop: variables=model for weights, arrays={v.path: g} for gradients."""
    configure(run_dir, values="arrays")
    model = tiny_convnet()
    optimizer = keras.optimizers.SGD(0.1)
    x, y = tiny_data(16)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    beholder = Beholder(run_dir, variables=model, strict=True)
    for step in range(2):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        if step == 1:
            configure(run_dir, values="trainable_variables")
            due(beholder)
        assert beholder.update(arrays={v.path: g for v, g in zip(model.trainable_variables, grads)})
        names = [s["name"] for s in read_section_info(run_dir)]
        assert names == [v.path for v in model.trainable_variables]
        if step == 0:  # the gradients are shown: compare with a NumPy rendering of them
            reference = os.path.join(run_dir, "reference")
            configure(reference, values="arrays")
            with Beholder(reference, strict=True) as ref:
                ref.update(arrays={v.path: g.numpy() for v, g in zip(model.trainable_variables, grads)})
            np.testing.assert_array_equal(read_frame(run_dir), read_frame(reference))
    beholder.close()


def test_gradient_step_applies_and_names_gradients():
    model = tiny_convnet()
    before = [v.numpy() for v in model.trainable_variables]
    x, y = tiny_data(8)
    optimizer = keras.optimizers.SGD(0.1)
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, model(x))
    grads = gradient_step(tape, loss, model, optimizer)
    assert list(grads) == [v.path for v in model.trainable_variables]
    for old, var in zip(before, model.trainable_variables):
        np.testing.assert_allclose(var.numpy(), old - 0.1 * grads[var.path].numpy(), rtol=1e-5, atol=1e-6)


def test_gradient_step_inside_tf_function_returns_usable_arrays(run_dir):
    configure(run_dir, values="arrays")
    model = tiny_convnet()
    optimizer = keras.optimizers.Adam(1e-3)
    x, y = tiny_data(8)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(y, model(x), from_logits=True)
            )
        return gradient_step(tape, loss, model, optimizer)

    grads = step(x, y)
    with Beholder(run_dir, strict=True) as beholder:
        assert beholder.update(arrays=grads)
    assert [s["name"] for s in read_section_info(run_dir)] == [v.path for v in model.trainable_variables]


def test_named_gradients_skips_none_and_keeps_repeated_names():
    a, b, c = tf.Variable(1.0, name="v"), tf.Variable(2.0, name="v"), tf.Variable(3.0, name="u")
    named = named_gradients([a, b, c], [tf.constant(1.0), tf.constant(2.0), None])
    assert list(named) == ["v:0", "v:0#2"]
    assert [float(g) for g in named.values()] == [1.0, 2.0]


def test_docstring_examples_run():
    result = doctest.testmod(gradients_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10
    assert result.failed == 0


def test_sparse_gradient_of_an_embedding(run_dir):
    configure(run_dir, values="arrays")
    table = tf.Variable(np.arange(50 * 4, dtype=np.float32).reshape(50, 4))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.gather(table, [1, 7, 7]))
    grad = tape.gradient(loss, table)
    assert isinstance(grad, tf.IndexedSlices)
    with Beholder(run_dir, strict=True) as beholder:
        assert beholder.update(arrays={"embedding": grad})
    reference = os.path.join(run_dir, "reference")
    configure(reference, values="arrays")
    with Beholder(reference, strict=True) as ref:
        ref.update(arrays={"embedding": tf.convert_to_tensor(grad).numpy()})
    np.testing.assert_array_equal(read_frame(run_dir), read_frame(reference))


def test_fetch_sub_gathers_on_device_only_what_is_shown():
    """A big variable: the sub-array copied to NumPy is much smaller, and equals NumPy's gather."""
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 3, 256, 512)).astype(np.float32)
    variable = tf.Variable(values)
    plan = make_plan(values.shape, 768, False)
    sub = tf_support.fetch_sub(tf_support.prepare(variable, "big"), plan.axes)
    assert sub.shape == (3, 3, 16, 512)  # 16 of 256 input-channel rows are shown
    axes = [np.arange(n) if idx is None else idx for n, idx in zip(values.shape, plan.axes)]
    np.testing.assert_array_equal(sub, values[np.ix_(*axes)])
    np.testing.assert_array_equal(sub[plan.local], plan.take(values))


# ---------------------------------------------------------------- symbolic tensors


def test_update_inside_tf_function_strict_raises_a_clear_error(run_dir):
    configure(run_dir, values="arrays")
    beholder = Beholder(run_dir, strict=True)

    @tf.function
    def step(x):
        beholder.update(arrays={"x": x * 2})
        return x

    with pytest.raises(tf_support.SymbolicTensorError, match="outside") as info:
        step(tf.ones((4, 4)))
    assert "tf.function" in str(info.value)
    assert beholder.frames_written == 0


def test_update_inside_tf_function_with_variables_raises(run_dir):
    """Variables are eager objects, but inside tf.function their values are symbolic too."""
    configure(run_dir)
    model = tiny_convnet()
    beholder = Beholder(run_dir, variables=model, strict=True)

    @tf.function
    def step():
        beholder.update()
        return tf.constant(0)

    with pytest.raises(tf_support.SymbolicTensorError, match="tf.function"):
        step()


def test_update_inside_tf_function_not_strict_logs_and_training_goes_on(run_dir, caplog):
    configure(run_dir, values="arrays")
    beholder = Beholder(run_dir)

    @tf.function
    def step(x):
        beholder.update(arrays={"x": x * 2})
        return x + 1

    with caplog.at_level(logging.ERROR, logger="beholder"):
        out = step(tf.ones((4, 4)))
    np.testing.assert_array_equal(out.numpy(), np.full((4, 4), 2.0))
    assert beholder.failures == 1
    beholder.flush()
    # The only frame says that update() failed (issue 23: shown at once, not "trainer stopped?").
    assert beholder.frames_written == 1
    stored = read_frame_file(run_dir)
    assert stored.header["values"] == "placeholder" and stored.header["failures"] == 1
    assert "call update() outside it" in caplog.text
    assert "SymbolicTensorError" in caplog.text


def test_update_inside_tf_function_is_refused_even_when_no_frame_is_due(run_dir):
    """The mistake shows on the first trace, not only when the throttle lets a frame through."""
    configure(run_dir, values="arrays", FPS=1)
    beholder = Beholder(run_dir, strict=True)
    assert beholder.update(arrays={"x": np.ones(3)})  # a frame now; the next is not due for a second

    @tf.function
    def step(x):
        beholder.update(arrays={"x": x})
        return x

    with pytest.raises(tf_support.SymbolicTensorError, match="outside it"):
        step(tf.ones(3))
    assert beholder.frames_written == 1


def test_symbolic_keras_tensor_and_graph_tensor_are_refused(run_dir):
    configure(run_dir, values="arrays")
    beholder = Beholder(run_dir, strict=True)
    with pytest.raises(tf_support.SymbolicTensorError, match="KerasTensor"):
        beholder.update(arrays={"k": keras.Input((3, 3))})
    with tf.Graph().as_default():
        graph_tensor = tf.ones((3, 3))
        due(beholder)
        with pytest.raises(tf_support.SymbolicTensorError, match="session"):
            beholder.update(arrays={"g": graph_tensor})
    assert beholder.frames_written == 0


def test_symbolic_frame_is_refused(run_dir):
    configure(run_dir, values="frames")
    beholder = Beholder(run_dir, strict=True)

    @tf.function
    def step(x):
        beholder.update(frame=x)
        return x

    with pytest.raises(tf_support.SymbolicTensorError, match="tf.function"):
        step(tf.ones((8, 8)))


@pytest.mark.parametrize("in_function", [False, True])
def test_gradient_step_with_a_loss_scale_optimizer_returns_unscaled_gradients(in_function):
    """Mixed precision's LossScaleOptimizer: the loss is scaled under the tape (optimizer.scale_loss),
    the optimizer divides the gradients by the scale before its step; gradient_step hands back what it
    applied, not the gradients 32768 times too big; over three steps (the first builds the optimizer)."""
    model = tiny_convnet()
    x, y = tiny_data(8)
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1), dynamic_growth_steps=2)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x))
            scaled = optimizer.scale_loss(loss)
        return gradient_step(tape, scaled, model, optimizer)

    run = tf.function(step) if in_function else step
    for _ in range(3):
        with tf.GradientTape() as tape:  # the true gradients, at the weights before the step
            loss = loss_fn(y, model(x))
        want = dict(zip([v.path for v in model.trainable_variables],
                        tape.gradient(loss, model.trainable_variables)))
        got = run(x, y)
        assert list(got) == list(want)
        for name, grad in got.items():
            np.testing.assert_allclose(grad.numpy(), want[name].numpy(), rtol=1e-4, atol=1e-7, err_msg=name)
    assert float(optimizer.dynamic_scale.numpy()) == 2.0**16  # (it doubled along the way)


def test_gradient_step_unscales_float16_gradients_at_a_loss_scale_float16_cannot_hold():
    """A float16 model under a LossScaleOptimizer whose scale is 2**16 (Keras's dynamic scale doubles to
    it after 2000 finite steps from its 2**15): the scale is infinite in float16, so the gradients are
    divided in float32. Before, every gradient gradient_step returned was zero."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d", dtype="float16")],
                             name="fp16")
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.01), initial_scale=2.0**16)
    x = np.full((8, 4), 0.05, "float16")
    for _ in range(2):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.cast(model(x), tf.float32) ** 2)
        want = tape.gradient(loss, model.trainable_variables)
        with tf.GradientTape() as tape:
            scaled = optimizer.scale_loss(tf.reduce_mean(tf.cast(model(x), tf.float32) ** 2))
        got = gradient_step(tape, scaled, model, optimizer)
        assert float(optimizer.dynamic_scale.numpy()) == 2.0**16
        for grad, true in zip(got.values(), want):
            assert grad.dtype == np.float16 and np.abs(true.numpy()).max() > 1e-3
            np.testing.assert_allclose(grad.numpy(), true.numpy(), rtol=1e-2, atol=1e-6)
