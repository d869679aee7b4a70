"""EngineSpec -> argv/env for the simulator, vLLM and SGLang; validation; secrets never leak."""

from __future__ import annotations

import json
import socket
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rllmtop.engines.launch_args import (
    LaunchPlan,
    build_command,
    choose_port,
    pick_free_port,
)
from rllmtop.errors import UserError
from rllmtop.redact import redact_argv, redact_env
from rllmtop.scenario import EngineSpec, SpeculativeConfig

# what the simulator's `serve` accepts (helper A's CLI); a flag outside this set would make it exit
SIM_FLAGS = {
    "--host",
    "--port",
    "--served-model-name",
    "--max-num-seqs",
    "--max-num-batched-tokens",
    "--gpu-memory-utilization",
    "--kv-cache-dtype",
    "--enable-prefix-caching",
    "--no-enable-prefix-caching",
    "--speculative-config",
    "--quantization",
    "--block-size",
    "--num-gpu-blocks-override",
    "--max-model-len",
    "--reasoning-parser",
    "--profile",
    "--profile-file",
    "--speed",
    "--seed",
    "--reasoning-field",
    "--fault-error-rate",
    "--fault-rate-limit-rate",
    "--fault-stall-rate",
    "--fault-stall-seconds",
    "--fault-drop-rate",
    "--exit-after",
}

ALL_TOGGLES = {
    "quantization": "awq",
    "kv_cache_dtype": "fp8",
    "prefix_caching": False,
    "max_num_seqs": 64,
    "max_num_batched_tokens": 8192,
    "gpu_memory_utilization": 0.85,
    "max_model_len": 4096,
    "reasoning_parser": "deepseek_r1",
}


def flag_values(argv: tuple[str, ...]) -> dict[str, str | None]:
    """--flag value pairs (value None for a bare switch)."""
    out: dict[str, str | None] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--"):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if nxt is not None and not nxt.startswith("--"):
                out[a] = nxt
                i += 2
                continue
            out[a] = None
        i += 1
    return out


# ---------------------------------------------------------------------------------------------- simulator


def test_sim_command_carries_toggles_faults_and_sim_knobs() -> None:
    spec = EngineSpec(
        kind="sim",
        profile="rllm-14b",
        speed=20.0,
        reasoning_field="reasoning_content",
        served_model_name="sim-14b",
        speculative=SpeculativeConfig("ngram", 4, acceptance_rate=0.7),
        faults={"error_rate": 0.05, "stall_seconds": 2.5, "exit_after": 30},
        num_gpu_blocks_override=100,
        **ALL_TOGGLES,  # type: ignore[arg-type]
    )
    plan = build_command(spec, seed=7, port=0)
    assert plan.argv[:5] == (sys.executable, "-P", "-m", "rllmtop.sim", "serve")  # -P: cwd not on its path
    flags = flag_values(plan.argv)
    assert set(flags) <= SIM_FLAGS
    assert flags["--port"] == "0" and plan.base_url == "" and plan.port == 0
    assert flags["--seed"] == "7"
    assert flags["--profile"] == "rllm-14b"
    assert flags["--speed"] == "20"
    assert flags["--reasoning-field"] == "reasoning_content"
    assert flags["--served-model-name"] == "sim-14b"
    assert flags["--kv-cache-dtype"] == "fp8"
    assert "--no-enable-prefix-caching" in flags
    assert flags["--max-num-seqs"] == "64"
    assert flags["--gpu-memory-utilization"] == "0.85"
    assert flags["--num-gpu-blocks-override"] == "100"
    assert flags["--fault-error-rate"] == "0.05"
    assert flags["--fault-stall-seconds"] == "2.5"
    assert flags["--exit-after"] == "30"
    spec_cfg = json.loads(flags["--speculative-config"] or "")
    assert spec_cfg == {"method": "ngram", "num_speculative_tokens": 4, "acceptance_rate": 0.7}
    assert plan.ready_pattern is not None and "Starting rllmtop sim server on" in plan.ready_pattern


