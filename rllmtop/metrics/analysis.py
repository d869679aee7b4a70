"""The one place numbers are computed: pure functions over records.

Live (TUI, headless progress), replay, export and reports all call these, so a percentile, a straggler or
a goodput means the same thing everywhere. Nothing here does I/O or keeps state between calls (the one
exception, :class:`LiveAsu`, is a bounded accumulator the live view owns).

Definitions (written next to the numbers in reports). Every time is in session seconds: wall seconds, or
simulated seconds in a time-lapse run of the simulator (``SessionInfo.clock``).

- Latencies start at the request's start (``RequestRecord.latency_start``: after any concurrency-cap
  wait, before connecting; schema-1 recordings: the send).
- TTFT: first token of any kind (reasoning or answer). TTFVT: first *visible* (answer, non-reasoning)
  token; requests cut while still reasoning have none and count in ``no_visible``. E2E: request end.
- TPOT, per request: (last token - first token) / (output tokens - 1), as ``vllm bench serve`` defines
  it; the last token's time is the first token's plus the sum of the inter-chunk gaps of the gap blob
  (``events.encode_gaps``; session microseconds). ITL, per request: the mean gap between two
  token-bearing chunks (a chunk of several tokens is one gap, as ``vllm bench serve`` counts ITL);
  a request streamed in one chunk has no ITL. Without a gap blob both fall back to (end - first token)
  / (output tokens - 1).
- Service throughput: output tokens (reasoning + answer) of requests that ended, divided by the span
  from the first request start to the last end (of the class, for a class row).
- Goodput (``vllm bench serve --goodput``): the requests that ended ok and met every per-request SLO
  (``GOODPUT_KEYS``: ttft, ttfvt, e2el, itl; seconds), per second of the run's duration, and their answer
  tokens per second. The denominator is the same for every class: the *run's* span from the first
  request start to the last end, so the classes' goodputs add up to the overall one. A TTFVT SLO is
  missed by a request that never showed an answer; an ITL SLO is met by one without a gap.
- Percentiles: linear interpolation between closest ranks (numpy's default), over ok requests only
  (send lag and concurrency wait: over every request that ended).
- Straggler: see :class:`StragglerRule`.
- Trust: :func:`client_delay_verdict` and :func:`sim_drift_verdict` say when the client or the simulator
  was too slow for the latencies to be trusted.
- Fleet: KV usage weighted by each engine's capacity (``kv_total_blocks``, else ``kv_total_tokens``, when
  every engine serves it; else equal weights), queues and rates summed (:func:`kv_weights`).
"""

from __future__ import annotations

import bisect
import itertools
import math
import struct
import warnings
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from rllmtop import fmt
from rllmtop.errors import UserError
from rllmtop.events import (
    ClientHealth,
    HistogramSample,
    MetricSample,
    RequestRecord,
    RequestStatus,
    Scrape,
    decode_gaps,
)
from rllmtop.scenario import GOODPUT_KEYS, SLO_KEYS

__all__ = [
    "CACHE_MOMENTS_RULE",
    "CLIENT_DELAY_S",
    "EMPTY_DIST",
    "KNEE_RULE",
    "KV_FULL",
    "MIN_TEST_N",
    "PCTS",
    "PHASES",
    "SLO_KEYS",
    "AsuState",
    "AsuSummary",
    "CacheHolder",
    "CacheMoment",
    "ClassSummary",
    "ClientDelayVerdict",
    "DistGroup",
    "Distribution",
    "EngineSummary",
    "InFlight",
    "LiveAsu",
    "MannWhitney",
    "RequestColumns",
    "RequestSpans",
    "SaturationMonitor",
    "SaturationRule",
    "SaturationVerdict",
    "SimDriftVerdict",
    "SloMiss",
    "StallRule",
    "StragglerBaselines",
    "StragglerRule",
    "Timeline",
    "TurnSummary",
    "asu_summary",
    "cache_holders",
    "cache_moments",
    "check_slos",
    "chunk_gaps",
    "client_delay_verdict",
    "counter_increase",
    "counter_rates",
    "engine_summaries",
    "engine_summary",
    "engine_timelines",
    "goodput_from_slo",
    "goodput_mask",
    "histogram_quantile",
    "histogram_window",
    "holm",
    "knee_index",
    "kv_weights",
    "mann_whitney",
    "merge_histograms",
    "over_saturated",
    "parse_goodput",
    "parse_slo",
    "peak_load",
    "percentiles",
    "reasoning_distribution",
    "request_spans",
    "samples_by_engine",
    "saturation_scan",
    "scrape_step",
    "sim_drift_verdict",
    "slo_misses",
    "slo_value",
    "timeline",
    "tokens_so_far",
    "trust_warnings",
]

PCTS: tuple[int, ...] = (50, 90, 99)


# ------------------------------------------------------------------------------------------ percentiles


def percentiles(values: Iterable[float] | np.ndarray, qs: Sequence[int] = PCTS) -> dict[int, float | None]:
    """{q: value} for each percentile q (0..100); None for every q when there are no values (NaN skipped)."""
    arr = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=float)
    arr = arr[~np.isnan(arr)] if arr.size else arr
    if arr.size == 0:
        return {q: None for q in qs}
    res = np.percentile(arr, list(qs))
    return {q: float(v) for q, v in zip(qs, res, strict=True)}


# ------------------------------------------------------------------------------------------ request columns

_OK, _ERROR, _CANCELLED, _IN_FLIGHT = 0, 1, 2, 3
_STATUS_CODE = {
    RequestStatus.OK: _OK,
    RequestStatus.ERROR: _ERROR,
    RequestStatus.CANCELLED: _CANCELLED,
    RequestStatus.IN_FLIGHT: _IN_FLIGHT,
}
_TIME_FIELDS = (
    "t_scheduled",
    "t_dispatch",
    "t_start",
    "connect_s",
    "t_sent",
    "t_first_token",
    "t_first_visible",
    "t_done",
)
_FLOAT_FIELDS = (*_TIME_FIELDS, "reasoning_tokens", "answer_tokens", "gap_sum", "gap_n", "turn")
_GAPS_HEAD = struct.Struct("<BBI")


def _gap_stats(blob: bytes | None) -> tuple[float, float]:
    """(sum of the inter-chunk gaps in seconds, number of gaps); (NaN, NaN) without a blob. O(gaps)."""
    if not blob:
        return math.nan, math.nan
    try:
        version, _flags, n = _GAPS_HEAD.unpack_from(blob, 0)
        if version != 1 or len(blob) < 6 + 4 * n:
            return math.nan, math.nan
        total = int(np.frombuffer(blob, dtype="<u4", count=n, offset=6).sum(dtype=np.uint64)) if n else 0
    except (struct.error, ValueError):
        return math.nan, math.nan
    return total * 1e-6, float(n)


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


def _np(values: Any, dtype: Any) -> np.ndarray:
    """A numpy column; an ``array.array`` of the same item size is wrapped, not copied."""
    from array import array

    if isinstance(values, array) and values.itemsize == np.dtype(dtype).itemsize:
        return np.frombuffer(values, dtype=dtype) if len(values) else np.empty(0, dtype=dtype)
    return np.asarray(values, dtype=dtype)


