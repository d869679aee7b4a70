"""What a report knows of one run: the data read from a recording, and everything derived from it once.

Time axes are seconds since the load started: the first scheduled send (runs of one workload share the
schedule, so their axes line up exactly, however long each engine took to start; the session's
``running`` state when nothing was scheduled). Session seconds: the wall clock, or the simulated clock
of a time-lapse run (``SessionInfo.clock``); every figure and table says which.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from rllmtop.events import ClientHealth, MetricSample, RequestRecord, RequestStatus, SessionInfo, SessionState
from rllmtop.metrics.analysis import (
    AsuSummary,
    ClientDelayVerdict,
    EngineSummary,
    SimDriftVerdict,
    StragglerBaselines,
    StragglerRule,
    Timeline,
    asu_summary,
    client_delay_verdict,
    engine_summaries,
    engine_summary,
    engine_timelines,
    samples_by_engine,
    scrape_step,
    sim_drift_verdict,
    timeline,
)

__all__ = ["SAMPLE_NAMES", "Derived", "RunData", "clock_label", "derive", "load_run"]

SAMPLE_NAMES = (
    "kv_cache_usage",
    "requests_running",
    "requests_waiting",
    "preemptions_total",
    "generation_tokens_total",
    "prefix_cache_hits_total",
    "prefix_cache_queries_total",
    "kv_total_blocks",
    "kv_total_tokens",
    "sim_drift_seconds",
)
"""The engine series a report reads from a recording."""


@dataclass(frozen=True)
class RunData:
    """What a report needs from one recording (build it from a file with :func:`load_run`)."""

    label: str  # how the run is named in tables and legends
    info: SessionInfo
    requests: Sequence[RequestRecord]
    samples: Sequence[MetricSample]  # every engine's, flat
    status: str = SessionState.DONE.value
    status_detail: str = ""
    duration: float | None = None  # recorded session seconds (None: from the records)
    load_start: float | None = None  # the RUNNING state's time (used only when no request was scheduled)
    path: Path | None = None
    engine_samples: Mapping[str, Sequence[MetricSample]] | None = None  # a fleet: engine id -> samples
    health: Sequence[ClientHealth] = ()  # the client heartbeat series (empty: not recorded)
    goodput: Mapping[str, float] = field(default_factory=dict)  # per-request SLOs, seconds

    @property
    def per_engine(self) -> Sequence[MetricSample] | Mapping[str, Sequence[MetricSample]]:
        """The fleet's samples by engine when there are several engines, else the flat samples."""
        if self.engine_samples is not None and len(self.engine_samples) > 1:
            return self.engine_samples
        return self.samples


def _goodput_of(info: SessionInfo) -> dict[str, float]:
    """The goodput SLOs the session recorded (``SessionInfo.extra`` key ``goodput``, a JSON object)."""
    text = dict(info.extra).get("goodput", "")
    if not text:
        return {}
    try:
        d = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(d, dict):
        return {}
    return {
        str(k): float(v) for k, v in d.items() if isinstance(v, int | float) and math.isfinite(v) and v > 0
    }


def load_run(path: str | Path, label: str | None = None) -> RunData:
    """Read a recording: requests, the engine series the report draws (per engine for a fleet), the
    client heartbeat, the load start."""
    from rllmtop.record.reader import open_recording

    p = Path(path)
    with open_recording(p) as rec:
        info = rec.info
        start = next((st.t for st in rec.states() if st.state is SessionState.RUNNING), None)
        status = rec.status
        per: dict[str, list[MetricSample]] | None = None
        if len(info.engines) > 1:
            wanted = set(SAMPLE_NAMES)
            per = {
                e: [s for s in ss if s.name in wanted]
                for e, ss in samples_by_engine(rec.scrapes(full=True)).items()
            }
            samples: Sequence[MetricSample] = [s for ss in per.values() for s in ss]
        else:
            samples = rec.samples(names=list(SAMPLE_NAMES))
        reader = getattr(rec, "client_health", None)  # recordings of schema 3+ keep the heartbeat
        health = tuple(reader()) if callable(reader) else ()
        return RunData(
            label=label or _default_label(info, p),
            info=info,
            requests=rec.requests(),
            samples=samples,
            status=status.value if isinstance(status, SessionState) else str(status),
            status_detail=str(rec.status_detail or ""),
            duration=rec.duration,
            load_start=start,
            path=p,
            engine_samples=per,
            health=health,
            goodput=_goodput_of(info),
        )


def _default_label(info: SessionInfo, path: Path | None) -> str:
    prov = info.provenance
    cell = (prov.cell_label if prov is not None else "") or dict(info.extra).get("matrix_cell", "")
    if cell:
        return cell
    return path.stem if path is not None else (info.scenario_name or info.session_id)


def clock_label(info: SessionInfo) -> str:
    """The unit of a run's times, in words: ``s`` (wall clock) or ``simulated s``."""
    return "simulated s" if info.clock == "simulated" else "s"


def clock_note(info: SessionInfo) -> str:
    if info.clock == "simulated":
        return f"simulated clock (time-lapse at speed {info.speed:g}: simulated seconds = wall seconds x {info.speed:g})"
    return "wall clock"


# ============================================================================================ derived run

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
_NICE = (0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)


def _nice_step(x: float) -> float:
    for n in _NICE:
        if n >= x - 1e-12:
            return float(n)
    return float(math.ceil(x / 3600) * 3600)


