"""The timeline's files (protocol/timeline.py): written by the trainer's writer, read back by every reader."""

from __future__ import annotations

import base64
import logging
import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beholder_plugin import read_anomalies, read_timeline
from beholder_plugin.protocol import timeline as tl
from beholder_plugin.protocol.files import files_for
from beholder_plugin.server.timeline import timeline_answer
from beholder_plugin.trainer.timeline import TimelineWriter

section_names = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=5, unique=True)
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


def frame_records(names: list[str], step: int, when: float, values: list[float]) -> np.ndarray:
    """One frame's records for these sections, their figures from values."""
    records = tl.make_records(len(names))
    records["step"] = step
    records["time"] = when
    records["section"] = np.arange(len(names))
    for column in ("min", "max", "mean", "std", "norm", "zero", "nan", "inf"):
        records[column] = values[: len(names)] if len(values) >= len(names) else 0.0
    records["nonfinite"] = step % 3
    records["count"] = 100
    records["flags"] = step % 32
    return records


def expected_columns(frames: list[tuple[list[str], np.ndarray]]) -> dict[str, np.ndarray]:
    """The records by section name, as the writer was handed them."""
    out: dict[str, list] = {}
    for names, records in frames:
        for j, name in enumerate(names):
            out.setdefault(name, []).append(records[j : j + 1])
    return {name: np.concatenate(parts) for name, parts in out.items()}


def assert_same(found: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """The same sections and the same records (section ids aside), bit for bit."""
    assert sorted(found) == sorted(expected)
    for name, recs in expected.items():
        got = found[name]
        assert len(got) == len(recs), name
        for column in tl.COLUMNS:
            np.testing.assert_array_equal(got[column], recs[column], err_msg=f"{name} {column}")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=section_names, frames=st.integers(1, 12), values=st.lists(floats, min_size=5, max_size=5),
       budget=st.sampled_from([200, 2000, 10**9]), subsets=st.data())
def test_written_records_read_back(tmp_path_factory, names, frames, values, budget, subsets):
    """Whatever the sections, figures (NaN, inf included) and compactions, every reader reads them back."""
    run = str(tmp_path_factory.mktemp("run"))
    writer = TimelineWriter(run, files_for(run), parts_budget=budget, cap=10**6)
    written = []
    base_cache: dict = {}  # a live reader's parsed base.bht, across the writer's compactions
    for step in range(1, frames + 1):
        # sections come and go between frames
        shown = subsets.draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
        records = frame_records(shown, step, 1000.0 + step, values)
        writer.append(shown, records)
        written.append((shown, records))
        assert_same(tl.read_records(run, base_cache=base_cache), expected_columns(written))
    writer.close()
    expected = expected_columns(written)
    assert_same(tl.read_records(run), expected)
    columns = read_timeline(run)
    answer = {s["name"]: s for s in timeline_answer("run", run, 4096)["sections"]}  # the server's reader
    for name, recs in expected.items():
        np.testing.assert_array_equal(columns[name]["step"], recs["step"])
        np.testing.assert_array_equal(columns[name]["norm"], recs["norm"])
        for column, dtype in (("step", "<f8"), ("norm", "<f4"), ("mean", "<f4"), ("nonfinite", "<f4")):
            got = np.frombuffer(base64.b64decode(answer[name][column]), dtype)
            np.testing.assert_array_equal(got, recs[column].astype(dtype), err_msg=f"{name} {column}")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=section_names, frames=st.integers(2, 8), cuts=st.lists(st.floats(0, 1), min_size=1, max_size=6))
