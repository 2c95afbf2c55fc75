"""The routes for inspecting and exporting, over HTTP to a real plugin: export, videos, video, colormaps."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
from server_support import BASE, plugin_client, set_config, wait_for

from beholder_plugin import Beholder
from beholder_plugin.protocol.history import list_history, read_history_frame
from beholder_plugin.protocol.names import plugin_dir
from beholder_plugin.server import videos as videos_module


def write_frames(run, count: int, **config) -> None:
    """`count` frames of a 12x10 np.arange array plus its step, each written before the next."""
    set_config(run, **{"values": "arrays", "mode": "current", "FPS": 30, **config})
    with Beholder(run, strict=True) as beholder:
        for step in range(1, count + 1):
            beholder.frame_due_now()  # every update is a frame
            arr = np.arange(120, dtype=np.float32).reshape(12, 10) + step
            assert beholder.update(arrays={"a": arr})
            beholder.flush()


@pytest.fixture
def world(tmp_path):
    """A logdir with run "r" holding 5 kept frames; (logdir, run dir, client)."""
    logdir = tmp_path / "logs"
    run = logdir / "r"
    run.mkdir(parents=True)
    write_frames(str(run), 5)
    _, client = plugin_client(logdir)
    return logdir, run, client


def post_export(client, body, run="r", content_type="application/json"):
    """POST export?run= with a JSON body (or raw bytes)."""
    data = body if isinstance(body, bytes) else json.dumps(body)
    return client.post(f"{BASE}/export", query_string={"run": run}, data=data, content_type=content_type)


def exports_of(run) -> list[str]:
    """The files in the run's exports folder (hidden ones included)."""
    folder = os.path.join(plugin_dir(run), "exports")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_export_encodes_the_kept_range_and_lists_and_serves_it(world):
    import imageio_ffmpeg

    _, run, client = world
    kept = list_history(run)
    assert len(kept) == 5
    resp = post_export(client, {"from": kept[1].name, "to": kept[3].name})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    answer = resp.get_json()
    assert answer["frames"] == 3 and answer["dropped"] == 0
    assert answer["name"].startswith("exports/export-step2-4-") and answer["name"].endswith(".mp4")
    path = os.path.join(plugin_dir(run), answer["name"])
    reader = imageio_ffmpeg.read_frames(path)
    meta = next(reader)
    frames = list(reader)
    assert len(frames) == 3
    first = read_history_frame(str(run), kept[1].name)
    assert meta["size"] == (first.width, first.height)
    # H.264 is lossy, but a frame decodes close to the kept frame's own RGB pixels.
    decoded = np.frombuffer(frames[0], np.uint8).reshape(first.height, first.width, 3)
    assert np.abs(decoded.astype(int) - first.rgb().astype(int)).mean() < 8

    listed = client.get(f"{BASE}/videos", query_string={"run": "r"}).get_json()
    assert [(v["name"], v["kind"]) for v in listed] == [(answer["name"], "export")]
    assert listed[0]["size"] == os.path.getsize(path)
    got = client.get(f"{BASE}/video", query_string={"run": "r", "name": answer["name"]})
    assert got.status_code == 200
    assert got.headers["Content-Type"] == "video/mp4"
    assert got.headers["Content-Disposition"] == f'attachment; filename="{os.path.basename(path)}"'
    with open(path, "rb") as f:
        assert got.get_data() == f.read()
    assert exports_of(run) == [os.path.basename(path)]  # no partial file left behind


def test_recordings_are_listed_beside_exports_and_nothing_else(world):
    _, run, client = world
    pdir = plugin_dir(run)
    with open(os.path.join(pdir, "video-20260101-000000-000.mp4"), "wb") as f:
        f.write(b"\x00\x00\x00\x18ftypisom recording")
    for junk in ("notes.txt", ".video-hidden.mp4", "video.mp4.tmp"):
        with open(os.path.join(pdir, junk), "wb") as f:
            f.write(b"x")
    os.mkdir(os.path.join(pdir, "folder.mp4"))
    os.symlink("/etc/hostname", os.path.join(pdir, "link.mp4"))
    listed = client.get(f"{BASE}/videos", query_string={"run": "r"}).get_json()
    assert [(v["name"], v["kind"]) for v in listed] == [("video-20260101-000000-000.mp4", "recording")]
    got = client.get(f"{BASE}/video", query_string={"run": "r", "name": "video-20260101-000000-000.mp4"})
    assert got.status_code == 200 and got.get_data() == b"\x00\x00\x00\x18ftypisom recording"


