"""Export round trips: CSV, JSON lines and Parquet read back equal the recording; clear errors."""

from __future__ import annotations

import csv
import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import synth

from rllmtop.errors import UserError
from rllmtop.events import (
    LogEvent,
    MetricSample,
    RequestRecord,
    RequestStatus,
    Scrape,
    SessionState,
    StateEvent,
    decode_gaps,
    encode_gaps,
)
from rllmtop.metrics.analysis import timeline
from rllmtop.record.export import TABLES, export_recording
from rllmtop.record.reader import open_recording
from rllmtop.record.writer import Recorder

NAMES = list(TABLES)


@pytest.fixture
def rec_path(tmp_path: Path) -> Path:
    path = tmp_path / "s.db"
    rng = random.Random(4)
    rec = Recorder(path, synth.info())
    rec.handle(StateEvent(0.0, SessionState.RUNNING))
    for i in range(24):
        # KV usage is not served before t=2 s: exported as empty, not 0
        s = synth.scrape(i * 0.25, i)
        if i < 8:
            s = Scrape(s.t, s.latency_s, True, "", tuple(m for m in s.samples if m.name != "kv_cache_usage"))
        rec.handle(s)
    rec.handle(Scrape(6.1, 0.0, True, "", (MetricSample(6.1, "requests_running", math.nan, ()),)))
    for i in range(20):
        rec.handle(synth.done_event(synth.record(i, 0.2 + i * 0.2, rng)))
    multi = RequestRecord(
        rid=100, cls="x", t_scheduled=1.0, t_sent=1.0, t_first_token=1.1, t_first_visible=1.1, t_done=1.2,
        answer_tokens=5, gaps=encode_gaps([1000, 2000], [1, 2, 2]), status=RequestStatus.OK,
    )  # fmt: skip
    rec.handle(synth.done_event(multi))
    rec.handle(LogEvent(2.0, "engine", "warning", 'a "quoted", comma line'))
    rec.close(SessionState.DONE, "ok")
    return path


def test_csv_round_trip(rec_path: Path, tmp_path: Path) -> None:
    files = export_recording(rec_path, "csv", tmp_path / "out")
    assert [f.name for f in files] == [f"{n}.csv" for n in NAMES] + ["session.json"]
    with open_recording(rec_path) as r:
        reqs = {q.rid: q for q in r.requests()}
        samples = r.samples()
        duration = r.duration
    rows = list(csv.DictReader((tmp_path / "out" / "requests.csv").open()))
    assert len(rows) == len(reqs)
    for row in rows:
        q = reqs[int(row["rid"])]
        assert row["cls"] == q.cls and row["status"] == q.status.value
        assert float(row["t_sent"]) == q.t_sent and int(row["reasoning_tokens"]) == q.reasoning_tokens
        assert float(row["ttft"]) == q.ttft and float(row["e2e"]) == q.e2e
        assert row["t_first_reasoning"] == ("" if q.t_first_reasoning is None else repr(q.t_first_reasoning))
        gaps, per_chunk = decode_gaps(q.gaps)
        assert [int(x) for x in row["gaps_us"].split()] == list(gaps)
        assert row["tokens_per_chunk"] == ("" if per_chunk is None else " ".join(map(str, per_chunk)))
        assert row["correct"] in ("true", "")
    srows = list(csv.DictReader((tmp_path / "out" / "samples.csv").open()))
    assert len(srows) == len(samples)
    assert srows[0] == {
        "t": "0.0",
        "engine": "",
        "metric": "requests_running",
        "labels": "engine=0",
        "value": "0.0",
    }
    assert srows[-1]["value"] == ""  # NaN is an empty cell
    ev = list(csv.DictReader((tmp_path / "out" / "events.csv").open()))
    assert ev[1]["text"] == 'a "quoted", comma line' and ev[0]["state"] == "running"
    tl = list(csv.DictReader((tmp_path / "out" / "timeline.csv").open()))
    assert len(tl) == math.ceil(duration)
    assert tl[1]["kv_cache_usage"] == "" and tl[4]["kv_cache_usage"] != ""  # missing, not 0
    meta = json.loads((tmp_path / "out" / "session.json").read_text())
    assert meta["status"] == "done" and meta["session_id"] == "abc123" and meta["seed"] == 7


