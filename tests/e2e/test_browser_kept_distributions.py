"""End to end: Distributions opened on a finished run reaches back over its kept frames (GET history/stats).

The run's frames were all written before the page opened, so the page receives one frame live; the
histogram and sparklines hold every kept frame of the run nonetheless, oldest first.
"""

from __future__ import annotations

import numpy as np
from server_support import BROWSER_MARKS, beholder_tab, set_config, wait_for

from beholder_plugin import Beholder
from beholder_plugin.protocol.history import list_history

pytestmark = BROWSER_MARKS
FRAMES = 12


def test_distributions_of_a_finished_run_hold_its_kept_frames(tmp_path):
    logdir = tmp_path / "logs"
    run = logdir / "done"
    run.mkdir(parents=True)
    set_config(run, values="arrays", mode="current", FPS=30)
    with Beholder(str(run), background=False) as beholder:
        for step in range(1, FRAMES + 1):
            beholder.frame_due_now()
            w = np.full((4, 4), float(step), np.float32)
            beholder.update(arrays={"w": w, "b": np.arange(3.0) * step})
    kept = [f"{e.writer}-{e.frame_id}" for e in list_history(run)]
    assert len(kept) == FRAMES
    with beholder_tab(logdir) as (_tb, _page, frame):
        wait_for(lambda: frame.evaluate("window.beholder.run") == "done"
                 and frame.evaluate("window.beholder.frameId"), message="the run shown")
        assert frame.is_disabled("#compare-select")  # the only run: nothing to compare it with, as it says
        assert frame.inner_text("#compare-select").strip() == "(no other run)"
        frame.check("input[name=view][value=distributions]")
        drawn = wait_for(lambda: (d := frame.evaluate("window.beholderDebug.distributions()").get("w"))
                         and len(d["frames"]) == FRAMES and d, message=f"{FRAMES} frames of w drawn")
        assert [f["key"] for f in drawn["frames"]] == kept
        assert [f["step"] for f in drawn["frames"]] == list(range(1, FRAMES + 1))
        histogram = '.dist-panel[data-name="w"] canvas.dist-hist'
        assert frame.get_attribute(histogram, "data-frames") == str(FRAMES)
        assert frame.get_attribute(histogram, "data-axis") == "step"  # kept frames placed by their step
        assert f"by step, 1 (left) to {FRAMES} (right)" in frame.inner_text('.dist-panel[data-name="w"]')
        assert frame.get_attribute("#dist-kind", "data-reach") == str(FRAMES)
        assert "reaching back to step 1" in frame.inner_text("#dist-kind")
