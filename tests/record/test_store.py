"""Recorder and reader on real SQLite files: round trips, refusals, secrets, disk full, sizes."""

from __future__ import annotations

import math
import random
import sqlite3
from pathlib import Path

import pytest
import synth
from hypothesis import given, settings
from hypothesis import strategies as st

from rllmtop.errors import UserError
from rllmtop.events import (
    ENDED,
    HistogramSample,
    LogEvent,
    MetricSample,
    RequestEvent,
    RequestKind,
    RequestRecord,
    RequestStatus,
    Reset,
    Scrape,
    SessionState,
    StateEvent,
    encode_gaps,
)
from rllmtop.record.reader import open_recording
from rllmtop.record.rebuild import request_events
from rllmtop.record.schema import SCHEMA_VERSION
from rllmtop.record.writer import Recorder
from rllmtop.redact import redact_argv, redact_text


def write_session(path: Path, n_requests: int = 50, n_scrapes: int = 40, close: bool = True) -> dict:
    rng = random.Random(3)
    reqs = [synth.record(i, 0.1 + i * 0.05, rng) for i in range(n_requests)]
    scrapes = [synth.scrape(i * 0.25, i) for i in range(n_scrapes)]
    failed = Scrape(10.1, 5.0, False, "http://127.0.0.1:8000/metrics: no answer within 5 s")
    rec = Recorder(path, synth.info())
    rec.handle(StateEvent(0.0, SessionState.STARTING))
    rec.handle(StateEvent(0.05, SessionState.RUNNING, "sending"))
    for s in scrapes:
        rec.handle(s)
    rec.handle(failed)
    for r in reqs:
        # the live stream: every step is handed, only DONE/FAILED is stored
        for ev in request_events(r):
            rec.handle(ev)
    rec.handle(LogEvent(1.5, "engine", "warning", "KV cache is 95% full"))
    rec.handle(Reset(3.0))  # never stored (replay-only)
    if close:
        rec.close(SessionState.DONE, "all requests finished")
    else:
        rec.flush()
    return {"requests": reqs, "scrapes": [*scrapes, failed], "recorder": rec}


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "s.db"
    w = write_session(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["s.db"]  # no -wal/-shm after close
    with open_recording(path) as r:
        assert r.status is SessionState.DONE and r.status_detail == "all requests finished"
        assert r.schema_version == SCHEMA_VERSION
        info = r.info
        assert info.session_id == "abc123" and info.seed == 7 and info.engine_kind == "sim"
        assert info.scenario_text == synth.info().scenario_text
        assert info.record_path == str(path)
        assert r.requests() == w["requests"]
        assert r.scrapes(full=True) == w["scrapes"]
        light = r.scrapes()
        assert [s.ok for s in light] == [True] * 40 + [False] and light[0].samples == ()
        assert light[-1].error.endswith("no answer within 5 s") and light[0].missing == ("sim_lag_seconds",)
        samples = [m for s in w["scrapes"] for m in s.samples]
        assert r.samples() == samples
        assert r.samples(["kv_cache_usage"], t0=1.0, t1=2.0) == [
            m for m in samples if m.name == "kv_cache_usage" and 1.0 <= m.t <= 2.0
        ]
        assert r.samples(["nope"]) == [] and r.histograms(["kv_cache_usage"]) == []
        assert r.histograms(["ttft_seconds"]) == [
            h for s in w["scrapes"] for h in s.histograms if h.name == "ttft_seconds"
        ]
        assert r.states() == [
            StateEvent(0.0, SessionState.STARTING),
            StateEvent(0.05, SessionState.RUNNING, "sending"),
        ]
        assert r.logs() == [LogEvent(1.5, "engine", "warning", "KV cache is 95% full")]
        last = max(x.t_done for x in w["requests"] if x.t_done is not None)
        assert r.duration == pytest.approx(max(last, 10.1))
        assert r.metadata["app"] == "rllmtop"
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert raw.execute("SELECT count(*) FROM requests").fetchone()[0] == 50  # only the final records
    flat = raw.execute("SELECT t, metric, labels, value FROM sample_values ORDER BY t LIMIT 1").fetchone()
    assert flat == (0.0, "kv_cache_usage", '[["engine","0"]]', 0.0)


def test_odd_values_round_trip(tmp_path: Path) -> None:
    nan_sample = MetricSample(1.0, "kv_cache_usage", math.nan, (("engine", "0"),))
    inf_sample = MetricSample(1.0, "requests_running", math.inf, ())
    frac = HistogramSample(1.0, "ttft_seconds", (0.1, math.inf), (0.5, 2.25), math.nan, 2.25, ())
    huge = HistogramSample(1.0, "e2e_seconds", (1.0, math.inf), (1e12, 2e12), 3.0, 2e12, ())
    weird = RequestRecord(
        rid=9, cls="", t_scheduled=0.5, status=RequestStatus.CANCELLED, error="cancelled", correct=False
    )
    path = tmp_path / "odd.db"
    rec = Recorder(path, synth.info(seed=None))
    rec.handle(Scrape(1.0, 0.01, True, "", (nan_sample, inf_sample), (frac, huge), ()))
    rec.handle(RequestEvent(RequestKind.FAILED, 0.5, 9, "", record=weird))
    rec.close(SessionState.INTERRUPTED)
    with open_recording(path) as r:
        (s,) = r.scrapes(full=True)
        assert math.isnan(s.samples[0].value) and s.samples[1].value == math.inf
        h = {x.name: x for x in s.histograms}
        assert h["ttft_seconds"].counts == (0.5, 2.25) and math.isnan(h["ttft_seconds"].sum)
        assert h["e2e_seconds"].counts == (1e12, 2e12)
        assert r.requests() == [weird]
        assert r.info.seed is None and r.status is SessionState.INTERRUPTED


def test_duplicate_series_in_one_scrape_do_not_break_the_recording(tmp_path: Path) -> None:
    a = MetricSample(1.0, "requests_running", 1.0, ())
    b = MetricSample(1.0, "requests_running", 2.0, ())
    path = tmp_path / "dup.db"
    rec = Recorder(path, synth.info())
    rec.handle(Scrape(1.0, 0.0, True, "", (a, b)))
    rec.handle(StateEvent(2.0, SessionState.DONE))
    rec.close(SessionState.DONE)
    with open_recording(path) as r:
        assert r.samples() == [b] and len(r.states()) == 1


def test_session_info_updates_facts(tmp_path: Path) -> None:
    path = tmp_path / "u.db"
    rec = Recorder(path, synth.info(engine_version=""))
    rec.handle(synth.info(engine_version="0.32.0", model="Qwen/Qwen3-8B"))
    rec.close(SessionState.DONE)
    with open_recording(path) as r:
        assert r.info.engine_version == "0.32.0" and r.info.model == "Qwen/Qwen3-8B"


def test_unclosed_recording_reads_as_incomplete(tmp_path: Path) -> None:
    path = tmp_path / "open.db"
    w = write_session(path, close=False)
    with open_recording(path) as r:  # the writer is still alive: WAL readers see committed data
        assert r.status is SessionState.INCOMPLETE and "without closing" in r.status_detail
        assert len(r.requests()) == 50
    w["recorder"].close(SessionState.DONE)
    with open_recording(path) as r:
        assert r.status is SessionState.DONE


def test_secrets_never_reach_the_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.db"
    info = synth.info(
        scenario_text='name = "x"\n[engine]\napi_key = "sk-live-111"\n',
        launch_command=(
            "vllm",
            "serve",
            "m",
            "--api-key",
            "sk-live-222",
            "--hf-token=hf_333",
            "HF_TOKEN=hf_444",
        ),
        engine_url="http://user:pw555@127.0.0.1:8000",
        metrics_url="http://127.0.0.1:8000/metrics?api_key=sk-666",
        extra=(("header", "Authorization: Bearer sk-777"),),
    )
    rec = Recorder(path, info)
    rec.handle(LogEvent(1.0, "engine", "info", "non-default args: {'api_key': 'sk-888', 'port': 8000}"))
    rec.handle(StateEvent(2.0, SessionState.FAILED, "curl -H 'Authorization: Bearer sk-999' failed"))
    rec.close(SessionState.FAILED, "launch: vllm serve --api-key sk-000")
    blob = path.read_bytes()
    for secret in (b"sk-live-111", b"sk-live-222", b"hf_333", b"hf_444", b"pw555", b"sk-666", b"sk-777"):
        assert secret not in blob, secret
    for secret in (b"sk-888", b"sk-999", b"sk-000"):
        assert secret not in blob, secret
    with open_recording(path) as r:
        assert r.info.launch_command == (
            "vllm",
            "serve",
            "m",
            "--api-key",
            "***",
            "--hf-token=***",
            "HF_TOKEN=***",
        )
        assert r.info.engine_url == "http://127.0.0.1:8000"
        assert "port" in r.logs()[0].text  # the rest of the line survives


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer ***"),
        ("--api-key sk-1 --port 8000", "--api-key *** --port 8000"),
        ("--api-key=sk-1", "--api-key=***"),
        ('api_key = "sk-1"', 'api_key = "***"'),
        ("{'api_key': 'sk-1', 'port': 1}", "{'api_key': '***', 'port': 1}"),
        ("OPENAI_API_KEY=sk-1 rllmtop run", "OPENAI_API_KEY=*** rllmtop run"),
        ("http://u:p@127.0.0.1:1/x", "http://u:***@127.0.0.1:1/x"),
        ("--max-num-seqs 256 --tokenizer-mode auto", "--max-num-seqs 256 --tokenizer-mode auto"),
        ("max_tokens = 4096", "max_tokens = 4096"),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_redact_argv_keeps_ordinary_arguments() -> None:
    argv = ("vllm", "serve", "Qwen/Qwen3-8B", "--max-num-seqs", "64", "--api-key", "k", "--port", "8000")
    assert redact_argv(argv) == (*argv[:5], "--api-key", "***", "--port", "8000")


# ------------------------------------------------------------------------------------------ refusals


def refused(path: Path) -> UserError:
    with pytest.raises(UserError) as e:
        open_recording(path)
    assert str(path) in e.value.what and e.value.hint and "\n" not in e.value.what
    return e.value


def test_refuses_missing_foreign_and_non_sqlite_files(tmp_path: Path) -> None:
    assert "no such recording" in refused(tmp_path / "nope.db").what
    txt = tmp_path / "notes.db"
    txt.write_text("hello")
    assert "not an SQLite database" in refused(txt).what
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    assert "not an rllmtop recording" in refused(other).what
    other2 = tmp_path / "other2.db"
    db = sqlite3.connect(other2)
    db.execute("CREATE TABLE metadata (key TEXT, value TEXT)")
    db.execute("INSERT INTO metadata VALUES ('app', 'something-else')")
    db.commit()
    assert "not an rllmtop recording" in refused(other2).what


def test_refuses_newer_schema_with_upgrade_hint(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    write_session(path, 3, 3)
    db = sqlite3.connect(path)
    db.execute("UPDATE metadata SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    e = refused(path)
    assert "newer rllmtop" in e.what and "upgrade" in e.hint


def test_refuses_older_unreadable_schema(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    write_session(path, 3, 3)
    db = sqlite3.connect(path)
    db.execute("UPDATE metadata SET value = '0' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    assert "no longer reads" in refused(path).what


def test_refuses_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.db"
    write_session(path, 400, 400)
    data = bytearray(path.read_bytes())
    for off in range(8192, len(data) - 4096, 4096):  # trash every page after the first two
        data[off + 100 : off + 400] = b"\xff" * 300
    path.write_bytes(bytes(data))
    e = refused(path)
    assert "damaged" in e.what


def test_recorder_refuses_an_existing_file_and_unwritable_places(tmp_path: Path) -> None:
    path = tmp_path / "taken.db"
    path.write_text("x")
    with pytest.raises(UserError, match="already exists"):
        Recorder(path, synth.info())
    blocker = tmp_path / "afile"
    blocker.write_text("")
    with pytest.raises(UserError) as e:
        Recorder(blocker / "s.db", synth.info())
    assert "cannot create the recording" in e.value.what and "--no-record" in e.value.hint


class _TinyDisk(Recorder):
    """A recorder whose database may not grow past a few pages: SQLite reports "database or disk is full"."""

    def _connect(self) -> sqlite3.Connection:
        db = super()._connect()
        self._limit_db = db
        return db

    def _create(self, info) -> None:  # type: ignore[no-untyped-def]
        super()._create(info)
        pages = self._limit_db.execute("PRAGMA page_count").fetchone()[0]
        self._limit_db.execute(f"PRAGMA max_page_count = {pages + 6}")


def test_disk_full_is_a_clear_error_and_keeps_what_was_written(tmp_path: Path) -> None:
    path = tmp_path / "full.db"
    errors: list[UserError] = []
    rec = _TinyDisk(path, synth.info(), on_error=errors.append)
    rng = random.Random(5)
    first = [synth.record(i, i * 0.01, rng) for i in range(5)]
    for r in first:
        rec.handle(synth.done_event(r))
    rec.flush()
    assert not errors
    for i in range(5, 3000):
        rec.handle(synth.done_event(synth.record(i, i * 0.01, rng)))
    rec.flush()
    assert len(errors) == 1 and "disk is full" in errors[0].what and str(path) in errors[0].what
    assert rec.error is errors[0] and (rec.kept_requests, rec.kept_scrapes) == (5, 0)
    assert rec.kept_t == pytest.approx(max(r.t_done or 0 for r in first))
    assert "kept 5 requests and 0 scrapes up to t=" in errors[0].what
    rec.handle(synth.done_event(synth.record(99999, 50.0, rng)))  # ignored from now on
    assert not rec._q  # nothing is queued after the failure: memory stays flat
    with pytest.raises(UserError) as e:
        rec.close(SessionState.DONE, "finished")
    assert "disk is full" in e.value.what and "free some space" in e.value.hint
    with open_recording(path) as got:
        assert got.requests() == first
        assert got.status is SessionState.DONE and "disk is full" in got.status_detail
        assert got.verify().ok  # what was kept is whole


class _GoesReadOnly(Recorder):
    """A recorder whose file stops accepting writes mid-run (a remount read-only, a revoked permission)."""

    def make_read_only(self) -> None:
        self._db.execute("PRAGMA query_only = ON")


def test_a_file_that_becomes_read_only_stops_the_recording_with_what_was_kept(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    errors: list[UserError] = []
    rec = _GoesReadOnly(path, synth.info(), on_error=errors.append)
    rng = random.Random(6)
    kept = [synth.record(i, i * 0.01, rng) for i in range(7)]
    for r in kept:
        rec.handle(synth.done_event(r))
    rec.handle(synth.scrape(0.05, 1))
    rec.flush()
    rec.make_read_only()
    rec.handle(synth.done_event(synth.record(7, 1.0, rng)))
    rec.flush()
    assert len(errors) == 1 and "read-only" in errors[0].what
    assert (rec.kept_requests, rec.kept_scrapes) == (7, 1)
    with pytest.raises(UserError):
        rec.close(SessionState.DONE)
    assert len(errors) == 1  # on_error once, even though the close could not write either
    with open_recording(path) as got:
        assert got.requests() == kept and got.status is SessionState.INCOMPLETE
        assert got.verify().ok


def test_a_request_row_is_small(tmp_path: Path) -> None:
    path = tmp_path / "size.db"
    rng = random.Random(9)
    rec = Recorder(path, synth.info())
    n = 5000
    for i in range(n):
        rec.handle(synth.done_event(synth.record(i, i * 0.01, rng, with_gaps=False)))
    rec.close(SessionState.DONE)
    db = sqlite3.connect(path)
    try:
        size = db.execute("SELECT sum(pgsize) FROM dbstat WHERE name = 'requests'").fetchone()[0]
    except sqlite3.OperationalError:
        pytest.skip("this SQLite has no dbstat")
    assert size / n <= 300, size / n


# ------------------------------------------------------------------------------------------ rebuilt events


def test_request_events_shape() -> None:
    r = synth.record(1, 10.0, random.Random(1), reasoning=100, answer=20, itl=0.02, queued=0.5)
    ev = list(request_events(r))
    kinds = [e.kind for e in ev]
    assert kinds[:3] == [RequestKind.QUEUED, RequestKind.SENT, RequestKind.FIRST_TOKEN]
    assert kinds.count(RequestKind.FIRST_VISIBLE) == 1 and kinds[-1] is RequestKind.DONE
    assert ev[0].t == r.t_dispatch and ev[1].t == r.t_sent and ev[2].t == r.t_first_token
    fv = ev[kinds.index(RequestKind.FIRST_VISIBLE)]
    assert fv.t == r.t_first_visible and fv.reasoning_tokens == 100 and fv.answer_tokens == 1
    assert ev[-1].record is r and (ev[-1].reasoning_tokens, ev[-1].answer_tokens) == (100, 20)
    progress = [e for e in ev if e.kind is RequestKind.PROGRESS]
    assert progress and all(abs(e.t / 0.25 - round(e.t / 0.25)) < 1e-9 for e in progress)
    assert all(e.cls == r.cls and e.rid == 1 for e in ev)


def test_request_events_for_failures_and_cancellations() -> None:
    unsent = RequestRecord(
        rid=3, cls="c", t_scheduled=1.0, t_dispatch=1.0, t_done=4.0, status=RequestStatus.CANCELLED
    )
    assert [e.kind for e in request_events(unsent)] == [RequestKind.QUEUED, RequestKind.FAILED]
    refused_ = RequestRecord(
        rid=4, cls="c", t_scheduled=1.0, t_dispatch=1.0, t_sent=1.0, t_done=1.01,
        status=RequestStatus.ERROR, http_status=503, error="HTTP 503",
    )  # fmt: skip
    ev = list(request_events(refused_))
    assert [e.kind for e in ev] == [RequestKind.SENT, RequestKind.FAILED] and ev[-1].detail == "HTTP 503"


def test_request_without_gap_blob_progresses_linearly() -> None:
    r = synth.record(2, 0.0, random.Random(2), reasoning=300, answer=100, itl=0.01, with_gaps=False)
    ev = list(request_events(r))
    prog = [e for e in ev if e.kind is RequestKind.PROGRESS]
    assert len(prog) >= 10
    totals = [e.reasoning_tokens + e.answer_tokens for e in ev[1:]]
    assert totals == sorted(totals) and totals[-1] == 400


_times = st.floats(0, 1000, allow_nan=False)


@st.composite
def records(draw: st.DrawFn) -> RequestRecord:
    t_sent = draw(_times)
    wait = draw(st.sampled_from([0.0, 0.0, draw(st.floats(0, 5))]))
    n_gaps = draw(st.integers(0, 300))
    gaps = draw(st.lists(st.integers(0, 500_000), min_size=n_gaps, max_size=n_gaps))
    multi = draw(st.booleans())
    per_chunk = draw(st.lists(st.integers(1, 4), min_size=n_gaps + 1, max_size=n_gaps + 1)) if multi else None
    chunks_tokens = sum(per_chunk) if per_chunk else n_gaps + 1
    reasoning = draw(st.integers(0, chunks_tokens))
    answer = draw(st.integers(0, 2 * chunks_tokens))
    t_ft = t_sent + draw(st.floats(0, 10))
    t_last = t_ft + sum(gaps) * 1e-6
    visible_at = draw(st.sampled_from([None, t_ft, t_ft + (t_last - t_ft) * draw(st.floats(0, 1))]))
    return RequestRecord(
        rid=draw(st.integers(0, 10**6)),
        cls="x",
        t_scheduled=t_sent - wait,
        t_dispatch=t_sent - wait,
        t_sent=t_sent,
        t_first_token=t_ft,
        t_first_visible=visible_at if answer else None,
        t_done=t_last + draw(st.floats(0, 1)),
        reasoning_tokens=reasoning,
        answer_tokens=answer,
        status=draw(st.sampled_from(list(RequestStatus))),
        gaps=encode_gaps(gaps, per_chunk),
    )


@settings(max_examples=300, deadline=None)
@given(records())
def test_rebuilt_events_are_monotone_and_end_with_the_record(r: RequestRecord) -> None:
    ev = list(request_events(r))
    assert [e.t for e in ev] == sorted(e.t for e in ev)
    last = (0, 0)
    for e in ev:
        assert e.reasoning_tokens >= last[0] and e.answer_tokens >= last[1]
        assert e.reasoning_tokens <= r.reasoning_tokens and e.answer_tokens <= r.answer_tokens
        last = (e.reasoning_tokens, e.answer_tokens)
    end = ev[-1]
    if r.status is RequestStatus.IN_FLIGHT:  # still on the wire at the last commit: no end event
        assert not any(e.kind in ENDED for e in ev) and all(
            e.record is None or not e.record.ended for e in ev
        )
        assert (end.reasoning_tokens, end.answer_tokens) == (r.reasoning_tokens, r.answer_tokens)
    else:
        assert end.record is r and end.t == r.t_done
        assert end.kind is (RequestKind.DONE if r.status is RequestStatus.OK else RequestKind.FAILED)
    assert (RequestKind.QUEUED in [e.kind for e in ev]) == (r.t_sent > r.t_dispatch)  # type: ignore[operator]
    kinds = [e.kind for e in ev]
    assert kinds.count(RequestKind.FIRST_TOKEN) == 1
    assert kinds.count(RequestKind.FIRST_VISIBLE) == (1 if r.t_first_visible is not None else 0)
    sent = ev[kinds.index(RequestKind.SENT)]
    assert sent.record is not None and sent.record.status is RequestStatus.IN_FLIGHT
    assert sent.record.t_sent == r.t_sent and sent.record.rid == r.rid


def test_numpy_numbers_in_records_are_stored_as_numbers(tmp_path: Path) -> None:
    import numpy as np

    r = RequestRecord(
        rid=np.int64(5),  # type: ignore[arg-type]
        cls="c",
        t_scheduled=np.float64(1.5),
        t_done=2.0,
        reasoning_tokens=np.int32(7),  # type: ignore[arg-type]
        answer_tokens=np.uint16(3),  # type: ignore[arg-type]
        tokens_exact=np.bool_(True),  # type: ignore[arg-type]
    )
    path = tmp_path / "np.db"
    rec = Recorder(path, synth.info())
    rec.handle(RequestEvent(RequestKind.DONE, 2.0, 5, "c", record=r))
    rec.close(SessionState.DONE)
    with open_recording(path) as got:
        (back,) = got.requests()
    assert (back.rid, back.t_scheduled, back.reasoning_tokens, back.answer_tokens) == (5, 1.5, 7, 3)
    assert back.tokens_exact is True


def test_a_value_sqlite_cannot_hold_costs_that_field_not_the_recording(tmp_path: Path) -> None:
    """Before: an integer over 64 bits stopped the recording for the rest of the session."""
    good = RequestRecord(rid=1, cls="c", t_scheduled=1.0, t_done=1.5)
    bad = RequestRecord(rid=2, cls="c", t_scheduled=2.0, t_done=2.5, prompt_tokens=2**70)
    later = RequestRecord(rid=3, cls="c", t_scheduled=3.0, t_done=3.5)
    path = tmp_path / "bad.db"
    errors: list[UserError] = []
    rec = Recorder(path, synth.info(), on_error=errors.append)
    for r in (good, bad, later):
        rec.handle(RequestEvent(RequestKind.DONE, r.t_done or 0.0, r.rid, "c", record=r))
    rec.close(SessionState.DONE)
    assert errors == [] and rec.error is None and rec.coerced == 1
    with open_recording(path) as got:
        a, b, c = got.requests()
        assert a == good and c == later and got.status is SessionState.DONE
        assert b.prompt_tokens is None and "prompt_tokens was too large" in (b.error or "")
        assert any("prompt_tokens" in g.text and g.level == "warning" for g in got.logs())
