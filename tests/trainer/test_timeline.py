"""The trainer's timeline (trainer/timeline.py): records per frame, anomalies at the step, pinned frames."""

from __future__ import annotations

import contextlib
import logging
import os
import time

import numpy as np
import pytest
from support import set_config

from beholder_plugin import AnomalyError, Beholder, read_anomalies, read_timeline
from beholder_plugin.protocol import timeline as tl
from beholder_plugin.protocol.history import list_history
from beholder_plugin.trainer import timeline as timeline_module

torch = pytest.importorskip("torch")
from torch_ops import OpLog, storages_held_by  # noqa: E402

from beholder_plugin.trainer.sources import torch_batch  # noqa: E402

NAN_STEP = 17
FRAME_STEPS = (1, 10, 20, 30)


def train(run: str, device: str = "cpu", steps: int = 30, frame_steps=FRAME_STEPS, **kwargs) -> Beholder:
    """A small torch model trained; layer 2's weight NaN from NAN_STEP on; frames at frame_steps."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    set_config(run, FPS=1, values="trainable_variables")
    beholder = Beholder(run, **kwargs)
    beholder.watch(model, activations=False, gradients=False)
    x = torch.randn(32, 8, device=device)
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
        if step == NAN_STEP:
            with torch.no_grad():
                model[2].weight[1, 3] = float("nan")
        if step in frame_steps:
            beholder.frame_due_now()  # a frame is due at this step
        beholder.update()
        if step in frame_steps:
            beholder.flush()
    return beholder


def nan_at_nan_step(out, step: int):
    """A model's output, NaN at NAN_STEP (so that every gradient is NaN then)."""
    return out * float("nan") if step == NAN_STEP else out


@pytest.mark.parametrize("batched", [True, False, "replayed"])
def test_a_layer_turning_nan_is_caught_at_its_step_or_between_frames(run_dir, monkeypatch, batched, caplog):
    """The per-step check (device path: CPU tensors batched as on a GPU; "replayed": frames replayed as
    a CUDA graph is) names the exact step, its figures brought back in the frame's one copy; the host
    path names the steps between the frame before and the frame that found it."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", bool(batched))
    monkeypatch.setattr(torch_batch, "CPU_GRAPHS", batched == "replayed")
    with caplog.at_level(logging.WARNING, logger="beholder"):
        beholder = train(run_dir)
        beholder.close()
    anomalies = read_anomalies(run_dir)
    assert {a["kind"] for a in anomalies} == {"nan"}  # the NaN spreads to every layer at the next step
    record = next(a for a in anomalies if a["section"] == "2.weight")
    assert record["values"] == "trainable_variables"
    assert sum(1 for a in anomalies if a.get("first")) == 1
    if batched:
        assert record["step"] == NAN_STEP and record["checked"] == "step"
        assert record["first"]
        assert all(a["step"] == NAN_STEP + 1 for a in anomalies if a is not record)
    else:
        assert record["steps"] == [11, 20] and record["checked"] == "frame"
    lines = [r.getMessage() for r in caplog.records if "first anomaly" in r.getMessage()]
    assert len(lines) == 1 and "GradScaler" not in lines[0]  # (weights: no loss scaler involved)
    if batched:
        assert "2.weight" in lines[0] and f"at step {NAN_STEP}" in lines[0]
    else:
        assert "between steps 11 and 20" in lines[0]
    columns = read_timeline(run_dir)
    weight = columns["2.weight"]
    assert weight["step"].tolist() == list(FRAME_STEPS)
    assert np.isfinite(weight["norm"][:2]).all() and np.isnan(weight["norm"][2:]).all()
    assert (weight["flags"] & tl.EXACT_NORM).all()
    assert weight["nonfinite"][0] == 0 and weight["nonfinite"][2] >= 1
    assert (weight["flags"][2] & tl.ANOMALY) and not (weight["flags"][1] & tl.ANOMALY)
    assert np.isfinite(columns["0.weight"]["norm"][:2]).all()


def test_exact_norm_is_the_whole_arrays(run_dir):
    """The timeline's norm of a large array is its exact L2 norm, not the sample's estimate."""
    set_config(run_dir, FPS=30, values="arrays")
    rng = np.random.default_rng(0)
    big = rng.standard_normal(100_000).astype(np.float32)
    big[:50_000] *= 10  # a sample of 8 runs does not see this in proportion
    with Beholder(run_dir, background=False) as beholder:
        assert beholder.update(arrays={"big": big})
    columns = read_timeline(run_dir)["big"]
    assert columns["norm"][0] == pytest.approx(float(np.linalg.norm(big.astype(np.float64))), rel=1e-5)
    assert columns["flags"][0] & tl.EXACT_NORM
    assert columns["count"][0] == big.size


def test_pinned_frames_survive_the_rings_turnover(run_dir, monkeypatch):
    """The frame before the anomaly and the anomaly's frame stay in history/ after the ring has moved on."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)
    beholder = train(run_dir)
    record = read_anomalies(run_dir)[0]
    pinned = record["frames"]
    assert [int(n.rsplit("-", 1)[1].split(".")[0]) for n in pinned] == [10, 20]
    set_config(run_dir, FPS=1, values="trainable_variables", history_seconds=1)
    time.sleep(1.2)
    for _ in range(3):  # later frames: the ring's age budget expires everything older
        beholder.frame_due_now()
        beholder.update()
        beholder.flush()
    beholder.close()
    kept = [e.name for e in list_history(run_dir)]
    assert set(pinned) <= set(kept)
    assert not any(e.step == 30 for e in list_history(run_dir))  # an unpinned frame (not a keyframe) is gone
    for name in pinned:
        assert os.path.exists(os.path.join(run_dir, "plugins", "beholder", "history", name))


