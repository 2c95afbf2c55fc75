"""PyTorch: module parameters get their layouts, and watch() shows weights, gradients and activations."""

from __future__ import annotations

import gc
import json
import logging
import os
import weakref

import numpy as np
import pytest
from pixel_checks import check_sampled_pixels
from support import due, run_script, set_config

from beholder_plugin import Beholder, read_timeline
from beholder_plugin.protocol.frame_format import value_at
from beholder_plugin.protocol.layout import locate
from beholder_plugin.protocol.names import plugin_dir
from beholder_plugin.protocol.runfiles import frame_path, read_config, read_ended, read_frame_file

torch = pytest.importorskip("torch")
nn = torch.nn


def small_cnn(frozen: bool = False) -> nn.Module:
    """conv (8, 1, 3, 3) -> relu -> pool -> linear (10, 8 * 13 * 13); optionally a frozen extra layer."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 13 * 13, 10)
    )
    if frozen:
        model.append(nn.Linear(10, 10))
        model[5].weight.requires_grad_(False)  # frozen: its gradient never arrives
    return model


def train_step(model, opt, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a random batch; returns the batch and the labels."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (4,), generator=gen)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    return x, y


def test_module_parameters_are_drawn_in_torch_axis_order(run_dir, flushed_updates):
    set_config(run_dir, values="trainable_variables", mode="current", FPS=30)
    model = small_cnn()
    with Beholder(run_dir, variables=model, strict=True) as beholder:
        assert beholder.update()
    frame = read_frame_file(run_dir)
    layouts = {rec["name"]: (rec["layout"], rec["axes"]) for rec in frame.sections}
    assert layouts["0.weight"] == ("kernel_oihw", ["out", "in", "kh", "kw"])
    assert layouts["4.weight"] == ("matrix_out_in", ["out", "in"])
    assert layouts["0.bias"][0] == "vector"
    # eight 3 x 3 kernels side by side: one grid row (in = 1), eight columns (out = 8)
    conv = next(rec for rec in frame.sections if rec["name"] == "0.weight")
    assert conv["source"] == [3, 24]
    params = {n: p.detach().numpy() for n, p in model.named_parameters()}
    assert check_sampled_pixels(frame, params, samples=40, seed=0) > 10


def test_the_same_weights_give_the_same_pixels_from_torch_and_keras(tmp_path):
    """A torch Conv2d + Linear and a Keras Conv2D + Dense holding the same weights draw the same frame."""
    keras = pytest.importorskip("keras")
    model = small_cnn()
    conv_w = model[0].weight.detach().numpy()  # (out, in, kh, kw)
    dense_w = model[4].weight.detach().numpy()  # (out, in)
    kmodel = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(8, 3, name="conv"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(10, name="dense"),
    ])
    kmodel.get_layer("conv").kernel.assign(conv_w.transpose(2, 3, 1, 0))  # -> (kh, kw, in, out)
    kmodel.get_layer("conv").bias.assign(model[0].bias.detach().numpy())
    kmodel.get_layer("dense").kernel.assign(dense_w.T)  # -> (in, out)
    kmodel.get_layer("dense").bias.assign(model[4].bias.detach().numpy())
    frames = {}
    for name, variables in (("torch", model), ("keras", kmodel)):
        run = str(tmp_path / name)
        set_config(run, values="trainable_variables", mode="current", FPS=30)
        with Beholder(run, variables=variables, strict=True, background=False) as beholder:
            assert beholder.update()
        frames[name] = read_frame_file(run)
    np.testing.assert_array_equal(frames["torch"].pixels, frames["keras"].pixels)
    np.testing.assert_array_equal(frames["torch"].values, frames["keras"].values)
    assert [r["layout"] for r in frames["keras"].sections] == ["kernel_hwio", "vector", "matrix", "vector"]


def _hooked(model) -> bool:
    """Whether any gradient hook is installed on the model's parameters."""
    return any(getattr(p, "_post_accumulate_grad_hooks", None) for p in model.parameters())


