"""User-facing errors: one line saying what failed and where, one saying what to do.

Raise :class:`UserError` for anything a user can fix (bad scenario, unreachable URL, missing extra,
corrupt recording). The CLI prints it without a traceback (``--debug`` shows one) and exits with
``exit_code``. Never put secrets in the message.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """An error the user can act on.

    ``what``: one line naming the file/field/URL and what is wrong.
    ``hint``: one line saying what to do about it.
    """

    def __init__(self, what: str, hint: str = "", *, exit_code: int = 2) -> None:
        super().__init__(what)
        self.what = what
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.what if not self.hint else f"{self.what}\n  hint: {self.hint}"
