"""End to end: choosing sections, section heights, distributions, NaN flags, two runs compared, axis names.

A real TensorBoard, Debian's Chromium, and a trainer subprocess
(tests/sections_trainer.py) writing three runs: "net" (constant arrays named in
scopes, with a NaN injected on demand), "left" and "right" (constant arrays
whose difference is known). The tests share one page and run in file order.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import urllib.parse

import numpy as np
import pytest
import sections_trainer
from PIL import Image
from sections_trainer import DIFF, NET
from server_support import (
    ARTIFACTS,
    BASE,
    BROWSER_MARKS,
    PYTHON,
    TensorBoard,
    Trainer,
    beholder_frame,
    chromium_page,
    http_get,
    read_config_file,
    set_config,
    wait_for,
)
from server_support import (
    dashboard_stats as stats,
)

from beholder_plugin.protocol.filters import compile_filter
from beholder_plugin.protocol.runfiles import read_frame_file
from beholder_plugin.server.diff import DIFF_PALETTE

pytestmark = BROWSER_MARKS

ALL_NAMES = set(NET)


class SectionsTrainer(Trainer):
    """The Trainer helper, running tests/sections_trainer.py."""

    def start(self) -> SectionsTrainer:
        """Start the sections trainer script."""
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen([PYTHON, sections_trainer.__file__, *self.run_dirs],
                                     stdout=out, stderr=subprocess.STDOUT)
        if self.log_path:
            out.close()
        return self


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """TensorBoard over the three runs, and the Beholder tab in Chromium showing "net"."""
    logdir = tmp_path_factory.mktemp("logs")
    runs = {name: logdir / name for name in ("net", "left", "right")}
    for run in runs.values():
        set_config(run, values="arrays", mode="current", FPS=20)
    trainer = SectionsTrainer(*runs.values(), log_path=str(logdir.parent / "trainer.log")).start()
    tb = TensorBoard(logdir, logdir.parent / "tensorboard.log")
    try:
        tb.start()
        for run in runs.values():
            wait_for(lambda run=run: read_frame_file(run), timeout=60, message=f"a frame of {run.name}")
        with chromium_page() as page:
            page.goto(tb.url + "/#beholder")
            frame = beholder_frame(page)
            frame.select_option("#run-select", "net")
            wait_for(lambda: stats(frame)["run"] == "net" and stats(frame)["frameId"], message="the net run")
            wait_for(lambda: set(debug(frame, "seenNames")) == ALL_NAMES, message="the section names")
            yield {"logdir": logdir, "runs": runs, "tb": tb, "page": page, "frame": frame}
    finally:
        trainer.stop()
        tb.stop()


def debug(frame, name: str):
    """One of the dashboard's test hooks (window.beholderDebug in the iframe)."""
    return frame.evaluate(f"window.beholderDebug.{name}()")


def shoot(page, name: str) -> None:
    """Save a screenshot of the page under test-artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def names_on_disk(run) -> set[str]:
    """The section names of the run's latest frame file."""
    return {rec["name"] for rec in read_frame_file(run).sections}


def later_frame_names(run) -> set[str]:
    """The section names of a frame gathered after now: two frames after the one on disk.

    The frame after it may have been gathered before now (one frame at a time is in the
    trainer's worker); the one after that is gathered once that one is written.
    """
    start = read_frame_file(run).header["frame_id"]
    return wait_for(lambda: (f := read_frame_file(run)).header["frame_id"] > start + 1
                    and {rec["name"] for rec in f.sections}, message="a frame gathered after now")


def wait_config(run, key: str, value) -> None:
    """Wait until the run's config.json has key = value."""
    wait_for(lambda: read_config_file(run).get(key) == value, message=f"{key} = {value!r} in config.json")


def type_filter(frame, text: str) -> None:
    """Replace the filter box's text and press Enter."""
    frame.fill("#section-filter", text)
    frame.press("#section-filter", "Enter")


