"""Same-origin writes (issue 21, item 5): POST config and export only from pages of this TensorBoard.

A web page can send a POST to 127.0.0.1, or reach it under its own name
through DNS rebinding; both are refused with 403 and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os

import pytest
from server_support import BASE, make_frames, plugin_client

from beholder_plugin.protocol.names import config_path
from beholder_plugin.server.origin import TRUSTED_HOSTS_ENV


@pytest.fixture
def logdir(tmp_path):
    make_frames(tmp_path, count=1)
    return tmp_path


def post(client, route: str, body: dict, **headers):
    """POST a JSON body with these headers (Host defaults to the test client's "localhost")."""
    return client.post(f"{BASE}/{route}?run=.", data=json.dumps(body), content_type="application/json",
                       headers=headers)


@pytest.mark.parametrize("headers", [
    {"Host": "attacker.example", "Origin": "http://attacker.example"},  # DNS rebinding
    {"Host": "attacker.example:6006"},
    {"Host": "localhost:6006", "Origin": "http://attacker.example"},  # a page of another site
    {"Host": "127.0.0.1:6006", "Origin": "http://127.0.0.1:6007"},  # another port is another origin
    {"Host": "localhost:6006", "Origin": "null"},  # a sandboxed page or a file
    {"Host": "localhost:6006", "Origin": "https://localhost:6006.attacker.example"},
])
@pytest.mark.parametrize("route, body", [("config", {"is_recording": True}),
                                         ("export", {"from": "a", "to": "b"})])
def test_writes_from_another_origin_are_refused_and_write_nothing(logdir, headers, route, body):
    _plugin, client = plugin_client(logdir)
    before = sorted(os.walk(logdir))
    config_before = open(config_path(logdir), "rb").read()
    resp = post(client, route, body, **headers)
    assert resp.status_code == 403, resp.get_data()
    assert resp.mimetype == "application/json" and json.loads(resp.get_data())["error"]
    assert open(config_path(logdir), "rb").read() == config_before
    assert sorted(os.walk(logdir)) == before


@pytest.mark.parametrize("headers", [
    {},  # the test client's Host: localhost, no Origin (curl, scripts)
    {"Host": "localhost:6006", "Origin": "http://localhost:6006"},
    {"Host": "127.0.0.1:6006", "Origin": "http://127.0.0.1:6006"},
    {"Host": "[::1]:6006", "Origin": "http://[::1]:6006"},
    {"Host": "192.168.7.9:6006", "Origin": "http://192.168.7.9:6006"},  # an address is never rebound
    {"Host": "LOCALHOST:6006", "Origin": "http://localhost:6006"},
])
def test_writes_from_tensorboards_own_pages_are_applied(logdir, headers):
    _plugin, client = plugin_client(logdir)
    resp = post(client, "config", {"FPS": 7}, **headers)
    assert resp.status_code == 200, resp.get_data()
    assert json.loads(resp.get_data())["config"]["FPS"] == 7


def test_the_host_tensorboard_serves_on_and_the_trusted_list_are_accepted(logdir, monkeypatch):
    from tensorboard.backend import application
    from tensorboard.plugins import base_plugin
    from werkzeug.test import Client

    from beholder_plugin.server.plugin import BeholderPlugin

    monkeypatch.setenv(TRUSTED_HOSTS_ENV, "beholder.example.com, proxy.lan:8080")
    flags = argparse.Namespace(host="tb.internal", bind_all=False, port=6006)
    plugin = BeholderPlugin(base_plugin.TBContext(logdir=str(logdir), flags=flags))
    client = Client(application.TensorBoardWSGI([plugin]))
    for host in ("tb.internal:6006", "beholder.example.com", "proxy.lan:443"):
        resp = post(client, "config", {"FPS": 3}, Host=host, Origin=f"https://{host}")
        assert resp.status_code == 200, (host, resp.get_data())
    assert post(client, "config", {"FPS": 3}, Host="other.example").status_code == 403
    # A proxy that presents its own Host (a notebook's): pages of a listed name may write through it.
    resp = post(client, "config", {"FPS": 4}, Host="localhost:6006", Origin="https://beholder.example.com")
    assert resp.status_code == 200, resp.get_data()
    resp = post(client, "config", {"FPS": 4}, Host="localhost:6006", Origin="https://unlisted.example.com")
    assert resp.status_code == 403
