"""Draw the pictures of docs/rendering.md with Beholder itself.

Run from the repository root:

    .venv/bin/python docs/images/make_rendering_images.py

Every pixel inside a frame is Beholder's own: the script writes a config.json,
calls Beholder.update() and reads the frame back with read_frame(). All the
script adds lies outside the frames, on white: titles, labels, tick marks, and
the numbers of the info panel (read back with read_section_info()).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from beholder_plugin import DEFAULT_CONFIG, Beholder, read_frame, read_section_info, write_config

HERE = Path(__file__).resolve().parent
INK = (20, 20, 20)
MUTED = (110, 110, 110)
ACCENT = (200, 30, 30)
PAPER = (255, 255, 255)
MAX_BYTES = 150_000


# ---------------------------------------------------------------- Beholder's frames


def frame_of(run_dir: str) -> np.ndarray:
    """The run's latest frame as RGB, which must exist by now."""
    rgb = read_frame(run_dir)
    if rgb is None:
        raise RuntimeError(f"no frame was written in {run_dir}")
    return rgb


def render(
    arrays: dict[str, np.ndarray], colormap: str = "viridis", layout: object = None, **settings
) -> tuple[np.ndarray, list]:
    """One frame of these arrays as Beholder draws it (RGB) and its section records."""
    with tempfile.TemporaryDirectory() as run_dir:
        config = {**DEFAULT_CONFIG, "values": "arrays", "mode": "current", "FPS": 30, "colormap": colormap}
        write_config(run_dir, {**config, **settings})
        beholder = Beholder(run_dir, strict=True)
        if not beholder.update(arrays=arrays, layout=layout):
            raise RuntimeError("Beholder did not take the first update")
        beholder.close()  # the frame is written on a background thread: let it finish
        return frame_of(run_dir), read_section_info(run_dir)


def render_series(series: list[dict[str, np.ndarray]], colormap: str, **settings) -> tuple[np.ndarray, list]:
    """The frame after one rendered update per entry of series (for the variance window)."""
    with tempfile.TemporaryDirectory() as run_dir:
        config = {**DEFAULT_CONFIG, "values": "arrays", "mode": "current", "FPS": 30, "colormap": colormap}
        write_config(run_dir, {**config, **settings})
        beholder = Beholder(run_dir, strict=True)
        for arrays in series:
            while not beholder.update(arrays=arrays):  # not due yet (30 per second at most)
                time.sleep(0.005)
            beholder.flush()
        beholder.close()
        return frame_of(run_dir), read_section_info(run_dir)


def render_user_frame(frame: np.ndarray) -> np.ndarray:
    """A user frame (update(frame=...)) as Beholder shows it."""
    with tempfile.TemporaryDirectory() as run_dir:
        write_config(run_dir, {**DEFAULT_CONFIG, "values": "frames", "FPS": 30})
        beholder = Beholder(run_dir, strict=True)
        if not beholder.update(frame=frame):
            raise RuntimeError("Beholder did not take the first update")
        beholder.close()
        return frame_of(run_dir)


def source_index(src: int, dst: int) -> np.ndarray:
    """The source row or column shown at each of dst pixels: the float32 rule the page describes."""
    scale = np.float32(src) / np.float32(dst)
    return np.minimum(np.floor(np.arange(dst, dtype=np.float32) * scale).astype(int), src - 1)


def spans(src: int, dst: int) -> list[tuple[int, int]]:
    """For each source index, the first and last pixel showing it."""
    index = source_index(src, dst)
    return [(int(np.argmax(index == i)), int(dst - 1 - np.argmax(index[::-1] == i))) for i in range(src)]


def sci(value: float | None) -> str:
    """A statistic as the info panel writes it, like 1.234e-02 (n/a when unknown)."""
    return "n/a" if value is None else f"{value:.3e}"


# ---------------------------------------------------------------- drawing around the frames


def font(size: int = 14) -> ImageFont.FreeTypeFont:
    """Pillow's built-in font at this size."""
    return ImageFont.load_default(size=size)


