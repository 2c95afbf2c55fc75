"""Setup mistakes are said once, at construction (issue 21, item 7), like a missing remote backend."""

from __future__ import annotations

import os

import numpy as np
import pytest

from beholder_plugin import Beholder


@pytest.mark.parametrize("where", ["logdir", "parent", "plugins"])
def test_a_logdir_that_cannot_be_a_directory_raises_at_construction(tmp_path, where):
    """It used to log "[Errno 20] Not a directory" at every write, and update() went on failing quietly."""
    if where == "logdir":
        logdir = tmp_path / "events.out"
        logdir.write_text("not a directory")
        blocker = logdir
    elif where == "parent":
        (tmp_path / "notes.txt").write_text("x")
        logdir, blocker = tmp_path / "notes.txt" / "run", tmp_path / "notes.txt"
    else:
        logdir = tmp_path / "run"
        logdir.mkdir()
        blocker = logdir / "plugins"
        blocker.write_text("x")
    with pytest.raises(NotADirectoryError, match="Pass a directory") as caught:
        Beholder(logdir)
    assert repr(str(blocker)) in str(caught.value) and "logdir" in str(caught.value)
    assert blocker.read_text() in ("not a directory", "x")  # nothing was touched
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))


def test_a_missing_logdir_is_still_created(tmp_path):
    with Beholder(tmp_path / "a" / "b", strict=True, background=False) as beholder:
        assert beholder.update(arrays={"w": [1.0, 2.0]})
    assert (tmp_path / "a" / "b" / "plugins" / "beholder" / "frame.bin").is_file()


def test_watch_shows_the_layers_named_and_refuses_names_the_model_lacks(tmp_path):
    """activations=[...] picks layers by module path. A misspelt one used to be hooked never: every frame
    said the model most likely ran a stale compiled graph, and reset every compiled function in the
    process. A string (one name, unlisted) was taken as 'all layers'."""
    torch = pytest.importorskip("torch")
    from support import set_config

    from beholder_plugin.protocol.runfiles import read_frame_file

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    run = str(tmp_path)
    set_config(run, values="activations", mode="current", FPS=30)
    with Beholder(run, strict=True) as beholder:
        with pytest.raises(ValueError, match=r"no module named 'lin1', 'relu'; its modules are: 0, 1, 2$"):
            beholder.watch(model, activations=["0", "lin1", "relu"])
        with pytest.raises(TypeError, match=r"got '0' \(one name: \['0'\]\)"):
            beholder.watch(model, activations="0")
        beholder.watch(model, activations=["0", "2"])
        x = torch.randn(3, 4)
        for _ in range(3):  # (the frame due arms the hooks; the next step's forward fills them)
            beholder.frame_due_now()
            model(x)
            beholder.update()
        beholder.flush()
    frame = read_frame_file(run)
    assert [rec["name"] for rec in frame.sections] == ["0", "2"]
    assert frame.section_values(1).shape == (3, 2)  # (batch, outputs): the last layer's output, whole
    np.testing.assert_array_equal(frame.section_values(1), model(x).detach().numpy())


def test_watch_refuses_keras_layer_names_the_model_lacks(tmp_path):
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="hidden"),
                              keras.layers.Dense(2, name="out")], name="misnamed")  # (named: doctests)
    with Beholder(str(tmp_path)) as beholder:
        with pytest.raises(ValueError, match=r"no layer named 'hiden'; its layers are: hidden, out$"):
            beholder.watch(model, probe=np.ones((2, 4), np.float32), activations=["hiden"])


def test_watching_a_second_model_says_it_replaces_the_first(tmp_path, caplog):
    """A GAN's watch(G) then watch(D) showed D alone, with names that did not tell which it was."""
    import logging

    torch = pytest.importorskip("torch")
    generator, discriminator = torch.nn.Linear(2, 3), torch.nn.Linear(3, 1)
    with Beholder(str(tmp_path)) as beholder, caplog.at_level(logging.WARNING, logger="beholder"):
        beholder.watch(generator)
        beholder.watch(generator)  # (the same model again: nothing to say)
        assert "replaces" not in caplog.text
        beholder.watch(discriminator)
        assert beholder.watched.model is discriminator
    assert caplog.text.count("watch() replaces the model watched so far") == 1
    assert "torch.nn.ModuleDict({'G': G, 'D': D})" in caplog.text


