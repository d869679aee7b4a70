"""The engine side of a session: launch or attach, probe, watch (metric sources), tear down.

:class:`EngineSide` owns every engine process rllmtop started and every metric source it runs, for one
engine or a fleet (which engines, and where the load goes, is decided in :mod:`rllmtop.session.fleet`).
The session asks it to ``start`` (returns the :class:`~rllmtop.session.load.LoadTarget` and the facts),
to ``watch`` until told to stop, for a ``final_scrape`` once the load drained, and to ``stop`` whatever it
launched.

Metric sources: one :class:`~rllmtop.metrics.scrape.Scraper` per engine (its own /metrics, plus its
``gpu_metrics_url`` when given; NVML for a launched vLLM/SGLang when ``pynvml`` and a driver are there),
run together by :func:`~rllmtop.metrics.scrape.run_scrapers`; or one
:class:`~rllmtop.metrics.prometheus.PrometheusSource` (engines discovered from the series; on attach, the
chart window is backfilled with a range query and those scrapes are published first, in time order).

Launched replicas (``replicas = N``): N processes, each its own process group and port, started in
parallel; one that fails to start stops them all. **A replica that exits mid-run does not end the run**:
the others keep serving (a fleet goes on), its row shows down (its scrapes fail), the exit and its last
log lines are logged as errors, and :attr:`EngineSide.degraded` says so in one line, which the session's
final status detail carries. The run ends ENGINE_DIED only when every launched engine has exited
(:attr:`EngineSide.died`); with one engine that is today's rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rllmtop.clock import Clock, Publish
from rllmtop.errors import UserError
from rllmtop.events import EngineInfo, LogEvent, Scrape, SessionInfo, SessionState
from rllmtop.redact import redact_url
from rllmtop.scenario import EngineSpec, Scenario
from rllmtop.session.fleet import (
    Member,
    check_fleet,
    engine_id,
    fleet_kind,
    instance_of,
    members_of,
    router_workers,
)
from rllmtop.session.load import Endpoint, LoadTarget

if TYPE_CHECKING:
    from rllmtop.engines.launcher import EngineProcess
    from rllmtop.metrics.prometheus import PrometheusSource
    from rllmtop.metrics.scrape import GpuReader, Scraper

__all__ = ["EngineSide", "Started", "fit_max_tokens"]

BACKFILL_WINDOW = 120.0  # seconds of history read on attach (the TUI's initial chart window)
_PROGRESS_EVERY = 0.5  # wall seconds between startup progress lines of a fleet


@dataclass(frozen=True)
class Started:
    """What the engine side learned at start: where the load goes, the model, and the updated facts."""

    load_url: (
        str  # the load target's URL (secrets included: never published); the first engine's when balanced
    )
    model: str
    info: SessionInfo  # the session facts with the engines' kinds, versions, model (redacted URLs)
    identity: Any  # engines.adapters.EngineIdentity of the load target (max_model_len: the fleet's smallest)
    target: LoadTarget = field(default_factory=lambda: LoadTarget("", ""))  # where the load goes


@dataclass
class _Engine:
    """One engine rllmtop scrapes itself (launched or attached)."""

    url: str  # base URL (secrets as given); "" for a replica until it is ready
    metrics_url: str = ""
    gpu_metrics_url: str = ""
    name: str = ""
    process: EngineProcess | None = None
    identity: Any = None  # EngineIdentity once probed
    error: UserError | None = None  # the probe's failure (an engine that did not answer at start)
    kind: str = "unknown"

    @property
    def id(self) -> str:
        return engine_id(self.url) if self.url else ""

    @property
    def label(self) -> str:
        return f"{self.name} ({self.id})" if self.name and self.name != self.id else self.id

    @property
    def alive(self) -> bool:
        return self.process is None or not self.process.died.is_set()

    def info(self) -> EngineInfo:
        ident = self.identity
        version = (ident.version if ident is not None else "") or (
            self.process.version if self.process else ""
        )
        return EngineInfo(
            id=self.id,
            url=redact_url(self.url),
            metrics_url=redact_url(self.metrics_url or f"{self.url}/metrics"),
            kind=self.kind,
            version=version,
            source="scrape",
            launched=self.process is not None,
            gpu_metrics_url=redact_url(self.gpu_metrics_url),
        )


class EngineSide:
    """The session's engines. ``log(text, level)`` and ``set_state(state, detail)`` report progress."""

    def __init__(
        self,
        engine: EngineSpec,
        *,
        scenario: Scenario | None,
        clock: Clock,
        publish: Publish,
        log: Callable[[str, str], None],
        set_state: Callable[[SessionState, str], None],
        api_key: str | None,
        scrape_interval: float,
        extra_engine_args: tuple[str, ...] = (),
    ) -> None:
        self.spec = engine
        self.scenario = scenario
        self.clock = clock
        self.publish = publish
        self._log = log
        self._set_state = set_state
        self.api_key = api_key
        self.scrape_interval = scrape_interval
        self.extra_engine_args = extra_engine_args
        self.target: LoadTarget | None = None  # set by start()
        self._engines: list[_Engine] = []  # the engines rllmtop scrapes itself, in order
        self._router = ""  # the router/gateway the load goes to ("" : none)
        self._router_identity: Any = None
        self._prom: PrometheusSource | None = None
        self._prom_engines: dict[str, EngineInfo] = {}  # discovered through Prometheus, in order
        self._prom_endpoints: list[tuple[str, str, Any]] = []  # (id, url, identity) balanced over
        self._backfill: list[Scrape] = []
        self._scrapers: list[Scraper] = []
        self._info: SessionInfo | None = None
        self._started = False
        self._died = asyncio.Event()
        self._lost: list[str] = []  # one phrase per launched engine that exited on its own
        self._death_tasks: list[asyncio.Task[None]] = []
        self._progress: dict[int, str] = {}
        self._progress_at = -1e18

    # ------------------------------------------------------------------ facts

    @property
    def engine(self) -> EngineProcess | None:
        """The first launched engine (the only one unless ``replicas`` > 1), None when attached."""
        procs = self.processes
        return procs[0] if procs else None

    @property
    def processes(self) -> tuple[EngineProcess, ...]:
        """Every launched engine process, in replica order."""
        return tuple(e.process for e in self._engines if e.process is not None)

    @property
    def engine_ids(self) -> tuple[str, ...]:
        """The fleet's engine ids as known now (Prometheus: those discovered so far)."""
        return tuple(e.id for e in self._engines) + tuple(self._prom_engines)

    # ------------------------------------------------------------------ start

    async def start(self, info: SessionInfo) -> Started:
        """Launch (or find) the engines, wait until they serve, probe them, decide where the load goes.
        Raises UserError naming what failed."""
        self._info = info
        spec = self.spec
        check_fleet(spec, has_load=self.scenario is not None)
        if spec.kind == "url":
            if spec.prometheus is not None:
                await self._discover_prometheus()
            await self._attach()
        else:
            await self._launch_all(info)
        await self._probe_all()
        target, identity = self._decide_target()
        self.target = target
        self._info = self._facts(self._info or info, target)
        self._started = True
        self._watch_deaths()
        return Started(
            load_url=target.url, model=target.model, info=self._info, identity=identity, target=target
        )

    async def _attach(self) -> None:
        spec = self.spec
        members = members_of(spec)
        if spec.url and (spec.endpoints or spec.prometheus is not None):
            self._router = spec.url.rstrip("/")
        elif spec.url:  # one URL: an engine, or a router that lists its workers
            workers = await router_workers(spec.url, self.api_key)
            if workers:
                self._router = spec.url.rstrip("/")
                members = tuple(Member(w) for w in workers)
                self._log(
                    f"{redact_url(self._router)} is a router in front of {len(workers)} worker(s) "
                    f"({', '.join(engine_id(w) for w in workers)}): watching each worker's own /metrics "
                    "(a router's /metrics is one worker's at a time); the load goes to the router",
                    "info",
                )
        if spec.prometheus is not None:
            # engines come from Prometheus; listed endpoints are where the load goes (balanced, or the one)
            if spec.balance != "none":
                self._prom_endpoints = [(instance_of(m.url), m.url, None) for m in members]
            elif members and not self._router:
                self._router = members[0].url
            return
        self._engines = [
            _Engine(
                m.url,
                m.metrics_url or ("" if len(members) > 1 else spec.metrics_url or ""),
                m.gpu_metrics_url,
                m.name,
            )
            for m in members
        ]

    async def _launch_all(self, info: SessionInfo) -> None:
        from rllmtop.engines.launch_args import build_command, choose_port
        from rllmtop.engines.launcher import EngineProcess

        eng = self.spec
        n = eng.replicas
        seed = self.scenario.seed if self.scenario else 0
        plans = [  # replica i gets seed + i: independent engines, replica 0 the same as a single one
            build_command(
                eng, seed=seed + i, port=choose_port(eng), model=eng.model, extra_args=self.extra_engine_args
            )
            for i in range(n)
        ]
        extra = info.extra + ((("replicas", str(n)),) if n > 1 else ())
        self._info = dataclasses.replace(info, launch_command=tuple(plans[0].redacted_argv), extra=extra)
        self.publish(self._info)
        for i, plan in enumerate(plans):
            name = eng.kind if n == 1 else f"{eng.kind} replica {i + 1}/{n}"
            proc = EngineProcess(plan, clock=self.clock, publish=self.publish, name=name)
            metrics = (eng.metrics_url or "") if n == 1 else ""
            self._engines.append(_Engine("", metrics, name=name, process=proc))
        what = f"{n} replicas of {eng.kind}" if n > 1 else eng.kind
        self._log(f"launching {what}: {' '.join(plans[0].redacted_argv)}", "info")
        tasks = [asyncio.ensure_future(self._start_one(i, e)) for i, e in enumerate(self._engines)]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        except BaseException:
            for t in tasks:
                t.cancel()
            raise
        failed = [t for t in done if not t.cancelled() and t.exception() is not None]
        if failed:
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await self.stop()
            i = tasks.index(failed[0])
            err = failed[0].exception()
            if n > 1 and isinstance(err, UserError):
                raise UserError(f"replica {i + 1} of {n}: {err.what}", err.hint) from err
            assert err is not None
            raise err
        for e in self._engines:
            assert e.process is not None
            e.url = e.process.base_url
            e.kind = eng.kind
        ready = ", ".join(redact_url(e.url) for e in self._engines)
        self._log(f"{what} ready at {ready} after {self.clock.now():.1f} s", "info")

    async def _start_one(self, i: int, e: _Engine) -> None:
        assert e.process is not None
        await e.process.start()
        await e.process.wait_ready(
            self.spec.startup_timeout, progress=lambda s, line: self._startup(i, s, line)
        )
        self._progress[i] = "ready"

    def _startup(self, i: int, elapsed: float, last_line: str) -> None:
        n = len(self._engines)
        last_line = last_line.strip() or "waiting for the engine to be ready"
        if n == 1:
            self._set_state(SessionState.STARTING, f"{elapsed:.0f} s: {last_line[:160]}")
            return
        self._progress[i] = last_line
        now = asyncio.get_running_loop().time()
        if now - self._progress_at < _PROGRESS_EVERY:
            return
        self._progress_at = now
        ready = sum(v == "ready" for v in self._progress.values())
        self._set_state(
            SessionState.STARTING, f"{elapsed:.0f} s: {ready}/{n} ready; replica {i + 1}: {last_line[:120]}"
        )

    async def _discover_prometheus(self) -> None:
        from rllmtop.metrics.prometheus import PrometheusError, PrometheusSource

        p = self.spec.prometheus
        assert p is not None
        self._prom = src = PrometheusSource(
            p.url,
            clock=self.clock,
            publish=self.publish,
            selector=p.selector,
            interval=p.interval,
            on_engine=self._discovered,
        )
        try:
            self._backfill = await src.backfill(p.backfill or BACKFILL_WINDOW)
        except PrometheusError as e:
            raise UserError(
                str(e), "check --prometheus (the server's base URL) and that it answers"
            ) from None
        if not src.engines:
            sel = f" matching {p.selector}" if p.selector else ""
            self._log(
                f"{src.shown}: no engine series{sel} in the last {p.backfill or BACKFILL_WINDOW:g} s; "
                "waiting for engines to appear (is Prometheus scraping them? check --prometheus-selector)",
                "warning",
            )
        else:
            self._log(
                f"{src.shown}: {len(src.engines)} engine(s) found, {len(self._backfill)} past scrape(s) "
                "read for the charts",
                "info",
            )

    def _discovered(self, e: EngineInfo) -> None:
        """An engine first seen in Prometheus's series: the session's facts name it from now on."""
        self._prom_engines[e.id] = e
        if self._started and self._info is not None:
            self._info = dataclasses.replace(self._info, engines=self._engine_infos())
            self.publish(self._info)

    # ------------------------------------------------------------------ probe and target

    async def _probe_all(self) -> None:
        from rllmtop.engines.adapters import probe

        async def one(url: str) -> Any:
            try:
                return await probe(url, self.api_key)
            except UserError as e:
                return e

        engines = self._engines
        urls = [e.url for e in engines] + [u for _, u, _ in self._prom_endpoints]
        if self._router:
            urls.append(self._router)
        got = await asyncio.gather(*(one(u) for u in urls))
        if self._router:
            r = got.pop()
            if isinstance(r, UserError):
                raise UserError(
                    f"the load URL does not answer: {r.what}", "check --load-url (the router or gateway)"
                )
            self._router_identity = r
        k = len(engines)
        for e, r in zip(engines, got[:k], strict=True):
            if isinstance(r, UserError):
                e.error = r
            else:
                e.identity = r
                if e.process is None:  # a launched engine keeps the kind it was launched as
                    e.kind = r.kind
        for j, r in enumerate(got[k:]):
            eid, url, _ = self._prom_endpoints[j]
            if isinstance(r, UserError):
                raise UserError(f"{eid}: {r.what}", "every engine the load is balanced over must answer")
            self._prom_endpoints[j] = (eid, url, r)
        failed = [e for e in engines if e.error is not None]
        if not failed:
            return
        if len(engines) == 1 or len(failed) == len(engines):
            err = failed[0].error
            assert err is not None
            if len(engines) > 1:
                raise UserError(f"no engine of the fleet answers: {err.what}", err.hint)
            raise err
        balanced = self.spec.balance != "none" and not self._router
        for e in failed:
            assert e.error is not None
            if balanced:
                raise UserError(
                    f"{e.label} does not answer ({e.error.what}); the load is balanced over it",
                    "start it, or leave it out of the engine list",
                )
            self._log(
                f"{e.label} does not answer at start ({e.error.what}): watched anyway, shown down "
                "until it does",
                "warning",
            )

    def _decide_target(self) -> tuple[LoadTarget, Any]:
        """The load target and its identity (for the max_model_len check); the model."""
        sc = self.scenario
        spec = self.spec
        answered = [e for e in self._engines if e.identity is not None]
        if self._router:
            load = [("the load URL " + redact_url(self._router), self._router_identity)]
        elif self._prom_endpoints:
            load = [(eid, ident) for eid, _, ident in self._prom_endpoints]
        else:
            load = [(e.label, e.identity) for e in answered]
        idents = [i for _, i in load if i is not None]
        model = (sc.model if sc and sc.model else None) or next((i.models[0] for i in idents if i.models), "")
        if not model:
            model = next((e.identity.models[0] for e in answered if e.identity.models), "")
        if not model and sc is not None:
            first = idents[0] if idents else None
            denied = [w for w in (first.warnings if first else ()) if " 401" in w or " 403" in w]
            if denied:
                raise UserError(denied[0], "pass the server's key with --api-key KEY or OPENAI_API_KEY")
            where = first.base_url if first is not None else "the load target"
            raise UserError(
                f"{redact_url(where)}/v1/models lists no model", "pass --model NAME (the served model name)"
            )
        if sc is not None:
            for who, ident in load:
                if ident is not None and ident.models and model not in ident.models:
                    served = ", ".join(repr(m) for m in ident.models[:4])
                    raise UserError(
                        f"{who} does not serve {model!r} (it serves {served})",
                        "pass --model NAME that every engine the load goes to serves",
                    )
        identity = self._fleet_identity(model, idents + [e.identity for e in answered])
        key = self.api_key
        if self._router:
            rid = engine_id(self._router)
            url_engine = rid if rid in {e.id for e in self._engines} else ""
            if self._prom is not None and len(spec.endpoints) == 1:  # the one engine, read via Prometheus
                url_engine = instance_of(self._router)
            return LoadTarget(self._router, model, key, url_engine=url_engine), identity
        if self._prom_endpoints:
            eps = tuple(Endpoint(eid, url) for eid, url, _ in self._prom_endpoints)
            return LoadTarget(eps[0].url, model, key, endpoints=eps, balance=spec.balance), identity
        if len(self._engines) > 1 and spec.balance != "none":
            eps = tuple(Endpoint(e.id, e.url) for e in self._engines)
            return LoadTarget(eps[0].url, model, key, endpoints=eps, balance=spec.balance), identity
        if self._engines:  # one engine (or a fleet watched without load)
            e = self._engines[0]
            return LoadTarget(e.url, model, key, url_engine=e.id), identity
        return LoadTarget("", model, key), identity

    @staticmethod
    def _fleet_identity(model: str, idents: list[Any]) -> Any:
        """The load target's identity, with the smallest max_model_len of ``model`` across the engines
        that serve it (a request must fit wherever it lands)."""
        idents = [i for i in idents if i is not None]
        if not idents:
            return None
        limits = [i.max_model_len[model] for i in idents if i.max_model_len and model in i.max_model_len]
        if not limits:
            return idents[0]
        lengths = dict(idents[0].max_model_len or {})
        lengths[model] = min(limits)
        return dataclasses.replace(idents[0], max_model_len=lengths)

    def _engine_infos(self) -> tuple[EngineInfo, ...]:
        return tuple(e.info() for e in self._engines) + tuple(self._prom_engines.values())

    def _facts(self, cur: SessionInfo, target: LoadTarget) -> SessionInfo:
        engines = self._engine_infos()
        single = len(self._engines) == 1 and self._prom is None
        if single:
            e = self._engines[0]
            kind = cur.engine_kind
            if kind in ("unknown", "") and e.kind:
                kind = e.kind
            version, url, metrics = e.info().version, redact_url(e.url), e.info().metrics_url
        else:  # a fleet: per-engine facts live in `engines`
            kind = fleet_kind(x.kind for x in engines) if engines else cur.engine_kind
            if self._prom is not None and not engines:
                kind = "unknown"
            version, url, metrics = "", redact_url(self._router), ""
        extra = cur.extra
        if target.balance != "none":
            extra = (*extra, ("balance", target.balance))
        if self._prom is not None:
            extra = (*extra, ("prometheus", self._prom.shown))
            if self._prom.selector:
                extra = (*extra, ("prometheus_selector", self._prom.selector))
        load_url = ""
        if self.scenario is not None and target.balance == "none":
            load_url = redact_url(target.url)
        return dataclasses.replace(
            cur,
            engine_kind=kind,
            engine_version=version,
            engine_url=url,
            metrics_url=metrics,
            model=target.model,
            engines=engines,
            load_url=load_url,
            extra=extra,
        )

    # ------------------------------------------------------------------ watch

    async def watch(self, stop: asyncio.Event) -> None:
        """Run the metric sources until ``stop`` is set (Prometheus: the backfill is published first)."""
        from rllmtop.engines.adapters import adapter_for
        from rllmtop.metrics.scrape import Scraper, run_scrapers, scrape_cost_warning

        assert self._info is not None, "start() first"
        runs = []
        if self._prom is not None:
            backfill, self._backfill = self._backfill, []
            for s in backfill:
                self.publish(s)
            runs.append(self._prom.run(stop))
        # session seconds: a time-lapse keeps the KV/queue shape (polls K times as often in wall time, up
        # to 50 a second)
        interval = max(self.scrape_interval, self.clock.session(0.02))
        self._scrapers = [
            Scraper(
                e.metrics_url or f"{e.url}/metrics",
                adapter_for(e.kind if e.kind != "unknown" else "vllm"),
                clock=self.clock,
                publish=self.publish,
                engine_id=e.id,
                interval=interval,
                api_key=self.api_key,
                gpu_metrics_url=e.gpu_metrics_url,
                gpu=self._local_gpus(e),
            )
            for e in self._engines
        ]
        if self._scrapers:
            warning = scrape_cost_warning(len(self._scrapers), self.clock.wall(interval))
            if warning:
                self.publish(LogEvent(self.clock.now(), "rllmtop", "warning", warning))
            runs.append(run_scrapers(self._scrapers, stop))
        await asyncio.gather(*runs)

    def _local_gpus(self, e: _Engine) -> GpuReader | None:
        """NVML for a vLLM/SGLang rllmtop launched on this host (the GPUs CUDA_VISIBLE_DEVICES names, else
        all); None without pynvml or a driver (said once, at info level)."""
        if e.process is None or e.kind not in ("vllm", "sglang"):
            return None
        from rllmtop.metrics.gpu import GpuUnavailable, NvmlGpus

        visible = self.spec.env.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", ""))
        parts = [p.strip() for p in visible.split(",") if p.strip()]
        indices = [int(p) for p in parts] if parts and all(p.isdigit() for p in parts) else None
        try:
            return NvmlGpus.open(indices)
        except GpuUnavailable as err:
            self._log(f"no local GPU telemetry for {e.label}: {err}", "info")
            return None

    async def final_scrape(self) -> None:
        """The engines' final counters, before they go away (engines that exited are skipped)."""
        polls: list[Coroutine[Any, Any, object]] = [
            s.scrape_once() for s, e in zip(self._scrapers, self._engines, strict=False) if e.alive
        ]
        if self._prom is not None:
            polls.append(self._prom.poll_once())
        if polls:
            await asyncio.gather(*polls, return_exceptions=True)

    # ------------------------------------------------------------------ death and teardown

    def _watch_deaths(self) -> None:
        for e in self._engines:
            if e.process is not None:
                self._death_tasks.append(asyncio.ensure_future(self._on_exit(e)))

    async def _on_exit(self, e: _Engine) -> None:
        assert e.process is not None
        await e.process.died.wait()
        launched = [x for x in self._engines if x.process is not None]
        alive = [x for x in launched if x.alive]
        self._lost.append(f"{e.label} exited with code {e.process.returncode} at t={self.clock.now():.1f} s")
        if not alive:
            self._died.set()
            return
        for line in e.process.last_lines(10):
            self._log(f"{e.label}: {line}", "error")
        self._log(
            f"{e.label} exited with code {e.process.returncode}: {len(alive)} of {len(launched)} engines "
            "still serving; the run goes on (its row shows down; requests sent to it fail)",
            "error",
        )

    @property
    def died(self) -> asyncio.Event | None:
        """Set when every launched engine has exited on its own (None when nothing was launched). A fleet
        that loses some replicas goes on: see :attr:`degraded`."""
        return self._died if self.processes else None

    @property
    def has_died(self) -> bool:
        return self._died.is_set()

    @property
    def degraded(self) -> str:
        """One line when some (not all) launched engines exited during the run, else ""."""
        if not self._lost or self._died.is_set():
            return ""
        n = len(self.processes)
        return f"{len(self._lost)} of {n} engines exited during the run: " + "; ".join(self._lost)

    def death_detail(self, lines: int = 20) -> str:
        """One line for the status, the last engine's last lines logged as errors."""
        procs = self.processes
        assert procs, "nothing was launched"
        last = next((e for e in reversed(self._engines) if e.process is not None and not e.alive), None)
        proc = last.process if last is not None and last.process is not None else procs[0]
        for line in proc.last_lines(lines):
            self._log(f"engine: {line}", "error")
        if len(procs) == 1:
            return f"engine exited with code {procs[0].returncode}"
        codes = ", ".join(str(p.returncode) for p in procs)
        return f"all {len(procs)} engines exited (codes {codes}): " + "; ".join(self._lost)

    async def stop(self) -> None:
        """Stop whatever was launched, all at once (SIGTERM, then SIGKILL after the grace, through each
        guard)."""
        for t in self._death_tasks:
            t.cancel()
        procs = self.processes
        if procs:
            results = await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException) and not isinstance(r, Exception):
                    raise r

    def kill_now(self) -> None:
        for p in self.processes:
            with contextlib.suppress(Exception):
                p.kill_now()


