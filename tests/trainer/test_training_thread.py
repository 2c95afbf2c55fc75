"""What the training thread may do, on every torch path: issue device work, never read a value back.

On a GPU, reading a value back (``item()``, ``bool(t)``, ``nonzero()``,
``.cpu()``, ``.tolist()``) waits for all the training work
queued before it. CI has no GPU, so the device path runs here on CPU tensors
(``torch_batch.BATCH_CPU_TENSORS``), and each of those reads is recorded when
the training thread makes it: aten ops through a dispatch mode (thread-local:
the worker's own reads, which are allowed, are not seen), the Python-level
reads (which a CPU tensor serves without dispatching) by wrapping them.
The training loops themselves read nothing, so every read recorded is
Beholder's.
"""

from __future__ import annotations

import contextlib
import threading

import pytest
from support import set_config

from beholder_plugin import Beholder
from beholder_plugin.protocol.runfiles import read_frame_file
from beholder_plugin.trainer.sources import torch_batch

torch = pytest.importorskip("torch")
nn = torch.nn

# aten ops that read a value back to the host (on CUDA: a synchronization)
READS_BACK = {"_local_scalar_dense", "item", "is_nonzero", "nonzero", "nonzero_static", "masked_select",
              "equal", "allclose", "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim",
              "repeat_interleave", "bincount", "histc", "_assert_async"}
# Python-level reads a CPU tensor serves without dispatching (a CUDA one copies and waits; numpy(),
# which a CUDA tensor refuses, is how the host buffers are read, so it is not one)
PYTHON_READS = ("tolist", "cpu")


class Reads(torch.utils._python_dispatch.TorchDispatchMode):
    """Records, on the thread that enters it, the aten ops that read values back."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket.__name__)
        if name in READS_BACK:
            self.found.append(name)
        elif name == "_to_copy" and (kwargs or {}).get("device") is not None:
            self.found.append(f"_to_copy to {kwargs['device']}")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def recorded_reads(monkeypatch):
    """The reads the current thread makes inside the block (a list, filled as they happen)."""
    thread = threading.get_ident()
    reads = Reads()
    active = [True]

    def wrapped(name, real):
        def read(self, *args, **kwargs):
            if active[0] and threading.get_ident() == thread:
                reads.found.append(f"Tensor.{name}")
            return real(self, *args, **kwargs)
        return read

    for name in PYTHON_READS:
        monkeypatch.setattr(torch.Tensor, name, wrapped(name, getattr(torch.Tensor, name)))
    real_to, real_upload, uploading = torch.Tensor.to, torch_batch.upload, [False]

    def upload(values, device):  # (a copy to the device, which on the CPU is a .to("cpu"))
        uploading[0] = True
        try:
            return real_upload(values, device)
        finally:
            uploading[0] = False

    def to(self, *args, **kwargs):
        if active[0] and not uploading[0] and threading.get_ident() == thread and any(
                (isinstance(a, (str, torch.device)) and torch.device(a).type == "cpu")
                for a in (*args, kwargs.get("device")) if a is not None):
            reads.found.append("Tensor.to(cpu)")
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    monkeypatch.setattr(torch_batch, "upload", upload)
    try:
        with reads:
            yield reads.found
    finally:
        active[0] = False  # (the wrappers stay until the test ends, recording nothing)


def convnet() -> nn.Module:
    """conv -> batchnorm -> relu (in place) -> pool -> linear, channels-last."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                          nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(8 * 16, 10))
    return model.to(memory_format=torch.channels_last)


LOOPS = {
    # (values, the loop: gradients cleared before backward, or after the step as HF's Trainer does, or a
    # compiled model's, cleared before backward)
    "weights": ("trainable_variables", "before"),
    "gradients": ("gradients", "before"),
    "hooked gradients": ("gradients", "after"),
    "activations": ("activations", "before"),
    "compiled activations": ("activations", "compiled"),
    "compiled gradients": ("gradients", "compiled"),
}


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_watch_never_reads_a_value_back_on_the_training_thread(tmp_path, monkeypatch, loop, graphs):
    """watch(model) in each mode, frames due at some steps and not at others (the per-step check runs
    then), with and without captured graphs: no read back on the training thread, frames written."""
    values, clear = LOOPS[loop]
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)
    monkeypatch.setattr(torch_batch, "CPU_GRAPHS", graphs)
    run = str(tmp_path / "run")
    # frames due only where the loop says; variance mode (the default): the window's sums on the device
    set_config(run, values=values, FPS=1)
    model = convnet()
    if clear == "compiled":  # (dynamo's aot_eager backend: what inductor is given, run as it is)
        pytest.importorskip("torch._dynamo")
        model = torch.compile(model, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, foreach=True)
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.arange(4)
    beholder = Beholder(run, strict=True)
    beholder.watch(model)
    watched = beholder._watch
    written = 0
    with recorded_reads(monkeypatch) as reads:
        for step in range(12):
            if clear != "after":
                opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if clear == "after":
                opt.zero_grad()
            if step % 3 != 1:
                beholder.frame_due_now()
            written += beholder.update()
    beholder.close()
    assert reads == []
    assert watched.compiled == (clear == "compiled")  # (compiled inside the mode, and the watch knew it)
    # (a frame due arms the hooks for the next step; under load the worker may skip one)
    assert written >= 2 and beholder.failures == 0
    frame = read_frame_file(run)
    assert len(frame.sections) >= 2 and all("missing" not in record for record in frame.sections)


def odd_tensors(seed: int) -> dict:
    """A tensor of each kind the device path converts or lays out its own way."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(6, 4, 3, 3, generator=gen)
    return {
        "bf16 channels-last": base.to(torch.bfloat16).contiguous(memory_format=torch.channels_last),
        "fp16 transposed": base[:, :, 0, 0].to(torch.float16).t(),
        "float8": base.to(torch.float8_e4m3fn),
        "uint16": (base.abs() * 1000).to(torch.uint16),
        "uint64 sliced": (base.abs() * 2**40).to(torch.int64).to(torch.uint64)[::2],
        "complex64": torch.complex(base, -base),
        "bool": base > 0,
    }


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
def test_arrays_of_odd_dtypes_are_gathered_without_reading_back(tmp_path, monkeypatch, graphs):
    """update(arrays=...) of converted dtypes and odd layouts, frames due at some steps (the per-step
    check runs at the others) and the arrays changed between frames: no read back, every section shown."""
    monkeypatch.setattr(torch_batch, "BATCH_CPU_TENSORS", True)
    monkeypatch.setattr(torch_batch, "CPU_GRAPHS", graphs)
    run = str(tmp_path / "run")
    set_config(run, values="arrays", FPS=1)
    beholder = Beholder(run, strict=True)
    written = 0
    with recorded_reads(monkeypatch) as reads:
        for step in range(8):
            arrays = odd_tensors(step // 4)  # (new tensors half way: a new plan's first frames)
            if step % 2 == 0:
                beholder.frame_due_now()
            if beholder.update(arrays=arrays):
                written += 1
                beholder.flush()
    beholder.close()
    assert reads == []
    assert written >= 2 and beholder.failures == 0
    frame = read_frame_file(run)
    assert [record["name"] for record in frame.sections] == list(arrays)
    assert all("missing" not in record for record in frame.sections)
