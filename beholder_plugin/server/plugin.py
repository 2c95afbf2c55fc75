"""The TensorBoard side: a dynamic plugin serving the Beholder tab, its frames and its settings.

Routes are documented in docs/http-api.md. The trainer and this plugin share
nothing but the files of docs/protocol.md.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import logging
import os
import re
import threading
import time
from typing import Any, Callable

from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from beholder_plugin.protocol.colormaps import palettes_hex
from beholder_plugin.protocol.files import FileRefused, confine
from beholder_plugin.protocol.history import history_frame_path, parse_history_name
from beholder_plugin.protocol.layout import pixel_of
from beholder_plugin.protocol.names import HISTORY_DIR
from beholder_plugin.protocol.remote_files import is_remote, normalize_location
from beholder_plugin.protocol.runfiles import (
    CONFIG_FILE,
    FRAME_FILE,
    config_path,
    read_config,
    write_config,
)
from beholder_plugin.protocol.settings import DEFAULT_CONFIG, ConfigError, validate_changes
from beholder_plugin.server.diff import DiffCache, DiffError
from beholder_plugin.server.frame_data import FrameData, FrameGone
from beholder_plugin.server.frame_encoding import EncodedFrame
from beholder_plugin.server.frame_hub import FrameHub
from beholder_plugin.server.http_answers import (
    diff_headers,
    element_index,
    error_response,
    json_response,
    live_timeout,
    method_not_allowed,
    no_frame_message,
    pixel_coordinate,
    read_json_body,
    row_range,
    section_table,
    section_table_json,
    with_run,
)
from beholder_plugin.server.kept_frames import kept_listing
from beholder_plugin.server.kept_stats import StatsRequestError, parse_kind, stats_json
from beholder_plugin.server.origin import listed_names, trusted_names, write_refusal
from beholder_plugin.server.runs import EndedMarks, Run, RunError, RunIndex, is_writable
from beholder_plugin.server.timeline import (
    TimelineRequestError,
    parse_points,
    parse_sections,
    parse_values,
    timeline_json,
)
from beholder_plugin.server.videos import (
    DEFAULT_EXPORT_FPS,
    EXPORTS_DIR,
    VideoError,
    check_video_name,
    export_range,
    list_videos,
    open_video,
)

logger = logging.getLogger("beholder")

PLUGIN_NAME = "beholder"
FRONTEND_PACKAGE = "beholder_plugin.server.static"
MAX_CONFIG_BODY = 4096  # bytes: a full config is about 200
MAX_EXPORT_BODY = 4096  # bytes: two kept frame names and a frame rate
DEFAULT_LIVE_TIMEOUT = 10.0
_DATA_ATTEMPTS = 3  # loads of a frame-data answer whose file keeps being replaced under the reads
_STATIC_NAME = re.compile(r"^[A-Za-z0-9_-]+\.(js|css|svg|html)$")
_STATIC_TYPES = {
    "js": "text/javascript",
    "css": "text/css",
    "svg": "image/svg+xml",
    "html": "text/html",
}

Handler = Callable[[wrappers.Request], wrappers.Response]


class BeholderPlugin(base_plugin.TBPlugin):
    """The "Beholder" tab: live frames of the logdir's runs and the controls that set them."""

    plugin_name = PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext):
        self._index = RunIndex(getattr(context, "logdir", None))
        self._hub = FrameHub()
        self._diffs = DiffCache(self._hub)
        self._ended = EndedMarks()
        self._config_lock = threading.Lock()
        self._export_lock = threading.Lock()
        self._trusted_hosts = trusted_names(getattr(context, "flags", None))
        self._listed_hosts = listed_names()
        logdir = getattr(context, "logdir", None)
        if logdir and not is_remote(logdir):
            confine(normalize_location(logdir))  # every file opened under it is checked once open (files.py)

    @property
    def hub(self) -> FrameHub:
        """The frame hub serving this plugin's frames (its counters and timings are for tests and stats)."""
        return self._hub

    @property
    def run_index(self) -> RunIndex:
        """The runs of the logdir, as the routes find them."""
        return self._index

    # ------------------------------------------------------------ TBPlugin API
    def get_plugin_apps(self) -> dict[str, Handler]:
        """The plugin's routes, relative to /data/plugin/beholder."""
        return {
            "/static/*": self._serve_static,
            "/runs": self._serve_runs,
            "/frame": self._serve_frame,
            "/live": self._serve_live,
            "/frame-data": self._serve_frame_data,
            "/live-data": self._serve_live_data,
            "/section-info": self._serve_section_info,
            "/value": self._serve_value,
            "/history": self._serve_history,
            "/history/frame": self._serve_history_frame,
            "/history/stats": self._serve_history_stats,
            "/config": self._serve_config,
            "/ping": self._serve_ping,
            "/colormaps": self._serve_colormaps,
            "/videos": self._serve_videos,
            "/video": self._serve_video,
            "/export": self._serve_export,
            "/diff": self._serve_diff,
            "/timeline": self._serve_timeline,
        }

    def is_active(self) -> bool:
        """Whether any run has Beholder files (a directory scan cached for a few seconds), or the logdir is
        inside a run (the tab then says what to do, instead of hiding under "inactive")."""
        return bool(self._index.runs()) or self._index.setup_hint() is not None

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        """Load the dashboard as an ES module in TensorBoard's plugin iframe."""
        return base_plugin.FrontendMetadata(
            es_module_path="/static/index.js",
            tab_name="Beholder",
            disable_reload=True,
        )

    # ------------------------------------------------------------ routes
    @wrappers.Request.application
    def _serve_static(self, request: wrappers.Request) -> wrappers.Response:
        """A file of the dashboard, from the installed beholder_plugin.server.static package."""
        # Everything after /static/, so that "static//index.js" or "static/a/index.js" is no file name.
        name = request.path.split("/static/", 1)[-1]
        if not _STATIC_NAME.match(name):
            return error_response(request, f"no such dashboard file: {name!r}", 404)
        resource = importlib.resources.files(FRONTEND_PACKAGE) / name
        try:
            content = resource.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return error_response(request, f"no such dashboard file: {name!r}", 404)
        content_type = _STATIC_TYPES[name.rsplit(".", 1)[1]]
        return http_util.Respond(request, content, content_type)

    @wrappers.Request.application
    def _serve_ping(self, request: wrappers.Request) -> wrappers.Response:
        """A liveness check the dashboard uses to tell "TensorBoard is down" from "no frames"; the logdir,
        and, when it is missing or inside a run, what to do (the welcome page says both)."""
        answer: dict[str, Any] = {"ok": True, "time": time.time(), "logdir": self._index.logdir}
        hint = self._index.setup_hint()
        if hint is not None:
            answer["hint"] = hint
        return json_response(request, answer)

    @wrappers.Request.application
    def _serve_runs(self, request: wrappers.Request) -> wrappers.Response:
        """The runs, each with the age in seconds of its latest frame (null if it has none) and, once its
        trainer closed its Beholder, "ended": which frame was its last, and when."""
        now = time.time()
        out = []
        for run in self._index.runs(fresh=request.args.get("fresh") == "1"):
            mtime = run.frame_mtime()
            age = None if mtime is None else max(0.0, now - mtime)
            entry = {"run": run.name, "age": age, "storage": self._index.storage}
            ended = self._ended.of(run, mtime, age)
            if ended is not None:
                entry["ended"] = ended
            out.append(entry)
        return json_response(request, out)

    def _frame_response(self, request: wrappers.Request, frame: EncodedFrame) -> wrappers.Response:
        """A PNG response for an encoded frame, or 304 when the client already has it."""
        headers = frame.headers()
        if request.if_none_match and request.if_none_match.contains(frame.etag.strip('"')):
            return http_util.Respond(request, b"", "image/png", code=304, headers=headers)
        return http_util.Respond(request, frame.png, "image/png", headers=headers)

    def _frame_path(self, run: Run) -> str:
        """The path of the run's frame file (RunError if it is a symlink out of the logdir)."""
        return self._index.file_path(run, FRAME_FILE)

    @wrappers.Request.application
    @with_run
    def _serve_frame(self, request: wrappers.Request, run: Run) -> wrappers.Response:
        """The run's latest frame as PNG, with an ETag (304 on a matching If-None-Match)."""
        frame = self._hub.latest(self._frame_path(run))
        if frame is None:
            return error_response(request, f"run {run.name!r} has no frame yet", 404)
        return self._frame_response(request, frame)

    @wrappers.Request.application
    @with_run
    def _serve_live(self, request: wrappers.Request, run: Run) -> wrappers.Response:
        """Long polling: the first frame whose ETag is not ?after=, or 204 after ?timeout= s."""
        timeout = live_timeout(request.args.get("timeout", str(DEFAULT_LIVE_TIMEOUT)))
        frame = self._hub.wait_newer(self._frame_path(run), request.args.get("after"), timeout)
        if frame is None:
            return http_util.Respond(request, b"", "image/png", code=204)
        return http_util.Respond(request, frame.png, "image/png", headers=frame.headers())

    def _data_response(self, request: wrappers.Request, load: Callable[[], FrameData | EncodedFrame | None],
                       rows: tuple[int, int] | None, missing: Callable[[], wrappers.Response],
                       conditional: bool = True) -> wrappers.Response:
        """A frame-data answer for what load() gives: a "sections" frame as bytes, any other as PNG.

        304 on a matching If-None-Match when ``conditional``; missing() when
        load() finds nothing. A frame replaced between reading its header and
        its values is loaded again (the frame that replaced it is answered).
        """
        for _ in range(_DATA_ATTEMPTS):
            found = load()
            if found is None:
                return missing()
            if isinstance(found, EncodedFrame):
                if conditional:
                    return self._frame_response(request, found)
                return http_util.Respond(request, found.png, "image/png", headers=found.headers())
            headers = found.headers()
            matched = request.if_none_match and request.if_none_match.contains(found.etag.strip('"'))
            if conditional and matched:
                return http_util.Respond(request, b"", "application/octet-stream", code=304, headers=headers)
            try:
                body = found.payload(rows)
            except FrameGone:
                continue
            return http_util.Respond(request, body, "application/octet-stream", headers=headers)
        return error_response(request, "the frame kept changing while it was read; try again", 503)

    @wrappers.Request.application
    @with_run
    def _serve_frame_data(self, request: wrappers.Request, run: Run) -> wrappers.Response:
        """The latest frame (or ?frame=, a kept one) as palette indices per section; PNG for other frames."""
        rows = row_range(request.args.get("rows"))
        name = request.args.get("frame")
        path, expect = self._kept_frame(run, name)
        return self._data_response(request, lambda: self._hub.frame_data(path, expect), rows,
                                   lambda: error_response(request, no_frame_message(run, name), 404))

    @wrappers.Request.application
    @with_run
    def _serve_live_data(self, request: wrappers.Request, run: Run) -> wrappers.Response:
        """Long polling as /live, answering as frame-data (?rows= too)."""
        rows = row_range(request.args.get("rows"))
        timeout = live_timeout(request.args.get("timeout", str(DEFAULT_LIVE_TIMEOUT)))
        path, after = self._frame_path(run), request.args.get("after")
        deadline = time.monotonic() + timeout
        return self._data_response(
            request,
            lambda: self._hub.wait_newer(path, after, deadline - time.monotonic(), as_data=True),
            rows,
            lambda: http_util.Respond(request, b"", "application/octet-stream", code=204),
            conditional=False,
        )

    @wrappers.Request.application
    @with_run
    def _serve_section_info(self, request: wrappers.Request, run: Run) -> wrappers.Response:
        """The section table of the run's latest frame (or of ?frame=, a kept one), from its own header."""
        name = request.args.get("frame")
        frame = self._hub.frame_data(*self._kept_frame(run, name))  # no PNG encoding for a table
        if frame is None and name is not None:
            return error_response(request, no_frame_message(run, name), 404)
        if frame is None:
            return json_response(request, section_table(None))
        if frame.table_json is None:  # once per frame, shared by every viewer (Respond unzips if need be)
            frame.table_json = gzip.compress(section_table_json(frame), compresslevel=1, mtime=0)
        return http_util.Respond(request, frame.table_json, "application/json", content_encoding="gzip")

    @wrappers.Request.application
    @with_run
    def _serve_value(self, request: wrappers.Request, run: Run) -> wrappers.Response:
        """What pixel (?x=, ?y=) of the latest frame (or of ?frame=, a kept one) shows, and its value.

        Or, with ?section=NAME&index=[i, j, ...], the pixel showing that element
        of that section (a pin that follows its element when the layout
        changes): ?x=&y= when given and still showing it, else its first
        pixel; the answer then says its x and y.
        """
        name = request.args.get("frame")
        path, expect = self._kept_frame(run, name)
        if request.args.get("section") is not None:
            section, index = request.args["section"], element_index(request.args.get("index"))
            found_at = self._element_pixel(path, section, index)
            if found_at is not None and None not in (request.args.get("x"), request.args.get("y")):
                found_at = self._still_shown(path, expect, request.args, section, index, found_at)
            if found_at is None:
                return error_response(request, f"section {request.args['section']!r} shows no element "
                              f"{request.args.get('index')} in this frame", 404)
            x, y = found_at
        else:
            x, y = (pixel_coordinate(request.args.get(k), k) for k in ("x", "y"))
        try:
            found = self._hub.value_at(path, x, y, expect)
        except FileNotFoundError:
            return error_response(request, no_frame_message(run, name), 404)
        if found is None:
            return error_response(request, f"pixel ({x}, {y}) shows no array value in this frame", 404)
        if request.args.get("section") is not None:  # looked up by element: say where it is
            found = {**found, "x": x, "y": y}
        return json_response(request, found)

    def _still_shown(self, path: str, expect: Any, args: Any, section: str, index: list[int],
                     first: tuple[int, int]) -> tuple[int, int]:
        """Pixel (?x=, ?y=) when it still shows element ``index`` of ``section``, else ``first`` (its first
        pixel): a pin stays where it was put while the layout keeps its element there."""
        x, y = (pixel_coordinate(args.get(k), k) for k in ("x", "y"))
        try:
            here = self._hub.value_at(path, x, y, expect)
        except FileNotFoundError:
            return first
        same = here is not None and here.get("name") == section and here.get("index") == index
        return (x, y) if same else first

    def _element_pixel(self, path: str, section: str, index: list[int]) -> tuple[int, int] | None:
        """The pixel of the frame at path showing element ``index`` of section (None: none shows it)."""
        try:
            found = self._hub.header(path)  # (a corrupt frame: a 500 naming it, as looked up by pixel)
        except FileNotFoundError:
            return None
        if found is None:
            return None
        (head, _offset), _identity = found
        return pixel_of(head.get("sections") or [], int(head.get("width") or 0), section, index)

    @wrappers.Request.application
    @with_run
    def _serve_history(self, request: wrappers.Request, run: Run) -> wrappers.Response:
        """The run's kept frames, oldest first: name, time, step, frame id and writer."""
        self._index.file_path(run, HISTORY_DIR)  # RunError if it leads out of the logdir
        return http_util.Respond(request, kept_listing(run.path).history_json(), "application/json")

    @wrappers.Request.application
    @with_run
    def _serve_history_stats(self, request: wrappers.Request, run: Run) -> wrappers.Response:
        """The sections' stats of the run's kept frames of ?values= (at most 300, spread), from headers."""
        try:
            kind = parse_kind(request.args.get("values"))
        except StatsRequestError as exc:
            raise RunError(str(exc), 400) from exc
        self._index.file_path(run, HISTORY_DIR)  # RunError if it leads out of the logdir
        return http_util.Respond(request, stats_json(run.path, kind), "application/json")

    @wrappers.Request.application
    @with_run
    def _serve_timeline(self, request: wrappers.Request, run: Run) -> wrappers.Response:
        """timeline: the run's timeline, ?points= per section at most, of the sections whose names contain
        ?sections= (every one without it), its anomalies and kept frames."""
        try:
            points = parse_points(request.args.get("points"))
            values = parse_values(request.args.get("values"))
            sections = parse_sections(request.args.get("sections"))
        except TimelineRequestError as exc:
            raise RunError(str(exc), 400) from exc
        self._index.file_path(run, "timeline")  # RunError if it leads out of the logdir
        answer = timeline_json(run.name, run.path, points, run.files, values, sections)  # (as json_bytes)
        return http_util.Respond(request, answer, "application/json")

    @wrappers.Request.application
    @with_run
    def _serve_history_frame(self, request: wrappers.Request, run: Run) -> wrappers.Response:
        """One kept frame (?name=) as PNG, with an ETag; 404 once the ring has dropped it."""
        name = request.args.get("name", "")
        frame = self._hub.latest(*self._kept_frame(run, name))
        if frame is None:
            return error_response(request, no_frame_message(run, name), 404)
        return self._frame_response(request, frame)

    @wrappers.Request.application
    @with_run
    def _serve_diff(self, request: wrappers.Request, run: Run) -> wrappers.Response:
        """?run= minus ?other= (latest frames, sections matched by name) as PNG; ?format=json describes it."""
        if not request.args.get("other"):
            raise RunError("missing query parameter 'other' (the run to subtract)", 400)
        other = self._index.resolve(request.args.get("other"))
        try:
            found = self._diffs.diff(self._frame_path(run), self._frame_path(other))
        except DiffError as exc:
            return error_response(request, str(exc), exc.status)
        if found is None:
            return error_response(request, f"run {run.name!r} or run {other.name!r} has no frame yet", 404)
        info = {"run": run.name, "other": other.name, **found.info}
        if request.args.get("format") == "json":
            return json_response(request, info)
        return http_util.Respond(request, found.png, "image/png", headers=diff_headers(info))

    def _kept_frame(self, run: Run, name: str | None) -> tuple[str, tuple[str, int] | None]:
        """The path of the latest frame (name None) or of a kept one, and the (writer, frame id) it must hold.

        RunError 400 for a name that is not a kept frame's file name, 403 if
        the file leads out of the logdir.
        """
        if name is None:
            return self._frame_path(run), None
        try:
            history_frame_path(run.path, name)  # validates the name
        except ValueError as exc:
            raise RunError(str(exc), 400) from None
        entry = parse_history_name(name)
        expect = None if entry is None else (entry.writer, entry.frame_id)
        return self._index.file_path(run, f"{HISTORY_DIR}/{name}"), expect

    @wrappers.Request.application
    @with_run
    def _serve_config(self, request: wrappers.Request, run: Run) -> wrappers.Response:
        """GET: the run's settings; POST: change some (JSON body, validated, all or nothing)."""
        self._index.file_path(run, CONFIG_FILE)  # RunError if it leads out of the logdir
        if request.method == "GET":
            return self._config_reply(request, run)
        if request.method != "POST":
            return method_not_allowed(request, "GET, POST")
        self._check_write(request)
        changes = read_json_body(request, MAX_CONFIG_BODY)
        try:
            accepted = validate_changes(changes)
        except ConfigError as exc:
            return error_response(request, str(exc), 400)
        with self._config_lock:
            try:
                config = read_config(run.path)
            except ConfigError as exc:
                # The file on disk is broken: the user's change is applied over the defaults.
                logger.warning("Beholder: replacing invalid %s: %s", config_path(run.path), exc)
                config = dict(DEFAULT_CONFIG)
            config.update(accepted)
            try:
                write_config(run.path, config)
            except (OSError, FileRefused) as exc:
                return error_response(request, f"cannot write the config of run {run.name!r}: {exc}", 403)
        return self._config_reply(request, run)

    def _config_reply(self, request: wrappers.Request, run: Run) -> wrappers.Response:
        """{"config": settings, "writable": bool, "problem": message or null} for a run."""
        problem = None
        try:
            config = read_config(run.path)
        except ConfigError as exc:
            config, problem = dict(DEFAULT_CONFIG), str(exc)
        return json_response(
            request,
            {"config": config, "writable": is_writable(run.beholder_dir), "problem": problem},
        )

    # ------------------------------------------------------------ videos
    @wrappers.Request.application
    def _serve_colormaps(self, request: wrappers.Request) -> wrappers.Response:
        """Every colormap, in the order offered, with its 256 colours as one hex string ("rrggbb" x 256)."""
        return json_response(request, palettes_hex())

    @wrappers.Request.application
    @with_run
    def _serve_videos(self, request: wrappers.Request, run: Run) -> wrappers.Response:
        """The run's recordings and exports (mp4), newest first: name, kind, size and time."""
        self._index.file_path(run, EXPORTS_DIR)  # RunError if it leads out of the logdir
        return json_response(request, list_videos(run.beholder_dir, run.files))

    @wrappers.Request.application
    @with_run
    def _serve_video(self, request: wrappers.Request, run: Run) -> wrappers.Response:
        """One recording or export (?name= as `videos` lists it) as an mp4 download."""
        try:
            name = check_video_name(request.args.get("name"))
            chunks, size = open_video(self._index.file_path(run, name), name, run.files)
        except VideoError as exc:
            return error_response(request, str(exc), exc.status)
        # exactly `size` bytes, as Content-Length says, even from a recording that grows meanwhile
        response = wrappers.Response(chunks, mimetype="video/mp4", direct_passthrough=True)
        response.content_length = size
        response.headers["Content-Disposition"] = f'attachment; filename="{os.path.basename(name)}"'
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @wrappers.Request.application
    @with_run
    def _serve_export(self, request: wrappers.Request, run: Run) -> wrappers.Response:
        """POST {"from": NAME, "to": NAME[, "fps": N]}: encode those kept frames to exports/*.mp4."""
        if request.method != "POST":
            return method_not_allowed(request, "POST")
        self._check_write(request)
        body = read_json_body(request, MAX_EXPORT_BODY)
        if not isinstance(body, dict):
            return error_response(request, 'the body must be a JSON object {"from": NAME, "to": NAME}', 400)
        self._index.file_path(run, HISTORY_DIR)  # RunError if either folder leads out of the logdir
        exports = self._index.file_path(run, EXPORTS_DIR)
        if not self._export_lock.acquire(blocking=False):
            return error_response(request, "another export is being encoded; try again when it has finished",
                                  409)
        try:
            fps = body.get("fps", DEFAULT_EXPORT_FPS)
            result = export_range(run.path, exports, body.get("from"), body.get("to"), fps)
        except VideoError as exc:
            return error_response(request, str(exc), exc.status)
        finally:
            self._export_lock.release()
        return json_response(request, dataclasses.asdict(result))

    def _check_write(self, request: wrappers.Request) -> None:
        """RunError 403 unless the request comes from a page of this TensorBoard (server/origin.py)."""
        why = write_refusal(request.headers.get("Host"), request.headers.get("Origin"), self._trusted_hosts,
                            self._listed_hosts)
        if why is not None:
            logger.warning("Beholder: refused a write to %s: %s", request.path, why)
            raise RunError(why, 403)
