"""Every HTTP route of the plugin, through werkzeug's test client on a real plugin instance."""

from __future__ import annotations

import io
import json
import os
import subprocess
import threading
import time

import numpy as np
import pytest
from PIL import Image
from server_support import BASE, make_frames, plugin_client, read_config_file, set_config, wait_for

from beholder_plugin.protocol.files import LOCAL
from beholder_plugin.protocol.frame_format import encode_frame
from beholder_plugin.protocol.history import history_frame_path
from beholder_plugin.protocol.runfiles import (
    config_path,
    frame_path,
    plugin_dir,
    read_frame,
    read_frame_file,
)
from beholder_plugin.protocol.settings import DEFAULT_CONFIG


@pytest.fixture()
def logdir(tmp_path):
    """A logdir holding a run at its root (".") and one nested run ("train/a"), each with frames."""
    make_frames(tmp_path)
    make_frames(tmp_path / "train" / "a")
    (tmp_path / "not-a-run" / "plugins" / "scalars").mkdir(parents=True)
    return tmp_path


@pytest.fixture()
def client(logdir):
    """A werkzeug client on a plugin serving `logdir`."""
    return plugin_client(logdir)[1]


def post_config(client, run, body, content_type="application/json"):
    """POST a config change; body is JSON-encoded unless it is already bytes."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(f"{BASE}/config?run={run}", data=data, content_type=content_type)


# ---------------------------------------------------------------- plugin metadata


def test_frontend_metadata_loads_an_es_module_in_a_tab_named_beholder(tmp_path):
    plugin, _ = plugin_client(tmp_path)
    meta = plugin.frontend_metadata()
    assert plugin.plugin_name == "beholder"
    assert meta.tab_name == "Beholder"
    assert meta.es_module_path == "/static/index.js"
    assert meta.element_name is None


def test_plugins_listing_shows_the_iframe_module(client):
    resp = client.get("/data/plugins_listing")
    entry = json.loads(resp.get_data())["beholder"]
    assert entry["enabled"] is True
    assert entry["tab_name"] == "Beholder"
    assert entry["loading_mechanism"] == {
        "type": "IFRAME",
        "module_path": "/data/plugin/beholder/static/index.js",
    }


def test_ping(client):
    resp = client.get(f"{BASE}/ping")
    assert resp.status_code == 200
    assert json.loads(resp.get_data())["ok"] is True


# ---------------------------------------------------------------- static files


def test_static_files_come_from_the_frontend_package(client):
    resp = client.get(f"{BASE}/static/index.js")
    assert resp.status_code == 200
    assert resp.mimetype == "text/javascript"
    assert b"export function render" in resp.get_data() or b"export async function render" in (
        resp.get_data()
    )
    css = client.get(f"{BASE}/static/style.css")
    assert css.status_code == 200 and css.mimetype == "text/css"


@pytest.mark.parametrize(
    "name", ["missing.js", "..%2Fplugin.py", "__init__.py", "%2E%2E%2F%2E%2E%2Fsetup.cfg", ""]
)
def test_static_refuses_anything_else(client, name):
    resp = client.get(f"{BASE}/static/{name}")
    assert resp.status_code == 404


# ---------------------------------------------------------------- runs


def test_runs_lists_every_directory_with_beholder_files(client, logdir):
    runs = json.loads(client.get(f"{BASE}/runs").get_data())
    assert [r["run"] for r in runs] == [".", os.path.join("train", "a")]
    assert all(isinstance(r["age"], float) and r["age"] >= 0 for r in runs)


def test_runs_age_is_null_without_a_frame(tmp_path):
    os.makedirs(plugin_dir(tmp_path / "empty"))
    _, client = plugin_client(tmp_path)
    runs = json.loads(client.get(f"{BASE}/runs").get_data())
    assert runs == [{"run": "empty", "age": None, "storage": "local"}]


def test_runs_say_which_trainers_closed_after_their_latest_frame(tmp_path, monkeypatch):
    """A finished run read "trainer stopped?" like a killed one: /runs now carries the ended mark of a
    run whose trainer closed (not of one still training, nor of a killed one), read once per frame."""
    from beholder_plugin import Beholder
    from beholder_plugin.protocol import runfiles
    from beholder_plugin.server import runs as runs_module

    monkeypatch.setattr(runs_module, "ENDED_CHECK_AGE", 0.0)  # (frames of any age are looked at)
    reads = []
    real = runfiles.read_ended
    monkeypatch.setattr(runs_module, "read_ended", lambda path: reads.append(path) or real(path))
    beholders = {}
    for name in ("closed", "running", "killed"):
        set_config(tmp_path / name, values="arrays", mode="current", FPS=30)
        beholders[name] = Beholder(str(tmp_path / name), strict=True)
        assert beholders[name].update(arrays={"w": np.eye(3)})
        beholders[name].flush()
    beholders["closed"].close()
    _, client = plugin_client(tmp_path)
    listed = {r["run"]: r for r in json.loads(client.get(f"{BASE}/runs").get_data())}
    ended = listed["closed"]["ended"]
    assert (ended["writer"], ended["frame_id"]) == (beholders["closed"].store.writer_id, 1)
    assert ended["time"] <= time.time()
    assert "ended" not in listed["running"] and "ended" not in listed["killed"]
    assert len(reads) == 3
    client.get(f"{BASE}/runs")
    assert len(reads) == 3  # (an unchanged frame's answer holds ENDED_RECHECK_SECONDS)
    monkeypatch.setattr(runs_module, "ENDED_RECHECK_SECONDS", 0.0)
    client.get(f"{BASE}/runs")
    assert len(reads) == 5  # (then "not ended" is asked again; "ended" holds while its frame stays)
    beholders["running"].close()
    os.utime(frame_path(tmp_path / "running"), (time.time() + 1, time.time() + 1))  # (as a new frame does)
    listed = {r["run"]: r for r in json.loads(client.get(f"{BASE}/runs").get_data())}
    assert listed["running"]["ended"]["writer"] == beholders["running"].store.writer_id
    beholders["killed"].close()


def test_runs_look_at_no_mark_while_frames_are_fresh(tmp_path, monkeypatch):
    """Listing the runs of a training job reads nothing more than before: a frame under ENDED_CHECK_AGE
    seconds old is a running trainer's."""
    from beholder_plugin.server import runs as runs_module

    make_frames(tmp_path)
    monkeypatch.setattr(runs_module, "read_ended", lambda path: pytest.fail("ended.json read"))
    monkeypatch.setattr(runs_module, "ENDED_CHECK_AGE", 3600.0)
    _, client = plugin_client(tmp_path)
    assert "ended" not in json.loads(client.get(f"{BASE}/runs").get_data())[0]