def test_jsonl_round_trip_matches_the_recording_and_the_timeline(rec_path: Path, tmp_path: Path) -> None:
    export_recording(rec_path, "jsonl", tmp_path / "j")
    load = lambda n: [json.loads(x) for x in (tmp_path / "j" / f"{n}.jsonl").read_text().splitlines()]  # noqa: E731
    with open_recording(rec_path) as r:
        reqs = r.requests()
        samples = r.samples()
        hists = r.histograms()
        expected = timeline(reqs, samples, step=1.0, t_end=r.duration)
    got = load("requests")
    assert [g["rid"] for g in got] == [q.rid for q in reqs]
    for g, q in zip(got, reqs, strict=True):
        assert g["t_done"] == q.t_done and g["finish_reason"] == q.finish_reason and g["ttfvt"] == q.ttfvt
        assert g["gaps_us"] == list(decode_gaps(q.gaps)[0])
    assert got[-1]["tokens_per_chunk"] == [1, 2, 2]
    s = load("samples")
    assert [(x["t"], x["metric"], x["value"]) for x in s[:-1]] == [
        (m.t, m.name, m.value) for m in samples[:-1]
    ]
    assert s[-1]["value"] is None
    h = load("histograms")
    assert [x["bounds"][:-1] for x in h] == [list(y.bounds[:-1]) for y in hists]
    assert [x["counts"] for x in h] == [list(y.counts) for y in hists]
    tl = load("timeline")
    for name, col in expected.columns.items():
        assert [row[name] for row in tl] == [None if math.isnan(v) else float(v) for v in col], name


