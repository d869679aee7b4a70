"""A session over a fleet, against real simulator processes: replicas launched in parallel and torn down
by their process groups, a replica lost mid-run (the fleet goes on, and says so), every replica lost
(ENGINE_DIED), a replica that cannot start (the others are stopped), attached engines of which one is
down, a model one engine does not serve, and a mixed simulator + SGLang fleet."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from pathlib import Path

import pytest

from rllmtop.commands import build_session
from rllmtop.engines import launch_args
from rllmtop.engines.launcher import group_alive
from rllmtop.events import LogEvent, SessionInfo, SessionState
from rllmtop.record.reader import open_recording
from rllmtop.scenario import EngineEndpoint, EngineSpec, load_scenario
from tests.fleet.fleet_procs import Collector, free_port, sglang_engine, sims

pytestmark = pytest.mark.timeout(90)

REPLICAS = EngineSpec(kind="sim", speed=20, replicas=3, balance="round_robin")


def _scenario(tmp_path: Path, engine: str = "", extra: str = "") -> Path:
    f = tmp_path / "fleet.toml"
    f.write_text(
        f'name = "fleet-test"\nseed = 5\n{extra}\n[engine]\n{engine}\n'
        '[arrival]\nprocess = "constant"\nrate = 20\n[load]\nnum_prompts = 6\n'
        '[[classes]]\nname = "e"\nprompts = "math-easy"\nmax_tokens = 256\n'
    )
    return f


def _pgids(session: object) -> list[int]:
    procs = session.engines.processes  # type: ignore[attr-defined]
    return [p.pgid for p in procs if p.pgid is not None]


async def test_replicas_start_in_parallel_are_each_watched_and_all_torn_down(tmp_path: Path) -> None:
    db = tmp_path / "replicas.db"
    # 10 simulated seconds = 0.5 s of wall time at speed 20: room for several scrapes of each replica on a
    # loaded machine (one scrape took 0.16 s of wall time at load average 6; 1.5 s = 75 ms was too short)
    session = build_session(None, mode="headless", engine=REPLICAS, record=db, duration=10.0)
    sink = Collector()
    session.add_sink(sink)
    outcome = await asyncio.wait_for(session.run(), 60)
    assert outcome.state is SessionState.DONE, outcome.detail
    pgids = _pgids(session)
    assert len(pgids) == 3 and len(set(pgids)) == 3  # each its own process group
    assert not any(group_alive(g) for g in pgids)
    rec = open_recording(db)
    engines = rec.info.engines
    assert len(engines) == 3 and all(e.launched and e.kind == "sim" and e.version for e in engines)
    ids = [e.id for e in engines]
    assert len(set(ids)) == 3 and all(i.startswith("http://127.0.0.1:") for i in ids)
    assert rec.info.engine_kind == "sim" and ("replicas", "3") in rec.info.extra
    for i in ids:  # every replica scraped, under its own id
        ok = [s for s in rec.scrapes(full=True) if s.engine_id == i and s.ok]
        assert len(ok) >= 2 and any(m.name == "kv_cache_usage" for m in ok[-1].samples)
    target = session.engines.target  # type: ignore[union-attr]
    assert target is not None and target.balance == "round_robin"
    assert [e.engine_id for e in target.endpoints] == ids
    assert target.endpoints[0].url == target.url
    # the facts were published once the fleet was known, with every engine in them
    infos = [r for r in sink.records if isinstance(r, SessionInfo)]
    assert len(infos[-1].engines) == 3 and infos[-1].load_url == ""  # no load: nothing sent anywhere


async def test_a_replica_lost_mid_run_does_not_end_the_run_and_the_status_says_so(tmp_path: Path) -> None:
    db = tmp_path / "lost.db"
    # 20 simulated seconds = 1 s of wall time at speed 20: the kill lands well inside the run when loaded
    session = build_session(None, mode="headless", engine=REPLICAS, record=db, duration=20.0)
    sink = Collector()
    session.add_sink(sink)
    task = asyncio.get_running_loop().create_task(session.run())
    await asyncio.wait_for(sink.running.wait(), 60)
    procs = session.engines.processes  # type: ignore[union-attr]
    ids = list(session.engines.engine_ids)  # type: ignore[union-attr]
    await sink.until(lambda: all(any(s.ok for s in sink.scrapes(i)) for i in ids))
    victim = procs[1]
    assert victim.pgid is not None
    os.killpg(victim.pgid, signal.SIGKILL)  # the replica's whole process group, by its id
    killed_at = session.clock.now()
    outcome = await asyncio.wait_for(task, 60)
    assert outcome.state is SessionState.DONE and outcome.exit_code == 0
    assert "1 of 3 engines exited during the run" in outcome.detail and ids[1] in outcome.detail
    rec = open_recording(db)
    assert rec.status is SessionState.DONE and "1 of 3 engines exited" in rec.status_detail
    late = [s for s in rec.scrapes(full=True) if s.engine_id == ids[1] and s.t > killed_at + 0.5]
    assert late and all(not s.ok and not s.samples for s in late)  # shown down, never zeros
    for i in (ids[0], ids[2]):  # the others went on being watched
        assert any(s.ok and s.t > killed_at + 0.5 for s in rec.scrapes(full=True) if s.engine_id == i)
    errors = [r.text for r in sink.records if isinstance(r, LogEvent) and r.level == "error"]
    assert any("2 of 3 engines still serving" in t for t in errors)
    assert not any(group_alive(g) for g in _pgids(session))


async def test_every_replica_exiting_ends_engine_died(tmp_path: Path) -> None:
    spec = dataclasses.replace(REPLICAS, replicas=2, faults={"exit_after": 1.5})
    session = build_session(None, mode="headless", engine=spec, record=tmp_path / "d.db", duration=60)
    outcome = await asyncio.wait_for(session.run(), 60)
    assert outcome.state is SessionState.ENGINE_DIED and outcome.exit_code == 3
    assert outcome.detail.startswith("all 2 engines exited (codes 1, 1)")
    assert open_recording(tmp_path / "d.db").status is SessionState.ENGINE_DIED


async def test_a_replica_that_cannot_start_stops_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = launch_args.build_command
    calls = 0

    def second_fails(*args: object, **kw: object) -> launch_args.LaunchPlan:
        nonlocal calls
        calls += 1
        plan = real(*args, **kw)  # type: ignore[arg-type]
        if calls == 2:
            bad = (sys.executable, "-c", "import sys; print('no such model'); sys.exit(3)")
            plan = dataclasses.replace(plan, argv=bad)
        return plan

    monkeypatch.setattr(launch_args, "build_command", second_fails)
    session = build_session(None, mode="headless", engine=REPLICAS, record=None, duration=30)
    outcome = await asyncio.wait_for(session.run(), 60)
    assert outcome.state is SessionState.FAILED
    assert outcome.detail.startswith("replica 2 of 3: sim replica 2/3 exited with code 3")
    pgids = _pgids(session)
    assert len(pgids) == 3 and not any(group_alive(g) for g in pgids)


async def test_attached_engines_one_down_is_watched_and_shown_down(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with sims(2, "--speed", "20") as started:
        (_, a), (_, b) = started
        spec = EngineSpec(kind="url", endpoints=(EngineEndpoint(a), EngineEndpoint(dead), EngineEndpoint(b)))
        db = tmp_path / "down.db"
        session = build_session(None, mode="attach", engine=spec, record=db, duration=1.5)
        sink = Collector()
        session.add_sink(sink)
        outcome = await asyncio.wait_for(session.run(), 60)
        assert outcome.state is SessionState.DONE, outcome.detail
        rec = open_recording(db)
        assert [e.id for e in rec.info.engines] == [a, dead, b]
        assert {e.id: e.kind for e in rec.info.engines} == {a: "sim", dead: "unknown", b: "sim"}
        down = [s for s in rec.scrapes(full=True) if s.engine_id == dead]
        assert down and all(not s.ok and "cannot connect" in s.error for s in down)
        assert all(any(s.ok for s in rec.scrapes(full=True) if s.engine_id == i) for i in (a, b))
        warnings = [r.text for r in sink.records if isinstance(r, LogEvent) and r.level == "warning"]
        assert any(dead in t and "does not answer at start" in t for t in warnings)

        # balancing load over an engine that does not answer is refused before anything is sent
        sc = load_scenario(str(_scenario(tmp_path)))
        bal = dataclasses.replace(spec, balance="round_robin")
        out = await asyncio.wait_for(build_session(sc, mode="attach", engine=bal, record=None).run(), 60)
        assert out.state is SessionState.FAILED
        assert dead in out.detail and "the load is balanced over it" in out.detail


async def test_every_engine_the_load_goes_to_must_serve_the_model(tmp_path: Path) -> None:
    with sims(2, "--speed", "20", "--served-model-name", "model-{i}") as started:
        (_, a), (_, b) = started
        sc = load_scenario(str(_scenario(tmp_path)), {"model": "model-0"})
        spec = EngineSpec(kind="url", endpoints=(EngineEndpoint(a), EngineEndpoint(b)), balance="round_robin")
        out = await asyncio.wait_for(build_session(sc, mode="attach", engine=spec, record=None).run(), 60)
        assert out.state is SessionState.FAILED
        assert out.detail == f"{b} does not serve 'model-0' (it serves 'model-1')"


async def test_a_mixed_simulator_and_sglang_fleet(tmp_path: Path) -> None:
    with sims(1, "--speed", "20") as started:
        ((_, a),) = started
        async with sglang_engine() as sg:
            spec = EngineSpec(kind="url", endpoints=(EngineEndpoint(a), EngineEndpoint(sg, name="sglang-0")))
            db = tmp_path / "mixed.db"
            outcome = await asyncio.wait_for(
                build_session(None, mode="attach", engine=spec, record=db, duration=1.0).run(), 60
            )
            assert outcome.state is SessionState.DONE, outcome.detail
    rec = open_recording(db)
    assert {e.id: (e.kind, e.version) for e in rec.info.engines} == {
        a: ("sim", "0.1.0"),
        sg: ("sglang", "0.5.2"),
    }
    assert rec.info.engine_kind == "sglang+sim" and rec.info.model == "rllm-7b"
    sg_ok = [s for s in rec.scrapes(full=True) if s.engine_id == sg and s.ok]
    assert sg_ok
    running = {m.labels: m.value for m in sg_ok[-1].samples if m.name == "requests_running"}
    lab0 = (("engine", "0"), ("engine_type", "unified"), ("moe_ep_rank", "0"), ("pp_rank", "0"))
    assert running[lab0] == 12.0  # SGLang's series mapped by SGLang's adapter, in the same session
