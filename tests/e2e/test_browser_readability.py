"""End to end: what a new user misread on the dashboard, in Chromium on a real TensorBoard.

A finished run whose Values/Mode choice changes after its training ended (a note says the frame
stays), a run whose trainer restarted (the timeline's norm line breaks there; the step axis has
labels; a legend names the colours), tiny values (the colour bar's bounds in one format, on one
line) and a recording listed as "recorded", not "recording", once stopped.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from server_support import ARTIFACTS, BROWSER_MARKS, beholder_frame, beholder_tab, set_config, wait_for

from beholder_plugin import Beholder
from beholder_plugin.protocol.names import plugin_dir

pytestmark = BROWSER_MARKS

VIDEO = "video-20261207-143058-669.mp4"
TINY_LO, TINY_HI = 5.6733096e-10, 1.1776583e-6


def write_frames(run, steps: int, scale: float) -> None:
    """One trainer process: a frame at each of `steps` update() calls (steps 1..steps), then close()."""
    with Beholder(str(run), background=False) as beholder:
        for step in range(1, steps + 1):
            beholder.frame_due_now()
            w = np.full((16, 16), scale * step, np.float32) + np.eye(16, dtype=np.float32)
            beholder.update(arrays={"w": w})


@pytest.fixture(scope="module")
def page_on_runs(tmp_path_factory):
    """Runs "restarted" (steps 1-12, then a second process's 1-5) and "tiny" (values 5.7e-10 to 1.2e-6, a
    289 kB recording), both finished; TensorBoard; the tab."""
    logdir = tmp_path_factory.mktemp("logs")
    restarted = logdir / "restarted"
    set_config(restarted, values="arrays", mode="current", FPS=30)
    write_frames(restarted, 12, 1.0)
    write_frames(restarted, 5, 2.0)  # the trainer started again into the same run: steps from 1
    tiny = logdir / "tiny"
    set_config(tiny, values="arrays", mode="current", FPS=30)
    with Beholder(str(tiny), background=False) as beholder:
        beholder.frame_due_now()
        beholder.update(arrays={"w": np.linspace(TINY_LO, TINY_HI, 64, dtype=np.float32).reshape(8, 8)})
    with open(os.path.join(plugin_dir(tiny), VIDEO), "wb") as f:
        f.write(b"\0" * 289_000)
    with beholder_tab(logdir) as (tb, page, frame):
        yield {"logdir": logdir, "page": page, "frame": frame, "url": tb.url}


def shoot(locator, name: str) -> None:
    """Save a screenshot of one element under test-artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    locator.screenshot(path=str(ARTIFACTS / name))


def open_run(session, run: str):
    """Open the tab on a run (through the URL, as a shared link does); the dashboard's iframe."""
    page = session["page"]
    page.goto("about:blank")
    page.goto(session["url"] + f"/#beholder&run={run}")
    frame = session["frame"] = beholder_frame(page)
    wait_for(lambda: frame.evaluate("window.beholder.run") == run
             and frame.evaluate("window.beholder.framesReceived"), message=f"the run {run} shown")
    return frame


def debug(frame) -> dict:
    """The timeline view's debug record."""
    return frame.evaluate("window.beholderDebug.timeline()")


def test_a_restart_breaks_the_timeline_and_the_axis_has_step_labels_and_a_legend(page_on_runs):
    """After a restart (steps 1-12, then 1-5) each row's norm line ran from step 12 straight back to
    step 1; the step axis had no numbers; nothing said what the orange, blue and grey marks are."""
    frame = open_run(page_on_runs, "restarted")
    frame.click("#view-timeline")
    wait_for(lambda: "restarted once" in frame.inner_text("#timeline-status"), message="the restart said")
    # (the first process counted up to 12: the axis spans it, though the last process stopped at 5)
    assert "steps 1–12" in frame.inner_text("#timeline-status")
    segments = wait_for(lambda: debug(frame).get("segments", {}).get("w"), message="the norm line drawn")
    assert segments == 2  # one piece per process, none from step 12 back to step 1
    labels = frame.eval_on_selector_all("#timeline-ticks .tl-tick", "els => els.map(e => e.textContent)")
    assert labels == ["2", "4", "6", "8", "10", "12"]
    legend = frame.inner_text("#timeline-legend")
    for words in ("norm (L2)", "mean ± std", "min–max", "not finite", "anomaly"):
        assert words in legend
    assert "compared run" not in legend
    shoot(frame.locator("#timeline"), "timeline-restart-axis-legend.png")
    frame.check("input[name=view][value=frame]")


