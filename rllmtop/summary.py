"""ASU tables and the headless summary, as text, Markdown and HTML; the ``--save-result`` JSON.

Numbers come from :mod:`rllmtop.metrics.analysis`, their formatting from :mod:`rllmtop.fmt`; this module
only lays them out. One row model (:class:`Table`) with three renderers, and one column definition
(:data:`COLUMNS`) for every face that shows an ASU table: the headless summary, replay, reports and
comparisons. :class:`SummaryView` picks the latency columns and percentiles (``--percentile-metrics``,
``--metric-percentiles``, as ``vllm bench serve`` names them).

The ``--save-result`` JSON (:func:`result_json`) uses ``vllm bench serve``'s key names where the meaning is
the same, in vLLM's units (milliseconds, per second):

- run: ``date`` (UTC, ``%Y%m%d-%H%M%S``), ``backend`` / ``endpoint_type`` (``openai-chat`` for the chat
  API, ``openai`` for completions), ``label``, ``model_id``, ``num_prompts`` (planned; None when
  open-ended), ``request_rate`` (``"inf"`` for all at once), ``burstiness``, ``max_concurrency``,
  ``ramp_up_strategy`` / ``ramp_up_start_rps`` / ``ramp_up_end_rps`` (with a ramp-up), ``duration``
  (seconds from the first request start to the last end);
- counts and rates: ``completed`` (ended ok), ``failed`` (errors and cancelled), ``total_input_tokens``
  (prompt tokens of the completed ones, from usage; None when the engine reported none),
  ``total_output_tokens``, ``request_throughput``, ``request_goodput`` (None without goodput SLOs),
  ``output_throughput``, ``total_token_throughput``, ``max_output_tokens_per_s`` and
  ``max_concurrent_requests`` (1-second buckets, as vLLM counts them);
- per metric of ``--percentile-metrics`` (``ttft``, ``tpot``, ``itl``, ``e2el``; default all four):
  ``mean_<m>_ms``, ``median_<m>_ms``, ``std_<m>_ms`` and ``p<q>_<m>_ms`` for each ``--metric-percentiles``
  q (default 50, 90, 99). TTFT: first token of any kind (reasoning included); TPOT per request; ITL: every
  inter-chunk gap of every completed request pooled (vLLM's meaning; rllmtop's tables show the mean gap
  per request instead); E2EL: start to end. Over completed requests, from their latency start.

rllmtop's own keys: ``mean_ttfvt_ms`` / ``median_ttfvt_ms`` / ``std_ttfvt_ms`` / ``p<q>_ttfvt_ms`` (time to
first visible token, over completed requests that showed one), ``good`` and ``answer_token_goodput``
(answer tokens/s of good requests), ``goodput_slo_s`` (the per-request SLOs, seconds),
``total_reasoning_tokens``, ``total_answer_tokens``, ``mean_reasoning_tokens``,
``median_reasoning_tokens``, ``p<q>_reasoning_tokens``, ``truncated`` (finish_reason length),
``no_visible`` (never showed an answer), ``cancelled``, ``accuracy`` (None when nothing was graded),
``scenario``, ``seed``, ``engine_kind``, ``engine_version``, ``clock`` (``wall`` | ``simulated``: every time
above is on it) and ``speed``, ``status`` and ``status_detail``, ``trust_warnings`` (sentences saying
which numbers cannot be trusted), ``recording``, ``rllmtop_version``.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from rllmtop import fmt
from rllmtop.errors import UserError
from rllmtop.events import RequestRecord, RequestStatus, SessionInfo
from rllmtop.metrics.analysis import (
    PCTS,
    AsuSummary,
    ClassSummary,
    RequestColumns,
    asu_summary,
    chunk_gaps,
    peak_load,
)

__all__ = [
    "COLUMNS",
    "GOODPUT_COLUMNS",
    "PERCENTILE_METRICS",
    "Column",
    "SummaryView",
    "Table",
    "asu_table",
    "class_table",
    "columns_for",
    "format_summary",
    "goodput_line",
    "markdown_table",
    "parse_metric_percentiles",
    "parse_percentile_metrics",
    "result_filename",
    "result_json",
    "summary_notes",
    "text_table",
    "write_result",
]


@dataclass(frozen=True)
class Table:
    """Cells already formatted, and which columns are right-aligned (numbers)."""

    head: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    right: tuple[bool, ...]

    @classmethod
    def of(
        cls, head: Sequence[str], rows: Iterable[Sequence[str]], right: Sequence[bool] | None = None
    ) -> Table:
        """``right`` defaults to: every column but the first."""
        h = tuple(head)
        r = tuple(right) if right is not None else tuple(i > 0 for i in range(len(h)))
        body = tuple(tuple(row) for row in rows)
        if len(r) != len(h) or any(len(row) != len(h) for row in body):
            raise ValueError("every row needs one cell per column")
        return cls(h, body, r)

    def text(self) -> str:
        """Fixed width, for a terminal."""
        cells = [self.head, *self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.head))]
        lines = [
            "  ".join(
                c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, self.right, strict=True)
            ).rstrip()
            for row in cells
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def markdown(self) -> str:
        def esc(c: str) -> str:
            return c.replace("|", "\\|")

        lines = [
            "| " + " | ".join(esc(h) for h in self.head) + " |",
            "|" + "|".join("---:" if r else "---" for r in self.right) + "|",
        ]
        lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def html(self) -> str:
        def cell(tag: str, text: str, r: bool) -> str:
            attr = ' class="r"' if r else ""
            return f"<{tag}{attr}>{html.escape(text)}</{tag}>"

        out = [
            "<table>",
            "<tr>" + "".join(cell("th", h, r) for h, r in zip(self.head, self.right, strict=True)) + "</tr>",
        ]
        for row in self.rows:
            out.append(
                "<tr>" + "".join(cell("td", c, r) for c, r in zip(row, self.right, strict=True)) + "</tr>"
            )
        out.append("</table>")
        return "\n".join(out)


@dataclass(frozen=True)
class Column:
    title: str
    get: Callable[[ClassSummary], str]
    help: str
    right: bool = True


def _pair(a: float | None, b: float | None) -> str:
    return f"{fmt.tokens(a)}/{fmt.tokens(b)}"


COLUMNS: tuple[Column, ...] = (
    Column("class", lambda c: c.name, "request class from the scenario", right=False),
    Column("reqs", lambda c: fmt.count(c.requests), "requests that ended"),
    Column("err", lambda c: fmt.count(c.errors + c.cancelled), "errors + cancelled"),
    Column("acc", lambda c: fmt.percent(c.accuracy), "A: correct / graded"),
    Column(
        "tok/s", lambda c: fmt.rate(c.output_tps), "S: output tokens (reasoning + answer) / span of the class"
    ),
    Column("TTFT p50/90/99", lambda c: fmt.seconds_trio(c.ttft), "first token of any kind"),
    Column("TTFVT p50/90/99", lambda c: fmt.seconds_trio(c.ttfvt), "U: first visible (answer) token"),
    Column("E2E p50/90/99", lambda c: fmt.seconds_trio(c.e2e), "U: end-to-end latency"),
    Column(
        "reason p50/p99",
        lambda c: _pair(c.reasoning_len[50], c.reasoning_len[99]),
        "reasoning tokens per request",
    ),
    Column("cut", lambda c: fmt.count(c.truncated), "finish_reason=length (hit max_tokens)"),
    Column("strag", lambda c: fmt.count(c.stragglers), "stragglers (rule below)"),
    Column(
        "lag p99",
        lambda c: fmt.seconds(c.send_lag[99]),
        "client send lag p99 (the write minus the schedule, minus any cap wait and connect time)",
    ),
)

GOODPUT_COLUMNS: tuple[Column, ...] = (
    Column("good", lambda c: fmt.count(c.good), "requests that ended ok and met every goodput SLO"),
    Column("good req/s", lambda c: fmt.rate(c.goodput_rps), "goodput: good requests / the run's span"),
    Column(
        "good tok/s",
        lambda c: fmt.rate(c.goodput_tps),
        "goodput: answer tokens of good requests / the run's span",
    ),
)


def columns_for(summary: AsuSummary) -> tuple[Column, ...]:
    """:data:`COLUMNS`, plus :data:`GOODPUT_COLUMNS` when the summary has goodput SLOs."""
    return (*COLUMNS, *GOODPUT_COLUMNS) if summary.goodput else COLUMNS


def _rows(summary: AsuSummary) -> list[ClassSummary]:
    rows = list(summary.classes)
    if len(rows) != 1:
        rows.append(summary.overall)
    return rows


def class_table(rows: Sequence[ClassSummary], columns: Sequence[Column]) -> Table:
    """One row per class summary, in the given columns (every ASU table is built here)."""
    return Table.of(
        [c.title for c in columns], ([c.get(r) for c in columns] for r in rows), [c.right for c in columns]
    )


def asu_table(summary: AsuSummary, columns: Sequence[Column] | None = None) -> Table:
    """One row per class plus "all" (only the class when there is one)."""
    return class_table(_rows(summary), tuple(columns) if columns is not None else columns_for(summary))


def text_table(summary: AsuSummary, columns: Sequence[Column] | None = None) -> str:
    """Fixed-width ASU table for a terminal."""
    return asu_table(summary, columns).text()


def markdown_table(summary: AsuSummary, columns: Sequence[Column] | None = None) -> str:
    return asu_table(summary, columns).markdown()


def goodput_line(summary: AsuSummary) -> str:
    """``goodput (ttfvt <= 30.00s, e2el <= 120s): 2.52 req/s, 812 answer tok/s ...``; "" without SLOs."""
    if not summary.goodput:
        return ""
    o = summary.overall
    slo = ", ".join(f"{k} <= {fmt.seconds(v)}" for k, v in summary.goodput.items())
    return (
        f"goodput ({slo}): {fmt.rate(o.goodput_rps)} req/s, {fmt.rate(o.goodput_tps)} answer tok/s; "
        f"{o.good} of {o.requests} requests met every SLO (rates over the run's "
        f"{fmt.seconds(summary.run_span_s)} from the first request start to the last end)"
    )


def turn_lines(summary: AsuSummary) -> list[str]:
    """Per turn of the conversations (none without): ``turn 2: 38 ended, TTFVT p50/90/99 ..., E2E p50 ...``."""
    out = []
    for t in summary.turns:
        out.append(
            f"turn {t.turn}: {t.requests} ended ({t.ok} ok), TTFVT p50/90/99 "
            f"{fmt.seconds_trio(t.ttfvt)}, E2E p50 {fmt.seconds(t.e2e[50])}, "
            f"reasoning p50 {fmt.tokens(t.reasoning_len[50])}"
        )
    return out


def summary_notes(summary: AsuSummary, warnings: Sequence[str] = ()) -> list[str]:
    """The lines that go with an ASU table: goodput, what it does not cover, the straggler rule, and the
    trust warnings (``analysis.trust_warnings``), each prefixed with "warning:"."""
    lines = []
    g = goodput_line(summary)
    if g:
        lines.append(g)
    if summary.overall.cancelled:
        n = summary.overall.cancelled
        lines.append(
            f"{n} request(s) cancelled by rllmtop when the run was stopped: counted in err, not engine errors"
        )
    if summary.unfinished:
        lines.append(
            f"{summary.unfinished} request(s) never ended (in flight when the recording stopped): not counted"
        )
    if summary.recent is not None:
        lines.append(f"percentiles and stragglers over the most recent {summary.recent} ended requests")
    lines += turn_lines(summary)
    lines.append(f"stragglers: {summary.straggler_rule}")
    lines += [f"warning: {w}" for w in warnings]
    return lines


def format_summary(
    summary: AsuSummary | None, warnings: Sequence[str] = (), columns: Sequence[Column] | None = None
) -> str:
    """The headless ASU summary: the table (``columns``: default :func:`columns_for`) and its notes (or
    "no requests ended")."""
    if summary is None or summary.overall.requests == 0:
        return "\n".join(["no requests ended", *(f"warning: {w}" for w in warnings)])
    return "\n".join([text_table(summary, columns), *summary_notes(summary, warnings)])


# ------------------------------------------------------------------------------------------ percentiles shown

PERCENTILE_METRICS: dict[str, tuple[str, str, str]] = {
    # --percentile-metrics name: (ClassSummary attribute, column title, what it is)
    "ttft": ("ttft", "TTFT", "first token of any kind"),
    "tpot": ("tpot", "TPOT", "per request: (last token - first token) / (output tokens - 1)"),
    "itl": ("itl", "ITL", "per request: the mean gap between two token-bearing chunks"),
    "e2el": ("e2e", "E2E", "U: end-to-end latency"),
    "ttfvt": ("ttfvt", "TTFVT", "U: first visible (answer) token"),
}
"""The metrics ``--percentile-metrics`` may name: ``vllm bench serve``'s (ttft, tpot, itl, e2el) and ttfvt."""