def test_sim_model_becomes_served_name_and_fixed_port_gives_url() -> None:
    plan = build_command(EngineSpec(kind="sim"), seed=0, port=8123, model="my-model")
    flags = flag_values(plan.argv)
    assert flags["--served-model-name"] == "my-model"
    assert plan.base_url == "http://127.0.0.1:8123"


@pytest.mark.parametrize(
    ("faults", "field"),
    [
        ({"explode_rate": 0.1}, "engine.faults.explode_rate"),
        ({"error_rate": 1.5}, "engine.faults.error_rate"),
        ({"drop_rate": -0.1}, "engine.faults.drop_rate"),
        ({"stall_seconds": float("nan")}, "engine.faults.stall_seconds"),
        ({"exit_after": "soon"}, "engine.faults.exit_after"),
    ],
)
def test_sim_bad_faults_name_the_field(faults: dict[str, object], field: str) -> None:
    with pytest.raises(UserError) as info:
        build_command(EngineSpec(kind="sim", faults=faults), seed=0, port=0)  # type: ignore[arg-type]
    assert field in info.value.what
    assert info.value.hint


def test_sim_passes_quantization_through_and_knows_parser_none() -> None:
    plan = build_command(EngineSpec(kind="sim", quantization="int8", reasoning_parser="none"), seed=0, port=0)
    flags = flag_values(plan.argv)
    assert flags["--quantization"] == "int8"  # the simulator's own table judges it
    assert flags["--reasoning-parser"] == "none"
    with pytest.raises(UserError, match=r"engine\.reasoning_parser = 'none'"):
        build_command(EngineSpec(kind="vllm", model="m", reasoning_parser="none"), seed=0, port=1)
    with pytest.raises(UserError, match=r"engine\.quantization"):
        build_command(EngineSpec(kind="sim", quantization=""), seed=0, port=0)


def test_sim_speed_and_reasoning_field_are_checked() -> None:
    with pytest.raises(UserError, match=r"engine\.speed"):
        build_command(EngineSpec(kind="sim", speed=0), seed=0, port=0)
    with pytest.raises(UserError, match=r"engine\.reasoning_field"):
        build_command(EngineSpec(kind="sim", reasoning_field="thoughts"), seed=0, port=0)


# ---------------------------------------------------------------------------------------------- vLLM


def test_vllm_default_command_and_toggles() -> None:
    spec = EngineSpec(
        kind="vllm",
        model="Qwen/QwQ-32B",
        served_model_name="qwq",
        speculative=SpeculativeConfig("eagle3", 3, draft_model="some/eagle3-head", acceptance_rate=0.6),
        num_gpu_blocks_override=24,
        args=("--enforce-eager",),
        env={"VLLM_CPU_KVCACHE_SPACE": "1"},
        **ALL_TOGGLES,  # type: ignore[arg-type]
    )
    plan = build_command(spec, seed=3, port=8000, extra_args=["--max-num-seqs", "8"])
    assert plan.argv[:3] == ("vllm", "serve", "Qwen/QwQ-32B")
    flags = flag_values(plan.argv)
    assert flags["--host"] == "127.0.0.1" and flags["--port"] == "8000" and flags["--seed"] == "3"
    assert flags["--served-model-name"] == "qwq"
    assert flags["--quantization"] == "awq"
    assert flags["--kv-cache-dtype"] == "fp8"
    assert "--no-enable-prefix-caching" in flags and "--enable-prefix-caching" not in flags
    assert flags["--max-num-batched-tokens"] == "8192"
    assert flags["--gpu-memory-utilization"] == "0.85"
    assert flags["--max-model-len"] == "4096"
    assert flags["--num-gpu-blocks-override"] == "24"
    assert flags["--reasoning-parser"] == "deepseek_r1"
    cfg = json.loads(flags["--speculative-config"] or "")
    # acceptance_rate is a simulator knob: a real engine must not be handed it
    assert cfg == {"method": "eagle3", "num_speculative_tokens": 3, "model": "some/eagle3-head"}
    # raw args come after the toggles, command-line extras last (so they win)
    assert plan.argv[-3:] == ("--enforce-eager", "--max-num-seqs", "8")
    assert plan.env == {"VLLM_CPU_KVCACHE_SPACE": "1"}
    assert plan.base_url == "http://127.0.0.1:8000"
    assert plan.model == "Qwen/QwQ-32B"


