"""The timeline's exact figures: whole-array norms and non-finite counts, and the per-step device check."""

from __future__ import annotations

import math
import operator
import sys
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from beholder_plugin.trainer.sources.captured import Captured

# On the host (NumPy, CPU tensors) the exact pass reads at most this many values per frame on average
# (about 0.1 ms a frame; at 1 << 20 it alone cost MobileNetV2's frames 4-5 % more CPU, timeline_bench.py).
HOST_EXACT_VALUES = 1 << 18

# What an entry of the figures to read back holds besides norms (its last field): nothing more; the per-step
# check's flags too; or norms taken by hooks, which stand over any other norm of the same sections (a
# gradient copied as the backward pass left it, read again at update() after the loop clipped it in place).
NORMS, CHECKED, HOOKED = 0, 1, 2


class _Exact:
    """What the exact pass found for one frame: per section norm and non-finite count, maybe on the device."""

    def __init__(self, count: int) -> None:
        self.norm = np.full(count, np.nan)
        self.nonfinite = np.full(count, np.nan)
        self.exact = np.zeros(count, bool)
        self.step_first = np.full(count, -1, np.int64)  # the per-step check's first non-finite step
        self.step_value = np.full(count, np.nan)  # the norm it found then (NaN or inf)
        self.step_checked = np.zeros(count, bool)
        self.device: list[tuple] = []  # (sections, host tensors, event or None, NORMS/CHECKED/HOOKED)
        # (device, sections, device tensors, NORMS/CHECKED/HOOKED) not copied yet: the frame's own copy
        # takes them (torch_batch.DeviceGather.extra), the rest are copied on their own (copy_back_rest)
        self.queued: list[tuple] = []

    def take(self, device: Any) -> list[tuple]:
        """The queued figures of one device, taken off the queue (to ride with the frame's copy)."""
        taken = [entry for entry in self.queued if entry[0] == device]
        if taken:
            self.queued = [entry for entry in self.queued if entry[0] != device]
        return taken

    def copy_back_rest(self) -> None:
        """Copy back the queued figures no frame copy took (each device's in a copy of its own)."""
        if self.queued:
            torch = sys.modules["torch"]
            for device, sections, values, kind in self.queued:
                self.device.append((sections, *_copied_back(torch, device, values), kind))
            self.queued = []

    def resolve(self) -> None:
        """Wait for the device's copies (the worker) and put them in place (the hooks' norms last)."""
        for sections, host, event, kind in sorted(self.device, key=lambda entry: entry[3] == HOOKED):
            if event is not None:
                event.synchronize()
            norms = host[0].numpy().astype(np.float64)
            self.norm[sections] = norms
            self.exact[sections] = True
            finite = np.isfinite(norms)
            self.nonfinite[sections] = np.where(finite, 0.0, np.nan)
            if kind == CHECKED:
                self.step_first[sections] = host[1].numpy()
                self.step_value[sections] = host[2].numpy()
                self.step_checked[sections] = True
        self.device = []


