"""The live view model: every record of a session in, immutable snapshots for a screen out.

:class:`LiveView` is a session sink (``session.add_sink(view.handle)``). ``handle`` is O(1) amortised per
record (a Scrape: O(its samples + engines)); ``snapshot(now)`` returns a :class:`ViewSnapshot` that the TUI
draws and that the headless printer reads its progress line from (``snap.progress.line()``); the headless
printer reads :meth:`LiveView.alerts` for its warnings. Live, headless and replay feed the very same records,
so the numbers are the same everywhere. A ``Reset`` record (replay seeking backwards) or a SessionInfo with a
new ``session_id`` clears everything. Imports neither textual nor rich.

What a snapshot holds:

- chart series on one time axis ``[t - window, t]`` (session seconds: simulated seconds in a time-lapse
  run, see :func:`clock_note`): KV-cache usage (0..1) with preemption marks, engine running vs waiting, the
  engine's own generation rate (for the fleet, or for the one engine in focus: :meth:`LiveView.set_focus`),
  output tokens/s split reasoning vs answer (client side, from token-count deltas, in 1 s bins), arrivals vs
  completions per second (1 s bins), and the client's own event-loop lateness (``ClientHealth``);
- the fleet: one :class:`EngineRow` per engine (health, KV, queues, tok/s, preemptions, GPU telemetry where
  served, version) and the spread across engines. Fleet values are formed as ``metrics.analysis`` forms them:
  KV usage weighted by :func:`~rllmtop.metrics.analysis.kv_weights` (each engine's capacity when every engine
  serves it, else equal weights; ``ViewSnapshot.kv_weighting`` says which), over the engines with a current
  reading; queues and rates summed. Engines may appear mid-run (a SessionInfo published again with more);
- the in-flight board (plus requests that ended in the last few seconds; which worker sent each when more
  than one did), stragglers with their reason and the rule's text, the ASU summary, the reasoning-length
  distribution per class/difficulty;
- warnings in words (:class:`Alert`): the client was late and the simulator drifted (the sentences of
  ``analysis.client_delay_verdict`` / ``sim_drift_verdict``, the same the headless summary and the report
  print), a sender worker died, a worker's clock is off the session's; progress counts, state, session
  info, engine log lines and an event log of errors.

Numbers come from :mod:`rllmtop.metrics.analysis`. The ASU summary is a
:class:`~rllmtop.metrics.analysis.LiveAsu`: counts, tokens, accuracy and goodput exact over the whole run,
percentiles and stragglers over the most recent ``recent`` ended requests (the snapshot says so:
``ViewSnapshot.summary_recent``). Goodput uses the per-request SLOs the session publishes in
``SessionInfo.extra`` ("goodput", a JSON object). The O(recent) part (ASU summary, straggler baselines,
distribution) is computed by a :class:`SummaryJob` only when a request ended since the last one, at most
about once a second; a UI may run the job in a thread (``auto_summary=False``, :meth:`LiveView.summary_job`,
:meth:`LiveView.install`), everything else gets it inline.

Memory is bounded however long the session runs: series live in fixed-size ring buffers; ended requests are
not kept one object each: the board keeps the last few seconds of them, the summary ~110 bytes of columns
per recent request (LiveAsu) and, for the distribution, the class, difficulty and reasoning length of the
recent ok ones; the client-delay verdict keeps the late heartbeat intervals (at most
:data:`LATE_INTERVALS_KEPT`). The recording keeps every request.

A metric the engine does not serve (``Scrape.missing``) is reported as missing (``Series.missing``), never
as 0; an engine that stopped answering shows as down or stale, not as zero.
"""

from __future__ import annotations

