"""The load side of a session: who sends the scenario's schedule.

Three senders, one surface (:class:`Sender`), so the session never knows which one sends:

- ``load.workers = 1`` (the default), no Ray: the in-process :class:`~rllmtop.workload.runner.Runner`;
- ``load.workers = N`` (or ``"auto"``, see :func:`~rllmtop.workload.workers.auto_workers`): N worker
  processes on this machine (:class:`~rllmtop.workload.workers.ProcessSender`);
- ``load.ray = ADDRESS``: workers as Ray actors over the cluster's nodes, ``load.workers`` per node
  (:class:`~rllmtop.workload.ray_workers.RaySender`; needs ``rllmtop[ray]``).

Every sender sends the same seeded schedule (``Schedule.part`` splits it by request index), so the
choice changes who sends a request, never which requests are sent or when. Client-side balancing
(``LoadTarget.balance``) travels with the target to every sender: ``round_robin`` splits by global arrival
index (the same split whatever the number of senders), ``least_in_flight`` counts each sender's own
requests in flight.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from rllmtop.clock import Clock, Publish
from rllmtop.events import LogEvent
from rllmtop.scenario import Scenario

__all__ = ["Endpoint", "LoadTarget", "Sender", "build_sender", "sender_notes"]


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
    """What the session needs of whatever sends the schedule.

    ``run()`` returns when every request has ended; it raises :class:`~rllmtop.errors.UserError` when
    the run must fail (a worker died under ``on_worker_death = "stop"``, every worker died, Ray could not
    be reached). ``stop_sending()`` is the gentle stop, ``cancel()`` the forced one (the session's stop
    policy calls them). Scale-out senders also offer ``detail`` (one line for the status detail when the
    run ends, "" when there is nothing to say: "1 of 4 workers died: ...") and ``warnings`` (sentences the
    summary must carry: worker deaths, clock offsets); the in-process runner has neither."""

    planned: int | None  # requests in the schedule, once known
    sending_done: asyncio.Event  # no more requests will be sent

    @property
    def in_flight(self) -> int: ...  # sent (or connecting) and not ended
    async def run(self) -> None: ...
    def stop_sending(self) -> None: ...
    def cancel(self) -> None: ...


def sender_notes(sender: object) -> tuple[str, list[str]]:
    """(status detail, summary warnings) a sender has to say once it ran ("" and [] for none)."""
    detail = getattr(sender, "detail", "")
    warnings = getattr(sender, "warnings", ())
    return (detail if isinstance(detail, str) else ""), [w for w in warnings if isinstance(w, str)]


def build_sender(scenario: Scenario, target: LoadTarget, *, clock: Clock, publish: Publish) -> Sender:
    """The sender for ``scenario`` (see the module doc)."""
    load = scenario.load
    kw = dict(base_url=target.url, model=target.model, api_key=target.api_key, clock=clock, publish=publish)
    if load.ray is not None:
        from rllmtop.workload.ray_workers import RaySender

        return RaySender(scenario, address=load.ray, per_node=load.workers, target=target, **kw)  # type: ignore[arg-type]
    n = load.workers
    if n == 0:
        from rllmtop.workload.workers import auto_workers

        n, why = auto_workers(scenario)
        publish(LogEvent(clock.now(), "rllmtop", "info", why))
    if n > 1:
        from rllmtop.workload.workers import ProcessSender

        return ProcessSender(scenario, workers=n, target=target, **kw)  # type: ignore[arg-type]
    from rllmtop.workload.runner import Runner

    return Runner(scenario, target=target, **kw)  # type: ignore[arg-type]