def test_the_browser_reads_filters_as_the_trainer_does(session):
    """filterMatcher (the tree's greying) keeps the names protocol/filters.py keeps, for text and /RE2/."""
    frame = session["frame"]
    names = ["sequential/conv1/kernel", "a b(c)*?+[x]{2}$^|\\é😀", "x\ty", "conv1.weight", "model/-x-/k",
             "sequential/conv10/kernel", "odd([name"]
    filters = [combine for text in ["", "kernel", "([", "/kernel|weight/", "/^(\\w+/?)+$/", "/[é😀]/"]
               for combine in (text, text + "\nsequential/conv1\n" + names[1])]
    kept = frame.evaluate(
        """async ([names, filters]) => {
            const m = await import('/data/plugin/beholder/static/sections.js');
            return filters.map((f) => names.map(m.filterMatcher(f)));
        }""",
        [names, filters],
    )
    for text, row in zip(filters, kept):
        found = compile_filter(text)
        assert row == [found is None or found.search(name) for name in names], text
    joined = frame.evaluate(
        """async () => (await import('/data/plugin/beholder/static/sections.js'))
            .combineFilter('/kernel|weight/', new Set(['sequential/conv1', 'head']))"""
    )
    assert joined == "/kernel|weight/\nhead\nsequential/conv1"
    # The tree never runs an expression in the browser (its RegExp backtracks: a shared link with
    # (a+)+$ would hang the tab); it greys by the names of the latest frame, which RE2 chose.
    by_frame = frame.evaluate(
        """async () => {
            const m = await import('/data/plugin/beholder/static/sections.js');
            const kept = m.filterMatcher('/(a+)+$/', new Set(['x']));
            return [kept('a'.repeat(60) + '!'), kept('x')];
        }"""
    )
    assert by_frame == [False, True]


def test_filter_box_reduces_the_sections_the_trainer_gathers(session):
    frame, page, net = session["frame"], session["page"], session["runs"]["net"]
    type_filter(frame, "dense")
    wait_config(net, "filter", "dense")
    assert later_frame_names(net) == {"sequential/dense/kernel", "sequential/dense/bias"}
    # The view can be shared: the filter is in TensorBoard's URL.
    assert "filter=dense" in page.url and page.url.split("#")[1].startswith("beholder&")
    # The tree still lists every name seen, and marks the ones the filter leaves out.
    assert set(debug(frame, "seenNames")) == ALL_NAMES
    wait_for(lambda: frame.query_selector('.scope.filtered-out[data-scope="head.weight"]'),
             message="head.weight marked as filtered out")
    shoot(page, "sections-filter.png")
    # Plain text is found in names as it is, regular-expression characters included (issue 23).
    type_filter(frame, "([")
    wait_config(net, "filter", "([")
    assert not frame.is_visible("#section-filter-error")
    # A bad expression (between slashes) is shown inline and not sent.
    frame.fill("#section-filter", "/conv(/")
    wait_for(lambda: frame.is_visible("#section-filter-error"), message="the inline error")
    assert "not a valid regular expression" in frame.inner_text("#section-filter-error")
    frame.press("#section-filter", "Enter")
    assert read_config_file(net)["filter"] == "(["
    # JavaScript reads a look-ahead, RE2 does not: refused by the plugin, and kept in the box.
    type_filter(frame, "/(?=conv)/")
    refusal = "is not a valid regular expression (RE2 syntax)"
    wait_for(lambda: refusal in frame.inner_text("#section-filter-error"), message="the refusal")
    assert frame.input_value("#section-filter") == "/(?=conv)/"
    assert read_config_file(net)["filter"] == "(["
    type_filter(frame, "")
    wait_config(net, "filter", "")
    assert later_frame_names(net) == ALL_NAMES


