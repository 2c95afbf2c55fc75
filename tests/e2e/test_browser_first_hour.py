"""End to end: what a new user met in the first hour (issue 23), in a real TensorBoard and Chromium.

Runs written before the page opens (each shows one situation) and one
trainer whose every update() fails. The tests share one TensorBoard and page
and run in file order.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import inspect_trainer
import numpy as np
import pytest
from server_support import (
    ARTIFACTS,
    BROWSER_MARKS,
    TensorBoard,
    beholder_frame,
    chromium_page,
    read_config_file,
    set_config,
    wait_for,
)
from server_support import (
    dashboard_stats as stats,
)

from beholder_plugin import Beholder
from beholder_plugin.protocol.names import ended_path
from beholder_plugin.protocol.runfiles import read_frame_file

pytestmark = BROWSER_MARKS

FAILING = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from beholder_plugin import Beholder
    b = Beholder(sys.argv[1])
    while not Path(sys.argv[1], "stop").exists():
        b.update(arrays={})  # always fails: "there are no arrays to show"
        time.sleep(0.05)
    """
)


def _frame_with_counts(run, skipped: int, written: int) -> None:
    """One frame of arrays whose header says `skipped` frames skipped and `written` written before it."""
    set_config(run, values="arrays", mode="current", FPS=30)
    with Beholder(run, strict=True) as beholder:
        beholder.skipped, beholder.frames_written = skipped, written
        assert beholder.update(arrays={"w": np.arange(24.0).reshape(4, 6)})


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """Runs: offer (arrays while weights are selected), calm and busy (skips), failing (a live trainer)."""
    logdir = tmp_path_factory.mktemp("logs")
    runs = {name: logdir / name for name in ("offer", "calm", "busy", "failing")}
    set_config(runs["offer"], values="trainable_variables", mode="current", FPS=30)
    with Beholder(runs["offer"], strict=True) as beholder:
        assert beholder.update(arrays={"w": np.ones((3, 4))})
    _frame_with_counts(runs["calm"], skipped=1, written=2999)  # 1 in 3,000: a plain count
    _frame_with_counts(runs["busy"], skipped=400, written=599)  # 40 %: a problem
    runs["short"] = logdir / "short"
    _frame_with_counts(runs["short"], skipped=1, written=2)  # 1 of a short run's 4 frames: a count
    for name, values in (("diff-a", 1.1193619966506958), ("diff-b", 0.0)):
        runs[name] = logdir / name
        set_config(runs[name], values="arrays", mode="current", FPS=30)
        with Beholder(runs[name], strict=True) as beholder:  # A - B: max |d| = 23 x 1.11936...
            assert beholder.update(arrays={"w": np.arange(24.0).reshape(4, 6) * values})
    runs["image"] = logdir / "image"
    set_config(runs["image"], values="frames", mode="current", FPS=30)
    with Beholder(runs["image"], strict=True) as beholder:
        assert beholder.update(frame=np.eye(16))
    runs["restarted"] = logdir / "restarted"
    set_config(runs["restarted"], values="arrays", mode="current", FPS=30)
    for first_step, count in ((6496, 4), (0, 3)):  # a trainer at step 6500, then restarted from step 1
        with Beholder(runs["restarted"], strict=True) as beholder:
            beholder.step = first_step
            for _ in range(count):
                beholder.frame_due_now()  # every update is a frame
                assert beholder.update(arrays={"w": np.arange(24.0).reshape(4, 6)})
                beholder.flush()
    # variance mode (the default): a first frame (of a trainer still running, and of one that ended
    # there), and text whose length changed between two frames
    for name, lengths in (("fresh", (4,)), ("fresh-ended", (4,)), ("text", (4, 9))):
        runs[name] = logdir / name
        set_config(runs[name], values="arrays", mode="variance", FPS=30)
        with Beholder(runs[name], strict=True) as beholder:
            for length in lengths:
                beholder.frame_due_now()
                assert beholder.update(arrays={"tokens": np.arange(length * 2.0).reshape(1, length, 2),
                                               "scores": np.ones((1, length, 3))})
                beholder.flush()
    os.unlink(ended_path(runs["fresh"]))  # (as if its trainer were still running)
    set_config(runs["failing"], values="arrays", mode="current", FPS=30)
    trainer = subprocess.Popen([sys.executable, "-c", FAILING, str(runs["failing"])])
    for name in ("grid", "mnist", "tall"):  # tests/inspect_trainer.py: every value known from the step
        runs[name] = logdir / name
        set_config(runs[name], values="arrays", mode="current", FPS=5)
    grid_trainer = subprocess.Popen([sys.executable, inspect_trainer.__file__,
                                     *(str(runs[n]) for n in ("grid", "mnist", "tall"))])
    tb = TensorBoard(logdir, logdir.parent / "tensorboard.log")
    try:
        tb.start()
        wait_for(lambda: read_frame_file(runs["failing"]), timeout=60, message="the failing run's frame")
        # the grid trainer past its one failed update (whose frame has no sections): a test that pins an
        # element of its layout must not see that frame come in between (a loaded machine starts the
        # trainer late)
        wait_for(lambda: (f := read_frame_file(runs["grid"])) and f.header.get("failures", 0) >= 1
                 and len(f.sections) == 2, timeout=60, message="the grid run's frames after its failure")
        with chromium_page() as page:
            page.goto(tb.url + "/#beholder")
            yield {"runs": runs, "page": page, "frame": beholder_frame(page)}
    finally:
        (runs["failing"] / "stop").touch()
        (runs["grid"] / "stop").touch()
        for proc in (trainer, grid_trainer):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        tb.stop()


