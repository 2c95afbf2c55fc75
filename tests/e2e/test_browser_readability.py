"""End to end: what a new user misread on the dashboard, in Chromium on a real TensorBoard.

A finished run whose Values/Mode choice changes after its training ended (a note says the frame
stays), a run whose trainer restarted (the timeline's norm line breaks there; the step axis has
labels; a legend names the colours; its anomaly opens the restarted process's point and frame, not
the earlier process's of the same step), a run of more sections than the timeline holds (it says how
many it shows, and keeps the anomaly's), tiny values (the colour bar's bounds in one format, on one
line) and a recording listed as "recorded", not "recording", once stopped.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from server_support import (
    BROWSER_MARKS,
    beholder_tab,
    open_run,
    set_config,
    shoot,
    wait_for,
)

from beholder_plugin import Beholder, read_anomalies
from beholder_plugin.protocol import timeline as tl
from beholder_plugin.protocol.files import files_for
from beholder_plugin.protocol.names import plugin_dir
from beholder_plugin.trainer.timeline import TimelineWriter

pytestmark = BROWSER_MARKS

VIDEO = "video-20261207-143058-669.mp4"
# The box the encoder ends a finished recording with (the fragmented mp4's index: size 16, "mfro", 8 bytes).
FINISHED_TAIL = (16).to_bytes(4, "big") + b"mfro" + bytes(8)
TINY_LO, TINY_HI = 5.6733096e-10, 1.1776583e-6
WIDE = [f"expert{i:04d}.w" for i in range(5000)]  # more sections than a timeline answer holds (4096)


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
        f.write(b"\0" * (289_000 - len(FINISHED_TAIL)) + FINISHED_TAIL)
    restartnan = logdir / "restartnan"  # steps 1-30 healthy, then a second process's 1-30, NaN from 25
    set_config(restartnan, values="arrays", mode="current", FPS=30)
    for process in (1, 2):
        with Beholder(str(restartnan), background=False) as beholder:
            for step in range(1, 31):
                w = np.full((4, 4), float(step * process), np.float32)
                if process == 2 and step >= 25:
                    w[0, 0] = np.nan
                beholder.frame_due_now()
                beholder.update(arrays={"w": w})
    write_wide(logdir / "wide")
    with beholder_tab(logdir) as (tb, page, frame):
        yield {"logdir": logdir, "page": page, "frame": frame, "url": tb.url}


def write_wide(run) -> None:
    """A run of 5,000 sections (records of steps 1-3; one small frame) whose first anomaly is in the
    4,501st: past the 4,096 the timeline holds in the run's order."""
    set_config(run, values="arrays", mode="current", FPS=30)
    with Beholder(str(run), background=False) as beholder:
        beholder.frame_due_now()
        beholder.update(arrays={WIDE[0]: np.ones((4, 4), np.float32)})
    writer = TimelineWriter(str(run), files_for(str(run)), parts_budget=10**9)
    for step in range(1, 4):
        records = tl.make_records(len(WIDE))
        records["step"], records["time"], records["section"] = step, time.time(), np.arange(len(WIDE))
        records["norm"] = np.where(np.arange(len(WIDE)) == 4500, np.nan if step == 3 else 1.0, 1.0)
        writer.append(WIDE, records)
    writer.close()
    with open(os.path.join(tl.timeline_dir(str(run)), tl.ANOMALIES_FILE), "ab") as out:
        out.write(tl.anomaly_line({"section": WIDE[4500], "values": "arrays", "kind": "nan", "step": 3,
                                   "time": time.time(), "frame_step": 3, "first": True}))




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
    for words in ("norm (L2)", "mean ± std", "min–max", "not finite", "anomaly", "blank where no frame"):
        assert words in legend  # (a gap: another Values choice was shown then, and only it was recorded)
    assert "compared run" not in legend
    shoot(frame.locator("#timeline"), "timeline-restart-axis-legend.png")
    frame.check("input[name=view][value=frame]")


