"""Scale-out senders: worker processes on this machine (and, through ``ray_workers``, Ray actors).

One schedule, many senders. The session builds the seeded :class:`~rllmtop.workload.schedule.Schedule`
once (prompts loaded once, the request count known once) and gives worker ``k`` of ``n`` its part
(``Schedule.part(k, n)``: every request whose global index ``i % n == k``, with its global rid and scheduled
time). So ``n`` workers send exactly the requests one sender would, at the same scheduled times; only who
sends them differs (``RequestRecord.worker`` 1..n, ``node``). A part splits by arrival index: when the
runner sends multi-turn conversations, every turn of a conversation belongs to its arrival, so one worker
sends all of it.

Each worker is a process (a fresh interpreter, as multiprocessing's ``spawn`` makes them, in a session of
its own: nothing inherited but what it is handed, and the terminal's Ctrl-C reaches only the session) running its own event loop (``rllmtop._loop``: uvloop), its own HTTP client and its
own :class:`~rllmtop.workload.runner.Runner` with its own heartbeat. It never writes the recording: its
records come back to the session in batches (every ``FLUSH_INTERVAL`` seconds, or ``MAX_BATCH`` records),
over a Unix socket pair, and the session republishes them on its bus (one recording, one TUI, one summary).

Clock: workers on this host share CLOCK_MONOTONIC with the session (``time.monotonic`` is system-wide on
Linux), so each runs a :class:`~rllmtop.clock.Clock` with the session's ``t0`` and speed: its times are
session times as they are. All start at one agreed session instant, picked by the session once every
worker is ready. (A Ray actor on another machine maps its clock through a measured offset instead: see
``ray_workers``.)

Wire: each message is a length-prefixed pickle (``pack``/``unpack``). Worker to session: ``("ready",
facts)``, ``("batch", counters, items)``, ``("done", counters, usage)``. Session to worker: ``("start",
start_at, clock_offset)``, ``("stop",)``, ``("cancel",)``. Request events, the bulk of the traffic, travel
as plain lists of their fields (enums as indexes), about 1.5x cheaper there and back than the records
themselves (bench/bench_workers.py --part codec: 31 vs 46 us per event at load 5.6); other records travel
as themselves.

Faults (:class:`WorkerPool`): a worker that dies (killed, crashed) has its in-flight requests (the SENT
records the session received without an end) recorded as failed with the reason ("worker 2 (pid 123)
died: exit code -9 (SIGKILL)"); then ``load.on_worker_death`` decides: "continue" (the others go on; the
run ends done, and its status detail and summary say a worker died) or "stop" (the others are cancelled
and the run ends failed with that reason). A run whose every worker died fails either way. Stops go
through the session's policy (``stop_sending`` then ``cancel``); a worker that has not ended
``KILL_AFTER`` seconds after a cancel is terminated, then killed: no worker outlives the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import operator
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rllmtop import __version__
from rllmtop.clock import Clock, Publish
from rllmtop.errors import UserError
from rllmtop.events import (
    LogEvent,
    Record,
    RequestEvent,
    RequestKind,
    RequestRecord,
    RequestStatus,
    WorkerEvent,
)
from rllmtop.redact import redact_text
from rllmtop.scenario import Scenario
from rllmtop.workload.schedule import Schedule

__all__ = [
    "CHUNKS_PER_WORKER",
    "FLUSH_INTERVAL",
    "KILL_AFTER",
    "STREAMS_PER_WORKER",
    "ProcessSender",
    "WorkerCore",
    "WorkerPool",
    "WorkerSpec",
    "auto_workers",
    "decode_items",
    "encode_items",
    "pack",
    "unpack",
]

FLUSH_INTERVAL = 0.05
"""Wall seconds between a worker's batches (its records reach the session at most this late)."""
MAX_BATCH = 2000
"""Records in one batch at most (a burst of ends is sent at once, not held for the interval)."""
READY_TIMEOUT = 120.0
"""Wall seconds a worker may take to start (a fresh interpreter importing rllmtop; a Ray actor placed)."""
START_MARGIN = 0.05
"""Wall seconds between the start message and the agreed start instant (processes on this host)."""
KILL_AFTER = 5.0
"""Wall seconds a worker may take to end after a cancel before it is terminated (then killed 2 s later)."""
STREAMS_PER_WORKER = 1000
"""``workers = "auto"``: concurrent streams one worker is given (bench_workers on 2 shared cores: one worker
held 1,000 streams at send-lag p99 < 5 ms, 1,500 only on a quiet machine)."""
CHUNKS_PER_WORKER = 20_000
"""``workers = "auto"``: paced chunks per second one worker is given (bench_workers: ~20,000 at the best
level one worker held; the flat-out client reaches more, but not at p99 < 5 ms)."""


# ------------------------------------------------------------------------------------------- the wire

