"""The report of one recording: figures, ``asu.md``, ``asu.json`` and ``index.html``."""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Mapping
from pathlib import Path

from rllmtop.metrics.analysis import StragglerRule
from rllmtop.record.report.figures import Ctx, draw_figures, draw_request_timeline, matplotlib_figure
from rllmtop.record.report.html import figures_html, note_html, page
from rllmtop.record.report.output import prepare_out, write_json, writing
from rllmtop.record.report.run import RunData, derive, load_run
from rllmtop.record.report.tables import (
    DEFINITIONS,
    definitions_html,
    definitions_md,
    engine_note,
    engine_table,
    meta_table,
)
from rllmtop.record.report.timeline import CACHE_NOTE, cache_table, moments_json, run_moments
from rllmtop.summary import asu_table, summary_notes

__all__ = ["build_report", "write_report"]


def write_report(
    run: RunData,
    out_dir: str | Path,
    *,
    rule: StragglerRule | None = None,
    goodput: Mapping[str, float] | None = None,
) -> Path:
    """Figures, ``asu.md``, ``asu.json`` and ``index.html`` for one run; returns the index path.

    ``goodput``: per-request SLOs (GOODPUT_KEYS, seconds); None: the ones the run recorded."""
    rule = rule or StragglerRule()
    matplotlib_figure()  # fail before writing anything
    out = prepare_out(Path(out_dir))
    runs, gstep, cstep = derive([run], rule, goodput)
    with writing(out):
        return _write(run, Ctx(runs, gstep, cstep, rule), out)


def _write(run: RunData, ctx: Ctx, out: Path) -> Path:
    d = ctx.runs[0]
    figs = draw_figures(ctx, out)
    figs.insert(1, draw_request_timeline(ctx, out))
    moments = run_moments(d)
    cache = cache_table(moments, d.t0, ctx.axis_unit)
    summary = d.summary
    has_goodput = bool(summary.goodput)
    title = f"rllmtop report: {run.info.scenario_name or run.label}"
    meta = meta_table(run)
    eng = engine_table([d])
    note = engine_note(ctx.gstep, [d])
    warn = d.warnings
    asu = asu_table(summary)
    notes = summary_notes(summary)
    md = [f"# {title}", ""]
    md += [f"> **warning**: {w}" for w in warn] + ([""] if warn else [])
    md += [
        meta.markdown(),
        "",
        "## ASU summary per class",
        "",
        asu.markdown() if summary.overall.requests else "No request ended.",
        "",
        *[f"{n}." for n in notes],
        "",
        "## Engine",
        "",
        eng.markdown(),
        "",
        note,
        "",
        "## Who filled the cache",
        "",
        cache.markdown() if moments else "No KV reading: the engine did not serve KV usage.",
        "",
        CACHE_NOTE,
        "",
        "## Definitions",
        "",
        definitions_md(summary.straggler_rule, has_goodput),
        "",
        "## Figures",
        "",
        *[f"- [{f.title}]({f.png.name}) ([SVG]({f.svg.name})): {f.caption}" for f in figs],
        "",
    ]
    (out / "asu.md").write_text("\n".join(md), encoding="utf-8")
    write_json(
        out / "asu.json",
        {
            "recording": str(run.path) if run.path else None,
            "label": run.label,
            "scenario": run.info.scenario_name,
            "seed": run.info.seed,
            "status": run.status,
            "clock": run.info.clock,
            "speed": run.info.speed,
            "warnings": warn,
            "client_delay": d.client.as_dict(),
            "sim_drift": d.drift.as_dict(),
            "straggler_rule": summary.straggler_rule,
            "goodput": dict(summary.goodput),
            "run_span_s": summary.run_span_s,
            "unfinished": summary.unfinished,
            "definitions": dict(DEFINITIONS),
            "overall": summary.overall.as_dict(),
            "classes": [c.as_dict() for c in summary.classes],
            "turns": [dataclasses.asdict(t) for t in summary.turns],
            "engine": d.engine.as_dict(),
            "engines": {e: s.as_dict() for e, s in d.engines.items()},
            "engine_note": note,
            "cache_moments": moments_json(moments, d.t0),
            "cache_moments_rule": CACHE_NOTE,
            "figures": {f.name: {"png": f.png.name, "svg": f.svg.name, "caption": f.caption} for f in figs},
        },
    )
    body = [
        note_html(warn),
        meta.html(),
        "<h2>ASU summary per class</h2>",
        asu.html() if summary.overall.requests else "<p>No request ended.</p>",
        *[f"<p>{html.escape(n)}.</p>" for n in notes],
        "<h2>Engine</h2>",
        eng.html(),
        f"<p>{html.escape(note)}</p>",
        "<h2>Who filled the cache</h2>",
        cache.html() if moments else "<p>No KV reading: the engine did not serve KV usage.</p>",
        f"<p>{html.escape(CACHE_NOTE)}</p>",
        "<h2>Figures</h2>",
        figures_html(figs, out),
        "<h2>Definitions</h2>",
        definitions_html(summary.straggler_rule, has_goodput),
        '<p>Tables: <a href="asu.md">asu.md</a>, <a href="asu.json">asu.json</a>.</p>',
    ]
    if run.info.scenario_text:
        body.append(
            f"<details><summary>Scenario</summary><pre>{html.escape(run.info.scenario_text)}</pre></details>"
        )
    index = out / "index.html"
    index.write_text(page(title, "\n".join(b for b in body if b)), encoding="utf-8")
    return index


def build_report(path: Path, out_dir: Path, *, goodput: Mapping[str, float] | None = None) -> Path:
    """``rllmtop report FILE --out DIR``: the report of one recording; returns ``DIR/index.html``."""
    matplotlib_figure()
    return write_report(load_run(path), out_dir, goodput=goodput)