@dataclass(frozen=True)
class RequestColumns:
    """The facts of many requests as numpy columns: what every summary here is computed from.

    About 110 bytes per request (a :class:`RequestRecord` with its gap blob costs kilobytes), so the final
    summary of a long run fits in memory. Build it in one pass with :meth:`from_records` (any iterable:
    a recording's ``iter_requests()``), or from a recording's numpy columns with :meth:`from_mapping`.
    Times are session seconds, NaN where the record says None."""

    classes: tuple[str, ...]  # class names, first-seen order; ``cls`` indexes them
    cls: np.ndarray  # int32
    status: np.ndarray  # int8: 0 ok, 1 error, 2 cancelled, 3 in flight
    finish_names: tuple[str, ...]
    finish: np.ndarray  # int16 index into finish_names, -1 = no finish_reason
    correct: np.ndarray  # int8: -1 not graded, 0 wrong, 1 correct
    worker: np.ndarray  # int32
    t_scheduled: np.ndarray
    t_dispatch: np.ndarray
    t_start: np.ndarray
    connect_s: np.ndarray
    t_sent: np.ndarray
    t_first_token: np.ndarray
    t_first_visible: np.ndarray
    t_done: np.ndarray
    reasoning_tokens: np.ndarray
    answer_tokens: np.ndarray
    gap_sum: np.ndarray  # seconds from the first to the last token-bearing chunk (NaN: no gap blob)
    gap_n: np.ndarray  # gaps in the blob (NaN: no gap blob)
    turn: np.ndarray  # 0-based turn of a conversation (0 for single requests)

    def __len__(self) -> int:
        return int(self.cls.size)

    @classmethod
    def empty(cls) -> RequestColumns:
        return cls._build((), [], [], (), [], [], [], {f: [] for f in _FLOAT_FIELDS})

    @classmethod
    def _build(
        cls,
        classes: Sequence[str],
        cls_idx: Sequence[int],
        status: Sequence[int],
        finish_names: Sequence[str],
        finish: Sequence[int],
        correct: Sequence[int],
        worker: Sequence[int],
        floats: Mapping[str, Any],
    ) -> RequestColumns:
        return cls(
            classes=tuple(classes),
            cls=_np(cls_idx, np.int32),
            status=_np(status, np.int8),
            finish_names=tuple(finish_names),
            finish=_np(finish, np.int16),
            correct=_np(correct, np.int8),
            worker=_np(worker, np.int32),
            **{f: _np(floats[f], np.float64) for f in _FLOAT_FIELDS},
        )

    @classmethod
    def from_records(cls, records: Iterable[RequestRecord]) -> RequestColumns:
        """One pass over ``records`` (a list, or a generator reading a file); keeps no record.

        Cost: O(n + streamed chunks) time (the gap blobs are summed, not kept), ~110 bytes per request."""
        from array import array

        classes: dict[str, int] = {}
        finishes: dict[str, int] = {}
        ci, st, fi, co, wk = array("i"), array("b"), array("h"), array("b"), array("i")
        floats = {f: array("d") for f in _FLOAT_FIELDS}
        times = [(f, floats[f]) for f in _TIME_FIELDS]
        rt, at, gs, gn, tu = (
            floats[f] for f in ("reasoning_tokens", "answer_tokens", "gap_sum", "gap_n", "turn")
        )
        for r in records:
            c = classes.get(r.cls)
            if c is None:
                c = classes[r.cls] = len(classes)
            ci.append(c)
            st.append(_STATUS_CODE.get(r.status, _ERROR))
            fr = r.finish_reason
            if fr is None:
                fi.append(-1)
            else:
                k = finishes.get(fr)
                if k is None:
                    k = finishes[fr] = len(finishes)
                fi.append(k)
            co.append(-1 if r.correct is None else int(bool(r.correct)))
            wk.append(r.worker)
            for name, arr in times:
                v = getattr(r, name)
                arr.append(math.nan if v is None else v)
            rt.append(r.reasoning_tokens)
            at.append(r.answer_tokens)
            s, n = _gap_stats(r.gaps)
            gs.append(s)
            gn.append(n)
            tu.append(r.turn)
        return cls._build(list(classes), ci, st, list(finishes), fi, co, wk, floats)

    @classmethod
    def from_mapping(cls, cols: Mapping[str, Any]) -> RequestColumns:
        """From columns keyed by :class:`RequestRecord` field names (a recording's ``request_columns``).

        Needed: ``cls``, ``status``; every other field is optional (missing = never happened). ``gaps`` (a
        sequence of blobs) or ``gap_sum``/``gap_n`` give TPOT and ITL. Values may be numpy arrays or lists;
        None/NaN for missing times; ``status`` as text or :class:`RequestStatus`."""
        names = [str(x) for x in cols["cls"]]
        n = len(names)
        classes: dict[str, int] = {}
        ci = [classes.setdefault(c, len(classes)) for c in names]
        status = [_STATUS_CODE.get(RequestStatus(str(s)), _ERROR) for s in cols["status"]]
        finishes: dict[str, int] = {}
        fr_col = cols.get("finish_reason")
        fi = (
            [-1 if f is None else finishes.setdefault(str(f), len(finishes)) for f in fr_col]
            if fr_col is not None
            else [-1] * n
        )
        cor_col = cols.get("correct")
        co = (
            [-1 if c is None or (isinstance(c, float) and math.isnan(c)) else int(bool(c)) for c in cor_col]
            if cor_col is not None
            else [-1] * n
        )
        wk_col = cols.get("worker")
        wk = [int(w) for w in wk_col] if wk_col is not None else [0] * n
        floats: dict[str, Any] = {}
        for f in _FLOAT_FIELDS:
            col = cols.get(f)
            if col is None:
                floats[f] = np.full(
                    n, 0.0 if f in ("reasoning_tokens", "answer_tokens", "turn") else math.nan
                )
            else:
                numeric = isinstance(col, np.ndarray) and col.dtype.kind in "fiub"
                floats[f] = col if numeric else np.array([_nan(v) for v in col], dtype=float)
        if "gap_sum" not in cols and cols.get("gaps") is not None:
            stats = [_gap_stats(b) for b in cols["gaps"]]
            floats["gap_sum"] = [s for s, _ in stats]
            floats["gap_n"] = [k for _, k in stats]
        return cls._build(list(classes), ci, status, list(finishes), fi, co, wk, floats)

    def take(self, idx: np.ndarray) -> RequestColumns:
        """The rows selected by a boolean mask or an index array (classes and finish names kept)."""
        return RequestColumns(
            classes=self.classes,
            cls=self.cls[idx],
            status=self.status[idx],
            finish_names=self.finish_names,
            finish=self.finish[idx],
            correct=self.correct[idx],
            worker=self.worker[idx],
            **{f: getattr(self, f)[idx] for f in _FLOAT_FIELDS},
        )

    @classmethod
    def concat(cls, parts: Sequence[RequestColumns]) -> RequestColumns:
        """Rows of several parts in order (class and finish indices remapped onto one name table)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        classes: dict[str, int] = {}
        finishes: dict[str, int] = {}
        ci, fi = [], []
        for p in parts:
            cmap = np.array([classes.setdefault(c, len(classes)) for c in p.classes] or [0], dtype=np.int32)
            ci.append(cmap[p.cls])
            fmap = np.array(
                [finishes.setdefault(f, len(finishes)) for f in p.finish_names] + [-1], dtype=np.int16
            )
            fi.append(fmap[p.finish])  # index -1 picks the trailing -1
        return cls(
            classes=tuple(classes),
            cls=np.concatenate(ci),
            status=np.concatenate([p.status for p in parts]),
            finish_names=tuple(finishes),
            finish=np.concatenate(fi),
            correct=np.concatenate([p.correct for p in parts]),
            worker=np.concatenate([p.worker for p in parts]),
            **{f: np.concatenate([getattr(p, f) for p in parts]) for f in _FLOAT_FIELDS},
        )

    # -- derived per request (vectorised; the same definitions as RequestRecord's properties) --------

    @property
    def latency_start(self) -> np.ndarray:
        return np.where(np.isnan(self.t_start), self.t_sent, self.t_start)

    @property
    def ended(self) -> np.ndarray:
        """Ended: failed or cancelled, or ok with an end time (in-flight rows of a killed run are not)."""
        return ((self.status == _ERROR) | (self.status == _CANCELLED)) | (
            (self.status == _OK) & ~np.isnan(self.t_done)
        )

    @property
    def ok(self) -> np.ndarray:
        return (self.status == _OK) & ~np.isnan(self.t_done)

    def derived(self) -> dict[str, np.ndarray]:
        """ttft, ttfvt, e2e, tpot, itl, send_lag, concurrency_wait, output tokens (NaN where undefined)."""
        start = self.latency_start
        out = self.reasoning_tokens + self.answer_tokens
        with np.errstate(divide="ignore", invalid="ignore"):
            span = np.where(np.isnan(self.gap_sum), self.t_done - self.t_first_token, self.gap_sum)
            tpot = np.where(out > 1, span / (out - 1), np.nan)
            itl = np.where(
                np.isnan(self.gap_n), tpot, np.where(self.gap_n > 0, self.gap_sum / self.gap_n, np.nan)
            )
        wait = np.where(
            np.isnan(self.t_dispatch) | np.isnan(self.t_start),
            np.nan,
            np.maximum(self.t_start - self.t_dispatch, 0.0),
        )
        has_write = ~np.isnan(self.t_start) & ~np.isnan(self.t_sent)
        lag = np.where(
            has_write,
            self.t_sent - self.t_scheduled - np.nan_to_num(wait) - np.nan_to_num(self.connect_s),
            self.t_dispatch - self.t_scheduled,
        )
        return {
            "start": start,
            "ttft": self.t_first_token - start,
            "ttfvt": self.t_first_visible - start,
            "e2e": self.t_done - start,
            "tpot": tpot,
            "itl": itl,
            "send_lag": lag,
            "concurrency_wait": wait,
            "output": out,
        }


def _columns(requests: Iterable[RequestRecord] | RequestColumns | Mapping[str, Any]) -> RequestColumns:
    if isinstance(requests, RequestColumns):
        return requests
    if isinstance(requests, Mapping):
        return RequestColumns.from_mapping(requests)
    return RequestColumns.from_records(requests)


# ------------------------------------------------------------------------------------------ stragglers


class InFlight(NamedTuple):
    """A request still running, as a censored observation: it has run at least ``age`` seconds."""

    cls: str
    age: float
    reasoning: int
    t_start: float | None = None  # its latency start (session seconds); None: it joins no batch


# straggler reasons, as StragglerBaselines.judge() codes them
NOT_STRAGGLER, CLASS_RUN_TIME, CLASS_REASONING, BATCH_RUN_TIME = 0, 1, 2, 3


@dataclass(frozen=True)
class StragglerRule:
    """A request straggles when it is far behind its class or far behind its batch:

    - its run time or its reasoning length exceeds ``factor`` times the median of its class (of all
      requests while its class has fewer than ``min_finished`` finished), or
    - its run time exceeds ``factor`` times the median run time of its *batch*: the requests of any class
      that started within ``batch_window`` seconds of it (before or after, itself included), once
      ``min_finished`` of them have finished. A request that ran to its token cap with the rest of its
      class still straggles when its batch finished long before it (the hard requests of one burst).

    Medians count the requests still in flight as *censored*: each has run at least its age, so a median
    is only known once at least half of its group has finished, and it is then the ``ceil(n/2)``-th
    smallest finished value (an upper bound of the true median). Early in a burst, when only the fast
    requests have finished, nothing is flagged. In-flight requests are judged on their age and reasoning
    tokens so far, so they are flagged while they happen; finished ones on E2E and final reasoning length.
    Run times and windows are session seconds."""

    factor: float = 3.0
    min_finished: int = 5
    batch_window: float = 5.0

    def describe(self) -> str:
        """The rule in one line (the class docstring and the README say it in full)."""
        f = f"{self.factor:g}x"
        return (
            f"run time or reasoning length > {f} the median of its class, or run time > {f} its batch "
            f"median (started within {self.batch_window:g} s of it); in flight counts as at least its age: "
            f"no verdict before half of a group (and {self.min_finished}) finished"
        )

    def baselines(
        self,
        finished: Iterable[RequestRecord] | RequestColumns,
        in_flight: Iterable[InFlight | tuple[str, float, int] | tuple[str, float, int, float | None]] = (),
    ) -> StragglerBaselines:
        """Medians per class, overall and per batch from the finished ok requests, with ``in_flight``
        (class, age, reasoning tokens so far, latency start) as censored observations. An in-flight
        entry without a start (a 3-tuple) cannot be placed in a batch: then no batch verdict is given
        (a batch median without it could be too low)."""
        cols = _columns(finished)
        ok = cols.ok
        d = cols.derived()
        e2e = d["e2e"][ok]
        names = np.asarray(cols.classes, dtype=object)[cols.cls[ok]] if len(cols) else np.empty(0, object)
        return self._baselines(names, e2e, cols.reasoning_tokens[ok], d["start"][ok], in_flight)

    def _baselines(
        self,
        cls_names: np.ndarray,
        e2e: np.ndarray,
        reasoning: np.ndarray,
        start: np.ndarray,
        in_flight: Iterable[Any] = (),
    ) -> StragglerBaselines:
        keep = ~np.isnan(e2e)
        cls_names, e2e, reasoning, start = cls_names[keep], e2e[keep], reasoning[keep], start[keep]
        open_by_cls: Counter[str] = Counter()
        open_starts: list[float] = []
        placeable = True
        for item in in_flight:
            f = InFlight(*item)
            open_by_cls[f.cls] += 1
            if f.t_start is None or math.isnan(f.t_start):
                placeable = False
            else:
                open_starts.append(float(f.t_start))
        n_open = sum(open_by_cls.values())
        per_cls: dict[str, tuple[float | None, float | None]] = {}
        if cls_names.size:
            for c in dict.fromkeys(cls_names.tolist()):
                m = cls_names == c
                if int(m.sum()) >= self.min_finished:
                    per_cls[c] = (
                        _censored_median(e2e[m], open_by_cls[c]),
                        _censored_median(reasoning[m], open_by_cls[c]),
                    )
        overall = (
            (_censored_median(e2e, n_open), _censored_median(reasoning, n_open))
            if e2e.size >= self.min_finished
            else (None, None)
        )
        order = np.argsort(start, kind="stable")
        done_start, done_val = start[order], e2e[order]
        ok_start = ~np.isnan(done_start)
        return StragglerBaselines(
            self,
            per_cls,
            overall,
            batch_starts=done_start[ok_start],
            batch_values=done_val[ok_start],
            open_starts=np.sort(np.asarray(open_starts, dtype=float)),
            batches=placeable,
        )


def _sorted_median(window: Sequence[float], n_open: int) -> float | None:
    """:func:`_censored_median` of values already sorted ascending (the same numbers)."""
    n_done = len(window)
    k = (n_done + n_open + 1) // 2
    if n_done == 0 or k > n_done:
        return None
    if n_open == 0:
        h = n_done // 2
        return float(window[h]) if n_done % 2 else float((window[h - 1] + window[h]) / 2)
    return float(window[k - 1])


def _censored_median(done: np.ndarray | Sequence[float], n_open: int) -> float | None:
    """Median of ``done`` plus ``n_open`` values known only to be larger than anything seen so far:
    the ceil(n/2)-th smallest finished value, or None while fewer than half have finished."""
    n = len(done) + n_open
    k = (n + 1) // 2  # 1-based rank of the (upper) median
    if len(done) == 0 or k > len(done):
        return None
    if n_open == 0:
        return float(np.median(done))
    return float(np.partition(np.asarray(done, dtype=float), k - 1)[k - 1])


@dataclass(frozen=True, eq=False)
class StragglerBaselines:
    """The medians a :class:`StragglerRule` judges against, frozen at one moment."""

    rule: StragglerRule
    per_class: Mapping[str, tuple[float | None, float | None]]  # class -> (median e2e, median reasoning)
    overall: tuple[float | None, float | None]
    batch_starts: np.ndarray = field(default_factory=lambda: np.empty(0))  # finished: sorted starts
    batch_values: np.ndarray = field(default_factory=lambda: np.empty(0))  # ... and their run times
    open_starts: np.ndarray = field(default_factory=lambda: np.empty(0))  # in flight: sorted starts
    batches: bool = True  # False: an in-flight request had no start, no batch verdicts
    _cache: dict[tuple[int, int, int, int], float | None] = field(
        default_factory=dict, compare=False, repr=False
    )

    def medians(self, cls: str) -> tuple[float | None, float | None]:
        return self.per_class.get(cls, self.overall)

    def batch_median(self, t_start: float | None) -> float | None:
        """The (censored) median run time of the batch of a request that started at ``t_start``; None
        while unknown (fewer than ``min_finished`` finished in it, or fewer than half)."""
        if not self.batches or t_start is None or math.isnan(t_start):
            return None
        w = self.rule.batch_window
        s = self.batch_starts
        lo, hi = int(np.searchsorted(s, t_start - w, "left")), int(np.searchsorted(s, t_start + w, "right"))
        o = self.open_starts
        olo, ohi = int(np.searchsorted(o, t_start - w, "left")), int(np.searchsorted(o, t_start + w, "right"))
        return self._window_median(lo, hi, olo, ohi)

    def _window_median(self, lo: int, hi: int, olo: int, ohi: int) -> float | None:
        key = (lo, hi, olo, ohi)
        if key in self._cache:
            return self._cache[key]
        m = (
            None
            if hi - lo < self.rule.min_finished
            else _sorted_median(np.sort(self.batch_values[lo:hi]).tolist(), ohi - olo)
        )
        if len(self._cache) > 65_536:
            self._cache.clear()
        self._cache[key] = m
        return m

    def limits(self, cls: str, t_start: float | None = None) -> tuple[float, float]:
        """(run time, reasoning tokens) above which :meth:`why` flags a request (inf: never): a cheap
        check before asking for the reason."""
        f = self.rule.factor
        med_t, med_r = self.medians(cls)
        lim_t = f * med_t if med_t else math.inf
        mb = self.batch_median(t_start)
        if mb:
            lim_t = min(lim_t, f * mb)
        return lim_t, (f * med_r if med_r else math.inf)

    def why(
        self, cls: str, run_time: float | None, reasoning_tokens: int, t_start: float | None = None
    ) -> str | None:
        """The reason this request straggles ("run time 41.0s > 3x median 12.1s"), or None if it does
        not. Without ``t_start`` only its class is compared."""
        med_t, med_r = self.medians(cls)
        f = self.rule.factor
        if run_time is not None and med_t and run_time > f * med_t:
            return f"run time {run_time:.1f}s > {f:g}x median {med_t:.1f}s"
        if med_r and reasoning_tokens > f * med_r:
            return f"reasoning {reasoning_tokens} tok > {f:g}x median {med_r:.0f}"
        if run_time is not None:
            mb = self.batch_median(t_start)
            if mb and run_time > f * mb:
                return f"run time {run_time:.1f}s > {f:g}x its batch's median {mb:.1f}s"
        return None

    def judge(
        self, cls_names: np.ndarray, run_time: np.ndarray, reasoning: np.ndarray, start: np.ndarray
    ) -> np.ndarray:
        """Vectorised :meth:`why`: one code per request (NOT_STRAGGLER, CLASS_RUN_TIME, CLASS_REASONING,
        BATCH_RUN_TIME; the first reason that applies, in that order). Cost: O(n log n) plus a sliding
        window over the batches (a burst is one batch, computed once)."""
        n = run_time.size
        out = np.zeros(n, dtype=np.int8)
        if n == 0:
            return out
        f = self.rule.factor
        lim_t = np.full(n, math.inf)
        lim_r = np.full(n, math.inf)
        for c in dict.fromkeys(cls_names.tolist()):
            med_t, med_r = self.medians(c)
            m = cls_names == c
            if med_t:
                lim_t[m] = f * med_t
            if med_r:
                lim_r[m] = f * med_r
        with np.errstate(invalid="ignore"):
            by_time = run_time > lim_t
            by_rsn = reasoning > lim_r
        out[by_time] = CLASS_RUN_TIME
        out[~by_time & by_rsn] = CLASS_REASONING
        if self.batches and self.batch_starts.size:
            w = self.rule.batch_window
            s, o = self.batch_starts, self.open_starts
            has = ~np.isnan(start)
            st = np.where(has, start, 0.0)
            order = np.argsort(st, kind="stable")  # in start order every window bound only grows
            qs = st[order]
            keys = np.stack(
                [
                    np.searchsorted(s, qs - w, "left"),
                    np.searchsorted(s, qs + w, "right"),
                    np.searchsorted(o, qs - w, "left"),
                    np.searchsorted(o, qs + w, "right"),
                ]
            )
            new = np.ones(n, dtype=bool)  # a window differing from the previous request's
            new[1:] = np.any(keys[:, 1:] != keys[:, :-1], axis=0)
            medians = self._window_medians(keys[:, new])
            meds = np.empty(n)
            meds[order] = medians[np.cumsum(new) - 1]
            with np.errstate(invalid="ignore"):
                by_batch = has & ~np.isnan(meds) & (meds > 0) & (run_time > f * meds)
            out[(out == NOT_STRAGGLER) & by_batch] = BATCH_RUN_TIME
        return out

    def _window_medians(self, windows: np.ndarray) -> np.ndarray:
        """Batch medians of windows (rows lo, hi, olo, ohi; one column each) whose lo and hi never
        decrease (queries in start order): one sorted list slides along, O(n log m) comparisons plus
        the list's memmoves, memory O(m) for batches of m requests (no per-request Python object)."""
        get = self.batch_values.item
        window: list[float] = []
        cur_lo = cur_hi = 0
        out = np.empty(windows.shape[1])
        chunk = 8192
        for c0 in range(0, windows.shape[1], chunk):
            part = windows[:, c0 : c0 + chunk].tolist()
            for j, (lo, hi, olo, ohi) in enumerate(zip(*part, strict=True)):
                if lo >= cur_hi:
                    window = sorted(get(i) for i in range(lo, hi))
                else:
                    for i in range(cur_hi, hi):
                        bisect.insort(window, get(i))
                    for i in range(cur_lo, lo):
                        del window[bisect.bisect_left(window, get(i))]
                cur_lo, cur_hi = lo, hi
                m = None if hi - lo < self.rule.min_finished else _sorted_median(window, ohi - olo)
                out[c0 + j] = _none_nan(m)
        return out


