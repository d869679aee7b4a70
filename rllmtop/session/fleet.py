"""Which engines a session watches and where its load goes: the one place this is decided.

A fleet comes from the engine spec (:class:`~rllmtop.scenario.EngineSpec`):

* ``kind`` "sim" (or "vllm"/"sglang"): ``replicas`` engines launched, each its own process group and port;
  the load is balanced over them (``balance``), or goes to the one engine.
* ``kind`` "url" with ``endpoints``: those engines, each scraped at its own /metrics; the load goes to
  ``url`` (a router or gateway in front of them) or is balanced over them.
* ``kind`` "url" with ``url`` alone: one engine; or, when ``url`` is a router that lists its workers
  (vllm-router and SGLang's router answer ``GET /list_workers``), the workers are watched and the load goes
  to the router.
* ``prometheus``: engines discovered from the Prometheus series (ids = their ``instance`` label); the load
  goes to ``url`` or is balanced over ``endpoints`` (ids ``host:port``, Prometheus's default instance).

Engine ids (``EngineInfo.id``, ``Scrape.engine_id``, ``RequestRecord.engine``) are base URLs without
credentials or trailing slash, or Prometheus instances. A router's own /metrics is never read as the
fleet's: vllm-router 0.1.17 proxies ``/metrics`` to one worker per request, round robin, so successive
polls flip between workers' series (and a down worker's turn answers 502).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from rllmtop.errors import UserError
from rllmtop.redact import redact_url
from rllmtop.scenario import BALANCE_POLICIES, MAX_ENGINES, EngineSpec

__all__ = [
    "Member",
    "check_fleet",
    "engine_id",
    "fleet_kind",
    "instance_of",
    "members_of",
    "router_workers",
]


@dataclass(frozen=True)
class Member:
    """One engine of the fleet to attach to (secrets in URLs as given: never published)."""

    url: str  # base URL serving /v1
    metrics_url: str = ""  # "" : url + "/metrics"
    gpu_metrics_url: str = ""  # a dcgm-exporter /metrics for its GPUs
    name: str = ""  # display name for log lines ("" : its id)


def engine_id(url: str) -> str:
    """The id of the engine at base URL ``url``: normalised (scheme, no ``/v1``, no trailing ``/``) and
    without credentials."""
    from rllmtop.engines.adapters import normalize_base_url

    return redact_url(normalize_base_url(url))


def instance_of(url: str) -> str:
    """``host:port`` of ``url`` (Prometheus's default ``instance`` label for a target it scrapes)."""
    p = urlsplit(url if "://" in url else "http://" + url)
    host = p.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = p.port or (443 if p.scheme == "https" else 80)
    return f"{host}:{port}"


def fleet_kind(kinds: Iterable[str]) -> str:
    """One word for a fleet's engines: their common kind, ``a+b`` for a mixed fleet (sorted), "unknown"
    when no engine said."""
    known = sorted({k for k in kinds if k and k != "unknown"})
    if not known:
        return "unknown"
    return "+".join(known)


def members_of(spec: EngineSpec) -> tuple[Member, ...]:
    """The engines an attach spec names (``endpoints``, else ``url`` as the one engine); empty for a
    Prometheus spec without endpoints."""
    if spec.endpoints:
        return tuple(
            Member(e.url.rstrip("/"), e.metrics_url or "", e.gpu_metrics_url or "", e.name or "")
            for e in spec.endpoints
        )
    if spec.url and spec.prometheus is None:
        return (Member(spec.url.rstrip("/"), spec.metrics_url or ""),)
    return ()


def check_fleet(spec: EngineSpec, *, has_load: bool) -> None:
    """Refuse a spec whose engines or load target are ambiguous (one line naming what, one saying what to
    do). The scenario loader checks the same of a scenario's [engine] table; this covers specs built
    from the command line or in code."""
    balance = spec.balance
    if balance not in BALANCE_POLICIES:
        raise UserError(
            f"balance {balance!r} is not a balancing policy", "use round_robin or least_in_flight"
        )
    n = len(spec.endpoints)
    if n > MAX_ENGINES or spec.replicas > MAX_ENGINES:
        raise UserError(
            f"{max(n, spec.replicas)} engines: more than rllmtop watches at once ({MAX_ENGINES})",
            "watch a larger fleet through Prometheus (--prometheus URL)",
        )
    if spec.replicas < 1:
        raise UserError(f"replicas = {spec.replicas}", "give replicas = 1 or more")
    if spec.kind != "url":
        if spec.endpoints or spec.prometheus is not None:
            raise UserError(
                f"engine.kind = {spec.kind!r} launches engines; endpoints and prometheus are for attaching",
                "kind = 'url' to watch running engines; replicas = N (simulator) to launch several",
            )
        if spec.replicas > 1 and balance == "none":
            raise UserError(
                f"{spec.replicas} replicas but no balancing: every request would go to the first",
                "balance = 'round_robin' or 'least_in_flight' (--balance) with replicas > 1",
            )
        if spec.replicas == 1 and balance != "none":
            raise UserError(f"balance = {balance!r} with one engine", "replicas = 2 or more to balance")
        return
    if spec.prometheus is None and not spec.url and not n:
        raise UserError("no engine URL to attach to", "pass a URL: rllmtop attach http://HOST:PORT")
    if balance != "none":
        if n < 2:
            raise UserError(
                f"balance = {balance!r} needs two or more engine URLs ({n} given)",
                "list the engines (rllmtop attach URL1 URL2 --balance ...), or drop --balance",
            )
        if spec.url:
            raise UserError(
                f"balance = {balance!r} and a load URL ({redact_url(spec.url)}): the load goes one way",
                "drop --load-url to balance over the engines, or drop --balance to send it to the router",
            )
        return
    if has_load and not spec.url and (n > 1 or (spec.prometheus is not None and n == 0)):
        what = f"{n} engines" if n else "engines read from Prometheus"
        raise UserError(
            f"{what} and no load target: nowhere to send the scenario's load",
            "--load-url ROUTER (the router or gateway in front of them), or --balance round_robin / "
            "least_in_flight with the engine URLs",
        )


async def router_workers(url: str, api_key: str | None = None, timeout: float = 5.0) -> tuple[str, ...]:
    """The worker URLs of the router at ``url`` (vllm-router, SGLang's router: ``GET /list_workers``
    answering ``{"urls": [...]}``; newer SGLang routers ``{"workers": [{"url": ...}]}``), or () when
    ``url`` is not a router (an engine answers 404) or does not answer."""
    import httpx

    from rllmtop.engines.adapters import normalize_base_url

    base = normalize_base_url(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with httpx.AsyncClient(timeout=timeout, headers=headers, trust_env=False) as client:
            r = await client.get(base + "/list_workers")
            if r.status_code != 200:
                return ()
            body = r.json()
    except (httpx.HTTPError, ValueError, UnicodeDecodeError):
        return ()
    return _worker_urls(body)


def _worker_urls(body: Any) -> tuple[str, ...]:
    if not isinstance(body, dict):
        return ()
    raw: Sequence[Any] = ()
    if isinstance(body.get("urls"), list):
        raw = body["urls"]
    elif isinstance(body.get("workers"), list):
        raw = [w.get("url") if isinstance(w, dict) else w for w in body["workers"]]
    out: list[str] = []
    for u in raw:
        if not isinstance(u, str) or not u.strip() or len(u) > 2048:
            continue
        try:
            p = urlsplit(u.strip() if "://" in u else "http://" + u.strip())
            _ = p.port
        except ValueError:
            continue
        if p.scheme in ("http", "https") and p.hostname:
            v = u.strip().rstrip("/")
            if v not in out:
                out.append(v)
    return tuple(out[:MAX_ENGINES])
