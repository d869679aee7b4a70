"""Schema 2 round trips: every field of every record kind comes back as it was handed to the recorder."""

from __future__ import annotations

import dataclasses
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import synth

from rllmtop.events import (
    ClientHealth,
    EngineInfo,
    HistogramSample,
    MetricSample,
    Provenance,
    RequestEvent,
    RequestKind,
    RequestRecord,
    RequestStatus,
    Scrape,
    SessionState,
    WorkerEvent,
    encode_gaps,
)
from rllmtop.record.reader import REQUEST_COLUMNS, open_recording
from rllmtop.record.rebuild import starting_record
from rllmtop.record.schema import SCHEMA_VERSION, TABLES
from rllmtop.record.writer import Recorder

A = "http://127.0.0.1:8001"
B = "http://127.0.0.1:8002"


def full_record(rid: int = 7) -> RequestRecord:
    """A request with every field set to something other than its default."""
    return RequestRecord(
        rid=rid,
        cls="hard",
        difficulty="hard",
        prompt_id="aime-3",
        t_scheduled=1.0,
        t_dispatch=1.001,
        t_start=1.25,
        connect_s=0.004,
        t_sent=1.2541,
        t_first_token=1.5,
        t_first_reasoning=1.5,
        t_reasoning_end=3.0,
        t_first_visible=3.01,
        t_done=4.0,
        prompt_tokens=321,
        reasoning_tokens=150,
        answer_tokens=30,
        completion_tokens=180,
        tokens_exact=True,
        reasoning_mode="field",
        usage_reasoning=149,
        split_note="usage says 149 reasoning tokens, 150 counted",
        max_tokens=4096,
        finish_reason="length",
        status=RequestStatus.OK,
        http_status=200,
        error="a retry on a dead keep-alive connection",
        answer_text="The answer is 42.",
        reference="42",
        extracted="42",
        correct=True,
        gaps=encode_gaps([1000] * 5, [2, 1, 1, 3, 1, 2]),
        engine=B,
        worker=3,
        node="node-b",
        conversation=11,
        turn=2,
        target_input_tokens=300,
    )


def test_the_full_record_sets_every_field() -> None:
    r, default = full_record(), RequestRecord(rid=0, cls="")
    same = [
        f.name for f in dataclasses.fields(RequestRecord) if getattr(r, f.name) == getattr(default, f.name)
    ]
    assert same == ["status"]  # OK is the default status


def write(path: Path) -> tuple[RequestRecord, list[object]]:
    prov = Provenance(
        source="burst",
        overrides=(("request_rate", "4.0"),),
        override_flags=(("request_rate", "--request-rate"),),
        cell=(("engine.profile", '"rllm-7b"'),),
        cell_label="profile=rllm-7b",
        planned_requests=40,
        workload='{"arrival":{}}',
        workload_digest="abc123",
    )
    info = synth.info(
        provenance=prov,
        engines=(EngineInfo(A, url=A, metrics_url=A + "/metrics", kind="sim"),),
        load_url="http://127.0.0.1:9000",
        clock="simulated",
        speed=10.0,
    )
    rec = Recorder(path, info)
    r = full_record()
    out: list[object] = []
    hist = HistogramSample(2.0, "ttft_seconds", synth.TTFT_BOUNDS, tuple(range(11)), 1.5, 10.0, ())
    out.append(
        Scrape(
            2.0, 0.01, True, "", (MetricSample(2.0, "kv_cache_usage", 0.5, (("engine", "0"),)),), (hist,),
            ("sim_lag_seconds",), engine_id=A, stale=True, dropped_series=12,
        )
    )  # fmt: skip
    out.append(Scrape(2.1, 0.02, True, "", (MetricSample(2.1, "kv_cache_usage", 0.9, (("engine", "0"),)),)))
    out.append(
        Scrape(2.2, 0.5, False, "timeout", engine_id=B, counter_reset=True),
    )
    out.append(ClientHealth(2.5, 0.5, 0.004, 0.001, worker=3, cpu_s=0.21))
    out.append(ClientHealth(3.5, 0.5, 0.002, 0.0005))
    out.append(WorkerEvent(0.5, 3, "started", node="node-b", pid=4242, clock_offset=0.0012, detail="up"))
    out.append(WorkerEvent(5.0, 3, "done"))
    for x in out:
        rec.handle(x)  # type: ignore[arg-type]
    rec.handle(
        RequestEvent(RequestKind.SENT, r.t_sent or 0.0, r.rid, r.cls, record=starting_record(r), worker=3)
    )
    rec.handle(RequestEvent(RequestKind.FIRST_TOKEN, 1.5, r.rid, r.cls, 1, 0, worker=3))
    rec.handle(RequestEvent(RequestKind.PROGRESS, 2.0, r.rid, r.cls, 60, 0, worker=3))
    rec.handle(RequestEvent(RequestKind.DONE, 4.0, r.rid, r.cls, 150, 30, "length", r, worker=3))
    # the fleet grows and a version is learned: the engines table is updated by key
    rec.handle(
        dataclasses.replace(
            info,
            engine_version="0.11.0",
            engines=(
                EngineInfo(A, url=A, metrics_url=A + "/metrics", kind="sim", version="0.2", launched=True),
                EngineInfo(B, url=B, kind="vllm", source="prometheus", gpu_metrics_url=B + "/dcgm"),
            ),
        )
    )
    rec.close(SessionState.DONE, "finished")
    return r, out


