"""ASU tables as text: the headless summary, Markdown for reports. Numbers come from metrics/analysis.py;
this module only formats them (one column definition for every output)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rllmtop.metrics.analysis import AsuSummary, ClassSummary

__all__ = ["COLUMNS", "Column", "markdown_table", "text_table"]


def _s(v: float | None) -> str:
    if v is None:
        return "-"
    if v < 1:
        return f"{v * 1000:.0f}ms"
    return f"{v:.2f}s" if v < 100 else f"{v:.0f}s"


def _trio(d: dict[int, float | None]) -> str:
    return "/".join(_s(d.get(q)) for q in (50, 90, 99))


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if v is None else fmt.format(v)


@dataclass(frozen=True)
class Column:
    title: str
    get: Callable[[ClassSummary], str]
    help: str
    right: bool = True


COLUMNS: tuple[Column, ...] = (
    Column("class", lambda c: c.name, "request class from the scenario", right=False),
    Column("reqs", lambda c: str(c.requests), "requests that ended"),
    Column("err", lambda c: str(c.errors + c.cancelled), "errors + cancelled"),
    Column("acc", lambda c: _pct(c.accuracy), "A: correct / graded"),
    Column("tok/s", lambda c: _num(c.output_tps), "S: output tokens (reasoning + answer) / span"),
    Column("TTFT p50/90/99", lambda c: _trio(c.ttft), "first token of any kind"),
    Column("TTFVT p50/90/99", lambda c: _trio(c.ttfvt), "U: first visible (answer) token"),
    Column("E2E p50/90/99", lambda c: _trio(c.e2e), "U: end-to-end latency"),
    Column(
        "reason p50/p99",
        lambda c: f"{_num(c.reasoning_len[50])}/{_num(c.reasoning_len[99])}",
        "reasoning tokens per request",
    ),
    Column("cut", lambda c: str(c.truncated), "finish_reason=length (hit max_tokens)"),
    Column("strag", lambda c: str(c.stragglers), "stragglers (rule below)"),
    Column("lag p99", lambda c: _s(c.send_lag[99]), "client send lag p99 (actual - scheduled send)"),
)


def _rows(summary: AsuSummary) -> list[ClassSummary]:
    rows = list(summary.classes)
    if len(rows) != 1:
        rows.append(summary.overall)
    return rows


def text_table(summary: AsuSummary, columns: Sequence[Column] = COLUMNS) -> str:
    """Fixed-width table for a terminal; one row per class plus "all"."""
    cells = [[c.title for c in columns]] + [[c.get(r) for c in columns] for r in _rows(summary)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for row in cells:
        parts = [
            cell.rjust(w) if col.right else cell.ljust(w)
            for cell, w, col in zip(row, widths, columns, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(summary: AsuSummary, columns: Sequence[Column] = COLUMNS) -> str:
    head = "| " + " | ".join(c.title for c in columns) + " |"
    sep = "|" + "|".join("---:" if c.right else "---" for c in columns) + "|"
    body = ["| " + " | ".join(c.get(r) for c in columns) + " |" for r in _rows(summary)]
    return "\n".join([head, sep, *body])
