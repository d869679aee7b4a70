"""The open-loop runner: sends each request at its scheduled time whatever the server is doing.

The schedule (``rllmtop.workload.schedule``) is walked a chunk at a time: nothing is held for a request
before it is due, and nothing after it ended. A pacer wakes the event loop at each send time (a
``timerfd`` on Linux, see ``timers``). A concurrency cap, when set, holds due requests on the client; that
wait is recorded apart (``t_dispatch`` -> ``t_start``), and so is the time to open a connection
(``connect_s``); ``t_sent`` is the write that succeeded. Token progress is published coalesced, once per
tick for every request whose counts moved, never per chunk. A heartbeat measures the loop's own lateness
all run long (``heartbeat``).

Where requests go: one URL, or client-side balancing over a fleet's engines (``balance``: one HTTP client
per endpoint; every record names its ``engine``). Traces with lengths send a prompt synthesized to the
row's input length (``synth``) and ask for its output length. A conversation class sends each arrival's
turns closed-loop: the next turn is due ``think_time`` after the previous answer ended, and is paced like a
scheduled request (``conversation``); ``load.duration`` ends every sending, so a turn due after it is not
sent (its conversation ends there; the count is logged).

Clock: everything is on the session clock, which in a time-lapse run of the simulator runs at speed K
(session seconds = wall seconds x K): schedule times, the per-request timeout, every time in a record and
the token-gap blobs are session seconds, so speed 1 and speed K are the same experiment.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import heapq
import math
import re
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

from rllmtop.clock import Clock, Publish
from rllmtop.events import (
    LogEvent,
    RequestEvent,
    RequestKind,
    RequestRecord,
    RequestStatus,
    encode_gaps,
)
from rllmtop.redact import redact_url
from rllmtop.scenario import ConversationSpec, RequestClass, Scenario
from rllmtop.workload.balance import Balancer, Target
from rllmtop.workload.conversation import think_time, turn_count, turn_item
from rllmtop.workload.grading import grade
from rllmtop.workload.heartbeat import Heartbeat
from rllmtop.workload.http import HttpClient
from rllmtop.workload.prompts import PromptItem
from rllmtop.workload.request import build_request_body, difficulty_header, endpoint_path
from rllmtop.workload.schedule import Schedule, ScheduleChunk, request_seed
from rllmtop.workload.sse import ChatStream
from rllmtop.workload.synth import PromptSynth
from rllmtop.workload.timers import SPIN, Pacer
from rllmtop.workload.traces import Trace, read_trace

if TYPE_CHECKING:
    from rllmtop.workload.http import Exchange

__all__ = ["PROGRESS_INTERVAL", "Runner"]

PROGRESS_INTERVAL = 0.25
"""Wall seconds between coalesced PROGRESS ticks."""

_SETUP = 0.005  # wall seconds between run() and the schedule's t = 0
_LOG_EVERY = 5.0  # at most one log line per kind of failure every this many wall seconds
_LOG_KEYS = 256  # distinct failure kinds remembered for rate limiting
_QUEUE_MAX = 4096  # requests held by the concurrency cap, at most; the schedule waits beyond that


# ------------------------------------------------------------------------------------------ GC policy

_FULL_GC_EVERY = 300.0  # wall seconds between full collections while a run holds the old generation back


def _quiet_gc(thresholds: tuple[int, int, int]) -> None:
    """Keep full collections out of the run: each one scans every live object (the app's, and ~50 per
    request in flight), and every send due meanwhile is late: 40-100 ms with a few 100k objects on this
    class of machine. Collect once, park the survivors in the permanent generation, and let only young
    collections run automatically; the progress tick does a full one every ``_FULL_GC_EVERY`` seconds
    and the thresholds are restored (and the objects unfrozen) when the run ends. Requests break their
    own reference cycles when they end, so they leave no garbage for the old generation.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(thresholds[0], thresholds[1], 1 << 30)


# --------------------------------------------------------------------------------------------- runner


class _Class:
    """What the runner derives once per request class (the body's fixed parts, the stream's options)."""

    __slots__ = ("c", "conv", "items", "keep_answer", "thinking")

    def __init__(self, c: RequestClass, scenario: Scenario, items: list[PromptItem]) -> None:
        self.c = c
        kw = c.chat_template_kwargs or {}
        self.thinking = (
            bool(kw.get("enable_thinking", c.thinking)) if scenario.load.api == "chat" else c.thinking
        )
        self.conv: ConversationSpec | None = c.conversation
        self.keep_answer = scenario.load.record_answers or c.conversation is not None
        self.items = items  # the class's prompt set (later turns of a conversation pick from it)