class StepCheck:
    """The per-step check of one device's tensors: the first non-finite step per section, kept there."""

    def __init__(self, torch: Any, sections: list[int], tensors: list[Any], params: list[Any],
                 names: list[Any] | None = None) -> None:
        device = tensors[0].device
        self.device = device
        self.sections = sections
        self.names = names  # the sections' (values, name) (what carry() matches)
        # gradients: the parameter whose .grad is read at each check (a step may replace it), else None;
        # no gradient is held here between steps (a step's gradients are freed as usual)
        self.params = params if any(p is not None for p in params) else None
        self.tensors = [t if p is None else None for t, p in zip(tensors, params)]
        # the held tensors' storages, kept with the size each needs: a look at each one's size before an
        # eager run costs half
        held = tensors if self.params is None else []
        self._storages = [(t.untyped_storage(), needed_bytes(t)) for t in held]
        # what stands for a gradient a step did not make: a zero of its parameter's dtype (so that it
        # stays in its parameter's norm group)
        zeros = {t.dtype: torch.zeros((), dtype=t.dtype, device=device) for t in tensors}
        self.zeros = [zeros[t.dtype] for t in tensors]
        # gradients have their parameters' dtype and layout (torch's gradient layout contract)
        self.groups = norm_groups(tensors)
        self.order, self._order_source = group_order(self.groups, device)
        self.first = torch.full((len(tensors),), -1, dtype=torch.int64, device=device)
        self.value = torch.zeros(len(tensors), dtype=torch.float32, device=device)
        self.step_now = torch.zeros((), dtype=torch.int64, device=device)  # the step being checked
        self.torch = torch
        self.norms: Any = None  # the last check's norms, and its step: a frame at that step reuses them
        self.norms_step: int | None = None
        # the check captured as a CUDA graph (on CPU tensors with torch_batch.CPU_GRAPHS, for tests), and
        # where the tensors it reads lay; replayed while they lie there
        batch = _torch_batch()
        self._replays = device.type == "cuda" or batch.CPU_GRAPHS
        self._stream = batch.side_streams(device)[1] if device.type == "cuda" else None
        self._graph: Any = None
        self._graph_norms: Any = None  # the graph's own output, which each replay overwrites
        self._graph_key: tuple | None = None
        self._last_key: tuple | None = None

    def carry(self, old: StepCheck) -> None:
        """Take over what an older check of this device found for the sections both hold (by values and
        name: a weights check takes nothing from a gradients check of the same sections): a
        check is rebuilt when a tensor moved (``.data`` replaced, ``model.to()``), and the steps it
        had flagged since the last frame would otherwise be reported only to the frame's precision."""
        if self.names is None or old.names is None:
            return
        where = {name: k for k, name in enumerate(old.names)}
        pairs = [(k, where[name]) for k, name in enumerate(self.names) if name in where]
        if not pairs:
            return
        (new, was), self._carry_source = _torch_batch().upload(np.array(pairs, np.int64).T.copy(),
                                                               self.device)
        self.first.index_copy_(0, new, old.first.index_select(0, was))
        self.value.index_copy_(0, new, old.value.index_select(0, was))

    def current(self) -> list[Any]:
        """The tensors as they are now (the gradients' current .grad)."""
        if self.params is None:
            return self.tensors
        return [t if p is None else (p.grad if p.grad is not None else zero)
                for t, p, zero in zip(self.tensors, self.params, self.zeros)]

    def check(self, step: int) -> None:
        """Queue the check of this step (no host sync): the captured graph replayed when the tensors lie
        where it reads them, else its operations one by one (captured when they lay there twice running);
        none while a CUDA graph of the caller's is being captured (the step goes unchecked).

        Replayed, the check costs two launches (and, for gradients, a look at
        where each lies), where its operations cost the fused norm pass's
        Python object per tensor, and a launch each, at every step.
        """
        batch = _torch_batch()
        if batch.capturing(self.step_now):
            # update() inside the caller's CUDA graph capture: a check issued there would break the
            # capture, or be replayed with the graph at this step's number
            return
        tensors = self.current()
        if not all(storage.nbytes() >= needed for storage, needed in self._storages):
            # (read, eagerly or by a replayed graph, torch would crash the process or read freed memory:
            # on_step turns the check off and says so)
            raise RuntimeError("a tensor the per-step check reads has had its memory freed (its storage "
                               "resized to nothing, as FSDP does to a gathered parameter after forward, "
                               "or shrunk below the tensor)")
        self.step_now.fill_(step)  # (a launch: the step is the kernel's argument, nothing is copied)
        self.norms_step = step
        if self._replays:
            # (the tensors the check holds, detached when it was made, never move; gradients are each
            # step's .grad, which may lie elsewhere)
            key = () if self.params is None else batch.storage_keys(tensors)
            if self._graph is not None and key == self._graph_key:
                self._graph.replay()  # (its own outputs overwritten in place: the norms of this step)
                self.norms = self._graph_norms  # (not the last eager run's, when the tensors lay elsewhere)
                return
            if key == self._last_key:
                self._graph = None
                try:
                    self._graph, self._graph_norms = batch.capture(self._run, tensors, self._stream, "check")
                except Exception:  # capture refused: the operations one by one from now on
                    self._replays = False
                else:
                    self._graph_key = key
                    self.norms = self._graph_norms
                    if self._stream is not None:
                        self._graph.replay()  # (the capture recorded the kernels without running them)
                    return
            self._last_key = key
        self.norms = self._run(tensors)

    def _run(self, tensors: list[Any]) -> Any:
        """The check's operations on these tensors, at the step in ``step_now``: their norms."""
        torch = self.torch
        norms = _norms(torch, tensors, self.groups, self.order)
        # a section's first non-finite norm: not yet flagged (True) and not finite (False); a norm is
        # finite exactly when it is below inf (NaN compares False): three launches (isfinite alone is four)
        new = torch.gt(self.first < 0, norms < math.inf)
        torch.where(new, self.step_now, self.first, out=self.first)
        torch.where(new, norms, self.value, out=self.value)
        return norms