def test_a_growing_part_read_again_and_again_reads_as_a_fresh_read(tmp_path_factory, names, frames, cuts):
    """A live reader parses only what was appended to a part since it last looked: whatever bytes the part
    had at each look (a chunk cut anywhere), it reads what a reader parsing the whole part reads."""
    source = str(tmp_path_factory.mktemp("source"))
    writer = TimelineWriter(source, files_for(source), cap=10**6)
    for step in range(1, frames + 1):
        shown = names[: 1 + step % len(names)]
        writer.append(shown, frame_records(shown, step, float(step), [float(step)] * 5))
    writer.close()
    whole = open(os.path.join(tl.timeline_dir(source), tl.part_name(0)), "rb").read()
    run = str(tmp_path_factory.mktemp("run"))
    part = os.path.join(tl.timeline_dir(run), tl.part_name(0))
    os.makedirs(os.path.dirname(part))
    live: dict = {}
    for size in sorted(round(cut * len(whole)) for cut in cuts) + [len(whole)]:
        with open(part, "ab") as f:  # (grows in place, as the trainer appends)
            f.write(whole[f.tell():size])
        assert_same(tl.read_records(run, base_cache=live), tl.read_records(run))


def test_a_part_rewritten_under_its_name_and_inode_is_parsed_afresh(run_dir):
    """A run deleted and written again under its name got its part's inode back, and a live reader went on
    parsing the new file from where the old one had stopped: the old run's sections and steps."""
    writer = TimelineWriter(run_dir, files_for(run_dir))
    for step in range(1, 21):
        writer.append(["old"], frame_records(["old"], step, float(step), [1.0]))
    writer.close()
    live: dict = {}
    assert list(tl.read_records(run_dir, base_cache=live)) == ["old"]
    part = os.path.join(tl.timeline_dir(run_dir), tl.part_name(0))
    other = str(os.path.join(run_dir, "other"))
    writer = TimelineWriter(other, files_for(other))
    for step in range(1000, 1040):
        writer.append(["new"], frame_records(["new"], step, 5000.0 + step, [2.0]))
    writer.close()
    with open(os.path.join(tl.timeline_dir(other), tl.part_name(0)), "rb") as f:
        new = f.read()
    inode = os.stat(part).st_ino
    with open(part, "r+b") as f:  # (the same inode, longer, other bytes from the start)
        f.write(new)
    assert os.stat(part).st_ino == inode
    found = tl.read_records(run_dir, base_cache=live)
    assert list(found) == ["new"] and found["new"]["step"].tolist() == list(range(1000, 1040))


