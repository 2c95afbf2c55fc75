"""A frame's torch tensors gathered on their device as one batch, copied to the host once, asynchronously.

On the training thread nothing waits for the device. Per section one
``index_select`` reads the shown values and the statistics sample (their
storage offsets are worked out once per shape, strides and plan, and kept on
the device); one ``cat`` lays them end to end in a reused float32 device
buffer (parts of another dtype, bf16 or fp16, are laid in a buffer of their
own dtype by one ``cat`` and converted by one copy: torch's ``cat`` into an
output of another dtype converts each input with a kernel of its own), and
one more ``index_select`` puts them in the frame's order (shown values of
every section, then every sample), and an event is recorded after them.
The timeline's figures of the frame's sections (norms, per-step flags) are
laid after its values in that buffer (``extra``), so that the same copy
brings them. On CUDA, when a frame gathers from the same storage
as the frame before (parameters, updated in place), the gathers are
captured once as a CUDA graph and replayed: a few launches per frame
whatever the number of sections. The rest is the worker's
(``Pending.wait``): on a side stream that waits on that event, the variance
window's step (kept on the device) and one copy of the buffer into reused
pinned host memory, then it waits for the copy and renders from the host
buffer.

The same code runs on CPU tensors (``BATCH_CPU_TENSORS``), which is how it
is tested without a GPU; by default CPU tensors are read where they lie
(``torch_tensors.host_view``), which is faster there. With ``CPU_GRAPHS``
too, the graph's part runs on the CPU as well: ``AddressReplay`` keeps the
addresses a capture read and replays the gathers from them, as a CUDA graph
does, so that when to capture and when to replay is tested without a GPU.

Example::

    gather = DeviceGather(device, plan.value_count, plan.sample_count, plan)
    pending = gather.launch([(0, tensor_a), (1, captured_b)])
    host = pending.wait()   # on the worker: float32, shown values then samples
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from beholder_plugin.protocol.plans import SectionPlan
from beholder_plugin.trainer.exact_pass import dense, span_of
from beholder_plugin.trainer.sources import run_positions
from beholder_plugin.trainer.sources.captured import Captured
from beholder_plugin.trainer.views.render import FlatWindow, host_window_size

# Gather CPU tensors through the batched path too (tests set this, as does BEHOLDER_BATCH_CPU_TENSORS=1
# in the environment: CI has no GPU, and this is how the device path is checked there).
BATCH_CPU_TENSORS = os.environ.get("BEHOLDER_BATCH_CPU_TENSORS") == "1"
# Capture and replay CPU tensors' gathers as CUDA tensors' are (AddressReplay; tests set this).
CPU_GRAPHS = False
# How many (shape, strides, plan) -> device index entries are kept per device.
INDEX_CACHE_SIZE = 4096
# ... and at most this many bytes of them: about four frames of ResNet-50's activations at batch 64 (7.4 M
# values); activations whose shapes change (text of varying lengths) would otherwise keep gigabytes.
INDEX_CACHE_BYTES = 128 * 2**20


def side_streams(device: Any) -> tuple[Any, Any]:
    """Beholder's two side streams on a CUDA device, made once: the frames' (their gathers' capture, and
    the worker's copies to the host) and the per-step check's capture.

    ``torch.cuda.Stream()`` makes no stream: it hands out the streams of a
    pool, 32 per device and priority, in turn. A capture on a stream that
    another thread issues work on fails, or takes that work in; two streams
    of ours could be one, one of ours the one ``torch.compile``'s CUDA
    graphs capture on. So both are taken once, from the high-priority pool
    (most code draws default-priority streams), and checked to differ;
    every Beholder of the process shares them, and ``side_lock`` keeps a
    capture on them from running while a worker issues work there.
    """
    import torch

    device = torch.device(device)
    found = _SIDE_STREAMS.get(device)
    if found is None:
        frames = torch.cuda.Stream(device, priority=-1)
        check = torch.cuda.Stream(device, priority=-1)
        for _ in range(64):  # (another thread drew from the pool in between, 31 times)
            if check.cuda_stream != frames.cuda_stream:
                break
            check = torch.cuda.Stream(device, priority=-1)
        found = _SIDE_STREAMS[device] = (frames, check)
    return found


def side_lock(device: Any) -> Any:
    """The lock held, for a device's side streams, by a capture on them and by a worker issuing its copy
    there (each Beholder has its worker; they share the streams)."""
    import torch

    return _SIDE_LOCKS.setdefault(torch.device(device), threading.RLock())


_SIDE_STREAMS: dict[Any, tuple[Any, Any]] = {}
_SIDE_LOCKS: dict[Any, Any] = {}  # device -> threading.RLock


def batch_device(t: Any) -> Any:
    """The device a prepared tensor is gathered on in a batch, or None (read where it lies: the host path)."""
    torch = sys.modules["torch"]  # (a hook asks this for every layer it copies: no import statement)
    if (not isinstance(t, torch.Tensor) or t.dtype not in shown_dtypes() or t.layout is not torch.strided
            or t.is_quantized):
        return None
    device = t.device
    kind = device.type  # (each .device is a new object: read once)
    if (kind == "cpu" and not BATCH_CPU_TENSORS) or kind == "meta":
        return None
    return device


def capturing(t: Any) -> bool:
    """Whether a CUDA graph is being captured on the current stream while a hook or check is handed this
    tensor (the user's own ``torch.cuda.graph`` around a training step, say): a hook then issues nothing,
    as no upload, allocation of pinned memory, sync or read back may run in a capture, and what it
    launched would be replayed with the graph. Asked of the CUDA runtime only for a CUDA tensor (a CPU
    build of torch has no such query; a CPU tensor is never captured)."""
    return getattr(t, "is_cuda", False) and sys.modules["torch"].cuda.is_current_stream_capturing()


class FlatCopies:
    """Copies of tensors laid end to end in one buffer by one launch (a cat), as views of their shapes and
    strides, kept between calls: while the tensors' shapes and strides stay, the same views come back,
    in the same memory (a frame's CUDA graph then reads them where it read the last ones)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._flat: Any = None
        self._views: list[Any] = []

    def copy(self, tensors: list[Any], budget: int, factor: Any = None) -> list[Any] | None:
        """The copies of these tensors (times ``factor``, a scalar tensor, when given), or None unless they
        are plain tensors whose values fill their memory span (``exact_pass.dense``), of one dtype on one
        batch device, at most ``budget`` bytes together."""
        import torch

        plain = (torch.Tensor, torch.nn.Parameter)
        if not tensors or type(tensors[0]) not in plain:  # (None: a hook freed it, say)
            return None
        first = tensors[0]
        dtype, device = first.dtype, batch_device(first)
        if device is None:
            return None
        for t in tensors:
            if type(t) not in plain or t.layout is not torch.strided or t.dtype != dtype:
                return None
            if t.device != device or not dense(t):  # (dense: its values fill one span of memory)
                return None
        counts = [t.numel() for t in tensors]
        total = sum(counts)
        if total * first.element_size() > budget:
            return None
        key = (device, dtype, [t.shape for t in tensors], [t.stride() for t in tensors])
        if key != self._key:
            self.clear()
            self._flat = torch.empty(total, dtype=dtype, device=device)
            at = 0
            for t, n in zip(tensors, counts):
                self._views.append(self._flat.as_strided(t.shape, t.stride(), at))
                at += n
            self._key = key
        spans = [t.as_strided((n,), (1,), t.storage_offset()) for t, n in zip(tensors, counts)]
        torch.cat(spans, out=self._flat)
        if factor is not None:
            self._flat.mul_(factor)
        return self._views

    def holds(self, t: Any) -> bool:
        """Whether a tensor is one of the copies in the buffer now (the next copy() may overwrite it)."""
        flat = self._flat
        return flat is not None and t.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()

    def clear(self) -> None:
        """Let the buffer go (the copies handed out keep their memory)."""
        self._key, self._flat, self._views = None, None, []


def storage_offsets(plan: SectionPlan, shape: Sequence[int], strides: Sequence[int],
                    runs: tuple[int, int, int], sample_n: int) -> np.ndarray:
    """Storage offsets (from the tensor's own offset) of a section's shown values, then of its sample.

    The shown values come in the compact section's row-major order. When a
    frame shows every value of the array once, its sample is the shown
    values again (as the host path takes it); otherwise it is the runs of
    views.stats in flat order.
    """
    strides_a = np.asarray(strides, dtype=np.int64)
    if not shape:
        shown = np.zeros(1, np.int64)
    else:
        shown = np.zeros(plan.compact_shape, np.int64)
        for ix, stride in zip(plan.index, strides_a):
            shown = shown + np.asarray(ix, dtype=np.int64) * stride
        shown = shown.reshape(-1)
    count = math.prod(shape)
    if runs[0] == 1 and shown.size == count:
        sample = shown[:sample_n]
    elif not shape:
        sample = np.zeros(sample_n, np.int64)
    else:
        flat = run_positions(runs)[:sample_n]
        sample = np.zeros(flat.shape, np.int64)
        for ix, stride in zip(np.unravel_index(flat, tuple(shape)), strides_a):
            sample += ix.astype(np.int64) * stride
    return np.concatenate([shown, sample])


class IndexCache:
    """Device index tensors of sections, by (shape, strides, plan), uploaded once and kept on the device."""

    def __init__(self) -> None:
        self._found: dict[tuple, Any] = {}
        self._bytes = 0  # the device memory the kept indices take
        self._keep: list[Any] = []  # the sources of the last uploads, which may still be in flight

    def get(self, device: Any, plan: SectionPlan, shape: tuple, strides: tuple,
            runs: tuple[int, int, int], sample_n: int) -> tuple[Any, int]:
        """The index of a section's shown values and sample on this device (made on the first frame), and
        how many storage elements the tensor spans (span_of)."""
        key = (device, shape, strides, id(plan), sample_n)
        found = self._found.get(key)
        if found is not None and found[0]() is plan:
            return found[1], found[2]
        span = span_of(shape, strides)
        offsets = storage_offsets(plan, shape, strides, runs, sample_n)
        if span <= 2**31:  # (index_select takes int32 positions: half the device memory)
            offsets = offsets.astype(np.int32)
        if len(self._found) >= INDEX_CACHE_SIZE or self._bytes + offsets.nbytes > INDEX_CACHE_BYTES:
            self._found.clear()
            self._bytes = 0
        index, host = upload(offsets, device)
        if device.type != "cpu":  # (MPS and XPU may read pageable memory after the call returns too)
            self._keep = self._keep[-64:] + [host]
        # (the plan by weak reference: its own arrays can be a megabyte, and plans come and go with the
        # shapes of activations; its cache keeps it while it is in use)
        self._found[key] = (weakref.ref(plan), index, span)
        self._bytes += offsets.nbytes
        return index, span


INDEXES = IndexCache()


def upload(values: np.ndarray, device: Any) -> tuple[Any, Any]:
    """An array (indices) on a device, copied without blocking: from pinned memory on CUDA, since from
    pageable memory the copy would synchronize the current stream; and the host tensor it is copied
    from, which the caller keeps as long as the copy may be in flight."""
    import torch

    host = torch.from_numpy(values)
    if device.type == "cuda":
        host = host.pin_memory()
    return host.to(device, non_blocking=True), host


@functools.cache
def _selectable_dtypes() -> frozenset:
    """The dtypes index_select has a kernel for on every device (made on first use: torch loads late)."""
    import torch

    return frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64,
                      torch.complex128, torch.bool, torch.int8, torch.uint8, torch.int16, torch.int32,
                      torch.int64})


@functools.cache
def shown_dtypes() -> frozenset:
    """The dtypes a frame shows, gathered (a batch) and converted to float32: a tensor of another (the
    quantized and bit types, sub-byte integers, float4) would fail the whole batch; its section says why."""
    import torch

    more = [torch.uint16, torch.uint32, torch.uint64, torch.complex32]
    more += [getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                                               "float8_e5m2fnuz", "float8_e8m0fnu") if hasattr(torch, name)]
    return _selectable_dtypes() | frozenset(more)


