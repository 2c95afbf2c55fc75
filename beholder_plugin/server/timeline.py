"""The /timeline route's answer: a run's timeline cut to at most `points` per section, and its anomalies.

Every section's records are put in the same `points` buckets of steps (the
whole run's first to last step), so rows line up by step. Per bucket: the
last record's step, time, norm, mean and std; the smallest min and largest
max; the largest non-finite count; the flags of all its records (OR).
Columns travel as base64 of little-endian float64 (step, time) or float32
(the rest), which the dashboard reads as typed arrays. A run of more than
MAX_SECTIONS sections answers MAX_SECTIONS of them, those with anomalies
among them, and says how many it left out; ``sections=`` (a filter, as the
dashboard's "Filter sections" box matches) answers only the sections whose
names contain it, so that a left-out section can still be found.
"""

from __future__ import annotations

import base64
import os
import posixpath
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from beholder_plugin.protocol import timeline as tl
from beholder_plugin.protocol.files import files_for
from beholder_plugin.server import kept_frames
from beholder_plugin.server.flights import Flights, Slots
from beholder_plugin.server.http_answers import json_bytes

DEFAULT_POINTS = 512
MAX_POINTS = 4096
MAX_SECTIONS = 4096
CACHED_ANSWERS = 8  # (run, points, values, filter) whose sections are kept while the files stay the same
CACHED_BYTES = 64 << 20  # ... and at most so many bytes of them
CACHED_FILTERED = 4  # ... of them with a ?sections= filter at most (the oldest go first: typing makes many)
MAX_FILTER_CHARS = 256  # the longest ?sections= filter (a section's name is rarely a quarter of it)
# An answer holds at most this many points over all its sections (44 bytes each, 59 as base64: 31 MB):
# a run of many sections gets fewer points a section than it asked for (its "points" says how many).
MAX_CELLS = 1 << 19
CACHED_BASES = 2  # runs whose base.bht and records are kept parsed (the dashboard's run and its comparison)
READ_SLOTS = 2  # answers built at once (each may hold a whole run's records: about 60 MB at the caps)
WIDE = ("step", "time")
NARROW = ("norm", "mean", "std", "min", "max", "nonfinite")


class TimelineRequestError(ValueError):
    """A bad query parameter (the route answers 400)."""


def parse_points(raw: str | None) -> int:
    """The ?points= parameter: a whole number from 2 to MAX_POINTS (default DEFAULT_POINTS)."""
    if raw is None or raw == "":
        return DEFAULT_POINTS
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6 or not 2 <= int(raw) <= MAX_POINTS:
        raise TimelineRequestError(f"points must be a whole number from 2 to {MAX_POINTS}, not {raw[:20]!r}")
    return int(raw)


def parse_values(raw: str | None) -> str | None:
    """The ?values= parameter: which values' records to answer (None: those the trainer showed last)."""
    if raw is None or raw == "":
        return None
    if raw not in tl.VALUES_CODES:
        raise TimelineRequestError(f"values must be one of {', '.join(tl.VALUES_CODES)}, not {raw[:40]!r}")
    return raw


def parse_sections(raw: str | None) -> str | None:
    """The ?sections= filter as matched: trimmed and lower-cased, as the dashboard's box does (None: every
    section); longer than MAX_FILTER_CHARS is refused."""
    if raw is None:
        return None
    if len(raw) > MAX_FILTER_CHARS:
        raise TimelineRequestError(f"sections must be a filter of at most {MAX_FILTER_CHARS} characters, "
                                   f"not {len(raw)}")
    words = raw.strip().lower()
    return words or None


def matches(name: str, words: str | None) -> bool:
    """Whether a section's name passes a filter (parse_sections'): contains it, ignoring case, as the
    dashboard's "Filter sections" box matches."""
    return words is None or words in name.lower()


def newest_values(by_section: dict[str, np.ndarray]) -> tuple[str | None, list[str]]:
    """(The values of the run's newest record, every values its records are of), by the records' flags
    (None and [] for records that do not say: older writers)."""
    codes: set[int] = set()
    newest, newest_time = 0, -np.inf
    for records in by_section.values():
        if not len(records):
            continue
        found = tl.values_of(records["flags"])
        codes.update(np.unique(found).tolist())
        last = int(np.argmax(records["time"]))
        if records["time"][last] > newest_time:
            newest, newest_time = int(found[last]), float(records["time"][last])
    kinds = [name for name, code in tl.VALUES_CODES.items() if code in codes]
    return tl.values_named(newest), kinds


