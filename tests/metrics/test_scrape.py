"""The scraper against real HTTP servers on 127.0.0.1: grid, no overlap, failures, 404 hints, stop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from rllmtop.clock import Clock
from rllmtop.engines.adapters import adapter_for
from rllmtop.events import LogEvent, Record, Scrape
from rllmtop.metrics.scrape import Scraper

FIX = Path(__file__).resolve().parents[1] / "fixtures"
AFTER_LOAD = (FIX / "vllm-0.32-cpu" / "metrics_after_load.txt").read_text()
IDLE = (FIX / "vllm-0.32-cpu" / "metrics_idle.txt").read_text()


class Server:
    """/metrics that serves ``bodies`` in turn (last one repeats), optionally slowly, counting overlap."""

    def __init__(self, bodies: list[str], delay: float = 0.0, status: int = 200) -> None:
        self.bodies = bodies
        self.delay = delay
        self.status = status
        self.active = 0
        self.max_active = 0
        self.starts: list[float] = []
        self.auth: list[str | None] = []
        self.hits = 0
        self.entered = asyncio.Event()
        self.release = asyncio.Event()  # set at shutdown: slow handlers return at once

    async def handle(self, request: web.Request) -> web.Response:
        self.starts.append(asyncio.get_running_loop().time())
        self.entered.set()
        self.auth.append(request.headers.get("Authorization"))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.delay:  # the server being slow (not the test waiting for work)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.release.wait(), self.delay)
            body = self.bodies[min(self.hits, len(self.bodies) - 1)]
            self.hits += 1
            return web.Response(text=body, status=self.status, content_type="text/plain")
        finally:
            self.active -= 1


@asynccontextmanager
async def serve(server: Server) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/metrics", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        server.release.set()
        await runner.cleanup()


class Collector:
    def __init__(self, until_scrapes: int) -> None:
        self.records: list[Record] = []
        self.until = until_scrapes
        self.enough = asyncio.Event()

    def __call__(self, rec: Record) -> None:
        self.records.append(rec)
        if len(self.scrapes) >= self.until:
            self.enough.set()

    @property
    def scrapes(self) -> list[Scrape]:
        return [r for r in self.records if isinstance(r, Scrape)]

    @property
    def logs(self) -> list[LogEvent]:
        return [r for r in self.records if isinstance(r, LogEvent)]


async def scrape_until(url: str, n: int, *, kind: str = "vllm", **kw: object) -> tuple[Collector, Scraper]:
    col = Collector(n)
    stop = asyncio.Event()
    scraper = Scraper(url, adapter_for(kind), clock=Clock(), publish=col, **kw)  # type: ignore[arg-type]
    task = asyncio.create_task(scraper.run(stop))
    await asyncio.wait_for(col.enough.wait(), 20)
    stop.set()
    await asyncio.wait_for(task, 5)
    return col, scraper


async def test_scrapes_publish_parsed_records_and_detect_a_restart() -> None:
    srv = Server([IDLE, AFTER_LOAD, IDLE, IDLE])
    async with serve(srv) as url:
        col, _ = await scrape_until(url, 4, interval=0.02, api_key="sk-secret")
    s = col.scrapes
    assert all(x.ok for x in s)
    assert [x.counter_reset for x in s[:4]] == [False, False, True, False]
    gen = [next(m.value for m in x.samples if m.name == "generation_tokens_total") for x in s[:3]]
    assert gen == [0.0, 4032.0, 0.0]
    assert all(x.latency_s >= 0 and x.t > 0 for x in s)
    assert [x.t for x in s] == sorted(x.t for x in s)
    assert srv.auth[0] == "Bearer sk-secret"
    restart = [g for g in col.logs if "went backwards" in g.text]
    assert len(restart) == 1 and restart[0].level == "warning" and restart[0].source == "scrape"
    missing_logs = [g for g in col.logs if "not served" in g.text]
    assert len(missing_logs) == 1 and "sim_lag_seconds" in missing_logs[0].text
    assert all("sk-secret" not in g.text for g in col.logs)


async def test_polls_never_overlap_and_overrun_slots_are_skipped() -> None:
    srv = Server([IDLE], delay=0.12)
    async with serve(srv) as url:
        col, scraper = await scrape_until(url, 4, interval=0.05)
    assert srv.max_active == 1  # the server never saw two polls at once
    starts = [s.t - s.latency_s for s in col.scrapes]  # on the scraper's clock
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # each poll takes >= 0.12 s; the next one waits for the next 0.05 s slot, so never before 0.15 s
    assert all(g >= 0.15 - 1e-9 for g in gaps), gaps
    assert scraper.polls in (len(col.scrapes), len(col.scrapes) + 1)
    assert all(x.latency_s >= 0.11 for x in col.scrapes)


async def test_polls_follow_the_interval_grid() -> None:
    srv = Server([IDLE])
    async with serve(srv) as url:
        col, _ = await scrape_until(url, 6, interval=0.1)
    starts = [s.t - s.latency_s for s in col.scrapes]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(g >= 0.1 - 1e-9 for g in gaps), gaps  # never early
    assert sum(gaps) / len(gaps) < 0.3, gaps  # and not drifting far behind (generous for a loaded machine)


async def test_sglang_404_says_enable_metrics() -> None:
    srv = Server(["not found"], status=404)
    async with serve(srv) as url:
        col, _ = await scrape_until(url, 2, kind="sglang", interval=0.02)
    s = col.scrapes[0]
    assert not s.ok and "404" in s.error and "--enable-metrics" in s.error and url in s.error
    assert "\n" not in s.error


async def test_malformed_body_is_a_failed_scrape() -> None:
    srv = Server(["<html>oops</html>", IDLE])
    async with serve(srv) as url:
        col, _ = await scrape_until(url, 2, interval=0.02)
    bad, good = col.scrapes[:2]
    assert not bad.ok and "malformed" in bad.error
    assert good.ok
    texts = [g.text for g in col.logs]
    assert any("scrape failed" in t for t in texts) and any("recovered after 1 failure" in t for t in texts)


async def test_unreachable_failures_are_published_every_poll_but_logged_rarely() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/metrics"
    col, _ = await scrape_until(url, 15, interval=0.01, log_every=60.0)
    assert len(col.scrapes) >= 15 and not any(x.ok for x in col.scrapes)
    assert all("cannot connect" in x.error and url in x.error for x in col.scrapes)
    assert len(col.logs) == 1 and col.logs[0].level == "warning"


async def test_failure_reminders_respect_log_every() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    col, _ = await scrape_until(f"http://127.0.0.1:{port}/metrics", 12, interval=0.01, log_every=0.0)
    assert len(col.logs) >= 2 and any("failing for" in g.text for g in col.logs)


async def test_stop_ends_a_hanging_poll_promptly() -> None:
    srv = Server([IDLE], delay=30.0)
    async with serve(srv) as url:
        col = Collector(1)
        stop = asyncio.Event()
        task = asyncio.create_task(Scraper(url, adapter_for("vllm"), clock=Clock(), publish=col).run(stop))
        await asyncio.wait_for(srv.entered.wait(), 10)
        stop.set()
        await asyncio.wait_for(task, 2)
    assert col.scrapes == []


async def test_timeout_is_a_failed_scrape() -> None:
    srv = Server([IDLE], delay=5.0)
    async with serve(srv) as url:
        col, _ = await scrape_until(url, 1, interval=0.05, timeout=0.1)
    s = col.scrapes[0]
    assert not s.ok and "no answer within 0.1 s" in s.error and s.latency_s >= 0.09


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Scraper("http://127.0.0.1:1/metrics", adapter_for("vllm"), clock=Clock(), publish=print, interval=0)
