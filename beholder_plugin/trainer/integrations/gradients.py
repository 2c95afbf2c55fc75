"""Gradients for the "arrays" view: TF2 and TF1 successors of the original ``gradient_helper``.

Each helper trains one step (or builds the op that does) and hands back the
gradients named after their variables, ready for ``Beholder.update(arrays=...)``.
TensorFlow is imported only when a helper is called.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from beholder_plugin.trainer.sources import variable_name


def named_gradients(variables: Iterable[Any], gradients: Iterable[Any]) -> dict[str, Any]:
    """Pair gradients with their variables' names (Keras path or tf name) for update(arrays=...).

    Gradients that are ``None`` (a variable the loss does not depend on) are
    left out; a name that repeats gets a ``#2``, ``#3``... suffix so no
    gradient is lost.

    Example:

    >>> import tensorflow as tf
    >>> w = tf.Variable([1.0, 2.0], name="w")
    >>> b = tf.Variable(0.0, name="b")
    >>> with tf.GradientTape() as tape:
    ...     loss = tf.reduce_sum(w * w)
    >>> grads = tape.gradient(loss, [w, b])
    >>> {k: v.numpy().tolist() for k, v in named_gradients([w, b], grads).items()}
    {'w:0': [2.0, 4.0]}
    """
    out: dict[str, Any] = {}
    for index, (variable, gradient) in enumerate(zip(variables, gradients)):
        if gradient is None:
            continue
        name = base = variable_name(variable, index)
        n = 1
        while name in out:
            n += 1
            name = f"{base}#{n}"
        out[name] = gradient
    return out


def gradient_step(tape: Any, loss: Any, variables: Any, optimizer: Any) -> dict[str, Any]:
    """TF2: take the tape's gradients of loss, apply them with optimizer, and return them by name.

    Args:
      tape: the ``tf.GradientTape`` that recorded the forward pass (closed).
      loss: the scalar loss computed under the tape.
      variables: a Keras model or ``tf.Module`` (its ``trainable_variables``
        are used) or a list of variables.
      optimizer: a Keras 3 optimizer (or anything with ``apply_gradients``).
        A ``keras.optimizers.LossScaleOptimizer`` (mixed precision) takes the
        scaled loss, ``optimizer.scale_loss(loss)`` under the tape, as Keras
        asks; the gradients come back divided by the scale, as it applies them.

    Returns:
      ``{variable path: gradient}`` for ``Beholder.update(arrays=...)``
      (see ``named_gradients``). Works inside ``tf.function`` too: return the
      dict from the function and call ``update()`` outside it.

    Example:

    >>> import keras, numpy as np, tensorflow as tf
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="out")])
    >>> optimizer = keras.optimizers.SGD(0.1)
    >>> x, y = np.ones((4, 3), "float32"), np.zeros((4, 2), "float32")
    >>> with tf.GradientTape() as tape:
    ...     loss = tf.reduce_mean((model(x) - y) ** 2)
    >>> grads = gradient_step(tape, loss, model, optimizer)
    >>> sorted(grads)  # (the model's name is sequential_N after other Sequential models)
    ['sequential.../out/bias', 'sequential.../out/kernel']
    >>> int(optimizer.iterations)
    1
    """
    if hasattr(variables, "trainable_variables"):
        variables = variables.trainable_variables
    variables = list(variables)
    gradients = tape.gradient(loss, variables)
    scale = _loss_scale(optimizer)  # (read before the step, which may double or halve it)
    pairs = [(g, v) for g, v in zip(gradients, variables) if g is not None]
    optimizer.apply_gradients(pairs)
    if scale is not None:
        gradients = [_divided(g, scale) for g in gradients]
    return named_gradients(variables, gradients)


def _loss_scale(optimizer: Any) -> Any:
    """A Keras LossScaleOptimizer's scale now (a float32 tensor, a snapshot of its variable), else None."""
    if not (hasattr(optimizer, "inner_optimizer") and hasattr(optimizer, "scale_loss")):
        return None
    tf = sys.modules["tensorflow"]  # (loaded: the tape is TensorFlow's)
    if not getattr(optimizer, "built", False):  # (scale_loss used the initial scale: no variable yet)
        return tf.constant(float(optimizer.initial_scale), tf.float32)
    return tf.identity(tf.convert_to_tensor(optimizer.dynamic_scale.value, tf.float32))


def _divided(gradient: Any, scale: Any) -> Any:
    """A gradient (a tensor, or IndexedSlices of an embedding) divided by a loss scale, returned in its
    dtype: a float16 or bfloat16 one divided in float32 (a scale of 2**16, which Keras's dynamic scale
    reaches after 2000 finite steps from its 2**15, is infinite in float16)."""
    tf = sys.modules["tensorflow"]
    if gradient is None:
        return None

    def divide(values: Any) -> Any:
        if values.dtype in (tf.float16, tf.bfloat16):
            return tf.cast(tf.cast(values, tf.float32) / tf.cast(scale, tf.float32), values.dtype)
        return values / tf.cast(scale, values.dtype)

    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(divide(gradient.values), gradient.indices, gradient.dense_shape)
    return divide(gradient)


def gradient_helper(optimizer: Any, loss: Any, var_list: list | None = None) -> tuple[Any, dict[str, Any]]:
    """TF1 (``tf.compat.v1`` graph mode): the train op and the gradient tensors, by variable name.

    Like the original Beholder's ``gradient_helper``: computes the gradients
    with ``optimizer.compute_gradients`` and builds the op applying them, so
    one ``session.run`` trains and fetches the gradients.

    Args:
      optimizer: a ``tf.compat.v1.train.Optimizer`` (e.g. ``AdamOptimizer``).
      loss: the scalar loss tensor.
      var_list: the variables to train; default: the graph's trainable ones.

    Returns:
      ``(train_op, {var.name: gradient tensor})``. ``session.run`` accepts the
      dict as a fetch and returns ``{var.name: ndarray}`` for ``update(arrays=...)``.

    Example:

    >>> import tensorflow as tf
    >>> with tf.Graph().as_default():
    ...     w = tf.compat.v1.get_variable("w", initializer=[1.0, 2.0])
    ...     loss = tf.reduce_sum(w * w)
    ...     train_op, grads = gradient_helper(
    ...         tf.compat.v1.train.GradientDescentOptimizer(0.1), loss)
    ...     with tf.compat.v1.Session() as sess:
    ...         sess.run(tf.compat.v1.global_variables_initializer())
    ...         _, values = sess.run([train_op, grads])
    ...         w_after = sess.run(w)
    >>> values["w:0"].tolist(), [round(float(v), 3) for v in w_after]
    ([2.0, 4.0], [0.8, 1.6])
    """
    grads_and_vars = optimizer.compute_gradients(loss, var_list=var_list)
    train_op = optimizer.apply_gradients(grads_and_vars)
    return train_op, named_gradients([v for _, v in grads_and_vars], [g for g, _ in grads_and_vars])
