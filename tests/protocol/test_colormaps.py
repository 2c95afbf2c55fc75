"""protocol/colormaps.py: the one list of colormap names and their palettes."""

from __future__ import annotations

import pathlib

import numpy as np

from beholder_plugin.protocol import colormaps, settings

STATIC = pathlib.Path(__file__).resolve().parents[2] / "beholder_plugin" / "server" / "static"


def test_the_settings_accept_exactly_the_colormaps_that_have_a_palette():
    assert settings.COLORMAPS is colormaps.COLORMAPS
    assert list(colormaps.COLORMAPS) == list(colormaps.PALETTES)
    assert settings.DEFAULT_CONFIG["colormap"] in colormaps.COLORMAPS
    assert colormaps.COLORMAPS == ("magma", "inferno", "plasma", "viridis", "grayscale")


def test_each_palette_is_256_read_only_rgb_colours():
    for name in colormaps.COLORMAPS:
        palette = colormaps.palette_for(name)
        assert palette.shape == (256, 3) and palette.dtype == np.uint8 and not palette.flags.writeable
    gray = colormaps.palette_for("grayscale")
    assert (gray[:, 0] == np.arange(256)).all()
    assert tuple(colormaps.palette_for("viridis")[0]) == (0x44, 0x01, 0x54)


def test_palettes_hex_gives_every_colormap_in_order_as_1536_hex_digits():
    found = colormaps.palettes_hex()
    assert list(found) == list(colormaps.COLORMAPS)
    for name, text in found.items():
        assert len(text) == 1536
        assert bytes.fromhex(text) == colormaps.palette_for(name).tobytes()


def test_the_dashboard_spells_out_no_colormap_name():
    """The toolbar's choices come from the colormaps route, not from a list of its own."""
    for path in STATIC.glob("*.js"):
        text = path.read_text()
        for name in ("inferno", "plasma", "viridis"):
            assert f'"{name}"' not in text, (path.name, name)
