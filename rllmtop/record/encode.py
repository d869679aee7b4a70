"""Records to stored rows, checking every value from the wire where it enters the recording.

A value of the wrong type, a non-finite time, a negative token count, a numpy scalar: each is converted
(numpy scalars to Python numbers) or stored as NULL with a note saying which field and why. A record that
cannot be stored at all (no usable time or request index) raises :class:`Unstorable`; the writer drops
that one record and counts it. Nothing here raises anything else for any input. The rows contain only
int, float, str, bytes and None (see :mod:`rllmtop.record.codec` for why).

Secrets never reach a row: URLs, launch commands, scenario text, log lines and error texts pass through
:mod:`rllmtop.redact`.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from rllmtop.events import (
    ClientHealth,
    EngineInfo,
    LogEvent,
    RequestRecord,
    RequestStatus,
    SessionInfo,
    SessionState,
    StateEvent,
    WorkerEvent,
    decode_gaps,
)
from rllmtop.record.codec import encode_counts
from rllmtop.record.schema import TABLES
from rllmtop.redact import redact_argv, redact_text, redact_url

__all__ = [
    "BAD",
    "INT64",
    "TIME_LIMIT",
    "Unstorable",
    "as_count",
    "as_finite",
    "as_flag",
    "as_int",
    "as_text",
    "as_value",
    "clean_hist",
    "clean_labels",
    "clean_sample",
    "engine_row",
    "event_row",
    "gaps_of",
    "health_row",
    "info_rows",
    "request_row",
    "safe_info",
    "time_of",
    "worker_row",
]

INT64 = 2**63 - 1
BAD: Any = object()  # a converter's "cannot store this value"


class Unstorable(ValueError):
    """This record cannot be stored at all (the message says why, in words)."""


def _py(v: Any) -> Any:
    """A numpy scalar as the Python number it holds (anything else unchanged)."""
    item = getattr(v, "item", None)
    if item is not None and not isinstance(v, str | bytes) and getattr(v, "shape", None) == ():
        try:
            return item()
        except (TypeError, ValueError):
            return v
    return v


TIME_LIMIT = 1e10  # seconds (317 years): session times and durations beyond this are not plausible


def as_finite(v: Any) -> Any:
    """A finite, plausible float (times, durations: |v| <= TIME_LIMIT); None stays None."""
    if v is None:
        return None
    if v.__class__ is float:
        return v + 0.0 if -TIME_LIMIT <= v <= TIME_LIMIT else BAD
    if isinstance(v, bool | str | bytes):
        return BAD
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        return BAD
    return f + 0.0 if -TIME_LIMIT <= f <= TIME_LIMIT else BAD


def as_value(v: Any) -> Any:
    """A metric value: any float; NaN is stored as NULL, infinities are kept."""
    if v.__class__ is float:
        return None if v != v else v + 0.0
    if v is None:
        return None
    if isinstance(v, str | bytes):
        return BAD
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        return BAD
    return None if f != f else f + 0.0


def as_int(v: Any) -> Any:
    if v is None:
        return None
    if v.__class__ is int:
        return v if -INT64 <= v <= INT64 else BAD
    if isinstance(v, float):
        if not (math.isfinite(v) and v == int(v)):
            return BAD
        v = int(v)
        return v if -INT64 <= v <= INT64 else BAD
    try:
        i = operator.index(_py(v))  # numpy integers, bools
    except TypeError:
        return BAD
    return i if -INT64 <= i <= INT64 else BAD


def as_count(v: Any) -> Any:
    i = as_int(v)
    if i is BAD or i is None:
        return i
    return i if i >= 0 else BAD


def as_flag(v: Any) -> Any:
    if v is None:
        return None
    v = _py(v)
    if v is True or v is False:
        return int(v)
    i = as_int(v)
    return i if i in (0, 1) else BAD


def as_text(v: Any) -> Any:
    """Text SQLite can hold: a lone surrogate (undecodable bytes from the wire) becomes U+FFFD."""
    if v is None:
        return None
    if v.__class__ is not str:
        if not isinstance(v, str):
            return BAD
        v = str.__str__(v)  # a str subclass (numpy str_, an enum): its plain value
    if v.isascii():
        return v
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return v.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return v


def _status(v: Any) -> Any:
    if isinstance(v, RequestStatus):
        return v.value
    if isinstance(v, str):
        try:
            return RequestStatus(v).value
        except ValueError:
            return BAD
    return BAD


_STATES = frozenset(s.value for s in SessionState)
_CONVERT: dict[str, Callable[[Any], Any]] = {
    "real": as_finite,
    "count": as_count,
    "int": as_int,
    "bool": as_flag,
    "text": as_text,
}
# (field, converter, default when it cannot be stored) for RequestRecord's stored fields, in column order
_REQ_COLUMNS = [n for n, _ in TABLES["requests"].columns if n not in ("updated_t", "crc")]
_REQ_PLAN: list[tuple[str, Callable[[Any], Any], bool]] = []  # (field, converter, numeric)
for _name, _kind in TABLES["requests"].columns[1:-2]:
    if _name == "engine":
        continue  # an engines.id, given by the writer
    _conv = _status if _name == "status" else _CONVERT[_kind]
    _REQ_PLAN.append((_name, _conv, _kind in ("real", "count", "int")))
_ENGINE_POS = _REQ_COLUMNS.index("engine")
_ERROR_POS = _REQ_COLUMNS.index("error")
_STATUS_POS = _REQ_COLUMNS.index("status")


def _what(v: Any, numeric: bool = True) -> str:
    """Why a value could not be stored, in words."""
    if isinstance(v, float) and numeric:
        return repr(v)
    if isinstance(v, int) and not isinstance(v, bool) and numeric:
        return "negative" if v < 0 else "too large"
    return f"a {type(v).__name__}"


_FAST = {"real": 1, "count": 2, "int": 3, "text": 4, "bool": 5}
_REQ_FAST = [(6 if n == "status" else _FAST[dict(TABLES["requests"].columns)[n]]) for n, _, _ in _REQ_PLAN]
_REQ_GET = operator.attrgetter(*(n for n, _, _ in _REQ_PLAN))


def request_row(r: RequestRecord, engine: int | None, notes: list[str], rid: int | None = None) -> list[Any]:
    """The stored values of ``r`` in column order, without ``updated_t`` and ``crc``. ``engine`` is the
    engines.id of ``r.engine``; ``rid`` (when given) the key, else ``r.rid``. Unstorable values become
    NULL with a note (``error`` says so too)."""
    if rid is None:
        rid = as_int(getattr(r, "rid", None))
    if rid is BAD or rid is None:
        raise Unstorable(f"a request without a usable index (rid {_what(getattr(r, 'rid', None))})")
    row: list[Any] = [rid]
    add = row.append
    bad: list[str] | None = None
    try:
        values = _REQ_GET(r)
    except AttributeError:  # not a RequestRecord: field by field
        values = tuple(getattr(r, n, None) for n, _, _ in _REQ_PLAN)
    limit = TIME_LIMIT
    for v, fast, plan in zip(values, _REQ_FAST, _REQ_PLAN, strict=True):
        if v is None:
            add(None)
            continue
        c = v.__class__
        # the usual case, checked inline; anything else goes through its converter
        if fast == 1:
            if c is float and -limit <= v <= limit:
                add(v + 0.0)
                continue
        elif fast == 2:
            if c is int and 0 <= v <= INT64:
                add(v)
                continue
        elif fast == 4:
            if c is str and v.isascii():
                add(v)
                continue
        elif fast == 6:
            if c is RequestStatus:
                add(v._value_)
                continue
        elif fast == 5:
            if c is bool:
                add(1 if v else 0)
                continue
        elif c is int and -INT64 <= v <= INT64:
            add(v)
            continue
        name, conv, numeric = plan
        x = conv(v)
        if x is BAD:
            if bad is None:
                bad = []
            bad.append(f"{name} was {_what(v, numeric and not isinstance(v, str))}")
            x = None
        add(x)
    row.insert(_ENGINE_POS, engine)
    if row[_STATUS_POS] is None:
        row[_STATUS_POS] = RequestStatus.ERROR.value
    err = row[_ERROR_POS]
    if err:
        row[_ERROR_POS] = redact_text(err)
    if bad:
        note = f"recorder: {', '.join(bad)}; stored as null"
        row[_ERROR_POS] = f"{row[_ERROR_POS]}; {note}" if row[_ERROR_POS] else note
        notes.append(f"request {rid}: {', '.join(bad)} (stored as null)")
    return row


def gaps_of(r: RequestRecord, notes: list[str]) -> bytes:
    """The request's gap blob if it is one (decodable); else b"" with a note."""
    g = getattr(r, "gaps", b"")
    if not g:
        return b""
    if not isinstance(g, bytes | bytearray | memoryview):
        notes.append(f"request {getattr(r, 'rid', '?')}: gaps was {_what(g)} (not stored)")
        return b""
    g = bytes(g)
    try:
        gaps, per_chunk = decode_gaps(g)
        if 6 + 4 * len(gaps) + (2 * (len(gaps) + 1) if per_chunk is not None else 0) != len(g):
            raise ValueError("length")
    except Exception:
        notes.append(f"request {getattr(r, 'rid', '?')}: the token-gap blob is not readable (not stored)")
        return b""
    return g


