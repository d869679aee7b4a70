"""Arrival processes: distributions (KS tests with fixed seeds), limits, reproducibility, traces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from rllmtop.errors import UserError
from rllmtop.scenario import ArrivalSpec, PhaseSpec
from rllmtop.workload.arrivals import load_trace, schedule


@pytest.mark.parametrize(("rate", "b"), [(1.0, 1.0), (5.0, 0.25), (20.0, 0.5), (500.0, 0.25), (2.0, 4.0)])
@pytest.mark.parametrize("seed", [0, 7])
def test_gamma_gaps_follow_vllm_gamma(rate: float, b: float, seed: int) -> None:
    t = schedule(ArrivalSpec(process="gamma", rate=rate, burstiness=b), 4000, None, seed)
    gaps = np.diff(np.concatenate([[0.0], t]))
    # vLLM: gap ~ Gamma(shape=b, scale=1/(rate*b)): mean 1/rate, CV 1/sqrt(b)
    res = stats.kstest(gaps, "gamma", args=(b, 0, 1 / (rate * b)))
    assert res.pvalue > 0.01, res
    assert abs(gaps.mean() * rate - 1) < 0.1
    assert abs(gaps.std() / gaps.mean() - 1 / np.sqrt(b)) < 0.15 / np.sqrt(b)
    # and it is not some other distribution: a wrong shape is rejected
    wrong = stats.kstest(gaps, "gamma", args=(b * 2, 0, 1 / (rate * b * 2)))
    assert wrong.pvalue < 0.01


def test_poisson_is_exponential_and_constant_is_constant() -> None:
    t = schedule(ArrivalSpec(process="poisson", rate=3.0), 3000, None, 1)
    gaps = np.diff(np.concatenate([[0.0], t]))
    assert stats.kstest(gaps, "expon", args=(0, 1 / 3)).pvalue > 0.01
    c = schedule(ArrivalSpec(process="constant", rate=4.0), 8, None, 1)
    np.testing.assert_allclose(c, np.arange(0, 8) / 4)


def test_same_seed_same_schedule_other_seed_differs() -> None:
    spec = ArrivalSpec(rate=5.0, burstiness=0.5)
    a = schedule(spec, 100, None, 3)
    np.testing.assert_array_equal(a, schedule(spec, 100, None, 3))
    assert not np.array_equal(a, schedule(spec, 100, None, 4))


def test_duration_and_n_limits() -> None:
    spec = ArrivalSpec(rate=50.0, burstiness=0.5)
    t = schedule(spec, None, 20.0, 0)
    assert t.max() < 20.0 and abs(t.size - 1000) < 200
    assert np.all(np.diff(t) >= 0)
    both = schedule(spec, 30, 20.0, 0)
    np.testing.assert_array_equal(both, t[:30])
    short = schedule(spec, 10_000, 1.0, 0)
    assert short.max() < 1.0 and short.size < 100
    assert schedule(spec, 0, None, 0).size == 0


def test_duration_prefix_matches_n_schedule() -> None:
    """Blocked generation for a duration gives the same stream as generating by count."""
    spec = ArrivalSpec(rate=10.0, burstiness=0.3)
    by_time = schedule(spec, None, 100.0, 5)
    by_n = schedule(spec, by_time.size, None, 5)
    np.testing.assert_allclose(by_time, by_n)


def test_rescale_like_vllm() -> None:
    spec = ArrivalSpec(rate=10.0, burstiness=0.5, rescale=True)
    t = schedule(spec, 200, None, 2)
    assert t[-1] == pytest.approx(200 / 10.0)
    plain = schedule(ArrivalSpec(rate=10.0, burstiness=0.5), 200, None, 2)
    np.testing.assert_allclose(t / t[-1], plain / plain[-1])


def test_infinite_rate_sends_all_at_once() -> None:
    t = schedule(ArrivalSpec(rate=float("inf")), 50, None, 0)
    assert t.size == 50 and not t.any()


def test_bursts() -> None:
    one = schedule(ArrivalSpec(process="burst", burst_size=16), None, None, 0)
    assert one.size == 16 and not one.any()
    capped = schedule(ArrivalSpec(process="burst", burst_size=16), 5, None, 0)
    assert capped.size == 5
    rep = schedule(ArrivalSpec(process="burst", burst_size=3, burst_interval=2.0), 8, None, 0)
    np.testing.assert_array_equal(rep, [0, 0, 0, 2, 2, 2, 4, 4])
    timed = schedule(ArrivalSpec(process="burst", burst_size=2, burst_interval=1.5), None, 4.0, 0)
    np.testing.assert_array_equal(timed, [0, 0, 1.5, 1.5, 3, 3])


def test_phases_rates_and_silence() -> None:
    phases = (PhaseSpec(100.0, 10.0, 0.5), PhaseSpec(50.0, 0.0), PhaseSpec(100.0, 2.0, 1.0, "poisson"))
    t = schedule(ArrivalSpec(process="phases", phases=phases), None, None, 9)
    first = t[t < 100]
    assert abs(first.size - 1000) < 150
    assert not np.any((t >= 100) & (t < 150))
    last = t[t >= 150]
    assert abs(last.size - 200) < 50 and t.max() < 250
    g = np.diff(first)
    assert stats.kstest(g, "gamma", args=(0.5, 0, 1 / 5.0)).pvalue > 0.01


def test_repeated_phases_until_n_or_duration() -> None:
    phases = (PhaseSpec(1.0, 20.0, process="constant"), PhaseSpec(1.0, 0.0))
    t = schedule(ArrivalSpec(process="phases", phases=phases, repeat_phases=True), None, 6.0, 0)
    assert t.size == 60 and t.max() < 5.0
    n = schedule(ArrivalSpec(process="phases", phases=phases, repeat_phases=True), 45, None, 0)
    assert n.size == 45


def test_trace_csv_and_jsonl(tmp_path: Path) -> None:
    csv = tmp_path / "burstgpt.csv"
    csv.write_text("Timestamp,Model,Request tokens\n105.5,ChatGPT,10\n100.0,GPT-4,3\n101.0,ChatGPT,7\n")
    t = schedule(
        ArrivalSpec(process="trace", trace_file=str(csv), trace_column="Timestamp", time_scale=2.0),
        None,
        None,
        0,
    )
    np.testing.assert_allclose(t, [0.0, 2.0, 11.0])
    jl = tmp_path / "t.jsonl"
    jl.write_text("\n".join(json.dumps(x) for x in [{"timestamp": 3.0}, 5.0, {"timestamp": 4.0}]) + "\n")
    np.testing.assert_allclose(load_trace(jl), [0.0, 1.0, 2.0])
    assert schedule(ArrivalSpec(process="trace", trace_file=str(jl)), 2, None, 0).size == 2
    assert schedule(ArrivalSpec(process="trace", trace_file=str(jl)), None, 1.5, 0).size == 2


def test_trace_errors(tmp_path: Path) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text("time\n1\n")
    with pytest.raises(UserError) as ei:
        load_trace(csv, "Timestamp")
    assert "no column 'Timestamp'" in ei.value.what and "time" in ei.value.what
    csv.write_text("timestamp\n1\nsoon\n")
    with pytest.raises(UserError) as ei:
        load_trace(csv)
    assert "line 3" in ei.value.what
    with pytest.raises(UserError):
        load_trace(tmp_path / "missing.csv")
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(UserError) as ei:
        load_trace(tmp_path / "e.jsonl")
    assert "no timestamps" in ei.value.what


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(0.1, 2000),
    b=st.floats(0.05, 10),
    n=st.one_of(st.none(), st.integers(1, 500)),
    duration=st.one_of(st.none(), st.floats(0.01, 50)),
    seed=st.integers(0, 2**31),
    process=st.sampled_from(["gamma", "poisson", "constant"]),
)
def test_schedule_properties(
    rate: float, b: float, n: int | None, duration: float | None, seed: int, process: str
) -> None:
    if n is None and duration is None:
        n = 10
    t = schedule(ArrivalSpec(process=process, rate=rate, burstiness=b), n, duration, seed)
    assert t.ndim == 1 and np.all(np.isfinite(t)) and np.all(t >= 0)
    assert np.all(np.diff(t) >= 0)
    if n is not None:
        assert t.size <= n
    if duration is not None:
        assert t.size == 0 or t.max() < duration
    if n is not None and duration is None:
        assert t.size == n
