"""metrics/analysis.py: the one implementation of every number rllmtop shows."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest

from rllmtop.events import (
    ClientHealth,
    HistogramSample,
    MetricSample,
    RequestRecord,
    RequestStatus,
    Scrape,
    encode_gaps,
)
from rllmtop.metrics import analysis as A


def rec(
    rid: int,
    cls: str = "easy",
    *,
    sent: float = 0.0,
    ttft: float = 0.1,
    ttfvt: float | None = 0.5,
    e2e: float = 1.0,
    reasoning: int = 10,
    answer: int = 5,
    status: RequestStatus = RequestStatus.OK,
    correct: bool | None = None,
    finish: str = "stop",
) -> RequestRecord:
    n_chunks = reasoning + answer
    ft = sent + ttft
    done = sent + e2e
    # evenly spaced chunks between first token and done
    gaps = [int((done - ft) / max(n_chunks - 1, 1) * 1e6)] * max(n_chunks - 1, 0)
    return RequestRecord(
        rid=rid,
        cls=cls,
        t_scheduled=sent,
        t_dispatch=sent,
        t_sent=sent,
        t_first_token=ft,
        t_first_visible=None if ttfvt is None else sent + ttfvt,
        t_done=done if status is RequestStatus.OK else None,
        reasoning_tokens=reasoning,
        answer_tokens=answer,
        status=status,
        correct=correct,
        finish_reason=finish if status is RequestStatus.OK else None,
        gaps=encode_gaps(gaps),
    )


def test_percentiles_match_numpy_and_empty_is_none() -> None:
    vals = [3.0, 1.0, 2.0, 10.0]
    got = A.percentiles(vals)
    assert got[50] == pytest.approx(np.percentile(vals, 50))
    assert got[99] == pytest.approx(np.percentile(vals, 99))
    assert A.percentiles([]) == {50: None, 90: None, 99: None}


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    bounds = (1.0, 2.0, 4.0, math.inf)
    cum = (10.0, 20.0, 30.0, 30.0)  # 10 obs in each finite bucket
    assert A.histogram_quantile(0.5, bounds, cum) == pytest.approx(1.5)  # rank 15: middle of (1, 2]
    assert A.histogram_quantile(0.25, bounds, cum) == pytest.approx(0.75)  # first bucket starts at 0
    assert A.histogram_quantile(0.9, bounds, cum) == pytest.approx(2.0 + 2.0 * 0.7)
    assert A.histogram_quantile(0.5, bounds, (0, 0, 0, 0)) is None
    # rank in the +Inf bucket -> highest finite bound
    assert A.histogram_quantile(0.99, bounds, (0, 0, 1, 10)) == 4.0


def test_histogram_window_uses_bucket_deltas_and_survives_reset() -> None:
    b = (1.0, math.inf)
    prev = HistogramSample(0.0, "ttft_seconds", b, (100.0, 100.0), 50.0, 100.0)
    cur = HistogramSample(1.0, "ttft_seconds", b, (100.0, 110.0), 80.0, 110.0)
    _, win = A.histogram_window(prev, cur)
    assert list(win) == [0.0, 10.0]  # the lifetime histogram would say 100 fast ones: the window says none
    reset = HistogramSample(2.0, "ttft_seconds", b, (3.0, 4.0), 2.0, 4.0)
    _, win = A.histogram_window(cur, reset)
    assert list(win) == [3.0, 4.0]


def test_merge_histograms_across_engines_before_quantile() -> None:
    b = (1.0, 2.0, math.inf)
    merged_b, merged = A.merge_histograms(
        [(b, np.array([10.0, 10.0, 10.0])), (b, np.array([0.0, 10.0, 10.0]))]
    )
    assert merged_b == b and list(merged) == [10.0, 20.0, 20.0]
    assert A.histogram_quantile(0.5, merged_b, merged) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        A.merge_histograms([(b, np.zeros(3)), ((1.0, math.inf), np.zeros(2))])


def test_counter_increase_and_rates_treat_drop_as_reset() -> None:
    assert A.counter_increase([0, 5, 9, 2, 4]) == 5 + 4 + 2 + 2
    t, r = A.counter_rates([0.0, 1.0, 2.0, 3.0], [0.0, 10.0, 30.0, 5.0])
    assert list(t) == [1.0, 2.0, 3.0]
    assert list(r) == [10.0, 20.0, 5.0]


def test_asu_summary_per_class_and_overall() -> None:
    recs = [rec(i, "easy", sent=i * 0.1, e2e=1.0 + 0.01 * i, correct=(i % 2 == 0)) for i in range(10)]
    recs += [
        rec(100 + i, "hard", sent=i * 0.1, e2e=10.0, reasoning=100, ttfvt=None, finish="length")
        for i in range(5)
    ]
    recs.append(rec(200, "hard", status=RequestStatus.ERROR))
    s = A.asu_summary(recs)
    by = s.by_name()
    assert by["easy"].requests == 10 and by["easy"].accuracy == pytest.approx(0.5)
    assert by["hard"].errors == 1 and by["hard"].ok == 5
    assert by["hard"].truncated == 5 and by["hard"].no_visible == 5
    assert by["hard"].ttfvt == {50: None, 90: None, 99: None}
    assert by["easy"].ttfvt[50] == pytest.approx(0.5)
    assert by["all"].requests == 16
    assert by["all"].error_rate == pytest.approx(1 / 16)
    assert by["easy"].reasoning_len[50] == 10
    # service throughput: tokens / (last end - first send)
    easy = by["easy"]
    assert easy.output_tps == pytest.approx(easy.output_tokens / easy.span_s)


def test_straggler_rule_flags_long_runs_against_class_median() -> None:
    recs = [rec(i, "easy", e2e=1.0) for i in range(9)] + [rec(9, "easy", e2e=5.0)]
    rule = A.StragglerRule(factor=3.0, min_finished=5)
    base = rule.baselines(recs)
    assert base.why("easy", 5.0, 10) is not None
    assert base.why("easy", 2.0, 10) is None
    assert base.why("easy", 0.5, 40) is not None  # reasoning 40 > 3 x median 10
    # an unknown class falls back to the overall medians
    assert base.why("other", 5.0, 0) is not None
    assert A.asu_summary(recs, rule).by_name()["easy"].stragglers == 1
    assert "3x the median of its class" in rule.describe() and "3x its batch median" in rule.describe()


def test_straggler_rule_needs_enough_finished() -> None:
    base = A.StragglerRule(min_finished=5).baselines([rec(i, e2e=1.0) for i in range(3)])
    assert base.why("easy", 100.0, 10_000) is None


def test_check_slos_reports_each_miss() -> None:
    recs = [rec(i, e2e=2.0, correct=False) for i in range(10)]
    s = A.asu_summary(recs).overall
    assert A.check_slos(s, {"e2e_p99": 5.0}) == []
    missed = A.check_slos(s, {"e2e_p99": 1.0, "accuracy": 0.5, "ttfvt_p50": 10.0})
    assert len(missed) == 2 and any("e2e_p99" in m for m in missed) and any("accuracy" in m for m in missed)
    with pytest.raises(ValueError, match="unknown SLO"):
        A.check_slos(s, {"latency": 1.0})


def test_timeline_counts_tokens_and_marks_missing_metrics_nan() -> None:
    recs = [rec(i, sent=float(i), e2e=1.5, reasoning=30, answer=10) for i in range(4)]
    samples = [MetricSample(t, "kv_cache_usage", t / 10, (("engine", "0"),)) for t in np.arange(0, 5, 0.25)]
    samples += [MetricSample(t, "preemptions_total", float(int(t)), ()) for t in np.arange(0, 5, 0.25)]
    tl = A.timeline(recs, samples, step=1.0)
    assert tl.t[0] == 0.0 and len(tl.t) == len(tl.columns["arrivals"])
    assert tl.columns["arrivals"].sum() == 4
    assert tl.columns["completions"].sum() == 4
    assert tl.columns["reasoning_tps"].sum() == pytest.approx(4 * 30)
    assert tl.columns["answer_tps"].sum() == pytest.approx(4 * 10)
    assert np.all(np.isnan(tl.columns["requests_waiting"]))  # never served: missing, not 0
    assert tl.columns["kv_cache_usage"][1] == pytest.approx(0.175)  # last reading before t=2.0
    assert tl.columns["preemptions"].sum() == pytest.approx(4.0)


def test_straggler_rule_gives_no_verdict_before_half_a_class_has_finished() -> None:
    # a burst: the 6 fast ones finished, 10 of the class still run -> the median is not known yet
    fast = [rec(i, "hard", e2e=1.0) for i in range(6)]
    open_now = [("hard", 20.0, 5000)] * 10
    base = A.StragglerRule().baselines(fast, open_now)
    assert base.medians("hard") == (None, None)
    assert base.why("hard", 20.0, 5000) is None
    # once most of the batch finished, the one still running far behind is flagged
    done = fast + [rec(10 + i, "hard", e2e=4.0) for i in range(8)]
    base = A.StragglerRule().baselines(done, [("hard", 30.0, 9000)])
    med_t, _ = base.medians("hard")
    assert med_t == 4.0  # 15 requests, one open: the 8th smallest finished
    assert base.why("hard", 30.0, 9000) is not None
    assert base.why("hard", 11.0, 10) is None


def test_censored_median_equals_the_plain_median_when_nothing_is_open() -> None:
    recs = [rec(i, e2e=float(i + 1)) for i in range(10)]
    assert A.StragglerRule().baselines(recs).medians("easy")[0] == pytest.approx(5.5)


# ---------------------------------------------------------------------------------------------- stragglers of a batch


def stragglers_burst(seed: int = 0, n: int = 128, cap_s: float = 31.0) -> list[RequestRecord]:
    """Shaped like the `stragglers` scenario: one burst of mixed classes sent at once; easy requests end
    in seconds, most hard/mcq ones run to the 8,192-token cap at ``cap_s`` (so they sit at their class
    median), a few medium ones too."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        cls = str(rng.choice(["easy", "medium", "hard", "mcq"], p=[0.4, 0.3, 0.15, 0.15]))
        p_cap = {"easy": 0.0, "medium": 0.15, "hard": 0.75, "mcq": 0.6}[cls]
        capped = rng.random() < p_cap
        if capped:
            e2e, rsn, fin = cap_s, 8192, "length"
        else:
            lo, hi = {"easy": (1.0, 5.0), "medium": (2.0, 12.0), "hard": (15.0, 28.0), "mcq": (3.0, 18.0)}[
                cls
            ]
            e2e = float(rng.uniform(lo, hi))
            rsn, fin = int(e2e / cap_s * 8000), "stop"
        start = 0.52 + float(rng.uniform(0, 0.01))
        out.append(
            RequestRecord(
                rid=i,
                cls=cls,
                t_scheduled=0.5,
                t_dispatch=0.5,
                t_start=start,
                t_sent=start + 0.001,
                t_first_token=start + 0.1,
                t_first_visible=start + e2e * 0.7 if fin == "stop" else None,
                t_done=start + e2e,
                reasoning_tokens=rsn,
                answer_tokens=100 if fin == "stop" else 0,
                finish_reason=fin,
            )
        )
    return out


