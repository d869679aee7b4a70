"""Session recordings: one SQLite file per session, written while it runs, read for replay/export/reports.

Writing (:class:`Recorder`): ``handle()`` only queues the record (it runs on the session's event loop for
every record); a writer thread commits the queue every ``flush_interval`` (0.5 s) in one transaction, in WAL
mode with ``synchronous=NORMAL``, so a killed process loses at most the last flush interval plus one write
and the file still opens (status ``incomplete``). ``close()`` writes the final status and end time, and turns
the file into a single self-contained database (journal mode DELETE). Request events other than DONE/FAILED
are not stored: the final :class:`RequestRecord` holds every fact they carried, and replay rebuilds them
(:func:`request_events`). Secrets never reach the file: launch commands, scenario text, URLs and log lines
pass through :mod:`rllmtop.redact`.

Schema (version 1; raw values only, everything derived is computed later):

- ``metadata(key, value)``: app marker, schema version, rllmtop version, session facts (scenario text, seed,
  engine kind/version/model/URLs/launch command), start/end times, final status and detail.
- ``series(id, metric, labels, bounds)``: one row per (neutral metric, labels[, histogram bounds]);
  ``labels`` is JSON ``[[key, value], ...]``, ``bounds`` a little-endian float64 array.
- ``scrapes(id, t, latency, ok, error, missing, counter_reset)`` indexed on ``t``; ``missing`` points into
  ``name_sets(id, names)`` (comma-separated neutral names).
- ``samples(scrape, series, value)`` and ``histograms(scrape, series, counts, sum, count)``, clustered on
  (scrape, series); a sample's time is its scrape's ``t``. ``counts`` are the cumulative bucket counts as
  served: a tag byte (1 = uint32, 2 = float64) then the array. The view ``sample_values(t, metric, labels,
  value)`` reads them as one flat table.
- ``requests``: one row per finished request with every RequestRecord field (times in session seconds);
  ``request_gaps(id, gaps)`` holds the inter-token gap blob (``events.encode_gaps``) of request ``id``.
- ``events(id, t, kind, state, source, level, text)``: state changes (kind "state") and log lines (kind
  "log": errors, engine lines, annotations), indexed on ``t``.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import itertools
import json
import math
import sqlite3
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import quote

import numpy as np

from rllmtop import __version__
from rllmtop.errors import UserError
from rllmtop.events import (
    ENDED,
    HistogramSample,
    Labels,
    LogEvent,
    MetricSample,
    Provenance,
    Record,
    RequestEvent,
    RequestKind,
    RequestRecord,
    RequestStatus,
    Reset,
    Scrape,
    SessionInfo,
    SessionState,
    StateEvent,
    decode_gaps,
)
from rllmtop.redact import redact_argv, redact_text, redact_url

__all__ = [
    "SCHEMA_VERSION",
    "Recorder",
    "Recording",
    "TimedRecord",
    "open_recording",
    "request_events",
]

SCHEMA_VERSION = 1
OLDEST_READABLE = 1  # schema versions below this are refused with the reason in _TOO_OLD
_TOO_OLD: dict[int, str] = {}
_APP = "rllmtop"
TimedRecord: TypeAlias = StateEvent | LogEvent | Scrape | RequestEvent
"""What :meth:`Recording.stream` yields: every record kind that carries a session time."""
PROGRESS_INTERVAL = 0.25  # replayed PROGRESS ticks, on the session-time grid like the live runner's

_SCHEMA = """
CREATE TABLE metadata (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE series (id INTEGER PRIMARY KEY, metric TEXT NOT NULL, labels TEXT NOT NULL, bounds BLOB);
CREATE TABLE name_sets (id INTEGER PRIMARY KEY, names TEXT NOT NULL);
CREATE TABLE scrapes (
    id INTEGER PRIMARY KEY, t REAL NOT NULL, latency REAL, ok INTEGER NOT NULL, error TEXT,
    missing INTEGER, counter_reset INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX scrapes_t ON scrapes (t);
CREATE TABLE samples (
    scrape INTEGER NOT NULL, series INTEGER NOT NULL, value REAL, PRIMARY KEY (scrape, series)
) WITHOUT ROWID;
CREATE TABLE histograms (
    scrape INTEGER NOT NULL, series INTEGER NOT NULL, counts BLOB NOT NULL, sum REAL, count REAL,
    PRIMARY KEY (scrape, series)
) WITHOUT ROWID;
CREATE TABLE requests (
    id INTEGER PRIMARY KEY, rid INTEGER, cls TEXT, difficulty TEXT, prompt_id TEXT,
    t_scheduled REAL, t_dispatch REAL, t_sent REAL, t_first_token REAL, t_first_reasoning REAL,
    t_reasoning_end REAL, t_first_visible REAL, t_done REAL,
    prompt_tokens INTEGER, reasoning_tokens INTEGER, answer_tokens INTEGER, completion_tokens INTEGER,
    tokens_exact INTEGER, max_tokens INTEGER, finish_reason TEXT, status TEXT, http_status INTEGER,
    error TEXT, answer_text TEXT, reference TEXT, extracted TEXT, correct INTEGER
);
CREATE TABLE request_gaps (id INTEGER PRIMARY KEY, gaps BLOB NOT NULL);
CREATE TABLE events (
    id INTEGER PRIMARY KEY, t REAL NOT NULL, kind TEXT NOT NULL, state TEXT, source TEXT, level TEXT, text TEXT
);
CREATE INDEX events_t ON events (t);
CREATE VIEW sample_values AS
    SELECT sc.t AS t, se.metric AS metric, se.labels AS labels, sa.value AS value
    FROM samples sa JOIN scrapes sc ON sc.id = sa.scrape JOIN series se ON se.id = sa.series;
"""

# RequestRecord fields in column order (gaps live in request_gaps)
_REQ_FIELDS = [
    "rid",
    "cls",
    "difficulty",
    "prompt_id",
    "t_scheduled",
    "t_dispatch",
    "t_sent",
    "t_first_token",
    "t_first_reasoning",
    "t_reasoning_end",
    "t_first_visible",
    "t_done",
    "prompt_tokens",
    "reasoning_tokens",
    "answer_tokens",
    "completion_tokens",
    "tokens_exact",
    "max_tokens",
    "finish_reason",
    "status",
    "http_status",
    "error",
    "answer_text",
    "reference",
    "extracted",
    "correct",
]  # schema 1 columns
_REQ_INSERT = (
    f"INSERT INTO requests (id, {', '.join(_REQ_FIELDS)}) VALUES ({', '.join('?' * (len(_REQ_FIELDS) + 1))})"
)
_REQ_SELECT = ", ".join(f"r.{n}" for n in _REQ_FIELDS)


def _safe_info(info: SessionInfo) -> SessionInfo:
    return replace(
        info,
        scenario_text=redact_text(info.scenario_text),
        engine_url=redact_url(info.engine_url),
        metrics_url=redact_url(info.metrics_url),
        launch_command=redact_argv(info.launch_command),
        extra=tuple((k, redact_text(v)) for k, v in info.extra),
    )


# ---------------------------------------------------------------------------------------------- encoding


# numpy scalars that reach a record (counts computed with numpy) bind like Python numbers
def _np_int(v: Any) -> int:
    return int(v)


def _np_float(v: Any) -> float:
    return float(v)


for _np_type in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.bool_):
    sqlite3.register_adapter(_np_type, _np_int)
sqlite3.register_adapter(np.float32, _np_float)


def _labels_json(labels: Labels) -> str:
    return json.dumps([list(p) for p in labels], separators=(",", ":"))


def _labels_from(text: str) -> Labels:
    return tuple((str(k), str(v)) for k, v in json.loads(text))


def _encode_counts(counts: Sequence[float]) -> bytes:
    if all(c == int(c) and 0 <= c <= 0xFFFFFFFF for c in counts if not math.isnan(c)) and not any(
        math.isnan(c) for c in counts
    ):
        return b"\x01" + array("I", (int(c) for c in counts)).tobytes()
    return b"\x02" + array("d", counts).tobytes()


def _decode_counts(blob: bytes) -> tuple[float, ...]:
    a = array("I" if blob[:1] == b"\x01" else "d")
    a.frombytes(blob[1:])
    return tuple(float(x) for x in a)


def _float(v: float | None) -> float:
    return math.nan if v is None else float(v)


def _info_rows(info: SessionInfo) -> list[tuple[str, str]]:
    info = _safe_info(info)
    return [
        ("session_id", info.session_id),
        ("started_at", repr(info.started_at)),
        ("mode", info.mode),
        ("scenario_name", info.scenario_name),
        ("scenario_text", info.scenario_text),
        ("seed", "" if info.seed is None else str(info.seed)),
        ("engine_kind", info.engine_kind),
        ("engine_version", info.engine_version),
        ("engine_url", info.engine_url),
        ("metrics_url", info.metrics_url),
        ("model", info.model),
        ("launch_command", json.dumps(list(info.launch_command))),
        ("session_rllmtop_version", info.rllmtop_version),
        ("record_path", info.record_path),
        ("extra", json.dumps([list(p) for p in info.extra])),
        ("provenance", info.provenance.to_json() if info.provenance is not None else ""),
        ("clock", info.clock),
        ("speed", repr(info.speed)),
    ]


# ---------------------------------------------------------------------------------------------- writer


class _Flush:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


@dataclass(frozen=True, slots=True)
class _Close:
    state: SessionState
    detail: str
    done: threading.Event


class Recorder:
    """Records one session to ``path`` (created, with parent directories; an existing file is refused).

    ``handle(rec)`` is the sink: cheap, never blocks on I/O. A writer thread commits every
    ``flush_interval`` seconds; ``flush()`` blocks until everything handed so far is committed (for
    checkpoints and tests, not per record). ``close(state, detail)`` writes the end and final status; it
    raises :class:`UserError` if the recording failed on the way (e.g. disk full: the file keeps what was
    written before). ``on_error`` (optional) is called once, from the writer thread, when that happens.
    """

    def __init__(
        self,
        path: str | Path,
        info: SessionInfo,
        *,
        flush_interval: float = 0.5,
        on_error: Callable[[UserError], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.on_error = on_error
        self.error: UserError | None = None
        self._q: deque[Any] = deque()
        self._wake = threading.Event()
        self._closed = False
        self._series: dict[tuple, int] = {}
        self._name_sets: dict[tuple[str, ...], int] = {}
        self._next_scrape = 1
        self._next_request = 1
        self._last_t = 0.0
        self.rows_written = 0
        self.flushes = 0
        self.max_flush_seconds = 0.0
        if self.path.exists() and self.path.stat().st_size > 0:
            raise UserError(
                f"{self.path} already exists", "choose another --record FILE, or delete the old one"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._connect()
            self._create(info)
        except (OSError, sqlite3.Error) as e:
            raise UserError(
                f"cannot create the recording {self.path}: {e}",
                "check that the directory is writable, or pass --record FILE / --no-record",
            ) from e
        self._thread = threading.Thread(target=self._run, name="rllmtop-recorder", daemon=True)
        self._thread.start()

    # -- called on the session's loop --------------------------------------------------------------

    def handle(self, rec: Record) -> None:
        """Queue one record (DONE/FAILED request events, scrapes, states, logs, session info)."""
        if rec.__class__ is RequestEvent and rec.kind not in ENDED:  # type: ignore[union-attr]
            return  # the final RequestRecord carries everything; replay rebuilds the steps
        if rec.__class__ is Reset or self._closed:
            return
        self._q.append(rec)

    def flush(self, timeout: float = 30.0) -> None:
        """Block until every record handed so far is committed (or the recording failed)."""
        if self._closed:
            return
        f = _Flush()
        self._q.append(f)
        self._wake.set()
        f.done.wait(timeout)

    def close(self, state: SessionState, detail: str = "", timeout: float = 60.0) -> None:
        """Commit everything, write the end time and final ``state``; the file is then complete."""
        if self._closed:
            return
        self._closed = True
        c = _Close(state, detail, threading.Event())
        self._q.append(c)
        self._wake.set()
        c.done.wait(timeout)
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error

    # -- writer thread ------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _create(self, info: SessionInfo) -> None:
        db = self._db
        db.execute("BEGIN")
        for statement in _split_sql(_SCHEMA):
            db.execute(statement)
        db.executemany(
            "INSERT OR REPLACE INTO metadata VALUES (?, ?)",
            [
                ("app", _APP),
                ("schema_version", str(SCHEMA_VERSION)),
                ("rllmtop_version", __version__),
                ("status", SessionState.RUNNING.value),
                ("status_detail", ""),
                ("created_at", repr(time.time())),
                *_info_rows(info),
            ],
        )
        db.execute("COMMIT")

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            if self._drain():
                return

    def _drain(self) -> bool:
        """Write everything queued; True when a close marker was processed."""
        q = self._q
        n = len(q)
        if not n:
            return False
        batch = [q.popleft() for _ in range(n)]
        i = 0
        while i < len(batch):
            j = i
            while j < len(batch) and not isinstance(batch[j], _Flush | _Close):
                j += 1
            if j > i:
                try:
                    self._write(batch[i:j])
                except Exception as e:  # a bug or an odd value: stop recording, keep the file, say so
                    with contextlib.suppress(sqlite3.Error):
                        if self._db.in_transaction:
                            self._db.execute("ROLLBACK")
                    if self.error is None:
                        self._fail(e)
            if j < len(batch):
                marker = batch[j]
                if isinstance(marker, _Close):
                    self._finish(marker)
                    for later in batch[j + 1 :]:
                        if isinstance(later, _Flush):
                            later.done.set()
                    return True
                marker.done.set()
            i = j + 1
        return False

    def _write(self, recs: list[Any]) -> None:
        if self.error is not None:
            return  # the recording already failed: keep what is on disk, drop the rest
        t0 = time.perf_counter()
        db = self._db
        scrapes: list[tuple] = []
        samples: list[tuple] = []
        hists: list[tuple] = []
        requests: list[tuple] = []
        gaps: list[tuple] = []
        events: list[tuple] = []
        meta: list[tuple[str, str]] = []
        new_series: list[tuple] = []
        new_sets: list[tuple] = []
        series = self._series
        for rec in recs:
            cls = rec.__class__
            if cls is RequestEvent:
                r: RequestRecord = rec.record
                rid = self._next_request
                self._next_request += 1
                row = [rid]
                row += [getattr(r, n) for n in _REQ_FIELDS]
                requests.append(tuple(row))
                if r.gaps:
                    gaps.append((rid, r.gaps))
            elif cls is Scrape:
                sid = self._next_scrape
                self._next_scrape += 1
                missing = None
                if rec.missing:
                    missing = self._name_sets.get(rec.missing)
                    if missing is None:
                        missing = self._name_sets[rec.missing] = len(self._name_sets) + 1
                        new_sets.append((missing, ",".join(rec.missing)))
                scrapes.append(
                    (
                        sid,
                        rec.t,
                        rec.latency_s,
                        int(rec.ok),
                        rec.error or None,
                        missing,
                        int(rec.counter_reset),
                    )
                )
                for s in rec.samples:
                    key = (s.name, s.labels)
                    k = series.get(key)
                    if k is None:
                        k = series[key] = len(series) + 1
                        new_series.append((k, s.name, _labels_json(s.labels), None))
                    samples.append((sid, k, s.value))
                for h in rec.histograms:
                    hkey = (h.name, h.labels, h.bounds)
                    k = series.get(hkey)
                    if k is None:
                        k = series[hkey] = len(series) + 1
                        new_series.append((k, h.name, _labels_json(h.labels), array("d", h.bounds).tobytes()))
                    hists.append((sid, k, _encode_counts(h.counts), h.sum, h.count))
            elif cls is LogEvent:
                events.append((rec.t, "log", None, rec.source, rec.level, redact_text(rec.text)))
            elif cls is StateEvent:
                events.append((rec.t, "state", rec.state.value, None, None, redact_text(rec.detail)))
            elif cls is SessionInfo:
                meta += _info_rows(rec)
            if cls is not SessionInfo:
                self._last_t = max(self._last_t, rec.t)
        try:
            db.execute("BEGIN")
            if new_series:
                db.executemany("INSERT INTO series VALUES (?, ?, ?, ?)", new_series)
            if new_sets:
                db.executemany("INSERT INTO name_sets VALUES (?, ?)", new_sets)
            if scrapes:
                db.executemany("INSERT INTO scrapes VALUES (?, ?, ?, ?, ?, ?, ?)", scrapes)
            if samples:
                db.executemany("INSERT OR REPLACE INTO samples VALUES (?, ?, ?)", samples)
            if hists:
                db.executemany("INSERT OR REPLACE INTO histograms VALUES (?, ?, ?, ?, ?)", hists)
            if requests:
                db.executemany(_REQ_INSERT, requests)
            if gaps:
                db.executemany("INSERT INTO request_gaps VALUES (?, ?)", gaps)
            if events:
                db.executemany(
                    "INSERT INTO events (t, kind, state, source, level, text) VALUES (?, ?, ?, ?, ?, ?)",
                    events,
                )
            if meta:
                db.executemany("INSERT OR REPLACE INTO metadata VALUES (?, ?)", meta)
            db.execute("COMMIT")
        except sqlite3.Error as e:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            self._fail(e)  # nothing more is written after this, so the ids handed out do not matter
            return
        self.rows_written += len(scrapes) + len(samples) + len(hists) + len(requests) + len(events)
        self.flushes += 1
        self.max_flush_seconds = max(self.max_flush_seconds, time.perf_counter() - t0)

    def _fail(self, e: Exception) -> None:
        msg = " ".join(str(e).split())[:200]
        if not isinstance(e, sqlite3.Error):
            what = (
                f"{self.path}: recording stopped after t={self._committed_t():.1f} s: "
                f"internal error ({type(e).__name__}: {msg})"
            )
            hint = "the file keeps what was written before; please report this with the session's log"
        elif "full" in msg.lower():
            what = f"{self.path}: the disk is full ({msg}); recording stopped after t={self._committed_t():.1f} s"
            hint = "free some space or record elsewhere (--record FILE); what was written is kept"
        else:
            what = f"{self.path}: recording stopped after t={self._committed_t():.1f} s: {msg}"
            hint = "the file keeps what was written before; check the disk and the file's permissions"
        self.error = UserError(what, hint)
        if self.on_error is not None:
            with contextlib.suppress(Exception):
                self.on_error(self.error)

    def _committed_t(self) -> float:
        with contextlib.suppress(sqlite3.Error):
            row = self._db.execute(
                "SELECT max(t) FROM (SELECT max(t) AS t FROM scrapes UNION ALL SELECT max(t) FROM events "
                "UNION ALL SELECT max(t_done) FROM requests)"
            ).fetchone()
            if row and row[0] is not None:
                return float(row[0])
        return 0.0

    def _finish(self, c: _Close) -> None:
        db = self._db
        detail = c.detail
        if self.error is not None:
            detail = (detail + "; " if detail else "") + self.error.what
        end_t = self._last_t if self.error is None else self._committed_t()
        try:
            db.execute("BEGIN")
            db.executemany(
                "INSERT OR REPLACE INTO metadata VALUES (?, ?)",
                [
                    ("status", c.state.value),
                    ("status_detail", redact_text(detail)),
                    ("ended_at", repr(time.time())),
                    ("end_t", repr(end_t)),
                ],
            )
            db.execute("COMMIT")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.Error as e:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            if self.error is None:
                self._fail(e)
        finally:
            with contextlib.suppress(sqlite3.Error):
                db.close()
            c.done.set()


def _split_sql(script: str) -> list[str]:
    """Statements of a DDL script (no semicolons inside them)."""
    return [s.strip() for s in script.split(";") if s.strip()]


# ---------------------------------------------------------------------------------------------- reader


def _ro_uri(path: Path) -> str:
    return "file:" + quote(str(path.resolve())) + "?mode=ro"


def open_recording(path: str | Path) -> Recording:
    """Open a recording read-only. Raises :class:`UserError` for a missing, foreign, corrupt or newer file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such recording", "check the path (recordings go to recordings/ by default)")
    hint = "pass a file written by rllmtop (rllmtop run ... --record FILE)"
    with p.open("rb") as f:
        head = f.read(16)
    if head != b"SQLite format 3\x00":
        raise UserError(f"{p} is not an rllmtop recording (not an SQLite database)", hint)
    try:
        db = sqlite3.connect(_ro_uri(p), uri=True, check_same_thread=False)
    except sqlite3.Error as e:
        raise UserError(f"cannot open {p}: {e}", "check the file's permissions") from e
    try:
        try:
            meta = dict(db.execute("SELECT key, value FROM metadata").fetchall())
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                raise UserError(f"{p} is an SQLite database but not an rllmtop recording", hint) from e
            raise
        if meta.get("app") != _APP or "schema_version" not in meta:
            raise UserError(f"{p} is an SQLite database but not an rllmtop recording", hint)
        try:
            version = int(meta["schema_version"])
        except ValueError:
            raise UserError(f"{p}: unreadable schema version {meta['schema_version']!r}", hint) from None
        if version > SCHEMA_VERSION:
            raise UserError(
                f"{p} was written by a newer rllmtop ({meta.get('rllmtop_version', '?')}, recording schema "
                f"{version}; this rllmtop reads up to {SCHEMA_VERSION})",
                "upgrade rllmtop to read it",
            )
        if version < OLDEST_READABLE:
            raise UserError(
                f"{p} uses recording schema {version}, which this rllmtop no longer reads: "
                + _TOO_OLD.get(version, "its layout changed"),
                f"open it with rllmtop {meta.get('rllmtop_version', 'of that time')} and export it",
            )
        check = db.execute("PRAGMA quick_check").fetchone()
        if not check or check[0] != "ok":
            raise sqlite3.DatabaseError(str(check[0]) if check else "quick_check failed")
        return Recording(p, db, meta, version)
    except UserError:
        db.close()
        raise
    except sqlite3.DatabaseError as e:
        db.close()
        first = " ".join(str(e).splitlines()[0].split())[:160] if str(e) else type(e).__name__
        raise UserError(
            f"{p} is damaged and cannot be read ({first})",
            "if it was copied while being written, copy it again; otherwise it cannot be replayed",
        ) from e


def _state(value: str | None) -> SessionState:
    try:
        return SessionState(value or "")
    except ValueError:
        return SessionState.INCOMPLETE


class Recording:
    """A recording opened read-only by :func:`open_recording`. Use as a context manager or ``close()``."""

    def __init__(self, path: Path, db: sqlite3.Connection, meta: dict[str, str], version: int) -> None:
        self.path = path
        self.schema_version = version
        self._db = db
        self._meta = meta
        self._series: dict[int, tuple[str, Labels, tuple[float, ...] | None]] = {}
        for sid, metric, labels, bounds in db.execute("SELECT id, metric, labels, bounds FROM series"):
            b = None
            if bounds is not None:
                arr = array("d")
                arr.frombytes(bounds)
                b = tuple(arr)
            self._series[sid] = (metric, _labels_from(labels), b)
        self._name_sets = {i: tuple(n.split(",")) for i, n in db.execute("SELECT id, names FROM name_sets")}
        # request index for replay: (first event time, last event time, id), sorted by first time
        idx = []
        for rid, ts, td, tsent, tdone in db.execute(
            "SELECT id, t_scheduled, t_dispatch, t_sent, t_done FROM requests"
        ):
            times = [x for x in (td, tsent, tdone) if x is not None]
            first = min(times) if times else (ts or 0.0)
            last = max([first, *times])
            idx.append((first, last, rid))
        idx.sort()
        self._req_index = idx
        self._req_starts = [x[0] for x in idx]
        self._last_req_t = max((x[1] for x in idx), default=0.0)

    # -- facts ----------------------------------------------------------------------------------------

    @property
    def info(self) -> SessionInfo:
        m = self._meta
        seed = m.get("seed", "")
        return SessionInfo(
            session_id=m.get("session_id", ""),
            started_at=float(m.get("started_at", "0") or 0),
            mode=m.get("mode", ""),
            scenario_name=m.get("scenario_name", ""),
            scenario_text=m.get("scenario_text", ""),
            seed=int(seed) if seed else None,
            engine_kind=m.get("engine_kind", "unknown"),
            engine_version=m.get("engine_version", ""),
            engine_url=m.get("engine_url", ""),
            metrics_url=m.get("metrics_url", ""),
            model=m.get("model", ""),
            launch_command=tuple(json.loads(m.get("launch_command", "[]"))),
            rllmtop_version=m.get("session_rllmtop_version", m.get("rllmtop_version", "")),
            record_path=str(self.path),
            extra=tuple((str(k), str(v)) for k, v in json.loads(m.get("extra", "[]"))),
            provenance=self._provenance(),
            clock=m.get("clock", "wall") or "wall",
            speed=float(m.get("speed", "1") or 1),
        )

    def _provenance(self) -> Provenance | None:
        text = self._meta.get("provenance", "")
        if text:
            try:
                return Provenance.from_json(text)
            except ValueError:
                return None
        from rllmtop.scenario import provenance_from_text  # schema 1: the header above the scenario text

        return provenance_from_text(self._meta.get("scenario_text", ""), self._meta.get("scenario_name", ""))

    @property
    def metadata(self) -> dict[str, str]:
        """The raw metadata table (key -> value)."""
        return dict(self._meta)

    @property
    def status(self) -> SessionState:
        """The final state written by ``close()``; ``INCOMPLETE`` when the writer never closed the file."""
        if "ended_at" not in self._meta:
            return SessionState.INCOMPLETE
        return _state(self._meta.get("status"))

    @property
    def status_detail(self) -> str:
        if "ended_at" not in self._meta:
            return "the recording process stopped without closing the file (killed or crashed)"
        return self._meta.get("status_detail", "")

    @property
    def duration(self) -> float:
        """Session seconds covered: the end time when closed, else the last recorded time."""
        end = self._meta.get("end_t")
        last = self._last_t()
        if end is not None and "ended_at" in self._meta:
            return max(float(end), last)
        return last

    def _last_t(self) -> float:
        row = self._db.execute(
            "SELECT max(coalesce((SELECT max(t) FROM scrapes), 0), coalesce((SELECT max(t) FROM events), 0))"
        ).fetchone()
        return max(float(row[0] or 0.0), self._last_req_t)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- bulk reads -------------------------------------------------------------------------------------

    def requests(self) -> list[RequestRecord]:
        """Every finished request, in rid order."""
        return [
            self._request(row)
            for row in self._db.execute(
                f"SELECT r.id, {_REQ_SELECT}, g.gaps FROM requests r "
                "LEFT JOIN request_gaps g ON g.id = r.id ORDER BY r.rid, r.id"
            )
        ]

    def _request(self, row: Sequence[Any]) -> RequestRecord:
        kw = dict(zip(_REQ_FIELDS, row[1:-1], strict=True))
        kw["status"] = RequestStatus(kw["status"])
        kw["tokens_exact"] = bool(kw["tokens_exact"])
        if kw["correct"] is not None:
            kw["correct"] = bool(kw["correct"])
        for k in ("cls", "difficulty", "prompt_id"):
            kw[k] = kw[k] or ""
        kw["gaps"] = bytes(row[-1]) if row[-1] is not None else b""
        return RequestRecord(**kw)

    def _series_ids(self, names: Iterable[str] | None, hist: bool) -> list[int] | None:
        if names is None:
            return None
        wanted = set(names)
        return [i for i, (m, _, b) in self._series.items() if m in wanted and (b is not None) == hist]

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

    def samples(
        self, names: Iterable[str] | None = None, t0: float | None = None, t1: float | None = None
    ) -> list[MetricSample]:
        """Scalar samples (optionally of some neutral names, within t0 <= t <= t1), in time order."""
        ids = self._series_ids(names, hist=False)
        if ids is not None and not ids:
            return []
        where, args = self._time_clause(t0, t1)
        if ids is not None:
            where = " AND ".join(x for x in (where, f"sa.series IN ({','.join(map(str, ids))})") if x)
        sql = "SELECT sc.t, sa.series, sa.value FROM scrapes sc JOIN samples sa ON sa.scrape = sc.id"
        sql += (" WHERE " + where if where else "") + " ORDER BY sc.t, sc.id, sa.series"
        out = []
        ser = self._series
        for t, sid, v in self._db.execute(sql, args):
            name, labels, _ = ser[sid]
            out.append(MetricSample(t, name, _float(v), labels))
        return out

    def histograms(
        self, names: Iterable[str] | None = None, t0: float | None = None, t1: float | None = None
    ) -> list[HistogramSample]:
        """Histogram samples (raw cumulative buckets), in time order."""
        ids = self._series_ids(names, hist=True)
        if ids is not None and not ids:
            return []
        where, args = self._time_clause(t0, t1)
        if ids is not None:
            where = " AND ".join(x for x in (where, f"h.series IN ({','.join(map(str, ids))})") if x)
        sql = (
            "SELECT sc.t, h.series, h.counts, h.sum, h.count FROM scrapes sc "
            "JOIN histograms h ON h.scrape = sc.id"
        )
        sql += (" WHERE " + where if where else "") + " ORDER BY sc.t, sc.id, h.series"
        return [self._hist(t, sid, counts, s, c) for t, sid, counts, s, c in self._db.execute(sql, args)]

    def _hist(self, t: float, sid: int, counts: bytes, s: float | None, c: float | None) -> HistogramSample:
        name, labels, bounds = self._series[sid]
        return HistogramSample(t, name, bounds or (), _decode_counts(counts), _float(s), _float(c), labels)

    def scrapes(
        self, t0: float | None = None, t1: float | None = None, *, full: bool = False
    ) -> list[Scrape]:
        """Every poll (failed ones too). ``full=True`` includes samples and histograms."""
        where, args = self._time_clause(t0, t1)
        rows = self._db.execute(
            "SELECT sc.id, sc.t, sc.latency, sc.ok, sc.error, sc.missing, sc.counter_reset FROM scrapes sc"
            + (" WHERE " + where if where else "")
            + " ORDER BY sc.t, sc.id",
            args,
        ).fetchall()
        return self._build_scrapes(rows, full)

    def _build_scrapes(self, rows: list[tuple], full: bool) -> list[Scrape]:
        samples: dict[int, list[MetricSample]] = {}
        hists: dict[int, list[HistogramSample]] = {}
        if full and rows:
            lo = min(r[0] for r in rows)
            hi = max(r[0] for r in rows)
            times = {r[0]: r[1] for r in rows}
            ser = self._series
            for scid, sid, v in self._db.execute(
                "SELECT scrape, series, value FROM samples WHERE scrape BETWEEN ? AND ?", (lo, hi)
            ):
                t = times.get(scid)
                if t is not None:
                    name, labels, _ = ser[sid]
                    samples.setdefault(scid, []).append(MetricSample(t, name, _float(v), labels))
            for scid, sid, counts, s, c in self._db.execute(
                "SELECT scrape, series, counts, sum, count FROM histograms WHERE scrape BETWEEN ? AND ?",
                (lo, hi),
            ):
                t = times.get(scid)
                if t is not None:
                    hists.setdefault(scid, []).append(self._hist(t, sid, counts, s, c))
        return [
            Scrape(
                t=t,
                latency_s=_float(lat),
                ok=bool(ok),
                error=err or "",
                samples=tuple(samples.get(scid, ())),
                histograms=tuple(hists.get(scid, ())),
                missing=self._name_sets.get(missing, ()) if missing is not None else (),
                counter_reset=bool(reset),
            )
            for scid, t, lat, ok, err, missing, reset in rows
        ]

    def states(self) -> list[StateEvent]:
        return [
            StateEvent(t, _state(state), text or "")
            for t, state, text in self._db.execute(
                "SELECT t, state, text FROM events WHERE kind = 'state' ORDER BY t, id"
            )
        ]

    def logs(self) -> list[LogEvent]:
        return [
            LogEvent(t, source or "", level or "info", text or "")
            for t, source, level, text in self._db.execute(
                "SELECT t, source, level, text FROM events WHERE kind = 'log' ORDER BY t, id"
            )
        ]

    # -- the stream, for replay ---------------------------------------------------------------------------

    def stream(
        self,
        after: float = -math.inf,
        until: float = math.inf,
        *,
        progress_from: float = -math.inf,
        chunk: int = 256,
    ) -> Iterator[TimedRecord]:
        """Every recorded record with ``after < t <= until`` in time order, as the live session published
        them: StateEvents, LogEvents, full Scrapes, and RequestEvents rebuilt from the request rows
        (:func:`request_events`). PROGRESS events before ``progress_from`` are left out (a replay catching
        up after a seek does not need them). Lazy: reads the file in chunks as it is consumed."""
        seq = itertools.count()
        progress_from = max(progress_from, after)
        parts = [
            ((r.t, 0, next(seq), r) for r in self._events_stream(after, until, chunk)),
            ((r.t, 1, next(seq), r) for r in self._scrape_stream(after, until, chunk)),
            ((r.t, 2, next(seq), r) for r in self._request_stream(after, until, progress_from, chunk)),
        ]
        for item in heapq.merge(*parts):
            yield item[3]

    def _events_stream(self, after: float, until: float, chunk: int) -> Iterator[StateEvent | LogEvent]:
        last_t, last_id = after, -1
        first = True
        while True:
            rows = self._db.execute(
                "SELECT id, t, kind, state, source, level, text FROM events "
                + ("WHERE t > ? AND t <= ? " if first else "WHERE (t > ? OR (t = ? AND id > ?)) AND t <= ? ")
                + "ORDER BY t, id LIMIT ?",
                (after, until, chunk) if first else (last_t, last_t, last_id, until, chunk),
            ).fetchall()
            first = False
            for _id, t, kind, state, source, level, text in rows:
                if kind == "state":
                    yield StateEvent(t, _state(state), text or "")
                else:
                    yield LogEvent(t, source or "", level or "info", text or "")
            if len(rows) < chunk:
                return
            last_t, last_id = rows[-1][1], rows[-1][0]

    def _scrape_stream(self, after: float, until: float, chunk: int) -> Iterator[Scrape]:
        last_t, last_id = after, -1
        first = True
        cols = (
            "SELECT sc.id, sc.t, sc.latency, sc.ok, sc.error, sc.missing, sc.counter_reset FROM scrapes sc "
        )
        while True:
            rows = self._db.execute(
                cols
                + ("WHERE t > ? AND t <= ? " if first else "WHERE (t > ? OR (t = ? AND id > ?)) AND t <= ? ")
                + "ORDER BY t, id LIMIT ?",
                (after, until, chunk) if first else (last_t, last_t, last_id, until, chunk),
            ).fetchall()
            first = False
            yield from self._build_scrapes(rows, full=True)
            if len(rows) < chunk:
                return
            last_t, last_id = rows[-1][1], rows[-1][0]

    def _request_stream(
        self, after: float, until: float, progress_from: float, chunk: int
    ) -> Iterator[RequestEvent]:
        idx = self._req_index
        end = bisect.bisect_right(self._req_starts, until)
        ids = [rid for first, last, rid in idx[:end] if last > after]
        heap: list[tuple[float, int, RequestEvent, Iterator[RequestEvent]]] = []
        seq = itertools.count()
        for k in range(0, len(ids), chunk):
            part = ids[k : k + chunk]
            rows = self._db.execute(
                f"SELECT r.id, {_REQ_SELECT}, g.gaps FROM requests r LEFT JOIN request_gaps g ON g.id = r.id "
                f"WHERE r.id IN ({','.join('?' * len(part))})",
                part,
            ).fetchall()
            by_id = {row[0]: self._request(row) for row in rows}
            for rid in part:
                it = request_events(by_id[rid], progress_from=progress_from)
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


# ---------------------------------------------------------------------------------------------- rebuild


def request_events(
    r: RequestRecord, progress_interval: float = PROGRESS_INTERVAL, *, progress_from: float = -math.inf
) -> Iterator[RequestEvent]:
    """The RequestEvents the live runner published for ``r``, rebuilt from its final record.

    QUEUED (when it waited on the client's concurrency cap), SENT, FIRST_TOKEN, FIRST_VISIBLE, PROGRESS on
    the session-time grid of ``progress_interval`` whenever the counts moved (from the gap blob; reasoning
    tokens are the chunks before the first visible one, scaled to the recorded totals; none before
    ``progress_from``), then DONE or FAILED with the record. Times never decrease.
    """
    cls = r.cls
    ok = r.status is RequestStatus.OK
    t_last = max(
        [t for t in (r.t_scheduled, r.t_dispatch, r.t_sent, r.t_first_token, r.t_done) if t is not None]
    )
    t_end = r.t_done if r.t_done is not None else t_last
    if r.t_dispatch is not None and (
        (r.t_sent is not None and r.t_sent > r.t_dispatch)
        or (r.t_sent is None and r.status is RequestStatus.CANCELLED)
    ):
        yield RequestEvent(RequestKind.QUEUED, r.t_dispatch, r.rid, cls)
    if r.t_sent is not None:
        yield RequestEvent(RequestKind.SENT, r.t_sent, r.rid, cls)
    counts = _Counts(r)
    last = (0, 0)
    if r.t_first_token is not None:
        last = counts.at(r.t_first_token)
        yield RequestEvent(RequestKind.FIRST_TOKEN, r.t_first_token, r.rid, cls, *last)
        tick = (math.floor(r.t_first_token / progress_interval) + 1) * progress_interval
        if progress_from > tick:
            tick = math.ceil(progress_from / progress_interval - 1e-9) * progress_interval
        visible = r.t_first_visible
        while True:
            nxt = tick if tick < t_end else math.inf
            if visible is not None and visible <= nxt:
                c = counts.at(visible)
                yield RequestEvent(RequestKind.FIRST_VISIBLE, max(visible, r.t_first_token), r.rid, cls, *c)
                last = c
                visible = None
                continue
            if nxt == math.inf:
                break
            c = counts.at(tick)
            if c != last:
                yield RequestEvent(RequestKind.PROGRESS, tick, r.rid, cls, *c)
                last = c
            tick += progress_interval
    kind = RequestKind.DONE if ok else RequestKind.FAILED
    detail = (r.finish_reason or "") if ok else (r.error or r.status.value)
    yield RequestEvent(kind, t_end, r.rid, cls, r.reasoning_tokens, r.answer_tokens, detail, r)


class _Counts:
    """Cumulative (reasoning, answer) tokens of a request at any session time.

    With a gap blob: per chunk, reasoning = chunks before the first visible one, each part scaled to the
    recorded totals. Without one (a single chunk, or gaps not recorded): one chunk carrying everything, or a
    straight line from the first token to the end when there were several tokens.
    """

    __slots__ = ("cum_a", "cum_r", "linear", "r", "times")

    def __init__(self, r: RequestRecord) -> None:
        self.r = r
        gaps, per_chunk = decode_gaps(r.gaps)
        t0 = r.t_first_token or 0.0
        self.linear = not gaps and r.output_tokens > 1 and r.t_done is not None and r.t_done > t0
        if not gaps:
            self.times = [t0]
            self.cum_r, self.cum_a = [r.reasoning_tokens], [r.answer_tokens]
            return
        times = t0 + np.concatenate(
            ([0.0], np.cumsum(np.frombuffer(gaps, dtype=np.uint32), dtype=np.float64) * 1e-6)
        )
        w = np.frombuffer(per_chunk, dtype=np.uint16) if per_chunk is not None else np.ones(times.size)
        cum = np.cumsum(w, dtype=np.float64)
        split = (
            times.size if r.t_first_visible is None else int(np.searchsorted(times, r.t_first_visible - 1e-9))
        )
        wr = float(cum[split - 1]) if split else 0.0
        wa = float(cum[-1]) - wr
        cr = np.rint(np.minimum(cum, wr) * (r.reasoning_tokens / wr)) if wr else np.zeros(times.size)
        ca = np.rint(np.maximum(cum - wr, 0.0) * (r.answer_tokens / wa)) if wa else np.zeros(times.size)
        self.times = times.tolist()
        self.cum_r = cr.astype(np.int64).tolist()
        self.cum_a = ca.astype(np.int64).tolist()

    def at(self, t: float) -> tuple[int, int]:
        r = self.r
        if self.linear:
            t0 = r.t_first_token or 0.0
            t1 = r.t_done or t0
            total = r.output_tokens
            n = max(1, min(total, int(total * (t - t0) / (t1 - t0)))) if t >= t0 else 0
            if r.t_first_visible is not None and r.answer_tokens:
                n = max(n, r.reasoning_tokens + 1) if t >= r.t_first_visible else min(n, r.reasoning_tokens)
            reasoning = min(n, r.reasoning_tokens)
            return reasoning, min(r.answer_tokens, n - reasoning)
        i = bisect.bisect_right(self.times, t + 1e-9) - 1
        if i < 0:
            return 0, 0
        return self.cum_r[i], self.cum_a[i]
