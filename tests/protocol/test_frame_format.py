"""Frame format v2: round trips, refusals of torn, foreign and old files, and value look-ups."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beholder_plugin.protocol import frame_format
from beholder_plugin.protocol.files import LOCAL
from beholder_plugin.protocol.frame_format import (
    FrameFormatError,
    decode_frame,
    encode_frame,
    read_frame_file,
    read_header,
    value_at,
)
from beholder_plugin.protocol.names import FRAME_FILE, frame_path, plugin_dir

PALETTE = np.stack([np.arange(256, dtype=np.uint8)[::-1]] * 3, axis=1)


def _bytes(header=None, **parts) -> bytes:
    return b"".join(bytes(chunk) for chunk in encode_frame(header or {}, **parts))


def _section(name, top, height, shape, source, compact, values, layout="matrix"):
    return {"name": name, "shape": list(shape), "layout": layout, "top": top, "height": height,
            "source": list(source), "compact": list(compact), "values": values, "bounds": [0.0, 1.0]}


def test_raw_palette_frame_round_trips():
    pixels = np.arange(6 * 5, dtype=np.uint8).reshape(6, 5)
    back = decode_frame(_bytes({"frame_id": 3}, rows=pixels, palette=PALETTE))
    np.testing.assert_array_equal(back.pixels, pixels)
    np.testing.assert_array_equal(back.rgb(), PALETTE[pixels])
    assert back.header["frame_id"] == 3 and back.header["encoding"] == "raw"
    assert back.header["version"] == 2 and back.values.size == 0 and back.sections == []


def test_row_encoded_frame_with_values_round_trips():
    rows = np.array([[0] * 8, [1] * 8, [2] * 8], dtype=np.uint8)
    index = np.array([1, 1, 1, 0, 2, 2, 2, 2, 1], dtype=np.uint32)
    values = np.array([0.5, -1.25, np.nan, np.inf], np.float32)
    sections = [_section("w", 0, 9, (2, 2), (2, 2), (2, 2), 0)]
    back = decode_frame(_bytes({"sections": sections}, rows=rows, row_index=index, palette=PALETTE,
                               values=values))
    np.testing.assert_array_equal(back.pixels, rows[index])
    assert (back.height, back.width) == (9, 8) and back.header["rows"] == 3
    np.testing.assert_array_equal(back.values, values)
    np.testing.assert_array_equal(back.section_values(0), values.reshape(2, 2))


def test_rgb_frame_round_trips():
    rgb = np.random.default_rng(0).integers(0, 256, (4, 7, 3), dtype=np.uint8)
    back = decode_frame(_bytes(rows=rgb))
    assert back.palette is None and back.header["channels"] == 3
    np.testing.assert_array_equal(back.rgb(), rgb)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    stored=st.integers(1, 50),
    channels=st.sampled_from([1, 3]),
    encoded=st.booleans(),
    n_values=st.integers(0, 100),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_frame_a_writer_can_encode_decodes_to_the_same_arrays(
    height, width, stored, channels, encoded, n_values, seed
):
    """Including more stored rows than the frame is tall (the v1 reader refused those)."""
    rng = np.random.default_rng(seed)
    shape = (stored if encoded else height, width) + ((3,) if channels == 3 else ())
    rows = rng.integers(0, 256, shape, dtype=np.uint8)
    index = rng.integers(0, stored, height).astype(np.uint32) if encoded else None
    values = rng.standard_normal(n_values).astype(np.float32)
    back = decode_frame(_bytes({"step": 7}, rows=rows, row_index=index,
                               palette=PALETTE if channels == 1 else None, values=values))
    expected = rows[index] if encoded else rows
    np.testing.assert_array_equal(back.pixels, expected)
    np.testing.assert_array_equal(back.values, values)
    assert back.header["step"] == 7 and back.height == height


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: b"NOTFRAME" + d[8:], "bad magic"),
        (lambda d: d[:-1], "torn"),
        (lambda d: d + b"\0", "torn"),
        (lambda d: d[:12], "header"),
        (lambda d: d[:8] + (2**31).to_bytes(4, "little") + d[12:], "header length"),
    ],
)
def test_torn_or_foreign_frame_files_are_refused(mutate, message):
    data = _bytes(rows=np.zeros((3, 4), np.uint8), palette=PALETTE)
    with pytest.raises(FrameFormatError, match=message):
        decode_frame(mutate(data))


def _forge(data: bytes, **change) -> bytes:
    head_len = int.from_bytes(data[8:12], "little")
    header = json.loads(data[12 : 12 + head_len])
    head = json.dumps({**header, **change}).encode()
    pad = (-(12 + len(head))) % 8
    start = (12 + head_len + 7) & ~7
    return data[:8] + len(head).to_bytes(4, "little") + head + b"\0" * pad + data[start:]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"version": 1}, "version 1, written by an older Beholder"),
        ({"version": 3}, "unsupported frame version"),
        ({"encoding": "zstd"}, "encoding"),
        ({"height": 0}, "height"),
        ({"value_count": 10**12}, "value_count"),
        ({"sections": [_section("a", 0, 2, (2, 2), (2, 2), (2, 2), 0)]}, "points outside"),
        ({"sections": [_section("a", 0, 2, (2, 2), (2, 2), (2, 2), 0, layout="spiral")]}, "layout"),
        ({"sections": [{"name": 3}]}, "name"),
    ],
)
def test_headers_that_do_not_add_up_are_refused_with_the_reason(change, message):
    data = _bytes(rows=np.zeros((3, 4), np.uint8), palette=PALETTE)
    with pytest.raises(FrameFormatError, match=message):
        decode_frame(_forge(data, **change))


def test_a_version_1_file_on_disk_says_the_trainer_is_older(run_dir):
    os.makedirs(plugin_dir(run_dir))
    head = json.dumps({"version": 1, "height": 1, "width": 1, "channels": 3}).encode()
    with open(frame_path(run_dir), "wb") as f:
        f.write(b"BHFRAME\0" + len(head).to_bytes(4, "little") + head + b"\0\0\0")
    with pytest.raises(FrameFormatError, match="older Beholder.*pip install -U"):
        read_frame_file(frame_path(run_dir))


def test_no_frame_yet_reads_as_none(run_dir):
    assert read_frame_file(frame_path(run_dir)) is None
    assert read_header(frame_path(run_dir)) is None
    assert value_at(frame_path(run_dir), 0, 0) is None


def test_value_at_reads_the_header_and_four_bytes(run_dir, monkeypatch):
    values = np.arange(12, dtype=np.float32) * 0.5
    sections = [_section("m", 0, 3, (3, 4), (3, 4), (3, 4), 0)]
    rows = np.zeros((3, 4), np.uint8)
    LOCAL.write_atomic(frame_path(run_dir), encode_frame({"sections": sections}, rows=rows, palette=PALETTE,
                                                          values=values))
    reads = []
    real = LOCAL.read_range
    monkeypatch.setattr(LOCAL, "read_range", lambda p, o, n, *rest: reads.append(n) or real(p, o, n, *rest))
    header = read_header(frame_path(run_dir))
    reads.clear()
    for y in range(3):
        for x in range(4):
            got = value_at(frame_path(run_dir), x, y, header=header)
            assert got["index"] == [y, x] and got["value"] == values[y * 4 + x]
    assert reads == [4] * 12
    assert value_at(frame_path(run_dir), 4, 0, header=header) is None


WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from beholder_plugin.protocol.files import LOCAL
    from beholder_plugin.protocol.frame_format import encode_frame
    from beholder_plugin.protocol.names import frame_path
    run, seconds = sys.argv[1], float(sys.argv[2])
    palette = np.zeros((256, 3), np.uint8)
    end = time.time() + seconds
    n = 0
    while time.time() < end:
        n += 1
        h = 50 + (n * 37) % 400  # sizes change, so a torn file would not add up
        values = np.full(n % 97, n, np.float32)
        if n % 2:
            buffers = encode_frame({"frame_id": n}, rows=np.full((h, 300), n % 256, np.uint8),
                                   palette=palette, values=values)
        else:
            buffers = encode_frame({"frame_id": n}, rows=np.full((2, 300), n % 256, np.uint8),
                                   row_index=np.ones(h, np.uint32), palette=palette, values=values)
        LOCAL.write_atomic(frame_path(run), buffers)
    print(n)
    """
)


