"""Load: 20 viewers long-polling a real TensorBoard for 10 s while a trainer writes at 30 FPS.

Ten seconds (it was 30) are some 300 frames and 5,000 answers, served to the 20 viewers concurrently. A
viewer left to its 2 s long-poll timeouts (the watcher thread that wakes them dead or stalled) gets 1 or 2
frames in the last third of the run, under MIN_FRAMES_PER_WINDOW (the 10 s thirds of the 30 s run gave
it enough to pass).
"""

from __future__ import annotations

import http.client
import io
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

import pytest
from PIL import Image
from server_support import TensorBoard, Trainer, http_get, set_config, wait_for

from beholder_plugin.protocol.runfiles import read_frame_file

pytestmark = pytest.mark.slow

VIEWERS = 20
SECONDS = 10.0
WINDOWS = 3  # the run is cut in this many equal parts; every viewer must get frames in each
MIN_FRAMES_PER_WINDOW = 3  # 3.3 s at 30 FPS offers ~100: this only fails if a viewer starves


def thread_count(pid: int) -> int:
    """The number of threads of a process, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise RuntimeError("no Threads: line")


def steady_thread_count(pid: int) -> int | None:
    """The thread count if it is the same one second later, else None."""
    first = thread_count(pid)
    time.sleep(1.0)
    return first if thread_count(pid) == first else None


@dataclass
class Viewer:
    """One live-view client: what it received and anything wrong it saw."""

    port: int
    run: str
    started: float
    frames: list[tuple[float, str, int]] = field(default_factory=list)  # (time, etag, frame id)
    problems: list[str] = field(default_factory=list)
    requests: int = 0

    def watch(self, until: float) -> None:
        """Long-poll /live until the deadline, checking that each PNG is whole and as described."""
        etag = ""
        while time.monotonic() < until:
            query = urllib.parse.urlencode({"run": self.run, "after": etag, "timeout": "2"})
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
            try:
                conn.request("GET", f"/data/plugin/beholder/live?{query}")
                resp = conn.getresponse()
                body = resp.read()
            except OSError as exc:
                self.problems.append(f"request failed: {exc!r}")
                time.sleep(0.1)
                continue
            finally:
                conn.close()
            self.requests += 1
            if resp.status == 204:
                continue
            if resp.status != 200:
                self.problems.append(f"status {resp.status}: {body[:200]!r}")
                continue
            new_etag = resp.getheader("ETag") or ""
            frame_id = int(resp.getheader("X-Beholder-Frame-Id"))
            width, height = map(int, resp.getheader("X-Beholder-Size").split("x"))
            try:
                image = Image.open(io.BytesIO(body))
                image.load()  # decodes every row: a torn or cut PNG fails its zlib stream or CRCs
            except Exception as exc:  # noqa: BLE001 - any decoding failure is the finding
                self.problems.append(f"frame {frame_id} does not decode: {exc!r}")
                continue
            if image.size != (width, height):
                self.problems.append(f"frame {frame_id} is {image.size}, headers say {width}x{height}")
            if new_etag == etag:
                self.problems.append(f"the same frame {etag} came twice")
            if self.frames and frame_id <= self.frames[-1][2]:
                self.problems.append(f"frame {frame_id} after frame {self.frames[-1][2]}")
            self.frames.append((time.monotonic() - self.started, new_etag, frame_id))
            etag = new_etag


def test_twenty_viewers_for_ten_seconds_while_a_trainer_writes_at_30_fps(tmp_path):
    logdir = tmp_path / "logs"
    live = logdir / "live"
    set_config(live, values="arrays", mode="current", FPS=30)
    trainer = Trainer(live, delay=0.005, log_path=str(tmp_path / "trainer.log")).start()
    tb = TensorBoard(logdir, tmp_path / "tensorboard.log")
    try:
        tb.start()
        wait_for(lambda: read_frame_file(live), timeout=60, message="the trainer's first frame")
        pid = tb.proc.pid
        # Warm up every route the viewers use (without waiting, so no watcher thread starts),
        # then take the baseline once the thread count holds still.
        for route in ("runs", "frame?run=live", "live?run=live&timeout=0"):
            assert http_get(f"{tb.url}/data/plugin/beholder/{route}")[0] == 200
        baseline = wait_for(lambda: steady_thread_count(pid), timeout=30, message="a steady thread count")

        started = time.monotonic()
        until = started + SECONDS
        viewers = [Viewer(tb.port, "live", started) for _ in range(VIEWERS)]
        threads = [threading.Thread(target=v.watch, args=(until,), daemon=True) for v in viewers]
        for t in threads:
            t.start()
        peak = baseline
        while any(t.is_alive() for t in threads) and time.monotonic() < until + 30:
            peak = max(peak, thread_count(pid))
            time.sleep(0.5)
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads), "a viewer did not stop"
        frames_on_disk = read_frame_file(live).header["frame_id"]
    finally:
        trainer.stop()
    try:
        # Everyone has left: the request threads end, and the watcher 5 s after the last wait.
        after = wait_for(lambda: (n := thread_count(pid)) <= baseline and n or None,
                         timeout=30, message=f"the thread count back to {baseline}")
    finally:
        tb.stop()

    window = SECONDS / WINDOWS
    for i, viewer in enumerate(viewers):
        assert viewer.problems == [], (i, viewer.problems[:5])
        per_window = [sum(1 for t, _, _ in viewer.frames if w * window <= t < (w + 1) * window)
                      for w in range(WINDOWS)]
        assert min(per_window) >= MIN_FRAMES_PER_WINDOW, (i, per_window)
        assert len({etag for _, etag, _ in viewer.frames}) == len(viewer.frames)
    received = sum(len(v.frames) for v in viewers)
    assert peak > baseline  # the viewers really were served concurrently by request threads
    assert after <= baseline
    print(f"baseline {baseline} threads, peak {peak}, after {after}; {frames_on_disk} frames written, "
          f"{received} delivered to {VIEWERS} viewers "
          f"(min {min(len(v.frames) for v in viewers)} per viewer)")
