"""End to end: a real TensorBoard, a real trainer process and Debian's Chromium driving the tab.

The tests of this module share one TensorBoard, one trainer and one page (starting
them costs seconds), and run in file order: each leaves the settings as it found them.
"""

from __future__ import annotations

import glob
import io
import os
import re
import time
from pathlib import Path

import pytest
from PIL import Image
from server_support import (
    ARTIFACTS,
    BROWSER_MARKS,
    TRAINER_FRAME_SHAPE,
    frames_after,
    live_dashboard,
    make_frames,
    read_config_file,
    set_config,
    wait_for,
)
from server_support import (
    dashboard_stats as stats,
)

from beholder_plugin.protocol.runfiles import plugin_dir, read_frame_file

pytestmark = BROWSER_MARKS

# The live run's frame: four sections of 128 px (dense/kernel, tiny/kernel, dense/bias,
# wide/vector) with 5 px between them; the old run has two (w, b).
LIVE_HEIGHT = 4 * 128 + 3 * 5
OLD_HEIGHT = 2 * 128 + 5
TINY_ROWS = (133 + 10, 133 + 118)  # well inside the tiny/kernel section

CANVAS_STATS = """([top, bottom]) => {
  const c = document.querySelector('#frame');
  const data = c.getContext('2d').getImageData(0, top, c.width, bottom - top).data;
  let gray = true, sum = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i] !== data[i + 1] || data[i + 1] !== data[i + 2]) gray = false;
    sum += (data[i] + data[i + 1] + data[i + 2]) / 3;
  }
  return {gray, mean: sum / (data.length / 4)};
}"""


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A logdir with an old run and a live one, a trainer on the live one, TensorBoard, a page."""
    logdir = tmp_path_factory.mktemp("logs")
    make_frames(logdir / "old")  # written once, so "live" is the most recently updated run
    with live_dashboard(logdir) as found:
        yield found


def config_becomes(run_dir: Path, key: str, value) -> None:
    """Wait until config.json on disk holds key = value."""
    wait_for(lambda: read_config_file(run_dir)[key] == value, timeout=10, message=f"{key}={value}")


def canvas_stats(frame, rows: tuple[int, int]) -> dict:
    """Whether the canvas rows are all gray, and their mean brightness."""
    return frame.evaluate(CANVAS_STATS, list(rows))


def set_slider(frame, selector: str, value: int) -> None:
    """Move a range input and release it, as a user drag does."""
    frame.eval_on_selector(
        selector,
        """(el, v) => { el.value = String(v);
          el.dispatchEvent(new Event('input', {bubbles: true}));
          el.dispatchEvent(new Event('change', {bubbles: true})); }""",
        value,
    )


def test_tab_appears_and_shows_the_most_recent_run(session):
    page, frame = session["page"], session["frame"]
    tabs = page.inner_text("body")
    assert "BEHOLDER" in tabs.upper()
    s = frames_after(frame, 5)
    assert s["run"] == "live"
    assert frame.eval_on_selector("#run-select", "el => el.value") == "live"
    assert (s["width"], s["height"]) == (768, LIVE_HEIGHT)
    first = s["frameId"]
    assert frames_after(frame, 3)["frameId"] > first
    rendering = frame.eval_on_selector("#frame", "el => getComputedStyle(el).imageRendering")
    assert rendering == "pixelated"
    box = frame.eval_on_selector("#frame", "el => el.getBoundingClientRect().width")
    assert box == 768  # 1:1 by default
    status = frame.inner_text("#status")
    assert status.startswith("Connected") and "frames/s" in status


def test_toolbar_has_the_original_controls(session):
    text = session["frame"].inner_text(".toolbar")
    for label in (
        "Trainable variables (model weights)",
        "Arrays passed to update(arrays=...)",
        "Image passed to update(frame=...)",
        "Show all data",
        "(can be resource intensive)",
        "current values",
        "variance over the last 15 frames rendered",
        "Variance window (frames rendered)",
        "per section",
        "all sections",
        "Updates per second",
    ):
        assert label in text, label
    frame = session["frame"]
    assert frame.eval_on_selector("#window-size", "el => [el.min, el.max]") == ["2", "20"]
    assert frame.eval_on_selector("#fps", "el => [el.min, el.max]") == ["0", "30"]
    options = frame.eval_on_selector("#colormap", "el => [...el.options].map(o => o.value)")
    assert options == ["magma", "inferno", "plasma", "viridis", "grayscale"]
    assert frame.get_attribute("label.choice:has(input[value=layer])", "title")
    assert frame.get_attribute("label.choice:has(input[value=network])", "title")
    assert frame.inner_text("#record").lower() == "start recording"


def test_controls_show_the_config_on_disk(session):
    frame = session["frame"]
    assert frame.is_checked("input[name=values][value=arrays]")
    assert frame.is_checked("input[name=mode][value=current]")
    assert frame.is_checked("input[name=scaling][value=layer]")
    assert frame.eval_on_selector("#fps", "el => el.value") == "30"
    assert frame.inner_text("#fps-value") == "30"
    assert frame.eval_on_selector("#colormap", "el => el.value") == "magma"
    assert not frame.is_checked("#show-all")


def test_info_panel_sits_beside_each_section(session):
    frame = session["frame"]
    wait_for(lambda: frame.query_selector_all(".section-info"), message="section info")
    entries = frame.query_selector_all(".section-info")
    names = [e.query_selector(".name").inner_text() for e in entries]
    assert names == ["dense/kernel", "tiny/kernel", "dense/bias", "wide/vector"]
    tops = [e.evaluate("el => parseFloat(el.style.top)") for e in entries]
    assert tops == [0, 133, 266, 399]
    # The panel adds up the records' pixel heights and 5 px separators: the frame header's tops.
    assert tops == [rec["top"] for rec in read_frame_file(session["live"]).sections]
    text = entries[0].inner_text()
    assert "shape [40, 30]" in text
    assert re.search(r"range \d\.\d{3}e[+-]\d{2}", text)
    assert re.search(r"mean -?\d\.\d{3}e[+-]\d{2}", text)


def test_colormap_changes_config_and_frames(session):
    frame, live = session["frame"], session["live"]
    assert not canvas_stats(frame, (0, 128))["gray"]  # magma
    frame.select_option("#colormap", "grayscale")
    config_becomes(live, "colormap", "grayscale")
    wait_for(lambda: canvas_stats(frame, (0, 128))["gray"], message="gray frames on screen")


def test_scaling_changes_config_and_frames(session):
    frame, live = session["frame"], session["live"]
    assert canvas_stats(frame, TINY_ROWS)["mean"] > 40  # per section: the tiny kernel spans the range
    frame.check("input[name=scaling][value=network]")
    config_becomes(live, "scaling", "network")
    # All sections share one range, so the tiny kernel (values ~1e-3) goes black.
    wait_for(lambda: canvas_stats(frame, TINY_ROWS)["mean"] < 5, message="a dark tiny section")
    frame.check("input[name=scaling][value=layer]")
    config_becomes(live, "scaling", "layer")
    wait_for(lambda: canvas_stats(frame, TINY_ROWS)["mean"] > 40, message="per-section scaling")


def section_mins(frame) -> list[float]:
    """The min statistic of each section as shown in the info panel."""
    texts = [e.inner_text() for e in frame.query_selector_all(".section-info")]
    return [float(t.split("min ")[1].split()[0]) for t in texts]


def test_mode_and_window_size_change_config_and_frames(session):
    frame, live = session["frame"], session["live"]
    wait_for(lambda: min(section_mins(frame)) < 0, message="negative values in current mode")
    frame.check("input[name=mode][value=variance]")
    config_becomes(live, "mode", "variance")
    # Variances are never negative.
    wait_for(lambda: min(section_mins(frame)) >= 0, message="variance statistics")
    set_slider(frame, "#window-size", 4)
    config_becomes(live, "window_size", 4)
    assert frame.inner_text("#window-size-value") == "4"
    frame.check("input[name=mode][value=current]")
    config_becomes(live, "mode", "current")
    wait_for(lambda: min(section_mins(frame)) < 0, message="current values again")
    set_slider(frame, "#window-size", 15)
    config_becomes(live, "window_size", 15)


def test_controls_follow_settings_changed_on_disk(session):
    """Another viewer or a script changes config.json: once frames show it, the controls follow."""
    frame, live = session["frame"], session["live"]
    on_disk = read_config_file(live)
    set_config(live, **{**{k: v for k, v in on_disk.items() if k != "version"}, "mode": "variance"})
    wait_for(lambda: frame.is_checked("input[name=mode][value=variance]"), timeout=30,
             message="the Mode control to follow config.json")
    frame.check("input[name=mode][value=current]")  # and back, through the dashboard
    config_becomes(live, "mode", "current")


def test_show_all_widens_the_frame(session):
    frame, live = session["frame"], session["live"]
    frame.check("#show-all")
    config_becomes(live, "show_all", True)
    wait_for(lambda: stats(frame)["width"] == 1500, message="a 1500 px wide frame")
    frame.uncheck("#show-all")
    config_becomes(live, "show_all", False)
    wait_for(lambda: stats(frame)["width"] == 768, message="a 768 px frame")


def test_values_switch_between_arrays_frames_and_variables(session):
    frame, live = session["frame"], session["live"]
    frame.check("input[name=values][value=frames]")
    config_becomes(live, "values", "frames")
    height, width = TRAINER_FRAME_SHAPE
    wait_for(
        lambda: (s := stats(frame))["values"] == "frames" and (s["width"], s["height"]) == (width, height),
        message="the trainer's 2-D frame",
    )
    wait_for(lambda: not frame.query_selector_all(".section-info"), message="no section info")
    frame.check("input[name=values][value=trainable_variables]")
    config_becomes(live, "values", "trainable_variables")
    # The trainer passes no variables: the placeholder explains what to pass.
    wait_for(lambda: stats(frame)["values"] == "placeholder", message="the placeholder")
    frame.check("input[name=values][value=arrays]")
    config_becomes(live, "values", "arrays")
    wait_for(lambda: stats(frame)["values"] == "arrays", message="arrays again")


def test_fps_zero_stops_new_frames(session):
    frame, live = session["frame"], session["live"]
    set_slider(frame, "#fps", 0)
    config_becomes(live, "FPS", 0)
    assert frame.inner_text("#fps-value") == "0"
    time.sleep(1.0)  # a frame already being written may still arrive
    frozen = stats(frame)["frameId"]
    on_disk = read_frame_file(live).header["frame_id"]
    time.sleep(2.0)
    assert stats(frame)["frameId"] == frozen
    assert read_frame_file(live).header["frame_id"] == on_disk
    set_slider(frame, "#fps", 30)
    config_becomes(live, "FPS", 30)
    assert frames_after(frame, 3)["frameId"] > frozen


def test_record_button_makes_an_mp4(session):
    frame, live = session["frame"], session["live"]
    frame.click("#record")
    config_becomes(live, "is_recording", True)
    wait_for(lambda: frame.inner_text("#record").lower() == "stop recording", message="the label")
    videos = wait_for(
        lambda: [v for v in glob.glob(os.path.join(plugin_dir(live), "video-*.mp4"))
                 if os.path.getsize(v) > 1000],
        timeout=30,
        message="an mp4 recording",
    )
    frames_after(frame, 10)
    frame.click("#record")
    config_becomes(live, "is_recording", False)
    wait_for(lambda: frame.inner_text("#record").lower() == "start recording", message="the label")
    with open(videos[0], "rb") as f:
        assert f.read(12)[4:8] == b"ftyp"


def test_download_saves_the_current_frame(session):
    page, frame = session["page"], session["frame"]
    with page.expect_download() as info:
        frame.click("#download")
    download = info.value
    assert download.suggested_filename.startswith("beholder-live-")
    image = Image.open(io.BytesIO(Path(download.path()).read_bytes()))
    assert image.format == "PNG"
    assert image.size == (768, LIVE_HEIGHT)


def test_run_selector_switches_runs(session):
    frame = session["frame"]
    frame.select_option("#run-select", "old")
    wait_for(lambda: (s := stats(frame))["run"] == "old" and s["height"] == OLD_HEIGHT,
             message="the old run's frame")
    # The old run's settings are shown, not the live one's (the frame and the run's settings are fetched
    # side by side: the toolbar follows when the settings arrive).
    assert read_config_file(session["logdir"] / "old")["colormap"] == "magma"
    wait_for(lambda: frame.eval_on_selector("#colormap", "el => el.value") == "magma",
             timeout=10, message="the old run's colormap in the toolbar")
    frame.select_option("#run-select", "live")
    wait_for(lambda: (s := stats(frame))["run"] == "live" and s["height"] == LIVE_HEIGHT,
             message="the live run again")
    wait_for(lambda: frame.eval_on_selector("#colormap", "el => el.value") == "grayscale",
             timeout=10, message="the live run's colormap in the toolbar")


def test_a_section_with_nothing_to_show_says_why_on_its_band(session):
    import numpy as np

    from beholder_plugin import Beholder

    frame = session["frame"]
    gaps = session["logdir"] / "gaps"
    set_config(gaps, values="arrays", mode="current", FPS=30)
    with Beholder(gaps, strict=True, background=False) as beholder:
        assert beholder.update(arrays={"frozen/grad": None, "w": np.arange(12.0).reshape(3, 4)})
    wait_for(lambda: "gaps" in frame.eval_on_selector_all("#run-select option", "os => os.map(o => o.value)"),
             timeout=30, message="the new run in the selector")
    frame.select_option("#run-select", "gaps")
    label = wait_for(lambda: frame.query_selector(".missing-label"), message="the label on the empty band")
    assert label.inner_text().startswith("frozen/grad: no array (None)")
    box = label.bounding_box()
    canvas = frame.query_selector("#frame").bounding_box()
    band = 32 * canvas["height"] / (32 + 5 + 128)  # the band's share of the frame's height on screen
    assert abs(box["y"] - canvas["y"]) < 1 and box["height"] == pytest.approx(band)
    note = frame.query_selector(".section-info.missing .missing-note")
    assert note.inner_text().startswith("no values: no array (None)")
    reason = note.get_attribute("title")
    assert reason.startswith("no array (None)")  # the whole reason on hover
    assert frame.query_selector("#missing-all").is_hidden()  # one section has values
    # No section has values, for one reason (Keras's fit() and gradients, say): said in full, once.
    nothing = session["logdir"] / "nothing"
    set_config(nothing, values="arrays", mode="current", FPS=30)
    with Beholder(nothing, strict=True, background=False) as beholder:
        assert beholder.update(arrays={"a/grad": None, "b/grad": None, "c/grad": None})
    runs = 'os => os.map(o => o.value)'
    wait_for(lambda: "nothing" in frame.eval_on_selector_all("#run-select option", runs),
             timeout=30, message="the run with nothing to show in the selector")
    frame.select_option("#run-select", "nothing")
    notice = wait_for(lambda: (e := frame.query_selector("#missing-all")) and e.is_visible() and e,
                      message="the notice that no section has values")
    text = notice.inner_text()
    assert text.startswith("None of the 3 sections has values to show: no array (None)"), text
    assert text.endswith(reason)
    frame.select_option("#run-select", "live")
    wait_for(lambda: (s := stats(frame))["run"] == "live" and s["height"] == LIVE_HEIGHT,
             message="the live run again")
    wait_for(lambda: frame.query_selector("#missing-all").is_hidden(), message="the notice gone with its run")


def test_screenshot_artifact(session):
    frame, page = session["frame"], session["page"]
    frame.select_option("#colormap", "magma")
    config_becomes(session["live"], "colormap", "magma")
    wait_for(lambda: not canvas_stats(frame, (0, 128))["gray"], message="magma frames")
    frames_after(frame, 3)
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "dashboard.png"
    page.screenshot(path=str(path))
    assert Image.open(path).size == (1400, 1000)


def test_reconnects_when_tensorboard_restarts(session):
    frame, tb = session["frame"], session["tb"]
    tb.stop()
    wait_for(lambda: frame.inner_text("#status").startswith("Not connected"), timeout=20,
             message="the status to say so")
    tb.start()
    wait_for(lambda: frame.inner_text("#status").startswith("Connected"), timeout=30,
             message="a reconnection")
    frames_after(frame, 3)
