"""watch() under faults: models that change after watch(), hooks that fail, unwatch() mid-step."""

from __future__ import annotations

import numpy as np
import pytest
from support import assert_sections_hold, run_script, set_config

from beholder_plugin import Beholder
from beholder_plugin.protocol.runfiles import read_frame_file
from beholder_plugin.trainer import sources

torch = pytest.importorskip("torch")
nn = torch.nn


def step(model, x=None) -> None:
    """A forward and backward pass (no optimizer: the values stay put)."""
    x = torch.ones(2, 4) if x is None else x
    model.zero_grad()
    model(x).sum().backward()


def frame_after_two_steps(beholder, model, x=None):
    """Arm, step, write: the frame's section records."""
    beholder.frame_due_now()
    beholder.update()  # armed
    step(model, x)
    assert beholder.update()
    return read_frame_file(beholder.logdir).sections


def test_layers_added_and_replaced_after_watch_are_shown(run_dir):
    set_config(run_dir, values="activations", mode="current", FPS=30)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh())
    with Beholder(run_dir, strict=True, background=False) as beholder:
        beholder.watch(model)
        assert [r["name"] for r in frame_after_two_steps(beholder, model)] == ["0", "1"]
        model.append(nn.Linear(3, 2))  # a new layer
        old = model[0]
        model[0] = nn.Linear(4, 3)  # a replaced one
        assert [r["name"] for r in frame_after_two_steps(beholder, model)] == ["0", "1", "2"]
        set_config(run_dir, values="gradients", mode="current", FPS=30)
        model.zero_grad()  # no gradient at hand: the hooks, armed on the model as it is now, catch them
        sections = frame_after_two_steps(beholder, model)
        assert [r["name"] for r in sections] == ["0.weight", "0.bias", "2.weight", "2.bias"]
        assert all("missing" not in r for r in sections)  # the replaced layer's new parameters are hooked
        # the frame taken, no hook is left anywhere: not on the model, not on the layer it dropped
        assert [len(m._forward_hooks) for m in (*model, old)] == [0, 0, 0, 0]
        assert not any(p._post_accumulate_grad_hooks for p in model.parameters())


def test_a_layer_added_is_read_from_grad_at_the_next_frame(run_dir):
    set_config(run_dir, values="gradients", mode="current", FPS=30)
    model = nn.Sequential(nn.Linear(4, 3))
    with Beholder(run_dir, strict=True, background=False) as beholder:
        beholder.watch(model)
        step(model)
        beholder.frame_due_now()
        assert beholder.update()  # the parameter list walked (and kept for a while)
        model.append(nn.Linear(3, 2))
        step(model)
        beholder.frame_due_now()
        assert beholder.update()  # not a stale list: the new layer's module registration is noticed
    names = [r["name"] for r in read_frame_file(run_dir).sections]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias"]


def test_layers_frozen_or_unfrozen_after_watch_are_hooked_as_they_are(run_dir, monkeypatch):
    """Gradients caught by hooks: a layer frozen since the parameter list was walked gets no hook (torch
    refuses one on a tensor that takes no gradient) and its section says why; one unfrozen shows
    once the list is walked again (VARIABLES_REFRESH_SECONDS)."""
    from beholder_plugin.trainer import watch as watch_module

    set_config(run_dir, values="gradients", mode="current", FPS=30)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    model[2].bias.requires_grad_(False)
    with Beholder(run_dir, strict=True, background=False) as beholder:
        beholder.watch(model)
        assert [r["name"] for r in frame_after_two_steps(beholder, model)] == ["0.weight", "0.bias",
                                                                             "2.weight"]
        model[0].bias.requires_grad_(False)  # frozen: the list walked before still names it
        model[2].bias.requires_grad_(True)  # unfrozen: not in that list yet
        model.zero_grad()  # no gradient at hand: the hooks catch them
        sections = {r["name"]: r for r in frame_after_two_steps(beholder, model)}
        assert list(sections) == ["0.weight", "0.bias", "2.weight"]
        assert "frozen" in sections["0.bias"]["missing"]
        assert "missing" not in sections["0.weight"] and "missing" not in sections["2.weight"]
        monkeypatch.setattr(watch_module, "VARIABLES_REFRESH_SECONDS", 0.0)
        model.zero_grad()
        sections = {r["name"]: r for r in frame_after_two_steps(beholder, model)}
        assert list(sections) == ["0.weight", "2.weight", "2.bias"]
        assert not any("missing" in r for r in sections.values())
    assert not any(p._post_accumulate_grad_hooks for p in model.parameters())


