"""rllmtop/view.py: the live view model, fed hand-built record streams."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rllmtop.events import (
    ClientHealth,
    EngineInfo,
    LogEvent,
    MetricSample,
    Phase,
    Provenance,
    RequestEvent,
    RequestKind,
    RequestRecord,
    RequestStatus,
    Reset,
    Scrape,
    SessionInfo,
    SessionState,
    StateEvent,
    WorkerEvent,
    encode_gaps,
)
from rllmtop.metrics.analysis import (
    StragglerRule,
    asu_summary,
    client_delay_verdict,
    samples_by_engine,
    sim_drift_verdict,
)
from rllmtop.view import (
    CLIENT_BOTTLENECK_LAG_S,
    CLOCK_OFFSET_WARN_S,
    WINDOWS,
    LiveView,
    clock_note,
    worker_label,
)

K = RequestKind


def ev(
    kind: RequestKind, t: float, rid: int, cls: str = "easy", r: int = 0, a: int = 0, **kw
) -> RequestEvent:
    return RequestEvent(kind, t, rid, cls, r, a, **kw)


def record(
    rid: int,
    cls: str = "easy",
    *,
    sent: float = 0.0,
    e2e: float = 1.0,
    reasoning: int = 10,
    answer: int = 5,
    difficulty: str = "easy",
    status: RequestStatus = RequestStatus.OK,
    lag: float = 0.0,
    correct: bool | None = None,
) -> RequestRecord:
    ok = status is RequestStatus.OK
    return RequestRecord(
        rid=rid,
        cls=cls,
        difficulty=difficulty,
        t_scheduled=sent - lag,
        t_dispatch=sent,
        t_sent=sent,
        t_first_token=sent + 0.1,
        t_first_visible=sent + 0.5 if answer else None,
        t_done=sent + e2e if ok else None,
        reasoning_tokens=reasoning,
        answer_tokens=answer,
        status=status,
        correct=correct,
        finish_reason="stop" if ok else None,
        error=None if ok else "HTTP 500",
    )


def finish(view: LiveView, rec: RequestRecord) -> None:
    """A whole request's life, ending with DONE/FAILED carrying ``rec``."""
    assert rec.t_sent is not None
    view.handle(ev(K.SENT, rec.t_sent, rec.rid, rec.cls))
    t_end = rec.t_done if rec.t_done is not None else rec.t_sent + 0.2
    kind = K.DONE if rec.status is RequestStatus.OK else K.FAILED
    view.handle(ev(kind, t_end, rec.rid, rec.cls, rec.reasoning_tokens, rec.answer_tokens, record=rec))


def gauge_scrape(t: float, kv: float, running: float, waiting: float, preempt: float | None = None) -> Scrape:
    samples = [
        MetricSample(t, "kv_cache_usage", kv),
        MetricSample(t, "requests_running", running),
        MetricSample(t, "requests_waiting", waiting),
    ]
    if preempt is not None:
        samples.append(MetricSample(t, "preemptions_total", preempt))
    return Scrape(t, 0.002, True, samples=tuple(samples))


def view(**kw) -> LiveView:
    kw.setdefault("summary_interval", 0.0)
    return LiveView(**kw)


# ------------------------------------------------------------------------------------------------ board


def test_board_follows_a_request_from_queued_to_done_then_drops_it() -> None:
    v = view()
    v.handle(SessionInfo("s1", 0.0, "live"))
    v.handle(ev(K.QUEUED, 1.0, 7))
    (row,) = v.snapshot(1.5).board
    assert (row.rid, row.phase, row.age) == (7, Phase.QUEUED, 0.5)
    assert v.snapshot(1.5).progress.queued == 1

    v.handle(ev(K.SENT, 2.0, 7))
    (row,) = v.snapshot(2.0).board
    assert row.phase is Phase.WAITING and row.ttft is None
    assert v.snapshot(2.0).progress.in_flight == 1

    v.handle(ev(K.FIRST_TOKEN, 2.3, 7, r=1))
    v.handle(ev(K.PROGRESS, 2.8, 7, r=40))
    (row,) = v.snapshot(3.0).board
    assert row.phase is Phase.THINKING
    assert row.reasoning == 40 and row.answer == 0
    assert row.ttft == pytest.approx(0.3) and row.ttfvt is None
    assert row.age == pytest.approx(1.0)

    v.handle(ev(K.FIRST_VISIBLE, 3.5, 7, r=60, a=1))
    v.handle(ev(K.PROGRESS, 3.9, 7, r=60, a=12))
    (row,) = v.snapshot(4.0).board
    assert row.phase is Phase.ANSWERING
    assert (row.reasoning, row.answer) == (60, 12)
    assert row.ttfvt == pytest.approx(1.5)

    rec = RequestRecord(7, "easy", t_sent=2.0, t_first_token=2.3, t_first_visible=3.5, t_done=4.5,
                        reasoning_tokens=60, answer_tokens=15)  # fmt: skip
    v.handle(ev(K.DONE, 4.5, 7, r=60, a=15, record=rec))
    snap = v.snapshot(5.0)
    (row,) = snap.board  # still shown for a moment, frozen at its end
    assert row.phase is Phase.DONE and row.age == pytest.approx(2.5) and row.answer == 15
    assert snap.progress.done == 1 and snap.progress.in_flight == 0
    assert v.snapshot(30.0).board == ()


def test_failed_request_goes_to_the_event_log_and_counts_as_failed() -> None:
    v = view()
    rec = record(3, sent=1.0, status=RequestStatus.ERROR)
    finish(v, rec)
    snap = v.snapshot(2.0)
    assert snap.progress.failed == 1 and snap.progress.done == 0
    assert snap.board[0].phase is Phase.FAILED
    assert snap.events_total == 1 and "request 3" in snap.events[0].text
    assert "HTTP 500" in snap.events[0].text


def test_late_event_for_an_ended_request_does_not_resurrect_it() -> None:
    v = view()
    finish(v, record(1, sent=0.0, e2e=1.0))
    v.handle(ev(K.PROGRESS, 1.1, 1, r=99))
    assert [r.phase for r in v.snapshot(1.2).board] == [Phase.DONE]


# ------------------------------------------------------------------------------------------------ rates


