"""A training step captured as a CUDA graph while watch()'s hooks are armed: the hooks issue nothing.

Inside a capture (``with torch.cuda.graph(g): loss = model(x); loss.backward()``)
no upload, pinned allocation, sync or read back may run, and any kernel a
hook launches would be replayed with the graph. CI has no GPU: here a capture
is stood for by ``torch_batch.capturing`` answering True (what the hooks ask
of each tensor they are handed) for a step of CPU tensors on the device path
(``BATCH_CPU_TENSORS``); the test marked ``gpu`` captures a real graph.
"""

from __future__ import annotations

import copy
import logging
import threading

import pytest
from support import assert_sections_hold, set_config

from beholder_plugin import Beholder
from beholder_plugin.protocol.runfiles import read_frame_file
from beholder_plugin.trainer import exact_pass
from beholder_plugin.trainer import worker as worker_module
from beholder_plugin.trainer.sources import torch_batch
from beholder_plugin.trainer.worker import Worker

torch = pytest.importorskip("torch")
from torch_ops import OpLog  # noqa: E402

nn = torch.nn


class FakeCapture:
    """While ``on``, ``torch_batch.capturing`` answers True for every tensor, as it does on CUDA for a
    tensor handed to a hook during a capture; ``uploads`` counts torch_batch.upload's calls."""

    def __init__(self, monkeypatch) -> None:
        self.on = False
        self.uploads = 0
        real_capturing, real_upload = torch_batch.capturing, torch_batch.upload

        def capturing(t) -> bool:
            return self.on or real_capturing(t)

        def upload(values, device):
            self.uploads += 1
            return real_upload(values, device)

        monkeypatch.setattr(torch_batch, "capturing", capturing)
        monkeypatch.setattr(torch_batch, "upload", upload)


def mlp() -> nn.Module:
    """linear -> relu -> linear, the same weights each time."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def train_step(model: nn.Module, opt, x, y) -> dict:
    """One step, the gradients cleared after it (so that update() arms the gradient hooks); what a frame
    of the step shows: each layer's output and each parameter's gradient, by section name."""
    with torch.no_grad():
        a0 = model[0](x)
        truth = {"0": a0, "1": model[1](a0), "2": model[2](model[1](a0))}
    nn.functional.mse_loss(model(x), y).backward()
    truth.update({name: p.grad.clone() for name, p in model.named_parameters()})
    opt.step()
    opt.zero_grad(set_to_none=True)
    return truth


def names(log: OpLog) -> list[str]:
    """The aten ops a log holds, by name."""
    return [name for name, _ in log.calls]


@pytest.mark.parametrize("values", ["activations", "gradients"])
def test_hooks_issue_nothing_in_a_captured_step_and_frames_resume_at_the_next_eager_step(
        tmp_path, monkeypatch, caplog, values):
    """The hooks armed for the step after a frame fell due, and that step captured as a CUDA graph: they
    issue no op and no upload (the step's ops are those of the same step of an unwatched model, its
    values and gradients the same), the frame says why its values are missing (the log too, once), a
    replay of the graph (the model run without Python, the parameters stepped) is said to be one (not
    taken for a stale torch.compile graph), and the next eager step is shown as usual. Before, the hooks
    sliced the captured step's values with uploads and copies, which break a real capture."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)
    capture = FakeCapture(monkeypatch)
    run = str(tmp_path / "run")
    set_config(run, values=values, FPS=30, mode="current")
    model, twin = mlp(), mlp()
    opt, twin_opt = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, twin))
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 6, generator=gen), torch.randn(4, 3, generator=gen)
    with caplog.at_level(logging.WARNING, logger="beholder"), Beholder(run, strict=True) as beholder:
        beholder.watch(model)
        watched = beholder.watched
        for graph_step in (True, False):  # the capture, then the replay of the graph
            beholder.frame_due_now()
            assert not beholder.update()  # the hooks armed for the coming step
            assert watched.armed == values
            if graph_step:
                with OpLog() as unwatched:
                    train_step(twin, twin_opt, x, y)
                capture.on, uploads = True, capture.uploads
                with OpLog() as log:
                    train_step(model, opt, x, y)
                capture.on = False
                assert names(log) == names(unwatched)
                assert capture.uploads == uploads and watched.graph_seen
                assert not watched.captured and not watched._arrived and watched._queued is None
            else:  # a replay: no Python runs, the captured optimizer step changes the parameters
                with torch.no_grad():
                    for p, q in zip(model.parameters(), twin.parameters()):
                        p.mul_(0.5)
                        q.mul_(0.5)
            for p, q in zip(model.parameters(), twin.parameters()):
                assert torch.equal(p, q)
            beholder.frame_due_now()
            assert beholder.update()
            beholder.flush()
            sections = read_frame_file(run).sections
            assert sections and all("ran in a CUDA graph" in record["missing"] for record in sections)
        assert not watched.compiled  # (no torch.compile graph was blamed, none recompiled)
        for _ in range(2):  # eager steps: shown as usual
            beholder.frame_due_now()
            assert not beholder.update()
            truth = train_step(model, opt, x, y)
            beholder.frame_due_now()
            assert beholder.update()
            beholder.flush()
            frame = read_frame_file(run)
            shown = ["0", "1", "2"] if values == "activations" else [n for n, _ in model.named_parameters()]
            assert [record["name"] for record in frame.sections] == shown
            assert_sections_hold(frame, truth)
        assert beholder.failures == 0
    said = [r.getMessage() for r in caplog.records if "ran in a CUDA graph" in r.getMessage()]
    assert len(said) == 1 and values in said[0]


