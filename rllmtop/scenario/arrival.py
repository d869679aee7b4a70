"""The ``[arrival]`` table: when requests are sent."""

from __future__ import annotations

from pathlib import Path

from rllmtop.scenario.limits import MAX_ITEMS, MAX_REQUESTS, MAX_RUN_SECONDS, MAX_TRACE_SCALE
from rllmtop.scenario.messages import Ctx, display, quantity
from rllmtop.scenario.schema import (
    ARRIVAL_PROCESSES,
    PHASE_PROCESSES,
    RAMP_UP_STRATEGIES,
    TRACE_FORMATS,
    ArrivalSpec,
    PhaseSpec,
)
from rllmtop.scenario.tables import REQUIRED, Table

__all__ = ["ARRIVAL_TABLE_KEYS", "build_arrival"]

_RAMP = ("ramp_up_strategy", "ramp_up_start_rate", "ramp_up_end_rate")
ARRIVAL_TABLE_KEYS = (
    "process",
    "rate",
    "burstiness",
    "rescale",
    *_RAMP,
    "burst_size",
    "burst_interval",
    "phases",
    "repeat_phases",
    "trace_file",
    "trace_format",
    "trace_column",
    "time_scale",
    "rate_scale",
)
_USED = {
    "gamma": ("rate", "burstiness", "rescale", *_RAMP),
    "poisson": ("rate", "rescale", *_RAMP),
    "constant": ("rate", "rescale", *_RAMP),
    "burst": ("burst_size", "burst_interval"),
    "phases": ("phases", "repeat_phases"),
    "trace": ("trace_file", "trace_format", "trace_column", "time_scale", "rate_scale"),
}
_PHASE_KEYS = ("duration", "rate", "burstiness", "process")


def build_arrival(ctx: Ctx, raw: object, base: Path) -> ArrivalSpec:
    t = Table(ctx, raw, "arrival", ARRIVAL_TABLE_KEYS)
    process = t.string("process", "gamma", choices=ARRIVAL_PROCESSES)
    used = _USED[process]
    if process == "poisson" and t.has("burstiness") and t.get("burstiness") != 1:
        t.fail("burstiness", "poisson means burstiness 1", "process = 'gamma' for other burstiness")
    for k in ARRIVAL_TABLE_KEYS:
        if k != "process" and t.has(k) and k not in used and not (k == "burstiness" and process == "poisson"):
            t.fail(k, f"not used by arrival.process = {process!r}", f"for {process!r}: {', '.join(used)}")
    strategy = t.string_opt("ramp_up_strategy", choices=RAMP_UP_STRATEGIES)
    start = end = None
    if strategy is None:
        for k in _RAMP[1:]:
            if t.has(k):
                t.fail(
                    k,
                    "needs arrival.ramp_up_strategy",
                    f"ramp_up_strategy = one of {', '.join(RAMP_UP_STRATEGIES)}",
                )
    else:
        if t.has("rate"):
            t.fail(
                "rate",
                "a ramp-up sets the rate",
                "remove rate: the rate goes from ramp_up_start_rate to ramp_up_end_rate",
            )
        if t.has("rescale"):
            t.fail("rescale", "a ramp-up has no single rate to rescale to", "remove rescale")
        start = t.number("ramp_up_start_rate", REQUIRED, gt=0)
        end = t.number("ramp_up_end_rate", REQUIRED, gt=0)
        if end < start:
            t.fail(
                "ramp_up_end_rate",
                f"below ramp_up_start_rate = {start:g}",
                "an end rate >= the start rate, as vllm bench serve",
            )
    trace_format = t.string("trace_format", "timestamps", choices=TRACE_FORMATS)
    if trace_format != "timestamps" and t.has("trace_column"):
        t.fail(
            "trace_column",
            f"trace_format = {trace_format!r} fixes the columns",
            "remove trace_column (it names the timestamp column of a plain timestamps trace)",
        )
    time_scale = t.number("time_scale", 1.0, ge=1 / MAX_TRACE_SCALE, le=MAX_TRACE_SCALE)
    rate_scale = t.number("rate_scale", 1.0, ge=1 / MAX_TRACE_SCALE, le=MAX_TRACE_SCALE)
    return ArrivalSpec(
        process=process,
        rate=t.number("rate", 1.0, gt=0, inf=True),
        burstiness=t.number("burstiness", 1.0, gt=0, le=1e6),
        rescale=t.flag("rescale", False),
        burst_size=t.integer_opt("burst_size", ge=1, le=MAX_REQUESTS),
        burst_interval=t.number_opt("burst_interval", gt=0, le=MAX_RUN_SECONDS),
        phases=_phases(ctx, t) if process == "phases" else (),
        repeat_phases=t.flag("repeat_phases", False),
        trace_file=_trace_file(t, base) if process == "trace" else None,
        trace_column=t.line("trace_column", "timestamp") or "timestamp",
        trace_format=trace_format,
        time_scale=time_scale,
        rate_scale=rate_scale,
        ramp_up_strategy=strategy,
        ramp_up_start_rate=start,
        ramp_up_end_rate=end,
    )


def _phases(ctx: Ctx, t: Table) -> tuple[PhaseSpec, ...]:
    out: list[PhaseSpec] = []
    example = "[[arrival.phases]] tables with duration, rate (and burstiness)"
    for pt in t.table_list("phases", _PHASE_KEYS, max_items=MAX_ITEMS, example=example, required=True):
        pproc = pt.string("process", "gamma", choices=PHASE_PROCESSES)
        if pproc == "poisson" and pt.has("burstiness") and pt.get("burstiness") != 1:
            pt.fail("burstiness", "poisson means burstiness 1", "process = 'gamma' for other burstiness")
        out.append(
            PhaseSpec(
                duration=pt.number("duration", REQUIRED, gt=0, le=MAX_RUN_SECONDS),
                rate=pt.number("rate", REQUIRED, ge=0),
                burstiness=pt.number("burstiness", 1.0, gt=0, le=1e6),
                process=pproc,
            )
        )
    total = sum(p.duration for p in out)
    if total > MAX_RUN_SECONDS:
        ctx.error(
            f"arrival.phases last {quantity(total)} s together",
            f"allowed: at most {quantity(MAX_RUN_SECONDS)} s (MAX_RUN_SECONDS, 7 days); "
            "repeat_phases = true cycles them",
        )
    return tuple(out)


def _trace_file(t: Table, base: Path) -> str:
    tf = t.line("trace_file", None)
    if tf is None:
        t.ctx.missing("arrival.trace_file", 'trace_file = "times.csv" (relative to the scenario file)')
    p = Path(tf)
    try:
        p = p.expanduser()
        p = p if p.is_absolute() else base / p
        ok = p.is_file()
    except (OSError, ValueError, RuntimeError):
        ok = False
    if not ok:
        t.fail(
            "trace_file",
            f"no such file ({display(str(p), 160)})",
            "a CSV or JSON lines file of requests, relative to the scenario file",
        )
    return str(p.resolve())
