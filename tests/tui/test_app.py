"""The app driven by a scripted record stream (a test double of the session): wiring, keys, quitting.

The same assertions against the real session and the time-scaled simulator live in test_live.py."""

from __future__ import annotations

from textual.containers import VerticalScroll
from tui_fakes import ScriptedReplaySession, ScriptedSession, engine_log, info, request_life, scrapes
from tui_helpers import screen_text, until

from rllmtop.events import Phase, Record, SessionState, StateEvent
from rllmtop.tui.app import RllmtopApp, build_app
from rllmtop.tui.widgets.asu import AsuPanel
from rllmtop.tui.widgets.board import RequestBoard
from rllmtop.tui.widgets.chart import BrailleChart
from rllmtop.tui.widgets.help import HelpScreen
from rllmtop.tui.widgets.replaybar import ReplayBar
from rllmtop.tui.widgets.stragglers import StragglerList
from rllmtop.view import LiveView


def script(n: int = 12, *, straggler: bool = False) -> list[Record]:
    recs: list[Record] = [info(), StateEvent(0.0, SessionState.RUNNING), *scrapes(60)]
    for i in range(n):
        recs += request_life(i, "math" if i % 2 else "mcq", 0.5 * i, think=2.0, reasoning=200)
    if straggler:  # sent with the others, thinks 20x longer
        recs += request_life(99, "math", 1.0, think=40.0, reasoning=4000)
    recs.append(engine_log(0.2, "INFO engine ready"))
    return recs


def app_for(session: ScriptedSession) -> RllmtopApp:
    return build_app(session, view=LiveView(auto_summary=False, summary_interval=0), refresh=0.25)


async def play(pilot, session: ScriptedSession, t_end: float, step: float = 0.25) -> None:  # type: ignore[no-untyped-def]
    t = session.t
    while t < t_end:
        t = min(t_end, t + step)
        session.advance(t)
        await pilot.pause()
    app: RllmtopApp = pilot.app
    ticks = app.ticks
    await until(pilot, lambda: app.ticks > ticks, what="a refresh")


async def test_charts_receive_samples_and_board_moves_from_thinking_to_answering() -> None:
    s = ScriptedSession(script())
    app = app_for(s)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, s.started.is_set, what="session.run() started")
        await play(pilot, s, 1.5)
        rows = {r.rid: r for r in app.query_one(RequestBoard).rows}
        assert rows[0].phase is Phase.THINKING and rows[0].reasoning > 0
        await play(pilot, s, 2.3)
        rows = {r.rid: r for r in app.query_one(RequestBoard).rows}
        assert rows[0].phase is Phase.ANSWERING and rows[0].ttfvt is not None
        await play(pilot, s, 8.0)
        charts = {c.id: c for c in app.query(BrailleChart)}
        kv_chart = charts["chart-kv"]

        def kv_points() -> int:
            return 0 if kv_chart.data is None else kv_chart.data.lines[0].series.t.size

        await until(pilot, lambda: kv_points() == 32, what="the KV chart drawn with 8 s of 4 Hz scrapes")
        tps = charts["chart-tps"].data
        assert tps is not None and tps.lines[0].series.v.sum() > 0  # reasoning tokens/s
        assert all(c.renders > 0 for c in charts.values())
        text = screen_text(app)
        assert "RUNNING" in text and "sim 0.1.0" in text and "KV cache" in text
        s.finish()


async def test_a_straggler_is_flagged_with_the_rule() -> None:
    s = ScriptedSession(script(12, straggler=True))
    app = app_for(s)
    async with app.run_test(size=(160, 48)) as pilot:
        await play(pilot, s, 20.0, step=0.5)
        await until(
            pilot, lambda: app.snapshot is not None and app.snapshot.asu is not None, what="a summary"
        )
        await until(
            pilot,
            lambda: any(x.rid == 99 for x in app.snapshot.stragglers),  # type: ignore[union-attr]
            what="request 99 flagged",
        )
        strag = next(x for x in app.snapshot.stragglers if x.rid == 99)  # type: ignore[union-attr]
        assert not strag.finished and "> 3x median" in strag.reason
        await pilot.pause()
        text = screen_text(app)
        assert "run time or reasoning length > 3x the median" in text  # the rule, shown
        assert "#99" in text and "straggling" in text
        assert app.query_one(StragglerList).size.height > 0
        s.finish()


