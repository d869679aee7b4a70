"""No value from the wire can stop the recorder: a bad one costs one sample, one field or one record."""

from __future__ import annotations

import dataclasses
import math
import random
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import synth

from rllmtop.errors import UserError
from rllmtop.events import (
    ClientHealth,
    HistogramSample,
    LogEvent,
    MetricSample,
    RequestEvent,
    RequestKind,
    RequestRecord,
    RequestStatus,
    Scrape,
    SessionState,
    StateEvent,
    WorkerEvent,
)
from rllmtop.metrics.analysis import asu_summary
from rllmtop.record.reader import open_recording
from rllmtop.record.rebuild import starting_record
from rllmtop.record.writer import Recorder

INF = math.inf


def recorded(tmp_path: Path, records: list[Any]) -> tuple[Recorder, Path]:
    path = tmp_path / "w.db"
    errors: list[UserError] = []
    rec = Recorder(path, synth.info(), on_error=errors.append)
    for x in records:
        rec.handle(x)
    rec.close(SessionState.DONE)
    assert errors == [] and rec.error is None
    return rec, path


@pytest.mark.parametrize("bad", [INF, math.nan, -3.0])
def test_a_bad_bucket_count_costs_that_histogram(tmp_path: Path, bad: float) -> None:
    """Before: int(inf) raised in the encoder and the recording stopped (0 requests, 0 scrapes kept)."""
    good = synth.scrape(1.0, 4)
    h = good.histograms[0]
    broken = dataclasses.replace(h, counts=(*h.counts[:-1], bad))
    s = dataclasses.replace(good, histograms=(broken, *good.histograms[1:]))
    later = synth.scrape(2.0, 5)
    r = synth.record(0, 0.5, random.Random(1))
    rec, path = recorded(tmp_path, [s, synth.done_event(r), later])
    assert rec.dropped == 1
    with open_recording(path) as got:
        back = got.scrapes(full=True)
        by_name = lambda s: sorted(s.histograms, key=lambda h: h.name)  # noqa: E731 (stored in series order)
        assert dataclasses.replace(back[1], histograms=()) == dataclasses.replace(later, histograms=())
        assert by_name(back[1]) == by_name(later) and back[0].samples == good.samples
        assert back[0].histograms == good.histograms[1:]
        assert got.requests() == [r] and got.verify().ok
        assert any("bucket count" in g.text for g in got.logs())


@pytest.mark.parametrize("reason", [{"type": "stop"}, ["stop", "length"], 7])
def test_a_finish_reason_that_is_not_text_costs_that_field(tmp_path: Path, reason: Any) -> None:
    """Before: "type 'dict' is not supported" stopped the recorder, then the summary raised TypeError."""
    r = synth.record(0, 0.5, random.Random(2))
    odd = dataclasses.replace(r, rid=1, finish_reason=reason)
    rec, path = recorded(tmp_path, [synth.done_event(r), synth.done_event(odd)])
    assert rec.coerced == 1
    with open_recording(path) as got:
        a, b = got.requests()
        assert a == r and b.finish_reason is None and "finish_reason was a" in (b.error or "")
        assert b.status is RequestStatus.OK and b.reasoning_tokens == r.reasoning_tokens
        assert asu_summary(got.requests()).overall.ok == 2  # the summary computes
        assert got.verify().ok


def test_non_finite_times_cost_that_record(tmp_path: Path) -> None:
    """Before: a NaN scrape time was stored as NULL into a NOT NULL column and the recording stopped."""
    rng = random.Random(3)
    r = synth.record(0, 0.5, rng)
    rec, path = recorded(
        tmp_path,
        [
            Scrape(math.nan, 0.0, True),
            Scrape(INF, 0.0, True),
            LogEvent(math.nan, "engine", "info", "x"),
            StateEvent(INF, SessionState.RUNNING),
            RequestEvent(RequestKind.DONE, math.nan, 5, "x", record=r),
            ClientHealth(math.nan, 0.5, 0.0, 0.0),
            WorkerEvent(INF, 1, "started"),
            synth.done_event(dataclasses.replace(r, t_first_token=INF, t_done=math.nan)),
            synth.scrape(1.0, 1),
        ],
    )
    assert rec.dropped == 6  # the end event with a NaN time keeps its request (the record is what counts)
    with open_recording(path) as got:
        back, kept = got.requests()
        assert kept.rid == 5 and kept.t_done == r.t_done
        assert back.t_first_token is None and back.t_done is None and "stored as null" in (back.error or "")
        assert len(got.scrapes()) == 1 and got.verify().ok


