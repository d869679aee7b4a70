"""Experiment matrices: run every cell of a scenario's ``[matrix]`` with the same workload, then compare.

A scenario's ``[matrix]`` table maps keys to lists of values (``profile = ["rllm-7b", "llm-7b"]``,
``"engine.kv_cache_dtype" = ["auto", "fp8"]``); the scenario loader validates the keys and builds one
scenario per cell of the cartesian product (:func:`rllmtop.scenario.matrix_cells`). :func:`run_matrix` runs the
cells one after the other, each as its own headless session launching its own engine (or simulator) with
the cell's settings and the scenario's seed, records each to ``<dir>/<scenario>-<cell>-<UTC>.db`` (``dir`` =
``recordings/`` or ``--record DIR``), and finally writes the comparison of all recorded cells
(:func:`rllmtop.record.report.build_comparison`, the first cell is the baseline) to
``<dir>/<scenario>-matrix-<UTC>/`` (``reports/`` instead of ``recordings/`` by default).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from rllmtop.errors import UserError
from rllmtop.events import SessionState
from rllmtop.fmt import safe_name
from rllmtop.scenario import Scenario
from rllmtop.scenario.matrix import base_name

__all__ = ["CellResult", "MatrixCell", "cell_label", "plan_matrix", "run_matrix"]


@dataclass(frozen=True)
class MatrixCell:
    index: int  # 1-based
    values: Mapping[str, Any]
    label: str  # "profile=llm-7b,engine.kv_cache_dtype=fp8"
    scenario: Scenario
    record_path: Path


@dataclass(frozen=True)
class CellResult:
    cell: MatrixCell
    state: SessionState
    exit_code: int
    requests: int
    wall_s: float


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, Mapping):
        return "{" + ",".join(f"{k}={_show(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list | tuple):
        return "[" + ",".join(_show(x) for x in v) + "]"
    return str(v)


def cell_label(values: Mapping[str, Any]) -> str:
    """``key=value`` pairs of a cell, in matrix order (booleans as on/off, ``engine.`` dropped)."""
    return ",".join(f"{k.removeprefix('engine.')}={_show(v)}" for k, v in values.items())


def _record_dir(record: str | Path | None) -> Path:
    if record is None:
        return Path("recordings")
    d = Path(record)
    if d.suffix == ".db" or (d.exists() and not d.is_dir()):
        raise UserError(
            f"--record {record}: with --matrix, --record names a directory (one recording per cell)",
            "pass a directory, e.g. --record recordings/pilot",
        )
    return d


def plan_matrix(
    scenario: Scenario, *, record: str | Path | None = None, stamp: str | None = None
) -> list[MatrixCell]:
    """The cells to run, validated before anything starts (each cell's engine command is built once, so a
    bad value in the last cell fails now, not an hour in)."""
    from rllmtop.engines.launch_args import LAUNCHABLE_KINDS, build_command
    from rllmtop.scenario import matrix_cells

    where = scenario.path or scenario.name
    if not scenario.matrix:
        raise UserError(
            f"{where}: --matrix needs a [matrix] table in the scenario",
            'add one, e.g. [matrix] profile = ["rllm-7b", "llm-7b"], or run without --matrix',
        )
    cells = matrix_cells(scenario)
    stamp = stamp or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    directory = _record_dir(record)
    base = safe_name(base_name(scenario))
    out: list[MatrixCell] = []
    labels: set[str] = set()
    for i, (values, sc) in enumerate(cells, 1):
        label = cell_label(values)
        if label in labels:
            raise UserError(
                f"{where}: [matrix] has the cell {label} twice",
                "remove the repeated value from the [matrix] list",
            )
        labels.add(label)
        eng = sc.engine
        if eng.kind in LAUNCHABLE_KINDS:
            try:
                build_command(eng, seed=sc.seed, port=eng.port or 1)
            except UserError as e:
                raise UserError(f"{where}: matrix cell {label}: {e.what}", e.hint) from e
        path = directory / f"{base}-{safe_name(label)}-{stamp}.db"
        out.append(MatrixCell(i, dict(values), label, sc, path))
    return out


def _run_cell(cell: MatrixCell, api_key: str | None, out: TextIO, progress: TextIO) -> CellResult:
    from rllmtop.headless import run_headless
    from rllmtop.session import Session, SessionPlan

    sc = cell.scenario
    session = Session(
        SessionPlan(
            mode="headless",
            scenario=sc,
            engine=sc.engine,
            api_key=api_key,
            record_path=cell.record_path,
            scrape_interval=sc.scrape_interval,
            info_extra=(("matrix_cell", cell.label),),
        )
    )
    t = time.monotonic()
    code = run_headless(session, out=out, progress_out=progress)
    n = session.outcome.requests if session.outcome is not None else 0
    return CellResult(cell, session.state, code, n, time.monotonic() - t)


def _exit_code(results: list[CellResult]) -> int:
    codes = [r.exit_code for r in results]
    if 130 in codes:
        return 130
    return max(codes, default=0)


def run_matrix(
    scenario: Scenario,
    *,
    headless: bool = True,
    api_key: str | None = None,
    record: str | Path | None = None,
    out: TextIO | None = None,
    progress: TextIO | None = None,
    report_dir: str | Path | None = None,
) -> int:
    """Run every cell (headless: progress on ``progress``, summaries on ``out``), record each, write the
    comparison; returns the worst exit code (130 if interrupted, which also skips the remaining cells).

    Matrix runs are always headless: ``headless=False`` is accepted for the CLI's sake and behaves the same.
    """
    del headless  # one TUI per cell would hide the matrix progress; cells always run headless
    out = out or sys.stdout
    progress = progress or sys.stderr
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    cells = plan_matrix(scenario, record=record, stamp=stamp)
    base = safe_name(base_name(scenario))
    if report_dir is None:
        report_dir = (
            _record_dir(record) if record is not None else Path("reports")
        ) / f"{base}-matrix-{stamp}"
    n = len(cells)
    t_start = time.monotonic()
    results: list[CellResult] = []
    for cell in cells:
        print(f"cell {cell.index}/{n}: {cell.label} -> {cell.record_path}", file=progress, flush=True)
        res = _run_cell(cell, api_key, out, progress)
        results.append(res)
        print(
            f"cell {cell.index}/{n}: {cell.label}: {res.state.value}, {res.requests} requests, "
            f"{res.wall_s:.1f} s",
            file=progress,
            flush=True,
        )
        if res.exit_code == 130:
            print(f"matrix interrupted: {n - cell.index} cell(s) not run", file=progress, flush=True)
            break
    total = time.monotonic() - t_start
    print(f"\nmatrix {base_name(scenario)}: {len(results)}/{n} cells in {total:.1f} s", file=out)
    for r in results:
        print(
            f"  {r.cell.index}. {r.cell.label}: {r.state.value}, {r.requests} requests, {r.wall_s:.1f} s, "
            f"{r.cell.record_path}",
            file=out,
        )
    recorded = [r.cell.record_path for r in results if r.requests and r.cell.record_path.exists()]
    if len(recorded) >= 2:
        from rllmtop.record.report import build_comparison

        index = build_comparison(recorded, Path(report_dir), force=False)
        overview = index.with_name("compare.txt")
        if overview.exists():
            print("", file=out)
            print(overview.read_text(encoding="utf-8").rstrip(), file=out)
        print(f"comparison: {index}", file=out)
    else:
        print("comparison: skipped (fewer than two cells recorded requests)", file=out)
    out.flush()
    return _exit_code(results)