def test_watch_reads_the_gradients_a_step_left_without_any_hook(run_dir):
    set_config(run_dir, values="gradients", mode="current", FPS=30)
    model = small_cnn(frozen=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    beholder = Beholder(run_dir, strict=True, background=False)
    handle = beholder.watch(model)
    train_step(model, opt, 0)  # zero_grad, backward, step: the gradients stay in .grad
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}
    assert beholder.update() is True  # taken at once, read from .grad
    assert not _hooked(model)  # no hook was installed for it, on any step
    frame = read_frame_file(run_dir)
    names = [rec["name"] for rec in frame.sections]
    assert names == ["0.weight", "0.bias", "4.weight", "4.bias", "5.bias"]  # trainable ones, in order
    assert check_sampled_pixels(frame, grads, samples=40, seed=1) > 10
    assert frame.sections[0]["layout"] == "kernel_oihw"
    handle.remove()
    beholder.close()


def test_gradients_set_to_none_before_update_are_caught_by_the_next_backward(run_dir):
    set_config(run_dir, values="gradients", mode="current", FPS=30)
    model = small_cnn(frozen=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    beholder = Beholder(run_dir, strict=True, background=False)
    handle = beholder.watch(model)
    train_step(model, opt, 0)
    opt.zero_grad(set_to_none=True)  # as Hugging Face's Trainer does before its callbacks
    assert beholder.update() is False  # a frame is due: the hooks are armed for the next step
    assert _hooked(model)
    x, y = train_step(model, opt, 1)
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}
    opt.zero_grad(set_to_none=True)
    assert beholder.update() is True
    frame = read_frame_file(run_dir)
    names = [rec["name"] for rec in frame.sections]
    assert names == ["0.weight", "0.bias", "4.weight", "4.bias", "5.bias"]
    assert check_sampled_pixels(frame, grads, samples=40, seed=1) > 10
    handle.remove()
    assert not _hooked(model)
    beholder.close()


@pytest.mark.parametrize("hooked", [False, True], ids=["read-from-grad", "hooked"])
def test_a_parameter_without_a_gradient_is_an_empty_section_that_says_why(run_dir, hooked):
    set_config(run_dir, values="gradients", mode="current", FPS=30)
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = small_cnn()
            self.unused = nn.Linear(3, 3)  # part of the model, never called: no gradient

        def forward(self, x):
            return self.body(x)

    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Beholder(run_dir, strict=True, background=False) as beholder:
        beholder.watch(model)
        train_step(model, opt)
        if hooked:  # the gradients gone before update(): hooks catch the next backward's
            opt.zero_grad(set_to_none=True)
            assert not beholder.update()
            train_step(model, opt)
        assert beholder.update()
        assert beholder.failures == 0
    frame = read_frame_file(run_dir)
    by_name = {rec["name"]: rec for rec in frame.sections}
    assert "not used" in by_name["unused.weight"]["missing"]
    assert "missing" not in by_name["body.0.weight"]
    assert value_at(frame_path(run_dir), 10, by_name["unused.weight"]["top"]) is None


def test_watch_shows_each_leaf_modules_output_and_costs_a_flag_check_otherwise(run_dir):
    set_config(run_dir, values="activations", mode="current", FPS=30)
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    beholder = Beholder(run_dir, strict=True, background=False)
    beholder.watch(model)
    train_step(model, opt, 0)
    assert beholder.watched.captured == {}  # nothing copied while no frame is due
    assert beholder.update() is False  # due: armed
    x, _ = train_step(model, opt, 1)
    assert set(beholder.watched.captured) == {"0", "1", "2", "3", "4"}
    # the outputs of that forward pass, recomputed with the weights it used: undo SGD's step
    with torch.no_grad():
        params_before = [p + 0.1 * p.grad for p in model.parameters()]
        for p, old in zip(model.parameters(), params_before):
            p.copy_(old)
        outputs, h = {}, x
        for name, module in model.named_children():
            h = module(h)
            outputs[name] = h.numpy().copy()
    assert beholder.update() is True
    frame = read_frame_file(run_dir)
    assert [rec["name"] for rec in frame.sections] == ["0", "1", "2", "3", "4"]
    assert [rec["layout"] for rec in frame.sections][:3] == ["activation_nchw"] * 3
    assert frame.sections[0]["shape"] == [4, 8, 26, 26]
    # float rounding of the recomputation aside, each pixel shows its output's value
    rng = np.random.default_rng(2)
    for _ in range(40):
        px, py = int(rng.integers(frame.width)), int(rng.integers(frame.height))
        where = locate(frame.sections, frame.width, px, py)
        if where is not None:
            expected = outputs[where["name"]][tuple(where["index"])]
            assert abs(frame.values[where["offset"]] - expected) <= 1e-5 * max(1.0, abs(expected))
    assert beholder.watched.captured == {}  # handed over: no copies kept between frames
    beholder.close()


