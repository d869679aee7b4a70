"""The live view model: every record of a session in, immutable snapshots for a screen out.

:class:`LiveView` is a session sink (``session.add_sink(view.handle)``). ``handle`` is O(1) amortised per
record; ``snapshot(now)`` returns a :class:`ViewSnapshot` that the TUI draws and that the headless printer
reads its progress line from (``snap.progress.line()``). Live, headless and replay feed the very same
records, so the numbers are the same everywhere. A ``Reset`` record (replay seeking backwards) or a
SessionInfo with a new ``session_id`` clears everything. Imports neither textual nor rich.

What a snapshot holds:

- chart series on one time axis ``[t - window, t]``: KV-cache usage (0..1) with preemption marks, engine
  running vs waiting, output tokens/s split reasoning vs answer (client side, from token-count deltas, in
  1 s bins) plus the engine's own generation rate, arrivals vs completions per second (1 s bins);
- the in-flight board (plus requests that ended in the last few seconds), stragglers with their reason and
  the rule's text, the ASU summary, the reasoning-length distribution per class/difficulty;
- progress counts, state, session info, engine log lines and an event log of errors.

Numbers come from :mod:`rllmtop.metrics.analysis`. The O(n) ones (ASU summary, straggler baselines,
distribution) are computed by a :class:`SummaryJob` only when a request ended since the last one, at most
about once a second; a UI may run the job in a thread (``auto_summary=False``, :meth:`LiveView.summary_job`,
:meth:`LiveView.install`), everything else gets it inline.

A metric the engine does not serve (``Scrape.missing``) is reported as missing (``Series.missing``), never
as 0. Series live in fixed-size ring buffers: memory stays bounded however long the session runs.
"""

from __future__ import annotations

import math
import re
import time
import tomllib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from rllmtop.events import (
    TERMINAL_STATES,
    LogEvent,
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
)
from rllmtop.metrics.analysis import (
    EMPTY_DIST,
    AsuSummary,
    DistGroup,
    Distribution,
    StragglerBaselines,
    StragglerRule,
    asu_summary,
    counter_increase,
    reasoning_distribution,
)

DIST_BINS = 64

__all__ = [
    "CLIENT_BOTTLENECK_LAG_S",
    "LOG_LINES",
    "WINDOWS",
    "BoardRow",
    "DistGroup",
    "Distribution",
    "LiveView",
    "Progress",
    "ScrapeHealth",
    "Series",
    "Straggler",
    "Summary",
    "SummaryJob",
    "ViewSnapshot",
    "format_elapsed",
]

