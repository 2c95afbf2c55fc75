"""The frame-data and live-data routes: palette indices per section, drawn by the browser itself."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from server_support import BASE, plugin_client, set_config

from beholder_plugin import Beholder
from beholder_plugin.protocol.history import list_history
from beholder_plugin.protocol.layout import compact_map
from beholder_plugin.server.frames import DATA_MAGIC


def write_frame(run: Path, show_all: bool = False, frame: np.ndarray | None = None) -> None:
    """One frame of several sections (a 4-D kernel, a NaN matrix, a long vector), or a user image."""
    values = "frames" if frame is not None else "arrays"
    set_config(run, values=values, mode="current", FPS=30, show_all=show_all, colormap="viridis",
               history_mb=16)
    rng = np.random.default_rng(7)
    matrix = rng.normal(size=(300, 50))
    matrix[3, 4] = np.nan
    arrays = {"conv": rng.normal(size=(3, 3, 16, 40)), "matrix": matrix, "vector": rng.normal(size=2000),
              "scalar": np.float32(2.5)}
    beholder = Beholder(run, strict=True)
    assert beholder.update(arrays=arrays, frame=frame)
    beholder.flush()
    beholder.close()


def parse_payload(body: bytes) -> tuple[dict, np.ndarray, np.ndarray]:
    """The JSON description, the (256, 3) palette and the flat indices block of a frame-data answer."""
    assert body[:8] == DATA_MAGIC
    length = int.from_bytes(body[8:12], "little")
    doc = json.loads(body[12 : 12 + length])
    rest = np.frombuffer(body, np.uint8, offset=12 + length)
    return doc, rest[:768].reshape(256, 3), rest[768:]


def expand(doc: dict, indices: np.ndarray) -> np.ndarray:
    """The frame's (H, W) palette indices rebuilt from the payload as the browser does (0 elsewhere)."""
    out = np.zeros((doc["height"], doc["width"]), np.uint8)
    for rec in doc["sections"]:
        (src_h, src_w), (rows, cols) = rec["source"], rec["compact"]
        small = indices[rec["offset"] : rec["offset"] + rows * cols].reshape(rows, cols)
        widened = small[:, compact_map(src_w, doc["width"])]
        out[rec["top"] : rec["top"] + rec["height"]] = widened[compact_map(src_h, rec["height"])]
    return out


def png_pixels(body: bytes) -> np.ndarray:
    """An answer's PNG as (H, W, 3) RGB."""
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


@pytest.mark.parametrize("show_all", [False, True])
def test_frame_data_draws_exactly_the_png_without_encoding_one(tmp_path, show_all):
    write_frame(tmp_path, show_all=show_all)
    plugin, client = plugin_client(tmp_path)
    answers = [client.get(f"{BASE}/frame-data?run=.") for _ in range(3)]
    assert all(a.status_code == 200 for a in answers)
    assert answers[0].headers["Content-Type"] == "application/octet-stream"
    assert len({a.get_data() for a in answers}) == 1
    assert plugin._hub.encodings == 0  # no image was encoded
    assert plugin._hub.index_computations == 1  # once per frame version, shared
    doc, palette, indices = parse_payload(answers[0].get_data())
    assert [rec["index"] for rec in doc["sections"]] == [0, 1, 2, 3]
    assert doc["bytes"] == indices.size
    assert doc["colormap"] == "viridis"
    png = client.get(f"{BASE}/frame?run=.")
    assert answers[0].headers["ETag"] == png.headers["ETag"]
    assert answers[0].headers["X-Beholder-Size"] == png.headers["X-Beholder-Size"]
    drawn = palette[expand(doc, indices)]
    expected = png_pixels(png.get_data())
    assert drawn.shape == expected.shape
    assert (doc["width"], show_all) in ((768, False), (2000, True))
    np.testing.assert_array_equal(drawn, expected)


