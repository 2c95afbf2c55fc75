"""Hostile HTTP input, fuzzed with hypothesis against a real plugin through werkzeug's test client.

Every route and its parameters get arbitrary, traversal-shaped and encoded
input. For every request: no 500 (and no exception), only the status codes
docs/http-api.md lists, and a byte-for-byte snapshot of the whole temporary
tree shows nothing changed, except the target run's config.json after an
accepted POST. The tree holds runs reached through symlinks, a sibling
directory whose name starts like the logdir's, and files symlinked out.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from server_support import BASE, ROOT, make_frames, plugin_client

from beholder_plugin.protocol.history import list_history
from beholder_plugin.protocol.runfiles import FRAME_FILE, config_path, plugin_dir
from beholder_plugin.protocol.settings import COLORMAPS, DEFAULT_CONFIG, MODES, SCALINGS, VALUES

STATIC_DIR = ROOT / "beholder_plugin" / "server" / "static"
FUZZ = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Statuses each route may answer with (docs/http-api.md); 500 is never among them here,
# because every frame and info file in the fuzzed tree is valid.
RUN_ERRORS = {400, 403, 404}
ALLOWED = {
    "frame": {200, 304} | RUN_ERRORS,
    "live": {200, 204} | RUN_ERRORS,
    "section-info": {200} | RUN_ERRORS,
    "config": {200} | RUN_ERRORS,
    "value": {200} | RUN_ERRORS,  # 404 also for a separator or a pixel outside the frame
    "history": {200} | RUN_ERRORS,
    "history/frame": {200, 304} | RUN_ERRORS,
    "history/stats": {200} | RUN_ERRORS,  # 400 also for a missing or unknown ?values=
    "diff": {200} | RUN_ERRORS,  # 409 only for a frame of an image; every fuzzed frame shows arrays
    "post": {200, 405, 413, 415} | RUN_ERRORS,
}

# Path pieces that make traversal, symlink and encoding tricks likely.
PIECES = [
    ".", "..", "", "train", "a", "train/a", "alias", "link-out", "run-pd", "files-out",
    "plugins", "beholder", "logs2", "outside", "../logs2", "../outside", "%2e%2e", "%2F",
    "..%2f", "%00", "\x00", "/", "//", "\\", "..\\..", "~", "$HOME", "*", "a" * 300,
    "frame.bin", "config.json", "é", "\u202e", " ", "\n",
]
KNOWN_RUNS = [".", "train/a", "alias", "link-out", "run-pd", "files-out", "train", "../logs2", "../outside",
              "../logs", "../logs/train/a"]
DECORATED = st.builds(
    lambda run, fmt: fmt.format(run),
    st.sampled_from(KNOWN_RUNS),
    st.sampled_from(["{}", "./{}", "{}/", "{}//", "train/../{}", "{}/plugins/..", "{}/.", "a/../{}",
                     "{}/plugins/beholder/../..", "{}/\x00", "{}\x00", "%2e/{}", "{}/%2e%2e"]),
)
RUN_NAMES = st.one_of(
    DECORATED,
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=6).map("/".join),
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=4).map(lambda p: "/" + "/".join(p)),
    st.sampled_from(["/etc", "/tmp", os.sep + "..", "~/", "C:\\Windows", "train/a\x00/../.."]),
    st.text(max_size=40),
)
TIMEOUTS = st.one_of(
    st.sampled_from(["0", "0.0", "-0", "1e-9", "0.01", "nan", "inf", "-inf", "-1", "31", "1e999",
                     "1_0", " 0 ", "0x1", "", "30.0000001", "\x00"]),
    st.floats(min_value=-100, max_value=100).map(repr),
    st.text(max_size=12),
)
JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
KEYS = st.sampled_from([*DEFAULT_CONFIG, "version", "brightness", "", "__proto__", "FPS "])
GOOD_VALUES = st.sampled_from([*VALUES, *MODES, *SCALINGS, *COLORMAPS, 0, 1, 2, 15, 20, 30, True, False])
VALID_CHANGES = st.fixed_dictionaries({}, optional={
    "values": st.sampled_from(VALUES), "mode": st.sampled_from(MODES),
    "scaling": st.sampled_from(SCALINGS), "colormap": st.sampled_from(COLORMAPS),
    "window_size": st.integers(2, 20), "FPS": st.integers(0, 30), "is_recording": st.booleans(),
    "show_all": st.booleans(), "version": st.just(1),
    "history_mb": st.integers(0, 1 << 20), "history_seconds": st.integers(0, 7 * 24 * 3600),
})
CONFIG_BODIES = st.one_of(
    VALID_CHANGES.map(json.dumps),
    # Mostly plausible dictionaries: real keys, values good and bad.
    st.dictionaries(KEYS, st.one_of(GOOD_VALUES, JSON_LEAVES), max_size=5).map(json.dumps),
    JSON_VALUES.map(lambda v: json.dumps(v, allow_nan=True)),
    st.integers(1, 4000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 2000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.integers(4000, 20000).map(lambda n: json.dumps({"FPS": 1, "pad": "x" * n})),
    st.text(max_size=60),
).map(lambda s: s.encode("utf-8", "surrogatepass"))
RAW_BODIES = st.binary(max_size=300)
CONTENT_TYPES = st.one_of(
    st.sampled_from(["application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
                     "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                     "application/json-patch+json", ""]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
)
HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root (symlinks not followed): its kind and its bytes' digest or link target."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[rel] = ("dir",)
            else:
                with open(path, "rb") as f:
                    out[rel] = ("file", hashlib.sha256(f.read()).hexdigest())
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A temporary tree: a logdir with runs (some through symlinks), and directories beside it."""
    root = tmp_path_factory.mktemp("fuzz")
    logs, outside, logs2 = root / "logs", root / "outside", root / "logs2"
    for run in (logs, logs / "train" / "a", outside, logs2, logs / "files-out"):
        make_frames(run)
    # A run that is a symlink out of the logdir, and one whose plugins/beholder is.
    os.symlink(outside, logs / "link-out")
    (logs / "run-pd" / "plugins").mkdir(parents=True)
    os.symlink(plugin_dir(outside), logs / "run-pd" / "plugins" / "beholder")
    # A symlink that stays inside the logdir: allowed.
    os.symlink(logs / "train" / "a", logs / "alias")
    # A run whose files themselves lead out of the logdir.
    for name in (FRAME_FILE, "config.json", "history"):
        target = os.path.join(plugin_dir(logs / "files-out"), name)
        shutil.rmtree(target) if os.path.isdir(target) and not os.path.islink(target) else os.unlink(target)
        os.symlink(os.path.join(plugin_dir(outside), name), target)
    plugin, client = plugin_client(logs)
    plugin.hub.idle_exit = 0.5
    return {"root": root, "logs": logs, "client": client, "plugin": plugin}