class _Conv:
    """A conversation in progress: its turns so far (the user text sent, the visible answer)."""

    __slots__ = ("arrival", "engine", "history", "rid0", "turns")

    def __init__(self, arrival: int, rid0: int, turns: int) -> None:
        self.arrival = arrival
        self.rid0 = rid0
        self.turns = turns
        self.engine = -1  # the endpoint every turn goes to (set when the first one starts)
        self.history: list[tuple[str, str]] = []


class _Req:
    """One request's state in the runner (few objects per request: the GC scans every live one)."""

    __slots__ = (
        "abort",
        "arrival",
        "cls",
        "connect_s",
        "conv",
        "deadline",
        "difficulty",
        "ended",
        "engine",
        "http_status",
        "item",
        "last",
        "max_tokens",
        "name",
        "rid",
        "runner",
        "stream",
        "t_dispatch",
        "t_scheduled",
        "t_sent",
        "t_start",
        "target",
        "task",
        "text",
        "turn",
    )

    def __init__(
        self, runner: Runner, rid: int, arrival: int, cls: int, item: PromptItem, t_scheduled: float
    ) -> None:
        self.runner = runner
        self.rid = rid
        self.arrival = arrival
        self.cls = cls
        c = runner.scenario.classes[cls]
        self.name = c.name
        self.difficulty = c.difficulty or item.difficulty or ""
        self.item = item
        self.t_scheduled = t_scheduled
        self.max_tokens = c.max_tokens
        self.target: int | None = None  # a trace's input length (the prompt is synthesized to it)
        self.conv: _Conv | None = None
        self.turn = 0
        self.engine = -1  # endpoint index, chosen when the request starts
        self.text = ""  # the user text sent (kept for a conversation's history)
        self.t_dispatch: float | None = None
        self.t_start: float | None = None
        self.connect_s: float | None = None
        self.t_sent: float | None = None
        self.stream: ChatStream | None = None
        self.task: asyncio.Task[None] | None = None
        self.abort: tuple[RequestStatus, str] | None = None
        self.last = (0, 0)
        self.http_status = 0
        self.deadline = math.inf  # monotonic time of the per-request timeout
        self.ended = False

    def first_token(self, mono: float) -> None:
        r = self.runner
        r._publish(
            RequestEvent(
                RequestKind.FIRST_TOKEN, r.clock.from_monotonic(mono), self.rid, self.name, worker=r.worker
            )
        )

    def first_visible(self, mono: float) -> None:
        r = self.runner
        st = self.stream
        assert st is not None
        r._publish(
            RequestEvent(
                RequestKind.FIRST_VISIBLE,
                r.clock.from_monotonic(mono),
                self.rid,
                self.name,
                reasoning_tokens=st.reasoning_tokens,
                answer_tokens=st.answer_tokens,
                worker=r.worker,
            )
        )

    def connected(self, wall_seconds: float) -> None:
        self.connect_s = (self.connect_s or 0.0) + self.runner.clock.session(wall_seconds)

    def sent(self, mono: float) -> None:
        r = self.runner
        first = self.t_sent is None
        self.t_sent = r.clock.from_monotonic(mono)
        if not first:  # written again after a dead keep-alive connection: this is the write that counts
            return
        r.sent += 1
        r._publish(
            RequestEvent(
                RequestKind.SENT,
                self.t_sent,
                self.rid,
                self.name,
                record=self.snapshot(),
                worker=r.worker,
            )
        )

    def snapshot(self) -> RequestRecord:
        """The starting facts (status IN_FLIGHT)."""
        r = self.runner
        return RequestRecord(
            rid=self.rid,
            cls=self.name,
            difficulty=self.difficulty,
            prompt_id=self.item.id,
            t_scheduled=self.t_scheduled,
            t_dispatch=self.t_dispatch,
            t_start=self.t_start,
            connect_s=self.connect_s,
            t_sent=self.t_sent,
            max_tokens=self.max_tokens,
            status=RequestStatus.IN_FLIGHT,
            reference=self.item.reference,
            engine=r._engine_name(self.engine),
            worker=r.worker,
            conversation=self.conv.arrival if self.conv is not None else None,
            turn=self.turn,
            target_input_tokens=self.target,
        )

    def done(self, task: asyncio.Task[None]) -> None:
        self.runner._task_done(self, task)