def test_runs_skip_hidden_directories(tmp_path):
    os.makedirs(plugin_dir(tmp_path / ".hidden"))
    os.makedirs(plugin_dir(tmp_path / "shown"))
    _, client = plugin_client(tmp_path)
    assert [r["run"] for r in json.loads(client.get(f"{BASE}/runs").get_data())] == ["shown"]


# ---------------------------------------------------------------- run names


@pytest.mark.parametrize(
    "run, status",
    [
        ("", 400),
        ("/etc", 400),
        ("../outside", 403),
        ("train/../../outside", 403),
        ("nope", 404),
        ("not-a-run", 404),
        ("a\x00b", 400),
    ],
)
def test_bad_run_names_are_refused_on_every_route(client, logdir, run, status):
    (logdir.parent / "outside" / "plugins" / "beholder").mkdir(parents=True, exist_ok=True)
    for route in ("frame", "live", "section-info", "config"):
        resp = client.get(f"{BASE}/{route}", query_string={"run": run, "timeout": "0"})
        assert resp.status_code == status, (route, run)
        assert "error" in json.loads(resp.get_data())
    resp = post_config(client, run, {"FPS": 1})
    assert resp.status_code == status


def test_missing_run_parameter(client):
    resp = client.get(f"{BASE}/frame")
    assert resp.status_code == 400
    assert "run" in json.loads(resp.get_data())["error"]