_EVENT_FIELDS = tuple(f.name for f in dataclasses.fields(RequestEvent))
_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(RequestRecord))
_get_event = operator.attrgetter(*_EVENT_FIELDS)
_get_record = operator.attrgetter(*_RECORD_FIELDS)
_E_KIND = _EVENT_FIELDS.index("kind")
_E_RECORD = _EVENT_FIELDS.index("record")
_R_STATUS = _RECORD_FIELDS.index("status")
_R_NODE = _RECORD_FIELDS.index("node")
_KINDS = tuple(RequestKind)
_KIND_INDEX = {k: i for i, k in enumerate(_KINDS)}
_STATUSES = tuple(RequestStatus)
_STATUS_INDEX = {s: i for i, s in enumerate(_STATUSES)}
_HEADER = struct.Struct("!I")
MAX_MESSAGE = 1 << 30
"""Bytes of one message at most (a larger length prefix means a corrupt stream)."""


def encode_items(records: Sequence[Record]) -> list[Any]:
    """Records -> picklable items: a RequestEvent becomes a list of its fields (enums as indexes, its
    record likewise); any other record stays itself."""
    out: list[Any] = []
    append = out.append
    for rec in records:
        if rec.__class__ is RequestEvent:
            v = list(_get_event(rec))
            v[_E_KIND] = _KIND_INDEX[v[_E_KIND]]
            r = v[_E_RECORD]
            if r is not None:
                rv = list(_get_record(r))
                rv[_R_STATUS] = _STATUS_INDEX[rv[_R_STATUS]]
                v[_E_RECORD] = rv
            append(v)
        else:
            append(rec)
    return out


def decode_items(items: Sequence[Any], node: str = "") -> list[Record]:
    """Inverse of :func:`encode_items` (it decodes in place: the items are used up); ``node`` (when given)
    is stamped on every request record."""
    out: list[Record] = []
    append = out.append
    for v in items:
        if v.__class__ is list:
            v[_E_KIND] = _KINDS[v[_E_KIND]]
            r = v[_E_RECORD]
            if r is not None:
                r[_R_STATUS] = _STATUSES[r[_R_STATUS]]
                if node:
                    r[_R_NODE] = node
                v[_E_RECORD] = RequestRecord(*r)
            append(RequestEvent(*v))
        else:
            append(v)
    return out


def pack(msg: tuple[Any, ...]) -> bytes:
    """One message as its frame: a 4-byte length, then the pickle."""
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


def unpack(body: bytes) -> tuple[Any, ...]:
    """A frame's body (without its length) -> the message."""
    msg = pickle.loads(body)
    if not isinstance(msg, tuple) or not msg or not isinstance(msg[0], str):
        raise ValueError("not a worker message")
    return msg


class _Frames(asyncio.Protocol):
    """Length-prefixed messages over a stream socket, either side."""

    def __init__(self, on_message: Callable[[tuple[Any, ...]], None], on_lost: Callable[[str], None]):
        self.on_message = on_message
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        off = 0
        n = len(buf)
        while n - off >= 4:
            (size,) = _HEADER.unpack_from(buf, off)
            if size > MAX_MESSAGE:
                self._fail(f"a message of {size} bytes announced (corrupt stream)")
                return
            if n - off - 4 < size:
                break
            body = bytes(buf[off + 4 : off + 4 + size])
            off += 4 + size
            try:
                msg = unpack(body)
            except Exception as e:
                self._fail(f"unreadable message: {type(e).__name__}: {e}")
                return
            self.on_message(msg)
        if off:
            del buf[:off]

    def _fail(self, why: str) -> None:
        self._buf.clear()
        if self.transport is not None:
            self.transport.abort()
        self.on_lost(why)

    def send(self, msg: tuple[Any, ...]) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(pack(msg))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.on_lost(f"{type(exc).__name__}: {exc}" if exc is not None else "")


