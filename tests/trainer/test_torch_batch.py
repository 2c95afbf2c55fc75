"""The batched device gather (sources.torch_batch): the same frames as the host path, one copy, no waits.

CI has no GPU, so the batched path runs here on CPU tensors
(``torch_batch.BATCH_CPU_TENSORS``); the tests marked ``gpu`` run the same
checks on CUDA when it is present.
"""

from __future__ import annotations

import math
import threading
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import assert_sections_hold, set_config

from beholder_plugin import Beholder, read_timeline
from beholder_plugin.protocol import timeline as tl_format
from beholder_plugin.protocol.runfiles import read_frame_file
from beholder_plugin.trainer.sources import torch_batch, torch_capture

torch = pytest.importorskip("torch")
from torch_ops import OpLog, storages_held_by  # noqa: E402

nn = torch.nn

DTYPES = {
    "float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
    "float16": torch.float16, "int64": torch.int64, "uint8": torch.uint8, "bool": torch.bool,
    "complex64": torch.complex64,
    # (index_select has no kernel for these; torch.cat cannot promote the unsigned ones to float32)
    "uint16": torch.uint16, "uint32": torch.uint32, "uint64": torch.uint64,
    "float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2, "complex32": torch.complex32,
}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def make_tensor(shape: tuple[int, ...], dtype: str, form: str, seed: int, device: str = "cpu"):
    """A tensor of this shape and dtype, stored plainly, channels-last, transposed or as a strided slice."""
    gen = torch.Generator().manual_seed(seed)
    big = (shape[0] * 2,) + shape[1:] if form == "sliced" and shape else shape
    values = torch.randn(big, generator=gen, dtype=torch.float64) * 3
    if dtype == "bool":
        t = values > 0
    elif dtype in ("int64", "uint8", "uint16"):
        t = (values.abs() * 40).to(DTYPES[dtype])
    elif dtype in ("uint32", "uint64"):  # (past 2**31 and 2**63: the sign bit of the width set)
        t = (values.abs() * 2**29).to(torch.int64).to(DTYPES[dtype])
        t = t * 8 if dtype == "uint32" else t * 2**33
    elif dtype in ("complex64", "complex32"):
        t = torch.complex(values, values.flip(0) if values.dim() else values).to(torch.complex64)
        with warnings.catch_warnings():  # ("ComplexHalf support is experimental")
            warnings.simplefilter("ignore", UserWarning)
            t = t.to(DTYPES[dtype])
    else:
        t = values.to(DTYPES[dtype])
    if form == "sliced" and shape:
        t = t[::2]
    elif form == "channels_last" and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    elif form == "transposed" and t.dim() >= 2:
        t = t.transpose(0, 1).contiguous().transpose(0, 1)  # same shape, other strides
    return t.to(device)


def frames_of(run: str, arrays_per_frame: list[dict], batched: bool, monkeypatch, **config) -> object:
    """Write these frames (a dict of arrays each), batched or not; the last frame, read back."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
    set_config(run, values="arrays", FPS=30, colormap="grayscale", **config)
    beholder = Beholder(run, strict=True)
    for arrays in arrays_per_frame:
        beholder.frame_due_now()  # every call is a frame
        assert beholder.update(arrays=arrays)
        beholder.flush()
    beholder.close()
    return read_frame_file(run)


def assert_same_frames(a, b) -> None:
    """Pixels, values and section records equal bit for bit."""
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert len(a.sections) == len(b.sections)
    for i, (ra, rb) in enumerate(zip(a.sections, b.sections)):
        assert ra == rb, ra["name"]
        np.testing.assert_array_equal(a.section_values(i), b.section_values(i))


shapes = st.lists(st.integers(1, 9), min_size=0, max_size=4).map(tuple)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    specs=st.lists(st.tuples(shapes, st.sampled_from(sorted(DTYPES)),
                             st.sampled_from(["plain", "channels_last", "transposed", "sliced"])),
                   min_size=1, max_size=5),
    big=st.booleans(),
    show_all=st.booleans(),
    mode=st.sampled_from(["current", "variance"]),
    seed=st.integers(0, 2**16),
)
def test_batched_frames_equal_host_frames(tmp_path_factory, monkeypatch, specs, big, show_all, mode, seed):
    if big:  # one array past the statistics' sample cap and wider than the frame
        specs = specs + [((40, 3, 5, 5), "bfloat16", "channels_last")]
    frames = [
        {f"s{i}": make_tensor(shape, dtype, form, seed + 7 * k + i)
         for i, (shape, dtype, form) in enumerate(specs)}
        for k in range(3)
    ]
    config = dict(show_all=show_all, mode=mode, window_size=2)
    host = frames_of(str(tmp_path_factory.mktemp("host")), frames, False, monkeypatch, **config)
    batched = frames_of(str(tmp_path_factory.mktemp("batched")), frames, True, monkeypatch, **config)
    assert_same_frames(host, batched)


def convnet() -> nn.Module:
    """conv -> batchnorm -> relu -> pool -> linear, with a bf16 and a channels-last parameter."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(8 * 16, 10),
    )


@pytest.mark.parametrize("values", ["trainable_variables", "gradients", "activations"])
def test_watch_frames_equal_host_frames(tmp_path, monkeypatch, values):
    """watch(model): the hooks' device parts give the same frame as the host path's copies."""
    frames = {}
    for batched in (False, True):
        monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
        run = str(tmp_path / f"run-{batched}")
        set_config(run, values=values, FPS=30, mode="current")
        model = convnet().to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        beholder = Beholder(run, strict=True)
        beholder.watch(model)
        x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(1))
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.arange(4)
        written = 0
        for _ in range(4):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            beholder.frame_due_now()
            written += beholder.update()
            beholder.flush()
        beholder.close()
        assert written >= 1
        frames[batched] = read_frame_file(run)
        assert beholder.failures == 0
        if batched:  # the frames after the first reuse its checks and plan
            expected = "captured" if values == "activations" else "tensors"  # (gradients: from .grad)
            assert beholder.gatherer.memo is not None and beholder.gatherer.memo.kind == expected
    assert_same_frames(frames[False], frames[True])
    assert frames[True].sections[0]["name"] in ("0.weight", "0")


@pytest.mark.parametrize("values", ["gradients", "activations"])
def test_show_all_hook_copies_are_gathered_on_the_device_as_the_host_path_shows_them(
        tmp_path, monkeypatch, values):
    """show_all with watch()'s hooks (activations; gradients caught by hooks, .grad cleared after the
    step): each hook keeps a whole copy, which the frame slices. On the device path it is sliced in the
    frame's one batch, as the host path shows it; before, it went through the host adapter on the
    training thread (a .cpu() per section and frame, an index upload per cut axis) and the activations
    lost their exact norms."""
    from beholder_plugin.trainer.sources import torch_tensors

    host_reads, real_host = [], torch_tensors._host
    main = threading.get_ident()

    def spied(t):
        if threading.get_ident() == main:
            host_reads.append(tuple(t.shape))
        return real_host(t)

    monkeypatch.setattr(torch_tensors, "_host", spied)
    frames = {}
    for batched in (False, True):
        monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
        run = str(tmp_path / f"run-{batched}")
        set_config(run, values=values, FPS=30, mode="current", show_all=True)
        model = convnet()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(1))
        with Beholder(run, strict=True) as beholder:
            beholder.watch(model)
            del host_reads[:]
            written = 0
            for _ in range(4):  # (the first update() arms the hooks for the next step)
                nn.functional.cross_entropy(model(x), torch.arange(4)).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)  # (gradients: only the hooks have them)
                beholder.frame_due_now()
                written += beholder.update()
                beholder.flush()
        assert beholder.failures == 0 and written >= 2
        if batched:  # (on the host path a CPU tensor is read where it lies, not through _host)
            assert host_reads == []
        frames[batched] = read_frame_file(run)
        if values == "activations":
            assert (read_timeline(run)["0"]["flags"] & tl_format.EXACT_NORM).all()
    assert_same_frames(frames[False], frames[True])
    expected = list("012345") if values == "activations" else [
        f"{layer}.{kind}" for layer in (0, 1, 5) for kind in ("weight", "bias")]
    assert [section["name"] for section in frames[True].sections] == expected