def test_a_walk_that_finds_the_same_parameters_hands_back_the_same_list(run_dir, monkeypatch):
    """A frame's memos know the watch's list by identity (no look at each entry): walking again must not
    make a new list unless something changed, and must when something did."""
    from beholder_plugin.trainer import watch as watch_module

    monkeypatch.setattr(watch_module, "VARIABLES_REFRESH_SECONDS", 0.0)  # every call walks
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    with Beholder(run_dir, background=False) as beholder:
        beholder.watch(model)
        watch = beholder.watched
        first = watch.variables()
        assert watch.variables() is first
        model[2].bias.requires_grad_(False)  # frozen: no longer a trainable variable
        frozen = watch.variables()
        assert frozen is not first and [name for name, *_ in frozen] == ["0.weight", "0.bias", "2.weight"]
        assert watch.variables() is frozen
        model[0].weight = nn.Parameter(torch.zeros(3, 4))  # replaced: same name, another parameter
        replaced = watch.variables()
        assert replaced is not frozen and replaced[0][1] is model[0].weight


def test_a_model_cast_to_another_dtype_is_still_shown(run_dir):
    set_config(run_dir, values="gradients", mode="current", FPS=30)
    model = nn.Sequential(nn.Linear(4, 3))
    with Beholder(run_dir, strict=True, background=False) as beholder:
        beholder.watch(model)
        model.double()
        sections = frame_after_two_steps(beholder, model, torch.ones(2, 4, dtype=torch.float64))
    assert [r["name"] for r in sections] == ["0.weight", "0.bias"]
    frame = read_frame_file(run_dir)
    np.testing.assert_array_equal(frame.section_values(1).reshape(-1), np.full(3, 2.0, np.float32))


def test_a_failing_capture_is_an_empty_section_and_training_goes_on(run_dir, monkeypatch):
    set_config(run_dir, values="activations", mode="current", FPS=30)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh())
    real = sources.gather_into

    def broken(source, tensor, plan, out, name):
        if name == "1":
            raise RuntimeError("the device went away")
        return real(source, tensor, plan, out, name)

    monkeypatch.setattr(sources, "gather_into", broken)
    with Beholder(run_dir, background=False) as beholder:
        beholder.watch(model)
        sections = frame_after_two_steps(beholder, model)  # no exception into the forward pass
        assert beholder.failures == 0
    assert "missing" not in sections[0]
    assert sections[1]["missing"] == "RuntimeError: the device went away"
    with Beholder(run_dir, strict=True, background=False) as strict:
        strict.watch(model)
        strict.frame_due_now()
        strict.update()
        with pytest.raises(RuntimeError, match="the device went away"):
            step(model)  # strict: the hook's error reaches the training loop


def test_a_forward_pass_that_raises_leaves_beholder_ready_for_the_next(run_dir):
    set_config(run_dir, values="activations", mode="current", FPS=30)

    class Flaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.fail = True

        def forward(self, x):
            out = self.fc(x)
            if self.fail:
                raise ValueError("bad batch")
            return out

    model = Flaky()
    with Beholder(run_dir, strict=True, background=False) as beholder:
        beholder.watch(model)
        beholder.update()  # armed
        with pytest.raises(ValueError, match="bad batch"):
            step(model)
        model.fail = False
        step(model)  # the hooks are still armed and capture this step
        assert beholder.update()
        assert [r["name"] for r in read_frame_file(run_dir).sections] == ["fc"]
        assert [r["name"] for r in frame_after_two_steps(beholder, model)] == ["fc"]  # and so on


def test_unwatch_while_armed_or_inside_backward_is_safe(run_dir):
    set_config(run_dir, values="gradients", mode="current", FPS=30)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with Beholder(run_dir, strict=True, background=False) as beholder:
        beholder.watch(model)
        beholder.update()  # armed
        x = torch.ones(2, 4, requires_grad=True)
        out = model(x)
        out.register_hook(lambda grad: beholder.unwatch())  # during backward, before any parameter's
        out.sum().backward()
        assert beholder.watched is None
        assert all(not p._post_accumulate_grad_hooks for p in model.parameters()
                   if getattr(p, "_post_accumulate_grad_hooks", None) is not None)
        beholder.frame_due_now()
        assert beholder.update()  # no watch any more: the placeholder that says what to do
    assert read_frame_file(run_dir).header["values"] == "placeholder"