def test_requests_at_their_class_median_but_far_behind_their_batch_are_stragglers() -> None:
    recs = stragglers_burst()
    capped = [r for r in recs if r.finish_reason == "length" and r.cls in ("hard", "mcq")]
    assert len(capped) >= 15
    base = A.StragglerRule().baselines(recs)
    assert base.medians("hard")[0] == pytest.approx(31.0)  # each capped hard request is at its median
    # compared with its class alone (the rule before), none of them straggles
    assert [r.rid for r in capped if base.why(r.cls, r.e2e, r.reasoning_tokens) is not None] == []
    # compared with its batch too, every one does, and says why
    whys = [base.why(r.cls, r.e2e, r.reasoning_tokens, r.latency_start) for r in capped]
    assert all(w is not None and "batch" in w for w in whys)
    med = base.batch_median(capped[0].latency_start)
    assert med is not None and 3 * med < 31.0
    # the summary counts them: every capped request of the burst is a straggler
    s = A.asu_summary(recs)
    assert s.by_name()["hard"].stragglers >= sum(1 for r in capped if r.cls == "hard")
    # and no easy request is far behind its batch (they are the batch's fast half)
    easy = [r for r in recs if r.cls == "easy"]
    assert not any(
        (w := base.why(r.cls, r.e2e, r.reasoning_tokens, r.latency_start)) and "batch" in w for r in easy
    )


