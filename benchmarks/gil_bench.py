"""What the rendering worker costs a GPU training loop through the GIL, measured without a GPU.

    python benchmarks/gil_bench.py [--seconds 3] [--rounds 3] [--launch-ms 8] [--wait-ms 20]

On a GPU the training thread spends a step in two ways: issuing kernels
(Python, holding the GIL except inside each op's dispatch) and waiting for
the device (``loss.item()``, the GIL released). Beholder's worker renders
each frame on another thread: what of that holds the GIL competes with the
issuing, and a trainer back from its wait finds the GIL taken and waits
for it, up to the interpreter's switch interval (5 ms unless changed).

1. The loop. This stands in for a GPU's training loop: each step runs a
   fixed number of torch ops on a one-value tensor (``--launch-ms`` of
   them, calibrated once), sleeps ``--wait-ms`` (the device's part) and
   calls ``update()``. One thing after the other, so every delay counts in
   full: an upper bound of what a GPU loop would lose, whose device work
   hides the delays that fall while the CPU runs ahead. The gathers and the
   per-step check are captured and replayed as on CUDA, their kernels left
   out (``launch_bench.launched_norms``, and a replay that does nothing).
   Beholder watches a module with ResNet-50's 214 parameters at their real
   shapes (``model_shapes.json``: 25.6 M values, 2.07 M shown), CPU tensors
   taking the device path (``BEHOLDER_BATCH_CPU_TENSORS=1``), FPS 10,
   variance mode; gradients stay in ``.grad``. Conditions run interleaved
   in rounds of ``--seconds``: ``none`` (FPS 0), ``weights``,
   ``gradients``. Per condition: the mean step and its ratio to ``none``
   (per-round spread), frames/s, and per frame written: update()'s time,
   the worker's CPU time, and how much later than asked the trainer's
   Python and wake-ups ended.
2. Wake-ups. No loop: a thread sleeps 0.2 ms over and over (a trainer
   waking from its device) while frames are written; how much later than
   usual it woke, summed per frame. The worker gives the GIL away every
   0.2 ms of its Python (``worker.let_training_run``); without that a
   waking trainer waits for the end of the worker's stretch of Python.

``--switch-ms`` sets the interpreter's switch interval, to see what it does.
Compare figures only within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

os.environ["BEHOLDER_BATCH_CPU_TENSORS"] = "1"  # before beholder_plugin reads it
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

CONDITIONS = ("none", "weights", "gradients")
VALUES = {"none": "trainable_variables", "weights": "trainable_variables", "gradients": "gradients"}


def resnet50_parameters(torch):
    """A module holding ResNet-50's 214 trainable variables at their real shapes (torch layouts)."""
    with open(os.path.join(HERE, "model_shapes.json")) as f:
        items = json.load(f)["resnet50"]
    module = torch.nn.Module()
    generator = torch.Generator().manual_seed(0)
    for k, (name, shape) in enumerate(items):
        if len(shape) == 4:  # Keras kernels (h, w, in, out) as torch's (out, in, h, w)
            shape = [shape[3], shape[2], shape[0], shape[1]]
        elif len(shape) == 2:
            shape = [shape[1], shape[0]]
        value = torch.randn(shape, generator=generator) * 0.05
        param = torch.nn.Parameter(value)
        param.grad = torch.randn(shape, generator=generator) * 0.01
        module.register_parameter(f"p{k:03d}_" + name.replace("/", "_").replace(".", "_"), param)
    return module


def calibrate() -> int:
    """How many issue_ops() make a millisecond on this machine, now."""
    n = 2000
    best = min(timed_work(n) for _ in range(5))
    return max(1, int(n / (best * 1e3)))


def timed_work(n: int) -> float:
    """Seconds that issue_ops(n) took."""
    t0 = time.perf_counter()
    issue_ops(n)
    return time.perf_counter() - t0


_TINY: list = []


def issue_ops(n: int) -> None:
    """A fixed amount of work in the shape of issuing kernels: n torch ops on a one-value tensor, each a
    little Python and a dispatch that releases the GIL, as a GPU's training thread issues its kernels."""
    if not _TINY:
        import torch

        _TINY.append(torch.zeros(1))
    x = _TINY[0]
    for _ in range(n):
        x.add_(1.0)


def run_condition(condition: str, seconds: float, per_ms: int, launch_ms: float, wait_ms: float,
                  module) -> dict:
    """One round of one condition: mean step, frames, worker CPU and the trainer's lost time."""
    from beholder_plugin import DEFAULT_CONFIG, Beholder, write_config

    run = tempfile.mkdtemp(prefix="gil-bench-")
    fps = 0 if condition == "none" else 10
    write_config(run, {**DEFAULT_CONFIG, "values": VALUES[condition], "FPS": fps, "mode": "variance"})
    beholder = Beholder(run)
    beholder.watch(module)
    n, wait = int(per_ms * launch_ms), wait_ms / 1e3
    worker_cpu: list[float] = []
    original = beholder.jobs.run

    def run_job(job):  # the worker's CPU time per frame (its own thread's)
        c0 = time.thread_time()
        try:
            return original(job)
        finally:
            worker_cpu.append(time.thread_time() - c0)

    beholder.worker._run = run_job
    for _ in range(20):  # plans, indices and captures of the first frames
        issue_ops(n)
        time.sleep(wait)
        beholder.update()
    beholder.flush()
    worker_cpu.clear()
    frames0 = beholder.frames_written
    steps, updates, late = [], [], 0.0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        issue_ops(n)
        t1 = time.perf_counter()
        time.sleep(wait)
        t2 = time.perf_counter()
        beholder.update()
        t3 = time.perf_counter()
        steps.append(t3 - t0)
        updates.append(t3 - t2)
        late += (t2 - t1) - wait  # woke late: the GIL was held
        launch_late = (t1 - t0) - launch_ms / 1e3
        late += max(0.0, launch_late)
    elapsed = time.perf_counter() - start  # (every frame counted was taken by now; flush() finishes the last)
    beholder.flush()
    frames = beholder.frames_written - frames0
    failures = beholder.failures
    beholder.close()
    shutil.rmtree(run, ignore_errors=True)
    return {"step": statistics.mean(steps), "frames": frames, "seconds": elapsed,
            "worker_cpu": sum(worker_cpu), "update": sum(updates), "late": late, "failures": failures,
            "steps": len(steps)}


