"""The on-disk protocol: frame encodings, refusals, config validation and atomic replacement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from beholder_plugin import ConfigError, read_config
from beholder_plugin.protocol.runfiles import (
    FRAME_FILE,
    Frame,
    FrameFormatError,
    atomic_write,
    decode_frame,
    encode_frame,
    plugin_dir,
    read_frame_file,
    read_section_info_document,
    remove_stale_temp_files,
    write_frame,
)
from beholder_plugin.protocol.settings import DEFAULT_CONFIG, parse_config_document, validate_changes

PALETTE = np.stack([np.arange(256, dtype=np.uint8)[::-1]] * 3, axis=1)


def _bytes(frame: Frame) -> bytes:
    return b"".join(bytes(chunk) for chunk in encode_frame(frame))


def test_raw_palette_frame_round_trips():
    pixels = np.arange(6 * 5, dtype=np.uint8).reshape(6, 5)
    back = decode_frame(_bytes(Frame(pixels, PALETTE, {"frame_id": 3})))
    np.testing.assert_array_equal(back.pixels, pixels)
    np.testing.assert_array_equal(back.rgb(), PALETTE[pixels])
    assert back.header["frame_id"] == 3 and back.header["encoding"] == "raw"


def test_row_encoded_frame_round_trips_and_is_smaller():
    rows = np.array([[0] * 8, [1] * 8, [2] * 8], dtype=np.uint8)
    index = np.array([1, 1, 1, 0, 2, 2, 2, 2, 1], dtype=np.uint32)
    frame = Frame(palette=PALETTE, rows=rows, row_index=index)
    data = _bytes(frame)
    back = decode_frame(data)
    np.testing.assert_array_equal(back.pixels, rows[index])
    assert (back.height, back.width) == (9, 8)
    assert back.header["encoding"] == "rows" and back.header["rows"] == 3
    np.testing.assert_array_equal(back.rgb(), PALETTE[rows[index]])


def test_rgb_frame_round_trips():
    rgb = np.random.default_rng(0).integers(0, 256, (4, 7, 3), dtype=np.uint8)
    back = decode_frame(_bytes(Frame(rgb)))
    assert back.palette is None and back.header["channels"] == 3
    np.testing.assert_array_equal(back.rgb(), rgb)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: b"NOTFRAME" + d[8:], "bad magic"),
        (lambda d: d[:-1], "pixel bytes"),
        (lambda d: d + b"\0", "pixel bytes"),
        (lambda d: d[:12], "header"),
        (lambda d: d[:8] + (2**31).to_bytes(4, "little") + d[12:], "header length"),
    ],
)
def test_torn_or_foreign_frame_files_are_refused(mutate, message):
    data = _bytes(Frame(np.zeros((3, 4), np.uint8), PALETTE))
    with pytest.raises(FrameFormatError, match=message):
        decode_frame(mutate(data))


def test_frame_versions_and_encodings_are_checked():
    data = _bytes(Frame(np.zeros((3, 4), np.uint8), PALETTE))
    head_len = int.from_bytes(data[8:12], "little")
    header = json.loads(data[12 : 12 + head_len])
    for change, message in (({"version": 2}, "version"), ({"encoding": "zstd"}, "encoding")):
        head = json.dumps({**header, **change}).encode()
        forged = data[:8] + len(head).to_bytes(4, "little") + head + data[12 + head_len :]
        with pytest.raises(FrameFormatError, match=message):
            decode_frame(forged)


def test_no_frame_yet_reads_as_none(run_dir):
    assert read_frame_file(run_dir) is None


def test_validate_changes_accepts_partial_updates_and_names_the_bad_key():
    assert validate_changes({"FPS": 0, "colormap": "plasma"}) == {"FPS": 0, "colormap": "plasma"}
    bad = [
        ({"FPS": 31}, "'FPS'"),
        ({"FPS": True}, "'FPS'"),
        ({"FPS": "10"}, "'FPS'"),
        ({"window_size": 1}, "'window_size'"),
        ({"is_recording": 1}, "'is_recording'"),
        ({"colormap": "jet"}, "'colormap'"),
        ({"values": None}, "'values'"),
        ({"zoom": 2}, "'zoom'"),
        ({"version": 9}, "'version'"),
    ]
    for changes, key in bad:
        with pytest.raises(ConfigError, match=key):
            validate_changes(changes)
    with pytest.raises(ConfigError, match="object"):
        validate_changes(["FPS", 3])


def test_config_documents_fill_defaults_and_ignore_unknown_keys():
    config, problems = parse_config_document({"mode": "current", "future": 1, "version": 2})
    assert config == {**DEFAULT_CONFIG, "mode": "current"}
    assert len(problems) == 2
    with pytest.raises(ConfigError, match="'mode'"):
        parse_config_document({"mode": "loud"})


def test_read_config_reports_a_corrupt_file(run_dir):
    assert read_config(run_dir) == DEFAULT_CONFIG
    os.makedirs(plugin_dir(run_dir))
    with open(os.path.join(plugin_dir(run_dir), "config.json"), "w") as f:
        f.write("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_config(run_dir)


WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from beholder_plugin.protocol.runfiles import Frame, write_frame
    run, seconds = sys.argv[1], float(sys.argv[2])
    palette = np.zeros((256, 3), np.uint8)
    palette[:, 0] = np.arange(256)
    end = time.time() + seconds
    n = 0
    while time.time() < end:
        n += 1
        h = 50 + (n * 37) % 400  # sizes change, so a torn file would not add up
        if n % 2:
            frame = Frame(np.full((h, 300), n % 256, np.uint8), palette, {"frame_id": n})
        else:
            frame = Frame(palette=palette, rows=np.full((2, 300), n % 256, np.uint8),
                          row_index=np.ones(h, np.uint32), header={"frame_id": n})
        write_frame(run, frame)
    print(n)
    """
)


