"""Rich styles the widgets reuse (building a Style costs; combining two cached ones does not)."""

from __future__ import annotations

from functools import lru_cache

from rich.style import Style
from textual.widget import Widget

__all__ = ["BOLD", "DIM", "HEADING", "RED", "RED_BOLD", "REVERSE", "CachedStyle", "color"]

BOLD = Style(bold=True)
DIM = Style(dim=True)
REVERSE = Style(reverse=True)
HEADING = Style(bold=True, underline=True)
RED = Style(color="red")
RED_BOLD = Style(color="red", bold=True)


@lru_cache(maxsize=64)
def color(name: str) -> Style:
    return Style(color=name)


class CachedStyle(Widget):
    """A widget whose own Rich style (``rich_style`` walks every ancestor's styles, ~0.1 ms) is looked up
    once and kept until its styles change (a theme or CSS change notifies every node)."""

    _base_cache: Style | None = None

    @property
    def base_style(self) -> Style:
        style = self._base_cache
        if style is None:
            style = self._base_cache = self.rich_style
        return style

    def notify_style_update(self) -> None:
        self._base_cache = None
        super().notify_style_update()
