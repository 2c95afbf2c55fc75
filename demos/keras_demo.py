"""Beholder demo: a small Keras 3 convnet learning to tell shapes apart, streamed to TensorBoard.

Every step feeds Beholder the model (trainable variables), the gradients and
each layer's activations (arrays) and the first input image (frame); the
dashboard's Values selector picks which one is shown.

    python demos/keras_demo.py --logdir demo-logs/keras-demo [--steps N]
    tensorboard --logdir demo-logs     # open the "Beholder" tab

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


def build_model():
    """The convnet and a model sharing its layers that returns every layer's activations."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(32, activation="relu", name="dense")(x)
    logits = keras.layers.Dense(len(CLASSES), name="logits")(x)
    model = keras.Model(inputs, logits, name="shapes_convnet")
    shown = ("conv1", "pool1", "conv2", "pool2", "dense", "logits")
    taps = keras.Model(inputs, [model.get_layer(n).output for n in shown], name="taps")
    return model, taps, shown


def make_train_step(model, taps, optimizer):
    """A compiled step returning the loss, the gradients by variable path and the activations."""
    import keras
    import tensorflow as tf

    from beholder_plugin import gradient_step

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            activations = taps(x, training=True)
            loss = loss_fn(y, activations[-1])
        gradients = gradient_step(tape, loss, model, optimizer)
        return loss, gradients, activations

    return train_step


def main(argv: list[str] | None = None) -> int:
    """Train until --steps (or Ctrl-C), offering Beholder everything after each step."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default="demo-logs/keras-demo", help="run directory")
    parser.add_argument("--steps", type=int, default=None, help="stop after N steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import keras

    from beholder_plugin import Beholder

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model, taps, shown = build_model()
    optimizer = keras.optimizers.Adam(1e-3)
    train_step = make_train_step(model, taps, optimizer)

    image = None

    def frame():  # called by Beholder only when "frames" is selected and a frame is due
        return np.kron(image[0, :, :, 0], np.ones((8, 8), np.float32))

    print(f"Beholder Keras demo writing to {os.path.abspath(args.logdir)}", flush=True)
    started = time.monotonic()
    with Beholder(args.logdir, variables=model) as beholder:
        try:
            for step in demo_steps.steps(args.steps):
                image, labels = make_batch(rng, args.batch_size)
                loss, gradients, activations = train_step(image, labels)
                arrays = {f"gradients/{path}": g for path, g in gradients.items()}
                arrays.update(
                    {f"activations/{name}": a for name, a in zip(shown, activations)}
                )
                beholder.update(arrays=arrays, frame=frame)
                if step % 200 == 0:
                    print(f"step {step}: loss {float(loss):.4f}", flush=True)
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
