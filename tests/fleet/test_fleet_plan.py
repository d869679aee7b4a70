"""Which engines a session watches and where its load goes (rllmtop.session.fleet), and the attach flags
that build it: every ambiguous combination is one clear message before anything starts."""

from __future__ import annotations

import random

import pytest

from rllmtop.cli import build_parser
from rllmtop.commands import _attach_engine
from rllmtop.errors import UserError
from rllmtop.scenario import EngineEndpoint, EngineSpec, PrometheusSpec
from rllmtop.session.fleet import (
    _worker_urls,
    check_fleet,
    engine_id,
    fleet_kind,
    instance_of,
    members_of,
)

A, B, C = "http://127.0.0.1:8001", "http://127.0.0.1:8002", "http://127.0.0.1:8003"


def _eps(*urls: str) -> tuple[EngineEndpoint, ...]:
    return tuple(EngineEndpoint(u) for u in urls)


def test_engine_ids_are_base_urls_without_credentials() -> None:
    assert engine_id("http://user:secret@h:8000/v1/") == "http://h:8000"
    assert engine_id("h:8000") == "http://h:8000"
    assert instance_of("http://h:8000") == "h:8000"
    assert instance_of("https://gw.example") == "gw.example:443"
    assert instance_of("http://[::1]:9") == "[::1]:9"


def test_fleet_kind_names_a_mixed_fleet() -> None:
    assert fleet_kind(["sim", "sim"]) == "sim"
    assert fleet_kind(["vllm", "sglang", "unknown"]) == "sglang+vllm"
    assert fleet_kind(["unknown"]) == fleet_kind([]) == "unknown"


def test_members_of_an_attach_spec() -> None:
    spec = EngineSpec(
        kind="url",
        endpoints=(
            EngineEndpoint(A, metrics_url=A + "/m", gpu_metrics_url="http://g:9400/metrics", name="a"),
        ),
    )
    (m,) = members_of(spec)
    assert (m.url, m.metrics_url, m.gpu_metrics_url, m.name) == (A, A + "/m", "http://g:9400/metrics", "a")
    assert members_of(EngineSpec(kind="url", url=A + "/", metrics_url=B))[0].metrics_url == B
    assert members_of(EngineSpec(kind="url", url=A, prometheus=PrometheusSpec("http://p:9090"))) == ()


@pytest.mark.parametrize(
    ("spec", "has_load", "needle"),
    [
        (EngineSpec(kind="url"), False, "no engine URL"),
        (EngineSpec(kind="url", endpoints=_eps(A, B)), True, "nowhere to send"),
        (EngineSpec(kind="url", endpoints=_eps(A), balance="round_robin"), True, "two or more"),
        (EngineSpec(kind="url", url=C, endpoints=_eps(A, B), balance="round_robin"), True, "goes one way"),
        (EngineSpec(kind="url", prometheus=PrometheusSpec("http://p:9090")), True, "Prometheus and no load"),
        (EngineSpec(kind="sim", replicas=3), True, "first"),
        (EngineSpec(kind="sim", balance="round_robin"), True, "one engine"),
        (EngineSpec(kind="sim", replicas=65, balance="round_robin"), True, "Prometheus"),
        (EngineSpec(kind="sim", endpoints=_eps(A)), False, "launches engines"),
        (EngineSpec(kind="url", endpoints=_eps(A, B), balance="fastest"), True, "not a balancing policy"),
    ],
)
def test_ambiguous_fleets_are_refused(spec: EngineSpec, has_load: bool, needle: str) -> None:
    with pytest.raises(UserError) as e:
        check_fleet(spec, has_load=has_load)
    assert needle in e.value.what + e.value.hint


