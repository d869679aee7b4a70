"""rllmtop/summary.py: one row model for every ASU table, three renderers, the headless summary."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from rllmtop import fmt
from rllmtop.events import ClientHealth, RequestRecord, RequestStatus, encode_gaps
from rllmtop.metrics import analysis as A
from rllmtop.summary import (
    COLUMNS,
    GOODPUT_COLUMNS,
    Table,
    asu_table,
    columns_for,
    format_summary,
    markdown_table,
    text_table,
)


def rec(
    rid: int, cls: str, e2e: float, *, ttfvt: float | None = 0.4, status: RequestStatus = RequestStatus.OK
) -> RequestRecord:
    return RequestRecord(
        rid=rid, cls=cls, t_scheduled=rid * 0.5, t_dispatch=rid * 0.5, t_sent=rid * 0.5,
        t_first_token=rid * 0.5 + 0.05, t_first_visible=None if ttfvt is None else rid * 0.5 + ttfvt,
        t_done=rid * 0.5 + e2e if status is RequestStatus.OK else None, reasoning_tokens=200, answer_tokens=20,
        status=status, finish_reason="stop" if status is RequestStatus.OK else None,
        gaps=encode_gaps([10_000] * 219),
    )  # fmt: skip


RECS = [rec(i, ("easy", "hard")[i % 2], 1.0 + (i % 2) * 9) for i in range(20)] + [
    rec(99, "hard", 0.0, status=RequestStatus.ERROR)
]


def test_one_row_model_three_renderers_same_cells() -> None:
    s = A.asu_summary(RECS)
    t = asu_table(s)
    assert t.head == tuple(c.title for c in COLUMNS)
    assert [row[0] for row in t.rows] == ["easy", "hard", "all"]
    assert t.text() == text_table(s) and t.markdown() == markdown_table(s)
    for row in t.rows:
        line = next(x for x in t.text().splitlines() if x.startswith(row[0]))
        assert all(cell in line for cell in row)
        assert "| " + " | ".join(row) + " |" in t.markdown()
    cells: list[str] = []

    class P(HTMLParser):
        def handle_data(self, data: str) -> None:
            if data.strip():
                cells.append(data)

    P().feed(t.html())
    assert cells == [*t.head, *(c for row in t.rows for c in row)]
    # the cells are fmt's
    hard = s.by_name()["hard"]
    assert fmt.seconds_trio(hard.e2e) in t.rows[1] and fmt.percent(None) in t.rows[1]


def test_table_escapes_and_checks_its_shape() -> None:
    t = Table.of(["a|b", "<x>"], [["1|2", "<script>"]])
    assert "a\\|b" in t.markdown() and "&lt;script&gt;" in t.html() and "<script>" not in t.html()
    assert t.right == (False, True)
    with pytest.raises(ValueError):
        Table.of(["a", "b"], [["only one"]])


def test_a_single_class_has_no_all_row() -> None:
    s = A.asu_summary([r for r in RECS if r.cls == "easy"])
    assert [row[0] for row in asu_table(s).rows] == ["easy"]


def test_goodput_columns_and_line_appear_only_with_slos() -> None:
    plain = A.asu_summary(RECS)
    assert columns_for(plain) == COLUMNS and "good" not in text_table(plain)
    s = A.asu_summary(RECS, goodput={"e2el": 5.0})
    assert columns_for(s) == (*COLUMNS, *GOODPUT_COLUMNS)
    out = format_summary(s)
    assert "good req/s" in out.splitlines()[0]
    line = next(x for x in out.splitlines() if x.startswith("goodput"))
    o = s.overall
    assert line.startswith(f"goodput (e2el <= 5.00s): {fmt.rate(o.goodput_rps)} req/s")
    assert f"{o.good} of {o.requests} requests met every SLO" in line
    assert "from the first request start to the last end" in line


def test_format_summary_prints_the_trust_warnings_and_the_rule() -> None:
    s = A.asu_summary(RECS)
    health = [
        ClientHealth(t=float(t), interval=1.0, lag_max=0.3 if t == 3 else 0.001, lag_mean=0.0)
        for t in range(1, 15)
    ]
    v = A.client_delay_verdict(health, RECS)
    out = format_summary(s, A.trust_warnings(v, A.sim_drift_verdict([], 10.0)))
    lines = out.splitlines()
    assert lines[-1] == f"warning: {v.sentence}" and "of client delay" in lines[-1]
    assert lines[-2] == f"stragglers: {s.straggler_rule}"
    assert format_summary(None) == "no requests ended"
    assert format_summary(A.asu_summary([]), ["x"]) == "no requests ended\nwarning: x"


def test_unfinished_and_recent_are_said() -> None:
    from dataclasses import replace

    s = A.asu_summary([*RECS, replace(RECS[0], rid=500, status=RequestStatus.IN_FLIGHT, t_done=None)])
    assert "1 request(s) never ended" in format_summary(s)
    live = A.LiveAsu(recent=5)
    for r in RECS:
        live.add(r)
    assert "over the most recent 5 ended requests" in format_summary(live.summary())


def test_cancelled_requests_are_said_apart_from_engine_errors() -> None:
    """A stop that cancels in-flight requests puts them in the err column; a note says they were rllmtop's."""
    from rllmtop.events import RequestRecord, RequestStatus
    from rllmtop.metrics.analysis import asu_summary
    from rllmtop.summary import summary_notes

    def rec(i: int, status: RequestStatus) -> RequestRecord:
        return RequestRecord(
            rid=i, cls="a", t_scheduled=0.0, t_dispatch=0.0, t_start=0.0, t_sent=0.0, t_first_token=0.1,
            t_done=1.0, status=status, error=None if status is RequestStatus.OK else "cancelled",
        )  # fmt: skip

    notes = summary_notes(asu_summary([rec(0, RequestStatus.OK), rec(1, RequestStatus.CANCELLED)]))
    assert any(n.startswith("1 request(s) cancelled by rllmtop") for n in notes), notes
    assert not any(
        "cancelled by rllmtop" in n for n in summary_notes(asu_summary([rec(0, RequestStatus.OK)]))
    )
