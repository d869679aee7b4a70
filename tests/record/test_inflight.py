"""Requests in flight are in the file from the moment they are sent, kept current at every commit."""

from __future__ import annotations

import gc
import random
import tracemalloc
from pathlib import Path

import synth

from rllmtop.events import (
    ENDED,
    LogEvent,
    RequestEvent,
    RequestKind,
    RequestRecord,
    RequestStatus,
    SessionState,
)
from rllmtop.record.reader import open_recording
from rllmtop.record.rebuild import request_events, starting_record
from rllmtop.record.writer import Recorder


def sent(r: RequestRecord) -> RequestEvent:
    assert r.t_sent is not None
    return RequestEvent(RequestKind.SENT, r.t_sent, r.rid, r.cls, record=starting_record(r), worker=r.worker)


def test_a_sent_request_is_in_the_file_and_kept_current(tmp_path: Path) -> None:
    """Before: only DONE/FAILED rows were stored, so a crash lost every request on the wire."""
    path = tmp_path / "live.db"
    r = synth.record(0, 1.0, random.Random(1), reasoning=100, answer=20)
    rec = Recorder(path, synth.info())
    rec.handle(sent(r))
    rec.flush()
    with open_recording(path) as got:
        (row,) = got.requests()
        assert row.status is RequestStatus.IN_FLIGHT and row.t_sent == r.t_sent and row.t_done is None
        assert row.output_tokens == 0 and row.t_scheduled == r.t_scheduled and row.cls == r.cls
        assert got.requests(in_flight=False) == []
    assert r.t_first_token is not None and r.t_first_visible is not None
    rec.handle(RequestEvent(RequestKind.FIRST_TOKEN, r.t_first_token, 0, r.cls, 1, 0))
    rec.handle(RequestEvent(RequestKind.PROGRESS, r.t_first_token + 0.5, 0, r.cls, 40, 0))
    rec.handle(RequestEvent(RequestKind.FIRST_VISIBLE, r.t_first_visible, 0, r.cls, 100, 1))
    rec.flush()
    with open_recording(path) as got:
        (row,) = got.requests()
        assert row.status is RequestStatus.IN_FLIGHT
        assert (row.reasoning_tokens, row.answer_tokens) == (100, 1)
        assert row.t_first_token == r.t_first_token and row.t_first_reasoning == r.t_first_token
        assert row.t_first_visible == r.t_first_visible
        assert got.request_columns(["updated_t"])["updated_t"][0] == r.t_first_visible
        assert got.verify().ok
    rec.handle(synth.done_event(r))
    rec.close(SessionState.DONE)
    with open_recording(path) as got:
        assert got.requests() == [r] and got.verify().ok


def test_an_in_flight_row_replays_up_to_its_last_update_without_an_end(tmp_path: Path) -> None:
    path = tmp_path / "cut.db"
    r = synth.record(5, 1.0, random.Random(2), reasoning=400, answer=0, itl=0.01)
    assert r.t_first_token is not None
    rec = Recorder(path, synth.info())
    rec.handle(sent(r))
    rec.handle(RequestEvent(RequestKind.FIRST_TOKEN, r.t_first_token, 5, r.cls, 1, 0))
    rec.handle(RequestEvent(RequestKind.PROGRESS, r.t_first_token + 2.0, 5, r.cls, 200, 0))
    rec.close(SessionState.INTERRUPTED)  # closed with it still on the wire: it stays in flight
    with open_recording(path) as got:
        (row,) = got.requests()
        assert row.status is RequestStatus.IN_FLIGHT and row.reasoning_tokens == 200
        ev = [e for e in got.stream() if isinstance(e, RequestEvent)]
    assert ev[0].kind is RequestKind.SENT and ev[0].record == starting_record(r)
    assert not any(e.kind in ENDED for e in ev)
    assert ev[-1].t == r.t_first_token + 2.0 and ev[-1].reasoning_tokens == 200
    totals = [e.reasoning_tokens for e in ev]
    assert totals == sorted(totals) and len(ev) > 4  # PROGRESS in between, on the replay grid
    assert ev == list(request_events(row, until=r.t_first_token + 2.0))