_DEFAULT_LATENCY = ("TTFT p50/90/99", "TTFVT p50/90/99", "E2E p50/90/99")


def parse_percentile_metrics(text: str) -> tuple[str, ...]:
    """``"ttft,tpot,e2el"`` -> ("ttft", "tpot", "e2el"); UserError naming a bad name."""
    names = [t.strip().lower() for t in text.replace(" ", ",").split(",") if t.strip()]
    hint = f"a comma-separated list of {', '.join(PERCENTILE_METRICS)}, e.g. --percentile-metrics ttft,ttfvt,e2el"
    if not names:
        raise UserError("--percentile-metrics needs at least one metric", hint)
    for n in names:
        if n not in PERCENTILE_METRICS:
            raise UserError(f"--percentile-metrics: unknown metric {n!r}", hint)
    if len(set(names)) != len(names):
        raise UserError("--percentile-metrics names a metric twice", hint)
    return tuple(names)


def parse_metric_percentiles(text: str) -> tuple[int, ...]:
    """``"25,50,99"`` -> (25, 50, 99); whole percentiles 0..100 (UserError naming a bad one)."""
    hint = "comma-separated whole percentiles from 0 to 100, e.g. --metric-percentiles 25,50,99"
    items = [t.strip() for t in text.replace(" ", ",").split(",") if t.strip()]
    if not items:
        raise UserError("--metric-percentiles needs at least one percentile", hint)
    out: list[int] = []
    for item in items:
        try:
            v = float(item)
        except ValueError:
            raise UserError(f"--metric-percentiles: {item!r} is not a number", hint) from None
        if not (0 <= v <= 100) or v != int(v):
            raise UserError(f"--metric-percentiles: {item!r} is not a whole percentile from 0 to 100", hint)
        if int(v) in out:
            raise UserError(f"--metric-percentiles names {item} twice", hint)
        out.append(int(v))
    return tuple(out)


