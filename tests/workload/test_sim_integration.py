"""The runner against the embedded simulator, a separate process serving real HTTP on 127.0.0.1.

Per-request facts (TTFT <= TTFVT <= E2E, reasoning + answer = completion tokens), grades checked against
the simulator's own output plans, the three reasoning wire formats, cancellation, fault injection, and a
Kolmogorov-Smirnov test of realized send times.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from rllmtop.clock import Clock
from rllmtop.events import ENDED, RequestKind, RequestRecord, RequestStatus
from rllmtop.scenario import Scenario, load_scenario
from rllmtop.workload.arrivals import schedule
from rllmtop.workload.prompts import PromptMix, load_scenario_prompts
from rllmtop.workload.runner import Runner
from rllmtop.workload.schedule import request_seed

from .test_runner import Sink

pytest.importorskip("rllmtop.sim.server")

LINE = re.compile(r"Starting rllmtop sim server on (http://127\.0\.0\.1:\d+)")


class _Sim:
    def __init__(self, args: tuple[str, ...], log: Path) -> None:
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rllmtop.sim", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.url = ""
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # keep reading so the pipe never fills
            m = LINE.search(line)
            if m and not self.url:
                self.url = m.group(1)
                self.ready.set()
        self.ready.set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Callable[..., str]]:
    started: list[_Sim] = []

    def start(*args: str) -> str:
        s = _Sim(args, tmp_path / f"sim{len(started)}.log")
        started.append(s)
        if not s.ready.wait(30) or not s.url:
            s.stop()
            raise AssertionError(
                f"sim did not start: {(tmp_path / f'sim{len(started) - 1}.log').read_text()}"
            )
        return s.url

    yield start
    for s in started:
        s.stop()


def make(tmp_path: Path, body: str, name: str = "s.toml") -> Scenario:
    p = tmp_path / name
    p.write_text(body)
    return load_scenario(str(p))


MIXED = """
seed = 5
[arrival]
process = "gamma"
rate = 40
burstiness = 0.5
[load]
num_prompts = 48
{load}
[[classes]]
name = "easy"
prompts = "math-easy"
max_tokens = 1500
[[classes]]
name = "medium"
prompts = "math-medium"
max_tokens = 1500
[[classes]]
name = "mcq"
prompts = "mcq"
max_tokens = 1500
[[classes]]
name = "nothink"
prompts = "math-easy"
thinking = false
max_tokens = 1500
"""


async def run(sc: Scenario, url: str, model: str = "rllm-7b", **kw: Any) -> tuple[Runner, Sink]:
    sink = Sink()
    r = Runner(sc, base_url=url, model=model, api_key=None, clock=Clock(), publish=sink, **kw)
    await asyncio.wait_for(r.run(), 60)
    return r, sink


def expected_plans(sc: Scenario, profile: str = "rllm-7b", server_seed: int = 0) -> list[Any]:
    """What the simulator will answer to each request of the scenario, computed offline."""
    from rllmtop.sim.outputs import RequestFactory
    from rllmtop.sim.profiles import build_engine_config, load_profile
    from rllmtop.sim.virtual import Arrival, prepare_request

    prof = load_profile(profile)
    factory = RequestFactory(prof.outputs, server_seed)
    config = build_engine_config(prof)
    times = schedule(sc.arrival, sc.load.num_prompts, sc.load.duration, sc.seed)
    picks = PromptMix(sc.classes, load_scenario_prompts(sc), sc.seed).draw(len(times))
    plans = []
    for rid, (c, item) in enumerate(picks):
        cls = sc.classes[c]
        arrival = Arrival(0.0, item.text, cls.max_tokens, request_seed(sc.seed, rid), cls.thinking)
        plans.append(prepare_request(factory, arrival, config, str(rid), reasons=prof.outputs.reasons).plan)
    return plans


def check_facts(rec: RequestRecord) -> None:
    assert rec.status is RequestStatus.OK and rec.http_status == 200, rec.error
    assert rec.t_sent is not None and rec.t_first_token is not None and rec.t_done is not None
    assert rec.t_scheduled <= (rec.t_dispatch or 0) <= rec.t_sent <= rec.t_first_token <= rec.t_done
    ttft, e2e = rec.ttft, rec.e2e
    assert ttft is not None and e2e is not None and 0 <= ttft <= e2e
    if rec.t_first_visible is not None:
        assert rec.ttfvt is not None and ttft <= rec.ttfvt <= e2e
    assert rec.completion_tokens is not None
    assert rec.reasoning_tokens + rec.answer_tokens == rec.completion_tokens


async def test_facts_and_grades_match_the_simulator(tmp_path: Path, sim: Callable[..., str]) -> None:
    url = sim("--speed", "100")
    sc = make(tmp_path, MIXED.format(load=""))
    r, sink = await run(sc, url)
    assert (r.planned, r.sent, r.done, r.failed) == (48, 48, 48, 0)
    finals = {e.rid: e.record for e in sink.events() if e.kind in ENDED and e.record is not None}
    plans = expected_plans(sc)
    seen_classes = set()
    for rid, rec in finals.items():
        assert rec is not None
        check_facts(rec)
        plan = plans[rid]
        seen_classes.add(rec.cls)
        assert rec.completion_tokens == plan.n_tokens
        assert rec.finish_reason == plan.finish_reason
        assert rec.tokens_exact, rec.split_note
        if rec.cls == "nothink":
            assert rec.reasoning_tokens == 0 and rec.t_first_visible == rec.t_first_token
        else:
            assert rec.reasoning_tokens == plan.reasoning_tokens > 0
            assert rec.t_first_reasoning == rec.t_first_token and rec.t_reasoning_end is not None
        # grading is right exactly when the simulator meant to be right
        assert rec.correct == plan.correct, (rec.extracted, plan.answer, plan.reference)
        if plan.finish_reason == "stop":
            assert rec.extracted == plan.answer
    assert seen_classes == {"easy", "medium", "mcq", "nothink"}
    assert 0 < sum(bool(x.correct) for x in finals.values() if x) < 48


async def test_wire_variants_give_the_same_counts(tmp_path: Path, sim: Callable[..., str]) -> None:
    sc = make(tmp_path, MIXED.format(load="").replace("num_prompts = 48", "num_prompts = 16"))
    results = {}
    for name, args in {
        "reasoning": (),
        "reasoning_content": ("--reasoning-field", "reasoning_content"),
        "inline": ("--reasoning-parser", "none"),
    }.items():
        url = sim("--speed", "100", *args)
        _, sink = await run(sc, url)
        results[name] = {e.rid: e.record for e in sink.events() if e.kind in ENDED and e.record is not None}
    base = results["reasoning"]
    for name, recs in results.items():
        assert sorted(recs) == sorted(base)
        for rid, rec in recs.items():
            ref = base[rid]
            assert rec is not None and ref is not None
            check_facts(rec)
            assert rec.completion_tokens == ref.completion_tokens and rec.correct == ref.correct, name
            # inline tags are tokens of the think block; usage-based counts may differ by the tags
            assert abs(rec.reasoning_tokens - ref.reasoning_tokens) <= 2, (name, rec, ref)
            assert (rec.t_first_visible is None) == (ref.t_first_visible is None), name


async def test_token_ids_make_counts_exact(tmp_path: Path, sim: Callable[..., str]) -> None:
    url = sim("--speed", "100")
    sc = make(
        tmp_path, MIXED.format(load="return_token_ids = true").replace("num_prompts = 48", "num_prompts = 12")
    )
    _, sink = await run(sc, url)
    recs = [e.record for e in sink.events() if e.kind in ENDED and e.record is not None]
    assert len(recs) == 12
    for rec in recs:
        check_facts(rec)
        assert rec.tokens_exact, rec.split_note


async def test_cancellation_against_the_simulator(tmp_path: Path, sim: Callable[..., str]) -> None:
    url = sim("--speed", "5")
    body = """