def test_activations_when_no_layer_ran_show_why_instead_of_failing(run_dir):
    """Armed, but the model was not called before the next update(): the frame says so (no failure)."""
    set_config(run_dir, values="activations", mode="current", FPS=30)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh())
    with Beholder(run_dir, background=False) as beholder:
        beholder.watch(model)
        beholder.frame_due_now()
        assert beholder.update() is False  # arms the hooks for the coming step
        assert beholder.update()  # ... which never called the model
        assert beholder.failures == 0
    sections = read_frame_file(run_dir).sections
    assert [s["name"] for s in sections] == ["activations"]
    assert "no layer ran" in sections[0]["missing"] and "torch.compile" in sections[0]["missing"]


@pytest.mark.parametrize("batched", [False, True])
def test_gradients_freed_by_an_optimizer_in_backward_never_reach_the_backward_pass(run_dir, monkeypatch,
                                                                                  batched):
    """The optimizer run inside backward (a post-accumulate-grad hook that steps a parameter and frees its
    .grad, as PyTorch's tutorial shows): the gradients are gone when the backward pass ends, where the
    hooked gradients are copied. backward() never sees an error from it; the frame's sections say the
    gradients were freed during it, and the next frames too."""
    from beholder_plugin.trainer.sources import torch_batch

    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
    set_config(run_dir, values="gradients", mode="current", FPS=30)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    optimizers = {p: torch.optim.SGD([p], lr=0.1) for p in model.parameters()}

    def step_and_free(param) -> None:
        optimizers[param].step()
        param.grad = None

    for p in model.parameters():
        p.register_post_accumulate_grad_hook(step_and_free)
    with Beholder(run_dir, background=False) as beholder:
        beholder.watch(model, activations=False)
        for _ in range(3):
            beholder.frame_due_now()
            assert not beholder.update()  # no .grad at hand: armed for the next backward pass
            model(torch.ones(2, 4)).sum().backward()
            assert beholder.update()
            sections = read_frame_file(run_dir).sections
            assert [s["name"] for s in sections] == ["0.weight", "0.bias", "2.weight", "2.bias"]
            assert all("freed during the backward pass" in s["missing"] for s in sections), sections
        assert beholder.failures == 0


def test_the_end_of_backward_copy_run_twice_keeps_what_the_first_took(monkeypatch):
    """Hooks on two GPUs' autograd threads can both find no end-of-backward copy queued and queue it
    twice: the second run finds nothing arrived and leaves the first's copies and norms alone."""
    from beholder_plugin.trainer.sources import torch_batch
    from beholder_plugin.trainer.watch import Watch

    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    watch = Watch(model)
    watch.arm("gradients", False)
    model(torch.ones(5, 4)).sum().backward()
    captured, norms = dict(watch.captured), list(watch._arrived_norms)
    assert set(captured) == {"0.weight", "0.bias", "1.weight", "1.bias"} and norms
    watch._after_backward()  # the second, queued by another thread
    assert watch.captured == captured and watch._arrived_norms == norms
    watch.close()


FREED = """
import os, sys
os.environ["BEHOLDER_BATCH_CPU_TENSORS"] = sys.argv[2]
import torch
from beholder_plugin import Beholder, write_config, DEFAULT_CONFIG, read_timeline
from beholder_plugin.protocol.runfiles import read_frame_file

run = sys.argv[1]
write_config(run, {**DEFAULT_CONFIG, "values": "arrays", "FPS": 30, "mode": "current"})
p = torch.nn.Parameter(torch.randn(6, 7))
q = torch.nn.Parameter(torch.full((7,), 2.0))
r = torch.nn.Parameter(torch.randn(300, 40))
view = torch.randn(8, 7)[2:]  # a view at an offset: its data_ptr() is not 0 once freed
with Beholder(run, background=False) as beholder:
    for _ in range(3):  # the same tensors each frame: the memo and the per-step check keep them
        beholder.frame_due_now()
        assert beholder.update(arrays={"p": p, "q": q, "r": r})
    p.untyped_storage().resize_(0)  # freed in place, as FSDP frees a gathered parameter
    r.untyped_storage().resize_(40)  # shrunk to its first ten values
    view.untyped_storage().resize_(0)
    beholder.update(arrays={"p": p, "q": q, "r": r})  # a step: the per-step check
    beholder.frame_due_now()
    assert beholder.update(arrays={"p": p, "q": q, "r": r})
    first = read_frame_file(run)
    beholder.frame_due_now()
    assert beholder.update(arrays={"view": view, "q": q})  # a new frame plan: the full path
    second = read_frame_file(run)
for frame in (first, second):
    print([(s["name"], "freed" in (s.get("missing") or "")) for s in frame.sections])
print(float(first.section_values(1).max()), round(float(read_timeline(run)["q"]["norm"][-1]) ** 2, 3))
"""


