"""Helpers for the TUI tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from textual.pilot import Pilot


async def until(
    pilot: Pilot, cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition"
) -> None:
    """Let the app process messages until ``cond()`` holds (awaits the app's queue, no fixed sleeps)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await pilot.pause()
        await asyncio.sleep(0.005)  # poll the condition; do not spin a core


def screen_text(app: object) -> str:
    """What the terminal shows, as plain text lines."""
    strips = app.screen._compositor.render_strips()  # type: ignore[attr-defined]
    return "\n".join("".join(seg.text for seg in strip) for strip in strips)
