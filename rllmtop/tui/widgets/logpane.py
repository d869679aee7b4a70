"""Log panes (engine log, event log): append only the lines not drawn yet."""

from __future__ import annotations

from collections.abc import Callable

from textual.widgets import Log

from rllmtop.events import LogEvent
from rllmtop.view import LOG_LINES, ViewSnapshot

__all__ = ["LogPane"]

_LEVEL = {"debug": "D", "info": "I", "warning": "W", "error": "E"}


class LogPane(Log):
    """Shows ``select(snap)`` = (lines kept, lines ever appended). Clears when a new stream starts."""

    DEFAULT_CSS = """
    LogPane {
        height: 1fr;
        width: 1fr;
        scrollbar-size-vertical: 1;
    }
    """

    def __init__(
        self,
        select: Callable[[ViewSnapshot], tuple[tuple[LogEvent, ...], int]],
        *,
        show_source: bool = True,
        id: str | None = None,
    ) -> None:
        super().__init__(max_lines=LOG_LINES, auto_scroll=True, id=id)
        self.select = select
        self.show_source = show_source
        self._generation = -1
        self._seen = 0

    def update_snapshot(self, snap: ViewSnapshot) -> None:
        lines, total = self.select(snap)
        if snap.generation != self._generation or total < self._seen:
            self.clear()
            self._generation = snap.generation
            self._seen = 0
        new = total - self._seen
        if new <= 0:
            return
        self._seen = total
        self.write_lines(self._format(e) for e in lines[-min(new, len(lines)) :])

    def _format(self, e: LogEvent) -> str:
        src = f"{e.source}: " if self.show_source else ""
        return f"{e.t:8.1f}s {_LEVEL.get(e.level, '?')} {src}{e.text}"
