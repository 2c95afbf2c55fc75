"""What Beholder.update() costs the training loop, against the floor of copying the shown values.

Run: .venv/bin/python benchmarks/update_bench.py [--repeats N]

Shapes come from benchmarks/model_shapes.json (an MNIST-sized convnet,
MobileNetV2 and ResNet-50 trainable variables). For each model and mode, one
run interleaves, frame by frame:

- the floor: gathering the values the frame shows into a preallocated flat
  float32 buffer (the same plans, one fancy-index copy per section, nothing else);
- update()'s blocking time on the calling thread when a frame is due;
- the process CPU time per frame (all threads: the worker's rendering,
  encoding and writing included), from update() until the frame is written.

The "system floor" line is the CPU time of what any frame needs from the
system (a stat of config.json, the frame file written into the history ring
and linked as frame.bin, the worker woken) with nothing rendered, after the
same pauses: the part of "CPU per frame" no rendering change can remove.

Timing starts after --warmup frames, by which the history ring (256 MB by
default) has filled for the large models and dropped files are rewritten in
place, which is the steady state of a long run. The last line is the cost
of a call when no frame is due. Medians; the
targets are in the issue "Core v2" and docs: blocking <= 1.5 x floor + 0.1 ms.
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


def floor_gather(beholder: Beholder, arrays: dict[str, np.ndarray], out: np.ndarray) -> float:
    """Seconds to copy the shown values of arrays into out with the frame's own plans (the floor)."""
    labels = list(arrays)
    shapes = [a.shape for a in arrays.values()]
    plan = beholder.gatherer.frame_plan(labels, shapes, beholder.config["show_all"])
    start = time.perf_counter()
    for i, a in enumerate(arrays.values()):
        plan.section_view(out, i)[...] = plan.plans[i].take(a)
    return time.perf_counter() - start


def measure(
    logdir: str, arrays_list: list[dict], mode: str, repeats: int, warmup: int, **config: object
) -> dict[str, list[float]]:
    """Floor, blocking time and CPU per frame, interleaved frame by frame (config: other settings)."""
    write_config(logdir, {**DEFAULT_CONFIG, "values": "arrays", "mode": mode, "FPS": 30, **config})
    beholder = Beholder(logdir, strict=True)
    for i in range(warmup):  # builds the plans, and fills the history ring to its steady state
        beholder.frame_due_now()
        beholder.update(arrays=arrays_list[i % len(arrays_list)])
        beholder.flush()
    value_count = beholder.gatherer.frame_plans[0].value_count
    out = np.empty(value_count, np.float32)
    floor, blocking, cpu = [], [], []
    for i in range(repeats):
        arrays = arrays_list[i % len(arrays_list)]
        time.sleep(1 / 30 + 0.002)  # both measured after the same pause: caches are as cold
        if not config.get("filter"):  # (the floor plans every array: not comparable under a filter)
            floor.append(floor_gather(beholder, arrays, out))
        time.sleep(1 / 30 + 0.002)
        cpu0 = time.process_time()
        start = time.perf_counter()
        handed = beholder.update(arrays=arrays)
        blocking.append(time.perf_counter() - start)
        beholder.flush()
        cpu.append(time.process_time() - cpu0)
        assert handed, "every timed call must hand a frame to the worker"
    beholder.close()
    return {"floor": floor, "blocking": blocking, "cpu": cpu}


def time_no_frame_due(logdir: str, arrays: dict, calls: int = 20000) -> float:
    """Seconds per update() call when the throttle says no frame is due."""
    write_config(logdir, {**DEFAULT_CONFIG, "values": "arrays", "FPS": 1})
    beholder = Beholder(logdir, strict=True)
    beholder.update(arrays=arrays)  # renders once; the next calls within 1 s do not
    beholder.flush()
    start = time.perf_counter()
    for _ in range(calls):
        beholder.update(arrays=arrays)
    elapsed = time.perf_counter() - start
    beholder.close()
    return elapsed / calls


def time_system_floor(directory: str, frame_bytes: int, frames: int = 60) -> float:
    """CPU seconds per frame of the system work every frame needs, with nothing rendered or encoded.

    A stat() of config.json, the frame file written into the history ring
    and linked as frame.bin (LocalFiles, as Beholder writes it), and a job
    handed to a Worker and waited for; each after the same pause as the
    timed frames, so the caches are as cold.
    """
    from beholder_plugin.protocol.files import LOCAL
    from beholder_plugin.trainer.worker import Worker

    history = os.path.join(directory, "history")
    os.makedirs(history, exist_ok=True)
    config = os.path.join(directory, "config.json")
    LOCAL.write_atomic(config, [b"{}"])
    data = [b"\1" * frame_bytes]
    worker = Worker(lambda job: None)
    cpu = []
    for i in range(frames):
        time.sleep(2 / 30 + 0.004)
        start = time.process_time()
        os.stat(config)
        path = os.path.join(history, f"f-{i}.bin")
        LOCAL.write_atomic(path, data)
        LOCAL.link_atomic(path, os.path.join(directory, "frame.bin"))
        worker.submit(i)
        worker.drain()
        cpu.append(time.process_time() - start)
    worker.stop()
    return statistics.median(cpu)


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=40, help="frames before timing (fills history)")
    parser.add_argument("--models", nargs="+", help="only these (model_shapes.json names)")
    args = parser.parse_args()
    every_model = load_models()
    models = {name: every_model[name] for name in args.models} if args.models else every_model
    print(
        f"{'model':<15}{'arrays':>7}{'mode':>10}{'floor ms':>10}{'blocking ms':>13}"
        f"{'target ms':>11}{'CPU/frame ms':>14}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name, shapes in models.items():
            arrays_list = [make_arrays(shapes, seed) for seed in (0, 1)]  # alternate: variance moves
            for mode in ("current", "variance"):
                logdir = os.path.join(tmp, f"{name}-{mode}")
                got = measure(logdir, arrays_list, mode, args.repeats, args.warmup)
                floor, block, cpu = (statistics.median(got[k]) * 1e3 for k in ("floor", "blocking", "cpu"))
                print(
                    f"{name:<15}{len(shapes):>7}{mode:>10}{floor:>10.3f}{block:>13.3f}"
                    f"{1.5 * floor + 0.1:>11.3f}{cpu:>14.2f}"
                )
        small = every_model["mnist_convnet"]
        values = sum(math.prod(s) for _, s in small)
        idle = time_no_frame_due(os.path.join(tmp, "idle"), make_arrays(small, 0))
        print(f"no frame due: {idle * 1e6:.2f} us per update() call (mnist_convnet, {values:,} values)")
        frame_bytes = os.path.getsize(os.path.join(tmp, "idle", "plugins", "beholder", "frame.bin"))
        floor = time_system_floor(os.path.join(tmp, "system"), frame_bytes)
        print(f"system floor: {floor * 1e3:.3f} ms CPU per frame (a stat, a {frame_bytes:,}-byte frame "
              "written into history and linked, a worker woken; nothing rendered)")


if __name__ == "__main__":
    main()
