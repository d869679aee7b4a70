"""Hardware x model profiles, and the engine numbers derived from them.

A profile is a TOML file (the built-in ones live in ``rllmtop/sim/profiles/``; users pass their own with
``--profile-file``). A profile may start from another with ``base = "rllm-7b"`` and override any field.
:func:`build_engine_config` turns a profile plus vLLM-style options (quantization, KV-cache dtype,
prefix caching, speculative decoding, caps) into an :class:`~rllmtop.sim.engine.EngineConfig`:

- KV blocks = (GPU memory x gpu_memory_utilization - weight bytes - overhead) / KV bytes per token /
  block size (per GPU, KV heads split over tensor-parallel ranks);
- one pass over the weights ``t_weights`` = weight bytes read per step / (HBM bandwidth x efficiency);
- ``a`` = 2 x parameters / (tensor FLOPs x MFU) per token; ``c`` = KV bytes per token / bandwidth per
  context token; ``p`` = attention FLOPs per query-key pair / FLOPs;
- quantization changes bytes per weight (and FLOPs for fp8/int8 where the GPU has them); an fp8 KV cache
  halves KV bytes (twice the blocks, half the KV read time); speculative decoding proposes
  ``num_speculative_tokens`` per step, accepted with ``acceptance_rate`` each, at a per-method cost.

Measured numbers (written by ``rllmtop sim calibrate`` from recordings of a real engine; both optional,
profiles without them behave exactly as before):

- ``[timing.fitted]`` states iteration-time terms directly instead of deriving them from the hardware
  numbers: ``t0_ms`` (fixed per step), ``per_seq_us`` (beta, per scheduled request), ``weights_ms``
  (t_weights, the floor of the token term), ``per_token_us`` (a), ``per_context_token_ns`` (c),
  ``per_pair_ps`` (p) and ``admit_delay_ms`` (arrival to schedulable: the API server's share of TTFT).
  Any field may be left out (it is derived as usual). The fitted numbers include whatever the engine
  did per step (tensor-parallel all-reduces too: no derived communication term is added). Options that
  change the hardware model (``--quantization``, ``--kv-cache-dtype``) scale a fitted ``weights_ms``,
  ``per_token_us``, ``per_context_token_ns`` and ``per_pair_ps`` by the ratio the hardware model derives
  for them (options / recorded defaults), so "the same box with an fp8 KV cache" halves the fitted KV
  read cost.
- ``[serving] num_gpu_blocks`` states the KV capacity in blocks (of ``block_size`` tokens) instead of
  deriving it from GPU memory; ``--num-gpu-blocks-override`` still wins, and options that change the
  derived capacity (``--kv-cache-dtype``, ``--gpu-memory-utilization``, ``--block-size``, quantization)
  scale it by the derived ratio.

The output model lives under ``[outputs]``: per-tier length and accuracy tables ``[outputs.<tier>]``,
and the effect of ``reasoning_effort`` per level, ``[outputs.effort.low|medium|high]`` with
``reasoning_factor`` (planned reasoning length x this) and ``accuracy_delta`` (added to the tier's
accuracy). A level left out keeps the built-in default (:data:`rllmtop.sim.outputs.DEFAULT_EFFORT`:
low x0.35 / -0.08, medium x1.0 / 0, high x1.6 / +0.03); a request without ``reasoning_effort`` is
"medium".
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from rllmtop.errors import UserError
from rllmtop.sim.engine import EngineConfig
from rllmtop.sim.outputs import DEFAULT_EFFORT, EFFORT_LEVELS, TIERS, EffortModel, OutputModel, TierModel

__all__ = [
    "DEFAULT_PROFILE",
    "EngineOptions",
    "FittedTiming",
    "Profile",
    "SpeculativeOptions",
    "build_engine_config",
    "builtin_profile_names",
    "load_profile",
    "load_profile_file",
    "parse_speculative_config",
]

DEFAULT_PROFILE = "rllm-7b"
GIB = 1024**3

# quantization name -> (bytes per weight, compute kind)
QUANTIZATIONS: dict[str, tuple[float, str]] = {
    "awq": (0.5625, "weight_only"),
    "awq_marlin": (0.5625, "weight_only"),
    "gptq": (0.5625, "weight_only"),
    "gptq_marlin": (0.5625, "weight_only"),
    "marlin": (0.5625, "weight_only"),
    "bitsandbytes": (0.5625, "weight_only"),
    "gguf": (0.5625, "weight_only"),
    "int4": (0.5625, "weight_only"),
    "fp8": (1.0, "fp8"),
    "fbgemm_fp8": (1.0, "fp8"),
    "modelopt": (1.0, "fp8"),
    "int8": (1.0, "int8"),
    "w8a8": (1.0, "int8"),
    "compressed-tensors": (1.0, "int8"),
}
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")
# method -> (default acceptance rate, draft pass cost relative to a target pass, fixed cost per step s)
SPEC_METHODS: dict[str, tuple[float, float, float]] = {
    "ngram": (0.35, 0.0, 0.15e-3),
    "suffix": (0.45, 0.0, 0.15e-3),
    "eagle": (0.65, 0.05, 0.0),
    "eagle3": (0.75, 0.05, 0.0),
    "mtp": (0.80, 0.06, 0.0),
    "draft_model": (0.70, 0.12, 0.0),
    "medusa": (0.55, 0.02, 0.0),
}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    params_b: float
    layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    dtype_bytes: int
    max_model_len: int
    # the engine's tokenizer counts this many tokens per token of the simulator's stand-in tokenizer, on
    # prompts (fitted by `rllmtop sim calibrate` from the engine's usage.prompt_tokens; None: 1.0)
    prompt_token_scale: float | None = None


@dataclass(frozen=True)
class GpuSpec:
    name: str
    count: int  # tensor-parallel size
    memory_gib: float
    bandwidth_gbs: float
    bf16_tflops: float
    fp8_tflops: float
    int8_tops: float
    interconnect_gbs: float


@dataclass(frozen=True)
class ServingSpec:
    gpu_memory_utilization: float
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    enable_prefix_caching: bool
    overhead_gib: float
    watermark: float
    num_gpu_blocks: int | None = None  # measured KV capacity (None: derived from GPU memory)


@dataclass(frozen=True)
class FittedTiming:
    """``[timing.fitted]``: iteration-time terms measured on a real engine (None: derived as usual)."""

    t0_ms: float | None = None
    per_seq_us: float | None = None
    weights_ms: float | None = None
    per_token_us: float | None = None
    per_context_token_ns: float | None = None
    per_pair_ps: float | None = None
    admit_delay_ms: float | None = None


@dataclass(frozen=True)
class TimingSpec:
    bandwidth_efficiency: float
    mfu: float
    t0_ms: float
    beta_us: float
    tp_latency_us: float
    fitted: FittedTiming | None = None


@dataclass(frozen=True)
class Profile:
    """A hardware x model profile (see the module docstring)."""

    name: str
    description: str
    kind: str  # "reasoning" | "plain"
    served_model_name: str
    reasoning_parser: str
    assumptions: tuple[str, ...]
    model: ModelSpec
    gpu: GpuSpec
    serving: ServingSpec
    timing: TimingSpec
    outputs: OutputModel
    source: str = ""

    @property
    def gpu_label(self) -> str:
        return self.gpu.name if self.gpu.count == 1 else f"{self.gpu.count}x {self.gpu.name}"


@dataclass(frozen=True)
class SpeculativeOptions:
    method: str
    num_speculative_tokens: int
    acceptance_rate: float


@dataclass(frozen=True)
class EngineOptions:
    """vLLM-style overrides of a profile's serving settings (None: the profile's value)."""

    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float | None = None
    kv_cache_dtype: str = "auto"
    enable_prefix_caching: bool | None = None
    speculative: SpeculativeOptions | None = None
    quantization: str | None = None
    block_size: int | None = None
    num_gpu_blocks_override: int | None = None
    max_model_len: int | None = None
    seed: int = 0


# --------------------------------------------------------------------------------------------------
# Schema and loading
# --------------------------------------------------------------------------------------------------

_TOP: dict[str, Any] = {
    "name": (str, None, None),
    "description": (str, None, None),
    "kind": ("choice", ("reasoning", "plain")),
    "served_model_name": (str, None, None),
    "reasoning_parser": (str, None, None),
    "assumptions": (list, None, None),
}
_SECTIONS: dict[str, dict[str, Any]] = {
    "model": {
        "name": (str, None, None),
        "params_b": (float, 0.01, 2000),
        "layers": (int, 1, 1000),
        "hidden_size": (int, 1, 1 << 20),
        "num_heads": (int, 1, 4096),
        "num_kv_heads": (int, 1, 4096),
        "head_dim": (int, 1, 4096),
        "vocab_size": (int, 1, 1 << 24),
        "tied_embeddings": (bool, None, None),
        "dtype_bytes": (int, 1, 4),
        "max_model_len": (int, 16, 1 << 24),
    },
    "gpu": {
        "name": (str, None, None),
        "count": (int, 1, 1024),
        "memory_gib": (float, 0.5, 10000),
        "bandwidth_gbs": (float, 1, 1e6),
        "bf16_tflops": (float, 0.1, 1e6),
        "fp8_tflops": (float, 0, 1e6),
        "int8_tops": (float, 0, 1e6),
        "interconnect_gbs": (float, 0.1, 1e6),
    },
    "serving": {
        "gpu_memory_utilization": (float, 0.01, 1.0),
        "block_size": (int, 1, 4096),
        "max_num_seqs": (int, 1, 1 << 20),
        "max_num_batched_tokens": (int, 1, 1 << 24),
        "enable_prefix_caching": (bool, None, None),
        "overhead_gib": (float, 0, 10000),
        "watermark": (float, 0, 0.5),
    },
    "timing": {
        "bandwidth_efficiency": (float, 0.01, 1.0),
        "mfu": (float, 0.01, 1.0),
        "t0_ms": (float, 0, 1000),
        "beta_us": (float, 0, 1e6),
        "tp_latency_us": (float, 0, 1e6),
    },
}
# optional fields of a section (absent: None)
_OPTIONAL: dict[str, dict[str, Any]] = {
    "model": {"prompt_token_scale": (float, 0.1, 10.0)},
    "serving": {"num_gpu_blocks": (int, 1, 1 << 30)},
}
_FITTED: dict[str, Any] = {
    "t0_ms": (float, 0, 1e5),
    "per_seq_us": (float, 0, 1e8),
    "weights_ms": (float, 0, 1e5),
    "per_token_us": (float, 0, 1e8),
    "per_context_token_ns": (float, 0, 1e8),
    "per_pair_ps": (float, 0, 1e12),
    "admit_delay_ms": (float, 0, 1e6),
}
_OUTPUTS: dict[str, Any] = {
    "runaway_probability": (float, 0, 1),
    "wrong_length_factor": (float, 0.1, 100),
}
_EFFORT: dict[str, Any] = {
    "reasoning_factor": (float, 0.01, 100),
    "accuracy_delta": (float, -1, 1),
}
_TIER: dict[str, Any] = {
    "reasoning_median": (float, 0, 1e7),
    "reasoning_sigma": (float, 0, 10),
    "answer_median": (float, 1, 1e7),
    "answer_sigma": (float, 0, 10),
    "accuracy": (float, 0, 1),
    "accuracy_no_thinking": (float, 0, 1),
    "answer_median_no_thinking": (float, 1, 1e7),
}


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def _check(where: str, field_name: str, value: Any, spec: tuple[Any, ...]) -> Any:
    kind = spec[0]
    if kind == "choice":
        if value not in spec[1]:
            raise UserError(
                f"{where}: {field_name} = {value!r} is not allowed",
                f"use one of: {', '.join(spec[1])}",
            )
        return value
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is list:
        ok = isinstance(value, list) and all(isinstance(x, str) for x in value)
    else:
        ok = isinstance(value, kind)
    if not ok:
        tname = {float: "a number", int: "an integer", str: "a string", bool: "true or false"}.get(
            kind, "a list of strings"
        )
        raise UserError(f"{where}: {field_name} = {value!r} is not {tname}", f"set {field_name} to {tname}")
    lo, hi = spec[1], spec[2]
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise UserError(
            f"{where}: {field_name} = {value!r} is out of range",
            f"use a value between {lo:g} and {hi:g}",
        )
    return float(value) if kind is float else value


def _section(
    where: str,
    prefix: str,
    data: Any,
    schema: Mapping[str, Any],
    optional: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise UserError(f"{where}: [{prefix}] must be a table", f"write a [{prefix}] table with its fields")
    allowed = {**schema, **(optional or {})}
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise UserError(
            f"{where}: unknown field {prefix + '.' if prefix else ''}{unknown[0]}",
            f"allowed in [{prefix or 'top level'}]: {', '.join(allowed)}",
        )
    missing = [k for k in schema if k not in data]
    if missing:
        raise UserError(
            f"{where}: missing field {prefix + '.' if prefix else ''}{missing[0]}",
            f'add it, or start from a built-in profile with base = "{DEFAULT_PROFILE}"',
        )
    return {k: _check(where, f"{prefix}.{k}" if prefix else k, v, allowed[k]) for k, v in data.items()}


def _timing(where: str, data: Any) -> TimingSpec:
    """``[timing]`` with its optional ``[timing.fitted]`` table (every field of it optional)."""
    if not isinstance(data, Mapping):
        raise UserError(f"{where}: [timing] must be a table", "write a [timing] table with its fields")
    fitted = data.get("fitted")
    values = _section(where, "timing", {k: v for k, v in data.items() if k != "fitted"}, _SECTIONS["timing"])
    if fitted is None:
        return TimingSpec(**values)
    if not isinstance(fitted, Mapping):
        raise UserError(
            f"{where}: [timing.fitted] must be a table",
            "write [timing.fitted] with the measured terms (rllmtop sim calibrate writes it)",
        )
    return TimingSpec(**values, fitted=FittedTiming(**_section(where, "timing.fitted", fitted, {}, _FITTED)))


def _profile_from_dict(data: Mapping[str, Any], where: str) -> Profile:
    allowed = {*_TOP, *_SECTIONS, "outputs", "base"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise UserError(f"{where}: unknown field {unknown[0]}", f"allowed: {', '.join(sorted(allowed))}")
    top = _section(where, "", {k: data.get(k) for k in _TOP if k in data}, _TOP)
    secs = {
        name: _section(where, name, data.get(name, {}), schema, _OPTIONAL.get(name))
        for name, schema in _SECTIONS.items()
        if name != "timing"
    }
    timing = _timing(where, data.get("timing", {}))
    out = data.get("outputs", {})
    if not isinstance(out, Mapping):
        raise UserError(f"{where}: [outputs] must be a table", "write [outputs] and [outputs.<tier>] tables")
    top_out = _section(
        where, "outputs", {k: v for k, v in out.items() if k not in (*TIERS, "effort")}, _OUTPUTS
    )
    tiers = {t: TierModel(**_section(where, f"outputs.{t}", out.get(t, {}), _TIER)) for t in TIERS}
    effort = _effort(where, out.get("effort", {}))
    model = ModelSpec(**secs["model"])
    if model.num_heads % model.num_kv_heads:
        raise UserError(
            f"{where}: model.num_heads ({model.num_heads}) is not a multiple of num_kv_heads "
            f"({model.num_kv_heads})",
            "use the model's config.json values",
        )
    if top["kind"] == "plain" and any(t.reasoning_median > 0 for t in tiers.values()):
        raise UserError(
            f'{where}: kind = "plain" but an [outputs.<tier>] has reasoning_median > 0',
            'set reasoning_median = 0 for plain models, or kind = "reasoning"',
        )
    return Profile(
        name=top["name"],
        description=top["description"],
        kind=top["kind"],
        served_model_name=top["served_model_name"],
        reasoning_parser=top["reasoning_parser"],
        assumptions=tuple(top["assumptions"]),
        model=model,
        gpu=GpuSpec(**secs["gpu"]),
        serving=ServingSpec(**secs["serving"]),
        timing=timing,
        outputs=OutputModel(tiers, top_out["runaway_probability"], top_out["wrong_length_factor"], effort),
        source=where,
    )


def _effort(where: str, data: Any) -> dict[str, EffortModel]:
    """``[outputs.effort.<level>]`` tables; a level left out keeps its default (DEFAULT_EFFORT)."""
    if not isinstance(data, Mapping):
        raise UserError(
            f"{where}: [outputs.effort] must be a table",
            "write [outputs.effort.low] (and medium, high) tables",
        )
    unknown = sorted(set(data) - set(EFFORT_LEVELS))
    if unknown:
        raise UserError(
            f"{where}: unknown reasoning effort level outputs.effort.{unknown[0]}",
            f"use one of: {', '.join(EFFORT_LEVELS)}",
        )
    out = dict(DEFAULT_EFFORT)
    for level, table in data.items():
        out[level] = EffortModel(**_section(where, f"outputs.effort.{level}", table, _EFFORT))
    return out


def _builtin_dir() -> Any:
    return resources.files("rllmtop.sim").joinpath("profiles")


def builtin_profile_names() -> list[str]:
    names = [p.name[:-5] for p in _builtin_dir().iterdir() if p.name.endswith(".toml")]
    return sorted(names, key=lambda n: (n != DEFAULT_PROFILE, n))


def _read_toml(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{where}: not valid TOML ({e})", "fix the syntax at the line shown") from None


def _raw_builtin(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    f = _builtin_dir().joinpath(f"{name}.toml")
    if not f.is_file():
        raise UserError(
            f"unknown simulator profile {name!r}",
            f"use one of: {', '.join(builtin_profile_names())} (or --profile-file PATH.toml)",
        )
    return _resolve_base(
        _read_toml(f.read_text(encoding="utf-8"), f"profile {name}"), f"profile {name}", seen
    )


def _resolve_base(data: dict[str, Any], where: str, seen: tuple[str, ...]) -> dict[str, Any]:
    base = data.get("base")
    if base is None:
        return data
    if not isinstance(base, str):
        raise UserError(
            f"{where}: base = {base!r} is not a profile name", "set base to a built-in profile name"
        )
    if base in seen:
        raise UserError(
            f"{where}: base profiles form a cycle ({' -> '.join((*seen, base))})", "break the cycle"
        )
    over = {k: v for k, v in data.items() if k != "base"}
    return _merge(_raw_builtin(base, (*seen, base)), over)


def load_profile(name: str) -> Profile:
    """A built-in profile by name (``rllmtop sim profiles`` lists them), or a profile file when ``name``
    ends in ``.toml`` (so a scenario's ``[engine] profile = "mine.toml"`` and ``--profile mine.toml`` take
    a calibrated profile; a relative path is from the working directory)."""
    if name.lower().endswith(".toml"):
        return load_profile_file(name)
    return _profile_from_dict(_raw_builtin(name, (name,)), f"profile {name}")


def load_profile_file(path: str | Path) -> Profile:
    """A user profile from a TOML file (may say ``base = "<built-in>"`` and override fields)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"profile file {p}: cannot read it ({e.strerror})", "check the path") from None
    where = str(p)
    return _profile_from_dict(_resolve_base(_read_toml(text, where), where, ()), where)


