"""record/report.py: figures, ASU tables (Markdown/JSON/HTML) and comparisons.

Unit tests build runs from synthetic records (fixed seeds); the integration tests at the end record real
sessions on the simulator and report on the files.
"""

from __future__ import annotations

import json
import math
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from rllmtop.errors import UserError
from rllmtop.events import MetricSample, RequestRecord, RequestStatus, SessionInfo, encode_gaps
from rllmtop.metrics import analysis as A
from rllmtop.metrics.analysis import StragglerRule, asu_summary
from rllmtop.record import report as R
from rllmtop.summary import markdown_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

WORKLOAD = """name = "synth"
seed = 7
[arrival]
process = "gamma"
rate = 4.0
[load]
num_prompts = 150
[[classes]]
name = "easy"
prompts = { builtin = "math-easy" }
"""


def synth_run(
    label: str = "rllm",
    *,
    seed: int = 0,
    reasoning: bool = True,
    n: int = 150,
    scenario_text: str = WORKLOAD,
    name: str = "synth",
    run_seed: int = 7,
    extra: tuple[tuple[str, str], ...] = (),
) -> R.RunData:
    """A plausible run: Poisson arrivals, three classes, reasoning lengths by difficulty, KV gauges that
    follow the number of running requests, a preemption counter, a few errors."""
    rng = np.random.default_rng(seed)
    recs: list[RequestRecord] = []
    t = 1.0
    for i in range(n):
        t += float(rng.exponential(0.25))
        cls = ("easy", "medium", "hard")[i % 3]
        rt = int(rng.gamma(2.0, {"easy": 150, "medium": 400, "hard": 800}[cls])) if reasoning else 0
        at = int(rng.integers(20, 120))
        tok = rt + at
        ttft = float(rng.uniform(0.05, 0.4))
        itl = 0.01
        ok = rng.random() > 0.03
        recs.append(
            RequestRecord(
                rid=i,
                cls=cls,
                difficulty=cls,
                t_scheduled=t,
                t_dispatch=t,
                t_sent=t,
                t_first_token=t + ttft,
                t_first_visible=t + ttft + rt * itl,
                t_done=t + ttft + tok * itl if ok else None,
                reasoning_tokens=rt,
                answer_tokens=at,
                status=RequestStatus.OK if ok else RequestStatus.ERROR,
                error=None if ok else "HTTP 500",
                correct=bool(rng.random() < 0.8) if ok else None,
                finish_reason="stop" if ok else None,
                gaps=encode_gaps([int(itl * 1e6)] * (tok - 1)),
            )
        )
    end = max(r.t_done or 0.0 for r in recs)
    samples: list[MetricSample] = []
    pre = 0
    for k in range(int(end / 0.25) + 2):
        ts = k * 0.25
        running = sum(1 for r in recs if r.t_sent is not None and r.t_sent <= ts < (r.t_done or 0.0))
        kv = min(1.0, running * (0.03 if reasoning else 0.004))
        if kv >= 1.0 and rng.random() < 0.3:
            pre += 1
        samples += [
            MetricSample(ts, "kv_cache_usage", kv),
            MetricSample(ts, "requests_running", float(min(running, 30))),
            MetricSample(ts, "requests_waiting", float(max(0, running - 30))),
            MetricSample(ts, "preemptions_total", float(pre)),
        ]
    info = SessionInfo(
        session_id=f"{label}-{seed}",
        started_at=1_700_000_000.0,
        mode="headless",
        scenario_name=name,
        scenario_text=scenario_text,
        seed=run_seed,
        engine_kind="sim",
        extra=extra,
    )
    return R.RunData(label, info, recs, samples, load_start=1.0, duration=end + 0.5)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.imgs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"] or "")
        if tag == "img" and a.get("src"):
            self.imgs.append(a["src"] or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_html(path: Path) -> _Links:
    p = _Links()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def assert_figures(out: Path) -> None:
    for name in R.FIGURES:
        png, svg = out / f"{name}.png", out / f"{name}.svg"
        assert png.stat().st_size > 5_000, name  # a real plot, not an empty canvas
        assert png.read_bytes()[:8] == PNG_MAGIC
        root = ElementTree.parse(svg).getroot()
        assert root.tag.endswith("svg")
        assert svg.stat().st_size > 5_000, name


def assert_html_references_figures(index: Path) -> None:
    links = parse_html(index)
    for name in R.FIGURES:
        assert f"{name}.png" in links.hrefs and f"{name}.svg" in links.hrefs, name
        assert (index.parent / f"{name}.svg").is_file()
    # self-contained: every figure is also inlined
    inline = [s for s in links.imgs if s.startswith("data:image/png;base64,")]
    assert len(inline) == len(R.FIGURES)
    assert all(not s.startswith(("http:", "https:", "/")) for s in links.hrefs + links.imgs)


def _close(a: object, b: object) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-12)  # type: ignore[arg-type]
    return a == b


