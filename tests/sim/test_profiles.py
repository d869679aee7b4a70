"""Profiles: built-ins, user TOML files, and the engine numbers derived from them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rllmtop.errors import UserError
from rllmtop.sim.profiles import (
    GIB,
    EngineOptions,
    SpeculativeOptions,
    build_engine_config,
    builtin_profile_names,
    derive,
    load_profile,
    load_profile_file,
    parse_speculative_config,
)
from rllmtop.sim.virtual import Arrival, run_virtual

REQUIRED = {"rllm-7b", "llm-7b", "rllm-1.5b", "rllm-14b", "rllm-32b"}


def test_builtin_profiles_load_and_derive() -> None:
    names = builtin_profile_names()
    assert names[0] == "rllm-7b" and set(names) >= REQUIRED
    for name in names:
        prof = load_profile(name)
        cfg, _ = derive(prof)
        assert prof.name == name and prof.assumptions
        assert cfg.num_gpu_blocks * cfg.block_size >= cfg.max_model_len
        assert cfg.block_size == 16 and prof.serving.gpu_memory_utilization == 0.92
        assert 0 < cfg.t_weights < 0.1 and 0 < cfg.a < 1e-3 and 0 < cfg.c < 1e-6
    assert load_profile("llm-7b").kind == "plain" and not load_profile("llm-7b").outputs.reasons
    assert load_profile("rllm-32b").gpu.count == 2


def test_kv_capacity_follows_memory_arithmetic() -> None:
    prof = load_profile("rllm-7b")
    m, g, s = prof.model, prof.gpu, prof.serving
    embed = m.vocab_size * m.hidden_size * 2  # untied input embedding + lm_head
    weights = (m.params_b * 1e9 - embed) * 2 + embed * 2
    kv_per_token = 2 * m.layers * m.num_kv_heads * m.head_dim * 2
    free = g.memory_gib * GIB * s.gpu_memory_utilization - weights - s.overhead_gib * GIB
    cfg = build_engine_config(prof)
    assert cfg.num_gpu_blocks == int(free // kv_per_token) // 16
    # the weight-read time of an A100 at 80% of 1555 GB/s: ~11 ms for ~14 GB
    assert cfg.t_weights == pytest.approx((weights) / (1555e9 * 0.8), rel=0.1)


def test_fp8_kv_cache_doubles_blocks_and_halves_kv_reads() -> None:
    prof = load_profile("rllm-7b")
    auto = build_engine_config(prof)
    for dtype in ("fp8", "fp8_e4m3", "fp8_e5m2"):
        fp8 = build_engine_config(prof, EngineOptions(kv_cache_dtype=dtype))
        assert abs(fp8.num_gpu_blocks - 2 * auto.num_gpu_blocks) <= 1
        assert fp8.c == pytest.approx(auto.c / 2)


def test_weight_quantization_frees_memory_and_speeds_decode() -> None:
    prof = load_profile("rllm-7b")
    base = build_engine_config(prof)
    awq = build_engine_config(prof, EngineOptions(quantization="awq"))
    assert awq.num_gpu_blocks > base.num_gpu_blocks
    assert awq.t_weights < 0.5 * base.t_weights
    h100 = load_profile("rllm-7b-h100")
    fp8 = build_engine_config(h100, EngineOptions(quantization="fp8"))
    assert fp8.a == pytest.approx(build_engine_config(h100).a / 2, rel=0.01)  # fp8 tensor cores
    with pytest.raises(UserError, match="quantization 'nf9'") as e:
        build_engine_config(prof, EngineOptions(quantization="nf9"))
    assert "awq" in e.value.hint


def test_overrides_and_impossible_configs() -> None:
    prof = load_profile("rllm-7b")
    cfg = build_engine_config(
        prof,
        EngineOptions(
            max_num_seqs=8, max_num_batched_tokens=512, num_gpu_blocks_override=4096, max_model_len=8192
        ),
    )
    assert (cfg.max_num_seqs, cfg.max_num_batched_tokens, cfg.num_gpu_blocks, cfg.max_model_len) == (
        8,
        512,
        4096,
        8192,
    )
    with pytest.raises(UserError, match="fewer than max_model_len"):
        build_engine_config(prof, EngineOptions(num_gpu_blocks_override=100))
    with pytest.raises(UserError, match="do not fit"):
        build_engine_config(prof, EngineOptions(gpu_memory_utilization=0.3))
    with pytest.raises(UserError, match="max-model-len"):
        build_engine_config(prof, EngineOptions(max_model_len=10**6))
    with pytest.raises(UserError, match="kv-cache-dtype"):
        build_engine_config(prof, EngineOptions(kv_cache_dtype="int3"))


def test_speculative_config_parsing() -> None:
    assert parse_speculative_config('{"method": "ngram", "num_speculative_tokens": 3}') == SpeculativeOptions(
        "ngram", 3, 0.35
    )
    s = parse_speculative_config('{"method": "eagle", "num_speculative_tokens": 2, "acceptance_rate": 0.9}')
    assert s == SpeculativeOptions("eagle", 2, 0.9)
    cfg = build_engine_config(load_profile("rllm-7b"), EngineOptions(speculative=s))
    assert (cfg.spec_tokens, cfg.spec_acceptance, cfg.spec_method) == (2, 0.9, "eagle")
    for bad, msg in [
        ("{nope", "not valid JSON"),
        ("[1]", "JSON object"),
        ('{"method": "magic", "num_speculative_tokens": 3}', "not simulated"),
        ('{"method": "ngram", "num_speculative_tokens": 0}', "num_speculative_tokens"),
        ('{"method": "ngram", "num_speculative_tokens": 2, "acceptance_rate": 2}', "acceptance_rate"),
    ]:
        with pytest.raises(UserError, match=msg):
            parse_speculative_config(bad)


def test_user_profile_file_with_base(tmp_path: Path) -> None:
    f = tmp_path / "mine.toml"
    f.write_text(
        'base = "rllm-7b"\nname = "mine"\nserved_model_name = "my-model"\n'
        "[serving]\nmax_num_seqs = 64\n[outputs.hard]\naccuracy = 0.99\n"
    )
    prof = load_profile_file(f)
    assert (prof.name, prof.served_model_name, prof.serving.max_num_seqs) == ("mine", "my-model", 64)
    assert prof.outputs.tiers["hard"].accuracy == 0.99
    assert prof.outputs.tiers["easy"] == load_profile("rllm-7b").outputs.tiers["easy"]
    assert prof.source == str(f)
    assert prof.model.prompt_token_scale is None and build_engine_config(prof).prompt_token_scale == 1.0


def test_a_prompt_token_scale_reaches_the_engine_and_its_prompts(tmp_path: Path) -> None:
    f = tmp_path / "scaled.toml"
    f.write_text('base = "rllm-7b"\nname = "scaled"\n[model]\nprompt_token_scale = 1.5\n')
    prof = load_profile_file(f)
    assert prof.model.prompt_token_scale == 1.5 and build_engine_config(prof).prompt_token_scale == 1.5
    arrivals = [
        Arrival(t=0.1 * i, prompt=f"What is {i} + 4? Answer with the number.", max_tokens=8) for i in range(4)
    ]
    plain = run_virtual(arrivals, profile=load_profile("rllm-7b"), seed=1)
    scaled = run_virtual(arrivals, profile=prof, seed=1)
    for a, b in zip(plain.requests, scaled.requests, strict=True):
        assert b.prompt_tokens == math.floor(a.prompt_tokens * 1.5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('base = "rllm-7b"\nnmae = "x"\n', "unknown field nmae"),
        (
            'base = "rllm-7b"\n[serving]\nmax_num_seqs = "many"\n',
            "serving.max_num_seqs = 'many' is not an integer",
        ),
        ('base = "rllm-7b"\n[serving]\ngpu_memory_utilization = 1.5\n', "out of range"),
        ('base = "rllm-7b"\n[gpu]\nvram = 3\n', "unknown field gpu.vram"),
        ('base = "rllm-7b"\nkind = "clever"\n', "kind = 'clever' is not allowed"),
        ('base = "rllm-7b"\nkind = "plain"\n', "reasoning_median > 0"),
        ('base = "nope"\n', "unknown simulator profile 'nope'"),
        ('name = "x"\n', "missing field"),
        ("name = \n", "not valid TOML"),
        ('base = "rllm-7b"\n[model]\nnum_heads = 7\n', "not a multiple of num_kv_heads"),
        ('base = "rllm-7b"\n[model]\nprompt_token_scale = 0\n', "model.prompt_token_scale"),
        ('base = "rllm-7b"\n[model]\nprompt_token_scale = "x"\n', "model.prompt_token_scale"),
    ],
)
def test_bad_profile_files_name_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(UserError) as e:
        load_profile_file(f)
    assert message in str(e.value.what)
    assert e.value.hint


def test_missing_profile_file_and_unknown_builtin(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read"):
        load_profile_file(tmp_path / "absent.toml")
    with pytest.raises(UserError) as e:
        load_profile("rllm-9000b")
    assert "rllm-7b" in e.value.hint
