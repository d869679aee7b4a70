"""End to end: a headless run against the simulator, recorded, checked against the simulator's own counters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from rllmtop.commands import build_session
from rllmtop.engines.adapters import adapter_for
from rllmtop.events import RequestEvent, RequestKind, RequestStatus, SessionState
from rllmtop.metrics.prom import parse_scrape
from rllmtop.record.reader import open_recording
from rllmtop.record.replay import ReplaySource
from rllmtop.scenario import load_scenario
from rllmtop.sim.profiles import EngineOptions, load_profile
from rllmtop.sim.server import ServerOptions, serve_in_background

SCENARIO = """name = "record-it"
seed = 5
[engine]
kind = "url"
url = "{url}"
[arrival]
process = "gamma"
rate = 40
burstiness = 0.5
[load]
num_prompts = 40
grace_period = 30
[[classes]]
name = "easy"
max_tokens = 1500
prompts = {{ builtin = "math-easy" }}
[[classes]]
name = "hard"
max_tokens = 1500
prompts = {{ builtin = "math-hard" }}
"""


@pytest.fixture
async def sim_url() -> AsyncIterator[str]:
    # few sequences at once so requests queue in the engine and the waiting gauge moves
    opts = ServerOptions(
        profile=load_profile("rllm-7b"), port=0, speed=40.0, seed=3, engine=EngineOptions(max_num_seqs=8)
    )
    async with serve_in_background(opts) as url:
        yield url


async def test_a_recorded_run_matches_the_simulators_counters(sim_url: str, tmp_path: Path) -> None:
    sc = tmp_path / "record-it.toml"
    sc.write_text(SCENARIO.format(url=sim_url), encoding="utf-8")
    path = tmp_path / "run.db"
    session = build_session(load_scenario(str(sc), {}), mode="headless", record=path, scrape_interval=0.05)
    outcome = await session.run()
    assert outcome.state is SessionState.DONE, outcome.detail

    async with httpx.AsyncClient() as c:
        text = (await c.get(sim_url + "/metrics")).text
    final = parse_scrape(text, adapter_for("sim"), t=0.0)
    assert final.ok

    def total(name: str) -> float:
        return sum(s.value for s in final.samples if s.name == name)

    with open_recording(path) as rec:
        assert rec.status is SessionState.DONE
        assert rec.info.engine_kind == "sim" and rec.info.scenario_name == "record-it"
        reqs = rec.requests()
        scrapes = rec.scrapes(full=True)
        replayed: list[RequestEvent] = []
        stop = asyncio.Event()
        src = ReplaySource(rec, speed=64, exit_at_end=True)
        await asyncio.wait_for(
            src.run(lambda r: replayed.append(r) if isinstance(r, RequestEvent) else None, stop), 60
        )

    # requests and token totals: what the simulator counted
    assert len(reqs) == 40 and len({r.rid for r in reqs}) == 40
    ok = [r for r in reqs if r.status is RequestStatus.OK]
    assert len(ok) == total("request_success_total") == 40
    assert sum(r.completion_tokens or 0 for r in ok) == total("generation_tokens_total")
    assert sum(r.prompt_tokens or 0 for r in ok) == total("prompt_tokens_total")
    assert sum(r.output_tokens for r in ok) == total("generation_tokens_total")  # reasoning + answer
    assert all(r.gaps and r.t_first_token is not None for r in ok)

    # the recorded series are the simulator's: sane ranges, the counters only grow, the engine was busy
    good = [s for s in scrapes if s.ok]
    assert len(good) >= 10 and len(good) >= 0.9 * len(scrapes)
    kv = [m.value for s in good for m in s.samples if m.name == "kv_cache_usage"]
    running = [m.value for s in good for m in s.samples if m.name == "requests_running"]
    waiting = [m.value for s in good for m in s.samples if m.name == "requests_waiting"]
    assert len(kv) == len(running) == len(waiting) == len(good)
    assert all(0 <= v <= 1 for v in kv) and max(kv) > 0
    assert max(running) <= 8 and max(running) > 0 and max(waiting) > 0
    gen = [m.value for s in good for m in s.samples if m.name == "generation_tokens_total"]
    assert gen == sorted(gen) and gen[-1] <= total("generation_tokens_total")
    assert not any(s.counter_reset for s in good)
    assert all("sim_lag_seconds" not in s.missing for s in good)
    # engine-side occupancy agrees with the client's view: running + waiting never exceeds what the
    # client had in flight around that scrape (generous window for a loaded machine)
    agree = 0
    for s in good:
        occ = sum(m.value for m in s.samples if m.name in ("requests_running", "requests_waiting"))
        lo, hi = s.t - s.latency_s - 0.25, s.t + 0.25
        in_flight = sum(
            1 for r in reqs if r.t_sent is not None and r.t_sent <= hi and (r.t_done or 1e9) >= lo
        )
        agree += occ <= in_flight
    assert agree >= 0.9 * len(good)

    # replaying the file gives every request back, ending with its record
    done = [e.record for e in replayed if e.kind is RequestKind.DONE and e.record is not None]
    assert sorted(done, key=lambda r: r.rid) == sorted(ok, key=lambda r: r.rid)
