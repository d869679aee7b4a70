"""A session: sources -> records -> sinks, on one clock, with a lifecycle that always cleans up.

Sources: a launched or attached engine (scraped /metrics), the load generator (request lifecycle), or a
recording being replayed. Sinks: the recorder, the TUI's view, the headless printer. Live, headless and
replay differ only in which sources and sinks are wired; sinks never know which.

Lifecycle (live): STARTING (launch engine, wait ready, probe) -> RUNNING (scrape + send) -> DRAINING
(sending stopped, in-flight finishing) -> DONE. Any failure ends in FAILED / ENGINE_DIED / INTERRUPTED with a
one-line detail; whatever happens the engine is torn down and the recording closed with that status.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import shutil
import tempfile
import traceback
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rllmtop import __version__
from rllmtop.clock import Clock
from rllmtop.errors import UserError
from rllmtop.events import (
    ENDED,
    TERMINAL_STATES,
    LogEvent,
    Record,
    RequestEvent,
    RequestRecord,
    Reset,
    SessionInfo,
    SessionState,
    StateEvent,
)
from rllmtop.metrics.analysis import AsuSummary
from rllmtop.redact import redact_url
from rllmtop.scenario import EngineSpec, Scenario
from rllmtop.session.engines import EngineSide, fit_max_tokens
from rllmtop.session.load import LoadTarget, Sender, build_sender, sender_notes
from rllmtop.session.results import recording_results

if TYPE_CHECKING:
    from rllmtop.engines.launcher import EngineProcess
    from rllmtop.record.replay import ReplaySource
    from rllmtop.record.writer import Recorder

__all__ = ["Session", "SessionOutcome", "SessionPlan", "default_record_path"]

Sink = Callable[[Record], None]


@dataclass(frozen=True)
class SessionPlan:
    """Everything a session needs, resolved from the command line and the scenario."""

    mode: str  # "live" | "headless" | "attach" | "replay" (display only)
    scenario: Scenario | None = None  # None: no load (attach/launch without --scenario, replay)
    engine: EngineSpec = field(default_factory=EngineSpec)
    api_key: str | None = None  # never recorded
    record_path: Path | None = None
    scrape_interval: float = 0.25
    extra_engine_args: tuple[str, ...] = ()
    replay_path: Path | None = None
    replay_speed: float = 1.0
    info_extra: tuple[tuple[str, str], ...] = ()
    duration: float | None = None  # attach/launch without load: end DONE after this many seconds


@dataclass(frozen=True)
class SessionOutcome:
    state: SessionState
    detail: str
    record_path: Path | None
    summary: AsuSummary | None
    slo_missed: tuple[str, ...] = ()
    requests: int = 0
    warnings: tuple[str, ...] = ()  # sentences saying which figures cannot be trusted, and why

    @property
    def exit_code(self) -> int:
        """0 = done and SLOs met; 1 = SLO missed; 2 = failed (engine unreachable, start failed, ...);
        3 = engine died; 130 = interrupted."""
        if self.state is SessionState.DONE:
            return 1 if self.slo_missed else 0
        if self.state is SessionState.INTERRUPTED:
            return 130
        if self.state is SessionState.ENGINE_DIED:
            return 3
        return 2


def default_record_path(scenario_name: str, directory: str | Path = "recordings") -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in scenario_name) or "session"
    return Path(directory) / f"{safe}-{stamp}.db"


class Session:
    """One run. Build it, ``add_sink`` the consumers, ``await run()``; ``stop()`` from any thread (Ctrl-C,
    the quit key, SIGTERM).

    Stop policy (the one place it lives): the first ``stop()`` is gentle (no more sends; requests in flight
    get the scenario's grace period), a repeated ``stop()`` or ``stop(force=True)`` cancels them now.
    Failures: a user error (bad engine, unreachable URL) ends FAILED with its line; an unexpected exception
    ends FAILED with its type and text (the traceback is logged at debug level); a sink that raises, or a
    recorder that stops (disk full, read-only file), ends the run FAILED saying what was kept.
    """

    def __init__(self, plan: SessionPlan) -> None:
        self.plan = plan
        self.clock = Clock(speed=_clock_speed(plan))
        self.info: SessionInfo | None = None
        self.state: SessionState = SessionState.STARTING
        self.replay: ReplaySource | None = None
        self.record_path: str | None = str(plan.record_path) if plan.record_path else None
        self.runner: Sender | None = None  # whatever sends the schedule (see session/load.py)
        self.engines: EngineSide | None = None
        self.engine: EngineProcess | None = None  # the launched engine, if any (engines.engine)
        self._sinks: list[Sink] = []
        self._recorder: Recorder | None = None
        self._scratch: Path | None = None  # the scratch recording's directory under --no-record
        self._ended = 0  # requests that ended (their records are in the recording, not in memory)
        self._stop_requests = 0
        self._sink_failure: str | None = None
        self._stop = asyncio.Event()  # ends attach-only sessions and the scraper (re-made in run())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._grace_task: asyncio.Task[None] | None = None
        self._detail = ""
        self._interrupted = False
        # set once rllmtop asked the engine to stop (its shutdown noise is expected)
        self.tearing_down = False
        # the session's task was cancelled (a forced quit): re-raised once everything is torn down
        self._cancelled = False
        self.outcome: SessionOutcome | None = None  # set once run() has torn everything down
        self._error: BaseException | None = None  # an unexpected exception (re-raised under --debug)
        if plan.replay_path is not None:
            from rllmtop.record.reader import open_recording
            from rllmtop.record.replay import ReplaySource

            self.replay = ReplaySource(open_recording(plan.replay_path))
            self.replay.speed = plan.replay_speed

    # ------------------------------------------------------------------ wiring

    def add_sink(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def now(self) -> float:
        return self.replay.now() if self.replay is not None else self.clock.now()

    def publish(self, rec: Record) -> None:
        if isinstance(rec, RequestEvent) and rec.kind in ENDED and rec.record is not None:
            self._ended += 1  # SENT carries the starting record: only final ones count
        elif isinstance(rec, Reset):
            self._ended = 0
        elif isinstance(rec, StateEvent):
            self.state = rec.state
        elif isinstance(rec, SessionInfo):
            self.info = rec
        for sink in self._sinks:
            try:
                sink(rec)
            except Exception as e:  # a sink's bug must not take a sender or the scraper down with it
                self._sinks = [x for x in self._sinks if x is not sink]
                self._sink_failed(
                    f"{_sink_name(sink)} failed on a {type(rec).__name__} record: {_one_line(e)}"
                )

    def _log(self, text: str, level: str = "info") -> None:
        self.publish(LogEvent(self.clock.now(), "rllmtop", level, text))

    def _set_state(self, state: SessionState, detail: str = "") -> None:
        if state is self.state and not detail:
            return
        self.publish(StateEvent(self.clock.now(), state, detail))

    # ------------------------------------------------------------------ control

    @property
    def results_path(self) -> Path | None:
        """The recording the results are read from (a scratch file under --no-record, removed with the
        session), for faces that need the requests again (``--save-result``, chosen percentiles)."""
        return self._recorder.path if self._recorder is not None else self.plan.replay_path

    def ended_requests(self) -> Iterator[RequestRecord]:
        """Every request that ended, read back from the recording (a streaming pass)."""
        path = self.results_path
        if path is None or not path.exists():
            return iter(())
        from rllmtop.record.reader import open_recording

        return (r for r in open_recording(path).iter_requests(in_flight=False))

    @property
    def planned_requests(self) -> int | None:
        """Requests the schedule holds: the runner's count once its schedule is built, else what the
        scenario says up front (provenance), else None (open-ended)."""
        runner = self.runner
        planned = getattr(runner, "planned", None) if runner is not None else None
        if planned is not None:
            return int(planned)
        sc = self.plan.scenario
        if sc is not None and sc.provenance is not None:
            return sc.provenance.planned_requests
        return None

    def stop(self, force: bool = False, reason: str = "") -> None:
        """Stop the session. Gentle the first time: stop sending and let requests in flight finish within
        the scenario's grace period (``load.grace_period``); forced when ``force`` or when a stop was already
        requested: cancel them now. Safe to call from any thread (the TUI runs the session on its own).
        ``reason``: why, in one line, kept as the final status detail (a sweep's over-saturation stop)."""
        if reason and not self._detail:
            self._detail = reason
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not loop:
                loop.call_soon_threadsafe(self._stop_now, force)
                return
        self._stop_now(force)

    def request_stop(self) -> None:
        """Deprecated spelling of :meth:`stop` (one call per key press or signal)."""
        self.stop()

    @property
    def stopping(self) -> str:
        """ "" (running), "gentle" (sending stopped, draining) or "forced" (cancelling)."""
        return "" if not self._stop_requests else ("gentle" if self._stop_requests == 1 else "forced")

    def _stop_now(self, force: bool) -> None:
        self._stop_requests = max(self._stop_requests + 1, 2 if force else 1)
        self._interrupted = True
        if self.replay is not None:
            self._stop.set()
            return
        runner = self.runner
        if runner is None or self._stop_requests > 1:
            if runner is not None:
                runner.cancel()
            self._stop.set()
            return
        runner.stop_sending()
        grace = self.plan.scenario.load.grace_period if self.plan.scenario else 0.0
        n = runner.in_flight
        if n:
            self._log(
                f"stopped sending; waiting up to {grace:g} s for {n} in-flight request(s) "
                "(stop again to cancel them)",
                "warning",
            )
        self._grace_task = asyncio.get_running_loop().create_task(self._cancel_after(grace))

    def _sink_failed(self, what: str) -> None:
        """A sink (the recorder, a view) failed: the session fails, saying what was kept."""
        if self._sink_failure is not None:
            return
        kept = self._kept()
        self._sink_failure = what + (f"; {kept}" if kept else "")
        self._log(self._sink_failure, "error")
        if self.state not in TERMINAL_STATES and self._loop is not None:
            self._stop_now(force=True)

    def _kept(self) -> str:
        rec = self._recorder
        if rec is None:
            return ""
        n = getattr(rec, "kept_requests", None)
        t = getattr(rec, "committed_t", None)
        parts = []
        if n is not None:
            parts.append(f"{n} requests")
        if t is not None:
            parts.append(f"up to t={t:.1f} s")
        return (
            ("the recording keeps " + " ".join(parts))
            if parts
            else f"the recording keeps what was written to {rec.path}"
        )

    async def _cancel_after(self, grace: float) -> None:
        await asyncio.sleep(self.clock.wall(grace))
        if self.runner is not None and self.runner.in_flight:
            self._log(
                f"grace period of {grace:g} s over: cancelling {self.runner.in_flight} request(s)", "warning"
            )
            self.runner.cancel()

    # ------------------------------------------------------------------ run

    async def run(self) -> SessionOutcome:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()  # bound to the loop the session runs on
        if self.replay is not None:
            return await self._run_replay()
        return await self._run_live()

    async def _run_replay(self) -> SessionOutcome:
        assert self.replay is not None
        rec = self.replay
        self.info = rec.recording.info if hasattr(rec, "recording") else None
        await rec.run(self.publish, self._stop)
        assert self.plan.replay_path is not None
        res = recording_results(self.plan.replay_path)
        return SessionOutcome(
            state=self.state if self.state in TERMINAL_STATES else SessionState.DONE,
            detail="replay",
            record_path=self.plan.replay_path,
            summary=res.summary,
            requests=res.requests,
            warnings=res.warnings,
        )

    def _initial_info(self) -> SessionInfo:
        plan = self.plan
        sc = plan.scenario
        eng = plan.engine
        from rllmtop._loop import loop_name

        extra: list[tuple[str, str]] = [*plan.info_extra, ("event_loop", loop_name())]
        if eng.kind == "sim":
            extra += [("profile", eng.profile), ("speed", f"{eng.speed:g}")]
        if sc is not None and sc.goodput:  # the per-request SLOs goodput is judged on (reports reuse them)
            extra.append(("goodput", json.dumps(dict(sc.goodput), sort_keys=True)))
        return SessionInfo(
            session_id=uuid.uuid4().hex[:12],
            started_at=self.clock.started_at,
            mode=plan.mode,
            scenario_name=sc.name if sc else "",
            scenario_text=sc.text if sc else "",
            seed=sc.seed if sc else None,
            engine_kind=eng.kind if eng.kind != "url" else "unknown",
            engine_url=redact_url(eng.url or ""),
            metrics_url=redact_url(eng.metrics_url or ""),
            model=(sc.model if sc and sc.model else "") or eng.served_model_name or "",
            rllmtop_version=__version__,
            record_path=self.record_path or "",
            clock=self.clock.name,
            speed=self.clock.speed,
            extra=tuple(extra),
            provenance=sc.provenance if sc else None,
        )

    async def _run_live(self) -> SessionOutcome:
        plan = self.plan
        info = self._initial_info()
        from rllmtop.record.writer import Recorder

        record_path = plan.record_path
        if record_path is None:  # --no-record: a scratch file, so the summary still comes from a recording
            self._scratch = Path(tempfile.mkdtemp(prefix="rllmtop-"))
            record_path = self._scratch / "session.db"
            weakref.finalize(self, shutil.rmtree, self._scratch, True)  # gone with the session
        loop = asyncio.get_running_loop()

        def on_error(e: UserError) -> None:  # called once, from the recorder's writer thread
            loop.call_soon_threadsafe(self._sink_failed, f"{e.what} ({e.hint})" if e.hint else e.what)

        self._recorder = Recorder(record_path, info, on_error=on_error)
        self._sinks.insert(0, self._recorder.handle)
        self.publish(info)
        self._set_state(SessionState.STARTING)
        final = SessionState.DONE
        scrape_task: asyncio.Task[Any] | None = None
        self.engines = engines = EngineSide(
            plan.engine,
            scenario=plan.scenario,
            clock=self.clock,
            publish=self.publish,
            log=self._log,
            set_state=self._set_state,
            api_key=plan.api_key,
            scrape_interval=plan.scrape_interval,
            extra_engine_args=plan.extra_engine_args,
        )
        try:
            started = await engines.start(info)
            self.engine = engines.engine
            self.publish(started.info)
            if plan.scenario is not None:
                sc = fit_max_tokens(
                    plan.scenario, started.identity, started.model, started.load_url, self._log
                )
                self.plan = dataclasses.replace(plan, scenario=sc)
            scrape_task = asyncio.get_running_loop().create_task(engines.watch(self._stop))
            self._set_state(SessionState.RUNNING)
            final = await self._drive(started.target)
        except UserError as e:
            final = SessionState.FAILED
            self._detail = e.what
            self._log(f"{e.what}" + (f" ({e.hint})" if e.hint else ""), "error")
        except asyncio.CancelledError:
            final = SessionState.INTERRUPTED
            self._detail = self._detail or "cancelled"
            self._cancelled = _cancelled_from_outside()
        except Exception as e:  # a bug or an unforeseen input: the run fails, and says what happened
            final = SessionState.FAILED
            self._detail = f"internal error: {type(e).__name__}: {_one_line(e)}"
            self._log(self._detail + " (run with --debug for the traceback; please report it)", "error")
            self._log("".join(traceback.format_exception(e)), "debug")
            self._error = e
        finally:
            final = await self._teardown(final, scrape_task)
            self.outcome = self._outcome(final)
        if self._cancelled:  # torn down and recorded in full; now honour the cancellation
            raise asyncio.CancelledError
        return self.outcome

    async def _drive(self, target: LoadTarget) -> SessionState:
        """Send the scenario's load (if any) until it ends, the engine dies, or a stop is requested."""
        plan = self.plan
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._stop.wait())]
        timer: asyncio.Future[Any] | None = None
        if plan.scenario is None and plan.duration is not None:  # watching only: end after the duration
            timer = asyncio.ensure_future(asyncio.sleep(self.clock.wall(plan.duration)))
            waits.append(timer)
        died: asyncio.Future[Any] | None = None
        died_event = self.engines.died if self.engines is not None else None
        if died_event is not None:
            died = asyncio.ensure_future(died_event.wait())
            waits.append(died)
        run_task: asyncio.Task[None] | None = None
        drain_watch: asyncio.Future[Any] | None = None
        if plan.scenario is not None:
            self.runner = build_sender(plan.scenario, target, clock=self.clock, publish=self.publish)
            run_task = asyncio.get_running_loop().create_task(self.runner.run())
            waits.append(run_task)
            drain_watch = asyncio.ensure_future(self.runner.sending_done.wait())
            waits.append(drain_watch)
        try:
            while True:
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if drain_watch is not None and drain_watch in done:
                    waits.remove(drain_watch)
                    drain_watch = None
                    if run_task is not None and not run_task.done():
                        self._set_state(SessionState.DRAINING)
                    continue
                if died is not None and died in done:
                    assert self.engines is not None
                    if self.runner is not None:
                        self.runner.cancel()
                    self._detail = self.engines.death_detail()
                    return SessionState.ENGINE_DIED
                if timer is not None and timer in done:
                    return SessionState.DONE
                if run_task is not None and run_task in done:
                    run_task.result()  # re-raise runner errors (UserError -> FAILED)
                    self._detail = self._detail or sender_notes(self.runner)[0]  # e.g. a worker died
                    return SessionState.INTERRUPTED if self._interrupted else SessionState.DONE
                if self._stop.is_set() and run_task is None:
                    return SessionState.INTERRUPTED
                if self._stop.is_set():
                    waits = [w for w in waits if not w.done()]
        finally:
            for w in waits:
                if not w.done():
                    w.cancel()
            if run_task is not None and not run_task.done():
                if self.runner is not None:
                    self.runner.cancel()
                try:
                    await asyncio.wait_for(run_task, 30)
                except asyncio.CancelledError:  # the runner's task ends cancelled: that is not ours
                    self._cancelled = self._cancelled or _cancelled_from_outside()
                except Exception:
                    pass

    async def _teardown(self, final: SessionState, scrape_task: asyncio.Task[Any] | None) -> SessionState:
        """Always runs to the end, even when the session's task is cancelled meanwhile (a forced quit):
        the engine is stopped (or killed through its guard) and the recording closed with the final state.
        A cancellation seen here is remembered and re-raised by the caller afterwards."""
        if self._grace_task is not None:
            self._grace_task.cancel()
        self._stop.set()
        if scrape_task is not None:
            try:
                await asyncio.wait_for(scrape_task, 5)
            except asyncio.CancelledError:
                self._cancelled = self._cancelled or _cancelled_from_outside()
            except Exception:
                pass
        engines = self.engines
        if (
            engines is not None
            and final in (SessionState.DONE, SessionState.INTERRUPTED)
            and not self._cancelled
        ):  # the engines' final counters, before they go away
            try:
                await asyncio.wait_for(engines.final_scrape(), 5)
            except asyncio.CancelledError:
                self._cancelled = self._cancelled or _cancelled_from_outside()
            except Exception:
                pass
        self.tearing_down = True
        if engines is not None:
            try:
                await asyncio.shield(engines.stop())
            except asyncio.CancelledError:
                self._cancelled = self._cancelled or _cancelled_from_outside()
                engines.kill_now()  # SIGTERM now; the guard finishes the group off
            except Exception:
                pass
        if self._cancelled:
            final = SessionState.INTERRUPTED
            self._detail = self._detail or "cancelled"
        if self._sink_failure is not None and final in (SessionState.DONE, SessionState.INTERRUPTED):
            final = SessionState.FAILED
            self._detail = self._sink_failure
        if final is SessionState.DONE and self._interrupted:
            final = SessionState.INTERRUPTED
        if engines is not None and engines.degraded and final is not SessionState.ENGINE_DIED:
            self._detail = "; ".join(x for x in (self._detail, engines.degraded) if x)
        self._set_state(final, self._detail)
        if self._recorder is not None:
            try:
                self._recorder.close(final, self._detail)
            except UserError as e:
                self._log(e.what, "error")
                if final in (SessionState.DONE, SessionState.INTERRUPTED):
                    final = SessionState.FAILED
                    self._detail = self._sink_failure or e.what
        return final

    def _outcome(self, final: SessionState) -> SessionOutcome:
        """The summary, SLO verdicts and trust warnings, read back from the recording (a streaming pass: the
        run itself keeps nothing per finished request)."""
        sc = self.plan.scenario
        path = self._recorder.path if self._recorder is not None else None
        summary: AsuSummary | None = None
        missed: tuple[str, ...] = ()
        warnings: tuple[str, ...] = ()
        n = self._ended
        if path is not None and path.exists():
            try:
                res = recording_results(
                    path,
                    goodput=dict(sc.goodput) if sc is not None and sc.goodput else None,
                    slo=sc.slo if sc is not None and final is SessionState.DONE else None,
                )
                summary, missed, warnings, n = res.summary, res.slo_missed, res.warnings, res.requests
            except UserError as e:  # the recording failed on the way: say so, keep the outcome
                warnings = (f"no summary: {e.what}",)
        return SessionOutcome(
            state=final,
            detail=self._detail,
            record_path=self.plan.record_path,
            summary=summary,
            slo_missed=missed,
            requests=n,
            # the sender's own (a worker died, a node's clock offset) first, then the recording's
            warnings=(tuple(sender_notes(self.runner)[1]) if self.runner is not None else ()) + warnings,
        )


def _cancelled_from_outside() -> bool:
    """True when the running task itself was cancelled (not merely an awaited inner task)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _clock_speed(plan: SessionPlan) -> float:
    """A launched simulator at speed K runs the session on the simulated clock (wall x K): the schedule,
    timeouts and every recorded time are simulated seconds, so speed K is a time-lapse of speed 1."""
    eng = plan.engine
    if plan.replay_path is None and eng.kind == "sim" and eng.speed > 0 and math.isfinite(eng.speed):
        return float(eng.speed)
    return 1.0


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


def _sink_name(sink: Sink) -> str:
    owner = getattr(sink, "__self__", None)
    return type(owner).__name__ if owner is not None else getattr(sink, "__name__", "a sink")
