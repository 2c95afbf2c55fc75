"""A first visit: an empty logdir shows how to start, then a read-only run appears.

Runs TensorBoard with --load_fast=false (the other test module uses the default flags).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from server_support import (
    ARTIFACTS,
    BROWSER_MARKS,
    TensorBoard,
    beholder_frame,
    beholder_tab,
    chromium_page,
    make_frames,
    wait_for,
)

from beholder_plugin.protocol.runfiles import plugin_dir

pytestmark = BROWSER_MARKS


def chattr(path, flag: str) -> bool:
    """Set or clear the immutable flag (root ignores permission bits, not this)."""
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


def test_welcome_page_then_a_read_only_run(tmp_path):
    logdir = tmp_path / "logs"
    logdir.mkdir()
    tb = TensorBoard(logdir, tmp_path / "tensorboard.log", extra_args=("--load_fast=false",))
    tb.start()
    try:
        with chromium_page() as page:
            page.goto(tb.url + "/#beholder")
            frame = beholder_frame(page)
            wait_for(lambda: frame.is_visible("#welcome"), message="the welcome page")
            code = frame.inner_text("#welcome-code")
            assert "from beholder_plugin import Beholder" in code
            assert "Beholder(" in code and "beholder.update(" in code
            assert len(code.strip().splitlines()) == 4  # the README's quick start: watch(model)
            assert not frame.is_visible("#stage")
            # No run yet: say so and how to start one, not that the run's directory is read-only.
            wait_for(lambda: frame.inner_text("#status").startswith("No runs yet"), message="the status")
            assert "Beholder(" in frame.inner_text("#status")
            assert frame.is_visible("#no-runs-note") and not frame.is_visible("#read-only-note")
            assert "cannot write" not in frame.inner_text("body")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "no-runs-yet.png"))

            # A run shows up whose directory TensorBoard cannot write to.
            make_frames(logdir / "run1", colormap="viridis")
            immutable = chattr(plugin_dir(logdir / "run1"), "+i")
            try:
                wait_for(lambda: frame.is_visible("#stage"), timeout=30, message="the live view")
                assert not frame.is_visible("#welcome")
                assert frame.eval_on_selector("#colormap", "el => el.value") == "viridis"
                if immutable:
                    wait_for(lambda: frame.is_disabled("#colormap"), message="disabled controls")
                    assert frame.is_disabled("#record")
                    assert frame.is_disabled("input[name=mode][value=current]")
                    assert frame.is_visible("#read-only-note")
                    assert not frame.is_visible("#no-runs-note")
                else:
                    assert frame.is_enabled("#colormap")
            finally:
                if immutable:
                    chattr(plugin_dir(logdir / "run1"), "-i")
    finally:
        tb.stop()


def test_a_logdir_inside_a_run_shows_the_tab_with_the_logdir_to_use(tmp_path):
    """TensorBoard started on a run's plugins/beholder/ folder: the Beholder tab is there (not under
    "inactive") and its welcome page says which --logdir to use instead."""
    logs = tmp_path / "logs"
    make_frames(logs / "run1")
    with beholder_tab(Path(plugin_dir(logs / "run1"))) as (_, page, frame):
        wait_for(lambda: frame.is_visible("#welcome-hint"), message="the hint")
        text = frame.inner_text("#welcome-hint")
        assert f"start TensorBoard with --logdir {logs} " in text and "inside the run" in text
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "logdir-inside-a-run.png"))