def test_symlinked_run_outside_the_logdir_is_refused(tmp_path):
    logdir, outside = tmp_path / "logs", tmp_path / "outside"
    make_frames(outside)
    make_frames(logdir / "real")
    os.symlink(outside, logdir / "link")
    _, client = plugin_client(logdir)
    for route in ("frame", "section-info", "config"):
        assert client.get(f"{BASE}/{route}?run=link").status_code == 403
    before = read_config_file(outside)
    assert post_config(client, "link", {"FPS": 3}).status_code == 403
    assert read_config_file(outside) == before


def test_a_run_swapped_for_a_symlink_out_is_refused_at_once(tmp_path):
    # Real paths are remembered for a second (the logdir's, cache keys), but never for the check
    # that a run lies inside the logdir: a run just served and then replaced by a link out is refused.
    logdir, outside = tmp_path / "logs", tmp_path / "outside"
    make_frames(outside)
    make_frames(logdir / "run")
    _, client = plugin_client(logdir)
    assert client.get(f"{BASE}/frame?run=run").status_code == 200
    os.rename(logdir / "run", tmp_path / "moved")
    os.symlink(outside, logdir / "run")
    for route in ("frame", "live-data", "section-info", "config"):
        assert client.get(f"{BASE}/{route}?run=run&timeout=0").status_code == 403, route


def test_symlinked_plugin_dir_outside_the_logdir_is_refused(tmp_path):
    logdir, outside = tmp_path / "logs", tmp_path / "outside"
    make_frames(outside)
    (logdir / "run" / "plugins").mkdir(parents=True)
    os.symlink(outside / "plugins" / "beholder", logdir / "run" / "plugins" / "beholder")
    _, client = plugin_client(logdir)
    assert client.get(f"{BASE}/frame?run=run").status_code == 403


def test_symlink_inside_the_logdir_is_allowed(tmp_path):
    make_frames(tmp_path / "real")
    os.symlink(tmp_path / "real", tmp_path / "alias")
    _, client = plugin_client(tmp_path)
    assert client.get(f"{BASE}/frame?run=alias").status_code == 200


# ---------------------------------------------------------------- frames


