"""The simulated engine: a vLLM V1-style scheduler over a paged KV cache, in model time.

Pure: no sockets, no asyncio, no wall clock. :meth:`Engine.step` schedules one iteration at model
time ``now`` and returns how long it takes and which requests produced tokens; the HTTP server paces
these steps in wall time, :func:`rllmtop.sim.virtual.run_virtual` runs them back to back in virtual
time. Every time, duration and histogram is in model seconds, whatever the server's ``--speed``: the
engine never sees the speed, so the same arrivals in model time give the same run at any speed.

Scheduler (as vLLM V1): running requests first (decode or the next prefill chunk), in admission order,
within ``max_num_batched_tokens``; a running request that needs a KV block when none is free preempts
the most recently admitted running request (recompute: its blocks are freed and it goes back to the
front of the waiting queue); waiting requests are admitted FCFS while ``max_num_seqs``, the token
budget and the free-block watermark allow, and not in a step that preempted; a request is never
admitted before its arrival time (an idle engine waits for it). Prefill is chunked.
Prefix caching keeps hash-chained full blocks after their request ends and evicts them LRU.

Iteration time: ``T = t0 + beta*B + max(t_weights, a*N) + c*ctx + p*pairs + comm + draft`` with B the
scheduled requests, N the scheduled tokens, ctx the context of decoding requests, pairs the
query-key pairs of prefill chunks (attention FLOPs), comm the tensor-parallel all-reduces and draft the
speculative proposer's cost. ``admit_delay`` holds a new request back from the scheduler for that long
after its arrival (a real API server's tokenization and hand-off, measured by ``rllmtop sim calibrate``;
0 for profiles reasoned from hardware); its queue time and TTFT include it.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from rllmtop.sim.outputs import OutputPlan

__all__ = [
    "BUCKETS",
    "Engine",
    "EngineConfig",
    "EngineStats",
    "Histogram",
    "Request",
    "StepResult",
]

WAITING, RUNNING, FINISHED = 0, 1, 2


@dataclass(frozen=True)
class EngineConfig:
    """Numbers the engine runs on (derive them from a profile with ``profiles.build_engine_config``)."""

    num_gpu_blocks: int
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int = 32768
    enable_prefix_caching: bool = True
    watermark: float = 0.01  # fraction of blocks kept free when admitting a new request
    # iteration-time terms, seconds
    t0: float = 0.13e-3
    beta: float = 4e-6  # per scheduled request
    t_weights: float = 5.5e-3  # one pass over the weights (HBM-bound)
    a: float = 20e-6  # per scheduled token (compute-bound)
    c: float = 0.05e-6  # per context token of a decoding request (KV read)
    p: float = 1e-10  # per query-key pair of a prefill chunk (attention compute)
    admit_delay: float = 0.0  # a new request is schedulable this long after its arrival
    comm_fixed: float = 0.0  # tensor-parallel all-reduce latency per step
    comm_per_token: float = 0.0  # tensor-parallel all-reduce bytes per scheduled token / bandwidth
    # speculative decoding
    spec_tokens: int = 0  # draft tokens proposed per decoding request and step
    spec_acceptance: float = 0.0  # probability each draft token is accepted (until the first rejection)
    spec_method: str = ""
    draft_fraction: float = 0.0  # cost of one draft pass relative to a target pass
    draft_overhead: float = 0.0  # fixed proposer cost per step, seconds
    seed: int = 0  # for speculative acceptance draws
    prompt_token_scale: float = 1.0  # engine tokens per stand-in token of a prompt (outputs.tokenize)

    @property
    def capacity_tokens(self) -> int:
        return self.num_gpu_blocks * self.block_size


class Histogram:
    """A Prometheus-style histogram: upper bounds, per-bucket counts, sum and count."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n
        self.count += n

    def cumulative(self) -> list[tuple[str, int]]:
        """[(le, cumulative count), ..., ("+Inf", count)], le formatted like prometheus_client."""
        out = []
        acc = 0
        for b, c in zip(self.bounds, self.counts, strict=False):
            acc += c
            out.append((repr(b), acc))
        out.append(("+Inf", self.count))
        return out


def _one_two_five(limit: int) -> list[float]:
    out: list[float] = []
    exp = 0
    while True:
        for m in (1, 2, 5):
            v = m * 10**exp
            if v > limit:
                return out
            out.append(float(v))
        exp += 1