def index_select(t: Any, dim: int, index: Any) -> Any:
    """torch.index_select for a tensor of any dtype, in that dtype: one it has no kernel for (uint16,
    uint32, uint64 anywhere; the float8 types and complex32 on some devices) is read as the signed
    integers of its width (a view: nothing is copied or converted), then viewed back."""
    import torch

    dtype = t.dtype
    if dtype in _selectable_dtypes():
        return torch.index_select(t, dim, index)
    signed = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]
    return torch.index_select(t.view(signed), dim, index).view(dtype)


def part_dtype(t: Any) -> Any:
    """The dtype of a tensor's part as section_part gathers it: its own; for a complex tensor, its
    magnitude's; float32 for a dtype index_select has no kernel for."""
    torch = sys.modules["torch"]
    dtype = t.dtype
    if dtype not in _selectable_dtypes():
        return torch.float32
    if dtype.is_complex:
        return torch.float64 if dtype == torch.complex128 else torch.float32
    return dtype


def section_part(t: Any, plan: SectionPlan, runs: tuple[int, int, int], sample_n: int,
                 found: tuple[Any, int] | None = None) -> Any:
    """One launch: a tensor's shown values and sample, side by side, on its device, in its own dtype (or,
    for a dtype torch.cat cannot promote to float32 (uint16, uint32, uint64), in float32: one launch more)
    (``found``: its index and span, when the caller has them from INDEXES already)."""
    import torch

    complex_values = t.is_complex()
    if complex_values and t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    index, span = found or INDEXES.get(t.device, plan, t.shape, t.stride(), runs, sample_n)
    flat = t.as_strided((span,), (1,), t.storage_offset())
    if t.dtype in _selectable_dtypes():  # (the usual case: one look-up, one launch)
        part = torch.index_select(flat, 0, index)
        return part.abs() if complex_values else part
    part = index_select(flat, 0, index)
    if complex_values:  # complex32: its magnitude taken in complex64 (abs of ComplexHalf is not everywhere)
        return part.to(torch.complex64).abs()
    return part.to(torch.float32)


