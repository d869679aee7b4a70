"""Per-engine knowledge on the client side: metric names and how to recognise a running server.

Each :class:`EngineAdapter` maps an engine's Prometheus names to the engine-neutral names of
:data:`rllmtop.events.NEUTRAL_METRICS`; :mod:`rllmtop.metrics.prom` applies it. :func:`probe` asks a
running server what it is (vLLM, SGLang or the rllmtop simulator), its version and models.

Engines covered: vLLM 0.11 to 0.33 (``kv_cache_usage_perc`` with the ``gpu_cache_usage_perc`` fallback of
older versions; KV capacity ``kv_total_blocks`` from the ``num_gpu_blocks`` label of
``vllm:cache_config_info``), SGLang 0.5 (only ``tp_rank="0"`` series are kept; ``dp_rank`` becomes the
neutral ``engine`` label; capacity is ``kv_total_tokens``), and the embedded simulator (vLLM names plus
``rllmtop_sim_lag_seconds``, ``rllmtop_sim_drift_seconds_total`` and ``rllmtop_sim_speed``).

GPU telemetry: :data:`GPU_ADAPTER` reads NVIDIA dcgm-exporter's ``/metrics`` (``DCGM_FI_DEV_GPU_UTIL`` %,
``DCGM_FI_DEV_FB_USED`` / ``_FB_FREE`` MiB, ``DCGM_FI_DEV_POWER_USAGE`` W, ``DCGM_FI_DEV_GPU_TEMP`` C,
``DCGM_FI_DEV_SM_CLOCK`` MHz). It keeps only the ``gpu`` label (the GPU index); ``UUID``, ``device``,
``modelName``, ``Hostname``, ``pci_bus_id``, ``DCGM_FI_DRIVER_VERSION`` and Kubernetes' ``pod`` /
``namespace`` / ``container`` are dropped (an engine's GPUs are told apart by index). Written from
dcgm-exporter's documented format; not exercised against a real GPU here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from rllmtop.errors import UserError
from rllmtop.events import NEUTRAL_METRICS, MetricKind, MetricSample

if TYPE_CHECKING:
    import httpx

__all__ = [
    "ENGINE_KINDS",
    "FLEET_ADAPTER",
    "GPU_ADAPTER",
    "EngineAdapter",
    "EngineIdentity",
    "adapter_for",
    "normalize_base_url",
    "probe",
]

ENGINE_KINDS = ("vllm", "sglang", "sim", "unknown")

Derive = Callable[[dict[str, list[MetricSample]]], None]


@dataclass(frozen=True, slots=True)
class EngineAdapter:
    """How one engine names its metrics.

    ``scalars`` / ``histograms``: neutral name -> wire names in order of preference (the first one the
    engine serves in a scrape wins; later ones are fallbacks for older versions). Scalar wire names are
    *sample* names as they appear on the wire (counters with ``_total``); histogram wire names are family
    names (without ``_bucket``/``_sum``/``_count``). ``info_labels``: neutral name -> (wire name, label)
    pairs whose *label value* is the number (an info gauge such as ``vllm:cache_config_info``); such
    samples keep only ``identity_labels``. ``only_labels``: when set, every other label is dropped.
    """

    kind: str
    scalars: Mapping[str, tuple[str, ...]]
    histograms: Mapping[str, tuple[str, ...]]
    keep: Mapping[str, str] = field(default_factory=dict)  # label -> required value (others dropped)
    rename_labels: Mapping[str, str] = field(default_factory=dict)  # wire label -> neutral label
    drop_labels: frozenset[str] = frozenset()
    derive: Derive | None = None  # fills neutral values computed from other neutral values
    info_labels: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    identity_labels: frozenset[str] = frozenset({"engine", "dp_rank", "tp_rank"})
    only_labels: frozenset[str] | None = None
    metrics_404_hint: str = "check the metrics URL (--metrics-url)"

    def wire_names(self) -> frozenset[str]:
        """Every line name this adapter reads (samples, histogram parts and TYPE/HELP family names)."""
        out: set[str] = set()
        for names in self.scalars.values():
            for n in names:
                out.add(n)
                if n.endswith("_total"):
                    out.add(n[: -len("_total")])  # TYPE/HELP lines may name the family without _total
        for names in self.histograms.values():
            for n in names:
                out.update((n, n + "_bucket", n + "_sum", n + "_count"))
        for sources in self.info_labels.values():
            out.update(w for w, _ in sources)
        return frozenset(out)


_VLLM_SCALARS: dict[str, tuple[str, ...]] = {
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "requests_running": ("vllm:num_requests_running",),
    "requests_waiting": ("vllm:num_requests_waiting",),
    "preemptions_total": ("vllm:num_preemptions_total",),
    "prompt_tokens_total": ("vllm:prompt_tokens_total",),
    "generation_tokens_total": ("vllm:generation_tokens_total",),
    "prefix_cache_queries_total": ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
    "prefix_cache_hits_total": ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
    "request_success_total": ("vllm:request_success_total",),
    "spec_decode_draft_tokens_total": ("vllm:spec_decode_num_draft_tokens_total",),
    "spec_decode_accepted_tokens_total": ("vllm:spec_decode_num_accepted_tokens_total",),
}
_VLLM_HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "ttft_seconds": ("vllm:time_to_first_token_seconds",),
    "itl_seconds": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    "e2e_seconds": ("vllm:e2e_request_latency_seconds",),
    "queue_time_seconds": ("vllm:request_queue_time_seconds",),
}

# SGLang: retraction is its word for preemption; prompt tokens include the cached ones, so cached/prompt
# is the prefix-cache hit ratio, like vLLM's hits/queries (both count tokens).
_SGLANG_SCALARS: dict[str, tuple[str, ...]] = {
    "kv_cache_usage": ("sglang:token_usage",),  # rounded to 2 decimals; replaced by used/total (below)
    "requests_running": ("sglang:num_running_reqs",),
    "requests_waiting": ("sglang:num_queue_reqs",),
    "kv_used_tokens": ("sglang:kv_used_tokens", "sglang:num_used_tokens"),
    "kv_total_tokens": ("sglang:max_total_num_tokens",),
    "cache_hit_rate": ("sglang:cache_hit_rate",),
    "gen_throughput": ("sglang:gen_throughput",),
    "requests_retracted": ("sglang:num_retracted_reqs",),
    "preemptions_total": ("sglang:num_retracted_requests_total",),
    "prompt_tokens_total": ("sglang:prompt_tokens_total",),
    "generation_tokens_total": ("sglang:generation_tokens_total",),
    "prefix_cache_queries_total": ("sglang:prompt_tokens_total",),
    "prefix_cache_hits_total": ("sglang:cached_tokens_total",),
    "request_success_total": ("sglang:num_requests_total",),
}
_SGLANG_HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "ttft_seconds": ("sglang:time_to_first_token_seconds",),
    "itl_seconds": ("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds"),
    "e2e_seconds": ("sglang:e2e_request_latency_seconds",),
    "queue_time_seconds": ("sglang:queue_time_seconds",),
}


def _sglang_kv_usage(values: dict[str, list[MetricSample]]) -> None:
    """Exact KV usage from used/total tokens (``token_usage`` is rounded to 2 decimals)."""
    used = {s.labels: s for s in values.get("kv_used_tokens", ())}
    total = {s.labels: s for s in values.get("kv_total_tokens", ())}
    derived = [
        MetricSample(u.t, "kv_cache_usage", u.value / total[lab].value, lab)
        for lab, u in used.items()
        if lab in total and total[lab].value > 0
    ]
    if derived:
        values["kv_cache_usage"] = derived


def _merged(*maps: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for m in maps:
        for k, v in m.items():
            out[k] = out.get(k, ()) + tuple(n for n in v if n not in out.get(k, ()))
    return out


_VLLM_INFO = {"kv_total_blocks": (("vllm:cache_config_info", "num_gpu_blocks"),)}
_SIM_SCALARS: dict[str, tuple[str, ...]] = {
    "sim_lag_seconds": ("rllmtop_sim_lag_seconds",),
    "sim_drift_seconds": ("rllmtop_sim_drift_seconds_total", "rllmtop_sim_drift_seconds"),
    "sim_speed": ("rllmtop_sim_speed",),
}
_DCGM_SCALARS: dict[str, tuple[str, ...]] = {
    "gpu_util_percent": ("DCGM_FI_DEV_GPU_UTIL",),
    "gpu_fb_used_mib": ("DCGM_FI_DEV_FB_USED",),
    "gpu_fb_free_mib": ("DCGM_FI_DEV_FB_FREE",),
    "gpu_power_watts": ("DCGM_FI_DEV_POWER_USAGE",),
    "gpu_temp_celsius": ("DCGM_FI_DEV_GPU_TEMP",),
    "gpu_sm_clock_mhz": ("DCGM_FI_DEV_SM_CLOCK",),
}

_VLLM = EngineAdapter(
    kind="vllm",
    scalars=_VLLM_SCALARS,
    histograms=_VLLM_HISTOGRAMS,
    info_labels=_VLLM_INFO,
    metrics_404_hint="vLLM serves /metrics unless --disable-log-stats is set; check the URL (--metrics-url)",
)
_SIM = EngineAdapter(
    kind="sim",
    scalars={**_VLLM_SCALARS, **_SIM_SCALARS},
    histograms=_VLLM_HISTOGRAMS,
    info_labels=_VLLM_INFO,
    metrics_404_hint="the simulator serves /metrics at its base URL; check the URL (--metrics-url)",
)
_SGLANG = EngineAdapter(
    kind="sglang",
    scalars=_SGLANG_SCALARS,
    histograms=_SGLANG_HISTOGRAMS,
    keep={"tp_rank": "0"},
    rename_labels={"dp_rank": "engine"},
    drop_labels=frozenset({"tp_rank"}),
    derive=_sglang_kv_usage,
    metrics_404_hint="start SGLang with --enable-metrics (it serves no /metrics without it)",
)
# Unknown servers: try vLLM names first, then SGLang's (the prefixes never collide), and the simulator's.
_UNKNOWN = EngineAdapter(
    kind="unknown",
    scalars=_merged(_VLLM_SCALARS, _SGLANG_SCALARS, _SIM_SCALARS),
    histograms=_merged(_VLLM_HISTOGRAMS, _SGLANG_HISTOGRAMS),
    info_labels=_VLLM_INFO,
    keep={"tp_rank": "0"},
    rename_labels={"dp_rank": "engine"},
    drop_labels=frozenset({"tp_rank"}),
    derive=_sglang_kv_usage,
    metrics_404_hint="check the metrics URL (--metrics-url); SGLang needs --enable-metrics",
)
FLEET_ADAPTER = _UNKNOWN
"""Every engine vocabulary at once: what a Prometheus source asks for when the fleet mixes engines."""

GPU_ADAPTER = EngineAdapter(
    kind="dcgm",
    scalars=_DCGM_SCALARS,
    histograms={},
    only_labels=frozenset({"gpu"}),
    identity_labels=frozenset({"gpu"}),
    metrics_404_hint="dcgm-exporter serves /metrics on port 9400 by default; check --gpu-metrics-url",
)
"""NVIDIA dcgm-exporter's ``/metrics`` (see the module doc): ``adapter_for("dcgm")``."""

