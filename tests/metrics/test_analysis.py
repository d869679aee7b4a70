"""metrics/analysis.py: the one implementation of every number rllmtop shows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rllmtop.events import HistogramSample, MetricSample, RequestRecord, RequestStatus, encode_gaps
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
    assert "3x the median" in rule.describe()


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
