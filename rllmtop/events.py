"""The vocabulary of a session: every record that flows from sources to sinks.

A session is a stream of these records. Live sessions, headless runs and replays produce the very same
types; the TUI, the recorder, the headless summary and the reports consume them and cannot tell where they
came from. Records are frozen; this module imports nothing of ours and does no I/O.

Time: every record carries ``t``, seconds on the session clock (monotonic, 0 = session start).
``SessionInfo.started_at`` anchors it to wall-clock (Unix) time.
"""

from __future__ import annotations

import enum
import struct
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

__all__ = [
    "NEUTRAL_METRICS",
    "HistogramSample",
    "Labels",
    "LogEvent",
    "MetricKind",
    "MetricSample",
    "Phase",
    "Record",
    "RequestEvent",
    "RequestKind",
    "RequestRecord",
    "RequestStatus",
    "Reset",
    "Scrape",
    "SessionInfo",
    "SessionState",
    "StateEvent",
    "chunk_times",
    "decode_gaps",
    "encode_gaps",
    "labels_of",
]

Labels: TypeAlias = tuple[tuple[str, str], ...]
"""Sorted (key, value) pairs. ``model_name`` is dropped (it lives in SessionInfo); ``engine`` is kept."""


# ---------------------------------------------------------------------------------------------- session


class SessionState(enum.StrEnum):
    STARTING = "starting"  # engine launching / becoming ready
    RUNNING = "running"  # load is being sent (or attach mode is watching)
    DRAINING = "draining"  # no more sends; waiting for in-flight requests (grace period)
    DONE = "done"  # finished normally
    FAILED = "failed"  # rllmtop could not do its job (engine unreachable, start timeout, ...)
    INTERRUPTED = "interrupted"  # Ctrl-C / SIGTERM / quit before the end
    ENGINE_DIED = "engine_died"  # a launched engine exited mid-run
    INCOMPLETE = "incomplete"  # only ever read from a recording whose writer was killed


