"""The built wheel carries the dashboard and the entry point, and serves it once installed."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest
from server_support import ROOT

STATIC = ROOT / "beholder_plugin" / "server" / "static"
FRONTEND_FILES = sorted(p.name for p in STATIC.iterdir() if p.suffix in (".js", ".css"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built from a copy of the source tree (so the build cannot disturb the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(
        ROOT, source,
        ignore=shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info",
                                      "test-artifacts", "__pycache__", ".*_cache", "demo-logs"),
    )
    out = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(source)],
        check=True, capture_output=True,
    )
    (path,) = out.glob("*.whl")
    return path


def test_wheel_holds_the_frontend_and_the_entry_point(wheel):
    assert FRONTEND_FILES and "index.js" in FRONTEND_FILES and "style.css" in FRONTEND_FILES
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for name in FRONTEND_FILES:
            assert f"beholder_plugin/server/static/{name}" in names
            assert z.read(f"beholder_plugin/server/static/{name}") == (STATIC / name).read_bytes()
        assert "beholder_plugin/server/plugin.py" in names
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser()
        parser.read_string(z.read(entry_points).decode())
    assert parser["tensorboard_plugins"]["beholder"] == "beholder_plugin.server.plugin:BeholderPlugin"
    assert parser["console_scripts"]["beholder-tensorboard"] == "beholder_plugin.server.launcher:main"


def test_installed_wheel_serves_its_own_frontend(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True, capture_output=True,
    )
    logdir = tmp_path / "logs"
    (logdir / "plugins" / "beholder").mkdir(parents=True)
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(target)!r})
        from importlib.metadata import entry_points
        import beholder_plugin
        assert beholder_plugin.__file__.startswith({str(target)!r}), beholder_plugin.__file__
        from tensorboard.backend import application
        from tensorboard.plugins import base_plugin
        from werkzeug.test import Client
        (ep,) = [e for e in entry_points(group="tensorboard_plugins") if e.name == "beholder"]
        plugin = ep.load()(base_plugin.TBContext(logdir={str(logdir)!r}))
        client = Client(application.TensorBoardWSGI([plugin]))
        for name in {FRONTEND_FILES!r}:
            resp = client.get("/data/plugin/beholder/static/" + name)
            assert resp.status_code == 200, (name, resp.status_code)
            sys.stdout.write(name + " " + str(len(resp.get_data(as_text=False))) + "\\n")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    served = dict(line.split() for line in result.stdout.splitlines())
    assert sorted(served) == FRONTEND_FILES
    for name, size in served.items():
        assert int(size) == len((target / "beholder_plugin" / "server" / "static" / name).read_bytes())
