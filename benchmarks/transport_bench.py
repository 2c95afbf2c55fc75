"""PNG frames or frame data: bytes on the wire and TensorBoard's CPU for a ResNet-50-shaped run.

    .venv/bin/python benchmarks/transport_bench.py [--model resnet50] [--fps 10] [--seconds 10] [--viewers 1]

A trainer writes frames of the model's weight shapes (benchmarks/model_shapes.json,
random values) at the given FPS; a real TensorBoard serves them; `viewers`
Python threads follow the run the way the dashboard does, first with `live`
(PNG encoded on the server), then with `live-data` (palette indices, drawn by
the browser), then with `live-data&rows=0-1999` (only the sections of the
first 2,000 rows, a viewport). For each it prints the frames received per
second, the mean bytes per frame on the wire, and the CPU used by the
TensorBoard process tree in percent of one core. No browser: the numbers are
the server's and the wire's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_support import BASE, PYTHON, TensorBoard, set_config, wait_for  # noqa: E402 - after sys.path
from view_bench import tree_cpu_seconds  # noqa: E402

TRAINER = r'''
import json, os, sys, time
import numpy as np
from beholder_plugin import Beholder

run, shapes_file, model = sys.argv[1], sys.argv[2], sys.argv[3]
shapes = json.load(open(shapes_file))[model]
rng = np.random.default_rng(0)
# Two sets of weights, alternated, so that consecutive frames differ.
sets = [{name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes} for _ in range(2)]
beholder = Beholder(run)
step = 0
while not os.path.exists(os.path.join(run, "stop")):
    beholder.update(arrays=sets[step % 2])
    step += 1
    time.sleep(0.005)
beholder.close()
'''


def follow(url: str, stop: threading.Event, sizes: list[int]) -> None:
    """Long-poll a live route until stop is set, recording the size of every frame received."""
    etag = ""
    while not stop.is_set():
        try:
            query = f"{url}&after={urllib.parse.quote(etag)}&timeout=2"
            with urllib.request.urlopen(query, timeout=10) as resp:
                if resp.status == 204:
                    continue
                body = resp.read()
                etag = resp.headers["ETag"]
                sizes.append(len(body))
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)


def measure(tb: TensorBoard, route: str, viewers: int, seconds: float) -> dict:
    """Frames/s per viewer, mean bytes per frame and TensorBoard CPU (% of a core) for one route."""
    url = f"{tb.url}{BASE}/{route}"
    stop = threading.Event()
    sizes: list[list[int]] = [[] for _ in range(viewers)]
    threads = [threading.Thread(target=follow, args=(url, stop, s), daemon=True) for s in sizes]
    for t in threads:
        t.start()
    wait_for(lambda: all(len(s) >= 3 for s in sizes), timeout=120, message="frames for every viewer")
    for s in sizes:
        s.clear()
    cpu0, t0 = tree_cpu_seconds(tb.proc.pid), time.monotonic()
    time.sleep(seconds)
    cpu = 100.0 * (tree_cpu_seconds(tb.proc.pid) - cpu0) / (time.monotonic() - t0)
    counts = [len(s) for s in sizes]
    every = [n for s in sizes for n in s]
    stop.set()
    for t in threads:
        t.join(15)
    return {
        "route": route,
        "fps": statistics.mean(counts) / seconds,
        "bytes": statistics.mean(every) if every else 0.0,
        "cpu": cpu,
    }


def main() -> int:
    """Start the trainer and TensorBoard, measure both transports, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--viewers", type=int, default=1)
    args = parser.parse_args()
    shapes = Path(__file__).resolve().parent / "model_shapes.json"
    with tempfile.TemporaryDirectory() as tmp:
        logdir = Path(tmp) / "logs"
        run = logdir / "bench"
        set_config(run, values="arrays", mode="current", FPS=args.fps, history_mb=0)
        script = Path(tmp) / "trainer.py"
        script.write_text(TRAINER)
        trainer = subprocess.Popen([PYTHON, str(script), str(run), str(shapes), args.model])
        tb = TensorBoard(logdir, Path(tmp) / "tensorboard.log").start()
        try:
            wait_for(lambda: (run / "plugins" / "beholder" / "frame.bin").exists(), timeout=120,
                     message="the first frame")
            with urllib.request.urlopen(f"{tb.url}{BASE}/section-info?run=bench", timeout=30) as resp:
                sections = json.load(resp)["sections"]
            height = sections[-1]["top"] + sections[-1]["height"]
            print(f"{args.model}: {len(sections)} sections, frame {height} rows; trainer FPS {args.fps}, "
                  f"{args.viewers} viewer(s), {args.seconds:.0f} s each")
            print(f"{'route':<32} {'frames/s':>9} {'bytes/frame':>12} {'TensorBoard CPU':>16}")
            for route in ("live?run=bench", "live-data?run=bench", "live-data?run=bench&rows=0-1999"):
                found = measure(tb, route, args.viewers, args.seconds)
                print(f"{found['route']:<32} {found['fps']:>9.1f} {found['bytes']:>12,.0f} "
                      f"{found['cpu']:>14.1f} %")
        finally:
            (run / "stop").touch()
            try:
                trainer.wait(30)
            except subprocess.TimeoutExpired:
                trainer.kill()
            tb.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
