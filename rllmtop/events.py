"""The vocabulary of a session: every record that flows from sources to sinks.

A session is a stream of these records. Live sessions, headless runs and replays produce the very same
types; the TUI, the recorder, the headless summary and the reports consume them and cannot tell where they
came from. Records are frozen; this module imports nothing of ours and does no I/O.

Time: every record carries ``t``, seconds on the session clock (0 = session start). The session clock is
monotonic wall time, except in a time-lapse run of the simulator (``--speed K``): there it is the
*simulated* clock, wall seconds x K, so every figure of speed K reads like the same experiment at speed 1.
``SessionInfo.clock`` says which ("wall" | "simulated") and ``SessionInfo.speed`` gives K;
``SessionInfo.started_at`` anchors t = 0 to wall-clock (Unix) time.

Identity: a scrape names the engine it came from (``Scrape.engine_id``: the engine's URL, or its Prometheus
``instance``); vLLM's data-parallel rank stays the ``engine`` label of its samples. A request names the
engine that served it where known (``RequestRecord.engine``) and the worker/node that sent it.
"""

from __future__ import annotations

import enum
import json
import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

__all__ = [
    "ENDED",
    "NEUTRAL_METRICS",
    "ClientHealth",
    "EngineInfo",
    "HistogramSample",
    "Labels",
    "LogEvent",
    "MetricKind",
    "MetricSample",
    "Phase",
    "Provenance",
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
    "WorkerEvent",
    "decode_gaps",
    "encode_gaps",
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
class EngineInfo:
    """One engine of the session's fleet (a single engine is a fleet of one).

    ``id`` is the key every Scrape of it carries: its base URL for scraped/launched engines, its
    Prometheus ``instance`` label when read through Prometheus. Never holds secrets (URLs are redacted
    before they reach a record)."""

    id: str
    url: str = ""  # base URL serving /v1 (empty when only known through Prometheus)
    metrics_url: str = ""  # where its /metrics is read ("" when read through Prometheus)
    kind: str = "unknown"  # "sim" | "vllm" | "sglang" | "unknown"
    version: str = ""
    source: str = "scrape"  # "scrape" (its own /metrics) | "prometheus"
    launched: bool = False  # rllmtop started it (and tears it down)
    gpu_metrics_url: str = ""  # a dcgm-exporter /metrics for this engine's GPUs, if any


@dataclass(frozen=True, slots=True)
class Provenance:
    """How a scenario became this session's workload, resolved once by ``rllmtop.scenario``.

    Consumers read these facts; nobody re-parses scenario text. ``workload`` is a canonical JSON text of
    what decides which requests are sent when (the arrival, load and classes tables after overrides and
    the matrix cell, minus run-control keys such as the grace period): two sessions ran the same workload
    when their ``workload`` texts are equal.
    """

    source: str = ""  # the shipped scenario name, or the file path as given
    overrides: tuple[
        tuple[str, str], ...
    ] = ()  # (override key, JSON value) as applied, e.g. ("request_rate", "4.0")
    override_flags: tuple[
        tuple[str, str], ...
    ] = ()  # (override key, CLI flag), e.g. ("request_rate", "--request-rate")
    cell: tuple[tuple[str, str], ...] = ()  # the [matrix] cell: (dotted key, JSON value)
    cell_label: str = ""  # e.g. "profile=rllm-7b"
    planned_requests: int | None = None  # the schedule's length when known up front; None = open-ended
    workload: str = ""  # canonical JSON (see above)
    workload_digest: str = ""  # short hash of ``workload``, for display

    def to_json(self) -> str:
        d = {f: getattr(self, f) for f in self.__slots__}  # type: ignore[attr-defined]
        return json.dumps(d, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Provenance:
        """Inverse of :meth:`to_json`. Raises ValueError on anything else (a damaged recording)."""
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError("provenance is not a JSON object")
        pairs = ("overrides", "override_flags", "cell")
        kw: dict[str, object] = {}
        for k, v in d.items():
            if k not in cls.__slots__:  # type: ignore[attr-defined]
                continue  # a newer field: ignored
            if k in pairs:
                if not isinstance(v, list) or not all(isinstance(p, list) and len(p) == 2 for p in v):
                    raise ValueError(f"provenance.{k} is not a list of pairs")
                v = tuple((str(a), str(b)) for a, b in v)
            elif k == "planned_requests":
                if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                    raise ValueError("provenance.planned_requests is not a count")
            elif not isinstance(v, str):
                raise ValueError(f"provenance.{k} is not text")
            kw[k] = v
        return cls(**kw)  # type: ignore[arg-type]


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
    scenario_text: str = (
        ""  # the TOML file's text as loaded (overrides and the matrix cell are in provenance)
    )
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
    provenance: Provenance | None = None  # None: no scenario (attach without load, replay of a v1 file)
    engines: tuple[EngineInfo, ...] = ()  # the fleet being watched; empty in v1 recordings
    load_url: str = ""  # where the load goes (a router/gateway, or "" when balanced client-side over engines)
    clock: str = "wall"  # "wall" | "simulated": what session seconds are (see the module doc)
    speed: float = 1.0  # simulated seconds per wall second (1 on the wall clock)


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
    SENT = "sent"  # request written to the connection; ``record`` holds its starting facts (status IN_FLIGHT)
    FIRST_TOKEN = "first_token"  # first token of any kind (reasoning or answer): TTFT
    FIRST_VISIBLE = "first_visible"  # first answer (non-reasoning) token: TTFVT
    PROGRESS = "progress"  # token counts moved (coalesced, at most a few times a second per request)
    DONE = "done"  # finished (any finish_reason); ``record`` holds the final facts
    FAILED = "failed"  # error or cancelled; ``record`` holds the final facts


class RequestStatus(enum.StrEnum):
    OK = "ok"
    ERROR = "error"  # HTTP error, transport error, malformed stream
    CANCELLED = "cancelled"  # cancelled by rllmtop (Ctrl-C after the grace period, quit)
    IN_FLIGHT = "in_flight"  # not ended: a live snapshot, or a recording whose writer died with it in flight


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

    The start of a request: the scheduler releases it at ``t_dispatch`` (its send lag starts at
    ``t_scheduled``); a client-side concurrency cap may hold it until ``t_start``; then the client opens
    a connection if none is idle (``connect_s``) and writes the request (``t_sent``: the write that
    succeeded, after a retry on a dead keep-alive connection). TTFT, TTFVT and E2E are measured from
    ``t_start``, as ``vllm bench serve`` and aiperf measure them (connect time included, cap wait not).
    ``send_lag`` is the client's own lateness: write time minus schedule, minus the cap wait and the
    connect time. Recordings of schema 1 have no ``t_start``: their latencies start at ``t_sent``.
    """

    rid: int
    cls: str  # request class name from the scenario
    difficulty: str = ""  # "easy" | "medium" | "hard" | "mcq" | "" (unknown, user datasets)
    prompt_id: str = ""  # stable id of the prompt within its set (for comparing runs)
    t_scheduled: float = 0.0  # planned send time
    t_dispatch: float | None = None  # when the scheduler released it
    t_start: float | None = None  # the request began (after any concurrency-cap wait): latencies start here
    connect_s: float | None = None  # seconds spent opening a connection (None: a warm one was reused)
    t_sent: float | None = None  # when the request bytes were written (the write that succeeded)
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
    reasoning_mode: str = ""  # how reasoning was told from the answer: "field" (delta.reasoning[_content]) |
    # "inline" (<think> tags in content) | "template" (inline, opened by the chat template) | "none" | ""
    usage_reasoning: int | None = None  # the engine's own usage reasoning count, as reported
    split_note: str = ""  # why tokens_exact is False, in words ("" when exact)
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
    # identity (fleet and scale-out)
    engine: str = ""  # EngineInfo.id of the engine that served it, where known ("" behind a router)
    worker: int = 0  # which sender process sent it (0: the session's own)
    node: str = ""  # the host / Ray node id of that worker ("" = this host)
    # workloads
    conversation: int | None = None  # multi-turn: the conversation (session) this turn belongs to
    turn: int = 0  # multi-turn: 0-based turn index
    target_input_tokens: int | None = None  # a trace's input length this prompt was synthesised for

    # -- derived (computed, never stored) --
    @property
    def concurrency_wait(self) -> float | None:
        """Time held by the client-side concurrency cap (``load.max_concurrency``); 0 without a cap."""
        if self.t_dispatch is None or self.t_start is None:
            return None
        return max(self.t_start - self.t_dispatch, 0.0)

    @property
    def send_lag(self) -> float | None:
        """The client's own lateness: the successful write minus the schedule, minus the cap wait and the
        connect time. Schema-1 recordings: dispatch minus schedule."""
        if self.t_start is None or self.t_sent is None:
            return None if self.t_dispatch is None else self.t_dispatch - self.t_scheduled
        wait = self.concurrency_wait or 0.0
        return self.t_sent - self.t_scheduled - wait - (self.connect_s or 0.0)

    @property
    def latency_start(self) -> float | None:
        """Where TTFT/TTFVT/E2E start: ``t_start`` (schema 1: ``t_sent``)."""
        return self.t_start if self.t_start is not None else self.t_sent

    @property
    def ttft(self) -> float | None:
        return _delta(self.latency_start, self.t_first_token)

    @property
    def ttfvt(self) -> float | None:
        return _delta(self.latency_start, self.t_first_visible)

    @property
    def e2e(self) -> float | None:
        return _delta(self.latency_start, self.t_done)

    @property
    def ended(self) -> bool:
        return self.status is not RequestStatus.IN_FLIGHT

    @property
    def output_tokens(self) -> int:
        return self.reasoning_tokens + self.answer_tokens


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


ENDED = frozenset({RequestKind.DONE, RequestKind.FAILED})


@dataclass(frozen=True, slots=True)
class RequestEvent:
    """A step in one request's life. Cheap: the runner coalesces token progress.

    ``record``: on DONE/FAILED the final facts; on SENT the starting facts (status IN_FLIGHT), so a
    recorder can keep a row for every request on the wire. Test ``kind in ENDED`` for "this ended"."""

    kind: RequestKind
    t: float
    rid: int
    cls: str = ""
    reasoning_tokens: int = 0  # cumulative so far
    answer_tokens: int = 0  # cumulative so far
    detail: str = ""  # error text, finish reason
    record: RequestRecord | None = None  # final on DONE/FAILED; starting facts on SENT
    worker: int = 0  # the sender (rids are global across workers; this is for display and routing)


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
    "sim_drift_seconds": MetricKind.COUNTER,  # simulator: total model seconds it fell behind (cumulative)
    "sim_speed": MetricKind.GAUGE,  # simulator: its --speed
    "kv_total_blocks": MetricKind.GAUGE,  # capacity, for capacity-weighted fleet KV (vLLM cache_config_info)
    # GPU telemetry (dcgm-exporter / NVML), per GPU (label "gpu")
    "gpu_util_percent": MetricKind.GAUGE,
    "gpu_fb_used_mib": MetricKind.GAUGE,
    "gpu_fb_free_mib": MetricKind.GAUGE,
    "gpu_power_watts": MetricKind.GAUGE,
    "gpu_temp_celsius": MetricKind.GAUGE,
    "gpu_sm_clock_mhz": MetricKind.GAUGE,
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
    """The result of one poll of one engine (its /metrics, or its series in one Prometheus query)."""

    t: float  # session time when the response was complete (or the poll failed)
    latency_s: float
    ok: bool
    error: str = ""  # one line, names the URL and what happened
    samples: tuple[MetricSample, ...] = ()
    histograms: tuple[HistogramSample, ...] = ()
    missing: tuple[str, ...] = ()  # neutral names this engine does not serve (shown as missing, never 0)
    counter_reset: bool = False  # a counter went backwards since the previous scrape (engine restart)
    engine_id: str = ""  # EngineInfo.id ("" in schema-1 recordings: the session's only engine)
    stale: bool = False  # the source answered but its data for this engine is old (Prometheus: target down)
    dropped_series: int = 0  # series over the per-engine cardinality cap, not kept (a warning is logged)


# ---------------------------------------------------------------------------------------------- the client


@dataclass(frozen=True, slots=True)
class ClientHealth:
    """How late the load generator's own event loop ran during one interval (a heartbeat, all run long).

    A heartbeat timer asks to run every few ms; its lateness is time the client could not read a token or
    write a request. Latencies measured in an interval include up to ``lag_max`` of client delay. Session
    seconds (simulated seconds in a time-lapse run)."""

    t: float  # end of the interval
    interval: float  # length of the interval
    lag_max: float  # worst heartbeat lateness in the interval
    lag_mean: float  # mean heartbeat lateness
    worker: int = 0
    cpu_s: float | None = None  # the sender's process CPU seconds used in the interval (wall seconds)


@dataclass(frozen=True, slots=True)
class WorkerEvent:
    """A sender process / Ray actor changed state."""

    t: float
    worker: int
    state: str  # "started" | "done" | "died" | "stopped"
    node: str = ""
    pid: int | None = None
    clock_offset: float | None = None  # seconds the worker's clock is ahead of the session's (measured)
    detail: str = ""


Record: TypeAlias = (
    SessionInfo | Reset | StateEvent | LogEvent | RequestEvent | Scrape | ClientHealth | WorkerEvent
)


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
