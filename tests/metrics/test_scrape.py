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
from rllmtop.metrics.scrape import Scraper, run_scrapers

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

        self._waiters: list[tuple[object, asyncio.Event]] = []

    def __call__(self, rec: Record) -> None:
        self.records.append(rec)
        if len(self.scrapes) >= self.until:
            self.enough.set()
        for pred, ev in self._waiters:
            if pred():  # type: ignore[operator]
                ev.set()

    async def wait_until(self, pred: object, timeout: float = 10.0) -> None:
        """Until ``pred()`` holds after some record arrived (no polling)."""
        ev = asyncio.Event()
        if pred():  # type: ignore[operator]
            return
        self._waiters.append((pred, ev))
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        finally:
            self._waiters.remove((pred, ev))

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


# ------------------------------------------------------------------------------------------ identity, bounds


async def test_every_scrape_carries_its_engine_id() -> None:
    srv = Server([IDLE])
    async with serve(srv) as url:
        col, _ = await scrape_until(url, 2, interval=0.02)
        named, _ = await scrape_until(url, 2, interval=0.02, engine_id="127.0.0.1:1234")
    assert {s.engine_id for s in col.scrapes} == {url.removesuffix("/metrics")}
    assert {s.engine_id for s in named.scrapes} == {"127.0.0.1:1234"}


BAD = "".join(f'vllm:request_success_total{{engine="0",finished_reason="r{i}"}} NaN\n' for i in range(8))


async def test_bad_values_cost_samples_and_are_logged_once_per_series_rate_limited() -> None:
    kv = 'vllm:kv_cache_usage_perc{engine="0",model_name="tiny-rllm"} 0.0'
    assert kv in IDLE
    srv = Server([BAD + IDLE.replace(kv, kv[:-3] + "7.0")])
    async with serve(srv) as url:
        col, scraper = await scrape_until(url, 5, interval=0.02, log_every=60.0)
    assert all(s.ok for s in col.scrapes)
    assert all("kv_cache_usage" in s.missing for s in col.scrapes)  # 7.0 is dropped, not shown
    assert all(any(m.name == "requests_running" for m in s.samples) for s in col.scrapes)
    dropped = [g for g in col.logs if "dropped " in g.text]
    assert len(dropped) == 5  # 9 bad series, at most 5 new ones listed per log_every
    assert all(g.level == "warning" and g.text.startswith(url.removesuffix("/metrics")) for g in dropped)
    assert any("outside 0..1" in g.text for g in dropped)
    assert scraper.invalid_samples == 9 * len(col.scrapes) or scraper.invalid_samples == 9 * scraper.polls


async def test_unlisted_bad_series_are_summed_up_when_the_window_ends() -> None:
    srv = Server([BAD + IDLE])
    async with serve(srv) as url:
        col, _ = await scrape_until(url, 3, interval=0.02, log_every=0.0)
    texts = [g.text for g in col.logs]
    assert sum("more series with bad values" in t for t in texts) >= 1
    assert sum("dropped vllm:request_success_total" in t for t in texts) == 8  # each series once, ever


async def test_series_over_the_cap_are_counted_and_warned_about_once() -> None:
    many = "".join(f'vllm:request_success_total{{engine="0",finished_reason="r{i}"}} 1\n' for i in range(40))
    srv = Server([many + IDLE])
    async with serve(srv) as url:
        col, _ = await scrape_until(url, 3, interval=0.02, series_cap=20, engine_id="eng-a")
    assert all(s.dropped_series > 0 and len(s.samples) + len(s.histograms) == 20 for s in col.scrapes)
    warn = [g for g in col.logs if "over the cap" in g.text]
    assert len(warn) == 1 and "eng-a" in warn[0].text and "20 series" in warn[0].text


@asynccontextmanager
async def serve_handler(handler: object, path: str = "/metrics", port: int = 0) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get(path, handler)  # type: ignore[arg-type]
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}{path}"
    finally:
        await runner.cleanup()


