"""Reasoning controls: reasoning_effort, thinking budgets, ignore_eos (plans, profiles and the wire)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import httpx
import pytest

from rllmtop.errors import UserError
from rllmtop.sim.outputs import (
    DEFAULT_EFFORT,
    THINK_END_ID,
    EffortModel,
    OutputPlan,
    TierModel,
    analyze_prompt,
    make_plan,
    piece_text,
)
from rllmtop.sim.profiles import load_profile, load_profile_file
from rllmtop.sim.server import serve_in_background

from .conftest import EASY, chat_body, options

TM = TierModel(2000, 0.6, 120, 0.4, accuracy=0.8, accuracy_no_thinking=0.3, answer_median_no_thinking=200)
INFO = analyze_prompt("Compute $(24*7) - 95$.")
N = 2000


def plans(**kw: Any) -> list[OutputPlan]:
    return [make_plan(INFO, TM, key=k, thinking=True, max_tokens=10**6, **kw) for k in range(N)]


def text_of(ids: list[int]) -> str:
    return "".join(piece_text(i) for i in ids)


def test_effort_scales_reasoning_and_moves_accuracy() -> None:
    base = plans()
    assert plans(effort=DEFAULT_EFFORT["medium"]) == base  # medium is the profile's baseline
    low = plans(effort=EffortModel(0.35, -0.08))
    high = plans(effort=EffortModel(1.6, 0.03))
    mean = {
        n: statistics.mean(p.reasoning_tokens for p in ps)
        for n, ps in (("low", low), ("medium", base), ("high", high))
    }
    assert mean["low"] < 0.5 * mean["medium"] < 0.4 * mean["high"], mean
    acc = {n: sum(p.correct for p in ps) / N for n, ps in (("low", low), ("medium", base), ("high", high))}
    # binomial sd ~ 0.009 at n = 2000: 4 sd bounds around 0.72, 0.80, 0.83
    assert abs(acc["low"] - 0.72) < 0.04 and abs(acc["medium"] - 0.80) < 0.04
    assert abs(acc["high"] - 0.83) < 0.04 and acc["low"] < acc["medium"] < acc["high"]
    clamp = plans(effort=EffortModel(1.0, 0.5))
    assert all(p.correct for p in clamp)  # accuracy clamped at 1


def test_thinking_budget_caps_reasoning_then_answers() -> None:
    budget = 500
    base = plans()
    capped = plans(thinking_budget=budget)
    for b, c in zip(base, capped, strict=True):
        assert c.reasoning_tokens == min(budget, b.planned_reasoning)
        assert c.budget_cut == (b.planned_reasoning > budget)
        assert c.finish_reason == "stop" and c.token_ids[c.reasoning_tokens] == THINK_END_ID
        assert text_of(c.token_ids[c.answer_start :]).endswith(f"\\boxed{{{c.answer}}}.")
        if not c.budget_cut:
            assert c == b  # a budget the reasoning stays under changes nothing
        else:
            # cut short: no conclusion in the reasoning
            assert "final answer is" not in text_of(c.token_ids[: c.reasoning_tokens])
    cut = [(b, c) for b, c in zip(base, capped, strict=True) if c.budget_cut]
    assert len(cut) > 0.9 * N  # median 2000 planned
    # accuracy kept: 0.3 + (0.8 - 0.3) * budget / planned, per request
    expected = statistics.mean(0.3 + 0.5 * budget / b.planned_reasoning for b, _ in cut)
    got = sum(c.correct for _, c in cut) / len(cut)
    assert abs(got - expected) < 0.045, (got, expected)
    assert not any(c.correct and not b.correct for b, c in cut)  # a budget never fixes a wrong answer
    zero = plans(thinking_budget=0)
    assert all(p.reasoning_tokens == 0 and p.token_ids[0] == THINK_END_ID for p in zero)
    assert abs(sum(p.correct for p in zero) / N - 0.3) < 0.045  # as without thinking


def test_ignore_eos_generates_max_tokens() -> None:
    for k in range(50):
        b = make_plan(INFO, TM, key=k, thinking=True, max_tokens=30000)
        p = make_plan(INFO, TM, key=k, thinking=True, max_tokens=30000, ignore_eos=True)
        assert p.n_tokens == 30000 and p.finish_reason == "length"
        assert p.token_ids[: b.n_tokens] == b.token_ids  # the answer, then it goes on
        assert p.correct == b.correct
    short = make_plan(INFO, TM, key=1, thinking=True, max_tokens=40, ignore_eos=True)
    assert short.n_tokens == 40 and not short.correct  # cut during reasoning
    nothink = make_plan(INFO, TM, key=1, thinking=False, max_tokens=700, ignore_eos=True)
    assert nothink.n_tokens == 700 and nothink.reasoning_tokens == 0


def test_profile_effort_tables(tmp_path: Path) -> None:
    assert load_profile("rllm-7b").outputs.effort == DEFAULT_EFFORT
    assert load_profile("rllm-32b").outputs.effort == DEFAULT_EFFORT  # inherited through two bases
    f = tmp_path / "p.toml"
    f.write_text('base = "rllm-7b"\nname = "x"\n[outputs.effort.low]\nreasoning_factor = 0.2\n')
    prof = load_profile_file(f)
    assert prof.outputs.effort["low"] == EffortModel(0.2, -0.08)
    for body, message in (
        ("[outputs.effort.minimal]\nreasoning_factor = 0.1\naccuracy_delta = 0\n", "outputs.effort.minimal"),
        ("[outputs.effort.low]\nreasoning_factor = 0\n", "outputs.effort.low.reasoning_factor"),
        ("[outputs.effort.high]\naccuracy_delta = 2\n", "outputs.effort.high.accuracy_delta"),
        ("[outputs.effort.high]\nspeed = 2\n", "unknown field outputs.effort.high.speed"),
        ("[outputs]\neffort = 3\n", "[outputs.effort] must be a table"),
    ):
        f.write_text('base = "rllm-7b"\nname = "x"\n' + body)
        with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_profile_file(f)


async def _usage(
    c: httpx.AsyncClient, url: str, body: dict[str, Any], path: str = "/v1/chat/completions"
) -> dict[str, Any]:
    r = await c.post(url + path, json=body)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


async def test_controls_over_http() -> None:
    async with serve_in_background(options()) as url, httpx.AsyncClient(timeout=60) as c:
        # effort: same seeds, shorter reasoning at low, longer at high
        def reasoning(doc: dict[str, Any]) -> int:
            return int(doc["usage"]["completion_tokens_details"]["reasoning_tokens"])

        by_level = {}
        for level in ("low", None, "high"):
            body = chat_body(EASY, max_tokens=20000)
            if level:
                body["reasoning_effort"] = level
            by_level[level] = [reasoning(await _usage(c, url, {**body, "seed": k})) for k in range(10)]
        assert statistics.median(by_level["low"]) < statistics.median(by_level[None])
        assert statistics.median(by_level[None]) < statistics.median(by_level["high"])

        # budgets: the top-level vLLM name and SGLang's chat_template_kwargs one; the smaller wins
        for extra in (
            {"thinking_token_budget": 64},
            {"chat_template_kwargs": {"thinking_budget": 64}},
            {"thinking_token_budget": 500, "chat_template_kwargs": {"thinking_budget": 64}},
        ):
            for k in range(5):
                doc = await _usage(c, url, chat_body(EASY, max_tokens=5000, seed=k, **extra))
                assert reasoning(doc) <= 64
                assert doc["choices"][0]["finish_reason"] == "stop"
                assert "boxed" in doc["choices"][0]["message"]["content"]

        # ignore_eos: generate max_tokens
        doc = await _usage(c, url, chat_body(EASY, max_tokens=3000, seed=1, ignore_eos=True))
        assert doc["usage"]["completion_tokens"] == 3000 and doc["choices"][0]["finish_reason"] == "length"

        # completions: budget and ignore_eos honoured, reasoning_effort ignored (as vLLM)
        comp = {"prompt": EASY, "max_tokens": 2000, "seed": 2}
        plain = await _usage(c, url, comp, "/v1/completions")
        low = await _usage(c, url, {**comp, "reasoning_effort": "low"}, "/v1/completions")
        assert low["choices"] == plain["choices"]
        eos = await _usage(c, url, {**comp, "ignore_eos": True}, "/v1/completions")
        assert eos["usage"]["completion_tokens"] == 2000

        # bad values: 400 naming the field
        for bad, param in (
            ({"reasoning_effort": "extreme"}, "reasoning_effort"),
            ({"reasoning_effort": 3}, "reasoning_effort"),
            ({"thinking_token_budget": -1}, "thinking_token_budget"),
            ({"thinking_token_budget": "64"}, "thinking_token_budget"),
            ({"chat_template_kwargs": {"thinking_budget": -5}}, "chat_template_kwargs"),
            ({"ignore_eos": "yes"}, "ignore_eos"),
        ):
            r = await c.post(url + "/v1/chat/completions", json=chat_body(EASY, max_tokens=10, **bad))
            assert r.status_code == 400 and r.json()["error"]["param"] == param, (bad, r.text)


async def test_budget_in_a_stream_closes_the_think_block() -> None:
    from .conftest import split_stream, stream_events

    async with serve_in_background(options()) as url, httpx.AsyncClient(timeout=60) as c:
        body = chat_body(EASY, max_tokens=5000, seed=3, stream=True, thinking_token_budget=40)
        body["stream_options"] = {"include_usage": True}
        parts = split_stream(await stream_events(c, url + "/v1/chat/completions", body))
        assert parts["usage"]["completion_tokens_details"]["reasoning_tokens"] == 40
        assert parts["finish"] == "stop" and "boxed" in "".join(parts["content"])


async def test_fuzzed_control_fields_get_200_or_400() -> None:
    """Seeded random values in every control field (and the header): never a 500, never a hang."""
    import random

    rng = random.Random(17)
    values: list[Any] = [None, True, False, 0, 1, -1, 7, 10**12, 2.5, "", "low", "high", "x", [], {}, [1]]
    headers = [b"easy", b"HARD", b"Mcq", b"", "\u00fcber".encode(), b"medium,hard", b"x" * 300]
    async with serve_in_background(options()) as url, httpx.AsyncClient(timeout=30) as c:
        for i in range(200):
            body = chat_body(EASY, max_tokens=rng.choice([1, 5, 30]), seed=i)
            for field_name in ("reasoning_effort", "thinking_token_budget", "ignore_eos"):
                if rng.random() < 0.5:
                    body[field_name] = rng.choice(values)
            if rng.random() < 0.5:
                ctk = rng.choice(
                    [
                        {},
                        {"thinking_budget": rng.choice(values)},
                        {"enable_thinking": rng.choice(values)},
                        rng.choice(values),
                    ]
                )
                body["chat_template_kwargs"] = ctk
            if rng.random() < 0.3:
                body["messages"] = [
                    {"role": "user", "content": "first"},
                    {"role": "assistant", "content": rng.choice(["</think>", "<think>a</think>b", "", None])},
                    {"role": "user", "content": EASY},
                ]
            hdr = {b"x-rllmtop-difficulty": rng.choice(headers)} if rng.random() < 0.5 else {}
            r = await c.post(url + "/v1/chat/completions", json=body, headers=hdr)
            assert r.status_code in (200, 400), (body, r.text)
            if r.status_code == 200:
                assert 1 <= r.json()["usage"]["completion_tokens"] <= body["max_tokens"]
