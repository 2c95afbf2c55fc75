"""Faults seen from the dashboard: the trainer is killed and a new one, with other content, takes over.

TensorBoard restarting under an open dashboard is proven by
tests/e2e/test_browser_dashboard.py::test_reconnects_when_tensorboard_restarts.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
from server_support import (
    BROWSER_MARKS,
    TensorBoard,
    Trainer,
    beholder_frame,
    chromium_page,
    set_config,
    wait_for,
)
from server_support import (
    dashboard_stats as stats,
)

from beholder_plugin.protocol.runfiles import read_frame, read_frame_file

pytestmark = BROWSER_MARKS

# The replacement trainer: one constant section, so every frame it writes has the same pixels
# (and a size the first trainer's four sections never have). It stops by itself after 120 s.
SECOND_TRAINER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from beholder_plugin import Beholder
    run = sys.argv[1]
    b = Beholder(run, strict=True)
    kernel = np.add.outer(np.arange(24.0), np.arange(16.0) ** 2)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not os.path.exists(os.path.join(run, "stop")):
        b.update(arrays={"restarted/kernel": kernel})
        time.sleep(0.01)
    b.close()
    """
)

CANVAS_RGB = """() => {
  const c = document.querySelector('#frame');
  return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);
}"""


def canvas_rgb(frame) -> np.ndarray:
    """The pixels on the dashboard's canvas as an H x W x 3 array."""
    s = stats(frame)
    data = np.array(frame.evaluate(CANVAS_RGB), dtype=np.uint8)
    return data.reshape(s["height"], s["width"], 4)[..., :3]


def test_a_killed_trainer_replaced_by_a_new_one_shows_the_new_frames(tmp_path):
    logdir = tmp_path / "logs"
    live = logdir / "live"
    set_config(live, values="arrays", mode="current", FPS=30)
    first = Trainer(live, log_path=str(tmp_path / "trainer1.log")).start()
    second = None
    tb = TensorBoard(logdir, tmp_path / "tensorboard.log")
    try:
        tb.start()
        wait_for(lambda: read_frame_file(live), timeout=60, message="the first trainer's frame")
        with chromium_page() as page:
            page.goto(tb.url + "/#beholder")
            frame = beholder_frame(page)
            old = wait_for(lambda: (s := stats(frame))["framesReceived"] >= 5 and s, timeout=60,
                           message="frames from the first trainer")
            old_writer, old_size = old["writer"], (old["width"], old["height"])
            assert old_writer == read_frame_file(live).header["writer"]

            first.proc.kill()  # SIGKILL: no close(), maybe a temporary file left mid-write
            first.proc.wait(10)
            received = stats(frame)["framesReceived"]

            second = subprocess.Popen([sys.executable, "-c", SECOND_TRAINER, str(live)])
            new = wait_for(
                lambda: (s := stats(frame))["writer"] != old_writer and s["framesReceived"] > received + 3
                and s,
                timeout=60, message="frames from the second trainer on the dashboard",
            )
            on_disk = read_frame_file(live)
            assert new["writer"] == on_disk.header["writer"]
            assert (new["width"], new["height"]) == (on_disk.width, on_disk.height) != old_size
            # The new trainer writes the same pixels every time: the canvas shows exactly them.
            wait_for(lambda: np.array_equal(canvas_rgb(frame), read_frame(live)), timeout=20,
                     message="the canvas to show the second trainer's frame")
            names = wait_for(
                lambda: [e.inner_text() for e in frame.query_selector_all(".section-info .name")]
                == ["restarted/kernel"],
                timeout=20, message="the new trainer's section in the info panel",
            )
            assert names
            status = frame.inner_text("#status")
            assert status.startswith("Connected") and f"({on_disk.width}×{on_disk.height})" in status
    finally:
        first.stop()
        if second is not None:
            (live / "stop").touch()
            second.wait(30)
        tb.stop()
