"""Arrival processes: when each request is sent, precomputed and reproducible.

Gamma arrivals follow `vllm bench serve` exactly: inter-arrival gaps ~ Gamma(shape=b, scale=1/(rate*b)), so
the mean gap is 1/rate and its coefficient of variation 1/sqrt(b); b = 1 is Poisson, b < 1 is burstier. As
there, send i happens at the sum of gaps 0..i (the first request waits one gap). Unlike `vllm bench serve`,
the schedule is *not* stretched so that the last send lands at N/rate unless ``arrival.rescale = true``: the
gaps then stay exactly Gamma distributed (vLLM's rescaling changes them by 1-2%).

Ramp-up (``arrival.ramp_up_strategy``) mirrors ``vllm bench serve --ramp-up-strategy``: request i of N has
its own rate r_i = start + (end - start) p (linear) or start (end / start)^p (exponential), p = i / (N - 1),
and its gap (the wait before it) is drawn at that rate: Gamma(shape=b, scale=1/(r_i b)) (constant: 1/r_i).
As there, the first request waits one gap and a ramp is never rescaled.

Traces (``rllmtop.workload.traces``): the file's timestamps x ``time_scale`` / ``rate_scale``, cut by
``num_prompts`` and ``duration``, and checked against the run limits when read.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from rllmtop.scenario import ArrivalSpec, PhaseSpec
from rllmtop.workload.traces import check_bounds, load_trace, trace_times

__all__ = ["CHUNK", "load_trace", "ramp_rates", "schedule", "schedule_chunks", "schedule_count"]

_ARRIVAL_STREAM = 0x41525256  # separates the arrival RNG stream from the prompt-mix stream


def _rng(seed: int, *salt: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _ARRIVAL_STREAM, *salt]))


CHUNK = 65536
"""Send times generated per step: memory for the schedule is O(CHUNK), whatever its length."""


def schedule(spec: ArrivalSpec, n: int | None, duration: float | None, seed: int) -> np.ndarray:
    """Send times in seconds from the start of sending, ascending (float64).

    ``n`` caps the number of requests, ``duration`` keeps only sends before that time (either may be
    None, not both for an endless process). Same arguments, same array: the concatenation of
    :func:`schedule_chunks`. The whole array is built here: a long run iterates the chunks instead.
    """
    parts = list(schedule_chunks(spec, n, duration, seed))
    return np.concatenate(parts) if parts else np.empty(0)


def schedule_count(spec: ArrivalSpec, n: int | None, duration: float | None, seed: int) -> int:
    """``len(schedule(...))`` without holding the times (one generating pass when it is not known up
    front)."""
    if n is not None and n <= 0:
        return 0
    p = spec.process
    if duration is None and n is not None:
        if p in ("gamma", "poisson", "constant") and not spec.rescale:
            return n
        if p == "burst" and spec.burst_interval is not None:
            return n
    if p == "burst" and spec.burst_interval is None:
        size = spec.burst_size if spec.burst_size is not None else n
        if size is not None:
            return size if n is None else min(size, n)
    return sum(t.size for t in schedule_chunks(spec, n, duration, seed))


def schedule_chunks(
    spec: ArrivalSpec, n: int | None, duration: float | None, seed: int, chunk: int = CHUNK
) -> Iterator[np.ndarray]:
    """The send times of :func:`schedule`, in consecutive non-empty arrays of at most ``chunk`` values,
    drawn lazily from the same random streams in the same order (so their concatenation is identical to
    drawing them all at once, which the tests prove)."""
    if n is not None and n <= 0:
        return
    p = spec.process
    if p in ("gamma", "poisson", "constant"):
        b = 1.0 if p == "poisson" else spec.burstiness
        if spec.ramp_up_strategy is not None:
            yield from _ramp(spec, p, b, n, duration, seed, chunk)
            return

        def times() -> Iterator[np.ndarray]:
            return _renewal(p, spec.rate, b, n, duration, _rng(seed), 0.0, chunk)

        if spec.rescale and n is not None and math.isfinite(spec.rate):
            size, last = 0, 0.0
            for t in times():
                size += t.size
                last = float(t[-1])
            if size and last > 0:
                factor = (size / spec.rate) / last
                for t in times():
                    t = t * factor
                    if duration is not None:
                        k = int(np.searchsorted(t, duration, side="left"))
                        if k < t.size:
                            if k:
                                yield t[:k]
                            return
                    yield t
                return
        yield from times()
    elif p == "burst":
        yield from _bursts(spec, n, duration, chunk)
    elif p == "phases":
        yield from _phases(spec.phases, spec.repeat_phases, n, duration, seed, chunk)
    elif p == "trace":
        t = trace_times(spec)
        if duration is not None:
            t = t[: int(np.searchsorted(t, duration, side="left"))]
        if n is not None:
            t = t[:n]
        check_bounds(spec, int(t.size), float(t[-1]) if t.size else 0.0)
        for i in range(0, t.size, chunk):
            yield t[i : i + chunk]
    else:
        raise ValueError(f"unknown arrival process {p!r}")


def ramp_rates(strategy: str, start: float, end: float, i: np.ndarray, n: int) -> np.ndarray:
    """The rate of requests ``i`` (indices) of ``n`` in a ramp-up, as ``vllm bench serve`` computes it."""
    progress = i / max(n - 1, 1)
    if strategy == "linear":
        return start + (end - start) * progress
    return start * (end / start) ** progress


def _ramp(
    spec: ArrivalSpec,
    process: str,
    b: float,
    n: int | None,
    duration: float | None,
    seed: int,
    chunk: int,
) -> Iterator[np.ndarray]:
    if n is None or spec.ramp_up_start_rate is None or spec.ramp_up_end_rate is None:
        raise ValueError("a ramp-up needs num_prompts and both rates")
    rng = _rng(seed)
    carry = 0.0
    for i0 in range(0, n, chunk):
        i = np.arange(i0, min(i0 + chunk, n), dtype=float)
        rate = ramp_rates(str(spec.ramp_up_strategy), spec.ramp_up_start_rate, spec.ramp_up_end_rate, i, n)
        g = 1.0 / rate if process == "constant" else rng.standard_gamma(b, size=i.size) / (rate * b)
        s = np.cumsum(np.concatenate(([carry], g)))[1:]
        carry = float(s[-1])
        t, over = _cut(s, duration)
        if t.size:
            yield t
        if over:
            return


def _gaps(process: str, rate: float, b: float, k: int, rng: np.random.Generator) -> np.ndarray:
    if math.isinf(rate):
        return np.zeros(k)
    if process == "constant":
        return np.full(k, 1.0 / rate)
    return rng.gamma(shape=b, scale=1.0 / (rate * b), size=k)


def _cut(t: np.ndarray, end: float | None) -> tuple[np.ndarray, bool]:
    """The values of ascending ``t`` before ``end``, and whether some were not (the stream is over)."""
    if end is None:
        return t, False
    k = int(np.searchsorted(t, end, side="left"))
    return (t, False) if k == t.size else (t[:k], True)


def _sums(
    process: str, rate: float, b: float, k: int, rng: np.random.Generator, chunk: int
) -> Iterator[np.ndarray]:
    """Running sums of ``k`` gaps, in chunks: exactly ``np.cumsum(_gaps(..., k, rng))`` (a chunk's sums
    start from the previous one's last value, added in the same order)."""
    carry = 0.0
    left = k
    while left > 0:
        m = min(chunk, left)
        g = _gaps(process, rate, b, m, rng)
        s = np.cumsum(np.concatenate(([carry], g)))[1:]
        carry = float(s[-1])
        left -= m
        yield s


def _renewal(
    process: str,
    rate: float,
    b: float,
    n: int | None,
    duration: float | None,
    rng: np.random.Generator,
    start: float = 0.0,
    chunk: int = CHUNK,
) -> Iterator[np.ndarray]:
    """Arrivals of one renewal process from ``start``: the first after one gap (constant: at ``start``)."""
    end = start + duration if duration is not None else None
    if process == "constant" and math.isfinite(rate) and rate > 0:
        k = n if n is not None else math.ceil((duration or 0.0) * rate) + 1
        for i in range(0, k, chunk):
            t, over = _cut(start + np.arange(i, min(i + chunk, k)) / rate, end)
            if t.size:
                yield t
            if over:
                return
        return
    if n is not None:
        for s in _sums(process, rate, b, n, rng, chunk):
            t, over = _cut(start + s, end)
            if t.size:
                yield t
            if over:
                return
        return
    if duration is None or end is None:
        raise ValueError("an endless arrival process needs n or duration")
    if rate <= 0:
        return
    if math.isinf(rate):
        raise ValueError("rate = inf needs n")
    t0 = start
    while True:  # draw in blocks of ~ expected count + 6 sigma, so one block nearly always suffices
        expect = rate * (end - t0)
        k = int(expect + 6 * math.sqrt(expect / b + 1) + 16)
        last = t0
        for s in _sums(process, rate, b, k, rng, chunk):
            t, over = _cut(t0 + s, end)
            if t.size:
                yield t
            if over:
                return
            last = t0 + float(s[-1])
        t0 = last


def _bursts(
    spec: ArrivalSpec, n: int | None, duration: float | None, chunk: int = CHUNK
) -> Iterator[np.ndarray]:
    size = spec.burst_size if spec.burst_size is not None else n
    if size is None:
        raise ValueError("burst needs burst_size or n")
    if spec.burst_interval is None:
        k = size if n is None else min(size, n)
        for i in range(0, k, chunk):
            yield np.zeros(min(chunk, k - i))
        return
    if n is None and duration is None:
        raise ValueError("repeated bursts need n or duration")
    count = n if n is not None else math.inf
    if duration is not None:
        count = min(count, math.ceil(duration / spec.burst_interval) * size)
    k = int(count)
    for i in range(0, k, chunk):
        t = (np.arange(i, min(i + chunk, k)) // size) * spec.burst_interval
        t, over = _cut(t, duration)
        if t.size:
            yield t.astype(float)
        if over:
            return


def _phases(
    phases: tuple[PhaseSpec, ...],
    repeat: bool,
    n: int | None,
    duration: float | None,
    seed: int,
    chunk: int = CHUNK,
) -> Iterator[np.ndarray]:
    cycle = sum(p.duration for p in phases)
    if repeat and n is None and duration is None:
        raise ValueError("repeated phases need n or duration")
    if repeat and all(p.rate == 0 for p in phases):
        return
    end = duration if duration is not None else (math.inf if repeat else cycle)
    got = 0
    start = 0.0
    i = 0
    while start < end and (n is None or got < n):
        ph = phases[i % len(phases)]
        if i >= len(phases) and not repeat:
            break
        seg = min(ph.duration, end - start)
        b = 1.0 if ph.process == "poisson" else ph.burstiness
        # each segment restarts its own renewal process, seeded by (seed, segment index)
        if ph.rate > 0:
            for t in _renewal(ph.process, ph.rate, b, None, seg, _rng(seed, 1, i), start, chunk):
                if n is not None and got + t.size >= n:
                    yield t[: n - got]
                    return
                got += t.size
                yield t
        start += ph.duration
        i += 1
