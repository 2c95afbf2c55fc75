"""End to end: the side text beside each section stays readable when sections are short.

With "proportional" section heights a small CNN's biases get 32-80 px sections, shorter than the
six lines of side text (name, "over the shown sample", shape, range, mean, min/max): the lines of
neighbouring sections ran into each other or were cut mid-line, and one could not tell which numbers
belonged to which section. The geometry is read in Chromium (getBoundingClientRect), not guessed.
"""

from __future__ import annotations

import numpy as np
import pytest
from server_support import BROWSER_MARKS, beholder_tab, open_run, set_config, shoot, wait_for

from beholder_plugin import Beholder
from beholder_plugin.protocol.runfiles import read_frame_file

pytestmark = BROWSER_MARKS

# A small CNN: kernels get tall sections, biases and the 2- and 3-value arrays the 32 px minimum.
RNG = np.random.default_rng(7)
CNN = {
    "conv1/kernel": RNG.normal(size=(3, 3, 3, 16)),
    "conv1/bias": RNG.normal(size=16),
    "conv2/kernel": RNG.normal(size=(3, 3, 16, 32)),
    "conv2/bias": RNG.normal(size=32),
    "bn/gamma": np.array([1.0, np.nan, 0.5]),
    "bn/beta": RNG.normal(size=3),
    "dense/kernel": RNG.normal(size=(512, 10)),
    "dense/bias": RNG.normal(size=10),
    "head/temperature": np.array([0.5, 2.0]),
    "head/scale": np.array([1.5]),
}
SHAPES = {"weight": (24, 24), "bias": 3}
# A tiny BERT's long names, told apart only at their ends; the biases get short (cut) sections.
BERT = {f"bert.encoder.layer.{layer}.attention.self.{part}.{kind}": RNG.normal(size=SHAPES[kind])
        for layer in (0, 11) for part in ("query", "key", "value") for kind in ("weight", "bias")}
BERT["cls/bias"] = RNG.normal(size=3)  # short: shown as it is
ALL_LINES = 6  # name, "over the shown sample", shape, range, mean, min/max (and the NaN flag where flagged)

# Each side-text entry: its box, its name's box, and the boxes of the lines drawn (not display:none or
# hidden), with the name and how many lines it has in all.
GEOMETRY = """() => [...document.querySelectorAll('.section-info')].map((el) => {
    const box = (e) => { const r = e.getBoundingClientRect(); return {top: r.top, bottom: r.bottom}; };
    const drawn = [...el.children].filter((c) => c.getClientRects().length > 0
        && getComputedStyle(c).visibility !== 'hidden');
    const name = el.querySelector('.name');
    return {name: el.dataset.name, box: box(el), nameBox: box(name), lines: drawn.map(box),
            texts: drawn.map((c) => c.textContent), count: el.children.length,
            nameCut: name.scrollWidth > name.clientWidth + 1};
})"""


def write_cnn(run, section_size: str, arrays: dict = CNN) -> None:
    """One frame of the CNN's arrays (or these), with this section size."""
    set_config(run, values="arrays", mode="current", FPS=30, section_size=section_size)
    with Beholder(str(run), background=False) as beholder:
        beholder.frame_due_now()
        beholder.update(arrays={name: value.astype(np.float32) for name, value in arrays.items()})


@pytest.fixture(scope="module")
def page_on_cnn(tmp_path_factory):
    """Runs "proportional" and "fixed" of the same CNN arrays, "bert" of long names; TensorBoard; the tab."""
    logdir = tmp_path_factory.mktemp("logs")
    for size in ("proportional", "fixed"):
        write_cnn(logdir / size, size)
    write_cnn(logdir / "bert", "proportional", BERT)
    with beholder_tab(logdir) as (tb, page, frame):
        page.set_viewport_size({"width": 1400, "height": 1700})  # the whole frame in view, for the shots
        yield {"logdir": logdir, "page": page, "frame": frame, "url": tb.url}


def side_text(session, run: str) -> tuple[list[dict], list[dict], float, float]:
    """Open the run; its entries' geometry, its frame's section records, the canvas's top and scale."""
    frame = open_run(session, run)
    records = read_frame_file(session["logdir"] / run).sections
    wait_for(lambda: len(frame.query_selector_all(".section-info")) == len(records), message="the side text")
    top, scale = frame.eval_on_selector(
        "#frame", "c => [c.getBoundingClientRect().top, c.getBoundingClientRect().height / c.height]")
    return frame.evaluate(GEOMETRY), records, top, scale


def assert_readable(entries: list[dict], records: list[dict], top: float, scale: float) -> None:
    """Every name starts on its own section's rows; no line is cut off by its entry's box; no two
    entries' drawn lines overlap."""
    assert [e["name"] for e in entries] == [r["name"] for r in records]
    previous = None
    for entry, record in zip(entries, records):
        first, last = top + record["top"] * scale, top + (record["top"] + record["height"]) * scale
        assert first - 0.5 <= entry["nameBox"]["top"] < last, (entry["name"], entry["nameBox"], first, last)
        assert entry["lines"] and entry["texts"][0] == entry["name"] and not entry["nameCut"]
        for line in entry["lines"]:  # drawn in full, not cut mid-line by the entry's box
            assert line["bottom"] <= entry["box"]["bottom"] + 0.5, (entry["name"], entry["texts"])
        block = (entry["lines"][0]["top"], max(line["bottom"] for line in entry["lines"]))
        if previous is not None:
            assert previous[1] <= block[0] + 0.5, (entry["name"], previous, block)
        previous = block


