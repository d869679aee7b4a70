"""The launcher against fake engines (and the simulator): readiness, logs, failures, and no orphans."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from rllmtop.clock import Clock
from rllmtop.engines.launch_args import LaunchPlan, pick_free_port
from rllmtop.engines.launcher import EngineProcess, EngineStartError, group_alive, live_engines, reap_all
from rllmtop.events import LogEvent, Record

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="process-group checks read /proc"
)

HERE = Path(__file__).parent
FAKE = str(HERE / "fake_engine.py")
PARENT = str(HERE / "parent_script.py")


# ---------------------------------------------------------------------------------------------- helpers


def fake_plan(
    mode: str, *opts: str, port: int | None = None, secrets: tuple[str, ...] = (), nice: int = 0
) -> LaunchPlan:
    port = pick_free_port() if port is None else port
    argv = (sys.executable, FAKE, mode, str(port), *opts)
    return LaunchPlan(
        kind="vllm",
        argv=argv,
        env={},
        host="127.0.0.1",
        port=port,
        base_url=f"http://127.0.0.1:{port}" if port else "",
        redacted_argv=argv,
        ready_pattern=r"listening on (?P<url>http://\S+)",
        secrets=secrets,
        nice=nice,
    )


class Logs:
    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, rec: Record) -> None:
        assert isinstance(rec, LogEvent)
        self.events.append(rec)

    def engine_text(self) -> str:
        return "\n".join(e.text for e in self.events if e.source == "engine")

    def pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"PID \w+=(\d+)", self.engine_text())]


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] != b"Z"


def wait_exit(pid: int, timeout: float) -> bool:
    """Block until process ``pid`` (not necessarily our child) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(fd)


def assert_all_gone(pgid: int, pids: list[int]) -> None:
    assert not group_alive(pgid), f"process group {pgid} still has live members"
    left = [p for p in pids if pid_alive(p)]
    assert not left, f"processes left behind: {left}"


@pytest.fixture(autouse=True)
def _no_leftovers():
    yield
    for e in live_engines():  # a failing test must not leave engines running for the next one
        e.kill_now()


# ---------------------------------------------------------------------------------------------- in-process


async def test_ready_logs_version_and_clean_stop() -> None:
    logs = Logs()
    plan = fake_plan("ready", "--grandchild")
    engine = EngineProcess(plan, clock=Clock(), publish=logs, name="fake", grace=1.0)
    async with engine:
        seen: list[tuple[float, str]] = []
        await engine.wait_ready(30.0, progress=lambda t, line: seen.append((t, line)))
        assert engine.version == "0.0.1-fake"
        assert engine.models == ("fake-model",)
        assert engine.running and engine.returncode is None
        pgid = engine.pgid
        assert pgid is not None and group_alive(pgid)
        async with httpx.AsyncClient(trust_env=False) as c:
            assert (await c.get(f"{engine.base_url}/health")).status_code == 200
    assert engine.returncode == 0  # the fake exits 0 on SIGTERM; the guard passes its status through
    assert not engine.died.is_set()
    assert_all_gone(pgid, logs.pids())
    assert len(logs.pids()) == 2
    text = logs.engine_text()
    assert "loading weights 3/3" in text
    levels = {e.text.split()[0]: e.level for e in logs.events if e.source == "engine"}
    assert levels["WARNING"] == "warning" and levels["INFO"] == "info"
    assert engine.last_lines(1) == (engine.last_line,)
    assert engine not in live_engines()
    for t, line in seen:
        assert t >= 0 and isinstance(line, str)


async def test_nice_lowers_the_priority_of_the_engine_and_its_workers_not_rllmtop() -> None:
    """`[engine] nice = N`: the engine's session autogroup (where the kernel has them) and every process
    of the engine get N; rllmtop's own priority is unchanged."""
    logs = Logs()
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    engine = EngineProcess(
        fake_plan("ready", "--grandchild", nice=7), clock=Clock(), publish=logs, name="fake"
    )
    async with engine:
        await engine.wait_ready(30.0)
        pids = logs.pids()
        assert len(pids) == 2
        for pid in pids:  # the engine and its worker (a grandchild of the guard)
            assert os.getpriority(os.PRIO_PROCESS, pid) == mine + 7
            group = Path(f"/proc/{pid}/autogroup")
            if group.exists():
                assert group.read_text().split()[-1] == "7", group.read_text()
    assert os.getpriority(os.PRIO_PROCESS, 0) == mine


