"""Shared helpers for the simulator's HTTP tests (real sockets on 127.0.0.1 only)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from rllmtop.sim.profiles import load_profile
from rllmtop.sim.server import ServerOptions, SimServer

EASY = "A warehouse ships crates. How many remain? Compute $(24*7) - 95$. Put the final answer in \\boxed{}."
MCQ = "Which value is $3^2 mod 5$?\n(A) 9\n(B) 3\n(C) 4\n(D) 1\nAnswer with the letter in \\boxed{}."


def options(**kw: Any) -> ServerOptions:
    base: dict[str, Any] = {"profile": load_profile("rllm-7b"), "port": 0, "speed": 500.0}
    base.update(kw)
    return ServerOptions(**base)


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    server = SimServer(options())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30.0) as c:
        yield c


def chat_body(content: str = EASY, **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "rllm-7b", "messages": [{"role": "user", "content": content}]}
    body.update(kw)
    return body


async def stream_events(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> list[Any]:
    """POST a streaming request; returns the parsed `data:` payloads ("[DONE]" kept as the string)."""
    out: list[Any] = []
    async with client.stream("POST", url, json=body) as resp:
        assert resp.status_code == 200, await resp.aread()
        assert resp.headers["content-type"].startswith("text/event-stream")
        buf = b""
        async for chunk in resp.aiter_bytes():
            buf += chunk
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                assert event.startswith(b"data: "), event
                payload = event[6:]
                out.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
        assert buf == b""
    return out


def split_stream(events: list[Any], field: str = "reasoning") -> dict[str, Any]:
    """Reasoning text, content text, per-chunk deltas, finish reason and usage of a chat stream."""
    reasoning, content, finish, usage = [], [], None, None
    deltas = []
    for ev in events:
        if ev == "[DONE]":
            continue
        if ev.get("usage") is not None:
            usage = ev["usage"]
        for ch in ev["choices"]:
            d = ch.get("delta", {})
            deltas.append(ch)
            if d.get(field) is not None:
                reasoning.append(d[field])
            if d.get("content") is not None:
                content.append(d["content"])
            if ch.get("finish_reason"):
                finish = ch["finish_reason"]
    return {
        "reasoning": reasoning,
        "content": content,
        "finish": finish,
        "usage": usage,
        "deltas": deltas,
    }
