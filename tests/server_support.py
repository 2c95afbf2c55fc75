"""Helpers for the server and browser tests: plugin instances, trainer processes, TensorBoard, Chromium.

Run as a script it is the test trainer: ``python tests/server_support.py RUN_DIR [RUN_DIR ...]``
updates one Beholder per run directory with NumPy arrays (and a 2-D frame)
until it is killed or a file named ``stop`` appears next to the first run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from support import set_config

from beholder_plugin.protocol.layout import compact_map
from beholder_plugin.protocol.runfiles import read_frame_file
from beholder_plugin.server.frame_data import DATA_MAGIC

ROOT = Path(__file__).resolve().parent.parent
# Where TensorBoard mounts the plugin's routes.
BASE = "/data/plugin/beholder"
PYTHON = sys.executable
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Marks of every test that drives Chromium: slow, and skipped (saying why) without Debian's chromium.
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium"),
]

# The trainer's 2-D frame (update(frame=...)); its arrays are a kernel, a tiny-range copy
# (that "all sections" scaling turns black), a bias and a 1500-long vector (show_all widens).
TRAINER_FRAME_SHAPE = (60, 90)


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
             message: str = "condition") -> Any:
    """Poll predicate until it returns something truthy; raise AssertionError after timeout s."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:  # noqa: BLE001 - the condition may fail until it holds
            last_exc = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message} (last error: {last_exc})")


def plugin_client(logdir: str | os.PathLike) -> tuple[Any, Any]:
    """A real BeholderPlugin for logdir, mounted in TensorBoard's WSGI app, and a werkzeug client."""
    from tensorboard.backend import application
    from tensorboard.plugins import base_plugin
    from werkzeug.test import Client

    from beholder_plugin.server.plugin import BeholderPlugin

    plugin = BeholderPlugin(base_plugin.TBContext(logdir=str(logdir)))
    app = application.TensorBoardWSGI([plugin])
    return plugin, Client(app)


def make_frames(run_dir: str | os.PathLike, count: int = 1, **config: Any) -> None:
    """Write `count` frames of small NumPy arrays into a run with a real Beholder."""
    import numpy as np

    from beholder_plugin import Beholder

    set_config(run_dir, **{"values": "arrays", "mode": "current", "FPS": 30, **config})
    beholder = Beholder(run_dir, strict=True)
    rng = np.random.default_rng(len(str(run_dir)))
    for i in range(count):
        if i:
            time.sleep(1 / 30 + 0.005)  # the FPS throttle
        assert beholder.update(arrays={"w": rng.normal(size=(8, 6)), "b": rng.normal(size=6)})
        beholder.flush()
    beholder.close()