def test_on_anomaly_raise_and_callable(run_dir, monkeypatch):
    """on_anomaly="raise" raises AnomalyError from an update() after the anomaly; a function gets it."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)
    with pytest.raises(AnomalyError, match="2.weight") as caught:
        train(run_dir, on_anomaly="raise").close()
    assert caught.value.record["step"] == NAN_STEP
    got = []
    other = os.path.join(run_dir, "other")
    train(other, on_anomaly=got.append).close()
    assert got[0]["section"] == "2.weight" and got[0]["step"] == NAN_STEP


def test_norm_jump(run_dir):
    """A norm 10x its recent median is a norm_jump anomaly, with the steps since the frame before."""
    set_config(run_dir, FPS=30, values="arrays")
    with Beholder(run_dir, background=False, norm_jump=10.0) as beholder:
        for step in range(1, 9):
            scale = 100.0 if step == 7 else 1.0
            beholder.frame_due_now()
            beholder.update(arrays={"w": np.full(64, scale, np.float32)})
    anomalies = read_anomalies(run_dir)
    assert [(a["kind"], a["section"], a["step"]) for a in anomalies] == [("norm_jump", "w", 7)]
    assert anomalies[0]["found"]["median"] == pytest.approx(8.0)


def jumps_of(run_dir: str, scales) -> list[tuple[int, float]]:
    """The norm jumps (step, threshold) of a section whose values are ``scales[step - 1]`` at each step."""
    set_config(run_dir, FPS=30, values="arrays")
    with Beholder(run_dir, background=False, norm_jump=10.0) as beholder:
        for scale in scales:
            beholder.frame_due_now()
            beholder.update(arrays={"g": np.full(64, scale, np.float32)})
    return [(a["step"], a["found"]["threshold"]) for a in read_anomalies(run_dir) if a["kind"] == "norm_jump"]


def test_norms_that_spread_widely_are_judged_by_their_spread(run_dir):
    """The gradients of a model that fits most of its batches swing by 30x and more from batch to batch
    (the demo's, late in its run: 2.5 decades between their 5th and 95th percentiles). Each swing past
    10x the median was a norm jump: 88 of them in the demo, none a problem. Norms that spread so widely
    must pass their spread cubed (quartiles' ratio), up to norm_jump cubed: an explosion still is one."""
    rng = np.random.default_rng(0)
    swings = 10.0 ** rng.permutation(np.linspace(-3.5, -1.0, 150))
    assert jumps_of(run_dir, [*swings, 1e3]) == [(151, 1000.0)]  # (1e3 is 1e5 times the median)


def test_a_section_that_spikes_now_and_then_reports_only_new_heights(run_dir, monkeypatch):
    """Norms steady but for a 30x spike every 10th step: the first spike is a jump, the same spike again
    is none, a higher one is, and the same again once QUIET_NORMS norms passed since the last report;
    narrow norms keep the bar at norm_jump times the median."""
    monkeypatch.setattr(timeline_module, "QUIET_NORMS", 32)
    scales = [1.0] * 90
    for step in (10, 20, 30, 40, 50, 80):
        scales[step - 1] = 30.0
    scales[44] = 100.0  # (step 45; step 40 is 27 norms after step 10, 50 and 80 are 4 and 33 after 45)
    assert jumps_of(run_dir, scales) == [(10, 10.0), (45, 10.0), (80, 10.0)]


def test_exact_norms_every_few_frames_are_no_jump_over_the_sampled_ones(run_dir):
    """A big array gets an exact norm only every few frames, the others scaled up from the statistics'
    sample. A spike outside the sample makes the exact norm 100x the sampled one: an unchanged array
    reported a norm jump at each exact frame. Exact and sampled norms are judged apart; a real jump is
    still found."""
    weights = np.full(1_000_000, 1e-3, np.float32)
    weights[100] = 100.0  # (outside the sample's runs: 0-63, 125000-125063, ...)
    set_config(run_dir, FPS=30, values="arrays")
    with Beholder(run_dir, background=False, norm_jump=10.0) as beholder:
        for step in range(1, 41):
            beholder.frame_due_now()
            beholder.update(arrays={"w": weights * (1000.0 if step == 40 else 1.0)})
    columns = read_timeline(run_dir)["w"]
    exact = (columns["flags"] & tl.EXACT_NORM) > 0
    assert 5 <= exact[:-1].sum() <= 30 and not exact[:-1].all()  # both kinds, often enough to judge
    truth = float(np.linalg.norm(weights.astype(np.float64)))
    assert columns["norm"][:-1][exact[:-1]] == pytest.approx(truth, rel=1e-5)
    assert columns["norm"][:-1][~exact[:-1]] == pytest.approx(1e-3 * np.sqrt(1e6), rel=1e-5)
    assert [(a["kind"], a["step"]) for a in read_anomalies(run_dir)] == [("norm_jump", 40)]


def test_a_section_that_grows_is_no_norm_jump_and_its_values_still_are(run_dir):
    """A section whose shape grows (activations of longer text, a larger batch) with values of the same
    size: its norm grows with the square root of its count, which is no anomaly; norms are compared per
    value, and the median reported is at the section's present size. Values ten times larger at the
    new size still are. Before, a sequence length going from 2 to 400 reported a norm jump."""
    set_config(run_dir, FPS=30, values="arrays")
    with Beholder(run_dir, background=False, norm_jump=10.0) as beholder:
        for step in range(1, 15):
            length = 2 if step <= 6 else 400  # (the norm grows by sqrt(200), about 14)
            scale = 20.0 if step == 12 else 1.0
            beholder.frame_due_now()
            beholder.update(arrays={"act": np.full((8, length, 4), scale, np.float32)})
    anomalies = read_anomalies(run_dir)
    assert [(a["kind"], a["section"], a["step"]) for a in anomalies] == [("norm_jump", "act", 12)]
    found = anomalies[0]["found"]
    assert found["norm"] == pytest.approx(20.0 * np.sqrt(8 * 400 * 4))
    assert found["median"] == pytest.approx(np.sqrt(8 * 400 * 4))  # (the median's values, at this size)
    norms = read_timeline(run_dir)["act"]["norm"]
    assert norms[6] / norms[5] == pytest.approx(np.sqrt(200))


def test_bad_on_anomaly_is_refused(run_dir):
    """on_anomaly must be None, "raise" or a function."""
    with pytest.raises(ValueError, match="on_anomaly"):
        Beholder(run_dir, on_anomaly="explode")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_the_nan_is_named_at_its_exact_step(run_dir):
    """On CUDA the per-step check (kept on the device, read with the next frame) names the exact step."""
    beholder = train(run_dir, device="cuda")
    beholder.close()
    record = next(a for a in read_anomalies(run_dir) if a["section"] == "2.weight")
    assert record["step"] == NAN_STEP and record["checked"] == "step" and record["first"]
    assert read_anomalies(run_dir)[0] == record
    weight = read_timeline(run_dir)["2.weight"]
    assert (weight["flags"] & tl.STEP_CHECKED).all() and (weight["flags"] & tl.EXACT_NORM).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("values", ["trainable_variables", "gradients"])
def test_on_a_gpu_a_step_with_no_frame_is_one_graph_launch(run_dir, values):
    """On CUDA an update() with no frame due replays the captured per-step check: one fill of the step
    number, one graph launch, no copy and no synchronizing call (gradients left in place by
    zero_grad(set_to_none=False), so that they lie where the capture read them)."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).cuda()
    x = torch.randn(32, 8, device="cuda")
    set_config(run_dir, FPS=1, values=values, mode="current")

    def step():
        model.zero_grad(set_to_none=False)
        model(x).square().mean().backward()

    with Beholder(run_dir, strict=True) as beholder:
        beholder.watch(model, activations=False)
        step()
        beholder.frame_due_now()
        assert beholder.update()  # the frame that starts the check
        beholder.flush()
        for _ in range(3):  # eager, then captured, then replayed
            step()
            assert not beholder.update()
        step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            assert not beholder.update()
        assert beholder.timeline.per_step
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as empty:
        pass  # the profiler's own synchronize
    names = [e.name for e in prof.events()]
    assert sum("GraphLaunch" in n for n in names) == 1, names
    assert sum(n in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC") for n in names) == 1, names
    assert not [n for n in names if "Memcpy" in n]
    assert sum("Synchronize" in n for n in names) == sum("Synchronize" in e.name for e in empty.events())


def test_a_failing_per_step_check_never_reaches_the_training_loop(run_dir, monkeypatch, caplog):
    """A failing per-step check (a freed tensor, a device error) goes off, warned once; training goes on."""
    from beholder_plugin.trainer import exact_pass

    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)

    def broken(self, step):
        raise RuntimeError("device lost")

    monkeypatch.setattr(exact_pass.StepCheck, "check", broken)
    with caplog.at_level(logging.WARNING, logger="beholder"):
        beholder = train(run_dir, steps=12)
    assert not beholder.timeline.hot and not beholder.timeline.per_step
    beholder.close()
    assert sum("per-step anomaly check failed" in r.getMessage() for r in caplog.records) == 1
    assert read_timeline(run_dir)["2.weight"]["step"].tolist() == [1, 10, 12]  # (12: close()'s final weights)


def test_gradients_turning_nan_are_caught_at_their_step(run_dir, monkeypatch, caplog):
    """Showing gradients (captured by hooks), the per-step check reads each parameter's whole .grad; the
    log line says how an fp16 loop's loss scaler overflows stop being anomalies."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the weights stay finite
    set_config(run_dir, FPS=1, values="gradients")
    beholder = Beholder(run_dir)
    beholder.watch(model, activations=False)
    x = torch.randn(32, 8)
    with caplog.at_level(logging.WARNING, logger="beholder"):
        for step in range(1, 31):
            optimizer.zero_grad(set_to_none=True)
            nan_at_nan_step(model(x), step).square().mean().backward()
            optimizer.step()
            if step in FRAME_STEPS:
                beholder.frame_due_now()
            beholder.update()
            if step in FRAME_STEPS:
                beholder.flush()
        beholder.close()
    (line,) = [r.getMessage() for r in caplog.records if "first anomaly" in r.getMessage()]
    assert line.endswith("GradScaler, watch(model, grad_scaler=scaler), and overflows are not anomalies")
    anomalies = read_anomalies(run_dir)
    assert anomalies and all(a["values"] == "gradients" for a in anomalies)
    first = next(a for a in anomalies if a.get("first"))
    assert first["step"] == NAN_STEP and first["checked"] == "step"
    assert {a["section"] for a in anomalies} >= {"2.weight", "0.weight"}
    assert all(a["step"] == NAN_STEP for a in anomalies)
    columns = read_timeline(run_dir)["0.weight"]
    assert (columns["flags"][1:] & tl.EXACT_NORM).all()  # the whole gradient's norm, not the sample's


@pytest.mark.parametrize("batched", [False, True, "replayed", "sliced"])
def test_hooked_gradients_are_recorded_as_the_backward_pass_left_them(run_dir, monkeypatch, batched):
    """Gradients caught by the hooks (BeholderHFCallback's way: update() comes after the loop clipped
    them in place): each record's norm is the whole gradient's before clipping, exact, as the frame's
    values are (not the clipped .grad that update() could read); the per-step check still reads .grad
    and names the step a gradient turned NaN. Batched, the norms come from the hooks' one buffer, or
    ("sliced", over its budget) from the gradients themselves."""
    from beholder_plugin.trainer import watch

    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", bool(batched))
    monkeypatch.setattr(torch_batch, "CPU_GRAPHS", batched == "replayed")
    if batched == "sliced":
        monkeypatch.setattr(watch, "GRADIENT_BUFFER_BYTES", 0)
    check_hooked_gradient_norms(run_dir, "cpu", at_step=bool(batched))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_hooked_gradients_are_recorded_as_the_backward_pass_left_them(run_dir):
    """The same on CUDA: the hooks' norms ride with the frame's copy, the check names the NaN's step."""
    check_hooked_gradient_norms(run_dir, "cuda", at_step=True)


def check_hooked_gradient_norms(run_dir: str, device: str, at_step: bool) -> None:
    """Train with two accumulated passes a step and clipping in place before update(), hooks catching the
    gradients; check the records."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    set_config(run_dir, FPS=1, values="gradients", mode="current")
    beholder = Beholder(run_dir)
    beholder.watch(model, activations=False)
    beholder.watched.read_gradients = False  # (as BeholderHFCallback has it)
    x = torch.randn(32, 8, device=device)
    unclipped = {}
    for step in range(1, 32):
        optimizer.zero_grad(set_to_none=True)
        model(x[:16]).square().mean().backward()  # two passes accumulate: the step's are the sums
        nan_at_nan_step(model(x[16:]), step).square().mean().backward()
        unclipped[step] = [float(torch.linalg.vector_norm(p.grad)) for p in model.parameters()]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
        optimizer.step()
        if step in FRAME_STEPS:
            beholder.frame_due_now()  # this update() arms the hooks, the next one writes the frame
        beholder.update()
        beholder.flush()
    beholder.close()
    timeline = read_timeline(run_dir)
    names = [n for n, _ in model.named_parameters()]
    steps = [s + 1 for s in FRAME_STEPS]
    for i, name in enumerate(names):
        columns = timeline[name]
        assert columns["step"].tolist() == steps
        assert (columns["flags"] & tl.EXACT_NORM).all()
        np.testing.assert_allclose(columns["norm"], [unclipped[s][i] for s in steps], rtol=1e-5)
    assert max(max(unclipped[s]) for s in steps) > 100 * 1e-3  # clipping did change them
    first = next(a for a in read_anomalies(run_dir) if a.get("first"))
    if at_step:
        assert first["step"] == NAN_STEP and first["checked"] == "step"
    else:
        assert first["steps"] == [12, 21] and first["checked"] == "frame"


@pytest.mark.parametrize("path", ["host", "buffer", "sliced"])
def test_hooked_gradients_scaled_by_a_loss_scaler_are_shown_unscaled(run_dir, monkeypatch, path):
    """fp16 AMP (a GradScaler; BeholderHFCallback finds accelerate's): the hooks catch gradients times
    the loss scale; the frame's values are what the loop's unscale_() makes of them, bit for bit, and
    the records' norms are theirs too (from the hooks' buffer, or sliced, or on the host)."""
    from beholder_plugin.trainer import watch

    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", path != "host")
    if path == "sliced":
        monkeypatch.setattr(watch, "GRADIENT_BUFFER_BYTES", 0)
    check_unscaled_hooked_gradients(run_dir, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_hooked_gradients_scaled_by_a_loss_scaler_are_shown_unscaled(run_dir):
    """The same on CUDA, the scale a device tensor (no host sync to read it)."""
    check_unscaled_hooked_gradients(run_dir, "cuda")


def check_unscaled_hooked_gradients(run_dir: str, device: str, model=None, forward=None) -> None:
    """A loop under a GradScaler, hooks catching the gradients; the frame and records against unscale_()
    (``model`` and ``forward(x)``: a model of the test's own, its inputs made on ``device``)."""
    from pixel_checks import check_sampled_pixels

    from beholder_plugin.protocol.runfiles import read_frame_file

    torch.manual_seed(0)
    if model is None:
        layers = torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)
        model = torch.nn.Sequential(*layers).to(device)
    forward = forward or model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler(device.split(":")[0], init_scale=2.0**14)
    set_config(run_dir, FPS=1, values="gradients", mode="current")
    beholder = Beholder(run_dir, strict=True, background=False)
    beholder.watch(model, activations=False)
    beholder.watched.read_gradients = False
    beholder.watched.grad_scaler = scaler
    unscaled = {}
    for step in range(1, 5):
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(forward(torch.randn(32, 8, device=device)).square().mean()).backward()
        scaler.unscale_(optimizer)
        unscaled[step] = {n: p.grad.detach().cpu().numpy().copy() for n, p in model.named_parameters()}
        if step == 1:
            beholder.frame_due_now()
        beholder.update()
        scaler.step(optimizer)
        scaler.update()
    beholder.close()
    frame = read_frame_file(run_dir)
    assert frame.header["step"] == 2
    assert check_sampled_pixels(frame, unscaled[2]) > 100
    columns = read_timeline(run_dir)
    for name, grad in unscaled[2].items():
        assert columns[name]["flags"][0] & tl.EXACT_NORM
        assert columns[name]["norm"][0] == pytest.approx(np.linalg.norm(grad), rel=1e-5)
    assert max(np.abs(g).max() for g in unscaled[2].values()) < 10  # (scaled, they were 16384 times more)


def scaled_steps(beholder, model, optimizer, scaler, steps: int, before=None) -> None:
    """Steps 1 to `steps` of an fp16-style loop under a loss scaler, the gradients of step 3 overflowing
    (the scaler skips it), a frame at each; before(step), if given, runs first (a settings change)."""
    for step in range(1, steps + 1):
        if before is not None:
            before(step)
        optimizer.zero_grad(set_to_none=True)
        loss = model(torch.randn(32, 8)).square().mean()
        scaler.scale(loss * (1e38 if step == 3 else 1.0)).backward()  # step 3 overflows
        scaler.unscale_(optimizer)
        beholder.frame_due_now()
        beholder.update()
        scaler.step(optimizer)
        scaler.update()


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("scaled", [True, False])
def test_a_loss_scalers_overflow_is_recorded_but_not_an_anomaly(run_dir, monkeypatch, batched, scaled):
    """With watch(grad_scaler=...) (fp16 AMP), a step whose gradients overflow, which the scaler skips,
    is in the timeline (an infinite or NaN norm) but not reported as an anomaly; without it, it is."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14)
    set_config(run_dir, FPS=30, values="gradients", mode="current")
    beholder = Beholder(run_dir, strict=True, background=False)
    beholder.watch(model, activations=False, grad_scaler=scaler if scaled else None)
    scaled_steps(beholder, model, optimizer, scaler, 6)
    beholder.close()
    assert scaler.get_scale() == 2.0**13  # the scaler saw the overflow and skipped step 3
    columns = read_timeline(run_dir)["0.weight"]
    assert columns["step"].tolist() == [1, 2, 3, 4, 5, 6]
    assert not np.isfinite(columns["norm"][2]) and np.isfinite(np.delete(columns["norm"], 2)).all()
    anomalies = read_anomalies(run_dir)
    assert bool(columns["flags"][2] & tl.ANOMALY) is not scaled
    if scaled:
        assert anomalies == [] and beholder.timeline.first_anomaly is None
    else:
        assert {a["step"] for a in anomalies} == {3} and any(a.get("first") for a in anomalies)


def test_hooked_gradients_on_the_host_get_their_norms_within_the_budget(run_dir):
    """On the host the hooks take the gradients' whole norms within the exact pass's budget
    (HOST_EXACT_VALUES a frame on average): 360,600 values get them every second frame; in between the
    records keep the sample's estimate of the gradient before clipping, never the clipped .grad."""
    from beholder_plugin.trainer.timeline import HOST_EXACT_VALUES

    torch.manual_seed(0)
    model = torch.nn.Linear(600, 600)
    assert HOST_EXACT_VALUES < 360_600 < 2 * HOST_EXACT_VALUES
    set_config(run_dir, FPS=1, values="gradients", mode="current")
    beholder = Beholder(run_dir, background=False)
    beholder.watch(model, activations=False)
    beholder.watched.read_gradients = False
    unclipped = {}
    for step in range(1, 9):
        model.zero_grad(set_to_none=True)
        model(torch.randn(16, 600)).square().mean().backward()
        unclipped[step] = float(torch.linalg.vector_norm(model.weight.grad))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-4)
        if step % 2:
            beholder.frame_due_now()
        beholder.update()
    beholder.close()
    columns = read_timeline(run_dir)["weight"]
    assert columns["step"].tolist() == [2, 4, 6, 8]
    assert [bool(f & tl.EXACT_NORM) for f in columns["flags"]] == [False, True, False, True]
    expected = [unclipped[s] for s in (2, 4, 6, 8)]
    np.testing.assert_allclose(columns["norm"][1::2], expected[1::2], rtol=1e-5)
    np.testing.assert_allclose(columns["norm"][::2], expected[::2], rtol=0.2)  # the sample's estimate
    assert min(expected) > 100 * 1e-4


def test_tensor_subclasses_get_no_exact_pass(run_dir):
    """Only plain tensors get the norm pass: a subclass (DTensor under FSDP2) could run a collective."""

    class Wrapped(torch.Tensor):
        pass

    set_config(run_dir, FPS=30, values="arrays")
    with Beholder(run_dir, background=False) as beholder:
        beholder.update(arrays={"plain": torch.ones(8, 8), "wrapped": torch.ones(8, 8).as_subclass(Wrapped)})
    columns = read_timeline(run_dir)
    assert columns["plain"]["flags"][0] & tl.EXACT_NORM
    assert not columns["wrapped"]["flags"][0] & tl.EXACT_NORM
    assert columns["wrapped"]["norm"][0] == pytest.approx(8.0)  # the sample's figure, still there


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.parametrize("batched", [True, False])
def test_tensors_torch_takes_no_norm_of_leave_the_others_exact(run_dir, monkeypatch, batched):
    """float8 and complex32 tensors (torch has no norm kernel for them) keep their sample's figures,
    and the tensors beside them their exact norms: before, the exact pass failed for the whole frame."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
    set_config(run_dir, FPS=30, values="arrays")
    plain = torch.full((8, 8), 2.0)
    arrays = {"plain": plain, "f8": torch.full((4, 4), 0.5).to(torch.float8_e4m3fn),
              "c32": torch.full((4,), 3.0, dtype=torch.complex64).to(torch.complex32)}
    with Beholder(run_dir, background=False, strict=True) as beholder:
        assert beholder.update(arrays=arrays)
    columns = read_timeline(run_dir)
    assert columns["plain"]["flags"][0] & tl.EXACT_NORM and columns["plain"]["norm"][0] == 16.0
    for name, norm in (("f8", 2.0), ("c32", 6.0)):
        assert not columns[name]["flags"][0] & tl.EXACT_NORM
        assert columns[name]["norm"][0] == pytest.approx(norm)  # the sample's figure (here every value)


def test_a_new_beholder_clears_a_stale_temporary_timeline_file(run_dir):
    """A base.bht rewrite cut short by a killed trainer leaves a temp file; the next Beholder clears it."""
    from beholder_plugin.protocol.files import temp_name

    directory = tl.timeline_dir(run_dir)
    os.makedirs(directory)
    stale = os.path.join(directory, temp_name(tl.BASE_FILE))
    with open(stale, "wb") as f:
        f.write(b"x" * 100)
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    Beholder(run_dir).close()
    assert not os.path.exists(stale)


@pytest.mark.parametrize("batched", [True, False])
def test_activations_carry_the_whole_outputs_norm(run_dir, monkeypatch, batched):
    """Activations shown: each record's norm is the layer output's over every value (the hook takes
    it; on a device it is read back with the frame), flagged exact; a NaN output is an anomaly."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    truth: dict[int, dict[str, float]] = {}
    step = 0

    def record(name):
        def hook(module, inputs, output):
            truth.setdefault(step, {})[name] = float(torch.linalg.vector_norm(output.detach().double()))
        return hook

    for name, module in model.named_children():
        module.register_forward_hook(record(name))
    set_config(run_dir, FPS=1, values="activations", mode="current")
    beholder = Beholder(run_dir, clock=lambda: 0.0)  # frames fall due only when the test says so
    beholder.watch(model, gradients=False)
    x = torch.randn(300, 8) * 3  # 19,200 values a hidden output: more than the statistics' sample
    for step in range(1, 32):
        optimizer.zero_grad()
        out = model(x if step != 21 else x * float("nan"))  # step 21's forward is a captured one
        out.square().mean().backward()
        if step != 21:
            optimizer.step()
        if step in FRAME_STEPS:
            beholder.frame_due_now()  # hooks armed for the next step, whose update() takes the frame
        beholder.update()
        beholder.flush()
    beholder.close()
    columns = read_timeline(run_dir)
    hidden = columns["0"]
    assert hidden["step"].tolist() == [2, 11, 21, 31]
    for name in ("0", "1", "2"):
        found = columns[name]
        for k, at in enumerate(found["step"].tolist()[:2]):
            assert found["norm"][k] == pytest.approx(truth[at][name], rel=1e-5), (name, at)
        assert (found["flags"][:2] & tl.EXACT_NORM).all() and (found["flags"][:2] & tl.EXACT_NONFINITE).all()
        assert np.isnan(found["norm"][2])
    anomalies = read_anomalies(run_dir)
    record = next(a for a in anomalies if a["section"] == "0")
    assert record["values"] == "activations" and record["kind"] == "nan" and record["steps"] == [12, 21]


@pytest.fixture
def again(monkeypatch) -> list:
    """What each frame's exact pass answered when asked to reuse the last frame's sorting (True: reused)."""
    from beholder_plugin.trainer.exact_pass import ExactPass

    real, answers = ExactPass._gather_again, []

    def spy(self, *args):
        answers.append(real(self, *args))
        return answers[-1]

    monkeypatch.setattr(ExactPass, "_gather_again", spy)
    return answers


@pytest.mark.parametrize("values", ["trainable_variables", "gradients"])
def test_a_frame_reuses_the_norms_the_per_step_check_took_at_its_step(run_dir, monkeypatch, values, again):
    """update() runs the per-step check before the frame's exact pass: one fused norm pass serves both,
    and the records hold the tensors' exact norms all the same."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)

    class Norms(torch.utils._python_dispatch.TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls += func.overloadpacket.__name__ == "_foreach_norm"
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    set_config(run_dir, FPS=30, values=values, mode="current")
    counted, expected = [], []
    with Beholder(run_dir) as beholder:
        beholder.watch(model)
        for frame in range(5):
            optimizer.zero_grad()
            if frame == 3:  # the parameters move to new memory (another dtype): sorted afresh
                model.double()
            if frame == 4 and values == "gradients":  # a gradient missing: sorted afresh
                model[2].bias.requires_grad_(False)
                model[2].bias.grad = None
            model(torch.randn(4, 8, dtype=next(model.parameters()).dtype)).square().mean().backward()
            optimizer.step()
            tensors = [p.grad if values == "gradients" else p for p in model.parameters()]
            expected.append([float(torch.linalg.vector_norm(t.detach())) if t is not None else np.nan
                             for t in tensors])
            beholder.frame_due_now()
            with Norms() as norms:
                assert beholder.update()
            counted.append(norms.calls)
            beholder.flush()
        assert beholder.timeline.per_step
    # the first frame starts the check, the next ones reuse its norms (in float64, from frame 3 on, torch
    # refuses a float32 norm and is asked again: more dispatches, the same reuse)
    assert counted[1:3] == [1, 1]
    # frames of the same tensors skip the sorting; weights that moved (frame 3) or a gradient gone
    # (frame 4) are sorted afresh (gradients are read through their parameters at each step: the
    # new dtype changes nothing there)
    assert again == ([True, True, True, False] if values == "gradients" else [True, True, False, True])
    timeline = read_timeline(run_dir)
    names = [n for n, _ in model.named_parameters()]
    for i, name in enumerate(names):
        norms = timeline[name]["norm"]  # (a section without a gradient has no record at its frame)
        np.testing.assert_allclose(norms, [row[i] for row in expected][:len(norms)], rtol=1e-5)


def test_norm_groups_are_what_torchs_fused_norm_takes(run_dir, monkeypatch):
    """Tensors of several dtypes and layouts: each _foreach_norm of the per-step check and of the frames
    gets one dtype, each tensor non-overlapping and dense or each not (torch's own test), so that on a GPU
    one odd tensor does not send the whole list down the per-tensor path; the records keep every tensor's
    exact norm in its own place."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, 3, 3, generator=gen)
    arrays = {
        "float32": torch.randn(16, 4, generator=gen),
        "bfloat16": torch.randn(12, 5, generator=gen).to(torch.bfloat16),
        "channels_last": base.to(memory_format=torch.channels_last),
        "float64": torch.randn(7, 3, generator=gen, dtype=torch.float64),
        "transposed": torch.randn(5, 9, generator=gen).t(),
        "strided": torch.randn(10, 12, generator=gen)[:, ::3],
        "float16": torch.randn(20, generator=gen).to(torch.float16),
        "expanded": torch.randn(4, 1, generator=gen).expand(4, 6),
        "float32 again": torch.randn(3, 3, 2, generator=gen),
    }
    norms = NormKinds()
    set_config(run_dir, FPS=30, values="arrays", mode="current")
    with Beholder(run_dir, strict=True) as beholder:
        for _ in range(3):
            beholder.frame_due_now()
            with norms:
                assert beholder.update(arrays=arrays)
                beholder.update(arrays=arrays)  # no frame due: the per-step check alone
            beholder.flush()
        assert beholder.timeline.per_step  # (the per-step check ran)
    assert norms.calls and all(len(kinds) == 1 for kinds in norms.calls), norms.calls
    columns = read_timeline(run_dir)
    for name, t in arrays.items():
        expected = float(torch.linalg.vector_norm(t.double()))
        assert columns[name]["norm"][-1] == pytest.approx(expected, rel=1e-2), name  # (bf16/fp16 sums)
        assert columns[name]["flags"][-1] & tl.EXACT_NORM, name


class NormKinds(torch.utils._python_dispatch.TorchDispatchMode):
    """Records, for each _foreach_norm called inside it, the set of (dtype, non-overlapping and dense by
    torch's own test) of the tensors it got."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[set] = []
        self.dense = torch_dense()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ == "_foreach_norm":
            self.calls.append({(t.dtype, self.dense(t)) for t in args[0]})
        return func(*args, **(kwargs or {}))


def torch_dense():
    """torch's own test of non-overlapping and dense tensors (its name moved between versions)."""
    import torch._prims_common as prims

    return getattr(prims, "is_non_overlapping_and_dense_or_false", None) or prims.is_non_overlapping_and_dense


@pytest.mark.parametrize("make", [
    lambda: torch.zeros(4, 5), lambda: torch.zeros(4, 5).t(), lambda: torch.zeros(2, 3, 4, 5)[:, :, ::2],
    lambda: torch.zeros(2, 3, 4, 5).to(memory_format=torch.channels_last),
    lambda: torch.zeros(3, 1).expand(3, 4),
    lambda: torch.zeros(()), lambda: torch.zeros(1, 7, 1), lambda: torch.zeros(6, 6)[1:3, 1:5],
    lambda: torch.zeros(6, 6)[:, 0], lambda: torch.zeros(2, 3, 4).permute(2, 0, 1),
    lambda: torch.zeros(8).as_strided((3, 2), (2, 1)), lambda: torch.zeros(8).as_strided((2, 3), (1, 2)),
])
def test_dense_agrees_with_torch(make):
    """exact_pass.dense() tells non-overlapping and dense tensors as torch does."""
    from beholder_plugin.trainer.exact_pass import dense

    t = make()
    assert dense(t) == torch_dense()(t)


def test_a_missing_gradient_stays_in_its_norm_group(run_dir, monkeypatch):
    """Between frames the per-step check stands a zero for a gradient a step did not make: a zero of its
    parameter's dtype, so that a bf16 layer's group stays one dtype (torch's fused path on a GPU)."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)
    norms = NormKinds()
    torch.manual_seed(0)
    first, second = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4).to(torch.bfloat16)
    model = torch.nn.ModuleList([first, second])
    set_config(run_dir, FPS=30, values="gradients", mode="current")
    with Beholder(run_dir, strict=True) as beholder:
        beholder.watch(model)
        for step in range(6):
            model.zero_grad(set_to_none=True)
            second(first(torch.randn(4, 8)).to(torch.bfloat16)).float().square().mean().backward()
            if step in (2, 3):
                second.bias.grad = None  # a step that made no gradient for it
            if step in (0, 5):
                beholder.frame_due_now()
            with norms:
                beholder.update()
            beholder.flush()
        checks = beholder.timeline.per_step
        assert checks
    assert len(norms.calls) >= 6 and all(len(kinds) == 1 for kinds in norms.calls), norms.calls
    assert {next(iter(kinds))[0] for kinds in norms.calls} == {torch.float32, torch.bfloat16}


class CudaNorms(torch.utils._python_dispatch.TorchDispatchMode):
    """torch's fused norm as its CUDA kernel lays it out (each tensor's norm an element of one new vector,
    returned as views of it), on CPU tensors; counts the stacks, cats and index_selects called inside."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        out = func(*args, **(kwargs or {}))
        if name == "_foreach_norm":
            vector = torch.stack(out)
            return [vector[i] for i in range(len(out))]
        if name in ("stack", "cat", "index_select"):
            self.ops.append(name)
        return out


@pytest.mark.parametrize("fused", ["cuda", "cpu"])
@pytest.mark.parametrize("mixed", [False, True])
def test_the_per_step_check_takes_the_fused_norms_vector_as_it_comes(run_dir, monkeypatch, fused, mixed):
    """On CUDA the fused norm pass returns its norms as the elements of one vector: the per-step check
    uses that vector (no stack of 214 scalars, each a Python object, at every step), and with several
    norm groups one cat and one index_select put the norms in place. The first infinite and the first
    NaN step of each section are caught either way, with each record's norm the tensor's own."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    if mixed:  # two norm groups: float32 and bfloat16
        model[2].to(torch.bfloat16)
    names = [n for n, _ in model.named_parameters()]
    set_config(run_dir, FPS=1, values="trainable_variables", mode="current")
    mode = CudaNorms() if fused == "cuda" else contextlib.nullcontext()
    per_update, expected = [], []
    with Beholder(run_dir, strict=True) as beholder:
        beholder.watch(model, activations=False, gradients=False)
        for step in range(1, 13):
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.01)
                if step == 5:
                    model[0].bias[2] = float("inf")
                if step == 9:
                    model[2].weight[1, 1] = float("nan")
            if step in (1, 12):
                beholder.frame_due_now()
            before = len(mode.ops) if fused == "cuda" else 0
            with mode:
                beholder.update()
            if fused == "cuda":
                per_update.append(mode.ops[before:])
            beholder.flush()
            norms = [float(torch.linalg.vector_norm(p.detach().double())) for p in model.parameters()]
            expected.append(norms)
        assert beholder.timeline.per_step
    if fused == "cuda":  # the updates with no frame due: the check alone
        checks = [ops for step, ops in enumerate(per_update, 1) if step not in (1, 12)]
        assert all(ops == (["cat", "index_select"] if mixed else []) for ops in checks), per_update
    anomalies = {a["section"]: a for a in read_anomalies(run_dir)}
    assert anomalies["0.bias"]["kind"] == "inf" and anomalies["0.bias"]["step"] == 5
    assert anomalies["2.weight"]["kind"] == "nan" and anomalies["2.weight"]["step"] == 9
    assert anomalies["0.bias"]["checked"] == anomalies["2.weight"]["checked"] == "step"
    columns = read_timeline(run_dir)
    for i, name in enumerate(names):
        assert columns[name]["step"].tolist() == [1, 12]
        for k, step in enumerate((1, 12)):
            want = expected[step - 1][i]
            got = columns[name]["norm"][k]
            assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(want, rel=1e-2), (name, step)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_the_fused_norms_come_as_one_vector():
    """What CudaNorms stands in for on the CPU holds on CUDA: the per-step check's norms of one group
    are the fused kernel's own vector, with no stack; two groups take one cat and one index_select."""
    from beholder_plugin.trainer.exact_pass import _norms, group_order, norm_groups

    gen = torch.Generator(device="cuda").manual_seed(0)
    tensors = [torch.randn(n, 7, device="cuda", generator=gen) for n in range(1, 40)]
    mixed = tensors[:20] + [t.to(torch.bfloat16) for t in tensors[20:]]
    for ts in (tensors, mixed):
        groups = norm_groups(ts)
        with OpLog() as log:
            norms = _norms(torch, ts, groups, group_order(groups, ts[0].device)[0])
        names = [name for name, _ in log.calls]
        assert names.count("stack") == 0
        assert names.count("cat") == (0 if groups is None else 1)
        want = torch.stack([torch.linalg.vector_norm(t.float()) for t in ts])
        torch.testing.assert_close(norms, want, rtol=1e-3, atol=0)


@pytest.mark.parametrize("values", ["trainable_variables", "gradients"])
def test_the_per_step_check_is_replayed_while_its_tensors_stay(run_dir, monkeypatch, values):
    """With graphs (CUDA's, replayed here from the captured addresses) the per-step check is captured
    once its tensors lay in the same place two steps running, replayed while they stay, and captured
    again when they move (a gradient made afresh): each section's first non-finite step is named
    exactly (a gradient poisoned for one step only), and the records keep each tensor's own norm."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)
    monkeypatch.setattr(torch_batch, "CPU_GRAPHS", True)
    replays: list = []
    real = torch_batch.AddressReplay.replay

    def counted(graph) -> None:
        if graph.name == "check":
            replays.append((graph, step))
        real(graph)

    monkeypatch.setattr(torch_batch.AddressReplay, "replay", counted)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    set_config(run_dir, FPS=1, values=values, mode="current")
    x = torch.randn(32, 8)
    frames, expected = (1, 12, 24, 30), {}
    gradients = values == "gradients"
    with Beholder(run_dir, strict=True) as beholder:
        beholder.watch(model, activations=False, gradients=gradients)
        for step in range(1, 31):
            model.zero_grad(set_to_none=False)  # the gradients stay where they are (no optimizer: the
            if step == 8 and gradients:          # weights change only where written)
                model[0].weight.grad = None  # made afresh by the next backward pass, elsewhere
            model(x).square().mean().backward()
            poisoned = model[2].bias.grad if gradients else model[2].bias
            with torch.no_grad():
                if step == 5:
                    poisoned[0] = float("inf")
                if step == 17:
                    (model[0].weight.grad if gradients else model[0].weight)[3, 3] = float("nan")
            if step in frames:
                beholder.frame_due_now()
                tensors = [p.grad if gradients else p for p in model.parameters()]
                expected[step] = [float(torch.linalg.vector_norm(t.detach().double())) for t in tensors]
            beholder.update()
            beholder.flush()
    graphs = {id(graph) for graph, _ in replays}
    assert len(graphs) == (2 if gradients else 1), replays  # captured again after the move
    replayed = {at for _, at in replays}
    assert {5, 17} <= replayed and len(replayed) >= 20, sorted(replayed)
    anomalies = {a["section"]: a for a in read_anomalies(run_dir)}
    assert anomalies["2.bias"]["step"] == 5 and anomalies["2.bias"]["kind"] == "inf"
    assert anomalies["2.bias"]["first"]
    assert anomalies["0.weight"]["step"] == 17 and anomalies["0.weight"]["kind"] == "nan"
    assert {a["checked"] for a in anomalies.values()} == {"step"}
    columns = read_timeline(run_dir)
    for i, (name, _) in enumerate(model.named_parameters()):
        assert columns[name]["step"].tolist() == list(frames)
        for k, at in enumerate(frames):
            want, got = expected[at][i], columns[name]["norm"][k]
            assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(want, rel=1e-5), (name, at)


def test_a_replayed_check_gives_its_own_norms_after_an_eager_step(monkeypatch):
    """A gradient that comes back to where the check's graph reads it, after one step elsewhere: the
    graph is replayed, and the check's norms are that replay's (its own outputs, overwritten in place as
    a CUDA graph's are), not the norms of the step that ran eagerly in between."""
    from beholder_plugin.trainer import exact_pass

    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)
    monkeypatch.setattr(torch_batch, "CPU_GRAPHS", True)
    params = [torch.nn.Parameter(torch.zeros(6, 5)), torch.nn.Parameter(torch.zeros(5))]
    home = torch.empty(6, 5)  # where the first gradient lies, but for one step
    elsewhere, bias = torch.empty(6, 5), torch.empty(5)
    check = None
    for step, (where, scale) in enumerate([(home, 1.0), (home, 2.0), (home, 3.0), (elsewhere, 4.0),
                                           (home, 5.0), (home, 6.0)], start=1):
        where.fill_(scale)
        params[0].grad, params[1].grad = where, bias.fill_(-scale)
        if check is None:
            check = exact_pass.StepCheck(torch, [0, 1], [p.grad for p in params], params, ["w", "b"])
        check.check(step)
        want = torch.stack([torch.linalg.vector_norm(p.grad) for p in params])
        torch.testing.assert_close(check.norms, want, rtol=1e-6, atol=0, msg=f"step {step}")
        if step == 2:
            graph = check._graph
    assert graph is not None and check._graph is graph  # captured at step 2, replayed at 3, 5 and 6
    # what the graph reads besides the gradients (its flags, the step, the norm groups' order) lives as
    # long as the check: a CUDA graph holds none of it
    assert len(graph.reads) >= 3
    assert set(graph.reads) <= storages_held_by(check, skip="_graph")


def test_update_arrays_of_the_same_parameters_reuse_the_per_step_checks_norms(run_dir, monkeypatch, again):
    """update(arrays=dict(model.named_parameters())) makes a new dict every step: its frames still skip
    the exact pass's sorting while they hold the same parameters under the same names, each where it
    was; a parameter given new storage, or another tensor under a name, is sorted afresh, and the records
    keep each tensor's exact norm."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    set_config(run_dir, FPS=1, values="arrays", mode="current")
    expected = []
    with Beholder(run_dir, strict=True) as beholder:
        for frame in range(6):
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.5)
            arrays = dict(model.named_parameters())
            if frame == 3:  # new storage
                model[0].weight.data = model[0].weight.data.clone()
            if frame == 5:  # another tensor under a name
                arrays["2.bias"] = torch.randn(4)
            beholder.frame_due_now()
            assert beholder.update(arrays=arrays)
            beholder.flush()
            expected.append({name: float(torch.linalg.vector_norm(t.detach().double()))
                             for name, t in arrays.items()})
    assert again == [True, True, False, True, False]
    columns = read_timeline(run_dir)
    for name in expected[0]:
        np.testing.assert_allclose(columns[name]["norm"], [row[name] for row in expected], rtol=1e-5)
        assert (columns[name]["flags"] & tl.EXACT_NORM).all()


def test_new_tensors_at_each_frame_get_no_per_step_check_and_are_not_held(run_dir, monkeypatch):
    """update(arrays={n: p.grad}) after zero_grad(set_to_none=True): new tensors at every frame. No
    per-step check is made for them (it would look at the last frame's gradients at every step, keep
    them alive through the next backward pass, and be made again, with its uploads, at every frame):
    no upload after the first frame, and a dropped gradient is freed. Handed over the same tensors
    again, the check starts, and names a NaN's exact step between two frames."""
    import gc
    import weakref

    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)
    uploads, real_upload = [], torch_batch.upload

    def counted(values, device):
        uploads.append(values.shape)
        return real_upload(values, device)

    monkeypatch.setattr(torch_batch, "upload", counted)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    model[2].to(torch.bfloat16)  # two norm groups (their order was uploaded at every check made)
    set_config(run_dir, FPS=1, values="arrays", mode="current")
    x = torch.randn(32, 8)
    with Beholder(run_dir, strict=True) as beholder:
        dropped = []
        for step in range(1, 7):
            model.zero_grad(set_to_none=True)
            model[2](model[1](model[0](x)).bfloat16()).float().square().mean().backward()
            grads = {name: p.grad for name, p in model.named_parameters()}
            dropped.append([weakref.ref(g) for g in grads.values()])
            before = len(uploads)
            beholder.frame_due_now()
            assert beholder.update(arrays=grads)
            beholder.flush()
            if step > 1:
                assert len(uploads) == before, uploads[before:]
            assert beholder.timeline.per_step == []
            del grads
            model.zero_grad(set_to_none=True)
            gc.collect()
            assert all(ref() is None for refs in dropped for ref in refs)

        kept = {"w." + name: p.detach().clone() for name, p in model.named_parameters()}
        for step in range(7, 20):
            if step == 15:
                kept["w.0.weight"][2, 2] = float("nan")
            if step in (7, 10, 19):
                beholder.frame_due_now()
            beholder.update(arrays=kept)
            beholder.flush()
            if step >= 10:
                assert len(beholder.timeline.per_step) == 1  # the same tensors again: checked
    record = next(a for a in read_anomalies(run_dir) if a["section"] == "w.0.weight")
    assert record["step"] == 15 and record["checked"] == "step" and record["frame_step"] == 19