async def test_an_endless_body_stops_at_the_cap_without_being_buffered() -> None:
    sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse()
        await resp.prepare(request)
        line = b'other_metric{a="' + b"x" * 1000 + b'"} 1\n'
        with contextlib.suppress(ConnectionError):
            while sent < 200 * 2**20:  # a 200 MiB body, if nobody stops reading
                await resp.write(line * 64)
                sent += len(line) * 64
        return resp

    async with serve_handler(endless) as url:
        col, _ = await scrape_until(url, 1, interval=0.05, max_bytes=2**20)
    s = col.scrapes[0]
    assert not s.ok and "larger than 1 MiB" in s.error and url in s.error
    assert sent < 50 * 2**20  # the scraper hung up long before the end


async def test_a_declared_length_over_the_cap_is_not_read() -> None:
    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"# x\n" * (2**20), content_type="text/plain")

    async with serve_handler(big) as url:
        col, _ = await scrape_until(url, 1, interval=0.05, max_bytes=2**20)
    assert not col.scrapes[0].ok and "4.0 MiB is larger than 1 MiB" in col.scrapes[0].error


async def test_a_slow_drip_body_is_bounded_by_the_timeout() -> None:
    async def drip(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(400):
                await resp.write(b"# still here\n")
                await asyncio.sleep(0.05)  # the server being slow, not the test waiting
        return resp

    async with serve_handler(drip) as url:
        col, _ = await scrape_until(url, 1, interval=0.05, timeout=0.3)
    s = col.scrapes[0]
    assert not s.ok and "no answer within 0.3 s" in s.error and 0.25 < s.latency_s < 3


async def test_a_stopped_engine_is_failed_scrapes_and_a_restarted_one_a_counter_reset() -> None:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    url = f"http://127.0.0.1:{port}/metrics"
    col = Collector(10**9)
    stop = asyncio.Event()
    scraper = Scraper(url, adapter_for("vllm"), clock=Clock(), publish=col, interval=0.02, engine_id="e1")
    task = asyncio.create_task(scraper.run(stop))
    async with serve_handler(Server([AFTER_LOAD]).handle, port=port):
        await col.wait_until(lambda: any(s.ok for s in col.scrapes))
    n = len(col.scrapes)
    await col.wait_until(lambda: sum(not s.ok for s in col.scrapes[n:]) >= 3)
    down = [s for s in col.scrapes[n:] if not s.ok]
    assert all("cannot connect" in s.error and s.samples == () and s.engine_id == "e1" for s in down)
    m = len(col.scrapes)
    async with serve_handler(Server([IDLE]).handle, port=port):
        await col.wait_until(lambda: any(s.ok for s in col.scrapes[m:]))
    stop.set()
    await asyncio.wait_for(task, 5)
    back = next(s for s in col.scrapes[m:] if s.ok)
    assert back.counter_reset and back.engine_id == "e1"
    assert any("recovered" in g.text for g in col.logs) and any("went backwards" in g.text for g in col.logs)


DCGM = (FIX / "dcgm-exporter" / "metrics_2gpu_k8s.txt").read_text()


async def test_gpu_metrics_join_the_engine_scrape_and_a_failing_gpu_source_costs_only_them() -> None:
    gpu_ok = {"on": True}

    async def gpu(request: web.Request) -> web.Response:
        if not gpu_ok["on"]:
            return web.Response(status=500, text="dcgm down")
        return web.Response(text=DCGM, content_type="text/plain")

    srv = Server([IDLE])
    app = web.Application()
    app.router.add_get("/metrics", srv.handle)
    app.router.add_get("/gpu", gpu)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    try:
        col, _ = await scrape_until(base + "/metrics", 2, interval=0.02, gpu_metrics_url=base + "/gpu")
        gpu_ok["on"] = False
        col2, _ = await scrape_until(base + "/metrics", 3, interval=0.02, gpu_metrics_url=base + "/gpu")
    finally:
        await runner.cleanup()
    s = col.scrapes[0]
    assert s.ok and {"gpu_util_percent", "gpu_fb_used_mib"}.isdisjoint(s.missing)
    util = {m.labels: m.value for m in s.samples if m.name == "gpu_util_percent"}
    assert util == {(("gpu", "0"),): 97.0, (("gpu", "1"),): 0.0}
    assert all(m.t == s.t for m in s.samples)
    assert any(m.name == "requests_running" for m in s.samples)  # the engine's own samples are all there
    assert all(x.ok and "gpu_util_percent" in x.missing for x in col2.scrapes)
    warn = [g for g in col2.logs if "GPU metrics failed" in g.text]
    assert len(warn) == 1 and "HTTP 500" in warn[0].text


class FakeGpu:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def read(self, t: float) -> list:
        from rllmtop.events import MetricSample

        if self.fail:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        return [MetricSample(t, "gpu_power_watts", 300.0, (("gpu", "0"),))]


async def test_a_local_gpu_reader_is_read_each_poll_and_its_failure_is_logged() -> None:
    srv = Server([IDLE])
    async with serve(srv) as url:
        col, _ = await scrape_until(url, 2, interval=0.02, gpu=FakeGpu())
        bad, _ = await scrape_until(url, 2, interval=0.02, gpu=FakeGpu(fail=True))
    assert all(any(m.name == "gpu_power_watts" for m in s.samples) for s in col.scrapes)
    assert all(s.ok and "gpu_power_watts" in s.missing for s in bad.scrapes)
    assert any("GPU_IS_LOST" in g.text for g in bad.logs)


# ------------------------------------------------------------------------------------------ a fleet


async def test_a_fleet_shares_one_loop_polls_never_overlap_and_a_slow_engine_delays_no_other() -> None:
    servers = [Server([IDLE]) for _ in range(7)] + [Server([IDLE], delay=0.4)]
    async with contextlib.AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(serve(s)) for s in servers]
        col = Collector(10**9)
        stop = asyncio.Event()
        scrapers = [
            Scraper(u, adapter_for("vllm"), clock=Clock(), publish=col, interval=0.1, engine_id=f"e{i}")
            for i, u in enumerate(urls)
        ]
        task = asyncio.create_task(run_scrapers(scrapers, stop))
        await col.wait_until(
            lambda: min(sum(s.engine_id == f"e{i}" for s in col.scrapes) for i in range(7)) >= 8, 20
        )
        stop.set()
        await asyncio.wait_for(task, 5)
    assert all(s.max_active == 1 for s in servers)
    assert {s.engine_id for s in col.scrapes} == {f"e{i}" for i in range(8)}
    slow = [s for s in col.scrapes if s.engine_id == "e7"]
    assert len(slow) < 8  # the slow engine polled less often; the others were not held up by it
    assert all(s.client is None for s in scrapers)  # the shared client was handed back
    first = sorted(min(s.t - s.latency_s for s in col.scrapes if s.engine_id == f"e{i}") for i in range(7))
    assert len({round(x, 3) for x in first}) == 7  # first polls spread over the interval, not all at once


def test_a_fleet_too_big_to_poll_directly_is_warned_about() -> None:
    """bench_scrape: a full vLLM /metrics poll costs ~4 ms of CPU; 64 engines at 4 Hz took a whole core
    (heartbeat lateness p99 112 ms), which the load generator shares. Past a quarter of a core: a warning
    naming the way out; below it: nothing."""
    from rllmtop.metrics.scrape import scrape_cost_warning

    assert scrape_cost_warning(1, 0.25) is None and scrape_cost_warning(12, 0.25) is None
    w = scrape_cost_warning(64, 0.25)
    assert w is not None and "64 engines" in w and "--prometheus" in w and "--scrape-interval" in w
    assert scrape_cost_warning(64, 2.0) is None  # 32 polls/s: ~13% of a core
    assert scrape_cost_warning(0, 0.25) is None