def test_batch_verdicts_are_censored_live_like_class_ones() -> None:
    recs = stragglers_burst()
    rule = A.StragglerRule()

    def at(now: float) -> tuple[A.StragglerBaselines, list[A.InFlight]]:
        done = [r for r in recs if r.t_done is not None and r.t_done <= now]
        running = [r for r in recs if r.t_done is not None and r.t_done > now]
        flight = [A.InFlight(r.cls, now - (r.latency_start or 0), 0, r.latency_start) for r in running]
        return rule.baselines(done, flight), flight

    base, flight = at(3.0)  # only the fast ones have finished: no batch median yet, nothing flagged
    assert base.batch_median(0.52) is None
    assert all(base.why(f.cls, f.age, 0, f.t_start) is None for f in flight)
    base, flight = at(12.0)  # most of the burst is done: the median is known, 11.5 s is not 3x it yet
    med = base.batch_median(0.52)
    assert med is not None and 3 * med > 11.5
    assert all(base.why(f.cls, f.age, 0, f.t_start) is None for f in flight)
    base, flight = at(28.0)  # the capped ones still running are far behind now
    assert flight and all(base.why(f.cls, f.age, 0, f.t_start) for f in flight if f.age > 3 * med + 0.5)
    lim_t, _ = base.limits("hard", 0.52)
    assert lim_t == pytest.approx(3 * base.batch_median(0.52))  # type: ignore[operator]
    # an in-flight request that cannot be placed (no start) switches batch verdicts off: safe, not wrong
    blind = rule.baselines(
        [r for r in recs if r.t_done is not None and r.t_done <= 28.0], [("hard", 27.5, 0)]
    )
    assert blind.batch_median(0.52) is None


