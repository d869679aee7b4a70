"""The per-request timeline page (key ``t``) and who filled the cache: driven by Pilot on a scripted
stream and on a real replay of a small recording; the view's part bounded."""

from __future__ import annotations

from pathlib import Path

from tui_fakes import ScriptedSession, info, request_life, write_recording
from tui_helpers import screen_text, until

from rllmtop.events import (
    MetricSample,
    Phase,
    Record,
    RequestEvent,
    RequestKind,
    RequestRecord,
    RequestStatus,
    Scrape,
    SessionState,
    StateEvent,
    encode_gaps,
)
from rllmtop.session import Session, SessionPlan
from rllmtop.tui.app import RllmtopApp, build_app
from rllmtop.tui.widgets.board import PHASE_STYLES
from rllmtop.tui.widgets.timeline import Timeline
from rllmtop.view import TIMELINE_ENDED, LiveView

K = RequestKind


def burst_scrapes(t_end: float, burst_at: float = 5.0, burst: int = 4) -> list[Record]:
    """4 Hz scrapes, KV climbing to 96% by 8 s then easing; ``burst`` preemptions at once at ``burst_at``."""
    out: list[Record] = []
    for i in range(1, int(t_end / 0.25) + 1):
        t = i * 0.25
        kv = min(0.96, t / 8) if t <= 8 else max(0.5, 0.96 - (t - 8) / 20)
        pre = float(burst if t >= burst_at else 0)
        out.append(
            Scrape(
                t,
                0.002,
                True,
                samples=(
                    MetricSample(t, "kv_cache_usage", kv),
                    MetricSample(t, "requests_running", 4.0),
                    MetricSample(t, "requests_waiting", 0.0),
                    MetricSample(t, "preemptions_total", pre),
                ),
            )
        )
    return out


def stream(rid: int, t_sent: float, until: float, cls: str = "math") -> list[Record]:
    """A request in flight that streams 40 reasoning tokens/s (a count every 0.25 s, as the runner sends
    them) until ``until``, then goes silent."""
    out: list[Record] = [
        RequestEvent(K.SENT, t_sent, rid, cls),
        RequestEvent(K.FIRST_TOKEN, t_sent + 0.1, rid, cls, 1, 0),
    ]
    t, n = t_sent + 0.1, 1
    while t + 0.25 <= until:
        t += 0.25
        n += 10
        out.append(RequestEvent(K.PROGRESS, t, rid, cls, n, 0))
    return out


def ended_with_stall(rid: int, t_sent: float) -> list[Record]:
    """A request whose chunk times (its gap blob) hold one 4 s gap among 20 ms ones: a likely preemption
    the report's rule finds once it ended."""
    gaps = [20_000] * 30 + [4_000_000] + [20_000] * 30
    t_ft = t_sent + 0.1
    t_done = t_ft + sum(gaps) / 1e6
    rec = RequestRecord(
        rid=rid,
        cls="math",
        difficulty="hard",
        t_scheduled=t_sent,
        t_dispatch=t_sent,
        t_sent=t_sent,
        t_first_token=t_ft,
        t_first_visible=t_ft + 1.0,
        t_done=t_done,
        reasoning_tokens=40,
        answer_tokens=22,
        prompt_tokens=900,
        finish_reason="stop",
        gaps=encode_gaps(gaps),
    )
    return [
        RequestEvent(K.SENT, t_sent, rid, "math"),
        RequestEvent(K.FIRST_TOKEN, t_ft, rid, "math", 1, 0),
        RequestEvent(K.DONE, t_done, rid, "math", 40, 22, record=rec),
    ]


def script() -> list[Record]:
    recs: list[Record] = [info(), StateEvent(0.0, SessionState.RUNNING), *burst_scrapes(40.0)]
    for i in range(6):  # ordinary requests: 2 s thinking, 1 s answering
        recs += request_life(i, "chat", 0.5 * i, think=2.0, reasoning=200 + 100 * i)
    recs += stream(7, 0.2, until=40.0, cls="chat")  # the big one: in flight, never silent
    recs += stream(50, 1.0, until=4.0)  # silent from 4 s
    recs += ended_with_stall(60, 0.5)
    failed = RequestRecord(
        rid=70, cls="chat", difficulty="", t_scheduled=2.0, t_dispatch=2.0, t_sent=2.0,
        status=RequestStatus.ERROR, error="HTTP 500",
    )  # fmt: skip
    recs += [RequestEvent(K.SENT, 2.0, 70, "chat"), RequestEvent(K.FAILED, 2.6, 70, "chat", record=failed)]
    return recs


def app_for(session: ScriptedSession | Session) -> RllmtopApp:
    return build_app(session, view=LiveView(auto_summary=False, summary_interval=0), refresh=0.25)


async def play(pilot, session: ScriptedSession, t_end: float, step: float = 0.25) -> None:  # type: ignore[no-untyped-def]
    t = session.t
    while t < t_end:
        t = min(t_end, t + step)
        session.advance(t)
        await pilot.pause()
    app: RllmtopApp = pilot.app
    ticks = app.ticks
    await until(pilot, lambda: app.ticks > ticks, what="a refresh")