class SideCopy:
    """A frame's copy to the host, issued by the first ``synchronize()`` (on the worker), which then
    waits for it: the batch's ``Pending`` and the timeline's figures riding in the copy share one."""

    def __init__(self, issue: Any) -> None:
        self._issue = issue  # issues the copy; returns the event after it, or None when it is done
        self._lock = threading.Lock()
        self._issued = False
        self._event: Any = None
        self._error: BaseException | None = None

    def synchronize(self) -> None:
        """Issue the copy (once), then block until it is done; raises, to every caller, what issuing it
        raised (the host buffer then holds no such copy, and nobody may read it as one)."""
        with self._lock:
            if not self._issued:
                self._issued = True
                try:
                    self._event = self._issue()
                except BaseException as exc:
                    self._error = exc
        if self._error is not None:
            raise self._error
        if self._event is not None:
            self._event.synchronize()


@dataclass
class Pending:
    """A batch's copy to the host, in flight: ``wait()`` (on the worker) returns the host buffer."""

    host: np.ndarray  # float32: the frame's shown values (value_count), then its samples
    sections: list[int]  # which sections of the frame this batch holds
    event: Any = None  # what wait() synchronizes: a SideCopy, or an event recorded after the copy
    window: Any = None  # the variance window kept on the device that this batch's values went into

    def wait(self) -> np.ndarray:
        """Block until the copy is done, then the host buffer."""
        if self.event is not None:
            self.event.synchronize()
        return self.host


