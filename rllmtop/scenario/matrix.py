"""The ``[matrix]`` table: settings to compare, one recorded run per cell of their cartesian product."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping

from rllmtop.scenario.limits import MAX_MATRIX_CELLS
from rllmtop.scenario.messages import Ctx, display, key_path, show
from rllmtop.scenario.overrides import check_cell_key

__all__ = ["base_name", "build_matrix", "cell_label", "cells"]


def build_matrix(ctx: Ctx, raw: object) -> dict[str, tuple[object, ...]]:
    """Keys may be quoted (``"engine.kv_cache_dtype" = [...]``) or dotted tables; both flatten to one key.
    The number of cells is checked before any is built."""
    if not isinstance(raw, dict):
        ctx.fail("matrix", raw, "must be a table", 'key = [values...], e.g. profile = ["rllm-7b", "llm-7b"]')
    out: dict[str, tuple[object, ...]] = {}
    order: list[tuple[str, object]] = []
    stack: list[tuple[Iterator[tuple[str, object]], str]] = [(iter(raw.items()), "")]
    while stack:  # depth-first, in file order
        items, prefix = stack[-1]
        nxt = next(items, None)
        if nxt is None:
            stack.pop()
            continue
        k, v = nxt
        if isinstance(v, dict):
            stack.append((iter(v.items()), f"{prefix}{k}."))
        else:
            order.append((f"{prefix}{k}", v))
    for key, v in order:
        if not isinstance(v, list) or not v:
            ctx.fail(
                key_path("matrix", key),
                v,
                "must be a non-empty list of values",
                f"{display(key, 40)} = [value1, value2]",
            )
        if key in out:
            ctx.error(
                f"matrix key '{display(key, 60)}' is given twice (quoted and dotted)", "keep one of them"
            )
        check_cell_key(ctx, key)
        out[key] = tuple(v)
    n = math.prod(len(v) for v in out.values())
    if n > MAX_MATRIX_CELLS:
        sizes = " x ".join(f"{display(k, 30)} {len(v)}" for k, v in out.items())
        ctx.error(
            f"[matrix] has {n:,} cells ({display(sizes, 120)})",
            f"allowed: at most {MAX_MATRIX_CELLS} cells (MAX_MATRIX_CELLS): each cell is a whole recorded run",
        )
    return out


def cells(matrix: Mapping[str, tuple[object, ...]]) -> Iterator[dict[str, object]]:
    """Every cell of the cartesian product, in file order."""
    keys = list(matrix)
    for values in itertools.product(*(matrix[k] for k in keys)):
        yield dict(zip(keys, values, strict=True))


def cell_label(cell: Mapping[str, object]) -> str:
    """``profile=rllm-7b,engine.kv_cache_dtype=fp8``: booleans as on/off, tables as {k=v,...}."""

    def one(v: object) -> str:
        if isinstance(v, dict):
            return "{" + ",".join(f"{k}={one(x)}" for k, x in v.items()) + "}"
        if isinstance(v, bool):
            return "on" if v else "off"
        if isinstance(v, str):
            return display(v, 60)
        if isinstance(v, list):
            return show(v, 60)
        return str(v)

    return ",".join(f"{k}={one(v)}" for k, v in cell.items())


def base_name(scenario: object) -> str:
    """A scenario's name without its matrix cell's ``[label]`` (the loader names cells ``name[label]``)."""
    name: str = getattr(scenario, "name", "")
    return name[: name.index("[")] if "[" in name and name.endswith("]") else name
