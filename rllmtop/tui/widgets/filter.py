"""The one-line text filter for the request board (``/``)."""

from __future__ import annotations

from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import Input

__all__ = ["FilterInput"]


class FilterInput(Input):
    """Enter applies (posts ``Input.Submitted``), escape cancels (posts :class:`FilterInput.Cancelled`)."""

    DEFAULT_CSS = """
    FilterInput, FilterInput:focus {
        height: 1;
        border: none;
        padding: 0 1;
        display: none;
    }
    FilterInput.-open {
        display: block;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel filter", show=True)]

    class Cancelled(Message):
        pass

    def action_cancel(self) -> None:
        self.post_message(self.Cancelled())
