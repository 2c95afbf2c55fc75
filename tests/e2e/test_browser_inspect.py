"""End to end: inspecting frames in the dashboard (hover, pins, history, export, status, zoom, settings).

A real TensorBoard, Debian's Chromium, and a trainer subprocess
(tests/inspect_trainer.py) writing three runs: "grid" (np.arange-filled arrays plus the
step, so every value is known exactly), "mnist" (a 28x28 image) and "tall"
(40 sections, a frame taller than the window). The tests share one page and
run in file order; the last one kills the trainer.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import time

import inspect_trainer
import numpy as np
import pytest
from inspect_trainer import TALL_SECTIONS, values_at
from PIL import Image
from server_support import (
    ARTIFACTS,
    BASE,
    BROWSER_MARKS,
    PYTHON,
    TensorBoard,
    Trainer,
    beholder_frame,
    chromium_page,
    frames_after,
    http_get,
    read_config_file,
    set_config,
    wait_for,
)
from server_support import (
    dashboard_stats as stats,
)

from beholder_plugin.protocol.history import parse_history_name
from beholder_plugin.protocol.runfiles import read_frame_file

pytestmark = BROWSER_MARKS

# Pixels of the grid run's frame (768 wide; grid in rows 0-127, kernel in rows 133-260).
HOVER_PIXELS = [(5, 5), (700, 100), (383, 64), (100, 140), (600, 250), (767, 260)]


class InspectTrainer(Trainer):
    """The Trainer helper, running tests/inspect_trainer.py instead of server_support's trainer."""

    def start(self) -> InspectTrainer:
        """Start the inspect trainer script."""
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen([PYTHON, inspect_trainer.__file__, *self.run_dirs],
                                     stdout=out, stderr=subprocess.STDOUT)
        if self.log_path:
            out.close()
        return self


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """TensorBoard over three runs written by the inspect trainer, and the Beholder tab in Chromium."""
    logdir = tmp_path_factory.mktemp("logs")
    runs = {name: logdir / name for name in ("grid", "mnist", "tall")}
    set_config(runs["grid"], values="arrays", mode="current", FPS=30)
    set_config(runs["mnist"], values="frames", mode="current", FPS=5)
    set_config(runs["tall"], values="arrays", mode="current", FPS=5)
    trainer = InspectTrainer(*runs.values(), log_path=str(logdir.parent / "trainer.log")).start()
    tb = TensorBoard(logdir, logdir.parent / "tensorboard.log")
    try:
        tb.start()
        for run in runs.values():
            wait_for(lambda run=run: read_frame_file(run), timeout=60, message=f"a frame of {run.name}")
        with chromium_page() as page:
            page.goto(tb.url + "/#beholder")
            frame = beholder_frame(page)
            frame.select_option("#run-select", "grid")
            wait_for(lambda: stats(frame)["run"] == "grid" and stats(frame)["height"] == 261,
                     message="the grid run's frame")
            yield {"logdir": logdir, "runs": runs, "tb": tb, "page": page, "frame": frame, "trainer": trainer}
    finally:
        trainer.stop()
        tb.stop()


def shoot(page, name: str) -> None:
    """Save a screenshot of the page under test-artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))


def readout(frame, selector: str) -> dict:
    """A read-out's data attributes and its text."""
    return frame.eval_on_selector(selector, "el => ({...el.dataset, text: el.innerText})")


def expected_value(name: str, index: list[int], step: int) -> np.float32:
    """What NumPy says the trainer's array `name` held at `index` on `step`."""
    return values_at(step)[name][tuple(index)]


def assert_exact(found: dict) -> None:
    """The read-out's value is exactly NumPy's value at the index (and step) the read-out shows."""
    index = [int(i) for i in found["index"].strip("[]").split(",")]
    want = expected_value(found["name"], index, int(found["step"]))
    assert np.float32(found["value"]) == want, found
    # The text shown reads back as the same float32.
    shown = found["text"].split(" = ")[1].split()[0]
    assert np.float32(shown) == want, found


