"""Rich styles the widgets reuse (building a Style costs; combining two cached ones does not)."""

from __future__ import annotations

from functools import lru_cache

from rich.style import Style

__all__ = ["BOLD", "DIM", "HEADING", "RED", "RED_BOLD", "REVERSE", "color"]

BOLD = Style(bold=True)
DIM = Style(dim=True)
REVERSE = Style(reverse=True)
HEADING = Style(bold=True, underline=True)
RED = Style(color="red")
RED_BOLD = Style(color="red", bold=True)


@lru_cache(maxsize=64)
def color(name: str) -> Style:
    return Style(color=name)
