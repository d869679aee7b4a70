"""record/sweep.py: reading sweep.json (every way it can be damaged), the sweep report from its levels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rllmtop.cli import main
from rllmtop.errors import UserError
from rllmtop.record.sweep import SCHEMA, SweepLevel, build_sweep_report, knee_of, read_sweep, write_sweep


def level(index: int, value: float, meets: bool, **kw: Any) -> dict[str, Any]:
    kw.setdefault("status", "done")
    d = SweepLevel(
        index=index,
        value=value,
        rate=value,
        concurrency=None,
        recording=f"level-{index:02d}-rate-{value:g}.db",  # never written: the report keeps these entries
        meets_slo=meets,
        missed=() if meets else ({"key": "ttfvt_p99", "value": 40.0, "limit": 30.0},),
        requests=40,
        ok=40,
        request_throughput=min(value, 6.0) * 0.98,
        output_tps=900 * min(value, 6.0),
        goodput_rps=min(value, 6.0) * (0.95 if meets else 0.5),
        ttfvt_p50=2.0 * value,
        ttfvt_p99=5.0 * value,
        e2e_p50=10.0 * value,
        e2e_p99=20.0 * value,
        kv_mean=min(0.1 * value, 0.9),
        kv_peak=min(0.15 * value, 1.0),
        preemptions=max(0.0, value - 5) * 10,
        slo_values={"ttfvt_p99": 5.0 * value},
        **kw,
    )
    return d.as_dict()


def sweep_doc(levels: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "kind": "rllmtop-sweep",
        "scenario": "default",
        "axis": "rate",
        "mode": "grid",
        "slo": {"ttfvt_p99": 30.0},
        "goodput": {"ttfvt": 30.0},
        "clock": "wall",
        "speed": 1.0,
        "status": "done",
        "levels": levels,
    }


def test_report_of_a_sweep_draws_every_level_and_marks_the_answer_and_knee(tmp_path: Path) -> None:
    levels = [level(1, 1, True), level(2, 2, True), level(3, 4, True), level(4, 8, False)]
    levels.append(
        level(5, 6, False, stopped_early=True, stop_reason="over-saturated: x", status="interrupted")
    )
    write_sweep(tmp_path, sweep_doc(levels))
    index = build_sweep_report(tmp_path)
    out = index.parent
    assert out == tmp_path / "report"
    for name in ("sweep_levels", "sweep_pareto"):
        assert (out / f"{name}.png").stat().st_size > 10_000 and (out / f"{name}.svg").is_file()
    rep = json.loads((out / "sweep-report.json").read_text())
    assert rep["answer"]["value"] == 4.0 and rep["answer"]["next_value"] == 6.0
    assert "was stopped early (over-saturated: x)" in rep["answer"]["line"]
    assert rep["knee"] == {"level": 3, "value": 4.0}
    md = (out / "sweep.md").read_text()
    assert rep["answer"]["line"] in md and "| 3 (answer, knee) |" in md and "stopped early" in md
    html = index.read_text()
    assert "sweep_levels.png" in html and "Kneedle" in html


def test_knee_prefers_goodput_and_falls_back_to_completed_requests() -> None:
    lv = [SweepLevel.from_dict(level(i + 1, v, True)) for i, v in enumerate([1, 2, 4, 8, 16])]
    k = knee_of(lv)
    assert k is not None and k.value == 8  # goodput rises to 6 by 8 req/s, then flat
    no_goodput = [
        SweepLevel.from_dict({**level(i + 1, v, True), "goodput_rps": None})
        for i, v in enumerate([1, 2, 4, 8, 16])
    ]
    assert knee_of(no_goodput) is not None


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "no sweep.json"),
        ("{not json", "not a readable sweep summary"),
        ('{"kind": "other"}', "not a sweep summary"),
        ('{"kind": "rllmtop-sweep", "schema": 99}', "schema 99"),
        ('{"kind": "rllmtop-sweep", "schema": 1, "axis": "speed", "levels": []}', "axis or levels"),
        (
            '{"kind": "rllmtop-sweep", "schema": 1, "axis": "rate", "levels": [], "slo": [1]}',
            "slo is not a table",
        ),
        (
            '{"kind": "rllmtop-sweep", "schema": 1, "axis": "rate", "levels": [{"index": "x"}]}',
            "level entry is damaged",
        ),
    ],
)
def test_a_damaged_sweep_summary_is_one_clear_error(tmp_path: Path, content: str | None, needle: str) -> None:
    if content is not None:
        (tmp_path / "sweep.json").write_text(content)
    with pytest.raises(UserError) as ei:
        if content is not None and "level" in needle:
            build_sweep_report(tmp_path)
        else:
            read_sweep(tmp_path)
    assert needle in ei.value.what and ei.value.hint


def test_report_command_on_a_damaged_sweep_directory_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "sweep.json").write_text('{"kind": "rllmtop-sweep", "schema": 7}')
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "sweep.json" in err and "Traceback" not in err


def test_sweep_json_is_replaced_atomically(tmp_path: Path) -> None:
    write_sweep(tmp_path, sweep_doc([level(1, 1, True)]))
    write_sweep(tmp_path, sweep_doc([level(1, 1, True), level(2, 2, False)]))
    assert len(read_sweep(tmp_path)["levels"]) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.json"]  # no temporary file left behind
