"""What Beholder costs real training on a GPU, in one run: the accelerator issue's table and its floor.

Parts (each prints its own table; a part that fails prints its traceback and
the others still run):

- ``resnet``: torchvision ResNet-50 (``weights=None``), batch 64, bf16
  autocast, channels_last, SGD, ``loss.item()`` every step; ``watch(model)``
  at FPS 10 in variance mode showing weights, gradients (read from ``.grad``),
  gradients caught by hooks (the loop zeroes them after its step, as Hugging
  Face's Trainer does) or activations, and the same loop without Beholder,
  interleaved in rounds; and weights gathered and copied but neither
  rendered nor written (what the rendering worker costs is the difference).
  Per condition: the median step and the mean (frames included: what an
  epoch takes), their ratios to ``none``, frames written per second, how
  long ``update()`` blocked when it took a frame (median / max), and the
  median ``update()`` that took none (the timeline's per-step check).
- ``syncs``: a profile of one frame-due ``update()`` (weights) and of one
  hooked step (gradients, activations) against a plain one: synchronizing
  CUDA calls and device-to-host copies.
- ``floor``: the same number of values gathered with one ``index_select``
  per parameter into one device buffer and one non-blocking copy into
  pinned memory with an event (issued eagerly, and as one CUDA graph): how
  long issuing it blocks, and its GPU time. And the floor of an activations
  frame: a step with a forward hook on every leaf layer that does nothing,
  or launches only what a frame's hook must (one slice, one norm), against
  the same step without hooks.
- ``check``: the timeline's per-step check alone (``update()`` with no frame
  due) over ResNet-50's parameters, all float32, and mixed (every fourth in
  bf16, one strided view) in norm groups or as one list (which sends
  ``_foreach_norm`` down its per-tensor path): host time and kernel launches.
- ``transformer``: a 24-layer encoder (d_model 1024, 302 M parameters),
  ``update(arrays=dict(model.named_parameters()))`` at FPS 10.
- ``jax``: ResNet-50-shaped arrays (214) on the GPU, ``update(arrays=...)``.
- ``compiled``: ``torch.compile``d (inductor) ResNet-18 rows, none, weights,
  gradients, activations (benchmarks/compile_bench.py's compiled_rows).

Without a GPU it says so and exits 0. ``--smoke`` runs every part on the CPU
instead, with tiny models and short runs (CPU tensors through the device
path, the gathers captured and replayed as on CUDA): a check that the script
still runs against the code as it is now (the test suite runs it), whose
figures mean nothing.

    python benchmarks/gpu_bench.py [--rounds 3] [--seconds 3] [--parts resnet,syncs,...] [--json F]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX beside torch on one GPU
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

PARTS = ("resnet", "syncs", "floor", "check", "transformer", "jax", "compiled")
SMOKE = False  # --smoke: the parts on the CPU, tiny and short (see the docstring)
# --smoke: the ResNet loop's least steps per run, a frame falling due at every third (so that update()
# is timed taking a frame and taking none whatever the host's speed)
SMOKE_STEPS = 9


def main() -> int:
    """Run the chosen parts and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per condition per round")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--compiled-steps", type=int, default=30, help="steps per condition per round")
    parser.add_argument("--smoke", action="store_true",
                        help="run every part on the CPU, tiny and short: checks the script, not the figures")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("gpu_bench: PyTorch is not installed: nothing to measure")
        return 0
    if args.smoke:
        start_smoke(args)
        print(f"gpu_bench --smoke: the CPU, torch {torch.__version__} (figures mean nothing)")
    elif not torch.cuda.is_available():
        print("gpu_bench: no CUDA GPU here: nothing to measure (run it on a machine with one)")
        return 0
    else:
        print(f"gpu_bench: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    results = {}
    for part in args.parts.split(","):
        started = time.perf_counter()
        try:
            results[part] = globals()[f"part_{part}"](args)
        except Exception:
            traceback.print_exc()
            results[part] = {"error": traceback.format_exc(limit=3)}
        print(f"[{part}: {time.perf_counter() - started:.0f} s]", flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1, default=str)
    return 0


# ------------------------------------------------------------------ helpers


def start_smoke(args) -> None:
    """--smoke: CPU tensors and arrays through the device path, gathers replayed as on CUDA, short runs."""
    global SMOKE
    import torch

    from beholder_plugin.trainer.sources import jax_batch, torch_batch

    SMOKE = True
    # one intra-op thread: the tiny ops of a smoke step are dominated by thread hand-offs otherwise (and by
    # waits for a core the worker thread or the host's other work holds: steps 10x slower on 2 cores)
    torch.set_num_threads(1)
    torch_batch.BATCH_CPU_TENSORS = torch_batch.CPU_GRAPHS = True
    jax_batch.BATCH_CPU_ARRAYS = True
    # seconds 0: each timed run is its SMOKE_STEPS steps, frames made due every third; the compiled loop's
    # tiny steps (a millisecond or two) run for about a frame interval, so that its rows take frames
    args.rounds, args.seconds, args.compiled_steps = 1, 0.0, 100


def device() -> str:
    """Where the parts run: the GPU (the CPU with --smoke)."""
    return "cpu" if SMOKE else "cuda"


def synchronize(torch) -> None:
    """Wait for the GPU (nothing to wait for with --smoke)."""
    if not SMOKE:
        torch.cuda.synchronize()


def set_config(run: str, **changes) -> None:
    """Write the run's config.json: the defaults with these changes."""
    from beholder_plugin import DEFAULT_CONFIG, write_config

    write_config(run, {**DEFAULT_CONFIG, **changes})


@contextlib.contextmanager
def run_dir(prefix: str, **changes):
    """A fresh directory (with this config when given), removed on leaving: close its Beholders inside."""
    run = tempfile.mkdtemp(prefix=prefix)
    try:
        if changes:
            set_config(run, **changes)
        yield run
    finally:
        shutil.rmtree(run, ignore_errors=True)


def ms(values: list[float]) -> str:
    """'median / max' in milliseconds."""
    if not values:
        return "-"
    return f"{statistics.median(values) * 1e3:.3f} / {max(values) * 1e3:.2f}"


def resnet50(torch, channels_last: bool = True):
    """torchvision's ResNet-50 with random weights on the GPU (channels_last); with --smoke,
    launch_bench's ResNet-50-shaped tree of tiny tensors on the CPU."""
    if SMOKE:
        from launch_bench import resnet50_tree

        model = resnet50_tree(torch)
    else:
        import torchvision

        model = torchvision.models.resnet50(weights=None).cuda()
    return model.to(memory_format=torch.channels_last) if channels_last else model


class Loop:
    """ResNet-50 training steps (bf16 autocast, SGD, loss.item() every step) with an optional Beholder."""

    def __init__(self, torch, model, batch: int = 64) -> None:
        self.torch = torch
        self.model = model
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        batch, size, classes = (2, 4, 10) if SMOKE else (batch, 224, 1000)
        self.x = torch.randn(batch, 3, size, size, device=device()).to(memory_format=torch.channels_last)
        self.y = torch.randint(0, classes, (batch,), device=device())
        # zero_grad() after the optimizer step (as Hugging Face's Trainer does): update() then finds no
        # .grad, and a gradients frame comes from hooks on the next backward pass
        self.clear_after_step = False

    def step(self) -> float:
        """One training step; returns the loss (a host read, as most loops do)."""
        torch = self.torch
        with torch.autocast(device(), dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.clear_after_step:
            self.opt.zero_grad(set_to_none=True)
        return loss.item()

    def run(self, seconds: float, beholder=None) -> dict:
        """Steps for this long; step times, update() times of calls that took a frame, frames written."""
        steps, blocking, between = [], [], []
        start = time.perf_counter()
        written0 = beholder.frames_written if beholder is not None else 0
        while time.perf_counter() - start < seconds or (SMOKE and len(steps) < SMOKE_STEPS):
            t0 = time.perf_counter()
            self.step()
            if beholder is not None:
                if SMOKE and len(steps) % 3 == 0:
                    beholder.frame_due_now()  # (at FPS 1: every third step, however slow the host)
                u0 = time.perf_counter()
                took = beholder.update()
                (blocking if took else between).append(time.perf_counter() - u0)
            steps.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        if beholder is not None:
            beholder.flush()
        written = (beholder.frames_written - written0) if beholder is not None else 0
        return {"steps": steps, "blocking": blocking, "between": between, "frames": written,
                "seconds": elapsed,
                "skipped": beholder.skipped if beholder is not None else 0,
                "failures": beholder.failures if beholder is not None else 0}


def time_worker(beholder) -> list[float]:
    """Seconds the worker spends per frame (waiting for the copy, rendering, writing), appended as it goes."""
    spent: list[float] = []
    real = beholder.jobs.run

    def run_job(job) -> None:
        t0 = time.perf_counter()
        real(job)
        spent.append(time.perf_counter() - t0)

    run_jobs_with(beholder, run_job)
    return spent


def copy_only(beholder) -> None:
    """From now on the worker only waits for each frame's copy to the host: nothing rendered or written
    (the frames/s column of such a row stays 0)."""
    from beholder_plugin.trainer.device_batches import receive

    def run_job(job) -> None:
        if job.pending:
            receive(job)

    run_jobs_with(beholder, run_job)


def run_jobs_with(beholder, run_job) -> None:
    """Have each frame's job run by run_job: what the worker calls (it was handed jobs.run when the
    Beholder was made), and update() when there is no worker."""
    beholder.jobs.run = run_job
    if beholder.worker is not None:
        beholder.worker._run = run_job


# ------------------------------------------------------------------ parts


def part_resnet(args) -> dict:
    """ResNet-50: none, weights, gradients, activations, interleaved in rounds."""
    import torch

    from beholder_plugin import Beholder

    model = resnet50(torch)
    loop = Loop(torch, model)
    for _ in range(3 if SMOKE else 15):
        loop.step()
    conditions = ["none", "trainable_variables", "gradients", "gradients_hooked", "activations",
                  "trainable_variables_unrendered"]
    got: dict[str, list[dict]] = {c: [] for c in conditions}
    with run_dir("gpu-bench-") as root:
        for r in range(args.rounds):
            order = conditions[r % len(conditions):] + conditions[: r % len(conditions)]
            for cond in order:
                loop.clear_after_step = cond == "gradients_hooked"
                if cond == "none":
                    got[cond].append(loop.run(args.seconds))
                    continue
                run = os.path.join(root, f"{cond}-{r}")
                shown = cond.replace("_hooked", "").replace("_unrendered", "")
                set_config(run, values=shown, FPS=1 if SMOKE else 10, mode="variance")
                with Beholder(run) as beholder:
                    beholder.watch(model)
                    # the plan's first frames: indices uploaded, graph captured (--smoke: SMOKE_STEPS steps)
                    loop.run(0 if SMOKE else 0.5, beholder)
                    if cond.endswith("_unrendered"):
                        copy_only(beholder)
                    worker = time_worker(beholder)
                    row = loop.run(args.seconds, beholder)
                    row["worker"] = list(worker)
                    plan = beholder.gatherer.frame_plans and beholder.gatherer.frame_plans[-1]
                    row["values"] = plan.value_count if plan else 0
                    got[cond].append(row)
    base = statistics.median(s for g in got["none"] for s in g["steps"])
    base_mean = statistics.mean(s for g in got["none"] for s in g["steps"])
    print("\nResNet-50, batch 64, bf16 autocast, channels_last, SGD; watch(model), FPS 10, variance")
    print("(step: the median step, a step with no frame mostly; mean: the whole run's time per step, frames "
          "included, what an epoch takes; 'weights, not rendered': frames gathered and copied to the host, "
          "then neither rendered nor written: weights minus it is what the rendering worker costs the loop)")
    print(f"{'values shown':<24}{'step ms':>9}{'vs none':>9}{'mean ms':>9}{'vs none':>9}{'frames/s':>10}"
          f"{'update() blocking ms':>24}{'no frame ms':>13}{'skipped':>9}{'failures':>9}"
          f"{'worker ms/frame':>17}{'values/frame':>14}")
    table = {}
    for cond in conditions:
        steps = [s for g in got[cond] for s in g["steps"]]
        blocking = [b for g in got[cond] for b in g["blocking"]]
        between = [b for g in got[cond] for b in g.get("between", [])]  # the per-step check's update()
        fps = sum(g["frames"] for g in got[cond]) / sum(g["seconds"] for g in got[cond])
        med, mean = statistics.median(steps), statistics.mean(steps)
        label = {"trainable_variables": "weights", "gradients_hooked": "gradients (hooked)",
                 "trainable_variables_unrendered": "weights, not rendered"}.get(cond, cond)
        table[label] = {"step_ms": med * 1e3, "ratio": med / base, "fps": fps,
                        "mean_step_ms": mean * 1e3, "mean_ratio": mean / base_mean,
                        "per_round_mean_ratio": [statistics.mean(g["steps"]) / base_mean for g in got[cond]],
                        "blocking_median_ms": statistics.median(blocking) * 1e3 if blocking else None,
                        "blocking_max_ms": max(blocking) * 1e3 if blocking else None,
                        "no_frame_median_ms": statistics.median(between) * 1e3 if between else None,
                        "per_round_ratio": [statistics.median(g["steps"]) / base for g in got[cond]],
                        "skipped": sum(g["skipped"] for g in got[cond]),
                        "failures": sum(g["failures"] for g in got[cond])}
        print(f"{label:<24}{med * 1e3:>9.2f}{(med / base - 1) * 100:>+8.1f}%"
              f"{mean * 1e3:>9.2f}{(mean / base_mean - 1) * 100:>+8.1f}%"
              f"{fps if cond != 'none' else 0:>10.1f}{ms(blocking):>24}"
              f"{table[label]['no_frame_median_ms'] or 0:>13.3f}"
              f"{table[label]['skipped']:>9}{table[label]['failures']:>9}"
              f"{ms([w for g in got[cond] for w in g.get('worker', [])]):>17}"
              f"{max([g.get('values', 0) for g in got[cond]]):>14}")
        table[label]["worker_ms"] = [w * 1e3 for g in got[cond] for w in g.get("worker", [])]
    return table


def count_syncs(prof) -> dict:
    """Synchronizing CUDA calls and copies in a profile."""
    names = [e.name for e in prof.events()]
    return {
        "synchronize": sum("Synchronize" in n for n in names),
        "memcpy_calls": sum(n in ("cudaMemcpyAsync", "cudaMemcpy") for n in names),
        "dtoh": sum("DtoH" in n or "Device -> Pageable" in n or "Device -> Pinned" in n for n in names),
        "htod": sum("HtoD" in n for n in names),
        "graph_launch": sum("GraphLaunch" in n for n in names),
    }


class HeldWorker:
    """Holds the worker before it waits on a copy: a profile then shows the training thread's calls only."""

    def __init__(self) -> None:
        import threading

        from beholder_plugin.trainer.sources import torch_batch

        self.module = torch_batch
        self.real = torch_batch.Pending.wait
        self.go = threading.Event()

    def __enter__(self) -> HeldWorker:
        held = self

        def wait(pending):
            held.go.wait()
            return held.real(pending)

        self.go.clear()
        self.module.Pending.wait = wait
        return self

    def __exit__(self, *exc) -> None:
        self.go.set()
        self.module.Pending.wait = self.real


def part_syncs(args) -> dict:
    """Profiles: one frame-due update() (weights); a hooked step vs a plain one (gradients, activations)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from beholder_plugin import Beholder

    model = resnet50(torch)
    loop = Loop(torch, model)
    activities = [ProfilerActivity.CPU] + ([] if SMOKE else [ProfilerActivity.CUDA])
    out = {}
    for values in ("trainable_variables", "gradients", "activations"):
        # gradients cleared after each step: update() finds no .grad, and the frame comes from the hooks
        # its last call armed (the "after a hooked step" of the table; a .grad read is "weights"-like)
        loop.clear_after_step = values == "gradients"
        config = {"values": values, "FPS": 10, "mode": "variance"}
        with run_dir(f"gpu-syncs-{values}-", **config) as run, Beholder(run) as beholder:
            beholder.watch(model)
            loop.run(0 if SMOKE else 1.0, beholder)  # (--smoke: its SMOKE_STEPS steps, three frames)
            synchronize(torch)
            # wait for a frame to fall due, then profile what Beholder adds to one step
            while True:
                beholder.flush()
                time.sleep(0.11)
                with HeldWorker(), profile(activities=activities) as prof:
                    with torch.autocast(device(), dtype=torch.bfloat16):
                        loss = torch.nn.functional.cross_entropy(loop.model(loop.x), loop.y)
                    loop.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    loop.opt.step()
                    if loop.clear_after_step:
                        loop.opt.zero_grad(set_to_none=True)
                    with torch.profiler.record_function(UPDATE_RANGE):
                        took = beholder.update()
                if took:
                    break
            with profile(activities=activities) as plain:
                with torch.autocast(device(), dtype=torch.bfloat16):
                    loss = torch.nn.functional.cross_entropy(loop.model(loop.x), loop.y)
                loop.opt.zero_grad(set_to_none=True)
                loss.backward()
                loop.opt.step()
            loss.item()
        label = {"trainable_variables": "weights"}.get(values, values)
        out[label] = {"with_frame": count_syncs(prof), "plain_step": count_syncs(plain),
                      "update": update_calls(prof)}
    print("\nSynchronizing calls and copies on the training thread: a step whose update() took a frame"
          " (after a hooked step for gradients/activations) vs a plain step (no loss.item() in either);"
          " the frame's one copy to the host is the worker's, held until the profile is over")
    print(f"{'values':<14}{'sync with':>10}{'sync plain':>11}{'memcpy calls':>14}{'DtoH':>6}{'HtoD':>6}"
          f"{'graph launches':>16}")
    for label, row in out.items():
        w, p = row["with_frame"], row["plain_step"]
        print(f"{label:<14}{w['synchronize']:>10}{p['synchronize']:>11}"
              f"{w['memcpy_calls'] - p['memcpy_calls']:>14}{w['dtoh'] - p['dtoh']:>6}"
              f"{w['htod'] - p['htod']:>6}{w['graph_launch']:>16}")
    print("\nWhat the frame-due update() of those steps called (profiled, so slower than unprofiled):")
    for label, row in out.items():
        u = row["update"]
        top = ", ".join(f"{name} {n}" for name, n in u["top_ops"])
        print(f"  {label:<13} {u['ms']:.2f} ms, {u['ops']} torch ops from Python, {u['launches']} kernel"
              f" launches, {u['graph_launches']} graph launches; most called: {top}")
    return out


UPDATE_RANGE = "beholder.update"


def update_calls(prof) -> dict:
    """What one profiled update() (inside the UPDATE_RANGE record_function) called: its time, the torch ops
    it called from Python (their count, the most called), and the kernel and graph launches."""
    import collections

    events = prof.events()
    window = next(e for e in events if e.name == UPDATE_RANGE)
    start, end = window.time_range.start, window.time_range.end
    inside = [e for e in events
              if e is not window and start <= e.time_range.start and e.time_range.end <= end]
    # the ops called from Python: those not called by another op
    ops = collections.Counter(e.name for e in inside if e.name.startswith("aten::")
                              and not (e.cpu_parent and e.cpu_parent.name.startswith("aten::")))
    return {"ms": (end - start) / 1e3, "ops": sum(ops.values()), "top_ops": ops.most_common(8),
            "launches": sum(e.name in LAUNCHES for e in inside),
            "graph_launches": sum("GraphLaunch" in e.name for e in inside)}


def part_floor(args) -> dict:
    """One index_select per parameter into one buffer, one non-blocking copy to pinned memory, an event."""
    import torch

    from beholder_plugin.protocol.layout import resolve_layout
    from beholder_plugin.trainer import sources
    from beholder_plugin.trainer.beholder import Beholder
    from beholder_plugin.trainer.sources.torch_batch import span_of, storage_offsets

    model = resnet50(torch)
    named = sources.named_variables(model)
    # the values a frame of these parameters shows: its plan for the torch layouts, as update() makes it
    layouts = []
    for name, p, layout in named:
        if layout is None:
            layout = sources.adapter("torch").default_layout(p, tuple(p.shape))
        layouts.append(resolve_layout(layout, tuple(p.shape), name))
    with run_dir("gpu-floor-") as run, Beholder(run) as beholder:
        shapes = [tuple(p.shape) for _, p, _ in named]
        plan = beholder.gatherer.frame_plan([n for n, _, _ in named], shapes, False, layouts)
    params = [p.detach() for _, p, _ in named]
    indices = []
    for i, p in enumerate(params):
        n = int(plan.sample_offsets[i + 1] - plan.sample_offsets[i])
        offsets = storage_offsets(plan.plans[i], tuple(p.shape), p.stride(), plan.sample_steps[i], n)
        indices.append(torch.from_numpy(offsets).to(device()))
    total = sum(int(i.numel()) for i in indices)
    buffer = torch.empty(total, device=device())
    host = torch.empty(total, pin_memory=not SMOKE)
    cuda = not SMOKE
    stream = torch.cuda.Stream() if cuda else None
    done = torch.cuda.Event() if cuda else None

    def gather() -> None:
        at = 0
        for p, index in zip(params, indices):
            n = index.numel()
            base = p.as_strided((span_of(p.shape, p.stride()),), (1,), p.storage_offset())
            torch.index_select(base, 0, index, out=buffer[at : at + n])
            at += n

    def issue(use_graph) -> None:
        if use_graph is not None:
            use_graph.replay()
        else:
            gather()
        if not cuda:  # --smoke: the copy at once
            host.copy_(buffer)
            return
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            host.copy_(buffer, non_blocking=True)
            done.record(stream)

    graph = torch.cuda.CUDAGraph() if cuda else None
    for _ in range(3):
        gather()
    synchronize(torch)
    if cuda:
        with torch.cuda.graph(graph):
            gather()
    out = {"values": total, "sections": len(params)}
    for label, g in (("eager", None), ("graph", graph)):
        if label == "graph" and not cuda:
            continue
        blocking, gpu = [], []
        for _ in range(50):
            synchronize(torch)
            t0 = time.perf_counter()
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            issue(g)
            blocking.append(time.perf_counter() - t0)
            if cuda:
                end.record(stream)
                end.synchronize()
                gpu.append(start.elapsed_time(end) / 1e3)
        out[label] = {"blocking_ms": statistics.median(blocking) * 1e3,
                      "gpu_ms": statistics.median(gpu) * 1e3 if gpu else None}
    print(f"\nFloor: {total} values of {len(params)} ResNet-50 parameters, one index_select each into one "
          "buffer, one non-blocking copy to pinned memory")
    for label in ("eager", "graph"):
        if label in out:
            row = out[label]
            gpu_ms = f"{row['gpu_ms']:.3f} ms" if row["gpu_ms"] is not None else "-"
            print(f"  {label:<6} blocking {row['blocking_ms']:.3f} ms, GPU time {gpu_ms}")
    out["activation_hooks"] = activation_floor(torch, model, args)
    return out


def activation_floor(torch, model, args) -> dict:
    """The least an activations frame costs a step: forward hooks on every leaf layer that do nothing,
    and hooks that launch only what a frame's hook must (one index_select of the shown values, one
    whole-output norm) with none of Beholder's Python; steps timed against the same loop without."""
    loop = Loop(torch, model)
    leaves = [m for m in model.modules() if not list(m.children())]
    indexes: dict[tuple, object] = {}

    def noop(module, inputs, output) -> None:
        return None

    def launches(module, inputs, output) -> None:
        if not isinstance(output, torch.Tensor):
            return
        index = indexes.get((output.numel(), output.device))
        if index is None:  # (made on the warm-up steps: nothing is uploaded while timed)
            index = indexes[(output.numel(), output.device)] = torch.arange(
                0, output.numel(), max(1, output.numel() // 2048), device=output.device)
        flat = output.detach().as_strided((output.numel(),), (1,), output.storage_offset())
        torch.index_select(flat, 0, index)
        torch.linalg.vector_norm(output.detach(), dtype=torch.float32)

    steps = 3 if SMOKE else 20
    times: dict[str, list[float]] = {"none": [], "no-op hooks": [], "two launches per hook": []}
    hooks = {"none": None, "no-op hooks": noop, "two launches per hook": launches}
    for r in range(args.rounds + 1):  # (round 0 warms up: indexes made, caches filled)
        for label, hook in hooks.items():
            handles = [m.register_forward_hook(hook) for m in leaves] if hook is not None else []
            for _ in range(steps):
                t0 = time.perf_counter()
                loop.step()
                if r:
                    times[label].append(time.perf_counter() - t0)
            for handle in handles:
                handle.remove()
    base = statistics.median(times["none"])
    out = {"layers": len(leaves)}
    print(f"\nFloor of an activations frame: forward hooks on the {len(leaves)} leaf layers, a step each")
    for label, got in times.items():
        med = statistics.median(got)
        out[label] = {"step_ms": med * 1e3, "extra_ms": (med - base) * 1e3}
        # (at 10 frames/s, ten hooked steps a second: their extra time, as a share of that second)
        print(f"  {label:<22} step {med * 1e3:.2f} ms ({(med - base) * 1e3:+.2f} ms a hooked step; at 10 "
              f"frames/s {(med - base) * 10 * 100:+.1f} % of the training's time)")
    return out


LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")  # a profile's kernel launches


def part_check(args) -> dict:
    """The per-step check alone: update() with no frame due, over float32 or mixed parameters."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from beholder_plugin import Beholder
    from beholder_plugin.trainer import exact_pass

    params = {name: p.detach() for name, p in resnet50(torch).named_parameters()}
    mixed = {name: p.to(torch.bfloat16) if i % 4 == 0 else p for i, (name, p) in enumerate(params.items())}
    mixed["strided"] = next(iter(params.values()))[:, ::2]  # conv1's weight, every other input channel
    real = exact_pass.norm_groups
    cases = (("float32", params, True), ("mixed, grouped", mixed, True), ("mixed, one list", mixed, False))
    times: dict[str, list[float]] = {label: [] for label, _, _ in cases}
    launches: dict[str, int] = {}
    activities = [ProfilerActivity.CPU] + ([] if SMOKE else [ProfilerActivity.CUDA])
    try:
        for _ in range(args.rounds):
            for label, arrays, grouped in cases:
                exact_pass.norm_groups = real if grouped else (lambda tensors: None)
                config = {"values": "arrays", "FPS": 1, "mode": "current"}
                with run_dir("gpu-check-", **config) as run, Beholder(run) as beholder:
                    beholder.update(arrays=arrays)  # the first frame starts the per-step check
                    beholder.flush()
                    for i in range(200):
                        t0 = time.perf_counter()
                        took = beholder.update(arrays=arrays)
                        if not took:
                            times[label].append(time.perf_counter() - t0)
                        if i % 20 == 19:
                            synchronize(torch)
                    with profile(activities=activities) as prof:
                        beholder.update(arrays=arrays)
                    launches[label] = sum(e.name in LAUNCHES or "GraphLaunch" in e.name
                                          for e in prof.events())
    finally:
        exact_pass.norm_groups = real
    print(f"\nThe per-step check alone: update() with no frame due, {len(params)} ResNet-50 parameters "
          "(mixed: every fourth in bf16, one strided view)")
    out = {}
    for label, _, _ in cases:
        out[label] = {"median_ms": statistics.median(times[label]) * 1e3 if times[label] else None,
                      "launches": launches.get(label)}
        median = f"{out[label]['median_ms']:.3f}" if times[label] else "-"
        print(f"  {label:<18} {median} ms, {launches.get(label)} kernel and graph launches")
    return out


def part_transformer(args) -> dict:
    """A 302 M-parameter encoder's weights through update(arrays=...) at FPS 10."""
    import torch

    from beholder_plugin import Beholder

    width, heads, layers, batch, tokens = (32, 4, 2, 2, 8) if SMOKE else (1024, 16, 24, 16, 256)
    layer = torch.nn.TransformerEncoderLayer(width, heads, 4 * width, batch_first=True)
    model = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).to(device())
    count = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    x = torch.randn(batch, tokens, width, device=device())

    def step() -> None:
        with torch.autocast(device(), dtype=torch.bfloat16):
            loss = model(x).float().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()

    for _ in range(5):
        step()
    out = {}
    for label in ("none", "weights", "none", "weights"):
        with run_dir("gpu-tf-", values="arrays", FPS=10, mode="variance") as run:
            beholder = Beholder(run) if label == "weights" else None
            try:
                worker = time_worker(beholder) if beholder is not None else []
                steps, blocking, calls = [], [], 0
                start = time.perf_counter()
                seconds = args.seconds if SMOKE else max(args.seconds, 4.0)
                while time.perf_counter() - start < seconds or (SMOKE and len(steps) < SMOKE_STEPS):
                    t0 = time.perf_counter()
                    step()
                    if beholder is not None:
                        if SMOKE and len(steps) % 3 == 0:
                            beholder.frame_due_now()  # (every third step, however slow the host)
                        u0 = time.perf_counter()
                        calls += 1
                        if beholder.update(arrays=dict(model.named_parameters())):
                            blocking.append(time.perf_counter() - u0)
                    steps.append(time.perf_counter() - t0)
                elapsed = time.perf_counter() - start
            finally:
                if beholder is not None:
                    beholder.close()
        row = out.setdefault(label, {"steps": [], "blocking": [], "frames": 0, "seconds": 0.0, "skipped": 0,
                                     "calls": 0, "failures": 0})
        row["steps"] += steps[2:]
        row.setdefault("worker", []).extend(worker)
        row["blocking"] += blocking[1:]  # the plan's first frame (indices uploaded) apart
        row["seconds"] += elapsed
        row["calls"] += calls
        if beholder is not None:
            row["frames"] += beholder.frames_written
            row["skipped"] += beholder.skipped
            row["failures"] += beholder.failures
    base = statistics.median(out["none"]["steps"])
    w = out["weights"]
    med = statistics.median(w["steps"])
    summary = {"parameters": count, "step_ms_none": base * 1e3, "step_ms_weights": med * 1e3,
               "ratio": med / base, "fps": w["frames"] / w["seconds"],
               "blocking_median_ms": statistics.median(w["blocking"]) * 1e3 if w["blocking"] else None,
               "blocking_max_ms": max(w["blocking"]) * 1e3 if w["blocking"] else None,
               "calls": w["calls"], "frames": w["frames"], "skipped": w["skipped"], "failures": w["failures"]}
    print(f"\nTransformer encoder, {layers} layers, d_model {width} ({count / 1e6:.0f} M parameters), "
          "update(arrays=dict(model.named_parameters())), FPS 10")
    print(f"  step {base * 1e3:.1f} ms without, {med * 1e3:.1f} ms with ({(med / base - 1) * 100:+.1f} %); "
          f"{summary['fps']:.1f} frames/s; update() blocking {ms(w['blocking'])} ms; "
          f"{w['calls']} calls, {w['frames']} frames, {w['skipped']} skipped, {w['failures']} failures; "
          f"worker {ms(w['worker'])} ms per frame")
    summary["worker_ms"] = [x * 1e3 for x in w["worker"]]
    return summary


def part_jax(args) -> dict:
    """ResNet-50-shaped arrays (214) on the GPU through update(arrays=...)."""
    import jax
    import numpy as np

    from beholder_plugin import Beholder

    gpu = jax.devices("cpu") if SMOKE else [d for d in jax.devices() if d.platform == "gpu"]
    if not gpu:
        print("\nJAX: no GPU device visible to JAX")
        return {"error": "no JAX GPU"}
    with open(os.path.join(HERE, "model_shapes.json")) as f:
        shapes = json.load(f)["resnet50"]
    rng = np.random.default_rng(0)
    items = _shape_items(shapes)
    if SMOKE:  # a few arrays, each at most 4 wide per axis
        items = [(name, [min(d, 4) for d in shape]) for name, shape in items[:12]]
    arrays = {name: jax.device_put(rng.normal(size=shape).astype(np.float32), gpu[0])
              for name, shape in items}

    @jax.jit
    def train_step(tree):
        return jax.tree_util.tree_map(lambda a: a * 0.999 + 0.001, tree)

    with run_dir("gpu-jax-", values="arrays", FPS=10, mode="variance") as run:
        blocking, before, first, start = [], [], None, time.perf_counter()
        began = start
        with Beholder(run) as beholder:
            frames0 = 0
            # (--smoke: 0.2 s, and at least two frames past the first whatever the host's speed)
            while (first is None or time.perf_counter() - start < (0.2 if SMOKE else max(args.seconds, 5.0))
                   or (SMOKE and len(blocking) < 2)):
                arrays = train_step(arrays)
                u0 = time.perf_counter()
                taken = beholder.update(arrays=arrays)
                took = time.perf_counter() - u0
                if first is None and not taken:  # the gather compiling in the background: frames skipped
                    before.append(took)
                elif first is None:  # the first frame taken
                    first, compiled_s = took, time.perf_counter() - began
                    beholder.flush()
                    frames0, start = beholder.frames_written, time.perf_counter()
                elif taken:
                    blocking.append(took)
                time.sleep(0.005)
            elapsed = time.perf_counter() - start
            beholder.flush()
            frames, failures = beholder.frames_written - frames0, beholder.failures
    out = {"arrays": len(arrays), "first_ms": (first or 0) * 1e3, "compiled_s": compiled_s,
           "before_first_max_ms": max(before) * 1e3 if before else None,
           "blocking_median_ms": statistics.median(blocking) * 1e3 if blocking else None,
           "blocking_max_ms": max(blocking) * 1e3 if blocking else None, "fps": frames / elapsed,
           "failures": failures}
    waited = f"{out['before_first_max_ms']:.1f}" if before else "-"
    print(f"\nJAX, {len(arrays)} ResNet-50-shaped arrays on {gpu[0]}: the gather compiled in the background "
          f"in {compiled_s:.1f} s (update() blocked at most {waited} ms meanwhile, {len(before)} calls), "
          f"first frame {out['first_ms']:.1f} ms, then update() blocking {ms(blocking)} ms, {out['fps']:.1f} "
          f"frames/s, {failures} failures")
    return out


def _shape_items(shapes):
    """(name, shape) pairs from model_shapes.json's entry (a dict or a list of pairs)."""
    if isinstance(shapes, dict):
        return list(shapes.items())
    return [(item[0], item[1]) if isinstance(item, (list, tuple)) else (item["name"], item["shape"])
            for item in shapes]


def part_compiled(args) -> dict:
    """torch.compile'd ResNet rows, from benchmarks/compile_bench.py when it is there."""
    try:
        import compile_bench
    except ImportError:
        print("\ncompiled: benchmarks/compile_bench.py is not there")
        return {}
    if SMOKE:  # dynamo's eager backend, a tiny ResNet, a tiny batch: the loop and its Beholder, not inductor
        # (one 8-channel basic block, which dynamo traces in a blink: ResNet-18's took most of the smoke run)
        def tiny():
            return compile_bench.resnet_like(stages=((8, 1),), blocks=1)

        rows = compile_bench.compiled_rows(device="cpu", steps=args.compiled_steps, rounds=1, backend="eager",
                                           batch=2, size=16, model=tiny)
    else:
        rows = compile_bench.compiled_rows(device="cuda", steps=args.compiled_steps, rounds=args.rounds)
    print(f"\ntorch.compile ({'eager backend, --smoke' if SMOKE else 'inductor'})")
    for row in rows:
        cells = (f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        print("  " + ", ".join(cells))
    return {"rows": rows}


if __name__ == "__main__":
    sys.exit(main())