@dataclass
class PackedLayout:
    """Where a set of sections' parts lie in a DeviceGather's packed buffer (DeviceGather._permutation)."""

    key: tuple  # (the sections, the parts' dtypes) it was made for
    perm: Any  # device index: for each position of the frame's order, its position in ``packed``
    packed: Any  # the packed buffer's part the parts fill
    groups: list  # per dtype: (the parts' positions, their part of ``packed``, a buffer of the dtype or None)
    host: Any  # the host array ``perm`` was copied from (kept as long as the copy may be in flight)


class DeviceGather:
    """The reused buffers, streams and CUDA graph that gather one frame plan's sections on one device."""

    def __init__(self, device: Any, plan: Any) -> None:
        import torch

        self.device = device
        self.plan = plan
        total = plan.value_count + plan.sample_count
        self.total = total
        self.cuda = device.type == "cuda"
        self.packed = torch.empty(total, dtype=torch.float32, device=device)
        # the frame's values, then room for the timeline's figures of its sections (extra), so that one
        # copy brings both: per section a norm and a flag value (float32) and a step (int64), aligned
        tail = 4 * len(plan.plans) + 2
        self.out = torch.empty(total + tail, dtype=torch.float32, device=device)
        self.ordered = self.out[:total]
        self.host_tensor = torch.empty(total + tail, dtype=torch.float32, pin_memory=self.cuda)
        self.host = self.host_tensor.numpy()
        # (exact_pass._Exact, its queued entries for this device): copied back with the next launch
        self.extra: tuple | None = None
        self.window: FlatWindow | None = None  # the variance window, when it is kept on the device
        self.variance = False  # whether the next launch applies it (use_variance, per frame)
        self._layout: PackedLayout | None = None  # where the last set of sections' parts lie (_permutation)
        self._graph: Any = None
        self._graph_holds: list | None = None  # what the graph reads besides the frame's tensors (_capture)
        self._graph_key: tuple | None = None
        self._last_key: tuple | None = None
        self._graph_failed = False
        self.graphs = self.cuda or CPU_GRAPHS  # whether frames of unmoved storage are captured and replayed
        if self.cuda:
            self.stream = side_streams(device)[0]
            self.gathered = torch.cuda.Event()
            self.copied = torch.cuda.Event(blocking=True)  # (the worker sleeps on it, not spinning a core)

    def launch(self, entries: list[tuple[int, Any]]) -> Pending:
        """Issue the gather of these (section, tensor or captured part) entries and the copy; never waits."""
        return self.launch_sections([i for i, _ in entries], [obj for _, obj in entries])

    def use_variance(self, settings: Any) -> bool:
        """Whether this batch (all of a frame's sections) computes the variance window on the device
        (in variance mode, when it fits in device memory); sets ``variance`` for the next launch."""
        self.variance = False
        if settings.mode != "variance":
            self.window = None
            return False
        size = host_window_size(settings.window_size, self.plan.value_count)  # (the host's: the same frames)
        if self.window is None:
            if not window_fits(self.device, size, self.plan.value_count):
                return False
            self.window = FlatWindow(size, self.plan.value_count, TorchOps(self.device))
        self.window.resize(size)
        self.variance = True
        return True

    def replay(self, sections: tuple[int, ...], tensors: list[Any]) -> Pending | None:
        """The frame again from the captured graph when these tensors are where it reads (else None).

        Nothing runs on the tensors themselves (their storage is read by the
        graph's kernels), so parameters need no detach here.
        """
        if self._graph is None or (sections, storage_keys(tensors)) != self._graph_key:
            return None
        self._graph.replay()
        return self._copy(list(sections))

    def launch_sections(self, sections: list[int], sources: list[Any]) -> Pending:
        """launch() with the sections and their tensors (or captured parts) as two lists."""
        if type(sources[0]) is Captured and all(type(obj) is Captured for obj in sources):
            self._gather(sections, sources)  # a hook's parts: new every frame, never a graph
            self._last_key = None
            return self._copy(sections)
        tensors_only = not any(type(obj) is Captured for obj in sources)
        parts = sources if tensors_only else [obj.part if type(obj) is Captured else obj for obj in sources]
        key = (tuple(sections), storage_keys(parts))
        if self._graph is not None and key == self._graph_key:
            self._graph.replay()
        elif self.graphs and tensors_only and not self._graph_failed and key == self._last_key:
            self._capture(sections, sources, key)
            if self._graph is not None:
                self._graph.replay()
            else:
                self._gather(sections, sources)
        else:
            self._gather(sections, sources)
        self._last_key = key
        return self._copy(sections)

    def _copy(self, sections: list[int]) -> Pending:
        """The frame's copy to pinned host memory, ordered after the current stream's work: on the
        training thread only the timeline's figures are laid after the values (``_pack``) and an event
        recorded; the rest is issued by the worker when it waits (``_to_host``).
        """
        import torch

        extra, self.extra = self.extra, None
        count, placed = self._pack(extra) if extra is not None else (self.total, [])
        window = self.window if self.variance else None
        if self.cuda:
            self.gathered.record(torch.cuda.current_stream(self.device))
        copy = SideCopy(lambda: self._to_host(count, window))
        self._hand_back(extra, placed, copy)
        return Pending(self.host[: self.total], sections, copy, window)

    def _to_host(self, count: int, window: FlatWindow | None) -> Any:
        """On the worker: the variance window's step (in variance mode: the shown values become their
        variance over the window) and the copy of ``count`` values to the host, on the side stream after
        the frame's gather; the event after them (None: done, on the CPU).

        Issued here, they cost the training thread nothing: update() issues
        no next frame before the worker is done with this one, so nothing
        of the device buffers or the window is touched meanwhile.
        """
        values = self.ordered[: self.plan.value_count]
        if not self.cuda:
            if window is not None:
                window.push(values, values)
            self.host_tensor[:count].copy_(self.out[:count])
            return None
        import torch

        with side_lock(self.device), torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            self.stream.wait_event(self.gathered)
            if window is not None:
                window.push(values, values)
            self.host_tensor[:count].copy_(self.out[:count], non_blocking=True)
            self.copied.record(self.stream)
        return self.copied

    def _pack(self, extra: tuple) -> tuple[int, list]:
        """Lay the queued figures after the frame's values on the device (one cat): how many values the
        copy then takes, and where each figure lies ((start, count, dtype) per tensor, per entry).

        int64 tensors (steps) go first, as pairs of float32 words from an even position, so that the
        host reads them back as int64 from its copy; nothing is converted. Figures of another dtype, or
        more than the room left, stay queued (they are copied on their own).
        """
        import torch

        _, entries = extra
        allowed = (torch.float32, torch.int64)
        fits = [e for e in entries if all(v.dtype in allowed and v.dim() == 1 and v.is_contiguous()
                                          for v in e[2])]
        start = self.total + self.total % 2
        words = sum(v.numel() * (2 if v.dtype == torch.int64 else 1) for e in fits for v in e[2])
        if not fits or start + words > self.out.numel():
            return self.total, []
        at, parts, wide, narrow = start, [], [], []
        for e in fits:
            for v in e[2]:
                (wide if v.dtype == torch.int64 else narrow).append(v)
        where: dict[int, tuple[int, int, Any]] = {}
        for v in wide + narrow:
            n = v.numel() * (2 if v.dtype == torch.int64 else 1)
            where[id(v)] = (at, n, v.dtype)
            parts.append(v.view(torch.float32) if v.dtype == torch.int64 else v)
            at += n
        torch.cat(parts, out=self.out[start:at])
        placed = [(e, [where[id(v)] for v in e[2]]) for e in fits]
        return at, placed

    def _hand_back(self, extra: tuple | None, placed: list, event: Any) -> None:
        """Tell the exact pass where its figures arrive (host views of this copy, and its event); what
        was not packed goes back on its queue."""
        if extra is None:
            return
        exact, entries = extra
        import torch

        host = self.host_tensor
        for entry, spots in placed:
            views = [host[a : a + n].view(torch.int64) if dtype == torch.int64 else host[a : a + n]
                     for a, n, dtype in spots]
            exact.device.append((entry[1], views, event, entry[3]))
        done = {id(entry) for entry, _ in placed}
        exact.queued.extend(e for e in entries if id(e) not in done)

    def _gather(self, sections: list[int], sources: list[Any], found: list | None = None,
                order: PackedLayout | None = None) -> None:
        """The launches: a part per section, one cat per dtype of the parts (into the float32 buffer, or
        into one of their dtype, then one conversion), one permutation into the frame's order (a
        capture's own, looked up before it: ``found``, the tensors' indices and spans; ``order``, the
        packed layout)."""
        import torch

        plan = self.plan
        parts = []
        for k, (i, obj) in enumerate(zip(sections, sources)):
            if type(obj) is Captured:
                parts.append(obj.part)
            else:
                runs = plan.sample_steps[i]
                n = int(plan.sample_offsets[i + 1] - plan.sample_offsets[i])
                parts.append(section_part(obj, plan.plans[i], runs, n, found and found[k]))
        dtypes = tuple(part.dtype for part in parts)
        layout = order or self._permutation(sections, dtypes)
        if layout.key[1] != dtypes:  # (part_dtype foresaw another: the capture fails, frames run eagerly)
            raise RuntimeError("the frame's parts are not of the dtypes its capture was laid out for")
        for positions, into, staging in layout.groups:
            chosen = [parts[k] for k in positions]
            if staging is not None:  # parts of another dtype than float32: one cat in it, one conversion
                torch.cat(chosen, out=staging)
                into.copy_(staging)
            elif len(chosen) == 1:
                into.copy_(chosen[0])
            else:  # float32 parts
                torch.cat(chosen, out=into)
        torch.index_select(layout.packed, 0, layout.perm, out=self.ordered)

    def _permutation(self, sections: list[int], dtypes: tuple) -> PackedLayout:
        """Where the parts of these sections (of these dtypes) lie in the packed buffer, one dtype after
        another, and where each value of the frame's order sits there (made once per set of sections).

        ``torch.cat`` into an output of another dtype converts each input
        with a kernel of its own (on CUDA as on the CPU): the parts of a
        dtype other than float32 are laid end to end in a buffer of their
        dtype (one cat) and converted into the packed buffer by one copy,
        which rounds each value as the cat's own conversion does. Positions
        of sections not in this batch read position 0: the host side takes
        only its own sections' values from the buffer.
        """
        import torch

        key = (tuple(sections), dtypes)
        layout = self._layout
        if layout is not None and layout.key == key:
            return layout
        plan = self.plan
        by_dtype: dict[Any, list[int]] = {}
        for k, dtype in enumerate(dtypes):
            by_dtype.setdefault(dtype, []).append(k)
        counts = [int(plan.sizes[i] + plan.sample_offsets[i + 1] - plan.sample_offsets[i]) for i in sections]
        where = [0] * len(sections)
        groups, at = [], 0
        for dtype, positions in by_dtype.items():
            start = at
            for k in positions:
                where[k] = at
                at += counts[k]
            staging = None
            if dtype != torch.float32 and len(positions) > 1:
                staging = torch.empty(at - start, dtype=dtype, device=self.device)
            groups.append((positions, self.packed[start:at], staging))
        perm = np.zeros(self.total, np.int32)  # (index_select takes int32 positions)
        for k, i in enumerate(sections):
            shown, start, base = int(plan.sizes[i]), int(plan.offsets[i]), where[k]
            s0, s1 = int(plan.sample_offsets[i]), int(plan.sample_offsets[i + 1])
            perm[start : start + shown] = np.arange(base, base + shown)
            sample = plan.value_count + s0
            perm[sample : sample + s1 - s0] = np.arange(base + shown, base + shown + s1 - s0)
        index, host = upload(perm, self.device)
        self._layout = PackedLayout(key, index, self.packed[:at], groups, host)
        return self._layout

    def _capture(self, sections: list[int], sources: list[Any], key: tuple) -> None:
        """Capture this frame's gathers as a CUDA graph (its storage did not move since the last frame).

        The graph reads the permutation, the buffers its parts of dtypes other
        than float32 are laid in, and the sections' index tensors where they
        lie now, and holds none of them: the gatherer holds them as long as
        the graph (the index cache may let them go, and another set of
        sections replaces the layout).
        """
        plan = self.plan
        # made (and uploaded) before the capture, indices too
        order = self._permutation(sections, tuple(part_dtype(obj) for obj in sources))
        found = [INDEXES.get(obj.device, plan.plans[i], tuple(obj.shape), obj.stride(), plan.sample_steps[i],
                             int(plan.sample_offsets[i + 1] - plan.sample_offsets[i]))
                 for i, obj in zip(sections, sources)]
        held = [order.perm] + [staging for _, _, staging in order.groups if staging is not None]
        held += [index for index, _ in found]
        self._graph = self._graph_holds = None
        try:
            self._graph, _ = capture(lambda tensors: self._gather(sections, tensors, found, order), sources,
                                     self.stream if self.cuda else None, "frame")
        except Exception:  # capture refused (an unusual tensor, another capture running): launch eagerly
            self._graph_failed = True
            self._graph = None
            return
        self._graph_key, self._graph_holds = key, held


