"""A sweep directory: its summary file ``sweep.json``, the one-line answer, and its report.

A sweep (``rllmtop sweep``, :mod:`rllmtop.sweep`) runs one recorded session per load level into one
directory. Every number of a level is read back from that level's recording (:func:`level_entry`, with
the report's own derivation: :func:`rllmtop.record.report.run.derive`), so ``sweep.json``, the answer
line and the sweep report say what the recordings say.

``sweep.json`` (schema 1), rewritten after every level (atomically), so a crash keeps the levels done::

    {"schema": 1, "kind": "rllmtop-sweep",
     "scenario": "default", "axis": "rate" | "concurrency", "mode": "grid" | "search",
     "grid": [1, 2, 4] | null, "search": {"start": 1, "max_levels": 10, "tolerance": 0.1} | null,
     "slo": {"ttfvt_p99": 30}, "goodput": {"ttfvt": 30},          # run-level SLOs; per-request (seconds)
     "saturation_rule": "..." | null, "knee_rule": "...",
     "clock": "wall" | "simulated", "speed": 1.0,
     "started_at": "2025-01-01T00:00:00Z", "updated_at": "...", "wall_s": 123.4,
     "status": "running" | "done" | "interrupted" | "failed", "detail": "",
     "levels": [<level>, ...],                                     # in the order they ran
     "answer": {"value": 6.5, "level": 4, "next_value": 7.0, "next_level": 5,
                "next_missed": ["ttfvt_p99"], "line": "highest rate meeting the SLOs: ..."},
     "knee": {"level": 3, "value": 4.0} | null}

A level (:class:`SweepLevel`; times in session seconds, rates per session second)::

    {"index": 1, "value": 4.0, "rate": 4.0 | null, "concurrency": 16 | null,
     "status": "done" | "interrupted" | "failed" | "engine_died" | "incomplete",
     "stopped_early": false, "stop_reason": "over-saturated: ..." | null,
     "meets_slo": true, "missed": [{"key": "ttfvt_p99", "value": 31.2, "limit": 30}, ...],
     "requests": 40, "ok": 40, "errors": 0, "unfinished": 0,
     "request_throughput": 3.9, "output_tps": 5120.0, "goodput_rps": 3.8, "goodput_tps": 600.0,
     "ttft_p99": 0.2, "ttfvt_p50": 9.1, "ttfvt_p99": 27.3, "e2e_p50": 20.0, "e2e_p99": 61.0,
     "kv_mean": 0.71, "kv_peak": 0.99, "waiting_peak": 12, "preemptions": 4,
     "warnings": ["latencies include up to ... of client delay ..."],
     "recording": "level-01-rate-4.db", "summary": "level-01-rate-4.txt", "wall_s": 48.2, "span_s": 41.0}
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rllmtop import fmt
from rllmtop.errors import UserError
from rllmtop.metrics.analysis import KNEE_RULE, StragglerRule, knee_index, slo_misses, slo_value
from rllmtop.summary import Table

__all__ = [
    "SCHEMA",
    "SWEEP_FILE",
    "Answer",
    "SweepLevel",
    "build_sweep_report",
    "is_sweep_dir",
    "knee_of",
    "level_entry",
    "missed_text",
    "read_sweep",
    "sweep_answer",
    "sweep_table",
    "write_sweep",
]

SCHEMA = 1
SWEEP_FILE = "sweep.json"
_AXES = ("rate", "concurrency")


@dataclass(frozen=True)
class SweepLevel:
    """One load level of a sweep, as its recording says (see the module doc for the JSON form)."""

    index: int
    value: float  # the axis value: offered rate (req/s) or the concurrency cap
    rate: float | None
    concurrency: int | None
    status: str
    recording: str  # relative to the sweep directory
    stopped_early: bool = False
    stop_reason: str | None = None
    meets_slo: bool = False
    missed: tuple[Mapping[str, Any], ...] = ()  # {"key", "value", "limit"}
    requests: int = 0
    ok: int = 0
    errors: int = 0
    unfinished: int = 0
    request_throughput: float | None = None
    output_tps: float | None = None
    goodput_rps: float | None = None
    goodput_tps: float | None = None
    ttft_p99: float | None = None
    ttfvt_p50: float | None = None
    ttfvt_p99: float | None = None
    e2e_p50: float | None = None
    e2e_p99: float | None = None
    kv_mean: float | None = None
    kv_peak: float | None = None
    waiting_peak: float | None = None
    preemptions: float | None = None
    warnings: tuple[str, ...] = ()
    summary: str = ""  # relative path of the level's headless summary text ("" when none)
    wall_s: float | None = None
    span_s: float | None = None
    slo_values: Mapping[str, float | None] = field(default_factory=dict)  # every SLO key's measured value

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["missed"] = [dict(m) for m in self.missed]
        d["warnings"] = list(self.warnings)
        d["slo_values"] = dict(self.slo_values)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = SWEEP_FILE) -> SweepLevel:
        """Inverse of :meth:`as_dict`; UserError naming the file and the field when it is not one."""
        known = cls.__dataclass_fields__
        try:
            kw = {k: v for k, v in d.items() if k in known}
            kw["missed"] = tuple(dict(m) for m in kw.get("missed", ()))
            kw["warnings"] = tuple(str(w) for w in kw.get("warnings", ()))
            kw["slo_values"] = dict(kw.get("slo_values", {}))
            lvl = cls(**kw)
            if not isinstance(lvl.index, int) or not isinstance(lvl.value, int | float):
                raise TypeError("index/value")
            if not isinstance(lvl.recording, str) or not isinstance(lvl.status, str):
                raise TypeError("recording/status")
        except (TypeError, ValueError) as e:
            raise UserError(
                f"{where}: a level entry is damaged ({e})", "re-run the sweep, or fix the file by hand"
            ) from e
        return lvl

    @property
    def label(self) -> str:
        return _value_text(self.value, "concurrency" if self.concurrency is not None else "rate")


def _finite(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def level_entry(
    path: Path,
    *,
    index: int,
    axis: str,
    value: float,
    slo: Mapping[str, float],
    goodput: Mapping[str, float],
    base: Path,
    stop_reason: str | None = None,
    summary: str = "",
    wall_s: float | None = None,
) -> SweepLevel:
    """The entry of one level, read back from its recording ``path`` with the report's derivation (the
    same summary, engine numbers and trust warnings as ``rllmtop report``). ``stop_reason``: why the
    sweep stopped the level early (None: it was not). A level meets the SLOs when its session ended done,
    it was not stopped early, some request ended, and every SLO of ``slo`` holds."""
    from rllmtop.record.report.run import derive, load_run

    if axis not in _AXES:
        raise ValueError(f"unknown sweep axis {axis!r}")
    run = load_run(path)
    (d,), _, _ = derive([run], StragglerRule(), goodput)
    s = d.summary
    o = s.overall
    misses = slo_misses(o, slo) if o.requests else []
    missed: list[dict[str, Any]] = [
        {"key": m.key, "value": _finite(m.value), "limit": m.limit} for m in misses
    ]
    if not o.requests:
        missed.insert(0, {"key": "requests", "value": 0, "limit": None})
    if stop_reason:
        missed.insert(0, {"key": "stopped_early", "value": None, "limit": None})
    elif run.status != "done":
        missed.insert(0, {"key": "status", "value": run.status, "limit": None})
    span = s.run_span_s
    e = d.engine
    rel = os.path.relpath(path, base)
    return SweepLevel(
        index=index,
        value=float(value),
        rate=float(value) if axis == "rate" else None,
        concurrency=int(value) if axis == "concurrency" else None,
        status=run.status,
        recording=rel,
        stopped_early=bool(stop_reason),
        stop_reason=stop_reason or None,
        meets_slo=not missed,
        missed=tuple(missed),
        requests=o.requests,
        ok=o.ok,
        errors=o.errors + o.cancelled,
        unfinished=s.unfinished,
        request_throughput=o.ok / span if span > 0 else None,
        output_tps=o.output_tps,
        goodput_rps=o.goodput_rps,
        goodput_tps=o.goodput_tps,
        ttft_p99=o.ttft[99],
        ttfvt_p50=o.ttfvt[50],
        ttfvt_p99=o.ttfvt[99],
        e2e_p50=o.e2e[50],
        e2e_p99=o.e2e[99],
        kv_mean=e.kv_usage_mean,
        kv_peak=e.kv_usage_peak,
        waiting_peak=e.waiting_peak,
        preemptions=e.preemptions,
        warnings=tuple(d.warnings),
        summary=summary,
        wall_s=wall_s,
        span_s=span if span > 0 else None,
        slo_values={k: _finite(slo_value(o, k)) for k in slo},
    )


# ============================================================================================ the answer


def _value_text(v: float | None, axis: str) -> str:
    if v is None:
        return fmt.MISSING
    return f"{v:g}" if axis == "concurrency" else f"{v:g} req/s"


def _secs(v: float | None) -> str:
    """Seconds with three significant digits and a space: ``27.3 s``, ``0.512 s``, ``131 s``."""
    if v is None or not math.isfinite(v):
        return fmt.MISSING
    return f"{v:.3g} s" if abs(v) < 1000 else f"{v:.0f} s"


def _slo_text(key: str, value: float | None) -> str:
    if value is None:
        return "no data"
    if key in ("error_rate", "accuracy"):
        return fmt.percent(value)
    if key == "output_tps":
        return f"{fmt.rate(value)} tok/s"
    return _secs(value)


def missed_text(lvl: SweepLevel) -> str:
    """Why a level did not meet the SLOs, in words: ``missed ttfvt_p99 (31.2 s)``, ``was stopped early
    (over-saturated: ...)``, ``ended failed``; "met the SLOs" when it did."""
    if lvl.meets_slo:
        return "met the SLOs"
    slo = [m for m in lvl.missed if m.get("limit") is not None]
    if lvl.stopped_early:
        text = f"was stopped early ({lvl.stop_reason})"
        if slo:
            text += " and missed " + ", ".join(str(m["key"]) for m in slo)
        return text
    if lvl.status != "done":
        return f"ended {lvl.status}"
    if not lvl.requests:
        return "ended no request"
    return "missed " + ", ".join(f"{m['key']} ({_slo_text(str(m['key']), m.get('value'))})" for m in slo)


@dataclass(frozen=True)
class Answer:
    """The highest level meeting the SLOs below the lowest level missing them (the pass/fail edge), and
    that next level up. With levels that missed below others that met (noise), the edge is the lowest
    miss; ``above`` lists the levels above it that met the SLOs again."""

    axis: str
    best: SweepLevel | None
    next_up: SweepLevel | None
    above: tuple[SweepLevel, ...] = ()
    clock: str = "wall"

    @property
    def line(self) -> str:
        """``highest rate meeting the SLOs: 6.5 req/s (goodput 6.1 req/s, TTFVT p99 27.3 s); next level
        7.0 req/s missed ttfvt_p99 (31.2 s)``."""
        what = "rate" if self.axis == "rate" else "concurrency"
        b = self.best
        if b is None:
            head = f"no {what} met the SLOs"
            if self.next_up is not None:
                head += f"; the lowest level, {self.next_up.label}, {missed_text(self.next_up)}"
        else:
            head = f"highest {what} meeting the SLOs: {b.label} ({self._facts(b)})"
            if self.next_up is not None:
                head += f"; next level {self.next_up.label} {missed_text(self.next_up)}"
            else:
                head += "; every level run met the SLOs (none above it was run)"
        if self.above:
            head += (
                "; note: "
                + ", ".join(a.label for a in self.above)
                + " met the SLOs again above that level (noisy: more prompts per level would tell)"
            )
        if self.clock == "simulated":
            head += " (rates and times on the simulated clock)"
        nxt = self.next_up
        if nxt is not None and nxt.warnings:
            head += f"; warning: at {nxt.label} {nxt.warnings[0]}"
        return head

    def _facts(self, lvl: SweepLevel) -> str:
        parts = [f"goodput {fmt.rate(lvl.goodput_rps)} req/s", f"TTFVT p99 {_secs(lvl.ttfvt_p99)}"]
        for key, v in lvl.slo_values.items():
            if key != "ttfvt_p99":
                parts.append(f"{key} {_slo_text(key, v)}")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "value": self.best.value if self.best else None,
            "level": self.best.index if self.best else None,
            "next_value": self.next_up.value if self.next_up else None,
            "next_level": self.next_up.index if self.next_up else None,
            "next_missed": [str(m["key"]) for m in self.next_up.missed] if self.next_up else [],
            "met_again_above": [a.index for a in self.above],
            "line": self.line,
        }


def sweep_answer(levels: Sequence[SweepLevel], axis: str, clock: str = "wall") -> Answer:
    """The answer over the levels run so far (any order; a value run twice: its later run counts)."""
    by_value: dict[float, SweepLevel] = {}
    for lvl in sorted(levels, key=lambda x: x.index):
        by_value[lvl.value] = lvl
    ordered = sorted(by_value.values(), key=lambda x: x.value)
    first_miss = next((lvl for lvl in ordered if not lvl.meets_slo), None)
    below = [lvl for lvl in ordered if lvl.meets_slo and (first_miss is None or lvl.value < first_miss.value)]
    best = below[-1] if below else None
    above = tuple(
        lvl for lvl in ordered if lvl.meets_slo and first_miss is not None and lvl.value > first_miss.value
    )
    return Answer(axis, best, first_miss, above, clock)


def knee_of(levels: Sequence[SweepLevel]) -> SweepLevel | None:
    """The knee by :data:`rllmtop.metrics.analysis.KNEE_RULE` over the levels that ran to their end
    (goodput when they have it, else completed requests/s)."""
    levels = [lvl for lvl in levels if lvl.status == "done" and not lvl.stopped_early]
    use_goodput = any(lvl.goodput_rps is not None for lvl in levels)
    ys = [lvl.goodput_rps if use_goodput else lvl.request_throughput for lvl in levels]
    i = knee_index([lvl.value for lvl in levels], ys)
    return None if i is None else levels[i]


# ============================================================================================ the file


def write_sweep(directory: Path, doc: Mapping[str, Any]) -> Path:
    """Write ``sweep.json`` atomically (a temporary file renamed over it); UserError when it cannot."""
    from rllmtop.record.report.output import _json_safe

    path = directory / SWEEP_FILE
    text = json.dumps(_json_safe(doc), indent=2, allow_nan=False) + "\n"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".sweep-", suffix=".json", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except OSError as e:
        raise UserError(
            f"cannot write the sweep summary {path}: {e.strerror or e}",
            f"free space or fix permissions in {directory}; the recordings of the levels done are kept",
        ) from e
    return path


def is_sweep_dir(path: Path) -> bool:
    return path.is_dir() and (path / SWEEP_FILE).is_file()


def read_sweep(directory: Path) -> dict[str, Any]:
    """``sweep.json`` of a sweep directory, checked (UserError naming the file and what is wrong)."""
    path = directory / SWEEP_FILE
    hint = "pass a directory written by `rllmtop sweep` (it holds sweep.json and the level recordings)"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{directory}: no {SWEEP_FILE} here", hint) from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: not a readable sweep summary ({e})", hint) from e
    if not isinstance(doc, dict) or doc.get("kind") != "rllmtop-sweep":
        raise UserError(f"{path}: not a sweep summary (no kind = rllmtop-sweep)", hint)
    if doc.get("schema") != SCHEMA:
        raise UserError(
            f"{path}: sweep summary schema {doc.get('schema')!r}, this rllmtop reads {SCHEMA}",
            "use the rllmtop version that wrote it",
        )
    if doc.get("axis") not in _AXES or not isinstance(doc.get("levels"), list):
        raise UserError(f"{path}: axis or levels missing or damaged", hint)
    for k in ("slo", "goodput"):
        if not isinstance(doc.get(k, {}), dict):
            raise UserError(f"{path}: {k} is not a table", hint)
    return doc


# ============================================================================================ tables


def sweep_table(
    levels: Sequence[SweepLevel], *, knee: SweepLevel | None = None, best: SweepLevel | None = None
) -> Table:
    """One row per level in axis order: what it offered, what it served, latencies, the engine, verdict."""
    axis_conc = any(lvl.concurrency is not None for lvl in levels)
    head = (
        "level",
        "concurrency" if axis_conc else "rate (req/s)",
        "status",
        "reqs",
        "done req/s",
        "goodput req/s",
        "tok/s",
        "TTFVT p50/p99",
        "E2E p50/p99",
        "KV mean/peak",
        "waiting peak",
        "preempt",
        "SLOs",
    )
    rows = []
    for lvl in sorted(levels, key=lambda x: (x.value, x.index)):
        verdict = "met" if lvl.meets_slo else "missed " + ", ".join(str(m["key"]) for m in lvl.missed)
        marks = [m for m, on in (("answer", lvl is best), ("knee", lvl is knee)) if on]
        status = "stopped early" if lvl.stopped_early else lvl.status
        rows.append(
            [
                str(lvl.index) + (f" ({', '.join(marks)})" if marks else ""),
                f"{lvl.value:g}",
                status,
                fmt.count(lvl.requests),
                fmt.rate(lvl.request_throughput),
                fmt.rate(lvl.goodput_rps),
                fmt.rate(lvl.output_tps),
                f"{fmt.seconds(lvl.ttfvt_p50)}/{fmt.seconds(lvl.ttfvt_p99)}",
                f"{fmt.seconds(lvl.e2e_p50)}/{fmt.seconds(lvl.e2e_p99)}",
                f"{fmt.percent(lvl.kv_mean, 0)}/{fmt.percent(lvl.kv_peak, 0)}",
                fmt.count(lvl.waiting_peak),
                fmt.count(lvl.preemptions),
                verdict,
            ]
        )
    return Table.of(head, rows, (False, True, False, *([True] * 9), False))


# ============================================================================================ the report


def _levels_of(doc: Mapping[str, Any], where: str) -> list[SweepLevel]:
    return [SweepLevel.from_dict(d, where) for d in doc["levels"] if isinstance(d, Mapping)]


def build_sweep_report(
    directory: Path, out_dir: Path | None = None, *, goodput: Mapping[str, float] | None = None
) -> Path:
    """``rllmtop report DIR`` on a sweep directory (and the end of ``rllmtop sweep``): every level re-read
    from its recording (``goodput``: judge on these per-request SLOs instead of the sweep's), the sweep
    figures, ``sweep.md`` and ``index.html`` into ``out_dir`` (default ``DIR/report``); returns the index."""
    from rllmtop.record.report.figures import matplotlib_figure
    from rllmtop.record.report.output import prepare_out, write_json, writing
    from rllmtop.record.report.sweep_figures import SweepFigures, draw_sweep_figures, sweep_page

    matplotlib_figure()
    directory = Path(directory)
    doc = read_sweep(directory)
    where = str(directory / SWEEP_FILE)
    axis = str(doc["axis"])
    slo = {str(k): float(v) for k, v in doc.get("slo", {}).items()}
    g = (
        dict(goodput)
        if goodput is not None
        else {str(k): float(v) for k, v in doc.get("goodput", {}).items()}
    )
    levels = []
    for old in _levels_of(doc, where):
        rec = directory / old.recording
        if not rec.is_file():
            levels.append(old)  # the recording is gone: keep what the sweep said of it
            continue
        levels.append(
            level_entry(
                rec,
                index=old.index,
                axis=axis,
                value=old.value,
                slo=slo,
                goodput=g,
                base=directory,
                stop_reason=old.stop_reason,
                summary=old.summary,
                wall_s=old.wall_s,
            )
        )
    clock = str(doc.get("clock", "wall"))
    answer = sweep_answer(levels, axis, clock)
    knee = knee_of(sorted(levels, key=lambda x: x.value))
    out = prepare_out(Path(out_dir) if out_dir is not None else directory / "report")
    with writing(out):
        figs = draw_sweep_figures(
            SweepFigures(levels, axis, slo, answer.best, knee, clock, float(doc.get("speed", 1.0))), out
        )
        table = sweep_table(levels, knee=knee, best=answer.best)
        write_json(
            out / "sweep-report.json",
            {
                "sweep": str(directory),
                "axis": axis,
                "slo": slo,
                "goodput": g,
                "answer": answer.as_dict(),
                "knee": {"level": knee.index, "value": knee.value} if knee else None,
                "knee_rule": KNEE_RULE,
                "levels": [lvl.as_dict() for lvl in levels],
                "figures": {
                    f.name: {"png": f.png.name, "svg": f.svg.name, "caption": f.caption} for f in figs
                },
            },
        )
        return sweep_page(doc, directory, levels, answer, knee, table, figs, out)
