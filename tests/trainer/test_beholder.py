"""trainer/beholder.py: the front: when frames fall due (its clock), frames, placeholders and failures."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from support import due, set_config

from beholder_plugin import DEFAULT_CONFIG, Beholder, read_config, read_frame, read_section_info
from beholder_plugin.protocol.layout import RenderError
from beholder_plugin.protocol.runfiles import config_path, read_frame_file
from beholder_plugin.trainer.beholder import CONFIG_CHECK_SECONDS

pytestmark = pytest.mark.usefixtures("flushed_updates")



def test_fps_zero_computes_nothing_and_fps_throttles(run_dir):
    set_config(run_dir, values="arrays", FPS=0)
    clock = FakeClock()
    beholder = Beholder(run_dir, strict=True, clock=clock.monotonic)
    assert not beholder.update(arrays=[np.ones(3)])
    assert read_frame_file(run_dir) is None
    set_config(run_dir, values="arrays", FPS=1)
    # A paused run looks at config.json at most every CONFIG_CHECK_SECONDS (no stat() per step).
    assert not beholder.update(arrays=[np.ones(3)])
    clock.now += CONFIG_CHECK_SECONDS
    assert beholder.update(arrays=[np.ones(3)])
    assert not beholder.update(arrays=[np.ones(3)])  # within a second of the last frame
    assert beholder.frames_written == 1


def test_an_rgb_frame_is_shown_as_is(run_dir):
    set_config(run_dir, values="frames", FPS=30)
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    beholder = Beholder(run_dir, strict=True)
    beholder.update(frame=image)
    np.testing.assert_array_equal(read_frame(run_dir), image)


@pytest.mark.parametrize("values", ["arrays", "frames", "trainable_variables"])
def test_a_missing_input_shows_a_placeholder_saying_what_to_pass(run_dir, values):
    set_config(run_dir, values=values, FPS=30)
    beholder = Beholder(run_dir, strict=True)
    assert beholder.update()
    stored = read_frame_file(run_dir)
    assert stored.header["values"] == "placeholder"
    gray = stored.rgb()[:, :, 0]
    assert gray.shape == (128, 768)
    assert 0.005 < (gray > 128).mean() < 0.3  # white text on black, not a blank image
    assert read_section_info(run_dir) == []


def test_failures_are_logged_once_and_counted_unless_strict(run_dir, caplog):
    set_config(run_dir, values="arrays", FPS=30)
    beholder = Beholder(run_dir)
    with caplog.at_level(logging.ERROR, logger="beholder"):
        for _ in range(3):
            due(beholder)
            assert beholder.update(arrays={}) is False
    assert beholder.failures == 3
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert "no arrays to show" in str(errors[0].exc_info[1])
    strict = Beholder(run_dir, strict=True)
    with pytest.raises(RenderError, match="no arrays to show"):
        strict.update(arrays={})


def test_variance_history_restarts_when_values_mode_or_show_all_change(run_dir):
    set_config(run_dir, values="arrays", mode="variance", FPS=30)
    beholder = Beholder(run_dir, strict=True)
    for value in (0.0, 10.0):
        beholder.update(arrays=[np.array([value, 0.0])])
        due(beholder)
    assert read_section_info(run_dir)[0]["max"] == 25.0  # var of (0, 10)
    set_config(run_dir, values="arrays", mode="variance", FPS=30, show_all=True)
    beholder.update(arrays=[np.array([20.0, 0.0])])
    assert read_section_info(run_dir)[0]["max"] == 0.0  # one sample after the reset


def test_numpy_only_run_never_imports_a_framework(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "keras", "torch", "jax"):
                    raise ImportError("blocked for this test: " + name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        from beholder_plugin import Beholder, read_frame, write_config, DEFAULT_CONFIG
        run = sys.argv[1]
        write_config(run, {**DEFAULT_CONFIG, "values": "arrays", "FPS": 30})
        b = Beholder(run, strict=True)
        assert b.update(arrays={"w": np.ones((4, 4)), "b": np.arange(4.0)})
        b.flush()
        print(read_frame(run).shape, sorted(m for m in sys.modules if m.split(".")[0] in
              ("tensorflow", "keras", "torch", "jax")))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(261, 768, 3) []"


def test_a_call_with_no_frame_due_looks_at_config_json_at_most_every_quarter_second(run_dir, monkeypatch):
    import builtins

    set_config(run_dir, values="arrays", FPS=1)
    clock = FakeClock()
    beholder = Beholder(run_dir, strict=True, clock=clock.monotonic)
    assert beholder.update(arrays=[np.ones(3)])  # reads the config, renders
    stats, opens = [], []
    real_stat, real_open = os.stat, builtins.open
    monkeypatch.setattr(os, "stat", lambda *a, **k: stats.append(a) or real_stat(*a, **k))
    monkeypatch.setattr(builtins, "open", lambda *a, **k: opens.append(a) or real_open(*a, **k))
    for _ in range(50):
        assert not beholder.update(arrays=[np.ones(3)])  # no frame due within the second
    calls_soon = len(stats)
    clock.now += CONFIG_CHECK_SECONDS
    for _ in range(50):
        assert not beholder.update(arrays=[np.ones(3)])
    monkeypatch.undo()
    assert calls_soon == 0 and len(stats) == 1 and opens == []


class FakeClock:
    """A clock the test moves by hand (monotonic and wall time together)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


