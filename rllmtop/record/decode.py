"""Stored rows to records, checking every cell: a reader never raises on a bad value.

A cell of the wrong type (text in a time, a status not in the enum, labels that are not JSON, a gap blob
that does not decode) becomes "unknown" (None, or the field's default when the record needs a value)
and a :class:`Problems` entry naming the table, the row and the column. Rows that cannot become a record
at all (a scrape without a usable time) are left out, with a problem.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import MISSING, fields
from typing import Any

from rllmtop.events import (
    ClientHealth,
    EngineInfo,
    LogEvent,
    RequestRecord,
    RequestStatus,
    SessionState,
    StateEvent,
    WorkerEvent,
    decode_gaps,
)
from rllmtop.record.schema import TABLES

__all__ = [
    "DEFAULTS",
    "REQUEST_FIELDS",
    "STATUSES",
    "Problems",
    "engine_from_row",
    "event_from_row",
    "gaps_ok",
    "health_from_row",
    "request_from_row",
    "state_of",
    "worker_from_row",
]

_MAX_LINES = 20
_MAX_KEYS = 100_000


class Problems:
    """What was wrong in the cells read so far: bad rows per table and the first few descriptions."""

    def __init__(self) -> None:
        self.rows: Counter[str] = Counter()  # table -> bad rows
        self.lines: list[str] = []
        self.tables: set[str] = set()  # tables missing or unreadable
        self._keys: set[tuple[str, Any]] = set()

    def __bool__(self) -> bool:
        return bool(self.rows or self.tables)

    def add(self, table: str, key: Any, text: str) -> None:
        """A bad cell (or row) of ``table``; ``key`` identifies the row (counted once)."""
        k = (table, key)
        if k in self._keys:
            return
        if len(self._keys) < _MAX_KEYS:
            self._keys.add(k)
        self.rows[table] += 1
        if len(self.lines) < _MAX_LINES:
            self.lines.append(f"{table}: {text}")

    def table(self, table: str, text: str) -> None:
        """A whole table is missing or unreadable."""
        if table in self.tables:
            return
        self.tables.add(table)
        if len(self.lines) < _MAX_LINES:
            self.lines.append(f"{table}: {text}")


def _is_real(v: Any) -> bool:
    return v.__class__ is float or v.__class__ is int


def state_of(value: Any) -> SessionState | None:
    if isinstance(value, str):
        try:
            return SessionState(value)
        except ValueError:
            return None
    return None


# ---------------------------------------------------------------------------------------------- requests

_REQ = TABLES["requests"]
REQUEST_FIELDS: tuple[str, ...] = tuple(n for n in _REQ.names if n not in ("updated_t", "crc"))
_KIND = dict(_REQ.columns)
DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in fields(RequestRecord) if f.default is not MISSING and f.name != "gaps"
}
DEFAULTS.update(rid=0, cls="")
_REAL = [i for i, n in enumerate(REQUEST_FIELDS) if _KIND[n] == "real"]
_INT = [i for i, n in enumerate(REQUEST_FIELDS) if _KIND[n] in ("int", "count", "key") and n != "engine"]
_TEXT = [i for i, n in enumerate(REQUEST_FIELDS) if _KIND[n] == "text" and n != "status"]
_BOOL = [i for i, n in enumerate(REQUEST_FIELDS) if _KIND[n] == "bool"]
_COUNT = {i for i, n in enumerate(REQUEST_FIELDS) if _KIND[n] == "count"}
_STATUS = REQUEST_FIELDS.index("status")
_ENGINE = REQUEST_FIELDS.index("engine")
_ERROR = REQUEST_FIELDS.index("error")
STATUSES = {s.value: s for s in RequestStatus}


def request_from_row(
    row: Sequence[Any], gaps: Any, engines: dict[int, str], problems: Problems, key: Any
) -> RequestRecord:
    """A RequestRecord from the values of ``REQUEST_FIELDS`` (in that order) and its gap blob."""
    v = list(row)
    bad: list[str] = []
    for i in _REAL:
        x = v[i]
        if x is not None and x.__class__ is not float:
            if x.__class__ is int:
                v[i] = float(x)
            else:
                v[i] = None
                bad.append(REQUEST_FIELDS[i])
            continue
        if x is not None and x != x:
            v[i] = None
    for i in _INT:
        x = v[i]
        if x is not None and (x.__class__ is not int or (i in _COUNT and x < 0)):
            v[i] = None
            bad.append(REQUEST_FIELDS[i])
    for i in _TEXT:
        x = v[i]
        if x is not None and x.__class__ is not str:
            v[i] = None
            bad.append(REQUEST_FIELDS[i])
    for i in _BOOL:
        x = v[i]
        if x is not None:
            if x == 0 or x == 1:
                v[i] = bool(x)
            else:
                v[i] = None
                bad.append(REQUEST_FIELDS[i])
    status = STATUSES.get(v[_STATUS]) if v[_STATUS].__class__ is str else None
    if status is None:
        bad.append("status")
        status = RequestStatus.ERROR
        if not v[_ERROR]:
            v[_ERROR] = "the recording's status for this request is unreadable"
    v[_STATUS] = status
    e = v[_ENGINE]
    if e is None:
        v[_ENGINE] = ""
    elif e.__class__ is int and e in engines:
        v[_ENGINE] = engines[e]
    else:
        v[_ENGINE] = ""
        bad.append("engine")
    kw = dict(zip(REQUEST_FIELDS, v, strict=True))
    for name, default in DEFAULTS.items():
        if kw[name] is None and default is not None:
            kw[name] = default
    if gaps is None:
        kw["gaps"] = b""
    elif gaps.__class__ is bytes and gaps_ok(gaps):
        kw["gaps"] = gaps
    else:
        kw["gaps"] = b""
        bad.append("gaps")
    if bad:
        problems.add("requests", key, f"request {key}: unreadable {', '.join(bad)}")
    return RequestRecord(**kw)


def gaps_ok(blob: bytes) -> bool:
    try:
        g, per = decode_gaps(blob)
    except Exception:
        return False
    return 6 + 4 * len(g) + (2 * (len(g) + 1) if per is not None else 0) == len(blob)


# ---------------------------------------------------------------------------------------------- others


def event_from_row(row: Sequence[Any], problems: Problems) -> StateEvent | LogEvent | None:
    """(id, t, kind, state, source, level, text) to a StateEvent or LogEvent (None: unusable)."""
    eid, t, kind, state, source, level, text = row
    if not _is_real(t) or not math.isfinite(t):
        problems.add("events", eid, f"event {eid}: unreadable time {t!r}")
        return None
    text = _text(text, problems, "events", eid, "text")
    if kind == "state":
        s = state_of(state)
        if s is None:
            problems.add("events", eid, f"event {eid}: unknown state {state!r}")
            s = SessionState.INCOMPLETE
        return StateEvent(float(t), s, text)
    if kind != "log":
        problems.add("events", eid, f"event {eid}: unknown kind {kind!r}")
    return LogEvent(
        float(t),
        _text(source, problems, "events", eid, "source"),
        _text(level, problems, "events", eid, "level") or "info",
        text,
    )


def _text(v: Any, problems: Problems, table: str, key: Any, col: str) -> str:
    if v is None:
        return ""
    if v.__class__ is str:
        return v  # type: ignore[no-any-return]
    problems.add(table, key, f"row {key}: unreadable {col}")
    return ""


def _opt_real(v: Any, problems: Problems, table: str, key: Any, col: str) -> float | None:
    if v is None:
        return None
    if _is_real(v):
        return float(v)
    problems.add(table, key, f"row {key}: unreadable {col}")
    return None


def _opt_int(v: Any, problems: Problems, table: str, key: Any, col: str) -> int | None:
    if v is None:
        return None
    if v.__class__ is int:
        return v  # type: ignore[no-any-return]
    problems.add(table, key, f"row {key}: unreadable {col}")
    return None


def health_from_row(row: Sequence[Any], problems: Problems) -> ClientHealth | None:
    """(id, t, worker, interval, lag_max, lag_mean, cpu_s)."""
    hid, t, worker, interval, lag_max, lag_mean, cpu_s = row
    if not _is_real(t) or not math.isfinite(t):
        problems.add("client_health", hid, f"row {hid}: unreadable time {t!r}")
        return None
    p, tb = problems, "client_health"
    nan = math.nan
    return ClientHealth(
        t=float(t),
        interval=_opt_real(interval, p, tb, hid, "interval") or 0.0,
        lag_max=_or(_opt_real(lag_max, p, tb, hid, "lag_max"), nan),
        lag_mean=_or(_opt_real(lag_mean, p, tb, hid, "lag_mean"), nan),
        worker=_opt_int(worker, p, tb, hid, "worker") or 0,
        cpu_s=_opt_real(cpu_s, p, tb, hid, "cpu_s"),
    )


def _or(v: float | None, default: float) -> float:
    return default if v is None else v


def worker_from_row(row: Sequence[Any], problems: Problems) -> WorkerEvent | None:
    """(id, t, worker, state, node, pid, clock_offset, detail)."""
    wid, t, worker, state, node, pid, offset, detail = row
    if not _is_real(t) or not math.isfinite(t):
        problems.add("workers", wid, f"row {wid}: unreadable time {t!r}")
        return None
    p, tb = problems, "workers"
    return WorkerEvent(
        t=float(t),
        worker=_opt_int(worker, p, tb, wid, "worker") or 0,
        state=_text(state, p, tb, wid, "state") or "unknown",
        node=_text(node, p, tb, wid, "node"),
        pid=_opt_int(pid, p, tb, wid, "pid"),
        clock_offset=_opt_real(offset, p, tb, wid, "clock_offset"),
        detail=_text(detail, p, tb, wid, "detail"),
    )


def engine_from_row(row: Sequence[Any], problems: Problems) -> EngineInfo | None:
    """(id, key, url, metrics_url, kind, version, source, launched, gpu_metrics_url)."""
    eid, key, url, metrics_url, kind, version, source, launched, gpu = row
    p, tb = problems, "engines"
    if key.__class__ is not str or not key:
        problems.add(tb, eid, f"engine {eid}: unreadable key")
        key = f"engine-{eid}"
    if launched not in (None, 0, 1):
        problems.add(tb, eid, f"engine {eid}: unreadable launched flag")
        launched = 0
    return EngineInfo(
        id=key,
        url=_text(url, p, tb, eid, "url"),
        metrics_url=_text(metrics_url, p, tb, eid, "metrics_url"),
        kind=_text(kind, p, tb, eid, "kind") or "unknown",
        version=_text(version, p, tb, eid, "version"),
        source=_text(source, p, tb, eid, "source") or "scrape",
        launched=bool(launched),
        gpu_metrics_url=_text(gpu, p, tb, eid, "gpu_metrics_url"),
    )


def json_list(text: Any) -> list[Any] | None:
    """A JSON list from metadata text, or None."""
    if not isinstance(text, str):
        return None
    try:
        v = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return v if isinstance(v, list) else None