def kept_names(world) -> list[str]:
    """The kept frames of the logdir's runs "." and "train/a"."""
    return [e.name for run in (world["logs"], world["logs"] / "train" / "a") for e in list_history(run)]


def reads_inside(world, run: str) -> bool:
    """Whether run names a directory whose Beholder files all really lie inside the logdir."""
    root = os.path.realpath(world["logs"])
    run_dir = os.path.normpath(os.path.join(world["logs"], run))
    paths = [run_dir] + [os.path.join(plugin_dir(run_dir), n)
                         for n in (FRAME_FILE, "config.json", "history")]
    return all(os.path.realpath(p) == root or os.path.realpath(p).startswith(root + os.sep)
               for p in paths)


def check(world, response, route: str, before: dict[str, tuple], run_dir: str | None = None,
          run: str | None = None) -> None:
    """No 500, only documented statuses, JSON errors, and nothing changed but an accepted config."""
    status = response.status_code
    event(f"{route} {status}")  # shown by --hypothesis-show-statistics: what the examples reached
    assert status in ALLOWED[route], (route, status, response.get_data()[:300])
    if status >= 400:
        assert "error" in json.loads(response.get_data())
    if status in (200, 304) and run is not None:
        assert reads_inside(world, run), f"{route} answered {status} for {run!r}, which leads outside"
    after = snapshot(world["root"])
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    if route == "post" and status == 200:
        allowed = {os.path.relpath(config_path(run_dir), world["root"])}
        assert changed <= allowed, changed
    else:
        assert changed == set(), changed


