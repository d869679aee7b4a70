"""Bounds on what a scenario may ask for, checked when it is loaded (``scenarios/README.md``, "Limits").

Each bound is here once, named; the loader's messages quote the value. They exist so that a typo or a
generated file (``duration = 1e9``, ``limit = 1000000``, a matrix of a million cells, TOML nested a thousand
deep) is refused in one line at load instead of hanging, allocating gigabytes or running for years.
"""

from __future__ import annotations

__all__ = [
    "MAX_BUILTIN_ITEMS",
    "MAX_CLASSES",
    "MAX_DEPTH",
    "MAX_ENGINES",
    "MAX_FILE_BYTES",
    "MAX_INT",
    "MAX_ITEMS",
    "MAX_KEY_CHARS",
    "MAX_MATRIX_CELLS",
    "MAX_NAME_CHARS",
    "MAX_REQUESTS",
    "MAX_RUN_SECONDS",
    "MAX_SEED",
    "MAX_STRING_CHARS",
    "MAX_TEXT_CHARS",
    "MAX_TOKENS",
    "MAX_TRACE_SCALE",
    "MAX_TURNS",
    "MAX_VALUES",
    "MAX_WAIT_SECONDS",
    "MAX_WEIGHT",
    "MAX_WORKERS",
    "MIN_SCRAPE_INTERVAL",
]

# ---------------------------------------------------------------------------------------- the file itself
MAX_FILE_BYTES = 262_144
"""A scenario file is at most 256 KiB (the shipped ones are under 2 KB; the text is stored in every
recording; reading 256 KiB of the densest TOML takes about 0.15 s)."""
MAX_DEPTH = 16
"""Tables and lists nest at most 16 levels (the deepest real use, a matrix of speculative tables, is 4)."""
MAX_ITEMS = 1_024
"""Entries in one table or list (keys of ``[engine.env]``, ``args``, phases, matrix values, ...)."""
MAX_VALUES = 10_000
"""Values in the whole file, every table, list and scalar counted (a large real scenario has a few hundred)."""
MAX_KEY_CHARS = 256
"""Characters in one key."""
MAX_TEXT_CHARS = 65_536
"""Characters in any string; free text (``description``, ``system``, ``template``) may use all of it."""
MAX_STRING_CHARS = 4_096
"""Characters in every other string: model names, profiles, URLs, paths, arguments."""
MAX_NAME_CHARS = 64
"""Characters in a scenario, class or endpoint name (names end up in file names and table columns)."""

# ------------------------------------------------------------------------------------------ the run
MAX_REQUESTS = 1_000_000
"""Requests one run may plan. The schedule (send times, classes, prompts) is built before the first send,
about 100 bytes and 1 us a request: 1,000,000 requests are ~100 MB and ~1 s. Counted from ``num_prompts``,
from rate x duration, or bursts x size, whichever ends the run first; a conversation class counts each turn."""
MAX_RUN_SECONDS = 604_800.0
"""Seconds of sending one run may plan: 7 days. Bounds ``load.duration``, each phase and their sum, a burst
interval, and the expected span of a schedule (``num_prompts / rate``); traces are checked when read."""
MAX_WAIT_SECONDS = 86_400.0
"""Seconds for any single wait: timeouts, the grace period, think time, a stall, a Prometheus backfill."""
MAX_MATRIX_CELLS = 256
"""Cells of a ``[matrix]`` (the product of its list lengths). Every cell is validated at load, and each one
is a whole recorded run; the count is checked before any cell is built."""
MAX_CLASSES = 64
"""``[[classes]]`` tables."""
MAX_ENGINES = 64
"""Engines of a fleet: ``[engine] endpoints`` and simulator ``replicas``."""
MAX_WORKERS = 256
"""Sender processes (``load.workers``), per node under Ray."""
MAX_BUILTIN_ITEMS = 10_000
"""Items of a built-in prompt set (``prompts.limit``); they are generated at the start of the run, about
0.15 ms each (10,000 items: ~1.5 s)."""
MAX_TOKENS = 10_000_000
"""``max_tokens`` and ``reasoning_budget``."""
MAX_TURNS = 64
"""Turns of a conversation."""
MAX_WEIGHT = 1e6
"""A class weight (weights are relative; a huge one would overflow their sum)."""
MAX_TRACE_SCALE = 1_000.0
"""``arrival.time_scale`` and ``arrival.rate_scale`` lie in [1/1000, 1000]."""
MAX_INT = 2**31 - 1
"""Engine integer settings (``max_num_seqs``, ``max_model_len``, ...), as the engines store them."""
MAX_SEED = 2**63 - 1
"""``seed`` (a 64-bit signed integer, as TOML and OpenAI's ``seed`` have it)."""
MIN_SCRAPE_INTERVAL = 0.01
"""``scrape_interval`` in seconds lies in [0.01, 3600]."""
