"""The one place numbers are computed: pure functions over records.

Live (TUI, headless progress), replay, export and reports all call these, so a percentile or a straggler
means the same thing everywhere. Nothing here does I/O or keeps state between calls.

Definitions (written next to the numbers in reports):

- TTFT: first token of any kind (reasoning or answer) minus send time.
- TTFVT: first *visible* (answer, non-reasoning) token minus send time. Requests cut while still reasoning
  have no TTFVT; they count in ``no_visible``.
- E2E: done minus send time. Service throughput: output tokens (reasoning + answer) of requests that ended,
  divided by the span from the first send to the last end.
- Percentiles: linear interpolation between closest ranks (numpy's default), over ok requests only.
- Straggler: see :class:`StragglerRule`.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rllmtop.events import (
    HistogramSample,
    MetricSample,
    RequestRecord,
    RequestStatus,
    decode_gaps,
)
from rllmtop.scenario import SLO_KEYS

__all__ = [
    "EMPTY_DIST",
    "KV_FULL",
    "MIN_TEST_N",
    "PCTS",
    "SLO_KEYS",
    "AsuSummary",
    "ClassSummary",
    "DistGroup",
    "Distribution",
    "EngineSummary",
    "MannWhitney",
    "StragglerBaselines",
    "StragglerRule",
    "Timeline",
    "asu_summary",
    "check_slos",
    "counter_increase",
    "counter_rates",
    "engine_summary",
    "histogram_quantile",
    "histogram_window",
    "holm",
    "mann_whitney",
    "merge_histograms",
    "percentiles",
    "reasoning_distribution",
    "scrape_step",
    "timeline",
]

PCTS: tuple[int, ...] = (50, 90, 99)


# ------------------------------------------------------------------------------------------ percentiles


def percentiles(values: Iterable[float] | np.ndarray, qs: Sequence[int] = PCTS) -> dict[int, float | None]:
    """{q: value} for each percentile q (0..100); None for every q when there are no values."""
    arr = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=float)
    arr = arr[~np.isnan(arr)] if arr.size else arr
    if arr.size == 0:
        return {q: None for q in qs}
    res = np.percentile(arr, list(qs))
    return {q: float(v) for q, v in zip(qs, res, strict=True)}


# ------------------------------------------------------------------------------------------ stragglers


@dataclass(frozen=True)
class StragglerRule:
    """A request straggles when its run time or its reasoning length exceeds ``factor`` times the median
    of its class (of all requests while its class has fewer than ``min_finished`` finished).

    The median counts the requests still in flight as *censored*: each has run at least its age, so the
    median is only known once at least half of the group has finished, and it is then the
    ``ceil(n/2)``-th smallest finished value (an upper bound of the true median). Early in a burst,
    when only the fast requests have finished, nothing is flagged; a few hard requests running far
    behind the rest of the batch are. In-flight requests are judged on their age and reasoning tokens
    so far, so they are flagged while they happen; finished ones on E2E and final reasoning length."""

    factor: float = 3.0
    min_finished: int = 5

    def describe(self) -> str:
        return (
            f"run time or reasoning length > {self.factor:g}x the median of its class (all classes until "
            f"a class has {self.min_finished} finished; requests in flight count as at least their age, "
            "so no verdict before half have finished)"
        )

    def baselines(
        self,
        finished: Sequence[RequestRecord],
        in_flight: Iterable[tuple[str, float, int]] = (),
    ) -> StragglerBaselines:
        """Medians per class and overall from finished ok requests, with ``in_flight`` (class, age,
        reasoning tokens so far) as censored observations."""
        by_cls_e2e: dict[str, list[float]] = defaultdict(list)
        by_cls_rsn: dict[str, list[float]] = defaultdict(list)
        for r in finished:
            if r.status is not RequestStatus.OK or r.e2e is None:
                continue
            by_cls_e2e[r.cls].append(r.e2e)
            by_cls_rsn[r.cls].append(r.reasoning_tokens)
        open_by_cls: dict[str, int] = defaultdict(int)
        for cls, _age, _rsn in in_flight:
            open_by_cls[cls] += 1
        all_e2e = [v for vs in by_cls_e2e.values() for v in vs]
        all_rsn = [v for vs in by_cls_rsn.values() for v in vs]
        n_open = sum(open_by_cls.values())
        per_cls = {
            c: (_censored_median(v, open_by_cls[c]), _censored_median(by_cls_rsn[c], open_by_cls[c]))
            for c, v in by_cls_e2e.items()
            if len(v) >= self.min_finished
        }
        overall = (
            (_censored_median(all_e2e, n_open), _censored_median(all_rsn, n_open))
            if len(all_e2e) >= self.min_finished
            else (None, None)
        )
        return StragglerBaselines(self, per_cls, overall)


def _censored_median(done: Sequence[float], n_open: int) -> float | None:
    """Median of ``done`` plus ``n_open`` values known only to be larger than anything seen so far:
    the ceil(n/2)-th smallest finished value, or None while fewer than half have finished."""
    n = len(done) + n_open
    k = (n + 1) // 2  # 1-based rank of the (upper) median
    if not done or k > len(done):
        return None
    if n_open == 0:
        return float(np.median(done))
    return float(np.partition(np.asarray(done, dtype=float), k - 1)[k - 1])


@dataclass(frozen=True)
class StragglerBaselines:
    rule: StragglerRule
    per_class: Mapping[str, tuple[float | None, float | None]]  # class -> (median e2e, median reasoning)
    overall: tuple[float | None, float | None]

    def medians(self, cls: str) -> tuple[float | None, float | None]:
        return self.per_class.get(cls, self.overall)

    def why(self, cls: str, run_time: float | None, reasoning_tokens: int) -> str | None:
        """The reason this request straggles ("age 41.0s > 3x 12.1s"), or None if it does not."""
        med_t, med_r = self.medians(cls)
        f = self.rule.factor
        if run_time is not None and med_t and run_time > f * med_t:
            return f"run time {run_time:.1f}s > {f:g}x median {med_t:.1f}s"
        if med_r and reasoning_tokens > f * med_r:
            return f"reasoning {reasoning_tokens} tok > {f:g}x median {med_r:.0f}"
        return None


# ------------------------------------------------------------------------------------------ ASU summary


@dataclass(frozen=True)
class ClassSummary:
    """Accuracy / Service / User numbers for one class (or "all")."""

    name: str
    requests: int  # ended (ok + errors + cancelled)
    ok: int
    errors: int
    cancelled: int
    truncated: int  # ok but finish_reason == "length"
    no_visible: int  # ok but never produced a visible token (cut while reasoning)
    graded: int
    correct: int
    reasoning_tokens: int
    answer_tokens: int
    span_s: float  # first send .. last end, seconds
    ttft: dict[int, float | None]
    ttfvt: dict[int, float | None]
    e2e: dict[int, float | None]
    tpot: dict[int, float | None]  # per request: (e2e - ttft) / (output tokens - 1)
    reasoning_len: dict[int, float | None]
    answer_len: dict[int, float | None]
    send_lag: dict[int, float | None]
    concurrency_wait: dict[int, float | None]
    stragglers: int
    finish_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.graded if self.graded else None

    @property
    def error_rate(self) -> float | None:
        return (self.errors + self.cancelled) / self.requests if self.requests else None

    @property
    def output_tokens(self) -> int:
        return self.reasoning_tokens + self.answer_tokens

    @property
    def output_tps(self) -> float | None:
        return self.output_tokens / self.span_s if self.span_s > 0 else None

    def as_dict(self) -> dict[str, object]:
        """Flat, JSON-friendly form (reports, compare, headless JSON)."""
        d: dict[str, object] = {
            "class": self.name,
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "cancelled": self.cancelled,
            "truncated": self.truncated,
            "no_visible": self.no_visible,
            "graded": self.graded,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "error_rate": self.error_rate,
            "reasoning_tokens": self.reasoning_tokens,
            "answer_tokens": self.answer_tokens,
            "output_tps": self.output_tps,
            "span_s": self.span_s,
            "stragglers": self.stragglers,
            "finish_reasons": dict(self.finish_reasons),
        }
        for key in (
            "ttft",
            "ttfvt",
            "e2e",
            "tpot",
            "reasoning_len",
            "answer_len",
            "send_lag",
            "concurrency_wait",
        ):
            for q, v in getattr(self, key).items():
                d[f"{key}_p{q}"] = v
        return d


@dataclass(frozen=True)
class AsuSummary:
    overall: ClassSummary
    classes: tuple[ClassSummary, ...]
    straggler_rule: str

    def by_name(self) -> dict[str, ClassSummary]:
        return {c.name: c for c in (self.overall, *self.classes)}


def _summarise(name: str, recs: Sequence[RequestRecord], baselines: StragglerBaselines) -> ClassSummary:
    ok = [r for r in recs if r.status is RequestStatus.OK]
    errors = sum(1 for r in recs if r.status is RequestStatus.ERROR)
    cancelled = sum(1 for r in recs if r.status is RequestStatus.CANCELLED)
    graded = [r for r in recs if r.correct is not None]
    sent = [r.t_sent for r in recs if r.t_sent is not None]
    ends = [r.t_done for r in recs if r.t_done is not None]
    span = (max(ends) - min(sent)) if sent and ends else 0.0
    tpots = []
    for r in ok:
        n = r.output_tokens
        if n > 1 and r.e2e is not None and r.ttft is not None:
            tpots.append((r.e2e - r.ttft) / (n - 1))
    finish: dict[str, int] = defaultdict(int)
    for r in recs:
        finish[r.finish_reason or r.status.value] += 1
    stragglers = sum(1 for r in ok if baselines.why(r.cls, r.e2e, r.reasoning_tokens) is not None)
    return ClassSummary(
        name=name,
        requests=len(recs),
        ok=len(ok),
        errors=errors,
        cancelled=cancelled,
        truncated=sum(1 for r in ok if r.finish_reason == "length"),
        no_visible=sum(1 for r in ok if r.t_first_visible is None),
        graded=len(graded),
        correct=sum(1 for r in graded if r.correct),
        reasoning_tokens=sum(r.reasoning_tokens for r in recs),
        answer_tokens=sum(r.answer_tokens for r in recs),
        span_s=span,
        ttft=percentiles(r.ttft for r in ok if r.ttft is not None),
        ttfvt=percentiles(r.ttfvt for r in ok if r.ttfvt is not None),
        e2e=percentiles(r.e2e for r in ok if r.e2e is not None),
        tpot=percentiles(tpots),
        reasoning_len=percentiles(r.reasoning_tokens for r in ok),
        answer_len=percentiles(r.answer_tokens for r in ok),
        send_lag=percentiles(r.send_lag for r in recs if r.send_lag is not None),
        concurrency_wait=percentiles(r.concurrency_wait for r in recs if r.concurrency_wait is not None),
        stragglers=stragglers,
        finish_reasons=dict(finish),
    )


def asu_summary(requests: Sequence[RequestRecord], rule: StragglerRule | None = None) -> AsuSummary:
    """ASU numbers per class (in first-seen order) and overall, over requests that ended."""
    rule = rule or StragglerRule()
    ended = [r for r in requests if r.t_done is not None or r.status is not RequestStatus.OK]
    baselines = rule.baselines(ended)
    by_cls: dict[str, list[RequestRecord]] = {}
    for r in ended:
        by_cls.setdefault(r.cls, []).append(r)
    classes = tuple(_summarise(c, recs, baselines) for c, recs in by_cls.items())
    return AsuSummary(_summarise("all", ended, baselines), classes, rule.describe())


def check_slos(summary: ClassSummary, slo: Mapping[str, float]) -> list[str]:
    """One line per missed SLO (empty when all are met). Unknown keys raise ValueError."""
    missed: list[str] = []
    for key, limit in slo.items():
        if key not in SLO_KEYS:
            raise ValueError(f"unknown SLO {key!r}; allowed: {', '.join(sorted(SLO_KEYS))}")
        if key == "error_rate":
            v = summary.error_rate
            if v is not None and v > limit:
                missed.append(f"error_rate {v:.3f} > {limit:g}")
        elif key == "accuracy":
            v = summary.accuracy
            if v is None or v < limit:
                missed.append(f"accuracy {'n/a' if v is None else f'{v:.3f}'} < {limit:g}")
        elif key == "output_tps":
            v = summary.output_tps
            if v is None or v < limit:
                missed.append(f"output_tps {'n/a' if v is None else f'{v:.1f}'} < {limit:g}")
        else:
            metric, stat = key.rsplit("_", 1)
            vals = getattr(summary, metric)
            v = vals.get(int(stat[1:]))
            if v is None:
                missed.append(f"{key}: no data")
            elif v > limit:
                missed.append(f"{key} {v:.3f}s > {limit:g}s")
    return missed


# ------------------------------------------------------------------------------------------ counters


def counter_increase(values: Sequence[float]) -> float:
    """Total increase of a counter over consecutive readings, treating a drop as a reset to 0."""
    total = 0.0
    for prev, cur in itertools.pairwise(values):
        total += cur - prev if cur >= prev else cur
    return total


def counter_rates(times: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-interval rates (units/s) at the end time of each interval; a drop counts as a reset."""
    t = np.asarray(times, dtype=float)
    v = np.asarray(values, dtype=float)
    if t.size < 2:
        return np.empty(0), np.empty(0)
    dv = np.diff(v)
    dv = np.where(dv >= 0, dv, v[1:])  # reset: the new value is the increase since the restart
    dt = np.diff(t)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(dt > 0, dv / dt, np.nan)
    return t[1:], rate


