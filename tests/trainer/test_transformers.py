"""BeholderHFCallback in a real transformers.Trainer: a 2-layer GPT-2 built from a config (no downloads)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from pixel_checks import check_sampled_pixels
from support import set_config

from beholder_plugin import read_timeline
from beholder_plugin.protocol.layout import locate
from beholder_plugin.protocol.runfiles import read_frame_file
from beholder_plugin.protocol.timeline import EXACT_NORM

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="needs transformers (the test extra)")
pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (the torch-test extra)")

from beholder_plugin import BeholderHFCallback  # noqa: E402  (after the skips)


def tiny_gpt2():
    """A 2-layer GPT-2 with random weights (seeded)."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32)
    return transformers.GPT2LMHeadModel(config)


class Tokens(torch.utils.data.Dataset):
    """Random token sequences of length 16, their own labels."""

    def __init__(self, count: int = 32) -> None:
        gen = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, 100, (count, 16), generator=gen)

    def __len__(self) -> int:
        """How many sequences."""
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        """One sequence as input and label."""
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class GradientSpy(transformers.TrainerCallback):
    """Records each optimizer step's gradients, as the optimizer is about to use them."""

    def __init__(self) -> None:
        self.steps: list[dict[str, np.ndarray]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        """Copy every gradient."""
        self.steps.append({n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()
                           if p.grad is not None})


def _train(
    tmp_path, model, callbacks, steps: int = 4, accumulate: int = 1, clip: float = 0.0, **arguments
) -> None:
    """Train for `steps` optimizer steps on the CPU, no reporting, no checkpoints, clipping off by default."""
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulate, learning_rate=1e-2, max_grad_norm=clip, report_to=[],
        save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
        dataloader_num_workers=0, **arguments,
    )
    transformers.Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=callbacks).train()



def test_the_hook_this_callback_relies_on_exists():
    assert hasattr(transformers.TrainerCallback, "on_pre_optimizer_step")


@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_gradients_frame_shows_the_gradients_of_an_optimizer_step(run_dir, tmp_path, accumulate):
    set_config(run_dir, values="gradients", mode="current", FPS=30)
    model = tiny_gpt2()
    spy = GradientSpy()
    callback = BeholderHFCallback(run_dir, strict=True, background=False)
    _train(tmp_path, model, [callback, spy], steps=4, accumulate=accumulate)
    assert len(spy.steps) == 4
    beholder = callback.beholder
    assert beholder.frames_written >= 1 and beholder.failures == 0
    assert beholder.step == 4  # one update() per optimizer step
    frame = read_frame_file(run_dir)
    names = [s["name"] for s in frame.sections]
    assert names[:3] == ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight"]
    assert "lm_head.weight" not in names  # tied to transformer.wte.weight: shown once
    assert names == [n for n, p in model.named_parameters()]
    assert not any("missing" in s for s in frame.sections)
    step = frame.header["step"]
    assert step >= 2  # the first due update() only arms the hooks
    grads = spy.steps[step - 1]
    assert not np.array_equal(grads["transformer.h.1.mlp.c_fc.weight"],
                              spy.steps[step - 2]["transformer.h.1.mlp.c_fc.weight"])
    assert check_sampled_pixels(frame, grads) > 100