def read_config_file(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The raw config.json of a run."""
    from beholder_plugin.protocol.runfiles import config_path

    with open(config_path(run_dir), encoding="utf-8") as f:
        return json.load(f)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET a URL; (status, body), with HTTP errors returned rather than raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class TensorBoard:
    """A real `tensorboard` process serving a logdir on 127.0.0.1."""

    def __init__(self, logdir: str | os.PathLike, log_path: str | os.PathLike,
                 extra_args: tuple[str, ...] = (), port: int | None = None):
        self.logdir = str(logdir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = str(log_path)
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> TensorBoard:
        """Start TensorBoard and wait until the Beholder plugin answers /ping."""
        tb = shutil.which("tensorboard", path=os.path.dirname(PYTHON)) or "tensorboard"
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [tb, "--logdir", self.logdir, "--host", "127.0.0.1", "--port", str(self.port),
             *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tensorboard exited; see {self.log_path}")
            return http_get(self.url + "/data/plugin/beholder/ping", timeout=2)[0] == 200

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return self
            except (OSError, urllib.error.URLError):
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"tensorboard exited; log: {Path(self.log_path).read_text()}")
            time.sleep(0.2)
        raise RuntimeError(f"tensorboard did not answer within {timeout} s; see {self.log_path}")

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Trainer:
    """A trainer subprocess (this file run as a script) writing frames into run directories."""

    def __init__(self, *run_dirs: str | os.PathLike, delay: float = 0.02, log_path: str | None = None):
        self.run_dirs = [str(d) for d in run_dirs]
        self.delay = delay
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> Trainer:
        """Start it; returns once it is running (frames follow within a second or so)."""
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [PYTHON, str(Path(__file__).resolve()), "--delay", str(self.delay), *self.run_dirs],
            stdout=out, stderr=subprocess.STDOUT,
        )
        if self.log_path:
            out.close()
        return self

    def stop(self) -> None:
        """Ask it to stop (stop file), so recordings are finished; kill it if it does not."""
        if self.proc is None or self.proc.poll() is not None:
            return
        Path(self.run_dirs[0], "stop").touch()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        with contextlib.suppress(FileNotFoundError):
            Path(self.run_dirs[0], "stop").unlink()


@contextlib.contextmanager
def chromium_page(viewport: tuple[int, int] = (1400, 1000)) -> Iterator[Any]:
    """A Playwright page in Debian's headless Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            yield page
        finally:
            browser.close()


@contextlib.contextmanager
def beholder_tab(logdir: Path) -> Iterator[tuple[TensorBoard, Any, Any]]:
    """TensorBoard on logdir and its Beholder tab in Chromium: (tb, page, frame), frame being the iframe."""
    tb = TensorBoard(logdir, logdir.parent / "tensorboard.log")
    try:
        tb.start()
        with chromium_page() as page:
            page.goto(tb.url + "/#beholder")
            yield tb, page, beholder_frame(page)
    finally:
        tb.stop()


@contextlib.contextmanager
def live_dashboard(logdir: Path) -> Iterator[dict[str, Any]]:
    """A trainer writing the run <logdir>/live (magma, FPS 30), TensorBoard on logdir, and its Beholder tab.

    Yields logdir, live (the run), tb, page and frame (the dashboard's iframe).
    """
    live = logdir / "live"
    set_config(live, values="arrays", mode="current", FPS=30, colormap="magma")
    trainer = Trainer(live, log_path=str(logdir.parent / "trainer.log")).start()
    tb = TensorBoard(logdir, logdir.parent / "tensorboard.log")
    try:
        tb.start()
        wait_for(lambda: read_frame_file(live), timeout=60, message="the trainer's first frame")
        with chromium_page() as page:
            page.goto(tb.url + "/#beholder")
            yield {"logdir": logdir, "live": live, "tb": tb, "page": page, "frame": beholder_frame(page)}
    finally:
        trainer.stop()
        tb.stop()


def dashboard_stats(frame: Any) -> dict:
    """The dashboard's counters (window.beholder in the iframe), with the number of draws it keeps."""
    return frame.evaluate("({...window.beholder, drawn: window.beholder.drawn.length})")


def frames_after(frame: Any, count: int = 3, timeout: float = 30) -> dict:
    """Wait until the dashboard has drawn `count` more frames; its counters then."""
    start = dashboard_stats(frame)["framesReceived"]
    return wait_for(lambda: (s := dashboard_stats(frame))["framesReceived"] >= start + count and s,
                    timeout=timeout, message=f"{count} new frames")


def shoot(locator: Any, name: str) -> None:
    """Save a screenshot of one element under test-artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    locator.screenshot(path=str(ARTIFACTS / name))


def open_run(session: dict[str, Any], run: str) -> Any:
    """Open the tab of a module's TensorBoard ({"page", "url"}) on a run through the URL, as a shared link
    does; the dashboard's iframe (also kept as session["frame"])."""
    page = session["page"]
    page.goto("about:blank")
    page.goto(session["url"] + f"/#beholder&run={run}")
    frame = session["frame"] = beholder_frame(page)
    wait_for(lambda: frame.evaluate("window.beholder.run") == run
             and frame.evaluate("window.beholder.framesReceived"), message=f"the run {run} shown")
    return frame


def beholder_frame(page: Any, timeout: float = 60.0) -> Any:
    """The Beholder dashboard's iframe inside TensorBoard's page, once its module has rendered."""
    def find() -> Any:
        element = page.query_selector('iframe[src*="plugin_entry.html?name=beholder"]')
        frame = element.content_frame() if element else None
        if frame is not None and frame.query_selector("#beholder-root"):
            return frame
        return None

    return wait_for(find, timeout=timeout, interval=0.2, message="the Beholder iframe")


def parse_payload(body: bytes) -> tuple[dict, np.ndarray, np.ndarray]:
    """The JSON description, the (256, 3) palette and the flat indices block of a frame-data answer."""
    assert body[:8] == DATA_MAGIC
    length = int.from_bytes(body[8:12], "little")
    doc = json.loads(body[12 : 12 + length])
    rest = np.frombuffer(body, np.uint8, offset=12 + length)
    return doc, rest[:768].reshape(256, 3), rest[768:]


def expand(doc: dict, indices: np.ndarray) -> np.ndarray:
    """The frame's (H, W) palette indices rebuilt from the payload as the browser does (0 elsewhere)."""
    out = np.zeros((doc["height"], doc["width"]), np.uint8)
    for rec in doc["sections"]:
        (src_h, src_w), (rows, cols) = rec["source"], rec["compact"]
        small = indices[rec["offset"] : rec["offset"] + rows * cols].reshape(rows, cols)
        widened = small[:, compact_map(src_w, doc["width"])]
        out[rec["top"] : rec["top"] + rec["height"]] = widened[compact_map(src_h, rec["height"])]
    return out


# ---------------------------------------------------------------- the trainer script


def _trainer_main(argv: list[str]) -> int:
    """Update a Beholder per run directory with drifting NumPy arrays until stopped."""
    import argparse

    import numpy as np

    from beholder_plugin import Beholder

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--delay", type=float, default=0.02)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    beholders = [Beholder(run, strict=True) for run in args.runs]
    kernel = rng.normal(size=(40, 30)).astype(np.float32)
    step = 0
    stop = Path(args.runs[0], "stop")
    while not stop.exists():
        step += 1
        kernel += rng.normal(scale=0.1, size=kernel.shape).astype(np.float32)
        arrays = {
            "dense/kernel": kernel,
            # A range of ~1e-3 sitting at the global minimum: black under "all sections".
            "tiny/kernel": kernel.min() + (kernel[:10] - kernel.min()) * 1e-4,
            "dense/bias": kernel[0],
            "wide/vector": np.sin(np.arange(1500) / 50.0 + step * 0.1),
        }
        image = np.add.outer(np.arange(TRAINER_FRAME_SHAPE[0]), np.arange(TRAINER_FRAME_SHAPE[1]))
        for i, beholder in enumerate(beholders):
            # Later runs show fewer sections, so their frames are a different height.
            shown = dict(list(arrays.items())[: len(arrays) - i]) if i else arrays
            beholder.update(arrays=shown, frame=(image + step) % 97)
        time.sleep(args.delay)
    for beholder in beholders:
        beholder.close()
    return 0


if __name__ == "__main__":
    sys.exit(_trainer_main(sys.argv[1:]))
