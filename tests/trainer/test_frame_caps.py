"""One frame size limit for writer and reader: what the trainer writes, the reader's caps accept.

The reader refuses headers past hard caps and pictures larger than the stored
values can fill (protocol/frame_format.py); these tests hold the writer to the
same rules, for every layout, with "Show all data" on and off.
"""

from __future__ import annotations

import os
import resource

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import set_config

from beholder_plugin import Beholder
from beholder_plugin.protocol.frame_format import MAX_FRAME_BYTES, FrameFormatError, encode_frame
from beholder_plugin.protocol.layout import MAX_FRAME_WIDTH, MAX_SECTION_HEIGHT, resize_indices
from beholder_plugin.protocol.names import frame_path
from beholder_plugin.protocol.runfiles import read_frame_file

SHAPES = st.lists(st.integers(1, 40), min_size=1, max_size=5).map(tuple)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shapes=st.lists(SHAPES, min_size=1, max_size=4), show_all=st.booleans(),
       sizing=st.sampled_from(["fixed", "proportional"]), wide=st.sampled_from([None, 900, 5000]))
def test_every_frame_the_writer_makes_the_reader_takes(tmp_path_factory, shapes, show_all, sizing, wide):
    run_dir = tmp_path_factory.mktemp("run")
    set_config(run_dir, values="arrays", mode="current", FPS=30, show_all=show_all, section_size=sizing,
               history_mb=0)
    arrays = {f"a{i}": np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
              for i, shape in enumerate(shapes)}
    if wide is not None:  # a wide section widens the frame: the grids of other ranks fill it
        arrays["wide"] = np.ones(wide, np.float32)
        arrays["grid"] = np.ones((64, 120, 130), np.float32)
    with Beholder(run_dir, strict=True, background=False) as beholder:
        assert beholder.update(arrays=arrays)
    frame = read_frame_file(run_dir)  # FrameFormatError if the reader's caps refuse it
    assert frame.width <= MAX_FRAME_WIDTH
    assert all(rec["height"] <= MAX_SECTION_HEIGHT for rec in frame.sections)


def test_show_all_on_a_200m_value_array_writes_a_strided_sample_the_plugin_serves(tmp_path):
    """(20000, 10000) float32 under "Show all data": a 2048 x 4096 sample, not a 1.6 GB frame."""
    run_dir = tmp_path / "run"
    set_config(run_dir, values="arrays", mode="current", FPS=30, show_all=True)
    big = np.random.default_rng(0).standard_normal((20000, 10000), dtype=np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with Beholder(run_dir, strict=True, background=False) as beholder:
        assert beholder.update(arrays={"big": big})
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"peak RSS grew by {grown_mb:.0f} MB")  # (the benchmark's figure: docs/reliability.md)
    path = frame_path(run_dir)
    assert os.path.getsize(path) < 100 << 20
    frame = read_frame_file(run_dir)
    (rec,) = frame.sections
    assert (frame.width, rec["height"]) == (MAX_FRAME_WIDTH, MAX_SECTION_HEIGHT)
    assert rec["source"] == [20000, 10000] and rec["compact"] == [MAX_SECTION_HEIGHT, MAX_FRAME_WIDTH]
    # A strided sample: the nearest-neighbour resize's rows and columns of the array itself.
    rows, cols = resize_indices(20000, MAX_SECTION_HEIGHT), resize_indices(10000, MAX_FRAME_WIDTH)
    assert rows[1] > 1 and cols[1] > 1
    assert np.array_equal(frame.section_values(0), big[np.ix_(rows, cols)])


def test_the_writer_refuses_a_frame_no_reader_would_take():
    """Past the shared caps encode_frame raises (update() counts a failure), instead of writing it."""
    palette = np.zeros((256, 3), np.uint8)
    with pytest.raises(FrameFormatError, match="columns or"):
        encode_frame({}, rows=np.zeros((2, MAX_FRAME_WIDTH + 1), np.uint8), palette=palette)
    header = {"width": 768, "sections": [{"name": "x"}]}
    values = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (MAX_FRAME_BYTES // 4,), (0,))
    with pytest.raises(FrameFormatError, match="more than the"):
        encode_frame(header, rows=None, palette=palette, values=values, height=128)
