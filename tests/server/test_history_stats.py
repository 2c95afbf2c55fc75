"""GET history/stats: the sections' stats of a run's kept frames, read from their headers only."""

from __future__ import annotations

import json
import os
import struct
import uuid

import numpy as np
import pytest
from server_support import BASE, plugin_client, set_config

from beholder_plugin import Beholder
from beholder_plugin.protocol.files import LocalFiles
from beholder_plugin.protocol.frame_format import FRAME_MAGIC, read_header
from beholder_plugin.protocol.history import list_history
from beholder_plugin.protocol.names import history_dir
from beholder_plugin.server import kept_stats


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Each test starts with nothing kept."""
    kept_stats.forget()
    yield
    kept_stats.forget()


def write_run(run: str, frames: int, values: str = "arrays") -> None:
    """Write `frames` frames of known arrays (w full of the step, b a ramp) with a real Beholder."""
    os.makedirs(run, exist_ok=True)
    set_config(run, values=values, FPS=30)
    with Beholder(run, background=False) as beholder:
        for step in range(1, frames + 1):
            beholder.frame_due_now()
            w = np.full((4, 4), float(step), np.float32)
            beholder.update(arrays={"w": w, "b": np.arange(3.0) * step})


def get(client, path: str) -> tuple[int, dict]:
    """A GET answered by the plugin: (status, JSON)."""
    response = client.get(BASE + path)
    return response.status_code, json.loads(response.get_data())


def headers(run: str) -> list[dict]:
    """The headers of the run's kept frames, oldest first, as the package reads them."""
    return [read_header(os.path.join(history_dir(run), e.name))[0] for e in list_history(run)]


def count_reads(monkeypatch) -> list[int]:
    """The lengths of every local range read from now on (the list fills as they are made)."""
    asked: list[int] = []
    read_range = LocalFiles.read_range

    def counting(self, path, offset, length, limit, identity=None):
        asked.append(length)
        return read_range(self, path, offset, length, limit, identity)

    monkeypatch.setattr(LocalFiles, "read_range", counting)
    return asked


def test_stats_of_kept_frames_equal_their_headers(tmp_path):
    run = str(tmp_path / "run1")
    write_run(run, 8)
    _, client = plugin_client(tmp_path)
    status, answer = get(client, "/history/stats?run=run1&values=arrays")
    assert status == 200
    kept = headers(run)
    assert [f["step"] for f in answer["frames"]] == [h["step"] for h in kept] == list(range(1, 9))
    assert answer["matched"] == 8 and answer["partial"] is False
    for frame, head in zip(answer["frames"], kept):
        assert (frame["writer"], frame["frame_id"]) == (head["writer"], head["frame_id"])
        assert frame["sections"] == [{"name": r["name"], "stats": r["stats"]} for r in head["sections"]]
        assert [s["name"] for s in frame["sections"]] == ["w", "b"]
    w = answer["frames"][2]["sections"][0]["stats"]
    assert w["mean"] == pytest.approx(3.0) and w["norm"] == pytest.approx(12.0)
    assert all("values" not in s and "top" not in s for f in answer["frames"] for s in f["sections"])

    # The kind filter: none of these frames are gradients; a kind that is none is refused.
    status, answer = get(client, "/history/stats?run=run1&values=gradients")
    assert status == 200 and answer["frames"] == [] and answer["kept"] == 8
    assert get(client, "/history/stats?run=run1&values=frames")[0] == 400
    assert get(client, "/history/stats?run=run1")[0] == 400
    assert get(client, "/history/stats?run=nope&values=arrays")[0] == 404
    assert get(client, "/history/stats?values=arrays")[0] == 400


def test_at_most_max_frames_spread_newest_included(tmp_path, monkeypatch):
    run = str(tmp_path / "run1")
    write_run(run, 12)
    monkeypatch.setattr(kept_stats, "MAX_FRAMES", 4)
    _, client = plugin_client(tmp_path)
    status, answer = get(client, "/history/stats?run=run1&values=arrays")
    assert status == 200
    steps = [f["step"] for f in answer["frames"]]
    assert len(steps) == 4 and steps[0] == 1 and steps[-1] == 12 and steps == sorted(steps)
    assert answer["matched"] == 12