@dataclass
class Derived:
    """A run with everything derived once: summary, engine numbers, timelines, stragglers, verdicts."""

    data: RunData
    color: str
    t0: float
    t1: float
    summary: AsuSummary
    engine: EngineSummary  # the fleet's when several engines
    baselines: StragglerBaselines
    client: ClientDelayVerdict
    drift: SimDriftVerdict
    ok: list[RequestRecord] = field(default_factory=list)
    codes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int8))  # per ok request
    engines: dict[str, EngineSummary] = field(default_factory=dict)  # per engine (a fleet only)
    tl_gauge: Timeline | None = None
    tl_count: Timeline | None = None
    tl_engines: dict[str, Timeline] = field(default_factory=dict)  # per engine gauges (a fleet only)

    @property
    def label(self) -> str:
        return self.data.label

    @property
    def straggler(self) -> np.ndarray:
        """Per ok request: flagged by the straggler rule."""
        return self.codes > 0

    @property
    def warnings(self) -> list[str]:
        return [v.sentence for v in (self.client, self.drift) if v.fired]

    @staticmethod
    def x(tl: Timeline) -> np.ndarray:
        """Bin centres, seconds since load start (the timelines are built on the shifted clock)."""
        return tl.t + tl.step / 2


def _ended(requests: Iterable[RequestRecord]) -> list[RequestRecord]:
    return [
        r
        for r in requests
        if (r.status is RequestStatus.OK and r.t_done is not None)
        or r.status in (RequestStatus.ERROR, RequestStatus.CANCELLED)
    ]


def _shift(samples: Sequence[MetricSample], t0: float) -> list[MetricSample]:
    return [MetricSample(s.t - t0, s.name, s.value, s.labels) for s in samples]


def derive(
    runs: Sequence[RunData], rule: StragglerRule, goodput: Mapping[str, float] | None = None
) -> tuple[list[Derived], float, float]:
    """Derive every run (``goodput``: the SLOs for all runs; None = each run's recorded ones); returns
    the runs, the gauge step and the count step shared by their figures."""
    out: list[Derived] = []
    for i, d in enumerate(runs):
        sent = [r.t_sent for r in d.requests if r.t_sent is not None]
        ends = [r.t_done for r in d.requests if r.t_done is not None]
        planned = [r.t_scheduled for r in d.requests]
        t0 = (
            min(planned)
            if planned
            else (d.load_start if d.load_start is not None else min(sent, default=0.0))
        )
        last = [*ends, *(s.t for s in d.samples[-1:])]
        t1 = max(ends) if ends else (d.duration if d.duration is not None else max(last, default=t0))
        t1 = max(t1, t0)
        ended = _ended(d.requests)
        slo = d.goodput if goodput is None else goodput
        summary = asu_summary(d.requests, rule, goodput=slo)
        ok = [r for r in ended if r.status is RequestStatus.OK and r.e2e is not None]
        baselines = rule.baselines(ok)
        codes = baselines.judge(
            np.array([r.cls for r in ok], dtype=object),
            np.array([r.e2e for r in ok], dtype=float),
            np.array([r.reasoning_tokens for r in ok], dtype=float),
            np.array([_nan(r.latency_start) for r in ok], dtype=float),
        )
        per = d.per_engine
        duration = d.duration if d.duration is not None else t1
        out.append(
            Derived(
                data=d,
                color=PALETTE[i % len(PALETTE)],
                t0=t0,
                t1=t1,
                summary=summary,
                engine=engine_summary(per, t0, t1),
                baselines=baselines,
                client=client_delay_verdict(d.health, d.requests, clock=d.info.clock, speed=d.info.speed),
                drift=sim_drift_verdict(per, duration),
                ok=ok,
                codes=codes,
                engines=engine_summaries(per, t0, t1) if isinstance(per, Mapping) else {},
            )
        )
    span = max((r.t1 - r.t0 for r in out), default=1.0) or 1.0
    gstep = _nice_step(max(min(scrape_step(r.data.per_engine) for r in out) if out else 0.25, span / 1500))
    cstep = _nice_step(max(span / 120, gstep))
    for r in out:
        # timelines on a clock shifted to the load start, so every run's windows start at its load start
        t0 = r.t0
        end = (r.data.duration if r.data.duration is not None else r.t1) or r.t1
        end = max(end, r.t1, t0 + cstep) - t0
        per = r.data.per_engine
        shifted = (
            {e: _shift(ss, t0) for e, ss in per.items()} if isinstance(per, Mapping) else _shift(per, t0)
        )
        r.tl_gauge = timeline((), shifted, step=gstep, t_end=end)
        if isinstance(shifted, dict):
            r.tl_engines = engine_timelines(shifted, step=gstep, t_end=end)
        # counts only: no token times (decoding gaps is the costly part of a timeline and is not drawn here)
        light = [
            replace(
                q,
                gaps=b"",
                t_first_token=None,
                t_scheduled=q.t_scheduled - t0,
                t_sent=None if q.t_sent is None else q.t_sent - t0,
                t_done=None if q.t_done is None else q.t_done - t0,
            )
            for q in r.data.requests
        ]
        r.tl_count = timeline(light, shifted, step=cstep, t_end=end)
    return out, gstep, cstep


def _nan(v: float | None) -> float:
    return math.nan if v is None else v
