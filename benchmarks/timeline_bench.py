"""What the timeline and its anomaly checks cost: per frame on the CPU, per step on a GPU, against them off.

    python benchmarks/timeline_bench.py [--seconds 2] [--rounds 5] [--parts cpu,gpu,read,browser]

Parts:

- ``cpu``: Beholder on ResNet-50's and MobileNetV2's trainable variables
  (benchmarks/model_shapes.json, NumPy float32), a frame at every
  ``update()`` (background=False, so all the work is on the calling thread
  and measured there), timeline on and off interleaved round by round. Per
  condition: the median process CPU time per frame and the ratio on/off
  (target: at most 1.05).
- ``gpu`` (skipped without CUDA): a torchvision-free ResNet-50 (bottleneck
  blocks 3-4-6-3, batch 64, bf16 autocast, channels_last, SGD,
  ``loss.item()`` every step) with ``watch(model)`` at 10 frames/s showing
  weights; conditions ``none`` (no Beholder), ``off`` (Beholder, timeline
  off) and ``on`` (timeline and the per-step check), interleaved. Per
  condition the median step; then the per-step check alone: its issue time
  on the host and its GPU time (CUDA events), as a share of the ``none``
  step (target: at most 1 %).
- ``read``: a 7-day timeline of 300 sections at 10 frames/s, as thinning
  leaves it (MAX_PER_SECTION records each), written with a fake clock; then
  the /timeline answer built from it (points=320, as the view asks) and its
  size: the load half of the dashboard's "loads and draws in 1 s".
- ``grow``: a live run's one part grown to 100,000 frames of 4 sections
  (a part closes only when the parts are merged, at about 190,000): the
  records read again after each new frame by a reader that keeps what it
  parsed (the server's) and by a fresh one, interleaved.
- ``browser``: the same timeline served by a real TensorBoard, the Timeline
  view opened in Debian's Chromium: from the request to the 300 rows drawn
  (the view's own clock), and the drawing alone. Measured when the user
  clicks "Timeline" (the server builds its answer from the files), then
  over --rounds reloads, alternately with the answer kept by the server and
  with the base file touched (so it is built again).

Medians; nothing here is asserted (tests assert behaviour, this prints numbers).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

from beholder_plugin import DEFAULT_CONFIG, Beholder, write_config  # noqa: E402

PARTS = ("cpu", "gpu", "read", "grow", "browser")
POINTS = 320  # what the Timeline view asks per section (static/timeline.js)


def main() -> int:
    """Run the chosen parts and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per condition per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--gpu-part-on-cpu", action="store_true",
                        help="the gpu part's code on the CPU, tiny: a smoke test, no figures")
    args = parser.parse_args()
    for part in args.parts.split(","):
        globals()[f"part_{part}"](args)
    return 0


def set_config(run: str, **changes) -> None:
    """Write the run's config.json: the defaults with these changes."""
    write_config(run, {**DEFAULT_CONFIG, **changes})


def timeline_on(beholder: Beholder, on: bool) -> None:
    """Turn a Beholder's timeline and checks on or off (the A/B switch of this benchmark)."""
    beholder.timeline.enabled = on
    if not on:
        beholder.timeline.stop_checks()


def part_cpu(args) -> None:
    """CPU per frame, timeline on vs off, on NumPy models."""
    with open(os.path.join(HERE, "model_shapes.json")) as f:
        shapes = json.load(f)
    rng = np.random.default_rng(0)
    for model in ("mnist_convnet", "mobilenetv2", "resnet50"):
        arrays = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes[model]}
        values = sum(a.size for a in arrays.values())
        run = tempfile.mkdtemp(prefix="timeline-bench-")
        atexit.register(shutil.rmtree, run, True)  # (removed when the benchmark exits)
        set_config(run, values="arrays", FPS=30)
        beholder = Beholder(run, background=False)
        per = {True: [], False: []}
        for r in range(args.rounds):
            for on in ((False, True) if r % 2 == 0 else (True, False)):  # the order alternates (drift)
                timeline_on(beholder, on)
                start, cpu0, frames = time.perf_counter(), time.process_time(), 0
                while time.perf_counter() - start < args.seconds:
                    beholder.frame_due_now()
                    beholder.update(arrays=arrays)
                    frames += 1
                per[on].append((time.process_time() - cpu0) / frames)
        beholder.close()
        off, on = statistics.median(per[False]), statistics.median(per[True])
        ratios = sorted(b / a for a, b in zip(per[False], per[True]))
        spread = f"{ratios[len(ratios) // 4]:.3f}-{ratios[(3 * len(ratios)) // 4]:.3f}"
        compacting = compaction_per_frame(len(arrays))
        print(f"cpu {model:12s} ({len(arrays)} sections, {values / 1e6:.1f} M values): CPU per frame "
              f"off {off * 1e3:.2f} ms, on {on * 1e3:.2f} ms; per-round ratio median "
              f"{statistics.median(ratios):.3f} (quartiles {spread}); with compacting base.bht in a "
              f"long run ({compacting * 1e3:.2f} ms a frame): "
              f"{statistics.median(ratios) + compacting / off:.3f} (target <= 1.05)")


