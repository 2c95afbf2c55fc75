"""The frame-data and live-data routes: palette indices per section, drawn by the browser itself."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from server_support import BASE, expand, parse_payload, plugin_client, set_config
from tensorboard.backend import json_util

from beholder_plugin import Beholder
from beholder_plugin.protocol.files import LocalFiles
from beholder_plugin.protocol.history import list_history
from beholder_plugin.server.frame_data import FrameGone
from beholder_plugin.server.http_answers import section_table, section_table_json


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
    assert plugin.hub.encodings == 0  # no image was encoded
    assert plugin.hub.index_computations == 1  # once per frame version, shared
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
    assert plugin.hub.encodings == 1  # shared with /frame


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


def many_sections_frame(run: Path, count: int = 40, step: int = 0) -> str:
    """A frame of `count` 256-value vectors (one frame id per step); returns its frame file's path."""
    set_config(run, values="arrays", mode="current", FPS=30, history_mb=0)
    rng = np.random.default_rng(step)
    with Beholder(run, strict=True) as beholder:
        beholder.frames_written = step  # so frame ids follow the steps across Beholders
        assert beholder.update(arrays={f"v{i:02d}": rng.normal(size=256) for i in range(count)})
        beholder.flush()
    return str(run / "plugins" / "beholder" / "frame.bin")


def test_a_viewport_reads_and_scales_only_the_sections_in_view(tmp_path, monkeypatch):
    path = many_sections_frame(tmp_path)
    plugin, client = plugin_client(tmp_path)
    read = []
    original = LocalFiles.read_range

    def counting(self, path, offset, length, *args, **kwargs):
        read.append((offset, length))
        return original(self, path, offset, length, *args, **kwargs)

    monkeypatch.setattr(LocalFiles, "read_range", counting)
    part = client.get(f"{BASE}/frame-data?run=.&rows=0-0")
    doc, _, indices = parse_payload(part.get_data())
    assert [rec["index"] for rec in doc["sections"]] == [0]
    start = plugin.hub.frame_data(path).data_offset
    values_read = [(offset - start, length) for offset, length in read if start <= offset < start + 40 * 1024]
    assert values_read == [(0, 256 * 4)]  # section 0's values, not the frame's
    # the same request again is answered from the frame's cache: nothing more is read
    before = len(read)
    assert client.get(f"{BASE}/frame-data?run=.&rows=0-0").get_data() == part.get_data()
    assert len(read) == before
    # the whole frame, built from the same indices, agrees with the viewport's section
    whole, _, all_indices = parse_payload(client.get(f"{BASE}/frame-data?run=.").get_data())
    rows = slice(0, doc["sections"][0]["height"])
    np.testing.assert_array_equal(expand(whole, all_indices)[rows], expand(doc, indices)[rows])
    assert plugin.hub.index_computations == 1 and path.endswith("frame.bin")


def test_a_frame_replaced_between_its_header_and_its_values_is_answered_by_the_new_one(tmp_path, monkeypatch):
    path = many_sections_frame(tmp_path, step=0)
    plugin, client = plugin_client(tmp_path)
    stale = plugin.hub.frame_data(path)
    assert stale.header["frame_id"] == 1
    many_sections_frame(tmp_path, step=1)  # the trainer's next frame replaces the file
    with pytest.raises(FrameGone):
        stale.payload((0, 0))  # its values went with the old file
    served = []
    real = plugin.hub.frame_data

    def first_stale(p, expect=None):
        served.append(p)
        return stale if len(served) == 1 else real(p, expect)

    monkeypatch.setattr(plugin.hub, "frame_data", first_stale)
    answer = client.get(f"{BASE}/frame-data?run=.&rows=0-0")
    assert answer.status_code == 200 and len(served) == 2
    assert answer.headers["X-Beholder-Frame-Id"] == "2"
    live = client.get(f"{BASE}/live-data?run=.&timeout=0&after=%22x-1%22")
    assert live.status_code == 200 and live.headers["X-Beholder-Frame-Id"] == "2"


def test_a_file_that_keeps_changing_under_the_reads_is_a_503_not_a_wrong_frame(tmp_path, monkeypatch):
    path = many_sections_frame(tmp_path)
    plugin, client = plugin_client(tmp_path)
    stale = plugin.hub.frame_data(path)
    many_sections_frame(tmp_path, step=1)
    monkeypatch.setattr(plugin.hub, "frame_data", lambda p, expect=None: stale)
    answer = client.get(f"{BASE}/frame-data?run=.")
    assert answer.status_code == 503
    assert "kept changing" in answer.get_json()["error"]


def test_section_info_quotes_the_stored_table_and_writes_out_any_other(tmp_path):
    path = many_sections_frame(tmp_path, count=3)
    plugin, _ = plugin_client(tmp_path)
    frame = plugin.hub.frame_data(path)
    expected = section_table(frame)
    quoted = section_table_json(frame)
    assert json.loads(quoted) == expected
    stored = json.dumps(frame.header["sections"][1], separators=(",", ":"), allow_nan=False).encode()
    assert stored in quoted  # the record as the trainer wrote it, not written again
    # a header from another writer: "sections" not last, and a NaN statistic
    header = {"sections": json.loads(json.dumps(frame.header["sections"])), **frame.header}
    header = {"sections": header.pop("sections"), **header}
    header["sections"][0]["mean"] = float("nan")
    other = SimpleNamespace(header=header, header_text=json.dumps(header).encode())
    assert b"NaN" in other.header_text
    answer = json.loads(section_table_json(other))
    assert answer["sections"][0]["mean"] == "NaN"  # as TensorBoard's http_util writes it
    assert answer == json.loads(json.dumps(json_util.Cleanse(section_table(other))))
    reordered = SimpleNamespace(header={**header}, header_text=json.dumps(header, allow_nan=True).encode())
    reordered.header["sections"][0]["mean"] = 1.5
    reordered.header_text = json.dumps(reordered.header).encode()
    assert json.loads(section_table_json(reordered)) == section_table(reordered)