async def test_keys_change_window_sort_filter_and_pages() -> None:
    s = ScriptedSession(script())
    app = app_for(s)
    async with app.run_test(size=(80, 24)) as pilot:
        await play(pilot, s, 3.0)
        board = app.query_one(RequestBoard)
        w = app.view.window
        await pilot.press("plus")
        assert app.view.window > w
        await pilot.press("minus", "minus")
        assert app.view.window < w
        app._tick()
        await pilot.pause()
        # the charts span the window, or the session's age while it is younger (but at least 30 s)
        assert app.query_one("#chart-kv", BrailleChart).data.window == min(app.view.window, 30.0)  # type: ignore[union-attr]
        key = board.sort_key
        await pilot.press("s")
        assert board.sort_key != key
        await pilot.press("f")
        assert board.phase_filter == "active"
        await pilot.press("slash")
        await pilot.press(*"math")
        assert "math" in screen_text(app).splitlines()[-2]  # the filter line shows what is typed
        await pilot.press("enter")
        assert board.text_filter == "math"
        assert board.rows and all(r.cls == "math" for r in board.rows)
        await pilot.press("slash", "backspace", "backspace", "backspace", "backspace", "enter")
        assert board.text_filter == ""
        # small terminal: pages
        assert not app.query_one("#side").display or app.query_one("#side").region.width == 0
        await pilot.press("2")
        await pilot.pause()
        assert app.query_one(AsuPanel).region.width > 0 and app.query_one("#overview").region.width == 0
        await pilot.press("3")
        await pilot.pause()
        assert app.query_one("#events").region.width > 0
        await pilot.press("1")
        await pilot.pause()
        assert app.query_one(RequestBoard).region.width > 0
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        app.screen.query_one(VerticalScroll).scroll_end(animate=False)
        await pilot.pause()
        await pilot.pause()
        text = " ".join(screen_text(app).split())
        assert "likely preemption" in text and "holds the cache" in text  # the timeline page (t), explained
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        s.finish()


async def test_quit_drains_then_cancels_and_returns_the_outcome() -> None:
    s = ScriptedSession(script())
    app = app_for(s)
    async with app.run_test(size=(80, 24)) as pilot:
        await play(pilot, s, 2.0)
        await pilot.press("q")
        assert s.stops == [False] and app.is_running  # the gentle stop: in-flight ones may finish
        await pilot.press("q")
        assert s.stops == [False, True]  # the hard one
        await until(pilot, lambda: not app.is_running, what="the app to exit")
    assert app.return_value == "outcome"
    assert app.ended.is_set()


async def test_ctrl_c_quits_and_a_finished_session_quits_at_once() -> None:
    s = ScriptedSession(script())
    app = app_for(s)
    async with app.run_test(size=(80, 24)) as pilot:
        await play(pilot, s, 1.0)
        s.finish()
        await until(pilot, app.ended.is_set, what="the session to end")
        assert app.snapshot is not None and app.snapshot.state is SessionState.DONE
        await pilot.press("ctrl+c")
        await until(pilot, lambda: not app.is_running, what="the app to exit")
    assert s.stops == [] and app.return_value == "outcome"


async def test_the_run_length_is_taken_when_the_session_ends_not_when_the_app_quits() -> None:
    """The TUI stays open after the run; the exit line printed 653 s for a 272 s run (the wait for q)."""
    s = ScriptedSession(script())
    app = app_for(s)
    async with app.run_test(size=(80, 24)) as pilot:
        await play(pilot, s, 3.0)
        s.finish()
        await until(pilot, app.ended.is_set, what="the session to end")
        s.t = 400.0  # the session clock goes on while the app waits for q
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, what="the app to exit")
    assert app.ended_at == 3.0


async def test_replay_keys_drive_the_replay_source() -> None:
    s = ScriptedReplaySession(script(40), duration=60.0)
    app = app_for(s)
    r = s.fake_replay
    async with app.run_test(size=(80, 24)) as pilot:
        r.position = 15.0
        s.advance(15.0)  # more board rows than fit: the focused board must not eat home/end/left/right
        app._tick()
        await pilot.pause()
        assert len(app._board.rows) > app._board.size.height and app._board.has_focus
        r.position = 0.0
        await pilot.press("space")
        assert r.paused
        await pilot.press("full_stop")
        assert r.position == 1.0
        await pilot.press("right")
        assert r.position == 11.0
        await pilot.press("comma")
        assert r.position == 10.0
        await pilot.press("left", "left")
        assert r.position == 0.0
        await pilot.press("end")
        assert r.position == 60.0
        await pilot.press("home")
        assert r.position == 0.0
        await pilot.press("right_square_bracket", "right_square_bracket")
        assert r.speed == 4.0
        for _ in range(10):
            await pilot.press("left_square_bracket")
        assert r.speed == 0.25
        for _ in range(12):
            await pilot.press("right_square_bracket")
        assert r.speed == 64.0
        await pilot.pause()
        bar = app.query_one(ReplayBar)
        await until(pilot, lambda: "64x" in bar.text, what="the replay bar to redraw")
        assert "paused" in bar.text and "0:00 / 1:00" in bar.text
        s.finish()


