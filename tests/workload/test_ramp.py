"""Ramp-up arrivals: the rates `vllm bench serve --ramp-up-strategy` computes, and gaps that are the stated
distribution at each request's rate (Kolmogorov-Smirnov on the gaps rescaled by their rates, fixed seeds)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from rllmtop.scenario import ArrivalSpec
from rllmtop.workload.arrivals import ramp_rates, schedule, schedule_chunks, schedule_count

N = 4000


def ramp(strategy: str, process: str = "poisson", start: float = 1.0, end: float = 16.0, b: float = 1.0):
    return ArrivalSpec(
        process=process,
        burstiness=b,
        ramp_up_strategy=strategy,
        ramp_up_start_rate=start,
        ramp_up_end_rate=end,
    )


def vllm_rate(strategy: str, start: float, end: float, i: int, n: int) -> float:
    """vllm/benchmarks/serve.py ``_get_current_request_rate``, written out per request."""
    progress = i / max(n - 1, 1)
    if strategy == "linear":
        return start + (end - start) * progress
    return start * (end / start) ** progress


@pytest.mark.parametrize("strategy", ["linear", "exponential"])
def test_rates_are_vllms(strategy: str) -> None:
    i = np.arange(50)
    got = ramp_rates(strategy, 2.0, 30.0, i, 50)
    np.testing.assert_allclose(got, [vllm_rate(strategy, 2.0, 30.0, k, 50) for k in range(50)], rtol=1e-12)
    assert got[0] == pytest.approx(2.0) and got[-1] == pytest.approx(30.0)
    assert ramp_rates(strategy, 3.0, 3.0, np.arange(1), 1).tolist() == [3.0]


@pytest.mark.parametrize(
    ("strategy", "process", "b", "seed"),
    [
        ("linear", "poisson", 1.0, 0),
        ("exponential", "poisson", 1.0, 1),
        ("linear", "gamma", 0.5, 2),
        ("exponential", "gamma", 2.0, 3),
    ],
)
def test_gaps_follow_the_distribution_at_each_rate(strategy: str, process: str, b: float, seed: int) -> None:
    spec = ramp(strategy, process, 1.0, 16.0, b)
    t = schedule(spec, N, None, seed)
    assert t.size == N and np.all(np.diff(t) >= 0)
    gaps = np.diff(np.concatenate(([0.0], t)))  # the first request waits one gap, as in vllm bench serve
    rate = ramp_rates(strategy, 1.0, 16.0, np.arange(N), N)
    # gap_i x rate_i ~ Gamma(shape b, scale 1/b) (Exp(1) for Poisson) whatever the rate
    z = gaps * rate
    assert stats.kstest(z, stats.gamma(b, scale=1 / b).cdf).pvalue > 0.01
    # and the ramp is there: a distribution that ignores the rates is refused
    assert stats.kstest(gaps * rate.mean(), stats.gamma(b, scale=1 / b).cdf).pvalue < 1e-6
    # the time to send all: the sum of the mean gaps, within 5 sigma
    mean, var = np.sum(1 / rate), np.sum(1 / (b * rate**2))
    assert abs(t[-1] - mean) < 5 * np.sqrt(var)


def test_rate_climbs_over_the_run() -> None:
    t = schedule(ramp("linear"), N, None, 7)
    quarters = np.array_split(np.arange(N), 4)
    rates = [q.size / (t[q[-1]] - t[q[0]]) for q in quarters]
    assert all(a < b for a, b in itertools.pairwise(rates))
    # a window's rate is its count over the sum of its mean gaps: the harmonic mean of the rates in it
    expect = [q.size / np.sum(1 / ramp_rates("linear", 1.0, 16.0, q, N)) for q in quarters]
    np.testing.assert_allclose(rates, expect, rtol=0.1)


def test_constant_ramp_is_exact_and_chunks_change_nothing() -> None:
    t = schedule(ramp("exponential", "constant", 2.0, 8.0), 100, None, 0)
    rate = ramp_rates("exponential", 2.0, 8.0, np.arange(100), 100)
    np.testing.assert_allclose(t, np.cumsum(1 / rate))
    spec = ramp("linear", "gamma", 1.0, 16.0, 0.7)
    whole = schedule(spec, 1000, None, 4)
    parts = list(schedule_chunks(spec, 1000, None, 4, chunk=37))
    assert max(p.size for p in parts) <= 37
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert schedule_count(spec, 1000, None, 4) == 1000
    cut = schedule(spec, 1000, 20.0, 4)
    np.testing.assert_array_equal(cut, whole[whole < 20.0])
    assert schedule_count(spec, 1000, 20.0, 4) == cut.size
    assert not np.array_equal(schedule(spec, 1000, None, 5), whole)  # the seed decides
