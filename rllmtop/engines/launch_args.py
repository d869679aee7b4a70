"""A scenario's engine section -> the exact command line and environment that launch an engine.

One function, :func:`build_command`, maps an :class:`~rllmtop.scenario.EngineSpec` (kind ``sim``, ``vllm``
or ``sglang``) to a :class:`LaunchPlan`: argv, environment overrides, the base URL to probe, and a copy of
the command with secrets removed (the only form that may reach logs and recordings). Named toggles are
validated here; a value an engine does not know raises :class:`~rllmtop.errors.UserError` naming the
``engine.<field>`` and the allowed values, with raw ``args`` as the escape hatch for engine versions that
know more than this table.
"""

from __future__ import annotations

import json
import math
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rllmtop.errors import UserError
from rllmtop.redact import redact_argv, redact_env, secret_values
from rllmtop.scenario import EngineSpec

__all__ = [
    "FAULT_FLAGS",
    "LAUNCHABLE_KINDS",
    "LaunchPlan",
    "build_command",
    "choose_port",
    "pick_free_port",
]

LAUNCHABLE_KINDS = ("sim", "vllm", "sglang")


# EngineSpec.faults key -> simulator flag
FAULT_FLAGS: dict[str, str] = {
    "error_rate": "--fault-error-rate",
    "rate_limit_rate": "--fault-rate-limit-rate",
    "stall_rate": "--fault-stall-rate",
    "stall_seconds": "--fault-stall-seconds",
    "drop_rate": "--fault-drop-rate",
    "exit_after": "--exit-after",
}
_FAULT_PROBABILITIES = frozenset({"error_rate", "rate_limit_rate", "stall_rate", "drop_rate"})

# What each engine prints once it listens (used for progress and, with port 0, to learn the port).
_READY_LINES = {
    "sim": r"Starting rllmtop sim server on (?P<url>https?://\S+)",
    "vllm": r"Starting vLLM (?:API )?server(?: \d+)? on (?P<url>https?://\S+)",
    "sglang": r"The server is fired up and ready to roll!",
}

_QUANTIZATION = {
    # common weight-quantization methods (both engines accept these names)
    "awq",
    "awq_marlin",
    "gptq",
    "gptq_marlin",
    "fp8",
    "bitsandbytes",
    "gguf",
    "compressed-tensors",
    "marlin",
    "modelopt",
    "modelopt_fp4",
    "mxfp4",
    "experts_int8",
    "moe_wna16",
    "torchao",
    "w8a8_int8",
    "w8a8_fp8",
}
_KV_CACHE_DTYPE = {
    "vllm": {"auto": "auto", "fp8": "fp8", "fp8_e4m3": "fp8_e4m3", "fp8_e5m2": "fp8_e5m2"},
    "sim": {"auto": "auto", "fp8": "fp8", "fp8_e4m3": "fp8_e4m3", "fp8_e5m2": "fp8_e5m2"},
    # SGLang has no plain "fp8": its default fp8 KV format is e4m3
    "sglang": {"auto": "auto", "fp8": "fp8_e4m3", "fp8_e4m3": "fp8_e4m3", "fp8_e5m2": "fp8_e5m2"},
}
# vLLM reasoning-parser name -> SGLang's spelling
_REASONING_PARSERS: dict[str, str] = {
    "deepseek_r1": "deepseek-r1",
    "deepseek_v3": "deepseek-v3",
    "qwen3": "qwen3",
    "glm45": "glm45",
    "openai_gptoss": "gpt-oss",
    "kimi_k2": "kimi_k2",
    "mistral": "mistral",
    "step3": "step3",
    "minimax_m2": "minimax",
    "granite": "",  # vLLM only
    "hunyuan_a13b": "",
    "ernie45": "",
    "seed_oss": "",
}
_SGLANG_PARSER_ALIASES = {v: k for k, v in _REASONING_PARSERS.items() if v}
# scenario speculative method -> SGLang --speculative-algorithm
_SPEC_METHODS: dict[str, str] = {
    "ngram": "NGRAM",
    "draft_model": "STANDALONE",
    "eagle": "EAGLE",
    "eagle3": "EAGLE3",
    "mtp": "NEXTN",
    "suffix": "",  # vLLM only
}
_SPEC_NEEDS_DRAFT = frozenset({"draft_model", "eagle", "eagle3"})

# Flags whose value is a secret, and environment names that hold one.


