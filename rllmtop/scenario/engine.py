"""The ``[engine]`` table: who serves the load (one engine or a fleet), and with which settings."""

from __future__ import annotations

from dataclasses import fields
from urllib.parse import urlsplit

from rllmtop.scenario.limits import (
    MAX_ENGINES,
    MAX_INT,
    MAX_NAME_CHARS,
    MAX_RUN_SECONDS,
    MAX_STRING_CHARS,
    MAX_WAIT_SECONDS,
)
from rllmtop.scenario.messages import Ctx, key_path
from rllmtop.scenario.schema import (
    BALANCE_POLICIES,
    ENGINE_KINDS,
    FAULT_KEYS,
    KV_CACHE_DTYPES,
    REASONING_FIELDS,
    SPECULATIVE_METHODS,
    EngineEndpoint,
    EngineSpec,
    PrometheusSpec,
    SpeculativeConfig,
)
from rllmtop.scenario.tables import REQUIRED, Table

__all__ = ["ENGINE_TABLE_KEYS", "build_engine", "check_prometheus_selector", "check_url", "url_value"]

# the [engine] table's keys are EngineSpec's fields, plus `urls` (a short form of `endpoints`)
ENGINE_TABLE_KEYS = (*(f.name for f in fields(EngineSpec)), "urls")
_SIM_ONLY = ("profile", "speed", "reasoning_field", "faults", "replicas")
_FLEET = ("endpoints", "urls", "balance", "prometheus")
_LAUNCH_ONLY = tuple(
    k for k in ENGINE_TABLE_KEYS if k not in ("kind", "url", "metrics_url", *_SIM_ONLY, *_FLEET)
)
_ENDPOINT_KEYS = tuple(f.name for f in fields(EngineEndpoint))
_PROMETHEUS_KEYS = tuple(f.name for f in fields(PrometheusSpec))
_URL_HINT = "http://HOST:PORT or https://HOST[:PORT][/prefix]"


def url_value(ctx: Ctx, path: str, v: object) -> str:
    """``v`` as an http(s) URL without its trailing ``/``; the error names ``path``."""
    if not isinstance(v, str):
        ctx.fail(path, v, "must be a URL string", _URL_HINT)
    ok = len(v) <= MAX_STRING_CHARS and v.isprintable() and " " not in v
    if ok:
        try:
            parts = urlsplit(v)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            _ = parts.port
        except ValueError:
            ok = False
    if not ok:
        ctx.fail(path, v, "not an http(s) URL", _URL_HINT)
    return v.rstrip("/")


def check_url(t: Table, key: str) -> str | None:
    """The http(s) URL at ``key`` of ``t`` (trailing ``/`` removed), None when absent."""
    if not t.has(key):
        return None
    return url_value(t.ctx, t.p(key), t.get(key))


def check_prometheus_selector(text: str) -> str | None:
    """None when ``text`` is a label selector ``{name="value", name=~"re", ...}`` (operators ``=``,
    ``!=``, ``=~``, ``!~``; values in double or single quotes with backslash escapes), else what is wrong."""
    s = text.strip()
    if not (s.startswith("{") and s.endswith("}")):
        return "must be enclosed in { }"
    i, n = 1, len(s) - 1
    matchers = 0
    while True:
        while i < n and s[i].isspace():
            i += 1
        if i >= n:
            break
        j = i
        if not (s[j].isalpha() or s[j] == "_"):
            return f"expected a label name at character {i + 1}"
        while j < n and (s[j].isalnum() or s[j] == "_"):
            j += 1
        i = j
        while i < n and s[i].isspace():
            i += 1
        op = next((o for o in ("=~", "!~", "!=", "=") if s.startswith(o, i)), None)
        if op is None:
            return f"expected =, !=, =~ or !~ at character {i + 1}"
        i += len(op)
        while i < n and s[i].isspace():
            i += 1
        if i >= n or s[i] not in "\"'":
            return f"expected a quoted value at character {i + 1}"
        q = s[i]
        i += 1
        while i < n and s[i] != q:
            i += 2 if s[i] == "\\" else 1
        if i >= n:
            return "a quoted value is not closed"
        i += 1
        matchers += 1
        while i < n and s[i].isspace():
            i += 1
        if i < n:
            if s[i] != ",":
                return f"expected , or }} at character {i + 1}"
            i += 1
    if not matchers:
        return "has no label matcher"
    return None