@pytest.mark.parametrize("graphs", [False, True])
def test_a_rebuilt_check_keeps_the_steps_it_had_flagged(run_dir, monkeypatch, graphs):
    """A parameter given new storage rebuilds the per-step check at the next frame: what the check had
    flagged since the frame before (a NaN at step 20) is still reported at its exact step, not
    between the two frames."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)
    monkeypatch.setattr(torch_batch, "CPU_GRAPHS", graphs)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    set_config(run_dir, FPS=1, values="trainable_variables", mode="current")
    with Beholder(run_dir, strict=True) as beholder:
        beholder.watch(model, activations=False, gradients=False)
        checks = []
        for step in range(1, 31):
            with torch.no_grad():
                if step == 14:
                    model[2].weight.data = model[2].weight.data.clone()  # the check is rebuilt at 24
                if step == 20:
                    model[0].weight[1, 1] = float("nan")
            if step in (1, 12, 24, 30):
                beholder.frame_due_now()
            beholder.update()
            checks.append(beholder.timeline.per_step[0])
            beholder.flush()
    assert checks[22] is not checks[23]  # rebuilt at the frame of step 24
    record = next(a for a in read_anomalies(run_dir) if a["section"] == "0.weight")
    assert record["step"] == 20 and record["checked"] == "step" and record["frame_step"] == 24


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_on_two_gpus_hooked_gradients_are_unscaled_on_each(run_dir):
    """A model split over two GPUs under a GradScaler (its scale on the first): the gradients on the
    second are unscaled too, with the inverse scale copied there (a kernel takes no 0-d tensor of
    another GPU)."""
    torch.manual_seed(0)
    first, second = torch.nn.Linear(8, 16).to("cuda:0"), torch.nn.Linear(16, 4).to("cuda:1")
    model = torch.nn.ModuleDict({"first": first, "second": second})
    check_unscaled_hooked_gradients(run_dir, "cuda:0", model, lambda x: second(first(x).relu().to("cuda:1")))


@pytest.mark.parametrize("mode", ["current", "variance"])
def test_extreme_finite_values_write_their_frames_and_records_without_numpy_warnings(run_dir, mode, caplog):
    """Values whose squares overflow float32 (1e20 up), and a section whose range is denormal: the frames
    and timeline records are written with no RuntimeWarning in the training log (each was one: the
    exact norm's float32 dot, the norm column's cast, the histogram's scale); the exact norm of the
    large values is the float64 one, and a norm past float32 (stored as inf) is no anomaly."""
    import warnings

    tiny = np.float32(np.finfo(np.float32).smallest_subnormal)
    set_config(run_dir, FPS=30, values="arrays", mode=mode)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Beholder(run_dir, background=False, strict=True) as beholder:
            for k in range(3):
                beholder.frame_due_now()
                assert beholder.update(arrays={
                    "denormal": (np.arange(600, dtype=np.float32).reshape(6, 100) % (40 + k)) * tiny,
                    "big": np.full((2, 2), 1e20 * (k + 1), np.float32),
                    "huge": np.full((2, 2), 3e38, np.float32)})
    assert [str(w.message) for w in caught] == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    columns = read_timeline(run_dir)
    assert columns["big"]["flags"][-1] & tl.EXACT_NORM and columns["big"]["norm"][-1] == np.float32(6e20)
    assert columns["huge"]["norm"][-1] == np.inf  # (6e38: past the float32 column, every value finite)
    assert read_anomalies(run_dir) == []


@pytest.mark.parametrize("values, batched", [("activations", False), ("activations", True),
                                             ("gradients", False), ("gradients", True)])
def test_hooked_values_whose_squares_overflow_float32_are_no_infinite_value(run_dir, monkeypatch, batched,
                                                                            values):
    """Layer outputs and hooked gradients (cleared after the step) past 1e19, finite: the norms the hooks
    take are finite and exact (the host path takes an infinite float32 one again in float64; the device
    path sums a gradient buffer's, and a layer output's, in float64), so no "infinite value" is
    reported. Before, both were summed in float32 only (layer outputs on a device until this round): a
    first anomaly "an infinite value" with no infinite value."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
    set_config(run_dir, FPS=30, values=values, mode="current")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    with torch.no_grad():
        model[0].weight.mul_(1e21)
    x = torch.randn(4, 6)
    with Beholder(run_dir, background=False, strict=True) as beholder:
        beholder.watch(model)
        for _ in range(4):
            out = model(x)
            out.sum().backward()
            truth = {"0": model[0](x), "1": out, "1.weight": model[1].weight.grad}
            model.zero_grad(set_to_none=True)  # (gone before update(): the hooks catch the gradients)
            beholder.frame_due_now()
            beholder.update()
        assert beholder.frames_written == 2
    assert read_anomalies(run_dir) == []
    columns = read_timeline(run_dir)
    for name in ("0", "1") if values == "activations" else ("1.weight",):  # (its inputs: layer 0's output)
        want = float(torch.linalg.vector_norm(truth[name].detach(), dtype=torch.float64))
        assert want > 1e20 and np.isfinite(want)
        assert columns[name]["flags"][-1] & tl.EXACT_NORM
        np.testing.assert_allclose(columns[name]["norm"][-1], want, rtol=1e-5)


@pytest.mark.parametrize("batched", [True, False])
def test_torch_values_whose_squares_overflow_float32_are_no_infinite_value(run_dir, monkeypatch, batched):
    """Finite torch values past 1e19 (a diverging run): the norm's squares are summed in float64, on
    the device path (the per-step check at every update(), the frames' exact pass) as on the host
    path, so the norm is finite and exact and no "infinite value" is reported. Before, the device
    path's float32 sum overflowed: a first anomaly "an infinite value" with no infinite value."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
    set_config(run_dir, FPS=30, values="arrays", mode="current")
    big = torch.full((2, 2), 1e20)
    with Beholder(run_dir, background=False, strict=True) as beholder:
        for _ in range(3):
            big.mul_(2)
            beholder.update(arrays={"big": big, "w": torch.ones(3, 3)})  # a step (the per-step check)
            beholder.frame_due_now()
            assert beholder.update(arrays={"big": big, "w": torch.ones(3, 3)})
    norms = read_timeline(run_dir)["big"]["norm"]
    assert read_anomalies(run_dir) == []
    np.testing.assert_allclose(norms, [4e20, 4e20, 8e20, 16e20], rtol=1e-6)  # (the first step is due)


def test_restarted_trainers_keep_anomalies_jsonl_within_its_cap_and_pin_only_first_anomalies(
        run_dir, monkeypatch):
    """Each process counted its own anomaly records only: after 19 restarts anomalies.jsonl passed its
    4 MiB read cap and the timeline route answered 500. And a restart pinned the step of every earlier
    record in every section, so thinning kept 2,001 pinned records of a section that never had one."""
    from beholder_plugin.trainer import timeline as timeline_module

    monkeypatch.setattr(timeline_module, "MAX_ANOMALIES", 5)
    set_config(run_dir, FPS=30, values="arrays")
    names = [f"layer{i}" for i in range(8)]
    for _ in range(3):  # three trainers, each finding 8 norm jumps: layer i's at step 8 + i
        with Beholder(run_dir, background=False, norm_jump=10.0) as beholder:
            for step in range(1, 17):
                beholder.frame_due_now()
                beholder.update(arrays={n: np.full(4, 100.0 if step == 8 + i else 1.0, np.float32)
                                        for i, n in enumerate(names)})
            protected = set(beholder.timeline.writer.protected)
    records = read_anomalies(run_dir)
    assert [(r["section"], r["step"], r.get("first")) for r in records] == [
        ("layer0", 8, True), ("layer1", 9, None), ("layer2", 10, None), ("layer3", 11, None),
        ("layer4", 12, None)]
    assert protected == {7, 8}  # (the last trainer's first anomaly's frames, and the adopted first one's)


def test_section_names_that_change_every_frame_do_not_grow_the_trainers_memory(run_dir, monkeypatch):
    """Each new name kept its recent norms (and the writer its name) for the whole run: about 0.5 KB a
    frame for a name per frame. Past MAX_JUDGED_SECTIONS they start again (scaled down here)."""
    from beholder_plugin.trainer import timeline as timeline_module

    monkeypatch.setattr(timeline_module, "MAX_JUDGED_SECTIONS", 50)
    monkeypatch.setattr(tl, "MAX_COUNTED_SECTIONS", 40)
    set_config(run_dir, FPS=30, values="arrays")
    with Beholder(run_dir, background=False, norm_jump=10.0) as beholder:
        for step in range(1, 201):
            beholder.frame_due_now()
            beholder.update(arrays={f"token{step}": np.ones(4, np.float32), "w": np.ones(4, np.float32)})
            assert len(beholder.timeline._slots) <= 50 and len(beholder.timeline._ring) <= 2 * 64
        assert len(beholder.timeline.writer.sections) <= 41
        for step in range(201, 221):  # a steady section's jump is still found after the restarts
            beholder.frame_due_now()
            beholder.update(arrays={"w": np.full(4, 100.0 if step == 220 else 1.0, np.float32)})
    found = [(a["kind"], a["section"], a["step"]) for a in read_anomalies(run_dir)]
    assert found == [("norm_jump", "w", 220)]


def test_a_nan_the_sample_missed_is_counted_at_least_once_where_the_count_is_estimated(run_dir, monkeypatch):
    """On the device path a tensor's norm is exact but its non-finite count is the sample's estimate: a
    NaN outside the sample read 'nan, nonfinite 0', which contradicts itself. It reads at least 1."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)
    set_config(run_dir, FPS=30, values="arrays", mode="current")
    weights = torch.randn(100, 100)
    weights[1, 0] = float("nan")  # (flat position 100: outside the sample's runs)
    with Beholder(run_dir, strict=True) as beholder:
        for _ in range(2):
            beholder.frame_due_now()
            assert beholder.update(arrays={"w": weights})
            beholder.flush()
    anomaly, = read_anomalies(run_dir)
    assert anomaly["kind"] == "nan" and anomaly["found"]["nonfinite"] == 1.0
    assert not anomaly["found"]["nonfinite_exact"]
    assert (read_timeline(run_dir)["w"]["nonfinite"] == 1.0).all()


@pytest.mark.parametrize("batched", [False, True])
def test_an_infinite_bfloat16_value_gets_exact_figures(run_dir, monkeypatch, caplog, batched):
    """The host's exact pass read a CPU tensor through NumPy, which has no bfloat16: an array holding
    inf failed it (a logged traceback), and its norm was the sample's estimate, 8 where it is inf."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
    set_config(run_dir, values="arrays", FPS=30, mode="current")
    w = torch.ones(4, 4, dtype=torch.bfloat16)
    w[1, 1] = float("inf")
    with caplog.at_level(logging.WARNING), Beholder(run_dir, strict=True) as beholder:
        assert beholder.update(arrays={"w": w})
    column = read_timeline(run_dir)["w"]
    assert np.isposinf(column["norm"]).all() and (column["nonfinite"] == 1).all()
    assert (column["flags"] & tl.EXACT_NORM).all()
    # (a count on the device is the sample's estimate, at least 1 where the norm is not finite)
    assert bool((column["flags"] & tl.EXACT_NONFINITE).all()) is not batched
    assert [a["found"]["norm"] for a in read_anomalies(run_dir)] == ["inf"]
    assert "Traceback" not in caplog.text and "unsupported" not in caplog.text


def test_switching_values_between_gradients_and_weights_is_no_norm_jump(run_dir):
    """A section's weights and gradients share its name. Values turned from gradients back to weights
    in the dashboard: the weights' norm (about 2) was judged against the gradients' median (about 0.003),
    a "norm jump" in every section, the run's first anomaly, which on_anomaly="raise" raised into
    training. Each values' norms are judged apart now, and the timeline keeps each as its own series."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
    with Beholder(run_dir, strict=True, background=False, on_anomaly="raise") as beholder:
        beholder.watch(model)
        for step in range(36):
            values = "gradients" if 12 <= step < 24 else "trainable_variables"
            set_config(run_dir, values=values, FPS=30, mode="current")
            opt.zero_grad()
            (torch.nn.functional.cross_entropy(model(x), y) * 0.01).backward()  # (gradients ~1e-3)
            opt.step()
            beholder.frame_due_now()
            assert beholder.update()  # (raised AnomalyError at step 25 before)
    assert read_anomalies(run_dir) == []
    weights = read_timeline(run_dir, values="trainable_variables")["0.weight"]
    grads = read_timeline(run_dir, values="gradients")["0.weight"]
    assert list(weights["step"]) == list(range(1, 13)) + list(range(25, 37))
    assert list(grads["step"]) == list(range(13, 25))
    assert grads["norm"].max() < 0.01 * weights["norm"].min()  # (why one series would have "jumped")
    assert set(tl.values_of(grads["flags"]).tolist()) == {tl.VALUES_CODES["gradients"]}
    assert len(read_timeline(run_dir)["0.weight"]["step"]) == 36  # (values=None: every record)


@pytest.mark.parametrize("batched", [True, False])
def test_a_gradients_overflow_is_no_weights_anomaly_after_values_switch(run_dir, monkeypatch, batched):
    """A loss scaler's overflow at step 3 while gradients are shown (no anomaly: the scaler skips the
    step), then Values switched to weights at step 6: the rebuilt per-step check took over the gradients'
    first non-finite step by section name (weights and gradients share names), and finite weights were
    reported as 'a NaN ... at step 3' (with on_anomaly="raise", a stopped training run)."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14)
    with Beholder(run_dir, strict=True, background=False, on_anomaly="raise") as beholder:
        beholder.watch(model, activations=False, grad_scaler=scaler)

        def values_at(step: int) -> None:
            shown = "gradients" if step <= 5 else "trainable_variables"
            set_config(run_dir, FPS=30, mode="current", values=shown)

        scaled_steps(beholder, model, opt, scaler, 10, before=values_at)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert read_anomalies(run_dir) == []
    assert read_timeline(run_dir, values="trainable_variables")["0.weight"]["step"].size >= 4


def test_a_section_that_stays_nan_keeps_its_first_anomaly_and_the_run_before_it(run_dir):
    """Training goes on with a NaN in a section: every later record was flagged ANOMALY, and thinning,
    which keeps flagged records first, then dropped the first anomaly's record, the pinned frame before
    it and most of the run before. Only the record where an anomaly was found is flagged now; of
    flagged records past the cap, the oldest are kept."""
    set_config(run_dir, FPS=30, values="arrays", mode="current")
    with Beholder(run_dir, background=False) as beholder:
        beholder.timeline.writer.cap = 64  # (MAX_PER_SECTION scaled down: the same past 2048 frames)
        beholder.timeline.writer.parts_budget = 4000
        for step in range(1, 201):
            w = np.full(16, 1.0 + step, np.float32)
            if step >= 50:
                w[3] = np.nan
            beholder.frame_due_now()
            beholder.update(arrays={"w": w})
    (first,) = read_anomalies(run_dir)
    assert first["kind"] == "nan" and first["step"] == 50
    columns = read_timeline(run_dir)["w"]
    steps = columns["step"].tolist()
    assert len(steps) <= 64 + 64 and 49 in steps and 50 in steps  # (parts past the last compaction)
    assert int(((columns["flags"] & tl.ANOMALY) > 0).sum()) == 1
    assert np.isfinite(columns["norm"]).sum() >= 18  # the first 16 and log-spaced ones before the NaN


def test_thinning_keeps_the_oldest_flagged_records_when_they_alone_exceed_the_cap():
    """More ANOMALY/PINNED records than the cap holds: the first anomalies are the ones kept."""
    n = 1000
    records = tl.make_records(n)
    records["step"] = np.arange(n)
    records["time"] = np.arange(n, dtype=float)
    records["flags"][100::2] = tl.ANOMALY
    kept = tl.thin(records, now=float(n), keep_first=10, keep_recent=10, cap=100)
    flagged = kept["step"][(kept["flags"] & tl.ANOMALY) > 0]
    assert len(kept) <= 100 and flagged[0] == 100 and flagged.tolist() == list(range(100, 100 + 2 * 90, 2))


def test_a_norm_growing_with_the_step_is_no_jump_when_frames_come_unevenly(run_dir):
    """A bias that starts at zero grows steadily with the step; frames at steps 1-4 (slow first steps),
    then every 50 steps (fast ones, under a frame rate): its norm at step 50 is 10 times the median of
    steps 1-4, which was reported as a norm jump. The median is now moved on to the frame's step at the
    norms' median growth per step. A real jump is still one, and so is a divergence that grows by 3
    times a frame from a steady norm."""
    set_config(run_dir, FPS=30, values="arrays", mode="current")
    steps = [1, 2, 3, 4] + list(range(50, 1001, 50))
    with Beholder(run_dir, background=False) as beholder:
        for step in steps:
            beholder.step = step - 1  # (update() counts this step)
            beholder.frame_due_now()
            bias = np.full(64, 0.001 * step, np.float32)  # steady growth with the step
            steady = np.full(64, 1.0 if step < 800 else 3.0 ** ((step - 750) // 50), np.float32)
            jumpy = np.full(64, 1.0 if step != 600 else 100.0, np.float32)
            beholder.update(arrays={"bias": bias, "steady": steady, "jumpy": jumpy})
    jumps = {a["section"]: a for a in read_anomalies(run_dir) if a["kind"] == "norm_jump"}
    assert "bias" not in jumps
    assert jumps["jumpy"]["frame_step"] == 600
    assert jumps["steady"]["frame_step"] == 900  # 27 times its steady norm (3 and 9 were not 10)


def test_an_anomalys_steps_start_after_the_section_was_last_known_clean(run_dir):
    """On the host path an anomaly found by a frame is given the steps since the frame before: of any
    Values, checked or not. The weights clean at step 10, a weight NaN at step 15, gradients shown at
    20 and 30, weights again at 40: it said 'between steps 31 and 40'. Now the range starts after the
    last frame of these values that counted no NaN exactly."""
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(8, 4), "b": torch.nn.Linear(8, 4)})
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(32, 8)
    with Beholder(run_dir, background=False) as beholder:
        beholder.watch(model, activations=False)
        for step in range(1, 41):
            if step in (10, 20, 30, 40):
                shown = "gradients" if step in (20, 30) else "trainable_variables"
                set_config(run_dir, FPS=30, mode="current", values=shown)
                beholder.frame_due_now()
            opt.zero_grad()
            model["a"](x).square().mean().backward()  # (b is off the loss path: its gradient stays finite)
            opt.step()
            if step == 15:
                with torch.no_grad():
                    model["b"].weight[0, 0] = float("nan")
            beholder.update()
    (record,) = [a for a in read_anomalies(run_dir) if a["section"] == "b.weight"]
    assert record["kind"] == "nan" and record["steps"] == [11, 40] and record["checked"] == "frame"
