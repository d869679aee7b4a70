"""What the runner records about each request, on which clock, and what it keeps.

Issue 10.3 (t_start, connect_s, the write that succeeded), 10.4 (a time-lapse run is the same experiment),
10.6 (the class's difficulty told to the simulator), 11.2 (a row for every request on the wire), 11.8
(nothing of a finished request is kept), issue 14's preparation (senders of one schedule).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rllmtop.clock import Clock
from rllmtop.events import ClientHealth, RequestKind, RequestStatus, decode_gaps
from rllmtop.scenario import Scenario
from rllmtop.workload import runner as runner_mod
from rllmtop.workload.runner import Runner
from rllmtop.workload.schedule import Schedule

from .sse_server import Reply, SseServer, chunk, reasoning_then_answer
from .test_runner import Sink, scenario


async def quick(body: dict[str, Any], reply: Reply) -> None:
    await reasoning_then_answer(reply, 2, ["\\boxed{1}"])


def make(sc: Scenario, url: str, sink: Any, clock: Clock | None = None, **kw: Any) -> Runner:
    return Runner(sc, base_url=url, model="m", api_key=None, clock=clock or Clock(), publish=sink, **kw)


# ------------------------------------------------------------------------------------ start of a request


async def test_sent_rows_carry_the_starting_facts_and_connect_time(tmp_path: Path) -> None:
    sc = scenario(tmp_path, 'process = "constant"\nrate = 40', "num_prompts = 5")
    sink = Sink()
    async with SseServer(quick) as srv:
        await make(sc, srv.url, sink).run()
    finals = sink.finals()
    sent = {e.rid: e for e in sink.events(RequestKind.SENT)}
    assert sorted(sent) == sorted(finals) == list(range(5))
    for rid, e in sent.items():
        start, final = e.record, finals[rid]
        assert start is not None and start.status is RequestStatus.IN_FLIGHT and not start.ended
        assert e.t == start.t_sent
        for f in (
            "rid",
            "cls",
            "difficulty",
            "prompt_id",
            "t_scheduled",
            "t_dispatch",
            "t_start",
            "connect_s",
        ):
            assert getattr(start, f) == getattr(final, f), f
        assert start.t_sent == final.t_sent and start.max_tokens == final.max_tokens and start.worker == 0
        assert start.t_first_token is None and start.reasoning_tokens == 0
        assert final.t_scheduled <= final.t_dispatch <= final.t_start <= final.t_sent  # type: ignore[operator]
        assert final.ttft == pytest.approx(final.t_first_token - final.t_start)  # type: ignore[operator]
        assert final.concurrency_wait == pytest.approx(final.t_start - final.t_dispatch, abs=1e-9)  # type: ignore[operator]
    # the first request opened the connection (its set-up time is recorded); the others reused it
    assert finals[0].connect_s is not None and 0 < finals[0].connect_s < 1.0
    assert all(finals[r].connect_s is None for r in range(1, 5)) and srv.connections == 1
    lag = finals[0].send_lag
    f0 = finals[0]
    assert lag is not None and lag == pytest.approx(
        f0.t_sent - f0.t_scheduled - f0.concurrency_wait - f0.connect_s,  # type: ignore[operator]
        abs=1e-9,
    )


async def test_a_dead_keep_alive_connection_restamps_the_send(tmp_path: Path) -> None:
    """Before: t_sent was the first, failed write, and the reconnect was invisible."""
    sc = scenario(tmp_path, 'process = "constant"\nrate = 10', "num_prompts = 2")
    recv: list[float] = []
    clock = Clock()

    async def h(body: dict[str, Any], reply: Reply) -> None:
        recv.append(time.monotonic())
        if len(srv.seen) == 2:
            await asyncio.sleep(0.08)
            reply.drop()  # closes the kept-alive connection without answering
            return
        await reasoning_then_answer(reply, 1, ["x"])

    sink = Sink()
    async with SseServer(h) as srv:
        await make(sc, srv.url, sink, clock).run()
    rec = sink.finals()[1]
    assert rec.status is RequestStatus.OK and [s.conn_id for s in srv.seen] == [1, 1, 2]
    assert rec.t_start is not None and rec.t_sent is not None and rec.connect_s is not None
    assert rec.t_sent >= clock.from_monotonic(recv[1]) + 0.07  # the retry, not the first write
    assert rec.t_sent <= clock.from_monotonic(recv[2]) + 0.001
    # the wait on the dead connection is the client's lateness: in send lag, not in connect time
    assert rec.connect_s < 0.05 and rec.send_lag is not None and rec.send_lag > 0.07
    assert rec.ttft is not None and rec.ttft > 0.07  # TTFT starts at t_start, like the peers'


# ------------------------------------------------------------------------------------ wire conventions


async def test_difficulty_header_and_reasoning_controls_on_the_wire(tmp_path: Path) -> None:
    base = scenario(
        tmp_path,
        'process = "burst"\nburst_size = 12',
        "",
        '[[classes]]\nname = "a"\nprompts = "math-easy"\n'
        '[[classes]]\nname = "b"\nprompts = "math-easy"\n'
        '[[classes]]\nname = "c"\nprompts = "math-easy"\nthinking = false\n',
    )
    a, b, c = base.classes
    sc = dataclasses.replace(
        base,
        classes=(
            dataclasses.replace(
                a,
                difficulty="hard",
                reasoning_effort="low",
                reasoning_budget=64,
                chat_template_kwargs={"foo": 1},
            ),
            b,  # its prompts say "easy"
            dataclasses.replace(c, chat_template_kwargs={"enable_thinking": True, "x": "y"}),
        ),
        load=dataclasses.replace(base.load, ignore_eos=True),
    )
    sink = Sink()
    async with SseServer(quick) as srv:
        await make(sc, srv.url, sink).run()
    finals = sink.finals()
    kinds = set()
    for s in srv.seen:
        body, hdr = s.body, s.headers.get("x-rllmtop-difficulty")
        assert body["ignore_eos"] is True
        kw = body["chat_template_kwargs"]
        if "foo" in kw:  # class a
            kinds.add("a")
            assert hdr == "hard" and body["reasoning_effort"] == "low"
            assert body["thinking_token_budget"] == 64
            assert kw == {"enable_thinking": True, "thinking_budget": 64, "foo": 1}
        elif "x" in kw:  # class c: its own kwargs win over thinking = false
            kinds.add("c")
            assert kw == {"enable_thinking": True, "x": "y"} and hdr == "easy"
            assert "reasoning_effort" not in body and "thinking_token_budget" not in body
        else:
            kinds.add("b")
            assert hdr == "easy" and kw == {"enable_thinking": True}
    assert kinds == {"a", "b", "c"}
    assert {r.cls: r.difficulty for r in finals.values()} == {"a": "hard", "b": "easy", "c": "easy"}


# ------------------------------------------------------------------------------------------ time-lapse


async def test_a_time_lapse_run_compresses_the_schedule_and_records_session_seconds(tmp_path: Path) -> None:
    """Clock(speed=10): the schedule (0.05 session s apart) goes out 5 ms apart in wall time; the
    server's 20 ms (wall) between chunks reads as 200 ms of session time, and so does everything else."""
    sc = scenario(tmp_path, 'process = "constant"\nrate = 20', "num_prompts = 10")
    recv: list[float] = []

    async def paced(body: dict[str, Any], reply: Reply) -> None:
        recv.append(time.monotonic())
        await reasoning_then_answer(reply, 3, ["a", "b"], pace=0.02)

    sink = Sink()
    clock = Clock(speed=10.0)
    async with SseServer(paced) as srv:
        t0 = time.monotonic()
        await make(sc, srv.url, sink, clock).run()
        wall = time.monotonic() - t0
    finals = [r for _, r in sorted(sink.finals().items())]
    assert len(finals) == 10 and all(r.status is RequestStatus.OK for r in finals)
    np.testing.assert_allclose(np.diff([r.t_scheduled for r in finals]), 0.05, atol=1e-9)
    span = recv[-1] - recv[0]
    # 0.45 session s = 45 ms of wall time, not 450 ms (a loaded machine may send the first late and the
    # rest on time: shorter, never longer than a few tens of ms over)
    assert span < 0.2, span
    assert wall < 5.0  # the whole run: ~0.15 s of wall time for 1.5 s of session time
    gaps = np.concatenate([np.asarray(decode_gaps(r.gaps)[0], dtype=float) for r in finals])
    assert 150_000 < np.median(gaps) < 600_000  # 20 ms wall x 10 = 200 ms session, in µs
    for r in finals:
        assert r.e2e is not None and 0.8 < r.e2e < 4.0  # ~5 gaps of 200 ms session
        assert r.send_lag is not None and r.send_lag < 0.3  # session seconds: < 30 ms of wall time
    health = [x for x in sink.records if isinstance(x, ClientHealth)]
    assert health and all(h.interval > 1.0 for h in health[:-1])  # 0.25 wall s = 2.5 session s


