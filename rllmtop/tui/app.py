"""The Textual monitor. ``build_app(session)`` is the one way to make it (CLI, tests, snapshot tests).

Wiring: on mount the app adds ``LiveView.handle`` as a session sink and runs ``session.run()`` as a
worker. A 4 Hz timer (a Textual timer never overlaps itself) takes ``view.snapshot(session.now())`` and
hands the immutable snapshot to every widget inside ``batch_update()``; widgets store it and repaint only
what changed (hidden panels cost nothing). The O(n) summary (ASU, straggler baselines, distribution) runs
in a thread when a request ended. Replay sessions drive these very same widgets; they only add the replay
keys and the progress bar. With two or more engines a fleet table shows one row per engine, and ``e``
puts one engine's own series in the engine charts.

Stopping: the first ``q`` (or ctrl+c) is ``session.stop()`` whatever the state (no new requests; in-flight
ones may finish within the grace period), the second ``session.stop(force=True)`` (cancel them now). The
session owns the policy (grace period, what a replay does); the app only says which press it was.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections import deque
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Footer, Input
from textual.worker import Worker, WorkerState

from rllmtop.events import Record, SessionState
from rllmtop.tui.widgets.asu import AsuPanel
from rllmtop.tui.widgets.board import RequestBoard
from rllmtop.tui.widgets.chart import BrailleChart, ChartData, Line, human
from rllmtop.tui.widgets.distribution import ReasoningDist
from rllmtop.tui.widgets.filter import FilterInput
from rllmtop.tui.widgets.fleet import FleetTable, spread_text
from rllmtop.tui.widgets.header import HeaderBar
from rllmtop.tui.widgets.help import HelpScreen
from rllmtop.tui.widgets.logpane import LogPane
from rllmtop.tui.widgets.replaybar import ReplayBar, ReplayControls
from rllmtop.tui.widgets.stragglers import StragglerList
from rllmtop.tui.widgets.timeline import Timeline
from rllmtop.view import WINDOWS, LiveView, Series, SummaryJob, ViewSnapshot, engine_label

if TYPE_CHECKING:
    from collections.abc import Callable

    from rllmtop.events import SessionInfo
    from rllmtop.record.replay import ReplaySource

__all__ = ["RllmtopApp", "SessionLike", "build_app"]

REFRESH_S = 0.25
SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
FLEET_ROWS = 8  # fleet table rows shown at most (more engines scroll) ...
SHORT_SCREEN_ROWS = 22  # ... and on a short terminal, what is left above the board's 5 rows (80x24: 2)


class SessionLike(Protocol):
    """The part of :class:`rllmtop.session.Session` the app uses.

    ``stop(force)`` is thread-safe: the first call stops sending and lets in-flight requests finish
    within the grace period, ``force`` (or a second call) cancels them now; ``stopping`` says which was
    asked ("" | "gentle" | "forced"); ``planned_requests`` is the schedule's length once known; ``replay``
    the replay source in a replay session."""

    info: SessionInfo | None
    state: SessionState
    record_path: str | None

    @property
    def replay(self) -> ReplaySource | None: ...
    @property
    def planned_requests(self) -> int | None: ...
    @property
    def stopping(self) -> str: ...

    def add_sink(self, sink: Callable[[Record], None]) -> None: ...
    async def run(self) -> Any: ...
    def now(self) -> float: ...
    def stop(self, force: bool = False) -> None: ...


# ------------------------------------------------------------------------------------------ chart data


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def chart_window(s: ViewSnapshot) -> float:
    """The time span the charts show: the chosen window, or less while the session is younger than it
    (at least the smallest window), so a short run fills the charts."""
    return min(s.window, max(WINDOWS[0], s.t))


def _chart(s: ViewSnapshot, lines: tuple[Line, ...], **kw: Any) -> ChartData:
    """Chart data on the shared time axis; its version changes only when one of its own series (or its
    marks) changed, so a chart whose data did not move is not redrawn."""
    marks: Series | None = kw.get("marks")
    version = (s.generation, *(ln.series.version for ln in lines), marks.version if marks is not None else 0)
    return ChartData(lines, s.t, chart_window(s), version, **kw)


def _scope(s: ViewSnapshot, fleet: str) -> str:
    """What an engine chart covers: the focused engine, or how the fleet's values are formed."""
    if s.focus is not None:
        return engine_label(s.focus)
    n = len(s.engines)
    return f"{fleet} of {n}" if n >= 2 else ""


