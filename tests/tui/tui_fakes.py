"""Test doubles for the TUI tests (tests only): a session that publishes a scripted record stream on a
clock the test moves, and a replay source with the controls the app calls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from rllmtop.events import (
    LogEvent,
    MetricSample,
    Record,
    RequestEvent,
    RequestKind,
    RequestRecord,
    Scrape,
    SessionInfo,
    SessionState,
    StateEvent,
)

K = RequestKind


class ScriptedSession:
    """Publishes ``records`` (sorted by t) as the test calls :meth:`advance`; ``run()`` returns when the
    script is exhausted and :meth:`finish` was called, or when a forced stop was requested. ``stops``
    holds the ``force`` argument of every :meth:`stop` call (the API of ``Session.stop``)."""

    def __init__(self, records: Iterable[Record] = (), *, record_path: str | None = None) -> None:
        self.records = sorted(records, key=lambda r: getattr(r, "t", -1.0))
        self.info: SessionInfo | None = None
        self.state = SessionState.STARTING
        self.replay: FakeReplay | None = None
        self.record_path = record_path
        self.sinks: list[Callable[[Record], None]] = []
        self.t = 0.0
        self.stops: list[bool] = []
        self.planned_requests: int | None = None
        self.started = asyncio.Event()
        self._done = asyncio.Event()
        self._i = 0

    def add_sink(self, sink: Callable[[Record], None]) -> None:
        self.sinks.append(sink)

    def now(self) -> float:
        return self.t

    def publish(self, rec: Record) -> None:
        if isinstance(rec, SessionInfo):
            self.info = rec
        if isinstance(rec, StateEvent):
            self.state = rec.state
        for s in self.sinks:
            s(rec)

    def advance(self, t: float) -> None:
        """Move the clock to ``t`` and publish every scripted record up to it."""
        self.t = t
        while self._i < len(self.records) and getattr(self.records[self._i], "t", -1.0) <= t:
            self.publish(self.records[self._i])
            self._i += 1

    def finish(self) -> None:
        self._done.set()

    async def run(self) -> str:
        self.started.set()
        await self._done.wait()
        self.publish(StateEvent(self.t, SessionState.INTERRUPTED if self.stops else SessionState.DONE))
        return "outcome"

    def stop(self, force: bool = False) -> None:
        self.stops.append(force)
        if self.stopping == "forced":
            self._done.set()

    @property
    def stopping(self) -> str:
        """As ``Session.stopping``: a repeated stop, or a forced one, is forced."""
        n = 0
        for force in self.stops:
            n = max(n + 1, 2 if force else 1)
        return "" if n == 0 else "gentle" if n == 1 else "forced"


def request_life(
    rid: int,
    cls: str,
    t_sent: float,
    *,
    think: float = 2.0,
    answer: float = 1.0,
    reasoning: int = 200,
    answer_tokens: int = 40,
    difficulty: str = "easy",
) -> list[Record]:
    """SENT -> FIRST_TOKEN -> PROGRESS ... -> FIRST_VISIBLE -> PROGRESS ... -> DONE."""
    out: list[Record] = [RequestEvent(K.SENT, t_sent, rid, cls)]
    t_ft = t_sent + 0.1
    out.append(RequestEvent(K.FIRST_TOKEN, t_ft, rid, cls, 1, 0))
    steps = 4
    for i in range(1, steps + 1):
        out.append(RequestEvent(K.PROGRESS, t_ft + think * i / steps, rid, cls, reasoning * i // steps, 0))
    t_fv = t_ft + think + 0.05
    out.append(RequestEvent(K.FIRST_VISIBLE, t_fv, rid, cls, reasoning, 1))
    out.append(RequestEvent(K.PROGRESS, t_fv + answer / 2, rid, cls, reasoning, answer_tokens // 2))
    t_done = t_fv + answer
    rec = RequestRecord(
        rid=rid,
        cls=cls,
        difficulty=difficulty,
        t_scheduled=t_sent,
        t_dispatch=t_sent,
        t_sent=t_sent,
        t_first_token=t_ft,
        t_first_reasoning=t_ft,
        t_reasoning_end=t_ft + think,
        t_first_visible=t_fv,
        t_done=t_done,
        reasoning_tokens=reasoning,
        answer_tokens=answer_tokens,
        finish_reason="stop",
        correct=rid % 5 != 0,
    )
    out.append(RequestEvent(K.DONE, t_done, rid, cls, reasoning, answer_tokens, record=rec))
    return out


def scrapes(
    t_end: float, *, step: float = 0.25, kv: Callable[[float], float] = lambda t: min(1.0, t / 20)
) -> list[Record]:
    out: list[Record] = []
    n = int(t_end / step)
    for i in range(1, n + 1):
        t = i * step
        out.append(
            Scrape(
                t,
                0.003,
                True,
                samples=(
                    MetricSample(t, "kv_cache_usage", kv(t)),
                    MetricSample(t, "requests_running", float(i % 9)),
                    MetricSample(t, "requests_waiting", float(i % 4)),
                    MetricSample(t, "preemptions_total", float(i // 20)),
                    MetricSample(t, "generation_tokens_total", float(i * 150)),
                ),
            )
        )
    return out


def info(**kw: object) -> SessionInfo:
    base: dict[str, object] = dict(
        session_id="test",
        started_at=1_700_000_000.0,
        mode="live",
        scenario_name="scripted",
        engine_kind="sim",
        engine_version="0.1.0",
        model="sim-rllm-7b",
        extra=(("profile", "rllm-7b"),),
    )
    base.update(kw)
    return SessionInfo(**base)  # type: ignore[arg-type]


def engine_log(t: float, text: str, level: str = "info") -> LogEvent:
    return LogEvent(t, "engine", level, text)


class FakeReplay:
    """Replay controls as the app calls them; records every call."""

    def __init__(self, duration: float = 100.0) -> None:
        self.speed = 1.0
        self.position = 0.0
        self.duration = duration
        self.paused = False
        self.finished = False
        self.calls: list[tuple[str, float]] = []

    def now(self) -> float:
        return self.position

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def toggle_pause(self) -> None:
        self.paused = not self.paused
        self.calls.append(("toggle", 0.0))

    def step(self, seconds: float) -> None:
        self.position = min(self.duration, self.position + seconds)
        self.calls.append(("step", seconds))

    def seek(self, t: float) -> None:
        self.position = t
        self.calls.append(("seek", t))


class ScriptedReplaySession(ScriptedSession):
    def __init__(self, records: Iterable[Record] = (), duration: float = 100.0) -> None:
        super().__init__(records)
        self.fake_replay = FakeReplay(duration)
        self.replay = self.fake_replay

    def now(self) -> float:
        return self.fake_replay.position


def demo_script() -> list[Record]:
    """A small deterministic session: 40 requests of three classes over 30 s (one straggler, one error),
    4 Hz scrapes with the KV cache filling and a few preemptions, engine log lines."""
    from rllmtop.events import RequestStatus

    recs: list[Record] = [
        info(mode="live", scenario_name="demo", session_id="demo0001"),
        StateEvent(0.0, SessionState.STARTING),
        engine_log(0.05, "INFO rllmtop sim: profile rllm-7b"),
        engine_log(0.10, "INFO Starting rllmtop sim server on 127.0.0.1"),
        StateEvent(0.2, SessionState.RUNNING),
        *scrapes(30.0, kv=lambda t: min(1.0, 0.05 + t / 18)),
    ]
    classes = ("easy", "medium", "hard")
    for i in range(40):
        cls = classes[i % 3]
        think = (1.0, 2.5, 5.0)[i % 3] + (i % 4) * 0.3
        recs += request_life(
            i,
            cls,
            0.5 + i * 0.6,
            think=think,
            reasoning=int(300 * think),
            answer_tokens=30 + i,
            difficulty=cls,
        )
    recs += request_life(90, "hard", 2.0, think=26.0, reasoning=9000, difficulty="hard")  # the straggler
    failed = RequestRecord(
        rid=91, cls="easy", difficulty="easy", t_scheduled=5.0, t_dispatch=5.0, t_sent=5.0,
        status=RequestStatus.ERROR, http_status=500, error="HTTP 500 from the engine",
    )  # fmt: skip
    recs += [
        RequestEvent(K.SENT, 5.0, 91, "easy"),
        RequestEvent(K.FAILED, 5.3, 91, "easy", detail="HTTP 500 from the engine", record=failed),
    ]
    recs.append(LogEvent(12.0, "rllmtop", "warning", "scrape took 0.4 s"))
    recs.append(StateEvent(30.0, SessionState.DONE))
    return sorted(recs, key=lambda r: getattr(r, "t", -1.0))


def write_recording(path: str, records: list[Record] | None = None) -> None:
    """Record ``records`` (default :func:`demo_script`) with the real recorder."""
    from rllmtop.record.writer import Recorder

    recs = demo_script() if records is None else records
    first = recs[0]
    assert isinstance(first, SessionInfo)
    rec = Recorder(path, first)
    for r in recs[1:]:
        rec.handle(r)
    rec.close(SessionState.DONE)


def engine_url(k: int) -> str:
    return f"http://10.0.0.{k + 1}:8000"


def fleet_script(n_engines: int, seconds: float = 20.0, *, n_requests: int = 12) -> list[Record]:
    """A fleet of ``n_engines`` simulated engines scraped at 4 Hz (each tagged with its engine id, the last
    one pinned near a full KV cache and preempting), a few requests, the way a fleet session streams."""
    from rllmtop.events import EngineInfo

    ids = [engine_url(k) for k in range(n_engines)]
    engines = tuple(EngineInfo(i, url=i, kind="sim", version="0.1.0") for i in ids)
    recs: list[Record] = [
        info(session_id=f"fleet{n_engines}", scenario_name="fleet", engines=engines),
        StateEvent(0.0, SessionState.RUNNING),
    ]
    steps = int(seconds / 0.25)
    for i in range(1, steps + 1):
        t = i * 0.25
        for k, eid in enumerate(ids):
            hot = k == n_engines - 1
            kv = min(1.0, 0.3 + t / 10) if hot else 0.1 + 0.3 * k / max(1, n_engines)
            recs.append(
                Scrape(
                    t + k * 1e-4,
                    0.002,
                    True,
                    samples=(
                        MetricSample(t, "kv_cache_usage", kv),
                        MetricSample(t, "requests_running", float(2 + k % 3)),
                        MetricSample(t, "requests_waiting", float(6 if hot else k % 2)),
                        MetricSample(t, "preemptions_total", float(i // 8 if hot else 0)),
                        MetricSample(t, "generation_tokens_total", float(i * (100 + k))),
                    ),
                    engine_id=eid,
                )
            )
    for r in range(n_requests):
        recs += request_life(r, "math" if r % 2 else "mcq", 0.5 + r, think=2.0, reasoning=200)
    return sorted(recs, key=lambda x: getattr(x, "t", -1.0))
