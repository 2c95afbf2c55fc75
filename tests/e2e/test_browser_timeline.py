"""End to end: the Timeline view in Chromium, on a real TensorBoard serving a run whose layer went NaN."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from server_support import BROWSER_MARKS, beholder_tab, set_config, shoot, wait_for

from beholder_plugin import Beholder, read_anomalies
from beholder_plugin.protocol import timeline as tl
from beholder_plugin.protocol.files import files_for
from beholder_plugin.trainer.timeline import TimelineWriter

pytestmark = BROWSER_MARKS

NAN_STEP = 9
MANY = [f"block{i:04d}/w" for i in range(4200)]  # the sections of run "many"
LONG_NAMES = [f"bert.encoder.layer.{i}.attention.self.{part}.weight"
              for i in (0, 1) for part in ("query", "key")]


@pytest.fixture(scope="module")
def page_on_timeline(tmp_path_factory):
    """A finished run (frames at steps 1-12, section w NaN from step 9), TensorBoard, the tab open; runs
    "other", "switched" (its Values changed), "restarted" (two trainer processes) and "many" (more
    sections than an answer holds) beside it."""
    logdir = tmp_path_factory.mktemp("logs")
    many = str(logdir / "many")  # 4,200 sections at steps 1-2: the answer holds 4,096
    writer = TimelineWriter(many, files_for(many), parts_budget=10**9)
    for step in (1, 2):
        records = tl.make_records(len(MANY))
        records["step"], records["time"], records["section"] = step, 1.7e9 + step, np.arange(len(MANY))
        records["norm"] = 1.0
        writer.append(MANY, records)
    writer.close()
    other = logdir / "other"  # written first, so that nanrun is the run the tab opens on
    other.mkdir()
    set_config(other, values="arrays", FPS=30)
    with Beholder(str(other), background=False) as beholder:
        for step in range(1, 4):
            beholder.frame_due_now()
            beholder.update(arrays={"w": np.full((16, 16), float(step), np.float32)})
    longnames = logdir / "longnames"  # names alike but for their middles and ends, longer than a row's label
    set_config(longnames, values="arrays", FPS=30)
    with Beholder(str(longnames), background=False) as beholder:
        for step in range(1, 3):
            beholder.frame_due_now()
            beholder.update(arrays={name: np.full(3, float(step), np.float32) for name in LONG_NAMES})
    switched = logdir / "switched"  # the Values choice changed: arrays, then variables, of one name
    switched.mkdir()
    with Beholder(str(switched), background=False) as beholder:
        for step in range(1, 9):
            set_config(switched, values="arrays" if step <= 4 else "trainable_variables", FPS=30)
            beholder.frame_due_now()
            beholder.update(arrays={"w": np.full((4, 4), 1.0, np.float32)},
                            variables={"w": np.full((4, 4), 100.0, np.float32)})
    restarted = logdir / "restarted"  # a trainer that ran steps 1-12, then one started again: steps 1-6
    set_config(restarted, values="arrays", FPS=30)
    for steps in (12, 6):
        with Beholder(str(restarted), background=False) as beholder:
            for step in range(1, steps + 1):
                beholder.frame_due_now()
                beholder.update(arrays={"w": np.full((4, 4), float(step), np.float32)})
    run = logdir / "nanrun"
    run.mkdir()
    set_config(run, values="arrays", FPS=30)
    rng = np.random.default_rng(0)
    with Beholder(str(run), background=False) as beholder:
        for step in range(1, 13):
            w = rng.normal(size=(16, 16)).astype(np.float32) * step
            if step >= NAN_STEP:
                w[2, 3] = np.nan
            beholder.frame_due_now()  # a frame at every step
            beholder.update(arrays={"w": w, "b": np.linspace(0, 1, 8)})
    assert read_anomalies(str(run))[0]["step"] == NAN_STEP
    with beholder_tab(logdir) as (_, page, frame):
        wait_for(lambda: frame.evaluate("window.beholder.run") == "nanrun", message="the run selected")
        yield page, frame


def debug(frame) -> dict:
    """The timeline view's debug record (what it drew, hovered, opened)."""
    return frame.evaluate("window.beholderDebug.timeline()")


