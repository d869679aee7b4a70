"""Edits of a parsed scenario before it is built: command-line overrides and ``[matrix]`` cells.

Both write into the raw TOML document and note in the error context where each field came from, so a bad
value is reported as ``--request-rate -3: ...`` or ``[matrix] engine.kv_cache_dtype = "fp3": ...``.
:func:`fork` copies a document deeply enough that a cell's edits never reach the base document.
"""

from __future__ import annotations

from collections.abc import Mapping

from rllmtop.errors import UserError
from rllmtop.scenario.document import Raw
from rllmtop.scenario.messages import Ctx, display
from rllmtop.scenario.schema import OVERRIDE_FLAGS

__all__ = ["CELL_TABLES", "apply_cell", "apply_override", "check_cell_key", "fork"]

CELL_TABLES = ("engine", "arrival", "load", "classes", "slo")
"""Tables a dotted ``[matrix]`` key may address (``classes.X`` sets X in every class)."""
_TABLES = ("engine", "arrival", "load", "slo")


def fork(raw: Raw) -> Raw:
    """A copy of ``raw`` that :func:`apply_override` and :func:`apply_cell` may edit: the top level, each
    table of it and each class are copied; deeper levels are copied by :func:`apply_cell` as it descends."""
    out: Raw = dict(raw)
    for t in _TABLES:
        v = out.get(t)
        if isinstance(v, dict):
            out[t] = dict(v)
    classes = out.get("classes")
    if isinstance(classes, list):
        out["classes"] = [dict(c) if isinstance(c, dict) else c for c in classes]
    return out


def _table(raw: Raw, name: str) -> Raw | None:
    """``raw[name]`` as an editable table (created when absent); None when it is not a table."""
    v = raw.setdefault(name, {})
    return v if isinstance(v, dict) else None


def apply_override(ctx: Ctx, raw: Raw, key: str, value: object) -> None:
    """Apply one command-line override (a key of :data:`OVERRIDE_FLAGS`) to ``raw``."""
    flag = OVERRIDE_FLAGS.get(key)
    if flag is None:
        raise ValueError(f"unknown scenario override {key!r}; known: {', '.join(OVERRIDE_FLAGS)}")
    arrival, engine, load = _table(raw, "arrival"), _table(raw, "engine"), _table(raw, "load")
    if arrival is None or engine is None or load is None:
        return  # the table itself is malformed; building it reports that
    process = arrival.get("process", "gamma")
    kind = engine.get("kind", "sim")
    if key == "request_rate":
        if process not in ("gamma", "poisson", "constant"):
            raise UserError(
                f"{flag} does not apply to arrival.process = '{display(str(process), 40)}' in {ctx.file}",
                "edit the [arrival] table (rates of phases, burst size, trace time_scale) instead",
            )
        if ctx.origin.get("arrival.ramp_up_strategy") == OVERRIDE_FLAGS["ramp_up_strategy"]:
            raise _ramp_and_rate()
        arrival["rate"] = value
        ctx.origin["arrival.rate"] = flag
    elif key in ("ramp_up_strategy", "ramp_up_start_rate", "ramp_up_end_rate"):
        if process not in ("gamma", "poisson", "constant"):
            raise UserError(
                f"{flag} does not apply to arrival.process = '{display(str(process), 40)}' in {ctx.file}",
                "a ramp-up moves the rate of gamma, poisson or constant arrivals",
            )
        if key == "ramp_up_strategy":  # the ramp sets the rate: the file's single rate gives way
            if ctx.origin.get("arrival.rate") == OVERRIDE_FLAGS["request_rate"]:
                raise _ramp_and_rate()
            arrival.pop("rate", None)
            arrival.pop("rescale", None)
        arrival[key] = value
        ctx.origin[f"arrival.{key}"] = flag
    elif key == "burstiness":
        if process not in ("gamma", "poisson"):
            raise UserError(
                f"{flag} does not apply to arrival.process = '{display(str(process), 40)}' in {ctx.file}",
                "burstiness shapes Gamma arrivals; edit the [arrival] table instead",
            )
        arrival["process"] = "gamma"
        arrival["burstiness"] = value
        ctx.origin["arrival.burstiness"] = flag
    elif key in ("max_concurrency", "num_prompts", "duration"):
        load[key] = value
        ctx.origin[f"load.{key}"] = flag
    elif key in ("seed", "model"):
        raw[key] = value
        ctx.origin[key] = flag
    elif key == "base_url":
        raw["engine"] = {"kind": "url", "url": value}
        ctx.origin["engine.url"] = flag
    else:  # speed, profile: simulator only
        if kind != "sim":
            raise UserError(
                f"{flag} applies to the simulator only, but engine.kind = '{display(str(kind), 40)}' in {ctx.file}",
                f"drop {flag}, or run a scenario whose engine is the simulator",
            )
        engine[key] = value
        ctx.origin[f"engine.{key}"] = flag


def _ramp_and_rate() -> UserError:
    return UserError(
        "--request-rate and --ramp-up-strategy both set the arrival rate",
        "give one: a ramp-up moves the rate from --ramp-up-start-rate to --ramp-up-end-rate (as vllm bench serve)",
    )


def check_cell_key(ctx: Ctx, key: str) -> list[str]:
    """The parts of a ``[matrix]`` key: an override name (one part) or a dotted field of a known table."""
    if key in OVERRIDE_FLAGS:
        return [key]
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        raise UserError(
            f"{ctx.file}: matrix key '{display(key, 60)}' is not a field",
            "use an override name (profile, request_rate, ...) or a dotted field: engine.X, arrival.X, "
            "load.X, slo.X, classes.X (every class)",
        )
    if parts[0] not in CELL_TABLES:
        raise UserError(
            f"{ctx.file}: matrix key '{display(key, 60)}': unknown table '{display(parts[0], 40)}'",
            f"allowed tables: {', '.join(CELL_TABLES)}",
        )
    return parts


def _set(ctx: Ctx, table: Raw, parts: list[str], value: object, key: str) -> None:
    """Set ``table[parts[0]][parts[1]]...`` to value, copying each nested table on the way."""
    for i, name in enumerate(parts[:-1]):
        sub = table.get(name, {})
        if not isinstance(sub, dict):
            raise UserError(
                f"{ctx.file}: matrix key '{display(key, 60)}': {display('.'.join(parts[: i + 1]), 60)} is not a table",
                "address a field inside a table, or give the whole value in the matrix",
            )
        sub = dict(sub)
        table[name] = sub
        table = sub
    table[parts[-1]] = value


def apply_cell(ctx: Ctx, raw: Raw, cell: Mapping[str, object]) -> None:
    """Apply a ``[matrix]`` cell to ``raw`` (a :func:`fork`); values win over the command line."""
    for key, value in cell.items():
        label = f"[matrix] {key} ="
        parts = check_cell_key(ctx, key)
        if len(parts) == 1:
            apply_override(ctx, raw, key, value)
            for p, src in list(ctx.origin.items()):
                if src == OVERRIDE_FLAGS[key]:
                    ctx.origin[p] = label
            continue
        table, rest = parts[0], parts[1:]
        if table == "classes":
            classes = raw.get("classes")
            if isinstance(classes, list):
                for i, c in enumerate(classes):
                    if isinstance(c, dict):
                        _set(ctx, c, rest, value, key)
                        ctx.origin[f"classes[{i}].{'.'.join(rest)}"] = label
            continue
        t = _table(raw, table)
        if t is not None:
            _set(ctx, t, rest, value, key)
            ctx.origin[key] = label
