"""The run's timeline: every section's figures for every frame written, kept for the whole run, bounded.

Files live in ``<run>/plugins/beholder/timeline/``:

- ``part-<seq, 10 digits or more>.bht``: the recent records, appended frame by frame
  (locally one ``write()`` of whole chunks to a file opened for appending;
  on a remote logdir each part is one object, uploaded every few seconds);
- ``base.bht``: the older records, thinned (see ``thin``), rewritten whole and
  atomically when the parts grow past their budget; its metadata chunk says
  which parts it holds (``through``), and those parts are then deleted;
- ``anomalies.jsonl``: one JSON object a line (see docs/protocol.md).

A ``.bht`` file is a sequence of chunks, each a 16-byte header (``b"BHTL"``,
a kind byte, 3 zero bytes, the payload's length and CRC-32 as little-endian
uint32) and its payload. Kind ``N``: JSON ``{"sections": {"<id>": "<name>"}}``
naming the section ids that follow in this file; ``M``: JSON metadata
(``{"through": seq}`` in base.bht); ``R``: records, ``RECORD`` items back to
back. A reader stops at the first chunk that is incomplete or fails its CRC
(a tail being written), so a file is readable while it grows.

Example::

    columns = read_timeline("logs/run1")      # {"conv1/kernel": {"step": array, "norm": array, ...}}
    anomalies = read_anomalies("logs/run1")
"""

from __future__ import annotations

import json
import os
import posixpath
import struct
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from beholder_plugin.protocol.files import _open_regular, files_for
from beholder_plugin.protocol.names import plugin_dir

TIMELINE_DIR = "timeline"
BASE_FILE = "base.bht"
ANOMALIES_FILE = "anomalies.jsonl"
CHUNK_MAGIC = b"BHTL"
_HEADER = struct.Struct("<4sB3xII")
HEADER_BYTES = _HEADER.size

# One record: a section's figures at one frame (72 bytes, little-endian).
RECORD = np.dtype([
    ("step", "<i8"), ("time", "<f8"), ("section", "<u4"), ("flags", "<u4"),
    ("min", "<f4"), ("max", "<f4"), ("mean", "<f4"), ("std", "<f4"), ("norm", "<f4"),
    ("zero", "<f4"), ("nan", "<f4"), ("inf", "<f4"), ("nonfinite", "<f8"), ("count", "<f8"),
])
COLUMNS = tuple(name for name in RECORD.names if name != "section")

# Record flags.
EXACT_NORM = 1  # norm is over every value (else scaled up from the statistics' sample)
EXACT_NONFINITE = 2  # nonfinite is a count over every value (else estimated from the sample)
ANOMALY = 4  # the frame where an anomaly was found (thinning keeps it)
PINNED = 8  # the frame before an anomaly (thinning keeps it)
STEP_CHECKED = 16  # the per-step device check covered the steps up to this record
# Bits 8-11: which values the record is of (the dashboard's Values choice when the frame was taken), so
# that the weights and the gradients of one name, both shown in one run, are two series; 0: not said
# (records written before this).
VALUES_SHIFT = 8
VALUES_MASK = 0xF << VALUES_SHIFT
VALUES_CODES = {"trainable_variables": 1, "gradients": 2, "activations": 3, "arrays": 4}
_VALUES_NAMES = {code: name for name, code in VALUES_CODES.items()}


def values_flag(values: str) -> int:
    """The flag bits saying a record is of these values (0 for values the table does not know)."""
    return VALUES_CODES.get(values, 0) << VALUES_SHIFT


def values_of(flags: np.ndarray) -> np.ndarray:
    """Each record's values as its code (0: not said)."""
    return (np.asarray(flags, np.uint32) & VALUES_MASK) >> VALUES_SHIFT


def values_named(code: int) -> str | None:
    """The values a code stands for (None: not said)."""
    return _VALUES_NAMES.get(int(code))


def of_values(by_section: dict[str, np.ndarray], values: str) -> dict[str, np.ndarray]:
    """The records of these values (and those that do not say), by section; sections left empty go."""
    code = VALUES_CODES.get(values, -1)
    out = {}
    for name, records in by_section.items():
        codes = values_of(records["flags"])
        keep = (codes == code) | (codes == 0)
        if keep.all():
            out[name] = records
        elif keep.any():
            out[name] = records[keep]
    return out

