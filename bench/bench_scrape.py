"""Scrape costs: big bodies (before/after), a fleet at 4 Hz, one Prometheus poll for 64 engines.

    python bench/bench_scrape.py                      # everything (about two minutes)
    python bench/bench_scrape.py --only fleet --seconds 10

- ``body``: one process scrapes a big ``/metrics`` over HTTP 5 times: (a) a real vLLM 0.32 capture plus
  100,000 series of families rllmtop does not read, (b) the capture plus 100,000 series of a family it
  does read (``vllm:request_success_total`` with an exploding label); padded with comments to 20 MB
  (over the 16 MiB cap: refused) and to 15 MiB (under it: filtered and parsed). Peak RSS and CPU per scrape, for
  the code of this branch and for the code it replaced (git ``BASE``: ``resp.text`` + ``splitlines`` +
  prometheus-client's parser), each in a fresh process.
- ``fleet``: 1, 16 and 64 engines scraped at 4 Hz by ``run_scrapers`` (one event loop, one client), each
  engine a synthetic target serving the same real vLLM capture (54 KB) from a separate server process
  (its CPU is not counted). CPU seconds of the scraping process per second of wall time, and the worst
  lateness of a 5 ms heartbeat on the same loop.
- ``prometheus``: a real Prometheus (``/usr/bin/prometheus``) scrapes 64 such targets every second;
  ``PrometheusSource.poll_once`` for the 64 engines: latency and CPU of rllmtop's process per poll.

Figures are noisy on a shared machine: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "metrics"))  # prometheus_procs: start/stop by PID

CAPTURE = ROOT / "tests" / "fixtures" / "vllm-0.32-cpu" / "metrics_after_load.txt"
BASE = "2f3f640"  # the commit before this work: its prom.py / scrape.py are the "before"


def load() -> str:
    return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ---------------------------------------------------------------------------------------------- targets


def make_body(kind: str, size: int, n: int = 100_000) -> bytes:
    cap = CAPTURE.read_bytes()
    if kind == "irrelevant":
        extra = b"".join(
            b'node_filesystem_avail_bytes{device="/dev/sd%d",fstype="ext4",mountpoint="/mnt/volume-%08d"} %d\n'
            % (i % 26, i, 10**9 + i)
            for i in range(n)
        )
    else:
        extra = b"".join(
            b'vllm:request_success_total{engine="0",finished_reason="reason-%08d",model_name="tiny-rllm-model"} %d\n'
            % (i, i)
            for i in range(n)
        )
    body = cap + extra
    pad = size - len(body)
    if pad > 0:  # to ``size`` with comment lines (skipped by every parser)
        body += (b"# " + b"x" * 1000 + b"\n") * (pad // 1003)
    return body


def serve_main(n_ports: int, body_path: str) -> None:
    """A server process: ``n_ports`` listeners serving one static /metrics body; prints the ports."""
    from aiohttp import web

    body = Path(body_path).read_bytes()

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/plain")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        ports = []
        for _ in range(n_ports):
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        print(json.dumps(ports), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def start_targets(n: int, body: bytes, tmp: Path) -> tuple[subprocess.Popen[bytes], list[int]]:
    path = tmp / f"body-{len(body)}.txt"
    path.write_bytes(body)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(n), "--body", str(path)], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    ports = json.loads(proc.stdout.readline())
    return proc, ports


# ---------------------------------------------------------------------------------------------- body


def old_modules() -> tuple[types.ModuleType, types.ModuleType]:
    """prom.py and scrape.py as they were at BASE, importable side by side with today's."""
    mods = []
    for name in ("prom", "scrape"):
        src = subprocess.run(
            ["git", "show", f"{BASE}:rllmtop/metrics/{name}.py"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            text=True,
        ).stdout
        src = src.replace("from rllmtop.metrics.prom import", "from rllmtop_old_prom import")
        mod = types.ModuleType(f"rllmtop_old_{name}")
        sys.modules[mod.__name__] = mod
        exec(compile(src, f"{BASE}:{name}.py", "exec"), mod.__dict__)
        mods.append(mod)
    return mods[0], mods[1]


def body_child(which: str, url: str, polls: int) -> None:
    """In a fresh process: scrape ``url`` ``polls`` times; print peak RSS growth and CPU per scrape."""
    from rllmtop.clock import Clock
    from rllmtop.engines.adapters import adapter_for

    if which == "before":
        _, old_scrape = old_modules()
        make = lambda pub: old_scrape.Scraper(url, adapter_for("vllm"), clock=Clock(), publish=pub)  # noqa: E731
    else:
        from rllmtop.metrics.scrape import Scraper

        make = lambda pub: Scraper(url, adapter_for("vllm"), clock=Clock(), publish=pub)  # noqa: E731
    got: list = []
    scraper = make(got.append)

    async def main() -> None:
        import httpx  # noqa: F401  (imported by both before the first poll: part of the baseline)

        rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        await scraper.scrape_once()  # warm (connections, imports)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(polls):
            await scraper.scrape_once()
        c1, w1 = time.process_time(), time.perf_counter()
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        s = [r for r in got if hasattr(r, "ok")][-1]
        print(
            json.dumps(
                {
                    "rss_peak_mb": rss1 / 1024,
                    "rss_start_mb": rss_start / 1024,
                    "rss_growth_mb": (rss1 - rss0) / 1024,
                    "cpu_ms": (c1 - c0) / polls * 1e3,
                    "wall_ms": (w1 - w0) / polls * 1e3,
                    "ok": s.ok,
                    "series": len(s.samples) + len(s.histograms),
                    "dropped": s.dropped_series,
                    "error": s.error[:80],
                }
            )
        )

    asyncio.run(main())


def bench_body(tmp: Path) -> None:
    print(f"== body: big /metrics over HTTP, 5 scrapes, fresh process each ({load()})")
    for kind, size in (
        ("irrelevant", 20 * 10**6),
        ("mapped", 20 * 10**6),
        ("irrelevant", 15 * 2**20),
        ("mapped", 15 * 2**20),
    ):
        body = make_body(kind, size)
        kind = f"{kind} {len(body) / 2**20:.1f} MiB"
        proc, (port,) = start_targets(1, body, tmp)
        try:
            for which in ("before", "after"):
                out = subprocess.run(
                    [sys.executable, __file__, "--body-child", which, f"http://127.0.0.1:{port}/metrics"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                r = json.loads(out.strip().splitlines()[-1])
                print(
                    f"  {kind:22s} {which:6s}: peak RSS {r['rss_peak_mb']:6.1f} MB (at start "
                    f"{r['rss_start_mb']:.0f}), CPU {r['cpu_ms']:7.1f} ms/scrape, "
                    f"wall {r['wall_ms']:7.1f} ms; ok={r['ok']} series kept {r['series']} dropped {r['dropped']}"
                    + (f" ({r['error'][-40:]})" if not r["ok"] else "")
                )
        finally:
            from prometheus_procs import stop

            stop(proc)
    print(f"  ({load()})")


# ---------------------------------------------------------------------------------------------- fleet


async def _fleet(ports: list[int], seconds: float) -> dict[str, float]:
    from rllmtop.clock import Clock
    from rllmtop.engines.adapters import adapter_for
    from rllmtop.events import Scrape
    from rllmtop.metrics.scrape import Scraper, run_scrapers

    clock = Clock()
    n_ok = 0
    n = 0

    def publish(rec: object) -> None:
        nonlocal n_ok, n
        if isinstance(rec, Scrape):
            n += 1
            n_ok += rec.ok

    scrapers = [
        Scraper(
            f"http://127.0.0.1:{p}/metrics", adapter_for("vllm"), clock=clock, publish=publish, interval=0.25
        )
        for p in ports
    ]
    stop = asyncio.Event()
    task = asyncio.create_task(run_scrapers(scrapers, stop))
    await asyncio.sleep(1.0)  # warm-up: connections open, first polls spread
    lags: list[float] = []
    c0, w0, n0 = time.process_time(), time.perf_counter(), n
    end = w0 + seconds
    while time.perf_counter() < end:  # the heartbeat whose lateness we measure
        t = time.perf_counter()
        await asyncio.sleep(0.005)
        lags.append(time.perf_counter() - t - 0.005)
    c1, w1, n1 = time.process_time(), time.perf_counter(), n
    stop.set()
    await task
    return {
        "cpu_per_s": (c1 - c0) / (w1 - w0),
        "polls_per_s": (n1 - n0) / (w1 - w0),
        "ok": n_ok / max(n, 1),
        "lag_p99_ms": sorted(lags)[int(0.99 * len(lags))] * 1e3,
        "lag_max_ms": max(lags) * 1e3,
    }


def bench_fleet(tmp: Path, seconds: float) -> None:
    from prometheus_procs import stop

    print(f"== fleet: engines scraped at 4 Hz, one loop, one client ({load()})")
    proc, ports = start_targets(64, CAPTURE.read_bytes(), tmp)
    try:
        for n in (1, 16, 64):
            r = asyncio.run(_fleet(ports[:n], seconds))
            print(
                f"  {n:3d} engines: CPU {r['cpu_per_s'] * 100:5.1f}% of a core ({r['cpu_per_s'] / n * 1e3:.2f} ms/s "
                f"per engine), {r['polls_per_s']:.0f} polls/s, ok {r['ok']:.0%}, heartbeat lateness "
                f"p99 {r['lag_p99_ms']:.1f} ms max {r['lag_max_ms']:.1f} ms"
            )
    finally:
        stop(proc)
    print(f"  ({load()})")


# ---------------------------------------------------------------------------------------------- prometheus


async def _prom_polls(url: str, n: int) -> dict[str, float]:
    from rllmtop.clock import Clock
    from rllmtop.metrics.prometheus import PrometheusSource

    src = PrometheusSource(url, clock=Clock(), publish=lambda r: None)
    import httpx

    async with httpx.AsyncClient(timeout=10) as client:
        src.client = client
        first = await src.poll_once()
        lat, cpu = [], []
        for _ in range(n):
            c0, w0 = time.process_time(), time.perf_counter()
            got = await src.poll_once()
            cpu.append(time.process_time() - c0)
            lat.append(time.perf_counter() - w0)
            await asyncio.sleep(0.2)
    return {
        "engines": len(first),
        "ok": sum(s.ok for s in got),
        "series": sum(len(s.samples) + len(s.histograms) for s in got),
        "lat_ms": statistics.median(lat) * 1e3,
        "lat_max_ms": max(lat) * 1e3,
        "cpu_ms": statistics.median(cpu) * 1e3,
    }


def bench_prometheus(tmp: Path) -> None:
    from prometheus_procs import have_prometheus, start_prometheus, stop, wait_targets

    if not have_prometheus():
        print("== prometheus: skipped (no /usr/bin/prometheus; apt-get install -y prometheus)")
        return
    print(f"== prometheus: one poll of 64 engines through a real Prometheus ({load()})")
    targets, ports = start_targets(64, CAPTURE.read_bytes(), tmp)
    prom = None
    try:
        prom, url = start_prometheus(tmp, [f"127.0.0.1:{p}" for p in ports])
        wait_targets(url, 64, deadline=60)
        time.sleep(2.5)  # two more scrape rounds so every target has its series (not a stand-in for an event)
        r = asyncio.run(_prom_polls(url, 20))
        print(
            f"  {r['engines']} engines, {r['ok']} ok, {r['series']} series per poll: latency median "
            f"{r['lat_ms']:.1f} ms (max {r['lat_max_ms']:.1f}), rllmtop CPU median {r['cpu_ms']:.1f} ms per poll"
        )
    finally:
        if prom is not None:
            stop(prom)
        stop(targets)
    print(f"  ({load()})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="body,fleet,prometheus")
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per fleet size")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--body", help=argparse.SUPPRESS)
    ap.add_argument("--body-child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        serve_main(a.serve, a.body)
        return
    if a.body_child:
        body_child(a.body_child[0], a.body_child[1], 5)
        return
    only = set(a.only.split(","))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "body" in only:
            bench_body(tmp)
        if "fleet" in only:
            bench_fleet(tmp, a.seconds)
        if "prometheus" in only:
            bench_prometheus(tmp)
    print(f"pid {os.getpid()} done")


if __name__ == "__main__":
    main()