async def test_the_timeout_is_in_session_seconds(tmp_path: Path) -> None:
    sc = scenario(tmp_path, 'process = "burst"\nburst_size = 2', "timeout = 3")

    async def stall(body: dict[str, Any], reply: Reply) -> None:
        await reply.start()
        await reply.event(chunk({"reasoning": "x"}))
        await asyncio.Event().wait()

    sink = Sink()
    async with SseServer(stall) as srv:
        t0 = time.monotonic()
        await asyncio.wait_for(make(sc, srv.url, sink, Clock(speed=10.0)).run(), 5)
        wall = time.monotonic() - t0
    assert wall < 2.9  # 3 session s = 0.3 wall s (plus a progress tick); at speed 1 it cannot be under 3 s
    for rec in sink.finals().values():
        assert rec.error == "timed out after 3 s (load.timeout)" and rec.e2e is not None and rec.e2e >= 2.9


# ----------------------------------------------------------------------------------------- heartbeat


async def test_the_runner_publishes_its_heartbeat(tmp_path: Path) -> None:
    sc = scenario(tmp_path, 'process = "constant"\nrate = 20', "num_prompts = 12")
    sink = Sink()
    async with SseServer(quick) as srv:
        await make(sc, srv.url, sink).run()
    health = [x for x in sink.records if isinstance(x, ClientHealth)]
    assert len(health) >= 2
    assert all(h.worker == 0 and h.lag_max >= h.lag_mean >= 0 and h.cpu_s is not None for h in health)


