"""How fast the hover read-out answers for a ResNet-50-shaped frame, measured in Chromium.

    .venv/bin/python benchmarks/hover_bench.py [--samples 300] [--live]

Writes one frame of ResNet-50's 214 trainable variables (benchmarks/model_shapes.json)
with a real Beholder, serves it with a real TensorBoard, opens the Beholder tab in
headless Chromium and, from the dashboard's page, asks the plugin's `value` route
for random pixels one after another, as the inspector does while the mouse moves.
Each reply is timed in the page (fetch to parsed JSON, performance.now()). With
--live a trainer keeps writing frames at 10 per second meanwhile, so look-ups
also meet new frames (a new header to read). Prints the median and p95.
Targets (issue "Inspect"): median <= 20 ms, p95 <= 50 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from server_support import PYTHON, TensorBoard, beholder_frame, chromium_page, set_config  # noqa: E402
from update_bench import load_models  # noqa: E402

WRITER = r"""
import os, sys, time
sys.path.insert(0, sys.argv[3])
import numpy as np
from update_bench import load_models, make_arrays
from beholder_plugin import Beholder
run, live = sys.argv[1], sys.argv[2] == "1"
arrays = [make_arrays(load_models()["resnet50"], seed) for seed in (0, 1)]
beholder = Beholder(run)
i = 0
while True:
    beholder.frame_due_now()
    beholder.update(arrays=arrays[i % 2])
    beholder.flush()
    i += 1
    if not live or os.path.exists(run + "/stop"):
        break
    time.sleep(0.1)
beholder.close()
"""

MEASURE = """async ([samples, width, height]) => {
  const times = [];
  let found = 0;
  for (let i = 0; i < samples; i++) {
    const x = Math.floor(Math.random() * width), y = Math.floor(Math.random() * height);
    const url = `/data/plugin/beholder/value?run=resnet&x=${x}&y=${y}`;
    const t0 = performance.now();
    const reply = await fetch(url);
    const body = await reply.json();
    times.push(performance.now() - t0);
    if (reply.status === 200 && typeof body.value === "number") found++;
  }
  return {times, found};
}"""


def main() -> int:
    """Write the frame, serve it, time the look-ups in Chromium, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--live", action="store_true", help="a trainer writes 10 frames/s meanwhile")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        logdir = Path(tmp) / "logs"
        run = logdir / "resnet"
        set_config(run, values="arrays", mode="current", FPS=30)
        cmd = [PYTHON, "-c", WRITER, str(run), "1" if args.live else "0", str(HERE)]
        writer = subprocess.Popen(cmd) if args.live else None
        if writer is None:
            subprocess.run(cmd, check=True)
        tb = TensorBoard(logdir, Path(tmp) / "tensorboard.log").start()
        try:
            with chromium_page() as page:
                page.goto(tb.url + "/#beholder")
                frame = beholder_frame(page)
                frame.wait_for_function("window.beholder && window.beholder.height > 0", timeout=60000)
                size = frame.evaluate("[window.beholder.width, window.beholder.height]")
                frame.evaluate(MEASURE, [20, *size])  # warm-up: the header is read and cached
                got = frame.evaluate(MEASURE, [args.samples, *size])
        finally:
            tb.stop()
            if writer is not None:
                (run / "stop").touch()
                writer.wait(60)
    times = sorted(got["times"])
    p95 = times[int(0.95 * (len(times) - 1))]
    sections = len(load_models()["resnet50"])
    print(f"ResNet-50 frame ({sections} sections, {size[0]} x {size[1]} px), {len(times)} look-ups"
          f"{' while a trainer writes 10 frames/s' if args.live else ''}: "
          f"median {statistics.median(times):.1f} ms, p95 {p95:.1f} ms, "
          f"{got['found']} on a value (the rest on separators)")
    print(json.dumps({"median_ms": statistics.median(times), "p95_ms": p95}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