def capture(run: Any, tensors: list[Any], stream: Any, name: str) -> tuple[Any, Any]:
    """``run(tensors)`` captured once, to be replayed on the memory those tensors occupy: a CUDA graph
    captured on ``stream`` (a side stream of their device), or on CPU tensors (``CPU_GRAPHS``) an
    AddressReplay named ``name``; and what ``run`` returned (a graph's own output tensors, which each
    replay overwrites). Raises when CUDA refuses the capture."""
    if stream is None:
        replay = AddressReplay(run, tensors, name)
        return replay, replay.result
    import torch

    graph = torch.cuda.CUDAGraph()
    current = torch.cuda.current_stream(stream.device)
    with side_lock(stream.device):  # (no worker issues on the side streams meanwhile)
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                result = run(tensors)
            finally:
                graph.capture_end()
        current.wait_stream(stream)
    return graph, result


class AddressReplay:
    """A CUDA graph's behaviour on CPU tensors (``CPU_GRAPHS``, for tests): ``replay()`` runs the captured
    function again on the memory the captured tensors occupied, read with their shape, strides and
    dtype, whatever tensor lies there now; like a graph, it holds none of them. ``result`` is what the
    capture's run returned (a tensor, or a list or tuple of them), overwritten in place by each replay
    as a graph's outputs are, so that a caller still holding an earlier replay's figures reads the new
    ones, as it would on CUDA; ``name`` says what it runs (tests count replays).

    A graph also reads the other tensors its kernels were given at capture
    (index tensors, buffers), from where they lay then, holding none of
    them: a replay after one was freed reads memory that is no longer its
    own (garbage, or an out-of-range index that kills the CUDA context).
    Here each replay raises instead (``_reads``).
    """

    def __init__(self, run: Any, tensors: list[Any], name: str) -> None:
        self.name = name
        self._run = run
        self._views = [(t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, t.is_conj(), t.is_neg())
                       for t in tensors]
        reads = _reads(tensors)
        with reads:
            self.result = run(tensors)
        self.reads = dict(reads.outside)  # address -> weak reference: each storage read but ``tensors``

    def replay(self) -> None:
        """The captured function again, on the captured addresses; raises when a tensor it read at capture
        (other than those it replays on) has been freed since."""
        import ctypes

        import torch

        if any(ref.expired() for ref in self.reads.values()):
            raise RuntimeError(f"the captured {self.name} reads a tensor freed since its capture")

        tensors = []
        for address, shape, strides, dtype, conj, neg in self._views:
            count = span_of(shape, strides)
            memory = (ctypes.c_char * (count * dtype.itemsize)).from_address(address)
            t = torch.frombuffer(memory, dtype=dtype, count=count).as_strided(shape, strides)
            t = t.conj() if conj else t
            tensors.append(torch._neg_view(t) if neg else t)
        _overwrite(self.result, self._run(tensors))


