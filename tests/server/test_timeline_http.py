"""The /timeline route: a timeline bucketed by step, its anomalies and kept frames; bad input refused."""

from __future__ import annotations

import base64
import json
import os

import numpy as np
from server_support import BASE, plugin_client, set_config

from beholder_plugin import Beholder, read_timeline
from beholder_plugin.protocol import timeline as tl
from beholder_plugin.protocol.files import files_for
from beholder_plugin.trainer.timeline import TimelineWriter


def column(entry: dict, name: str) -> np.ndarray:
    """A base64 column of the answer as an array."""
    dtype = "<f8" if name in ("step", "time") else "<u4" if name == "flags" else "<f4"
    return np.frombuffer(base64.b64decode(entry[name]), dtype)


def get(client, path: str):
    """A GET answered by the plugin: (status, JSON)."""
    response = client.get(BASE + path)
    return response.status_code, json.loads(response.get_data())


def test_timeline_of_a_trained_run(tmp_path):
    """A run's records come back by section, with the anomaly and the kept frames to click through to."""
    run = str(tmp_path / "run1")
    os.makedirs(run)
    set_config(run, values="arrays", FPS=30)
    with Beholder(run, background=False) as beholder:
        for step in range(1, 13):
            w = np.full((4, 4), float(step), np.float32)
            if step >= 9:
                w[0, 0] = np.inf
            beholder.frame_due_now()
            beholder.update(arrays={"w": w, "b": np.ones(3)})
    _, client = plugin_client(tmp_path)
    status, answer = get(client, "/timeline?run=run1&points=64")
    assert status == 200
    assert answer["first_step"] == 1 and answer["last_step"] == 12
    by_name = {s["name"]: s for s in answer["sections"]}
    assert set(by_name) == {"w", "b"}
    w = by_name["w"]
    np.testing.assert_array_equal(column(w, "step"), np.arange(1, 13))
    expected = read_timeline(run)["w"]
    np.testing.assert_array_equal(column(w, "norm"), expected["norm"])
    assert np.isinf(column(w, "norm")[8]) and column(w, "nonfinite")[8] == 1
    assert [(a["section"], a["kind"], a["step"]) for a in answer["anomalies"]] == [("w", "inf", 9)]
    assert [k["step"] for k in answer["kept"]] == list(range(1, 13))


def test_buckets_keep_the_band_and_line_up_by_step(tmp_path):
    """Fewer points than records: each bucket's smallest min and largest max, rows aligned on steps."""
    run = str(tmp_path / "run1")
    writer = TimelineWriter(run, files_for(run))
    for step in range(1, 101):
        records = tl.make_records(2)
        records["step"] = step
        records["section"] = [0, 1]
        records["min"] = -step if step % 10 else -1000  # the band's low is one record of each ten
        records["max"] = step
        records["norm"] = step
        writer.append(["a", "b"], records)
    writer.close()
    _, client = plugin_client(tmp_path)
    status, answer = get(client, "/timeline?run=run1&points=10")
    assert status == 200
    a = next(s for s in answer["sections"] if s["name"] == "a")
    np.testing.assert_array_equal(column(a, "step"), np.arange(10, 101, 10))
    np.testing.assert_array_equal(column(a, "min"), np.full(10, -1000))
    np.testing.assert_array_equal(column(a, "norm"), np.arange(10, 101, 10))
    np.testing.assert_array_equal(column(a, "max"), np.arange(10, 101, 10))


def test_bad_requests_get_clear_errors(tmp_path):
    """A missing or unknown run, a run name leading out, or bad points: 4xx with a message, never a 500."""
    os.makedirs(tmp_path / "run1" / "plugins" / "beholder")
    _, client = plugin_client(tmp_path)
    assert get(client, "/timeline?run=run1")[0] == 200
    for query, code in (("", 400), ("?run=nope", 404), ("?run=../etc", 403), ("?run=run1&points=1", 400),
                        ("?run=run1&points=abc", 400), ("?run=run1&points=99999999999", 400)):
        status, answer = get(client, "/timeline" + query)
        assert status == code, (query, answer)
        assert answer["error"]