def test_timeline_hover_click_through_and_jump(page_on_timeline):
    """Open the timeline; hover a point (its numbers); click through to its frame; jump to the anomaly."""
    page, frame = page_on_timeline
    frame.click("#view-timeline")
    wait_for(lambda: debug(frame)["drawn"] == 2, message="two timeline rows")
    assert not frame.is_hidden("#timeline") and frame.is_hidden("#stage")
    canvas = frame.query_selector('canvas.tl-spark[data-section="w"]')
    box = canvas.bounding_box()
    # x of step 5 on a 640 px axis from step 1 to 12
    x = box["x"] + (5 - 1) / (12 - 1) * 639
    page.mouse.move(x, box["y"] + box["height"] / 2)
    hover = wait_for(lambda: debug(frame)["hover"], message="a hovered point")
    assert hover["section"] == "w" and hover["step"] == 5
    assert "step 5" in frame.inner_text("#timeline-readout")
    page.mouse.click(x, box["y"] + box["height"] / 2)
    opened = wait_for(lambda: debug(frame)["opened"], message="a kept frame opened")
    assert opened["step"] == 5
    wait_for(lambda: frame.evaluate("window.beholder.kept") == opened["name"], message="the kept frame shown")
    assert frame.is_hidden("#timeline") and not frame.is_hidden("#stage")
    frame.click("#view-timeline")
    wait_for(lambda: not frame.is_hidden("#timeline"), message="the timeline again")
    frame.click("#timeline-jump")
    jumped = wait_for(lambda: debug(frame).get("jumped"), message="the jump to the first anomaly")
    assert jumped["section"] == "w" and jumped["step"] == NAN_STEP
    assert "First anomaly: nan in w at step 9" in frame.inner_text("#timeline-readout")
    assert frame.get_attribute('.tl-row[data-section="w"]', "class").split().count("tl-current") == 1
    frame.select_option("#timeline-scale", "log")  # the log scale draws too
    wait_for(lambda: debug(frame)["drawn"] == 2, message="rows on a log scale")


def test_the_section_filter_applies_to_the_timeline(page_on_timeline):
    """The Sections box (the run's filter) chooses the timeline's rows too."""
    page, frame = page_on_timeline
    frame.fill("#section-filter", "b")
    wait_for(lambda: frame.evaluate("window.beholderDebug.timeline().drawn") == 1, timeout=30,
             message="one row once the filter reaches the config")  # redrawn at the next refresh
    assert frame.query_selector('.tl-row[data-section="b"]')
    assert not frame.query_selector('.tl-row[data-section="w"]')
    frame.fill("#section-filter", "")
    wait_for(lambda: frame.evaluate("window.beholderDebug.timeline().drawn") == 2, timeout=30,
             message="both rows again")


def test_compare_with_overlays_the_other_runs_norms(page_on_timeline):
    """With "Compare with" set, the timeline loads the other run too and draws its norms on the same rows."""
    page, frame = page_on_timeline
    frame.click("#view-timeline")
    frame.select_option("#compare-select", "other")
    wait_for(lambda: "compared with other" in frame.inner_text("#timeline-status"), timeout=30,
             message="the other run overlaid")
    assert debug(frame)["drawn"] == 2
    frame.select_option("#compare-select", "")
    wait_for(lambda: "compared with" not in frame.inner_text("#timeline-status"), timeout=30,
             message="the overlay gone")


def test_a_run_whose_values_changed_shows_one_values_timeline_with_a_choice(page_on_timeline):
    """Arrays for 4 frames, then variables of the same name: the timeline shows the values shown last
    (steps 5-8), and its Values choice turns to the other series (steps 1-4), not both in one line."""
    page, frame = page_on_timeline
    frame.select_option("#run-select", "switched")
    frame.click("#view-timeline")
    wait_for(lambda: "steps 5–8" in frame.inner_text("#timeline-status"), timeout=30,
             message="the variables' timeline")
    assert frame.is_visible("#timeline-values")
    assert frame.eval_on_selector_all("#timeline-values option", "os => os.map(o => o.value)") == [
        "trainable_variables", "arrays"]
    assert frame.eval_on_selector("#timeline-values", "el => el.value") == "trainable_variables"
    frame.select_option("#timeline-values", "arrays")
    wait_for(lambda: "steps 1–4" in frame.inner_text("#timeline-status"), timeout=30,
             message="the arrays' timeline")
    frame.select_option("#run-select", "nanrun")
    wait_for(lambda: "steps 1–12" in frame.inner_text("#timeline-status"), timeout=30,
             message="back on the run of one values")
    assert not frame.is_visible("#timeline-values")


