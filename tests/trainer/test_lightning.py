"""BeholderLightningCallback in a real Lightning fit(): weights, activations, and each step's gradients."""

from __future__ import annotations

import os

import numpy as np
import pytest
from pixel_checks import check_sampled_pixels
from support import due, set_config

from beholder_plugin import Beholder, read_timeline
from beholder_plugin.protocol.history import list_history
from beholder_plugin.protocol.runfiles import read_frame_file

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch", reason="needs lightning (the torch-test extra)")
nn = torch.nn

from beholder_plugin import BeholderLightningCallback  # noqa: E402  (after the skips)


class TinyModule(L.LightningModule):
    """conv (4, 1, 3, 3) -> relu -> flatten -> linear (3, 4 * 6 * 6), SGD."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))

    def training_step(self, batch, batch_idx):
        """Cross-entropy of one batch."""
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        """Plain SGD."""
        return torch.optim.SGD(self.parameters(), lr=0.1)


class GradientSpy(L.Callback):
    """Records each optimizer step's gradients, as the optimizer is about to use them."""

    def __init__(self) -> None:
        self.steps: list[dict[str, np.ndarray]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        """Copy every gradient."""
        self.steps.append({n: p.grad.detach().numpy().copy() for n, p in pl_module.named_parameters()})


class WeightSpy(L.Callback):
    """Records the weights after each batch (called after BeholderLightningCallback)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, np.ndarray]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        """Copy every weight."""
        self.steps.append({n: p.detach().numpy().copy() for n, p in pl_module.named_parameters()})


def _fit(model, callbacks, steps: int, accumulate: int = 1, **arguments) -> None:
    """Train for `steps` optimizer steps on a fixed random data set, batches of 4, on the CPU."""
    gen = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 8, 8, generator=gen), torch.arange(64) % 3)
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accumulate_grad_batches=accumulate,
        callbacks=callbacks, **arguments,
    )
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4))


class Overflowing(TinyModule):
    """TinyModule whose loss at batch 2 is so big that the scaled gradients overflow."""

    def training_step(self, batch, batch_idx):
        """Cross-entropy of one batch (times 1e38 at batch 2)."""
        return super().training_step(batch, batch_idx) * (1e38 if batch_idx == 2 else 1.0)


def test_under_16_mixed_the_scalers_overflow_is_no_anomaly(run_dir):
    """precision="16-mixed" (its GradScaler given here on the CPU): the callback hands the precision
    plugin's scaler to the watch; the step that overflowed (skipped by the scaler) is in the timeline,
    not in the anomalies; the frames show the unscaled gradients the optimizer used."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    from beholder_plugin import read_anomalies, read_timeline

    set_config(run_dir, values="gradients", mode="current", FPS=30)
    spy = GradientSpy()
    callback = BeholderLightningCallback(run_dir, strict=True, background=False)

    class EveryStep(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            callback.beholder.frame_due_now()  # (before the Beholder's own callback: a frame each step)

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14)
    precision = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    _fit(Overflowing(), [EveryStep(), callback, spy], steps=5, plugins=[precision])
    assert callback.beholder.frames_written == 5 and scaler.get_scale() == 2.0**13
    norms = read_timeline(run_dir)["net.0.weight"]["norm"]
    assert not np.isfinite(norms[2]) and np.isfinite(np.delete(norms, 2)).all()
    assert read_anomalies(run_dir) == []
    frame = read_frame_file(run_dir)
    assert check_sampled_pixels(frame, spy.steps[frame.header["step"] - 1]) > 100


@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_gradients_frame_shows_the_gradients_the_optimizer_used(run_dir, accumulate):
    set_config(run_dir, values="gradients", mode="current", FPS=30)
    spy = GradientSpy()
    callback = BeholderLightningCallback(run_dir, strict=True, background=False)
    _fit(TinyModule(), [callback, spy], steps=4, accumulate=accumulate)
    assert len(spy.steps) == 4
    beholder = callback.beholder
    assert beholder.frames_written >= 1 and beholder.failures == 0
    assert beholder.step == 4  # one update() per optimizer step, whatever the accumulation
    frame = read_frame_file(run_dir)
    assert frame.header["values"] == "gradients"
    assert [s["name"] for s in frame.sections] == ["net.0.weight", "net.0.bias", "net.3.weight", "net.3.bias"]
    assert not any("missing" in s for s in frame.sections)
    step = frame.header["step"]  # the update() that wrote it: after optimizer step number `step`
    grads = spy.steps[step - 1]  # Lightning leaves them in .grad until the next step: read at once
    other = spy.steps[step % len(spy.steps)]
    assert not np.array_equal(grads["net.3.weight"], other["net.3.weight"])  # steps differ
    assert check_sampled_pixels(frame, grads) > 50
    with pytest.raises(AssertionError):
        check_sampled_pixels(frame, other)  # (the check tells one step's gradients from another's)


def test_weights_and_activations_are_named_by_path(run_dir):
    set_config(run_dir, values="activations", mode="current", FPS=30)
    callback = BeholderLightningCallback(run_dir, strict=True, background=False)
    _fit(TinyModule(), [callback], steps=3)
    frame = read_frame_file(run_dir)
    assert [s["name"] for s in frame.sections] == ["net.0", "net.1", "net.2", "net.3"]
    assert frame.sections[0]["layout"] == "activation_nchw" and frame.sections[0]["shape"] == [4, 4, 6, 6]
    assert callback.beholder.watched is None  # fit ended: closed and unwatched

    set_config(run_dir, values="trainable_variables", mode="current", FPS=30)
    spy = WeightSpy()
    _fit(TinyModule(), [callback, spy], steps=3)  # a second fit with the same callback: a fresh Beholder
    frame = read_frame_file(run_dir)
    assert frame.header["values"] == "trainable_variables"
    assert frame.sections[0]["layout"] == "kernel_oihw"
    weights = spy.steps[frame.header["step"] - 1]  # after the step of the update() that wrote it
    assert check_sampled_pixels(frame, weights) > 50


def test_a_beholder_passed_in_is_used_and_left_open(run_dir):
    set_config(run_dir, values="gradients", mode="current", FPS=30)
    beholder = Beholder(run_dir, strict=True, background=False)
    callback = BeholderLightningCallback(beholder)
    _fit(TinyModule(), [callback], steps=3)
    assert callback.beholder is beholder and beholder.frames_written >= 1 and beholder.watched is None
    set_config(run_dir, values="arrays", mode="current", FPS=30)
    due(beholder)
    assert beholder.update(arrays={"x": np.ones(4)})  # not closed: it can still be used
    assert [s["name"] for s in read_frame_file(run_dir).sections] == ["x"]
    beholder.close()
    with pytest.raises(TypeError, match="Beholder"):
        BeholderLightningCallback(beholder, strict=True)


def test_a_fit_faster_than_the_frame_rate_ends_on_a_frame_of_the_trained_weights(run_dir):
    """A fit of 6 steps at 1 frame/s wrote its first frame only: the run's last frame showed the weights
    after 1 step, and the dashboard said "showing its last frame, step 1" when it ended."""
    set_config(run_dir, values="trainable_variables", mode="current", FPS=1)
    model = TinyModule()
    callback = BeholderLightningCallback(run_dir, strict=True)
    _fit(model, [callback], steps=6)
    frame = read_frame_file(run_dir)
    assert frame.header["step"] == 6
    names = [s["name"] for s in frame.sections]
    np.testing.assert_array_equal(frame.section_values(names.index("net.3.bias")).ravel(),
                                  model.net[3].bias.detach().numpy())
    written = len(list_history(run_dir))
    set_config(run_dir, values="trainable_variables", mode="current", FPS=30)
    callback = BeholderLightningCallback(run_dir, strict=True)
    _fit(model, [EveryUpdateDue(callback), callback], steps=4)
    steps = [e.step for e in list_history(run_dir)[written:]]
    assert steps == sorted(set(steps)) and steps[-1] == 4, steps  # (no second frame of the last step)


def test_only_the_global_rank_zero_process_writes(tmp_path):
    class Trainer:
        is_global_zero = False

    run = str(tmp_path / "run")
    callback = BeholderLightningCallback(run)
    callback.on_fit_start(Trainer(), TinyModule())
    assert callback.beholder is None and not os.path.exists(run)
    callback.on_train_batch_end(Trainer(), None, None, None, 0)  # nothing to update: no error
    callback.on_fit_end(Trainer(), None)


def test_frame_must_be_callable(run_dir):
    with pytest.raises(TypeError, match="callable"):
        BeholderLightningCallback(run_dir, frame=np.zeros((4, 4)))


class EveryUpdateDue(L.Callback):
    """Makes a frame due at each update() of the callback listed after it: one arms, the next writes."""

    def __init__(self, callback) -> None:
        self.callback = callback

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        """A frame is due now."""
        self.callback.beholder.frame_due_now()


@pytest.mark.parametrize("values", ["activations", "gradients", "trainable_variables"])
def test_a_module_passed_through_torch_compile_shows_what_the_uncompiled_one_does(tmp_path, values):
    import torch._dynamo
    from torch._dynamo.utils import counters

    frames = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        counters.clear()
        run = str(tmp_path / ("compiled" if compiled else "plain"))
        set_config(run, values=values, mode="current", FPS=30)
        callback = BeholderLightningCallback(run, strict=True, background=False)
        module = TinyModule()
        _fit(torch.compile(module, backend="aot_eager") if compiled else module,
             [EveryUpdateDue(callback), callback], steps=4)
        frames[compiled] = read_frame_file(run)
        assert frames[compiled].header["step"] == 4
        assert (counters["frames"]["ok"] > 0) == compiled  # the compiled module really ran compiled code
    names = [s["name"] for s in frames[True].sections]
    assert names == [s["name"] for s in frames[False].sections]
    assert names[0] == ("net.0" if values == "activations" else "net.0.weight")
    assert not any("missing" in s for s in frames[True].sections)
    np.testing.assert_allclose(frames[True].values, frames[False].values, rtol=1e-4, atol=1e-5,
                               equal_nan=True)


def test_a_fit_resumed_from_a_checkpoint_goes_on_from_its_step(run_dir, tmp_path):
    """Frames are stamped with the trainer's global_step: a fit resumed with ckpt_path went back to step 1
    (its timeline read 1..6, 1..6), out of line with the logged scalars."""
    set_config(run_dir, values="trainable_variables", mode="current", FPS=30)
    gen = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 8, 8, generator=gen), torch.arange(64) % 3)
    seen: dict[int, np.ndarray] = {}

    class Due(L.Callback):
        def __init__(self, callback):
            self.callback = callback

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.callback.beholder.frame_due_now()  # (a frame at every step, however fast)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # (after Beholder's)
            seen[trainer.global_step] = pl_module.net[3].bias.detach().numpy().copy()
            frame = read_frame_file(run_dir)
            assert frame.header["step"] == trainer.global_step
            shown = frame.section_values([s["name"] for s in frame.sections].index("net.3.bias")).ravel()
            assert np.array_equal(shown, seen[trainer.global_step])

    def fit(steps: int, ckpt: str | None = None) -> L.Trainer:
        callback = BeholderLightningCallback(run_dir, strict=True, background=False)
        trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                            default_root_dir=str(tmp_path), enable_progress_bar=False,
                            enable_model_summary=False, callbacks=[callback, Due(callback)])
        trainer.fit(TinyModule(), torch.utils.data.DataLoader(data, batch_size=4), ckpt_path=ckpt)
        return trainer

    first = fit(3)
    checkpoint = first.checkpoint_callback.best_model_path
    assert checkpoint
    fit(5, checkpoint)
    steps = read_timeline(run_dir)["net.3.bias"]["step"]
    assert list(steps) == [1, 2, 3, 4, 5]
    assert sorted(seen) == [1, 2, 3, 4, 5]