def time_of(t: Any, what: str) -> float:
    v = as_finite(t)
    if v is BAD or v is None:
        raise Unstorable(f"{what} with a non-finite time ({_what(t)})")
    return v  # type: ignore[no-any-return]


def clean_labels(labels: Any) -> tuple[tuple[str, str], ...] | None:
    if labels.__class__ is tuple and all(
        p.__class__ is tuple and len(p) == 2 and p[0].__class__ is str and p[1].__class__ is str
        for p in labels
    ):
        return labels  # type: ignore[no-any-return]
    try:
        out = tuple((k, v) for k, v in labels)
    except (TypeError, ValueError):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in out):
        return None
    return tuple((str.__str__(k), str.__str__(v)) for k, v in out)


def clean_sample(s: Any) -> tuple[str, tuple[tuple[str, str], ...], float | None] | str:
    """(name, labels, value) of a MetricSample, or a note saying why it cannot be stored."""
    name = as_text(getattr(s, "name", None))
    if name is BAD or not name:
        return "a sample without a metric name"
    labels = clean_labels(getattr(s, "labels", ()))
    if labels is None:
        return f"{name}: labels are not (key, value) text pairs"
    v = getattr(s, "value", None)
    value = as_value(v)
    if value is BAD:
        return f"{name}: value was {_what(v)}"
    return name, labels, value