def test_hiding_a_scope_writes_one_expression(session):
    frame, page, net = session["frame"], session["page"], session["runs"]["net"]
    frame.uncheck('input[data-scope="sequential/conv1"]')
    wait_config(net, "filter", "\nsequential/conv1")
    assert later_frame_names(net) == ALL_NAMES - {"sequential/conv1/kernel", "sequential/conv1/bias"}
    # The hidden scope stays in the tree (greyed children), so it can be shown again.
    assert frame.is_disabled('input[data-scope="sequential/conv1/kernel"]')
    # Together with the filter box: one filter, the box's text first, then the hidden scopes.
    type_filter(frame, "/kernel|weight/")
    wait_config(net, "filter", "/kernel|weight/\nsequential/conv1")
    assert later_frame_names(net) == {"sequential/dense/kernel", "head.weight"}
    wait_for(lambda: frame.query_selector('.scope.filtered-out[data-scope="sequential/dense/bias"]')
             and not frame.query_selector('.scope.filtered-out[data-scope="head.weight"]'),
             message="the tree greyed by what the trainer's RE2 kept")
    hash_params = urllib.parse.parse_qs(page.url.split("#", 1)[1].split("&", 1)[1])
    assert hash_params == {"run": ["net"], "filter": ["/kernel|weight/"], "hide": ["sequential/conv1"]}
    shoot(page, "sections-tree.png")
    type_filter(frame, "")
    frame.check('input[data-scope="sequential/conv1"]')
    wait_config(net, "filter", "")
    assert later_frame_names(net) == ALL_NAMES


def test_section_height_control(session):
    frame, page, net = session["frame"], session["page"], session["runs"]["net"]
    assert frame.is_checked("input[name=section_size][value=fixed]")
    frame.check("input[name=section_size][value=proportional]")
    wait_config(net, "section_size", "proportional")
    start = read_frame_file(net).header["frame_id"] + 1  # as in later_frame_names
    heights = wait_for(lambda: (f := read_frame_file(net)).header["frame_id"] > start
                       and {r["name"]: r["height"] for r in f.sections}, message="a proportional frame")
    assert len(set(heights.values())) > 1  # no longer 128 px each
    shoot(page, "section-height-proportional.png")
    frame.check("input[name=section_size][value=fixed]")
    wait_config(net, "section_size", "fixed")


def test_distribution_counts_match_numpy(session):
    frame, page = session["frame"], session["page"]
    frame.check("input[name=view][value=distributions]")
    name = "sequential/dense/kernel"
    data = wait_for(lambda: (d := debug(frame, "distributions").get(name)) and len(d["frames"]) >= 3 and d,
                    message="three frames of statistics")
    array = NET[name]
    latest = data["frames"][-1]
    assert (latest["lo"], latest["hi"]) == (float(array.min()), float(array.max()))
    want, _ = np.histogram(array, bins=32, range=(float(array.min()), float(array.max())))
    assert latest["counts"] == want.tolist()
    # Every frame has the same range, so the common range is that one and the drawn column is the same counts.
    assert data["range"] == {"lo": latest["lo"], "hi": latest["hi"]}
    assert np.allclose(latest["column"], want)
    panel = f'.dist-panel[data-name="{name}"]'
    assert "over the whole array (48 values)" in frame.inner_text(panel)
    drawn, frames = frame.evaluate(  # read together: both change with every frame
        f"""() => [document.querySelector('{panel} canvas.dist-hist').dataset.frames,
                   window.beholderDebug.distributions()['{name}'].frames.length]""")
    assert drawn == str(frames) and frames >= 3
    # Re-binning onto a wider common range: a frame over [0, 1] drawn on [0, 2] fills the lower 16 rows,
    # two of its bins in each; a frame over [1, 2] the upper 16.
    counts = list(range(1, 33))
    rebinned = frame.evaluate(
        """async (counts) => {
            const m = await import('/data/plugin/beholder/static/distributions.js');
            const wide = {lo: 0, hi: 2};
            return [Array.from(m.rebin({lo: 0, hi: 1, counts}, wide)),
                    Array.from(m.rebin({lo: 1, hi: 2, counts}, wide)),
                    m.commonRange([{stats: {hist: {lo: 0, hi: 1}}}, {stats: {hist: {lo: -3, hi: 0.5}}}]),
                    m.columnSpans([0, 10, 1000, 1000], 300), m.columnSpans([5, 9, 2], 300),
                    m.columnSpans([7, 7], 300)];
        }""",
        counts,
    )
    pairs = [counts[i] + counts[i + 1] for i in range(0, 32, 2)]
    assert np.allclose(rebinned[0], pairs + [0] * 16) and np.allclose(rebinned[1], [0] * 16 + pairs)
    assert rebinned[2] == {"lo": -3, "hi": 1}
    # Frames placed by step (kept frames are spread unevenly), each from halfway to the one before to
    # halfway to the next; a newer one at the same step gets a slot over the older's. Steps that go back
    # (a restart) or stand still: one slot per frame.
    assert rebinned[3] == [[0, 1], [1, 151], [151, 299], [299, 300]]
    assert rebinned[4] == [[0, 1], [1, 2], [2, 3]] and rebinned[5] == [[0, 1], [1, 2]]
    assert frame.get_attribute(f"{panel} .fraction.zero", "data-value") == "0"
    shoot(page, "distributions.png")