def test_a_frame_is_one_batch_one_copy_and_reads_no_scalar(tmp_path, monkeypatch):
    """update() on a due frame: one index_select per section, one cat, the timeline's figures laid after
    the values, and nothing that reads a value back to Python (item(), tolist(), a synchronizing copy);
    then the worker, and only it, copies the buffer to the host once. In variance mode (the default)
    the worker updates the window's sums on the device before that copy."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)
    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=30)
    arrays = {f"w{i}": torch.randn(16, 8, 3, 3) for i in range(6)}
    arrays["b"] = torch.randn(32, dtype=torch.bfloat16)
    worker_logs, real = [], torch_batch.DeviceGather._to_host

    def logged(gather, *args):
        with OpLog() as log:
            worker_logs.append((threading.get_ident(), log))
            return real(gather, *args)

    monkeypatch.setattr(torch_batch.DeviceGather, "_to_host", logged)
    beholder = Beholder(run, strict=True)
    logs = []
    for _ in range(3):
        beholder.frame_due_now()
        with OpLog() as log:
            assert beholder.update(arrays=arrays)
        logs.append(log)
        beholder.flush()
    beholder.close()
    gather = beholder.gatherer.device_gathers[0]

    def to_host(log):
        return [args for name, args in log.calls
                if name == "copy_" and args[0].data_ptr() == gather.host_tensor.data_ptr()]

    window = {"sub", "sub_", "add", "add_", "mul", "mul_", "clamp_min", "clamp_min_"}
    for k, log in enumerate(logs):
        names = [name for name, _ in log.calls]
        # a part per section, one permutation; from the second frame of the same tensors on, the per-step
        # check's norms of its two norm groups (float32 and bf16) put in the sections' order by one more
        # (the first frame's, without a check, are stacked)
        assert names.count("index_select") == len(arrays) + (1 if k == 0 else 2)
        # the parts; the two groups' norms; the timeline's figures, after the values in the same buffer
        assert names.count("cat") == (2 if k == 0 else 3)
        assert not to_host(log) and not window & set(names)  # the copy and the window: the worker's
        assert "clone" not in names  # nor does the timeline copy its figures back on its own
        assert not {"_local_scalar_dense", "item", "_to_copy", "to", "nonzero"} & set(names)
    assert len(worker_logs) == len(logs)
    for thread, log in worker_logs:
        assert thread != threading.get_ident()
        assert len(to_host(log)) == 1
    assert {"sub", "add_", "mul", "clamp_min_"} <= {name for name, _ in worker_logs[-1][1].calls}
    assert beholder.failures == 0


class Launches(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the kernels the aten ops dispatched on this thread launch: one per op, but one per input for
    a ``cat`` whose inputs are not all of its output's dtype (torch's CPU and CUDA cat kernels convert
    each such input with a copy of its own); ``mixed``: those cats' dtypes."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.mixed: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = args[0] if func.overloadpacket is torch.ops.aten.cat else None
        if inputs is not None and any(t.dtype != out.dtype for t in inputs):
            self.count += len(inputs)
            self.mixed.append((out.dtype, sorted({str(t.dtype) for t in inputs})))
        else:
            self.count += 1
        return out


def watched_frames(run: str, model: nn.Module, values: str) -> tuple[list[Launches], object]:
    """Three frames of a watched model (eager: no captured graph); what each frame-due update() launched on
    the training thread, and the last frame."""
    set_config(run, values=values, FPS=30, mode="current")
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    counted = []
    with Beholder(run, strict=True) as beholder:
        beholder.watch(model)
        while len(counted) < 3:
            if values == "activations":
                model(x.to(next(model.parameters()).dtype))
            beholder.frame_due_now()
            with Launches() as launches:
                taken = beholder.update()
            if taken:
                counted.append(launches)
                beholder.flush()
        assert beholder.failures == 0
    return counted, read_frame_file(run)


def linear_stack(layers: int, dtypes: list) -> nn.Module:
    """Linear layers 6 -> 6, their values rounded to bfloat16, the k-th kept in dtypes[k % len(dtypes)]."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(6, 6) for _ in range(layers)]).to(torch.bfloat16)
    for k, layer in enumerate(model):
        layer.to(dtypes[k % len(dtypes)])
    return model


@pytest.mark.parametrize("values, dtypes", [
    ("trainable_variables", ["bfloat16"]), ("trainable_variables", ["float16"]),
    ("trainable_variables", ["bfloat16", "float16", "float32"]), ("activations", ["bfloat16"]),
    ("activations", ["float16"])])