async def test_never_ready_times_out_with_last_lines_and_is_stopped() -> None:
    logs = Logs()
    engine = EngineProcess(
        fake_plan("never-ready", "--grandchild"), clock=Clock(), publish=logs, name="fake", grace=1.0
    )
    await engine.start()
    t0 = time.monotonic()
    with pytest.raises(EngineStartError) as info:
        await engine.wait_ready(2.0)
    elapsed = time.monotonic() - t0
    assert 2.0 <= elapsed < 20.0
    err = info.value
    assert "did not become ready within 2 s" in err.what
    assert "/health answered 503" in err.what
    assert "loading weights 3/3" in err.hint
    assert any("loading weights" in line for line in err.log_tail)
    assert engine.pgid is not None
    assert_all_gone(engine.pgid, logs.pids())
    assert await engine.stop() == engine.returncode  # idempotent after the failed start


async def test_engine_exiting_before_ready_fails_fast_with_code_and_scrubbed_lines() -> None:
    logs = Logs()
    plan = fake_plan("exit", secrets=("secret-token-1234",))
    engine = EngineProcess(plan, clock=Clock(), publish=logs, name="fake")
    await engine.start()
    t0 = time.monotonic()
    with pytest.raises(EngineStartError) as info:
        await engine.wait_ready(120.0)
    assert time.monotonic() - t0 < 30.0
    assert info.value.returncode == 7 == engine.returncode
    assert "exited with code 7 before it became ready" in info.value.what
    assert "cannot load model" in info.value.hint
    assert "secret-token-1234" not in info.value.hint
    assert "secret-token-1234" not in logs.engine_text()
    assert "*** in the message" in logs.engine_text()
    assert engine.died.is_set()  # it exited without being asked to


async def test_missing_command_reports_it() -> None:
    logs = Logs()
    plan = LaunchPlan(
        kind="vllm",
        argv=("rllmtop-no-such-engine-binary", "serve"),
        env={},
        host="127.0.0.1",
        port=1,
        base_url="http://127.0.0.1:1",
        redacted_argv=("rllmtop-no-such-engine-binary", "serve"),
    )
    async with EngineProcess(plan, clock=Clock(), publish=logs, name="vllm") as engine:
        with pytest.raises(EngineStartError) as info:
            await engine.wait_ready(60.0)
    assert info.value.returncode == 127
    assert "cannot start 'rllmtop-no-such-engine-binary'" in info.value.hint


async def test_crash_after_ready_sets_died_and_reaps_workers() -> None:
    logs = Logs()
    engine = EngineProcess(
        fake_plan("crashable", "--grandchild", "--setsid-grandchild"),
        clock=Clock(),
        publish=logs,
        name="fake",
        grace=1.0,
    )
    async with engine:
        await engine.wait_ready(30.0)
        pgid = engine.pgid
        assert pgid is not None
        async with httpx.AsyncClient(trust_env=False) as c:
            with contextlib.suppress(httpx.TransportError):
                await c.get(f"{engine.base_url}/crash")
        await asyncio.wait_for(engine.died.wait(), 30.0)
        assert engine.returncode == 3
        assert not engine.running
        # the guard tore down the crashed engine's workers, including the one that left the group
        assert_all_gone(pgid, logs.pids())
    assert len(logs.pids()) == 3
    assert any(e.source == "rllmtop" and "unexpectedly with code 3" in e.text for e in logs.events)


async def test_stubborn_engine_is_killed_after_grace() -> None:
    logs = Logs()
    engine = EngineProcess(
        fake_plan("ready", "--ignore-term", "--grandchild", "--setsid-grandchild"),
        clock=Clock(),
        publish=logs,
        name="fake",
        grace=1.0,
    )
    await engine.start()
    try:
        await engine.wait_ready(30.0)
    finally:
        t0 = time.monotonic()
        rc, rc2 = await asyncio.gather(engine.stop(grace=1.0), engine.stop(grace=1.0))
    assert time.monotonic() - t0 < 15.0
    assert rc == rc2 == -signal.SIGKILL
    assert engine.pgid is not None
    assert_all_gone(engine.pgid, logs.pids())
    assert len(logs.pids()) == 3
    assert "sending SIGKILL" in logs.engine_text()  # the guard says what it did


