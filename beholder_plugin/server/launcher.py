"""``beholder-tensorboard``: TensorBoard, able to read logdirs whose scheme TensorFlow lacks (``s3://``).

With TensorFlow installed, TensorBoard reads its logdir through TensorFlow's
file systems, which know ``gs://`` but not ``s3://`` (that needs
tensorflow-io), so ``tensorboard --logdir s3://bucket/logs`` refuses to
start ("Unsupported filename scheme 's3'"). This command runs the same
TensorBoard with every argument passed through, after putting a file-system
layer under it for the logdir schemes TensorFlow lacks:

- ``tf.io.gfile``'s functions send paths of those schemes to TensorBoard's
  own pure-Python gfile (``tensorboard.compat.tensorflow_stub``: boto3 for
  ``s3://``, fsspec for any other scheme fsspec knows), and every other path
  to TensorFlow as before;
- TensorBoard's event-file reader reads such files through the same layer;
- ``--load_fast=false`` is added unless given: the fast data server cannot
  read those schemes either.

Without TensorFlow, or when TensorFlow reads every scheme given, it is
plain ``tensorboard``. The Beholder tab reads the bucket itself (through
fsspec), as it does under ``tensorboard``.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
# tf.io.gfile functions TensorBoard calls, sent to the layer for the schemes TensorFlow lacks.
_GFILE_FUNCTIONS = ("GFile", "exists", "glob", "isdir", "listdir", "makedirs", "stat", "walk")
# Schemes TensorFlow reads without plugins (when it cannot say which it has registered).
_TF_SCHEMES = frozenset(("", "file", "gs", "ram"))


def logdir_schemes(argv: Sequence[str]) -> list[str]:
    """The URL schemes of the --logdir and --logdir_spec arguments (``["s3"]``), local paths left out."""
    values, take = [], False
    for arg in argv:
        if take:
            values.append(arg)
            take = False
        elif arg in ("--logdir", "--logdir_spec"):
            take = True
        elif arg.startswith(("--logdir=", "--logdir_spec=")):
            values.append(arg.split("=", 1)[1])
    found = [m.group(1).lower() for value in values for m in _SCHEME.finditer(value)]
    return [s for s in dict.fromkeys(found) if s != "file"]


def tensorflow_schemes() -> frozenset[str] | None:
    """The schemes the installed TensorFlow reads, or None without TensorFlow."""
    try:
        import tensorflow as tf
    except ImportError:
        return None
    registered = getattr(tf.io.gfile, "get_registered_schemes", None)
    try:
        return frozenset(registered()) if registered is not None else _TF_SCHEMES
    except Exception:  # an older or odd build: assume the built-in ones
        return _TF_SCHEMES


def _scheme_of(path: Any) -> str:
    """A path's URL scheme, lower case ("" for a local path)."""
    match = _SCHEME.match(path.decode() if isinstance(path, bytes) else str(path))
    return match.group(1).lower() if match else ""


def _dispatch(original: Callable, layer: Callable, schemes: frozenset[str]) -> Callable:
    """A gfile function calling `layer` for paths of these schemes and `original` for others."""

    @functools.wraps(original)
    def call(path: Any, *args: Any, **kwargs: Any) -> Any:
        chosen = layer if _scheme_of(path) in schemes else original
        return chosen(path, *args, **kwargs)

    return call


def install_layer(schemes: Sequence[str]) -> None:
    """Have TensorBoard (with TensorFlow) read paths of these schemes through its pure-Python gfile."""
    import tensorflow as tf
    from tensorboard.compat.tensorflow_stub.io import gfile as stub

    wanted = frozenset(schemes)
    for name in _GFILE_FUNCTIONS:
        original, layer = getattr(tf.io.gfile, name, None), getattr(stub, name, None)
        if original is not None and layer is not None and not hasattr(original, "_beholder_layer"):
            wrapped = _dispatch(original, layer, wanted)
            wrapped._beholder_layer = True
            setattr(tf.io.gfile, name, wrapped)
    registered = getattr(tf.io.gfile, "get_registered_schemes", None)
    if registered is not None and not hasattr(registered, "_beholder_layer"):
        # TensorBoard checks the logdir's scheme against this list before it starts.
        def schemes_read() -> list[str]:
            return [*registered(), *(s for s in wanted if s not in registered())]

        schemes_read._beholder_layer = True
        tf.io.gfile.get_registered_schemes = schemes_read
    try:  # TensorBoard's event files: its stub reader goes through the layer
        from tensorboard.backend.event_processing import event_file_loader as loader
        from tensorboard.compat.tensorflow_stub import pywrap_tensorflow as stub_reader
    except ImportError:
        return
    make = getattr(loader, "_make_tf_record_iterator", None)
    reader = getattr(loader, "_PyRecordReaderIterator", None)
    if make is None or reader is None or hasattr(make, "_beholder_layer"):
        return

    def make_iterator(file_path: Any) -> Any:
        if _scheme_of(file_path) in wanted:
            return reader(stub_reader.PyRecordReader_New, file_path)
        return make(file_path)

    make_iterator._beholder_layer = True
    loader._make_tf_record_iterator = make_iterator


def prepare(argv: Sequence[str]) -> list[str]:
    """Install the layer where needed; the arguments to start TensorBoard with (--load_fast=false added)."""
    argv = list(argv)
    schemes = logdir_schemes(argv)
    readable = tensorflow_schemes() if schemes else None
    lacking = [s for s in schemes if readable is not None and s not in readable]
    if lacking:
        install_layer(lacking)
        if not any(a == "--load_fast" or a.startswith("--load_fast=") for a in argv):
            argv.append("--load_fast=false")
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """Run TensorBoard with these arguments (default: the command line's), over the layer where needed."""
    args = prepare(sys.argv[1:] if argv is None else argv)
    sys.argv = ["tensorboard", *args]
    from tensorboard.main import run_main

    return run_main() or 0


if __name__ == "__main__":
    sys.exit(main())
