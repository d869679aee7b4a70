"""The request events a live session published, rebuilt from a stored request row.

The recording stores one row per request (its final facts, or for a request still in flight its state
at the last commit), not every step of its life; replay rebuilds those steps here so a replayed session
publishes the same kinds of events as the live one.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator

import numpy as np

from rllmtop.events import RequestEvent, RequestKind, RequestRecord, RequestStatus, decode_gaps

__all__ = ["PROGRESS_INTERVAL", "request_events", "starting_record"]

PROGRESS_INTERVAL = 0.25  # replayed PROGRESS ticks, on the session-time grid like the live runner's
_SANE = 1e15  # seconds: beyond this a stored time is damage, and no PROGRESS grid is laid over it


def starting_record(r: RequestRecord) -> RequestRecord:
    """What a SENT event carries: the facts known when the request was written (status IN_FLIGHT)."""
    return RequestRecord(
        rid=r.rid,
        cls=r.cls,
        difficulty=r.difficulty,
        prompt_id=r.prompt_id,
        t_scheduled=r.t_scheduled,
        t_dispatch=r.t_dispatch,
        t_start=r.t_start,
        connect_s=r.connect_s,
        t_sent=r.t_sent,
        max_tokens=r.max_tokens,
        status=RequestStatus.IN_FLIGHT,
        reference=r.reference,
        engine=r.engine,
        worker=r.worker,
        node=r.node,
        conversation=r.conversation,
        turn=r.turn,
        target_input_tokens=r.target_input_tokens,
    )


def request_events(
    r: RequestRecord,
    progress_interval: float = PROGRESS_INTERVAL,
    *,
    progress_from: float = -math.inf,
    until: float | None = None,
) -> Iterator[RequestEvent]:
    """The RequestEvents the live runner published for ``r``.

    QUEUED (when it waited on the client's concurrency cap), SENT (with :func:`starting_record`),
    FIRST_TOKEN, FIRST_VISIBLE, PROGRESS on the session-time grid of ``progress_interval`` whenever the
    counts moved (from the gap blob; reasoning tokens are the chunks before the first visible one, scaled
    to the recorded totals; none before ``progress_from``), then DONE or FAILED with the record. A request
    still in flight (status IN_FLIGHT) ends without an end event: its PROGRESS goes up to ``until`` (the
    row's last update), where the counts are the recorded ones. Times never decrease.
    """
    cls = r.cls
    w = r.worker
    in_flight = r.status is RequestStatus.IN_FLIGHT
    ok = r.status is RequestStatus.OK
    known = [t for t in (r.t_scheduled, r.t_dispatch, r.t_sent, r.t_first_token, r.t_done) if t is not None]
    if in_flight and until is not None:
        known.append(until)
    t_last = max(known)
    t_end = r.t_done if r.t_done is not None and not in_flight else t_last
    if r.t_dispatch is not None and (
        (r.t_sent is not None and r.t_sent > r.t_dispatch)
        or (r.t_sent is None and r.status is RequestStatus.CANCELLED)
    ):
        yield RequestEvent(RequestKind.QUEUED, r.t_dispatch, r.rid, cls, worker=w)
    if r.t_sent is not None:
        yield RequestEvent(RequestKind.SENT, r.t_sent, r.rid, cls, record=starting_record(r), worker=w)
    counts = _Counts(r, t_end)
    last = (0, 0)
    if r.t_first_token is not None:
        last = counts.at(r.t_first_token)
        yield RequestEvent(RequestKind.FIRST_TOKEN, r.t_first_token, r.rid, cls, *last, worker=w)
        if abs(r.t_first_token) <= _SANE and abs(t_end) <= _SANE:
            tick = (math.floor(r.t_first_token / progress_interval) + 1) * progress_interval
        else:  # times no session has (a damaged file): no PROGRESS in between
            tick = math.inf
        if progress_from > tick and progress_from <= _SANE:
            tick = math.ceil(progress_from / progress_interval - 1e-9) * progress_interval
        visible = r.t_first_visible
        budget = 4 * (r.output_tokens + 4) + 64  # iterations: any stored times end the loop
        while budget > 0:
            budget -= 1
            nxt = tick if tick < t_end else math.inf
            if visible is not None and visible <= nxt:
                c = counts.at(visible)
                yield RequestEvent(
                    RequestKind.FIRST_VISIBLE, max(visible, r.t_first_token), r.rid, cls, *c, worker=w
                )
                last = c
                visible = None
                continue
            if nxt == math.inf:
                break
            c = counts.at(tick)
            step = tick + progress_interval
            if c != last:
                yield RequestEvent(RequestKind.PROGRESS, tick, r.rid, cls, *c, worker=w)
                last = c
            else:  # nothing moves until the next change: go straight to the first tick at or after it
                ch = counts.next_change(tick)
                if visible is not None and visible > tick:
                    ch = min(ch, visible)
                if ch == math.inf:
                    step = math.inf
                elif ch > step:
                    step = max(step, math.ceil((ch - 1e-9) / progress_interval) * progress_interval)
            if not step > tick:
                break  # times so large that a tick no longer moves them
            tick = step
    if in_flight:
        final = (r.reasoning_tokens, r.answer_tokens)
        if final != last and t_end >= progress_from:
            yield RequestEvent(RequestKind.PROGRESS, t_end, r.rid, cls, *final, worker=w)
        return
    kind = RequestKind.DONE if ok else RequestKind.FAILED
    detail = (r.finish_reason or "") if ok else (r.error or r.status.value)
    yield RequestEvent(kind, t_end, r.rid, cls, r.reasoning_tokens, r.answer_tokens, detail, r, worker=w)


class _Counts:
    """Cumulative (reasoning, answer) tokens of a request at any session time.

    With a gap blob: per chunk, reasoning = chunks before the first visible one, each part scaled to the
    recorded totals. Without one (a single chunk, gaps not recorded, or a request still in flight): one
    chunk carrying everything, or a straight line from the first token to ``t_end`` when there were
    several tokens.
    """

    __slots__ = ("cum_a", "cum_r", "linear", "r", "t_end", "times")

    def __init__(self, r: RequestRecord, t_end: float) -> None:
        self.r = r
        self.t_end = t_end
        try:
            gaps, per_chunk = decode_gaps(r.gaps)
        except Exception:  # a damaged blob (the reader said so): counts as no gaps
            gaps, per_chunk = decode_gaps(b"")
        t0 = r.t_first_token or 0.0
        ends = r.t_done is not None or r.status is RequestStatus.IN_FLIGHT
        self.linear = not gaps and r.output_tokens > 1 and ends and t_end > t0
        if not gaps:
            self.times = [t0]
            self.cum_r, self.cum_a = [r.reasoning_tokens], [r.answer_tokens]
            return
        times = t0 + np.concatenate(
            ([0.0], np.cumsum(np.frombuffer(gaps, dtype=np.uint32), dtype=np.float64) * 1e-6)
        )
        w = np.ones(times.size)
        if per_chunk is not None and len(per_chunk) == times.size:
            w = np.frombuffer(per_chunk, dtype=np.uint16)
        cum = np.cumsum(w, dtype=np.float64)
        split = (
            times.size if r.t_first_visible is None else int(np.searchsorted(times, r.t_first_visible - 1e-9))
        )
        wr = float(cum[split - 1]) if split else 0.0
        wa = float(cum[-1]) - wr
        cr = np.rint(np.minimum(cum, wr) * (r.reasoning_tokens / wr)) if wr else np.zeros(times.size)
        ca = np.rint(np.maximum(cum - wr, 0.0) * (r.answer_tokens / wa)) if wa else np.zeros(times.size)
        self.times = times.tolist()
        self.cum_r = cr.astype(np.int64).tolist()
        self.cum_a = ca.astype(np.int64).tolist()

    def next_change(self, t: float) -> float:
        """A time after ``t`` by which the counts may have changed (never later than the change)."""
        r = self.r
        if self.linear:
            t0 = r.t_first_token or 0.0
            span = self.t_end - t0
            total = r.output_tokens
            if t < t0:
                return t0
            k = int(_share(total, t - t0, span))
            return t0 + (k + 1) * span / total - 1e-9 if k < total else math.inf
        i = bisect.bisect_right(self.times, t + 1e-9)
        return self.times[i] - 1e-9 if i < len(self.times) else math.inf

    def at(self, t: float) -> tuple[int, int]:
        r = self.r
        if self.linear:
            t0 = r.t_first_token or 0.0
            t1 = self.t_end
            total = r.output_tokens
            n = max(1, min(total, int(_share(total, t - t0, t1 - t0)))) if t >= t0 else 0
            if r.t_first_visible is not None and r.answer_tokens:
                n = max(n, r.reasoning_tokens + 1) if t >= r.t_first_visible else min(n, r.reasoning_tokens)
            reasoning = min(n, r.reasoning_tokens)
            return reasoning, min(r.answer_tokens, n - reasoning)
        i = bisect.bisect_right(self.times, t + 1e-9) - 1
        if i < 0:
            return 0, 0
        return self.cum_r[i], self.cum_a[i]


def _share(total: int, part: float, whole: float) -> float:
    """total * part / whole, without overflowing on absurd (damaged) times."""
    x = total * part
    if math.isfinite(x):
        return x / whole
    return min(part / whole, 1.0) * total