def norm_groups(tensors: list[Any]) -> list[list[int]] | None:
    """The tensors' positions split into the lists one fused norm pass takes on a GPU (None: all in one).

    torch's ``_foreach_norm`` runs its fused kernels only on a list of one
    dtype whose tensors are each non-overlapping and dense; one other tensor
    (a bf16 weight among float32 ones, a strided view) sends the whole list
    down its slow path, a norm and a launch or more per tensor, at every step.
    """
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.dtype, dense(t)), []).append(i)
    return list(groups.values()) if len(groups) > 1 else None


def dense(t: Any) -> bool:
    """Whether a tensor's values fill its memory span exactly once, in some order of its axes (torch's
    "non-overlapping and dense": contiguous, channels-last and transposed tensors are)."""
    expected = 1
    for stride, size in sorted((st, n) for st, n in zip(t.stride(), t.shape) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def freed(t: Any) -> bool:
    """Whether a torch tensor has values its memory no longer holds (its storage resized to nothing, as
    FSDP does to a gathered parameter after forward, or shrunk below its span): reading it would crash
    the process, or read memory that is no longer its own."""
    try:
        have = t.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError, TypeError):  # no storage of its own (sparse, a subclass)
        return False
    return t.numel() > 0 and have < needed_bytes(t)


def needed_bytes(t: Any) -> int:
    """How many bytes of its storage a strided torch tensor (with values) reaches: up to its last one."""
    reach = t.numel() if t.is_contiguous() else span_of(t.shape, t.stride())
    return (t.storage_offset() + reach) * t.element_size()


def span_of(shape: Sequence[int], strides: Sequence[int]) -> int:
    """How many storage elements a tensor of this shape and strides reaches from its first one:
    one more than the sum of (size - 1) * stride."""
    return 1 + sum(map(operator.mul, shape, strides)) - sum(strides)


def group_order(groups: list[list[int]] | None, device: Any) -> tuple[Any, Any]:
    """Where each tensor's norm lies in the norm groups' vectors laid end to end (an index on the
    device, made once per check; None for one group), and the host tensor it is copied from.

    The copy does not block (``torch_batch.upload``): the caller keeps the
    source as long as the index.
    """
    if groups is None:
        return None, None
    order = np.empty(sum(map(len, groups)), np.int64)
    order[[i for group in groups for i in group]] = np.arange(order.size)
    return _torch_batch().upload(order, device)


def _norms(torch: Any, tensors: list[Any], groups: list[list[int]] | None = None, order: Any = None) -> Any:
    """The L2 norms of tensors as one float32 vector on their device: one fused pass per norm group
    (``norm_groups``: None is one group), put back in the tensors' order (by ``group_order`` when
    given, else one stack), then one conversion from float64 (_fused_norms)."""
    if groups is None:
        vector = _vector(torch, _fused_norms(torch, tensors))
    elif order is not None:
        vectors = [_vector(torch, _fused_norms(torch, [tensors[i] for i in group])) for group in groups]
        vector = torch.cat(vectors).index_select(0, order)
    else:
        parts: list[Any] = [None] * len(tensors)
        for group in groups:
            for i, part in zip(group, _fused_norms(torch, [tensors[i] for i in group])):
                parts[i] = part
        vector = torch.stack(parts)
    if vector.dtype == torch.float32:
        return vector
    # (copied into a new float32 vector beside it rather than .float(), whose op, _to_copy, is also
    # what a copy to the host goes through: the tests, on CPU tensors, tell them apart by the op)
    return torch.empty(vector.shape, dtype=torch.float32, device=vector.device).copy_(vector)


def spend_host_budget(credit: int, count: int) -> tuple[bool, int]:
    """One frame's share of the host budget: ``credit`` grows by HOST_EXACT_VALUES (up to what a frame of
    ``count`` values needs) and pays for the frame when it covers it; (whether it did, the credit left)."""
    credit = min(credit + HOST_EXACT_VALUES, max(count, HOST_EXACT_VALUES))
    return (True, credit - count) if count <= credit else (False, credit)


