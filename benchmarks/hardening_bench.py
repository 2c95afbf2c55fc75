"""What the round-three hardening costs and bounds (docs/reliability.md, "Round three"): prints numbers.

Run: .venv/bin/python benchmarks/hardening_bench.py

- filters: update() with catastrophic-for-backtracking section filters, and
  the longest filter against 1,000-character names (first call, which plans
  the frame and matches every name, and the next one);
- show_all: update() on a (20000, 10000) float32 array with "Show all data"
  (default variance mode), five calls: blocking time and peak RSS growth;
- hostile frame: a 2 KB frame file claiming 2^24 columns, each frame route
  answered once in this process: time and peak RSS growth.
"""

from __future__ import annotations

import atexit
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from server_support import BASE, make_frames, plugin_client  # noqa: E402
from support import set_config  # noqa: E402

from beholder_plugin import Beholder  # noqa: E402
from beholder_plugin.protocol.filters import compile_filter  # noqa: E402
from beholder_plugin.protocol.names import frame_path  # noqa: E402


def peak_mb() -> float:
    """This process's peak RSS so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def filters() -> None:
    """Time update() under filters that stall a backtracking engine."""
    cases = {
        "(a+)+$ against 30 a's and '!'": ("/(a+)+$/", ["a" * 30 + "!"]),
        "^(\\w+/?)+$ against a BERT name": ("/^(\\w+/?)+$/", ["bert/encoder/layer_11/output/dense/kernel:0"]),
        "a 1,000-char filter against 50 names of 1,000 chars": (
            "/" + "(a|b?)*" * 142 + "c/", ["ab" * 499 + str(i).zfill(2) for i in range(50)]),
    }
    for label, (pattern, names) in cases.items():
        run = tempfile.mkdtemp()
        atexit.register(shutil.rmtree, run, True)  # (removed when the benchmark exits)
        set_config(run, values="arrays", mode="current", FPS=30, filter=pattern)
        beholder = Beholder(run, background=False)
        arrays = {name: np.ones(4) for name in names}
        times = []
        for _ in range(2):
            beholder.frame_due_now()
            start = time.perf_counter()
            beholder.update(arrays=arrays)
            times.append(time.perf_counter() - start)
        beholder.close()
        shutil.rmtree(run, ignore_errors=True)
        found = compile_filter(pattern)
        start = time.perf_counter()
        for name in names:
            found.keeps(name)
        match = time.perf_counter() - start
        print(f"filter {label}: update() {times[0] * 1000:.1f} ms first, {times[1] * 1000:.1f} ms next; "
              f"matching alone {match * 1000:.2f} ms")


def show_all() -> None:
    """Time and memory of show_all on 200 M values."""
    run = tempfile.mkdtemp()
    atexit.register(shutil.rmtree, run, True)  # (removed when the benchmark exits)
    set_config(run, values="arrays", FPS=30, show_all=True)
    big = np.random.default_rng(0).standard_normal((20000, 10000), dtype=np.float32)
    before = peak_mb()
    beholder = Beholder(run)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        beholder.update(arrays={"big": big})
        times.append(time.perf_counter() - start)
        beholder.flush()
        time.sleep(0.05)
    beholder.close()
    size = os.path.getsize(frame_path(run)) / (1 << 20)
    print(f"show_all (20000, 10000): update() {', '.join(f'{t:.2f}' for t in times)} s; peak RSS "
          f"+{peak_mb() - before:.0f} MB; frame.bin {size:.0f} MB; failures {beholder.failures}")
    shutil.rmtree(run, ignore_errors=True)


def hostile_frame() -> None:
    """Each frame route on a small file claiming 2^24 columns."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "server"))
    from test_hostile_files import HOSTILE_ROUTES, small_frame

    logdir = tempfile.mkdtemp()
    atexit.register(shutil.rmtree, logdir, True)  # (removed when the benchmark exits)
    make_frames(os.path.join(logdir, "run"))
    with open(frame_path(os.path.join(logdir, "run")), "wb") as f:
        f.write(small_frame())
    _plugin, client = plugin_client(logdir)
    before = peak_mb()
    start = time.perf_counter()
    statuses = []
    for route in HOSTILE_ROUTES:
        query = {"value": "&x=5&y=5", "live-data": "&timeout=0", "diff": "&other=run"}.get(route, "")
        statuses.append(client.get(f"{BASE}/{route}?run=run{query}").status_code)
    print(f"hostile 2^24-column frame: {len(statuses)} routes in {time.perf_counter() - start:.2f} s, "
          f"statuses {statuses}, peak RSS +{peak_mb() - before:.0f} MB")


if __name__ == "__main__":
    filters()
    hostile_frame()
    show_all()
