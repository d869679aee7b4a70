"""Scenario files (``scenarios/*.toml``) -> a validated :class:`Scenario`.

The dataclasses below are the schema every module codes against (the session, the launcher, the
simulator's launch arguments, the TUI header). The loader and validator live in this module too;
every error it raises is a :class:`rllmtop.errors.UserError` naming the file, the field, the bad value
and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ArrivalSpec",
    "EngineSpec",
    "LoadSpec",
    "PhaseSpec",
    "PromptSource",
    "RequestClass",
    "Scenario",
    "SpeculativeConfig",
]

ENGINE_KINDS = ("sim", "url", "vllm", "sglang")
ARRIVAL_PROCESSES = ("gamma", "poisson", "constant", "burst", "phases", "trace")


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str  # "ngram" | "draft_model" | "eagle" | "eagle3" | "mtp" | "suffix"
    num_speculative_tokens: int
    draft_model: str | None = None
    acceptance_rate: float | None = None  # simulator only: probability each draft token is accepted


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
    # trace replay (BurstGPT-style CSV/JSONL of timestamps)
    trace_file: str | None = None
    trace_column: str = "timestamp"
    time_scale: float = 1.0  # multiply trace gaps by this


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
    limit: int | None = None  # use at most this many items


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


@dataclass(frozen=True)
class LoadSpec:
    num_prompts: int | None = None  # stop after this many requests ...
    duration: float | None = None  # ... or after this many seconds of sending (both: whichever first)
    max_concurrency: int | None = None  # client-side cap; None = open loop, unlimited
    grace_period: float = 30.0  # after sending stops (end or Ctrl-C): wait this long for in-flight ones
    api: str = "chat"  # "chat" (/v1/chat/completions) | "completions" (/v1/completions)
    record_answers: bool = False  # keep answer text in the recording
    request_seed: bool = True  # send a per-request `seed` derived from the scenario seed (reproducible)
    return_token_ids: bool = False  # ask vLLM for per-chunk token ids (exact counts); off for other engines
    timeout: float = 3600.0  # per-request timeout, seconds


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
    matrix: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    scrape_interval: float = 0.25