def colours(tl: Timeline) -> set[str]:
    """The colour names of every cell the timeline drew (foreground and background)."""
    out = set()
    for strip in tl._strips:
        for seg in strip:
            if seg.style is not None:
                for c in (seg.style.color, seg.style.bgcolor):
                    if c is not None:
                        out.add(c.name)
    return out


async def test_t_toggles_the_timeline_with_phases_stalls_and_holders() -> None:
    s = ScriptedSession(script())
    app = app_for(s)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, s.started.is_set, what="session.run() started")
        tl = app.query_one(Timeline)
        board_box = app.query_one("#board-box")
        await play(pilot, s, 3.0)
        assert not tl.display and board_box.display
        assert tl.data is None  # hidden: never asked the view for rows
        assert "t timeline" in screen_text(app)  # the key is in the footer
        await pilot.press("t")
        assert tl.display and not board_box.display
        await play(pilot, s, 9.0)
        d = tl.data
        assert d is not None
        rows = {int(r): k for k, r in enumerate(d.spans.rid)}
        assert {0, 5, 7, 50, 60, 70} <= set(rows)  # ended ones in the window and those in flight
        assert d.phase[rows[7]] is Phase.THINKING and d.phase[rows[0]] is Phase.DONE
        assert list(d.spans.rid) == sorted(d.spans.rid, key=lambda r: float(d.spans.t_queued[rows[int(r)]]))
        # the silent request is stalling now; the ended one's 4 s gap is found from its chunk times
        assert d.stalling[rows[50]] and not d.stalling[rows[7]]
        stalls = {
            (int(r), round(a, 2), round(b, 2))
            for r, a, b in zip(d.spans.stall_row, d.spans.stall_t0, d.spans.stall_t1, strict=True)
        }
        assert (rows[60], 1.2, 5.2) in stalls
        assert (rows[50], 3.85, 9.0) in stalls  # its last count, to now
        text = "\n".join(tl.lines)
        assert "╳" in text and "KV " in text and "now" in text
        assert d.phase[rows[70]] is Phase.FAILED and d.spans.status[rows[70]] == 1 and "✗" in text
        # phases coloured as the board colours them
        seen = colours(tl)
        for p in (Phase.THINKING, Phase.ANSWERING, Phase.DONE):
            assert PHASE_STYLES[p] in seen, p
        # who holds the cache now: the big one first (most tokens); the stalled one last, not counted
        now = d.now.moment
        assert now.kind == "now" and now.holders[0].rid == 7
        assert now.holders[-1].rid == 50 and now.holders[-1].stalled
        assert now.held_tokens == sum(h.tokens for h in now.holders if not h.stalled)
        assert "KV now · " in text and "stalled" in text
        # the moments: the preemption burst at 5 s and the KV peak (96%), with their holders then
        kinds = {m.moment.kind: m.moment for m in d.moments}
        assert kinds["preemptions"].t == 5.0 and kinds["preemptions"].preemptions == 4
        assert {h.rid for h in kinds["preemptions"].holders} >= {7, 50}
        assert kinds["kv peak"].kv == 0.96 and kinds["kv peak"].t == 7.75  # its first reading at 96%
        assert "4 preemptions · " in text and "KV peak 96% · " in text
        await pilot.press("t")
        assert not tl.display and board_box.display
        await pilot.press("question_mark")  # the key is in the help
        assert "the request board <-> the per-request timeline" in screen_text(app)


async def test_timeline_at_80x24_and_on_the_analysis_page() -> None:
    s = ScriptedSession(script())
    app = app_for(s)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, s.started.is_set, what="session.run() started")
        await play(pilot, s, 6.0)
        await pilot.press("2")  # the analysis page; t brings the main page back with the timeline
        await pilot.press("t")
        await play(pilot, s, 7.0)
        tl = app.query_one(Timeline)
        assert app.page == 1 and tl.display
        d = tl.data
        assert d is not None and len(d.spans) >= 1
        width, height = tl.size
        assert len(tl.lines) <= height and all(len(line) <= width for line in tl.lines)
        text = "\n".join(tl.lines)
        assert "KV now · " in text and str(int(d.spans.rid[0])) in text
        assert "timeline" in screen_text(app)


