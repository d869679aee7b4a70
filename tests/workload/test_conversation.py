"""Multi-turn conversations over real HTTP on 127.0.0.1: the history each turn carries (earlier answers
without their reasoning), turn numbering and rids in the records, think time, drawn turn counts, a failed
turn or load.duration ending a conversation, and one schedule split over senders."""

from __future__ import annotations

from pathlib import Path

import pytest

from rllmtop.events import RequestStatus
from rllmtop.scenario import Scenario, load_scenario
from rllmtop.workload.conversation import STRIDE, think_time, turn_count, turn_item
from rllmtop.workload.prompts import load_scenario_prompts
from rllmtop.workload.schedule import Schedule, request_seed

from .sse_server import Reply, SseServer, reasoning_then_answer
from .test_runner import Sink, make_runner

SEED = 3


def conv_scenario(
    tmp_path: Path, conversation: str, load: str = "num_prompts = 8", rate: float = 40
) -> Scenario:
    p = tmp_path / "s.toml"
    p.write_text(
        f"seed = {SEED}\n[arrival]\nprocess = 'constant'\nrate = {rate}\n[load]\n{load}\n"
        "[[classes]]\nname = 'chat'\nprompts = 'math-easy'\nmax_tokens = 300\nweight = 3\n"
        f"[classes.conversation]\n{conversation}\n"
        "[[classes]]\nname = 'one'\nprompts = 'mcq'\nmax_tokens = 200\nweight = 1\n"
    )
    return load_scenario(str(p))


class Model:
    """Answers each request with reasoning (which must never come back) and an answer naming its rid."""

    def __init__(self, n: int, fail: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.rid_of = {
            request_seed(SEED, a * STRIDE + t): a * STRIDE + t for a in range(n) for t in range(STRIDE)
        }
        self.fail = fail
        self.bodies: dict[int, dict] = {}

    async def __call__(self, body: dict, reply: Reply) -> None:
        rid = self.rid_of[body["seed"]]
        self.bodies[rid] = body
        if rid in self.fail:
            await reply.json(500, {"error": "boom"})
            return
        await reasoning_then_answer(reply, 3, [f"answer {rid} ", "done"])


async def test_history_turns_and_records(tmp_path: Path) -> None:
    sc = conv_scenario(tmp_path, "turns = 3\nthink_time = 0.05")
    spec = sc.classes[0].conversation
    assert spec is not None
    items = load_scenario_prompts(sc)[0]
    model, sink = Model(8), Sink()
    async with SseServer(model) as srv:
        r = make_runner(sc, srv.url, sink)
        await r.run()
    finals = sink.finals()
    convs = sorted({rid // STRIDE for rid, rec in finals.items() if rec.cls == "chat"})
    singles = sorted(rid for rid, rec in finals.items() if rec.cls == "one")
    assert convs and singles, "the seed gives both classes"
    assert r.planned == len(finals) == 3 * len(convs) + len(singles) == r.done
    for rid in singles:
        rec = finals[rid]
        assert rid % STRIDE == 0 and rec.turn == 0 and rec.conversation is None
        assert len(model.bodies[rid]["messages"]) == 1
    for a in convs:
        recs = [finals[a * STRIDE + t] for t in range(3)]
        assert [(x.conversation, x.turn) for x in recs] == [(a, 0), (a, 1), (a, 2)]
        assert a * STRIDE + 3 not in finals
        bodies = [model.bodies[a * STRIDE + t] for t in range(3)]
        for t, body in enumerate(bodies):
            msgs = body["messages"]
            assert [m["role"] for m in msgs] == ["user", "assistant"] * t + ["user"]
            for k in range(t):  # turn k's user text as sent, and its answer without the reasoning
                assert msgs[2 * k]["content"] == bodies[k]["messages"][-1]["content"]
                assert msgs[2 * k + 1]["content"] == f"answer {a * STRIDE + k} done"
            assert not any(" r0" in m["content"] for m in msgs)
            if t:
                assert msgs[-1]["content"] == turn_item(items, SEED, a, t).text
        for t in (1, 2):  # a turn is sent its think time after the previous answer ended
            prev, cur = recs[t - 1], recs[t]
            assert prev.t_done is not None and cur.t_sent is not None
            wait = think_time(spec, SEED, a, t)
            assert cur.t_scheduled == pytest.approx(prev.t_done + wait, abs=2e-3)
            assert cur.t_sent >= prev.t_done + wait - 2e-3
    assert any("conversations' turns included" in log.text for log in sink.logs())


async def test_drawn_turns_and_a_failed_turn(tmp_path: Path) -> None:
    sc = conv_scenario(tmp_path, "turns = 1\nturns_max = 4\nthink_time = 0", "num_prompts = 12")
    spec = sc.classes[0].conversation
    assert spec is not None
    counts = {a: turn_count(spec, SEED, a) for a in range(12)}
    assert set(counts.values()) == {1, 2, 3, 4}, "the seed draws every count"
    sched = Schedule(sc)
    chat: list[int] = []
    for ch in sched.chunks():
        assert ch.arrivals is not None  # a scenario with conversations names the arrivals
        chat += [a for a, c in zip(ch.arrivals.tolist(), ch.classes.tolist(), strict=True) if c == 0]
    broken = next(a for a in chat if counts[a] >= 3)
    model, sink = Model(12, fail={broken * STRIDE + 1}), Sink()
    async with SseServer(model) as srv:
        r = make_runner(sc, srv.url, sink)
        await r.run()
    finals = sink.finals()
    for a in chat:
        sent = sorted(rid - a * STRIDE for rid in finals if rid // STRIDE == a)
        assert sent == ([0, 1] if a == broken else list(range(counts[a])))
    assert finals[broken * STRIDE + 1].status is RequestStatus.ERROR
    assert r.planned == len(finals) + counts[broken] - 2, "planned counts every turn; a failed turn ends it"


async def test_duration_ends_later_turns(tmp_path: Path) -> None:
    sc = conv_scenario(tmp_path, "turns = 3\nthink_time = 1000", "duration = 0.5")
    model, sink = Model(40), Sink()
    async with SseServer(model) as srv:
        r = make_runner(sc, srv.url, sink)
        await r.run()
    finals = sink.finals()
    assert finals and all(rid % STRIDE == 0 for rid in finals), "no turn is due before the duration ends"
    chat = sum(1 for rec in finals.values() if rec.cls == "chat")
    assert any(f"{2 * chat} conversation turn(s) not sent" in log.text for log in sink.logs())


async def test_senders_split_by_conversation(tmp_path: Path) -> None:
    sc = conv_scenario(tmp_path, "turns = 2\nthink_time = 0")
    whole = Schedule(sc)
    seen: list[set[int]] = []
    for k in range(2):
        model, sink = Model(8), Sink()
        async with SseServer(model) as srv:
            r = make_runner(sc, srv.url, sink, schedule=whole.part(k, 2), worker=k)
            await r.run()
        rids = set(sink.finals())
        assert all((rid // STRIDE) % 2 == k for rid in rids), "a conversation stays with its arrival's sender"
        assert r.planned == len(rids)
        seen.append(rids)
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == whole.planned
