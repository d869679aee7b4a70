"""Real processes and small servers for the fleet tests: simulated engines, an SGLang-shaped engine,
vllm-router. Everything on 127.0.0.1; every process ended by its PID; every wait has a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from rllmtop.events import Record, Scrape, SessionState, StateEvent
from tests.metrics.prometheus_procs import free_port, long_requests, start_sim, stop

__all__ = [
    "SGLANG_METRICS",
    "Collector",
    "free_port",
    "long_requests",
    "router_binary",
    "sglang_engine",
    "sims",
    "sims_each",
    "start_router",
    "stop",
]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SGLANG_METRICS = (FIXTURES / "sglang-0.5" / "metrics_dp2_tp2.txt").read_text()


@contextlib.contextmanager
def sims(n: int, *args: str) -> Iterator[list[tuple[subprocess.Popen[bytes], str]]]:
    """``n`` simulators started in parallel (``args`` for each; ``{i}`` in an arg is the index)."""
    with sims_each([[a.replace("{i}", str(i)) for a in args] for i in range(n)]) as started:
        yield started


@contextlib.contextmanager
def sims_each(arg_lists: list[list[str]]) -> Iterator[list[tuple[subprocess.Popen[bytes], str]]]:
    """One simulator per argument list, started in parallel, in that order; all stopped at the end (and
    the started ones when another fails to start)."""
    with ThreadPoolExecutor(len(arg_lists)) as pool:
        futures = [pool.submit(start_sim, *args) for args in arg_lists]
        started = []
        errors = []
        for f in futures:
            try:
                started.append(f.result())
            except Exception as e:
                errors.append(e)
    try:
        if errors:
            raise errors[0]
        yield started
    finally:
        for p, _ in started:
            stop(p)


@contextlib.asynccontextmanager
async def sglang_engine(model: str = "qwen3-sg") -> AsyncIterator[str]:
    """An SGLang-shaped server (the /server_info, /v1/models and /metrics of SGLang 0.5, from the
    written fixture): its base URL."""

    async def server_info(request: web.Request) -> web.Response:
        return web.json_response({"version": "0.5.2", "model_path": "/models/" + model, "tp_size": 2})

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": model, "owned_by": "sglang", "object": "model"}]})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=SGLANG_METRICS, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/server_info", server_info)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def router_binary() -> str | None:
    """vllm-router from this interpreter's environment (pip install vllm-router==0.1.17), or on PATH."""
    here = Path(sys.executable).with_name("vllm-router")
    if os.access(here, os.X_OK):
        return str(here)
    return shutil.which("vllm-router")


def start_router(
    workers: list[str], *, policy: str = "round_robin", deadline: float = 30.0, log: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """vllm-router in front of ``workers`` (already serving); returns once ``/health`` answers 200.

    The router does not listen until every worker passed its health check (it checks every
    ``--worker-startup-check-interval`` s, 30 by default: 1 here), and exits when
    ``--worker-startup-timeout-secs`` passes first. Runtime health checks run every 60 s by default;
    ``--health-check-interval-secs 1`` here, so a worker that stops is noticed within seconds."""
    binary = router_binary()
    assert binary is not None, "vllm-router is not installed"
    port = free_port()
    out = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115 (closed by stop())
    proc = subprocess.Popen(
        [
            binary,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--worker-urls", *workers,
            "--policy", policy,
            "--worker-startup-check-interval", "1",
            "--worker-startup-timeout-secs", str(int(deadline)),
            "--health-check-interval-secs", "1",
            "--log-level", "warning",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + deadline + 5
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm-router exited with code {proc.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url + "/health", timeout=1) as r:
            if r.status == 200:
                return proc, url
        time.sleep(0.05)  # polling a process we cannot await, with a deadline
    stop(proc)
    raise RuntimeError(f"vllm-router was not ready within {deadline:g} s")


class Collector:
    """A session sink keeping every record, with events to await: the session RUNNING, a scrape from
    each of a set of engines."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.running = asyncio.Event()
        self._changed = asyncio.Event()

    def __call__(self, rec: Record) -> None:
        self.records.append(rec)
        if isinstance(rec, StateEvent) and rec.state is SessionState.RUNNING:
            self.running.set()
        self._changed.set()

    def scrapes(self, engine: str | None = None) -> list[Scrape]:
        return [
            r for r in self.records if isinstance(r, Scrape) and (engine is None or r.engine_id == engine)
        ]

    async def until(self, cond: object, timeout: float = 30.0) -> None:
        """Until ``cond()`` is true (checked after each record)."""
        assert callable(cond)
        async with asyncio.timeout(timeout):
            while not cond():
                self._changed.clear()
                await self._changed.wait()
