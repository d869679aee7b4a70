"""The `vllm bench serve` flags where they mean something here: --ignore-eos, --ramp-up-*, --percentile-metrics,
--metric-percentiles, --save-result (key names and units as vLLM's), and --goodput reaching a run."""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from rllmtop import commands
from rllmtop.cli import build_parser, main
from rllmtop.errors import UserError
from rllmtop.events import RequestRecord, RequestStatus, SessionInfo, encode_gaps
from rllmtop.metrics.analysis import asu_summary
from rllmtop.scenario import load_scenario
from rllmtop.summary import (
    SummaryView,
    parse_metric_percentiles,
    parse_percentile_metrics,
    result_filename,
    result_json,
    text_table,
    write_result,
)

SCENARIO = """name = "flags"
seed = 3
[engine]
kind = "sim"
profile = "rllm-7b"
speed = 20
[arrival]
process = "poisson"
rate = 4
[load]
num_prompts = 6
[[classes]]
name = "easy"
prompts = "math-easy"
max_tokens = 200
"""


def scenario(tmp_path: Path) -> Path:
    p = tmp_path / "f.toml"
    p.write_text(SCENARIO, encoding="utf-8")
    return p


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


# ------------------------------------------------------------------------------------------ run controls


def test_ignore_eos_and_goodput_reach_the_runs_scenario(tmp_path: Path) -> None:
    p = str(scenario(tmp_path))
    a = args("run", p, "--ignore-eos", "--goodput", "ttfvt:30", "e2el:120")
    sc = commands._run_controls(load_scenario(p, commands._overrides(a)), a)
    assert sc.load.ignore_eos is True and dict(sc.goodput) == {"ttfvt": 30.0, "e2el": 120.0}
    plain = commands._run_controls(load_scenario(p), args("run", p))
    assert plain.load.ignore_eos is False and not plain.goodput
    # a run control, not the workload: provenance's workload is the same either way
    assert sc.provenance and plain.provenance and sc.provenance.workload == plain.provenance.workload


def test_ramp_up_flags_map_onto_the_arrival_table(tmp_path: Path) -> None:
    p = str(scenario(tmp_path))
    a = args("run", p, "--ramp-up-strategy", "linear", "--ramp-up-start-rps", "1", "--ramp-up-end-rate", "8")
    sc = load_scenario(p, commands._overrides(a))
    arr = sc.arrival
    assert (arr.ramp_up_strategy, arr.ramp_up_start_rate, arr.ramp_up_end_rate) == ("linear", 1.0, 8.0)
    assert arr.rate == 1.0 and not arr.rescale  # the file's single rate gave way to the ramp
    flags = dict(sc.provenance.override_flags) if sc.provenance else {}
    assert flags["ramp_up_strategy"] == "--ramp-up-strategy"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--ramp-up-strategy", "linear", "--ramp-up-start-rate", "1", "--ramp-up-end-rate", "4", "--request-rate", "3"],
         "both set the arrival rate"),
        (["--ramp-up-strategy", "sideways", "--ramp-up-start-rate", "1", "--ramp-up-end-rate", "4"], "sideways"),
        (["--ramp-up-start-rate", "1"], "ramp_up_strategy"),
        (["--ramp-up-strategy", "linear", "--ramp-up-start-rate", "4", "--ramp-up-end-rate", "1"], "below"),
    ],
)  # fmt: skip
def test_bad_ramp_ups_are_one_clear_error(tmp_path: Path, argv: list[str], needle: str) -> None:
    p = str(scenario(tmp_path))
    with pytest.raises(UserError) as ei:
        load_scenario(p, commands._overrides(args("run", p, *argv)))
    assert needle in ei.value.what + ei.value.hint


# ------------------------------------------------------------------------------------------ percentiles