def _none_nan(v: float | None) -> float:
    return math.nan if v is None else v


# ------------------------------------------------------------------------------------------ goodput


def _parse_pairs(
    items: Sequence[str],
    flag: str,
    sep: str,
    keys: Collection[str],
    hint: str,
    check: Callable[[str, str, str], float],
    *,
    form: str,
    unknown: str,
) -> dict[str, float]:
    """KEY<sep>VALUE items of a CLI flag -> {key: value}; ``check(item, key, value)`` turns a value into a
    number or raises UserError. One message per kind of mistake, naming the item."""
    out: dict[str, float] = {}
    for item in items:
        key, found, value = item.partition(sep)
        key = key.strip().lower()
        if not found or not key or not value.strip():
            raise UserError(f"{flag} {item!r} is not {form}", hint)
        if key not in keys:
            raise UserError(f"{flag} {item!r}: unknown {unknown} {key!r}", hint)
        v = check(item, key, value)
        if key in out:
            raise UserError(f"{flag} names {key!r} twice", hint)
        out[key] = v
    if not out:
        raise UserError(f"{flag} needs at least one {form} item", hint)
    return out


def parse_goodput(spec: str | Sequence[str]) -> dict[str, float]:
    """The CLI form ``--goodput ttfvt:30 e2el:120`` -> ``{"ttfvt": 30.0, "e2el": 120.0}``.

    Keys are :data:`rllmtop.scenario.GOODPUT_KEYS` (ttft, ttfvt, e2el, itl); values are *seconds*
    (``vllm bench serve --goodput`` takes milliseconds: ``ttft:500`` there is ``ttft:0.5`` here).
    Raises UserError naming the bad item."""
    items = spec.split() if isinstance(spec, str) else [t for s in spec for t in str(s).split()]
    keys = ", ".join(GOODPUT_KEYS)
    hint = f"write KEY:SECONDS items, e.g. --goodput ttfvt:30 e2el:120 (keys: {keys}; seconds)"

    def check(item: str, key: str, value: str) -> float:
        try:
            v = float(value)
        except ValueError:
            raise UserError(f"--goodput {item!r}: {value!r} is not a number of seconds", hint) from None
        if not math.isfinite(v) or v <= 0:
            raise UserError(f"--goodput {item!r}: the limit must be a positive number of seconds", hint)
        return v

    return _parse_pairs(items, "--goodput", ":", GOODPUT_KEYS, hint, check, form="KEY:SECONDS", unknown="key")


def parse_slo(spec: str | Sequence[str], flag: str = "--slo") -> dict[str, float]:
    """The CLI form ``--slo ttfvt_p99=30 error_rate=0.01`` (or comma-separated) -> ``{"ttfvt_p99": 30.0,
    "error_rate": 0.01}``: run-level SLOs as a scenario's ``[slo]`` table takes them (:data:`SLO_KEYS`;
    latencies in seconds, rates as fractions, ``output_tps`` in tokens/s). UserError naming the bad item."""
    items = (spec.replace(",", " ").split() if isinstance(spec, str) else
             [t for s in spec for t in str(s).replace(",", " ").split()])  # fmt: skip
    hint = f"write KEY=VALUE items, e.g. {flag} ttfvt_p99=30 (keys as in [slo]: {', '.join(SLO_KEYS)})"

    def check(item: str, key: str, value: str) -> float:
        try:
            v = float(value)
        except ValueError:
            raise UserError(f"{flag} {item!r}: {value!r} is not a number", hint) from None
        if not math.isfinite(v) or v < 0 or (key in ("error_rate", "accuracy") and v > 1):
            what = "a fraction from 0 to 1" if key in ("error_rate", "accuracy") else "a number >= 0"
            raise UserError(f"{flag} {item!r}: the limit must be {what}", hint)
        return v

    return _parse_pairs(items, flag, "=", SLO_KEYS, hint, check, form="KEY=VALUE", unknown="SLO key")


_SLO_TO_GOODPUT = {"ttft": "ttft", "ttfvt": "ttfvt", "e2e": "e2el"}


def goodput_from_slo(slo: Mapping[str, float]) -> dict[str, float]:
    """Per-request goodput SLOs implied by run-level latency SLOs: ``ttfvt_p99 = 30`` -> ``ttfvt: 30``
    (a request is good when its own TTFVT is within the limit); ttft and e2e likewise, the tightest limit
    when several percentiles of one metric are given. Other keys imply none."""
    out: dict[str, float] = {}
    for key, limit in slo.items():
        metric, _, stat = key.rpartition("_")
        g = _SLO_TO_GOODPUT.get(metric)
        if g is not None and stat.startswith("p") and limit > 0:
            out[g] = min(limit, out.get(g, math.inf))
    return out


def _check_goodput(slo: Mapping[str, float] | None) -> dict[str, float]:
    out = dict(slo or {})
    for k, v in out.items():
        if k not in GOODPUT_KEYS:
            raise ValueError(f"unknown goodput SLO {k!r}; allowed: {', '.join(GOODPUT_KEYS)}")
        if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            raise ValueError(f"goodput SLO {k} must be a positive number of seconds, not {v!r}")
    return out


_GOODPUT_METRIC = {"ttft": "ttft", "ttfvt": "ttfvt", "e2el": "e2e", "itl": "itl"}


def _good(d: Mapping[str, np.ndarray], ok: np.ndarray, slo: Mapping[str, float]) -> np.ndarray:
    good = ok.copy()
    with np.errstate(invalid="ignore"):
        for key, limit in slo.items():
            v = d[_GOODPUT_METRIC[key]]
            if key == "itl":
                good &= np.isnan(v) | (v <= limit)  # no gap (one chunk): no inter-token wait
            else:
                good &= v <= limit  # NaN (e.g. never a visible token) misses it
    return good


def goodput_mask(
    requests: Iterable[RequestRecord] | RequestColumns | Mapping[str, Any], slo: Mapping[str, float]
) -> np.ndarray:
    """Per request (in order): it ended ok and met every per-request SLO of ``slo`` (GOODPUT_KEYS,
    seconds). All true for ok requests when ``slo`` is empty."""
    cols = _columns(requests)
    return _good(cols.derived(), cols.ok, _check_goodput(slo))


# ------------------------------------------------------------------------------------------ ASU summary


def _no_pcts() -> dict[int, float | None]:
    return {q: None for q in PCTS}


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
    span_s: float  # first request start .. last end of this class, seconds
    ttft: dict[int, float | None]
    ttfvt: dict[int, float | None]
    e2e: dict[int, float | None]
    tpot: dict[int, float | None]  # per request: (last token - first token) / (output tokens - 1)
    reasoning_len: dict[int, float | None]
    answer_len: dict[int, float | None]
    send_lag: dict[int, float | None]
    concurrency_wait: dict[int, float | None]
    stragglers: int
    finish_reasons: dict[str, int] = field(default_factory=dict)
    itl: dict[int, float | None] = field(default_factory=_no_pcts)  # per request: mean inter-chunk gap
    good: int = 0  # ok and met every goodput SLO (every ok request when there is no goodput SLO)
    goodput_rps: float | None = None  # good / the run's span; None without goodput SLOs
    goodput_tps: float | None = None  # answer tokens of good requests / the run's span

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
            "good": self.good,
            "goodput_rps": self.goodput_rps,
            "goodput_tps": self.goodput_tps,
        }
        for key in (
            "ttft",
            "ttfvt",
            "e2e",
            "tpot",
            "itl",
            "reasoning_len",
            "answer_len",
            "send_lag",
            "concurrency_wait",
        ):
            for q, v in getattr(self, key).items():
                d[f"{key}_p{q}"] = v
        return d


@dataclass(frozen=True)
class TurnSummary:
    """User-end latency of one turn of multi-turn conversations (every conversation's k-th request)."""

    turn: int  # 1-based, as a user counts turns
    requests: int  # ended
    ok: int
    ttfvt: dict[int, float | None]
    e2e: dict[int, float | None]
    reasoning_len: dict[int, float | None]


@dataclass(frozen=True)
class AsuSummary:
    overall: ClassSummary
    classes: tuple[ClassSummary, ...]
    straggler_rule: str
    goodput: Mapping[str, float] = field(default_factory=dict)  # the per-request SLOs, seconds ({}: none)
    run_span_s: float = 0.0  # first request start .. last end of the run: the goodput denominator
    unfinished: int = 0  # requests that never ended (in flight when a recording stopped)
    recent: int | None = None  # percentiles and stragglers cover only the most recent N ended (LiveAsu)
    turns: tuple[TurnSummary, ...] = ()  # per turn, when the run had conversations (else empty)

    def by_name(self) -> dict[str, ClassSummary]:
        return {c.name: c for c in (self.overall, *self.classes)}


@dataclass
class _Counts:
    """The exact, additive part of a class summary."""

    requests: int = 0
    ok: int = 0
    errors: int = 0
    cancelled: int = 0
    truncated: int = 0
    no_visible: int = 0
    graded: int = 0
    correct: int = 0
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    first_start: float = math.inf
    last_end: float = -math.inf
    good: int = 0
    good_answer_tokens: int = 0
    finish: Counter[str] = field(default_factory=Counter)

    def add(self, o: _Counts) -> None:
        for f in (
            "requests",
            "ok",
            "errors",
            "cancelled",
            "truncated",
            "no_visible",
            "graded",
            "correct",
            "reasoning_tokens",
            "answer_tokens",
            "good",
            "good_answer_tokens",
        ):
            setattr(self, f, getattr(self, f) + getattr(o, f))
        self.first_start = min(self.first_start, o.first_start)
        self.last_end = max(self.last_end, o.last_end)
        self.finish.update(o.finish)

    def copy(self) -> _Counts:
        c = replace(self)
        c.finish = Counter(self.finish)
        return c

    @property
    def span(self) -> float:
        return self.last_end - self.first_start if self.last_end >= self.first_start else 0.0


_STATUS_NAME = ("ok", "error", "cancelled", "in_flight")


