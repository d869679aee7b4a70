"""rllmtop/fmt.py: one formatter per unit, the same on every face."""

from __future__ import annotations

import math

import pytest

from rllmtop import fmt


@pytest.mark.parametrize(
    ("v", "want"),
    [
        (None, "—"),
        (math.nan, "—"),
        (0.0, "0ms"),
        (0.00025, "0.25ms"),
        (0.0042, "4.2ms"),
        (0.04, "40ms"),
        (0.653, "653ms"),
        (0.9996, "1000ms"),
        (1.0, "1.00s"),
        (2.234, "2.23s"),
        (99.9, "99.90s"),
        (312.4, "312s"),
        (-0.002, "-2.0ms"),
        (math.inf, "∞"),
    ],
)
def test_seconds_below_one_second_are_milliseconds(v: float | None, want: str) -> None:
    assert fmt.seconds(v) == want


def test_seconds_trio() -> None:
    assert fmt.seconds_trio({50: 0.055, 90: 1.2, 99: 8.3}) == "55ms/1.20s/8.30s"
    assert fmt.seconds_trio({50: None, 90: None, 99: None}) == "—"
    assert fmt.seconds_trio({50: 0.5, 90: None, 99: 2.0}) == "500ms/—/2.00s"


@pytest.mark.parametrize(
    ("f", "v", "want"),
    [
        (fmt.percent, 0.734, "73.4%"),
        (fmt.percent, 1.0, "100.0%"),
        (fmt.percent, None, "—"),
        (fmt.tokens, 1776.4, "1776"),
        (fmt.tokens, 8192, "8192"),
        (fmt.tokens, math.nan, "—"),
        (fmt.count, 118.0, "118"),
        (fmt.count, None, "—"),
        (fmt.rate, 50819.2, "50819"),
        (fmt.rate, 12.54, "12.5"),
        (fmt.rate, 0.5312, "0.53"),
        (fmt.rate, None, "—"),
        (fmt.p_value, 0.03123, "0.0312"),
        (fmt.p_value, 1e-9, "<0.0001"),
        (fmt.p_value, None, "—"),
        (fmt.points, 0.012, "+1.2 pp"),
        (fmt.points, -0.4, "-40.0 pp"),
    ],
)
def test_units(f: object, v: float | None, want: str) -> None:
    assert f(v) == want  # type: ignore[operator]


def test_percent_digits_and_change() -> None:
    assert fmt.percent(0.5, digits=0) == "50%"
    assert fmt.change(12.0, 10.0) == "+20%"
    assert fmt.change(5.0, 0.0) == "from 0" and fmt.change(0.0, 0.0) == ""
    assert fmt.change(None, 1.0) == "" and fmt.change(1.0, math.nan) == ""


def test_missing_is_never_zero() -> None:
    for f in (fmt.seconds, fmt.percent, fmt.tokens, fmt.count, fmt.rate, fmt.p_value, fmt.points):
        assert f(None) == fmt.MISSING and f(math.nan) == fmt.MISSING
        assert f(0.0) != fmt.MISSING


def test_duration_and_elapsed() -> None:
    assert [fmt.duration(x) for x in (30, 60, 90, 300, 3600, 5400)] == [
        "30s",
        "1m",
        "1.5m",
        "5m",
        "1h",
        "90m",
    ]
    assert [fmt.elapsed(x) for x in (0, 42.9, 725, 3723)] == ["0:00", "0:42", "12:05", "1:02:03"]
    assert fmt.duration(None) == fmt.elapsed(None) == fmt.MISSING
    assert fmt.duration(58.5219) == "58.5s"  # the charts' window while a young session grows