def test_a_hostile_timeline_file_is_refused_or_read_as_far_as_valid(tmp_path):
    """Garbage, a chunk claiming 4 GB, a huge file: read up to the bad chunk, or refused with a message."""
    run = tmp_path / "run1"
    directory = run / "plugins" / "beholder" / "timeline"
    directory.mkdir(parents=True)
    good = tl.names_chunk({"x": 0}) + tl.records_chunk(tl.make_records(1))
    (directory / tl.part_name(0)).write_bytes(good + b"BHTLR\0\0\0\xff\xff\xff\xff\0\0\0\0" + b"junk")
    (directory / tl.ANOMALIES_FILE).write_bytes(b'not json\n["list"]\n{"section": "x", "kind": "nan"}\n')
    _, client = plugin_client(tmp_path)
    status, answer = get(client, "/timeline?run=run1")
    assert status == 200
    assert [s["name"] for s in answer["sections"]] == ["x"]
    assert answer["anomalies"] == [{"section": "x", "kind": "nan"}]
    with open(directory / tl.part_name(1), "wb") as f:
        f.truncate(tl.MAX_FILE_BYTES + 1)
    status, answer = get(client, "/timeline?run=run1")
    assert status == 500 and "bytes" in answer["error"]


def test_a_cached_answer_follows_new_records(tmp_path):
    """The answer kept between requests is built again as soon as a timeline file changes."""
    run = str(tmp_path / "run1")
    writer = TimelineWriter(run, files_for(run))

    def frame(step: int) -> None:
        records = tl.make_records(1)
        records["step"] = step
        records["norm"] = step
        writer.append(["a"], records)

    frame(1)
    _, client = plugin_client(tmp_path)
    assert column(get(client, "/timeline?run=run1")[1]["sections"][0], "step").tolist() == [1]
    assert column(get(client, "/timeline?run=run1")[1]["sections"][0], "step").tolist() == [1]
    frame(2)
    assert column(get(client, "/timeline?run=run1")[1]["sections"][0], "step").tolist() == [1, 2]
    writer.compact()  # base.bht rewritten, the parts gone
    frame(3)
    assert column(get(client, "/timeline?run=run1")[1]["sections"][0], "norm").tolist() == [1, 2, 3]