# ------------------------------------------------------------------------------------------ histograms


def histogram_window(
    prev: HistogramSample | None, cur: HistogramSample
) -> tuple[tuple[float, ...], np.ndarray]:
    """Cumulative bucket counts observed between two scrapes (bucket deltas; a reset restarts from cur)."""
    counts = np.asarray(cur.counts, dtype=float)
    if prev is None or prev.bounds != cur.bounds:
        return cur.bounds, counts
    before = np.asarray(prev.counts, dtype=float)
    if np.any(counts < before):  # counter reset (engine restart)
        return cur.bounds, counts
    return cur.bounds, counts - before


def merge_histograms(
    parts: Iterable[tuple[tuple[float, ...], np.ndarray]],
) -> tuple[tuple[float, ...], np.ndarray]:
    """Sum cumulative bucket counts of several replicas/engines (bounds must match)."""
    bounds: tuple[float, ...] | None = None
    total: np.ndarray | None = None
    for b, c in parts:
        if bounds is None:
            bounds, total = b, np.array(c, dtype=float)
        elif b != bounds:
            raise ValueError("cannot merge histograms with different bucket bounds")
        else:
            total = total + c  # type: ignore[operator]
    if bounds is None or total is None:
        return (), np.empty(0)
    return bounds, total


def histogram_quantile(q: float, bounds: Sequence[float], cumulative: Sequence[float]) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding rank q*count.

    ``q`` in 0..1. None when the window holds no observations. When the rank falls in the +Inf bucket the
    highest finite bound is returned (as Prometheus does).
    """
    c = np.asarray(cumulative, dtype=float)
    if c.size == 0 or c[-1] <= 0:
        return None
    rank = q * c[-1]
    i = int(np.searchsorted(c, rank, side="left"))
    i = min(i, c.size - 1)
    upper = bounds[i]
    if math.isinf(upper):
        finite = [b for b in bounds if not math.isinf(b)]
        return float(finite[-1]) if finite else None
    lower = 0.0 if i == 0 else bounds[i - 1]
    below = 0.0 if i == 0 else c[i - 1]
    in_bucket = c[i] - below
    if in_bucket <= 0:
        return float(upper)
    return float(lower + (upper - lower) * (rank - below) / in_bucket)


# ------------------------------------------------------------------------------------------ timeline


@dataclass(frozen=True)
class Timeline:
    """Per-step series on one time axis. ``t[i]`` is the *start* of bin i (session seconds)."""

    step: float
    t: np.ndarray
    columns: dict[str, np.ndarray]

    def rows(self) -> Iterable[dict[str, float]]:
        names = list(self.columns)
        for i, t in enumerate(self.t):
            yield {"t": float(t), **{n: float(self.columns[n][i]) for n in names}}


GAUGE_COLUMNS = ("kv_cache_usage", "requests_running", "requests_waiting")
COUNTER_COLUMNS = {"preemptions": "preemptions_total", "engine_generation_tps": "generation_tokens_total"}


def _gauge_column(samples: Sequence[MetricSample], name: str, edges: np.ndarray) -> np.ndarray:
    """Last reading per bin (summed over engines; KV usage averaged), carried forward; NaN if never served."""
    series: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for s in samples:
        if s.name == name:
            series[s.labels].append((s.t, s.value))
    n = edges.size - 1
    if not series:
        return np.full(n, np.nan)
    cols = []
    for pts in series.values():
        pts.sort()
        ts = np.array([p[0] for p in pts])
        vs = np.array([p[1] for p in pts])
        idx = np.searchsorted(ts, edges[1:], side="left") - 1  # last reading before the bin's end
        col = np.where(idx >= 0, vs[np.clip(idx, 0, None)], np.nan)
        cols.append(col)
    stack = np.vstack(cols)
    if name == "kv_cache_usage":
        with np.errstate(all="ignore"):
            return np.nanmean(stack, axis=0) if stack.shape[0] > 1 else stack[0]
    return np.nansum(stack, axis=0) if stack.shape[0] > 1 else stack[0]


def _counter_column(
    samples: Sequence[MetricSample], name: str, edges: np.ndarray, per_second: bool
) -> np.ndarray:
    series: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for s in samples:
        if s.name == name:
            series[s.labels].append((s.t, s.value))
    n = edges.size - 1
    if not series:
        return np.full(n, np.nan)
    total = np.zeros(n)
    for pts in series.values():
        pts.sort()
        ts = np.array([p[0] for p in pts])
        vs = np.array([p[1] for p in pts])
        if ts.size < 2:
            continue
        dv = np.diff(vs)
        dv = np.where(dv >= 0, dv, vs[1:])
        bins = np.clip(np.searchsorted(edges, ts[1:], side="right") - 1, 0, n - 1)
        total += np.bincount(bins, weights=dv, minlength=n)[:n]
    if per_second:
        total = total / np.diff(edges)
    return total


def _token_columns(requests: Sequence[RequestRecord], edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reasoning and answer tokens/s per bin, from each request's chunk times (gap blobs)."""
    n = edges.size - 1
    times_r: list[np.ndarray] = []
    weights_r: list[np.ndarray] = []
    times_a: list[np.ndarray] = []
    weights_a: list[np.ndarray] = []
    for r in requests:
        if r.t_first_token is None or r.output_tokens == 0:
            continue
        gaps, per_chunk = decode_gaps(r.gaps)
        ts = r.t_first_token + np.concatenate(([0.0], np.cumsum(np.frombuffer(gaps, dtype=np.uint32) * 1e-6)))
        if per_chunk is not None:
            w = np.frombuffer(per_chunk, dtype=np.uint16).astype(float)
        else:
            w = np.ones(ts.size)
        split = ts.size if r.t_first_visible is None else int(np.searchsorted(ts, r.t_first_visible - 1e-9))
        for part_ts, part_w, total, out_t, out_w in (
            (ts[:split], w[:split], r.reasoning_tokens, times_r, weights_r),
            (ts[split:], w[split:], r.answer_tokens, times_a, weights_a),
        ):
            if part_ts.size == 0 or total == 0:
                continue
            s = part_w.sum()
            out_t.append(part_ts)
            out_w.append(part_w * (total / s) if s > 0 else part_w)
    width = np.diff(edges)

    def binned(ts_list: list[np.ndarray], w_list: list[np.ndarray]) -> np.ndarray:
        if not ts_list:
            return np.zeros(n)
        ts = np.concatenate(ts_list)
        w = np.concatenate(w_list)
        idx = np.searchsorted(edges, ts, side="right") - 1
        keep = (idx >= 0) & (idx < n)
        return np.bincount(idx[keep], weights=w[keep], minlength=n)[:n] / width

    return binned(times_r, weights_r), binned(times_a, weights_a)