@pytest.mark.parametrize(
    "name",
    ["../config.json", "exports/../../../x.mp4", "/etc/passwd.mp4", "config.json", "a/b.mp4",
     "exports/.hidden.mp4", ".x.mp4", "video.mp4\x00", "x..mp4", "", "history/f.mp4", "exports/sub/x.mp4",
     "video\n.mp4", "vidéo.mp4", "video.mp4\n"],
)
def test_bad_video_names_are_refused_with_400(world, name):
    _, _, client = world
    resp = client.get(f"{BASE}/video", query_string={"run": "r", "name": name})
    assert resp.status_code == 400
    assert "not a video name" in resp.get_json()["error"]


def test_missing_video_name_and_missing_file(world):
    _, _, client = world
    assert client.get(f"{BASE}/video", query_string={"run": "r"}).status_code == 400
    resp = client.get(f"{BASE}/video", query_string={"run": "r", "name": "video-nope.mp4"})
    assert resp.status_code == 404 and "no video" in resp.get_json()["error"]


def test_videos_symlinked_out_of_the_logdir_are_refused(world, tmp_path):
    _, run, client = world
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"secret")
    os.symlink(outside, os.path.join(plugin_dir(run), "video-link.mp4"))
    os.symlink(tmp_path, os.path.join(plugin_dir(run), "exports"))
    resp = client.get(f"{BASE}/video", query_string={"run": "r", "name": "video-link.mp4"})
    assert resp.status_code == 403 and b"secret" not in resp.get_data()
    # An exports folder that leads out: nothing is listed from it, and nothing is written into it.
    assert client.get(f"{BASE}/videos", query_string={"run": "r"}).status_code == 403
    kept = list_history(run)
    assert post_export(client, {"from": kept[0].name, "to": kept[1].name}).status_code == 403
    assert sorted(os.listdir(tmp_path)) == sorted(["logs", "secret.mp4"])


def test_a_fifo_in_place_of_a_video_is_refused_at_once(world):
    _, run, client = world
    os.mkfifo(os.path.join(plugin_dir(run), "video-fifo.mp4"))
    resp = client.get(f"{BASE}/video", query_string={"run": "r", "name": "video-fifo.mp4"})
    assert resp.status_code == 404 and "not a regular file" in resp.get_json()["error"]


@pytest.mark.parametrize("run", ["../r", "/tmp", "r/../..", "nope"])
def test_video_routes_refuse_bad_runs(world, run):
    _, _, client = world
    for resp in (
        client.get(f"{BASE}/videos", query_string={"run": run}),
        client.get(f"{BASE}/video", query_string={"run": run, "name": "video-x.mp4"}),
        post_export(client, {"from": "x", "to": "y"}, run=run),
    ):
        assert resp.status_code in (400, 403, 404) and "error" in resp.get_json()


@pytest.mark.parametrize(
    "body, message",
    [
        ({"from": "../../config.json", "to": "x"}, "kept frame's name"),
        ({"from": "frame.bin", "to": "frame.bin"}, "kept frame's name"),
        ({"from": 3, "to": None}, "kept frame's name"),
        ({"to": "x"}, "kept frame's name"),
        ([1, 2], "JSON object"),
        ("from", "JSON object"),
        ({"from": "FIRST", "to": "LAST", "fps": 0}, "'fps'"),
        ({"from": "FIRST", "to": "LAST", "fps": True}, "'fps'"),
        ({"from": "FIRST", "to": "LAST", "fps": "15"}, "'fps'"),
        ({"from": "LAST", "to": "FIRST"}, "later frame"),
    ],
)
def test_bad_export_requests_are_400_and_write_nothing(world, body, message):
    _, run, client = world
    kept = list_history(run)
    if isinstance(body, dict):
        body = {k: {"FIRST": kept[0].name, "LAST": kept[-1].name}.get(v, v) if isinstance(v, str) else v
                for k, v in body.items()}
    resp = post_export(client, body)
    assert resp.status_code == 400
    assert message in resp.get_json()["error"]
    assert exports_of(run) == []