def test_rows_selects_the_sections_overlapping_them(tmp_path):
    write_frame(tmp_path)
    _, client = plugin_client(tmp_path)
    whole, _, _ = parse_payload(client.get(f"{BASE}/frame-data?run=.").get_data())
    tops = [(rec["top"], rec["top"] + rec["height"]) for rec in whole["sections"]]
    first_end, second_top = tops[0][1], tops[1][0]
    cases = {
        "0-0": [0],
        f"{first_end - 1}-{second_top}": [0, 1],
        f"{first_end}-{second_top - 1}": [],  # the separator only
        f"{tops[2][0]}-{whole['height'] + 100}": [2, 3],
    }
    for rows, wanted in cases.items():
        answer = client.get(f"{BASE}/frame-data?run=.&rows={rows}")
        doc, _, indices = parse_payload(answer.get_data())
        assert [rec["index"] for rec in doc["sections"]] == wanted, rows
        assert doc["rows"] == [int(v) for v in rows.split("-")]
        assert indices.size == sum(r["compact"][0] * r["compact"][1] for r in doc["sections"])
    for bad in ("5", "9-3", "a-b", "-1-4", "1-²"):
        answer = client.get(f"{BASE}/frame-data?run=.&rows={bad}")
        assert answer.status_code == 400, bad
        assert "rows" in answer.get_json()["error"]


def test_frame_data_answers_304_and_validates_the_run(tmp_path):
    write_frame(tmp_path)
    _, client = plugin_client(tmp_path)
    first = client.get(f"{BASE}/frame-data?run=.")
    etag = first.headers["ETag"]
    again = client.get(f"{BASE}/frame-data?run=.", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.get_data() == b""
    assert client.get(f"{BASE}/frame-data?run=.", headers={"If-None-Match": '"other-1"'}).status_code == 200
    missing = client.get(f"{BASE}/frame-data?run=nope")
    assert missing.status_code == client.get(f"{BASE}/frame?run=nope").status_code == 404
    assert client.get(f"{BASE}/frame-data?run=../x").status_code in (400, 403, 404)


def test_user_frames_still_come_as_png(tmp_path):
    image = np.zeros((20, 30, 3), np.uint8)
    image[:, :15] = (255, 0, 0)
    write_frame(tmp_path, frame=image)
    plugin, client = plugin_client(tmp_path)
    answer = client.get(f"{BASE}/frame-data?run=.")
    assert answer.headers["Content-Type"] == "image/png"
    pixels = png_pixels(answer.get_data())
    assert pixels.shape == (20, 30, 3) and tuple(pixels[0, 0]) == (255, 0, 0)
    assert client.get(f"{BASE}/frame?run=.").get_data() == answer.get_data()
    assert plugin._hub.encodings == 1  # shared with /frame


def test_kept_frames_and_live_data(tmp_path):
    write_frame(tmp_path)
    write_frame(tmp_path, show_all=True)
    _, client = plugin_client(tmp_path)
    kept = list_history(str(tmp_path))
    assert len(kept) == 2
    old = client.get(f"{BASE}/frame-data?run=.&frame={kept[0].name}")
    doc, _, _ = parse_payload(old.get_data())
    assert doc["width"] == 768
    assert old.headers["X-Beholder-Frame-Id"] == str(kept[0].frame_id)
    assert client.get(f"{BASE}/frame-data?run=.&frame=f-nonsense.bin").status_code == 400
    live = client.get(f"{BASE}/live-data?run=.&timeout=0")
    assert live.status_code == 200
    assert parse_payload(live.get_data())[0]["width"] == 2000
    same = client.get(f"{BASE}/live-data?run=.&timeout=0&after={live.headers['ETag']}")
    assert same.status_code == 204
    assert client.get(f"{BASE}/live-data?run=.&timeout=99").status_code == 400
    part = client.get(f"{BASE}/live-data?run=.&timeout=0&rows=0-0")
    assert [rec["index"] for rec in parse_payload(part.get_data())[0]["sections"]] == [0]