def png_rgb(data: bytes) -> np.ndarray:
    """Decode PNG bytes to an RGB array."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_frame_is_the_latest_frame_as_png(client, logdir):
    resp = client.get(f"{BASE}/frame?run=.")
    assert resp.status_code == 200
    assert resp.mimetype == "image/png"
    image = Image.open(io.BytesIO(resp.get_data()))
    assert image.mode == "P"  # palette frames stay palette PNGs
    np.testing.assert_array_equal(png_rgb(resp.get_data()), read_frame(logdir))
    assert resp.headers["X-Beholder-Values"] == "arrays"
    assert resp.headers["X-Beholder-Frame-Id"] == "1"
    assert float(resp.headers["X-Beholder-Frame-Time"]) <= time.time()


def test_rgb_frames_are_served_as_rgb(tmp_path):
    os.makedirs(plugin_dir(tmp_path))
    pixels = np.random.default_rng(1).integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    LOCAL.write_atomic(frame_path(tmp_path), encode_frame({"frame_id": 3, "writer": "abc123"}, rows=pixels))
    _, client = plugin_client(tmp_path)
    resp = client.get(f"{BASE}/frame?run=.")
    assert resp.headers["ETag"] == '"abc123-3"'
    np.testing.assert_array_equal(png_rgb(resp.get_data()), pixels)


def test_frame_etag_and_304(client, logdir):
    first = client.get(f"{BASE}/frame?run=.")
    etag = first.headers["ETag"]
    again = client.get(f"{BASE}/frame?run=.", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.get_data() == b""
    assert again.headers["ETag"] == etag
    other = client.get(f"{BASE}/frame?run=.", headers={"If-None-Match": '"someone-else-1"'})
    assert other.status_code == 200
    make_frames(logdir)  # a new writer: a new frame
    newer = client.get(f"{BASE}/frame?run=.", headers={"If-None-Match": etag})
    assert newer.status_code == 200
    assert newer.headers["ETag"] != etag


def test_frame_is_encoded_once_for_many_requests(logdir):
    plugin, client = plugin_client(logdir)
    bodies = {client.get(f"{BASE}/frame?run=.").get_data() for _ in range(5)}
    assert len(bodies) == 1
    assert plugin.hub.encodings == 1
    make_frames(logdir)
    client.get(f"{BASE}/frame?run=.")
    assert plugin.hub.encodings == 2


def test_frame_404_before_the_first_frame(tmp_path):
    os.makedirs(plugin_dir(tmp_path / "fresh"))
    _, client = plugin_client(tmp_path)
    resp = client.get(f"{BASE}/frame?run=fresh")
    assert resp.status_code == 404
    assert "no frame yet" in json.loads(resp.get_data())["error"]


def test_corrupt_frame_file_is_a_clear_error(tmp_path):
    os.makedirs(plugin_dir(tmp_path))
    with open(os.path.join(plugin_dir(tmp_path), "frame.bin"), "wb") as f:
        f.write(b"definitely not a frame")
    _, client = plugin_client(tmp_path)
    resp = client.get(f"{BASE}/frame?run=.")
    assert resp.status_code == 500
    assert "not a valid Beholder frame" in json.loads(resp.get_data())["error"]


# ---------------------------------------------------------------- live (long polling)


def test_live_returns_at_once_when_the_client_has_an_older_frame(client):
    resp = client.get(f"{BASE}/live?run=.&after=%22old-1%22&timeout=5")
    assert resp.status_code == 200
    assert resp.mimetype == "image/png"
    assert resp.headers["ETag"].startswith('"')


def test_live_times_out_with_204_when_nothing_changes(client):
    etag = client.get(f"{BASE}/frame?run=.").headers["ETag"]
    resp = client.get(f"{BASE}/live", query_string={"run": ".", "after": etag, "timeout": "0.3"})
    assert resp.status_code == 204


@pytest.mark.parametrize("timeout", ["-1", "31", "soon", "nan", "inf"])
def test_live_refuses_a_bad_timeout(client, timeout):
    resp = client.get(f"{BASE}/live", query_string={"run": ".", "timeout": timeout})
    assert resp.status_code == 400
    assert "timeout" in json.loads(resp.get_data())["error"]


def test_live_wakes_every_waiter_with_one_encoding(logdir):
    plugin, client = plugin_client(logdir)
    plugin.hub.idle_exit = 0.3
    etag = client.get(f"{BASE}/frame?run=.").headers["ETag"]
    encodings = plugin.hub.encodings
    results: list = []

    def viewer() -> None:
        query = {"run": ".", "after": etag, "timeout": "20"}
        resp = client.get(f"{BASE}/live", query_string=query)
        results.append((resp.status_code, resp.headers.get("ETag"), resp.get_data()))

    threads = [threading.Thread(target=viewer) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: plugin.hub.watcher_count() == 1, message="the watcher thread")
    time.sleep(0.2)
    make_frames(logdir)
    for t in threads:
        t.join(20)
    assert len(results) == 4
    assert {status for status, _, _ in results} == {200}
    assert len({tag for _, tag, _ in results}) == 1
    assert results[0][1] != etag
    assert len({body for _, _, body in results}) == 1
    assert plugin.hub.encodings == encodings + 1
    # Nobody waits any more: the watcher thread goes away.
    wait_for(lambda: plugin.hub.watcher_count() == 0, timeout=10, message="the watcher to exit")


def test_live_waits_for_the_first_frame_of_a_new_run(tmp_path):
    os.makedirs(plugin_dir(tmp_path / "r"))
    plugin, client = plugin_client(tmp_path)
    timer = threading.Timer(0.3, make_frames, args=(tmp_path / "r",))
    timer.start()
    resp = client.get(f"{BASE}/live?run=r&timeout=20")
    timer.join()
    assert resp.status_code == 200
    assert resp.headers["X-Beholder-Frame-Id"] == "1"


# ---------------------------------------------------------------- section info


def test_section_info_is_the_latest_frames_own_table(client, logdir):
    resp = client.get(f"{BASE}/section-info?run=.")
    assert resp.status_code == 200
    doc = json.loads(resp.get_data())
    frame = read_frame_file(logdir)
    assert doc["version"] == 2
    assert doc["sections"] == frame.sections and doc["frame_id"] == frame.header["frame_id"]
    assert doc["step"] == frame.header["step"]
    assert [s["name"] for s in doc["sections"]] == ["w", "b"]
    shown = client.get(f"{BASE}/frame?run=.")
    assert doc["writer"] == frame.header["writer"] == shown.headers["X-Beholder-Writer"]
    # What the dashboard lays its info panel out with: each record's keys, and sections whose
    # pixel heights and 5 px separators add up to the frame's height.
    for rec in doc["sections"]:
        assert {"name", "shape", "height", "min", "mean", "max", "range", "top"} <= set(rec)
    tops = [rec["top"] for rec in doc["sections"]]
    assert tops == [sum(r["height"] + 5 for r in doc["sections"][:i]) for i in range(len(tops))]
    last = doc["sections"][-1]
    assert shown.headers["X-Beholder-Size"] == f"{frame.width}x{last['top'] + last['height']}"


def test_section_info_changes_with_the_frame_it_belongs_to(tmp_path):
    from beholder_plugin import Beholder

    set_config(tmp_path, values="arrays", mode="current", FPS=30)
    _, client = plugin_client(tmp_path)
    with Beholder(tmp_path, strict=True) as beholder:
        for step, names in enumerate((["a", "b"], ["c"], ["d", "e", "f"])):
            beholder.frame_due_now()
            assert beholder.update(arrays={n: np.arange(3.0 + step) for n in names})
            beholder.flush()
            doc = json.loads(client.get(f"{BASE}/section-info?run=.").get_data())
            frame = client.get(f"{BASE}/frame?run=.")
            assert [s["name"] for s in doc["sections"]] == names
            assert str(doc["frame_id"]) == frame.headers["X-Beholder-Frame-Id"] == str(step + 1)


def test_section_info_says_what_a_variance_frame_is_over(tmp_path):
    """Variance mode: the table carries the frame's window (frames, size, the shape change that restarted
    it), for the dashboard's note; a current-values frame has none."""
    from beholder_plugin import Beholder

    set_config(tmp_path, values="arrays", mode="variance", FPS=30, window_size=4)
    _, client = plugin_client(tmp_path)
    windows = []
    with Beholder(tmp_path, strict=True) as beholder:
        for length in (3, 3, 7):
            beholder.frame_due_now()
            assert beholder.update(arrays={"tokens": np.arange(length * 2.0).reshape(1, length, 2)})
            beholder.flush()
            doc = json.loads(client.get(f"{BASE}/section-info?run=.").get_data())
            assert doc["window"] == read_frame_file(tmp_path).header["window"]
            windows.append(doc["window"])
        assert windows == [
            {"frames": 1, "size": 4}, {"frames": 2, "size": 4},
            {"frames": 1, "size": 4, "changed": {"name": "tokens", "was": [1, 3, 2], "now": [1, 7, 2],
                                                 "sections": 1}},
        ]
        set_config(tmp_path, values="arrays", mode="current", FPS=30)
        beholder.frame_due_now()
        assert beholder.update(arrays={"tokens": np.ones((1, 7, 2))})
        beholder.flush()
        assert json.loads(client.get(f"{BASE}/section-info?run=.").get_data())["window"] is None