def test_export_of_frames_no_longer_kept_is_404(world):
    _, run, client = world
    kept = list_history(run)
    gone = "f-0000000000000001-abc-1-1.bin"
    resp = post_export(client, {"from": gone, "to": kept[-1].name})
    assert resp.status_code == 404 and "no longer kept" in resp.get_json()["error"]


def test_export_of_too_many_frames_is_refused(world, monkeypatch):
    _, run, client = world
    monkeypatch.setattr(videos_module, "MAX_EXPORT_FRAMES", 4)
    kept = list_history(run)
    resp = post_export(client, {"from": kept[0].name, "to": kept[4].name})
    assert resp.status_code == 400
    assert "holds 5 frames; at most 4" in resp.get_json()["error"]
    assert exports_of(run) == []
    assert post_export(client, {"from": kept[1].name, "to": kept[4].name}).status_code == 200


def test_export_transport_errors(world):
    _, run, client = world
    kept = list_history(run)
    body = {"from": kept[0].name, "to": kept[1].name}
    assert post_export(client, body, content_type="text/plain").status_code == 415
    assert post_export(client, b"{" + b" " * 5000 + b"}").status_code == 413
    assert post_export(client, b"{not json").status_code == 400
    got = client.get(f"{BASE}/export", query_string={"run": "r"})
    assert got.status_code == 405 and got.headers["Allow"] == "POST"
    assert exports_of(run) == []


def test_one_export_at_a_time(world, monkeypatch):
    _, run, client = world
    kept = list_history(run)
    started, release = threading.Event(), threading.Event()
    real = videos_module.encode_export

    def slow_encode(*args):
        started.set()
        release.wait(30)
        return real(*args)

    monkeypatch.setattr(videos_module, "encode_export", slow_encode)
    body = {"from": kept[0].name, "to": kept[1].name}
    results = []
    first = threading.Thread(target=lambda: results.append(post_export(client, body).status_code))
    first.start()
    assert started.wait(30)
    second = post_export(client, body)
    release.set()
    first.join(30)
    assert second.status_code == 409 and "another export" in second.get_json()["error"]
    assert results == [200]


def test_frame_headers_carry_colormap_and_trainer_health(world):
    _, run, client = world
    resp = client.get(f"{BASE}/frame", query_string={"run": "r"})
    assert resp.headers["X-Beholder-Colormap"] == "magma"
    assert resp.headers["X-Beholder-Mode"] == "current"
    assert resp.headers["X-Beholder-Failures"] == "0"
    assert resp.headers["X-Beholder-Skipped"] == "0"
    assert "X-Beholder-Last-Error" not in resp.headers


def test_value_names_bounds_and_colormap_and_section_info_of_a_kept_frame(world):
    _, run, client = world
    kept = list_history(run)
    answer = client.get(f"{BASE}/value", query_string={"run": "r", "x": 0, "y": 0, "frame": kept[0].name})
    doc = answer.get_json()
    assert doc["index"] == [0, 0] and doc["value"] == 1.0 and doc["step"] == 1
    assert doc["bounds"] == [1.0, 120.0] and doc["colormap"] == "magma"
    info = client.get(f"{BASE}/section-info", query_string={"run": "r", "frame": kept[0].name}).get_json()
    assert info["step"] == 1 and info["sections"][0]["min"] == 1.0
    latest = client.get(f"{BASE}/section-info", query_string={"run": "r"}).get_json()
    assert latest["step"] == 5 and latest["sections"][0]["min"] == 5.0
    gone_name = "f-0000000000000001-abc-1-1.bin"
    gone = client.get(f"{BASE}/section-info", query_string={"run": "r", "frame": gone_name})
    assert gone.status_code == 404
    bad = client.get(f"{BASE}/section-info", query_string={"run": "r", "frame": "../config.json"})
    assert bad.status_code == 400