def test_a_runner_without_starting_facts_still_gets_a_row(tmp_path: Path) -> None:
    path = tmp_path / "bare.db"
    rec = Recorder(path, synth.info())
    rec.handle(RequestEvent(RequestKind.SENT, 2.0, 3, "easy", worker=1))
    rec.handle(RequestEvent(RequestKind.PROGRESS, 2.5, 3, "easy", 10, 0))
    rec.flush()
    with open_recording(path) as got:
        (row,) = got.requests()
        assert (row.rid, row.cls, row.t_sent, row.worker, row.reasoning_tokens) == (3, "easy", 2.0, 1, 10)
    rec.handle(RequestEvent(RequestKind.FAILED, 3.0, 3, "easy", 12, 0, "connection reset"))  # no record
    rec.close(SessionState.DONE)
    with open_recording(path) as got:
        (row,) = got.requests()
        assert row.status is RequestStatus.ERROR and row.t_done == 3.0 and row.error == "connection reset"
        assert got.verify().ok


def test_odd_sequences_are_ignored_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "odd.db"
    rng = random.Random(3)
    r = synth.record(1, 1.0, rng)
    rec = Recorder(path, synth.info())
    rec.handle(RequestEvent(RequestKind.PROGRESS, 0.5, 99, "x", 5, 0))  # never sent: ignored
    rec.handle(RequestEvent(RequestKind.DONE, 0.6, 98, "x"))  # an end without record or start: ignored
    rec.handle(sent(r))
    rec.handle(sent(r))  # sent twice (a retry): one row
    rec.handle(synth.done_event(r))
    rec.flush()
    rec.handle(sent(r))  # sent again after it ended: the final row stays
    rec.handle(RequestEvent(RequestKind.PROGRESS, 9.0, 1, r.cls, -5, 0))  # a stray event
    rec.close(SessionState.DONE)
    assert rec.error is None
    with open_recording(path) as got:
        assert got.requests() == [r]
        assert any("sent again after it ended" in g.text for g in got.logs())
        assert got.verify().ok


def test_the_writer_keeps_only_requests_in_flight(tmp_path: Path) -> None:
    """Memory flat: finished requests leave nothing behind in the writer (a bit each, for exact counts)."""
    rng = random.Random(4)
    base = synth.record(0, 0.0, rng, reasoning=50, answer=10)
    rec = Recorder(tmp_path / "mem.db", synth.info())

    def run(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            t = i * 0.01
            r = RequestRecord(**{**{f: getattr(base, f) for f in base.__slots__}, "rid": i, "t_sent": t})  # type: ignore[attr-defined]
            rec.handle(sent(r))
            rec.handle(RequestEvent(RequestKind.PROGRESS, t + 0.1, i, r.cls, 10, 0))
            rec.handle(RequestEvent(RequestKind.DONE, t + 0.2, i, r.cls, 50, 10, "", r))
            if i % 500 == 0:
                rec.flush()
        rec.flush()

    run(0, 2000)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    run(2000, 12000)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert rec.in_flight == 0
    assert grown < 200_000, grown  # 10,000 finished requests: < 20 B each (the rid bitmap is 1 bit each)
    rec.close(SessionState.DONE)
    with open_recording(tmp_path / "mem.db") as got:
        assert len(got.requests()) == 12000 and got.verify().ok


def test_counts_stay_exact_when_rows_are_replaced(tmp_path: Path) -> None:
    """verify() compares each table's rows with the counts the last commit wrote: replacing an in-flight
    row by its final one, or a final one by a duplicate, must not count twice."""
    path = tmp_path / "counts.db"
    rng = random.Random(5)
    rec = Recorder(path, synth.info())
    rs = [synth.record(i, i * 0.1, rng) for i in range(10)]
    for r in rs:
        rec.handle(sent(r))
    rec.flush()
    for r in rs:
        rec.handle(synth.done_event(r))
    rec.handle(synth.done_event(rs[0]))  # a duplicate end
    rec.handle(synth.done_event(synth.record(2**40, 5.0, rng)))  # an index far outside the bitmap
    rec.flush()
    rec.handle(synth.done_event(synth.record(2**40, 5.0, rng)))
    rec.handle(LogEvent(6.0, "rllmtop", "info", "x"))
    rec.close(SessionState.DONE)
    assert rec.kept_requests == 11
    with open_recording(path) as got:
        rep = got.verify()
        assert rep.ok, rep.summary
        assert rep.rows["requests"] == 11
