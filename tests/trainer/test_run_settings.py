"""trainer/run_settings.py: the typed settings, and the readers that report a changed config.json."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
from support import due, set_config

from beholder_plugin import DEFAULT_CONFIG, Beholder, read_frame
from beholder_plugin.protocol.files import LOCAL
from beholder_plugin.protocol.runfiles import config_path, plugin_dir, read_config
from beholder_plugin.trainer.run_settings import LocalSettings, RunSettings


def test_the_typed_settings_are_config_json_s_dict_with_attributes():
    settings = RunSettings.from_config({**DEFAULT_CONFIG, "values": "arrays", "FPS": 4})
    assert settings.shown == "arrays" and settings.fps == 4 and settings.interval == 0.25
    assert settings.config == {**DEFAULT_CONFIG, "values": "arrays", "FPS": 4}
    assert settings.replace(fps=0).interval == float("inf")
    assert settings.restarts_window(settings.replace(mode="current"))
    assert not settings.restarts_window(settings.replace(colormap="viridis"))


def test_starting_settings_refuse_an_unknown_values_choice():
    assert RunSettings.starting().config == DEFAULT_CONFIG
    assert RunSettings.starting("frames").shown == "frames"
    with pytest.raises(ValueError, match="values must be one of"):
        RunSettings.starting("weights")


def test_a_local_reader_reports_a_changed_config_through_its_callback(run_dir):
    changes = []
    reader = LocalSettings(run_dir, LOCAL, RunSettings.starting(), lambda *change: changes.append(change),
                           lambda *args: None, lambda: True, lambda exc: None)
    reader.start()  # creates config.json with the settings in force: nothing changed
    assert changes == [] and read_config(run_dir) == DEFAULT_CONFIG
    set_config(run_dir, values="arrays", FPS=3)
    assert reader.poll().shown == "arrays" and reader.settings.fps == 3
    assert len(changes) == 1 and changes[0][0].shown == "trainable_variables" and changes[0][1].fps == 3
    reader.poll()  # the same stat: not read again, no change reported
    assert len(changes) == 1


def test_a_config_of_json_null_keeps_the_last_good_one_not_the_defaults(run_dir, caplog):
    """null read as 'no file': the defaults, so a paused run (FPS 0) resumed at 10 frames a second."""
    set_config(run_dir, values="arrays", mode="current", FPS=0)
    beholder = Beholder(run_dir)
    assert not beholder.update(arrays=[np.ones(3)])
    with open(config_path(run_dir), "w") as f:
        f.write("null")
    with caplog.at_level(logging.WARNING, logger="beholder"):
        beholder._settings_checked = float("-inf")  # (look at the file now)
        assert not beholder.update(arrays=[np.ones(3)])
    assert beholder.config["FPS"] == 0 and beholder.frames_written == 0
    assert "config.json holds JSON null, not an object" in caplog.text
    beholder.close()


@pytest.mark.usefixtures("flushed_updates")
def test_a_missing_config_is_created_with_the_defaults(run_dir):
    beholder = Beholder(run_dir)
    beholder.update(arrays=[np.zeros(3)])
    with open(config_path(run_dir)) as f:
        doc = json.load(f)
    assert doc == {"version": 1, **DEFAULT_CONFIG}


@pytest.mark.usefixtures("flushed_updates")
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


@pytest.mark.usefixtures("flushed_updates")
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


@pytest.mark.usefixtures("flushed_updates")
def test_a_config_with_a_bad_value_is_refused_whole(run_dir):
    set_config(run_dir, values="arrays", mode="current", FPS=30, colormap="viridis")
    beholder = Beholder(run_dir)
    beholder.update(arrays=[np.ones(3)])
    with open(config_path(run_dir), "w") as f:
        json.dump({**DEFAULT_CONFIG, "colormap": "grayscale", "FPS": 99}, f)
    due(beholder)
    beholder.update(arrays=[np.ones(3)])
    assert beholder.config["colormap"] == "viridis" and beholder.config["FPS"] == 30


@pytest.mark.usefixtures("flushed_updates")
def test_unknown_keys_from_a_newer_version_are_ignored(run_dir):
    with open(os.path.join(run_dir, "x"), "w"):
        pass
    os.makedirs(plugin_dir(run_dir))
    with open(config_path(run_dir), "w") as f:
        json.dump({"version": 2, "values": "arrays", "mode": "current", "FPS": 30, "zoom": 3}, f)
    beholder = Beholder(run_dir, strict=True)
    assert beholder.update(arrays=[np.ones(3)])
    assert beholder.config["values"] == "arrays" and read_config(run_dir)["mode"] == "current"


@pytest.mark.usefixtures("flushed_updates")
def test_the_plugin_directory_is_recreated_when_deleted(run_dir):
    import shutil

    set_config(run_dir, values="arrays", FPS=30)
    beholder = Beholder(run_dir, strict=True)
    beholder.update(arrays=[np.ones(3)])
    shutil.rmtree(plugin_dir(run_dir))
    due(beholder)
    assert beholder.update(arrays=[np.ones(3)])
    assert read_frame(run_dir) is not None and os.path.exists(config_path(run_dir))


@pytest.mark.usefixtures("flushed_updates")
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


@pytest.mark.usefixtures("flushed_updates")
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


@pytest.mark.usefixtures("flushed_updates")
@pytest.mark.parametrize("extra", [{f"k{i}": 0 for i in range(4000)}, {"k" * 30000: 0}, {"mode": "x" * 30000},
                                   {"version": "v" * 30000}])
def test_a_config_of_many_or_long_keys_or_values_logs_one_short_line(run_dir, extra, caplog):
    """4,000 unknown keys logged 4,000 lines at each change of config.json (78 ms in update(), 13 GB of
    log an hour with the file rewritten flat out), and a 30 KB key or value was quoted whole."""
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    beholder = Beholder(run_dir)
    with open(config_path(run_dir)) as f:
        doc = dict(json.load(f), **extra)
    with open(config_path(run_dir), "w") as f:
        json.dump(doc, f)
    with caplog.at_level(logging.WARNING, logger="beholder"):
        assert beholder.update(arrays=[np.ones(3)])
    lines = [r.getMessage() for r in caplog.records if config_path(run_dir) in r.getMessage()]
    assert len(lines) == 1 and len(lines[0]) < 500, (len(lines), len(lines[0]))
    assert beholder.config["mode"] == "current" and beholder.failures == 0



def test_a_config_rewritten_over_and_over_with_one_mistake_logs_it_once(run_dir, caplog):
    """A tool rewriting an invalid config.json ten times a second logged ten lines a second."""
    reader = LocalSettings(run_dir, LOCAL, RunSettings.starting(), lambda *change: None,
                           lambda *args: None, lambda: True, lambda exc: None)
    reader.start()
    good = read_config(run_dir)

    def rewrite(doc, stamp):
        with open(config_path(run_dir), "w") as f:
            f.write(doc if isinstance(doc, str) else json.dumps(doc))
        os.utime(config_path(run_dir), ns=(stamp, stamp))  # a new stat: read again
        reader.poll()

    with caplog.at_level(logging.WARNING, logger="beholder"):
        for i in range(5):
            rewrite(dict(good, colour=1, FPS=3), 10**9 * (i + 1))
        for i in range(5):
            rewrite('{"values": ', 10**9 * (i + 10))
        rewrite(good, 10**9 * 20)
        rewrite(dict(good, colour=1), 10**9 * 21)
    lines = [r.getMessage() for r in caplog.records if config_path(run_dir) in r.getMessage()]
    assert len(lines) == 3, lines  # the unknown key, the cut-short file, the unknown key once more
    assert "colour" in lines[0] and "keeping the last good" in lines[1] and "colour" in lines[2]
    assert reader.settings.fps == DEFAULT_CONFIG["FPS"]  # each good read was taken