def assert_same_numbers(got: dict[str, object], want: dict[str, object]) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        assert _close(got[k], v), (k, got[k], v)


# ---------------------------------------------------------------------------------------------- report


def test_report_writes_figures_tables_and_html_with_analysis_numbers(tmp_path: Path) -> None:
    run = synth_run()
    index = R.write_report(run, tmp_path / "rep")
    out = index.parent
    assert index == out / "index.html"
    assert_figures(out)
    assert_html_references_figures(index)

    want = asu_summary(run.requests)
    data = json.loads((out / "asu.json").read_text())
    assert_same_numbers(data["overall"], want.overall.as_dict())
    assert [c["class"] for c in data["classes"]] == ["easy", "medium", "hard"]
    for got, c in zip(data["classes"], want.classes, strict=True):
        assert_same_numbers(got, c.as_dict())
    assert data["straggler_rule"] == want.straggler_rule

    md = (out / "asu.md").read_text()
    assert markdown_table(want) in md  # the one column set, the one set of numbers
    assert want.straggler_rule in md
    html_text = "".join(parse_html(index).text)
    assert want.straggler_rule in html_text
    assert "TTFVT" in html_text and "0.25 s window" in html_text  # definitions next to the numbers
    assert "asu.md" in parse_html(index).hrefs and "asu.json" in parse_html(index).hrefs

    # engine numbers come from the samples
    eng = data["engine"]
    kv = [s.value for s in run.samples if s.name == "kv_cache_usage" and s.t >= 1.0]
    assert eng["kv_usage_peak"] == pytest.approx(max(kv))
    pre = [s.value for s in run.samples if s.name == "preemptions_total"]
    assert eng["preemptions"] == pytest.approx(pre[-1] - pre[0]) and eng["preemptions"] > 0
    assert eng["prefix_hit_rate"] is None  # not served: missing, never 0


def test_engine_summary_means_peaks_missing_and_counter_reset() -> None:
    samples = [MetricSample(t, "kv_cache_usage", v) for t, v in [(0, 0.0), (1, 0.5), (2, 1.0), (3, 0.5)]]
    samples += [MetricSample(t, "preemptions_total", v) for t, v in [(0, 0), (1, 4), (2, 1), (3, 3)]]
    samples += [
        MetricSample(0, "prefix_cache_queries_total", 0),
        MetricSample(3, "prefix_cache_queries_total", 100),
        MetricSample(0, "prefix_cache_hits_total", 0),
        MetricSample(3, "prefix_cache_hits_total", 25),
    ]
    e = A.engine_summary(samples, 0.0, 4.0, step=1.0)
    # last reading per 1 s bin: bins [0,1) .. [3,4) read 0.0, 0.5, 1.0, 0.5
    assert e.kv_usage_mean == pytest.approx(0.5)
    assert e.kv_usage_peak == 1.0
    assert e.kv_full_frac == pytest.approx(0.25)
    assert e.preemptions == pytest.approx(4 + 1 + 2)  # 0->4, reset to 1, 1->3
    assert e.prefix_hit_rate == pytest.approx(0.25)
    assert e.running_mean is None and e.running_peak is None and e.waiting_peak is None