def _event_counts(times: Iterable[float | None], edges: np.ndarray) -> np.ndarray:
    n = edges.size - 1
    arr = np.array([t for t in times if t is not None], dtype=float)
    if arr.size == 0:
        return np.zeros(n)
    idx = np.searchsorted(edges, arr, side="right") - 1
    idx = idx[(idx >= 0) & (idx < n)]
    return np.bincount(idx, minlength=n)[:n].astype(float)


def timeline(
    requests: Sequence[RequestRecord],
    samples: Sequence[MetricSample],
    *,
    step: float = 1.0,
    t_end: float | None = None,
) -> Timeline:
    """Per-``step`` series: engine gauges (last reading in the bin; NaN when the engine does not serve the
    metric), engine counter rates, client arrivals/completions/errors counts, and client-side reasoning vs
    answer tokens/s. Cost: O(samples + total streamed chunks)."""
    if step <= 0:
        raise ValueError("step must be > 0")
    ends = [s.t for s in samples] + [
        t for r in requests for t in (r.t_done, r.t_sent, r.t_scheduled) if t is not None
    ]
    last = t_end if t_end is not None else (max(ends) if ends else 0.0)
    nbins = max(1, math.ceil(last / step + 1e-9))
    edges = np.arange(nbins + 1, dtype=float) * step
    cols: dict[str, np.ndarray] = {}
    for name in GAUGE_COLUMNS:
        cols[name] = _gauge_column(samples, name, edges)
    cols["preemptions"] = _counter_column(samples, "preemptions_total", edges, per_second=False)
    cols["engine_generation_tps"] = _counter_column(
        samples, "generation_tokens_total", edges, per_second=True
    )
    cols["arrivals"] = _event_counts((r.t_sent for r in requests), edges)
    cols["completions"] = _event_counts((r.t_done for r in requests if r.status is RequestStatus.OK), edges)
    cols["errors"] = _event_counts(
        (
            r.t_done if r.t_done is not None else r.t_sent
            for r in requests
            if r.status is not RequestStatus.OK
        ),
        edges,
    )
    cols["reasoning_tps"], cols["answer_tps"] = _token_columns(requests, edges)
    return Timeline(step, edges[:-1], cols)