def _trio(attr: str, qs: Sequence[int]) -> Callable[[ClassSummary], str]:
    def get(c: ClassSummary) -> str:
        return fmt.seconds_trio(getattr(c, attr), qs)

    return get


@dataclass(frozen=True)
class SummaryView:
    """Which latency columns and percentiles a summary shows. The default (no metrics given) is the
    usual table (:data:`COLUMNS`); with ``metrics``, the TTFT/TTFVT/E2E columns are replaced by one
    column per metric (in the order given) showing ``percentiles``."""

    metrics: tuple[str, ...] = ()
    percentiles: tuple[int, ...] = PCTS

    @property
    def default(self) -> bool:
        return not self.metrics and tuple(self.percentiles) == PCTS

    def columns(self, summary: AsuSummary) -> tuple[Column, ...]:
        base = columns_for(summary)
        if self.default:
            return base
        metrics = self.metrics or ("ttft", "ttfvt", "e2el")
        qs = tuple(self.percentiles)
        title_q = "/".join(f"p{q}" for q in qs)
        chosen = []
        for m in metrics:
            attr, title, what = PERCENTILE_METRICS[m]
            chosen.append(
                Column(
                    f"{title} {title_q}",
                    _trio(attr, qs),
                    what,
                )
            )
        out: list[Column] = []
        for c in base:
            if c.title in _DEFAULT_LATENCY:
                if c.title == _DEFAULT_LATENCY[0]:
                    out += chosen
                continue
            out.append(c)
        return tuple(out)

    def summary(self, records: Iterable[RequestRecord], summary: AsuSummary | None) -> AsuSummary | None:
        """``summary`` again with this view's percentiles when it lacks some (they are not all in
        :data:`PCTS`); the records are read once."""
        if summary is None or all(q in summary.overall.ttft for q in self.percentiles):
            return summary
        return asu_summary(records, goodput=summary.goodput, pcts=self.percentiles)