def _endpoints(ctx: Ctx, t: Table) -> tuple[EngineEndpoint, ...]:
    if t.has("endpoints") and t.has("urls"):
        t.fail("urls", "give either endpoints or urls, not both", "endpoints = [{url = ...}] or urls = [...]")
    key = "urls" if t.has("urls") else "endpoints"
    if not t.has(key):
        return ()
    v = t.get(key)
    example = 'urls = ["http://a:8000", "http://b:8000"] or [[engine.endpoints]] url = "http://a:8000"'
    if not isinstance(v, list) or not v:
        t.fail(key, "must be a non-empty list", example)
    if len(v) > MAX_ENGINES:
        t.fail(key, f"{len(v)} engines", f"at most {MAX_ENGINES} engines (MAX_ENGINES)")
    out: list[EngineEndpoint] = []
    seen_url: dict[str, int] = {}
    seen_name: dict[str, int] = {}
    for i, item in enumerate(v):
        path = key_path(t.p(key), i)
        if isinstance(item, str) or key == "urls":
            ep = EngineEndpoint(url=url_value(ctx, path, item))
        else:
            e = Table(ctx, item, path, _ENDPOINT_KEYS, what="a table or a URL string")
            if not e.has("url"):
                ctx.missing(f"{path}.url", 'url = "http://HOST:PORT" (the engine\'s base URL)')
            name = e.line("name", None, max_len=MAX_NAME_CHARS)
            ep = EngineEndpoint(
                url=url_value(ctx, e.p("url"), e.get("url")),
                metrics_url=check_url(e, "metrics_url"),
                gpu_metrics_url=check_url(e, "gpu_metrics_url"),
                name=name,
            )
            if name is not None:
                if name in seen_name:
                    e.fail("name", f"duplicate: engine {seen_name[name]} has the same name", "a unique name")
                seen_name[name] = i
        if ep.url in seen_url:
            ctx.fail(
                path, ep.url, f"duplicate: entry {seen_url[ep.url]} has the same URL", "each engine once"
            )
        seen_url[ep.url] = i
        out.append(ep)
    return tuple(out)


def _prometheus(ctx: Ctx, t: Table) -> PrometheusSpec | None:
    p = t.table("prometheus", _PROMETHEUS_KEYS, what='a table: url = "http://HOST:9090", selector = ...')
    if p is None:
        return None
    if not p.has("url"):
        ctx.missing("engine.prometheus.url", 'url = "http://HOST:9090" (the Prometheus server)')
    url = url_value(ctx, p.p("url"), p.get("url"))
    selector = p.line("selector", "") or ""
    if selector:
        problem = check_prometheus_selector(selector)
        if problem is not None:
            p.fail(
                "selector",
                f"not a label selector: {problem}",
                '{job="vllm"} or {job="vllm", instance=~"gpu-.*"}',
            )
    return PrometheusSpec(
        url=url,
        selector=selector.strip(),
        interval=p.number("interval", 1.0, gt=0, le=3600),
        backfill=p.number("backfill", 0.0, ge=0, le=MAX_WAIT_SECONDS),
    )


def _faults(ctx: Ctx, raw: object) -> dict[str, float]:
    t = Table(ctx, raw, "engine.faults", FAULT_KEYS)
    out: dict[str, float] = {}
    for k in FAULT_KEYS:
        if not t.has(k):
            continue
        if k.endswith("_rate"):
            out[k] = t.number(k, 0.0, ge=0, le=1)
        elif k == "exit_after":
            out[k] = t.number(k, 0.0, gt=0, le=MAX_RUN_SECONDS)
        else:
            out[k] = t.number(k, 0.0, gt=0, le=MAX_WAIT_SECONDS)
    return out


def _speculative(ctx: Ctx, t: Table, kind: str) -> SpeculativeConfig | None:
    raw = t.get("speculative")
    if raw is None or raw is False:
        return None
    s = Table(
        ctx,
        raw,
        "engine.speculative",
        ("method", "num_speculative_tokens", "draft_model", "acceptance_rate"),
        what="a table (or false)",
    )
    spec = SpeculativeConfig(
        method=s.string("method", REQUIRED, choices=SPECULATIVE_METHODS),
        num_speculative_tokens=s.integer("num_speculative_tokens", REQUIRED, ge=1, le=64),
        draft_model=s.line("draft_model", None),
        acceptance_rate=s.number_opt("acceptance_rate", ge=0, le=1),
    )
    if spec.method == "draft_model" and spec.draft_model is None and kind != "sim":
        ctx.missing("engine.speculative.draft_model", 'draft_model = "org/small-model"')
    return spec


def _quantization(t: Table) -> str | None:
    """``"none"``, ``"off"`` or ``false`` mean unquantized weights (the off value in a matrix)."""
    q = t.get("quantization")
    if q is False or (isinstance(q, str) and q.strip().lower() in ("none", "off")):
        return None
    return t.line("quantization", None)


