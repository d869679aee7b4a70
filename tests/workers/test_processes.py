"""Worker processes, for real: spawned interpreters sending to the simulator (its own process, 127.0.0.1),
records batched back over socket pairs, one recording written by the session. Whole runs, killed workers
under both policies, the session's stop policy, Ctrl-C and SIGTERM at the CLI, a session killed outright."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from rllmtop.events import ClientHealth, RequestRecord, RequestStatus, SessionState
from rllmtop.record.reader import open_recording
from rllmtop.session import SessionOutcome
from rllmtop.workload.workers import ProcessSender

from .helpers import Watch, alive, children, scenario, session, wait_gone

pytestmark = pytest.mark.timeout(180)


def _by_rid(db: Path) -> dict[int, RequestRecord]:
    return {r.rid: r for r in open_recording(db).requests()}


async def test_two_workers_send_the_same_requests_at_the_same_times_as_one(
    tmp_path: Path, outside_sim: str
) -> None:
    sc = scenario(tmp_path, n=300, rate=60.0, process="poisson")
    one = await asyncio.wait_for(session(sc, outside_sim, tmp_path / "one.db").run(), 120)
    two_s = session(
        scenario(tmp_path, n=300, rate=60.0, process="poisson", workers=2), outside_sim, tmp_path / "two.db"
    )
    watch = Watch()
    two_s.add_sink(watch)
    two = await asyncio.wait_for(two_s.run(), 120)
    assert one.state is two.state is SessionState.DONE, (one.detail, two.detail)
    assert isinstance(two_s.runner, ProcessSender) and not one.detail and not two.detail
    a, b = _by_rid(tmp_path / "one.db"), _by_rid(tmp_path / "two.db")
    assert sorted(a) == sorted(b) == list(range(300))  # every request once, none lost in a batch
    t0a, t0b = a[0].t_scheduled, b[0].t_scheduled
    for rid in a:
        x, y = a[rid], b[rid]
        assert (x.cls, x.prompt_id, x.max_tokens) == (y.cls, y.prompt_id, y.max_tokens)
        # the same scheduled time (relative to the run's start: the two runs started at different instants)
        assert y.t_scheduled - t0b == pytest.approx(x.t_scheduled - t0a, abs=1e-9)
        assert (x.reasoning_tokens, x.answer_tokens) == (y.reasoning_tokens, y.answer_tokens)
        assert x.worker == 0 and y.worker == rid % 2 + 1
        assert y.node == socket.gethostname() and y.status is RequestStatus.OK
    # the merged schedule is still the arrival process, and it was kept: KS on realized dispatch times
    recs = [b[r] for r in sorted(b)]
    gaps = np.diff(np.array([r.t_dispatch for r in recs]))
    assert stats.kstest(gaps, "expon", args=(0, 1 / 60.0)).pvalue > 0.01
    lag = np.array([r.send_lag for r in recs])
    assert np.percentile(lag, 99) < 0.05  # loose: a loaded 2-core machine (bench_workers gives figures)
    rec = open_recording(tmp_path / "two.db")
    states = sorted((w.worker, w.state) for w in rec.worker_events())
    assert states == [(1, "done"), (1, "started"), (2, "done"), (2, "started")]
    assert all(w.pid and w.node == socket.gethostname() for w in rec.worker_events())
    assert {w.clock_offset for w in rec.worker_events() if w.state == "started"} == {0.0}
    assert {h.worker for h in rec.client_health()} == {1, 2}  # each worker's own heartbeat
    assert not [r for r in watch.records if isinstance(r, ClientHealth) and r.worker == 0]
    assert wait_gone(two_s.runner.pids) == []


async def _run_and_kill(tmp_path: Path, url: str, policy: str) -> tuple[SessionOutcome, int, Path, list[int]]:
    sc = scenario(
        tmp_path, n=200, rate=20.0, prompts="math-hard", max_tokens=4096, workers=2, on_worker_death=policy
    )
    db = tmp_path / f"{policy}.db"
    s = session(sc, url, db)
    watch = Watch()
    s.add_sink(watch)
    w2_busy = watch.sent_by(2, 4)
    task = asyncio.get_running_loop().create_task(s.run())
    await asyncio.wait_for(w2_busy.wait(), 60)
    pid = watch.pid_of(2)
    os.kill(pid, signal.SIGKILL)
    outcome = await asyncio.wait_for(task, 150)
    assert isinstance(s.runner, ProcessSender)
    return outcome, pid, db, s.runner.pids


async def test_a_killed_worker_fails_its_in_flight_requests_and_the_others_go_on(
    tmp_path: Path, outside_sim: str
) -> None:
    outcome, pid, db, pids = await _run_and_kill(tmp_path, outside_sim, "continue")
    reason = f"worker 2 (pid {pid}) died: exit code -9 (SIGKILL)"
    assert outcome.state is SessionState.DONE and outcome.exit_code == 0
    assert reason in outcome.detail and "the other 1 went on" in outcome.detail
    assert any(reason in w for w in outcome.warnings)
    rec = open_recording(db)
    assert rec.status is SessionState.DONE and reason in rec.status_detail
    reqs = rec.requests()
    failed = [r for r in reqs if r.worker == 2 and r.status is RequestStatus.ERROR]
    assert len(failed) >= 1 and all(r.error == reason for r in failed)
    assert all(r.t_done is not None and r.t_sent is not None for r in failed)
    assert all(r.status is RequestStatus.OK for r in reqs if r.worker == 1)  # the other went on
    assert {r.rid for r in reqs if r.worker == 1} == set(range(0, 200, 2))  # ... to the end of its part
    assert len({r.rid for r in reqs if r.worker == 2}) < 100  # the rest of worker 2's part was not sent
    died = [w for w in rec.worker_events() if w.state == "died"]
    assert len(died) == 1 and died[0].worker == 2 and died[0].pid == pid and reason in died[0].detail
    assert wait_gone(pids) == []
    # replay --headless says it too, rebuilt from the recorded worker events as the live view said it
    from rllmtop.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["replay", str(db), "--headless"]) == 0
    assert "warning: 1 sender worker died: worker 2" in out.getvalue() and reason in out.getvalue()


async def test_a_killed_worker_under_stop_fails_the_run_with_the_reason(
    tmp_path: Path, outside_sim: str
) -> None:
    outcome, pid, db, pids = await _run_and_kill(tmp_path, outside_sim, "stop")
    reason = f"worker 2 (pid {pid}) died: exit code -9 (SIGKILL)"
    assert outcome.state is SessionState.FAILED and outcome.exit_code == 2
    assert outcome.detail == reason
    rec = open_recording(db)
    assert rec.status is SessionState.FAILED and rec.status_detail == reason
    reqs = rec.requests()
    assert any(r.worker == 2 and r.error == reason for r in reqs)
    # the other worker was cancelled: its in-flight requests end cancelled, its part is not finished
    w1 = [r for r in reqs if r.worker == 1]
    assert any(r.status is RequestStatus.CANCELLED for r in w1)
    assert len(w1) < 100
    assert {w.state for w in rec.worker_events() if w.worker == 1} == {"started", "stopped"}
    assert wait_gone(pids) == []


async def test_the_stop_policy_reaches_every_worker(tmp_path: Path, outside_sim: str) -> None:
    sc = scenario(tmp_path, n=400, rate=20.0, prompts="math-hard", max_tokens=4096, workers=2, grace=60)
    db = tmp_path / "stop.db"
    s = session(sc, outside_sim, db)
    watch = Watch()
    s.add_sink(watch)
    busy = [watch.sent_by(1, 3), watch.sent_by(2, 3)]
    task = asyncio.get_running_loop().create_task(s.run())
    await asyncio.wait_for(asyncio.gather(*(b.wait() for b in busy)), 60)
    s.stop()  # gentle: no more sends, in-flight ones continue
    assert s.stopping == "gentle" and s.runner is not None and s.runner.sending_done.is_set()
    await asyncio.sleep(0.3)  # in flight still: the long requests need seconds
    assert s.runner.in_flight > 0
    s.stop()  # forced: cancelled now
    outcome = await asyncio.wait_for(task, 60)
    assert outcome.state is SessionState.INTERRUPTED and outcome.exit_code == 130
    rec = open_recording(db)
    reqs = rec.requests()
    assert len(reqs) < 400 and {r.worker for r in reqs} == {1, 2}
    assert {r.status for r in reqs} <= {RequestStatus.OK, RequestStatus.CANCELLED}
    assert {r.worker for r in reqs if r.status is RequestStatus.CANCELLED} == {1, 2}
    assert sorted((w.worker, w.state) for w in rec.worker_events() if w.state != "started") == [
        (1, "stopped"),
        (2, "stopped"),
    ]
    assert isinstance(s.runner, ProcessSender) and wait_gone(s.runner.pids) == []


def _cli(tmp_path: Path, url: str, sc_text: str, *extra: str) -> subprocess.Popen[str]:
    f = tmp_path / "cli.toml"
    f.write_text(sc_text)
    return subprocess.Popen(
        [sys.executable, "-m", "rllmtop", "attach", url, "--scenario", str(f), "--headless", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a terminal's Ctrl-C reaches the whole group
    )


CLI_SCENARIO = """
name = "cli"
seed = 3
[arrival]
process = "poisson"
rate = 20
[load]
num_prompts = 400
grace_period = 0.5
[[classes]]
prompts = "math-hard"
max_tokens = 4096
"""


def _wait_children(pid: int, n: int, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = [k for k in children(pid) if alive(k)]
        if len(kids) >= n:
            return kids
        time.sleep(0.05)
    raise AssertionError(f"{n} worker processes did not start")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_at_the_cli_stops_every_worker(tmp_path: Path, outside_sim: str, sig: int) -> None:
    db = tmp_path / "cli.db"
    proc = _cli(tmp_path, outside_sim, CLI_SCENARIO, "--workers", "2", "--record", str(db))
    try:
        kids = _wait_children(proc.pid, 2)
        time.sleep(1.5)  # requests in flight
        if sig == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole foreground group
        else:
            proc.send_signal(signal.SIGTERM)  # a supervisor: the session process only
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out
    assert wait_gone(kids) == []
    rec = open_recording(db)
    assert rec.status is SessionState.INTERRUPTED
    assert {w.state for w in rec.worker_events() if w.state != "started"} == {"stopped"}
    assert any(r.status is RequestStatus.CANCELLED for r in rec.requests())


def test_workers_end_when_the_session_is_killed_outright(tmp_path: Path, outside_sim: str) -> None:
    proc = _cli(tmp_path, outside_sim, CLI_SCENARIO, "--workers", "2", "--no-record")
    try:
        kids = _wait_children(proc.pid, 2)
        time.sleep(1.0)
        proc.kill()  # SIGKILL: no stop policy runs; the workers see their socket close
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert wait_gone(kids, timeout=20) == []


def test_the_cli_refuses_a_bad_worker_count(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text(CLI_SCENARIO)
    for bad in ("0", "x", "257", "-1"):
        r = subprocess.run(
            [sys.executable, "-m", "rllmtop", "run", str(f), "--headless", "--workers", bad],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2 and f"--workers {bad}: not a worker count" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


async def test_client_side_balancing_travels_to_the_workers(tmp_path: Path, outside_sim: str) -> None:
    from rllmtop.clock import Clock
    from rllmtop.events import ENDED, RequestEvent
    from rllmtop.session.load import Endpoint, LoadTarget, build_sender

    ended: list[RequestRecord] = []

    def publish(r: object) -> None:
        if isinstance(r, RequestEvent) and r.kind in ENDED and r.record is not None:
            ended.append(r.record)

    import json
    import urllib.request

    with urllib.request.urlopen(outside_sim + "/v1/models", timeout=10) as resp:
        model = json.load(resp)["data"][0]["id"]
    target = LoadTarget(
        outside_sim,
        model,
        endpoints=(Endpoint("e0", outside_sim), Endpoint("e1", outside_sim), Endpoint("e2", outside_sim)),
        balance="round_robin",
    )
    sender = build_sender(
        scenario(tmp_path, n=60, rate=80.0, workers=2), target, clock=Clock(), publish=publish
    )
    assert isinstance(sender, ProcessSender)
    await asyncio.wait_for(sender.run(), 120)
    assert sorted(r.rid for r in ended) == list(range(60))
    # round robin by global arrival index: the split one sender would make, whatever sent it
    assert all(r.engine == f"e{r.rid % 3}" and r.worker == r.rid % 2 + 1 for r in ended)
    assert all(r.status is RequestStatus.OK for r in ended), {(r.status, r.error) for r in ended}
    assert wait_gone(sender.pids) == []


async def test_conversations_stay_with_their_worker_and_every_turn_is_counted(
    tmp_path: Path, outside_sim: str
) -> None:
    f = tmp_path / "conv.toml"
    f.write_text(
        "seed = 3\n[arrival]\nprocess = 'constant'\nrate = 40\n[load]\nnum_prompts = 12\nworkers = 2\n"
        "[[classes]]\nname = 'chat'\nprompts = 'math-easy'\nmax_tokens = 200\nweight = 3\n"
        "[classes.conversation]\nturns = 1\nturns_max = 4\nthink_time = 0\n"
        "[[classes]]\nname = 'one'\nprompts = 'mcq'\nmax_tokens = 100\nweight = 1\n"
    )
    from rllmtop.scenario import load_scenario

    s = session(load_scenario(str(f)), outside_sim, tmp_path / "conv.db")
    outcome = await asyncio.wait_for(s.run(), 120)
    assert outcome.state is SessionState.DONE, outcome.detail
    assert isinstance(s.runner, ProcessSender)
    reqs = open_recording(tmp_path / "conv.db").requests()
    assert s.runner.planned == len(reqs) > 12  # later turns counted in the plan, not only the 12 arrivals
    assert sum(w.planned for w in s.runner.workers.values()) == len(reqs)
    by_conv: dict[int, set[int]] = {}
    for r in reqs:
        assert r.status is RequestStatus.OK, r.error
        if r.conversation is not None:
            by_conv.setdefault(r.conversation, set()).add(r.worker)
    assert by_conv and all(len(ws) == 1 for ws in by_conv.values())  # every turn from one worker
    assert all(ws == {a % 2 + 1} for a, ws in by_conv.items())
    assert wait_gone(s.runner.pids) == []