def test_half_precision_sections_are_converted_once_per_frame_not_once_each(tmp_path, monkeypatch, values,
                                                                           dtypes):
    """A bf16 or fp16 model's eager frame gather, as a float32 model's: its launches on the training thread
    do not grow with the sections beyond the float32 model's (a part per section), no cat converts its
    inputs, and the frames are the float32 model's of the same values, bit for bit. Before, one cat
    converted the parts into the float32 buffer: torch ran it as one conversion kernel per section."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)
    dtypes = [DTYPES[name] for name in dtypes]
    extra = {}
    for layers in (3, 10):  # (6 and 20 parameters, each dtype among them)
        half = linear_stack(layers, dtypes)
        wide = linear_stack(layers, [torch.float32])
        half_counts, half_frame = watched_frames(str(tmp_path / f"half-{layers}"), half, values)
        wide_counts, wide_frame = watched_frames(str(tmp_path / f"wide-{layers}"), wide, values)
        assert all(not launches.mixed for launches in half_counts), [c.mixed for c in half_counts]
        extra[layers] = [h.count - w.count for h, w in zip(half_counts, wide_counts)]
        if values == "trainable_variables":
            assert_same_frames(half_frame, wide_frame)
        assert len(half_frame.sections) == (2 * layers if values == "trainable_variables" else layers)
    # (per dtype: its conversion, its norm group in the timeline's exact pass; on the first frame its buffer)
    assert extra[3] == extra[10]


def test_a_copy_that_could_not_be_issued_fails_every_reader(tmp_path, monkeypatch):
    """The worker issues a frame's copy when the batch or the timeline first waits for it: when issuing
    fails, both are told (never handed the host buffer as if copied), it is not issued twice, the
    frame counts as failed (the frame written says so), and the next frame is written."""
    calls = []

    def refuse():
        calls.append(1)
        raise RuntimeError("device lost")

    copy = torch_batch.SideCopy(refuse)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="device lost"):
            copy.synchronize()
    assert len(calls) == 1

    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)
    real = torch_batch.DeviceGather._to_host
    monkeypatch.setattr(torch_batch.DeviceGather, "_to_host", lambda *args: refuse())
    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=30, mode="current")
    arrays = {"w": torch.randn(4, 4)}
    with Beholder(run) as beholder:
        beholder.frame_due_now()
        assert beholder.update(arrays=arrays)
        beholder.flush()
        assert beholder.failures == 1 and beholder.frames_written == 1
        failure = read_frame_file(run)
        assert failure.header["values"] == "placeholder" and "device lost" in failure.header["last_error"]
        monkeypatch.setattr(torch_batch.DeviceGather, "_to_host", real)
        beholder.frame_due_now()
        assert beholder.update(arrays=arrays)
        beholder.flush()
        assert beholder.failures == 1 and beholder.frames_written == 2
    np.testing.assert_array_equal(read_frame_file(run).section_values(0).reshape(4, 4), arrays["w"].numpy())


def test_a_failed_batch_shows_its_sections_empty_and_training_goes_on(tmp_path, monkeypatch):
    """A batch whose launch fails (an odd tensor, a device error) leaves those sections empty, says why."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)

    def refuse(self, entries):
        raise RuntimeError("device lost")

    monkeypatch.setattr(torch_batch.DeviceGather, "launch", refuse)
    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=30)
    with Beholder(run) as beholder:
        assert beholder.update(arrays={"a": torch.randn(4, 4), "n": np.ones(3, np.float32)})
        beholder.flush()
    frame = read_frame_file(run)
    by_name = {rec["name"]: rec for rec in frame.sections}
    assert "device lost" in by_name["a"]["missing"]
    assert "missing" not in by_name["n"]


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("values", ["trainable_variables", "gradients", "activations"])
def test_cuda_frames_equal_cpu_frames(tmp_path, monkeypatch, values):
    """The same model on CUDA and on the CPU gives the same frame (weights bit for bit; others closely)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the same arithmetic on both devices
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    frames = {}
    for device in ("cpu", "cuda"):
        run = str(tmp_path / device)
        set_config(run, values=values, FPS=30, mode="current")
        model = convnet().to(device)
        with torch.no_grad():  # same weights on both devices
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        beholder = Beholder(run, strict=True)
        beholder.watch(model)
        x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(1)).to(device)
        for _ in range(3):
            model.zero_grad()
            nn.functional.cross_entropy(model(x), torch.arange(4, device=device)).backward()
            beholder.frame_due_now()
            beholder.update()
            beholder.flush()
        beholder.close()
        frames[device] = read_frame_file(run)
    a, b = frames["cpu"], frames["cuda"]
    assert [r["name"] for r in a.sections] == [r["name"] for r in b.sections]
    for i in range(len(a.sections)):
        if values == "trainable_variables":
            np.testing.assert_array_equal(a.section_values(i), b.section_values(i))
        else:
            np.testing.assert_allclose(a.section_values(i), b.section_values(i), rtol=1e-4, atol=1e-5)


@needs_cuda
@pytest.mark.gpu
def test_cuda_update_never_synchronizes_and_copies_once(tmp_path, monkeypatch):
    """A frame-due update() on CUDA tensors: no synchronizing call, no copy between host and device;
    then the worker copies the frame to the host once."""
    from torch.profiler import ProfilerActivity, profile

    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=30)
    arrays = {f"w{i}": torch.randn(64, 32, 3, 3, device="cuda") for i in range(20)}
    beholder = Beholder(run, strict=True)
    for _ in range(3):  # the plan's first frames upload indices and capture the graphs
        beholder.frame_due_now()
        beholder.update(arrays=arrays)
        beholder.flush()
    beholder.frame_due_now()
    go, real = threading.Event(), torch_batch.Pending.wait
    # the worker waits until the first profile is over: what it shows is the training thread's
    monkeypatch.setattr(torch_batch.Pending, "wait", lambda pending: go.wait(60) and real(pending))
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with profile(activities=activities) as prof:
        assert beholder.update(arrays=arrays)
    with profile(activities=activities) as worker:
        go.set()
        beholder.flush()
    beholder.close()
    with profile(activities=activities) as empty:
        pass  # what the profiler's own start and stop call (a device synchronize)
    names = [e.name for e in prof.events()]
    syncs = [n for n in names if "Synchronize" in n]
    assert len(syncs) == sum("Synchronize" in e.name for e in empty.events()), syncs
    assert not [n for n in names if "Memcpy DtoH" in n or "Memcpy HtoD" in n]
    # one copy to the host, by the worker; the variance window's copies (the default mode) stay on the
    # device
    copies = [e.name for e in worker.events() if "Memcpy" in e.name]
    assert sum("Memcpy DtoH" in n for n in copies) == 1 and not [n for n in copies if "HtoD" in n], copies


def test_side_streams_are_taken_once_per_device_from_the_high_priority_pool(monkeypatch):
    """torch.cuda.Stream() hands out a pool's streams in turn (here a pool that gives the same one
    twice running): Beholder's two side streams of a device are taken once, from the high-priority pool,
    and differ; the same pair and the same lock come back for that device afterwards."""
    given = []

    class PoolStream:
        def __init__(self, device, priority=0):
            given.append(priority)
            self.device = device
            self.cuda_stream = 7 if len(given) < 3 else len(given)  # the first two draws: one stream

    monkeypatch.setattr(torch.cuda, "Stream", PoolStream)
    monkeypatch.setattr(torch_batch, "_SIDE_STREAMS", {})
    monkeypatch.setattr(torch_batch, "_SIDE_LOCKS", {})
    frames, check = torch_batch.side_streams("cuda:3")
    assert frames.cuda_stream != check.cuda_stream and len(given) == 3
    assert set(given) == {-1}
    assert torch_batch.side_streams(torch.device("cuda", 3)) == (frames, check) and len(given) == 3
    assert torch_batch.side_streams("cuda:4")[0] is not frames
    lock = torch_batch.side_lock("cuda:3")
    assert torch_batch.side_lock(torch.device("cuda:3")) is lock
    assert torch_batch.side_lock("cuda:4") is not lock


@needs_cuda
@pytest.mark.gpu
def test_cuda_side_streams_are_shared_high_priority_and_distinct(tmp_path):
    """On CUDA every gatherer and per-step check of a device uses the device's two side streams:
    high-priority (apart from the default-priority pool torch.compile's graphs capture on), distinct."""
    from beholder_plugin.trainer import exact_pass

    frames, check = torch_batch.side_streams(torch.device("cuda", torch.cuda.current_device()))
    assert frames.cuda_stream != check.cuda_stream and frames.priority < 0 and check.priority < 0
    runs = [str(tmp_path / name) for name in ("a", "b")]
    for run in runs:
        set_config(run, values="arrays", FPS=30)
    arrays = {f"w{i}": torch.randn(16, 8, device="cuda") for i in range(3)}
    with Beholder(runs[0], strict=True) as first, Beholder(runs[1], strict=True) as second:
        for beholder in (first, second):
            beholder.frame_due_now()
            assert beholder.update(arrays=arrays)
            beholder.flush()
        gathers = first.gatherer.device_gathers + second.gatherer.device_gathers
    assert len(gathers) == 2 and all(g.stream is frames for g in gathers)
    step_check = exact_pass.StepCheck(torch, [0], [arrays["w0"]], [None], ["w0"])
    assert step_check._stream is check


def test_a_replaced_parameter_is_seen_by_the_next_frame(tmp_path, monkeypatch):
    """The frames of the same tensors reuse their checks and plan, but still read each tensor afresh:
    values changed in place show, and a tensor given new storage of another shape gets a new plan."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)
    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=30, mode="current")
    weight = nn.Parameter(torch.zeros(6, 4))
    arrays = {"w": weight, "b": torch.zeros(5)}
    with Beholder(run, strict=True) as beholder:
        for fill in (1.0, 2.0):
            with torch.no_grad():
                weight.fill_(fill)
            beholder.frame_due_now()
            assert beholder.update(arrays=arrays)
            beholder.flush()
            assert read_frame_file(run).section_values(0).max() == fill
        weight.data = torch.full((3, 9), 7.0)
        beholder.frame_due_now()
        assert beholder.update(arrays=arrays)
        beholder.flush()
    frame = read_frame_file(run)
    assert frame.sections[0]["shape"] == [3, 9]
    assert frame.section_values(0).max() == 7.0


def test_the_variance_window_kept_on_the_device_is_the_hosts(tmp_path, monkeypatch):
    """Variance mode with every section in one batch: the window's sums live on the device, and each
    frame's values equal the host window's bit for bit, through refills, rebuilds and a resize."""
    runs = {}
    for batched in (False, True):
        monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
        run = runs[batched] = str(tmp_path / f"run-{batched}")
        set_config(run, values="arrays", FPS=30, mode="variance", window_size=5)
    beholders = {b: Beholder(runs[b], strict=True) for b in (False, True)}
    weight = torch.zeros(40, 3, 5, 5)
    gen = torch.Generator().manual_seed(3)
    for step in range(14):
        with torch.no_grad():
            weight.add_(torch.randn(weight.shape, generator=gen) * (1 + step % 4))
        if step == 8:
            for b in (False, True):
                set_config(runs[b], values="arrays", FPS=30, mode="variance", window_size=3)
                beholders[b].frame_due_now()
        frames = {}
        for batched, beholder in beholders.items():
            monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
            beholder.frame_due_now()
            assert beholder.update(arrays={"w": weight, "b": weight[0, 0]})
            beholder.flush()
            frames[batched] = read_frame_file(runs[batched])
        assert_same_frames(frames[False], frames[True])
    gather = beholders[True].gatherer.device_gathers[0]
    assert gather.window is not None and gather.window.size == 3 and len(gather.window.samples) == 3
    for beholder in beholders.values():
        beholder.close()


@pytest.mark.parametrize("batched", [False, True])
def test_a_variance_frame_says_how_many_frames_it_is_over_and_which_shape_change_restarted_it(
        tmp_path, monkeypatch, batched):
    """Activations of text of changing length: each new length starts the window again, so the variance
    is of one frame (0 everywhere); the frame's header says so and names the section that changed,
    on the host path and with the window kept on the device alike."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
    run = str(tmp_path)
    set_config(run, values="arrays", FPS=30, mode="variance", window_size=3)
    beholder = Beholder(run, strict=True)
    gen = torch.Generator().manual_seed(0)
    windows = []
    for length in (5, 5, 5, 5, 9, 2, 2, 2):
        arrays = {"embed": torch.randn(1, length, 8, generator=gen), "bias": torch.randn(8, generator=gen),
                  "out": torch.randn(1, length, 4, generator=gen)}
        beholder.frame_due_now()
        assert beholder.update(arrays=arrays)
        beholder.flush()
        frame = read_frame_file(run)
        windows.append(frame.header["window"])
        if windows[-1]["frames"] == 1:
            assert all(rec["range"] == 0.0 for rec in frame.sections)
    assert [w["frames"] for w in windows] == [1, 2, 3, 3, 1, 1, 2, 3]
    assert all(w["size"] == 3 for w in windows)
    assert [w.get("changed") for w in windows if w["frames"] == 1] == [
        None,  # the first frame: nothing to compare with
        {"name": "embed", "was": [1, 5, 8], "now": [1, 9, 8], "sections": 2},
        {"name": "embed", "was": [1, 9, 8], "now": [1, 2, 8], "sections": 2},
    ]
    kept = [g.window for g in beholder.gatherer.device_gathers if g.window is not None]
    assert len(kept) == batched  # (the window of the last length, on the device when batched)
    set_config(run, values="arrays", FPS=30, mode="current", window_size=3)
    beholder.frame_due_now()
    assert beholder.update(arrays=arrays)
    beholder.flush()
    assert "window" not in read_frame_file(run).header  # (current values: no window)
    set_config(run, values="arrays", FPS=30, mode="variance", window_size=3)
    for bias in (None, torch.ones(8)):  # a section missing for a frame changed no shape
        beholder.frame_due_now()
        assert beholder.update(arrays={**arrays, "bias": bias})
        beholder.flush()
        window = read_frame_file(run).header["window"]
        assert window["frames"] == 1 and "changed" not in window
    beholder.close()


@pytest.fixture
def cpu_graphs(monkeypatch) -> list:
    """Graph capture and replay on CPU tensors (torch_batch.AddressReplay); the frames' replays, as they
    run (not the per-step check's)."""
    monkeypatch.setattr(torch_batch, "CPU_GRAPHS", True)
    replays: list = []
    real = torch_batch.AddressReplay.replay

    def counted(graph) -> None:
        if graph.name == "frame":
            replays.append(graph)
        real(graph)

    monkeypatch.setattr(torch_batch.AddressReplay, "replay", counted)
    return replays


def square_head_net() -> nn.Module:
    """A small convnet whose last layer is square (its weight can be transposed where it lies)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 8), nn.ReLU(), nn.Linear(8, 8))


def replayed_and_host_frames(tmp_path, monkeypatch, values: str, steps: int, before_step) -> list:
    """Train steps of one model watched by two Beholders, one replaying its gathers (CPU_GRAPHS), one on
    the host path; the pairs of frames (replayed, host) of every step."""
    model = square_head_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    beholders = {}
    for batched in (True, False):
        run = str(tmp_path / f"run-{batched}")
        set_config(run, values=values, FPS=30, mode="current")
        beholders[batched] = Beholder(run, strict=True)
        beholders[batched].watch(model)
    gen = torch.Generator().manual_seed(2)
    pairs = []
    for step in range(steps):
        before_step(step, model, opt)
        dtype = next(model.parameters()).dtype
        x = torch.randn(4, 3, 8, 8, generator=gen).to(dtype)
        nn.functional.cross_entropy(model(x), torch.arange(4)).backward()
        opt.step()
        frames = []
        for batched, beholder in beholders.items():
            monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
            beholder.frame_due_now()
            assert beholder.update()
            beholder.flush()
            frames.append(read_frame_file(beholder.logdir))
        pairs.append(frames)
    for beholder in beholders.values():
        beholder.close()
        assert beholder.failures == 0
    return pairs


def test_replayed_weights_frames_follow_parameters_that_move(tmp_path, monkeypatch, cpu_graphs):
    """Weights frames replayed from the captured addresses (as a CUDA graph replays) equal the host
    path's at every step: updated in place, transposed where they lie (same address, other strides),
    given new storage, made channels-last, made float64."""
    def before_step(step, model, opt):
        opt.zero_grad()
        with torch.no_grad():
            if step == 3:
                model[6].weight.data = model[6].weight.data.t()
            elif step == 5:
                model[4].weight.data = model[4].weight.data.clone()
            elif step == 7:
                model.to(memory_format=torch.channels_last)
            elif step == 9:
                model.double()

    pairs = replayed_and_host_frames(tmp_path, monkeypatch, "trainable_variables", 12, before_step)
    for step, (replayed, host) in enumerate(pairs):
        assert replayed.header["values"] == "trainable_variables"
        try:
            assert_same_frames(replayed, host)
        except AssertionError as exc:
            raise AssertionError(f"step {step}: {exc}") from exc
    assert len(cpu_graphs) >= 5  # frames between the changes replayed (each change re-captures)


def test_cpu_captures_behave_as_cuda_graphs():
    """AddressReplay, the tests' stand-in for a CUDA graph: a replay overwrites the capture's outputs in
    place and reads the captured addresses; it refuses a capture that reads a value back on the host,
    and a replay that would read a tensor freed since the capture."""
    given, weights = torch.arange(6.0), [torch.tensor([1.0, 10.0, 100.0])]
    graph, out = torch_batch.capture(lambda ts: ts[0][:3] * weights[0], [given], None, "t")
    torch.testing.assert_close(out, torch.tensor([0.0, 10.0, 200.0]))
    given[:3] = torch.tensor([3.0, 4.0, 5.0])  # the same memory, new values
    graph.replay()
    torch.testing.assert_close(out, torch.tensor([3.0, 40.0, 500.0]))  # the same output tensor
    weights.clear()  # the only reference: its memory is freed
    with pytest.raises(RuntimeError, match="freed since its capture"):
        graph.replay()
    with pytest.raises(RuntimeError, match="cannot be captured"):
        torch_batch.capture(lambda ts: ts[0] * ts[0].sum().item(), [given], None, "t")


def test_a_replayed_per_step_check_refuses_a_held_tensor_whose_memory_was_freed(monkeypatch):
    """The per-step check's captured graph replayed over weights whose storage FSDP had resized to nothing:
    on a GPU a read of freed memory (garbage norms, a false first NaN, or an illegal address); only its
    eager run looked. Replayed, it refuses too, as eagerly."""
    from beholder_plugin.trainer import exact_pass

    monkeypatch.setattr(torch_batch, "CPU_GRAPHS", True)
    weights = torch.randn(64, 64)
    check = exact_pass.StepCheck(torch, [0], [weights.detach()], [None], ["w"])
    for step in (1, 2, 3):  # eager, captured, replayed
        check.check(step)
    assert check._graph is not None
    weights.untyped_storage().resize_(0)  # as FSDP frees a gathered parameter after forward
    with pytest.raises(RuntimeError, match="memory freed"):
        check.check(4)


def test_a_replayed_frame_keeps_alive_what_its_graph_reads(tmp_path, monkeypatch, cpu_graphs):
    """A graph reads its index tensors and permutation where they lay at capture, holding none of them,
    and the index cache lets them go (at INDEX_CACHE_SIZE entries; here at every new one): the gatherer
    itself holds every storage its graph reads besides the frame's tensors. (The CPU stand-in's replay
    function holds them too, so on CPU a freed read cannot show in the frames: the test checks the
    holding, and that the replayed frames still equal the host path's.)"""
    monkeypatch.setattr(torch_batch, "INDEX_CACHE_SIZE", 1)
    gatherers = []
    real_capture = torch_batch.DeviceGather._capture

    def noted(gather, *args) -> None:
        gatherers.append(gather)
        real_capture(gather, *args)

    monkeypatch.setattr(torch_batch.DeviceGather, "_capture", noted)

    def before_step(step, model, opt):
        opt.zero_grad()

    pairs = replayed_and_host_frames(tmp_path, monkeypatch, "trainable_variables", 6, before_step)
    for step, (replayed, host) in enumerate(pairs):
        try:
            assert_same_frames(replayed, host)
        except AssertionError as exc:
            raise AssertionError(f"step {step}: {exc}") from exc
    assert len(cpu_graphs) >= 4
    captured = [g for g in gatherers if g._graph is not None]
    assert captured
    for gather in captured:
        reads = set(gather._graph.reads)
        assert len(reads) > 2  # the permutation, the sections' indices, the gatherer's own buffers
        unheld = reads - storages_held_by(gather, skip="_graph")
        assert not unheld, f"{len(unheld)} storages read by the graph are held by nothing"


@pytest.mark.parametrize("clearing", ["zeroed", "new views", "set to None"])
def test_replayed_gradients_frames_show_each_steps_gradients(tmp_path, monkeypatch, cpu_graphs, clearing):
    """Gradients read from .grad and replayed, every frame equal to the host path's of the same step:
    zeroed in place (the same tensors, replayed); new tensor objects over the same memory (replayed,
    as when a caching allocator gives a new gradient the last one's block); set to None (made anew
    each step, where the last ones were or, on odd steps where those are kept alive, elsewhere)."""
    kept, memory = [], {}

    def before_step(step, model, opt):
        if clearing == "set to None" and step % 2:
            kept[:] = [p.grad for p in model.parameters()]  # the next gradients cannot land there
        opt.zero_grad(set_to_none=clearing == "set to None")
        if clearing == "new views":
            for p in model.parameters():
                block = memory.setdefault(p, torch.zeros_like(p))
                p.grad = block.view_as(block).zero_()

    pairs = replayed_and_host_frames(tmp_path, monkeypatch, "gradients", 10, before_step)
    for step, (replayed, host) in enumerate(pairs):
        assert replayed.header["values"] == "gradients"
        assert host.section_values(0).any()  # a real gradient, not the zeros of a cleared one
        try:
            assert_same_frames(replayed, host)
        except AssertionError as exc:
            raise AssertionError(f"step {step}: {exc}") from exc
    if clearing != "set to None":
        assert len(cpu_graphs) >= 7


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    specs=st.lists(st.tuples(shapes, st.sampled_from(sorted(DTYPES)),
                             st.sampled_from(["plain", "channels_last", "transposed", "sliced"])),
                   min_size=1, max_size=4),
    mode=st.sampled_from(["current", "variance"]),
    seed=st.integers(0, 2**16),
)
def test_replayed_frames_of_tensors_changed_in_place_equal_host_frames(
        tmp_path_factory, monkeypatch, cpu_graphs, specs, mode, seed):
    """The same tensors, new values written into them before each frame: the frames replayed from the
    captured addresses equal the host path's, over dtypes and layouts (bf16, complex, channels-last,
    transposed, strided slices)."""
    tensors = [make_tensor(shape, dtype, form, seed + i) for i, (shape, dtype, form) in enumerate(specs)]
    runs = {b: str(tmp_path_factory.mktemp(f"graphs-{b}")) for b in (True, False)}
    beholders = {}
    for batched, run in runs.items():
        set_config(run, values="arrays", FPS=30, colormap="grayscale", mode=mode, window_size=2)
        beholders[batched] = Beholder(run, strict=True)
    replays = len(cpu_graphs)
    for k in range(4):
        for i, (t, (shape, dtype, _)) in enumerate(zip(tensors, specs)):
            t.copy_(make_tensor(shape, dtype, "plain", seed + 7 * k + i))
        for batched, beholder in beholders.items():
            monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
            beholder.frame_due_now()
            assert beholder.update(arrays={f"s{i}": t for i, t in enumerate(tensors)})
            beholder.flush()
        assert_same_frames(read_frame_file(runs[True]), read_frame_file(runs[False]))
    for beholder in beholders.values():
        beholder.close()
    assert len(cpu_graphs) - replays == 3  # frames 2-4 (the second captures the first's gathers)


