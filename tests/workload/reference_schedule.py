"""The arrival schedule as it was drawn before chunking (rllmtop 2f3f640, whole arrays at once), kept
verbatim as the reference the lazy chunked generator must reproduce bit for bit."""

# ruff: noqa
from __future__ import annotations

import math

import numpy as np

from rllmtop.scenario import ArrivalSpec, PhaseSpec
from rllmtop.workload.arrivals import _rng, load_trace
from rllmtop.errors import UserError


def schedule(spec: ArrivalSpec, n: int | None, duration: float | None, seed: int) -> np.ndarray:
    """Send times in seconds from the start of sending, ascending (float64).

    ``n`` caps the number of requests, ``duration`` keeps only sends before that time (either may be
    None, not both for an endless process). Same arguments, same array.
    """
    if n is not None and n <= 0:
        return np.empty(0)
    p = spec.process
    if p in ("gamma", "poisson", "constant"):
        b = 1.0 if p == "poisson" else spec.burstiness
        out = _renewal(p, spec.rate, b, n, duration, _rng(seed))
        if spec.rescale and n is not None and out.size and out[-1] > 0 and math.isfinite(spec.rate):
            out = out * ((out.size / spec.rate) / out[-1])
            if duration is not None:
                out = out[out < duration]
        return out
    if p == "burst":
        return _bursts(spec, n, duration)
    if p == "phases":
        return _phases(spec.phases, spec.repeat_phases, n, duration, seed)
    if p == "trace":
        if spec.trace_file is None:
            raise UserError(
                "arrival.process = 'trace' needs arrival.trace_file", "set trace_file = 'times.csv'"
            )
        t = load_trace(spec.trace_file, spec.trace_column) * spec.time_scale
        if duration is not None:
            t = t[t < duration]
        return t[:n] if n is not None else t
    raise ValueError(f"unknown arrival process {p!r}")


def _gaps(process: str, rate: float, b: float, k: int, rng: np.random.Generator) -> np.ndarray:
    if math.isinf(rate):
        return np.zeros(k)
    if process == "constant":
        return np.full(k, 1.0 / rate)
    return rng.gamma(shape=b, scale=1.0 / (rate * b), size=k)


def _renewal(
    process: str,
    rate: float,
    b: float,
    n: int | None,
    duration: float | None,
    rng: np.random.Generator,
    start: float = 0.0,
) -> np.ndarray:
    """Arrivals of one renewal process from ``start``: the first after one gap (constant: at ``start``)."""
    if process == "constant" and math.isfinite(rate) and rate > 0:
        k = n if n is not None else math.ceil((duration or 0.0) * rate) + 1
        t = start + np.arange(k) / rate
        return t[t < start + duration] if duration is not None else t
    if n is not None:
        t = start + np.cumsum(_gaps(process, rate, b, n, rng))
        return t[t < start + duration] if duration is not None else t
    if duration is None:
        raise ValueError("an endless arrival process needs n or duration")
    if rate <= 0:
        return np.empty(0)
    if math.isinf(rate):
        raise ValueError("rate = inf needs n")
    parts: list[np.ndarray] = []
    t0 = start
    end = start + duration
    while True:  # draw in blocks of ~ expected count + 6 sigma, so one block nearly always suffices
        expect = rate * (end - t0)
        k = int(expect + 6 * math.sqrt(expect / b + 1) + 16)
        t = t0 + np.cumsum(_gaps(process, rate, b, k, rng))
        if t[-1] >= end:
            parts.append(t[t < end])
            break
        parts.append(t)
        t0 = float(t[-1])
    return np.concatenate(parts)


def _bursts(spec: ArrivalSpec, n: int | None, duration: float | None) -> np.ndarray:
    size = spec.burst_size if spec.burst_size is not None else n
    if size is None:
        raise ValueError("burst needs burst_size or n")
    if spec.burst_interval is None:
        k = size if n is None else min(size, n)
        return np.zeros(k)
    if n is None and duration is None:
        raise ValueError("repeated bursts need n or duration")
    count = n if n is not None else math.inf
    if duration is not None:
        count = min(count, math.ceil(duration / spec.burst_interval) * size)
    k = int(count)
    t = (np.arange(k) // size) * spec.burst_interval
    return t.astype(float) if duration is None else t[t < duration].astype(float)


def _phases(
    phases: tuple[PhaseSpec, ...], repeat: bool, n: int | None, duration: float | None, seed: int
) -> np.ndarray:
    cycle = sum(p.duration for p in phases)
    if repeat and n is None and duration is None:
        raise ValueError("repeated phases need n or duration")
    if repeat and all(p.rate == 0 for p in phases):
        return np.empty(0)
    end = duration if duration is not None else (math.inf if repeat else cycle)
    parts: list[np.ndarray] = []
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
        t = (
            _renewal(ph.process, ph.rate, b, None, seg, _rng(seed, 1, i), start)
            if ph.rate > 0
            else np.empty(0)
        )
        parts.append(t)
        got += t.size
        start += ph.duration
        i += 1
    out = np.concatenate(parts) if parts else np.empty(0)
    return out[:n] if n is not None else out
