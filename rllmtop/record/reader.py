"""Reading a recording: :func:`open_recording` and :class:`Recording` (read-only; schemas 1 and 2).

Opening says what is wrong with a file that is not a readable recording, in one line each: a missing
path, a directory, a zero-byte file, a truncated one, a file that is not SQLite or not rllmtop's, a
``.db`` copied without its ``-wal`` while it was being written, a file locked by another process, a
newer schema, structural damage. Reading never raises on a bad cell (see :mod:`rllmtop.record.decode`):
the value reads as unknown and :attr:`Recording.problems` says so; :meth:`Recording.verify` checks
every row once (checksums, values, structure) and says whether the content can be trusted.

Requests whose row says ``in_flight`` (the writer died, or is still running, with them on the wire) read
as IN_FLIGHT records holding their state at the last commit; replay rebuilds their events up to that
moment, with no end.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeAlias, TypeVar
from urllib.parse import quote

import numpy as np

from rllmtop.errors import UserError
from rllmtop.events import (
    ClientHealth,
    EngineInfo,
    HistogramSample,
    Labels,
    LogEvent,
    MetricSample,
    Provenance,
    RequestEvent,
    RequestRecord,
    Scrape,
    SessionInfo,
    SessionState,
    StateEvent,
    WorkerEvent,
)
from rllmtop.record import decode as D
from rllmtop.record.codec import decode_bounds, decode_counts, labels_from
from rllmtop.record.integrity import IntegrityReport, verify
from rllmtop.record.rebuild import request_events
from rllmtop.record.schema import APP, OLDEST_READABLE, SCHEMA_VERSION, TABLES, too_old_reason

__all__ = ["BUSY_TIMEOUT", "REQUEST_COLUMNS", "Recording", "TimedRecord", "open_recording"]

TimedRecord: TypeAlias = StateEvent | LogEvent | Scrape | RequestEvent | ClientHealth | WorkerEvent
"""What :meth:`Recording.stream` yields: every record kind that carries a session time."""
BUSY_TIMEOUT = 2.0  # seconds to wait on a file locked by another process before saying so
_MAGIC = b"SQLite format 3\x00"
_HINT = "pass a file written by rllmtop (rllmtop run ... --record FILE)"
_P = ParamSpec("_P")
_R = TypeVar("_R")


# ---------------------------------------------------------------------------------------------- opening


def _ro_uri(path: Path, immutable: bool = False) -> str:
    return "file:" + quote(str(path.resolve())) + ("?mode=ro&immutable=1" if immutable else "?mode=ro")


def _damaged(p: Path, e: BaseException) -> UserError:
    first = " ".join(str(e).splitlines()[0].split())[:160] if str(e) else type(e).__name__
    if "locked" in first or "busy" in first:
        return _locked(p)
    return UserError(
        f"{p} is damaged and cannot be read ({first})",
        "if it was copied while being written, copy it again (with its -wal file); otherwise it cannot be read",
    )


def _locked(p: Path) -> UserError:
    return UserError(
        f"{p} is locked by another process (a run still recording?)",
        "wait for that run to end, or open a copy of the file",
    )


def _no_wal(p: Path) -> UserError:
    return UserError(
        f"{p} holds no session: it was copied without its -wal file while it was being written",
        f"copy {p.name}-wal (and {p.name}-shm) from beside the original too; the data is in the -wal file",
    )


def open_recording(path: str | Path) -> Recording:
    """Open a recording read-only. Raises :class:`UserError` (one line saying what is wrong, one what to
    do) for anything that is not a readable rllmtop recording."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{p} is a directory, not a recording", "pass the recording's .db file inside it")
    if not p.exists():
        raise UserError(f"{p}: no such recording", "check the path (recordings go to recordings/ by default)")
    if not p.is_file():
        raise UserError(f"{p} is not a regular file, so not a recording", _HINT)
    try:
        size = p.stat().st_size
        with p.open("rb") as f:
            head = f.read(100)
    except OSError as e:
        raise UserError(f"cannot read {p}: {e.strerror or e}", "check the file's permissions") from None
    wal = p.with_name(p.name + "-wal")
    wal_size = wal.stat().st_size if wal.is_file() else 0
    if size == 0:
        raise UserError(
            f"{p} is empty (0 bytes), not a recording",
            f"copy {p.name}-wal too if it exists beside the original"
            if wal_size
            else "the run that was to write it stopped before writing anything; record again",
        )
    if head[:16] != _MAGIC:
        raise UserError(f"{p} is not an rllmtop recording (not an SQLite database)", _HINT)
    if size < 100:
        raise UserError(f"{p} is truncated ({size} bytes: not even a whole header)", "copy it again in full")
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    if page < 512 or page & (page - 1):
        raise UserError(f"{p} is damaged and cannot be read (its header is not valid)", "copy it again")
    declared = int.from_bytes(head[28:32], "big") * page
    header_valid = head[92:96] == head[24:28]
    if size % page or (header_valid and declared and size < declared):
        raise UserError(
            f"{p} is truncated ({size:,} bytes of the {declared:,} its header declares)"
            if header_valid and declared > size
            else f"{p} is truncated ({size:,} bytes: not a whole number of {page:,}-byte pages)",
            "copy it again in full (an interrupted copy or download?)",
        )
    wal_mode = head[18] == 2
    immutable = wal_mode and wal_size == 0  # nothing in a -wal: read the file alone, create nothing beside it
    try:
        db = sqlite3.connect(_ro_uri(p, immutable), uri=True, check_same_thread=False, timeout=BUSY_TIMEOUT)
    except sqlite3.Error as e:
        raise UserError(f"cannot open {p}: {e}", "check the file's permissions") from None
    db.text_factory = _text  # text that is not UTF-8 (a damaged cell) reads with U+FFFD, not an error
    try:
        tables = _tables(db)
        if "metadata" not in tables:
            if immutable:
                raise _no_wal(p)
            raise UserError(f"{p} is an SQLite database but not an rllmtop recording", _HINT)
        meta = _metadata(db)
        if not meta and immutable:
            raise _no_wal(p)
        if meta.get("app") != APP or "schema_version" not in meta:
            raise UserError(f"{p} is an SQLite database but not an rllmtop recording", _HINT)
        try:
            version = int(meta["schema_version"])
        except ValueError:
            raise UserError(f"{p}: unreadable schema version {meta['schema_version']!r}", _HINT) from None
        if version > SCHEMA_VERSION:
            raise UserError(
                f"{p} was written by a newer rllmtop ({meta.get('rllmtop_version', '?')}, recording schema "
                f"{version}; this rllmtop reads up to {SCHEMA_VERSION})",
                "upgrade rllmtop to read it",
            )
        if version < OLDEST_READABLE:
            raise UserError(
                f"{p} uses recording schema {version}, which this rllmtop no longer reads: "
                + too_old_reason(version),
                f"open it with rllmtop {meta.get('rllmtop_version', 'of that time')} and export it",
            )
        check = db.execute("PRAGMA quick_check").fetchone()
        if not check or check[0] != "ok":
            raise sqlite3.DatabaseError(str(check[0]) if check else "quick_check failed")
        layout = 2 if "crc" in tables["metadata"] else 1  # what the tables say, whatever the row says
        note = "" if layout == version else f"schema_version says {version}, the tables are schema {layout}"
        return Recording(p, db, meta, layout, tables, note)
    except UserError:
        db.close()
        raise
    except sqlite3.Error as e:
        db.close()
        raise _damaged(p, e) from None
    except (ValueError, TypeError, OverflowError, MemoryError, RecursionError) as e:
        db.close()
        raise _damaged(p, e) from None