async def test_replay_keys_do_nothing_live() -> None:
    s = ScriptedSession(script())
    app = app_for(s)
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.check_action("replay_pause", ()) is False
        assert not app.query(ReplayBar)
        await pilot.press("space", "right")  # no replay: nothing to drive, nothing breaks
        assert "pause" not in screen_text(app).split("\n")[-1]
        s.finish()


async def test_session_crash_is_shown_not_raised() -> None:
    class Crashing(ScriptedSession):
        async def run(self) -> str:
            raise RuntimeError("boom")

    s = Crashing(script())
    app = app_for(s)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, app.ended.is_set, what="the session to fail")
        assert isinstance(app.session_error, RuntimeError)
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, what="the app to exit")
    assert app.return_value is None


async def test_refresh_and_ctrl_c_keep_working_under_the_help_screen() -> None:
    s = ScriptedSession(script())
    app = app_for(s)
    async with app.run_test(size=(80, 24)) as pilot:
        await play(pilot, s, 1.0)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await play(pilot, s, 3.0)  # refreshes keep landing in the main screen's widgets
        assert app.snapshot is not None and app.snapshot.progress.sent > 0
        assert app._board.rows
        await pilot.press("ctrl+c")
        assert s.stops == [False]
        s.finish()
        await until(pilot, lambda: not app.is_running, what="the app to exit")


async def test_a_failed_session_says_why_on_screen() -> None:
    from rllmtop.events import LogEvent

    why = "cannot reach http://127.0.0.1:9 (ConnectError: All connection attempts failed)"
    s = ScriptedSession(
        [
            info(engine_kind="unknown"),
            LogEvent(0.3, "rllmtop", "error", why),
            StateEvent(0.3, SessionState.FAILED, why),
        ]
    )

    async def fail() -> str:
        s.advance(0.3)
        return "failed"

    s.run = fail  # type: ignore[method-assign]
    app = app_for(s)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, app.ended.is_set, what="the session to fail")
        await pilot.pause()
        assert any(why in n.message and n.severity == "error" for n in app._notifications)
        assert "FAILED" in screen_text(app)
        s.t = 50.0
        app._tick()
        assert app.snapshot is not None and app.snapshot.t == 0.3  # the clock stopped at the failure
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, what="the app to exit")
    assert app.return_value == "failed"


async def test_page_keys_only_on_small_terminals() -> None:
    s = ScriptedSession(script())
    app = app_for(s)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert not app.everything_fits and app.check_action("page", (2,))
        assert "ASU" in screen_text(app).splitlines()[-1]  # the footer offers the pages
        await pilot.resize_terminal(160, 48)
        await pilot.pause()
        assert app.everything_fits and not app.check_action("page", (2,))
        await until(
            pilot, lambda: "ASU" not in screen_text(app).splitlines()[-1], what="the footer to drop pages"
        )
        s.finish()


async def test_the_first_quit_while_draining_is_the_gentle_stop() -> None:
    # issue 11.9: one q while DRAINING used to cancel every in-flight request at once
    s = ScriptedSession([*script(), StateEvent(2.0, SessionState.DRAINING)])
    app = app_for(s)
    async with app.run_test(size=(80, 24)) as pilot:
        await play(pilot, s, 2.5)
        assert s.state is SessionState.DRAINING
        await pilot.press("q")
        assert s.stops == [False] and app.is_running  # in-flight requests keep running
        await play(pilot, s, 3.0)
        assert app.snapshot is not None and app.snapshot.progress.in_flight > 0
        await pilot.press("q")
        assert s.stops == [False, True]  # now cancel them
        await until(pilot, lambda: not app.is_running, what="the app to exit")


