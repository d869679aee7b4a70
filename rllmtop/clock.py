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
    """Monotonic session time: ``now()`` is seconds since session start.

    ``started_at`` is the matching Unix time, for display and for SessionInfo.
    """

    __slots__ = ("started_at", "t0")

    def __init__(self, t0: float | None = None, started_at: float | None = None) -> None:
        self.t0 = time.monotonic() if t0 is None else t0
        self.started_at = time.time() if started_at is None else started_at

    def now(self) -> float:
        return time.monotonic() - self.t0

    def to_monotonic(self, t: float) -> float:
        """Session time -> time.monotonic() value (for loop.call_at / sleeps until a deadline)."""
        return self.t0 + t