def test_the_per_step_check_issues_nothing_while_a_cuda_graph_is_captured(monkeypatch):
    """update() called inside the caller's capture: the per-step check of that step is left out (its ops
    would break the capture, or be replayed with the graph at that step's number); the next step's runs."""
    capture = FakeCapture(monkeypatch)
    t = torch.randn(5, 4)
    check = exact_pass.StepCheck(torch, [0], [t], [None])
    check.check(1)
    capture.on = True
    with OpLog() as log:
        check.check(2)
    assert log.calls == [] and check.norms_step == 1
    capture.on = False
    with OpLog() as log:
        check.check(3)
    assert log.calls and check.norms_step == 3
    assert torch.equal(check.norms, torch.linalg.vector_norm(t).reshape(1))


def test_only_a_cuda_tensor_asks_whether_a_capture_is_underway(monkeypatch):
    """The check is one attribute read for a tensor off CUDA (a CPU build of torch raises on the query),
    and the CUDA runtime's answer for a CUDA tensor (a fake one here)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    answers: list[bool] = []

    def query() -> bool:
        answers.append(True)
        return True

    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", query)
    assert not torch_batch.capturing(torch.zeros(3))
    assert not torch_batch.capturing(torch.zeros(3, device="meta"))
    assert answers == []
    with FakeTensorMode():
        on_cuda = torch.empty(3, device="cuda")
    assert torch_batch.capturing(on_cuda) and answers == [True]


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("values", ["activations", "gradients"])
def test_a_training_step_captured_as_a_cuda_graph_with_the_hooks_armed(tmp_path, caplog, values):
    """torch.cuda.graph around a whole training step (forward, backward, SGD step), as PyTorch's docs
    show it, with the hooks armed for it: the capture succeeds and holds the same ops as an unwatched
    twin's, the replays train the model as the twin's train it, the frames say why the graph's values
    are missing (gradients, left in .grad, are then read from there) and an eager step is shown."""
    run = str(tmp_path / "run")
    set_config(run, values=values, FPS=30, mode="current")
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(4, 6, generator=gen).cuda(), torch.randn(4, 3, generator=gen).cuda())
            for _ in range(4)]
    model = mlp().cuda()
    twin = copy.deepcopy(model)
    graphs, logs = {}, {}
    with caplog.at_level(logging.WARNING, logger="beholder"), Beholder(run, strict=True) as beholder:
        beholder.watch(model)
        watched = beholder.watched
        for name, net in (("twin", twin), ("watched", model)):
            opt = torch.optim.SGD(net.parameters(), lr=0.1)
            static_x, static_y = data[0][0].clone(), data[0][1].clone()
            side = torch.cuda.Stream()  # warm up on a side stream, as a capture asks
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    opt.zero_grad(set_to_none=True)
                    nn.functional.mse_loss(net(static_x), static_y).backward()
                    opt.step()
            torch.cuda.current_stream().wait_stream(side)
            opt.zero_grad(set_to_none=True)  # (the graph's backward makes .grad in its own pool)
            if net is model:
                beholder.flush()  # (no copy of the worker's runs during the capture)
                beholder.frame_due_now()
                assert not beholder.update() and watched.armed == values  # the hooks armed for the capture
            graph = torch.cuda.CUDAGraph()
            with OpLog() as log, torch.cuda.graph(graph):
                static_loss = nn.functional.mse_loss(net(static_x), static_y)
                static_loss.backward()
                opt.step()
            graphs[name], logs[name] = (graph, static_x, static_y), names(log)
        assert logs["watched"] == logs["twin"] and watched.graph_seen
        said, read = 0, 0  # frames saying the graph's values are missing; frames of .grad
        for k, (x, y) in enumerate(data):
            for graph, static_x, static_y in graphs.values():
                static_x.copy_(x)
                static_y.copy_(y)
                graph.replay()
            torch.cuda.synchronize()
            for p, q in zip(model.parameters(), twin.parameters()):
                torch.testing.assert_close(p, q)
            beholder.frame_due_now()
            if not beholder.update():  # (activations: the hooks armed again, for the next replay)
                continue
            beholder.flush()
            frame = read_frame_file(run)
            if values == "activations" or k == 0:  # (the capture's step, or a replay's)
                assert all("ran in a CUDA graph" in record["missing"] for record in frame.sections)
                said += 1
            else:  # the graph's gradients, left in .grad by each replay, read from there
                assert_sections_hold(frame, {n: p.grad.cpu() for n, p in model.named_parameters()})
                read += 1
        assert (said, read) == ((2, 0) if values == "activations" else (1, 3))
        if values == "activations":  # an eager step
            if watched.armed != values:
                beholder.frame_due_now()
                assert not beholder.update()  # the hooks armed for it
            x = data[0][0]
            with torch.no_grad():
                a0 = model[0](x)
                truth = {"0": a0, "1": model[1](a0), "2": model[2](model[1](a0))}
                truth = {name: t.cpu() for name, t in truth.items()}
            nn.functional.mse_loss(model(x), data[0][1]).backward()
            beholder.frame_due_now()
            assert beholder.update()
            beholder.flush()
            assert_sections_hold(read_frame_file(run), truth)
        assert beholder.failures == 0
    assert len([r for r in caplog.records if "ran in a CUDA graph" in r.getMessage()]) == 1


def test_update_called_inside_a_cuda_graph_capture_takes_no_frame(tmp_path, monkeypatch, caplog):
    """update() inside the caller's capture (a frame due): nothing is gathered, armed or uploaded, a
    warning says to call it outside the captured region (once), and the first update() after the
    capture takes the frame."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)
    capture = FakeCapture(monkeypatch)
    capturing = [False]
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=30, mode="current")
    weights = {"w": torch.randn(6, 5), "b": torch.randn(5)}
    with caplog.at_level(logging.WARNING, logger="beholder"), Beholder(run, strict=True) as beholder:
        capturing[0] = True
        for _ in range(3):
            beholder.frame_due_now()
            with OpLog() as log:
                assert not beholder.update(arrays=weights)
            assert log.calls == [] and capture.uploads == 0
        capturing[0] = False
        assert beholder.update(arrays=weights)
        beholder.flush()
        assert_sections_hold(read_frame_file(run), weights)
        assert beholder.failures == 0
    said = [r.getMessage() for r in caplog.records if "CUDA graph was being captured" in r.getMessage()]
    assert len(said) == 1