async def test_port_zero_learns_url_from_ready_line() -> None:
    logs = Logs()
    engine = EngineProcess(fake_plan("ready", port=0), clock=Clock(), publish=logs, name="fake")
    async with engine:
        assert engine.base_url == ""
        await engine.wait_ready(30.0)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", engine.base_url)
        assert not engine.base_url.endswith(":0")


async def test_reap_all_terminates_without_waiting() -> None:
    logs = Logs()
    engine = EngineProcess(
        fake_plan("ready", "--grandchild"), clock=Clock(), publish=logs, name="fake", grace=1.0
    )
    await engine.start()
    await engine.wait_ready(30.0)
    assert engine in live_engines()
    reap_all()  # synchronous: sends SIGTERM and returns
    assert await asyncio.wait_for(engine.stop(), 30.0) == 0
    assert not engine.died.is_set()  # it was asked to go
    assert engine.pgid is not None
    assert_all_gone(engine.pgid, logs.pids())


# ---------------------------------------------------------------------------------------------- rllmtop dies


async def _run_parent(behaviour: str, *fake_args: str) -> tuple[asyncio.subprocess.Process, int, list[str]]:
    port = pick_free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        PARENT,
        behaviour,
        "1.0",
        "--",
        fake_args[0],
        str(port),
        *fake_args[1:],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []

    async def until_ready() -> int:
        assert proc.stdout is not None
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                raise AssertionError("parent exited before READY:\n" + "\n".join(lines))
            line = raw.decode().rstrip()
            lines.append(line)
            if line.startswith("READY pgid="):
                return int(line.split("=", 1)[1])

    pgid = await asyncio.wait_for(until_ready(), 60.0)
    return proc, pgid, lines


async def _finish(proc: asyncio.subprocess.Process, lines: list[str]) -> int:
    assert proc.stdout is not None
    rest = await asyncio.wait_for(proc.stdout.read(), 60.0)
    lines.extend(rest.decode().splitlines())
    return await proc.wait()


def _pids(lines: list[str]) -> list[int]:
    return [int(p) for p in re.findall(r"PID \w+=(\d+)", "\n".join(lines))]


@pytest.mark.parametrize(
    ("behaviour", "sig", "fake"),
    [
        ("exception", None, ("ready", "--grandchild", "--setsid-grandchild")),
        ("wait", signal.SIGINT, ("ready", "--ignore-term", "--grandchild", "--setsid-grandchild")),
        ("term-handler", signal.SIGTERM, ("ready", "--grandchild", "--setsid-grandchild")),
        ("wait", signal.SIGTERM, ("ready", "--grandchild", "--setsid-grandchild")),  # default action: dies
        ("wait", signal.SIGKILL, ("ready", "--grandchild", "--setsid-grandchild")),
        ("wait", signal.SIGKILL, ("ready", "--ignore-term", "--grandchild", "--setsid-grandchild")),
    ],
    ids=["exception", "sigint-stubborn", "sigterm-handler", "sigterm-default", "sigkill", "sigkill-stubborn"],
)
async def test_no_orphans_when_rllmtop_ends(
    behaviour: str, sig: signal.Signals | None, fake: tuple[str, ...]
) -> None:
    proc, pgid, lines = await _run_parent(behaviour, *fake)
    guard = pgid
    try:
        assert group_alive(pgid)
        if sig is not None:
            proc.send_signal(sig)
        rc = await _finish(proc, lines)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if behaviour == "exception":
        assert rc == 1 and any("boom in the parent" in line for line in lines)
    elif sig is not None and behaviour == "wait" and sig != signal.SIGINT:
        assert rc == -sig
    # the guard exits only once every descendant is gone; then nothing of the group may be left
    assert await asyncio.to_thread(wait_exit, guard, 30.0), "the guard did not finish its teardown"
    pids = _pids(lines)
    assert len(pids) == 3, lines
    assert_all_gone(pgid, pids)