def parse_speculative_config(text: str) -> SpeculativeOptions:
    """vLLM's ``--speculative-config`` JSON, plus the simulator's optional ``acceptance_rate``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(
            f"--speculative-config is not valid JSON ({e.msg})",
            'example: --speculative-config \'{"method": "ngram", "num_speculative_tokens": 3}\'',
        ) from None
    if not isinstance(data, dict):
        raise UserError("--speculative-config must be a JSON object", 'e.g. {"method": "ngram", ...}')
    method = data.get("method", "draft_model" if data.get("model") else None)
    if method not in SPEC_METHODS:
        raise UserError(
            f"--speculative-config: method {method!r} is not simulated",
            f"use one of: {', '.join(SPEC_METHODS)}",
        )
    k = data.get("num_speculative_tokens")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 16:
        raise UserError(
            f"--speculative-config: num_speculative_tokens = {k!r} must be an integer from 1 to 16",
            "e.g. 3",
        )
    rate = data.get("acceptance_rate", SPEC_METHODS[method][0])
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1:
        raise UserError(
            f"--speculative-config: acceptance_rate = {rate!r} must be between 0 and 1",
            f"omit it for the {method} default ({SPEC_METHODS[method][0]})",
        )
    return SpeculativeOptions(method, k, float(rate))


# --------------------------------------------------------------------------------------------------
# Derivation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Derived:
    """Intermediate figures of :func:`build_engine_config`, for listings and the README."""

    weight_gib_per_gpu: float
    kv_bytes_per_token: int
    kv_tokens: int
    num_gpu_blocks: int
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Hardware:
    """What the hardware model derives for a profile under some options (before the capacity check)."""

    block_size: int
    max_model_len: int
    bpw: float
    weight_bytes: float
    kv_per_token: int
    kv_per_token_gpu: float
    avail: float  # bytes per GPU left for the KV cache (<= 0: the weights do not fit)
    t_weights: float
    a: float
    c: float
    p: float
    comm_fixed: float
    comm_per_token: float


def _hardware(profile: Profile, o: EngineOptions) -> _Hardware:
    m, g, s, t = profile.model, profile.gpu, profile.serving, profile.timing
    util = s.gpu_memory_utilization if o.gpu_memory_utilization is None else o.gpu_memory_utilization
    if not 0 < util <= 1:
        raise UserError(f"--gpu-memory-utilization {util} is out of range", "use a fraction in (0, 1]")
    block_size = o.block_size or s.block_size
    if o.block_size is not None and o.block_size not in (1, 8, 16, 32, 64, 128, 256):
        raise UserError(f"--block-size {o.block_size} is not supported", "use 8, 16, 32, 64 or 128")
    tp = g.count
    # weights
    qname = (o.quantization or "").lower() or None
    if qname in (None, "none", "auto"):
        bpw, qkind = float(m.dtype_bytes), "none"
    elif qname in QUANTIZATIONS:
        bpw, qkind = QUANTIZATIONS[qname]
    else:
        raise UserError(
            f"--quantization {o.quantization!r} is not simulated",
            f"use one of: {', '.join(QUANTIZATIONS)} (or omit it)",
        )
    params = m.params_b * 1e9
    embed = m.vocab_size * m.hidden_size * (1 if m.tied_embeddings else 2)
    lm_head = m.vocab_size * m.hidden_size
    body = max(params - embed, 0.0)
    weight_bytes = body * bpw + embed * m.dtype_bytes
    read_bytes = body * bpw + lm_head * m.dtype_bytes
    # KV cache
    if o.kv_cache_dtype not in KV_CACHE_DTYPES:
        raise UserError(
            f"--kv-cache-dtype {o.kv_cache_dtype!r} is not supported",
            f"use one of: {', '.join(KV_CACHE_DTYPES)}",
        )
    kv_elem = m.dtype_bytes if o.kv_cache_dtype == "auto" else 1
    kv_per_token = 2 * m.layers * m.num_kv_heads * m.head_dim * kv_elem
    kv_per_token_gpu = kv_per_token / min(tp, m.num_kv_heads)
    avail = g.memory_gib * GIB * util - weight_bytes / tp - s.overhead_gib * GIB
    max_model_len = o.max_model_len or m.max_model_len
    if o.max_model_len is not None and not 16 <= o.max_model_len <= m.max_model_len:
        raise UserError(
            f"--max-model-len {o.max_model_len} is outside 16..{m.max_model_len} for {profile.name}",
            f"use at most the model's context length ({m.max_model_len})",
        )
    # time
    bw = g.bandwidth_gbs * 1e9 * t.bandwidth_efficiency
    flops = g.bf16_tflops * 1e12 * t.mfu
    if qkind == "fp8" and g.fp8_tflops > 0:
        flops = g.fp8_tflops * 1e12 * t.mfu
    elif qkind == "int8" and g.int8_tops > 0:
        flops = g.int8_tops * 1e12 * t.mfu
    elif qkind == "weight_only":
        flops *= 0.85  # dequantization in the GEMM kernels
    comm_fixed = comm_per_token = 0.0
    if tp > 1:
        comm_fixed = 2 * m.layers * t.tp_latency_us * 1e-6
        comm_per_token = (
            2 * m.layers * m.hidden_size * m.dtype_bytes * 2 * (tp - 1) / tp / (g.interconnect_gbs * 1e9)
        )
    return _Hardware(
        block_size=block_size,
        max_model_len=max_model_len,
        bpw=bpw,
        weight_bytes=weight_bytes,
        kv_per_token=kv_per_token,
        kv_per_token_gpu=kv_per_token_gpu,
        avail=avail,
        t_weights=read_bytes / tp / bw,
        a=2 * params / tp / flops,
        c=kv_per_token_gpu / bw,
        p=4 * m.layers * m.num_heads * m.head_dim / tp / flops,
        comm_fixed=comm_fixed,
        comm_per_token=comm_per_token,
    )


def _measured_blocks(measured: int, hw: _Hardware, ref: _Hardware) -> int:
    """A measured block count (at the recorded defaults ``ref``) under other options ``hw``: the token
    capacity scales with the memory left for the KV cache and with the KV bytes per token."""
    memory = hw.avail / ref.avail if hw.avail > 0 and ref.avail > 0 else 1.0
    tokens = measured * ref.block_size * memory * ref.kv_per_token_gpu / hw.kv_per_token_gpu
    return max(1, int(tokens // hw.block_size))


def derive(profile: Profile, options: EngineOptions | None = None) -> tuple[EngineConfig, Derived]:
    """The engine numbers for ``profile`` under ``options`` (raises UserError when it cannot serve)."""
    o = options or EngineOptions()
    s, t = profile.serving, profile.timing
    where = f"profile {profile.name}"
    hw = _hardware(profile, o)
    fitted = t.fitted
    ref = _hardware(profile, EngineOptions()) if fitted is not None or s.num_gpu_blocks else hw
    tp = profile.gpu.count
    block_size = hw.block_size
    max_model_len = hw.max_model_len
    if o.num_gpu_blocks_override is not None:
        if o.num_gpu_blocks_override < 1:
            raise UserError("--num-gpu-blocks-override must be >= 1", "e.g. 2048")
        num_blocks = o.num_gpu_blocks_override
    elif s.num_gpu_blocks is not None:
        num_blocks = _measured_blocks(s.num_gpu_blocks, hw, ref)
    else:
        if hw.avail <= 0:
            util = s.gpu_memory_utilization if o.gpu_memory_utilization is None else o.gpu_memory_utilization
            raise UserError(
                f"{where}: the weights ({hw.weight_bytes / tp / GIB:.1f} GiB per GPU) and overhead "
                f"({s.overhead_gib} GiB) do not fit in {profile.gpu.memory_gib * util:.1f} GiB "
                f"({profile.gpu.memory_gib} GiB x gpu_memory_utilization {util})",
                "raise --gpu-memory-utilization, quantize (--quantization awq) or use a larger profile",
            )
        num_blocks = int(hw.avail // hw.kv_per_token_gpu) // block_size
    if num_blocks * block_size < max_model_len:
        raise UserError(
            f"{where}: the KV cache holds {num_blocks * block_size} tokens, fewer than max_model_len "
            f"{max_model_len}, so one long request could never be served",
            "lower --max-model-len, or raise --gpu-memory-utilization / --num-gpu-blocks-override",
        )
    # time: hardware-derived terms, or the fitted ones (scaled by what the options change)
    t0, beta, admit = t.t0_ms * 1e-3, t.beta_us * 1e-6, 0.0
    t_weights, a, c, p = hw.t_weights, hw.a, hw.c, hw.p
    comm_fixed, comm_per_token = hw.comm_fixed, hw.comm_per_token
    if fitted is not None:
        comm_fixed = comm_per_token = 0.0  # measured steps include the all-reduces
        if fitted.t0_ms is not None:
            t0 = fitted.t0_ms * 1e-3
        if fitted.per_seq_us is not None:
            beta = fitted.per_seq_us * 1e-6
        if fitted.admit_delay_ms is not None:
            admit = fitted.admit_delay_ms * 1e-3
        if fitted.weights_ms is not None:
            t_weights = fitted.weights_ms * 1e-3 * hw.t_weights / ref.t_weights
        if fitted.per_token_us is not None:
            a = fitted.per_token_us * 1e-6 * hw.a / ref.a
        if fitted.per_context_token_ns is not None:
            c = fitted.per_context_token_ns * 1e-9 * hw.c / ref.c
        if fitted.per_pair_ps is not None:
            p = fitted.per_pair_ps * 1e-12 * hw.p / ref.p
    spec = o.speculative
    spec_kw: dict[str, Any] = {}
    if spec is not None:
        _, frac, overhead = SPEC_METHODS[spec.method]
        spec_kw = {
            "spec_tokens": spec.num_speculative_tokens,
            "spec_acceptance": spec.acceptance_rate,
            "spec_method": spec.method,
            "draft_fraction": frac,
            "draft_overhead": overhead,
        }
    max_num_seqs = o.max_num_seqs or s.max_num_seqs
    max_batched = o.max_num_batched_tokens or s.max_num_batched_tokens
    if o.max_num_seqs is not None and o.max_num_seqs < 1:
        raise UserError("--max-num-seqs must be >= 1", "e.g. 256")
    if o.max_num_batched_tokens is not None and o.max_num_batched_tokens < 1:
        raise UserError("--max-num-batched-tokens must be >= 1", "e.g. 2048")
    cfg = EngineConfig(
        num_gpu_blocks=num_blocks,
        block_size=block_size,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_batched,
        max_model_len=max_model_len,
        enable_prefix_caching=s.enable_prefix_caching
        if o.enable_prefix_caching is None
        else o.enable_prefix_caching,
        watermark=s.watermark,
        t0=t0,
        beta=beta,
        t_weights=t_weights,
        a=a,
        c=c,
        p=p,
        admit_delay=admit,
        comm_fixed=comm_fixed,
        comm_per_token=comm_per_token,
        seed=o.seed,
        prompt_token_scale=profile.model.prompt_token_scale or 1.0,
        **spec_kw,
    )
    derived = Derived(
        weight_gib_per_gpu=hw.weight_bytes / tp / GIB,
        kv_bytes_per_token=hw.kv_per_token,
        kv_tokens=num_blocks * block_size,
        num_gpu_blocks=num_blocks,
        extra={"bytes_per_weight": hw.bpw, "kv_gib": num_blocks * block_size * hw.kv_per_token_gpu / GIB},
    )
    return cfg, derived


def build_engine_config(profile: Profile, options: EngineOptions | None = None) -> EngineConfig:
    """The :class:`EngineConfig` for ``profile`` with vLLM-style ``options`` applied."""
    return derive(profile, options)[0]
