"""End to end: the run the user chose, through deletions, reloads and broken files, in Chromium."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from server_support import (
    ARTIFACTS,
    BROWSER_MARKS,
    beholder_frame,
    beholder_tab,
    make_frames,
    read_config_file,
    set_config,
    wait_for,
)
from server_support import (
    dashboard_stats as stats,
)

from beholder_plugin import Beholder
from beholder_plugin.protocol.names import frame_path

pytestmark = BROWSER_MARKS


def failing_run(run_dir) -> None:
    """A run whose trainer's update() failed: its frame says so, with the failure count."""
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    with Beholder(str(run_dir), background=False) as beholder:
        assert not beholder.update(arrays={"w": np.ones((3, 3))}, layout=5)  # (a TypeError, counted)


@pytest.fixture(scope="module")
def page_on_runs(tmp_path_factory):
    """Runs "victim" and "other" with frames, "failing" whose update() failed; TensorBoard; the tab."""
    logdir = tmp_path_factory.mktemp("logs")
    failing_run(logdir / "failing")
    make_frames(logdir / "victim")
    make_frames(logdir / "other")
    with beholder_tab(logdir) as (tb, page, frame):
        wait_for(lambda: stats(frame)["run"] == "other", message="the newest run shown")
        yield {"logdir": logdir, "page": page, "frame": frame, "url": tb.url}


def status(frame) -> str:
    """The status line's text."""
    return frame.inner_text("#status")


def test_a_deleted_run_stays_chosen_and_comes_back(page_on_runs):
    """The usual "delete the run's directory and train again": the dashboard switched to another run for
    good, without a word, and a reload opened the newest run instead of the one chosen."""
    frame, logdir, page = page_on_runs["frame"], page_on_runs["logdir"], page_on_runs["page"]
    frame.select_option("#run-select", "victim")
    wait_for(lambda: stats(frame)["run"] == "victim", message="the victim run")
    assert "run=victim" in page.url  # (a reload or a shared link opens it)
    shutil.rmtree(logdir / "victim")
    wait_for(lambda: 'Run "victim" is not in the logdir now' in status(frame), timeout=30,
             message="the status saying the chosen run went")
    assert stats(frame)["run"] != "victim"
    make_frames(logdir / "victim")
    wait_for(lambda: stats(frame)["run"] == "victim" and stats(frame)["framesReceived"] > 0, timeout=30,
             message="the chosen run shown again once it is back")
    assert "not in the logdir" not in status(frame)
    page.reload()
    frame = page_on_runs["frame"] = beholder_frame(page)
    wait_for(lambda: stats(frame)["run"] == "victim", message="the chosen run after a reload")


def test_another_runs_trainer_health_is_not_shown(page_on_runs):
    """The failing run's "1 failed update() call" stayed on screen beside a run waiting for its first
    frame, as if that run's trainer had failed."""
    frame = page_on_runs["frame"]
    set_config(page_on_runs["logdir"] / "empty", values="arrays", FPS=30)  # (a run with no frame yet)
    options = "os => os.map(o => o.value)"
    wait_for(lambda: "empty" in frame.eval_on_selector_all("#run-select option", options),
             timeout=30, message="the empty run in the selector")
    frame.select_option("#run-select", "failing")
    wait_for(lambda: frame.is_visible("#trainer-health")
             and "failed update()" in frame.inner_text("#trainer-health"), message="the failing run's health")
    frame.select_option("#run-select", "empty")
    wait_for(lambda: "waiting for the first frame" in status(frame), message="the empty run")
    assert not frame.is_visible("#trainer-health")