async def test_timeline_in_a_replay_and_after_seeking_back(tmp_path: Path) -> None:
    path = tmp_path / "demo.db"
    write_recording(str(path))
    session = Session(SessionPlan(mode="replay", replay_path=path))
    app = build_app(session, view=LiveView(summary_interval=0))
    async with app.run_test(size=(160, 48)) as pilot:
        replay = app.replay
        assert replay is not None
        await until(pilot, lambda: app.snapshot is not None, what="a first snapshot")
        replay.pause()
        replay.seek(20.0)
        await pilot.pause()
        await replay.settled()  # type: ignore[attr-defined]
        await pilot.press("t")
        app._tick()
        tl = app.query_one(Timeline)
        d = tl.data
        assert d is not None and d.t == 20.0
        rids = {int(r) for r in d.spans.rid}
        assert 90 in rids  # the straggler (2 s .. ~28 s), in flight at 20 s
        assert d.phase[list(d.spans.rid).index(90)] is Phase.THINKING
        assert d.ended > 0 and d.now.moment.holders[0].rid == 90
        assert any(m.moment.kind == "kv peak" for m in d.moments)  # KV reached 100% in the demo
        replay.seek(4.0)  # backwards: a Reset, the view starts over
        await pilot.pause()
        await replay.settled()  # type: ignore[attr-defined]
        app._tick()
        d = tl.data
        assert d is not None and d.t == 4.0 and 90 in {int(r) for r in d.spans.rid}
        assert all(float(e) <= 4.0 + 1e-9 for e in d.spans.t_end)


def test_the_view_keeps_the_timeline_bounded() -> None:
    v = LiveView()
    n = 3 * TIMELINE_ENDED
    for i in range(n):  # many ended requests
        for r in request_life(i, "chat", i * 0.01, think=0.2, answer=0.1, reasoning=20):
            v.handle(r)
    for j in range(400):  # and many in flight
        v.handle(RequestEvent(K.SENT, 10.0 + j * 0.01, 10_000 + j, "chat"))
    assert len(v._tl_ended) == TIMELINE_ENDED
    d = v.timeline(20.0, 12, t0=0.0)
    assert len(d.spans) == 12 and d.in_flight == 400 and d.ended == TIMELINE_ENDED
    shown = [int(r) for r in d.spans.rid]
    # the longest in flight (the first sent), and a quarter of the rows for the newest ended
    assert shown[-9:] == list(range(10_000, 10_009))
    assert set(shown[:3]) == {n - 1, n - 2, n - 3}
    assert v.timeline(20.0, 0).spans.rid.size == 0


def test_timeline_snapshot(snap_compare, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The timeline page of the demo recording paused at 20 s, 100x30 (holders beside the rows)."""
    path = tmp_path / "demo.db"
    write_recording(str(path))
    app = build_app(Session(SessionPlan(mode="replay", replay_path=path)), view=LiveView(summary_interval=0))

    async def run_before(pilot) -> None:  # type: ignore[no-untyped-def]
        replay = pilot.app.replay
        replay.pause()
        replay.seek(20.0)
        await pilot.pause()
        await replay.settled()
        await pilot.press("t")
        pilot.app._tick()
        await pilot.pause()

    assert snap_compare(app, terminal_size=(100, 30), run_before=run_before)


def _feed(v: LiveView, recs: list[Record]) -> None:
    for r in recs:
        v.handle(r)


def test_live_stalls_need_silence_not_just_missing_counts() -> None:
    """A gap between two counts is a likely preemption only when the request gained fewer tokens in it
    than its pace would have made: a replay catching up after a seek leaves counts out, not tokens; in a
    time-lapse run counts arrive once per progress tick of session time (0.25 s x speed)."""
    v = LiveView()
    v.handle(info())
    silent = stream(1, 0.0, until=3.0)  # 40 tok/s, then silent 3 s .. 8 s, then 40 tok/s again
    last = silent[-1]
    assert isinstance(last, RequestEvent)
    n = last.reasoning_tokens
    silent += [RequestEvent(K.PROGRESS, 8.0 + 0.25 * k, 1, "math", n + 10 * k, 0) for k in range(1, 5)]
    skipped = stream(2, 0.0, until=3.0)  # the same pace; counts missing from 3 s to 8 s
    skipped += [RequestEvent(K.PROGRESS, 8.0 + 0.25 * k, 2, "math", n + 200 + 10 * k, 0) for k in range(1, 5)]
    _feed(v, sorted(silent + skipped, key=lambda r: getattr(r, "t", 0.0)))
    d = v.timeline(9.0, 10, t0=0.0)
    rows = {int(r): k for k, r in enumerate(d.spans.rid)}
    stalls = {
        (int(r), round(a, 2), round(b, 2))
        for r, a, b in zip(d.spans.stall_row, d.spans.stall_t0, d.spans.stall_t1, strict=True)
    }
    assert stalls == {(rows[1], 2.85, 8.25)}
    assert not d.stalling.any()
    # a time-lapse run at x10: counts every 2.5 session seconds are not stalls
    lapse = LiveView()
    lapse.handle(info(clock="simulated", speed=10.0))
    recs: list[Record] = [
        RequestEvent(K.SENT, 0.0, 3, "math"),
        RequestEvent(K.FIRST_TOKEN, 0.1, 3, "math", 1, 0),
    ]
    recs += [RequestEvent(K.PROGRESS, 2.5 * k, 3, "math", 1 + 100 * k, 0) for k in range(1, 6)]
    _feed(lapse, recs)
    d = lapse.timeline(14.0, 5, t0=0.0)
    assert d.spans.stall_row.size == 0 and not d.stalling.any()
    d = lapse.timeline(17.0, 5, t0=0.0)  # 4.5 s without a count: more than a tick (2.5 s) past 1 s
    assert d.stalling.all()
