"""Reports from recordings: figures, ASU tables, one self-contained HTML page; comparisons of recordings.

``build_report(path, out_dir)`` writes, for one recording:

- figures, each as PNG and SVG (:data:`FIGURES`): ``kv_usage`` (KV-cache usage over time, per engine and
  for a fleet, preemptions per window below), ``running_waiting``, ``run_time`` (E2E CDF + histogram,
  stragglers marked: behind their batch, in the tail, or behind their class), ``reasoning_length`` (by
  class and difficulty), ``latency_cdfs`` (TTFT, TTFVT, E2E), ``arrivals``, and for one run
  ``request_timeline`` (:data:`RUN_FIGURES`: a Gantt chart of every request under the KV/queue strip; its
  SVG has a hover title per request);
- "who filled the cache": at each KV peak and preemption burst, the requests in flight holding the most
  tokens (``asu.md``, ``asu.json`` ``cache_moments``, the page);
- ``asu.md`` and ``asu.json``: the trust warnings first (client delay, simulator drift), the ASU table
  per class (numbers from :func:`rllmtop.metrics.analysis.asu_summary`, laid out by
  :func:`rllmtop.summary.asu_table`), goodput when SLOs are given, the engine summary, the definitions;
- ``index.html``: all of it on one page that needs no other file.

``compare_recordings(paths, out_dir, force=...)`` writes the same figures overlaid (one colour per run),
``compare.md`` / ``compare.json`` / ``compare.txt`` / ``index.html`` with the ASU tables side by side,
changes against the first run (the baseline), the engine summary, and two-sided Mann-Whitney U tests
(Holm-adjusted) on E2E, TTFVT and reasoning length per class; its ``text`` is the side-by-side table for a
terminal. Comparable runs: see :mod:`rllmtop.record.report.compare`.

Modules: ``run`` (run data and what is derived from it), ``figures``, ``tables``, ``stats``, ``html``,
``output`` (files and their errors), ``single`` (one report), ``compare``.
"""

from rllmtop.record.report.compare import (
    Comparability,
    Comparison,
    build_comparison,
    comparability,
    comparability_problems,
    compare_recordings,
    write_comparison,
)
from rllmtop.record.report.figures import FIGURES, RUN_FIGURES
from rllmtop.record.report.run import RunData, load_run
from rllmtop.record.report.single import build_report, write_report

__all__ = [
    "FIGURES",
    "RUN_FIGURES",
    "Comparability",
    "Comparison",
    "RunData",
    "build_comparison",
    "build_report",
    "comparability",
    "comparability_problems",
    "compare_recordings",
    "load_run",
    "write_comparison",
    "write_report",
]