def _counts_by_class(
    cols: RequestColumns, d: Mapping[str, np.ndarray], slo: Mapping[str, float]
) -> dict[str, _Counts]:
    """Exact counts per class (first-seen order) over ``cols``, which holds ended requests only."""
    ok = cols.ok
    good = _good(d, ok, slo)
    out: dict[str, _Counts] = {}
    for k, name in enumerate(cols.classes):
        m = cols.cls == k
        if not m.any():
            continue
        okm = ok & m
        start = d["start"][m]
        start = start[~np.isnan(start)]
        end = cols.t_done[m]
        end = end[~np.isnan(end)]
        fin: Counter[str] = Counter()
        codes, n = np.unique(cols.finish[m], return_counts=True)
        for code, c in zip(codes.tolist(), n.tolist(), strict=True):
            if code >= 0:
                fin[cols.finish_names[code]] += c
        if (cols.finish[m] < 0).any():
            st, sn = np.unique(cols.status[m & (cols.finish < 0)], return_counts=True)
            for code, c in zip(st.tolist(), sn.tolist(), strict=True):
                fin[_STATUS_NAME[code]] += c
        length = cols.finish_names.index("length") if "length" in cols.finish_names else -2
        graded = cols.correct[m] >= 0
        out[name] = _Counts(
            requests=int(m.sum()),
            ok=int(okm.sum()),
            errors=int((m & (cols.status == _ERROR)).sum()),
            cancelled=int((m & (cols.status == _CANCELLED)).sum()),
            truncated=int((okm & (cols.finish == length)).sum()),
            no_visible=int((okm & np.isnan(cols.t_first_visible)).sum()),
            graded=int(graded.sum()),
            correct=int((cols.correct[m] == 1).sum()),
            reasoning_tokens=int(cols.reasoning_tokens[m].sum()),
            answer_tokens=int(cols.answer_tokens[m].sum()),
            first_start=float(start.min()) if start.size else math.inf,
            last_end=float(end.max()) if end.size else -math.inf,
            good=int((good & m).sum()),
            good_answer_tokens=int(cols.answer_tokens[good & m].sum()),
            finish=fin,
        )
    return out


def _class_summary(
    name: str,
    c: _Counts,
    d: Mapping[str, np.ndarray],
    ok: np.ndarray,
    every: np.ndarray,
    strag: int,
    run_span: float,
    has_goodput: bool,
    pcts: Sequence[int] = PCTS,
) -> ClassSummary:
    """``ok``/``every``: masks of the class's ok / ended rows of the columns ``d``."""

    def p(key: str, mask: np.ndarray | None = None) -> dict[int, float | None]:
        return percentiles(d[key][ok if mask is None else mask], pcts)

    rate = has_goodput and run_span > 0
    return ClassSummary(
        name=name,
        requests=c.requests,
        ok=c.ok,
        errors=c.errors,
        cancelled=c.cancelled,
        truncated=c.truncated,
        no_visible=c.no_visible,
        graded=c.graded,
        correct=c.correct,
        reasoning_tokens=c.reasoning_tokens,
        answer_tokens=c.answer_tokens,
        span_s=c.span,
        ttft=p("ttft"),
        ttfvt=p("ttfvt"),
        e2e=p("e2e"),
        tpot=p("tpot"),
        reasoning_len=p("reasoning"),
        answer_len=p("answer"),
        send_lag=p("send_lag", every),
        concurrency_wait=p("concurrency_wait", every),
        stragglers=strag,
        finish_reasons=dict(c.finish),
        itl=p("itl"),
        good=c.good,
        goodput_rps=c.good / run_span if rate else None,
        goodput_tps=c.good_answer_tokens / run_span if rate else None,
    )


def _summary(
    cols: RequestColumns,
    counts: Mapping[str, _Counts],
    rule: StragglerRule,
    slo: Mapping[str, float],
    *,
    unfinished: int = 0,
    recent: int | None = None,
    derived: Mapping[str, np.ndarray] | None = None,
    pcts: Sequence[int] = PCTS,
) -> AsuSummary:
    """Percentiles and stragglers over ``cols`` (ended requests), counts from ``counts``."""
    d = dict(derived if derived is not None else cols.derived())
    d["reasoning"] = cols.reasoning_tokens
    d["answer"] = cols.answer_tokens
    ok = cols.ok
    names = np.asarray(cols.classes, dtype=object)[cols.cls] if len(cols) else np.empty(0, dtype=object)
    base = rule._baselines(names[ok], d["e2e"][ok], cols.reasoning_tokens[ok], d["start"][ok])
    strag = np.zeros(len(cols), dtype=bool)
    strag[np.flatnonzero(ok)] = (
        base.judge(names[ok], d["e2e"][ok], cols.reasoning_tokens[ok], d["start"][ok]) > 0
    )
    total = _Counts()
    for c in counts.values():
        total.add(c)
    run_span = total.span
    has_goodput = bool(slo)
    classes = []
    for name, c in counts.items():
        m = names == name
        classes.append(
            _class_summary(name, c, d, ok & m, m, int(strag[m].sum()), run_span, has_goodput, pcts)
        )
    every = np.ones(len(cols), dtype=bool)
    overall = _class_summary("all", total, d, ok, every, int(strag.sum()), run_span, has_goodput, pcts)
    turns = _turn_summaries(cols, d, ok, pcts)
    return AsuSummary(
        overall, tuple(classes), rule.describe(), dict(slo), run_span, unfinished, recent, turns
    )


def _turn_summaries(
    cols: RequestColumns, d: Mapping[str, np.ndarray], ok: np.ndarray, pcts: Sequence[int]
) -> tuple[TurnSummary, ...]:
    """Per turn of the conversations in ``cols`` (none: no request is past its first turn)."""
    turn = cols.turn
    if not len(cols) or not (turn > 0).any():
        return ()
    out = []
    for k in np.unique(turn[np.isfinite(turn)]).tolist():
        m = turn == k
        g = ok & m
        out.append(
            TurnSummary(
                turn=int(k) + 1,
                requests=int(m.sum()),
                ok=int(g.sum()),
                ttfvt=percentiles(d["ttfvt"][g], pcts),
                e2e=percentiles(d["e2e"][g], pcts),
                reasoning_len=percentiles(d["reasoning"][g], pcts),
            )
        )
    return tuple(out)


def asu_summary(
    requests: Iterable[RequestRecord] | RequestColumns | Mapping[str, Any],
    rule: StragglerRule | None = None,
    *,
    goodput: Mapping[str, float] | None = None,
    pcts: Sequence[int] | None = None,
) -> AsuSummary:
    """ASU numbers per class (in first-seen order) and overall, over the requests that ended.

    ``requests``: records (any iterable, read once: a recording's ``iter_requests()``), or columns
    (:class:`RequestColumns`, or a mapping of RequestRecord field names to numpy columns). ``goodput``:
    per-request SLOs (GOODPUT_KEYS, seconds). ``pcts``: percentiles to compute besides :data:`PCTS`
    (``--metric-percentiles``; 0..100). Memory: ~110 bytes per request (the columns), never the
    records; time O(n log n + streamed chunks). Requests that never ended count in ``unfinished``."""
    qs = _pcts(pcts)
    rule = rule or StragglerRule()
    slo = _check_goodput(goodput)
    cols = _columns(requests)
    ended = cols.ended
    unfinished = int((~ended).sum())
    if unfinished:
        cols = cols.take(ended)
    d = cols.derived()
    counts = _counts_by_class(cols, d, slo)
    return _summary(cols, counts, rule, slo, unfinished=unfinished, derived=d, pcts=qs)


def _pcts(extra: Sequence[int] | None) -> tuple[int, ...]:
    """:data:`PCTS` and ``extra``, sorted (ValueError outside 0..100)."""
    qs = set(PCTS)
    for q in extra or ():
        if not (isinstance(q, int) and not isinstance(q, bool) and 0 <= q <= 100):
            raise ValueError(f"percentile {q!r} is not a whole number from 0 to 100")
        qs.add(q)
    return tuple(sorted(qs))


@dataclass(frozen=True, eq=False)
class AsuState:
    """A frozen moment of a :class:`LiveAsu`: safe to summarise in another thread."""

    columns: RequestColumns  # the most recent ended requests (at most LiveAsu.recent)
    counts: Mapping[str, _Counts]
    ended: int  # every request that ended so far
    rule: StragglerRule
    goodput: Mapping[str, float]

    def summary(self) -> AsuSummary:
        """O(recent log recent). Counts, tokens, accuracy, goodput: exact over the run; percentiles and
        stragglers: over the most recent ``len(columns)`` ended requests (``AsuSummary.recent``)."""
        recent = len(self.columns) if self.ended > len(self.columns) else None
        return _summary(self.columns, self.counts, self.rule, self.goodput, recent=recent)

    def baselines(self, in_flight: Iterable[Any] = ()) -> StragglerBaselines:
        return self.rule.baselines(self.columns, in_flight)


class LiveAsu:
    """The live panel's ASU summary in bounded memory.

    Exact over the whole run: request counts, errors, truncations, tokens, accuracy, goodput counts and
    the span. Percentiles and stragglers: over the most recent ``recent`` ended requests (the summary
    says so in ``AsuSummary.recent``). Memory: O(recent) (~110 bytes each) plus one counter set per
    class. :meth:`add`: O(1) amortised (records are batched ``CHUNK`` at a time into columns);
    :meth:`freeze`: O(recent)."""

    CHUNK = 256

    def __init__(
        self,
        rule: StragglerRule | None = None,
        *,
        recent: int = 10_000,
        goodput: Mapping[str, float] | None = None,
    ) -> None:
        if recent < 1:
            raise ValueError("recent must be >= 1")
        self.rule = rule or StragglerRule()
        self.recent = recent
        self.goodput = _check_goodput(goodput)
        self.reset()

    def reset(self) -> None:
        self._pending: list[RequestRecord] = []
        self._chunks: deque[RequestColumns] = deque()
        self._held = 0
        self._ended = 0
        self._counts: dict[str, _Counts] = {}

    @property
    def ended(self) -> int:
        return self._ended + len(self._pending)

    def add(self, rec: RequestRecord) -> None:
        """A request that ended (an in-flight snapshot is ignored)."""
        if not rec.ended or (rec.status is RequestStatus.OK and rec.t_done is None):
            return
        self._pending.append(rec)
        if len(self._pending) >= self.CHUNK:
            self._absorb()

    def _absorb(self) -> None:
        if not self._pending:
            return
        cols = RequestColumns.from_records(self._pending)
        self._pending = []
        for name, c in _counts_by_class(cols, cols.derived(), self.goodput).items():
            mine = self._counts.get(name)
            if mine is None:
                self._counts[name] = c
            else:
                mine.add(c)
        self._chunks.append(cols)
        self._held += len(cols)
        self._ended += len(cols)
        while self._chunks and self._held - len(self._chunks[0]) >= self.recent:
            self._held -= len(self._chunks.popleft())

    def freeze(self) -> AsuState:
        self._absorb()
        cols = RequestColumns.concat(list(self._chunks))
        if len(cols) > self.recent:
            cols = cols.take(np.arange(len(cols) - self.recent, len(cols)))
        counts = {k: v.copy() for k, v in self._counts.items()}
        return AsuState(cols, counts, self._ended, self.rule, dict(self.goodput))

    def summary(self) -> AsuSummary:
        return self.freeze().summary()


@dataclass(frozen=True, slots=True)
class SloMiss:
    """One run-level SLO a summary missed: its key, the measured value (None: no data), the limit."""

    key: str
    value: float | None
    limit: float
    text: str  # one line, as :func:`check_slos` says it


def slo_value(summary: ClassSummary, key: str) -> float | None:
    """The number an SLO key (:data:`SLO_KEYS`) is judged on (seconds, a fraction or tokens/s); None when
    there is no data. Unknown keys raise ValueError."""
    if key not in SLO_KEYS:
        raise ValueError(f"unknown SLO {key!r}; allowed: {', '.join(sorted(SLO_KEYS))}")
    if key == "error_rate":
        return summary.error_rate
    if key == "accuracy":
        return summary.accuracy
    if key == "output_tps":
        return summary.output_tps
    metric, stat = key.rsplit("_", 1)
    vals: Mapping[int, float | None] = getattr(summary, metric)
    return vals.get(int(stat[1:]))


def slo_misses(summary: ClassSummary, slo: Mapping[str, float]) -> list[SloMiss]:
    """The SLOs of ``slo`` that ``summary`` missed, in order (empty when all are met). A maximum is missed
    above its limit, a minimum (accuracy, output_tps) below it or without data; a latency without data is
    missed; an error rate without requests is not. Unknown keys raise ValueError."""
    missed: list[SloMiss] = []
    for key, limit in slo.items():
        v = slo_value(summary, key)
        if key == "error_rate":
            if v is not None and v > limit:
                missed.append(SloMiss(key, v, limit, f"error_rate {v:.3f} > {limit:g}"))
        elif key == "accuracy":
            if v is None or v < limit:
                missed.append(
                    SloMiss(key, v, limit, f"accuracy {'n/a' if v is None else f'{v:.3f}'} < {limit:g}")
                )
        elif key == "output_tps":
            if v is None or v < limit:
                missed.append(
                    SloMiss(key, v, limit, f"output_tps {'n/a' if v is None else f'{v:.1f}'} < {limit:g}")
                )
        elif v is None:
            missed.append(SloMiss(key, v, limit, f"{key}: no data"))
        elif v > limit:
            missed.append(SloMiss(key, v, limit, f"{key} {v:.3f}s > {limit:g}s"))
    return missed


