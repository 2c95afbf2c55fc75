"""The run's settings as the trainer reads them: a typed copy of config.json, and its two readers.

``RunSettings`` is the trainer's view of a validated config (attributes,
not dict look-ups). ``LocalSettings`` looks at config.json's ``stat()`` when
asked; ``RemoteSettings`` has a background thread poll the object's metadata
and hands a changed config over at the next ``poll()``, so that the training
thread never waits on the network. Both report a change through the
``on_change(old, new)`` callback given to them.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from beholder_plugin.protocol import names
from beholder_plugin.protocol.remote_files import identity_of_info
from beholder_plugin.protocol.runfiles import load_config, write_config
from beholder_plugin.protocol.settings import DEFAULT_CONFIG, MODES, VALUES, ConfigError

logger = logging.getLogger("beholder")

# Remote logdirs: the history ring's caps (the dashboard's history settings apply below them).
REMOTE_HISTORY_MB = 32
REMOTE_HISTORY_SECONDS = 60


@dataclass(frozen=True)
class RunSettings:
    """One validated config.json, typed; ``shown`` is the dashboard's Values choice (key ``"values"``)."""

    shown: str
    mode: str
    scaling: str
    window_size: int
    fps: int
    is_recording: bool
    show_all: bool
    colormap: str
    history_mb: int
    history_seconds: int
    filter: str
    section_size: str

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RunSettings:
        """The settings of a validated config dict (protocol/settings.py's keys)."""
        return cls(
            shown=config["values"], mode=config["mode"], scaling=config["scaling"],
            window_size=config["window_size"], fps=config["FPS"], is_recording=config["is_recording"],
            show_all=config["show_all"], colormap=config["colormap"], history_mb=config["history_mb"],
            history_seconds=config["history_seconds"], filter=config["filter"],
            section_size=config["section_size"],
        )

    @classmethod
    def starting(cls, shown: str | None = None, mode: str | None = None) -> RunSettings:
        """The defaults, with this Values choice and Mode (None: the default's); ValueError for an unknown
        one."""
        if shown is not None and shown not in VALUES:
            raise ValueError(f"values must be one of {', '.join(VALUES)}, not {shown!r}")
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        settings = cls.from_config(DEFAULT_CONFIG)
        return settings.replace(**{k: v for k, v in (("shown", shown), ("mode", mode)) if v is not None})

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        """These settings as config.json's dict (what the views and config.json take); do not change it."""
        return {
            "values": self.shown, "mode": self.mode, "scaling": self.scaling,
            "window_size": self.window_size, "FPS": self.fps, "is_recording": self.is_recording,
            "show_all": self.show_all, "colormap": self.colormap, "history_mb": self.history_mb,
            "history_seconds": self.history_seconds, "filter": self.filter, "section_size": self.section_size,
        }

    @property
    def interval(self) -> float:
        """Seconds between frames at this frame rate (inf when paused)."""
        return 1.0 / self.fps if self.fps > 0 else float("inf")

    def restarts_window(self, old: RunSettings) -> bool:
        """Whether changing from old starts the variance window afresh (as in the original)."""
        return (old.shown, old.mode, old.show_all) != (self.shown, self.mode, self.show_all)

    def replace(self, **changes: Any) -> RunSettings:
        """A copy with these fields changed."""
        return dataclasses.replace(self, **changes)