@pytest.mark.parametrize("window, kept", [
    ("15", None),
    ({"frames": -1, "size": 15}, None),
    ({"frames": True, "size": 15}, None),
    ({"frames": 1, "size": 15, "changed": {"name": 3, "was": [1], "now": [2], "sections": 1}},
     {"frames": 1, "size": 15}),
    ({"frames": 1, "size": 15, "changed": {"name": "x", "was": [1], "now": ["2"], "sections": 1}},
     {"frames": 1, "size": 15}),
    ({"frames": 1, "size": 15, "changed": {"name": "x", "was": [1], "now": [2], "sections": 1, "y": 0}},
     {"frames": 1, "size": 15, "changed": {"name": "x", "was": [1], "now": [2], "sections": 1}}),
])
def test_a_malformed_window_is_left_out_of_the_section_table(window, kept):
    from beholder_plugin.server.http_answers import variance_window

    assert variance_window(window) == kept


def test_section_info_before_any_frame(tmp_path):
    os.makedirs(plugin_dir(tmp_path / "fresh"))
    _, client = plugin_client(tmp_path)
    resp = client.get(f"{BASE}/section-info?run=fresh")
    assert resp.status_code == 200
    assert json.loads(resp.get_data()) == {
        "version": 2, "frame_id": None, "writer": None, "step": None, "sections": []}