@pytest.mark.parametrize("batched", ["1", "0"])
def test_a_tensor_whose_memory_was_freed_is_refused_without_crashing(run_dir, batched):
    """Tensors whose storage was resized to nothing (FSDP frees a gathered parameter so after forward),
    or shrunk below the tensor, while Beholder keeps them (the memo, the per-step check) or when first
    passed: their sections say so, the others are shown, with their exact norms. Before, torch's norm
    read the freed memory and the process died of a segmentation fault (in a subprocess here for that
    reason); a shrunk tensor's frame showed what lay past its memory."""
    out = run_script(FREED, run_dir, batched)
    assert out.returncode == 0, (out.returncode, out.stderr[-3000:])
    assert out.stdout.splitlines() == ["[('p', True), ('q', False), ('r', True)]",
                                       "[('view', True), ('q', False)]", "2.0 28.0"]


@pytest.mark.parametrize("values", ["trainable_variables", "activations"])
@pytest.mark.parametrize("path", ["host", "device", "graphs"])
def test_frames_taken_inside_inference_mode_keep_training_frames_whole(run_dir, monkeypatch, values, path):
    """update() called inside torch.inference_mode() (an evaluation loop), with the background worker:
    the buffers and per-step check state Beholder makes then are normal tensors, so the worker and
    the training steps after it can write them. Before, on the device path every frame failed on
    the worker ("Inplace update to inference tensor outside InferenceMode"), the per-step check
    turned off for the run, and the training frames after it were empty."""
    from beholder_plugin.trainer.sources import torch_batch

    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", path != "host")
    monkeypatch.setattr(torch_batch, "CPU_GRAPHS", path == "graphs")
    set_config(run_dir, values=values, mode="current", FPS=1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh())
    x = torch.randn(2, 4)
    with Beholder(run_dir) as beholder:
        beholder.watch(model)
        for phase in ("evaluation", "training"):
            for _ in range(4):
                if phase == "evaluation":
                    with torch.inference_mode():
                        model(x)
                        beholder.frame_due_now()
                        beholder.update()
                else:
                    step(model, x)
                    beholder.frame_due_now()
                    beholder.update()
                beholder.flush()
            if phase == "evaluation":
                assert beholder.frames_written >= 2
        assert beholder.failures == 0 and beholder.frames_written >= 4  # (activations: every other step)
        if values == "trainable_variables" and path != "host":
            assert beholder.timeline.per_step  # (the per-step check is still on)
    frame = read_frame_file(run_dir)
    assert all("missing" not in record for record in frame.sections)
    want = model[0].weight if values == "trainable_variables" else model[0](x)
    shown, want = np.sort(frame.section_values(0).ravel()), np.sort(want.detach().numpy().ravel())
    np.testing.assert_array_equal(shown, want)


class _FailingBackward(torch.autograd.Function):
    """Identity whose backward raises while ``fail`` is set (an out-of-memory batch, a collective error)."""

    fail = False

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        if _FailingBackward.fail:
            raise RuntimeError("out of memory (simulated)")
        return grad


def test_a_backward_pass_that_raises_leaves_the_gradient_hooks_working(run_dir):
    """Hooked gradients (cleared after each step): a backward pass that raises after some hooks ran (the
    loop catches it and retries the batch) never reaches its end; the retry's gradients are caught, and
    so are every later step's. Before, the first pass's unfinished end left the hooks waiting for it
    for the rest of the run: every gradient frame said "no gradient this step"."""
    set_config(run_dir, values="gradients", mode="current", FPS=30)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    with Beholder(run_dir, strict=True) as beholder:
        beholder.watch(model)
        for step in range(8):
            x = torch.randn(4, 6, generator=gen)
            _FailingBackward.fail = step in (3, 5)
            try:
                model(_FailingBackward.apply(x.requires_grad_())).sum().backward()
            except RuntimeError:  # (2.weight's hook ran before the failure)
                _FailingBackward.fail = False
                opt.zero_grad(set_to_none=True)
                model(_FailingBackward.apply(x)).sum().backward()  # the batch again
            truth = {name: p.grad.clone() for name, p in model.named_parameters()}
            opt.step()
            opt.zero_grad(set_to_none=True)  # (gone before update(): the hooks catch them)
            beholder.frame_due_now()
            if beholder.update():
                beholder.flush()
                assert_sections_hold(read_frame_file(run_dir), truth)
        assert beholder.frames_written == 4 and beholder.failures == 0