def test_hooks_keep_no_tensor_alive_and_unwatch_removes_them(run_dir):
    set_config(run_dir, values="activations", mode="current", FPS=30)
    model = small_cnn()
    beholder = Beholder(run_dir, strict=True, background=False)
    with beholder.watch(model):
        assert not any(m._forward_hooks for m in model.modules())  # none until they are needed
        beholder.update()  # armed: hooks installed for the coming step
        assert all(len(m._forward_hooks) == 1 for n, m in model.named_modules() if n)
        out = model(torch.randn(2, 1, 28, 28))
        ref = weakref.ref(out)
        del out
        gc.collect()
        assert ref() is None  # the hooks copied what they needed and let go of the output
        assert beholder.update()  # the frame takes what they captured...
        assert not any(m._forward_hooks for m in model.modules())  # ...and the steps after run unhooked
        beholder.frame_due_now()  # the next frame due: armed again
        beholder.update()
        assert all(len(m._forward_hooks) == 1 for n, m in model.named_modules() if n)
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    beholder.close()


def test_no_hook_runs_while_weights_are_shown_or_at_fps_zero(run_dir):
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hooked = lambda: sum(len(m._forward_hooks) for m in model.modules())  # noqa: E731
    with Beholder(run_dir, strict=True, background=False) as beholder:
        beholder.watch(model)
        set_config(run_dir, values="activations", mode="current", FPS=30)
        beholder.update()
        assert hooked() == 5  # armed: one hook per leaf module
        set_config(run_dir, values="trainable_variables", mode="current", FPS=30)
        train_step(model, opt)
        beholder.update()
        assert hooked() == 0  # weights need no hook: removed
        set_config(run_dir, values="gradients", mode="current", FPS=0)
        beholder.update()
        assert hooked() == 0  # FPS 0: nothing is computed, and nothing hooked
        set_config(run_dir, values="gradients", mode="current", FPS=30)
        beholder.frame_due_now()  # a frame is due
        assert beholder.update()  # the last step's gradients, read from .grad: no hook at all
        assert hooked() == 0 and not _hooked(model)
        assert [r["name"] for r in read_frame_file(run_dir).sections][:2] == ["0.weight", "0.bias"]


def test_without_a_watch_gradients_say_what_to_do(run_dir, flushed_updates):
    set_config(run_dir, values="gradients", FPS=30)
    with Beholder(run_dir, strict=True) as beholder:
        assert beholder.update()
    frame = read_frame_file(run_dir)
    assert frame.header["values"] == "placeholder" and frame.pixels.max() == 255  # the white text


def test_plain_torch_tensors_get_pytorch_axis_order(run_dir, flushed_updates):
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    kernel = nn.Parameter(torch.randn(8, 1, 3, 3))
    activation = torch.randn(32, 8, 28, 28)
    with Beholder(run_dir, strict=True) as beholder:
        assert beholder.update(arrays={"k": kernel, "a": activation, "grad": torch.randn(8, 4, 3, 3)})
    layouts = [rec["layout"] for rec in read_frame_file(run_dir).sections]
    # A plain tensor shaped like a kernel with square spatial axes takes the original's activation
    # test (as its TF twin would): blocks of 3 x 3 either way; pass layout= or use watch() to be exact.
    assert layouts == ["kernel_oihw", "activation_nchw", "activation_nchw"]


def test_a_model_passed_as_arrays_says_what_to_pass(run_dir, flushed_updates):
    set_config(run_dir, values="arrays", FPS=30)
    with Beholder(run_dir) as beholder:
        assert beholder.update(arrays=small_cnn())
        due(beholder)
    (rec,) = read_frame_file(run_dir).sections
    assert "got a model (Sequential)" in rec["missing"] and "variables=model" in rec["missing"]


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 20, 30), (20, 30, 3), (20, 30, 4), (4, 20, 30)])
def test_image_tensors_in_common_forms_are_shown(run_dir, flushed_updates, shape):
    set_config(run_dir, values="frames", FPS=30)
    image = torch.rand(*shape)  # floats in [0, 1]
    with Beholder(run_dir, strict=True) as beholder:
        assert beholder.update(frame=image)
    frame = read_frame_file(run_dir)
    channels_first = shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4)
    hwc = image.permute(1, 2, 0).numpy() if channels_first else image.numpy()
    assert frame.height, frame.width == hwc.shape[:2]
    if hwc.shape[2] >= 3:
        np.testing.assert_array_equal(frame.rgb(), np.rint(hwc[:, :, :3] * 255).astype(np.uint8))