_ADAPTERS = {a.kind: a for a in (_VLLM, _SGLANG, _SIM, _UNKNOWN, GPU_ADAPTER)}

for _a in _ADAPTERS.values():  # every mapped name is a neutral one of the right kind (import-time check)
    for _n in _a.scalars:
        assert NEUTRAL_METRICS[_n] is not MetricKind.HISTOGRAM, _n
    for _n in _a.histograms:
        assert NEUTRAL_METRICS[_n] is MetricKind.HISTOGRAM, _n
    for _n in _a.info_labels:
        assert NEUTRAL_METRICS[_n] is MetricKind.GAUGE, _n


def adapter_for(kind: str) -> EngineAdapter:
    """The adapter for ``kind`` ("vllm", "sglang", "sim" or "unknown": vLLM names, then SGLang's; and
    "dcgm" for a dcgm-exporter's GPU telemetry)."""
    try:
        return _ADAPTERS[kind.lower()]
    except KeyError:
        raise UserError(f"unknown engine kind {kind!r}", f"use one of: {', '.join(ENGINE_KINDS)}") from None


# ---------------------------------------------------------------------------------------------- probe


@dataclass(frozen=True, slots=True)
class EngineIdentity:
    """What :func:`probe` learned about a running server."""

    kind: str  # "vllm" | "sglang" | "sim" | "unknown"
    version: str  # "" when the server did not say
    models: tuple[str, ...]  # served model names, as /v1/models lists them
    base_url: str  # normalised (no trailing slash, no /v1)
    metrics_url: str  # best guess: base_url + "/metrics"
    warnings: tuple[str, ...] = ()  # one line each, e.g. "/v1/models answered 401: pass --api-key"
    max_model_len: dict[str, int] | None = None  # per served model: vLLM's /v1/models `max_model_len`,
    # SGLang's /server_info `context_length` (None when the server does not say)