def test_nan_mid_run_is_flagged_red(session):
    frame, page, net = session["frame"], session["page"], session["runs"]["net"]
    bias = "sequential/dense/bias"
    assert frame.get_attribute(f'.scope[data-scope="{bias}"]', "data-flagged") == "false"
    (net / "inject-nan").touch()
    wait_for(lambda: frame.get_attribute(f'.scope[data-scope="{bias}"]', "data-flagged") == "true",
             message="the NaN flag in the tree")
    for scope in ("sequential/dense", "sequential"):  # and on the scopes above it
        assert frame.get_attribute(f'.scope[data-scope="{scope}"]', "data-flagged") == "true"
    assert frame.get_attribute('.scope[data-scope="head.weight"]', "data-flagged") == "false"
    color = frame.eval_on_selector(f'.scope[data-scope="{bias}"] .flag', "el => getComputedStyle(el).color")
    assert color == "rgb(211, 47, 47)"
    # In the distributions view: the fraction, in red.
    fraction = f'.dist-panel[data-name="{bias}"] .fraction.nan'
    nan = wait_for(lambda: (v := frame.get_attribute(fraction, "data-value")) != "0" and v,
                   message="the NaN fraction")
    assert float(nan) == pytest.approx(1 / 6)
    shoot(page, "nan-flag-distributions.png")
    # On the frame: a red outline over the section and a red note beside it.
    frame.check("input[name=view][value=frame]")
    record = next(r for r in read_frame_file(net).sections if r["name"] == bias)
    wait_for(lambda: frame.eval_on_selector(f'.flag-outline[data-name="{bias}"]',
                                            "el => [parseFloat(el.style.top), parseFloat(el.style.height)]")
             == [record["top"], record["height"]], message="the red outline around the section")
    assert "NaN" in frame.inner_text(f'.section-info.nonfinite[data-name="{bias}"]')
    shoot(page, "nan-flag-frame.png")
    (net / "inject-nan").unlink()
    wait_for(lambda: frame.get_attribute(f'.scope[data-scope="{bias}"]', "data-flagged") == "false",
             message="the flag to clear")


def test_hover_read_out_names_the_axes(session):
    frame, page, net = session["frame"], session["page"], session["runs"]["net"]
    kernel = next(r for r in read_frame_file(net).sections if r["name"] == "sequential/conv1/kernel")
    y = kernel["top"] + 40
    frame.hover("#run-select")
    frame.hover("#frame", position={"x": 300.5, "y": y + 0.5})
    script = "el => ({...el.dataset, text: el.innerText})"
    found = wait_for(lambda: (r := frame.eval_on_selector("#readout", script)).get("y") == str(y)
                     and "index" in r and r, message="the read-out")
    axes, index = json.loads(found["axes"]), json.loads(found["index"])
    assert axes == kernel["axes"] and len(axes) == 4
    shown = "[" + ", ".join(f"{a} {i}" for a, i in zip(axes, index)) + "]"
    assert shown in found["text"]
    assert np.float32(found["value"]) == NET[kernel["name"]][tuple(index)]
    shoot(page, "hover-axis-names.png")


