"""Traces with lengths replayed over real HTTP on 127.0.0.1: each shipped sample's send times, synthesized
prompt lengths, shared prefix blocks and output lengths, as the server saw them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rllmtop.events import RequestStatus
from rllmtop.scenario import Scenario, load_scenario
from rllmtop.workload.prompts import load_scenario_prompts
from rllmtop.workload.schedule import request_seed
from rllmtop.workload.synth import BLOCK_TOKENS, PromptSynth
from rllmtop.workload.traces import read_trace

from .sse_server import Reply, SseServer, reasoning_then_answer
from .test_runner import Sink, make_runner

ROOT = Path(__file__).resolve().parents[2] / "scenarios" / "traces"
SAMPLES = {
    "burstgpt": "burstgpt-sample.csv",
    "mooncake": "mooncake-sample.jsonl",
    "azure": "azure-sample.csv",
}


def trace_scenario(
    tmp_path: Path, fmt: str, n: int, scale: str, max_tokens: int = 100_000, engine: str = ""
) -> Scenario:
    p = tmp_path / "s.toml"
    p.write_text(
        f"seed = 5\n{engine}\n[arrival]\nprocess = 'trace'\ntrace_file = '{ROOT / SAMPLES[fmt]}'\n"
        f"trace_format = '{fmt}'\n{scale}\n[load]\nnum_prompts = {n}\n"
        f"[[classes]]\nname = 't'\nprompts = 'math-easy'\nmax_tokens = {max_tokens}\nthinking = false\n"
    )
    return load_scenario(str(p))


async def short_answer(body: dict, reply: Reply) -> None:
    await reasoning_then_answer(reply, 0, ["ok"])


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
async def test_replay_sends_the_traces_lengths_and_times(tmp_path: Path, fmt: str) -> None:
    n = 60
    sc = trace_scenario(tmp_path, fmt, n, "rate_scale = 400.0")
    tr = read_trace(ROOT / SAMPLES[fmt], fmt)
    assert tr.input_tokens is not None and tr.output_tokens is not None
    sink = Sink()
    async with SseServer(short_answer) as srv:
        r = make_runner(sc, srv.url, sink)
        await r.run()
    assert (r.planned, r.done, r.failed) == (n, n, 0)
    finals = sink.finals()
    assert sorted(finals) == list(range(n))
    # the send times: the trace's gaps / rate_scale, on the session clock
    t_sched = np.array([finals[i].t_scheduled for i in range(n)])
    np.testing.assert_allclose(t_sched - t_sched[0], tr.times[:n] / 400.0, atol=1e-9)
    t_sent = np.array([finals[i].t_sent for i in range(n)])
    late = t_sent - t_sched
    # sent at those times: a margin for a loaded 2-core box (the runner's own lag: test_send_lag_is_small)
    assert late.min() >= 0 and np.median(late) < 0.25
    # the lengths: a prompt synthesized to the row's input length, max_tokens = its output length
    synth = PromptSynth(5)
    rid_of = {request_seed(5, i): i for i in range(n)}
    assert len(srv.seen) == n and len({s.body["messages"][-1]["content"] for s in srv.seen}) == n
    for s in srv.seen:
        i = rid_of[s.body["seed"]]
        rec = finals[i]
        target, out = int(tr.input_tokens[i]), int(tr.output_tokens[i])
        assert rec.target_input_tokens == target and rec.max_tokens == out == s.body["max_tokens"]
        assert rec.status is RequestStatus.OK and rec.turn == 0 and rec.conversation is None
        assert s.body["ignore_eos"] is True, "the simulator generates a trace's output length in full"
        filler, _, question = s.body["messages"][-1]["content"].partition("\n\n")
        assert question and question in {it.text for it in load_scenario_prompts(sc)[0]}
        assert len(filler.split()) + synth.question_tokens(question) == target


async def test_mooncake_shared_blocks_are_shared_text(tmp_path: Path) -> None:
    """Requests whose hash_ids agree on their first k blocks send the same first k x 512 words (the
    prefix cache's hits), and differ right after."""
    n = 120
    sc = trace_scenario(tmp_path, "mooncake", n, "rate_scale = 400.0")
    tr = read_trace(ROOT / SAMPLES["mooncake"], "mooncake")
    async with SseServer(short_answer) as srv:
        r = make_runner(sc, srv.url, Sink())
        await r.run()
    rid_of = {request_seed(5, i): i for i in range(n)}
    text = {rid_of[s.body["seed"]]: s.body["messages"][-1]["content"].split() for s in srv.seen}
    pairs = 0
    for i in range(n):
        for j in range(i + 1, n):
            hi, hj = tr.hash_ids(i).tolist(), tr.hash_ids(j).tolist()
            k = next(
                (m for m, (x, y) in enumerate(zip(hi, hj, strict=False)) if x != y), min(len(hi), len(hj))
            )
            if k == 0:
                continue
            shared = min(k * BLOCK_TOKENS, int(tr.input_tokens[i]), int(tr.input_tokens[j]))  # type: ignore[index]
            shared = min(shared, len(text[i]) - 40, len(text[j]) - 40)  # before the class's question
            assert text[i][:shared] == text[j][:shared]
            if k * BLOCK_TOKENS < min(len(text[i]), len(text[j])) - 60:
                assert (
                    text[i][k * BLOCK_TOKENS : k * BLOCK_TOKENS + 20]
                    != text[j][k * BLOCK_TOKENS : k * BLOCK_TOKENS + 20]
                )
            pairs += 1
    assert pairs > 100, "the sample's shared documents give many pairs"
