"""record/report.py: figures, ASU tables (Markdown/JSON/HTML) and comparisons.

Unit tests build runs from synthetic records (fixed seeds); the integration tests at the end record real
sessions on the simulator and report on the files.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from rllmtop.errors import UserError
from rllmtop.events import (
    ClientHealth,
    MetricSample,
    Provenance,
    RequestRecord,
    RequestStatus,
    SessionInfo,
    encode_gaps,
)
from rllmtop.metrics import analysis as A
from rllmtop.metrics.analysis import StragglerRule, asu_summary
from rllmtop.record import report as R
from rllmtop.record.report import figures as F
from rllmtop.record.report.run import derive
from rllmtop.record.report.stats import significance_table, significance_tests
from rllmtop.scenario import load_scenario, matrix_cells
from rllmtop.summary import markdown_table

SAMPLE = (
    Path(__file__).resolve().parents[1] / "fixtures" / "recordings" / "stragglers-schema1.db"
)  # rllmtop 0.1

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


def provenance(text: str = WORKLOAD, overrides: dict[str, object] | None = None) -> Provenance:
    """The provenance the scenario loader resolves for ``text`` (the real thing, not a hand-made one)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "synth.toml"
        path.write_text(text, encoding="utf-8")
        prov = load_scenario(str(path), overrides or {}).provenance
    assert prov is not None
    return prov


