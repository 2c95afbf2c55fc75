"""How fast frames reach the screen: a trainer, a real TensorBoard and headless Chromium.

    .venv/bin/python benchmarks/view_bench.py [--seconds 10] [--width 1000 --height 768]

Prints, for a demo-sized frame at FPS 30, the frames per second the dashboard
received and the delay from the start of Beholder.update() to the frame being
drawn (requestAnimationFrame after drawImage); then the CPU used by the
TensorBoard process tree while a viewer stays open with FPS 0, and with no
trainer at all. Targets: >= 25 frames/s, <= 150 ms delay, < 2 % of a core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from server_support import (  # noqa: E402 - after the path tweak
    PYTHON,
    TensorBoard,
    beholder_frame,
    chromium_page,
    set_config,
    wait_for,
)

TRAINER = r'''
import json, sys, time
import numpy as np
from beholder_plugin import Beholder

run, log, height, width = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
content = sys.argv[5]
rng = np.random.default_rng(0)
if content == "noise":  # every pixel different: the worst case for PNG
    base = rng.normal(size=(height, width)).astype(np.float32)
else:  # 8 x 8 px blocks, like sections resized with nearest neighbour
    small = rng.normal(size=(-(-height // 8), -(-width // 8))).astype(np.float32)
    base = np.kron(small, np.ones((8, 8), np.float32))[:height, :width]
beholder = Beholder(run)
stop = run + "/stop"
import os
with open(log, "w") as out:
    step = 0
    while not os.path.exists(stop):
        step += 1
        image = np.roll(base, 8 * step, axis=1)
        t0 = time.time()
        next_id = beholder.frames_written + 1  # update() hands a frame over only when the worker is idle
        if beholder.update(frame=image):
            out.write(json.dumps({"id": next_id, "t0": t0}) + "\n")
            out.flush()
        time.sleep(0.002)
'''


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ppid = int(fields[1])
        children.setdefault(ppid, []).append(int(entry))
        stats[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, 0.0)
        todo.extend(children.get(p, []))
    return total


def measure_cpu(pid: int, seconds: float) -> float:
    """Percent of one core used by the process tree over `seconds`."""
    start, t0 = tree_cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (tree_cpu_seconds(pid) - start) / (time.monotonic() - t0)


def main() -> int:
    """Run the three measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--content", choices=("blocks", "noise"), default="blocks",
                        help="8 x 8 px blocks like a rendered frame (default), or per-pixel noise")
    parser.add_argument("--load-fast", default=None, help="pass --load_fast=VALUE to TensorBoard")
    args = parser.parse_args()

    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        logdir = Path(tmp) / "logs"
        run = logdir / "bench"
        set_config(run, values="frames", FPS=30)
        script = Path(tmp) / "trainer.py"
        script.write_text(TRAINER)
        log = Path(tmp) / "frames.jsonl"
        trainer = subprocess.Popen([PYTHON, str(script), str(run), str(log),
                                    str(args.height), str(args.width), args.content])
        extra = (f"--load_fast={args.load_fast}",) if args.load_fast else ()
        tb = TensorBoard(logdir, Path(tmp) / "tensorboard.log", extra_args=extra).start()
        try:
            with chromium_page(viewport=(1500, 1000)) as page:
                page.goto(tb.url + "/#beholder")
                frame = beholder_frame(page)
                wait_for(lambda: frame.evaluate("window.beholder.framesReceived") > 10, timeout=60)
                time.sleep(2.0)  # let it settle
                before = frame.evaluate("window.beholder.framesReceived")
                t0 = time.monotonic()
                wall0 = time.time()
                time.sleep(args.seconds)
                received = frame.evaluate("window.beholder.framesReceived") - before
                elapsed = time.monotonic() - t0
                drawn = frame.evaluate("window.beholder.drawn")
                size = frame.evaluate("[window.beholder.width, window.beholder.height]")
                written = {}
                for line in log.read_text().splitlines():
                    rec = json.loads(line)
                    written[rec["id"]] = rec["t0"]
                delays = sorted(
                    d["time"] / 1000.0 - written[d["frameId"]]
                    for d in drawn[-int(received):]
                    if d["frameId"] in written
                )
                wall1 = wall0 + elapsed
                written_in_window = sum(1 for t in written.values() if wall0 <= t < wall1)
                print(f"frame size: {size[0]} x {size[1]} ({args.content}, palette PNG), "
                      "config FPS 30")
                print(f"frames/s written by the trainer: {written_in_window / elapsed:.1f}")
                print(f"frames/s received: {received / elapsed:.1f} over {elapsed:.1f} s")
                if delays:
                    p95 = delays[int(0.95 * (len(delays) - 1))]
                    print(
                        "delay update() -> on screen: "
                        f"median {1000 * statistics.median(delays):.0f} ms, "
                        f"p95 {1000 * p95:.0f} ms, max {1000 * delays[-1]:.0f} ms "
                        f"({len(delays)} frames)"
                    )

                set_config(run, values="frames", FPS=0)
                time.sleep(2.0)
                cpu = measure_cpu(tb.proc.pid, args.seconds)
                print(f"TensorBoard CPU with FPS 0, viewer open: {cpu:.2f} % of a core "
                      f"over {args.seconds:.0f} s")

                (run / "stop").touch()
                trainer.wait(15)
                time.sleep(2.0)
                cpu = measure_cpu(tb.proc.pid, args.seconds)
                print(f"TensorBoard CPU with no trainer, viewer open: {cpu:.2f} % of a core "
                      f"over {args.seconds:.0f} s")
        finally:
            if trainer.poll() is None:
                trainer.kill()
            tb.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