[arrival]
process = "burst"
burst_size = 6
[[classes]]
prompts = "math-hard"
max_tokens = 16000
"""
    sc = make(tmp_path, body)
    sink = Sink()
    r = Runner(sc, base_url=url, model="rllm-7b", api_key=None, clock=Clock(), publish=sink)
    task = asyncio.create_task(r.run())
    await sink.until(lambda: len({e.rid for e in sink.events(RequestKind.PROGRESS)}) == 6)
    r.cancel()
    await asyncio.wait_for(task, 10)
    recs = [e.record for e in sink.events(RequestKind.FAILED)]
    assert len(recs) == 6 and r.failed == 6
    for rec in recs:
        assert rec is not None and rec.status is RequestStatus.CANCELLED
        assert rec.reasoning_tokens > 0 and rec.t_first_visible is None and rec.correct is None
    # the server is fine afterwards
    small = make(tmp_path, MIXED.format(load="").replace("num_prompts = 48", "num_prompts = 2"), "t.toml")
    r2, _ = await run(small, url)
    assert r2.done == 2


async def test_fault_injection(tmp_path: Path, sim: Callable[..., str]) -> None:
    url = sim(
        "--speed",
        "100",
        "--seed",
        "3",
        "--fault-error-rate",
        "0.15",
        "--fault-rate-limit-rate",
        "0.15",
        "--fault-drop-rate",
        "0.15",
        "--fault-stall-rate",
        "0.15",
        "--fault-stall-seconds",
        "30",
    )
    body = MIXED.format(load="timeout = 1.5").replace("num_prompts = 48", "num_prompts = 60")
    sc = make(tmp_path, body)
    r, sink = await run(sc, url)
    recs = [e.record for e in sink.events() if e.kind in ENDED and e.record is not None]
    assert len(recs) == 60 and r.done + r.failed == 60
    errors = [x.error or "" for x in recs if x is not None and x.status is RequestStatus.ERROR]
    kinds = {
        "500": sum(e.startswith("HTTP 500:") for e in errors),
        "429": sum(e.startswith("HTTP 429:") for e in errors),
        "drop": sum("closed by" in e and "mid-stream" in e for e in errors),
        "stall": sum(e.startswith("timed out after 1.5 s") for e in errors),
    }
    assert all(v > 0 for v in kinds.values()), (kinds, errors)
    assert sum(kinds.values()) == len(errors)
    for x in recs:
        assert x is not None
        if x.status is RequestStatus.OK:
            check_facts(x)
        else:
            assert x.correct is None
            if x.error and x.error.startswith("HTTP"):
                assert x.http_status in (429, 500) and x.t_first_token is None
    logs = [log.text for log in sink.logs() if log.level == "warning"]
    assert logs and len(logs) < len(errors)


async def test_realized_send_times_follow_the_gamma_schedule(tmp_path: Path, sim: Callable[..., str]) -> None:
    url = sim("--speed", "1000")
    rate, b = 100.0, 0.5
    body = f"""
seed = 11
[arrival]
process = "gamma"
rate = {rate}
burstiness = {b}
[load]
num_prompts = 300
[[classes]]
prompts = "math-easy"
max_tokens = 64
"""
    sc = make(tmp_path, body)
    _, sink = await run(sc, url)
    recs = sorted(
        (e.record for e in sink.events() if e.kind in ENDED and e.record is not None), key=lambda x: x.rid
    )
    assert len(recs) == 300
    sent = np.array([x.t_dispatch for x in recs])
    gaps = np.diff(sent)
    res = stats.kstest(gaps, "gamma", args=(b, 0, 1 / (rate * b)))
    assert res.pvalue > 0.01, res
    lag = np.array([x.send_lag for x in recs])
    assert np.percentile(lag, 99) < 0.05


async def test_completions_api(tmp_path: Path, sim: Callable[..., str]) -> None:
    url = sim("--speed", "100")
    sc = make(
        tmp_path, MIXED.format(load='api = "completions"').replace("num_prompts = 48", "num_prompts = 10")
    )
    r, sink = await run(sc, url)
    assert r.done == 10
    for e in sink.events():
        if e.kind in ENDED and e.record is not None:
            check_facts(e.record)
