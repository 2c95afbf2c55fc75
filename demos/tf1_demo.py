"""Beholder demo in TF1 graph mode (tf.compat.v1): update(session=sess) shows the graph's variables.

The same shape-classifying convnet as keras_demo.py, written with raw
``tf.compat.v1`` variables and a ``tf.compat.v1.train`` optimizer. Beholder
reads the trainable variables through the session (fetching only the values a
frame shows), the gradients come from ``gradient_helper`` (arrays) and the
first input image is the frame.

    python demos/tf1_demo.py --logdir demo-logs/tf1-demo [--steps N]

Without --steps it trains until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import demo_steps
import numpy as np  # noqa: E402
from synthetic_shapes import CLASSES, SIZE, make_batch  # noqa: E402


def build_graph(seed: int):
    """Placeholders, loss and the (train op, gradients by variable name) of a tiny convnet."""
    import tensorflow as tf

    from beholder_plugin import gradient_helper

    v1 = tf.compat.v1
    v1.set_random_seed(seed)
    images = v1.placeholder(tf.float32, (None, SIZE, SIZE, 1), name="images")
    labels = v1.placeholder(tf.int32, (None,), name="labels")
    init = v1.glorot_uniform_initializer()

    def weights(name, shape):
        return v1.get_variable(name, shape, initializer=init)

    def bias(name, n):
        return v1.get_variable(name, (n,), initializer=v1.zeros_initializer())

    x = tf.nn.relu(tf.nn.conv2d(images, weights("conv1/kernel", (3, 3, 1, 8)), 1, "VALID")
                   + bias("conv1/bias", 8))
    x = tf.nn.max_pool2d(x, 2, 2, "VALID")
    x = tf.nn.relu(tf.nn.conv2d(x, weights("conv2/kernel", (3, 3, 8, 16)), 1, "VALID")
                   + bias("conv2/bias", 16))
    x = tf.nn.max_pool2d(x, 2, 2, "VALID")
    x = tf.reshape(x, (-1, 5 * 5 * 16))
    x = tf.nn.relu(tf.matmul(x, weights("dense/kernel", (400, 32))) + bias("dense/bias", 32))
    logits = tf.matmul(x, weights("logits/kernel", (32, len(CLASSES)))) + bias(
        "logits/bias", len(CLASSES)
    )
    loss = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    )
    train_op, gradients = gradient_helper(v1.train.AdamOptimizer(1e-3), loss)
    return images, labels, loss, train_op, gradients


def main(argv: list[str] | None = None) -> int:
    """Train until --steps (or Ctrl-C), calling update(session=...) after each step."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="demo-logs/tf1-demo", help="run directory")
    parser.add_argument("--steps", type=int, default=None, help="stop after N steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import tensorflow as tf

    from beholder_plugin import Beholder

    tf.compat.v1.disable_eager_execution()
    rng = np.random.default_rng(args.seed)
    images, labels, loss, train_op, gradients = build_graph(args.seed)

    batch = None

    def frame():  # called by Beholder only when "frames" is selected and a frame is due
        return np.kron(batch[0, :, :, 0], np.ones((8, 8), np.float32))

    print(f"Beholder TF1 demo writing to {os.path.abspath(args.logdir)}", flush=True)
    started = time.monotonic()
    with tf.compat.v1.Session() as sess, Beholder(args.logdir) as beholder:
        sess.run(tf.compat.v1.global_variables_initializer())
        try:
            for step in demo_steps.steps(args.steps):
                batch, batch_labels = make_batch(rng, args.batch_size)
                _, loss_value, grads = sess.run(
                    [train_op, loss, gradients], {images: batch, labels: batch_labels}
                )
                beholder.update(
                    session=sess,
                    arrays={f"gradients/{name}": g for name, g in grads.items()},
                    frame=frame,
                )
                if step % 200 == 0:
                    print(f"step {step}: loss {loss_value:.4f}", flush=True)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        print(
            f"done: {beholder.frames_written} frames in {time.monotonic() - started:.1f} s, "
            f"{beholder.failures} failures",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
