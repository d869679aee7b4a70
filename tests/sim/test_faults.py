"""Fault injection: 429/500 answers, stalled streams, dropped connections."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import httpx
import pytest

from rllmtop.sim.server import Faults, SimServer, serve_in_background

from .conftest import chat_body, options, stream_events


async def statuses(url: str, n: int, seed_base: int = 0) -> list[int]:
    async with httpx.AsyncClient(timeout=30) as c:
        resps = await asyncio.gather(
            *[
                c.post(url + "/v1/chat/completions", json=chat_body(seed=seed_base + i, max_tokens=2))
                for i in range(n)
            ]
        )
    for r in resps:
        if r.status_code != 200:
            err = r.json()["error"]
            assert err["code"] == r.status_code and "fault injection" in err["message"]
    return [r.status_code for r in resps]


async def test_error_and_rate_limit_fractions_are_reproducible() -> None:
    faults = Faults(error_rate=0.2, rate_limit_rate=0.2)
    async with serve_in_background(options(faults=faults, seed=1)) as url:
        first = await statuses(url, 200)
    async with serve_in_background(options(faults=faults, seed=1)) as url:
        second = await statuses(url, 200)
    counts = Counter(first)
    # binomial(200, 0.2): mean 40, sd 5.7
    assert 20 <= counts[500] <= 60 and 20 <= counts[429] <= 60
    assert counts[200] == 200 - counts[500] - counts[429]
    assert first == second  # decided by the request seeds, not by timing


async def test_dropped_connections_mid_stream() -> None:
    server = SimServer(options(faults=Faults(drop_rate=1.0)))
    url = await server.start()
    try:
        async with httpx.AsyncClient(timeout=30) as c:
            received = 0
            with pytest.raises(httpx.RemoteProtocolError):
                async with c.stream("POST", url + "/v1/chat/completions", json=chat_body(stream=True)) as r:
                    async for chunk in r.aiter_bytes():
                        received += len(chunk)
                        assert b"[DONE]" not in chunk
            assert received > 0  # it started, then dropped
            await server.wait_idle()
            assert server.engine.stats.finished["abort"] == 1
            assert (await c.get(url + "/health")).status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                await c.post(url + "/v1/chat/completions", json=chat_body(seed=3))
    finally:
        await server.stop()


async def test_stalled_streams_pause_then_finish() -> None:
    stall = 0.4
    opts = options(faults=Faults(stall_rate=1.0, stall_seconds=stall))
    async with serve_in_background(opts) as url, httpx.AsyncClient(timeout=30) as c:
        loop = asyncio.get_running_loop()
        times = []
        async with c.stream(
            "POST", url + "/v1/chat/completions", json=chat_body(stream=True, seed=5, max_tokens=600)
        ) as r:
            async for _ in r.aiter_bytes():
                times.append(loop.time())
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps) >= 0.9 * stall
        events = await stream_events(c, url + "/v1/chat/completions", chat_body(stream=True, max_tokens=50))
        assert events[-1] == "[DONE]"
        t0 = loop.time()
        resp = await c.post(url + "/v1/chat/completions", json=chat_body(max_tokens=50, seed=9))
        assert resp.status_code == 200 and loop.time() - t0 >= 0.9 * stall
