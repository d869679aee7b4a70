"""The typed reader of one TOML table: getters that return precise types and name the field and what is
allowed when a value is wrong. Unknown keys are refused with a did-you-mean."""

from __future__ import annotations

import difflib
import enum
import math
import shlex
from collections.abc import Sequence
from typing import Literal, NoReturn

from rllmtop.scenario.document import Raw
from rllmtop.scenario.limits import MAX_STRING_CHARS
from rllmtop.scenario.messages import Ctx, key_path, quantity

__all__ = ["REQUIRED", "Table"]


class _Required(enum.Enum):
    REQUIRED = enum.auto()


REQUIRED: Literal[_Required.REQUIRED] = _Required.REQUIRED
"""Default for a getter whose key must be present."""


def _bounds(gt: float | None, ge: float | None, le: float | None) -> str:
    out = []
    if gt is not None:
        out.append(f"> {quantity(gt)}")
    if ge is not None:
        out.append(f">= {quantity(ge)}")
    if le is not None:
        out.append(f"<= {quantity(le)}")
    return " and ".join(out)


class Table:
    """One TOML table being read: typed getters that name the field and what is allowed on error.

    Unknown keys are refused on construction (with a did-you-mean). ``raw`` must be a table, else the
    error says ``what`` it should be.
    """

    def __init__(
        self, ctx: Ctx, raw: object, path: str, allowed: Sequence[str], what: str = "a table"
    ) -> None:
        if not isinstance(raw, dict):
            ctx.fail(
                path or "(top level)", raw, f"must be {what}", f"a TOML table with keys {', '.join(allowed)}"
            )
        self.ctx = ctx
        self.raw: Raw = raw
        self.path = path
        for k in raw:
            if k not in allowed:
                close = difflib.get_close_matches(k, list(allowed), n=1)
                did = f" (did you mean {close[0]!r}?)" if close else ""
                ctx.fail(
                    self.p(k),
                    raw[k],
                    f"unknown key{did}",
                    f"keys of {path or 'the top level'}: {', '.join(allowed)}",
                )

    def p(self, key: str) -> str:
        return key_path(self.path, key)

    def has(self, key: str) -> bool:
        return key in self.raw

    def get(self, key: str) -> object:
        return self.raw.get(key)

    def fail(self, key: str, problem: str, allowed: str) -> NoReturn:
        self.ctx.fail(self.p(key), self.raw.get(key), problem, allowed)

    def _missing(self, key: str, example: str) -> NoReturn:
        self.ctx.missing(self.p(key), example)

    # numbers ------------------------------------------------------------------------------------------

    def _real(
        self, key: str, *, integer: bool, gt: float | None, ge: float | None, le: float | None, inf: bool
    ) -> float | int:
        v = self.raw[key]
        b = _bounds(gt, ge, le)
        allowed = ("an integer" if integer else "a number") + (f" {b}" if b else "")
        if inf:
            allowed += " (or inf)"
        if isinstance(v, bool) or not isinstance(v, int | float):
            self.fail(key, "wrong type", allowed)
        if isinstance(v, float) and math.isnan(v):
            self.fail(key, "not a number", allowed)
        if isinstance(v, float) and math.isinf(v):
            if not (inf and v > 0):
                self.fail(key, "must be finite", allowed)
            return v
        if integer and isinstance(v, float):
            if not v.is_integer():
                self.fail(key, "must be an integer", allowed)
            v = int(v)
        if (
            (gt is not None and not v > gt)
            or (ge is not None and not v >= ge)
            or (le is not None and not v <= le)
        ):
            self.fail(key, "out of range", allowed)
        return v

    def number(
        self,
        key: str,
        default: float | Literal[_Required.REQUIRED],
        *,
        gt: float | None = None,
        ge: float | None = None,
        le: float | None = None,
        inf: bool = False,
    ) -> float:
        """A finite number (``inf``: +inf allowed too) within the bounds."""
        if key not in self.raw:
            if default is REQUIRED:
                self._missing(key, f"{key} = <number>")
            return float(default)
        return float(self._real(key, integer=False, gt=gt, ge=ge, le=le, inf=inf))

    def number_opt(
        self,
        key: str,
        *,
        gt: float | None = None,
        ge: float | None = None,
        le: float | None = None,
        inf: bool = False,
    ) -> float | None:
        if key not in self.raw:
            return None
        return self.number(key, REQUIRED, gt=gt, ge=ge, le=le, inf=inf)

    def integer(
        self,
        key: str,
        default: int | Literal[_Required.REQUIRED],
        *,
        ge: int | None = None,
        le: int | None = None,
    ) -> int:
        """An integer (a float with an integral value is taken) within the bounds."""
        if key not in self.raw:
            if default is REQUIRED:
                self._missing(key, f"{key} = <integer>")
            return default
        v = self._real(key, integer=True, gt=None, ge=ge, le=le, inf=False)
        return int(v)

    def integer_opt(self, key: str, *, ge: int | None = None, le: int | None = None) -> int | None:
        if key not in self.raw:
            return None
        return self.integer(key, REQUIRED, ge=ge, le=le)

    # strings ------------------------------------------------------------------------------------------

    def string(
        self,
        key: str,
        default: str | Literal[_Required.REQUIRED],
        *,
        choices: Sequence[str] | None = None,
        nonempty: bool = True,
        max_len: int = MAX_STRING_CHARS,
    ) -> str:
        """A string of at most ``max_len`` characters; with ``choices``, one of them."""
        if key not in self.raw:
            if default is REQUIRED:
                self._missing(key, f'{key} = "..."' + (f" (one of {', '.join(choices)})" if choices else ""))
            return default
        v = self.raw[key]
        allowed = f"one of {', '.join(repr(c) for c in choices)}" if choices else "a string"
        if not isinstance(v, str):
            self.fail(key, "must be a string", allowed)
        if choices is not None:
            if v not in choices:
                close = difflib.get_close_matches(v[:64], list(choices), n=1) if len(v) <= 64 else []
                self.fail(key, f"unknown value{f' (did you mean {close[0]!r}?)' if close else ''}", allowed)
            return v
        if len(v) > max_len:
            self.fail(key, f"{len(v):,} characters", f"a string of at most {max_len:,} characters")
        if nonempty and not v.strip():
            self.fail(key, "must not be empty", allowed)
        return v

    def string_opt(
        self,
        key: str,
        *,
        choices: Sequence[str] | None = None,
        nonempty: bool = True,
        max_len: int = MAX_STRING_CHARS,
    ) -> str | None:
        if key not in self.raw:
            return None
        return self.string(key, REQUIRED, choices=choices, nonempty=nonempty, max_len=max_len)

    def line(self, key: str, default: str | None, *, max_len: int = MAX_STRING_CHARS) -> str | None:
        """A string on one line with no control characters (URLs, names, addresses)."""
        v = self.string_opt(key, max_len=max_len)
        if v is None:
            return default
        if not v.isprintable():
            self.fail(key, "contains control characters", "one line of printable text")
        return v

    # others -------------------------------------------------------------------------------------------

    def flag(self, key: str, default: bool) -> bool:
        v = self.flag_opt(key)
        return default if v is None else v

    def flag_opt(self, key: str) -> bool | None:
        if key not in self.raw:
            return None
        v = self.raw[key]
        if not isinstance(v, bool):
            self.fail(key, "must be true or false", "true, false")
        return v

    def strings(self, key: str) -> tuple[str, ...]:
        """A list of strings (a single string is split like a shell command line)."""
        if key not in self.raw:
            return ()
        v = self.raw[key]
        if isinstance(v, str):
            if len(v) > MAX_STRING_CHARS:
                self.fail(key, f"{len(v):,} characters", f"at most {MAX_STRING_CHARS:,} characters")
            try:
                return tuple(shlex.split(v))
            except ValueError as e:
                self.fail(key, f"cannot split: {e}", "a list of strings")
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            self.fail(key, "must be a list of strings", 'a list of strings, e.g. ["--flag", "value"]')
        for i, x in enumerate(v):
            if len(x) > MAX_STRING_CHARS:
                self.ctx.fail(
                    key_path(self.p(key), i), x, f"{len(x):,} characters", f"at most {MAX_STRING_CHARS:,}"
                )
        return tuple(str(x) for x in v)

    def str_map(self, key: str) -> dict[str, str]:
        """A table of strings (numbers are converted)."""
        if key not in self.raw:
            return {}
        v = self.raw[key]
        if not isinstance(v, dict):
            self.fail(key, "must be a table", "a table of string values")
        out: dict[str, str] = {}
        for k, x in v.items():
            p = key_path(self.p(key), k)
            if isinstance(x, bool) or not isinstance(x, str | int | float):
                self.ctx.fail(p, x, "must be a string", "a string (numbers are converted)")
            if isinstance(x, str) and len(x) > MAX_STRING_CHARS:
                self.ctx.fail(p, x, f"{len(x):,} characters", f"at most {MAX_STRING_CHARS:,} characters")
            out[k] = str(x)
        return out

    def table(self, key: str, allowed: Sequence[str], what: str = "a table") -> Table | None:
        """The sub-table ``key``, or None when absent."""
        if key not in self.raw:
            return None
        return Table(self.ctx, self.raw[key], self.p(key), allowed, what)

    def table_list(
        self, key: str, allowed: Sequence[str], *, max_items: int, example: str, required: bool = False
    ) -> list[Table]:
        """An array of tables (``[[key]]``), at most ``max_items``; empty when absent (unless required)."""
        if key not in self.raw:
            if required:
                self._missing(key, example)
            return []
        v = self.raw[key]
        if not isinstance(v, list) or (required and not v):
            self.fail(
                key, "must be a non-empty list of tables" if required else "must be a list of tables", example
            )
        if len(v) > max_items:
            self.fail(key, f"{len(v):,} entries", f"at most {max_items:,}")
        return [Table(self.ctx, x, key_path(self.p(key), i), allowed) for i, x in enumerate(v)]