_LATENCY = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0]
_LATENCY += [120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]
_ITL = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0]
_ITL += [40.0, 80.0]
_TTFT = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0]
_TTFT += [40.0, 80.0, 160.0, 640.0, 2560.0]
BUCKETS: dict[str, list[float]] = {
    "time_to_first_token_seconds": _TTFT,
    "inter_token_latency_seconds": _ITL,
    "request_time_per_output_token_seconds": _ITL,
    "e2e_request_latency_seconds": _LATENCY,
    "request_queue_time_seconds": _LATENCY,
    "request_inference_time_seconds": _LATENCY,
    "request_prefill_time_seconds": _LATENCY,
    "request_decode_time_seconds": _LATENCY,
    "iteration_tokens_total": [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384],
    "request_num_preemptions": [1, 2, 3, 4, 5, 10, 20],
    "request_params_n": [1, 2, 5, 10, 20],
}
_TOKEN_HISTOGRAMS = (
    "request_prompt_tokens",
    "request_generation_tokens",
    "request_max_num_generation_tokens",
    "request_params_max_tokens",
    "request_prefill_kv_computed_tokens",
)
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")


class EngineStats:
    """vLLM's counters and histograms, kept by the engine (durations in model seconds)."""

    def __init__(self, max_model_len: int) -> None:
        self.prompt_tokens = 0
        self.prompt_tokens_cached = 0
        self.generation_tokens = 0
        self.preemptions = 0
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        self.spec_drafts = 0
        self.spec_draft_tokens = 0
        self.spec_accepted_tokens = 0
        self.iterations = 0
        self.finished: dict[str, int] = dict.fromkeys(FINISH_REASONS, 0)
        self.histograms: dict[str, Histogram] = {k: Histogram(v) for k, v in BUCKETS.items()}
        token_buckets = _one_two_five(max_model_len)
        for k in _TOKEN_HISTOGRAMS:
            self.histograms[k] = Histogram(token_buckets)
        self._itl = self.histograms["inter_token_latency_seconds"]

    def finish(self, req: Request, reason: str) -> None:
        h = self.histograms
        self.finished[reason] += 1
        t_done = req.t_done if req.t_done is not None else req.t_last_token
        h["e2e_request_latency_seconds"].observe(t_done - req.t_arrival)
        h["request_generation_tokens"].observe(req.num_output)
        h["request_max_num_generation_tokens"].observe(req.max_tokens)
        h["request_params_max_tokens"].observe(req.max_tokens)
        h["request_params_n"].observe(1)
        h["request_num_preemptions"].observe(req.preemptions)
        if req.t_first_scheduled is not None:
            h["request_queue_time_seconds"].observe(req.t_first_scheduled - req.t_arrival)
            h["request_inference_time_seconds"].observe(t_done - req.t_first_scheduled)
        if req.t_first_token is not None and req.t_first_scheduled is not None:
            h["request_prompt_tokens"].observe(req.num_prompt)
            h["request_prefill_kv_computed_tokens"].observe(req.num_prompt - req.num_cached_prompt)
            h["request_prefill_time_seconds"].observe(req.t_first_token - req.t_first_scheduled)
            h["request_decode_time_seconds"].observe(t_done - req.t_first_token)
            if req.num_output > 1:
                tpot = (t_done - req.t_first_token) / (req.num_output - 1)
                h["request_time_per_output_token_seconds"].observe(tpot)