def test_parquet_round_trip(rec_path: Path, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    export_recording(rec_path, "parquet", tmp_path / "p")
    with open_recording(rec_path) as r:
        reqs = r.requests()
        expected = timeline(reqs, r.samples(), step=1.0, t_end=r.duration)
    t = pq.read_table(tmp_path / "p" / "requests.parquet").to_pydict()
    assert t["rid"] == [q.rid for q in reqs]
    assert t["t_first_visible"] == [q.t_first_visible for q in reqs]
    assert t["tokens_exact"] == [q.tokens_exact for q in reqs]
    assert t["gaps_us"][0] == list(decode_gaps(reqs[0].gaps)[0])
    tl = pq.read_table(tmp_path / "p" / "timeline.parquet").to_pydict()
    np.testing.assert_allclose(tl["reasoning_tps"], expected.columns["reasoning_tps"])
    kv = expected.columns["kv_cache_usage"]
    assert tl["kv_cache_usage"] == [None if math.isnan(v) else v for v in kv] and np.isnan(kv).any()
    s = pq.read_table(tmp_path / "p" / "samples.parquet").to_pydict()
    assert s["value"][-1] is None and s["metric"][0] == "requests_running"


def test_parquet_without_pyarrow_says_how_to_get_it(
    rec_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(UserError) as e:
        export_recording(rec_path, "parquet", tmp_path / "p")
    assert "pyarrow" in e.value.what and "rllmtop[parquet]" in e.value.hint
    assert not (tmp_path / "p").exists()


def test_bad_format_and_bad_input(rec_path: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown export format"):
        export_recording(rec_path, "xlsx", tmp_path / "x")
    with pytest.raises(UserError, match="no such recording"):
        export_recording(tmp_path / "missing.db", "csv", tmp_path / "x")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot create the export directory"):
        export_recording(rec_path, "csv", blocker / "out")


def test_the_export_command(rec_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rllmtop.cli import main

    assert main(["export", str(rec_path), "--format", "jsonl", "--out", str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "cli" / f"{n}.jsonl") for n in NAMES] + [
        str(tmp_path / "cli" / "session.json")
    ]
    assert main(["export", str(tmp_path / "nope.db"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "no such recording" in err and "hint:" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------ schema 2 and trust


def test_the_v2_tables_are_exported(tmp_path: Path) -> None:
    from test_schema2 import A, B, full_record, write

    path = tmp_path / "v2.db"
    r, _out = write(path)
    export_recording(path, "jsonl", tmp_path / "j")
    load = lambda n: [json.loads(x) for x in (tmp_path / "j" / f"{n}.jsonl").read_text().splitlines()]  # noqa: E731
    (req,) = load("requests")
    assert req["engine"] == B and req["worker"] == 3 and req["node"] == "node-b" and req["turn"] == 2
    assert req["t_start"] == r.t_start and req["connect_s"] == r.connect_s and req["updated_t"] == r.t_done
    assert req["concurrency_wait"] == pytest.approx(r.concurrency_wait) and "client_wait" not in req
    assert req["send_lag"] == pytest.approx(r.send_lag) and req["reasoning_mode"] == "field"
    assert [e["id"] for e in load("engines")] == [A, B] and load("engines")[0]["launched"] is True
    assert [(s["engine"], s["stale"], s["dropped_series"]) for s in load("scrapes")] == [
        (A, True, 12),
        ("", False, 0),
        (B, False, 0),
    ]
    assert load("samples")[0]["engine"] == A and load("histograms")[0]["engine"] == A
    assert [h["lag_max"] for h in load("client_health")] == [0.004, 0.002]
    assert [(w["state"], w["pid"]) for w in load("workers")] == [("started", 4242), ("done", None)]
    meta = json.loads((tmp_path / "j" / "session.json").read_text())
    assert meta["clock"] == "simulated" and meta["speed"] == 10.0 and meta["load_url"]
    assert meta["provenance"]["planned_requests"] == 40 and len(meta["engines"]) == 2
    assert meta["integrity"]["ok"] and meta["integrity"]["checksums"]
    _ = full_record


def test_a_file_whose_content_changed_is_refused_unless_forced(rec_path: Path, tmp_path: Path) -> None:
    """Before: a changed value was exported as if the file were whole."""
    import sqlite3

    db = sqlite3.connect(rec_path)
    db.execute("UPDATE requests SET reasoning_tokens = reasoning_tokens + 1 WHERE rid = 3")
    db.commit()
    db.close()
    with pytest.raises(UserError) as e:
        export_recording(rec_path, "csv", tmp_path / "x")
    assert "cannot be trusted" in e.value.what and "1 of 21 requests rows" in e.value.what
    assert "--force" in e.value.hint and "\n" not in e.value.what and not (tmp_path / "x").exists()
    files = export_recording(rec_path, "csv", tmp_path / "x", force=True)
    assert len(files) == len(NAMES) + 1
    meta = json.loads((tmp_path / "x" / "session.json").read_text())
    assert meta["integrity"]["ok"] is False and meta["integrity"]["bad_rows"] == {"requests": 1}


def test_the_v1_sample_exports_and_says_checksums_are_unavailable(tmp_path: Path) -> None:
    from test_interop import SAMPLE

    files = export_recording(SAMPLE, "csv", tmp_path / "s")
    assert [f.name for f in files] == [f"{n}.csv" for n in NAMES] + ["session.json"]
    meta = json.loads((tmp_path / "s" / "session.json").read_text())
    assert meta["schema_version"] == 1 and meta["integrity"]["ok"] and not meta["integrity"]["checksums"]
    assert "checksums are unavailable" in meta["integrity"]["summary"]
    rows = list(csv.DictReader((tmp_path / "s" / "requests.csv").open()))
    assert len(rows) == 128 and all(r["t_start"] == "" for r in rows)
