"""What a viewer gets: a trainer, a real TensorBoard and headless Chromium, for three model shapes.

    .venv/bin/python benchmarks/transport_bench.py [--models resnet50,...] [--fps 10] [--seconds 20]
        [--viewers 20] [--viewport 1000]

A trainer subprocess writes frames of a model's weight shapes
(benchmarks/model_shapes.json, random values, two sets alternated) at the
given FPS and logs when each update() started. A real TensorBoard serves them;
one Chromium tab with a viewport `--viewport` px tall has the dashboard open.
For each model it prints:

- frames written per second, and frames drawn per second in the tab;
- the delay from the start of update() to the frame on screen (the next
  animation frame after drawing), median and p95;
- the CPU of the TensorBoard process tree over the window, in % of one core;
- the mean bytes per frame on the wire (response bodies of the live route);

then the same with `--viewers` viewers: the tab plus Python threads that
long-poll exactly the requests the tab sends (the load test's method), with
the share of written frames the worst viewer got. Last, the MNIST shapes at
FPS 30. Targets (issue "Send what is seen", ResNet-50 at FPS 10): drawn >= 95 %
of written, TensorBoard <= 10 % of a core, <= 400 KB per frame, delay median
<= 100 ms and p95 <= 250 ms; with 20 viewers TensorBoard <= 60 % and every
viewer >= 80 %; MNIST at FPS 30 >= 25 frames/s drawn, median delay <= 100 ms.
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

from server_support import (  # noqa: E402 - after sys.path
    PYTHON,
    TensorBoard,
    beholder_frame,
    chromium_page,
    set_config,
    wait_for,
)
from view_bench import tree_cpu_seconds  # noqa: E402

TRAINER = r'''
import json, os, sys, time
import numpy as np
from beholder_plugin import Beholder

run, shapes_file, model, log = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
shapes = json.load(open(shapes_file))[model]
rng = np.random.default_rng(0)
sets = [{name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes} for _ in range(2)]
beholder = Beholder(run)
step = 0
with open(log, "w") as out:
    while not os.path.exists(os.path.join(run, "stop")):
        t0 = time.time()
        next_id = beholder.frames_written + 1  # a frame is handed over only when the worker is idle
        if beholder.update(arrays=sets[step % 2]):
            out.write(json.dumps({"id": next_id, "t0": t0}) + "\n")
            out.flush()
        step += 1
        time.sleep(0.002)
beholder.close()
'''

# The tab's finished live requests: [url, body bytes] (Resource Timing; same origin, so sizes are given).
LIVE_ENTRIES = """performance.getEntriesByType("resource")
    .filter((e) => /\\/live(-data)?\\?/.test(e.name)).map((e) => [e.name, e.encodedBodySize])"""

TAKE_DRAWN = "window.beholder.drawn.splice(0)"  # the draws so far (frame id, time), emptying the list

MODELS = {"mnist": "mnist_convnet", "mobilenetv2": "mobilenetv2", "resnet50": "resnet50"}


class Follower:
    """A Python viewer: long-polls one live URL, keeping the frame ids it got."""

    def __init__(self, url: str):
        self.url = url
        self.frames: list[tuple[float, int]] = []  # (wall time, frame id)
        self.errors = 0

    def run(self, stop: threading.Event) -> None:
        """Follow until stop is set, passing the ETag back as the dashboard does."""
        etag = ""
        while not stop.is_set():
            parts = urllib.parse.urlsplit(self.url)
            query = dict(urllib.parse.parse_qsl(parts.query))
            query.update(after=etag, timeout="2")
            url = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
            try:
                with urllib.request.urlopen(url, timeout=15) as resp:
                    if resp.status == 204:
                        continue
                    resp.read()
                    etag = resp.headers["ETag"]
                    self.frames.append((time.time(), int(resp.headers["X-Beholder-Frame-Id"])))
            except (urllib.error.URLError, OSError):
                self.errors += 1
                time.sleep(0.1)


def written_frames(log: Path) -> dict[int, float]:
    """Frame id -> wall time its update() started, from the trainer's log."""
    out = {}
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # the line being written
            continue
        out[rec["id"]] = rec["t0"]
    return out


