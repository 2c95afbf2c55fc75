"""Videos of a run: listing its recordings and exports, and exporting a range of kept frames to mp4.

Recordings are the trainer's `video-*.mp4` files in `<run>/plugins/beholder/`;
exports are written here, from the history ring's frame files, into
`<run>/plugins/beholder/exports/`. Both are named relative to the plugin
directory (`video-....mp4`, `exports/export-....mp4`), and only names of
that shape are ever opened. On a remote logdir both are read through the
run's fsspec files (recordings are uploaded there when they finish); exports
are written only into local runs.

An export is bounded three ways: its frames (MAX_EXPORT_FRAMES), the pixels
it encodes in all (MAX_EXPORT_TOTAL_PIXELS: its time, memory and file size),
and the room it may take (a run's exports/ holds at most MAX_EXPORTS_BYTES
in MAX_EXPORTS_FILES files, and the disk keeps MIN_FREE_BYTES free).
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from beholder_plugin.protocol.files import FileRefused, open_checked
from beholder_plugin.protocol.frame_format import read_header
from beholder_plugin.protocol.history import (
    HistoryEntry,
    list_history,
    parse_history_name,
    read_history_frame,
)
from beholder_plugin.protocol.names import history_dir
from beholder_plugin.protocol.remote_files import identity_of_info, is_remote, modified_time
from beholder_plugin.protocol.video import VIDEO_FPS, open_mp4_writer, pad_even, timestamp

EXPORTS_DIR = "exports"
# At most this many kept frames go into one export (30 s of video at 15 fps... times a little more).
MAX_EXPORT_FRAMES = 600
# A frame of an export is at most this many pixels (a show_all ResNet-50 frame is ~22 million).
MAX_EXPORT_PIXELS = 32 << 20
# At most this many pixels are encoded by one export, all its frames together: 600 frames of up to
# 1.7 Mi pixels, or 32 of the largest. x264 takes about 0.1 us a pixel on 2 cores, so an export of noisy
# frames takes at most about 2.5 minutes there and writes at most about 460 MB.
MAX_EXPORT_TOTAL_PIXELS = 1 << 30
# A run's exports/ folder: at most this many bytes and files; an export that would pass either is refused.
MAX_EXPORTS_BYTES = 2 << 30
MAX_EXPORTS_FILES = 500
# An export never leaves less than this free on the file system that holds exports/.
MIN_FREE_BYTES = 1 << 30
MAX_LISTED_VIDEOS = 1000
DEFAULT_EXPORT_FPS = VIDEO_FPS
_VIDEO_NAME = re.compile(r"(exports/)?[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}\.mp4")  # used with fullmatch
_CHUNK = 1 << 20  # bytes read at a time for a download
# A recording the trainer finished ends with this box (the fragmented mp4's index); one being written,
# or cut short by a killed trainer, does not.
_FINISHED_TAIL = (16).to_bytes(4, "big") + b"mfro"
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


class VideoError(ValueError):
    """A request about videos that cannot be served; carries its HTTP status."""

    def __init__(self, message: str, status: int = 400):
        """A message for the client and the HTTP status to answer with."""
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: its name (relative to plugins/beholder), frame count and size."""

    name: str
    frames: int
    dropped: int
    width: int
    height: int
    fps: int


def check_video_name(name: Any) -> str:
    """The name if it names a recording or an export (`x.mp4`, `exports/x.mp4`), else VideoError 400."""
    if not isinstance(name, str) or not _VIDEO_NAME.fullmatch(name) or ".." in name:
        raise VideoError(
            f"{name!r} is not a video name: expected 'NAME.mp4' or 'exports/NAME.mp4' "
            "(letters, digits, '_', '-', '.')"
        )
    return name


def list_videos(beholder_dir: str, files: Any = None) -> list[dict[str, Any]]:
    """The run's mp4 files, newest first: recordings in plugins/beholder/, exports in exports/.

    A recording's ``finished`` says whether the trainer finished it (false
    while it is being written, and for one cut short by a killed trainer); a
    remote run's recordings are uploaded once finished. ``files`` is a
    remote run's RemoteFiles.
    """
    if files is not None:  # (exports are made only for local runs: one listing, of the recordings)
        found = list(_remote_videos_in(files, beholder_dir, "recording", ""))
    else:
        found = [*_videos_in(beholder_dir, "recording", ""),
                 *_videos_in(os.path.join(beholder_dir, EXPORTS_DIR), "export", EXPORTS_DIR + "/")]
    found.sort(key=lambda v: (-v["time"], v["name"]))
    return found[:MAX_LISTED_VIDEOS]


