"""Prometheus text -> Scrape: real vLLM captures, written SGLang / older vLLM text, malformed input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rllmtop.engines.adapters import adapter_for
from rllmtop.events import NEUTRAL_METRICS, MetricKind, Scrape
from rllmtop.metrics.prom import (
    MetricsFilter,
    _parse_lines,
    counter_reset,
    failed_scrape,
    parse_filtered,
    parse_metrics,
    parse_scrape,
)

# neutral names no vLLM/SGLang /metrics serves: the simulator's own and GPU telemetry (dcgm-exporter)
NOT_FROM_ENGINES = {n for n in NEUTRAL_METRICS if n.startswith(("sim_", "gpu_"))}
FIX = Path(__file__).resolve().parents[1] / "fixtures"
AFTER_LOAD = (FIX / "vllm-0.32-cpu" / "metrics_after_load.txt").read_text()
IDLE = (FIX / "vllm-0.32-cpu" / "metrics_idle.txt").read_text()
VLLM_011 = (FIX / "vllm-0.11" / "metrics_hidden_0.10_dp2.txt").read_text()
VLLM_010 = (FIX / "vllm-0.10" / "metrics_dp2.txt").read_text()
SGLANG = (FIX / "sglang-0.5" / "metrics_dp2_tp2.txt").read_text()
SGLANG_OLD = (FIX / "sglang-0.5" / "metrics_token_usage_only.txt").read_text()

VLLM = adapter_for("vllm")
E0 = (("engine", "0"),)
E1 = (("engine", "1"),)


def values(s: Scrape, name: str) -> dict[tuple, float]:
    return {x.labels: x.value for x in s.samples if x.name == name}


def hist(s: Scrape, name: str, labels: tuple = E0):
    (h,) = [h for h in s.histograms if h.name == name and h.labels == labels]
    return h


def test_real_vllm_032_capture_after_load() -> None:
    s = parse_scrape(AFTER_LOAD, VLLM, t=3.5, latency_s=0.01)
    assert s.ok and s.error == "" and not s.counter_reset
    assert s.t == 3.5 and s.latency_s == 0.01
    assert values(s, "prompt_tokens_total") == {E0: 2520.0}
    assert values(s, "generation_tokens_total") == {E0: 4032.0}
    assert values(s, "kv_cache_usage") == {E0: 0.0}
    assert values(s, "requests_running") == {E0: 0.0}
    assert values(s, "prefix_cache_queries_total") == {E0: 2520.0}
    assert values(s, "kv_total_blocks") == {E0: 8192.0}  # the num_gpu_blocks label of cache_config_info
    success = values(s, "request_success_total")
    assert success[(("engine", "0"), ("finished_reason", "length"))] == 63.0
    assert len(success) == 5
    # model_name never reaches the records; engine does
    assert all(dict(x.labels).get("engine") == "0" and "model_name" not in dict(x.labels) for x in s.samples)
    ttft = hist(s, "ttft_seconds")
    assert ttft.count == 63.0 and math.isclose(ttft.sum, 22.125208854675293)
    assert ttft.bounds[0] == 0.001 and math.isinf(ttft.bounds[-1]) and len(ttft.bounds) == 23
    assert ttft.counts[3] == 11.0 and ttft.counts[-1] == 63.0
    assert list(ttft.counts) == sorted(ttft.counts)  # cumulative, as served
    assert {h.name for h in s.histograms} == {
        "ttft_seconds",
        "itl_seconds",
        "e2e_seconds",
        "queue_time_seconds",
    }
    assert hist(s, "itl_seconds").count == 3969.0
    # what vLLM does not serve is missing (never a 0 sample)
    assert set(s.missing) == {
        "kv_used_tokens",
        "kv_total_tokens",
        "cache_hit_rate",
        "gen_throughput",
        "requests_retracted",
        "sim_lag_seconds",
        "spec_decode_draft_tokens_total",
        "spec_decode_accepted_tokens_total",
        *NOT_FROM_ENGINES,
    }
    served = {x.name for x in s.samples} | {h.name for h in s.histograms}
    assert not served & set(s.missing)
    assert served | set(s.missing) == set(NEUTRAL_METRICS)


def test_real_capture_idle_then_load_is_not_a_reset_but_load_then_idle_is() -> None:
    idle = parse_scrape(IDLE, VLLM, t=1.0)
    load = parse_scrape(AFTER_LOAD, VLLM, t=2.0, previous=idle)
    assert idle.ok and load.ok
    assert not load.counter_reset
    assert values(idle, "generation_tokens_total") == {E0: 0.0}
    restarted = parse_scrape(IDLE, VLLM, t=3.0, previous=load)  # the engine restarted: counters start over
    assert restarted.counter_reset
    assert counter_reset(load, restarted) and not counter_reset(idle, load)


def test_counter_reset_seen_through_histogram_counts_only() -> None:
    before = parse_scrape(AFTER_LOAD, VLLM, t=1.0)
    # same counters, but the TTFT histogram started over (every bucket and its count back to 0)
    lines = []
    for line in AFTER_LOAD.splitlines():
        if line.startswith(
            ("vllm:time_to_first_token_seconds_bucket", "vllm:time_to_first_token_seconds_count")
        ):
            line = line.rsplit(" ", 1)[0] + " 0.0"
        lines.append(line)
    text = "\n".join(lines) + "\n"
    assert text != AFTER_LOAD
    after = parse_scrape(text, VLLM, t=2.0, previous=before)
    assert hist(after, "ttft_seconds").count == 0.0
    assert after.counter_reset


def test_gauges_going_down_are_not_resets_and_failed_previous_is_ignored() -> None:
    a = parse_scrape('vllm:num_requests_running{engine="0"} 5\n', VLLM, t=1.0)
    b = parse_scrape('vllm:num_requests_running{engine="0"} 1\n', VLLM, t=2.0, previous=a)
    assert not b.counter_reset
    bad = failed_scrape(3.0, 0.1, "boom")
    c = parse_scrape(IDLE, VLLM, t=4.0, previous=bad)
    assert c.ok and not c.counter_reset


def test_vllm_011_with_hidden_metrics_prefers_new_names_and_keeps_engines_apart() -> None:
    s = parse_scrape(VLLM_011, VLLM, t=1.0)
    assert s.ok
    assert values(s, "kv_cache_usage") == {E0: 0.6125, E1: 0.5}
    assert values(s, "requests_running") == {E0: 17.0, E1: 15.0}
    assert values(s, "requests_waiting") == {E0: 4.0, E1: 2.0}
    assert values(s, "prefix_cache_hits_total") == {E0: 40000.0, E1: 30000.0}
    assert hist(s, "itl_seconds", E1).count == 701221.0
    assert hist(s, "ttft_seconds", E1).count == 259.0
    assert len([h for h in s.histograms if h.name == "e2e_seconds"]) == 2
    assert "kv_cache_usage" not in s.missing


def test_new_name_wins_over_old_when_both_are_served() -> None:
    text = (
        '# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{engine="0"} 0.25\n'
        '# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc{engine="0"} 0.75\n'
    )
    assert values(parse_scrape(text, VLLM, t=0.0), "kv_cache_usage") == {E0: 0.25}


def test_vllm_010_names_fall_back() -> None:
    s = parse_scrape(VLLM_010, VLLM, t=1.0)
    assert s.ok
    assert values(s, "kv_cache_usage") == {E0: 0.61, E1: 0.5}  # from gpu_cache_usage_perc
    assert values(s, "prefix_cache_queries_total") == {E0: 120400.0, E1: 98000.0}  # gpu_prefix_cache_*
    assert hist(s, "itl_seconds").count == 880110.0  # from time_per_output_token_seconds
    assert "itl_seconds" not in s.missing and "kv_cache_usage" not in s.missing


def test_sglang_keeps_tp_rank_0_renames_dp_rank_and_derives_exact_kv_usage() -> None:
    s = parse_scrape(SGLANG, adapter_for("sglang"), t=1.0)
    assert s.ok
    lab0 = (("engine", "0"), ("engine_type", "unified"), ("moe_ep_rank", "0"), ("pp_rank", "0"))
    lab1 = (("engine", "1"), ("engine_type", "unified"), ("moe_ep_rank", "0"), ("pp_rank", "0"))
    assert values(s, "requests_running") == {lab0: 12.0, lab1: 9.0}  # tp_rank 1 duplicates dropped
    assert values(s, "requests_waiting") == {lab0: 3.0, lab1: 0.0}
    assert values(s, "kv_cache_usage") == {lab0: 91234 / 180000, lab1: 40111 / 180000}  # not the rounded 0.51
    assert values(s, "kv_used_tokens") == {lab0: 91234.0, lab1: 40111.0}
    assert values(s, "kv_total_tokens") == {lab0: 180000.0, lab1: 180000.0}
    assert values(s, "cache_hit_rate") == {lab0: 0.42, lab1: 0.38}
    assert values(s, "gen_throughput") == {lab0: 1834.5, lab1: 1412.25}
    assert values(s, "requests_retracted") == {lab0: 1.0, lab1: 0.0}
    assert values(s, "preemptions_total") == {lab0: 7.0, lab1: 2.0}
    assert values(s, "prefix_cache_hits_total") == {lab0: 21000.0, lab1: 15008.0}
    assert values(s, "prefix_cache_queries_total") == values(s, "prompt_tokens_total")
    assert values(s, "request_success_total") == {lab0: 401.0, lab1: 322.0}
    assert all("tp_rank" not in dict(x.labels) for x in s.samples)
    assert hist(s, "ttft_seconds", lab0).count == 401.0
    assert hist(s, "queue_time_seconds", lab1).counts[0] == 322.0
    assert len(s.histograms) == 8  # 4 families x 2 dp ranks
    assert set(s.missing) == {
        "kv_total_blocks",  # SGLang's capacity is kv_total_tokens
        "sim_lag_seconds",
        "spec_decode_draft_tokens_total",
        "spec_decode_accepted_tokens_total",
        *NOT_FROM_ENGINES,
    }


def test_sglang_without_kv_tokens_uses_token_usage() -> None:
    s = parse_scrape(SGLANG_OLD, adapter_for("sglang"), t=1.0)
    assert s.ok
    (v,) = values(s, "kv_cache_usage").values()
    assert v == 0.27
    assert "kv_used_tokens" in s.missing and "ttft_seconds" in s.missing


def test_sim_adapter_reads_the_lag_gauge_and_vllm_adapter_ignores_it() -> None:
    text = AFTER_LOAD + "# TYPE rllmtop_sim_lag_seconds gauge\nrllmtop_sim_lag_seconds 0.004\n"
    sim = parse_scrape(text, adapter_for("sim"), t=1.0)
    assert values(sim, "sim_lag_seconds") == {(): 0.004}
    assert "sim_lag_seconds" not in sim.missing
    vl = parse_scrape(text, VLLM, t=1.0)
    assert "sim_lag_seconds" in vl.missing and not values(vl, "sim_lag_seconds")


def test_unknown_adapter_reads_both_vocabularies() -> None:
    a = adapter_for("unknown")
    assert values(parse_scrape(AFTER_LOAD, a, t=0), "generation_tokens_total") == {E0: 4032.0}
    assert len(values(parse_scrape(SGLANG, a, t=0), "requests_running")) == 2


def test_empty_body_is_ok_with_everything_missing() -> None:
    s = parse_scrape("", VLLM, t=1.0)
    assert s.ok and set(s.missing) == set(NEUTRAL_METRICS) and not s.samples


@pytest.mark.parametrize(
    "text",
    [
        "<html><body>502 Bad Gateway</body></html>",
        "\x00\x01\x02",
        '{engine="0"} 1\n',
        '{"status": "error"}',
        "\n\n  <!doctype html>",
    ],
)
def test_a_body_that_is_not_prometheus_text_is_a_failed_scrape(text: str) -> None:
    s = parse_scrape(text, VLLM, t=2.0, latency_s=0.5, url="http://127.0.0.1:8000/metrics", engine_id="e")
    assert not s.ok and s.engine_id == "e"
    assert s.error.startswith("http://127.0.0.1:8000/metrics: malformed metrics text: not Prometheus text")
    assert "\n" not in s.error and len(s.error) <= 300
    assert s.samples == () and s.histograms == () and s.missing == ()
    assert s.t == 2.0 and s.latency_s == 0.5


GOOD_LINES = 'vllm:num_requests_waiting{engine="0"} 3\n'


@pytest.mark.parametrize(
    ("bad", "series", "reason"),
    [
        ('vllm:num_requests_running{engine="0} 1\n', 'vllm:num_requests_running{engine="0} 1', "malformed"),
        ("vllm:num_requests_running abc\n", "vllm:num_requests_running", "not a number"),
        ("vllm:num_requests_running 1_000\n", "vllm:num_requests_running", "not a number"),
        ('vllm:num_requests_running{engine="0",engine="1"} 1\n', "vllm:num_requests_running", "twice"),
        (
            'vllm:num_requests_running{engine="0"} NaN\n',
            'vllm:num_requests_running{engine="0"}',
            "not finite",
        ),
        ('vllm:num_requests_running{engine="0"} -1\n', 'vllm:num_requests_running{engine="0"}', "below 0"),
        (
            'vllm:kv_cache_usage_perc{engine="0"} 7.0\n',
            'vllm:kv_cache_usage_perc{engine="0"}',
            "outside 0..1",
        ),
        ('vllm:kv_cache_usage_perc{engine="0"} -1\n', 'vllm:kv_cache_usage_perc{engine="0"}', "outside 0..1"),
        ('vllm:kv_cache_usage_perc{engine="0"} +Inf\n', 'vllm:kv_cache_usage_perc{engine="0"}', "not finite"),
        ('vllm:prompt_tokens_total{engine="0"} -5\n', 'vllm:prompt_tokens_total{engine="0"}', "below 0"),
        ('vllm:prompt_tokens_total{engine="0"} +Inf\n', 'vllm:prompt_tokens_total{engine="0"}', "not finite"),
    ],
)
def test_one_bad_scalar_costs_that_sample_only(bad: str, series: str, reason: str) -> None:
    p = parse_metrics(bad + GOOD_LINES + IDLE, VLLM, t=1.0, engine_id="e")
    assert p.scrape.ok and p.scrape.engine_id == "e"
    assert values(p.scrape, "requests_waiting")[E0] == 3.0  # the first of the duplicated series is kept
    assert values(p.scrape, "generation_tokens_total") == {E0: 0.0}  # everything else still there
    assert [x for x in p.problems if x.series.startswith(series[:25])], p.problems
    (prob,) = [x for x in p.problems if reason in x.reason]
    assert prob.series.startswith(series[:25]) and "\n" not in prob.series + prob.reason
    assert all(math.isfinite(x.value) for x in p.scrape.samples)


def _ttft(buckets: dict[str, str], count: str = "4", total: str = "3.5") -> str:
    lines = [f'vllm:time_to_first_token_seconds_bucket{{le="{le}"}} {v}' for le, v in buckets.items()]
    lines += [
        f"vllm:time_to_first_token_seconds_count {count}",
        f"vllm:time_to_first_token_seconds_sum {total}",
    ]
    lines.append(
        'vllm:request_queue_time_seconds_bucket{le="+Inf"} 1\nvllm:request_queue_time_seconds_sum 0.5'
    )
    return "\n".join(lines) + "\nvllm:request_queue_time_seconds_count 1\n"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (_ttft({"0.5": "2", "1.0": "NaN", "+Inf": "4"}), "not a finite count"),
        (_ttft({"0.5": "2", "1.0": "+Inf", "+Inf": "4"}), "not a finite count"),
        (_ttft({"0.5": "3", "1.0": "2", "+Inf": "4"}), "decrease along le"),
        (_ttft({"0.5": "-1", "1.0": "2", "+Inf": "4"}), "not a finite count"),
        (_ttft({"0.5": "2", "fast": "3", "+Inf": "4"}), "not a number"),
        (_ttft({"0.5": "2", "NaN": "3", "+Inf": "4"}), "NaN or appears twice"),
        (_ttft({"0.5": "2", "+Inf": "4"}, count="1"), "below a bucket count"),
        (_ttft({"0.5": "2", "+Inf": "4"}, count="NaN"), "not a finite count"),
        (_ttft({"0.5": "2", "+Inf": "4"}, total="+Inf"), "_sum"),
        ("vllm:time_to_first_token_seconds_bucket 1\n" + _ttft({"+Inf": "4"}), "without an le"),
    ],
)
def test_one_bad_histogram_costs_that_histogram_only(text: str, reason: str) -> None:
    p = parse_metrics(text, VLLM, t=1.0)
    assert p.scrape.ok
    assert "ttft_seconds" in p.scrape.missing and "queue_time_seconds" not in p.scrape.missing
    assert [x.reason for x in p.problems if reason in x.reason], p.problems
    assert p.problems[0].series.startswith("vllm:time_to_first_token_seconds")


def test_a_cache_config_info_without_blocks_yet_is_missing_not_zero() -> None:
    s = parse_scrape('vllm:cache_config_info{engine="0",num_gpu_blocks="None"} 1\n', VLLM, t=0.0)
    assert s.ok and "kv_total_blocks" in s.missing and not values(s, "kv_total_blocks")
    s = parse_scrape('vllm:cache_config_info{engine="0",num_gpu_blocks="x"} 1\n', VLLM, t=0.0)
    assert "kv_total_blocks" in s.missing


def test_series_over_the_cap_are_dropped_and_counted_gauges_first() -> None:
    text = 'vllm:num_requests_running{engine="0"} 1\n' + "".join(
        f'vllm:request_success_total{{engine="0",finished_reason="r{i}"}} {i}\n' for i in range(50)
    )
    s = parse_scrape(text, VLLM, t=0.0, series_cap=10)
    assert s.ok and s.dropped_series == 41
    assert values(s, "requests_running") == {E0: 1.0}
    assert len(values(s, "request_success_total")) == 9
    assert len(s.samples) == 10


def test_the_line_budget_bounds_parsing_and_counts_the_rest() -> None:
    text = "".join(f'vllm:request_success_total{{finished_reason="r{i}"}} 1\n' for i in range(100))
    p = parse_metrics(text, VLLM, t=0.0, series_cap=2)
    assert p.skipped_lines == 100 - 2 * 2  # 2 lines per allowed series are parsed
    assert p.scrape.dropped_series == (100 - 4) + (4 - 2)
    buckets = "".join(f'vllm:time_to_first_token_seconds_bucket{{le="{i}"}} {i}\n' for i in range(100))
    p = parse_metrics(buckets + "vllm:time_to_first_token_seconds_sum 1\n", VLLM, t=0.0, series_cap=2)
    assert p.skipped_lines == 100 - 2 * 16  # buckets have a budget of their own


def test_a_body_over_the_size_cap_is_a_failed_scrape() -> None:
    s = parse_metrics(IDLE * 3, VLLM, t=0.0, url="http://h/metrics", max_bytes=len(IDLE) * 2).scrape
    assert not s.ok and "larger than" in s.error and s.error.startswith("http://h/metrics")


def test_chunked_feeding_equals_whole_body() -> None:
    whole = parse_scrape(AFTER_LOAD, VLLM, t=1.0)
    data = AFTER_LOAD.encode()
    for size in (1, 7, 100, 4096):
        flt = MetricsFilter(VLLM)
        for i in range(0, len(data), size):
            flt.feed(data[i : i + size])
        flt.finish()
        assert parse_filtered(flt, VLLM, t=1.0).scrape == whole


def test_garbage_inside_families_we_do_not_read_is_ignored() -> None:
    s = parse_scrape(AFTER_LOAD + "python_info{broken 1\n", VLLM, t=0.0)
    assert s.ok and values(s, "generation_tokens_total") == {E0: 4032.0}


def test_histogram_without_inf_bucket_gets_one_from_count() -> None:
    text = (
        "# TYPE vllm:time_to_first_token_seconds histogram\n"
        'vllm:time_to_first_token_seconds_bucket{le="0.5"} 2\n'
        'vllm:time_to_first_token_seconds_bucket{le="1.0"} 3\n'
        "vllm:time_to_first_token_seconds_count 4\n"
        "vllm:time_to_first_token_seconds_sum 3.5\n"
    )
    h = hist(parse_scrape(text, VLLM, t=0.0), "ttft_seconds", ())
    assert (
        h.bounds == (0.5, 1.0, math.inf) and h.counts == (2.0, 3.0, 4.0) and h.count == 4.0 and h.sum == 3.5
    )


# ------------------------------------------------------------------------------------------ properties

_lines = AFTER_LOAD.splitlines()


@st.composite
def mangled_capture(draw: st.DrawFn) -> str:
    """The real capture with lines dropped, duplicated, truncated or spliced with junk."""
    out = []
    for line in _lines[draw(st.integers(0, 300)) :][: draw(st.integers(0, 500))]:
        op = draw(st.sampled_from(["keep"] * 6 + ["drop", "dup", "cut", "junk"]))
        if op == "keep":
            out.append(line)
        elif op == "dup":
            out += [line, line]
        elif op == "cut":
            out.append(line[: draw(st.integers(0, max(0, len(line) - 1)))])
        elif op == "junk":
            i = draw(st.integers(0, len(line)))
            out.append(line[:i] + draw(st.text(max_size=8)) + line[i:])
    return "\n".join(out)


def _check_never_raises(text: str) -> None:
    for kind in ("vllm", "sglang", "sim", "unknown"):
        p = parse_metrics(text, adapter_for(kind), t=1.0, url="http://127.0.0.1:9/metrics")
        s = p.scrape
        if s.ok:
            assert set(s.missing) | {x.name for x in s.samples} | {h.name for h in s.histograms} == set(
                NEUTRAL_METRICS
            )
            assert all(math.isfinite(x.value) for x in s.samples)  # what leaves prom.py is finite
            assert all(0.0 <= x.value <= 1.0 for x in s.samples if x.name == "kv_cache_usage")
            for h in s.histograms:
                assert len(h.bounds) == len(h.counts) and math.isinf(h.bounds[-1])
                assert list(h.bounds) == sorted(h.bounds) and list(h.counts) == sorted(h.counts)
                assert all(math.isfinite(c) and c >= 0 for c in h.counts)
                assert math.isfinite(h.sum) and math.isfinite(h.count)
            assert all(isinstance(x.series, str) and "\n" not in x.series + x.reason for x in p.problems)
        else:
            assert s.error.startswith("http://127.0.0.1:9/metrics: ") and "\n" not in s.error
            assert "not Prometheus text" in s.error


_BAD_VALUES = ["NaN", "+Inf", "-Inf", "-1", "7.0", "abc", "1_0", "", "0x10", "1e999", "--1"]


@st.composite
def bad_values_capture(draw: st.DrawFn) -> tuple[str, int]:
    """The real capture with the values of some mapped series replaced by bad ones."""
    out, n = [], 0
    for line in _lines:
        if line.startswith("vllm:") and draw(st.integers(0, 9)) == 0:
            line = line.rsplit(" ", 1)[0] + " " + draw(st.sampled_from(_BAD_VALUES))
            n += 1
        out.append(line)
    return "\n".join(out) + "\n", n


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad_values_capture())
def test_bad_values_cost_samples_never_the_scrape(case: tuple[str, int]) -> None:
    text, n_bad = case
    _check_never_raises(text)
    p = parse_metrics(text, VLLM, t=1.0)
    assert p.scrape.ok
    if n_bad == 0:
        assert p.scrape == parse_scrape(AFTER_LOAD, VLLM, t=1.0)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mangled_capture())
def test_mangled_captures_never_raise(text: str) -> None:
    _check_never_raises(text)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_arbitrary_text_never_raises(text: str) -> None:
    _check_never_raises(text)


_GAUGES = {n: w[0] for n, w in VLLM.scalars.items() if NEUTRAL_METRICS[n] is MetricKind.GAUGE}
_RANGE = {"kv_cache_usage": (0.0, 1.0)}  # the other vLLM gauges: >= 0
_any_float = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64), st.sampled_from([0.0, 1.0, -0.0, 1e-300])
)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(sorted(_GAUGES)), st.lists(_any_float, min_size=1, max_size=4), min_size=1
    )
)
def test_gauge_values_round_trip_exactly_or_are_dropped_with_a_reason(served: dict[str, list[float]]) -> None:
    lines = []
    for neutral, vals in served.items():
        wire = _GAUGES[neutral]
        lines.append(f"# TYPE {wire} gauge")
        lines += [f'{wire}{{engine="{i}",model_name="m"}} {v!r}' for i, v in enumerate(vals)]
    p = parse_metrics("\n".join(lines) + "\n", VLLM, t=0.0)
    s = p.scrape
    assert s.ok
    n_bad = 0
    for neutral, vals in served.items():
        lo, hi = _RANGE.get(neutral, (0.0, math.inf))
        want = {(("engine", str(i)),): v for i, v in enumerate(vals) if math.isfinite(v) and lo <= v <= hi}
        n_bad += len(vals) - len(want)
        assert values(s, neutral) == want
        assert (neutral in s.missing) == (not want)
    assert len(p.problems) == n_bad
    assert all(math.isfinite(x.value) for x in s.samples)


# -------------------------------------------------------------------- against prometheus-client's parser

_label_value = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_wire = sorted(n for ws in adapter_for("unknown").scalars.values() for n in ws)


@st.composite
def valid_exposition(draw: st.DrawFn) -> tuple[str, list[tuple[str, dict[str, str], float]]]:
    """Valid text (escapes, odd spacing, timestamps, NaN/Inf) and the samples it holds."""
    out, lines, seen = [], [], set()
    for _ in range(draw(st.integers(1, 12))):
        name = draw(st.sampled_from(_wire))
        labels = draw(
            st.dictionaries(st.sampled_from(["engine", "a", "le_x", "reason"]), _label_value, max_size=3)
        )
        key = (name, tuple(sorted(labels.items())))
        if key in seen:
            continue
        seen.add(key)
        value = draw(st.one_of(st.floats(width=64), st.integers(-(10**6), 10**12).map(float)))
        esc = {k: v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for k, v in labels.items()}
        inner = ",".join(f'{k}="{v}"' for k, v in esc.items())
        sep = draw(st.sampled_from([" ", "\t", "  "]))
        vtext = {math.inf: "+Inf", -math.inf: "-Inf"}.get(value, "NaN" if math.isnan(value) else repr(value))
        ts = draw(st.sampled_from(["", " 1712345678000"]))
        lines.append(
            f"{name}{{{inner}}}{sep}{vtext}{ts}" if labels or draw(st.booleans()) else f"{name} {vtext}{ts}"
        )
        out.append((name, labels, value))
    return "\n".join(lines) + "\n", out


@settings(max_examples=200, deadline=None)
@given(valid_exposition())
def test_the_line_parser_agrees_with_prometheus_client(case: tuple[str, list]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    text, _ = case
    theirs = [
        (s.name, dict(s.labels), s.value) for f in text_string_to_metric_families(text) for s in f.samples
    ]
    flt = MetricsFilter(adapter_for("unknown"))
    flt.feed(text.encode())
    flt.finish()
    problems: list = []
    ours = list(_parse_lines(flt.lines, problems))
    assert not problems
    assert len(ours) == len(theirs)
    order = lambda x: (x[0], sorted(x[1].items()))  # noqa: E731  (the filter groups lines by name prefix)
    for (n1, l1, v1), (n2, l2, v2) in zip(sorted(ours, key=order), sorted(theirs, key=order), strict=True):
        assert (n1, l1) == (n2, l2)
        assert v1 == v2 or (math.isnan(v1) and math.isnan(v2))


# ------------------------------------------------------------------------------------------ GPU telemetry

DCGM = (FIX / "dcgm-exporter" / "metrics_2gpu_k8s.txt").read_text()


def test_dcgm_exporter_text_maps_to_gpu_names_keeping_only_the_gpu_label() -> None:
    p = parse_metrics(DCGM, adapter_for("dcgm"), t=1.0)
    s = p.scrape
    assert s.ok and not p.problems  # MEMORY_TEMP's blank value is in a family rllmtop does not read
    g0, g1 = (("gpu", "0"),), (("gpu", "1"),)
    assert values(s, "gpu_util_percent") == {g0: 97.0, g1: 0.0}
    assert values(s, "gpu_fb_used_mib") == {g0: 76483.0, g1: 0.0}
    assert values(s, "gpu_fb_free_mib") == {g0: 4521.0, g1: 81004.0}
    assert values(s, "gpu_power_watts") == {g0: 612.347, g1: 71.02}
    assert values(s, "gpu_temp_celsius") == {g0: 61.0, g1: 38.0}
    assert values(s, "gpu_sm_clock_mhz") == {g0: 1980.0, g1: 345.0}
    assert {n for n in NEUTRAL_METRICS if n.startswith("gpu_")}.isdisjoint(s.missing)
    assert "kv_cache_usage" in s.missing


def test_a_dcgm_blank_or_out_of_range_gpu_value_is_dropped() -> None:
    text = DCGM.replace('pod="vllm-0"} 61\n', 'pod="vllm-0"} 9223372036854775794\n').replace(
        'pod="vllm-0"} 97\n', 'pod="vllm-0"} 140\n'
    )
    p = parse_metrics(text, adapter_for("dcgm"), t=1.0)
    assert values(p.scrape, "gpu_temp_celsius") == {(("gpu", "1"),): 38.0}
    assert values(p.scrape, "gpu_util_percent") == {(("gpu", "1"),): 0.0}
    assert sorted(x.series.split("{")[0] for x in p.problems) == [
        "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_GPU_UTIL",
    ]


def test_sim_adapter_reads_drift_and_speed_with_the_gauge_fallback() -> None:
    sim = adapter_for("sim")
    text = IDLE + "rllmtop_sim_drift_seconds_total 12.5\nrllmtop_sim_speed 10\n"
    s = parse_scrape(text, sim, t=1.0)
    assert values(s, "sim_drift_seconds") == {(): 12.5} and values(s, "sim_speed") == {(): 10.0}
    s = parse_scrape(IDLE + "rllmtop_sim_drift_seconds 3\n", sim, t=1.0)
    assert values(s, "sim_drift_seconds") == {(): 3.0} and "sim_speed" in s.missing
    before = parse_scrape(text, sim, t=1.0)
    after = parse_scrape(IDLE + "rllmtop_sim_drift_seconds_total 0.5\n", sim, t=2.0, previous=before)
    assert after.counter_reset  # drift is a counter: a restarted simulator shows as a reset
    assert parse_scrape(IDLE + "rllmtop_sim_speed 0\n", sim, t=1.0).missing.count("sim_speed") == 1
