"""The fleet on screen (issue 13, first step): a table of engines when there are two or more, the engine
charts for the fleet or for one engine (key e), from 2 engines at 80x24 up to 64 (the table scrolls)."""

from __future__ import annotations

import pytest
from tui_fakes import ScriptedSession, engine_url, fleet_script, info, scrapes
from tui_helpers import screen_text, until

from rllmtop.events import EngineInfo, MetricSample, Record, Scrape, SessionState, StateEvent
from rllmtop.tui.app import RllmtopApp, build_app
from rllmtop.tui.widgets.board import RequestBoard
from rllmtop.tui.widgets.chart import BrailleChart
from rllmtop.tui.widgets.fleet import FleetTable
from rllmtop.view import LiveView


def app_for(session: ScriptedSession) -> RllmtopApp:
    return build_app(session, view=LiveView(auto_summary=False, summary_interval=0), refresh=0.25)


async def advance(pilot, session: ScriptedSession, t: float) -> None:  # type: ignore[no-untyped-def]
    session.advance(t)
    app: RllmtopApp = pilot.app
    app._tick()
    await pilot.pause()


def inside(app: RllmtopApp, selector: str) -> bool:
    r = app.query_one(selector).region
    return r.width > 0 and r.height > 0 and r.bottom <= app.size.height and r.right <= app.size.width


async def test_two_engines_fit_80x24_and_e_focuses_one_engine() -> None:
    s = ScriptedSession(fleet_script(2, 20.0))
    app = app_for(s)
    async with app.run_test(size=(80, 24)) as pilot:
        await advance(pilot, s, 10.0)
        table = app.query_one(FleetTable)
        await until(pilot, lambda: len(table.engines) == 2, what="two fleet rows")
        await until(pilot, lambda: inside(app, "#fleet-box"), what="the fleet table laid out")
        # everything on the main page fits: charts, the fleet table (both rows), the board with rows
        for sel in ("#chart-kv", "#chart-rps", "#fleet-box", "#board-box"):
            assert inside(app, sel), sel
        board = app.query_one(RequestBoard)
        assert board.size.height >= 3
        text = screen_text(app)
        assert "10.0.0.1:8000" in text and "10.0.0.2:8000" in text and "up" in text
        assert "fleet · 2 engines · KV" in text  # the spread across engines
        assert "fleet of 2" in text  # header
        kv = app.query_one("#chart-kv", BrailleChart)
        assert kv.data is not None and kv.data.scope == "mean of 2"
        fleet_kv = kv.data.lines[0].series.last
        assert app.check_action("focus_engine", (1,))
        await pilot.press("e")
        await until(pilot, lambda: kv.data is not None and kv.data.scope == "10.0.0.1:8000", what="focus")
        assert kv.data.lines[0].series.last != fleet_kv  # the engine's own series
        assert app.snapshot is not None and app.snapshot.focus == engine_url(0)
        assert table.focus_id == engine_url(0)
        await pilot.press("e", "e")  # engine 2, then the fleet again
        await until(pilot, lambda: app.snapshot is not None and app.snapshot.focus is None, what="fleet")
        s.finish()


async def test_64_engines_scroll_and_the_focused_one_stays_in_view() -> None:
    s = ScriptedSession(fleet_script(64, 4.0, n_requests=4))
    app = app_for(s)
    async with app.run_test(size=(80, 24)) as pilot:
        await advance(pilot, s, 4.0)
        table = app.query_one(FleetTable)
        await until(pilot, lambda: len(table.engines) == 64, what="64 fleet rows")
        await until(pilot, lambda: inside(app, "#fleet-box"), what="the fleet table laid out")
        assert inside(app, "#board-box")
        assert table.size.height < 64  # it scrolls
        hot = table.engines[-1]
        assert hot.kv is not None and hot.kv > 0.6 and hot.waiting == 6  # the pinned engine
        for _ in range(40):
            await pilot.press("e")
        assert app.snapshot is not None and app.snapshot.focus == engine_url(39)
        await pilot.pause()
        assert table.scroll_y > 0
        assert "10.0.0.40:8000" in screen_text(app)  # the focused row is on screen
        kv = app.query_one("#chart-kv", BrailleChart)
        await until(pilot, lambda: kv.data is not None and kv.data.scope == "10.0.0.40:8000", what="focus")
        s.finish()


async def test_64_engines_on_a_big_terminal() -> None:
    s = ScriptedSession(fleet_script(64, 2.0, n_requests=2))
    app = app_for(s)
    async with app.run_test(size=(160, 48)) as pilot:
        await advance(pilot, s, 2.0)
        table = app.query_one(FleetTable)
        await until(pilot, lambda: len(table.engines) == 64, what="64 fleet rows")
        await until(pilot, lambda: inside(app, "#fleet-box"), what="the fleet table laid out")
        assert inside(app, "#board-box") and inside(app, "#asu-box")
        assert "fleet · 64 engines" in screen_text(app)
        s.finish()


