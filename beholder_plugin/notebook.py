"""Beholder in Jupyter and Colab: the live dashboard, toolbar included, inline in a notebook.

``show(logdir)`` starts TensorBoard on the logdir (or reuses one already
serving it) and displays TensorBoard's page opened on the Beholder tab
(``#beholder``) in an iframe below the cell::

    import beholder_plugin.notebook
    beholder_plugin.notebook.show("logs")               # every run of logs/
    beholder_plugin.notebook.show("logs", run="run1")   # logs/run1 alone

Why TensorBoard itself rather than a small server of the plugin's routes:

- the dashboard is an ES module written for TensorBoard's plugin host page
  (its iframe, the ``/data/plugin/beholder/`` routes, the plugin listing), so
  a standalone server would have to reproduce that host page and follow its
  changes; with TensorBoard the notebook shows exactly the tab people use;
- ``tensorboard.manager`` (what ``%tensorboard`` uses) reuses a running
  TensorBoard started with the same arguments (by any cell or notebook
  while it runs), and records it where ``tensorboard.notebook.list()`` and
  ``%tensorboard`` see it;
- Colab's port proxy (``google.colab.kernel.proxyPort``) and Jupyter's
  ``TENSORBOARD_PROXY_URL`` (jupyter-server-proxy) are handled the way
  TensorBoard's own notebook support handles them.

The price is starting all of TensorBoard (a few seconds, once per logdir).
The ``tensorboard`` started is the one installed next to the kernel's Python
when there is one (so it has this plugin), else ``$TENSORBOARD_BINARY``, else
the first on ``PATH``.

With no server at all, a cell that ends with a ``Beholder`` object shows its
current frame as a still image (``Beholder.snapshot()``).
"""

from __future__ import annotations

import html
import importlib.util
import json
import os
import secrets
import shutil
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from typing import Any

# The dashboard's tab in TensorBoard's URL.
TAB_HASH = "beholder"
DEFAULT_HEIGHT = 800
START_TIMEOUT_SECONDS = 60.0
_ENV_LOCK = threading.Lock()


def show(logdir: str | os.PathLike, run: str | None = None, height: int = DEFAULT_HEIGHT,
         port: int | None = None) -> None:
    """Display the live Beholder dashboard of logdir (or of its run ``run``) below the cell.

    Starts TensorBoard, or reuses the one already serving the same logdir
    (and port). ``port=None`` lets TensorBoard take 6006 or the next free
    port. Outside a notebook, prints the URL to open instead (that TensorBoard
    keeps running after the script ends, as one started by %tensorboard does).
    """
    port_used = start(logdir, run=run, port=port)
    if not in_notebook():
        print(f"Beholder: open {local_url(port_used)} in a web browser (TensorBoard keeps running after "
              "this script; tensorboard.notebook.list() names its pid, to stop it).")
        return
    import IPython.display

    IPython.display.display(tab_markup(port_used, height))


def embed(logdir: str | os.PathLike, run: str | None = None, height: int = DEFAULT_HEIGHT,
          port: int | None = None) -> Any:
    """What show() displays, as an IPython.display.HTML, without displaying it."""
    return tab_markup(start(logdir, run=run, port=port), height)


def start(logdir: str | os.PathLike, run: str | None = None, port: int | None = None,
          timeout: float = START_TIMEOUT_SECONDS) -> int:
    """Start TensorBoard on logdir (or logdir/run), or reuse a running one; returns its port.

    Raises RuntimeError when TensorBoard cannot start, or when the one
    serving the port has no Beholder plugin.
    """
    import datetime

    from tensorboard import manager

    arguments = ["--logdir", logdir_for(logdir, run)]
    if port is not None:
        arguments += ["--port", str(int(port))]
    for _attempt in range(2):
        with _ENV_LOCK, BinaryOfThisPython():
            result = manager.start(arguments, timeout=datetime.timedelta(seconds=timeout))
        if isinstance(result, manager.StartReused) and not _alive(result.info.pid):
            _forget(result.info.pid)  # left behind by a TensorBoard that was killed: start a new one
            continue
        break
    port_used = _port_of(result)
    check_plugin(port_used)
    return port_used


def local_url(port: int) -> str:
    """The address of the Beholder tab of the TensorBoard on port, from this machine."""
    return f"http://localhost:{port}/#{TAB_HASH}"


def logdir_for(logdir: str | os.PathLike, run: str | None) -> str:
    """The --logdir to serve: logdir, or its run ``run``, absolute (URLs are kept as they are)."""
    base = os.fspath(logdir)
    if "://" in base:
        return base if not run else base.rstrip("/") + "/" + run.strip("/")
    return os.path.abspath(os.path.join(base, run) if run else base)


