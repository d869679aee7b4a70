"""The whole TOML document, before any table is read: its size, nesting, lengths and secret names.

:func:`parse_document` refuses in one line what is larger, deeper or longer than the limits of
:mod:`rllmtop.scenario.limits` (including what would make :mod:`tomllib` itself crash or crawl), and any
key whose name is a secret's.
"""

from __future__ import annotations

import tomllib
from typing import NoReturn

from rllmtop.errors import UserError
from rllmtop.redact import is_secret_name
from rllmtop.scenario.limits import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_ITEMS,
    MAX_KEY_CHARS,
    MAX_TEXT_CHARS,
    MAX_VALUES,
)
from rllmtop.scenario.messages import Ctx, display, escape, key_path

__all__ = ["Raw", "check_document", "parse_document"]

Raw = dict[str, object]
"""A TOML table as :mod:`tomllib` returns it."""


def parse_document(ctx: Ctx, text: str) -> Raw:
    """TOML text -> its top-level table, refused in one line when it is larger, deeper or longer than the
    limits (:mod:`rllmtop.scenario.limits`) or names a secret."""
    if len(text) > MAX_FILE_BYTES:
        ctx.error(
            f"{len(text):,} characters, more than a scenario may hold",
            f"allowed: at most {MAX_FILE_BYTES:,} bytes (MAX_FILE_BYTES)",
        )
    _check_dotted_keys(ctx, text)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(
            f"{ctx.file}: not valid TOML: {escape(str(e), 200)}",
            "fix the syntax at that line (scenarios/README.md shows the format)",
        ) from e
    except RecursionError as e:
        raise UserError(
            f"{ctx.file}: tables or lists nested too deeply to read",
            f"allowed: at most {MAX_DEPTH} levels of nesting (MAX_DEPTH)",
        ) from e
    check_document(ctx, raw)
    return raw


_DOTS_SCANNED = 256  # a dotted key this long is refused before parsing (the nesting limit refuses 17 parts)


def _scan_value(s: str, i: int, depth: int) -> tuple[int, str | None]:
    """From ``s[i]``, the bracket depth at the end of the line and the multi-line string left open."""
    n = len(s)
    while i < n:
        c = s[i]
        if c in "\"'":
            if s.startswith(c * 3, i):
                close = s.find(c * 3, i + 3)
                if close < 0:
                    return depth, c * 3
                i = close + 3
                continue
            i += 1
            while i < n and s[i] != c:
                i += 2 if (s[i] == "\\" and c == '"') else 1
        elif c == "#":
            break
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth = max(depth - 1, 0)
        i += 1
    return depth, None


def _check_dotted_keys(ctx: Ctx, text: str) -> None:
    """Refuse a dotted key of hundreds of parts before :mod:`tomllib` reads it: its time grows with the
    square of the parts (100k parts: minutes). One linear pass; only the key of a top-level
    ``key = value`` line (outside multi-line strings, arrays and inline tables) is counted."""
    in_ml: str | None = None
    depth = 0
    for n, line in enumerate(text.split("\n"), 1):
        if in_ml is not None:
            close = line.find(in_ml)
            if close < 0:
                continue
            depth, in_ml = _scan_value(line, close + 3, depth)
            continue
        if depth > 0:  # inside an array or inline table spanning lines
            depth, in_ml = _scan_value(line, 0, depth)
            continue
        s = line.lstrip()
        if not s or s[0] in "#[":
            continue
        dots, quote, i = 0, "", 0
        while i < len(s):
            c = s[i]
            if quote:
                if c == "\\" and quote == '"':
                    i += 1
                elif c == quote:
                    quote = ""
            elif c in "\"'":
                quote = c
            elif c == ".":
                dots += 1
            elif c == "=":
                break
            i += 1
        if dots >= _DOTS_SCANNED:
            ctx.error(
                f"line {n}: a dotted key of {dots + 1:,} parts",
                f"allowed: at most {MAX_DEPTH} levels of tables and lists (MAX_DEPTH)",
            )
        depth, in_ml = _scan_value(s, i + 1, 0)


def check_document(ctx: Ctx, raw: Raw) -> None:
    """One iterative pass over every value: nesting, sizes, string and key lengths, secret names."""
    count = 0
    stack: list[tuple[object, str, int]] = [(raw, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            ctx.error(
                f"more than {MAX_VALUES:,} values (tables, lists and scalars)",
                f"allowed: at most {MAX_VALUES:,} values in one scenario file (MAX_VALUES)",
            )
        if isinstance(node, str):
            if len(node) > MAX_TEXT_CHARS:
                ctx.fail(
                    path,
                    node,
                    f"{len(node):,} characters",
                    f"a string of at most {MAX_TEXT_CHARS:,} characters (MAX_TEXT_CHARS)",
                )
            continue
        if not isinstance(node, dict | list):
            continue
        if depth > MAX_DEPTH:
            ctx.error(
                f"{path or '(top level)'}: nested more than {MAX_DEPTH} levels deep",
                f"allowed: at most {MAX_DEPTH} levels of tables and lists (MAX_DEPTH)",
            )
        if len(node) > MAX_ITEMS:
            ctx.error(
                f"{path or '(top level)'}: {len(node):,} entries",
                f"allowed: at most {MAX_ITEMS:,} entries in one table or list (MAX_ITEMS)",
            )
        if isinstance(node, list):
            for i, x in enumerate(node):
                stack.append((x, key_path(path, i), depth + 1))
            continue
        for k, x in node.items():
            p = key_path(path, k)
            if len(k) > MAX_KEY_CHARS:
                ctx.error(
                    f"{p}: a key of {len(k):,} characters",
                    f"allowed: keys of at most {MAX_KEY_CHARS} characters (MAX_KEY_CHARS)",
                )
            if is_secret_name(k):
                _secret(ctx, p, k)
            stack.append((x, p, depth + 1))


def _secret(ctx: Ctx, path: str, key: str) -> NoReturn:
    if path.startswith("engine.env."):
        raise UserError(
            f"{ctx.file}: {path}: secrets do not belong in scenario files (they are recorded)",
            f"export {display(key, 60)} in your shell instead: launched engines inherit rllmtop's environment",
        )
    raise UserError(
        f"{ctx.file}: {path}: API keys do not belong in scenario files (they are recorded)",
        "pass --api-key KEY or set OPENAI_API_KEY instead; engine secrets go in your shell's environment",
    )
