"""Poll an engine's /metrics on a fixed grid and publish one :class:`~rllmtop.events.Scrape` per poll.

Polls never overlap: the next poll is due ``interval`` after the previous one *started*; when a poll runs
long, the slots it overran are skipped (no burst of catch-up polls). Every poll publishes a Scrape, failed
ones included (``ok=False`` with a one-line error). Failures are also reported as :class:`LogEvent`\\ s
(source "scrape"), rate-limited: the first failure, then at most one reminder per ``log_every`` seconds,
then one line when scrapes recover.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from rllmtop.clock import Clock, Publish
from rllmtop.engines.adapters import EngineAdapter
from rllmtop.events import LogEvent, Scrape
from rllmtop.metrics.prom import failed_scrape, parse_scrape

if TYPE_CHECKING:
    import httpx

__all__ = ["Scraper"]


class Scraper:
    """Scrapes ``metrics_url`` every ``interval`` seconds until ``stop`` is set.

    ``timeout`` bounds one poll (default: 5 s). The API key, if any, goes in the Authorization header only.
    """

    def __init__(
        self,
        metrics_url: str,
        adapter: EngineAdapter,
        *,
        clock: Clock,
        publish: Publish,
        interval: float = 0.25,
        api_key: str | None = None,
        timeout: float = 5.0,
        log_every: float = 10.0,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.metrics_url = metrics_url
        self.adapter = adapter
        self.clock = clock
        self.publish = publish
        self.interval = interval
        self.timeout = timeout
        self.log_every = log_every
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._last_ok: Scrape | None = None
        self._failures = 0  # consecutive failed polls
        self._failing_since = 0.0
        self._last_failure_log = -1e18
        self._logged_missing: tuple[str, ...] | None = None
        self.polls = 0  # number of polls made (for tests and the status line)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set. Returns promptly when it is, even in the middle of a poll."""
        import httpx  # here, not at import: `import httpx` pulls in rich (its CLI) and the core stays UI-free

        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            async with httpx.AsyncClient(
                timeout=self.timeout, headers=self._headers, follow_redirects=True
            ) as client:
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
                    await asyncio.wait({stop_wait}, timeout=due - now)
        finally:
            stop_wait.cancel()

    async def scrape_once(self) -> Scrape:
        """One poll, published like the others: the session takes a last one when the load has drained,
        so the recording ends with the engine's final counters (polls may be seconds apart on a busy
        engine). Call it after :meth:`run` returned."""
        import httpx

        async with httpx.AsyncClient(timeout=self.timeout, headers=self._headers, follow_redirects=True) as c:
            scrape = await self._poll(c, self.clock.now())
        self._report(scrape)
        return scrape

    async def _poll(self, client: httpx.AsyncClient, started: float) -> Scrape:
        import httpx

        self.polls += 1
        url = self.metrics_url
        try:
            resp = await client.get(url)
        except httpx.TimeoutException:
            err = f"{url}: no answer within {self.timeout:g} s"
        except httpx.HTTPError as e:
            detail = str(e).strip() or type(e).__name__
            err = f"{url}: cannot connect ({detail})"
        else:
            t = self.clock.now()
            if resp.status_code == 200:
                return parse_scrape(
                    resp.text, self.adapter, t=t, latency_s=t - started, previous=self._last_ok, url=url
                )
            if resp.status_code == 404:
                err = f"{url}: 404 Not Found ({self.adapter.metrics_404_hint})"
            elif resp.status_code in (401, 403):
                err = f"{url}: HTTP {resp.status_code} (the server wants an API key: pass --api-key)"
            else:
                err = f"{url}: HTTP {resp.status_code} {resp.reason_phrase}".rstrip()
            return failed_scrape(t, t - started, err)
        t = self.clock.now()
        return failed_scrape(t, t - started, err)

    def _report(self, scrape: Scrape) -> None:
        self.publish(scrape)
        t = scrape.t
        if scrape.ok:
            if self._failures:
                self._log(
                    t,
                    "info",
                    f"metrics scrapes recovered after {self._failures} failure(s) "
                    f"over {t - self._failing_since:.1f} s",
                )
                self._failures = 0
            if scrape.counter_reset:
                self._log(
                    t, "warning", f"{self.metrics_url}: counters went backwards (did the engine restart?)"
                )
            if scrape.missing != self._logged_missing:
                self._logged_missing = scrape.missing
                if scrape.missing:
                    self._log(
                        t,
                        "info",
                        "not served by this engine (shown as missing): " + ", ".join(scrape.missing),
                    )
            self._last_ok = scrape
            return
        self._failures += 1
        if self._failures == 1:
            self._failing_since = t
            self._last_failure_log = t
            self._log(t, "warning", f"metrics scrape failed: {scrape.error}")
        elif t - self._last_failure_log >= self.log_every:
            self._last_failure_log = t
            self._log(
                t,
                "warning",
                f"metrics scrapes failing for {t - self._failing_since:.0f} s "
                f"({self._failures} polls): {scrape.error}",
            )

    def _log(self, t: float, level: str, text: str) -> None:
        self.publish(LogEvent(t, "scrape", level, text))
