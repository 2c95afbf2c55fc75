"""Concurrent /timeline and /history requests share their reads: one read of a run's records and one listing
of its ring per change, however many ask at once, and at most a few such reads at a time.

Each request used to read, parse and copy every timeline part (about 60 MB on a run at the caps) and list
the whole ring (50,000 frames), so 32 viewers asking at once took 2 GB. The counting wrappers below sleep
a moment so that the requests overlap; nothing here measures time.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, Callable

import numpy as np
import pytest
from server_support import BASE, plugin_client
from werkzeug.test import Client

from beholder_plugin.protocol import timeline as tl
from beholder_plugin.protocol.files import LocalFiles, files_for
from beholder_plugin.protocol.history import history_name, list_history
from beholder_plugin.protocol.names import history_dir
from beholder_plugin.server import flights, kept_frames
from beholder_plugin.server import timeline as server_timeline
from beholder_plugin.trainer.timeline import TimelineWriter

OVERLAP_S = 0.2  # how long a counted read waits, so that the other requests arrive meanwhile


class Counted:
    """A wrapper that counts the calls it passes on, and how many ran at once at most."""

    def __init__(self, real: Callable[..., Any], only: Callable[..., bool] = lambda *a, **k: True) -> None:
        self.real, self.only = real, only
        self.calls = self.active = self.most = 0
        self.lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the real function; counted calls wait OVERLAP_S first."""
        if not self.only(*args, **kwargs):
            return self.real(*args, **kwargs)
        with self.lock:
            self.calls += 1
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            time.sleep(OVERLAP_S)
            return self.real(*args, **kwargs)
        finally:
            with self.lock:
                self.active -= 1


def at_once(client: Client, paths: list[str]) -> list[tuple[int, bytes]]:
    """GET every path from its own thread, all released together: (status, body) in the order given."""
    out: list[tuple[int, bytes] | None] = [None] * len(paths)
    start = threading.Barrier(len(paths))

    def one(i: int) -> None:
        """One request of its own client."""
        start.wait()
        response = Client(client.application).get(BASE + paths[i])
        out[i] = (response.status_code, response.get_data())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(paths))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out  # type: ignore[return-value]


def timeline_run(run: str, sections: int = 20, frames: int = 30) -> TimelineWriter:
    """A run whose timeline holds `frames` records of `sections` sections, in parts; its open writer."""
    names = [f"layer{i}/w" for i in range(sections)]
    writer = TimelineWriter(run, files_for(run), parts_budget=10**9)
    for step in range(1, frames + 1):
        append(writer, names, step)
    return writer


def append(writer: TimelineWriter, names: list[str], step: int) -> None:
    """One frame's records of these sections (of arrays)."""
    records = tl.make_records(len(names))
    records["step"], records["time"], records["section"] = step, 1.7e9 + step, np.arange(len(names))
    records["norm"] = step + np.arange(len(names))
    records["flags"] = tl.values_flag("arrays")
    writer.append(names, records)


def fresh(client: Client, path: str) -> bytes:
    """The answer a lone request gets from nothing kept."""
    server_timeline.forget()
    response = client.get(BASE + path)
    assert response.status_code == 200
    return response.get_data()


@pytest.fixture(autouse=True)
def nothing_kept() -> None:
    """Every test starts without kept answers, records or listings."""
    server_timeline.forget()