def test_report_of_a_run_without_requests_or_samples(tmp_path: Path) -> None:
    info = SessionInfo(session_id="x", started_at=0.0, mode="attach", scenario_name="")
    run = R.RunData("empty", info, [], [], status="failed", status_detail="engine unreachable")
    index = R.write_report(run, tmp_path)
    assert_figures(tmp_path)
    text = "".join(parse_html(index).text)
    assert "No request ended" in text and "engine unreachable" in text
    data = json.loads((tmp_path / "asu.json").read_text())
    assert data["overall"]["requests"] == 0 and data["engine"]["kv_usage_mean"] is None


def test_report_escapes_user_text(tmp_path: Path) -> None:
    run = synth_run(name="<script>x</script>", n=30)
    index = R.write_report(run, tmp_path)
    raw = index.read_text()
    assert "<script>" not in raw and "&lt;script&gt;" in raw


def test_missing_matplotlib_is_a_clear_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UserError) as ei:
        R.write_report(synth_run(n=20), tmp_path / "out")
    assert "matplotlib" in ei.value.what
    assert "pip install 'rllmtop[report]'" in ei.value.hint
    assert not (tmp_path / "out").exists()  # refused before writing anything


def test_output_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        R.write_report(synth_run(n=20), f)


def test_custom_straggler_rule_is_used_and_described(tmp_path: Path) -> None:
    run = synth_run()
    rule = StragglerRule(factor=1.5, min_finished=3)
    R.write_report(run, tmp_path, rule=rule)
    data = json.loads((tmp_path / "asu.json").read_text())
    assert data["straggler_rule"] == rule.describe()
    assert data["overall"]["stragglers"] == asu_summary(run.requests, rule).overall.stragglers
    assert data["overall"]["stragglers"] > asu_summary(run.requests).overall.stragglers


# ---------------------------------------------------------------------------------------------- statistics


def test_mann_whitney_matches_scipy_and_reports_effect_size() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(10, 2, 80)
    b = rng.normal(12, 2, 90)
    m = A.mann_whitney(a, b)
    ref = mannwhitneyu(b, a, alternative="two-sided")
    assert m.u == pytest.approx(ref.statistic) and m.p == pytest.approx(ref.pvalue)
    assert m.n_a == 80 and m.n_b == 90
    assert m.effect == pytest.approx(ref.statistic / (80 * 90))
    assert m.effect is not None and m.effect > 0.7  # b is shifted up
    assert m.p is not None and m.p < 1e-6


def test_mann_whitney_same_distribution_is_not_significant() -> None:
    rng = np.random.default_rng(11)
    m = A.mann_whitney(rng.gamma(2, 3, 200), rng.gamma(2, 3, 200))
    assert m.p is not None and m.p > 0.05
    assert m.effect is not None and 0.4 < m.effect < 0.6


def test_mann_whitney_edge_cases() -> None:
    few = A.mann_whitney([1, 2, 3], [4, 5, 6, 7, 8])
    assert few.p is None and few.u is None and few.median_a == 2.0
    same = A.mann_whitney([0] * 10, [0] * 12)  # e.g. reasoning length of two plain-LLM runs
    assert same.p == 1.0 and same.effect == 0.5
    nan = A.mann_whitney([float("nan")] * 10, [1.0] * 10)
    assert nan.n_a == 0 and nan.p is None


def test_holm_adjustment() -> None:
    got = A.holm([0.01, None, 0.04, 0.03, 0.5])
    # sorted: 0.01*4=0.04, 0.03*3=0.09, 0.04*2=0.08 -> monotone 0.09, 0.5*1 -> 0.5
    assert got == pytest.approx([0.04, None, 0.09, 0.09, 0.5])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- comparability