# ------------------------------------------------------------------------------------- the worker side


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker is handed (pickled to its process, or put in Ray's object store)."""

    worker: int  # its id, 1..n (RequestRecord.worker; 0 is the session's own in-process sender)
    count: int  # n
    scenario: Scenario
    schedule: Schedule  # its part: the session's Schedule.part(worker - 1, count)
    base_url: str
    model: str
    api_key: str | None  # secret: travels to the worker only
    speed: float  # session seconds per wall second
    started_at: float  # Unix time of session t = 0
    t0: float | None = None  # the session's monotonic t0 (same host); None: mapped through the clock offset
    target: Any = (
        None  # the session's LoadTarget when it balances over endpoints (secrets inside: never shown)
    )


class WorkerCore:
    """A worker's job inside its own event loop: wait for the start, run the Runner on its part, batch its
    records to ``send``, obey stop/cancel. The transport (socket pair, Ray) is the caller's."""

    def __init__(self, spec: WorkerSpec, send: Callable[[tuple[Any, ...]], None]) -> None:
        self.spec = spec
        self._send = send
        self._buf: list[Record] = []
        self.runner: Any = None  # the Runner once started
        self._go = asyncio.Event()
        self._start_at: float | None = None
        self._offset = 0.0
        self._stop = False
        self._cancel = False
        self._last_counts: tuple[int, ...] | None = None

    def control(self, msg: tuple[Any, ...]) -> None:
        """A message from the session."""
        kind = msg[0]
        runner = self.runner
        if kind == "start":
            self._start_at = float(msg[1])
            self._offset = float(msg[2]) if len(msg) > 2 and msg[2] is not None else 0.0
        elif kind == "stop":
            self._stop = True
            if runner is not None:
                runner.stop_sending()
        elif kind == "cancel":
            self._stop = self._cancel = True
            if runner is not None:
                runner.cancel()
        else:
            return
        self._go.set()
        if runner is not None:
            self.flush()  # the session hears the new counts now

    def clock(self) -> Clock:
        """The session clock as this worker reads it."""
        s = self.spec
        if s.t0 is not None:  # same host: the session's monotonic origin
            return Clock(t0=s.t0, started_at=s.started_at, speed=s.speed)
        # another host: session wall time = local wall time - offset; anchor the local monotonic clock once
        mono, wall = time.monotonic(), time.time()
        return Clock(t0=mono - (wall - self._offset - s.started_at), started_at=s.started_at, speed=s.speed)

    def counts(self) -> tuple[int, int, int, int, int, bool]:
        r = self.runner
        if r is None:
            return (0, 0, 0, 0, 0, self._stop)
        return (r.in_flight, r.queued, r.sent, r.done, r.failed, r.sending_done.is_set())

    def publish(self, rec: Record) -> None:
        buf = self._buf
        buf.append(rec)
        if len(buf) >= MAX_BATCH:
            self.flush()

    def flush(self) -> None:
        counts = self.counts()
        if not self._buf and counts == self._last_counts:
            return
        items = encode_items(self._buf)
        self._buf = []
        self._last_counts = counts
        self._send(("batch", counts, items))

    async def run(self) -> None:
        """Wait for the start (or a stop), send the part, then say done (the last batch first)."""
        from rllmtop.workload.runner import Runner

        await self._go.wait()
        s = self.spec
        usage0 = (time.process_time(), time.perf_counter())
        if not self._stop:
            self.runner = Runner(
                s.scenario,
                target=s.target,
                base_url=s.base_url,
                model=s.model,
                api_key=s.api_key,
                clock=self.clock(),
                publish=self.publish,
                schedule=s.schedule,
                worker=s.worker,
                start_at=self._start_at,
            )
            flusher = asyncio.get_running_loop().create_task(self._flush_loop())
            try:
                await self.runner.run()
            finally:
                flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flusher
        self.flush()
        cpu, wall = time.process_time() - usage0[0], time.perf_counter() - usage0[1]
        self._send(("done", self.counts(), {"cpu_s": cpu, "wall_s": wall, "max_rss_kb": _max_rss_kb()}))

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            self.flush()


def _max_rss_kb() -> int | None:
    """This process's peak resident set, KiB: ``VmHWM`` of /proc/self/status (this program's own memory
    since its exec). Not ``getrusage``'s ``ru_maxrss``, which Linux carries over an exec from the process
    that forked it: a worker started by a 100 MiB session would report at least 100 MiB."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    except (ImportError, OSError, ValueError):
        return None


def worker_facts(node: str, loop: str = "") -> dict[str, Any]:
    """What a worker says about itself when ready (``loop``: its event loop's name, when known)."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "node": node,
        "version": __version__,
        "python": sys.version.split()[0],
        "loop": loop,
    }


_CHILD = "import sys; from rllmtop.workload.workers import _child; _child(int(sys.argv[1]))"


def _child(fd: int) -> None:
    """The worker process: a fresh interpreter (``python -c``), in a session of its own so a Ctrl-C at
    the terminal reaches only the session, which applies its stop policy to the workers. Its output goes
    nowhere (the TUI owns the terminal); its stderr to a file whose last line names a crash. Its spec
    comes over the socket (``fd``), so a large prompt set never blocks the session."""
    from rllmtop._loop import run

    run(_process_main(socket.socket(fileno=fd)))


async def _process_main(sock: socket.socket) -> None:
    import rllmtop.workload.runner  # noqa: F401  (imported before "ready": the start is not held by it)

    loop = asyncio.get_running_loop()
    core: WorkerCore | None = None
    spec_f: asyncio.Future[WorkerSpec] = loop.create_future()
    early: list[tuple[Any, ...]] = []

    def on_message(msg: tuple[Any, ...]) -> None:
        if msg[0] == "spec":
            if not spec_f.done() and isinstance(msg[1], WorkerSpec):
                spec_f.set_result(msg[1])
        elif core is not None:
            core.control(msg)
        else:
            early.append(msg)

    def on_lost(why: str) -> None:  # the session is gone: end now (nobody is left to record anything)
        if core is not None:
            core.control(("cancel",))
        elif not spec_f.done():
            spec_f.cancel()

    _, proto = await loop.create_unix_connection(lambda: _Frames(on_message, on_lost), sock=sock)
    assert isinstance(proto, _Frames)
    try:
        spec = await spec_f
    except asyncio.CancelledError:
        return
    core = WorkerCore(spec, proto.send)
    for msg in early:
        core.control(msg)
    from rllmtop._loop import loop_name

    proto.send(("ready", worker_facts(socket.gethostname(), loop_name())))
    await core.run()
    if proto.transport is not None:
        proto.transport.close()  # flushes what is buffered, then closes
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(proto.closed), 10)