def test_gradients_are_shown_as_the_backward_pass_left_them_before_clipping(run_dir, tmp_path):
    set_config(run_dir, values="gradients", mode="current", FPS=30)
    spy = GradientSpy()  # sees them after the Trainer clipped them to max_grad_norm
    callback = BeholderHFCallback(run_dir, strict=True, background=False)
    _train(tmp_path, tiny_gpt2(), [callback, spy], steps=3, clip=1e-3)
    frame = read_frame_file(run_dir)
    clipped = spy.steps[frame.header["step"] - 1]
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(300):
        x, y = int(rng.integers(frame.width)), int(rng.integers(frame.height))
        where = locate(frame.sections, frame.width, x, y)
        if where is not None:
            small = clipped[where["name"]][tuple(where["index"])]
            if abs(small) > 1e-12:
                ratios.append(frame.values[where["offset"]] / small)
    assert len(ratios) > 50
    # one factor for every value: the unclipped gradient is the clipped one scaled back up
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-3)
    assert ratios[0] > 10
    # and the timeline's exact norms are the unclipped gradients' too (a norm jump is not hidden there)
    timeline = read_timeline(run_dir)
    for name in ("transformer.wte.weight", "transformer.h.1.mlp.c_fc.weight"):
        columns = timeline[name]
        at = columns["step"].tolist().index(frame.header["step"])
        assert columns["flags"][at] & EXACT_NORM
        assert columns["norm"][at] == pytest.approx(ratios[0] * np.linalg.norm(clipped[name]), rel=1e-3)


def test_gradients_scaled_by_accelerates_loss_scaler_are_shown_unscaled(run_dir, tmp_path):
    """fp16 AMP: accelerate's optimizer holds a GradScaler (given here on the CPU); the hooks catch the
    gradients times its scale, the frame shows them divided by it, bit for bit."""
    set_config(run_dir, values="gradients", mode="current", FPS=30)
    spy = GradientSpy()  # (no unscale_ before the optimizer step here: it sees them scaled)
    callback = BeholderHFCallback(run_dir, strict=True, background=False)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2,
        max_grad_norm=0.0, report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
        disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(model=tiny_gpt2(), args=args, train_dataset=Tokens(),
                                   callbacks=[callback, spy])
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1000)
    trainer.train()
    frame = read_frame_file(run_dir)
    scaled = spy.steps[frame.header["step"] - 1]
    assert check_sampled_pixels(frame, {n: g * np.float32(2.0**-10) for n, g in scaled.items()}) > 100


def test_weights_frame_and_close_at_the_end(run_dir, tmp_path):
    set_config(run_dir, values="trainable_variables", mode="current", FPS=30, is_recording=True)
    model = tiny_gpt2()
    callback = BeholderHFCallback(run_dir, strict=True, background=False)
    _train(tmp_path, model, [callback], steps=2)
    frame = read_frame_file(run_dir)
    assert frame.header["values"] == "trainable_variables"
    assert callback.beholder.watched is None  # train() ended: hooks removed, Beholder closed
    recorded = [n for n in os.listdir(os.path.join(run_dir, "plugins", "beholder")) if n.startswith("video-")]
    assert recorded  # the recording was finished by on_train_end


def test_activations_of_the_leaf_modules(run_dir, tmp_path):
    set_config(run_dir, values="activations", mode="current", FPS=30)
    callback = BeholderHFCallback(run_dir, strict=True, background=False)
    _train(tmp_path, tiny_gpt2(), [callback], steps=3)
    assert callback.beholder.frames_written >= 1 and callback.beholder.failures == 0
    by_name = {s["name"]: s for s in read_frame_file(run_dir).sections}
    assert by_name["transformer.h.0.mlp.c_fc"]["shape"] == [4, 16, 128]  # (batch, tokens, 4 * n_embd)
    assert by_name["lm_head"]["shape"] == [4, 16, 100]
    assert not any("missing" in s for s in by_name.values())


def test_only_the_main_process_writes(tmp_path):
    class State:
        is_world_process_zero = False

    run = str(tmp_path / "run")
    callback = BeholderHFCallback(run)
    callback.on_train_begin(None, State(), None, model=tiny_gpt2())
    assert callback.beholder is None and not os.path.exists(run)
    callback.on_pre_optimizer_step(None, State(), None)
    callback.on_step_end(None, State(), None)
    callback.on_train_end(None, State(), None)


class EveryUpdateDue(transformers.TrainerCallback):
    """Makes a frame due at each update() of the callback listed after it: one arms, the next writes."""

    def __init__(self, callback) -> None:
        self.callback = callback

    def on_step_end(self, args, state, control, **kwargs):
        """A frame is due now."""
        self.callback.beholder.frame_due_now()


