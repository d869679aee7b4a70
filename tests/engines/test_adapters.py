"""Engine adapters: name maps and probing real HTTP servers on 127.0.0.1 that answer like each engine."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from rllmtop.engines.adapters import ENGINE_KINDS, adapter_for, normalize_base_url, probe
from rllmtop.errors import UserError
from rllmtop.events import NEUTRAL_METRICS, MetricKind


@asynccontextmanager
async def serve(routes: dict[str, Callable[[web.Request], Any]]) -> AsyncIterator[str]:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def js(body: Any, status: int = 200) -> Callable[[web.Request], Any]:
    async def h(request: web.Request) -> web.Response:
        return web.json_response(body, status=status)

    return h


def models(owner: str, *names: str) -> Callable[[web.Request], Any]:
    return js({"object": "list", "data": [{"id": n, "object": "model", "owned_by": owner} for n in names]})


def test_every_adapter_maps_to_neutral_names_of_the_right_kind() -> None:
    for kind in ENGINE_KINDS:
        a = adapter_for(kind)
        assert a.kind == kind
        for n in a.scalars:
            assert NEUTRAL_METRICS[n] is not MetricKind.HISTOGRAM
        for n in a.histograms:
            assert NEUTRAL_METRICS[n] is MetricKind.HISTOGRAM
    assert adapter_for("vllm").scalars["kv_cache_usage"] == (
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
    )
    assert adapter_for("sim").scalars["sim_lag_seconds"] == ("rllmtop_sim_lag_seconds",)
    assert "sim_lag_seconds" not in adapter_for("vllm").scalars
    assert adapter_for("sglang").keep == {"tp_rank": "0"}
    assert adapter_for("VLLM") is adapter_for("vllm")


def test_unknown_kind_is_a_user_error() -> None:
    with pytest.raises(UserError) as e:
        adapter_for("tgi")
    assert "tgi" in e.value.what and "vllm" in e.value.hint


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000"),
        ("127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("https://user:secret@127.0.0.1:8443/v1", "https://127.0.0.1:8443"),
        ("http://127.0.0.1:8000/prefix", "http://127.0.0.1:8000/prefix"),
    ],
)
def test_normalize_base_url(url: str, base: str) -> None:
    assert normalize_base_url(url) == base


def test_normalize_rejects_non_http() -> None:
    with pytest.raises(UserError, match="not an http"):
        normalize_base_url("ftp://127.0.0.1/")


async def test_probe_vllm() -> None:
    async with serve(
        {"/version": js({"version": "0.32.0"}), "/v1/models": models("vllm", "tiny-rllm")}
    ) as url:
        ident = await probe(url + "/v1")
    assert ident.kind == "vllm" and ident.version == "0.32.0" and ident.models == ("tiny-rllm",)
    assert ident.base_url == url and ident.metrics_url == url + "/metrics" and ident.warnings == ()


async def test_probe_simulator_says_what_it_is() -> None:
    async with serve(
        {
            "/version": js({"version": "0.1.0", "engine": "rllmtop simulator"}),
            "/v1/models": models("vllm", "rllm-7b"),
        }
    ) as url:
        ident = await probe(url)
    assert ident.kind == "sim" and ident.version == "0.1.0" and ident.models == ("rllm-7b",)


async def test_probe_sglang_from_server_info() -> None:
    info = {"model_path": "Qwen/Qwen3-8B", "tp_size": 2, "version": "0.5.23"}
    async with serve({"/server_info": js(info), "/v1/models": models("sglang", "Qwen/Qwen3-8B")}) as url:
        ident = await probe(url)
    assert ident.kind == "sglang" and ident.version == "0.5.23" and ident.models == ("Qwen/Qwen3-8B",)


async def test_probe_old_sglang_uses_get_server_info() -> None:
    info = {"model_path": "m", "version": "0.4.9"}
    async with serve({"/get_server_info": js(info), "/v1/models": models("sglang", "m")}) as url:
        ident = await probe(url)
    assert ident.kind == "sglang" and ident.version == "0.4.9"


async def test_probe_sends_the_key_and_warns_when_it_is_needed() -> None:
    seen: list[str | None] = []

    async def guarded(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != "Bearer k-123":
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({"data": [{"id": "m", "owned_by": "vllm"}]})

    async with serve({"/version": js({"version": "0.11.0"}), "/v1/models": guarded}) as url:
        ok = await probe(url, api_key="k-123")
        denied = await probe(url)
    assert ok.models == ("m",) and ok.warnings == ()
    assert "Bearer k-123" in seen
    assert denied.kind == "vllm" and denied.models == ()
    assert len(denied.warnings) == 1 and "401" in denied.warnings[0] and "--api-key" in denied.warnings[0]
    assert "k-123" not in " ".join(denied.warnings)


async def test_probe_unknown_server_reads_both_vocabularies() -> None:
    async with serve({"/": js({})}) as url:
        ident = await probe(url)
    assert ident.kind == "unknown" and ident.models == ()
    assert any("vLLM or SGLang" in w for w in ident.warnings)


async def test_probe_unreachable_url_is_a_user_error() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError) as e:
        await probe(f"http://127.0.0.1:{port}", timeout=2.0)
    assert f"http://127.0.0.1:{port}" in e.value.what and "cannot reach" in e.value.what
    assert "running" in e.value.hint