@pytest.mark.parametrize("step", [0.024, 0.07, 0.13])
def test_frames_keep_the_set_rate_whatever_the_step_time(run_dir, step):
    """Frames fall due on a fixed grid: at 10 per second with 70 ms steps, 10 a second (not one every
    140 ms, as when each interval started at the step that took the last frame); a trainer slower than
    the rate gets a frame every step."""
    clock = FakeClock()
    set_config(run_dir, values="arrays", FPS=10)
    taken = 0
    with Beholder(run_dir, background=False, strict=True, clock=clock.monotonic) as beholder:
        for _ in range(int(20 / step)):  # 20 s of training
            clock.now += step
            taken += beholder.update(arrays=[np.ones(3, np.float32)])
    assert taken == pytest.approx(min(200, 20 / step), abs=2)


def test_a_failing_update_writes_a_frame_saying_so_at_once(run_dir):
    """Every update() fails: the run still gets a frame at once, with the failure count and the error."""
    set_config(run_dir, values="arrays", FPS=30)
    beholder = Beholder(run_dir)
    assert beholder.update(arrays={}) is False  # "there are no arrays to show"
    beholder.flush()
    stored = read_frame_file(run_dir)
    assert stored is not None and stored.header["values"] == "placeholder"
    assert stored.header["failures"] == 1 and "no arrays to show" in stored.header["last_error"]
    gray = stored.rgb()[:, :, 0]
    assert 0.005 < (gray > 128).mean() < 0.3  # the message, in white
    assert beholder.update(arrays={}) is False  # at most one such frame a second
    beholder.flush()
    assert read_frame_file(run_dir).header["frame_id"] == stored.header["frame_id"]
    beholder.close()


def test_frame_due_now_makes_the_next_update_take_a_frame(run_dir):
    set_config(run_dir, values="arrays", FPS=1)
    clock = FakeClock()
    with Beholder(run_dir, strict=True, background=False, clock=clock.monotonic) as beholder:
        assert beholder.update(arrays=[np.ones(3)])
        assert not beholder.update(arrays=[np.ones(3)])  # the clock stands still: no frame due
        beholder.frame_due_now()
        assert beholder.update(arrays=[np.ones(3)]) and beholder.frames_written == 2
        assert beholder.step == 3 and read_frame_file(run_dir).header["step"] == 3


def test_watched_is_the_model_watch_shows(run_dir):
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(3, 2)
    with Beholder(run_dir, strict=True) as beholder:
        assert beholder.watched is None
        handle = beholder.watch(model)
        assert beholder.watched is not None and beholder.watched.model is model
        handle.remove()
        assert beholder.watched is None


def test_the_constructor_creates_the_run_and_keeps_an_existing_config(tmp_path):
    fresh = str(tmp_path / "fresh")
    Beholder(fresh).close()
    assert read_config(fresh) == DEFAULT_CONFIG and os.path.isfile(config_path(fresh))
    kept = str(tmp_path / "kept")
    set_config(kept, FPS=3, colormap="viridis")
    Beholder(kept).close()
    assert read_config(kept)["FPS"] == 3 and read_config(kept)["colormap"] == "viridis"


