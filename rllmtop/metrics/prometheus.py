"""Engine series through a Prometheus server's HTTP API: one :class:`~rllmtop.events.Scrape` per engine and poll.

Where a fleet is already scraped by Prometheus, rllmtop reads it from there instead of scraping every
engine itself. Each poll is two instant queries (``POST /api/v1/query``, one evaluation time):

1. the engine series: ``{__name__=~"vllm:...|sglang:...|rllmtop_sim_...", <selector>}`` (every wire name
   the adapters map, histogram ``_bucket``/``_sum``/``_count`` series included, plus the user's label
   selector, e.g. ``{job="vllm"}``);
2. target health: ``up`` and ``timestamp(up)`` of the instances seen.

Engines are discovered from the ``instance`` label (``Scrape.engine_id`` = instance; vLLM's data-parallel
``engine`` label stays a label; ``job`` and ``instance`` are not sample labels). vLLM, SGLang and simulator
series mix in one fleet: each instance's kind is told from its names and its own adapter maps it. A target
Prometheus reports down (``up == 0``), or whose series vanished, is a failed Scrape with ``stale=True``
(never zeros); a target whose last scrape is older than ``stale_after`` is ``stale`` with its last values.
When Prometheus itself cannot be read, every known engine gets a failed Scrape naming the Prometheus URL.

:meth:`PrometheusSource.backfill` reads a window with ``/api/v1/query_range`` (scalars by default) and
returns Scrapes in time order, for the charts of an attach. PromQL JSON is parsed here only (orjson),
validated at the edge like the text format (through :func:`rllmtop.metrics.prom.build_scrape`): a bad
value costs one sample; "NaN" and "+Inf" strings are values like any other and are then judged by range.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from rllmtop.clock import Clock, Publish
from rllmtop.engines.adapters import FLEET_ADAPTER, EngineAdapter, adapter_for
from rllmtop.errors import UserError
from rllmtop.events import EngineInfo, LogEvent, Scrape
from rllmtop.metrics.prom import SERIES_CAP, Problem, RawSample, build_scrape, failed_scrape, parse_value
from rllmtop.metrics.scrape import FailureStreak, ProblemLog
from rllmtop.redact import redact_url

if TYPE_CHECKING:
    import httpx

__all__ = ["PrometheusError", "PrometheusSource", "parse_promql", "series_expr"]

JSON_CAP = 64 * 1024 * 1024  # bytes of one API answer
_TS_LABEL = "rllmtop_ts"
_NOT_LABELS = frozenset({"__name__", "instance", "job"})


class PrometheusError(Exception):
    """One poll or query failed: one line naming the Prometheus URL and what to do."""


# ---------------------------------------------------------------------------------------------- PromQL text


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _selector_inner(selector: str) -> str:
    """``{job="vllm"}`` -> ``job="vllm"``; a UserError for anything that is not a label selector."""
    s = selector.strip()
    if not s:
        return ""
    if not (s.startswith("{") and s.endswith("}")) or "__name__" in s:
        raise UserError(
            f"--prometheus-selector {selector!r} is not a label selector",
            'give labels only, in braces, e.g. \'{job="vllm"}\' or \'{namespace="llm",job=~"vllm.*"}\'',
        )
    return s[1:-1].strip().rstrip(",")


def _names(adapter: EngineAdapter, histograms: bool) -> list[str]:
    out = {w for ws in adapter.scalars.values() for w in ws}
    out |= {w for srcs in adapter.info_labels.values() for w, _ in srcs}
    if histograms:
        out |= {
            w + s for ws in adapter.histograms.values() for w in ws for s in ("_bucket", "_sum", "_count")
        }
    return sorted(out)


def series_expr(adapter: EngineAdapter, selector: str = "", *, histograms: bool = True) -> str:
    """The instant-vector selector of every series ``adapter`` maps, narrowed by ``selector``."""
    names = "|".join(re.escape(n) for n in _names(adapter, histograms))
    inner = _selector_inner(selector)
    return "{__name__=~" + _quote(names) + ("," + inner if inner else "") + "}"


def _health_expr(instances: Iterable[str]) -> str:
    sel = "{instance=~" + _quote("|".join(re.escape(i) for i in sorted(instances))) + "}"
    return f'up{sel} or label_replace(timestamp(up{sel}), "{_TS_LABEL}", "1", "", "")'


# ---------------------------------------------------------------------------------------------- JSON


@dataclass(frozen=True, slots=True)
class _Series:
    labels: dict[str, str]  # including __name__, instance, job
    points: list[tuple[float, str]]  # (unix time, value text)


def parse_promql(body: bytes, where: str, kind: str) -> tuple[list[_Series], list[Problem]]:
    """A ``/api/v1/query`` (``kind`` "vector") or ``query_range`` ("matrix") answer.

    Raises :class:`PrometheusError` for an answer that is not a successful Prometheus API answer; a
    malformed series in it costs that series (a Problem)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise PrometheusError(
            f"{where}: the answer is not JSON (is this a Prometheus server? give its base URL, "
            "e.g. http://127.0.0.1:9090)"
        ) from None
    if not isinstance(doc, dict) or doc.get("status") not in ("success", "error"):
        raise PrometheusError(f"{where}: the answer is not Prometheus's API JSON (no status)")
    if doc["status"] == "error":
        raise PrometheusError(
            f"{where}: Prometheus says {doc.get('errorType', 'error')}: {str(doc.get('error', ''))[:200]}"
        )
    data = doc.get("data")
    if (
        not isinstance(data, dict)
        or data.get("resultType") != kind
        or not isinstance(data.get("result"), list)
    ):
        got = data.get("resultType") if isinstance(data, dict) else type(data).__name__
        raise PrometheusError(f"{where}: expected a {kind} result, got {got!r}")
    out: list[_Series] = []
    problems: list[Problem] = []
    for item in data["result"]:
        metric = item.get("metric") if isinstance(item, dict) else None
        if not isinstance(metric, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metric.items()
        ):
            problems.append(Problem(str(item)[:160], "a result without a string-valued 'metric' object"))
            continue
        raw_points = [item.get("value")] if kind == "vector" else item.get("values")
        if not isinstance(raw_points, list):
            problems.append(Problem(_show(metric), f"no {'value' if kind == 'vector' else 'values'}"))
            continue
        points: list[tuple[float, str]] = []
        for p in raw_points:
            if (
                isinstance(p, list)
                and len(p) == 2
                and isinstance(p[0], int | float)
                and not isinstance(p[0], bool)
                and isinstance(p[1], str)
            ):
                points.append((float(p[0]), p[1]))
            else:
                problems.append(Problem(_show(metric), f'a point that is not [time, "value"]: {str(p)[:40]}'))
        if points:
            out.append(_Series(metric, points))
    return out, problems


