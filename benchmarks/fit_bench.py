"""How much BeholderCallback slows model.fit(): a small convnet, with the callback at FPS 10 vs without.

The case the "Core v2" issue measured at +25 %: one Conv2D, one Dense,
batch 32, 64 steps a fit (one epoch). After a warm-up, fits without and with
the callback alternate in one process (without, with, without, ...), and the
medians are compared; so is the median of the per-pair ratios, which a
machine that slows down for a while disturbs less. The target is at most
+5 %. No threshold is checked here: the numbers are printed.

The time spent inside the callback's hooks is added up per thread: the
training thread (which fit() waits for) and Keras's worker threads (where
Keras 3 runs ``on_train_batch_end`` of an ``async_safe`` callback on the JAX
and torch backends; on TensorFlow every hook runs on the training thread).
It is the direct cost, less sensitive to a noisy machine than the medians.

    .venv/bin/python benchmarks/fit_bench.py [--runs 40] [--fps 10]
    KERAS_BACKEND=torch .venv/bin/python benchmarks/fit_bench.py   # the asynchronous path
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demos"))

import numpy as np  # noqa: E402
from synthetic_shapes import make_batch  # noqa: E402

# The hooks BeholderCallback defines; each is timed on the thread it runs on.
HOOKS = (
    "on_train_begin",
    "on_epoch_begin",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_test_begin",
    "on_epoch_end",
    "on_train_end",
)


def main() -> int:
    """Time fit() with and without the callback and print the medians, the ratio and the hook time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="timed fits of each kind")
    parser.add_argument("--steps", type=int, default=64, help="training steps per fit()")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--mode", default="variance", choices=("variance", "current"))
    args = parser.parse_args()

    import keras

    from beholder_plugin import DEFAULT_CONFIG, BeholderCallback, write_config

    keras.utils.set_random_seed(0)
    x, y = make_batch(np.random.default_rng(0), args.steps * args.batch_size)
    model = keras.Sequential([
        keras.Input(x.shape[1:]),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
        keras.layers.Flatten(),
        keras.layers.Dense(int(y.max()) + 1, name="dense"),
    ])
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    logdir = tempfile.mkdtemp(prefix="fit-bench-")
    atexit.register(shutil.rmtree, logdir, True)  # (removed when the benchmark exits)
    write_config(logdir, {**DEFAULT_CONFIG, "FPS": args.fps, "mode": args.mode})

    callback = BeholderCallback(logdir)
    spent = {"training thread": 0.0, "Keras worker": 0.0}
    batch_end_calls = {"training thread": 0, "Keras worker": 0}

    def timed(name: str):
        hook = getattr(callback, name)

        def run(*a, **kw):
            start = time.perf_counter()
            try:
                return hook(*a, **kw)
            finally:
                where = "training thread" if threading.get_ident() == fit_thread else "Keras worker"
                spent[where] += time.perf_counter() - start
                if name == "on_train_batch_end":
                    batch_end_calls[where] += 1

        return run

    fit_thread = threading.get_ident()
    for name in HOOKS:  # instance attributes: Keras calls these instead of the methods
        setattr(callback, name, timed(name))

    def fit(callbacks: list) -> float:
        start = time.perf_counter()
        model.fit(x, y, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0,
                  callbacks=callbacks)
        return time.perf_counter() - start

    for _ in range(2):  # warm-up: tracing, the first frames, the thread pools
        fit([])
        fit([callback])
    without: list[float] = []
    with_cb: list[float] = []
    frames_before = callback.beholder.frames_written
    for key in spent:
        spent[key] = 0.0
        batch_end_calls[key] = 0
    for _ in range(args.runs):
        without.append(fit([]))
        with_cb.append(fit([callback]))
    frames = callback.beholder.frames_written - frames_before

    m0, m1 = statistics.median(without), statistics.median(with_cb)
    paired = statistics.median(b / a for a, b in zip(without, with_cb))
    print(f"model: one Conv2D + one Dense ({len(model.trainable_variables)} variables), "
          f"{args.steps} steps x batch {args.batch_size} per fit, {args.runs} alternating runs each; "
          f"Keras {keras.__version__}, backend {keras.backend.backend()}")
    print(f"callback: FPS {args.fps}, mode {args.mode}, async_safe={getattr(callback, 'async_safe', False)}; "
          f"on_train_batch_end ran {batch_end_calls['training thread']} times on the training thread, "
          f"{batch_end_calls['Keras worker']} on Keras worker threads")
    print(f"frames written in the timed runs: {frames} ({frames / sum(with_cb):.1f} per s), "
          f"skipped {callback.beholder.skipped}, failures {callback.beholder.failures}")
    print()
    print(f"{'':17} {'median':>8} {'min':>7} {'max':>7}  per step")
    for label, runs in (("without callback", without), ("with callback", with_cb)):
        median = statistics.median(runs)
        print(f"{label:17} {median:7.3f}s {min(runs):6.3f}s {max(runs):6.3f}s  "
              f"{1e3 * median / args.steps:.2f} ms")
    print(f"ratio of medians (with / without): {m1 / m0:.3f}  ({100 * (m1 / m0 - 1):+.1f} %; "
          "target: at most +5 %)")
    print(f"median of the per-pair ratios:     {paired:.3f}  ({100 * (paired - 1):+.1f} %)")
    for where, seconds in spent.items():
        per_fit = seconds / args.runs
        print(f"time inside the callback, {where + ':':16} {1e3 * per_fit:6.2f} ms per fit = "
              f"{100 * per_fit / m0:.2f} % of the median fit without it")
    print("(the training thread's share is what fit() waits for; the worker's runs beside it)")
    print(f"runs without: {' '.join(f'{t:.3f}' for t in without)}")
    print(f"runs with:    {' '.join(f'{t:.3f}' for t in with_cb)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