def kv_scope(s: ViewSnapshot) -> str:
    """The KV chart's legend: the fleet's KV is the capacity-weighted mean when every engine says its
    capacity, else the plain mean (``analysis.kv_weights``)."""
    return _scope(s, "capacity-weighted" if s.kv_capacity_weighted else "mean")


def kv_chart(s: ViewSnapshot) -> ChartData:
    return _chart(
        s,
        (Line(s.kv, "used", "green", fill=True, fmt=_pct),),
        y_max=1.0,
        ref_line=1.0,
        marks=s.preemptions,
        mark_label="preempted",
        mark_total=s.preemptions_run,
        y_fmt=_pct,
        scope=kv_scope(s),
    )


def queue_chart(s: ViewSnapshot) -> ChartData:
    return _chart(
        s,
        (Line(s.running, "running", "cyan"), Line(s.waiting, "waiting", "yellow")),
        scope=_scope(s, "sum"),
    )


def tps_chart(s: ViewSnapshot) -> ChartData:
    return _chart(
        s,
        (
            Line(s.reasoning_tps, "reasoning", "magenta", fill=True),
            Line(s.answer_tps, "answer", "green", fill=True, stack_on=s.reasoning_tps),
            Line(s.engine_tps, "engine", "grey62"),
        ),
        scope=engine_label(s.focus) if s.focus is not None else "",
    )


def rps_chart(s: ViewSnapshot) -> ChartData:
    return _chart(
        s,
        (
            Line(s.arrivals, "sent", "dodger_blue1"),
            Line(s.completions, "done", "cyan"),
            Line(s.failures, "failed", "red"),
        ),
        y_fmt=human,
    )


# ------------------------------------------------------------------------------------------ the app


