"""Where a run's frames go: frame.bin, the history ring, its spare files, recordings, and closing.

``LocalRunStore`` writes into the history ring and links the newest file as
frame.bin, rewriting dropped history files in place (spares), and gives up
the oldest kept frames when the disk is full. ``RemoteRunStore`` writes
frame.bin as its own object, copies it into the ring on the server, and
uploads finished recordings from a local staging folder. Both count what
they write in the run's ``RunStatus``; ``write_frame`` is the one place
where a frame, its header and its sections' statistics are written.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from beholder_plugin.protocol import names
from beholder_plugin.protocol.frame_format import encode_frame, read_header, with_header
from beholder_plugin.protocol.history import HistoryEntry, HistoryRing, history_name
from beholder_plugin.protocol.remote_files import url_scheme
from beholder_plugin.protocol.runfiles import read_ended, write_ended
from beholder_plugin.trainer.recording import Recorder
from beholder_plugin.trainer.run_settings import RunSettings
from beholder_plugin.trainer.run_status import RunStatus

logger = logging.getLogger("beholder")

# After a failed write (read-only or full disk) frames are not rendered for this long.
WRITE_RETRY_SECONDS = 5.0
MB = 1 << 20
# After the disk was found full, the history ring keeps to the bytes it held then for this long,
# then tries its configured budget again (a full disk again shrinks it again).
DISK_FULL_HOLD_SECONDS = 60.0
# A frame.bin up to this size gets its header rewritten in place to say frames are not written.
MAX_MARKED_FRAME_BYTES = 64 * MB
DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
# Dropped history files kept to be rewritten in place: cheaper than fresh pages.
MAX_SPARES = 2
# At interpreter exit, wait at most this long for recordings still being uploaded.
UPLOAD_EXIT_SECONDS = 300.0
# A frame of another writer this recent when a run opens: another trainer may be writing to the same run.
OTHER_WRITER_SECONDS = 10.0

# The writers this process made, and those of them still open (a cell of a notebook run again makes a
# second Beholder of the same run: that is not "another trainer")
_MADE_HERE: set[str] = set()
_OPEN_HERE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


class RunStore:
    """What both stores share: the run's paths, the history ring, failed writes, and recording.

    Args:
      logdir: the run (normalized).
      files: its file backend (protocol.files).
      status: the run's counts and warnings.
      strict: raise when the kept frames cannot be listed, instead of warning.
      clock: seconds, monotonic (the write back-off and the full-disk hold use it).
    """

    remote = False
    storage = "local"
    max_fps: float | None = None

    def __init__(self, logdir: str, files: Any, status: RunStatus, strict: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logdir = logdir
        self.files = files
        self.status = status
        self.strict = strict
        self.clock = clock
        self.directory = names.plugin_dir(logdir)
        self.frame_path = names.frame_path(logdir)
        self.history_dir = names.history_dir(logdir)
        self.writer_id = secrets.token_hex(6)
        _MADE_HERE.add(self.writer_id)
        _OPEN_HERE[self.writer_id] = self
        self.history = HistoryRing(0, 0)
        self._other_warned = False  # another writer of the run was named (at open or at the first frame)
        self.write_retry_at = float("-inf")
        self._unwritten_since: float | None = None  # when frames stopped being written (a failing disk)
        self._unwritten = 0  # frames not written since then
        self._unwritten_reason = ""  # why (the last failed write's cause)
        self.recorder = self._make_recorder()

    # ------------------------------------------------------------ opening and closing

    def open(self) -> None:
        """Take over the kept frames of an earlier writer and delete stale temporary files."""
        try:
            self.history.adopt(self.history_dir, self.files)
        except OSError as exc:
            if self.strict:
                raise
            self.status.warn_once("adopt", "Beholder: cannot list %s (%s)", self.history_dir, exc)
        self._another_writer()
        self.files.remove_stale_temp_files(self.directory)
        self.files.remove_stale_temp_files(self.history_dir)

    def _another_writer(self) -> None:
        """Warn when the run's newest kept frame is another writer's and seconds old: two trainers on one
        run take turns in frame.bin and share one timeline, with no error anywhere."""
        entries = self.history.entries
        newest = entries[-1] if entries else None
        if newest is not None:
            self._warn_another(newest.writer, newest.time)

    def _warn_another(self, writer: Any, when: Any) -> None:
        """_another_writer() for the writer of the run's newest frame and its time."""
        if writer == self.writer_id or self._other_warned or not isinstance(when, (int, float)):
            return
        age = time.time() - when
        if age >= OTHER_WRITER_SECONDS:
            return
        self._other_warned = True
        if writer in _MADE_HERE:  # a Beholder of this process: said only while it is open
            if writer in _OPEN_HERE:
                logger.warning("Beholder: another Beholder of this process (writer %s) wrote a frame to %s "
                               "%.0f s ago and is still open: close() it (a notebook cell run again?); "
                               "else the two take turns in the run's frame", writer, self.directory,
                               max(age, 0.0))
            return
        try:
            ended = read_ended(self.logdir)
        except Exception:  # (it only decides whether to warn)
            ended = None
        if ended is not None and ended["writer"] == writer:
            return  # it closed its Beholder: the run is this trainer's now
        logger.warning("Beholder: another trainer (writer %s) wrote a frame to %s %.0f s ago. If it "
                       "still runs, the two take turns in its frame and share one timeline: give each "
                       "trainer its own run directory (a trainer restarted at once can ignore this)",
                       writer, self.directory, max(age, 0.0))

    def close(self, timeout: float | None, worker_idle: bool) -> None:
        """Finish the recording (and, remotely, its upload); drop spare files once the worker is idle."""
        _OPEN_HERE.pop(self.writer_id, None)
        self.recorder.close()

    def mark_ended(self) -> None:
        """Leave ended.json naming this writer's last frame (after the worker wrote it): the dashboard
        then says the training ended instead of asking whether the trainer stopped."""
        if self.status.frames_written == 0:
            return
        newest = self._newest_header()
        # none (the run was deleted: no run of one ended.json comes back in its place), or the frame of
        # another writer (a Beholder of the same run made after this one: its run now)
        if newest is None or newest.get("writer") != self.writer_id:
            return
        try:
            write_ended(self.logdir, self.writer_id, self.status.frames_written, time.time())
        except Exception as exc:  # (it only changes what the status line says: never fail a close for it)
            logger.debug("Beholder: could not write %s (%s)", names.ended_path(self.logdir), exc)

    def close_recording(self) -> None:
        """Finish the recording in progress (recording was turned off), in the background: the training
        thread does not wait for the encoder's queue."""
        self.recorder.close(wait=False)

    def _make_recorder(self) -> Recorder:
        """The recorder, into the run's folder."""
        return Recorder(self.directory)

    # ------------------------------------------------------------ frames

    def writable(self, now: float | None = None) -> bool:
        """False while writes back off after a failed one (WRITE_RETRY_SECONDS); now: the clock's time."""
        return (self.clock() if now is None else now) >= self.write_retry_at

    def _newest_header(self) -> dict[str, Any] | None:
        """frame.bin's header (only its bytes are read), or None: no frame, or one that cannot be read."""
        try:
            found = read_header(self.frame_path, self.files)
        except Exception:  # (its readers only decide what to say: a warning, the ended mark)
            return None
        return None if found is None else found[0]

    def _first_write(self) -> None:
        """Before this writer's first frame: another trainer that started with this one (neither had a frame
        when the other opened the run) has written one by now: say so (one header read, locally)."""
        newest = self._newest_header()
        if newest is not None:
            self._warn_another(newest.get("writer"), newest.get("time"))

    def header(self) -> dict[str, Any]:
        """Frame header fields for the dashboard: where frames go and the remote frame-rate cap."""
        return {"storage": self.storage, "max_fps": self.max_fps}

    def write_frame(self, header: dict[str, Any], time_s: float, step: int, settings: RunSettings,
                    colormap: str | None, **image: Any) -> bool:
        """Stamp, encode and write one frame (header["sections"] holds its sections' statistics).

        ``image`` is encode_frame's rows/palette/values/height. Returns False
        when the write failed (counted, warned once, retried after a back-off).
        """
        frame_id = self.status.frames_written + 1
        header.update(frame_id=frame_id, writer=self.writer_id, time=time_s, step=step, colormap=colormap,
                      **self.status.header(), **self.header())
        recovered = self._recovered_text()  # (what this frame says if it is written after failed ones)
        if recovered is not None:
            header["last_error"] = recovered
        buffers = encode_frame(header, **image)
        if frame_id == 1 and not self.remote:
            self._first_write()
        try:
            self._write(buffers, time_s, step, frame_id, settings)
        except OSError as exc:
            self.write_failed(exc)
            return False
        # The frame is written: header["sections"] holds each section's statistics (the place to note them).
        self.status.frames_written = frame_id
        self.write_retry_at = float("-inf")
        if recovered is not None:
            self.status.last_error = recovered
            self._unwritten_since, self._unwritten = None, 0
        return True

    def _recovered_text(self) -> str | None:
        """After failed writes, what the next written frame says of them: their cause, from when to when
        and how many (None when the last write did not fail)."""
        if self._unwritten_since is None:
            return None
        count, since = self._unwritten, clock_text(self._unwritten_since)
        return (f"{self._unwritten_reason} from {since} to {clock_text(time.time())}: "
                f"{count} frame{'s' if count != 1 else ''} not written")

    def record(self, rgb: Any, time_s: float, fps: float) -> None:
        """Append a written frame's pixels to the recording."""
        self.recorder.append(rgb, time_s, fps)

    def _write(self, buffers: list, time_s: float, step: int, frame_id: int, settings: RunSettings) -> None:
        """Write an encoded frame (each store its own way)."""
        raise NotImplementedError

    def write_failed(self, exc: OSError) -> None:
        """Note a failed write (read-only logdir, full disk): warn once, say so, pause rendering, retry later.

        ``last_error`` says since when frames are not written; on a full disk
        it is also written into frame.bin's header, in place (local runs), so
        the dashboard shows it while the picture stays the last one written.
        """
        status = self.status
        status.write_errors += 1
        if self._unwritten_since is None:
            self._unwritten_since = time.time()
        self._unwritten += 1
        full = getattr(exc, "errno", None) in DISK_FULL
        where, cause = getattr(exc, "filename", None), getattr(exc, "strerror", None)
        if where and cause:  # the folder: a file's name there may be a temp name
            cause = f"{cause}: {posixpath.dirname(str(where).replace(os.sep, '/')) or where}"
        reason = "disk full" if full else f"cannot write ({cause or exc})"
        self._unwritten_reason = reason
        status.last_error = f"{reason}: frames not written since {clock_text(self._unwritten_since)}"
        if full:
            self._disk_full()
        self.write_retry_at = self.clock() + WRITE_RETRY_SECONDS
        status.warn_once(
            "write",
            "Beholder: cannot write frames to %s (%s); training goes on, the previous frame stays "
            "readable, and Beholder tries again every %g s",
            self.directory, exc, WRITE_RETRY_SECONDS,
        )

    def _disk_full(self) -> None:
        """What a store does when a write found the disk full."""

    def _ring_budget(self, settings: RunSettings) -> HistoryRing:
        """The history ring with the settings' budget applied."""
        ring = self.history
        ring.max_bytes = settings.history_mb * MB
        ring.max_seconds = settings.history_seconds
        return ring