# ------------------------------------------------------------------------------------ concurrency cap


async def test_a_full_cap_queue_holds_the_schedule_not_memory(tmp_path: Path, monkeypatch: Any) -> None:
    """At rate = inf with a cap, due requests wait in the schedule beyond a bounded queue; their cap wait
    still starts at their scheduled time."""
    monkeypatch.setattr(runner_mod, "_QUEUE_MAX", 5)
    sc = scenario(tmp_path, 'process = "gamma"\nrate = inf', "num_prompts = 60\nmax_concurrency = 2")
    sink = Sink()
    most = 0

    async def h(body: dict[str, Any], reply: Reply) -> None:
        nonlocal most
        most = max(most, r.queued)
        await reasoning_then_answer(reply, 1, ["x"])

    async with SseServer(h) as srv:
        r = make(sc, srv.url, sink)
        await r.run()
    finals = sink.finals()
    assert len(finals) == 60 and all(x.status is RequestStatus.OK for x in finals.values())
    assert most <= 5 and srv.max_active <= 2
    for x in finals.values():
        assert x.t_dispatch == pytest.approx(x.t_scheduled, abs=0.05)
        assert x.send_lag is not None and x.send_lag < 0.05  # the wait is the cap's, not lateness
    assert max(x.concurrency_wait or 0 for x in finals.values()) > 0


# ------------------------------------------------------------------------------------------- senders


async def test_two_senders_send_what_one_sends(tmp_path: Path) -> None:
    sc = scenario(tmp_path, 'process = "gamma"\nrate = 200\nburstiness = 0.5', "num_prompts = 40")

    async def run(parts: int) -> dict[int, Any]:
        sink = Sink()
        clock = Clock()
        whole = Schedule(sc)
        start = clock.now() + 0.01
        async with SseServer(quick) as srv:
            runners = [
                make(
                    sc,
                    srv.url,
                    sink,
                    clock,
                    schedule=whole.part(k, parts) if parts > 1 else whole,
                    worker=k,
                    start_at=start,
                )
                for k in range(parts)
            ]
            await asyncio.gather(*(x.run() for x in runners))
        assert sum(x.planned or 0 for x in runners) == 40
        return sink.finals()

    one, two = await run(1), await run(2)
    assert sorted(one) == sorted(two) == list(range(40))
    for rid in one:
        a, b = one[rid], two[rid]
        assert (a.cls, a.prompt_id, a.difficulty) == (b.cls, b.prompt_id, b.difficulty)
        assert b.worker == rid % 2 and a.worker == 0
        assert (b.t_scheduled - two[0].t_scheduled) == pytest.approx(a.t_scheduled - one[0].t_scheduled)


