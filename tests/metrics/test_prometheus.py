"""The Prometheus source against a small HTTP server on 127.0.0.1 answering like Prometheus's API.

The real Prometheus is in test_prometheus_real.py (slow); here: mapping, validation, health and every
failure the API can hand us, fast. Plus a property test of the PromQL JSON parser.
"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from rllmtop.clock import Clock
from rllmtop.engines.adapters import FLEET_ADAPTER
from rllmtop.errors import UserError
from rllmtop.events import LogEvent, Record, Scrape
from rllmtop.metrics.prometheus import PrometheusError, PrometheusSource, parse_promql, series_expr

A, B = "10.0.0.1:8000", "10.0.0.2:30000"
NOW = 1_700_000_000.0


def vec(*items: tuple[dict[str, str], str]) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": m, "value": [NOW, v]} for m, v in items]},
    }


def s(name: str, inst: str, value: str, **labels: str) -> tuple[dict[str, str], str]:
    return {"__name__": name, "instance": inst, "job": "llm", **labels}, value


def engine_series() -> dict[str, Any]:
    items = [
        s("vllm:kv_cache_usage_perc", A, "0.25", engine="0", model_name="m"),
        s("vllm:num_requests_running", A, "3", engine="0"),
        s("vllm:num_requests_waiting", A, "NaN", engine="0"),  # NaN: dropped, missing (never 0)
        s("vllm:cache_config_info", A, "1", engine="0", num_gpu_blocks="8192", block_size="16"),
        s("vllm:time_to_first_token_seconds_bucket", A, "2", engine="0", le="0.5"),
        s("vllm:time_to_first_token_seconds_bucket", A, "5", engine="0", le="+Inf"),
        s("vllm:time_to_first_token_seconds_sum", A, "3.5", engine="0"),
        s("vllm:time_to_first_token_seconds_count", A, "5", engine="0"),
        s("sglang:num_running_reqs", B, "7", tp_rank="0", dp_rank="1"),
        s("sglang:num_running_reqs", B, "7", tp_rank="1", dp_rank="1"),  # tp rank 1: a duplicate, dropped
        s("sglang:token_usage", B, "7.5", tp_rank="0", dp_rank="1"),  # out of 0..1: dropped
    ]
    doc = vec(*items)
    doc["data"]["result"].append({"metric": "oops", "value": [NOW, "1"]})  # malformed item: costs itself
    return doc


def health(up: dict[str, str], at: float) -> dict[str, Any]:
    """``up`` per instance; each last scraped 0.5 s before the evaluation time ``at``."""
    items = [({"__name__": "up", "instance": i, "job": "llm"}, v) for i, v in up.items()]
    items += [({"instance": i, "job": "llm", "rllmtop_ts": "1"}, repr(at - 0.5)) for i in up]
    return vec(*items)


class FakeProm:
    def __init__(self) -> None:
        self.series: Callable[[], tuple[int, bytes]] = lambda: (200, orjson.dumps(engine_series()))
        self.up = {A: "1", B: "1"}
        self.queries: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.queries.append({k: str(v) for k, v in form.items()})
        q = str(form.get("query", ""))
        if q.startswith("up{"):
            if request.path.endswith("query_range"):
                res = [
                    {"metric": {"__name__": "up", "instance": i}, "values": [[NOW - 10, "1"], [NOW - 5, v]]}
                    for i, v in self.up.items()
                ]
                return web.json_response(
                    {"status": "success", "data": {"resultType": "matrix", "result": res}}
                )
            return web.json_response(health(self.up, float(str(form["time"]))))
        if request.path.endswith("query_range"):
            res = [
                {
                    "metric": {"__name__": "vllm:num_requests_running", "instance": A, "engine": "0"},
                    "values": [[NOW - 10, "1"], [NOW - 5, "4"]],
                }
            ]
            return web.json_response({"status": "success", "data": {"resultType": "matrix", "result": res}})
        status, body = self.series()
        return web.Response(status=status, body=body, content_type="application/json")


@asynccontextmanager
async def serve(fake: FakeProm) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/api/v1/query", fake.handle)
    app.router.add_post("/api/v1/query_range", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def source(url: str, **kw: Any) -> tuple[PrometheusSource, list[Record]]:
    recs: list[Record] = []
    return PrometheusSource(url, clock=Clock(), publish=recs.append, **kw), recs


def vals(sc: Scrape, name: str) -> dict[tuple, float]:
    return {m.labels: m.value for m in sc.samples if m.name == name}


async def test_engines_from_instances_each_mapped_by_its_own_vocabulary_and_validated() -> None:
    fake = FakeProm()
    async with serve(fake) as url:
        src, recs = source(url, selector='{job="llm"}')
        got = {x.engine_id: x for x in await src.poll_once()}
    assert set(got) == {A, B} and all(x.ok and not x.stale for x in got.values())
    a, b = got[A], got[B]
    e0 = (("engine", "0"),)
    assert vals(a, "kv_cache_usage") == {e0: 0.25} and vals(a, "requests_running") == {e0: 3.0}
    assert vals(a, "kv_total_blocks") == {e0: 8192.0}
    assert "requests_waiting" in a.missing and not vals(a, "requests_waiting")
    (h,) = a.histograms
    assert (
        h.name == "ttft_seconds" and h.bounds == (0.5, math.inf) and h.counts == (2.0, 5.0) and h.sum == 3.5
    )
    assert all("instance" not in dict(m.labels) and "job" not in dict(m.labels) for m in a.samples)
    assert vals(b, "requests_running") == {(("engine", "1"),): 7.0}
    assert "kv_cache_usage" in b.missing
    assert {e.id: e.kind for e in src.engine_infos()} == {A: "vllm", B: "sglang"}
    assert all(e.source == "prometheus" for e in src.engine_infos())
    texts = [r.text for r in recs if isinstance(r, LogEvent)]
    assert any("found engine 10.0.0.1:8000 (vllm, job llm)" in t for t in texts)
    assert any("dropped" in t and "num_requests_waiting" in t for t in texts)
    assert any("dropped" in t and "token_usage" in t and "outside 0..1" in t for t in texts)
    assert any("'metric'" in t for t in texts)
    assert src.invalid_samples == 3
    q = fake.queries[0]["query"]
    assert q.startswith('{__name__=~"') and q.endswith(',job="llm"}') and "vllm:kv_cache_usage_perc" in q
    assert float(fake.queries[0]["time"]) == float(fake.queries[1]["time"])  # one evaluation time per poll


async def test_a_target_down_in_prometheus_is_a_stale_failed_scrape_not_zeros() -> None:
    fake = FakeProm()
    async with serve(fake) as url:
        src, recs = source(url)
        await src.poll_once()
        fake.up[B] = "0"
        got = {x.engine_id: x for x in await src.poll_once()}
        await src.poll_once()
        fake.up[B] = "1"
        back = {x.engine_id: x for x in await src.poll_once()}
    assert got[A].ok and not got[B].ok and got[B].stale and got[B].samples == ()
    assert "10.0.0.2:30000" in got[B].error and "up == 0" in got[B].error
    downs = [r for r in recs if isinstance(r, LogEvent) and "up == 0" in r.text]
    assert len(downs) == 1  # logged once, published every poll
    assert back[B].ok and any(isinstance(r, LogEvent) and "up again" in r.text for r in recs)


async def test_an_engine_whose_series_vanished_is_stale_and_failed() -> None:
    fake = FakeProm()
    async with serve(fake) as url:
        src, _ = source(url)
        await src.poll_once()
        fake.series = lambda: (200, orjson.dumps(vec()))
        del fake.up[B]
        got = {x.engine_id: x for x in await src.poll_once()}
    assert not got[B].ok and got[B].stale and "no series any more" in got[B].error
    assert not got[A].ok and got[A].stale  # up==1 but its series went stale: still not zeros


async def test_an_old_last_scrape_marks_the_engine_stale() -> None:
    fake = FakeProm()
    async with serve(fake) as url:
        src, _ = source(url, stale_after=0.1)
        got = {x.engine_id: x for x in await src.poll_once()}
    assert all(x.ok and x.stale for x in got.values())  # the last scrape was 0.5 s before the query


@pytest.mark.parametrize(
    ("status", "body", "words"),
    [
        (
            400,
            b'{"status":"error","errorType":"bad_data","error":"parse error at char 3"}',
            ["bad_data", "--prometheus-selector"],
        ),
        (200, b"<html>grafana</html>", ["not JSON", "base URL"]),
        (200, b'{"data": 1}', ["not Prometheus's API JSON"]),
        (200, b'{"status":"success","data":{"resultType":"matrix","result":[]}}', ["expected a vector"]),
        (404, b"404 page not found", ["404", "not a Prometheus API"]),
        (401, b"", ["credentials"]),
        (500, b"", ["HTTP 500"]),
    ],
)
async def test_a_failing_prometheus_fails_every_known_engine_with_one_clear_line(
    status: int, body: bytes, words: list[str]
) -> None:
    fake = FakeProm()
    async with serve(fake) as url:
        src, recs = source(url, selector='{job="llm"}')
        await src.poll_once()
        fake.series = lambda: (status, body)
        got = await src.poll_once()
        await src.poll_once()
    assert {x.engine_id for x in got} == {A, B} and not any(x.ok for x in got)
    assert all(not x.stale and x.samples == () for x in got)
    err = got[0].error
    assert err.startswith(url) and "\n" not in err and len(err) <= 300
    assert all(w in err for w in words), err
    fails = [r for r in recs if isinstance(r, LogEvent) and "Prometheus poll failed" in r.text]
    assert len(fails) == 1


async def test_unreachable_prometheus_names_the_url_and_the_flag() -> None:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    src, recs = source(f"http://user:sk-secret@127.0.0.1:{port}")
    assert await src.poll_once() == []  # no engine known yet: nothing to publish but the log line
    (line,) = [r.text for r in recs if isinstance(r, LogEvent)]
    assert "cannot reach Prometheus" in line and "--prometheus" in line and "sk-secret" not in line


async def test_an_answer_over_the_cap_is_an_error() -> None:
    fake = FakeProm()
    async with serve(fake) as url:
        src, recs = source(url, max_bytes=100)
        assert await src.poll_once() == []
    assert any("larger than" in r.text for r in recs if isinstance(r, LogEvent))


async def test_backfill_returns_scrapes_in_time_order_with_down_steps_stale() -> None:
    fake = FakeProm()
    fake.up = {A: "0"}
    async with serve(fake) as url:
        src, _ = source(url)
        back = await src.backfill(30.0)
    assert [x.t for x in back] == sorted(x.t for x in back) and all(x.t < 0 for x in back)
    assert [(x.ok, x.stale) for x in back] == [(True, False), (False, True)]
    assert vals(back[0], "requests_running") == {(("engine", "0"),): 1.0}
    assert all(x.engine_id == A for x in back)


def test_selectors_are_label_selectors_only() -> None:
    assert series_expr(FLEET_ADAPTER, '{job="vllm"}').endswith(',job="vllm"}')
    assert series_expr(FLEET_ADAPTER, "").endswith('"}')
    for bad in ('job="vllm"', '{__name__="x"}', "up"):
        with pytest.raises(UserError) as e:
            series_expr(FLEET_ADAPTER, bad)
        assert "--prometheus-selector" in e.value.what
    names = series_expr(FLEET_ADAPTER, histograms=False)
    assert "_bucket" not in names and "sglang:num_running_reqs" in names


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)


@st.composite
def promql_answers(draw: st.DrawFn) -> bytes:
    """Answers shaped like the API with parts replaced by arbitrary JSON."""
    result = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "metric": st.one_of(
                        st.dictionaries(st.sampled_from(["__name__", "instance", "le"]), st.text(max_size=5)),
                        _json,
                    ),
                    "value": st.one_of(
                        st.tuples(st.floats(), st.sampled_from(["1", "NaN", "+Inf", "x"])).map(list), _json
                    ),
                }
            ),
            max_size=4,
        )
    )
    doc: Any = {
        "status": draw(st.sampled_from(["success", "error", 3])),
        "data": {"resultType": "vector", "result": result},
    }
    if draw(st.booleans()):
        doc = draw(_json)
    return json.dumps(doc, allow_nan=True).encode()


@settings(max_examples=300, deadline=None)
@given(promql_answers())
def test_the_promql_parser_raises_only_its_one_line_error(body: bytes) -> None:
    try:
        series, problems = parse_promql(body, "http://p/api/v1/query", "vector")
    except PrometheusError as e:
        assert str(e).startswith("http://p/api/v1/query: ") and "\n" not in str(e)
        return
    for x in series:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in x.labels.items())
        assert all(isinstance(t, float) and isinstance(v, str) for t, v in x.points)
    assert all("\n" not in p.series + p.reason for p in problems)