def test_two_live_reads_of_one_run_at_once_share_its_kept_parts(run_dir):
    """Two refreshes of a live run read at once with the run's one cache: forgetting the parts base.bht
    had taken in raised KeyError (or 'dictionary changed size') in one of them."""
    import sys
    import threading

    directory = tl.timeline_dir(run_dir)
    os.makedirs(directory)

    def part(seq):
        with open(os.path.join(directory, tl.part_name(seq)), "wb") as f:
            f.write(tl.names_chunk({"s": 0}) + tl.records_chunk(frame_records(["s"], seq, float(seq), [1.0])))

    errors: list = []

    def read(cache):
        try:
            tl.read_records(run_dir, base_cache=cache)
        except Exception as exc:  # (what a request would answer 500 with)
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(300):
            cache: dict = {}
            for seq in range(20):
                part(seq)
            tl.read_records(run_dir, base_cache=cache)
            for seq in range(20):  # (as if base.bht had taken them in)
                os.remove(os.path.join(directory, tl.part_name(seq)))
            part(20)
            threads = [threading.Thread(target=read, args=(cache,)) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            os.remove(os.path.join(directory, tl.part_name(20)))
            if errors:
                break
    finally:
        sys.setswitchinterval(interval)
    assert errors == []


def test_a_partly_written_tail_is_left_out(run_dir):
    """A part cut anywhere inside its last chunk reads as the frames before it (a file being appended)."""
    writer = TimelineWriter(run_dir, files_for(run_dir))
    for step in range(1, 4):
        writer.append(["a", "b"], frame_records(["a", "b"], step, float(step), [1.0, 2.0]))
    writer.close()
    part = os.path.join(tl.timeline_dir(run_dir), tl.part_name(0))
    data = open(part, "rb").read()
    last = len(tl.records_chunk(frame_records(["a", "b"], 3, 3.0, [1.0, 2.0])))
    for cut in (len(data) - 1, len(data) - last + 1, len(data) - last + tl.HEADER_BYTES):
        with open(part, "wb") as f:
            f.write(data[:cut])
        found = tl.read_records(run_dir)
        assert found["a"]["step"].tolist() == [1, 2]
    with open(part, "wb") as f:  # a flipped byte in the last chunk: its CRC refuses it
        f.write(data[:-3] + bytes([data[-3] ^ 0xFF]) + data[-2:])
    assert tl.read_records(run_dir)["b"]["step"].tolist() == [1, 2]


def test_a_kept_base_is_parsed_again_only_when_it_is_replaced(run_dir, monkeypatch):
    """A live reader's base_cache: new parts are read, the unchanged base.bht is not parsed again."""
    writer = TimelineWriter(run_dir, files_for(run_dir), parts_budget=10**9, cap=10**6)
    for step in range(1, 4):
        writer.append(["a"], frame_records(["a"], step, float(step), [1.0]))
    writer.compact()  # steps 1-3 in base.bht
    writer.append(["a"], frame_records(["a"], 4, 4.0, [1.0]))
    parsed = []
    real_parse = tl.parse_from  # (parse() goes through it too)
    monkeypatch.setattr(tl, "parse_from", lambda data, pos=0, names=None: parsed.append(len(data) - pos)
                        or real_parse(data, pos, names))
    cache: dict = {}
    assert tl.read_records(run_dir, base_cache=cache)["a"]["step"].tolist() == [1, 2, 3, 4]
    assert len(parsed) == 2  # base.bht and the part
    writer.append(["a"], frame_records(["a"], 5, 5.0, [1.0]))
    parsed.clear()
    assert tl.read_records(run_dir, base_cache=cache)["a"]["step"].tolist() == [1, 2, 3, 4, 5]
    assert parsed == [len(tl.records_chunk(frame_records(["a"], 5, 5.0, [1.0])))]  # the part's new chunk only
    writer.compact()  # base.bht replaced: steps 1-5, no part left
    parsed.clear()
    assert tl.read_records(run_dir, base_cache=cache)["a"]["step"].tolist() == [1, 2, 3, 4, 5]
    assert len(parsed) == 1  # the new base.bht


def test_anomalies_read_back_without_a_partial_line(run_dir):
    """anomalies.jsonl: complete lines only."""
    writer = TimelineWriter(run_dir, files_for(run_dir))
    writer.add_anomaly({"section": "w", "values": "arrays", "kind": "nan", "step": 7, "time": 1.0})
    path = os.path.join(tl.timeline_dir(run_dir), tl.ANOMALIES_FILE)
    with open(path, "ab") as f:
        f.write(b'{"section": "x", "kind"')
    assert read_anomalies(run_dir) == [{"section": "w", "values": "arrays", "kind": "nan", "step": 7,
                                        "time": 1.0}]


def test_thinning_keeps_first_recent_anomalies_and_log_spacing():
    """thin(): the first and the recent records, every anomaly, log-spaced ages between, cap in all."""
    n = 10000
    records = tl.make_records(n)
    records["step"] = np.arange(n)
    records["time"] = np.arange(n, dtype=float)
    records["flags"][[500, 5000]] = tl.ANOMALY
    kept = tl.thin(records, now=float(n), keep_first=10, keep_recent=100, cap=300)
    steps = kept["step"]
    assert len(kept) <= 300
    assert steps[:10].tolist() == list(range(10))
    assert steps[-100:].tolist() == list(range(n - 100, n))
    assert {500, 5000} <= set(steps.tolist())
    middle = steps[(steps >= 10) & (steps < n - 100)]
    ages = n - middle
    assert len(middle) > 150
    # log spacing: the older half of the ages holds far fewer records than the newer
    assert np.sum(ages > n / 2) < np.sum(ages < n / 8)


def test_a_week_at_ten_frames_a_second_of_300_sections_stays_under_64_mb(run_dir):
    """A 7-day run compressed in time (a fake clock): under its budget, first frames and the anomaly kept.

    Enough frames to thin several times over: each section then holds its
    cap, and the bound (300 * MAX_PER_SECTION * 72 B + parts_budget(300), that
    is TOTAL_BUDGET) holds whatever the length of the run.
    """
    sections = [f"layer{i}/weight" for i in range(300)]
    now = [1.7e9]
    writer = TimelineWriter(run_dir, files_for(run_dir), clock=lambda: now[0])
    frames = 3000
    spacing = 7 * 24 * 3600 / frames
    biggest = 0
    for k in range(frames):
        now[0] += spacing
        records = frame_records(sections, k + 1, now[0], [float(k)] * 300)
        records["flags"] = tl.ANOMALY if k == 700 else 0
        writer.append(sections, records)
        if k % 97 == 0:
            biggest = max(biggest, _bytes(tl.timeline_dir(run_dir)))
    writer.close()
    biggest = max(biggest, _bytes(tl.timeline_dir(run_dir)))
    assert biggest < 64 * 2**20
    assert 300 * tl.MAX_PER_SECTION * tl.RECORD.itemsize + tl.parts_budget(300) < 64 * 2**20
    found = tl.read_records(run_dir)
    assert len(found) == 300
    steps = found["layer7/weight"]["step"]
    assert len(steps) <= tl.MAX_PER_SECTION + tl.parts_budget(300) // (300 * tl.RECORD.itemsize) + 1
    assert steps[: tl.KEEP_FIRST].tolist() == list(range(1, tl.KEEP_FIRST + 1))
    assert 701 in steps.tolist()
    assert steps[-1] == frames


def test_fewer_sections_thin_less_often_within_the_same_bound(run_dir):
    """A run of 40 sections lets its parts grow to TOTAL_BUDGET less a full base.bht (thinning rewrites
    base.bht whole, so the fewer times the better), and still stays under 64 MB."""
    sections = [f"layer{i}/weight" for i in range(40)]
    budget = tl.parts_budget(len(sections))
    assert budget == tl.TOTAL_BUDGET - 40 * tl.MAX_PER_SECTION * tl.RECORD.itemsize > 4 * tl.PARTS_BUDGET
    assert tl.parts_budget(400) == tl.PARTS_BUDGET  # many sections: at least PARTS_BUDGET
    now = [1.7e9]
    writer = TimelineWriter(run_dir, files_for(run_dir), clock=lambda: now[0])
    compactions = []
    real = writer.compact
    writer.compact = lambda: compactions.append((writer.parts_bytes, k)) or real()
    frame_bytes = None
    biggest = 0
    frames = budget // (40 * tl.RECORD.itemsize) + 400
    for k in range(frames):
        now[0] += 1.0
        writer.append(sections, frame_records(sections, k + 1, now[0], [float(k)] * 40))
        frame_bytes = frame_bytes or writer.parts_bytes
        if k % 500 == 0:
            biggest = max(biggest, _bytes(tl.timeline_dir(run_dir)))
    assert len(compactions) == 1 and budget <= compactions[0][0] < budget + frame_bytes
    assert biggest < 64 * 2**20
    after = frames - 1 - compactions[0][1]  # frames appended since
    assert len(tl.read_records(run_dir)["layer3/weight"]) == tl.MAX_PER_SECTION + after


def _bytes(directory: str) -> int:
    """The bytes of the files in a directory."""
    return sum(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory))


