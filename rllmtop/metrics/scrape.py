"""Poll engines' /metrics on a fixed grid and publish one :class:`~rllmtop.events.Scrape` per engine and poll.

One :class:`Scraper` per engine; every Scrape it publishes carries its ``engine_id``. Polls of one engine
never overlap: the next poll is due ``interval`` after the previous one *started*; when a poll runs long,
the slots it overran are skipped (no burst of catch-up polls). Every poll publishes a Scrape, failed ones
included (``ok=False`` with a one-line error): a stopped engine shows as failed scrapes, never as zeros; a
restarted one as ``counter_reset``. :func:`run_scrapers` runs a fleet's scrapers on one event loop with one
shared HTTP client, their first polls spread evenly over the interval so that polls (and parsing) do not
all land on the loop at once.

A body is read incrementally through :class:`~rllmtop.metrics.prom.MetricsFilter` (only the lines of
mapped families are kept; a body over ``max_bytes`` is a failed scrape); ``timeout`` bounds a whole poll.

Logged as :class:`LogEvent`\\ s (source "scrape"), rate-limited: the first failure, then at most one
reminder per ``log_every`` seconds, then one line when scrapes recover; each series dropped at the edge
(a bad value) once, at most ``_PROBLEM_LINES`` new series per ``log_every`` (the rest summed up in one
line); series over the cardinality cap once per engine.

GPU telemetry, when the engine has it, comes in the same Scrape: ``gpu_metrics_url`` (a dcgm-exporter
``/metrics``) is polled alongside the engine's, and ``gpu`` (e.g. :class:`rllmtop.metrics.gpu.NvmlGpus`)
is read in a thread; their samples join the engine's (a failing GPU source leaves the ``gpu_*`` names
missing and is logged, it does not fail the engine's scrape).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from rllmtop.clock import Clock, Publish
from rllmtop.engines.adapters import GPU_ADAPTER, EngineAdapter
from rllmtop.events import LogEvent, MetricSample, Scrape
from rllmtop.metrics.prom import (
    BODY_CAP,
    SERIES_CAP,
    MetricsFilter,
    MetricsTextError,
    Parsed,
    Problem,
    failed_scrape,
    parse_filtered,
)
from rllmtop.redact import redact_url

if TYPE_CHECKING:
    import httpx

__all__ = [
    "POLL_CPU_S",
    "FailureStreak",
    "GpuReader",
    "ProblemLog",
    "Scraper",
    "run_scrapers",
    "scrape_cost_warning",
]

_PROBLEM_LINES = 5  # new bad series logged per log_every window (per engine)
_SEEN_MAX = 10_000  # bad series remembered per engine (so each is logged once)


class GpuReader(Protocol):
    """A local GPU telemetry source (NVML): samples under the ``gpu_*`` neutral names, label ``gpu``."""

    def read(self, t: float) -> list[MetricSample]: ...


def _engine_id_of(metrics_url: str) -> str:
    url = redact_url(metrics_url).rstrip("/")
    return url[: -len("/metrics")] if url.endswith("/metrics") else url


class Scraper:
    """Scrapes one engine's ``metrics_url`` every ``interval`` seconds until ``stop`` is set.

    ``engine_id``: the key every Scrape carries (default: the URL without ``/metrics``). ``interval``
    and ``phase`` are session seconds (simulated seconds in a time-lapse run); ``timeout`` bounds one poll
    in wall seconds (default 5 s). The API key, if any, goes in the Authorization header only. ``client``:
    an ``httpx.AsyncClient`` to share (see :func:`run_scrapers`); by default the scraper opens its own.
    ``phase``: seconds to wait before the first poll.
    """

    def __init__(
        self,
        metrics_url: str,
        adapter: EngineAdapter,
        *,
        clock: Clock,
        publish: Publish,
        engine_id: str | None = None,
        interval: float = 0.25,
        api_key: str | None = None,
        timeout: float = 5.0,
        log_every: float = 10.0,
        series_cap: int = SERIES_CAP,
        max_bytes: int = BODY_CAP,
        gpu_metrics_url: str = "",
        gpu: GpuReader | None = None,
        client: httpx.AsyncClient | None = None,
        phase: float = 0.0,
    ) -> None:
        if not interval > 0:
            raise ValueError("interval must be > 0")
        if not timeout > 0:
            raise ValueError("timeout must be > 0")
        if series_cap < 1 or max_bytes < 1:
            raise ValueError("series_cap and max_bytes must be >= 1")
        self.metrics_url = metrics_url
        self.adapter = adapter
        self.clock = clock
        self.publish = publish
        self.engine_id = _engine_id_of(metrics_url) if engine_id is None else engine_id
        self.interval = interval
        self.timeout = timeout
        self.log_every = log_every
        self.series_cap = series_cap
        self.max_bytes = max_bytes
        self.gpu_metrics_url = gpu_metrics_url
        self.gpu = gpu
        self.client = client
        self.phase = max(phase, 0.0)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._shown = redact_url(metrics_url)
        self._last_ok: Scrape | None = None
        self._streak = FailureStreak(self._log, log_every)
        self._logged_missing: tuple[str, ...] | None = None
        self._problem_log = ProblemLog(self._log, log_every)
        self._cap_logged = False
        self._gpu_failing = False
        self._gpu_last_log = -1e18
        self.polls = 0  # number of polls made (for tests and the status line)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set. Returns promptly when it is, even in the middle of a poll."""
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            async with contextlib.AsyncExitStack() as stack:
                client = self.client
                if client is None:
                    client = await stack.enter_async_context(self._new_client())
                if self.phase:
                    await asyncio.wait({stop_wait}, timeout=self.clock.wall(self.phase))
                while not stop.is_set():
                    started = self.clock.now()
                    poll = asyncio.ensure_future(self._poll(client, started))
                    await asyncio.wait({poll, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                    if not poll.done():
                        poll.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await poll
                        return
                    self._report(poll.result())
                    now = self.clock.now()
                    due = started + self.interval
                    if due <= now:  # the poll overran one or more slots: skip them
                        due += self.interval * (int((now - due) / self.interval) + 1)
                    await asyncio.wait({stop_wait}, timeout=self.clock.wall(due - now))
        finally:
            stop_wait.cancel()

    async def scrape_once(self) -> Scrape:
        """One poll, published like the others: the session takes a last one when the load has drained,
        so the recording ends with the engine's final counters (polls may be seconds apart on a busy
        engine). Call it after :meth:`run` returned."""
        async with contextlib.AsyncExitStack() as stack:
            client = self.client
            if client is None:
                client = await stack.enter_async_context(self._new_client())
            scrape = await self._poll(client, self.clock.now())
        self._report(scrape)
        return scrape

    def _new_client(self) -> httpx.AsyncClient:
        import httpx  # here, not at import: `import httpx` pulls in rich (its CLI) and the core stays UI-free

        return httpx.AsyncClient(timeout=self.timeout, follow_redirects=True)

    # -- one poll

    async def _poll(self, client: httpx.AsyncClient, started: float) -> Scrape:
        self.polls += 1
        if not self.gpu_metrics_url and self.gpu is None:
            main = await self._fetch(client, self.metrics_url, self.adapter, started, self._last_ok)
            self._problems(main)
            return main.scrape
        gpu_task = asyncio.ensure_future(self._gpu(client, started))
        try:
            main = await self._fetch(client, self.metrics_url, self.adapter, started, self._last_ok)
        except BaseException:  # cancelled (stop): the GPU poll goes too
            gpu_task.cancel()
            raise
        gpu_samples, gpu_error = await gpu_task
        self._problems(main)
        return self._with_gpu(main.scrape, gpu_samples, gpu_error)

    async def _fetch(
        self,
        client: httpx.AsyncClient,
        url: str,
        adapter: EngineAdapter,
        started: float,
        previous: Scrape | None,
    ) -> Parsed:
        import httpx

        shown = redact_url(url)
        flt = MetricsFilter(adapter, max_bytes=self.max_bytes, series_cap=self.series_cap)
        status = 0
        reason = ""
        try:
            async with asyncio.timeout(self.timeout):
                async with client.stream("GET", url, headers=self._headers) as resp:
                    status, reason = resp.status_code, resp.reason_phrase
                    if status == 200:
                        size = resp.headers.get("content-length", "")
                        if size.isdigit() and int(size) > self.max_bytes:
                            raise MetricsTextError(
                                f"body of {int(size) / 2**20:.1f} MiB is larger than "
                                f"{self.max_bytes / 2**20:g} MiB: not read"
                            )
                        async for chunk in resp.aiter_bytes():
                            flt.feed(chunk)
                        flt.finish()
        except TimeoutError:
            err = f"{shown}: no answer within {self.timeout:g} s"
        except MetricsTextError as e:
            err = f"{shown}: malformed metrics text: {e}"
        except httpx.HTTPError as e:
            detail = str(e).strip() or type(e).__name__
            err = f"{shown}: cannot connect ({detail})"
        else:
            t = self.clock.now()
            if status == 200:
                return parse_filtered(
                    flt,
                    adapter,
                    t=t,
                    latency_s=t - started,
                    previous=previous,
                    engine_id=self.engine_id,
                    series_cap=self.series_cap,
                )
            if status == 404:
                err = f"{shown}: 404 Not Found ({adapter.metrics_404_hint})"
            elif status in (401, 403):
                err = f"{shown}: HTTP {status} (the server wants an API key: pass --api-key)"
            else:
                err = f"{shown}: HTTP {status} {reason}".rstrip()
        t = self.clock.now()
        return Parsed(failed_scrape(t, t - started, err, engine_id=self.engine_id))

    async def _gpu(self, client: httpx.AsyncClient, started: float) -> tuple[list[MetricSample], str]:
        samples: list[MetricSample] = []
        errors: list[str] = []
        if self.gpu_metrics_url:
            got = await self._fetch(client, self.gpu_metrics_url, GPU_ADAPTER, started, None)
            if got.scrape.ok:
                samples.extend(got.scrape.samples)
                self._problems(got)
            else:
                errors.append(got.scrape.error)
        if self.gpu is not None:
            try:
                samples.extend(await asyncio.to_thread(self.gpu.read, self.clock.now()))
            except Exception as e:  # NVML raises its own error types; any failure costs the GPU samples only
                errors.append(f"NVML: {type(e).__name__}: {e}")
        return samples, "; ".join(errors)

    def _with_gpu(self, scrape: Scrape, samples: list[MetricSample], error: str) -> Scrape:
        t = scrape.t
        if error and (not self._gpu_failing or t - self._gpu_last_log >= self.log_every):
            self._gpu_last_log = t
            self._log(t, "warning", f"{self.engine_id}: GPU metrics failed: {error}")
        elif not error and self._gpu_failing:
            self._log(t, "info", f"{self.engine_id}: GPU metrics recovered")
        self._gpu_failing = bool(error)
        if not scrape.ok or not samples:
            return scrape
        have = {s.name for s in samples}
        return dataclasses.replace(
            scrape,
            samples=scrape.samples + tuple(s if s.t == t else dataclasses.replace(s, t=t) for s in samples),
            missing=tuple(n for n in scrape.missing if n not in have),
        )

    # -- reporting

    def _report(self, scrape: Scrape) -> None:
        self.publish(scrape)
        t = scrape.t
        if scrape.ok:
            self._streak.ok(
                t,
                f"{self.engine_id}: metrics scrapes recovered after {{n}} failure(s) over {{seconds:.1f}} s",
            )
            if scrape.counter_reset:
                self._log(t, "warning", f"{self._shown}: counters went backwards (did the engine restart?)")
            if scrape.dropped_series and not self._cap_logged:
                self._cap_logged = True
                self._log(
                    t,
                    "warning",
                    f"{self.engine_id}: serves more than {self.series_cap} series of the metrics rllmtop "
                    f"reads; {scrape.dropped_series} over the cap were dropped (gauges are kept first; "
                    "is a label exploding?)",
                )
            if scrape.missing != self._logged_missing:
                self._logged_missing = scrape.missing
                if scrape.missing:
                    self._log(
                        t,
                        "info",
                        f"{self.engine_id}: not served by this engine (shown as missing): "
                        + ", ".join(scrape.missing),
                    )
            self._last_ok = scrape
            return
        self._streak.failed(t, "metrics scrapes", scrape.error or "")

    def _problems(self, parsed: Parsed) -> None:
        self._problem_log.report(parsed.scrape.t, self.engine_id, parsed.problems)

    @property
    def invalid_samples(self) -> int:
        """Samples dropped at the edge so far (bad values, malformed lines)."""
        return self._problem_log.total

    def _log(self, t: float, level: str, text: str) -> None:
        self.publish(LogEvent(t, "scrape", level, text))


class FailureStreak:
    """The one policy for logging a run of failed polls: the first failure at once, then one line per
    ``log_every`` seconds while they go on (how long, how many), and one line when polls succeed again."""

    def __init__(self, log: Callable[[float, str, str], None], log_every: float) -> None:
        self._log = log
        self.log_every = log_every
        self.failures = 0  # consecutive failed polls
        self._since = 0.0
        self._last_log = -1e18

    def failed(self, t: float, what: str, error: str) -> None:
        """A poll failed at ``t``: ``what`` names the polls ("metrics scrapes", "Prometheus polls")."""
        self.failures += 1
        if self.failures == 1:
            self._since = self._last_log = t
            self._log(t, "warning", f"{what.rstrip('s')} failed: {error}")
        elif t - self._last_log >= self.log_every:
            self._last_log = t
            self._log(
                t, "warning", f"{what} failing for {t - self._since:.0f} s ({self.failures} polls): {error}"
            )

    def ok(self, t: float, recovered: str) -> None:
        """A poll succeeded: after failures, log ``recovered`` (formatted with ``n`` and ``seconds``)."""
        if self.failures:
            self._log(t, "info", recovered.format(n=self.failures, seconds=t - self._since))
            self.failures = 0


class ProblemLog:
    """The one policy for logging samples dropped at the edge: each bad series once, at most
    ``lines`` new ones per ``log_every`` seconds; the rest are summed up in one line when the window
    ends (and listed in a later window if still bad). ``total`` counts every dropped sample."""

    def __init__(
        self, log: Callable[[float, str, str], None], log_every: float, *, lines: int = _PROBLEM_LINES
    ) -> None:
        self._log = log
        self.log_every = log_every
        self.lines = lines
        self.total = 0
        self._seen: set[str] = set()
        self._unlisted: set[str] = set()
        self._window = -1e18
        self._in_window = 0

    def report(self, t: float, who: str, problems: Sequence[Problem]) -> None:
        if not problems:
            return
        self.total += len(problems)
        if t - self._window >= self.log_every:
            if self._unlisted:
                self._log(
                    t,
                    "warning",
                    f"{who}: {len(self._unlisted)} more series with bad values were dropped (not listed yet)",
                )
            self._window = t
            self._in_window = 0
            self._unlisted.clear()
        for p in problems:
            key = f"{who}\x00{p.series}"
            if key in self._seen:
                continue
            if self._in_window < self.lines:
                self._in_window += 1
                if len(self._seen) < _SEEN_MAX:
                    self._seen.add(key)
                self._log(
                    t,
                    "warning",
                    f"{who}: dropped {p.series}: {p.reason} (the sample is skipped, the scrape kept; "
                    f"{self.total} dropped so far)",
                )
            elif len(self._unlisted) < _SEEN_MAX:
                self._unlisted.add(key)


POLL_CPU_S = 0.004
"""CPU seconds one poll of a full vLLM /metrics costs here (bench_scrape: 15-16 ms per engine-second at 4 Hz)."""


def scrape_cost_warning(engines: int, wall_interval: float) -> str | None:
    """A warning when polling ``engines`` directly every ``wall_interval`` wall seconds would take more than a
    quarter of a core, which the load generator shares (its sends would be late); None otherwise."""
    if engines <= 0 or wall_interval <= 0:
        return None
    share = engines / wall_interval * POLL_CPU_S
    if share <= 0.25:
        return None
    return (
        f"scraping {engines} engines every {wall_interval:g} s (wall) directly costs about {share:.0%} of a core, "
        "which the load generator shares: read them through Prometheus (--prometheus URL) or poll less often "
        f"(--scrape-interval {max(1.0, engines * POLL_CPU_S * 4):g})"
    )


async def run_scrapers(scrapers: Sequence[Scraper], stop: asyncio.Event) -> None:
    """Run a fleet's scrapers on this event loop until ``stop`` is set.

    One HTTP client (a keep-alive connection per engine) is shared by every scraper that has none; the
    first polls are spread evenly over each scraper's interval (engine i of n starts at i/n of it).
    """
    if not scrapers:
        return
    import httpx

    n = len(scrapers)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=2 * n)
    timeout = max(s.timeout for s in scrapers)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=True) as client:
        for i, s in enumerate(scrapers):
            if s.client is None:
                s.client = client
            if not s.phase:
                s.phase = s.interval * i / n
        try:
            await asyncio.gather(*(s.run(stop) for s in scrapers))
        finally:
            for s in scrapers:
                if s.client is client:
                    s.client = None
