"""End to end: every place that shows a frame's numbers says what they are, in Chromium on a real TensorBoard.

A new user read a variance frame's "mean 1.4e-06" and its hover "0.weight [...] = 1.7e-7" as the
weights themselves. The caption above the frame and its info panel ("Arrays · variance over 15
frames"), the hover read-out ("variance of w [...]"), a kept frame drawn in another mode than the
one chosen now, and the compare view of a current run with a variance run now say so, from the
frame's own header. The empty tab's snippet is the README's quick start (watch(model)).
"""

from __future__ import annotations

import numpy as np
import pytest
from server_support import (
    BROWSER_MARKS,
    TensorBoard,
    beholder_frame,
    beholder_tab,
    open_run,
    set_config,
    shoot,
    wait_for,
)

from beholder_plugin import Beholder

pytestmark = BROWSER_MARKS

SWITCH_AFTER = 5  # the run "switched": frames 1-5 in variance mode, 6-10 in current mode


def write_frames(run, steps: int, seed: int, modes=None) -> None:
    """One trainer: a frame of arrays w (16 x 16) and b at each of `steps` update() calls; modes(step)
    gives the Mode each frame is drawn in (config.json is written before it), else the run's own."""
    rng = np.random.default_rng(seed)
    with Beholder(str(run), background=False) as beholder:
        for step in range(1, steps + 1):
            if modes is not None:
                set_config(run, values="arrays", mode=modes(step), FPS=30)
            beholder.frame_due_now()
            w = rng.normal(size=(16, 16)).astype(np.float32) * step
            beholder.update(arrays={"w": w, "b": np.linspace(0, step, 8, dtype=np.float32)})


def write_gradients(run) -> bool:
    """A small PyTorch convnet's gradients (watch(model)), three frames; False without PyTorch."""
    try:
        import torch
        from torch import nn
    except ImportError:
        return False
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    set_config(run, values="gradients", mode="current", FPS=30)
    with Beholder(str(run), background=False) as beholder:
        beholder.watch(model)
        for _ in range(3):
            optimizer.zero_grad()
            x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            beholder.frame_due_now()
            beholder.update()
    return True


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """Finished runs: "var" (variance over 15 of its 20 frames), "cur" (current values), "switched"
    (variance, then current: config.json says current) and "grads" (PyTorch gradients); the tab."""
    logdir = tmp_path_factory.mktemp("logs")
    set_config(logdir / "var", values="arrays", mode="variance", window_size=15, FPS=30)
    write_frames(logdir / "var", 20, seed=1)
    set_config(logdir / "cur", values="arrays", mode="current", FPS=30)
    write_frames(logdir / "cur", 3, seed=2)
    write_frames(logdir / "switched", 2 * SWITCH_AFTER, seed=3,
                 modes=lambda step: "variance" if step <= SWITCH_AFTER else "current")
    torch = write_gradients(logdir / "grads")
    with beholder_tab(logdir) as (tb, page, frame):
        yield {"page": page, "frame": frame, "url": tb.url, "torch": torch}




def caption(frame, want: str) -> str:
    """Wait until the caption above the frame reads `want`; its whole text (the kept-frame note too)."""
    wait_for(lambda: frame.is_visible("#frame-caption") and frame.inner_text("#frame-kind") == want,
             message=f"the caption {want!r} (it reads {frame.inner_text('#frame-kind')!r})")
    return frame.inner_text("#frame-caption")


def hover_text(frame, x: int, y: int) -> dict:
    """Hover frame pixel (x, y); the read-out's data attributes and text once it shows a value."""
    frame.hover("#run-select")
    frame.hover("#frame", position={"x": x + 0.5, "y": y + 0.5})
    script = "el => ({...el.dataset, text: el.innerText})"
    return wait_for(lambda: (r := frame.eval_on_selector("#readout", script)).get("step")
                    and r.get("y") == str(y) and r, message=f"the read-out of ({x}, {y})")


