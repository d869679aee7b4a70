"""The event loop rllmtop runs on: uvloop when installed (the default on Linux), else asyncio's own.

uvloop halves the per-read cost of the streaming client, which is what bounds how many paced streams the load
generator holds while still sending on time (bench/bench_sendlag.py --part held: send-lag p99 at 2,000 streams
was 1.1-3.0 ms on uvloop, 3.1-6.6 ms on the default loop, on this 2-core machine). ``RLLMTOP_LOOP=asyncio``
forces the standard loop (for debugging, or to compare).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["loop_name", "new_event_loop", "run"]

T = TypeVar("T")


def _want_uvloop() -> bool:
    return os.environ.get("RLLMTOP_LOOP", "").strip().lower() not in ("asyncio", "default", "std")


def new_event_loop() -> asyncio.AbstractEventLoop:
    if _want_uvloop():
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    loop = loop or asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on :func:`new_event_loop`."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro)