def test_corrupt_and_hostile_files_are_skipped_without_reading_them(tmp_path, monkeypatch):
    run = str(tmp_path / "run1")
    write_run(run, 5)
    names = [e.name for e in list_history(run)]
    directory = history_dir(run)
    with open(os.path.join(directory, names[1]), "r+b") as f:  # torn: its header cut short
        f.truncate(40)
    with open(os.path.join(directory, names[2]), "wb") as f:  # foreign
        f.write(b"not a frame at all" * 10)
    with open(os.path.join(directory, names[3]), "wb") as f:  # claims a 15 MB header, then junk
        f.write(FRAME_MAGIC + struct.pack("<I", 15 << 20) + b"\x00" * (16 << 20))
    asked = count_reads(monkeypatch)
    _, client = plugin_client(tmp_path)
    status, answer = get(client, "/history/stats?run=run1&values=arrays")
    assert status == 200
    assert [f["name"] for f in answer["frames"]] == [names[0], names[4]]
    assert max(asked) < 64 << 10  # the hostile header was refused after its first 12 bytes
    assert sum(asked) < 256 << 10
    asked.clear()  # what each file said is kept: asked again, nothing is read
    assert get(client, "/history/stats?run=run1&values=arrays")[1]["frames"] == answer["frames"]
    assert asked == []


def test_remote_run_through_the_same_files_layer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = f"memory://stats-{uuid.uuid4().hex[:12]}"
    set_config(f"{url}/r", values="arrays", FPS=30)
    with Beholder(f"{url}/r", background=False, max_remote_fps=1000) as beholder:
        for step in range(1, 4):
            beholder.frame_due_now()
            beholder.update(arrays={"w": np.full((2, 2), float(step), np.float32)})
    _, client = plugin_client(url)
    status, answer = get(client, "/history/stats?run=r&values=arrays")
    assert status == 200
    assert [f["step"] for f in answer["frames"]] == [1, 2, 3]
    assert [f["sections"][0]["stats"]["mean"] for f in answer["frames"]] == pytest.approx([1.0, 2.0, 3.0])


def test_headers_read_whole_and_then_refused_count_against_the_read_budget(tmp_path, monkeypatch):
    """Kept files whose headers are read whole and then refused (a version from the future) are charged
    what was read: 300 such 4 MB headers read 1.2 GB in one request when each cost only 12 bytes."""
    run = str(tmp_path / "run1")
    write_run(run, 6)
    directory = history_dir(run)
    names = [e.name for e in list_history(run)]
    header = json.dumps({"version": 99, "pad": "x" * 20000}).encode()
    for name in names[:-1]:  # (the newest stays a frame)
        with open(os.path.join(directory, name), "wb") as f:
            f.write(FRAME_MAGIC + struct.pack("<I", len(header)) + header)
    monkeypatch.setattr(kept_stats, "READ_BYTES", 50_000)  # (about two of those headers)
    asked = count_reads(monkeypatch)
    _, client = plugin_client(tmp_path)
    status, answer = get(client, "/history/stats?run=run1&values=arrays")
    assert status == 200 and answer["partial"] is True
    assert [f["name"] for f in answer["frames"]] == [names[-1]]
    assert sum(asked) < 50_000 + 2 * (len(header) + 12)  # (the budget, and the one header past it)


def test_a_run_of_large_headers_is_scanned_as_far_as_the_cache_holds_and_answered_within_a_budget(
        tmp_path, monkeypatch):
    """A 300-section run's entries are 116 KB: 1,200 files scanned overflowed the 32 MB cache, so every
    request dropped what the last one read, read 32 MB again, stayed partial and answered 20-35 MB."""
    run = str(tmp_path / "run1")
    os.makedirs(run)
    set_config(run, values="arrays", FPS=30)
    with Beholder(run, background=False) as beholder:
        for step in range(1, 21):
            beholder.frame_due_now()
            beholder.update(arrays={f"s{i}": np.full((3, 3), float(step + i), np.float32) for i in range(30)})
        entry = len(kept_stats.frame_stats(headers(run)[-1], list_history(run)[-1].name))
        set_config(run, values="gradients", FPS=30)  # none are passed: the newest frame is a placeholder,
        beholder.frame_due_now()  # whose entry says nothing of the frames' size
        beholder.update(arrays={"s0": np.ones(3)})
    monkeypatch.setattr(kept_stats, "CACHED_BYTES", 5 * 2 * entry)  # half of it holds 5 entries
    monkeypatch.setattr(kept_stats, "ANSWER_BYTES", 3 * entry + 100)  # 3 frames
    asked = count_reads(monkeypatch)
    _, client = plugin_client(tmp_path)
    status, answer = get(client, "/history/stats?run=run1&values=arrays")
    assert status == 200 and answer["partial"] is False and answer["scanned"] == 5 and answer["kept"] == 21
    steps = [f["step"] for f in answer["frames"]]
    assert len(steps) == 3 and steps[0] == 1 and steps == sorted(steps)  # spread (the newest: a placeholder)
    asked.clear()  # all five stayed in the cache: asked again, nothing is read
    assert get(client, "/history/stats?run=run1&values=arrays")[1] == answer and asked == []