async def test_header_says_the_clock_the_matrix_cell_and_the_overrides() -> None:
    from rllmtop.events import Provenance

    prov = Provenance(
        source="default",
        overrides=(("request_rate", "4.0"), ("num_prompts", "12")),
        override_flags=(("request_rate", "--request-rate"), ("num_prompts", "--num-prompts")),
        cell=(("engine.profile", '"rllm-7b"'),),
        cell_label="engine.profile=rllm-7b",
        planned_requests=12,
    )
    s = ScriptedSession(
        [
            info(scenario_name="default", provenance=prov, clock="simulated", speed=10.0),
            StateEvent(0.0, SessionState.RUNNING),
            *scrapes(3.0),
        ]
    )
    app = app_for(s)
    async with app.run_test(size=(160, 30)) as pilot:
        await play(pilot, s, 2.0)
        header = app.query_one("#header").text  # type: ignore[attr-defined]
        assert "default [engine.profile=rllm-7b] --request-rate 4.0 --num-prompts 12" in header
        assert "simulated clock (x10)" in header
        assert app.snapshot is not None and app.snapshot.progress.planned == 12  # from the provenance
        await pilot.resize_terminal(80, 24)
        await play(pilot, s, 3.0)
        header = app.query_one("#header").text  # type: ignore[attr-defined]
        assert "RUNNING" in header and "sim x10" in header  # the clock stays on screen when narrow
        s.finish()


async def test_the_live_runners_planned_count_wins() -> None:
    from rllmtop.events import Provenance

    recs = script()
    recs[0] = info(provenance=Provenance(planned_requests=500))
    s = ScriptedSession(recs)
    app = app_for(s)
    async with app.run_test(size=(80, 24)) as pilot:
        await play(pilot, s, 1.0)
        assert app.snapshot is not None and app.snapshot.progress.planned == 500
        s.planned_requests = 480  # the schedule, built: a duration ended it before num_prompts
        await play(pilot, s, 2.0)
        assert app.snapshot.progress.planned == 480
        assert "sent" in screen_text(app) and "/480" in screen_text(app)
        s.finish()


async def test_asu_panel_shows_cut_and_warnings_in_words() -> None:
    from rllmtop.events import ClientHealth, RequestEvent, RequestKind, RequestRecord

    recs = script(8)
    cut = RequestRecord(
        rid=50, cls="math", t_scheduled=1.0, t_dispatch=1.0, t_sent=1.0, t_first_token=1.1, t_done=3.0,
        reasoning_tokens=4096, finish_reason="length", correct=False,
    )  # fmt: skip
    recs += [
        RequestEvent(RequestKind.SENT, 1.0, 50, "math"),
        RequestEvent(RequestKind.DONE, 3.0, 50, "math", 4096, 0, record=cut),
        *(ClientHealth(float(t), 1.0, 0.002, 0.001) for t in range(1, 6)),
        ClientHealth(6.0, 1.0, 0.120, 0.03),  # the client's loop was 120 ms late
    ]
    s = ScriptedSession(recs)
    app = app_for(s)
    async with app.run_test(size=(80, 24)) as pilot:
        await play(pilot, s, 8.0)
        await until(pilot, lambda: app.snapshot is not None and app.snapshot.asu is not None, what="ASU")
        await pilot.press("2")
        panel = app.query_one(AsuPanel)
        await until(pilot, lambda: bool(panel.alerts), what="the warning")
        assert "cut" in panel.columns and "acc" in panel.columns
        text = screen_text(app)
        assert "up to 120ms of client delay" in text  # analysis.client_delay_verdict's sentence
        assert "client loop lateness" in text
        header = app.query_one("#header").text  # type: ignore[attr-defined]
        assert "⚠ client late" in header
        rows = {c.name: c for c in app.snapshot.asu.classes}  # type: ignore[union-attr]
        assert rows["math"].truncated == 1
        s.finish()


async def test_kv_chart_counts_preemptions_in_the_window_and_the_run() -> None:
    from rllmtop.events import MetricSample, Scrape

    def pre(t: float, total: float) -> Scrape:
        return Scrape(
            t, 0.0, True, samples=(MetricSample(t, "kv_cache_usage", 0.9), MetricSample(t, "preemptions_total", total))
        )  # fmt: skip

    s = ScriptedSession(
        [info(), StateEvent(0.0, SessionState.RUNNING), pre(0.5, 0), pre(1.0, 100), pre(59.0, 100), pre(60.0, 118)]
    )  # fmt: skip
    app = app_for(s)
    async with app.run_test(size=(220, 50)) as pilot:
        await play(pilot, s, 60.0, step=5.0)
        app.view.set_window(30.0)
        app._tick()
        await pilot.pause()
        assert "preempted 18 in window / 118 run" in screen_text(app)  # issue 10.8: which count is which
        await pilot.resize_terminal(160, 48)
        await until(pilot, lambda: "preempted 18 win / 118 run" in screen_text(app), what="the short form")
        s.finish()