def test_concurrent_timeline_requests_after_a_change_read_the_records_once(tmp_path, monkeypatch):
    """16 viewers of a live run asking at once after a part grew: one read and one JSON encoding, shared."""
    run = str(tmp_path / "run1")
    writer = timeline_run(run)
    _, client = plugin_client(tmp_path)
    assert client.get(BASE + "/timeline?run=run1").status_code == 200
    append(writer, [f"layer{i}/w" for i in range(20)], 31)
    reads = Counted(tl.read_records)
    monkeypatch.setattr(tl, "read_records", reads)
    encodings = Counted(server_timeline.json_bytes)  # (each request encoding its own copy held 9 MB)
    monkeypatch.setattr(server_timeline, "json_bytes", encodings)
    answers = at_once(client, ["/timeline?run=run1"] * 16)
    assert reads.calls == 1 and encodings.calls == 1
    monkeypatch.undo()
    expected = fresh(client, "/timeline?run=run1")
    assert json.loads(expected)["last_step"] == 31
    assert answers == [(200, expected)] * 16
    as_dict = server_timeline.timeline_answer("run1", run, 512)  # the answer json_response would write
    assert expected == json.dumps(as_dict).encode()


def test_other_points_and_values_parse_nothing_again(tmp_path, monkeypatch):
    """Eight requests for eight ?points= (and two ?values=) at once share one read of the records."""
    run = str(tmp_path / "run1")
    timeline_run(run).close()
    _, client = plugin_client(tmp_path)
    paths = [f"/timeline?run=run1&points={p}" for p in (2, 3, 7, 16, 64, 100, 512, 4096)]
    paths += ["/timeline?run=run1&values=arrays", "/timeline?run=run1&values=gradients"]
    reads = Counted(tl.read_records)
    monkeypatch.setattr(tl, "read_records", reads)
    answers = at_once(client, paths)
    assert reads.calls == 1
    monkeypatch.undo()
    assert answers == [(200, fresh(client, path)) for path in paths]
    assert len({body for _, body in answers}) == len(paths) - 1  # (values=arrays: the default's records)


def test_at_most_read_slots_timelines_are_read_at_once(tmp_path, monkeypatch):
    """Six runs asked for at once: every request answered, never more than READ_SLOTS reads together."""
    for i in range(6):
        timeline_run(str(tmp_path / f"run{i}"), sections=3, frames=5).close()
    _, client = plugin_client(tmp_path)
    reads = Counted(tl.read_records)
    monkeypatch.setattr(tl, "read_records", reads)
    paths = [f"/timeline?run=run{i}" for i in range(6)]
    answers = at_once(client, paths)
    assert reads.calls == 6 and reads.most <= 2
    assert server_timeline.READ_SLOTS == 2
    monkeypatch.undo()
    assert answers == [(200, fresh(client, path)) for path in paths]


def test_a_request_that_finds_no_free_slot_is_answered_busy(tmp_path, monkeypatch):
    """Every slot held past SLOT_WAIT_S: a JSON 503 saying so, then a 200 once a slot is free."""
    timeline_run(str(tmp_path / "run1"), sections=3, frames=5).close()
    _, client = plugin_client(tmp_path)
    monkeypatch.setattr(flights, "SLOT_WAIT_S", 0.05)
    with server_timeline._reads, server_timeline._reads:
        response = client.get(BASE + "/timeline?run=run1")
    assert response.status_code == 503
    assert "busy" in json.loads(response.get_data())["error"]
    assert client.get(BASE + "/timeline?run=run1").status_code == 200


def ring(run: str, count: int) -> str:
    """A run whose history directory holds `count` kept frames (empty files), last changed a minute ago."""
    directory = history_dir(run)
    os.makedirs(directory)
    os.makedirs(tl.timeline_dir(run))
    for i in range(count):
        name = history_name(1.7e9 + i / 10, "a1b2c3d4e5f6", i + 1, i + 1)
        open(os.path.join(directory, name), "wb").close()
    os.utime(directory, (time.time() - 60, time.time() - 60))
    return directory


def history_json(run: str) -> list[dict[str, Any]]:
    """/history's answer as it was written before the listing was kept: from list_history, field by field."""
    return [{"name": e.name, "time": e.time, "step": e.step, "frame_id": e.frame_id, "writer": e.writer}
            for e in list_history(run)]


