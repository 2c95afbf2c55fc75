"""A real notebook (nbclient, ipykernel): a Beholder shown as a still frame, and the live tab inline.

The kernel runs with a private TMPDIR, so the TensorBoards that
beholder_plugin.notebook starts are recorded in that TMPDIR's
``.tensorboard-info`` and nowhere else. Shutting the kernel down ends them;
the fixture then kills whichever of the recorded processes is still a
running tensorboard, and only those.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import http.server
import io
import json
import os
import re
import signal
import struct
import textwrap
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from server_support import BROWSER_MARKS, beholder_frame, chromium_page, http_get, wait_for

from beholder_plugin import Beholder, read_frame

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

pytestmark = BROWSER_MARKS

# The cells, in order: a Beholder updated with a few arrays, the Beholder itself (its frame as a
# PNG), the live view, start() again (the same TensorBoard, reused) and start() on the run alone
# (a second TensorBoard, whose logdir is the run).
CELLS = [
    """
    import time
    import numpy as np
    import beholder_plugin
    import beholder_plugin.notebook
    from beholder_plugin import Beholder

    run = {run!r}
    beholder_plugin.write_config(run, {{**beholder_plugin.DEFAULT_CONFIG, "values": "arrays", "FPS": 30}})
    b = Beholder(run, strict=True)
    rng = np.random.default_rng(0)
    handed = 0
    for step in range(4):
        arrays = {{"dense/kernel": rng.normal(size=(12, 8)), "dense/bias": rng.normal(size=8)}}
        handed += b.update(arrays=arrays)
        b.flush()
        time.sleep(1 / 30 + 0.01)
    print("handed", handed)
    """,
    "b",
    "beholder_plugin.notebook.show({logdir!r}, height=600)",
    "print('port', beholder_plugin.notebook.start({logdir!r}))",
    "print('run port', beholder_plugin.notebook.start({logdir!r}, run='run1'))",
]


def tensorboard_pids(tmpdir: str) -> list[int]:
    """The processes tensorboard.manager recorded under this TMPDIR (it deletes a record at exit)."""
    pids = []
    for path in glob.glob(os.path.join(tmpdir, ".tensorboard-info", "*.info")):
        with open(path, encoding="utf-8") as f:
            pids.append(int(json.load(f)["pid"]))
    return pids


def is_tensorboard(pid: int) -> bool:
    """Whether pid is a running tensorboard process (not a process that reused the id)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"tensorboard" in f.read()
    except OSError:
        return False


def kill_tensorboards(pids: list[int]) -> None:
    """SIGTERM (then SIGKILL) these TensorBoard processes, and wait until they are gone."""
    for pid in pids:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not is_tensorboard(pid):
                break
            os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while is_tensorboard(pid) and time.monotonic() < deadline:
                time.sleep(0.1)


def write_scalar_run(run_dir) -> None:
    """An event file with one scalar (no TensorFlow), so that TensorBoard would open on another tab."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    events = [
        event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"),
        event_pb2.Event(wall_time=time.time(), step=1, summary=summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag="loss", simple_value=0.5)])),
    ]
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, f"events.out.tfevents.{int(time.time())}.test"), "wb") as f:
        for event in events:
            data = event.SerializeToString()
            header = struct.pack("<Q", len(data))
            f.write(header + struct.pack("<I", masked_crc32c(header)) + data)
            f.write(struct.pack("<I", masked_crc32c(data)))


def run_names(port: int) -> list[str]:
    """The runs the Beholder plugin of the TensorBoard on port lists."""
    status, body = http_get(f"http://localhost:{port}/data/plugin/beholder/runs")
    assert status == 200
    return [entry["run"] for entry in json.loads(body)]


def outputs_of(cell) -> dict[str, list]:
    """A cell's outputs by MIME type (and "stdout")."""
    found: dict[str, list] = {}
    for out in cell.outputs:
        if out.output_type == "stream" and out.name == "stdout":
            found.setdefault("stdout", []).append(out.text)
        for mime, value in out.get("data", {}).items():
            found.setdefault(mime, []).append(value)
    return found


