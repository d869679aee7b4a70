"""The open-loop runner: sends each request at its scheduled time whatever the server is doing.

The schedule (arrival times and the class/prompt of every request) is precomputed from the scenario seed.
A pacer wakes the event loop at each send time: on Linux a ``timerfd`` armed with the absolute deadline
(event-loop timers round their sleeps up to whole milliseconds), elsewhere a loop timer a little early
followed by a short spin through the loop. A concurrency cap, when set, queues requests on the client
and that wait is recorded apart (``t_dispatch`` -> ``t_sent``). Token progress is published coalesced,
once per tick for every request whose counts moved, never per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import ctypes.util
import gc
import math
import os
import re
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from rllmtop.clock import Clock, Publish
from rllmtop.events import (
    LogEvent,
    RequestEvent,
    RequestKind,
    RequestRecord,
    RequestStatus,
    encode_gaps,
)
from rllmtop.scenario import Scenario
from rllmtop.workload.arrivals import schedule
from rllmtop.workload.client import ChatStream, HttpClient, build_request_body, endpoint_path
from rllmtop.workload.grading import grade
from rllmtop.workload.prompts import PromptItem, PromptMix, load_scenario_prompts

if TYPE_CHECKING:
    from rllmtop.workload.client import _Exchange

__all__ = ["PROGRESS_INTERVAL", "Runner", "request_seed"]

PROGRESS_INTERVAL = 0.25
"""Seconds between coalesced PROGRESS ticks."""

_SPIN = 0.0002  # dispatch deadlines closer than this by spinning instead of sleeping
_LOG_EVERY = 5.0  # at most one log line per kind of failure every this many seconds


def request_seed(scenario_seed: int, rid: int) -> int:
    """The OpenAI ``seed`` sent with request ``rid``: stable across processes (splitmix64, 31 bits)."""
    z = ((scenario_seed & 0xFFFFFFFF) << 32 | (rid & 0xFFFFFFFF)) + 0x9E3779B97F4A7C15
    z &= 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFF


# ---------------------------------------------------------------------------------------------- pacer


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


class _TimerFd:
    """A Linux timerfd on CLOCK_MONOTONIC (the clock of ``time.monotonic``), armed at absolute times."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._settime = libc.timerfd_settime
        fd = libc.timerfd_create(1, os.O_NONBLOCK | os.O_CLOEXEC)  # CLOCK_MONOTONIC
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self.fd: int = fd
        self._spec = _Itimerspec()

    def arm(self, deadline: float) -> None:
        sec = int(deadline)
        nsec = max(int((deadline - sec) * 1e9), 1 if sec == 0 else 0)
        self._spec.it_value.tv_sec = sec
        self._spec.it_value.tv_nsec = min(nsec, 999_999_999)
        if self._settime(self.fd, 1, ctypes.byref(self._spec), None) != 0:  # TFD_TIMER_ABSTIME
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)

    def close(self) -> None:
        os.close(self.fd)