async def test_one_engine_has_no_fleet_table_and_no_engine_key() -> None:
    s = ScriptedSession([info(), StateEvent(0.0, SessionState.RUNNING), *scrapes(5.0)])
    app = app_for(s)
    async with app.run_test(size=(80, 24)) as pilot:
        await advance(pilot, s, 5.0)
        assert not app.query_one("#fleet-box").display
        assert not app.check_action("focus_engine", (1,))
        assert "engine" not in screen_text(app).splitlines()[-1]  # the footer does not offer it
        await pilot.press("e")
        assert app.snapshot is not None and app.snapshot.focus is None
        s.finish()


def _scrape(t: float, eid: str, kv: float, *extra: MetricSample, ok: bool = True) -> Scrape:
    if not ok:
        return Scrape(t, 1.0, False, error=f"{eid}/metrics: connection refused", engine_id=eid)
    base = (
        MetricSample(t, "kv_cache_usage", kv),
        MetricSample(t, "requests_running", 2.0),
        MetricSample(t, "requests_waiting", 1.0),
    )
    return Scrape(t, 0.002, True, samples=(*base, *extra), engine_id=eid)


async def test_engines_appearing_mid_run_join_the_table_and_a_down_one_shows_down() -> None:
    """Prometheus discovery publishes SessionInfo.engines again with more engines (the same session)."""
    ids = [engine_url(k) for k in range(4)]
    engines = tuple(EngineInfo(i, url=i, kind="sim", version="0.1.0") for i in ids)
    recs: list[Record] = [info(session_id="grow", engines=engines[:2]), StateEvent(0.0, SessionState.RUNNING)]
    for i in range(1, 41):
        t = 0.25 * i
        for k in range(2 if t <= 5.0 else 4):
            recs.append(_scrape(t + k * 1e-4, ids[k], 0.2 * (k + 1), ok=not (k == 1 and t > 8.0)))
    s = ScriptedSession(recs)
    app = app_for(s)
    async with app.run_test(size=(100, 40)) as pilot:  # tall: 8 fleet rows
        await advance(pilot, s, 5.0)
        table = app.query_one(FleetTable)
        await until(pilot, lambda: len(table.engines) == 2, what="two engines")
        s.publish(info(session_id="grow", engines=engines))  # discovered two more
        await advance(pilot, s, 10.0)
        await until(pilot, lambda: len(table.engines) == 4, what="four engines")
        await until(pilot, lambda: inside(app, "#fleet-box"), what="the fleet table laid out")
        rows = {e.id: e for e in table.engines}
        assert rows[ids[1]].health == "down" and rows[ids[3]].health == "up"
        assert app.snapshot is not None and app.snapshot.waiting.last == 3  # the down one is left out
        text = screen_text(app)
        assert "fleet of 4" in text and "10.0.0.4:8000" in text and "down" in text
        assert "fleet · 4 engines" in text
        s.finish()


async def test_gpu_columns_and_the_capacity_weighted_kv_legend() -> None:
    ids = [engine_url(k) for k in range(2)]
    engines = tuple(EngineInfo(i, url=i, kind="vllm", version="0.11.0") for i in ids)
    recs: list[Record] = [info(session_id="gpu", engines=engines), StateEvent(0.0, SessionState.RUNNING)]
    for i in range(1, 21):
        t = 0.25 * i
        for k, eid in enumerate(ids):
            gpu = tuple(
                MetricSample(t, name, value, (("gpu", str(g)),))
                for g in range(2)
                for name, value in (
                    ("gpu_util_percent", 50.0 + 40 * k),
                    ("gpu_fb_used_mib", 30_720.0),
                    ("gpu_power_watts", 250.0),
                )
            )
            cap = MetricSample(t, "kv_total_blocks", 1000.0 * (k + 1))
            recs.append(_scrape(t + k * 1e-4, eid, 0.3 + 0.6 * k, cap, *gpu))
    s = ScriptedSession(recs)
    app = app_for(s)
    async with app.run_test(size=(100, 30)) as pilot:
        await advance(pilot, s, 5.0)
        table = app.query_one(FleetTable)
        await until(pilot, lambda: len(table.engines) == 2 and table.show_gpu, what="GPU telemetry")
        await until(pilot, lambda: inside(app, "#fleet-box"), what="the fleet table laid out")
        text = screen_text(app)
        assert "GPU mem" in text and "90%" in text and "60G" in text and "500W" in text
        kv = app.query_one("#chart-kv", BrailleChart)
        assert kv.data is not None and kv.data.scope == "capacity-weighted of 2"
        assert kv.data.lines[0].series.last == pytest.approx(0.3 / 3 + 0.9 * 2 / 3)
        s.finish()