def whole_norms(tensors: list[Any], one_group: bool = False) -> Any:
    """The L2 norms of torch tensors of one device (each readable(), none requiring grad: gradients) as
    one float32 vector there: one fused pass per norm group, no host sync (``one_group``: the caller
    knows them dense and of one dtype)."""
    torch = sys.modules["torch"]
    norms = _norms(torch, tensors, None if one_group else norm_groups(tensors))
    if norms.device.type == "cpu" and not _batch_cpu():
        norms = host_norms_again(torch, tensors, norms)
    return norms


def host_norms_again(torch: Any, tensors: list[Any], norms: Any) -> Any:
    """CPU tensors' float32 norms, those that came out infinite taken again in float64 (a float64 vector
    then): finite values past about 1e19 have squares past float32's range. On the host, so the look
    costs no wait."""
    found = norms.numpy()
    if np.isfinite(found).all():
        return norms
    again = norms.double()
    for i in np.flatnonzero(np.isposinf(found)).tolist():
        again[i] = torch.linalg.vector_norm(tensors[i], dtype=torch.float64)
    return again


def readable(obj: Any) -> bool:
    """Whether obj is a torch tensor whose exact figures the exact pass can take."""
    return _torch_kind(obj) is not None


def _vector(torch: Any, parts: list[Any]) -> Any:
    """One fused pass's norms as one vector: the pass's own, when its scalars are the elements of one
    vector in order (CUDA's fused kernel returns them so), else a stack of them (one launch, and
    Python per tensor)."""
    first, last, n = parts[0], parts[-1], len(parts)
    storage = first.untyped_storage()
    if (first.storage_offset() == 0 and last.storage_offset() == n - 1 and first.dim() == 0
            and storage.nbytes() == n * first.element_size()
            and last.untyped_storage().data_ptr() == storage.data_ptr()):
        return first.as_strided((n,), (1,), 0)
    return torch.stack(parts)


def _fused_norms(torch: Any, tensors: list[Any]) -> list[Any]:
    """One _foreach_norm over tensors (a norm group: dense ones of one dtype, or one other): their L2
    norms as scalars on their device.

    A dense group on CUDA has its squares summed in float64 by the fused
    kernel, with no copy: summed in float32, finite values past about 1e19
    give an infinite norm, which the per-step check would report as an
    infinite value. Elsewhere torch would first copy each tensor to float64
    (twice its size; 40 times slower on the CPU), so the sum stays float32
    there, and the host pass takes an infinite norm of finite values again.
    """
    first = tensors[0]
    if (first.device.type == "cuda" or _batch_cpu()) and dense(first):
        try:
            return torch._foreach_norm(tensors, 2, dtype=torch.float64)
        except (TypeError, RuntimeError):  # (complex tensors: their own precision, below)
            pass
    try:
        return torch._foreach_norm(tensors, 2, dtype=torch.float32)
    except (TypeError, RuntimeError):  # (float64 and complex tensors take no float32 output)
        return torch._foreach_norm(tensors)


def device_norm(t: Any) -> Any:
    """A tensor's L2 norm on its device as a 0-d tensor, in one launch (float64 where its squares are
    summed in float64, _fused_norms': dense ones, so that finite values past 1e19 keep a finite norm)."""
    return _fused_norms(sys.modules["torch"], [t])[0]


def _torch_kind(obj: Any) -> Any:
    """torch, when obj is a floating torch tensor the exact pass can read (else None)."""
    torch = sys.modules.get("torch")
    # plain tensors only: a DTensor's norm (FSDP2) would be a collective, on the one rank that writes
    if torch is None or type(obj) not in (torch.Tensor, torch.nn.Parameter):
        return None
    if obj.layout is not torch.strided:
        return None
    if not (obj.is_floating_point() or obj.is_complex()) or obj.numel() == 0:
        return None
    # torch has no norm for the float8 types nor complex32 (a float32 copy to take one could be gigabytes)
    if obj.dtype is torch.complex32 or (obj.element_size() == 1 and obj.is_floating_point()):
        return None
    if freed(obj):
        return None
    return torch


def _numpy(torch: Any, t: Any) -> np.ndarray:
    """A CPU tensor's values as NumPy; those of a dtype NumPy lacks (bfloat16, the float8 types,
    complex32) as float32 or complex64, which hold each of them exactly."""
    t = t.resolve_conj().resolve_neg()
    if t.dtype in (torch.float32, torch.float64, torch.float16, torch.complex64, torch.complex128):
        return t.numpy()
    return t.to(torch.complex64 if t.is_complex() else torch.float32).numpy()


