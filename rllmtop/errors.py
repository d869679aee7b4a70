"""User-facing errors: one line saying what failed and where, one saying what to do.

Raise :class:`UserError` for anything a user can fix (bad scenario, unreachable URL, missing extra,
corrupt recording). The CLI prints it without a traceback (``--debug`` shows one) and exits with
``exit_code``. Never put secrets in the message.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["UserError", "run_command"]


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


def run_command(prog: str, fn: Callable[[], int], *, debug: bool) -> int:
    """Run a command's body under the one error policy of every entry point: a UserError prints its two
    lines and exits with its code; Ctrl-C exits 130; any other exception (a bug) is one line, exit 2.
    ``debug``: let exceptions through (tracebacks)."""
    try:
        return fn()
    except UserError as e:
        if debug:
            raise
        print(f"{prog}: {e.what}", file=sys.stderr)
        if e.hint:
            print(f"  hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: one line, not a traceback (--debug shows it)
        if debug:
            raise
        print(
            f"{prog}: internal error: {type(e).__name__}: {' '.join(str(e).split())[:300]}", file=sys.stderr
        )
        print("  hint: run with --debug for the traceback, and please report it", file=sys.stderr)
        return 2
