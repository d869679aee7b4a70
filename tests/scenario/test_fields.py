"""The fields added for fleets, scale-out, goodput and the new workloads: parsed into the dataclasses, and
every misuse a one-line error naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from rllmtop.scenario import (
    ConversationSpec,
    EngineEndpoint,
    PrometheusSpec,
    load_scenario,
    matrix_cells,
)
from rllmtop.scenario.engine import check_prometheus_selector

from .conftest import MINIMAL, Failer, Loader

CLASSES = '\n[[classes]]\nprompts = "math-easy"\n'
LOAD = "\n[load]\nnum_prompts = 10\n"

# -------------------------------------------------------------------------------------------- [engine]


def test_endpoints_as_tables_and_as_urls(load: Loader) -> None:
    sc = load(
        MINIMAL
        + '\n[engine]\nkind = "url"\nurl = "http://router:8000/"\n'
        + '[[engine.endpoints]]\nurl = "http://a:8000"\nmetrics_url = "http://a:9000/metrics"\n'
        + 'gpu_metrics_url = "http://a:9400/metrics"\nname = "gpu-a"\n'
        + '[[engine.endpoints]]\nurl = "https://b/v"\n'
    )
    e = sc.engine
    assert e.url == "http://router:8000" and e.balance == "none"
    assert e.endpoints == (
        EngineEndpoint("http://a:8000", "http://a:9000/metrics", "http://a:9400/metrics", "gpu-a"),
        EngineEndpoint("https://b/v"),
    )
    sc = load(
        MINIMAL + '\n[engine]\nkind = "url"\nurls = ["http://a:1", "http://b:2/"]\nbalance = "round_robin"\n'
    )
    assert [x.url for x in sc.engine.endpoints] == ["http://a:1", "http://b:2"]
    assert sc.engine.balance == "round_robin" and sc.engine.url is None
    sc = load(MINIMAL + '\n[engine]\nkind = "url"\nendpoints = ["http://a:1"]\n')
    assert sc.engine.endpoints == (EngineEndpoint("http://a:1"),), "one engine: the load goes to it"


def test_replicas_and_balance(load: Loader) -> None:
    sc = load(MINIMAL + "\n[engine]\nreplicas = 4\nbalance = 'least_in_flight'\n")
    assert (sc.engine.kind, sc.engine.replicas, sc.engine.balance) == ("sim", 4, "least_in_flight")
    assert load(MINIMAL).engine.replicas == 1 and load(MINIMAL).engine.balance == "none"


@pytest.mark.parametrize(
    ("engine", "needle", "hint"),
    [
        ("replicas = 0", "engine.replicas = 0: out of range", "<= 64"),
        ("replicas = 65\nbalance = 'round_robin'", "engine.replicas = 65", "<= 64"),
        ("replicas = 2.5", "must be an integer", "integer"),
        ("replicas = 4", "every request would go to the first replica", "round_robin"),
        ("balance = 'random'", "engine.balance", "'least_in_flight'"),
        ("balance = 'round_robin'", "balancing needs several engines", "replicas >= 2"),
        ("replicas = 2\nbalance = 'round_robin'\nport = 8000", "engine.port = 8000", "free port"),
        ('kind = "vllm"\nmodel = "m"\nreplicas = 2', "engine.replicas", "kind = 'sim'"),
        ('kind = "url"\nurls = ["http://a:1", "http://b:1"]', "nowhere to send the load", "router"),
        (
            'kind = "url"\nurls = ["http://a:1", "http://a:1/"]\nbalance = "round_robin"',
            "duplicate",
            "each engine once",
        ),
        (
            'kind = "url"\nurls = ["http://a:1", "ftp://b"]\nbalance = "round_robin"',
            'engine.urls[1] = "ftp://b"',
            "http://HOST",
        ),
        ('kind = "url"\nurls = []', "engine.urls = []", "urls = ["),
        (
            'kind = "url"\nurls = ["http://a:1"]\nendpoints = ["http://b:1"]',
            "either endpoints or urls",
            "endpoints",
        ),
        (
            'kind = "url"\nurl = "http://r:1"\nurls = ["http://a:1", "http://b:1"]\nbalance = "round_robin"',
            "engine.url",
            "remove url",
        ),
        (
            'kind = "url"\nurls = ["http://a:1", "http://b:1"]\nurl = "http://r:1"\nmetrics_url = "http://r:2"',
            "engine.metrics_url",
            "inside urls",
        ),
        ('urls = ["http://a:1"]', "engine.urls", "kind = 'url'"),
        (
            'kind = "url"\n[[engine.endpoints]]\nmetrics_url = "http://a:1"',
            "engine.endpoints[0].url is missing",
            "url =",
        ),
        (
            'kind = "url"\n[[engine.endpoints]]\nurl = "http://a:1"\nport = 3',
            "engine.endpoints[0].port",
            "gpu_metrics_url",
        ),
        ('kind = "url"\nurl = "http://a:1/\\nX"', "not an http(s) URL", "http://HOST"),
    ],
)
def test_fleet_errors(fail: Failer, engine: str, needle: str, hint: str) -> None:
    e = fail(MINIMAL + "\n[engine]\n" + engine + "\n")
    assert needle in e.what, e.what
    assert hint in e.hint, e.hint


def test_prometheus(load: Loader, fail: Failer) -> None:
    base = (
        MINIMAL
        + '\n[engine]\nkind = "url"\nurl = "http://router:1"\n[engine.prometheus]\nurl = "http://prom:9090"\n'
    )
    assert load(base).engine.prometheus == PrometheusSpec("http://prom:9090")
    sc = load(base + 'selector = \'{job="vllm", instance=~"gpu-.*",}\'\ninterval = 2\nbackfill = 300\n')
    assert sc.engine.prometheus == PrometheusSpec(
        "http://prom:9090", '{job="vllm", instance=~"gpu-.*",}', 2.0, 300.0
    )
    e = fail(base + "selector = 'job=\"vllm\"'\n")
    assert "engine.prometheus.selector" in e.what and "{ }" in e.what and '{job="vllm"}' in e.hint
    assert "interval = 0" in fail(base + "interval = 0\n").what
    assert "backfill = 1000000000.0: out of range" in fail(base + "backfill = 1e9\n").what
    e = fail(
        MINIMAL
        + '\n[engine]\nkind = "url"\nurl = "http://r:1"\n[engine.prometheus]\nselector = "{a=\\"b\\"}"\n'
    )
    assert "engine.prometheus.url is missing" in e.what


@pytest.mark.parametrize(
    ("selector", "problem"),
    [
        ('{job="vllm"}', None),
        ('{job=\'vllm\',env!="dev" , x=~"a\\"b" ,}', None),
        ("{ a !~ 'x' }", None),
        ("{}", "no label matcher"),
        ("job", "enclosed"),
        ('{job="vllm"', "enclosed"),
        ("{job=vllm}", "quoted value"),
        ('{1job="x"}', "label name"),
        ('{job=="x"}', "quoted value"),
        ('{job<"x"}', "=, !=, =~ or !~"),
        ('{job="x" env="y"}', "expected ,"),
        ('{job="x}', "not closed"),
    ],
)
def test_prometheus_selector_syntax(selector: str, problem: str | None) -> None:
    got = check_prometheus_selector(selector)
    assert (got is None) if problem is None else (got is not None and problem in got), got


def test_engine_env_secret_rule(load: Loader, fail: Failer) -> None:
    head = MINIMAL + '\n[engine]\nkind = "vllm"\nmodel = "m"\n[engine.env]\n'
    sc = load(head + 'TOKENIZERS_PARALLELISM = "false"\nVLLM_MAX_TOKENS_PER_BATCH = 8\n')
    assert sc.engine.env == {"TOKENIZERS_PARALLELISM": "false", "VLLM_MAX_TOKENS_PER_BATCH": "8"}
    e = fail(head + 'HF_TOKEN = "hf_abcdef"\n')
    assert "engine.env.HF_TOKEN" in e.what and "export HF_TOKEN" in e.hint and "hf_abcdef" not in str(e)


# ---------------------------------------------------------------------------------------------- [load]


def test_load_scale_out_fields(load: Loader) -> None:
    ld = load(MINIMAL).load
    assert (ld.workers, ld.ray, ld.on_worker_death, ld.ignore_eos, ld.clamp_max_tokens) == (
        1,
        None,
        "continue",
        False,
        False,
    )
    text = '[load]\nnum_prompts = 10\nworkers = "auto"\nray = "auto"\non_worker_death = "stop"\n'
    text += "ignore_eos = true\nclamp_max_tokens = true\n" + CLASSES
    ld = load(text).load
    assert (ld.workers, ld.ray, ld.on_worker_death, ld.ignore_eos, ld.clamp_max_tokens) == (
        0,
        "auto",
        "stop",
        True,
        True,
    )
    for addr in ("local", "10.0.0.1:6379", "ray://head.example:10001", "[::1]:6379"):
        assert load(f'[load]\nnum_prompts = 1\nray = "{addr}"\nworkers = 3\n' + CLASSES).load.ray == addr


@pytest.mark.parametrize(
    ("snippet", "needle", "hint"),
    [
        ("workers = 0", "load.workers = 0: out of range", '"auto"'),
        ("workers = 1000", "load.workers = 1000", "1..256"),
        ('workers = "many"', 'load.workers = "many"', '"auto"'),
        ("workers = true", "load.workers = true: wrong type", "integer"),
        ("workers = 2.5", "load.workers = 2.5: must be an integer", "integer"),
        ('ray = "ray://"', "not a Ray address", "ray://HOST:10001"),
        ('ray = "head:99999"', "not a Ray address", "HOST:PORT"),
        ('ray = ""', "must not be empty", "string"),
        ('on_worker_death = "restart"', "load.on_worker_death", "'stop'"),
        ("ignore_eos = 1", "load.ignore_eos = 1", "true, false"),
        ('clamp_max_tokens = "yes"', "load.clamp_max_tokens", "true, false"),
    ],
)
def test_load_errors(fail: Failer, snippet: str, needle: str, hint: str) -> None:
    e = fail(f"[load]\nnum_prompts = 3\n{snippet}\n" + CLASSES)
    assert needle in e.what, e.what
    assert hint in e.hint, e.hint


# ------------------------------------------------------------------------------------------- [[classes]]


def test_class_reasoning_controls_and_conversation(load: Loader) -> None:
    text = LOAD + '[[classes]]\nname = "chat"\nprompts = "math-medium"\ndifficulty = "medium"\n'
    text += 'reasoning_effort = "low"\nreasoning_budget = 1024\n'
    text += 'chat_template_kwargs = { thinking_budget = 512, extra = ["a", 1.5, true, { x = "y" }] }\n'
    text += "[classes.conversation]\nturns = 3\nturns_max = 6\nthink_time = 4.5\n"
    c = load(text).classes[0]
    assert (c.difficulty, c.reasoning_effort, c.reasoning_budget) == ("medium", "low", 1024)
    assert c.chat_template_kwargs == {"thinking_budget": 512, "extra": ["a", 1.5, True, {"x": "y"}]}
    assert c.conversation == ConversationSpec(turns=3, turns_max=6, think_time=4.5)
    d = load(MINIMAL).classes[0]
    assert (d.difficulty, d.reasoning_effort, d.reasoning_budget, d.conversation) == (None, None, None, None)
    assert d.chat_template_kwargs == {}
    assert load(LOAD + CLASSES + "[classes.conversation]\n").classes[0].conversation == ConversationSpec()


@pytest.mark.parametrize(
    ("snippet", "needle", "hint"),
    [
        ('difficulty = "insane"', "classes[0].difficulty", "'mcq'"),
        ('reasoning_effort = "max"', "classes[0].reasoning_effort", "'high'"),
        ("reasoning_budget = -1", "classes[0].reasoning_budget = -1: out of range", ">= 0"),
        ("reasoning_budget = 1e12", "classes[0].reasoning_budget", "<= 10,000,000"),
        ('thinking = false\nreasoning_effort = "low"', "thinking = false", "thinking = true"),
        ("chat_template_kwargs = 3", "classes[0].chat_template_kwargs = 3: must be a table", "a table"),
        (
            "chat_template_kwargs = { enable_thinking = false }",
            "chat_template_kwargs.enable_thinking",
            "thinking = true",
        ),
        ("chat_template_kwargs = { x = nan }", "chat_template_kwargs.x = nan: must be finite", "JSON"),
        ("chat_template_kwargs = { x = [1, 1979-05-27] }", "chat_template_kwargs.x[1]", "JSON"),
        ('chat_template_kwargs = { api_key = "k" }', "chat_template_kwargs.api_key", "--api-key"),
        ("weight = 1e300", "classes[0].weight", "<= 1,000,000"),
        ("conversation = 3", "classes[0].conversation = 3", "turns"),
        ("conversation = { turns = 0 }", "classes[0].conversation.turns = 0", ">= 1"),
        ("conversation = { turns = 100 }", "classes[0].conversation.turns = 100", "<= 64"),
        ("conversation = { turns = 4, turns_max = 2 }", "conversation.turns_max = 2", ">= 4"),
        ("conversation = { think_time = -1 }", "conversation.think_time = -1", ">= 0"),
        ("conversation = { rounds = 2 }", "conversation.rounds", "turns"),
    ],
)
def test_class_errors(fail: Failer, snippet: str, needle: str, hint: str) -> None:
    e = fail(LOAD + '[[classes]]\nprompts = "math-easy"\n' + snippet + "\n")
    assert needle in e.what, e.what
    assert hint in e.hint, e.hint


def test_conversation_needs_the_chat_api(fail: Failer) -> None:
    text = '[load]\nnum_prompts = 3\napi = "completions"\n' + CLASSES + "conversation = { turns = 2 }\n"
    e = fail(text)
    assert "classes[0].conversation needs the chat API" in e.what and "load.api = 'chat'" in e.hint


# --------------------------------------------------------------------------------------------- [arrival]


def test_trace_formats_and_scales(tmp_path: Path, load: Loader, fail: Failer) -> None:
    (tmp_path / "t.jsonl").write_text('{"timestamp": 0, "input_length": 10, "output_length": 5}\n')
    a = load(
        '[arrival]\nprocess = "trace"\ntrace_file = "t.jsonl"\ntrace_format = "mooncake"\nrate_scale = 2\n'
        + CLASSES
    ).arrival
    assert (a.trace_format, a.rate_scale, a.time_scale) == ("mooncake", 2.0, 1.0)
    assert a.trace_file == str((tmp_path / "t.jsonl").resolve())
    a = load(
        '[arrival]\nprocess = "trace"\ntrace_file = "t.jsonl"\ntrace_column = "ts"\ntime_scale = 0.5\n'
        + CLASSES
    ).arrival
    assert (a.trace_format, a.trace_column, a.time_scale) == ("timestamps", "ts", 0.5)
    e = fail('[arrival]\nprocess = "trace"\ntrace_file = "t.jsonl"\ntrace_format = "sharegpt"\n' + CLASSES)
    assert "arrival.trace_format" in e.what and "'burstgpt'" in e.hint
    e = fail(
        '[arrival]\nprocess = "trace"\ntrace_file = "t.jsonl"\ntrace_format = "azure"\ntrace_column = "x"\n'
        + CLASSES
    )
    assert "arrival.trace_column" in e.what and "fixes the columns" in e.what
    e = fail('[arrival]\nprocess = "trace"\ntrace_file = "t.jsonl"\ntime_scale = 1e308\n' + CLASSES)
    assert "arrival.time_scale = 1e+308: out of range" in e.what and "<= 1,000" in e.hint
    e = fail('[arrival]\nprocess = "trace"\ntrace_file = "t.jsonl"\nrate_scale = 0\n' + CLASSES)
    assert "arrival.rate_scale = 0" in e.what
    e = fail("[arrival]\nrate_scale = 2\n" + LOAD + CLASSES)
    assert "arrival.rate_scale" in e.what and "not used by arrival.process = 'gamma'" in e.what


def test_ramp_up(load: Loader, fail: Failer) -> None:
    a = load(
        '[arrival]\nramp_up_strategy = "linear"\nramp_up_start_rate = 1\nramp_up_end_rate = 8\nburstiness = 0.5\n'
        + LOAD
        + CLASSES
    ).arrival
    assert (a.process, a.ramp_up_strategy, a.ramp_up_start_rate, a.ramp_up_end_rate) == (
        "gamma",
        "linear",
        1.0,
        8.0,
    )
    a = load(
        '[arrival]\nprocess = "constant"\nramp_up_strategy = "exponential"\nramp_up_start_rate = 2\nramp_up_end_rate = 2\n'
        + LOAD
        + CLASSES
    ).arrival
    assert a.ramp_up_strategy == "exponential"
    ramp = '[arrival]\nramp_up_strategy = "linear"\nramp_up_start_rate = 1\nramp_up_end_rate = 4\n'
    cases = [
        ('[arrival]\nramp_up_strategy = "step"\n' + LOAD, "arrival.ramp_up_strategy", "'exponential'"),
        (
            '[arrival]\nramp_up_strategy = "linear"\nramp_up_end_rate = 4\n' + LOAD,
            "arrival.ramp_up_start_rate is missing",
            "number",
        ),
        ("[arrival]\nramp_up_start_rate = 1\n" + LOAD, "needs arrival.ramp_up_strategy", "linear"),
        (ramp + "rate = 3\n" + LOAD, "arrival.rate = 3: a ramp-up sets the rate", "remove rate"),
        (ramp + "rescale = true\n" + LOAD, "arrival.rescale", "remove rescale"),
        (
            '[arrival]\nramp_up_strategy = "linear"\nramp_up_start_rate = 4\nramp_up_end_rate = 1\n' + LOAD,
            "below ramp_up_start_rate",
            ">= the start rate",
        ),
        (
            '[arrival]\nramp_up_strategy = "linear"\nramp_up_start_rate = 0\nramp_up_end_rate = 1\n' + LOAD,
            "ramp_up_start_rate = 0",
            "> 0",
        ),
        (
            '[arrival]\nramp_up_strategy = "linear"\nramp_up_start_rate = 1\nramp_up_end_rate = inf\n' + LOAD,
            "must be finite",
            "> 0",
        ),
        (ramp + "[load]\nduration = 30\n", "ramp_up_strategy needs load.num_prompts", "num_prompts"),
        (
            '[arrival]\nprocess = "burst"\nburst_size = 3\nramp_up_strategy = "linear"\n',
            "arrival.ramp_up_strategy",
            "burst_size",
        ),
    ]
    for text, needle, hint in cases:
        e = fail(text + CLASSES)
        assert needle in e.what, (text, e.what)
        assert hint in e.hint, (text, e.hint)
    e = fail(ramp + LOAD + CLASSES, {"request_rate": 3.0})
    assert e.what.startswith("--request-rate 3.0: a ramp-up sets the rate")
    e = fail(
        '[arrival]\nramp_up_strategy = "linear"\nramp_up_start_rate = 1e-9\nramp_up_end_rate = 2e-9\n'
        + LOAD
        + CLASSES
    )
    assert "the schedule would span about" in e.what and "ramp 1e-09 -> 2e-09" in e.what


# ------------------------------------------------------------------------------------------------ [slo]


def test_goodput_both_spellings(load: Loader, fail: Failer) -> None:
    sc = load(MINIMAL + "\n[slo]\nttfvt_p99 = 30\ngoodput = { ttfvt = 30, e2el = 120 }\n")
    assert sc.slo == {"ttfvt_p99": 30.0} and sc.goodput == {"ttfvt": 30.0, "e2el": 120.0}
    sc = load(MINIMAL + "\n[slo.goodput]\nttft = 2.5\nitl = 0.05\n")
    assert sc.slo == {} and sc.goodput == {"ttft": 2.5, "itl": 0.05}
    assert load(MINIMAL).goodput == {}
    e = fail(MINIMAL + "\n[slo.goodput]\ntpot = 1\n")
    assert "slo.goodput.tpot" in e.what and "ttfvt" in e.hint
    e = fail(MINIMAL + "\n[slo.goodput]\nttfvt = 0\n")
    assert "slo.goodput.ttfvt = 0: out of range" in e.what
    e = fail(MINIMAL + "\n[slo]\ngoodput = 30\n")
    assert "slo.goodput = 30: must be a table" in e.what


def test_goodput_in_a_matrix(load: Loader) -> None:
    sc = load(MINIMAL + "\n[matrix]\nslo.goodput.ttfvt = [10, 30]\nengine.faults.error_rate = [0.0, 0.1]\n")
    got = [(s.goodput["ttfvt"], s.engine.faults["error_rate"]) for _, s in matrix_cells(sc)]
    assert got == [(10.0, 0.0), (10.0, 0.1), (30.0, 0.0), (30.0, 0.1)]
    assert sc.goodput == {} and sc.engine.faults == {}, "the base scenario is not touched by its cells"


# ------------------------------------------------------------------------------------------- shipped


def test_fleet_scenario_is_shipped_and_skews(tmp_path: Path) -> None:
    sc = load_scenario("fleet")
    e = sc.engine
    assert (e.kind, e.replicas, e.balance) == ("sim", 4, "round_robin")
    assert sc.arrival.process == "trace" and sc.arrival.trace_format == "mooncake" and sc.load.ignore_eos
    assert "every 4th request" in sc.description
    import json

    rows = [json.loads(x) for x in Path(sc.arrival.trace_file or "").read_text().splitlines()]
    heavy = [i for i, r in enumerate(rows) if r["output_length"] > 1000]
    assert heavy and all(i % e.replicas == 0 for i in heavy), "round_robin gives every heavy one to replica 0"
    assert [r["timestamp"] for r in rows] == sorted(r["timestamp"] for r in rows)
    per_replica = [
        sum(r["input_length"] + r["output_length"] for r in rows[k :: e.replicas]) for k in range(4)
    ]
    assert per_replica[0] > 10 * max(per_replica[1:]), per_replica