class SettingsReader:
    """What both readers share: creating, reading and choosing config.json, and applying a change.

    Args:
      logdir: the run.
      files: the run's file backend (protocol.files).
      settings: the settings in force until config.json is read.
      on_change: called with (old, new) when settings in force change (on the training thread).
      warn_once: ``warn_once(key, message, *args)``, the run's one-time warnings.
      may_write: whether writing is allowed now (False while the store backs off after a failed write).
      write_failed: called with the OSError of a failed config.json write.
    """

    def __init__(self, logdir: str, files: Any, settings: RunSettings,
                 on_change: Callable[[RunSettings, RunSettings], None],
                 warn_once: Callable[..., None], may_write: Callable[[], bool],
                 write_failed: Callable[[OSError], None]) -> None:
        self.logdir = logdir
        self.path = names.config_path(logdir)
        self.settings = settings
        self._files = files
        self._on_change = _weak(on_change)
        self._warn_once = warn_once
        self._may_write = may_write
        self._write_failed = write_failed
        self._stat: tuple | None = None  # the identity of the config.json last read
        self._said: tuple[str, ...] = ()  # what the last read of config.json logged

    def poll(self) -> RunSettings:
        """The settings update() uses, after taking any change (never waits on a remote store)."""
        raise NotImplementedError

    def start(self) -> None:
        """Read (or create) config.json now, so the settings are known before the first update()."""
        self.poll()

    def close(self) -> None:
        """Stop looking at config.json."""

    def choose(self, **changes: str) -> None:
        """Write these choices (``shown=``, ``mode=``) into config.json over the ones there (a warning if it
        cannot)."""
        chosen = self.settings.replace(**changes)
        try:
            write_config(self.logdir, chosen.config)
        except OSError as exc:
            self._warn_once("values", "Beholder: cannot write %s (%s); the settings stay %s", self.path, exc,
                            ", ".join(f"{key} {getattr(self.settings, key)!r}" for key in changes))
            return
        self._stat = None  # read back at the next look, as written
        self._chosen(chosen)

    def _chosen(self, settings: RunSettings) -> None:
        """Put the settings just written into force."""
        self.apply(settings)

    def apply(self, settings: RunSettings) -> None:
        """Put these settings in force and report the change."""
        old, self.settings = self.settings, settings
        self._on_change(old, settings)

    def _create(self) -> None:
        """Write config.json when it is missing: the defaults on a first run, else the settings in force.

        Settings in force are kept when the file (or the whole plugin
        directory) is deleted while training runs, so that cleaning up a
        logdir does not silently reset what the user chose. On a read-only
        logdir this is tried again only after the write back-off.
        """
        if not self._may_write():
            return
        try:
            write_config(self.logdir, self.settings.config)
        except OSError as exc:
            self._write_failed(exc)
            return
        self._stat = None

    def _read(self) -> RunSettings | None:
        """config.json's settings, or None (logged) when it is unreadable or invalid."""
        try:
            config, problems = load_config(self.logdir)
        except ConfigError as exc:
            self._say([f"{self.path} is unreadable or invalid ({exc}); keeping the last good settings"])
            return None
        self._say([f"{self.path}: {problem}" for problem in problems])
        return RunSettings.from_config(config)

    def _say(self, lines: list[str]) -> None:
        """Log what a read of config.json found, unless the last read found the same (a file rewritten
        over and over with one mistake logs it once)."""
        said = tuple(lines)
        if said != self._said:
            for line in lines:
                logger.warning("Beholder: %s", line)
        self._said = said