# ------------------------------------------------------------------------------------------ distributions


@dataclass(frozen=True, slots=True)
class DistGroup:
    """Reasoning lengths of finished ok requests of one (class, difficulty)."""

    cls: str
    difficulty: str
    n: int
    pcts: dict[int, float | None]  # analysis.percentiles
    counts: tuple[int, ...]  # per bin of Distribution.edges

    @property
    def label(self) -> str:
        return (
            f"{self.cls}/{self.difficulty}" if self.difficulty and self.difficulty != self.cls else self.cls
        )


@dataclass(frozen=True, slots=True)
class Distribution:
    edges: tuple[float, ...]  # bin edges (tokens), len = bins + 1; shared by every group
    groups: tuple[DistGroup, ...]


EMPTY_DIST = Distribution((), ())


def reasoning_distribution(recs: Sequence[RequestRecord], bins: int = 64) -> Distribution:
    """Histogram of reasoning lengths of finished ok requests per (class, difficulty), on shared edges."""
    groups: dict[tuple[str, str], list[int]] = {}
    for r in recs:
        if r.status is RequestStatus.OK:
            groups.setdefault((r.cls, r.difficulty), []).append(r.reasoning_tokens)
    if not groups:
        return EMPTY_DIST
    top = max(max(v) for v in groups.values())
    edges = np.linspace(0.0, float(max(top, 1)), bins + 1)
    out = []
    for (cls, diff), vals in sorted(groups.items()):
        arr = np.asarray(vals, dtype=float)
        counts, _ = np.histogram(arr, bins=edges)
        out.append(DistGroup(cls, diff, arr.size, percentiles(arr), tuple(int(c) for c in counts)))
    return Distribution(tuple(float(e) for e in edges), tuple(out))