@FUZZ
@given(run=RUN_NAMES, route=st.sampled_from(["frame", "section-info", "config", "history/stats"]),
       etag=HEADER_TEXT)
def test_fuzzed_run_names_on_every_get_route(world, run, route, etag):
    before = snapshot(world["root"])
    query = {"run": run, **({"values": "arrays"} if route == "history/stats" else {})}
    resp = world["client"].get(f"{BASE}/{route}", query_string=query, headers={"If-None-Match": etag})
    check(world, resp, route, before, run=run)


KNOWN_OR_FUZZED = st.sampled_from(["known"] * 3 + ["fuzzed"]).flatmap(
    lambda kind: st.sampled_from([".", "train/a", "alias", "files-out", "link-out"])
    if kind == "known" else RUN_NAMES)


@FUZZ
@given(run=KNOWN_OR_FUZZED, other=KNOWN_OR_FUZZED, fmt=st.sampled_from([None, "json", "png", ""]))
def test_fuzzed_diff_runs(world, run, other, fmt):
    """GET diff: both runs refused exactly as ?run= is, documented statuses only, nothing written."""
    before = snapshot(world["root"])
    query = {"run": run, "other": other, **({"format": fmt} if fmt is not None else {})}
    resp = world["client"].get(f"{BASE}/diff", query_string=query)
    check(world, resp, "diff", before, run=run)
    if resp.status_code == 200:
        assert reads_inside(world, other), f"diff answered 200 for other={other!r}, which leads outside"
        assert resp.mimetype == ("application/json" if fmt == "json" else "image/png")


COORDINATES = st.one_of(
    st.integers(-5, 1000).map(str),
    st.integers(0, 260).map(str),  # inside the fuzzed frames (768 x 261) whichever the axis
    st.sampled_from(["", " 1", "1 ", "+1", "1.0", "1e2", "0x10", "٣", "²", "2147483647", "2147483648",
                     "99999999999", "-0", "nan", "1,2", "%31"]),
    st.text(max_size=12),
)
NAME_EDITS = [
    lambda n: n, lambda n: "../" + n, lambda n: "history/" + n, lambda n: n + "/", lambda n: n + "\x00",
    lambda n: n.upper(), lambda n: n.replace(".bin", ".png"), lambda n: "./" + n, lambda n: n[:-5] + "9.bin",
    lambda n: "/" + n, lambda n: n.replace("-", "/"),
]


