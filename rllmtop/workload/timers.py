"""Precise wake-ups on the event loop: a Linux ``timerfd`` on CLOCK_MONOTONIC, and the send pacer.

Event-loop timers round their sleeps up to whole milliseconds (uvloop) or wake a little late; a timerfd
armed at an absolute ``time.monotonic()`` deadline wakes the loop within microseconds of it, and its
readiness goes through the loop like any socket. Elsewhere a loop timer wakes a little early and the
pacer spins through the loop (I/O keeps flowing) until the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import time
from collections.abc import Callable

__all__ = ["SPIN", "Pacer", "TimerFd"]

SPIN = 0.0002
"""Deadlines closer than this are reached by spinning instead of sleeping."""


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


def _set(ts: _Timespec, t: float) -> None:
    sec = int(t)
    ts.tv_sec = sec
    ts.tv_nsec = min(max(int((t - sec) * 1e9), 0), 999_999_999)


class TimerFd:
    """A Linux timerfd on CLOCK_MONOTONIC (the clock of ``time.monotonic``), armed at absolute times.

    Raises OSError (or AttributeError off Linux) when it cannot be made."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._settime = libc.timerfd_settime
        fd = libc.timerfd_create(1, os.O_NONBLOCK | os.O_CLOEXEC)  # CLOCK_MONOTONIC
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self.fd: int = fd
        self._spec = _Itimerspec()

    def arm(self, deadline: float, period: float = 0.0) -> None:
        """Fire at monotonic ``deadline`` (then every ``period`` seconds when > 0)."""
        _set(self._spec.it_value, deadline)
        if self._spec.it_value.tv_sec == 0 and self._spec.it_value.tv_nsec == 0:
            self._spec.it_value.tv_nsec = 1  # zero would disarm it
        _set(self._spec.it_interval, period)
        if self._settime(self.fd, 1, ctypes.byref(self._spec), None) != 0:  # TFD_TIMER_ABSTIME
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def read(self) -> int:
        """Expirations since the last read (0 if none)."""
        try:
            return int.from_bytes(os.read(self.fd, 8), "little")
        except BlockingIOError:
            return 0

    def close(self) -> None:
        os.close(self.fd)


class Pacer:
    """Calls ``fire()`` at or just after each armed monotonic deadline, from the event loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fire: Callable[[], None], *, use_timerfd: bool = True
    ):
        self._loop = loop
        self._fire = fire
        self._tfd: TimerFd | None = None
        self._handle: asyncio.Handle | None = None
        if use_timerfd:
            try:
                self._tfd = TimerFd()
                loop.add_reader(self._tfd.fd, self._on_fd)
            except (OSError, AttributeError, NotImplementedError, RuntimeError):
                if self._tfd is not None:
                    self._tfd.close()
                self._tfd = None
        self.kind = "timerfd" if self._tfd is not None else "loop timer + spin"

    def _on_fd(self) -> None:
        assert self._tfd is not None
        self._tfd.read()
        self._fire()

    def arm(self, deadline: float) -> None:
        if self._tfd is not None:
            self._tfd.arm(deadline)
            return
        if self._handle is not None:
            self._handle.cancel()
        # loop timers wake up to ~1 ms late: wake early, then spin through the loop (I/O keeps flowing)
        self._handle = self._loop.call_at(deadline - 0.0015, self._spin, deadline)

    def _spin(self, deadline: float) -> None:
        if time.monotonic() >= deadline - SPIN:
            self._handle = None
            self._fire()
        else:
            self._handle = self._loop.call_soon(self._spin, deadline)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._tfd is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._tfd.fd)
            self._tfd.close()
            self._tfd = None