def test_a_reader_never_sees_a_torn_frame_while_a_writer_writes_flat_out(run_dir):
    LOCAL.write_atomic(frame_path(run_dir), encode_frame({"frame_id": 0}, rows=np.zeros((2, 2), np.uint8),
                                                          palette=PALETTE))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, run_dir, "3"], stdout=subprocess.PIPE, text=True)
    reads, seen = 0, set()
    try:
        while writer.poll() is None:
            frame = read_frame_file(frame_path(run_dir))  # raises FrameFormatError on a torn file
            n = frame.header["frame_id"]
            if n:
                assert frame.height == 50 + (n * 37) % 400
                assert (frame.pixels == n % 256).all() and (frame.values == n).all()
            seen.add(n)
            reads += 1
    finally:
        writer.wait(timeout=30)
    written = int(writer.stdout.read())
    assert written > 100 and reads > 100 and len(seen) > 20
    assert os.listdir(plugin_dir(run_dir)) == [FRAME_FILE]  # no temporary files left behind


def test_palette_indices_follow_the_documented_rule_whatever_the_order_of_the_values_block():
    from beholder_plugin.protocol.scaling import palette_indices

    a = np.array([0.0, 0.5, 1.0, np.nan, np.inf, -np.inf], np.float32)
    b = np.array([3.0, 3.0], np.float32)  # a flat section: all 0
    records = [dict(_section("a", 0, 2, (6,), (1, 6), (1, 6), 0), bounds=[0.0, 1.0]),
               dict(_section("b", 7, 2, (2,), (1, 2), (1, 2), 6), bounds=[3.0, 3.0])]
    expected = [0, int(np.float32(0.5) * np.float32(255.0)), 255, 0, 255, 0, 0, 0]
    assert palette_indices(np.concatenate([a, b]), records).tolist() == expected
    # the same sections stored the other way round in the values block
    swapped = [dict(records[0], values=2), dict(records[1], values=0)]
    got = palette_indices(np.concatenate([b, a]), swapped)
    assert got.tolist() == expected[6:] + expected[:6]


