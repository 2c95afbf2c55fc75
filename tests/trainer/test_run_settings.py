"""trainer/run_settings.py: the typed settings, and the readers that report a changed config.json."""

from __future__ import annotations

import pytest
from support import set_config

from beholder_plugin import DEFAULT_CONFIG
from beholder_plugin.protocol.files import LOCAL
from beholder_plugin.protocol.runfiles import read_config
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
