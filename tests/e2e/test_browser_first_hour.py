"""End to end: what a new user met in the first hour (issue 23), in a real TensorBoard and Chromium.

Runs written before the page opens (each shows one situation) and one
trainer whose every update() fails. The tests share one TensorBoard and page
and run in file order.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

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
    for name, values in (("diff-a", 1.1193619966506958), ("diff-b", 0.0)):
        runs[name] = logdir / name
        set_config(runs[name], values="arrays", mode="current", FPS=30)
        with Beholder(runs[name], strict=True) as beholder:  # A - B: max |d| = 23 x 1.11936...
            assert beholder.update(arrays={"w": np.arange(24.0).reshape(4, 6) * values})
    runs["image"] = logdir / "image"
    set_config(runs["image"], values="frames", mode="current", FPS=30)
    with Beholder(runs["image"], strict=True) as beholder:
        assert beholder.update(frame=np.eye(16))
    set_config(runs["failing"], values="arrays", mode="current", FPS=30)
    trainer = subprocess.Popen([sys.executable, "-c", FAILING, str(runs["failing"])])
    tb = TensorBoard(logdir, logdir.parent / "tensorboard.log")
    try:
        tb.start()
        wait_for(lambda: read_frame_file(runs["failing"]), timeout=60, message="the failing run's frame")
        with chromium_page() as page:
            page.goto(tb.url + "/#beholder")
            yield {"runs": runs, "page": page, "frame": beholder_frame(page)}
    finally:
        (runs["failing"] / "stop").touch()
        try:
            trainer.wait(15)
        except subprocess.TimeoutExpired:
            trainer.kill()
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