def test_same_workload_is_comparable_even_with_different_engines() -> None:
    a = synth_run("a", extra=(("profile", "rllm-7b"),))
    b = synth_run("b", seed=1, reasoning=False, extra=(("profile", "llm-7b"),))
    other_engine = WORKLOAD + '[engine]\nkind = "sim"\nprofile = "llm-7b"\n[matrix]\nprofile = ["a"]\n'
    c = synth_run("c", scenario_text=other_engine, name="synth")
    assert R.comparability_problems([a, b, c]) == []


def test_different_seed_scenario_or_workload_is_not_comparable() -> None:
    a = synth_run("a")
    assert any("seed 8 vs 7" in p for p in R.comparability_problems([a, synth_run("b", run_seed=8)]))
    assert any("scenario" in p for p in R.comparability_problems([a, synth_run("b", name="other")]))
    faster = WORKLOAD.replace("rate = 4.0", "rate = 8.0")
    probs = R.comparability_problems([a, synth_run("b", scenario_text=faster)])
    assert len(probs) == 1 and "arrival.rate = 8.0 vs 4.0" in probs[0]
    overridden = "# rllmtop: overrides: --request-rate 8 --num-prompts 20\n" + WORKLOAD
    probs = R.comparability_problems([a, synth_run("b", scenario_text=overridden)])
    assert (
        len(probs) == 1
        and "arrival.rate = 8 vs 4.0" in probs[0]
        and "load.num_prompts = 20 vs 150" in probs[0]
    )


def test_engine_overrides_and_equal_workload_overrides_keep_runs_comparable() -> None:
    a = synth_run("a")
    engine_only = "# rllmtop: overrides: --profile llm-7b --speed 50 --model m\n" + WORKLOAD
    same_rate = "# rllmtop: overrides: --request-rate 4\n" + WORKLOAD.replace("rate = 4.0", "rate = 2.0")
    assert R.comparability_problems([a, synth_run("b", scenario_text=engine_only)]) == []
    assert R.comparability_problems([a, synth_run("c", scenario_text=same_rate)]) == []


def test_cells_of_one_matrix_are_comparable_even_when_the_cell_varies_the_workload() -> None:
    text = WORKLOAD + "[matrix]\nseed = [7, 8]\n"
    a = synth_run("seed=7", scenario_text="# rllmtop: matrix cell: seed=7\n" + text, name="synth[seed=7]")
    b = synth_run(
        "seed=8", scenario_text="# rllmtop: matrix cell: seed=8\n" + text, name="synth[seed=8]", run_seed=8
    )
    assert R.comparability_problems([a, b]) == []
    # the same cells with different command-line overrides are not
    c = synth_run(
        "seed=8",
        scenario_text="# rllmtop: overrides: --num-prompts 10\n# rllmtop: matrix cell: seed=8\n" + text,
        name="synth[seed=8]",
        run_seed=8,
    )
    assert R.comparability_problems([a, c])


def test_compare_refuses_non_comparable_runs_unless_forced(tmp_path: Path) -> None:
    a, b = synth_run("a", n=40), synth_run("b", n=40, run_seed=99)
    with pytest.raises(UserError) as ei:
        R.write_comparison([a, b], tmp_path / "c")
    assert "not comparable" in ei.value.what and "seed 99 vs 7" in ei.value.what
    assert "--force" in ei.value.hint
    assert not (tmp_path / "c").exists()
    index = R.write_comparison([a, b], tmp_path / "c", force=True)
    assert "NOT comparable" in index.read_text()
    assert json.loads((tmp_path / "c" / "compare.json").read_text())["comparable"] is False


def test_compare_needs_two_runs(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="at least two"):
        R.write_comparison([synth_run(n=10)], tmp_path)


