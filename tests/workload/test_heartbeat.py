"""The client heartbeat (issue 10.2): the load generator measures its own event-loop lateness all run long.

A CPU hog on the loop must show up as lag_max; an idle loop must read low. Margins are wide: the machine is
shared, so an idle interval may read a few ms when another process takes the core.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from rllmtop.clock import Clock
from rllmtop.events import ClientHealth
from rllmtop.workload.heartbeat import Heartbeat


async def _collect(hb_kw: dict[str, object], seconds: float, hog: float = 0.0) -> list[ClientHealth]:
    out: list[ClientHealth] = []
    clock = Clock(speed=float(hb_kw.pop("speed", 1.0)))  # type: ignore[arg-type]
    hb = Heartbeat(clock, out.append, worker=3, **hb_kw)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds
    handles: list[asyncio.TimerHandle] = []

    def burn() -> None:  # holds the loop for ``hog`` seconds, every 0.1 s
        end = time.monotonic() + hog
        while time.monotonic() < end:
            pass
        if loop.time() < stop:
            handles.append(loop.call_later(0.1, burn))

    hb.start()
    if hog:
        handles.append(loop.call_later(0.05, burn))
    await asyncio.sleep(seconds)
    for h in handles:
        h.cancel()
    hb.stop()
    return out


@pytest.mark.parametrize("timerfd", [True, False])
async def test_a_starved_loop_reads_late_and_an_idle_one_does_not(timerfd: bool) -> None:
    idle = await _collect({"use_timerfd": timerfd}, 1.5)
    hog = await _collect({"use_timerfd": timerfd}, 1.5, hog=0.1)
    assert len(idle) >= 4 and len(hog) >= 4
    for rec in idle + hog:
        assert rec.worker == 3 and rec.interval > 0 and 0 <= rec.lag_mean <= rec.lag_max
        assert rec.cpu_s is not None and rec.cpu_s >= 0
    # idle: a few ms at most (on an idle machine ~0.1 ms; other processes on the cores add their share)
    assert statistics.median(r.lag_max for r in idle) < 0.02
    # a 100 ms hog every 100 ms: the heartbeat waits up to 100 ms
    assert max(r.lag_max for r in hog) > 0.08
    assert statistics.median(r.lag_max for r in hog) > 0.05
    # the hog's CPU is the process's CPU in those intervals
    assert sum(r.cpu_s or 0 for r in hog) > max(0.1, 3 * sum(r.cpu_s or 0 for r in idle))


async def test_records_are_on_the_session_clock() -> None:
    """At speed 10, session seconds are wall x 10: t, interval and lateness are session seconds."""
    recs = await _collect({"speed": 10.0, "interval": 0.1}, 0.6, hog=0.03)
    assert recs
    for r in recs[:-1]:  # (the last one is the partial interval published by stop())
        assert r.interval == pytest.approx(1.0, abs=0.6)  # 0.1 wall s = 1 session s (ticks are late)
    assert max(r.lag_max for r in recs) > 0.2  # a 30 ms wall stall is 300 ms of session time
    ts = [r.t for r in recs]
    assert ts == sorted(ts) and ts[-1] > 3.0  # 0.6 wall s is 6 session s