def hover(frame, x: int, y: int, step: int | None = None) -> dict:
    """Move the mouse over frame pixel (x, y) (1:1 zoom) and wait for its read-out (of `step`, if given)."""
    frame.hover("#run-select")  # off the frame first, so that the read-out is of this hover
    frame.hover("#frame", position={"x": x + 0.5, "y": y + 0.5})
    return wait_for(
        lambda: (r := readout(frame, "#readout")).get("x") == str(x) and r.get("y") == str(y)
        and "step" in r and (step is None or r["step"] == str(step)) and r,
        message=f"the read-out of pixel ({x}, {y})",
    )


def canvas_rgb(frame) -> np.ndarray:
    """The frame canvas's pixels as an H x W x 3 array."""
    url = frame.eval_on_selector("#frame", "c => c.toDataURL('image/png')")
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    return np.asarray(image.convert("RGB"))


def test_hover_reads_back_exact_values(session):
    frame, page = session["frame"], session["frame"].page
    frames_after(frame, 2)
    seen_names = set()
    for x, y in HOVER_PIXELS:
        found = hover(frame, x, y)
        assert_exact(found)
        seen_names.add(found["name"])
    assert seen_names == {"grid", "kernel"}
    # Pixel (5, 5) shows grid[1, 0]: row floor(5 * 40/128), column floor(5 * 30/768).
    assert hover(frame, 5, 5)["index"] == "[1,0]"
    assert len(hover(frame, 100, 140)["index"].split(",")) == 4  # the kernel's own four axes
    # The crosshair goes through the hovered pixel, and the value has a place on the colour bar.
    cross = frame.eval_on_selector(".cross-x", "el => [el.hidden, parseFloat(el.style.top)]")
    assert cross == [False, 140.5]
    assert frame.is_visible("#readout .colorbar-marker")
    # A separator row shows no value.
    frame.hover("#frame", position={"x": 10.5, "y": 130.5})
    wait_for(lambda: "no array value" in readout(frame, "#readout")["text"], message="a separator read-out")
    hover(frame, 383, 64)
    shoot(page, "inspect-hover.png")


def test_the_frame_stays_put_when_the_pointer_enters_it(session):
    """The one-line hint above the frame became the taller read-out (with its colour bar) at the first
    hover, pushing the frame 25 px down under a still pointer: the read-out then named another pixel
    than the one pointed at, until the mouse moved again."""
    frame = session["frame"]
    frame.select_option("#run-select", "tall")  # (another run and back: the hint again, no read-out)
    wait_for(lambda: stats(frame)["run"] == "tall", message="the tall run")
    frame.select_option("#run-select", "grid")
    wait_for(lambda: stats(frame)["run"] == "grid" and stats(frame)["height"] == 261, message="the grid run")
    frame.hover("#run-select")
    assert "Point at the frame" in frame.inner_text("#readout")
    before = frame.eval_on_selector("#frame", "c => c.getBoundingClientRect().top")
    found = hover(frame, 5, 5)
    assert found["index"] == "[1,0]"
    assert frame.eval_on_selector("#frame", "c => c.getBoundingClientRect().top") == before
    frame.hover("#run-select")
    assert frame.eval_on_selector("#frame", "c => c.getBoundingClientRect().top") == before


def test_pins_follow_new_frames_and_go_away(session):
    frame, page = session["frame"], session["frame"].page
    for i, (x, y) in enumerate(HOVER_PIXELS[:4]):
        frame.click("#frame", position={"x": x + 0.5, "y": y + 0.5})
        wait_for(lambda i=i: "step" in readout(frame, f'[data-pin="{i + 1}"]'), message=f"pin {i + 1}")
    first = readout(frame, '[data-pin="1"]')
    assert_exact(first)
    # A fifth pin is refused; the four follow the live frames.
    frame.click("#frame", position={"x": 50.5, "y": 50.5})
    assert len(frame.query_selector_all(".readout.pin")) == 4
    later = wait_for(lambda: int((r := readout(frame, '[data-pin="1"]'))["step"]) > int(first["step"]) and r,
                     message="pin 1 to follow a newer frame")
    assert later["index"] == first["index"]
    assert later["value"] != first["value"]
    assert_exact(later)
    shoot(page, "inspect-pins.png")
    page.keyboard.press("Escape")
    assert len(frame.query_selector_all(".readout.pin")) == 3
    frame.click('[data-pin="2"]')
    assert len(frame.query_selector_all(".readout.pin")) == 2
    assert len(frame.query_selector_all(".pin-marker")) == 2
    frame.click(".pin-marker")
    page.keyboard.press("Escape")
    assert frame.query_selector_all(".readout.pin") == []


