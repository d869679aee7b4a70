"""ReplaySource: the live stream shape, timing, speed, pause, step and seek, on a real recording."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import synth

from rllmtop.events import (
    LogEvent,
    Record,
    RequestEvent,
    RequestKind,
    Reset,
    Scrape,
    SessionInfo,
    SessionState,
    StateEvent,
)
from rllmtop.record.reader import Recording, open_recording
from rllmtop.record.rebuild import request_events
from rllmtop.record.replay import ReplaySource
from rllmtop.record.writer import Recorder


@pytest.fixture
def recording(tmp_path: Path) -> Iterator[Recording]:
    """4 s of session: states, a log line, 4 Hz scrapes, 30 requests (some overlapping)."""
    path = tmp_path / "r.db"
    rng = random.Random(11)
    rec = Recorder(path, synth.info())
    rec.handle(StateEvent(0.0, SessionState.STARTING))
    rec.handle(StateEvent(0.2, SessionState.RUNNING))
    for i in range(17):
        rec.handle(synth.scrape(i * 0.25, i))
    for i in range(30):
        r = synth.record(
            i, 0.1 + i * 0.1, rng, reasoning=rng.randint(5, 40), answer=rng.randint(1, 10), itl=0.01
        )
        rec.handle(synth.done_event(r))
    rec.handle(LogEvent(1.3, "engine", "info", "hello"))
    rec.handle(StateEvent(3.9, SessionState.DONE))
    rec.close(SessionState.DONE)
    with open_recording(path) as opened:
        yield opened


class Sink:
    def __init__(self) -> None:
        self.records: list[Record] = []
        self.when: list[float] = []
        self.t0 = time.monotonic()
        self.watch: tuple[float, asyncio.Event] | None = None

    def __call__(self, rec: Record) -> None:
        self.records.append(rec)
        self.when.append(time.monotonic() - self.t0)
        if self.watch and not isinstance(rec, SessionInfo | Reset) and rec.t >= self.watch[0]:
            self.watch[1].set()

    def timed(self) -> list[Record]:
        return [r for r in self.records if not isinstance(r, SessionInfo | Reset)]


async def start(src: ReplaySource) -> tuple[Sink, asyncio.Event, asyncio.Task[None]]:
    sink = Sink()
    stop = asyncio.Event()
    task = asyncio.create_task(src.run(sink, stop))
    await asyncio.sleep(0)  # let run() start (it publishes SessionInfo first)
    return sink, stop, task


async def test_full_replay_is_the_recorded_stream(recording: Recording) -> None:
    src = ReplaySource(recording, speed=64, exit_at_end=True)
    sink, _, task = await start(src)
    await asyncio.wait_for(task, 20)
    assert isinstance(sink.records[0], SessionInfo) and sink.records[0].mode == "replay"
    assert sink.records[0].session_id == recording.info.session_id
    body = sink.records[1:]
    assert body == list(recording.stream())
    assert [r.t for r in body] == sorted(r.t for r in body)  # type: ignore[union-attr]
    assert src.finished and src.position == pytest.approx(recording.duration)
    # the same shape as live: per request SENT, FIRST_TOKEN, ..., DONE with the final record
    done = [r for r in body if isinstance(r, RequestEvent) and r.kind is RequestKind.DONE]
    assert [d.record for d in sorted(done, key=lambda d: d.rid)] == recording.requests()
    for req in recording.requests():
        mine = [r for r in body if isinstance(r, RequestEvent) and r.rid == req.rid]
        assert mine == list(request_events(req))
    scrapes = [r for r in body if isinstance(r, Scrape)]
    assert scrapes == recording.scrapes(full=True) and scrapes[0].missing == ("sim_lag_seconds",)
    assert [r for r in body if isinstance(r, StateEvent)] == recording.states()


async def test_records_are_published_on_the_replay_clock(recording: Recording) -> None:
    speed = 4.0
    src = ReplaySource(recording, speed=speed, exit_at_end=True)
    sink, _, task = await start(src)
    await asyncio.wait_for(task, 30)
    timed = sink.timed()
    when = sink.when[-len(timed) :]
    # never early (beyond scheduling slop); lateness is the machine's load, bounded generously
    early = [r.t / speed - w for r, w in zip(timed, when, strict=True)]  # type: ignore[union-attr]
    assert max(early) < 0.05, max(early)
    assert sink.when[-1] < recording.duration / speed + 2.0
    assert sink.when[-1] > recording.duration / speed * 0.8


async def test_pause_step_and_seek_forward(recording: Recording) -> None:
    src = ReplaySource(recording)
    src.pause()
    sink, stop, task = await start(src)
    await src.settled()
    assert sink.timed() == list(recording.stream(until=0.0))
    assert src.paused and src.position == 0.0
    src.step(1.0)
    await src.settled()
    assert src.position == 1.0
    assert sink.timed() == list(recording.stream(until=1.0))
    src.seek(2.5)  # forwards: what lies between is published at once
    await src.settled()
    assert sink.timed() == list(recording.stream(until=2.5))
    assert not any(isinstance(r, Reset) for r in sink.records)
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_seek_backwards_resets_and_replays_up_to_the_target(recording: Recording) -> None:
    src = ReplaySource(recording)
    src.pause()
    sink, stop, task = await start(src)
    src.seek(3.0)
    await src.settled()
    n_before = len(sink.records)
    src.seek(1.2)
    await src.settled()
    after = sink.records[n_before:]
    assert after[0] == Reset(1.2) and isinstance(after[1], SessionInfo)
    assert after[2:] == list(recording.stream(until=1.2))
    assert src.position == 1.2
    src.step(-0.2)  # a negative step is a backward seek too
    await src.settled()
    k = max(i for i, r in enumerate(sink.records) if isinstance(r, Reset))
    assert sink.records[k] == Reset(1.0) and sink.records[k + 2 :] == list(recording.stream(until=1.0))
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_seek_is_clamped_and_finishes_at_the_end(recording: Recording) -> None:
    src = ReplaySource(recording)
    src.pause()
    sink, stop, task = await start(src)
    src.seek(1e9)
    await src.settled()
    assert src.position == recording.duration and src.finished
    assert sink.timed() == list(recording.stream())
    src.seek(-5)
    await src.settled()
    assert src.position == 0.0 and not src.finished
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_catch_up_bursts_yield_to_the_loop(recording: Recording) -> None:
    src = ReplaySource(recording, burst=10)
    src.pause()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    tick_task = asyncio.create_task(ticker())
    sink, stop, task = await start(src)
    src.seek(recording.duration)
    await src.settled()
    tick_task.cancel()
    n = len(sink.timed())
    assert n > 100 and ticks >= n // 10 - 1  # the loop ran between bursts
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_speed_is_clamped_and_resume_continues(recording: Recording) -> None:
    src = ReplaySource(recording, speed=1000)
    assert src.speed == 64
    src.speed = 0.01
    assert src.speed == 0.25
    src.speed = math.nan
    assert src.speed == 0.25
    src.speed = 64
    src.pause()
    sink, stop, task = await start(src)
    src.toggle_pause()
    assert not src.paused
    sink.watch = (recording.duration - 0.01, asyncio.Event())
    await asyncio.wait_for(sink.watch[1].wait(), 20)
    assert sink.timed()[-1] == list(recording.stream())[-1]
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_controls_from_another_thread(recording: Recording) -> None:
    src = ReplaySource(recording)
    src.pause()
    sink, stop, task = await start(src)
    await asyncio.to_thread(src.seek, 2.0)
    await src.settled()
    assert sink.timed() == list(recording.stream(until=2.0))
    await asyncio.to_thread(src.seek, 0.5)
    await src.settled()
    assert Reset(0.5) in sink.records
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_stop_ends_the_run(recording: Recording) -> None:
    src = ReplaySource(recording, speed=0.25)
    _, stop, task = await start(src)
    stop.set()
    await asyncio.wait_for(task, 2)


async def test_the_replay_clock(recording: Recording) -> None:
    src = ReplaySource(recording)
    src.pause()
    src.seek(1.5)
    assert src.clock.now() == 1.5 == src.now()
    assert src.clock.started_at == recording.info.started_at
    assert src.clock.to_monotonic(2.0) == math.inf  # paused: never
    src.resume()
    ahead = src.clock.to_monotonic(2.0) - time.monotonic()
    assert 0.25 < ahead <= 0.5 + 1e-6  # 0.5 s of replay at 1x, minus however long this line took


async def test_an_empty_recording_replays_its_info_only(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    Recorder(path, synth.info()).close(SessionState.FAILED, "engine unreachable")
    src = ReplaySource(open_recording(path), exit_at_end=True)
    sink, _, task = await start(src)
    await asyncio.wait_for(task, 5)
    assert len(sink.records) == 1 and isinstance(sink.records[0], SessionInfo)
    assert src.finished and src.duration == 0.0


async def test_seeks_leave_out_old_progress_but_nothing_else(recording: Recording) -> None:
    src = ReplaySource(recording, catchup_detail=1.0)
    src.pause()
    sink, stop, task = await start(src)
    await src.settled()
    at_zero = len(sink.records)
    src.seek(3.0)  # far forwards: the stream restarts after what was published, without old PROGRESS
    await src.settled()
    forward = sink.records[at_zero:]
    assert forward == list(recording.stream(after=0.0, until=3.0, progress_from=2.0))
    full = list(recording.stream(after=0.0, until=3.0))
    lifecycle = [r for r in full if not (isinstance(r, RequestEvent) and r.kind is RequestKind.PROGRESS)]
    assert [r for r in forward if r in lifecycle] == lifecycle  # every non-PROGRESS record is there
    old = [r for r in forward if isinstance(r, RequestEvent) and r.kind is RequestKind.PROGRESS and r.t < 2.0]
    assert old == [] and any(isinstance(r, RequestEvent) and r.kind is RequestKind.PROGRESS for r in full)
    n = len(sink.records)
    src.seek(2.5)  # backwards: Reset, then everything up to 2.5 with PROGRESS only from 1.5
    await src.settled()
    back = sink.records[n:]
    assert back[0] == Reset(2.5) and back[2:] == list(recording.stream(until=2.5, progress_from=1.5))
    stop.set()
    await asyncio.wait_for(task, 5)


def test_progress_from_drops_only_early_progress() -> None:
    r = synth.record(1, 10.0, random.Random(3), reasoning=200, answer=50, itl=0.02)
    full = list(request_events(r))
    part = list(request_events(r, progress_from=12.0))
    keep = [e for e in full if e.kind is not RequestKind.PROGRESS]
    assert [e for e in part if e.kind is not RequestKind.PROGRESS] == keep
    prog = [e for e in part if e.kind is RequestKind.PROGRESS]
    assert prog and min(e.t for e in prog) >= 12.0
    assert {e.t for e in prog} <= {e.t for e in full if e.kind is RequestKind.PROGRESS} | {12.0}


async def test_a_session_replaying_counts_each_request_once(recording: Recording) -> None:
    """Rebuilt SENT events carry the starting record (status IN_FLIGHT), as live ones do: a consumer
    keeping final records must take only the ended ones (``kind in ENDED``)."""
    from rllmtop.session import Session, SessionPlan

    session = Session(SessionPlan(mode="replay", replay_path=recording.path, replay_speed=64))
    assert session.replay is not None
    session.replay.exit_at_end = True
    outcome = await asyncio.wait_for(session.run(), 30)
    assert outcome.requests == len(recording.requests()) == 30