async def test_no_orphans_when_engine_crashes_under_parent() -> None:
    proc, pgid, lines = await _run_parent("wait-died", "crashable", "--grandchild", "--setsid-grandchild")
    port = re.search(r"listening on http://127\.0\.0\.1:(\d+)", "\n".join(lines))
    assert port is not None
    async with httpx.AsyncClient(trust_env=False) as c:
        with contextlib.suppress(httpx.TransportError):
            await c.get(f"http://127.0.0.1:{port.group(1)}/crash")
    assert await _finish(proc, lines) == 0
    assert "DIED rc=3" in lines
    assert await asyncio.to_thread(wait_exit, pgid, 30.0)
    pids = _pids(lines)
    assert len(pids) == 3
    assert_all_gone(pgid, pids)


# ---------------------------------------------------------------------------------------------- simulator


async def test_simulator_through_build_command_with_every_toggle() -> None:
    """The real simulator, launched from a scenario engine section: it accepts every flag we map, reports
    the port it bound (port 0: no race), serves a streamed request, and leaves nothing behind."""
    from rllmtop.engines.launch_args import build_command, choose_port
    from rllmtop.scenario import EngineSpec, SpeculativeConfig

    spec = EngineSpec(
        kind="sim",
        speed=50.0,
        served_model_name="sim-under-test",
        quantization="awq",
        kv_cache_dtype="fp8",
        prefix_caching=False,
        speculative=SpeculativeConfig("ngram", 3, acceptance_rate=0.6),
        max_num_seqs=16,
        max_num_batched_tokens=4096,
        gpu_memory_utilization=0.9,
        max_model_len=8192,
        reasoning_parser="deepseek_r1",
        faults={"error_rate": 0.0, "stall_seconds": 0.5},
    )
    plan = build_command(spec, seed=11, port=choose_port(spec))
    logs = Logs()
    async with EngineProcess(plan, clock=Clock(), publish=logs, name="sim", grace=2.0) as engine:
        await engine.wait_ready(60.0)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", engine.base_url)
        assert engine.models == ("sim-under-test",)
        assert engine.version  # the simulator answers /version
        body = {
            "model": "sim-under-test",
            "messages": [{"role": "user", "content": "What is 2 + 2?"}],
            "max_tokens": 16,
            "stream": True,
        }
        kinds: set[str] = set()
        async with (
            httpx.AsyncClient(trust_env=False, timeout=60.0) as c,
            c.stream("POST", f"{engine.base_url}/v1/chat/completions", json=body) as r,
        ):
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    kinds.update(k for k in ('"reasoning"', '"content"') if k in line)
        assert '"reasoning"' in kinds
        pgid = engine.pgid
    assert pgid is not None and not group_alive(pgid)
    assert engine.returncode is not None and not engine.died.is_set()
    assert any("Starting rllmtop sim server on" in e.text for e in logs.events)


async def test_simulator_exit_fault_is_an_engine_death() -> None:
    from rllmtop.engines.launch_args import build_command
    from rllmtop.scenario import EngineSpec

    spec = EngineSpec(kind="sim", speed=50.0, faults={"exit_after": 1.0})
    logs = Logs()
    engine = EngineProcess(build_command(spec, seed=0, port=0), clock=Clock(), publish=logs, name="sim")
    async with engine:
        await engine.wait_ready(60.0)
        await asyncio.wait_for(engine.died.wait(), 60.0)
        assert engine.returncode == 1
        assert any("--exit-after" in line for line in engine.last_lines(5))
    assert engine.pgid is not None and not group_alive(engine.pgid)


async def test_simulator_rejecting_a_value_fails_fast_with_its_message() -> None:
    from rllmtop.engines.launch_args import build_command
    from rllmtop.scenario import EngineSpec

    spec = EngineSpec(kind="sim", quantization="int3-magic")  # passed through: the simulator judges it
    engine = EngineProcess(build_command(spec, seed=0, port=0), clock=Clock(), publish=Logs(), name="sim")
    async with engine:
        with pytest.raises(EngineStartError) as info:
            await engine.wait_ready(60.0)
    assert info.value.returncode not in (None, 0)
    assert "int3-magic" in info.value.hint