def test_base_bht_stays_within_its_budget_however_many_sections(run_dir, monkeypatch):
    """Each section kept 2048 records whatever their number: 2,000 sections wrote a 279 MB base.bht,
    which readers (capped at 256 MiB) then refused, and every frame after tried to thin again, each
    leaving a part behind. Each section now keeps section_cap(n) records, BASE_BUDGET in all; names
    that never come back (the oldest newest records) go first when even the fewest would not fit.
    Scaled down here: a 200 KB budget."""
    monkeypatch.setattr(tl, "BASE_BUDGET", 200 << 10)
    sections = [f"expert{i}/w" for i in range(40)]
    cap = tl.section_cap(len(sections))
    assert cap == (200 << 10) // (40 * tl.RECORD.itemsize) == 71
    now = [1.7e9]
    writer = TimelineWriter(run_dir, files_for(run_dir), clock=lambda: now[0], parts_budget=64 << 10)
    for k in range(300):
        now[0] += 1.0
        writer.append(sections, frame_records(sections, k + 1, now[0], [float(k)] * 40))
    writer.compact()
    directory = tl.timeline_dir(run_dir)
    assert os.path.getsize(os.path.join(directory, tl.BASE_FILE)) <= (200 << 10) + (4 << 10)  # (+ names)
    found = tl.read_records(run_dir)
    assert {len(recs) for recs in found.values()} == {cap}
    steps = found["expert7/w"]["step"]
    assert steps[-1] == 300 and steps[0] == 1  # newest and first
    # names that change at every frame: only the newest fit, however long the run
    for k in range(300, 4000):
        now[0] += 1.0
        writer.append([f"token{k}"], frame_records([f"token{k}"], k + 1, now[0], [1.0]))
    writer.compact()
    assert os.path.getsize(os.path.join(directory, tl.BASE_FILE)) <= (200 << 10) + (4 << 10)  # (+ names)
    found = tl.read_records(run_dir)
    assert len(found) == (200 << 10) // (tl.KEEP_FIRST * tl.RECORD.itemsize) and "token3999" in found