def build_engine(ctx: Ctx, raw: object) -> EngineSpec:
    t = Table(ctx, raw, "engine", ENGINE_TABLE_KEYS)
    kind = t.string("kind", "sim", choices=ENGINE_KINDS)
    if kind != "sim":
        for k in _SIM_ONLY:
            if t.has(k):
                t.fail(
                    k,
                    f"only applies to the simulator, but engine.kind = {kind!r}",
                    "remove it, or kind = 'sim'",
                )
    if kind == "url":
        for k in _LAUNCH_ONLY:
            if t.has(k):
                t.fail(
                    k,
                    "only applies when rllmtop launches the engine (kind = 'sim', 'vllm' or 'sglang')",
                    "remove it: an attached server keeps its own settings",
                )
    else:
        for k in ("endpoints", "urls"):
            if t.has(k):
                t.fail(
                    k,
                    f"lists engines to attach to, but engine.kind = {kind!r} launches one",
                    "kind = 'url' to watch a fleet; replicas = N (simulator) to launch several",
                )
    url = check_url(t, "url")
    if kind != "url" and url is not None:
        t.fail("url", f"only used with kind = 'url' (engine.kind = {kind!r})", "remove it, or kind = 'url'")
    metrics_url = check_url(t, "metrics_url")
    endpoints = _endpoints(ctx, t)
    replicas = t.integer("replicas", 1, ge=1, le=MAX_ENGINES)
    balance = t.string("balance", "none", choices=BALANCE_POLICIES)
    _check_fleet(t, kind, url, metrics_url, endpoints, replicas, balance)
    model = t.line("model", None)
    if kind in ("vllm", "sglang") and model is None:
        ctx.missing("engine.model", 'model = "org/name" or a local path (what the engine serves)')
    faults = _faults(ctx, t.get("faults")) if t.has("faults") else {}
    port = t.integer_opt("port", ge=0, le=65535)
    if port and replicas > 1:
        t.fail(
            "port",
            f"one port cannot serve {replicas} replicas",
            "leave port out: each replica picks a free port",
        )
    return EngineSpec(
        kind=kind,
        profile=t.line("profile", "rllm-7b") or "rllm-7b",
        speed=t.number("speed", 1.0, gt=0, le=1e6),
        reasoning_field=t.string("reasoning_field", "reasoning", choices=REASONING_FIELDS),
        faults=faults,
        url=url,
        metrics_url=metrics_url,
        model=model,
        served_model_name=t.line("served_model_name", None),
        command=t.strings("command"),
        args=t.strings("args"),
        env=t.str_map("env"),
        host=t.line("host", "127.0.0.1") or "127.0.0.1",
        port=port if port else None,
        startup_timeout=t.number("startup_timeout", 900.0, gt=0, le=MAX_WAIT_SECONDS),
        nice=t.integer("nice", 0, ge=0, le=19),
        quantization=_quantization(t),
        kv_cache_dtype=t.string_opt("kv_cache_dtype", choices=KV_CACHE_DTYPES),
        prefix_caching=t.flag_opt("prefix_caching"),
        speculative=_speculative(ctx, t, kind),
        max_num_seqs=t.integer_opt("max_num_seqs", ge=1, le=MAX_INT),
        max_num_batched_tokens=t.integer_opt("max_num_batched_tokens", ge=1, le=MAX_INT),
        gpu_memory_utilization=t.number_opt("gpu_memory_utilization", gt=0, le=1),
        max_model_len=t.integer_opt("max_model_len", ge=1, le=MAX_INT),
        num_gpu_blocks_override=t.integer_opt("num_gpu_blocks_override", ge=1, le=MAX_INT),
        reasoning_parser=t.line("reasoning_parser", None),
        endpoints=endpoints,
        replicas=replicas,
        balance=balance,
        prometheus=_prometheus(ctx, t),
    )


def _check_fleet(
    t: Table,
    kind: str,
    url: str | None,
    metrics_url: str | None,
    endpoints: tuple[EngineEndpoint, ...],
    replicas: int,
    balance: str,
) -> None:
    """Where the load goes must be unambiguous: one URL (an engine, a router) or balancing over engines."""
    where = "urls" if t.has("urls") else "endpoints"
    if kind == "url":
        if url is None and not endpoints:
            t.ctx.missing(
                "engine.url", 'url = "http://HOST:PORT" (the server\'s base URL), or endpoints / urls'
            )
        if endpoints and metrics_url is not None:
            t.fail(
                "metrics_url",
                "with a list of engines, each has its own",
                f"metrics_url inside {where} entries",
            )
    if balance == "none":
        if kind == "url" and url is None and len(endpoints) > 1:
            t.ctx.error(
                f"engine.{where} lists {len(endpoints)} engines but engine.balance = 'none' and no engine.url: "
                "nowhere to send the load",
                "set url = the router in front of them, or balance = 'round_robin' / 'least_in_flight'",
            )
        if replicas > 1:
            t.fail(
                "replicas",
                "with balance = 'none' every request would go to the first replica",
                "balance = 'round_robin' or 'least_in_flight' with replicas > 1",
            )
        return
    if len(endpoints) < 2 and replicas < 2:
        t.fail(
            "balance",
            "balancing needs several engines",
            "engine.endpoints / urls with 2 or more engines, or replicas >= 2 (simulator)",
        )
    if url is not None:
        t.fail(
            "url",
            f"with balance = {balance!r} the load goes to the engines, not to url",
            "remove url, or balance = 'none' to send everything to url (a router)",
        )
