"""ASU tables and the headless summary, as text, Markdown and HTML.

Numbers come from :mod:`rllmtop.metrics.analysis`, their formatting from :mod:`rllmtop.fmt`; this module
only lays them out. One row model (:class:`Table`) with three renderers, and one column definition
(:data:`COLUMNS`) for every face that shows an ASU table: the headless summary, replay, reports and
comparisons.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from rllmtop import fmt
from rllmtop.metrics.analysis import AsuSummary, ClassSummary

__all__ = [
    "COLUMNS",
    "GOODPUT_COLUMNS",
    "Column",
    "Table",
    "asu_table",
    "class_table",
    "columns_for",
    "format_summary",
    "goodput_line",
    "markdown_table",
    "summary_notes",
    "text_table",
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


def summary_notes(summary: AsuSummary, warnings: Sequence[str] = ()) -> list[str]:
    """The lines that go with an ASU table: goodput, what it does not cover, the straggler rule, and the
    trust warnings (``analysis.trust_warnings``), each prefixed with "warning:"."""
    lines = []
    g = goodput_line(summary)
    if g:
        lines.append(g)
    if summary.unfinished:
        lines.append(
            f"{summary.unfinished} request(s) never ended (in flight when the recording stopped): not counted"
        )
    if summary.recent is not None:
        lines.append(f"percentiles and stragglers over the most recent {summary.recent} ended requests")
    lines.append(f"stragglers: {summary.straggler_rule}")
    lines += [f"warning: {w}" for w in warnings]
    return lines


def format_summary(summary: AsuSummary | None, warnings: Sequence[str] = ()) -> str:
    """The headless ASU summary: the table and its notes (or "no requests ended")."""
    if summary is None or summary.overall.requests == 0:
        return "\n".join(["no requests ended", *(f"warning: {w}" for w in warnings)])
    return "\n".join([text_table(summary), *summary_notes(summary, warnings)])