@dataclass(frozen=True)
class LaunchPlan:
    """Everything needed to start one engine process.

    ``argv`` and ``env`` hold secrets as given; only ``redacted_argv`` / ``redacted_env`` may be logged
    or recorded. ``env`` holds overrides only: the launcher merges them over ``os.environ``.
    ``port`` 0 means the engine picks its own port and ``base_url`` is learned from its ready line.
    ``repr()`` shows only the redacted forms.
    """

    kind: str
    argv: tuple[str, ...] = field(repr=False)  # may hold secrets: never shown by repr()
    env: Mapping[str, str] = field(repr=False)
    host: str
    port: int
    base_url: str
    redacted_argv: tuple[str, ...]
    redacted_env: tuple[tuple[str, str], ...] = ()
    model: str | None = None
    served_model_name: str | None = None
    ready_pattern: str | None = None  # regex for the engine's "listening" log line (group ``url`` if any)
    secrets: tuple[str, ...] = field(default=(), repr=False)  # values to scrub from engine log lines
    api_key: str | None = field(default=None, repr=False)  # the engine's --api-key, for rllmtop's own probes
    nice: int = 0  # CPU priority the guard gives the engine's session (0: unchanged)


def build_command(
    spec: EngineSpec,
    *,
    seed: int,
    port: int,
    model: str | None = None,
    extra_args: Sequence[str] = (),
) -> LaunchPlan:
    """Map ``spec`` to the command that launches it.

    ``model`` overrides ``spec.model``; ``extra_args`` (e.g. from ``rllmtop launch ... -- ARGS``) go last,
    after ``spec.args``, so they win for engines whose parser keeps the last value. ``port`` 0 is only
    allowed for the simulator (it reports the port it bound).
    """
    kind = spec.kind
    if kind not in LAUNCHABLE_KINDS:
        raise UserError(
            f"engine.kind = {kind!r} cannot be launched",
            f"use one of {', '.join(LAUNCHABLE_KINDS)} (kind = 'url' attaches to a running server)",
        )
    _check_int("port", port, low=0, high=65535)
    _check_int("nice", spec.nice, low=0, high=19)
    if port == 0 and kind != "sim":
        raise UserError(
            f"engine.port = 0: {kind} cannot report the port it picks",
            "leave engine.port unset (a free port is chosen) or give a port number",
        )
    host = spec.host or "127.0.0.1"
    model = model if model is not None else spec.model
    if kind in ("vllm", "sglang") and not model:
        raise UserError(
            f"engine.model is missing: launching {kind} needs a model path or name",
            f"set `model = ...` in the [engine] section or pass it: `rllmtop launch {kind} MODEL`",
        )
    if kind == "sim":
        argv = _sim_argv(spec, seed=seed, host=host, port=port, model=model)
    elif kind == "vllm":
        argv = _vllm_argv(spec, seed=seed, host=host, port=port, model=model or "")
    else:
        argv = _sglang_argv(spec, seed=seed, host=host, port=port, model=model or "")
    argv += [str(a) for a in spec.args]
    argv += [str(a) for a in extra_args]
    env = {str(k): str(v) for k, v in spec.env.items()}
    redacted = redact_argv(argv)
    env_redacted = redact_env(env)
    secrets = tuple(sorted({s for s in secret_values(argv, env) if len(s) >= 4}, key=len, reverse=True))
    api_key = _flag_value(argv, "--api-key")
    if api_key is None and kind == "vllm":
        api_key = env.get("VLLM_API_KEY")
    return LaunchPlan(
        kind=kind,
        argv=tuple(argv),
        env=env,
        host=host,
        port=port,
        base_url=_base_url(host, port) if port else "",
        redacted_argv=tuple(redacted),
        redacted_env=env_redacted,
        model=model,
        served_model_name=spec.served_model_name,
        ready_pattern=_READY_LINES[kind],
        secrets=secrets,
        api_key=api_key or None,
        nice=spec.nice,
    )


# ---------------------------------------------------------------------------------------------- ports