def test_an_anomalies_file_past_its_cap_is_named_in_the_error(tmp_path):
    """It was answered as 'the frame file is not a valid Beholder frame: anomalies.jsonl is ...'."""
    run = str(tmp_path / "run1")
    set_config(run, values="arrays", FPS=30)
    with Beholder(run, background=False) as beholder:
        beholder.update(arrays={"w": np.ones(3)})
    path = os.path.join(tl.timeline_dir(run), tl.ANOMALIES_FILE)
    with open(path, "wb") as out:
        out.write(b"{}\n" * (tl.MAX_ANOMALY_BYTES // 3 + 1))
    _, client = plugin_client(tmp_path)
    status, answer = get(client, "/timeline?run=run1")
    assert status == 500
    assert answer["error"].startswith("a file of the run cannot be read: anomalies.jsonl is ")


def _records(names: list[str], step: int, when: float) -> np.ndarray:
    """One frame's records of these sections."""
    records = tl.make_records(len(names))
    records["step"], records["time"], records["section"] = step, when, np.arange(len(names))
    records["norm"] = 1.0
    return records


def test_an_answer_of_many_sections_has_fewer_points_each_and_the_cache_a_byte_budget(tmp_path, monkeypatch):
    """4,096 points of 1,500 sections were a 165 MB answer, and 8 of them were cached: the server held
    2 GB. An answer now holds at most MAX_CELLS points, and the cache CACHED_BYTES."""
    from beholder_plugin.server import timeline as server_timeline

    server_timeline.forget()
    run = str(tmp_path / "run1")
    names = [f"expert{i}/w" for i in range(3000)]
    writer = TimelineWriter(run, files_for(run), parts_budget=10**9)
    for step in range(1, 41):
        writer.append(names, _records(names, step, 1.7e9 + step))
    writer.close()
    _, client = plugin_client(tmp_path)
    status, answer = get(client, "/timeline?run=run1&points=4096")
    each = server_timeline.MAX_CELLS // 3000
    assert status == 200 and answer["points"] == each == 174
    assert {entry["points"] for entry in answer["sections"]} == {40}  # (40 records: 40 buckets of 174)
    monkeypatch.setattr(server_timeline, "CACHED_BYTES", 1)  # the newest answer only
    for points in (100, 200, 300):
        assert get(client, f"/timeline?run=run1&points={points}")[0] == 200
    assert list(server_timeline._cache) == [(run, 300, None, None)]


def test_a_restarted_trainers_records_get_at_most_the_points_asked_for(tmp_path):
    """Steps count afresh at each restart: the buckets by step repeated, K restarts giving K x N points."""
    run = str(tmp_path / "run1")
    when = 1.7e9
    for _ in range(4):  # four trainers, steps 1 to 100 each
        writer = TimelineWriter(run, files_for(run), parts_budget=10**9)
        for step in range(1, 101):
            when += 1.0
            writer.append(["w"], _records(["w"], step, when))
        writer.close()
    _, client = plugin_client(tmp_path)
    status, answer = get(client, "/timeline?run=run1&points=64")
    entry = answer["sections"][0]
    assert status == 200 and entry["records"] == 400 and entry["points"] == 64
    times = column(entry, "time")
    assert (np.diff(times) > 0).all() and times[-1] == when  # in time order, the last record last


def test_a_restarted_trainers_span_is_its_lowest_and_highest_step(tmp_path):
    """Steps 1-12, then a restart counting 1-5: first_step and last_step span every record (last_step
    was the last record's step, 5, and the dashboard drew the first trainer off its axis)."""
    run = str(tmp_path / "run1")
    when = 1.7e9
    for steps in (range(3, 13), range(1, 6)):
        writer = TimelineWriter(run, files_for(run), parts_budget=10**9)
        for step in steps:
            when += 1.0
            writer.append(["w"], _records(["w"], step, when))
        writer.close()
    _, client = plugin_client(tmp_path)
    status, answer = get(client, "/timeline?run=run1")
    assert status == 200 and (answer["first_step"], answer["last_step"]) == (1, 12)


def test_a_run_whose_values_changed_answers_one_values_series_at_a_time(tmp_path):
    """Weights then gradients under the same names: the answer holds the values the trainer showed last
    (or those asked for), says which there are, and keeps the anomalies of those values only."""
    run = str(tmp_path / "run1")
    writer = TimelineWriter(run, files_for(run))
    for step in range(1, 9):
        shown = "trainable_variables" if step <= 4 else "gradients"
        records = tl.make_records(1)
        records["step"], records["time"], records["section"] = step, 1000.0 + step, 0
        records["norm"] = 1.0 if shown == "trainable_variables" else 0.01
        records["flags"] = tl.values_flag(shown)
        writer.append(["w"], records)
    writer.add_anomaly({"section": "w", "values": "trainable_variables", "kind": "nan", "step": 3}, 100)
    writer.close()
    _, client = plugin_client(tmp_path)
    status, answer = get(client, "/timeline?run=run1")
    assert status == 200
    assert answer["values"] == "gradients" and answer["kinds"] == ["trainable_variables", "gradients"]
    (entry,) = answer["sections"]
    np.testing.assert_array_equal(column(entry, "step"), [5, 6, 7, 8])
    assert answer["anomalies"] == []
    status, answer = get(client, "/timeline?run=run1&values=trainable_variables")
    (entry,) = answer["sections"]
    np.testing.assert_array_equal(column(entry, "norm"), [1.0] * 4)
    assert [a["step"] for a in answer["anomalies"]] == [3]
    status, answer = get(client, "/timeline?run=run1&values=frames")
    assert status == 400 and "values must be one of" in answer["error"]


def test_a_run_of_more_sections_than_an_answer_holds_keeps_those_with_anomalies(tmp_path):
    """5,000 sections: the answer held the first 4,096 (dict order) and said nothing, so the first
    anomaly's section (expert4500) was silently not in it. Now those named by anomalies.jsonl and those
    whose records are flagged ANOMALY are kept, in the run's order, and the answer says how many it left
    out; an anomaly found later (the records unchanged) is in the next answer too."""
    from beholder_plugin.server import timeline as server_timeline

    server_timeline.forget()
    run = str(tmp_path / "run1")
    names = [f"expert{i:04d}.w" for i in range(5000)]
    writer = TimelineWriter(run, files_for(run), parts_budget=10**9)
    for step in range(1, 4):
        records = _records(names, step, 1.7e9 + step)
        if step == 3:
            records["flags"][4700] |= tl.ANOMALY  # flagged in its records only
        writer.append(names, records)
    writer.close()
    path = os.path.join(tl.timeline_dir(run), tl.ANOMALIES_FILE)
    with open(path, "wb") as out:
        out.write(tl.anomaly_line({"section": "expert4500.w", "kind": "nan", "step": 3, "first": True}))
    _, client = plugin_client(tmp_path)
    status, answer = get(client, "/timeline?run=run1&points=8")
    shown = [s["name"] for s in answer["sections"]]
    assert status == 200 and len(shown) == server_timeline.MAX_SECTIONS == 4096
    assert (answer["sections_total"], answer["sections_left_out"]) == (5000, 5000 - 4096)
    assert "expert4500.w" in shown and "expert4700.w" in shown
    assert shown == sorted(shown)  # the run's order
    assert shown[:4094] == names[:4094] and "expert4094.w" not in shown  # then the others, in order
    with open(path, "ab") as out:  # a later anomaly: anomalies.jsonl changed, the records did not
        out.write(tl.anomaly_line({"section": "expert4900.w", "kind": "inf", "step": 3}))
    status, answer = get(client, "/timeline?run=run1&points=8")
    shown = [s["name"] for s in answer["sections"]]
    assert status == 200 and {"expert4500.w", "expert4700.w", "expert4900.w"} <= set(shown)
    assert len(shown) == 4096 and answer["sections_left_out"] == 904


def test_a_run_of_few_sections_says_none_were_left_out(tmp_path):
    """Below the cap every section is answered, in the run's order, sections_left_out 0."""
    run = str(tmp_path / "run1")
    writer = TimelineWriter(run, files_for(run))
    writer.append(["b", "a"], _records(["b", "a"], 1, 1.7e9))
    writer.close()
    _, client = plugin_client(tmp_path)
    status, answer = get(client, "/timeline?run=run1")
    assert status == 200 and [s["name"] for s in answer["sections"]] == ["b", "a"]
    assert (answer["sections_total"], answer["sections_left_out"]) == (2, 0)


def test_the_answer_asked_for_again_is_the_last_one_dropped(tmp_path, monkeypatch):
    """The kept answers are dropped least recently asked for first (a hit did not count: the dashboard's
    own answer, asked for every 5 s, went before one asked for once since)."""
    from beholder_plugin.server import timeline as server_timeline

    server_timeline.forget()
    run = str(tmp_path / "run1")
    writer = TimelineWriter(run, files_for(run), parts_budget=10**9)
    for step in range(1, 6):
        writer.append(["w"], _records(["w"], step, 1.7e9 + step))
    writer.close()
    _, client = plugin_client(tmp_path)
    monkeypatch.setattr(server_timeline, "CACHED_ANSWERS", 2)
    for points in (100, 200, 100, 300):
        assert get(client, f"/timeline?run=run1&points={points}")[0] == 200
    assert list(server_timeline._cache) == [(run, 100, None, None), (run, 300, None, None)]


def test_a_filter_finds_the_sections_an_answer_left_out(tmp_path, monkeypatch):
    """5,000 sections: the answer holds 4,096, and the dashboard's filter searched only those, so a
    left-out section (block0700/mlp.w) could not be found. ?sections= answers the sections whose names
    contain it, ignoring case, at most MAX_SECTIONS, those with anomalies first (and only if they match);
    sections_total stays the run's. Kept answers key on the filter: many filters keep CACHED_FILTERED."""
    from beholder_plugin.server import timeline as server_timeline

    server_timeline.forget()
    run = str(tmp_path / "run1")
    names = [f"block{i:04d}/attn.w" for i in range(4200)] + [f"block{i:04d}/mlp.w" for i in range(800)]
    writer = TimelineWriter(run, files_for(run), parts_budget=10**9)
    for step in (1, 2):
        records = _records(names, step, 1.7e9 + step)
        records["norm"] = np.arange(len(names))
        if step == 2:
            records["flags"][names.index("block4150/attn.w")] |= tl.ANOMALY  # flagged in its records only
        writer.append(names, records)
    writer.add_anomaly({"section": "block4120/attn.w", "kind": "nan", "step": 2, "first": True}, 100)
    writer.add_anomaly({"section": "block0600/mlp.w", "kind": "inf", "step": 2}, 100)
    writer.close()
    _, client = plugin_client(tmp_path)
    status, plain = get(client, "/timeline?run=run1&points=8")
    assert status == 200 and plain["sections_left_out"] == 5000 - 4096
    assert plain.get("sections_filter") is None
    assert "block0700/mlp.w" not in {s["name"] for s in plain["sections"]}

    status, found = get(client, "/timeline?run=run1&points=8&sections=%20MLP.W%20")  # (trimmed, any case)
    shown = [s["name"] for s in found["sections"]]
    assert status == 200 and "block0700/mlp.w" in shown  # the left-out section, found
    assert shown == names[4200:] and found["sections_filter"] == "mlp.w"
    assert (found["sections_total"], found["sections_matched"]) == (5000, 800)
    assert found["sections_left_out"] == 5000 - 800 and found["points"] == 8
    entry = found["sections"][700]
    assert entry["name"] == "block0700/mlp.w" and column(entry, "norm").tolist() == [4900, 4900]
    assert (found["first_step"], found["last_step"]) == (plain["first_step"], plain["last_step"])

    status, found = get(client, "/timeline?run=run1&points=8&sections=attn")  # 4,200 match: the cap holds
    shown = [s["name"] for s in found["sections"]]
    assert status == 200 and len(shown) == server_timeline.MAX_SECTIONS
    assert (found["sections_total"], found["sections_matched"]) == (5000, 4200)
    assert {"block4120/attn.w", "block4150/attn.w"} <= set(shown)  # anomalies first ...
    assert "block0600/mlp.w" not in shown  # ... of those that match only
    assert shown == sorted(shown) and shown[:4094] == names[:4094] and "block4199/attn.w" not in shown

    status, found = get(client, "/timeline?run=run1&points=8&sections=.*")  # text, not a pattern
    assert status == 200 and found["sections"] == [] and found["sections_matched"] == 0
    status, found = get(client, "/timeline?run=run1&points=8&sections=%20%20")  # blank: every section
    assert status == 200 and found["sections_filter"] is None and len(found["sections"]) == 4096

    server_timeline.forget()
    monkeypatch.setattr(server_timeline, "CACHED_FILTERED", 2)
    assert get(client, "/timeline?run=run1&points=8")[0] == 200
    for i in range(6):  # someone typing: one answer per filter, the oldest dropped first
        status, found = get(client, f"/timeline?run=run1&points=8&sections=block000{i}/")
        assert status == 200 and [s["name"] for s in found["sections"]] == [
            f"block000{i}/attn.w", f"block000{i}/mlp.w"]
    assert list(server_timeline._cache) == [(run, 8, None, None), (run, 8, None, "block0004/"),
                                            (run, 8, None, "block0005/")]


def test_a_filter_past_its_bound_is_refused(tmp_path):
    """?sections= is matched against every section's name and keys a kept answer: past MAX_FILTER_CHARS it
    is a 400 naming the bound (it was ignored), never a scan of a 100 kB filter nor an answer kept for it."""
    from beholder_plugin.server import timeline as server_timeline

    server_timeline.forget()
    run = str(tmp_path / "run1")
    writer = TimelineWriter(run, files_for(run))
    writer.append(["a/w", "b/w"], _records(["a/w", "b/w"], 1, 1.7e9))
    writer.close()
    _, client = plugin_client(tmp_path)
    longest = "w" * 256  # (MAX_FILTER_CHARS)
    status, answer = get(client, f"/timeline?run=run1&sections={longest}")
    assert status == 200 and answer["sections"] == []
    for hostile in (longest + "w", "%00" * 300, "x" * 100_000):
        status, answer = get(client, f"/timeline?run=run1&sections={hostile}")
        assert status == 400, hostile[:10]
        assert answer["error"].startswith("sections must be a filter of at most 256 characters, not ")
    status, answer = get(client, "/timeline?run=run1&sections=%00A/")  # (any text under the bound: as text)
    assert status == 200 and answer["sections"] == []
    assert [key[3] for key in server_timeline._cache] == [longest, "\x00a/"]


def test_a_long_ring_is_listed_thinned_but_with_every_frame_an_anomaly_names(tmp_path, monkeypatch):
    """The answer listed every kept frame: 18,600 of a live run's were 1.97 MB of its 2.06 MB, sent at
    every 5 s refresh. At most MAX_KEPT now, spread, the first and newest, and each anomaly's frames."""
    from beholder_plugin.server import kept_frames

    run = str(tmp_path / "run1")
    os.makedirs(run)
    set_config(run, values="arrays", FPS=30)
    with Beholder(run, background=False) as beholder:
        for step in range(1, 41):
            w = np.full((4, 4), float(step), np.float32)
            if step == 23:
                w[0, 0] = np.nan
            beholder.frame_due_now()
            beholder.update(arrays={"w": w})
    monkeypatch.setattr(kept_frames, "MAX_KEPT", 8)
    _, client = plugin_client(tmp_path)
    status, answer = get(client, "/timeline?run=run1&points=64")
    assert status == 200
    named = {name for record in answer["anomalies"] for name in record.get("frames", [])}
    steps = [k["step"] for k in answer["kept"]]
    assert named and named <= {k["name"] for k in answer["kept"]}  # the anomaly's frames, by name
    assert steps[0] == 1 and steps[-1] == 40 and steps == sorted(steps) and len(steps) <= 8 + len(named)
    assert 23 in steps and len(steps) >= 8


def test_kept_lists_of_two_anomaly_sets_asked_at_once_each_get_their_own():
    """kept() and its JSON were made under two holds of the lock: a request whose anomalies named a frame
    could cache the list of one that named none, and the frame went missing from later answers."""
    import sys
    import threading

    from beholder_plugin.protocol.history import HistoryEntry
    from beholder_plugin.server import kept_frames

    entries = [HistoryEntry(f"f{i:06d}", float(i), "w", i, i) for i in range(3 * kept_frames.MAX_KEPT)]
    listing = kept_frames.Listing(entries)
    named = frozenset({"f000001"})  # (a frame thinning leaves out)
    assert "f000001" not in {k["name"] for k in listing.kept()}
    wrong: list = []

    def ask(keep):
        for _ in range(50):
            found = {k["name"] for k in json.loads(listing.kept_json(keep))}
            if ("f000001" in found) != bool(keep):
                wrong.append(keep)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=ask, args=(keep,)) for keep in (frozenset(), named)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert wrong == []
