"""One formatter per unit: every face (headless summary, reports, compare, TUI) shows a number the same way.

Rules: a value that is missing (``None`` or NaN) is shown as :data:`MISSING`; seconds below one second are
shown in milliseconds (a TTFT of 0.04 s is "40ms", never "0.0s"); fractions are shown as percentages.
Nothing here computes a number: that is :mod:`rllmtop.metrics.analysis`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = [
    "MISSING",
    "change",
    "count",
    "duration",
    "elapsed",
    "p_value",
    "percent",
    "points",
    "rate",
    "safe_name",
    "seconds",
    "seconds_trio",
    "tokens",
]

MISSING = "—"
"""Shown for a value that does not exist (never measured, not served, no data): never a 0."""


def _missing(v: float | None) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def seconds(v: float | None) -> str:
    """``0.00025`` -> ``0.25ms``, ``0.653`` -> ``653ms``, ``2.234`` -> ``2.23s``, ``312.4`` -> ``312s``."""
    if _missing(v):
        return MISSING
    assert v is not None
    if math.isinf(v):
        return "∞"
    a = abs(v)
    if a == 0:
        return "0ms"
    if a < 0.001:
        return f"{v * 1000:.2f}ms"
    if a < 0.01:
        return f"{v * 1000:.1f}ms"
    if a < 1:
        return f"{v * 1000:.0f}ms"
    if a < 100:
        return f"{v:.2f}s"
    return f"{v:.0f}s"


def seconds_trio(values: Mapping[int, float | None], qs: Sequence[int] = (50, 90, 99)) -> str:
    """Percentiles ``p50/p90/p99`` of seconds, each with its unit: ``55ms/1.20s/8.30s`` (or ``—``)."""
    vals = [values.get(q) for q in qs]
    if all(_missing(v) for v in vals):
        return MISSING
    return "/".join(seconds(v) for v in vals)


def percent(v: float | None, digits: int = 1) -> str:
    """A fraction 0..1 as a percentage: ``0.734`` -> ``73.4%``."""
    if _missing(v):
        return MISSING
    assert v is not None
    return f"{100 * v:.{digits}f}%"


def points(delta: float | None) -> str:
    """A change of a fraction, in percentage points: ``0.012`` -> ``+1.2 pp``."""
    if _missing(delta):
        return MISSING
    assert delta is not None
    return f"{100 * delta:+.1f} pp"


def change(v: float | None, base: float | None) -> str:
    """Relative change of ``v`` against ``base``: ``+12%``, ``from 0`` when the base is 0, "" when unknown."""
    if _missing(v) or _missing(base):
        return ""
    assert v is not None and base is not None
    if base == 0:
        return "" if v == 0 else "from 0"
    return f"{100 * (v - base) / base:+.0f}%"


def tokens(v: float | None) -> str:
    """A token count (or a percentile of one): ``8192``; ``1776`` for 1776.4."""
    if _missing(v):
        return MISSING
    assert v is not None
    return f"{v:.0f}"


def count(v: float | None) -> str:
    """A count of things (requests, preemptions): ``118``."""
    if _missing(v):
        return MISSING
    assert v is not None
    return f"{v:.0f}"


def rate(v: float | None) -> str:
    """A per-second rate (tok/s, req/s) with sensible precision: ``50819``, ``12.5``, ``0.53``."""
    if _missing(v):
        return MISSING
    assert v is not None
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def p_value(v: float | None) -> str:
    """A p-value: ``0.0312``, ``<0.0001``."""
    if _missing(v):
        return MISSING
    assert v is not None
    return "<0.0001" if v < 1e-4 else f"{v:.4f}"


def duration(v: float | None) -> str:
    """A span of time as a window length (the charts' and the timeline's axes): ``30s``, ``58.52`` ->
    ``58.5s``, ``90s`` -> ``1.5m``, ``300`` -> ``5m``, ``3600`` -> ``1h``."""
    if _missing(v):
        return MISSING
    assert v is not None
    if v >= 3600 and v % 3600 == 0:
        return f"{v / 3600:g}h"
    if v >= 60 and v % 60 == 0:
        return f"{v / 60:g}m"
    if v >= 60:
        return f"{v / 60:.1f}m"
    return f"{round(v, 1):g}s"  # a window that grows with a young session: 58.5s, not 58.5219s


def elapsed(v: float | None) -> str:
    """A clock reading since the start: ``0:42``, ``12:05``, ``1:02:03``."""
    if _missing(v):
        return MISSING
    assert v is not None
    s = max(0, int(v))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def safe_name(text: str, default: str = "cell") -> str:
    """``text`` as a file-name part: letters, digits, ``-_.``; runs of anything else one ``-``."""
    out = "".join(c if c.isalnum() or c in "-_." else "-" for c in text)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-") or default
