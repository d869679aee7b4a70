"""Client-side balancing: which engine of a fleet each request is sent to.

The session hands the sender a load target (``rllmtop.session.load.LoadTarget``: ``url``, ``model``,
``api_key``, ``url_engine``, ``endpoints``, ``balance``); :class:`Target` is the shape the runner needs of it.
With ``balance = "none"`` (or no endpoints) every request goes to ``url`` and records ``engine =
url_engine``. Otherwise:

- ``round_robin``: the request of arrival i goes to endpoint i mod N. Arrival indices are global, so the
  split is the same whatever the number of senders (sender k of n sends arrivals k, k + n, ...).
- ``least_in_flight``: to the endpoint with the fewest requests in flight *from this sender* (the sender
  cannot see the others), ties to the lowest index; decided when the request starts (after any
  concurrency-cap wait).

Every turn of a conversation goes to the endpoint its first turn went to, whatever the policy, so the
engine's prefix cache sees the history it already holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["POLICIES", "Balancer", "EndpointLike", "Target"]

POLICIES = ("none", "round_robin", "least_in_flight")


class EndpointLike(Protocol):
    """One engine to send to (``rllmtop.session.load.Endpoint``)."""

    @property
    def engine_id(self) -> str: ...
    @property
    def url(self) -> str: ...


class Target(Protocol):
    """Where the load goes (``rllmtop.session.load.LoadTarget``)."""

    @property
    def url(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def api_key(self) -> str | None: ...
    @property
    def url_engine(self) -> str: ...
    @property
    def endpoints(self) -> Sequence[EndpointLike]: ...
    @property
    def balance(self) -> str: ...


class Balancer:
    """Picks an endpoint index for a request and keeps this sender's in-flight count per endpoint."""

    __slots__ = ("in_flight", "n", "policy")

    def __init__(self, policy: str, n: int) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown balance policy {policy!r}; known: {', '.join(POLICIES)}")
        if n < 1:
            raise ValueError("a balancer needs at least one endpoint")
        self.policy = policy if n > 1 else "none"
        self.n = n
        self.in_flight = [0] * n

    def pick(self, arrival: int) -> int:
        """The endpoint of a new request of ``arrival`` (not yet counted in flight: see :meth:`started`)."""
        if self.policy == "round_robin":
            return arrival % self.n
        if self.policy == "least_in_flight":
            f = self.in_flight
            return f.index(min(f))
        return 0

    def started(self, k: int) -> None:
        self.in_flight[k] += 1

    def ended(self, k: int) -> None:
        self.in_flight[k] -= 1