def clean_hist(
    h: Any,
) -> tuple[str, tuple[tuple[str, str], ...], tuple[float, ...], bytes, float | None, float | None] | str:
    """(name, labels, bounds, counts blob, sum, count) of a HistogramSample, or a note saying why not."""
    name = as_text(getattr(h, "name", None))
    if name is BAD or not name:
        return "a histogram without a metric name"
    labels = clean_labels(getattr(h, "labels", ()))
    if labels is None:
        return f"{name}: labels are not (key, value) text pairs"
    try:
        bounds = tuple(float(b) for b in h.bounds)
        counts = [float(c) for c in h.counts]
    except (TypeError, ValueError, OverflowError, AttributeError):
        return f"{name}: bounds or bucket counts are not numbers"
    if not bounds or len(counts) != len(bounds):
        return f"{name}: {len(counts)} bucket counts for {len(bounds)} bounds"
    if any(b != b for b in bounds) or any(b > c for b, c in itertools.pairwise(bounds)):
        return f"{name}: bucket bounds are not ascending numbers"
    for c in counts:
        if not (math.isfinite(c) and c >= 0):
            return f"{name}: a bucket count of {c!r}"
    s, n = as_value(getattr(h, "sum", None)), as_value(getattr(h, "count", None))
    if s is BAD or n is BAD:
        return f"{name}: sum or count is not a number"
    return name, labels, tuple(b + 0.0 for b in bounds), encode_counts(counts), s, n


def event_row(rec: LogEvent | StateEvent) -> list[Any]:
    """(t, kind, state, source, level, text) of a log line or a state change."""
    if rec.__class__ is StateEvent:
        t = time_of(rec.t, "a state change")
        state = as_text(rec.state)
        if state is BAD or state not in _STATES:
            raise Unstorable(f"a state change to {_what(rec.state, False)}, not a session state")
        detail = as_text(rec.detail)
        return [t, "state", state, None, None, redact_text(detail) if isinstance(detail, str) else ""]
    t = time_of(rec.t, "a log line")
    source, level, text = (as_text(getattr(rec, k, "")) for k in ("source", "level", "text"))
    if text is BAD:
        text = repr(getattr(rec, "text", ""))
    return [
        t,
        "log",
        None,
        source if source is not BAD else "",
        level if level not in (BAD, None, "") else "info",
        redact_text(text or ""),
    ]


