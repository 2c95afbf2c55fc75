"""What watch() costs a PyTorch training loop: the demo convnet with Beholder at FPS 10 (and 0) vs without.

Conditions, each a run of --steps training steps (batch 32, SGD):

- ``none``: no Beholder; ``none-again``: the same, timed as a separate
  condition, so that its ratio to ``none`` shows how far apart two identical
  conditions land in this run (the noise floor);
- ``fps0``: ``watch(model)`` and ``update()`` every step, FPS 0 (the hooks stay
  disarmed: the cost of the checks alone);
- ``weights``, ``gradients``, ``activations``: the same at FPS 10 showing
  each kind of values.

Runs are interleaved in rounds (every condition once per round, in a
shuffled order) after a warm-up, in one process, so a machine that slows
down for a while slows every condition alike. Printed: the median run time
per condition, its ratio to ``none``, the median of the per-round ratios
and their interquartile range, and the frames written per second of
training. Targets: at most +3 % at FPS 10, +1 % at FPS 0. No threshold is
checked here.

A second table accounts for the time step by step, within each condition:
every timed step is classed by what Beholder did in it (took a frame, armed
hooks, ran with hooks, ran while the worker rendered beside it, or nothing:
"quiet"), and the extra time is the sum over those kinds of their count times
their median's excess over the median quiet step. Medians over hundreds of
steps of one condition, so it resolves costs the run-to-run noise hides; it
misses only what a frame costs steps it does not overlap (cache pollution).

    .venv/bin/python benchmarks/torch_bench.py [--rounds 25] [--steps 100]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demos"))

import numpy as np  # noqa: E402
from synthetic_shapes import make_batch  # noqa: E402
from torch_demo import convnet  # noqa: E402

CONDITIONS = {
    "none": None,
    "none-again": None,  # the same as none: the spread between the two is the noise of this run
    "fps0": ("trainable_variables", 0),
    "weights": ("trainable_variables", 10),
    "gradients": ("gradients", 10),
    "activations": ("activations", 10),
}


def main() -> int:
    """Time the training loop under each condition, interleaved, and print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--steps", type=int, default=100, help="training steps per timed run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's, one per core)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from beholder_plugin import DEFAULT_CONFIG, Beholder, write_config

    torch.manual_seed(0)
    model = convnet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(8):
        x, y = make_batch(rng, args.batch_size)
        batches.append((torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y).long()))
    root = tempfile.mkdtemp(prefix="torch-bench-")
    beholders = {}
    for name, setting in CONDITIONS.items():
        if setting is None:
            continue
        run = os.path.join(root, name)
        write_config(run, {**DEFAULT_CONFIG, "values": setting[0], "FPS": setting[1], "mode": "variance"})
        beholders[name] = Beholder(run)

    def run(name: str) -> float:
        beholder = beholders.get(name)
        handle = beholder.watch(model) if beholder is not None else None
        if beholder is not None and CONDITIONS[name][1]:
            # As in a long run, the next frame falls due somewhere within the next 1/FPS, not at once
            # (other conditions ran meanwhile): each run then holds FPS x its length frames on average.
            beholder._last_frame_time = time.monotonic() - random.random() / CONDITIONS[name][1]
        log = steps.setdefault(name, [])
        start = time.perf_counter()
        for step in range(args.steps):
            x, y = batches[step % len(batches)]
            before = _state(beholder)
            t0 = time.perf_counter()
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
            t1 = time.perf_counter()
            handed = beholder.update() if beholder is not None else False
            t2 = time.perf_counter()
            log.append((_kind(before, handed, _state(beholder)), t1 - t0, t2 - t1))
        elapsed = time.perf_counter() - start
        if handle is not None:
            beholder.flush()
            handle.remove()
        return elapsed

    steps: dict[str, list[tuple[str, float, float]]] = {}
    warmup = {name: run(name) for name in CONDITIONS}  # every code path once
    steps.clear()
    times: dict[str, list[float]] = {name: [] for name in CONDITIONS}
    order = list(CONDITIONS)
    for _ in range(args.rounds):
        random.shuffle(order)
        for name in order:
            times[name].append(run(name))

    base = statistics.median(times["none"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds of "
          f"{args.steps} steps (batch {args.batch_size})")
    print(f"{'condition':<12} {'median s':>9} {'vs none':>8} {'per-round ratio':>16} {'(IQR)':>18} "
          f"{'frames/s':>9}")
    for name in CONDITIONS:
        median = statistics.median(times[name])
        ratios = [t / b for t, b in zip(times[name], times["none"])]
        low, _, high = statistics.quantiles(ratios, n=4)
        frames = beholders[name].frames_written if name in beholders else 0
        rate = frames / (sum(times[name]) + warmup[name])
        print(f"{name:<12} {median:9.4f} {median / base - 1:+8.1%} {statistics.median(ratios) - 1:+16.1%} "
              f"{f'[{low - 1:+.1%}, {high - 1:+.1%}]':>18} {rate:9.1f}")
    print()
    print("Per-step accounting (medians over every timed step of a condition, robust to a noisy machine):")
    print("a quiet step has no Beholder work in it (no hook armed, no frame taken, the worker idle);")
    print("extra = sum over step kinds of count x (median time - median quiet step), update() included.")
    print(f"{'condition':<12} {'quiet ms':>9} {'frames':>7} {'arming':>7} {'hooked':>7} {'beside':>7} "
          f"{'extra ms/frame':>15} {'overhead':>9}")
    for name in beholders:
        print(_accounting(name, steps[name]))
    for beholder in beholders.values():
        beholder.close()
    shutil.rmtree(root, ignore_errors=True)
    return 0


def _state(beholder) -> tuple[bool, bool]:
    """(worker busy, hooks armed) before or after a step (both False without a Beholder)."""
    if beholder is None:
        return False, False
    watch = beholder.watched
    return beholder.worker.busy, watch is not None and watch.armed is not None


def _kind(before: tuple[bool, bool], handed: bool, after: tuple[bool, bool]) -> str:
    """What Beholder did in a step: took a frame, armed hooks, ran hooked, ran beside the worker, or none."""
    if handed:
        return "frame"
    if after[1] and not before[1]:
        return "arming"
    if before[1]:
        return "hooked"
    if before[0]:
        return "beside"  # the worker was rendering a frame while this step ran
    return "quiet"


def _accounting(name: str, log: list[tuple[str, float, float]]) -> str:
    """One line: the median quiet step, step kinds per frame, and the extra time they took."""
    by_kind: dict[str, list[float]] = {}
    for kind, train, update in log:
        by_kind.setdefault(kind, []).append(train + update)
    quiet = statistics.median(by_kind["quiet"])
    frames = max(len(by_kind.get("frame", [])), 1)
    extras = {kind: len(times) * (statistics.median(times) - quiet) for kind, times in by_kind.items()}
    extra = sum(extras.values())
    counts = " ".join(f"{len(by_kind.get(k, [])) / frames:7.2f}" for k in ("arming", "hooked", "beside"))
    parts = ", ".join(f"{kind} {value / frames * 1e3:.2f}" for kind, value in sorted(extras.items())
                      if kind != "quiet")
    return (f"{name:<12} {quiet * 1e3:9.3f} {len(by_kind.get('frame', [])):7d} {counts} "
            f"{extra / frames * 1e3:15.3f} "
            f"{extra / (len(log) * quiet):+9.1%}   ({parts})")


if __name__ == "__main__":
    sys.exit(main())