def cell_provenances(text: str, overrides: dict[str, object] | None = None) -> list[Provenance]:
    """The provenance of every cell of a scenario's [matrix] (one file: one source)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "synth.toml"
        path.write_text(text, encoding="utf-8")
        cells = matrix_cells(load_scenario(str(path), overrides or {}))
    out = [sc.provenance for _, sc in cells]
    assert all(p is not None for p in out)
    return out  # type: ignore[return-value]


def synth_run(
    label: str = "rllm",
    *,
    seed: int = 0,
    reasoning: bool = True,
    n: int = 150,
    prov: Provenance | None = None,
    name: str = "synth",
    run_seed: int = 7,
    extra: tuple[tuple[str, str], ...] = (),
    no_provenance: bool = False,
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
        scenario_text=WORKLOAD,
        seed=run_seed,
        engine_kind="sim",
        extra=extra,
        provenance=None if no_provenance else (prov or provenance()),
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
    single = (index.parent / "asu.json").is_file()  # a single run's report also has its timeline
    names = (*R.FIGURES, *R.RUN_FIGURES) if single else R.FIGURES
    for name in names:
        assert f"{name}.png" in links.hrefs and f"{name}.svg" in links.hrefs, name
        assert (index.parent / f"{name}.svg").is_file()
    # self-contained: every figure is also inlined
    inline = [s for s in links.imgs if s.startswith("data:image/png;base64,")]
    assert len(inline) == len(names)
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


def test_report_marks_the_stragglers_of_the_batch_in_the_tail_of_a_real_recording(tmp_path: Path) -> None:
    """recordings/sample.db is the stragglers scenario (schema 1): 25 requests ran to the 8,192-token cap
    at 31 s, each at its class median; the old rule flagged none of them and marked easy requests in the
    middle of the histogram. They are far behind their batch: flagged, in the tail."""
    run = R.load_run(SAMPLE)
    cut = [q for q in run.requests if q.finish_reason == "length"]
    assert len(cut) == 25 and min(q.e2e or 0 for q in cut) > 30
    R.write_report(run, tmp_path)
    data = json.loads((tmp_path / "asu.json").read_text())
    assert data["overall"]["stragglers"] >= 25
    (d,), _, _ = derive([run], StragglerRule())
    e2e = np.array([q.e2e for q in d.ok])
    batch = d.codes == A.BATCH_RUN_TIME
    capped = np.array([q.finish_reason == "length" for q in d.ok])
    assert (d.codes > 0)[capped].all()  # every capped request is a straggler
    hard = np.array([q.cls in ("hard", "mcq") for q in d.ok])
    assert batch[capped & hard].all()  # those at their class median: behind their batch
    assert e2e[batch].min() > np.percentile(e2e, 75)  # batch stragglers are the tail
    assert "far behind their batch" in data["figures"]["run_time"]["caption"]


def test_report_says_first_when_latencies_include_client_delay_or_simulator_drift(tmp_path: Path) -> None:
    run = synth_run(n=60)
    end = max(q.t_done or 0.0 for q in run.requests)
    health = [ClientHealth(t=t, interval=1.0, lag_max=0.002, lag_mean=0.001) for t in np.arange(1, end, 1.0)]
    health[5] = replace(health[5], lag_max=0.653)  # the loop was starved for one second
    drift = [MetricSample(t, "sim_drift_seconds", 0.5 * t) for t in np.arange(0, end, 1.0)]
    starved = replace(run, health=health, samples=[*run.samples, *drift])
    index = R.write_report(starved, tmp_path / "bad")
    md = (tmp_path / "bad" / "asu.md").read_text().splitlines()
    assert md[2].startswith("> **warning**: latencies include up to 653ms of client delay")
    assert "the simulator fell" in md[3] and "latencies are inflated" in md[3]
    data = json.loads((tmp_path / "bad" / "asu.json").read_text())
    assert data["client_delay"]["fired"] and data["client_delay"]["touched"] > 0
    assert data["sim_drift"]["fired"] and len(data["warnings"]) == 2
    raw = index.read_text()
    assert raw.index('class="warn"') < raw.index("<table>")  # at the top, before any table
    # an idle run says nothing of the sort
    calm = replace(run, health=[replace(h, lag_max=0.002) for h in health])
    R.write_report(calm, tmp_path / "ok")
    assert "warning" not in (tmp_path / "ok" / "asu.md").read_text()
    assert json.loads((tmp_path / "ok" / "asu.json").read_text())["warnings"] == []


def test_report_goodput_tables_and_numbers(tmp_path: Path) -> None:
    run = synth_run()
    slo = {"ttfvt": 5.0, "e2el": 10.0}
    R.write_report(run, tmp_path, goodput=slo)
    want = asu_summary(run.requests, goodput=slo)
    data = json.loads((tmp_path / "asu.json").read_text())
    assert_same_numbers(data["overall"], want.overall.as_dict())
    assert 0 < data["overall"]["good"] < data["overall"]["ok"]
    assert data["goodput"] == slo and data["run_span_s"] == pytest.approx(want.run_span_s)
    md = (tmp_path / "asu.md").read_text()
    assert "good req/s" in md and markdown_table(want) in md
    assert "goodput (ttfvt <= 5.00s, e2el <= 10.00s)" in md
    # recorded SLOs are used when none are given
    recorded = replace(run, goodput=slo)
    R.write_report(recorded, tmp_path / "rec")
    assert json.loads((tmp_path / "rec" / "asu.json").read_text())["overall"]["good"] == want.overall.good


def test_report_of_a_fleet_shows_each_engine_and_the_fleet(tmp_path: Path) -> None:
    run = synth_run(n=80)
    hot = [replace(s, value=min(1.0, s.value * 2)) if s.name == "kv_cache_usage" else s for s in run.samples]
    caps = [MetricSample(0.0, "kv_total_blocks", 1000.0)]
    per = {"http://e1": [*run.samples, *caps], "http://e2": [*hot, replace(caps[0], value=3000.0)]}
    fleet = replace(run, engine_samples=per, samples=[s for ss in per.values() for s in ss])
    R.write_report(fleet, tmp_path)
    data = json.loads((tmp_path / "asu.json").read_text())
    assert set(data["engines"]) == {"http://e1", "http://e2"}
    assert data["engine"]["engines"] == 2 and "kv_total_blocks" in data["engine"]["kv_weighting"]
    e1, e2 = data["engines"]["http://e1"], data["engines"]["http://e2"]
    assert e1["kv_usage_mean"] < data["engine"]["kv_usage_mean"] < e2["kv_usage_mean"]
    assert data["engine"]["kv_usage_peak"] == pytest.approx(e2["kv_usage_peak"])
    assert data["engine"]["kv_spread_mean"] > 0
    md = (tmp_path / "asu.md").read_text()
    assert "fleet of 2" in md and "engine http://e1" in md and "engine http://e2" in md


def test_figures_leak_no_library_warning_even_with_long_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """matplotlib's "constrained_layout not applied" appeared on a plain compare: long run labels in the
    legends squeezed the axes. Legends cut them now; the filter is only a safety net, off here."""
    monkeypatch.setattr(F, "_LAYOUT_WARNINGS", ())
    long = "a run label much longer than any legend can hold, repeated " * 2
    a, b = synth_run(long + "1", n=50), synth_run(long + "2", seed=2, n=50)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        R.write_comparison([a, b], tmp_path / "cmp")
        R.write_report(a, tmp_path / "rep")
        R.write_report(R.RunData("empty", a.info, [], []), tmp_path / "empty")
    assert [str(w.message) for w in seen] == []


def test_every_column_of_the_significance_table_has_a_header(tmp_path: Path) -> None:
    runs, _, _ = derive([synth_run("a", n=60), synth_run("b", seed=1, n=60)], StragglerRule())
    table = significance_table(significance_tests(runs, ["all"]))
    assert all(h.strip() for h in table.head) and table.head[-1] == "verdict"
    assert {row[-1] for row in table.rows} <= {"significant", "n.s.", "—"}
    R.write_comparison([synth_run("a", n=60), synth_run("b", seed=1, n=60)], tmp_path)
    md = (tmp_path / "compare.md").read_text()
    head = next(line for line in md.splitlines() if line.startswith("| class | metric |"))
    assert "|  |" not in head and head.endswith("| verdict |")


def test_an_unwritable_output_directory_is_a_user_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    if os.geteuid() != 0:  # root writes anywhere: then the permission error is simulated below
        out.chmod(0o555)
        with pytest.raises(UserError) as ei:
            R.write_report(synth_run(n=20), out)
        assert str(out) in ei.value.what
        out.chmod(0o755)

    def denied(*a: object, **k: object) -> None:
        raise PermissionError(13, "Permission denied", str(out))

    with monkeypatch.context() as m:
        m.setattr(tempfile, "mkstemp", denied)
        with pytest.raises(UserError) as ei:
            R.write_report(synth_run(n=20), out)
        assert ei.value.what == f"cannot write the report into {out}: Permission denied"
        with pytest.raises(UserError, match="cannot write the report into"):
            R.write_comparison([synth_run("a", n=20), synth_run("b", n=20)], out)
    # a write that fails half-way (disk full) is one error too, naming the file
    from matplotlib.figure import Figure

    def full(self: object, fname: object, **k: object) -> None:
        raise OSError(28, "No space left on device", str(fname))

    monkeypatch.setattr(Figure, "savefig", full)
    with pytest.raises(UserError) as ei:
        R.write_report(synth_run(n=20), out)
    assert "No space left on device" in ei.value.what and "kv_usage.png" in ei.value.what


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
    other_engine = WORKLOAD + '[engine]\nkind = "sim"\nprofile = "llm-7b"\n'
    c = synth_run("c", prov=provenance(other_engine), name="renamed")  # the name is not the workload
    v = R.comparability([a, b, c])
    assert v.comparable and v.problems == ()
    assert "same workload" in v.basis and provenance().workload_digest in v.basis


def test_different_seed_or_workload_is_not_comparable() -> None:
    a = synth_run("a")
    seed8 = synth_run("b", run_seed=8, prov=provenance(WORKLOAD.replace("seed = 7", "seed = 8")))
    probs = R.comparability_problems([a, seed8])
    assert probs == ["b vs a: seed 8 vs 7"]  # told once, not again as a workload key
    faster = WORKLOAD.replace("rate = 4.0", "rate = 8.0")
    probs = R.comparability_problems([a, synth_run("b", prov=provenance(faster))])
    assert len(probs) == 1 and "arrival.rate = 8.0 vs 4.0" in probs[0]
    overridden = provenance(WORKLOAD, {"request_rate": 8, "num_prompts": 20})
    probs = R.comparability_problems([a, synth_run("b", prov=overridden)])
    assert (
        len(probs) == 1
        and "arrival.rate = 8 vs 4.0" in probs[0]
        and "load.num_prompts = 20 vs 150" in probs[0]
    )


def test_engine_overrides_and_equal_workload_overrides_keep_runs_comparable() -> None:
    a = synth_run("a")
    engine_only = provenance(WORKLOAD, {"profile": "llm-7b", "speed": 50.0, "model": None})
    same_rate = provenance(WORKLOAD.replace("rate = 4.0", "rate = 2.0"), {"request_rate": 4})
    assert R.comparability_problems([a, synth_run("b", prov=engine_only)]) == []
    assert R.comparability_problems([a, synth_run("c", prov=same_rate)]) == []


def test_runs_without_a_recorded_workload_cannot_be_shown_comparable() -> None:
    a = synth_run("a")
    b = synth_run("b", no_provenance=True)  # attach without a scenario
    v = R.comparability([a, b])
    assert not v.comparable
    assert v.problems == (
        "b vs a: b recorded no workload (no scenario provenance), so it cannot be shown to be the same",
    )


def test_cells_of_one_matrix_are_comparable_even_when_the_cell_varies_the_workload() -> None:
    text = WORKLOAD + "[matrix]\nseed = [7, 8]\n"
    p7, p8 = cell_provenances(text)
    assert p7.workload != p8.workload  # the cell changed the workload's seed
    a = synth_run("seed=7", prov=p7, name="synth[seed=7]")
    b = synth_run("seed=8", prov=p8, name="synth[seed=8]", run_seed=8)
    v = R.comparability([a, b])
    assert v.comparable and "Cells of one matrix" in v.basis and "seed=7" in v.basis and "seed=8" in v.basis
    # the same cells run with different command-line overrides are not
    _, q8 = cell_provenances(text, {"num_prompts": 10})
    c = synth_run("seed=8", prov=q8, name="synth[seed=8]", run_seed=8)
    assert R.comparability_problems([a, c])
    # a workload that differs beyond what the cells declare is not
    edited = replace(p8, workload=p8.workload.replace('"rate":4.0', '"rate":5.0'))
    probs = R.comparability_problems([a, synth_run("seed=8", prov=edited, run_seed=8)])
    assert len(probs) == 1 and "beyond the matrix cells" in probs[0] and "arrival.rate" in probs[0]


def test_a_schema_1_recording_is_compared_by_the_provenance_its_reader_gives() -> None:
    from rllmtop.record.reader import open_recording

    with open_recording(SAMPLE) as rec:
        assert rec.schema_version == 1 and rec.info.provenance is not None
    a, b = R.load_run(SAMPLE, label="a"), R.load_run(SAMPLE, label="b")
    assert R.comparability([a, b]).comparable
    other = replace(b, info=replace(b.info, provenance=provenance(), seed=7))
    assert "seed 7 vs 0" in R.comparability_problems([a, other])[0]


def test_compare_refuses_non_comparable_runs_unless_forced(tmp_path: Path) -> None:
    a = synth_run("a", n=40)
    b = synth_run("b", n=40, run_seed=99, prov=provenance(WORKLOAD.replace("seed = 7", "seed = 99")))
    with pytest.raises(UserError) as ei:
        R.write_comparison([a, b], tmp_path / "c")
    assert "not comparable" in ei.value.what and "seed 99 vs 7" in ei.value.what
    assert "--force" in ei.value.hint
    assert not (tmp_path / "c").exists()
    cmp = R.write_comparison([a, b], tmp_path / "c", force=True)
    assert "NOT comparable" in cmp.index.read_text() and "NOT comparable" in cmp.text
    assert not cmp.comparable
    assert json.loads((tmp_path / "c" / "compare.json").read_text())["comparable"] is False


def test_compare_needs_two_runs(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="at least two"):
        R.write_comparison([synth_run(n=10)], tmp_path)


# ---------------------------------------------------------------------------------------------- compare


def test_comparison_tables_deltas_tests_and_overlaid_figures(tmp_path: Path) -> None:
    rllm = synth_run("rllm-7b", seed=0, reasoning=True)
    llm = synth_run("llm-7b", seed=1, reasoning=False)
    cmp = R.write_comparison([rllm, llm], tmp_path)
    index = cmp.index
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
    assert txt.rstrip("\n") == cmp.text  # what the compare command prints is what the file holds
    # the side-by-side ASU table: one row per run, baseline first, the summary's own cells
    from rllmtop.summary import COLUMNS

    lines = cmp.text.splitlines()
    head = lines.index("class all:") + 1
    assert lines[head].split()[0] == "run" and "TTFVT" in lines[head]
    assert lines[head + 2].startswith("rllm-7b") and lines[head + 3].startswith("llm-7b")
    llm_all = asu_summary(llm.requests).overall
    for col in COLUMNS[1:]:
        assert col.get(llm_all) in lines[head + 3]
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
    from rllmtop.record.writer import Recorder

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
    from rllmtop.record.reader import open_recording

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
    text = WORKLOAD + '[engine]\nkind = "sim"\n[matrix]\nprofile = ["rllm-7b", "llm-7b"]\n'
    pa, pb = cell_provenances(text)
    a = record_run(tmp_path / "a.db", synth_run("x", prov=pa))
    b = record_run(tmp_path / "b.db", synth_run("y", seed=1, reasoning=False, prov=pb))
    cmp = R.compare_recordings([a, b], tmp_path / "cmp", force=False)
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [r["label"] for r in data["runs"]] == ["profile=rllm-7b", "profile=llm-7b"]
    assert [r["recording"] for r in data["runs"]] == [str(a), str(b)]
    assert data["comparable"] and "Cells of one matrix" in data["basis"]
    assert cmp.text.startswith("Cells of one matrix")


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
    from rllmtop.record.reader import open_recording

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
    runs, _, _ = derive([a, b], StragglerRule())
    ta, tb = runs[0].tl_count, runs[1].tl_count
    assert ta is not None and tb is not None
    assert ta.columns["arrivals"].sum() == 80
    np.testing.assert_array_equal(ta.columns["arrivals"], tb.columns["arrivals"])
    np.testing.assert_array_equal(ta.columns["completions"], tb.columns["completions"])
    ga, gb = runs[0].tl_gauge, runs[1].tl_gauge
    assert ga is not None and gb is not None
    n = min(ga.t.size, gb.t.size)
    np.testing.assert_allclose(ga.columns["kv_cache_usage"][:n], gb.columns["kv_cache_usage"][:n])


def test_a_v1_speed_run_and_a_time_lapse_are_not_compared_as_if_on_one_clock(tmp_path: Path) -> None:
    """rllmtop 0.1's `--speed 5` recorded wall seconds of a simulator 5x fast (its model time / 5); a
    time-lapse records simulated seconds. Same workload and seed, different clocks: refused unless --force,
    and the reason names both clocks."""
    new = Path(__file__).resolve().parents[2] / "recordings" / "sample.db"
    with pytest.raises(UserError) as e:
        R.compare_recordings([new, SAMPLE], tmp_path / "c", force=False)
    assert "different clocks" in e.value.what and "speed 5" in e.value.what
    c = R.compare_recordings([new, SAMPLE], tmp_path / "f", force=True)
    assert not c.comparable and any("different clocks" in p for p in c.problems)
    same = R.compare_recordings([new, new], tmp_path / "s", force=False)
    assert same.comparable