def test_colormaps_route_gives_256_colours_each(world):
    _, _, client = world
    maps = client.get(f"{BASE}/colormaps").get_json()
    assert sorted(maps) == ["grayscale", "inferno", "magma", "plasma", "viridis"]
    assert all(len(hexes) == 256 * 6 for hexes in maps.values())
    assert maps["grayscale"][:12] == "000000010101"
    assert maps["grayscale"][-6:] == "ffffff"


def test_export_into_an_unusable_exports_folder_is_403(world):
    _, run, client = world
    with open(os.path.join(plugin_dir(run), "exports"), "wb") as f:
        f.write(b"a file where the folder belongs")
    kept = list_history(run)
    resp = post_export(client, {"from": kept[0].name, "to": kept[1].name})
    assert resp.status_code == 403
    assert "cannot create this run's exports folder" in resp.get_json()["error"]


def test_an_export_never_spans_two_trainer_processes(world):
    """A restart into the same run: the range from the old writer's frames into the new one's is refused."""
    _, run, client = world
    write_frames(str(run), 3)  # a second Beholder: another writer, steps 1-3 again
    kept = list_history(run)
    writers = list(dict.fromkeys(e.writer for e in kept))
    assert len(kept) == 8 and len(writers) == 2
    resp = post_export(client, {"from": kept[3].name, "to": kept[6].name})
    assert resp.status_code == 400
    assert "2 trainer processes" in resp.get_json()["error"] and "restarted" in resp.get_json()["error"]
    assert exports_of(run) == []
    resp = post_export(client, {"from": kept[5].name, "to": kept[7].name})  # the new writer's alone
    assert resp.status_code == 200 and resp.get_json()["frames"] == 3


def test_an_export_says_its_rate_and_the_rate_its_frames_were_taken_in_its_metadata(world):
    import subprocess

    import imageio_ffmpeg

    _, run, client = world
    kept = list_history(run)
    resp = post_export(client, {"from": kept[0].name, "to": kept[4].name, "fps": 12})
    assert resp.status_code == 200
    path = os.path.join(plugin_dir(run), resp.get_json()["name"])
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", path],
                           capture_output=True, text=True)
    taken = 4 / (kept[4].time - kept[0].time)
    said = f"Beholder export: plays at 12 frames/s; its frames were taken at {taken:.3g} frames/s"
    assert said in probe.stderr


def test_a_file_named_with_a_trailing_newline_is_not_listed(world):
    _, run, client = world
    with open(os.path.join(plugin_dir(run), "video-a.mp4\n"), "wb") as f:
        f.write(b"x")
    assert client.get(f"{BASE}/videos", query_string={"run": "r"}).get_json() == []


def test_a_recording_that_grows_while_downloaded_is_sent_as_long_as_it_said(world):
    """The recorder appends while the download runs: the body is exactly Content-Length bytes."""
    _, run, client = world
    path = os.path.join(plugin_dir(run), "video-growing.mp4")
    with open(path, "wb") as f:
        f.write(b"a" * 100_000)
    got = client.get(f"{BASE}/video", query_string={"run": "r", "name": "video-growing.mp4"}, buffered=False)
    with open(path, "ab") as f:
        f.write(b"b" * 3_000_000)
    body = b"".join(got.response)
    got.close()
    assert got.headers["Content-Length"] == "100000"
    assert body == b"a" * 100_000


def test_recordings_say_whether_the_trainer_finished_them(world):
    """A finished recording ends with the fragmented mp4's index; one being written or cut short does not."""
    from beholder_plugin.protocol.video import open_mp4_writer

    _, run, client = world
    pdir = plugin_dir(run)
    frame = np.full((16, 16, 3), 128, np.uint8).tobytes()
    done = open_mp4_writer(os.path.join(pdir, "video-done.mp4"), 16, 16, 15, "c", live=True)
    writing = open_mp4_writer(os.path.join(pdir, "video-writing.mp4"), 16, 16, 15, "c", live=True)
    try:
        for _ in range(40):
            done.send(frame)
            writing.send(frame)
        done.close()
        with open(os.path.join(pdir, "video-done.mp4"), "rb") as f:
            whole = f.read()
        with open(os.path.join(pdir, "video-cut.mp4"), "wb") as f:  # a killed trainer's file
            f.write(whole[:-100])
        writing_path = os.path.join(pdir, "video-writing.mp4")  # (ffmpeg may not have written it yet)
        wait_for(lambda: os.path.exists(writing_path) and os.path.getsize(writing_path) > 0,
                 message="the first bytes of the recording being written")
        listed = client.get(f"{BASE}/videos", query_string={"run": "r"}).get_json()
        assert {v["name"]: v["finished"] for v in listed} == {
            "video-done.mp4": True, "video-writing.mp4": False, "video-cut.mp4": False}
    finally:
        writing.close()
    listed = client.get(f"{BASE}/videos", query_string={"run": "r"}).get_json()
    assert {v["name"]: v["finished"] for v in listed}["video-writing.mp4"] is True