def test_vllm_prefix_caching_on_and_defaults_left_alone() -> None:
    on = build_command(EngineSpec(kind="vllm", model="m", prefix_caching=True), seed=0, port=1)
    assert "--enable-prefix-caching" in on.argv
    bare = build_command(EngineSpec(kind="vllm", model="m"), seed=0, port=1)
    assert bare.argv == ("vllm", "serve", "m", "--host", "127.0.0.1", "--port", "1", "--seed", "0")


@pytest.mark.parametrize(
    ("command", "expected_head"),
    [
        (
            ("python", "-m", "vllm.entrypoints.openai.api_server"),
            ("python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/m"),
        ),
        (("/venv/bin/vllm", "serve"), ("/venv/bin/vllm", "serve", "/m")),
        (("runner", "--model={model}", "--x"), ("runner", "--model=/m", "--x")),
    ],
)
def test_vllm_custom_entry_command(command: tuple[str, ...], expected_head: tuple[str, ...]) -> None:
    plan = build_command(EngineSpec(kind="vllm", model="/m", command=command), seed=0, port=9)
    assert plan.argv[: len(expected_head)] == expected_head
    assert plan.argv[len(expected_head)] == "--host"


def test_model_argument_overrides_spec() -> None:
    plan = build_command(EngineSpec(kind="vllm", model="a"), seed=0, port=9, model="b")
    assert plan.argv[2] == "b" and plan.model == "b"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kv_cache_dtype": "int4"}, "engine.kv_cache_dtype"),
        ({"quantization": "magic"}, "engine.quantization"),
        ({"reasoning_parser": "deepseek"}, "engine.reasoning_parser"),
        ({"max_num_seqs": 0}, "engine.max_num_seqs"),
        ({"max_num_seqs": True}, "engine.max_num_seqs"),
        ({"max_num_seqs": 2.5}, "engine.max_num_seqs"),
        ({"max_num_batched_tokens": -1}, "engine.max_num_batched_tokens"),
        ({"gpu_memory_utilization": 0.0}, "engine.gpu_memory_utilization"),
        ({"gpu_memory_utilization": 1.5}, "engine.gpu_memory_utilization"),
        ({"max_model_len": "4k"}, "engine.max_model_len"),
        ({"num_gpu_blocks_override": 0}, "engine.num_gpu_blocks_override"),
        ({"prefix_caching": "yes"}, "engine.prefix_caching"),
        ({"speculative": SpeculativeConfig("medusa", 2)}, "engine.speculative.method"),
        ({"speculative": SpeculativeConfig("ngram", 0)}, "engine.speculative.num_speculative_tokens"),
        ({"speculative": SpeculativeConfig("eagle", 2)}, "engine.speculative.draft_model"),
        (
            {"speculative": SpeculativeConfig("ngram", 2, acceptance_rate=2.0)},
            "engine.speculative.acceptance_rate",
        ),
        ({"command": ("",)}, "engine.command"),
    ],
)
def test_vllm_invalid_toggles_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(UserError) as info:
        build_command(EngineSpec(kind="vllm", model="m", **kwargs), seed=0, port=1)  # type: ignore[arg-type]
    assert field in info.value.what
    assert info.value.hint and "\n" not in info.value.what