def compaction_per_frame(sections: int) -> float:
    """CPU seconds a frame of this many sections pays, amortized, for thinning the parts into a full base.bht.

    A long run's base holds MAX_PER_SECTION records a section; every
    parts_budget(sections) bytes of parts, the writer reads both, thins them
    and writes base.bht again (on the worker). Median of 3 compactions, divided by the
    frames that fill the parts budget.
    """
    from beholder_plugin.protocol import timeline as tl
    from beholder_plugin.protocol.files import files_for
    from beholder_plugin.trainer.timeline_writer import TimelineWriter

    run = tempfile.mkdtemp(prefix="timeline-bench-compact-")
    atexit.register(shutil.rmtree, run, True)  # (removed when the benchmark exits)
    writer = TimelineWriter(run, files_for(run), parts_budget=1 << 62)
    names = [f"section{i}" for i in range(sections)]
    frames = tl.parts_budget(sections) // (sections * tl.RECORD.itemsize)
    step, took = 0, []

    def append(count: int) -> None:  # count frames, appended 500 at a time (as many chunks)
        nonlocal step
        for start in range(0, count, 500):
            n = min(500, count - start)
            records = tl.make_records(n * sections)
            records["section"] = np.tile(np.arange(sections), n)
            records["step"] = np.repeat(np.arange(step + 1, step + n + 1), sections)
            records["time"] = 1.7e9 + records["step"] / 10
            writer.append(names, records)
            step += n

    append(tl.MAX_PER_SECTION)
    writer.compact()  # base.bht at its cap
    for _ in range(3):
        append(frames)
        cpu0 = time.process_time()
        writer.compact()
        took.append(time.process_time() - cpu0)
    return statistics.median(took) / frames


def bottleneck(nn, inp: int, width: int, stride: int):
    """A ResNet bottleneck block (1x1, 3x3, 1x1 convolutions, batch norms, a projection when needed)."""

    class Block(nn.Module):
        """Body plus shortcut, then ReLU."""

        def __init__(self) -> None:
            super().__init__()
            out = width * 4
            self.body = nn.Sequential(
                nn.Conv2d(inp, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out))
            self.skip = (nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                         if stride != 1 or inp != out else nn.Identity())

        def forward(self, x):
            """The block's output."""
            return (self.body(x) + self.skip(x)).relu()

    return Block()


def resnet50(torch):
    """A ResNet-50 (25.6 M parameters) built from torch.nn alone."""
    nn = torch.nn
    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
              nn.MaxPool2d(3, 2, 1)]
    inp = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for k in range(blocks):
            layers.append(bottleneck(nn, inp, width, stride if k == 0 else 1))
            inp = width * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inp, 1000)]
    return nn.Sequential(*layers)