def test_a_steady_uniform_workload_has_no_batch_stragglers() -> None:
    rng = np.random.default_rng(5)
    recs = [rec(i, "easy", sent=i * 0.25, e2e=float(rng.lognormal(0.5, 0.2))) for i in range(400)]
    assert A.asu_summary(recs).overall.stragglers == 0
    recs.append(rec(400, "easy", sent=50.0, e2e=40.0))  # one far behind everyone around it
    assert A.asu_summary(recs).overall.stragglers == 1


def test_vectorised_judgement_agrees_with_why_for_every_request() -> None:
    rng = np.random.default_rng(9)
    recs = stragglers_burst(seed=3) + [
        rec(1000 + i, str(rng.choice(["a", "b"])), sent=float(rng.uniform(0, 60)), e2e=float(rng.gamma(2, 3)),
            reasoning=int(rng.integers(1, 400)))
        for i in range(300)
    ]  # fmt: skip
    base = A.StragglerRule().baselines(recs)
    codes = base.judge(
        np.array([r.cls for r in recs], dtype=object),
        np.array([r.e2e for r in recs], dtype=float),
        np.array([r.reasoning_tokens for r in recs], dtype=float),
        np.array([r.latency_start for r in recs], dtype=float),
    )
    whys = [base.why(r.cls, r.e2e, r.reasoning_tokens, r.latency_start) for r in recs]
    assert [c > 0 for c in codes] == [w is not None for w in whys]
    assert all((c == A.BATCH_RUN_TIME) == ("batch" in (w or "")) for c, w in zip(codes, whys, strict=True))
    assert A.asu_summary(recs).overall.stragglers == int((codes > 0).sum())
    assert "within 5 s of it" in A.StragglerRule().describe()


# ---------------------------------------------------------------------------------------------- one pass, columns