@pytest.mark.parametrize("batched", [False, True], ids=["host", "device-path"])
def test_a_gradients_frame_keeps_no_gradient_alive(run_dir, monkeypatch, batched):
    """Read from .grad, the frame (its memo, the timeline's per-step check) holds no gradient tensor."""
    from beholder_plugin.trainer.sources import torch_batch

    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
    set_config(run_dir, values="gradients", mode="current", FPS=30)
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Beholder(run_dir, strict=True) as beholder:
        beholder.watch(model)
        for seed in range(3):  # the later frames go through the memo of the first
            train_step(model, opt, seed)
            beholder.frame_due_now()
            assert beholder.update()
            beholder.flush()
        if batched:
            assert beholder.gatherer.memo is not None and beholder.gatherer.memo.kind == "tensors"
            assert beholder.timeline.per_step  # the per-step check runs (it reads .grad at each update)
        # weak references to the gradients' memory (a detached alias would keep it, not the tensor object)
        grads = [p.grad.untyped_storage()._weak_ref() for p in model.parameters()]
        opt.zero_grad(set_to_none=True)
        gc.collect()
        freed = [torch.UntypedStorage._expired(ref) for ref in grads]
        for ref in grads:
            torch.UntypedStorage._free_weak_ref(ref)
        assert freed == [True] * len(grads)
        beholder.update()  # the per-step check reads .grad afresh (None now), never an old one
        assert beholder.failures == 0


@pytest.mark.parametrize("hooked", [False, True])
def test_a_sparse_embedding_gradient_is_shown_dense(run_dir, hooked):
    """nn.Embedding(sparse=True) leaves a sparse COO gradient: its section said 'can't convert Sparse
    layout tensor to numpy. Use Tensor.to_dense() first', which a user of watch() cannot do. Read from
    .grad, and caught by the hooks (.grad cleared before update())."""
    set_config(run_dir, values="gradients", mode="current", FPS=30)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(30, 6, sparse=True), torch.nn.Flatten(),
                                torch.nn.Linear(18, 2))
    tokens = torch.randint(0, 30, (4, 3))
    with Beholder(run_dir, strict=True, background=False) as beholder:
        beholder.watch(model)
        if hooked:  # a frame falls due with no gradient at hand: the hooks catch the next backward's
            model.zero_grad(set_to_none=True)
            beholder.frame_due_now()
            assert not beholder.update()
        model(tokens).pow(2).mean().backward()
        grads = {n: (p.grad.to_dense() if p.grad.is_sparse else p.grad).numpy().copy()
                 for n, p in model.named_parameters()}
        assert model[0].weight.grad.is_sparse
        if hooked:
            model.zero_grad(set_to_none=True)
        beholder.frame_due_now()
        assert beholder.update()
    frame = read_frame_file(run_dir)
    assert [rec["name"] for rec in frame.sections] == ["0.weight", "2.weight", "2.bias"]
    assert "missing" not in frame.sections[0]
    np.testing.assert_array_equal(frame.section_values(0), grads["0.weight"])  # (30 x 6: all shown)


def test_a_sparse_or_meta_array_says_what_it_is(run_dir):
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    sparse = torch.sparse_coo_tensor([[0, 2], [1, 3]], [5.0, 7.0], (3, 4))
    with Beholder(run_dir, background=False) as beholder:
        assert beholder.update(arrays={"sparse": sparse, "meta": torch.empty(3, 4, device="meta")})
    frame = read_frame_file(run_dir)
    np.testing.assert_array_equal(frame.section_values(0), sparse.to_dense().numpy())
    assert frame.sections[1]["missing"] == ("a meta tensor (device='meta') holds a shape and a dtype, "
                                            "no values")


