"""sweep.py: load levels, the search, sweep.json after every level, the early stop, the one-line answer.

The simulator tests hold whether the session runs on the wall clock or on the simulated clock (time-lapse):
rates, SLOs and windows are chosen in simulated units and converted to session units (``_units``), so the
experiment (and the wall time it costs) is the same either way.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from rllmtop import fmt
from rllmtop import sweep as S
from rllmtop.errors import UserError
from rllmtop.events import LogEvent, MetricSample, Scrape, SessionState, StateEvent
from rllmtop.metrics.analysis import SaturationRule, asu_summary, check_slos, saturation_scan
from rllmtop.record.sweep import SweepLevel, read_sweep, sweep_answer
from rllmtop.scenario import EngineSpec, load_scenario

SPEED = 5.0
SCENARIO = """name = "swtest"
seed = 3
scrape_interval = 0.1
[engine]
kind = "sim"
profile = "rllm-7b"
speed = {speed}
num_gpu_blocks_override = 40
max_model_len = 512
[arrival]
process = "poisson"
rate = 1
[load]
{load}
grace_period = 5
[[classes]]
name = "easy"
prompts = "math-easy"
max_tokens = 64
thinking = false
"""


def write(tmp_path: Path, load: str = "num_prompts = 24", name: str = "sw.toml") -> Path:
    p = tmp_path / name
    p.write_text(SCENARIO.format(speed=SPEED, load=load), encoding="utf-8")
    return p


def _units() -> tuple[float, float]:
    """(session req/s per simulated req/s, session seconds per simulated second) for a simulator at SPEED:
    (1, 1) when the session runs on the simulated clock, (SPEED, 1/SPEED) on the wall clock."""
    from rllmtop.session import Session, SessionPlan

    lapse = Session(SessionPlan(mode="headless", engine=EngineSpec(kind="sim", speed=SPEED))).clock.speed != 1
    return (1.0, 1.0) if lapse else (SPEED, 1 / SPEED)


def lvl(index: int, value: float, meets: bool, **kw: Any) -> SweepLevel:
    base: dict[str, Any] = {
        "index": index,
        "value": value,
        "rate": value,
        "concurrency": None,
        "status": "done",
        "recording": f"level-{index:02d}.db",
        "meets_slo": meets,
        "missed": () if meets else ({"key": "ttfvt_p99", "value": 31.2, "limit": 30.0},),
        "requests": 10,
        "goodput_rps": value * 0.9,
        "ttfvt_p99": 20.0 if meets else 31.2,
        "slo_values": {"ttfvt_p99": 20.0 if meets else 31.2},
    }
    base.update(kw)
    return SweepLevel(**base)


# ------------------------------------------------------------------------------------------ levels


def test_parse_levels() -> None:
    assert S.parse_levels("1,2, 4,8", "--rates") == (1.0, 2.0, 4.0, 8.0)
    assert S.parse_levels("8,16", "--concurrencies", integer=True) == (8.0, 16.0)
    for bad, needle in (("", "at least one"), ("1,x", "not a number"), ("0", "positive"), ("inf", "finite"),
                        ("1,1", "twice"), ("2.5", "whole number")):  # fmt: skip
        with pytest.raises(UserError, match=needle):
            S.parse_levels(bad, "--concurrencies" if bad == "2.5" else "--rates", integer=bad == "2.5")
    with pytest.raises(UserError, match="more than"):
        S.parse_levels(",".join(str(i) for i in range(1, 70)), "--rates")


# ------------------------------------------------------------------------------------------ the search

SPEC = S.SweepSpec(axis="rate", max_levels=10, tolerance=0.1, slo={"ttfvt_p99": 30})


def test_search_brackets_by_doubling_then_bisects() -> None:
    assert S.next_level([], SPEC, 1.0) == (1.0, "")
    done = [lvl(1, 1, True), lvl(2, 2, True)]
    assert S.next_level(done, SPEC, 1.0)[0] == 4.0
    done.append(lvl(3, 4, False))
    assert S.next_level(done, SPEC, 1.0)[0] == 3.0
    done.append(lvl(4, 3, True))
    assert S.next_level(done, SPEC, 1.0)[0] == 3.5
    done.append(lvl(5, 3.5, False))
    assert S.next_level(done, SPEC, 1.0)[0] == 3.25
    done.append(lvl(6, 3.25, True))
    v, why = S.next_level(done, SPEC, 1.0)  # 3.25 met, 3.5 missed: within 10% of 3.25
    assert v is None and why.startswith("converged: 3.25 req/s met the SLOs and 3.5 req/s missed them")


def test_search_halves_while_nothing_meets_and_is_bounded() -> None:
    done = [lvl(1, 8, False)]
    assert S.next_level(done, SPEC, 8.0)[0] == 4.0
    spec = S.SweepSpec(axis="rate", max_levels=2, slo={"ttfvt_p99": 1})
    v, why = S.next_level([lvl(1, 8, False), lvl(2, 4, False)], spec, 8.0)
    assert v is None and "--max-levels 2" in why
    low = [lvl(i, 2.0**-i, False) for i in range(1, 10)]
    v, why = S.next_level(low, S.SweepSpec(max_levels=64, slo={"x": 1}), 1.0)
    assert v is None and "no level met the SLOs" in why


def test_concurrency_search_works_on_whole_numbers() -> None:
    spec = S.SweepSpec(axis="concurrency", max_levels=10, slo={"ttfvt_p99": 30})
    c = {"concurrency": 1, "rate": None}
    done = [lvl(1, 8, True, **c), lvl(2, 16, False, **c)]
    assert S.next_level(done, spec, 8)[0] == 12.0
    done += [lvl(3, 12, True, **c), lvl(4, 14, False, **c), lvl(5, 13, True, **c)]
    v, why = S.next_level(done, spec, 8)
    assert v is None and "13 met" in why and "14 missed" in why


def test_answer_is_the_highest_meeting_below_the_lowest_miss_and_notes_noise() -> None:
    levels = [lvl(1, 1, True), lvl(2, 2, True), lvl(3, 4, False), lvl(4, 8, True)]
    a = sweep_answer(levels, "rate")
    assert a.best is not None and a.best.value == 2 and a.next_up is not None and a.next_up.value == 4
    assert a.line.startswith(
        "highest rate meeting the SLOs: 2 req/s (goodput 1.80 req/s, TTFVT p99 20 s); next level 4 req/s missed "
        "ttfvt_p99 (31.2 s)"
    )
    assert "8 req/s met the SLOs again" in a.line
    none = sweep_answer([lvl(1, 1, False)], "rate")
    assert none.best is None and none.line.startswith(
        "no rate met the SLOs; the lowest level, 1 req/s, missed"
    )
    stopped = lvl(2, 4, False, stopped_early=True, stop_reason="over-saturated: x", status="interrupted")
    assert "was stopped early (over-saturated: x)" in sweep_answer([lvl(1, 2, True), stopped], "rate").line


# ------------------------------------------------------------------------------------------ the flow


def _fake_levels(results: Mapping[float, bool], crash_at: int | None = None, interrupt_at: int | None = None):  # type: ignore[no-untyped-def]
    seen: list[tuple[int, float, int]] = []

    def run_level(make, spec, overrides, index, value, total, slo, goodput, directory, api_key, progress):  # type: ignore[no-untyped-def]
        doc = json.loads((directory / "sweep.json").read_text())
        seen.append((index, value, len(doc["levels"])))  # what was on disk before this level
        sc = make(overrides)
        assert sc.arrival.rate == value or spec.axis == "concurrency"
        if crash_at == index:
            raise RuntimeError("the machine died")
        if interrupt_at == index:
            return lvl(index, value, False, status="interrupted"), 130
        return lvl(index, value, results[value]), 0

    return seen, run_level


def test_sweep_json_is_written_after_every_level_and_survives_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen, fake = _fake_levels({1.0: True, 2.0: True, 4.0: False}, crash_at=3)
    monkeypatch.setattr(S, "_run_level", fake)
    monkeypatch.setattr(S, "_clock_of", lambda path, doc: ("wall", 1.0))
    p = write(tmp_path)
    spec = S.SweepSpec(grid=(1.0, 2.0, 4.0), slo={"ttfvt_p99": 30}, report=False)
    with pytest.raises(RuntimeError):
        S.run_sweep(lambda o: load_scenario(str(p), o), spec, out_dir=tmp_path / "sw", out=io.StringIO(),
                    progress=io.StringIO())  # fmt: skip
    assert [s[2] for s in seen] == [0, 1, 2]  # each level found the ones before it on disk
    doc = read_sweep(tmp_path / "sw")
    assert doc["status"] == "running" and [d["value"] for d in doc["levels"]] == [1.0, 2.0]
    assert doc["answer"]["value"] == 2.0 and doc["slo"] == {"ttfvt_p99": 30}
    assert doc["goodput"] == {"ttfvt": 30}  # implied by the SLO


def test_interrupt_keeps_the_levels_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen, fake = _fake_levels({1.0: True}, interrupt_at=2)
    monkeypatch.setattr(S, "_run_level", fake)
    monkeypatch.setattr(S, "_clock_of", lambda path, doc: ("wall", 1.0))
    p = write(tmp_path)
    out = io.StringIO()
    spec = S.SweepSpec(grid=(1.0, 2.0, 4.0), slo={"ttfvt_p99": 30}, report=False)
    code = S.run_sweep(
        lambda o: load_scenario(str(p), o), spec, out_dir=tmp_path / "sw", out=out, progress=io.StringIO()
    )
    assert code == 130 and len(seen) == 2
    doc = read_sweep(tmp_path / "sw")
    assert doc["status"] == "interrupted" and "interrupted during level 2" in doc["detail"]
    assert "highest rate meeting the SLOs: 1 req/s" in out.getvalue()


def test_progress_says_level_i_of_n_and_the_answer_goes_to_stdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, fake = _fake_levels({1.0: True, 2.0: True, 4.0: True, 8.0: False, 6.0: True, 7.0: False})
    monkeypatch.setattr(S, "_run_level", fake)
    monkeypatch.setattr(S, "_clock_of", lambda path, doc: ("wall", 1.0))
    p = write(tmp_path)
    out, prog = io.StringIO(), io.StringIO()
    spec = S.SweepSpec(start=1.0, max_levels=6, tolerance=0.2, slo={"ttfvt_p99": 30}, report=False)
    code = S.run_sweep(
        lambda o: load_scenario(str(p), o), spec, out_dir=tmp_path / "sw", out=out, progress=prog
    )
    assert code == 0
    assert "level 3/<=6: rate 4 req/s:" in prog.getvalue()
    lines = out.getvalue().splitlines()
    assert any(
        x.startswith("highest rate meeting the SLOs: 6 req/s") and "next level 7 req/s" in x for x in lines
    )
    assert read_sweep(tmp_path / "sw")["answer"]["next_value"] == 7.0


def test_a_level_whose_scenario_is_out_of_bounds_ends_the_sweep_saying_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, fake = _fake_levels({1.0: True})
    monkeypatch.setattr(S, "_run_level", fake)
    monkeypatch.setattr(S, "_clock_of", lambda path, doc: ("wall", 1.0))
    p = write(tmp_path)

    def make(o: Mapping[str, Any]):  # type: ignore[no-untyped-def]
        if o.get("request_rate") == 2.0:
            raise UserError("too many requests planned", "lower it")
        return load_scenario(str(p), o)

    out = io.StringIO()
    spec = S.SweepSpec(grid=(1.0, 2.0), slo={"ttfvt_p99": 30}, report=False)
    assert S.run_sweep(make, spec, out_dir=tmp_path / "sw", out=out, progress=io.StringIO()) == 2
    doc = read_sweep(tmp_path / "sw")
    assert doc["status"] == "failed" and "level 2 (rate 2 req/s) could not run: too many" in doc["detail"]
    assert len(doc["levels"]) == 1 and "highest rate meeting the SLOs: 1 req/s" in out.getvalue()


def test_a_search_needs_an_slo_and_owns_the_rate(tmp_path: Path) -> None:
    p = write(tmp_path)
    with pytest.raises(UserError, match="needs an SLO"):
        S.run_sweep(
            lambda o: load_scenario(str(p), o), S.SweepSpec(), out_dir=tmp_path / "a", out=io.StringIO()
        )
    from rllmtop.cli import main

    assert main(["sweep", str(p), "--rates", "1,2", "--request-rate", "3", "--out", str(tmp_path / "b")]) == 2
    assert main(["sweep", str(p), "--search", "max-rate", "--slo", "ttfvt_p95=3"]) == 2
    assert main(["sweep", str(p), "--search", "max-rate", "--slo", "ttfvt_p99=3", "--tolerance", "0"]) == 2
    assert not (tmp_path / "b").exists()  # refused before anything ran


def test_concurrency_levels_are_a_closed_loop_when_the_scenario_counts_its_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    got: list[tuple[float, int | None]] = []

    def run_level(make, spec, overrides, index, value, *rest):  # type: ignore[no-untyped-def]
        sc = make(overrides)
        got.append((sc.arrival.rate, sc.load.max_concurrency))
        return lvl(index, value, True, concurrency=int(value), rate=None), 0

    monkeypatch.setattr(S, "_run_level", run_level)
    monkeypatch.setattr(S, "_clock_of", lambda path, doc: ("wall", 1.0))
    p = write(tmp_path)
    spec = S.SweepSpec(axis="concurrency", grid=(2.0, 4.0), report=False)
    S.run_sweep(
        lambda o: load_scenario(str(p), o),
        spec,
        out_dir=tmp_path / "a",
        out=io.StringIO(),
        progress=io.StringIO(),
    )
    assert got == [(math.inf, 2), (math.inf, 4)]
    got.clear()
    q = write(tmp_path, load="duration = 10", name="d.toml")  # no request count: its own arrivals, capped
    S.run_sweep(
        lambda o: load_scenario(str(q), o),
        spec,
        out_dir=tmp_path / "b",
        out=io.StringIO(),
        progress=io.StringIO(),
    )
    assert got == [(1.0, 2), (1.0, 4)]


def test_a_rate_sweep_needs_arrivals_with_a_rate(tmp_path: Path) -> None:
    p = tmp_path / "b.toml"
    p.write_text(SCENARIO.format(speed=SPEED, load="num_prompts = 8").replace(
        'process = "poisson"\nrate = 1', 'process = "burst"\nburst_size = 4'))  # fmt: skip
    with pytest.raises(UserError, match="a rate sweep sets the request rate") as ei:
        S.run_sweep(
            lambda o: load_scenario(str(p), o),
            S.SweepSpec(grid=(1.0,)),
            out_dir=tmp_path / "x",
            out=io.StringIO(),
        )
    assert "--concurrencies" in ei.value.hint and not (tmp_path / "x").exists()


def test_an_existing_sweep_directory_is_not_overwritten(tmp_path: Path) -> None:
    d = tmp_path / "sw"
    d.mkdir()
    (d / "level-01-rate-1.db").write_bytes(b"")
    p = write(tmp_path)
    with pytest.raises(UserError, match="already holds"):
        S.run_sweep(
            lambda o: load_scenario(str(p), o), S.SweepSpec(grid=(1.0,)), out_dir=d, out=io.StringIO()
        )


# ------------------------------------------------------------------------------------------ the early stop


class _FakeSession:
    def __init__(self) -> None:
        self.published: list[object] = []
        self.stops: list[tuple[bool, str]] = []

    def publish(self, rec: object) -> None:
        self.published.append(rec)

    def stop(self, force: bool = False, reason: str = "") -> None:
        self.stops.append((force, reason))


async def test_saturation_sink_stops_the_session_once_with_its_reason() -> None:
    import asyncio

    fake = _FakeSession()
    sink = S.SaturationStop(fake, SaturationRule(window=5.0, min_readings=8, min_growth=3))
    sink(StateEvent(0.0, SessionState.RUNNING))
    for i in range(60):
        t = i * 0.25
        sink(Scrape(t, 0.001, True, samples=(MetricSample(t, "kv_cache_usage", 0.99),
                                             MetricSample(t, "requests_waiting", float(i)))))  # fmt: skip
    await asyncio.sleep(0)
    assert sink.verdict is not None and sink.verdict.clause == "queue"
    assert len(fake.stops) == 1 and fake.stops[0][0] is True and fake.stops[0][1].startswith("over-saturated")
    logs = [r for r in fake.published if isinstance(r, LogEvent)]
    assert len(logs) == 1 and logs[0].level == "warning" and "stopping this load level early" in logs[0].text


@pytest.mark.parametrize("state", [None, SessionState.STARTING, SessionState.DRAINING])
async def test_saturation_sink_judges_only_while_the_load_is_sent(state: SessionState | None) -> None:
    fake = _FakeSession()
    sink = S.SaturationStop(fake, SaturationRule(window=5.0))
    if state is not None:
        sink(StateEvent(0.0, SessionState.RUNNING))
        sink(StateEvent(0.0, state))
    for i in range(60):
        t = i * 0.25
        sink(Scrape(t, 0.001, True, samples=(MetricSample(t, "kv_cache_usage", 0.99),
                                             MetricSample(t, "requests_waiting", float(i)))))  # fmt: skip
    assert sink.verdict is None and not fake.stops


# ------------------------------------------------------------------------------------------ on the simulator


def _read_back(directory: Path, doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each level's facts recomputed from its recording alone (not from sweep.json)."""
    from rllmtop.record.reader import open_recording

    out = []
    for d in doc["levels"]:
        with open_recording(directory / d["recording"]) as rec:
            reqs = rec.requests()
            prov = rec.info.provenance
            assert prov is not None
            rate = float(json.loads(dict(prov.overrides)["request_rate"]))
            s = asu_summary(reqs, goodput=doc["goodput"])
            missed = check_slos(s.overall, doc["slo"])
            ok = rec.status is SessionState.DONE and not missed and s.overall.requests > 0
            out.append({"index": d["index"], "rate": rate, "meets": ok, "summary": s, "status": rec.status})
    return out


