"""The trainer side: Beholder.update() renders what the dashboard asks for and writes it to the run."""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import sys
import time
import weakref
from typing import Any

import numpy as np

from beholder_plugin.protocol import runfiles as storage
from beholder_plugin.protocol.layout import RenderError
from beholder_plugin.protocol.settings import DEFAULT_CONFIG, ConfigError
from beholder_plugin.trainer import sources as adapters
from beholder_plugin.trainer.colormaps import palette_for
from beholder_plugin.trainer.recording import Recorder
from beholder_plugin.trainer.views.placeholder import placeholder_frame
from beholder_plugin.trainer.views.render import Renderer, scale_frame

logger = logging.getLogger("beholder")

_LIVE: weakref.WeakSet = weakref.WeakSet()
# After a failed write (read-only or full disk) frames are not rendered for this long.
WRITE_RETRY_SECONDS = 5.0
# A user frame larger than this on a side is shown downsampled by a whole stride.
MAX_FRAME_SIDE = 4096
# A change of any of these starts the variance window afresh, as in the original.
_HISTORY_KEYS = ("values", "mode", "show_all")


class Beholder:
    """Writes frames of a run's arrays, variables or images for the TensorBoard Beholder tab.

    Args:
      logdir: the run directory; files go to ``<logdir>/plugins/beholder/``.
      variables: what "trainable variables" means for this run: a Keras model
        or ``tf.Module`` (anything with ``trainable_variables``), a torch module
        (``named_parameters()``), or a list or dict of arrays. Can also be
        given per call to ``update()``.
      strict: re-raise errors from ``update()`` instead of logging the first
        one and carrying on.

    Use it as a context manager, or call ``close()``, to finish a recording;
    recordings are also finished at interpreter exit.
    """

    def __init__(self, logdir: str | os.PathLike, variables: Any = None, strict: bool = False):
        self.logdir = os.fspath(logdir)
        self.directory = storage.plugin_dir(self.logdir)
        self.variables = variables
        self.strict = strict
        self.failures = 0
        self.write_errors = 0
        self.frames_written = 0
        self._write_retry_at = float("-inf")
        self._renderer = Renderer()
        self._recorder = Recorder(self.directory)
        self._config = dict(DEFAULT_CONFIG)
        self._config_path = storage.config_path(self.logdir)
        self._config_stat: tuple | None = None
        self._last_frame_time = float("-inf")
        self._writer_id = secrets.token_hex(6)
        self._step = 0
        self._warned: set[str] = set()
        storage.remove_stale_temp_files(self.logdir)
        _LIVE.add(self)

    # ------------------------------------------------------------ public

    @property
    def config(self) -> dict[str, Any]:
        """The settings in force (the last good config.json)."""
        return dict(self._config)

    def update(
        self,
        arrays: Any = None,
        frame: Any = None,
        variables: Any = None,
        session: Any = None,
    ) -> bool:
        """Render and write a frame if one is due; returns True when a frame was written.

        Args:
          arrays: a list/tuple (sections named by index) or dict (named by key)
            of arrays: NumPy, tf.Tensor/Variable, torch tensor, JAX array or
            nested lists, any numeric or bool dtype.
          frame: a 2-D array (min-max scaled, shown in gray), an H x W x 3
            uint8 RGB image, or a zero-argument callable returning either,
            called only while "frames" is selected.
          variables: overrides the constructor's ``variables`` for this call.
          session: a TF1 ``tf.compat.v1.Session``; trainable variables are then
            that graph's ``tf.compat.v1.trainable_variables()``.

        Never raises into the training loop unless ``strict=True``: the first
        failure is logged with its traceback, later ones are counted in
        ``failures``.
        """
        self._step += 1
        try:
            return self._update(arrays, frame, variables, session)
        except Exception:
            if self.strict:
                raise
            self.failures += 1
            if self.failures == 1:
                logger.exception(
                    "Beholder.update() failed; training goes on and later failures are only "
                    "counted (see Beholder.failures). Pass strict=True to raise instead."
                )
            return False

    def close(self) -> None:
        """Finish any recording in progress."""
        self._recorder.close()
        _LIVE.discard(self)

    def __enter__(self) -> Beholder:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ------------------------------------------------------------ config

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    def _poll_config(self) -> dict[str, Any]:
        """The config in force, re-read only when config.json's stat changes."""
        try:
            st = os.stat(self._config_path)
        except FileNotFoundError:
            self._create_config()
            return self._config
        except OSError as exc:
            self._warn_once("stat", "Beholder: cannot stat %s (%s)", self._config_path, exc)
            return self._config
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if key != self._config_stat:
            self._config_stat = key
            self._reload_config()
        return self._config

    def _create_config(self) -> None:
        """Write config.json when it is missing: the defaults on a first run, else the settings in force.

        Settings in force are kept when the file (or the whole plugin
        directory) is deleted while training runs, so that cleaning up a
        logdir does not silently reset what the user chose. On a read-only
        logdir this is tried again only after the write back-off.
        """
        if time.monotonic() < self._write_retry_at:
            return
        try:
            storage.write_config(self.logdir, self._config)
        except OSError as exc:
            self._write_failed(exc)
            return
        self._config_stat = None

    def _reload_config(self) -> None:
        try:
            config, problems = storage.load_config(self.logdir)
        except ConfigError as exc:
            logger.warning(
                "Beholder: %s is unreadable or invalid (%s); keeping the last good settings",
                self._config_path,
                exc,
            )
            return
        for problem in problems:
            logger.warning("Beholder: %s: %s", self._config_path, problem)
        self._apply_config(config)

    def _apply_config(self, config: dict[str, Any]) -> None:
        old = self._config
        if any(old[k] != config[k] for k in _HISTORY_KEYS):
            self._renderer.clear_history()
        if old["is_recording"] and not config["is_recording"]:
            self._recorder.close()
        self._config = config

    # ------------------------------------------------------------ frames

    def _update(self, arrays: Any, frame: Any, variables: Any, session: Any) -> bool:
        _refuse_inside_tf_function()
        config = self._poll_config()
        fps = config["FPS"]
        if fps == 0:
            return False
        now = time.monotonic()
        if now - self._last_frame_time < 1.0 / fps or now < self._write_retry_at:
            return False
        self._last_frame_time = now

        values = config["values"]
        sections: list[dict] = []
        row_index = None
        if values == "frames" and frame is not None:
            pixels, palette = self._user_frame(frame)
        else:
            missing = values == "frames" or (values == "arrays" and arrays is None)
            rendered = None if missing else self._render_values(values, arrays, variables, session, config)
            if rendered is None:  # the selected input was not passed: say what to pass
                pixels, palette = placeholder_frame(values), palette_for("grayscale")
                values = "placeholder"
            else:
                pixels, row_index = rendered.rows, rendered.row_index
                palette, sections = rendered.palette, rendered.sections

        if row_index is None:
            frame = storage.Frame(pixels, palette)
        else:
            frame = storage.Frame(palette=palette, rows=pixels, row_index=row_index)
        try:
            self._write(frame, sections, values)
        except OSError as exc:
            self._write_failed(exc)
            return False
        self._write_retry_at = float("-inf")
        if config["is_recording"]:
            self._recorder.append(frame.rgb())
        return True

    def _render_values(self, values: str, arrays: Any, variables: Any, session: Any, config: dict):
        """Render arrays or trainable variables; None when there is nothing to render."""
        if values == "arrays":
            return self._render_named(adapters.named_arrays(arrays), config)
        if session is not None:
            from beholder_plugin.trainer.sources import tf_tensors as tf_support

            names, shapes = tf_support.session_variable_shapes(session)
            plans = self._renderer.plans(shapes, config["show_all"], names)
            compacts = tf_support.session_fetch(session, plans)
            return self._renderer.render(names, plans, compacts, config)
        source = variables if variables is not None else self.variables
        if source is None:
            return None
        return self._render_named(adapters.named_variables(source), config)

    def _render_named(self, named: list[tuple[str, Any]], config: dict):
        if not named:
            raise RenderError("there are no arrays to show (an empty list or dict was passed)")
        names = [name for name, _ in named]
        prepared = [adapters.prepare(obj, name) for name, obj in named]
        shapes = [adapters.shape_of(obj) for obj in prepared]
        plans = self._renderer.plans(shapes, config["show_all"], names)
        compacts = [
            adapters.fetch_compact(obj, plan, name) for name, obj, plan in zip(names, prepared, plans)
        ]
        return self._renderer.render(names, plans, compacts, config)

    def _user_frame(self, frame: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Pixels and palette for update(frame=...): gray for 2-D, as is for H x W x 3 uint8."""
        if callable(frame):
            frame = frame()
        image = adapters.to_numpy(frame, "frame")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim in (2, 3) and max(image.shape[:2]) > MAX_FRAME_SIDE:
            stride = -(-max(image.shape[:2]) // MAX_FRAME_SIDE)
            self._warn_once(
                "huge-frame",
                "Beholder: a %s frame is larger than %d px on a side; showing every %dth pixel",
                "x".join(map(str, image.shape)),
                MAX_FRAME_SIDE,
                stride,
            )
            image = image[::stride, ::stride]
        if image.ndim == 2:
            if image.size == 0:
                raise RenderError(f"frame: the image is empty (shape {image.shape})")
            return scale_frame(image), palette_for("grayscale")
        if image.ndim == 3 and image.shape[2] == 3:
            if image.dtype != np.uint8:
                raise RenderError(
                    f"frame: an H x W x 3 image must be uint8 RGB, not {image.dtype}; "
                    "pass a 2-D array to have it scaled"
                )
            if image.size == 0:
                raise RenderError(f"frame: the image is empty (shape {image.shape})")
            return image, None
        raise RenderError(f"frame: expected a 2-D array or an H x W x 3 uint8 image, got shape {image.shape}")

    def _write_failed(self, exc: OSError) -> None:
        """Note a failed write (read-only logdir, full disk): warn once, pause rendering, retry later."""
        self.write_errors += 1
        self._write_retry_at = time.monotonic() + WRITE_RETRY_SECONDS
        self._warn_once(
            "write",
            "Beholder: cannot write frames to %s (%s); training goes on, the previous frame stays "
            "readable, and Beholder tries again every %g s",
            self.directory,
            exc,
            WRITE_RETRY_SECONDS,
        )

    def _write(self, frame: storage.Frame, sections: list[dict], values: str) -> None:
        """Write section info, then the frame (storage recreates a deleted directory)."""
        self.frames_written += 1
        frame.header = {
            "frame_id": self.frames_written,
            "writer": self._writer_id,
            "time": time.time(),
            "step": self._step,
            "values": values,
        }
        storage.write_section_info(self.logdir, sections, self.frames_written)
        storage.write_frame(self.logdir, frame)


def _refuse_inside_tf_function() -> None:
    """Raise when update() is being traced inside tf.function, where it would see no values.

    Checked on every call, not only when a frame is due, so that the mistake
    shows on the first trace rather than never. Costs nothing without TensorFlow.
    """
    if "tensorflow" not in sys.modules:
        return
    from beholder_plugin.trainer.sources import tf_tensors as tf_support

    if tf_support.in_tf_function():
        raise tf_support.SymbolicTensorError(
            "Beholder.update() was called inside tf.function, where Python runs only while "
            "tracing and sees no values: call update() outside it (return the tensors you want "
            "to see from the tf.function), or use BeholderCallback with model.fit()"
        )


@atexit.register
def _close_all() -> None:
    """Finish every recording still open when the interpreter exits."""
    for beholder in list(_LIVE):
        try:
            beholder.close()
        except Exception:  # pragma: no cover - best effort at exit
            logger.exception("Beholder: could not finish a recording at exit")