async def test_the_board_shows_a_worker_column_once_several_workers_sent() -> None:
    from rllmtop.events import RequestEvent, RequestKind, WorkerEvent

    recs = script(4)
    recs += [
        WorkerEvent(0.1, 1, "started", node="node-b", pid=7),
        RequestEvent(RequestKind.SENT, 3.0, 40, "math", worker=1),
    ]
    s = ScriptedSession(recs)
    app = app_for(s)
    async with app.run_test(size=(100, 30)) as pilot:
        await play(pilot, s, 2.0)
        board = app.query_one(RequestBoard)
        assert not board.show_workers and "worker" not in screen_text(app)  # one sender: no column
        await play(pilot, s, 3.5)
        await until(pilot, lambda: board.show_workers, what="the worker column")
        await pilot.pause()
        lines = screen_text(app).splitlines()
        head = next(ln for ln in lines if " id class" in ln)
        assert "worker" in head and head.index("worker") < head.index("phase")
        assert any(" 40 math" in ln and "1@node-b" in ln for ln in lines)
        assert any(ln.split("│")[1].split()[2:3] == ["0"] for ln in lines if "│" in ln and " mcq " in ln)
        s.finish()


async def test_a_dead_worker_is_in_the_event_log_and_the_header() -> None:
    from rllmtop.events import WorkerEvent

    recs = script(4)
    recs.append(WorkerEvent(2.0, 2, "died", node="n2", pid=9, detail="exit code -9"))
    s = ScriptedSession(recs)
    app = app_for(s)
    async with app.run_test(size=(80, 24)) as pilot:
        await play(pilot, s, 3.0)
        header = app.query_one("#header")
        await until(pilot, lambda: "⚠ worker died" in header.text, what="the header's warning")  # type: ignore[attr-defined]
        await pilot.press("3")
        await pilot.pause()
        text = screen_text(app)
        assert "worker 2 (node n2) died: exit code -9" in text
        s.finish()


async def test_the_asu_panel_shows_goodput_from_the_session_info() -> None:
    import json

    recs = script(8)
    recs[0] = info(extra=(("profile", "rllm-7b"), ("goodput", json.dumps({"e2el": 2.5}))))
    s = ScriptedSession(recs)
    app = app_for(s)
    async with app.run_test(size=(160, 48)) as pilot:
        await play(pilot, s, 8.0)
        panel = app.query_one(AsuPanel)
        await until(pilot, lambda: "good" in panel.columns, what="the goodput column")
        snap = app.snapshot
        assert snap is not None and snap.asu is not None and snap.asu.goodput == {"e2el": 2.5}
        assert "goodput (e2el <= 2.50s)" in screen_text(app)
        s.finish()


async def test_two_warnings_and_five_rows_fit_the_asu_panel_whole() -> None:
    """At 160x48 the ASU box (at most 14 rows) cut the second warning's sentence mid-way."""
    from rllmtop.events import ClientHealth, MetricSample, Scrape

    recs: list[Record] = [info(), StateEvent(0.0, SessionState.RUNNING)]
    for i, cls in enumerate(("easy", "medium", "mcq", "hard") * 3):
        recs += request_life(i, cls, 0.3 * i, think=1.0, reasoning=200, difficulty=cls)
    recs += [
        *(ClientHealth(float(t), 1.0, 0.002, 0.001) for t in range(1, 6)),
        ClientHealth(6.0, 1.0, 0.120, 0.03),
        Scrape(0.5, 0.002, True, samples=(MetricSample(0.5, "sim_drift_seconds", 0.0),)),
        Scrape(7.0, 0.002, True, samples=(MetricSample(7.0, "sim_drift_seconds", 2.0),)),
    ]
    s = ScriptedSession(recs)
    app = app_for(s)
    async with app.run_test(size=(160, 48)) as pilot:
        await play(pilot, s, 8.0)
        panel = app.query_one(AsuPanel)
        await until(pilot, lambda: len(panel.alerts) == 2, what="both warnings")
        await until(pilot, lambda: "inflated" in screen_text(app), what="the second sentence, whole")
        text = screen_text(app)
        assert "requests were touched" in text and "hard" in text
        s.finish()