# Thinning, per section: the first KEEP_FIRST records, the last KEEP_RECENT, anomalies, and log-spaced
# records in between, MAX_PER_SECTION in all. 300 sections then take at most 300 * 2048 * 72 B = 44 MB
# in base.bht, plus at most PARTS_BUDGET of parts before they are thinned into it.
KEEP_FIRST = 16
KEEP_RECENT = 1024
MAX_PER_SECTION = 2048
PARTS_BUDGET = 12 << 20
# With fewer sections the parts may grow until base.bht at its cap and the parts reach this together:
# thinning (which reads and rewrites base.bht whole) then runs less often.
TOTAL_BUDGET = 56 << 20
# Readers refuse files above this size (a hostile or broken file cannot exhaust memory).
MAX_FILE_BYTES = 256 << 20
MAX_ANOMALY_BYTES = 4 << 20


# base.bht holds at most this much: past MAX_PER_SECTION x 72 B x 455 sections, each section keeps
# fewer records (a mixture of experts' 3,000: 310 each), down to KEEP_FIRST; past that the sections
# whose newest record is oldest (names that changed, never to come back) are dropped.
BASE_BUDGET = 64 << 20


def section_cap(sections: int, cap: int = MAX_PER_SECTION) -> int:
    """How many records each of this many sections keeps in base.bht (within BASE_BUDGET)."""
    return max(KEEP_FIRST, min(cap, BASE_BUDGET // (max(sections, 1) * RECORD.itemsize)))


# parts_budget() is the same for any number of sections past 330: a writer counts at most so many.
MAX_COUNTED_SECTIONS = 4096


def parts_budget(sections: int) -> int:
    """The bytes of parts a run of this many sections lets grow before they are thinned into base.bht."""
    return max(PARTS_BUDGET, TOTAL_BUDGET - sections * MAX_PER_SECTION * RECORD.itemsize)


def timeline_dir(run_dir: str | os.PathLike) -> str:
    """The directory holding a run's timeline."""
    return os.path.join(plugin_dir(run_dir), TIMELINE_DIR)


def part_name(seq: int) -> str:
    """The file name of part number seq."""
    return f"part-{seq:010d}.bht"


def part_seq(name: str) -> int | None:
    """The number of a part file's name (10 digits or more: a part after part-9999999999.bht has 11),
    None for any other name."""
    digits = name[5:-4]
    if (name.startswith("part-") and name.endswith(".bht") and 10 <= len(digits) <= 18
            and digits.isascii() and digits.isdigit()):
        return int(digits)
    return None


def chunk(kind: bytes, payload: bytes | memoryview) -> bytes:
    """One chunk: header and payload."""
    data = bytes(payload)
    return _HEADER.pack(CHUNK_MAGIC, kind[0], len(data), zlib.crc32(data)) + data


def names_chunk(ids: dict[str, int]) -> bytes:
    """An N chunk naming section ids."""
    return chunk(b"N", json.dumps({"sections": {str(i): n for n, i in ids.items()}}).encode())


def records_chunk(records: np.ndarray) -> bytes:
    """An R chunk of records."""
    return chunk(b"R", np.ascontiguousarray(records, RECORD).tobytes())


def parse(data: bytes) -> tuple[dict[int, str], list[np.ndarray], dict[str, Any]]:
    """A .bht file's section names, record arrays and metadata, up to its first incomplete or bad chunk."""
    names, arrays, meta, _ = parse_from(data)
    return names, arrays, meta


def parse_from(data: bytes, pos: int = 0, names: dict[int, str] | None = None
               ) -> tuple[dict[int, str], list[np.ndarray], dict[str, Any], int]:
    """parse() from byte `pos` on (a growing part's new chunks, with the names its earlier chunks gave),
    and where the last whole chunk ends."""
    names = {} if names is None else dict(names)
    arrays: list[np.ndarray] = []
    meta: dict[str, Any] = {}
    view = memoryview(data)
    while pos + HEADER_BYTES <= len(data):
        magic, kind, length, crc = _HEADER.unpack_from(view, pos)
        end = pos + HEADER_BYTES + length
        if magic != CHUNK_MAGIC or end > len(data):
            break
        payload = view[pos + HEADER_BYTES : end]
        if zlib.crc32(payload) != crc:
            break
        start, pos = pos, end
        try:
            if kind == ord("R"):
                if length % RECORD.itemsize:
                    pos = start  # (a reader going on from here stops at this chunk again)
                    break
                arrays.append(np.frombuffer(payload, RECORD).copy())
            elif kind == ord("N"):
                for key, name in json.loads(bytes(payload))["sections"].items():
                    names[int(key)] = str(name)
            elif kind == ord("M"):
                meta.update(json.loads(bytes(payload)))
        except (ValueError, KeyError, TypeError, AttributeError):
            pos = start
            break
    return names, arrays, meta, pos


def _named_records(names: dict[int, str], arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Records by section name (ids resolved with the file's names; unnamed ids dropped), in file order."""
    if not arrays:
        return {}
    records = arrays[0] if len(arrays) == 1 else stack(arrays)
    sections = records["section"]
    if len(records) > 1 and not bool((sections[1:] >= sections[:-1]).all()):  # (base.bht is grouped)
        order = np.argsort(sections, kind="stable")
        records = _rows(records, order)
        sections = sections[order]
    starts = np.flatnonzero(np.r_[True, sections[1:] != sections[:-1]]) if len(records) else np.zeros(0, int)
    out: dict[str, np.ndarray] = {}
    for sid, part in zip(sections[starts].tolist(), np.split(records, starts[1:])):
        name = names.get(sid)
        if name is not None:
            out[name] = part
    return out


def _rows(records: np.ndarray, index: np.ndarray) -> np.ndarray:
    """records[index], copied as opaque 72-byte rows (NumPy's field-by-field copy is slower)."""
    raw = np.ascontiguousarray(records).view(np.dtype((np.void, RECORD.itemsize)))
    return raw[index].view(RECORD)


def read_records(run_dir: str | os.PathLike, files: Any = None, attempts: int = 4,
                 base_cache: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Every kept record by section name, in time order (base.bht, then the parts it does not hold).

    A part deleted while it is read (base.bht was just rewritten to hold it)
    makes the read start again, so the answer is one consistent state.
    ``base_cache`` (a dict the caller keeps per run) holds base.bht parsed,
    by the file's identity: a live run's base changes every few minutes,
    its parts every frame, so a reader refreshing it parses only the parts.
    The records it returns are then shared with the cache: read them only.
    """
    directory = timeline_dir(run_dir)
    files = files or files_for(directory)
    for _ in range(attempts):
        found = _read_once(directory, files, base_cache=base_cache)
        if found is not None:
            return found
    return _read_once(directory, files, tolerate_missing=True) or {}


def _read_base(files: Any, path: str, base_cache: dict[str, Any] | None,
               tolerate_missing: bool) -> tuple[dict[str, np.ndarray], int] | None:
    """base.bht's records by section name and the last part it holds; None when it vanished."""
    identity = files.identity(path) if base_cache is not None else None
    kept = base_cache.get("base") if identity is not None else None
    if kept is not None and kept[0] == identity:
        return kept[1], kept[2]
    data = _read(files, path)
    if data is None and not tolerate_missing:
        return None
    names, arrays, meta = parse(data or b"")
    records, through = _named_records(names, arrays), int(meta.get("through", -1))
    if identity is not None and data is not None:  # the identity was taken before the read: at worst
        base_cache["base"] = (identity, records, through)  # a file replaced in between is read again
    return records, through


def base_through(directory: str, files: Any) -> int:
    """The last part number base.bht holds (-1: none, or no readable base.bht), from its first chunk
    only (base_bytes writes the metadata first): a new writer numbers its parts after it."""
    join = posixpath.join if getattr(files, "remote", False) else os.path.join
    try:
        head = files.read_range(join(directory, BASE_FILE), 0, 4096, MAX_FILE_BYTES)
    except (OSError, ValueError):
        return -1
    through = parse(head or b"")[2].get("through", -1)
    return through if type(through) is int else -1


def _read_once(directory: str, files: Any, tolerate_missing: bool = False,
               base_cache: dict[str, Any] | None = None) -> dict[str, np.ndarray] | None:
    """One pass of read_records; None when a part vanished while being read."""
    listing = files.listdir(directory)
    join = posixpath.join if getattr(files, "remote", False) else os.path.join
    parts: dict[str, list[np.ndarray]] = {}
    through = -1
    if BASE_FILE in listing:
        found = _read_base(files, join(directory, BASE_FILE), base_cache, tolerate_missing)
        if found is None:
            return None
        base, through = found
        for name, recs in base.items():
            parts.setdefault(name, []).append(recs)
    seqs = sorted(s for s in map(part_seq, listing) if s is not None and s > through)
    kept_parts = base_cache.setdefault("parts", {}) if base_cache is not None else None
    for seq in seqs:
        if kept_parts is not None and not getattr(files, "remote", False):
            named = _read_part_kept(files, join(directory, part_name(seq)), kept_parts)
        else:
            data = _read(files, join(directory, part_name(seq)))
            named = None if data is None else _named_records(*parse(data)[:2])
        if named is None:
            if tolerate_missing:
                continue
            return None
        for name, recs in named.items():
            parts.setdefault(name, []).append(recs)
    if kept_parts is not None:  # (parts base.bht now holds, or deleted: forgotten; list() is atomic, and
        for path in list(kept_parts):  # another request may be reading the same run's parts meanwhile)
            if part_seq(os.path.basename(path)) not in seqs:
                kept_parts.pop(path, None)
    out = {}
    for name, arrays_ in parts.items():
        records = stack(arrays_) if len(arrays_) > 1 else arrays_[0]
        if len(records) > 1 and (np.diff(records["time"]) < 0).any():  # in time order (a restarted
            records = records[np.argsort(records["time"], kind="stable")]  # trainer counts steps afresh)
        if len(records) > 1:  # a record found twice (an earlier writer's part, say) is kept once
            keep = np.ones(len(records), bool)
            steps, times = records["step"], records["time"]
            keep[1:] = (steps[1:] != steps[:-1]) | (times[1:] != times[:-1])
            if not keep.all():
                records = records[keep]
        out[name] = records
    return out


def _read_part_kept(files: Any, path: str, kept: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """A local part's records by section, parsing only the chunks appended since it was last read (a part
    only grows under its name: the trainer appends whole chunks and never rewrites one); None when gone.

    What was parsed is taken up again only when the file still starts, and still reads up to where the
    parse stopped, with the same bytes: a run deleted and written again under its name may get the same
    inode back (and a new process's part the same name).

    A live run's one part grows to the parts' budget (56 MB less base.bht's cap: about 190,000 frames of a
    4-section run), and parsing it whole at each refresh took 1.8-2.3 s of a 5 s refresh."""
    identity = files.identity(path)  # (inode, size, mtime): taken first, the file may grow meanwhile
    data = None if identity is None else _read(files, path)
    if data is None:
        kept.pop(path, None)
        return None
    inode = identity[0]
    old = kept.get(path)
    if old is not None and old[0] == inode and old[1] <= len(data) and old[4] == _landmarks(data, old[1]):
        _, pos, names, named, _ = old
        if pos == len(data):
            return named
    else:
        pos, names, named = 0, {}, {}
    names, arrays, _, end = parse_from(data, pos, names)
    if arrays:  # (only the new chunks are grouped by section, then put after each section's records)
        named = dict(named)
        for name, recs in _named_records(names, arrays).items():
            named[name] = stack([named[name], recs]) if name in named else recs
    kept[path] = (inode, end, names, named, _landmarks(data, end))
    return named


def _landmarks(data: bytes, pos: int) -> bytes:
    """The bytes a part starts with and those just before pos (records carry their wall time): what tells
    the part parsed up to pos from another file under its name."""
    return bytes(data[:64]) + bytes(data[max(0, pos - 256):pos])


def _read(files: Any, path: str, limit: int = MAX_FILE_BYTES) -> bytes | None:
    """A whole file as it is now (a local one may be growing: up to its size when opened), None when gone.

    Local files are opened as the server's other files are (inside the logdir,
    regular, at most ``limit`` bytes: FileRefused otherwise).
    """
    if getattr(files, "remote", False):
        return files.read(path, limit)
    try:
        fd, st = _open_regular(path, limit)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read(st.st_size)


def columns_of(records: np.ndarray) -> dict[str, np.ndarray]:
    """One section's records as a dict of NumPy columns (step, time, norm, mean, std, min, max, ...)."""
    return {name: np.ascontiguousarray(records[name]) for name in COLUMNS}


def read_timeline(run_dir: str | os.PathLike, values: str | None = None) -> dict[str, dict[str, np.ndarray]]:
    """The run's timeline: section name -> columns (``step``, ``time``, ``norm``, ``mean``, ``std``, ...).

    ``nonfinite`` counts the NaN and infinite values; ``flags`` says per
    record which figures are exact (``EXACT_NORM``, ``EXACT_NONFINITE``) and
    which values it is of (``values_of``). ``values`` (``"gradients"``...):
    only the records of those values, for a run whose Values choice changed
    (a section's weights and gradients share its name).
    """
    by_section = read_records(run_dir)
    if values is not None:
        by_section = of_values(by_section, values)
    return {name: columns_of(recs) for name, recs in by_section.items()}


def read_anomalies(run_dir: str | os.PathLike, files: Any = None) -> list[dict[str, Any]]:
    """The run's anomaly records, oldest first (a partly written last line is left out)."""
    directory = timeline_dir(run_dir)
    files = files or files_for(directory)
    join = posixpath.join if getattr(files, "remote", False) else os.path.join
    return parse_anomalies(_read(files, join(directory, ANOMALIES_FILE), MAX_ANOMALY_BYTES) or b"")


def parse_anomalies(data: bytes) -> list[dict[str, Any]]:
    """The complete JSON lines of anomalies.jsonl (a line without its newline is still being written)."""
    out = []
    for line in data.split(b"\n")[:-1]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("section"), str):
            out.append(record)
    return out


def anomaly_line(record: dict[str, Any]) -> bytes:
    """One anomalies.jsonl line."""
    return json.dumps(record, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def thin(records: np.ndarray, now: float, keep_first: int = KEEP_FIRST, keep_recent: int = KEEP_RECENT,
         cap: int = MAX_PER_SECTION) -> np.ndarray:
    """One section's records (in time order) cut to at most cap, keeping the history's shape.

    Kept: the first ``keep_first`` records, the last ``keep_recent``, every
    record flagged ANOMALY or PINNED (the oldest ones first if they alone
    exceed the cap: the first anomaly above all), and in between records at log-spaced ages (age measured
    back from ``now``): dense near the present, sparse far back.
    """
    n = len(records)
    if n <= cap:
        return records
    keep = np.zeros(n, bool)
    keep[: min(keep_first, cap)] = True
    special = np.flatnonzero(records["flags"] & (ANOMALY | PINNED))
    room = cap - int(keep.sum())
    keep[special[:room] if room > 0 else []] = True
    room = cap - int(keep.sum())
    keep[np.flatnonzero(~keep)[::-1][: min(keep_recent, max(room, 0))]] = True
    room = cap - int(keep.sum())
    middle = np.flatnonzero(~keep)
    if room > 0 and len(middle):
        ages = np.maximum(now - records["time"][middle], 1e-3)
        targets = np.geomspace(ages.min(), ages.max(), room)
        # ages decrease along `middle`: search on the reversed (increasing) ages
        rev = ages[::-1]
        idx = np.clip(np.searchsorted(rev, targets), 0, len(rev) - 1)
        keep[middle[::-1][np.unique(idx)]] = True
    return records[keep]


def thin_all(by_section: dict[str, np.ndarray], now: float,
             cap: int = MAX_PER_SECTION) -> dict[str, np.ndarray]:
    """thin() for every section, each to section_cap(its number): BASE_BUDGET in all. When even
    KEEP_FIRST records each would pass it, the sections whose newest record is oldest are left out."""
    each = section_cap(len(by_section), cap)
    kept = by_section
    most = BASE_BUDGET // (each * RECORD.itemsize)
    if len(by_section) > most:
        newest = set(sorted(by_section, key=lambda name: -float(by_section[name]["time"][-1]))[:most])
        kept = {name: recs for name, recs in by_section.items() if name in newest}
    recent = min(KEEP_RECENT, each // 2)  # (a smaller cap keeps half of it for the run before)
    return {name: thin(recs, now, keep_recent=recent, cap=each) for name, recs in kept.items()}


def base_bytes(by_section: dict[str, np.ndarray], through: int) -> list[bytes]:
    """The chunks of a base.bht holding these records and saying which parts it holds."""
    ids = {name: i for i, name in enumerate(by_section)}
    out = [chunk(b"M", json.dumps({"through": through}).encode()), names_chunk(ids)]
    if by_section:
        records = stack(list(by_section.values()))
        records["section"] = np.repeat(np.arange(len(ids), dtype=np.uint32),
                                       [len(recs) for recs in by_section.values()])
        out.append(records_chunk(records))
    return out


def make_records(count: int) -> np.ndarray:
    """An array of count empty records."""
    return np.zeros(count, RECORD)


def stack(records: Iterable[np.ndarray]) -> np.ndarray:
    """Record arrays joined into one new array (joined as bytes: NumPy's structured concatenate is slower)."""
    arrays: Sequence[np.ndarray] = list(records)
    if not arrays:
        return make_records(0)
    if len(arrays) == 1:
        return arrays[0].copy()
    raw = np.concatenate([np.ascontiguousarray(a, RECORD).view(np.uint8) for a in arrays])
    return raw.view(RECORD)