def test_a_compaction_that_fails_is_not_tried_again_at_every_frame(run_dir, monkeypatch, caplog):
    """Compaction failing (a full disk): tried again once per budget's worth of new records, not at
    every frame; once the parts reach twice their budget, records stop (the parts stay there) and it is
    tried every STOPPED_RETRY_SECONDS; when it works again, records go on after a gap."""
    from beholder_plugin.trainer import timeline_writer

    now = [1.7e9]
    budget = 8 << 10
    writer = TimelineWriter(run_dir, files_for(run_dir), clock=lambda: now[0], parts_budget=budget)
    tries, real = [], tl.base_bytes
    broken = [True]

    def base_bytes(*args, **kwargs):
        if broken[0]:
            tries.append(writer.seq)
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(tl, "base_bytes", base_bytes)
    sections = ["w"]
    largest = 0
    with caplog.at_level(logging.WARNING, logger="beholder"):
        for k in range(3000):  # 72 B a frame: 8 KB every 114 frames; one frame a second
            now[0] += 1.0
            if k == 2000:
                broken[0] = False
            try:
                writer.append(sections, frame_records(sections, k + 1, now[0], [1.0]))
            except OSError:
                pass
            parts = [n for n in os.listdir(tl.timeline_dir(run_dir)) if tl.part_seq(n) is not None]
            largest = max(largest, sum(os.path.getsize(os.path.join(tl.timeline_dir(run_dir), n))
                                       for n in parts))
    retries = 2000 // int(timeline_writer.STOPPED_RETRY_SECONDS)
    assert 2 <= len(tries) <= 2 + retries + 1  # failing tries: not once a frame
    assert largest <= 2 * budget + 200  # (a frame's records past twice the budget, at most)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("takes no records for now" in m for m in messages) == 1
    assert sum("takes records again" in m for m in messages) == 1
    steps = read_timeline(run_dir)["w"]["step"]
    assert steps[-1] == 3000 and (steps > 2100).sum() >= 100  # records again, after a gap
    assert np.diff(steps).max() > 100


