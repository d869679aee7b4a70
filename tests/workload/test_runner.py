"""The open-loop runner over real HTTP on 127.0.0.1 against the scriptable test server."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rllmtop.clock import Clock
from rllmtop.events import (
    ENDED,
    LogEvent,
    RequestEvent,
    RequestKind,
    RequestRecord,
    RequestStatus,
    decode_gaps,
)
from rllmtop.scenario import Scenario, load_scenario
from rllmtop.workload.runner import PROGRESS_INTERVAL, Runner
from rllmtop.workload.schedule import request_seed

from .sse_server import Reply, SseServer, chunk, reasoning_then_answer, usage
from .test_prompts import _eval

KEY = "sk-secret-do-not-record"


def scenario(tmp_path: Path, arrival: str, load: str, classes: str | None = None, seed: int = 3) -> Scenario:
    classes = classes or (
        '[[classes]]\nname = "e"\nprompts = "math-easy"\nmax_tokens = 100\n'
        '[[classes]]\nname = "q"\nprompts = "mcq"\nmax_tokens = 200\nthinking = false\n'
    )
    p = tmp_path / "s.toml"
    p.write_text(f"seed = {seed}\n[arrival]\n{arrival}\n[load]\n{load}\n{classes}")
    return load_scenario(str(p))


class Sink:
    """Collects published records; ``until`` awaits a condition on them (checked at each publish)."""

    def __init__(self) -> None:
        self.records: list[Any] = []
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def __call__(self, rec: Any) -> None:
        self.records.append(rec)
        for pred, fut in list(self._waiters):
            if not fut.done() and pred():
                fut.set_result(None)

    async def until(self, pred: Callable[[], bool], timeout: float = 30.0) -> None:
        if pred():
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters.remove((pred, fut))

    def events(self, kind: RequestKind | None = None) -> list[RequestEvent]:
        return [r for r in self.records if isinstance(r, RequestEvent) and (kind is None or r.kind == kind)]

    def finals(self) -> dict[int, RequestRecord]:
        out = {}
        for e in self.events():
            if e.kind in ENDED and e.record is not None:
                assert e.rid not in out, "one terminal event per request"
                out[e.rid] = e.record
        return out

    def logs(self) -> list[LogEvent]:
        return [r for r in self.records if isinstance(r, LogEvent)]


def answer_for(body: dict) -> str:
    """What a perfect model answers to one of our generated prompts."""
    text = body["messages"][-1]["content"]
    value = _eval(re.search(r"\$([^$]+)\$", text).group(1))  # type: ignore[union-attr]
    opts = dict(re.findall(r"^\(([A-D])\) (\d+)$", text, re.MULTILINE))
    if opts:
        return next(k for k, v in opts.items() if int(v) == value)
    return str(value)


async def correct_model(body: dict, reply: Reply) -> None:
    await reasoning_then_answer(reply, 4, ["So the answer is ", f"\\boxed{{{answer_for(body)}}}."])


def make_runner(sc: Scenario, url: str, sink: Sink, **kw: Any) -> Runner:
    return Runner(sc, base_url=url, model="tiny", api_key=KEY, clock=Clock(), publish=sink, **kw)


async def test_lifecycle_records_and_grading(tmp_path: Path) -> None:
    sc = scenario(tmp_path, 'process = "constant"\nrate = 200', "num_prompts = 24")
    sink = Sink()
    async with SseServer(correct_model) as srv:
        r = make_runner(sc, srv.url, sink)
        await r.run()
    assert (r.planned, r.sent, r.done, r.failed, r.in_flight) == (24, 24, 24, 0, 0)
    assert r.sending_done.is_set()
    finals = sink.finals()
    assert sorted(finals) == list(range(24))
    by_rid: dict[int, list[RequestKind]] = defaultdict(list)
    for e in sink.events():
        by_rid[e.rid].append(e.kind)
    for rid, rec in finals.items():
        kinds = [k for k in by_rid[rid] if k is not RequestKind.PROGRESS]
        assert kinds == [
            RequestKind.SENT,
            RequestKind.FIRST_TOKEN,
            RequestKind.FIRST_VISIBLE,
            RequestKind.DONE,
        ]
        assert rec.status is RequestStatus.OK and rec.http_status == 200 and rec.error is None
        assert rec.t_dispatch is not None and rec.t_sent is not None and rec.t_done is not None
        assert rec.t_first_token is not None and rec.t_first_visible is not None
        assert rec.t_scheduled <= rec.t_dispatch <= rec.t_sent <= rec.t_first_token
        assert rec.t_first_token <= rec.t_first_visible <= rec.t_done
        assert rec.ttft is not None and rec.ttfvt is not None and rec.e2e is not None
        assert 0 <= rec.ttft <= rec.ttfvt <= rec.e2e
        assert rec.t_first_reasoning == rec.t_first_token and rec.t_reasoning_end is not None
        assert (rec.reasoning_tokens, rec.answer_tokens, rec.completion_tokens) == (5, 2, 7)
        assert rec.tokens_exact and rec.finish_reason == "stop" and rec.prompt_tokens == 10
        assert rec.correct is True and rec.extracted == rec.reference
        assert rec.cls in ("e", "q") and rec.difficulty == {"e": "easy", "q": "mcq"}[rec.cls]
        assert rec.prompt_id.startswith({"e": "math-easy-", "q": "mcq-"}[rec.cls])
        assert rec.max_tokens == {"e": 100, "q": 200}[rec.cls]
        assert rec.answer_text is None  # not asked to keep it
        gaps, _ = decode_gaps(rec.gaps)
        assert len(gaps) == 5  # 6 token-bearing chunks: the empty reasoning delta at </think> is silent
    # what went over the wire: per-request seed, thinking flag, model, no key in the body
    for seen in srv.seen:
        rid = next(
            rid for rid, rec in finals.items() if rec.prompt_id and seen.body["messages"][-1]["content"]
        )
        assert seen.body["model"] == "tiny" and seen.body["stream"] is True
        assert seen.body["chat_template_kwargs"]["enable_thinking"] == (seen.body["max_tokens"] == 100)
        assert KEY.encode() not in seen.raw and seen.headers["authorization"] == f"Bearer {KEY}"
    assert sorted(s.body["seed"] for s in srv.seen) == sorted(request_seed(3, i) for i in range(24))
    assert srv.connections < 24  # keep-alive reuse
    assert KEY not in repr(sink.records)
    assert any("sending 24 requests" in log.text for log in sink.logs())


def test_request_seed_is_stable() -> None:
    assert request_seed(0, 0) == request_seed(0, 0)
    assert request_seed(1, 5) != request_seed(1, 6) != request_seed(2, 6)
    assert request_seed(12345, 67) == 1063190156  # the same in every process and Python version
    assert all(0 <= request_seed(s, r) < 2**31 for s in range(5) for r in range(100))


async def test_wrong_answers_and_recorded_text(tmp_path: Path) -> None:
    sc = scenario(tmp_path, 'process = "burst"\nburst_size = 6', "record_answers = true")

    async def wrong(body: dict, reply: Reply) -> None:
        await reasoning_then_answer(reply, 2, ["\\boxed{999999999}"])

    sink = Sink()
    async with SseServer(wrong) as srv:
        await make_runner(sc, srv.url, sink).run()
    for rec in sink.finals().values():
        assert rec.correct is False and rec.answer_text == "\\boxed{999999999}"


async def test_concurrency_cap_queues_on_the_client(tmp_path: Path) -> None:
    sc = scenario(tmp_path, 'process = "burst"\nburst_size = 6', "max_concurrency = 2")
    release = asyncio.Event()

    async def held(body: dict, reply: Reply) -> None:
        await reply.start()
        await reply.event(chunk({"reasoning": "x"}))
        if srv.max_active >= 2:
            release.set()
        await release.wait()
        await reply.event(chunk({"content": "\\boxed{1}"}, "stop"))
        await reply.raw(b"data: [DONE]\n\n")
        await reply.end()

    sink = Sink()
    async with SseServer(held) as srv:
        r = make_runner(sc, srv.url, sink)
        await r.run()
    assert srv.max_active == 2
    queued = {e.rid for e in sink.events(RequestKind.QUEUED)}
    assert len(queued) == 4
    for rid, rec in sink.finals().items():
        assert rec.send_lag is not None and rec.send_lag < 1.0
        assert rec.concurrency_wait is not None
        if rid in queued:
            assert rec.concurrency_wait > 0 and rec.t_sent is not None and rec.t_dispatch is not None
        assert rec.status is RequestStatus.OK


async def test_stop_sending_lets_in_flight_finish(tmp_path: Path) -> None:
    sc = scenario(tmp_path, 'process = "constant"\nrate = 100', "num_prompts = 1000\nmax_concurrency = 3")
    gate = asyncio.Event()

    async def slow(body: dict, reply: Reply) -> None:
        await reply.start()
        await reply.event(chunk({"reasoning": "x"}))
        await gate.wait()
        await reply.event(chunk({"content": "ok"}, "stop"))
        await reply.raw(b"data: [DONE]\n\n")
        await reply.end()

    sink = Sink()
    async with SseServer(slow) as srv:
        r = make_runner(sc, srv.url, sink)
        task = asyncio.create_task(r.run())
        await sink.until(lambda: len(sink.events(RequestKind.QUEUED)) >= 2)
        r.stop_sending()
        assert r.sending_done.is_set()
        gate.set()
        await task
    finals = sink.finals()
    ok = [x for x in finals.values() if x.status is RequestStatus.OK]
    dropped = [x for x in finals.values() if x.status is RequestStatus.CANCELLED]
    assert len(ok) == 3 and r.sent == 3 and r.done == 3
    assert dropped and all(x.t_sent is None and "sending stopped" in (x.error or "") for x in dropped)
    assert r.failed == len(dropped) and r.in_flight == 0 and len(finals) < 1000


async def test_cancel_ends_in_flight_requests(tmp_path: Path) -> None:
    sc = scenario(tmp_path, 'process = "burst"\nburst_size = 5', "")

    async def stall(body: dict, reply: Reply) -> None:
        await reply.start()
        await reply.event(chunk({"reasoning": "x"}))
        await reply.event(chunk({"reasoning": "y"}))
        await asyncio.Event().wait()

    sink = Sink()
    async with SseServer(stall) as srv:
        r = make_runner(sc, srv.url, sink)
        task = asyncio.create_task(r.run())
        # both chunks of every request received (seen in the coalesced progress ticks)
        await sink.until(
            lambda: len({e.rid for e in sink.events(RequestKind.PROGRESS) if e.reasoning_tokens == 2}) == 5
        )
        r.cancel()
        await asyncio.wait_for(task, 5)
    finals = sink.finals()
    assert len(finals) == 5 and r.failed == 5 and r.in_flight == 0
    for rec in finals.values():
        assert rec.status is RequestStatus.CANCELLED and rec.error == "cancelled by rllmtop"
        assert rec.reasoning_tokens == 2 and rec.t_done is not None and rec.correct is None
    assert len(sink.events(RequestKind.FAILED)) == 5


async def test_timeout_is_an_error(tmp_path: Path) -> None:
    sc = scenario(tmp_path, 'process = "burst"\nburst_size = 2', "timeout = 0.2")

    async def stall(body: dict, reply: Reply) -> None:
        await reply.start()
        await asyncio.Event().wait()

    sink = Sink()
    async with SseServer(stall) as srv:
        await asyncio.wait_for(make_runner(sc, srv.url, sink).run(), 5)
    for rec in sink.finals().values():
        assert rec.status is RequestStatus.ERROR and rec.error == "timed out after 0.2 s (load.timeout)"
        assert rec.t_first_token is None and rec.e2e is not None and rec.e2e >= 0.19


async def test_errors_are_logged_rate_limited(tmp_path: Path) -> None:
    sc = scenario(tmp_path, 'process = "burst"\nburst_size = 30', "")

    async def fail(body: dict, reply: Reply) -> None:
        await reply.json(500, {"error": {"message": f"boom {len(srv.seen)} for {KEY}"}})

    sink = Sink()
    async with SseServer(fail) as srv:
        r = make_runner(sc, srv.url, sink)
        await r.run()
    assert r.failed == 30 and r.done == 0
    finals = sink.finals()
    assert all(x.status is RequestStatus.ERROR and x.http_status == 500 for x in finals.values())
    assert all("boom" in (x.error or "") and KEY not in (x.error or "") for x in finals.values())
    warnings = [log for log in sink.logs() if log.level == "warning"]
    assert 1 <= len(warnings) <= 2 and "failed: HTTP 500: boom" in warnings[0].text
    assert KEY not in repr(sink.records)


async def test_progress_is_coalesced(tmp_path: Path) -> None:
    sc = scenario(tmp_path, 'process = "burst"\nburst_size = 3', "")

    async def paced(body: dict, reply: Reply) -> None:
        await reasoning_then_answer(reply, 60, ["a", "b"], pace=0.01)

    sink = Sink()
    async with SseServer(paced) as srv:
        await make_runner(sc, srv.url, sink).run()
    finals = sink.finals()
    chunks = sum(len(decode_gaps(x.gaps)[0]) + 1 for x in finals.values())
    progress = sink.events(RequestKind.PROGRESS)
    assert progress and len(progress) < chunks / 5
    per_rid: dict[int, list[RequestEvent]] = defaultdict(list)
    for e in progress:
        per_rid[e.rid].append(e)
    for rid, evs in per_rid.items():
        e2e = finals[rid].e2e or 0
        assert len(evs) <= e2e / PROGRESS_INTERVAL + 2
        counts = [(e.reasoning_tokens, e.answer_tokens) for e in evs]
        assert counts == sorted(counts) and len(set(counts)) == len(counts)


async def test_run_cancelled_from_outside_ends_every_request(tmp_path: Path) -> None:
    sc = scenario(tmp_path, 'process = "burst"\nburst_size = 4', "")

    async def stall(body: dict, reply: Reply) -> None:
        await reply.start()
        await reply.event(chunk({"reasoning": "x"}))
        await asyncio.Event().wait()

    sink = Sink()
    async with SseServer(stall) as srv:
        r = make_runner(sc, srv.url, sink)
        task = asyncio.create_task(r.run())
        await sink.until(lambda: len(sink.events(RequestKind.FIRST_TOKEN)) >= 4)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(sink.finals()) == 4 and r.in_flight == 0
    assert all(x.status is RequestStatus.CANCELLED for x in sink.finals().values())


async def test_usage_reconciliation_reaches_the_record(tmp_path: Path) -> None:
    sc = scenario(tmp_path, 'process = "burst"\nburst_size = 1', "")

    async def inline(body: dict, reply: Reply) -> None:
        await reply.start()
        for piece in ["<th", "ink>a b", " c</thi", "nk>\n", "\\boxed{", "1}"]:
            await reply.event(chunk({"content": piece}))
        await reply.event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        await reply.event(usage(9, 12))
        await reply.raw(b"data: [DONE]\n\n")
        await reply.end()

    sink = Sink()
    async with SseServer(inline) as srv:
        await make_runner(sc, srv.url, sink).run()
    (rec,) = sink.finals().values()
    assert rec.reasoning_tokens + rec.answer_tokens == rec.completion_tokens == 12
    assert not rec.tokens_exact and rec.t_first_visible is not None


@pytest.mark.parametrize("timerfd", [True, False])
async def test_send_lag_is_small(tmp_path: Path, timerfd: bool) -> None:
    """Open loop: dispatch times track the schedule (generous bounds: the machine may be loaded)."""
    sc = scenario(tmp_path, 'process = "gamma"\nrate = 400\nburstiness = 0.25', "num_prompts = 400")

    async def quick(body: dict, reply: Reply) -> None:
        await reasoning_then_answer(reply, 1, ["x"])

    sink = Sink()
    async with SseServer(quick) as srv:
        r = make_runner(sc, srv.url, sink, use_timerfd=timerfd)
        await r.run()
    assert r.pacer_kind == ("timerfd" if timerfd else "loop timer + spin")
    lags = np.array([x.send_lag for x in sink.finals().values()])
    assert np.all(lags >= 0)
    assert np.percentile(lags, 50) < 0.005 and np.percentile(lags, 99) < 0.05


async def test_cancel_before_requests_start_still_ends_them(tmp_path: Path) -> None:
    """Cancelled in the very callback that dispatched them: the tasks never run a step."""
    sc = scenario(tmp_path, 'process = "burst"\nburst_size = 5', "")
    sink = Sink()
    async with SseServer(correct_model) as srv:
        r = make_runner(sc, srv.url, sink)
        dispatch = r._dispatch

        def dispatch_then_cancel(now: float, deadline: float) -> None:
            dispatch(now, deadline)
            if r._next == 5:
                r.cancel()

        r._dispatch = dispatch_then_cancel  # type: ignore[method-assign]
        await asyncio.wait_for(r.run(), 5)
    finals = sink.finals()
    assert len(finals) == 5 and all(x.status is RequestStatus.CANCELLED for x in finals.values())
    assert not sink.events(RequestKind.SENT) and r.in_flight == 0 and r.failed == 5


async def test_gc_frozen_during_the_run_only(tmp_path: Path) -> None:
    import gc

    sc = scenario(tmp_path, 'process = "burst"\nburst_size = 3', "")
    frozen_at_send: list[int] = []
    sink = Sink()

    def publish(rec: Any) -> None:
        if isinstance(rec, RequestEvent) and rec.kind is RequestKind.SENT:
            frozen_at_send.append(gc.get_freeze_count())
        sink(rec)

    assert gc.get_freeze_count() == 0
    async with SseServer(correct_model) as srv:
        r = Runner(sc, base_url=srv.url, model="tiny", api_key=None, clock=Clock(), publish=publish)
        await r.run()
    assert len(frozen_at_send) == 3 and all(n > 0 for n in frozen_at_send)
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize(
    ("engine", "load_extra", "seeded"),
    [
        ('kind = "sim"', "", True),
        ('kind = "url"\nurl = "http://127.0.0.1:9"', "", False),
        ('kind = "url"\nurl = "http://127.0.0.1:9"', "request_seed = true", True),
        ('kind = "sim"', "request_seed = false", False),
    ],
)
async def test_request_seed_goes_to_the_simulator_only_unless_asked(
    tmp_path: Path, engine: str, load_extra: str, seeded: bool
) -> None:
    p = tmp_path / "s.toml"
    p.write_text(
        f'seed = 5\n[engine]\n{engine}\n[arrival]\nprocess = "constant"\nrate = 200\n'
        f"[load]\nnum_prompts = 4\n{load_extra}\n"
        '[[classes]]\nname = "e"\nprompts = "math-easy"\nmax_tokens = 100\n'
    )
    sc = load_scenario(str(p))
    async with SseServer(correct_model) as srv:
        await make_runner(sc, srv.url, Sink()).run()
    assert len(srv.seen) == 4
    assert all(("seed" in s.body) is seeded for s in srv.seen)