def _recs(n: int = 200, seed: int = 2) -> list[RequestRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        start = i * 0.1
        gaps = [int(rng.uniform(5_000, 40_000)) for _ in range(29)]
        ft = start + rng.uniform(0.05, 2.0)
        vis = ft + sum(gaps[:20]) * 1e-6
        done = ft + sum(gaps) * 1e-6
        bad = i % 50 == 7
        out.append(
            RequestRecord(
                rid=i, cls="easy", t_scheduled=start, t_dispatch=start, t_start=start, t_sent=start,
                t_first_token=ft, t_first_visible=vis, t_done=done, prompt_tokens=100, reasoning_tokens=20,
                answer_tokens=10, status=RequestStatus.ERROR if bad else RequestStatus.OK,
                finish_reason=None if bad else "stop", gaps=encode_gaps(gaps),
            )
        )  # fmt: skip
    return out


def test_percentile_flags_parse_and_choose_the_columns() -> None:
    assert parse_percentile_metrics("ttft,ttfvt,e2el") == ("ttft", "ttfvt", "e2el")
    assert parse_metric_percentiles("25,50,99") == (25, 50, 99)
    for bad in ("", "ttft,foo", "ttft,ttft"):
        with pytest.raises(UserError):
            parse_percentile_metrics(bad)
    for bad in ("", "99.9", "101", "x", "50,50"):
        with pytest.raises(UserError):
            parse_metric_percentiles(bad)
    recs = _recs()
    view = SummaryView(("tpot", "ttfvt"), (25, 50, 99))
    s = view.summary(recs, asu_summary(recs))
    assert s is not None and 25 in s.overall.ttfvt
    table = text_table(s, view.columns(s))
    head = table.splitlines()[0]
    assert "TPOT p25/p50/p99" in head and "TTFVT p25/p50/p99" in head and "E2E p50/90/99" not in head
    default = text_table(s, SummaryView().columns(s)).splitlines()[0]
    assert "TTFT p50/90/99" in default and "E2E p50/90/99" in default  # the defaults are unchanged


# ------------------------------------------------------------------------------------------ --save-result


def test_save_result_uses_vllm_key_names_in_milliseconds() -> None:
    recs = _recs()
    info = SessionInfo("s1", 0.0, "headless", scenario_name="flags", model="org/rllm-7b", clock="wall")
    res = result_json(info, recs, goodput={"ttfvt": 1.5}, view=SummaryView((), (50, 99)))
    ok = [r for r in recs if r.status is RequestStatus.OK]
    assert res["completed"] == len(ok) and res["failed"] == len(recs) - len(ok)
    assert res["total_input_tokens"] == 100 * len(ok) and res["total_output_tokens"] == 30 * len(ok)
    span = max(r.t_done for r in recs if r.t_done) - min(r.t_start for r in recs if r.t_start is not None)  # type: ignore[type-var]
    assert res["duration"] == pytest.approx(span)
    assert res["request_throughput"] == pytest.approx(len(ok) / span)
    ttft = np.array([r.ttft for r in ok])
    assert res["mean_ttft_ms"] == pytest.approx(1000 * ttft.mean())
    assert res["median_ttft_ms"] == pytest.approx(1000 * np.median(ttft))
    assert res["std_ttft_ms"] == pytest.approx(1000 * ttft.std())
    assert res["p99_ttft_ms"] == pytest.approx(1000 * np.percentile(ttft, 99))
    gaps = np.concatenate([np.frombuffer(r.gaps[6:], dtype="<u4") * 1e-3 for r in ok])  # ms, pooled as vLLM
    assert res["p99_itl_ms"] == pytest.approx(np.percentile(gaps, 99))
    tpot = np.array([(r.t_done - r.t_first_token) / 29 for r in ok])  # type: ignore[operator]
    assert res["mean_tpot_ms"] == pytest.approx(1000 * tpot.mean(), rel=1e-6)
    good = sum(1 for r in ok if (r.ttfvt or math.inf) <= 1.5)
    assert res["request_goodput"] == pytest.approx(good / span) and res["good"] == good
    assert res["p99_ttfvt_ms"] == pytest.approx(1000 * np.percentile([r.ttfvt for r in ok], 99))
    assert res["total_reasoning_tokens"] == 20 * len(ok) and res["total_answer_tokens"] == 10 * len(ok)
    assert res["max_concurrent_requests"] >= 1 and res["max_output_tokens_per_s"] > 0
    assert "p90_ttft_ms" not in res and res["clock"] == "wall"
    json.dumps(res, allow_nan=False)  # strict JSON
    name = result_filename(res)
    assert name.startswith("rllmtop-") and name.endswith(".json") and "rllm-7b" in name and "/" not in name


def test_percentile_metrics_choose_the_saved_metrics_too() -> None:
    res = result_json(None, _recs(), view=SummaryView(("e2el",), (25,)))
    assert "p25_e2el_ms" in res and "mean_ttft_ms" not in res and res["request_goodput"] is None


def test_write_result_names_an_unwritable_directory(tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("")
    with pytest.raises(UserError, match="cannot write the result file"):
        write_result({"a": 1}, f, "x.json")
    p = write_result({"a": 1}, tmp_path / "new", "x.json")
    assert json.loads(p.read_text()) == {"a": 1}


def test_run_headless_save_result_matches_the_recording(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rllmtop.record.reader import open_recording

    p = scenario(tmp_path)
    rec = tmp_path / "r.db"
    code = main([
        "run", str(p), "--headless", "--record", str(rec), "--save-result", "--result-dir", str(tmp_path / "res"),
        "--result-filename", "out.json", "--percentile-metrics", "ttft,ttfvt", "--metric-percentiles", "25,50,99",
        "--goodput", "e2el:600",
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "TTFT p25/p50/p99" in printed and "TTFVT p25/p50/p99" in printed
    res = json.loads((tmp_path / "res" / "out.json").read_text())
    with open_recording(rec) as r:
        reqs = r.requests()
    s = asu_summary(reqs, goodput={"e2el": 600}, pcts=[25])
    # the result is computed from the live records; this recording keeps no t_start yet (its latencies
    # start at the send, connect time excluded): equal within a few ms of connect time
    assert res["completed"] == s.overall.ok and res["good"] == s.overall.good
    assert res["request_goodput"] == pytest.approx(s.overall.goodput_rps, rel=0.02)
    assert res["p25_ttft_ms"] == pytest.approx(1000 * s.overall.ttft[25], abs=5.0)
    assert res["recording"] == str(rec) and res["status"] == "done" and res["backend"] == "openai-chat"
    assert f"result: {tmp_path / 'res' / 'out.json'}" in printed


def test_bad_result_flags_fail_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = scenario(tmp_path)
    assert (
        main(["run", str(p), "--headless", "--record", str(tmp_path / "r.db"), "--percentile-metrics", "foo"])
        == 2
    )
    assert "--percentile-metrics" in capsys.readouterr().err
    assert not (tmp_path / "r.db").exists()