def part_gpu(args) -> None:
    """ResNet-50 steps: none / timeline off / on, and the per-step check's own cost."""
    try:
        import torch
    except ImportError:
        print("gpu: PyTorch is not installed: skipped")
        return
    cuda = torch.cuda.is_available()
    if not cuda and not args.gpu_part_on_cpu:
        print("gpu: no CUDA GPU here: skipped (run it on a machine with one)")
        return
    device, batch, side = ("cuda", 64, 224) if cuda else ("cpu", 2, 64)
    if not cuda:  # the device path on CPU tensors, as the tests run it
        from beholder_plugin.trainer.sources import torch_batch

        torch_batch.BATCH_CPU_TENSORS = True
    model = resnet50(torch).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, side, side, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        """One training step, with the loss read on the host as most loops do."""
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()

    run = tempfile.mkdtemp(prefix="timeline-bench-gpu-")
    atexit.register(shutil.rmtree, run, True)  # (removed when the benchmark exits)
    set_config(run, values="trainable_variables", FPS=10)
    beholder = Beholder(run)
    handle = beholder.watch(model, activations=False, gradients=False)
    for _ in range(20 if cuda else 3):  # warm up, and the first frames build the per-step checks
        step()
        beholder.update()
    beholder.flush()
    times = {"none": [], "off": [], "on": []}
    for _ in range(args.rounds):
        for condition in ("none", "off", "on"):
            timeline_on(beholder, condition == "on")
            if condition == "on":  # a frame builds the checks again
                beholder.frame_due_now()
                step()
                beholder.update()
                beholder.flush()
            start = time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                t0 = time.perf_counter()
                step()
                if condition != "none":
                    beholder.update()
                times[condition].append(time.perf_counter() - t0)
    beholder.flush()
    medians = {k: statistics.median(v) for k, v in times.items()}
    name = torch.cuda.get_device_name() if cuda else "CPU (smoke run)"
    print(f"gpu {name}: ResNet-50 step (batch {batch}, bf16), median: "
          + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in medians.items())
          + f"; on/off {medians['on'] / medians['off']:.4f}, on/none {medians['on'] / medians['none']:.4f}")
    timeline = beholder.timeline
    checks = timeline.per_step
    print(f"gpu per-step check: {sum(len(c.tensors) for c in checks)} tensors on "
          f"{len(checks)} device(s), hot={timeline.hot}")
    issue, gpu = [], []
    for k in range(200 if cuda else 5):
        if not cuda:
            t0 = time.perf_counter()
            timeline.on_step(10**6 + k)
            issue.append(time.perf_counter() - t0)
            gpu.append(issue[-1])
            continue
        torch.cuda.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        t0 = time.perf_counter()
        timeline.on_step(10**6 + k)
        issue.append(time.perf_counter() - t0)
        end.record()
        end.synchronize()
        gpu.append(begin.elapsed_time(end) / 1e3)
    none = medians["none"]
    print(f"gpu per-step check alone: host issue {statistics.median(issue) * 1e6:.0f} us "
          f"({statistics.median(issue) / none * 100:.3f} % of the step), GPU time "
          f"{statistics.median(gpu) * 1e6:.0f} us ({statistics.median(gpu) / none * 100:.3f} % of the step); "
          "target <= 1 %")
    handle.remove()
    beholder.close()


def week_run(run: str) -> str:
    """Write a thinned 7-day timeline of 300 sections into run (MAX_PER_SECTION records each)."""
    from beholder_plugin.protocol import timeline as tl
    from beholder_plugin.protocol.files import files_for

    names = [f"block{i // 4}/layer{i % 4}/kernel" for i in range(300)]
    n = tl.MAX_PER_SECTION
    week = 7 * 24 * 3600
    rng = np.random.default_rng(0)
    by_section = {}
    for name in names:
        records = tl.make_records(n)
        records["step"] = np.sort(rng.choice(week * 10, n, replace=False))
        records["time"] = 1.7e9 + records["step"] / 10
        for column in ("min", "max", "mean", "std", "norm"):
            records[column] = rng.standard_normal(n)
        by_section[name] = records
    files = files_for(run)
    directory = tl.timeline_dir(run)
    os.makedirs(directory)
    files.write_atomic(os.path.join(directory, tl.BASE_FILE), tl.base_bytes(by_section, -1))
    return os.path.join(directory, tl.BASE_FILE)


def part_read(args) -> None:
    """A thinned 7-day, 300-section timeline: its bytes, and the /timeline answer's time and size."""
    from beholder_plugin.protocol import timeline as tl
    from beholder_plugin.server.timeline import timeline_answer

    run = tempfile.mkdtemp(prefix="timeline-bench-read-")
    atexit.register(shutil.rmtree, run, True)  # (removed when the benchmark exits)
    size = os.path.getsize(week_run(run))
    n = tl.MAX_PER_SECTION
    from beholder_plugin.server import timeline as server_timeline

    # a live run: the last 100 frames of every section in a part beside base.bht
    names = [f"block{i // 4}/layer{i % 4}/kernel" for i in range(300)]
    recent = tl.make_records(300 * 100)
    recent["section"] = np.tile(np.arange(300), 100)
    recent["step"] = 7 * 24 * 3600 * 10 + np.repeat(np.arange(1, 101), 300)
    recent["time"] = 1.7e9 + recent["step"] / 10
    part = os.path.join(tl.timeline_dir(run), tl.part_name(0))
    with open(part, "wb") as f:
        f.write(tl.names_chunk({name: i for i, name in enumerate(names)}) + tl.records_chunk(recent))
    took, live = [], []
    for _ in range(args.rounds):
        server_timeline.forget()  # built from the files each time
        t0 = time.perf_counter()
        answer = timeline_answer("run", run, POINTS)
        body = json.dumps(answer)
        took.append(time.perf_counter() - t0)
        os.utime(part)  # the next refresh of a live run: a part changed, base.bht did not
        t0 = time.perf_counter()
        json.dumps(timeline_answer("run", run, POINTS))
        live.append(time.perf_counter() - t0)
    print(f"read: 300 sections x {n} records = {size / 2**20:.1f} MB on disk; /timeline answer "
          f"(points={POINTS}) built and encoded in {statistics.median(took) * 1e3:.0f} ms, "
          f"{len(body) / 2**20:.1f} MB of JSON; a live run's refresh (a part changed, base.bht kept "
          f"parsed) {statistics.median(live) * 1e3:.0f} ms")