def _show(metric: dict[str, str]) -> str:
    """A series for a one-line message: label values escaped (a newline in a label never breaks a line)."""
    inner = ",".join(
        f"{k}={json.dumps(v)}" for k, v in sorted(metric.items()) if k not in ("__name__", "model_name")
    )
    name = json.dumps(metric.get("__name__", ""))[1:-1]
    text = f"{name}{{{inner}}}"
    return text if len(text) <= 160 else text[:159] + "…"


def _kind_of(names: Iterable[str]) -> str:
    kinds = set()
    for n in names:
        if n.startswith("rllmtop_sim_"):
            return "sim"
        if n.startswith("vllm:"):
            kinds.add("vllm")
        elif n.startswith("sglang:"):
            kinds.add("sglang")
    return kinds.pop() if len(kinds) == 1 else "unknown"


# ---------------------------------------------------------------------------------------------- the source


@dataclass(slots=True)
class _Engine:
    instance: str
    job: str = ""
    kind: str = "unknown"
    last_ok: Scrape | None = None
    up: float | None = None  # last `up` value seen
    up_ts: float | None = None  # when Prometheus last scraped it (unix)
    gaps: tuple[float, ...] = ()  # recent scrape gaps (for the staleness rule)
    down_logged: bool = False


class PrometheusSource:
    """Reads a fleet's engine series from the Prometheus at ``url`` every ``interval`` seconds.

    ``selector``: a PromQL label selector narrowing the series (``{job="vllm"}``). ``stale_after``:
    seconds after which a target's last scrape counts as stale (default: three of its observed scrape
    intervals, 60 s until one is observed). ``on_engine`` is called with an :class:`EngineInfo` for each
    engine the first time it is seen. ``api_key`` goes in an Authorization header (a Prometheus behind an
    authenticating proxy).
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Clock,
        publish: Publish,
        selector: str = "",
        interval: float = 1.0,
        api_key: str | None = None,
        timeout: float = 5.0,
        log_every: float = 10.0,
        series_cap: int = SERIES_CAP,
        max_bytes: int = JSON_CAP,
        stale_after: float | None = None,
        adapter: EngineAdapter = FLEET_ADAPTER,
        on_engine: Callable[[EngineInfo], None] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not interval > 0 or not timeout > 0:
            raise ValueError("interval and timeout must be > 0")
        base = url.strip().rstrip("/")
        if "://" not in base:
            base = "http://" + base
        self.url = base
        self.shown = redact_url(base)
        self.clock = clock
        self.publish = publish
        self.selector = selector
        self.interval = interval
        self.timeout = timeout
        self.log_every = log_every
        self.series_cap = series_cap
        self.max_bytes = max_bytes
        self.stale_after = stale_after
        self.adapter = adapter
        self.on_engine = on_engine
        self.client = client
        self.expr = series_expr(adapter, selector)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.engines: dict[str, _Engine] = {}
        self._jobs: dict[str, str] = {}
        self._streak = FailureStreak(self._log, log_every)
        self._problem_log = ProblemLog(self._log, log_every)
        self.polls = 0

    @property
    def invalid_samples(self) -> int:
        """Samples dropped at the edge so far."""
        return self._problem_log.total

    # -- public

    def engine_infos(self) -> tuple[EngineInfo, ...]:
        """The engines seen so far (in the order they were found)."""
        return tuple(self._info(e) for e in self.engines.values())

    async def run(self, stop: asyncio.Event) -> None:
        """Poll and publish until ``stop`` is set; polls never overlap (the grid of :class:`Scraper`)."""
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            async with self._client() as client:
                while not stop.is_set():
                    started = self.clock.now()
                    poll = asyncio.ensure_future(self._poll(client, started))
                    await asyncio.wait({poll, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                    if not poll.done():
                        poll.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await poll
                        return
                    for s in poll.result():
                        self.publish(s)
                    now = self.clock.now()
                    due = started + self.interval
                    if due <= now:
                        due += self.interval * (int((now - due) / self.interval) + 1)
                    await asyncio.wait({stop_wait}, timeout=self.clock.wall(due - now))
        finally:
            stop_wait.cancel()

    async def poll_once(self) -> list[Scrape]:
        """One poll: a Scrape per known engine (published too)."""
        async with self._client() as client:
            scrapes = await self._poll(client, self.clock.now())
        for s in scrapes:
            self.publish(s)
        return scrapes

    async def backfill(
        self, window: float, *, step: float | None = None, histograms: bool = False
    ) -> list[Scrape]:
        """The last ``window`` session seconds from ``/api/v1/query_range``, as Scrapes in time order
        (not published: the caller decides where they go). Scalars only unless ``histograms``.
        ``step`` defaults to the larger of the interval and window/300. Raises PrometheusError."""
        wall_window = self.clock.wall(window)
        wall_step = self.clock.wall(step) if step else max(self.clock.wall(self.interval), wall_window / 300)
        wall_step = max(wall_step, wall_window / 10_000)  # Prometheus refuses more than 11,000 points
        end = time.time()
        start = end - wall_window
        expr = series_expr(self.adapter, self.selector, histograms=histograms)
        async with self._client() as client:
            series = await self._query(client, "query_range", expr, start=start, end=end, step=wall_step)
            by_inst = self._group_points(series)
            health: dict[str, dict[float, float]] = {}
            if by_inst:
                up = await self._query(
                    client,
                    "query_range",
                    "up{instance=~" + _quote("|".join(re.escape(i) for i in sorted(by_inst))) + "}",
                    start=start,
                    end=end,
                    step=wall_step,
                )
                for s in up:
                    health.setdefault(s.labels.get("instance", ""), {}).update(
                        (ts, _float_or(v, 0.0)) for ts, v in s.points
                    )
        out: list[Scrape] = []
        for inst, at in by_inst.items():
            eng = self._engine(inst, at)
            for ts in sorted(set(at) | set(health.get(inst, {}))):
                t = self.clock.session(ts - self.clock.started_at)
                if health.get(inst, {}).get(ts, 1.0) == 0.0 or ts not in at:
                    out.append(self._down(eng, t, 0.0, "down in Prometheus at that time (up == 0)"))
                    continue
                parsed = build_scrape(
                    at[ts],
                    adapter_for(eng.kind),
                    t=t,
                    previous=eng.last_ok,
                    engine_id=inst,
                    series_cap=self.series_cap,
                )
                eng.last_ok = parsed.scrape
                out.append(parsed.scrape)
        out.sort(key=lambda s: (s.t, s.engine_id))
        return out

    # -- one poll

    def _client(self) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
        if self.client is not None:
            return contextlib.nullcontext(self.client)
        import httpx  # here, not at import: `import httpx` pulls in rich (its CLI)

        return httpx.AsyncClient(timeout=self.timeout, follow_redirects=True)

    async def _poll(self, client: httpx.AsyncClient, started: float) -> list[Scrape]:
        self.polls += 1
        at = time.time()
        try:
            series = await self._query(client, "query", self.expr, time=at)
            by_inst = self._group_points(series)
            for inst, found in by_inst.items():
                self._engine(inst, found)
            if self.engines:
                self._health(await self._query(client, "query", _health_expr(self.engines), time=at))
        except PrometheusError as e:
            t = self.clock.now()
            self._failed(t, str(e))
            return [failed_scrape(t, t - started, str(e), engine_id=i) for i in self.engines]
        t = self.clock.now()
        self._streak.ok(t, f"{self.shown}: Prometheus answers again after {{n}} failed poll(s)")
        out = []
        for inst, eng in self.engines.items():
            points = by_inst.get(inst)
            if eng.up == 0.0:
                out.append(self._down(eng, t, t - started, "down in Prometheus (up == 0): not scraped"))
                continue
            if not points:
                why = "no series any more (target gone, or its series went stale)"
                out.append(self._down(eng, t, t - started, why))
                continue
            raw = [x for samples in points.values() for x in samples]
            parsed = build_scrape(
                raw,
                adapter_for(eng.kind),
                t=t,
                latency_s=t - started,
                previous=eng.last_ok,
                engine_id=inst,
                series_cap=self.series_cap,
            )
            scrape = parsed.scrape
            if self._is_stale(eng, at):
                scrape = _replace_stale(scrape)
            self._problem_log.report(t, inst, parsed.problems)
            if eng.down_logged:
                eng.down_logged = False
                self._log(t, "info", f"{inst}: up again in Prometheus")
            if scrape.counter_reset:
                self._log(t, "warning", f"{inst}: counters went backwards (did the engine restart?)")
            eng.last_ok = scrape
            out.append(scrape)
        return out

    async def _query(self, client: httpx.AsyncClient, api: str, expr: str, **params: float) -> list[_Series]:
        import httpx

        where = f"{self.shown}/api/v1/{api}"
        form = {"query": expr, **{k: f"{v:.3f}" for k, v in params.items()}}
        body = bytearray()
        try:
            async with asyncio.timeout(self.timeout):
                async with client.stream(
                    "POST", f"{self.url}/api/v1/{api}", data=form, headers=self._headers
                ) as resp:
                    status = resp.status_code
                    async for chunk in resp.aiter_bytes():
                        body += chunk
                        if len(body) > self.max_bytes:
                            raise PrometheusError(
                                f"{where}: answer larger than {self.max_bytes / 2**20:g} MiB "
                                "(narrow --prometheus-selector)"
                            )
        except TimeoutError:
            raise PrometheusError(f"{where}: no answer within {self.timeout:g} s") from None
        except httpx.HTTPError as e:
            detail = str(e).strip() or type(e).__name__
            raise PrometheusError(
                f"{self.shown}: cannot reach Prometheus ({detail}): check the --prometheus URL"
            ) from None
        if status in (401, 403):
            raise PrometheusError(f"{where}: HTTP {status}: Prometheus wants credentials (pass --api-key)")
        if status == 404:
            raise PrometheusError(
                f"{where}: 404: not a Prometheus API (give the server's base URL, e.g. http://127.0.0.1:9090)"
            )
        if status not in (200, 400, 422, 503):
            raise PrometheusError(f"{where}: HTTP {status}")
        try:
            # off the event loop: a 64-engine answer with histograms is ~100 ms of parsing, and the load
            # generator may share this loop (its sends would wait for it)
            series, problems = await asyncio.to_thread(
                parse_promql, bytes(body), where, "vector" if api == "query" else "matrix"
            )
        except PrometheusError as e:
            if status in (400, 422) and self.selector:
                raise PrometheusError(f"{e} (check --prometheus-selector {self.selector!r})") from None
            raise
        self._problem_log.report(self.clock.now(), self.shown, problems)
        return series

    def _group_points(self, series: list[_Series]) -> dict[str, dict[float, list[RawSample]]]:
        """instance -> time -> decoded samples (values that are not numbers cost that sample)."""
        out: dict[str, dict[float, list[RawSample]]] = {}
        bad: list[Problem] = []
        for s in series:
            m = s.labels
            inst = m.get("instance") or m.get("job") or "(no instance)"
            name = m.get("__name__", "")
            labels = {k: v for k, v in m.items() if k not in _NOT_LABELS}
            if "job" in m:
                self._jobs.setdefault(inst, m["job"])
            at = out.setdefault(inst, {})
            for ts, text in s.points:
                try:
                    v = parse_value(text)
                except ValueError:
                    bad.append(Problem(_show(m), f"value {text[:40]!r} is not a number"))
                    continue
                at.setdefault(ts, []).append((name, labels, v))
        self._problem_log.report(self.clock.now(), self.shown, bad)
        return out

    def _engine(self, inst: str, points: dict[float, list[RawSample]]) -> _Engine:
        names = {n for raw in points.values() for n, _, _ in raw}
        eng = self.engines.get(inst)
        if eng is None:
            eng = self.engines[inst] = _Engine(inst, job=self._jobs.get(inst, ""), kind=_kind_of(names))
            t = self.clock.now()
            job = f", job {eng.job}" if eng.job else ""
            self._log(t, "info", f"{self.shown}: found engine {inst} ({eng.kind}{job})")
            if self.on_engine is not None:
                self.on_engine(self._info(eng))
        elif eng.kind == "unknown":
            eng.kind = _kind_of(names)
        return eng

    def _health(self, series: list[_Series]) -> None:
        ups: dict[str, float] = {}
        for s in series:
            eng = self.engines.get(s.labels.get("instance", ""))
            if eng is None or not s.points:
                continue
            value = _float_or(s.points[-1][1], None)
            if value is None:
                continue
            if _TS_LABEL in s.labels:
                if eng.up_ts is not None and value > eng.up_ts:
                    eng.gaps = (*eng.gaps[-7:], value - eng.up_ts)
                eng.up_ts = max(value, eng.up_ts or value)
            elif not eng.job or s.labels.get("job", eng.job) == eng.job:
                ups[eng.instance] = max(value, ups.get(eng.instance, 0.0))
        for inst, eng in self.engines.items():
            eng.up = ups.get(inst)  # None: no `up` series (the target is gone from Prometheus's config)

    def _is_stale(self, eng: _Engine, now_unix: float) -> bool:
        if eng.up_ts is None:
            return False
        limit = self.stale_after
        if limit is None:
            limit = 3 * sorted(eng.gaps)[len(eng.gaps) // 2] if eng.gaps else 60.0
            limit = max(limit, 2 * self.clock.wall(self.interval))
        return now_unix - eng.up_ts > limit

    def _down(self, eng: _Engine, t: float, latency: float, why: str) -> Scrape:
        if not eng.down_logged:
            eng.down_logged = True
            self._log(t, "warning", f"{eng.instance}: {why} (read through {self.shown})")
        return failed_scrape(t, latency, f"{eng.instance}: {why}", engine_id=eng.instance, stale=True)

    def _info(self, eng: _Engine) -> EngineInfo:
        return EngineInfo(id=eng.instance, kind=eng.kind, source="prometheus")

    # -- logs

    def _failed(self, t: float, error: str) -> None:
        self._streak.failed(t, "Prometheus polls", error)

    def _log(self, t: float, level: str, text: str) -> None:
        self.publish(LogEvent(t, "scrape", level, text))


def _float_or(text: str, default: Any) -> Any:
    try:
        return parse_value(text)
    except ValueError:
        return default


def _replace_stale(s: Scrape) -> Scrape:
    import dataclasses

    return dataclasses.replace(s, stale=True)