V1_FRAME = (lambda head: b"BHFRAME\0" + len(head).to_bytes(4, "little") + head + b"abc")(
    json.dumps({"version": 1, "height": 1, "width": 1, "channels": 3}).encode())


def test_an_old_or_corrupt_frame_file_is_a_clear_error(client, logdir):
    LOCAL.write_atomic(frame_path(logdir), [V1_FRAME])
    query = {"run": ".", "x": "1", "y": "1", "timeout": "1"}
    for route in ("frame", "live", "section-info", "value"):
        resp = client.get(f"{BASE}/{route}", query_string=query)
        assert resp.status_code == 500, route
        error = json.loads(resp.get_data())["error"]
        assert "version 1, written by an older Beholder" in error, route
        assert "reads version 2" in error and "Upgrade" in error, route
    # A kept frame of version 1 (say, a ring left by an older trainer) says so too.
    kept = "f-0000000000000001-ab-1-1.bin"
    LOCAL.write_atomic(history_frame_path(logdir, kept), [V1_FRAME])
    for route, param in (("history/frame", "name"), ("value", "frame")):
        resp = client.get(f"{BASE}/{route}", query_string={**query, param: kept})
        assert resp.status_code == 500, route
        assert "version 1" in json.loads(resp.get_data())["error"], route
    LOCAL.write_atomic(frame_path(logdir), [b"not a frame at all"])
    for route in ("frame", "section-info", "value"):
        resp = client.get(f"{BASE}/{route}", query_string=query)
        assert resp.status_code == 500 and "bad magic" in json.loads(resp.get_data())["error"], route


# ---------------------------------------------------------------- config


def test_config_get_returns_the_file(client, logdir):
    set_config(logdir, colormap="viridis", FPS=7)
    doc = json.loads(client.get(f"{BASE}/config?run=.").get_data())
    assert doc["config"] == {**DEFAULT_CONFIG, "colormap": "viridis", "FPS": 7}
    assert doc["writable"] is True
    assert doc["problem"] is None


def test_config_get_defaults_without_a_file(tmp_path):
    os.makedirs(plugin_dir(tmp_path / "r"))
    _, client = plugin_client(tmp_path)
    doc = json.loads(client.get(f"{BASE}/config?run=r").get_data())
    assert doc["config"] == DEFAULT_CONFIG
    assert not os.path.exists(config_path(tmp_path / "r"))  # a GET writes nothing


def test_config_post_partial_update(client, logdir):
    set_config(logdir, colormap="viridis")
    resp = post_config(client, "train/a", {"FPS": 0, "is_recording": True})
    assert resp.status_code == 200
    on_disk = read_config_file(logdir / "train" / "a")
    assert on_disk["FPS"] == 0 and on_disk["is_recording"] is True
    assert on_disk["colormap"] == "magma"  # the other run is untouched
    assert json.loads(resp.get_data())["config"]["FPS"] == 0
    assert read_config_file(logdir)["colormap"] == "viridis"


def test_config_post_sets_the_history_ring(client, logdir):
    resp = post_config(client, ".", {"history_mb": 0, "history_seconds": 30})
    assert resp.status_code == 200
    assert json.loads(resp.get_data())["config"]["history_mb"] == 0
    on_disk = read_config_file(logdir)
    assert (on_disk["history_mb"], on_disk["history_seconds"]) == (0, 30)


def test_config_post_keeps_other_keys(client, logdir):
    set_config(logdir, colormap="plasma", window_size=4)
    post_config(client, ".", {"mode": "current"})
    on_disk = read_config_file(logdir)
    assert (on_disk["colormap"], on_disk["window_size"], on_disk["mode"]) == ("plasma", 4, "current")


