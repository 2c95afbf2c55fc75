"""What the inspection features cost the trainer: statistics, history and the section filter, A/B in one run.

Run: .venv/bin/python benchmarks/inspect_bench.py [--repeats N] [--blocks N]

Each comparison runs its two conditions in alternating blocks (A, B, A, B,
...) of --repeats frames each, with update_bench's method (blocking time on
the calling thread, process CPU per frame including the worker), and prints
medians over all blocks and their ratio. Targets from the issue "Inspect":

- distributions: the whole-array statistics add at most 15 % to the CPU per
  frame for ResNet-50 shapes (A: statistics off, B: on);
- history: keeping 256 MB of history changes the CPU per frame by at most
  10 % (A: history off, B: 256 MB; after the ring has filled);
- filter: a 300-section model filtered to 5 sections costs at most 1.2 x a
  plain 5-section model (A: the 5 sections alone, B: 300 filtered to 5).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile

import numpy as np
from update_bench import load_models, make_arrays, measure

from beholder_plugin.trainer import sources
from beholder_plugin.trainer.views import render


@contextlib.contextmanager
def statistics_off():
    """Beholder without the whole-array statistics: no samples taken, no figures computed."""
    gather, stats = sources.gather_sample, render.section_stats
    sources.gather_sample = lambda *a, **k: None
    render.section_stats = lambda samples, offsets, counts, layout=None: [None] * (len(offsets) - 1)
    try:
        yield
    finally:
        sources.gather_sample, render.section_stats = gather, stats


def compare(name: str, run_a, run_b, blocks: int) -> None:
    """Alternate the two conditions block by block; print medians and ratios."""
    got = {"A": {"blocking": [], "cpu": []}, "B": {"blocking": [], "cpu": []}}
    for _ in range(blocks):
        for key, run in (("A", run_a), ("B", run_b)):
            result = run()
            for metric in ("blocking", "cpu"):
                got[key][metric].extend(result[metric])
    for metric in ("blocking", "cpu"):
        a, b = (statistics.median(got[k][metric]) * 1e3 for k in ("A", "B"))
        print(f"{name:<44}{metric:>9}  A {a:8.3f} ms  B {b:8.3f} ms  B/A {b / a:5.2f}")


def main() -> None:
    """Print the three comparisons."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="frames per block")
    parser.add_argument("--blocks", type=int, default=3, help="blocks of each condition")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--only", choices=("statistics", "history", "filter"), help="run one comparison")
    args = parser.parse_args()
    models = load_models()
    resnet = [make_arrays(models["resnet50"], seed) for seed in (0, 1)]
    rng = np.random.default_rng(0)
    many = {f"block{i // 3}/layer{i % 3}/kernel": rng.standard_normal((3, 3, 64, 64), dtype=np.float32)
            for i in range(300)}
    few = {k: many[k] for k in list(many)[:5]}
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(10**6))

        def run(arrays_list, mode="current", stats=True, warmup=args.warmup, **config):
            logdir = os.path.join(tmp, f"run{next(counter)}")
            with contextlib.nullcontext() if stats else statistics_off():
                return measure(logdir, arrays_list, mode, args.repeats, warmup, **config)

        wanted = (args.only,) if args.only else ("statistics", "history", "filter")
        if "statistics" in wanted:
            compare("resnet50 current: statistics off / on",
                    lambda: run(resnet, stats=False), lambda: run(resnet), args.blocks)
        # A long run's steady state: the 256 MB ring is full (a ResNet-50 frame file is about 8 MB: 32
        # of them) and each new frame rewrites a dropped file in place.
        if "history" in wanted:
            compare("resnet50 current: history off / 256 MB (full)", lambda: run(resnet, history_mb=0),
                    lambda: run(resnet, history_mb=256, warmup=45), args.blocks)
        if "filter" in wanted:
            pattern = "/^(" + "|".join(k.replace("/", "[/]") for k in few) + ")$/"
            compare("5 sections / 300 sections filtered to 5",
                    lambda: run([few]), lambda: run([many], filter=pattern), args.blocks)


if __name__ == "__main__":
    main()
