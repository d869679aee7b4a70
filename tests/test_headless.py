"""rllmtop/headless.py: the progress output says the view's warnings in words, each once, when it fires; the end line
says the run's length."""

from __future__ import annotations

import io

from rllmtop.events import ClientHealth, RequestEvent, RequestKind, SessionState, WorkerEvent
from rllmtop.headless import _Progress, format_outcome
from rllmtop.session import SessionOutcome
from rllmtop.view import LiveView


class _Clock:
    """The part of a Session the progress printer reads."""

    tearing_down = False

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t


def test_alerts_are_printed_once_when_they_first_fire() -> None:
    session = _Clock()
    view = LiveView()
    out = io.StringIO()
    progress = _Progress(session, view, out)  # type: ignore[arg-type]
    view.handle(RequestEvent(RequestKind.SENT, 0.5, 1, "easy"))
    for i in range(1, 4):
        view.handle(ClientHealth(float(i), 1.0, 0.001, 0.0005))
    session.t = 3.0
    progress.alerts()
    assert out.getvalue() == ""  # an idle client: nothing to say
    view.handle(ClientHealth(4.0, 1.0, 0.060, 0.01))  # 60 ms late with request 1 on the wire
    view.handle(WorkerEvent(4.5, 2, "died", node="n2", detail="exit code -9"))
    view.handle(WorkerEvent(4.6, 3, "started", node="n3", clock_offset=0.020))
    session.t = 5.0
    progress.alerts()
    progress.alerts()  # again: said once
    lines = out.getvalue().splitlines()
    assert lines == [
        "[    5.0s] warning: latencies include up to 60ms of client delay (client event loop late); "
        "1 of 1 requests were touched",
        "[    5.0s] warning: 1 sender worker died: worker 2 (node n2) at 0:04 (exit code -9)",
        "[    5.0s] warning: worker 3 (node n3)'s clock is 20ms ahead of the session's (warned above 5.0ms): "
        "send lag and TTFT of its requests carry up to that error",
    ]


def test_the_end_line_says_the_run_length_it_is_given() -> None:
    """The TUI prints the outcome when the app quits, maybe long after the run ended: it passes the
    run's length (``RllmtopApp.ended_at``) rather than the clock at printing time."""

    class _Ended(_Clock):
        info = None

    session = _Ended()
    session.t = 653.3
    outcome = SessionOutcome(SessionState.DONE, "", None, None)
    assert "| 272.0 s" in format_outcome(session, outcome, elapsed=272.0).splitlines()[0]  # type: ignore[arg-type]
    assert "| 653.3 s" in format_outcome(session, outcome).splitlines()[0]  # type: ignore[arg-type]