# ------------------------------------------------------------------------------------------- memory


@pytest.fixture
def slow_truth() -> Iterator[str]:
    """A truth server in its own process whose streams last ~1.25 s (5 chunks 0.25 s apart)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("truth_server.py")),
            "--gap",
            "0.25",
            "--nr",
            "3",
            "--na",
            "1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().split("listening on ", 1)[1].strip()
    finally:
        proc.kill()
        proc.wait(10)


def _quiet(counts: dict[str, int]) -> Any:
    def publish(rec: Any) -> None:  # keeps nothing (a Sink would hold every record)
        if getattr(rec, "kind", None) in (RequestKind.DONE, RequestKind.FAILED):
            counts["ended"] += 1

    return publish


async def test_memory_per_request_in_flight(tmp_path: Path, slow_truth: str) -> None:
    """Issue 11.8: what the client holds per request in flight (the server is another process, so this
    process's traced memory is the client's). Requests arrive at 400/s and last ~1.25 s: on the ramp
    nothing has ended yet."""
    sc = scenario(tmp_path, 'process = "constant"\nrate = 400', "num_prompts = 400\nrequest_seed = true")
    counts = {"ended": 0}
    r = Runner(
        sc,
        base_url=slow_truth,
        model="reasoning",
        api_key=None,
        clock=Clock(),
        publish=_quiet(counts),
        heartbeat=False,
    )

    async def at(sent: int) -> tuple[int, int]:
        for _ in range(5000):
            if r.sent >= sent:
                return tracemalloc.get_traced_memory()[0], r.in_flight
            await asyncio.sleep(0.002)
        raise AssertionError(counts)

    tracemalloc.start()
    try:
        task = asyncio.create_task(r.run())
        m1, n1 = await at(50)
        m2, n2 = await at(300)
        ended_at_m2 = counts["ended"]
        await task
    finally:
        tracemalloc.stop()
    assert r.done == 400 and ended_at_m2 == 0 and n2 - n1 >= 150
    per = (m2 - m1) / (n2 - n1)
    print(f"client memory per request in flight: {per:.0f} B")
    assert 300 < per < 16_000


PER_REQUEST = {"_Req", "ChatStream", "Exchange", "_Conn", "RequestRecord", "RequestEvent"}


async def test_an_ended_request_leaves_nothing_behind(tmp_path: Path) -> None:
    """Issue 11.8: after a run, what the client still holds does not grow with the requests it sent."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("truth_server.py")),
            "--gap",
            "0.0005",
            "--nr",
            "3",
            "--na",
            "1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split("listening on ", 1)[1].strip()
        kept = {}
        tracemalloc.start()
        try:
            for n in (100, 100, 600):
                sc = scenario(
                    tmp_path, 'process = "constant"\nrate = 500', f"num_prompts = {n}\nrequest_seed = true"
                )
                counts = {"ended": 0}
                r = Runner(
                    sc,
                    base_url=url,
                    model="reasoning",
                    api_key=None,
                    clock=Clock(),
                    publish=_quiet(counts),
                    heartbeat=False,
                )
                gc.collect()
                before_alive = sum(1 for o in gc.get_objects() if type(o).__name__ in PER_REQUEST)
                m0 = tracemalloc.get_traced_memory()[0]
                await r.run()
                await asyncio.sleep(0.1)  # the closed connections' last callbacks run
                gc.collect()
                kept[n] = tracemalloc.get_traced_memory()[0] - m0
                assert r.done == n
                alive = [type(o).__name__ for o in gc.get_objects() if type(o).__name__ in PER_REQUEST]
                # not one object of this run's ended requests is left (other tests' leftovers may be)
                assert len(alive) <= before_alive, alive
                assert asyncio.all_tasks() == {asyncio.current_task()}
        finally:
            tracemalloc.stop()
    finally:
        proc.kill()
        proc.wait(10)
    per = (kept[600] - kept[100]) / 500
    print(f"client memory kept after a run: {kept[100]} B after 100 requests, {kept[600]} B after 600")
    # what is left is container capacity (dicts and sets keep the size of the peak in flight), not requests
    assert per < 500, f"{per:.0f} B kept per ended request"