class Sheet:
    """A white page on which Beholder's frames are pasted and labelled."""

    def __init__(self, width: int, height: int) -> None:
        """A blank page of this size."""
        self.image = Image.new("RGB", (width, height), PAPER)
        self.draw = ImageDraw.Draw(self.image)

    def paste(self, rgb: np.ndarray, x: int, y: int) -> None:
        """Put a frame (or a crop of one) on the page, pixels unchanged."""
        self.image.paste(Image.fromarray(rgb), (x, y))

    def text(
        self, x: float, y: float, text: str, size: int = 14, fill: tuple = INK, anchor: str = "la"
    ) -> None:
        """Write text; anchor as in Pillow ("la" left-top, "mm" centre, "rm" right-middle ...)."""
        if "\n" in text:
            self.draw.multiline_text(
                (x, y),
                text,
                fill=fill,
                font=font(size),
                spacing=4,
                anchor=anchor if anchor[1] in "ad" else "la",
            )
        else:
            self.draw.text((x, y), text, fill=fill, font=font(size), anchor=anchor)

    def line(self, points: list[tuple[float, float]], fill: tuple = INK, width: int = 1) -> None:
        """Draw a polyline."""
        self.draw.line(points, fill=fill, width=width)

    def save(self, name: str) -> None:
        """Write the page as docs/images/<name>, as small as PNG allows, and report its size."""
        path = HERE / name
        self.image.save(path, optimize=True, compress_level=9)
        size = path.stat().st_size
        print(f"{name}: {self.image.width} x {self.image.height} px, {size / 1000:.1f} kB")
        assert size < MAX_BYTES, f"{name} is too big ({size} bytes)"


def column_labels(
    sheet: Sheet, x0: int, y: int, src: int, dst: int, labels: list[str], size: int = 13
) -> None:
    """Write labels[i] centred over the pixels that show source column i."""
    for (first, last), label in zip(spans(src, dst), labels):
        sheet.text(x0 + (first + last + 1) / 2, y, label, size=size, anchor="ms")


def row_labels(sheet: Sheet, x: int, y0: int, src: int, dst: int, labels: list[str], size: int = 13) -> None:
    """Write labels[i] right-aligned, level with the pixels that show source row i."""
    for (first, last), label in zip(spans(src, dst), labels):
        sheet.text(x, y0 + (first + last + 1) / 2, label, size=size, anchor="rm")


def ticks(sheet: Sheet, x0: int, y0: int, src: int, dst: int, every: int, vertical: bool = False) -> None:
    """Tick marks along the top (or left) edge where the source index changes; long ones every `every`."""
    for i, (first, _) in enumerate(spans(src, dst)):
        length = 9 if i % every == 0 else 4
        if vertical:
            sheet.line([(x0 - length, y0 + first), (x0 - 1, y0 + first)], fill=MUTED)
        else:
            sheet.line([(x0 + first, y0 - length), (x0 + first, y0 - 1)], fill=MUTED)


def table(
    sheet: Sheet, x0: int, y0: int, values: np.ndarray, cell: tuple[int, int], fmt: str = "{:g}"
) -> None:
    """The values of a 2-D array written as a grid of numbers, with index labels."""
    cw, ch = cell
    rows, cols = values.shape
    for j in range(cols):
        sheet.text(x0 + cw * (j + 0.5), y0 - 4, str(j), size=12, fill=MUTED, anchor="ms")
    for i in range(rows):
        sheet.text(x0 - 6, y0 + ch * (i + 0.5), str(i), size=12, fill=MUTED, anchor="rm")
        for j in range(cols):
            sheet.text(
                x0 + cw * (j + 0.5), y0 + ch * (i + 0.5), fmt.format(values[i, j]), size=13, anchor="mm"
            )
    sheet.draw.rectangle([x0, y0, x0 + cw * cols, y0 + ch * rows], outline=MUTED)


def mark_separators(sheet: Sheet, x: int, y0: int, sections: list) -> None:
    """Point at the 5 px separators from the right of a frame whose right edge is at x."""
    for rec in sections[1:]:
        y = y0 + rec["top"] - 5
        sheet.draw.rectangle([x + 3, y, x + 30, y + 4], fill=ACCENT)
        sheet.text(x + 36, y + 2, "5 px separator", size=12, fill=ACCENT, anchor="lm")


def info_panel(sheet: Sheet, x: int, y: int, rec: dict, size: int = 13) -> None:
    """The info panel's entry for one section, as the dashboard writes it beside the frame."""
    lines = [
        rec["name"],
        f"shape [{', '.join(str(s) for s in rec['shape'])}]",
        f"range {sci(rec['range'])}",
        f"mean {sci(rec['mean'])}",
        f"min {sci(rec['min'])} max {sci(rec['max'])}",
    ]
    sheet.text(x, y, "\n".join(lines), size=size)


# ---------------------------------------------------------------- the pictures