def test_colour_bar_bounds_share_one_compact_format_on_one_line(page_on_runs):
    """Bounds of 5.7e-10 and 1.2e-6 read "5.6733096e-" / "10" against "0.0000011776583"."""
    frame = open_run(page_on_runs, "tiny")
    frame.hover("#run-select")
    frame.hover("#frame", position={"x": 5.5, "y": 5.5})
    wait_for(lambda: frame.eval_on_selector("#readout", "el => el.dataset.step"), message="a read-out")
    bounds = frame.eval_on_selector_all("#readout .colorbar-bounds span",
                                        "els => els.map(e => e.textContent)")
    assert bounds == ["5.673e-10", "1.178e-6"]
    heights = frame.eval_on_selector_all("#readout .colorbar-bounds span",
                                         "els => els.map(e => e.getBoundingClientRect().height)")
    line = frame.eval_on_selector("#readout .colorbar-bounds",
                                  "el => parseFloat(getComputedStyle(el).lineHeight) || 16")
    assert max(heights) < 1.5 * line, heights  # one line each
    shoot(frame.locator("#readout"), "hover-bounds.png")


def test_a_stopped_recording_is_listed_as_recorded_on_one_line(page_on_runs):
    """The list read "recording · 28 / 9 kB": the size split mid-number, and "recording" after Stop."""
    frame = open_run(page_on_runs, "tiny")
    item = "#videos li[data-kind=recording]"
    wait_for(lambda: frame.query_selector(item), message="the recording listed")
    meta = frame.inner_text(f"{item} .video-meta")
    assert meta == "recorded, 289 kB"
    boxes = frame.eval_on_selector(f"{item} .video-meta", "el => el.getClientRects().length")
    assert boxes == 1  # one box: not split over two lines
    shoot(frame.locator("#videos"), "videos-recorded.png")
    os.utime(os.path.join(plugin_dir(page_on_runs["logdir"] / "tiny"), VIDEO))  # (being written now)
    frame.click("#record")
    wait_for(lambda: frame.inner_text(f"{item} .video-meta") == "recording now, 289 kB",
             message="the file being recorded")
    frame.click("#record")
    wait_for(lambda: frame.inner_text(f"{item} .video-meta") == "recorded, 289 kB", message="recorded again")


def test_changing_values_after_training_ended_says_the_frame_stays(page_on_runs):
    """The run ended; the user chose Gradients, then variance, and the same frame stayed without a word."""
    frame = open_run(page_on_runs, "tiny")
    wait_for(lambda: frame.inner_text("#status").startswith("Training ended"), message="the ended status")
    assert not frame.is_visible("#ended-note")
    frame.check("input[name=values][value=gradients]")
    note = wait_for(lambda: frame.is_visible("#ended-note") and frame.inner_text("#ended-note"),
                    message="the note")
    assert "this frame shows Arrays (current values), not Gradients (current values)" in note
    assert "applies only when a trainer runs again" in note
    shoot(frame.locator("#main-header"), "ended-values-note.png")
    frame.check("input[name=values][value=arrays]")
    wait_for(lambda: not frame.is_visible("#ended-note"), message="no note once Values matches the frame")
    frame.check("input[name=mode][value=variance]")
    note = wait_for(lambda: frame.is_visible("#ended-note") and frame.inner_text("#ended-note"),
                    message="the note for the mode")
    assert "not Arrays (variance)" in note
    frame.check("input[name=mode][value=current]")
    wait_for(lambda: not frame.is_visible("#ended-note"), message="no note once Mode matches the frame")
    time.sleep(0.6)  # (a status render later: still none)
    assert not frame.is_visible("#ended-note")