def test_token_rates_split_reasoning_and_answer_in_one_second_bins() -> None:
    v = view()
    v.handle(ev(K.SENT, 0.1, 1))
    v.handle(ev(K.FIRST_TOKEN, 0.2, 1, r=1))
    v.handle(ev(K.PROGRESS, 0.9, 1, r=100))  # bin 0: 100 reasoning
    v.handle(ev(K.PROGRESS, 1.5, 1, r=150))  # bin 1: 50 reasoning ...
    v.handle(ev(K.FIRST_VISIBLE, 1.6, 1, r=150, a=1))
    v.handle(ev(K.PROGRESS, 1.9, 1, r=150, a=30))  # ... and 30 answer
    snap = v.snapshot(4.0)  # bins 0..3 are closed
    rt = dict(zip(snap.reasoning_tps.t.tolist(), snap.reasoning_tps.v.tolist(), strict=True))
    at = dict(zip(snap.answer_tps.t.tolist(), snap.answer_tps.v.tolist(), strict=True))
    assert rt[0.0] == 100 and rt[1.0] == 50 and rt[2.0] == 0
    assert at[0.0] == 0 and at[1.0] == 30
    arr = dict(zip(snap.arrivals.t.tolist(), snap.arrivals.v.tolist(), strict=True))
    assert arr[0.0] == 1 and arr[1.0] == 0
    assert snap.progress.tok_s == pytest.approx(180 / 4)  # 4 closed bins so far


def test_arrivals_and_completions_per_second() -> None:
    v = view()
    for i in range(5):
        finish(v, record(i, sent=0.1 * i, e2e=2.0))  # 5 sent in bin 0, done in bin 2
    snap = v.snapshot(10.0)
    arr = dict(zip(snap.arrivals.t.tolist(), snap.arrivals.v.tolist(), strict=True))
    comp = dict(zip(snap.completions.t.tolist(), snap.completions.v.tolist(), strict=True))
    assert arr[0.0] == 5 and comp[2.0] == 5 and comp[0.0] == 0
    assert sum(comp.values()) == 5


def test_counts_only_go_up_even_if_the_final_usage_is_lower() -> None:
    v = view()
    v.handle(ev(K.SENT, 0.0, 1))
    v.handle(ev(K.PROGRESS, 0.5, 1, r=100))
    rec = RequestRecord(1, "easy", t_sent=0.0, t_first_token=0.1, t_done=0.9, reasoning_tokens=98)
    v.handle(ev(K.DONE, 0.9, 1, r=98, record=rec))
    snap = v.snapshot(3.0)
    assert snap.reasoning_tps.v.sum() == 100  # tokens already shown stay counted
    assert snap.board[0].reasoning == 98  # but the row shows the final count


# ------------------------------------------------------------------------------------------------ engine


def test_engine_series_kv_running_waiting_and_preemption_marks() -> None:
    v = view()
    v.handle(gauge_scrape(0.25, 0.5, 4, 0, preempt=10))
    v.handle(gauge_scrape(0.50, 1.0, 8, 3, preempt=10))
    v.handle(gauge_scrape(0.75, 1.0, 8, 5, preempt=13))  # 3 preemptions
    v.handle(gauge_scrape(1.00, 0.9, 7, 5, preempt=2))  # engine restart: counter reset -> 2 more
    snap = v.snapshot(1.0)
    assert snap.kv.v.tolist() == [0.5, 1.0, 1.0, 0.9] and snap.kv.last == 0.9
    assert snap.running.v.tolist() == [4, 8, 8, 7]
    assert snap.waiting.v.tolist() == [0, 3, 5, 5]
    assert list(zip(snap.preemptions.t.tolist(), snap.preemptions.v.tolist(), strict=True)) == [
        (0.75, 3.0),
        (1.0, 2.0),
    ]
    assert not snap.kv.missing and snap.missing == frozenset()


def test_several_engines_kv_is_averaged_and_queues_are_summed() -> None:
    v = view()
    e1, e2 = (("engine", "0"),), (("engine", "1"),)
    v.handle(
        Scrape(
            1.0,
            0.0,
            True,
            samples=(
                MetricSample(1.0, "kv_cache_usage", 0.2, e1),
                MetricSample(1.0, "kv_cache_usage", 0.6, e2),
                MetricSample(1.0, "requests_waiting", 2, e1),
                MetricSample(1.0, "requests_waiting", 3, e2),
            ),
        )
    )
    snap = v.snapshot(1.0)
    assert snap.kv.last == pytest.approx(0.4) and snap.waiting.last == 5


def test_missing_metric_is_missing_not_zero() -> None:
    v = view()
    s = Scrape(
        1.0,
        0.0,
        True,
        samples=(MetricSample(1.0, "requests_running", 3),),
        missing=("kv_cache_usage", "preemptions_total"),
    )
    v.handle(s)
    snap = v.snapshot(1.0)
    assert snap.kv.missing and snap.kv.last is None
    assert snap.preemptions.missing
    assert np.isnan(snap.kv.v).all()
    assert not snap.running.missing and snap.running.last == 3
    assert "kv_cache_usage" in snap.missing


def test_failed_scrapes_leave_a_gap_and_log_once_until_recovery() -> None:
    v = view()
    v.handle(gauge_scrape(0.25, 0.5, 1, 0))
    for i in range(3):
        v.handle(Scrape(0.5 + 0.25 * i, 1.0, False, error="http://127.0.0.1:9/metrics: connection refused"))
    snap = v.snapshot(1.0)
    assert np.isnan(snap.kv.v[1:]).all() and snap.kv.last is None
    assert snap.scrape.failed == 3 and "connection refused" in snap.scrape.last_error
    assert snap.events_total == 1
    v.handle(gauge_scrape(1.5, 0.6, 1, 0))
    snap = v.snapshot(1.5)
    assert snap.scrape.last_error == "" and snap.kv.last == 0.6
    assert snap.events_total == 2 and "recovered" in snap.events[-1].text