def frame_picture() -> None:
    """A frame of four sections: the stacking order, the 128 px sections and the 5 px separators."""
    rng = np.random.default_rng(1)
    arrays = {
        "conv1/kernel": rng.normal(0, 0.3, (3, 3, 1, 8)).astype(np.float32),
        "conv1/bias": rng.normal(0, 0.1, 8).astype(np.float32),
        "dense/kernel": rng.normal(0, 0.1, (72, 10)).astype(np.float32),
        "dense/bias": rng.normal(0, 0.05, 10).astype(np.float32),
    }
    rgb, sections = render(arrays, colormap="magma")
    left, top = 150, 46
    sheet = Sheet(left + rgb.shape[1] + 250, top + rgb.shape[0] + 12)
    sheet.text(
        left,
        8,
        'update(arrays={"conv1/kernel": ..., "conv1/bias": ..., "dense/kernel": ..., "dense/bias": ...})',
        size=14,
    )
    sheet.text(
        left,
        24,
        f"one frame, {rgb.shape[1]} px wide and {rgb.shape[0]} px tall: a section per array, "
        "top to bottom in the dict's order",
        size=13,
        fill=MUTED,
    )
    sheet.text(left + rgb.shape[1] + 12, 24, "the info panel beside it:", size=13, fill=MUTED)
    sheet.paste(rgb, left, top)
    for i, rec in enumerate(sections):
        y = top + rec["top"]
        sheet.text(
            left - 12,
            y + 14,
            f"section {i}\n128 px\ny = {rec['top']} to\n{rec['top'] + rec['height'] - 1}",
            size=13,
            anchor="ra",
        )
        sheet.line([(left - 8, y), (left - 8, y + rec["height"] - 1)], fill=MUTED)
        info_panel(sheet, left + rgb.shape[1] + 12, y + 2, rec)
        if i:
            gap = y - 5
            sheet.draw.rectangle([left - 40, gap, left - 3, gap + 4], fill=ACCENT)
            sheet.text(left - 44, gap + 2, "5 px separator", size=12, fill=ACCENT, anchor="rm")
    sheet.save("rendering-frame.png")


def vector_picture() -> None:
    """A vector: one row, one block per value, first value on the left."""
    values = np.arange(20, dtype=np.float32)
    rgb, sections = render({"bias": values})
    left, top = 170, 40
    sheet = Sheet(left + rgb.shape[1] + 20, top + rgb.shape[0] + 40)
    sheet.text(left, 12, 'update(arrays={"bias": np.arange(20)})   shape (20,)', size=14)
    sheet.paste(rgb, left, top)
    column_labels(sheet, left, top + rgb.shape[0] + 20, 20, rgb.shape[1], [str(v) for v in range(20)])
    sheet.text(left - 12, top + rgb.shape[0] + 15, "value", size=13, fill=MUTED, anchor="rm")
    sheet.text(
        left - 12,
        top + 30,
        "a vector is\none row:\neach value is a\nblock 38 or 39 px\nwide, 128 px tall",
        size=13,
        anchor="ra",
    )
    sheet.save("rendering-vector.png")


def matrix_picture() -> None:
    """A matrix: row i of the section is w[i, :]."""
    values = np.arange(24, dtype=np.float32).reshape(4, 6)
    rgb, _ = render({"dense/kernel": values})
    left, top = 330, 64
    sheet = Sheet(left + rgb.shape[1] + 20, top + rgb.shape[0] + 30)
    sheet.text(20, 10, "w = np.arange(24).reshape(4, 6)", size=14)
    sheet.text(40, 32, "column index j (axis 1)", size=12, fill=MUTED)
    table(sheet, 40, top, values, (34, 32))
    sheet.text(20, top + 4 * 32 + 8, "row index i (axis 0)", size=12, fill=MUTED)
    sheet.paste(rgb, left, top)
    sheet.text(
        left,
        10,
        "Beholder's section: rows = axis 0 (Keras Dense: inputs), columns = axis 1 (outputs)",
        size=14,
    )
    column_labels(sheet, left, top - 6, 6, rgb.shape[1], [f"column j = {j}" for j in range(6)])
    row_labels(sheet, left - 8, top, 4, rgb.shape[0], [f"row i = {i}" for i in range(4)])
    sheet.text(
        left,
        top + rgb.shape[0] + 8,
        "w[i, j] = 6 i + j: the darkest block is w[0, 0], the brightest w[3, 5]",
        size=13,
        fill=MUTED,
    )
    sheet.save("rendering-matrix.png")


