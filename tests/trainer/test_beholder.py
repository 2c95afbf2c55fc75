"""Beholder.update(): naming, config on disk, throttling, frames, placeholders and failures."""

from __future__ import annotations

import json
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
from beholder_plugin.protocol.runfiles import config_path, plugin_dir, read_frame_file
from beholder_plugin.trainer.beholder import CONFIG_CHECK_SECONDS

pytestmark = pytest.mark.usefixtures("flushed_updates")



def test_a_missing_config_is_created_with_the_defaults(run_dir):
    beholder = Beholder(run_dir)
    beholder.update(arrays=[np.zeros(3)])
    with open(config_path(run_dir)) as f:
        doc = json.load(f)
    assert doc == {"version": 1, **DEFAULT_CONFIG}


def test_list_arrays_are_named_by_index_and_dict_arrays_by_key(run_dir):
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    beholder = Beholder(run_dir, strict=True)
    assert beholder.update(arrays=[np.arange(4.0), np.ones((2, 3))])
    assert [s["name"] for s in read_section_info(run_dir)] == ["0", "1"]
    due(beholder)
    assert beholder.update(arrays={"conv1/grad": np.arange(4.0), "dense/grad": np.ones((2, 3))})
    infos = read_section_info(run_dir)
    assert [s["name"] for s in infos] == ["conv1/grad", "dense/grad"]
    assert [s["shape"] for s in infos] == [[4], [2, 3]]
    frame = read_frame(run_dir)
    assert frame.shape == (128 + 5 + 128, 768, 3) and frame.dtype == np.uint8


def test_variables_are_named_from_a_dict_and_a_list(run_dir):
    set_config(run_dir, values="trainable_variables", mode="current", FPS=30)
    beholder = Beholder(run_dir, variables={"w": np.ones((3, 3)), "b": np.arange(3.0)}, strict=True)
    assert beholder.update()
    assert [s["name"] for s in read_section_info(run_dir)] == ["w", "b"]
    due(beholder)
    assert beholder.update(variables=[np.ones(2)])  # per-call override
    assert [s["name"] for s in read_section_info(run_dir)] == ["0"]


def test_array_likes_of_many_dtypes_render(run_dir):
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    beholder = Beholder(run_dir, strict=True)
    arrays = {
        "nested list": [[1, 2], [3, 4]],
        "bool": np.array([True, False, True]),
        "int8": np.arange(-3, 3, dtype=np.int8),
        "uint64": np.arange(5, dtype=np.uint64),
        "float16": np.linspace(0, 1, 7, dtype=np.float16),
        "scalar": np.float32(2.5),
        "strided view": np.arange(100.0).reshape(10, 10)[::2, ::3],
    }
    assert beholder.update(arrays=arrays)
    infos = {s["name"]: s for s in read_section_info(run_dir)}
    assert infos["nested list"]["max"] == 4.0 and infos["bool"]["max"] == 1.0
    assert infos["int8"]["min"] == -3.0 and infos["uint64"]["max"] == 4.0
    assert infos["float16"]["max"] == 1.0 and infos["scalar"]["mean"] == 2.5
    assert infos["strided view"]["max"] == 89.0 and infos["strided view"]["shape"] == [5, 4]


def test_a_huge_broadcast_view_is_never_copied_whole(run_dir):
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    huge = np.broadcast_to(np.arange(1000.0), (1000, 1000, 1000))  # 10^9 values, 8 KB of memory
    beholder = Beholder(run_dir, strict=True)
    assert beholder.update(arrays={"huge": huge})
    info = read_section_info(run_dir)[0]
    assert info["shape"] == [1000, 1000, 1000] and info["max"] == 999.0


def test_config_changes_on_disk_are_picked_up_on_the_next_update(run_dir):
    set_config(run_dir, values="arrays", mode="current", FPS=30, colormap="grayscale")
    beholder = Beholder(run_dir, strict=True)
    beholder.update(arrays=[np.array([0.0, 1.0])])
    assert tuple(read_frame(run_dir)[0, -1]) == (255, 255, 255)
    set_config(run_dir, values="arrays", mode="current", FPS=30, colormap="viridis")
    due(beholder)
    beholder.update(arrays=[np.array([0.0, 1.0])])
    assert tuple(read_frame(run_dir)[0, -1]) == (253, 231, 36)
    assert beholder.config["colormap"] == "viridis"


def test_a_corrupt_config_keeps_the_last_good_one_and_is_logged_once(run_dir, caplog):
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    beholder = Beholder(run_dir)
    assert beholder.update(arrays=[np.ones(3)])
    with open(config_path(run_dir), "w") as f:
        f.write('{"values": "arrays", "FPS": ')  # truncated
    with caplog.at_level(logging.WARNING, logger="beholder"):
        written = 0
        for _ in range(5):
            due(beholder)
            written += beholder.update(arrays=[np.ones(3)])
    assert written == 5  # still rendering with the last good config
    assert beholder.config["values"] == "arrays"
    complaints = [r for r in caplog.records if "config.json" in r.getMessage()]
    assert len(complaints) == 1
    set_config(run_dir, values="arrays", mode="current", FPS=0)
    due(beholder)
    assert not beholder.update(arrays=[np.ones(3)])  # the repaired file is read again
    assert beholder.failures == 0