@pytest.mark.parametrize("dropped", [True, False])
def test_a_notebook_cell_run_again_leaves_one_beholder_hooking_the_model(tmp_path, caplog, dropped):
    """A cell making a Beholder and watching the model, run twice: the first Beholder's hooks stayed on the
    model (dropped and collected, or still open), capturing every forward beside the new one's."""
    import gc
    import logging

    from support import set_config

    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    hooks = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())  # noqa: E731
    set_config(tmp_path, values="activations", FPS=30, mode="current")
    with caplog.at_level(logging.WARNING, logger="beholder"):
        first = Beholder(str(tmp_path), background=False)
        first.watch(model)
        first.update()  # (a frame due: the activation hooks are armed)
        one = hooks()
        assert one > 0
        if dropped:
            first = None
            gc.collect()
        second = Beholder(str(tmp_path), background=False)
        second.watch(model)
        second.update()
        assert hooks() == one  # (the first one's hooks are gone)
    assert "was watched by another Beholder" in caplog.text
    if not dropped:
        assert first.watched is None  # (it shows no model now)
        first.close()
    second.close()
    assert hooks() == 0


def test_two_open_beholders_of_two_runs_both_watch_one_model(tmp_path, caplog):
    """One model shown in two runs (its weights in one, its activations in another): both Beholders keep
    their hooks and their frames; a third on the first run's logdir replaces only the first."""
    import logging

    from support import set_config

    from beholder_plugin.protocol.runfiles import read_frame_file

    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    runs = [str(tmp_path / "weights"), str(tmp_path / "acts")]
    set_config(runs[0], values="trainable_variables", FPS=30, mode="current")
    set_config(runs[1], values="activations", FPS=30, mode="current")
    with caplog.at_level(logging.WARNING, logger="beholder"):
        beholders = [Beholder(run, background=False) for run in runs]
        for beholder in beholders:
            beholder.watch(model)
        for beholder in beholders:
            beholder.update()  # (the activation hooks are armed for the next forward)
            beholder.frame_due_now()
        model(torch.ones(2, 4))
        for beholder in beholders:
            assert beholder.update()
        assert "was watched by another Beholder" not in caplog.text
        assert [b.watched is not None for b in beholders] == [True, True]
        shown = [read_frame_file(run).header["values"] for run in runs]
        assert shown == ["trainable_variables", "activations"]
        third = Beholder(runs[0], background=False)
        third.watch(model)
        assert caplog.text.count("was watched by another Beholder") == 1
        assert [b.watched is not None for b in beholders] == [False, True]
    for beholder in [*beholders, third]:
        beholder.close()


def test_a_logdir_under_home_or_given_as_bytes_is_where_it_says(tmp_path, monkeypatch):
    """'~/runs/x' made a directory named '~' in the working directory; b'logs/x' failed with 'a bytes-like
    object is required, not str'."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with Beholder("~/runs/x") as beholder:
        assert beholder.logdir == str(tmp_path / "home" / "runs" / "x")
    assert not os.path.exists(tmp_path / "~")
    with Beholder(b"logs/y") as beholder:
        assert os.path.abspath(beholder.logdir) == str(tmp_path / "logs" / "y")


OTHER_TRAINER = """
import sys, time
import numpy as np
from beholder_plugin import Beholder
b = Beholder(sys.argv[1], background=False)
b.update(arrays={"w": np.ones((3, 3))})
print("wrote", flush=True)
if sys.argv[2] == "stays":
    time.sleep(120)