class RllmtopApp(App[Any]):
    """The monitor. Its return value (``app.run()``) is the session's outcome, or None."""

    CSS_PATH = "rllmtop.tcss"
    TITLE = "rllmtop"
    ENABLE_COMMAND_PALETTE = False
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (130, "-wide")]  # noqa: RUF012 (Textual declares it so)
    VERTICAL_BREAKPOINTS = [(0, "-short"), (36, "-tall")]  # noqa: RUF012

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "quit", "quit", show=False, priority=True),
        Binding("question_mark", "help", "help"),
        Binding("plus,equals_sign", "zoom(1)", "window", key_display="+-"),
        Binding("minus", "zoom(-1)", "narrower", key_display="-", show=False),
        Binding("s", "sort", "sort"),
        Binding("S", "reverse_sort", "reverse", show=False),
        Binding("f", "filter_phase", "filter"),
        Binding("slash", "filter_text", "find", key_display="/"),
        # fleets only (hidden with one engine, see check_action)
        Binding("e", "focus_engine(1)", "engine"),
        Binding("E", "focus_engine(-1)", "prev engine", show=False),
        # pages: small terminals only (hidden when everything fits, see check_action)
        Binding("1", "page(1)", "main"),
        Binding("2", "page(2)", "ASU"),
        Binding("3", "page(3)", "logs"),
        Binding("t", "timeline", "timeline"),  # after the page keys: those must fit in 80 columns
        # replay only (hidden otherwise, see check_action)
        Binding("space", "replay_pause", "pause"),
        Binding("full_stop", "replay_step(1)", "step", key_display="."),
        Binding("comma", "replay_step(-1)", "back", key_display=",", show=False),
        Binding("right_square_bracket", "replay_speed(1)", "faster", key_display="]"),
        Binding("left_square_bracket", "replay_speed(-1)", "slower", key_display="[", show=False),
        Binding("right", "replay_seek(10)", "+10s", key_display="→", show=False),
        Binding("left", "replay_seek(-10)", "-10s", key_display="←", show=False),
        Binding("home", "replay_seek_to(0)", "start", show=False),
        Binding("end", "replay_seek_to(1)", "end", show=False),
    ]

    KEY_HELP: ClassVar[list[tuple[str, str]]] = [
        (
            "q, ctrl+c",
            "quit: the first press stops sending and lets in-flight requests finish within the grace period "
            "(also while draining); the second cancels them; the app exits once the recording is closed",
        ),
        ("?", "this help"),
        ("+ / -", "widen / narrow the chart window (30 s ... 1 h)"),
        ("s / S", "sort the request board by the next column / reverse the order"),
        ("f", "filter the board by phase (all, active, thinking, answering, waiting, stragglers, ended)"),
        ("/", "filter the board by class, id or phase (enter applies, esc cancels, empty clears)"),
        ("up / down", "move in the request board"),
        (
            "t",
            "the request board <-> the per-request timeline: a row per request (in flight, then the newest "
            "ended) coloured by phase on the charts' window, stalls marked as likely preemptions, under the KV "
            "line; beside it who holds the KV cache now and at the last KV peak / preemption burst",
        ),
        (
            "e / E",
            "fleets: show the next / previous engine's own series in the engine charts (then the fleet)",
        ),
        ("1 2 3", "small terminals: overview / analysis (ASU, stragglers) / logs"),
        ("space", "replay: pause / resume"),
        (". / ,", "replay: step 1 s forward / back"),
        ("] / [", "replay: faster / slower (0.25x ... 64x)"),
        ("→ / ←", "replay: seek 10 s forward / back"),
        ("home / end", "replay: go to the start / the end"),
    ]

    def __init__(
        self,
        session: SessionLike,
        *,
        view: LiveView | None = None,
        refresh: float = REFRESH_S,
        session_thread: bool | None = None,
    ) -> None:
        super().__init__()
        self.session = session
        # The real session runs on its own thread and event loop, so that drawing a frame (~10 ms) never
        # delays a scheduled send; its records reach the view through a queue drained at each refresh.
        # Test doubles driven from the test's loop run on the app's loop (session_thread=False).
        if session_thread is None:
            from rllmtop.session import Session

            session_thread = isinstance(session, Session)
        self.session_thread = session_thread
        self._inbox: deque[Record] = deque()
        self._switch_interval = sys.getswitchinterval()
        self.view = view or LiveView(auto_summary=False)
        self.refresh_interval = refresh
        self.snapshot: ViewSnapshot | None = None  # the last snapshot handed to the widgets
        self.outcome: Any = None
        self.session_error: BaseException | None = None
        self.ended = asyncio.Event()  # set when session.run() returned (or failed)
        self.ended_at: float | None = None  # session time then (the run's length; the app may stay open)
        self.ticks = 0
        self.page = 1
        self._quitting = False
        self._worker: Worker[Any] | None = None
        self._consumers: list[Any] = []
        self._engine_box: Widget | None = None
        self._fleet_box: Widget | None = None
        self._fleet_title = ""
        self._replay_bar: ReplayBar | None = None
        self._board: RequestBoard  # set in on_mount
        self._filter: FilterInput
        self._main: Any = None
        self._fits = False
        self._summary_task: asyncio.Task[None] | None = None

    @property
    def replay(self) -> ReplayControls | None:
        return self.session.replay

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header", record_path=self.session.record_path)
        if self.replay is not None:
            yield ReplayBar(self.replay, id="replaybar")
        with Horizontal(id="body"):
            with Vertical(id="overview"):
                with Grid(id="charts"):
                    yield BrailleChart("KV cache", kv_chart, id="chart-kv")
                    yield BrailleChart("queue", queue_chart, id="chart-queue")
                    yield BrailleChart("tok/s", tps_chart, id="chart-tps", show_axis=True)
                    yield BrailleChart("req/s", rps_chart, id="chart-rps", show_axis=True)
                with Vertical(id="fleet-box", classes="box"):
                    yield FleetTable(id="fleet")
                with Vertical(id="board-box", classes="box"):
                    yield RequestBoard(id="board")
                yield Timeline(self.view.timeline, chart_window, id="timeline", classes="box")
            with Vertical(id="side"):
                with Vertical(id="analysis"):
                    with Vertical(id="asu-box", classes="box"):
                        yield AsuPanel(id="asu")
                    with Vertical(id="dist-box", classes="box"):
                        yield ReasoningDist(id="dist")
                    with Vertical(id="strag-box", classes="box"):
                        yield StragglerList(id="stragglers")
                with Vertical(id="logs"):
                    with Vertical(id="events-box", classes="box"):
                        yield LogPane(lambda s: (s.events, s.events_total), id="events")
                    with Vertical(id="engine-box", classes="box"):
                        yield LogPane(
                            lambda s: (s.engine_log, s.engine_log_total), show_source=False, id="engine-log"
                        )
        yield FilterInput(
            placeholder="filter requests by class, id or phase; enter applies, esc cancels", id="filter"
        )
        yield Footer()

    def on_mount(self) -> None:
        titles = {
            "board-box": "requests",
            "asu-box": "ASU",
            "dist-box": "reasoning length (finished)",
            "strag-box": "stragglers",
            "events-box": "events",
            "engine-box": "engine log",
        }
        for wid, title in titles.items():
            self.query_one(f"#{wid}").border_title = title
        self.screen.add_class("-page-1")  # the main screen
        self._consumers = [
            self.query_one(HeaderBar),
            *self.query(BrailleChart),
            self.query_one(FleetTable),
            self.query_one(RequestBoard),
            self.query_one(Timeline),
            self.query_one(AsuPanel),
            self.query_one(ReasoningDist),
            self.query_one(StragglerList),
            *self.query(LogPane),
        ]
        self._engine_box = self.query_one("#engine-box")
        self._fleet_box = self.query_one("#fleet-box")
        self._fleet_box.display = False
        self._replay_bar = self.query_one(ReplayBar) if self.replay is not None else None
        self._board = self.query_one(RequestBoard)
        self._filter = self.query_one(FilterInput)
        self._main = self.screen  # actions may run while the help screen is on top
        self._board.focus()
        if self.session_thread:
            self.session.add_sink(self._inbox.append)  # deque.append is atomic: safe across threads
            # a frame holds the GIL for ~10 ms; let the session thread in at least every millisecond
            sys.setswitchinterval(0.001)
            self._worker = self._run_session_thread()
        else:
            self.session.add_sink(self.view.handle)
            self._worker = self._run_session()
        self._tick()
        self.set_interval(self.refresh_interval, self._tick)

    # ------------------------------------------------------------------ session

    @work(exclusive=True, exit_on_error=False, group="session")
    async def _run_session(self) -> Any:
        return await self.session.run()

    @work(thread=True, exclusive=True, exit_on_error=False, group="session")
    def _run_session_thread(self) -> Any:
        from rllmtop._loop import run

        return run(self.session.run())

    def on_unmount(self) -> None:
        sys.setswitchinterval(self._switch_interval)
        if self.session_thread and not self.ended.is_set():
            # the app is going away without a quit (an exception, a test harness): end the session
            # thread too, or the process would wait for it forever; it still tears down and records
            self.session.stop(force=True)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is not self._worker:
            return
        state = event.state
        if state not in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            return
        if state is WorkerState.SUCCESS:
            self.outcome = event.worker.result
        elif state is WorkerState.CANCELLED:  # forced quit: the session still tore down and recorded
            self.outcome = getattr(self.session, "outcome", None)
        elif state is WorkerState.ERROR:
            self.session_error = event.worker.error
            self.notify(f"session failed: {event.worker.error}", severity="error", timeout=30)
        self.ended_at = self.session.now()
        self.ended.set()
        self._tick()
        if self._quitting:
            self.exit(self.outcome)
        elif state is WorkerState.SUCCESS:
            snap = self.snapshot
            if snap is not None and snap.state in (SessionState.FAILED, SessionState.ENGINE_DIED):
                why = snap.state_detail or next(
                    (e.text for e in reversed(snap.events) if e.level == "error"), "see the events (key 3)"
                )
                self.notify(
                    f"{why}\npress q to quit",
                    title=f"session {snap.state.value}",
                    severity="error",
                    timeout=3600,
                )
            else:
                self.notify("session ended: press q to quit", timeout=10)

    # ------------------------------------------------------------------ refresh

    def _tick(self) -> None:
        if not self._consumers or not self.screen_stack:  # not mounted yet, or already shutting down
            return
        inbox = self._inbox
        while inbox:
            self.view.handle(inbox.popleft())
        planned = self.session.planned_requests  # the live runner's count, once known
        if planned is not None and planned != self.view.planned:
            self.view.set_planned(planned)
        snap = self.view.snapshot(self.session.now())
        self.snapshot = snap
        self.ticks += 1
        if self._summary_task is None:
            job = self.view.summary_job()
            if job is not None:
                self._summary_task = asyncio.get_running_loop().create_task(self._summarise(job))
        with self.batch_update():
            for w in self._consumers:
                w.update_snapshot(snap)
            self._titles(snap)
            if self._replay_bar is not None:
                self._replay_bar.tick()

    async def _summarise(self, job: SummaryJob) -> None:
        try:
            await asyncio.to_thread(job.run)
        except Exception as e:  # a bug in the analysis must not take the monitor down
            self.notify(f"could not compute the ASU summary: {e!r}", severity="error", timeout=30)
        finally:
            self.view.install(job)
            self._summary_task = None

    def _titles(self, snap: ViewSnapshot) -> None:
        fits = self.everything_fits
        if fits != self._fits:  # the terminal was resized across the breakpoints: page keys come or go
            self._fits = fits
            self.refresh_bindings()
        engine_box = self._engine_box
        show = snap.engine_log_total > 0
        if engine_box is not None and engine_box.display != show:
            engine_box.display = show
        fleet_box = self._fleet_box
        n = len(snap.engines)
        if fleet_box is not None:
            show = n >= 2
            if fleet_box.display != show:
                fleet_box.display = show
                self.refresh_bindings()  # the engine key comes or goes
            if show:
                rows = FLEET_ROWS if self._main.has_class("-tall") else self.size.height - SHORT_SCREEN_ROWS
                height = min(n, max(2, min(FLEET_ROWS, rows))) + FleetTable.HEADER_LINES + 2
                if fleet_box.styles.height is None or fleet_box.styles.height.value != height:
                    fleet_box.styles.height = height
                title = "fleet · " + spread_text(n, snap.spread)
                if snap.focus is not None:
                    title += f" · charts: {engine_label(snap.focus)}"
                if title != self._fleet_title:
                    self._fleet_title = title
                    fleet_box.border_title = title

    # ------------------------------------------------------------------ actions

    async def action_quit(self) -> None:
        """First press: ``stop()`` (stop sending, let in-flight requests finish), in any state; second:
        ``stop(force=True)`` (cancel them); then exit once the session ended."""
        if self.ended.is_set():
            self.exit(self.outcome)
            return
        self._quitting = True
        stopping = self.session.stopping  # what was asked before this press (a signal counts too)
        if not stopping:
            self.session.stop()
            self.notify(
                "stopping: no new requests; in-flight ones may finish (q again cancels them)", timeout=10
            )
        elif stopping == "gentle":
            self.session.stop(force=True)
            self.notify("cancelling in-flight requests", timeout=10)
        elif self.session_thread:  # the session tears down on its own thread, bounded: say what it waits for
            self.notify("stopping the engine and closing the recording...", timeout=10)
        elif self._worker is not None:
            self._worker.cancel()

    def action_focus_engine(self, step: int) -> None:
        focus = self.view.cycle_focus(step)
        self.notify(f"engine charts: {engine_label(focus) if focus else 'the fleet'}", timeout=2)
        self._tick()

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.KEY_HELP, self.view.rule.describe()))

    def action_zoom(self, step: int) -> None:
        w = self.view.zoom(step)
        self.notify(f"chart window {_span(w)}", timeout=2)
        self._tick()

    def action_sort(self) -> None:
        self._board.cycle_sort()

    def action_reverse_sort(self) -> None:
        self._board.reverse_sort()

    def action_filter_phase(self) -> None:
        self._board.cycle_filter()

    def action_filter_text(self) -> None:
        inp = self._filter
        inp.value = self._board.text_filter
        inp.add_class("-open")
        inp.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if isinstance(event.input, FilterInput):
            self._board.set_text_filter(event.value)
            self._close_filter()

    def on_filter_input_cancelled(self, _: FilterInput.Cancelled) -> None:
        self._close_filter()

    def _close_filter(self) -> None:
        self._filter.remove_class("-open")
        self._board.focus()

    def action_timeline(self) -> None:
        """The board area shows the request board or the timeline (on the main page)."""
        timeline = self.query_one(Timeline)
        show = not timeline.display
        timeline.display = show
        self.query_one("#board-box").display = not show
        if self.page != 1:
            self.action_page(1)
        if not show:
            self._board.focus()
        self._tick()

    def action_page(self, n: int) -> None:
        self.page = n
        for k in (1, 2, 3):
            self._main.set_class(k == n, f"-page-{k}")

    # replay
    def action_replay_pause(self) -> None:
        if self.replay is not None:
            self.replay.toggle_pause()
            self._tick()

    def action_replay_step(self, direction: int) -> None:
        r = self.replay
        if r is None:
            return
        r.step(1.0 if direction > 0 else -1.0)
        self._tick()

    def action_replay_speed(self, direction: int) -> None:
        r = self.replay
        if r is None:
            return
        i = min(range(len(SPEEDS)), key=lambda k: abs(math.log(SPEEDS[k] / max(r.speed, 1e-9))))
        r.speed = SPEEDS[min(max(i + direction, 0), len(SPEEDS) - 1)]
        self._tick()

    def action_replay_seek(self, delta: float) -> None:
        r = self.replay
        if r is not None:
            r.seek(min(max(0.0, r.position + delta), r.duration))
            self._tick()

    def action_replay_seek_to(self, where: int) -> None:
        r = self.replay
        if r is not None:
            r.seek(0.0 if where == 0 else r.duration)
            self._tick()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action.startswith("replay_"):
            return self.replay is not None
        if action == "page":
            return not self.everything_fits
        if action == "focus_engine":
            return self.snapshot is not None and len(self.snapshot.engines) >= 2
        return True

    @property
    def everything_fits(self) -> bool:
        """Wide and tall enough for every panel at once (no pages)."""
        main = self._main
        return main is not None and main.has_class("-wide") and main.has_class("-tall")


def _span(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def build_app(
    session: SessionLike,
    *,
    view: LiveView | None = None,
    refresh: float = REFRESH_S,
    session_thread: bool | None = None,
) -> RllmtopApp:
    """The monitor for ``session`` (live, attach or replay: the same app). A real Session runs on its own
    thread (``session_thread`` defaults to that); test doubles run on the app's loop."""
    return RllmtopApp(session, view=view, refresh=refresh, session_thread=session_thread)