def percentile(values: list[float], q: float) -> float:
    """The q-quantile of values, nearest rank."""
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def measure(model: str, fps: int, seconds: float, viewers: int, viewport: int, tmp: Path) -> list[dict]:
    """One trainer, TensorBoard and tab for a model: the one-viewer and many-viewer rows."""
    shapes = Path(__file__).resolve().parent / "model_shapes.json"
    tmp = tmp / f"{model}-{fps}"
    tmp.mkdir()
    logdir = tmp / "logs"
    run = logdir / "bench"
    set_config(run, values="arrays", mode="current", FPS=fps)
    script = tmp / "trainer.py"
    script.write_text(TRAINER)
    log = tmp / "frames.jsonl"
    trainer = subprocess.Popen([PYTHON, str(script), str(run), str(shapes), MODELS[model], str(log)])
    tb = TensorBoard(logdir, tmp / "tensorboard.log").start()
    rows = []
    try:
        with chromium_page(viewport=(1400, viewport)) as page:
            page.goto(tb.url + "/#beholder")
            frame = beholder_frame(page)
            wait_for(lambda: frame.evaluate("window.beholder.framesReceived") > 5, timeout=120,
                     message="frames in the tab")
            time.sleep(3.0)  # let it settle
            frame.evaluate("performance.setResourceTimingBufferSize(100000)")
            rows.append(window(frame, tb, log, seconds, [], f"{model} @ {fps} FPS, 1 viewer"))
            if viewers > 1:
                url = frame.evaluate(LIVE_ENTRIES)[-1][0]  # the tab's last live request, as it was sent
                followers = [Follower(url) for _ in range(viewers - 1)]
                stop = threading.Event()
                threads = [threading.Thread(target=f.run, args=(stop,), daemon=True) for f in followers]
                for t in threads:
                    t.start()
                time.sleep(3.0)
                rows.append(window(frame, tb, log, seconds, followers,
                                   f"{model} @ {fps} FPS, {viewers} viewers"))
                stop.set()
                for t in threads:
                    t.join(20)
    finally:
        (run / "stop").touch()
        try:
            trainer.wait(30)
        except subprocess.TimeoutExpired:
            trainer.kill()
        tb.stop()
    return rows


def window(frame, tb: TensorBoard, log: Path, seconds: float,
           followers: list[Follower], label: str) -> dict:
    """Measure one window of `seconds`: what was written, drawn and sent, and TensorBoard's CPU."""
    frame.evaluate("window.beholder.drawn.length = 0; performance.clearResourceTimings()")
    for f in followers:
        f.frames.clear()
    wall0, cpu0, t0 = time.time(), tree_cpu_seconds(tb.proc.pid), time.monotonic()
    drawn = []  # the tab keeps only its last 500 draws: take them every second
    while time.monotonic() < t0 + seconds:
        time.sleep(min(1.0, max(0.0, t0 + seconds - time.monotonic())))
        drawn += frame.evaluate(TAKE_DRAWN)
    cpu = 100.0 * (tree_cpu_seconds(tb.proc.pid) - cpu0) / (time.monotonic() - t0)
    wall1 = time.time()
    time.sleep(1.0)  # frames written near the end get their chance to arrive
    drawn += frame.evaluate(TAKE_DRAWN)
    written = written_frames(log)
    in_window = {i: t for i, t in written.items() if wall0 <= t < wall1}
    drawn_ids = {d["frameId"] for d in drawn if d["frameId"] in in_window}
    delays = [d["time"] / 1000.0 - in_window[d["frameId"]] for d in drawn if d["frameId"] in in_window]
    sizes = [n for _, n in frame.evaluate(LIVE_ENTRIES) if n > 0]  # 204s have no body
    shares = [len(drawn_ids) / max(1, len(in_window))]
    shares += [len({i for _, i in f.frames if i in in_window}) / max(1, len(in_window)) for f in followers]
    return {
        "label": label,
        "written": len(in_window) / seconds,
        "drawn": len(drawn_ids) / seconds,
        "share": len(drawn_ids) / max(1, len(in_window)),
        "worst": min(shares),
        "median": 1000 * statistics.median(delays) if delays else float("nan"),
        "p95": 1000 * percentile(delays, 0.95) if delays else float("nan"),
        "cpu": cpu,
        "bytes": statistics.mean(sizes) if sizes else 0.0,
        "errors": sum(f.errors for f in followers),
    }


def main() -> int:
    """Run every model's measurement and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mnist,mobilenetv2,resnet50")
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--viewers", type=int, default=20)
    parser.add_argument("--viewport", type=int, default=1000, help="the tab's height in px")
    parser.add_argument("--no-mnist-30", action="store_true", help="skip the MNIST run at FPS 30")
    args = parser.parse_args()
    plan = [(m, args.fps, args.viewers) for m in args.models.split(",")]
    if not args.no_mnist_30:
        plan.append(("mnist", 30, 1))
    header = (f"{'':<34} {'written/s':>9} {'drawn/s':>8} {'drawn':>6} {'worst':>6} {'median':>7} "
              f"{'p95':>6} {'TB CPU':>7} {'KB/frame':>9}")
    print(f"viewport {args.viewport} px tall, {args.seconds:.0f} s windows")
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for model, fps, viewers in plan:
            for row in measure(model, fps, args.seconds, viewers, args.viewport, Path(tmp)):
                errors = f"  ({row['errors']} failed requests)" if row["errors"] else ""
                print(f"{row['label']:<34} {row['written']:>9.1f} {row['drawn']:>8.1f} "
                      f"{100 * row['share']:>5.0f}% {100 * row['worst']:>5.0f}% "
                      f"{row['median']:>5.0f}ms {row['p95']:>4.0f}ms {row['cpu']:>6.1f}% "
                      f"{row['bytes'] / 1000:>9.1f}{errors}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