def _host_exact(x: np.ndarray) -> tuple[float, float]:
    """(norm, non-finite count) of a NumPy array, exactly: one pass, a second only when not finite."""
    flat = x.reshape(-1)
    kind = flat.dtype.kind
    with np.errstate(over="ignore", invalid="ignore"):  # (an overflow is seen below, and taken again)
        if kind == "f" and flat.dtype.itemsize >= 4:
            total = float(np.dot(flat, flat))
        elif kind == "c":
            total = float(np.vdot(flat, flat).real)
        else:  # (half floats, ml_dtypes' bfloat16, integers, booleans)
            flat, kind = flat.astype(np.float64), "f"
            total = float(np.dot(flat, flat))
    if np.isfinite(total):
        return float(np.sqrt(total)), 0.0
    bad = int(np.count_nonzero(~np.isfinite(flat))) if kind in "fc" else 0
    if bad == 0:  # finite values whose squares overflowed: again in float64, scaled by the largest
        wide = np.abs(flat.astype(np.complex128 if kind == "c" else np.float64))
        largest = float(wide.max())
        if not np.isfinite(largest):  # (a complex modulus past float64's range: no finite norm)
            return float("inf"), 0.0
        return largest * float(np.linalg.norm(wide / largest)), 0.0
    if np.isnan(flat).any():
        return float("nan"), float(bad)
    return float("inf"), float(bad)


class _Later:
    """A CPU array copied to NumPy only once the host budget covers it: a TensorFlow tensor or variable,
    a JAX array sharded over CPU devices."""

    __slots__ = ("obj", "size")

    def __init__(self, obj: Any, size: int) -> None:
        self.obj, self.size = obj, size

    def read(self) -> np.ndarray:
        """The values as NumPy (TF's half floats as float32)."""
        if type(self.obj).__module__.startswith("tensorflow"):
            from beholder_plugin.trainer.sources import tf_tensors

            return np.asarray(tf_tensors.whole(self.obj, "exact pass"))  # (a 0-d tensor's: a NumPy scalar)
        return np.asarray(self.obj)  # (the shards gathered into one host array)


def _other_host(obj: Any) -> Any:
    """What the host pass reads of a JAX or TensorFlow array held by the CPU (a Keras variable: of its
    backend's): a NumPy view (JAX), a _Later (TensorFlow), a torch tensor (Keras on torch: the torch
    path takes it), or None (on an accelerator, or in a batch that stands in for one; not numbers)."""
    root = type(obj).__module__.split(".", 1)[0]
    if root == "keras":
        from beholder_plugin.trainer.sources import keras_variables

        try:
            obj = keras_variables.prepare(obj, "exact pass")  # (its backend's tensor, as the frame reads it)
        except Exception:  # (an unbuilt or symbolic one: the frame says why)
            return None
        root = type(obj).__module__.split(".", 1)[0]
    if root == "torch":
        return obj
    if root in ("jax", "jaxlib"):
        from beholder_plugin.trainer.sources import jax_arrays

        view = jax_arrays.host_view(obj)
        if view is None:  # (sharded over CPU devices: gathered to the host, within the budget)
            return _Later(obj, int(obj.size)) if _on_cpus(obj) else None
        if not view.size or view.dtype.kind not in "biufcV":
            return None
        return view
    if root == "tensorflow":
        from beholder_plugin.trainer.sources import tf_batch

        dtype = getattr(obj, "dtype", None)
        flags = ("is_floating", "is_integer", "is_complex", "is_bool")
        numbers = any(getattr(dtype, flag, False) for flag in flags)
        device = getattr(obj, "device", None)
        on_cpu = isinstance(device, str) and "CPU" in device.upper() and not tf_batch.BATCH_CPU_TENSORS
        if not numbers or not on_cpu:
            return None
        size = math.prod(int(d) for d in obj.shape) if obj.shape.is_fully_defined() else 0
        return _Later(obj, size) if size else None
    return None


def _on_cpus(x: Any) -> bool:
    """Whether a JAX array of numbers is held, all of it, by this process's CPU devices (and no batch
    stands in for a device)."""
    from beholder_plugin.trainer.sources import jax_batch

    try:
        return (not jax_batch.BATCH_CPU_ARRAYS and x.size > 0 and x.is_fully_addressable
                and not x.is_deleted() and x.dtype.kind in "biufcV"
                and all(device.platform == "cpu" for device in x.sharding.device_set))
    except Exception:  # (an unusual array: the sample's figures stand)
        return False


