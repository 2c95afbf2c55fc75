"""End to end: the Distributions view and the Name scopes tree follow the kind of values shown.

Under watch(model) the weights and their gradients are sections of the same names ("0.weight"), and
activations are named after modules ("0", "1", "2"). A real TensorBoard and Debian's Chromium show one
run whose frames this test writes itself (a tiny PyTorch model, background=False), switching the
dashboard's Values control between frames. The tests share one page and run in file order.
"""

from __future__ import annotations

import pytest
from server_support import BROWSER_MARKS, beholder_tab, read_config_file, set_config, shoot, wait_for

from beholder_plugin import Beholder
from beholder_plugin.protocol.runfiles import read_frame_file

pytestmark = BROWSER_MARKS
torch = pytest.importorskip("torch")
nn = torch.nn

WEIGHTS = ["0.weight", "0.bias", "2.weight", "2.bias"]


class Model:
    """A tiny MLP under watch(), training one step per frame."""

    def __init__(self, run):
        torch.manual_seed(0)
        self.run = run
        self.model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.beholder = Beholder(str(run), background=False)
        self.beholder.watch(self.model)

    def frame(self, values: str) -> dict:
        """Train until a frame of `values` is written (the first after a switch may be of the old ones)."""
        for _ in range(5):
            self.optimizer.zero_grad()
            x, y = torch.randn(8, 6), torch.randint(0, 2, (8,))
            nn.functional.cross_entropy(self.model(x), y).backward()
            self.optimizer.step()
            self.beholder.frame_due_now()
            self.beholder.update()
            head = read_frame_file(self.run).header
            if head["values"] == values:
                return read_frame_file(self.run)
        raise AssertionError(f"no frame of {values}")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A run of weights frames, TensorBoard on it, and the tab showing its Distributions view."""
    logdir = tmp_path_factory.mktemp("logs")
    run = logdir / "mlp"
    set_config(run, values="trainable_variables", mode="current", FPS=30)
    model = Model(run)
    model.frame("trainable_variables")
    try:
        with beholder_tab(logdir) as (_tb, page, frame):
            wait_for(lambda: frame.evaluate("window.beholder.run") == "mlp"
                     and frame.evaluate("window.beholder.frameId"), message="the run shown")
            frame.check("input[name=view][value=distributions]")
            yield {"run": run, "model": model, "page": page, "frame": frame}
    finally:
        model.beholder.close()


def data(frame) -> dict:
    """What the distributions view draws, by section name."""
    return frame.evaluate("window.beholderDebug.distributions()")


def show(session, values: str):
    """Write a frame of `values` and wait until the dashboard has taken its section table; the frame file."""
    f = session["model"].frame(values)
    key = f"{f.header['writer']}-{f.header['frame_id']}"
    wait_for(lambda: any(d["frames"] and d["frames"][-1]["key"] == key
                         for d in data(session["frame"]).values()),
             message=f"the table of frame {key} ({values})")
    return f


def choose_values(session, values: str) -> None:
    """Pick a Values choice in the toolbar, as a user does; wait until the run's config says it."""
    session["frame"].check(f"input[name=values][value={values}]")
    wait_for(lambda: read_config_file(session["run"])["values"] == values, message=f"values {values}")


def keys(frame, name: str) -> list[str]:
    return [entry["key"] for entry in data(frame)[name]["frames"]]


def key_of(f) -> str:
    return f"{f.header['writer']}-{f.header['frame_id']}"


def test_distributions_keep_one_history_per_kind_of_values(session):
    frame, page = session["frame"], session["page"]
    weights = [show(session, "trainable_variables") for _ in range(3)]
    panel = '.dist-panel[data-name="0.weight"]'
    weight_keys = keys(frame, "0.weight")
    assert weight_keys[-3:] == [key_of(f) for f in weights]

    choose_values(session, "gradients")
    gradients = [show(session, "gradients") for _ in range(3)]
    # The panel of 0.weight now is the gradient's: its own history, range and title.
    assert keys(frame, "0.weight") == [key_of(f) for f in gradients]
    assert frame.get_attribute(panel, "data-values") == "gradients"
    assert "Gradients" in frame.inner_text(f"{panel} .dist-title")
    assert "Gradients" in frame.inner_text("#dist-kind")
    hists = [next(r["stats"]["hist"] for r in f.sections if r["name"] == "0.weight") for f in gradients]
    want = {"lo": min(h["lo"] for h in hists), "hi": max(h["hi"] for h in hists)}
    assert data(frame)["0.weight"]["range"] == pytest.approx(want)
    steps = f"steps {gradients[0].header['step']} to {gradients[-1].header['step']}"
    assert f"3 frames of gradients, {steps}" in frame.inner_text(panel)
    shoot(page, "values-kinds-distributions-gradients.png")

    # Back to the weights: their history again, continued.
    choose_values(session, "trainable_variables")
    again = show(session, "trainable_variables")
    assert keys(frame, "0.weight") == [*weight_keys, key_of(again)]
    assert "Trainable variables" in frame.inner_text("#dist-kind")
    assert frame.get_attribute(panel, "data-values") == "trainable_variables"
    assert "Trainable variables" in frame.inner_text(f"{panel} .dist-title")
    shoot(page, "values-kinds-distributions-weights-again.png")


def scopes(frame) -> set[str]:
    """The scopes and sections the Name scopes tree lists."""
    return set(frame.eval_on_selector_all("#scope-tree .scope", "els => els.map((e) => e.dataset.scope)"))


def test_name_scopes_list_the_kind_of_values_shown(session):
    frame, page, run = session["frame"], session["page"], session["run"]
    choose_values(session, "trainable_variables")
    show(session, "trainable_variables")
    wait_for(lambda: set(WEIGHTS) <= scopes(frame), message="the weights in the tree")
    # The user hides the scope "2" (the second Linear: its weight and bias; among activations, its output).
    frame.uncheck('#scope-tree input[data-scope="2"]')
    wait_for(lambda: read_config_file(run)["filter"] == "\n2", message="the scope 2 hidden")
    show(session, "trainable_variables")

    choose_values(session, "activations")
    show(session, "activations")
    # The activations' modules only; "2" still listed, unticked (still hidden: it exists among activations).
    assert scopes(frame) == {"0", "1", "2"}
    assert not frame.is_checked('#scope-tree input[data-scope="2"]')
    assert read_config_file(run)["filter"] == "\n2"
    shoot(frame.locator("#sections-group"), "values-kinds-tree-activations.png")

    choose_values(session, "trainable_variables")
    show(session, "trainable_variables")
    # The weights' names again, none of the activations' ("1" is the ReLU's output); "2" still hidden.
    assert scopes(frame) == {"0", "2", *WEIGHTS}
    assert not frame.is_checked('#scope-tree input[data-scope="2"]')
    shoot(page, "values-kinds-tree-weights-again.png")