def bucketed(records: np.ndarray, first: int, last: int, points: int) -> dict[str, np.ndarray]:
    """One section's records (sorted by step) reduced to at most `points` buckets of the run's steps."""
    if len(records) == 0:
        return {name: np.zeros(0) for name in WIDE + NARROW + ("flags",)}
    span = max(1, last - first + 1)
    steps = records["step"]
    if len(steps) > 1 and (np.diff(steps) < 0).any():  # a restarted trainer counted its steps afresh: the
        index = np.arange(len(steps)) * points // len(steps)  # records in time order, cut into `points`
    else:
        index = ((steps - first) * points // span).clip(0, points - 1)
    starts = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
    ends = np.r_[starts[1:], len(records)] - 1
    with np.errstate(invalid="ignore"):
        lows = np.fmin.reduceat(records["min"], starts)
        highs = np.fmax.reduceat(records["max"], starts)
    out = {
        "step": records["step"][ends].astype(np.float64),
        "time": records["time"][ends],
        "norm": records["norm"][ends],
        "mean": records["mean"][ends],
        "std": records["std"][ends],
        "min": lows,
        "max": highs,
        "nonfinite": np.maximum.reduceat(records["nonfinite"], starts),
        "flags": np.bitwise_or.reduceat(records["flags"], starts),
    }
    return out


def _b64(values: np.ndarray, dtype: str) -> str:
    """A column as base64 of little-endian values of dtype."""
    return base64.b64encode(np.ascontiguousarray(values, dtype).tobytes()).decode("ascii")


class _Answer:
    """A kept answer of (run, points, values, filter): its sections part, and the whole JSON last made."""

    __slots__ = ("signature", "anomalous", "body", "size", "whole", "made_of")

    def __init__(self, signature: tuple, anomalous: tuple[str, ...], body: dict[str, Any]) -> None:
        self.signature = signature
        self.anomalous = anomalous  # (the sections anomalies.jsonl named: kept first past MAX_SECTIONS)
        self.body = body
        self.size = sum(len(v) for entry in body["sections"] for v in entry.values() if isinstance(v, str))
        self.whole: bytes | None = None  # timeline_json's answer, made of (run name, kept names, anomalies):
        self.made_of: tuple = ()  # identical requests share these bytes until a listing or anomaly changes

    def held(self) -> int:
        """About how many bytes this answer holds."""
        return self.size + len(self.whole or b"")


_Key = tuple[str, int, "str | None", "str | None"]  # (run path, points, values, ?sections= filter)
_cache: OrderedDict[_Key, _Answer] = OrderedDict()  # by _Key, least recently asked for first
_cache_lock = threading.Lock()
_flights = Flights()  # one build of an answer, of a run's records, of its anomalies at a time
_reads = Slots(READ_SLOTS, "timeline")
_NO_ANOMALIES: tuple[dict[str, Any], ...] = ()  # (a run without anomalies.jsonl: the same object each time)


_bases: OrderedDict[str, dict[str, Any]] = OrderedDict()  # run path -> read_records' base_cache, "records"
# (signature, records by section) and "anomalies" (identity, records)


def forget() -> None:
    """Drop every built answer, parsed base, records and listing (the next request reads the files again)."""
    with _cache_lock:
        _cache.clear()
        _bases.clear()
    kept_frames.forget()


def _base_cache(run_path: str) -> dict[str, Any]:
    """The run's parsed base.bht, records and anomalies, kept for the CACHED_BASES runs asked for most
    recently."""
    with _cache_lock:
        found = _bases.setdefault(run_path, {})
        _bases.move_to_end(run_path)
        while len(_bases) > CACHED_BASES:
            _bases.popitem(last=False)
    return found


def _signature(run_path: str, files: Any) -> tuple:
    """What the timeline's files are now (names and identities: size, inode or ETag, modification time)."""
    directory = tl.timeline_dir(run_path)
    files = files or files_for(directory)
    join = posixpath.join if getattr(files, "remote", False) else os.path.join
    return tuple(sorted((name, files.identity(join(directory, name))) for name in files.listdir(directory)
                        if name != tl.ANOMALIES_FILE))


def timeline_answer(run_name: str, run_path: str, points: int, files: Any = None,
                    values: str | None = None, sections: str | None = None) -> dict[str, Any]:
    """The JSON answer of /timeline for one run (see docs/http-api.md): the records of ``values`` (None:
    of the values the trainer showed last), of the sections whose names contain ``sections`` (a filter as
    parse_sections makes it; None: every section).

    The bucketed sections are kept (CACHED_ANSWERS runs) and built again
    only when a timeline file changed, so a dashboard refreshing a finished
    or slow run reads nothing but the directory; a live run's base.bht and
    its records are kept parsed (CACHED_BASES runs), so its refreshes parse
    only the parts, and other ``points`` or ``values`` parse nothing.
    Requests arriving while an answer is built wait for it and share it;
    at most READ_SLOTS builds run at once.
    """
    answer, source, anomalies, listing = _parts(run_path, points, files, values, sections)
    return {
        "run": run_name,
        **answer.body,  # (its "points": at most those asked for, fewer for a run of very many sections)
        "anomalies": anomalies,
        "kept": listing.kept(_named_frames(source)),
    }


def timeline_json(run_name: str, run_path: str, points: int, files: Any = None,
                  values: str | None = None, sections: str | None = None) -> bytes:
    """timeline_answer as json_bytes writes it; requests for the same answer while nothing changed share
    one bytes object (made once, its "kept" from the listing's own JSON)."""
    answer, source, anomalies, listing = _parts(run_path, points, files, values, sections)
    made_of = (run_name, listing.names, source)  # (a live ring is listed at each request: its names)
    with _cache_lock:
        if (answer.whole is not None and answer.made_of[2] is source and answer.made_of[0] == run_name
                and answer.made_of[1] == listing.names):
            return answer.whole

    def made() -> bytes:
        """The whole answer as JSON, kept with what it was made of."""
        head = json_bytes({"run": run_name, **answer.body, "anomalies": anomalies})
        whole = b"".join((head[:-1], b', "kept": ', listing.kept_json(_named_frames(source)), b"}"))
        with _cache_lock:
            answer.whole, answer.made_of = whole, made_of
            _evict()
        return whole

    return _flights.run(("json", id(answer), id(source), run_name, listing.names), made)  # (both alive)


def _named_frames(anomalies: Sequence[dict[str, Any]]) -> frozenset[str]:
    """The kept frames the anomaly records name (the dashboard opens them by name: never thinned out)."""
    return frozenset(name for record in anomalies if isinstance(record.get("frames"), list)
                     for name in record["frames"]
                     if isinstance(name, str))


def _parts(run_path: str, points: int, files: Any, values: str | None, sections: str | None = None
           ) -> tuple[_Answer, Sequence[dict[str, Any]], list[dict[str, Any]], kept_frames.Listing]:
    """The kept answer (its sections part), the run's anomalies (as kept) and those the answer holds,
    and the listing of kept frames."""
    key: _Key = (run_path, points, values, sections)
    signature = _signature(run_path, files)
    source = _anomalies(run_path, files)
    anomalous = tuple(dict.fromkeys(a["section"] for a in source if isinstance(a.get("section"), str)))
    with _cache_lock:
        answer = _cache.get(key)
        if answer is not None:
            _cache.move_to_end(key)  # (the least recently asked for go first)
    if answer is None or answer.signature != signature or answer.anomalous != anomalous:
        answer = _flights.run(("answer", key, signature, anomalous),
                              lambda: _built(key, signature, anomalous, files))
    listing = kept_frames.kept_listing(run_path, files)
    shown = answer.body["values"]
    anomalies = [a for a in source if shown is None or a.get("values", shown) == shown]  # (of these values)
    return answer, source, anomalies[:1000], listing


def _built(key: _Key, signature: tuple, anomalous: tuple[str, ...], files: Any) -> _Answer:
    """The sections part of the answer for key, built from the run's records, and kept."""
    run_path, points, values, sections = key
    by_section = _records(run_path, signature, files)
    with _reads:
        body = _sections_answer(by_section, points, values, anomalous, sections)
        answer = _Answer(signature, anomalous, body)
    with _cache_lock:
        _cache[key] = answer
        _cache.move_to_end(key)
        _evict()
    return answer


def _evict() -> None:
    """Drop the oldest filtered answers past CACHED_FILTERED, then the oldest answers past CACHED_ANSWERS or
    CACHED_BYTES (the newest stays); under _cache_lock."""
    filtered = [key for key in _cache if key[3] is not None]  # (least recently asked for first)
    for key in filtered[:-CACHED_FILTERED]:
        del _cache[key]
    while len(_cache) > 1 and (len(_cache) > CACHED_ANSWERS
                               or sum(answer.held() for answer in _cache.values()) > CACHED_BYTES):
        _cache.popitem(last=False)


def _records(run_path: str, signature: tuple, files: Any) -> dict[str, np.ndarray]:
    """Every record of the run by section (shared: read them only), read once per signature."""
    kept = _base_cache(run_path)
    found = kept.get("records")
    if found is not None and found[0] == signature:
        return found[1]

    def read() -> dict[str, np.ndarray]:
        """Read the records (within a slot) and keep them with the signature they were read under."""
        with _reads:
            by_section = tl.read_records(run_path, files, base_cache=kept)
        kept["records"] = (signature, by_section)  # (read after the signature: at worst read again)
        return by_section

    return _flights.run(("records", run_path, signature), read)


def _anomalies(run_path: str, files: Any) -> Sequence[dict[str, Any]]:
    """The run's anomaly records (shared: read them only), read again when anomalies.jsonl changed."""
    directory = tl.timeline_dir(run_path)
    files = files or files_for(directory)
    join = posixpath.join if getattr(files, "remote", False) else os.path.join
    identity = files.identity(join(directory, tl.ANOMALIES_FILE))
    if identity is None:
        return _NO_ANOMALIES
    kept = _base_cache(run_path)
    found = kept.get("anomalies")
    if found is not None and found[0] == identity:
        return found[1]

    def read() -> list[dict[str, Any]]:
        """Read anomalies.jsonl and keep its records with the identity it was read under."""
        records = tl.read_anomalies(run_path, files)
        kept["anomalies"] = (identity, records)
        return records

    return _flights.run(("anomalies", run_path, identity), read)


def answered_sections(by_section: dict[str, np.ndarray], anomalous: Sequence[str] = ()) -> list[str]:
    """The names of the sections an answer holds, in the run's order: every one, or of a run of more than
    MAX_SECTIONS, first those with anomalies (those ``anomalous`` names, then those whose records are
    flagged ANOMALY), then the others in the run's order, MAX_SECTIONS in all."""
    names = list(by_section)
    if len(names) <= MAX_SECTIONS:
        return names
    flagged = [name for name, records in by_section.items()
               if len(records) and (records["flags"] & tl.ANOMALY).any()]
    first = [name for name in anomalous if name in by_section] + flagged
    kept = set(list(dict.fromkeys(first + names))[:MAX_SECTIONS])
    return [name for name in names if name in kept]


def _sections_answer(by_section: dict[str, np.ndarray], points: int, values: str | None,
                     anomalous: Sequence[str] = (), sections: str | None = None) -> dict[str, Any]:
    """The sections part of the answer: every section whose name passes the filter ``sections`` bucketed
    (at most MAX_SECTIONS: answered_sections), and the steps the buckets span (the whole run's, filtered
    or not); the records of ``values`` only (None: of the newest record's), and which values there are."""
    newest, kinds = newest_values(by_section)
    values = values or newest
    if values is not None:
        by_section = tl.of_values(by_section, values)
    matching = by_section if sections is None else {
        name: records for name, records in by_section.items() if matches(name, sections)}
    names = answered_sections(matching, anomalous)
    points = max(2, min(points, MAX_CELLS // max(len(names), 1)))
    steps = [recs["step"] for recs in by_section.values() if len(recs)]
    first = int(min(s.min() for s in steps)) if steps else 0  # (not the first and last records': a
    last = int(max(s.max() for s in steps)) if steps else 0  # restarted trainer counts from 1 again)
    entries = []
    for name in names:
        columns = bucketed(by_section[name], first, last, points)
        entry: dict[str, Any] = {"name": name, "points": int(len(columns["step"])),
                                 "records": int(len(by_section[name]))}
        for column in WIDE:
            entry[column] = _b64(columns[column], "<f8")
        for column in NARROW:
            entry[column] = _b64(columns[column], "<f4")
        entry["flags"] = _b64(columns["flags"], "<u4")
        entries.append(entry)
    return {"first_step": first, "last_step": last, "points": points, "values": values, "kinds": kinds,
            "sections_total": len(by_section), "sections_left_out": len(by_section) - len(names),
            "sections_filter": sections, "sections_matched": len(matching), "sections": entries}
