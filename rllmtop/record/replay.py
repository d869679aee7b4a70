"""Replay a recording: the same records as live, re-timed on a session clock this source owns.

:class:`ReplaySource` publishes SessionInfo first, then every recorded StateEvent, LogEvent and Scrape and
the RequestEvents rebuilt from the request rows (:meth:`Recording.stream`), each when the replay clock
reaches its ``t``. Controls (speed 0.25x to 64x, pause, step, seek) may be called from the UI's event loop
or another thread. Seeking backwards publishes :class:`~rllmtop.events.Reset`, a fresh SessionInfo and
everything up to the new position at once; seeking forwards publishes what lies in between at once.
Catch-up bursts yield to the event loop every ``burst`` records so the UI stays responsive.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from rllmtop.clock import Clock, Publish
from rllmtop.events import Reset
from rllmtop.record.reader import Recording, TimedRecord

__all__ = ["MAX_SPEED", "MIN_SPEED", "ReplayClock", "ReplaySource"]

MIN_SPEED = 0.25
MAX_SPEED = 64.0


class ReplayClock(Clock):
    """A :class:`Clock` whose ``now()`` is the replay position (for charts' right edge and the like)."""

    __slots__ = ("_source",)

    def __init__(self, source: ReplaySource) -> None:
        super().__init__(t0=0.0, started_at=source.recording.info.started_at)
        self._source = source

    def now(self) -> float:
        return self._source.position

    def to_monotonic(self, t: float) -> float:
        s = self._source
        if s.paused:
            return math.inf
        return time.monotonic() + (t - s.position) / s.speed


class ReplaySource:
    """Re-emits ``recording`` on its own clock. ``await run(publish, stop)`` drives it.

    With ``exit_at_end`` the run returns once everything is published and the clock reached the end;
    otherwise it stays (a UI can still seek back) until ``stop`` is set.

    ``catchup_detail``: when a seek re-emits a span at once, request PROGRESS events more than this many
    seconds before the target are left out (everything else is re-emitted; the DONE records carry each
    request's full token timeline). Without it, seeking back in an hour-long recording re-emits millions
    of PROGRESS events. ``None`` re-emits everything.
    """

    def __init__(
        self,
        recording: Recording,
        *,
        speed: float = 1.0,
        exit_at_end: bool = False,
        burst: int = 2000,
        catchup_detail: float | None = 60.0,
        time_fn: Callable[[], float] = time.monotonic,
    ) -> None:
        self.recording = recording
        self.catchup_detail = catchup_detail
        self.exit_at_end = exit_at_end
        self.burst = burst
        self._time = time_fn
        self._lock = threading.Lock()
        self._duration = recording.duration
        self._speed = _clamp(speed)
        self._paused = False
        self._pos0 = 0.0  # position at the anchor
        self._real0 = time_fn()  # real time at the anchor
        self._running = False
        self._seek: float | None = None  # a seek the run loop has not handled yet
        self._finished = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._changed: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self.clock = ReplayClock(self)

    # -- state --------------------------------------------------------------------------------------------

    @property
    def duration(self) -> float:
        return self._duration

    @property
    def position(self) -> float:
        """Current replay time (session seconds), 0..duration."""
        with self._lock:
            return self._position_locked()

    def _position_locked(self) -> float:
        if self._paused or not self._running:  # the clock starts with run()
            return self._pos0
        return min(self._duration, self._pos0 + (self._time() - self._real0) * self._speed)

    def now(self) -> float:
        return self.position

    @property
    def speed(self) -> float:
        return self._speed

    @speed.setter
    def speed(self, value: float) -> None:
        with self._lock:
            self._anchor(self._position_locked())
            self._speed = _clamp(value)
        self._signal()

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def finished(self) -> bool:
        """Everything was published and the clock reached the end."""
        return self._finished

    # -- controls -----------------------------------------------------------------------------------------

    def pause(self) -> None:
        with self._lock:
            self._anchor(self._position_locked())
            self._paused = True
        self._signal()

    def resume(self) -> None:
        with self._lock:
            self._anchor(self._position_locked())
            self._paused = False
        self._signal()

    def toggle_pause(self) -> None:
        if self._paused:
            self.resume()
        else:
            self.pause()

    def step(self, seconds: float) -> None:
        """Move the clock by ``seconds`` (paused or not); negative steps seek backwards."""
        self.seek(self.position + seconds)

    def seek(self, t: float) -> None:
        """Jump to session time ``t`` (clamped to 0..duration), forwards or backwards."""
        with self._lock:
            t = min(max(0.0, t), self._duration)
            self._seek = t  # the run loop decides: backwards past what it published means a Reset
            self._anchor(t)
            self._finished = False
        self._signal()

    def _anchor(self, pos: float) -> None:
        self._pos0 = pos
        self._real0 = self._time()

    def _signal(self) -> None:
        loop, changed, idle = self._loop, self._changed, self._idle
        if loop is None or changed is None or idle is None:
            return

        def wake() -> None:
            idle.clear()  # settled() now waits for the run loop to handle the change
            changed.set()

        if threading.get_ident() == self._loop_thread:
            wake()
        else:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(wake)

    async def settled(self) -> None:
        """Wait until everything due at the current position has been published."""
        if self._idle is not None:
            await self._idle.wait()

    # -- the run loop ---------------------------------------------------------------------------------------

    async def run(self, publish: Publish, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._changed = changed = asyncio.Event()
        self._idle = idle = asyncio.Event()
        info = replace(self.recording.info, mode="replay")
        with self._lock:
            self._anchor(self._pos0)  # the clock starts now, not at construction
            self._running = True
        stream = self._stream(-math.inf, self._pos0)
        pending: TimedRecord | None = next(stream, None)
        emitted_to = -math.inf  # the newest t published since the last (re)start
        publish(info)
        stop_wait = asyncio.ensure_future(stop.wait())
        changed_wait: asyncio.Future[Any] = asyncio.ensure_future(changed.wait())
        try:
            while not stop.is_set():
                changed.clear()
                with self._lock:
                    seek, self._seek = self._seek, None
                detail = self.catchup_detail
                if seek is not None and seek < emitted_to:  # backwards: consumers start over
                    publish(Reset(seek))
                    publish(info)
                    stream = self._stream(-math.inf, seek)
                    pending = next(stream, None)
                    emitted_to = -math.inf
                elif (
                    seek is not None
                    and detail is not None
                    and seek - detail > emitted_to
                    and (pending is None or pending.t > emitted_to)
                ):  # far forwards: start reading again just after what was published, lighter
                    stream = self._stream(emitted_to, seek)
                    pending = next(stream, None)
                target = self.position
                sent = 0
                while pending is not None and pending.t <= target and sent < self.burst:
                    publish(pending)
                    emitted_to = pending.t
                    sent += 1
                    pending = next(stream, None)
                if sent >= self.burst:
                    await asyncio.sleep(0)  # a catch-up burst: let the UI breathe, then go on
                    continue
                at_end = pending is None and target >= self._duration
                self._finished = at_end
                if at_end and self.exit_at_end:
                    return
                if self._seek is not None:
                    continue
                idle.set()
                timeout: float | None = None
                if not (self._paused or at_end):
                    nxt = self._duration if pending is None else pending.t
                    timeout = max(0.0, (nxt - target) / self._speed)
                if changed_wait.done():
                    changed_wait = asyncio.ensure_future(changed.wait())
                await asyncio.wait(
                    {stop_wait, changed_wait}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                idle.clear()
        finally:
            with self._lock:
                self._anchor(self._position_locked())
                self._running = False
            stop_wait.cancel()
            changed_wait.cancel()
            idle.set()

    def _stream(self, after: float, target: float) -> Iterator[TimedRecord]:
        detail = self.catchup_detail
        return self.recording.stream(after, progress_from=-math.inf if detail is None else target - detail)


def _clamp(speed: float) -> float:
    if not speed > 0:
        return MIN_SPEED
    return min(MAX_SPEED, max(MIN_SPEED, float(speed)))