class ExactPass:
    """The exact pass of each gathered frame and the per-step device checks it starts."""

    def __init__(self) -> None:
        self.checks: list[StepCheck] = []  # the per-step checks running now, one per device
        self._step_failed = False  # the per-step check failed once: off for the run
        self._check_key: tuple = ()
        self._credit = HOST_EXACT_VALUES
        self._again: _Again | None = None  # what lets the next frame of the same tensors skip the sorting
        # the last frame's tensors that were neither parameters nor read through one (by section, weakly):
        # a per-step check holds such tensors, so it starts only once a frame hands over the same ones again
        self._plain_before: dict[int, Any] = {}

    def stop(self) -> None:
        """Stop the per-step checks (the next frame of device tensors starts them again)."""
        self.checks, self._check_key, self._again = [], (), None

    def fail(self) -> None:
        """The per-step check failed: stop it for the run."""
        self.checks, self._check_key, self._step_failed, self._again = [], (), True, None

    def gather(self, job: Any, named: list, watch: Any) -> None:
        """Sort a frame's sections into host arrays and device tensors, run both passes (job.exact)."""
        exact = _Exact(len(named))
        job.exact = exact
        params, (from_hooks, hooked_norms) = {}, _hooked_norms(job.shown, named, watch)
        if self._again is not None and not from_hooks and self._gather_again(job, exact, named, watch):
            return
        host, devices, kept = [], {}, {}
        from_torch = None
        if job.shown == "gradients" and watch is not None and getattr(watch, "framework", None) == "torch":
            params = {name: param for name, param, _ in watch.variables()}
        batch_cpu = _batch_cpu()
        for i, entry in enumerate(named):
            obj = entry[1]
            if type(obj) is np.ndarray:
                if obj.size and obj.dtype.kind in "biufc":
                    host.append((i, obj))
                continue
            param = params.get(entry[0]) if params else None
            if param is not None:
                # the whole gradient (a hook keeps only the shown part), read through its parameter: the
                # per-step check then reads each step's .grad and never holds one. When the hooks caught
                # the gradients, only the check reads .grad (it may have been clipped since): the norms
                # are the hooks' (else the sample's)
                obj = param.grad
                if from_hooks and (obj is None or (obj.device.type == "cpu" and not batch_cpu)):
                    continue
            elif type(obj) is Captured:
                if obj.norm is not None:  # an activation's, taken by its hook over the whole output
                    kept.setdefault(obj.norm.device, []).append((i, obj.norm))
                continue
            torch = _torch_kind(obj)
            if torch is None and param is None:
                other = _other_host(obj)
                if type(other) is np.ndarray or type(other) is _Later:
                    host.append((i, other))
                    continue
                obj = other
                torch = _torch_kind(obj)
            if torch is None:
                continue
            from_torch = torch
            tensor = obj.detach()
            if tensor.device.type == "cpu" and not batch_cpu:
                host.append((i, tensor))
            else:
                devices.setdefault(tensor.device, []).append((i, tensor, obj, param))
        self._host_pass(exact, host)
        if kept:
            self._kept_norms(exact, kept)
        if from_torch is not None:
            # (a check's sections by values and name: weights and gradients share names, and what one's
            # check found is not the other's)
            names = [(job.shown, entry[0]) for entry in named]
            self._device_pass(from_torch, exact, devices, job.step, names)
        elif self.checks:
            self._set_checks(None, {})
        for device, sections, norms in hooked_norms:
            exact.queued.append((device, sections, [norms], HOOKED))
        self._again = None if from_hooks else _Again.of(job.shown, named, watch, params, host, kept, devices,
                                                     self.checks)

    def _gather_again(self, job: Any, exact: _Exact, named: list, watch: Any) -> bool:
        """The frame of the same parameters (weights) or of their gradients as the last one, checked at
        this step: the per-step check's norms copied back, no section sorted again (False: sort them)."""
        again, check = self._again, self.checks[0] if len(self.checks) == 1 else None
        if check is None or check.norms_step != job.step or not again.fits(job.shown, named, watch):
            return False
        exact.queued.append((check.device, again.sections, [check.norms, check.first, check.value], CHECKED))
        return True

    def _host_pass(self, exact: _Exact, host: list) -> None:
        """Exact figures of host arrays, when the budget allows (else the sample's stand)."""
        if not host:
            return
        total = sum(int(x.numel() if hasattr(x, "numel") else x.size) for _, x in host)
        covered, self._credit = spend_host_budget(self._credit, total)
        if not covered:
            return
        tensors = [(i, x) for i, x in host if type(x) is not np.ndarray and type(x) is not _Later]
        for i, x in host:
            if type(x) is _Later:
                try:
                    x = x.read()
                except Exception:  # (what the frame could not read, it says; the sample's figures stand)
                    continue
            if type(x) is np.ndarray:
                exact.norm[i], exact.nonfinite[i] = _host_exact(x)
                exact.exact[i] = True
        if tensors:
            torch = sys.modules["torch"]
            norms = _norms(torch, [t for _, t in tensors]).numpy().astype(np.float64)  # (CPU: not fused)
            for (i, t), norm in zip(tensors, norms):
                if np.isfinite(norm):
                    exact.norm[i], exact.nonfinite[i] = norm, 0.0
                else:
                    exact.norm[i], exact.nonfinite[i] = _host_exact(_numpy(torch, t))
                exact.exact[i] = True

    def _device_pass(self, torch: Any, exact: _Exact, devices: dict, step: int | None = None,
                     names: list[Any] | None = None) -> None:
        """Queue the norms on each device, to be copied back (with the per-step check's flags) by the
        frame's own copy of that device's values, or on their own (_Exact.queued).

        When the per-step check already took these tensors' norms at this
        step (update() runs it before the frame's gather), they are reused.
        """
        # the same tensors (a model's parameters, updated in place; gradients: the same parameters) keep
        # their checks and the flags they hold
        checked = self._checkable(torch, devices)
        key = tuple((i, id(obj), t.data_ptr()) if param is None else (i, id(param), -1)
                    for entries in checked.values() for i, t, obj, param in entries)
        if key != self._check_key:
            self._set_checks(torch, checked, names)
            self._check_key = key
        by_device = {check.device: check for check in self.checks}
        for device, entries in devices.items():
            sections = [entry[0] for entry in entries]
            check = by_device.get(device)
            if check is not None and step is not None and check.norms_step == step:
                norms = check.norms  # the same tensors, the same step: the same figures
            else:
                tensors = [entry[1] for entry in entries]
                norms = (_norms(torch, tensors, check.groups, check.order) if check is not None
                         else _norms(torch, tensors, norm_groups(tensors)))
            values = [norms] if check is None else [norms, check.first, check.value]
            exact.queued.append((device, sections, values, NORMS if check is None else CHECKED))

    def _checkable(self, torch: Any, devices: dict) -> dict:
        """The devices whose tensors a per-step check may hold: each a parameter, a gradient read through
        its parameter, or the very tensor the last frame handed over for that section.

        New tensors at each frame (``update(arrays={n: p.grad})`` after
        ``zero_grad(set_to_none=True)``, activations) get no check: it would
        look at the last frame's tensors at every step, keep them alive (a
        second set of gradients through the next backward pass) and be made
        again, with its uploads, at every frame.
        """
        parameter, before, now, checkable = torch.nn.Parameter, self._plain_before, {}, {}
        for device, entries in devices.items():
            same = True
            for i, _, obj, param in entries:
                if param is None and type(obj) is not parameter:
                    held = before.get(i)
                    same = same and held is not None and held() is obj
                    try:
                        now[i] = weakref.ref(obj)
                    except TypeError:  # (a tensor that takes no weak reference is never "the same")
                        same = False
            if same:
                checkable[device] = entries
        self._plain_before = now
        return checkable

    @staticmethod
    def _kept_norms(exact: _Exact, kept: dict) -> None:
        """Norms the hooks took (activations), read back with the frame: one stack per device."""
        torch = sys.modules["torch"]
        for device, entries in kept.items():
            norms = torch.stack([norm for _, norm in entries])
            if norms.dtype != torch.float32:  # (device_norm's are float64: cast once here, not per layer)
                norms = norms.float()
            exact.queued.append((device, [i for i, _ in entries], [norms], HOOKED))

    def _set_checks(self, torch: Any, devices: dict, names: list[Any] | None = None) -> None:
        """(Re)build the per-step checks for the frame's device tensors; a section a check of the same
        device held before (by name) keeps the first non-finite step found so far."""
        before = {check.device: check for check in self.checks}
        self.checks = [] if self._step_failed else [
            StepCheck(torch, [x[0] for x in e], [x[1] for x in e], [x[3] for x in e],
                      None if names is None else [names[x[0]] for x in e])
            for e in devices.values()]
        for check in self.checks:
            old = before.get(check.device)
            if old is not None:
                check.carry(old)
        if not self.checks:
            self._check_key = ()