# ------------------------------------------------------------------------------------------ engine side and run comparison

KV_FULL = 0.95  # "KV full" threshold for the time-at-full column


@dataclass(frozen=True)
class EngineSummary:
    """Engine-side numbers over the load window (load start .. last request end). ``None``: not served."""

    window_s: float
    step_s: float  # gauge readings are taken as the last reading in windows of this size
    kv_usage_mean: float | None  # 0..1, time-weighted
    kv_usage_peak: float | None  # highest reading of any engine
    kv_full_frac: float | None  # fraction of the window with usage >= KV_FULL
    running_mean: float | None
    running_peak: float | None
    waiting_mean: float | None
    waiting_peak: float | None
    preemptions: float | None  # counter increase over the session
    prefix_hit_rate: float | None  # prefix-cache hits / queries (increase over the session)

    def as_dict(self) -> dict[str, float | None]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _increase(samples: Sequence[MetricSample], name: str) -> float | None:
    series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    for s in samples:
        if s.name == name:
            series.setdefault(s.labels, []).append((s.t, s.value))
    if not series:
        return None
    return float(sum(counter_increase([v for _, v in sorted(pts)]) for pts in series.values()))


def scrape_step(samples: Sequence[MetricSample]) -> float:
    """The typical time between two readings of one series (the scrape interval), 0.25 s if unknown."""
    times = sorted({s.t for s in samples if s.name in ("kv_cache_usage", "requests_running")})
    if len(times) < 3:
        return 0.25
    return max(float(np.median(np.diff(times))), 0.01)