def test_max_rate_search_on_the_default_profile_finds_the_edge_and_says_it_in_one_line(
    tmp_path: Path,
) -> None:
    """Done-when: a rate whose run meets the SLO while the next level up misses it, on rllm-7b; the one-line
    answer matches what the recordings say. Simulated units: start 4 req/s, TTFVT p99 <= 1 s (the engine
    serves ~5.7 req/s of these short requests, so 4 meets with room and twice that misses)."""
    rate_u, time_u = _units()
    p = write(tmp_path)
    out = io.StringIO()
    spec = S.SweepSpec(
        start=4.0 * rate_u, max_levels=5, tolerance=0.3, slo={"ttfvt_p99": 1.0 * time_u}, report=True
    )
    code = S.run_sweep(
        lambda o: load_scenario(str(p), o), spec, out_dir=tmp_path / "sw", out=out, progress=io.StringIO()
    )
    text = out.getvalue()
    directory = tmp_path / "sw"
    doc = read_sweep(directory)
    assert code == 0, text
    back = _read_back(directory, doc)
    by_index = {b["index"]: b for b in back}
    for d in doc["levels"]:
        assert d["meets_slo"] == by_index[d["index"]]["meets"], d
        assert d["rate"] == pytest.approx(by_index[d["index"]]["rate"])
    ans = doc["answer"]
    best = next(b for b in back if b["index"] == ans["level"])
    nxt = next(b for b in back if b["index"] == ans["next_level"])
    assert best["meets"] and not nxt["meets"]
    assert not [b for b in back if best["rate"] < b["rate"] < nxt["rate"]]  # adjacent among the levels run
    assert all(b["meets"] for b in back if b["rate"] < best["rate"])
    s, n = best["summary"].overall, nxt["summary"].overall
    line = (
        f"highest rate meeting the SLOs: {best['rate']:g} req/s (goodput {fmt.rate(s.goodput_rps)} req/s, "
        f"TTFVT p99 {s.ttfvt[99]:.3g} s); next level {nxt['rate']:g} req/s missed ttfvt_p99 ({n.ttfvt[99]:.3g} s)"
    )
    assert ans["line"].startswith(line) and line in text
    assert (directory / "report" / "index.html").is_file()
    for name in ("sweep_levels", "sweep_pareto"):
        assert (directory / "report" / f"{name}.png").stat().st_size > 10_000