def test_a_memo_of_tensors_fits_alike_tensors_and_nothing_else(tmp_path, monkeypatch):
    """The frame memo of parameters and other tensors (gradients) fits the same parameters and, for the
    others, any plain strided tensors of the same shapes on the device; not another parameter, a
    renamed or re-laid section, another shape, a sparse tensor or a tensor of another kind."""
    from beholder_plugin.trainer import device_batches

    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)
    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=30, mode="current")
    kept = nn.Parameter(torch.randn(4, 3))
    arrays = {"w": kept, "g": torch.randn(5, 2), "b": torch.randn(7)}
    handed: list = []
    real = device_batches.BatchMemo.fits

    def recorded(memo, named, settings):
        handed.append((memo, list(named), settings))
        return real(memo, named, settings)

    monkeypatch.setattr(device_batches.BatchMemo, "fits", recorded)
    with Beholder(run, strict=True, background=False) as beholder:
        for _ in range(2):
            beholder.frame_due_now()
            assert beholder.update(arrays=arrays)
    memo, named, settings = handed[-1]
    assert memo.kind == "tensors" and real(memo, named, settings)

    def fits_with(position, entry):
        changed = list(named)
        changed[position] = entry
        return real(memo, changed, settings)

    w, g, b = (next(i for i, e in enumerate(named) if e[0] == name) for name in ("w", "g", "b"))
    assert fits_with(g, (named[g][0], torch.zeros(5, 2), named[g][2]))  # a new gradient, alike
    assert fits_with(b, (named[b][0], torch.zeros(14)[::2], named[b][2]))  # strided views are plain
    assert not fits_with(w, (named[w][0], nn.Parameter(torch.randn(4, 3)), named[w][2]))
    assert not fits_with(w, (named[w][0], torch.randn(4, 3), named[w][2]))  # not the parameter kept
    assert not fits_with(g, (named[g][0], torch.zeros(2, 5), named[g][2]))
    assert not fits_with(g, (named[g][0], torch.zeros(5, 2).to_sparse(), named[g][2]))
    # a parameter where a plain tensor was: its default layout is another (a kernel's), so another plan
    assert not fits_with(g, (named[g][0], nn.Parameter(torch.zeros(5, 2)), named[g][2]))
    assert not fits_with(g, ("h", torch.zeros(5, 2), named[g][2]))
    assert not fits_with(g, (named[g][0], torch.zeros(5, 2), "a layout asked for"))
    assert not fits_with(b, (named[b][0], np.zeros(7, np.float32), named[b][2]))
    assert not real(memo, named[:2], settings)


