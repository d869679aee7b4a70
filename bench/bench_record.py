"""Recorder and reader costs: ingest rate, event-loop stalls, bytes per request, opening an hour,
checksums, in-flight upserts, verify.

    python bench/bench_record.py                 # everything (a few minutes)
    python bench/bench_record.py --only ingest,size --requests 20000

- ``ingest``: request-events/s through ``Recorder.handle`` until everything is committed (``flush()``
  returns). Each request is a live-shaped stream (SENT with its starting record, FIRST_TOKEN,
  FIRST_VISIBLE, 6 PROGRESS, DONE): the SENT creates the in-flight row, the rest update it in memory, the
  DONE replaces it. Scrapes (2 engines: ~20 series + 4 histograms) are interleaved at 4 Hz of session
  time. Target >= 50,000 request-events/s.
- ``crc``: the same ingest with the row checksums replaced by a constant: what checksums cost.
- ``stall``: an asyncio loop hands 20,000 request-events/s to the recorder for a few seconds while a ticker
  measures how late ``asyncio.sleep(0.005)`` wakes, with and without the recorder: the writer thread must
  not stall the loop.
- ``size``: bytes per request row without token gaps (SQLite's dbstat over the ``requests`` table).
  Target <= 300 B.
- ``inflight``: 2,000 requests in flight, each reporting PROGRESS at 4 Hz, for 60 s of session time,
  committed every 0.5 s of session time (2,000 row upserts per commit): the writer's time per session
  second and per commit.
- ``open``: a one-hour recording (4 Hz scrapes of 2 engines, 20,000 requests of ~1,000 tokens with gap
  blobs) is written, then opened (``open_recording``: metadata, quick_check, series) and its duration
  read. Target <= 1 s. Also: the replay index and first record, reading every request, every sample,
  ``request_columns``, and ``verify()`` (every row and checksum).

Figures are noisy on a shared machine: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "record"))  # the shared generators

import synth

from rllmtop.events import (
    RequestEvent,
    RequestKind,
    RequestRecord,
    SessionState,
    StateEvent,
    encode_gaps,
)
from rllmtop.record import writer as writer_module
from rllmtop.record.reader import open_recording
from rllmtop.record.rebuild import starting_record
from rllmtop.record.writer import Recorder


def live_events(rec: RequestRecord, n_progress: int = 6) -> list[RequestEvent]:
    """What the live runner publishes for one request (QUEUED omitted): 10 events."""
    assert rec.t_sent is not None and rec.t_done is not None and rec.t_first_token is not None
    out = [
        RequestEvent(RequestKind.SENT, rec.t_sent, rec.rid, rec.cls, record=starting_record(rec)),
        RequestEvent(RequestKind.FIRST_TOKEN, rec.t_first_token, rec.rid, rec.cls, 1, 0),
        RequestEvent(RequestKind.FIRST_VISIBLE, rec.t_first_visible or rec.t_done, rec.rid, rec.cls, 50, 1),
    ]
    span = rec.t_done - rec.t_first_token
    for k in range(n_progress):
        out.append(
            RequestEvent(
                RequestKind.PROGRESS,
                rec.t_first_token + span * (k + 1) / (n_progress + 1),
                rec.rid,
                rec.cls,
                50 + 100 * k,
                1 + 10 * k,
            )
        )
    out.append(synth.done_event(rec))
    return out


def gap_pool(rng: random.Random, n: int = 64, tokens: int = 1000) -> list[bytes]:
    return [encode_gaps([rng.randint(15_000, 40_000) for _ in range(tokens - 1)]) for _ in range(n)]


def make_requests(n: int, rng: random.Random, with_gaps: bool, rate: float = 5.6) -> list[RequestRecord]:
    pool = gap_pool(rng) if with_gaps else [b""]
    base = synth.record(0, 0.0, rng, reasoning=800, answer=200, with_gaps=False)
    out = []
    for i in range(n):
        t = i / rate
        out.append(
            replace(
                base,
                rid=i,
                t_scheduled=t,
                t_dispatch=t,
                t_sent=t,
                t_first_token=t + 0.08,
                t_first_reasoning=t + 0.08,
                t_reasoning_end=t + 20.0,
                t_first_visible=t + 20.02,
                t_done=t + 25.0,
                prompt_tokens=rng.randint(50, 500),
                gaps=rng.choice(pool),
            )
        )
    return out


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------------------------------ ingest


def _ingest_stream(n_requests: int) -> tuple[list[object], int, int]:
    rng = random.Random(1)
    reqs = make_requests(n_requests, rng, with_gaps=True, rate=200.0)
    stream: list[object] = []
    next_scrape = 0.0
    i = 0
    for r in reqs:
        stream += live_events(r)
        while r.t_sent is not None and next_scrape <= r.t_sent:
            stream.append(synth.scrape(next_scrape, i, engines=2))
            next_scrape += 0.25
            i += 1
    n_events = sum(1 for x in stream if isinstance(x, RequestEvent))
    return stream, n_events, i


def _ingest_once(stream: list[object], path: Path) -> tuple[float, float, Recorder]:
    rec = Recorder(path, synth.info())
    t0 = time.perf_counter()
    for x in stream:
        rec.handle(x)  # type: ignore[arg-type]
    t_handed = time.perf_counter() - t0
    rec.flush(timeout=300)
    t_done = time.perf_counter() - t0
    rec.close(SessionState.DONE)
    return t_handed, t_done, rec


def bench_ingest(n_requests: int, tmp: Path) -> None:
    stream, n_events, n_scrapes = _ingest_stream(n_requests)
    t_handed, t_done, rec = _ingest_once(stream, tmp / "ingest.db")
    print(
        f"ingest: {n_events:,} request-events + {n_scrapes:,} scrapes ({n_requests:,} requests): "
        f"handle() {n_events / t_handed:,.0f} events/s on the caller; "
        f"committed {n_events / t_done:,.0f} request-events/s end to end ({t_done:.2f} s; target >= 50,000); "
        f"longest writer transaction {rec.max_flush_seconds * 1e3:.0f} ms   [load {load()}]"
    )


def bench_crc(n_requests: int, tmp: Path) -> None:
    stream, n_events, _ = _ingest_stream(n_requests)
    runs: dict[str, list[float]] = {"with": [], "without": []}
    real = (writer_module.row_crc, writer_module.scrape_crc)
    for k in range(3):
        for mode in ("with", "without"):
            if mode == "without":
                writer_module.row_crc = lambda *a: 0  # type: ignore[assignment]
                writer_module.scrape_crc = lambda *a: 0  # type: ignore[assignment]
            try:
                _, t_done, _ = _ingest_once(stream, tmp / f"crc-{mode}-{k}.db")
            finally:
                writer_module.row_crc, writer_module.scrape_crc = real
            runs[mode].append(t_done)
    w, wo = min(runs["with"]), min(runs["without"])
    print(
        f"crc: ingest of {n_events:,} request-events, best of 3: {w:.2f} s with checksums, {wo:.2f} s "
        f"without: checksums cost {(w - wo) / w * 100:.0f}% of the writer's time "
        f"({(w - wo) / n_requests * 1e6:.1f} us per request incl. its scrapes)   [load {load()}]"
    )


def bench_inflight(tmp: Path, n: int = 2000, hz: float = 4.0, seconds: float = 60.0) -> None:
    """2,000 requests in flight, PROGRESS at 4 Hz each, a commit every 0.5 s of session time."""
    rec = Recorder(tmp / "inflight.db", synth.info(), flush_interval=3600)  # commits only where we say
    base = RequestRecord(rid=0, cls="hard", t_scheduled=0.0, t_dispatch=0.0, t_start=0.0, t_sent=0.0)
    for i in range(n):
        rec.handle(RequestEvent(RequestKind.SENT, 0.0, i, "hard", record=replace(base, rid=i)))
    rec.flush()
    step = 1.0 / hz
    commit_every = 0.5
    t = 0.0
    handed = 0
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    next_commit = commit_every
    commits = []
    while t < seconds:
        t += step / n * 50  # spread each request's 4 Hz over the interval, 50 at a time
        k = int(t / step * n) % n
        for i in range(k, min(k + 50, n)):
            rec.handle(RequestEvent(RequestKind.PROGRESS, t, i, "hard", int(t * 40), 0))
            handed += 1
        if t >= next_commit:
            c0 = time.perf_counter()
            rec.flush()
            commits.append(time.perf_counter() - c0)
            next_commit += commit_every
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    rec.close(SessionState.DONE)
    with open_recording(tmp / "inflight.db") as r:
        assert len(r.requests()) == n
    print(
        f"inflight: {n:,} in flight at {hz:g} Hz for {seconds:g} s of session time: {handed:,} PROGRESS, "
        f"{len(commits)} commits of up to {n:,} row upserts; {wall:.2f} s wall, {cpu:.2f} s CPU "
        f"(= {cpu / seconds * 100:.1f}% of one core per session second); commit median "
        f"{statistics.median(commits) * 1e3:.1f} ms, max {max(commits) * 1e3:.1f} ms   [load {load()}]"
    )


# ------------------------------------------------------------------------------------------ stall


async def _stall_run(seconds: float, recorder: Recorder | None, rate: float) -> list[float]:
    rng = random.Random(2)
    reqs = make_requests(int(rate * seconds / 10) + 10, rng, with_gaps=True, rate=rate / 10)
    events = [e for r in reqs for e in live_events(r)]
    late: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            late.append(time.perf_counter() - t - 0.005)

    async def producer() -> None:
        per_tick = int(rate / 100)  # every 10 ms
        k = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for e in events[k : k + per_tick]:
                if recorder is not None:
                    recorder.handle(e)
            k += per_tick
            await asyncio.sleep(0.01)
        stop.set()

    await asyncio.gather(ticker(), producer())
    return late


def bench_stall(tmp: Path, seconds: float = 4.0, rate: float = 20_000.0) -> None:
    base = asyncio.run(_stall_run(seconds, None, rate))
    rec = Recorder(tmp / "stall.db", synth.info(), flush_interval=0.5)
    with_rec = asyncio.run(_stall_run(seconds, rec, rate))
    rec.close(SessionState.DONE)

    def q(xs: list[float], p: float) -> float:
        return statistics.quantiles(xs, n=1000)[int(p * 10) - 1] * 1e3 if len(xs) > 10 else float("nan")

    print(
        f"stall: ticker lateness at {rate:,.0f} request-events/s, without / with the recorder: "
        f"p50 {q(base, 50):.2f} / {q(with_rec, 50):.2f} ms, p99 {q(base, 99):.2f} / {q(with_rec, 99):.2f} ms, "
        f"max {max(base) * 1e3:.1f} / {max(with_rec) * 1e3:.1f} ms; "
        f"longest writer transaction {rec.max_flush_seconds * 1e3:.0f} ms   [load {load()}]"
    )


# ------------------------------------------------------------------------------------------ size


def bench_size(tmp: Path, n: int = 20_000) -> None:
    rng = random.Random(3)
    path = tmp / "size.db"
    rec = Recorder(path, synth.info())
    for r in make_requests(n, rng, with_gaps=False):
        rec.handle(synth.done_event(r))
    rec.close(SessionState.DONE)
    db = sqlite3.connect(path)
    pages, payload = db.execute(
        "SELECT sum(pgsize), sum(payload) FROM dbstat WHERE name = 'requests'"
    ).fetchone()
    db.close()
    print(f"size: {pages / n:.0f} B per request row without gaps (payload {payload / n:.0f} B), {n:,} rows")


# ------------------------------------------------------------------------------------------ open


def bench_open(tmp: Path, hours: float = 1.0, n_requests: int = 20_000) -> None:
    rng = random.Random(4)
    path = tmp / "hour.db"
    seconds = hours * 3600
    rec = Recorder(path, synth.info())
    t0 = time.perf_counter()
    reqs = make_requests(n_requests, rng, with_gaps=True, rate=n_requests / seconds)
    rec.handle(StateEvent(0.0, SessionState.RUNNING))
    k = 0
    n_scrapes = int(seconds * 4)
    for i in range(n_scrapes):
        t = i * 0.25
        rec.handle(synth.scrape(t, i, engines=2))
        while k < len(reqs) and (reqs[k].t_done or 0) <= t:
            rec.handle(synth.done_event(reqs[k]))
            k += 1
        if i % 4000 == 0:
            rec.flush(timeout=300)
    for r in reqs[k:]:
        rec.handle(synth.done_event(r))
    rec.close(SessionState.DONE)
    t_write = time.perf_counter() - t0
    size = path.stat().st_size
    print(
        f"open: wrote {hours:g} h ({n_scrapes:,} scrapes x 20 series + 4 histograms, {n_requests:,} requests "
        f"of 1,000 tokens) in {t_write:.1f} s: {size / 1e6:.1f} MB"
    )
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        opened = open_recording(path)
        _ = opened.duration, opened.status, opened.info
        _ = next(iter(opened.stream()))  # builds the replay index (lazy) and reads the first record
        times.append(time.perf_counter() - t0)
        opened.close()
    with open_recording(path) as recording:
        t0 = time.perf_counter()
        first = next(iter(recording.stream()))
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        mid = list(recording.stream(after=seconds / 2, until=seconds / 2 + 10))
        t_mid = time.perf_counter() - t0
        t0 = time.perf_counter()
        n_seek = sum(1 for _ in recording.stream(until=seconds / 2, progress_from=seconds / 2 - 60))
        t_seek = time.perf_counter() - t0
        t0 = time.perf_counter()
        all_reqs = recording.requests()
        t_reqs = time.perf_counter() - t0
        t0 = time.perf_counter()
        samples = recording.samples()
        t_samples = time.perf_counter() - t0
        t0 = time.perf_counter()
        cols = recording.request_columns(["ttft", "e2e", "reasoning_tokens", "status"])
        t_cols = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = recording.verify()
        t_verify = time.perf_counter() - t0
    assert first is not None and len(all_reqs) == n_requests and report.ok and len(cols["ttft"]) == n_requests
    print(
        f"open: open_recording + duration + replay index + first record: best {min(times) * 1e3:.0f} ms, "
        f"median {statistics.median(times) * 1e3:.0f} ms (target <= 1000 ms); first replay record "
        f"{t_first * 1e3:.0f} ms; 10 s of replay mid-session ({len(mid):,} records) {t_mid * 1e3:.0f} ms; "
        f"seek back to mid-session ({n_seek:,} records, PROGRESS for the last 60 s only) {t_seek:.2f} s; "
        f"requests() {t_reqs:.2f} s; samples() {len(samples):,} in {t_samples:.2f} s; request_columns(4) "
        f"{t_cols:.2f} s; verify() {t_verify:.2f} s ({sum(report.rows.values()):,} rows)   [load {load()}]"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--only",
        default="ingest,crc,stall,size,inflight,open",
        help="comma-separated: ingest,crc,stall,size,inflight,open",
    )
    p.add_argument("--requests", type=int, default=20_000, help="requests in the ingest run")
    args = p.parse_args()
    which = set(args.only.split(","))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "ingest" in which:
            bench_ingest(args.requests, tmp)
        if "crc" in which:
            bench_crc(args.requests, tmp)
        if "stall" in which:
            bench_stall(tmp)
        if "size" in which:
            bench_size(tmp)
        if "inflight" in which:
            bench_inflight(tmp)
        if "open" in which:
            bench_open(tmp)


if __name__ == "__main__":
    main()