@pytest.fixture
def private_tmp(tmp_path):
    """A TMPDIR for the kernel (and the TensorBoard it starts) alone, and the pids to kill after the test."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    started: list[int] = []
    yield str(tmpdir), started
    kill_tensorboards(started + tensorboard_pids(str(tmpdir)))


def test_a_notebook_shows_the_frame_and_the_live_dashboard(tmp_path, private_tmp):
    tmpdir, started = private_tmp
    logdir = tmp_path / "logs"
    run = logdir / "run1"
    write_scalar_run(logdir / "scalars")  # so that #beholder, not "the only active plugin", opens the tab
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(textwrap.dedent(code.format(run=str(run), logdir=str(logdir))))
                for code in CELLS]
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    with client.setup_kernel(env={**os.environ, "TMPDIR": tmpdir}):
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        started += tensorboard_pids(tmpdir)
        assert len(started) == 2, "the logdir's TensorBoard was reused, the run's is another"
        assert all(is_tensorboard(pid) for pid in started)
        check_outputs_and_page(nb, run)


def check_outputs_and_page(nb, run) -> None:
    """The cells' outputs, then the iframe's page in Chromium, while the kernel still runs."""
    assert "handed 4" in "".join(outputs_of(nb.cells[0]).get("stdout", []))

    # The Beholder as the cell's value: a PNG of its latest frame.
    pngs = outputs_of(nb.cells[1]).get("image/png", [])
    assert len(pngs) == 1
    still = Image.open(io.BytesIO(base64.b64decode(pngs[0])))
    rgb = read_frame(run)
    assert still.size == (rgb.shape[1], rgb.shape[0])
    assert np.array_equal(np.asarray(still.convert("RGB")), rgb)

    # show(): an iframe of TensorBoard's Beholder tab.
    html = "".join(outputs_of(nb.cells[2]).get("text/html", []))
    match = re.search(r'<iframe[^>]*\ssrc="(http://localhost:(\d+)/#beholder)"', html)
    assert match, html
    assert 'height="600"' in html
    url, port = match.group(1), int(match.group(2))
    assert f"port {port}" in "".join(outputs_of(nb.cells[3]).get("stdout", []))
    run_port = int(re.search(r"run port (\d+)", "".join(outputs_of(nb.cells[4])["stdout"])).group(1))
    assert run_port != port
    assert run_names(port) == ["run1"]
    assert run_names(run_port) == ["."]  # the run alone, as the logdir

    height, width = rgb.shape[:2]
    with chromium_page() as page:
        answers = []  # statuses of the dashboard's requests for frames
        page.on("response", lambda r: "/data/plugin/beholder/live" in r.url and answers.append(r.status))
        page.goto(url)
        frame = beholder_frame(page)
        wait_for(lambda: frame.evaluate("[window.beholder.width, window.beholder.height]") == [width, height],
                 message="the notebook's frame on the dashboard")
        assert frame.eval_on_selector("#frame", "el => [el.width, el.height]") == [width, height]
        assert 200 in answers

        # The output as a notebook page shows it: its script runs and the tab loads inside the iframe.
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        with notebook_page_server(html) as notebook_url:
            page.goto(notebook_url)
            frame = nested_beholder_frame(page)
            assert page.eval_on_selector("iframe.beholder-notebook", "el => el.src") == url
            wait_for(lambda: frame.evaluate("window.beholder.height") == height, message="the frame, inline")
            assert errors == []

            # Live: a new frame of another shape, written after the page loaded, replaces it.
            with Beholder(run, strict=True) as b:
                assert b.update(arrays={"dense/kernel": np.ones((12, 8)), "dense/bias": np.ones(8),
                                        "extra": np.arange(5.0)})
                b.flush()
            taller = read_frame(run).shape[0]
            assert taller > height
            wait_for(lambda: frame.evaluate("window.beholder.height") == taller,
                     message="the new frame, inline")


@contextlib.contextmanager
def notebook_page_server(html: str) -> Iterator[str]:
    """A local HTTP server answering every GET with a page holding the HTML output; yields its URL.

    A real server on loopback, as Jupyter is: Chromium refuses a page Playwright answers
    itself (no address) to frame a localhost page (local network access checks).
    """
    body = f"<!doctype html><html><body><div class=output>{html}</div></body></html>".encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            """Answer with the page."""
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            """Say nothing."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/notebooks/beholder.ipynb"
    finally:
        server.shutdown()
        server.server_close()


def nested_beholder_frame(page, timeout: float = 60.0):
    """The Beholder dashboard inside TensorBoard's page inside the output's iframe, once rendered."""
    def find():
        outer = page.query_selector("iframe.beholder-notebook")
        tensorboard = outer.content_frame() if outer else None
        if tensorboard is None:
            return None
        inner = tensorboard.query_selector('iframe[src*="plugin_entry.html?name=beholder"]')
        frame = inner.content_frame() if inner else None
        return frame if frame is not None and frame.query_selector("#beholder-root") else None

    return wait_for(find, timeout=timeout, interval=0.2, message="the Beholder tab inside the output")
