"""analysis: the capacity answers' pure functions (SLO flags, over-saturation, the knee, request timelines,
who filled the cache, vLLM-style peaks and pooled ITL, extra percentiles)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from rllmtop.errors import UserError
from rllmtop.events import MetricSample, RequestRecord, RequestStatus, Scrape, encode_gaps
from rllmtop.metrics import analysis as A


def req(
    rid: int,
    start: float,
    *,
    gaps_s: list[float] | None = None,
    reasoning: int = 10,
    answer: int = 5,
    ttft: float = 0.1,
    cls: str = "easy",
    status: RequestStatus = RequestStatus.OK,
    prompt: int | None = 100,
    queued: float = 0.0,
    done: bool = True,
) -> RequestRecord:
    """A request with one token per chunk; ``gaps_s`` between chunks (default 20 ms each)."""
    n = reasoning + answer
    gaps = gaps_s if gaps_s is not None else [0.02] * (n - 1)
    assert len(gaps) == n - 1
    t_ft = start + ttft
    times = [t_ft]
    for g in gaps:
        times.append(times[-1] + g)
    return RequestRecord(
        rid=rid,
        cls=cls,
        difficulty="easy",
        t_scheduled=start - queued,
        t_dispatch=start - queued,
        t_start=start,
        t_sent=start,
        t_first_token=t_ft,
        t_first_visible=times[reasoning] if answer else None,
        t_done=times[-1] if done else None,
        prompt_tokens=prompt,
        reasoning_tokens=reasoning,
        answer_tokens=answer,
        status=status if done else RequestStatus.IN_FLIGHT,
        finish_reason="stop" if done else None,
        gaps=encode_gaps([round(g * 1e6) for g in gaps]),
    )


# ------------------------------------------------------------------------------------------ SLO flags


def test_parse_slo_reads_keys_as_the_slo_table_does() -> None:
    assert A.parse_slo(["ttfvt_p99=30", "error_rate=0.01"]) == {"ttfvt_p99": 30.0, "error_rate": 0.01}
    assert A.parse_slo("e2e_p50=12,ttft_p90=0.5") == {"e2e_p50": 12.0, "ttft_p90": 0.5}


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("ttfvt_p99", "KEY=VALUE"),
        ("ttfvt_p95=3", "unknown SLO key"),
        ("ttfvt_p99=abc", "not a number"),
        ("ttfvt_p99=-1", "must be"),
        ("error_rate=2", "fraction"),
        ("ttfvt_p99=nan", "must be"),
        ("", "at least one"),
    ],
)
def test_parse_slo_names_the_bad_item(item: str, needle: str) -> None:
    with pytest.raises(UserError) as ei:
        A.parse_slo([item] if item else [])
    assert needle in ei.value.what and ei.value.hint


def test_parse_slo_fuzz_only_ever_raises_user_errors() -> None:
    rng = random.Random(15)
    alphabet = "=,_.:-+ep9ttfvtxyz0123456789 \t\x00é∞"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        try:
            out = A.parse_slo(text)
        except UserError:
            continue
        assert out and all(k in A.SLO_KEYS and math.isfinite(v) and v >= 0 for k, v in out.items())


def test_goodput_from_slo_takes_the_latency_limits_per_request() -> None:
    g = A.goodput_from_slo({"ttfvt_p99": 30, "ttfvt_p50": 10, "e2e_p99": 120, "error_rate": 0.1})
    assert g == {"ttfvt": 10.0, "e2el": 120.0}
    assert A.goodput_from_slo({"accuracy": 0.5}) == {}


def test_slo_misses_carry_the_value_and_check_slos_keeps_its_words() -> None:
    s = A.asu_summary([req(i, i * 1.0, ttft=0.1 + i) for i in range(5)]).overall
    misses = A.slo_misses(s, {"ttft_p99": 1.0, "error_rate": 0.5})
    assert [m.key for m in misses] == ["ttft_p99"]
    assert misses[0].value == pytest.approx(s.ttft[99]) and misses[0].limit == 1.0
    assert A.check_slos(s, {"ttft_p99": 1.0}) == [f"ttft_p99 {s.ttft[99]:.3f}s > 1s"]


def test_asu_summary_computes_extra_percentiles_on_request() -> None:
    recs = [req(i, i * 1.0, ttft=0.01 * (i + 1)) for i in range(100)]
    s = A.asu_summary(recs, pcts=[25, 75])
    assert set(s.overall.ttft) == {25, 50, 75, 90, 99}
    assert s.overall.ttft[25] == pytest.approx(np.percentile([0.01 * (i + 1) for i in range(100)], 25))
    with pytest.raises(ValueError, match="percentile"):
        A.asu_summary(recs, pcts=[101])


# ------------------------------------------------------------------------------------------ over-saturation

RULE = A.SaturationRule(window=10.0, min_growth=5, min_readings=8)


def _readings(n: int = 41, dt: float = 0.25, waiting: float = 1.0, kv: float = 0.99) -> dict[str, np.ndarray]:
    t = np.arange(n) * dt
    return {"t": t, "waiting": waiting * t, "kv": np.full(n, kv)}


def test_a_growing_queue_with_the_cache_full_is_over_saturated() -> None:
    r = _readings()
    v = A.over_saturated(10.0, RULE, t=r["t"], kv=r["kv"], waiting=r["waiting"])
    assert v.fired and v.clause == "queue"
    assert "waiting queue grew from" in v.reason and "KV usage reached 99%" in v.reason


def test_preemptions_count_as_a_full_cache_when_usage_dips() -> None:
    r = _readings(kv=0.6)
    pre = np.arange(41) // 10
    v = A.over_saturated(10.0, RULE, t=r["t"], kv=r["kv"], waiting=r["waiting"], preemptions=pre)
    assert v.fired and "preemption" in v.reason
    v = A.over_saturated(10.0, RULE, t=r["t"], kv=r["kv"], waiting=r["waiting"], preemptions=np.zeros(41))
    assert not v.fired


@pytest.mark.parametrize(
    ("waiting", "kv", "now", "why"),
    [
        (1.0, 0.5, 10.0, "cache not full"),
        (0.0, 0.99, 10.0, "flat queue"),
        (-1.0, 0.99, 10.0, "shrinking queue"),
        (0.3, 0.99, 10.0, "grew by less than min_growth"),
        (1.0, 0.99, 5.0, "window not covered yet"),
    ],
)
def test_no_stop_without_every_condition(waiting: float, kv: float, now: float, why: str) -> None:
    r = _readings(waiting=waiting, kv=kv)
    w = r["waiting"] - (r["waiting"].min() if waiting < 0 else 0)
    assert not A.over_saturated(now, RULE, t=r["t"], kv=r["kv"], waiting=w).fired, why


def test_a_burst_that_drains_within_the_window_does_not_stop_a_level() -> None:
    t = np.arange(41) * 0.25
    waiting = np.where(t < 5, 4 * t, np.maximum(20 - 4 * (t - 5), 0))  # up 20, back down to 0
    assert not A.over_saturated(10.0, RULE, t=t, kv=np.full(41, 0.99), waiting=waiting).fired


def test_goodput_collapse_fires_only_with_enough_ended_and_a_rate() -> None:
    r = _readings(waiting=0.0, kv=0.2)
    ended = np.linspace(0.5, 9.5, 20)
    good = np.zeros(20, dtype=bool)
    kw = {"t": r["t"], "kv": r["kv"], "waiting": r["waiting"], "ended": ended}
    v = A.over_saturated(10.0, RULE, good=good, offered_rate=4.0, **kw)
    assert v.fired and v.clause == "goodput" and "0 of the 20 requests" in v.reason
    assert not A.over_saturated(10.0, RULE, good=~good, offered_rate=4.0, **kw).fired
    assert not A.over_saturated(10.0, RULE, good=good, offered_rate=None, **kw).fired
    few = {**kw, "ended": ended[:3]}
    assert not A.over_saturated(10.0, RULE, good=good[:3], offered_rate=4.0, **few).fired


def _scrape(t: float, engine: str, kv: float, waiting: float, pre: float = 0.0, cap: float = 100.0) -> Scrape:
    samples = (
        MetricSample(t, "kv_cache_usage", kv),
        MetricSample(t, "requests_waiting", waiting),
        MetricSample(t, "preemptions_total", pre),
        MetricSample(t, "kv_total_blocks", cap),
    )
    return Scrape(t, 0.001, True, samples=samples, engine_id=engine)


def test_monitor_sums_a_fleets_queues_and_weights_kv_by_capacity() -> None:
    def run(cap_a: float) -> A.SaturationVerdict:
        mon = A.SaturationMonitor(RULE)
        for i in range(41):
            t = i * 0.25
            mon.add(_scrape(t, "b", 0.90, 0.4 * t, cap=100))  # each grows 4 in 10 s: below min_growth
            mon.add(_scrape(t, "a", 0.99, 0.4 * t, cap=cap_a))
        return mon.check(10.0)

    v = run(300)  # KV (0.99 x 300 + 0.90 x 100) / 400 = 0.9675: full; the queues summed grow 8
    assert v.fired and v.clause == "queue" and "KV usage reached 97%" in v.reason
    assert not run(100).fired  # equal capacities: (0.99 + 0.90) / 2 = 0.945, not full


def test_monitor_memory_is_bounded_by_the_window() -> None:
    mon = A.SaturationMonitor(RULE)
    for i in range(4000):
        mon.add(_scrape(i * 0.25, "", 0.5, 1.0))
        mon.add(req(i, i * 0.25))
    mon.check(1000.0)
    assert len(mon._points) <= 50 and len(mon._ends) <= 50


def test_scan_of_a_recorded_run_finds_the_first_firing() -> None:
    scrapes = [_scrape(i * 0.25, "", 0.99, max(0.0, i * 0.25 - 5) * 2) for i in range(121)]
    v = A.saturation_scan(scrapes, [], RULE)
    t = np.array([s.t for s in scrapes])
    w = np.array([max(0.0, x - 5) * 2 for x in t])
    first = next(x for x in t if A.over_saturated(x, RULE, t=t, kv=np.full(t.size, 0.99), waiting=w).fired)
    assert v.fired and v.t == first and first >= 0.8 * RULE.window  # not before the window is covered
    quiet = [_scrape(i * 0.25, "", 0.99, 3.0) for i in range(121)]
    assert not A.saturation_scan(quiet, [], RULE).fired
    assert A.SaturationRule().describe().startswith("over-saturated when")


# ------------------------------------------------------------------------------------------ the knee


def test_knee_of_a_concave_curve_is_at_its_bend() -> None:
    x = [1, 2, 4, 8, 16, 32]
    y = [1, 2, 3.8, 4.2, 4.3, 4.35]
    assert A.knee_index(x, y) == 2
    assert A.knee_index(list(reversed(x)), list(reversed(y))) == 3  # order does not matter


def test_knee_of_a_collapsing_curve_is_its_peak_and_none_without_one() -> None:
    assert A.knee_index([1, 2, 3, 4, 5], [1, 2, 3, 1, 0.5]) == 2
    assert A.knee_index([1, 2, 3, 4], [1, 2, 3, 4]) is None  # a straight line
    assert A.knee_index([1, 2], [1, 2]) is None
    assert A.knee_index([1, 2, 3, 4], [1, None, 3, 4]) is None  # the missing one left out: a line
    assert A.knee_index([1, 2, 3, 4], [1, None, 3.9, 4]) == 2  # indices stay those of the input
    assert A.knee_index([1, 2, 3], [2, 2, 2]) is None


# ------------------------------------------------------------------------------------------ request timelines


def test_spans_give_each_phase_from_the_record() -> None:
    r = req(7, 10.0, reasoning=10, answer=5, ttft=0.5, queued=1.0)
    sp = A.request_spans([r])
    b = sp.phase_bounds()
    assert b["queued"][0][0] == pytest.approx(9.0) and b["queued"][1][0] == pytest.approx(10.0)
    assert b["waiting"][1][0] == pytest.approx(10.5)
    assert b["thinking"][0][0] == pytest.approx(10.5)
    assert b["thinking"][1][0] == pytest.approx(10.5 + 10 * 0.02)
    assert b["answering"][1][0] == pytest.approx(r.t_done)
    assert sp.stall_row.size == 0 and not sp.open[0]


def test_no_visible_token_means_thinking_to_the_end_and_in_flight_ends_now() -> None:
    cut = req(1, 0.0, reasoning=20, answer=0)
    live = req(2, 1.0, done=False)
    sp = A.request_spans([live, cut], now=5.0)
    assert list(sp.rid) == [1, 2]  # start order
    b = sp.phase_bounds()
    assert math.isnan(b["answering"][0][0]) and b["thinking"][1][0] == pytest.approx(cut.t_done)
    assert sp.open[1] and sp.t_end[1] == 5.0


def test_stall_rule_marks_long_gaps_against_the_requests_median() -> None:
    gaps = [0.02] * 14
    gaps[6] = 2.0  # > 10x median and > 1 s: a stall
    gaps[9] = 0.5  # > 10x median but < 1 s: not
    slow = [0.2] * 14
    slow[3] = 1.5  # > 1 s but < 10x the median of 0.2: not
    sp = A.request_spans([req(1, 0.0, gaps_s=gaps), req(2, 0.0, gaps_s=slow)])
    assert list(sp.stall_row) == [0]
    t6 = 0.1 + sum(gaps[:6])
    assert sp.stall_t0[0] == pytest.approx(t6, abs=1e-5) and sp.stall_t1[0] == pytest.approx(
        t6 + 2.0, abs=1e-5
    )


def test_lanes_never_overlap_and_are_as_few_as_the_peak_concurrency() -> None:
    rng = random.Random(3)
    recs = [req(i, rng.uniform(0, 60), ttft=rng.uniform(0.01, 3)) for i in range(300)]
    sp = A.request_spans(recs)
    lane, n = sp.lanes()
    begin = np.where(np.isnan(sp.t_queued), sp.t_start, sp.t_queued)
    for k in range(n):
        idx = np.flatnonzero(lane == k)
        order = idx[np.argsort(begin[idx])]
        assert np.all(begin[order][1:] >= sp.t_end[order][:-1] - 1e-9)
    edges = sorted([(b, 1) for b in begin] + [(e, -1) for e in sp.t_end])
    peak = max(np.cumsum([d for _, d in edges]))
    assert n == peak


def test_spans_shift_onto_the_load_start() -> None:
    sp = A.request_spans([req(1, 100.0)]).shifted(100.0)
    assert sp.t_start[0] == pytest.approx(0.0) and sp.t_end[0] == pytest.approx(0.1 + 14 * 0.02)


# ------------------------------------------------------------------------------------------ who filled the cache


def test_tokens_so_far_follow_the_chunk_times() -> None:
    r = req(1, 0.0, reasoning=10, answer=5, ttft=1.0)  # chunks at 1.00, 1.02, ... 1.28
    assert A.tokens_so_far(r, 0.5) == (0, 0)
    assert A.tokens_so_far(r, 1.0 + 0.02 * 4 + 1e-4) == (5, 0)
    assert A.tokens_so_far(r, 1.0 + 0.02 * 12 + 1e-4) == (10, 3)
    assert A.tokens_so_far(r, 99) == (10, 5)
    bare = RequestRecord(
        1, "c", t_start=0.0, t_first_token=1.0, t_first_visible=3.0, t_done=5.0, reasoning_tokens=8,
        answer_tokens=8,
    )  # fmt: skip
    assert A.tokens_so_far(bare, 3.0) == (8, 0)  # no gap blob: spread evenly from first token to end
    assert A.tokens_so_far(bare, 5.0) == (8, 8)


def test_holders_are_the_requests_in_flight_most_tokens_first_stalled_last() -> None:
    gaps = [0.02] * 14
    gaps[2] = 5.0
    a = req(1, 0.0, reasoning=10, answer=5, prompt=1000)
    b = req(2, 0.0, reasoning=10, answer=5, prompt=50, gaps_s=gaps)  # stalled from 0.14 to 5.14
    c = req(3, 0.0, reasoning=10, answer=5, prompt=500)
    late = req(4, 50.0)
    hs = A.cache_holders([a, b, c, late], 0.2)
    assert [h.rid for h in hs] == [1, 3, 2]
    assert hs[0].tokens == 1000 + hs[0].reasoning and hs[0].phase == "thinking"
    assert hs[-1].stalled and not hs[0].stalled


def test_cache_moments_at_a_kv_peak_and_a_preemption_burst() -> None:
    big = req(1, 0.0, reasoning=200, answer=10, prompt=3000, gaps_s=[0.1] * 209)  # 0.1 .. 21 s
    small = req(2, 5.0, reasoning=20, answer=5, prompt=10, gaps_s=[0.1] * 24)  # 5.1 .. 7.5 s
    idle = req(3, 30.0)
    samples = []
    for i in range(160):
        t = i * 0.25
        kv = 0.97 if 9.0 <= t <= 10.0 else 0.5
        pre = 0.0 if t < 15 else (6.0 if t >= 16 else 3.0)
        samples += [MetricSample(t, "kv_cache_usage", kv), MetricSample(t, "preemptions_total", pre)]
        samples.append(MetricSample(t, "requests_running", 1.0))
    moments = A.cache_moments([big, small, idle], samples, top=3)
    kinds = [(m.kind, round(m.t)) for m in moments]
    assert ("kv peak", 9) in kinds or ("kv peak", 10) in kinds
    assert any(k == "preemptions" and 14 <= t <= 17 for k, t in kinds)
    peak = next(m for m in moments if m.kind == "kv peak")
    assert peak.holders[0].rid == 1 and peak.kv == pytest.approx(0.97)
    assert peak.in_flight == 1 and peak.held_tokens == peak.holders[0].tokens
    burst = next(m for m in moments if m.kind == "preemptions")
    assert burst.preemptions == pytest.approx(6.0)
    assert A.cache_moments([big], []) == []


def test_peak_load_and_pooled_gaps_count_as_vllm_bench_serve() -> None:
    a = req(1, 0.0, reasoning=10, answer=10, gaps_s=[0.01] * 19, ttft=0.05)
    b = req(2, 0.1, reasoning=10, answer=10, gaps_s=[0.01] * 19, ttft=0.05)
    tps, conc = A.peak_load([a, b])
    assert conc == 2 and tps == pytest.approx(40.0)  # every token within the first second
    g = A.chunk_gaps([a, b, req(3, 0, status=RequestStatus.ERROR)])
    assert g.size == 38 + 14 - 14 and np.allclose(g, 0.01)
    assert A.peak_load([]) == (0.0, 0)
