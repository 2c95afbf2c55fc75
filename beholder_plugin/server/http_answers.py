"""The HTTP plumbing of the plugin's routes: query parsing, JSON bodies and answers, the run decorator.

Also the documents some routes answer with (the section table, the diff
headers). The routes themselves are in server/plugin.py; their answers are
documented in docs/http-api.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
import urllib.parse
from typing import Any, Callable

from tensorboard.backend import http_util, json_util
from werkzeug import wrappers

from beholder_plugin.protocol.files import FileRefused
from beholder_plugin.protocol.frame_format import FrameFormatError
from beholder_plugin.server.frame_data import FrameData
from beholder_plugin.server.frame_encoding import EncodedFrame
from beholder_plugin.server.runs import Run, RunError

logger = logging.getLogger("beholder")

# The diff description travels in a header up to this size (else only through ?format=json).
MAX_DIFF_HEADER = 64 << 10
MAX_LIVE_TIMEOUT = 30.0  # seconds a long poll may ask to wait


def error_response(request: wrappers.Request, message: str, code: int) -> wrappers.Response:
    """A JSON error response {"error": message}."""
    return http_util.Respond(request, {"error": message}, "application/json", code=code)


def json_response(request: wrappers.Request, content: Any, code: int = 200) -> wrappers.Response:
    """A JSON response that is never cached."""
    return http_util.Respond(request, content, "application/json", code=code)


def json_bytes(content: Any) -> bytes:
    """content as JSON the way http_util.Respond writes it (NaN and infinities as strings), but fast.

    Cleanse walks every value in Python; it is only needed for a non-finite
    number, which json.dumps(allow_nan=False) finds in C.
    """
    try:
        return json.dumps(content, allow_nan=False).encode("utf-8")
    except ValueError:
        return json.dumps(json_util.Cleanse(content)).encode("utf-8")


def pixel_coordinate(raw: str | None, name: str) -> int:
    """A pixel coordinate from the query (RunError 400 unless ASCII digits, a number below 2**31).

    ASCII only: str.isdigit() also accepts "²" (which int() refuses) and "٣" (which it reads as 3).
    """
    if raw is None or not (raw.isascii() and raw.isdigit()) or len(raw) > 10 or int(raw) >= 1 << 31:
        raise RunError(f"query parameter {name!r} must be a pixel coordinate (a whole number >= 0)", 400)
    return int(raw)


def element_index(raw: str | None) -> list[int]:
    """?index= of a value look-up by element: a JSON list of whole numbers from 0; RunError 400 if not."""
    try:  # (8 whole numbers below 2**31 take at most 96 characters: longer is no index, and a deep
        # nesting of brackets would exhaust json's recursion)
        index = json.loads(raw or "") if len(raw or "") <= 256 else None
    except (ValueError, RecursionError):
        index = None
    if not (isinstance(index, list) and len(index) <= 8
            and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 1 << 31 for i in index)):
        raise RunError("query parameter 'index' must be a JSON list of whole numbers >= 0, e.g. [3, 1]", 400)
    return index


def live_timeout(raw: str) -> float:
    """?timeout= of a long poll in seconds (RunError 400 unless a number from 0 to MAX_LIVE_TIMEOUT)."""
    try:
        timeout = float(raw)
    except ValueError:
        timeout = float("nan")
    if not math.isfinite(timeout) or not 0 <= timeout <= MAX_LIVE_TIMEOUT:
        raise RunError(f"'timeout' must be a number of seconds from 0 to {MAX_LIVE_TIMEOUT:g}", 400)
    return timeout


def row_range(raw: str | None) -> tuple[int, int] | None:
    """?rows=A-B (first and last row, inclusive) as a pair, None when absent (RunError 400 if malformed)."""
    if raw is None:
        return None
    first, sep, last = raw.partition("-")
    if not sep:
        raise RunError("query parameter 'rows' must be FIRST-LAST (whole numbers, FIRST <= LAST)", 400)
    a, b = pixel_coordinate(first, "rows"), pixel_coordinate(last, "rows")
    if a > b:
        raise RunError("query parameter 'rows' must be FIRST-LAST (whole numbers, FIRST <= LAST)", 400)
    return a, b


def section_table(frame: EncodedFrame | FrameData | None) -> dict[str, Any]:
    """The /section-info document for a frame (or for no frame yet)."""
    if frame is None:
        return {"version": 2, "frame_id": None, "writer": None, "step": None, "sections": []}
    head = frame.header
    return {
        "version": 2,
        "frame_id": head.get("frame_id"),
        "writer": head.get("writer"),
        "step": head.get("step"),
        "window": variance_window(head.get("window")),
        "sections": head.get("sections", []),
    }


def variance_window(window: Any) -> dict[str, Any] | None:
    """A header's "window" (frames the variance is over, and the shape change that restarted it), kept
    only when well-formed: the dashboard puts its figures in a sentence."""
    if not isinstance(window, dict):
        return None
    frames, size = window.get("frames"), window.get("size")
    if not all(type(v) is int and 0 <= v <= 1000 for v in (frames, size)):
        return None
    out: dict[str, Any] = {"frames": frames, "size": size}
    changed = window.get("changed")
    if isinstance(changed, dict):
        name, was, now, count = (changed.get(k) for k in ("name", "was", "now", "sections"))
        dims = all(isinstance(s, list) and len(s) <= 32 and all(type(d) is int for d in s)
                   for s in (was, now))
        if isinstance(name, str) and len(name) <= 1000 and dims and type(count) is int and count >= 1:
            out["changed"] = {"name": name, "was": was, "now": now, "sections": count}
    return out


_SECTIONS_KEY = b'"sections":['


def section_table_json(frame: EncodedFrame | FrameData) -> bytes:
    """section_table(frame) as JSON bytes, quoting the header's stored sections when that is safe.

    Writing 200 section records again costs milliseconds of float
    formatting per frame. A header written by this package has "sections"
    last and no NaN or infinity, so its sections array is the stored text
    from the one '"sections":[' to the closing brace; any other header is
    written out again.
    """
    text = getattr(frame, "header_text", b"").rstrip()
    quotable = (
        text.endswith(b"}") and next(reversed(frame.header), None) == "sections"
        and text.count(_SECTIONS_KEY) == 1 and b"NaN" not in text and b"Infinity" not in text
    )
    if not quotable:
        return json_bytes(section_table(frame))
    table = section_table(frame)
    del table["sections"]
    start = text.index(_SECTIONS_KEY) + len(_SECTIONS_KEY) - 1
    return json_bytes(table)[:-1] + b', "sections": ' + text[start:-1] + b"}"


def diff_headers(info: dict[str, Any]) -> list[tuple[str, str]]:
    """Headers of a diff PNG: size, both frame ids, and the description as percent-encoded JSON."""
    out = [("X-Beholder-Size", f"{info['width']}x{info['height']}")]
    for key, name in (("frame_id", "X-Beholder-Frame-Id"), ("other_frame_id", "X-Beholder-Other-Frame-Id")):
        if isinstance(info.get(key), int):
            out.append((name, str(info[key])))
    described = urllib.parse.quote(json.dumps(info, separators=(",", ":")), safe="")
    if len(described) <= MAX_DIFF_HEADER:
        out.append(("X-Beholder-Diff", described))
    return out


def no_frame_message(run: Run, name: str | None) -> str:
    """The 404 message for a run without a frame yet, or a kept frame the ring has dropped."""
    if name is None:
        return f"run {run.name!r} has no frame yet"
    return f"frame {name} of run {run.name!r} is no longer kept (the history ring dropped it)"


def with_run(handler: Callable) -> Callable:
    """Decorate a route method: it gets the resolved ?run=, and its errors become JSON answers.

    RunError keeps its status; a frame file that cannot be used (corrupt,
    an old version, not a regular file, a header past the caps) and a file
    the system refuses to read (permissions, a symlink loop) are a 500
    naming the problem; running out of memory is a 503, and any other
    failure a 500, all as JSON.
    """

    def wrapped(self: Any, request: wrappers.Request) -> wrappers.Response:
        try:
            return handler(self, request, self.run_index.resolve(request.args.get("run")))
        except RunError as exc:
            return error_response(request, str(exc), exc.status)
        except FrameFormatError as exc:
            return error_response(request, f"the frame file is not a valid Beholder frame: {exc}", 500)
        except FileRefused as exc:  # (names its file: a frame, a timeline file, anomalies.jsonl...)
            return error_response(request, f"a file of the run cannot be read: {exc}", 500)
        except OSError as exc:
            name = os.path.basename(exc.filename) if isinstance(exc.filename, str) else "a file"
            return error_response(request, f"cannot read {name} of the run: {exc.strerror or exc}", 500)
        except MemoryError:
            logger.warning("Beholder: out of memory answering %s", request.path)
            message = "the server ran out of memory answering this request; try again"
            return error_response(request, message, 503)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the answer is JSON, never an HTML page
            logger.exception("Beholder: %s failed", request.path)
            return error_response(
                request, f"the server failed answering this request: {type(exc).__name__}: {exc}", 500)

    wrapped.__doc__ = handler.__doc__
    wrapped.__name__ = handler.__name__
    return wrapped


def read_json_body(request: wrappers.Request, limit: int) -> Any:
    """The request's JSON body; RunError 415 (not JSON), 413 (over limit bytes) or 400 (unparsable)."""
    if request.mimetype != "application/json":
        raise RunError("the body must be JSON sent as Content-Type: application/json", 415)
    if (request.content_length or 0) > limit:  # refused before anything is read
        raise RunError(f"the body is larger than {limit} bytes", 413)
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise RunError(f"the body is larger than {limit} bytes", 413)
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # RecursionError: "[[[[..." nested deeper than the decoder allows, well within 4 KB.
        raise RunError(f"the body is not valid JSON: {exc}", 400) from None


def method_not_allowed(request: wrappers.Request, allowed: str) -> wrappers.Response:
    """A 405 JSON answer naming the methods a route takes (e.g. "GET, POST")."""
    message = "use " + " or ".join(allowed.split(", "))
    return http_util.Respond(request, {"error": message}, "application/json", code=405,
                             headers=[("Allow", allowed)])