class LocalRunStore(RunStore):
    """A run on a local disk: history files linked as frame.bin, spares rewritten in place, a full disk."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spares: list[str] = []  # dropped history files, rewritten in place for new frames
        self._disk_budget: tuple[int, float] | None = None  # (ring bytes, until when) after a full disk

    def open(self) -> None:
        """Check the logdir is a directory (a setup mistake: said now, not at every write), then open."""
        check_directory(self.directory, self.logdir)
        super().open()

    def close(self, timeout: float | None, worker_idle: bool) -> None:
        """Finish the recording; delete the spare files (no temporary file outlives a Beholder)."""
        super().close(timeout, worker_idle)
        if worker_idle:
            spares, self.spares = self.spares, []
            for name in spares:
                try:
                    self.files.remove(os.path.join(self.history_dir, name))
                except OSError:
                    pass

    def _write(self, buffers: list, time_s: float, step: int, frame_id: int, settings: RunSettings) -> None:
        """Write the frame; on a full disk the history ring first gives up its oldest frames, down to none."""
        while True:
            try:
                self._write_local(buffers, time_s, step, frame_id, settings)
                break
            except OSError as exc:
                needed = sum(memoryview(b).nbytes for b in buffers)
                if exc.errno not in DISK_FULL or not self._make_room(needed):
                    raise

    def _make_room(self, needed: int) -> bool:
        """Delete the spare files and the oldest kept frames (at least needed bytes); False if none are left.

        The ring then keeps to what it still holds for DISK_FULL_HOLD_SECONDS,
        so the next frames expire old ones by budget instead of failing first.
        """
        freed = 0
        for spare in self.spares:
            freed += _size_quietly(os.path.join(self.history_dir, spare))
            self.files.remove(os.path.join(self.history_dir, spare))
        self.spares = []
        ring = self.history
        dropped = 0
        while ring.entries and freed < needed:
            entry = ring.entries.popleft()
            ring.bytes -= entry.size
            freed += entry.size
            dropped += 1
            self.files.remove(os.path.join(self.history_dir, entry.name))
        # what is left, less room for the next frame in flight, so that it expires an old one instead
        self._disk_budget = (max(0, ring.bytes - needed), self.clock() + DISK_FULL_HOLD_SECONDS)
        if dropped:
            self.status.warn_once("disk-full-ring", "Beholder: the disk under %s is full; the history ring "
                                  "gives up its oldest frames to keep frame.bin moving", self.directory)
        return freed > 0

    def _write_local(self, buffers: list, time_s: float, step: int, frame_id: int,
                     settings: RunSettings) -> None:
        """Write the frame: into the history ring and linked as frame.bin, or straight to frame.bin."""
        ring = self._ring_budget(settings)
        if self._disk_budget is not None:
            if self.clock() < self._disk_budget[1]:
                ring.max_bytes = min(ring.max_bytes, self._disk_budget[0])
            else:
                self._disk_budget = None  # try the configured budget again
        if not ring.enabled:
            self.files.write_atomic(self.frame_path, buffers)
            for name in ring.expired(time_s) + self.spares:
                self.files.remove(os.path.join(self.history_dir, name))
            self.spares = []
            return
        name = history_name(time_s, self.writer_id, frame_id, step)
        path = os.path.join(self.history_dir, name)
        spare = os.path.join(self.history_dir, self.spares.pop()) if self.spares else None
        size = self.files.write_atomic(path, buffers, reuse=spare)
        try:
            self.files.link_atomic(path, self.frame_path)
        except OSError:  # no hard links here (or a race with a deleted directory): write it again
            self.files.write_atomic(self.frame_path, buffers)
        ring.add(HistoryEntry(name, time_s, self.writer_id, frame_id, step, size))
        for old in ring.expired(time_s):
            self._recycle(old)

    def _recycle(self, name: str) -> None:
        """Keep a dropped history file as a spare to rewrite in place (a couple at most), else delete it."""
        old = os.path.join(self.history_dir, name)
        if len(self.spares) < MAX_SPARES:
            spare = f".spare-{self.writer_id}-{len(self.spares)}.tmp"
            try:
                os.replace(old, os.path.join(self.history_dir, spare))
                self.spares.append(spare)
                return
            except OSError:
                pass
        self.files.remove(old)

    def _disk_full(self) -> None:
        """Rewrite frame.bin in place with last_error in its header (skipped if that needs more space)."""
        status = self.status
        changes = {"frame_id": status.frames_written + 1, **status.header()}
        try:
            data = self.files.read(self.frame_path, MAX_MARKED_FRAME_BYTES)
            if data is None:
                return
            buffers = with_header(data, changes)
        except (OSError, ValueError):
            return
        try:
            marked = self.files.rewrite_in_place(self.frame_path, buffers)
        except OSError:
            return
        if marked:
            status.frames_written += 1  # a new frame id, so that viewers fetch the new header


class RemoteRunStore(RunStore):
    """A run on a remote store (docs/remote.md): frame.bin as an object, recordings uploaded."""

    remote = True

    def __init__(self, *args: Any, storage: str, max_fps: float, **kwargs: Any) -> None:
        self.storage = storage
        self.max_fps = max_fps
        self._uploads: list[threading.Thread] = []
        super().__init__(*args, **kwargs)

    def _make_recorder(self) -> Recorder:
        """The recorder, into a local staging folder; each finished recording is uploaded."""
        staging = os.path.join(tempfile.gettempdir(), f"beholder-recordings-{self.writer_id}")
        return Recorder(staging, on_finished=self._upload_recording)

    def _write(self, buffers: list, time_s: float, step: int, frame_id: int, settings: RunSettings) -> None:
        """Write a frame remotely: frame.bin as its own object, then a server-side copy into history.

        frame.bin first, because it is what viewers wait for. A failed copy
        into the history ring is only logged (the frame itself is written).
        """
        ring = self._ring_budget(settings)
        size = self.files.write_atomic(self.frame_path, buffers)
        if ring.enabled:
            name = history_name(time_s, self.writer_id, frame_id, step)
            try:
                self.files.copy(self.frame_path, posixpath.join(self.history_dir, name))
                ring.add(HistoryEntry(name, time_s, self.writer_id, frame_id, step, size))
            except OSError as exc:
                self.status.warn_once("history", "Beholder: cannot keep frames in %s (%s)", self.history_dir,
                                      exc)
        for old in ring.expired(time_s):
            self.files.remove(posixpath.join(self.history_dir, old))

    def _upload_recording(self, local_path: str) -> None:
        """Upload a finished recording to the run on a background thread (never the training thread)."""
        target = posixpath.join(self.directory, os.path.basename(local_path))
        thread = threading.Thread(
            target=self._upload, args=(local_path, target), name="beholder-upload", daemon=True
        )
        self._uploads = [t for t in self._uploads if t.is_alive()] + [thread]
        thread.start()

    def _upload(self, local_path: str, target: str) -> None:
        """Copy one recording to the store and delete the local copy; keep it (and say where) on failure."""
        try:
            self.files.upload(local_path, target)
        except OSError as exc:
            logger.warning(
                "Beholder: could not upload the recording to %s (%s); it is kept at %s",
                target, exc, local_path,
            )
            return
        if os.path.isdir(local_path):
            shutil.rmtree(local_path, ignore_errors=True)
        else:
            _remove_quietly(local_path)
        logger.info("Beholder: recording uploaded to %s", target)

    def close(self, timeout: float | None, worker_idle: bool) -> None:
        """Finish the recording and wait for uploads (bounded at interpreter exit)."""
        super().close(timeout, worker_idle)
        deadline = None if timeout is None else time.monotonic() + max(timeout, UPLOAD_EXIT_SECONDS)
        for thread in self._uploads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                logger.warning("Beholder: a recording is still uploading to %s (its local copy stays in %s)",
                               self.directory, self.recorder.directory)
        try:
            os.rmdir(self.recorder.directory)  # the staging folder, when everything was uploaded
        except OSError:
            pass


def store_for(logdir: str, files: Any, status: RunStatus, strict: bool, clock: Callable[[], float],
              max_fps: float | None) -> RunStore:
    """The run's store: remote when the file backend is (capped at max_fps frames per second), else local."""
    if files.remote:
        return RemoteRunStore(logdir, files, status, strict, clock, storage=url_scheme(logdir),
                              max_fps=max_fps)
    return LocalRunStore(logdir, files, status, strict, clock)


def check_directory(directory: str, logdir: str) -> None:
    """Raise NotADirectoryError when something on the way to directory exists and is not a directory."""
    path = os.path.abspath(directory)
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent
    if not os.path.isdir(path):
        kind = "a file" if os.path.isfile(path) else "not a directory"
        raise NotADirectoryError(
            f"Beholder cannot write under the logdir {logdir!r}: {path!r} is {kind}. Pass a directory "
            "(it is created if missing), the one TensorBoard is started with as --logdir"
        )


def clock_text(when: float) -> str:
    """A time of day as the dashboard's status line shows it (local time, to the second)."""
    return time.strftime("%H:%M:%S", time.localtime(when))


def _size_quietly(path: str) -> int:
    """A file's size, 0 if it cannot be read."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _remove_quietly(path: str) -> None:
    """Delete a local file; one that is already gone is fine."""
    try:
        os.unlink(path)
    except OSError:
        pass
