"""Synthetic session records for recorder/replay tests (deterministic for a given seed)."""

from __future__ import annotations

import math
import random

from rllmtop.events import (
    HistogramSample,
    MetricSample,
    RequestEvent,
    RequestKind,
    RequestRecord,
    RequestStatus,
    Scrape,
    SessionInfo,
    encode_gaps,
)

TTFT_BOUNDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, math.inf)


def info(**kw: object) -> SessionInfo:
    base: dict[str, object] = {
        "session_id": "abc123",
        "started_at": 1_800_000_000.0,
        "mode": "headless",
        "scenario_name": "burst",
        "scenario_text": 'name = "burst"\n[load]\nrequest_rate = 4\n',
        "seed": 7,
        "engine_kind": "sim",
        "engine_version": "0.1.0",
        "engine_url": "http://127.0.0.1:8000",
        "metrics_url": "http://127.0.0.1:8000/metrics",
        "model": "rllm-7b",
        "rllmtop_version": "0.1.0",
    }
    base.update(kw)
    return SessionInfo(**base)  # type: ignore[arg-type]


def record(
    rid: int,
    t_sent: float,
    rng: random.Random,
    *,
    reasoning: int | None = None,
    answer: int | None = None,
    itl: float = 0.02,
    queued: float = 0.0,
    status: RequestStatus = RequestStatus.OK,
    with_gaps: bool = True,
) -> RequestRecord:
    """A finished request: one token per chunk, ``itl`` apart with jitter, reasoning then answer."""
    r = rng.randint(20, 200) if reasoning is None else reasoning
    a = rng.randint(5, 60) if answer is None else answer
    n = r + a
    ttft = 0.05 + rng.random() * 0.1
    gaps_us = [max(1, int((itl + rng.uniform(-itl / 2, itl / 2)) * 1e6)) for _ in range(max(0, n - 1))]
    t_ft = t_sent + ttft
    times = [t_ft]
    for g in gaps_us:
        times.append(times[-1] + g * 1e-6)
    t_done = times[-1] + 0.001 if n else t_sent + 0.2
    return RequestRecord(
        rid=rid,
        cls=rng.choice(["easy", "hard"]),
        difficulty="medium",
        prompt_id=f"p{rid % 50}",
        t_scheduled=t_sent - queued - 0.0002,
        t_dispatch=t_sent - queued,
        t_sent=t_sent,
        t_first_token=t_ft if n else None,
        t_first_reasoning=t_ft if r else None,
        t_reasoning_end=times[r - 1] if r and n else None,
        t_first_visible=times[r] if a else None,
        t_done=t_done,
        prompt_tokens=rng.randint(50, 500),
        reasoning_tokens=r,
        answer_tokens=a,
        completion_tokens=n,
        tokens_exact=True,
        max_tokens=4096,
        finish_reason="stop" if status is RequestStatus.OK else None,
        status=status,
        http_status=200 if status is not RequestStatus.ERROR else 500,
        error=None if status is RequestStatus.OK else "boom",
        reference="42",
        extracted="42",
        correct=True,
        gaps=encode_gaps(gaps_us) if with_gaps else b"",
    )


def done_event(rec: RequestRecord) -> RequestEvent:
    kind = RequestKind.DONE if rec.status is RequestStatus.OK else RequestKind.FAILED
    assert rec.t_done is not None
    return RequestEvent(kind, rec.t_done, rec.rid, rec.cls, rec.reasoning_tokens, rec.answer_tokens, "", rec)


def scrape(t: float, i: int, *, engines: int = 1, missing: tuple[str, ...] = ("sim_lag_seconds",)) -> Scrape:
    """A vLLM-like scrape: 5 gauges/counters per engine + success by reason + a TTFT histogram (~20 series)."""
    samples: list[MetricSample] = []
    hists: list[HistogramSample] = []
    for e in range(engines):
        lab = (("engine", str(e)),)
        samples += [
            MetricSample(t, "kv_cache_usage", (i % 100) / 100, lab),
            MetricSample(t, "requests_running", float(i % 17), lab),
            MetricSample(t, "requests_waiting", float(i % 5), lab),
            MetricSample(t, "preemptions_total", float(i // 50), lab),
            MetricSample(t, "prompt_tokens_total", float(i * 300), lab),
            MetricSample(t, "generation_tokens_total", float(i * 1000), lab),
            MetricSample(t, "prefix_cache_queries_total", float(i * 300), lab),
            MetricSample(t, "prefix_cache_hits_total", float(i * 100), lab),
        ]
        samples += [
            MetricSample(t, "request_success_total", float(i // k), (*lab, ("finished_reason", reason)))
            for k, reason in ((3, "length"), (2, "stop"))
        ]
        counts = tuple(float(i * k // 10) for k in range(1, len(TTFT_BOUNDS) + 1))
        hists.append(HistogramSample(t, "ttft_seconds", TTFT_BOUNDS, counts, i * 0.25, counts[-1], lab))
        hists.append(HistogramSample(t, "e2e_seconds", TTFT_BOUNDS, counts, i * 2.5, counts[-1], lab))
    return Scrape(t, 0.003, True, "", tuple(samples), tuple(hists), missing)
