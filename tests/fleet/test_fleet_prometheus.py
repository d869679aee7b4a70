"""A session attached through a real Prometheus (Debian's prometheus 2.42) scraping three simulated
engines: every engine appears (discovered from the series), the history of the chart window is
backfilled first, values agree with rllmtop's own direct scrape within one Prometheus scrape interval,
and an engine that stops shows as down/stale, never as zeros, in the session, the view and the
recording. Skipped where ``/usr/bin/prometheus`` is missing. Every process is ended by its PID."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from rllmtop.clock import Clock
from rllmtop.commands import build_session
from rllmtop.engines.adapters import adapter_for
from rllmtop.events import Record, Scrape, SessionState
from rllmtop.metrics.scrape import Scraper, run_scrapers
from rllmtop.record.reader import open_recording
from rllmtop.scenario import EngineSpec, PrometheusSpec
from rllmtop.view import LiveView
from tests.fleet.fleet_procs import Collector, long_requests, sims, stop
from tests.metrics.prometheus_procs import get_json, have_prometheus, start_prometheus, wait_targets

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.skipif(
        not have_prometheus(), reason="needs Debian's prometheus (apt-get install -y prometheus)"
    ),
    pytest.mark.timeout(60),
]

E0 = (("engine", "0"),)
GAUGES = ("kv_cache_usage", "requests_running", "requests_waiting")
PROM_SCRAPE = 1.0  # Prometheus's scrape_interval in this test


def gauge(s: Scrape, name: str) -> float | None:
    return next((m.value for m in s.samples if m.name == name and m.labels == E0), None)


def _history(purl: str, instances: list[str], points: int) -> bool:
    sel = "|".join(instances)
    doc = get_json(f'{purl}/api/v1/query?query=count_over_time(up{{instance=~"{sel}"}}[1m])')
    got = {r["metric"]["instance"]: float(r["value"][1]) for r in doc["data"]["result"]}  # type: ignore[index]
    return len(got) == len(instances) and min(got.values()) >= points


async def test_a_session_through_prometheus_shows_every_engine_agrees_and_shows_a_stopped_one_down(
    tmp_path: Path,
) -> None:
    with sims(3, "--seed", "{i}", "--max-num-seqs", "3") as started:
        bases = [b for _, b in started]
        insts = [b.split("//")[1] for b in bases]
        prom, purl = start_prometheus(tmp_path, insts)
        tasks: list[asyncio.Task[None]] = []
        try:
            tasks = await long_requests(bases[0], 5)  # engine 0: 3 running, 2 waiting for the whole test
            await asyncio.to_thread(wait_targets, purl, 3)
            deadline = time.monotonic() + 20
            while not await asyncio.to_thread(_history, purl, insts, 3):  # history for the backfill
                assert time.monotonic() < deadline, "Prometheus kept no history"
                await asyncio.sleep(0.2)  # polling Prometheus's store, with a deadline

            # rllmtop's own direct scrape of engine 0, alongside (unix times compared)
            direct_clock = Clock()
            direct: list[Scrape] = []
            arrived = asyncio.Event()

            def publish(rec: Record) -> None:
                if isinstance(rec, Scrape):
                    direct.append(rec)
                    arrived.set()

            async def direct_covers(lo: float, hi: float) -> None:
                """Until the direct scrape has samples from before ``lo`` to after ``hi`` (unix)."""
                while not (
                    direct
                    and direct_clock.started_at + direct[0].t < lo
                    and direct_clock.started_at + direct[-1].t > hi
                ):
                    arrived.clear()
                    await arrived.wait()

            stop_direct = asyncio.Event()
            scraper = Scraper(
                bases[0] + "/metrics",
                adapter_for("sim"),
                clock=direct_clock,
                publish=publish,
                interval=0.1,
                engine_id=insts[0],
            )
            direct_task = asyncio.create_task(run_scrapers([scraper], stop_direct))
            # the direct history covers a Prometheus scrape interval before the session's first poll
            begun = time.time()
            await asyncio.wait_for(direct_covers(begun + 1.0, begun + PROM_SCRAPE + 1.0), 10)

            spec = EngineSpec(
                kind="url", prometheus=PrometheusSpec(purl, selector='{job="engines"}', interval=0.5)
            )
            db = tmp_path / "prom.db"
            session = build_session(None, mode="attach", engine=spec, record=db, duration=50)
            sink = Collector()
            view = LiveView(summary_interval=0)
            session.add_sink(sink)
            session.add_sink(view.handle)
            run = asyncio.create_task(session.run())
            await asyncio.wait_for(sink.running.wait(), 20)

            def live(i: int) -> list[Scrape]:
                return [s for s in sink.scrapes(insts[i]) if s.t > 0]

            await sink.until(lambda: all(len([s for s in live(i) if s.ok]) >= 4 for i in range(3)))
            t0 = session.clock.started_at
            # agreement: each value read through Prometheus is one the direct scrape saw within one
            # Prometheus scrape interval before the poll (plus the poll's own latency)
            checked = 0
            polled = [s for s in live(0) if s.ok][-4:]
            await asyncio.wait_for(direct_covers(time.time(), t0 + polled[-1].t + 0.2), 10)
            for s in polled:
                at = t0 + s.t
                window = [
                    d
                    for d in direct
                    if d.ok and at - PROM_SCRAPE - 0.5 <= direct_clock.started_at + d.t <= at + 0.1
                ]
                assert window, "no direct scrape within one scrape interval"
                for name in GAUGES:
                    seen = [v for v in (gauge(d, name) for d in window) if v is not None]
                    got = gauge(s, name)
                    assert got is not None and min(seen) <= got <= max(seen), (name, got, seen)
                checked += 1
                assert gauge(s, "requests_running") == 3.0 and gauge(s, "requests_waiting") == 2.0
            assert checked == 4
            assert all(gauge(s, "requests_running") == 0.0 for s in live(1) if s.ok)

            # the stopped engine: down and stale, no samples; the view shows it down with no readings
            stop(started[2][0])
            await sink.until(lambda: any(not s.ok for s in live(2)), timeout=20)
            row = {e.id: e for e in view.snapshot(session.clock.now()).engines}[insts[2]]
            assert row.health == "down" and row.kv is None and row.running is None
            assert row.error and insts[2] in row.error
            assert {e.id: e.health for e in view.snapshot(session.clock.now()).engines}[insts[0]] == "up"
            session.stop()
            outcome = await asyncio.wait_for(run, 20)
            assert outcome.state is SessionState.INTERRUPTED
            stop_direct.set()
            await asyncio.wait_for(direct_task, 5)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            stop(prom)

    rec = open_recording(db)
    infos = {e.id: e for e in rec.info.engines}
    assert set(infos) == set(insts) and all(
        e.source == "prometheus" and e.kind == "sim" for e in infos.values()
    )
    assert ("prometheus", purl) in rec.info.extra
    scrapes = rec.scrapes(full=True)
    back = [s for s in scrapes if s.t < 0]  # the backfilled window, before the session started
    assert {s.engine_id for s in back} == set(insts)
    assert [s.t for s in back] == sorted(s.t for s in back)
    assert any(gauge(s, "requests_running") == 3.0 for s in back if s.engine_id == insts[0])
    after = [s for s in scrapes if s.engine_id == insts[2] and s.t > 0]
    first_down = next(i for i, s in enumerate(after) if not s.ok)
    assert all(not s.ok and s.stale and not s.samples for s in after[first_down:])  # down, never zeros
    assert any(s.ok for s in scrapes if s.engine_id == insts[0] and s.t > after[first_down].t)