def _reads(given: list[Any]) -> Any:
    """A dispatch mode noting what a capture's run reads besides ``given`` (``outside``): AddressReplay's."""
    if not _READS:
        _READS.append(_reads_class())
    return _READS[0](given)


_READS: list[type] = []  # the class, made when first used (it subclasses a torch class)


def _reads_class() -> type:
    """The dispatch mode _reads() makes (defined once torch is loaded)."""
    import torch
    from torch.multiprocessing.reductions import StorageWeakRef
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    # what a CUDA graph cannot capture: a value read back on the host, an output sized by the values
    unsupported = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
                   torch.ops.aten.masked_select.default, torch.ops.aten._unique2.default}

    class Reads(TorchDispatchMode):
        """Notes, while a capture runs, the storage of every tensor its operations read that it did not make
        and was not given to replay on (``outside``: weak references, by address); raises, as CUDA's
        capture does, at an operation a graph cannot hold."""

        def __init__(self, given: list[Any]) -> None:
            super().__init__()
            self.given = {t.untyped_storage().data_ptr() for t in given}
            self.made: set[int] = set()
            self.outside: dict[int, Any] = {}

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if func in unsupported:
                raise RuntimeError(f"{func} cannot be captured in a CUDA graph")
            kwargs = kwargs or {}
            for t in tree_leaves((args, kwargs)):
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    at = storage.data_ptr()
                    if at and at not in self.given and at not in self.made and at not in self.outside:
                        self.outside[at] = StorageWeakRef(storage)
            out = func(*args, **kwargs)
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.made.add(t.untyped_storage().data_ptr())
            return out

    return Reads