def kernel_picture() -> None:
    """A (3, 3, 4, 6) convolution kernel: block row = input channel, block column = output channel."""
    kh, kw, cin, cout = 3, 3, 4, 6
    block = 10 * np.arange(cin)[:, None] + np.arange(cout)[None, :]
    kernel = np.broadcast_to(block[None, None], (kh, kw, cin, cout)).astype(np.float32)
    rgb, sections = render({"conv/kernel": kernel})
    height, width = rgb.shape[:2]
    src_h, src_w = sections[0]["source"]
    left, top = 330, 112
    sheet = Sheet(left + width + 20, top + height + 52)
    sheet.text(20, 10, "w.shape = (3, 3, 4, 6)  (kh, kw, in, out)", size=14)
    sheet.text(
        20, 32, "each 3 x 3 kernel w[:, :, in, out] is\nfilled with one number, 10 * in + out:", size=13
    )
    sheet.text(40, top - 36, "out (axis 3)", size=12, fill=MUTED)
    table(sheet, 40, top, block.astype(np.float32), (34, 32))
    sheet.text(20, top + cin * 32 + 8, "in (axis 2)", size=12, fill=MUTED)
    sheet.paste(rgb, left, top)
    sheet.text(
        left,
        10,
        f"Beholder's section: a {src_h} x {src_w} grid of kernel pixels, stretched to {height} x {width} px",
        size=14,
    )
    sheet.text(left, 32, "block row = input channel, block column = output channel", size=13, fill=MUTED)
    ticks(sheet, left, top, src_w, width, every=kw)
    ticks(sheet, left, top, src_h, height, every=kh, vertical=True)
    column_labels(sheet, left, top - 14, cout, width, [f"out {j}" for j in range(cout)])
    row_labels(sheet, left - 14, top, cin, height, [f"in {i}" for i in range(cin)])
    sheet.text(
        left,
        top + height + 10,
        "long ticks: block edges (one block = one 3 x 3 kernel); short ticks: "
        "the kernel's own rows and columns.\nEach block is one flat colour here only because each kernel "
        "holds a single number.",
        size=13,
        fill=MUTED,
    )
    sheet.save("rendering-kernel.png")


def shapes8() -> dict[str, np.ndarray]:
    """Five recognisable 8 x 8 pictures (1 inside the shape, 0 outside)."""
    y, x = np.mgrid[:8, :8] + 0.5
    r = np.hypot(x - 4, y - 4)
    edge = np.maximum(abs(x - 4), abs(y - 4))
    return {
        "ring": ((r > 1.6) & (r < 3.4)).astype(np.float32),
        "corner": ((x < 4) & (y < 4)).astype(np.float32),
        "plus": ((abs(x - 4) < 1.1) | (abs(y - 4) < 1.1)).astype(np.float32),
        "frame": ((edge > 2) & (edge < 3.6)).astype(np.float32),
        "dot": (r < 1.6).astype(np.float32),
    }


def activation_batch(n: int, channels: int) -> np.ndarray:
    """An (n, 8, 8, channels) batch: item i is the i-th shape, drawn brighter in each later channel."""
    pictures = list(shapes8().values())[:n]
    gain = 0.35 + 0.65 * np.arange(channels) / max(1, channels - 1)
    return np.stack([p[:, :, None] * gain[None, None, :] for p in pictures]).astype(np.float32)


def activation_picture() -> None:
    """Two activation batches (n, h, w, c): a row of feature maps per item, a column per channel."""
    names = list(shapes8())
    arrays = {"a": activation_batch(3, 12), "b": activation_batch(5, 3)}
    rgb, sections = render(arrays)
    width = rgb.shape[1]
    left, top = 250, 66
    sheet = Sheet(left + width + 130, top + rgb.shape[0] + 50)
    sheet.text(left, 8, "rank 4, (n, h, w, c) with h == w and n != h: a grid of h x w feature maps,", size=14)
    sheet.text(
        left,
        26,
        "block row = batch item, block column = channel (channel c draws the shape brighter as c grows)",
        size=13,
        fill=MUTED,
    )
    for i, (rec, array) in enumerate(zip(sections, arrays.values())):
        n, _, _, c = array.shape
        y = top + rec["top"]
        sheet.text(12, y + rec["height"] / 2, f"shape\n({n}, 8, 8, {c})", size=14, anchor="lm")
        row_labels(sheet, left - 6, y, n, rec["height"], [f"item {k}: {names[k]}" for k in range(n)], size=12)
        label_y = y - 6 if i == 0 else y + rec["height"] + 16
        column_labels(sheet, left, label_y, c, width, [f"ch {j}" for j in range(c)], size=12)
    sheet.paste(rgb, left, top)
    mark_separators(sheet, left + width, top, sections)
    sheet.text(
        left,
        top + rgb.shape[0] + 30,
        "each section is stretched to 128 x 768 px, so the (5, 8, 8, 3) "
        "maps come out 26 px tall and 256 px wide",
        size=13,
        fill=MUTED,
    )
    sheet.save("rendering-activation.png")