def test_a_config_with_a_bad_value_is_refused_whole(run_dir):
    set_config(run_dir, values="arrays", mode="current", FPS=30, colormap="viridis")
    beholder = Beholder(run_dir)
    beholder.update(arrays=[np.ones(3)])
    with open(config_path(run_dir), "w") as f:
        json.dump({**DEFAULT_CONFIG, "colormap": "grayscale", "FPS": 99}, f)
    due(beholder)
    beholder.update(arrays=[np.ones(3)])
    assert beholder.config["colormap"] == "viridis" and beholder.config["FPS"] == 30


def test_unknown_keys_from_a_newer_version_are_ignored(run_dir):
    with open(os.path.join(run_dir, "x"), "w"):
        pass
    os.makedirs(plugin_dir(run_dir))
    with open(config_path(run_dir), "w") as f:
        json.dump({"version": 2, "values": "arrays", "mode": "current", "FPS": 30, "zoom": 3}, f)
    beholder = Beholder(run_dir, strict=True)
    assert beholder.update(arrays=[np.ones(3)])
    assert beholder.config["values"] == "arrays" and read_config(run_dir)["mode"] == "current"


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


def test_the_frame_callable_is_called_only_while_frames_are_shown(run_dir):
    calls = []

    def frame():
        calls.append(1)
        return np.arange(12.0).reshape(3, 4)

    set_config(run_dir, values="arrays", FPS=30)
    beholder = Beholder(run_dir, strict=True)
    beholder.update(arrays=[np.ones(3)], frame=frame)
    assert calls == []
    set_config(run_dir, values="frames", FPS=30)
    due(beholder)
    beholder.update(arrays=[np.ones(3)], frame=frame)
    assert calls == [1]
    stored = read_frame_file(run_dir)
    assert stored.header["values"] == "frames" and read_section_info(run_dir) == []
    gray = read_frame(run_dir)[:, :, 0]
    np.testing.assert_array_equal(gray, (np.arange(12.0).reshape(3, 4) * 255 / 11).astype(np.uint8))


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


def test_the_plugin_directory_is_recreated_when_deleted(run_dir):
    import shutil

    set_config(run_dir, values="arrays", FPS=30)
    beholder = Beholder(run_dir, strict=True)
    beholder.update(arrays=[np.ones(3)])
    shutil.rmtree(plugin_dir(run_dir))
    due(beholder)
    assert beholder.update(arrays=[np.ones(3)])
    assert read_frame(run_dir) is not None and os.path.exists(config_path(run_dir))


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


def test_a_config_nested_too_deeply_is_survived_like_any_bad_file(run_dir, caplog):
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    beholder = Beholder(run_dir, strict=True)
    assert beholder.update(arrays=[np.ones(3)])
    with open(config_path(run_dir), "w") as f:
        f.write("[" * 5000 + "]" * 5000)
    due(beholder)
    with caplog.at_level(logging.WARNING, logger="beholder"):
        assert beholder.update(arrays=[np.ones(3)])  # strict, yet nothing raised
    assert "nested too deeply" in caplog.text and beholder.config["values"] == "arrays"


def test_a_new_beholder_clears_temp_files_left_by_a_killed_one(run_dir):
    os.makedirs(plugin_dir(run_dir))
    leftover = os.path.join(plugin_dir(run_dir), ".frame.bin.12345-678.tmp")
    with open(leftover, "wb") as f:
        f.write(b"half a frame")
    os.utime(leftover, (0, 0))
    Beholder(run_dir)
    assert not os.path.exists(leftover)


def test_a_config_json_unreadable_from_the_start_still_gives_frames_at_the_default_rate(run_dir, caplog):
    """The idle shortcut in update() uses the rate of the settings in force, the defaults here."""
    os.makedirs(plugin_dir(run_dir))
    with open(config_path(run_dir), "w") as f:
        f.write('{"values": "arrays", ')  # cut short
    with caplog.at_level(logging.WARNING, logger="beholder"):
        beholder = Beholder(run_dir, strict=True)
    assert "keeping the last good settings" in caplog.text
    assert beholder.update(arrays=[np.ones(3)])  # a placeholder: the default values are weights
    due(beholder)  # 1 / FPS (10 by default): well within the quarter second between config looks
    assert beholder.update(arrays=[np.ones(3)])
    beholder.flush()
    assert beholder.config["FPS"] == DEFAULT_CONFIG["FPS"] and beholder.frames_written == 2


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


def test_a_placeholder_says_which_values_update_was_given_instead(run_dir):
    """Arrays passed while Values is on its default: the frame names them, for the dashboard to offer."""
    from beholder_plugin.trainer.views.placeholder import message

    set_config(run_dir, values="trainable_variables", FPS=30)
    with Beholder(run_dir, strict=True) as beholder:
        assert beholder.update(arrays={"w": np.ones(3)}, frame=np.eye(4))
    stored = read_frame_file(run_dir)
    assert stored.header["values"] == "placeholder"
    assert stored.header["offered"] == ["arrays", "frames"]
    text = message("trainable_variables", ("arrays", "frames"))
    assert 'Pick "Arrays" under Values' in text and "given arrays and a frame" in text
    set_config(run_dir, values="gradients", FPS=30)
    with Beholder(run_dir, strict=True) as beholder:
        assert beholder.update()  # nothing passed at all: nothing to offer, the usual advice
    assert read_frame_file(run_dir).header["offered"] == []


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
