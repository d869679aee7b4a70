"""The tiny reasoning model: deterministic files, a DeepSeek-R1 style template, and the designed behaviour
(EOS never sampled, </think> at the calibrated rate) checked with the numpy reference forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tokenizers", reason="the tiny-model builder needs tokenizers (test extra)")
pytest.importorskip("safetensors", reason="the tiny-model builder needs safetensors (test extra)")

from tokenizers import Tokenizer

from tools import tinymodel
from tools.tinymodel import (
    TinyModelConfig,
    build_tiny_model,
    files_digest,
    forward_logits,
    load_weights,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def test_build_is_deterministic_and_cached(model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again")
    assert files_digest(again) == files_digest(model_dir)
    mtimes = {p.name: p.stat().st_mtime_ns for p in again.iterdir()}
    assert build_tiny_model(again) == again  # same config: reused, nothing rewritten
    assert {p.name: p.stat().st_mtime_ns for p in again.iterdir()} == mtimes
    other = build_tiny_model(tmp_path / "seed1", TinyModelConfig(seed=1))
    assert files_digest(other) != files_digest(model_dir)


def test_files_describe_a_llama_vllm_can_load(model_dir: Path) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    w = load_weights(model_dir)
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["hidden_size"] == 128 and cfg["num_hidden_layers"] == 2
    assert cfg["vocab_size"] == tok.get_vocab_size() == w["lm_head.weight"].shape[0]
    assert 1500 <= cfg["vocab_size"] <= 2048
    assert w["model.embed_tokens.weight"].shape == (cfg["vocab_size"], 128)
    assert w["model.layers.1.self_attn.k_proj.weight"].shape == (
        cfg["num_key_value_heads"] * cfg["head_dim"],
        128,
    )
    assert all(a.dtype == np.float32 for a in w.values())
    assert cfg["eos_token_id"] == tok.token_to_id(tinymodel.EOS)
    assert not np.any(w["lm_head.weight"][cfg["eos_token_id"], 1:])  # EOS row zeroed


def test_think_tokens_and_chat_template(model_dir: Path) -> None:
    import jinja2

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tc = json.loads((model_dir / "tokenizer_config.json").read_text())
    for t in ("<think>", "</think>"):
        tid = tok.token_to_id(t)
        assert tid is not None and tok.encode(f"a {t} b").ids.count(tid) == 1
        assert tc["added_tokens_decoder"][str(tid)]["special"] is False  # shows up in decoded text
    assert tid is not None
    assert tok.decode([tid], skip_special_tokens=True) == "</think>"  # tid is </think>'s
    template = jinja2.Environment().from_string(tc["chat_template"])
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "thinking...</think>4"},
        {"role": "user", "content": "And 3+3?"},
    ]
    text = template.render(messages=messages, bos_token=tc["bos_token"], add_generation_prompt=True)
    assert text == (
        "<|begin_of_sentence|>Be brief.<|User|>What is 2+2?<|Assistant|>4<|end_of_sentence|>"
        "<|User|>And 3+3?<|Assistant|><think>\n"
    )
    plain = template.render(messages=messages[1:2], bos_token=tc["bos_token"], add_generation_prompt=False)
    assert plain == "<|begin_of_sentence|><|User|>What is 2+2?"


@pytest.mark.slow  # a numpy forward pass per generated token: ~20 s on an idle core, 80 s under load
def test_reference_model_never_ends_and_switches_to_answer(model_dir: Path) -> None:
    cfg = TinyModelConfig()
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    w = {k: v.astype(np.float64) for k, v in load_weights(model_dir).items()}  # convert once
    eos, end = tok.token_to_id(tinymodel.EOS), tok.token_to_id("</think>")
    banned = np.flatnonzero(w["lm_head.weight"][:, 0] < -1)
    rng = np.random.Generator(np.random.PCG64(123))
    prompt = tok.encode("<|begin_of_sentence|><|User|>What is 12 + 30?<|Assistant|><think>\n").ids
    switch_steps = []
    p_end = []
    for _ in range(8):
        ids = list(prompt)
        first_end = None
        for step in range(48):
            logits = forward_logits(w, cfg, ids)[-1]
            p = np.exp(logits - logits.max())
            p /= p.sum()
            assert p[eos] < 1e-9
            assert p[banned].sum() < 1e-9
            p_end.append(p[end])
            t = int(rng.choice(len(p), p=p))
            if t == end and first_end is None:
                first_end = step
            ids.append(t)
        text = tok.decode(ids[len(prompt) :])
        assert text.isascii() and text.isprintable()
        switch_steps.append(first_end)
    # calibrated to 1/32 per step on random contexts; real contexts land in the same range
    assert 1 / 96 < float(np.mean(p_end)) < 1 / 12
    assert sum(s is not None for s in switch_steps) >= 4


def test_cli_prints_the_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tinymodel.main([str(tmp_path / "m")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