def grid_picture() -> None:
    """A rank-3 array: flattened and wrapped into a near-square grid, the last incomplete row dropped."""
    values = np.arange(340, dtype=np.float32).reshape(4, 5, 17)
    rgb, sections = render({"rank 3": values})
    rows, cols = sections[0]["source"]
    left, top = 180, 46
    sheet = Sheet(left + rgb.shape[1] + 20, top + rgb.shape[0] + 50)
    side = math.floor(math.sqrt(128 * 768 / values.size))
    sheet.text(
        left,
        10,
        f"np.arange(340).reshape(4, 5, 17), flattened: cells of {side} px, so "
        f"128 // {side} = {rows} rows of 340 // {rows} = {cols} values",
        size=14,
    )
    sheet.paste(rgb, left, top)
    ticks(sheet, left, top, cols, rgb.shape[1], every=6)
    row_labels(
        sheet,
        left - 8,
        top,
        rows,
        rgb.shape[0],
        [f"values {r * cols} to {r * cols + cols - 1}" for r in range(rows)],
    )
    column_labels(
        sheet,
        left,
        top + rgb.shape[0] + 16,
        cols,
        rgb.shape[1],
        [str(j) if j % 6 == 0 else "" for j in range(cols)],
        size=12,
    )
    sheet.text(left - 8, top + rgb.shape[0] + 11, "column", size=12, fill=MUTED, anchor="rm")
    sheet.text(
        left,
        top + rgb.shape[0] + 28,
        f"values {rows * cols} to 339 cannot fill an 8th row: they are "
        "dropped, never padded. The axes (4, 5, 17) play no part.",
        size=13,
        fill=MUTED,
    )
    sheet.save("rendering-grid.png")


def disc_kernel() -> np.ndarray:
    """A (3, 3, 96, 320) kernel whose blocks draw a disc over the (in, out) grid, with a slope in each."""
    kh, kw, cin, cout = 3, 3, 96, 320
    i, o = np.mgrid[:cin, :cout]
    disc = (np.hypot(i - 48, o - 160) < 44).astype(np.float32)
    inner = (np.arange(kh)[:, None] * kw + np.arange(kw)[None, :]) / (kh * kw - 1)
    return (disc[None, None] + 0.35 * inner[:, :, None, None]).astype(np.float32)


