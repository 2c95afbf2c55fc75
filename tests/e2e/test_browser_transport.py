"""End to end: "sections" frames drawn in Chromium from the frame-data route equal the PNG, pixel for pixel.

One TensorBoard, one trainer and one page, shared; the tests run in file order.
"""

from __future__ import annotations

import base64
import io
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image
from server_support import (
    BASE,
    BROWSER_MARKS,
    TRAINER_FRAME_SHAPE,
    Trainer,
    live_dashboard,
    read_config_file,
    set_config,
    wait_for,
)
from server_support import dashboard_stats as stats

from beholder_plugin import Beholder
from beholder_plugin.protocol.colormaps import palette_for
from beholder_plugin.protocol.layout import LAYOUTS, compact_map, resize_indices
from beholder_plugin.protocol.runfiles import read_frame_file

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A trainer writing a run of four sections, TensorBoard, and the dashboard in Chromium."""
    with live_dashboard(tmp_path_factory.mktemp("logs")) as found:
        yield found


def config_becomes(session, key: str, value) -> None:
    """Wait until config.json on disk holds key = value and no settings change is pending."""
    wait_for(lambda: read_config_file(session["live"])[key] == value
             and not stats(session["frame"])["configBusy"], timeout=10, message=f"{key}={value}")


def canvas_pixels(frame) -> tuple[np.ndarray, dict]:
    """The canvas as (H, W, 3) RGB (through a lossless PNG data URL), and the stats at that moment."""
    found = frame.evaluate(
        "() => ({url: document.querySelector('#frame').toDataURL('image/png'), stats: {...window.beholder}})"
    )
    data = base64.b64decode(found["url"].split(",", 1)[1])
    rgba = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))
    assert (rgba[..., 3] == 255).all()
    return rgba[..., :3], found["stats"]


def served_png(session) -> tuple[Image.Image, dict]:
    """The /frame PNG of the live run, and its headers."""
    with urllib.request.urlopen(f"{session['tb'].url}{BASE}/frame?run=live", timeout=10) as resp:
        return Image.open(io.BytesIO(resp.read())), dict(resp.headers)


def freeze(session) -> dict:
    """Stop the trainer (FPS 0) and wait until the dashboard shows the last frame it wrote."""
    frame = session["frame"]
    frame.eval_on_selector(
        "#fps",
        """el => { el.value = '0'; el.dispatchEvent(new Event('input', {bubbles: true}));
                   el.dispatchEvent(new Event('change', {bubbles: true})); }""",
    )
    config_becomes(session, "FPS", 0)

    time.sleep(1.0)  # a frame the trainer had already begun may still arrive

    def settled() -> dict | None:
        on_disk = read_frame_file(session["live"]).header["frame_id"]
        s = stats(frame)
        return s if s["frameId"] == on_disk and s["transport"] == "data" else None

    return wait_for(settled, timeout=20, message="the trainer's last frame on screen")


def unfreeze(session) -> None:
    """FPS back to 30."""
    session["frame"].eval_on_selector(
        "#fps",
        """el => { el.value = '30'; el.dispatchEvent(new Event('input', {bubbles: true}));
                   el.dispatchEvent(new Event('change', {bubbles: true})); }""",
    )
    config_becomes(session, "FPS", 30)


def test_resize_rule_in_the_browser_is_layout_resize_indices(session):
    rng = np.random.default_rng(3)
    pairs = [(112, 768), (30, 768), (1500, 1500), (5000, 768), (1, 128), (3, 7)]
    pairs += [(int(a), int(b)) for a, b in zip(rng.integers(1, 6000, 200), rng.integers(1, 3000, 200))]
    found = session["frame"].evaluate(
        """async (pairs) => {
          const m = await import(new URL('/data/plugin/beholder/static/framedata.js', location.href).href);
          return pairs.map(([s, d]) => [Array.from(m.resizeIndices(s, d)), Array.from(m.compactMap(s, d))]);
        }""",
        pairs,
    )
    for (src, dst), (indices, compact) in zip(pairs, found):
        assert indices == resize_indices(src, dst).tolist(), (src, dst)
        assert compact == compact_map(src, dst).tolist(), (src, dst)


def test_live_frames_come_as_frame_data(session):
    frame = session["frame"]
    start = wait_for(lambda: (s := stats(frame))["framesReceived"] > 0 and s, message="a frame")
    s = wait_for(lambda: (s := stats(frame))["framesReceived"] >= start["framesReceived"] + 3 and s,
                 message="three more frames")
    assert s["transport"] == "data"
    assert s["colormap"] == "magma"
    assert (s["width"], s["height"]) == (768, 4 * 128 + 3 * 5)


@pytest.mark.parametrize("show_all", [False, True])
def test_canvas_equals_the_served_png_pixel_for_pixel(session, show_all):
    frame = session["frame"]
    if show_all:
        frame.check("#show-all")
        config_becomes(session, "show_all", True)
        wait_for(lambda: stats(frame)["width"] == 1500, message="a 1500 px wide frame")
    try:
        shown = freeze(session)
        pixels, at = canvas_pixels(frame)
        png, headers = served_png(session)
        assert headers["X-Beholder-Frame-Id"] == str(shown["frameId"]) == str(at["frameId"])
        assert at["transport"] == "data" and at["colormap"] == "magma"
        expected = np.asarray(png.convert("RGB"))
        assert pixels.shape == expected.shape == ((4 * 128 + 3 * 5), 1500 if show_all else 768, 3)
        np.testing.assert_array_equal(pixels, expected)
        # Several colours in every section: a blank or one-colour canvas would not pass.
        for top in (0, 133, 266, 399):
            assert len(np.unique(pixels[top : top + 128].reshape(-1, 3), axis=0)) > 8
    finally:
        unfreeze(session)
        if show_all:
            frame.uncheck("#show-all")
            config_becomes(session, "show_all", False)
            wait_for(lambda: stats(frame)["width"] == 768, message="a 768 px frame")


def test_colormap_change_redraws_without_a_new_frame(session):
    frame = session["frame"]
    shown = freeze(session)
    try:
        png, headers = served_png(session)
        assert headers["X-Beholder-Frame-Id"] == str(shown["frameId"])
        indices = np.asarray(png)  # mode P: the palette indices
        assert png.mode == "P"
        for name in ("grayscale", "viridis"):
            frame.select_option("#colormap", name)
            wait_for(lambda n=name: stats(frame)["colormap"] == n, timeout=10, message=f"{name} drawn")
            pixels, at = canvas_pixels(frame)
            assert (at["frameId"], at["framesReceived"]) == (shown["frameId"], shown["framesReceived"])
            assert at["paints"] > shown["paints"]
            np.testing.assert_array_equal(pixels, palette_for(name).astype(np.uint8)[indices])
        config_becomes(session, "colormap", "viridis")
        assert read_frame_file(session["live"]).header["frame_id"] == shown["frameId"]  # no new frame
    finally:
        frame.select_option("#colormap", "magma")
        config_becomes(session, "colormap", "magma")
        unfreeze(session)


def test_user_frames_still_come_as_png(session):
    frame = session["frame"]
    frame.check("input[name=values][value=frames]")
    config_becomes(session, "values", "frames")
    height, width = TRAINER_FRAME_SHAPE
    wait_for(lambda: (s := stats(frame))["values"] == "frames" and s["transport"] == "png"
             and (s["width"], s["height"]) == (width, height), message="the trainer's 2-D frame as PNG")
    frame.check("input[name=values][value=arrays]")
    config_becomes(session, "values", "arrays")
    wait_for(lambda: (s := stats(frame))["values"] == "arrays" and s["transport"] == "data",
             message="arrays as frame data again")
    assert stats(frame)["colormap"] == "magma"


TALL_SECTIONS = 200
TALL_HEIGHT = TALL_SECTIONS * 128 + (TALL_SECTIONS - 1) * 5


def write_tall_frame(run, seed: int) -> None:
    """One frame of 200 sections of 128 rows (26,595 rows: fetched by viewport)."""
    rng = np.random.default_rng(seed)
    with Beholder(run, strict=True, background=False) as beholder:
        arrays = {f"layer{i:03d}": rng.normal(size=(20, 30)) for i in range(TALL_SECTIONS)}
        assert beholder.update(arrays=arrays)


def canvas_rows(frame, first: int, last: int) -> np.ndarray:
    """Rows first..last (inclusive) of the canvas as (rows, W, 3) RGB, read with getImageData."""
    found = frame.evaluate(
        """([first, last]) => {
          const canvas = document.querySelector('#frame');
          const data = canvas.getContext('2d').getImageData(0, first, canvas.width, last - first + 1).data;
          let text = '';
          for (let i = 0; i < data.length; i += 0x8000) {
            text += String.fromCharCode(...data.subarray(i, i + 0x8000));
          }
          return {rgba: btoa(text), width: canvas.width};
        }""",
        [first, last],
    )
    rgba = np.frombuffer(base64.b64decode(found["rgba"]), np.uint8)
    rgba = rgba.reshape(last - first + 1, found["width"], 4)
    assert (rgba[..., 3] == 255).all()
    return rgba[..., :3]


def show_run(frame, run: str, height: int) -> dict:
    """Pick a run in the dashboard and wait for a frame of that height."""
    wait_for(lambda: run in frame.eval_on_selector_all("#run-select option", "os => os.map(o => o.value)"),
             timeout=30, message=f"run {run} in the selector")
    frame.select_option("#run-select", run)
    return wait_for(lambda: (s := stats(frame))["run"] == run and s["height"] == height and s,
                    message=f"a frame of run {run}")


def back_to_live(frame) -> None:
    """Scroll to the top and show the shared live run again."""
    frame.evaluate("window.scrollTo(0, 0)")
    show_run(frame, "live", 4 * 128 + 3 * 5)


def test_tall_frames_are_fetched_around_the_screen(session):
    frame = session["frame"]
    tall = session["live"].parent / "tall"
    set_config(tall, values="arrays", mode="current", FPS=30, colormap="magma")
    write_tall_frame(tall, 1)
    first = show_run(frame, "tall", TALL_HEIGHT)
    assert first["rows"] is None  # the first frame of a run comes whole
    try:
        write_tall_frame(tall, 2)
        shown = wait_for(lambda: (s := stats(frame))["writer"] != first["writer"] and s,
                         message="the second frame (another writer)")
        first_row, last_row = (int(v) for v in shown["rows"].split("-"))
        assert first_row == 0 and 1000 < last_row < 3000  # the screen and one more below, not 26,595 rows
        png, _ = served_tall_png(session)
        np.testing.assert_array_equal(canvas_rows(frame, 0, last_row), png[: last_row + 1])
        # The bottom still shows frame 1 (not fetched): scrolling there fetches and paints frame 2's rows.
        bottom = TALL_HEIGHT - 200
        assert not np.array_equal(canvas_rows(frame, bottom, TALL_HEIGHT - 1), png[bottom:])
        frame.evaluate("window.scrollTo(0, document.scrollingElement.scrollHeight)")
        wait_for(lambda: (s := stats(frame))["rows"] and int(s["rows"].split("-")[1]) == TALL_HEIGHT - 1,
                 message="the bottom rows fetched")
        at = stats(frame)
        assert (at["writer"], at["frameId"]) == (shown["writer"], shown["frameId"])
        np.testing.assert_array_equal(canvas_rows(frame, bottom, TALL_HEIGHT - 1), png[bottom:])
    finally:
        back_to_live(frame)


# One section per layout: (shape, layout). "missing" is a None array (a labelled black band).
LAYOUT_CASES = {
    "scalar": ((), "scalar"),
    "vector": ((50,), "vector"),
    "matrix": ((40, 30), "matrix"),
    "matrix_out_in": ((30, 40), "matrix_out_in"),
    "kernel_hwio": ((3, 3, 4, 5), "kernel_hwio"),
    "kernel_hwoi": ((3, 3, 5, 4), "kernel_hwoi"),
    "kernel_oihw": ((5, 4, 3, 3), "kernel_oihw"),
    "kernel_iohw": ((4, 5, 3, 3), "kernel_iohw"),
    "activation_nhwc": ((2, 8, 8, 3), "activation_nhwc"),
    "activation_nchw": ((2, 3, 8, 8), "activation_nchw"),
    "conv1d": ((3, 4, 5), "kernel_hwio"),
    "grid": ((2, 3, 4, 5, 6), "grid"),
}


def test_every_layout_is_drawn_as_its_frame_data_says(session):
    frame = session["frame"]
    run = session["live"].parent / "layouts"
    set_config(run, values="arrays", mode="current", FPS=30, colormap="magma")
    rng = np.random.default_rng(11)
    arrays = {name: rng.normal(size=shape).astype(np.float32) for name, (shape, _) in LAYOUT_CASES.items()}
    arrays["missing"] = None
    with Beholder(run, strict=True, background=False) as beholder:
        assert beholder.update(arrays=arrays, layout={n: lay for n, (_, lay) in LAYOUT_CASES.items()})
    written = read_frame_file(run)
    assert {rec["layout"] for rec in written.sections} == set(LAYOUTS)
    try:
        shown = show_run(frame, "layouts", written.height)
        assert shown["frameId"] == written.header["frame_id"] and shown["transport"] == "data"
        np.testing.assert_array_equal(canvas_rows(frame, 0, written.height - 1), written.rgb())
    finally:
        back_to_live(frame)


def test_a_restarted_trainer_is_followed_and_drawn_exactly(session, tmp_path):
    frame = session["frame"]
    run = session["live"].parent / "restart"
    set_config(run, values="arrays", mode="current", FPS=30, colormap="magma")
    before = Trainer(run, log_path=str(tmp_path / "before.log")).start()
    try:
        show_run(frame, "restart", 4 * 128 + 3 * 5)
        # (show_run can return on the live run's last frame, of the same height, still in the counters:
        # counting 20 frames from its id waited until this run's ids passed it, seconds more)
        old_writer = wait_for(lambda: read_frame_file(run).header["writer"],
                              message="the first trainer's frame")
        first = wait_for(lambda: (s := stats(frame))["writer"] == old_writer and s,
                         message="a frame of the first trainer drawn")
        wait_for(lambda: (s := stats(frame))["writer"] == old_writer
                 and s["frameId"] >= first["frameId"] + 20, message="frames of the first trainer")
    finally:
        before.stop()
    assert read_frame_file(run).header["writer"] == old_writer
    after = Trainer(run, log_path=str(tmp_path / "after.log")).start()
    try:
        wait_for(lambda: (s := stats(frame))["writer"] != old_writer and s["frameId"] >= 3,
                 message="frames of the restarted trainer (another writer, ids from 1 again)")
    finally:
        after.stop()
    try:
        written = read_frame_file(run)
        assert written.header["writer"] != old_writer and written.header["frame_id"] < first["frameId"] + 20
        wait_for(lambda: (s := stats(frame))["frameId"] == written.header["frame_id"]
                 and s["writer"] == written.header["writer"], message="the restarted trainer's last frame")
        np.testing.assert_array_equal(canvas_rows(frame, 0, written.height - 1), written.rgb())
    finally:
        back_to_live(frame)


def served_tall_png(session) -> tuple[np.ndarray, dict]:
    """The tall run's /frame as (H, W, 3) RGB, and its headers."""
    with urllib.request.urlopen(f"{session['tb'].url}{BASE}/frame?run=tall", timeout=10) as resp:
        return np.asarray(Image.open(io.BytesIO(resp.read())).convert("RGB")), dict(resp.headers)
