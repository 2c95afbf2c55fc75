"""The background worker: one thread per Beholder that renders, encodes and writes frames.

The training thread hands over one job at a time. While a job runs the
worker is ``busy`` and the trainer skips frames rather than queueing them, so
frames never pile up. An exception in a job is kept for the trainer to
report; the thread carries on with the next job.

Example::

    worker = Worker(run_job)
    if not worker.busy:
        worker.submit(job)
    worker.drain(timeout=5.0)
"""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from typing import Any, Callable

_WORKERS: weakref.WeakSet = weakref.WeakSet()

# How long a worker runs Python before it lets a waiting thread have the GIL (let_training_run). A
# training thread back from waiting on its device otherwise waits for the interpreter's switch interval
# (5 ms) whenever the worker is in the middle of its Python (benchmarks/gil_bench.py).
GIL_SLICE_SECONDS = 0.0002

_THIS_THREAD = threading.local()  # on a worker's thread: when it last let others run


def let_training_run() -> None:
    """On a worker's thread, give the GIL away for a moment when it has run GIL_SLICE_SECONDS since the
    last time; anywhere else (a frame rendered inside update()), nothing.

    ``time.sleep(0)`` releases the GIL long enough (about 50 us) for a
    thread waiting on it to take it; a release that returns at once (a
    zero-timeout ``select``) is taken back before the other thread wakes.
    """
    last = getattr(_THIS_THREAD, "last", None)
    if last is not None and time.perf_counter() - last >= GIL_SLICE_SECONDS:
        time.sleep(0)
        _THIS_THREAD.last = time.perf_counter()


# cudaStreamCaptureModeRelaxed, of the CUDA runtime's enum cudaStreamCaptureMode (global 0, thread-local 1)
CAPTURE_MODE_RELAXED = 2


def relax_cuda_capture_checks() -> bool:
    """On a worker's thread (before each job: its CUDA copies, waits and frees): make the thread's
    stream-capture mode relaxed (once per thread); whether it is. Elsewhere (a frame taken inside
    update()), nothing.

    A CUDA graph captured in the default "global" mode (``torch.cuda.graph``,
    ``make_graphed_callables``) forbids every other thread the calls that
    might touch it, an event query or sync among them: a worker waiting on
    its frame's copy while the training thread captured would fail, and end
    the user's capture with it. A relaxed thread may make them; the worker's
    events are recorded on its own stream, never inside the capture. Asked
    only where CUDA is already in use, so that it never starts a context.
    """
    done = getattr(_THIS_THREAD, "relaxed", None)
    if done is None:
        if getattr(_THIS_THREAD, "last", None) is None or not _cuda_in_use():
            return False
        done = _THIS_THREAD.relaxed = _exchange_capture_mode(_runtime_function())
    return done


def _cuda_in_use() -> bool:
    """Whether torch has started CUDA in this process (asking starts nothing)."""
    torch = sys.modules.get("torch")
    return torch is not None and bool(torch.cuda.is_initialized())


def _runtime_function() -> Any:
    """The CUDA runtime's cudaThreadExchangeStreamCaptureMode as torch loaded it (None: not found)."""
    import ctypes

    for library in [None, *_loaded_cudart_paths()]:
        try:
            return ctypes.CDLL(library).cudaThreadExchangeStreamCaptureMode
        except (OSError, AttributeError):
            continue
    return None


def _loaded_cudart_paths() -> list[str]:
    """The files of libcudart this process has mapped (Linux; [] elsewhere)."""
    try:
        with open("/proc/self/maps") as maps:
            return sorted({line.split()[-1] for line in maps if "libcudart" in line and "/" in line})
    except OSError:
        return []


def _exchange_capture_mode(function: Any) -> bool:
    """Set this thread's stream-capture mode to relaxed through the runtime's function; whether it took."""
    if function is None:
        return False
    import ctypes

    mode = ctypes.c_int(CAPTURE_MODE_RELAXED)
    try:
        return function(ctypes.byref(mode)) == 0  # (cudaSuccess; mode now holds the one it replaced)
    except Exception:  # noqa: BLE001  (a foreign library's call: the frame goes on without it)
        return False


class Worker:
    """Runs submitted jobs one at a time on a daemon thread started on first use."""

    def __init__(self, run: Callable[[Any], None], name: str = "beholder-worker") -> None:
        self._run = run
        self._name = name
        self._reset()
        _WORKERS.add(self)

    def _reset(self) -> None:
        """Fresh state: no thread, no job (also what a forked child starts from)."""
        self._cond = threading.Condition()
        self._job: Any = None
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def busy(self) -> bool:
        """True from submit() until the job has finished."""
        return self._busy

    @property
    def alive(self) -> bool:
        """Whether the thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def submit(self, job: Any) -> None:
        """Hand over a job; the caller checks ``busy`` first (a busy worker refuses with RuntimeError)."""
        with self._cond:
            if self._busy:
                raise RuntimeError("the Beholder worker is still busy with the previous frame")
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._job = job
            self._busy = True
            self._cond.notify_all()

    def take_error(self) -> BaseException | None:
        """The exception raised by the last failed job, once; None when there was none."""
        with self._cond:
            error, self.error = self.error, None
            return error

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until no job is running; False if timeout s passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._busy, timeout=timeout)

    def stop(self, timeout: float | None = None) -> bool:
        """Finish the running job and end the thread; False if it had not ended after timeout s."""
        if not self.drain(timeout):
            return False
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._job is not None or self._stopping)
                if self._job is None:
                    self._thread = None
                    return
                job, self._job = self._job, None
            _THIS_THREAD.last = time.perf_counter()
            try:
                relax_cuda_capture_checks()  # (the user may capture a CUDA graph on the training thread)
                self._run(job)
            except BaseException as exc:  # kept for the trainer: log or raise under strict
                with self._cond:
                    self.error = exc
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


def _after_fork_in_child() -> None:
    """A forked child (a DataLoader worker, say) has no worker thread: start from a clean state."""
    for worker in list(_WORKERS):
        worker._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