def frame_pixels(run) -> int:
    """The pixels of one (even-padded) kept frame of the run."""
    first = read_history_frame(str(run), list_history(run)[0].name)
    return (first.width + first.width % 2) * (first.height + first.height % 2)


def test_an_export_of_too_many_pixels_in_all_is_refused_naming_how_many_frames_fit(world, monkeypatch):
    _, run, client = world
    monkeypatch.setattr(videos_module, "MAX_EXPORT_TOTAL_PIXELS", 3 * frame_pixels(run))
    kept = list_history(run)
    resp = post_export(client, {"from": kept[0].name, "to": kept[3].name})
    assert resp.status_code == 400
    assert "holds 4 frames of" in resp.get_json()["error"]
    assert "at most 3 frames of that size" in resp.get_json()["error"]
    assert exports_of(run) == []
    assert post_export(client, {"from": kept[1].name, "to": kept[3].name}).status_code == 200


def test_a_full_exports_folder_refuses_more_exports_with_507(world, monkeypatch):
    _, run, client = world
    kept = list_history(run)
    body = {"from": kept[0].name, "to": kept[1].name}
    first = post_export(client, body)
    assert first.status_code == 200
    size = os.path.getsize(os.path.join(plugin_dir(run), first.get_json()["name"]))
    monkeypatch.setattr(videos_module, "MAX_EXPORTS_BYTES", size - 1)
    resp = post_export(client, body)
    assert resp.status_code == 507
    assert "exports would take more than" in resp.get_json()["error"]
    assert "delete some of this run's exports" in resp.get_json()["error"]
    assert exports_of(run) == [os.path.basename(first.get_json()["name"])]
    monkeypatch.setattr(videos_module, "MAX_EXPORTS_BYTES", 1 << 30)
    monkeypatch.setattr(videos_module, "MAX_EXPORTS_FILES", 1)
    resp = post_export(client, body)
    assert resp.status_code == 507 and "already has 1 exports" in resp.get_json()["error"]
    assert len(exports_of(run)) == 1


def test_an_export_stops_when_the_disk_runs_low_while_it_encodes(world, monkeypatch):
    """The free space is checked before each frame: past the floor the export ends, leaving no file."""
    import shutil
    from collections import namedtuple

    _, run, client = world
    usage = namedtuple("usage", "total used free")
    calls = []

    def disk_usage(path):
        calls.append(path)
        free = 1 << 40 if len(calls) <= 2 else 1 << 20  # plenty at first, then 1 MB
        return usage(1 << 41, (1 << 41) - free, free)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    kept = list_history(run)
    resp = post_export(client, {"from": kept[0].name, "to": kept[4].name})
    assert resp.status_code == 507
    assert "1 MB free" in resp.get_json()["error"]
    assert exports_of(run) == []
    assert len(calls) == 3  # before the export, before its first frame, and before its second


def test_an_export_of_a_remote_run_is_refused_with_501(tmp_path, monkeypatch):
    """An export of a remote run is refused at once with 501 (nothing is written locally)."""
    import uuid

    from server_support import set_config

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    url = f"memory://logs-{uuid.uuid4().hex[:12]}"
    set_config(f"{url}/a", values="frames", FPS=30)
    _, client = plugin_client(url)
    name = "f-1795360000123456-5f0c9e21d7aa-41-410.bin"
    resp = client.post(f"{BASE}/export", query_string={"run": "a"}, json={"from": name, "to": name})
    assert resp.status_code == 501 and "local logdir" in resp.get_json()["error"]
    assert os.listdir(cwd) == []