# ------------------------------------------------------------------------------------------ --save-result

_RESULT_METRICS = ("ttft", "tpot", "itl", "e2el")


def _ms_stats(values: np.ndarray, qs: Sequence[int], key: str) -> dict[str, float | None]:
    v = values[~np.isnan(values)] * 1000.0
    if not v.size:
        out: dict[str, float | None] = {
            f"mean_{key}_ms": None,
            f"median_{key}_ms": None,
            f"std_{key}_ms": None,
        }
        out.update({f"p{q}_{key}_ms": None for q in qs})
        return out
    out = {
        f"mean_{key}_ms": float(v.mean()),
        f"median_{key}_ms": float(np.median(v)),
        f"std_{key}_ms": float(v.std()),
    }
    for q, x in zip(qs, np.percentile(v, list(qs)), strict=True):
        out[f"p{q}_{key}_ms"] = float(x)
    return out


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def result_json(
    info: SessionInfo | None,
    records: Sequence[RequestRecord],
    *,
    goodput: Mapping[str, float] | None = None,
    view: SummaryView | None = None,
    status: str = "",
    status_detail: str = "",
    warnings: Sequence[str] = (),
    scenario: Any = None,
    recording: str | None = None,
) -> dict[str, Any]:
    """The ``--save-result`` summary of a run (keys: see the module doc). ``scenario``: the
    :class:`rllmtop.scenario.Scenario` that ran (its load settings), if any. O(n + streamed chunks)."""
    view = view or SummaryView()
    metrics = list(view.metrics or (*_RESULT_METRICS, "ttfvt"))
    qs = tuple(view.percentiles)
    cols = RequestColumns.from_records(records)
    d = cols.derived()
    ok = cols.ok
    ended = cols.ended
    s = asu_summary(cols, goodput=goodput or {}, pcts=qs)
    o = s.overall
    span = s.run_span_s
    completed = int(ok.sum())
    prompts = [r.prompt_tokens for r in records if r.status is RequestStatus.OK and r.t_done is not None]
    total_in = sum(p for p in prompts if p is not None) if any(p is not None for p in prompts) else None
    total_out = int(d["output"][ok].sum())
    peak_tps, peak_conc = peak_load(records)
    ld = getattr(scenario, "load", None)
    arr = getattr(scenario, "arrival", None)
    api = getattr(ld, "api", "chat")
    backend = "openai-chat" if api == "chat" else "openai"
    rate = getattr(arr, "rate", None)
    res: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": backend,
        "backend": backend,
        "label": info.scenario_name if info else "",
        "model_id": info.model if info else "",
        "num_prompts": info.provenance.planned_requests if info and info.provenance else None,
        "request_rate": ("inf" if rate is not None and math.isinf(rate) else rate),
        "burstiness": getattr(arr, "burstiness", None),
        "max_concurrency": getattr(ld, "max_concurrency", None),
    }
    if arr is not None and getattr(arr, "ramp_up_strategy", None):
        res["ramp_up_strategy"] = arr.ramp_up_strategy
        res["ramp_up_start_rps"] = arr.ramp_up_start_rate
        res["ramp_up_end_rps"] = arr.ramp_up_end_rate
    res.update(
        {
            "duration": span,
            "completed": completed,
            "failed": int((ended & ~ok).sum()),
            "total_input_tokens": total_in,
            "total_output_tokens": total_out,
            "request_throughput": completed / span if span > 0 else None,
            "request_goodput": o.goodput_rps if s.goodput else None,
            "output_throughput": total_out / span if span > 0 else None,
            "total_token_throughput": ((total_in or 0) + total_out) / span if span > 0 else None,
            "max_output_tokens_per_s": peak_tps,
            "max_concurrent_requests": peak_conc,
        }
    )
    series = {
        "ttft": d["ttft"][ok],
        "tpot": d["tpot"][ok],
        "itl": chunk_gaps(records),
        "e2el": d["e2e"][ok],
        "ttfvt": d["ttfvt"][ok],
    }
    for m in metrics:
        res.update(_ms_stats(np.asarray(series[m], dtype=float), qs, m))
    reasoning = cols.reasoning_tokens[ok]
    res.update(
        {
            "good": o.good if s.goodput else None,
            "answer_token_goodput": o.goodput_tps if s.goodput else None,
            "goodput_slo_s": dict(s.goodput),
            "total_reasoning_tokens": int(cols.reasoning_tokens[ok].sum()),
            "total_answer_tokens": int(cols.answer_tokens[ok].sum()),
            "mean_reasoning_tokens": float(reasoning.mean()) if reasoning.size else None,
            "median_reasoning_tokens": float(np.median(reasoning)) if reasoning.size else None,
            **{
                f"p{q}_reasoning_tokens": (float(np.percentile(reasoning, q)) if reasoning.size else None)
                for q in qs
            },
            "truncated": o.truncated,
            "no_visible": o.no_visible,
            "cancelled": o.cancelled,
            "accuracy": o.accuracy,
            "scenario": info.scenario_name if info else "",
            "seed": info.seed if info else None,
            "engine_kind": info.engine_kind if info else "",
            "engine_version": info.engine_version if info else "",
            "clock": info.clock if info else "wall",
            "speed": info.speed if info else 1.0,
            "status": status,
            "status_detail": status_detail,
            "trust_warnings": list(warnings),
            "recording": recording,
            "rllmtop_version": info.rllmtop_version if info else "",
        }
    )
    return {k: (_finite(v) if isinstance(v, float) else v) for k, v in res.items()}