def test_negative_token_counts_are_not_stored_as_counts(tmp_path: Path) -> None:
    r = synth.record(0, 0.5, random.Random(4))
    odd = dataclasses.replace(r, reasoning_tokens=-62, answer_tokens=-38, completion_tokens=-100)
    _rec, path = recorded(tmp_path, [synth.done_event(odd)])
    with open_recording(path) as got:
        (back,) = got.requests()
        assert (back.reasoning_tokens, back.answer_tokens, back.completion_tokens) == (0, 0, None)
        assert "reasoning_tokens was negative" in (back.error or "")


def test_numpy_scalars_everywhere_are_stored_as_numbers(tmp_path: Path) -> None:
    r = synth.record(0, 0.5, random.Random(5))
    np_rec = dataclasses.replace(
        r,
        rid=np.int64(0),  # type: ignore[arg-type]
        t_sent=np.float64(r.t_sent),  # type: ignore[arg-type]
        t_done=np.float32(2.5),  # type: ignore[arg-type]
        reasoning_tokens=np.uint32(7),  # type: ignore[arg-type]
        tokens_exact=np.bool_(False),  # type: ignore[arg-type]
        correct=np.bool_(True),  # type: ignore[arg-type]
        http_status=np.int16(200),  # type: ignore[arg-type]
    )
    s = Scrape(
        np.float64(1.0),  # type: ignore[arg-type]
        np.float32(0.25),  # type: ignore[arg-type]
        np.bool_(True),  # type: ignore[arg-type]
        samples=(MetricSample(1.0, "requests_running", np.int64(3), ()),),  # type: ignore[arg-type]
        histograms=(
            HistogramSample(1.0, "ttft_seconds", (0.1, INF), np.array([1.0, 2.0]), np.float64(0.3), 2.0, ()),  # type: ignore[arg-type]
        ),
    )
    rec, path = recorded(tmp_path, [synth.done_event(np_rec), s])
    assert rec.coerced == 0 and rec.dropped == 0
    with open_recording(path) as got:
        (back,) = got.requests()
        assert back == dataclasses.replace(
            r, t_done=2.5, reasoning_tokens=7, tokens_exact=False, correct=True, http_status=200
        )
        (sc,) = got.scrapes(full=True)
        assert sc.ok and sc.latency_s == 0.25 and sc.samples[0].value == 3.0
        assert sc.histograms[0].counts == (1.0, 2.0) and got.verify().ok


def test_samples_with_unusable_labels_or_values_are_dropped_one_by_one(tmp_path: Path) -> None:
    samples = (
        MetricSample(1.0, "requests_running", 3.0, (("engine", 0),)),  # type: ignore[arg-type]
        MetricSample(1.0, "requests_waiting", "12", ()),  # type: ignore[arg-type]
        MetricSample(1.0, "", 1.0, ()),
        MetricSample(1.0, "kv_cache_usage", 0.5, (("engine", "0"),)),
        MetricSample(1.0, "requests_running", INF, ()),
    )
    rec, path = recorded(tmp_path, [Scrape(1.0, 0.0, True, "", samples)])
    assert rec.dropped == 3
    with open_recording(path) as got:
        assert [(s.name, s.value) for s in got.samples()] == [
            ("kv_cache_usage", 0.5),
            ("requests_running", INF),
        ]


# ------------------------------------------------------------------------------------------ the fuzzer

_ODD: list[Any] = [
    None, math.nan, INF, -INF, -1, -(2**70), 2**70, 0, 1.5, True, "", "x" * 300, "\x00\ud800", b"\xff",
    {"a": 1}, [1, 2], (1,), object(), np.int64(3), np.float32(np.nan), np.bool_(True), "ok",
]  # fmt: skip


def _odd(rng: random.Random) -> Any:
    return rng.choice(_ODD)


def _mutate(obj: Any, rng: random.Random, p: float = 0.3) -> Any:
    """The same record with some fields replaced by odd values (bypassing the dataclass's types)."""
    kw = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    for k in kw:
        if rng.random() < p:
            kw[k] = _odd(rng)
    new = object.__new__(type(obj))
    for k, v in kw.items():
        object.__setattr__(new, k, v)
    return new


