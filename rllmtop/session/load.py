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

__all__ = ["LoadTarget", "Sender", "build_sender"]


@dataclass(frozen=True)
class LoadTarget:
    """Where the load goes: one URL (an engine, a router or a gateway), the model to name in requests."""

    url: str
    model: str
    api_key: str | None = None


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