def result_filename(result: Mapping[str, Any]) -> str:
    """``vllm bench serve``'s default name: ``rllmtop-<rate>qps[-concurrency<N>]-<model>-<date>.json``
    (a ramp-up: ``rllmtop-ramp-up-<strategy>-<start>qps-<end>qps...``)."""
    model = str(result.get("model_id") or "model").split("/")[-1] or "model"
    conc = f"-concurrency{result['max_concurrency']}" if result.get("max_concurrency") is not None else ""
    if result.get("ramp_up_strategy"):
        head = (
            f"rllmtop-ramp-up-{result['ramp_up_strategy']}-{result.get('ramp_up_start_rps')}qps-"
            f"{result.get('ramp_up_end_rps')}qps"
        )
    else:
        head = f"rllmtop-{result.get('request_rate')}qps"
    name = f"{head}{conc}-{model}-{result.get('date')}.json"
    return "".join(c if c.isalnum() or c in "-_.+" else "-" for c in name)


def write_result(result: Mapping[str, Any], result_dir: str | Path | None, filename: str | None) -> Path:
    """Write the ``--save-result`` JSON into ``result_dir`` (default: the current directory) as
    ``filename`` (default :func:`result_filename`); UserError naming the path when it cannot."""
    directory = Path(result_dir) if result_dir else Path(".")
    path = directory / (filename or result_filename(result))
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dict(result), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    except OSError as e:
        raise UserError(
            f"cannot write the result file {path}: {e.strerror or e}",
            "pass --result-dir DIR with a directory you can write to",
        ) from e
    return path