WINDOWS: tuple[float, ...] = (30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
"""Chart windows (seconds) that ``+``/``-`` step through; the largest is what the buffers keep."""

CLIENT_BOTTLENECK_LAG_S = 0.010
"""Send-lag p99 above this means the client itself is late sending: the load is not what was asked."""

RATE_STEP = 1.0  # seconds per bin of the client-side rate series
BOARD_LINGER_S = 5.0  # ended requests stay on the board this long
MAX_ENDED_ROWS = 500  # ... but no more than this many of them
ENGINE_RATE_SPAN = 1.0  # seconds the engine's generation rate is averaged over
LOG_LINES = 500  # engine log / event log lines kept
FINISHED_STRAGGLERS = 200  # finished stragglers kept for the list


# ----------------------------------------------------------------------------------------- ring buffer


class _Ring:
    """(t, v) points in a fixed-size ring; the newest ``capacity`` are always one contiguous slice.

    Each point is written twice (at i and i + capacity) so ``view()`` never copies or wraps.
    """

    __slots__ = ("_t", "_v", "cap", "head", "n", "version")

    def __init__(self, capacity: int) -> None:
        self.cap = capacity
        self._t = np.zeros(2 * capacity)
        self._v = np.zeros(2 * capacity)
        self.head = 0  # next write position, 0..cap-1
        self.n = 0
        self.version = 0  # bumps on every change

    def append(self, t: float, v: float) -> None:
        h = self.head
        self._t[h] = self._t[h + self.cap] = t
        self._v[h] = self._v[h + self.cap] = v
        self.head = h + 1 if h + 1 < self.cap else 0
        self.version += 1
        if self.n < self.cap:
            self.n += 1

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < self.cap:
            return self._t[: self.n], self._v[: self.n]
        return self._t[self.head : self.head + self.cap], self._v[self.head : self.head + self.cap]

    def add_back(self, k: int, dv: float) -> bool:
        """Add ``dv`` to the k-th newest value (0 = newest); False if it has left the buffer."""
        if k >= self.n or k < 0:
            return False
        i = (self.head - 1 - k) % self.cap
        self._v[i] += dv
        self._v[i + self.cap] += dv
        self.version += 1
        return True

    def last(self) -> float | None:
        if not self.n:
            return None
        return float(self._v[self.head - 1 + (self.cap if self.head == 0 else 0)])

    def window(self, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
        """Read-only copies of the points with t0 <= t <= t1 (times are appended in order)."""
        t, v = self.view()
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
    age: float  # since sent (since queued while queued); frozen at the end for ended ones
    reasoning: int
    answer: int
    ttft: float | None
    ttfvt: float | None
    straggler: str | None  # the reason, when the straggler rule flags it


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

    planned: int | None  # requests the scenario will send, when known
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
    ok: int  # successful scrapes
    failed: int
    last_error: str  # "" when the last scrape was fine
    last_latency: float | None  # seconds, last successful scrape
    counter_resets: int


@dataclass(frozen=True, slots=True)
class Summary:
    """The O(n) numbers, computed by a :class:`SummaryJob` from the requests that had ended."""

    generation: int
    finished: int  # how many ended requests it covers
    asu: AsuSummary | None
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
    # charts
    series_version: int  # bumps whenever a chart point is added
    kv: Series  # 0..1
    preemptions: Series  # marks: t = scrape time, v = preemptions since the previous scrape
    running: Series
    waiting: Series
    reasoning_tps: Series  # client side, 1 s bins
    answer_tps: Series
    engine_tps: Series  # the engine's generation_tokens_total rate (attach mode without load shows this)
    arrivals: Series  # requests sent per second, 1 s bins
    completions: Series  # requests ended ok per second
    failures: Series  # requests failed per second
    missing: frozenset[str]  # neutral metric names the engine does not serve
    scrape: ScrapeHealth
    # requests
    board: tuple[BoardRow, ...]  # in flight (by rid) then recently ended
    stragglers: tuple[Straggler, ...]  # in flight (oldest first), then finished (newest first)
    straggler_rule: str
    summary_version: int  # bumps when asu / distribution change
    asu: AsuSummary | None
    send_lag_p99: float | None
    client_bottleneck: bool  # send-lag p99 > CLIENT_BOTTLENECK_LAG_S
    distribution: Distribution
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


# ----------------------------------------------------------------------------------------- summary job


class SummaryJob:
    """The O(n) part of a snapshot, detached from the view: safe to :meth:`run` in another thread (it only
    reads its own copy of the finished records, which are immutable)."""

    __slots__ = ("finished", "generation", "in_flight", "records", "result", "rule")

    def __init__(
        self,
        records: list[RequestRecord],
        rule: StragglerRule,
        generation: int,
        finished: int,
        in_flight: list[tuple[str, float, int]] | None = None,
    ) -> None:
        self.records = records
        self.in_flight = in_flight or []
        self.rule = rule
        self.generation = generation
        self.finished = finished
        self.result: Summary | None = None

    def run(self) -> Summary:
        t0 = time.perf_counter()
        recs = self.records
        asu = asu_summary(recs, self.rule) if recs else None
        baselines = self.rule.baselines(recs, self.in_flight) if recs else None
        dist = reasoning_distribution(recs, DIST_BINS)
        self.result = Summary(self.generation, self.finished, asu, baselines, dist, time.perf_counter() - t0)
        return self.result


# ----------------------------------------------------------------------------------------- the view


class _Req:
    """A request as the view tracks it (mutable, private)."""

    __slots__ = (
        "answer",
        "cls",
        "phase",
        "reasoning",
        "rid",
        "straggler",
        "t_end",
        "t_first_token",
        "t_first_visible",
        "t_queued",
        "t_sent",
    )

    def __init__(self, rid: int, cls: str, t: float) -> None:
        self.rid = rid
        self.cls = cls
        self.phase = Phase.QUEUED
        self.t_queued = t
        self.t_sent: float | None = None
        self.t_first_token: float | None = None
        self.t_first_visible: float | None = None
        self.t_end: float | None = None
        self.reasoning = 0
        self.answer = 0
        self.straggler: str | None = None

    def row(self, now: float) -> BoardRow:
        start = self.t_sent if self.t_sent is not None else self.t_queued
        end = self.t_end if self.t_end is not None else now
        sent = self.t_sent
        return BoardRow(
            self.rid,
            self.cls,
            self.phase,
            max(0.0, end - start),
            self.reasoning,
            self.answer,
            None if sent is None or self.t_first_token is None else self.t_first_token - sent,
            None if sent is None or self.t_first_visible is None else self.t_first_visible - sent,
            self.straggler,
        )


class LiveView:
    """Consumes every record of a session (:meth:`handle`) and answers :meth:`snapshot`.

    ``rule``: the straggler rule (default :class:`StragglerRule`). ``window``: initial chart window in
    seconds (change it with :meth:`set_window` / :meth:`zoom`). ``planned``: requests the run will send,
    if the caller knows (otherwise read from the scenario text in SessionInfo, when it says). ``capacity``:
    points kept per engine series (default: 1 h at 4 scrapes/s). ``auto_summary``: compute the O(n)
    summary inside :meth:`snapshot` (set False when the caller runs :meth:`summary_job` itself).
    ``summary_interval``: least wall seconds between two summary computations (it also waits ten times the
    last computation's cost, so a huge run cannot eat the CPU); 0 computes whenever something ended.
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
        wall: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rule = rule or StragglerRule()
        self.window = float(window)
        self._planned_arg = planned
        self.capacity = capacity
        self.auto_summary = auto_summary
        self.summary_interval = summary_interval
        self._wall = wall
        self.generation = 0
        self._reset()

    # ------------------------------------------------------------------ state

    def _reset(self) -> None:
        cap = self.capacity
        rate_cap = int(max(WINDOWS) / RATE_STEP) + 8
        self.info: SessionInfo | None = None
        self.planned = self._planned_arg
        self.state = SessionState.STARTING
        self.state_detail = ""
        self._t_last = 0.0
        self._t_end: float | None = None  # when the session reached a terminal state: the clock stops there
        # engine series
        self._kv = _Ring(cap)
        self._running = _Ring(cap)
        self._waiting = _Ring(cap)
        self._preempt = _Ring(cap)
        self._engine_tps = _Ring(cap)
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._gen: deque[tuple[float, float]] = deque(maxlen=64)  # (t, tokens generated since start)
        self.missing: frozenset[str] = frozenset()
        self._scrape_ok = 0
        self._scrape_failed = 0
        self._scrape_error = ""
        self._scrape_latency: float | None = None
        self._counter_resets = 0
        # client-side rate bins
        self._bin = 0  # index of the open bin
        self._acc = [0.0, 0.0, 0.0, 0.0, 0.0]  # reasoning tok, answer tok, arrivals, completions, failures
        self._rates = [_Ring(rate_cap) for _ in range(5)]
        self.series_version = 0
        # requests
        self._reqs: dict[int, _Req] = {}
        self._t_seen = 0.0  # latest request-event time (ages of in-flight requests for the summary job)
        self._ended: deque[tuple[float, _Req]] = deque()
        self._finished: list[RequestRecord] = []
        self._sent = 0
        self._done = 0
        self._failed = 0
        self._fin_stragglers: deque[Straggler] = deque(maxlen=FINISHED_STRAGGLERS)
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

    # ------------------------------------------------------------------ input

    def handle(self, rec: Record) -> None:
        """Consume one record (any type). O(1) amortised; a Scrape costs O(its samples)."""
        if isinstance(rec, RequestEvent):
            self._on_request(rec)
        elif isinstance(rec, Scrape):
            self._on_scrape(rec)
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
            self.info = rec  # the same one again: facts learned later (engine version, model)
            if self.planned is None:
                self.planned = _planned_from(rec.scenario_text)
        elif isinstance(rec, Reset):
            self._start_over()

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

    def _on_request(self, ev: RequestEvent) -> None:
        self._advance(ev.t)
        if ev.t > self._t_seen:
            self._t_seen = ev.t
        kind = ev.kind
        req = self._reqs.get(ev.rid)
        if req is None:
            if kind not in (RequestKind.QUEUED, RequestKind.SENT) and self._recently_ended(ev.rid):
                return  # a straggling event for a request that already ended
            req = _Req(ev.rid, ev.cls, ev.t)
            self._reqs[ev.rid] = req
        elif ev.cls and not req.cls:
            req.cls = ev.cls
        if kind is RequestKind.QUEUED:
            return
        if kind is RequestKind.DONE or kind is RequestKind.FAILED:
            self._on_end(req, ev)
            return
        if req.t_sent is None:  # SENT, or a stream whose SENT we did not see
            self._mark_sent(req, ev.t)
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

    def _mark_sent(self, req: _Req, t: float) -> None:
        req.t_sent = t
        req.phase = Phase.WAITING
        self._sent += 1
        self._count(2, t, 1)

    def _tokens(self, req: _Req, t: float, reasoning: int, answer: int) -> None:
        """Cumulative counts in; the increase goes to the tokens/s bins (counts never go down)."""
        dr = reasoning - req.reasoning
        da = answer - req.answer
        if dr > 0:
            self._count(0, t, dr)
            req.reasoning = reasoning
        if da > 0:
            self._count(1, t, da)
            req.answer = answer

    def _on_end(self, req: _Req, ev: RequestEvent) -> None:
        rec = ev.record
        if rec is not None:
            if req.t_sent is None and rec.t_sent is not None:
                self._mark_sent(req, rec.t_sent)
            self._tokens(req, ev.t, rec.reasoning_tokens, rec.answer_tokens)
            req.reasoning, req.answer = rec.reasoning_tokens, rec.answer_tokens  # final (maybe reconciled)
            req.t_sent = rec.t_sent if rec.t_sent is not None else req.t_sent
            req.t_first_token = rec.t_first_token if rec.t_first_token is not None else req.t_first_token
            if rec.t_first_visible is not None:
                req.t_first_visible = rec.t_first_visible
        else:
            self._tokens(req, ev.t, ev.reasoning_tokens, ev.answer_tokens)
        ok = ev.kind is RequestKind.DONE and (rec is None or rec.status is RequestStatus.OK)
        req.phase = Phase.DONE if ok else Phase.FAILED
        req.t_end = ev.t
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
            self._finished.append(rec)
        # judged once, against the baselines known now
        base = self._summary.baselines if self._summary is not None else None
        if ok and base is not None:
            run_time = rec.e2e if rec is not None else None
            why = base.why(req.cls, run_time, req.reasoning)
            if why is not None:
                req.straggler = why
                age = run_time if run_time is not None else req.row(ev.t).age
                self._fin_stragglers.append(
                    Straggler(req.rid, req.cls, req.phase, age, req.reasoning, why, True)
                )
        self._ended.append((ev.t, req))
        if len(self._ended) > MAX_ENDED_ROWS:  # a replay catching up ends thousands at once
            self._trim_ended(ev.t)

    def _trim_ended(self, now: float) -> None:
        ended = self._ended
        while ended and (ended[0][0] < now - BOARD_LINGER_S or len(ended) > MAX_ENDED_ROWS):
            ended.popleft()

    def _recently_ended(self, rid: int) -> bool:
        return any(r.rid == rid for _, r in self._ended)

    def _on_scrape(self, s: Scrape) -> None:
        self._advance(s.t)
        self.series_version += 1
        if not s.ok:
            self._scrape_failed += 1
            if not self._scrape_error:  # log the transition, not every failed poll
                self._event(s.t, "scrape", "error", s.error or "metrics scrape failed")
            self._scrape_error = s.error or "metrics scrape failed"
            for ring in (self._kv, self._running, self._waiting):
                ring.append(s.t, math.nan)  # a gap in the chart, not a 0
            return
        if self._scrape_error:
            self._event(s.t, "scrape", "info", "metrics scrape recovered")
        self._scrape_ok += 1
        self._scrape_error = ""
        self._scrape_latency = s.latency_s
        if s.counter_reset:
            self._counter_resets += 1
        kv_sum = 0.0
        kv_n = 0
        running: float | None = None
        waiting: float | None = None
        preempt = 0.0
        gen_seen = False
        gen_delta: float | None = None
        counters = self._counters
        for m in s.samples:
            name = m.name
            if name == "kv_cache_usage":  # several engines: the mean; running/waiting: the sum
                kv_sum += m.value
                kv_n += 1
            elif name == "requests_running":
                running = (running or 0.0) + m.value
            elif name == "requests_waiting":
                waiting = (waiting or 0.0) + m.value
            elif name == "preemptions_total" or name == "generation_tokens_total":
                key = (name, m.labels)
                prev = counters.get(key)
                counters[key] = m.value
                inc = None if prev is None else counter_increase((prev, m.value))
                if name == "preemptions_total":
                    preempt += inc or 0.0
                else:
                    gen_seen = True
                    if inc is not None:
                        gen_delta = (gen_delta or 0.0) + inc
        self.missing = frozenset(s.missing)
        self._kv.append(s.t, kv_sum / kv_n if kv_n else math.nan)
        self._running.append(s.t, math.nan if running is None else running)
        self._waiting.append(s.t, math.nan if waiting is None else waiting)
        if preempt > 0:
            self._preempt.append(s.t, preempt)
        if gen_seen:
            self._engine_rate(s.t, gen_delta)

    def _engine_rate(self, t: float, delta: float | None) -> None:
        """The engine's generation rate over the last second or more (one scrape interval is too noisy:
        engines bump the counter in steps)."""
        gen = self._gen
        total = (gen[-1][1] if gen else 0.0) + (delta or 0.0)
        if gen and delta is not None:
            while len(gen) > 1 and t - gen[1][0] >= ENGINE_RATE_SPAN:
                gen.popleft()
            t0, v0 = gen[0]
            if t > t0:
                self._engine_tps.append(t, (total - v0) / (t - t0))
        gen.append((t, total))

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
        """How many requests the run will send (kept across a Reset); None: unknown (or from SessionInfo)."""
        self._planned_arg = n
        self.planned = n if n is not None else self.planned

    def set_window(self, seconds: float) -> None:
        self.window = float(min(max(seconds, 1.0), max(WINDOWS)))

    def zoom(self, step: int) -> float:
        """Move ``step`` places along :data:`WINDOWS` (+1 = wider). Returns the new window."""
        i = min(range(len(WINDOWS)), key=lambda k: abs(WINDOWS[k] - self.window))
        self.window = WINDOWS[min(max(i + step, 0), len(WINDOWS) - 1)]
        return self.window

    # ------------------------------------------------------------------ summary

    def summary_job(self) -> SummaryJob | None:
        """A job computing the O(n) summary if a request ended since the last one and enough wall time has
        passed; None otherwise (or while a job is out). Run it (any thread), then :meth:`install` it."""
        n = len(self._finished)
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
        open_now = [(r.cls, t - r.t_sent, r.reasoning) for r in self._reqs.values() if r.t_sent is not None]
        return SummaryJob(list(self._finished), self.rule, self.generation, n, open_now)

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
        """The view at session time ``now`` (cost: O(in flight + points in the window)). Once the session
        ended (a terminal state), time stands still at its end."""
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
        # per class: the run time and reasoning length above which the rule may flag (None: never); only
        # requests past a limit pay for the rule's wording (base.why)
        limits: dict[str, tuple[float, float]] = {}
        f = self.rule.factor
        inf = math.inf
        for req in self._reqs.values():
            row = req.row(now)
            if base is not None and req.t_sent is not None:
                lim = limits.get(req.cls)
                if lim is None:
                    med_t, med_r = base.medians(req.cls)
                    lim = limits[req.cls] = (f * med_t if med_t else inf, f * med_r if med_r else inf)
                if row.age > lim[0] or req.reasoning > lim[1]:
                    why = base.why(req.cls, row.age, req.reasoning)
                    if why is not None:
                        row = row._replace(straggler=why)
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
        return ViewSnapshot(
            generation=self.generation,
            t=now,
            window=self.window,
            info=self.info,
            state=self.state,
            state_detail=self.state_detail,
            progress=self.progress(now),
            series_version=self.series_version,
            kv=self._series("kv_cache_usage", self._kv, t0, now),
            preemptions=self._series("preemptions_total", self._preempt, t0, now),
            running=self._series("requests_running", self._running, t0, now),
            waiting=self._series("requests_waiting", self._waiting, t0, now),
            reasoning_tps=self._series("reasoning_tps", self._rates[0], t0, now),
            answer_tps=self._series("answer_tps", self._rates[1], t0, now),
            engine_tps=self._series("generation_tokens_total", self._engine_tps, t0, now),
            arrivals=self._series("arrivals", self._rates[2], t0, now),
            completions=self._series("completions", self._rates[3], t0, now),
            failures=self._series("failures", self._rates[4], t0, now),
            missing=self.missing,
            scrape=ScrapeHealth(
                self._scrape_ok,
                self._scrape_failed,
                self._scrape_error,
                self._scrape_latency,
                self._counter_resets,
            ),
            board=tuple(rows),
            stragglers=stragglers,
            straggler_rule=self.rule.describe(),
            summary_version=self._summary_version,
            asu=asu,
            send_lag_p99=lag,
            client_bottleneck=lag is not None and lag > CLIENT_BOTTLENECK_LAG_S,
            distribution=summary.distribution if summary is not None else EMPTY_DIST,
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

    def _series(self, name: str, ring: _Ring, t0: float, t1: float) -> Series:
        t, v = ring.window(t0, t1)
        last = ring.last()
        if last is not None and math.isnan(last):
            last = None
        missing = name in self.missing
        return Series(name, t, v, None if missing else last, missing, ring.version)

    def _tok_s(self) -> float:
        """Client-side output tokens/s over the last (up to) 5 closed bins."""
        _, r = self._rates[0].view()
        _, a = self._rates[1].view()
        k = min(5, r.size)
        return float(r[-k:].sum() + a[-k:].sum()) / k if k else 0.0

    @property
    def finished(self) -> int:
        """Requests that ended (ok or not) this session."""
        return len(self._finished)


_OVERRIDE_NUM = re.compile(r"^# rllmtop: overrides:.*--num-prompts (\d+)", re.MULTILINE)


def _planned_from(scenario_text: str) -> int | None:
    """``[load] num_prompts`` of the scenario as recorded (a ``--num-prompts`` override in its header wins),
    if it says."""
    if not scenario_text:
        return None
    m = _OVERRIDE_NUM.search(scenario_text)
    if m:
        return int(m.group(1))
    try:
        doc = tomllib.loads(scenario_text)
    except tomllib.TOMLDecodeError:
        return None
    n = doc.get("load", {}).get("num_prompts") if isinstance(doc.get("load"), dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None