def _videos_in(folder: str, kind: str, prefix: str) -> Iterator[dict[str, Any]]:
    """Regular *.mp4 files directly in folder (symlinks and hidden names skipped), as list entries."""
    try:
        with os.scandir(folder) as entries:
            for count, entry in enumerate(entries):
                if count >= MAX_LISTED_VIDEOS * 4:
                    return
                name = prefix + entry.name
                if not _VIDEO_NAME.fullmatch(name) or ".." in name:
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                video = {"name": name, "kind": kind, "size": st.st_size, "time": st.st_mtime}
                if kind == "recording":
                    video["finished"] = _finished(entry.path)
                yield video
    except (FileNotFoundError, NotADirectoryError):
        return


def _remote_videos_in(files: Any, folder: str, kind: str, prefix: str) -> Iterator[dict[str, Any]]:
    """*.mp4 objects directly in a remote folder, as list entries (one listing, no request per object)."""
    for count, info in enumerate(files.entries(folder)):
        if count >= MAX_LISTED_VIDEOS * 4:
            return
        name = prefix + posixpath.basename(str(info.get("name", "")).rstrip("/"))
        if info.get("type") != "file" or not _VIDEO_NAME.fullmatch(name) or ".." in name:
            continue
        video = {"name": name, "kind": kind, "size": int(info.get("size") or 0),
                 "time": modified_time(info) or 0.0}
        if kind == "recording":
            video["finished"] = True  # uploaded only once the trainer finished it
        yield video


def _finished(path: str) -> bool:
    """Whether a recording ends with the box the trainer's encoder writes when it finishes the file."""
    try:
        fd = open_checked(path, _OPEN_FLAGS)
    except (OSError, FileRefused):
        return False
    try:
        size = os.fstat(fd).st_size
        return size >= 16 and os.pread(fd, 8, size - 16) == _FINISHED_TAIL
    except OSError:
        return False
    finally:
        os.close(fd)


def open_video(path: str, name: str, files: Any = None) -> tuple[Iterator[bytes], int]:
    """A video's bytes (as large as when opened: a recording that grows meanwhile is sent as it was) and size.

    VideoError 404 when it is missing or not a regular file; ``files`` is a remote run's RemoteFiles.
    """
    if files is not None:
        info = files.info(path)
        if info is None or info.get("type") != "file":
            raise VideoError(f"there is no video {name!r} in this run", 404)
        size = int(info.get("size") or 0)
        return _remote_chunks(files, path, size, identity_of_info(info)), size
    try:
        fd = open_checked(path, _OPEN_FLAGS)  # what was opened must lie in the logdir (a link swapped in)
    except (FileNotFoundError, NotADirectoryError):
        raise VideoError(f"there is no video {name!r} in this run", 404) from None
    except FileRefused as exc:
        raise VideoError(f"video {name!r}: {exc}", 403) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise VideoError(f"video {name!r} is not a regular file", 404)
    return _local_chunks(fd, st.st_size), st.st_size


def _local_chunks(fd: int, size: int) -> Iterator[bytes]:
    """The first size bytes of an open file (fewer if it shrank), a chunk at a time; closes it."""
    try:
        sent = 0
        while sent < size:
            chunk = os.pread(fd, min(_CHUNK, size - sent), sent)
            if not chunk:
                return
            sent += len(chunk)
            yield chunk
    finally:
        os.close(fd)


def _remote_chunks(files: Any, path: str, size: int, identity: tuple) -> Iterator[bytes]:
    """The bytes of a remote object, a chunk at a time; stops short if the object is replaced meanwhile."""
    sent = 0
    while sent < size:
        try:
            chunk = files.read_range(path, sent, min(_CHUNK, size - sent), size, identity)
        except (OSError, FileRefused):
            return  # replaced or unreachable: the download ends short of its Content-Length
        if not chunk:
            return
        sent += len(chunk)
        yield chunk


