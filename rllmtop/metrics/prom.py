"""The one Prometheus text parser: exposition text + an engine adapter -> a :class:`~rllmtop.events.Scrape`.

Values are kept raw (cumulative counters and histogram buckets as served); rates, windows and quantiles are
derived later by :mod:`rllmtop.metrics.analysis`. Parsing never raises: malformed text gives a Scrape with
``ok=False`` and a one-line error naming the URL.

Cost: lines of families the adapter does not read are dropped by a cheap name test before
prometheus-client's parser sees them (a full vLLM scrape of ~50 KB parses in about a millisecond instead
of several); lines that do not even start with a metric name are kept, so garbage is still reported.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from rllmtop.engines.adapters import EngineAdapter
from rllmtop.events import NEUTRAL_METRICS, HistogramSample, Labels, MetricKind, MetricSample, Scrape

__all__ = ["counter_reset", "failed_scrape", "parse_scrape"]

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?=[{\s]|$)")
_COUNTERS = frozenset(n for n, k in NEUTRAL_METRICS.items() if k is MetricKind.COUNTER)
_HIST_SUFFIXES = ("_bucket", "_sum", "_count")


@dataclass(frozen=True, slots=True)
class _Compiled:
    wanted: frozenset[str]  # line names to keep
    scalar_of: dict[str, tuple[str, ...]]  # wire sample name -> neutral names it may feed
    hist_wire: frozenset[str]  # histogram family names


_compiled: dict[int, tuple[EngineAdapter, _Compiled]] = {}


def _compile(adapter: EngineAdapter) -> _Compiled:
    hit = _compiled.get(id(adapter))
    if hit is not None and hit[0] is adapter:
        return hit[1]
    scalar_of: dict[str, tuple[str, ...]] = {}
    for neutral, wires in adapter.scalars.items():
        for w in wires:
            scalar_of[w] = (*scalar_of.get(w, ()), neutral)
    c = _Compiled(
        wanted=adapter.wire_names(),
        scalar_of=scalar_of,
        hist_wire=frozenset(w for ws in adapter.histograms.values() for w in ws),
    )
    _compiled[id(adapter)] = (adapter, c)
    return c


def _prefilter(text: str, wanted: frozenset[str]) -> str:
    keep: list[str] = []
    for line in text.splitlines():
        if not line or line.isspace():
            continue
        if line[0] == "#":
            parts = line.split(None, 3)
            if len(parts) >= 4 and parts[1] == "TYPE" and parts[2] in wanted:
                keep.append(line)
            continue
        m = _NAME.match(line)
        if m is None or m.group() in wanted:
            keep.append(line)  # a wanted series, or not a metric line at all (the parser reports it)
    keep.append("")
    return "\n".join(keep)


def _one_line(msg: str, limit: int = 160) -> str:
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= limit else msg[: limit - 1] + "…"


def failed_scrape(t: float, latency_s: float, error: str) -> Scrape:
    """A Scrape for a poll that failed (``error``: one line naming the URL and what happened)."""
    return Scrape(t=t, latency_s=latency_s, ok=False, error=_one_line(error, 300))


def parse_scrape(
    text: str,
    adapter: EngineAdapter,
    *,
    t: float,
    latency_s: float = 0.0,
    previous: Scrape | None = None,
    url: str = "",
) -> Scrape:
    """Parse one /metrics body into a Scrape under engine-neutral names.

    ``previous`` is the last successful Scrape of the same engine (for ``counter_reset``). Neutral metrics
    the engine does not serve are listed in ``Scrape.missing``. Never raises.
    """
    try:
        samples, histograms = _parse(text, adapter, t)
    except Exception as e:  # the parser raises ValueError and friends on bad input: report, never raise
        where = url or "/metrics"
        return failed_scrape(t, latency_s, f"{where}: malformed metrics text: {_one_line(str(e))}")
    present = {s.name for s in samples} | {h.name for h in histograms}
    missing = tuple(n for n in NEUTRAL_METRICS if n not in present)
    scrape = Scrape(
        t=t,
        latency_s=latency_s,
        ok=True,
        samples=tuple(samples),
        histograms=tuple(histograms),
        missing=missing,
    )
    if previous is not None and previous.ok and counter_reset(previous, scrape):
        scrape = Scrape(
            t=t,
            latency_s=latency_s,
            ok=True,
            samples=scrape.samples,
            histograms=scrape.histograms,
            missing=missing,
            counter_reset=True,
        )
    return scrape


def counter_reset(previous: Scrape, current: Scrape) -> bool:
    """True when a counter or a histogram count of a series present in both scrapes went backwards."""
    before = {(s.name, s.labels): s.value for s in previous.samples if s.name in _COUNTERS}
    for s in current.samples:
        if s.name in _COUNTERS:
            v = before.get((s.name, s.labels))
            if v is not None and s.value < v:
                return True
    hist_before = {(h.name, h.labels): h.count for h in previous.histograms}
    for h in current.histograms:
        c = hist_before.get((h.name, h.labels))
        if c is not None and h.count < c:
            return True
    return False


def _labels(raw: dict[str, str], adapter: EngineAdapter) -> Labels | None:
    """Neutral labels, or None when the adapter drops the series (e.g. SGLang tp_rank != 0)."""
    for key, required in adapter.keep.items():
        v = raw.get(key)
        if v is not None and v != required:
            return None
    pairs: Iterable[tuple[str, str]] = raw.items()
    if adapter.rename_labels or adapter.drop_labels:
        pairs = ((adapter.rename_labels.get(k, k), v) for k, v in raw.items() if k not in adapter.drop_labels)
    return tuple(sorted((k, v) for k, v in pairs if k != "model_name"))


def _parse(text: str, adapter: EngineAdapter, t: float) -> tuple[list[MetricSample], list[HistogramSample]]:
    comp = _compile(adapter)
    scalars: dict[str, list[tuple[Labels, float]]] = {}
    # family -> labels -> [buckets {bound: count}, sum, count]
    hists: dict[str, dict[Labels, list]] = {}
    for family in text_string_to_metric_families(_prefilter(text, comp.wanted)):
        for s in family.samples:
            name = s.name
            if name in comp.scalar_of:
                labs = _labels(s.labels, adapter)
                if labs is not None:
                    scalars.setdefault(name, []).append((labs, float(s.value)))
                continue
            for suffix in _HIST_SUFFIXES:
                if name.endswith(suffix) and name[: -len(suffix)] in comp.hist_wire:
                    raw = dict(s.labels)
                    le = raw.pop("le", None)
                    labs = _labels(raw, adapter)
                    if labs is None:
                        break
                    entry = hists.setdefault(name[: -len(suffix)], {}).setdefault(labs, [{}, math.nan, None])
                    if suffix == "_bucket":
                        if le is None:
                            raise ValueError(f"{name} without an le label")
                        entry[0][float(le)] = float(s.value)
                    elif suffix == "_sum":
                        entry[1] = float(s.value)
                    else:
                        entry[2] = float(s.value)
                    break

    values: dict[str, list[MetricSample]] = {}
    for neutral, wires in adapter.scalars.items():
        for w in wires:
            got = scalars.get(w)
            if got:
                values[neutral] = [MetricSample(t, neutral, v, labs) for labs, v in got]
                break
    if adapter.derive is not None:
        adapter.derive(values)
    samples = [s for name in NEUTRAL_METRICS if name in values for s in values[name]]

    histograms: list[HistogramSample] = []
    for neutral, wires in adapter.histograms.items():
        for w in wires:
            series = hists.get(w)
            if not series:
                continue
            for labs, (buckets, total, count) in series.items():
                if not buckets:
                    raise ValueError(f"{w} has _sum/_count but no buckets")
                bounds = sorted(buckets)
                counts = [buckets[b] for b in bounds]
                if not math.isinf(bounds[-1]):
                    bounds.append(math.inf)
                    counts.append(counts[-1] if count is None else count)
                histograms.append(
                    HistogramSample(
                        t=t,
                        name=neutral,
                        bounds=tuple(bounds),
                        counts=tuple(counts),
                        sum=total,
                        count=counts[-1] if count is None else count,
                        labels=labs,
                    )
                )
            break
    return samples, histograms