def _mixed(n: int = 300, seed: int = 1) -> list[RequestRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        cls = ("easy", "hard")[i % 2]
        status = RequestStatus.OK if rng.random() > 0.1 else RequestStatus.ERROR
        r = rec(
            i, cls, sent=i * 0.1, e2e=float(rng.gamma(2, 2 if cls == "easy" else 6)), status=status,
            reasoning=int(rng.integers(1, 500)), correct=bool(rng.random() < 0.7), ttfvt=None if i % 7 == 0 else 0.5,
        )  # fmt: skip
        out.append(r)
    return out


def test_the_summary_reads_its_input_once_and_keeps_no_record() -> None:
    recs = _mixed()
    reads = 0

    def stream() -> Iterator[RequestRecord]:
        nonlocal reads
        reads += 1
        yield from recs

    one_pass = A.asu_summary(stream())
    assert reads == 1
    assert one_pass == A.asu_summary(recs)
    # numpy columns keyed by RequestRecord field names (a recording's request_columns) give the same
    fields = [f for f in RequestRecord.__dataclass_fields__ if f != "gaps"]
    cols = {f: [getattr(r, f) for r in recs] for f in fields}
    cols["gaps"] = [r.gaps for r in recs]
    assert A.asu_summary(cols) == one_pass
    as_numpy = {k: np.array(v, dtype=object if k in ("gaps", "status") else None) for k, v in cols.items()}
    assert A.asu_summary(as_numpy) == one_pass  # object columns holding None too
    c = A.RequestColumns.from_records(recs)
    assert len(c) == len(recs) and A.asu_summary(c) == one_pass
    assert c.t_done.dtype == np.float64 and c.cls.dtype == np.int32


def test_requests_still_in_flight_are_not_ended_and_are_counted_apart() -> None:
    recs = [rec(i, e2e=1.0) for i in range(10)]
    recs.append(replace(rec(10), status=RequestStatus.IN_FLIGHT, t_done=None))  # a killed run's row
    s = A.asu_summary(recs)
    assert s.overall.requests == 10 and s.unfinished == 1 and s.overall.errors == 0


def test_tpot_and_itl_come_from_the_gap_blob_in_session_seconds() -> None:
    # 4 chunks of 1, 3, 1, 1 tokens (6 tokens), gaps 10, 30, 20 ms: last token 60 ms after the first
    r = RequestRecord(
        rid=1, cls="x", t_sent=0.0, t_first_token=0.1, t_first_visible=0.1, t_done=0.5,
        reasoning_tokens=0, answer_tokens=6, gaps=encode_gaps([10_000, 30_000, 20_000], [1, 3, 1, 1]),
    )  # fmt: skip
    s = A.asu_summary([r]).overall
    assert s.tpot[50] == pytest.approx(0.060 / 5)  # per token, vllm bench serve's TPOT (t_done not used)
    assert s.itl[50] == pytest.approx(0.060 / 3)  # per chunk gap, vllm bench serve's ITL
    one_chunk = replace(r, gaps=encode_gaps([], [6]))  # everything in one chunk: no gap at all
    s = A.asu_summary([one_chunk]).overall
    assert s.itl[50] is None and s.tpot[50] == 0.0
    no_blob = replace(r, gaps=b"")  # not recorded: from the end time
    s = A.asu_summary([no_blob]).overall
    assert s.tpot[50] == pytest.approx((0.5 - 0.1) / 5) and s.itl[50] == s.tpot[50]


# ---------------------------------------------------------------------------------------------- goodput


def test_goodput_counts_requests_meeting_every_slo_over_the_run_span() -> None:
    recs = [rec(i, "easy", sent=float(i), e2e=1.0 + i, ttfvt=0.5 + 0.1 * i) for i in range(10)]
    recs += [rec(20 + i, "hard", sent=float(i), e2e=30.0, ttfvt=None) for i in range(5)]  # no answer shown
    recs.append(rec(30, "easy", sent=0.0, status=RequestStatus.ERROR))
    slo = {"e2el": 5.0, "ttfvt": 0.75}
    s = A.asu_summary(recs, goodput=slo)
    easy, hard, all_ = s.by_name()["easy"], s.by_name()["hard"], s.overall
    assert easy.good == 3  # ttfvt 0.5, 0.6, 0.7 <= 0.75 (and their e2e 1, 2, 3 <= 5)
    assert hard.good == 0  # a request that never showed an answer misses a TTFVT SLO
    span = max(r.t_done for r in recs if r.t_done is not None) - 0.0
    assert s.run_span_s == pytest.approx(span)
    assert easy.goodput_rps == pytest.approx(3 / span) and all_.goodput_rps == pytest.approx(3 / span)
    assert easy.goodput_tps == pytest.approx(3 * 5 / span)  # answer tokens of the good ones
    assert (easy.goodput_rps or 0) + (hard.goodput_rps or 0) == pytest.approx(all_.goodput_rps)  # one span
    mask = A.goodput_mask(recs, slo)
    assert int(mask.sum()) == 3 and not mask[-1]
    # without SLOs: no goodput rates, every ok request counts as good
    plain = A.asu_summary(recs).overall
    assert plain.goodput_rps is None and plain.good == plain.ok
    with pytest.raises(ValueError, match="unknown goodput"):
        A.asu_summary(recs, goodput={"e2e": 1.0})


def test_goodput_itl_is_met_by_a_request_without_gaps() -> None:
    r = rec(1, e2e=1.0, reasoning=0, answer=1)
    assert A.goodput_mask([r], {"itl": 0.001}).tolist() == [True]
    slow = rec(2, e2e=10.0, reasoning=0, answer=3)  # gaps of ~4.5 s
    assert A.goodput_mask([slow], {"itl": 1.0}).tolist() == [False]


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("ttfvt:30 e2el:120", {"ttfvt": 30.0, "e2el": 120.0}),
        (["ttft:0.5", "itl:0.05"], {"ttft": 0.5, "itl": 0.05}),
        (["TTFVT:1e1"], {"ttfvt": 10.0}),
    ],
)
def test_parse_goodput(spec: str | list[str], want: dict[str, float]) -> None:
    assert A.parse_goodput(spec) == want


@pytest.mark.parametrize(
    ("spec", "what"),
    [
        ("ttfvt", "is not KEY:SECONDS"),
        ("e2e:10", "unknown key 'e2e'"),
        ("ttft:fast", "'fast' is not a number of seconds"),
        ("ttft:-1", "positive number of seconds"),
        ("ttft:nan", "positive number of seconds"),
        ("ttft:1 ttft:2", "names 'ttft' twice"),
        ("", "at least one"),
        ("ttft:", "is not KEY:SECONDS"),
    ],
)
def test_parse_goodput_refuses_bad_input_with_one_clear_line(spec: str, what: str) -> None:
    from rllmtop.errors import UserError

    with pytest.raises(UserError) as ei:
        A.parse_goodput(spec)
    assert what in ei.value.what and "\n" not in ei.value.what
    assert "seconds" in ei.value.hint and "ttfvt" in ei.value.hint


def test_parse_goodput_fuzz_never_raises_anything_but_user_error() -> None:
    from rllmtop.errors import UserError

    rng = np.random.default_rng(0)
    alphabet = list("ttfvel:. 0123456789-einfa,;\t")
    for _ in range(300):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 24))))
        try:
            out = A.parse_goodput(text)
        except UserError:
            continue
        assert out and all(k in A.GOODPUT_KEYS and v > 0 and math.isfinite(v) for k, v in out.items())


# ---------------------------------------------------------------------------------------------- live, bounded