def engine_summary(
    samples: Sequence[MetricSample], t0: float, t1: float, step: float | None = None
) -> EngineSummary:
    """Gauge means/peaks over ``[t0, t1]`` (last reading per ``step`` window, carried forward; NaN windows
    where the engine serves nothing are left out), counter increases over the whole session."""
    step = step or scrape_step(samples)
    t1 = max(t1, t0 + step)
    gauges = [s for s in samples if s.name in ("kv_cache_usage", "requests_running", "requests_waiting")]
    tl = timeline((), gauges, step=step, t_end=t1)
    mask = (tl.t + step > t0) & (tl.t < t1)

    def col(name: str) -> np.ndarray:
        c = tl.columns[name][mask]
        return c[~np.isnan(c)]

    def mean(name: str) -> float | None:
        c = col(name)
        return _finite_or_none(float(c.mean())) if c.size else None

    def peak(name: str) -> float | None:
        vals = [s.value for s in samples if s.name == name and t0 <= s.t <= t1 + step]
        return float(max(vals)) if vals else None

    kv = col("kv_cache_usage")
    hits = _increase(samples, "prefix_cache_hits_total")
    queries = _increase(samples, "prefix_cache_queries_total")
    return EngineSummary(
        window_s=t1 - t0,
        step_s=step,
        kv_usage_mean=mean("kv_cache_usage"),
        kv_usage_peak=peak("kv_cache_usage"),
        kv_full_frac=float(np.mean(kv >= KV_FULL)) if kv.size else None,
        running_mean=mean("requests_running"),
        running_peak=peak("requests_running"),
        waiting_mean=mean("requests_waiting"),
        waiting_peak=peak("requests_waiting"),
        preemptions=_increase(samples, "preemptions_total"),
        prefix_hit_rate=(hits / queries) if hits is not None and queries else None,
    )


