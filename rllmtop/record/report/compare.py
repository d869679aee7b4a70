"""Comparing recordings: are they comparable, and the side-by-side tables, tests and overlaid figures.

Comparable runs drove the *same workload*, read from each recording's provenance
(``SessionInfo.provenance``: resolved once by :mod:`rllmtop.scenario`; nobody re-reads scenario text):
their canonical ``workload`` JSON (seed, model, arrival, load and class tables after overrides) and
their seed are equal. Engine settings, the model served, SLOs and the scrape interval may differ:
comparing them is the point. Cells of one experiment matrix (same scenario source, same overrides, the
same matrix keys) are comparable when their workloads differ only where their declared cells say (a
cell may vary a workload key on purpose, e.g. ``seed`` replicates); the output says they were compared
as cells. A run without provenance (attach without a scenario) cannot be shown to be comparable.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rllmtop import fmt
from rllmtop.errors import UserError
from rllmtop.events import Provenance, SessionInfo
from rllmtop.metrics.analysis import StragglerRule
from rllmtop.record.report.figures import Ctx, draw_figures, matplotlib_figure
from rllmtop.record.report.html import figures_html, note_html, page
from rllmtop.record.report.output import prepare_out, write_json, writing
from rllmtop.record.report.run import Derived, RunData, derive, load_run
from rllmtop.record.report.stats import significance_note, significance_table, significance_tests
from rllmtop.record.report.tables import (
    DEFINITIONS,
    definitions_html,
    definitions_md,
    delta_table,
    engine_note,
    engine_table,
)
from rllmtop.summary import COLUMNS, GOODPUT_COLUMNS, Column, Table, class_table

__all__ = [
    "Comparability",
    "Comparison",
    "build_comparison",
    "comparability",
    "comparability_problems",
    "compare_recordings",
    "write_comparison",
]


# ============================================================================================ comparability


@dataclass(frozen=True)
class Comparability:
    comparable: bool
    problems: tuple[str, ...]  # why not, one line per difference
    basis: str  # in words: what was compared ("the same workload ...", "cells of one matrix ...")


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flat(v, f"{prefix}[{i}]"))
        return out
    return {prefix: obj}


def _workload(p: Provenance | None) -> dict[str, Any] | None:
    if p is None or not p.workload:
        return None
    try:
        doc = json.loads(p.workload)
    except ValueError:
        return None
    return _flat(doc) if isinstance(doc, dict) else None


def _same(json_text: str, value: Any) -> bool:
    try:
        return bool(json.loads(json_text) == value)
    except ValueError:
        return json_text == str(value)


def _unexplained(wa: dict[str, Any], wb: dict[str, Any], pa: Provenance, pb: Provenance) -> list[str]:
    """Keys whose values differ and are not explained by the cells (a cell key whose values in the two
    cells are exactly the two workload values)."""
    ca, cb = dict(pa.cell), dict(pb.cell)
    out = []
    for k in sorted(set(wa) | set(wb)):
        va, vb = wa.get(k), wb.get(k)
        if va == vb:
            continue
        if any(_same(ca[c], va) and _same(cb[c], vb) for c in ca if c in cb):
            continue
        out.append(k)
    return out


def _show_diff(keys: Sequence[str], wa: Mapping[str, Any], wb: Mapping[str, Any]) -> str:
    shown = ", ".join(f"{k} = {wb.get(k, '(unset)')!r} vs {wa.get(k, '(unset)')!r}" for k in keys[:4])
    return shown + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


def _cells_of_one_matrix(pa: Provenance, pb: Provenance) -> bool:
    return (
        bool(pa.cell)
        and bool(pb.cell)
        and pa.source == pb.source
        and pa.overrides == pb.overrides
        and {k for k, _ in pa.cell} == {k for k, _ in pb.cell}
    )


def _timebase(info: SessionInfo) -> str:
    """What a run's seconds are: "" for serving time (a real engine's wall seconds, a simulator at speed 1, or
    a time-lapse's simulated seconds), else how they differ (a simulator at speed K recorded on the wall clock:
    its model time / K, as rllmtop 0.1 ran ``--speed``)."""
    if info.clock != "wall" or info.engine_kind != "sim":
        return ""
    try:
        k = float(dict(info.extra).get("speed", 1) or 1)
    except (TypeError, ValueError):
        return ""
    return "" if k == 1 else f"wall seconds of a simulator at speed {k:g} (its model time / {k:g})"


def comparability(runs: Sequence[RunData]) -> Comparability:
    """Whether the runs drove the same workload (see the module docstring), each against the first, on
    the same time base."""
    problems: list[str] = []
    if not runs:
        return Comparability(True, (), "")
    a = runs[0]
    pa, wa = a.info.provenance, _workload(a.info.provenance)
    cells = True
    for b in runs[1:]:
        who = f"{b.label} vs {a.label}"
        ta, tb = _timebase(a.info), _timebase(b.info)
        if ta != tb:
            problems.append(
                f"{who}: times on different clocks: {tb or 'serving seconds'} vs {ta or 'serving seconds'}"
            )
        pb, wb = b.info.provenance, _workload(b.info.provenance)
        missing = [r.label for r, w in ((a, wa), (b, wb)) if w is None]
        if missing or pa is None or pb is None or wa is None or wb is None:
            problems.append(
                f"{who}: {' and '.join(dict.fromkeys(missing))} recorded no workload (no scenario provenance), "
                "so it cannot be shown to be the same"
            )
            cells = False
            continue
        if _cells_of_one_matrix(pa, pb):
            keys = _unexplained(wa, wb, pa, pb)
            if keys:
                problems.append(
                    f"{who}: workload differs beyond the matrix cells: {_show_diff(keys, wa, wb)}"
                )
            continue
        cells = False
        sa = a.info.seed if a.info.seed is not None else wa.get("seed")
        sb = b.info.seed if b.info.seed is not None else wb.get("seed")
        if sa != sb:
            problems.append(f"{who}: seed {sb} vs {sa}")
        keys = [k for k in sorted(set(wa) | set(wb)) if k != "seed" and wa.get(k) != wb.get(k)]
        if keys:
            problems.append(f"{who}: workload differs: {_show_diff(keys, wa, wb)}")
    if problems:
        return Comparability(
            False, tuple(problems), "NOT comparable (different workload or clock): " + "; ".join(problems)
        )
    if cells and len(runs) > 1:
        labels = ", ".join(r.info.provenance.cell_label for r in runs if r.info.provenance is not None)
        basis = (
            "Cells of one matrix: the runs differ only by their declared cells "
            f"({labels}); everything else of the workload is the same."
        )
    else:
        digest = pa.workload_digest if pa is not None else ""
        basis = (
            f"The runs drove the same workload (workload {digest}: the same seed, arrival, load and class "
            "tables after overrides); engine settings may differ."
        )
    return Comparability(True, (), basis)


def comparability_problems(runs: Sequence[RunData]) -> list[str]:
    """Why these runs did not drive the same workload (empty: comparable)."""
    return list(comparability(runs).problems)


# ============================================================================================ comparison


@dataclass(frozen=True)
class Comparison:
    """What ``write_comparison`` produced: the page, and the side-by-side ASU table for a terminal."""

    index: Path
    text: str  # the terminal summary (also written as compare.txt)
    comparable: bool
    problems: tuple[str, ...]


def _class_names(runs: Sequence[Derived]) -> list[str]:
    names: dict[str, None] = {}
    for r in runs:
        for c in r.summary.classes:
            names.setdefault(c.name, None)
    out = list(names)
    if len(out) != 1:
        out.append("all")
    return out


def _unique_labels(runs: Sequence[RunData]) -> list[RunData]:
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
    out = []
    for r in runs:
        if seen[r.label] > 1:
            tag = r.path.stem if r.path is not None else r.info.session_id
            out.append(replace(r, label=f"{r.label} [{tag}]"))
        else:
            out.append(r)
    return out


def side_by_side(runs: Sequence[Derived], cls: str, goodput: bool) -> Table:
    """The ASU table of one class, one row per run (baseline first): the same columns as every ASU table."""
    run_col = Column("run", lambda c: c.name, "the recording (baseline first)", right=False)
    cols = (run_col, *COLUMNS[1:], *(GOODPUT_COLUMNS if goodput else ()))
    rows = [replace(c, name=r.label) for r in runs if (c := r.summary.by_name().get(cls)) is not None]
    return class_table(rows, cols)


def _runs_table(runs: Sequence[Derived]) -> Table:
    rows = [
        [
            r.label,
            str(r.data.path) if r.data.path else fmt.MISSING,
            r.data.info.scenario_name or fmt.MISSING,
            fmt.MISSING if r.data.info.seed is None else str(r.data.info.seed),
            " ".join(
                x for x in (r.data.info.engine_kind, r.data.info.engine_version, r.data.info.model) if x
            ),
            r.data.status,
        ]
        for r in runs
    ]
    return Table.of(["run", "recording", "scenario", "seed", "engine", "status"], rows, [False] * 6)


def _warnings(runs: Sequence[Derived]) -> list[str]:
    return [f"{r.label}: {w}" for r in runs for w in r.warnings]


def write_comparison(
    runs: Sequence[RunData],
    out_dir: str | Path,
    *,
    force: bool = False,
    rule: StragglerRule | None = None,
    goodput: Mapping[str, float] | None = None,
) -> Comparison:
    """Compare runs (the first is the baseline); refuses non-comparable runs unless ``force``.

    ``goodput``: per-request SLOs for every run (None: the baseline's recorded ones)."""
    if len(runs) < 2:
        raise UserError("compare needs at least two recordings", "rllmtop compare A.db B.db")
    verdict = comparability(runs)
    if not verdict.comparable and not force:
        raise UserError(
            "these recordings are not comparable (different workload or clock): "
            + "; ".join(verdict.problems),
            "compare runs of the same scenario and seed, or pass --force to compare anyway",
        )
    rule = rule or StragglerRule()
    matplotlib_figure()
    out = prepare_out(Path(out_dir))
    slo = dict(goodput) if goodput is not None else dict(runs[0].goodput)
    derived, gstep, cstep = derive(_unique_labels(runs), rule, slo)
    with writing(out):
        return _write(derived, gstep, cstep, rule, verdict, bool(slo), out)


def _write(
    derived: list[Derived],
    gstep: float,
    cstep: float,
    rule: StragglerRule,
    verdict: Comparability,
    has_goodput: bool,
    out: Path,
) -> Comparison:
    figs = draw_figures(Ctx(derived, gstep, cstep, rule), out)
    base = derived[0]
    classes = _class_names(derived)
    tests = significance_tests(derived, classes)
    names = dict.fromkeys(r.data.info.scenario_name or r.label for r in derived)
    title = "rllmtop comparison: " + ", ".join(names)
    basis = (
        verdict.basis
        if verdict.comparable
        else "NOT comparable, compared anyway (--force): " + "; ".join(verdict.problems)
    )
    runs_t = _runs_table(derived)
    eng_t = engine_table(derived, base)
    warn = _warnings(derived)
    base_line = f"Baseline: {base.label}. Changes are relative to it (pp = percentage points)."

    md: list[str] = [f"# {title}", "", basis, ""]
    md += [f"> **warning**: {w}" for w in warn] + ([""] if warn else [])
    md += [
        runs_t.markdown(),
        "",
        base_line,
        "",
        "## Engine",
        "",
        eng_t.markdown(),
        "",
        engine_note(gstep, derived),
        "",
    ]
    body: list[str] = [
        f'<p class="{"note" if not verdict.comparable else ""}">{html.escape(basis)}</p>',
        note_html(warn),
        runs_t.html(),
        f"<p>{html.escape(base_line)}</p>",
        "<h2>Engine</h2>",
        eng_t.html(),
        f"<p>{html.escape(engine_note(gstep, derived))}</p>",
    ]
    for cls in classes:
        sbs = side_by_side(derived, cls, has_goodput)
        dt = delta_table(derived, base, cls, has_goodput)
        md += [f"## Class {cls}", "", sbs.markdown(), "", "Changes:", "", dt.markdown(), ""]
        body += [
            f"<h2>Class {html.escape(cls)}</h2>",
            sbs.html(),
            "<p>Changes against the baseline:</p>",
            dt.html(),
        ]
    tt = significance_table(tests)
    md += ["## Significance", "", tt.markdown(), "", significance_note(), ""]
    md += [
        "## Definitions",
        "",
        definitions_md(base.summary.straggler_rule, has_goodput),
        "",
        "## Figures",
        "",
    ]
    md += [f"- [{f.title}]({f.png.name}) ([SVG]({f.svg.name})): {f.caption}" for f in figs]
    (out / "compare.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    text = comparison_text(derived, verdict, tests_for=tests)
    (out / "compare.txt").write_text(text + "\n", encoding="utf-8")
    body += [
        "<h2>Significance</h2>",
        tt.html(),
        f"<p>{html.escape(significance_note())}</p>",
        "<h2>Figures</h2>",
        figures_html(figs, out),
        "<h2>Definitions</h2>",
        definitions_html(base.summary.straggler_rule, has_goodput),
        '<p>Tables: <a href="compare.md">compare.md</a>, <a href="compare.json">compare.json</a>, '
        '<a href="compare.txt">compare.txt</a>.</p>',
    ]
    write_json(
        out / "compare.json",
        {
            "comparable": verdict.comparable,
            "problems": list(verdict.problems),
            "basis": basis,
            "baseline": base.label,
            "straggler_rule": base.summary.straggler_rule,
            "goodput": dict(base.summary.goodput),
            "definitions": dict(DEFINITIONS),
            "engine_note": engine_note(gstep, derived),
            "warnings": warn,
            "runs": [
                {
                    "label": r.label,
                    "recording": str(r.data.path) if r.data.path else None,
                    "scenario": r.data.info.scenario_name,
                    "seed": r.data.info.seed,
                    "status": r.data.status,
                    "clock": r.data.info.clock,
                    "engine": r.engine.as_dict(),
                    "engines": {e: s.as_dict() for e, s in r.engines.items()},
                    "client_delay": r.client.as_dict(),
                    "sim_drift": r.drift.as_dict(),
                    "overall": r.summary.overall.as_dict(),
                    "classes": [c.as_dict() for c in r.summary.classes],
                }
                for r in derived
            ],
            "tests": [t.as_dict() for t in tests],
            "figures": {f.name: {"png": f.png.name, "svg": f.svg.name, "caption": f.caption} for f in figs},
        },
    )
    index = out / "index.html"
    index.write_text(page(title, "\n".join(body)), encoding="utf-8")
    return Comparison(index, text, verdict.comparable, verdict.problems)


def comparison_text(
    derived: Sequence[Derived], verdict: Comparability, tests_for: Sequence[Any] | None = None
) -> str:
    """The comparison for a terminal: what was compared, warnings, the engine table, the side-by-side ASU
    table of the key class ("all", or the only one), its changes and its tests."""
    base = derived[0]
    classes = _class_names(derived)
    key = classes[-1]
    has_goodput = bool(base.summary.goodput)
    tests = list(tests_for) if tests_for is not None else significance_tests(derived, classes)
    basis = (
        verdict.basis
        if verdict.comparable
        else "NOT comparable, compared anyway (--force): " + "; ".join(verdict.problems)
    )
    lines = [basis, f"baseline: {base.label}"]
    lines += [f"warning: {w}" for w in _warnings(derived)]
    lines += [
        "",
        "engine:",
        engine_table(derived, base).text(),
        "",
        f"class {key}:",
        side_by_side(derived, key, has_goodput).text(),
        "",
        f"class {key}, changes against {base.label}:",
        delta_table(derived, base, key, has_goodput).text(),
        "",
        f"class {key}, Mann-Whitney U against {base.label} (p Holm-adjusted over all {len(tests)} tests):",
        significance_table([t for t in tests if t.cls == key]).text(),
        "",
        f"stragglers: {base.summary.straggler_rule}",
    ]
    return "\n".join(lines)


def compare_recordings(
    paths: Sequence[Path], out_dir: Path, *, force: bool, goodput: Mapping[str, float] | None = None
) -> Comparison:
    """``rllmtop compare A.db B.db ...``: the first recording is the baseline. The command prints
    ``Comparison.text`` (the side-by-side table) and the index path."""
    if len(paths) < 2:
        raise UserError("compare needs at least two recordings", "rllmtop compare A.db B.db")
    matplotlib_figure()
    return write_comparison([load_run(p) for p in paths], out_dir, force=force, goodput=goodput)


def build_comparison(
    paths: Sequence[Path], out_dir: Path, *, force: bool, goodput: Mapping[str, float] | None = None
) -> Path:
    """:func:`compare_recordings`, returning the path of ``DIR/index.html``."""
    return compare_recordings(paths, out_dir, force=force, goodput=goodput).index
