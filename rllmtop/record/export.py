"""Export a recording to the tools people already use: CSV, JSON lines or Parquet (optional pyarrow).

The recording is verified first (:meth:`Recording.verify`): a file whose content cannot be trusted (a
checksum that does not match, a value that is not what its column holds, a table or rows gone missing,
SQLite-level damage) is refused with one line saying what is wrong, unless ``force=True`` (the CLI's
``--force``), which exports what can be read. Schema-1 files have no checksums: their values are checked,
and ``session.json`` says checksums were unavailable.

Files written to ``out_dir`` (``<name>.csv`` / ``.jsonl`` / ``.parquet``), session seconds throughout
(simulated seconds when ``session.json`` says ``clock: simulated``):

- ``requests``: one row per request sent (``status`` ``in_flight``: still on the wire when the recording
  ended), every recorded field (``rid``; class, difficulty, prompt id; the schedule, dispatch, start,
  connect time, write and token times; token counts, reasoning mode, usage, split note; finish reason,
  status, HTTP status, error; answer, reference, grading; ``engine``/``worker``/``node``;
  ``conversation``/``turn``; ``target_input_tokens``), ``updated_t`` (when the row was last written), the
  derived latencies (``ttft``, ``ttfvt``, ``e2e``, ``send_lag``, ``concurrency_wait``, ``output_tokens``),
  and the inter-token gaps (``gaps_us``; ``tokens_per_chunk`` when a chunk carried several tokens): lists
  in JSON lines/Parquet, space-separated integers in CSV.
- ``samples``: the raw scalar samples (t, engine, metric, labels as ``k=v,k=v``, value): counters stay
  cumulative. ``engine`` is the engine's id (its URL or Prometheus instance; empty: the only engine).
- ``histograms``: the raw cumulative buckets per scrape (t, engine, metric, labels, bounds, counts, sum,
  count; bounds and counts as lists / space-separated).
- ``scrapes``: every poll (t, engine, latency, ok, error, counter_reset, stale, dropped_series, missing).
- ``timeline``: per-second series from :func:`rllmtop.metrics.analysis.timeline` (KV usage, running,
  waiting, arrivals, completions, reasoning vs answer tokens/s, ...); missing metrics are empty/null.
- ``events``: state changes and log lines.
- ``engines``: the fleet (id, url, metrics_url, kind, version, source, launched, gpu_metrics_url).
- ``client_health``: the load generator's lateness per interval (t, worker, interval, lag_max,
  lag_mean, cpu_s): latencies measured in an interval include up to ``lag_max`` of client delay.
- ``workers``: sender processes starting, ending, dying (t, worker, state, node, pid, clock_offset,
  detail).
- ``session.json``: the session's facts (provenance, fleet, clock and speed included), its final status,
  and the integrity check (always JSON).

Missing values are empty cells in CSV and null in JSON lines/Parquet; NaN never appears as text.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from rllmtop.errors import UserError
from rllmtop.events import Labels, RequestRecord, Scrape, decode_gaps
from rllmtop.record.integrity import IntegrityReport
from rllmtop.record.reader import Recording, open_recording

__all__ = ["FORMATS", "TABLES", "export_recording"]

FORMATS = ("csv", "jsonl", "parquet")
TABLES = (
    "requests",
    "samples",
    "histograms",
    "scrapes",
    "timeline",
    "events",
    "engines",
    "client_health",
    "workers",
)
MAX_TIMELINE_BINS = 5_000_000  # a timeline longer than this is left out (a damaged file's absurd times)

_REQUEST_DERIVED = ("ttft", "ttfvt", "e2e", "send_lag", "concurrency_wait", "output_tokens")
_REQ_FIELDS = [f for f in RequestRecord.__dataclass_fields__ if f != "gaps"]

Rows = Iterable[list[Any]]


def export_recording(
    path: str | Path, fmt: str, out_dir: str | Path, *, step: float = 1.0, force: bool = False
) -> list[Path]:
    """Write requests, samples, histograms, scrapes, a per-``step`` timeline, events, engines, client
    health, workers and the session's facts of the recording at ``path`` into ``out_dir`` (created).
    Returns the files written. Refuses a recording that fails :meth:`Recording.verify` unless ``force``."""
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}", f"use one of: {', '.join(FORMATS)}")
    if fmt == "parquet":
        _pyarrow()  # fail before doing any work
    out = Path(out_dir)
    with open_recording(path) as rec:
        report = rec.verify()
        if not report.ok and not force:
            raise UserError(
                f"{rec.path} cannot be trusted: {report.summary}",
                "export what can be read anyway with --force (force=True), or record again",
            )
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the export directory {out}: {e}", "pass another --out DIR") from e
        written: list[Path] = []
        try:
            timeline_note = ""
            for name, (columns, rows) in _tables(rec, step).items():
                if rows is None:
                    timeline_note = columns[0]
                    continue
                target = out / f"{name}.{fmt}"
                _WRITERS[fmt](target, columns, rows)
                written.append(target)
            info = out / "session.json"
            info.write_bytes(
                orjson.dumps(
                    _session(rec, report, timeline_note), option=orjson.OPT_INDENT_2, default=_jsonable
                )
            )
            written.append(info)
        except OSError as e:
            raise UserError(
                f"cannot write the export to {out}: {e}", "check the free space and permissions"
            ) from e
    return written


# ---------------------------------------------------------------------------------------------- tables


def _tables(rec: Recording, step: float) -> dict[str, tuple[list[str], Rows | None]]:
    from rllmtop.metrics.analysis import timeline

    requests = rec.requests()
    out: dict[str, tuple[list[str], Rows | None]] = {
        "requests": _requests_table(requests, rec),
        "samples": (["t", "engine", "metric", "labels", "value"], _sample_rows(rec)),
        "histograms": (
            ["t", "engine", "metric", "labels", "bounds", "counts", "sum", "count"],
            _hist_rows(rec),
        ),
        "scrapes": (
            ["t", "engine", "latency", "ok", "error", "counter_reset", "stale", "dropped_series", "missing"],
            (
                [s.t, s.engine_id, _num(s.latency_s), s.ok, s.error, s.counter_reset, s.stale, *_tail(s)]
                for s in rec.scrapes()
            ),
        ),
    }
    t_end = rec.duration
    if not (math.isfinite(t_end) and t_end / step <= MAX_TIMELINE_BINS):
        out["timeline"] = (
            [f"left out: the recording's times span {t_end:.3g} s, too long for {step:g} s steps"],
            None,
        )
    else:
        tl = timeline(requests, rec.samples(), step=step, t_end=t_end)
        names = list(tl.columns)
        cols = [tl.t, *(tl.columns[n] for n in names)]
        out["timeline"] = (["t", *names], [[_num(c[i]) for c in cols] for i in range(len(tl.t))])
    events = [[s.t, "state", s.state.value, "", "", s.detail] for s in rec.states()]
    events += [[g.t, "log", "", g.source, g.level, g.text] for g in rec.logs()]
    events.sort(key=lambda r: r[0])
    out["events"] = (["t", "kind", "state", "source", "level", "text"], events)
    eng_cols = [f.name for f in dataclasses.fields(rec.info.engines[0])] if rec.info.engines else []
    out["engines"] = (
        eng_cols or ["id", "url", "metrics_url", "kind", "version", "source", "launched", "gpu_metrics_url"],
        [[getattr(e, c) for c in eng_cols] for e in rec.info.engines],
    )
    out["client_health"] = (
        ["t", "worker", "interval", "lag_max", "lag_mean", "cpu_s"],
        [
            [h.t, h.worker, _num(h.interval), _num(h.lag_max), _num(h.lag_mean), h.cpu_s]
            for h in rec.client_health()
        ],
    )
    out["workers"] = (
        ["t", "worker", "state", "node", "pid", "clock_offset", "detail"],
        [[w.t, w.worker, w.state, w.node, w.pid, w.clock_offset, w.detail] for w in rec.worker_events()],
    )
    return out


def _num(v: Any) -> Any:
    v = float(v)
    return None if math.isnan(v) else v


def _tail(s: Scrape) -> list[Any]:
    return [s.dropped_series, list(s.missing)]


def _labels_text(labels: Labels) -> str:
    return ",".join(f"{k}={v}" for k, v in labels)


def _sample_rows(rec: Recording) -> Iterator[list[Any]]:
    for s in rec.iter_scrapes():
        for m in s.samples:
            yield [s.t, s.engine_id, m.name, _labels_text(m.labels), _num(m.value)]


def _hist_rows(rec: Recording) -> Iterator[list[Any]]:
    for s in rec.iter_scrapes():
        for h in s.histograms:
            bounds, counts = list(h.bounds), list(h.counts)
            yield [
                s.t,
                s.engine_id,
                h.name,
                _labels_text(h.labels),
                bounds,
                counts,
                _num(h.sum),
                _num(h.count),
            ]


def _requests_table(requests: Sequence[RequestRecord], rec: Recording) -> tuple[list[str], Rows]:
    cols = [*_REQ_FIELDS, "updated_t", *_REQUEST_DERIVED, "gaps_us", "tokens_per_chunk"]
    updated = rec.request_columns(["updated_t"])["updated_t"].tolist()

    def rows() -> Iterator[list[Any]]:
        for r, upd in zip(requests, updated, strict=True):
            row: list[Any] = []
            for f in _REQ_FIELDS:
                v = getattr(r, f)
                row.append(v.value if hasattr(v, "value") else v)
            row.append(_num(upd))
            row += [getattr(r, d) for d in _REQUEST_DERIVED]
            gaps, per_chunk = decode_gaps(r.gaps)
            row += [list(gaps), list(per_chunk) if per_chunk is not None else None]
            yield row

    return cols, rows()


def _session(rec: Recording, report: IntegrityReport, timeline_note: str) -> dict[str, Any]:
    info = rec.info
    return {
        "file": str(rec.path),
        "status": rec.status.value,
        "status_detail": rec.status_detail,
        "duration_s": rec.duration,
        "schema_version": rec.schema_version,
        "session_id": info.session_id,
        "started_at": info.started_at,
        "clock": info.clock,
        "speed": info.speed,
        "scenario_name": info.scenario_name,
        "seed": info.seed,
        "engine_kind": info.engine_kind,
        "engine_version": info.engine_version,
        "engine_url": info.engine_url,
        "metrics_url": info.metrics_url,
        "load_url": info.load_url,
        "engines": [dataclasses.asdict(e) for e in info.engines],
        "model": info.model,
        "launch_command": list(info.launch_command),
        "rllmtop_version": info.rllmtop_version,
        "extra": dict(info.extra),
        "provenance": dataclasses.asdict(info.provenance) if info.provenance is not None else None,
        "scenario_text": info.scenario_text,
        "integrity": {
            "ok": report.ok,
            "checksums": report.checksums,
            "summary": report.summary,
            "bad_rows": report.bad,
            "missing": list(report.missing),
        },
        **({"timeline": timeline_note} if timeline_note else {}),
    }


# ---------------------------------------------------------------------------------------------- writers


def _csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    if isinstance(v, list):
        return " ".join(_csv_cell(x) if isinstance(x, float) else str(x) for x in v)
    return v


def _write_csv(path: Path, columns: list[str], rows: Rows) -> None:
    with path.open("w", newline="", encoding="utf-8", errors="replace") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for row in rows:
            w.writerow([_csv_cell(v) for v in row])


def _write_jsonl(path: Path, columns: list[str], rows: Rows) -> None:
    with path.open("wb") as f:
        for row in rows:
            f.write(orjson.dumps(dict(zip(columns, row, strict=True)), default=_jsonable))
            f.write(b"\n")


def _jsonable(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) else v
    if isinstance(v, str):  # a lone surrogate orjson refuses
        return v.encode("utf-8", "replace").decode("utf-8")
    raise TypeError(type(v).__name__)


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise UserError(
            "Parquet export needs pyarrow, which is not installed",
            "pip install 'rllmtop[parquet]' (or export --format csv / jsonl)",
        ) from None
    return pyarrow


def _write_parquet(path: Path, columns: list[str], rows: Rows) -> None:
    pa = _pyarrow()
    import pyarrow.parquet as pq

    rows = list(rows)
    data = {c: [row[i] for row in rows] for i, c in enumerate(columns)}
    arrays = {}
    for c, values in data.items():
        if any(isinstance(v, float) for v in values):  # numeric columns: NaN and None are null
            values = [
                None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in values
            ]
            arrays[c] = pa.array(values, type=pa.float64())
        elif all(v is None for v in values):
            arrays[c] = pa.array(values, type=pa.string())
        else:
            try:
                arrays[c] = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types in a damaged file: as text
                arrays[c] = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    pq.write_table(pa.table(arrays), path)


_WRITERS = {"csv": _write_csv, "jsonl": _write_jsonl, "parquet": _write_parquet}