def test_live_asu_is_exact_for_counts_and_recent_for_percentiles() -> None:
    recs = _mixed(n=2000, seed=4)
    live = A.LiveAsu(recent=500, goodput={"e2el": 8.0})
    for r in recs:
        live.add(r)
    live.add(replace(recs[0], status=RequestStatus.IN_FLIGHT, t_done=None))  # not ended: ignored
    got = live.summary()
    full = A.asu_summary(recs, goodput={"e2el": 8.0})
    for name, c in full.by_name().items():
        g = got.by_name()[name]
        for f in (
            "requests",
            "ok",
            "errors",
            "graded",
            "correct",
            "reasoning_tokens",
            "answer_tokens",
            "good",
        ):
            assert getattr(g, f) == getattr(c, f), (name, f)
        assert g.span_s == pytest.approx(c.span_s) and g.goodput_rps == pytest.approx(c.goodput_rps)
    assert got.recent == 500 and live.ended == 2000
    tail = A.asu_summary(recs[-500:])
    assert got.overall.e2e == tail.overall.e2e and got.overall.stragglers == tail.overall.stragglers
    assert live._held <= 500 + A.LiveAsu.CHUNK  # bounded: never more than recent + one chunk of columns
    small = A.LiveAsu(recent=10_000)
    for r in recs[:100]:
        small.add(r)
    assert small.summary() == A.asu_summary(recs[:100])  # all of them fit: no "recent" label
    state = small.freeze()
    assert state.baselines().medians("easy") == A.StragglerRule().baselines(recs[:100]).medians("easy")


# ---------------------------------------------------------------------------------------------- trust verdicts


def _health(lags: list[float], worker: int = 0) -> list[ClientHealth]:
    return [
        ClientHealth(t=float(i + 1), interval=1.0, lag_max=v, lag_mean=v / 2, worker=worker)
        for i, v in enumerate(lags)
    ]


def test_client_delay_verdict_fires_on_a_starved_client_and_names_the_requests_touched() -> None:
    recs = [rec(i, sent=float(i), e2e=0.5) for i in range(10)]  # request i lives [i, i + 0.5]
    lags = [0.001] * 10
    lags[4] = 0.653  # interval [4, 5] was late: touches request 4 only
    v = A.client_delay_verdict(_health(lags), recs)
    assert v.measured and v.fired and v.max_delay_s == pytest.approx(0.653) and v.t_worst == 5.0
    assert (v.touched, v.requests, v.intervals_over) == (1, 10, 1)
    assert (
        v.sentence
        == "latencies include up to 653ms of client delay (client event loop late); 1 of 10 requests were touched"
    )
    assert A.trust_warnings(v) == [v.sentence]


def test_client_delay_verdict_says_whether_the_client_was_starved_or_busy() -> None:
    """The heartbeat's CPU use in the worst interval tells a client waiting for a CPU (less CPU than half
    its lateness: measured 34 ms of CPU in a 4.6 s late interval beside a CPU vLLM) from one busy itself
    (90% of a core or more), and the sentence names the remedy for each; in between it names neither."""
    recs = [rec(i, sent=float(i), e2e=0.5) for i in range(10)]

    def health(cpu: float, late: float = 0.9) -> list[ClientHealth]:
        hs = _health([0.001] * 10)
        hs[4] = ClientHealth(t=5.0, interval=1.0, lag_max=late, lag_mean=late / 2, cpu_s=cpu)
        return hs

    starved = A.client_delay_verdict(health(0.03), recs)
    assert starved.cpu_share == pytest.approx(0.03)
    assert "it was waiting for a CPU (it used 3% of a core then)" in starved.sentence
    assert "nice = 10" in starved.sentence and "taskset" in starved.sentence
    busy = A.client_delay_verdict(health(0.97), recs)
    assert "it was busy itself (97% of a core then)" in busy.sentence and "--workers" in busy.sentence
    # 44% of a core and 51 ms late (seen in the TUI beside the simulator): one long callback of its own, or
    # a short wait for the CPU; it cannot tell
    mixed = A.client_delay_verdict(health(0.44, late=0.051), recs)
    assert mixed.sentence.endswith(
        "; it used 44% of a core then (its own work, or other processes on the machine)"
    )
    # a time-lapse at speed 10: a 1 s (session) interval is 0.1 wall seconds; 0.095 s of CPU is 95% busy
    lapse = A.client_delay_verdict(health(0.095), recs, clock="simulated", speed=10.0)
    assert lapse.cpu_share == pytest.approx(0.95) and "busy itself (95% of a core then)" in lapse.sentence
    unknown = A.client_delay_verdict(_health([0.001] * 4 + [0.9] + [0.001] * 5), recs)
    assert unknown.cpu_share is None and unknown.sentence.endswith("requests were touched")


def test_client_delay_verdict_is_silent_on_an_idle_run_and_says_when_not_measured() -> None:
    recs = [rec(i, sent=float(i)) for i in range(10)]
    v = A.client_delay_verdict(_health([0.0004] * 12), recs)
    assert v.measured and not v.fired and v.touched == 0 and A.trust_warnings(v) == []
    assert "kept up" in v.sentence
    none = A.client_delay_verdict([], recs)
    assert not none.measured and not none.fired and "not measured" in none.sentence