def test_a_corrupt_frame_file_is_no_lost_connection(page_on_runs):
    """A run whose frame.bin is garbage read "Not connected: ...": TensorBoard answers; the file is bad."""
    frame, logdir = page_on_runs["frame"], page_on_runs["logdir"]
    make_frames(logdir / "broken")
    with open(frame_path(logdir / "broken"), "r+b") as f:
        f.write(b"garbage!" * 8)
    options = "os => os.map(o => o.value)"
    wait_for(lambda: "broken" in frame.eval_on_selector_all("#run-select option", options),
             timeout=30, message="the broken run in the selector")
    frame.select_option("#run-select", "broken")
    wait_for(lambda: "Connected, but this run's frame cannot be read" in status(frame), timeout=30,
             message="the status naming the unreadable frame")
    assert "Not connected" not in status(frame)


def test_a_run_without_a_timeline_says_so(page_on_runs):
    """The Timeline view of a run with no frame yet read "0 sections · steps 0–1"."""
    frame = page_on_runs["frame"]
    frame.select_option("#run-select", "empty")
    frame.click("#view-timeline")
    wait_for(lambda: "No timeline yet" in frame.inner_text("#timeline-status"), message="the empty timeline")
    frame.check("input[name=view][value=frame]")


def test_a_link_to_a_run_that_is_not_there_says_so(page_on_runs):
    """#beholder&run=<a run this logdir never had> read "not in the logdir now (deleted?)" for good."""
    page = page_on_runs["page"]
    page.goto("about:blank")  # (a new hash alone would not load the page again)
    page.goto(page_on_runs["url"] + "/#beholder&run=typo-run")
    frame = page_on_runs["frame"] = beholder_frame(page)
    wait_for(lambda: 'Run "typo-run" (from the link) is not in this logdir' in status(frame), timeout=30,
             message="the status naming the link's run")
    assert "deleted?" not in status(frame)


def test_a_finished_run_says_its_training_ended(page_on_runs):
    """A run whose trainer closed its Beholder read "No frame for 20 s: trainer stopped?" in red, as a
    killed trainer's does (test_browser_inspect.py): it now says the training ended, with no alarm."""
    page = page_on_runs["page"]
    page.goto("about:blank")
    page.goto(page_on_runs["url"] + "/#beholder&run=other")
    frame = page_on_runs["frame"] = beholder_frame(page)
    wait_for(lambda: status(frame).startswith("Training ended"), timeout=30, message="the ended status")
    assert "ago (its Beholder was closed) · showing its last frame: step 1 · frame 1 (768×" in status(frame)
    assert "stopped?" not in status(frame) and frame.get_attribute("#status", "data-state") == "ended"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "status-training-ended.png"))


def test_a_new_hash_in_the_open_tab_is_followed(page_on_runs):
    """A link pasted into the open tab (#beholder&run=victim: no reload, a new hash) and the back button
    changed nothing: the dashboard read the URL at page load only. It now follows the hash, in the same
    page, without adding history entries of its own."""
    page, url = page_on_runs["page"], page_on_runs["url"]
    page.goto("about:blank")
    page.goto(url + "/#beholder&run=other")
    frame = page_on_runs["frame"] = beholder_frame(page)
    wait_for(lambda: stats(frame)["run"] == "other" and stats(frame)["framesReceived"],
             message="the run other")
    frame.evaluate("window.loadedOnce = true")  # (gone if the dashboard were loaded again)
    entries = page.evaluate("history.length")
    page.goto(url + "/#beholder&run=victim&filter=b")  # pasted into the address bar: the same document
    wait_for(lambda: stats(frame)["run"] == "victim", message="the pasted link's run")
    wait_for(lambda: frame.input_value("#section-filter") == "b", message="the pasted link's filter")
    wait_for(lambda: read_config_file(page_on_runs["logdir"] / "victim").get("filter") == "b", timeout=30,
             message="the link's filter sent to the run")
    assert frame.evaluate("window.loadedOnce") and "run=victim" in page.url
    assert page.evaluate("history.length") == entries + 1  # (the link's; none of the dashboard's own)
    page.go_back()
    wait_for(lambda: stats(frame)["run"] == "other", message="the run before, after the back button")
    assert frame.evaluate("window.loadedOnce") and "run=other" in page.url
    assert page.evaluate("history.length") == entries + 1
