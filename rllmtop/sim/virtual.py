"""Virtual time: feed the engine requests with arrival times and step it as fast as the CPU allows.

For tests and what-if runs (no sockets, no sleeping)::

    from rllmtop.sim.virtual import run_virtual
    from rllmtop.sim.synth import mixed_workload

    result = run_virtual(mixed_workload(n=400, rate=4.0, burstiness=0.5, seed=1), profile="rllm-7b")
    result.series.kv_usage.max(), result.stats.preemptions, [r.e2e for r in result.requests]

The prompts are rendered and planned exactly as the HTTP server does, so the same prompts, seeds and
options give the same token counts here and over the wire.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rllmtop.sim.engine import Engine, EngineConfig, EngineStats, Request
from rllmtop.sim.outputs import RequestFactory, render_chat, tokenize
from rllmtop.sim.profiles import EngineOptions, Profile, build_engine_config, load_profile

__all__ = ["Arrival", "RequestResult", "Series", "SimResult", "prepare_request", "run_virtual"]


@dataclass(frozen=True)
class Arrival:
    """One request of a virtual run: when it arrives and what it asks."""

    t: float  # arrival time, seconds from the start
    prompt: str  # the user message (chat) or the raw prompt (completions)
    max_tokens: int | None = None  # None: up to the model length
    seed: int | None = None  # the OpenAI `seed` field
    thinking: bool = True  # chat_template_kwargs.enable_thinking
    system: str | None = None  # an optional system message (chat)
    api: str = "chat"  # "chat" | "completions"
    history: tuple[tuple[str, str], ...] = ()  # earlier (role, text) turns of a chat, before `prompt`
    difficulty: str | None = None  # the x-rllmtop-difficulty header
    reasoning_effort: str | None = None  # "low" | "medium" | "high"
    thinking_budget: int | None = None  # thinking_token_budget
    ignore_eos: bool = False


@dataclass(frozen=True)
class RequestResult:
    """Per-request timings (seconds from the start) and counts of a virtual run."""

    index: int  # position in the arrivals list
    tier: str
    t_arrival: float
    t_first_scheduled: float | None
    t_first_token: float | None
    t_reasoning_end: float | None
    t_first_answer: float | None
    t_done: float | None
    prompt_tokens: int
    cached_prompt_tokens: int
    reasoning_tokens: int
    completion_tokens: int
    finish_reason: str | None
    correct: bool
    preemptions: int

    @property
    def e2e(self) -> float:
        return float("nan") if self.t_done is None else self.t_done - self.t_arrival

    @property
    def ttft(self) -> float:
        return float("nan") if self.t_first_token is None else self.t_first_token - self.t_arrival

    @property
    def ttfvt(self) -> float:
        """Time to the first visible (answer) token."""
        return float("nan") if self.t_first_answer is None else self.t_first_answer - self.t_arrival

    @property
    def queue_time(self) -> float:
        return float("nan") if self.t_first_scheduled is None else self.t_first_scheduled - self.t_arrival


@dataclass(frozen=True)
class Series:
    """Engine state sampled every ``interval`` seconds (state at the end of the last finished step)."""

    interval: float
    t: np.ndarray
    kv_usage: np.ndarray
    running: np.ndarray
    waiting: np.ndarray
    generation_tokens: np.ndarray  # cumulative


@dataclass
class SimResult:
    requests: list[RequestResult]
    series: Series
    stats: EngineStats
    config: EngineConfig
    end: float  # model time when the last request finished (or the horizon)
    steps: int


def prepare_request(
    factory: RequestFactory, arrival: Arrival, config: EngineConfig, rid: str, *, reasons: bool
) -> Request:
    """Render, tokenize and plan one request exactly as the server does."""
    if arrival.api == "chat":
        messages = [*arrival.history, ("user", arrival.prompt)]
        if arrival.system:
            messages.insert(0, ("system", arrival.system))
        text = render_chat(messages, thinking=arrival.thinking, reasons=reasons)
    else:
        text = arrival.prompt
    prompt_ids = tokenize(text, config.prompt_token_scale)
    room = max(1, config.max_model_len - len(prompt_ids))
    max_tokens = room if arrival.max_tokens is None else min(arrival.max_tokens, room)
    plan = factory.plan(
        text,
        max_tokens=max_tokens,
        request_seed=arrival.seed,
        thinking=arrival.thinking,
        analyze=arrival.prompt,
        difficulty=arrival.difficulty,
        effort=arrival.reasoning_effort if arrival.api == "chat" else None,
        thinking_budget=arrival.thinking_budget,
        ignore_eos=arrival.ignore_eos,
    )
    return Request(rid, prompt_ids, plan, max_tokens)


def run_virtual(
    arrivals: Sequence[Arrival],
    *,
    profile: str | Profile = "rllm-7b",
    options: EngineOptions | None = None,
    seed: int = 0,
    sample_interval: float = 0.25,
    horizon: float | None = None,
    on_step: Callable[[Engine, float], None] | None = None,
) -> SimResult:
    """Run ``arrivals`` through the engine in virtual time until every request finished (or ``horizon``).

    ``seed`` is the server seed (``--seed``). ``on_step(engine, t_end)`` is called after every step.
    """
    prof = load_profile(profile) if isinstance(profile, str) else profile
    opts = options or EngineOptions(seed=seed)
    config = build_engine_config(prof, opts)
    engine = Engine(config)
    factory = RequestFactory(prof.outputs, seed)
    reasons = prof.outputs.reasons
    order = sorted(range(len(arrivals)), key=lambda i: arrivals[i].t)
    reqs: list[Request | None] = [None] * len(arrivals)
    pending: list[tuple[float, int]] = [(arrivals[i].t, i) for i in order]
    heapq.heapify(pending)

    ts: list[float] = []
    kv: list[float] = []
    run: list[int] = []
    wait: list[int] = []
    gen: list[int] = []
    next_sample = 0.0
    now = 0.0
    steps = 0

    def sample_until(t: float) -> None:
        nonlocal next_sample
        while next_sample <= t:
            ts.append(next_sample)
            kv.append(engine.kv_usage)
            run.append(engine.num_running)
            wait.append(engine.num_waiting)
            gen.append(engine.stats.generation_tokens)
            next_sample += sample_interval

    while pending or engine.has_work:
        if horizon is not None and now >= horizon:
            break
        if not engine.has_work:
            t_next = pending[0][0]
            sample_until(min(t_next, horizon) if horizon is not None else t_next)
            now = max(now, t_next)
        while pending and pending[0][0] <= now:
            t_arr, i = heapq.heappop(pending)
            req = prepare_request(factory, arrivals[i], config, str(i), reasons=reasons)
            reqs[i] = req
            engine.add(req, t_arr)
        step = engine.step(now)
        steps += 1
        end = step.start + step.duration
        # state changes at the end of the step; samples before it see the state before
        if step.duration > 0:
            sample_until(end - 1e-12)
        now = end
        if on_step is not None:
            on_step(engine, now)
    sample_until(now)

    results = []
    for i, maybe in enumerate(reqs):
        if maybe is None:
            continue
        req = maybe
        plan = req.plan
        emitted_reasoning = min(req.num_output, plan.reasoning_tokens)
        results.append(
            RequestResult(
                index=i,
                tier=plan.tier,
                t_arrival=req.t_arrival,
                t_first_scheduled=req.t_first_scheduled,
                t_first_token=req.t_first_token,
                t_reasoning_end=req.t_reasoning_end,
                t_first_answer=req.t_first_answer,
                t_done=req.t_done,
                prompt_tokens=req.num_prompt,
                cached_prompt_tokens=req.num_cached_prompt,
                reasoning_tokens=emitted_reasoning,
                completion_tokens=req.num_output,
                finish_reason=req.finish_reason,
                correct=plan.correct and req.finish_reason == plan.finish_reason,
                preemptions=req.preemptions,
            )
        )
    series = Series(
        interval=sample_interval,
        t=np.asarray(ts),
        kv_usage=np.asarray(kv),
        running=np.asarray(run),
        waiting=np.asarray(wait),
        generation_tokens=np.asarray(gen),
    )
    return SimResult(results, series, engine.stats, config, now, steps)