def test_client_delay_in_a_time_lapse_run_is_in_simulated_seconds_and_says_so() -> None:
    recs = [rec(i, sent=float(i), e2e=3.0) for i in range(5)]
    v = A.client_delay_verdict(_health([0.05] * 8), recs, clock="simulated", speed=10.0)
    assert v.fired and v.touched == 5
    assert "simulated seconds: 5.0ms of wall time at speed 10" in v.sentence


def test_client_delay_is_matched_to_the_sender_of_each_request() -> None:
    recs = [replace(rec(i, sent=1.0, e2e=2.0), worker=i % 2) for i in range(6)]
    health = _health([0.0, 0.5, 0.0, 0.0], worker=1) + _health([0.0] * 4, worker=0)
    v = A.client_delay_verdict(health, recs)
    assert v.touched == 3  # only worker 1's requests
    orphan = [replace(rec(9, sent=1.0, e2e=2.0), worker=7)]  # a sender without heartbeat: any late loop
    assert A.client_delay_verdict(health, orphan).touched == 1


def test_client_delay_verdict_fuzz() -> None:
    rng = np.random.default_rng(2)
    for _ in range(200):
        n = int(rng.integers(0, 20))
        recs = [rec(i, sent=float(rng.uniform(0, 20)), e2e=float(rng.uniform(0.01, 5))) for i in range(n)]
        hs = _health([float(x) for x in rng.exponential(0.005, int(rng.integers(0, 25)))])
        v = A.client_delay_verdict(hs, recs)
        assert 0 <= v.touched <= v.requests == n
        assert v.fired == any(h.lag_max > A.CLIENT_DELAY_S for h in hs)
        brute = sum(
            any(h.t - h.interval < (r.t_done or 0) and h.t > (r.latency_start or 0) for h in hs if h.lag_max > A.CLIENT_DELAY_S)
            for r in recs
        )  # fmt: skip
        assert v.touched == brute


def test_sim_drift_verdict() -> None:
    behind = [MetricSample(float(t), "sim_drift_seconds", 0.02 * t) for t in range(0, 301, 10)]
    v = A.sim_drift_verdict(behind, 300.0)
    assert v.measured and v.fired and v.drift_s == pytest.approx(6.0) and v.bound_s == 1.0
    assert v.sentence.startswith("the simulator fell 6.00s behind its model schedule (2.0% of the 300s run)")
    ok = [MetricSample(float(t), "sim_drift_seconds", 0.001 * t) for t in range(0, 31)]
    assert not A.sim_drift_verdict(ok, 30.0).fired  # 30 ms over 30 s: within 1% (0.3 s)
    assert A.sim_drift_bound(2.0) == 0.05 and A.sim_drift_bound(50.0) == 0.5
    vllm = A.sim_drift_verdict([MetricSample(0.0, "kv_cache_usage", 0.1)], 10.0)
    assert not vllm.measured and not vllm.fired and A.trust_warnings(vllm, None) == []
    fleet = A.sim_drift_verdict({"a": ok, "b": behind}, 300.0)
    assert fleet.fired and fleet.engine == "b" and "(engine b)" in fleet.sentence


# ---------------------------------------------------------------------------------------------- fleet


def _engine(
    kv: float, waiting: float, cap: float | None = None, name: str = "kv_total_blocks"
) -> list[MetricSample]:
    out = []
    for t in np.arange(0, 10, 0.5):
        out += [
            MetricSample(float(t), "kv_cache_usage", kv),
            MetricSample(float(t), "requests_waiting", waiting),
            MetricSample(float(t), "requests_running", 2.0),
            MetricSample(float(t), "preemptions_total", float(int(t))),
        ]
    if cap is not None:
        out.append(MetricSample(0.0, name, cap))
    return out


