"""How much BeholderCallback slows model.fit(), with the callback at FPS 10 vs without.

Two models: "small" (one Conv2D, one Dense, batch 32, 64 steps a fit: the
case the "Core v2" issue measured at +25 %) and "demo" (the demo convnet,
600 steps). Runs alternate (without, with, without, ...) after a warm-up,
in one process, and the medians are compared. The target is at most 5 %.

    .venv/bin/python benchmarks/fit_bench.py [--model small] [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demos"))

import numpy as np  # noqa: E402
from keras_demo import build_model  # noqa: E402
from synthetic_shapes import make_batch  # noqa: E402


def main() -> int:
    """Time fit() with and without the callback and print the medians and the overhead."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small", choices=("small", "demo"))
    parser.add_argument("--steps", type=int, default=None, help="training steps per fit() (64 or 600)")
    parser.add_argument("--runs", type=int, default=15, help="timed fits of each kind")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--mode", default="variance", choices=("variance", "current"))
    args = parser.parse_args()

    import keras

    from beholder_plugin import DEFAULT_CONFIG, BeholderCallback, write_config

    keras.utils.set_random_seed(0)
    args.steps = args.steps or (64 if args.model == "small" else 600)
    x, y = make_batch(np.random.default_rng(0), args.steps * args.batch_size)
    if args.model == "small":
        model = keras.Sequential([
            keras.Input(x.shape[1:]),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(int(y.max()) + 1, name="dense"),
        ])
    else:
        model, _taps, _shown = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    logdir = tempfile.mkdtemp(prefix="fit-bench-")
    write_config(logdir, {**DEFAULT_CONFIG, "FPS": args.fps, "mode": args.mode})

    class TimedCallback(BeholderCallback):
        """The callback, also adding up the time spent in its per-batch hook."""

        spent = 0.0

        def on_train_batch_end(self, batch, logs=None):
            start = time.perf_counter()
            super().on_train_batch_end(batch, logs)
            self.spent += time.perf_counter() - start

    callback = TimedCallback(logdir, strict=True)

    def fit(callbacks: list) -> float:
        start = time.perf_counter()
        model.fit(x, y, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0,
                  callbacks=callbacks)
        return time.perf_counter() - start

    fit([])  # warm-up: tracing and the first frame
    fit([callback])
    without: list[float] = []
    with_cb: list[float] = []
    frames_before = callback.beholder.frames_written
    callback.spent = 0.0
    for _ in range(args.runs):
        without.append(fit([]))
        with_cb.append(fit([callback]))
    frames = callback.beholder.frames_written - frames_before

    m0, m1 = statistics.median(without), statistics.median(with_cb)
    print(f"model: {args.model} ({len(model.trainable_variables)} variables, Keras backend "
          f"{keras.backend.backend()}, callback async_safe={getattr(callback, 'async_safe', False)}), "
          f"{args.steps} steps x batch {args.batch_size}, {args.runs} alternating runs each")
    print(f"callback config: FPS {args.fps}, mode {args.mode}; "
          f"{frames} frames written in the timed runs ({frames / sum(with_cb):.1f} per s)")
    for label, median, runs in (("without callback:", m0, without), ("with callback:", m1, with_cb)):
        times = " ".join(f"{t:.3f}" for t in runs)
        print(f"{label:17} median {median:.3f} s  (runs: {times})")
    print(f"overhead: {100 * (m1 - m0) / m0:+.1f} %  (target: at most +5 %)")
    hook = callback.spent / args.runs
    print(f"time inside the callback: {hook:.3f} s per fit = {100 * hook / m0:.1f} % of the "
          "median fit without it (the direct cost, less sensitive to a noisy machine)")
    print(f"per step: {1e3 * m0 / args.steps:.2f} ms without, {1e3 * m1 / args.steps:.2f} ms with")
    return 0


if __name__ == "__main__":
    sys.exit(main())
