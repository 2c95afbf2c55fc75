"""The plugin on a remote logdir: trainer and plugin in one process on fsspec's memory:// store."""

from __future__ import annotations

import io
import json
import os
import sys
import uuid

import numpy as np
import pytest
from PIL import Image
from server_support import BASE, plugin_client, wait_for
from support import set_config

from beholder_plugin import Beholder
from beholder_plugin.protocol import remote_files
from beholder_plugin.protocol.files import files_for
from beholder_plugin.protocol.runfiles import config_path, read_config

IMAGE = np.add.outer(np.arange(12), np.arange(16)).astype(np.float32)


@pytest.fixture
def logdir(tmp_path, monkeypatch):
    """A memory:// logdir holding runs "a" and "nested/b" (the working directory is an empty folder)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    url = f"memory://logs-{uuid.uuid4().hex[:12]}"
    for run in ("a", "nested/b"):
        set_config(f"{url}/{run}", values="frames", FPS=30)
    files_for(url).write_atomic(f"{url}/not-a-run/plugins/scalars/x", [b"x"])
    return url


@pytest.fixture
def trainer(logdir):
    """A Beholder writing run "a" (frames are written by calling frame())."""
    beholder = Beholder(f"{logdir}/a", strict=True, max_remote_fps=30, config_poll_seconds=0.05)

    def frame():
        """Write one more frame and return the number written."""
        before = beholder.frames_written
        wait_for(lambda: (beholder.update(frame=IMAGE), beholder.flush(),
                          beholder.frames_written > before)[-1], timeout=20, interval=0.01)
        return beholder.frames_written

    frame.beholder = beholder
    yield frame
    beholder.close()


def post_config(client, run, body, content_type="application/json"):
    """POST a config change."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(f"{BASE}/config?run={run}", data=data, content_type=content_type)


def test_runs_are_listed_from_the_store_with_its_kind(logdir):
    plugin, client = plugin_client(logdir)
    answer = client.get(f"{BASE}/runs").get_json()
    assert [(r["run"], r["age"], r["storage"]) for r in answer] == [
        ("a", None, "memory"), ("nested/b", None, "memory")
    ]
    assert plugin.is_active()
    assert os.listdir(".") == []


def test_frames_arrive_through_frame_and_live(logdir, trainer):
    _, client = plugin_client(logdir)
    first = trainer()
    reply = client.get(f"{BASE}/frame?run=a")
    assert reply.status_code == 200 and reply.headers["X-Beholder-Frame-Id"] == str(first)
    assert reply.headers["X-Beholder-Storage"] == "memory" and reply.headers["X-Beholder-Max-Fps"] == "30"
    assert Image.open(io.BytesIO(reply.data)).size == (16, 12)
    etag = reply.headers["ETag"]
    assert client.get(f"{BASE}/frame?run=a", headers={"If-None-Match": etag}).status_code == 304
    assert client.get(f"{BASE}/live?run=a&timeout=0.3&after={etag}").status_code == 204
    second = trainer()
    live = client.get(f"{BASE}/live?run=a&timeout=20&after={etag}")
    assert live.status_code == 200 and live.headers["X-Beholder-Frame-Id"] == str(second)
    age = {r["run"]: r["age"] for r in client.get(f"{BASE}/runs?fresh=1").get_json()}
    assert age["a"] is not None and age["nested/b"] is None


def test_a_closed_remote_trainer_is_listed_as_ended(logdir, trainer, monkeypatch):
    from beholder_plugin.server import runs as runs_module

    monkeypatch.setattr(runs_module, "ENDED_CHECK_AGE", 0.0)
    _, client = plugin_client(logdir)
    last = trainer()
    assert "ended" not in client.get(f"{BASE}/runs?fresh=1").get_json()[0]
    trainer.beholder.close()
    monkeypatch.setattr(runs_module, "ENDED_RECHECK_SECONDS", 0.0)
    listed = {r["run"]: r for r in client.get(f"{BASE}/runs").get_json()}
    assert listed["a"]["ended"]["frame_id"] == last and "ended" not in listed["nested/b"]


