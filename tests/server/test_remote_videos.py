"""Recordings of a run on a remote logdir (fsspec memory://), listed and downloaded through the plugin."""

from __future__ import annotations

import os
import uuid

import imageio_ffmpeg
import numpy as np
from server_support import BASE, plugin_client, wait_for
from support import set_config

from beholder_plugin import Beholder
from beholder_plugin.protocol.files import files_for
from beholder_plugin.protocol.runfiles import plugin_dir

IMAGE = np.add.outer(np.arange(12), np.arange(16)).astype(np.float32)


def test_an_uploaded_recording_is_listed_finished_and_downloads_whole(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    url = f"memory://logs-{uuid.uuid4().hex[:12]}"
    set_config(f"{url}/a", values="frames", mode="current", FPS=30, is_recording=True)
    beholder = Beholder(f"{url}/a", strict=True, max_remote_fps=30, config_poll_seconds=0.05)
    try:
        for i in range(6):
            before = beholder.frames_written
            wait_for(lambda i=i, before=before: (beholder.update(frame=IMAGE + i), beholder.flush(),
                                  beholder.frames_written > before)[-1], timeout=20, interval=0.01)
    finally:
        beholder.close()  # finishes the recording and uploads it
    files = files_for(url)
    stored = [n for n in files.listdir(plugin_dir(f"{url}/a")) if n.endswith(".mp4")]
    assert len(stored) == 1

    _, client = plugin_client(url)
    listed = client.get(f"{BASE}/videos", query_string={"run": "a"}).get_json()
    assert [(v["name"], v["kind"], v["finished"]) for v in listed] == [(stored[0], "recording", True)]
    data = files.read(f"{plugin_dir(f'{url}/a')}/{stored[0]}", 1 << 30)
    assert listed[0]["size"] == len(data) and listed[0]["time"] > 0
    got = client.get(f"{BASE}/video", query_string={"run": "a", "name": stored[0]})
    assert got.status_code == 200 and got.headers["Content-Length"] == str(len(data))
    assert got.get_data() == data
    path = tmp_path / "download.mp4"
    path.write_bytes(got.get_data())
    reader = imageio_ffmpeg.read_frames(str(path))
    assert next(reader)["size"] == (16, 12)
    assert len(list(reader)) >= 6
    missing = client.get(f"{BASE}/video", query_string={"run": "a", "name": "video-none.mp4"})
    assert missing.status_code == 404 and "no video" in missing.get_json()["error"]
    assert os.listdir(cwd) == []