def test_a_parameter_after_a_plain_tensor_of_its_shape_is_drawn_as_a_kernel(tmp_path, monkeypatch):
    """update(arrays=...) given a plain 4-d tensor, then a parameter of the same shape under the same
    name: the host path draws the parameter as a kernel (OIHW), and so does the device-batch path (it
    reused the first frame's feature-map plan)."""
    w = torch.randn(6, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    runs = {batched: str(tmp_path / f"run{int(batched)}") for batched in (False, True)}
    for batched, run in runs.items():
        monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
        set_config(run, values="arrays", FPS=30, mode="current")
        layouts = []
        with Beholder(run, strict=True, background=False) as beholder:
            for value in (w.clone(), nn.Parameter(w.clone()), nn.Parameter(w.clone())):
                beholder.frame_due_now()
                assert beholder.update(arrays={"w": value})
                layouts.append(read_frame_file(run).sections[0]["layout"])
        assert layouts == ["activation_nchw", "kernel_oihw", "kernel_oihw"], (batched, layouts)
    assert_same_frames(read_frame_file(runs[True]), read_frame_file(runs[False]))


@pytest.mark.parametrize("mode", ["current", "variance"])
def test_hooked_gradients_are_copied_into_one_buffer_and_gathered_as_one_batch(tmp_path, monkeypatch, mode):
    """.grad cleared after the step (Hugging Face's Trainer): at the end of the backward pass the hooks
    copy the gradients whole into one buffer (within GRADIENT_BUFFER_BYTES), and the frame gathers them
    from it as one batch: no slice per gradient, the same frames as slicing each one (the gradients as
    the backward pass left them, though the loop clips them in place before update()), no gradient
    kept. Over the budget, each is sliced as before."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)
    check_hooked_gradients_in_one_buffer(tmp_path, monkeypatch, mode, "cpu")


@pytest.mark.parametrize("batched", [False, True], ids=["host", "device-path"])
def test_hooked_gradients_of_several_backward_passes_in_a_step_are_each_their_own(tmp_path, monkeypatch,
                                                                                   batched):
    """An ensemble of alike members, one backward pass each per step, .grad cleared after the step: each
    member's section shows its own gradient and its exact norm. Before, each pass copied its gradients
    into the one buffer the last pass had used (the same shapes), so every member was shown with the
    last member's gradients; and each pass dropped the earlier passes' norms."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
    run = str(tmp_path / "run")
    set_config(run, values="gradients", FPS=1, mode="current")
    torch.manual_seed(0)
    ensemble = nn.ModuleList([nn.Linear(4, 2) for _ in range(3)])
    opt = torch.optim.SGD(ensemble.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    with Beholder(run, strict=True) as beholder:
        beholder.watch(ensemble)
        for _ in range(4):  # (a due update() arms the hooks, the next takes the frame)
            x, y = torch.randn(8, 4, generator=gen), torch.randn(8, 2, generator=gen)
            for k, member in enumerate(ensemble):
                ((member(x) - y * (k + 1)) ** 2).mean().backward()
            truth = {name: p.grad.clone() for name, p in ensemble.named_parameters()}
            opt.step()
            opt.zero_grad(set_to_none=True)  # (gone before update(): the hooks caught them)
            beholder.frame_due_now()
            if beholder.update():
                beholder.flush()
                assert_sections_hold(read_frame_file(run), truth)
        assert beholder.frames_written == 2 and beholder.failures == 0
    timeline = read_timeline(run)
    for name, grad in truth.items():
        np.testing.assert_allclose(timeline[name]["norm"][-1], float(grad.norm()), rtol=1e-6)
    assert all(int(tl["flags"][-1]) & tl_format.EXACT_NORM for tl in timeline.values())  # (the hooks')


@needs_cuda
@pytest.mark.gpu
def test_on_a_gpu_hooked_gradients_are_copied_into_one_buffer(tmp_path, monkeypatch):
    """The same on CUDA: one buffer, no slice per gradient, the same frames as slicing each one."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)  # the two runs' gradients bit for bit
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    check_hooked_gradients_in_one_buffer(tmp_path, monkeypatch, "variance", "cuda")


def check_hooked_gradients_in_one_buffer(tmp_path, monkeypatch, mode: str, device: str) -> None:
    """Frames of hooked gradients through one buffer and through a slice each (GRADIENT_BUFFER_BYTES 0)."""
    import weakref

    from beholder_plugin.trainer import watch as watch_module
    from beholder_plugin.trainer.sources import torch_capture

    sliced: list[str] = []
    real_copy = torch_capture.copy_shown

    def counted(name, *args, **kwargs):
        sliced.append(name)
        return real_copy(name, *args, **kwargs)

    monkeypatch.setattr(torch_capture, "copy_shown", counted)
    frames, slices, left = {}, {}, {}
    buffered = watch_module.GRADIENT_BUFFER_BYTES
    for budget in (buffered, 0):
        monkeypatch.setattr(watch_module, "GRADIENT_BUFFER_BYTES", budget)
        sliced.clear()
        run = str(tmp_path / f"run-{budget}")
        set_config(run, values="gradients", FPS=30, mode=mode)
        torch.manual_seed(0)
        model = convnet().to(device=device, memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(1)).to(device)
        y = torch.arange(4, device=device)
        beholder = Beholder(run, strict=True, background=False)
        beholder.watch(model)
        kept = []
        for _ in range(8):
            nn.functional.cross_entropy(model(x), y).backward()
            kept += [weakref.ref(p.grad) for p in model.parameters()]
            nn.utils.clip_grad_norm_(model.parameters(), 1e-3)  # in place, after the hooks' copies
            opt.step()
            opt.zero_grad(set_to_none=True)  # gone before update(): the next frame comes from hooks
            beholder.frame_due_now()
            beholder.update()
        assert beholder.frames_written >= 3 and beholder.failures == 0
        frames[budget], slices[budget] = read_frame_file(run), len(sliced)
        left[budget] = sum(ref() is not None for ref in kept)  # taken frames keep no gradient
        beholder.close()
    assert slices[buffered] == 0 and slices[0] >= 3 * len(list(convnet().parameters()))
    assert left == {buffered: 0, 0: 0}
    assert_same_frames(frames[buffered], frames[0])


def test_flat_copies_are_one_buffer_of_dense_tensors_of_one_dtype_and_the_same_views_again(monkeypatch):
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)  # (else CPU tensors are read on the host)
    cl = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    tensors = [torch.randn(4, 3), cl, torch.randn(7), torch.randn(5, 6).t()]  # (a transpose is dense too)
    copies = torch_batch.FlatCopies()
    views = copies.copy(tensors, 1 << 20)
    assert [v.shape for v in views] == [t.shape for t in tensors]
    assert [v.stride() for v in views] == [t.stride() for t in tensors]
    assert all(torch.equal(v, t) for v, t in zip(views, tensors))
    assert len({v.untyped_storage().data_ptr() for v in views}) == 1  # one buffer
    for t in tensors:
        t.mul_(2)  # the copies keep what they were given
    assert not any(torch.equal(v, t) for v, t in zip(views, tensors))
    again = copies.copy(tensors, 1 << 20)
    assert all(a is v for a, v in zip(again, views))
    assert all(torch.equal(v, t) for v, t in zip(again, tensors))
    copy = torch_batch.FlatCopies().copy
    assert copy([torch.randn(3), torch.randn(3, dtype=torch.float64)], 1 << 20) is None
    assert copy([torch.randn(3), torch.randn(8)[::2]], 1 << 20) is None  # not dense
    assert copy([torch.randn(4, 3)], 47) is None  # over the budget: 48 bytes
    assert copy([torch.randn(4, 3)], 48) is not None
    assert copy([torch.randn(4, 3).to_sparse()], 1 << 20) is None


@pytest.mark.parametrize("batched", [False, True])
def test_a_frame_of_nans_leaves_the_variance_when_it_leaves_the_window(run_dir, monkeypatch, batched):
    """Variance mode, window 4: a frame of NaN (a loss scaler's overflow, say) shows NaN variance in
    exactly the 4 frames whose window holds it, in the host window and in the one kept on the device
    (told by the worker, which sees the frame's statistics sample)."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
    set_config(run_dir, values="arrays", mode="variance", window_size=4, FPS=30)
    gen = torch.Generator().manual_seed(0)
    clean = []
    with Beholder(run_dir, strict=True, background=False) as beholder:
        for step in range(14):
            w = torch.randn(6, 5, generator=gen)
            if step == 3:
                w = torch.full((6, 5), float("nan"))
            beholder.frame_due_now()
            assert beholder.update(arrays={"w": w})
            clean.append(read_frame_file(run_dir).sections[0]["finite"])
        device_window = any(g.window is not None for g in beholder.gatherer.device_gathers)
    assert device_window is batched
    assert clean == [True] * 3 + [False] * 4 + [True] * 7


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_a_tensor_of_every_torch_dtype_beside_another_leaves_that_one_shown(tmp_path, monkeypatch):
    """A tensor of each of torch's dtypes (its bytes random), beside a float tensor: the batched path
    and the host path show the same frame; the float tensor is shown whatever the other's dtype, which
    is shown too or says why. Before, one bit, sub-byte, packed or quantized dtype failed the device
    batch and emptied every section of it."""
    dtypes = sorted({v for v in vars(torch).values() if isinstance(v, torch.dtype)}, key=str)
    raw = torch.randint(0, 60, (96,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    shown, refused = [], []
    for dtype in dtypes:
        x = raw.view(dtype).reshape(2, -1)
        arrays = {"x": x, "plain": torch.arange(9.0).reshape(3, 3)}
        frames = []
        for batched in (False, True):
            monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
            run = str(tmp_path / f"{dtype}-{batched}")
            set_config(run, values="arrays", FPS=30, mode="current")
            with Beholder(run, background=False) as beholder:  # (not strict: a section may say why)
                assert beholder.update(arrays=arrays)
            frames.append(read_frame_file(run))
        assert_same_frames(*frames)
        x_record, plain = frames[1].sections
        assert not plain.get("missing") and frames[1].section_values(1).max() == 8.0
        (refused if x_record.get("missing") else shown).append(str(dtype))
        if x_record.get("missing"):
            assert f"a tensor of {dtype} cannot be shown" in x_record["missing"], x_record["missing"]
    assert {"torch.uint16", "torch.uint64", "torch.float8_e4m3fn", "torch.complex32"} <= set(shown)
    assert {"torch.qint8", "torch.int4", "torch.bits8", "torch.float4_e2m1fn_x2"} <= set(refused)


@needs_cuda
@pytest.mark.gpu
@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_cuda_frames_of_every_dtype_equal_host_frames(tmp_path, monkeypatch):
    """Each dtype of DTYPES (uint16-64, float8, complex32 included: gathered as signed integers of
    their width), in each storage form, on CUDA: the same frame as the CPU tensor's host path, bit for
    bit; and a dtype no frame shows (int4) leaves the tensors beside it shown."""
    specs = [((3, 4, 5, 5), dtype, form) for dtype in sorted(DTYPES)
             for form in ("plain", "channels_last", "transposed", "sliced")]
    cpu = [{f"s{i}": make_tensor(shape, dtype, form, 7 * k + i)
            for i, (shape, dtype, form) in enumerate(specs)} for k in range(2)]
    cuda = [{name: t.to("cuda") for name, t in frame.items()} for frame in cpu]
    host = frames_of(str(tmp_path / "host"), cpu, False, monkeypatch, mode="current")
    batched = frames_of(str(tmp_path / "cuda"), cuda, False, monkeypatch, mode="current")
    assert_same_frames(host, batched)
    run = str(tmp_path / "int4")
    set_config(run, values="arrays", FPS=30, mode="current")
    with Beholder(run, background=False) as beholder:
        nibbles = torch.zeros(8, dtype=torch.uint8, device="cuda").view(torch.int4)
        assert beholder.update(arrays={"nibbles": nibbles, "w": torch.full((3, 3), 2.0, device="cuda")})
    frame = read_frame_file(run)
    assert "cannot be shown" in frame.sections[0]["missing"] and frame.section_values(1).max() == 2.0


def test_frames_of_changing_plans_keep_one_device_window_and_a_few_gathers(tmp_path, monkeypatch):
    """Tensors whose shapes change between frames (activations of text of varying lengths) in variance
    mode: the device path shows the host path's frames, whose window starts afresh when the plan
    changes; one variance window is kept on the device, not one per plan (each up to 1 % of the
    device's memory), and at most DEVICE_GATHERS_KEPT gathers (each three buffers of the frame's
    size) and host buffers. Before, a plan's window took up its old samples again when the plan came back."""
    from beholder_plugin.trainer import gather as gather_module

    shapes = [(4, 7), (6, 5), (6, 5), (4, 7), (3, 9), (5, 5), (2, 11), (8, 3), (4, 7), (4, 7)]
    gen = torch.Generator().manual_seed(0)
    frames = [{"w": torch.randn(shape, generator=gen)} for shape in shapes]
    shown: dict = {}
    for batched in (False, True):
        monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
        run = str(tmp_path / f"run-{batched}")
        set_config(run, values="arrays", FPS=30, mode="variance", window_size=3)
        shown[batched], windows, kept = [], [], []
        with Beholder(run, strict=True, background=False) as beholder:
            for arrays in frames:
                beholder.frame_due_now()
                assert beholder.update(arrays=arrays)
                shown[batched].append(read_frame_file(run).section_values(0).copy())
                gathers = beholder.gatherer.device_gathers
                windows.append(sum(getattr(g, "window", None) is not None for g in gathers))
                kept.append(max(len(gathers), len(beholder.gatherer._buffers)))  # (and the host's buffers)
    for host, device in zip(shown[False], shown[True]):
        np.testing.assert_array_equal(host, device)
    assert max(windows) == 1 and max(kept) == gather_module.DEVICE_GATHERS_KEPT
    assert shown[True][-1].max() > 0  # the last two frames of one plan: a variance, not a fresh window


def test_the_device_indices_kept_stay_within_their_byte_budget(tmp_path, monkeypatch):
    """Tensors of a new shape every frame: the index cache (int32 positions where they fit) never
    holds more than INDEX_CACHE_BYTES (one entry may exceed it alone), and the frames stay the host
    path's. Before, it was bounded by a count of 4096 entries only: gigabytes for large sections."""
    monkeypatch.setattr(torch_batch, "INDEX_CACHE_BYTES", 20_000)
    monkeypatch.setattr(torch_batch, "INDEXES", torch_batch.IndexCache())
    gen = torch.Generator().manual_seed(0)
    frames = [{"a": torch.randn(40 + k, 50, generator=gen), "b": torch.randn(3, 30 + k, generator=gen)}
              for k in range(12)]
    host = frames_of(str(tmp_path / "host"), frames, False, monkeypatch, mode="current")
    kept = []
    real = torch_batch.IndexCache.get

    def watching(self, *args):
        found = real(self, *args)
        kept.append((self._bytes, found[0].dtype))
        return found

    monkeypatch.setattr(torch_batch.IndexCache, "get", watching)
    batched = frames_of(str(tmp_path / "batched"), frames, True, monkeypatch, mode="current")
    assert_same_frames(host, batched)
    assert max(size for size, _ in kept) <= 20_000 and {dtype for _, dtype in kept} == {torch.int32}
    assert len(kept) == 2 * len(frames)


@pytest.mark.parametrize("batched", [False, True], ids=["host", "device-path"])
def test_plans_of_activations_whose_shapes_change_stay_within_their_budget(tmp_path, monkeypatch, batched):
    """Activations of a new shape every frame (text of varying lengths; a 3-D output drawn as a grid has
    a plan of about a megabyte): the hooks' plans, the frame's section plans and its frame plans are
    each kept within PLANS_KEPT_BYTES, the oldest dropped, and nothing else keeps a dropped one alive.
    Before, the caches were bounded by counts only (4096 and 1024 plans) and the device index cache
    held every plan it had indexed: gigabytes, growing with every new length."""
    import gc
    import weakref

    from beholder_plugin.protocol import plans as plans_module

    monkeypatch.setattr(plans_module, "PLANS_KEPT_BYTES", 3 * 2**20)
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
    monkeypatch.setattr(torch_batch, "INDEXES", torch_batch.IndexCache())
    made, real = [], plans_module.make_plan

    def recorded(*args, **kwargs):
        plan = real(*args, **kwargs)
        made.append((weakref.ref(plan), plan.nbytes))
        return plan

    monkeypatch.setattr(torch_capture, "make_plan", recorded)
    run = str(tmp_path / "run")
    set_config(run, values="activations", FPS=1, mode="current")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 64), nn.ReLU())
    gen = torch.Generator().manual_seed(0)
    with Beholder(run, strict=True) as beholder:
        beholder.watch(model)
        watch = beholder._watch
        for length in range(20, 60):
            tokens = torch.randint(0, 50, (8, length), generator=gen)
            model(tokens)
            beholder.frame_due_now()
            if beholder.update():
                beholder.flush()
                caches = (watch._plans, beholder.gatherer._plans._plans, beholder.gatherer._frame_plans)
                assert max(cache.bytes for cache in caches) <= 3 * 2**20
        assert beholder.frames_written == 20 and beholder.failures == 0
        # (two shapes a length, three layers: 20 frames, each armed on the step before; many times the
        # budget in all)
        assert len(made) == 2 * 20 and sum(nbytes for _, nbytes in made) > 3 * 3 * 2**20
        gc.collect()
        alive = sum(nbytes for ref, nbytes in made if ref() is not None)
        assert alive <= 3 * 2**20, alive
    frame = read_frame_file(run)
    assert frame.sections[1]["shape"] == [8, length, 64]
    output = model[1](model[0](tokens)).detach().numpy()
    assert frame.section_values(1).max() == output.max()


@pytest.mark.parametrize("batched", [False, True], ids=["host", "device-path"])
def test_negative_views_are_shown_with_their_sign(tmp_path, monkeypatch, batched):
    """A negative view (``c.conj().imag``; torch keeps the sign as a bit, not in memory) is shown with its
    sign on both paths. The host path read such a tensor's memory through DLPack, which drops the bit:
    every value was shown negated."""
    c = torch.complex(torch.arange(6.0).reshape(2, 3), torch.arange(1.0, 7.0).reshape(2, 3))
    arrays = {"conj imag": c.conj().imag,
              "neg float64": torch._neg_view(torch.arange(1.0, 5.0, dtype=torch.float64)),
              "neg int64": torch._neg_view(torch.arange(1, 6)),
              "neg with inf": torch._neg_view(torch.tensor([1.0, math.inf, 3.0]))}
    assert all(t.is_neg() for t in arrays.values())
    run = str(tmp_path / "run")
    frame = frames_of(run, [arrays], batched, monkeypatch, mode="current")
    for i, t in enumerate(arrays.values()):
        want = t.resolve_neg().numpy().astype(np.float32).ravel()
        assert want.max() < 0
        np.testing.assert_array_equal(frame.section_values(i).ravel(), want)
        assert frame.sections[i]["max"] == float(want.max())
    # the exact pass takes the infinite one's norm again from its values (it failed on the view)
    assert read_timeline(run)["neg with inf"]["norm"][-1] == math.inf


def lockstep_frames(tmp_path, monkeypatch, steps: list, config: dict) -> list:
    """Each step's arrays (and config changes) given to a host-path and a batched Beholder in turn; the
    pairs of frames (host, batched) of every step."""
    runs = {b: str(tmp_path / f"run-{b}") for b in (False, True)}
    beholders = {}
    for batched, run in runs.items():
        set_config(run, values="arrays", FPS=30, **config)
        beholders[batched] = Beholder(run, strict=True, background=False)
    pairs = []
    for arrays, changes in steps:
        frames = []
        for batched, beholder in beholders.items():
            monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", batched)
            if changes:
                set_config(runs[batched], values="arrays", FPS=30, **{**config, **changes})
            beholder.frame_due_now()
            assert beholder.update(arrays=arrays)
            frames.append(read_frame_file(runs[batched]))
        pairs.append(frames)
    for beholder in beholders.values():
        beholder.close()
    return pairs


def test_a_section_missing_for_a_frame_starts_the_device_window_again_as_the_host_path_does(
        tmp_path, monkeypatch):
    """Variance mode: an unused layer's gradient (None) for a frame changes the frame's shapes, so the
    host window starts again there and again when it comes back. The device window was neither dropped
    nor restarted by such a frame: afterwards it took up its samples from before the gap, and every
    section showed another variance than the host path's."""
    gen = torch.Generator().manual_seed(0)
    a = [torch.randn(6, 5, generator=gen) for _ in range(7)]
    b = [torch.randn(7, generator=gen) for _ in range(7)]
    steps = [({"a": a[k], "b": None if k == 2 else b[k]}, None) for k in range(7)]
    pairs = lockstep_frames(tmp_path, monkeypatch, steps, dict(mode="variance", window_size=5))
    for host, batched in pairs:
        assert_same_frames(host, batched)
        assert host.header["window"] == batched.header["window"]
    assert [p[1].header["window"]["frames"] for p in pairs] == [1, 2, 1, 1, 2, 3, 4]


def test_a_frame_partly_off_the_device_takes_its_variance_on_the_host_from_a_new_window(
        tmp_path, monkeypatch):
    """Variance mode: one array given as NumPy for two frames (the rest on the device, the same plan).
    Those frames' variance is the host's; it pushed the device window's variances into the host window
    again (a variance of variances), and the device window went on with a wrong value in that array's
    place. Now the device window is dropped there and the host's starts afresh, and back on the device
    a new window starts: each frame is the variance of the frames since then, as a host-path run of
    just those frames shows."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)
    gen = torch.Generator().manual_seed(1)
    a = [torch.randn(6, 5, generator=gen) for _ in range(7)]
    b = [torch.randn(7, generator=gen) for _ in range(7)]
    arrays = [{"a": a[k], "b": b[k].numpy() if k in (2, 3) else b[k]} for k in range(7)]
    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=30, mode="variance", window_size=5)
    frames = []
    with Beholder(run, strict=True, background=False) as beholder:
        for given in arrays:
            beholder.frame_due_now()
            assert beholder.update(arrays=given)
            frames.append(read_frame_file(run))
    assert [f.header["window"]["frames"] for f in frames] == [1, 2, 1, 2, 1, 2, 3]
    for start, end in ((2, 3), (4, 6)):  # the windows' frames, again on the host path alone
        alone = lockstep_frames(tmp_path / f"alone-{start}", monkeypatch,
                                [(given, None) for given in arrays[start:end + 1]],
                                dict(mode="variance", window_size=5))
        assert_same_frames(alone[-1][0], frames[end])


def test_other_sections_of_the_same_shapes_start_the_variance_window_again(tmp_path, monkeypatch):
    """The Sections filter turned from one layer to another of the same shape: the host window went on
    (its key was the shapes alone), mixing both layers' values in one variance, while the device window
    started again; both start again now."""
    gen = torch.Generator().manual_seed(2)
    steps = [({"a": torch.randn(6, 5, generator=gen), "b": torch.randn(6, 5, generator=gen)},
              {"filter": "b"} if k >= 3 else {"filter": "a"}) for k in range(6)]
    pairs = lockstep_frames(tmp_path, monkeypatch, steps, dict(mode="variance", window_size=4))
    for host, batched in pairs:
        assert_same_frames(host, batched)
    assert [p[0].header["window"]["frames"] for p in pairs] == [1, 2, 3, 1, 2, 3]
    assert [p[0].sections[0]["name"] for p in pairs] == ["a"] * 3 + ["b"] * 3


def test_the_device_window_is_cut_to_the_host_windows_length(tmp_path, monkeypatch):
    """A frame too big for the host window's byte budget gets a shorter window on the host; the device
    window kept the asked length, so the two paths' variances differed from the shorter length on."""
    from beholder_plugin.trainer.views import render

    monkeypatch.setattr(render, "HOST_WINDOW_BYTES", 4 * 64 * 64 * (3 + 7))  # (3 frames of 64 x 64)
    gen = torch.Generator().manual_seed(3)
    steps = [({"w": torch.randn(64, 64, generator=gen)}, None) for _ in range(6)]
    pairs = lockstep_frames(tmp_path, monkeypatch, steps, dict(mode="variance", window_size=6))
    for host, batched in pairs:
        assert_same_frames(host, batched)
        assert host.header["window"] == batched.header["window"]
    assert pairs[-1][1].header["window"] == {"frames": 3, "size": 3}


def test_a_negative_view_of_the_same_memory_is_not_replayed_from_the_graph(tmp_path, monkeypatch, cpu_graphs):
    """``z.conj().imag`` is ``z.imag``'s memory, shape, strides and dtype, read negated: the graph
    captured for one was replayed for the other, showing +1..12 where the values are -12..-1."""
    z = torch.complex(torch.arange(12.0).reshape(3, 4), torch.arange(12.0).reshape(3, 4) + 1)
    steps = [({"im": z.imag if k < 3 else z.conj().imag}, None) for k in range(5)]
    pairs = lockstep_frames(tmp_path, monkeypatch, steps, dict(mode="current"))
    for host, batched in pairs:
        assert_same_frames(host, batched)
    assert cpu_graphs  # (the graph was replayed for the plain views)
    assert pairs[-1][1].sections[0]["max"] == -1.0


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_replayed_frames_of_every_dtype_lay_each_dtypes_parts_as_captured(tmp_path, monkeypatch, cpu_graphs):
    """Two tensors of each dtype of DTYPES, the same ones frame after frame: the capture lays out each
    dtype's parts before it runs (part_dtype, the dtype section_part gives a part), so the frames are
    replayed (a layout foreseen wrong would fail the capture: eager frames) and equal the host path's."""
    arrays = {f"{name}-{k}": make_tensor((3, 4, 5, 5), name, "sliced" if k else "plain", 7 * k + j)
              for j, name in enumerate(sorted(DTYPES)) for k in range(2)}
    pairs = lockstep_frames(tmp_path, monkeypatch, [(arrays, None)] * 4, dict(mode="current"))
    for host, batched in pairs:
        assert_same_frames(host, batched)
    assert len(cpu_graphs) == 3  # (the first frame eager, the second captured; each replayed)