# ---------------------------------------------------------------------------------------------- compare


def test_comparison_tables_deltas_tests_and_overlaid_figures(tmp_path: Path) -> None:
    rllm = synth_run("rllm-7b", seed=0, reasoning=True)
    llm = synth_run("llm-7b", seed=1, reasoning=False)
    index = R.write_comparison([rllm, llm], tmp_path)
    assert_figures(tmp_path)
    assert_html_references_figures(index)
    data = json.loads((tmp_path / "compare.json").read_text())
    assert data["comparable"] is True and data["baseline"] == "rllm-7b"
    for run, got in zip((rllm, llm), data["runs"], strict=True):
        want = asu_summary(run.requests)
        assert_same_numbers(got["overall"], want.overall.as_dict())
        for g, c in zip(got["classes"], want.classes, strict=True):
            assert_same_numbers(g, c.as_dict())
    e_rllm, e_llm = data["runs"][0]["engine"], data["runs"][1]["engine"]
    assert e_rllm["kv_usage_mean"] > 3 * e_llm["kv_usage_mean"]  # the study's qualitative result

    tests = {(t["class"], t["metric"]): t for t in data["tests"]}
    assert set(tests) == {
        (c, m) for c in ("easy", "medium", "hard", "all") for m in ("E2E", "TTFVT", "reasoning length")
    }
    # the p-values are scipy's, on the ok requests of the class
    ok = {
        name: [q for q in run.requests if q.status is RequestStatus.OK]
        for name, run in (("a", rllm), ("b", llm))
    }
    e2e_a = [q.e2e for q in ok["a"] if q.cls == "hard"]
    e2e_b = [q.e2e for q in ok["b"] if q.cls == "hard"]
    ref = mannwhitneyu(e2e_b, e2e_a, alternative="two-sided")
    t = tests[("hard", "E2E")]
    assert t["p"] == pytest.approx(ref.pvalue) and t["u"] == pytest.approx(ref.statistic)
    assert t["p_holm"] >= t["p"] and t["p_holm"] < 0.05
    assert t["effect"] < 0.1  # the plain model is faster

    md = (tmp_path / "compare.md").read_text()
    assert "## Class all" in md and "## Significance" in md and "(-" in md  # deltas shown
    txt = (tmp_path / "compare.txt").read_text()
    assert "class all" in txt and "rllm-7b" in txt and "llm-7b" in txt
    html_text = "".join(parse_html(index).text)
    assert "Mann-Whitney" in html_text and rllm.requests and "Holm" in html_text


def test_duplicate_labels_are_made_unique(tmp_path: Path) -> None:
    a, b = synth_run("same", n=30), synth_run("same", seed=2, n=30)
    R.write_comparison([a, b], tmp_path)
    labels = [r["label"] for r in json.loads((tmp_path / "compare.json").read_text())["runs"]]
    assert len(set(labels)) == 2


@pytest.mark.slow
def test_report_time_is_reasonable_for_a_few_thousand_requests(tmp_path: Path) -> None:
    run = synth_run(n=3000, seed=5)
    t = time.perf_counter()
    R.write_report(run, tmp_path)
    took = time.perf_counter() - t
    assert took < 60  # generous: a loaded 2-core machine; typically a few seconds


# ---------------------------------------------------------------------------------------------- from files


def record_run(path: Path, run: R.RunData) -> Path:
    """Write a synthetic run to a real recording through the recorder (the session's sink)."""
    from itertools import groupby

    from rllmtop.events import RequestEvent, RequestKind, Scrape, SessionState, StateEvent
    from rllmtop.record.store import Recorder

    rec = Recorder(path, run.info)
    rec.handle(run.info)
    rec.handle(StateEvent(0.0, SessionState.STARTING))
    rec.handle(StateEvent(run.load_start or 0.0, SessionState.RUNNING))
    for t, group in groupby(sorted(run.samples, key=lambda s: s.t), key=lambda s: s.t):
        rec.handle(Scrape(t=t, latency_s=0.001, ok=True, samples=tuple(group)))
    for r in run.requests:
        kind = RequestKind.DONE if r.status is RequestStatus.OK else RequestKind.FAILED
        rec.handle(RequestEvent(kind, r.t_done or r.t_sent or 0.0, r.rid, r.cls, record=r))
    rec.close(SessionState.DONE)
    return path