def part_grow(args) -> None:
    """A live run's growing part read again after each frame: kept parse against a whole parse."""
    from beholder_plugin.protocol import timeline as tl
    from beholder_plugin.protocol.files import files_for
    from beholder_plugin.trainer.timeline import TimelineWriter

    run = tempfile.mkdtemp(prefix="timeline-bench-grow-")
    atexit.register(shutil.rmtree, run, True)
    names = ["a", "b", "c", "d"]
    writer = TimelineWriter(run, files_for(run), parts_budget=1 << 40, cap=1 << 30)

    def frame(step: int) -> np.ndarray:
        records = tl.make_records(len(names))
        records["section"], records["step"], records["time"] = np.arange(len(names)), step, 1.7e9 + step
        return records

    for step in range(1, 100_001):
        writer.append(names, frame(step))
    kept: dict = {}
    tl.read_records(run, base_cache=kept)
    whole, new = [], []
    for round_ in range(max(args.rounds, 5)):
        writer.append(names, frame(100_001 + round_))
        t0 = time.perf_counter()
        tl.read_records(run)
        whole.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        tl.read_records(run, base_cache=kept)
        new.append(time.perf_counter() - t0)
    writer.close()
    slow, fast = statistics.median(whole), statistics.median(new)
    print(f"grow: a part of 100,000 frames x 4 sections, one frame more per read: whole parse "
          f"{slow * 1e3:.0f} ms, new chunks only (the server's) {fast * 1e3:.0f} ms, ratio {slow / fast:.1f}")


def part_browser(args) -> None:
    """The Timeline view of a 7-day, 300-section run in Chromium: load and draw, then draw alone."""
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
    from server_support import CHROMIUM, TensorBoard, beholder_frame, chromium_page, wait_for

    if not os.path.exists(CHROMIUM):
        print("browser: no Debian chromium here: skipped")
        return
    logdir = tempfile.mkdtemp(prefix="timeline-bench-browser-")
    atexit.register(shutil.rmtree, logdir, True)  # (removed when the benchmark exits)
    run = os.path.join(logdir, "week")
    os.makedirs(os.path.join(run, "plugins", "beholder"))
    set_config(run, values="arrays", FPS=10)
    base = week_run(run)
    tb = TensorBoard(logdir, os.path.join(logdir, "tensorboard.log"))
    cold, warm, draws = [], [], []
    try:
        tb.start()
        with chromium_page() as page:
            page.goto(tb.url + "/#beholder")
            frame = beholder_frame(page)
            wait_for(lambda: frame.evaluate("window.beholder.run") == "week", message="the run")

            def drawn(action: str) -> float:
                frame.evaluate("() => { window.beholderDebug.timeline().ms = null; }")
                frame.evaluate(action)
                ms = wait_for(lambda: frame.evaluate("window.beholderDebug.timeline().ms"), timeout=60,
                              message="the timeline drawn")
                debug = frame.evaluate("window.beholderDebug.timeline()")
                assert debug["drawn"] == 300, debug["drawn"]
                draws.append(debug["drawMs"])
                print(f"  {action[:40]:40s} {ms:5.0f} ms = fetch and parse {debug['fetchMs']:.0f} + decode "
                      f"{debug['decodeMs']:.0f} + draw {debug['drawMs']:.0f}")
                return ms

            # the user's click: the server builds the answer from the files
            cold.append(drawn("() => document.querySelector('#view-timeline').click()"))
            reload = "() => window.dispatchEvent(new Event('beholder-timeline-reload'))"
            for _ in range(args.rounds):
                warm.append(drawn(reload))  # the server keeps the answer it built
                os.utime(base)  # a changed file: built from the files again
                cold.append(drawn(reload))
    finally:
        tb.stop()
    print(f"browser: 7-day timeline, 300 sections: request to drawn {statistics.median(cold):.0f} ms "
          f"(median of {len(cold)}, the first {cold[0]:.0f} ms) when the server builds its answer, "
          f"{statistics.median(warm):.0f} ms when it has it built (the view refreshes every 5 s), "
          f"drawing alone {statistics.median(draws):.0f} ms; target <= 1000 ms")


if __name__ == "__main__":
    sys.exit(main())