def wakeups(condition: str, frames: int, module) -> float:
    """Milliseconds per frame by which a thread waking every 0.2 ms (a training thread back from its
    device) found the GIL taken while the worker wrote frames, over a thread's lateness with none."""
    from beholder_plugin import DEFAULT_CONFIG, Beholder, write_config

    run = tempfile.mkdtemp(prefix="gil-bench-wake-")
    write_config(run, {**DEFAULT_CONFIG, "values": VALUES[condition], "FPS": 10, "mode": "variance"})
    now = [0.0]
    beholder = Beholder(run, clock=lambda: now[0])
    beholder.watch(module)
    for _ in range(5):  # plans, indices and captures
        now[0] += 0.2
        beholder.update()
        beholder.flush()
    lateness: list[float] = []
    stop = threading.Event()

    def wake() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            time.sleep(0.0002)
            lateness.append(time.perf_counter() - t0 - 0.0002)

    thread = threading.Thread(target=wake, daemon=True)
    thread.start()
    time.sleep(0.3)
    quiet = statistics.median(lateness)  # what the thread's sleep overshoots by anyway
    lateness.clear()
    for _ in range(frames):
        now[0] += 0.2
        beholder.update()
        beholder.flush()
        time.sleep(0.01)
    stop.set()
    thread.join()
    beholder.close()
    shutil.rmtree(run, ignore_errors=True)
    return sum(max(0.0, late - quiet) for late in lateness) / frames * 1e3


def main() -> None:
    """Run the conditions interleaved in rounds and print the medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per condition per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--launch-ms", type=float, default=8.0, help="Python per step (the GIL held)")
    parser.add_argument("--wait-ms", type=float, default=20.0, help="the device's part (the GIL released)")
    parser.add_argument("--frames", type=int, default=30, help="frames per round of the wake-up part")
    parser.add_argument("--switch-ms", type=float, default=None, help="sys.setswitchinterval, in ms")
    args = parser.parse_args()
    if args.switch_ms is not None:
        sys.setswitchinterval(args.switch_ms / 1e3)
    import torch
    from launch_bench import launched_norms

    from beholder_plugin.trainer.sources import torch_batch

    torch.set_num_threads(1)
    # as on CUDA: the gathers and the per-step check captured and replayed, their kernels left out (a
    # replay does nothing: the buffers keep the values of the frames gathered before the capture), and
    # the fused norm pass's too (this CPU would spend ~10 ms a step on the check's)
    torch_batch.CPU_GRAPHS, torch._foreach_norm = True, launched_norms
    torch_batch.AddressReplay.replay = lambda graph: None
    module = resnet50_parameters(torch)
    per_ms = calibrate()
    print(f"gil_bench: torch {torch.__version__}, Python {sys.version.split()[0]}, switch interval "
          f"{sys.getswitchinterval() * 1e3:.1f} ms; step = {args.launch_ms} ms of Python + {args.wait_ms} ms "
          f"asleep; {args.rounds} rounds x {args.seconds} s per condition")
    rows: dict[str, list[dict]] = {c: [] for c in CONDITIONS}
    for _ in range(args.rounds):
        for condition in CONDITIONS:
            rows[condition].append(run_condition(condition, args.seconds, per_ms, args.launch_ms,
                                                 args.wait_ms, module))
    base = [row["step"] for row in rows["none"]]
    print(f"{'condition':<11}{'step ms':>9}{'vs none':>10}{'spread':>15}{'frames/s':>10}"
          f"{'update/frame':>14}{'worker CPU/frame':>18}{'trainer late/frame':>20}")
    for condition in CONDITIONS:
        got = rows[condition]
        step = statistics.median(row["step"] for row in got)
        ratios = [row["step"] / b for row, b in zip(got, base)]
        frames = sum(row["frames"] for row in got)
        fps = frames / sum(row["seconds"] for row in got)
        cpu = sum(row["worker_cpu"] for row in got) / frames * 1e3 if frames else 0.0
        late = sum(row["late"] for row in got) / frames * 1e3 if frames else 0.0
        update = sum(row["update"] for row in got) / frames * 1e3 if frames else 0.0
        failures = sum(row["failures"] for row in got)
        print(f"{condition:<11}{step * 1e3:>9.2f}{(statistics.median(ratios) - 1) * 100:>+9.1f}%"
              f"{min(ratios):>8.3f}-{max(ratios):.3f}{fps:>10.1f}{update:>11.2f} ms{cpu:>15.1f} ms"
              f"{late:>17.2f} ms"
              + (f"  ({failures} failures)" if failures else ""))
    print("\na thread waking every 0.2 ms while frames are written, how late it woke, per frame:")
    for condition in CONDITIONS[1:]:
        late = [wakeups(condition, args.frames, module) for _ in range(args.rounds)]
        print(f"{condition:<11}{statistics.median(late):>8.2f} ms  ({min(late):.2f}-{max(late):.2f})")


if __name__ == "__main__":
    main()