def export_range(run_dir: str, exports_dir: str, first: Any, last: Any, fps: Any = VIDEO_FPS) -> ExportResult:
    """Encode the kept frames from `first` to `last` (history names, inclusive) into exports_dir as mp4.

    VideoError 400 for bad names, a reversed or too long range (frames, or
    pixels in all), a range spanning two writers (a restarted trainer) and a
    bad fps; 404 when a named frame is no longer kept; 501 on a remote
    logdir; 507 when the run's exports/ or the disk has no room for it.
    Frames of other sizes are padded with black to the largest; frames the
    ring drops meanwhile are left out (and counted in `dropped`).
    """
    if is_remote(exports_dir):
        raise VideoError("exports are made only for runs on a local logdir: on a remote one, export from a "
                         "TensorBoard started on a local copy of the run, or record instead", 501)
    fps = _check_fps(fps)
    chosen = _frames_between(list_history(run_dir), first, last)
    width, height = _export_size(run_dir, chosen)
    _check_total_pixels(len(chosen), width, height)
    try:
        os.makedirs(exports_dir, exist_ok=True)
    except OSError as exc:
        raise VideoError(f"cannot create this run's exports folder: {exc.strerror or exc}", 403) from None
    used = _check_room(exports_dir)
    name = _unused_name(exports_dir, chosen[0].step, chosen[-1].step)
    final = os.path.join(exports_dir, name)
    partial = os.path.join(exports_dir, f".{name}.{os.getpid()}-{threading.get_ident()}.partial.mp4")

    def room_left() -> None:
        """VideoError 507 once the file being written would take the folder or the disk past its bound."""
        try:
            written_so_far = os.stat(partial).st_size
        except OSError:
            written_so_far = 0
        _check_room(exports_dir, used + written_so_far)

    try:
        written = encode_export(run_dir, chosen, partial, width, height, fps, room_left)
        if written == 0:
            raise VideoError("every frame of the range was dropped by the history ring meanwhile", 404)
        os.close(open_checked(partial, os.O_RDONLY))  # written inside the logdir: no folder swapped meanwhile
        os.replace(partial, final)
    except FileRefused as exc:
        raise VideoError(f"the export was not kept: {exc}", 403) from None
    except (OSError, RuntimeError) as exc:
        raise VideoError(f"encoding {name} failed: {exc}", 500) from None
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return ExportResult(f"{EXPORTS_DIR}/{name}", written, len(chosen) - written, width, height, fps)


def _check_total_pixels(frames: int, width: int, height: int) -> None:
    """VideoError 400 when frames of width x height pass the pixels one export may encode."""
    if frames * width * height > MAX_EXPORT_TOTAL_PIXELS:
        most = max(1, MAX_EXPORT_TOTAL_PIXELS // (width * height))
        raise VideoError(
            f"the range holds {frames} frames of {width}x{height} pixels; at most {most} frames of that size "
            f"can be exported at once (an export encodes at most {MAX_EXPORT_TOTAL_PIXELS >> 20} Mi pixels "
            "in all): choose a shorter range"
        )


def exports_usage(exports_dir: str) -> tuple[int, int]:
    """The files in a run's exports folder (partial ones included) and their bytes, counted up to a bound."""
    count = size = 0
    try:
        with os.scandir(exports_dir) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False):
                        count += 1
                        size += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
                if count > MAX_EXPORTS_FILES:
                    break
    except (FileNotFoundError, NotADirectoryError):
        pass
    return count, size


def _check_room(exports_dir: str, used: int | None = None) -> int:
    """The bytes the exports folder holds; VideoError 507 when it (``used``, if given) or the disk is full."""
    where = f"delete some of this run's exports ({exports_dir}) to make room"
    if used is None:
        count, used = exports_usage(exports_dir)
        if count >= MAX_EXPORTS_FILES:
            raise VideoError(f"this run already has {count} exports, the most kept: {where}", 507)
    if used > MAX_EXPORTS_BYTES:
        raise VideoError(f"this run's exports would take more than {MAX_EXPORTS_BYTES >> 20} MB, the most "
                         f"kept: {where}", 507)
    free = shutil.disk_usage(exports_dir).free
    if free < MIN_FREE_BYTES:
        raise VideoError(f"the disk holding this run has {free >> 20} MB free; exports keep at least "
                         f"{MIN_FREE_BYTES >> 20} MB free: free some space, or {where}", 507)
    return used


def _check_fps(fps: Any) -> int:
    """The export frame rate: a whole number from 1 to 60 (VideoError 400 otherwise)."""
    if isinstance(fps, bool) or not isinstance(fps, int) or not 1 <= fps <= 60:
        raise VideoError(f"'fps' must be a whole number from 1 to 60, not {fps!r}")
    return fps


