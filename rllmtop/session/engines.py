"""The engine side of a session: launch or attach, probe, watch (metric sources), tear down.

:class:`EngineSide` owns every engine process rllmtop started and every metric source it runs. The session
asks it to ``start`` (returns where the load goes and which model to name), to ``watch`` until told to stop,
for a ``final_scrape`` once the load drained, and to ``stop`` whatever it launched. A launched engine that
exits mid-run sets :attr:`EngineSide.died`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rllmtop.clock import Clock, Publish
from rllmtop.errors import UserError
from rllmtop.events import SessionInfo, SessionState
from rllmtop.redact import redact_url
from rllmtop.scenario import EngineSpec, Scenario

if TYPE_CHECKING:
    from rllmtop.engines.launcher import EngineProcess
    from rllmtop.metrics.scrape import Scraper

__all__ = ["EngineSide", "Started", "fit_max_tokens"]


@dataclass(frozen=True)
class Started:
    """What the engine side learned at start: where the load goes, the model, and the updated facts."""

    load_url: str  # base URL requests are sent to (secrets included: never published)
    model: str
    info: SessionInfo  # the session facts with the engine's kind, version, model (redacted URLs)
    identity: Any  # engines.adapters.EngineIdentity of the load target


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
        self.engine: EngineProcess | None = None  # the launched engine, if any
        self._scraper: Scraper | None = None
        self._metrics_url = ""
        self._info: SessionInfo | None = None

    # ------------------------------------------------------------------ start

    async def start(self, info: SessionInfo) -> Started:
        """Launch (or find) the engine, wait until it serves, probe it. Raises UserError naming what failed."""
        self._info = info
        base_url, metrics_url = await self._launch_or_attach(info)
        identity = await self._probe(base_url)
        sc = self.scenario
        model = (sc.model if sc and sc.model else None) or (identity.models[0] if identity.models else "")
        if not model and sc is not None:
            denied = [w for w in identity.warnings if " 401" in w or " 403" in w]
            if denied:
                raise UserError(denied[0], "pass the server's key with --api-key KEY or OPENAI_API_KEY")
            raise UserError(
                f"{redact_url(base_url)}/v1/models lists no model",
                "pass --model NAME (the served model name)",
            )
        cur = self._info or info
        kind = cur.engine_kind
        if kind in ("unknown", "") and identity.kind:
            kind = identity.kind
        self._metrics_url = metrics_url or identity.metrics_url or f"{base_url}/metrics"
        info = dataclasses.replace(
            cur,
            engine_kind=kind,
            engine_version=identity.version or (self.engine.version if self.engine else ""),
            engine_url=redact_url(base_url),
            metrics_url=redact_url(self._metrics_url),
            model=model,
        )
        self._info = info
        return Started(load_url=base_url, model=model, info=info, identity=identity)

    async def _launch_or_attach(self, info: SessionInfo) -> tuple[str, str | None]:
        eng = self.spec
        if eng.kind == "url":
            if not eng.url:
                raise UserError("no engine URL to attach to", "pass a URL: rllmtop attach http://HOST:PORT")
            return eng.url.rstrip("/"), eng.metrics_url
        from rllmtop.engines.launch_args import build_command, choose_port
        from rllmtop.engines.launcher import EngineProcess

        seed = self.scenario.seed if self.scenario else 0
        launch = build_command(
            eng, seed=seed, port=choose_port(eng), model=eng.model, extra_args=self.extra_engine_args
        )
        self._info = dataclasses.replace(info, launch_command=tuple(launch.redacted_argv))
        self.publish(self._info)
        self.engine = EngineProcess(launch, clock=self.clock, publish=self.publish, name=eng.kind)
        self._log(f"launching {eng.kind}: {' '.join(launch.redacted_argv)}", "info")
        await self.engine.start()
        await self.engine.wait_ready(eng.startup_timeout, progress=self._startup_progress)
        base_url = self.engine.base_url
        self._log(f"{eng.kind} ready at {redact_url(base_url)} after {self.clock.now():.1f} s", "info")
        return base_url, eng.metrics_url

    def _startup_progress(self, elapsed: float, last_line: str) -> None:
        self._set_state(SessionState.STARTING, f"{elapsed:.0f} s: {last_line[:160]}")

    async def _probe(self, base_url: str) -> Any:
        from rllmtop.engines.adapters import probe

        return await probe(base_url, self.api_key)

    # ------------------------------------------------------------------ watch

    async def watch(self, stop: asyncio.Event) -> None:
        """Run the metric sources until ``stop`` is set."""
        from rllmtop.engines.adapters import adapter_for
        from rllmtop.metrics.scrape import Scraper

        info = self._info
        assert info is not None, "start() first"
        kind = info.engine_kind if info.engine_kind != "unknown" else "vllm"
        self._scraper = scraper = Scraper(
            self._metrics_url or info.metrics_url,
            adapter_for(kind),
            clock=self.clock,
            publish=self.publish,
            # session seconds: a time-lapse keeps the KV/queue shape (polls K times as often in wall time,
            # up to 50 a second)
            interval=max(self.scrape_interval, self.clock.session(0.02)),
            api_key=self.api_key,
        )
        await scraper.run(stop)

    async def final_scrape(self) -> None:
        """The engines' final counters, before they go away (skipped when one died)."""
        if self._scraper is not None and not self.has_died:
            await self._scraper.scrape_once()

    # ------------------------------------------------------------------ death and teardown

    @property
    def died(self) -> asyncio.Event | None:
        """Set when a launched engine exited on its own (None when nothing was launched)."""
        return self.engine.died if self.engine is not None else None

    @property
    def has_died(self) -> bool:
        return self.engine is not None and self.engine.died.is_set()

    def death_detail(self, lines: int = 20) -> str:
        """One line for the status, the engine's last lines logged as errors."""
        assert self.engine is not None
        for line in self.engine.last_lines(lines):
            self._log(f"engine: {line}", "error")
        return f"engine exited with code {self.engine.returncode}"

    async def stop(self) -> None:
        """Stop whatever was launched (SIGTERM, then SIGKILL after the grace, through the guard)."""
        if self.engine is not None:
            await self.engine.stop()

    def kill_now(self) -> None:
        if self.engine is not None:
            self.engine.kill_now()


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