import heapq
import inspect
import json
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from rllmtop import fmt
from rllmtop.events import (
    TERMINAL_STATES,
    ClientHealth,
    EngineInfo,
    LogEvent,
    MetricSample,
    Phase,
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
from rllmtop.metrics.analysis import (
    CACHE_MOMENTS_RULE,
    CLIENT_DELAY_S,
    EMPTY_DIST,
    AsuState,
    AsuSummary,
    CacheHolder,
    CacheMoment,
    ClientDelayVerdict,
    DistGroup,
    Distribution,
    InFlight,
    LiveAsu,
    RequestColumns,
    RequestSpans,
    SimDriftVerdict,
    StallRule,
    StragglerBaselines,
    StragglerRule,
    cache_holders,
    cache_moments,
    client_delay_verdict,
    kv_weights,
    reasoning_distribution,
    request_spans,
    sim_drift_verdict,
)
from rllmtop.workload.runner import PROGRESS_INTERVAL

DIST_BINS = 64

__all__ = [
    "CACHE_MOMENTS_LIVE",
    "CLIENT_BOTTLENECK_LAG_S",
    "CLOCK_OFFSET_WARN_S",
    "LATE_INTERVALS_KEPT",
    "LOG_LINES",
    "RECENT_REQUESTS",
    "TIMELINE_ENDED",
    "WINDOWS",
    "Alert",
    "BoardRow",
    "CacheView",
    "DistGroup",
    "Distribution",
    "EngineRow",
    "FleetSpread",
    "LiveView",
    "Progress",
    "RequestTimeline",
    "ScrapeHealth",
    "Series",
    "Straggler",
    "Summary",
    "SummaryJob",
    "ViewSnapshot",
    "clock_note",
    "engine_label",
    "format_elapsed",
    "worker_label",
    "worker_warnings",
]

WINDOWS: tuple[float, ...] = (30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
"""Chart windows (seconds) that ``+``/``-`` step through; the largest is what the buffers keep."""

CLIENT_BOTTLENECK_LAG_S = 0.010
"""Send-lag p99 above this means the client itself is late sending: the load is not what was asked."""

CLOCK_OFFSET_WARN_S = 0.005
"""A worker whose clock is further than this from the session's gets a warning: its requests' send lag and
TTFT carry that error (issue 14: "a few ms")."""

RECENT_REQUESTS = 10_000
"""Ended requests the live percentiles, stragglers and distribution cover (LiveAsu's ``recent``)."""

LATE_INTERVALS_KEPT = 4096
"""Client heartbeat intervals over the threshold kept for the client-delay verdict (the newest)."""

RATE_STEP = 1.0  # seconds per bin of the client-side rate series
BOARD_LINGER_S = 5.0  # ended requests stay on the board this long
MAX_ENDED_ROWS = 500  # ... but no more than this many of them
ENGINE_RATE_SPAN = 1.0  # seconds the engine's generation rate is averaged over
LOG_LINES = 500  # engine log / event log lines kept
FINISHED_STRAGGLERS = 200  # finished stragglers kept for the list
ENGINE_POINT_BUDGET = 4  # per-engine series share this many fleet-series capacities (4 engines: a full hour)
ENGINE_MIN_POINTS = 4 * 300  # ... but each engine keeps at least 5 min of 4 Hz scrapes
STALE_AFTER_S = 10.0  # an engine with no scrape for this long (session seconds) shows as stale
RESTART_SHOW_S = 30.0  # an engine shows as restarted this long after a counter went backwards
HEALTH_POINTS = 4 * 3600  # client heartbeat intervals kept for the chart
VERDICT_INTERVAL_S = 1.0  # least wall seconds between two client-delay verdicts (unless a new late interval)
_CAPACITY = ("kv_total_blocks", "kv_total_tokens")  # what analysis.kv_weights weighs engines by

TIMELINE_ENDED = 256
"""Ended requests the timeline keeps (the newest; each ~1 KB with its record until its stalls are read)."""
STALLS_KEPT = 8  # stalls seen so far per request in flight (the newest)
_MOMENT = {
    k: p.default for k, p in inspect.signature(cache_moments).parameters.items() if p.default is not p.empty
}  # the report's cache-moment rule (analysis.cache_moments' defaults): the live view watches the same
MOMENT_EVERY_S = 0.2  # least session seconds between two captures of the holders in one KV peak / burst
MOMENT_KV_STEP = 0.005  # ... and a KV peak is taken again only this much higher (a capture is O(in flight))
PROMPT_CLASSES = 1024  # classes whose mean prompt length is kept (the estimate for requests in flight)
CACHE_MOMENTS_LIVE = (
    f"{CACHE_MOMENTS_RULE}. Live: the newest KV peak and the newest burst, on the fleet's readings; a prompt's "
    "length arrives with its usage when the request ends, so a request in flight counts its class's mean "
    "prompt so far (~)"
)
_STATUS = {
    RequestStatus.OK: 0,
    RequestStatus.ERROR: 1,
    RequestStatus.CANCELLED: 2,
    RequestStatus.IN_FLIGHT: 3,
}


def _holder_order(h: CacheHolder) -> tuple[bool, int, int]:
    """``analysis.cache_holders``' order: the most tokens first, stalled ones (likely preempted) last."""
    return (h.stalled, -h.tokens, h.rid)


class _Fleet:
    """Running sums of the engines' current readings: O(1) per scrape however many engines. Index 0 is the
    KV usage weighted by the engine's weight (with the sum of the weights in ``wsum``), 1..3 running,
    waiting and generation rate. Sums are integers in fixed units, so adding and taking back a reading
    leaves no float error behind (a fleet of one shows its engine's value exactly, to 1e-9)."""

    __slots__ = ("n", "sums", "wsum")

    SCALE = 1_000_000
    KV_SCALE = 10**12  # weights are fractions of 1: a finer unit

    def __init__(self) -> None:
        self.sums = [0, 0, 0, 0]
        self.n = [0, 0, 0, 0]
        self.wsum = 0

    def change(
        self, old: tuple[float | None, ...], new: tuple[float | None, ...], w_old: float, w_new: float
    ) -> None:
        sums, n, scale = self.sums, self.n, self.SCALE
        a, b = old[0], new[0]
        if a is not None:
            sums[0] -= round(a * w_old * self.KV_SCALE)
            self.wsum -= round(w_old * self.KV_SCALE)
            n[0] -= 1
        if b is not None:
            sums[0] += round(b * w_new * self.KV_SCALE)
            self.wsum += round(w_new * self.KV_SCALE)
            n[0] += 1
        for i in range(1, 4):
            a, b = old[i], new[i]
            if a is not None:
                sums[i] -= round(a * scale)
                n[i] -= 1
            if b is not None:
                sums[i] += round(b * scale)
                n[i] += 1

    def kv(self) -> float:
        """The weighted mean KV usage over the engines with a reading; NaN when none."""
        return self.sums[0] / self.wsum if self.n[0] and self.wsum > 0 else math.nan

    def total(self, i: int) -> float | None:
        return self.sums[i] / self.SCALE if self.n[i] else None


# ----------------------------------------------------------------------------------------- ring buffer


class _Ring:
    """Points (t, v0, v1, ...) in a fixed-size ring; the newest ``capacity`` are always one contiguous slice.

    ``width`` value columns share one time column. Each point is written twice (at i and i + capacity) so
    ``view()`` never copies or wraps.
    """

    __slots__ = ("_t", "_v", "cap", "head", "n", "version")

    def __init__(self, capacity: int, width: int = 1) -> None:
        self.cap = capacity
        self._t = np.zeros(2 * capacity)
        self._v = [np.zeros(2 * capacity) for _ in range(width)]
        self.head = 0  # next write position, 0..cap-1
        self.n = 0
        self.version = 0  # bumps on every change

    def append(self, t: float, *values: float) -> None:
        h = self.head
        c = self.cap
        self._t[h] = self._t[h + c] = t
        for col, x in zip(self._v, values, strict=False):
            col[h] = col[h + c] = x
        self.head = h + 1 if h + 1 < c else 0
        self.version += 1
        if self.n < c:
            self.n += 1

    def set_last(self, t: float, *values: float) -> None:
        """Overwrite the newest point (its time too); append if the ring is empty."""
        if not self.n:
            self.append(t, *values)
            return
        i = self.head - 1 if self.head else self.cap - 1
        c = self.cap
        self._t[i] = self._t[i + c] = t
        for col, x in zip(self._v, values, strict=False):
            col[i] = col[i + c] = x
        self.version += 1

    def resized(self, capacity: int) -> _Ring:
        """A ring of ``capacity`` holding the newest points of this one (an engine's share of the point
        budget shrinks when more engines appear)."""
        out = _Ring(capacity, len(self._v))
        a, b = self._span()
        keep = min(b - a, capacity)
        t = self._t[b - keep : b]
        out._t[:keep] = t
        out._t[capacity : capacity + keep] = t
        for src, dst in zip(self._v, out._v, strict=True):
            v = src[b - keep : b]
            dst[:keep] = v
            dst[capacity : capacity + keep] = v
        out.n = keep
        out.head = keep % capacity
        out.version = self.version + 1
        return out

    def _span(self) -> tuple[int, int]:
        return (0, self.n) if self.n < self.cap else (self.head, self.head + self.cap)

    def view(self, col: int = 0) -> tuple[np.ndarray, np.ndarray]:
        a, b = self._span()
        return self._t[a:b], self._v[col][a:b]

    def add_back(self, k: int, dv: float) -> bool:
        """Add ``dv`` to the k-th newest value of column 0 (0 = newest); False if it has left the buffer."""
        if k >= self.n or k < 0:
            return False
        i = (self.head - 1 - k) % self.cap
        v = self._v[0]
        v[i] += dv
        v[i + self.cap] += dv
        self.version += 1
        return True

    def last(self, col: int = 0) -> float | None:
        if not self.n:
            return None
        return float(self._v[col][self.head - 1 + (self.cap if self.head == 0 else 0)])

    def last_t(self) -> float | None:
        if not self.n:
            return None
        return float(self._t[self.head - 1 + (self.cap if self.head == 0 else 0)])

    def window(self, t0: float, t1: float, col: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Read-only copies of the points with t0 <= t <= t1 (times are appended in order)."""
        t, v = self.view(col)
        i = int(np.searchsorted(t, t0, side="left"))
        j = int(np.searchsorted(t, t1, side="right"))
        tc, vc = t[i:j].copy(), v[i:j].copy()
        tc.flags.writeable = False
        vc.flags.writeable = False
        return tc, vc


# ----------------------------------------------------------------------------------------- snapshot parts


@dataclass(frozen=True, slots=True)
class Series:
    """One chart series inside the window. ``missing``: the engine does not serve it (draw "n/a")."""

    name: str
    t: np.ndarray  # session seconds, ascending, read-only
    v: np.ndarray  # values (NaN = no reading, e.g. a failed scrape), read-only
    last: float | None = None  # newest value, None if none (or NaN)
    missing: bool = False
    version: int = 0  # changes whenever the series changed (a chart redraws only then, or when time moves)


class BoardRow(NamedTuple):
    """One line of the request board. Times in seconds, ``None`` = has not happened."""

    rid: int
    cls: str
    phase: Phase
    age: float  # since the request started (since queued while queued); frozen at the end for ended ones
    reasoning: int
    answer: int
    ttft: float | None
    ttfvt: float | None
    straggler: str | None  # the reason, when the straggler rule flags it
    worker: int = 0  # the sender (RequestEvent.worker / RequestRecord.worker)
    node: str = ""  # its node, where known ("" = this host)


@dataclass(frozen=True, slots=True)
class Straggler:
    rid: int
    cls: str
    phase: Phase
    age: float
    reasoning: int
    reason: str
    finished: bool


@dataclass(frozen=True, slots=True)
class Progress:
    """Counts for a one-line progress display (the headless printer uses :meth:`line`)."""

    planned: int | None  # requests the run will send, when known
    sent: int
    done: int  # ended ok
    failed: int  # ended with an error or cancelled
    in_flight: int  # sent, not ended
    queued: int  # due, waiting on the client's concurrency cap
    tok_s: float  # client-side output tokens/s over the last few seconds
    elapsed: float  # session seconds

    def line(self) -> str:
        """E.g. ``sent 120/500 · done 100 · failed 2 · in flight 18 · 2,345 tok/s · 1:02``."""
        sent = f"sent {self.sent}" + (f"/{self.planned}" if self.planned is not None else "")
        parts = [sent, f"done {self.done}", f"failed {self.failed}", f"in flight {self.in_flight}"]
        if self.queued:
            parts.append(f"queued {self.queued}")
        parts.append(f"{self.tok_s:,.0f} tok/s")
        parts.append(format_elapsed(self.elapsed))
        return " · ".join(parts)


@dataclass(frozen=True, slots=True)
class ScrapeHealth:
    """Scrapes of every engine together."""

    ok: int  # successful scrapes
    failed: int
    last_error: str  # "" when no engine's last scrape failed
    last_latency: float | None  # seconds, last successful scrape
    counter_resets: int


@dataclass(frozen=True, slots=True)
class EngineRow:
    """One engine of the fleet as the fleet table shows it. Values are the last scrape's; None: no current
    reading (down, stale, not served)."""

    id: str  # EngineInfo.id / Scrape.engine_id
    name: str  # short form for display (the URL without its scheme)
    health: str  # "up" | "stale" | "restarted" | "down" | "no data"
    kv: float | None  # 0..1
    running: float | None
    waiting: float | None
    tok_s: float | None  # the engine's generation rate
    preemptions: float | None  # this session (counter increase since first seen); None: not served
    version: str
    kind: str
    error: str  # the last failed scrape's message ("" when up)
    gpus: int = 0  # GPUs reporting telemetry in its last scrape (0: none served)
    gpu_util: float | None = None  # percent, the mean over its GPUs
    gpu_mem_mib: float | None = None  # framebuffer used, MiB, summed over its GPUs
    gpu_power_w: float | None = None  # watts, summed over its GPUs


@dataclass(frozen=True, slots=True)
class FleetSpread:
    """Imbalance: the range across engines with a current reading (None: fewer than two)."""

    kv: tuple[float, float] | None
    running: tuple[float, float] | None
    waiting: tuple[float, float] | None


@dataclass(frozen=True, slots=True)
class Alert:
    """A warning in words. ``key`` identifies the kind; ``short`` fits in a header."""

    key: str  # "client-late" | "sim-drift" | "worker-died" | "clock-offset"
    short: str
    text: str


@dataclass(frozen=True, slots=True)
class CacheView:
    """Who held the KV cache at one moment: an :class:`~rllmtop.metrics.analysis.CacheMoment` (``kind``
    "now", "kv peak" or "preemptions"; holders from :func:`~rllmtop.metrics.analysis.cache_holders`).
    A request's prompt length arrives with its usage at its end: ``estimated`` holds the holders whose
    prompt is the mean of their class's ended requests so far (or unknown: 0)."""

    moment: CacheMoment
    estimated: frozenset[int]


@dataclass(frozen=True, slots=True)
class RequestTimeline:
    """The per-request timeline at ``t`` (:meth:`LiveView.timeline`): at most the rows asked for, in
    start order, as :class:`~rllmtop.metrics.analysis.RequestSpans` (the report's Gantt rows:
    ``spans.phase_bounds()`` gives each phase's begin and end; rows in flight end at ``t``, ``open``).

    Stalls (likely preemptions, :class:`~rllmtop.metrics.analysis.StallRule`): an ended request's from
    its chunk times (``request_spans``, as the report finds them); a request in flight's from the token
    counts seen so far (they arrive every 0.25 s): a gap longer than the rule's limit against its mean
    gap so far, in which it gained fewer tokens than that pace would have made past the limit (a replay
    catching up after a seek skips counts, but not tokens). ``stalling``: in flight and silent past the
    limit now (drawn to ``t``)."""

    t: float
    t0: float  # the left edge asked for
    spans: RequestSpans
    phase: tuple[Phase, ...]  # per row, now
    stalling: np.ndarray  # bool per row
    in_flight: int  # sent or queued, not ended (rows may show fewer)
    queued: int  # of those, not sent yet
    ended: int  # ended requests kept that overlap the window (rows may show fewer)
    now: CacheView  # the requests in flight holding the most tokens now
    moments: tuple[CacheView, ...]  # the last KV peak and the last preemption burst (time order)
    rule: str  # the moments' rule, in words (analysis.CACHE_MOMENTS_RULE, live)


@dataclass(frozen=True, slots=True)
class Summary:
    """The O(recent) numbers, computed by a :class:`SummaryJob` from the requests that had ended."""

    generation: int
    finished: int  # how many ended requests it covers
    asu: AsuSummary | None  # ``asu.recent``: percentiles cover only that many (None: every one)
    baselines: StragglerBaselines | None
    distribution: Distribution
    cost_s: float  # wall seconds it took


@dataclass(frozen=True, slots=True)
class ViewSnapshot:
    """Everything a screen shows at one instant. Immutable; safe to keep."""

    generation: int  # bumps when the stream starts over (Reset, or a new session_id): clear what you drew
    t: float  # session time of the snapshot
    window: float  # chart window, seconds: charts span [t - window, t]
    info: SessionInfo | None
    state: SessionState
    state_detail: str
    progress: Progress
    # charts (engine series: the fleet, or the engine in focus)
    series_version: int  # bumps whenever a chart point is added
    kv: Series  # 0..1
    preemptions: Series  # marks: t = scrape time, v = preemptions since the previous scrape
    preemptions_run: float | None  # preemptions this session (fleet or focus); None: not served
    running: Series
    waiting: Series
    reasoning_tps: Series  # client side, 1 s bins
    answer_tps: Series
    engine_tps: Series  # the engine's generation_tokens_total rate (attach mode without load shows this)
    arrivals: Series  # requests sent per second, 1 s bins
    completions: Series  # requests ended ok per second
    failures: Series  # requests failed per second
    missing: frozenset[str]  # neutral metric names not served (by any engine of the fleet / by the focus)
    scrape: ScrapeHealth
    # the fleet
    engines: tuple[EngineRow, ...]  # every engine seen or declared, in SessionInfo order then first seen
    focus: str | None  # the engine whose charts are shown (None: the fleet)
    spread: FleetSpread
    kv_weighting: str  # how the fleet's KV usage is formed, in words (analysis.kv_weights); "" for one
    kv_capacity_weighted: bool  # ... weighted by each engine's capacity (else equal weights)
    # the client
    client_lag: Series  # worst heartbeat lateness per interval, seconds (ClientHealth.lag_max)
    client_lag_worst: float | None  # worst over the session
    # requests
    board: tuple[BoardRow, ...]  # in flight (by rid) then recently ended
    workers: int  # distinct senders that sent requests this session (the board shows a worker column past 1)
    stragglers: tuple[Straggler, ...]  # in flight (oldest first), then finished (newest first)
    straggler_rule: str
    summary_version: int  # bumps when asu / distribution change
    asu: AsuSummary | None
    summary_recent: tuple[int, int] | None  # (recent, ended) when percentiles cover only the recent ones
    send_lag_p99: float | None
    client_bottleneck: bool  # send-lag p99 > CLIENT_BOTTLENECK_LAG_S
    distribution: Distribution
    alerts: tuple[Alert, ...]  # warnings in words: client late, simulator drift, worker died, clock offset
    # logs
    engine_log: tuple[LogEvent, ...]
    engine_log_total: int  # lines ever appended (this generation): draw only lines past what you drew
    events: tuple[LogEvent, ...]
    events_total: int


def format_elapsed(seconds: float) -> str:
    s = max(0, int(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def clock_note(info: SessionInfo | None) -> str:
    """What session seconds are, when it is not plain wall time: ``simulated clock (x10)``; else ""."""
    if info is None or info.clock != "simulated":
        return ""
    return f"simulated clock (x{info.speed:g})"


def engine_label(engine_id: str) -> str:
    """A short display name for an engine id: its URL without the scheme (``127.0.0.1:8001``)."""
    if not engine_id:
        return "engine"
    for prefix in ("http://", "https://"):
        if engine_id.startswith(prefix):
            return engine_id[len(prefix) :].rstrip("/")
    return engine_id


def worker_label(worker: int, node: str = "") -> str:
    """``3`` or ``3@node-a``: a sender worker as the board shows it."""
    return f"{worker}@{node}" if node else str(worker)


# ----------------------------------------------------------------------------------------- summary job


class SummaryJob:
    """The O(recent) part of a snapshot, detached from the view: safe to :meth:`run` in another thread (it
    only reads its own copies: a frozen :class:`~rllmtop.metrics.analysis.AsuState`, a list of immutable
    records and a dict of counts).

    ``state``: the LiveAsu's frozen moment (exact counts over the run, the recent requests as columns);
    ``in_flight``: the requests still running (censored observations for the straggler baselines);
    ``dist_records``: the recent ok requests (class, difficulty, reasoning length) for the distribution,
    ``dist_n``: the exact count per (class, difficulty), put back into its groups when ``dist_records``
    covers only the recent ones."""

    __slots__ = ("dist_n", "dist_records", "finished", "generation", "in_flight", "result", "state")

    def __init__(
        self,
        state: AsuState,
        generation: int,
        finished: int,
        in_flight: list[InFlight] | None = None,
        *,
        dist_records: list[RequestRecord] | None = None,
        dist_n: dict[tuple[str, str], int] | None = None,
    ) -> None:
        self.state = state
        self.in_flight = in_flight or []
        self.generation = generation
        self.finished = finished
        self.dist_records = dist_records or []
        self.dist_n = dist_n or {}
        self.result: Summary | None = None

    def run(self) -> Summary:
        t0 = time.perf_counter()
        st = self.state
        asu = st.summary() if st.ended else None
        baselines = st.baselines(self.in_flight) if len(st.columns) else None
        dist = reasoning_distribution(self.dist_records, DIST_BINS)
        if sum(self.dist_n.values()) > len(self.dist_records):  # recent shape, exact counts
            dist = Distribution(
                dist.edges,
                tuple(replace(g, n=self.dist_n.get((g.cls, g.difficulty), g.n)) for g in dist.groups),
            )
        self.result = Summary(self.generation, self.finished, asu, baselines, dist, time.perf_counter() - t0)
        return self.result


# ----------------------------------------------------------------------------------------- the view


class _Req:
    """A request as the view tracks it (mutable, private)."""

    __slots__ = (
        "answer",
        "cls",
        "difficulty",
        "limits",
        "node",
        "phase",
        "prompt",
        "reasoning",
        "rec",
        "rid",
        "stalls",
        "status",
        "straggler",
        "t_due",
        "t_end",
        "t_first_token",
        "t_first_visible",
        "t_queued",
        "t_sent",
        "t_start",
        "t_tok",
        "worker",
    )

    def __init__(self, rid: int, cls: str, t: float, worker: int = 0, node: str = "") -> None:
        self.rid = rid
        self.cls = cls
        self.worker = worker
        self.node = node
        self.phase = Phase.QUEUED
        self.t_queued = t
        self.t_sent: float | None = None
        self.t_start: float | None = None  # where its latencies start (RequestRecord.latency_start)
        self.t_first_token: float | None = None
        self.t_first_visible: float | None = None
        self.t_end: float | None = None
        self.reasoning = 0
        self.answer = 0
        self.straggler: str | None = None
        # (summary version, run-time limit, reasoning limit): StragglerBaselines.limits, renewed per summary
        self.limits: tuple[int, float, float] | None = None
        # the timeline's facts
        self.difficulty = ""
        self.t_due = t  # its schedule (t_dispatch), where its "queued" bar starts
        self.t_tok: float | None = None  # when its token count last moved
        self.stalls: list[tuple[float, float]] | None = None  # likely preemptions (None: none yet)
        self.prompt: int | None = None  # prompt tokens where known (a trace's target; usage at the end)
        self.rec: RequestRecord | None = None  # ended: the final record until its stalls are read
        self.status = RequestStatus.IN_FLIGHT

    def row(self, now: float, straggler: str | None = None) -> BoardRow:
        start = self.t_start if self.t_start is not None else self.t_queued
        end = self.t_end if self.t_end is not None else now
        t0 = self.t_start
        return BoardRow(
            self.rid,
            self.cls,
            self.phase,
            max(0.0, end - start),
            self.reasoning,
            self.answer,
            None if t0 is None or self.t_first_token is None else self.t_first_token - t0,
            None if t0 is None or self.t_first_visible is None else self.t_first_visible - t0,
            straggler or self.straggler,
            self.worker,
            self.node,
        )


_GAUGES = ("kv_cache_usage", "requests_running", "requests_waiting")
_COUNTERS = frozenset({"preemptions_total", "generation_tokens_total", "sim_drift_seconds"})
_GPU = frozenset({"gpu_util_percent", "gpu_fb_used_mib", "gpu_power_watts"})


class _Engine:
    """One engine as the view tracks it (mutable, private): its own series and its latest readings."""

    __slots__ = (
        "capacity",
        "counters",
        "drift",
        "drift_seen",
        "error",
        "g",
        "gen",
        "gpu",
        "id",
        "info",
        "kv",
        "label",
        "last_t",
        "marks",
        "missing",
        "n_ok",
        "ok",
        "preempt",
        "preempt_seen",
        "rate",
        "reset_t",
        "running",
        "stale",
        "tps",
        "waiting",
        "weight",
    )

    def __init__(self, engine_id: str, capacity: int) -> None:
        self.id = engine_id
        self.label = engine_label(engine_id)  # what the fleet table shows (the id never changes)
        self.info: EngineInfo | None = None
        self.g = _Ring(capacity, 3)  # kv, running, waiting
        self.marks = _Ring(capacity)  # preemptions per scrape (only scrapes with some)
        self.tps = _Ring(capacity)  # generation rate
        self.gen: deque[tuple[float, float]] = deque(maxlen=64)  # (t, tokens generated since first seen)
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.kv: float | None = None  # current readings (None: no current reading)
        self.running: float | None = None
        self.waiting: float | None = None
        self.rate: float | None = None
        self.missing: frozenset[str] = frozenset()
        self.preempt = 0.0
        self.preempt_seen = False
        self.drift = 0.0  # sim_drift_seconds increase this session
        self.drift_seen = False  # it serves sim_drift_seconds (a simulator)
        self.capacity: dict[str, float] = {}  # kv_total_blocks / kv_total_tokens, as last served
        self.weight = 1.0  # its weight in the fleet's KV usage (analysis.kv_weights)
        self.gpu: tuple[int, float | None, float | None, float | None] = (0, None, None, None)
        self.last_t: float | None = None
        self.ok = True
        self.stale = False
        self.error = ""
        self.reset_t: float | None = None
        self.n_ok = 0

    @property
    def readings(self) -> tuple[float | None, ...]:
        return (self.kv, self.running, self.waiting, self.rate)

    def shrink(self, capacity: int) -> None:
        """Keep at most ``capacity`` points per series (the newest)."""
        if self.g.cap > capacity:
            self.g = self.g.resized(capacity)
            self.marks = self.marks.resized(capacity)
            self.tps = self.tps.resized(capacity)

    def health(self, now: float) -> str:
        if self.last_t is None:
            return "no data"
        if not self.ok:
            return "down"
        if self.stale or now - self.last_t > STALE_AFTER_S:
            return "stale"
        if self.reset_t is not None and now - self.reset_t < RESTART_SHOW_S:
            return "restarted"
        return "up"

    def row(self, now: float, info: SessionInfo | None) -> EngineRow:
        ei = self.info
        version = ei.version if ei is not None else ""
        kind = ei.kind if ei is not None else "unknown"
        if ei is None and info is not None and not info.engines:  # a schema-1 session: its one engine
            version, kind = info.engine_version, info.engine_kind
        health = self.health(now)
        current = health in ("up", "restarted")
        gpus, util, mem, power = self.gpu if current else (0, None, None, None)
        return EngineRow(
            self.id,
            self.label,
            health,
            self.kv if current else None,
            self.running if current else None,
            self.waiting if current else None,
            self.rate if current else None,
            self.preempt if self.preempt_seen else None,
            version,
            kind,
            self.error if not self.ok else "",
            gpus,
            util,
            mem,
            power,
        )


class LiveView:
    """Consumes every record of a session (:meth:`handle`) and answers :meth:`snapshot`.

    ``rule``: the straggler rule (default :class:`StragglerRule`). ``window``: initial chart window in
    seconds (change it with :meth:`set_window` / :meth:`zoom`). ``planned``: requests the run will send, if
    the caller knows (otherwise ``SessionInfo.provenance.planned_requests``). ``capacity``: points kept per
    fleet series (default: 1 h at 4 scrapes/s; each engine's own series keep a share of that). ``auto_summary``:
    compute the O(n) summary inside :meth:`snapshot` (set False when the caller runs :meth:`summary_job`
    itself). ``summary_interval``: least wall seconds between two summary computations (it also waits ten
    times the last computation's cost, so a huge run cannot eat the CPU); 0 computes whenever something
    ended. ``recent``: ended requests the percentiles, stragglers and distribution cover (see the module
    doc). ``wall``: the wall clock the throttles read (tests pass their own).
    """

    def __init__(
        self,
        rule: StragglerRule | None = None,
        window: float = 120.0,
        *,
        planned: int | None = None,
        capacity: int = 4 * 3600,
        auto_summary: bool = True,
        summary_interval: float = 1.0,
        recent: int = RECENT_REQUESTS,
        wall: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rule = rule or StragglerRule()
        self.stall_rule = StallRule()  # the timeline's likely preemptions (the report's rule)
        self.window = float(window)
        self._planned_arg = planned
        self.capacity = capacity
        self.auto_summary = auto_summary
        self.summary_interval = summary_interval
        self.recent = max(1, int(recent))
        self._wall = wall
        self.generation = 0
        self.focus: str | None = None  # kept across a Reset (the same fleet comes back)
        self._reset()

    # ------------------------------------------------------------------ state

    def _reset(self) -> None:
        cap = self.capacity
        rate_cap = int(max(WINDOWS) / RATE_STEP) + 8
        self.info: SessionInfo | None = None
        self._planned_info: int | None = None
        self.state = SessionState.STARTING
        self.state_detail = ""
        self._t_last = 0.0
        self._t_end: float | None = None  # when the session reached a terminal state: the clock stops there
        # engines and the fleet
        self._engines: dict[str, _Engine] = {}
        self._fleet = _Ring(cap, 3)  # kv, running, waiting
        self._fleet_marks = _Ring(cap)
        self._fleet_tps = _Ring(cap)
        self._agg = _Fleet()
        self._weights_dirty = False  # an engine came or its capacity changed: re-weigh the fleet's KV
        self._kv_how = ""  # analysis.kv_weights' words
        self._round: set[str] = set()  # engines that reported into the newest fleet point
        self._tps_in_round = False
        self._fleet_preempt = 0.0
        self._preempt_seen = False
        self.missing: frozenset[str] = frozenset()  # not served by any engine of the fleet
        self._scrape_ok = 0
        self._scrape_failed = 0
        self._scrape_error = ""
        self._failing: set[str] = set()  # engines whose last scrape failed
        self._scrape_latency: float | None = None
        self._counter_resets = 0
        # client-side rate bins
        self._bin = 0  # index of the open bin
        self._acc = [0.0, 0.0, 0.0, 0.0, 0.0]  # reasoning tok, answer tok, arrivals, completions, failures
        self._rates = [_Ring(rate_cap) for _ in range(5)]
        self.series_version = 0
        # the client's heartbeat
        self._lag = _Ring(HEALTH_POINTS)
        self._lag_worst: float | None = None
        self._worst_health: ClientHealth | None = None
        self._late: deque[ClientHealth] = deque(maxlen=LATE_INTERVALS_KEPT)  # over CLIENT_DELAY_S
        self._late_version = 0
        self._last_health: dict[int, ClientHealth] = {}  # each sender's newest interval
        self._client: ClientDelayVerdict | None = None
        self._client_key: tuple[int, int, int] | None = None
        self._client_wall = -math.inf
        self._drift: SimDriftVerdict | None = None
        self._drift_key: tuple[object, ...] | None = None
        self._alerted: set[str] = set()
        # sender workers
        self._workers: set[int] = set()  # that sent requests
        self._nodes: dict[int, str] = {}  # worker -> node (WorkerEvent, RequestRecord.node)
        self._died: dict[int, WorkerEvent] = {}
        self._offsets: dict[int, WorkerEvent] = {}  # the newest clock offset each worker reported
        # requests
        self._reqs: dict[int, _Req] = {}
        self._t_seen = 0.0  # latest request-event time (ages of in-flight requests for the summary job)
        self._ended: deque[tuple[float, _Req]] = deque()
        self._ended_rids: dict[int, int] = {}  # rid -> how many entries of _ended hold it
        self._n_finished = 0
        self._goodput: dict[str, float] | None = None
        self._asu = LiveAsu(self.rule, recent=self.recent)
        self._state: AsuState | None = None  # the newest frozen moment of _asu
        self._dist: deque[RequestRecord] = deque(maxlen=self.recent)  # recent ok: cls, difficulty, reasoning
        self._dist_n: dict[tuple[str, str], int] = {}
        self._sent = 0
        self._done = 0
        self._failed = 0
        self._fin_stragglers: deque[Straggler] = deque(maxlen=FINISHED_STRAGGLERS)
        # the timeline and who filled the cache
        self._tl_ended: deque[_Req] = deque(maxlen=TIMELINE_ENDED)
        self._prompt_mean: dict[str, tuple[int, int]] = {}  # class -> (prompt tokens summed, requests)
        self._kv_high = False  # inside a stretch at or above the KV threshold
        self._kv_ever_high = False
        self._kv_peak = -1.0  # the highest reading of the current stretch (or of the run, never high)
        self._pre_win: deque[tuple[float, float]] = deque()  # (t, preemptions) of the last burst window
        self._pre_sum = 0.0
        self._burst_max = 0.0  # the busiest window of the current burst
        self._moments: dict[str, CacheView] = {}  # "kv peak" | "preemptions" -> the newest
        self._moment_t: dict[str, float] = {}  # when each was last captured
        # summary
        self._summary: Summary | None = None
        self._summary_version = 0
        self._summary_wall = -math.inf
        self._summary_pending = False
        # logs
        self._engine_log: deque[LogEvent] = deque(maxlen=LOG_LINES)
        self._engine_total = 0
        self._events: deque[LogEvent] = deque(maxlen=LOG_LINES)
        self._events_total = 0

    @property
    def planned(self) -> int | None:
        """Requests the run will send: the caller's count, else the scenario provenance's; None: unknown."""
        return self._planned_arg if self._planned_arg is not None else self._planned_info

    # ------------------------------------------------------------------ input

    def handle(self, rec: Record) -> None:
        """Consume one record (any type). O(1) amortised; a Scrape costs O(its samples + engines)."""
        if isinstance(rec, RequestEvent):
            self._on_request(rec)
        elif isinstance(rec, Scrape):
            self._on_scrape(rec)
        elif isinstance(rec, ClientHealth):
            self._on_health(rec)
        elif isinstance(rec, WorkerEvent):
            self._on_worker(rec)
        elif isinstance(rec, LogEvent):
            self._on_log(rec)
        elif isinstance(rec, StateEvent):
            self.state = rec.state
            self.state_detail = rec.detail
            self._advance(rec.t)
            self._t_end = rec.t if rec.state in TERMINAL_STATES else None
            if rec.state in (SessionState.FAILED, SessionState.ENGINE_DIED):
                last = self._events[-1] if self._events else None
                said = (
                    last is not None
                    and last.level == "error"
                    and bool(rec.detail)
                    and rec.detail in last.text
                )
                if not said:  # unless the source already logged exactly why
                    text = f"session {rec.state.value}: {rec.detail}".rstrip(": ")
                    self._event(rec.t, "rllmtop", "error", text)
        elif isinstance(rec, SessionInfo):
            if self.info is not None and rec.session_id != self.info.session_id:
                self._start_over()  # a different session: start over
            self.info = rec  # the same one again: facts learned later (engine version, model, engines)
            prov = rec.provenance
            self._planned_info = prov.planned_requests if prov is not None else None
            for ei in rec.engines:  # Prometheus discovery publishes it again with more engines
                self._engine(ei.id).info = ei
            self._set_goodput(rec)
        elif isinstance(rec, Reset):
            self._start_over()

    def _set_goodput(self, info: SessionInfo) -> None:
        """The per-request SLOs goodput is judged on, from ``SessionInfo.extra`` ("goodput": a JSON object
        of GOODPUT_KEYS to seconds, as the session writes it). A value that cannot be read is said once in
        the event log; goodput is then not shown."""
        text = dict(info.extra).get("goodput")
        goodput: dict[str, float] | None = None
        if text:
            try:
                parsed = json.loads(text)
                if not isinstance(parsed, dict):
                    raise ValueError("not a JSON object")
                LiveAsu(goodput=parsed)  # validates: keys and positive seconds
                goodput = {str(k): float(v) for k, v in parsed.items()}
            except (ValueError, TypeError) as e:
                self._event(self._t_last, "rllmtop", "warning", f"goodput SLOs not shown: {_one_line(e)}")
        if goodput == self._goodput:
            return
        self._goodput = goodput
        if self._asu.ended == 0:
            self._asu = LiveAsu(self.rule, recent=self.recent, goodput=goodput)
        else:  # learned after requests were counted: counting them again is not possible (they are gone)
            self._event(
                self._t_last, "rllmtop", "warning",
                "the goodput SLOs changed mid-session: the live goodput keeps the first ones (the report "
                "uses the recording's)",
            )  # fmt: skip

    def _start_over(self) -> None:
        self.generation += 1
        self._reset()

    def _advance(self, t: float) -> None:
        if t > self._t_last:
            self._t_last = t
        b = int(t // RATE_STEP)
        if b > self._bin:
            self._flush(b)

    def _flush(self, upto: int) -> None:
        """Close bins before ``upto`` (the open bin gets the accumulated counts, empty ones 0)."""
        acc = self._acc
        t_bin = self._bin * RATE_STEP
        for ring, a in zip(self._rates, acc, strict=True):
            ring.append(t_bin, a / RATE_STEP)
        self._acc = [0.0, 0.0, 0.0, 0.0, 0.0]
        gap = upto - self._bin - 1
        if gap > 0:  # empty bins (a quiet stretch, or a jump forward in a replay): at most a buffer's worth
            first = max(self._bin + 1, upto - self._rates[0].cap)
            for b in range(first, upto):
                for ring in self._rates:
                    ring.append(b * RATE_STEP, 0.0)
        self._bin = upto
        self.series_version += 1

    def _count(self, i: int, t: float, amount: float) -> None:
        """Add to rate series ``i`` in the bin holding ``t`` (a late record lands in its own closed bin)."""
        b = int(t // RATE_STEP)
        if b >= self._bin:
            self._acc[i] += amount
        elif self._rates[i].add_back(self._bin - 1 - b, amount / RATE_STEP):
            self.series_version += 1

    # ------------------------------------------------------------------ requests

    def _on_request(self, ev: RequestEvent) -> None:
        self._advance(ev.t)
        if ev.t > self._t_seen:
            self._t_seen = ev.t
        kind = ev.kind
        req = self._reqs.get(ev.rid)
        if req is None:
            if kind not in (RequestKind.QUEUED, RequestKind.SENT) and ev.rid in self._ended_rids:
                return  # a straggling event for a request that already ended
            worker = ev.record.worker if ev.record is not None and ev.record.worker else ev.worker
            req = _Req(ev.rid, ev.cls, ev.t, worker, self._nodes.get(worker, ""))
            self._reqs[ev.rid] = req
        elif ev.cls and not req.cls:
            req.cls = ev.cls
        if kind is RequestKind.QUEUED:
            return
        if kind is RequestKind.DONE or kind is RequestKind.FAILED:
            self._on_end(req, ev)
            return
        if req.t_sent is None:  # SENT, or a stream whose SENT we did not see
            rec = ev.record if kind is RequestKind.SENT else None
            self._mark_sent(req, ev.t, rec)
        if kind is RequestKind.SENT:
            return
        self._tokens(req, ev.t, ev.reasoning_tokens, ev.answer_tokens)
        if kind is RequestKind.FIRST_TOKEN:
            req.t_first_token = ev.t
        elif kind is RequestKind.FIRST_VISIBLE:
            req.t_first_visible = ev.t
            if req.t_first_token is None:
                req.t_first_token = ev.t
        if req.t_first_visible is not None or req.answer > 0:
            req.phase = Phase.ANSWERING
        elif req.t_first_token is not None or req.reasoning > 0:
            req.phase = Phase.THINKING

    def _mark_sent(self, req: _Req, t: float, rec: RequestRecord | None = None) -> None:
        req.t_sent = rec.t_sent if rec is not None and rec.t_sent is not None else t
        start = rec.latency_start if rec is not None else None
        req.t_start = start if start is not None else req.t_sent
        if rec is not None:
            req.node = rec.node or req.node
            self._facts(req, rec)
        req.phase = Phase.WAITING
        self._sent += 1
        self._workers.add(req.worker)
        self._count(2, req.t_sent, 1)

    def _facts(self, req: _Req, rec: RequestRecord) -> None:
        """What the timeline needs of a request's record (its starting facts, or its final ones)."""
        req.difficulty = rec.difficulty or req.difficulty
        due = rec.t_dispatch if rec.t_dispatch is not None else rec.t_scheduled
        if math.isfinite(due) and due <= req.t_queued:
            req.t_due = due
        p = rec.prompt_tokens if rec.prompt_tokens is not None else rec.target_input_tokens
        if p is not None:
            req.prompt = p

    def _tokens(self, req: _Req, t: float, reasoning: int, answer: int) -> None:
        """Cumulative counts in; the increase goes to the tokens/s bins (counts never go down). A gap
        without tokens that the stall rule calls long is kept as a likely preemption (see
        :class:`RequestTimeline`)."""
        dr = reasoning - req.reasoning
        da = answer - req.answer
        if dr <= 0 and da <= 0:
            return
        last = req.t_tok
        if last is not None and req.t_first_token is not None:
            gap = t - last
            limit, pace = self._stall_limit(req, last)
            if gap > limit and max(dr, 0) + max(da, 0) < (gap - limit) / pace:
                stalls = req.stalls if req.stalls is not None else []
                stalls.append((last, t))
                req.stalls = stalls[-STALLS_KEPT:]
        req.t_tok = t
        if dr > 0:
            self._count(0, t, dr)
            req.reasoning = reasoning
        if da > 0:
            self._count(1, t, da)
            req.answer = answer

    def _stall_limit(self, req: _Req, t_last: float) -> tuple[float, float]:
        """(the longest gap without new tokens the stall rule allows this request, its mean gap per token
        so far). Counts arrive once per progress tick (PROGRESS_INTERVAL wall seconds: that many times
        the speed in session seconds in a time-lapse run), so a tick's worth is allowed on top."""
        rule = self.stall_rule
        ft = req.t_first_token if req.t_first_token is not None else t_last
        pace = max(t_last - ft, 0.0) / max(1, req.reasoning + req.answer - 1)
        pace = max(pace, 1e-6)
        info = self.info
        tick = PROGRESS_INTERVAL * (info.speed if info is not None and info.clock == "simulated" else 1.0)
        return max(rule.factor * pace, rule.min_s) + tick, pace

    def _on_end(self, req: _Req, ev: RequestEvent) -> None:
        rec = ev.record
        if rec is not None:
            if req.t_sent is None and rec.t_sent is not None:
                self._mark_sent(req, rec.t_sent, rec)
            self._tokens(req, ev.t, rec.reasoning_tokens, rec.answer_tokens)
            req.reasoning, req.answer = rec.reasoning_tokens, rec.answer_tokens  # final (maybe reconciled)
            req.t_sent = rec.t_sent if rec.t_sent is not None else req.t_sent
            start = rec.latency_start
            req.t_start = start if start is not None else req.t_start
            req.t_first_token = rec.t_first_token if rec.t_first_token is not None else req.t_first_token
            if rec.t_first_visible is not None:
                req.t_first_visible = rec.t_first_visible
            if rec.node:
                req.node = rec.node
        else:
            self._tokens(req, ev.t, ev.reasoning_tokens, ev.answer_tokens)
        ok = ev.kind is RequestKind.DONE and (rec is None or rec.status is RequestStatus.OK)
        req.phase = Phase.DONE if ok else Phase.FAILED
        req.t_end = ev.t
        req.status = (
            rec.status if rec is not None and rec.ended else RequestStatus.OK if ok else RequestStatus.ERROR
        )
        if rec is not None:
            self._facts(req, rec)
            if rec.gaps:
                req.rec = rec  # its exact stalls are read when the timeline draws it
                req.stalls = None
        self._tl_ended.append(req)
        del self._reqs[req.rid]
        if ok:
            self._done += 1
            self._count(3, ev.t, 1)
        else:
            self._failed += 1
            self._count(4, ev.t, 1)
            detail = ev.detail or (rec.error if rec is not None and rec.error else "") or "failed"
            self._event(ev.t, "client", "warning", f"request {req.rid} ({req.cls or '?'}) failed: {detail}")
        if rec is not None:
            self._keep(rec)
        # judged once, against the baselines known now
        base = self._summary.baselines if self._summary is not None else None
        if ok and base is not None:
            run_time = rec.e2e if rec is not None else None
            why = base.why(req.cls, run_time, req.reasoning, req.t_start)
            if why is not None:
                req.straggler = why
                age = run_time if run_time is not None else req.row(ev.t).age
                self._fin_stragglers.append(
                    Straggler(req.rid, req.cls, req.phase, age, req.reasoning, why, True)
                )
        self._ended.append((ev.t, req))
        self._ended_rids[req.rid] = self._ended_rids.get(req.rid, 0) + 1
        if len(self._ended) > MAX_ENDED_ROWS:  # a replay catching up ends thousands at once
            self._trim_ended(ev.t)

    def _keep(self, rec: RequestRecord) -> None:
        """An ended request into the LiveAsu (which keeps ~110 bytes of columns for it, its gap blob
        summed for TPOT/ITL) and, if ok, its class, difficulty and reasoning length for the distribution."""
        self._n_finished += 1
        self._asu.add(rec)
        if rec.prompt_tokens is not None and (
            rec.cls in self._prompt_mean or len(self._prompt_mean) < PROMPT_CLASSES
        ):
            total, n = self._prompt_mean.get(rec.cls, (0, 0))
            self._prompt_mean[rec.cls] = (total + rec.prompt_tokens, n + 1)
        if rec.status is RequestStatus.OK and rec.t_done is not None:
            key = (rec.cls, rec.difficulty)
            self._dist_n[key] = self._dist_n.get(key, 0) + 1
            self._dist.append(
                RequestRecord(rec.rid, rec.cls, rec.difficulty, reasoning_tokens=rec.reasoning_tokens)
            )

    def _trim_ended(self, now: float) -> None:
        ended = self._ended
        rids = self._ended_rids
        while ended and (ended[0][0] < now - BOARD_LINGER_S or len(ended) > MAX_ENDED_ROWS):
            _, req = ended.popleft()
            n = rids.get(req.rid, 0) - 1
            if n > 0:
                rids[req.rid] = n
            else:
                rids.pop(req.rid, None)

    # ------------------------------------------------------------------ engines

    def _engine(self, engine_id: str) -> _Engine:
        e = self._engines.get(engine_id)
        if e is None:
            n = len(self._engines) + 1
            share = self._share(n)
            e = _Engine(engine_id, share)
            self._engines[engine_id] = e
            self._weights_dirty = True
            if share < self._share(n - 1):  # an engine came (mid-run too): the others give up points
                for other in self._engines.values():
                    other.shrink(share)
        return e

    def _share(self, n: int) -> int:
        """Points each of ``n`` engines keeps per series: the budget shared, within [min, capacity]."""
        share = ENGINE_POINT_BUDGET * self.capacity // max(1, n)
        return max(ENGINE_MIN_POINTS, min(self.capacity, share))

    def _engine_for(self, s: Scrape) -> _Engine:
        eid = s.engine_id
        if not eid and eid not in self._engines:
            info = self.info
            if info is not None and len(info.engines) == 1:
                eid = info.engines[0].id  # a source that does not tag its scrapes: the session's one engine
        return self._engine(eid)

    def _on_scrape(self, s: Scrape) -> None:
        self._advance(s.t)
        self.series_version += 1
        e = self._engine_for(s)
        e.last_t = s.t
        before = e.readings
        if not s.ok:
            self._scrape_failed += 1
            err = s.error or "metrics scrape failed"
            if e.ok:  # log the transition, not every failed poll
                self._event(s.t, "scrape", "error", err)
            e.ok = False
            e.error = self._scrape_error = err
            self._failing.add(e.id)
            e.kv = e.running = e.waiting = e.rate = None
            e.g.append(s.t, math.nan, math.nan, math.nan)  # a gap in the chart, not a 0
            self._fleet_point(e, before, s.t)
            return
        if not e.ok:
            self._event(s.t, "scrape", "info", "metrics scrape recovered")
            self._failing.discard(e.id)
            if not self._failing:
                self._scrape_error = ""
        e.ok = True
        e.error = ""
        e.n_ok += 1
        if e.n_ok == 1:  # it answered: it takes part in the fleet's KV weights
            self._weights_dirty = True
        e.stale = s.stale
        self._scrape_ok += 1
        self._scrape_latency = s.latency_s
        if s.counter_reset:
            self._counter_resets += 1
            e.reset_t = s.t
        kv_sum = 0.0
        kv_n = 0
        running: float | None = None
        waiting: float | None = None
        preempt = 0.0
        preempt_seen = False
        gen_seen = False
        gen_delta: float | None = None
        counters = e.counters
        isfinite = math.isfinite
        gpu: dict[str, list[float]] | None = None
        capacity: dict[str, float] | None = None
        for m in s.samples:
            name = m.name
            value = m.value
            if not isfinite(value):
                continue  # a value the edge should have refused: one sample lost, nothing else
            if name == "kv_cache_usage":  # several DP ranks of one engine: the mean; queues: the sum
                kv_sum += value
                kv_n += 1
            elif name in _GPU:  # one sample per GPU (label "gpu")
                if gpu is None:
                    gpu = {}
                gpu.setdefault(name, []).append(value)
            elif name in _CAPACITY:  # summed over DP ranks, as analysis reads it
                if capacity is None:
                    capacity = {}
                capacity[name] = capacity.get(name, 0.0) + value
            elif name == "requests_running":
                running = (running or 0.0) + value
            elif name == "requests_waiting":
                waiting = (waiting or 0.0) + value
            elif name in _COUNTERS:
                key = (name, m.labels)
                prev = counters.get(key)
                counters[key] = value
                inc = None if prev is None else (value - prev if value >= prev else value)
                if name == "preemptions_total":
                    preempt_seen = True
                    preempt += inc or 0.0
                elif name == "generation_tokens_total":
                    gen_seen = True
                    if inc is not None:
                        gen_delta = (gen_delta or 0.0) + inc
                else:
                    e.drift_seen = True
                    e.drift += inc or 0.0
        if capacity is not None and capacity != e.capacity:
            e.capacity = capacity
            self._weights_dirty = True
        e.gpu = _gpu_reading(gpu)
        missing = frozenset(s.missing)
        if missing != e.missing:
            e.missing = missing
            self._update_missing()
        elif e.n_ok == 1:
            self._update_missing()
        if s.stale:  # the source's data for this engine is old: not a current reading
            e.kv = e.running = e.waiting = e.rate = None
            e.g.append(s.t, math.nan, math.nan, math.nan)
        else:
            e.kv = kv_sum / kv_n if kv_n else None
            e.running, e.waiting = running, waiting
            e.g.append(
                s.t,
                math.nan if e.kv is None else e.kv,
                math.nan if running is None else running,
                math.nan if waiting is None else waiting,
            )
        if preempt_seen:
            e.preempt_seen = self._preempt_seen = True
        if preempt > 0:
            e.preempt += preempt
            self._fleet_preempt += preempt
            e.marks.append(s.t, preempt)
            self._fleet_marks.append(s.t, preempt)
        if gen_seen and not s.stale:
            self._engine_rate(e, s.t, gen_delta)
        self._fleet_point(e, before, s.t)
        self._watch_cache(s.t, preempt)

    def _update_missing(self) -> None:
        sets = [e.missing for e in self._engines.values() if e.n_ok]
        self.missing = frozenset.intersection(*sets) if sets else frozenset()

    def _engine_rate(self, e: _Engine, t: float, delta: float | None) -> None:
        """An engine's generation rate over the last second or more (one scrape interval is too noisy:
        engines bump the counter in steps)."""
        gen = e.gen
        total = (gen[-1][1] if gen else 0.0) + (delta or 0.0)
        if gen and delta is not None:
            while len(gen) > 1 and t - gen[1][0] >= ENGINE_RATE_SPAN:
                gen.popleft()
            t0, v0 = gen[0]
            if t > t0:
                e.rate = (total - v0) / (t - t0)
                e.tps.append(t, e.rate)
        gen.append((t, total))

    def _reweigh(self) -> None:
        """Each engine's weight in the fleet's KV usage, from ``analysis.kv_weights`` over the engines that
        answered (their newest capacity readings), and the running sums again. O(engines); only when an
        engine came or a capacity changed."""
        self._weights_dirty = False
        answered = [e for e in self._engines.values() if e.n_ok]
        per = {
            e.id: [MetricSample(e.last_t or 0.0, name, v) for name, v in e.capacity.items()] for e in answered
        }
        weights, how = kv_weights(per) if per else ({}, "")
        self._kv_how = how if len(self._engines) > 1 else ""
        agg = _Fleet()
        for e in self._engines.values():
            e.weight = weights.get(e.id, 1.0)
            agg.change((None,) * 4, e.readings, e.weight, e.weight)
        self._agg = agg

    def _fleet_point(self, e: _Engine, before: tuple[float | None, ...], t: float) -> None:
        """The fleet series: one point per round of scrapes (a round ends when an engine reports again), so
        64 engines at 4 Hz make 4 points a second, not 256. KV: weighted by ``analysis.kv_weights``; queues
        and rates: sums over the engines with a current reading. O(1) per scrape (running sums), O(engines)
        when the weights change."""
        if self._weights_dirty:
            self._reweigh()  # from the engines' current readings: this one's included
        else:
            self._agg.change(before, e.readings, e.weight, e.weight)
        agg = self._agg
        running, waiting, tps = agg.total(1), agg.total(2), agg.total(3)
        point = (
            agg.kv(),
            math.nan if running is None else running,
            math.nan if waiting is None else waiting,
        )
        engine_id = e.id
        new_round = engine_id in self._round or not self._fleet.n
        if new_round:
            self._round = {engine_id}
            self._fleet.append(t, *point)
            self._tps_in_round = False
        else:
            self._round.add(engine_id)
            self._fleet.set_last(t, *point)
        if tps is not None:
            if self._tps_in_round:
                self._fleet_tps.set_last(t, tps)
            else:
                self._fleet_tps.append(t, tps)
                self._tps_in_round = True

    # ------------------------------------------------------------------ who filled the cache

    def _watch_cache(self, t: float, preempt: float) -> None:
        """The report's cache moments (``analysis.cache_moments``' rule and defaults), watched live on the
        fleet's readings: the highest KV reading of the newest stretch at or above the threshold (the
        run's highest while it never got there), and the busiest reading of the newest burst of
        preemptions (at least ``min_burst`` in ``burst_window`` seconds). At each, the top holders then
        (O(in flight): at most every MOMENT_EVERY_S while one climbs, a KV peak again only when
        MOMENT_KV_STEP higher, so a climbing KV costs at most ~200 captures however long it climbs)."""
        kv = self._agg.kv()
        win = self._pre_win
        if preempt > 0:
            win.append((t, preempt))
            self._pre_sum += preempt
        while win and win[0][0] <= t - _MOMENT["burst_window"]:
            self._pre_sum -= win.popleft()[1]
        if not win:
            self._pre_sum = 0.0  # no float residue
        if not math.isnan(kv):
            high = kv >= _MOMENT["kv_threshold"]
            if high and not self._kv_high:  # a new stretch: its own peak
                self._kv_peak = -1.0
                self._moment_t.pop("kv peak", None)
            self._kv_high = high
            self._kv_ever_high = self._kv_ever_high or high
            rising = (high or not self._kv_ever_high) and kv >= self._kv_peak + MOMENT_KV_STEP
            if rising and self._capture("kv peak", t, kv):
                self._kv_peak = kv  # the reading captured: its moment's KV
        busy = self._pre_sum >= _MOMENT["min_burst"]
        if not busy:
            self._burst_max = 0.0
        elif self._pre_sum > self._burst_max:
            if self._burst_max == 0.0:
                self._moment_t.pop("preemptions", None)
            self._burst_max = self._pre_sum
            self._capture("preemptions", t, None if math.isnan(kv) else kv)

    def _capture(self, kind: str, t: float, kv: float | None) -> bool:
        """The holders now, as the newest moment of ``kind`` (False: too soon after the last one)."""
        last = self._moment_t.get(kind)
        if last is not None and t - last < MOMENT_EVERY_S:
            return False
        self._moment_t[kind] = t
        self._moments[kind] = self._cache_view(kind, t, kv, self._pre_sum, _MOMENT["top"])
        return True

    def _prompt_of(self, req: _Req) -> tuple[int, bool]:
        """(its prompt tokens, estimated): known, else its class's mean so far (0 when none ended yet)."""
        if req.prompt is not None:
            return req.prompt, False
        total, n = self._prompt_mean.get(req.cls, (0, 0))
        return (round(total / n) if n else 0), True

    def _stalling(self, req: _Req, now: float) -> bool:
        """In flight, streaming, and silent for longer than the stall rule allows: likely preempted."""
        last = req.t_tok
        if last is None or req.t_first_token is None or req.t_end is not None:
            return False
        return now - last > self._stall_limit(req, last)[0]

    def _cache_view(self, kind: str, t: float, kv: float | None, pre: float, top: int) -> CacheView:
        """The requests in flight holding the most tokens at ``t`` (prompt + tokens so far), through
        ``analysis.cache_holders``; those stalling (likely preempted: holding no KV) last and not counted
        as holding. O(in flight + top log top)."""
        live = [r for r in self._reqs.values() if r.t_start is not None and r.t_start <= t]
        held = 0
        keyed = []
        for r in live:
            p, _ = self._prompt_of(r)
            tokens = p + r.reasoning + r.answer
            stalled = self._stalling(r, t)
            if not stalled:
                held += tokens
            keyed.append((stalled, -tokens, r.rid, r))
        best = heapq.nsmallest(top, keyed, key=lambda k: k[:3])
        stalled_rids = {k[2] for k in best if k[0]}
        recs = []
        estimated = set()
        for _, _, rid, r in best:
            p, est = self._prompt_of(r)
            if est:
                estimated.add(rid)
            recs.append(
                RequestRecord(
                    rid=rid,
                    cls=r.cls,
                    difficulty=r.difficulty,
                    t_start=r.t_start,
                    t_sent=r.t_sent,
                    t_first_token=r.t_first_token,
                    t_first_visible=r.t_first_visible,
                    reasoning_tokens=r.reasoning,
                    answer_tokens=r.answer,
                    prompt_tokens=p,
                    status=RequestStatus.IN_FLIGHT,
                )
            )
        holders = [replace(h, stalled=True) if h.rid in stalled_rids else h for h in cache_holders(recs, t)]
        holders.sort(key=_holder_order)
        moment = CacheMoment(t, kind, kv, pre, len(live), held, tuple(holders))
        return CacheView(moment, frozenset(estimated))

    # ------------------------------------------------------------------ the timeline

    def timeline(self, now: float, rows: int, t0: float | None = None) -> RequestTimeline:
        """The per-request timeline at session time ``now`` over ``[t0, now]`` (default: the chart
        window), at most ``rows`` rows: the requests in flight (the longest-running first when they do not
        all fit; a quarter of the rows is left to ended ones if any), then the most recently ended of the
        last :data:`TIMELINE_ENDED` that overlap the window; shown in start order. With the holders now
        and at the last cache moments. Cost: O(in flight + rows log rows + the chunks of the ended rows
        drawn for the first time)."""
        now = self._clamp_now(now)
        if t0 is None:
            t0 = now - self.window
        rows = max(0, int(rows))
        open_ = list(self._reqs.values())
        ended = [r for r in reversed(self._tl_ended) if r.t_end is not None and r.t_end >= t0]
        n_open = len(open_)
        room_open = rows - min(len(ended), rows // 4) if n_open > rows else rows
        if n_open > room_open:
            open_ = heapq.nsmallest(room_open, open_, key=lambda r: (r.t_due, r.rid))
        shown = open_ + ended[: max(0, rows - len(open_))]
        shown.sort(key=lambda r: (r.t_due, r.rid))
        spans, stalling = self._spans(shown, now)
        moments = tuple(sorted(self._moments.values(), key=lambda c: c.moment.t))
        kv = self._agg.kv()
        return RequestTimeline(
            now,
            t0,
            spans,
            tuple(r.phase for r in shown),
            stalling,
            n_open,
            sum(1 for r in self._reqs.values() if r.t_sent is None),
            len(ended),
            self._cache_view("now", now, kv if math.isfinite(kv) else None, self._pre_sum, _MOMENT["top"]),
            moments,
            CACHE_MOMENTS_LIVE,
        )

    def _spans(self, reqs: list[_Req], now: float) -> tuple[RequestSpans, np.ndarray]:
        n = len(reqs)
        nan = math.nan
        classes: dict[str, int] = {}
        srow: list[int] = []
        s0: list[float] = []
        s1: list[float] = []
        stalling = np.zeros(n, dtype=bool)
        cols = np.full((8, n), nan)
        for i, r in enumerate(reqs):
            classes.setdefault(r.cls, len(classes))
            if r.rec is not None:  # ended: the report's stalls, from its chunk times (once)
                sp = request_spans((r.rec,), rule=self.stall_rule)
                r.stalls = list(zip(sp.stall_t0.tolist(), sp.stall_t1.tolist(), strict=True)) or None
                r.rec = None
            for a, b in r.stalls or ():
                srow.append(i)
                s0.append(a)
                s1.append(b)
            if self._stalling(r, now):
                stalling[i] = True
                srow.append(i)
                s0.append(r.t_tok if r.t_tok is not None else now)
                s1.append(now)
            p, _ = self._prompt_of(r)
            c = cols[:, i]
            c[0] = r.t_due
            c[1] = nan if r.t_start is None else r.t_start
            c[2] = nan if r.t_first_token is None else r.t_first_token
            c[3] = nan if r.t_first_visible is None else r.t_first_visible
            c[4] = now if r.t_end is None else r.t_end
            c[5] = p
            c[6] = r.reasoning
            c[7] = r.answer
        status = np.array([_STATUS.get(r.status, 1) for r in reqs], dtype=np.int8)
        spans = RequestSpans(
            rid=np.array([r.rid for r in reqs], dtype=np.int64),
            classes=tuple(classes),
            cls=np.array([classes[r.cls] for r in reqs], dtype=np.int32),
            difficulty=tuple(r.difficulty for r in reqs),
            status=status,
            finish=tuple(r.status.value for r in reqs),
            t_queued=cols[0],
            t_start=cols[1],
            t_first_token=cols[2],
            t_first_visible=cols[3],
            t_end=cols[4],
            open=np.array([r.t_end is None for r in reqs], dtype=bool),
            prompt_tokens=cols[5],
            reasoning_tokens=cols[6],
            answer_tokens=cols[7],
            stall_row=np.asarray(srow, dtype=np.int64),
            stall_t0=np.asarray(s0, dtype=float),
            stall_t1=np.asarray(s1, dtype=float),
            rule=self.stall_rule,
        )
        return spans, stalling

    # ------------------------------------------------------------------ the client

    def _on_health(self, h: ClientHealth) -> None:
        lag = h.lag_max
        if not math.isfinite(lag) or lag < 0:
            return
        self._advance(h.t)
        last = self._lag.last_t()
        self._lag.append(h.t if last is None else max(h.t, last), lag)  # workers' intervals interleave
        self.series_version += 1
        if self._lag_worst is None or lag > self._lag_worst:
            self._lag_worst = lag
            self._worst_health = h
        self._last_health[h.worker] = h
        if lag > CLIENT_DELAY_S:
            self._late.append(h)
            self._late_version += 1

    def _client_verdict(self, now: float) -> ClientDelayVerdict | None:
        """``analysis.client_delay_verdict`` over bounded data: the late heartbeat intervals kept (plus
        each sender's newest and the worst, which only say who sent heartbeats and how late the worst
        was) and the requests the view knows: the recent ended ones (LiveAsu's columns) and those in flight
        (their life so far: start .. now). None while no interval was late (nothing to say). Recomputed
        at once when a new late interval arrived, else at most once a wall second when requests moved."""
        if not self._late:
            return None
        key = (self._late_version, self._asu.ended, self._sent)
        if key == self._client_key:
            return self._client
        if (
            self._client_key is not None
            and key[0] == self._client_key[0]
            and self._wall() - self._client_wall < VERDICT_INTERVAL_S
        ):
            return self._client
        self._client_key = key
        self._client_wall = self._wall()
        hs: list[ClientHealth] = list(self._late)
        hs.extend(self._last_health.values())
        if self._worst_health is not None:
            hs.append(self._worst_health)
        info = self.info
        self._client = client_delay_verdict(
            hs,
            RequestColumns.concat([self._frozen().columns, self._in_flight_columns(now)]),
            threshold=CLIENT_DELAY_S,
            clock=info.clock if info is not None else "wall",
            speed=info.speed if info is not None else 1.0,
        )
        return self._client

    def _frozen(self) -> AsuState:
        """The LiveAsu's newest frozen moment (frozen again only when a request ended since)."""
        st = self._state
        if st is None or st.ended != self._asu.ended:
            st = self._state = self._asu.freeze()
        return st

    def _in_flight_columns(self, now: float) -> RequestColumns:
        """The requests on the wire as columns, their life so far ending now (``t_done`` = now: the
        verdict takes a request without an end as a point at its start)."""
        reqs = [r for r in self._reqs.values() if r.t_sent is not None]
        if not reqs:
            return RequestColumns.empty()
        return RequestColumns.from_mapping(
            {
                "cls": [r.cls for r in reqs],
                "status": [RequestStatus.IN_FLIGHT] * len(reqs),
                "t_start": np.array([r.t_start if r.t_start is not None else r.t_sent for r in reqs]),
                "t_sent": np.array([r.t_sent for r in reqs], dtype=float),
                "t_done": np.full(len(reqs), now),
                "worker": [r.worker for r in reqs],
            }
        )

    def _drift_verdict(self, now: float) -> SimDriftVerdict | None:
        """``analysis.sim_drift_verdict`` over each simulator's drift this session (the view keeps the
        counter's increase, handed over as two readings), the run so far as its duration."""
        sims = [e for e in self._engines.values() if e.drift_seen]
        if not sims:
            return None
        key = (tuple(e.drift for e in sims), int(now))
        if key != self._drift_key:
            self._drift_key = key
            per = {
                (e.id if len(sims) > 1 else ""): [
                    MetricSample(0.0, "sim_drift_seconds", 0.0),
                    MetricSample(now, "sim_drift_seconds", e.drift),
                ]
                for e in sims
            }
            self._drift = sim_drift_verdict(per, now)
        return self._drift

    # ------------------------------------------------------------------ workers

    def _on_worker(self, w: WorkerEvent) -> None:
        self._advance(w.t)
        if w.node:
            self._nodes[w.worker] = w.node
        where = _worker_where(w.worker, w.node or self._nodes.get(w.worker, ""))
        if w.state == "died":
            self._died[w.worker] = w
            detail = f": {w.detail}" if w.detail else ""
            self._event(w.t, "rllmtop", "error", f"{where} died{detail}")
        if w.clock_offset is not None and math.isfinite(w.clock_offset):
            self._offsets[w.worker] = w

    def _worker_alerts(self) -> list[Alert]:
        return [
            Alert(key, short, text)
            for key, short, text in _worker_texts(self._died, self._offsets, self._nodes)
        ]

    def _alerts(self, now: float) -> tuple[Alert, ...]:
        out: list[Alert] = []
        client = self._client_verdict(now)
        if client is not None and client.fired:
            out.append(Alert("client-late", "client late", client.sentence))
        drift = self._drift_verdict(now)
        if drift is not None and drift.fired:
            out.append(Alert("sim-drift", "sim drift", drift.sentence))
        out.extend(self._worker_alerts())
        for a in out:
            if a.key not in self._alerted:  # said once in the event log too
                self._alerted.add(a.key)
                self._event(now, "rllmtop", "warning", a.text)
        return tuple(out)

    def alerts(self, now: float) -> tuple[Alert, ...]:
        """The warnings in words at session time ``now`` (what :meth:`snapshot` puts in ``alerts``), without
        the rest of a snapshot: cheap (the verdicts are cached and throttled). For the headless printer."""
        return self._alerts(self._clamp_now(now))

    # ------------------------------------------------------------------ logs

    def _on_log(self, ev: LogEvent) -> None:
        self._advance(ev.t)
        if ev.source == "engine":
            self._engine_log.append(ev)
            self._engine_total += 1
        # the event log: our own warnings and errors, and the engine's errors
        if ev.level == "error" or (ev.level == "warning" and ev.source != "engine"):
            self._events.append(ev)
            self._events_total += 1

    def _event(self, t: float, source: str, level: str, text: str) -> None:
        self._events.append(LogEvent(t, source, level, text))
        self._events_total += 1

    # ------------------------------------------------------------------ controls

    def set_planned(self, n: int | None) -> None:
        """How many requests the run will send (kept across a Reset); None: from SessionInfo's provenance."""
        self._planned_arg = n

    def set_window(self, seconds: float) -> None:
        self.window = float(min(max(seconds, 1.0), max(WINDOWS)))

    def zoom(self, step: int) -> float:
        """Move ``step`` places along :data:`WINDOWS` (+1 = wider). Returns the new window."""
        i = min(range(len(WINDOWS)), key=lambda k: abs(WINDOWS[k] - self.window))
        self.window = WINDOWS[min(max(i + step, 0), len(WINDOWS) - 1)]
        return self.window

    def set_focus(self, engine_id: str | None) -> None:
        """Show this engine's own series in the engine charts (None: the fleet's)."""
        self.focus = engine_id

    def cycle_focus(self, step: int = 1) -> str | None:
        """Fleet -> first engine -> ... -> last engine -> fleet (``step`` -1 goes backwards). Only with two
        or more engines (with one, the fleet is that engine). Returns the new focus."""
        ids = list(self._engines)
        if len(ids) < 2:
            self.focus = None
            return None
        order: list[str | None] = [None, *ids]
        i = order.index(self.focus) if self.focus in order else 0
        self.focus = order[(i + step) % len(order)]
        return self.focus

    # ------------------------------------------------------------------ summary

    def summary_job(self) -> SummaryJob | None:
        """A job computing the O(recent) summary if a request ended since the last one and enough wall time
        has passed; None otherwise (or while a job is out). Run it (any thread), then :meth:`install` it.
        Making it costs O(recent) here (LiveAsu.freeze); running it O(recent log recent)."""
        n = self._n_finished
        if self._summary_pending:
            return None
        if self._summary is not None and self._summary.finished == n:
            return None
        if self._summary is None and n == 0:
            return None
        if self.summary_interval > 0:
            cost = self._summary.cost_s if self._summary is not None else 0.0
            if self._wall() - self._summary_wall < max(self.summary_interval, 10 * cost):
                return None
        self._summary_pending = True
        t = self._t_seen
        open_now = [
            InFlight(r.cls, t - start, r.reasoning, start)
            for r in self._reqs.values()
            if r.t_sent is not None
            for start in (r.t_start if r.t_start is not None else r.t_sent,)
        ]
        return SummaryJob(
            self._frozen(),
            self.generation,
            n,
            open_now,
            dist_records=list(self._dist),
            dist_n=dict(self._dist_n),
        )

    def install(self, job: SummaryJob) -> None:
        """Adopt a finished job's result (ignored if a new session started meanwhile)."""
        if job.generation != self.generation:
            return
        self._summary_pending = False
        self._summary_wall = self._wall()
        if job.result is None:
            return
        self._summary = job.result
        self._summary_version += 1

    def refresh_summary(self) -> None:
        """Compute the summary now (inline), if a request ended since the last one."""
        self._summary_wall = -math.inf
        job = self.summary_job()
        if job is not None:
            job.run()
            self.install(job)

    # ------------------------------------------------------------------ output

    def snapshot(self, now: float) -> ViewSnapshot:
        """The view at session time ``now`` (cost: O(in flight + engines + points in the window)). Once
        the session ended (a terminal state), time stands still at its end."""
        now = self._clamp_now(now)
        self._advance(now)  # close finished bins (a record arriving late is added to its own bin)
        if self.auto_summary:
            job = self.summary_job()
            if job is not None:
                job.run()
                self.install(job)
        t0 = now - self.window
        summary = self._summary
        base = summary.baselines if summary is not None else None
        rows: list[BoardRow] = []
        in_flight_strag: list[Straggler] = []
        version = self._summary_version
        for req in self._reqs.values():
            why = None
            if base is not None and req.t_sent is not None:
                start = req.t_start if req.t_start is not None else req.t_sent
                lim = req.limits
                if lim is None or lim[0] != version:  # the cheap check, renewed once per summary
                    lim_t, lim_r = base.limits(req.cls, start)
                    lim = req.limits = (version, lim_t, lim_r)
                age = max(0.0, now - start)
                if age > lim[1] or req.reasoning > lim[2]:
                    why = base.why(req.cls, age, req.reasoning, start)
            row = req.row(now, why)
            if why is not None:
                in_flight_strag.append(
                    Straggler(req.rid, req.cls, req.phase, row.age, req.reasoning, why, False)
                )
            rows.append(row)
        self._trim_ended(now)
        rows.extend(r.row(now) for _, r in self._ended)
        in_flight_strag.sort(key=lambda s: -s.age)
        stragglers = (*in_flight_strag, *reversed(self._fin_stragglers))
        asu = summary.asu if summary is not None else None
        lag = asu.overall.send_lag.get(99) if asu is not None else None
        recent = (asu.recent, asu.overall.requests) if asu is not None and asu.recent is not None else None
        # the engine charts: the fleet, or the engine in focus
        focus = self._engines.get(self.focus) if self.focus is not None else None
        if focus is not None:
            gauges, marks, tps, missing = focus.g, focus.marks, focus.tps, focus.missing
            preempt_run = focus.preempt if focus.preempt_seen else None
        else:
            gauges, marks, tps, missing = self._fleet, self._fleet_marks, self._fleet_tps, self.missing
            preempt_run = self._fleet_preempt if self._preempt_seen else None
        kv, running, waiting = self._gauge_series(gauges, t0, now, missing)
        info = self.info
        engines = tuple(e.row(now, info) for e in self._engines.values())
        return ViewSnapshot(
            generation=self.generation,
            t=now,
            window=self.window,
            info=info,
            state=self.state,
            state_detail=self.state_detail,
            progress=self.progress(now),
            series_version=self.series_version,
            kv=kv,
            preemptions=self._series("preemptions_total", marks, t0, now, missing),
            preemptions_run=None if "preemptions_total" in missing else preempt_run,
            running=running,
            waiting=waiting,
            reasoning_tps=self._series("reasoning_tps", self._rates[0], t0, now),
            answer_tps=self._series("answer_tps", self._rates[1], t0, now),
            engine_tps=self._series("generation_tokens_total", tps, t0, now, missing),
            arrivals=self._series("arrivals", self._rates[2], t0, now),
            completions=self._series("completions", self._rates[3], t0, now),
            failures=self._series("failures", self._rates[4], t0, now),
            missing=missing,
            scrape=ScrapeHealth(
                self._scrape_ok,
                self._scrape_failed,
                self._scrape_error,
                self._scrape_latency,
                self._counter_resets,
            ),
            engines=engines,
            focus=focus.id if focus is not None else None,
            spread=_spread(engines),
            kv_weighting=self._kv_how,
            kv_capacity_weighted=self._kv_how.startswith("weighted by"),
            client_lag=self._series("client_lag_max", self._lag, t0, now),
            client_lag_worst=self._lag_worst,
            board=tuple(rows),
            workers=len(self._workers),
            stragglers=stragglers,
            straggler_rule=self.rule.describe(),
            summary_version=self._summary_version,
            asu=asu,
            summary_recent=recent,
            send_lag_p99=lag,
            client_bottleneck=lag is not None and lag > CLIENT_BOTTLENECK_LAG_S,
            distribution=summary.distribution if summary is not None else EMPTY_DIST,
            alerts=self._alerts(now),
            engine_log=tuple(self._engine_log),
            engine_log_total=self._engine_total,
            events=tuple(self._events),
            events_total=self._events_total,
        )

    def progress(self, now: float) -> Progress:
        """Just the progress counts (cheap: O(in flight)); for a headless progress line."""
        now = self._clamp_now(now)
        self._advance(now)
        in_flight = sum(1 for r in self._reqs.values() if r.t_sent is not None)
        return Progress(
            self.planned,
            self._sent,
            self._done,
            self._failed,
            in_flight,
            len(self._reqs) - in_flight,
            self._tok_s(),
            now,
        )

    def _clamp_now(self, now: float) -> float:
        now = max(now, self._t_last)
        return now if self._t_end is None else min(now, max(self._t_end, self._t_last))

    def progress_line(self, now: float) -> str:
        """``self.progress(now).line()``, with the state in front (``running · sent 12/40 · ...``)."""
        return f"{self.state.value} · {self.progress(now).line()}"

    def _series(
        self,
        name: str,
        ring: _Ring,
        t0: float,
        t1: float,
        missing: frozenset[str] = frozenset(),
        col: int = 0,
    ) -> Series:
        t, v = ring.window(t0, t1, col)
        last = ring.last(col)
        if last is not None and math.isnan(last):
            last = None
        gone = name in missing
        return Series(name, t, v, None if gone else last, gone, ring.version)

    def _gauge_series(
        self, ring: _Ring, t0: float, t1: float, missing: frozenset[str]
    ) -> tuple[Series, Series, Series]:
        """KV, running, waiting: three columns of one ring, sharing one copy of the times."""
        t, _ = ring.view(0)
        i = int(np.searchsorted(t, t0, side="left"))
        j = int(np.searchsorted(t, t1, side="right"))
        a, _ = ring._span()
        tc = t[i:j].copy()
        tc.flags.writeable = False
        out = []
        for col, name in enumerate(_GAUGES):
            vc = ring._v[col][a + i : a + j].copy()
            vc.flags.writeable = False
            last = ring.last(col)
            if last is not None and math.isnan(last):
                last = None
            gone = name in missing
            out.append(Series(name, tc, vc, None if gone else last, gone, ring.version))
        return out[0], out[1], out[2]

    def _tok_s(self) -> float:
        """Client-side output tokens/s over the last (up to) 5 closed bins."""
        _, r = self._rates[0].view()
        _, a = self._rates[1].view()
        k = min(5, r.size)
        return float(r[-k:].sum() + a[-k:].sum()) / k if k else 0.0

    @property
    def finished(self) -> int:
        """Requests that ended (ok or not) this session."""
        return self._n_finished


def _spread(engines: tuple[EngineRow, ...]) -> FleetSpread:
    def rng(vals: list[float]) -> tuple[float, float] | None:
        return (min(vals), max(vals)) if len(vals) >= 2 else None

    return FleetSpread(
        rng([e.kv for e in engines if e.kv is not None]),
        rng([e.running for e in engines if e.running is not None]),
        rng([e.waiting for e in engines if e.waiting is not None]),
    )


def _gpu_reading(
    gpu: Mapping[str, list[float]] | None,
) -> tuple[int, float | None, float | None, float | None]:
    """(GPUs, mean utilisation %, framebuffer used MiB summed, power W summed) of one scrape's GPU samples."""
    if not gpu:
        return (0, None, None, None)
    util, mem, power = gpu.get("gpu_util_percent"), gpu.get("gpu_fb_used_mib"), gpu.get("gpu_power_watts")
    n = max(len(v) for v in gpu.values())
    return (
        n,
        sum(util) / len(util) if util else None,
        sum(mem) if mem else None,
        sum(power) if power else None,
    )


def _worker_where(worker: int, node: str) -> str:
    return f"worker {worker}" + (f" (node {node})" if node else "")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


def _worker_texts(
    died: Mapping[int, WorkerEvent], offsets: Mapping[int, WorkerEvent], nodes: Mapping[int, str]
) -> list[tuple[str, str, str]]:
    """(key, short, sentence) of the worker warnings: sender workers that died, a worker clock off by more
    than :data:`CLOCK_OFFSET_WARN_S`. ``died`` / ``offsets``: the last such event per worker."""
    out: list[tuple[str, str, str]] = []
    if died:
        parts = []
        for w in list(died.values())[:3]:
            node = w.node or nodes.get(w.worker, "")
            parts.append(
                f"{_worker_where(w.worker, node)} at {format_elapsed(w.t)}"
                + (f" ({w.detail})" if w.detail else "")
            )
        more = f" and {len(died) - 3} more" if len(died) > 3 else ""
        n = len(died)
        text = f"{n} sender worker{'s' if n > 1 else ''} died: " + "; ".join(parts) + more
        out.append(("worker-died", "worker died", text))
    off = [w for w in offsets.values() if abs(w.clock_offset or 0.0) > CLOCK_OFFSET_WARN_S]
    if off:
        w = max(off, key=lambda x: abs(x.clock_offset or 0.0))
        o = w.clock_offset or 0.0
        where = _worker_where(w.worker, w.node or nodes.get(w.worker, ""))
        text = (
            f"{where}'s clock is {fmt.seconds(abs(o))} {'ahead of' if o > 0 else 'behind'} the session's "
            f"(warned above {fmt.seconds(CLOCK_OFFSET_WARN_S)}): send lag and TTFT of its requests carry "
            "up to that error"
        )
        if len(off) > 1:
            text += f" ({len(off)} workers off by more)"
        out.append(("clock-offset", "clock offset", text))
    return out


def worker_warnings(events: Iterable[WorkerEvent]) -> list[str]:
    """The worker warnings the live view shows, rebuilt from recorded worker events (``replay --headless``)."""
    died: dict[int, WorkerEvent] = {}
    offsets: dict[int, WorkerEvent] = {}
    nodes: dict[int, str] = {}
    for w in events:
        if w.node:
            nodes[w.worker] = w.node
        if w.state == "died":
            died[w.worker] = w
        if w.clock_offset is not None and math.isfinite(w.clock_offset):
            offsets[w.worker] = w
    return [text for _, _, text in _worker_texts(died, offsets, nodes)]
