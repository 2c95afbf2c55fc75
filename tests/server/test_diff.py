"""GET diff: two runs' latest frames subtracted section by section, over HTTP to a real plugin."""

from __future__ import annotations

import io
import json
import os
import urllib.parse

import numpy as np
import pytest
from PIL import Image
from server_support import BASE, plugin_client, set_config

from beholder_plugin import Beholder
from beholder_plugin.protocol.layout import expand_sections
from beholder_plugin.protocol.runfiles import frame_path, read_frame_file
from beholder_plugin.server.diff import DIFF_PALETTE, difference_indices

# A - B of section "w" is D: every value from -2 to 2, so m = 2 and the indices are known exactly.
SIGNS = np.array([[1], [1], [1], [1], [-1], [-1], [1], [0]], dtype=np.float32)
D = np.array([[-2, -1, 0, 1, 2, 0]] * 8, dtype=np.float32) * SIGNS
W_B = np.arange(48, dtype=np.float32).reshape(8, 6) / np.float32(4)
KERNEL_B = np.linspace(-1, 1, 3 * 3 * 2 * 4, dtype=np.float32).reshape(3, 3, 2, 4)
A = {"w": W_B + D, "bias": np.arange(6, dtype=np.float32), "k": KERNEL_B * 3,
     "only_a": np.ones((3, 3), np.float32)}
B = {"w": W_B, "bias": np.arange(5, dtype=np.float32), "k": KERNEL_B, "only_b": np.zeros(4, np.float32)}
# 128 + rint(d * 127 / 2), ties to even: -2 -> 1, -1 -> 64, 0 -> 128, 1 -> 192, 2 -> 255.
INDEX_OF_D = {-2.0: 1, -1.0: 64, 0.0: 128, 1.0: 192, 2.0: 255}


def write_frames(run, arrays: dict, **config) -> None:
    """One frame of these arrays in current mode."""
    set_config(run, **{"values": "arrays", "mode": "current", "FPS": 30, **config})
    with Beholder(run, strict=True) as beholder:
        assert beholder.update(arrays=arrays)
        beholder.flush()


@pytest.fixture
def world(tmp_path):
    """Runs "a" and "b" (the arrays above), "empty" (no frame), "image" (a user frame); a client."""
    write_frames(tmp_path / "a", A)
    write_frames(tmp_path / "b", B)
    Beholder(tmp_path / "empty").close()
    set_config(tmp_path / "image", values="frames", mode="current", FPS=30)
    with Beholder(tmp_path / "image", strict=True) as beholder:
        assert beholder.update(frame=np.zeros((10, 10), np.uint8))
        beholder.flush()
    plugin, client = plugin_client(tmp_path)
    return tmp_path, plugin, client


def get_diff(client, run: str, other: str | None, **extra):
    """GET diff?run=&other= (other omitted when None)."""
    query = {"run": run, **({"other": other} if other is not None else {}), **extra}
    return client.get(f"{BASE}/diff", query_string=query)