def check_slos(summary: ClassSummary, slo: Mapping[str, float]) -> list[str]:
    """One line per missed SLO (empty when all are met). Unknown keys raise ValueError."""
    return [m.text for m in slo_misses(summary, slo)]


# ------------------------------------------------------------------------------------------ trust verdicts

CLIENT_DELAY_S = 0.010
"""Heartbeat lateness (session seconds) above which latencies are said to include client delay."""


@dataclass(frozen=True)
class ClientDelayVerdict:
    """Whether the client's own event loop was late enough to inflate the latencies it measured."""

    measured: bool  # a heartbeat series was recorded
    fired: bool  # some interval's worst lateness passed the threshold
    threshold_s: float
    max_delay_s: float | None  # worst heartbeat lateness of the run (session seconds)
    t_worst: float | None  # when (end of that interval)
    intervals: int
    intervals_over: int
    touched: int  # requests whose life [start, end] overlaps an interval over the threshold
    requests: int  # requests considered (with a start time)
    sentence: str  # in words, for every face
    cpu_share: float | None = None  # the sender's CPU use in the worst interval, in cores (None: not known)

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _merge(intervals: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    intervals.sort()
    lo: list[float] = []
    hi: list[float] = []
    for a, b in intervals:
        if lo and a <= hi[-1]:
            hi[-1] = max(hi[-1], b)
        else:
            lo.append(a)
            hi.append(b)
    return np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)


def _overlaps(lo: np.ndarray, hi: np.ndarray, s: np.ndarray, e: np.ndarray) -> np.ndarray:
    """For each life [s, e]: does it share more than an end point with one of the disjoint sorted
    intervals [lo, hi]?"""
    if lo.size == 0:
        return np.zeros(s.size, dtype=bool)
    i = np.searchsorted(hi, s, side="right")  # first interval ending after the start
    inside = i < lo.size
    return inside & (lo[np.minimum(i, lo.size - 1)] < e)


def client_delay_verdict(
    health: Iterable[ClientHealth],
    requests: Iterable[RequestRecord] | RequestColumns | Mapping[str, Any],
    *,
    threshold: float = CLIENT_DELAY_S,
    clock: str = "wall",
    speed: float = 1.0,
) -> ClientDelayVerdict:
    """Say whether latencies include client delay: the heartbeat's worst lateness (``ClientHealth
    .lag_max``) per interval against ``threshold`` (session seconds: in a time-lapse run a late wall
    millisecond is ``speed`` simulated ones, and the sentence says so), the worst delay, and which
    requests it touched (their life [latency start, end] overlaps an interval over the threshold; an
    interval is matched to the requests of its own sender, or of every sender when the request's worker
    sent no heartbeat). Cost: O(h log h + n log h); the requests are read once."""
    hs = list(health)
    cols = _columns(requests)
    start = cols.latency_start
    end = np.where(np.isnan(cols.t_done), start, cols.t_done)
    has = ~np.isnan(start)
    n = int(has.sum())
    if not hs:
        return ClientDelayVerdict(
            False, False, threshold, None, None, 0, 0, 0, n,
            "client delay not measured (no client heartbeat was recorded)",
        )  # fmt: skip
    worst = max(hs, key=lambda h: h.lag_max)
    bad: dict[int, list[tuple[float, float]]] = defaultdict(list)
    every: list[tuple[float, float]] = []
    for h in hs:
        if h.lag_max > threshold:
            iv = (h.t - h.interval, h.t)
            bad[h.worker].append(iv)
            every.append(iv)
    heard = {h.worker for h in hs}
    touched = np.zeros(start.size, dtype=bool)
    if every:
        all_lo, all_hi = _merge(list(every))
        for w in np.unique(cols.worker).tolist():
            m = has & (cols.worker == w)
            lo, hi = _merge(bad.get(w, [])) if w in heard else (all_lo, all_hi)
            touched[m] = _overlaps(lo, hi, start[m], end[m])
    k = int(touched.sum())
    fired = bool(every)
    wall = ""
    if clock == "simulated" and speed != 1:
        wall = f"; simulated seconds: {fmt.seconds(worst.lag_max / speed)} of wall time at speed {speed:g}"
    share = None
    wall_s = 1.0 / speed if clock == "simulated" else 1.0  # wall seconds per session second
    if worst.cpu_s is not None and worst.interval > 0:
        share = worst.cpu_s / (worst.interval * wall_s)
    if fired:
        cause = _delay_cause(share, worst.cpu_s, worst.lag_max * wall_s)
        sentence = (
            f"latencies include up to {fmt.seconds(worst.lag_max)} of client delay (client event loop "
            f"late{wall}); {k} of {n} requests were touched{cause}"
        )
    else:
        sentence = (
            f"the client kept up: its event loop was never more than {fmt.seconds(worst.lag_max)} late "
            f"(threshold {fmt.seconds(threshold)}{wall})"
        )
    return ClientDelayVerdict(
        True, fired, threshold, worst.lag_max, worst.t, len(hs), len(every), k, n, sentence, share
    )


BUSY_SHARE = 0.9
"""A late client that used at least this share of a core in its worst interval was busy itself."""


def _delay_cause(share: float | None, cpu_s: float | None, late_s: float) -> str:
    """Why the client was late, from its worst interval, and what to do about it. Late by ``late_s``
    (wall seconds) with less than half that in CPU: it cannot have been running its own work all that
    time, so it was waiting for a CPU. Busy for nearly the whole interval: its own work. In between
    (say 44% of a core and 51 ms late: one long callback, or a short wait for the CPU) it says the
    share and names neither."""
    if share is None or cpu_s is None:
        return ""
    if cpu_s < 0.5 * late_s:
        return (
            f"; it was waiting for a CPU (it used {share:.0%} of a core then): other processes held the "
            "cores. Give it cores of its own (taskset -c), lower a launched engine's priority "
            "([engine] nice = 10), or run the engine on another machine"
        )
    if share >= BUSY_SHARE:
        return (
            f"; it was busy itself ({share:.0%} of a core then): spread the load over processes (--workers N)"
        )
    return f"; it used {share:.0%} of a core then (its own work, or other processes on the machine)"


@dataclass(frozen=True)
class SimDriftVerdict:
    """Whether the simulator fell behind its model's schedule (its CPU was taken): latencies inflated."""

    measured: bool  # some engine served sim_drift_seconds
    fired: bool
    drift_s: float | None  # the worst engine's drift over the session (session seconds)
    bound_s: float
    duration_s: float
    engine: str  # the worst engine's id ("" for a single engine)
    sentence: str

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def sim_drift_bound(duration: float) -> float:
    """The drift a run may have without a warning: 1% of the run, at most 1 s, at least 50 ms."""
    return max(0.05, min(1.0, 0.01 * max(duration, 0.0)))


def sim_drift_verdict(
    samples: Sequence[MetricSample] | Mapping[str, Sequence[MetricSample]], duration: float
) -> SimDriftVerdict:
    """From the simulator's ``sim_drift_seconds`` counter (model seconds it fell behind, cumulative): the
    increase over the session, per engine; fires when the worst exceeds :func:`sim_drift_bound`."""
    per_engine = samples if isinstance(samples, Mapping) else {"": samples}
    bound = sim_drift_bound(duration)
    worst: tuple[float, str] | None = None
    for eid, ss in per_engine.items():
        inc = _increase(ss, "sim_drift_seconds")
        if inc is not None and (worst is None or inc > worst[0]):
            worst = (inc, eid)
    if worst is None:
        return SimDriftVerdict(False, False, None, bound, duration, "", "")
    drift, eid = worst
    where = f" (engine {eid})" if eid and len(per_engine) > 1 else ""
    if drift > bound:
        share = (
            f"{fmt.percent(drift / duration)} of the {fmt.seconds(duration)} run" if duration > 0 else "run"
        )
        sentence = (
            f"the simulator{where} fell {fmt.seconds(drift)} behind its model schedule ({share}): its CPU "
            "was taken, latencies are inflated"
        )
    else:
        sentence = f"the simulator{where} kept to its model schedule (drift {fmt.seconds(drift)})"
    return SimDriftVerdict(True, drift > bound, drift, bound, duration, eid, sentence)


def trust_warnings(*verdicts: ClientDelayVerdict | SimDriftVerdict | None) -> list[str]:
    """The sentences of the verdicts that fired, for a face to print (empty: the numbers hold)."""
    return [v.sentence for v in verdicts if v is not None and v.fired]


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
    kv_weighting: str = ""  # how a fleet's KV usage was formed ("" for one engine)

    def rows(self) -> Iterable[dict[str, float]]:
        names = list(self.columns)
        for i, t in enumerate(self.t):
            yield {"t": float(t), **{n: float(self.columns[n][i]) for n in names}}


GAUGE_COLUMNS = ("kv_cache_usage", "requests_running", "requests_waiting")
COUNTER_COLUMNS = {"preemptions": "preemptions_total", "engine_generation_tps": "generation_tokens_total"}
FLEET_COLUMNS = ("kv_spread", "waiting_spread")  # only in a fleet timeline (2+ engines)

EngineSamples = Sequence[MetricSample] | Mapping[str, Sequence[MetricSample]]
"""One engine's samples, or a fleet's: engine id -> its samples (``samples_by_engine``)."""


def samples_by_engine(scrapes: Iterable[Scrape]) -> dict[str, list[MetricSample]]:
    """The samples of each engine (``Scrape.engine_id``; "" in single-engine recordings), in order."""
    out: dict[str, list[MetricSample]] = {}
    for s in scrapes:
        out.setdefault(s.engine_id, []).extend(s.samples)
    return out


def _per_engine(samples: EngineSamples) -> dict[str, Sequence[MetricSample]]:
    return dict(samples) if isinstance(samples, Mapping) else {"": samples}


