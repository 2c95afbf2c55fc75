"""server/frame_encoding.py: PNG encoding, ETags and the headers that describe a frame."""

from __future__ import annotations

import io
import urllib.parse

import numpy as np
from PIL import Image

from beholder_plugin.protocol.colormaps import palette_for
from beholder_plugin.server.frame_encoding import (
    MAX_ERROR_CHARS,
    encode_palette_png,
    etag_for,
    frame_headers,
    frame_stamp,
)


def test_a_palette_png_decodes_to_the_palette_colours_of_its_indices():
    pixels = np.arange(6 * 4, dtype=np.uint8).reshape(4, 6) * 10
    palette = palette_for("viridis")
    image = Image.open(io.BytesIO(encode_palette_png(pixels, palette)))
    assert image.mode == "P" and image.size == (6, 4)
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), palette[pixels])


def test_the_etag_names_writer_and_frame_id_else_the_file_identity():
    assert etag_for({"writer": "ab12", "frame_id": 7}, (1, 2, 3)) == '"ab12-7"'
    odd = etag_for({"writer": "a b", "frame_id": 7}, (1, 2, 3))
    assert odd.startswith('"') and len(odd) == 18 and odd != etag_for({}, (1, 2, 4))
    assert frame_stamp({"writer": "w", "frame_id": 3}) == ("w", 3)


def test_frame_headers_carry_the_header_fields_and_only_well_formed_extras():
    head = {
        "frame_id": 5, "time": 1.5, "writer": "w1", "values": "gradients", "step": 9,
        "width": 30, "height": 20,
        "colormap": "magma", "mode": "current", "failures": 2, "skipped": True, "last_error": "é" * 600,
        "storage": "s3", "max_fps": 2, "offered": ["arrays", "nonsense", 3], "ending": True,
    }
    headers = dict(frame_headers('"w1-5"', head))
    assert headers["ETag"] == '"w1-5"' and headers["X-Beholder-Frame-Id"] == "5"
    assert headers["X-Beholder-Size"] == "30x20" and headers["X-Beholder-Step"] == "9"
    assert headers["X-Beholder-Colormap"] == "magma" and headers["X-Beholder-Failures"] == "2"
    assert "X-Beholder-Skipped" not in headers  # a bool is no count
    assert urllib.parse.unquote(headers["X-Beholder-Last-Error"]) == "é" * MAX_ERROR_CHARS
    assert headers["X-Beholder-Storage"] == "s3" and headers["X-Beholder-Max-Fps"] == "2"
    assert headers["X-Beholder-Offered"] == "arrays"
    assert headers["X-Beholder-Ending"] == "1"
    bad = dict(frame_headers('"x"', {"storage": "s3://x", "max_fps": True, "colormap": "a\nb", "ending": 1}))
    refused = {"X-Beholder-Storage", "X-Beholder-Max-Fps", "X-Beholder-Colormap", "X-Beholder-Ending"}
    assert not refused & set(bad)