def _port_of(result: Any) -> int:
    """The port of a started or reused TensorBoard; RuntimeError saying why when there is none."""
    from tensorboard import manager

    if isinstance(result, (manager.StartLaunched, manager.StartReused)):
        return int(result.info.port)
    if isinstance(result, manager.StartFailed):
        output = (result.stderr or result.stdout or "").strip()[-2000:]
        raise RuntimeError(f"TensorBoard exited with code {result.exit_code}:\n{output}")
    if isinstance(result, manager.StartExecFailed):
        raise RuntimeError(f"could not run TensorBoard ({result.os_error}); set TENSORBOARD_BINARY to it")
    if isinstance(result, manager.StartTimedOut):
        raise RuntimeError(f"TensorBoard did not start in time; it may still be running as pid {result.pid}")
    raise RuntimeError(f"unexpected answer from tensorboard.manager.start: {result!r}")


class BinaryOfThisPython:
    """Within this block, TENSORBOARD_BINARY names the tensorboard next to this Python (if unset)."""

    def __enter__(self) -> None:
        """Set TENSORBOARD_BINARY when it is unset and this Python's environment has tensorboard."""
        self._set = False
        if os.environ.get("TENSORBOARD_BINARY"):
            return
        here = os.path.dirname(sys.executable)
        found = shutil.which("tensorboard", path=os.pathsep.join([here, os.path.join(here, "Scripts")]))
        if found:
            os.environ["TENSORBOARD_BINARY"] = found
            self._set = True

    def __exit__(self, *exc_info: Any) -> None:
        """Put the environment back."""
        if self._set:
            os.environ.pop("TENSORBOARD_BINARY", None)


def _alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but is not ours (EPERM), or no such check on this system
        return True
    return True


def _forget(pid: int) -> None:
    """Delete the record tensorboard.manager kept of a TensorBoard process that no longer exists."""
    path = os.path.join(tempfile.gettempdir(), ".tensorboard-info", f"pid-{pid}.info")
    try:
        os.unlink(path)
    except OSError:
        pass


def check_plugin(port: int) -> None:
    """RuntimeError unless the TensorBoard on port serves the Beholder plugin's routes."""
    url = f"http://localhost:{port}/data/plugin/beholder/ping"
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            if reply.status == 200:
                return
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            return  # answering, just not 200: let the dashboard say what is wrong
    except OSError:
        return  # not reachable from the kernel (a proxy in between): the browser may still reach it
    raise RuntimeError(
        f"the TensorBoard on port {port} has no Beholder plugin: install tensorboard-plugin-beholder "
        "in the environment of its `tensorboard` (or set TENSORBOARD_BINARY to one that has it)"
    )


def in_notebook() -> bool:
    """Whether this runs in an IPython kernel (Jupyter, Colab), where HTML can be displayed."""
    ipython_module = sys.modules.get("IPython")
    if ipython_module is None:
        return False
    shell = ipython_module.get_ipython()
    return shell is not None and (_in_colab() or shell.has_trait("kernel"))


def _in_colab() -> bool:
    """Whether this runs in Colab, whose browser reaches the VM's ports only through its proxy."""
    if "google.colab" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):  # no "google" package at all
        return False


def tab_markup(port: int, height: int) -> Any:
    """The cell output: an iframe of TensorBoard's Beholder tab, height pixels high."""
    import IPython.display

    element_id = f"beholder-{secrets.token_hex(6)}"
    if _in_colab():
        markup = _COLAB.format(id=html.escape(element_id), json_id=json.dumps(element_id),
                               port=int(port), height=int(height), tab=json.dumps(TAB_HASH))
    else:
        proxy = os.environ.get("TENSORBOARD_PROXY_URL")
        base = proxy.replace("%PORT%", str(int(port))).split("#")[0] if proxy else None
        markup = _JUPYTER.format(
            id=html.escape(element_id), json_id=json.dumps(element_id), height=int(height),
            src=html.escape(f"{base}#{TAB_HASH}" if base else local_url(port), quote=True),
            base=json.dumps(base or "/"), port=0 if base else int(port), tab=json.dumps(TAB_HASH),
        )
    return IPython.display.HTML(markup)


# Jupyter: the iframe points at localhost; the script moves it to the host the notebook page
# came from (as %tensorboard does), or to $TENSORBOARD_PROXY_URL, and opens the Beholder tab.
_JUPYTER = """<iframe id="{id}" class="beholder-notebook" src="{src}" width="100%" height="{height}"
  frameborder="0" title="Beholder"></iframe>
<script>
(() => {{
  const frame = document.getElementById({json_id});
  const url = new URL({base}, window.location);
  if ({port}) url.port = {port};
  url.hash = {tab};
  if (frame && url.href !== frame.src) frame.src = url.href;
}})();
</script>
"""

# Colab: the browser reaches the VM's port only through the URL proxyPort() gives.
_COLAB = """<div id="{id}" class="beholder-notebook"></div>
<script>
(async () => {{
  const url = new URL(await google.colab.kernel.proxyPort({port}, {{cache: true}}));
  url.searchParams.set("tensorboardColab", "true");
  url.hash = {tab};
  const frame = document.createElement("iframe");
  frame.src = url.href;
  frame.title = "Beholder";
  frame.setAttribute("width", "100%");
  frame.setAttribute("height", "{height}");
  frame.setAttribute("frameborder", "0");
  document.getElementById({json_id}).appendChild(frame);
}})();
</script>
"""

__all__ = ["embed", "local_url", "show", "start"]
