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
import uuid
from collections.abc import Callable
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
from rllmtop.metrics.analysis import AsuSummary, asu_summary, check_slos
from rllmtop.scenario import EngineSpec, Scenario

if TYPE_CHECKING:
    from rllmtop.engines.launcher import EngineProcess
    from rllmtop.metrics.scrape import Scraper
    from rllmtop.record.replay import ReplaySource
    from rllmtop.record.store import Recorder
    from rllmtop.workload.runner import Runner

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


@dataclass(frozen=True)
class SessionOutcome:
    state: SessionState
    detail: str
    record_path: Path | None
    summary: AsuSummary | None
    slo_missed: tuple[str, ...] = ()
    requests: int = 0

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
    """One run. Build it, ``add_sink`` the consumers, ``await run()``; ``request_stop()`` from anywhere on
    the loop (Ctrl-C, quit key, SIGTERM)."""

    def __init__(self, plan: SessionPlan) -> None:
        self.plan = plan
        self.clock = Clock()
        self.info: SessionInfo | None = None
        self.state: SessionState = SessionState.STARTING
        self.replay: ReplaySource | None = None
        self.record_path: str | None = str(plan.record_path) if plan.record_path else None
        self.runner: Runner | None = None
        self.engine: EngineProcess | None = None
        self._sinks: list[Sink] = []
        self._recorder: Recorder | None = None
        self._records: list[RequestRecord] = []
        self._stop_requests = 0
        self._stop = asyncio.Event()  # ends attach-only sessions and the scraper (re-made in run())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scraper: Scraper | None = None
        self._grace_task: asyncio.Task[None] | None = None
        self._detail = ""
        self._interrupted = False
        # set once rllmtop asked the engine to stop (its shutdown noise is expected)
        self.tearing_down = False
        # the session's task was cancelled (a forced quit): re-raised once everything is torn down
        self._cancelled = False
        self.outcome: SessionOutcome | None = None  # set once run() has torn everything down
        if plan.replay_path is not None:
            from rllmtop.record.replay import ReplaySource
            from rllmtop.record.store import open_recording

            self.replay = ReplaySource(open_recording(plan.replay_path))
            self.replay.speed = plan.replay_speed

    # ------------------------------------------------------------------ wiring

    def add_sink(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def now(self) -> float:
        return self.replay.now() if self.replay is not None else self.clock.now()

    def publish(self, rec: Record) -> None:
        if isinstance(rec, RequestEvent) and rec.kind in ENDED and rec.record is not None:
            self._records.append(rec.record)  # SENT carries the starting record: only final ones count
        elif isinstance(rec, Reset):
            self._records.clear()
        elif isinstance(rec, StateEvent):
            self.state = rec.state
        elif isinstance(rec, SessionInfo):
            self.info = rec
        for sink in self._sinks:
            sink(rec)

    def _log(self, text: str, level: str = "info") -> None:
        self.publish(LogEvent(self.clock.now(), "rllmtop", level, text))

    def _set_state(self, state: SessionState, detail: str = "") -> None:
        if state is self.state and not detail:
            return
        self.publish(StateEvent(self.clock.now(), state, detail))

    @property
    def request_records(self) -> list[RequestRecord]:
        return self._records

    # ------------------------------------------------------------------ control

    def request_stop(self) -> None:
        """First call: stop sending and let in-flight requests finish within the scenario's grace period.
        Second call: cancel them now. Safe to call from any thread (the TUI runs the session on its own)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not loop:
                loop.call_soon_threadsafe(self._request_stop)
                return
        self._request_stop()

    def _request_stop(self) -> None:
        self._stop_requests += 1
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

    async def _cancel_after(self, grace: float) -> None:
        await asyncio.sleep(grace)
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
        records = self._records
        return SessionOutcome(
            state=self.state if self.state in TERMINAL_STATES else SessionState.DONE,
            detail="replay",
            record_path=self.plan.replay_path,
            summary=asu_summary(records) if records else None,
            requests=len(records),
        )

    def _initial_info(self) -> SessionInfo:
        plan = self.plan
        sc = plan.scenario
        eng = plan.engine
        from rllmtop._loop import loop_name

        extra: list[tuple[str, str]] = [*plan.info_extra, ("event_loop", loop_name())]
        if eng.kind == "sim":
            extra += [("profile", eng.profile), ("speed", f"{eng.speed:g}")]
        return SessionInfo(
            session_id=uuid.uuid4().hex[:12],
            started_at=self.clock.started_at,
            mode=plan.mode,
            scenario_name=sc.name if sc else "",
            scenario_text=sc.text if sc else "",
            seed=sc.seed if sc else None,
            engine_kind=eng.kind if eng.kind != "url" else "unknown",
            engine_url=eng.url or "",
            metrics_url=eng.metrics_url or "",
            model=(sc.model if sc and sc.model else "") or eng.served_model_name or "",
            rllmtop_version=__version__,
            record_path=self.record_path or "",
            extra=tuple(extra),
            provenance=sc.provenance if sc else None,
        )

    async def _run_live(self) -> SessionOutcome:
        plan = self.plan
        info = self._initial_info()
        if plan.record_path is not None:
            from rllmtop.record.store import Recorder

            loop = asyncio.get_running_loop()

            def on_error(e: UserError) -> None:  # called once, from the recorder's writer thread
                loop.call_soon_threadsafe(self._log, f"{e.what} ({e.hint})" if e.hint else e.what, "error")

            self._recorder = Recorder(plan.record_path, info, on_error=on_error)
            self._sinks.insert(0, self._recorder.handle)
        self.publish(info)
        self._set_state(SessionState.STARTING)
        final = SessionState.DONE
        scrape_task: asyncio.Task[Any] | None = None
        try:
            base_url, metrics_url = await self._start_engine(info)
            identity = await self._probe(base_url)
            model = (plan.scenario.model if plan.scenario and plan.scenario.model else None) or (
                identity.models[0] if identity.models else ""
            )
            if not model and plan.scenario is not None:
                raise UserError(
                    f"{base_url}/v1/models lists no model", "pass --model NAME (the served model name)"
                )
            kind = self.info.engine_kind if self.info else "unknown"
            if kind in ("unknown", "") and identity.kind:
                kind = identity.kind
            info = dataclasses.replace(
                self.info or info,
                engine_kind=kind,
                engine_version=identity.version or (self.engine.version if self.engine else ""),
                engine_url=base_url,
                metrics_url=metrics_url or identity.metrics_url or f"{base_url}/metrics",
                model=model,
            )
            self.publish(info)
            scrape_task = asyncio.get_running_loop().create_task(self._scrape(info, identity))
            self._set_state(SessionState.RUNNING)
            final = await self._drive(base_url, model)
        except UserError as e:
            final = SessionState.FAILED
            self._detail = e.what
            self._log(f"{e.what}" + (f" ({e.hint})" if e.hint else ""), "error")
        except asyncio.CancelledError:
            final = SessionState.INTERRUPTED
            self._detail = self._detail or "cancelled"
            self._cancelled = _cancelled_from_outside()
        finally:
            final = await self._teardown(final, scrape_task)
            self.outcome = self._outcome(final)
        if self._cancelled:  # torn down and recorded in full; now honour the cancellation
            raise asyncio.CancelledError
        return self.outcome

    async def _start_engine(self, info: SessionInfo) -> tuple[str, str | None]:
        """Launch the engine when the plan says so; return (base_url, metrics_url)."""
        plan = self.plan
        eng = plan.engine
        if eng.kind == "url":
            if not eng.url:
                raise UserError("no engine URL to attach to", "pass a URL: rllmtop attach http://HOST:PORT")
            return eng.url.rstrip("/"), eng.metrics_url
        from rllmtop.engines.launch_args import build_command, choose_port
        from rllmtop.engines.launcher import EngineProcess

        seed = plan.scenario.seed if plan.scenario else 0
        launch = build_command(
            eng, seed=seed, port=choose_port(eng), model=eng.model, extra_args=plan.extra_engine_args
        )
        self.publish(dataclasses.replace(info, launch_command=tuple(launch.redacted_argv)))
        self.engine = EngineProcess(launch, clock=self.clock, publish=self.publish, name=eng.kind)
        self._log(f"launching {eng.kind}: {' '.join(launch.redacted_argv)}")
        await self.engine.start()
        await self.engine.wait_ready(eng.startup_timeout, progress=self._startup_progress)
        base_url = self.engine.base_url
        self._log(f"{eng.kind} ready at {base_url} after {self.clock.now():.1f} s")
        return base_url, eng.metrics_url

    def _startup_progress(self, elapsed: float, last_line: str) -> None:
        self._set_state(SessionState.STARTING, f"{elapsed:.0f} s: {last_line[:160]}")

    async def _probe(self, base_url: str) -> Any:
        from rllmtop.engines.adapters import probe

        return await probe(base_url, self.plan.api_key)

    async def _scrape(self, info: SessionInfo, identity: Any) -> None:
        from rllmtop.engines.adapters import adapter_for
        from rllmtop.metrics.scrape import Scraper

        self._scraper = scraper = Scraper(
            info.metrics_url,
            adapter_for(info.engine_kind if info.engine_kind != "unknown" else identity.kind or "vllm"),
            clock=self.clock,
            publish=self.publish,
            interval=self.plan.scrape_interval,
            api_key=self.plan.api_key,
        )
        await scraper.run(self._stop)

    async def _drive(self, base_url: str, model: str) -> SessionState:
        """Send the scenario's load (if any) until it ends, the engine dies, or a stop is requested."""
        plan = self.plan
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._stop.wait())]
        died: asyncio.Future[Any] | None = None
        if self.engine is not None:
            died = asyncio.ensure_future(self.engine.died.wait())
            waits.append(died)
        run_task: asyncio.Task[None] | None = None
        drain_watch: asyncio.Future[Any] | None = None
        if plan.scenario is not None:
            from rllmtop.workload.runner import Runner

            self.runner = Runner(
                plan.scenario,
                base_url=base_url,
                model=model,
                api_key=plan.api_key,
                clock=self.clock,
                publish=self.publish,
            )
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
                    assert self.engine is not None
                    if self.runner is not None:
                        self.runner.cancel()
                    code = self.engine.returncode
                    self._detail = f"engine exited with code {code}"
                    for line in self.engine.last_lines(20):
                        self._log(f"engine: {line}", "error")
                    return SessionState.ENGINE_DIED
                if run_task is not None and run_task in done:
                    run_task.result()  # re-raise runner errors (UserError -> FAILED)
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
        if (
            self._scraper is not None
            and final in (SessionState.DONE, SessionState.INTERRUPTED)
            and not self._cancelled
            and not (self.engine is not None and self.engine.died.is_set())
        ):  # the engine's final counters, before it goes away
            try:
                await asyncio.wait_for(self._scraper.scrape_once(), 5)
            except asyncio.CancelledError:
                self._cancelled = self._cancelled or _cancelled_from_outside()
            except Exception:
                pass
        self.tearing_down = True
        if self.engine is not None:
            try:
                await asyncio.shield(self.engine.stop())
            except asyncio.CancelledError:
                self._cancelled = self._cancelled or _cancelled_from_outside()
                self.engine.kill_now()  # SIGTERM now; the guard finishes the group off
            except Exception:
                pass
        if self._cancelled:
            final = SessionState.INTERRUPTED
            self._detail = self._detail or "cancelled"
        if final is SessionState.DONE and self._interrupted:
            final = SessionState.INTERRUPTED
        self._set_state(final, self._detail)
        if self._recorder is not None:
            try:
                self._recorder.close(final, self._detail)
            except UserError as e:
                self._log(e.what, "error")
        return final

    def _outcome(self, final: SessionState) -> SessionOutcome:
        summary = asu_summary(self._records) if self._records else None
        missed: tuple[str, ...] = ()
        sc = self.plan.scenario
        if summary is not None and sc is not None and sc.slo and final is SessionState.DONE:
            missed = tuple(check_slos(summary.overall, sc.slo))
        return SessionOutcome(
            state=final,
            detail=self._detail,
            record_path=self.plan.record_path,
            summary=summary,
            slo_missed=missed,
            requests=len(self._records),
        )


def _cancelled_from_outside() -> bool:
    """True when the running task itself was cancelled (not merely an awaited inner task)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