@dataclass(frozen=True)
class MannWhitney:
    n_a: int
    n_b: int
    median_a: float | None
    median_b: float | None
    u: float | None  # U statistic of sample b
    p: float | None  # two-sided p-value; None when a sample has fewer than MIN_TEST_N values
    effect: float | None  # P(b > a) + 0.5 P(b = a): 0.5 = no shift, > 0.5 = b larger

    def as_dict(self) -> dict[str, float | int | None]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


MIN_TEST_N = 5


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> MannWhitney:
    """Two-sided Mann-Whitney U test of b against a (scipy), with the common-language effect size."""
    from scipy.stats import mannwhitneyu

    xa = np.asarray(a, dtype=float)
    xb = np.asarray(b, dtype=float)
    xa = xa[~np.isnan(xa)]
    xb = xb[~np.isnan(xb)]
    med_a = float(np.median(xa)) if xa.size else None
    med_b = float(np.median(xb)) if xb.size else None
    if xa.size < MIN_TEST_N or xb.size < MIN_TEST_N:
        return MannWhitney(int(xa.size), int(xb.size), med_a, med_b, None, None, None)
    if np.all(xa == xa[0]) and np.all(xb == xa[0]):  # identical constants: no difference, scipy says nan
        u = xa.size * xb.size / 2
        return MannWhitney(int(xa.size), int(xb.size), med_a, med_b, u, 1.0, 0.5)
    res = mannwhitneyu(xb, xa, alternative="two-sided")
    u = float(res.statistic)
    p = float(res.pvalue)
    return MannWhitney(
        int(xa.size),
        int(xb.size),
        med_a,
        med_b,
        u,
        p if math.isfinite(p) else None,
        u / (xa.size * xb.size),
    )


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (None entries are skipped and stay None)."""
    idx = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