def test_engine_generation_rate_from_the_counter_over_a_second() -> None:
    v = view()
    for i, total in enumerate([1000, 1100, 1300]):
        t = 0.5 * (i + 1)
        v.handle(Scrape(t, 0.0, True, samples=(MetricSample(t, "generation_tokens_total", total),)))
    snap = v.snapshot(1.5)
    assert snap.engine_tps.v.tolist() == [200.0, 300.0]  # (1300 - 1000) / 1 s, not 200 / 0.5 s
    # an engine that bumps its counter in steps: 1000 every other 0.25 s scrape is 2000 tok/s, not 0/4000
    v = view()
    for i in range(40):
        t = 0.25 * (i + 1)
        v.handle(Scrape(t, 0.0, True, samples=(MetricSample(t, "generation_tokens_total", 1000 * (i // 2)),)))
    rates = v.snapshot(10.0).engine_tps.v[4:]
    assert rates.min() >= 1500 and rates.max() <= 2700


# ------------------------------------------------------------------------------------------------ series


def test_one_hour_of_4hz_samples_stays_bounded_and_windows_slice() -> None:
    v = view(window=120.0)
    n = 4 * 3600
    for i in range(n + 400):  # more than the buffer holds
        t = (i + 1) * 0.25
        v.handle(gauge_scrape(t, (i % 100) / 100, i % 7, 0))
    now = (n + 400) * 0.25
    snap = v.snapshot(now)
    assert snap.kv.t[0] >= now - 120 and snap.kv.t[-1] == now
    assert snap.kv.t.size == 481
    assert not snap.kv.v.flags.writeable
    v.set_window(3600)
    snap = v.snapshot(now)
    assert snap.kv.t.size == 4 * 3600  # the newest hour, oldest points overwritten
    assert np.all(np.diff(snap.kv.t) > 0)


def test_zoom_steps_through_windows() -> None:
    v = view(window=120.0)
    assert v.zoom(+1) == 300.0
    assert v.zoom(-2) == 60.0
    for _ in range(10):
        v.zoom(-1)
    assert v.window == WINDOWS[0]
    for _ in range(10):
        v.zoom(+1)
    assert v.window == WINDOWS[-1]


def test_a_long_quiet_stretch_fills_bins_with_zeros_cheaply() -> None:
    v = view()
    v.handle(ev(K.SENT, 0.5, 1))
    v.handle(LogEvent(100_000.0, "rllmtop", "info", "still here"))  # a jump far ahead
    snap = v.snapshot(100_000.0)
    assert snap.arrivals.v.size <= 3600 and snap.arrivals.v.sum() == 0  # the window holds only zeros


# ------------------------------------------------------------------------------------------------ summary


def test_asu_summary_matches_analysis_and_is_recomputed_only_when_something_ended() -> None:
    v = view()
    recs = [record(i, "easy" if i % 2 else "hard", sent=i * 0.1, e2e=1 + i % 3, correct=i % 4 != 0)
            for i in range(20)]  # fmt: skip
    for r in recs:
        finish(v, r)
    s1 = v.snapshot(10.0)
    assert s1.asu is not None
    want = asu_summary(recs)
    assert s1.asu.overall.as_dict() == want.overall.as_dict()
    s2 = v.snapshot(10.5)
    assert s2.summary_version == s1.summary_version and s2.asu is s1.asu  # nothing ended: cached
    finish(v, record(99, sent=10.0, e2e=0.6))
    s3 = v.snapshot(11.0)
    assert s3.summary_version == s1.summary_version + 1
    assert s3.asu is not None and s3.asu.overall.requests == 21


def test_summary_is_throttled_by_wall_time() -> None:
    clock = [0.0]
    v = LiveView(summary_interval=1.0, wall=lambda: clock[0])
    clock[0] = 100.0
    finish(v, record(1))
    assert v.snapshot(2.0).asu is not None
    finish(v, record(2, sent=2.0))
    clock[0] = 100.5
    assert v.snapshot(3.5).asu.overall.requests == 1  # type: ignore[union-attr]  # too soon
    clock[0] = 101.5
    assert v.snapshot(3.6).asu.overall.requests == 2  # type: ignore[union-attr]


def test_summary_job_protocol_for_a_worker_thread() -> None:
    v = view(auto_summary=False)
    finish(v, record(1))
    assert v.snapshot(2.0).asu is None  # not computed inline
    job = v.summary_job()
    assert job is not None
    assert v.summary_job() is None  # one at a time
    job.run()
    v.install(job)
    assert v.snapshot(2.0).asu is not None
    assert v.summary_job() is None  # nothing new ended
    # a job from before a new session is dropped
    finish(v, record(2, sent=1.0))
    job = v.summary_job()
    assert job is not None
    v.handle(Reset(0.0))
    job.run()
    v.install(job)
    assert v.snapshot(0.0).asu is None


def test_client_bottleneck_warning_from_send_lag_p99() -> None:
    v = view()
    for i in range(10):
        finish(v, record(i, sent=i, lag=0.001))
    snap = v.snapshot(20.0)
    assert snap.send_lag_p99 == pytest.approx(0.001) and not snap.client_bottleneck
    for i in range(10, 20):
        finish(v, record(i, sent=i, lag=0.5))
    snap = v.snapshot(30.0)
    assert snap.send_lag_p99 is not None and snap.send_lag_p99 > CLIENT_BOTTLENECK_LAG_S
    assert snap.client_bottleneck


def test_reasoning_length_distribution_per_class_and_difficulty() -> None:
    v = view()
    rid = 0
    for cls, diff, lens in (
        ("math", "easy", [100, 200, 300]),
        ("math", "hard", [3000, 4000]),
        ("mcq", "", [50]),
    ):
        for n in lens:
            finish(v, record(rid, cls, difficulty=diff, reasoning=n))
            rid += 1
    finish(v, record(rid, "math", difficulty="easy", reasoning=99999, status=RequestStatus.ERROR))
    dist = v.snapshot(5.0).distribution
    groups = {g.label: g for g in dist.groups}
    assert set(groups) == {"math/easy", "math/hard", "mcq"}
    assert groups["math/easy"].n == 3 and sum(groups["math/easy"].counts) == 3
    assert groups["math/hard"].pcts[50] == 3500
    assert dist.edges[0] == 0 and dist.edges[-1] == 4000  # the failed one is not in it
    assert all(len(g.counts) == len(dist.edges) - 1 for g in dist.groups)


# ------------------------------------------------------------------------------------------------ stragglers


def test_in_flight_straggler_is_flagged_with_the_rule_and_reason() -> None:
    rule = StragglerRule(factor=3.0, min_finished=5)
    v = view(rule=rule)
    for i in range(5):
        finish(v, record(i, "easy", sent=0.0, e2e=2.0, reasoning=100))
    v.handle(ev(K.SENT, 10.0, 50, "easy"))
    v.handle(ev(K.FIRST_TOKEN, 10.1, 50, "easy", r=1))
    v.handle(ev(K.SENT, 10.0, 51, "easy"))
    snap = v.snapshot(15.0)  # age 5 s < 3 x 2 s
    assert snap.stragglers == ()
    assert snap.straggler_rule == rule.describe()
    v.handle(ev(K.PROGRESS, 16.5, 50, "easy", r=200))
    snap = v.snapshot(17.0)  # age 7 s > 6 s
    assert [s.rid for s in snap.stragglers] == [50, 51]
    s = snap.stragglers[0]
    assert not s.finished and s.phase is Phase.THINKING
    assert "run time 7.0s > 3x median 2.0s" in s.reason
    assert {r.rid: r.straggler is not None for r in snap.board} == {50: True, 51: True}
    # one with a huge reasoning count straggles on length, and stays listed once finished
    finish(v, record(60, "easy", sent=17.0, e2e=1.0, reasoning=1000))
    snap = v.snapshot(18.5)
    fin = [s for s in snap.stragglers if s.finished]
    assert [s.rid for s in fin] == [60] and "reasoning 1000 tok > 3x median 100" in fin[0].reason


def test_no_stragglers_before_enough_requests_finished() -> None:
    v = view()
    finish(v, record(0, e2e=1.0))
    v.handle(ev(K.SENT, 1.0, 1))
    assert v.snapshot(100.0).stragglers == ()


# ------------------------------------------------------------------------------------------------ session


def test_a_new_session_starts_over_and_reads_planned_from_the_provenance() -> None:
    v = view()
    info = SessionInfo(
        "s1", 0.0, "live", scenario_name="burst", provenance=Provenance(source="burst", planned_requests=40)
    )
    v.handle(info)
    finish(v, record(1))
    v.handle(gauge_scrape(1.0, 0.3, 1, 0))
    v.handle(LogEvent(1.0, "engine", "info", "INFO engine started"))
    snap = v.snapshot(2.0)
    assert snap.info is info and snap.progress.planned == 40 and snap.progress.done == 1
    assert snap.progress.line().startswith("sent 1/40 · done 1 · failed 0 · in flight 0")
    g = snap.generation
    v.handle(SessionInfo("s2", 0.0, "live"))  # a new session
    snap = v.snapshot(0.5)
    assert snap.generation == g + 1
    assert snap.board == () and snap.kv.t.size == 0 and snap.progress.sent == 0
    assert snap.engine_log == () and snap.engine_log_total == 0 and snap.asu is None
    assert snap.progress.planned is None  # that session has no provenance


def test_planned_comes_from_provenance_not_from_scenario_text() -> None:
    # the text says 500 and carries a legacy override header; only the provenance (resolved once by the
    # scenario loader) counts, so a view never re-parses what another module wrote
    text = "# rllmtop: overrides: --request-rate 4 --num-prompts 12\n[load]\nnum_prompts = 500\n"
    v = view()
    v.handle(SessionInfo("s", 0.0, "replay", scenario_text=text))
    assert v.snapshot(0).progress.planned is None
    v.handle(SessionInfo("s", 0.0, "replay", scenario_text=text, provenance=Provenance(planned_requests=12)))
    assert v.snapshot(0).progress.planned == 12


def test_explicit_planned_wins_over_the_provenance() -> None:
    v = view(planned=12)
    v.handle(SessionInfo("s", 0.0, "live", provenance=Provenance(planned_requests=99)))
    assert v.snapshot(0).progress.planned == 12
    v.set_planned(None)  # the caller no longer knows: the provenance's count
    assert v.snapshot(0).progress.planned == 99


def test_state_and_logs() -> None:
    v = view()
    v.handle(StateEvent(0.0, SessionState.RUNNING))
    v.handle(LogEvent(0.1, "engine", "info", "loading weights"))
    v.handle(LogEvent(0.2, "engine", "error", "CUDA out of memory"))
    v.handle(LogEvent(0.3, "rllmtop", "warning", "scrape slow"))
    v.handle(LogEvent(0.4, "rllmtop", "info", "not an event"))
    v.handle(StateEvent(0.5, SessionState.ENGINE_DIED, "exit code 1"))
    snap = v.snapshot(1.0)
    assert snap.state is SessionState.ENGINE_DIED and snap.state_detail == "exit code 1"
    assert [e.text for e in snap.engine_log] == ["loading weights", "CUDA out of memory"]
    assert [e.text for e in snap.events] == [
        "CUDA out of memory",
        "scrape slow",
        "session engine_died: exit code 1",
    ]
    for i in range(2000):
        v.handle(LogEvent(1.0 + i, "engine", "info", f"line {i}"))
    snap = v.snapshot(3000.0)
    assert len(snap.engine_log) == 500 and snap.engine_log_total == 2002
    assert snap.engine_log[-1].text == "line 1999"


def test_progress_line_format() -> None:
    from rllmtop.view import Progress

    p = Progress(None, 5, 3, 1, 1, 2, 1234.4, 65.0)
    assert p.line() == "sent 5 · done 3 · failed 1 · in flight 1 · queued 2 · 1,234 tok/s · 1:05"
    assert Progress(10, 0, 0, 0, 0, 0, 0.0, 3725).line().endswith("0 tok/s · 1:02:05")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.sampled_from(list(K)), st.integers(0, 50)), max_size=120))
def test_counts_stay_consistent_under_any_event_order(steps: list[tuple[int, RequestKind, int]]) -> None:
    v = view()
    t = 0.0
    for rid, kind, n in steps:
        t += 0.01
        v.handle(ev(kind, t, rid, r=n, a=n // 2))
    snap = v.snapshot(t)
    p = snap.progress
    ended = sum(1 for r in snap.board if r.phase in (Phase.DONE, Phase.FAILED))
    assert p.done + p.failed == ended
    assert p.in_flight + p.queued == len(snap.board) - ended
    assert p.sent >= p.in_flight
    assert all(r.age >= 0 for r in snap.board)
    assert not any(math.isnan(x) for x in snap.reasoning_tps.v)


def test_core_view_does_not_import_textual_or_rich() -> None:
    code = "import sys, rllmtop.view; assert 'textual' not in sys.modules and 'rich' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_progress_line_for_the_headless_printer() -> None:
    v = view()
    v.handle(StateEvent(0.0, SessionState.RUNNING))
    v.handle(ev(K.SENT, 0.5, 1))
    assert v.progress_line(2.0) == "running · sent 1 · done 0 · failed 0 · in flight 1 · 0 tok/s · 0:02"


def test_reset_record_starts_over_but_a_repeated_session_info_only_updates() -> None:
    v = view()
    v.handle(SessionInfo("s1", 0.0, "live"))
    finish(v, record(1))
    v.handle(SessionInfo("s1", 0.0, "live", engine_version="0.32.0", model="qwen"))  # learned later
    snap = v.snapshot(2.0)
    assert snap.progress.done == 1 and snap.info is not None and snap.info.engine_version == "0.32.0"
    g = snap.generation
    v.handle(Reset(0.0))
    snap = v.snapshot(0.0)
    assert snap.generation == g + 1 and snap.progress.done == 0 and snap.info is None
    v.handle(SessionInfo("s1", 0.0, "replay"))
    finish(v, record(1))
    v.handle(SessionInfo("s2", 0.0, "live"))  # another session
    assert v.snapshot(3.0).progress.done == 0 and v.snapshot(3.0).generation == g + 2


def test_time_stands_still_once_the_session_ended() -> None:
    v = view()
    v.handle(StateEvent(0.0, SessionState.RUNNING))
    v.handle(ev(K.SENT, 1.0, 1))
    v.handle(StateEvent(4.0, SessionState.INTERRUPTED))
    snap = v.snapshot(60.0)
    assert snap.t == 4.0 and snap.progress.elapsed == 4.0 and snap.board[0].age == 3.0
    v.handle(Reset(0.0))  # a replay seeking back runs again
    assert v.snapshot(2.0).t == 2.0


def test_a_failure_already_logged_is_not_logged_twice() -> None:
    v = view()
    why = "cannot reach http://127.0.0.1:9 (ConnectError)"
    v.handle(LogEvent(0.3, "rllmtop", "error", why + " (is the server running?)"))
    v.handle(StateEvent(0.3, SessionState.FAILED, why))
    snap = v.snapshot(1.0)
    assert [e.text for e in snap.events] == [why + " (is the server running?)"]
    assert snap.state_detail == why


# ------------------------------------------------------------------------------------------------ fleet


def engine_scrape(
    t: float,
    eid: str,
    kv: float,
    running: float = 0,
    waiting: float = 0,
    *,
    preempt: float | None = None,
    gen: float | None = None,
    drift: float | None = None,
    ok: bool = True,
    stale: bool = False,
    reset: bool = False,
) -> Scrape:
    if not ok:
        return Scrape(t, 1.0, False, error=f"{eid}/metrics: connection refused", engine_id=eid)
    samples = [
        MetricSample(t, "kv_cache_usage", kv),
        MetricSample(t, "requests_running", running),
        MetricSample(t, "requests_waiting", waiting),
    ]
    for name, value in (("preemptions_total", preempt), ("generation_tokens_total", gen),
                        ("sim_drift_seconds", drift)):  # fmt: skip
        if value is not None:
            samples.append(MetricSample(t, name, value))
    return Scrape(t, 0.002, True, samples=tuple(samples), engine_id=eid, stale=stale, counter_reset=reset)


A, B = "http://127.0.0.1:8001", "http://127.0.0.1:8002"


def fleet_info(*ids: str) -> SessionInfo:
    engines = tuple(EngineInfo(i, url=i, kind="sim", version=f"0.{k}") for k, i in enumerate(ids))
    return SessionInfo("fleet", 0.0, "live", engine_kind="sim", engines=engines)


def test_fleet_rows_and_aggregates_kv_mean_queues_and_rates_summed() -> None:
    v = view()
    v.handle(fleet_info(A, B))
    for i in range(1, 9):  # 2 s of 4 Hz scrapes of both engines
        t = 0.25 * i
        v.handle(engine_scrape(t, A, 0.2, 3, 1, gen=1000.0 * i))
        v.handle(engine_scrape(t + 0.01, B, 0.8, 5, 7, gen=500.0 * i))
    snap = v.snapshot(2.1)
    rows = {e.id: e for e in snap.engines}
    assert [e.id for e in snap.engines] == [A, B]  # SessionInfo order
    assert rows[A].name == "127.0.0.1:8001" and rows[A].version == "0.0" and rows[B].version == "0.1"
    assert rows[A].health == rows[B].health == "up"
    assert (rows[A].kv, rows[A].running, rows[A].waiting) == (0.2, 3, 1)
    assert rows[A].tok_s == pytest.approx(4000) and rows[B].tok_s == pytest.approx(2000)
    assert snap.kv.last == pytest.approx(0.5)  # each engine weighs the same
    assert snap.running.last == 8 and snap.waiting.last == 8
    assert snap.engine_tps.last == pytest.approx(6000)
    assert snap.kv.t.size == 8  # one fleet point per round of scrapes, not one per scrape
    assert snap.spread.kv == (0.2, 0.8) and snap.spread.waiting == (1, 7)


def test_fleet_health_up_down_stale_restarted_and_a_down_engine_is_not_zero() -> None:
    v = view()
    v.handle(fleet_info(A, B))
    v.handle(engine_scrape(1.0, A, 0.5, 2, 0, preempt=10))
    v.handle(engine_scrape(1.0, B, 0.9, 4, 6))
    v.handle(engine_scrape(1.25, A, 0.5, 2, 0, preempt=3, reset=True))  # restarted: counter went back
    v.handle(engine_scrape(1.25, B, 0.0, ok=False))
    snap = v.snapshot(1.3)
    rows = {e.id: e for e in snap.engines}
    assert rows[A].health == "restarted" and rows[A].preemptions == 3
    assert rows[B].health == "down" and rows[B].kv is None and "connection refused" in rows[B].error
    assert snap.kv.last == 0.5 and snap.waiting.last == 0  # the down engine is left out, not counted as 0
    assert snap.scrape.last_error and snap.scrape.failed == 1
    v.handle(engine_scrape(1.5, B, 0.7, 1, 1, stale=True))  # Prometheus: the target's data is old
    assert {e.id: e.health for e in v.snapshot(1.5).engines}[B] == "stale"
    v.handle(engine_scrape(40.0, B, 0.7, 1, 1))
    snap = v.snapshot(40.0)
    rows = {e.id: e for e in snap.engines}
    assert rows[B].health == "up" and snap.scrape.last_error == ""
    assert rows[A].health == "stale" and rows[A].kv is None  # no scrape for 38 s (and the restart is old)
    assert "recovered" in snap.events[-1].text


def test_focus_shows_one_engines_own_series_and_cycles_back_to_the_fleet() -> None:
    v = view()
    v.handle(fleet_info(A, B))
    for i in range(1, 5):
        t = 0.25 * i
        v.handle(engine_scrape(t, A, 0.1 * i, 1, 0, preempt=float(i)))
        v.handle(engine_scrape(t, B, 0.9, 9, 9, preempt=0.0))
    assert v.snapshot(1.0).focus is None
    assert v.cycle_focus() == A
    snap = v.snapshot(1.0)
    assert snap.focus == A and snap.kv.v.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert snap.running.last == 1 and snap.preemptions_run == 3
    assert v.cycle_focus() == B and v.snapshot(1.0).waiting.last == 9
    assert v.cycle_focus() is None and v.snapshot(1.0).waiting.last == 9  # the fleet: 0 + 9
    assert v.cycle_focus(-1) == B


def test_an_untagged_scrape_is_the_sessions_one_engine() -> None:
    v = view()
    v.handle(fleet_info(A))
    v.handle(gauge_scrape(0.25, 0.4, 1, 0))  # engine_id "": a source that does not tag its scrapes
    (row,) = v.snapshot(0.25).engines
    assert row.id == A and row.kv == 0.4 and row.health == "up"
    assert v.cycle_focus() is None  # one engine: the fleet is that engine


def test_64_engines_one_fleet_point_per_round_and_bounded_memory() -> None:
    ids = [f"http://10.0.0.{k}:8000" for k in range(64)]
    v = view(capacity=400)
    v.handle(fleet_info(*ids))
    for i in range(1, 1001):  # 250 s: more than the per-engine buffers hold
        for k, eid in enumerate(ids):
            v.handle(engine_scrape(0.25 * i + k * 1e-4, eid, k / 64, 1, k % 3))
    snap = v.snapshot(250.1)
    assert len(snap.engines) == 64 and all(e.health == "up" for e in snap.engines)
    assert snap.running.last == 64 and snap.waiting.last == sum(k % 3 for k in range(64))
    v.set_window(3600)
    assert v.snapshot(250.1).kv.t.size == 400  # the fleet ring: its capacity, one point per round
    v.set_focus(ids[5])
    assert v.snapshot(250.1).kv.t.size <= max(400, 4 * 300)


# ------------------------------------------------------------------------------------------------ preemptions


def test_preemption_count_says_window_and_run() -> None:
    v = view(window=30.0)
    v.handle(gauge_scrape(1.0, 0.5, 1, 0, preempt=0))
    v.handle(gauge_scrape(2.0, 1.0, 1, 0, preempt=100))  # 100 early in the run
    v.handle(gauge_scrape(60.0, 1.0, 1, 0, preempt=118))  # 18 late
    snap = v.snapshot(60.0)
    assert snap.preemptions.v.sum() == 18 and snap.preemptions_run == 118  # window vs run
    missing = Scrape(1.0, 0.0, True, samples=(), missing=("preemptions_total",))
    v2 = view()
    v2.handle(missing)
    assert v2.snapshot(1.0).preemptions_run is None  # not served: no count at all


# ------------------------------------------------------------------------------------------------ the client


def test_client_heartbeat_series_and_the_late_client_warning() -> None:
    v = view()
    v.handle(ev(K.SENT, 0.5, 1))
    for i in range(1, 11):
        v.handle(ClientHealth(float(i), 1.0, 0.002, 0.001))
    snap = v.snapshot(10.0)
    assert snap.client_lag.t.size == 10 and snap.client_lag.last == 0.002
    assert snap.alerts == () and snap.client_lag_worst == 0.002  # an idle client: no warning
    v.handle(ClientHealth(11.0, 1.0, 0.045, 0.01))  # 45 ms late while request 1 was in flight
    v.handle(ev(K.SENT, 11.5, 2))  # sent after: not touched
    snap = v.snapshot(12.0)
    (alert,) = snap.alerts
    # the sentence of analysis.client_delay_verdict (the report's): request 1 was on the wire, 2 came after
    assert alert.key == "client-late" and "up to 45ms of client delay" in alert.text
    assert "1 of 2 requests were touched" in alert.text
    assert any(alert.text == e.text for e in snap.events)  # said once in the event log
    v.snapshot(13.0)
    assert sum(1 for e in v.snapshot(13.0).events if e.text == alert.text) == 1


def test_client_heartbeat_series_is_bounded() -> None:
    v = view()
    for i in range(20_000):
        v.handle(ClientHealth(0.25 * i, 0.25, 0.001, 0.0005))
    v.set_window(3600)
    assert v.snapshot(5000.0).client_lag.t.size <= 4 * 3600


def test_simulator_drift_warning() -> None:
    v = view()
    v.handle(gauge_scrape(1.0, 0.5, 1, 0))
    for i, drift in enumerate((0.0, 0.02, 0.05)):
        v.handle(engine_scrape(2.0 + i, "", 0.5, drift=drift))
    assert v.snapshot(5.0).alerts == ()  # 50 ms behind: within the bound
    last = engine_scrape(6.0, "", 0.5, drift=2.35)
    v.handle(last)
    (alert,) = v.snapshot(6.0).alerts
    assert alert.key == "sim-drift" and "fell 2.35s behind" in alert.text and "inflated" in alert.text
    # the very sentence the report prints from the recorded samples over the same duration
    scrapes = [engine_scrape(2.0 + i, "", 0.5, drift=d) for i, d in enumerate((0.0, 0.02, 0.05))] + [last]
    assert alert.text == sim_drift_verdict(samples_by_engine(scrapes), 6.0).sentence


def test_clock_note() -> None:
    assert clock_note(None) == "" and clock_note(SessionInfo("s", 0.0, "live")) == ""
    sim = SessionInfo("s", 0.0, "live", clock="simulated", speed=10.0)
    assert clock_note(sim) == "simulated clock (x10)"


# ------------------------------------------------------------------------------------------------ memory


_GAPS = encode_gaps([20_000] * 2000)  # 8 KB of chunk gaps: what a 2,000-token request carries


def _long_record(rid: int, t: float) -> RequestRecord:
    cls = ("easy", "hard", "mcq")[rid % 3]
    reasoning = 100 + (rid * 7919) % 3000
    return RequestRecord(
        rid=rid, cls=cls, difficulty=cls, t_scheduled=t, t_dispatch=t, t_start=t, t_sent=t,
        t_first_token=t + 0.1, t_first_visible=t + 1.0 + reasoning / 1000, t_done=t + 2.0 + reasoning / 1000,
        reasoning_tokens=reasoning, answer_tokens=20, finish_reason="length" if rid % 7 == 0 else "stop",
        correct=rid % 4 != 0, gaps=_GAPS, answer_text="x" * 200,
    )  # fmt: skip


def test_summary_is_exact_below_recent_and_keeps_exact_counts_past_it() -> None:
    """The view's summary is analysis.LiveAsu's: below ``recent`` ended requests it is asu_summary over all
    of them, TPOT and ITL from the chunk gaps included (the view once stripped the gap blobs: its TPOT/ITL
    were (end - first token) / (tokens - 1)); past it the counts are exact and the percentiles are those of
    the most recent ``recent``."""
    recs = [_long_record(i, i * 0.01) for i in range(600)]
    small = view(recent=1000)
    recent = view(recent=50)
    for r in recs:
        finish(small, r)
        finish(recent, r)
    want = asu_summary(recs)
    exact = small.snapshot(100.0)
    assert exact.summary_recent is None
    assert exact.asu is not None and exact.asu.overall.as_dict() == want.overall.as_dict()
    assert exact.asu.overall.itl[50] == pytest.approx(0.02)  # the 20 ms chunk gaps
    snap = recent.snapshot(100.0)
    assert snap.summary_recent == (50, 600)  # the note the ASU panel shows
    got = snap.asu
    assert got is not None and got.recent == 50
    last = asu_summary(recs[-50:])
    for name in ("all", "easy", "hard", "mcq"):
        g, w = got.by_name()[name], want.by_name()[name]
        for key in ("requests", "ok", "errors", "truncated", "no_visible", "graded", "correct",
                    "reasoning_tokens", "answer_tokens", "finish_reasons"):  # fmt: skip
            assert getattr(g, key) == getattr(w, key), (name, key)
        assert g.span_s == pytest.approx(w.span_s) and g.accuracy == w.accuracy
        assert g.e2e == last.by_name()[name].e2e and g.tpot == last.by_name()[name].tpot  # the recent 50
    dist = {g.label: g for g in snap.distribution.groups}
    assert {k: g.n for k, g in dist.items()} == {g.label: g.n for g in exact.distribution.groups}  # exact n
    assert sum(sum(g.counts) for g in dist.values()) == 50  # the shape: the recent ones
    assert recent.finished == 600


def test_goodput_from_the_session_info_is_shown_live() -> None:
    """The session puts the scenario's per-request SLOs in SessionInfo.extra ("goodput"): the live summary
    judges goodput on them as the end-of-run summary does."""
    slo = {"e2el": 1.5}
    recs = [record(i, sent=0.1 * i, e2e=1.0 + (i % 3) * 0.4) for i in range(12)]
    v = view()
    v.handle(SessionInfo("g", 0.0, "live", extra=(("goodput", json.dumps(slo)),)))
    for r in recs:
        finish(v, r)
    asu = v.snapshot(10.0).asu
    want = asu_summary(recs, goodput=slo)
    assert asu is not None and asu.goodput == slo
    assert asu.overall.good == want.overall.good == 8 and asu.overall.goodput_rps == want.overall.goodput_rps
    bad = view()
    bad.handle(SessionInfo("g", 0.0, "live", extra=(("goodput", '{"e2el": -1}'),)))
    finish(bad, recs[0])
    snap = bad.snapshot(5.0)
    assert snap.asu is not None and snap.asu.goodput == {}
    assert any("goodput SLOs not shown" in e.text for e in snap.events)


def test_memory_stays_flat_per_finished_request() -> None:
    """Issue 11.8: the view held every finished RequestRecord (with its chunk gaps: ~9.5 KB each)."""
    import gc
    import tracemalloc

    def held(n: int) -> int:
        gc.collect()
        tracemalloc.start()
        v = view(auto_summary=False, recent=256)
        base = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            finish(v, _long_record(i, i * 0.01))
        v.snapshot(n * 0.01 + 100)  # the board has let them all go
        gc.collect()
        out = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        del v
        return out

    a, b = held(1000), held(4000)
    # bytes held per extra finished request: the records themselves were kept before (~0.8 KB each here,
    # with the gaps blob shared; ~9.5 KB each with their own, see bench/bench_tui.py --memory)
    assert (b - a) / 3000 < 150


# ------------------------------------------------------------------------------------------------ the merge


def test_an_in_flight_request_far_behind_its_batch_straggles_though_its_class_is_slow() -> None:
    """The rule compares with the batch too (requests started within batch_window of it): the view passes
    InFlight(cls, age, reasoning, t_start) and t_start to the baselines, or no batch verdict is possible."""
    v = view(rule=StragglerRule(factor=3.0, min_finished=5, batch_window=5.0))
    for i in range(5):  # the hard class is slow: median 30 s
        finish(v, record(i, "hard", sent=float(i), e2e=30.0))
    for i in range(5):  # a later burst whose easy requests took 1 s
        finish(v, record(10 + i, "easy", sent=100.0 + 0.1 * i, e2e=1.0))
    v.handle(ev(K.SENT, 100.0, 50, "hard"))
    v.handle(ev(K.FIRST_TOKEN, 100.2, 50, "hard", r=1))
    snap = v.snapshot(110.0)
    (s,) = snap.stragglers
    assert s.rid == 50 and not s.finished
    assert s.reason == "run time 10.0s > 3x its batch's median 1.0s"
    assert {r.rid: r.straggler for r in snap.board}[50] == s.reason


def test_fleet_kv_is_weighted_by_capacity_when_every_engine_serves_it() -> None:
    def scrape(t: float, eid: str, kv: float, blocks: float | None) -> Scrape:
        samples = [MetricSample(t, "kv_cache_usage", kv), MetricSample(t, "requests_waiting", 1.0)]
        if blocks is not None:
            samples.append(MetricSample(t, "kv_total_blocks", blocks))
        return Scrape(t, 0.001, True, samples=tuple(samples), engine_id=eid)

    v = view()
    v.handle(fleet_info(A, B))
    v.handle(scrape(1.0, A, 0.2, 1000))
    v.handle(scrape(1.0, B, 0.8, None))  # B does not say its capacity: equal weights
    snap = v.snapshot(1.0)
    assert snap.kv.last == pytest.approx(0.5) and not snap.kv_capacity_weighted
    assert snap.kv_weighting.startswith("equal weights")
    v.handle(scrape(1.25, A, 0.2, 1000))
    v.handle(scrape(1.25, B, 0.8, 3000))  # now both do: 0.2 x 1/4 + 0.8 x 3/4
    snap = v.snapshot(1.25)
    assert snap.kv.last == pytest.approx(0.65) and snap.kv_capacity_weighted
    assert "kv_total_blocks" in snap.kv_weighting
    v.handle(Scrape(1.5, 1.0, False, error="down", engine_id=B))  # B down: A alone, whatever its weight
    assert v.snapshot(1.5).kv.last == pytest.approx(0.2)
    one = view()
    one.handle(scrape(1.0, "", 0.3, 500))
    snap = one.snapshot(1.0)
    assert snap.kv.last == 0.3 and snap.kv_weighting == ""  # one engine: its value, exactly


def test_engines_appearing_mid_run_join_the_table_and_the_others_give_up_points() -> None:
    ids = [f"http://10.0.0.{k}:8000" for k in range(16)]
    v = view(capacity=2000)
    v.handle(fleet_info(*ids[:1]))
    for i in range(1, 2401):
        v.handle(engine_scrape(0.25 * i, ids[0], 0.5, 1, 0))
    v.set_focus(ids[0])
    v.set_window(3600)
    assert v.snapshot(600.0).kv.t.size == 2000  # alone: a full fleet series' worth
    v.handle(fleet_info(*ids))  # Prometheus discovery: the same session, more engines
    for k, eid in enumerate(ids):
        v.handle(engine_scrape(600.25 + k * 1e-4, eid, k / 16, 1, k))
    v.set_focus(None)
    snap = v.snapshot(600.3)
    assert [e.id for e in snap.engines] == ids and all(e.health == "up" for e in snap.engines)
    assert snap.running.last == 16 and snap.waiting.last == sum(range(16))
    v.set_focus(ids[0])
    snap = v.snapshot(600.3)
    t = snap.kv.t  # the first engine's own series, shrunk to its share, the newest points kept
    assert (
        t.size == 4 * 300 and t[-1] == pytest.approx(600.25) and t[0] == pytest.approx(600.25 - 0.25 * 1199)
    )
    assert np.all(np.diff(t) > 0)
    v.handle(engine_scrape(620.0, ids[3], 0.1, ok=False))
    assert {e.id: e.health for e in v.snapshot(620.0).engines}[ids[3]] == "down"


def test_gpu_telemetry_per_engine() -> None:
    gpu = tuple(
        MetricSample(1.0, name, value, (("gpu", str(g)),))
        for g in range(2)
        for name, value in (
            ("gpu_util_percent", 60.0 + 20 * g),
            ("gpu_fb_used_mib", 40_000.0),
            ("gpu_power_watts", 300.0),
        )
    )
    v = view()
    v.handle(fleet_info(A, B))
    v.handle(Scrape(1.0, 0.001, True, samples=(MetricSample(1.0, "kv_cache_usage", 0.5), *gpu), engine_id=A))
    v.handle(engine_scrape(1.0, B, 0.5))
    rows = {e.id: e for e in v.snapshot(1.0).engines}
    a, b = rows[A], rows[B]
    assert (a.gpus, a.gpu_util, a.gpu_mem_mib, a.gpu_power_w) == (2, 70.0, 80_000.0, 600.0)
    assert (b.gpus, b.gpu_util, b.gpu_mem_mib, b.gpu_power_w) == (0, None, None, None)  # not served: none


def test_the_board_names_the_worker_and_node_when_several_sent() -> None:
    v = view()
    v.handle(WorkerEvent(0.0, 1, "started", node="node-b", pid=10))
    v.handle(ev(K.SENT, 1.0, 1, worker=0))
    snap = v.snapshot(1.0)
    assert snap.workers == 1
    v.handle(ev(K.SENT, 1.5, 2, worker=1))
    rec = RequestRecord(
        3, "easy", t_start=2.0, t_sent=2.0, worker=2, node="node-c", status=RequestStatus.IN_FLIGHT
    )
    v.handle(ev(K.SENT, 2.0, 3, record=rec))
    snap = v.snapshot(2.0)
    assert snap.workers == 3
    assert {r.rid: (r.worker, r.node) for r in snap.board} == {1: (0, ""), 2: (1, "node-b"), 3: (2, "node-c")}
    assert worker_label(1, "node-b") == "1@node-b" and worker_label(0) == "0"


def test_a_worker_that_died_is_in_the_event_log_and_an_alert() -> None:
    v = view()
    v.handle(WorkerEvent(0.0, 1, "started", node="n1", pid=42, clock_offset=0.001))
    assert v.alerts(1.0) == ()
    v.handle(WorkerEvent(12.0, 1, "died", pid=42, detail="exit code -9"))
    snap = v.snapshot(13.0)
    (alert,) = snap.alerts
    assert (
        alert.key == "worker-died"
        and alert.text == "1 sender worker died: worker 1 (node n1) at 0:12 (exit code -9)"
    )
    assert any(e.level == "error" and e.text == "worker 1 (node n1) died: exit code -9" for e in snap.events)
    assert sum(1 for e in v.snapshot(14.0).events if e.text == alert.text) == 1  # said once


def test_a_worker_clock_offset_over_a_few_ms_is_an_alert() -> None:
    v = view()
    v.handle(WorkerEvent(0.0, 1, "started", node="n1", clock_offset=0.004))
    assert v.alerts(0.0) == ()  # 4 ms: within CLOCK_OFFSET_WARN_S
    v.handle(WorkerEvent(0.0, 2, "started", node="n2", clock_offset=-0.012))
    (alert,) = v.alerts(0.0)
    assert alert.key == "clock-offset" and alert.text.startswith("worker 2 (node n2)'s clock is 12ms behind")
    assert CLOCK_OFFSET_WARN_S == 0.005


def test_the_client_delay_alert_is_the_report_sentence_over_the_same_requests() -> None:
    """Below ``recent`` ended requests the live verdict reads the same data as the report: the sentence is
    the same, and an interval of one worker touches only that worker's requests."""
    health = [ClientHealth(float(i), 1.0, 0.002, 0.001, worker=w) for i in range(1, 30) for w in (0, 1)]
    health.append(ClientHealth(10.0, 1.0, 0.080, 0.02, worker=1))
    recs = [
        RequestRecord(i, "easy", t_start=float(i), t_sent=float(i), t_first_token=i + 0.5, t_done=i + 2.0,
                      worker=i % 2, reasoning_tokens=5, answer_tokens=5, finish_reason="stop")
        for i in range(20)
    ]  # fmt: skip
    v = view()
    for h in sorted(health, key=lambda h: h.t):
        v.handle(h)
    for r in recs:
        v.handle(ev(K.SENT, r.t_sent, r.rid, worker=r.worker))  # type: ignore[arg-type]
        v.handle(ev(K.DONE, r.t_done, r.rid, r=5, a=5, record=r, worker=r.worker))  # type: ignore[arg-type]
    (alert,) = v.alerts(30.0)
    want = client_delay_verdict(health, recs)
    assert want.fired and alert.text == want.sentence
    assert "1 of 20 requests were touched" in alert.text  # worker 1's request 9 (9..11); not worker 0's
