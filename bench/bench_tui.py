"""TUI cost: CPU per refresh with a big history, CPU of an idle monitor, and the view's memory.

    python bench/bench_tui.py                                  # 160x48 and 80x24, 10 s per case
    python bench/bench_tui.py --size 160x48 --seconds 20 --idle-seconds 20
    python bench/bench_tui.py --size 160x48 --engines 64       # a fleet: 64 engines scraped at 4 Hz
    python bench/bench_tui.py --memory                         # the view's bytes per finished request

Workload (the issue's target): 10,000 finished requests and one hour of 4 Hz engine scrapes already in the
view (window 120 s and 3600 s), 200 requests in flight, then a new scrape and token progress every 250 ms
while the app refreshes at its own 4 Hz. A frame = the refresh (``LiveView.snapshot`` + handing it to
every widget inside ``batch_update``) + the repaint Textual's screen-update timer does afterwards (layout
if needed, render the dirty widgets, write to the driver). Both are timed with the main thread's CPU clock
(``time.thread_time``), so being descheduled on a busy machine does not count; "process CPU" is everything
the process did over the wall time (Textual's own loop, the feeder, GC). The summary job (ASU, straggler
baselines, distribution; in a worker thread, at most about once a second) is timed on its own. Idle: the
app with no new records, with and without history, for ``--idle-seconds``; CPU = process time / wall time.

With ``--engines N`` every scrape is N scrapes, one per engine (tagged with its engine id, as a fleet
session streams them), and the fleet table is on screen. ``--memory``: the view alone (no app) fed 10,000
and 100,000 finished requests with their chunk gaps (tracemalloc): what it holds per finished request.

Measured with the headless Textual driver (what ``app.run_test`` uses): terminal I/O is not included.
Figures are noisy on a shared machine: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import heapq
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

from textual.screen import Screen

from rllmtop.events import (
    EngineInfo,
    MetricSample,
    Record,
    RequestEvent,
    RequestKind,
    RequestRecord,
    Scrape,
    SessionInfo,
    SessionState,
    StateEvent,
    encode_gaps,
)
from rllmtop.tui.app import build_app
from rllmtop.view import LiveView

K = RequestKind
HOUR = 3600.0


class BenchSession:
    """Just enough of a Session: the bench moves ``t`` and publishes records itself."""

    def __init__(self) -> None:
        self.info: SessionInfo | None = None
        self.state = SessionState.RUNNING
        self.replay = None
        self.record_path: str | None = None
        self.t = 0.0
        self.sinks: list[Callable[[Record], None]] = []
        self._stop = asyncio.Event()

    def add_sink(self, sink: Callable[[Record], None]) -> None:
        self.sinks.append(sink)

    def publish(self, rec: Record) -> None:
        for s in self.sinks:
            s(rec)

    def now(self) -> float:
        return self.t

    async def run(self) -> None:
        await self._stop.wait()

    planned_requests: int | None = None
    stopping = ""

    def stop(self, force: bool = False) -> None:
        self._stop.set()


def engine_id(k: int) -> str:
    return f"http://10.0.{k // 250}.{k % 250 + 1}:8000"


def scrape(t: float, i: int, k: int = 0, engines: int = 1) -> Scrape:
    """Engine k's scrape number i (its engine id only in a fleet: one engine streams untagged)."""
    return Scrape(
        t,
        0.002,
        True,
        samples=(
            MetricSample(t, "kv_cache_usage", ((i + 37 * k) % 400) / 400),
            MetricSample(t, "requests_running", float((i + k) % 64)),
            MetricSample(t, "requests_waiting", float((i + k) % 17)),
            MetricSample(t, "preemptions_total", float(i // 50)),
            MetricSample(t, "generation_tokens_total", float(i * 300)),
        ),
        engine_id=engine_id(k) if engines > 1 else "",
    )


def scrapes(seconds: float, engines: int) -> Iterator[tuple[float, int, Record]]:
    for i in range(1, int(seconds * 4) + 1):
        t = i * 0.25
        for k in range(engines):
            yield (t + k * 1e-5, -1, scrape(t + k * 1e-5, i, k, engines))


def history(n_requests: int, seconds: float, engines: int = 1) -> Iterator[Record]:
    """n finished requests spread over ``seconds`` and every engine's scrapes every 0.25 s, in time order
    (generated as they are published: 64 engines x 1 h of scrapes would not fit in memory as a list)."""
    recs: list[tuple[float, int, Record]] = []
    seq = 0
    classes = ("math-easy", "math-hard", "mcq")
    for rid in range(n_requests):
        t = seconds * rid / n_requests
        cls = classes[rid % 3]
        reasoning = 200 + (rid * 7919) % 4000
        answer = 20 + rid % 80
        e2e = 2.0 + reasoning / 400
        rec = RequestRecord(
            rid=rid,
            cls=cls,
            difficulty=cls.split("-")[-1],
            t_scheduled=t,
            t_dispatch=t,
            t_sent=t,
            t_first_token=t + 0.2,
            t_first_visible=t + e2e - 0.5,
            t_done=t + e2e,
            reasoning_tokens=reasoning,
            answer_tokens=answer,
            finish_reason="stop",
            correct=rid % 4 != 0,
        )
        for ev in (
            RequestEvent(K.SENT, t, rid, cls),
            RequestEvent(K.FIRST_TOKEN, t + 0.2, rid, cls, 1, 0),
            RequestEvent(K.PROGRESS, t + e2e / 2, rid, cls, reasoning // 2, 0),
            RequestEvent(K.FIRST_VISIBLE, t + e2e - 0.5, rid, cls, reasoning, 1),
            RequestEvent(K.DONE, t + e2e, rid, cls, reasoning, answer, record=rec),
        ):
            if ev.t < seconds:
                recs.append((ev.t, seq, ev))
                seq += 1
    recs.sort(key=lambda x: (x[0], x[1]))
    for _, _, r in heapq.merge(recs, scrapes(seconds, engines), key=lambda x: (x[0], x[1])):
        yield r


class _Timed:
    """Wraps a function attribute (of a class or an instance) and keeps each call's CPU time in ms (this
    thread's CPU clock: being descheduled on a busy machine does not count)."""

    def __init__(self, owner: object, name: str) -> None:
        self.owner, self.name = owner, name
        self.ms: list[float] = []
        self.orig = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        orig = self.orig

        def timed(*a: object, **kw: object) -> object:
            t0 = time.thread_time()
            try:
                return orig(*a, **kw)
            finally:
                self.ms.append((time.thread_time() - t0) * 1e3)

        setattr(owner, name, timed)
        self.active = True

    def measure(self) -> None:
        self.ms.clear()

    def restore(self) -> None:
        setattr(self.owner, self.name, self.orig)


async def frames(
    size: tuple[int, int], seconds: float, window: float, n_requests: int, engines: int = 1
) -> dict[str, float]:
    """The app refreshing at its own 4 Hz while a feeder publishes a scrape (and token progress) every
    250 ms. Times each refresh (``_tick``: snapshot + widget updates) and each repaint (Textual's screen
    update: layout if needed, render the dirty widgets, write to the driver), and the process CPU."""
    session = BenchSession()
    view = LiveView(auto_summary=False, summary_interval=0)
    app = build_app(session, view=view)
    out: dict[str, float] = {}
    ticks = _Timed(app, "_tick")  # before mount: the refresh timer captures the wrapped method
    paints = _Timed(Screen, "_on_timer_update")
    try:
        await _frames(app, session, view, size, seconds, window, n_requests, out, ticks, paints, engines)
    finally:
        paints.restore()
    return out


async def _frames(
    app: Any,
    session: BenchSession,
    view: LiveView,
    size: tuple[int, int],
    seconds: float,
    window: float,
    n_requests: int,
    out: dict[str, float],
    ticks: _Timed,
    paints: _Timed,
    engines: int = 1,
) -> None:
    async with app.run_test(size=size) as pilot:
        fleet = tuple(EngineInfo(engine_id(k), kind="sim") for k in range(engines)) if engines > 1 else ()
        session.publish(
            SessionInfo(
                "bench",
                time.time(),
                "live",
                scenario_name="bench",
                engine_kind="sim",
                model="m",
                engines=fleet,
            )
        )
        session.publish(StateEvent(0.0, SessionState.RUNNING))
        n = 0
        feed = 0.0
        for r in history(n_requests, HOUR, engines):
            t0 = time.perf_counter()
            session.publish(r)
            feed += time.perf_counter() - t0
            n += 1
        out["records"] = n
        out["handle_us_per_record"] = feed / n * 1e6
        base = HOUR
        for k in range(200):  # 200 in flight, half thinking, half answering
            rid = 1_000_000 + k
            session.publish(RequestEvent(K.SENT, base - 30 + k * 0.1, rid, "math-hard"))
            session.publish(RequestEvent(K.FIRST_TOKEN, base - 29 + k * 0.1, rid, "math-hard", 1, 0))
            if k % 2:
                session.publish(RequestEvent(K.FIRST_VISIBLE, base - 1, rid, "math-hard", 800, 5))
        session.t = base
        view.window = window
        job = view.summary_job()
        assert job is not None
        t0 = time.perf_counter()
        job.run()
        out["summary_job_ms"] = (time.perf_counter() - t0) * 1e3
        view.install(job)
        await pilot.pause()
        ticks.measure()
        paints.measure()
        loop = asyncio.get_running_loop()
        i = int(HOUR * 4)
        c0, w0 = time.process_time(), time.perf_counter()
        end = loop.time() + seconds
        f = 0
        while loop.time() < end:
            i += 1
            f += 1
            session.t = i * 0.25
            for k in range(engines):
                session.publish(scrape(session.t + k * 1e-5, i, k, engines))
            for k in range(0, 200, 20):  # token progress on some in-flight requests
                rid = 1_000_000 + k
                session.publish(RequestEvent(K.PROGRESS, session.t, rid, "math-hard", 800 + f * 10, 5 + f))
            nxt = loop.create_future()
            loop.call_later(0.25, nxt.set_result, None)
            await nxt
        c1, w1 = time.process_time(), time.perf_counter()
        out["cpu_pct"] = 100 * (c1 - c0) / (w1 - w0)
        out["cpu_ms_per_frame"] = (c1 - c0) * 1e3 / max(1, len(ticks.ms))
        out["tick_ms_median"] = statistics.median(ticks.ms)
        out["paint_ms_median"] = statistics.median(paints.ms) if paints.ms else float("nan")
        frame = sorted(a + b for a, b in zip(ticks.ms, paints.ms, strict=False))
        out["frame_ms_median"] = statistics.median(frame) if frame else float("nan")
        out["frame_ms_p95"] = frame[int(0.95 * (len(frame) - 1))] if frame else float("nan")
        out["frames"] = len(ticks.ms)
        session.stop(force=True)
        await pilot.press("q")


async def idle(size: tuple[int, int], seconds: float, with_history: bool) -> float:
    """CPU percent of one core while the app refreshes at 4 Hz and nothing new arrives."""
    session = BenchSession()
    app = build_app(session)
    async with app.run_test(size=size) as pilot:
        if with_history:
            for r in history(2_000, 600.0):
                session.publish(r)
            session.t = 600.0
        await pilot.pause()
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_later(1.0, done.set_result, None)  # settle
        await done
        c0, w0 = time.process_time(), time.perf_counter()
        done = loop.create_future()
        loop.call_later(seconds, done.set_result, None)
        await done
        c1, w1 = time.process_time(), time.perf_counter()
        session.stop(force=True)
        await pilot.press("q")
    return 100 * (c1 - c0) / (w1 - w0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="wall seconds of refreshing per case")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--size", action="append", help="WxH (repeatable); default 160x48 and 80x24")
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--engines", type=int, default=1, help="engines in the fleet (each scraped at 4 Hz)")
    ap.add_argument("--memory", action="store_true", help="only the view's memory per finished request")
    args = ap.parse_args()
    if args.memory:
        memory()
        return
    sizes = [tuple(int(x) for x in s.split("x")) for s in (args.size or ["160x48", "80x24"])]
    print(f"load average before: {os.getloadavg()[0]:.2f} (2-core machine shared with other work)")
    if args.engines > 1:
        print(f"{args.engines} engines, each scraped every 0.25 s")
    for w, h in sizes:
        for window in (120.0, 3600.0):
            r = asyncio.run(frames((w, h), args.seconds, window, args.requests, args.engines))
            print(
                f"{w}x{h} window {window:>6.0f}s: frame (refresh + repaint) median {r['frame_ms_median']:.2f} ms, "
                f"p95 {r['frame_ms_p95']:.2f} ms [refresh {r['tick_ms_median']:.2f} + repaint "
                f"{r['paint_ms_median']:.2f}]; process CPU {r['cpu_pct']:.1f}% = {r['cpu_ms_per_frame']:.1f} ms "
                f"per frame over {int(r['frames'])} frames; summary job {r['summary_job_ms']:.1f} ms "
                f"(thread, <= 1/s); handle {r['handle_us_per_record']:.1f} us/record ({int(r['records']):,})"
            )
    for w, h in sizes[:1] if args.idle_seconds > 0 else []:
        for hist in (False, True):
            cpu = asyncio.run(idle((w, h), args.idle_seconds, hist))
            what = "with 10 min of history" if hist else "empty"
            print(f"{w}x{h} idle ({what}): {cpu:.1f}% of one core")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def memory() -> None:
    """What the view keeps per finished request: 10k and 100k requests with ~2,000 chunk gaps each."""
    for n in (10_000, 100_000):
        gc.collect()
        tracemalloc.start()
        view = LiveView(summary_interval=0, auto_summary=False)
        view.handle(SessionInfo("memory", 0.0, "live"))
        base = tracemalloc.get_traced_memory()[0]
        for rid in range(n):
            t = rid * 0.05
            cls = ("math-easy", "math-hard", "mcq")[rid % 3]
            reasoning = 200 + (rid * 7919) % 4000
            e2e = 2.0 + reasoning / 400
            rec = RequestRecord(
                rid=rid,
                cls=cls,
                difficulty=cls.split("-")[-1],
                t_scheduled=t,
                t_dispatch=t,
                t_start=t,
                t_sent=t,
                t_first_token=t + 0.2,
                t_first_visible=t + e2e - 0.5,
                t_done=t + e2e,
                reasoning_tokens=reasoning,
                answer_tokens=40,
                finish_reason="stop",
                correct=rid % 4 != 0,
                gaps=encode_gaps([20_000] * (reasoning + 39)),
            )
            view.handle(RequestEvent(K.SENT, t, rid, cls))
            view.handle(RequestEvent(K.DONE, t + e2e, rid, cls, reasoning, 40, record=rec))
            del rec
        job = view.summary_job()
        cost = 0.0
        if job is not None:
            t0 = time.perf_counter()
            job.run()
            cost = time.perf_counter() - t0
            view.install(job)
        view.snapshot(n * 0.05 + 100)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        print(
            f"{n:>7,} finished requests: the view holds {held / 1e6:.1f} MB = {held / n:,.0f} B per finished "
            f"request; summary job {cost * 1e3:.0f} ms"
        )
        del view


if __name__ == "__main__":
    main()
