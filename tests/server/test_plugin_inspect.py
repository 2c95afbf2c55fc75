"""The routes that frame format v2 enables, over HTTP to a real plugin: values, history, bounded reads."""

from __future__ import annotations

import io
import json
import os
import shutil
import threading

import numpy as np
import pytest
from PIL import Image
from server_support import BASE, plugin_client, set_config

from beholder_plugin import Beholder
from beholder_plugin.protocol.files import LOCAL
from beholder_plugin.protocol.history import list_history, read_history_frame
from beholder_plugin.protocol.layout import locate
from beholder_plugin.protocol.runfiles import config_path, frame_path, plugin_dir, read_frame_file

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


@pytest.mark.parametrize("show_all", [False, True])
@pytest.mark.parametrize("mode", ["current", "variance"])
def test_value_reads_back_the_exact_value_and_index_at_every_sampled_pixel(tmp_path, show_all, mode):
    run = tmp_path / "run"
    set_config(run, values="arrays", mode=mode, show_all=show_all, FPS=30, window_size=2)
    steps = [ARRAYS, {k: np.asarray(v) * 3 for k, v in ARRAYS.items()}]
    with Beholder(run, strict=True) as beholder:
        for arrays in steps:
            beholder._last_frame_time = float("-inf")
            assert beholder.update(arrays=arrays)
            beholder.flush()
    _, client = plugin_client(tmp_path)
    frame = read_frame_file(run)
    rng = np.random.default_rng(0)
    checked = separators = 0
    for _ in range(300):
        x, y = int(rng.integers(frame.width)), int(rng.integers(frame.height))
        resp = _value(client, "run", x, y)
        where = locate(frame.sections, frame.width, x, y)
        if where is None:
            assert resp.status_code == 404
            separators += 1
            continue
        got = json.loads(resp.get_data())
        name = frame.sections[where["section"]]["name"]
        assert got["name"] == name and got["index"] == where["index"]
        now = np.asarray(steps[-1][name])[tuple(got["index"])]
        before = np.asarray(steps[0][name])[tuple(got["index"])]
        expected = now if mode == "current" else np.var(np.float32([before, now]))
        assert got["value"] == pytest.approx(float(expected), rel=1e-6 if mode == "variance" else 0)
        assert got["frame_id"] == 2 and got["step"] == 2
        checked += 1
    assert checked > 200 and separators > 0


def test_a_value_look_up_reads_a_few_bytes_not_the_frame(tmp_path, monkeypatch):
    run = tmp_path / "run"
    set_config(run, values="arrays", mode="current", FPS=30)
    with Beholder(run, strict=True) as beholder:
        beholder.update(arrays={"w": np.random.default_rng(1).normal(size=(500, 768))})
    _, client = plugin_client(tmp_path)
    assert _value(client, "run", 3, 3).status_code == 200  # parses and caches the header
    whole, ranges = [], []
    real_read, real_range = LOCAL.read_with_identity, LOCAL.read_range
    monkeypatch.setattr(LOCAL, "read_with_identity", lambda *a: whole.append(a) or real_read(*a))
    monkeypatch.setattr(LOCAL, "read_range", lambda p, o, n, *r: ranges.append(n) or real_range(p, o, n, *r))
    for x in range(0, 768, 50):
        assert _value(client, "run", x, 100).status_code == 200
    assert whole == [] and ranges and max(ranges) == 4
    assert os.path.getsize(frame_path(run)) > 390_000  # 98,304 float32 values


def test_history_lists_kept_frames_and_serves_their_exact_pixels(tmp_path):
    run = tmp_path / "run"
    set_config(run, values="arrays", mode="current", FPS=30, colormap="viridis")
    with Beholder(run, strict=True) as beholder:
        for step in range(4):
            beholder._last_frame_time = float("-inf")
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


@pytest.mark.parametrize("name", ["frame.bin", "config.json"])
def test_a_fifo_in_place_of_a_file_gets_an_answer_at_once(tmp_path, name):
    run = tmp_path / "run"
    os.makedirs(plugin_dir(run))
    set_config(run, FPS=3)
    path = frame_path(run) if name == "frame.bin" else config_path(run)
    if os.path.exists(path):
        os.unlink(path)
    os.mkfifo(path)
    _, client = plugin_client(tmp_path)
    answers = {}

    def ask():
        for route in ("frame", "section-info", "config", "value"):
            resp = client.get(f"{BASE}/{route}", query_string={"run": "run", "x": 0, "y": 0})
            answers[route] = (resp.status_code, json.loads(resp.get_data()))

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    asker.join(15)
    assert not asker.is_alive(), f"a request hung on a FIFO named {name}"
    if name == "frame.bin":
        for route in ("frame", "section-info", "value"):
            assert answers[route][0] == 500 and "not a regular file" in answers[route][1]["error"]
    else:
        status, body = answers["config"]
        assert status == 200 and "not a regular file" in body["problem"]


def test_a_run_is_listed_and_configurable_before_its_first_frame(tmp_path):
    """Beholder's constructor writes the run's directory and settings, as the original did."""
    beholder = Beholder(tmp_path / "early")
    _, client = plugin_client(tmp_path)
    runs = json.loads(client.get(f"{BASE}/runs").get_data())
    assert runs == [{"run": "early", "age": None}]
    resp = client.post(f"{BASE}/config?run=early", data=b'{"FPS": 3}', content_type="application/json")
    assert resp.status_code == 200
    assert json.loads(client.get(f"{BASE}/section-info?run=early").get_data())["frame_id"] is None
    beholder._poll_config()
    assert beholder.config["FPS"] == 3  # the trainer picks up what the dashboard set
    beholder.close()


def test_the_run_scan_is_bounded_against_deep_trees_loops_and_odd_names(tmp_path):
    """A tree 1,000 levels deep, a symlink loop and a name that is not UTF-8: /runs still answers."""
    from beholder_plugin.server import runs as runs_module

    Beholder(tmp_path / "top").close()
    deep = tmp_path / "deep"
    path = str(deep)
    os.mkdir(path)
    levels = []
    for _ in range(1000):
        path = os.path.join(path, "d")
        os.mkdir(path)
        levels.append(path)
    try:
        Beholder(os.path.join(str(deep), *["d"] * 3)).close()  # within reach
        Beholder(path).close()  # 1,001 levels down: beyond MAX_SCAN_DEPTH
        os.symlink(tmp_path, tmp_path / "loop")  # a symlink loop
        os.makedirs(os.fsencode(tmp_path) + b"/bad-\xff/plugins/beholder")
        _, client = plugin_client(tmp_path)
        resp = client.get(f"{BASE}/runs", query_string={"fresh": "1"})
        assert resp.status_code == 200
        names = sorted(r["run"] for r in json.loads(resp.get_data()))
        assert names == ["deep/d/d/d", "top"]
        assert runs_module.MAX_SCAN_DEPTH < 1000
    finally:
        # Remove the deep tree bottom-up: pytest's own clean-up recurses and would overflow on it.
        for level in reversed(levels):
            shutil.rmtree(os.path.join(level, "plugins"), ignore_errors=True)
            os.rmdir(level)
