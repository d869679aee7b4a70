"""A session's results, computed from its recording: the ASU summary, the SLO verdicts, the trust warnings (the
client or the simulator was late, the file had damaged rows).

The end of a live run and ``rllmtop replay FILE --headless`` both call :func:`recording_results`, so they say
the same thing. It reads the file in a streaming pass (memory ~110 bytes per request, only while it runs):
nothing of a finished request is kept in memory during the run, whatever its length.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rllmtop.metrics.analysis import (
    AsuSummary,
    asu_summary,
    check_slos,
    client_delay_verdict,
    sim_drift_verdict,
    trust_warnings,
)

__all__ = ["Results", "recording_results"]


@dataclass(frozen=True)
class Results:
    summary: AsuSummary | None  # None: no request ended
    requests: int  # request rows (ended or in flight)
    slo_missed: tuple[str, ...]
    warnings: tuple[str, ...]  # which figures cannot be trusted, and why (client delay, simulator drift)


def recording_results(
    path: str | Path,
    *,
    goodput: Mapping[str, float] | None = None,
    slo: Mapping[str, float] | None = None,
) -> Results:
    """The results of the recording at ``path``. ``goodput``: per-request SLOs (default: those the session
    recorded); ``slo``: aggregate SLOs to check (none: no verdict). Raises UserError for a file that cannot be
    read (named, with what to do)."""
    from rllmtop.record.reader import open_recording

    with open_recording(path) as rec:
        info = rec.info
        if goodput is None:
            recorded = dict(info.extra).get("goodput", "")
            try:
                goodput = {str(k): float(v) for k, v in json.loads(recorded).items()} if recorded else None
            except (ValueError, TypeError, AttributeError):
                goodput = None
        summary = asu_summary(rec.iter_requests(), goodput=goodput)
        n = summary.overall.requests + summary.unfinished
        health = rec.client_health()
        delay = client_delay_verdict(health, rec.iter_requests(), clock=info.clock, speed=info.speed)
        drift = None
        if rec.samples(["sim_drift_seconds"]):
            engines = [e.id for e in info.engines] or [""]
            by_engine = {e: rec.samples(["sim_drift_seconds"], engine=e) for e in engines}
            drift = sim_drift_verdict(by_engine, rec.duration or summary.run_span_s or 0.0)
        damage = rec.problems
        warnings = tuple(trust_warnings(delay, drift)) + (
            (
                f"the recording {path} is damaged: {len(damage)} unreadable cell(s) or row(s) were left out "
                f"of these figures (first: {damage[0]}); `rllmtop verify {path}` checks every row",
            )
            if damage
            else ()
        )
    if summary.overall.requests == 0:
        return Results(None, n, (), warnings)
    missed = tuple(check_slos(summary.overall, slo)) if slo else ()
    return Results(summary, n, missed, warnings)