TERMINAL_STATES = frozenset(
    {
        SessionState.DONE,
        SessionState.FAILED,
        SessionState.INTERRUPTED,
        SessionState.ENGINE_DIED,
        SessionState.INCOMPLETE,
    }
)


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What the session is. Never holds secrets.

    Published first. Published again, with the same ``session_id``, when facts are learned later (a
    launched engine's version and model once it is ready): consumers update what they show. A different
    ``session_id`` means a new session: consumers start over.
    """

    session_id: str
    started_at: float  # Unix time of session t=0
    mode: str  # "live" | "headless" | "attach" | "replay"  (display only; consumers must not branch on it)
    scenario_name: str = ""
    scenario_text: str = ""  # the TOML as loaded (after CLI overrides are applied, as a comment header)
    seed: int | None = None
    engine_kind: str = "unknown"  # "sim" | "vllm" | "sglang" | "unknown"
    engine_version: str = ""
    engine_url: str = ""
    metrics_url: str = ""
    model: str = ""
    launch_command: tuple[str, ...] = ()  # secrets removed
    rllmtop_version: str = ""
    record_path: str = ""
    extra: tuple[tuple[str, str], ...] = ()  # free-form (key, value) facts, e.g. ("profile", "rllm-7b")


@dataclass(frozen=True, slots=True)
class Reset:
    """The stream restarts: consumers drop everything they derived (replay seeking backwards). The
    source then re-emits SessionInfo and the records up to the new position."""

    t: float


@dataclass(frozen=True, slots=True)
class StateEvent:
    """The session changed state. ``detail`` says why in one line (e.g. the engine's exit code)."""

    t: float
    state: SessionState
    detail: str = ""


@dataclass(frozen=True, slots=True)
class LogEvent:
    """A line for the log panes and the recording's event log."""

    t: float
    source: str  # "engine" | "rllmtop" | "client" | "scrape" | "annotation"
    level: str  # "debug" | "info" | "warning" | "error"
    text: str


# ---------------------------------------------------------------------------------------------- requests


class RequestKind(enum.StrEnum):
    QUEUED = "queued"  # due, but waiting on the client's concurrency cap
    SENT = "sent"  # request written to the connection
    FIRST_TOKEN = "first_token"  # first token of any kind (reasoning or answer): TTFT
    FIRST_VISIBLE = "first_visible"  # first answer (non-reasoning) token: TTFVT
    PROGRESS = "progress"  # token counts moved (coalesced, at most a few times a second per request)
    DONE = "done"  # finished (any finish_reason); ``record`` holds the final facts
    FAILED = "failed"  # error or cancelled; ``record`` holds the final facts


class RequestStatus(enum.StrEnum):
    OK = "ok"
    ERROR = "error"  # HTTP error, transport error, malformed stream
    CANCELLED = "cancelled"  # cancelled by rllmtop (Ctrl-C after the grace period, quit)


class Phase(enum.StrEnum):
    """What the TUI board shows for a request."""

    QUEUED = "queued"
    WAITING = "waiting"  # sent, no token yet (prefill / engine queue)
    THINKING = "thinking"
    ANSWERING = "answering"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """Every fact the load generator knows about one request, final once the request ends.

    Times are session seconds. ``None`` means "never happened" (e.g. no visible token because the
    request was cut while still reasoning). Derived values (TTFT, TTFVT, E2E, send lag) are properties.
    """

    rid: int
    cls: str  # request class name from the scenario
    difficulty: str = ""  # "easy" | "medium" | "hard" | "mcq" | "" (unknown, user datasets)
    prompt_id: str = ""  # stable id of the prompt within its set (for comparing runs)
    t_scheduled: float = 0.0  # planned send time
    t_dispatch: float | None = None  # when the scheduler actually released it (lag = dispatch - scheduled)
    t_sent: float | None = None  # when the request was written (after any client-side concurrency wait)
    t_first_token: float | None = None
    t_first_reasoning: float | None = None
    t_reasoning_end: float | None = None  # last reasoning token (set when the answer starts or at the end)
    t_first_visible: float | None = None
    t_done: float | None = None
    prompt_tokens: int | None = None  # from usage when the engine reports it
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    completion_tokens: int | None = None  # engine-reported usage.completion_tokens
    tokens_exact: bool = False  # True when counts come from token ids / reconciled usage, not chunk counts
    max_tokens: int = 0
    finish_reason: str | None = None  # "stop" | "length" | "abort" | ... as the engine said
    status: RequestStatus = RequestStatus.OK
    http_status: int | None = None
    error: str | None = None
    answer_text: str | None = None  # only kept when the scenario asks for it
    reference: str | None = None  # reference answer from the prompt set, if any
    extracted: str | None = None  # what grading extracted from the answer
    correct: bool | None = None  # None = not graded
    gaps: bytes = b""  # inter-chunk gaps, see encode_gaps()

    # -- derived (computed, never stored) --
    @property
    def send_lag(self) -> float | None:
        return None if self.t_dispatch is None else self.t_dispatch - self.t_scheduled

    @property
    def client_wait(self) -> float | None:
        """Time spent waiting on the client's concurrency cap."""
        if self.t_dispatch is None or self.t_sent is None:
            return None
        return self.t_sent - self.t_dispatch

    @property
    def ttft(self) -> float | None:
        return _delta(self.t_sent, self.t_first_token)

    @property
    def ttfvt(self) -> float | None:
        return _delta(self.t_sent, self.t_first_visible)

    @property
    def e2e(self) -> float | None:
        return _delta(self.t_sent, self.t_done)

    @property
    def output_tokens(self) -> int:
        return self.reasoning_tokens + self.answer_tokens


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


@dataclass(frozen=True, slots=True)
class RequestEvent:
    """A step in one request's life. Cheap: the runner coalesces token progress."""

    kind: RequestKind
    t: float
    rid: int
    cls: str = ""
    reasoning_tokens: int = 0  # cumulative so far
    answer_tokens: int = 0  # cumulative so far
    detail: str = ""  # error text, finish reason
    record: RequestRecord | None = None  # set on DONE and FAILED


# ---------------------------------------------------------------------------------------------- metrics


class MetricKind(enum.StrEnum):
    GAUGE = "gauge"
    COUNTER = "counter"
    HISTOGRAM = "histogram"


NEUTRAL_METRICS: dict[str, MetricKind] = {
    # gauges
    "kv_cache_usage": MetricKind.GAUGE,  # 0..1
    "requests_running": MetricKind.GAUGE,
    "requests_waiting": MetricKind.GAUGE,
    "kv_used_tokens": MetricKind.GAUGE,  # SGLang
    "kv_total_tokens": MetricKind.GAUGE,  # SGLang max_total_num_tokens
    "cache_hit_rate": MetricKind.GAUGE,  # SGLang
    "gen_throughput": MetricKind.GAUGE,  # SGLang, tokens/s as the engine reports it
    "requests_retracted": MetricKind.GAUGE,  # SGLang num_retracted_reqs
    "sim_lag_seconds": MetricKind.GAUGE,  # simulator: how far the served loop lags its model schedule
    # counters (raw cumulative values; rates are derived by metrics/analysis.py)
    "preemptions_total": MetricKind.COUNTER,
    "prompt_tokens_total": MetricKind.COUNTER,
    "generation_tokens_total": MetricKind.COUNTER,
    "prefix_cache_queries_total": MetricKind.COUNTER,
    "prefix_cache_hits_total": MetricKind.COUNTER,
    "request_success_total": MetricKind.COUNTER,  # label finished_reason
    "spec_decode_draft_tokens_total": MetricKind.COUNTER,
    "spec_decode_accepted_tokens_total": MetricKind.COUNTER,
    # histograms (raw cumulative buckets)
    "ttft_seconds": MetricKind.HISTOGRAM,
    "itl_seconds": MetricKind.HISTOGRAM,
    "e2e_seconds": MetricKind.HISTOGRAM,
    "queue_time_seconds": MetricKind.HISTOGRAM,
}


@dataclass(frozen=True, slots=True)
class MetricSample:
    """One scalar series value from one scrape, under its engine-neutral name."""

    t: float
    name: str
    value: float
    labels: Labels = ()


@dataclass(frozen=True, slots=True)
class HistogramSample:
    """One histogram series from one scrape: cumulative bucket counts as served (raw)."""

    t: float
    name: str
    bounds: tuple[float, ...]  # upper bounds, ascending, last is inf
    counts: tuple[float, ...]  # cumulative counts, same length as bounds
    sum: float
    count: float
    labels: Labels = ()


@dataclass(frozen=True, slots=True)
class Scrape:
    """The result of one poll of an engine's /metrics."""

    t: float  # session time when the response was complete (or the poll failed)
    latency_s: float
    ok: bool
    error: str = ""  # one line, names the URL and what happened
    samples: tuple[MetricSample, ...] = ()
    histograms: tuple[HistogramSample, ...] = ()
    missing: tuple[str, ...] = ()  # neutral names this engine does not serve (shown as missing, never 0)
    counter_reset: bool = False  # a counter went backwards since the previous scrape (engine restart)


Record: TypeAlias = SessionInfo | Reset | StateEvent | LogEvent | RequestEvent | Scrape


# ---------------------------------------------------------------------------------------------- gap codec

_GAPS_MAGIC = 1  # format version byte


def encode_gaps(gaps_us: Sequence[int] | array, tokens_per_chunk: Sequence[int] | None = None) -> bytes:
    """Pack inter-chunk gaps compactly.

    ``gaps_us[i]`` is the time in microseconds between token-bearing chunk i and chunk i+1 (so there are
    n_chunks - 1 gaps; the first chunk's time is ``t_first_token``). Gaps are clamped to uint32.
    ``tokens_per_chunk`` (n_chunks entries) is stored only when some chunk carried more than one token.

    Layout: u8 version, u8 flags, u32 n_gaps, n_gaps x u32 gap_us, [if flags&1: (n_gaps+1) x u16 tokens].
    """
    g = array("I", (min(max(int(x), 0), 0xFFFFFFFF) for x in gaps_us))
    flags = 0
    tail = b""
    if tokens_per_chunk is not None and any(c != 1 for c in tokens_per_chunk):
        if len(tokens_per_chunk) != len(g) + 1:
            raise ValueError("tokens_per_chunk must have one entry per chunk (len(gaps) + 1)")
        flags |= 1
        tail = array("H", (min(max(int(c), 0), 0xFFFF) for c in tokens_per_chunk)).tobytes()
    if not g and not tail:
        return b""
    return struct.pack("<BBI", _GAPS_MAGIC, flags, len(g)) + g.tobytes() + tail


def decode_gaps(blob: bytes | None) -> tuple[array, array | None]:
    """Inverse of :func:`encode_gaps`: (gaps_us as array('I'), tokens_per_chunk as array('H') or None)."""
    if not blob:
        return array("I"), None
    version, flags, n = struct.unpack_from("<BBI", blob, 0)
    if version != _GAPS_MAGIC:
        raise ValueError(f"unknown token-gap blob version {version}")
    off = 6
    g = array("I")
    g.frombytes(blob[off : off + 4 * n])
    off += 4 * n
    tokens: array | None = None
    if flags & 1:
        tokens = array("H")
        tokens.frombytes(blob[off : off + 2 * (n + 1)])
    return g, tokens


def chunk_times(record: RequestRecord) -> list[float]:
    """Session times of each token-bearing chunk of a finished request (first = t_first_token)."""
    if record.t_first_token is None:
        return []
    gaps, _ = decode_gaps(record.gaps)
    out = [record.t_first_token]
    t = record.t_first_token
    for g in gaps:
        t += g * 1e-6
        out.append(t)
    return out


def labels_of(pairs: Iterable[tuple[str, str]]) -> Labels:
    """Normalise label pairs: drop model_name, sort by key."""
    return tuple(sorted((k, v) for k, v in pairs if k != "model_name"))