def png_pixels(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(palette indices, RGB) of a palette PNG."""
    image = Image.open(io.BytesIO(data))
    assert image.mode == "P"
    return np.asarray(image), np.asarray(image.convert("RGB"))


def section(info: dict, name: str) -> dict:
    """The record called name in a frame's section table."""
    return next(rec for rec in info if rec["name"] == name)


def test_difference_pixels_are_the_documented_scale_of_a_minus_b(world):
    tmp_path, _, client = world
    resp = get_diff(client, "a", "b")
    assert resp.status_code == 200, resp.get_data()
    assert resp.mimetype == "image/png"
    indices, rgb = png_pixels(resp.get_data())
    frame_a = read_frame_file(tmp_path / "a")
    assert indices.shape == (frame_a.height, frame_a.width)
    assert resp.headers["X-Beholder-Size"] == f"{frame_a.width}x{frame_a.height}"
    assert resp.headers["X-Beholder-Frame-Id"] == str(frame_a.header["frame_id"])
    w = section(frame_a.sections, "w")
    # Section "w" (8 x 6, matrix): pixel (x, y) shows element [y' // 16, x // 128]; its colour is D's index.
    for y in range(w["top"], w["top"] + w["height"]):
        for x in range(0, 768, 7):
            d = float(D[(y - w["top"]) // 16, x // 128])
            assert indices[y, x] == INDEX_OF_D[d], (x, y, d)
    # The palette: -m blue, 0 white, +m red, by the documented formula.
    top = w["top"]
    assert tuple(rgb[top + 0, 0]) == (33, 102, 172)  # D[0, 0] = -2 = -m
    assert tuple(rgb[top + 0, 128 * 2]) == (255, 255, 255)  # D[0, 2] = 0
    assert tuple(rgb[top + 0, 128 * 4]) == (178, 24, 43)  # D[0, 4] = 2 = +m
    info = json.loads(urllib.parse.unquote(resp.headers["X-Beholder-Diff"]))
    assert section(info["sections"], "w")["max_abs"] == 2.0
    assert (info["run"], info["other"], info["frame_id"], info["other_frame_id"]) == ("a", "b", 1, 1)
    # Unmatched sections (another shape, or only in A) are black and listed with the reason.
    reasons = {u["name"]: u["reason"] for u in info["unmatched"]}
    assert set(reasons) == {"bias", "only_a"}
    assert reasons["bias"].startswith("shape [6] vs [5]") and reasons["only_a"] == "not in the other run"
    assert info["only_in_other"] == ["only_b"]
    for name in ("bias", "only_a"):
        rec = section(frame_a.sections, name)
        assert not indices[rec["top"] : rec["top"] + rec["height"]].any(), name
    # The kernel (A = 3 B): A - B = 2 B, scaled by its own m = max |2 B| = 2.
    assert section(info["sections"], "k")["max_abs"] == pytest.approx(2.0)


def test_the_whole_picture_equals_numpy_on_the_stored_values(world):
    tmp_path, _, client = world
    indices, _ = png_pixels(get_diff(client, "a", "b").get_data())
    frame_a, frame_b = read_frame_file(tmp_path / "a"), read_frame_file(tmp_path / "b")
    compact = np.zeros(frame_a.values.size, np.uint8)
    for i, rec in enumerate(frame_a.sections):
        if rec["name"] in ("w", "k"):
            j = [r["name"] for r in frame_b.sections].index(rec["name"])
            d = frame_a.section_values(i) - frame_b.section_values(j)
            m = np.float32(np.abs(d).max())
            start = rec["values"]
            scaled = 128 + np.rint(d * np.float32(127 / m))
            compact[start : start + d.size] = scaled.astype(np.uint8).ravel()
    rows, row_index = expand_sections(frame_a.sections, frame_a.width, frame_a.height, compact)
    assert np.array_equal(indices, rows[row_index])


def test_json_description_and_a_run_against_itself(world):
    _, _, client = world
    described = json.loads(get_diff(client, "a", "b", format="json").get_data())
    header = json.loads(urllib.parse.unquote(get_diff(client, "a", "b").headers["X-Beholder-Diff"]))
    assert described == header
    same = get_diff(client, "a", "a")
    indices, rgb = png_pixels(same.get_data())
    info = json.loads(urllib.parse.unquote(same.headers["X-Beholder-Diff"]))
    assert info["unmatched"] == [] and all(s["max_abs"] == 0 for s in info["sections"])
    for rec in info["sections"]:  # all white: every difference is 0
        assert (indices[rec["top"] : rec["top"] + rec["height"]] == 128).all()
    assert tuple(rgb[0, 0]) == (255, 255, 255)


def test_non_finite_differences(tmp_path):
    write_frames(tmp_path / "a", {"v": np.array([1, np.nan, np.inf, -np.inf, 4], np.float32)})
    write_frames(tmp_path / "b", {"v": np.array([0, 0, 0, 0, 0], np.float32)})
    _, client = plugin_client(tmp_path)
    resp = get_diff(client, "a", "b")
    assert resp.status_code == 200
    indices, _ = png_pixels(resp.get_data())
    # A 5-long vector is five blocks of 768 / 5 px: 1 -> rint(31.75) = 32, NaN black, +inf 255, -inf 1, 4 = m.
    assert [int(indices[0, int(i * 768 / 5) + 3]) for i in range(5)] == [160, 0, 255, 1, 255]
    info = json.loads(urllib.parse.unquote(resp.headers["X-Beholder-Diff"]))
    assert info["sections"][0]["max_abs"] == 4.0
    assert difference_indices(np.array([np.nan], np.float32))[1] is None
    assert tuple(DIFF_PALETTE[0]) == (0, 0, 0)


def test_refusals(world):
    tmp_path, _, client = world
    cases = [
        ({"run": "a"}, 400, "missing query parameter 'other'"),
        ({"run": "a", "other": "nope"}, 404, "no Beholder run called 'nope'"),
        ({"run": "nope", "other": "a"}, 404, "no Beholder run called 'nope'"),
        ({"run": "a", "other": "../outside"}, 403, "outside the logdir"),
        ({"run": "a", "other": "/etc"}, 400, "not a path relative to the logdir"),
        ({"run": "a", "other": "a\x00"}, 400, "not a path relative to the logdir"),
        ({"run": "a", "other": "empty"}, 404, "has no frame yet"),
        ({"run": "image", "other": "a"}, 409, "shows an image, not arrays"),
        ({"run": "a", "other": "image"}, 409, "shows an image, not arrays"),
    ]
    for query, status, message in cases:
        resp = client.get(f"{BASE}/diff", query_string=query)
        assert resp.status_code == status, (query, resp.get_data())
        assert message in json.loads(resp.get_data())["error"], query


def test_a_run_linked_from_outside_is_refused_and_a_corrupt_frame_is_500(world, tmp_path_factory):
    tmp_path, _, client = world
    outside = tmp_path_factory.mktemp("outside")
    write_frames(outside / "run", B)
    os.symlink(outside / "run", tmp_path / "linked")
    resp = get_diff(client, "a", "linked")
    assert resp.status_code == 403 and "outside the logdir" in json.loads(resp.get_data())["error"]
    with open(frame_path(tmp_path / "b"), "r+b") as f:  # a new inode's worth of garbage
        f.write(b"NOTAFRAME")
    resp = get_diff(client, "a", "b")
    assert resp.status_code == 500
    assert "not a valid Beholder frame" in json.loads(resp.get_data())["error"]


def test_a_newer_frame_gives_a_new_difference(world):
    tmp_path, _, client = world
    first = get_diff(client, "a", "b").get_data()
    assert get_diff(client, "a", "b").get_data() == first  # unchanged files: the same answer
    write_frames(tmp_path / "b", {**B, "w": W_B + D})  # now A - B = 0 for "w"
    resp = get_diff(client, "a", "b")
    info = json.loads(urllib.parse.unquote(resp.headers["X-Beholder-Diff"]))
    assert section(info["sections"], "w")["max_abs"] == 0
    assert info["other_frame_id"] == 1 and resp.get_data() != first
