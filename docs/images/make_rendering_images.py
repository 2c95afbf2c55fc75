"""Draw the pictures of docs/rendering.md with Beholder itself.

Run: .venv/bin/python docs/images/make_rendering_images.py

Every picture is a frame written by a real Beholder and read back with
read_frame(); the only additions are labels in a margin on the left.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from beholder_plugin import DEFAULT_CONFIG, Beholder, read_frame, read_section_info, write_config

HERE = os.path.dirname(os.path.abspath(__file__))
MARGIN = 250


def render(arrays: dict[str, np.ndarray], **settings) -> tuple[np.ndarray, list[dict]]:
    """One frame of these arrays, as Beholder writes it, and its section table."""
    with tempfile.TemporaryDirectory() as run:
        config = {**DEFAULT_CONFIG, "values": "arrays", "mode": "current", "FPS": 30, **settings}
        write_config(run, config)
        with Beholder(run, strict=True) as beholder:
            beholder.update(arrays=arrays)
        return read_frame(run), read_section_info(run)


def labelled(rgb: np.ndarray, sections: list[dict], notes: dict[str, str]) -> Image.Image:
    """The frame with each section's name, shape and a note written in a margin beside it."""
    height, width = rgb.shape[:2]
    image = Image.new("RGB", (MARGIN + width, height), (255, 255, 255))
    image.paste(Image.fromarray(rgb), (MARGIN, 0))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=14)
    for rec in sections:
        text = f"{rec['name']}\nshape {tuple(rec['shape'])}\n{notes.get(rec['name'], '')}"
        draw.multiline_text((8, rec["top"] + 6), text, fill=(0, 0, 0), font=font, spacing=4)
    return image


def save(image: Image.Image, name: str) -> None:
    """Write a PNG next to this script and say how big it is."""
    path = os.path.join(HERE, name)
    image.save(path, optimize=True)
    print(f"{name}: {image.size[0]} x {image.size[1]}, {os.path.getsize(path) // 1024} KB")


def layouts() -> None:
    """One section of each layout, with values that make rows, columns and blocks visible."""
    kernel = np.zeros((3, 3, 4, 6), np.float32)
    for i in range(4):
        for j in range(6):
            kernel[:, :, i, j] = np.arange(9).reshape(3, 3) * (j + 1) / 6 + i * 0.5
    act = np.zeros((3, 8, 8, 4), np.float32)
    yy, xx = np.mgrid[:8, :8]
    shapes = [(xx + yy) % 8, (xx - 3.5) ** 2 + (yy - 3.5) ** 2, (xx // 2) % 2 ^ (yy // 2) % 2]
    for n in range(3):
        for c in range(4):
            act[n, :, :, c] = shapes[n] / shapes[n].max() + c * 0.25
    arrays = {
        "bias": np.arange(12, dtype=np.float32),
        "dense/kernel": (np.arange(6)[:, None] * 2 + 5 * (np.arange(8)[None, :] % 2)).astype(np.float32),
        "conv/kernel": kernel,
        "activations": act,
        "rank 3": np.sin(np.arange(6 * 50 * 40) / 300.0).reshape(6, 50, 40).astype(np.float32),
    }
    notes = {
        "bias": "one row: each value a block",
        "dense/kernel": "rows = inputs (axis 0)\ncolumns = outputs (axis 1)",
        "conv/kernel": "a 3x3 kernel per block\nblock rows = input channels\nblock columns = output ch.",
        "activations": "(n, h, w, c), h == w:\nfeature maps, a row per item,\na column per channel",
        "rank 3": "other ranks: the first\n32768 values, row-major,\nin a near-square grid",
    }
    rgb, sections = render(arrays, colormap="viridis")
    save(labelled(rgb, sections, notes), "rendering-layouts.png")


def show_all() -> None:
    """A kernel with many input channels: truncated by default, whole with "Show all data"."""
    kernel = np.random.default_rng(0).normal(size=(3, 3, 64, 16)).astype(np.float32)
    kernel += np.arange(64, dtype=np.float32)[None, None, :, None] / 16
    off, sec_off = render({"conv/kernel": kernel}, colormap="magma")
    on, sec_on = render({"conv/kernel": kernel}, colormap="magma", show_all=True)
    save(labelled(off, sec_off, {"conv/kernel": f"Show all data off:\n{sec_off[0]['source'][0] // 3} "
                                 "of 64 input\nchannels kept"}), "rendering-show-all-off.png")
    save(labelled(on, sec_on, {"conv/kernel": "Show all data on:\nall 64 input channels,\n"
                               f"{on.shape[0]} px tall, {on.shape[1]} px wide"}), "rendering-show-all-on.png")


def scaling() -> None:
    """Two arrays of very different ranges, scaled per section and over all sections."""
    ramp = np.linspace(0, 1, 64, dtype=np.float32)
    arrays = {"small range": ramp * 0.01, "large range": ramp * 10}
    per, sections = render(arrays, colormap="grayscale", scaling="layer")
    every, _ = render(arrays, colormap="grayscale", scaling="network")
    notes_per = {"small range": "per section:\neach uses all 256 levels", "large range": ""}
    notes_all = {"small range": "all sections: one range;\nthe small one is nearly black", "large range": ""}
    save(labelled(per, sections, notes_per), "rendering-scaling-per-section.png")
    save(labelled(every, sections, notes_all), "rendering-scaling-all-sections.png")


def non_finite() -> None:
    """NaN and -inf show as the low end, +inf as the high end; statistics skip them."""
    values = np.arange(10, dtype=np.float32)
    values[2], values[5], values[8] = np.nan, np.inf, -np.inf
    rgb, sections = render({"with NaN/inf": values}, colormap="viridis")
    save(labelled(rgb, sections, {"with NaN/inf": "values 0..9 with\n2 = NaN, 5 = +inf, 8 = -inf"}),
         "rendering-non-finite.png")


if __name__ == "__main__":
    layouts()
    show_all()
    scaling()
    non_finite()