class _Pacer:
    """Calls ``fire()`` at or just after each armed monotonic deadline, from the event loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fire: Callable[[], None], *, use_timerfd: bool = True
    ):
        self._loop = loop
        self._fire = fire
        self._tfd: _TimerFd | None = None
        self._handle: asyncio.Handle | None = None
        if use_timerfd:
            try:
                self._tfd = _TimerFd()
                loop.add_reader(self._tfd.fd, self._on_fd)
            except (OSError, AttributeError, NotImplementedError, RuntimeError):
                if self._tfd is not None:
                    self._tfd.close()
                self._tfd = None
        self.kind = "timerfd" if self._tfd is not None else "loop timer + spin"

    def _on_fd(self) -> None:
        assert self._tfd is not None
        self._tfd.drain()
        self._fire()

    def arm(self, deadline: float) -> None:
        if self._tfd is not None:
            self._tfd.arm(deadline)
            return
        if self._handle is not None:
            self._handle.cancel()
        # loop timers wake up to ~1 ms late: wake early, then spin through the loop (I/O keeps flowing)
        self._handle = self._loop.call_at(deadline - 0.0015, self._spin, deadline)

    def _spin(self, deadline: float) -> None:
        if time.monotonic() >= deadline - _SPIN:
            self._handle = None
            self._fire()
        else:
            self._handle = self._loop.call_soon(self._spin, deadline)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._tfd is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._tfd.fd)
            self._tfd.close()
            self._tfd = None


# ------------------------------------------------------------------------------------------ GC policy

_FULL_GC_EVERY = 300.0  # seconds between full collections while a run holds the old generation back


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


class _Req:
    """One request's state in the runner (few objects per request: the GC scans every live one)."""

    __slots__ = (
        "abort",
        "cls",
        "deadline",
        "ended",
        "http_status",
        "item",
        "last",
        "name",
        "rid",
        "runner",
        "stream",
        "t_dispatch",
        "t_scheduled",
        "t_sent",
        "t_start",
        "task",
    )

    def __init__(self, runner: Runner, rid: int, cls: int, item: PromptItem, t_scheduled: float) -> None:
        self.runner = runner
        self.rid = rid
        self.cls = cls
        self.name = runner.scenario.classes[cls].name
        self.item = item
        self.t_scheduled = t_scheduled
        self.t_dispatch: float | None = None
        self.t_sent: float | None = None
        self.t_start: float | None = None
        self.stream: ChatStream | None = None
        self.task: asyncio.Task[None] | None = None
        self.abort: tuple[RequestStatus, str] | None = None
        self.last = (0, 0)
        self.http_status = 0
        self.deadline = math.inf  # monotonic time of the per-request timeout
        self.ended = False

    def first_token(self, t: float) -> None:
        r = self.runner
        r._publish(RequestEvent(RequestKind.FIRST_TOKEN, t - r.clock.t0, self.rid, self.name))

    def first_visible(self, t: float) -> None:
        r = self.runner
        st = self.stream
        assert st is not None
        r._publish(
            RequestEvent(
                RequestKind.FIRST_VISIBLE,
                t - r.clock.t0,
                self.rid,
                self.name,
                reasoning_tokens=st.reasoning_tokens,
                answer_tokens=st.answer_tokens,
            )
        )

    def sent(self, t: float) -> None:
        r = self.runner
        self.t_sent = t - r.clock.t0
        r.sent += 1
        r._publish(RequestEvent(RequestKind.SENT, self.t_sent, self.rid, self.name))

    def done(self, task: asyncio.Task[None]) -> None:
        self.runner._task_done(self, task)


