"""The HTTP server over real sockets on 127.0.0.1: wire shapes, errors, metrics, determinism."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rllmtop.sim.outputs import RequestFactory
from rllmtop.sim.profiles import EngineOptions, load_profile
from rllmtop.sim.server import SimServer, serve_in_background
from rllmtop.sim.virtual import Arrival, prepare_request

from .conftest import EASY, MCQ, chat_body, options, split_stream, stream_events

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vllm-0.32-cpu"
ISSUE_METRICS = {
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:num_preemptions",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:request_success",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
}


async def test_stream_shape_and_counts(sim: SimServer, client: httpx.AsyncClient) -> None:
    body = chat_body(stream=True, stream_options={"include_usage": True}, seed=3)
    events = await stream_events(client, sim.url + "/v1/chat/completions", body)
    assert events[-1] == "[DONE]"
    first, usage_chunk = events[0], events[-2]
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert set(first) == {"id", "object", "created", "model", "choices", "prompt_token_ids", "prompt_text"}
    assert first["id"].startswith("chatcmpl-") and first["object"] == "chat.completion.chunk"
    assert usage_chunk["choices"] == [] and set(usage_chunk["usage"]) >= {
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "completion_tokens_details",
    }
    s = split_stream(events)
    token_chunks = [d for d in s["deltas"] if "role" not in d["delta"]]
    usage = s["usage"]
    # one token per chunk without speculative decoding; the end of thinking is an empty reasoning delta
    assert len(token_chunks) == usage["completion_tokens"]
    empty = [i for i, d in enumerate(token_chunks) if d["delta"] == {"reasoning": ""}]
    assert len(empty) == 1
    assert empty[0] == usage["completion_tokens_details"]["reasoning_tokens"]
    assert all("reasoning" in d["delta"] for d in token_chunks[: empty[0]])
    assert all(set(d["delta"]) == {"content"} for d in token_chunks[empty[0] + 1 :])
    assert s["finish"] == "stop" and token_chunks[-1]["finish_reason"] == "stop"
    assert "".join(s["content"]).endswith(("\\boxed{73}.", "}."))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert all(ev["id"] == first["id"] for ev in events[:-1])


async def test_stream_matches_the_vllm_fixture_shape(sim: SimServer, client: httpx.AsyncClient) -> None:
    fixture = (Path(__file__).parent / "fixtures" / "vllm-0.32-stream_with_content.txt").read_text()
    ref = [orjson.loads(line[6:]) for line in fixture.splitlines() if line.startswith("data: {")]
    events = await stream_events(
        client,
        sim.url + "/v1/chat/completions",
        chat_body(stream=True, stream_options={"include_usage": True}, max_tokens=64, seed=1),
    )
    ours = [e for e in events if e != "[DONE]"]
    assert set(ours[0]) == set(ref[0]) and set(ours[0]["choices"][0]) == set(ref[0]["choices"][0])
    assert set(ours[1]) == set(ref[1]) and set(ours[1]["choices"][0]) == set(ref[1]["choices"][0])
    assert set(ours[-2]["choices"][0]) == set(ref[-2]["choices"][0])  # finish chunk with stop_reason
    assert set(ours[-1]) == set(ref[-1])
    assert ours[-2]["choices"][0]["finish_reason"] == "length"  # 64 tokens cut the reasoning


async def test_reasoning_content_field_and_inline_think() -> None:
    async with (
        serve_in_background(options(reasoning_field="reasoning_content")) as url,
        httpx.AsyncClient() as c,
    ):
        events = await stream_events(c, url + "/v1/chat/completions", chat_body(stream=True, seed=2))
        s = split_stream(events, "reasoning_content")
        assert s["reasoning"] and s["content"]
        assert not any("reasoning" in d["delta"] for d in s["deltas"])
    async with serve_in_background(options(reasoning_parser="none")) as url, httpx.AsyncClient() as c:
        events = await stream_events(
            c,
            url + "/v1/chat/completions",
            chat_body(stream=True, seed=2, stream_options={"include_usage": True}),
        )
        s = split_stream(events)
        text = "".join(s["content"])
        assert text.startswith("<think>\n") and text.count("</think>") == 1
        assert not s["reasoning"]
        assert "completion_tokens_details" not in s["usage"]
        resp = await c.post(url + "/v1/chat/completions", json=chat_body(seed=2))
        msg = resp.json()["choices"][0]["message"]
        assert msg["content"] == text and "reasoning" not in msg


async def test_thinking_disabled_streams_no_reasoning(sim: SimServer, client: httpx.AsyncClient) -> None:
    body = chat_body(
        stream=True, stream_options={"include_usage": True}, chat_template_kwargs={"enable_thinking": False}
    )
    s = split_stream(await stream_events(client, sim.url + "/v1/chat/completions", body))
    assert not s["reasoning"] and s["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    assert s["usage"]["completion_tokens"] < 2000


async def test_non_streaming_chat(sim: SimServer, client: httpx.AsyncClient) -> None:
    resp = await client.post(sim.url + "/v1/chat/completions", json=chat_body(content=MCQ, seed=5))
    assert resp.status_code == 200
    data = resp.json()
    assert data["object"] == "chat.completion"
    choice = data["choices"][0]
    msg = choice["message"]
    assert msg["role"] == "assistant" and msg["reasoning"] and msg["content"]
    assert msg["content"].rstrip(".").endswith(("{A}", "{B}", "{C}", "{D}"))
    assert choice["finish_reason"] == "stop"
    assert data["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


async def test_completions_api(sim: SimServer, client: httpx.AsyncClient) -> None:
    url = sim.url + "/v1/completions"
    body = {"model": "rllm-7b", "prompt": "Compute $2+3$.", "max_tokens": 4000, "seed": 1}
    resp = await client.post(url, json=body)
    data = resp.json()
    assert data["object"] == "text_completion" and data["id"].startswith("cmpl-")
    text = data["choices"][0]["text"]
    assert "</think>" in text and text.endswith("\\boxed{5}.") == (
        data["choices"][0]["finish_reason"] == "stop"
    )
    events = await stream_events(
        client, url, {**body, "stream": True, "stream_options": {"include_usage": True}}
    )
    streamed = "".join(c["text"] for e in events if e != "[DONE]" for c in e["choices"])
    assert streamed == text
    assert events[-2]["usage"]["completion_tokens"] == data["usage"]["completion_tokens"]


async def test_return_token_ids(sim: SimServer, client: httpx.AsyncClient) -> None:
    body = chat_body(stream=True, stream_options={"include_usage": True}, return_token_ids=True, seed=8)
    events = await stream_events(client, sim.url + "/v1/chat/completions", body)
    assert isinstance(events[0]["prompt_token_ids"], list)
    ids = [i for e in events[1:-2] for c in e["choices"] for i in c["token_ids"]]
    assert len(ids) == events[-2]["usage"]["completion_tokens"]
    assert len(events[0]["prompt_token_ids"]) == events[-2]["usage"]["prompt_tokens"]


async def test_speculative_decoding_sends_several_tokens_per_chunk(client: httpx.AsyncClient) -> None:
    spec = EngineOptions(speculative=load_spec())
    async with serve_in_background(options(engine=spec)) as url:
        body = chat_body(stream=True, stream_options={"include_usage": True}, return_token_ids=True, seed=4)
        events = await stream_events(client, url + "/v1/chat/completions", body)
        sizes = [len(c["token_ids"]) for e in events[1:-2] for c in e["choices"]]
        assert max(sizes) == 4 and sum(sizes) == events[-2]["usage"]["completion_tokens"]
        assert len(sizes) < 0.6 * sum(sizes)
        text = (await client.get(url + "/metrics")).text
        assert "vllm:spec_decode_num_accepted_tokens_total" in text


def load_spec() -> Any:
    from rllmtop.sim.profiles import parse_speculative_config

    return parse_speculative_config(
        '{"method": "eagle", "num_speculative_tokens": 3, "acceptance_rate": 0.9}'
    )


async def test_same_seed_same_tokens_and_equal_to_virtual_time(client: httpx.AsyncClient) -> None:
    body = chat_body(seed=42, max_tokens=3000)
    results = []
    for _ in range(2):
        async with serve_in_background(options(seed=9)) as url:
            await client.post(url + "/v1/chat/completions", json=chat_body(content="noise", max_tokens=5))
            results.append((await client.post(url + "/v1/chat/completions", json=body)).json())
    assert results[0]["usage"] == results[1]["usage"]
    assert results[0]["choices"][0]["message"] == results[1]["choices"][0]["message"]
    prof = load_profile("rllm-7b")
    from rllmtop.sim.profiles import build_engine_config

    req = prepare_request(
        RequestFactory(prof.outputs, 9),
        Arrival(t=0.0, prompt=EASY, max_tokens=3000, seed=42),
        build_engine_config(prof),
        "x",
        reasons=True,
    )
    assert results[0]["usage"]["completion_tokens"] == req.plan.n_tokens
    assert results[0]["usage"]["prompt_tokens"] == req.num_prompt


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{bad", 400, "invalid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"model": "rllm-7b"}', 400, "messages"),
        (b'{"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}', 404, "does not exist"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}', 400, "too large"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', 400, "at least 1"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "x"}', 400, "integer"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "n": 2}', 400, "n must be 1"),
        (b'{"messages": [{"role": "wizard", "content": "hi"}]}', 400, "role"),
        (b'{"messages": [{"role": "user", "content": [{"type": "image"}]}]}', 400, "text content"),
        (b'{"messages": [], "stream": true}', 400, "non-empty"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "stream_options": {}}', 400, "stream=True"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', 400, "boolean"),
    ],
)
async def test_bad_requests_get_openai_errors(
    sim: SimServer, client: httpx.AsyncClient, body: bytes, status: int, fragment: str
) -> None:
    resp = await client.post(sim.url + "/v1/chat/completions", content=body)
    assert resp.status_code == status
    err = resp.json()["error"]
    assert fragment in err["message"] and err["code"] == status and "type" in err
    assert (await client.get(sim.url + "/health")).status_code == 200


async def test_prompt_longer_than_the_model(client: httpx.AsyncClient) -> None:
    async with serve_in_background(options(engine=EngineOptions(max_model_len=64))) as url:
        resp = await client.post(url + "/v1/completions", json={"prompt": "word " * 100})
        assert resp.status_code == 400 and "maximum context length is 64" in resp.json()["error"]["message"]
        resp = await client.post(url + "/v1/completions", json={"prompt": ["a", "b"]})
        assert resp.status_code == 400


async def test_routes_and_methods(sim: SimServer, client: httpx.AsyncClient) -> None:
    assert (await client.get(sim.url + "/nope")).status_code == 404
    assert (await client.get(sim.url + "/v1/chat/completions")).status_code == 405
    assert (await client.post(sim.url + "/health")).status_code == 405
    assert (await client.get(sim.url + "/health")).status_code == 200
    assert (await client.get(sim.url + "/ping")).status_code == 200
    version = (await client.get(sim.url + "/version")).json()
    assert version["simulator"] is True and version["engine"] == "rllmtop-sim"
    models = (await client.get(sim.url + "/v1/models")).json()
    assert models["data"][0]["id"] == "rllm-7b" and models["data"][0]["max_model_len"] == 32768


async def test_served_model_name(client: httpx.AsyncClient) -> None:
    async with serve_in_background(options(served_model_name="my/model")) as url:
        assert (await client.get(url + "/v1/models")).json()["data"][0]["id"] == "my/model"
        ok = await client.post(url + "/v1/chat/completions", json=chat_body(model="my/model", max_tokens=3))
        assert ok.status_code == 200 and ok.json()["model"] == "my/model"


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


async def test_metrics_names_labels_and_values(sim: SimServer, client: httpx.AsyncClient) -> None:
    n = 3
    done = await asyncio.gather(
        *[
            client.post(sim.url + "/v1/chat/completions", json=chat_body(seed=i, max_tokens=500))
            for i in range(n)
        ]
    )
    gen = sum(r.json()["usage"]["completion_tokens"] for r in done)
    prompt = sum(r.json()["usage"]["prompt_tokens"] for r in done)
    resp = await client.get(sim.url + "/metrics")
    assert resp.headers["content-type"].startswith("text/plain")
    fams = families(resp.text)
    assert set(fams) >= ISSUE_METRICS
    for name in ISSUE_METRICS:
        for s in fams[name].samples:
            assert s.labels["engine"] == "0" and s.labels["model_name"] == "rllm-7b", s
    # types as vLLM's, read from the real capture
    ref = families((FIXTURES / "metrics_after_load.txt").read_text())
    for name in ISSUE_METRICS | {"vllm:request_prompt_tokens", "vllm:iteration_tokens_total"}:
        assert fams[name].type == ref[name].type, name

    def value(name: str, suffix: str = "", **labels: str) -> float:
        return next(
            s.value
            for s in fams[name].samples
            if s.name == name + suffix and all(s.labels.get(k) == v for k, v in labels.items())
        )

    assert value("vllm:generation_tokens", "_total") == gen
    assert value("vllm:prompt_tokens", "_total") == prompt
    assert (
        value("vllm:request_success", "_total", finished_reason="length")
        + value("vllm:request_success", "_total", finished_reason="stop")
        == n
    )
    assert value("vllm:e2e_request_latency_seconds", "_count") == n
    assert value("vllm:inter_token_latency_seconds", "_count") == gen - n
    assert value("vllm:num_requests_running") == 0 and value("vllm:kv_cache_usage_perc") == 0
    assert "rllmtop_sim_lag_seconds" in fams and "rllmtop_sim_iteration_lag_seconds" in fams
    lag_count = next(
        s.value for s in fams["rllmtop_sim_iteration_lag_seconds"].samples if s.name.endswith("_count")
    )
    assert lag_count == value("rllmtop_sim_iterations", "_total") > 0
    info = fams["vllm:cache_config_info"].samples[0].labels
    assert info["block_size"] == "16" and int(info["num_gpu_blocks"]) == sim.config.num_gpu_blocks


async def test_histograms_are_in_model_seconds(client: httpx.AsyncClient) -> None:
    """At speed 50 a request's e2e in /metrics is its model time (the time-lapse client's clock), not
    the wall time / 50 it used to be."""
    server = SimServer(options(speed=50.0))
    url = await server.start()
    try:
        t0 = asyncio.get_running_loop().time()
        await client.post(url + "/v1/chat/completions", json=chat_body(seed=1, max_tokens=300))
        wall = asyncio.get_running_loop().time() - t0
        fams = families((await client.get(url + "/metrics")).text)

        def sample(family: str, name: str) -> float:
            return next(s.value for s in fams[family].samples if s.name == name)

        e2e = sample("vllm:e2e_request_latency_seconds", "vllm:e2e_request_latency_seconds_sum")
        cfg = server.config
        # 300 steps of at least one weight pass each, and no more than the engine's clock
        assert 300 * cfg.t_weights <= e2e <= server.engine.now
        assert wall >= 0.9 * e2e / 50.0  # the server paced the steps in wall time
        assert sample("rllmtop_sim_speed", "rllmtop_sim_speed") == 50.0
    finally:
        await server.stop()


async def test_client_disconnect_aborts_the_request(sim: SimServer, client: httpx.AsyncClient) -> None:
    async with client.stream("POST", sim.url + "/v1/chat/completions", json=chat_body(stream=True)) as resp:
        async for _ in resp.aiter_bytes():
            break  # read one chunk, then hang up
    await sim.wait_idle()
    assert sim.engine.stats.finished["abort"] == 1
    assert sim.engine.kv_usage == 0.0


async def test_keep_alive_and_raw_http_details(sim: SimServer) -> None:
    host, port = sim.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = orjson.dumps(chat_body(max_tokens=3))
    # Expect: 100-continue, then a chunked request body, then a second request on the same connection
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    await writer.drain()
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    half = len(body) // 2
    writer.write(b"%x\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:]))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    length = int(
        next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1]
    )
    assert orjson.loads(await reader.readexactly(length))["usage"]["completion_tokens"] == 3
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 200 OK")
    writer.close()
    # garbage does not hurt the server
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 400")
    writer.close()
    async with httpx.AsyncClient() as c:
        assert (await c.get(sim.url + "/health")).status_code == 200


async def test_health_is_503_when_the_engine_loop_dies(sim: SimServer, client: httpx.AsyncClient) -> None:
    def boom(now: float) -> Any:
        raise RuntimeError("simulated engine crash")

    sim.engine.step = boom  # type: ignore[method-assign]
    with pytest.raises(httpx.HTTPError):
        await client.post(sim.url + "/v1/chat/completions", json=chat_body(max_tokens=5))
    await sim.wait_idle()
    assert sim.dead
    assert (await client.get(sim.url + "/health")).status_code == 503
    resp = await client.post(sim.url + "/v1/chat/completions", json=chat_body(max_tokens=5))
    assert resp.status_code == 500


async def test_openai_client(sim: SimServer) -> None:
    from openai import AsyncOpenAI

    oc = AsyncOpenAI(base_url=sim.url + "/v1", api_key="unused")
    try:
        models = await oc.models.list()
        assert models.data[0].id == "rllm-7b"
        stream = await oc.chat.completions.create(
            model="rllm-7b",
            messages=[{"role": "user", "content": EASY}],
            stream=True,
            stream_options={"include_usage": True},
            seed=4,
            max_tokens=2000,
        )
        reasoning, content, usage = [], [], None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for ch in chunk.choices:
                extra = ch.delta.model_extra or {}
                if extra.get("reasoning"):
                    reasoning.append(extra["reasoning"])
                if ch.delta.content:
                    content.append(ch.delta.content)
        assert reasoning and usage is not None
        assert usage.completion_tokens_details is not None
        assert usage.completion_tokens_details.reasoning_tokens == len(reasoning)
        full = await oc.chat.completions.create(
            model="rllm-7b", messages=[{"role": "user", "content": EASY}], seed=4, max_tokens=2000
        )
        assert full.choices[0].message.content == "".join(content)
        comp = await oc.completions.create(model="rllm-7b", prompt="Compute $1+1$.", max_tokens=10)
        assert comp.usage is not None and comp.usage.completion_tokens == 10
    finally:
        await oc.close()


async def test_long_keep_alive_connections_do_not_accumulate_state(sim: SimServer) -> None:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1)) as c:
        for i in range(30):
            r = await c.post(sim.url + "/v1/chat/completions", json=chat_body(seed=i, max_tokens=2))
            assert r.status_code == 200
        events = await stream_events(
            c, sim.url + "/v1/chat/completions", chat_body(stream=True, max_tokens=2)
        )
        assert events[-1] == "[DONE]"
        (conn,) = sim._conns
        assert len(conn.on_close) == 1 and not sim._streams


async def test_preemptions_over_http_and_every_stream_completes(client: httpx.AsyncClient) -> None:
    """A small KV cache, 16 concurrent streams: the engine preempts, every stream still ends cleanly."""
    engine = EngineOptions(num_gpu_blocks_override=256, max_model_len=2048)
    server = SimServer(options(engine=engine, speed=200.0))
    url = await server.start()
    try:
        prompts = [f"Problem {i}: compute $(3 + {i}) * 7 - 2 * (5 + 1)$." for i in range(16)]
        bodies = [
            chat_body(content=p, stream=True, stream_options={"include_usage": True}, seed=i, max_tokens=1000)
            for i, p in enumerate(prompts)
        ]
        streams = await asyncio.gather(
            *[stream_events(client, url + "/v1/chat/completions", b) for b in bodies]
        )
        for events in streams:
            s = split_stream(events)
            assert events[-1] == "[DONE]" and s["finish"] in ("stop", "length")
            tokens = [d for d in s["deltas"] if "role" not in d["delta"]]
            assert len(tokens) == s["usage"]["completion_tokens"]
        fams = families((await client.get(url + "/metrics")).text)
        preempted = next(s.value for s in fams["vllm:num_preemptions"].samples if s.name.endswith("_total"))
        assert preempted > 0
        hist = fams["vllm:request_num_preemptions"].samples
        assert next(s.value for s in hist if s.name.endswith("_sum")) == preempted
        assert next(s.value for s in hist if s.name.endswith("_count")) == 16
    finally:
        await server.stop()


def test_serve_in_thread_with_the_sync_openai_client() -> None:
    from openai import OpenAI

    from rllmtop.errors import UserError
    from rllmtop.sim.server import serve_in_thread

    with serve_in_thread(options()) as url:
        oc = OpenAI(base_url=url + "/v1", api_key="unused")
        r = oc.chat.completions.create(
            model="rllm-7b", messages=[{"role": "user", "content": EASY}], max_tokens=7
        )
        assert r.usage is not None and r.usage.completion_tokens == 7
        assert r.choices[0].finish_reason == "length"
        head = httpx.head(url + "/version")
        assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(UserError, match="cannot listen"), serve_in_thread(options(port=port)):
            pass


async def test_api_key_guards_v1_routes(client: httpx.AsyncClient) -> None:
    async with serve_in_background(options(api_key="s3cret")) as url:
        assert (await client.get(url + "/v1/models")).status_code == 401
        bad = await client.get(url + "/v1/models", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and "s3cret" not in bad.text
        ok = await client.get(url + "/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert (await client.get(url + "/health")).status_code == 200
        assert "s3cret" not in (await client.get(url + "/metrics")).text
