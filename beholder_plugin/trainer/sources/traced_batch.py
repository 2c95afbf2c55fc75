"""What the traced device batches (JAX's jit, TensorFlow's tf.function) share: one function per plan.

A subclass says how to upload a section's flat positions (``_upload``), how
to trace the gather (``trace``, with ``arrange`` laying the parts out in
the frame's order), how to compile it ahead of its first call
(``abstract``, ``warm``) and how to call it (``_call``); this class keeps
the traced functions and uploaded positions, made once per plan: one array
of every section's positions (section k's are
``positions[bounds[k]:bounds[k+1]]``), so a frame's call passes its arrays
and one more argument.

Tracing and compiling take seconds (4-6 s for ResNet-50's 214 arrays on a
GPU), so they run on a background thread: the frame that meets a new set of
shapes starts them and raises ``GatherCompiling`` (update() skips that
frame), and the frames after it call the compiled function once it is ready.

Example::

    class MyGather(TracedGather):
        def _upload(self, flat): ...
        def trace(self, sections, bounds): ...
        def abstract(self, arrays): ...
        def warm(self, function, abstract, positions): ...
        def _call(self, function, arrays, positions, sections): ...
"""

from __future__ import annotations

import atexit
import functools
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from beholder_plugin.trainer.sources.torch_batch import storage_offsets


def c_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides of a C-ordered array of this shape (JAX and TF arrays are indexed in that order)."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


# Each array's whole-array figures, laid after the frame's values and samples (the timeline's exact
# pass): the exponent e of its largest finite magnitude, the norm of its finite values divided by 2**e
# (so that neither overflows float32, whatever the array's range), its non-finite and its NaN count.
FIGURES = 4