class Runner:
    """Sends a scenario's requests open-loop and publishes every request's life as RequestEvents, and the
    client's own health (ClientHealth, from the heartbeat).

    Where to send: ``target`` (a ``rllmtop.session.load.LoadTarget``: one URL, or endpoints with a
    balance policy, see ``balance``), or ``base_url`` / ``model`` / ``api_key`` for one URL.
    ``schedule``: the requests to send (default: the whole schedule of ``scenario``; a sender process
    passes its ``Schedule.part(k, n)`` and ``worker=k``). ``start_at``: the session time of the
    schedule's t = 0 (senders of one run agree on it; default: a few ms after ``run`` starts).

    Live counters: ``planned`` (requests in this runner's schedule, known once ``run`` has started),
    ``sent`` (written to a connection), ``done`` (ended ok), ``failed`` (ended with an error or
    cancelled), ``in_flight`` (started, not ended), ``queued`` (held by the concurrency cap).
    ``sending_done`` is set when no more requests will be sent (schedule exhausted and the concurrency
    queue empty, or ``stop_sending``).
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        target: Target | None = None,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        clock: Clock,
        publish: Publish,
        use_timerfd: bool = True,
        freeze_gc: bool = True,
        schedule: Schedule | None = None,
        worker: int = 0,
        start_at: float | None = None,
        heartbeat: bool = True,
    ) -> None:
        self.scenario = scenario
        rs = scenario.load.request_seed
        self._send_seed = rs if rs is not None else scenario.engine.kind == "sim"
        self._freeze_gc = freeze_gc
        if target is not None:
            base_url, model, api_key = target.url, target.model, target.api_key
            if target.balance != "none" and target.endpoints:
                urls = [(e.url, e.engine_id) for e in target.endpoints]
                policy = target.balance
            else:
                urls, policy = [(target.url, target.url_engine)], "none"
        elif base_url is None or model is None:
            raise TypeError("Runner needs target= or base_url= and model=")
        else:
            urls, policy = [(base_url, "")], "none"
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.clock = clock
        self._publish = publish
        self._api_key = api_key
        self._use_timerfd = use_timerfd
        self._schedule = schedule
        self.worker = worker
        self._start_at = start_at
        self.heartbeat: Heartbeat | None = (
            Heartbeat(clock, publish, worker=worker, use_timerfd=use_timerfd) if heartbeat else None
        )
        self.planned: int | None = None
        self.sent = 0
        self.done = 0
        self.failed = 0
        self.in_flight = 0
        self.queued = 0
        self.sending_done = asyncio.Event()
        self.pacer_kind = ""
        self._classes: list[_Class] = []
        connect = clock.wall(min(scenario.load.timeout, 30.0))
        self._clients = [HttpClient(u, api_key, connect_timeout=connect) for u, _ in urls]
        self._client = self._clients[0]
        self._paths = [endpoint_path(u, scenario.load.api) for u, _ in urls]
        self._urls = [u for u, _ in urls]
        self._engines = [e for _, e in urls]
        self._balancer = Balancer(policy, len(urls))
        self._trace: Trace | None = None
        self._trace_in: list[int] = []
        self._trace_out: list[int] = []
        self._synth = PromptSynth(scenario.seed)
        # a trace's output length is generated in full where the engine honours ignore_eos
        self._trace_eos = scenario.load.ignore_eos or scenario.engine.kind in ("sim", "vllm")
        self._capped: set[int] = set()  # classes whose max_tokens capped a trace's output length (logged)
        self._turns: list[tuple[float, int, _Conv, int]] = []  # later turns due: (deadline, rid, conv, cls)
        self._open = 0  # conversations that will send another turn (queued in _turns, or one in flight)
        self._send_end = math.inf  # monotonic end of load.duration: no turn is sent after it
        self._turns_cut = 0  # later turns not sent: due after load.duration
        self._active: dict[int, _Req] = {}
        self._queue: deque[_Req] = deque()
        self._stopped = False
        self._cancelled = False
        self._finished = asyncio.Event()
        # the walk through the schedule: the current chunk, as plain lists
        self._chunks: Iterator[ScheduleChunk] = iter(())
        self._dl: list[float] = []  # monotonic deadlines
        self._ts: list[float] = []  # session times
        self._rid: list[int] = []
        self._arr: list[int] = []
        self._cls: list[int] = []
        self._items: list[PromptItem] = []
        self._ci = 0
        self._exhausted = False
        self._backlog = False  # the cap queue was full: due requests waited in the schedule
        self._next = 0  # requests taken from the schedule
        self._pacer: Pacer | None = None
        self._t_base = 0.0
        self._log_last: dict[str, float] = {}
        self._context = contextvars.copy_context()  # one context for every request task
        self._log_suppressed: dict[str, int] = {}

    # ----------------------------------------------------------------------------------------- control

    async def run(self) -> None:
        """Send the whole schedule; return when every request has ended."""
        loop = asyncio.get_running_loop()
        sched = self._schedule if self._schedule is not None else Schedule(self.scenario)
        self._classes = [
            _Class(c, self.scenario, list(it))
            for c, it in zip(self.scenario.classes, sched.items, strict=True)
        ]
        self._trace = sched.trace
        if self._trace is not None:
            assert self._trace.input_tokens is not None and self._trace.output_tokens is not None
            n = sched.total
            self._trace_in = self._trace.input_tokens[:n].tolist()
            self._trace_out = self._trace.output_tokens[:n].tolist()
        self.planned = sched.planned
        quiet = self._freeze_gc and gc.isenabled() and gc.get_freeze_count() == 0
        thresholds = gc.get_threshold()
        if quiet:
            _quiet_gc(thresholds)
        try:
            await self._send_all(loop, sched)
        finally:
            if quiet:
                gc.set_threshold(*thresholds)
                gc.unfreeze()

    async def _send_all(self, loop: asyncio.AbstractEventLoop, sched: Schedule) -> None:
        sc = self.scenario
        clock = self.clock
        self._t_base = self._start_at if self._start_at is not None else clock.now() + clock.session(_SETUP)
        if sc.load.duration is not None:
            self._send_end = clock.to_monotonic(self._t_base + sc.load.duration)
        self._chunks = sched.chunks()
        a = sc.arrival
        how = {
            "gamma": f"gamma {a.rate:g} req/s, burstiness {a.burstiness:g}",
            "poisson": f"poisson {a.rate:g} req/s",
            "constant": f"constant {a.rate:g} req/s",
        }.get(a.process, a.process)
        if a.ramp_up_strategy is not None:
            how = (
                f"{a.process} with a {a.ramp_up_strategy} ramp-up {a.ramp_up_start_rate:g} -> "
                f"{a.ramp_up_end_rate:g} req/s"
            )
        share = f" (sender {sched.index} of {sched.parts})" if sched.parts > 1 else ""
        convs = f" ({sched.total} arrivals, conversations' turns included)" if sched.stride > 1 else ""
        if len(self._clients) > 1:
            where = f"{len(self._clients)} engines ({self._balancer.policy})"
        else:
            where = redact_url(self.base_url) + self._paths[0]
        self._log(
            "info",
            f"sending {self.planned} requests{share}{convs} ({how}) to {where}, model {self.model!r}",
        )
        if a.process == "trace" and a.trace_file is not None:
            tr = self._trace or read_trace(a.trace_file, a.trace_format, a.trace_column)
            self._log("info", "replaying " + tr.describe(sched.total))
        self._pacer = Pacer(loop, self._pace, use_timerfd=self._use_timerfd)
        self.pacer_kind = self._pacer.kind
        for c in self._clients:
            c.on_due = self._pace
        if self.heartbeat is not None:
            self.heartbeat.start()
        ticker = loop.create_task(self._progress_loop())
        try:
            if self._stopped or not self._refill():
                self._sending_over()
            else:
                self._arm(self._dl[0])
            await self._finished.wait()
        finally:
            self._pacer.close()
            if self._active or self._queue:  # run() itself was cancelled: end everything now
                self.cancel()
                tasks = [r.task for r in self._active.values() if r.task is not None]
                for t in tasks:
                    with contextlib.suppress(BaseException):
                        await t
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            self._progress()
            for c in self._clients:
                c.close()
            if self.heartbeat is not None:
                self.heartbeat.stop()
            self._chunks = iter(())
            self._dl, self._ts, self._rid, self._arr, self._cls, self._items = [], [], [], [], [], []
            self._turns = []
            self._trace_in, self._trace_out = [], []
            self.sending_done.set()

    def stop_sending(self) -> None:
        """No new sends; requests in flight continue. Requests waiting on the cap are dropped."""
        if self._stopped:
            return
        self._stopped = True
        self._set_due(math.inf)
        now = self.clock.now()
        dropped_turns = len(self._turns)
        self._open -= dropped_turns
        self._turns = []
        while self._queue:
            req = self._queue.popleft()
            self.queued -= 1
            req.abort = (
                RequestStatus.CANCELLED,
                "not sent: sending stopped while it waited on max_concurrency",
            )
            self._finalize(req, now)
        skipped = (self.planned or 0) - self._next
        if skipped > 0 and self.planned:
            due = f", {dropped_turns} of them conversation turns already due" if dropped_turns else ""
            self._log("info", f"sending stopped: {skipped} scheduled request(s) not sent{due}")
        self._sending_over()

    def cancel(self) -> None:
        """Stop sending and cancel every request in flight now (they end as CANCELLED)."""
        self._cancelled = True
        self.stop_sending()
        for req in list(self._active.values()):
            if req.abort is None:
                req.abort = (RequestStatus.CANCELLED, "cancelled by rllmtop")
            if req.task is not None and not req.task.done():
                req.task.cancel()

    # ------------------------------------------------------------------------------------------- pacing

    def _refill(self) -> bool:
        """Make the current chunk hold a next request; False when the schedule is exhausted."""
        while self._ci >= len(self._dl):
            if self._exhausted:
                return False
            ch = next(self._chunks, None)
            if ch is None:
                self._exhausted = True
                self._dl = []
                return False
            ts = self._t_base + ch.times
            m0 = self.clock.to_monotonic(self._t_base)
            self._dl = (m0 + ch.times * self.clock.wall(1.0)).tolist()
            self._ts = ts.tolist()
            self._rid = ch.rids.tolist()
            self._arr = ch.arrivals.tolist() if ch.arrivals is not None else self._rid
            self._cls = ch.classes.tolist()
            self._items = ch.items
            self._ci = 0
        return True

    def _pace(self) -> None:
        now = time.monotonic()
        cap = self.scenario.load.max_concurrency
        turns = self._turns
        while not self._stopped:
            have = self._refill()
            d = self._dl[self._ci] if have else math.inf
            if turns and turns[0][0] <= d:  # a conversation's next turn is due first
                d = turns[0][0]
                have = False
            elif not have:
                break
            if d > now:
                if d - now > SPIN:
                    self._backlog = False
                    self._arm(d)
                    return
                while now < d:
                    now = time.monotonic()
            if cap is not None and self.in_flight >= cap and len(self._queue) >= _QUEUE_MAX:
                self._backlog = True  # resumed when a slot frees (see _finalize)
                self._set_due(math.inf)
                return
            if have:
                self._dispatch(now, d)
            else:
                self._dispatch_turn(now, heapq.heappop(turns))
            now = time.monotonic()
        self._set_due(math.inf)
        if not self._stopped and not self._queue and not self._open:
            self._sending_over()

    def _arm(self, deadline: float) -> None:
        assert self._pacer is not None
        self._pacer.arm(deadline)
        self._set_due(deadline)

    def _set_due(self, deadline: float) -> None:
        """Tell every client's read path when the next send is due (see ``HttpClient.on_due``)."""
        for c in self._clients:
            c.due_at = deadline

    def _dispatch(self, now_mono: float, deadline: float) -> None:
        i = self._ci
        self._ci += 1
        cls = self._cls[i]
        arrival = self._arr[i]
        req = _Req(self, self._rid[i], arrival, cls, self._items[i], self._ts[i])
        if self._trace_in:
            req.target = self._trace_in[arrival]
            out = self._trace_out[arrival]
            if out > req.max_tokens:
                self._cap_note(req, out)
            else:
                req.max_tokens = out
        spec = self._classes[cls].conv
        if spec is not None:
            k = turn_count(spec, self.scenario.seed, arrival)
            req.conv = _Conv(arrival, req.rid, k)
            if k > 1:
                self._open += 1
        self._enqueue(req, now_mono, deadline)

    def _dispatch_turn(self, now_mono: float, due: tuple[float, int, _Conv, int]) -> None:
        deadline, rid, conv, cls = due
        turn = rid - conv.rid0
        k = self._classes[cls]
        item = turn_item(k.items, self.scenario.seed, conv.arrival, turn)
        req = _Req(self, rid, conv.arrival, cls, item, self.clock.from_monotonic(deadline))
        req.conv, req.turn, req.engine = conv, turn, conv.engine
        self._enqueue(req, now_mono, deadline)

    def _cap_note(self, req: _Req, out: int) -> None:
        if req.cls in self._capped:
            return
        self._capped.add(req.cls)
        c = self.scenario.classes[req.cls]
        self._log(
            "warning",
            f"request {req.rid}: the trace asks for {out} output tokens, more than class {c.name!r}'s "
            f"max_tokens = {c.max_tokens}: capped to it (raise max_tokens to replay the trace's lengths; "
            "not said again for this class)",
        )

    def _enqueue(self, req: _Req, now_mono: float, deadline: float) -> None:
        self._next += 1
        # held back in the schedule by a full cap queue, it was due (and waiting on the cap) since its time
        req.t_dispatch = self.clock.from_monotonic(deadline if self._backlog else now_mono)
        cap = self.scenario.load.max_concurrency
        if cap is not None and self.in_flight >= cap:
            self._queue.append(req)
            self.queued += 1
            self._publish(
                RequestEvent(RequestKind.QUEUED, req.t_dispatch, req.rid, req.name, worker=self.worker)
            )
        else:
            self._start(req)

    def _start(self, req: _Req) -> None:
        req.t_start = self.clock.now()
        self.in_flight += 1
        self._active[req.rid] = req
        k = req.engine
        if k < 0:
            k = req.engine = self._balancer.pick(req.arrival)
            if req.conv is not None:
                req.conv.engine = k
        self._balancer.started(k)
        request = self._prepare(req)
        assert req.stream is not None
        # on a warm keep-alive connection the request is written now, not when a task first runs
        started = self._clients[k].send_now(request, req.stream)
        now = time.monotonic()
        if started is not None:
            req.sent(now)
        req.deadline = now + self.clock.wall(self.scenario.load.timeout)  # checked by the progress tick
        ctx = self._context
        req.task = asyncio.get_running_loop().create_task(self._send(req, request, started), context=ctx)
        # the request ends there whatever happens to the task (even cancelled before its first step)
        req.task.add_done_callback(req.done, context=ctx)

    def _sending_over(self) -> None:
        if not self.sending_done.is_set():
            self.sending_done.set()
            if self._turns_cut:
                self._log(
                    "info",
                    f"{self._turns_cut} conversation turn(s) not sent: due after load.duration = "
                    f"{self.scenario.load.duration:g} s",
                )
        if not self._active and not self._queue:
            self._finished.set()

    # ------------------------------------------------------------------------------------------ a request

    def _prepare(self, req: _Req) -> bytes:
        """The request's ChatStream (reporting first tokens to the request) and its HTTP request bytes."""
        sc = self.scenario
        k = self._classes[req.cls]
        c = k.c
        stream = ChatStream(
            thinking=k.thinking,
            keep_answer=k.keep_answer or req.item.reference is not None,
            gap_scale=self.clock.speed,
            max_tokens=req.max_tokens,
        )
        stream.on_first_token = req.first_token
        stream.on_first_visible = req.first_visible
        req.stream = stream
        text = req.item.text
        ignore_eos = sc.load.ignore_eos
        if req.target is not None:
            assert self._trace is not None
            text = self._synth.text(req.target, text, self._trace.hash_ids(req.arrival), req.rid)
            ignore_eos = self._trace_eos
        conv = req.conv
        if conv is not None and req.turn + 1 < conv.turns:
            req.text = text  # the next turn sends it back as history
        body = build_request_body(
            api=sc.load.api,
            model=self.model,
            prompt=text,
            max_tokens=req.max_tokens,
            temperature=c.temperature,
            top_p=c.top_p,
            thinking=c.thinking,
            system=c.system,
            seed=request_seed(sc.seed, req.rid) if self._send_seed else None,
            return_token_ids=sc.load.return_token_ids,
            reasoning_effort=c.reasoning_effort,
            thinking_budget=c.reasoning_budget,
            ignore_eos=ignore_eos,
            chat_template_kwargs=c.chat_template_kwargs,
            history=conv.history if conv is not None else (),
        )
        e = req.engine
        return self._clients[e].request_bytes(self._paths[e], body, difficulty_header(req.difficulty))

    async def _send(self, req: _Req, request: bytes, started: Exchange | None) -> None:
        assert req.stream is not None
        try:
            req.http_status = await self._clients[req.engine].post_stream(
                request,
                req.stream,
                on_sent=req.sent,
                on_connect=req.connected,
                started=started,
            )
        except asyncio.CancelledError:
            if req.abort is None:
                req.abort = (RequestStatus.CANCELLED, "cancelled by rllmtop")

    def _task_done(self, req: _Req, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            if req.abort is None:
                req.abort = (RequestStatus.CANCELLED, "cancelled by rllmtop")
        elif task.exception() is not None:
            exc = task.exception()
            req.abort = (RequestStatus.ERROR, f"internal error in rllmtop's client: {exc!r}")
            self._log("error", f"request {req.rid}: internal error in rllmtop's client: {exc!r}")
        self._finalize(req, self.clock.now(), req.http_status)

    def _timeout(self, req: _Req) -> None:
        if req.abort is None:
            req.abort = (
                RequestStatus.ERROR,
                f"timed out after {self.scenario.load.timeout:g} s (load.timeout)",
            )
        if req.task is not None:
            req.task.cancel()

    def _finalize(self, req: _Req, now: float, http_status: int = 0) -> None:
        if req.ended:
            return
        req.ended = True
        sc = self.scenario
        c = sc.classes[req.cls]
        st = req.stream
        clock = self.clock
        if st is not None:
            st.finish(clock.to_monotonic(now))
        error: str | None
        if req.abort is not None:
            status, error = req.abort
        elif st is None or st.error is not None:
            status, error = RequestStatus.ERROR, (st.error if st is not None else "not sent")
        else:
            status, error = RequestStatus.OK, None
        if error is not None and self._api_key and self._api_key in error:
            error = error.replace(self._api_key, "***")
        extracted = correct = None
        answer = st.answer_text() if st is not None else ""
        if status is RequestStatus.OK and req.item.reference is not None:
            extracted, correct = grade(answer, req.item.reference, req.item.kind)

        def rel(t: float | None) -> float | None:
            return None if t is None else clock.from_monotonic(t)

        t_done = rel(st.t_done) if st is not None and st.t_done is not None else now
        if status is not RequestStatus.OK:
            t_done = now
        conv = req.conv
        rec = RequestRecord(
            rid=req.rid,
            cls=c.name,
            difficulty=req.difficulty,
            prompt_id=req.item.id,
            t_scheduled=req.t_scheduled,
            t_dispatch=req.t_dispatch,
            t_start=req.t_start,
            connect_s=req.connect_s,
            t_sent=req.t_sent,
            t_first_token=rel(st.t_first_token) if st else None,
            t_first_reasoning=rel(st.t_first_reasoning) if st else None,
            t_reasoning_end=rel(st.t_last_reasoning) if st else None,
            t_first_visible=rel(st.t_first_visible) if st else None,
            t_done=t_done,
            prompt_tokens=st.prompt_tokens if st else None,
            reasoning_tokens=st.reasoning_tokens if st else 0,
            answer_tokens=st.answer_tokens if st else 0,
            completion_tokens=st.completion_tokens if st else None,
            tokens_exact=st.tokens_exact if st else False,
            reasoning_mode=st.reasoning_mode if st else "",
            usage_reasoning=st.usage_reasoning if st else None,
            split_note=st.split_note if st else "",
            max_tokens=req.max_tokens,
            finish_reason=st.finish_reason if st else None,
            status=status,
            http_status=http_status or None,
            error=error,
            answer_text=answer if sc.load.record_answers and st is not None else None,
            reference=req.item.reference,
            extracted=extracted,
            correct=correct,
            gaps=encode_gaps(st.gaps, st.tokens_per_chunk) if st is not None and st.chunks else b"",
            engine=self._engine_name(req.engine),
            worker=self.worker,
            conversation=conv.arrival if conv is not None else None,
            turn=req.turn,
            target_input_tokens=req.target,
        )
        ok = status is RequestStatus.OK
        self._publish(
            RequestEvent(
                RequestKind.DONE if ok else RequestKind.FAILED,
                t_done if t_done is not None else now,
                req.rid,
                c.name,
                reasoning_tokens=rec.reasoning_tokens,
                answer_tokens=rec.answer_tokens,
                detail=(rec.finish_reason or "") if ok else (error or ""),
                record=rec,
                worker=self.worker,
            )
        )
        if ok:
            self.done += 1
        else:
            self.failed += 1
            if status is RequestStatus.ERROR:
                self._log_failure(req.rid, error or "error")
        if conv is not None and conv.turns > 1:
            self._next_turn(req, conv, ok, answer, st)
        # break the request's reference cycles (stream -> bound methods -> request -> task -> coroutine)
        # so it is freed now by reference counting, not by a full collection later
        if st is not None:
            st.on_first_token = st.on_first_visible = None
        req.stream = None
        req.task = None
        req.conv = None
        if self._active.pop(req.rid, None) is not None:
            self.in_flight -= 1
            self._balancer.ended(req.engine)
            if self._queue and not self._stopped:
                nxt = self._queue.popleft()
                self.queued -= 1
                self._start(nxt)
            if self._backlog and not self._stopped:
                self._pace()  # the schedule waited on a full cap queue: take what is due now
            elif not self._queue and self._exhausted and not self._stopped and not self._open:
                self._sending_over()
        if self.sending_done.is_set() and not self._active and not self._queue:
            self._finished.set()

    def _next_turn(self, req: _Req, conv: _Conv, ok: bool, answer: str, st: ChatStream | None) -> None:
        """After a turn of a multi-turn conversation: queue the next one, or close the conversation (its
        last turn, a failed turn, or sending stopped)."""
        nxt = req.turn + 1
        if not ok or nxt >= conv.turns or self._stopped:
            self._open -= 1
            return
        conv.history.append((req.text, answer))
        spec = self._classes[req.cls].conv
        assert spec is not None
        think = think_time(spec, self.scenario.seed, conv.arrival, nxt)
        end = st.t_done if st is not None and st.t_done is not None else time.monotonic()
        deadline = end + self.clock.wall(think)
        if deadline >= self._send_end:  # load.duration ends all sending, later turns included
            self._open -= 1
            self._turns_cut += conv.turns - nxt
            return
        heapq.heappush(self._turns, (deadline, conv.rid0 + nxt, conv, req.cls))
        if deadline < self._client.due_at and not self._backlog:
            self._arm(deadline)

    def _engine_name(self, k: int) -> str:
        """``RequestRecord.engine`` of endpoint ``k`` (-1: not sent yet; "" when unknown)."""
        if k < 0:
            return self._engines[0] if len(self._engines) == 1 else ""
        return self._engines[k]

    # ----------------------------------------------------------------------------------------- progress

    async def _progress_loop(self) -> None:
        last_full = time.monotonic()
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            self._progress()
            if self._freeze_gc and time.monotonic() - last_full > _FULL_GC_EVERY:
                gc.collect()
                last_full = time.monotonic()

    def _progress(self) -> None:
        """Publish moved token counts, and time out requests past their deadline (one pass per tick)."""
        now = self.clock.now()
        mono = time.monotonic()
        publish = self._publish
        expired = []
        client = self._clients[0]
        w = self.worker
        for i, req in enumerate(list(self._active.values())):
            if not i & 127 and time.monotonic() >= client.due_at:
                self._pace()  # thousands in flight make this pass take ms: sends due meanwhile go first
            if mono >= req.deadline:
                expired.append(req)
            st = req.stream
            if st is None:
                continue
            counts = (st.reasoning_tokens, st.answer_tokens)
            if counts != req.last:
                req.last = counts
                publish(
                    RequestEvent(RequestKind.PROGRESS, now, req.rid, req.name, counts[0], counts[1], worker=w)
                )
        for req in expired:
            self._timeout(req)

    def _log(self, level: str, text: str) -> None:
        self._publish(LogEvent(self.clock.now(), "client", level, text))

    def _log_failure(self, rid: int, error: str) -> None:
        key = re.sub(r"\d+", "N", error)[:100]
        now = self.clock.now()
        last = self._log_last.get(key)
        if last is not None and now - last < _LOG_EVERY * self.clock.speed:
            self._log_suppressed[key] = self._log_suppressed.get(key, 0) + 1
            return
        if last is None and len(self._log_last) >= _LOG_KEYS:  # bounded: forget the oldest kinds
            for old in list(self._log_last)[: _LOG_KEYS // 2]:
                self._log_last.pop(old, None)
                self._log_suppressed.pop(old, None)
        more = self._log_suppressed.pop(key, 0)
        self._log_last[key] = now
        tail = (
            f" (and {more} more like it in the last {now - last:.0f} s)" if more and last is not None else ""
        )
        self._log("warning", f"request {rid} failed: {error}{tail}")
