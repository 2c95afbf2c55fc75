"""Every frame the writer can produce is read back by every reader, over random arrays and settings.

Arrays of ranks 0-6 with random sizes (rows or columns all distinct, single
sections, huge truncated ones), random show_all, mode, scaling and window:
each frame written by a real Beholder must decode with read_frame_file, be
served by a real plugin over HTTP (PNG pixels, frame-data palette indices of
the whole frame and of a random row range, the section table with and without
gzip, and value look-ups), equal the
naive reference renderer, and read back the same from the history ring.
"""

from __future__ import annotations

import gzip
import io
import json

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from reference_render import reference_frame
from server_support import BASE, expand, parse_payload, plugin_client
from support import set_config

from beholder_plugin import Beholder
from beholder_plugin.protocol.history import list_history, read_history_frame
from beholder_plugin.protocol.layout import locate
from beholder_plugin.protocol.runfiles import read_frame_file


@st.composite
def shapes(draw):
    """A shape of rank 0-6; sometimes huge (truncated unless show_all) or with all-distinct rows."""
    rank = draw(st.integers(0, 6))
    if rank == 2 and draw(st.booleans()):
        return (draw(st.integers(129, 400)), draw(st.integers(1, 12)))  # every row distinct
    if rank == 4 and draw(st.booleans()):
        return (3, 3, draw(st.integers(20, 70)), draw(st.integers(1, 6)))  # truncated kernels
    if rank == 1 and draw(st.booleans()):
        return (draw(st.integers(769, 3000)),)  # every column distinct, widens with show_all
    max_side = {0: 1, 1: 200, 2: 40, 3: 12, 4: 7, 5: 5, 6: 4}[rank]
    return tuple(draw(st.integers(1, max_side)) for _ in range(rank))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    shape_list=st.lists(shapes(), min_size=1, max_size=12),
    show_all=st.booleans(),
    mode=st.sampled_from(["current", "variance"]),
    scaling=st.sampled_from(["layer", "network"]),
    window=st.integers(2, 4),
    frames=st.integers(1, 4),
    seed=st.integers(0, 2**31),
)
# Arrays whose scale changes up to 100-fold from frame to frame: the float32 running sums of the
# variance then hold squares far larger than the variance (found by a CI run).
@example(shape_list=[(), (167,), (5, 3, 5, 3, 1), (5, 8, 7), (), (2, 2, 1, 2, 1), (12, 3, 2),
                     (4, 4, 2, 1, 4, 4), (4, 4, 2, 1, 4, 4), (5, 12, 2)],
         show_all=True, mode="variance", scaling="layer", window=2, frames=4, seed=65537)
