"""The client's heartbeat: how late its own event loop runs, measured all run long.

A timer asks to run every ``period`` (5 ms); each time it runs, its lateness (when it ran minus when it was
due) is time the loop could not read a token or write a request. Lateness is aggregated per ``interval``
(0.25 wall seconds) into a :class:`~rllmtop.events.ClientHealth` record: the worst and the mean lateness, and
the process CPU used in the interval. Latencies measured in that interval include up to ``lag_max`` of
client delay. Only the raw numbers are published here; deciding when they are too high, and saying so, is
``rllmtop.metrics.analysis``'s.

On Linux the timer is a periodic ``timerfd`` (wakes within microseconds of its due time, so an idle loop
reads ~0); elsewhere a loop timer, whose own rounding (up to ~1 ms) is part of what it reads. Cost: one
``os.read`` per tick (~3 µs); on an idle loop each tick is also a wake-up, ~0.5-1 % of a core on this
class of VM (``bench/bench_truth.py`` measures it; ``bench/bench_sendlag.py --no-heartbeat`` compares).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from rllmtop.clock import Clock, Publish
from rllmtop.events import ClientHealth
from rllmtop.workload.timers import TimerFd

__all__ = ["HEARTBEAT_INTERVAL", "HEARTBEAT_PERIOD", "Heartbeat"]

HEARTBEAT_PERIOD = 0.005
"""Wall seconds between heartbeat ticks."""
HEARTBEAT_INTERVAL = 0.25
"""Wall seconds aggregated into one ClientHealth record."""

_monotonic = time.monotonic
_cpu = time.process_time


class Heartbeat:
    """Publishes ClientHealth every ``interval`` wall seconds while started (times in session seconds)."""

    def __init__(
        self,
        clock: Clock,
        publish: Publish,
        *,
        worker: int = 0,
        period: float = HEARTBEAT_PERIOD,
        interval: float = HEARTBEAT_INTERVAL,
        use_timerfd: bool = True,
    ) -> None:
        self.clock = clock
        self._publish = publish
        self.worker = worker
        self.period = period
        self.interval = interval
        self._use_timerfd = use_timerfd
        self._tfd: TimerFd | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._iv_start = 0.0
        self._iv_end = 0.0
        self._cpu0 = 0.0
        self._max = 0.0
        self._sum = 0.0
        self._n = 0
        self.ticks = 0
        self.kind = ""

    def start(self) -> None:
        """Start ticking on the running loop."""
        if self._loop is not None:
            return
        loop = self._loop = asyncio.get_running_loop()
        now = _monotonic()
        self._iv_start = now
        self._iv_end = now + self.interval
        self._cpu0 = _cpu()
        self._due = now + self.period
        if self._use_timerfd:
            try:
                self._tfd = TimerFd()
                self._tfd.arm(self._due, self.period)
                loop.add_reader(self._tfd.fd, self._on_fd)
            except (OSError, AttributeError, NotImplementedError, RuntimeError):
                if self._tfd is not None:
                    self._tfd.close()
                self._tfd = None
        if self._tfd is not None:
            self.kind = "timerfd"
        else:
            self.kind = "loop timer"
            self._handle = loop.call_later(self.period, self._on_timer)

    def stop(self) -> None:
        """Stop ticking; the last, partial interval is published."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        if self._tfd is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(self._tfd.fd)
            self._tfd.close()
            self._tfd = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._n:
            self._flush(_monotonic())

    def _on_fd(self) -> None:
        now = _monotonic()
        assert self._tfd is not None
        expired = self._tfd.read()
        if not expired:
            return
        late = now - self._due  # the oldest tick not served yet: the loop was busy since it was due
        self._due += expired * self.period
        self._tick(now, late)

    def _on_timer(self) -> None:
        now = _monotonic()
        late = now - self._due
        assert self._loop is not None
        self._due = now + self.period
        self._handle = self._loop.call_later(self.period, self._on_timer)
        self._tick(now, late)

    def _tick(self, now: float, late: float) -> None:
        if late < 0.0:
            late = 0.0
        if late > self._max:
            self._max = late
        self._sum += late
        self._n += 1
        self.ticks += 1
        if now >= self._iv_end:
            self._flush(now)

    def _flush(self, now: float) -> None:
        cpu = _cpu()
        c = self.clock
        self._publish(
            ClientHealth(
                t=c.from_monotonic(now),
                interval=c.session(now - self._iv_start),
                lag_max=c.session(self._max),
                lag_mean=c.session(self._sum / self._n),
                worker=self.worker,
                cpu_s=cpu - self._cpu0,
            )
        )
        self._cpu0 = cpu
        self._iv_start = now
        self._iv_end = now + self.interval
        self._max = self._sum = 0.0
        self._n = 0
