"""PyTorch adapter: tensors sliced on their device with index_select, then copied to the host."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from beholder_plugin.protocol.layout import RenderError
from beholder_plugin.protocol.plans import SectionPlan
from beholder_plugin.trainer.exact_pass import freed
from beholder_plugin.trainer.sources import finish, run_positions, torch_batch

# A sparse tensor (an embedding's sparse gradient) is shown from a dense copy made for the frame, up to
# so many values (64 M: 256 MB of float32); a bigger one says to pass its rows.
MAX_DENSE_VALUES = 1 << 26


def prepare(obj: Any, label: str) -> Any:
    """The tensor, detached from autograd (nothing is copied); a DTensor (FSDP2) as this rank's shard.

    Gathering a sharded parameter whole, or even its shown slice, is a
    collective every rank must join, and only one rank writes frames; so a
    DTensor is shown as the part this process holds (``to_local()``).
    """
    to_local = getattr(obj, "to_local", None)
    if to_local is not None and type(obj).__name__ == "DTensor":
        obj = to_local()
    if obj.is_nested:
        raise RenderError(f"section {label}: {_unreadable(obj)}")
    obj = dense(obj, label)
    if obj.dtype not in torch_batch.shown_dtypes() or freed(obj):
        raise RenderError(f"section {label}: {_unreadable(obj)}")
    return obj.detach()


def dense(obj: Any, label: str) -> Any:
    """A sparse tensor (nn.Embedding(sparse=True)'s gradient) as a dense copy made for the frame; others as
    they are. A meta tensor, which has no values, is refused saying so."""
    if obj.is_meta:
        raise RenderError(f"section {label}: a meta tensor (device='meta') holds a shape and a dtype, no "
                          "values")
    if str(obj.layout) == "torch.strided" or obj.is_mkldnn:
        return obj
    if obj.numel() > MAX_DENSE_VALUES:
        raise RenderError(f"section {label}: a sparse tensor of {obj.numel()} values is not shown (its "
                          f"dense copy would pass {MAX_DENSE_VALUES}): pass the rows that matter, dense")
    return obj.detach().to_dense()


def _unreadable(t: Any) -> str:
    """Why a tensor prepare() turns away is not shown, and what to pass instead."""
    if t.is_nested:
        return "a nested tensor (components of different shapes) is not shown: pass its components " \
               "(t.unbind()) or t.to_padded_tensor(0)"
    if t.is_quantized:
        return f"a quantized tensor ({t.dtype}) is not shown: pass its .dequantize() (a float copy of " \
               "the whole tensor, so Beholder does not make one)"
    if t.dtype not in torch_batch.shown_dtypes():
        return f"a tensor of {t.dtype} cannot be shown (its values have no conversion to numbers: " \
               "bit, sub-byte and packed types)"
    return "the tensor's memory has been freed (its storage resized to nothing, as FSDP does to a " \
           "gathered parameter after its forward, or shrunk below the tensor): pass it while its values " \
           "are there"


def _host(t: Any) -> np.ndarray:
    """A tensor's values in NumPy (floats NumPy lacks, bf16 and the float8 types, as float32; complex
    values as their magnitudes)."""
    import torch

    if t.is_complex():
        t = (t.to(torch.complex64) if t.dtype is torch.complex32 else t).abs()
    if t.dtype.is_floating_point and t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t.cpu().resolve_neg().numpy()  # (a negative view's values: numpy() refuses the view itself)


def host_view(t: Any) -> np.ndarray | None:
    """A NumPy view of a CPU tensor's memory (no copy), or None where NumPy cannot see it as it is.

    Through DLPack, not Tensor.numpy(): numpy() marks the tensor's storage as
    never resizable again, and FSDP frees a gathered parameter by resizing
    its storage to nothing after each forward.
    """
    if t.device.type != "cpu" or t.dtype not in _viewable_dtypes() or torch_batch.BATCH_CPU_TENSORS:
        return None
    if type(t) not in _plain_types():  # (a subclass, a DTensor say, hands DLPack memory not its own)
        return None
    if t.is_neg():  # (a negative view, such as c.conj().imag: DLPack hands over its memory unnegated)
        return None
    try:
        return np.from_dlpack(t.detach())
    except (BufferError, RuntimeError, TypeError, ValueError):  # views NumPy cannot take as they are
        return None


@functools.cache
def _plain_types() -> tuple:
    """torch's own tensor types, whose memory DLPack hands over as it is (made on first use)."""
    import torch

    return (torch.Tensor, torch.nn.Parameter)


@functools.cache
def _viewable_dtypes() -> frozenset:
    """The torch dtypes a NumPy view shows as they are (made on first use: torch loads late)."""
    import torch

    return frozenset({torch.float32, torch.float64, torch.int8, torch.int16, torch.int32, torch.int64,
                      torch.uint8, torch.bool})


def compact(t: Any, plan: SectionPlan, label: str) -> np.ndarray:
    """The plan's compact section, selected on the device first (a tensor NumPy can view is read through
    host_view and the NumPy adapter instead: sources.in_place)."""
    import torch

    for axis, idx in enumerate(plan.axes):
        if idx is not None:
            t = torch_batch.index_select(t, axis, torch.as_tensor(idx, device=t.device))
    return finish(_host(t), plan)


def sample(t: Any, runs: tuple[int, int, int]) -> np.ndarray:
    """The sample's runs of consecutive values (views.stats), taken on the device, then copied."""
    import torch

    count, stride, length = runs
    if t.is_contiguous():
        return _host(t.reshape(-1)[: count * stride].reshape(count, stride)[:, :length])
    index = np.unravel_index(run_positions(runs), tuple(t.shape))
    return _host(t[tuple(torch.as_tensor(i, device=t.device) for i in index)])


def default_layout(obj: Any, shape: tuple[int, ...]) -> str | None:
    """PyTorch's axis order: parameters OIHW, other 4-D tensors NCHW when they look like feature maps.

    A rank-4 tensor (n, c, h, w) with h == w and n != h is taken as
    activations (the original's test, moved to channels-first axes); any other
    rank-4 tensor, and every rank-3 to rank-5 ``nn.Parameter``, as a
    convolution kernel (out, in, *k). Other ranks: the original's rule.
    """
    import torch

    rank = len(shape)
    if isinstance(obj, torch.nn.Parameter) and rank in (3, 4, 5):
        return "kernel_oihw"
    if rank == 4:
        return "activation_nchw" if shape[2] == shape[3] and shape[0] != shape[2] else "kernel_oihw"
    return None


def whole(obj: Any, label: str) -> np.ndarray:
    """The whole tensor on the host."""
    return _host(obj.detach())
