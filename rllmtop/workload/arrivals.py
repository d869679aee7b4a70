"""Arrival processes: when each request is sent, precomputed and reproducible.

Gamma arrivals follow `vllm bench serve` exactly: inter-arrival gaps ~ Gamma(shape=b, scale=1/(rate*b)), so
the mean gap is 1/rate and its coefficient of variation 1/sqrt(b); b = 1 is Poisson, b < 1 is burstier. As
there, send i happens at the sum of gaps 0..i (the first request waits one gap). Unlike `vllm bench serve`,
the schedule is *not* stretched so that the last send lands at N/rate unless ``arrival.rescale = true``: the
gaps then stay exactly Gamma distributed (vLLM's rescaling changes them by 1-2%).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import orjson

from rllmtop.errors import UserError
from rllmtop.scenario import ArrivalSpec, PhaseSpec

__all__ = ["load_trace", "schedule"]

_ARRIVAL_STREAM = 0x41525256  # separates the arrival RNG stream from the prompt-mix stream


def _rng(seed: int, *salt: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _ARRIVAL_STREAM, *salt]))


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


def load_trace(path: str | Path, column: str = "timestamp") -> np.ndarray:
    """Timestamps from a CSV (header row) or JSONL file, sorted and shifted to start at 0 (seconds).

    BurstGPT's CSV uses ``column = "Timestamp"``. A JSONL line may also be a bare number.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read arrival trace {p}: {e}", "check arrival.trace_file") from e
    values: list[float] = []
    where = ""
    try:
        if p.suffix.lower() in (".jsonl", ".ndjson", ".json"):
            for lineno, line in enumerate(raw.splitlines(), 1):
                where = f"line {lineno}"
                if not line.strip():
                    continue
                obj = orjson.loads(line)
                values.append(float(obj if isinstance(obj, int | float) else obj[column]))
        else:
            reader = csv.DictReader(raw.decode("utf-8-sig").splitlines())
            if reader.fieldnames is None or column not in reader.fieldnames:
                have = ", ".join(reader.fieldnames or []) or "(no header row)"
                raise UserError(
                    f"arrival trace {p} has no column {column!r} (columns: {have})",
                    "set arrival.trace_column to the timestamp column",
                )
            for lineno, row in enumerate(reader, 2):
                where = f"line {lineno}"
                values.append(float(row[column]))
    except UserError:
        raise
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as e:
        raise UserError(
            f"arrival trace {p}, {where}: cannot read a timestamp from column {column!r} ({e})",
            "every row needs a number of seconds in that column",
        ) from e
    t = np.sort(np.asarray(values, dtype=float))
    if t.size == 0:
        raise UserError(f"arrival trace {p} has no timestamps", "add rows, or pick another file")
    if not np.all(np.isfinite(t)):
        raise UserError(f"arrival trace {p} has a non-finite timestamp", "every timestamp must be a number")
    return t - t[0]
