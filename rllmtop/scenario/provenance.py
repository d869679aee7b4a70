"""How a scenario became a session's workload, resolved once at load (:class:`rllmtop.events.Provenance`):
the overrides, the matrix cell, the planned request count and a canonical form of the workload tables.

:func:`provenance_from_text` is the one reader of the legacy comment header that schema-1 recordings carry
above their scenario text (``# rllmtop: overrides: ...``); nothing writes that header any more.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from rllmtop.errors import UserError
from rllmtop.events import Provenance
from rllmtop.redact import redact_url
from rllmtop.scenario.build import build_scenario
from rllmtop.scenario.document import parse_document
from rllmtop.scenario.matrix import cell_label
from rllmtop.scenario.messages import Ctx
from rllmtop.scenario.overrides import apply_override
from rllmtop.scenario.schema import OVERRIDE_FLAGS, Scenario

__all__ = [
    "canonical_workload",
    "planned_requests",
    "provenance",
    "provenance_from_text",
    "workload_scenario",
]

# keys of [load] that steer the run but not which requests are sent when (left out of the workload)
_RUN_CONTROL_LOAD = frozenset(
    {"grace_period", "record_answers", "workers", "ray", "on_worker_death", "timeout", "return_token_ids"}
)
_HEADER = "# rllmtop: "


def planned_requests(sc: Scenario) -> int | None:
    """Requests the schedule will hold, when the scenario says up front: ``num_prompts`` (an upper bound
    when ``duration`` may end sending first), or one burst's size. None: open-ended (duration only, or a
    trace whose length is only known once it is read, or conversations, whose turn counts are drawn: the
    runner counts those once its schedule is built)."""
    if any(c.conversation is not None for c in sc.classes):
        return None
    if sc.load.num_prompts is not None:
        return sc.load.num_prompts
    a = sc.arrival
    if a.process == "burst" and a.burst_interval is None and a.burst_size is not None:
        return a.burst_size
    return None


def canonical_workload(raw: Mapping[str, object]) -> str:
    """Canonical JSON of what decides which requests are sent when: seed, model, [arrival], [load] minus
    run control, [[classes]] (a raw scenario table after overrides and the matrix cell)."""
    load = raw.get("load", {})
    doc = {
        "seed": raw.get("seed", 0),
        "model": raw.get("model"),
        "arrival": raw.get("arrival", {}),
        "load": {k: v for k, v in load.items() if k not in _RUN_CONTROL_LOAD}
        if isinstance(load, dict)
        else load,
        "classes": raw.get("classes", []),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)


def _json_value(v: object) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"), default=str)


def provenance(
    raw: Mapping[str, object],
    source: str,
    overrides: Mapping[str, object],
    cell: Mapping[str, object],
    sc: Scenario,
) -> Provenance:
    """The provenance of ``sc``, built from ``raw`` (its document after overrides and cell)."""
    shown = {k: (redact_url(str(v)) if k == "base_url" else v) for k, v in overrides.items()}
    workload = canonical_workload(raw)
    return Provenance(
        source=source,
        overrides=tuple((k, _json_value(v)) for k, v in shown.items()),
        override_flags=tuple((k, OVERRIDE_FLAGS.get(k, k)) for k in shown),
        cell=tuple((k, _json_value(v)) for k, v in cell.items()),
        cell_label=cell_label(cell) if cell else "",
        planned_requests=planned_requests(sc),
        workload=workload,
        workload_digest=hashlib.sha256(workload.encode()).hexdigest()[:12],
    )


def strip_legacy_header(text: str) -> str:
    """A schema-1 scenario text without the ``# rllmtop: ...`` lines above it."""
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines) and lines[i].startswith(_HEADER):
        i += 1
    return "".join(lines[i:])


def provenance_from_text(scenario_text: str, source: str = "") -> Provenance | None:
    """Provenance of a schema-1 recording, whose scenario text starts with the comment header this package
    wrote then (``# rllmtop: overrides: --flag value ...`` / ``# rllmtop: matrix cell: k=v,...``). The
    one place that legacy format is read. None when the text is not a scenario."""
    if not scenario_text:
        return None
    header: dict[str, str] = {}
    for line in scenario_text.splitlines():
        if not line.startswith(_HEADER):
            break
        key, _, value = line[len(_HEADER) :].partition(":")
        header[key.strip()] = value.strip()
    flag_to_key = {f: k for k, f in OVERRIDE_FLAGS.items()}
    given: dict[str, str] = {}
    flag: str | None = None
    for tok in header.get("overrides", "").split():
        if tok.startswith("--") and tok in flag_to_key:
            flag = tok
            given[flag_to_key[flag]] = ""
        elif flag is not None:
            k = flag_to_key[flag]
            given[k] = (given[k] + " " + tok).strip()
    values: dict[str, object] = {}
    for k, text in given.items():
        try:
            values[k] = json.loads(text)
        except ValueError:
            values[k] = text
    ctx = Ctx(source or "<recorded scenario>")
    try:
        raw = parse_document(ctx, strip_legacy_header(scenario_text))
    except UserError:
        return None
    for k, given_value in values.items():
        try:
            apply_override(ctx, raw, k, given_value)
        except UserError:
            pass
    label = header.get("matrix cell", "")
    cell = (
        tuple((k, _json_value(v)) for k, _, v in (p.partition("=") for p in label.split(",") if p))
        if label
        else ()
    )
    workload = canonical_workload(raw)
    try:
        n = planned_requests(build_scenario(ctx, {**raw, "name": "recorded"}, Path(source or "recorded")))
    except (UserError, ValueError, TypeError, KeyError):
        n = None
    return Provenance(
        source=source,
        overrides=tuple((k, _json_value(v)) for k, v in values.items()),
        override_flags=tuple((k, OVERRIDE_FLAGS[k]) for k in values),
        cell=cell,
        cell_label=label,
        planned_requests=n,
        workload=workload,
        workload_digest=hashlib.sha256(workload.encode()).hexdigest()[:12],
    )


def workload_scenario(p: Provenance) -> Scenario:
    """The recorded workload (``p.workload``: seed, model, arrival, load and classes after overrides and
    the matrix cell) as a Scenario on the default engine; relative files resolve next to ``p.source``.
    Raises UserError when the recorded text no longer builds (e.g. written by another version)."""
    where = f"the workload recorded from {p.source or 'a scenario'}"
    try:
        raw = json.loads(p.workload)
    except ValueError:
        raw = None
    if not isinstance(raw, dict):
        raise UserError(f"{where}: not a JSON table", "record the run again with this version")
    from rllmtop.scenario.loader import _shipped  # the loader imports this module

    path = Path(p.source) if p.source.endswith(".toml") else _shipped().get(p.source, Path("recorded.toml"))
    doc = {"name": "recorded", **{k: v for k, v in raw.items() if v is not None}}
    return build_scenario(Ctx(where), doc, path)