def test_fleet_kv_is_capacity_weighted_queues_and_rates_summed() -> None:
    fleet = {"a": _engine(1.0, 10.0, 1000), "b": _engine(0.2, 0.0, 3000)}
    w, how = A.kv_weights(fleet)
    assert w == {"a": 0.25, "b": 0.75} and "kv_total_blocks" in how
    tl = A.timeline((), fleet, step=1.0, t_end=10.0)
    assert tl.kv_weighting == how
    assert tl.columns["kv_cache_usage"][3] == pytest.approx(0.25 * 1.0 + 0.75 * 0.2)
    assert tl.columns["requests_waiting"][3] == 10.0 and tl.columns["requests_running"][3] == 4.0
    assert tl.columns["kv_spread"][3] == pytest.approx(0.8) and tl.columns["waiting_spread"][3] == 10.0
    assert tl.columns["preemptions"].sum() == pytest.approx(2 * 9.0)
    e = A.engine_summary(fleet, 0.0, 10.0, step=1.0)
    assert e.engines == 2 and e.kv_usage_mean == pytest.approx(0.4) and e.kv_usage_peak == 1.0
    assert e.waiting_peak == 10.0 and e.preemptions == pytest.approx(18.0)
    assert e.kv_spread_mean == pytest.approx(0.8) and e.waiting_spread_peak == 10.0
    each = A.engine_summaries(fleet, 0.0, 10.0, step=1.0)
    assert each["a"].kv_usage_mean == 1.0 and each["b"].kv_usage_mean == pytest.approx(0.2)
    tls = A.engine_timelines(fleet, step=1.0)
    assert set(tls) == {"a", "b"} and tls["a"].columns["requests_waiting"][3] == 10.0


def test_fleet_kv_falls_back_to_equal_weights_and_says_so() -> None:
    mixed = {"a": _engine(1.0, 0.0, 1000), "b": _engine(0.2, 0.0, 50_000, "kv_total_tokens")}
    w, how = A.kv_weights(mixed)
    assert w == {"a": 0.5, "b": 0.5} and how.startswith("equal weights")
    tokens = {
        "a": _engine(1.0, 0.0, 1000, "kv_total_tokens"),
        "b": _engine(0.2, 0.0, 3000, "kv_total_tokens"),
    }
    assert A.kv_weights(tokens)[0] == {"a": 0.25, "b": 0.75}
    assert A.kv_weights({"": _engine(0.5, 0.0)}) == ({"": 1.0}, "one engine")


def test_a_single_engine_recording_is_a_fleet_of_one() -> None:
    samples = _engine(0.5, 3.0)
    scrapes = [Scrape(t=s.t, latency_s=0.0, ok=True, samples=(s,)) for s in samples]  # engine_id ""
    per = A.samples_by_engine(scrapes)
    assert list(per) == [""] and len(per[""]) == len(samples)
    flat = A.timeline((), samples, step=1.0, t_end=10.0)
    one = A.timeline((), per, step=1.0, t_end=10.0)
    assert set(flat.columns) == set(one.columns) and "kv_spread" not in one.columns
    for k in flat.columns:
        np.testing.assert_array_equal(flat.columns[k], one.columns[k])
    assert A.engine_summary(per, 0.0, 10.0) == A.engine_summary(samples, 0.0, 10.0)


def test_engines_missing_a_metric_stay_missing_in_the_fleet() -> None:
    fleet = {"a": _engine(0.5, 1.0), "b": [MetricSample(float(t), "kv_cache_usage", 0.1) for t in range(10)]}
    tl = A.timeline((), fleet, step=1.0, t_end=10.0)
    assert tl.columns["requests_waiting"][3] == 1.0  # only a serves it: a's value, not a + 0
    only_kv = {"b": fleet["b"], "c": fleet["b"]}
    assert np.all(np.isnan(A.timeline((), only_kv, step=1.0, t_end=10.0).columns["requests_waiting"]))


def test_conversations_get_a_per_turn_breakdown_and_single_requests_none() -> None:
    """Issue 16: per-turn TTFVT. The k-th turn of every conversation is summarised apart (history grows,
    so later turns answer later); the same numbers from records and from columns; none without turns."""
    from rllmtop.metrics.analysis import RequestColumns, asu_summary
    from rllmtop.summary import summary_notes

    rs = []
    for conv in range(10):
        for turn in range(3):
            t0 = conv * 1.0 + turn * 5
            rs.append(
                RequestRecord(
                    rid=conv * 64 + turn, cls="chat", t_scheduled=t0, t_dispatch=t0, t_start=t0, t_sent=t0,
                    t_first_token=t0 + 0.1, t_first_visible=t0 + 1 + turn + conv / 100, t_done=t0 + 2 + turn,
                    reasoning_tokens=100 * (turn + 1), answer_tokens=10, conversation=conv, turn=turn,
                )
            )  # fmt: skip
    s = asu_summary(rs)
    assert [t.turn for t in s.turns] == [1, 2, 3] and all(t.requests == 10 == t.ok for t in s.turns)
    assert [t.ttfvt[50] for t in s.turns] == pytest.approx([1.045, 2.045, 3.045])
    assert [t.reasoning_len[50] for t in s.turns] == [100, 200, 300]
    assert asu_summary(RequestColumns.from_records(rs)).turns == s.turns
    notes = summary_notes(s)
    assert any(n.startswith("turn 3: 10 ended (10 ok), TTFVT p50/90/99 3.0") for n in notes), notes
    single = [r for r in rs if r.turn == 0]
    assert asu_summary(single).turns == ()
    assert not any(n.startswith("turn ") for n in summary_notes(asu_summary(single)))