def test_scrubbing_shows_kept_frames_pixel_for_pixel(session):
    frame, page, tb = session["frame"], session["frame"].page, session["tb"]
    frame.click("#live-toggle")
    wait_for(lambda: stats(frame)["kept"], message="a kept frame on screen")
    assert frame.inner_text("#live-toggle") == "Live"
    last = int(frame.eval_on_selector("#history-slider", "el => el.max"))
    assert last > 5
    newest = stats(frame)["kept"]
    frame.focus("#live-toggle")
    for _ in range(4):
        page.keyboard.press("ArrowLeft")
    wait_for(lambda: frame.eval_on_selector("#history-slider", "el => el.value") == str(last - 4),
             message="the slider four frames back")

    def settled() -> str | None:
        """The kept frame on screen once it is the one the slider's label names (keys may be in flight)."""
        k = stats(frame)["kept"]
        if not k or k == newest:
            return None
        return k if f"step {parse_history_name(k).step} " in frame.inner_text("#history-label") else None

    kept = wait_for(settled, message="an earlier kept frame, labelled")
    entry = parse_history_name(kept)
    assert entry is not None and entry.step < parse_history_name(newest).step
    status, png = http_get(f"{tb.url}{BASE}/history/frame?run=grid&name={kept}")
    assert status == 200
    served = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert np.array_equal(canvas_rgb(frame), served)
    # The frame on screen does not move on while paused, and the inspector reads the kept frame.
    time.sleep(0.5)
    assert stats(frame)["kept"] == kept
    found = hover(frame, 700, 100, step=entry.step)
    assert_exact(found)
    shoot(page, "history-scrub.png")


def test_playback_and_export_of_a_range(session):
    frame, page = session["frame"], session["frame"].page
    last = int(frame.eval_on_selector("#history-slider", "el => el.max"))
    frame.select_option("#history-speed", "30")
    frame.click("#history-play")
    wait_for(lambda: frame.eval_on_selector("#history-slider", "el => el.value") == str(last)
             and frame.inner_text("#history-play") == "Play", message="playback to reach the newest frame")
    frame.focus("#history-slider")
    for _ in range(5):
        page.keyboard.press("ArrowLeft")
    wait_for(lambda: frame.eval_on_selector("#history-slider", "el => el.value") == str(last - 5),
             message="five frames back")
    frame.click("#export-from")
    assert "(6 frames)" in frame.inner_text("#export-range")
    frame.click("#export")
    wait_for(lambda: "Exported 6 frames" in frame.inner_text("#export-status"), timeout=60,
             message="the export")
    link = wait_for(lambda: frame.query_selector('#videos li[data-kind="export"] a'),
                    message="a download link")
    status, body = http_get(link.get_attribute("href"))
    assert status == 200 and body[4:8] == b"ftyp"
    assert link.get_attribute("download").startswith("export-step")
    shoot(page, "history-export.png")
    frame.click("#live-toggle")
    wait_for(lambda: not stats(frame)["paused"] and stats(frame)["kept"] is None, message="live again")
    frames_after(frame, 3)


def test_rapid_settings_changes_are_not_undone_by_late_replies(session):
    frame, page, grid = session["frame"], session["frame"].page, session["runs"]["grid"]
    assert frame.eval_on_selector("#fps", "el => el.value") == "30"
    frame.click("input[name=mode][value=variance]")
    frame.focus("#fps")
    for _ in range(8):
        page.keyboard.press("ArrowLeft")
    wait_for(lambda: stats(frame)["configBusy"] == 0, message="every settings request answered")
    assert frame.eval_on_selector("#fps", "el => el.value") == "22"
    assert frame.inner_text("#fps-value") == "22"
    on_disk = read_config_file(grid)
    assert (on_disk["FPS"], on_disk["mode"]) == (22, "variance")
    assert frame.is_checked("input[name=mode][value=variance]")
    shoot(page, "settings-race.png")
    frame.click("input[name=mode][value=current]")
    frame.eval_on_selector("#fps", """el => { el.value = '30';
        el.dispatchEvent(new Event('input', {bubbles: true}));
        el.dispatchEvent(new Event('change', {bubbles: true})); }""")
    wait_for(lambda: stats(frame)["configBusy"] == 0 and read_config_file(grid)["FPS"] == 30
             and read_config_file(grid)["mode"] == "current", message="the settings restored")


