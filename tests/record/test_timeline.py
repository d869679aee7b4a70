"""report/timeline.py: the per-request Gantt chart (PNG + SVG with hover titles) and who filled the cache."""

from __future__ import annotations

import json
import random
from pathlib import Path
from xml.etree import ElementTree

import pytest
from synth import info

from rllmtop.events import MetricSample, RequestRecord, RequestStatus, encode_gaps
from rllmtop.metrics.analysis import StragglerRule
from rllmtop.record.report import write_report
from rllmtop.record.report.run import RunData, derive
from rllmtop.record.report.timeline import ROWS_MAX, cache_table, run_moments, timeline_data, timeline_svg

SVG = "{http://www.w3.org/2000/svg}"


def _req(
    rid: int, start: float, rng: random.Random, *, stall: bool = False, failed: bool = False
) -> RequestRecord:
    r, a = rng.randint(20, 60), rng.randint(5, 15)
    gaps = [20_000] * (r + a - 1)
    if stall:
        gaps[r // 2] = 3_000_000  # a 3 s gap: > 10x the median and > 1 s
    t_ft = start + 0.2
    times = [t_ft]
    for g in gaps:
        times.append(times[-1] + g * 1e-6)
    return RequestRecord(
        rid=rid,
        cls=rng.choice(["easy", "hard"]),
        difficulty="medium",
        t_scheduled=start - 0.5,
        t_dispatch=start - 0.5,
        t_start=start,
        t_sent=start,
        t_first_token=t_ft,
        t_first_visible=times[r],
        t_done=times[-1],
        prompt_tokens=100,
        reasoning_tokens=r,
        answer_tokens=a,
        finish_reason=None if failed else "stop",
        status=RequestStatus.ERROR if failed else RequestStatus.OK,
        gaps=encode_gaps(gaps),
    )


def _run(n: int = 30, seed: int = 1) -> RunData:
    rng = random.Random(seed)
    reqs = [_req(i, 10.0 + i * 0.3, rng, stall=i == 3, failed=i == 5) for i in range(n)]
    end = max(r.t_done or 0 for r in reqs)
    samples = []
    t = 9.0
    k = 0
    while t <= end + 0.5:
        kv = 0.97 if 14 <= t <= 15 else 0.4
        samples += [
            MetricSample(t, "kv_cache_usage", kv),
            MetricSample(t, "requests_running", 4.0),
            MetricSample(t, "requests_waiting", 1.0),
            MetricSample(t, "preemptions_total", float(k // 40)),
        ]
        t += 0.25
        k += 1
    return RunData(label="tl", info=info(), requests=reqs, samples=samples, duration=end + 1)


def _derived(run: RunData):  # type: ignore[no-untyped-def]
    (d,), _, _ = derive([run], StragglerRule())
    return d


def test_svg_has_one_group_with_a_hover_title_per_request(tmp_path: Path) -> None:
    run = _run()
    td = timeline_data(_derived(run), "s, wall clock")
    size = timeline_svg(td, tmp_path / "t.svg", "Requests over time")
    root = ElementTree.parse(tmp_path / "t.svg").getroot()
    assert root.tag == f"{SVG}svg" and size == (tmp_path / "t.svg").stat().st_size
    groups = [g for g in root.iter(f"{SVG}g") if g.find(f"{SVG}title") is not None]
    assert len(groups) == len(run.requests)
    titles = [g.find(f"{SVG}title").text or "" for g in groups]  # type: ignore[union-attr]
    assert all(t.startswith("#") and "thinking" in t and "tokens" in t for t in titles)
    stalled = [t for t in titles if "likely preemption" in t]
    assert len(stalled) == 1 and stalled[0].startswith("#3 ") and "stalled 3.00s" in stalled[0]
    failed = next(t for t in titles if t.startswith("#5 "))
    assert "error" in failed
    assert any(r.get("class") == "f" for r in root.iter(f"{SVG}rect"))  # the failed end mark
    text = (tmp_path / "t.svg").read_text()
    assert "time since load start (s, wall clock)" in text


def test_times_are_since_load_start_on_the_runs_clock() -> None:
    run = _run()
    d = _derived(run)
    td = timeline_data(d, "simulated s")
    assert td.spans.t_queued.min() == pytest.approx(0.0)  # the first scheduled send is the load start
    last = max(r.t_done or 0 for r in run.requests) - d.t0
    assert last <= td.t_end <= last + 1.5  # the last request's end, or the engine's last reading


def test_many_requests_are_packed_into_lanes_that_never_overlap(tmp_path: Path) -> None:
    run = _run(n=ROWS_MAX + 100)
    td = timeline_data(_derived(run), "s, wall clock")
    assert td.packed and td.rows < len(run.requests)
    timeline_svg(td, tmp_path / "t.svg", "many")
    root = ElementTree.parse(tmp_path / "t.svg").getroot()
    assert sum(1 for g in root.iter(f"{SVG}g") if g.find(f"{SVG}title") is not None) == len(run.requests)


def test_report_has_the_timeline_and_who_filled_the_cache(tmp_path: Path) -> None:
    run = _run()
    index = write_report(run, tmp_path / "rep")
    out = index.parent
    assert (out / "request_timeline.png").stat().st_size > 10_000
    assert (out / "request_timeline.svg").is_file()
    data = json.loads((out / "asu.json").read_text())
    assert "request_timeline" in data["figures"]
    moments = data["cache_moments"]
    peak = next(m for m in moments if m["kind"] == "kv peak")
    assert 3.5 <= peak["t"] <= 6.0  # 14-15 s on the session clock, the load started at 9.5 s
    assert peak["holders"] and peak["holders"][0]["tokens"] >= peak["holders"][-1]["tokens"]
    md = (out / "asu.md").read_text()
    assert "## Who filled the cache" in md and "kv peak" in md
    assert "Who filled the cache" in index.read_text()


def test_cache_table_lists_the_top_holders_of_each_moment() -> None:
    d = _derived(_run())
    moments = run_moments(d)
    table = cache_table(moments, d.t0, "s, wall clock")
    assert table.head[0] == "t since load start (s, wall clock)"
    firsts = [row for row in table.rows if row[1]]
    assert len(firsts) == len(moments)
    assert sum(len(m.holders) or 1 for m in moments) == len(table.rows)
    assert all(row[6].startswith("#") for row in table.rows if row[6])