class Request:
    """One request inside the engine; timestamps are model seconds."""

    __slots__ = (
        "block_hashes",
        "blocks",
        "finish_reason",
        "max_tokens",
        "num_cached_prompt",
        "num_computed",
        "num_output",
        "num_prompt",
        "num_registered",
        "plan",
        "preemptions",
        "prompt_ids",
        "rid",
        "status",
        "t_arrival",
        "t_done",
        "t_first_answer",
        "t_first_scheduled",
        "t_first_token",
        "t_last_token",
        "t_ready",
        "t_reasoning_end",
        "user",
    )

    def __init__(
        self, rid: str, prompt_ids: list[int], plan: OutputPlan, max_tokens: int, user: object = None
    ):
        self.rid = rid
        self.prompt_ids = prompt_ids
        self.num_prompt = len(prompt_ids)
        self.plan = plan
        self.max_tokens = max_tokens
        self.user = user  # the server's stream handle, or anything a caller wants to attach
        self.status = WAITING
        self.num_computed = 0
        self.num_output = 0
        self.num_cached_prompt = 0
        self.blocks: list[int] = []
        self.block_hashes: list[int] = []  # chained hashes of full blocks of prompt + output
        self.num_registered = 0  # leading blocks already offered to the prefix cache
        self.finish_reason: str | None = None
        self.preemptions = 0
        self.t_arrival = 0.0
        self.t_ready = 0.0  # schedulable from here (arrival + the config's admit_delay)
        self.t_first_scheduled: float | None = None
        self.t_first_token: float | None = None
        self.t_last_token = 0.0
        self.t_reasoning_end: float | None = None
        self.t_first_answer: float | None = None
        self.t_done: float | None = None

    def tokens(self, a: int, b: int) -> list[int]:
        """Token ids [a, b) of prompt + output so far."""
        p = self.num_prompt
        if b <= p:
            return self.prompt_ids[a:b]
        if a >= p:
            return self.plan.token_ids[a - p : b - p]
        return self.prompt_ids[a:] + self.plan.token_ids[: b - p]


class _BlockPool:
    """Paged KV blocks with an LRU free queue and (optionally) a hash -> block prefix cache."""

    def __init__(self, n: int, caching: bool) -> None:
        self.n = n
        self.caching = caching
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(n))
        self.ref = [0] * n
        self.hash_of: list[int | None] = [None] * n
        self.cached: dict[int, int] = {}

    def alloc(self, k: int) -> list[int]:
        free, ref, hash_of = self.free, self.ref, self.hash_of
        out = []
        for _ in range(k):
            b = free.popitem(last=False)[0]
            h = hash_of[b]
            if h is not None:
                if self.cached.get(h) == b:
                    del self.cached[h]
                hash_of[b] = None
            ref[b] = 1
            out.append(b)
        return out

    def release(self, blocks: list[int]) -> None:
        """Drop one reference on each block; unreferenced ones join the free queue, tail blocks first."""
        ref, free = self.ref, self.free
        for b in reversed(blocks):
            ref[b] -= 1
            if ref[b] == 0:
                free[b] = None

    def touch(self, blocks: list[int]) -> None:
        ref, free = self.ref, self.free
        for b in blocks:
            if ref[b] == 0:
                del free[b]
            ref[b] += 1

    def register(self, block: int, h: int) -> None:
        if h not in self.cached and self.hash_of[block] is None:
            self.cached[h] = block
            self.hash_of[block] = h


@dataclass
class StepResult:
    """One iteration: its duration and what it produced (in emission order)."""

    start: float
    duration: float
    emitted: list[tuple[Request, int]] = field(default_factory=list)  # (request, new tokens)
    finished: list[Request] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    num_tokens: int = 0  # scheduled tokens (prefill + decode + draft)
    num_reqs: int = 0