def test_labels_fit_every_framework(session):
    frame = session["frame"]
    text = frame.inner_text(".toolbar")
    for label in ("Trainable variables (model weights)", "Gradients", "Activations",
                  "Arrays passed to update(arrays=...)", "Image passed to update(frame=...)",
                  "variance over the last 15 frames rendered"):
        assert label in text, label
    assert "train steps" not in text
    assert "tf.trainable_variables()" in frame.get_attribute(
        "label.choice:has(input[value=trainable_variables])", "title")
    wait_for(lambda: frame.query_selector(".section-info .sample-note"), message="the statistics panel")
    assert frame.inner_text(".section-info .sample-note") == "over the shown sample"
    frame.click("input[name=values][value=gradients]")
    wait_for(lambda: read_config_file(session["runs"]["grid"])["values"] == "gradients", message="gradients")
    frame.click("input[name=values][value=arrays]")
    wait_for(lambda: read_config_file(session["runs"]["grid"])["values"] == "arrays", message="arrays again")


def test_trainer_failures_are_shown(session):
    frame = session["frame"]
    wait_for(lambda: frame.is_visible("#trainer-health"), message="the trainer's failures")
    text = frame.inner_text("#trainer-health")
    assert "1 failed update() call" in text and "last error:" in text
    assert read_frame_file(session["runs"]["grid"]).header["last_error"] in text


def test_fit_width_enlarges_a_small_frame(session):
    frame, page = session["frame"], session["frame"].page
    frame.select_option("#run-select", "mnist")
    wait_for(lambda: (s := stats(frame))["run"] == "mnist" and (s["width"], s["height"]) == (28, 28),
             message="the 28x28 frame")
    # at 1:1 zoom a small frame is already enlarged by a whole factor (test_browser_small_frames.py)
    assert frame.eval_on_selector("#frame", "el => el.getBoundingClientRect().width") % 28 == 0
    frame.select_option("#zoom", "fit")
    width = frame.eval_on_selector("#frame", "el => el.getBoundingClientRect().width")
    height = frame.eval_on_selector("#frame", "el => el.getBoundingClientRect().height")
    assert width > 28 * 20 and height == pytest.approx(width)
    assert frame.eval_on_selector("#frame", "el => getComputedStyle(el).imageRendering") == "pixelated"
    shoot(page, "fit-width.png")
    frame.select_option("#zoom", "1")


def test_toolbar_stays_in_view_over_a_tall_frame(session):
    frame, page = session["frame"], session["frame"].page
    frame.select_option("#run-select", "tall")
    tall = TALL_SECTIONS * 133 - 5
    wait_for(lambda: (s := stats(frame))["run"] == "tall" and s["height"] == tall, message="the tall frame")
    assert frame.evaluate("document.scrollingElement.scrollHeight") > tall
    frame.evaluate("window.scrollTo(0, document.scrollingElement.scrollHeight)")
    wait_for(lambda: frame.evaluate("window.scrollY") > tall - 2000, message="the page to scroll")
    assert frame.eval_on_selector(".toolbar", "el => el.getBoundingClientRect().top") == 0
    assert frame.eval_on_selector("#main-header", "el => el.getBoundingClientRect().top") == 0
    assert frame.eval_on_selector("#fps", "el => el.getBoundingClientRect().bottom") < 1000
    frame.click("#live-toggle")  # still usable down here
    wait_for(lambda: stats(frame)["paused"], message="paused")
    frame.click("#live-toggle")
    shoot(page, "sticky-toolbar.png")
    frame.evaluate("window.scrollTo(0, 0)")
    frame.select_option("#run-select", "grid")
    wait_for(lambda: (s := stats(frame))["run"] == "grid" and s["height"] == 261, message="the grid run")