def test_a_stray_part_numbered_9999999999_is_followed_by_parts_that_are_read_and_compacted(run_dir):
    """A part file named part-9999999999.bht (copied in, or a very long run): the next parts have 11
    digits. They are read back and compacted like any other: before, no reader knew their names, so the
    timeline read back empty and its parts were never deleted."""
    directory = tl.timeline_dir(run_dir)
    os.makedirs(directory)
    with open(os.path.join(directory, "part-9999999999.bht"), "wb") as f:
        f.write(tl.names_chunk({"w": 0}) + tl.records_chunk(frame_records(["w"], 0, 1.7e9, [1.0])))
    now = [1.7e9]
    writer = TimelineWriter(run_dir, files_for(run_dir), clock=lambda: now[0], parts_budget=4 << 10)
    for k in range(1, 400):
        now[0] += 1.0
        writer.append(["w"], frame_records(["w"], k, now[0], [1.0]))
        if k % 10 == 0:
            writer.close_part()
    writer.close()
    names = os.listdir(directory)
    assert tl.part_seq("part-10000000000.bht") == 10**10 and tl.part_seq("part-123.bht") is None
    assert len([n for n in names if tl.part_seq(n) is not None]) <= 10  # compacted, not piling up
    steps = read_timeline(run_dir)["w"]["step"]
    assert steps[0] == 0 and steps[-1] == 399 and steps.size == 400


def test_a_smaller_cap_keeps_half_of_it_for_the_run_before_the_last_records(monkeypatch):
    """With 1,000 sections each kept 932 records: the first 16 and the newest 916, none of the run in
    between (the last 1.5 minutes of a 33-minute run). Half a small cap goes to the recent records now,
    the rest log-spaced over the run."""
    monkeypatch.setattr(tl, "BASE_BUDGET", 200 << 10)
    records = tl.make_records(300)
    records["step"], records["time"] = np.arange(1, 301), 1.7e9 + np.arange(300.0)
    steps = tl.thin_all({f"s{i}": records for i in range(40)}, 1.7e9 + 300)["s7"]["step"]
    cap = tl.section_cap(40)
    assert len(steps) == cap == 71 and steps[0] == 1 and steps[-1] == 300
    assert (steps >= 300 - cap // 2 + 1).sum() >= cap // 2  # the newest 35, whole
    assert ((steps > 16) & (steps < 200)).sum() >= 8  # and the run between


def test_a_trainer_restarted_after_a_compaction_numbers_its_parts_after_base_bht(run_dir):
    """A trainer whose last frame compacted leaves only base.bht (holding parts up to N); the next trainer
    into the run numbered its parts from 0 again, which readers took as held by base.bht: its records
    were never read, then deleted at its first compaction."""
    now = [1.7e9]
    first = TimelineWriter(run_dir, files_for(run_dir), clock=lambda: now[0], parts_budget=500)
    for step in range(1, 13):  # 72 B a frame: compacted every 7 frames
        now[0] += 1.0
        first.append(["w"], frame_records(["w"], step, now[0], [1.0]))
    first.compact()  # (its last frame compacted: base.bht alone)
    first.close()
    directory = tl.timeline_dir(run_dir)
    assert [n for n in os.listdir(directory) if tl.part_seq(n) is not None] == []
    assert tl.base_through(directory, files_for(run_dir)) >= 0
    second = TimelineWriter(run_dir, files_for(run_dir), clock=lambda: now[0], parts_budget=500)
    for step in range(1, 12):
        now[0] += 1.0
        second.append(["w"], frame_records(["w"], step, now[0], [1.0]))
        if step == 3:
            second.close_part()
            assert read_timeline(run_dir)["w"]["step"].tolist() == list(range(1, 13)) + [1, 2, 3]
    second.close()
    assert read_timeline(run_dir)["w"]["step"].tolist() == list(range(1, 13)) + list(range(1, 12))
