"""The ``[load]`` table: how much is sent, how, by how many senders, and what is kept."""

from __future__ import annotations

import math
import re

from rllmtop.scenario.limits import MAX_REQUESTS, MAX_RUN_SECONDS, MAX_WAIT_SECONDS, MAX_WORKERS
from rllmtop.scenario.messages import Ctx
from rllmtop.scenario.schema import APIS, WORKER_DEATH_POLICIES, LoadSpec
from rllmtop.scenario.tables import Table

__all__ = ["LOAD_TABLE_KEYS", "build_load"]

LOAD_TABLE_KEYS = (
    "num_prompts",
    "duration",
    "max_concurrency",
    "grace_period",
    "api",
    "record_answers",
    "request_seed",
    "return_token_ids",
    "timeout",
    "ignore_eos",
    "clamp_max_tokens",
    "workers",
    "ray",
    "on_worker_death",
)
# a Ray address: "auto", "local", "ray://HOST:PORT" (Ray Client) or "HOST:PORT" (the head's GCS)
_RAY_ADDRESS = re.compile(r"(?:ray://)?(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):[0-9]{1,5}")


def build_load(ctx: Ctx, raw: object) -> LoadSpec:
    t = Table(ctx, raw, "load", LOAD_TABLE_KEYS)
    return LoadSpec(
        num_prompts=t.integer_opt("num_prompts", ge=1, le=MAX_REQUESTS),
        duration=t.number_opt("duration", gt=0, le=MAX_RUN_SECONDS),
        max_concurrency=t.integer_opt("max_concurrency", ge=1, le=MAX_REQUESTS),
        grace_period=t.number("grace_period", 30.0, ge=0, le=MAX_WAIT_SECONDS),
        api=t.string("api", "chat", choices=APIS),
        record_answers=t.flag("record_answers", False),
        request_seed=t.flag_opt("request_seed"),
        return_token_ids=t.flag("return_token_ids", False),
        timeout=t.number("timeout", 3600.0, gt=0, le=MAX_WAIT_SECONDS),
        ignore_eos=t.flag("ignore_eos", False),
        clamp_max_tokens=t.flag("clamp_max_tokens", False),
        workers=_workers(t),
        ray=_ray(t),
        on_worker_death=t.string("on_worker_death", "continue", choices=WORKER_DEATH_POLICIES),
    )


def _workers(t: Table) -> int:
    """``workers = N`` (1..MAX_WORKERS) or ``"auto"`` (0: picked from the planned rate and streams)."""
    v = t.get("workers")
    if v is None:
        return 1
    if v == "auto":
        return 0
    allowed = f'an integer 1..{MAX_WORKERS}, or "auto" (picked from the planned rate and streams)'
    if isinstance(v, bool) or not isinstance(v, int | float):
        t.fail("workers", "wrong type" if not isinstance(v, str) else "unknown value", allowed)
    if isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
        t.fail("workers", "must be an integer", allowed)
    if not 1 <= v <= MAX_WORKERS:
        t.fail("workers", "out of range", allowed)
    return int(v)


def _ray(t: Table) -> str | None:
    v = t.line("ray", None)
    if v is None or v in ("auto", "local"):
        return v
    ok = _RAY_ADDRESS.fullmatch(v) is not None and 0 < int(v.rsplit(":", 1)[1]) <= 65535
    if not ok:
        t.fail(
            "ray", "not a Ray address", '"auto", "local", "HOST:PORT" (the head node) or "ray://HOST:10001"'
        )
    return v
