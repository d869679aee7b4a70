"""A seeded SSE fuzzer (issue 11.3): random well-formed and malformed event streams, framed at random,
through the real HTTP client against a local server.

Asserted for every case: no exception escapes the transport's read callback (the loop's exception
handler sees nothing), every request ends (bounded wait), a malformed chunk fails the request with an
error naming the chunk and the field, a well-formed stream's counts add up to the engine's usage.
A few hundred cases run in the fast suite; ``-m slow`` runs thousands more.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from rllmtop.workload.http import HttpClient
from rllmtop.workload.request import build_request_body
from rllmtop.workload.sse import ChatStream

from .sse_server import Reply, SseServer

TEXTS = [
    "a",
    " b",
    "\u00e9",
    "\U0001f600",
    "<think>",
    "</think>",
    "<th",
    "ink>",
    "</",
    "think>",
    "\n",
    "",
    "x" * 50,
]


@dataclass
class Case:
    events: list[bytes] = field(default_factory=list)
    bad_field: str | None = None  # the field a malformed chunk must be blamed for
    end: str = "done"  # "done" | "finish-only" | "drop" | "truncated"
    completion: int = 0
    tokens: int = 0
    usage: bool = True
    crlf: bool = False


BAD: list[tuple[Any, str]] = [
    ({"choices": {"a": 1}}, "choices is an object"),
    ({"choices": "x"}, "choices is a string"),
    ({"choices": [None]}, "choices[0] is null"),
    ({"choices": [[1]]}, "choices[0] is a list"),
    ({"choices": [{"delta": None}]}, "delta is null"),
    ({"choices": [{"delta": [1]}]}, "delta is a list"),
    ({"choices": [{"delta": {"content": 1}}]}, "delta.content is a number"),
    ({"choices": [{"delta": {"content": {"x": 1}}}]}, "delta.content is an object"),
    ({"choices": [{"delta": {"content": True}}]}, "delta.content is a boolean"),
    ({"choices": [{"delta": {"reasoning": 2}}]}, "delta.reasoning is a number"),
    ({"choices": [{"delta": {"reasoning_content": []}}]}, "delta.reasoning_content is a list"),
    ({"choices": [{"delta": {"content": "x"}, "token_ids": 3}]}, "token_ids is a number"),
    ({"choices": [{"delta": {"content": "x"}, "token_ids": {"a": 1}}]}, "token_ids is an object"),
    ({"choices": [{"delta": {}, "finish_reason": 1}]}, "finish_reason is a number"),
    ({"choices": [{"delta": {}, "finish_reason": {}}]}, "finish_reason is an object"),
    ({"choices": [], "usage": {"completion_tokens": -5}}, "usage.completion_tokens is -5"),
    ({"choices": [], "usage": {"completion_tokens": 2**40}}, "usage.completion_tokens is"),
    ({"choices": [], "usage": {"completion_tokens": 1.5}}, "usage.completion_tokens is a number"),
    ({"choices": [], "usage": {"prompt_tokens": "3"}}, "usage.prompt_tokens is a string"),
    ({"choices": [], "usage": "lots"}, "usage is a string"),
    (
        {"choices": [], "usage": {"completion_tokens_details": []}},
        "usage.completion_tokens_details is a list",
    ),
    ({"choices": [], "usage": {"reasoning_tokens": -1}}, "usage.reasoning_tokens is -1"),
    ({"object": "chunk"}, "no choices"),
    ([1, 2], "not an object"),
    ("str", "not an object"),
    (None, "not an object"),
]
GARBAGE = [b"{not json", b"\xff\xfe\x00", b'{"choices": [', b"1e99999", b"[" * 3000, b"nan"]


def _chunk(rng: random.Random, state: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """A well-formed chunk and its tokens (as the engine would count them)."""
    kind = rng.random()
    delta: dict[str, Any] = {}
    text = rng.choice(TEXTS)
    if kind < 0.35:
        delta[state["field"]] = text
    elif kind < 0.9:
        delta["content"] = text
    elif kind < 0.95:
        delta[state["field"]] = text
        delta["content"] = rng.choice(TEXTS)
    if rng.random() < 0.1:
        delta[rng.choice(["reasoning", "content"])] = None
    c: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
    tokens = 1
    if state["ids"]:
        k = rng.choice([0, 1, 1, 1, 2, 3])
        c["token_ids"] = list(range(k))
        tokens = k
    elif rng.random() < 0.1:
        c["token_ids"] = None
    return {"id": "f", "object": "chat.completion.chunk", "choices": [c]}, tokens


def make_case(seed: int) -> Case:
    rng = random.Random(seed)
    case = Case(crlf=rng.random() < 0.2)
    state = {"field": rng.choice(["reasoning", "reasoning_content"]), "ids": rng.random() < 0.3}
    ev = case.events
    ev.append(json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}).encode())
    n = rng.randint(0, 30)
    bad_at = rng.randint(0, n) if rng.random() < 0.45 else -1
    for i in range(n):
        if i == bad_at:
            if rng.random() < 0.8:
                obj, why = rng.choice(BAD)
                ev.append(json.dumps(obj).encode())
                case.bad_field = why
            else:
                ev.append(rng.choice(GARBAGE))
                case.bad_field = "not JSON"
            continue
        if rng.random() < 0.05:
            ev.append(b": keep-alive comment")
            continue
        obj, t = _chunk(rng, state)
        case.tokens += t
        ev.append(json.dumps(obj, ensure_ascii=rng.random() < 0.5).encode())
    last = {"choices": [{"index": 0, "delta": {}, "finish_reason": rng.choice(["stop", "length"])}]}
    ev.append(json.dumps(last).encode())
    case.usage = rng.random() < 0.8
    if case.usage:
        case.completion = case.tokens
        ev.append(
            json.dumps(
                {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": case.tokens}}
            ).encode()
        )
    case.end = rng.choices(["done", "finish-only", "drop", "truncated"], [0.7, 0.1, 0.1, 0.1])[0]
    return case


def wire(case: Case, rng: random.Random) -> bytes:
    nl = b"\r\n" if case.crlf else b"\n"
    out = b""
    for e in case.events:
        out += (e if e.startswith(b":") else b"data: " + e) + nl + nl
    if case.end == "done":
        out += b"data: [DONE]" + nl + nl
    elif case.end == "truncated":
        out = out[: rng.randint(0, len(out))]
    return out


async def _serve(cases: dict[int, Case], body: dict[str, Any], reply: Reply) -> None:
    seed = int(body["seed"])
    case = cases[seed]
    rng = random.Random(seed + 1)
    data = wire(case, rng)
    await reply.start()
    pos = 0
    while pos < len(data):  # framed at random: HTTP chunks of random sizes, events split anywhere
        k = rng.choice([1, 3, 17, 64, 500, 5000])
        await reply.raw(data[pos : pos + k])
        pos += k
    if case.end in ("drop", "truncated"):
        reply.drop()
        return
    await reply.end()


async def run_cases(seeds: range) -> None:
    cases = {s: make_case(s) for s in seeds}
    loop = asyncio.get_running_loop()
    escaped: list[dict[str, Any]] = []
    old = loop.get_exception_handler()
    loop.set_exception_handler(lambda lp, ctx: escaped.append(ctx))

    async def handler(body: dict[str, Any], reply: Reply) -> None:
        await _serve(cases, body, reply)

    try:
        async with SseServer(handler) as srv:
            client = HttpClient(srv.url)
            for seed, case in cases.items():
                st = ChatStream(thinking=bool(seed % 2), max_tokens=10_000)
                body = build_request_body(
                    api="chat", model="m", prompt="p", max_tokens=10, temperature=0, seed=seed
                )
                req = client.request_bytes("/v1/chat/completions", body)
                status = await asyncio.wait_for(client.post_stream(req, st), 5)  # never hangs
                st.finish(loop.time())
                check(seed, case, status, st)
            client.close()
    finally:
        loop.set_exception_handler(old)
    assert escaped == [], escaped[:3]


def check(seed: int, case: Case, status: int, st: ChatStream) -> None:
    where = f"case {seed}: {st.error!r}"
    assert status == 200, where
    assert st.done, where
    err = st.error or ""
    assert "internal error" not in err, where  # a parser exception was caught by the transport's guard
    if case.bad_field is not None:
        if case.end in ("done", "finish-only") or err.startswith("malformed"):
            assert err.startswith("malformed SSE chunk ") and case.bad_field in err, where
        else:  # cut before the bad chunk was read
            assert "connection closed" in err, where
        return
    if case.end in ("drop", "truncated"):
        return  # ok when [DONE]/a finish arrived before the cut, else an error naming the connection
    if st.chunks == 0:
        assert err.startswith("stream carried no token"), where
        return
    assert err == "", where
    if case.usage:
        assert st.reasoning_tokens + st.answer_tokens == case.completion, where
        assert st.tokens_exact or st.split_note, where
    for a, b in ((st.t_first_token, st.t_first_visible), (st.t_first_visible, st.t_done)):
        if a is not None and b is not None:
            assert a <= b, where


async def test_sse_fuzz_fast() -> None:
    await run_cases(range(300))


@pytest.mark.slow
async def test_sse_fuzz_slow() -> None:
    await run_cases(range(300, 5300))


def test_parser_never_raises_on_mutated_bytes() -> None:
    """Bit flips and cuts anywhere in captured-shaped streams: the parser fails the request or not, but
    never raises."""
    rng = random.Random(7)
    for seed in range(400):
        case = make_case(seed)
        data = bytearray(wire(case, rng))
        for _ in range(rng.randint(1, 5)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        st = ChatStream(max_tokens=10_000)
        pos = 0
        while pos < len(data):
            k = rng.randint(1, 200)
            st.feed(bytes(data[pos : pos + k]), float(pos))
            pos += k
        st.finish(1e9)
        assert st.error is None or isinstance(st.error, str)