@FUZZ
@given(
    # runs that exist (three times as likely as fuzzed names, so that look-ups get answered too)
    run=st.sampled_from(["known"] * 3 + ["fuzzed"]).flatmap(
        lambda kind: st.sampled_from([".", "train/a", "alias", "files-out", "link-out"])
        if kind == "known" else RUN_NAMES),
    x=COORDINATES,
    y=COORDINATES,
    name=st.one_of(
        st.none(),
        st.text(max_size=60),
        st.sampled_from(["f-0000000000000001-ab-1-1.bin", "frame.bin", "config.json", "..", ".", ""]),
        # a kept frame's name, as listed (half the time) or edited
        st.tuples(st.integers(0, 1), st.one_of(st.just(NAME_EDITS[0]), st.sampled_from(NAME_EDITS))),
        st.tuples(st.integers(0, 1), st.just(NAME_EDITS[0])),
    ),
    route=st.sampled_from(["value", "history", "history/frame"]),
)
def test_fuzzed_inspection_routes(world, run, x, y, name, route):
    """Value look-ups and the history routes: documented statuses only, nothing written."""
    if isinstance(name, tuple):
        names = kept_names(world)
        name = name[1](names[name[0] % len(names)])
    before = snapshot(world["root"])
    query = {"run": run, "x": x, "y": y}
    if name is not None:
        query["frame" if route == "value" else "name"] = name
    resp = world["client"].get(f"{BASE}/{route}", query_string=query)
    check(world, resp, route, before, run=run if route != "value" or name is None else None)
    if resp.status_code == 200 and route == "value":
        found = json.loads(resp.get_data())
        assert set(found) == {"section", "name", "index", "value", "frame_id", "step", "bounds", "colormap",
                              "axes"}
        assert x.isdigit() and y.isdigit() and x.isascii() and y.isascii()
    if resp.status_code == 200 and route == "history":
        keys = {"name", "time", "step", "frame_id", "writer"}
        assert all(set(e) == keys for e in json.loads(resp.get_data()))
    if resp.status_code in (200, 304) and route == "history/frame":
        assert name in kept_names(world)


@FUZZ
@given(run=RUN_NAMES, after=st.one_of(st.none(), st.text(max_size=30)), timeout=TIMEOUTS)
def test_fuzzed_live_parameters(world, run, after, timeout):
    before = snapshot(world["root"])
    query = {"run": run, "timeout": timeout}
    if after is not None:
        query["after"] = after  # never a current ETag: a valid request answers at once
    resp = world["client"].get(f"{BASE}/live", query_string=query)
    check(world, resp, "live", before, run=run)
    if resp.status_code == 200:
        assert resp.get_data().startswith(b"\x89PNG")


@FUZZ
@given(query=st.text(max_size=80), route=st.sampled_from(["frame", "live", "section-info", "config",
                                                           "value", "history", "history/frame",
                                                           "history/stats", "runs", "ping"]))
def test_fuzzed_raw_query_strings(world, query, route):
    """Arbitrary (and arbitrarily percent-encoded) query strings, parsed by werkzeug itself."""
    before = snapshot(world["root"])
    raw = urllib.parse.quote(query, safe="=&%;+/?")
    if route == "live" and "timeout" not in raw:
        raw += "&timeout=0"
    resp = world["client"].get(f"{BASE}/{route}", query_string=raw)
    kind = route if route in ALLOWED else "config"
    if route in ("runs", "ping"):
        assert resp.status_code == 200
    else:
        check(world, resp, kind, before)


@FUZZ
@given(
    run=st.one_of(st.sampled_from([".", "train/a", "alias", "./train//a/", "files-out"]), RUN_NAMES),
    body=st.one_of(CONFIG_BODIES, RAW_BODIES),
    content_type=CONTENT_TYPES,
    method=st.sampled_from(["POST"] * 6 + ["PUT", "PATCH", "DELETE"]),
)
@example(run=".", body=b"[" * 4000, content_type="application/json", method="POST")
@example(run=".", body=b"[" * 2048 + b"]" * 2048, content_type="application/json", method="POST")
@example(run="files-out", body=b'{"FPS": 3}', content_type="application/json", method="POST")
@example(run=".", body=b'{"FPS": 3, "x": "' + b"y" * 5000 + b'"}', content_type="application/json",
         method="POST")
def test_fuzzed_config_changes(world, run, body, content_type, method):
    client = world["client"]
    before = snapshot(world["root"])
    resp = client.open(f"{BASE}/config", method=method, query_string={"run": run}, data=body,
                       content_type=content_type)
    run_dir = None
    if resp.status_code == 200:
        # Accepted: it must have been a valid change to a run inside the logdir, now on disk.
        changes = json.loads(body)
        run_dir = os.path.normpath(os.path.join(world["logs"], run))
        assert os.path.realpath(run_dir).startswith(str(world["logs"]) + os.sep) or (
            os.path.realpath(run_dir) == str(world["logs"])
        )
        on_disk = json.loads(Path(config_path(run_dir)).read_text())
        assert {k: on_disk[k] for k in changes if k != "version"} == {
            k: v for k, v in changes.items() if k != "version"
        }
        assert json.loads(resp.get_data())["config"] == {k: on_disk[k] for k in DEFAULT_CONFIG}
    check(world, resp, "post", before, run_dir, run=run)
    if len(body) > 4096 and resp.status_code not in (400, 403, 404, 405, 415):
        assert resp.status_code == 413


