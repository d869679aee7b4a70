"""Headless face: progress lines while the session runs, the ASU summary at the end, an exit code.

Progress goes to stderr (one line a second on a terminal, overwritten in place; a line every 10 s otherwise,
so CI logs stay short); the summary goes to stdout. The view's warnings in words (the client was late, the
simulator drifted, a sender worker died, a worker's clock is off: ``LiveView.alerts``, the TUI's very
sentences) are checked every second and each is printed once, as a ``warning:`` line, when it first fires.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import TextIO

from rllmtop._loop import run as run_loop
from rllmtop.events import LogEvent, Record, SessionInfo, StateEvent
from rllmtop.redact import redact_url
from rllmtop.session import Session, SessionOutcome
from rllmtop.summary import SummaryView, format_summary
from rllmtop.view import LiveView

__all__ = ["format_outcome", "run_headless"]


class _Progress:
    def __init__(self, session: Session, view: LiveView, out: TextIO) -> None:
        self.session = session
        self.view = view
        self.out = out
        self.tty = out.isatty()
        self._last_len = 0
        self._said: set[str] = set()  # alert keys already printed

    def handle(self, rec: Record) -> None:
        if isinstance(rec, StateEvent):
            self.line(f"[{rec.t:7.1f}s] {rec.state.value}" + (f": {rec.detail}" if rec.detail else ""))
        elif isinstance(rec, LogEvent) and self._shows(rec):
            self.line(f"[{rec.t:7.1f}s] {rec.level}: {rec.text}")
        elif isinstance(rec, SessionInfo) and rec.engine_version:
            clock = f", {rec.clock} clock x{rec.speed:g}" if rec.clock != "wall" else ""
            self.line(
                f"engine: {rec.engine_kind} {rec.engine_version} at {redact_url(rec.engine_url)}, "
                f"model {rec.model}{clock}"
            )

    def _shows(self, rec: LogEvent) -> bool:
        """rllmtop's own warnings and errors; an engine's errors only while it is meant to be serving (its
        warnings and its shutdown noise are in the recording and the TUI's engine pane)."""
        if rec.source == "engine":
            return rec.level == "error" and not self.session.tearing_down
        return rec.level in ("warning", "error")

    def line(self, text: str) -> None:
        if self.tty and self._last_len:
            self.out.write("\r" + " " * self._last_len + "\r")
            self._last_len = 0
        self.out.write(text + "\n")
        self.out.flush()

    def alerts(self) -> None:
        """Print each of the view's warnings once, when it first fires."""
        now = self.session.now()
        for a in self.view.alerts(now):
            if a.key not in self._said:
                self._said.add(a.key)
                self.line(f"[{now:7.1f}s] warning: {a.text}")

    def tick(self) -> None:
        text = self.view.progress_line(self.session.now())
        if self.tty:
            pad = max(0, self._last_len - len(text))
            self.out.write("\r" + text + " " * pad)
            self._last_len = len(text)
        else:
            self.out.write(text + "\n")
        self.out.flush()

    async def loop(self) -> None:
        every = 1 if self.tty else 10  # seconds between progress lines; warnings are looked at each second
        n = 0
        while True:
            await asyncio.sleep(1.0)
            self.alerts()
            n += 1
            if n >= every:
                n = 0
                self.tick()


def format_outcome(
    session: Session,
    outcome: SessionOutcome,
    view: SummaryView | None = None,
    *,
    elapsed: float | None = None,
) -> str:
    """The end-of-run lines; ``view``: which latency columns and percentiles the table shows; ``elapsed``:
    the session seconds the run took, when it ended before this is printed (the TUI waits for q after
    the run: ``RllmtopApp.ended_at``); default ``session.now()``."""
    info = session.info
    lines = []
    head = f"rllmtop: {outcome.state.value}"
    if info is not None:
        what = info.scenario_name or "attach"
        head += f" | {what} on {info.engine_kind}"
        if info.engine_version:
            head += f" {info.engine_version}"
        if info.model:
            head += f", model {info.model}"
    head += f" | {session.now() if elapsed is None else elapsed:.1f} s"
    if info is not None and info.clock != "wall":
        head += f" {info.clock} (speed {info.speed:g}); every time below is on that clock"
    if outcome.detail:
        head += f" | {outcome.detail}"
    lines.append(head)
    if view is None or view.default:
        lines.append(format_summary(outcome.summary, outcome.warnings))
    else:
        summary = view.summary(session.ended_requests(), outcome.summary)
        columns = view.columns(summary) if summary is not None else None
        lines.append(format_summary(summary, outcome.warnings, columns))
    for miss in outcome.slo_missed:
        lines.append(f"SLO missed: {miss}")
    if outcome.record_path is not None:
        lines.append(f"recording: {outcome.record_path}")
    return "\n".join(lines)


async def _run(session: Session, progress_out: TextIO) -> SessionOutcome:
    view = LiveView()
    progress = _Progress(session, view, progress_out)
    session.add_sink(view.handle)
    session.add_sink(progress.handle)
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []

    def on_sigint() -> None:  # the session's stop policy: first gentle, then forced
        if not session.stopping:
            progress.line("interrupt: stopping (press Ctrl-C again to cancel in-flight requests)")
        session.stop()

    def on_sigterm() -> None:  # end now: cancel in-flight requests, tear the engine down, close the file
        session.stop(force=True)

    for sig, handler in ((signal.SIGINT, on_sigint), (signal.SIGTERM, on_sigterm)):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
    ticker = loop.create_task(progress.loop())
    try:
        outcome = await session.run()
        progress.alerts()  # one that fired in the last second
        return outcome
    finally:
        ticker.cancel()
        for sig in installed:
            loop.remove_signal_handler(sig)
        if progress.tty:
            progress.line("")


def run_headless(
    session: Session,
    *,
    out: TextIO | None = None,
    progress_out: TextIO | None = None,
    view: SummaryView | None = None,
) -> int:
    """Run to the end, print the summary, return the exit code (see SessionOutcome.exit_code)."""
    outcome = run_loop(_run(session, progress_out or sys.stderr))
    print(format_outcome(session, outcome, view), file=out or sys.stdout)
    return outcome.exit_code