def fit_max_tokens(
    scenario: Scenario, identity: Any, model: str, url: str, log: Callable[[str, str], None]
) -> Scenario:
    """A class asking for more tokens than the engine's context holds would fail with HTTP 400 on every
    request: refuse with one line naming the class and the limit, or, with ``load.clamp_max_tokens``
    (``--clamp-max-tokens``), cap it so a prompt still fits, with a warning the recording keeps. Refusing is
    the default: a clamp changes the experiment (more requests cut at the cap)."""
    lengths = getattr(identity, "max_model_len", None) or {}
    limit = lengths.get(model)
    if limit is None:
        return scenario
    reserve = min(512, limit // 4)  # room left for the prompt
    cap = limit - reserve
    too_long = [c for c in scenario.classes if c.max_tokens > cap]
    if not too_long:
        return scenario
    if not scenario.load.clamp_max_tokens:
        c = too_long[0]
        more = f" (and {len(too_long) - 1} more class(es))" if len(too_long) > 1 else ""
        raise UserError(
            f"class {c.name!r} asks max_tokens {c.max_tokens} but {redact_url(url)} serves {model!r} with "
            f"max_model_len {limit}{more}: its requests would fail with HTTP 400",
            f"lower [[classes]] max_tokens to at most {cap}, or pass --clamp-max-tokens "
            f"(load.clamp_max_tokens = true) to cap them at {cap} (recorded)",
        )
    for c in too_long:
        log(
            f"class {c.name!r}: max_tokens {c.max_tokens} clamped to {cap} (max_model_len {limit} of "
            f"{model!r}, {reserve} tokens left for the prompt): more of its requests end at the cap",
            "warning",
        )
    classes = tuple(dataclasses.replace(c, max_tokens=cap) if c in too_long else c for c in scenario.classes)
    return dataclasses.replace(scenario, classes=classes)