def test_build_report_from_a_recording_file(tmp_path: Path) -> None:
    from rllmtop.record.store import open_recording

    path = record_run(tmp_path / "run.db", synth_run())
    index = R.build_report(path, tmp_path / "out")
    assert_figures(tmp_path / "out")
    assert_html_references_figures(index)
    with open_recording(path) as rec:
        want = asu_summary(rec.requests())
    data = json.loads((tmp_path / "out" / "asu.json").read_text())
    assert_same_numbers(data["overall"], want.overall.as_dict())
    assert data["recording"] == str(path)
    assert "run.db" in "".join(parse_html(index).text)


def test_build_comparison_from_recording_files_labels_matrix_cells(tmp_path: Path) -> None:
    a = record_run(tmp_path / "a.db", synth_run("x", extra=(("matrix_cell", "profile=rllm-7b"),)))
    b = record_run(
        tmp_path / "b.db", synth_run("y", seed=1, reasoning=False, extra=(("matrix_cell", "profile=llm-7b"),))
    )
    R.build_comparison([a, b], tmp_path / "cmp", force=False)
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [r["label"] for r in data["runs"]] == ["profile=rllm-7b", "profile=llm-7b"]
    assert [r["recording"] for r in data["runs"]] == [str(a), str(b)]


def test_report_on_a_file_that_is_not_a_recording(tmp_path: Path) -> None:
    bad = tmp_path / "notes.db"
    bad.write_text("hello")
    with pytest.raises(UserError, match="not an rllmtop recording"):
        R.build_report(bad, tmp_path / "out")
    with pytest.raises(UserError, match="no such recording"):
        R.build_comparison([tmp_path / "missing.db", bad], tmp_path / "out", force=False)


def test_cli_report_and_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rllmtop.cli import main

    a = record_run(tmp_path / "a.db", synth_run("a", n=60))
    b = record_run(tmp_path / "b.db", synth_run("b", seed=3, n=60, run_seed=8))
    assert main(["report", str(a), "--out", str(tmp_path / "rep")]) == 0
    assert f"report: {tmp_path / 'rep' / 'index.html'}" in capsys.readouterr().out
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert "not comparable" in err and "seed 8 vs 7" in err and "--force" in err
    assert "Traceback" not in err
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp"), "--force"]) == 0
    assert (tmp_path / "cmp" / "index.html").is_file()


# ---------------------------------------------------------------------------------------------- simulator

SIM_SCENARIO = """name = "report-it"
seed = 11
[engine]
kind = "sim"
profile = "rllm-7b"
speed = 50
[arrival]
process = "gamma"
rate = 15
burstiness = 0.5
[load]
num_prompts = 30
grace_period = 30
[[classes]]
name = "easy"
max_tokens = 3000
prompts = { builtin = "math-easy" }
[[classes]]
name = "hard"
max_tokens = 3000
prompts = { builtin = "math-hard" }
"""


async def record_on_sim(tmp_path: Path, name: str, overrides: dict[str, object] | None = None) -> Path:
    from rllmtop.commands import build_session
    from rllmtop.events import SessionState
    from rllmtop.scenario import load_scenario

    sc_path = tmp_path / "report-it.toml"
    if not sc_path.exists():
        sc_path.write_text(SIM_SCENARIO, encoding="utf-8")
    session = build_session(
        load_scenario(str(sc_path), overrides or {}), mode="headless", record=tmp_path / f"{name}.db"
    )
    outcome = await session.run()
    assert outcome.state is SessionState.DONE, outcome.detail
    assert outcome.record_path is not None
    return outcome.record_path