def test_every_v2_field_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    r, out = write(path)
    with open_recording(path) as got:
        assert got.schema_version == SCHEMA_VERSION == 2
        (back,) = got.requests()
        assert back == r
        info = got.info
        assert info.provenance is not None and info.provenance.planned_requests == 40
        assert info.provenance.cell == (("engine.profile", '"rllm-7b"'),)
        assert (info.load_url, info.clock, info.speed, info.engine_version) == (
            "http://127.0.0.1:9000",
            "simulated",
            10.0,
            "0.11.0",
        )
        assert info.engines == (
            EngineInfo(A, url=A, metrics_url=A + "/metrics", kind="sim", version="0.2", launched=True),
            EngineInfo(B, url=B, kind="vllm", source="prometheus", gpu_metrics_url=B + "/dcgm"),
        )
        scrapes = got.scrapes(full=True)
        assert scrapes == [x for x in out if isinstance(x, Scrape)]
        assert [s.engine_id for s in scrapes] == [A, "", B]
        assert scrapes[0].stale and scrapes[0].dropped_series == 12 and scrapes[2].counter_reset
        assert got.client_health() == [x for x in out if isinstance(x, ClientHealth)]
        assert got.worker_events() == [x for x in out if isinstance(x, WorkerEvent)]
        streamed = list(got.stream())
        assert [x.t for x in streamed] == sorted(x.t for x in streamed)
        for x in out:
            assert x in streamed
        done = [x for x in streamed if isinstance(x, RequestEvent) and x.kind is RequestKind.DONE]
        assert [d.record for d in done] == [r] and done[0].worker == 3
        assert got.verify().ok and got.problems == ()


def test_samples_histograms_and_scrapes_filter_by_engine(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    rec = Recorder(path, synth.info())
    for i in range(4):
        for eng in (A, B, ""):
            s = synth.scrape(i * 0.25, i + (100 if eng == B else 0))
            rec.handle(dataclasses.replace(s, engine_id=eng))
    rec.close(SessionState.DONE)
    with open_recording(path) as got:
        every = got.samples(["requests_running"])
        assert len(every) == 12
        a = got.samples(["requests_running"], engine=A)
        b = got.samples(["requests_running"], engine=B)
        alone = got.samples(["requests_running"], engine="")
        assert [s.value for s in a] == [0.0, 1.0, 2.0, 3.0] == [s.value for s in alone]
        assert [s.value for s in b] == [float(i % 17) for i in range(100, 104)]
        assert got.samples(engine="http://nowhere") == [] and got.scrapes(engine="nope") == []
        assert len(got.histograms(["ttft_seconds"], engine=B)) == 4
        assert {s.engine_id for s in got.scrapes(engine=B)} == {B}
        assert len(got.scrapes()) == 12 and len(got.scrapes(engine="")) == 4
        assert [e.id for e in got.info.engines] == [A, B]  # engines first met in scrapes get a row
        raw = sqlite3.connect(path)
        assert raw.execute("SELECT count(*) FROM series WHERE metric = 'requests_running'").fetchone()[0] == 3
        assert raw.execute("SELECT DISTINCT engine FROM sample_values ORDER BY 1").fetchall() == [
            (None,),
            (A,),
            (B,),
        ]


def test_request_columns_match_the_records(tmp_path: Path) -> None:
    import random

    path = tmp_path / "cols.db"
    rng = random.Random(2)
    reqs = [synth.record(i, 0.1 * i, rng, queued=0.01 * (i % 3)) for i in range(40)]
    reqs.append(full_record(1000))
    reqs.append(RequestRecord(rid=1001, cls="x", t_scheduled=9.0, status=RequestStatus.CANCELLED))
    rec = Recorder(path, synth.info())
    for r in reqs:
        rec.handle(synth.done_event(dataclasses.replace(r, t_done=r.t_done or 9.5)))
    rec.close(SessionState.DONE)
    with open_recording(path) as got:
        records = got.requests()
        cols = got.request_columns(REQUEST_COLUMNS)
    assert len(cols["rid"]) == len(records) and cols["rid"].dtype == np.int64
    for name in REQUEST_COLUMNS:
        if name == "updated_t":
            continue
        want = [getattr(r, name) for r in records]
        have = cols[name].tolist()
        for w, h in zip(want, have, strict=True):
            if isinstance(w, RequestStatus):
                assert h == w.value, name
            elif w is None:
                assert h is None or (isinstance(h, float) and math.isnan(h)), name
            elif isinstance(w, float):
                assert h == pytest.approx(w, abs=1e-12), name
            else:
                assert h == w, name
    with pytest.raises(ValueError, match="unknown request columns"):
        got2 = open_recording(path)
        try:
            got2.request_columns(["nope"])
        finally:
            got2.close()


def test_iter_requests_streams_in_rid_order(tmp_path: Path) -> None:
    import random

    path = tmp_path / "it.db"
    rng = random.Random(3)
    rec = Recorder(path, synth.info())
    order = list(range(500))
    rng.shuffle(order)
    for i in order:  # finished out of order, as they do
        rec.handle(synth.done_event(synth.record(i, i * 0.01, rng)))
    rec.close(SessionState.DONE)
    with open_recording(path) as got:
        it = got.iter_requests(chunk=64)
        first = next(it)
        assert first.rid == 0
        rest = list(it)
        assert [r.rid for r in rest] == list(range(1, 500))
        assert [first, *rest] == got.requests()


def test_every_table_of_the_schema_is_created(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    Recorder(path, synth.info()).close(SessionState.DONE)
    db = sqlite3.connect(path)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == set(TABLES)
    for name, t in TABLES.items():
        cols = tuple(r[1] for r in db.execute(f"PRAGMA table_info({name})"))
        assert cols == t.names, name
