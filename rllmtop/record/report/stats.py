"""Significance of a comparison: two-sided Mann-Whitney U tests of each run against the baseline, per
class, on E2E, TTFVT and reasoning length, Holm-adjusted over every test of the comparison."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from rllmtop import fmt
from rllmtop.events import RequestRecord
from rllmtop.metrics.analysis import MIN_TEST_N, MannWhitney, holm, mann_whitney
from rllmtop.record.report.run import Derived
from rllmtop.summary import Table

__all__ = ["TESTED", "Significance", "significance_note", "significance_table", "significance_tests"]

TESTED: tuple[tuple[str, Callable[[RequestRecord], float | None]], ...] = (
    ("E2E", lambda q: q.e2e),
    ("TTFVT", lambda q: q.ttfvt),
    ("reasoning length", lambda q: float(q.reasoning_tokens)),
)

SIGNIFICANT = 0.05


@dataclass(frozen=True)
class Significance:
    cls: str
    metric: str
    run: str
    baseline: str
    result: MannWhitney
    p_holm: float | None = None

    @property
    def verdict(self) -> str:
        if self.p_holm is None:
            return fmt.MISSING
        return "significant" if self.p_holm < SIGNIFICANT else "n.s."

    def as_dict(self) -> dict[str, object]:
        return {
            "class": self.cls,
            "metric": self.metric,
            "run": self.run,
            "baseline": self.baseline,
            **self.result.as_dict(),
            "p_holm": self.p_holm,
            "verdict": self.verdict,
        }


def significance_tests(runs: Sequence[Derived], classes: Sequence[str]) -> list[Significance]:
    """Every (class, metric, run) test against the first run, with Holm-adjusted p-values."""
    base = runs[0]
    out: list[Significance] = []
    for cls in classes:
        for metric, get in TESTED:
            a = [v for q in base.ok if (cls == "all" or q.cls == cls) and (v := get(q)) is not None]
            for r in runs[1:]:
                b = [v for q in r.ok if (cls == "all" or q.cls == cls) and (v := get(q)) is not None]
                out.append(Significance(cls, metric, r.label, base.label, mann_whitney(a, b)))
    adjusted = holm([t.result.p for t in out])
    return [replace(t, p_holm=p) for t, p in zip(out, adjusted, strict=True)]


_HEAD = (
    "class",
    "metric",
    "run vs baseline",
    "n",
    "median",
    "U",
    "p",
    "p (Holm)",
    "P(run > base)",
    "verdict",
)
_RIGHT = (False, False, False, *([True] * 6), False)


def significance_table(tests: Sequence[Significance], unit: str = "s") -> Table:
    """Every column has a header, the last one the verdict (significant / n.s. at p (Holm) < 0.05)."""
    rows = []
    for t in tests:
        m = t.result
        show = fmt.tokens if t.metric == "reasoning length" else fmt.seconds
        rows.append(
            [
                t.cls,
                t.metric,
                f"{t.run} vs {t.baseline}",
                f"{m.n_b} / {m.n_a}",
                f"{show(m.median_b)} / {show(m.median_a)}",
                fmt.count(m.u),
                fmt.p_value(m.p),
                fmt.p_value(t.p_holm),
                fmt.MISSING if m.effect is None else f"{m.effect:.2f}",
                t.verdict,
            ]
        )
    return Table.of(_HEAD, rows, _RIGHT)


def significance_note() -> str:
    return (
        "Two-sided Mann-Whitney U test of each run against the baseline, over requests that finished ok; "
        "n and median are run / baseline; U is the run's statistic; P(run > base) is the common-language "
        "effect size (0.5 = no shift); p (Holm) is adjusted for all tests in this comparison; verdict: "
        f"significant = p (Holm) < {SIGNIFICANT:g}, n.s. = not significant; '{fmt.MISSING}' = fewer than "
        f"{MIN_TEST_N} values."
    )