def test_short_proportional_sections_keep_their_side_text_apart(page_on_cnn):
    """Proportional: the side text of each short section shows the lines that fit, its name first, on
    its own rows; the rest shows on hover."""
    entries, records, top, scale = side_text(page_on_cnn, "proportional")
    shoot(page_on_cnn["frame"].locator(".stage-row"), "side-text-proportional.png")
    heights = {r["name"]: r["height"] for r in records}
    assert heights["head/scale"] == 32 and heights["conv2/kernel"] > 128  # the mix this is about
    assert_readable(entries, records, top, scale)
    by_name = {e["name"]: e for e in entries}
    assert len(by_name["conv2/kernel"]["lines"]) == ALL_LINES  # a tall section shows everything
    assert any("NaN" in text for text in by_name["bn/gamma"]["texts"])  # the flag comes before the numbers
    # A cut entry shows all its lines on hover, in front of its neighbours.
    frame = page_on_cnn["frame"]
    frame.hover('.section-info[data-name="head/temperature"] .name')
    shown = frame.eval_on_selector(
        '.section-info[data-name="head/temperature"]',
        "el => [...el.children].filter((c) => c.getClientRects().length > 0).length")
    assert shown == ALL_LINES
    shoot(frame.locator(".stage-row"), "side-text-proportional-hover.png")
    frame.page.mouse.move(0, 0)


def test_cut_side_text_opens_on_keyboard_focus_too(page_on_cnn):
    """Only entries with left-out lines take Tab stops; Tab from one to the next shows all the next's
    lines, and a screen reader gets them all in its label."""
    entries, records, _, _ = side_text(page_on_cnn, "proportional")
    frame = page_on_cnn["frame"]
    frame.page.mouse.move(0, 0)
    cut = [e["name"] for e in entries if len(e["lines"]) < e["count"]]
    focusable = frame.eval_on_selector_all(
        ".section-info[tabindex='0']", "els => els.map((e) => e.dataset.name)")
    assert len(cut) >= 2 and focusable == cut  # in section order; the tall ones are no Tab stop
    frame.focus(f'.section-info[data-name="{cut[0]}"]')
    frame.page.keyboard.press("Tab")
    active = frame.evaluate("() => document.activeElement.dataset.name")
    assert active == cut[1]
    shown = frame.eval_on_selector(
        f'.section-info[data-name="{cut[1]}"]',
        "el => [...el.children].filter((c) => c.getClientRects().length > 0).length")
    count = next(e["count"] for e in entries if e["name"] == cut[1])
    assert shown == count
    shoot(frame.locator(".stage-row"), "side-text-proportional-focus.png")
    label = frame.get_attribute(f'.section-info[data-name="{cut[1]}"]', "aria-label")
    assert label.startswith(cut[1]) and "min " in label and "mean " in label


def test_fixed_sections_show_every_line_as_before(page_on_cnn):
    """Fixed (128 px): every entry shows all its lines, at its section's top, as the original did."""
    entries, records, top, scale = side_text(page_on_cnn, "fixed")
    shoot(page_on_cnn["frame"].locator(".stage-row"), "side-text-fixed.png")
    assert_readable(entries, records, top, scale)
    for entry, record in zip(entries, records):
        assert len(entry["lines"]) == entry["count"] >= ALL_LINES
        assert entry["box"]["top"] == pytest.approx(top + record["top"] * scale, abs=0.5)
        height = entry["box"]["bottom"] - entry["box"]["top"]
        assert height == pytest.approx(record["height"] * scale, abs=0.5)


def test_long_names_keep_their_ends_in_the_side_text(page_on_cnn):
    """A tiny BERT's names all read "bert.encoder.layer.0.attention.sel…" (cut at the end, where they
    differ): a long name's leading parts are now shortened to a letter (numbers kept), measured in the
    name's own font, so each keeps its layer and its end and fits its line; the whole name is its title."""
    side_text(page_on_cnn, "bert")
    frame = page_on_cnn["frame"]
    names = """() => [...document.querySelectorAll('.section-info .name')].map((el) => ({
        name: el.parentElement.dataset.name, text: el.textContent, title: el.title,
        label: el.parentElement.getAttribute('aria-label'), fits: el.scrollWidth <= el.clientWidth}))"""
    shown = frame.evaluate(names)
    shoot(frame.locator(".stage-row"), "side-text-long-names.png")
    assert sorted(n["name"] for n in shown) == sorted(BERT)
    for entry in shown:
        assert entry["fits"] and entry["title"] == entry["name"], entry
        assert entry["label"] is None or entry["label"].startswith(entry["name"] + ", "), entry
        if entry["name"] == "cls/bias":
            assert entry["text"] == "cls/bias"
            continue
        layer, end = entry["name"].split(".")[3], ".".join(entry["name"].split(".")[-2:])
        assert len(entry["text"]) < len(entry["name"]) and entry["text"].endswith(f".{end}"), entry
        assert f".{layer}." in entry["text"], entry
    assert len({n["text"] for n in shown}) == len(shown)
    frame.evaluate("() => window.dispatchEvent(new Event('resize'))")  # drawn again: shown the same
    assert frame.evaluate(names) == shown
