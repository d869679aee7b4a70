"""Scenario files (``scenarios/*.toml``) -> a validated :class:`Scenario` and its provenance.

The package, one concern a module:

- :mod:`~rllmtop.scenario.schema`: the dataclasses every module codes against, and field vocabularies
- :mod:`~rllmtop.scenario.limits`: the bounds checked at load (``scenarios/README.md``, "Limits")
- :mod:`~rllmtop.scenario.messages`: what an error says (file, field path, value shortened and escaped)
- :mod:`~rllmtop.scenario.document`: the whole TOML document checked before any table is read
- :mod:`~rllmtop.scenario.tables`: the typed reader of one table (getters with precise types)
- :mod:`~rllmtop.scenario.overrides`: command-line overrides and ``[matrix]`` cells applied to the document
- :mod:`~rllmtop.scenario.engine`, ``arrival``, ``load``, ``classes``, ``slo``, ``matrix``: one builder a table
- :mod:`~rllmtop.scenario.build`: the whole scenario, and the checks across tables (the run ends, in bounds)
- :mod:`~rllmtop.scenario.provenance`: overrides, cell, planned count, canonical workload; the legacy header
- :mod:`~rllmtop.scenario.loader`: shipped names and paths, reading the file, ``load_scenario``, cells

Every error is a :class:`rllmtop.errors.UserError` naming the file, the field, the bad value and what is
allowed. Unknown keys are errors (a typo must not pass silently).
"""

from __future__ import annotations

from rllmtop.scenario.limits import MAX_ENGINES, MAX_MATRIX_CELLS, MAX_REQUESTS, MAX_RUN_SECONDS
from rllmtop.scenario.loader import list_scenarios, load_scenario, matrix_cells, scenario_dirs
from rllmtop.scenario.provenance import canonical_workload, planned_requests, provenance_from_text
from rllmtop.scenario.schema import (
    ARRIVAL_PROCESSES,
    BALANCE_POLICIES,
    BUILTIN_PROMPT_SETS,
    DIFFICULTIES,
    ENGINE_KINDS,
    GOODPUT_KEYS,
    OVERRIDE_FLAGS,
    RAMP_UP_STRATEGIES,
    REASONING_EFFORTS,
    SLO_KEYS,
    TRACE_FORMATS,
    ArrivalSpec,
    ConversationSpec,
    EngineEndpoint,
    EngineSpec,
    LoadSpec,
    PhaseSpec,
    PrometheusSpec,
    PromptSource,
    RequestClass,
    Scenario,
    SpeculativeConfig,
)

__all__ = [
    "ARRIVAL_PROCESSES",
    "BALANCE_POLICIES",
    "BUILTIN_PROMPT_SETS",
    "DIFFICULTIES",
    "ENGINE_KINDS",
    "GOODPUT_KEYS",
    "MAX_ENGINES",
    "MAX_MATRIX_CELLS",
    "MAX_REQUESTS",
    "MAX_RUN_SECONDS",
    "OVERRIDE_FLAGS",
    "RAMP_UP_STRATEGIES",
    "REASONING_EFFORTS",
    "SLO_KEYS",
    "TRACE_FORMATS",
    "ArrivalSpec",
    "ConversationSpec",
    "EngineEndpoint",
    "EngineSpec",
    "LoadSpec",
    "PhaseSpec",
    "PrometheusSpec",
    "PromptSource",
    "RequestClass",
    "Scenario",
    "SpeculativeConfig",
    "canonical_workload",
    "list_scenarios",
    "load_scenario",
    "matrix_cells",
    "planned_requests",
    "provenance_from_text",
    "scenario_dirs",
]