@pytest.mark.parametrize(
    "spec",
    [
        EngineSpec(kind="url", url=A),
        EngineSpec(kind="url", endpoints=_eps(A, B)),  # watched, no load
        EngineSpec(kind="url", url=C, endpoints=_eps(A, B)),  # a router in front
        EngineSpec(kind="url", endpoints=_eps(A, B), balance="least_in_flight"),
        EngineSpec(kind="url", url=C, prometheus=PrometheusSpec("http://p:9090")),
        EngineSpec(kind="sim", replicas=4, balance="round_robin"),
    ],
)
def test_clear_fleets_pass(spec: EngineSpec) -> None:
    check_fleet(spec, has_load=spec.endpoints == () or spec.url is not None or spec.balance != "none")


def test_router_worker_lists_in_both_shapes_and_junk() -> None:
    assert _worker_urls({"urls": [A, B + "/", A]}) == (A, B)
    assert _worker_urls({"workers": [{"url": A}, {"url": 3}, "x"]}) == (A, "x")
    assert _worker_urls({"detail": "Not Found"}) == ()
    assert _worker_urls([A]) == ()
    assert _worker_urls({"urls": ["ftp://h", "http://h:99999", "", None]}) == ()
    rng = random.Random(13)
    junk: list[object] = [None, 1, 2.5, "", "http://", "h:1", {"url": A}, [A], "\x00", "http://a b"]
    for _ in range(300):  # whatever a router says, worker lists are strings or nothing, never an exception
        body = {rng.choice(["urls", "workers"]): [rng.choice(junk) for _ in range(rng.randrange(5))]}
        assert all(isinstance(u, str) and u for u in _worker_urls(body))


def _args(*argv: str) -> EngineSpec:
    return _attach_engine(build_parser().parse_args(["attach", *argv]), has_load="--scenario" in argv)


def test_attach_flags_build_the_fleet() -> None:
    one = _args(A, "--metrics-url", B + "/metrics")
    assert (one.url, one.metrics_url, one.endpoints) == (A, B + "/metrics", ())
    spec = _args(
        A, B, C, "--metrics-url", "-", "--metrics-url", C + "/m", "--gpu-metrics-url", "http://g:9400/metrics"
    )
    assert [e.url for e in spec.endpoints] == [A, B, C] and spec.url is None
    assert [e.metrics_url for e in spec.endpoints] == [None, C + "/m", None]
    assert [e.gpu_metrics_url for e in spec.endpoints] == ["http://g:9400/metrics", None, None]
    routed = _args(A, B, "--load-url", C, "--scenario", "x")
    assert routed.url == C and routed.balance == "none" and len(routed.endpoints) == 2
    balanced = _args(A, B, "--balance", "least_in_flight", "--scenario", "x")
    assert balanced.balance == "least_in_flight" and balanced.url is None
    prom = _args("--prometheus", "http://p:9090/", "--prometheus-selector", '{job="vllm"}')
    assert prom.prometheus == PrometheusSpec("http://p:9090", selector='{job="vllm"}', interval=1.0)
    assert prom.endpoints == () and prom.url is None
    via = _args("--prometheus", "http://p:9090", "--load-url", C, "--scenario", "x", "--scrape-interval", "2")
    assert via.url == C and via.prometheus is not None and via.prometheus.interval == 2.0


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ((), "needs an engine URL"),
        ((A, A), "listed twice"),
        ((A, "--metrics-url", B, "--metrics-url", C), "2 --metrics-url for 1"),
        ((A, B, "--scenario", "x"), "nowhere to send"),
        ((A, "--balance", "round_robin"), "two or more"),
        ((A, B, "--balance", "round_robin", "--load-url", C), "goes one way"),
        (("ftp://h",), "not an http(s) URL"),
        (("--prometheus", "http://p:9090", "--prometheus-selector", "job=vllm"), "not a label selector"),
        (("--prometheus", "http://p:9090", "--scenario", "x"), "no load target"),
        (("--prometheus", "http://p:9090", A, B), "URLs say where the load goes"),
        (("--prometheus", "http://p:9090", A, "--metrics-url", B), "come from Prometheus"),
    ],
)
def test_attach_flag_mistakes_are_one_message(argv: tuple[str, ...], needle: str) -> None:
    with pytest.raises(UserError) as e:
        _args(*argv)
    assert needle in e.value.what + e.value.hint