async def test_report_from_a_simulator_recording(tmp_path: Path) -> None:
    from rllmtop.record.store import open_recording

    path = await record_on_sim(tmp_path, "rllm")
    index = R.build_report(path, tmp_path / "out")
    assert_figures(tmp_path / "out")
    assert_html_references_figures(index)
    with open_recording(path) as rec:
        reqs = rec.requests()
        kv = [s.value for s in rec.samples(names=["kv_cache_usage"])]
    assert len(reqs) == 30
    want = asu_summary(reqs)
    data = json.loads((tmp_path / "out" / "asu.json").read_text())
    assert_same_numbers(data["overall"], want.overall.as_dict())
    for got, c in zip(data["classes"], want.classes, strict=True):
        assert_same_numbers(got, c.as_dict())
    assert data["engine"]["kv_usage_peak"] == pytest.approx(max(kv))
    assert data["engine"]["kv_usage_peak"] > 0  # the simulator's KV was used and recorded
    assert markdown_table(want) in (tmp_path / "out" / "asu.md").read_text()


@pytest.mark.slow
async def test_comparison_of_two_simulator_recordings(tmp_path: Path) -> None:
    a = await record_on_sim(tmp_path, "rllm")
    b = await record_on_sim(tmp_path, "llm", {"profile": "llm-7b"})
    index = R.build_comparison([a, b], tmp_path / "cmp", force=False)  # same workload: comparable
    assert_figures(tmp_path / "cmp")
    assert_html_references_figures(index)
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    rllm, llm = data["runs"]
    assert rllm["overall"]["reasoning_len_p50"] > 10 * max(llm["overall"]["reasoning_len_p50"], 1)
    assert rllm["engine"]["kv_usage_peak"] > llm["engine"]["kv_usage_peak"]
    t = next(t for t in data["tests"] if t["class"] == "all" and t["metric"] == "reasoning length")
    assert t["p_holm"] < 0.001
    # a different seed is a different workload
    c = await record_on_sim(tmp_path, "other-seed", {"seed": 12})
    with pytest.raises(UserError, match="seed 12 vs 11"):
        R.build_comparison([a, c], tmp_path / "cmp2", force=False)


def test_time_axes_of_runs_with_one_schedule_line_up() -> None:
    """Engines start in different times: windows are counted from each run's first scheduled send."""
    from dataclasses import replace

    a = synth_run("a", n=80)
    d = 0.37  # this engine took 0.37 s longer to become ready

    def sh(t: float | None) -> float | None:
        return None if t is None else t + d

    b = replace(
        a,
        label="b",
        requests=[
            replace(
                q,
                t_scheduled=q.t_scheduled + d,
                t_dispatch=sh(q.t_dispatch),
                t_sent=sh(q.t_sent),
                t_first_token=sh(q.t_first_token),
                t_first_visible=sh(q.t_first_visible),
                t_done=sh(q.t_done),
            )
            for q in a.requests
        ],
        samples=[replace(s, t=s.t + d) for s in a.samples],
        load_start=1.0 + d,
    )
    runs, _, _ = R._derive([a, b], StragglerRule())
    ta, tb = runs[0].tl_count, runs[1].tl_count
    assert ta is not None and tb is not None
    assert ta.columns["arrivals"].sum() == 80
    np.testing.assert_array_equal(ta.columns["arrivals"], tb.columns["arrivals"])
    np.testing.assert_array_equal(ta.columns["completions"], tb.columns["completions"])
    ga, gb = runs[0].tl_gauge, runs[1].tl_gauge
    assert ga is not None and gb is not None
    n = min(ga.t.size, gb.t.size)
    np.testing.assert_allclose(ga.columns["kv_cache_usage"][:n], gb.columns["kv_cache_usage"][:n])