def show_run(frame, name: str) -> None:
    """Select a run and wait until its frame is drawn."""
    frame.select_option("#run-select", name)
    wait_for(lambda: (s := stats(frame))["run"] == name and s["framesReceived"] > 0 and s["frameId"],
             message=f"a frame of {name}")


def test_a_failing_trainer_says_so_at_once_not_trainer_stopped(session):
    frame = session["frame"]
    show_run(frame, "failing")
    wait_for(lambda: frame.get_attribute("#status", "data-state") == "failing", timeout=20,
             message="the failing status")
    assert "update() fails" in frame.inner_text("#status")
    assert "stopped" not in frame.inner_text("#status")
    health = frame.inner_text("#trainer-health")
    assert "failed update() call" in health and "no arrays to show" in health
    assert frame.query_selector("#health-failures.alarm")


def test_a_few_skips_are_a_plain_count_and_many_are_red(session):
    frame = session["frame"]
    show_run(frame, "calm")
    wait_for(lambda: frame.is_visible("#health-skips"), message="the skip count")
    assert frame.inner_text("#health-skips") == "1 frame skipped while its worker was busy"
    assert frame.get_attribute("#health-skips", "class") == "plain"
    plain = frame.eval_on_selector("#health-skips", "el => getComputedStyle(el).color")
    show_run(frame, "busy")
    wait_for(lambda: frame.get_attribute("#health-skips", "class") == "alarm", message="red skips")
    assert "400 frames skipped" in frame.inner_text("#health-skips")
    assert "40 % of the last minute's frames" in frame.inner_text("#health-skips")
    red = frame.evaluate("getComputedStyle(document.querySelector('.beholder')).getPropertyValue('--record')")
    alarm = frame.eval_on_selector("#health-skips", "el => getComputedStyle(el).color")
    assert alarm != plain and red.strip()  # the calm count is not in the alarm colour
    show_run(frame, "short")  # 25 %, but one skip: a new user's short first run is not alarmed
    wait_for(lambda: frame.inner_text("#health-skips") == "1 frame skipped while its worker was busy",
             message="the short run's skip count")
    assert frame.get_attribute("#health-skips", "class") == "plain"


def test_a_placeholder_offers_the_values_that_were_passed(session):
    frame, offer = session["frame"], session["runs"]["offer"]
    show_run(frame, "offer")
    wait_for(lambda: frame.is_visible("#values-offer"), message="the offer to show the arrays")
    text = frame.inner_text("#values-offer")
    assert "was given arrays" in text and 'Values is on "Trainable variables"' in text
    ARTIFACTS.mkdir(exist_ok=True)
    session["page"].screenshot(path=str(ARTIFACTS / "placeholder-offer.png"))
    frame.click("#show-offered")
    wait_for(lambda: read_config_file(offer)["values"] == "arrays", message="Values set to arrays")
    wait_for(lambda: frame.is_checked("input[name=values][value=arrays]"), message="the control follows")
    wait_for(lambda: not frame.is_visible("#values-offer"), message="the offer gone")


