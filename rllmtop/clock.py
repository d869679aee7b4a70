"""The session clock and the publish callable every source is given."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeAlias

from rllmtop.events import Record

__all__ = ["Clock", "Publish"]

Publish: TypeAlias = Callable[[Record], None]
"""Sources hand records to the session through this. It never blocks and must be called from the
session's event-loop thread."""


class Clock:
    """Session time: ``now()`` is seconds since session start.

    On the wall clock (``speed`` 1) session seconds are monotonic seconds. In a time-lapse run of the
    simulator (``speed`` K > 1) they are *simulated* seconds: wall seconds x K, so a schedule, a timeout
    or a latency reads the same at any speed. ``started_at`` is the Unix time of t = 0.
    """

    __slots__ = ("speed", "started_at", "t0")

    def __init__(
        self, t0: float | None = None, started_at: float | None = None, *, speed: float = 1.0
    ) -> None:
        if not speed > 0:
            raise ValueError(f"clock speed must be > 0, not {speed!r}")
        self.t0 = time.monotonic() if t0 is None else t0
        self.started_at = time.time() if started_at is None else started_at
        self.speed = float(speed)

    @property
    def name(self) -> str:
        """ "wall" or "simulated": what a session second is (recorded in SessionInfo.clock)."""
        return "wall" if self.speed == 1.0 else "simulated"

    def now(self) -> float:
        return (time.monotonic() - self.t0) * self.speed

    def from_monotonic(self, mono: float) -> float:
        """A ``time.monotonic()`` value -> session time."""
        return (mono - self.t0) * self.speed

    def to_monotonic(self, t: float) -> float:
        """Session time -> time.monotonic() value (for loop.call_at / sleeps until a deadline)."""
        return self.t0 + t / self.speed

    def wall(self, seconds: float) -> float:
        """A duration in session seconds -> wall seconds (what to sleep)."""
        return seconds / self.speed

    def session(self, wall_seconds: float) -> float:
        """A duration in wall seconds -> session seconds."""
        return wall_seconds * self.speed
