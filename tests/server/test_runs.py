"""server/runs.py through the plugin: which runs are found, how the scan is cached and bounded."""

from __future__ import annotations

import json
import os
import shutil

from server_support import BASE, make_frames, plugin_client

from beholder_plugin import Beholder


def test_is_active_only_once_a_run_exists(tmp_path):
    plugin, _ = plugin_client(tmp_path)
    assert plugin.is_active() is False
    plugin.run_index.max_age = 0  # the scan is cached for a few seconds; skip the wait
    make_frames(tmp_path / "run1")
    assert plugin.is_active() is True


def test_is_active_scan_is_cached(tmp_path):
    plugin, _ = plugin_client(tmp_path)
    assert plugin.is_active() is False
    make_frames(tmp_path / "run1")
    assert plugin.is_active() is False  # still the cached scan
    plugin.run_index.expire()
    assert plugin.is_active() is True


def test_a_run_is_listed_and_configurable_before_its_first_frame(tmp_path):
    """Beholder's constructor writes the run's directory and settings, as the original did."""
    beholder = Beholder(tmp_path / "early")
    _, client = plugin_client(tmp_path)
    runs = json.loads(client.get(f"{BASE}/runs").get_data())
    assert runs == [{"run": "early", "age": None, "storage": "local"}]
    resp = client.post(f"{BASE}/config?run=early", data=b'{"FPS": 3}', content_type="application/json")
    assert resp.status_code == 200
    assert json.loads(client.get(f"{BASE}/section-info?run=early").get_data())["frame_id"] is None
    beholder.check_settings()
    assert beholder.config["FPS"] == 3  # the trainer picks up what the dashboard set
    beholder.close()


def test_the_run_scan_is_bounded_against_deep_trees_loops_and_odd_names(tmp_path):
    """A tree 1,000 levels deep, a symlink loop and a name that is not UTF-8: /runs still answers."""
    from beholder_plugin.server import runs as runs_module

    Beholder(tmp_path / "top").close()
    deep = tmp_path / "deep"
    path = str(deep)
    os.mkdir(path)
    levels = []
    for _ in range(1000):
        path = os.path.join(path, "d")
        os.mkdir(path)
        levels.append(path)
    try:
        Beholder(os.path.join(str(deep), *["d"] * 3)).close()  # within reach
        Beholder(path).close()  # 1,001 levels down: beyond MAX_SCAN_DEPTH
        os.symlink(tmp_path, tmp_path / "loop")  # a symlink loop
        os.makedirs(os.fsencode(tmp_path) + b"/bad-\xff/plugins/beholder")
        _, client = plugin_client(tmp_path)
        resp = client.get(f"{BASE}/runs", query_string={"fresh": "1"})
        assert resp.status_code == 200
        names = sorted(r["run"] for r in json.loads(resp.get_data()))
        assert names == ["deep/d/d/d", "top"]
        assert runs_module.MAX_SCAN_DEPTH < 1000
    finally:
        # Remove the deep tree bottom-up: pytest's own clean-up recurses and would overflow on it.
        for level in reversed(levels):
            shutil.rmtree(os.path.join(level, "plugins"), ignore_errors=True)
            os.rmdir(level)
