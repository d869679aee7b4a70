"""The load side of a session: who sends the scenario's schedule.

Today one in-process :class:`~rllmtop.workload.runner.Runner`. Every sender offers the same surface
(:class:`Sender`), so the session never knows whether the schedule is sent by this process, by worker
processes or by Ray actors.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from rllmtop.clock import Clock, Publish
from rllmtop.scenario import Scenario

__all__ = ["Endpoint", "LoadTarget", "Sender", "build_sender"]


@dataclass(frozen=True)
class Endpoint:
    """One engine the load may be sent to directly (client-side balancing)."""

    engine_id: str  # EngineInfo.id: what RequestRecord.engine says
    url: str  # base URL serving /v1 (secrets included: never published)


@dataclass(frozen=True)
class LoadTarget:
    """Where the load goes.

    ``balance == "none"``: every request goes to ``url`` (one engine, a router or a gateway); requests record
    ``engine = url_engine`` ("" behind a router: which engine served it is unknown). Otherwise the sender
    balances client-side over ``endpoints`` with that policy ("round_robin": request i goes to endpoint
    i mod N; "least_in_flight": the endpoint with the fewest requests in flight from this sender, ties to
    the lowest index) and records each request's engine."""

    url: str
    model: str
    api_key: str | None = None
    url_engine: str = ""  # the EngineInfo.id behind ``url`` when it is one engine ("" for a router)
    endpoints: tuple[Endpoint, ...] = ()
    balance: str = "none"  # "none" | "round_robin" | "least_in_flight"


class Sender(Protocol):
    """What the session needs of whatever sends the schedule."""

    planned: int | None  # requests in the schedule, once known
    in_flight: int  # sent (or connecting) and not ended
    sending_done: asyncio.Event  # no more requests will be sent

    async def run(self) -> None: ...
    def stop_sending(self) -> None: ...
    def cancel(self) -> None: ...


def build_sender(scenario: Scenario, target: LoadTarget, *, clock: Clock, publish: Publish) -> Sender:
    """The sender for ``scenario``: the in-process runner."""
    from rllmtop.workload.runner import Runner

    return Runner(
        scenario,
        base_url=target.url,
        model=target.model,
        api_key=target.api_key,
        clock=clock,
        publish=publish,
    )