def _text(b: bytes) -> str:
    return str(b, "utf-8", "replace")


def _tables(db: sqlite3.Connection) -> dict[str, tuple[str, ...]]:
    """Table name -> its columns, as the file has them."""
    names = [
        r[0]
        for r in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
        if isinstance(r[0], str)
    ]
    out = {}
    for n in names:
        if n in TABLES or n == "metadata":
            cols = tuple(str(c[1]) for c in db.execute(f'PRAGMA table_info("{n}")'))
            out[n] = cols
    return out


def _metadata(db: sqlite3.Connection) -> dict[str, str]:
    meta: dict[str, str] = {}
    for k, v in db.execute("SELECT key, value FROM metadata"):
        if isinstance(k, str):
            meta[k] = v if isinstance(v, str) else "" if v is None else repr(v)
    return meta


def _guard(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """SQLite errors while reading (damage quick_check did not see) become one clear UserError."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except sqlite3.Error as e:
            self = args[0]
            raise _damaged(self.path, e) from None  # type: ignore[attr-defined]

    return wrapper


def _guard_iter(fn: Callable[_P, Iterator[_R]]) -> Callable[_P, Iterator[_R]]:
    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> Iterator[_R]:
        try:
            yield from fn(*args, **kwargs)
        except sqlite3.Error as e:
            self = args[0]
            raise _damaged(self.path, e) from None  # type: ignore[attr-defined]

    return wrapper


# ---------------------------------------------------------------------------------------------- columns

# what request_columns() offers: the stored fields, updated_t, and the derived latencies
_DERIVED = ("ttft", "ttfvt", "e2e", "latency_start", "concurrency_wait", "send_lag", "output_tokens")
REQUEST_COLUMNS: tuple[str, ...] = (*D.REQUEST_FIELDS, "updated_t", *_DERIVED)
_REQ_KIND = dict(TABLES["requests"].columns)


class Recording:
    """A recording opened read-only by :func:`open_recording`. Use as a context manager or ``close()``.

    ``engine`` filters (samples, histograms, scrapes) take an ``EngineInfo.id``: ``""`` is the session's
    only, unnamed engine (every engine of a schema-1 file), ``None`` means every engine."""

    def __init__(
        self,
        path: Path,
        db: sqlite3.Connection,
        meta: dict[str, str],
        version: int,
        tables: dict[str, tuple[str, ...]],
        layout_note: str = "",
    ) -> None:
        self.path = path
        self.schema_version = version
        self._db = db
        self._meta = meta
        self._tables = tables
        self._seen = D.Problems()
        self._layout_note = layout_note
        if layout_note:
            self._seen.add("metadata", "schema_version", layout_note)
        v2 = version >= 2
        self._rkey = "rid" if v2 else "id"
        self._engines: dict[int, str] = {}
        self._engine_infos: list[EngineInfo] = []
        if "engines" in tables:
            cols = self._cols("engines", TABLES["engines"].names[:-1])
            for row in db.execute(f"SELECT {cols} FROM engines ORDER BY id"):
                e = D.engine_from_row(row, self._seen)
                if e is not None and isinstance(row[0], int):
                    self._engines[row[0]] = e.id
                    self._engine_infos.append(e)
        elif v2:
            self._seen.table("engines", "the table is missing")
        self._series: dict[int, tuple[str, Labels, tuple[float, ...] | None, str]] = {}
        if self._has("series"):
            cols = self._cols("series", ("id", "metric", "labels", "bounds", "engine"))
            for sid, metric, labels, bounds, eng in db.execute(f"SELECT {cols} FROM series"):
                if not isinstance(sid, int) or not isinstance(metric, str) or not metric:
                    self._seen.add("series", sid, f"series {sid!r}: unreadable metric name")
                    continue
                lab = labels_from(labels)
                if lab is None:
                    self._seen.add("series", sid, f"series {sid}: labels are not JSON pairs")
                    lab = ()
                b = None
                if bounds is not None:
                    b = decode_bounds(bounds)
                    if b is None:
                        self._seen.add("series", sid, f"series {sid}: unreadable histogram bounds")
                        continue
                self._series[sid] = (metric, lab, b, self._engine_key(eng, "series", sid))
        self._name_sets: dict[int, tuple[str, ...]] = {}
        if self._has("name_sets"):
            for i, n in db.execute("SELECT id, names FROM name_sets"):
                if isinstance(n, str):
                    self._name_sets[i] = tuple(n.split(","))
                else:
                    self._seen.add("name_sets", i, f"name set {i!r}: unreadable names")
        self._index: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._last = self._scan_last_t()

    # -- layout helpers ---------------------------------------------------------------------------------

    def _has(self, table: str) -> bool:
        if table in self._tables:
            return True
        if table in TABLES and (self.schema_version >= 2 or TABLES[table].v1):
            self._seen.table(table, "the table is missing")
        return False

    def _cols(self, table: str, names: Sequence[str], alias: str = "") -> str:
        """A select list for ``names``; a column the file lacks reads as NULL."""
        have = set(self._tables.get(table, ()))
        pre = f"{alias}." if alias else ""
        out = []
        for n in names:
            if n in have:
                out.append(f'{pre}"{n}"')
            else:
                out.append("NULL")
                if self.schema_version >= 2 or n in TABLES[table].v1:
                    self._seen.table(f"{table}.{n}", "the column is missing")
        return ", ".join(out)

    def _engine_key(self, eid: Any, table: str, key: Any) -> str:
        if eid is None:
            return ""
        got = self._engines.get(eid) if isinstance(eid, int) else None
        if got is None:
            self._seen.add(table, key, f"row {key}: unknown engine {eid!r}")
            return ""
        return got

    def _engine_filter(self, engine: str | None) -> int | bool | None:
        """engines.id to filter on: None = the unnamed engine, False = no such engine, True = all."""
        if engine is None:
            return True
        if engine == "":
            return None
        for i, k in self._engines.items():
            if k == engine:
                return i
        return False

    def _scan_last_t(self) -> float:
        parts = []
        for table, col in (
            ("scrapes", "t"),
            ("events", "t"),
            ("client_health", "t"),
            ("workers", "t"),
            ("requests", "t_done"),
            ("requests", "t_sent"),
            ("requests", "t_dispatch"),
            ("requests", "updated_t"),
        ):
            if table in self._tables and col in self._tables[table]:
                parts.append(
                    f"(SELECT max(CASE WHEN typeof({col}) IN ('real', 'integer') THEN {col} END) FROM {table})"
                )
        if not parts:
            return 0.0
        vals = self._db.execute("SELECT " + ", ".join(parts)).fetchone()
        good = [float(v) for v in vals if isinstance(v, int | float) and math.isfinite(v)]
        return max(good, default=0.0)

    # -- facts ----------------------------------------------------------------------------------------

    @property
    def info(self) -> SessionInfo:
        """The session's facts (fleet included: ``info.engines``; empty in schema-1 files)."""
        m = self._meta
        return SessionInfo(
            session_id=m.get("session_id", ""),
            started_at=self._meta_float("started_at", 0.0),
            mode=m.get("mode", ""),
            scenario_name=m.get("scenario_name", ""),
            scenario_text=m.get("scenario_text", ""),
            seed=self._meta_int("seed"),
            engine_kind=m.get("engine_kind", "unknown") or "unknown",
            engine_version=m.get("engine_version", ""),
            engine_url=m.get("engine_url", ""),
            metrics_url=m.get("metrics_url", ""),
            model=m.get("model", ""),
            launch_command=tuple(self._meta_list("launch_command", lambda x: isinstance(x, str))),
            rllmtop_version=m.get("session_rllmtop_version", m.get("rllmtop_version", "")),
            record_path=str(self.path),
            extra=tuple(
                (p[0], p[1])
                for p in self._meta_list(
                    "extra",
                    lambda x: isinstance(x, list) and len(x) == 2 and all(isinstance(y, str) for y in x),
                )
            ),
            provenance=self._provenance(),
            engines=tuple(self._engine_infos),
            load_url=m.get("load_url", ""),
            clock=m.get("clock", "wall") if m.get("clock") in ("wall", "simulated") else "wall",
            speed=self._meta_float("speed", 1.0, positive=True),
        )

    def _meta_bad(self, key: str) -> None:
        self._seen.add("metadata", key, f"{key}: unreadable value {self._meta.get(key, '')[:40]!r}")

    def _meta_float(self, key: str, default: float, *, positive: bool = False) -> float:
        text = self._meta.get(key, "")
        if not text:
            return default
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        if not math.isfinite(v) or (positive and v <= 0):
            self._meta_bad(key)
            return default
        return v

    def _meta_int(self, key: str) -> int | None:
        text = self._meta.get(key, "")
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            self._meta_bad(key)
            return None

    def _meta_list(self, key: str, ok: Callable[[Any], bool]) -> list[Any]:
        text = self._meta.get(key, "")
        if not text:
            return []
        v = D.json_list(text)
        if v is None or not all(ok(x) for x in v):
            self._meta_bad(key)
            return []
        return v

    def _provenance(self) -> Provenance | None:
        text = self._meta.get("provenance", "")
        if text:
            try:
                return Provenance.from_json(text)
            except (ValueError, TypeError, RecursionError):
                self._meta_bad("provenance")
                return None
        if self.schema_version >= 2:
            return None
        from rllmtop.scenario import provenance_from_text  # schema 1: the header above the scenario text

        try:
            return provenance_from_text(
                self._meta.get("scenario_text", ""), self._meta.get("scenario_name", "")
            )
        except Exception:  # a damaged legacy header is a problem of the file, not a crash
            self._meta_bad("scenario_text")
            return None

    @property
    def metadata(self) -> dict[str, str]:
        """The raw metadata table (key -> value)."""
        return dict(self._meta)

    @property
    def status(self) -> SessionState:
        """The final state written by ``close()``; ``INCOMPLETE`` when the writer never closed the file."""
        if "ended_at" not in self._meta:
            return SessionState.INCOMPLETE
        s = D.state_of(self._meta.get("status"))
        if s is None:
            self._meta_bad("status")
            return SessionState.INCOMPLETE
        return s

    @property
    def status_detail(self) -> str:
        if "ended_at" not in self._meta:
            return "the recording process stopped without closing the file (killed or crashed)"
        return self._meta.get("status_detail", "")

    @property
    def duration(self) -> float:
        """Session seconds covered: the end time when closed, else the last recorded time."""
        if "ended_at" in self._meta and self._meta.get("end_t"):
            return max(self._meta_float("end_t", 0.0), self._last)
        return self._last

    @property
    def problems(self) -> tuple[str, ...]:
        """Unreadable cells, rows and tables met by the reads so far (the first few, one line each)."""
        return tuple(self._seen.lines)

    def verify(self) -> IntegrityReport:
        """Read every row once: checksums (schema 2), values, structure, row counts. Never raises for a
        damaged file: what is wrong is in the report."""
        return verify(self._db, self._tables, self.schema_version, self._meta, self._layout_note)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests -------------------------------------------------------------------------------------

    def _request_sql(self, where: str = "", order: bool = True) -> str:
        cols = self._cols("requests", (*D.REQUEST_FIELDS, "updated_t"), "r")
        key = self._rkey
        if self._has("request_gaps"):
            gkey = "rid" if self.schema_version >= 2 else "id"
            sql = f"SELECT r.{key}, {cols}, g.gaps FROM requests r LEFT JOIN request_gaps g ON g.{gkey} = r.{key}"
        else:
            sql = f"SELECT r.{key}, {cols}, NULL FROM requests r"
        if where:
            sql += " WHERE " + where
        if order:
            sql += " ORDER BY r.rid" if self.schema_version >= 2 else " ORDER BY r.rid, r.id"
        return sql

    def _request(self, row: Sequence[Any]) -> tuple[RequestRecord, float | None]:
        """(record, updated_t) from (key, *REQUEST_FIELDS, updated_t, gaps)."""
        r = D.request_from_row(row[1:-2], row[-1], self._engines, self._seen, row[0])
        upd = row[-2]
        return r, (float(upd) if isinstance(upd, int | float) and math.isfinite(upd) else None)

    @_guard
    def requests(self, *, in_flight: bool = True) -> list[RequestRecord]:
        """Every request recorded, in rid order: ended ones with their final facts, and (unless
        ``in_flight=False``) those in flight at the last commit as IN_FLIGHT records."""
        return list(self.iter_requests(in_flight=in_flight))

    @_guard_iter
    def iter_requests(self, chunk: int = 1000, *, in_flight: bool = True) -> Iterator[RequestRecord]:
        """:meth:`requests`, streamed ``chunk`` rows at a time (memory does not grow with the file)."""
        if not self._has("requests"):
            return
        where = "" if in_flight else "r.status IS NOT 'in_flight'"
        cur = self._db.execute(self._request_sql(where))
        while True:
            rows = cur.fetchmany(chunk)
            if not rows:
                return
            for row in rows:
                yield self._request(row)[0]

    @_guard
    def request_columns(self, names: Iterable[str], *, in_flight: bool = True) -> dict[str, np.ndarray]:
        """Chosen request fields as numpy arrays, one entry per request in rid order (see
        ``REQUEST_COLUMNS``): times, durations and optional counts as float64 (NaN = unknown), counts
        that always exist as int64, ``tokens_exact`` as bool, ``correct`` as float64 (1/0/NaN), text
        (and ``status``, ``engine``) as object arrays. Derived latencies (``ttft``, ``ttfvt``, ``e2e``,
        ``send_lag``, ``concurrency_wait``, ``latency_start``, ``output_tokens``) are computed as the
        RequestRecord properties compute them. Reads only the columns needed, in chunks."""
        want = list(names)
        bad = [n for n in want if n not in REQUEST_COLUMNS]
        if bad:
            raise ValueError(f"unknown request columns {bad}; choose from {', '.join(REQUEST_COLUMNS)}")
        need = set(want) - set(_DERIVED)
        deps = {
            "ttft": ("t_start", "t_sent", "t_first_token"),
            "ttfvt": ("t_start", "t_sent", "t_first_visible"),
            "e2e": ("t_start", "t_sent", "t_done"),
            "latency_start": ("t_start", "t_sent"),
            "concurrency_wait": ("t_dispatch", "t_start"),
            "send_lag": ("t_scheduled", "t_dispatch", "t_start", "t_sent", "connect_s"),
            "output_tokens": ("reasoning_tokens", "answer_tokens"),
        }
        for n in want:
            need.update(deps.get(n, ()))
        cols = [n for n in (*D.REQUEST_FIELDS, "updated_t") if n in need]
        out: dict[str, list[Any]] = {c: [] for c in cols}
        if self._has("requests") and cols:
            where = "" if in_flight else " WHERE r.status IS NOT 'in_flight'"
            order = " ORDER BY r.rid" if self.schema_version >= 2 else " ORDER BY r.rid, r.id"
            sql = f"SELECT r.{self._rkey}, {self._cols('requests', cols, 'r')} FROM requests r{where}{order}"
            cur = self._db.execute(sql)
            while rows := cur.fetchmany(4096):
                for row in rows:
                    for c, v in zip(cols, row[1:], strict=True):
                        out[c].append(v)
        arrays = {c: self._array(c, vals) for c, vals in out.items()}
        result: dict[str, np.ndarray] = {}
        for n in want:
            result[n] = arrays[n] if n in arrays else _derive(n, arrays)
        return result

    def _array(self, name: str, vals: list[Any]) -> np.ndarray:
        kind = "real" if name == "updated_t" else _REQ_KIND[name]
        default = D.DEFAULTS.get(name)
        if kind == "real" or (kind in ("int", "count") and default is None):
            try:
                return np.array(vals, dtype=np.float64)
            except (TypeError, ValueError):
                good = [v if isinstance(v, int | float) and not isinstance(v, bool) else None for v in vals]
                if len(good) != sum(1 for v in vals if v is None or isinstance(v, int | float)):
                    self._seen.table(f"requests.{name}", "unreadable values read as unknown")
                return np.array(good, dtype=np.float64)
        if kind in ("int", "count", "key") and name != "engine":
            ok = [v if v.__class__ is int and (kind != "count" or v >= 0) else None for v in vals]
            if any(a is None and b is not None for a, b in zip(ok, vals, strict=True)):
                self._seen.table(f"requests.{name}", "unreadable values read as unknown")
            return np.array([default if v is None else v for v in ok], dtype=np.int64)
        if name == "tokens_exact":
            return np.array([v == 1 for v in vals], dtype=bool)
        if name == "correct":
            return np.array([float(v) if v in (0, 1) else math.nan for v in vals], dtype=np.float64)
        if name == "status":
            return np.array([v if v in D.STATUSES else "error" for v in vals], dtype=object)
        if name == "engine":
            return np.array(
                [self._engines.get(v, "") if isinstance(v, int) else "" for v in vals], dtype=object
            )
        return np.array(
            [v if isinstance(v, str) else (None if default is None else default) for v in vals], dtype=object
        )

    # -- metrics --------------------------------------------------------------------------------------

    def _series_ids(self, names: Iterable[str] | None, hist: bool, engine: str | None) -> list[int] | None:
        ef = self._engine_filter(engine)
        if ef is False:
            return []
        if names is None and ef is True:
            return None
        wanted = None if names is None else set(names)
        key = None if ef is True or ef is None else self._engines[ef]  # type: ignore[index]
        return [
            i
            for i, (m, _, b, e) in self._series.items()
            if (wanted is None or m in wanted)
            and (b is not None) == hist
            and (ef is True or (e == "" if ef is None else e == key))
        ]

    @staticmethod
    def _time_clause(t0: float | None, t1: float | None) -> tuple[str, list[float]]:
        clause, args = [], []
        if t0 is not None:
            clause.append("sc.t >= ?")
            args.append(t0)
        if t1 is not None:
            clause.append("sc.t <= ?")
            args.append(t1)
        return (" AND ".join(clause), args)

    @_guard
    def samples(
        self,
        names: Iterable[str] | None = None,
        t0: float | None = None,
        t1: float | None = None,
        *,
        engine: str | None = None,
    ) -> list[MetricSample]:
        """Scalar samples (optionally of some neutral names, within t0 <= t <= t1, of one engine), in
        time order."""
        ids = self._series_ids(names, hist=False, engine=engine)
        if (ids is not None and not ids) or not (self._has("scrapes") and self._has("samples")):
            return []
        where, args = self._time_clause(t0, t1)
        if ids is not None:
            where = " AND ".join(x for x in (where, f"sa.series IN ({','.join(map(str, ids))})") if x)
        sql = "SELECT sc.t, sa.series, sa.value, sc.id FROM scrapes sc JOIN samples sa ON sa.scrape = sc.id"
        sql += (" WHERE " + where if where else "") + " ORDER BY sc.t, sc.id, sa.series"
        out = []
        ser = self._series
        for t, sid, v, scid in self._db.execute(sql, args):
            s = ser.get(sid)
            if s is None or s[2] is not None:
                if s is None:
                    self._seen.add(
                        "samples", (scid, sid), f"scrape {scid}: a sample of unknown series {sid!r}"
                    )
                continue
            if t.__class__ is not float:
                self._seen.add("scrapes", scid, f"scrape {scid}: unreadable time {t!r}")
                continue
            out.append(MetricSample(t, s[0], self._value(v, "samples", (scid, sid)), s[1]))
        return out

    def _value(self, v: Any, table: str, key: Any) -> float:
        if v.__class__ is float:
            return v  # type: ignore[no-any-return]
        if v is None:
            return math.nan
        if v.__class__ is int:
            return float(v)
        self._seen.add(table, key, f"row {key}: unreadable value")
        return math.nan

    @_guard
    def histograms(
        self,
        names: Iterable[str] | None = None,
        t0: float | None = None,
        t1: float | None = None,
        *,
        engine: str | None = None,
    ) -> list[HistogramSample]:
        """Histogram samples (raw cumulative buckets), in time order."""
        ids = self._series_ids(names, hist=True, engine=engine)
        if (ids is not None and not ids) or not (self._has("scrapes") and self._has("histograms")):
            return []
        where, args = self._time_clause(t0, t1)
        if ids is not None:
            where = " AND ".join(x for x in (where, f"h.series IN ({','.join(map(str, ids))})") if x)
        sql = (
            "SELECT sc.t, h.series, h.counts, h.sum, h.count, sc.id FROM scrapes sc "
            "JOIN histograms h ON h.scrape = sc.id"
        )
        sql += (" WHERE " + where if where else "") + " ORDER BY sc.t, sc.id, h.series"
        out = []
        for t, sid, counts, s, c, scid in self._db.execute(sql, args):
            if t.__class__ is not float:
                self._seen.add("scrapes", scid, f"scrape {scid}: unreadable time {t!r}")
                continue
            h = self._hist(t, sid, counts, s, c, scid)
            if h is not None:
                out.append(h)
        return out

    def _hist(self, t: float, sid: Any, counts: Any, s: Any, c: Any, scid: Any) -> HistogramSample | None:
        ser = self._series.get(sid)
        if ser is None or ser[2] is None:
            self._seen.add("histograms", (scid, sid), f"scrape {scid}: a histogram of unknown series {sid!r}")
            return None
        name, labels, bounds, _ = ser
        got = decode_counts(counts)
        if got is None or bounds is None or len(got) != len(bounds):
            self._seen.add("histograms", (scid, sid), f"scrape {scid}: unreadable bucket counts of {name}")
            return None
        key = (scid, sid)
        return HistogramSample(
            t, name, bounds, got, self._value(s, "histograms", key), self._value(c, "histograms", key), labels
        )

    _SCRAPE_COLS = (
        "id",
        "t",
        "latency",
        "ok",
        "error",
        "missing",
        "counter_reset",
        "engine",
        "stale",
        "dropped",
    )

    def _scrape_sql(self, where: str, tail: str = "") -> str:
        return f"SELECT {self._cols('scrapes', self._SCRAPE_COLS, 'sc')} FROM scrapes sc" + (
            (" WHERE " + where if where else "") + " ORDER BY sc.t, sc.id" + tail
        )

    def _engine_where(self, engine: str | None) -> str | None:
        """A WHERE term for scrapes of ``engine`` ("" = always; None = no such engine)."""
        ef = self._engine_filter(engine)
        if ef is True:
            return ""
        if ef is False:
            return None
        if "engine" not in self._tables.get("scrapes", ()):
            return "" if ef is None else None
        return "sc.engine IS NULL" if ef is None else f"sc.engine = {int(ef)}"  # type: ignore[arg-type]

    @_guard
    def scrapes(
        self,
        t0: float | None = None,
        t1: float | None = None,
        *,
        full: bool = False,
        engine: str | None = None,
    ) -> list[Scrape]:
        """Every poll (failed ones too), of every engine or of one. ``full=True`` includes samples and
        histograms."""
        if not self._has("scrapes"):
            return []
        where, args = self._time_clause(t0, t1)
        eng = self._engine_where(engine)
        if eng is None:
            return []
        where = " AND ".join(x for x in (where, eng) if x)
        rows = self._db.execute(self._scrape_sql(where), args).fetchall()
        return self._build_scrapes(rows, full)

    @_guard_iter
    def iter_scrapes(self, *, engine: str | None = None, chunk: int = 256) -> Iterator[Scrape]:
        """Every poll with its samples and histograms, in time order, read ``chunk`` scrapes at a time."""
        if engine is not None and self._engine_where(engine) is None:
            return
        for s in self._scrape_stream(-math.inf, math.inf, chunk):
            if engine is None or s.engine_id == engine:
                yield s

    def _build_scrapes(self, rows: list[tuple[Any, ...]], full: bool) -> list[Scrape]:
        samples: dict[int, list[MetricSample]] = {}
        hists: dict[int, list[HistogramSample]] = {}
        rows = [r for r in rows if self._scrape_ok(r)]
        if full and rows:
            lo = min(r[0] for r in rows)
            hi = max(r[0] for r in rows)
            times = {r[0]: r[1] for r in rows}
            ser = self._series
            if self._has("samples"):
                for scid, sid, v in self._db.execute(
                    "SELECT scrape, series, value FROM samples WHERE scrape BETWEEN ? AND ?", (lo, hi)
                ):
                    t = times.get(scid)
                    if t is None:
                        continue
                    s = ser.get(sid)
                    if s is None or s[2] is not None:
                        self._seen.add("samples", (scid, sid), f"scrape {scid}: a sample of unknown series")
                        continue
                    samples.setdefault(scid, []).append(
                        MetricSample(t, s[0], self._value(v, "samples", (scid, sid)), s[1])
                    )
            if self._has("histograms"):
                for scid, sid, counts, s, c in self._db.execute(
                    "SELECT scrape, series, counts, sum, count FROM histograms WHERE scrape BETWEEN ? AND ?",
                    (lo, hi),
                ):
                    t = times.get(scid)
                    if t is not None:
                        h = self._hist(t, sid, counts, s, c, scid)
                        if h is not None:
                            hists.setdefault(scid, []).append(h)
        out = []
        for scid, t, lat, ok, err, missing, reset, eng, stale, dropped in rows:
            names: tuple[str, ...] = ()
            if missing is not None:
                got = self._name_sets.get(missing) if isinstance(missing, int) else None
                if got is None:
                    self._seen.add("scrapes", scid, f"scrape {scid}: unknown set of missing metrics")
                else:
                    names = got
            out.append(
                Scrape(
                    t=t,
                    latency_s=self._value(lat, "scrapes", scid),
                    ok=self._flag(ok, "scrapes", scid),
                    error=err if isinstance(err, str) else "",
                    samples=tuple(samples.get(scid, ())),
                    histograms=tuple(hists.get(scid, ())),
                    missing=names,
                    counter_reset=self._flag(reset, "scrapes", scid),
                    engine_id=self._engine_key(eng, "scrapes", scid),
                    stale=self._flag(stale, "scrapes", scid),
                    dropped_series=dropped if isinstance(dropped, int) and dropped >= 0 else 0,
                )
            )
        return out

    def _scrape_ok(self, row: Sequence[Any]) -> bool:
        t = row[1]
        if t.__class__ is float and math.isfinite(t) and isinstance(row[0], int):
            return True
        self._seen.add("scrapes", row[0], f"scrape {row[0]!r}: unreadable time {t!r}")
        return False

    def _flag(self, v: Any, table: str, key: Any) -> bool:
        if v is None or v == 0:
            return False
        if v == 1:
            return True
        self._seen.add(table, key, f"row {key}: unreadable flag")
        return False

    # -- events, client health, workers ---------------------------------------------------------------

    _EVENT_COLS = ("id", "t", "kind", "state", "source", "level", "text")

    @_guard
    def states(self) -> list[StateEvent]:
        return [e for e in self._events("kind = 'state'") if isinstance(e, StateEvent)]

    @_guard
    def logs(self) -> list[LogEvent]:
        return [e for e in self._events("kind IS NOT 'state'") if isinstance(e, LogEvent)]

    def _events(self, where: str) -> list[StateEvent | LogEvent]:
        if not self._has("events"):
            return []
        sql = f"SELECT {self._cols('events', self._EVENT_COLS)} FROM events WHERE {where} ORDER BY t, id"
        return [e for row in self._db.execute(sql) if (e := D.event_from_row(row, self._seen)) is not None]

    _HEALTH_COLS = TABLES["client_health"].names[:-1]
    _WORKER_COLS = TABLES["workers"].names[:-1]

    @_guard
    def client_health(self) -> list[ClientHealth]:
        """The load generator's heartbeat lateness per interval, in time order (empty in schema 1)."""
        if self.schema_version < 2 or not self._has("client_health"):
            return []
        sql = f"SELECT {self._cols('client_health', self._HEALTH_COLS)} FROM client_health ORDER BY t, id"
        return [h for row in self._db.execute(sql) if (h := D.health_from_row(row, self._seen)) is not None]

    @_guard
    def worker_events(self) -> list[WorkerEvent]:
        """Sender processes starting, ending and dying, in time order (empty in schema 1)."""
        if self.schema_version < 2 or not self._has("workers"):
            return []
        sql = f"SELECT {self._cols('workers', self._WORKER_COLS)} FROM workers ORDER BY t, id"
        return [w for row in self._db.execute(sql) if (w := D.worker_from_row(row, self._seen)) is not None]

    # -- the stream, for replay ---------------------------------------------------------------------------

    @_guard_iter
    def stream(
        self,
        after: float = -math.inf,
        until: float = math.inf,
        *,
        progress_from: float = -math.inf,
        chunk: int = 256,
    ) -> Iterator[TimedRecord]:
        """Every recorded record with ``after < t <= until`` in time order, as the live session published
        them: StateEvents, LogEvents, full Scrapes, ClientHealth, WorkerEvents, and RequestEvents rebuilt
        from the request rows (:func:`~rllmtop.record.rebuild.request_events`). PROGRESS events before
        ``progress_from`` are left out (a replay catching up after a seek does not need them). Lazy: reads
        the file in chunks as it is consumed."""
        seq = itertools.count()
        progress_from = max(progress_from, after)
        parts: list[Iterator[tuple[float, int, int, TimedRecord]]] = [
            ((r.t, 0, next(seq), r) for r in self._events_stream(after, until, chunk)),
            ((r.t, 1, next(seq), r) for r in self._scrape_stream(after, until, chunk)),
            ((r.t, 2, next(seq), r) for r in self._request_stream(after, until, progress_from, chunk)),
        ]
        if self.schema_version >= 2:
            parts.append(
                (r.t, 3, next(seq), r) for r in self._table_stream("client_health", after, until, chunk)
            )
            parts.append((r.t, 4, next(seq), r) for r in self._table_stream("workers", after, until, chunk))
        for item in heapq.merge(*parts):
            yield item[3]

    def _paged(self, select: str, after: float, until: float, chunk: int) -> Iterator[list[tuple[Any, ...]]]:
        """Rows of ``select`` (id first, t second) with after < t <= until, in (t, id) order, by pages."""
        last_t, last_id = after, -1
        first = True
        while True:
            rows = self._db.execute(
                select
                + ("WHERE t > ? AND t <= ? " if first else "WHERE (t > ? OR (t = ? AND id > ?)) AND t <= ? ")
                + "ORDER BY t, id LIMIT ?",
                (after, until, chunk) if first else (last_t, last_t, last_id, until, chunk),
            ).fetchall()
            first = False
            yield rows
            if len(rows) < chunk:
                return
            last_t, last_id = rows[-1][1], rows[-1][0]

    def _events_stream(self, after: float, until: float, chunk: int) -> Iterator[StateEvent | LogEvent]:
        if not self._has("events"):
            return
        select = f"SELECT {self._cols('events', self._EVENT_COLS)} FROM events "
        for rows in self._paged(select, after, until, chunk):
            for row in rows:
                e = D.event_from_row(row, self._seen)
                if e is not None:
                    yield e

    def _table_stream(self, table: str, after: float, until: float, chunk: int) -> Iterator[Any]:
        if not self._has(table):
            return
        cols, conv = (
            (self._HEALTH_COLS, D.health_from_row)
            if table == "client_health"
            else (self._WORKER_COLS, D.worker_from_row)
        )
        select = f"SELECT {self._cols(table, cols)} FROM {table} "
        for rows in self._paged(select, after, until, chunk):
            for row in rows:
                r = conv(row, self._seen)  # type: ignore[operator]
                if r is not None:
                    yield r

    def _scrape_stream(self, after: float, until: float, chunk: int) -> Iterator[Scrape]:
        if not self._has("scrapes"):
            return
        select = f"SELECT {self._cols('scrapes', self._SCRAPE_COLS)} FROM scrapes "
        for rows in self._paged(select, after, until, chunk):
            yield from self._build_scrapes(rows, full=True)

    def _request_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(first event time, last event time, key) per request, sorted by first time."""
        if self._index is not None:
            return self._index
        if not self._has("requests"):
            e = np.zeros(0)
            self._index = (e, e, np.zeros(0, dtype=np.int64))
            return self._index
        cols = self._cols("requests", ("t_scheduled", "t_dispatch", "t_sent", "t_done", "updated_t"))
        rows = self._db.execute(f"SELECT {self._rkey}, {cols} FROM requests").fetchall()
        keys = np.array([r[0] if isinstance(r[0], int) else -1 for r in rows], dtype=np.int64)
        try:
            t = np.array([r[1:] for r in rows], dtype=np.float64).reshape(len(rows), 5)
        except (TypeError, ValueError):
            t = np.array(
                [[x if isinstance(x, float | int) else math.nan for x in r[1:]] for r in rows],
                dtype=np.float64,
            ).reshape(len(rows), 5)
        t[~np.isfinite(t)] = np.nan
        with np.errstate(all="ignore"):
            lo = np.fmin.reduce(t[:, 1:4], axis=1)  # dispatch, sent, done (NaN ignored)
            first = np.nan_to_num(np.where(np.isnan(lo), t[:, 0], lo), nan=0.0)
            last = np.fmax(first, np.fmax.reduce(t[:, 1:], axis=1))
        keep = keys >= 0
        order = np.argsort(first[keep], kind="stable")
        self._index = (first[keep][order], last[keep][order], keys[keep][order])
        return self._index

    def _request_stream(
        self, after: float, until: float, progress_from: float, chunk: int
    ) -> Iterator[RequestEvent]:
        first, last, keys = self._request_index()
        end = int(np.searchsorted(first, until, side="right"))
        ids = keys[:end][last[:end] > after].tolist()
        heap: list[tuple[float, int, RequestEvent, Iterator[RequestEvent]]] = []
        seq = itertools.count()
        for k in range(0, len(ids), chunk):
            part = ids[k : k + chunk]
            rows = self._db.execute(
                self._request_sql(f"r.{self._rkey} IN ({','.join('?' * len(part))})", order=False), part
            ).fetchall()
            by_key = {row[0]: self._request(row) for row in rows}
            for key in part:
                got = by_key.get(key)
                if got is None:
                    continue
                rec, upd = got
                it = request_events(rec, progress_from=progress_from, until=upd)
                ev = next(it, None)
                while ev is not None and ev.t <= after:
                    ev = next(it, None)
                if ev is None:
                    continue
                # everything due before this request's first event goes out first
                while heap and heap[0][0] <= ev.t:
                    yield from _pop(heap, seq, until)
                heapq.heappush(heap, (ev.t, next(seq), ev, it))
        while heap:
            yield from _pop(heap, seq, until)


def _pop(
    heap: list[tuple[float, int, RequestEvent, Iterator[RequestEvent]]], seq: Iterator[int], until: float
) -> Iterator[RequestEvent]:
    t, _, ev, it = heapq.heappop(heap)
    if t > until:
        heap.clear()  # everything left is later still
        return
    yield ev
    nxt = next(it, None)
    if nxt is not None:
        heapq.heappush(heap, (nxt.t, next(seq), nxt, it))


def _derive(name: str, a: dict[str, np.ndarray]) -> np.ndarray:
    """A derived request column, computed as the RequestRecord property computes it."""
    if name == "output_tokens":
        return a["reasoning_tokens"] + a["answer_tokens"]
    start = np.where(np.isnan(a["t_start"]), a["t_sent"], a["t_start"]) if "t_start" in a else None
    if name == "latency_start":
        return start  # type: ignore[return-value]
    if name in ("ttft", "ttfvt", "e2e"):
        end = {"ttft": "t_first_token", "ttfvt": "t_first_visible", "e2e": "t_done"}[name]
        return a[end] - start  # type: ignore[operator]
    wait = np.maximum(a["t_start"] - a["t_dispatch"], 0.0)
    wait = np.where(np.isnan(a["t_start"]) | np.isnan(a["t_dispatch"]), np.nan, wait)
    if name == "concurrency_wait":
        return wait
    # send_lag
    v1 = a["t_dispatch"] - a["t_scheduled"]
    v2 = a["t_sent"] - a["t_scheduled"] - np.nan_to_num(wait) - np.nan_to_num(a["connect_s"])
    return np.where(np.isnan(a["t_start"]) | np.isnan(a["t_sent"]), v1, v2)
