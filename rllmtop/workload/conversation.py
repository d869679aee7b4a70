"""Multi-turn conversations: how many turns, which prompt each turn asks, how long the user thinks.

Open-loop at the conversation level: each arrival of a class with ``[classes.conversation]`` starts a
conversation at its scheduled time; its K turns are closed-loop (turn k + 1 is sent ``think_time`` after turn
k's answer ended, with the history). Everything is decided by the scenario seed and the arrival index alone,
so one sender or many send the same conversations:

- K = ``turns``, or drawn uniformly from ``turns..turns_max`` (:func:`turn_counts`);
- turn 0 asks the arrival's prompt (the class mix); turn k > 0 asks item ``hash(seed, arrival, k) mod size``
  of the class's prompt set (:func:`turn_item`);
- the think time before turn k > 0 is exponential with mean ``think_time`` seconds (session seconds, so a
  time-lapse run of the simulator compresses it like every other time) (:func:`think_time`);
- a failed turn ends its conversation, and so does ``load.duration``: a turn due after it is not sent.

Request ids: with a conversation class in the scenario, ``rid = arrival index x 64 + turn`` (``STRIDE``; at
most 64 turns, ``MAX_TURNS``) for every request of the run, single-turn classes included (turn 0); without
one, ``rid = arrival index`` as before. Either way a rid names the same request whatever the number of
senders (``Schedule.part`` splits by arrival index, so a conversation stays on one sender).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from rllmtop.scenario import ConversationSpec, RequestClass
from rllmtop.workload.prompts import PromptItem

__all__ = ["STRIDE", "has_conversations", "think_time", "turn_count", "turn_counts", "turn_item"]

STRIDE = 64
"""rid = arrival x STRIDE + turn when a scenario has conversations (MAX_TURNS turns at most)."""

_M64 = (1 << 64) - 1
_COUNT, _ITEM, _THINK = 0x434E54, 0x49544D, 0x544B4E  # key domains


def has_conversations(classes: Sequence[RequestClass]) -> bool:
    return any(c.conversation is not None for c in classes)


def _step(z: int, p: int) -> int:
    z = (z ^ (int(p) & _M64)) + 0x9E3779B97F4A7C15 & _M64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _M64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _M64
    return z ^ (z >> 31)


def _key(seed: int, domain: int, arrival: int, turn: int = 0) -> int:
    """splitmix64 of (seed, domain, arrival, turn): a stable 64-bit key."""
    return _step(_step(_step(_step(0x9E3779B97F4A7C15, seed), domain), arrival), turn)


def _step_vec(z: np.ndarray, p: np.ndarray | int) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (z ^ (p if isinstance(p, np.ndarray) else np.uint64(p))) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def turn_count(spec: ConversationSpec, seed: int, arrival: int) -> int:
    """Turns of the conversation started by ``arrival``."""
    hi = spec.turns_max if spec.turns_max is not None else spec.turns
    if hi <= spec.turns:
        return spec.turns
    return spec.turns + _key(seed, _COUNT, arrival) % (hi - spec.turns + 1)


def turn_counts(spec: ConversationSpec, seed: int, arrivals: np.ndarray) -> np.ndarray:
    """:func:`turn_count` of many arrivals (int64), vectorized: the same values."""
    hi = spec.turns_max if spec.turns_max is not None else spec.turns
    if hi <= spec.turns or arrivals.size == 0:
        return np.full(arrivals.size, spec.turns, dtype=np.int64)
    z0 = _step(_step(0x9E3779B97F4A7C15, seed), _COUNT)
    z = _step_vec(np.full(arrivals.size, z0, dtype=np.uint64), arrivals.astype(np.uint64))
    z = _step_vec(z, 0)
    return spec.turns + (z % np.uint64(hi - spec.turns + 1)).astype(np.int64)


def turn_item(items: Sequence[PromptItem], seed: int, arrival: int, turn: int) -> PromptItem:
    """The prompt asked at ``turn`` > 0 of the conversation started by ``arrival``."""
    return items[_key(seed, _ITEM, arrival, turn) % len(items)]


def think_time(spec: ConversationSpec, seed: int, arrival: int, turn: int) -> float:
    """Session seconds between the end of turn ``turn - 1``'s answer and the sending of ``turn``."""
    if spec.think_time <= 0:
        return 0.0
    u = (_key(seed, _THINK, arrival, turn) >> 11) * (1.0 / (1 << 53))  # uniform on [0, 1)
    return -spec.think_time * math.log1p(-u)