def _overwrite(kept: Any, new: Any) -> None:
    """Copy a replay's outputs into the capture's (a tensor, or a list or tuple of them), in place."""
    if isinstance(kept, (list, tuple)):
        for k, n in zip(kept, new):
            _overwrite(k, n)
    elif kept is not None:
        kept.copy_(new)


def storage_keys(tensors: list[Any]) -> tuple[list, ...]:
    """What a CUDA graph reading these tensors depends on: where each one's first value is, its shape,
    strides and dtype (a step's new gradients may land where the last ones were, in another dtype), and
    its negative bit (``z.conj().imag`` is ``z.imag``'s memory, read negated by the captured kernels).

    Lists rather than a tuple per tensor: a fifth less time for the
    214 of a ResNet-50, looked at by every frame and by every step's check
    of gradients.
    """
    return ([t.data_ptr() for t in tensors], [t.shape for t in tensors], [t.stride() for t in tensors],
            [t.dtype for t in tensors], [t.is_neg() for t in tensors])


class TorchOps:
    """views.render.FlatWindow's buffers and operations on a torch device: the variance window kept there.

    The same float32 operations in the same order as the host's (HostOps),
    one kernel each, so the variance is the host's bit for bit; only the
    variance crosses to the host. It costs (window + 7) x values x 4 bytes of
    device memory, so it is used only within DEVICE_WINDOW_SHARE of the device's.
    """

    def __init__(self, device: Any) -> None:
        import torch

        self.device = device
        self.subtract, self.add, self.multiply = torch.subtract, torch.add, torch.multiply

    def zeros(self, count: int) -> Any:
        """A new device buffer of count zeros."""
        import torch

        return torch.zeros(count, dtype=torch.float32, device=self.device)

    @staticmethod
    def copy(dst: Any, src: Any) -> None:
        """dst[...] = src, on the device."""
        dst.copy_(src)

    @staticmethod
    def zero(x: Any) -> None:
        """x[...] = 0."""
        x.zero_()

    @staticmethod
    def clamp0(x: Any) -> None:
        """x = max(x, 0) in place (NaN stays NaN)."""
        x.clamp_min_(0.0)

    @staticmethod
    def scalar(value: float) -> float:
        """The float32 value as a Python float (torch multiplies a float32 tensor in float32)."""
        return float(np.float32(value))

    @staticmethod
    def quiet() -> Any:
        """Nothing to silence: torch does not warn about non-finite values."""
        return contextlib.nullcontext()


# Device memory the variance window may take, as a share of the device's (else it is kept on the host).
DEVICE_WINDOW_SHARE = 0.01


def window_fits(device: Any, size: int, count: int) -> bool:
    """Whether a variance window of this length and values fits in DEVICE_WINDOW_SHARE of the device."""
    if device.type != "cuda":
        return True  # CPU tensors (the tests): host memory, as the host window's
    import torch

    total = torch.cuda.get_device_properties(device).total_memory
    return (size + 7) * count * 4 <= DEVICE_WINDOW_SHARE * total
