"""A real Prometheus (Debian's ``prometheus`` 2.42) scraping simulated engines and an SGLang-shaped target.

The Prometheus source and rllmtop's own direct scrape must agree (KV, running, waiting within one scrape
interval of Prometheus's sample time), SGLang and simulator series must mix in one fleet, and a stopped
engine must show as down/stale, never as zeros. Skipped where ``/usr/bin/prometheus`` is missing
(``apt-get install -y prometheus``). Every process started here is ended by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_procs import have_prometheus, long_requests, start_prometheus, start_sim, stop, wait_targets

from rllmtop.clock import Clock
from rllmtop.engines.adapters import adapter_for
from rllmtop.events import Record, Scrape
from rllmtop.metrics.prometheus import PrometheusSource
from rllmtop.metrics.scrape import Scraper, run_scrapers

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.skipif(
        not have_prometheus(), reason="needs Debian's prometheus (apt-get install -y prometheus)"
    ),
    pytest.mark.timeout(90),
]

SGLANG = (Path(__file__).resolve().parents[1] / "fixtures" / "sglang-0.5" / "metrics_dp2_tp2.txt").read_text()
E0 = (("engine", "0"),)
GAUGES = ("kv_cache_usage", "requests_running", "requests_waiting")


@contextlib.asynccontextmanager
async def sglang_target() -> AsyncIterator[str]:
    """An SGLang-shaped /metrics (the written 0.5 fixture) for Prometheus to scrape: its host:port."""

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=SGLANG, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def gauge(s: Scrape, name: str) -> float | None:
    return next((m.value for m in s.samples if m.name == name and m.labels == E0), None)


async def test_prometheus_source_agrees_with_the_direct_scrape_and_shows_a_stopped_engine_down(
    tmp_path: Path,
) -> None:
    sims = [start_sim("--max-num-seqs", "3", "--seed", "1"), start_sim("--seed", "2")]
    procs = [p for p, _ in sims]
    tasks: list[asyncio.Task[None]] = []
    try:
        (_, base0), (_, base1) = sims
        async with sglang_target() as sglang:
            inst0, inst1 = base0.split("//")[1], base1.split("//")[1]
            prom, purl = start_prometheus(tmp_path, [inst0, inst1, sglang])
            procs.append(prom)
            tasks = await long_requests(base0, 5)  # 3 running, 2 waiting on engine 0; engine 1 idle
            await asyncio.to_thread(wait_targets, purl, 3)

            clock = Clock()
            direct: list[Record] = []
            arrived = asyncio.Event()

            def publish(rec: Record) -> None:
                direct.append(rec)
                arrived.set()

            async def direct_past(unix: float) -> None:
                """Until the direct scrape of engine 0 has a sample later than ``unix``."""
                while not any(
                    isinstance(s, Scrape) and s.engine_id == inst0 and clock.started_at + s.t > unix
                    for s in direct[-4:]
                ):
                    arrived.clear()
                    await arrived.wait()

            stop_direct = asyncio.Event()
            scrapers = [
                Scraper(
                    b + "/metrics",
                    adapter_for("sim"),
                    clock=clock,
                    publish=publish,
                    interval=0.1,
                    engine_id=i,
                )
                for b, i in ((base0, inst0), (base1, inst1))
            ]
            direct_task = asyncio.create_task(run_scrapers(scrapers, stop_direct))
            logs: list[Record] = []
            src = PrometheusSource(purl, clock=clock, publish=logs.append, selector='{job="engines"}')

            await asyncio.wait_for(direct_past(time.time() + 1.5), 10)  # direct history covers a scrape
            # agreement: each Prometheus value equals what the direct scrape saw within one scrape interval
            for _ in range(3):
                polled = {s.engine_id: s for s in await src.poll_once()}
                assert set(polled) == {inst0, inst1, sglang}
                assert all(s.ok and not s.stale for s in polled.values()), polled
                sampled_at = src.engines[inst0].up_ts  # when Prometheus scraped engine 0 (unix)
                assert sampled_at is not None
                lo, hi = sampled_at - 0.25, sampled_at + 1.0
                await asyncio.wait_for(direct_past(hi), 10)
                window = [
                    s
                    for s in direct
                    if isinstance(s, Scrape)
                    and s.ok
                    and s.engine_id == inst0
                    and lo <= clock.started_at + s.t <= hi
                ]
                p0 = polled[inst0]
                assert window, "no direct scrape within one interval of Prometheus's sample"
                for name in GAUGES:
                    seen = [v for v in (gauge(s, name) for s in window) if v is not None]
                    got = gauge(p0, name)
                    assert got is not None and min(seen) <= got <= max(seen), (name, got, seen)
                assert gauge(p0, "requests_running") == 3.0 and gauge(p0, "requests_waiting") == 2.0
                assert gauge(p0, "kv_cache_usage") > 0  # type: ignore[operator]
                assert gauge(polled[inst1], "requests_running") == 0.0
                hist = {h.name for h in p0.histograms}
                assert {"ttft_seconds", "e2e_seconds"} <= hist

            # vLLM-shaped (simulator) and SGLang series in one fleet, each mapped by its own adapter
            kinds = {e.id: e.kind for e in src.engine_infos()}
            assert kinds == {inst0: "sim", inst1: "sim", sglang: "sglang"}
            sg = polled[sglang]
            lab0 = (("engine", "0"), ("engine_type", "unified"), ("moe_ep_rank", "0"), ("pp_rank", "0"))
            assert {m.labels: m.value for m in sg.samples if m.name == "requests_running"}[lab0] == 12.0
            assert "kv_total_tokens" not in sg.missing and "sim_lag_seconds" in sg.missing

            # a stopped engine: down and stale through Prometheus, failed direct scrapes; never zeros
            await asyncio.to_thread(stop, procs[1])  # the direct scrapers go on meanwhile
            t_stopped = clock.now()
            down: Scrape | None = None
            deadline = time.monotonic() + 20
            while down is None and time.monotonic() < deadline:
                polled = {s.engine_id: s for s in await src.poll_once()}
                if not polled[inst1].ok:
                    down = polled[inst1]
                else:
                    await asyncio.sleep(0.2)  # Prometheus notices at its next scrape (1 s)
            assert down is not None and down.stale and down.samples == () and down.histograms == ()
            assert inst1 in down.error and "down" in down.error
            assert polled[inst0].ok and gauge(polled[inst0], "requests_running") == 3.0

            def after_stop() -> list[Scrape]:  # direct polls of the stopped engine begun after it was gone
                return [
                    s
                    for s in direct
                    if isinstance(s, Scrape) and s.engine_id == inst1 and s.t - s.latency_s >= t_stopped
                ]

            # Prometheus may say down before the direct scraper polled again (measured in CI: the last 3
            # direct polls of the engine were still from before the stop): wait for 3 of its own
            while len(after_stop()) < 3:
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), 10)
            stop_direct.set()
            await asyncio.wait_for(direct_task, 5)
            assert all(not s.ok and not s.samples for s in after_stop())

            # backfill: the window so far, in time order, per engine
            back = await src.backfill(8.0)
            assert [s.t for s in back] == sorted(s.t for s in back)
            assert {s.engine_id for s in back} == {inst0, inst1, sglang}
            assert any(s.engine_id == inst1 and not s.ok and s.stale for s in back)
            assert all(s.t < clock.now() for s in back)
            assert not any(s.histograms for s in back)  # scalars only by default
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for p in procs:
            stop(p)
