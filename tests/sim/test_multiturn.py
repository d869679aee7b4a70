"""Multi-turn chats: the whole history is rendered, earlier reasoning is stripped, the prefix cache reuses
the shared history on turn 2 and later, and the difficulty comes from the last user message."""

from __future__ import annotations

import statistics
from typing import Any

import httpx

from rllmtop.sim.server import serve_in_background
from rllmtop.sim.virtual import Arrival, run_virtual

from .conftest import options

SYSTEM = "You are a careful assistant. Reason step by step and put the final answer in \\boxed{}. " * 3
Q1 = "Let $m$ and $n$ be relatively prime positive integers with $\\frac{m}{n} = 0.375$. Find $m+n$."
Q2 = "Maria buys 3 packs of pencils with 12 pencils in each pack. How many pencils does she have?"
Q3 = "And if she gives 8 of them to her brother, how many are left?"


async def _chat(c: httpx.AsyncClient, url: str, messages: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    r = await c.post(
        url + "/v1/chat/completions",
        json={"model": "rllm-7b", "messages": messages, "max_tokens": 20000, "seed": seed},
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _cached(doc: dict[str, Any]) -> int:
    return int((doc["usage"].get("prompt_tokens_details") or {}).get("cached_tokens", 0))


async def test_history_is_reused_by_the_prefix_cache() -> None:
    async with serve_in_background(options()) as url, httpx.AsyncClient(timeout=60) as c:
        msgs: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": Q1}]
        t1 = await _chat(c, url, msgs, 1)
        assert _cached(t1) == 0
        a1 = t1["choices"][0]["message"]
        msgs += [
            {"role": "assistant", "content": a1["content"], "reasoning": a1["reasoning"]},
            {"role": "user", "content": Q2},
        ]
        t2 = await _chat(c, url, msgs, 2)
        # turn 1's prompt up to its generation prompt ("<think>\n") is shared: its full blocks are hits
        assert _cached(t2) >= (t1["usage"]["prompt_tokens"] - 16) // 16 * 16 > 0
        a2 = t2["choices"][0]["message"]
        msgs += [{"role": "assistant", "content": a2["content"]}, {"role": "user", "content": Q3}]
        t3 = await _chat(c, url, msgs, 3)
        assert _cached(t3) > _cached(t2)  # turn 2's whole prompt (history + Q2) is reused
        assert _cached(t3) >= (t2["usage"]["prompt_tokens"] - 16) // 16 * 16
        metrics = (await c.get(url + "/metrics")).text
        hits = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("vllm:prefix_cache_hits_total")
        )
        assert hits >= _cached(t2) + _cached(t3)


async def test_earlier_reasoning_is_stripped() -> None:
    """R1 / Qwen3 templates drop an earlier assistant turn's reasoning: the prompt is the same whether
    the client sent it inline, in a reasoning field, or not at all."""
    async with serve_in_background(options()) as url, httpx.AsyncClient(timeout=60) as c:
        # as the simulator (and R1) send it: the answer after </think> starts with a blank line
        answer = "\n\nThe answer is \\boxed{11}."
        thought = "<think>\nLet me think about 3/8 for a long while, it is 0.375 and so on.\n</think>"
        prompts = []
        for assistant in (
            {"role": "assistant", "content": answer},
            {"role": "assistant", "content": thought + answer},
            {"role": "assistant", "content": answer, "reasoning_content": "long hidden thoughts " * 50},
        ):
            msgs = [{"role": "user", "content": Q1}, assistant, {"role": "user", "content": Q2}]
            prompts.append((await _chat(c, url, msgs, 1))["usage"]["prompt_tokens"])
        assert prompts[0] == prompts[1] == prompts[2], prompts


async def test_difficulty_comes_from_the_last_user_message() -> None:
    async with serve_in_background(options()) as url, httpx.AsyncClient(timeout=60) as c:

        async def reasoning(last: str, seed: int) -> int:
            msgs = [
                {"role": "user", "content": Q1},
                {"role": "assistant", "content": "\\boxed{11}"},
                {"role": "user", "content": last},
            ]
            doc = await _chat(c, url, msgs, seed)
            return int(doc["usage"]["completion_tokens_details"]["reasoning_tokens"])

        easy = [await reasoning(Q2, k) for k in range(10)]
        hard = [await reasoning(Q1, k) for k in range(10)]
        # easy median 650, hard 9000 reasoning tokens in the default profile
        assert statistics.median(easy) < 2000 < statistics.median(hard), (easy, hard)


def test_virtual_runs_take_a_history() -> None:
    first = Arrival(t=0.0, prompt=Q1, system=SYSTEM, max_tokens=2000, seed=1)
    second = Arrival(
        t=100.0, prompt=Q2, system=SYSTEM, history=(("user", Q1), ("assistant", "\\boxed{11}")), seed=2
    )
    res = run_virtual([first, second], profile="rllm-7b")
    r1, r2 = sorted(res.requests, key=lambda r: r.index)
    assert r1.cached_prompt_tokens == 0
    assert r2.cached_prompt_tokens >= (r1.prompt_tokens - 16) // 16 * 16 > 0
    assert r2.tier == "easy" and r1.tier == "hard"