def test_status_tells_fps_zero_from_a_stopped_trainer(session):
    frame, page, grid = session["frame"], session["frame"].page, session["runs"]["grid"]
    frames_after(frame, 2)
    frame.eval_on_selector("#fps", """el => { el.value = '0';
        el.dispatchEvent(new Event('input', {bubbles: true}));
        el.dispatchEvent(new Event('change', {bubbles: true})); }""")
    wait_for(lambda: read_config_file(grid)["FPS"] == 0, message="FPS 0 on disk")
    wait_for(lambda: "Trainer paused" in frame.inner_text("#status"), message="the paused status")
    assert "stopped" not in frame.inner_text("#status")
    assert frame.get_attribute("#status", "data-state") == "paused"
    shoot(page, "status-fps-zero.png")
    frame.eval_on_selector("#fps", """el => { el.value = '30';
        el.dispatchEvent(new Event('input', {bubbles: true}));
        el.dispatchEvent(new Event('change', {bubbles: true})); }""")
    frames_after(frame, 3)
    assert frame.inner_text("#status").startswith("Connected")
    session["trainer"].proc.kill()
    session["trainer"].proc.wait(10)
    stopped = "trainer stopped, or no longer calling update()?"  # (a killed trainer, or an idle kernel's)
    wait_for(lambda: stopped in frame.inner_text("#status"), timeout=60, message="the stopped status")
    status = frame.inner_text("#status")
    assert status.startswith("No frame for") and "Trainer paused" not in status
    assert frame.get_attribute("#status", "data-state") == "stale"
    shoot(page, "status-trainer-stopped.png")


# Every layout, each array filled with distinct values: (shape, layout passed to update()).
LAYOUT_CASES = {
    "hwio": ((3, 3, 2, 4), "hwio"),
    "oihw": ((4, 2, 3, 3), "oihw"),
    "nchw": ((2, 3, 6, 6), "nchw"),
    "out_in": ((5, 7), "out_in"),
    "vector": ((10,), None),
    "grid": ((3, 4, 5), None),
}


@pytest.mark.parametrize("mode,show_all", [("current", False), ("current", True), ("variance", False),
                                           ("variance", True)])
def test_hover_reads_every_layout_exactly_in_both_modes(session, mode, show_all):
    """The read-out equals the float32 the frame stores, which equals NumPy's value (or variance)."""
    from beholder_plugin import Beholder
    from beholder_plugin.protocol.frame_format import value_at
    from beholder_plugin.protocol.runfiles import frame_path

    frame = session["frame"]
    name = f"layouts-{mode}-{int(show_all)}"
    run = session["logdir"] / name
    set_config(run, values="arrays", mode=mode, show_all=show_all, FPS=30, window_size=3)
    history = []
    with Beholder(run, strict=True, background=False) as beholder:
        for i in range(3):  # three frames: the variance window is full
            arrays = {key: (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) * (1 + i * i))
                      for key, (shape, _) in LAYOUT_CASES.items()}
            history.append(arrays)
            beholder.frame_due_now()
            assert beholder.update(arrays=arrays, layout={k: v for k, (_, v) in LAYOUT_CASES.items() if v})
    written = read_frame_file(run)
    wait_for(lambda: name in frame.eval_on_selector_all("#run-select option", "os => os.map(o => o.value)"),
             timeout=30, message="the run in the selector")
    frame.select_option("#run-select", name)
    wait_for(lambda: (s := stats(frame))["run"] == name and s["height"] == written.height,
             message=f"{name}'s frame")
    checked = 0
    for rec in written.sections:
        for x in (2, written.width // 2 + 1, written.width - 3):
            y = rec["top"] + rec["height"] // 2
            found = hover(frame, x, y)
            stored = value_at(frame_path(run), x, y)
            index = json.loads(found["index"])
            assert found["name"] == rec["name"] and index == stored["index"], (found, stored)
            assert np.float32(found["value"]) == np.float32(stored["value"])  # exactly what was scaled
            assert np.float32(found["text"].split(" = ")[1].split()[0]) == np.float32(stored["value"])
            samples = np.stack([h[rec["name"]][tuple(index)] for h in history])
            want = samples[-1] if mode == "current" else np.var(samples)
            assert np.float32(found["value"]) == pytest.approx(want, rel=1e-5, abs=1e-6), (found, want)
            checked += 1
    assert checked == 3 * len(LAYOUT_CASES)