def canvas_pixels(element) -> np.ndarray:
    """A canvas element's pixels as H x W x 3."""
    url = element.evaluate("c => c.toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def test_two_runs_side_by_side_and_their_difference(session):
    frame, page, tb = session["frame"], session["page"], session["tb"]
    frame.select_option("#run-select", "left")
    wait_for(lambda: stats(frame)["run"] == "left", message="the left run")
    frame.select_option("#compare-select", "right")
    rows = wait_for(lambda: debug(frame, "compare")["rows"], message="the compare rows")
    assert rows == ["w", "b", "only_left", "only_right"]
    assert frame.is_disabled('input.cmp-diff[data-name="b"]')  # shapes [6] and [5]
    assert frame.is_disabled('input.cmp-diff[data-name="only_left"]')
    # a section holding NaN is flagged in red, as in the single frame (it drew plain black, unmarked)
    assert frame.inner_text('.cmp-row[data-name="only_right"] .cmp-nonfinite') == "⚠ B NaN"
    assert frame.query_selector('.cmp-row[data-name="w"] .cmp-nonfinite') is None
    frame.check('input.cmp-diff[data-name="w"]')
    selector = '.cmp-row[data-diff="true"][data-name="w"] canvas.cmp-diff-image'
    image = wait_for(lambda: frame.query_selector(selector), message="the difference of w")
    pixels = canvas_pixels(image)
    assert pixels.shape == (128, 768, 3)
    # Pixel (x, y) of the 8 x 6 section shows DIFF[y // 16, x // 128]: 128 + rint(d * 127 / m), m = 2.
    index = (128 + np.rint(DIFF * np.float32(127 / 2))).astype(np.uint8)
    want = DIFF_PALETTE[np.repeat(np.repeat(index, 16, axis=0), 128, axis=1)]
    assert np.array_equal(pixels, want)
    assert tuple(want[0, 0]) == (33, 102, 172) and tuple(want[0, 256]) == (255, 255, 255)
    status, _ = http_get(f"{tb.url}{BASE}/diff?run=left&other=..%2Fescape")
    assert status == 403
    shoot(page, "compare-difference.png")
    frame.select_option("#compare-select", "")
    wait_for(lambda: frame.is_visible("#frame"), message="the single frame again")


def test_a_shared_link_applies_its_filter(session):
    page, tb, runs = session["page"], session["tb"], session["runs"]
    other = page.context.browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        other.goto(tb.url + "/#beholder&filter=head&hide=sequential%2Fdense")
        frame = beholder_frame(other)
        run = wait_for(lambda: stats(frame)["run"], message="a run on the new page")
        assert frame.input_value("#section-filter") == "head"
        wait_config(runs[run], "filter", "head\nsequential/dense")
        if run == "net":  # the hidden scope is unticked, the others are not
            # Which other scopes the tree lists depends on whether this page saw a frame from before
            # the filter took effect (sequential/conv1), or only filtered ones (head.weight): "head"
            # is in both.
            assert frame.is_checked('input[data-scope="head"]')
            assert not frame.is_checked('input[data-scope="sequential/dense"]')
            boxes = frame.eval_on_selector_all(
                "input[data-scope]", "els => els.map((e) => [e.dataset.scope, e.checked])"
            )
            unticked = [scope for scope, ticked in boxes if not ticked]  # the scope, and what is under it
            assert "sequential/dense" in unticked, boxes
            assert all(scope.startswith("sequential/dense") for scope in unticked), boxes
            assert len(unticked) < len(boxes), boxes
        assert "filter=head" in other.url and "hide=sequential%2Fdense" in other.url
        shoot(other, "sections-shared-link.png")
    finally:
        other.close()