@pytest.mark.parametrize(
    "body, named",
    [
        ({"FPS": 31}, "FPS"),
        ({"FPS": -1}, "FPS"),
        ({"FPS": True}, "FPS"),
        ({"FPS": 2.5}, "FPS"),
        ({"window_size": 1}, "window_size"),
        ({"window_size": "15"}, "window_size"),
        ({"colormap": "jet"}, "colormap"),
        ({"values": "grads"}, "values"),
        ({"mode": None}, "mode"),
        ({"scaling": "global"}, "scaling"),
        ({"show_all": 1}, "show_all"),
        ({"is_recording": "yes"}, "is_recording"),
        ({"version": 2}, "version"),
        ({"history_mb": -1}, "history_mb"),
        ({"history_mb": 1 << 21}, "history_mb"),
        ({"history_mb": True}, "history_mb"),
        ({"history_seconds": 1.5}, "history_seconds"),
        ({"history_seconds": "600"}, "history_seconds"),
        ({"FPS": 5, "brightness": 3}, "brightness"),
        # Python's re reads these, RE2 (the trainer's engine) does not: refused here, not failing there.
        ({"filter": "/(?=conv)/"}, "filter"),
        ({"filter": "/(a)\\1/"}, "filter"),
        ({"filter": "x" * 1001}, "filter"),
        ([1, 2], "object"),
        ("FPS", "object"),
    ],
)
def test_config_post_refuses_bad_values_and_writes_nothing(client, logdir, body, named):
    before = open(config_path(logdir), "rb").read()
    resp = post_config(client, ".", body)
    assert resp.status_code == 400
    assert named in json.loads(resp.get_data())["error"]
    assert open(config_path(logdir), "rb").read() == before


def test_config_post_refuses_malformed_json(client, logdir):
    before = open(config_path(logdir), "rb").read()
    for body in (b"{", b"\xff\xfe", b"", b'{"FPS": NaN}'):
        resp = post_config(client, ".", body)
        assert resp.status_code == 400, body
        assert "error" in json.loads(resp.get_data())
    assert open(config_path(logdir), "rb").read() == before


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data"]
)
def test_config_post_refuses_non_json_content_types(client, logdir, content_type):
    before = open(config_path(logdir), "rb").read()
    resp = post_config(client, ".", b'{"is_recording": true}', content_type=content_type)
    assert resp.status_code == 415
    assert open(config_path(logdir), "rb").read() == before


def test_config_post_form_cannot_start_a_recording(client, logdir):
    resp = client.post(f"{BASE}/config?run=.", data={"is_recording": "true"})
    assert resp.status_code == 415
    assert read_config_file(logdir)["is_recording"] is False


def test_config_post_caps_the_body(client, logdir):
    before = open(config_path(logdir), "rb").read()
    body = json.dumps({"FPS": 3, "pad": "x" * 10000}).encode()
    assert post_config(client, ".", body).status_code == 413
    assert open(config_path(logdir), "rb").read() == before


def test_config_other_methods(client):
    resp = client.put(f"{BASE}/config?run=.", data=b"{}", content_type="application/json")
    assert resp.status_code == 405
    assert "POST" in resp.headers["Allow"]


def test_config_with_an_invalid_file_on_disk(client, logdir):
    with open(config_path(logdir), "w") as f:
        f.write('{"FPS": 99}')
    doc = json.loads(client.get(f"{BASE}/config?run=.").get_data())
    assert doc["config"] == DEFAULT_CONFIG
    assert "FPS" in doc["problem"]
    # A valid change from the dashboard replaces the broken file.
    assert post_config(client, ".", {"colormap": "inferno"}).status_code == 200
    assert read_config_file(logdir) == {"version": 1, **DEFAULT_CONFIG, "colormap": "inferno"}


def _immutable(path, on: bool) -> bool:
    """chattr +i / -i (root ignores permission bits, not the immutable flag)."""
    flag = "+i" if on else "-i"
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


