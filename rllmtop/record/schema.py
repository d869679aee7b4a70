"""The recording's layout: schema versions, the DDL, and the columns each table holds in each version.

One SQLite file per session. Everything stored is raw (what the session saw); everything derived is
computed when read. Session seconds throughout (simulated seconds in a time-lapse run; ``metadata.clock``).

Schema 2 (written by this version):

- ``metadata(key, value, crc)``: app marker, schema version, rllmtop version, the session's facts
  (scenario text, ``provenance`` as JSON, seed, engine kind/version/model/URLs/launch command, ``clock``,
  ``speed``, ``load_url``), start/end times, final status and detail, and ``counts``: the rows per table
  after the last commit (JSON), so a row missing from a table is noticed.
- ``engines(id, key, url, metrics_url, kind, version, source, launched, gpu_metrics_url, crc)``: the fleet,
  one row per engine (``key`` = ``EngineInfo.id``), updated when the session re-publishes its facts.
- ``series(id, engine, metric, labels, bounds, crc)``: one row per (engine, neutral metric, labels[,
  histogram bounds]); ``labels`` is JSON ``[[key, value], ...]``, ``bounds`` a little-endian float64 array.
- ``scrapes(id, t, engine, latency, ok, error, missing, counter_reset, stale, dropped, crc)``, indexed on
  ``t``; ``engine`` is ``engines.id`` (NULL: the session's only, unnamed engine); ``missing`` points into
  ``name_sets(id, names, crc)`` (comma-separated neutral names); ``dropped`` counts series over the
  scraper's cardinality cap.
- ``samples(scrape, series, value)`` and ``histograms(scrape, series, counts, sum, count)``, clustered on
  (scrape, series); a sample's time is its scrape's ``t``. ``counts`` are cumulative bucket counts as
  served: a tag byte (1 = uint32, 2 = float64) then the array. Covered by their scrape's ``crc``.
- ``requests(rid, <every RequestRecord field but gaps>, updated_t, crc)``: one row per request sent, keyed
  by its global index. A row is written when the request is sent (status ``in_flight``) and kept current
  (tokens so far, first-token times, ``updated_t``) at every commit; the final facts replace it when it
  ends. ``engine`` is ``engines.id``. ``request_gaps(rid, gaps)``: the inter-token gap blob
  (``events.encode_gaps``), covered by the request's ``crc``.
- ``events(id, t, kind, state, source, level, text, crc)``: state changes (kind "state") and log lines
  (kind "log"), indexed on ``t``.
- ``client_health(id, t, worker, interval, lag_max, lag_mean, cpu_s, crc)``: the load generator's own
  lateness per interval; ``workers(id, t, worker, state, node, pid, clock_offset, detail, crc)``: sender
  processes starting, ending, dying.
- View ``sample_values(t, engine, metric, labels, value)``: the scalar samples as one flat table.

``crc`` is a CRC-32 of a canonical encoding of the row (:mod:`rllmtop.record.codec`).

Schema 1 (rllmtop 0.1; read-only): no checksums, no engines/client_health/workers tables, a single
engine, ``requests`` keyed by a row id with the finished requests only (``request_gaps`` keyed by that id).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "APP",
    "OLDEST_READABLE",
    "SCHEMA_VERSION",
    "TABLES",
    "Table",
    "create_statements",
    "too_old_reason",
]

SCHEMA_VERSION = 2
OLDEST_READABLE = 1  # schema versions below this are refused with the reason in _TOO_OLD
APP = "rllmtop"
_TOO_OLD: dict[int, str] = {}


def too_old_reason(version: int) -> str:
    return _TOO_OLD.get(version, "its layout changed")


# Column kinds (what the reader checks every cell against):
#   real: float or NULL (NaN is stored as NULL)   int: integer or NULL   count: integer >= 0 or NULL
#   bool: 0/1 or NULL   text: text or NULL   blob: bytes or NULL   key: integer, never NULL
@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[tuple[str, str], ...]  # (name, kind) in storage order, crc last when checksummed
    v1: tuple[str, ...] = ()  # the columns a schema-1 file has (empty: the table is new in schema 2)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.columns)

    @property
    def checksummed(self) -> bool:
        return bool(self.columns) and self.columns[-1][0] == "crc"


_REQUESTS = Table(
    "requests",
    (
        ("rid", "key"),
        ("cls", "text"),
        ("difficulty", "text"),
        ("prompt_id", "text"),
        ("t_scheduled", "real"),
        ("t_dispatch", "real"),
        ("t_start", "real"),
        ("connect_s", "real"),
        ("t_sent", "real"),
        ("t_first_token", "real"),
        ("t_first_reasoning", "real"),
        ("t_reasoning_end", "real"),
        ("t_first_visible", "real"),
        ("t_done", "real"),
        ("prompt_tokens", "count"),
        ("reasoning_tokens", "count"),
        ("answer_tokens", "count"),
        ("completion_tokens", "count"),
        ("tokens_exact", "bool"),
        ("reasoning_mode", "text"),
        ("usage_reasoning", "count"),
        ("split_note", "text"),
        ("max_tokens", "count"),
        ("finish_reason", "text"),
        ("status", "text"),
        ("http_status", "int"),
        ("error", "text"),
        ("answer_text", "text"),
        ("reference", "text"),
        ("extracted", "text"),
        ("correct", "bool"),
        ("engine", "int"),
        ("worker", "int"),
        ("node", "text"),
        ("conversation", "int"),
        ("turn", "count"),
        ("target_input_tokens", "count"),
        ("updated_t", "real"),
        ("crc", "int"),
    ),
    v1=(
        "rid", "cls", "difficulty", "prompt_id", "t_scheduled", "t_dispatch", "t_sent", "t_first_token",
        "t_first_reasoning", "t_reasoning_end", "t_first_visible", "t_done", "prompt_tokens",
        "reasoning_tokens", "answer_tokens", "completion_tokens", "tokens_exact", "max_tokens",
        "finish_reason", "status", "http_status", "error", "answer_text", "reference", "extracted", "correct",
    ),
)  # fmt: skip

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table("metadata", (("key", "text"), ("value", "text"), ("crc", "int")), v1=("key", "value")),
        Table(
            "engines",
            (
                ("id", "key"),
                ("key", "text"),
                ("url", "text"),
                ("metrics_url", "text"),
                ("kind", "text"),
                ("version", "text"),
                ("source", "text"),
                ("launched", "bool"),
                ("gpu_metrics_url", "text"),
                ("crc", "int"),
            ),
        ),
        Table(
            "series",
            (
                ("id", "key"),
                ("engine", "int"),
                ("metric", "text"),
                ("labels", "text"),
                ("bounds", "blob"),
                ("crc", "int"),
            ),
            v1=("id", "metric", "labels", "bounds"),
        ),
        Table("name_sets", (("id", "key"), ("names", "text"), ("crc", "int")), v1=("id", "names")),
        Table(
            "scrapes",
            (
                ("id", "key"),
                ("t", "real"),
                ("engine", "int"),
                ("latency", "real"),
                ("ok", "bool"),
                ("error", "text"),
                ("missing", "int"),
                ("counter_reset", "bool"),
                ("stale", "bool"),
                ("dropped", "count"),
                ("crc", "int"),
            ),
            v1=("id", "t", "latency", "ok", "error", "missing", "counter_reset"),
        ),
        Table(
            "samples",
            (("scrape", "key"), ("series", "key"), ("value", "real")),
            v1=("scrape", "series", "value"),
        ),
        Table(
            "histograms",
            (("scrape", "key"), ("series", "key"), ("counts", "blob"), ("sum", "real"), ("count", "real")),
            v1=("scrape", "series", "counts", "sum", "count"),
        ),
        _REQUESTS,
        Table("request_gaps", (("rid", "key"), ("gaps", "blob")), v1=("id", "gaps")),
        Table(
            "events",
            (
                ("id", "key"),
                ("t", "real"),
                ("kind", "text"),
                ("state", "text"),
                ("source", "text"),
                ("level", "text"),
                ("text", "text"),
                ("crc", "int"),
            ),
            v1=("id", "t", "kind", "state", "source", "level", "text"),
        ),
        Table(
            "client_health",
            (
                ("id", "key"),
                ("t", "real"),
                ("worker", "int"),
                ("interval", "real"),
                ("lag_max", "real"),
                ("lag_mean", "real"),
                ("cpu_s", "real"),
                ("crc", "int"),
            ),
        ),
        Table(
            "workers",
            (
                ("id", "key"),
                ("t", "real"),
                ("worker", "int"),
                ("state", "text"),
                ("node", "text"),
                ("pid", "int"),
                ("clock_offset", "real"),
                ("detail", "text"),
                ("crc", "int"),
            ),
        ),
    )
}

_SQL_TYPE = {"real": "REAL", "int": "INTEGER", "count": "INTEGER", "bool": "INTEGER", "text": "TEXT"}
_SQL_TYPE.update({"blob": "BLOB", "key": "INTEGER"})
_PRIMARY = {
    "metadata": "PRIMARY KEY (key)",
    "samples": "PRIMARY KEY (scrape, series)",
    "histograms": "PRIMARY KEY (scrape, series)",
}
_WITHOUT_ROWID = {"metadata", "samples", "histograms"}
_NOT_NULL = {("engines", "key"), ("series", "metric"), ("series", "labels"), ("scrapes", "t")}
_NOT_NULL |= {("scrapes", "ok"), ("events", "t"), ("events", "kind"), ("request_gaps", "gaps")}
_NOT_NULL |= {("client_health", "t"), ("workers", "t"), ("name_sets", "names"), ("histograms", "counts")}


def create_statements() -> list[str]:
    """The schema-2 DDL, one statement per item."""
    out = []
    for t in TABLES.values():
        cols = []
        for i, (name, kind) in enumerate(t.columns):
            col = f"{name} {_SQL_TYPE[kind]}"
            if i == 0 and kind == "key" and t.name not in _PRIMARY:
                col += " PRIMARY KEY"
            if (t.name, name) in _NOT_NULL:
                col += " NOT NULL"
            if t.name == "engines" and name == "key":
                col += " UNIQUE"
            cols.append(col)
        if t.name in _PRIMARY:
            cols.append(_PRIMARY[t.name])
        tail = " WITHOUT ROWID" if t.name in _WITHOUT_ROWID else ""
        out.append(f"CREATE TABLE {t.name} ({', '.join(cols)}){tail}")
    out += [
        "CREATE INDEX scrapes_t ON scrapes (t)",
        "CREATE INDEX events_t ON events (t)",
        "CREATE INDEX client_health_t ON client_health (t)",
        "CREATE INDEX workers_t ON workers (t)",
        "CREATE VIEW sample_values AS SELECT sc.t AS t, en.key AS engine, se.metric AS metric, "
        "se.labels AS labels, sa.value AS value FROM samples sa JOIN scrapes sc ON sc.id = sa.scrape "
        "JOIN series se ON se.id = sa.series LEFT JOIN engines en ON en.id = se.engine",
    ]
    return out
