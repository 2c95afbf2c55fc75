"""beholder_plugin.notebook without a kernel: the iframe markup, what TensorBoard is served, errors.

The notebook itself, TensorBoard and the browser are in tests/e2e/test_notebook.py.
"""

from __future__ import annotations

import http.server
import os
import re
import sys
import tempfile
import threading
import types

import pytest

from beholder_plugin import notebook

pytest.importorskip("IPython")


def test_the_tensorboard_logdir_is_the_logdir_or_its_run(tmp_path):
    assert notebook.logdir_for(tmp_path, None) == str(tmp_path)
    assert notebook.logdir_for(tmp_path / "logs", "run1") == str(tmp_path / "logs" / "run1")
    assert notebook.logdir_for("s3://bucket/logs/", "run1") == "s3://bucket/logs/run1"
    assert notebook.logdir_for("gs://bucket/logs", None) == "gs://bucket/logs"


def test_a_relative_logdir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert notebook.logdir_for("logs", "a") == os.path.join(str(tmp_path), "logs", "a")


def test_jupyter_gets_an_iframe_of_the_beholder_tab(monkeypatch):
    monkeypatch.delenv("TENSORBOARD_PROXY_URL", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    markup = notebook.tab_markup(6123, 450).data
    assert re.search(r'<iframe[^>]*\ssrc="http://localhost:6123/#beholder"', markup)
    assert 'height="450"' in markup
    assert "if (6123) url.port = 6123;" in markup
    assert 'url.hash = "beholder";' in markup


def test_a_tensorboard_proxy_url_is_followed(monkeypatch):
    monkeypatch.setenv("TENSORBOARD_PROXY_URL", "/user/me/proxy/%PORT%/")
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    markup = notebook.tab_markup(6123, 800).data
    assert re.search(r'<iframe[^>]*\ssrc="/user/me/proxy/6123/#beholder"', markup)
    assert 'new URL("/user/me/proxy/6123/", window.location)' in markup
    assert "if (0)" in markup  # the proxy's URL keeps the notebook page's port


def test_colab_reaches_the_port_through_its_proxy(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    markup = notebook.tab_markup(6123, 700).data
    assert "google.colab.kernel.proxyPort(6123" in markup
    assert 'url.hash = "beholder";' in markup
    assert '"height", "700"' in markup
    assert "<iframe" not in markup  # created by the script, with the proxied URL


def test_outside_a_notebook_show_prints_the_url(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(notebook, "start", lambda logdir, run=None, port=None: 6123)
    monkeypatch.setattr(notebook, "in_notebook", lambda: False)
    assert notebook.show(tmp_path) is None
    assert "http://localhost:6123/#beholder" in capsys.readouterr().out


def test_the_tensorboard_of_this_python_is_used_unless_one_is_named(monkeypatch):
    monkeypatch.delenv("TENSORBOARD_BINARY", raising=False)
    here = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    if not os.path.exists(here):
        pytest.skip("no tensorboard script next to this Python")
    with notebook.BinaryOfThisPython():
        assert os.environ["TENSORBOARD_BINARY"] == here
    assert "TENSORBOARD_BINARY" not in os.environ
    monkeypatch.setenv("TENSORBOARD_BINARY", "/opt/tb/bin/tensorboard")
    with notebook.BinaryOfThisPython():
        assert os.environ["TENSORBOARD_BINARY"] == "/opt/tb/bin/tensorboard"
    assert os.environ["TENSORBOARD_BINARY"] == "/opt/tb/bin/tensorboard"


def test_a_tensorboard_that_exits_is_a_runtime_error_with_its_code(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # tensorboard.manager's records go here
    monkeypatch.setenv("TENSORBOARD_BINARY", "false")
    with pytest.raises(RuntimeError, match="exited with code 1"):
        notebook.start(tmp_path / "logs")


class _Answer(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the status the server was given."""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        """Answer with server.status and an empty body."""
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        """Say nothing."""


@pytest.fixture
def answering():
    """A local HTTP server; set .status to what it answers; yields it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    server.status = 200
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_tensorboard_without_the_plugin_is_refused(answering):
    port = answering.server_address[1]
    notebook.check_plugin(port)  # 200 from /data/plugin/beholder/ping: fine
    answering.status = 404
    with pytest.raises(RuntimeError, match="no Beholder plugin"):
        notebook.check_plugin(port)


def test_the_record_of_a_killed_tensorboard_is_not_reused(monkeypatch, tmp_path):
    import subprocess

    from tensorboard import manager, version

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TENSORBOARD_BINARY", "false")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer exists
    logdir = str(tmp_path / "logs")
    key = manager.cache_key(os.getcwd(), ["--logdir", logdir], {})
    info = manager.TensorBoardInfo(version=version.VERSION, start_time=0, pid=gone.pid, port=6123,
                                   path_prefix="", logdir=logdir, db="", cache_key=key)
    record = tmp_path / ".tensorboard-info" / f"pid-{gone.pid}.info"
    record.parent.mkdir()
    record.write_text(manager._info_to_string(info))
    assert [i.port for i in manager.get_all()] == [6123]
    with pytest.raises(RuntimeError, match="exited with code 1"):  # it tried to start one
        notebook.start(logdir)
    assert not record.exists()