@pytest.mark.parametrize("values", ["activations", "gradients"])
def test_torch_compile_in_the_training_arguments_shows_what_the_uncompiled_model_does(tmp_path, values):
    """TrainingArguments(torch_compile=True) with dynamo's aot_eager backend (inductor compiles C++: slow)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    frames = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        counters.clear()
        run = str(tmp_path / ("compiled" if compiled else "plain"))
        set_config(run, values=values, mode="current", FPS=30)
        callback = BeholderHFCallback(run, strict=True, background=False)
        arguments = {"torch_compile": True, "torch_compile_backend": "aot_eager"} if compiled else {}
        _train(tmp_path, tiny_gpt2(), [EveryUpdateDue(callback), callback], steps=4, **arguments)
        frames[compiled] = read_frame_file(run)
        assert frames[compiled].header["step"] == 4
        assert (counters["frames"]["ok"] > 0) == compiled  # the model really ran compiled code
    names = [s["name"] for s in frames[True].sections]
    assert names == [s["name"] for s in frames[False].sections]
    if values == "activations":
        assert "transformer.h.0.mlp.c_fc" in names and "lm_head" in names
    assert not any("missing" in s for s in frames[True].sections)
    np.testing.assert_allclose(frames[True].values, frames[False].values, rtol=1e-4, atol=1e-5,
                               equal_nan=True)


def test_weights_frames_are_stamped_with_the_trainers_step_and_a_resumed_run_goes_on(run_dir, tmp_path):
    """The callback offers frames before each optimizer step: a weights frame stamped N showed the weights
    after N - 1 steps, the final weights were never shown, and a run resumed from a checkpoint counted its
    steps from 1 again. Frames now carry the Trainer's global_step: the weights after that many steps."""
    set_config(run_dir, values="trainable_variables", mode="current", FPS=30, filter="ln_f")
    seen: dict[int, np.ndarray] = {}  # global_step -> the final layer norm's weights after it
    stamped: dict[int, np.ndarray] = {}  # a frame's step -> the weights it shows

    class Spy(transformers.TrainerCallback):
        def __init__(self, callback):
            self.callback = callback

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen[state.global_step] = model.transformer.ln_f.weight.detach().numpy().copy()

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self.callback.beholder.frame_due_now()  # (a frame at every step, however fast)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen[state.global_step] = model.transformer.ln_f.weight.detach().numpy().copy()
            frame = read_frame_file(run_dir)
            stamped[frame.header["step"]] = frame.section_values(0).ravel().copy()

    def train(steps: int, resume: str | None = None) -> BeholderHFCallback:
        callback = BeholderHFCallback(run_dir, strict=True, background=False)
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=4,
            learning_rate=5e-2, report_to=[], save_strategy="steps", save_steps=3, logging_strategy="no",
            use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0)
        transformers.Trainer(model=tiny_gpt2(), args=args, train_dataset=Tokens(),
                             callbacks=[Spy(callback), callback]).train(resume_from_checkpoint=resume)
        stamped[read_frame_file(run_dir).header["step"]] = read_frame_file(run_dir).section_values(0).ravel()
        return callback

    train(3)
    assert sorted(stamped) == [0, 1, 2, 3]  # (3: the final weights, at the end of training)
    train(5, resume=str(tmp_path / "out" / "checkpoint-3"))
    assert sorted(stamped) == [0, 1, 2, 3, 4, 5]  # the resumed run goes on from the checkpoint's step
    for step, shown in stamped.items():
        assert np.array_equal(shown, seen[step]), step
    assert not np.array_equal(seen[1], seen[2])  # (each step changed the weights shown)
    steps = read_timeline(run_dir)["transformer.ln_f.weight"]["step"]
    assert list(steps) == [0, 1, 2, 3, 3, 4, 5]  # (the resumed run starts at the checkpoint's weights)