def test_a_black_variance_frame_says_why(session):
    """Variance over one frame is 0: the page says so, and why, where a user would read dead sections."""
    frame, text_run = session["frame"], session["runs"]["text"]
    show_run(frame, "fresh")
    note = wait_for(lambda: frame.is_visible("#window-note") and frame.inner_text("#window-note-text"),
                    message="the note on the first variance frame")
    assert note.startswith("Variance over 1 frame: every value reads 0") and "up to 15" in note
    assert not frame.is_visible("#window-note-current")  # the next frames fill the window by themselves
    show_run(frame, "fresh-ended")  # no frame will follow: no promise of one, and a way out for next time
    note = wait_for(lambda: "Training ended" in (t := frame.inner_text("#window-note-text")) and t,
                    message="the note on an ended run's only frame")
    assert "no variance follows" in note and "next frame" not in note
    assert frame.is_visible("#window-note-current")
    assert not frame.is_visible("#ended-note")  # (the ended note's variance hint would say it twice)
    show_run(frame, "text")
    note = wait_for(lambda: "changed shape" in (t := frame.inner_text("#window-note-text")) and t,
                    message="the note naming the shape change")
    assert '"tokens" changed shape, [1, 4, 2] → [1, 9, 2] (and 1 other section)' in note, note
    ARTIFACTS.mkdir(exist_ok=True)
    session["page"].screenshot(path=str(ARTIFACTS / "variance-window-note.png"))
    frame.click("#window-note-current")
    wait_for(lambda: read_config_file(text_run)["mode"] == "current", message="Mode set to current")
    wait_for(lambda: frame.is_checked("input[name=mode][value=current]"), message="the control follows")
    with Beholder(text_run, strict=True) as beholder:  # (it reads the mode the button chose)
        assert beholder.update(arrays={"tokens": np.ones((1, 5, 2)), "scores": np.ones((1, 5, 3))})
    wait_for(lambda: not frame.is_visible("#window-note"), message="the note gone with current values")
    show_run(frame, "calm")
    assert not frame.is_visible("#window-note")


def compare(frame, run: str, other: str) -> list[str]:
    """Show run compared with other; the compare view's row names once drawn."""
    show_run(frame, run)
    frame.select_option("#compare-select", other)
    return wait_for(lambda: frame.evaluate("window.beholderDebug.compare()")["rows"], message="compare rows")


def test_compare_says_when_the_other_run_shows_other_values(session):
    frame = session["frame"]
    assert compare(frame, "diff-a", "image") == ["w"]
    cell = wait_for(lambda: frame.query_selector('.cmp-row[data-name="w"] .cmp-absent'), message="the cell")
    assert cell.inner_text() == "image shows Image, not Arrays"
    assert "not in" not in cell.inner_text()
    kinds = frame.inner_text("#compare-kinds")
    assert kinds.startswith("diff-a shows Arrays and image shows Image: pick the same Values")
    frame.select_option("#compare-select", "")


def test_the_difference_scale_is_rounded(session):
    frame = session["frame"]
    assert compare(frame, "diff-a", "diff-b") == ["w"]
    frame.check('input.cmp-diff[data-name="w"]')
    note = wait_for(lambda: frame.query_selector('.cmp-row[data-diff="true"] .cmp-diff-cell .note'),
                    message="the difference's scale")
    # m = max |A - B| = 23 x 1.1193619966506958 = 25.745325922966...: shown with 4 significant digits
    assert note.inner_text().endswith("m = 25.75")
    ARTIFACTS.mkdir(exist_ok=True)
    session["page"].screenshot(path=str(ARTIFACTS / "compare-rounded-scale.png"))
    frame.select_option("#compare-select", "")


def readout(frame, selector: str) -> dict:
    """A read-out's data attributes."""
    return frame.eval_on_selector(selector, "el => ({...el.dataset})")


def test_the_hover_box_follows_new_frames_while_the_mouse_is_still(session):
    frame = session["frame"]
    show_run(frame, "grid")
    frame.hover("#frame", position={"x": 5.5, "y": 5.5})
    first = wait_for(lambda: (r := readout(frame, "#readout")).get("step") and r, message="a read-out")
    # The mouse stays put; new frames come at 5 a second: the read-out follows them.
    wait_for(lambda: int(readout(frame, "#readout")["step"]) > int(first["step"]) + 2,
             message="the read-out of newer frames")
    now = wait_for(lambda: (r := readout(frame, "#readout"))["step"] == str(stats(frame)["step"]) and r,
                   message="the read-out of the frame on screen")
    index = [int(i) for i in now["index"].strip("[]").split(",")]
    assert np.float32(now["value"]) == inspect_trainer.values_at(int(now["step"]))[now["name"]][tuple(index)]


