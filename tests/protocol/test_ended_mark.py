"""protocol/runfiles.py's ended.json: what a closing trainer leaves, read back, and hostile files refused."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beholder_plugin.protocol.names import ended_path, plugin_dir
from beholder_plugin.protocol.runfiles import MAX_ENDED_BYTES, read_ended, write_ended


@settings(max_examples=60, deadline=None)
@given(writer=st.text("0123456789abcdef", min_size=1, max_size=64), frame_id=st.integers(1, 2**53 - 1),
       when=st.floats(1e-3, 9e10), remote=st.booleans())
def test_every_mark_a_trainer_writes_is_read_back(tmp_path_factory, writer, frame_id, when, remote):
    run = (f"memory://ended-{uuid.uuid4().hex[:10]}/run" if remote
           else str(tmp_path_factory.mktemp("run")))
    if not remote:
        os.makedirs(plugin_dir(run))
    assert read_ended(run) is None  # (no file yet)
    write_ended(run, writer, frame_id, when)
    assert read_ended(run) == {"writer": writer, "frame_id": frame_id, "time": when}


@pytest.mark.parametrize("content", [
    b"not json", b"\xff\xfe", b"null", b"[]", b"[" * 10_000,
    b'{"writer": "a b", "frame_id": 1, "time": 5}',
    b'{"writer": "ab", "frame_id": true, "time": 5}',
    b'{"writer": "ab", "frame_id": 0, "time": 5}',
    b'{"writer": "ab", "frame_id": 1, "time": NaN}',
    b'{"writer": "ab", "frame_id": 1, "time": Infinity}',
    b'{"writer": "ab", "frame_id": 1, "time": 1e400}',
    b'{"writer": "ab", "frame_id": 1, "time": -3}',
    b'{"writer": "ab", "frame_id": 1, "time": "5"}',
    b'{"writer": "' + b"a" * 65 + b'", "frame_id": 1, "time": 5}',
    b'{"writer": "ab", "frame_id": 1, "time": 5, "pad": "' + b"x" * MAX_ENDED_BYTES + b'"}',
])
def test_a_hostile_or_broken_mark_reads_as_none(run_dir, content):
    os.makedirs(plugin_dir(run_dir))
    with open(ended_path(run_dir), "wb") as f:
        f.write(content)
    assert read_ended(run_dir) is None


def test_a_directory_or_fifo_in_the_marks_place_reads_as_none(run_dir):
    os.makedirs(ended_path(run_dir))
    assert read_ended(run_dir) is None
    os.rmdir(ended_path(run_dir))
    os.mkfifo(ended_path(run_dir))
    assert read_ended(run_dir) is None  # (and does not block)


def test_the_mark_is_plain_json_a_person_can_read(run_dir):
    os.makedirs(plugin_dir(run_dir))
    write_ended(run_dir, "ab12", 7, 1700000000.5)
    with open(ended_path(run_dir), encoding="utf-8") as f:
        assert json.load(f) == {"writer": "ab12", "frame_id": 7, "time": 1700000000.5}