def test_the_caption_says_variance_or_current_values(session):
    """The info panel read "w ... mean 1.4e-06" with nothing saying it is a variance."""
    frame = open_run(session, "var")
    text = caption(frame, "Arrays · variance over 15 frames")
    assert frame.is_hidden("#kept-note")  # a live frame: no kept-frame note
    # Above the frame and its info panel, in one line.
    box, canvas = (frame.locator(s).bounding_box() for s in ("#frame-caption", "#frame"))
    assert box["y"] + box["height"] <= canvas["y"] + 1 and box["height"] < 30, text
    shoot(frame.page, "labels-variance-caption.png")
    frame = open_run(session, "cur")
    caption(frame, "Arrays · current values")


def test_the_hover_read_out_says_what_its_number_is(session):
    """The hover read "w [3, 4] = 1.7e-7": the variance, read as the value."""
    frame = open_run(session, "var")
    caption(frame, "Arrays · variance over 15 frames")
    found = hover_text(frame, 5, 5)
    assert found["kind"] == "variance of"
    assert found["text"].startswith("variance of w ["), found
    shoot(frame.locator("#readout"), "labels-hover-variance.png")
    frame = open_run(session, "cur")
    caption(frame, "Arrays · current values")
    found = hover_text(frame, 5, 5)
    assert found["text"].startswith("value of w ["), found


def test_gradients_are_named_in_the_caption_and_the_read_out(session):
    """Under Gradients, sections and hover were titled "0.weight", as the weights are."""
    if not session["torch"]:
        pytest.skip("PyTorch is not installed")
    frame = open_run(session, "grads")
    caption(frame, "Gradients · current values")
    found = hover_text(frame, 5, 5)
    assert found["name"] == "0.weight" and found["text"].startswith("gradient of 0.weight ["), found
    shoot(frame.page, "labels-gradients.png")


def test_a_kept_frame_drawn_in_another_mode_says_so(session):
    """A kept frame opened in variance while Mode said "current values", without a word."""
    frame = open_run(session, "switched")
    caption(frame, "Arrays · current values")
    frame.click("#live-toggle")
    wait_for(lambda: frame.evaluate("window.beholder.kept"), message="a kept frame on screen")
    caption(frame, "Arrays · current values")  # the newest kept frame: drawn as chosen
    assert frame.is_hidden("#kept-note")
    frame.eval_on_selector("#history-slider",  # the second kept frame: step 2, variance over 2 frames
                           "el => { el.value = '1'; el.dispatchEvent(new Event('input')); }")
    text = caption(frame, "Arrays · variance over 2 frames (of 15)")
    wait_for(lambda: frame.is_visible("#kept-note"), message="the kept-frame note")
    assert frame.inner_text("#kept-note") == "kept frame: Mode is now current values (for new frames)", text
    found = hover_text(frame, 5, 5)
    assert found["step"] == "2" and found["text"].startswith("variance of w ["), found
    shoot(frame.page, "labels-kept-frame.png")
    # Choosing variance now: the kept frame matches, the note goes.
    frame.check("input[name=mode][value=variance]")
    wait_for(lambda: frame.is_hidden("#kept-note"), message="no note once Mode matches the kept frame")
    frame.check("input[name=mode][value=current]")
    wait_for(lambda: frame.is_visible("#kept-note"), message="the note again")
    frame.click("#live-toggle")


def test_a_kept_frames_caption_keeps_its_own_window_when_a_live_table_comes(session):
    """A live trainer's newer section table, coming while a kept frame was on screen, gave the kept frame's
    caption the live window ("variance over 15 frames" on a frame drawn over 2)."""
    frame = open_run(session, "cur")
    texts = frame.evaluate("""async () => {
        const m = await import("./static/frame_caption.js");
        const caption = new m.FrameCaption();
        const kind = () => caption.text.textContent;
        caption.show({values: "arrays", mode: "variance", kept: true, frameId: 2, writer: "a"}, null);
        caption.noteTable({frame_id: 2, writer: "a", window: {frames: 2, size: 15}}, null);
        const own = kind();
        caption.noteTable({frame_id: 40, writer: "a", window: {frames: 15, size: 15}}, null);  // live
        const kept = kind();
        caption.show({values: "arrays", mode: "variance", kept: false, frameId: 41, writer: "a"}, null);
        caption.noteTable({frame_id: 42, writer: "a", window: {frames: 15, size: 15}}, null);  // newer
        return [own, kept, kind()];
    }""")
    assert texts == ["Arrays · variance over 2 frames (of 15)"] * 2 + ["Arrays · variance over 15 frames"]


