"""The one Prometheus text parser: exposition text + an engine adapter -> a :class:`~rllmtop.events.Scrape`.

Values are kept raw (cumulative counters and histogram buckets as served); rates, windows and quantiles are
derived later by :mod:`rllmtop.metrics.analysis`. Parsing never raises.

Validated at the edge, one sample at a time: a line of a mapped family that does not parse, a duplicate
series, a non-finite or negative counter, a gauge outside its range (``kv_cache_usage`` 7.0), a histogram
whose buckets are not finite, non-negative and non-decreasing along ``le``: each costs that one sample (or
that one histogram series), is listed in :attr:`Parsed.problems`, and never costs the scrape. Samples that
leave this module are finite and within range. Only a body that is not Prometheus text at all (an HTML
page, JSON, binary) is a failed scrape.

Bounds: :class:`MetricsFilter` reads a body chunk by chunk and keeps only the sample lines of the families
the adapter maps, found by one regex per name prefix (``\\nvllm:(?:name|...)``: the engine skips to the
literal prefix at memory speed), so a 20 MB body of unrelated series costs a few milliseconds and is never
held whole; a body over ``max_bytes``
is refused. At most ``series_cap`` series per engine are kept (in the order of
:data:`~rllmtop.events.NEUTRAL_METRICS`, gauges first); the excess is counted in ``Scrape.dropped_series``.

The text format is parsed here (``name{labels} value [timestamp]``, label escapes ``\\\\ \\" \\n``), not by
prometheus-client, whose parser takes ~17 µs a line (a vLLM scrape: 2.2 ms); the tests check the two agree
on generated valid text. PromQL JSON (:mod:`rllmtop.metrics.prometheus`) goes through :func:`build_scrape`
too: one mapping and one validation for both wire formats.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from rllmtop.engines.adapters import EngineAdapter
from rllmtop.events import NEUTRAL_METRICS, HistogramSample, Labels, MetricKind, MetricSample, Scrape

__all__ = [
    "BODY_CAP",
    "SERIES_CAP",
    "MetricsFilter",
    "MetricsTextError",
    "Parsed",
    "Problem",
    "RawSample",
    "build_scrape",
    "counter_reset",
    "failed_scrape",
    "parse_metrics",
    "parse_scrape",
    "parse_value",
    "value_problem",
]

BODY_CAP = 16 * 1024 * 1024  # bytes of one /metrics body (decompressed)
SERIES_CAP = 2000  # series kept per engine and scrape
# the filter passes at most series_cap x these many lines to the parser (a histogram series is one
# _sum, one _count and its buckets); the rest are counted, never parsed
LINES_PER_SERIES = 2
BUCKETS_PER_SERIES = 16
MAX_LINE = 65536  # a longer line is one bad sample, not a regex over megabytes

_COUNTERS = frozenset(n for n, k in NEUTRAL_METRICS.items() if k is MetricKind.COUNTER)
_HIST_SUFFIXES = ("_bucket", "_sum", "_count")
_ORDER = {n: i for i, n in enumerate(NEUTRAL_METRICS)}

RawSample = tuple[str, dict[str, str], float]
"""(wire sample name, labels as served, value): what both wire formats decode to."""


# ---------------------------------------------------------------------------------------------- ranges

_INF = math.inf
_DCGM_BLANK = float(0x7FFFFFF0) - 1  # DCGM_INT32_BLANK - 1
# neutral name -> (low, high), inclusive; counters and histograms: >= 0. Anything else: finite.
_RANGES: dict[str, tuple[float, float]] = {
    "kv_cache_usage": (0.0, 1.0),
    "cache_hit_rate": (0.0, 1.0),
    "requests_running": (0.0, _INF),
    "requests_waiting": (0.0, _INF),
    "kv_used_tokens": (0.0, _INF),
    "kv_total_tokens": (0.0, _INF),
    "kv_total_blocks": (0.0, _INF),
    "gen_throughput": (0.0, _INF),
    "requests_retracted": (0.0, _INF),
    "sim_lag_seconds": (-_INF, _INF),
    "sim_speed": (1e-9, _INF),  # > 0
    # GPU telemetry: DCGM's "blank" sentinels (>= 0x7ffffff0, e.g. 9223372036854775794 for a field a
    # board does not support) are not values
    "gpu_util_percent": (0.0, 100.0),
    "gpu_fb_used_mib": (0.0, _DCGM_BLANK),
    "gpu_fb_free_mib": (0.0, _DCGM_BLANK),
    "gpu_power_watts": (0.0, _DCGM_BLANK),
    "gpu_temp_celsius": (-273.15, 1000.0),
    "gpu_sm_clock_mhz": (0.0, _DCGM_BLANK),
    **{n: (0.0, _INF) for n in _COUNTERS},
}


def value_problem(name: str, value: float) -> str:
    """Why ``value`` may not be a sample of neutral ``name`` ("" when it may): the one range rule."""
    if not math.isfinite(value):
        return f"value {value!r} is not finite"
    lo, hi = _RANGES.get(name, (-_INF, _INF))
    if value < lo or value > hi:
        if hi == _INF:
            return f"value {value!r} is below {lo:g}"
        return f"value {value!r} is outside {lo:g}..{hi:g}"
    return ""


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Problem:
    """One sample dropped at the edge: ``series`` names it as served, ``reason`` says why."""

    series: str  # e.g. 'vllm:kv_cache_usage_perc{engine="0"}' (truncated to 160 characters)
    reason: str  # e.g. "value 7.0 is outside 0..1"


@dataclass(frozen=True, slots=True)
class Parsed:
    """A Scrape and what was dropped on the way (for the source's rate-limited log)."""

    scrape: Scrape
    problems: tuple[Problem, ...] = ()
    skipped_lines: int = 0  # sample lines of mapped families not parsed (over the line budget)


class MetricsTextError(ValueError):
    """The body is not usable at all (too large, or not Prometheus text): a failed scrape."""


def _one_line(msg: str, limit: int = 160) -> str:
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= limit else msg[: limit - 1] + "…"


def failed_scrape(
    t: float, latency_s: float, error: str, *, engine_id: str = "", stale: bool = False
) -> Scrape:
    """A Scrape for a poll that failed (``error``: one line naming the URL and what happened)."""
    return Scrape(
        t=t, latency_s=latency_s, ok=False, error=_one_line(error, 300), engine_id=engine_id, stale=stale
    )


# ---------------------------------------------------------------------------------------------- compiled adapter


@dataclass(frozen=True, slots=True)
class _Compiled:
    patterns: tuple[re.Pattern[bytes], ...]  # one per name prefix: a kept line is b"\n" + name + [{ \t] ...
    scalar_of: frozenset[str]  # scalar wire sample names
    info_of: dict[str, tuple[tuple[str, str], ...]]  # info wire name -> ((neutral, label), ...)
    hist_wire: frozenset[str]  # histogram family names
    memo: dict[tuple, Labels | None] = field(default_factory=dict)  # raw label items -> neutral labels
    hist_memo: dict[tuple, tuple[str | None, Labels | None]] = field(default_factory=dict)


_compiled: dict[int, tuple[EngineAdapter, _Compiled]] = {}


def _prefix(name: str) -> str:
    for sep in (":", "_"):
        i = name.find(sep)
        if i > 0:
            return name[: i + 1]
    return name


def _compile(adapter: EngineAdapter) -> _Compiled:
    hit = _compiled.get(id(adapter))
    if hit is not None and hit[0] is adapter:
        return hit[1]
    scalars = {w for ws in adapter.scalars.values() for w in ws}
    hist_wire = frozenset(w for ws in adapter.histograms.values() for w in ws)
    info_of: dict[str, tuple[tuple[str, str], ...]] = {}
    for neutral, sources in adapter.info_labels.items():
        for wire, label in sources:
            info_of[wire] = (*info_of.get(wire, ()), (neutral, label))
    names = scalars | set(info_of) | {h + s for h in hist_wire for s in _HIST_SUFFIXES}
    by_prefix: dict[str, list[str]] = {}
    for n in names:
        p = _prefix(n)
        by_prefix.setdefault(p, []).append(n[len(p) :])
    # a literal prefix lets the regex engine skip to candidate lines at memory speed
    patterns = tuple(
        re.compile(
            b"\n("
            + re.escape(p.encode())
            + b"(?:"
            + b"|".join(re.escape(r.encode()) for r in sorted(rest, key=len, reverse=True))
            + b"))(?=[{ \t])[^\n]*"
        )
        for p, rest in sorted(by_prefix.items())
    )
    c = _Compiled(
        patterns=patterns,
        scalar_of=frozenset(scalars),
        info_of=info_of,
        hist_wire=hist_wire,
    )
    _compiled[id(adapter)] = (adapter, c)
    return c


# ---------------------------------------------------------------------------------------------- the filter

_TEXT_START = frozenset(b"#abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_:")


class MetricsFilter:
    """Keeps the sample lines of the families ``adapter`` maps, fed a body chunk by chunk.

    Memory: the kept lines plus one partial line. ``feed`` raises :class:`MetricsTextError` when the body
    grows past ``max_bytes`` or does not start like Prometheus text. At most ``series_cap`` x
    ``LINES_PER_SERIES`` lines and ``series_cap`` x ``BUCKETS_PER_SERIES`` ``_bucket`` lines are kept (an
    exploding label costs a bounded parse); the rest are counted in ``skipped_lines``.
    """

    __slots__ = (
        "_bucket_room",
        "_carry",
        "_comp",
        "_room",
        "_started",
        "lines",
        "max_bytes",
        "nbytes",
        "skipped_lines",
    )

    def __init__(
        self, adapter: EngineAdapter, *, max_bytes: int = BODY_CAP, series_cap: int = SERIES_CAP
    ) -> None:
        self._comp = _compile(adapter)
        self.max_bytes = max_bytes
        self._room = series_cap * LINES_PER_SERIES
        self._bucket_room = series_cap * BUCKETS_PER_SERIES
        self.lines: list[bytes] = []
        self.skipped_lines = 0
        self.nbytes = 0
        self._carry = b"\n"  # the unfinished last line, after the newline that ended the line before it
        self._started = False

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.nbytes += len(chunk)
        if self.nbytes > self.max_bytes:
            raise MetricsTextError(
                f"body larger than {self.max_bytes / 2**20:g} MiB (stopped reading): "
                "not an engine's /metrics, or one serving far too many series"
            )
        if not self._started:
            head = (self._carry + chunk).lstrip()
            if not head:
                return  # only whitespace so far
            if head[0] not in _TEXT_START:
                raise MetricsTextError(f"not Prometheus text (it starts with {_one_line(repr(head[:40]))})")
            self._started = True
        data = self._carry + chunk
        cut = data.rfind(b"\n")
        if cut <= 0:
            self._carry = data
            return
        self._scan(data, cut)
        self._carry = data[cut:]

    def finish(self) -> None:
        """The body is complete: scan its last line (when it has no newline at the end)."""
        if len(self._carry) > 1:
            data = self._carry + b"\n"
            self._scan(data, len(data) - 1)
        self._carry = b"\n"

    def _scan(self, data: bytes, end: int) -> None:
        keep = self.lines
        for pattern in self._comp.patterns:
            for m in pattern.finditer(data, 0, end):
                if m.group(1).endswith(b"_bucket"):
                    if self._bucket_room > 0:
                        self._bucket_room -= 1
                        keep.append(m.group()[1:])
                        continue
                elif self._room > 0:
                    self._room -= 1
                    keep.append(m.group()[1:])
                    continue
                self.skipped_lines += 1


# ---------------------------------------------------------------------------------------------- lines

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+([^ \t]+)(?:[ \t]+(-?[0-9]+))?[ \t\r]*")
_PAIR = r'[ \t]*[a-zA-Z_][a-zA-Z0-9_]*[ \t]*=[ \t]*"(?:[^"\\\n]|\\.)*"[ \t]*'
_LABELS = re.compile(rf"(?:{_PAIR},)*(?:{_PAIR})?,?[ \t]*")
_PAIRS = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"')
_ESCAPE = re.compile(r"\\(.)")
_UNESCAPE = {"\\": "\\", '"': '"', "n": "\n"}


def parse_value(text: str) -> float:
    """A Prometheus float (``1.5``, ``1e3``, ``NaN``, ``+Inf``, ``-Inf``); ValueError otherwise."""
    if "_" in text:  # Python's float() takes 1_000; Prometheus does not
        raise ValueError(text)
    return float(text)


def _unescape(v: str) -> str:
    return _ESCAPE.sub(lambda m: _UNESCAPE.get(m.group(1), m.group()), v) if "\\" in v else v


_EMPTY: dict[str, str] = {}
_CACHE_MAX = 65536  # label texts remembered (the same series come back every scrape)
_label_cache: dict[str, dict[str, str] | str] = {}


def _parse_labels(text: str) -> dict[str, str] | str:
    """The labels of ``{text}``, or why they are malformed. The dict is shared: never mutate it."""
    if _LABELS.fullmatch(text) is None:
        return "malformed labels"
    pairs = _PAIRS.findall(text)
    labels = {k: _unescape(v) for k, v in pairs}
    if len(labels) != len(pairs):
        return "a label appears twice"
    return labels


def _parse_lines(lines: Iterable[bytes], problems: list[Problem]) -> Iterator[RawSample]:
    cache = _label_cache
    for raw in lines:
        line = raw.decode("utf-8", "replace")
        if len(line) > MAX_LINE:
            problems.append(Problem(_series_text(line[:80], {}), f"line longer than {MAX_LINE} characters"))
            continue
        m = _SAMPLE.fullmatch(line)
        if m is None:
            problems.append(Problem(_one_line(line, 160), "malformed line"))
            continue
        name, label_text, value_text, _ts = m.groups()
        labels = _EMPTY
        if label_text:
            got = cache.get(label_text)
            if got is None:
                got = _parse_labels(label_text)
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                cache[label_text] = got
            if isinstance(got, str):
                problems.append(Problem(_one_line(line, 160), got))
                continue
            labels = got
        try:
            value = parse_value(value_text)
        except ValueError:
            problems.append(Problem(_series_text(name, labels), f"value {value_text[:40]!r} is not a number"))
            continue
        yield name, labels, value


def _series_text(name: str, labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "model_name")
    return _one_line(f"{name}{{{inner}}}" if inner else name, 160)


# ---------------------------------------------------------------------------------------------- mapping


def _memo_labels(comp: _Compiled, raw: dict[str, str], adapter: EngineAdapter) -> Labels | None:
    key = tuple(raw.items())
    memo = comp.memo
    try:
        return memo[key]
    except KeyError:
        pass
    if len(memo) >= _CACHE_MAX:
        memo.clear()
    got = memo[key] = _labels(raw, adapter)
    return got


def _hist_labels(
    comp: _Compiled, raw: dict[str, str], adapter: EngineAdapter
) -> tuple[str | None, Labels | None]:
    """(le, neutral labels without le) of a histogram line, memoised like :func:`_memo_labels`."""
    key = ("\x00le", *raw.items())
    memo = comp.hist_memo
    got = memo.get(key)
    if got is None:
        if len(memo) >= _CACHE_MAX:
            memo.clear()
        rest = dict(raw)
        le = rest.pop("le", None)
        got = memo[key] = (le, _labels(rest, adapter))
    return got


def _labels(raw: dict[str, str], adapter: EngineAdapter) -> Labels | None:
    """Neutral labels, or None when the adapter drops the series (e.g. SGLang tp_rank != 0)."""
    for key, required in adapter.keep.items():
        v = raw.get(key)
        if v is not None and v != required:
            return None
    pairs: Iterable[tuple[str, str]] = raw.items()
    if adapter.rename_labels or adapter.drop_labels:
        pairs = ((adapter.rename_labels.get(k, k), v) for k, v in raw.items() if k not in adapter.drop_labels)
    if adapter.only_labels is not None:
        return tuple(sorted((k, v) for k, v in pairs if k in adapter.only_labels))
    return tuple(sorted((k, v) for k, v in pairs if k != "model_name"))


@dataclass(slots=True)
class _Hist:
    family: str
    raw_labels: dict[str, str]  # of its first line (display only)
    buckets: dict[float, float] = field(default_factory=dict)
    total: float | None = None
    count: float | None = None
    bad: str = ""


def _histogram(t: float, neutral: str, labs: Labels, h: _Hist) -> HistogramSample | str:
    """The validated sample, or why the series is dropped."""
    if h.bad:
        return h.bad
    if not h.buckets:
        return "_sum/_count but no buckets"
    bounds = sorted(h.buckets)
    counts = [h.buckets[b] for b in bounds]
    count = h.count
    if not math.isinf(bounds[-1]):
        if count is None:
            return "no +Inf bucket and no _count"
        bounds.append(math.inf)
        counts.append(count)
    elif count is None:
        count = counts[-1]
    if h.total is None:
        return "no _sum"
    total = h.total
    prev = 0.0
    for b, c in zip(bounds, counts, strict=True):
        if not math.isfinite(c) or c < 0:
            return f"bucket le={b:g} count {c!r} is not a finite count"
        if c < prev:
            return f"bucket counts decrease along le (le={b:g}: {c:g} < {prev:g})"
        prev = c
    if not math.isfinite(count) or count < 0:
        return f"_count {count!r} is not a finite count"
    if len(counts) > 1 and count < counts[-2]:
        return f"_count {count:g} is below a bucket count ({counts[-2]:g})"
    if not math.isfinite(total):
        return f"_sum {total!r} is not finite"
    return HistogramSample(
        t=t, name=neutral, bounds=tuple(bounds), counts=tuple(counts), sum=total, count=count, labels=labs
    )


def build_scrape(
    raw: Iterable[RawSample],
    adapter: EngineAdapter,
    *,
    t: float,
    latency_s: float = 0.0,
    previous: Scrape | None = None,
    engine_id: str = "",
    series_cap: int = SERIES_CAP,
    problems: list[Problem] | None = None,
    skipped_lines: int = 0,
) -> Parsed:
    """Map decoded samples (either wire format) to a validated Scrape of one engine.

    ``previous``: the last successful Scrape of the same engine (for ``counter_reset``).
    ``skipped_lines`` (lines never parsed, see :class:`MetricsFilter`) count as dropped series.
    """
    comp = _compile(adapter)
    probs: list[Problem] = [] if problems is None else problems
    # wire -> labels -> (value, name, raw labels): the display text is only built for a problem
    scalars: dict[str, dict[Labels, tuple[float, str, dict[str, str]]]] = {}
    hists: dict[str, dict[Labels, _Hist]] = {}
    scalar_of = comp.scalar_of
    for name, raw_labels, value in raw:
        if name in scalar_of:
            labs = _memo_labels(comp, raw_labels, adapter)
            if labs is None:
                continue
            slot = scalars.get(name)
            if slot is None:
                slot = scalars[name] = {}
            if labs in slot:
                probs.append(Problem(_series_text(name, raw_labels), "duplicate series (first one kept)"))
            else:
                slot[labs] = (value, name, raw_labels)
            continue
        info = comp.info_of.get(name)
        if info is not None:
            for neutral, label in info:
                text = raw_labels.get(label)
                if text is None or text in ("None", ""):
                    continue  # not known yet (vLLM says "None" before the KV cache is sized)
                labs = _labels({k: v for k, v in raw_labels.items() if k in adapter.identity_labels}, adapter)
                if labs is None:
                    continue
                try:
                    v = parse_value(text)
                except ValueError:
                    probs.append(
                        Problem(_series_text(name, raw_labels), f"{label}={text[:40]!r} is not a number")
                    )
                    continue
                key = f"\x00{neutral}"  # one slot per neutral name, whatever the wire name
                info_slot = scalars.setdefault(key, {})
                if labs not in info_slot:
                    info_slot[labs] = (v, f"{name} {label}", {})
            continue
        for suffix in _HIST_SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in comp.hist_wire:
                family = name[: -len(suffix)]
                le, labs = _hist_labels(comp, raw_labels, adapter)
                if labs is None:
                    break
                fam = hists.get(family)
                if fam is None:
                    fam = hists[family] = {}
                h = fam.get(labs)
                if h is None:
                    h = fam[labs] = _Hist(family, raw_labels)
                if suffix == "_bucket":
                    if le is None:
                        h.bad = h.bad or "a bucket without an le label"
                        break
                    try:
                        bound = parse_value(le)
                    except ValueError:
                        h.bad = h.bad or f"le={le[:40]!r} is not a number"
                        break
                    if math.isnan(bound) or bound in h.buckets:
                        h.bad = h.bad or f"le={le[:40]!r} is NaN or appears twice"
                        break
                    h.buckets[bound] = value
                elif suffix == "_sum":
                    if h.total is not None:
                        h.bad = h.bad or "_sum appears twice"
                    h.total = value
                else:
                    if h.count is not None:
                        h.bad = h.bad or "_count appears twice"
                    h.count = value
                break

    values: dict[str, list[MetricSample]] = {}
    for neutral, wires in adapter.scalars.items():
        for w in wires:
            got = scalars.get(w)
            if got:
                kept = []
                for labs, (v, wire, raw_labels) in got.items():
                    why = value_problem(neutral, v)
                    if why:
                        probs.append(Problem(_series_text(wire, raw_labels), why))
                    else:
                        kept.append(MetricSample(t, neutral, v, labs))
                if kept:
                    values[neutral] = kept
                break
    for neutral in adapter.info_labels:
        got_info = scalars.get(f"\x00{neutral}")
        if got_info:
            kept = []
            for labs, (v, display, _) in got_info.items():
                why = value_problem(neutral, v)
                if why:
                    probs.append(Problem(display, why))
                else:
                    kept.append(MetricSample(t, neutral, v, labs))
            if kept:
                values[neutral] = kept
    if adapter.derive is not None:
        before = {n: id(v) for n, v in values.items()}
        adapter.derive(values)
        for neutral, new in values.items():
            if before.get(neutral) == id(new):
                continue  # not touched by derive: validated above
            ok = []
            for s in new:
                why = value_problem(neutral, s.value)
                if why:
                    probs.append(Problem(f"{neutral} (derived) {_series_text('', dict(s.labels))}", why))
                else:
                    ok.append(s)
            values[neutral] = ok

    histograms: dict[str, list[HistogramSample]] = {}
    for neutral, wires in adapter.histograms.items():
        for w in wires:
            fam_series = hists.get(w)
            if not fam_series:
                continue
            for labs, h in fam_series.items():
                got_h = _histogram(t, neutral, labs, h)
                if isinstance(got_h, str):
                    shown = {k: v for k, v in h.raw_labels.items() if k != "le"}
                    probs.append(Problem(_series_text(h.family, shown), got_h))
                else:
                    histograms.setdefault(neutral, []).append(got_h)
            break

    # the cardinality cap, in NEUTRAL_METRICS order (gauges, then counters, then histograms)
    samples: list[MetricSample] = []
    hist_out: list[HistogramSample] = []
    room = series_cap
    dropped = skipped_lines
    for name in NEUTRAL_METRICS:
        group: list = values.get(name) or histograms.get(name) or []
        if not group:
            continue
        take = group[: max(room, 0)]
        dropped += len(group) - len(take)
        room -= len(take)
        if take:
            (hist_out if isinstance(take[0], HistogramSample) else samples).extend(take)
    present = {s.name for s in samples} | {h.name for h in hist_out}
    missing = tuple(n for n in NEUTRAL_METRICS if n not in present)
    scrape = Scrape(
        t=t,
        latency_s=latency_s,
        ok=True,
        samples=tuple(samples),
        histograms=tuple(hist_out),
        missing=missing,
        engine_id=engine_id,
        dropped_series=dropped,
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
            engine_id=engine_id,
            dropped_series=dropped,
        )
    return Parsed(scrape, tuple(dict.fromkeys(probs)), skipped_lines)


# ---------------------------------------------------------------------------------------------- text


def parse_filtered(
    flt: MetricsFilter,
    adapter: EngineAdapter,
    *,
    t: float,
    latency_s: float = 0.0,
    previous: Scrape | None = None,
    engine_id: str = "",
    series_cap: int = SERIES_CAP,
) -> Parsed:
    """The Scrape of a body fed to ``flt`` (after ``flt.finish()``)."""
    problems: list[Problem] = []
    return build_scrape(
        _parse_lines(flt.lines, problems),
        adapter,
        t=t,
        latency_s=latency_s,
        previous=previous,
        engine_id=engine_id,
        series_cap=series_cap,
        problems=problems,
        skipped_lines=flt.skipped_lines,
    )


def parse_metrics(
    text: str | bytes,
    adapter: EngineAdapter,
    *,
    t: float,
    latency_s: float = 0.0,
    previous: Scrape | None = None,
    url: str = "",
    engine_id: str = "",
    series_cap: int = SERIES_CAP,
    max_bytes: int = BODY_CAP,
) -> Parsed:
    """Parse one whole /metrics body (see :func:`parse_scrape`); also returns what was dropped."""
    flt = MetricsFilter(adapter, max_bytes=max_bytes, series_cap=series_cap)
    try:
        flt.feed(text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text)
        flt.finish()
    except MetricsTextError as e:
        where = url or "/metrics"
        return Parsed(
            failed_scrape(t, latency_s, f"{where}: malformed metrics text: {e}", engine_id=engine_id)
        )
    return parse_filtered(
        flt,
        adapter,
        t=t,
        latency_s=latency_s,
        previous=previous,
        engine_id=engine_id,
        series_cap=series_cap,
    )


def parse_scrape(
    text: str | bytes,
    adapter: EngineAdapter,
    *,
    t: float,
    latency_s: float = 0.0,
    previous: Scrape | None = None,
    url: str = "",
    engine_id: str = "",
    series_cap: int = SERIES_CAP,
) -> Scrape:
    """Parse one /metrics body into a Scrape under engine-neutral names.

    ``previous`` is the last successful Scrape of the same engine (for ``counter_reset``). Neutral metrics
    the engine does not serve (or whose every sample was dropped as invalid) are listed in
    ``Scrape.missing``. Never raises.
    """
    return parse_metrics(
        text,
        adapter,
        t=t,
        latency_s=latency_s,
        previous=previous,
        url=url,
        engine_id=engine_id,
        series_cap=series_cap,
    ).scrape


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
