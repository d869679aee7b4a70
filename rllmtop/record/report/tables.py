"""The report's tables other than the ASU one (which is :func:`rllmtop.summary.asu_table`): run facts,
engine numbers (per engine and for a fleet), changes against a baseline, and the definitions. Each is a
:class:`rllmtop.summary.Table`, rendered as text, Markdown or HTML by the caller."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from rllmtop import fmt
from rllmtop.metrics.analysis import KV_FULL, ClassSummary, EngineSummary
from rllmtop.record.report.run import Derived, RunData, clock_note
from rllmtop.summary import COLUMNS, GOODPUT_COLUMNS, Table

__all__ = [
    "DEFINITIONS",
    "DELTA_METRICS",
    "definitions_html",
    "definitions_md",
    "delta_table",
    "engine_note",
    "engine_table",
    "meta_table",
    "run_meta",
    "warnings_of",
]

DEFINITIONS: tuple[tuple[str, str], ...] = (
    ("TTFT", "first token of any kind (reasoning or answer) minus the request's start"),
    (
        "TTFVT",
        "first visible (answer, non-reasoning) token minus the request's start; requests cut while "
        "reasoning have none",
    ),
    ("E2E / run time", "last token (request end) minus the request's start"),
    (
        "request start",
        "after any client concurrency-cap wait, before connecting (as vllm bench serve); schema-1 "
        "recordings: the send",
    ),
    ("TPOT", "per request: (last token - first token) / (output tokens - 1), from the recorded chunk gaps"),
    ("ITL", "per request: the mean gap between two token-bearing chunks"),
    (
        "tok/s",
        "output tokens (reasoning + answer) of requests that ended / span from the first request start to the "
        "last end (of the class, for a class row)",
    ),
    (
        "goodput",
        "requests that ended ok and met every per-request SLO, per second of the run's span (first request "
        "start to last end; the same span for every class), and their answer tokens per second",
    ),
    ("percentiles", "linear interpolation between closest ranks, over requests that ended ok"),
    ("acc", "correct / graded requests"),
)


def run_meta(r: RunData) -> list[tuple[str, str]]:
    """(field, value) facts of a run, from its SessionInfo and provenance."""
    info = r.info
    started = (
        datetime.fromtimestamp(info.started_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if info.started_at
        else fmt.MISSING
    )
    rows = [
        ("recording", str(r.path) if r.path else fmt.MISSING),
        ("scenario", info.scenario_name or fmt.MISSING),
        ("seed", fmt.MISSING if info.seed is None else str(info.seed)),
        ("engine", " ".join(x for x in (info.engine_kind, info.engine_version) if x) or fmt.MISSING),
        ("model", info.model or fmt.MISSING),
        ("status", r.status + (f" ({r.status_detail})" if r.status_detail else "")),
        ("started", started),
        ("duration", fmt.MISSING if r.duration is None else f"{r.duration:.1f} s"),
        ("clock", clock_note(info)),
        ("requests", f"{len(r.requests)}"),
    ]
    if len(info.engines) > 1:
        rows.append(("engines", ", ".join(e.id for e in info.engines)))
    prov = info.provenance
    if prov is not None:
        if prov.overrides:
            flags = dict(prov.override_flags)
            rows.append(("overrides", " ".join(f"{flags.get(k, k)} {v}" for k, v in prov.overrides)))
        if prov.cell:
            rows.append(("matrix cell", prov.cell_label or ", ".join(f"{k}={v}" for k, v in prov.cell)))
        if prov.planned_requests is not None:
            rows.append(("planned requests", str(prov.planned_requests)))
        if prov.workload_digest:
            rows.append(("workload", prov.workload_digest))
    known = {k for k, _ in rows}
    rows += [(k, v) for k, v in info.extra if k not in known and k != "goodput"]
    if info.launch_command:
        rows.append(("launch command", " ".join(info.launch_command)))
    return rows


def meta_table(r: RunData) -> Table:
    return Table.of(["field", "value"], [[k, v] for k, v in run_meta(r)], [False, False])


_ENGINE_HEAD = (
    "run",
    "status",
    "load window",
    "KV mean",
    "KV peak",
    f"time KV>={100 * KV_FULL:.0f}%",
    "running mean/peak",
    "waiting mean/peak",
    "preemptions",
    "prefix hit",
)


def _delta(v: float | None, b: float | None, pct_points: bool = False) -> str:
    if b is None or v is None:
        return ""
    if pct_points:
        return f" ({fmt.points(v - b)})"
    c = fmt.change(v, b)
    return f" ({c})" if c else ""


def _engine_cells(
    label: str, status: str, e: EngineSummary, be: EngineSummary | None, unit: str
) -> list[str]:
    return [
        label,
        status,
        f"{e.window_s:.1f} {unit}",
        fmt.percent(e.kv_usage_mean) + _delta(e.kv_usage_mean, be.kv_usage_mean if be else None, True),
        fmt.percent(e.kv_usage_peak) + _delta(e.kv_usage_peak, be.kv_usage_peak if be else None, True),
        fmt.percent(e.kv_full_frac),
        f"{fmt.rate(e.running_mean)}/{fmt.count(e.running_peak)}",
        f"{fmt.rate(e.waiting_mean)}/{fmt.count(e.waiting_peak)}",
        fmt.count(e.preemptions) + _delta(e.preemptions, be.preemptions if be else None),
        fmt.percent(e.prefix_hit_rate),
    ]


def engine_table(runs: Sequence[Derived], base: Derived | None = None) -> Table:
    """One row per run (changes against ``base``); for a fleet, one more row per engine below its run."""
    rows = []
    for r in runs:
        status = r.data.status + (f": {r.data.status_detail}" if r.data.status_detail else "")
        unit = "simulated s" if r.data.info.clock == "simulated" else "s"
        be = base.engine if base is not None and r is not base else None
        label = r.label + (f" (fleet of {r.engine.engines})" if r.engine.engines > 1 else "")
        rows.append(_engine_cells(label, status, r.engine, be, unit))
        for eid, e in r.engines.items():
            rows.append(_engine_cells(f"  engine {eid}", "", e, None, unit))
    return Table.of(_ENGINE_HEAD, rows, (False, False, *([True] * 8)))


def engine_note(gstep: float, runs: Sequence[Derived] = ()) -> str:
    fleets = [r for r in runs if r.engine.engines > 1]
    fleet = ""
    if fleets:
        e = fleets[0].engine
        fleet = (
            f" A fleet's KV mean is {e.kv_weighting}; its KV peak is the highest reading of any engine; its "
            "queues and counters are summed over the engines; KV spread (max - min across engines): mean "
            f"{fmt.percent(e.kv_spread_mean)}, peak {fmt.percent(e.kv_spread_peak)}; waiting spread: mean "
            f"{fmt.rate(e.waiting_spread_mean)}, peak {fmt.count(e.waiting_spread_peak)}."
        )
    return (
        "Engine numbers over the load window (first scheduled send to the last request end): means are "
        f"time-weighted over the last reading in each {gstep:g} s window; peaks are the highest reading; "
        "preemptions and prefix-cache hits are counter increases over the session (a counter reset counts "
        f"from 0); '{fmt.MISSING}' means the engine did not serve the metric." + fleet
    )


def warnings_of(r: Derived) -> list[str]:
    """The run's trust warnings (client delay, simulator drift), in words; empty: the numbers hold."""
    return r.warnings