def test_a_timeline_click_opens_a_kept_frame_with_the_note(session):
    """A Timeline click opened a variance frame while Mode said "current values"."""
    frame = open_run(session, "switched")
    frame.click("#view-timeline")
    canvas = wait_for(lambda: frame.query_selector('canvas.tl-spark[data-section="w"]'), message="the w row")
    box = canvas.bounding_box()
    x = box["x"] + (3 - 1) / (2 * SWITCH_AFTER - 1) * (box["width"] - 1)  # step 3 on the axis
    frame.page.mouse.click(x, box["y"] + box["height"] / 2)
    opened = wait_for(lambda: frame.evaluate("window.beholderDebug.timeline()").get("opened"),
                      message="a kept frame opened")
    assert opened["step"] <= SWITCH_AFTER, opened
    caption(frame, f"Arrays · variance over {opened['step']} frames (of 15)")
    wait_for(lambda: frame.is_visible("#kept-note"), message="the kept-frame note")
    assert "Mode is now current values" in frame.inner_text("#kept-note")
    shoot(frame.page, "labels-timeline-click.png")
    frame.click("#live-toggle")


def test_compare_says_when_a_and_b_hold_other_modes(session):
    """Compare showed A (current values) beside B (variance) with no note."""
    frame = open_run(session, "cur")
    frame.select_option("#compare-select", "var")
    modes = wait_for(lambda: frame.evaluate("window.beholderDebug.compare()")["modes"],
                     message="the modes note")
    assert modes.startswith("A shows current values and B variance over 15 frames"), modes
    assert frame.is_visible("#compare-modes")
    assert frame.inner_text("#compare-a .cmp-kind") == "Arrays · current values"
    assert frame.inner_text("#compare-b .cmp-kind") == "Arrays · variance over 15 frames"
    shoot(frame.page, "labels-compare-modes.png")
    frame.select_option("#compare-select", "switched")  # current values too: nothing to flag
    wait_for(lambda: "switched" in frame.inner_text("#compare-b")
             and frame.evaluate("window.beholderDebug.compare()")["rows"], message="B is switched")
    assert frame.evaluate("window.beholderDebug.compare()")["modes"] == ""
    assert frame.is_hidden("#compare-modes")
    frame.select_option("#compare-select", "")


def test_the_empty_tab_shows_the_readme_quick_start(session, tmp_path):
    """The empty tab suggested Beholder("logs/run1", variables=model): no gradients, no activations."""
    logdir = tmp_path / "logs"
    logdir.mkdir()
    tb = TensorBoard(logdir, tmp_path / "tensorboard.log")
    tb.start()
    try:
        page = session["page"]  # (one Playwright per process: the module's page, on this TensorBoard)
        page.goto("about:blank")
        page.goto(tb.url + "/#beholder")
        frame = beholder_frame(page)
        wait_for(lambda: frame.is_visible("#welcome"), message="the welcome page")
        code = frame.inner_text("#welcome-code")
        assert "beholder.watch(model)" in code and 'Beholder("logs/run1")' in code
        assert "variables=model" not in code
        assert "beholder.update()" in code
        assert 'callbacks=[BeholderCallback("logs/run1")]' in frame.inner_text("#welcome-keras")
        where = wait_for(lambda: frame.is_visible("#welcome-logdir") and frame.inner_text("#welcome-logdir"),
                         message="the logdir named")
        assert where.startswith(f"TensorBoard watches {logdir}:")  # (the snippets' "logs" is an example)
        shoot(frame.locator("#welcome"), "labels-welcome.png")
    finally:
        tb.stop()