class FakeRuntime:
    """Stands for the CUDA runtime's cudaThreadExchangeStreamCaptureMode: the modes it was asked to set."""

    def __init__(self, status: int = 0) -> None:
        self.modes: list[int] = []
        self.status = status

    def __call__(self, mode) -> int:
        self.modes.append(mode._obj.value)
        mode._obj.value = 0  # (the runtime hands back the mode it replaced: global)
        return self.status


def on_a_worker(task):
    """What task() returns, run as a job on a Beholder worker's own thread."""
    got = []
    worker = Worker(lambda job: got.append(job()), name="test-worker")
    worker.submit(task)
    assert worker.drain(timeout=10)
    return got[0]


def test_a_worker_thread_relaxes_its_capture_checks_once_and_no_other_thread_does(monkeypatch):
    """Where CUDA is in use, the worker's thread asks the runtime once to make its stream-capture mode
    relaxed (2), whatever the number of frames; the training thread (a frame taken inside update())
    never asks, nor does a process without CUDA; a runtime that refuses, or none found, leaves it as it
    was, and says so."""
    relax = worker_module.relax_cuda_capture_checks
    runtime = FakeRuntime()
    monkeypatch.setattr(worker_module, "_runtime_function", lambda: runtime)
    assert not on_a_worker(relax) and runtime.modes == []  # (no CUDA)
    monkeypatch.setattr(worker_module, "_cuda_in_use", lambda: True)
    assert not relax() and runtime.modes == []
    twice = on_a_worker(lambda: [relax() for _ in range(2)])  # (and the worker's own, before the job)
    assert twice == [True, True] and runtime.modes == [worker_module.CAPTURE_MODE_RELAXED]
    monkeypatch.setattr(worker_module, "_runtime_function", lambda: FakeRuntime(status=900))
    assert on_a_worker(relax) is False
    monkeypatch.setattr(worker_module, "_runtime_function", lambda: None)
    assert on_a_worker(relax) is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_capture_in_global_mode_while_the_worker_issues_and_waits_for_a_frames_copy(tmp_path, monkeypatch):
    """The training thread captures a step (torch.cuda.graph's default, global mode, which forbids other
    threads event syncs) while the worker issues its frame's copy and waits on it: the capture succeeds,
    its replay trains as an unwatched twin's, and the frame is written."""
    run = str(tmp_path / "run")
    set_config(run, values="trainable_variables", FPS=30, mode="current")
    model, x, y = mlp().cuda(), torch.randn(4, 6).cuda(), torch.randn(4, 3).cuda()
    twin = copy.deepcopy(model)
    capture_began, worker_done = threading.Event(), threading.Event()
    real_synchronize = torch_batch.SideCopy.synchronize

    def held_synchronize(self):
        """The worker's copy, issued and waited on only once the capture is under way."""
        assert capture_began.wait(30)
        try:
            real_synchronize(self)
        finally:
            worker_done.set()

    monkeypatch.setattr(torch_batch.SideCopy, "synchronize", held_synchronize)
    graphs = []
    with Beholder(run) as beholder:
        beholder.watch(model)
        for net in (twin, model):
            opt = torch.optim.SGD(net.parameters(), lr=0.1)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                nn.functional.mse_loss(net(x), y).backward()
                opt.step()
            torch.cuda.current_stream().wait_stream(side)
            opt.zero_grad(set_to_none=True)
            if net is model:
                beholder.frame_due_now()
                assert beholder.update()  # the frame's job handed to the worker, which holds it
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                if net is model:
                    capture_began.set()
                    assert worker_done.wait(30)  # (the worker's copy and its wait, inside the capture)
                nn.functional.mse_loss(net(x), y).backward()
                opt.step()
            graphs.append(graph)
        for graph in graphs:
            graph.replay()
        torch.cuda.synchronize()
        for p, q in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(p, q)
        beholder.flush()
        assert beholder.frames_written == 1 and beholder.failures == 0