def normalize_base_url(url: str) -> str:
    """``http://h:8000/v1/`` -> ``http://h:8000``; a missing scheme becomes http; userinfo is dropped."""
    u = url.strip()
    if "://" not in u:
        u = "http://" + u
    parts = urlsplit(u)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(
            f"{url!r} is not an http(s) URL", "give the server's base URL, e.g. http://127.0.0.1:8000"
        )
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    netloc = parts.netloc.rsplit("@", 1)[-1]  # never keep user:password@
    return urlunsplit((parts.scheme, netloc, path, "", ""))


async def _get_json(client: httpx.AsyncClient, url: str) -> tuple[int | None, Any, str]:
    """(status, parsed JSON or None, transport error text)."""
    import httpx

    try:
        r = await client.get(url)
    except httpx.HTTPError as e:
        return None, None, f"{type(e).__name__}: {e}".strip().rstrip(":")
    try:
        body = r.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    return r.status_code, body, ""


def _mentions_rllmtop(body: Any) -> bool:
    try:
        return "rllmtop" in json.dumps(body).lower()
    except (TypeError, ValueError):
        return False


async def probe(base_url: str, api_key: str | None = None, timeout: float = 5.0) -> EngineIdentity:
    """Ask a running server what it is: kind, version, models and where its metrics are.

    Uses ``/version`` (vLLM and the simulator, which says it is the rllmtop simulator), ``/v1/models``
    (``owned_by`` is "vllm" or "sglang"), and SGLang's ``/server_info`` (``/get_server_info`` before
    0.5). Raises :class:`UserError` naming the URL when the server cannot be reached at all.
    """
    import httpx  # here, not at import: `import httpx` pulls in rich (its CLI) and the core stays UI-free

    base = normalize_base_url(base_url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=timeout, headers=headers, follow_redirects=True) as client:
        (
            (v_status, v_body, v_err),
            (m_status, m_body, m_err),
            (s_status, s_body, s_err),
        ) = await asyncio.gather(
            _get_json(client, base + "/version"),
            _get_json(client, base + "/v1/models"),
            _get_json(client, base + "/server_info"),
        )
        if v_status is None and m_status is None and s_status is None:
            raise UserError(
                f"cannot reach {base} ({v_err or m_err or s_err})",
                "check that the server is running and the host/port are right "
                "(vLLM listens on 8000 and SGLang on 30000 by default)",
            )
        if s_status == 404 or (s_status is not None and not isinstance(s_body, dict)):
            s_status, s_body, _ = await _get_json(client, base + "/get_server_info")

    warnings: list[str] = []
    models: tuple[str, ...] = ()
    owners: set[str] = set()
    lengths: dict[str, int] = {}
    if m_status in (401, 403):
        warnings.append(
            f"{base}/v1/models answered {m_status}: the server wants an API key "
            "(pass --api-key or set OPENAI_API_KEY)"
        )
    elif m_status == 200 and isinstance(m_body, dict) and isinstance(m_body.get("data"), list):
        models = tuple(str(m["id"]) for m in m_body["data"] if isinstance(m, dict) and "id" in m)
        owners = {str(m.get("owned_by", "")).lower() for m in m_body["data"] if isinstance(m, dict)}
        for m in m_body["data"]:
            n = m.get("max_model_len") if isinstance(m, dict) else None
            if isinstance(n, int) and not isinstance(n, bool) and 0 < n < 1 << 31 and "id" in m:
                lengths[str(m["id"])] = n
    elif m_status is not None:
        warnings.append(f"{base}/v1/models answered {m_status}: no model list")

    version = ""
    kind = "unknown"
    sglang_info = (
        s_status == 200 and isinstance(s_body, dict) and ("model_path" in s_body or "tp_size" in s_body)
    )
    if v_status == 200 and _mentions_rllmtop(v_body):
        kind = "sim"
    elif sglang_info or "sglang" in owners:
        kind = "sglang"
    elif (v_status == 200 and isinstance(v_body, dict) and "version" in v_body) or "vllm" in owners:
        kind = "vllm"
    if kind == "sglang" and isinstance(s_body, dict):
        version = str(s_body.get("version", ""))
    elif isinstance(v_body, dict) and v_status == 200:
        version = str(v_body.get("version", ""))
    if kind == "unknown":
        warnings.append(f"{base} did not say whether it is vLLM or SGLang; reading both metric vocabularies")
    if kind == "sglang" and not lengths and isinstance(s_body, dict):
        n = s_body.get("context_length")
        if isinstance(n, int) and not isinstance(n, bool) and 0 < n < 1 << 31:
            lengths = {m: n for m in models}
    return EngineIdentity(
        kind=kind,
        version=version,
        models=models,
        base_url=base,
        metrics_url=base + "/metrics",
        warnings=tuple(warnings),
        max_model_len=lengths or None,
    )
