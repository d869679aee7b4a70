"""Export a recording to the tools people already use: CSV, JSON lines or Parquet (optional pyarrow).

Files written to ``out_dir`` (``<name>.csv`` / ``.jsonl`` / ``.parquet``):

- ``requests``: one row per request, every recorded field, the derived latencies (ttft, ttfvt, e2e,
  send_lag, concurrency_wait, output_tokens), and the inter-token gaps (``gaps_us``; ``tokens_per_chunk`` when
  a chunk carried several tokens): lists in JSON lines/Parquet, space-separated integers in CSV.
- ``samples``: the raw scalar samples (t, metric, labels as ``k=v,k=v``, value): counters stay cumulative.
- ``histograms``: the raw cumulative buckets per scrape (bounds and counts as lists / space-separated).
- ``timeline``: per-second series from :func:`rllmtop.metrics.analysis.timeline` (KV usage, running,
  waiting, arrivals, completions, reasoning vs answer tokens/s, ...); missing metrics are empty/null.
- ``events``: state changes and log lines.
- ``session.json``: the session's facts and final status (always JSON).

Missing values are empty cells in CSV and null in JSON lines/Parquet; NaN never appears as text.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from rllmtop.errors import UserError
from rllmtop.events import HistogramSample, Labels, MetricSample, RequestRecord, decode_gaps
from rllmtop.record.store import Recording, open_recording

__all__ = ["FORMATS", "export_recording"]

FORMATS = ("csv", "jsonl", "parquet")

_REQUEST_DERIVED = ("ttft", "ttfvt", "e2e", "send_lag", "concurrency_wait", "output_tokens")


def export_recording(path: str | Path, fmt: str, out_dir: str | Path, *, step: float = 1.0) -> list[Path]:
    """Write requests, samples, histograms, a per-``step`` timeline, events and session facts of the
    recording at ``path`` into ``out_dir`` (created). Returns the files written."""
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}", f"use one of: {', '.join(FORMATS)}")
    if fmt == "parquet":
        _pyarrow()  # fail before doing any work
    out = Path(out_dir)
    with open_recording(path) as rec:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the export directory {out}: {e}", "pass another --out DIR") from e
        tables = _tables(rec, step)
        written: list[Path] = []
        try:
            for name, (columns, rows) in tables.items():
                target = out / f"{name}.{fmt}"
                _WRITERS[fmt](target, columns, rows)
                written.append(target)
            info = out / "session.json"
            info.write_bytes(orjson.dumps(_session(rec), option=orjson.OPT_INDENT_2))
            written.append(info)
        except OSError as e:
            raise UserError(
                f"cannot write the export to {out}: {e}", "check the free space and permissions"
            ) from e
    return written


# ---------------------------------------------------------------------------------------------- tables

Rows = list[list[Any]]


def _tables(rec: Recording, step: float) -> dict[str, tuple[list[str], Rows]]:
    from rllmtop.metrics.analysis import timeline

    requests = rec.requests()
    samples = rec.samples()
    out: dict[str, tuple[list[str], Rows]] = {
        "requests": _requests_table(requests),
        "samples": (["t", "metric", "labels", "value"], [_sample_row(s) for s in samples]),
        "histograms": _histograms_table(rec.histograms()),
    }
    tl = timeline(requests, samples, step=step, t_end=rec.duration)
    names = list(tl.columns)
    cols = [tl.t, *(tl.columns[n] for n in names)]
    out["timeline"] = (["t", *names], [[_num(c[i]) for c in cols] for i in range(len(tl.t))])
    events = [[s.t, "state", s.state.value, "", "", s.detail] for s in rec.states()]
    events += [[g.t, "log", "", g.source, g.level, g.text] for g in rec.logs()]
    events.sort(key=lambda r: r[0])
    out["events"] = (["t", "kind", "state", "source", "level", "text"], events)
    return out


def _num(v: Any) -> Any:
    v = float(v)
    return None if math.isnan(v) else v


def _labels_text(labels: Labels) -> str:
    return ",".join(f"{k}={v}" for k, v in labels)


def _sample_row(s: MetricSample) -> list[Any]:
    return [s.t, s.name, _labels_text(s.labels), _num(s.value)]


def _histograms_table(hists: Sequence[HistogramSample]) -> tuple[list[str], Rows]:
    cols = ["t", "metric", "labels", "bounds", "counts", "sum", "count"]
    return cols, [
        [h.t, h.name, _labels_text(h.labels), list(h.bounds), list(h.counts), _num(h.sum), _num(h.count)]
        for h in hists
    ]


_REQ_FIELDS = [f for f in RequestRecord.__dataclass_fields__ if f != "gaps"]


def _requests_table(requests: Sequence[RequestRecord]) -> tuple[list[str], Rows]:
    cols = [*_REQ_FIELDS, *_REQUEST_DERIVED, "gaps_us", "tokens_per_chunk"]
    rows: Rows = []
    for r in requests:
        row: list[Any] = []
        for f in _REQ_FIELDS:
            v = getattr(r, f)
            row.append(v.value if hasattr(v, "value") else v)
        row += [getattr(r, d) for d in _REQUEST_DERIVED]
        gaps, per_chunk = decode_gaps(r.gaps)
        row += [list(gaps), list(per_chunk) if per_chunk is not None else None]
        rows.append(row)
    return cols, rows


def _session(rec: Recording) -> dict[str, Any]:
    info = rec.info
    return {
        "file": str(rec.path),
        "status": rec.status.value,
        "status_detail": rec.status_detail,
        "duration_s": rec.duration,
        "schema_version": rec.schema_version,
        "session_id": info.session_id,
        "started_at": info.started_at,
        "scenario_name": info.scenario_name,
        "seed": info.seed,
        "engine_kind": info.engine_kind,
        "engine_version": info.engine_version,
        "engine_url": info.engine_url,
        "metrics_url": info.metrics_url,
        "model": info.model,
        "launch_command": list(info.launch_command),
        "rllmtop_version": info.rllmtop_version,
        "extra": dict(info.extra),
        "scenario_text": info.scenario_text,
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


def _write_csv(path: Path, columns: list[str], rows: Iterable[list[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for row in rows:
            w.writerow([_csv_cell(v) for v in row])


def _write_jsonl(path: Path, columns: list[str], rows: Iterable[list[Any]]) -> None:
    with path.open("wb") as f:
        for row in rows:
            f.write(orjson.dumps(dict(zip(columns, row, strict=True)), default=_jsonable))
            f.write(b"\n")


def _jsonable(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) else v
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
            arrays[c] = pa.array(values)
    pq.write_table(pa.table(arrays), path)


_WRITERS = {"csv": _write_csv, "jsonl": _write_jsonl, "parquet": _write_parquet}
