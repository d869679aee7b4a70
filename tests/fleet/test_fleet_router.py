"""A real vllm-router (0.1.17, the Rust binary from PyPI) in front of two simulated engines: rllmtop
drives the load through the router and watches each engine's own /metrics, never the router's.

The two engines are told apart by their KV capacity (``--num-gpu-blocks-override`` 2500 and 5000): the
router's /metrics answers with one worker's series per request, so had rllmtop read it as the fleet's,
an engine's series would show the other's capacity. Found through ``GET /list_workers`` (the router URL
alone) and given explicitly (engines + ``--load-url``, from the command line). Skipped where
vllm-router is not installed (``pip install vllm-router==0.1.17``). Every process is ended by its PID.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from rllmtop.commands import build_session
from rllmtop.events import LogEvent, RequestRecord, RequestStatus, Scrape, SessionState
from rllmtop.record.reader import open_recording
from rllmtop.scenario import EngineSpec, load_scenario
from tests.fleet.fleet_procs import Collector, router_binary, sims_each, start_router, stop

pytestmark = [
    pytest.mark.router,
    pytest.mark.skipif(router_binary() is None, reason="needs vllm-router (pip install vllm-router==0.1.17)"),
    pytest.mark.timeout(120),
]

BLOCKS = (2500, 5000)  # engine i's KV capacity: what tells the two engines' series apart
PROMPTS = 8
ROOT = Path(__file__).resolve().parents[2]


SIM_ARGS = [
    ["--speed", "20", "--seed", str(i), "--num-gpu-blocks-override", str(b)] for i, b in enumerate(BLOCKS)
]


def _scenario(tmp_path: Path) -> Path:
    f = tmp_path / "router.toml"
    f.write_text(
        'name = "through-a-router"\nseed = 11\n'
        f'[arrival]\nprocess = "constant"\nrate = 20\n[load]\nnum_prompts = {PROMPTS}\n'
        '[[classes]]\nname = "e"\nprompts = "math-easy"\nmax_tokens = 128\n'
    )
    return f


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def _served(base: str) -> float:
    """Requests the engine at ``base`` says it finished (its own /metrics, every finished_reason)."""
    lines = _get(base + "/metrics").splitlines()
    return sum(float(x.rsplit(" ", 1)[1]) for x in lines if x.startswith("vllm:request_success_total{"))


def _blocks(s: Scrape) -> float | None:
    return next((m.value for m in s.samples if m.name == "kv_total_blocks"), None)


def _router_flips(router: str) -> set[float]:
    """The KV capacities successive GETs of the router's /metrics show (one worker's per request)."""
    seen = set()
    for _ in range(6):
        for x in _get(router + "/metrics").splitlines():
            if x.startswith("vllm:cache_config_info{"):
                seen.add(float(x.split('num_gpu_blocks="', 1)[1].split('"', 1)[0]))
    return seen


def _check_per_engine(scrapes: list[Scrape], engines: list[str], router: str) -> list[float]:
    """Both engines' series present under their own ids, each only ever showing its own capacity, the
    router never an engine; returns each engine's finished count (as it says itself)."""
    ids = {s.engine_id for s in scrapes}
    assert ids == set(engines) and router not in ids, ids
    for eng, blocks in zip(engines, BLOCKS, strict=True):
        ok = [s for s in scrapes if s.engine_id == eng and s.ok]
        assert len(ok) >= 2, eng
        seen = {_blocks(s) for s in ok}
        assert seen == {float(blocks)}, (eng, seen)  # never the other engine's series
        assert any(m.name == "kv_cache_usage" for m in ok[-1].samples)
    served = [_served(e) for e in engines]
    assert sum(served) == PROMPTS, served
    assert min(served) >= 1 and abs(served[0] - served[1]) <= 1, served  # round_robin: spread over both
    return served


async def test_the_router_url_alone_its_workers_watched_the_load_through_it(tmp_path: Path) -> None:
    with sims_each(SIM_ARGS) as started:
        engines = [b for _, b in started]
        router_proc, router = await asyncio.to_thread(start_router, engines)
        try:
            # what rllmtop must not do: the router's /metrics is one worker's series at a time
            assert await asyncio.to_thread(_router_flips, router) == {float(b) for b in BLOCKS}

            sc = load_scenario(str(_scenario(tmp_path)))
            db = tmp_path / "router.db"
            spec = EngineSpec(kind="url", url=router)
            session = build_session(sc, mode="attach", engine=spec, record=db)
            sink = Collector()
            session.add_sink(sink)
            outcome = await asyncio.wait_for(session.run(), 90)
            assert outcome.state is SessionState.DONE, outcome.detail
            served = await asyncio.to_thread(_check_per_engine, sink.scrapes(), engines, router)
        finally:
            stop(router_proc)

    logs = [r.text for r in sink.records if isinstance(r, LogEvent)]
    assert any(router in t and "is a router in front of 2 worker(s)" in t for t in logs), logs
    rec = open_recording(db)
    assert sorted(e.id for e in rec.info.engines) == sorted(engines)  # the workers (the router's order)
    assert rec.info.load_url == router
    reqs = rec.requests()
    assert len(reqs) == PROMPTS and all(r.status is RequestStatus.OK for r in reqs)
    assert all(r.engine == "" for r in reqs)  # behind a router, which engine served it is unknown
    # the recording holds each engine's own series: its final count is what the engine said
    for eng, n in zip(engines, served, strict=True):
        last = [s for s in rec.scrapes(full=True) if s.engine_id == eng and s.ok][-1]
        assert sum(m.value for m in last.samples if m.name == "request_success_total") == n


def test_engines_given_with_load_url_from_the_command_line(tmp_path: Path) -> None:
    with sims_each(SIM_ARGS) as started:
        engines = [b for _, b in started]
        router_proc, router = start_router(engines)
        try:
            db = tmp_path / "cli.db"
            cmd = [sys.executable, "-m", "rllmtop", "attach", *engines, "--load-url", router]
            cmd += ["--scenario", str(_scenario(tmp_path)), "--headless", "--record", str(db)]
            env = {**os.environ, "NO_COLOR": "1"}
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=90, env=env)
            assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
            rec = open_recording(db)
            scrapes = rec.scrapes(full=True)
            served = _check_per_engine(scrapes, engines, router)
        finally:
            stop(router_proc)
    assert [e.id for e in rec.info.engines] == engines and rec.info.load_url == router
    reqs: list[RequestRecord] = rec.requests()
    assert len(reqs) == PROMPTS and all(r.status is RequestStatus.OK and r.engine == "" for r in reqs)
    for eng, n in zip(engines, served, strict=True):
        last = [s for s in scrapes if s.engine_id == eng and s.ok][-1]
        assert sum(m.value for m in last.samples if m.name == "request_success_total") == n
