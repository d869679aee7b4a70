"""A fleet of 64 engines read through a real Prometheus: what one poll costs, on both sides.

    python bench/bench_prometheus.py                  # about a minute
    python bench/bench_prometheus.py --engines 16 --polls 50

A real Prometheus (``/usr/bin/prometheus``, Debian 2.42) scrapes ``--engines`` targets every second, each
serving the same real vLLM 0.32 capture (54 KB; ``bench_scrape``'s target server, a separate process
whose CPU is not counted). Then, in this process, rllmtop's :class:`PrometheusSource` as a session
uses it (the fleet adapter, a job selector, one HTTP client):

- ``poll``: ``poll_once`` ``--polls`` times, 0.25 s apart: wall latency (median / p95 / max), CPU of
  rllmtop's process per poll, and the CPU the queries cost Prometheus per poll (its CPU while polling at
  4 Hz, less its CPU scraping alone over as long, divided by the polls). Then the same with scalar
  series only (what the histogram buckets, most of the series, cost).
- ``run``: ``PrometheusSource.run`` at 1 Hz (the default ``interval``) and at 4 Hz for ``--seconds``:
  rllmtop CPU per second of wall time, polls per second, and the lateness of a 5 ms heartbeat on the
  same event loop (what the TUI and the load generator would feel).
- ``backfill``: the attach backfill of the 120 s chart window (one range query for the series, one for
  ``up``), with however much history Prometheus holds by then (printed): latency, CPU, scrapes.

Figures are noisy on a shared machine: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "metrics"))

from bench_scrape import CAPTURE, load, start_targets  # noqa: E402  (the target server process)
from prometheus_procs import (  # noqa: E402  (start/stop by PID)
    get_json,
    have_prometheus,
    start_prometheus,
    stop,
    wait_targets,
)

SELECTOR = '{job="engines"}'
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def source(url: str, interval: float = 1.0):  # type: ignore[no-untyped-def]
    from rllmtop.clock import Clock
    from rllmtop.metrics.prometheus import PrometheusSource

    return PrometheusSource(url, clock=Clock(), publish=lambda r: None, selector=SELECTOR, interval=interval)


async def bench_poll(url: str, prom_pid: int, polls: int, *, histograms: bool = True) -> dict[str, float]:
    import httpx

    from rllmtop.metrics.prometheus import series_expr

    src = source(url)
    if not histograms:  # what the histogram buckets cost: the same poll, scalar series only
        src.expr = series_expr(src.adapter, SELECTOR, histograms=False)
    async with httpx.AsyncClient(timeout=10) as client:
        src.client = client
        first = await src.poll_once()  # warm: engines found, connection open
        # Prometheus alone (scraping its targets), over as long as the polls will take
        span = polls * 0.25
        p0 = proc_cpu(prom_pid)
        await asyncio.sleep(span)
        idle = proc_cpu(prom_pid) - p0
        lat, cpu = [], []
        p0, w0 = proc_cpu(prom_pid), time.perf_counter()
        got = first
        for _ in range(polls):
            c0, t0 = time.process_time(), time.perf_counter()
            got = await src.poll_once()
            cpu.append(time.process_time() - c0)
            lat.append(time.perf_counter() - t0)
            await asyncio.sleep(max(0.0, 0.25 - (time.perf_counter() - t0)))
        busy = proc_cpu(prom_pid) - p0
        wall = time.perf_counter() - w0
    return {
        "engines": len(first),
        "ok": sum(s.ok for s in got),
        "series": sum(len(s.samples) + len(s.histograms) for s in got),
        "lat_med": statistics.median(lat) * 1e3,
        "lat_p95": pct(lat, 0.95) * 1e3,
        "lat_max": max(lat) * 1e3,
        "cpu_med": statistics.median(cpu) * 1e3,
        "cpu_p95": pct(cpu, 0.95) * 1e3,
        "prom_per_poll": max(0.0, busy - idle * wall / span) / polls * 1e3,
        "prom_idle_per_s": idle / span,
    }


async def bench_run(url: str, interval: float, seconds: float) -> dict[str, float]:
    from rllmtop.events import Scrape

    n = 0
    src = source(url, interval)

    def publish(rec: object) -> None:
        nonlocal n
        n += isinstance(rec, Scrape)

    src.publish = publish
    stop_ev = asyncio.Event()
    task = asyncio.create_task(src.run(stop_ev))
    await asyncio.sleep(1.5)  # warm-up: engines found, first polls done
    lags: list[float] = []
    c0, w0, n0, p0 = time.process_time(), time.perf_counter(), n, src.polls
    end = w0 + seconds
    while time.perf_counter() < end:  # the heartbeat whose lateness we measure
        t = time.perf_counter()
        await asyncio.sleep(0.005)
        lags.append(time.perf_counter() - t - 0.005)
    c1, w1 = time.process_time(), time.perf_counter()
    polls, scrapes = src.polls - p0, n - n0
    stop_ev.set()
    await task
    return {
        "cpu_per_s": (c1 - c0) / (w1 - w0),
        "polls_per_s": polls / (w1 - w0),
        "scrapes_per_s": scrapes / (w1 - w0),
        "lag_p99": pct(lags, 0.99) * 1e3,
        "lag_max": max(lags) * 1e3,
    }


async def bench_backfill(url: str, window: float) -> dict[str, float]:
    src = source(url)
    c0, w0 = time.process_time(), time.perf_counter()
    back = await src.backfill(window)
    c1, w1 = time.process_time(), time.perf_counter()
    return {
        "scrapes": len(back),
        "engines": len({s.engine_id for s in back}),
        "lat": (w1 - w0) * 1e3,
        "cpu": (c1 - c0) * 1e3,
    }


def history_s(url: str) -> float:
    doc = get_json(url + '/api/v1/query?query=min(count_over_time(up{job="engines"}[10m]))')
    res = doc["data"]["result"]  # type: ignore[index]
    return float(res[0]["value"][1]) if res else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", type=int, default=64)
    ap.add_argument("--polls", type=int, default=30, help="polls measured (0.25 s apart)")
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per run interval")
    ap.add_argument("--history", type=float, default=20.0, help="seconds of history before the backfill")
    a = ap.parse_args()
    if not have_prometheus():
        print("skipped: no /usr/bin/prometheus (apt-get install -y prometheus)")
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        targets, ports = start_targets(a.engines, CAPTURE.read_bytes(), tmp)
        prom = None
        try:
            prom, url = start_prometheus(tmp, [f"127.0.0.1:{p}" for p in ports])
            wait_targets(url, a.engines, deadline=60)
            end = time.monotonic() + a.history + 30
            while history_s(url) < a.history and time.monotonic() < end:
                time.sleep(0.5)  # Prometheus gathering history (polled, with a deadline)
            print(f"{a.engines} engines (vLLM 0.32 capture each), Prometheus 1 s scrape ({load()})")

            for histograms in (True, False):
                r = asyncio.run(bench_poll(url, prom.pid, a.polls, histograms=histograms))
                print(
                    f"poll{'' if histograms else ' (scalars only, no histogram buckets)'}: {r['engines']} engines, {r['ok']} ok, {r['series']} series; latency median "
                    f"{r['lat_med']:.1f} ms, p95 {r['lat_p95']:.1f}, max {r['lat_max']:.1f}; rllmtop CPU median "
                    f"{r['cpu_med']:.1f} ms (p95 {r['cpu_p95']:.1f}) per poll; Prometheus CPU "
                    f"{r['prom_per_poll']:.1f} ms per poll (scraping alone: {r['prom_idle_per_s'] * 100:.0f}% "
                    "of a core)"
                )
            for interval in (1.0, 0.25):
                r = asyncio.run(bench_run(url, interval, a.seconds))
                print(
                    f"run at {1 / interval:g} Hz: rllmtop CPU {r['cpu_per_s'] * 100:.1f}% of a core, "
                    f"{r['polls_per_s']:.2f} polls/s ({r['scrapes_per_s']:.0f} engine scrapes/s), heartbeat "
                    f"lateness p99 {r['lag_p99']:.1f} ms, max {r['lag_max']:.1f} ms"
                )
            held = history_s(url)
            r = asyncio.run(bench_backfill(url, 120.0))
            print(
                f"backfill 120 s window ({held:.0f} s of history held): {r['scrapes']} scrapes of "
                f"{r['engines']} engines in {r['lat']:.0f} ms, rllmtop CPU {r['cpu']:.0f} ms"
            )
        finally:
            if prom is not None:
                stop(prom)
            stop(targets)
    print(f"({load()})")


if __name__ == "__main__":
    main()