def test_history_and_kept_frames_are_served(logdir, trainer):
    _, client = plugin_client(logdir)
    trainer()
    last = trainer()
    kept = client.get(f"{BASE}/history?run=a").get_json()
    assert [k["frame_id"] for k in kept][-1] == last
    reply = client.get(f"{BASE}/history/frame?run=a&name={kept[-1]['name']}")
    assert reply.status_code == 200 and reply.headers["X-Beholder-Frame-Id"] == str(last)
    assert client.get(f"{BASE}/history/frame?run=a&name=frame.bin").status_code == 400


def test_a_settings_change_reaches_the_trainer_through_the_store(logdir, trainer):
    _, client = plugin_client(logdir)
    reply = post_config(client, "a", {"colormap": "viridis"})
    assert reply.status_code == 200 and reply.get_json()["writable"] is True
    assert read_config(f"{logdir}/a")["colormap"] == "viridis"
    wait_for(lambda: (trainer(), client.get(f"{BASE}/frame?run=a").headers["X-Beholder-Colormap"])[-1]
             == "viridis", timeout=20)
    assert trainer.beholder.config["colormap"] == "viridis"


@pytest.mark.parametrize(
    ("run", "status"),
    [("", 400), ("/a", 400), ("a%00", 400), ("..", 403), ("a/../..", 403), ("nested/../../x", 403),
     ("missing", 404), ("not-a-run", 404), ("a/plugins/beholder", 404), ("./a", 200), ("nested//b", 200),
     ("nested/b/..", 404)],
)
def test_run_names_are_refused_as_they_are_locally(logdir, run, status):
    _, client = plugin_client(logdir)
    reply = client.get(f"{BASE}/config?run={run}")
    assert reply.status_code == status, reply.get_json()
    if status != 200:
        assert "error" in reply.get_json()


def test_config_posts_are_refused_as_they_are_locally(logdir):
    _, client = plugin_client(logdir)
    before = files_for(logdir).read(config_path(f"{logdir}/a"), 1 << 16)
    assert post_config(client, "a", b"x" * 5000).status_code == 413
    assert post_config(client, "a", {"colormap": "nope"}).status_code == 400
    assert post_config(client, "a", {"FPS": 1}, content_type="text/plain").status_code == 415
    assert client.put(f"{BASE}/config?run=a", data=b"{}", content_type="application/json").status_code == 405
    assert post_config(client, "..", {"FPS": 1}).status_code == 403
    assert files_for(logdir).read(config_path(f"{logdir}/a"), 1 << 16) == before
    assert client.get(f"{BASE}/frame?run=a").status_code == 404  # no frame yet


def test_a_logdir_whose_backend_is_missing_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if gcsfs were not installed
    monkeypatch.setattr(remote_files, "_CACHE", {})
    plugin, client = plugin_client("gs://bucket/logs")
    assert plugin.is_active() is False and client.get(f"{BASE}/runs").get_json() == []
    reply = client.get(f"{BASE}/frame?run=a")
    assert reply.status_code == 500 and "pip install gcsfs" in reply.get_json()["error"]


def test_a_store_that_fails_is_a_json_error_not_a_traceback(logdir, trainer, monkeypatch):
    trainer()
    _, client = plugin_client(logdir)
    fs = files_for(logdir).fs

    def unreachable(*args, **kwargs):
        raise ConnectionError("Could not connect to the endpoint URL")

    monkeypatch.setattr(fs, "cat_file", unreachable)
    reply = client.get(f"{BASE}/frame?run=a")
    assert reply.status_code == 500 and "Could not connect" in reply.get_json()["error"]
    monkeypatch.delattr(fs, "cat_file")  # the store comes back
    assert client.get(f"{BASE}/frame?run=a").status_code == 200


def test_a_frame_uploaded_just_before_the_watcher_starts_still_wakes_the_viewer(logdir, trainer):
    from beholder_plugin.server.frame_hub import FrameHub

    trainer()
    hub = FrameHub()
    path = f"{logdir}/a/plugins/beholder/frame.bin"
    old = hub.latest(path)
    real_latest = hub.latest

    def latest_then_upload(p, expect=None):
        """The viewer reads the old frame; the next one lands before its watcher starts."""
        found = real_latest(p, expect)
        if found is not None and found.etag == old.etag:
            trainer()
        return found

    hub.latest = latest_then_upload
    hub.wait_newer(path, old.etag, timeout=2)
    hub.latest = real_latest
    assert hub.changes_seen(path) >= 1  # woken by the watcher, not by the timeout
    assert hub.latest(path).etag != old.etag
