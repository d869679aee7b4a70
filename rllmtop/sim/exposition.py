"""``/metrics``: the engine's state and statistics under vLLM's metric names, via prometheus-client.

Every ``vllm:`` series carries ``engine="0"`` and ``model_name``; counters get ``_total`` and
``_created``, histograms vLLM's bucket bounds. Durations of the ``vllm:`` histograms are model
(simulated) seconds at any ``--speed``: the clock of a time-lapse client (wall x speed).

The simulator's own health lives under ``rllmtop_sim_``:

- ``rllmtop_sim_drift_seconds_total`` (counter, model seconds): how far the served loop fell behind the
  model's schedule, cumulative; every request's latencies are inflated by the drift that accrued while
  it was in flight (see :mod:`rllmtop.sim.server`). 0 on a host that keeps up.
- ``rllmtop_sim_speed`` (gauge): the server's ``--speed`` (model seconds per wall second).
- ``rllmtop_sim_lag_seconds`` (gauge, wall seconds): how late the last iteration was emitted;
  ``rllmtop_sim_iteration_lag_seconds`` (histogram, wall seconds) of every iteration.
- ``rllmtop_sim_iterations_total``, ``rllmtop_sim_resyncs_total`` (times the drift grew),
  ``rllmtop_sim_kv_capacity_tokens``, ``rllmtop_sim_open_streams``, ``rllmtop_sim_info``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from rllmtop.sim.engine import Engine, Histogram

__all__ = ["LAG_BUCKETS", "SimCollector", "make_registry"]

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

_HIST_HELP = {
    "time_to_first_token_seconds": "Histogram of time to first token in seconds.",
    "inter_token_latency_seconds": "Histogram of inter-token latency in seconds.",
    "request_time_per_output_token_seconds": "Histogram of time_per_output_token_seconds per request.",
    "e2e_request_latency_seconds": "Histogram of e2e request latency in seconds.",
    "request_queue_time_seconds": "Histogram of time spent in WAITING phase for request.",
    "request_inference_time_seconds": "Histogram of time spent in RUNNING phase for request.",
    "request_prefill_time_seconds": "Histogram of time spent in PREFILL phase for request.",
    "request_decode_time_seconds": "Histogram of time spent in DECODE phase for request.",
    "iteration_tokens_total": "Histogram of number of tokens per engine_step.",
    "request_num_preemptions": "Histogram of the number of times a request was preempted.",
    "request_params_n": "Histogram of the n request parameter.",
    "request_prompt_tokens": "Number of prefill tokens processed.",
    "request_generation_tokens": "Number of generation tokens processed.",
    "request_max_num_generation_tokens": "Histogram of maximum number of requested generation tokens.",
    "request_params_max_tokens": "Histogram of the max_tokens request parameter.",
    "request_prefill_kv_computed_tokens": (
        "Histogram of new KV tokens computed during prefill (excluding cached tokens)."
    ),
}


def _hist(name: str, doc: str, labels: list[str], values: list[str], h: Histogram) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=labels)
    fam.add_metric(values, h.cumulative(), h.sum)
    return fam


class SimCollector(Collector):
    """Reads the engine (and the server's lag figures) at scrape time."""

    def __init__(
        self,
        engine: Engine,
        model_name: str,
        created: float,
        *,
        info: dict[str, str],
        cache_info: dict[str, str],
        server_stats: Callable[[], dict[str, Any]],
    ) -> None:
        self.engine = engine
        self.model_name = model_name
        self.created = created
        self.info = info
        self.cache_info = cache_info
        self.server_stats = server_stats

    def collect(self) -> Iterator[Metric]:
        e = self.engine
        st = e.stats
        base_l = ["engine", "model_name"]
        base_v = ["0", self.model_name]
        created = self.created

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=base_l)
            g.add_metric(base_v, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=base_l)
            c.add_metric(base_v, value, created=created)
            return c

        yield gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.", e.num_running
        )
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", e.num_waiting)
        g = GaugeMetricFamily(
            "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason.",
            labels=["engine", "model_name", "reason"],
        )
        g.add_metric([*base_v, "capacity"], e.num_waiting)
        g.add_metric([*base_v, "deferred"], 0)
        yield g
        g = GaugeMetricFamily(
            "vllm:engine_sleep_state", "Engine sleep state.", labels=["engine", "model_name", "sleep_state"]
        )
        for state, v in (("awake", 1), ("weights_offloaded", 0), ("discard_all", 0)):
            g.add_metric([*base_v, state], v)
        yield g
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", e.kv_usage)
        yield counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            st.prefix_cache_queries,
        )
        yield counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            st.prefix_cache_hits,
        )
        yield counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine.", st.preemptions
        )
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", st.prompt_tokens)
        c = CounterMetricFamily(
            "vllm:prompt_tokens_by_source",
            "Number of prompt tokens by source.",
            labels=["engine", "model_name", "source"],
        )
        c.add_metric([*base_v, "local_compute"], st.prompt_tokens - st.prompt_tokens_cached, created=created)
        c.add_metric([*base_v, "local_cache_hit"], st.prompt_tokens_cached, created=created)
        c.add_metric([*base_v, "external_kv_transfer"], 0, created=created)
        yield c
        yield counter(
            "vllm:prompt_tokens_cached",
            "Number of cached prompt tokens (local + external).",
            st.prompt_tokens_cached,
        )
        yield counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", st.generation_tokens
        )
        c = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=["engine", "finished_reason", "model_name"],
        )
        for reason, n in st.finished.items():
            c.add_metric(["0", reason, self.model_name], n, created=created)
        yield c
        if e.config.spec_tokens:
            yield counter("vllm:spec_decode_num_drafts", "Number of spec decoding drafts.", st.spec_drafts)
            yield counter(
                "vllm:spec_decode_num_draft_tokens", "Number of draft tokens.", st.spec_draft_tokens
            )
            yield counter(
                "vllm:spec_decode_num_accepted_tokens", "Number of accepted tokens.", st.spec_accepted_tokens
            )
        for name, h in st.histograms.items():
            yield _hist(f"vllm:{name}", _HIST_HELP.get(name, name), base_l, base_v, h)
        g = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labels=sorted(["engine", *self.cache_info]),
        )
        labels = {"engine": "0", **self.cache_info}
        g.add_metric([labels[k] for k in sorted(labels)], 1.0)
        yield g

        # the simulator's own health
        s = self.server_stats()
        yield GaugeMetricFamily(
            "rllmtop_sim_lag_seconds",
            "How far behind the model's schedule the server emitted its last iteration (wall seconds).",
            value=s["lag"],
        )
        lag_h: Histogram = s["lag_histogram"]
        hf = HistogramMetricFamily(
            "rllmtop_sim_iteration_lag_seconds",
            "Per-iteration lag behind the model's schedule (wall seconds).",
        )
        hf.add_metric([], lag_h.cumulative(), lag_h.sum)
        yield hf
        yield CounterMetricFamily(
            "rllmtop_sim_iterations", "Engine iterations run.", value=st.iterations, created=created
        )
        yield CounterMetricFamily(
            "rllmtop_sim_resyncs",
            "Times the server fell more than its catch-up tolerance behind and stretched the model clock.",
            value=s["resyncs"],
            created=created,
        )
        yield CounterMetricFamily(
            "rllmtop_sim_drift_seconds",
            "Model seconds the served loop fell behind the model's schedule (cumulative): latencies a "
            "client sees are inflated by the drift accrued while each request was in flight.",
            value=s["drift"],
            created=created,
        )
        yield GaugeMetricFamily(
            "rllmtop_sim_speed",
            "The server's --speed: model seconds per wall second (latencies are divided by it).",
            value=s["speed"],
        )
        yield GaugeMetricFamily(
            "rllmtop_sim_kv_capacity_tokens", "KV-cache capacity in tokens.", value=e.config.capacity_tokens
        )
        yield GaugeMetricFamily(
            "rllmtop_sim_open_streams", "Streaming responses in progress.", value=s["open_streams"]
        )
        g = GaugeMetricFamily("rllmtop_sim_info", "The rllmtop simulator.", labels=sorted(self.info))
        g.add_metric([self.info[k] for k in sorted(self.info)], 1.0)
        yield g


def make_registry(collector: SimCollector) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg
