"""What the first frames of a traced device gather (JAX, TensorFlow) cost the training thread.

    python benchmarks/first_frame_bench.py [--frames 6] [--framework jax|tf|both]

A frame that meets a new set of array shapes starts compiling its gather on
a background thread and is skipped; the frames after it should cost what
every later frame costs. This measures, for ResNet-50's 214 variables at
their real shapes (``model_shapes.json``) on the CPU through the batched
path (``BEHOLDER_BATCH_CPU_TENSORS=1``, as on a GPU): the skipped frame's
``update()``, the background compile, the first frame after it, and the
median of the next ``--frames``. For JAX the frames run under
``jax.default_matmul_precision`` (a context jit's cache key holds), as a
training loop may; a first frame well above the median means a compile or
graph set-up left on the training thread. Compare figures only within one
run.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ["BEHOLDER_BATCH_CPU_TENSORS"] = "1"
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def shapes() -> list[tuple[str, list[int]]]:
    """ResNet-50's trainable variables: (name, shape)."""
    with open(os.path.join(HERE, "model_shapes.json")) as f:
        return json.load(f)["resnet50"]


def arrays_for(framework: str, step: int) -> dict:
    """The variables as that framework's arrays (JAX: new arrays every step; TF: variables assigned)."""
    import numpy as np

    rng = np.random.default_rng(step)
    values = {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes()}
    if framework == "jax":
        import jax.numpy as jnp

        return {name: jnp.asarray(v) for name, v in values.items()}
    import tensorflow as tf

    return {name: tf.Variable(v) for name, v in values.items()}


def measure(framework: str, frames: int) -> dict[str, float]:
    """Milliseconds: the skipped frame, the compile, the first frame after it, the median of the rest."""
    from beholder_plugin import DEFAULT_CONFIG, Beholder, write_config
    from beholder_plugin.trainer.sources import traced_batch

    traced_batch.forget_compiled()
    context = contextlib.nullcontext()
    if framework == "jax":
        import jax

        context = jax.default_matmul_precision("float32")
    run = tempfile.mkdtemp(prefix="first-frame-bench-")
    atexit.register(shutil.rmtree, run, True)  # (removed when the benchmark exits)
    write_config(run, {**DEFAULT_CONFIG, "values": "arrays", "FPS": 10, "mode": "current"})
    arrays = arrays_for(framework, 0)
    out: dict[str, float] = {}
    with context, Beholder(run) as beholder:  # (update() gathers; the worker renders, waited for untimed)
        beholder.frame_due_now()
        t0 = time.perf_counter()
        took = beholder.update(arrays=arrays)
        out["skipped frame"] = (time.perf_counter() - t0) * 1e3
        assert not took, "the first frame should start the compile and be skipped"
        t0 = time.perf_counter()
        assert beholder.gatherer.wait_compiled(600)
        out["background compile"] = (time.perf_counter() - t0) * 1e3
        times = []
        for _ in range(frames + 1):
            beholder.frame_due_now()
            t0 = time.perf_counter()
            assert beholder.update(arrays=arrays)
            times.append((time.perf_counter() - t0) * 1e3)
            beholder.flush()
        failures = beholder.failures
    out["first frame after it"] = times[0]
    out["later frames (median)"] = statistics.median(times[1:])
    out["failures"] = failures
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--framework", choices=["jax", "tf", "both"], default="both")
    args = parser.parse_args()
    frameworks = ["jax", "tf"] if args.framework == "both" else [args.framework]
    print("ResNet-50's 214 variables, CPU arrays through the batched path; update() on the training "
          "thread, ms")
    for framework in frameworks:
        got = measure(framework, args.frames)
        print(f"{framework:<4}" + "  ".join(f"{name}: {value:.1f}" for name, value in got.items()))


if __name__ == "__main__":
    main()
