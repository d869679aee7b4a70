"""The monitor on a real session: the time-scaled simulator in its own process on 127.0.0.1, the real load
generator and recorder. What issue 5 asks of it: charts receive samples, phases move from thinking to
answering, a straggler is flagged in a burst, keys work, quitting while recording leaves a complete file."""

from __future__ import annotations

from pathlib import Path

import pytest
from tui_helpers import screen_text, until

from rllmtop.commands import build_session
from rllmtop.events import Phase, SessionState
from rllmtop.record.reader import open_recording
from rllmtop.scenario import load_scenario
from rllmtop.tui.app import RllmtopApp, build_app
from rllmtop.tui.widgets.board import RequestBoard
from rllmtop.tui.widgets.chart import BrailleChart
from rllmtop.view import LiveView

pytestmark = pytest.mark.timeout(180)


def burst_app(tmp_path: Path, speed: float = 20.0) -> RllmtopApp:
    """The shipped `stragglers` scenario: one burst of 128 mixed-difficulty requests."""
    scenario = load_scenario("stragglers", {"speed": speed})
    session = build_session(scenario, mode="live", record=tmp_path / "burst.db")
    return build_app(session, view=LiveView(auto_summary=False, summary_interval=0.2))


class PhaseLog:
    """Every phase each request was seen in, in order, across refreshes."""

    def __init__(self, app: RllmtopApp) -> None:
        self.app = app
        self.seen: dict[int, list[Phase]] = {}
        self._last = -1

    def poll(self) -> None:
        snap = self.app.snapshot
        if snap is None or self.app.ticks == self._last:
            return
        self._last = self.app.ticks
        for row in snap.board:
            phases = self.seen.setdefault(row.rid, [])
            if not phases or phases[-1] is not row.phase:
                phases.append(row.phase)

    def thinking_then_answering(self) -> bool:
        self.poll()
        for phases in self.seen.values():
            if Phase.THINKING in phases and Phase.ANSWERING in phases[phases.index(Phase.THINKING) :]:
                return True
        return False


async def test_live_burst_on_the_simulator(tmp_path: Path) -> None:
    app = burst_app(tmp_path)
    async with app.run_test(size=(160, 48)) as pilot:
        log = PhaseLog(app)
        await until(
            pilot, log.thinking_then_answering, timeout=60, what="a request to go thinking -> answering"
        )
        # charts receive samples: engine gauges from /metrics, token rates from the client
        await until(
            pilot,
            lambda: (
                app.snapshot is not None
                and app.snapshot.kv.t.size >= 4
                and app.snapshot.reasoning_tps.v.sum() > 0
            ),
            timeout=30,
            what="chart samples",
        )
        kv = app.query_one("#chart-kv", BrailleChart)
        await until(
            pilot, lambda: kv.data is not None and kv.data.lines[0].series.t.size > 0, what="a KV render"
        )
        assert not kv.data.lines[0].series.missing  # type: ignore[union-attr]
        assert app.snapshot.running.last is not None  # type: ignore[union-attr]
        # a straggler in the burst, flagged with the rule's reason
        await until(
            pilot, lambda: bool(app.snapshot and app.snapshot.stragglers), timeout=60, what="a straggler"
        )
        s = app.snapshot.stragglers[0]  # type: ignore[union-attr]
        assert "> 3x median" in s.reason
        text = screen_text(app)
        assert "rule: run time or reasoning length > 3x" in text
        assert "sim" in text and "stragglers" in text  # header: engine kind, scenario
        assert app.snapshot.progress.planned == 128  # type: ignore[union-attr]  # one burst of 128
        # keys
        board = app.query_one(RequestBoard)
        window = app.view.window
        await pilot.press("plus", "s", "f")
        assert app.view.window > window and board.sort_key != "age" and board.phase_filter == "active"
        # the run ends by itself; the recording is complete
        await until(pilot, app.ended.is_set, timeout=120, what="the session to end")
        assert app.snapshot is not None and app.snapshot.state is SessionState.DONE
        assert app.snapshot.progress.done + app.snapshot.progress.failed == 128
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, what="the app to exit")
    outcome = app.return_value
    assert outcome is not None and outcome.state is SessionState.DONE
    rec = open_recording(tmp_path / "burst.db")
    try:
        assert rec.status is SessionState.DONE and len(rec.requests()) == 128
    finally:
        rec.close()


async def test_quitting_mid_run_drains_cancels_and_leaves_a_complete_recording(tmp_path: Path) -> None:
    app = burst_app(tmp_path, speed=5.0)  # slow enough to still be running when we quit
    async with app.run_test(size=(80, 24)) as pilot:
        await until(
            pilot,
            lambda: app.snapshot is not None and app.snapshot.progress.done >= 3,
            timeout=60,
            what="a few requests to finish",
        )
        assert not app.ended.is_set()
        await pilot.press("q")  # stop sending, drain ...
        await pilot.press("q")  # ... no: cancel the in-flight ones now
        await until(pilot, lambda: not app.is_running, timeout=60, what="the app to exit")
    outcome = app.return_value
    assert outcome is not None and outcome.state is SessionState.INTERRUPTED
    rec = open_recording(tmp_path / "burst.db")
    try:
        assert rec.status is SessionState.INTERRUPTED  # closed by the session, not INCOMPLETE
        reqs = rec.requests()
        assert len(reqs) == 128  # every request sent has its final row, cancelled ones included
        assert any(r.status.value == "cancelled" for r in reqs) and any(r.status.value == "ok" for r in reqs)
    finally:
        rec.close()