def test_missing_model_unknown_kind_and_port_zero() -> None:
    with pytest.raises(UserError, match=r"engine\.model is missing"):
        build_command(EngineSpec(kind="vllm"), seed=0, port=1)
    with pytest.raises(UserError, match=r"engine\.kind = 'url' cannot be launched"):
        build_command(EngineSpec(kind="url", url="http://127.0.0.1:1"), seed=0, port=1)
    with pytest.raises(UserError, match=r"engine\.port = 0"):
        build_command(EngineSpec(kind="vllm", model="m"), seed=0, port=0)
    with pytest.raises(UserError, match=r"engine\.port"):
        build_command(EngineSpec(kind="vllm", model="m"), seed=0, port=70000)


def test_reasoning_parser_accepts_sglang_spelling_for_vllm() -> None:
    plan = build_command(EngineSpec(kind="vllm", model="m", reasoning_parser="deepseek-r1"), seed=0, port=1)
    assert flag_values(plan.argv)["--reasoning-parser"] == "deepseek_r1"


# ---------------------------------------------------------------------------------------------- SGLang


def test_sglang_command_maps_toggles_and_always_enables_metrics() -> None:
    spec = EngineSpec(
        kind="sglang",
        model="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        speculative=SpeculativeConfig("eagle", 3, draft_model="some/eagle-head"),
        **ALL_TOGGLES,  # type: ignore[arg-type]
    )
    plan = build_command(spec, seed=5, port=30000)
    assert plan.argv[:5] == (sys.executable, "-m", "sglang.launch_server", "--model-path", spec.model)
    flags = flag_values(plan.argv)
    assert "--enable-metrics" in flags
    assert flags["--random-seed"] == "5"
    assert flags["--quantization"] == "awq"
    assert flags["--kv-cache-dtype"] == "fp8_e4m3"  # SGLang has no bare "fp8"
    assert "--disable-radix-cache" in flags
    assert flags["--max-running-requests"] == "64"
    assert flags["--chunked-prefill-size"] == "8192"
    assert flags["--mem-fraction-static"] == "0.85"
    assert flags["--context-length"] == "4096"
    assert flags["--reasoning-parser"] == "deepseek-r1"
    assert flags["--speculative-algorithm"] == "EAGLE"
    assert flags["--speculative-draft-model-path"] == "some/eagle-head"
    assert flags["--speculative-num-steps"] == "3"
    assert flags["--speculative-eagle-topk"] == "1"
    assert flags["--speculative-num-draft-tokens"] == "4"
    assert not any(f.startswith("--max-num-seqs") or f == "--seed" for f in flags)
    assert "Starting" not in (plan.ready_pattern or "")


@pytest.mark.parametrize(
    ("vllm_name", "sglang_name"),
    [
        ("deepseek_r1", "deepseek-r1"),
        ("qwen3", "qwen3"),
        ("openai_gptoss", "gpt-oss"),
        ("deepseek_v3", "deepseek-v3"),
    ],
)
def test_sglang_reasoning_parser_names(vllm_name: str, sglang_name: str) -> None:
    plan = build_command(EngineSpec(kind="sglang", model="m", reasoning_parser=vllm_name), seed=0, port=1)
    assert flag_values(plan.argv)["--reasoning-parser"] == sglang_name


def test_sglang_ngram_prefix_caching_on_and_unsupported_toggles() -> None:
    plan = build_command(
        EngineSpec(kind="sglang", model="m", prefix_caching=True, speculative=SpeculativeConfig("ngram", 5)),
        seed=0,
        port=1,
    )
    flags = flag_values(plan.argv)
    assert "--disable-radix-cache" not in flags
    assert flags["--speculative-algorithm"] == "NGRAM" and flags["--speculative-num-draft-tokens"] == "5"
    with pytest.raises(UserError, match=r"engine\.num_gpu_blocks_override has no SGLang equivalent"):
        build_command(EngineSpec(kind="sglang", model="m", num_gpu_blocks_override=10), seed=0, port=1)
    with pytest.raises(UserError, match=r"engine\.speculative\.method = 'suffix' has no SGLang"):
        build_command(
            EngineSpec(kind="sglang", model="m", speculative=SpeculativeConfig("suffix", 2)), seed=0, port=1
        )
    with pytest.raises(UserError, match=r"engine\.reasoning_parser = 'granite'"):
        build_command(EngineSpec(kind="sglang", model="m", reasoning_parser="granite"), seed=0, port=1)
    with pytest.raises(UserError, match=r"engine\.kv_cache_dtype"):
        build_command(EngineSpec(kind="sglang", model="m", kv_cache_dtype="bf16x"), seed=0, port=1)