def test_headers_read_the_same_with_or_without_orjson(monkeypatch):
    """orjson is a speed-up: whatever it refuses (NaN literals, deep nesting, bad UTF-8), the json module
    decides, so every header text reads to the same objects, or fails the same way, either way."""
    pytest.importorskip("orjson")
    texts = [
        json.dumps({"sections": [{"name": "é", "bounds": [-1.5, 2.0000000000000004], "n": 2**40}]}).encode(),
        b'{"stats": {"mean": NaN, "max": Infinity}}',
        b"[" * 3000 + b"]" * 3000,
        b'{"name": "\xff"}',
        b'{"a": 1, "a": 2}',
    ]

    def read(text):
        try:
            return ("ok", frame_format.load_header_json(text))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            return ("error", type(exc))

    fast = [read(t) for t in texts]
    monkeypatch.setattr(frame_format, "orjson", None)
    slow = [read(t) for t in texts]
    assert [kind for kind, _ in fast] == ["ok", "ok", "error", "error", "ok"]
    assert repr(fast) == repr(slow)  # repr: NaN != NaN, but prints the same


def test_headers_write_the_same_objects_with_or_without_orjson(monkeypatch):
    """Headers are written with orjson where it takes them; what it refuses (NumPy floats, huge ints, lone
    surrogates) the json module writes. Either way they read back to the same objects."""
    pytest.importorskip("orjson")
    heads = [
        {"writer": "w", "frame_id": 1, "sections": [{"name": "é/✓", "bounds": [-1.5, 2.0000000000000004]}]},
        {"writer": "w", "frame_id": 2, "mean": np.float64(0.1), "step": 2**70},
        {"writer": "w", "frame_id": 3, "name": "\ud800"},
    ]
    fast = [frame_format.dump_header_json(h) for h in heads]
    monkeypatch.setattr(frame_format, "orjson", None)
    slow = [frame_format.dump_header_json(h) for h in heads]
    assert fast[0] != slow[0]  # orjson writes UTF-8, json escapes: both are JSON
    for a, b in zip(fast, slow):
        assert json.loads(a) == json.loads(b)
