"""The scheduler and KV cache, stepped by hand in model time."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rllmtop.sim.engine import FINISHED, Engine, EngineConfig, Request, StepResult
from rllmtop.sim.outputs import OutputPlan

STEP = 0.01  # every step costs exactly this with the config below


def cfg(**kw: object) -> EngineConfig:
    base: dict[str, object] = dict(
        num_gpu_blocks=1000,
        block_size=16,
        max_num_seqs=64,
        max_num_batched_tokens=2048,
        max_model_len=16000,
        enable_prefix_caching=False,
        watermark=0.0,
        t0=0.0,
        beta=0.0,
        t_weights=STEP,
        a=0.0,
        c=0.0,
        p=0.0,
    )
    base.update(kw)
    return EngineConfig(**base)  # type: ignore[arg-type]


def plan(n: int, reasoning: int = 0, first_id: int = 1000) -> OutputPlan:
    return OutputPlan(
        token_ids=list(range(first_id, first_id + n)),
        reasoning_tokens=reasoning,
        thinking=reasoning > 0,
        finish_reason="stop",
        tier="easy",
        reference="1",
        answer="1",
        correct=True,
        planned_reasoning=reasoning,
        planned_answer=n - reasoning,
    )


def req(
    rid: str, prompt: int, out: int, *, prompt_ids: list[int] | None = None, reasoning: int = 0
) -> Request:
    ids = prompt_ids if prompt_ids is not None else [hash((rid, i)) % 50000 for i in range(prompt)]
    return Request(rid, ids, plan(out, reasoning), max_tokens=out)


def run(engine: Engine, now: float = 0.0, limit: int = 100_000) -> list[StepResult]:
    steps = []
    while engine.has_work:
        r = engine.step(now)
        assert r.num_reqs > 0, "engine has work but scheduled nothing"
        now = r.start + r.duration
        steps.append(r)
        assert len(steps) < limit
    return steps


def test_single_request_timeline() -> None:
    e = Engine(cfg())
    r = req("a", 100, 10, reasoning=4)
    e.add(r, 0.0)
    steps = run(e)
    assert len(steps) == 10  # one prefill step that samples the first token, then 9 decode steps
    assert r.t_first_token == pytest.approx(STEP)
    assert r.t_done == pytest.approx(10 * STEP)
    assert r.t_reasoning_end == pytest.approx(5 * STEP)  # the end-of-thinking token is token #5
    assert r.t_first_answer == pytest.approx(6 * STEP)
    assert (r.status, r.finish_reason, r.num_output) == (FINISHED, "stop", 10)
    h = e.stats.histograms
    assert h["time_to_first_token_seconds"].count == 1
    assert h["inter_token_latency_seconds"].count == 9
    assert h["inter_token_latency_seconds"].sum == pytest.approx(9 * STEP)
    assert e.stats.prompt_tokens == 100 and e.stats.generation_tokens == 10
    assert e.kv_usage == 0.0


def test_histograms_are_in_model_seconds() -> None:
    e = Engine(cfg())
    e.add(req("a", 10, 5), 0.0)
    run(e)
    assert e.stats.histograms["e2e_request_latency_seconds"].sum == pytest.approx(5 * STEP)


def test_a_request_is_not_admitted_before_it_arrives() -> None:
    """A server behind its schedule steps at a model time before an arrival it has already read:
    the request waits for its arrival time (it used to join that step and have its arrival moved)."""
    e = Engine(cfg())
    a, b = req("a", 10, 20), req("b", 10, 5)
    e.add(a, 0.0)
    e.add(b, 0.055)  # arrives between the 5th and 6th step of a
    admitted_at = None
    now = 0.0
    while e.has_work:
        step = e.step(now)
        if admitted_at is None and b.t_first_scheduled is not None:
            admitted_at = step.start
        now = step.start + step.duration
    assert b.t_arrival == 0.055
    assert admitted_at == pytest.approx(0.06)
    assert b.t_first_scheduled is not None and b.t_first_scheduled >= b.t_arrival
    # an idle engine asked to step before the next arrival starts at that arrival
    e2 = Engine(cfg())
    c = req("c", 10, 3)
    e2.add(c, 2.0)
    step = e2.step(0.5)
    assert step.start == 2.0 and step.num_reqs == 1 and c.t_first_scheduled == 2.0


def test_chunked_prefill_respects_the_token_budget() -> None:
    e = Engine(cfg(max_num_batched_tokens=64))
    r = req("a", 200, 3)
    e.add(r, 0.0)
    steps = run(e)
    assert [s.num_tokens for s in steps[:4]] == [64, 64, 64, 8]
    assert r.t_first_token == pytest.approx(4 * STEP)


def test_iteration_time_formula() -> None:
    c = cfg(t0=1e-4, beta=1e-5, t_weights=5e-3, a=1e-4, c=1e-7, p=1e-9)
    e = Engine(c)
    e.add(req("a", 100, 50), 0.0)
    first = e.step(0.0)  # prefill of 100 tokens: compute-bound max(5 ms, 100 x 0.1 ms) = 10 ms
    assert first.duration == pytest.approx(1e-4 + 1e-5 + 1e-2 + 1e-9 * 100 * 50)
    second = e.step(first.duration)  # one decode token with 101 tokens of context
    assert second.duration == pytest.approx(1e-4 + 1e-5 + 5e-3 + 1e-7 * 101)


def test_max_num_seqs_caps_the_batch() -> None:
    e = Engine(cfg(max_num_seqs=3))
    rs = [req(str(i), 20, 5) for i in range(10)]
    for r in rs:
        e.add(r, 0.0)
    steps = run(e)
    assert max(s.num_reqs for s in steps) == 3
    assert all(r.status == FINISHED and r.num_output == 5 for r in rs)
    # FCFS: the first three finish first
    assert sorted(rs, key=lambda r: (r.t_done, r.rid))[:3] == rs[:3]


def test_preemption_by_recompute_when_kv_runs_out() -> None:
    e = Engine(cfg(num_gpu_blocks=20))  # 320 tokens for 4 x (16 + 150) tokens of demand
    rs = [req(str(i), 16, 150) for i in range(4)]
    for r in rs:
        e.add(r, 0.0)
    preempted: list[str] = []
    emitted = dict.fromkeys((r.rid for r in rs), 0)
    now = 0.0
    while e.has_work:
        s = e.step(now)
        now = s.start + s.duration
        preempted += [p.rid for p in s.preempted]
        for r, n in s.emitted:
            emitted[r.rid] += n
        assert len(e.pool.free) >= 0 and e.kv_usage <= 1.0
    assert preempted and preempted[0] == "3"  # the most recently admitted goes first
    assert e.stats.preemptions == len(preempted)
    # every preempted request completed, and no token was emitted twice
    assert all(r.status == FINISHED and r.finish_reason == "stop" for r in rs)
    assert emitted == dict.fromkeys(emitted, 150)
    assert sum(r.preemptions for r in rs) == len(preempted)
    assert e.stats.histograms["request_num_preemptions"].sum == len(preempted)
    assert len(e.pool.free) == 20 and e.stats.prompt_tokens == 4 * 16


def test_watermark_holds_back_admission() -> None:
    e = Engine(cfg(num_gpu_blocks=100, watermark=0.5, max_model_len=800))
    a, b = req("a", 16 * 40, 10), req("b", 16 * 20, 10)
    e.add(a, 0.0)
    e.add(b, 0.0)
    s = e.step(0.0)
    # a alone is admitted (nothing running, no watermark); b would leave 100-41-21 < 50 free
    assert [r.rid for r, _ in s.emitted] == ["a"] and e.num_waiting == 1
    run(e, s.duration)
    assert b.status == FINISHED


def test_prefix_cache_hits_on_a_shared_prompt() -> None:
    prompt = list(range(100))
    for caching in (True, False):
        e = Engine(cfg(enable_prefix_caching=caching))
        first = req("a", 0, 5, prompt_ids=prompt)
        e.add(first, 0.0)
        end = run(e)[-1]
        assert e.kv_usage == 0.0  # cached blocks of a finished request count as free
        second = req("b", 0, 5, prompt_ids=[*prompt])
        e.add(second, end.start + end.duration)
        steps = run(e, end.start + end.duration)
        if caching:
            assert second.num_cached_prompt == 96  # six full blocks; the last token is always computed
            assert steps[0].num_tokens == 4
            assert (e.stats.prefix_cache_queries, e.stats.prefix_cache_hits) == (200, 96)
            assert e.stats.prompt_tokens_cached == 96
        else:
            assert second.num_cached_prompt == 0 and steps[0].num_tokens == 100
            assert e.stats.prefix_cache_hits == 0


def test_prefix_cache_evicts_least_recently_used_blocks() -> None:
    e = Engine(cfg(enable_prefix_caching=True, num_gpu_blocks=20, max_model_len=300))
    old = req("old", 0, 1, prompt_ids=list(range(160)))  # 10 blocks, cached after it ends
    e.add(old, 0.0)
    now = run(e)[-1]
    t = now.start + now.duration
    big = req("big", 0, 1, prompt_ids=list(range(1000, 1000 + 300)))  # needs 19 blocks: evicts old ones
    e.add(big, t)
    last = run(e, t)[-1]
    again = req("again", 0, 1, prompt_ids=list(range(160)))
    e.add(again, last.start + last.duration)
    run(e, last.start + last.duration)
    assert again.num_cached_prompt < 144


def test_abort_frees_blocks_and_counts() -> None:
    e = Engine(cfg())
    a, b = req("a", 50, 100), req("b", 50, 100)
    e.add(a, 0.0)
    s = e.step(0.0)
    e.add(b, s.duration)
    e.abort(a, s.duration)
    e.abort(b, s.duration)
    e.abort(b, s.duration)  # twice is harmless
    assert not e.has_work and e.kv_usage == 0.0
    assert e.stats.finished["abort"] == 2
    assert a.finish_reason == "abort"


@pytest.mark.parametrize(("acceptance", "k"), [(1.0, 3), (0.0, 3), (1.0, 1)])
def test_speculative_decoding_tokens_per_step(acceptance: float, k: int) -> None:
    e = Engine(cfg(spec_tokens=k, spec_acceptance=acceptance, spec_method="eagle"))
    r = req("a", 10, 41)
    e.add(r, 0.0)
    steps = run(e)
    assert r.num_output == 41
    decode = steps[1:]
    # drafts are capped by what is left to generate: min(k, remaining - 1) per step
    if acceptance == 1.0:
        assert [n for s in decode for _, n in s.emitted] == [k + 1] * (40 // (k + 1)) + [40 % (k + 1)] * bool(
            40 % (k + 1)
        )
        assert e.stats.spec_accepted_tokens == 40 - len(decode)
    else:
        assert len(decode) == 40 and e.stats.spec_accepted_tokens == 0
        assert e.stats.spec_draft_tokens == sum(min(k, rem - 1) for rem in range(40, 1, -1))
    assert e.stats.spec_drafts == sum(1 for s in decode if s.num_tokens > 1)


def test_speculative_acceptance_rate_is_respected() -> None:
    e = Engine(cfg(spec_tokens=4, spec_acceptance=0.6, spec_method="eagle", seed=3))
    for i in range(20):
        e.add(req(str(i), 10, 400), 0.0)
    run(e)
    st_ = e.stats
    # expected accepted per draft: sum_{j=1..4} 0.6^j = 1.3056
    assert st_.spec_accepted_tokens / st_.spec_drafts == pytest.approx(1.3056, rel=0.05)


@settings(max_examples=60, deadline=None)
@given(
    blocks=st.integers(8, 80),
    seqs=st.integers(1, 8),
    budget=st.integers(16, 256),
    caching=st.booleans(),
    spec=st.integers(0, 3),
    jobs=st.lists(
        st.tuples(st.integers(1, 60), st.integers(1, 60), st.integers(0, 3)), min_size=1, max_size=12
    ),
)
def test_invariants_under_random_workloads(
    blocks: int, seqs: int, budget: int, caching: bool, spec: int, jobs: list[tuple[int, int, int]]
) -> None:
    e = Engine(
        cfg(
            num_gpu_blocks=blocks,
            max_num_seqs=seqs,
            max_num_batched_tokens=budget,
            enable_prefix_caching=caching,
            max_model_len=blocks * 16,
            spec_tokens=spec,
            spec_acceptance=0.5,
        )
    )
    rs = []
    for i, (p, o, shared) in enumerate(jobs):
        p = min(p, blocks * 16 - o)
        if p < 1:
            continue
        ids = [shared * 7 + j for j in range(p)]  # requests with the same `shared` share a prefix
        r = Request(str(i), ids, plan(o), o)
        rs.append(r)
        e.add(r, float(i) * 0.001)
    now = 0.0
    seen: dict[str, int] = {}
    while e.has_work:
        s = e.step(now)
        assert s.num_reqs > 0
        now = s.start + s.duration
        for r, n in s.emitted:
            seen[r.rid] = seen.get(r.rid, 0) + n
        in_use = [b for r in e.running for b in r.blocks]
        refs = sum(e.pool.ref)
        assert refs == len(in_use)
        assert len(e.pool.free) + len({*in_use}) == blocks
        assert e.num_running <= seqs
        for r in e.running:
            assert r.num_computed <= r.num_prompt + r.num_output
            assert len(r.blocks) * 16 >= r.num_computed
    assert all(r.status == FINISHED and r.num_output == r.plan.n_tokens for r in rs)
    assert seen == {r.rid: r.plan.n_tokens for r in rs}
    assert len(e.pool.free) == blocks