# ----------------------------------------------------------------------------------- the session side


def _peak_rate(scenario: Scenario, schedule: Schedule | None) -> float | None:
    """The arrival's highest planned rate, requests/s (inf: all at once; None: unknown)."""
    a = scenario.arrival
    if a.process in ("gamma", "poisson", "constant"):
        rates = [a.rate, a.ramp_up_start_rate or 0.0, a.ramp_up_end_rate or 0.0]
        return max(rates)
    if a.process == "phases":
        return max((p.rate for p in a.phases), default=0.0)
    if a.process == "burst":
        size = a.burst_size or scenario.load.num_prompts or 0
        return size / a.burst_interval if a.burst_interval else math.inf
    if schedule is not None:  # a trace: the rate of its first chunk
        for ch in schedule.chunks():
            span = float(ch.times[-1] - ch.times[0]) if len(ch) > 1 else 0.0
            return (len(ch) - 1) / span if span > 0 else math.inf
    return None


def auto_workers(
    scenario: Scenario, schedule: Schedule | None = None, cpus: int | None = None
) -> tuple[int, str]:
    """``load.workers = "auto"``: how many worker processes, and the rule in words.

    Rule: one worker per ``CHUNKS_PER_WORKER`` planned chunks/s (peak arrival rate x the classes' mean
    ``max_tokens``: the chunk rate if every request streamed its whole budget, one token per chunk) and
    per ``STREAMS_PER_WORKER`` streams (the ``max_concurrency`` cap, or every request of an all-at-once
    burst), whichever asks more; at least 1, at most the CPUs this process may run on."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cpus = max(int(cpus), 1)
    classes = scenario.classes
    wsum = sum(c.weight for c in classes) or 1.0
    mean_tokens = sum(c.weight * c.max_tokens for c in classes) / wsum if classes else 0.0
    rate = _peak_rate(scenario, schedule)
    cap = scenario.load.max_concurrency
    planned = schedule.total if schedule is not None else None
    streams: float | None = float(cap) if cap is not None else None
    if rate is not None and math.isinf(rate):
        streams = float(min(x for x in (cap, planned, scenario.load.num_prompts) if x is not None) or 1)
        chunks = None
    else:
        chunks = rate * mean_tokens if rate is not None else None
    need = 1
    why = []
    if chunks is not None:
        need = max(need, math.ceil(chunks / CHUNKS_PER_WORKER))
        why.append(f"{chunks:,.0f} chunks/s at most (peak {rate:g} req/s x {mean_tokens:,.0f} max tokens)")
    if streams is not None:
        need = max(need, math.ceil(streams / STREAMS_PER_WORKER))
        why.append(f"{streams:,.0f} streams at most")
    n = min(need, cpus)
    rule = (
        f"one worker per {CHUNKS_PER_WORKER:,} chunks/s or {STREAMS_PER_WORKER:,} streams, "
        f"at most the {cpus} CPU(s)"
    )
    said = "; ".join(why) or "the rate is not known before the run"
    return n, f'load.workers = "auto": {n} worker(s) for {said} ({rule})'


@dataclass
class _Worker:
    """The session's view of one worker."""

    id: int
    planned: int
    pid: int | None = None
    node: str = ""
    host: str = ""
    clock_offset: float | None = None
    ready: bool = False
    finished: bool = False  # said "done" (its last batch came before)
    ended: bool = False  # gone (done, died or killed), handled once
    killed: str = ""  # why the session killed it ("" = it was not)
    counts: tuple[int, int, int, int, int, bool] = (0, 0, 0, 0, 0, False)
    usage: dict[str, Any] = dataclasses.field(default_factory=dict)
    handle: Any = None  # the transport's object (a process, a Ray actor)
    open: dict[int, RequestRecord] = dataclasses.field(default_factory=dict)  # SENT, not ended
    queued: dict[int, tuple[str, float]] = dataclasses.field(default_factory=dict)  # QUEUED, not sent

    @property
    def name(self) -> str:
        return f"worker {self.id}" + (f" (pid {self.pid})" if self.pid is not None else "")