def test_an_over_saturated_level_stops_early_and_says_why(tmp_path: Path) -> None:
    """20 simulated req/s against an engine serving ~5.7 for 60 simulated seconds: the waiting queue only
    grows with the cache full, so the level stops after about one window (10 simulated s), recorded."""
    from rllmtop.record.reader import open_recording

    rate_u, time_u = _units()
    p = write(tmp_path, load=f"duration = {60 * time_u:g}")
    rule = SaturationRule(window=10 * time_u)
    out = io.StringIO()
    spec = S.SweepSpec(grid=(20.0 * rate_u,), saturation=rule, report=False)
    code = S.run_sweep(
        lambda o: load_scenario(str(p), o), spec, out_dir=tmp_path / "sw", out=out, progress=io.StringIO()
    )
    assert code == 1, out.getvalue()
    doc = read_sweep(tmp_path / "sw")
    (d,) = doc["levels"]
    assert d["stopped_early"] and d["stop_reason"].startswith("over-saturated: the waiting queue grew")
    assert not d["meets_slo"] and d["status"] == "interrupted"
    assert "was stopped early (over-saturated: the waiting queue grew" in doc["answer"]["line"]
    with open_recording(tmp_path / "sw" / d["recording"]) as rec:
        assert rec.status is SessionState.INTERRUPTED and rec.status_detail == d["stop_reason"]
        assert any(
            lg.level == "warning" and "stopping this load level early: over-saturated" in lg.text
            for lg in rec.logs()
        )
        assert rec.duration < 30 * time_u  # stopped well before the 60 s of sending (plus draining)
        states = rec.states()
        sending = next(st.t for st in states if st.state is SessionState.RUNNING)
        stop_t = next(st.t for st in states if st.state is SessionState.INTERRUPTED)
        again = saturation_scan(
            rec.scrapes(full=True), rec.requests(), rule, offered_rate=d["rate"], sending=(sending, stop_t)
        )
        assert again.fired and again.clause == "queue"  # the recording, re-judged, gives the same verdict
        assert again.t <= stop_t


def test_report_of_a_sweep_directory_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rllmtop.cli import main

    rate_u, time_u = _units()
    p = write(tmp_path, load="num_prompts = 12")
    d = tmp_path / "sw"
    code = main(["sweep", str(p), "--rates", f"{2 * rate_u:g},{4 * rate_u:g}", "--slo", f"ttfvt_p99={time_u:g}",
                 "--out", str(d), "--no-report"])  # fmt: skip
    assert code in (0, 1)
    assert not (d / "report").exists()
    printed = capsys.readouterr().out
    assert "sweep summary:" in printed and ("highest rate meeting" in printed or "no rate met" in printed)
    assert main(["report", str(d), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "index.html").is_file() and (tmp_path / "rep" / "sweep.md").is_file()
    rep = json.loads((tmp_path / "rep" / "sweep-report.json").read_text())
    assert [x["index"] for x in rep["levels"]] == [1, 2]
    assert rep["answer"] == {k: v for k, v in read_sweep(d)["answer"].items()}
    assert math.isfinite(rep["levels"][0]["request_throughput"])