class LocalSettings(SettingsReader):
    """Reads a local config.json again only when its ``stat()`` changes."""

    def poll(self) -> RunSettings:
        """The settings in force, re-read when config.json's stat changed, created when it is missing."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._create()
            return self.settings
        except OSError as exc:
            self._warn_once("stat", "Beholder: cannot stat %s (%s)", self.path, exc)
            return self.settings
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if key != self._stat:
            self._stat = key
            settings = self._read()
            if settings is not None:
                self.apply(settings)
        return self.settings


class RemoteSettings(SettingsReader):
    """Polls a remote config.json's metadata on a background thread; poll() applies what it read.

    ``poll()`` returns the settings with the remote caps applied (``max_fps``
    and the history ring's REMOTE_HISTORY_MB / REMOTE_HISTORY_SECONDS).
    """

    def __init__(self, *args: Any, poll_seconds: float, max_fps: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.poll_seconds = poll_seconds
        self.max_fps = max_fps
        self._pending: RunSettings | None = None  # read by the poller thread, applied by poll()
        self._lock = threading.Lock()
        self._poller_pid: int | None = None
        self._stop = threading.Event()
        self._effective = self.capped(self.settings)

    def capped(self, settings: RunSettings) -> RunSettings:
        """The settings update() uses on a remote logdir: FPS and the history ring capped."""
        return settings.replace(
            fps=min(settings.fps, self.max_fps),
            history_mb=min(settings.history_mb, REMOTE_HISTORY_MB),
            history_seconds=min(settings.history_seconds, REMOTE_HISTORY_SECONDS),
        )

    def start(self) -> None:
        """One look now (the settings are known before the first update()), then start the poller."""
        self.look()
        self.poll()

    def poll(self) -> RunSettings:
        """Apply a config the poller thread read (no network here); start the poller if needed."""
        if self._pending is not None:
            with self._lock:  # taken and cleared at once: a newer one is never lost
                pending, self._pending = self._pending, None
            self.apply(pending)
            self._effective = self.capped(self.settings)
        if self._poller_pid != os.getpid():  # first call, or a forked child without the thread
            self._start_poller()
        return self._effective

    def close(self) -> None:
        """Stop the poller thread."""
        self._stop.set()

    def look(self) -> None:
        """One look at config.json's metadata: read it when it changed, create it when it is missing."""
        try:
            info = self._files.info(self.path)
        except OSError as exc:
            self._warn_once(
                "poll",
                "Beholder: cannot reach %s (%s); keeping the settings in force and trying again every %g s",
                self.path, exc, self.poll_seconds,
            )
            return
        if info is None:
            self._create()
            return
        key = identity_of_info(info)
        if key != self._stat:
            self._stat = key
            settings = self._read()
            if settings is not None:  # read on the poller thread: the training thread applies it
                self._hand_over(settings)

    def _chosen(self, settings: RunSettings) -> None:
        """Hand the settings just written to poll(), which applies them now."""
        self._hand_over(settings)
        self.poll()

    def _hand_over(self, settings: RunSettings) -> None:
        """Leave settings for the training thread's next poll()."""
        with self._lock:
            self._pending = settings

    def _start_poller(self) -> None:
        """Start the thread that looks at config.json's metadata every poll_seconds."""
        self._poller_pid = os.getpid()
        self._stop = threading.Event()
        thread = threading.Thread(
            target=_poll_loop, args=(weakref.ref(self), self._stop, self.poll_seconds),
            name="beholder-config", daemon=True,
        )
        thread.start()


def reader_for(logdir: str, files: Any, settings: RunSettings,
               on_change: Callable[[RunSettings, RunSettings], None], warn_once: Callable[..., None],
               may_write: Callable[[], bool], write_failed: Callable[[OSError], None],
               poll_seconds: float, max_fps: float | None) -> SettingsReader:
    """The run's settings reader: remote when the file backend is (see SettingsReader for the arguments)."""
    args = (logdir, files, settings, on_change, warn_once, may_write, write_failed)
    if files.remote:
        return RemoteSettings(*args, poll_seconds=poll_seconds, max_fps=max_fps)
    return LocalSettings(*args)


def positive(value: float, name: str) -> float:
    """value as a float; ValueError unless it is a finite number above 0."""
    number = float(value)
    if not 0 < number < float("inf"):
        raise ValueError(f"{name} must be a number of seconds or frames per second above 0, not {value!r}")
    return number


def _poll_loop(ref: weakref.ref, stop: threading.Event, interval: float) -> None:
    """The remote config poller: one metadata request per interval until stopped or the reader is gone."""
    while not stop.wait(interval):
        reader = ref()
        if reader is None:
            return
        try:
            reader.look()
        except Exception:  # pragma: no cover - never let the poller die silently
            logger.exception("Beholder: polling %s failed", reader.path)
        del reader


def _weak(callback: Callable) -> Callable:
    """A bound method held weakly (a reader never keeps its Beholder alive); other callables as they are."""
    if not hasattr(callback, "__self__"):
        return callback
    method = weakref.WeakMethod(callback)

    def call(*args: Any) -> None:
        target = method()
        if target is not None:
            target(*args)

    return call
