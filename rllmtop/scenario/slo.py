"""The ``[slo]`` table: run-level SLOs (exit codes for CI) and per-request goodput SLOs."""

from __future__ import annotations

from rllmtop.scenario.limits import MAX_WAIT_SECONDS
from rllmtop.scenario.messages import Ctx
from rllmtop.scenario.schema import GOODPUT_KEYS, SLO_KEYS
from rllmtop.scenario.tables import Table

__all__ = ["build_slo"]


def build_slo(ctx: Ctx, raw: object) -> tuple[dict[str, float], dict[str, float]]:
    """(run SLOs, goodput SLOs). ``[slo.goodput]`` (or ``goodput = {...}``) holds the per-request ones."""
    t = Table(ctx, raw, "slo", (*SLO_KEYS, "goodput"))
    slo: dict[str, float] = {}
    for k in t.raw:
        if k == "goodput":
            continue
        if k in ("error_rate", "accuracy"):
            slo[k] = t.number(k, 0.0, ge=0, le=1)
        else:
            slo[k] = t.number(k, 0.0, ge=0)
    goodput: dict[str, float] = {}
    g = t.table("goodput", tuple(GOODPUT_KEYS), what="a table: ttfvt = 30, e2el = 120 (seconds)")
    if g is not None:
        for k in g.raw:
            goodput[k] = g.number(k, 0.0, gt=0, le=MAX_WAIT_SECONDS)
    return slo, goodput
