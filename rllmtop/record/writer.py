"""Writing a session's recording: :class:`Recorder`, the session's sink for every record.

``handle()`` only queues the record (it runs on the session's event loop for every record); a writer
thread commits the queue every ``flush_interval`` (0.5 s) in one transaction, in WAL mode with
``synchronous=NORMAL``, so a killed process loses at most the last commit interval and the file still
opens (status ``incomplete``). ``close()`` writes the final status and end time and turns the file into a
single self-contained database (journal mode DELETE).

Requests: a SENT event creates the request's row (its starting facts, status ``in_flight``); FIRST_TOKEN,
FIRST_VISIBLE and PROGRESS update it in memory (tokens so far, first-token times, ``updated_t``) and the
changed rows are written at each commit; DONE/FAILED replace it with the final record. The writer keeps
only the requests in flight in memory (plus one bit per request index, so the per-table row counts it
writes for ``verify()`` stay exact), so its memory does not grow with finished requests; every request
sent before the last commit is in the file with its state at that commit. The series cache is bounded
(``max_series``, a backstop behind the scraper's per-engine cap).

Values from the wire are checked where they enter (:mod:`rllmtop.record.encode`): a bad value costs one
sample or one field of one request (stored as NULL, said in the request's ``error`` and in a warning log
line, at most a few lines per kind), never the recording. If the recorder itself fails (disk full, a
read-only file), it stops, keeps what was committed and says so in :attr:`Recorder.error`; ``close()``
still writes the final status when it can.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rllmtop import __version__
from rllmtop.errors import UserError
from rllmtop.events import (
    ClientHealth,
    LogEvent,
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
    WorkerEvent,
)
from rllmtop.record import encode as E
from rllmtop.record.codec import bounds_blob, labels_json, row_crc, scrape_crc
from rllmtop.record.schema import APP, SCHEMA_VERSION, TABLES, create_statements
from rllmtop.redact import redact_text, redact_url

__all__ = ["MAX_SERIES", "Recorder"]

MAX_SERIES = 250_000  # a backstop: the scraper caps series per engine well below this
_WARN_LINES = 5  # log lines per kind of bad value; the rest are counted
_COLS = TABLES["requests"].names
_POS = {n: i for i, n in enumerate(_COLS)}
_P_ANSWER_TOKENS = _POS["answer_tokens"]
_P_ERROR = _POS["error"]
_P_REASONING_TOKENS = _POS["reasoning_tokens"]
_P_STATUS = _POS["status"]
_P_T_DONE = _POS["t_done"]
_P_T_FIRST_REASONING = _POS["t_first_reasoning"]
_P_T_FIRST_TOKEN = _POS["t_first_token"]
_P_T_FIRST_VISIBLE = _POS["t_first_visible"]
_P_T_SENT = _POS["t_sent"]
_REQ_INSERT = f"INSERT OR REPLACE INTO requests VALUES ({', '.join('?' * len(_COLS))})"
_YIELD_MASK = 255  # the writer thread lets the GIL go every 256 records it converts
_RID_LIMIT = 1 << 27  # request indices below this are tracked in a bitmap (16 MB at most)


def _insert(table: str) -> str:
    return f"INSERT INTO {table} VALUES ({', '.join('?' * len(TABLES[table].columns))})"


class _Flush:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


@dataclass(frozen=True, slots=True)
class _Close:
    state: SessionState
    detail: str
    done: threading.Event


class _Live:
    """A request in flight: its stored row (without updated_t/crc) and whether the file has it yet."""

    __slots__ = ("row", "updated_t")

    def __init__(self, row: list[Any], updated_t: float) -> None:
        self.row = row
        self.updated_t = updated_t


class _Seen:
    """Which request indices have a row (a bit each), so a count of rows stays exact."""

    __slots__ = ("bits", "db", "extra")

    def __init__(self, db: sqlite3.Connection) -> None:
        self.bits = bytearray()
        self.db = db
        self.extra: set[int] = set()  # indices outside the bitmap seen since the last commit

    def add(self, rid: int) -> bool:
        """Mark ``rid``; True when it had no row before."""
        if 0 <= rid < _RID_LIMIT:
            i, b = rid >> 3, 1 << (rid & 7)
            if i >= len(self.bits):
                self.bits.extend(bytes(max(i + 1 - len(self.bits), len(self.bits))))
            if self.bits[i] & b:
                return False
            self.bits[i] |= b
            return True
        return self._add_slow(rid)

    def has(self, rid: int) -> bool:
        if 0 <= rid < _RID_LIMIT:
            i = rid >> 3
            return i < len(self.bits) and bool(self.bits[i] & (1 << (rid & 7)))
        return rid in self.extra or self._in_file(rid)

    def _add_slow(self, rid: int) -> bool:
        if rid in self.extra or self._in_file(rid):
            return False
        self.extra.add(rid)
        return True

    def _in_file(self, rid: int) -> bool:
        return self.db.execute("SELECT 1 FROM requests WHERE rid = ?", (rid,)).fetchone() is not None


@dataclass
class _Batch:
    """What one commit writes."""

    requests: dict[int, tuple[Any, ...]] = field(default_factory=dict)  # rid -> full row
    gaps: list[tuple[int, bytes]] = field(default_factory=list)
    ungapped: list[tuple[int]] = field(default_factory=list)  # replaced rows whose old gap row goes
    scrapes: list[tuple[Any, ...]] = field(default_factory=list)
    samples: list[tuple[Any, ...]] = field(default_factory=list)
    hists: list[tuple[Any, ...]] = field(default_factory=list)
    series: list[tuple[Any, ...]] = field(default_factory=list)
    name_sets: list[tuple[Any, ...]] = field(default_factory=list)
    engines: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    new_engines: int = 0
    events: list[tuple[Any, ...]] = field(default_factory=list)
    health: list[tuple[Any, ...]] = field(default_factory=list)
    workers: list[tuple[Any, ...]] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    new_requests: int = 0
    max_t: float = 0.0


class Recorder:
    """Records one session to ``path`` (created, with parent directories; an existing file is refused).

    ``handle(rec)`` is the sink: cheap, never blocks on I/O, never raises. A writer thread commits every
    ``flush_interval`` seconds; ``flush()`` blocks until everything handed so far is committed (for
    checkpoints and tests, not per record). ``close(state, detail)`` writes the end and final status; it
    raises :class:`UserError` if the recording failed on the way (e.g. disk full): the file keeps what
    was committed before. ``on_error`` (optional) is called once, from the writer thread, when that
    happens.

    After a failure: :attr:`error` (the one-line UserError), :attr:`kept_requests`, :attr:`kept_scrapes`
    and :attr:`kept_t` (session seconds of the newest record committed) say what the file holds.
    :attr:`coerced` counts values stored as NULL, :attr:`dropped` records and samples not stored.
    """

    def __init__(
        self,
        path: str | Path,
        info: SessionInfo,
        *,
        flush_interval: float = 0.5,
        on_error: Callable[[UserError], None] | None = None,
        max_series: int = MAX_SERIES,
    ) -> None:
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.on_error = on_error
        self.max_series = max_series
        self.error: UserError | None = None
        self.kept_requests = 0
        self.kept_scrapes = 0
        self.kept_t = 0.0
        self.coerced = 0
        self.dropped = 0
        self.rows_written = 0
        self.flushes = 0
        self.max_flush_seconds = 0.0
        self._q: deque[Any] = deque()
        self._wake = threading.Event()
        self._closed = False
        self._series: dict[tuple[Any, ...], int] = {}
        self._name_sets: dict[tuple[str, ...], int] = {}
        self._engines: dict[str, int] = {}  # stored (redacted) key -> engines.id
        self._engine_raw: dict[str, int | None] = {"": None}  # key as handed -> engines.id
        self._live: dict[int, _Live] = {}
        self._dirty: set[int] = set()
        self._next = {"scrapes": 1, "events": 1, "client_health": 1, "workers": 1}
        self._counts = {n: 0 for n in ("requests", "scrapes", "samples", "histograms", "events")}
        self._counts.update({n: 0 for n in ("client_health", "workers", "series", "name_sets", "engines")})
        self._warned: dict[str, int] = {}
        self._last_t = 0.0
        if self.path.exists() and (not self.path.is_file() or self.path.stat().st_size > 0):
            raise UserError(
                f"{self.path} already exists", "choose another --record FILE, or delete the old one"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._connect()
            self._seen = _Seen(self._db)
            self._create(info)
        except (OSError, sqlite3.Error) as e:
            raise UserError(
                f"cannot create the recording {self.path}: {e}",
                "check that the directory is writable, or pass --record FILE / --no-record",
            ) from e
        self._thread = threading.Thread(target=self._run, name="rllmtop-recorder", daemon=True)
        self._thread.start()

    @property
    def in_flight(self) -> int:
        """Requests whose rows the writer keeps current (sent, not ended)."""
        return len(self._live)

    # -- called on the session's loop --------------------------------------------------------------

    def handle(self, rec: Record) -> None:
        """Queue one record. Never blocks, never raises."""
        if self._closed or self.error is not None:
            return
        cls = rec.__class__
        if cls is Reset or (cls is RequestEvent and rec.kind is RequestKind.QUEUED):  # type: ignore[union-attr]
            return
        self._q.append(rec)

    def flush(self, timeout: float = 30.0) -> None:
        """Block until every record handed so far is committed (or the recording failed)."""
        if self._closed or not self._thread.is_alive():
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
        for statement in create_statements():
            db.execute(statement)
        rows = [
            ("app", APP),
            ("schema_version", str(SCHEMA_VERSION)),
            ("rllmtop_version", __version__),
            ("status", SessionState.RUNNING.value),
            ("status_detail", ""),
            ("created_at", repr(time.time())),
            *E.info_rows(info),
        ]
        b = _Batch()
        self._take_engines(info, b)
        if b.engines:
            db.executemany(
                "INSERT OR REPLACE INTO engines VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                list(b.engines.values()),
            )
            self._counts["engines"] += b.new_engines
        self._meta_keys = {k for k, _ in rows} | {"counts"}
        self._counts["metadata"] = len(self._meta_keys)
        rows.append(("counts", json.dumps(self._counts, sort_keys=True)))
        db.executemany("INSERT OR REPLACE INTO metadata VALUES (?, ?, ?)", [(*r, row_crc(r)) for r in rows])
        db.execute("COMMIT")

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(self.flush_interval)
                self._wake.clear()
                if self._drain():
                    return
        except BaseException as e:  # a bug: stop recording, keep the file, release every waiter
            if self.error is None:
                self._fail(e if isinstance(e, Exception) else RuntimeError(repr(e)))
            self._release()

    def _release(self) -> None:
        while self._q:
            m = self._q.popleft()
            if isinstance(m, _Flush | _Close):
                if isinstance(m, _Close):
                    self._finish(m)
                else:
                    m.done.set()

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
                except Exception as e:  # a bug: stop recording, keep the file, still honour the markers
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

    # -- one commit -------------------------------------------------------------------------------------

    def _write(self, recs: list[Any]) -> None:
        if self.error is not None:
            return  # the recording already failed: keep what is on disk, drop the rest
        t0 = time.perf_counter()
        b = _Batch(max_t=self.kept_t)
        for n, rec in enumerate(recs):
            if n & _YIELD_MASK == _YIELD_MASK:
                time.sleep(0)  # hand the GIL to the session's loop now and then (not one 5 ms slice)
            try:
                self._take(rec, b)
            except E.Unstorable as e:
                self._drop("record", str(e), b)
            except Exception as e:  # an odd value the checks did not foresee: this record only
                self._drop("record", f"a {type(rec).__name__} could not be stored ({type(e).__name__})", b)
        for rid in self._dirty:
            live = self._live.get(rid)
            if live is not None and rid not in b.requests:
                b.requests[rid] = _full(live.row, live.updated_t)
        self._commit(b, t0)

    def _commit(self, b: _Batch, t0: float) -> None:
        db = self._db
        counts = dict(self._counts)
        counts["requests"] += b.new_requests
        counts["engines"] += b.new_engines
        for name, rows in (
            ("scrapes", b.scrapes),
            ("samples", b.samples),
            ("histograms", b.hists),
            ("events", b.events),
            ("client_health", b.health),
            ("workers", b.workers),
            ("series", b.series),
            ("name_sets", b.name_sets),
        ):
            counts[name] += len(rows)
        keys = self._meta_keys | b.meta.keys()
        counts["metadata"] = len(keys)
        b.meta["counts"] = json.dumps(counts, sort_keys=True)
        try:
            db.execute("BEGIN")
            if b.engines:
                db.executemany(
                    "INSERT OR REPLACE INTO engines VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    list(b.engines.values()),
                )
            if b.series:
                db.executemany(_insert("series"), b.series)
            if b.name_sets:
                db.executemany(_insert("name_sets"), b.name_sets)
            if b.scrapes:
                db.executemany(_insert("scrapes"), b.scrapes)
            if b.samples:
                db.executemany(_insert("samples"), b.samples)
            if b.hists:
                db.executemany(_insert("histograms"), b.hists)
            if b.requests:
                db.executemany(_REQ_INSERT, list(b.requests.values()))
            if b.ungapped:
                db.executemany("DELETE FROM request_gaps WHERE rid = ?", b.ungapped)
            if b.gaps:
                db.executemany("INSERT OR REPLACE INTO request_gaps VALUES (?, ?)", b.gaps)
            if b.events:
                db.executemany(_insert("events"), b.events)
            if b.health:
                db.executemany(_insert("client_health"), b.health)
            if b.workers:
                db.executemany(_insert("workers"), b.workers)
            db.executemany(
                "INSERT OR REPLACE INTO metadata VALUES (?, ?, ?)",
                [(k, *_meta_value(k, v)) for k, v in b.meta.items()],
            )
            db.execute("COMMIT")
        except Exception as e:  # sqlite3.Error: disk full, read-only...; anything else: a bug
            with contextlib.suppress(sqlite3.Error):
                if db.in_transaction:
                    db.execute("ROLLBACK")
            self._fail(e)  # nothing more is written after this, so the ids handed out do not matter
            return
        self._dirty.clear()
        self._seen.extra.clear()
        self._counts = counts
        self._meta_keys = keys
        self.kept_requests = counts["requests"]
        self.kept_scrapes = counts["scrapes"]
        self.kept_t = max(self.kept_t, b.max_t)
        self.rows_written += len(b.requests) + len(b.scrapes) + len(b.samples) + len(b.hists)
        self.rows_written += len(b.events) + len(b.health) + len(b.workers)
        self.flushes += 1
        self.max_flush_seconds = max(self.max_flush_seconds, time.perf_counter() - t0)

    # -- records to rows -----------------------------------------------------------------------------

    def _take(self, rec: Any, b: _Batch) -> None:
        cls = rec.__class__
        if cls is RequestEvent:
            self._take_request(rec, b)
        elif cls is Scrape:
            self._take_scrape(rec, b)
        elif cls is LogEvent or cls is StateEvent:
            row = E.event_row(rec)
            self._add_event(row, b)
        elif cls is ClientHealth:
            notes: list[str] = []
            row = E.health_row(rec, notes)
            i = self._next["client_health"]
            self._next["client_health"] = i + 1
            b.health.append((i, *row, row_crc((i, *row))))
            self._noted(notes, "client_health", b)
            self._seen_t(row[0], b)
        elif cls is WorkerEvent:
            notes = []
            row = E.worker_row(rec, notes)
            i = self._next["workers"]
            self._next["workers"] = i + 1
            b.workers.append((i, *row, row_crc((i, *row))))
            self._noted(notes, "workers", b)
            self._seen_t(row[0], b)
        elif cls is SessionInfo:
            b.meta.update(E.info_rows(rec))
            self._take_engines(rec, b)
        elif cls is _Internal:
            self._add_event(rec.row, b)

    def _seen_t(self, t: float, b: _Batch) -> None:
        if t > b.max_t:
            b.max_t = t
        if t > self._last_t:
            self._last_t = t

    def _add_event(self, row: list[Any], b: _Batch) -> None:
        i = self._next["events"]
        self._next["events"] = i + 1
        b.events.append((i, *row, row_crc((i, *row))))
        self._seen_t(row[0], b)

    def _take_request(self, ev: RequestEvent, b: _Batch) -> None:
        kind = ev.kind
        ended = kind is RequestKind.DONE or kind is RequestKind.FAILED
        t = ev.t
        if t.__class__ is not float or not -E.TIME_LIMIT <= t <= E.TIME_LIMIT:
            if ended and ev.record is not None:  # the record is what matters: a bad event time costs nothing
                t = E.as_finite(t)
                t = self._last_t if t is E.BAD or t is None else t
            else:
                t = E.time_of(t, f"a {kind} event")
        t += 0.0
        rid = ev.rid
        if rid.__class__ is not int:
            rid = E.as_int(rid)
            if rid is E.BAD or rid is None:
                raise E.Unstorable(f"a {kind} event without a usable request index")
        if ended:
            r = ev.record
            row: list[Any] | None = None
            gaps = b""
            if r is not None:
                notes: list[str] = []
                try:
                    row = E.request_row(r, self._engine_of(getattr(r, "engine", ""), b), notes, rid)
                except E.Unstorable as e:  # its last known state, ended now (below)
                    self._drop("requests", f"request {rid}: {e}", b)
                else:
                    gaps = E.gaps_of(r, notes)
                self._noted(notes, "requests", b)
            live = self._live.pop(rid, None)
            if row is None:
                if live is None:
                    return  # an end we know nothing about
                row = list(live.row)  # an end without a usable record: the last known state, ended now
                row[_P_T_DONE] = t
                failed = kind is RequestKind.FAILED
                row[_P_STATUS] = (RequestStatus.ERROR if failed else RequestStatus.OK).value
                detail = E.as_text(ev.detail)
                if failed and isinstance(detail, str) and detail:
                    row[_P_ERROR] = redact_text(detail)
            self._dirty.discard(rid)
            if self._seen.add(rid):
                b.new_requests += 1
            elif not gaps:
                b.ungapped.append((rid,))
            b.requests[rid] = _full(row, t, gaps)
            if gaps:
                b.gaps.append((rid, gaps))
            self._seen_t(t, b)
            return
        live = self._live.get(rid)
        if kind is RequestKind.SENT:
            if live is not None:
                return  # sent twice (a retry): the first write's facts stay
            if self._seen.has(rid):
                self._warn("sent-after-end", f"request {rid} was sent again after it ended: ignored", b)
                return
            start = ev.record
            notes = []
            if start is None:  # a runner that sends no starting facts: what the event says
                start = RequestRecord(rid=rid, cls=ev.cls, t_scheduled=t, t_sent=t, worker=ev.worker)
            row = E.request_row(start, self._engine_of(getattr(start, "engine", ""), b), notes, rid)
            self._noted(notes, "requests", b)
            row[_P_STATUS] = RequestStatus.IN_FLIGHT.value
            row[_P_T_DONE] = None
            if row[_P_T_SENT] is None:
                row[_P_T_SENT] = t
            self._live[rid] = _Live(row, t)
            self._dirty.add(rid)
            if self._seen.add(rid):
                b.new_requests += 1
            self._seen_t(t, b)
            return
        if live is None:
            return  # progress of a request we never saw sent (or that already ended)
        row = live.row
        r_tokens, a_tokens = ev.reasoning_tokens, ev.answer_tokens
        if r_tokens.__class__ is not int or a_tokens.__class__ is not int:
            r_tokens, a_tokens = E.as_count(r_tokens), E.as_count(a_tokens)
            if r_tokens is E.BAD or a_tokens is E.BAD or r_tokens is None or a_tokens is None:
                self._warn("progress", f"request {rid}: {kind} with bad token counts: ignored", b)
                return
        if r_tokens < 0 or a_tokens < 0:
            self._warn("progress", f"request {rid}: {kind} with negative token counts: ignored", b)
            return
        if kind is RequestKind.FIRST_TOKEN:
            if row[_P_T_FIRST_TOKEN] is None:
                row[_P_T_FIRST_TOKEN] = t
            if r_tokens and row[_P_T_FIRST_REASONING] is None:
                row[_P_T_FIRST_REASONING] = t
        elif kind is RequestKind.FIRST_VISIBLE:
            if row[_P_T_FIRST_VISIBLE] is None:
                row[_P_T_FIRST_VISIBLE] = t
            if row[_P_T_FIRST_TOKEN] is None:
                row[_P_T_FIRST_TOKEN] = t
        if r_tokens > (row[_P_REASONING_TOKENS] or 0):  # counts never go down
            row[_P_REASONING_TOKENS] = r_tokens
        if a_tokens > (row[_P_ANSWER_TOKENS] or 0):
            row[_P_ANSWER_TOKENS] = a_tokens
        if t > live.updated_t:
            live.updated_t = t
        self._dirty.add(rid)
        if t > b.max_t:
            b.max_t = t
            if t > self._last_t:
                self._last_t = t

    def _take_scrape(self, rec: Scrape, b: _Batch) -> None:
        t = E.time_of(rec.t, "a scrape")
        eid = self._engine_of(rec.engine_id, b)
        sid = self._next["scrapes"]
        self._next["scrapes"] = sid + 1
        missing = None
        names = rec.missing
        if names:
            if isinstance(names, tuple) and all(isinstance(n, str) and "," not in n for n in names):
                missing = self._name_sets.get(names)
                if missing is None:
                    missing = self._name_sets[names] = len(self._name_sets) + 1
                    text = ",".join(names)
                    b.name_sets.append((missing, text, row_crc((missing, text))))
            else:
                self._warn("scrape", f"scrape at t={t:.3f}: its list of missing metrics is not names", b)
        values: dict[int, float | None] = {}
        for s in rec.samples:
            c = E.clean_sample(s)
            if isinstance(c, str):
                self._drop("sample", f"scrape at t={t:.3f}: {c}", b)
                continue
            name, labels, value = c
            key = (eid, name, labels)
            k = self._series.get(key)
            if k is None:
                k = self._new_series(key, eid, name, labels, None, b)
                if k is None:
                    continue
            values[k] = value
        hists: dict[int, tuple[bytes, float | None, float | None]] = {}
        for h in rec.histograms:
            c2 = E.clean_hist(h)
            if isinstance(c2, str):
                self._drop("histogram", f"scrape at t={t:.3f}: {c2}", b)
                continue
            name, labels, bounds, counts, hsum, hcount = c2
            hkey = (eid, name, labels, bounds)
            k = self._series.get(hkey)
            if k is None:
                k = self._new_series(hkey, eid, name, labels, bounds, b)
                if k is None:
                    continue
            hists[k] = (counts, hsum, hcount)
        latency = E.as_finite(rec.latency_s)
        error = E.as_text(rec.error)
        dropped = E.as_count(rec.dropped_series)
        row = (
            sid,
            t,
            eid,
            None if latency is E.BAD else latency,
            1 if rec.ok is True or E.as_flag(rec.ok) == 1 else 0,
            redact_text(error) if isinstance(error, str) and error else None,
            missing,
            1 if rec.counter_reset is True or E.as_flag(rec.counter_reset) == 1 else 0,
            1 if rec.stale is True or E.as_flag(rec.stale) == 1 else 0,
            0 if dropped is E.BAD or dropped is None else dropped,
        )
        samples = sorted(values.items())
        hrows = sorted((k, *v) for k, v in hists.items())
        b.scrapes.append((*row, scrape_crc(row, samples, hrows)))
        b.samples += [(sid, k, v) for k, v in samples]
        b.hists += [(sid, *h) for h in hrows]
        self._seen_t(t, b)

    def _new_series(
        self,
        key: tuple[Any, ...],
        eid: int | None,
        name: str,
        labels: tuple[tuple[str, str], ...],
        bounds: tuple[float, ...] | None,
        b: _Batch,
    ) -> int | None:
        if len(self._series) >= self.max_series:
            self._drop("series", f"more than {self.max_series:,} series: {name} {dict(labels)} not kept", b)
            return None
        k = self._series[key] = len(self._series) + 1
        row = (k, eid, name, labels_json(labels), None if bounds is None else bounds_blob(bounds))
        b.series.append((*row, row_crc(row)))
        return k

    def _engine_of(self, key: Any, b: _Batch) -> int | None:
        """engines.id of an engine key ("" -> None: the unnamed single engine); new keys get a row."""
        if key.__class__ is str:
            got = self._engine_raw.get(key, -1)
            if got != -1:
                return got
        text = E.as_text(key)
        if text is E.BAD or not text:
            return None
        stored = redact_url(text)
        eid = self._engines.get(stored)
        if eid is None:
            eid = self._engines[stored] = len(self._engines) + 1
            b.new_engines += 1
            row = (eid, *E.engine_row(text))
            b.engines[eid] = (*row, row_crc(row))
        if len(self._engine_raw) < 10_000:
            self._engine_raw[text] = eid
        return eid

    def _take_engines(self, info: SessionInfo, b: _Batch) -> None:
        for e in info.engines or ():
            eid = self._engine_of(e.id, b)
            if eid is None:
                continue
            row = (eid, *E.engine_row(e))
            b.engines[eid] = (*row, row_crc(row))

    # -- bad values -------------------------------------------------------------------------------------

    def _noted(self, notes: list[str], kind: str, b: _Batch) -> None:
        for n in notes:
            self.coerced += 1
            self._warn(kind, n, b)

    def _drop(self, kind: str, text: str, b: _Batch) -> None:
        self.dropped += 1
        self._warn(kind, f"not recorded: {text}", b)

    def _warn(self, kind: str, text: str, b: _Batch) -> None:
        n = self._warned.get(kind, 0) + 1
        self._warned[kind] = n
        if n <= _WARN_LINES:
            more = " (further ones are counted at the end)" if n == _WARN_LINES else ""
            line = E.as_text(" ".join(f"recorder: {text}{more}".split())[:300])
            self._add_event([self._last_t, "log", None, "rllmtop", "warning", redact_text(line)], b)

    # -- failure and the end ----------------------------------------------------------------------------

    def _fail(self, e: Exception) -> None:
        msg = " ".join(str(e).split())[:200]
        kept = f"kept {self.kept_requests:,} requests and {self.kept_scrapes:,} scrapes up to t={self.kept_t:.1f} s"
        if not isinstance(e, sqlite3.Error):
            what = f"{self.path}: recording stopped: internal error ({type(e).__name__}: {msg}); {kept}"
            hint = "the file keeps what was committed; please report this with the session's log"
        elif "full" in msg.lower():
            what = f"{self.path}: the disk is full ({msg}); recording stopped after t={self.kept_t:.1f} s; {kept}"
            hint = "free some space or record elsewhere (--record FILE); what was committed is kept"
        elif "readonly" in msg.lower() or "read-only" in msg.lower():
            what = f"{self.path}: the recording became read-only ({msg}); recording stopped; {kept}"
            hint = "check the file's permissions and the file system; what was committed is kept"
        else:
            what = f"{self.path}: recording stopped after t={self.kept_t:.1f} s: {msg}; {kept}"
            hint = "the file keeps what was committed; check the disk and the file's permissions"
        self.error = UserError(what, hint)
        self._live.clear()
        self._dirty.clear()
        if self.on_error is not None:
            with contextlib.suppress(Exception):
                self.on_error(self.error)

    def _finish(self, c: _Close) -> None:
        db = self._db
        try:
            if self.error is None:
                extra = [f"{k}: {n - _WARN_LINES:,} more" for k, n in self._warned.items() if n > _WARN_LINES]
                if self.coerced or self.dropped:
                    line = (
                        f"recorder: {self.coerced:,} values stored as null, {self.dropped:,} records or "
                        f"samples not recorded (bad values from the wire)"
                        + (f"; not logged one by one: {', '.join(extra)}" if extra else "")
                    )
                    self._write([_Internal([self._last_t, "log", None, "rllmtop", "warning", line])])
            detail = c.detail
            if self.error is not None:
                detail = (detail + "; " if detail else "") + self.error.what
            end_t = self._last_t if self.error is None else self.kept_t
            rows = [
                ("status", c.state.value),
                ("status_detail", redact_text(str(detail))),
                ("ended_at", repr(time.time())),
                ("end_t", repr(float(end_t))),
            ]
            # the rows of the last commit (a failed batch was rolled back), and the metadata keys now
            counts = {**self._counts, "metadata": len(self._meta_keys | {k for k, _ in rows})}
            rows.append(("counts", json.dumps(counts, sort_keys=True)))
            db.execute("BEGIN")
            db.executemany(
                "INSERT OR REPLACE INTO metadata VALUES (?, ?, ?)", [(k, *_meta_value(k, v)) for k, v in rows]
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


@dataclass(frozen=True, slots=True)
class _Internal:
    """A log line the recorder writes about itself."""

    row: list[Any]


def _full(row: list[Any], updated_t: float, gaps: bytes = b"") -> tuple[Any, ...]:
    full = (*row, updated_t)
    return (*full, row_crc(full, gaps))


def _meta_value(key: str, value: str) -> tuple[str, int]:
    return value, row_crc((key, value))