class WorkerPool:
    """The session side of ``n`` workers, whatever carries their messages (the Sender surface).

    Subclasses start the workers and carry messages (:meth:`_launch`, :meth:`_send`, :meth:`_kill`,
    :meth:`_reap`) and report what arrives (:meth:`_on_message`) and when a worker is gone
    (:meth:`_on_gone`). The pool republishes, keeps the books (counters, requests in flight per worker),
    applies the fault policy and says what happened (``detail``: one line for the status, ``warnings``:
    sentences for the summary)."""

    kind = "worker"

    def __init__(
        self,
        scenario: Scenario,
        *,
        base_url: str,
        model: str,
        api_key: str | None,
        clock: Clock,
        publish: Publish,
        workers: int,
        target: Any = None,
    ) -> None:
        self.scenario = scenario
        self.target = target  # a LoadTarget: balanced over its endpoints by every worker's runner
        self.base_url = base_url
        self.model = model
        self._api_key = api_key
        self.clock = clock
        self._publish = publish
        self.count = max(int(workers), 1)
        self.policy = scenario.load.on_worker_death
        self.planned: int | None = None
        self.sending_done = asyncio.Event()
        self.detail = ""
        self.warnings: list[str] = []
        self.workers: dict[int, _Worker] = {}
        self._stopping = False
        self._cancelled = False
        self._failure: str | None = None
        self._deaths: list[str] = []
        self._changed = asyncio.Event()  # a worker got ready or went away
        self._kill_task: asyncio.Task[None] | None = None
        self.start_at: float | None = None

    # ---------------------------------------------------------------------------------- Sender surface

    @property
    def in_flight(self) -> int:
        n = 0
        for w in self.workers.values():
            if not w.ended:
                n += max(w.counts[0], len(w.open))
        return n

    @property
    def queued(self) -> int:
        return sum(w.counts[1] for w in self.workers.values() if not w.ended)

    def stop_sending(self) -> None:
        """No new sends (every worker is told); requests in flight go on."""
        if self._stopping:
            return
        self._stopping = True
        for w in self._live():
            self._try_send(w, ("stop",))
        self.sending_done.set()

    def cancel(self) -> None:
        """Stop sending and cancel every request in flight (every worker is told; one that has not ended
        ``KILL_AFTER`` seconds later is terminated, then killed)."""
        self._stopping = True
        self.sending_done.set()
        if self._cancelled:
            return
        self._cancelled = True
        for w in self._live():
            self._try_send(w, ("cancel",))
        with contextlib.suppress(RuntimeError):
            self._kill_task = asyncio.get_running_loop().create_task(self._kill_late())

    async def run(self) -> None:
        """Build the schedule once, start the workers, send, and return when every worker has ended."""
        try:
            await self._prepare()
            sched, parts = await asyncio.to_thread(_split, self.scenario, self.count)
            self.planned = sum(p.planned for p in parts)  # conversations: every turn counted
            for k, part in enumerate(parts):
                self.workers[k + 1] = _Worker(k + 1, part.planned)
            what = "arrival" if sched.stride > 1 else "request"
            self._log(
                "info",
                f"sending {self.planned} requests from {self.count} {self.kind}s "
                f"(one seeded schedule, {what} i sent by {self.kind} i mod {self.count} + 1)",
            )
            if not self._stopping:
                await self._launch(parts)
                await self._wait(
                    lambda: all(w.ready or w.ended for w in self.workers.values()), READY_TIMEOUT
                )
                late = [w for w in self.workers.values() if not (w.ready or w.ended)]
                for w in late:
                    self._kill(w, f"it did not start within {READY_TIMEOUT:g} s")
            if not self._stopping:
                self.start_at = self.clock.now() + self.clock.session(self._start_margin())
                for w in self._live():
                    self._try_send(w, ("start", self.start_at, w.clock_offset))
            else:
                for w in self._live():
                    self._try_send(w, ("cancel",) if self._cancelled else ("stop",))
            await self._wait(lambda: all(w.ended for w in self.workers.values()), None)
        finally:
            await self._shutdown()
        self._conclude()

    # ------------------------------------------------------------------------------ for subclasses

    async def _prepare(self) -> None:
        """Before the schedule is split (Ray: connect, place, set ``count``)."""

    async def _launch(self, parts: list[Schedule]) -> None:
        raise NotImplementedError

    def _send(self, w: _Worker, msg: tuple[Any, ...]) -> None:
        raise NotImplementedError

    def _kill(self, w: _Worker, why: str) -> None:
        """End ``w`` now (it will be reported gone through :meth:`_on_gone`)."""
        raise NotImplementedError

    async def _reap(self) -> None:
        """Make sure nothing of any worker is left running (after every worker ended, or on the way out)."""

    def _start_margin(self) -> float:
        return START_MARGIN

    def _spec(self, k: int, part: Schedule, t0: float | None) -> WorkerSpec:
        c = self.clock
        return WorkerSpec(
            worker=k + 1,
            count=self.count,
            scenario=self.scenario,
            schedule=part,
            base_url=self.base_url,
            model=self.model,
            api_key=self._api_key,
            speed=c.speed,
            started_at=c.started_at,
            t0=t0,
            target=self.target,
        )

    def _on_message(self, w: _Worker, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "batch":
            self._counts(w, msg[1])
            self._republish(w, msg[2])
        elif kind == "ready":
            facts = msg[1] if isinstance(msg[1], dict) else {}
            w.pid = facts.get("pid") if isinstance(facts.get("pid"), int) else w.pid
            w.host = str(facts.get("host", ""))
            w.node = w.node or str(facts.get("node", "")) or w.host
            version = facts.get("version")
            if version != __version__:
                self._kill(w, f"it runs rllmtop {version}, not {__version__} (install the same version)")
                return
            w.ready = True
            self._publish(
                WorkerEvent(
                    self.clock.now(),
                    w.id,
                    "started",
                    node=w.node,
                    pid=w.pid,
                    clock_offset=w.clock_offset,
                    detail=f"{w.planned} requests scheduled; event loop {facts.get('loop', '?')}"
                    + (f"; host {w.host}" if w.host and w.host != w.node else ""),
                )
            )
            self._changed.set()
        elif kind == "done":
            self._counts(w, msg[1])
            w.usage = msg[2] if len(msg) > 2 and isinstance(msg[2], dict) else {}
            w.finished = True

    def _on_gone(self, w: _Worker, how: str) -> None:
        """``w`` is gone: ended after saying done, or died (``how`` says how it ended: an exit code, the
        actor's error). Called once per worker."""
        if w.ended:
            return
        w.ended = True
        now = self.clock.now()
        if w.finished:
            u = w.usage
            parts = [f"{w.counts[3]} done, {w.counts[4]} failed"]
            if u.get("cpu_s") is not None and u.get("wall_s"):
                parts.append(f"CPU {u['cpu_s']:.2f} s over {u['wall_s']:.2f} s")
            if u.get("max_rss_kb"):
                parts.append(f"max RSS {u['max_rss_kb'] / 1024:.0f} MiB")
            self._publish(
                WorkerEvent(
                    now,
                    w.id,
                    "stopped" if self._stopping else "done",
                    node=w.node,
                    pid=w.pid,
                    detail="; ".join(parts),
                )
            )
        else:
            reason = f"{w.name} died: {how}" if not w.killed else f"{w.name} was ended: {w.killed}"
            reason = redact_text(reason)
            self._fail_open(w, reason, now)
            self._publish(WorkerEvent(now, w.id, "died", node=w.node, pid=w.pid, detail=reason))
            if not w.killed or not self._cancelled:  # a death the session did not cause
                unsent = max(w.planned - w.counts[2] - len(w.open), 0) if not self._stopping else 0
                note = reason + (f"; {unsent} of its scheduled requests were not sent" if unsent else "")
                self._deaths.append(note)
                self._log("error", note)
                if self.policy == "stop" and self._failure is None:
                    self._failure = reason
                    self._log("error", "load.on_worker_death = 'stop': cancelling the other workers")
                    self.cancel()
        if all(x.ended or x.counts[5] for x in self.workers.values()):
            self.sending_done.set()
        self._changed.set()

    # ------------------------------------------------------------------------------------- internals

    def _live(self) -> list[_Worker]:
        return [w for w in self.workers.values() if not w.ended]

    def _try_send(self, w: _Worker, msg: tuple[Any, ...]) -> None:
        try:
            self._send(w, msg)
        except Exception as e:  # its channel is gone: it is ending, and will be reported gone
            self._log("debug", f"{w.name}: could not send {msg[0]!r}: {type(e).__name__}: {e}")

    def _counts(self, w: _Worker, counts: Any) -> None:
        if isinstance(counts, tuple) and len(counts) == 6:
            w.counts = counts
            if counts[5] and all(x.ended or x.counts[5] for x in self.workers.values()):
                self.sending_done.set()

    def _republish(self, w: _Worker, items: list[Any]) -> None:
        publish = self._publish
        is_open, queued = w.open, w.queued
        for rec in decode_items(items, w.node):
            if rec.__class__ is RequestEvent:
                kind = rec.kind  # type: ignore[union-attr]
                rid = rec.rid  # type: ignore[union-attr]
                if kind is RequestKind.SENT:
                    queued.pop(rid, None)
                    if rec.record is not None:  # type: ignore[union-attr]
                        is_open[rid] = rec.record  # type: ignore[union-attr]
                elif kind is RequestKind.DONE or kind is RequestKind.FAILED:
                    is_open.pop(rid, None)
                    queued.pop(rid, None)
                elif kind is RequestKind.QUEUED:
                    queued[rid] = (rec.cls, rec.t)  # type: ignore[union-attr]
            publish(rec)

    def _fail_open(self, w: _Worker, reason: str, now: float) -> None:
        """End what ``w`` had in flight (SENT without an end) as failed with ``reason``; what it held on
        the concurrency cap (never sent) ends too, without a record (nothing of it reached the engine)."""
        status = RequestStatus.CANCELLED if (w.killed and self._cancelled) else RequestStatus.ERROR
        for rid, rec in sorted(w.open.items()):
            final = dataclasses.replace(rec, status=status, error=reason, t_done=now, node=w.node)
            self._publish(
                RequestEvent(RequestKind.FAILED, now, rid, rec.cls, detail=reason, record=final, worker=w.id)
            )
        for rid, (cls, _t) in sorted(w.queued.items()):
            self._publish(
                RequestEvent(RequestKind.FAILED, now, rid, cls, detail="not sent: " + reason, worker=w.id)
            )
        if w.open or w.queued:
            self._log(
                "warning",
                f"{w.name}: {len(w.open)} in-flight request(s) recorded as failed"
                + (f", {len(w.queued)} waiting on max_concurrency dropped" if w.queued else ""),
            )
        w.open.clear()
        w.queued.clear()

    async def _wait(self, cond: Callable[[], bool], timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not cond():
            self._changed.clear()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def _kill_late(self) -> None:
        await asyncio.sleep(KILL_AFTER)
        for w in self._live():
            self._kill(w, f"it did not end within {KILL_AFTER:g} s of being cancelled")

    async def _shutdown(self) -> None:
        """Every worker ends, whatever ended the run (the run's task cancelled included)."""
        if any(not w.ended for w in self.workers.values()):
            self.cancel()
            try:
                await self._wait(lambda: all(w.ended for w in self.workers.values()), KILL_AFTER + 5)
            except asyncio.CancelledError:
                for w in self._live():
                    self._kill(w, "the session was cancelled")
                with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                    await asyncio.wait_for(self._reap(), 5)
                raise
            for w in self._live():
                self._kill(w, "it did not end")
        if self._kill_task is not None:
            self._kill_task.cancel()
        await self._reap()

    def _conclude(self) -> None:
        deaths = self._deaths
        n = self.count
        if deaths:
            died = len(deaths)
            went_on = "" if self._failure else f"; the other {n - died} went on"
            self.detail = f"{died} of {n} {self.kind}s died: {deaths[0]}" + (
                f" (and {died - 1} more)" if died > 1 else ""
            )
            self.detail += went_on if died < n else ""
            self.warnings.extend(deaths)
        if self._failure is not None:
            raise UserError(
                self._failure,
                "load.on_worker_death = 'stop' ends the run when a worker dies ('continue' lets the others go on)",
            )
        if deaths and len(deaths) == n:
            raise UserError(f"every {self.kind} died: {deaths[0]}", "nothing is left to send the load")

    def _log(self, level: str, text: str) -> None:
        self._publish(LogEvent(self.clock.now(), "client", level, text))


def _split(scenario: Scenario, n: int) -> tuple[Schedule, list[Schedule]]:
    """The whole schedule (counted once here: every part inherits the count) and its ``n`` parts, each
    with its planned request count (conversations' later turns included)."""
    s = Schedule(scenario)
    _ = s.total
    parts = [s.part(k, n) for k in range(n)]
    for p in parts:
        _ = p.planned
    return s, parts


def _exit_text(code: int | None) -> str:
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"exit code {code} ({name})"
    return f"exit code {code}"


class ProcessSender(WorkerPool):
    """``n`` worker processes on this machine (``load.workers``): fresh interpreters (``python -c``, the
    way multiprocessing's ``spawn`` starts them, without re-running the caller's ``__main__``), each in a
    session of its own, told to stop by the session, never by the terminal."""

    kind = "worker"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._protos: dict[int, _Frames] = {}
        self._pidfds: dict[int, int] = {}
        self._errfiles: dict[int, str] = {}
        self._host = socket.gethostname()

    async def _launch(self, parts: list[Schedule]) -> None:
        loop = asyncio.get_running_loop()
        env = _child_env()
        for k, part in enumerate(parts):
            w = self.workers[k + 1]
            w.node = self._host
            w.clock_offset = 0.0  # the same host: CLOCK_MONOTONIC is shared
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            fd, err = tempfile.mkstemp(prefix=f"rllmtop-worker{w.id}-", suffix=".err")
            self._errfiles[w.id] = err
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-c", _CHILD, str(theirs.fileno())],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=fd,
                    pass_fds=(theirs.fileno(),),
                    start_new_session=True,
                    env=env,
                )
            except OSError as e:
                mine.close()
                raise UserError(
                    f"could not start worker process {w.id}: {e}", "check the Python install"
                ) from e
            finally:
                theirs.close()
                os.close(fd)
            w.pid, w.handle = proc.pid, proc
            self._procs[w.id] = proc
            _, proto = await loop.create_unix_connection(
                lambda w=w: _Frames(  # type: ignore[misc]
                    lambda msg: self._on_message(w, msg), lambda why: self._lost(w, why)
                ),
                sock=mine,
            )
            assert isinstance(proto, _Frames)
            self._protos[w.id] = proto
            try:
                pidfd = os.pidfd_open(proc.pid)
            except (AttributeError, OSError):  # no pidfd: the socket's end is the sign (see _lost)
                pass
            else:
                self._pidfds[w.id] = pidfd
                loop.add_reader(pidfd, self._exited, w)
            # its part (the prompt sets with it: maybe megabytes) is pickled off the session's loop
            frame = await asyncio.to_thread(pack, ("spec", self._spec(k, part, self.clock.t0)))
            if proto.transport is not None and not proto.transport.is_closing():
                proto.transport.write(frame)

    def _send(self, w: _Worker, msg: tuple[Any, ...]) -> None:
        proto = self._protos.get(w.id)
        if proto is not None:
            proto.send(msg)

    def _lost(self, w: _Worker, why: str) -> None:
        """Its socket closed. The exit code decides (its pidfd says when; without one, wait here)."""
        if why and not w.killed:
            self._log("debug", f"{w.name}: channel closed: {why}")
        if w.id not in self._pidfds:
            asyncio.get_running_loop().create_task(self._wait_exit(w))

    async def _wait_exit(self, w: _Worker) -> None:
        proc = self._procs.get(w.id)
        if proc is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(proc.wait, KILL_AFTER)
        self._gone(w, proc.poll())

    def _exited(self, w: _Worker) -> None:
        loop = asyncio.get_running_loop()
        fd = self._pidfds.pop(w.id, None)
        if fd is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(fd)
            os.close(fd)
        proc = self._procs.get(w.id)
        if proc is None:
            return
        code = proc.wait()  # it exited: reaped at once
        proto = self._protos.get(w.id)
        # every byte it wrote before exiting is read first: the socket's end comes after its data
        if proto is not None and not proto.closed.done():
            proto.closed.add_done_callback(lambda _f: self._gone(w, code))
            loop.call_later(2.0, self._gone, w, code)  # its socket still open (inherited elsewhere)
        else:
            self._gone(w, code)

    def _gone(self, w: _Worker, code: int | None) -> None:
        if w.ended:
            return
        how = _exit_text(code)
        if not w.finished:
            tail = _last_line(self._errfiles.get(w.id))
            if tail:
                how += f": {tail}"
        elif code not in (0, None):
            self._log("warning", f"{w.name} exited with {_exit_text(code)} after finishing its part")
        self._on_gone(w, how)

    def _kill(self, w: _Worker, why: str) -> None:
        proc = self._procs.get(w.id)
        w.killed = w.killed or why
        if w.ended:
            return
        if proc is None:
            self._on_gone(w, why)
            return
        self._log("warning", f"{w.name}: {why}: terminating it")
        with contextlib.suppress(OSError):
            proc.terminate()
        asyncio.get_running_loop().call_later(2.0, _kill_if_alive, proc)

    async def _reap(self) -> None:
        loop = asyncio.get_running_loop()
        for proc in self._procs.values():
            if proc.poll() is None:
                await asyncio.to_thread(_terminate_and_wait, proc)
        for proto in self._protos.values():
            if proto.transport is not None:
                proto.transport.abort()
        for fd in self._pidfds.values():
            with contextlib.suppress(Exception):
                loop.remove_reader(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        self._pidfds.clear()
        for w in self.workers.values():  # anything not reported gone yet (its exit raced the shutdown)
            if not w.ended:
                p = self._procs.get(w.id)
                self._gone(w, p.poll() if p is not None else None)
        for f in self._errfiles.values():
            with contextlib.suppress(OSError):
                os.unlink(f)
        self._errfiles.clear()

    @property
    def pids(self) -> list[int]:
        """PIDs of the worker processes started (for tests and diagnostics)."""
        return [w.pid for w in self.workers.values() if w.pid is not None]


def _child_env() -> dict[str, str]:
    """The worker's environment: this one, with the directory rllmtop is imported from first on its path
    (a source checkout run from elsewhere imports the same code)."""
    import rllmtop

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(rllmtop.__file__)))
    old = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = root + (os.pathsep + old if old else "")
    return env


def _kill_if_alive(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.kill()


def _terminate_and_wait(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        proc.terminate()
    try:
        proc.wait(2)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def _last_line(path: str | None) -> str:
    """The last non-empty line a dead worker wrote to stderr (its exception), at most 300 characters."""
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(size - 4096, 0))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return redact_text(lines[-1][:300]) if lines else ""
