"""Files made to hurt the server: small frames that claim huge pictures (issue 21, item 2).

Each route is answered in a fresh process (tests/hostile_frames.py), so its
peak memory can be read; no timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_support import BASE, PYTHON, ROOT, make_frames, plugin_client

from beholder_plugin.protocol.frame_format import PALETTE_BYTES, FrameFormatError, _prefix, parse_header
from beholder_plugin.protocol.layout import compact_map
from beholder_plugin.protocol.names import FRAME_VERSION, frame_path

HOSTILE_ROUTES = ["frame", "frame-data", "live-data", "section-info", "value", "diff"]


def small_frame(width: int = 1 << 24, height: int = 128, sections: int = 1) -> bytes:
    """A frame file of a few hundred bytes whose header claims width x height pixels.

    Every check of the old reader passes: one value per section, one stored
    row and column, which a resize to any size samples once.
    """
    recs = [{"name": f"s{i}", "shape": [1], "layout": "scalar", "top": i * (height // sections),
             "height": height // sections, "values": i, "source": [1, 1], "compact": [1, 1], "bounds": [0, 1]}
            for i in range(sections)]
    header = {"writer": "abc123", "frame_id": 1, "time": 1.0, "step": 1, "format": "beholder-frame",
              "version": FRAME_VERSION, "width": width, "height": height, "channels": 1,
              "encoding": "sections", "rows": 0, "value_count": sections, "colormap": "magma",
              "sections": recs}
    return _prefix(header) + np.zeros(sections, "<f4").tobytes() + bytes(PALETTE_BYTES)


def answer_in_fresh_process(logdir, run: str) -> dict:
    """What each frame route answers for the run, and the peak memory it cost (MB)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"),
                                                        os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([PYTHON, str(ROOT / "tests" / "hostile_frames.py"), str(logdir), run],
                         capture_output=True, text=True, env=env, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("width, height, sections", [(1 << 24, 128, 1), (768, 1 << 24, 1),
                                                     (4096, 4096 * 9, 9), (1 << 12, 1 << 12, 1)])
def test_a_small_file_claiming_a_huge_picture_is_refused_by_its_header(width, height, sections):
    data = small_frame(width, height, sections)
    assert len(data) < 4096
    with pytest.raises(FrameFormatError):
        parse_header(data)


def test_every_frame_route_refuses_a_small_file_claiming_2_24_columns(tmp_path):
    """A 2^24-pixel-wide claim cost `frame` 8-18 s and 4.4 GB; now a JSON 500, within 300 MB."""
    make_frames(tmp_path / "run")
    with open(frame_path(tmp_path / "run"), "wb") as f:
        f.write(small_frame())
    got = answer_in_fresh_process(tmp_path, "run")
    for route in HOSTILE_ROUTES:
        status, mimetype, body = got["answers"][route]
        assert (status, mimetype) == (500, "application/json"), (route, status, body)
        assert "width" in json.loads(body)["error"], (route, body)
    assert got["grown_mb"] < 300, got


def test_a_failure_no_handler_expected_is_a_json_error(tmp_path, monkeypatch):
    """MemoryError (or any other exception) inside a route: JSON, never Werkzeug's HTML page."""
    make_frames(tmp_path / "run")
    plugin, client = plugin_client(tmp_path)

    def explode(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(type(plugin), "_frame_path", explode)
    monkeypatch.setattr(type(plugin), "_kept_frame", explode)
    for route in ("frame", "section-info", "frame-data", "live"):
        resp = client.get(f"/data/plugin/beholder/{route}?run=run")
        assert resp.status_code == 503 and resp.mimetype == "application/json", (route, resp.get_data()[:200])
        assert "memory" in json.loads(resp.get_data())["error"]
    monkeypatch.setattr(type(plugin), "_kept_frame", lambda *a: 1 / 0)
    resp = client.get("/data/plugin/beholder/section-info?run=run")
    assert resp.status_code == 500 and resp.mimetype == "application/json"
    assert "ZeroDivisionError" in json.loads(resp.get_data())["error"]


@st.composite
def claimed_headers(draw):
    """Section frames claiming arbitrary sizes, tops, heights and sources; compact sizes often as written."""
    width = draw(st.sampled_from([1, 768, 769, 2000, 4096, 4097, 1 << 24]))
    count = draw(st.integers(1, 3))
    recs, top, start = [], draw(st.sampled_from([0, 0, 5, 6])), 0
    for i in range(count):
        height = draw(st.sampled_from([1, 32, 128, 512, 513, 2048, 2049, 1 << 20]))
        src = [draw(st.integers(1, 3000)), draw(st.integers(1, 3000))]
        compact = [draw(st.integers(1, 8)), draw(st.integers(1, 8))]
        if draw(st.integers(0, 5)) and height <= 4096 and width <= 4096:  # mostly what a writer would store
            compact = [int(compact_map(src[0], height)[-1]) + 1, int(compact_map(src[1], width)[-1]) + 1]
        recs.append({"name": f"s{i}", "shape": [src[0] * src[1]], "layout": "vector", "top": top,
                     "height": height, "values": start, "source": src, "compact": compact, "bounds": [0, 1]})
        start += compact[0] * compact[1]
        bottom = top + height
        top = bottom + draw(st.sampled_from([5, 5, 0, 6, 8]))
    return {"format": "beholder-frame", "version": FRAME_VERSION, "channels": 1, "encoding": "sections",
            "rows": 0, "value_count": start, "sections": recs, "width": width,
            "height": draw(st.sampled_from([bottom, bottom, bottom + 5, bottom + 6, 1 << 24]))}


ACCEPTED = []


@settings(max_examples=400, deadline=None, derandomize=True)
@given(claimed_headers())
def test_an_accepted_header_claims_no_more_picture_than_its_values_fill(header):
    """Whatever a header claims, what the reader accepts is bounded by its stored values and sections."""
    data = _prefix(header) + bytes(4 * header["value_count"] + PALETTE_BYTES)
    try:
        head, _offset = parse_header(data)
    except FrameFormatError:
        return
    ACCEPTED.append(head["width"] * head["height"])
    count, sections = head["value_count"], head["sections"]
    assert head["width"] <= max(768, max(rec["compact"][1] for rec in sections)) <= max(768, count)
    assert head["height"] <= sum(max(512, 4 * rec["compact"][0]) + 5 for rec in sections) + 5
    assert head["width"] * head["height"] <= 4096 * (517 * len(sections) + 4 * count + 5)


def test_the_fuzzed_headers_included_accepted_ones():
    """(Runs after the fuzz above: the bounds were checked on headers the reader took, not only refusals.)"""
    assert len(ACCEPTED) >= 5, len(ACCEPTED)


def test_an_element_lookup_on_a_corrupt_frame_names_the_frame(tmp_path):
    """value?section=&index= on a corrupt frame.bin answered 404 "shows no element", as if the frame were
    fine; a look-up by pixel answers 500 naming the file, and so does this one now."""
    make_frames(tmp_path / "run")
    with open(frame_path(tmp_path / "run"), "r+b") as f:
        f.write(b"garbage!" * 8)
    _, client = plugin_client(tmp_path)
    for query in ({"x": "0", "y": "0"}, {"section": "w", "index": "[0, 0]"}):
        resp = client.get(f"{BASE}/value", query_string={"run": "run", **query})
        assert resp.status_code == 500
        assert "frame" in json.loads(resp.get_data())["error"]