def health_row(rec: ClientHealth, notes: list[str]) -> list[Any]:
    """(t, worker, interval, lag_max, lag_mean, cpu_s) of a ClientHealth record."""
    t = time_of(rec.t, "a client-health record")
    row: list[Any] = [t]
    for name, conv in (
        ("worker", as_int),
        ("interval", as_finite),
        ("lag_max", as_finite),
        ("lag_mean", as_finite),
        ("cpu_s", as_finite),
    ):
        v = getattr(rec, name, None)
        c = conv(v)
        if c is BAD:
            notes.append(f"client health at t={t:.3f}: {name} was {_what(v)} (stored as null)")
            c = None
        row.append(c)
    return row


def worker_row(rec: WorkerEvent, notes: list[str]) -> list[Any]:
    """(t, worker, state, node, pid, clock_offset, detail) of a WorkerEvent."""
    t = time_of(rec.t, "a worker event")
    row: list[Any] = [t]
    for name, conv in (
        ("worker", as_int),
        ("state", as_text),
        ("node", as_text),
        ("pid", as_int),
        ("clock_offset", as_finite),
        ("detail", as_text),
    ):
        v = getattr(rec, name, None)
        c = conv(v)
        if c is BAD:
            notes.append(
                f"worker event at t={t:.3f}: {name} was {_what(v, conv is not as_text)} (stored as null)"
            )
            c = None
        row.append(c)
    if row[-1]:
        row[-1] = redact_text(row[-1])
    return row


def engine_row(e: EngineInfo | str) -> list[Any]:
    """(key, url, metrics_url, kind, version, source, launched, gpu_metrics_url) of an engine; a bare key
    (an engine first met in a scrape or a request) gets the defaults."""
    if isinstance(e, str):
        e = EngineInfo(id=e)
    vals: list[Any] = [redact_url(_str(e.id))]
    vals += [redact_url(_str(e.url)), redact_url(_str(e.metrics_url)), _str(e.kind), _str(e.version)]
    vals += [_str(e.source), 1 if e.launched is True else 0, redact_url(_str(e.gpu_metrics_url))]
    return vals


def _str(v: Any) -> str:
    t = as_text(v)
    return "" if t is BAD or t is None else t  # type: ignore[no-any-return]


def safe_info(info: SessionInfo) -> SessionInfo:
    return replace(
        info,
        scenario_text=redact_text(_str(info.scenario_text)),
        engine_url=redact_url(_str(info.engine_url)),
        metrics_url=redact_url(_str(info.metrics_url)),
        load_url=redact_url(_str(info.load_url)),
        launch_command=redact_argv(tuple(_str(a) for a in info.launch_command)),
        extra=tuple((_str(k), redact_text(_str(v))) for k, v in info.extra),
    )


def info_rows(info: SessionInfo) -> list[tuple[str, str]]:
    """The session's facts as metadata (key, value) rows."""
    info = safe_info(info)
    seed = as_int(info.seed)
    speed = as_finite(info.speed)
    started = as_finite(info.started_at)
    try:
        provenance = info.provenance.to_json() if info.provenance is not None else ""
    except (TypeError, ValueError):
        provenance = ""
    return [
        ("session_id", _str(info.session_id)),
        ("started_at", repr(started if started not in (BAD, None) else 0.0)),
        ("mode", _str(info.mode)),
        ("scenario_name", _str(info.scenario_name)),
        ("scenario_text", info.scenario_text),
        ("seed", "" if seed in (BAD, None) else str(seed)),
        ("engine_kind", _str(info.engine_kind)),
        ("engine_version", _str(info.engine_version)),
        ("engine_url", info.engine_url),
        ("metrics_url", info.metrics_url),
        ("load_url", info.load_url),
        ("model", _str(info.model)),
        ("launch_command", json.dumps(list(info.launch_command))),
        ("session_rllmtop_version", _str(info.rllmtop_version)),
        ("record_path", _str(info.record_path)),
        ("extra", json.dumps([list(p) for p in info.extra])),
        ("provenance", provenance),
        ("clock", _str(info.clock) or "wall"),
        ("speed", repr(speed if speed not in (BAD, None) else 1.0)),
    ]