# ---------------------------------------------------------------------------------------------- secrets


def test_secrets_are_removed_from_argv_and_env() -> None:
    spec = EngineSpec(
        kind="vllm",
        model="m",
        args=(
            "--api-key",
            "sk-live-abcdef",
            "--hf-token=hf_secret_value",
            "--max-num-batched-tokens",
            "2048",
            "--download-dir",
            "https://user:hunter22@example.invalid/models",
        ),
        env={"OPENAI_API_KEY": "sk-env-123456", "HF_TOKEN": "hf_env_abcdef", "VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    plan = build_command(
        spec, seed=0, port=1, extra_args=["--middleware", "Authorization: Bearer tok-987654"]
    )
    shown = " ".join(plan.redacted_argv) + repr(plan.redacted_env)
    for secret in (
        "sk-live-abcdef",
        "hf_secret_value",
        "hunter22",
        "sk-env-123456",
        "hf_env_abcdef",
        "tok-987654",
    ):
        assert secret not in shown
        assert secret in plan.secrets
    assert "--api-key" in plan.redacted_argv and "--hf-token=***" in plan.redacted_argv
    assert "2048" in plan.redacted_argv  # tokens (plural) is not a token
    assert "https://user:***@example.invalid/models" in plan.redacted_argv
    assert "Authorization: Bearer ***" in plan.redacted_argv
    assert dict(plan.redacted_env) == {
        "HF_TOKEN": "***",
        "OPENAI_API_KEY": "***",
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    # the real values are still what the engine gets
    assert "sk-live-abcdef" in plan.argv and plan.env["HF_TOKEN"] == "hf_env_abcdef"
    assert "sk-live-abcdef" not in repr(plan)


@settings(max_examples=60, deadline=None)
@given(
    secret=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40).filter(
        lambda s: not s.startswith("-")
    ),
    flag=st.sampled_from(["--api-key", "--hf-token", "--token", "--openai-api-key", "--db-password"]),
    joined=st.booleans(),
)
def test_redaction_property(secret: str, flag: str, joined: bool) -> None:
    argv = [f"{flag}={secret}"] if joined else [flag, secret]
    red = redact_argv(["vllm", "serve", "m", *argv, "--port", "1"])
    assert red[:3] == ("vllm", "serve", "m") and red[-2:] == ("--port", "1")
    assert all(secret not in a.partition("=")[2] and a != secret for a in red[3:-2])
    env = redact_env({"MY_SERVICE_TOKEN": secret, "PLAIN": "x"})
    assert env == (("MY_SERVICE_TOKEN", "***"), ("PLAIN", "x"))


# ---------------------------------------------------------------------------------------------- ports


def test_ports_and_hosts() -> None:
    port = pick_free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # it really was free
    assert choose_port(EngineSpec(kind="sim")) == 0
    assert choose_port(EngineSpec(kind="vllm", port=8001)) == 8001
    assert 0 < choose_port(EngineSpec(kind="vllm")) < 65536
    p = build_command(EngineSpec(kind="vllm", model="m", host="0.0.0.0"), seed=0, port=8000)
    assert p.base_url == "http://127.0.0.1:8000" and flag_values(p.argv)["--host"] == "0.0.0.0"
    p6 = build_command(EngineSpec(kind="vllm", model="m", host="::"), seed=0, port=8000)
    assert p6.base_url == "http://[::1]:8000"
    assert isinstance(p6, LaunchPlan)
