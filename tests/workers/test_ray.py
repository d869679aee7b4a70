"""Workers as Ray actors, on a real local Ray cluster of 2 nodes (``ray.cluster_utils.Cluster``), sending
to the simulator. Only inside a network namespace whose only interface is loopback (run_ray_tests.sh):
Ray would otherwise bind the machine's address, and tests talk to 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rllmtop.events import RequestStatus, SessionState
from rllmtop.record.reader import open_recording
from rllmtop.workload.ray_workers import RaySender

from .helpers import Watch, scenario, session, wait_gone

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def _only_loopback() -> bool:
    return [name for _, name in socket.if_nameindex()] == ["lo"]


if os.environ.get("RLLMTOP_RAY_NETNS") != "1":
    pytest.skip(
        "Ray tests run inside a loopback-only netns: tests/workers/run_ray_tests.sh", allow_module_level=True
    )
if not _only_loopback():
    raise RuntimeError("RLLMTOP_RAY_NETNS=1 but this network namespace has more than loopback")
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    try:
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()


def _ray_scenario(tmp_path: Path, address: str, **kw: Any) -> Any:
    sc = scenario(tmp_path, **kw)
    return dataclasses.replace(sc, load=dataclasses.replace(sc.load, ray=address))


async def test_one_worker_per_node_sends_the_same_requests(
    tmp_path: Path, cluster: Any, outside_sim: str
) -> None:
    one = await asyncio.wait_for(
        session(scenario(tmp_path, n=120), outside_sim, tmp_path / "one.db").run(), 120
    )
    s = session(_ray_scenario(tmp_path, cluster.address, n=120), outside_sim, tmp_path / "ray.db")
    outcome = await asyncio.wait_for(s.run(), 200)
    assert one.state is outcome.state is SessionState.DONE, outcome.detail
    assert isinstance(s.runner, RaySender) and s.runner.count == 2
    a = {r.rid: r for r in open_recording(tmp_path / "one.db").requests()}
    rec = open_recording(tmp_path / "ray.db")
    b = {r.rid: r for r in rec.requests()}
    assert sorted(a) == sorted(b) == list(range(120))  # drained before the actors were killed: none lost
    for rid in a:
        assert b[rid].t_scheduled - b[0].t_scheduled == pytest.approx(
            a[rid].t_scheduled - a[0].t_scheduled, abs=1e-9
        )
        assert (a[rid].prompt_id, a[rid].output_tokens) == (b[rid].prompt_id, b[rid].output_tokens)
        assert b[rid].worker == rid % 2 + 1 and b[rid].status is RequestStatus.OK
    started = [w for w in rec.worker_events() if w.state == "started"]
    assert len({w.node for w in started}) == 2  # one per node
    assert {r.node for r in b.values()} == {w.node for w in started}
    nodes = {n["NodeID"][:12] for n in ray.nodes() if n["Alive"]} if ray.is_initialized() else None
    assert nodes is None or {w.node for w in started} <= nodes
    # same machine: the measured offsets are tiny (the NTP-style estimate, within its round trip)
    assert all(w.clock_offset is not None and abs(w.clock_offset) < 0.005 for w in started)
    # no offset or death warning (the machine's own trust warnings, e.g. client delay on a loaded box, may be)
    assert not s.runner.warnings and not any("clock" in w or "died" in w for w in outcome.warnings)
    assert max(r.send_lag for r in b.values() if r.send_lag is not None) < 0.25
    assert wait_gone(s.runner.pids) == []  # no actor left behind
    assert not ray.is_initialized()  # the sender connected, so it disconnected


async def test_workers_per_node(tmp_path: Path, cluster: Any, outside_sim: str) -> None:
    s = session(_ray_scenario(tmp_path, cluster.address, n=40, workers=2), outside_sim, tmp_path / "r2.db")
    outcome = await asyncio.wait_for(s.run(), 200)
    assert outcome.state is SessionState.DONE, outcome.detail
    rec = open_recording(tmp_path / "r2.db")
    started = [w for w in rec.worker_events() if w.state == "started"]
    assert len(started) == 4 and len({w.node for w in started}) == 2
    assert sorted(sum(1 for w in started if w.node == n) for n in {w.node for w in started}) == [2, 2]
    assert {r.worker for r in rec.requests()} == {1, 2, 3, 4}
    assert isinstance(s.runner, RaySender) and wait_gone(s.runner.pids) == []


async def test_a_killed_actor_fails_its_in_flight_requests(
    tmp_path: Path, cluster: Any, outside_sim: str
) -> None:
    sc = _ray_scenario(tmp_path, cluster.address, n=200, rate=20.0, prompts="math-hard", max_tokens=4096)
    db = tmp_path / "kill.db"
    s = session(sc, outside_sim, db)
    watch = Watch()
    s.add_sink(watch)
    busy = watch.sent_by(2, 4)
    task = asyncio.get_running_loop().create_task(s.run())
    await asyncio.wait_for(busy.wait(), 120)
    pid = watch.pid_of(2)
    os.kill(pid, signal.SIGKILL)  # the actor's process dies
    outcome = await asyncio.wait_for(task, 200)
    assert outcome.state is SessionState.DONE
    assert f"worker 2 (pid {pid}) died" in outcome.detail and "the other 1 went on" in outcome.detail
    reqs = open_recording(db).requests()
    failed = [r for r in reqs if r.worker == 2 and r.status is RequestStatus.ERROR]
    assert failed and all(f"worker 2 (pid {pid}) died" in (r.error or "") for r in failed)
    assert {r.rid for r in reqs if r.worker == 1} == set(range(0, 200, 2))
    assert isinstance(s.runner, RaySender) and wait_gone(s.runner.pids) == []


async def test_the_stop_policy_reaches_every_actor(tmp_path: Path, cluster: Any, outside_sim: str) -> None:
    sc = _ray_scenario(
        tmp_path, cluster.address, n=400, rate=20.0, prompts="math-hard", max_tokens=4096, grace=0.3
    )
    db = tmp_path / "stop.db"
    s = session(sc, outside_sim, db)
    watch = Watch()
    s.add_sink(watch)
    busy = [watch.sent_by(1, 3), watch.sent_by(2, 3)]
    task = asyncio.get_running_loop().create_task(s.run())
    await asyncio.wait_for(asyncio.gather(*(b.wait() for b in busy)), 120)
    s.stop()  # gentle, then the grace period of 0.3 s cancels what is in flight
    outcome = await asyncio.wait_for(task, 120)
    assert outcome.state is SessionState.INTERRUPTED
    rec = open_recording(db)
    assert any(r.status is RequestStatus.CANCELLED for r in rec.requests())
    assert {w.state for w in rec.worker_events() if w.state != "started"} == {"stopped"}
    assert isinstance(s.runner, RaySender) and wait_gone(s.runner.pids) == []


async def test_an_unreachable_cluster_is_one_clear_error(tmp_path: Path, outside_sim: str) -> None:
    sc = _ray_scenario(tmp_path, "127.0.0.1:1", n=5)
    if ray.is_initialized():
        ray.shutdown()
    outcome = await asyncio.wait_for(session(sc, outside_sim, None).run(), 200)
    assert outcome.state is SessionState.FAILED
    assert outcome.detail.startswith("cannot connect to the Ray cluster at '127.0.0.1:1'")
