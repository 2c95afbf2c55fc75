"""Keyframes (trainer/keyframes.py): log-spaced frames over the whole run, under their own budget."""

from __future__ import annotations

import math
import os
import time

import numpy as np
from support import set_config

from beholder_plugin import Beholder
from beholder_plugin.protocol.files import files_for
from beholder_plugin.protocol.history import HistoryEntry, HistoryRing, history_name, list_history
from beholder_plugin.trainer import keyframes as kf


def test_three_days_of_frames_leave_log_spaced_keyframes_under_budget(run_dir):
    """A 3-day run (a fake clock: a frame a minute, the ring 10 min): the keyframes stay under budget,
    keep the first frame, reach back across the run, denser near the present; the files dropped are named."""
    frame_bytes = 1 << 20
    ring = HistoryRing(256 << 20, 600)
    keys = kf.Keyframes(run_dir, files_for(run_dir), "unused", budget_bytes=64 * frame_bytes)
    deleted = []
    start = 1.7e9
    for k in range(3 * 24 * 60):
        when = start + 60 * k
        name = history_name(when, "abc", k + 1, k + 1)
        ring.add(HistoryEntry(name, when, "abc", k + 1, k + 1, frame_bytes))
        deleted += keys.consider(ring, k + 1)
        ring.expired(when)
    times = [e.time - start for e in keys.entries]
    assert keys.bytes <= 64 * frame_bytes and len(times) == 64
    assert times[0] == 0  # the first frame
    assert times[-1] > 3 * 24 * 3600 - 3600 * 3  # and recent ones
    end = 3 * 24 * 3600
    assert sum(t > end - 3 * 3600 for t in times) > sum(t < 24 * 3600 for t in times) >= 2  # dense near now
    ages = [end - t for t in times[1:-1]]
    ratios = [math.log(a / b) for a, b in zip(ages, ages[1:])]
    assert max(ratios) < 20 * min(r for r in ratios if r > 0)  # roughly even in log time
    assert set(keys.names()) <= set(ring.pins)
    assert set(keys.names()) <= {e.name for e in ring.entries} | set(ring.kept)
    assert not set(deleted) & set(ring.kept) and not set(deleted) & set(keys.names())


def test_keyframes_stay_in_history_after_the_ring_moves_on(run_dir, monkeypatch):
    """A real Beholder: frames older than the ring's age budget that became keyframes stay listed."""
    monkeypatch.setattr(kf, "MIN_GAP_SECONDS", 0.0)
    set_config(run_dir, values="arrays", FPS=30, history_seconds=1)
    beholder = Beholder(run_dir, background=False)
    beholder.timeline.keyframes.min_gap = 0.3
    for k in range(4):
        beholder.frame_due_now()
        beholder.update(arrays={"w": np.full((4, 4), float(k))})
        time.sleep(0.35)
    time.sleep(1.1)
    beholder.frame_due_now()
    beholder.update(arrays={"w": np.zeros((4, 4))})
    beholder.close()
    kept = list_history(run_dir)
    steps = [e.step for e in kept]
    assert steps[0] == 1 and steps[-1] == 5
    assert len(steps) >= 3  # the ring alone would hold the newest frame only
    keyframes = os.path.join(run_dir, "plugins", "beholder", "timeline", kf.KEYFRAMES_FILE)
    assert os.path.exists(keyframes)
    again = Beholder(run_dir, background=False)  # a restarted trainer pins them again
    assert set(again.timeline.keyframes.names()) <= set(again.store.history.pins)
    assert again.timeline.keyframes.names()
    again.close()


def test_the_ring_holds_at_most_max_ring_frames_whatever_its_budgets(monkeypatch):
    """A week's ring of small frames at 30 a second is 18 M files: a new writer's listing (100,000 names
    at most) adopted only some and left the rest on disk for good, and the trainer's account of them
    took gigabytes. The ring keeps MAX_RING_FRAMES at most (scaled down here)."""
    from beholder_plugin.protocol import history

    monkeypatch.setattr(history, "MAX_RING_FRAMES", 100)
    ring = HistoryRing(1 << 40, 604800)
    dropped = []
    for k in range(250):
        ring.add(HistoryEntry(f"f{k}", 1.7e9 + k / 30, "w", k + 1, k + 1, 1000))
        dropped += ring.expired(1.7e9 + k / 30)
    assert len(ring.entries) == 100 and dropped == [f"f{k}" for k in range(150)]
    assert ring.entries[0].name == "f150" and ring.bytes == 100 * 1000


def test_frames_larger_than_half_the_budget_are_never_keyframes(run_dir):
    """The first and the newest keyframes always stay, so two must fit: a frame over half the budget is
    never one (134 MB frames kept 268 MB under 128 MB), and smaller frames later still become keyframes."""
    ring = HistoryRing(1 << 40, 10 ** 9)
    keys = kf.Keyframes(run_dir, files_for(run_dir), "unused", budget_bytes=1000, min_gap=1.0)
    sizes = [600, 600, 600, 400, 400, 400]
    for k, size in enumerate(sizes):
        name = history_name(1.7e9 + 60 * k, "abc", k + 1, k + 1)
        ring.add(HistoryEntry(name, 1.7e9 + 60 * k, "abc", k + 1, k + 1, size))
        keys.consider(ring, k + 1)
        assert keys.bytes <= 1000
    assert [e.step for e in keys.entries] == [4, 6]  # (5 dropped for the budget: never the first or newest)