def _series(samples: Sequence[MetricSample], name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    by: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for s in samples:
        if s.name == name:
            by[s.labels].append((s.t, s.value))
    out = []
    for pts in by.values():
        pts.sort()
        out.append((np.array([p[0] for p in pts]), np.array([p[1] for p in pts])))
    return out


def _nan_sum(stack: np.ndarray) -> np.ndarray:
    """Sum over rows, NaN where every row is NaN (never served is missing, not 0)."""
    with np.errstate(all="ignore"):
        return np.where(np.all(np.isnan(stack), axis=0), np.nan, np.nansum(stack, axis=0))


def _weighted_mean(stack: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mean over rows weighted by ``w``, over the rows with data in each column (NaN when none)."""
    have = ~np.isnan(stack)
    ww = np.where(have, w[:, None], 0.0)
    with np.errstate(all="ignore"):
        return np.where(have.any(axis=0), np.nansum(stack * ww, axis=0) / ww.sum(axis=0), np.nan)


def _gauge_column(samples: Sequence[MetricSample], name: str, edges: np.ndarray) -> np.ndarray:
    """Last reading per bin, carried forward, NaN before the first (and if never served); DP ranks of one
    engine (label sets) summed, KV usage averaged over them."""
    n = edges.size - 1
    cols = []
    for ts, vs in _series(samples, name):
        idx = np.searchsorted(ts, edges[1:], side="left") - 1  # last reading before the bin's end
        cols.append(np.where(idx >= 0, vs[np.clip(idx, 0, None)], np.nan))
    if not cols:
        return np.full(n, np.nan)
    stack = np.vstack(cols)
    if stack.shape[0] == 1:
        return stack[0]
    if name == "kv_cache_usage":
        return _weighted_mean(stack, np.ones(stack.shape[0]))
    return _nan_sum(stack)


def _counter_column(
    samples: Sequence[MetricSample], name: str, edges: np.ndarray, per_second: bool
) -> np.ndarray:
    n = edges.size - 1
    series = _series(samples, name)
    if not series:
        return np.full(n, np.nan)
    total = np.zeros(n)
    for ts, vs in series:
        if ts.size < 2:
            continue
        dv = np.diff(vs)
        dv = np.where(dv >= 0, dv, vs[1:])
        bins = np.clip(np.searchsorted(edges, ts[1:], side="right") - 1, 0, n - 1)
        total += np.bincount(bins, weights=dv, minlength=n)[:n]
    if per_second:
        total = total / np.diff(edges)
    return total


def _last_value(samples: Sequence[MetricSample], name: str) -> float | None:
    """The latest reading of ``name``, summed over label sets (e.g. DP ranks); None if never served."""
    series = _series(samples, name)
    vals = [float(vs[-1]) for _, vs in series if vs.size and math.isfinite(vs[-1])]
    return sum(vals) if vals else None


def kv_weights(samples: EngineSamples) -> tuple[dict[str, float], str]:
    """Each engine's weight in the fleet's KV usage, and how it was chosen (in words): its capacity
    (``kv_total_blocks``, else ``kv_total_tokens``) when every engine serves the same one, else equal
    weights. One engine: weight 1."""
    per = _per_engine(samples)
    if len(per) <= 1:
        return {e: 1.0 for e in per}, "one engine"
    for cap in ("kv_total_blocks", "kv_total_tokens"):
        caps = {e: _last_value(ss, cap) for e, ss in per.items()}
        if all(c is not None and c > 0 for c in caps.values()):
            total = sum(c for c in caps.values() if c is not None)
            return {
                e: (c or 0.0) / total for e, c in caps.items()
            }, f"weighted by each engine's capacity ({cap})"
    return {e: 1 / len(per) for e in per}, "equal weights (not every engine serves its KV capacity)"


def _engine_columns(samples: Sequence[MetricSample], edges: np.ndarray) -> dict[str, np.ndarray]:
    cols = {name: _gauge_column(samples, name, edges) for name in GAUGE_COLUMNS}
    cols["preemptions"] = _counter_column(samples, "preemptions_total", edges, per_second=False)
    cols["engine_generation_tps"] = _counter_column(
        samples, "generation_tokens_total", edges, per_second=True
    )
    return cols


def _fleet_columns(
    per: Mapping[str, Sequence[MetricSample]], edges: np.ndarray
) -> tuple[dict[str, np.ndarray], str]:
    if len(per) == 1:
        return _engine_columns(next(iter(per.values())), edges), ""
    weights, how = kv_weights(per)
    each = {e: _engine_columns(ss, edges) for e, ss in per.items()}
    ids = list(each)
    out: dict[str, np.ndarray] = {}
    kv = np.vstack([each[e]["kv_cache_usage"] for e in ids])
    out["kv_cache_usage"] = _weighted_mean(kv, np.array([weights[e] for e in ids]))
    for name in ("requests_running", "requests_waiting", "preemptions", "engine_generation_tps"):
        out[name] = _nan_sum(np.vstack([each[e][name] for e in ids]))
    waiting = np.vstack([each[e]["requests_waiting"] for e in ids])
    for name, stack in (("kv_spread", kv), ("waiting_spread", waiting)):
        have = (~np.isnan(stack)).sum(axis=0)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="All-NaN slice", category=RuntimeWarning)
            out[name] = np.where(have >= 2, np.nanmax(stack, axis=0) - np.nanmin(stack, axis=0), np.nan)
    return out, how


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
    samples: EngineSamples,
    *,
    step: float = 1.0,
    t_end: float | None = None,
) -> Timeline:
    """Per-``step`` series: engine gauges (last reading in the bin; NaN when the engine does not serve the
    metric), engine counter rates, client arrivals/completions/errors counts, and client-side reasoning vs
    answer tokens/s. ``samples`` of one engine, or of a fleet (engine id -> samples): then KV usage is
    weighted by capacity (``Timeline.kv_weighting`` says how), queues and rates are summed, and
    ``kv_spread`` / ``waiting_spread`` (max - min across engines) show the imbalance. Cost: O(samples +
    total streamed chunks)."""
    if step <= 0:
        raise ValueError("step must be > 0")
    per = _per_engine(samples)
    ends = [s.t for ss in per.values() for s in ss] + [
        t for r in requests for t in (r.t_done, r.t_sent, r.t_scheduled) if t is not None
    ]
    last = t_end if t_end is not None else (max(ends) if ends else 0.0)
    nbins = max(1, math.ceil(last / step + 1e-9))
    edges = np.arange(nbins + 1, dtype=float) * step
    cols, how = _fleet_columns(per, edges) if per else (_engine_columns((), edges), "")
    cols["arrivals"] = _event_counts((r.t_sent for r in requests), edges)
    cols["completions"] = _event_counts((r.t_done for r in requests if r.status is RequestStatus.OK), edges)
    cols["errors"] = _event_counts(
        (
            r.t_done if r.t_done is not None else r.t_sent
            for r in requests
            if r.status is not RequestStatus.OK and r.status is not RequestStatus.IN_FLIGHT
        ),
        edges,
    )
    cols["reasoning_tps"], cols["answer_tps"] = _token_columns(requests, edges)
    return Timeline(step, edges[:-1], cols, how)


def engine_timelines(
    samples: Mapping[str, Sequence[MetricSample]], *, step: float = 1.0, t_end: float | None = None
) -> dict[str, Timeline]:
    """One engine-only timeline per engine of a fleet, on one time axis."""
    if t_end is None:
        t_end = max((s.t for ss in samples.values() for s in ss), default=0.0)
    return {e: timeline((), ss, step=step, t_end=t_end) for e, ss in samples.items()}


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
    """Engine-side numbers over the load window (load start .. last request end). ``None``: not served.

    For a fleet: KV usage is the capacity-weighted fleet usage (``kv_weighting`` says how), except the
    peak, which is the highest reading of any engine; queues are summed (their peaks are the fleet
    sum's); counters are summed; the spreads (max - min across engines) show the imbalance."""

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
    engines: int = 1
    kv_weighting: str = ""  # "" for one engine
    kv_spread_mean: float | None = None  # fleet only: mean of (max - min KV usage across engines)
    kv_spread_peak: float | None = None
    waiting_spread_mean: float | None = None  # fleet only: mean of (max - min waiting across engines)
    waiting_spread_peak: float | None = None

    def as_dict(self) -> dict[str, float | int | str | None]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _increase(samples: Sequence[MetricSample], name: str) -> float | None:
    series = _series(samples, name)
    if not series:
        return None
    return float(sum(counter_increase(vs.tolist()) for _, vs in series))


def _fleet_increase(per: Mapping[str, Sequence[MetricSample]], name: str) -> float | None:
    incs = [v for v in (_increase(ss, name) for ss in per.values()) if v is not None]
    return float(sum(incs)) if incs else None


def scrape_step(samples: EngineSamples) -> float:
    """The typical time between two readings of one series (the scrape interval), 0.25 s if unknown;
    of a fleet: the shortest of its engines'."""
    steps = []
    for ss in _per_engine(samples).values():
        times = sorted({s.t for s in ss if s.name in ("kv_cache_usage", "requests_running")})
        if len(times) >= 3:
            steps.append(max(float(np.median(np.diff(times))), 0.01))
    return min(steps) if steps else 0.25


_ENGINE_GAUGES = (
    "kv_cache_usage",
    "requests_running",
    "requests_waiting",
    "kv_total_blocks",
    "kv_total_tokens",
)


def engine_summary(samples: EngineSamples, t0: float, t1: float, step: float | None = None) -> EngineSummary:
    """Gauge means/peaks over ``[t0, t1]`` (last reading per ``step`` window, carried forward; NaN windows
    where the engine serves nothing are left out), counter increases over the whole session. ``samples``
    of one engine, or of a fleet (engine id -> samples): see :class:`EngineSummary`."""
    per = _per_engine(samples)
    step = step or scrape_step(per)
    t1 = max(t1, t0 + step)
    gauges = {e: [s for s in ss if s.name in _ENGINE_GAUGES] for e, ss in per.items()}
    tl = timeline((), gauges, step=step, t_end=t1)
    mask = (tl.t + step > t0) & (tl.t < t1)

    def col(name: str) -> np.ndarray:
        c = tl.columns[name][mask]
        return c[~np.isnan(c)]

    def mean(name: str) -> float | None:
        c = col(name)
        return _finite_or_none(float(c.mean())) if c.size else None

    def raw_peak(name: str) -> float | None:
        vals = [s.value for ss in per.values() for s in ss if s.name == name and t0 <= s.t <= t1 + step]
        return float(max(vals)) if vals else None

    def peak(name: str) -> float | None:
        single = sum(len(_series(ss, name)) for ss in per.values()) <= 1
        if single:
            return raw_peak(name)
        c = col(name)
        return float(c.max()) if c.size else None

    kv = col("kv_cache_usage")
    hits = _fleet_increase(per, "prefix_cache_hits_total")
    queries = _fleet_increase(per, "prefix_cache_queries_total")
    fleet = len(per) > 1
    return EngineSummary(
        window_s=t1 - t0,
        step_s=step,
        kv_usage_mean=mean("kv_cache_usage"),
        kv_usage_peak=raw_peak("kv_cache_usage"),
        kv_full_frac=float(np.mean(kv >= KV_FULL)) if kv.size else None,
        running_mean=mean("requests_running"),
        running_peak=peak("requests_running"),
        waiting_mean=mean("requests_waiting"),
        waiting_peak=peak("requests_waiting"),
        preemptions=_fleet_increase(per, "preemptions_total"),
        prefix_hit_rate=(hits / queries) if hits is not None and queries else None,
        engines=max(len(per), 1),
        kv_weighting=tl.kv_weighting,
        kv_spread_mean=mean("kv_spread") if fleet else None,
        kv_spread_peak=(float(col("kv_spread").max()) if col("kv_spread").size else None) if fleet else None,
        waiting_spread_mean=mean("waiting_spread") if fleet else None,
        waiting_spread_peak=(
            (float(col("waiting_spread").max()) if col("waiting_spread").size else None) if fleet else None
        ),
    )


def engine_summaries(
    samples: Mapping[str, Sequence[MetricSample]], t0: float, t1: float, step: float | None = None
) -> dict[str, EngineSummary]:
    """:func:`engine_summary` of each engine of a fleet, on the same windows."""
    step = step or scrape_step(samples)
    return {e: engine_summary(ss, t0, t1, step) for e, ss in samples.items()}


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


# ------------------------------------------------------------------------------------------ over-saturation


@dataclass(frozen=True)
class SaturationRule:
    """When a load level is over-saturated (a sweep stops it early). Either clause, judged over the last
    ``window`` session seconds:

    - **queue**: the engine's waiting queue kept growing while its KV cache was full. Growing: the
      least-squares slope of ``requests_waiting`` over the window is > 0 and the median of its last
      quarter of readings exceeds the median of its first quarter by at least ``min_growth`` requests.
      Full: some reading of ``kv_cache_usage`` in the window is >= ``kv_full``, or the engine preempted
      a request in it (recompute preemption frees blocks, so usage dips right after). Arrivals beyond
      what the engine serves show up as exactly this: a queue that only grows, with the cache full.
    - **goodput**: at least ``min_ended`` requests ended in the window and those meeting every goodput
      SLO, per second, are fewer than ``collapse`` x the offered rate (needs goodput SLOs and a rate).

    Nothing is judged before the window is covered: at least ``min_readings`` engine readings spanning
    80% of it (a level shorter than the window is never stopped).

    A fleet is judged as one engine: waiting queues and preemptions summed, KV usage weighted by capacity
    (equal weights unless every engine serves its capacity)."""

    window: float = 20.0
    kv_full: float = 0.95
    min_growth: float = 5.0
    min_readings: int = 8
    collapse: float = 0.1
    min_ended: int = 5

    def describe(self) -> str:
        """The rule in one line."""
        return (
            f"over-saturated when, over the last {self.window:g} s, the engine's waiting queue kept growing "
            f"(slope > 0, up by >= {self.min_growth:g} requests) while its KV cache was full (a reading >= "
            f"{100 * self.kv_full:.0f}%, or a preemption), or when >= {self.min_ended} requests ended in "
            f"that window and those meeting the goodput SLOs came to < {100 * self.collapse:.0f}% of the "
            "offered rate"
        )


@dataclass(frozen=True)
class SaturationVerdict:
    fired: bool
    t: float  # when it was judged (session seconds)
    clause: str = ""  # "queue" | "goodput" | "" (not fired)
    reason: str = ""  # one line: why it fired, or why not (what was missing)


def over_saturated(
    now: float,
    rule: SaturationRule,
    *,
    t: np.ndarray | Sequence[float],
    kv: np.ndarray | Sequence[float],
    waiting: np.ndarray | Sequence[float],
    preemptions: np.ndarray | Sequence[float] | None = None,
    ended: np.ndarray | Sequence[float] | None = None,
    good: np.ndarray | Sequence[bool] | None = None,
    offered_rate: float | None = None,
) -> SaturationVerdict:
    """Judge :class:`SaturationRule` at ``now`` (pure). ``t``/``kv``/``waiting``/``preemptions``: the
    engine's readings (ascending ``t``; KV usage 0..1, the waiting queue, the cumulative preemption
    counter; NaN where not served). ``ended``/``good``: end times of requests and whether each met every
    goodput SLO. Readings after ``now`` are ignored. O(readings)."""
    w = rule.window
    ta = np.asarray(t, dtype=float)
    sel = (ta > now - w - 1e-9) & (ta <= now + 1e-9)
    tt = ta[sel]
    if tt.size < max(rule.min_readings, 2) or tt[-1] - tt[0] < 0.8 * w:
        return SaturationVerdict(False, now, "", f"not judged: fewer than {w:g} s of engine readings yet")
    wq = np.asarray(waiting, dtype=float)[sel]
    kq = np.asarray(kv, dtype=float)[sel]
    have = ~np.isnan(wq)
    tt_w, wq = tt[have], wq[have]
    if tt_w.size >= max(rule.min_readings, 2) and tt_w[-1] - tt_w[0] >= 0.8 * w:
        q = max(1, tt_w.size // 4)
        head, tail = float(np.median(wq[:q])), float(np.median(wq[-q:]))
        slope = float(np.polyfit(tt_w - tt_w[0], wq, 1)[0]) if np.ptp(wq) > 0 else 0.0
        kv_seen = kq[~np.isnan(kq)]
        kv_peak = float(kv_seen.max()) if kv_seen.size else math.nan
        pre = 0.0
        if preemptions is not None:
            pq = np.asarray(preemptions, dtype=float)[sel]
            pq = pq[~np.isnan(pq)]
            pre = counter_increase(pq.tolist()) if pq.size >= 2 else 0.0
        full = (kv_seen.size > 0 and kv_peak >= rule.kv_full) or pre > 0
        if slope > 0 and tail - head >= rule.min_growth and full:
            why = (
                f"KV usage reached {fmt.percent(kv_peak, 0)}"
                if kv_seen.size and kv_peak >= rule.kv_full
                else f"{pre:.0f} preemption(s)"
            )
            return SaturationVerdict(
                True,
                now,
                "queue",
                f"over-saturated: the waiting queue grew from {head:.0f} to {tail:.0f} requests over the last "
                f"{w:g} s ({slope:+.2f}/s) with the KV cache full ({why})",
            )
    if ended is not None and good is not None and offered_rate is not None and 0 < offered_rate < math.inf:
        e = np.asarray(ended, dtype=float)
        g = np.asarray(good, dtype=bool)
        m = (e > now - w) & (e <= now)
        n = int(m.sum())
        k = int(g[m].sum())
        if n >= rule.min_ended and k / w < rule.collapse * offered_rate:
            return SaturationVerdict(
                True,
                now,
                "goodput",
                f"goodput collapsed: {k} of the {n} requests that ended in the last {w:g} s met the "
                f"goodput SLOs ({fmt.rate(k / w)} req/s, under {100 * rule.collapse:.0f}% of the offered "
                f"{fmt.rate(offered_rate)} req/s)",
            )
    return SaturationVerdict(False, now)


def _scrape_point(s: Scrape) -> tuple[float, float, float, float]:
    """(KV usage, waiting, preemption counter, KV capacity) of one engine's scrape; NaN where not served.
    Label sets (DP ranks) are summed, KV usage averaged over them."""
    kv: list[float] = []
    waiting = pre = cap = math.nan
    for m in s.samples:
        if m.name == "kv_cache_usage":
            kv.append(m.value)
        elif m.name == "requests_waiting":
            waiting = m.value if math.isnan(waiting) else waiting + m.value
        elif m.name == "preemptions_total":
            pre = m.value if math.isnan(pre) else pre + m.value
        elif m.name in ("kv_total_blocks", "kv_total_tokens") and math.isnan(cap):
            cap = m.value
    return (sum(kv) / len(kv) if kv else math.nan), waiting, pre, cap


class SaturationMonitor:
    """:func:`over_saturated` fed from a session's records, in bounded memory: the readings and request
    ends of the last window only (O(window / scrape interval + requests ended in a window)).

    ``add`` takes any record (scrapes and ended requests are used); ``check(now)`` judges. Live (a sweep's
    sink) and offline (:func:`saturation_scan`, over a recording) it is the same code, so a recording
    re-judged gives the verdict the live run acted on."""

    def __init__(
        self,
        rule: SaturationRule | None = None,
        *,
        offered_rate: float | None = None,
        goodput: Mapping[str, float] | None = None,
    ) -> None:
        self.rule = rule or SaturationRule()
        self.offered_rate = offered_rate
        self.goodput = _check_goodput(goodput)
        self._last: dict[str, tuple[float, float, float, float]] = {}
        self._points: deque[tuple[float, float, float, float]] = deque()
        self._ends: deque[tuple[float, bool]] = deque()

    def add(self, rec: object) -> None:
        if isinstance(rec, Scrape):
            if rec.ok and not rec.stale:
                self.add_scrape(rec)
        elif isinstance(rec, RequestRecord):
            self.add_request(rec)
        else:
            r = getattr(rec, "record", None)
            if isinstance(r, RequestRecord) and r.ended:
                self.add_request(r)

    def add_scrape(self, s: Scrape) -> None:
        self._last[s.engine_id] = _scrape_point(s)
        pts = list(self._last.values())
        kv = np.array([p[0] for p in pts])
        caps = np.array([p[3] for p in pts])
        wts = caps if np.all(caps > 0) else np.ones(len(pts))
        have = ~np.isnan(kv)
        k = float(np.sum(kv[have] * wts[have]) / np.sum(wts[have])) if have.any() else math.nan
        self._points.append((s.t, k, _nan_total(p[1] for p in pts), _nan_total(p[2] for p in pts)))
        self._trim(s.t)

    def add_request(self, r: RequestRecord) -> None:
        if not r.ended:
            return
        t = r.t_done if r.t_done is not None else (r.t_sent if r.t_sent is not None else r.t_scheduled)
        good = bool(goodput_mask([r], self.goodput)[0]) if self.goodput else r.status is RequestStatus.OK
        self._ends.append((t, good))

    def _trim(self, now: float) -> None:
        lo = now - self.rule.window - 1.0
        while self._points and self._points[0][0] < lo:
            self._points.popleft()
        while self._ends and self._ends[0][0] < lo:
            self._ends.popleft()

    def check(self, now: float) -> SaturationVerdict:
        self._trim(now)
        pts = self._points
        ends = self._ends
        return over_saturated(
            now,
            self.rule,
            t=[p[0] for p in pts],
            kv=[p[1] for p in pts],
            waiting=[p[2] for p in pts],
            preemptions=[p[3] for p in pts],
            ended=[e[0] for e in ends] if self.goodput else None,
            good=[e[1] for e in ends] if self.goodput else None,
            offered_rate=self.offered_rate,
        )


def _nan_total(values: Iterable[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(sum(vals)) if vals else math.nan


def saturation_scan(
    scrapes: Iterable[Scrape],
    requests: Iterable[RequestRecord],
    rule: SaturationRule | None = None,
    *,
    offered_rate: float | None = None,
    goodput: Mapping[str, float] | None = None,
    sending: tuple[float, float] | None = None,
) -> SaturationVerdict:
    """Judge a whole recorded run after the fact: the first moment (a scrape) the rule fires, else a
    verdict that did not fire at the last scrape. The same monitor as live; O(scrapes x window readings).
    ``sending``: judge only at scrapes inside (start, end) of the load being sent (a sweep judges a level
    only while it sends: the RUNNING state); None: at every scrape."""
    mon = SaturationMonitor(rule, offered_rate=offered_rate, goodput=goodput)
    ends = sorted(
        ((r.t_done if r.t_done is not None else (r.t_sent if r.t_sent is not None else r.t_scheduled)), i, r)
        for i, r in enumerate(requests)
        if r.ended
    )
    k = 0
    last = SaturationVerdict(False, 0.0)
    for s in sorted(scrapes, key=lambda x: x.t):
        while k < len(ends) and ends[k][0] <= s.t:
            mon.add_request(ends[k][2])
            k += 1
        mon.add(s)
        if sending is not None and not sending[0] <= s.t <= sending[1]:
            continue
        last = mon.check(s.t)
        if last.fired:
            return last
    return last


# ------------------------------------------------------------------------------------------ the knee

KNEE_RULE = (
    "the knee is the load level beyond which more offered load buys little more goodput: on the curve of "
    "goodput (requests/s meeting every per-request SLO; completed requests/s without goodput SLOs) against "
    "the offered load, over the levels that ran to their end (a level stopped early measured only its "
    "start), both scaled to 0..1, the level farthest above the straight line from "
    "the lowest to the highest level (the Kneedle method); none with fewer than 3 levels or when no level "
    "is more than 0.05 above that line"
)


def knee_index(x: Sequence[float], y: Sequence[float | None], *, min_height: float = 0.05) -> int | None:
    """The index (into ``x``/``y``) of the knee of a concave curve by :data:`KNEE_RULE`; None when there is
    none. Points with a missing/NaN ``y`` are left out."""
    pts = [
        (float(a), float(b), i)
        for i, (a, b) in enumerate(zip(x, y, strict=True))
        if b is not None and math.isfinite(float(b)) and math.isfinite(float(a))
    ]
    pts.sort()
    if len(pts) < 3:
        return None
    xs = np.array([p[0] for p in pts])
    ys = np.array([p[1] for p in pts])
    if np.ptp(xs) <= 0 or np.ptp(ys) <= 0:
        return None
    xn = (xs - xs.min()) / np.ptp(xs)
    yn = (ys - ys.min()) / np.ptp(ys)
    chord = yn[0] + (yn[-1] - yn[0]) * (xn - xn[0]) / (xn[-1] - xn[0])
    height = yn - chord
    best = int(np.argmax(height))
    if height[best] <= min_height:
        return None
    return pts[best][2]


# ------------------------------------------------------------------------------------------ request timelines


@dataclass(frozen=True)
class StallRule:
    """A long stall in a request's stream: a gap between two of its chunks longer than ``factor`` times
    the request's median gap and longer than ``min_s`` session seconds. On an engine under KV pressure
    that is most likely a preemption (the request was evicted and recomputed); it can also be a stalled
    network or engine."""

    factor: float = 10.0
    min_s: float = 1.0

    def describe(self) -> str:
        return (
            f"a gap between two chunks > {self.factor:g}x the request's median gap and > {self.min_s:g} s: "
            "a likely preemption"
        )


PHASES = ("queued", "waiting", "thinking", "answering")
"""The phases of a request's life a timeline draws (then ``done``/``failed`` at its end): queued in the
client (its schedule to its start: concurrency-cap wait and send lag), sent and waiting for a first token
(engine queue and prefill), thinking (first token to first visible token), answering (to the end)."""


@dataclass(frozen=True)
class RequestSpans:
    """Per request, the times its timeline draws (session seconds; NaN = never), rows in start order.

    Phase boundaries: ``t_queued`` (due: its schedule) -> ``t_start`` (its latency start) ->
    ``t_first_token`` -> ``t_first_visible`` -> ``t_end`` (its end, or ``now`` while in flight:
    ``open``). A phase that never began is empty (e.g. no visible token: thinking lasts to the end).
    Stalls by :class:`StallRule`: ``stall_row[k]`` (a row index) stalled from ``stall_t0[k]`` to
    ``stall_t1[k]``. Build with :func:`request_spans`; the report's Gantt chart and a TUI page draw this."""

    rid: np.ndarray  # int64
    classes: tuple[str, ...]
    cls: np.ndarray  # int32 index into classes
    difficulty: tuple[str, ...]  # per row
    status: np.ndarray  # int8: 0 ok, 1 error, 2 cancelled, 3 in flight
    finish: tuple[str, ...]  # per row: finish_reason or the status
    t_queued: np.ndarray
    t_start: np.ndarray
    t_first_token: np.ndarray
    t_first_visible: np.ndarray
    t_end: np.ndarray
    open: np.ndarray  # bool: still in flight at ``now``
    prompt_tokens: np.ndarray  # NaN: unknown
    reasoning_tokens: np.ndarray
    answer_tokens: np.ndarray
    stall_row: np.ndarray  # int64
    stall_t0: np.ndarray
    stall_t1: np.ndarray
    rule: StallRule = field(default_factory=StallRule)

    def __len__(self) -> int:
        return int(self.rid.size)

    def phase_bounds(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{phase: (begin, end)} per row for :data:`PHASES` (NaN where the phase did not happen)."""
        end = self.t_end
        start = np.where(np.isnan(self.t_start), end, self.t_start)
        ft = np.where(np.isnan(self.t_first_token), end, np.minimum(self.t_first_token, end))
        fv = np.where(np.isnan(self.t_first_visible), end, np.minimum(self.t_first_visible, end))
        fv = np.maximum(fv, ft)
        q0 = np.where(np.isnan(self.t_queued), start, np.minimum(self.t_queued, start))
        out = {
            "queued": (q0, start),
            "waiting": (start, ft),
            "thinking": (ft, fv),
            "answering": (fv, end),
        }
        for k, (a, b) in out.items():
            empty = ~(b > a)
            out[k] = (np.where(empty, np.nan, a), np.where(empty, np.nan, b))
        return out

    def shifted(self, dt: float) -> RequestSpans:
        """The same rows with every time moved by ``-dt`` (e.g. onto seconds since load start)."""
        return replace(
            self,
            t_queued=self.t_queued - dt,
            t_start=self.t_start - dt,
            t_first_token=self.t_first_token - dt,
            t_first_visible=self.t_first_visible - dt,
            t_end=self.t_end - dt,
            stall_t0=self.stall_t0 - dt,
            stall_t1=self.stall_t1 - dt,
        )

    def lanes(self) -> tuple[np.ndarray, int]:
        """A lane per row so that rows sharing a lane never overlap in time (greedy interval packing in
        start order: the fewest lanes, which is the peak number of requests in the client at once);
        returns (lane per row, number of lanes). O(n log n)."""
        import heapq

        begin = np.where(np.isnan(self.t_queued), self.t_start, self.t_queued)
        begin = np.where(np.isnan(begin), self.t_end, begin)
        order = np.argsort(begin, kind="stable")
        lane = np.zeros(len(self), dtype=np.int64)
        free: list[tuple[float, int]] = []  # (end, lane)
        n = 0
        for i in order.tolist():
            b, e = float(begin[i]), float(self.t_end[i])
            if free and free[0][0] <= b:
                _, k = heapq.heappop(free)
            else:
                k = n
                n += 1
            lane[i] = k
            heapq.heappush(free, (e if math.isfinite(e) else b, k))
        return lane, n


def _chunk_times(r: RequestRecord) -> tuple[np.ndarray, np.ndarray] | None:
    """(chunk times, tokens per chunk) of a request from its gap blob; None without a first token or blob."""
    if r.t_first_token is None or not r.gaps:
        return None
    try:
        gaps, per = decode_gaps(r.gaps)
    except (ValueError, struct.error):
        return None
    g = np.frombuffer(gaps, dtype=np.uint32).astype(float) * 1e-6 if len(gaps) else np.empty(0)
    ts = r.t_first_token + np.concatenate(([0.0], np.cumsum(g)))
    w = np.frombuffer(per, dtype=np.uint16).astype(float) if per is not None else np.ones(ts.size)
    if w.size != ts.size:
        w = np.ones(ts.size)
    return ts, w


def _stalls(r: RequestRecord, rule: StallRule) -> list[tuple[float, float]]:
    ct = _chunk_times(r)
    if ct is None or ct[0].size < 3:
        return []
    ts = ct[0]
    gaps = np.diff(ts)
    limit = max(rule.factor * float(np.median(gaps)), rule.min_s)
    idx = np.flatnonzero(gaps > limit)
    return [(float(ts[i]), float(ts[i + 1])) for i in idx.tolist()]


def request_spans(
    records: Iterable[RequestRecord], *, now: float | None = None, rule: StallRule | None = None
) -> RequestSpans:
    """The timeline rows of ``records`` (ended or in flight: those end at ``now``, else at their last
    known time). Cost: O(n log n + streamed chunks) (the gap blobs are read for the stalls)."""
    rule = rule or StallRule()
    recs = sorted(
        records,
        key=lambda r: (_nan(r.latency_start) if r.latency_start is not None else r.t_scheduled, r.rid),
    )
    classes: dict[str, int] = {}
    n = len(recs)
    f = np.full
    rid = np.zeros(n, dtype=np.int64)
    ci = np.zeros(n, dtype=np.int32)
    st = np.zeros(n, dtype=np.int8)
    cols = {k: f(n, np.nan) for k in ("q", "s", "ft", "fv", "e", "p", "rt", "at")}
    opened = np.zeros(n, dtype=bool)
    diffs: list[str] = []
    fins: list[str] = []
    srow: list[int] = []
    s0: list[float] = []
    s1: list[float] = []
    for i, r in enumerate(recs):
        rid[i] = r.rid
        ci[i] = classes.setdefault(r.cls, len(classes))
        st[i] = _STATUS_CODE.get(r.status, _ERROR)
        diffs.append(r.difficulty)
        fins.append(r.finish_reason or r.status.value)
        cols["q"][i] = r.t_dispatch if r.t_dispatch is not None else r.t_scheduled
        cols["s"][i] = _nan(r.latency_start)
        cols["ft"][i] = _nan(r.t_first_token)
        cols["fv"][i] = _nan(r.t_first_visible)
        end = r.t_done
        if end is None:
            if not r.ended and now is not None:
                end = now
                opened[i] = True
            else:
                known = [t for t in (r.t_first_visible, r.t_first_token, r.latency_start) if t is not None]
                end = max(known) if known else r.t_scheduled
                opened[i] = not r.ended
        cols["e"][i] = end
        p = r.prompt_tokens if r.prompt_tokens is not None else r.target_input_tokens
        cols["p"][i] = math.nan if p is None else p
        cols["rt"][i] = r.reasoning_tokens
        cols["at"][i] = r.answer_tokens
        for a, b in _stalls(r, rule):
            srow.append(i)
            s0.append(a)
            s1.append(b)
    return RequestSpans(
        rid=rid,
        classes=tuple(classes),
        cls=ci,
        difficulty=tuple(diffs),
        status=st,
        finish=tuple(fins),
        t_queued=cols["q"],
        t_start=cols["s"],
        t_first_token=cols["ft"],
        t_first_visible=cols["fv"],
        t_end=cols["e"],
        open=opened,
        prompt_tokens=cols["p"],
        reasoning_tokens=cols["rt"],
        answer_tokens=cols["at"],
        stall_row=np.asarray(srow, dtype=np.int64),
        stall_t0=np.asarray(s0, dtype=float),
        stall_t1=np.asarray(s1, dtype=float),
        rule=rule,
    )


# ------------------------------------------------------------------------------------------ who filled the cache


@dataclass(frozen=True, slots=True)
class CacheHolder:
    """A request in flight at a moment, and the tokens it held then: its prompt (from usage; a trace's
    target length when usage is missing; 0 when unknown) and what it had generated so far (chunk times of
    its gap blob, scaled to its final counts)."""

    rid: int
    cls: str
    difficulty: str
    prompt_tokens: int | None
    reasoning: int  # reasoning tokens generated by then
    answer: int  # answer tokens generated by then
    phase: str  # "waiting" (no token yet: it may not hold KV yet) | "thinking" | "answering"
    stalled: bool = False  # inside a long stall of its stream (StallRule): likely preempted, holding no KV

    @property
    def tokens(self) -> int:
        return (self.prompt_tokens or 0) + self.reasoning + self.answer


def tokens_so_far(r: RequestRecord, t: float) -> tuple[int, int]:
    """(reasoning, answer) tokens request ``r`` had generated by session time ``t``."""
    if r.t_first_token is None or t < r.t_first_token:
        return 0, 0
    total = r.output_tokens
    ct = _chunk_times(r)
    if ct is None:  # no chunk times: spread evenly from the first token to the end, reasoning first
        end = r.t_done
        span = end - r.t_first_token if end is not None else 0.0
        frac = 1.0 if span <= 0 else min(1.0, (t - r.t_first_token) / span)
        gen = round(total * frac)
        rt = min(gen, r.reasoning_tokens)
        return rt, min(gen - rt, r.answer_tokens)
    ts, w = ct
    s = w.sum()
    scale = total / s if s > 0 else 0.0
    k = int(np.searchsorted(ts, t, side="right"))
    vis = r.t_first_visible
    split = ts.size if vis is None else int(np.searchsorted(ts, vis - 1e-9))
    gen_r = float(w[: min(k, split)].sum()) * scale
    gen_a = float(w[split:k].sum()) * scale if k > split else 0.0
    return min(round(gen_r), r.reasoning_tokens), min(round(gen_a), r.answer_tokens)


def _in_flight_at(r: RequestRecord, t: float) -> bool:
    start = r.latency_start
    if start is None or start > t:
        return False
    if r.t_done is not None:
        return r.t_done > t
    return not r.ended


def cache_holders(
    records: Iterable[RequestRecord], t: float, rule: StallRule | None = None
) -> list[CacheHolder]:
    """Every request in flight at ``t`` (started, not yet ended) with the tokens it held, most first; those
    inside a long stall of their stream (``rule``: likely preempted, holding no KV) last. O(n + chunks of
    the requests in flight)."""
    rule = rule or StallRule()
    out = []
    for r in records:
        if not _in_flight_at(r, t):
            continue
        rt, at = tokens_so_far(r, t)
        if r.t_first_token is None or t < r.t_first_token:
            phase = "waiting"
        elif r.t_first_visible is None or t < r.t_first_visible:
            phase = "thinking"
        else:
            phase = "answering"
        stalled = any(a < t < b for a, b in _stalls(r, rule))
        p = r.prompt_tokens if r.prompt_tokens is not None else r.target_input_tokens
        out.append(CacheHolder(r.rid, r.cls, r.difficulty, p, rt, at, phase, stalled))
    out.sort(key=lambda h: (h.stalled, -h.tokens, h.rid))
    return out


@dataclass(frozen=True)
class CacheMoment:
    """A moment the KV cache was under pressure and who held it: a KV peak or a burst of preemptions."""

    t: float  # session seconds
    kind: str  # "kv peak" | "preemptions"
    kv: float | None  # KV usage then (0..1), None when not served
    preemptions: float  # preemptions in the burst window (a KV peak: in the window around it)
    in_flight: int
    held_tokens: int  # tokens held by the requests in flight then (the stalled ones, likely preempted, not)
    holders: tuple[CacheHolder, ...]  # the top ones, most tokens first


CACHE_MOMENTS_RULE = (
    "moments: each KV peak (the highest reading of every stretch at or above the threshold, 90% by "
    "default; the run's highest reading when it never got there) and each burst of preemptions (a window "
    "of 5 s with at least 3, at its busiest reading); at each, the requests in flight with the most tokens "
    "(prompt + tokens generated so far), those inside a long stall of their stream (likely preempted, so "
    "holding no KV) listed last and not counted as holding"
)


def cache_moments(
    records: Sequence[RequestRecord],
    samples: EngineSamples,
    *,
    top: int = 5,
    kv_threshold: float = 0.9,
    burst_window: float = 5.0,
    min_burst: int = 3,
    max_moments: int = 6,
) -> list[CacheMoment]:
    """Who filled the cache (:data:`CACHE_MOMENTS_RULE`): at most ``max_moments`` KV peaks (the highest)
    and as many preemption bursts (the largest), in time order, each with its ``top`` holders. ``samples``
    of one engine or a fleet (capacity-weighted KV, summed preemptions). Cost: O(samples + n x moments +
    the chunks of the requests in flight at them)."""
    per = _per_engine(samples)
    if not per or not any(per.values()):
        return []
    step = scrape_step(per)
    tl = timeline((), per, step=step)
    kv = tl.columns["kv_cache_usage"]
    pre = np.nan_to_num(tl.columns["preemptions"])
    t_end = tl.t + step
    found: list[tuple[float, str, float | None, float]] = []
    k = max(1, math.ceil(burst_window / step - 1e-9))
    window_pre = np.convolve(pre, np.ones(k), mode="full")[: pre.size]  # preemptions in the k bins up to i
    if np.any(~np.isnan(kv)):
        high = np.nan_to_num(kv, nan=-1.0) >= kv_threshold
        peaks: list[int] = []
        i = 0
        while i < kv.size:
            if high[i]:
                j = i
                while j + 1 < kv.size and high[j + 1]:
                    j += 1
                peaks.append(i + int(np.nanargmax(kv[i : j + 1])))
                i = j + 1
            else:
                i += 1
        if not peaks:
            peaks = [int(np.nanargmax(kv))]
        peaks.sort(key=lambda b: -float(kv[b]))
        for b in sorted(peaks[:max_moments]):
            lo, hi = max(0, b - k // 2), min(pre.size, b + k // 2 + 1)
            found.append((float(t_end[b]), "kv peak", float(kv[b]), float(pre[lo:hi].sum())))
    bursts: list[int] = []
    busy = window_pre >= min_burst
    i = 0
    while i < pre.size:
        if busy[i]:
            j = i
            while j + 1 < pre.size and busy[j + 1]:
                j += 1
            seg = window_pre[i : j + 1]
            b = i + int(np.argmax(seg))
            lo = max(0, b - k + 1)
            bursts.append(lo + int(np.argmax(pre[lo : b + 1])))  # the busiest reading of that window
            i = j + 1
        else:
            i += 1
    bursts.sort(key=lambda b: -float(window_pre[b]))
    for b in sorted(bursts[:max_moments]):
        kvb = None if math.isnan(kv[b]) else float(kv[b])
        found.append((float(t_end[b]), "preemptions", kvb, float(window_pre[min(b + k - 1, pre.size - 1)])))
    out = []
    for t, kind, kvv, npre in sorted(found):
        holders = cache_holders(records, t)
        held = sum(h.tokens for h in holders if not h.stalled)
        out.append(CacheMoment(t, kind, kvv, npre, len(holders), held, tuple(holders[:top])))
    return out


def chunk_gaps(records: Iterable[RequestRecord]) -> np.ndarray:
    """Every inter-chunk gap (seconds) of every ok request, pooled: ITL as ``vllm bench serve`` reports
    its percentiles (a chunk of several tokens is one gap). O(chunks)."""
    parts = []
    for r in records:
        if r.status is not RequestStatus.OK or not r.gaps:
            continue
        try:
            g, _ = decode_gaps(r.gaps)
        except (ValueError, struct.error):
            continue
        if len(g):
            parts.append(np.frombuffer(g, dtype=np.uint32).astype(float) * 1e-6)
    return np.concatenate(parts) if parts else np.empty(0)


def peak_load(records: Iterable[RequestRecord], bucket: float = 1.0) -> tuple[float, int]:
    """(peak output tokens per second, the most requests active in one bucket), counted as ``vllm bench
    serve`` counts ``max_output_tokens_per_s`` and ``max_concurrent_requests``: buckets of ``bucket``
    seconds from the first ok request's start, each ok request active in every bucket from its start to
    its end, tokens at their chunk times (a multi-token chunk counts its tokens). (0, 0) without data."""
    ok = [
        r
        for r in records
        if r.status is RequestStatus.OK and r.latency_start is not None and r.t_done is not None
    ]
    if not ok:
        return 0.0, 0
    t0 = min(_nan(r.latency_start) for r in ok)
    t1 = max(_nan(r.t_done) for r in ok)
    n = math.ceil((t1 - t0) / bucket) + 1
    tokens = np.zeros(n)
    active = np.zeros(n)
    for r in ok:
        a = int((_nan(r.latency_start) - t0) // bucket)
        b = int((_nan(r.t_done) - t0) // bucket)
        active[a : b + 1] += 1
        ct = _chunk_times(r)
        if ct is None:
            continue
        ts, w = ct
        s = w.sum()
        if s <= 0:
            continue
        idx = np.clip(((ts - t0) // bucket).astype(int), 0, n - 1)
        tokens += np.bincount(idx, weights=w * (r.output_tokens / s), minlength=n)[:n]
    return float(tokens.max() / bucket), int(active.max())
