"""Beholder.snapshot() and _repr_png_(): the current frame as an image, for notebooks without a server."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from support import due, set_config

from beholder_plugin import Beholder, read_frame
from beholder_plugin.protocol.runfiles import read_config, read_frame_file


@pytest.fixture
def beholder(run_dir):
    """A Beholder on a run set to show its arrays at 30 frames a second."""
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    b = Beholder(run_dir, strict=True)
    yield b
    b.close()


def test_before_any_frame_there_is_no_snapshot_and_no_png(beholder):
    assert beholder.snapshot() is None
    assert beholder._repr_png_() is None


def test_snapshot_waits_for_the_worker_and_equals_the_frame_file(beholder, run_dir):
    assert beholder.update(arrays={"w": np.arange(48.0).reshape(8, 6), "b": -np.arange(6.0)})
    image = beholder.snapshot()  # no flush() before: snapshot() does it
    assert isinstance(image, Image.Image)
    assert image.mode == "RGB"
    rgb = read_frame(run_dir)
    assert image.size == (rgb.shape[1], rgb.shape[0])
    assert np.array_equal(np.asarray(image), rgb)


def test_repr_png_decodes_to_the_latest_frame(beholder, run_dir):
    assert beholder.update(arrays={"w": np.arange(48.0).reshape(8, 6)})
    first = np.asarray(beholder.snapshot())
    due(beholder)
    assert beholder.update(arrays={"w": np.arange(48.0).reshape(8, 6) ** 2, "v": np.ones(5)})
    png = beholder._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert np.array_equal(decoded, read_frame(run_dir))
    assert decoded.shape != first.shape  # a second section: the second frame, not the first


def test_an_rgb_image_comes_back_pixel_for_pixel(run_dir):
    set_config(run_dir, values="frames", mode="current", FPS=30)
    image = np.zeros((40, 70, 3), np.uint8)
    image[..., 0] = np.arange(70, dtype=np.uint8) * 3
    image[..., 1] = np.arange(40, dtype=np.uint8)[:, None] * 5
    image[10:20, 30:50, 2] = 200
    with Beholder(run_dir, strict=True) as b:
        assert b.update(frame=image)
        shown = np.asarray(b.snapshot())
    assert shown.shape == image.shape
    assert np.array_equal(shown, image)


def test_a_beholder_that_writes_nothing_has_no_snapshot(run_dir, monkeypatch):
    monkeypatch.setenv("RANK", "1")  # not rank 0: with ranks="zero" this process writes nothing
    b = Beholder(run_dir)
    assert not b.active
    assert b.update(arrays=[np.ones(3)]) is False
    assert b.snapshot() is None
    assert b._repr_png_() is None


def test_the_notebook_example_snapshot_shows_the_arrays_it_passed(tmp_path):
    """docs/integration.md's notebook cell, Beholder(run, values="arrays"), on a new run: the arrays show."""
    run = str(tmp_path / "run1")
    beholder = Beholder(run, values="arrays")
    assert beholder.update(arrays={"conv1/grad": np.arange(12.0).reshape(3, 4)})
    assert beholder.snapshot() is not None
    assert read_frame_file(run).header["values"] == "arrays"
    beholder.close()
    # A rerun of the cell with another choice: the run's config.json takes it (the dashboard may change it)
    assert Beholder(run, values="frames").config["values"] == "frames"
    assert Beholder(run).config["values"] == "frames"  # without values=, the run's setting stands
    with pytest.raises(ValueError, match="values must be one of"):
        Beholder(str(tmp_path / "other"), values="weights")


def test_mode_starts_a_run_on_current_values_as_values_starts_it_on_a_choice(tmp_path):
    """Variance (the original's default) made a short script's frames near black, and only the dashboard
    could change it: mode= sets it from the script, written to config.json as values= is."""
    run = str(tmp_path / "run1")
    with Beholder(run, values="arrays", mode="current", strict=True) as beholder:
        assert beholder.update(arrays={"w": np.arange(6.0).reshape(2, 3)})
        beholder.flush()
        assert read_frame_file(run).header["mode"] == "current"
        assert beholder.config["mode"] == "current" and beholder.config["values"] == "arrays"
    assert read_config(run)["mode"] == "current"
    assert Beholder(run).config["mode"] == "current"  # without mode=, the run's setting stands
    assert Beholder(run, mode="variance").config["mode"] == "variance"  # with it, over the setting there
    assert read_config(run)["mode"] == "variance" and read_config(run)["values"] == "arrays"
    with pytest.raises(ValueError, match="mode must be one of current, variance, not 'mean'"):
        Beholder(str(tmp_path / "other"), mode="mean")