def _frames_between(entries: list[HistoryEntry], first: Any, last: Any) -> list[HistoryEntry]:
    """The kept frames from first to last inclusive, checked against the caps."""
    index = {e.name: i for i, e in enumerate(entries)}
    positions = []
    for key, name in (("from", first), ("to", last)):
        if not isinstance(name, str) or parse_history_name(name) is None:
            raise VideoError(f"{key!r} must be a kept frame's name (as 'history' lists it), not {name!r}")
        if name not in index:
            raise VideoError(f"frame {name} is no longer kept (the history ring dropped it)", 404)
        positions.append(index[name])
    start, end = positions
    if start > end:
        raise VideoError("'from' must not be a later frame than 'to'")
    if end - start + 1 > MAX_EXPORT_FRAMES:
        raise VideoError(
            f"the range holds {end - start + 1} frames; at most {MAX_EXPORT_FRAMES} can be exported at once"
        )
    chosen = entries[start : end + 1]
    writers = list(dict.fromkeys(e.writer for e in chosen))
    if len(writers) > 1:  # a restart into the same run: two processes' steps do not make one video
        raise VideoError(
            f"the range holds frames of {len(writers)} trainer processes (writers {', '.join(writers)}: "
            "the run was restarted); export each process's frames separately"
        )
    return sorted(chosen, key=lambda e: e.frame_id)  # one writer's frames, in the order it made them


def _export_size(run_dir: str, chosen: list[HistoryEntry]) -> tuple[int, int]:
    """The (even) width and height that fits every frame of the range, from their headers alone."""
    width = height = 0
    for entry in chosen:
        try:
            found = read_header(os.path.join(history_dir(run_dir), entry.name))
        except (FileNotFoundError, ValueError):
            continue
        if found is not None:
            width, height = max(width, found[0]["width"]), max(height, found[0]["height"])
    if width * height == 0:
        raise VideoError("every frame of the range was dropped by the history ring meanwhile", 404)
    if width * height > MAX_EXPORT_PIXELS:
        raise VideoError(f"frames of {width}x{height} pixels are too large to export "
                         f"(at most {MAX_EXPORT_PIXELS} pixels)")
    return width + width % 2, height + height % 2


def _unused_name(exports_dir: str, first_step: int, last_step: int) -> str:
    """A new export file name naming the steps and the time."""
    base = f"export-step{first_step}-{last_step}-{timestamp()}"
    name, n = f"{base}.mp4", 1
    while os.path.exists(os.path.join(exports_dir, name)):
        n += 1
        name = f"{base}-{n}.mp4"
    return name


def _frames_rgb(run_dir: str, chosen: list[HistoryEntry], width: int, height: int) -> Iterator[np.ndarray]:
    """Each kept frame still on disk as RGB, padded with black to width x height."""
    for entry in chosen:
        try:
            frame = read_history_frame(run_dir, entry.name)
        except (FileNotFoundError, ValueError):
            continue  # dropped by the ring meanwhile, or recycled mid-read
        if (frame.header.get("writer"), frame.header.get("frame_id")) != (entry.writer, entry.frame_id):
            continue  # the trainer reused the file for a newer frame
        rgb = pad_even(frame.rgb())
        if rgb.shape != (height, width, 3):
            canvas = np.zeros((height, width, 3), np.uint8)
            h, w = min(height, rgb.shape[0]), min(width, rgb.shape[1])
            canvas[:h, :w] = rgb[:h, :w]
            rgb = canvas
        yield rgb


def export_comment(chosen: list[HistoryEntry], fps: int) -> str:
    """An export's metadata comment: the rate it plays at, and the rate its frames were taken at."""
    span = chosen[-1].time - chosen[0].time if chosen else 0.0
    taken = f"{(len(chosen) - 1) / span:.3g} frames/s" if len(chosen) > 1 and span > 0 else "an unknown rate"
    return f"Beholder export: plays at {fps} frames/s; its frames were taken at {taken}"


def encode_export(run_dir: str, chosen: list[HistoryEntry], path: str, width: int, height: int,
                  fps: int, before_frame: Callable[[], None] | None = None) -> int:
    """Write the kept frames still on disk to an H.264 mp4 at path; how many frames were written.

    ``before_frame`` is called before each frame is sent (to stop the export by raising).
    """
    writer = open_mp4_writer(path, width, height, fps, export_comment(chosen, fps), live=False)
    written = 0
    try:
        for rgb in _frames_rgb(run_dir, chosen, width, height):
            if before_frame is not None:
                before_frame()
            writer.send(np.ascontiguousarray(rgb).tobytes())
            written += 1
    finally:
        writer.close()
    return written