def test_a_reader_never_sees_a_torn_frame_while_a_writer_writes_flat_out(run_dir):
    write_frame(run_dir, Frame(np.zeros((2, 2), np.uint8), PALETTE, {"frame_id": 0}))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, run_dir, "3"], stdout=subprocess.PIPE, text=True)
    reads, seen = 0, set()
    try:
        while writer.poll() is None:
            frame = read_frame_file(run_dir)  # raises FrameFormatError on a torn file
            n = frame.header["frame_id"]
            if n:
                assert frame.height == 50 + (n * 37) % 400
                assert (frame.pixels == n % 256).all()
            seen.add(n)
            reads += 1
    finally:
        writer.wait(timeout=30)
    written = int(writer.stdout.read())
    assert written > 100 and reads > 100 and len(seen) > 20
    leftovers = [n for n in os.listdir(plugin_dir(run_dir)) if n != FRAME_FILE]
    assert leftovers == []  # no temporary files left behind


def test_a_failed_write_leaves_the_previous_frame_readable(run_dir):
    write_frame(run_dir, Frame(np.full((2, 2), 7, np.uint8), PALETTE))
    path = os.path.join(plugin_dir(run_dir), FRAME_FILE)
    good = encode_frame(Frame(np.full((2, 2), 9, np.uint8), PALETTE))
    with pytest.raises(TypeError):  # fails after the header is written, like a full disk would
        atomic_write(path, [good[0], object()])
    assert (read_frame_file(run_dir).pixels == 7).all()
    assert os.listdir(plugin_dir(run_dir)) == [FRAME_FILE]


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (lambda p: os.mkdir(p), "cannot be read"),
        (lambda p: open(p, "w").write("[" * 5000 + "]" * 5000), "nested too deeply"),
        (lambda p: open(p, "wb").write(b"\xff\xfe"), "not valid JSON"),
    ],
)
def test_unreadable_json_files_raise_a_clear_value_error(run_dir, make_bad, message):
    os.makedirs(plugin_dir(run_dir))
    for name in ("config.json", "section-info.json"):
        make_bad(os.path.join(plugin_dir(run_dir), name))
    with pytest.raises(ConfigError, match=f"config.json .*{message}"):
        read_config(run_dir)
    with pytest.raises(ValueError, match=f"section-info.json .*{message}"):
        read_section_info_document(run_dir)


def test_stale_temp_files_of_killed_writers_are_removed(run_dir):
    os.makedirs(plugin_dir(run_dir))
    stale = os.path.join(plugin_dir(run_dir), ".frame.bin.999-1.tmp")
    fresh = os.path.join(plugin_dir(run_dir), ".frame.bin.998-1.tmp")
    keep = os.path.join(plugin_dir(run_dir), "notes.tmp")
    for path in (stale, fresh, keep):
        open(path, "wb").close()
    os.utime(stale, (0, 0))
    os.utime(keep, (0, 0))
    assert remove_stale_temp_files(run_dir) == 1
    assert not os.path.exists(stale) and os.path.exists(fresh) and os.path.exists(keep)