class _Again:
    """A frame's sections that were all torch parameters (weights), or all gradients read through their
    parameters, on one device under one per-step check: the next frame of the same ones reuses the check.

    It holds the parameters (alive anyway), never a gradient.
    """

    def __init__(self, torch: Any, shown: str, source: list, names: list[str], params: list[Any],
                 gradients: bool, device: Any) -> None:
        self.torch = torch
        self.shown = shown
        self.source = source  # the list the sections came from: update()'s, or the watch's variables
        self.names = names
        self.params = params
        self.gradients = gradients
        self.device = device
        self.sections = list(range(len(names)))
        self.pointers = None if gradients else [p.data_ptr() for p in params]

    @staticmethod
    def of(shown: str, named: list, watch: Any, params: dict, host: list, kept: dict, devices: dict,
           checks: list) -> _Again | None:
        """The memo of a frame whose sections were all one device's parameters or gradients, else None."""
        if host or kept or len(devices) != 1 or len(checks) != 1:
            return None
        (device, entries), = devices.items()
        if len(entries) != len(named):
            return None
        torch = sys.modules["torch"]
        names = [entry[0] for entry in named]
        if params:  # gradients: each section read through its parameter
            if any(param is None for *_, param in entries):
                return None
            return _Again(torch, shown, watch.variables(), names, [e[3] for e in entries], True, device)
        if not all(type(obj) is torch.nn.Parameter for _, _, obj, _ in entries):
            return None  # (other tensors are not kept alive for this)
        return _Again(torch, shown, named, names, [e[2] for e in entries], False, device)

    def fits(self, shown: str, named: list, watch: Any) -> bool:
        """Whether these sections are the same ones, each where it was (gradients: each one there)."""
        if shown != self.shown or len(named) != len(self.names):
            return False
        if self.gradients:
            if watch is None or watch.variables() is not self.source:
                return False
            strided, device = self.torch.strided, self.device
            for param in self.params:
                grad = param.grad
                if grad is None or grad.layout is not strided or grad.device != device:
                    return False
        else:  # the same parameters under the same names (at once when it is the same list: the watch's,
            # which it never changes, a walk makes a new one), each where it was
            if named is not self.source and not all(
                    entry[1] is param and entry[0] == name
                    for entry, param, name in zip(named, self.params, self.names)):
                return False
            return [p.data_ptr() for p in self.params] == self.pointers
        return all(entry[0] == name for entry, name in zip(named, self.names))