@FUZZ
@given(name=st.text(max_size=40), fresh=st.text(max_size=5))
def test_fuzzed_static_names_and_runs_listing(world, name, fresh):
    client = world["client"]
    before = snapshot(world["root"])
    resp = client.get(f"{BASE}/static/" + urllib.parse.quote(name, safe=""))
    assert resp.status_code in (200, 404)
    if resp.status_code == 200:
        assert name in {p.name for p in (STATIC_DIR).iterdir()}
    runs = client.get(f"{BASE}/runs", query_string={"fresh": fresh})
    assert runs.status_code == 200
    names = {r["run"] for r in json.loads(runs.get_data())}
    # Only runs inside the logdir are listed: never the symlink that leads out.
    assert "link-out" not in names and "run-pd" not in names
    assert snapshot(world["root"]) == before


def test_files_symlinked_out_of_the_logdir_are_neither_read_nor_written(world):
    client, outside = world["client"], world["root"] / "outside"
    before = snapshot(world["root"])
    for route in ("frame", "live", "section-info", "config", "value", "history", "history/frame"):
        query = {"run": "files-out", "timeout": "0", "x": "0", "y": "0",
                 "name": "f-0000000000000001-ab-1-1.bin"}
        resp = client.get(f"{BASE}/{route}", query_string=query)
        assert resp.status_code == 403, route
        assert "outside the logdir" in json.loads(resp.get_data())["error"]
    resp = client.post(f"{BASE}/config?run=files-out", data=b'{"colormap": "plasma"}',
                       content_type="application/json")
    assert resp.status_code == 403
    assert json.loads(Path(config_path(outside)).read_text())["colormap"] == "magma"
    assert snapshot(world["root"]) == before


@pytest.mark.parametrize(
    "body, message",
    [(b"[" * 2048 + b"]" * 2048, "not valid JSON"), (b"[" * 2048, "not valid JSON"),
     (b'{"":' * 819 + b"1" + b"}" * 818, "")],
)
def test_deeply_nested_json_within_the_size_limit_is_a_400(world, body, message):
    assert len(body) <= 4096  # under the cap, so it reaches the JSON decoder and its depth limit
    before = snapshot(world["root"])
    resp = world["client"].post(f"{BASE}/config?run=.", data=body, content_type="application/json")
    assert resp.status_code == 400
    assert message in json.loads(resp.get_data())["error"]
    assert snapshot(world["root"]) == before


@pytest.mark.parametrize("index", ["[" * 5000, "[" * 5000 + "]" * 5000, "[" + "1," * 200 + "1]", "[１]"])
def test_a_hostile_element_index_is_a_400(world, index):
    """value?section=&index= of 5,000 brackets answered 500 (json's RecursionError); any index that is not
    a short list of whole numbers is a 400 saying what it must be."""
    resp = world["client"].get(f"{BASE}/value", query_string={"run": ".", "section": "w", "index": index})
    assert resp.status_code == 400
    assert "must be a JSON list of whole numbers" in json.loads(resp.get_data())["error"]


def test_points_in_other_scripts_digits_are_a_400(world):
    """int() reads full-width digits as numbers; a query parameter is ASCII."""
    resp = world["client"].get(f"{BASE}/timeline", query_string={"run": ".", "points": "１２"})
    assert resp.status_code == 400 and "points must be" in json.loads(resp.get_data())["error"]