def pick_free_port(host: str = "127.0.0.1") -> int:
    """A port that was free on ``host`` a moment ago.

    Racy by nature: another process may take it before the engine binds it. The launcher then sees the
    engine exit early ("address already in use") and reports it; retrying with a new port is the fix.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    bind_host = _connect_host(host)
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((bind_host, 0))
        return int(s.getsockname()[1])


def choose_port(spec: EngineSpec) -> int:
    """The port to pass to :func:`build_command`: the spec's, else 0 for the simulator (it reports the
    port it bound, no race), else a free port picked now (see :func:`pick_free_port`)."""
    if spec.port is not None:
        return spec.port
    if spec.kind == "sim":
        return 0
    return pick_free_port(spec.host or "127.0.0.1")


def _connect_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "::1"
    return host.strip("[]")


def _base_url(host: str, port: int) -> str:
    h = _connect_host(host)
    if ":" in h:
        h = f"[{h}]"
    return f"http://{h}:{port}"


# ---------------------------------------------------------------------------------------------- engines


def _sim_argv(spec: EngineSpec, *, seed: int, host: str, port: int, model: str | None) -> list[str]:
    # -P: the working directory is not put on the child's path (a folder named `rllmtop` there would shadow
    # the package: the parent of a clone with an editable install)
    argv = [sys.executable, "-P", "-m", "rllmtop.sim", "serve", "--host", host, "--port", str(port)]
    argv += ["--seed", str(int(seed))]
    if spec.profile:
        argv += ["--profile", spec.profile]
    speed = _check_float("speed", spec.speed, low=0.0, low_open=True)
    argv += ["--speed", _num(speed)]
    if spec.reasoning_field not in ("reasoning", "reasoning_content"):
        raise UserError(
            f"engine.reasoning_field = {spec.reasoning_field!r} is not a known delta field",
            "use 'reasoning' (vLLM >= 0.16) or 'reasoning_content' (SGLang, vLLM <= 0.11)",
        )
    argv += ["--reasoning-field", spec.reasoning_field]
    name = spec.served_model_name or model
    if name:
        argv += ["--served-model-name", name]
    argv += _vllm_toggles(spec, kind="sim")
    for key, value in spec.faults.items():
        flag = FAULT_FLAGS.get(key)
        if flag is None:
            raise UserError(
                f"engine.faults.{key} is not a known fault",
                f"use one of {', '.join(sorted(FAULT_FLAGS))}",
            )
        if key in _FAULT_PROBABILITIES:
            v = _check_float(f"faults.{key}", value, low=0.0, high=1.0)
        elif key == "exit_after":
            v = _check_float(f"faults.{key}", value, low=0.0)
        else:
            v = _check_float(f"faults.{key}", value, low=0.0)
        argv += [flag, _num(v)]
    return argv


def _vllm_argv(spec: EngineSpec, *, seed: int, host: str, port: int, model: str) -> list[str]:
    argv = _entry_command(spec.command, default=("vllm", "serve"), model=model, model_flag="--model")
    argv += ["--host", host, "--port", str(port), "--seed", str(int(seed))]
    if spec.served_model_name:
        argv += ["--served-model-name", spec.served_model_name]
    argv += _vllm_toggles(spec, kind="vllm")
    return argv


def _vllm_toggles(spec: EngineSpec, *, kind: str) -> list[str]:
    """The vLLM-named flags (the simulator accepts the same names)."""
    out: list[str] = []
    if spec.quantization is not None:
        if kind == "sim":  # the simulator knows its own table (bytes per weight) and says what it accepts
            if not isinstance(spec.quantization, str) or not spec.quantization:
                raise UserError(
                    f"engine.quantization = {spec.quantization!r} is not a name", "e.g. 'awq' or 'fp8'"
                )
            out += ["--quantization", spec.quantization]
        else:
            out += ["--quantization", _choice("quantization", spec.quantization, _QUANTIZATION, kind)]
    if spec.kv_cache_dtype is not None:
        out += ["--kv-cache-dtype", _mapped("kv_cache_dtype", spec.kv_cache_dtype, _KV_CACHE_DTYPE[kind])]
    if spec.prefix_caching is not None:
        out.append(
            "--enable-prefix-caching"
            if _bool("prefix_caching", spec.prefix_caching)
            else "--no-enable-prefix-caching"
        )
    if spec.speculative is not None:
        out += ["--speculative-config", _vllm_speculative(spec, kind=kind)]
    if spec.max_num_seqs is not None:
        out += ["--max-num-seqs", str(_check_int("max_num_seqs", spec.max_num_seqs, low=1))]
    if spec.max_num_batched_tokens is not None:
        n = _check_int("max_num_batched_tokens", spec.max_num_batched_tokens, low=1)
        out += ["--max-num-batched-tokens", str(n)]
    if spec.gpu_memory_utilization is not None:
        u = _check_float(
            "gpu_memory_utilization", spec.gpu_memory_utilization, low=0.0, high=1.0, low_open=True
        )
        out += ["--gpu-memory-utilization", _num(u)]
    if spec.max_model_len is not None:
        out += ["--max-model-len", str(_check_int("max_model_len", spec.max_model_len, low=1))]
    if spec.num_gpu_blocks_override is not None:
        n = _check_int("num_gpu_blocks_override", spec.num_gpu_blocks_override, low=1)
        out += ["--num-gpu-blocks-override", str(n)]
    if spec.reasoning_parser is not None:
        out += ["--reasoning-parser", _reasoning_parser(spec.reasoning_parser, kind)]
    return out


def _vllm_speculative(spec: EngineSpec, *, kind: str) -> str:
    sc = spec.speculative
    assert sc is not None
    method = _choice("speculative.method", sc.method, set(_SPEC_METHODS), kind)
    n = _check_int("speculative.num_speculative_tokens", sc.num_speculative_tokens, low=1)
    cfg: dict[str, object] = {"method": method, "num_speculative_tokens": n}
    if sc.draft_model:
        cfg["model"] = sc.draft_model
    elif method in _SPEC_NEEDS_DRAFT and kind != "sim":
        raise UserError(
            f"engine.speculative.draft_model is missing: method {method!r} needs a draft model",
            "set speculative.draft_model to the draft/EAGLE head path, or use method 'ngram'",
        )
    if sc.acceptance_rate is not None:
        a = _check_float("speculative.acceptance_rate", sc.acceptance_rate, low=0.0, high=1.0)
        if kind == "sim":  # a modelling knob: real engines measure it, they do not take it
            cfg["acceptance_rate"] = a
    return json.dumps(cfg, separators=(",", ":"), sort_keys=True)


def _sglang_argv(spec: EngineSpec, *, seed: int, host: str, port: int, model: str) -> list[str]:
    argv = _entry_command(
        spec.command,
        default=(sys.executable, "-m", "sglang.launch_server"),
        model=model,
        model_flag="--model-path",
        positional=False,
    )
    argv += ["--host", host, "--port", str(port), "--random-seed", str(int(seed)), "--enable-metrics"]
    if spec.served_model_name:
        argv += ["--served-model-name", spec.served_model_name]
    if spec.quantization is not None:
        argv += ["--quantization", _choice("quantization", spec.quantization, _QUANTIZATION, "sglang")]
    if spec.kv_cache_dtype is not None:
        argv += [
            "--kv-cache-dtype",
            _mapped("kv_cache_dtype", spec.kv_cache_dtype, _KV_CACHE_DTYPE["sglang"]),
        ]
    if spec.prefix_caching is not None and not _bool("prefix_caching", spec.prefix_caching):
        argv.append("--disable-radix-cache")  # on is SGLang's default
    if spec.speculative is not None:
        argv += _sglang_speculative(spec)
    if spec.max_num_seqs is not None:
        argv += ["--max-running-requests", str(_check_int("max_num_seqs", spec.max_num_seqs, low=1))]
    if spec.max_num_batched_tokens is not None:
        # SGLang's per-step prefill budget is the closest match to vLLM's batched-token budget
        n = _check_int("max_num_batched_tokens", spec.max_num_batched_tokens, low=1)
        argv += ["--chunked-prefill-size", str(n)]
    if spec.gpu_memory_utilization is not None:
        u = _check_float(
            "gpu_memory_utilization", spec.gpu_memory_utilization, low=0.0, high=1.0, low_open=True
        )
        argv += ["--mem-fraction-static", _num(u)]
    if spec.max_model_len is not None:
        argv += ["--context-length", str(_check_int("max_model_len", spec.max_model_len, low=1))]
    if spec.num_gpu_blocks_override is not None:
        raise UserError(
            "engine.num_gpu_blocks_override has no SGLang equivalent",
            "remove it, or cap the KV pool with args = ['--max-total-tokens', 'N']",
        )
    if spec.reasoning_parser is not None:
        argv += ["--reasoning-parser", _reasoning_parser(spec.reasoning_parser, "sglang")]
    return argv


def _sglang_speculative(spec: EngineSpec) -> list[str]:
    sc = spec.speculative
    assert sc is not None
    method = _choice("speculative.method", sc.method, set(_SPEC_METHODS), "sglang")
    algo = _SPEC_METHODS[method]
    if not algo:
        raise UserError(
            f"engine.speculative.method = {method!r} has no SGLang equivalent",
            f"use one of {', '.join(k for k, v in _SPEC_METHODS.items() if v)}",
        )
    n = _check_int("speculative.num_speculative_tokens", sc.num_speculative_tokens, low=1)
    out = ["--speculative-algorithm", algo]
    if sc.draft_model:
        out += ["--speculative-draft-model-path", sc.draft_model]
    elif method in _SPEC_NEEDS_DRAFT:
        raise UserError(
            f"engine.speculative.draft_model is missing: method {method!r} needs a draft model",
            "set speculative.draft_model to the draft/EAGLE head path, or use method 'ngram'",
        )
    if algo == "NGRAM":
        out += ["--speculative-num-draft-tokens", str(n)]
    else:  # a chain of n draft steps: top-1 at each, n + 1 tokens verified
        out += ["--speculative-num-steps", str(n), "--speculative-eagle-topk", "1"]
        out += ["--speculative-num-draft-tokens", str(n + 1)]
    return out


def _entry_command(
    command: Sequence[str],
    *,
    default: tuple[str, ...],
    model: str,
    model_flag: str,
    positional: bool = True,
) -> list[str]:
    """The engine's entry command with the model in it.

    A custom command may hold ``{model}`` where the model goes; otherwise a command ending in ``serve``
    takes the model as a positional argument (``vllm serve MODEL``) and any other gets ``--model MODEL``
    (``--model-path`` for SGLang).
    """
    cmd = [str(c) for c in command] if command else list(default)
    if not cmd or not cmd[0]:
        raise UserError("engine.command is empty", "give the engine's entry command, e.g. ['vllm', 'serve']")
    if any("{model}" in c for c in cmd):
        return [c.replace("{model}", model) for c in cmd]
    if positional and cmd[-1] == "serve":
        return [*cmd, model]
    return [*cmd, model_flag, model]


# ---------------------------------------------------------------------------------------------- validation


def _choice(name: str, value: object, allowed: set[str], kind: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise UserError(
            f"engine.{name} = {value!r} is not a value rllmtop knows for {kind}",
            f"use one of {', '.join(sorted(allowed))}, or pass the raw flag in engine.args "
            "if your engine version supports it",
        )
    return value


def _mapped(name: str, value: object, table: Mapping[str, str]) -> str:
    if not isinstance(value, str) or value not in table:
        raise UserError(
            f"engine.{name} = {value!r} is not allowed",
            f"use one of {', '.join(table)}",
        )
    return table[value]


def _reasoning_parser(value: object, kind: str) -> str:
    if kind == "sim" and value == "none":  # the simulator: reasoning inline in content as <think>...</think>
        return "none"
    if isinstance(value, str):
        vllm_name = _SGLANG_PARSER_ALIASES.get(value, value)  # accept SGLang's spelling too
        if vllm_name in _REASONING_PARSERS:
            if kind != "sglang":
                return vllm_name
            if _REASONING_PARSERS[vllm_name]:
                return _REASONING_PARSERS[vllm_name]
    allowed = [k for k, v in _REASONING_PARSERS.items() if v or kind != "sglang"]
    raise UserError(
        f"engine.reasoning_parser = {value!r} is not a reasoning parser rllmtop knows for {kind}",
        f"use one of {', '.join(allowed)} (vLLM spelling), or pass --reasoning-parser in engine.args",
    )


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"engine.{name} = {value!r} is not true or false", f"write {name} = true or false")
    return value


def _check_int(name: str, value: object, *, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"engine.{name} = {value!r} is not a whole number", f"give {name} as an integer")
    if (low is not None and value < low) or (high is not None and value > high):
        rng = f"at least {low}" if high is None else f"between {low} and {high}"
        raise UserError(f"engine.{name} = {value} is out of range", f"give {name} {rng}")
    return value


def _check_float(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UserError(f"engine.{name} = {value!r} is not a finite number", f"give {name} as a number")
    v = float(value)
    too_low = low is not None and (v <= low if low_open else v < low)
    too_high = high is not None and v > high
    if too_low or too_high:
        lo = "" if low is None else (f"> {low:g}" if low_open else f">= {low:g}")
        hi = "" if high is None else f"<= {high:g}"
        raise UserError(
            f"engine.{name} = {v:g} is out of range", f"give {name} {' and '.join(p for p in (lo, hi) if p)}"
        )
    return v


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The last value given for ``flag`` (``--flag V`` or ``--flag=V``), else None."""
    found: str | None = None
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            found = argv[i + 1]
        elif a.startswith(flag + "="):
            found = a[len(flag) + 1 :]
    return found