def show_all_pictures() -> None:
    """The same big kernel with "Show all data" off (truncated, shrunk) and on (taller and wider)."""
    kernel = disc_kernel()
    kh, kw, cin, cout = kernel.shape
    per_row = kh * kw * cin
    kept = min(cin, 32767 // per_row + 2)
    off, sec_off = render({"conv/kernel": kernel}, colormap="magma")
    on, sec_on = render({"conv/kernel": kernel}, colormap="magma", show_all=True)
    assert sec_off[0]["source"] == [kept * kh, cout * kw], sec_off[0]["source"]

    left, top, right = 190, 40, 190
    sheet = Sheet(left + off.shape[1] + 30, top + off.shape[0] + 40)
    sheet.text(
        left,
        10,
        f"Show all data off: kernel (3, 3, 96, 320) keeps {kept} of {cin} input channels "
        f"({kept * kh} x {cout * kw} kernel pixels), stretched to {off.shape[0]} x {off.shape[1]}",
        size=14,
    )
    sheet.paste(off, left, top)
    sheet.text(
        left - 10,
        top + 4,
        f"in 0 to in {kept - 1}\n\nK = 3 * 3 * {cin} = {per_row}\n32767 // {per_row} + 2 = {kept}",
        size=13,
        anchor="ra",
    )
    sheet.text(
        left,
        top + off.shape[0] + 10,
        f"the frame stays 768 px wide: {cout * kw} kernel columns share "
        "it, so one column in five is not drawn",
        size=13,
        fill=MUTED,
    )
    sheet.save("rendering-show-all-off.png")

    sheet = Sheet(left + on.shape[1] + right, top + on.shape[0] + 40)
    sheet.text(
        left,
        10,
        f"Show all data on: all {cin} input channels, one pixel per kernel value; the frame is "
        f"{on.shape[1]} px wide (3 x {cout}), the section {sec_on[0]['height']} px tall (3 x {cin})",
        size=14,
    )
    sheet.paste(on, left, top)
    cut = top + kept * kh
    x = left + on.shape[1] + 6
    sheet.line([(x, top), (x + 6, top), (x + 6, cut), (x, cut)], fill=ACCENT, width=2)
    sheet.text(
        x + 14,
        top + 2,
        f"with Show all data off,\nonly these rows:\nin 0 to in {kept - 1}",
        size=13,
        fill=ACCENT,
    )
    row_labels(sheet, left - 8, top, cin, on.shape[0], [f"in {i}" if i % 16 == 0 else "" for i in range(cin)])
    sheet.text(left - 8, top + on.shape[0] - 6, f"in {cin - 1}", size=13, anchor="rm")
    sheet.text(
        left,
        top + on.shape[0] + 10,
        "inside each 3 x 3 block the values rise from the top-left "
        "to the bottom-right kernel pixel (the fine stripes)",
        size=13,
        fill=MUTED,
    )
    sheet.save("rendering-show-all-on.png")


def resize_picture() -> None:
    """The float32 nearest-neighbour rule at work: 112 columns to 768 px, zoomed around x = 432."""
    values = (np.arange(112) % 2).astype(np.float32)
    rgb, _ = render({"stripes": values}, colormap="grayscale")
    index = source_index(112, 768)
    assert index[432] == 62 and (rgb[0, :, 0] == np.where(index % 2, 255, 0)).all()
    column_spans = spans(112, 768)
    x0, x1, zoom, band = column_spans[59][0], column_spans[66][1] + 1, 14, 6
    crop = rgb[:band, x0:x1]
    zoomed = np.repeat(np.repeat(crop, zoom, axis=0), zoom, axis=1)
    left, top = 60, 70
    sheet = Sheet(left + zoomed.shape[1] + 40, top + zoomed.shape[0] + 96)
    sheet.text(
        left,
        10,
        f"np.arange(112) % 2, stretched to 768 px (grayscale): pixels x = {x0} to {x1 - 1} "
        f"of the top {band} rows, each drawn {zoom} times larger",
        size=14,
    )
    sheet.paste(zoomed, left, top)
    sheet.draw.rectangle([left - 1, top - 1, left + zoomed.shape[1], top + zoomed.shape[0]], outline=MUTED)
    for x in range(x0, x1):
        px = left + (x - x0) * zoom
        if x % 4 == 0 or x == 432:
            sheet.line(
                [(px + zoom / 2, top - 8), (px + zoom / 2, top - 2)], fill=ACCENT if x == 432 else MUTED
            )
            sheet.text(
                px + zoom / 2, top - 12, f"x={x}", size=11, fill=ACCENT if x == 432 else MUTED, anchor="ms"
            )
    for col in range(int(index[x0]), int(index[x1 - 1]) + 1):
        xs = np.flatnonzero(index[x0:x1] == col)
        if len(xs) == 0:
            continue
        mid = left + (xs[0] + xs[-1] + 1) / 2 * zoom
        sheet.text(mid, top + zoomed.shape[0] + 16, f"{col}", size=13, anchor="ms")
        sheet.text(mid, top + zoomed.shape[0] + 32, f"{len(xs)} px", size=11, fill=MUTED, anchor="ms")
    sheet.text(left - 6, top + zoomed.shape[0] + 16, "column", size=11, fill=MUTED, anchor="rs")
    sheet.text(
        left,
        top + zoomed.shape[0] + 56,
        "x = 432: 432 * 112 / 768 is exactly 63, but in float32 "
        "432 * (112 / 768) comes out just below 63, so the pixel shows column 62,\nwhich is 7 px wide "
        "instead of 6. Beholder keeps this, because the original did.",
        size=13,
    )
    sheet.save("rendering-resize.png")


def variance_picture() -> None:
    """Current values and their variance over the window: only what changes lights up."""
    rng = np.random.default_rng(3)
    rows, cols = 16, 48
    base = np.add.outer(np.linspace(0, 1, rows), np.linspace(0, 1, cols)).astype(np.float32)
    noise = np.zeros((rows, cols), np.float32)
    noise[:, : cols // 2] = np.linspace(0.05, 0.5, rows)[:, None]
    series = [{"w": base + noise * rng.normal(size=(rows, cols)).astype(np.float32)} for _ in range(15)]
    current, _ = render_series(series[-1:], colormap="magma")
    variance, _ = render_series(series, colormap="magma", mode="variance", window_size=15)
    left, top, gap = 200, 40, 44
    sheet = Sheet(left + current.shape[1] + 20, top + 2 * current.shape[0] + gap + 40)
    sheet.text(
        left,
        10,
        "a (16, 48) array whose left half gets fresh noise at every update "
        "(more in the lower rows); the right half never changes",
        size=14,
    )
    sheet.paste(current, left, top)
    sheet.text(left - 10, top + 4, "mode: current\n(the latest update)", size=13, anchor="ra")
    y2 = top + current.shape[0] + gap
    sheet.text(
        left,
        y2 - 22,
        "the same 15 updates with mode variance (window 15), after the 15th frame:",
        size=13,
        fill=MUTED,
    )
    sheet.paste(variance, left, y2)
    sheet.text(
        left - 10,
        y2 + 4,
        "mode: variance\n(each value's variance\nover the last 15\nrendered frames)",
        size=13,
        anchor="ra",
    )
    sheet.text(
        left,
        y2 + variance.shape[0] + 12,
        "the right half is black: its values did not change over the window",
        size=13,
        fill=MUTED,
    )
    sheet.save("rendering-variance.png")


def statistics_picture() -> None:
    """The info panel describes the shown sample: a spike at an element the stretch skips is not seen."""
    values = np.linspace(-1, 1, 1000).astype(np.float32)
    values[4] = 50.0
    rgb, sections = render({"1000 values": values})
    rec = sections[0]
    assert rec["max"] < 50 and 4 not in source_index(1000, 768)
    left, top = 20, 40
    sheet = Sheet(left + rgb.shape[1] + 300, top + rgb.shape[0] + 40)
    sheet.text(
        left,
        10,
        "v = np.linspace(-1, 1, 1000); v[4] = 50   (768 px show 768 of the 1000 elements; "
        "element 4 is one of those skipped)",
        size=14,
    )
    sheet.paste(rgb, left, top)
    x = left + rgb.shape[1] + 14
    sheet.text(x, top, "info panel (the shown sample):", size=13, fill=MUTED)
    info_panel(sheet, x, top + 20, rec)
    whole = (
        f"whole array (NumPy):\nmin {values.min():.3e} max {values.max():.3e}\n"
        f"mean {values.astype(np.float64).mean():.3e}"
    )
    sheet.text(x, top + 118, whole, size=13, fill=ACCENT)
    sheet.text(
        left,
        top + rgb.shape[0] + 12,
        "the spike is in neither the picture nor the statistics",
        size=13,
        fill=MUTED,
    )
    sheet.save("rendering-statistics.png")


def scaling_pictures() -> None:
    """Two ramps of very different ranges, scaled per section and over all sections."""
    arrays = {
        "small (0 to 1)": np.linspace(0, 1, 16, dtype=np.float32),
        "large (0 to 10)": np.linspace(0, 10, 16, dtype=np.float32),
    }
    for scaling, name, title in [
        (
            "layer",
            "rendering-scaling-per-section.png",
            "Image scaling: per section (each section from its own min to its own max)",
        ),
        (
            "network",
            "rendering-scaling-all-sections.png",
            "Image scaling: all sections (one min and one max for the whole frame)",
        ),
    ]:
        rgb, sections = render(arrays, colormap="viridis", scaling=scaling)
        left, top = 20, 40
        sheet = Sheet(left + rgb.shape[1] + 240, top + rgb.shape[0] + 14)
        sheet.text(left, 10, title, size=14)
        sheet.paste(rgb, left, top)
        for rec in sections:
            lo, hi = rec["bounds"]
            sheet.text(
                left + rgb.shape[1] + 12,
                top + rec["top"] + 4,
                f"{rec['name']}\nnp.linspace(0, {rec['max']:g}, 16)\n\ncolours span\n"
                f"{lo:g} (darkest) to {hi:g} (brightest)",
                size=13,
            )
        sheet.save(name)


def colormap_picture() -> None:
    """The five colormaps on one ramp, lowest value on the left."""
    ramp = np.linspace(0, 1, 256, dtype=np.float32)
    names = ["magma", "inferno", "plasma", "viridis", "grayscale"]
    strip, left, top = 26, 130, 34
    sheet = Sheet(left + 768 + 20, top + len(names) * (strip + 8) + 4)
    sheet.text(
        left, 8, "np.linspace(0, 1, 256) in each colormap (a 26 px slice of the 128 px section)", size=14
    )
    for k, name in enumerate(names):
        rgb, _ = render({"ramp": ramp}, colormap=name)
        y = top + k * (strip + 8)
        sheet.paste(rgb[:strip], left, y)
        sheet.text(
            left - 10, y + strip / 2, name + (" (default)" if name == "magma" else ""), size=13, anchor="rm"
        )
    sheet.save("rendering-colormaps.png")


def non_finite_picture() -> None:
    """NaN and -inf at the low end, +inf at the high end; min and max skip them, the mean is n/a."""
    values = np.arange(10, dtype=np.float32)
    values[2], values[5], values[8] = np.nan, np.inf, -np.inf
    rgb, sections = render({"with NaN and inf": values})
    left, top = 20, 40
    sheet = Sheet(left + rgb.shape[1] + 250, top + rgb.shape[0] + 52)
    sheet.text(left, 10, "np.arange(10) with v[2] = NaN, v[5] = +inf, v[8] = -inf", size=14)
    sheet.paste(rgb, left, top)
    labels = [{"nan": "NaN", "inf": "+inf"}.get(f"{v:g}", f"{v:g}") for v in values]
    column_labels(sheet, left, top + rgb.shape[0] + 20, 10, rgb.shape[1], labels, size=14)
    info_panel(sheet, left + rgb.shape[1] + 12, top + 4, sections[0])
    sheet.text(
        left + rgb.shape[1] + 12,
        top + 96,
        "min, max and range skip\nNaN and inf; the mean is n/a",
        size=13,
        fill=MUTED,
    )
    sheet.text(
        left,
        top + rgb.shape[0] + 30,
        "NaN and -inf take the colour of the minimum (0), +inf that of the maximum (9)",
        size=13,
        fill=MUTED,
    )
    sheet.save("rendering-non-finite.png")


def user_frame_picture() -> None:
    """update(frame=...): a 2-D array scaled to gray, and an RGB uint8 image shown as it is."""
    h, w = 150, 240
    y, x = np.mgrid[-1:1:150j, -1.6:1.6:240j]
    gray_input = (np.sin(6 * np.hypot(x, y)) * 3 + 2).astype(np.float32)
    rgb_input = np.zeros((h, w, 3), np.uint8)
    rgb_input[..., 0] = np.linspace(0, 255, w).astype(np.uint8)[None, :]
    rgb_input[..., 1] = np.linspace(0, 255, h).astype(np.uint8)[:, None]
    rgb_input[..., 2] = 160
    rgb_input[50:100, 80:160] = (255, 255, 255)
    gray = render_user_frame(gray_input)
    color = render_user_frame(rgb_input)
    left, top, gap = 20, 64, 50
    sheet = Sheet(left + gray.shape[1] + gap + color.shape[1] + 20, top + gray.shape[0] + 16)
    sheet.text(left, 8, "update(frame=a), a: 2-D float32,\n-1 to 5: min black, max white", size=13)
    sheet.paste(gray, left, top)
    x2 = left + gray.shape[1] + gap
    sheet.text(x2, 8, "update(frame=img), img: 150 x 240 x 3\nuint8 RGB: shown as it is", size=13)
    sheet.paste(color, x2, top)
    sheet.save("rendering-user-frames.png")


def edge_kernels() -> np.ndarray:
    """Eight 3 x 3 kernels (kh, kw, in=1, out=8): a line at a different angle in each, easy to recognise."""
    kernels = np.zeros((8, 3, 3), np.float32)
    for k in range(8):
        angle = np.pi * k / 8
        for t in np.linspace(-1.2, 1.2, 25):
            r, c = int(round(1 + t * np.sin(angle))), int(round(1 + t * np.cos(angle)))
            if 0 <= r < 3 and 0 <= c < 3:
                kernels[k, r, c] = 1.0
        kernels[k] += 0.1 * k
    return kernels.transpose(1, 2, 0)[:, :, None, :]  # (3, 3, 1, 8)


def axis_order_picture() -> None:
    """Eight kernels from Keras (HWIO) and from PyTorch (OIHW) give one picture; the wrong order does not."""
    keras_w = edge_kernels()
    torch_w = np.ascontiguousarray(keras_w.transpose(3, 2, 0, 1))  # (out, in, kh, kw) = (8, 1, 3, 3)
    rows = [
        ("Keras Conv2D kernel, shape (3, 3, 1, 8) = (kh, kw, in, out): layout kernel_hwio",
         render({"k": keras_w}, colormap="grayscale")[0]),
        ("PyTorch Conv2d weight, shape (8, 1, 3, 3) = (out, in, kh, kw): layout kernel_oihw, same picture",
         render({"k": torch_w}, colormap="grayscale", layout="oihw")[0]),
        ("the PyTorch weight read in TensorFlow's order (layout='hwio'), what the original would draw",
         render({"k": torch_w}, colormap="grayscale", layout="hwio")[0]),
    ]
    left, gap = 20, 44
    height = rows[0][1].shape[0]
    sheet = Sheet(left + rows[0][1].shape[1] + 20, 10 + len(rows) * (height + gap))
    y = 10
    for label, rgb in rows:
        sheet.text(left, y, label, size=13)
        sheet.paste(rgb, left, y + 22)
        y += height + gap
    sheet.save("rendering-axis-order.png")


if __name__ == "__main__":
    axis_order_picture()
    frame_picture()
    vector_picture()
    matrix_picture()
    kernel_picture()
    activation_picture()
    grid_picture()
    show_all_pictures()
    resize_picture()
    variance_picture()
    statistics_picture()
    scaling_pictures()
    colormap_picture()
    non_finite_picture()
    user_frame_picture()
