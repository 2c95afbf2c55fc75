"""End to end: a small image (a 28x28 digit) is shown enlarged, crisp, and hovering it names the pixel
under the mouse; the status line leads with the step, so the frame count is not read as the step.
"""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
from server_support import BROWSER_MARKS, beholder_tab, set_config, shoot, wait_for
from server_support import dashboard_stats as stats

from beholder_plugin import Beholder
from beholder_plugin.protocol.runfiles import read_frame_file

pytestmark = BROWSER_MARKS

DIGIT = (np.arange(28 * 28).reshape(28, 28) % 251).astype(np.uint8)  # every pixel known
FIRST_STEP = 4120


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """Run "digit" (a finished run: 3 frames of DIGIT at steps 4120-4122), run "live" (a thread writing a
    28x28 frame every update() until the module ends); TensorBoard; the tab."""
    logdir = tmp_path_factory.mktemp("logs")
    set_config(logdir / "digit", values="frames", mode="current", FPS=30)
    with Beholder(str(logdir / "digit"), background=False) as beholder:
        beholder.step = FIRST_STEP - 1
        for _ in range(3):
            beholder.frame_due_now()
            beholder.update(frame=DIGIT)
    set_config(logdir / "live", values="frames", mode="current", FPS=10)
    stop = threading.Event()

    def train() -> None:
        """Many update() calls, a frame at most 10 times a second: steps run ahead of frame ids."""
        with Beholder(str(logdir / "live"), background=False) as beholder:
            while not stop.wait(0.01):
                beholder.update(frame=DIGIT)

    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()
    try:
        wait_for(lambda: read_frame_file(logdir / "live"), timeout=30, message="the live run's first frame")
        with beholder_tab(logdir) as (tb, page, frame):
            yield {"logdir": logdir, "page": page, "frame": frame}
    finally:
        stop.set()
        trainer.join(10)


def show(frame, run: str) -> None:
    """Choose a run and wait until its 28x28 frame is drawn."""
    frame.select_option("#run-select", run)
    wait_for(lambda: (s := stats(frame))["run"] == run and (s["width"], s["height"]) == (28, 28),
             message=f"the 28x28 frame of {run}")


def test_a_small_frame_is_enlarged_by_a_whole_factor_and_hover_names_its_pixels(session):
    frame = session["frame"]
    show(frame, "digit")
    rect = "el => el.getBoundingClientRect().toJSON()"
    box = wait_for(lambda: (b := frame.eval_on_selector("#frame", rect))["width"] > 28 and b,
                   message="the frame enlarged")
    factor = box["width"] / 28
    assert factor == int(factor) and factor >= 10, box  # whole, and large: 280 px or more
    assert box["height"] == box["width"]
    assert box["width"] <= 768
    assert frame.eval_on_selector("#frame", "el => getComputedStyle(el).imageRendering") == "pixelated"
    shoot(frame.locator("#frame"), "small-frame-enlarged.png")
    for x, y in [(0, 0), (13, 7), (27, 27), (3, 20)]:
        frame.hover("#run-select")  # off the frame first
        frame.hover("#frame", position={"x": (x + 0.5) * factor, "y": (y + 0.5) * factor})
        shown = wait_for(lambda x=x, y=y: (r := frame.eval_on_selector(
            "#readout", "el => ({...el.dataset, text: el.innerText})")).get("x") == str(x)
            and r.get("y") == str(y) and r, message=f"the read-out of pixel ({x}, {y})")
        assert shown["text"].startswith(f"({x}, {y})"), shown
        # the crosshair goes through the middle of that pixel at the enlarged size
        left = frame.eval_on_selector(".cross-y", "el => parseFloat(el.style.left)")
        top = frame.eval_on_selector(".cross-x", "el => parseFloat(el.style.top)")
        assert (left, top) == pytest.approx(((x + 0.5) * factor, (y + 0.5) * factor))


def test_the_status_line_leads_with_the_step(session):
    frame = session["frame"]
    show(frame, "digit")
    wait_for(lambda: frame.inner_text("#status").startswith("Training ended"), message="the ended status")
    assert frame.inner_text("#status").endswith(
        f"showing its last frame: step {FIRST_STEP + 2:,} · frame 3 (28×28)")
    show(frame, "live")
    pattern = r"Connected · step ([\d,]+) · frame (\d+) \(28×28\), .+ old · [\d.]+ frames/s"
    found = wait_for(lambda: re.fullmatch(pattern, frame.inner_text("#status")), message="the live status")
    step, frame_id = int(found[1].replace(",", "")), int(found[2])
    assert step > frame_id  # (update() runs 100 times a second, frames at most 10)