DELTA_METRICS: tuple[tuple[str, Callable[[ClassSummary], float | None], str], ...] = (
    ("tok/s", lambda c: c.output_tps, "rate"),
    ("good req/s", lambda c: c.goodput_rps, "rate"),
    ("TTFVT p50", lambda c: c.ttfvt[50], "s"),
    ("TTFVT p99", lambda c: c.ttfvt[99], "s"),
    ("E2E p50", lambda c: c.e2e[50], "s"),
    ("E2E p99", lambda c: c.e2e[99], "s"),
    ("reason p50", lambda c: c.reasoning_len[50], "tok"),
    ("reason p99", lambda c: c.reasoning_len[99], "tok"),
    ("acc", lambda c: c.accuracy, "frac"),
    ("err", lambda c: c.error_rate, "frac"),
    ("strag", lambda c: float(c.stragglers), "count"),
)
"""Numbers shown with their change against the baseline (all read from ClassSummary)."""

_SHOW = {"s": fmt.seconds, "frac": fmt.percent, "rate": fmt.rate, "tok": fmt.tokens, "count": fmt.count}


def _delta_cell(v: float | None, b: float | None, kind: str) -> str:
    shown = _SHOW[kind](v)
    if v is None or b is None:
        return shown
    if kind == "frac":
        return f"{shown} ({fmt.points(v - b)})"
    c = fmt.change(v, b)
    return f"{shown} ({c})" if c else shown


def delta_table(runs: Sequence[Derived], base: Derived, cls: str, goodput: bool) -> Table:
    """Class ``cls`` of each run with its change against ``base``."""
    metrics = [m for m in DELTA_METRICS if goodput or m[0] != "good req/s"]
    b = base.summary.by_name().get(cls)
    rows = []
    for r in runs:
        c = r.summary.by_name().get(cls)
        if c is None:
            continue
        rows.append(
            [r.label]
            + [
                _delta_cell(get(c), None if (r is base or b is None) else get(b), kind)
                for _, get, kind in metrics
            ]
        )
    return Table.of(["run", *(m[0] for m in metrics)], rows)


def _definition_items(rule: str, goodput: bool) -> list[tuple[str, str]]:
    cols = (*COLUMNS, *GOODPUT_COLUMNS) if goodput else COLUMNS
    return [("straggler", rule), *DEFINITIONS, *((c.title, c.help) for c in cols)]


def definitions_md(rule: str, goodput: bool = False) -> str:
    return "\n".join(f"- **{k}**: {v}" for k, v in _definition_items(rule, goodput))


def definitions_html(rule: str, goodput: bool = False) -> str:
    items = _definition_items(rule, goodput)
    return "<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in items) + "</dl>"
