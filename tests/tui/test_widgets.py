"""The TUI's widgets in isolation: chart reduction and drawing, board sorting/filtering, log pane."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from textual.app import App, ComposeResult
from tui_helpers import screen_text

from rllmtop.events import LogEvent, MetricSample, Phase, Scrape
from rllmtop.tui.app import kv_chart, queue_chart
from rllmtop.tui.widgets.board import FILTERS, SORTS, RequestBoard
from rllmtop.tui.widgets.chart import (
    BrailleChart,
    braille_codes,
    column_minmax,
    human,
    nice_ceiling,
)
from rllmtop.tui.widgets.distribution import strip
from rllmtop.tui.widgets.logpane import LogPane
from rllmtop.view import LiveView, ViewSnapshot


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 100), st.floats(-5, 5, allow_nan=False)), max_size=60),
    st.integers(1, 30),
)
def test_column_minmax_matches_brute_force(points: list[tuple[float, float]], ncols: int) -> None:
    points.sort()
    t = np.array([p[0] for p in points], dtype=float)
    v = np.array([p[1] for p in points], dtype=float)
    t0, dt = 10.0, 80.0 / ncols
    lo, hi, last = column_minmax(t, v, t0, dt, ncols)
    for c in range(ncols):
        a, b = t0 + c * dt, t0 + (c + 1) * dt
        inside = [val for tt, val in points if a <= tt < b]
        if inside:
            assert lo[c] == min(inside) and hi[c] == max(inside) and last[c] == inside[-1]
        else:
            assert math.isnan(lo[c]) and math.isnan(hi[c])


def test_column_minmax_ignores_nan_gaps() -> None:
    t = np.array([0.5, 1.5, 1.6, 2.5])
    v = np.array([1.0, np.nan, np.nan, 3.0])
    lo, hi, _ = column_minmax(t, v, 0.0, 1.0, 3)
    assert lo[0] == 1.0 and math.isnan(hi[1]) and hi[2] == 3.0


def test_braille_codes_put_dots_where_the_values_are() -> None:
    # two dot columns (one cell), 1 row = 4 dots: value 0 -> bottom dot, value max -> top dot
    lo = np.array([0.0, 1.0])
    codes = braille_codes(lo, lo, lo, 1.0, 1, fill=False)
    # left column: bottom dot (0x40); right column: joined from 0 up to 1 -> all four right dots
    assert codes.tolist() == [[0x40 | 0x08 | 0x10 | 0x20 | 0x80]]
    area = braille_codes(
        np.array([0.5, np.nan]), np.array([0.5, np.nan]), np.array([0.5, np.nan]), 1.0, 1, fill=True
    )
    assert area.tolist() == [[0x40 | 0x04 | 0x02]]  # left column filled up to half, nothing on the right


def test_nice_ceiling_and_human() -> None:
    assert [nice_ceiling(x) for x in (0.7, 1.0, 3, 7, 12, 2400)] == [1.0, 1.0, 5.0, 10.0, 20.0, 2500.0]
    assert [human(x) for x in (0, 3.25, 950, 1234, 34567, 2.5e6)] == [
        "0",
        "3.2",
        "950",
        "1.2k",
        "35k",
        "2.5M",
    ]


def test_distribution_strip() -> None:
    assert strip((0, 1, 2, 4), 4) == " ▂▄█"
    assert len(strip(tuple(range(24)), 10)) == 10
    assert strip((), 5) == ""


class _Host(App[None]):
    def __init__(self, *widgets: object) -> None:
        super().__init__()
        self.widgets = widgets

    def compose(self) -> ComposeResult:
        yield from self.widgets  # type: ignore[misc]


def _snapshot_with_scrapes(n: int, *, missing: tuple[str, ...] = ()) -> ViewSnapshot:
    v = LiveView(summary_interval=0)
    for i in range(1, n + 1):
        t = i * 0.25
        samples: tuple[MetricSample, ...] = (
            MetricSample(t, "requests_running", float(i % 5)),
            MetricSample(t, "requests_waiting", 1.0),
        )
        if "kv_cache_usage" not in missing:
            samples += (MetricSample(t, "kv_cache_usage", min(1.0, i / n)),)
        v.handle(Scrape(t, 0.0, True, samples=samples, missing=missing))
    return v.snapshot(n * 0.25)


async def test_chart_draws_samples_and_caches_until_something_changes() -> None:
    chart = BrailleChart("KV cache", kv_chart, show_axis=True)
    async with _Host(chart).run_test(size=(60, 8)) as pilot:
        snap = _snapshot_with_scrapes(400)
        chart.update_snapshot(snap)
        await pilot.pause()
        assert chart.renders == 1
        data = chart.data
        assert data is not None and data.lines[0].series.t.size == 400
        text = screen_text(pilot.app)
        assert "KV cache" in text and "100%" in text and "now" in text
        assert any(ch != "⠀" and 0x2800 < ord(ch) <= 0x28FF for ch in text)  # some dots drawn
        chart.update_snapshot(snap)  # the same data again: no rebuild
        chart.refresh()
        await pilot.pause()
        assert chart.renders == 1
        await pilot.resize_terminal(70, 8)
        await pilot.pause()
        assert chart.renders == 2  # a new size: rebuilt


async def test_axis_labels_of_a_window_growing_with_a_young_session_are_rounded() -> None:
    """A 58.75 s old session (window min(120, t)) labelled its axis -58.75s, -29.375s ... (every frame a
    new label); to a tenth of a second now."""
    import re

    chart = BrailleChart("KV cache", kv_chart, show_axis=True)
    async with _Host(chart).run_test(size=(60, 8)) as pilot:
        chart.update_snapshot(_snapshot_with_scrapes(235))  # t = 58.75 s
        await pilot.pause()
        axis = screen_text(pilot.app).splitlines()[-1]
        assert "-58.8s" in axis and "now" in axis, axis
        assert not re.search(r"\d\.\d\d", axis), axis


async def test_chart_shows_missing_metric_as_na_not_zero() -> None:
    chart = BrailleChart("KV cache", kv_chart)
    async with _Host(chart).run_test(size=(60, 6)) as pilot:
        chart.update_snapshot(_snapshot_with_scrapes(40, missing=("kv_cache_usage",)))
        await pilot.pause()
        text = screen_text(pilot.app)
        assert "n/a" in text and "does not serve kv_cache_usage" in text
        assert "0%" not in text.split("\n", 1)[1]  # no axis pretending it is zero


async def test_hidden_chart_is_not_rendered() -> None:
    chart = BrailleChart("queue", queue_chart)
    async with _Host(chart).run_test(size=(60, 6)) as pilot:
        chart.display = False
        await pilot.pause()
        chart.update_snapshot(_snapshot_with_scrapes(40))
        await pilot.pause()
        assert chart.renders == 0
        chart.display = True
        await pilot.pause()
        assert chart.renders == 1


def _board_snapshot() -> ViewSnapshot:
    from rllmtop.events import RequestEvent, RequestKind

    v = LiveView(summary_interval=0)
    k = RequestKind
    for rid, cls, t in ((1, "math", 0.0), (2, "mcq", 1.0), (3, "math", 2.0), (4, "code", 3.0)):
        v.handle(RequestEvent(k.SENT, t, rid, cls))
    v.handle(RequestEvent(k.FIRST_TOKEN, 3.5, 1, "math", 10, 0))
    v.handle(RequestEvent(k.FIRST_VISIBLE, 3.6, 2, "mcq", 50, 3))
    v.handle(RequestEvent(k.PROGRESS, 3.7, 3, "math", 300, 0))
    return v.snapshot(4.0)


async def test_board_sorts_and_filters() -> None:
    board = RequestBoard()
    async with _Host(board).run_test(size=(90, 12)) as pilot:
        board.update_snapshot(_board_snapshot())
        await pilot.pause()
        assert [r.rid for r in board.rows] == [1, 2, 3, 4]  # age, oldest first
        board.reverse_sort()
        assert [r.rid for r in board.rows] == [4, 3, 2, 1]
        while board.sort_key != "reasoning":
            board.cycle_sort()
        assert [r.rid for r in board.rows][:3] == [3, 2, 1]
        board.cycle_filter()  # active
        assert board.phase_filter == "active" and len(board.rows) == 4
        board.cycle_filter()  # thinking
        assert {r.rid for r in board.rows} == {1, 3}
        assert all(r.phase is Phase.THINKING for r in board.rows)
        board.set_text_filter("MATH")
        assert {r.rid for r in board.rows} == {1, 3}
        board.set_text_filter("3")
        assert [r.rid for r in board.rows] == [3]
        assert "filter thinking" in board.describe() and "1 of 4" in board.describe()
        await pilot.pause()
        text = screen_text(pilot.app)
        assert "thinking" in text and "mcq" not in text


def test_sort_and_filter_tables_cover_every_column_and_phase() -> None:
    assert set(SORTS) >= {"age", "reasoning", "answer", "ttft", "ttfvt", "phase", "class", "id"}
    assert set(FILTERS) >= {"all", "thinking", "answering", "stragglers"}


async def test_log_pane_appends_only_new_lines_and_clears_on_a_new_stream() -> None:
    pane = LogPane(lambda s: (s.engine_log, s.engine_log_total), show_source=False)
    async with _Host(pane).run_test(size=(60, 10)) as pilot:
        v = LiveView()
        v.handle(LogEvent(0.5, "engine", "info", "first"))
        pane.update_snapshot(v.snapshot(1.0))
        pane.update_snapshot(v.snapshot(1.1))
        v.handle(LogEvent(1.5, "engine", "warning", "second"))
        pane.update_snapshot(v.snapshot(2.0))
        await pilot.pause()
        assert pane.line_count == 2 and pane.lines[1].endswith("W second")
        from rllmtop.events import Reset

        v.handle(Reset(0.0))
        v.handle(LogEvent(0.1, "engine", "info", "again"))
        pane.update_snapshot(v.snapshot(0.2))
        await pilot.pause()
        assert list(pane.lines) == ["     0.1s I again"]


@pytest.mark.parametrize("n", [0, 1])
def test_kv_chart_data_fixed_axis(n: int) -> None:
    snap = _snapshot_with_scrapes(n)
    data = kv_chart(snap)
    assert data.y_max == 1.0 and data.ref_line == 1.0 and data.marks is snap.preemptions


def _asu_snapshot() -> ViewSnapshot:
    from rllmtop.events import RequestEvent, RequestKind, RequestRecord

    v = LiveView(summary_interval=0)
    for rid in range(12):
        cls = ("easy", "medium", "hard", "mcq")[rid % 4]
        rec = RequestRecord(rid, cls, t_scheduled=0.0, t_dispatch=0.0, t_sent=0.0, t_first_token=0.1,
                            t_first_visible=0.5, t_done=1.0 + rid, reasoning_tokens=100, answer_tokens=10,
                            correct=True)  # fmt: skip
        v.handle(RequestEvent(RequestKind.SENT, 0.0, rid, cls))
        v.handle(RequestEvent(RequestKind.DONE, 1.0 + rid, rid, cls, 100, 10, record=rec))
    return v.snapshot(20.0)


@pytest.mark.parametrize(
    ("width", "dropped"), [(120, set()), (62, {"strag", "ok/n"}), (40, {"E2E", "err", "strag", "ok/n"})]
)
async def test_asu_panel_one_row_per_class_dropping_columns_when_narrow(
    width: int, dropped: set[str]
) -> None:
    from rllmtop.tui.widgets.asu import AsuPanel

    panel = AsuPanel()
    async with _Host(panel).run_test(size=(width, 12)) as pilot:
        panel.update_snapshot(_asu_snapshot())
        await pilot.pause()
        text = screen_text(pilot.app)
        for cls in ("all", "easy", "medium", "hard", "mcq"):
            assert cls in text
        assert "TTFVT" in panel.columns and "class" in panel.columns
        if width >= 62:  # the widest the panel gets squeezed to in the app
            assert {"acc", "tok/s", "E2E", "err"} <= set(panel.columns)
        assert not dropped & set(panel.columns)
        assert "client send-lag p99" in text


def test_latency_triple() -> None:
    from rllmtop.tui.widgets.asu import latency_triple

    assert latency_triple({50: 0.8, 90: 1.7, 99: 2.8}) == "0.8/1.7/2.8s"
    assert latency_triple({50: 0.01, 90: 0.02, 99: 0.5}) == "10/20/500ms"
    assert latency_triple({50: None, 90: None, 99: None}) == "-"


def test_hold_forward_fills_short_gaps_only() -> None:
    from rllmtop.tui.widgets.chart import hold_forward

    nan = np.nan
    last = np.array([nan, 2.0, nan, nan, nan, 5.0, nan])
    lo, hi, out = hold_forward(last.copy(), last.copy(), last, 2)
    assert np.array_equal(out, [nan, 2.0, 2.0, 2.0, nan, 5.0, 5.0], equal_nan=True)
    assert np.array_equal(lo, out, equal_nan=True) and np.array_equal(hi, out, equal_nan=True)
    same = hold_forward(last, last, last, 0)[2]
    assert np.array_equal(same, last, equal_nan=True)


async def test_a_chart_redraws_only_when_its_own_series_changed() -> None:
    from rllmtop.tui.app import tps_chart

    kv, tps = BrailleChart("KV", kv_chart), BrailleChart("tok/s", tps_chart)
    async with _Host(kv, tps).run_test(size=(60, 12)) as pilot:
        v = LiveView(summary_interval=0)
        v.handle(Scrape(1.0, 0.0, True, samples=(MetricSample(1.0, "kv_cache_usage", 0.5),)))
        for w in (kv, tps):
            w.update_snapshot(v.snapshot(5.0))
        await pilot.pause()
        assert (kv.renders, tps.renders) == (1, 1)
        v.handle(Scrape(4.5, 0.0, True, samples=(MetricSample(4.5, "kv_cache_usage", 0.7),)))  # KV only
        for w in (kv, tps):
            w.update_snapshot(v.snapshot(5.0))
        await pilot.pause()
        assert (kv.renders, tps.renders) == (2, 1)