def test_config_on_a_read_only_run(client, logdir):
    directory = plugin_dir(logdir)
    if not _immutable(directory, True):
        pytest.skip("chattr +i is not available here")
    try:
        before = open(config_path(logdir), "rb").read()
        doc = json.loads(client.get(f"{BASE}/config?run=.").get_data())
        assert doc["writable"] is False
        resp = post_config(client, ".", {"FPS": 3})
        assert resp.status_code == 403
        assert "cannot write" in json.loads(resp.get_data())["error"]
        assert open(config_path(logdir), "rb").read() == before
    finally:
        _immutable(directory, False)


def test_directories_in_place_of_the_files_get_clear_answers(tmp_path):
    make_frames(tmp_path)
    for name in ("config.json", "frame.bin"):
        path = os.path.join(plugin_dir(tmp_path), name)
        if os.path.exists(path):
            os.remove(path)
        os.mkdir(path)
    _, client = plugin_client(tmp_path)
    resp = client.get(f"{BASE}/config?run=.")
    assert resp.status_code == 200
    body = json.loads(resp.get_data())
    assert body["config"] == DEFAULT_CONFIG and "config.json is not a regular file" in body["problem"]
    resp = client.get(f"{BASE}/section-info?run=.")
    assert resp.status_code == 500
    assert "frame.bin is not a regular file" in json.loads(resp.get_data())["error"]
    resp = post_config(client, ".", {"FPS": 5})
    assert resp.status_code == 403 and os.path.isdir(os.path.join(plugin_dir(tmp_path), "config.json"))


def test_the_server_imports_nothing_from_the_trainer():
    """No module of beholder_plugin/server imports beholder_plugin.trainer (the floors of the package)."""
    import ast
    import pathlib

    import beholder_plugin.server

    found = []
    for path in pathlib.Path(beholder_plugin.server.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = ["." * node.level + (node.module or "")]
            found += [(path.name, n) for n in names if n.startswith(("beholder_plugin.trainer", "..trainer"))]
    assert found == []


def test_the_colormaps_route_lists_the_settings_colormaps_in_order(client):
    from beholder_plugin.protocol.settings import COLORMAPS

    maps = client.get(f"{BASE}/colormaps").get_json()
    assert list(maps) == list(COLORMAPS)


def test_a_logdir_inside_a_run_gets_the_tab_and_a_hint_naming_the_right_logdir(tmp_path):
    """--logdir pointed at a run's plugins/beholder/ (or plugins/) folder found no run: the tab hid under
    "inactive" and said "No runs yet". The tab is now active there, and GET ping carries the hint the
    welcome page shows: the folder that holds the run folders."""
    logs = tmp_path / "logs"
    make_frames(logs / "run1")
    for inside in (plugin_dir(logs / "run1"), os.path.dirname(plugin_dir(logs / "run1"))):
        plugin, client = plugin_client(inside)
        answer = json.loads(client.get(BASE + "/ping").get_data())
        assert plugin.is_active() and answer["ok"] is True
        assert f"start TensorBoard with --logdir {logs} " in answer["hint"]
        assert json.loads(client.get(BASE + "/runs").get_data()) == []
    for logdir in (logs, logs / "run1", tmp_path / "elsewhere"):
        os.makedirs(logdir, exist_ok=True)
        plugin, client = plugin_client(logdir)
        answer = json.loads(client.get(BASE + "/ping").get_data())
        assert "hint" not in answer and answer["logdir"] == str(logdir)
        assert plugin.is_active() == (logdir != tmp_path / "elsewhere")


def test_a_logdir_that_does_not_exist_gets_the_tab_and_a_hint_naming_it(tmp_path):
    """A mistyped --logdir said "No runs yet: start a training script", to a user whose script was
    running, and hid the tab under "inactive"."""
    missing = tmp_path / "logz"
    plugin, client = plugin_client(missing)
    answer = json.loads(client.get(BASE + "/ping").get_data())
    assert plugin.is_active() and answer["logdir"] == str(missing)
    assert answer["hint"].startswith(f"--logdir {missing} does not exist (yet)") and "typo" in answer["hint"]
    missing.mkdir()  # (a trainer made it: no hint from then on)
    assert "hint" not in json.loads(client.get(BASE + "/ping").get_data())