class Engine:
    """The scheduler and its KV cache. Drive it with :meth:`add`, :meth:`step` and :meth:`abort`."""

    def __init__(self, config: EngineConfig) -> None:
        if config.num_gpu_blocks < 1:
            raise ValueError("num_gpu_blocks must be >= 1")
        self.config = config
        self.bs = config.block_size
        self.pool = _BlockPool(config.num_gpu_blocks, config.enable_prefix_caching)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.stats = EngineStats(config.max_model_len)
        self.now = 0.0
        self._watermark_blocks = int(config.watermark * config.num_gpu_blocks)
        self._rng = random.Random(config.seed)
        self._spec_dist = self._acceptance_cdf(config.spec_tokens, config.spec_acceptance)

    # ---- public -------------------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    @property
    def kv_usage(self) -> float:
        """Fraction of KV blocks in use (free cached blocks count as free), 0..1."""
        return 1.0 - len(self.pool.free) / self.pool.n

    def add(self, req: Request, now: float) -> None:
        """Queue ``req``, arrived at model time ``now`` (it may be ahead of the engine's clock)."""
        req.t_arrival = now
        req.t_ready = now + self.config.admit_delay
        req.status = WAITING
        self.waiting.append(req)

    def abort(self, req: Request, now: float) -> None:
        """Remove a request (client went away); counted with finished_reason "abort"."""
        if req.status == FINISHED:
            return
        if req.status == RUNNING:
            self.running.remove(req)
        else:
            try:
                self.waiting.remove(req)
            except ValueError:
                pass
        self.pool.release(req.blocks)
        req.blocks = []
        req.status = FINISHED
        req.finish_reason = "abort"
        req.t_done = max(now, self.now)
        self.stats.finish(req, "abort")

    def step(self, now: float) -> StepResult:
        """Schedule and run one iteration starting at model time ``now`` (or later: an idle engine
        whose next request arrives after ``now`` starts at that arrival; ``StepResult.start`` says)."""
        cfg = self.config
        now = max(now, self.now)
        if not self.running and self.waiting and self.waiting[0].t_ready > now:
            now = self.waiting[0].t_ready
        bs = self.bs
        pool = self.pool
        budget = cfg.max_num_batched_tokens
        running = self.running
        result = StepResult(start=now, duration=0.0)
        sched: list[tuple[Request, int, int]] = []  # (request, new tokens, draft tokens)
        preempted = result.preempted
        decode_ctx = 0
        prefill_pairs = 0.0
        k_spec = cfg.spec_tokens

        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            n_tokens = req.num_prompt + req.num_output
            n_new = n_tokens - req.num_computed
            drafts = 0
            if n_new == 1 and k_spec:
                drafts = min(k_spec, req.plan.n_tokens - req.num_output - 1, budget - 1)
                if drafts < 0:
                    drafts = 0
                n_new += drafts
            elif n_new > budget:
                n_new = budget
            need = -(-(req.num_computed + n_new) // bs) - len(req.blocks)
            if need > 0:
                scheduled_it = True
                while need > len(pool.free):
                    victim = running.pop()
                    self._preempt(victim, now)
                    preempted.append(victim)
                    if victim is req:
                        scheduled_it = False
                        break
                if not scheduled_it:
                    break
                req.blocks.extend(pool.alloc(need))
            if n_new - drafts == 1:
                decode_ctx += req.num_computed + n_new
            else:
                prefill_pairs += n_new * (req.num_computed + n_new / 2)
            sched.append((req, n_new, drafts))
            budget -= n_new
            i += 1

        if not preempted:
            waiting = self.waiting
            max_seqs = cfg.max_num_seqs
            caching = pool.caching
            while waiting and len(running) < max_seqs and budget > 0:
                req = waiting[0]
                if req.t_ready > now:  # not arrived (or not handed over) yet at this step's model time
                    break
                n_tokens = req.num_prompt + req.num_output
                hit_blocks: list[int] = []
                if caching and req.num_computed == 0:
                    hit_blocks = self._lookup(req, n_tokens)
                    if hit_blocks:
                        pool.touch(hit_blocks)
                        req.blocks = list(hit_blocks)
                        req.num_computed = len(hit_blocks) * bs
                        req.num_registered = len(hit_blocks)
                n_hit = len(hit_blocks)
                n_new = min(n_tokens - req.num_computed, budget)
                need = -(-(req.num_computed + n_new) // bs) - len(req.blocks)
                if need > len(pool.free) or (running and len(pool.free) - need < self._watermark_blocks):
                    if hit_blocks:
                        pool.release(hit_blocks)
                        req.blocks = []
                        req.num_computed = 0
                        req.num_registered = 0
                    break
                waiting.popleft()
                if need > 0:
                    req.blocks.extend(pool.alloc(need))
                if caching:
                    self.stats.prefix_cache_queries += n_tokens
                    self.stats.prefix_cache_hits += n_hit * bs
                if req.t_first_scheduled is None:
                    req.t_first_scheduled = now
                    req.num_cached_prompt = min(n_hit * bs, req.num_prompt)
                req.status = RUNNING
                running.append(req)
                if n_new == 1 and n_tokens > req.num_prompt:
                    decode_ctx += req.num_computed + 1
                else:
                    prefill_pairs += n_new * (req.num_computed + n_new / 2)
                sched.append((req, n_new, 0))
                budget -= n_new

        n_sched = cfg.max_num_batched_tokens - budget
        n_reqs = len(sched)
        result.num_tokens = n_sched
        result.num_reqs = n_reqs
        if not sched:
            return result
        dur = cfg.t0 + cfg.beta * n_reqs + max(cfg.t_weights, cfg.a * n_sched)
        dur += cfg.c * decode_ctx + cfg.p * prefill_pairs + cfg.comm_fixed + cfg.comm_per_token * n_sched
        if k_spec:
            dur += cfg.draft_overhead + k_spec * cfg.draft_fraction * max(cfg.t_weights, cfg.a * n_reqs)
        end = now + dur
        result.duration = dur
        self.now = end
        self._finish_step(sched, end, result)
        return result

    # ---- internals ----------------------------------------------------------------------------
    def _finish_step(self, sched: list[tuple[Request, int, int]], end: float, result: StepResult) -> None:
        stats = self.stats
        itl = stats._itl
        emitted = result.emitted
        caching = self.pool.caching
        bs = self.bs
        any_finished = False
        spec_dist = self._spec_dist
        rng = self._rng
        gen = 0
        for req, n_new, drafts in sched:
            if drafts:
                u = rng.random()
                m = 0
                while m < drafts and u >= spec_dist[m]:
                    m += 1
                stats.spec_drafts += 1
                stats.spec_draft_tokens += drafts
                stats.spec_accepted_tokens += m
                req.num_computed += n_new - drafts + m
                out = m + 1
            else:
                req.num_computed += n_new
                out = 1 if req.num_computed == req.num_prompt + req.num_output else 0
            if caching and req.num_computed // bs > req.num_registered:
                self._register(req)
            if not out:
                continue
            out = min(out, req.plan.n_tokens - req.num_output)
            if out <= 0:  # an empty plan (cannot happen with max_tokens >= 1)
                out = 0
            prev = req.num_output
            req.num_output = prev + out
            gen += out
            if req.t_first_token is None:
                req.t_first_token = end
                stats.prompt_tokens += req.num_prompt
                stats.prompt_tokens_cached += req.num_cached_prompt
                stats.histograms["time_to_first_token_seconds"].observe(end - req.t_arrival)
            else:
                itl.observe(end - req.t_last_token)
            req.t_last_token = end
            plan = req.plan
            if plan.thinking:
                r = plan.reasoning_tokens
                if prev <= r < req.num_output and req.t_reasoning_end is None:
                    req.t_reasoning_end = end
                if req.num_output > r + 1 and req.t_first_answer is None:
                    req.t_first_answer = end
            elif req.t_first_answer is None:
                req.t_first_answer = end
            emitted.append((req, out))
            if req.num_output >= plan.n_tokens:
                req.status = FINISHED
                req.finish_reason = plan.finish_reason
                req.t_done = end
                self.pool.release(req.blocks)
                req.blocks = []
                stats.finish(req, plan.finish_reason)
                result.finished.append(req)
                any_finished = True
        stats.generation_tokens += gen
        stats.iterations += 1
        stats.histograms["iteration_tokens_total"].observe(result.num_tokens)
        if any_finished:
            self.running = [r for r in self.running if r.status == RUNNING]

    def _preempt(self, req: Request, now: float) -> None:
        self.pool.release(req.blocks)
        req.blocks = []
        req.num_computed = 0
        req.num_registered = 0
        req.status = WAITING
        req.preemptions += 1
        self.stats.preemptions += 1
        self.waiting.appendleft(req)

    def _hash_upto(self, req: Request, n_blocks: int) -> list[int]:
        hashes = req.block_hashes
        bs = self.bs
        parent = hashes[-1] if hashes else 0
        for j in range(len(hashes), n_blocks):
            parent = hash((parent, *req.tokens(j * bs, (j + 1) * bs)))
            hashes.append(parent)
        return hashes

    def _lookup(self, req: Request, n_tokens: int) -> list[int]:
        max_blocks = (n_tokens - 1) // self.bs  # at least one token is always computed
        hashes = self._hash_upto(req, max_blocks)
        cached = self.pool.cached
        hits = []
        for j in range(max_blocks):
            b = cached.get(hashes[j])
            if b is None:
                break
            hits.append(b)
        return hits

    def _register(self, req: Request) -> None:
        n_full = min(req.num_computed // self.bs, len(req.blocks))
        hashes = self._hash_upto(req, n_full)
        pool = self.pool
        blocks = req.blocks
        for j in range(req.num_registered, n_full):
            pool.register(blocks[j], hashes[j])
        req.num_registered = n_full

    @staticmethod
    def _acceptance_cdf(k: int, alpha: float) -> list[float]:
        """CDF of accepted draft tokens m (stop at the first rejection): P(m <= j) for j < k."""
        out = []
        acc = 0.0
        for j in range(k):
            acc += (alpha**j) * (1 - alpha)
            out.append(acc)
        return out