def test_a_pin_holds_its_element_when_the_layout_changes(session):
    frame, grid = session["frame"], session["runs"]["grid"]
    show_run(frame, "grid")
    frame.click("#frame", position={"x": 100.5, "y": 140.5})  # in the kernel (3, 3, 4, 5), rows 133-260
    pin = wait_for(lambda: (r := readout(frame, '[data-pin="1"]')).get("step") and r, message="the pin")
    assert pin["name"] == "kernel" and (pin["x"], pin["y"]) == ("100", "140")
    frame.check("input[name=section_size][value=proportional]")
    wait_for(lambda: read_config_file(grid)["section_size"] == "proportional", message="proportional")
    # Proportional heights move the kernel's rows: the pin moves with its element.
    moved = wait_for(lambda: (r := readout(frame, '[data-pin="1"]'))["y"] != "140" and r,
                     message="the pin to move with its element")
    assert moved["name"] == "kernel" and moved["index"] == pin["index"]
    index = [int(i) for i in moved["index"].strip("[]").split(",")]
    want = inspect_trainer.values_at(int(moved["step"]))["kernel"][tuple(index)]
    assert np.float32(moved["value"]) == want
    marker_top = frame.eval_on_selector(".pin-marker", "el => parseFloat(el.style.top)")
    assert marker_top == int(moved["y"]) + 0.5  # the marker sits on the element's new pixel (1:1 zoom)
    ARTIFACTS.mkdir(exist_ok=True)
    session["page"].screenshot(path=str(ARTIFACTS / "pin-follows-layout.png"))
    frame.check("input[name=section_size][value=fixed]")
    back = wait_for(lambda: 133 <= int((r := readout(frame, '[data-pin="1"]'))["y"]) < 261 and r,
                    message="the pin back in the kernel's fixed rows")
    assert back["index"] == pin["index"]  # on a pixel of the same element (the first that shows it)
    frame.click(".pin-marker")


def slide_to(frame, index: int) -> None:
    """Move the history slider to kept frame `index`, as a drag does."""
    frame.eval_on_selector("#history-slider", """(el, i) => { el.value = String(i);
        el.dispatchEvent(new Event('input', {bubbles: true})); }""", index)
    wait_for(lambda: f"frame {index + 1} of" in frame.inner_text("#history-label"),
             message=f"kept frame {index}")


def test_history_keeps_a_restarted_trainers_frames_apart(session):
    frame = session["frame"]
    show_run(frame, "restarted")
    frame.click("#live-toggle")
    wait_for(lambda: "of 7" in frame.inner_text("#history-label"), message="the kept frames")
    # The slider marks where the second process began; the export range starts within the newest one.
    assert frame.eval_on_selector_all("#history-writers option", "els => els.map(e => e.value)") == ["4"]
    assert frame.get_attribute("#history-slider", "list") == "history-writers"
    assert frame.is_visible("#history-writers-note")
    assert "2 processes wrote these frames" in frame.inner_text("#history-writers-note")
    assert frame.inner_text("#export-range") == "steps 1–3 (3 frames)"
    assert "process 2 of 2" in frame.inner_text("#history-label")
    slide_to(frame, 1)  # the first process's frames, steps in order
    assert frame.inner_text("#history-label").startswith("step 6498 ")
    frame.click("#export-from")  # the end (in the other process) comes along: never two writers
    assert frame.inner_text("#export-range") == "steps 6498–6498 (1 frames)"
    slide_to(frame, 3)
    frame.click("#export-to")
    assert frame.inner_text("#export-range") == "steps 6498–6500 (3 frames)"
    ARTIFACTS.mkdir(exist_ok=True)
    session["page"].screenshot(path=str(ARTIFACTS / "history-two-writers.png"))
    frame.click("#export")
    wait_for(lambda: frame.inner_text("#export-status").startswith("Exported 3 frames"), message="the export")
    frame.click("#live-toggle")