def test_a_frame_of_too_many_sections_for_their_heights_shows_them_all_shorter(run_dir, caplog):
    """3,000 sections at 128 px pass the pixels a reader takes (2**28): no frame was ever written, and
    the dashboard waited for one. Each is now cut to the one height that fits, and readers read it."""
    from server_support import BASE, plugin_client

    from beholder_plugin.protocol.frame_checks import MAX_FRAME_PIXELS
    from beholder_plugin.protocol.layout import locate

    set_config(run_dir, values="arrays", mode="current", FPS=30)
    rng = np.random.default_rng(3)
    arrays = {f"layer{i // 3}/expert{i % 3}": rng.normal(size=(8, 4)).astype(np.float32) for i in range(3000)}
    with caplog.at_level(logging.WARNING, logger="beholder"):
        with Beholder(run_dir, strict=True) as beholder:
            assert beholder.update(arrays=arrays)
    assert "3000 sections are too many for one frame" in caplog.text
    frame = read_frame_file(run_dir)
    assert len(frame.sections) == 3000 and frame.width * frame.height <= MAX_FRAME_PIXELS
    # 3000 x 111 + 2999 x 5 = 347,995 rows of the 349,525 a reader takes at 768 wide
    assert {rec["height"] for rec in frame.sections} == {111}
    _, client = plugin_client(os.path.dirname(run_dir))
    run = os.path.basename(run_dir)
    for i in (0, 1777, 2999):
        rec = frame.sections[i]
        y = rec["top"] + rec["height"] - 1
        where = locate(frame.sections, frame.width, frame.width - 1, y)
        assert where["name"] == rec["name"]
        got = client.get(f"{BASE}/value", query_string={"run": run, "x": frame.width - 1, "y": y}).get_json()
        assert got["value"] == float(arrays[rec["name"]][tuple(where["index"])])


def test_a_layout_for_a_section_not_passed_is_told_once_and_the_frame_still_comes(run_dir, caplog):
    """One dict of layouts for arrays some steps pass and others do not: a name not passed failed the
    whole frame; it is told once (a typo shows there) and the frame shows what was passed."""
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    layouts = {"conv": "kernel_hwio", "head": "matrix"}
    with caplog.at_level(logging.WARNING, logger="beholder"):
        with Beholder(run_dir, strict=True) as beholder:
            for _ in range(2):
                beholder.frame_due_now()
                assert beholder.update(arrays={"conv": np.ones((3, 3, 2, 4))}, layout=layouts)
                beholder.flush()
    assert caplog.text.count("layout= names sections that were not passed, ignored: head") == 1
    frame = read_frame_file(run_dir)
    assert [(rec["name"], rec["layout"]) for rec in frame.sections] == [("conv", "kernel_hwio")]


def test_the_host_variance_window_is_cut_to_its_byte_budget(run_dir, monkeypatch):
    """show_all of four 4096 x 4096 arrays in variance mode took 4 GB: window_size samples and 7 work
    buffers of the frame's values, with no bound. The window is cut to what HOST_WINDOW_BYTES holds (the
    header says its length), down to 2 frames, and frames keep coming. Scaled down here."""
    from beholder_plugin.trainer.views import render

    values = np.arange(4096.0).reshape(64, 64)  # (4096 values shown: 64 x 64 fits the frame whole)
    monkeypatch.setattr(render, "HOST_WINDOW_BYTES", (3 + 7) * 4 * 4096)
    set_config(run_dir, values="arrays", mode="variance", FPS=30, window_size=15)
    with Beholder(run_dir, strict=True) as beholder:
        windows = []
        for step in range(5):
            beholder.frame_due_now()
            assert beholder.update(arrays={"w": values * step})
            beholder.flush()
            windows.append(read_frame_file(run_dir).header["window"])
        assert windows == [{"frames": n, "size": 3} for n in (1, 2, 3, 3, 3)]
        truth = np.var([values * s for s in (2, 3, 4)], axis=0)  # (the last three frames')
        np.testing.assert_allclose(read_frame_file(run_dir).section_values(0), truth, rtol=1e-5)
        monkeypatch.setattr(render, "HOST_WINDOW_BYTES", 1)  # not even 2 fit: 2 all the same
        for step in range(3):
            beholder.frame_due_now()
            assert beholder.update(arrays={"w": values * step})
            beholder.flush()
        assert read_frame_file(run_dir).header["window"] == {"frames": 2, "size": 2}
        assert beholder.failures == 0
