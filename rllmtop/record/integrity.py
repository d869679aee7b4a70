"""Whether a recording's content can be trusted: every row read once and checked.

Checks, in one pass over the file: SQLite's own ``integrity_check`` (pages, b-trees, indexes); each row's
checksum (schema 2: requests with their gap blobs, scrapes with their samples and histograms, events,
client health, workers, series, engines, metadata); every cell against its column's kind (the checks the
readers apply, see :mod:`rllmtop.record.decode`); the tables and columns the schema has; and the rows per
table against the counts the last commit wrote (a row gone missing). Schema-1 files have no checksums:
their values and structure are checked, and the report says checksums are unavailable.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rllmtop.record import decode as D
from rllmtop.record.codec import decode_bounds, decode_counts, labels_from, row_crc, scrape_crc
from rllmtop.record.schema import TABLES

__all__ = ["IntegrityReport", "verify"]

_COUNTED: tuple[str, ...] = ("requests", "scrapes", "samples", "histograms", "events", "client_health")
_COUNTED += ("workers", "series", "name_sets", "engines", "metadata")
_NUMERIC_META = ("started_at", "created_at", "ended_at", "end_t", "speed")


@dataclass(frozen=True, slots=True)
class IntegrityReport:
    """The result of :meth:`Recording.verify`. ``ok``: every check passed (the content is as written)."""

    ok: bool
    checksums: bool  # the file carries checksums (schema 2); False: values and structure checked only
    rows: dict[str, int] = field(default_factory=dict)  # rows read per table
    bad: dict[str, int] = field(default_factory=dict)  # rows per table that failed a check
    missing: tuple[str, ...] = ()  # tables ("events") or columns ("requests.t_start") the file lacks
    structure: str = ""  # what SQLite's integrity_check said, when not "ok"
    problems: tuple[str, ...] = ()  # the first few problems, one line each

    @property
    def summary(self) -> str:
        """One line: what was checked and what is wrong."""
        no_crc = "checksums are unavailable (schema-1 file): values and structure checked only"
        if self.ok:
            n = sum(self.rows.values())
            return f"{n:,} rows check out" + ("" if self.checksums else f"; {no_crc}")
        parts = []
        if self.structure:
            parts.append(f"SQLite reports damage ({self.structure})")
        if self.missing:
            parts.append(
                "missing: " + ", ".join(self.missing[:6]) + (", ..." if len(self.missing) > 6 else "")
            )
        if self.bad:
            parts.append(
                ", ".join(f"{n:,} of {max(self.rows.get(t, 0), n):,} {t} rows" for t, n in self.bad.items())
                + " fail their checks"
            )
        if self.problems and not self.structure:
            parts.append(f"first: {self.problems[0]}")
        return "; ".join(parts) + ("" if self.checksums else f" ({no_crc})")


def verify(
    db: sqlite3.Connection,
    tables: dict[str, tuple[str, ...]],
    version: int,
    meta: dict[str, str],
    layout_note: str = "",
) -> IntegrityReport:
    """Check every row of the open recording ``db`` (see the module doc). Never raises sqlite3 errors:
    a table that cannot be read is reported as such. ``layout_note``: the schema version the metadata
    states does not match the tables (an edited file)."""
    p = D.Problems()
    if layout_note:
        p.add("metadata", "schema_version", layout_note)
    rows: Counter[str] = Counter()
    checks = version >= 2
    structure = ""
    try:
        res = [str(r[0]) for r in db.execute("PRAGMA integrity_check(20)")]
        if res != ["ok"]:
            structure = "; ".join(res[:2])[:200]
    except sqlite3.Error as e:
        structure = " ".join(str(e).split())[:200]
    missing: list[str] = []
    for name, t in TABLES.items():
        want = t.names if checks else t.v1
        if not want:
            continue
        if name not in tables:
            missing.append(name)
            continue
        have = set(tables[name])
        missing += [f"{name}.{c}" for c in want if c not in have]
    v = _Verifier(db, tables, checks, p, rows, set(missing))
    for step in (v.metadata, v.engines, v.series, v.name_sets, v.scrapes, v.requests, v.events, v.others):
        try:
            step()
        except sqlite3.Error as e:
            p.table(step.__name__, f"cannot be read ({' '.join(str(e).split())[:120]})")
        except (ValueError, TypeError, OverflowError, RecursionError) as e:  # never a traceback
            p.table(step.__name__, f"cannot be read ({type(e).__name__})")
    if checks:
        v.counts(meta)
    missing += sorted(t for t in p.tables if t not in missing)
    bad = {t: n for t, n in p.rows.items() if n}
    return IntegrityReport(
        ok=not (structure or missing or bad),
        checksums=checks,
        rows=dict(rows),
        bad=bad,
        missing=tuple(missing),
        structure=structure,
        problems=tuple(p.lines),
    )


class _Verifier:
    def __init__(
        self,
        db: sqlite3.Connection,
        tables: dict[str, tuple[str, ...]],
        checks: bool,
        p: D.Problems,
        rows: Counter[str],
        missing: set[str],
    ) -> None:
        self.db = db
        self.tables = tables
        self.checks = checks
        self.p = p
        self.rows = rows
        self.missing = missing
        self.engine_keys: dict[int, str] = {}
        self.series_kind: dict[int, bool] = {}  # id -> is a histogram
        self.bounds: dict[int, int] = {}  # histogram series id -> number of bounds

    def _usable(self, table: str, crc: bool = True) -> tuple[str, ...] | None:
        """The columns to select from ``table`` (crc last when checked), or None to skip it."""
        if table not in self.tables or table in self.missing:
            return None
        t = TABLES[table]
        names = t.names if self.checks else t.v1
        if any(f"{table}.{c}" in self.missing for c in names):
            return None
        if not crc and names and names[-1] == "crc":
            names = names[:-1]
        return names

    def _select(self, table: str, order: str, crc: bool = True) -> Iterator[tuple[Any, ...]]:
        names = self._usable(table, crc)
        if names is None:
            return iter(())
        return self.db.execute(f"SELECT {', '.join(names)} FROM {table} ORDER BY {order}")

    def _crc_ok(self, table: str, key: Any, row: tuple[Any, ...], *blobs: bytes | None) -> bool:
        if not self.checks:
            return True
        if row[-1].__class__ is int and row_crc(row[:-1], *blobs) == row[-1]:
            return True
        self.p.add(table, key, f"row {key!r}: checksum mismatch (the content changed after it was written)")
        return False

    def metadata(self) -> None:
        names = ("key", "value", "crc") if self.checks else ("key", "value")
        for row in self.db.execute(f"SELECT {', '.join(names)} FROM metadata"):
            self.rows["metadata"] += 1
            key, value = row[0], row[1]
            self._crc_ok("metadata", key, row)
            if not isinstance(key, str) or not isinstance(value, str):
                self.p.add("metadata", key, f"{key!r}: not text")
                continue
            if key in _NUMERIC_META and value:
                try:
                    ok = math.isfinite(float(value))
                except ValueError:
                    ok = False
                if not ok:
                    self.p.add("metadata", key, f"{key}: not a number ({value[:40]!r})")
            elif key in ("seed", "schema_version") and value:
                try:
                    int(value)
                except ValueError:
                    self.p.add("metadata", key, f"{key}: not an integer ({value[:40]!r})")
            elif key in ("launch_command", "extra") and D.json_list(value) is None:
                self.p.add("metadata", key, f"{key}: not a JSON list")
            elif key == "provenance" and value:
                from rllmtop.events import Provenance

                try:
                    Provenance.from_json(value)
                except (ValueError, TypeError, RecursionError):
                    self.p.add("metadata", key, "provenance: not readable")
            elif key == "status" and D.state_of(value) is None:
                self.p.add("metadata", key, f"status: not a session state ({value[:40]!r})")

    def engines(self) -> None:
        for row in self._select("engines", "id"):
            self.rows["engines"] += 1
            self._crc_ok("engines", row[0], row)
            e = D.engine_from_row(row[:9], self.p)
            if e is not None and isinstance(row[0], int):
                self.engine_keys[row[0]] = e.id

    def series(self) -> None:
        for row in self._select("series", "id"):
            self.rows["series"] += 1
            if self.checks:
                sid, eng, metric, labels, bounds = row[:5]
            else:
                sid, metric, labels, bounds = row
                eng = None
            self._crc_ok("series", sid, row)
            if not isinstance(sid, int) or not isinstance(metric, str) or not metric:
                self.p.add("series", sid, f"series {sid!r}: unreadable metric name")
                continue
            if labels_from(labels) is None:
                self.p.add("series", sid, f"series {sid}: labels are not JSON pairs")
            if eng is not None and eng not in self.engine_keys:
                self.p.add("series", sid, f"series {sid}: unknown engine {eng!r}")
            if bounds is None:
                self.series_kind[sid] = False
                continue
            b = decode_bounds(bounds)
            if b is None:
                self.p.add("series", sid, f"series {sid}: unreadable histogram bounds")
                continue
            self.series_kind[sid] = True
            self.bounds[sid] = len(b)

    def name_sets(self) -> None:
        for row in self._select("name_sets", "id"):
            self.rows["name_sets"] += 1
            self._crc_ok("name_sets", row[0], row)
            if not isinstance(row[1], str):
                self.p.add("name_sets", row[0], f"name set {row[0]!r}: not text")

    def scrapes(self) -> None:
        samples = self._select("samples", "scrape, series")
        hists = self._select("histograms", "scrape, series")
        s_row = next(samples, None)
        h_row = next(hists, None)
        for row in self._select("scrapes", "id"):
            self.rows["scrapes"] += 1
            sid = row[0]
            mine: list[tuple[int, Any]] = []
            while s_row is not None and _lt(s_row[0], sid):
                self._orphan("samples", s_row)
                s_row = next(samples, None)
            while s_row is not None and s_row[0] == sid:
                self.rows["samples"] += 1
                self._sample(s_row)
                mine.append((s_row[1], s_row[2]))
                s_row = next(samples, None)
            hmine: list[tuple[int, bytes, Any, Any]] = []
            while h_row is not None and _lt(h_row[0], sid):
                self._orphan("histograms", h_row)
                h_row = next(hists, None)
            while h_row is not None and h_row[0] == sid:
                self.rows["histograms"] += 1
                self._hist(h_row)
                hmine.append(h_row[1:])
                h_row = next(hists, None)
            self._scrape(row, mine, hmine)
        while s_row is not None:
            self._orphan("samples", s_row)
            s_row = next(samples, None)
        while h_row is not None:
            self._orphan("histograms", h_row)
            h_row = next(hists, None)

    def _orphan(self, table: str, row: tuple[Any, ...]) -> None:
        self.rows[table] += 1
        self.p.add(table, (row[0], row[1]), f"row ({row[0]!r}, {row[1]!r}) belongs to no scrape")

    def _sample(self, row: tuple[Any, ...]) -> None:
        scid, sid, value = row
        if self.series_kind.get(sid) is not False:
            self.p.add("samples", (scid, sid), f"scrape {scid}: a sample of unknown series {sid!r}")
        elif value is not None and value.__class__ is not float and value.__class__ is not int:
            self.p.add("samples", (scid, sid), f"scrape {scid}: unreadable value")

    def _hist(self, row: tuple[Any, ...]) -> None:
        scid, sid, counts, s, c = row
        key = (scid, sid)
        if self.series_kind.get(sid) is not True:
            self.p.add("histograms", key, f"scrape {scid}: a histogram of unknown series {sid!r}")
            return
        got = decode_counts(counts)
        if got is None or len(got) != self.bounds.get(sid):
            self.p.add("histograms", key, f"scrape {scid}: unreadable bucket counts")
        for x in (s, c):
            if x is not None and x.__class__ is not float and x.__class__ is not int:
                self.p.add("histograms", key, f"scrape {scid}: unreadable sum or count")

    def _scrape(self, row: tuple[Any, ...], samples: list[Any], hists: list[Any]) -> None:
        sid = row[0]
        if self.checks:
            body = row[:-1]
            if not (row[-1].__class__ is int and scrape_crc(body, samples, hists) == row[-1]):
                self.p.add("scrapes", sid, f"scrape {sid!r}: checksum mismatch (its rows or samples changed)")
            _, t, eng, latency, ok, err, missing, reset, stale, dropped = body
        else:
            _, t, latency, ok, err, missing, reset = row
            eng, stale, dropped = None, 0, 0
        bad = []
        if t.__class__ is not float or not math.isfinite(t):
            bad.append("t")
        if latency is not None and latency.__class__ is not float and latency.__class__ is not int:
            bad.append("latency")
        bad += [
            n for n, x in (("ok", ok), ("counter_reset", reset), ("stale", stale)) if x not in (None, 0, 1)
        ]
        if err is not None and err.__class__ is not str:
            bad.append("error")
        if eng is not None and eng not in self.engine_keys:
            bad.append("engine")
        if dropped is not None and (dropped.__class__ is not int or dropped < 0):
            bad.append("dropped")
        if missing is not None and missing.__class__ is not int:
            bad.append("missing")
        if bad:
            self.p.add("scrapes", sid, f"scrape {sid!r}: unreadable {', '.join(bad)}")

    def requests(self) -> None:
        names = self._usable("requests")
        if names is None:
            return
        key = "rid" if self.checks else "id"
        fields = D.REQUEST_FIELDS if self.checks else None
        gaps_ok = "request_gaps" in self.tables and "request_gaps" not in self.missing
        gcol = "g.gaps" if gaps_ok else "NULL"
        join = f" LEFT JOIN request_gaps g ON g.{key} = r.{key}" if gaps_ok else ""
        sel = ", ".join(f"r.{n}" for n in names)
        extra = "" if self.checks else ", r.id"
        sql = f"SELECT {sel}{extra}, {gcol} FROM requests r{join} ORDER BY r.{key}"
        for row in self.db.execute(sql):
            self.rows["requests"] += 1
            gaps = row[-1]
            body = row[:-1]
            if self.checks:
                rid = body[0]
                self._crc_ok("requests", rid, body, gaps if isinstance(gaps, bytes) else None)
                if gaps is not None and not isinstance(gaps, bytes):
                    self.p.add("requests", rid, f"request {rid}: its gap blob is not bytes")
                values = body[: len(fields)]  # type: ignore[arg-type]
                D.request_from_row(values, gaps, self.engine_keys, self.p, rid)
                upd = body[len(fields)]  # type: ignore[arg-type]
                if upd is not None and upd.__class__ is not float:
                    self.p.add("requests", rid, f"request {rid}: unreadable updated_t")
            else:
                rid = body[-1]
                v1 = dict(zip(TABLES["requests"].v1, body[:-1], strict=True))
                values = tuple(v1.get(n) for n in D.REQUEST_FIELDS)
                D.request_from_row(values, gaps, {}, self.p, rid)
        if gaps_ok:
            orphans = self.db.execute(
                f"SELECT count(*) FROM request_gaps WHERE {key} NOT IN (SELECT {key} FROM requests)"
            ).fetchone()[0]
            if orphans:
                self.rows["request_gaps"] += orphans
                for i in range(min(orphans, 1000)):
                    self.p.add("request_gaps", i, f"{orphans} gap rows belong to no request")

    def events(self) -> None:
        for row in self._select("events", "id"):
            self.rows["events"] += 1
            self._crc_ok("events", row[0], row)
            D.event_from_row(row[:7], self.p)

    def others(self) -> None:
        if not self.checks:
            return
        for row in self._select("client_health", "id"):
            self.rows["client_health"] += 1
            self._crc_ok("client_health", row[0], row)
            D.health_from_row(row[:-1], self.p)
        for row in self._select("workers", "id"):
            self.rows["workers"] += 1
            self._crc_ok("workers", row[0], row)
            D.worker_from_row(row[:-1], self.p)

    def counts(self, meta: dict[str, str]) -> None:
        text = meta.get("counts", "")
        try:
            want = json.loads(text) if text else None
        except (ValueError, RecursionError):
            want = None
        if not isinstance(want, dict):
            self.p.add("metadata", "counts", "counts: the rows per table of the last commit are unreadable")
            return
        for t in _COUNTED:
            if t in self.missing or t in self.p.tables:
                continue
            n = want.get(t)
            have = self.rows.get(t, 0)
            if not isinstance(n, int) or isinstance(n, bool):
                self.p.add("metadata", "counts", f"counts: no count for {t}")
            elif have != n:
                for i in range(min(abs(n - have), 1000)):
                    self.p.add(t, ("count", i), f"{have:,} rows where the last commit left {n:,}")


def _lt(a: Any, b: Any) -> bool:
    try:
        return bool(a < b)
    except TypeError:
        return True