def _case(rng: random.Random, i: int) -> list[Any]:
    r = synth.record(i, 1.0 + i * 0.01, rng)
    s = synth.scrape(1.0 + i * 0.01, i)
    out: list[Any] = []
    out.append(
        RequestEvent(RequestKind.SENT, r.t_sent or 0.0, i, r.cls, record=_mutate(starting_record(r), rng))
    )
    out.append(_mutate(RequestEvent(RequestKind.PROGRESS, 2.0, i, r.cls, 5, 1), rng, 0.2))
    out.append(RequestEvent(RequestKind.DONE, r.t_done or 0.0, i, r.cls, record=_mutate(r, rng)))
    samples = tuple(_mutate(m, rng, 0.1) for m in s.samples)
    hists = tuple(_mutate(h, rng, 0.15) for h in s.histograms)
    out.append(_mutate(dataclasses.replace(s, samples=samples, histograms=hists), rng, 0.1))
    out.append(_mutate(LogEvent(1.0, "engine", "info", "line"), rng, 0.3))
    out.append(_mutate(StateEvent(1.0, SessionState.RUNNING, "x"), rng, 0.3))
    out.append(_mutate(ClientHealth(1.0, 0.5, 0.001, 0.0005, 0, 0.1), rng, 0.3))
    out.append(_mutate(WorkerEvent(1.0, 1, "started", "n", 12, 0.001, "d"), rng, 0.3))
    out.append(_mutate(synth.info(), rng, 0.1))
    return out


def _fuzz(tmp_path: Path, seed: int, n: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / f"fuzz-{seed}.db"
    errors: list[UserError] = []
    rec = Recorder(path, synth.info(), on_error=errors.append)
    good = RequestRecord(rid=10**6, cls="good", t_scheduled=0.5, t_sent=0.5, t_done=0.75)
    for i in range(n):
        for x in _case(rng, i):
            rec.handle(x)
    rec.handle(synth.done_event(good))
    rec.close(SessionState.DONE)
    assert errors == [] and rec.error is None, errors
    with open_recording(path) as got:
        assert got.status is SessionState.DONE
        report = got.verify()
        assert report.ok, report.summary  # what was stored is readable and whole
        reqs = got.requests()
        assert good in reqs
        for r in reqs:
            assert isinstance(r.status, RequestStatus) and isinstance(r.cls, str)
        list(got.stream())
        got.samples()
        got.histograms()
        got.client_health()
        got.worker_events()
        _ = got.info


@pytest.mark.parametrize("seed", range(6))
def test_fuzzed_records_never_stop_the_recorder(tmp_path: Path, seed: int) -> None:
    _fuzz(tmp_path, seed, 40)  # 6 x 40 cases of 9 records


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6, 40))
def test_fuzzed_records_never_stop_the_recorder_slow(tmp_path: Path, seed: int) -> None:
    _fuzz(tmp_path, seed, 200)


def test_the_fuzzer_reaches_the_checks(tmp_path: Path) -> None:
    """The fuzzer is not vacuous: its odd values are met, counted and logged."""
    rng = random.Random(99)
    rec = Recorder(tmp_path / "f.db", synth.info())
    for i in range(40):
        for x in _case(rng, i):
            rec.handle(x)
    rec.close(SessionState.DONE)
    assert rec.coerced > 20 and rec.dropped > 20
    db = sqlite3.connect(tmp_path / "f.db")
    assert db.execute("SELECT count(*) FROM events WHERE text LIKE 'recorder:%'").fetchone()[0] > 5


def test_the_series_cache_is_bounded(tmp_path: Path) -> None:
    """10k new series per scrape made 100k series rows with no limit: past the cap, new series are dropped
    (counted, one warning line per few), known ones keep being recorded."""
    path = tmp_path / "card.db"
    rec = Recorder(path, synth.info(), max_series=50)
    for k in range(4):
        samples = tuple(
            MetricSample(float(k), "request_success_total", 1.0, (("id", str(i)),))
            for i in range(40 * (k + 1))
        )
        rec.handle(Scrape(float(k), 0.0, True, "", samples))
    rec.close(SessionState.DONE)
    assert len(rec._series) == 50 and rec.dropped == 30 + 70 + 110
    with open_recording(path) as got:
        assert [len(s.samples) for s in got.scrapes(full=True)] == [40, 50, 50, 50]
        assert any("more than 50 series" in g.text for g in got.logs()) and got.verify().ok