class Runner:
    """Sends a scenario's requests open-loop and publishes every request's life as RequestEvents.

    Live counters: ``planned`` (requests in the schedule, known once ``run`` has started), ``sent``
    (written to a connection), ``done`` (ended ok), ``failed`` (ended with an error or cancelled),
    ``in_flight`` (sent or connecting, not ended). ``sending_done`` is set when no more requests will be
    sent (schedule exhausted and the concurrency queue empty, or ``stop_sending``).
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        base_url: str,
        model: str,
        api_key: str | None,
        clock: Clock,
        publish: Publish,
        use_timerfd: bool = True,
        freeze_gc: bool = True,
    ) -> None:
        self.scenario = scenario
        rs = scenario.load.request_seed
        self._send_seed = rs if rs is not None else scenario.engine.kind == "sim"
        self._freeze_gc = freeze_gc
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.clock = clock
        self._publish = publish
        self._api_key = api_key
        self._use_timerfd = use_timerfd
        self.planned: int | None = None
        self.sent = 0
        self.done = 0
        self.failed = 0
        self.in_flight = 0
        self.queued = 0
        self.sending_done = asyncio.Event()
        self.pacer_kind = ""
        self._client = HttpClient(base_url, api_key, connect_timeout=min(scenario.load.timeout, 30.0))
        self._path = endpoint_path(base_url, scenario.load.api)
        self._active: dict[int, _Req] = {}
        self._queue: deque[_Req] = deque()
        self._stopped = False
        self._cancelled = False
        self._finished = asyncio.Event()
        self._deadlines: list[float] = []
        self._picks: list[tuple[int, PromptItem]] = []
        self._next = 0
        self._pacer: _Pacer | None = None
        self._t_start = 0.0
        self._log_last: dict[str, float] = {}
        self._context = contextvars.copy_context()  # one context for every request task
        self._log_suppressed: dict[str, int] = {}

    # ----------------------------------------------------------------------------------------- control

    async def run(self) -> None:
        """Send the whole schedule; return when every request has ended."""
        sc = self.scenario
        loop = asyncio.get_running_loop()
        items = load_scenario_prompts(sc)
        mix = PromptMix(sc.classes, items, sc.seed)
        times = schedule(sc.arrival, sc.load.num_prompts, sc.load.duration, sc.seed)
        self.planned = int(times.size)
        self._picks = mix.draw(self.planned)
        quiet = self._freeze_gc and gc.isenabled() and gc.get_freeze_count() == 0
        thresholds = gc.get_threshold()
        if quiet:
            _quiet_gc(thresholds)
        try:
            await self._send_all(loop, times)
        finally:
            if quiet:
                gc.set_threshold(*thresholds)
                gc.unfreeze()

    async def _send_all(self, loop: asyncio.AbstractEventLoop, times: np.ndarray) -> None:
        sc = self.scenario
        self._t_start = self.clock.now() + 0.005  # a few ms to set up before the first send
        self._deadlines = (self.clock.to_monotonic(self._t_start) + np.asarray(times, dtype=float)).tolist()
        self._times = times
        a = sc.arrival
        how = {
            "gamma": f"gamma {a.rate:g} req/s, burstiness {a.burstiness:g}",
            "poisson": f"poisson {a.rate:g} req/s",
            "constant": f"constant {a.rate:g} req/s",
        }.get(a.process, a.process)
        self._log(
            "info",
            f"sending {self.planned} requests ({how}) to {self.base_url}{self._path}, model {self.model!r}",
        )
        self._pacer = _Pacer(loop, self._pace, use_timerfd=self._use_timerfd)
        self.pacer_kind = self._pacer.kind
        self._client.on_due = self._pace
        ticker = loop.create_task(self._progress_loop())
        try:
            if self._stopped or not self._deadlines:
                self._sending_over()
            else:
                self._arm(self._deadlines[0])
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
            self._client.close()
            self.sending_done.set()

    def stop_sending(self) -> None:
        """No new sends; requests in flight continue. Requests waiting on the cap are dropped."""
        if self._stopped:
            return
        self._stopped = True
        self._client.due_at = math.inf
        now = self.clock.now()
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
            self._log("info", f"sending stopped: {skipped} scheduled request(s) not sent")
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

    def _pace(self) -> None:
        deadlines = self._deadlines
        n = len(deadlines)
        now = time.monotonic()
        while self._next < n and not self._stopped:
            d = deadlines[self._next]
            if d > now:
                if d - now > _SPIN:
                    break
                while now < d:
                    now = time.monotonic()
            self._dispatch(self._next, now)
            self._next += 1
            now = time.monotonic()
        if self._stopped:
            self._client.due_at = math.inf
            return
        if self._next < n:
            self._arm(deadlines[self._next])
        else:
            self._client.due_at = math.inf
            if not self._queue:
                self._sending_over()

    def _arm(self, deadline: float) -> None:
        assert self._pacer is not None
        self._pacer.arm(deadline)
        self._client.due_at = deadline

    def _dispatch(self, i: int, now_mono: float) -> None:
        cls, item = self._picks[i]
        req = _Req(self, i, cls, item, self._t_start + float(self._times[i]))
        req.t_dispatch = now_mono - self.clock.t0
        cap = self.scenario.load.max_concurrency
        if cap is not None and self.in_flight >= cap:
            self._queue.append(req)
            self.queued += 1
            self._publish(RequestEvent(RequestKind.QUEUED, req.t_dispatch, i, self._cls_name(req)))
        else:
            self._start(req)

    def _start(self, req: _Req) -> None:
        req.t_start = self.clock.now()
        self.in_flight += 1
        self._active[req.rid] = req
        request = self._prepare(req)
        assert req.stream is not None
        # on a warm keep-alive connection the request is written now, not when a task first runs
        started = self._client.send_now(request, req.stream)
        now = time.monotonic()
        if started is not None:
            req.sent(now)
        req.deadline = now + self.scenario.load.timeout  # checked by the progress tick
        ctx = self._context
        req.task = asyncio.get_running_loop().create_task(self._send(req, request, started), context=ctx)
        # the request ends there whatever happens to the task (even cancelled before its first step)
        req.task.add_done_callback(req.done, context=ctx)

    def _sending_over(self) -> None:
        if not self.sending_done.is_set():
            self.sending_done.set()
        if not self._active and not self._queue:
            self._finished.set()

    # ------------------------------------------------------------------------------------------ a request

    def _cls_name(self, req: _Req) -> str:
        return self.scenario.classes[req.cls].name

    def _prepare(self, req: _Req) -> bytes:
        """The request's ChatStream (reporting first tokens to the request) and its HTTP request bytes."""
        sc = self.scenario
        c = sc.classes[req.cls]
        stream = ChatStream(
            thinking=c.thinking, keep_answer=sc.load.record_answers or req.item.reference is not None
        )
        stream.on_first_token = req.first_token
        stream.on_first_visible = req.first_visible
        req.stream = stream
        body = build_request_body(
            api=sc.load.api,
            model=self.model,
            prompt=req.item.text,
            max_tokens=c.max_tokens,
            temperature=c.temperature,
            top_p=c.top_p,
            thinking=c.thinking,
            system=c.system,
            seed=request_seed(sc.seed, req.rid) if self._send_seed else None,
            return_token_ids=sc.load.return_token_ids,
        )
        return self._client.request_bytes(self._path, body)

    async def _send(self, req: _Req, request: bytes, started: _Exchange | None) -> None:
        assert req.stream is not None
        try:
            req.http_status = await self._client.post_stream(
                request,
                req.stream,
                on_sent=req.sent,
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
        t0 = self.clock.t0
        if st is not None:
            st.finish(now + t0)
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
            return None if t is None else t - t0

        t_done = rel(st.t_done) if st is not None and st.t_done is not None else now
        if status is not RequestStatus.OK:
            t_done = now
        rec = RequestRecord(
            rid=req.rid,
            cls=c.name,
            difficulty=req.item.difficulty,
            prompt_id=req.item.id,
            t_scheduled=req.t_scheduled,
            t_dispatch=req.t_dispatch,
            t_start=req.t_start,
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
            max_tokens=c.max_tokens,
            finish_reason=st.finish_reason if st else None,
            status=status,
            http_status=http_status or None,
            error=error,
            answer_text=answer if sc.load.record_answers and st is not None else None,
            reference=req.item.reference,
            extracted=extracted,
            correct=correct,
            gaps=encode_gaps(st.gaps, st.tokens_per_chunk) if st is not None and st.chunks else b"",
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
            )
        )
        if ok:
            self.done += 1
        else:
            self.failed += 1
            if status is RequestStatus.ERROR:
                self._log_failure(req.rid, error or "error")
        # break the request's reference cycles (stream -> bound methods -> request -> task -> coroutine)
        # so it is freed now by reference counting, not by a full collection later
        if st is not None:
            st.on_first_token = st.on_first_visible = None
        req.stream = None
        req.task = None
        if self._active.pop(req.rid, None) is not None:
            self.in_flight -= 1
            if self._queue and not self._stopped:
                nxt = self._queue.popleft()
                self.queued -= 1
                self._start(nxt)
                if not self._queue and self._next >= len(self._deadlines):
                    self._sending_over()
        if self.sending_done.is_set() and not self._active and not self._queue:
            self._finished.set()

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
        mono = now + self.clock.t0
        publish = self._publish
        expired = []
        client = self._client
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
                publish(RequestEvent(RequestKind.PROGRESS, now, req.rid, req.name, counts[0], counts[1]))
        for req in expired:
            self._timeout(req)

    def _log(self, level: str, text: str) -> None:
        self._publish(LogEvent(self.clock.now(), "client", level, text))

    def _log_failure(self, rid: int, error: str) -> None:
        key = re.sub(r"\d+", "N", error)[:100]
        now = self.clock.now()
        last = self._log_last.get(key)
        if last is not None and now - last < _LOG_EVERY:
            self._log_suppressed[key] = self._log_suppressed.get(key, 0) + 1
            return
        more = self._log_suppressed.pop(key, 0)
        self._log_last[key] = now
        tail = (
            f" (and {more} more like it in the last {now - last:.0f} s)" if more and last is not None else ""
        )
        self._log("warning", f"request {rid} failed: {error}{tail}")
