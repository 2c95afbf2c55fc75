"""server/frame_hub.py through the routes it answers: values, kept frames, the PNG cache, bounded reads."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image
from reference_render import full_sections
from server_support import BASE, plugin_client, set_config

from beholder_plugin import Beholder
from beholder_plugin.protocol.files import LocalFiles
from beholder_plugin.protocol.history import history_frame_path, list_history, read_history_frame
from beholder_plugin.protocol.names import history_dir
from beholder_plugin.protocol.runfiles import config_path, frame_path
from beholder_plugin.server import frame_hub as frame_hub_module

ARRAYS = {
    "scalar": np.float32(7.5),
    "vector": np.arange(10, dtype=np.float32),
    "matrix": np.arange(40 * 30, dtype=np.float32).reshape(40, 30),
    "kernel": np.arange(3 * 3 * 4 * 5, dtype=np.float32).reshape(3, 3, 4, 5),
    "activation": np.arange(2 * 6 * 6 * 3, dtype=np.float32).reshape(2, 6, 6, 3),
    "grid": np.arange(5 * 7 * 11, dtype=np.float32).reshape(5, 7, 11),
    "big": np.arange(3 * 3 * 64 * 8, dtype=np.float32).reshape(3, 3, 64, 8),  # truncated unless show_all
}


def _value(client, run, x, y, frame=None):
    query = {"run": run, "x": x, "y": y}
    if frame:
        query["frame"] = frame
    return client.get(f"{BASE}/value", query_string=query)


def write_frames(run, steps, **config):
    """One frame per entry of steps (dicts of arrays), each written before the next; returns nothing."""
    set_config(run, **{"values": "arrays", "mode": "current", "FPS": 30, **config})
    with Beholder(run, strict=True) as beholder:
        for arrays in steps:
            beholder.frame_due_now()  # every update is a frame
            assert beholder.update(arrays=arrays)
            beholder.flush()


def reference_index_maps(arrays, show_all):
    """Per pixel, from the reference renderer alone: the section shown (-1 on a separator) and the
    row-major flat index of the element shown in that section's array (-1 on a separator).

    Each array is replaced by one holding its own flat indices (exact in float32 at these sizes),
    so the reference's layout and resize say which element lands on every pixel.
    """
    flat = [np.arange(max(1, np.size(a)), dtype=np.float32).reshape(np.shape(a)) for a in arrays]
    sections, owners = [], []
    for k, sec in enumerate(full_sections(flat, show_all)):
        if k:
            sections.append(np.full((5, sec.shape[1]), -1.0, np.float32))
            owners.append(np.full((5, sec.shape[1]), -1))
        sections.append(sec)
        owners.append(np.full(sec.shape, k))
    return np.concatenate(owners), np.concatenate(sections).astype(np.int64)


def sample_pixels(owner, rng, count=300):
    """Random pixels, every separator row at three columns, each section's corners and centre,
    and pixels just outside the frame."""
    height, width = owner.shape
    pixels = {(int(rng.integers(width)), int(rng.integers(height))) for _ in range(count)}
    for y in np.flatnonzero(owner[:, 0] == -1):
        pixels |= {(0, int(y)), (width // 2, int(y)), (width - 1, int(y))}
    for k in range(owner.max() + 1):
        rows = np.flatnonzero(owner[:, 0] == k)
        top, bottom = int(rows[0]), int(rows[-1])
        pixels |= {(0, top), (width - 1, top), (0, bottom), (width - 1, bottom),
                   (width // 2, (top + bottom) // 2)}
    pixels |= {(width, 0), (0, height), (width + 5, height + 5)}
    return sorted(pixels)


@pytest.mark.parametrize("show_all", [False, True])
@pytest.mark.parametrize("mode", ["current", "variance"])
def test_value_is_the_exact_element_the_reference_layout_puts_at_each_pixel(tmp_path, show_all, mode):
    """Arrays of rank 0, 1, 2, 3 (grid), 4 (kernel, activation, truncated kernel) filled with
    np.arange: the section, index and float32 value over HTTP match NumPy and the reference
    renderer at ~400 pixels, and separators and pixels outside the frame are 404."""
    run = tmp_path / "run"
    steps = [ARRAYS, {k: np.asarray(v) * 3 for k, v in ARRAYS.items()}]
    write_frames(run, steps, mode=mode, show_all=show_all, window_size=2)
    _, client = plugin_client(tmp_path)
    names = list(ARRAYS)
    owner, flat_index = reference_index_maps(list(ARRAYS.values()), show_all)
    frame = client.get(f"{BASE}/frame", query_string={"run": "run"})
    assert frame.headers["X-Beholder-Size"] == f"{owner.shape[1]}x{owner.shape[0]}"
    checked = refused = 0
    for x, y in sample_pixels(owner, np.random.default_rng(0)):
        resp = _value(client, "run", x, y)
        inside = y < owner.shape[0] and x < owner.shape[1]
        if not inside or owner[y, x] == -1:
            assert resp.status_code == 404, (x, y)
            assert "shows no array value" in json.loads(resp.get_data())["error"]
            refused += 1
            continue
        assert resp.status_code == 200, (x, y, resp.get_data())
        got = json.loads(resp.get_data())
        k = int(owner[y, x])
        name, shape = names[k], np.shape(ARRAYS[names[k]])
        assert (got["section"], got["name"]) == (k, name)
        assert len(got["index"]) == len(shape)
        assert int(np.ravel_multi_index(got["index"], shape)) == flat_index[y, x], (name, x, y)
        now = np.float32(np.asarray(steps[-1][name]).reshape(-1)[flat_index[y, x]])
        before = np.float32(np.asarray(steps[0][name]).reshape(-1)[flat_index[y, x]])
        if mode == "current":
            assert got["value"] == float(now)  # exact: the float32 itself
        else:
            assert got["value"] == pytest.approx(np.var(np.float64([before, now])), rel=1e-6)
        assert np.float32(got["value"]) == got["value"]  # a float32, sent without loss
        assert (got["frame_id"], got["step"]) == (2, 2)
        assert set(got) == {"section", "name", "index", "value", "frame_id", "step", "bounds", "colormap",
                            "axes"}
        assert isinstance(got["axes"], list) and len(got["axes"]) == len(shape)  # one name per axis
        checked += 1
    assert checked > 250 and refused >= 3 * 5 * (len(ARRAYS) - 1)


def test_non_finite_values_are_named(tmp_path):
    run = tmp_path / "run"
    write_frames(run, [{"v": np.array([np.nan, np.inf, -np.inf, 1.5], np.float32)}])
    _, client = plugin_client(tmp_path)
    # 4 columns widened to 768: column i fills x = 192 i .. 192 i + 191
    got = [json.loads(_value(client, "run", 192 * i + 100, 64).get_data()) for i in range(4)]
    assert [g["value"] for g in got] == ["nan", "inf", "-inf", 1.5]
    assert [g["index"] for g in got] == [[0], [1], [2], [3]]


@pytest.fixture()
def counted_reads(monkeypatch):
    """Record every read of every LocalFiles: ("whole", path) or ("range", length)."""
    reads: list[tuple[str, object]] = []
    real_whole, real_range = LocalFiles.read_with_identity, LocalFiles.read_range

    def whole(self, path, limit):
        reads.append(("whole", path))
        return real_whole(self, path, limit)

    def ranged(self, path, offset, length, *rest):
        reads.append(("range", length))
        return real_range(self, path, offset, length, *rest)

    monkeypatch.setattr(LocalFiles, "read_with_identity", whole)  # LocalFiles.read goes through it
    monkeypatch.setattr(LocalFiles, "read_range", ranged)
    return reads


def test_value_look_ups_read_the_header_once_then_four_bytes(tmp_path, counted_reads):
    run = tmp_path / "run"
    rng = np.random.default_rng(1)
    first = rng.normal(size=(500, 768)).astype(np.float32)
    write_frames(run, [{"w": first}])
    size = os.path.getsize(frame_path(run))
    assert size > 390_000  # 98,304 float32 values
    plugin, client = plugin_client(tmp_path)
    hub = plugin.hub
    counted_reads.clear()  # the trainer's own reads (config.json)

    # The first look-up on a frame reads its header only (and two bytes at its end).
    got = json.loads(_value(client, "run", 3, 3).get_data())
    assert got["value"] == float(first[tuple(got["index"])])
    assert [kind for kind, _ in counted_reads] == ["range"] * len(counted_reads)
    assert sum(n for _, n in counted_reads) < size / 100 and hub.header_reads == 1
    # Every further look-up reads the four bytes of its value, and nothing else.
    counted_reads.clear()
    for x in range(0, 768, 50):
        got = json.loads(_value(client, "run", x, 100).get_data())
        assert got["value"] == float(first[tuple(got["index"])])
    assert counted_reads == [("range", 4)] * len(range(0, 768, 50)) and hub.header_reads == 1

    # A new frame: its header is read once, and the values are the new frame's.
    second = -first[::-1].copy()
    write_frames(run, [{"w": second}])
    got = json.loads(_value(client, "run", 700, 20).get_data())
    assert got["value"] == float(second[tuple(got["index"])]) and got["frame_id"] == 1
    assert hub.header_reads == 2

    # After /frame encoded a newer frame, look-ups on it reuse that header: no header read at all.
    third = first * 2
    write_frames(run, [{"w": third}])
    counted_reads.clear()
    assert client.get(f"{BASE}/frame", query_string={"run": "run"}).status_code == 200
    assert counted_reads == [("whole", frame_path(run))]  # the one read that /frame needs
    counted_reads.clear()
    for y in (0, 64, 127):
        got = json.loads(_value(client, "run", 5, y).get_data())
        assert got["value"] == float(third[tuple(got["index"])])
    assert counted_reads == [("range", 4)] * 3 and hub.header_reads == 2


def test_a_torn_frame_file_is_refused_by_value_look_ups_too(tmp_path):
    run = tmp_path / "run"
    write_frames(run, [{"w": np.arange(12.0).reshape(3, 4)}])
    path = frame_path(run)
    data = open(path, "rb").read()
    os.unlink(path)  # frame.bin is a hard link into the history ring: replace it, not the kept frame
    with open(path, "wb") as f:
        f.write(data[:-100])  # the values block is intact, the palette is cut short
    _, client = plugin_client(tmp_path)
    for route in ("value", "frame", "section-info"):
        resp = client.get(f"{BASE}/{route}", query_string={"run": "run", "x": 0, "y": 0})
        assert resp.status_code == 500, route
        assert "torn or foreign file" in json.loads(resp.get_data())["error"], route


def test_history_lists_kept_frames_and_serves_their_exact_pixels(tmp_path):
    run = tmp_path / "run"
    set_config(run, values="arrays", mode="current", FPS=30, colormap="viridis")
    with Beholder(run, strict=True) as beholder:
        for step in range(4):
            beholder.frame_due_now()
            assert beholder.update(arrays={"w": np.arange(12.0).reshape(3, 4) * (step + 1) + step ** 2})
            beholder.flush()
    _, client = plugin_client(tmp_path)
    listed = json.loads(client.get(f"{BASE}/history", query_string={"run": "run"}).get_data())
    assert [e["step"] for e in listed] == [1, 2, 3, 4] and [e["frame_id"] for e in listed] == [1, 2, 3, 4]
    assert [e["name"] for e in listed] == [e.name for e in list_history(run)]
    for entry in listed:
        resp = client.get(f"{BASE}/history/frame", query_string={"run": "run", "name": entry["name"]})
        assert resp.status_code == 200 and resp.headers["X-Beholder-Step"] == str(entry["step"])
        png = np.asarray(Image.open(io.BytesIO(resp.get_data())).convert("RGB"))
        np.testing.assert_array_equal(png, read_history_frame(run, entry["name"]).rgb())
        value = json.loads(_value(client, "run", 767, 127, frame=entry["name"]).get_data())
        assert value["index"] == [2, 3] and value["value"] == 11.0 * entry["step"] + (entry["step"] - 1) ** 2
    for bad, status in (("../frame.bin", 400), ("f-1.bin", 400), ("f-0000000000000001-ab-1-1.bin", 404)):
        resp = client.get(f"{BASE}/history/frame", query_string={"run": "run", "name": bad})
        assert resp.status_code == status, bad
        assert "error" in json.loads(resp.get_data())


def test_a_kept_name_whose_file_now_holds_another_frame_is_gone(tmp_path):
    """The trainer recycles dropped history files in place: a name must not serve another frame."""
    run = tmp_path / "run"
    write_frames(run, [{"w": np.full((3, 4), float(i))} for i in range(3)])
    entries = list_history(run)
    oldest, newest = entries[0], entries[-1]
    _, client = plugin_client(tmp_path)
    query = {"run": "run", "name": oldest.name}
    assert client.get(f"{BASE}/history/frame", query_string=query).status_code == 200  # cached now
    assert json.loads(_value(client, "run", 0, 0, frame=oldest.name).get_data())["value"] == 0.0
    shutil.copyfile(history_frame_path(run, newest.name), history_frame_path(run, oldest.name))
    for resp in (client.get(f"{BASE}/history/frame", query_string=query),
                 _value(client, "run", 0, 0, frame=oldest.name)):
        assert resp.status_code == 404
        assert "no longer kept" in json.loads(resp.get_data())["error"]
    os.unlink(history_frame_path(run, oldest.name))
    assert client.get(f"{BASE}/history/frame", query_string=query).status_code == 404
    newest_query = {"run": "run", "name": newest.name}
    assert client.get(f"{BASE}/history/frame", query_string=newest_query).status_code == 200
    assert json.loads(_value(client, "run", 0, 0, frame=newest.name).get_data())["value"] == 2.0


def test_look_ups_stay_consistent_while_the_trainer_writes_and_recycles_kept_frames(tmp_path):
    """A trainer at 30 FPS whose ring keeps 1 s of frames (so dropped files are rewritten in place
    for new frames) while values, kept frames and their values are asked for as fast as possible:
    every value read belongs to the frame whose step it is sent with, and a kept frame is served
    under its own name only, or is gone (404). Element i of the frame at step k holds i + k."""
    run = tmp_path / "run"
    set_config(run, values="arrays", mode="current", FPS=30, history_seconds=1, history_mb=1)
    base = np.arange(40 * 30, dtype=np.float32).reshape(40, 30)
    stop = threading.Event()
    beholder = Beholder(run, strict=True)

    def train():
        while not stop.is_set():
            beholder.update(arrays={"w": base + np.float32(beholder.step + 1)})  # step k: i + k
            time.sleep(0.001)

    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()
    _, client = plugin_client(tmp_path)
    rng = np.random.default_rng(3)
    counts = {"value": 0, "kept value": 0, "kept frame": 0, "gone": 0}
    try:
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            x, y = int(rng.integers(768)), int(rng.integers(128))
            resp = _value(client, "run", x, y)
            if resp.status_code == 404:  # no frame yet
                continue
            got = json.loads(resp.get_data())
            assert got["value"] == base[tuple(got["index"])] + got["step"], got
            counts["value"] += 1
            kept = json.loads(client.get(f"{BASE}/history", query_string={"run": "run"}).get_data())
            if not kept:
                continue
            entry = kept[int(rng.integers(len(kept)))]
            resp = _value(client, "run", x, y, frame=entry["name"])
            if resp.status_code == 404:
                counts["gone"] += 1
            else:
                got = json.loads(resp.get_data())
                assert "step" in got, (resp.status_code, got)
                assert (got["step"], got["frame_id"]) == (entry["step"], entry["frame_id"]), (got, entry)
                assert got["value"] == base[tuple(got["index"])] + entry["step"], (got, entry)
                counts["kept value"] += 1
            resp = client.get(f"{BASE}/history/frame", query_string={"run": "run", "name": entry["name"]})
            if resp.status_code == 404:
                counts["gone"] += 1
            else:
                assert resp.status_code == 200, resp.get_data()
                assert resp.headers["X-Beholder-Step"] == str(entry["step"])
                assert resp.headers["X-Beholder-Frame-Id"] == str(entry["frame_id"])
                counts["kept frame"] += 1
    finally:
        stop.set()
        trainer.join(10)
        beholder.close()
    assert counts["value"] > 50 and counts["kept value"] > 20 and counts["kept frame"] > 20, counts
    assert len(list_history(run)) < 60  # the ring did drop (and recycle) frames: ~30 per second kept


def test_cached_pngs_stay_within_their_byte_budget(tmp_path, monkeypatch):
    run = tmp_path / "run"
    rng = np.random.default_rng(2)
    write_frames(run, [{"w": rng.normal(size=(64, 64))} for _ in range(6)])
    plugin, client = plugin_client(tmp_path)
    one = len(client.get(f"{BASE}/frame", query_string={"run": "run"}).get_data())
    monkeypatch.setattr(frame_hub_module, "MAX_CACHED_PNG_BYTES", int(2.5 * one))
    for entry in list_history(run):
        resp = client.get(f"{BASE}/history/frame", query_string={"run": "run", "name": entry.name})
        png = np.asarray(Image.open(io.BytesIO(resp.get_data())).convert("RGB"))
        np.testing.assert_array_equal(png, read_history_frame(run, entry.name).rgb())
        cached = plugin.hub.cached_pngs()
        assert sum(len(e.png) for e in cached) <= 2.5 * one * 1.2  # PNG sizes differ a little
    assert plugin.hub.encodings == 7


@pytest.mark.parametrize("route", ["frame-data", "section-info", "value"])
def test_kept_frames_headers_count_toward_the_cache_budget(tmp_path, monkeypatch, route):
    """Each cached frame also holds its parsed header, ten times its small PNG for a frame of many small
    sections; uncounted, asking for 256 kept frames (the dashboard's slider) held 915 MB for a run of
    1,000 sections. Headers count now, and value look-ups' own header cache has a byte budget too."""
    run = tmp_path / "run"
    rng = np.random.default_rng(4)
    write_frames(run, [{f"block{i}/w": rng.normal(size=(3, 3)) for i in range(300)} for _ in range(12)])
    plugin, client = plugin_client(tmp_path)
    names = [entry.name for entry in list_history(run)]
    offset = plugin.hub.header(str(history_frame_path(run, names[0])))[0][1]
    budget = 3 * frame_hub_module.HEADER_COST * offset
    monkeypatch.setattr(frame_hub_module, "MAX_CACHED_PNG_BYTES", budget)
    monkeypatch.setattr(frame_hub_module, "MAX_HEADER_BYTES", budget)
    for name in names:
        query = {"run": "run", "frame": name, "x": 0, "y": 0}
        assert client.get(f"{BASE}/{route}", query_string=query).status_code == 200
    holding = [s for s in plugin.hub._slots.values() if s.encoded is not None or s.data is not None]
    assert len(holding) <= 4 and sum(frame_hub_module._cached_bytes(s) for s in holding) <= 1.5 * budget
    assert len(plugin.hub._headers) <= 4


KEPT_NAME = "f-0000000000000001-ab-1-1.bin"


def ask_in_a_thread(client, requests, limit=15.0):
    """Send (route, query) requests from another thread; their (status, body: parsed if JSON), and the
    seconds taken.

    Fails if they have not all been answered within `limit` s: a request blocked on a FIFO
    would hang there forever.
    """
    answers = {}

    def ask():
        for route, query in requests:
            resp = client.get(f"{BASE}/{route}", query_string=query)
            body = resp.get_data()
            answers[route] = (resp.status_code, json.loads(body) if resp.is_json else body)

    started = time.monotonic()
    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    asker.join(limit)
    assert not asker.is_alive(), f"a request hung (answered so far: {sorted(answers)})"
    return answers, time.monotonic() - started


@pytest.mark.parametrize("name", ["frame.bin", "config.json", "history"])
def test_a_fifo_in_place_of_a_file_gets_an_answer_at_once(tmp_path, name):
    run = tmp_path / "run"
    os.makedirs(history_dir(run))
    set_config(run, FPS=3)
    path = {"frame.bin": frame_path(run), "config.json": config_path(run),
            "history": history_frame_path(run, KEPT_NAME)}[name]
    if os.path.exists(path):
        os.unlink(path)
    os.mkfifo(path)
    _, client = plugin_client(tmp_path)
    base = {"run": "run", "x": 0, "y": 0, "timeout": "1"}
    if name == "history":
        requests = [("history/frame", {**base, "name": KEPT_NAME}), ("value", {**base, "frame": KEPT_NAME}),
                    ("history", base)]
    else:
        requests = [(route, base) for route in ("frame", "live", "section-info", "config", "value")]
    answers, seconds = ask_in_a_thread(client, requests)
    assert seconds < 5
    if name == "config.json":
        status, body = answers["config"]
        assert status == 200 and "config.json is not a regular file" in body["problem"]
        assert answers["live"][0] == 204  # no frame yet: the long poll ends after its timeout
        return
    if name == "history":
        assert answers["history"] == (200, [])  # only regular files are kept frames
    for route, _ in requests:
        if route in ("config", "history"):
            continue
        status, body = answers[route]
        assert status == 500, (route, body)
        assert "is not a regular file" in body["error"], (route, body)


def test_a_file_the_system_will_not_open_is_a_clear_error(tmp_path, monkeypatch):
    run = tmp_path / "run"
    write_frames(run, [{"w": np.ones((2, 2))}])

    def refuse(self, path, *args):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    for method in ("read_with_identity", "read_range", "listdir"):
        monkeypatch.setattr(LocalFiles, method, refuse)
    _, client = plugin_client(tmp_path)
    for route in ("frame", "live", "section-info", "value", "history"):
        resp = client.get(f"{BASE}/{route}", query_string={"run": "run", "x": 0, "y": 0, "timeout": "0"})
        assert resp.status_code == 500, route
        assert "Permission denied" in json.loads(resp.get_data())["error"], route


@pytest.mark.parametrize("sizing", ["fixed", "proportional"])
def test_value_finds_the_pixel_of_an_element_wherever_the_layout_puts_it(tmp_path, sizing):
    """?section=&index= (a pin's element): the answer is that element, at a pixel that shows it."""
    run = tmp_path / "run"
    write_frames(run, [ARRAYS], section_size=sizing)
    _, client = plugin_client(tmp_path)
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(60):
        found = _value(client, "run", int(rng.integers(768)), int(rng.integers(400)))
        if found.status_code != 200:
            continue
        want = found.get_json()
        answer = client.get(f"{BASE}/value", query_string={
            "run": "run", "section": want["name"], "index": json.dumps(want["index"])})
        assert answer.status_code == 200, answer.get_data(as_text=True)
        got = answer.get_json()
        assert (got["name"], got["index"], got["value"]) == (want["name"], want["index"], want["value"])
        again = _value(client, "run", got["x"], got["y"]).get_json()  # the pixel it names shows it
        assert (again["name"], again["index"]) == (want["name"], want["index"])
        checked += 1
    assert checked > 20
    # With the pin's own pixel too (?x=&y=): kept while it shows that element, else the element's pixel.
    kept = moved = 0
    for _ in range(60):
        x, y = int(rng.integers(768)), int(rng.integers(400))
        found = _value(client, "run", x, y)
        if found.status_code != 200:
            continue
        want = found.get_json()
        target = {"run": "run", "section": want["name"], "index": json.dumps(want["index"])}
        first = client.get(f"{BASE}/value", query_string=target).get_json()
        here = client.get(f"{BASE}/value", query_string={**target, "x": x, "y": y}).get_json()
        assert (here["x"], here["y"], here["value"]) == (x, y, want["value"])
        kept += (x, y) != (first["x"], first["y"])  # (a pixel of the element other than its first)
        elsewhere = client.get(f"{BASE}/value", query_string={**target, "x": 0, "y": 399}).get_json()
        assert (elsewhere["name"], elsewhere["index"]) == (want["name"], want["index"])
        moved += (elsewhere["x"], elsewhere["y"]) == (first["x"], first["y"])
    assert kept > 5 and moved > 5
    missing = client.get(f"{BASE}/value",
                         query_string={"run": "run", "section": "matrix", "index": "[99, 0]"})
    assert missing.status_code == 404 and "shows no element" in missing.get_json()["error"]
    bad = client.get(f"{BASE}/value", query_string={"run": "run", "section": "matrix", "index": "[1, -1]"})
    assert bad.status_code == 400