def test_the_hover_says_which_trainer_process_a_point_is_of(page_on_timeline):
    """After a restart two processes' points share steps; the hover's "w · step 3" did not say which
    process (the faint line or the bright one) it was. It names it, and only when there are two or more."""
    page, frame = page_on_timeline
    frame.select_option("#run-select", "restarted")
    frame.click("#view-timeline")
    wait_for(lambda: "restarted once" in frame.inner_text("#timeline-status"), timeout=30,
             message="the restarted run's timeline")

    def hover(step: int) -> str:
        """Hover row w at a step (the axis spans steps 1-12); the read-out once it shows that step."""
        box = frame.query_selector('canvas.tl-spark[data-section="w"]').bounding_box()
        page.mouse.move(box["x"] + (step - 1) / (12 - 1) * 639, box["y"] + box["height"] / 2)
        wait_for(lambda: (debug(frame)["hover"] or {}).get("step") == step,
                 message=f"the hover at step {step}")
        return frame.inner_text("#timeline-readout")

    earlier = hover(10)  # only the first process reached step 10
    assert re.search(r"w · step 10 · trainer process 1 of 2 \(before the restart at \d\d:\d\d\) · ", earlier)
    later = hover(3)  # both processes wrote a step 3: the latest's, the bright line
    assert re.search(r"w · step 3 · trainer process 2 of 2 \(restarted at \d\d:\d\d\) · norm ", later)
    assert debug(frame)["hover"]["process"] == 2
    shoot(frame.locator("#timeline"), "timeline-restart-hover.png")
    frame.select_option("#run-select", "nanrun")  # one process: no word of processes
    wait_for(lambda: "steps 1–12" in frame.inner_text("#timeline-status") and "restarted" not in
             frame.inner_text("#timeline-status"), timeout=30, message="the run of one process")
    assert "trainer process" not in hover(5)
    # A section missing from the first of three processes (its own steps go back once) is numbered by the
    # run's processes, by the time each of its own began. (The dashboard's own module, run in its page.)
    found = frame.evaluate("""async () => {
        const m = await import("./static/timeline.js");
        const starts = [100, 200, 300];  // the run's three processes began at these times
        const section = {step: [1, 2, 1, 2], time: [201, 202, 301, 302]};
        return [0, 1, 2, 3].map((i) => m.processOf(section, i, starts) + 1);
    }""")
    assert found == [2, 2, 3, 3]


def test_the_filter_finds_a_section_the_answer_left_out(page_on_timeline):
    """4,200 sections: the answer holds 4,096, and the filter box searched only those, so block4150/w
    could not be found. Typed into the box it is: the server searches every section (?sections=, asked
    once the typing pauses); an emptied box shows the plain answer again. A run that left nothing out is
    filtered in the page, without a request."""
    page, frame = page_on_timeline
    frame.select_option("#run-select", "nanrun")
    frame.click("#view-timeline")
    wait_for(lambda: "steps 1–12" in frame.inner_text("#timeline-status"), timeout=30,
             message="nanrun's timeline")
    searches = debug(frame).get("searches", 0)
    frame.fill("#timeline-filter", "B")
    wait_for(lambda: debug(frame)["drawn"] == 1, message="nanrun's row b")
    time.sleep(0.6)  # (past the typing pause)
    assert debug(frame).get("searches", 0) == searches
    frame.fill("#timeline-filter", "")
    frame.select_option("#run-select", "many")
    wait_for(lambda: "showing 4096 of 4200 sections" in frame.inner_text("#timeline-status"), timeout=30,
             message="run many's answer, sections left out")
    assert not frame.query_selector('.tl-row[data-section="block4150/w"]')
    frame.type("#timeline-filter", " Block4150", delay=40)  # (trimmed, any case: as the box filters)
    wait_for(lambda: frame.query_selector('.tl-row[data-section="block4150/w"]'), timeout=30,
             message="the left-out section's row")
    assert debug(frame)["drawn"] == 1 and debug(frame)["searched"] == "block4150"
    assert debug(frame).get("searches", 0) - searches <= 2  # one once the typing paused (a refresh, maybe)
    status = frame.inner_text("#timeline-status")
    assert 'showing 1 of 1 sections matching "block4150" (of all 4200)' in status and "steps 1–2" in status
    frame.fill("#timeline-filter", "")
    wait_for(lambda: "showing 4096 of 4200 sections" in frame.inner_text("#timeline-status"), timeout=30,
             message="the plain answer again")
    assert not frame.query_selector('.tl-row[data-section="block4150/w"]')
    frame.select_option("#run-select", "nanrun")


def test_long_section_names_keep_their_ends_in_the_rows(page_on_timeline):
    """A tiny BERT's rows all read "bert.encoder.layer.0.attentio…" (cut at the end, where names differ):
    a long name's leading parts are now shortened to a letter (numbers kept), so each row's label keeps
    its layer and its end, is told from the others and fits its box; the whole name is on hover."""
    page, frame = page_on_timeline
    frame.select_option("#run-select", "longnames")
    frame.click("#view-timeline")
    wait_for(lambda: frame.evaluate("window.beholderDebug.timeline().drawn") == len(LONG_NAMES), timeout=30,
             message="the long names' rows")
    rows = frame.eval_on_selector_all(".tl-row", """rows => rows.map((r) => {
        const label = r.querySelector('.tl-name');
        return {name: r.dataset.section, text: label.textContent, title: label.title,
                fits: label.scrollWidth <= label.clientWidth + 1};
    })""")
    assert sorted(row["name"] for row in rows) == sorted(LONG_NAMES)
    for row in rows:
        layer, part = row["name"].split(".")[3], row["name"].split(".")[-2]
        assert row["fits"] and len(row["text"]) < len(row["name"]), row
        assert row["text"].endswith(f".{part}.weight") and f".{layer}." in row["text"], row
        assert row["title"].startswith(row["name"] + ":")
    assert len({row["text"] for row in rows}) == len(rows)
    shoot(frame.locator(".timeline"), "timeline-long-names.png")