def test_every_written_frame_reads_back_everywhere(
    tmp_path_factory, shape_list, show_all, mode, scaling, window, frames, seed
):
    # a logdir of its own holding the run: the plugin confines its logdir for the whole process
    # (protocol/files.py), and pytest's base folder as a logdir would confine every later test's files
    run = str(tmp_path_factory.mktemp("logs") / "run")
    set_config(run, values="arrays", mode=mode, scaling=scaling, show_all=show_all, window_size=window,
               FPS=30, colormap="grayscale")
    rng = np.random.default_rng(seed)
    beholder = Beholder(run, strict=True)
    history = []
    for _ in range(frames):
        arrays = [np.asarray(rng.normal(size=s) * rng.uniform(0.1, 10), np.float32) for s in shape_list]
        history.append(arrays)
        beholder.frame_due_now()  # every call is a frame
        assert beholder.update(arrays=arrays)
        beholder.flush()
    beholder.close()

    frame = read_frame_file(run)
    expected, stats = reference_frame(history[-window:], mode, scaling, show_all)
    # variance frames say what they are over (the shapes never change here)
    assert frame.header.get("window") == ({"frames": min(frames, window), "size": window}
                                          if mode == "variance" else None)
    if mode == "current":
        np.testing.assert_array_equal(frame.pixels, expected)
    else:  # float32 running sums vs np.var: a value on a quantisation boundary may land one level off
        diff = np.abs(frame.pixels.astype(int) - expected.astype(int))
        assert diff.max() <= 1
        eps = float(np.finfo(np.float32).eps)
        for i, (rec, (lo, _, hi)) in enumerate(zip(frame.sections, stats)):
            # float32 sums of squared deviations lose about eps x the largest square they add up,
            # whatever the variance: the tolerance is 1e-4 of the variance or a few such roundings
            squares = max(float(np.max(np.abs(arrays[i]))) for arrays in history) ** 2
            tolerance = max(1e-4 * abs(hi), 8 * window * eps * squares, 1e-30)
            assert abs(rec["min"] - lo) <= tolerance and abs(rec["max"] - hi) <= tolerance

    # the pixels are the stored values scaled by the stored bounds
    for i, rec in enumerate(frame.sections):
        lo, hi = rec["bounds"]
        values = frame.section_values(i)
        if lo is not None and hi is not None and hi > lo:
            k = np.float32(255.0 / (hi - lo))
            small = ((values - np.float32(lo)) * k).astype(np.uint8)
            top = rec["top"]
            rows_shown = frame.pixels[top : top + rec["height"]]
            assert set(np.unique(rows_shown)) <= set(np.unique(small))

    # value look-ups: the array index and the exact float32 value of random pixels
    current = history[-1]
    for _ in range(20):
        x, y = int(rng.integers(frame.width)), int(rng.integers(frame.height))
        where = locate(frame.sections, frame.width, x, y)
        if where is None:
            continue
        value = frame.values[where["offset"]]
        if mode == "current":
            assert value == current[where["section"]][tuple(where["index"])]

    # the plugin serves the same pixels, and the same value at a pixel
    _, client = plugin_client(run.rsplit("/", 1)[0])
    name = run.rsplit("/", 1)[1]
    resp = client.get(f"{BASE}/frame", query_string={"run": name})
    assert resp.status_code == 200
    png = np.asarray(Image.open(io.BytesIO(resp.get_data())).convert("RGB"))
    np.testing.assert_array_equal(png, frame.rgb())
    whole, _, indices = parse_payload(client.get(f"{BASE}/frame-data", query_string={"run": name}).get_data())
    np.testing.assert_array_equal(expand(whole, indices), frame.pixels)
    first = int(rng.integers(frame.height))
    last = first + int(rng.integers(frame.height - first))
    part = client.get(f"{BASE}/frame-data", query_string={"run": name, "rows": f"{first}-{last}"})
    doc, _, indices = parse_payload(part.get_data())
    shown = [r for r in frame.sections if r["top"] <= last and r["top"] + r["height"] > first]
    assert [r["index"] for r in doc["sections"]] == [frame.sections.index(r) for r in shown]
    drawn = expand(doc, indices)
    for rec in shown:
        rows = slice(rec["top"], rec["top"] + rec["height"])
        np.testing.assert_array_equal(drawn[rows], frame.pixels[rows])
    table = {"version": 2, "frame_id": frame.header["frame_id"], "writer": frame.header["writer"],
             "step": frame.header["step"], "window": frame.header.get("window"), "sections": frame.sections}
    for encoding in ("gzip", "identity"):
        info = client.get(f"{BASE}/section-info", query_string={"run": name},
                          headers={"Accept-Encoding": encoding})
        body = gzip.decompress(info.get_data()) if encoding == "gzip" else info.get_data()
        assert info.headers.get("Content-Encoding") == (encoding if encoding == "gzip" else None)
        assert json.loads(body) == table
    if frame.sections:
        rec = frame.sections[-1]
        y = rec["top"] + rec["height"] - 1
        got = json.loads(client.get(f"{BASE}/value", query_string={"run": name, "x": 0, "y": y}).get_data())
        where = locate(frame.sections, frame.width, 0, y)
        assert got["index"] == where["index"] and got["value"] == float(frame.values[where["offset"]])

    # the history ring holds every frame, and its newest is the latest frame
    entries = list_history(run)
    assert len(entries) == frames
    newest = read_history_frame(run, entries[-1].name)
    np.testing.assert_array_equal(newest.pixels, frame.pixels)
    np.testing.assert_array_equal(newest.values, frame.values)