def count_listings(monkeypatch: pytest.MonkeyPatch, directories: set[str]) -> Counted:
    """LocalFiles.listdir wrapped to count the listings of these directories."""
    listings = Counted(LocalFiles.listdir, only=lambda self, path: os.path.abspath(path) in directories)

    def listdir(self: LocalFiles, path: str) -> list[str]:
        """The real listing, counted."""
        return listings(self, path)

    monkeypatch.setattr(LocalFiles, "listdir", listdir)
    return listings


def test_concurrent_history_and_timeline_requests_list_the_ring_once(tmp_path, monkeypatch):
    """12 /history and 4 /timeline requests at once on a ring of 3,000 frames: one listing, the same
    answers as a lone request."""
    run = str(tmp_path / "run1")
    directory = ring(run, 3000)
    _, client = plugin_client(tmp_path)
    listings = count_listings(monkeypatch, {directory})
    answers = at_once(client, ["/history?run=run1"] * 12 + ["/timeline?run=run1"] * 4)
    assert listings.calls == 1
    monkeypatch.undo()
    expected = history_json(run)
    assert len(expected) == 3000
    assert all(status == 200 for status, _ in answers)
    assert [json.loads(body) for _, body in answers[:12]] == [expected] * 12
    kept = [{"name": e["name"], "step": e["step"], "time": e["time"]} for e in expected]
    assert [json.loads(body)["kept"] for _, body in answers[12:]] == [kept] * 4
    assert answers[12:] == [(200, fresh(client, "/timeline?run=run1"))] * 4
    assert answers[12][1] == json.dumps(server_timeline.timeline_answer("run1", run, 512)).encode()


def test_at_most_list_slots_rings_are_listed_at_once(tmp_path, monkeypatch):
    """Six runs' rings asked for at once: every request answered, never more than LIST_SLOTS listings."""
    directories = {ring(str(tmp_path / f"run{i}"), 10) for i in range(6)}
    _, client = plugin_client(tmp_path)
    listings = count_listings(monkeypatch, directories)
    answers = at_once(client, [f"/history?run=run{i}" for i in range(6)])
    assert listings.calls == 6 and listings.most <= 2
    assert kept_frames.LIST_SLOTS == 2
    monkeypatch.undo()
    expected = [history_json(str(tmp_path / f"run{i}")) for i in range(6)]
    assert [json.loads(body) for _, body in answers] == expected


def test_a_kept_listing_follows_every_change_of_the_ring(tmp_path, monkeypatch):
    """The listing is used again only while the directory is unchanged since a listing made well after its
    last change: a new frame is listed at once, also when it left the directory's mtime as it was (a
    change within a coarse timestamp), and a directory that had just changed is listed at each request."""
    run = str(tmp_path / "run1")
    directory = ring(run, 5)
    _, client = plugin_client(tmp_path)
    listings = count_listings(monkeypatch, {directory})

    def steps() -> list[int]:
        """The steps /history lists now."""
        response = client.get(BASE + "/history?run=run1")
        assert response.status_code == 200
        return [e["step"] for e in json.loads(response.get_data())]

    assert steps() == steps() == steps() == [1, 2, 3, 4, 5]
    assert listings.calls == 1
    before = os.stat(directory)
    open(os.path.join(directory, history_name(1.8e9, "a1b2c3d4e5f6", 6, 6)), "wb").close()
    os.utime(directory, ns=(before.st_atime_ns, before.st_mtime_ns))  # the same mtime as before the frame
    assert steps() == [1, 2, 3, 4, 5, 6] and listings.calls == 2
    assert steps() == [1, 2, 3, 4, 5, 6] and listings.calls == 2
    monkeypatch.setattr(kept_frames, "FRESH_S", 10**9)  # every change now counts as just made
    os.remove(os.path.join(directory, history_name(1.8e9, "a1b2c3d4e5f6", 6, 6)))
    assert steps() == steps() == [1, 2, 3, 4, 5] and listings.calls == 4