def _hooked_norms(shown: str, named: list, watch: Any) -> tuple[bool, list[tuple]]:
    """Whether watch()'s hooks caught the gradients a frame shows, and the whole norms they took as the
    backward pass left them: (device, sections, norms vector) per device."""
    taken = getattr(watch, "gradient_norms", None) if shown == "gradients" else None
    if taken is None:
        return False, []
    where = {entry[0]: i for i, entry in enumerate(named)}
    vectors = []
    for names, norms in taken:
        sections = [where.get(name) for name in names]
        if None in sections:  # (the hooks copy what the frame shows: never, unless the filter changed)
            continue
        vectors.append((norms.device, sections, norms))
    return True, vectors


def _copied_back(torch: Any, device: Any, values: list[Any]) -> tuple[list[Any], Any]:
    """Host copies of device tensors and the event after them (CUDA: pinned, non-blocking; else at once)."""
    if device.type != "cuda":
        return [v.detach().clone().cpu() for v in values], None
    host = [torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for v in values]
    for h, v in zip(host, values):
        h.copy_(v, non_blocking=True)
    event = torch.cuda.Event(blocking=True)  # (the worker sleeps on it, not spinning a core)
    event.record(torch.cuda.current_stream(device))  # (the copies' stream; the current device may be another)
    return host, event


def _torch_batch() -> Any:
    """The torch device batches' module (storage keys, graph capture), imported on first use."""
    from beholder_plugin.trainer.sources import torch_batch

    return torch_batch


def _batch_cpu() -> bool:
    """Whether CPU tensors take the device path (BEHOLDER_BATCH_CPU_TENSORS=1; tests and CI)."""
    module = sys.modules.get("beholder_plugin.trainer.sources.torch_batch")
    return bool(getattr(module, "BATCH_CPU_TENSORS", False))