@pytest.mark.parametrize("batched", [False, True])
def test_hooked_sections_of_a_model_too_tall_for_a_frame_are_cut_to_the_frames_height(run_dir, monkeypatch,
                                                                                      batched):
    """A frame of too many sections cuts them all to one height; the hooks cut each output for 128 px,
    so every section that had more rows said 'captured for another frame layout' at every frame. The
    hooks now cut for the same height (Watch.height_cap). Scaled down: a frame of 1,500 rows."""
    from beholder_plugin.protocol import plans
    from beholder_plugin.trainer.sources import torch_batch

    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
    monkeypatch.setattr(plans, "MAX_FRAME_PIXELS", 768 * 1500)
    set_config(run_dir, values="activations", mode="current", FPS=30)
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(20)])
    x = torch.randn(200, 8)
    with Beholder(run_dir, strict=True, background=False) as beholder:
        beholder.watch(model)
        for _ in range(2):  # (the frame due arms the hooks; the next step's forward fills them)
            beholder.frame_due_now()
            model(x)
            beholder.update()
        truth = {}  # (no training step: the outputs are the same again)
        h = x
        for i, layer in enumerate(model):
            h = layer(h)
            truth[str(i)] = h.detach().numpy()
    frame = read_frame_file(run_dir)
    assert len(frame.sections) == 20 and not any("missing" in rec for rec in frame.sections)
    assert {rec["height"] for rec in frame.sections} == {(1500 - 5 * 19) // 20}  # 70 px, of 128
    assert check_sampled_pixels(frame, truth, samples=200, seed=3) > 100


def test_a_nested_tensor_still_says_what_to_pass(run_dir):
    """The sparse-tensor densifying ran first and said 'to_dense does not support layout Jagged'."""
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    nested = torch.nested.nested_tensor([torch.ones(2, 3), torch.ones(4, 3)], layout=torch.jagged)
    with Beholder(run_dir, background=False) as beholder:
        assert beholder.update(arrays={"nested": nested, "w": torch.ones(3)})
    assert read_frame_file(run_dir).sections[0]["missing"].startswith("a nested tensor (components of")


def test_a_model_of_lazy_layers_says_it_is_not_built_until_its_first_forward(run_dir):
    """watch() of a model of torch Lazy layers before its first forward: reading its parameters raised
    (an uninitialized parameter), counted as a failed update() shown in red for the rest of the run.
    Now the frame says the model has no trainable variables yet, with no failure, and the next frame
    after the first forward shows them."""
    from beholder_plugin.trainer.views.placeholder import UNBUILT, placeholder_frame

    set_config(run_dir, values="trainable_variables", FPS=30, mode="current")
    model = torch.nn.Sequential(torch.nn.LazyLinear(6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    model[2].requires_grad_(False)  # (only the lazy layer is trainable: none before its forward)
    with Beholder(run_dir, strict=True) as beholder:
        beholder.watch(model)
        beholder.frame_due_now()
        assert beholder.update()
        beholder.flush()
        frame = read_frame_file(run_dir)
        assert frame.header["values"] == "placeholder" and beholder.failures == 0
        np.testing.assert_array_equal(frame.pixels, placeholder_frame(UNBUILT))
        model(torch.randn(3, 4))
        beholder.frame_due_now()
        assert beholder.update()
        beholder.flush()
    frame = read_frame_file(run_dir)
    assert [s["name"] for s in frame.sections] == ["0.weight", "0.bias"] and beholder.failures == 0


def test_a_frozen_model_is_a_setup_mistake_not_a_model_still_to_be_built(run_dir):
    """Every parameter frozen (requires_grad=False), or variables=[]: no trainable variables ever, so not
    the "not built yet, nothing to do" frame a model of Lazy layers gets: a failure naming the likely
    causes (strict: raised)."""
    from beholder_plugin.protocol.layout import RenderError

    set_config(run_dir, values="trainable_variables", FPS=30, mode="current")
    model = torch.nn.Linear(4, 3).requires_grad_(False)
    with Beholder(run_dir, strict=True) as beholder:
        beholder.watch(model)
        beholder.frame_due_now()
        with pytest.raises(RenderError, match="every parameter frozen"):
            beholder.update()
    with Beholder(run_dir, variables=[]) as beholder:
        beholder.frame_due_now()
        assert not beholder.update()
        assert beholder.failures == 1 and "every parameter frozen" in beholder.last_error


@pytest.mark.parametrize("shown, fps, final", [
    ("trainable_variables", 1, True),  # the weights training ended with, at the last step
    ("gradients", 1, False),  # (no backward pass is coming: nothing to show)
    ("trainable_variables", 0, False),  # paused
])
def test_close_after_a_watch_loop_shows_the_weights_training_ended_with(run_dir, shown, fps, final):
    set_config(run_dir, values=shown, mode="current", FPS=fps)
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    now = [0.0]
    beholder = Beholder(run_dir, strict=True, clock=lambda: now[0])
    beholder.watch(model)
    taken = []
    for step in range(1, 6):  # one frame at step 1; the four steps after it fall within the FPS's second
        train_step(model, opt, seed=step)
        taken.append(beholder.update())
    assert taken == [fps > 0, False, False, False, False]
    beholder.close()
    frame = read_frame_file(run_dir)
    if not final:
        assert frame is None or frame.header["step"] == 1
        return
    assert frame.header["step"] == 5 and beholder.frames_written == 2
    conv = next(i for i, rec in enumerate(frame.sections) if rec["name"] == "0.weight")
    weights = model[0].weight.detach().numpy()  # (8, 1, 3, 3): out side by side, a kernel each
    np.testing.assert_array_equal(frame.section_values(conv), weights[:, 0].transpose(1, 0, 2).reshape(3, 24))


@pytest.mark.parametrize("steps", [1, 3])
def test_close_in_variance_mode_shows_the_weights_training_ended_with_as_current_values(run_dir, steps):
    """A short run in variance mode (the default) ended on a near-black frame: the variance of weights that
    hardly moved, and nothing else to see once the trainer was gone. Its last frame is now the weights,
    even when the last frame was of the last step (steps=1: one frame, a variance of 0)."""
    set_config(run_dir, values="trainable_variables", mode="variance", FPS=30)
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Beholder(run_dir, strict=True) as beholder:
        beholder.watch(model)
        for step in range(1, steps + 1):
            train_step(model, opt, seed=step)
            beholder.flush()  # (the worker is idle: no frame skipped)
            beholder.frame_due_now()
            assert beholder.update()
        beholder.flush()
        assert read_frame_file(run_dir).header["mode"] == "variance"
    frame = read_frame_file(run_dir)
    assert frame.header["step"] == steps and beholder.frames_written == steps + 1
    assert frame.header["mode"] == "current" and frame.header["ending"] is True
    assert "window" not in frame.header
    conv = next(i for i, rec in enumerate(frame.sections) if rec["name"] == "0.weight")
    weights = model[0].weight.detach().numpy()
    np.testing.assert_array_equal(frame.section_values(conv), weights[:, 0].transpose(1, 0, 2).reshape(3, 24))
    assert read_config(run_dir)["mode"] == "variance"  # the run's setting is the user's, unchanged
    assert read_timeline(run_dir)["0.weight"]["step"].tolist() == list(range(1, steps + 1))  # once each


@pytest.mark.parametrize("strict", [False, True])
def test_the_ending_frame_is_best_effort_and_yields_to_the_end_mark_at_exit(run_dir, strict, caplog):
    """Weights freed before close() (a teardown) made the ending frame a failure frame over the last good
    one, counted, raised under strict; at exit its time came out of the 5 s the end mark has."""
    set_config(run_dir, values="trainable_variables", mode="variance", FPS=30)
    model = small_cnn()
    beholder = Beholder(run_dir, strict=strict)
    beholder.watch(model)
    assert beholder.update()
    beholder.flush()
    for p in model.parameters():
        p.data = torch.empty(0)
    with caplog.at_level(logging.WARNING, logger="beholder"):
        beholder.close()
    frame = read_frame_file(run_dir)
    assert frame.header["mode"] == "variance" and "ending" not in frame.header and len(frame.sections) == 4
    assert beholder.failures == 0 and beholder.frames_written == 1
    with Beholder(run_dir, strict=strict) as again:  # at exit (a deadline): no second frame of the step
        again.watch(small_cnn())
        again.frame_due_now()
        assert again.update()
        again.close(timeout=5.0)
    assert read_frame_file(run_dir).header["mode"] == "variance" and again.frames_written == 1
    assert read_ended(run_dir)["frame_id"] == read_frame_file(run_dir).header["frame_id"]


def test_an_ending_frame_that_fails_on_the_worker_leaves_the_last_frame_and_no_failure(run_dir, monkeypatch):
    from beholder_plugin.trainer.job import FrameJobs

    run = FrameJobs._run

    def failing(self, job):
        if job.ending:
            raise MemoryError("no room for one more frame")
        return run(self, job)

    monkeypatch.setattr(FrameJobs, "_run", failing)
    set_config(run_dir, values="trainable_variables", mode="variance", FPS=30)
    with Beholder(run_dir, strict=True) as beholder:
        beholder.watch(small_cnn())
        assert beholder.update()
    header = read_frame_file(run_dir).header
    assert header["mode"] == "variance" and "ending" not in header
    assert beholder.failures == 0 and read_ended(run_dir) is not None


def test_close_takes_no_extra_frame_when_the_last_one_is_of_the_last_step(run_dir):
    set_config(run_dir, values="trainable_variables", mode="current", FPS=30)
    model = small_cnn()
    with Beholder(run_dir, strict=True) as beholder:
        beholder.watch(model)
        assert beholder.update()
    assert beholder.frames_written == 1 and read_frame_file(run_dir).header["step"] == 1


EXIT_WITHOUT_CLOSE = """
import sys, torch
from support import set_config
from beholder_plugin import Beholder
set_config(sys.argv[1], values="trainable_variables", mode="current", FPS=1)
model = torch.nn.Linear(4, 3)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
beholder = Beholder(sys.argv[1])
beholder.watch(model)
for step in range(7):  # far faster than one frame a second: only step 1's frame falls due
    opt.zero_grad()
    model(torch.ones(2, 4)).square().sum().backward()
    opt.step()
    beholder.update()
beholder.flush()  # (at exit the final frame is taken only with the worker idle)
torch.save(model.state_dict(), sys.argv[1] + "/final.pt")
"""

EXIT_WHILE_A_FRAME_RENDERS = """
import sys, time, torch
from support import set_config
from beholder_plugin import Beholder
from beholder_plugin.trainer.views import render
set_config(sys.argv[1], values="trainable_variables", mode="current", FPS=1)
real = render.Renderer.render

def slow(self, *args, **kwargs):
    time.sleep(3.0)  # a big model's frame, or a slow disk: still rendering when training ends
    return real(self, *args, **kwargs)

render.Renderer.render = slow
model = torch.nn.Linear(8, 4)
beholder = Beholder(sys.argv[1])
beholder.watch(model)
for step in range(10):
    beholder.update()
"""


def test_a_script_that_never_closes_ends_on_the_weights_of_its_last_step(run_dir):
    out = run_script(EXIT_WITHOUT_CLOSE, run_dir)
    assert out.returncode == 0, out.stderr
    frame = read_frame_file(run_dir)
    assert frame.header["step"] == 7
    weight = torch.load(run_dir + "/final.pt")["weight"].numpy()
    section = next(i for i, rec in enumerate(frame.sections) if rec["name"] == "weight")
    np.testing.assert_array_equal(frame.section_values(section), weight.T)  # (out_in: drawn in x out)


def test_at_exit_a_frame_still_rendering_comes_before_the_final_weights_and_the_end_mark(run_dir):
    """Exit waits 5 s in all: waiting there for a 3 s frame, then taking the final weights' frame, left the
    end mark unwritten ("trainer stopped?" for a run that ended)."""
    out = run_script(EXIT_WHILE_A_FRAME_RENDERS, run_dir)
    assert out.returncode == 0, out.stderr
    frame = read_frame_file(run_dir)
    assert frame.header["step"] == 1  # the frame in progress, not the final weights'
    ended = json.loads(open(os.path.join(plugin_dir(run_dir), "ended.json")).read())
    assert ended["frame_id"] == frame.header["frame_id"]


def test_strict_close_still_raises_the_last_frames_error(run_dir, monkeypatch):
    """With strict=True, close() raised the worker's error; the final weights' frame took it first and only
    counted it."""
    from beholder_plugin.trainer.views import render

    set_config(run_dir, values="trainable_variables", mode="current", FPS=1)
    now = [0.0]
    beholder = Beholder(run_dir, strict=True, clock=lambda: now[0])
    beholder.watch(torch.nn.Linear(8, 4))

    def broken(self, *args, **kwargs):
        raise RuntimeError("renderer broke")

    monkeypatch.setattr(render.Renderer, "render", broken)
    assert beholder.update()  # the frame fails on the worker
    for _ in range(5):
        assert not beholder.update()  # no frame due: the error is not looked at yet
    with pytest.raises(RuntimeError, match="renderer broke"):
        beholder.close()