"""


def test_a_second_trainer_on_a_run_another_one_writes_to_is_warned(tmp_path, caplog, monkeypatch):
    """Two trainers on one run directory take turns in frame.bin and merge their timelines, with no error
    anywhere; the second one's Beholder says so when it opens the run. Not when the other's last frame
    is older (a restarted trainer), nor when the other closed its Beholder (it exited: ended.json names
    it), nor for a closed Beholder of this process; an open one of this process (a notebook cell run
    again) is named as such. Two trainers started together: the second to write its first frame says
    so."""
    import logging
    import subprocess
    import sys

    from support import set_config

    from beholder_plugin.trainer import run_store

    run = str(tmp_path)
    set_config(run, values="arrays", FPS=30, mode="current")

    def opened() -> str:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="beholder"):
            Beholder(run, background=False).close()
        return caplog.text

    other = subprocess.Popen([sys.executable, "-c", OTHER_TRAINER, run, "stays"], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert other.stdout.readline().strip() == "wrote"
        text = opened()
        assert "another trainer (writer " in text and "its own run directory" in text
    finally:
        other.kill()
        other.wait()
    # two trainers started together: neither had a frame when the other opened the run; the second to
    # write its first frame says so
    together = str(tmp_path / "together")
    set_config(together, values="arrays", FPS=30, mode="current")
    with Beholder(together, background=False) as mine:
        other = subprocess.Popen([sys.executable, "-c", OTHER_TRAINER, together, "stays"],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert other.stdout.readline().strip() == "wrote"
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="beholder"):
                for _ in range(2):  # (said once)
                    mine.frame_due_now()
                    assert mine.update(arrays={"w": np.ones((3, 3))})
            assert caplog.text.count("another trainer (writer ") == 1
        finally:
            other.kill()
            other.wait()
    finished = subprocess.run([sys.executable, "-c", OTHER_TRAINER, run, "exits"], capture_output=True,
                              text=True, timeout=120)
    assert finished.stdout.strip() == "wrote"
    assert "another" not in opened()  # it closed its Beholder at exit
    with Beholder(run, background=False) as first:
        assert first.update(arrays={"w": np.ones((3, 3))})
        text = opened()
        assert "another Beholder of this process (writer " in text and "close() it" in text
        assert "another trainer" not in text
        monkeypatch.setattr(run_store, "OTHER_WRITER_SECONDS", 0.0)  # (the other's frame: long ago)
        assert "another" not in opened()
        monkeypatch.undo()
    assert "another" not in opened()  # a closed Beholder of this process


def test_a_closed_beholder_lets_its_model_go(tmp_path):
    """The one-Beholder-a-model table held each watched model (through its Watch) for good: a notebook
    cell run five times kept five models, on a GPU their memory too."""
    import gc
    import weakref

    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    alive = weakref.ref(model)
    with Beholder(str(tmp_path), background=False) as beholder:
        beholder.watch(model)
    del model
    gc.collect()
    assert alive() is None


def test_variables_of_a_kind_beholder_cannot_read_raise_at_construction(tmp_path):
    """variables= that no frame could read (a Flax linen module, which holds no arrays; a lone array; a
    number) raise TypeError when the Beholder is made, saying what to pass, before anything is written;
    they were accepted and every frame then failed."""
    nn = pytest.importorskip("flax.linen")

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(x)

    with pytest.raises(TypeError, match=r"Flax linen module \(MLP\).*model\.init\(\)"):
        Beholder(str(tmp_path / "linen"), variables=MLP())
    for wrong in (np.ones(3), 42):
        with pytest.raises(TypeError, match="variables must be .*pytree of arrays"):
            Beholder(str(tmp_path / "other"), variables=wrong)
    assert not os.path.exists(tmp_path / "linen") and not os.path.exists(tmp_path / "other")
    with Beholder(str(tmp_path / "params"), variables={"dense": {"kernel": np.ones((2, 3))}}) as beholder:
        assert beholder.variables is not None  # a pytree of arrays is taken