def exact_figures(figures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(norms, non-finite counts) in float64 from (arrays, FIGURES) float32 figures: NaN where an array
    held a NaN, inf where it held an infinity (as a norm over every value is)."""
    exponent, scaled, bad, nans = (figures[:, k].astype(np.float64) for k in range(FIGURES))
    with np.errstate(over="ignore"):
        norms = np.ldexp(scaled, exponent.astype(np.int64))
    norms = np.where(nans > 0, np.nan, np.where(bad > 0, np.inf, norms))
    return norms, bad


@dataclass
class TracedPending:
    """A traced batch's result on the device: ``wait()`` (on the worker) brings it to the host."""

    result: Any  # a jax.Array (its copy to the host already started) or a tf.Tensor
    sections: list[int]
    host: np.ndarray | None = None

    def wait(self) -> np.ndarray:
        """Block until the values are on the host, then a writable float32 NumPy array: the frame's values,
        its samples, then FIGURES per section of this batch."""
        if self.host is not None:
            return self.host
        result = self.result
        if type(result).__module__.startswith("jax"):  # (an explicit transfer: jax_transfer_guard allows it)
            result = sys.modules["jax"].device_get(result)
        host = np.asarray(result)
        self.host = host if host.flags.writeable else host.copy()
        return self.host

    def put_exact(self, exact: Any, total: int) -> None:
        """Put this batch's whole-array figures (after the first ``total`` values) in a frame's exact pass."""
        figures = self.wait()[total:].reshape(len(self.sections), FIGURES)
        norms, bad = exact_figures(figures)
        exact.norm[self.sections] = norms
        exact.nonfinite[self.sections] = bad
        exact.exact[self.sections] = True


# Compiled gathers kept for the process, by device, sections, shapes, dtypes and the key of the frame
# plan (which fixes every position read): a Beholder made again for the same model, as a notebook cell
# run twice does, finds its gather compiled.
_COMPILED: OrderedDict[tuple, tuple[Any, Any]] = OrderedDict()
_COMPILED_LOCK = threading.Lock()
COMPILED_KEPT = 16
# A gather whose compile failed is compiled again after this many seconds, twice as many after each
# failure: a failure may pass (the device's memory was full at that moment).
RETRY_FAILED_S = 60.0


# The compile running on each device, for the process: one at a time per device, so that frames whose
# shapes change at every step start one compile, not a thread each, all compiling at once.
_IN_FLIGHT: dict[Any, Compiling] = {}
_EXIT_WAIT_S = 60.0  # how long the interpreter's exit waits for a compile in flight (in XLA: an abort)


def wait_in_flight(timeout: float | None = None) -> bool:
    """Wait until no traced gather of the process is compiling (True), or timeout seconds (False)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with _COMPILED_LOCK:
        entries = list(_IN_FLIGHT.values())
    for entry in entries:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not entry.done.wait(left):
            return False
    return True


@functools.cache
def _wait_at_exit() -> None:
    """Have the interpreter's exit wait for a compile in flight (registered once, at the first)."""
    atexit.register(wait_in_flight, _EXIT_WAIT_S)


def forget_compiled() -> None:
    """Drop the compiled gathers kept for the process (the next Beholder compiles its own again)."""
    with _COMPILED_LOCK:
        _COMPILED.clear()


def _key(sections: list[int], arrays: list[Any]) -> tuple:
    """What a traced gather is compiled for: its sections and each array's shape, dtype and type (a
    tf.function traces a tf.Variable apart from a tensor of its shape, and would trace again on the
    training thread when a loop's gradients follow its variables under the same names)."""
    return tuple(sections), tuple((tuple(x.shape), x.dtype, type(x)) for x in arrays)


class GatherCompiling(Exception):
    """A frame's traced gather is still being compiled on a background thread: the frame waits (skipped)."""


@dataclass
class Compiling:
    """One traced gather: compiled on a background thread, then its function and positions."""

    arrays: int
    done: threading.Event = field(default_factory=threading.Event)
    function: Any = None
    positions: Any = None
    error: BaseException | None = None
    failed_at: float = 0.0  # (time.monotonic())
    failures: int = 0  # of the compiles of these shapes so far

    def fail(self, exc: BaseException, before: int) -> None:
        """The compile failed (after ``before`` failed ones): its frames say why until a retry."""
        self.error, self.failed_at, self.failures = exc, time.monotonic(), before + 1
        self.done.set()


class TracedGather:
    """The traced gathers and uploaded positions of one frame plan's sections on one device."""

    def __init__(self, device: Any, plan: Any) -> None:
        self.device = device
        self.plan = plan
        self._functions: dict[tuple, Compiling] = {}  # by sections, shapes and dtypes

    def launch(self, entries: list[tuple[int, Any]]) -> Any:
        """Dispatch the gather of these (section, array) entries; never waits for the device."""
        return self.launch_sections([i for i, _ in entries], [x for _, x in entries])

    def launch_sections(self, sections: list[int], arrays: list[Any]) -> Any:
        """launch() with the sections and their arrays as two lists.

        Raises GatherCompiling while this set of shapes' gather is compiling
        (the first frame of each starts it), and the compile's own error, on
        the frames of those shapes, when it failed: until it is tried again,
        RETRY_FAILED_S later (twice that after a second failure, and so on).
        """
        key = _key(sections, arrays)
        found = self._functions.get(key)
        if found is not None and found.error is not None and (
                time.monotonic() - found.failed_at > RETRY_FAILED_S * 2 ** (found.failures - 1)):
            found = self._compile(key, list(sections), arrays, found.failures)
        elif found is None:
            found = self._compile(key, list(sections), arrays)
        if not found.done.is_set():
            raise GatherCompiling(f"the device gather of {found.arrays} arrays is compiling in the "
                                  "background; frames start when it is ready")
        if found.error is not None:
            raise found.error
        return self._call(found.function, list(arrays), found.positions, list(sections))

    def start_compile(self, entries: list[tuple[int, Any]]) -> None:
        """Start compiling the gather of these (section, array) entries in the background unless it is
        compiled or compiling (a frame waiting for another device's gather starts this one's beside it)."""
        sections, arrays = [i for i, _ in entries], [x for _, x in entries]
        key = _key(sections, arrays)
        if key not in self._functions:
            try:
                self._compile(key, sections, arrays)
            except GatherCompiling:  # (this device's gather of other shapes is compiling: later)
                pass

    def wait_compiled(self, timeout: float | None = None) -> bool:
        """Wait until no gather is compiling (True), or timeout seconds have passed (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for entry in list(self._functions.values()):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not entry.done.wait(left):
                return False
        return True

    def _compile(self, key: tuple, sections: list[int], arrays: list[Any], failures: int = 0) -> Compiling:
        """Start tracing and compiling the gather of these shapes on a background thread (one at a time on
        each device, for the process; ``failures``: how many compiles of them failed before)."""
        entry = Compiling(len(arrays), failures=failures)
        what = None if self.plan.key is None else (type(self), self.device, key, self.plan.key)
        with _COMPILED_LOCK:
            kept = _COMPILED.get(what)
            running = _IN_FLIGHT.get(self.device)
            if kept is None and running is not None and not running.done.is_set():
                raise GatherCompiling("another device gather is compiling in the background")
            if kept is None:
                _IN_FLIGHT[self.device] = entry
        if len(self._functions) >= 8:
            self._functions.clear()
        self._functions[key] = entry
        if kept is not None:  # compiled for an earlier Beholder: ready now
            entry.function, entry.positions = kept
            entry.done.set()
            return entry
        _wait_at_exit()
        try:
            abstract = self.abstract(arrays)  # on this thread: the arrays may be donated after this step
        except Exception as exc:  # (the compile slot is free again)
            entry.fail(exc, failures)
            return entry
        shapes = [shape for shape, _dtype, _type in key[1]]

        def work() -> None:
            try:
                flats = [self._positions(i, shape) for i, shape in zip(sections, shapes)]
                bounds = np.cumsum([0] + [flat.size for flat in flats]).tolist()
                function = self.trace(sections, bounds)
                positions = self._upload(np.concatenate(flats))
                function = self.warm(function, abstract, positions) or function
                entry.function, entry.positions = function, positions
                if what is not None:
                    with _COMPILED_LOCK:
                        _COMPILED[what] = (function, positions)
                        while len(_COMPILED) > COMPILED_KEPT:
                            _COMPILED.popitem(last=False)
            except Exception as exc:  # raised to the frames of these shapes: their sections say why
                entry.fail(exc, failures)
            finally:
                entry.done.set()

        try:
            threading.Thread(target=work, name="beholder-compile", daemon=True).start()
        except RuntimeError as exc:  # (no thread to be had)
            entry.fail(exc, failures)
        return entry

    def _positions(self, i: int, shape: tuple[int, ...]) -> np.ndarray:
        """Section i's flat positions in an array of this shape: its shown values, then its sample."""
        plan = self.plan
        n = int(plan.sample_offsets[i + 1] - plan.sample_offsets[i])
        return storage_offsets(plan.plans[i], shape, c_strides(shape), plan.sample_steps[i], n)

    def arrange(self, sections: list[int], parts: list[Any], zeros: Callable[[int], Any],
                figures: list[Any]) -> list[Any]:
        """The pieces of the frame's order: every section's shown values, then every sample, then the
        ``figures`` (FIGURES values per section of ``sections``); the parts (shown values then sample,
        per section of ``sections``) where they are, zeros elsewhere."""
        plan = self.plan
        ours = {i: k for k, i in enumerate(sections)}
        count = len(plan.plans)
        shown = [int(s) for s in plan.sizes]
        sampled = [int(plan.sample_offsets[i + 1] - plan.sample_offsets[i]) for i in range(count)]
        values = [parts[ours[i]][: shown[i]] if i in ours else zeros(shown[i]) for i in range(count)]
        samples = [parts[ours[i]][shown[i]:] if i in ours else zeros(sampled[i]) for i in range(count)]
        return values + samples + figures

    def _upload(self, flat: np.ndarray) -> Any:
        raise NotImplementedError

    def trace(self, sections: list[int], bounds: list[int]) -> Any:
        raise NotImplementedError

    def abstract(self, arrays: list[Any]) -> Any:
        """What warm() compiles for, taken from the arrays on the calling thread."""
        raise NotImplementedError

    def warm(self, function: Any, abstract: Any, positions: Any) -> Any:
        """Trace and compile the function for these arrays, so that its first call only runs it; what the
        frames then call instead of ``function``, if anything (None: the function)."""
        raise NotImplementedError

    def _call(self, function: Any, arrays: list[Any], positions: Any, sections: list[int]) -> Any:
        raise NotImplementedError
