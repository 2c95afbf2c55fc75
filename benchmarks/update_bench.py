"""Median Beholder.update() times for arrays shaped like three real models, in both modes.

Run: .venv/bin/python benchmarks/update_bench.py [--repeats N]
Shapes come from benchmarks/model_shapes.json (a copy of shared/data/model-shapes.json:
an MNIST-sized convnet, MobileNetV2 and ResNet-50 trainable variables).
Every timed call renders (FPS 30 and a pause between calls, outside the timing),
and writes its frame to a temporary logdir; the last row is the cost of a call
when no frame is due.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time

import numpy as np

from beholder_plugin import Beholder, write_config
from beholder_plugin.protocol.settings import DEFAULT_CONFIG

HERE = os.path.dirname(os.path.abspath(__file__))


def load_models() -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """Model name -> list of (variable path, shape)."""
    with open(os.path.join(HERE, "model_shapes.json")) as f:
        data = json.load(f)
    return {name: [(path, tuple(shape)) for path, shape in items] for name, items in data.items()}


def make_arrays(shapes: list[tuple[str, tuple[int, ...]]], seed: int) -> dict[str, np.ndarray]:
    """Random float32 arrays of the given shapes."""
    rng = np.random.default_rng(seed)
    return {path: rng.standard_normal(shape, dtype=np.float32) * 0.05 for path, shape in shapes}


def time_updates(logdir: str, arrays_list: list[dict], mode: str, repeats: int) -> list[float]:
    """Seconds per update() call, each call rendering a frame."""
    write_config(logdir, {**DEFAULT_CONFIG, "values": "arrays", "mode": mode, "FPS": 30})
    beholder = Beholder(logdir, strict=True)
    times = []
    for i in range(repeats):
        arrays = arrays_list[i % len(arrays_list)]
        time.sleep(1 / 30 + 0.002)
        start = time.perf_counter()
        wrote = beholder.update(arrays=arrays)
        times.append(time.perf_counter() - start)
        assert wrote, "every timed call must render"
    beholder.close()
    return times


def time_no_frame_due(logdir: str, arrays: dict, calls: int = 20000) -> float:
    """Seconds per update() call when the throttle says no frame is due."""
    write_config(logdir, {**DEFAULT_CONFIG, "values": "arrays", "FPS": 1})
    beholder = Beholder(logdir, strict=True)
    beholder.update(arrays=arrays)  # renders once; the next calls within 1 s do not
    start = time.perf_counter()
    for _ in range(calls):
        beholder.update(arrays=arrays)
    elapsed = time.perf_counter() - start
    beholder.close()
    return elapsed / calls


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    models = load_models()
    print(f"{'model':<16}{'arrays':>7}{'values':>12}{'mode':>10}{'median ms':>11}{'p90 ms':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, shapes in models.items():
            # two alternating sets of values, so variance mode has something to measure
            arrays_list = [make_arrays(shapes, seed) for seed in (0, 1)]
            values = sum(math.prod(s) for _, s in shapes)
            for mode in ("current", "variance"):
                logdir = os.path.join(tmp, f"{name}-{mode}")
                times = time_updates(logdir, arrays_list, mode, args.repeats)
                times_ms = sorted(t * 1000 for t in times[2:])  # skip plan-building calls
                p90 = times_ms[int(0.9 * (len(times_ms) - 1))]
                print(
                    f"{name:<16}{len(shapes):>7}{values:>12,}{mode:>10}"
                    f"{statistics.median(times_ms):>11.2f}{p90:>9.2f}"
                )
        idle = time_no_frame_due(os.path.join(tmp, "idle"), make_arrays(models["mnist_convnet"], 0))
        print(f"no frame due: {idle * 1e6:.2f} us per update() call")


if __name__ == "__main__":
    main()