def test_step_labels_tell_ticks_apart_far_from_step_zero(page_on_runs):
    """A run resumed at step 100,000 (300 steps shown): every tick read "100k"; the labels take as many
    decimals as the ticks' spacing needs. (The dashboard's own module, run in its page.)"""
    frame = open_run(page_on_runs, "restarted")
    labels = frame.evaluate("""async () => {
        const m = await import("./static/timeline.js");
        const spans = [[100000, 100300], [1000000, 1010000], [0, 25000], [1, 12]];
        return spans.map(([a, b]) => m.tickLabels(m.stepTicks(a, b)));
    }""")
    assert labels[0] == ["100k", "100.05k", "100.1k", "100.15k", "100.2k", "100.25k", "100.3k"]
    assert labels[1] == ["1M", "1.002M", "1.004M", "1.006M", "1.008M", "1.01M"]
    assert labels[2] == ["0", "5000", "10k", "15k", "20k", "25k"]
    assert labels[3] == ["2", "4", "6", "8", "10", "12"]
    assert all(len(set(row)) == len(row) for row in labels)


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
    path = os.path.join(plugin_dir(page_on_runs["logdir"] / "tiny"), VIDEO)
    with open(path, "r+b") as f:  # being written now: no index at its end yet
        f.seek(-len(FINISHED_TAIL), os.SEEK_END)
        f.write(bytes(len(FINISHED_TAIL)))
    frame.click("#record")
    wait_for(lambda: frame.inner_text(f"{item} .video-meta") == "recording now, 289 kB",
             message="the file being recorded")
    frame.click("#record")  # recording off, and the file not finished (a trainer killed meanwhile)
    wait_for(lambda: frame.inner_text(f"{item} .video-meta") == "unfinished, 289 kB", message="unfinished")
    assert "plays up to where it stopped" in frame.get_attribute(f"{item} .video-meta", "title")
    with open(path, "r+b") as f:  # the trainer finished it
        f.seek(-len(FINISHED_TAIL), os.SEEK_END)
        f.write(FINISHED_TAIL)
    frame.click("#record")
    wait_for(lambda: frame.inner_text(f"{item} .video-meta") == "recorded, 289 kB",
             message="a finished file, though recording is on")
    frame.click("#record")


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
    # close()'s last frame of a variance run is the weights as current values (X-Beholder-Ending): said so
    notes = frame.evaluate(
        """async () => {
            const m = await import('/data/plugin/beholder/static/status_line.js');
            const meta = {values: 'trainable_variables', mode: 'current', ending: true};
            const variance = {values: 'arrays', mode: 'variance'};
            const image = {values: 'frames', mode: 'variance'};
            return [m.endedNoteText(meta, {values: 'trainable_variables', mode: 'variance'}),
                    m.endedNoteText(meta, {values: 'trainable_variables', mode: 'current'}),
                    m.endedNoteText(meta, {values: 'gradients', mode: 'variance'}),
                    m.endedNoteText(variance, variance),
                    m.endedNoteText(image, image),
                    m.endedNoteText(variance, variance, true)];
        }""")
    assert notes[0].startswith("Training ended: this last frame shows the weights it ended with, as current "
                               "values, not variance") and notes[1] == ""
    assert "this frame shows Trainable variables (current values), not Gradients (variance)" in notes[2]
    # a run that ended on a variance frame (arrays, or closed at exit): what it is, and how to end on values
    assert notes[3].startswith("Training ended on a variance frame") and 'mode="current"' in notes[3]
    assert notes[4] == ""  # (an image has no mode)
    assert notes[5] == ""  # (the variance window's note is up and says it)


def test_after_a_restart_the_anomaly_shows_and_opens_the_restarted_process_point_and_frame(page_on_runs):
    """Two processes counted steps 1-30; the second's w went NaN at step 25. Jump showed the first
    process's healthy step-25 point (non-finite 0) and the marker opened its frame, by step alone."""
    frame = open_run(page_on_runs, "restartnan")
    anomaly = read_anomalies(str(page_on_runs["logdir"] / "restartnan"))[0]
    assert anomaly["first"] and anomaly["step"] == 25
    frame.click("#view-timeline")
    wait_for(lambda: "restarted once" in frame.inner_text("#timeline-status"), message="the restart said")
    frame.click("#timeline-jump")
    hover = wait_for(lambda: debug(frame).get("jumped") and debug(frame)["hover"], message="the jump")
    assert (hover["section"], hover["step"], hover["time"]) == ("w", 25, anomaly["time"])
    assert hover["nonfinite"] == 1 and np.isnan(hover["norm"])
    assert "non-finite 1" in frame.inner_text("#timeline-readout")
    shoot(frame.locator("#timeline"), "timeline-restart-anomaly.png")
    box = frame.locator("#timeline-axis").bounding_box()
    frame.page.mouse.click(box["x"] + (25 - 1) / (30 - 1) * 639, box["y"] + box["height"] / 2)
    opened = wait_for(lambda: debug(frame)["opened"], message="the anomaly's frame opened")
    assert opened["name"] == anomaly["frames"][1] and opened["index"] >= 0
    wait_for(lambda: frame.evaluate("window.beholder.kept") == opened["name"], message="its frame shown")
    shoot(frame.page, "timeline-restart-anomaly-opened.png")
    frame.check("input[name=view][value=frame]")


def test_a_run_of_more_sections_than_the_timeline_holds_says_so_and_keeps_the_anomalys(page_on_runs):
    """5,000 sections: the status read "4096 sections" and the first anomaly's section was not there."""
    frame = open_run(page_on_runs, "wide")
    frame.click("#view-timeline")
    status = wait_for(lambda: "steps 1–3" in (text := frame.inner_text("#timeline-status")) and text,
                      timeout=60, message="the wide timeline")
    assert status.startswith("showing 4096 of 5000 sections (at most 4096 fit, those with anomalies kept")
    assert debug(frame)["drawn"] == 4096
    frame.click("#timeline-jump")
    jumped = wait_for(lambda: debug(frame).get("jumped"), message="the jump")
    assert jumped["section"] == WIDE[4500]
    row = f'.tl-row[data-section="{WIDE[4500]}"]'
    assert "tl-current" in frame.get_attribute(row, "class").split()
    shoot(frame.locator("#timeline .tl-controls"), "timeline-sections-left-out.png")
    frame.check("input[name=view][value=frame]")
