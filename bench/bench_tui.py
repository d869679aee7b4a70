"""TUI cost: CPU per refresh with a big history, and CPU of an idle monitor.

    python bench/bench_tui.py                                  # 160x48 and 80x24, 10 s per case
    python bench/bench_tui.py --size 160x48 --seconds 20 --idle-seconds 20

Workload (the issue's target): 10,000 finished requests and one hour of 4 Hz engine scrapes already in the
view (window 120 s and 3600 s), 200 requests in flight, then a new scrape and token progress every 250 ms
while the app refreshes at its own 4 Hz. A frame = the refresh (``LiveView.snapshot`` + handing it to
every widget inside ``batch_update``) + the repaint Textual's screen-update timer does afterwards (layout
if needed, render the dirty widgets, write to the driver). Both are timed with the main thread's CPU clock
(``time.thread_time``), so being descheduled on a busy machine does not count; "process CPU" is everything
the process did over the wall time (Textual's own loop, the feeder, GC). The summary job (ASU, straggler
baselines, distribution; in a worker thread, at most about once a second) is timed on its own. Idle: the
app with no new records, with and without history, for ``--idle-seconds``; CPU = process time / wall time.

Measured with the headless Textual driver (what ``app.run_test`` uses): terminal I/O is not included.
Figures are noisy on a shared machine: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from textual.screen import Screen

from rllmtop.events import (
    MetricSample,
    Record,
    RequestEvent,
    RequestKind,
    RequestRecord,
    Scrape,
    SessionInfo,
    SessionState,
    StateEvent,
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

    def request_stop(self) -> None:
        self._stop.set()


def scrape(t: float, i: int) -> Scrape:
    return Scrape(
        t,
        0.002,
        True,
        samples=(
            MetricSample(t, "kv_cache_usage", (i % 400) / 400),
            MetricSample(t, "requests_running", float(i % 64)),
            MetricSample(t, "requests_waiting", float(i % 17)),
            MetricSample(t, "preemptions_total", float(i // 50)),
            MetricSample(t, "generation_tokens_total", float(i * 300)),
        ),
    )


def history(n_requests: int, seconds: float) -> list[Record]:
    """n finished requests spread over ``seconds``, scrapes every 0.25 s, in time order."""
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
    for i in range(1, int(seconds * 4) + 1):
        t = i * 0.25
        recs.append((t, seq, scrape(t, i)))
        seq += 1
    recs.sort(key=lambda x: (x[0], x[1]))
    return [r for _, _, r in recs]


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


async def frames(size: tuple[int, int], seconds: float, window: float, n_requests: int) -> dict[str, float]:
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
        await _frames(app, session, view, size, seconds, window, n_requests, out, ticks, paints)
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
) -> None:
    async with app.run_test(size=size) as pilot:
        records = history(n_requests, HOUR)
        session.publish(
            SessionInfo("bench", time.time(), "live", scenario_name="bench", engine_kind="sim", model="m")
        )
        session.publish(StateEvent(0.0, SessionState.RUNNING))
        t0 = time.perf_counter()
        for r in records:
            session.publish(r)
        feed = time.perf_counter() - t0
        out["records"] = len(records)
        out["handle_us_per_record"] = feed / len(records) * 1e6
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
            session.publish(scrape(session.t, i))
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
        session.request_stop()
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
        session.request_stop()
        await pilot.press("q")
    return 100 * (c1 - c0) / (w1 - w0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="wall seconds of refreshing per case")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--size", action="append", help="WxH (repeatable); default 160x48 and 80x24")
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    args = ap.parse_args()
    sizes = [tuple(int(x) for x in s.split("x")) for s in (args.size or ["160x48", "80x24"])]
    print(f"load average before: {os.getloadavg()[0]:.2f} (2-core machine shared with other work)")
    for w, h in sizes:
        for window in (120.0, 3600.0):
            r = asyncio.run(frames((w, h), args.seconds, window, args.requests))
            print(
                f"{w}x{h} window {window:>6.0f}s: frame (refresh + repaint) median {r['frame_ms_median']:.2f} ms, "
                f"p95 {r['frame_ms_p95']:.2f} ms [refresh {r['tick_ms_median']:.2f} + repaint "
                f"{r['paint_ms_median']:.2f}]; process CPU {r['cpu_pct']:.1f}% = {r['cpu_ms_per_frame']:.1f} ms "
                f"per frame over {int(r['frames'])} frames; summary job {r['summary_job_ms']:.1f} ms "
                f"(thread, <= 1/s); handle {r['handle_us_per_record']:.1f} us/record ({int(r['records']):,})"
            )
    for w, h in sizes[:1]:
        for hist in (False, True):
            cpu = asyncio.run(idle((w, h), args.idle_seconds, hist))
            what = "with 10 min of history" if hist else "empty"
            print(f"{w}x{h} idle ({what}): {cpu:.1f}% of one core")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
