"""The simulator's HTTP server: an OpenAI-compatible API shaped like vLLM 0.33 serving a reasoning model.

Endpoints: ``POST /v1/chat/completions`` and ``/v1/completions`` (stream and non-stream), ``GET
/v1/models``, ``/health`` (503 once the engine loop died), ``/version``, ``/metrics``, ``/ping``.
Streams carry one SSE event per request per engine iteration (several tokens in one event with
speculative decoding); reasoning goes to ``delta.reasoning`` (or ``delta.reasoning_content``, or inline
``<think>...</think>`` in ``content`` with ``--reasoning-parser none``).

Time: the engine loop paces :meth:`Engine.step` in wall time, every model latency divided by ``speed``
(model time = wall time since start x speed). ``--speed K`` is a time-lapse of the same experiment: a
client that compresses its schedule by K too (rllmtop's simulated clock) gets the same arrivals in
model time, the same seeds and token counts, so the same KV / queue shape and latencies as at speed 1.
The histograms in ``/metrics`` are in model (simulated) seconds at any speed, the time-lapse client's
clock; ``rllmtop_sim_lag_seconds`` and ``rllmtop_sim_iteration_lag_seconds`` are in wall seconds.

When the host cannot keep up (its CPU is taken, or ``speed`` asks for more than one core can step),
iterations are emitted late. Lateness up to ``catch_up_seconds`` (wall, default 10 ms: timer jitter,
a short hiccup) is caught up: the next iterations follow without sleeping until they are back on
schedule, so the model's timestamps do not move and tokens reach the client at most that late.
Further behind, the model clock is *stretched*, never caught up by emitting faster: the schedule
restarts from now, the engine loses those model seconds (as a slower GPU would: requests in flight wait,
arrivals keep coming on the client's schedule) and they are added to the counter
``rllmtop_sim_drift_seconds_total`` (model seconds, never decreasing). Every request's latencies, as the
client sees them and as the histograms count them, are inflated by the drift that accrued while it was
in flight (plus at most ``catch_up_seconds x speed``); an idle host keeps the drift at 0, and a drift
that grows with the run says the run's latencies are not those of the simulated engine. What the
drift cannot see: a request read late by a starved server is stamped when it is read.

In-process use (tests)::

    async with serve_in_background(ServerOptions(profile=load_profile("rllm-7b"), port=0, speed=50)) as url:
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import secrets
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import generate_latest

from rllmtop import __version__
from rllmtop.errors import UserError
from rllmtop.sim import outputs
from rllmtop.sim.engine import FINISHED, Engine, Histogram, Request
from rllmtop.sim.exposition import LAG_BUCKETS, SimCollector, make_registry
from rllmtop.sim.http import Connection, HttpRequest
from rllmtop.sim.outputs import (
    EFFORT_LEVELS,
    TIERS,
    RequestFactory,
    piece_text,
    render_chat,
    request_key,
    tokenize,
)
from rllmtop.sim.profiles import EngineOptions, Profile, derive

__all__ = ["Faults", "ServerOptions", "SimServer", "serve_in_background", "serve_in_thread"]

REASONING_FIELDS = ("reasoning", "reasoning_content")
STARTUP_LINE = "Starting rllmtop sim server on {url}"


@dataclass(frozen=True)
class Faults:
    """Fault injection: fractions of requests, and the process exit timer."""

    error_rate: float = 0.0  # answered 500
    rate_limit_rate: float = 0.0  # answered 429
    stall_rate: float = 0.0  # streams that stop sending for stall_seconds mid-way
    stall_seconds: float = 5.0  # wall seconds (not divided by speed)
    drop_rate: float = 0.0  # connection dropped mid-stream
    exit_after: float | None = None  # the process exits with code 1 after this many wall seconds


@dataclass(frozen=True)
class ServerOptions:
    profile: Profile
    engine: EngineOptions = field(default_factory=EngineOptions)
    host: str = "127.0.0.1"
    port: int = 8000  # 0: pick a free port
    served_model_name: str | None = None  # default: the profile's
    speed: float = 1.0  # divide every model latency by this
    seed: int = 0
    reasoning_field: str = "reasoning"  # "reasoning" | "reasoning_content"
    reasoning_parser: str | None = None  # None: the profile's; "none": reasoning inline in content
    faults: Faults = field(default_factory=Faults)
    api_key: str | None = None  # like vLLM's --api-key: /v1/* answers 401 without "Authorization: Bearer KEY"
    catch_up_seconds: float = 0.01  # wall; further behind, the model clock is stretched (drift)


def _check_options(o: ServerOptions) -> None:
    if not o.speed > 0 or o.speed != o.speed or o.speed == float("inf"):
        raise UserError(
            f"--speed {o.speed} must be a positive number", "e.g. --speed 10 runs ten times faster"
        )
    if o.reasoning_field not in REASONING_FIELDS:
        raise UserError(
            f"--reasoning-field {o.reasoning_field!r} is not supported",
            f"use one of: {', '.join(REASONING_FIELDS)}",
        )
    f = o.faults
    for name in ("error_rate", "rate_limit_rate", "stall_rate", "drop_rate"):
        v = getattr(f, name)
        if not 0 <= v <= 1:
            raise UserError(f"--fault-{name.replace('_', '-')} {v} must be a fraction in [0, 1]", "e.g. 0.05")
    if f.error_rate + f.rate_limit_rate > 1:
        raise UserError("--fault-error-rate + --fault-rate-limit-rate exceed 1", "lower one of them")
    if f.stall_seconds < 0:
        raise UserError(f"--fault-stall-seconds {f.stall_seconds} must be >= 0", "e.g. 5")
    if f.exit_after is not None and f.exit_after < 0:
        raise UserError(f"--exit-after {f.exit_after} must be >= 0", "e.g. 30")
    if not 0 <= o.catch_up_seconds < float("inf"):
        raise UserError(f"catch_up_seconds {o.catch_up_seconds} must be >= 0", "e.g. 0.01")
    if not 0 <= o.port <= 65535:
        raise UserError(f"--port {o.port} is out of range", "use 0..65535 (0 picks a free port)")


def _error_body(status: int, message: str, param: str | None = None) -> bytes:
    kind = {
        400: "BadRequestError",
        404: "NotFoundError",
        429: "RateLimitError",
        500: "InternalServerError",
        503: "ServiceUnavailableError",
    }.get(status, "BadRequestError")
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": status}})


class _ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


class _Stream:
    """One request's response: renders SSE events per iteration, or the JSON body at the end."""

    __slots__ = (
        "api",
        "close_cb",
        "closed",
        "conn",
        "created",
        "drop_at",
        "fields",
        "first",
        "head",
        "held",
        "hold_until",
        "include_usage",
        "inline",
        "model",
        "open",
        "rid",
        "server",
        "stall_at",
        "stream",
        "tail",
        "token_ids",
        "want_ids",
    )

    def __init__(self, server: SimServer, conn: Connection, api: str, stream: bool, model: str) -> None:
        self.server = server
        self.conn = conn
        self.api = api
        self.stream = stream
        self.model = model
        self.rid = ("chatcmpl-" if api == "chat" else "cmpl-") + secrets.token_hex(8)
        self.created = int(time.time())
        self.include_usage = False
        self.want_ids = False
        self.inline = False
        self.first = True
        self.closed = False
        self.close_cb: Any = None
        self.stall_at = -1
        self.drop_at = -1
        self.hold_until = 0.0
        self.held: list[bytes] = []
        self.token_ids: list[int] = []
        self.head = b""
        self.fields: list[bytes] = []
        self.open: list[bytes] = []
        self.tail = b""

    def prepare(self, reasoning_field: str) -> None:
        rid, created, model = self.rid, self.created, orjson.dumps(self.model).decode()
        if self.api == "chat":
            self.head = (
                f'data: {{"id":"{rid}","object":"chat.completion.chunk","created":{created},'
                f'"model":{model},"choices":[{{"index":0,"delta":'
            ).encode()
            rf = b"content" if self.inline else reasoning_field.encode()
            self.fields = [b'"' + rf + b'":"', b'"content":"']
            self.open = [self.head + b"{" + f for f in self.fields]
            self.tail = b'"},"logprobs":null,"finish_reason":null,"token_ids":null}]}\n\n'
        else:
            self.head = (
                f'data: {{"id":"{rid}","object":"text_completion","created":{created},'
                f'"model":{model},"choices":[{{"index":0,"text":"'
            ).encode()
            self.open = [self.head, self.head]
            self.tail = b'","logprobs":null,"finish_reason":null,"stop_reason":null,"token_ids":null}]}\n\n'

    # ---- streaming ----------------------------------------------------------------------------
    def _segments(self, req: Request, start: int, end: int, pj: list[bytes]) -> list[tuple[int, bytes]]:
        """(kind, text) runs for tokens [start, end): kind 0 reasoning, 1 content."""
        plan = req.plan
        ids = plan.token_ids
        r = plan.reasoning_tokens if plan.thinking else -1
        chat_field = self.api == "chat" and not self.inline
        single = not chat_field  # one text field: inline <think> content, or completions text
        segs: list[tuple[int, bytes]] = []
        for i in range(start, end):
            if i < r:
                kind, text = 0, pj[ids[i]]
                if i == 0 and self.inline and self.api == "chat":
                    text = b"<think>\\n" + text
            elif i == r:
                kind, text = (0, b"") if chat_field else (1, b"</think>")
            else:
                kind, text = 1, pj[ids[i]]
            if single:
                kind = 1
            if segs and segs[-1][0] == kind:
                segs[-1] = (kind, segs[-1][1] + text)
            else:
                segs.append((kind, text))
        return segs

    def emit(self, req: Request, n: int, pj: list[bytes], now: float) -> None:
        if self.closed:
            return
        end = req.num_output
        start = end - n
        if not self.stream:
            if self.drop_at >= 0 and end >= self.drop_at:
                self._drop(req)
            elif req.status == FINISHED:
                self.closed = True
                self._respond_json(req)
            return
        finished = req.status == FINISHED
        out: list[bytes] = []
        if self.first:
            self.first = False
            out.append(self._role_chunk(req))
        if n == 1 and not finished and not self.want_ids and not (start == 0 and self.inline):
            plan = req.plan
            r = plan.reasoning_tokens if plan.thinking else -1
            if start != r:
                out.append(self.open[start > r] + pj[plan.token_ids[start]] + self.tail)
            else:
                out.append(self._event(req, start, end, pj, None))
        else:
            out.append(self._event(req, start, end, pj, req.plan.finish_reason if finished else None))
        if finished:
            out.append(self._closing(req))
        data = b"".join(out)
        if self.stall_at >= 0 and end >= self.stall_at:
            self.stall_at = -1
            self.hold_until = now + self.server.options.faults.stall_seconds
            self.server.loop.call_at(self.hold_until, self._release)
        if self.hold_until:
            self.held.append(data)
            if finished:
                self.held.append(b"")  # marks the end
            return
        if self.drop_at >= 0 and end >= self.drop_at:
            self._drop(req)
            return
        if finished:
            self.closed = True
            self.conn.end_stream(data)
            self.server.stream_closed(self)
        else:
            self.conn.write_chunk(data)

    def _event(self, req: Request, start: int, end: int, pj: list[bytes], finish: str | None) -> bytes:
        segs = self._segments(req, start, end, pj)
        ids = req.plan.token_ids[start:end]
        if self.want_ids:
            id_text = b"[" + ",".join(map(str, ids)).encode() + b"]"
        else:
            id_text = b"null"
        fin = b"null" if finish is None else b'"' + finish.encode() + b'"'
        stop = b',"stop_reason":null' if finish is not None or self.api != "chat" else b""
        if self.api == "chat":
            delta = b"{" + b",".join(self.fields[k] + txt + b'"' for k, txt in segs) + b"}"
            return (
                self.head
                + delta
                + b',"logprobs":null,"finish_reason":'
                + fin
                + stop
                + b',"token_ids":'
                + id_text
                + b"}]}\n\n"
            )
        text = b"".join(t for _, t in segs)
        return (
            self.open[1]
            + text
            + b'","logprobs":null,"finish_reason":'
            + fin
            + b',"stop_reason":null,"token_ids":'
            + id_text
            + b"}]}\n\n"
        )

    def _role_chunk(self, req: Request) -> bytes:
        if self.api != "chat":
            return b""
        prompt_ids = b"null"
        if self.want_ids:
            prompt_ids = b"[" + ",".join(map(str, req.prompt_ids)).encode() + b"]"
        return (
            self.head
            + b'{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"prompt_token_ids":'
            + prompt_ids
            + b',"prompt_text":null}\n\n'
        )

    def _usage(self, req: Request) -> dict[str, Any]:
        reasoning = min(req.num_output, req.plan.reasoning_tokens)
        usage: dict[str, Any] = {
            "prompt_tokens": req.num_prompt,
            "total_tokens": req.num_prompt + req.num_output,
            "completion_tokens": req.num_output,
        }
        if self.api == "chat" and not self.inline:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        if req.num_cached_prompt:
            usage["prompt_tokens_details"] = {"cached_tokens": req.num_cached_prompt}
        return usage

    def _closing(self, req: Request) -> bytes:
        out = b""
        if self.include_usage:
            obj: dict[str, Any] = {
                "id": self.rid,
                "object": "chat.completion.chunk" if self.api == "chat" else "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": self._usage(req),
                "system_fingerprint": f"rllmtop-sim-{__version__}",
            }
            out = b"data: " + orjson.dumps(obj) + b"\n\n"
        return out + b"data: [DONE]\n\n"

    def _release(self) -> None:
        self.hold_until = 0.0
        if self.closed:
            return
        held, self.held = self.held, []
        ended = bool(held) and held[-1] == b""
        data = b"".join(held)
        if ended:
            self.closed = True
            self.conn.end_stream(data)
            self.server.stream_closed(self)
        elif data:
            self.conn.write_chunk(data)

    def _drop(self, req: Request) -> None:
        self.closed = True
        self.conn.abort()
        self.server.engine.abort(req, self.server.model_now())
        self.server.stream_closed(self)

    # ---- non-streaming ------------------------------------------------------------------------
    def _respond_json(self, req: Request) -> None:
        if self.stall_at >= 0:  # a stalled non-streaming response arrives stall_seconds late
            self.stall_at = -1
            self.server.loop.call_later(self.server.options.faults.stall_seconds, self._respond_json, req)
            return
        if self.conn.closed:
            self.server.stream_closed(self)
            return
        plan = req.plan
        ids = plan.token_ids[: req.num_output]
        r = min(plan.reasoning_tokens, len(ids)) if plan.thinking else 0
        reasoning = "".join(piece_text(i) for i in ids[:r])
        answer = (
            "".join(piece_text(i) for i in ids[r + 1 :]) if plan.thinking else "".join(map(piece_text, ids))
        )
        obj: dict[str, Any]
        token_ids = ids if self.want_ids else None
        if self.api == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": answer}
            if plan.thinking:
                if self.inline:
                    end = "</think>" if len(ids) > r else ""
                    message["content"] = f"<think>\n{reasoning}{end}{answer}"
                else:
                    message[self.server.options.reasoning_field] = reasoning
            message.update({"refusal": None, "annotations": None, "audio": None, "function_call": None})
            message["tool_calls"] = []
            obj = {
                "id": self.rid,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": plan.finish_reason,
                        "stop_reason": None,
                        "token_ids": token_ids,
                    }
                ],
                "service_tier": None,
                "system_fingerprint": None,
                "usage": self._usage(req),
                "prompt_logprobs": None,
                "prompt_token_ids": req.prompt_ids if self.want_ids else None,
                "kv_transfer_params": None,
            }
        else:
            text = reasoning + ("</think>" if plan.thinking and len(ids) > r else "") + answer
            obj = {
                "id": self.rid,
                "object": "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "text": text,
                        "logprobs": None,
                        "finish_reason": plan.finish_reason,
                        "stop_reason": None,
                        "token_ids": token_ids,
                        "prompt_logprobs": None,
                        "prompt_token_ids": req.prompt_ids if self.want_ids else None,
                    }
                ],
                "service_tier": None,
                "system_fingerprint": None,
                "usage": self._usage(req),
                "kv_transfer_params": None,
            }
        self.conn.respond(200, orjson.dumps(obj))
        self.server.stream_closed(self)


class SimServer:
    """The simulator: engine loop plus HTTP server, in the running event loop."""

    def __init__(self, options: ServerOptions) -> None:
        _check_options(options)
        self.options = options
        prof = options.profile
        self.config, self.derived = derive(prof, options.engine)
        self.model_name = options.served_model_name or prof.served_model_name
        self.engine = Engine(self.config)
        self.factory = RequestFactory(prof.outputs, options.seed)
        self.reasons = prof.outputs.reasons
        parser = options.reasoning_parser if options.reasoning_parser is not None else prof.reasoning_parser
        self.inline = parser.lower() in ("none", "")
        self.speed = options.speed
        self.dead = False
        self.lag = 0.0
        self.lag_hist = Histogram(LAG_BUCKETS)
        self.resyncs = 0
        self.drift = 0.0  # model seconds the loop fell behind its schedule (stretched), cumulative
        self._streams: set[_Stream] = set()
        self._conns: set[Connection] = set()
        self._server: asyncio.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._exit_handle: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._t0 = 0.0
        self._fault_counter = 0
        self.url = ""
        self.started = time.time()
        self.loop: asyncio.AbstractEventLoop  # set by start()
        created = self.started
        cfg = self.config
        cache_info = {
            "block_size": str(cfg.block_size),
            "cache_dtype": options.engine.kv_cache_dtype,
            "enable_prefix_caching": str(cfg.enable_prefix_caching),
            "gpu_memory_utilization": str(
                options.engine.gpu_memory_utilization or prof.serving.gpu_memory_utilization
            ),
            "num_gpu_blocks": str(cfg.num_gpu_blocks),
            "num_gpu_blocks_override": str(options.engine.num_gpu_blocks_override),
            "kv_cache_size_tokens": str(cfg.capacity_tokens),
        }
        info = {
            "version": __version__,
            "profile": prof.name,
            "gpu": prof.gpu_label,
            "model": prof.model.name,
            "speed": repr(options.speed),
        }
        self.registry = make_registry(
            SimCollector(
                self.engine,
                self.model_name,
                created,
                info=info,
                cache_info=cache_info,
                server_stats=self._server_stats,
            )
        )
        self._server_header = b"server: rllmtop-sim\r\n"

    # ---- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> str:
        """Listen and start the engine loop; returns the base URL (``http://HOST:PORT``)."""
        self.loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._t0 = self.loop.time()
        o = self.options
        try:
            self._server = await self.loop.create_server(self._make_conn, o.host, o.port, reuse_address=True)
        except OSError as e:
            raise UserError(
                f"cannot listen on {o.host}:{o.port} ({e.strerror or e})",
                "pick another --port (or --port 0 for a free one)",
            ) from None
        sock = self._server.sockets[0]
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"
        self._task = self.loop.create_task(self._engine_loop())
        if o.faults.exit_after is not None:
            self._exit_handle = self.loop.call_later(o.faults.exit_after, self._exit_now)
        return self.url

    async def stop(self) -> None:
        """Stop listening, end every connection and the engine loop."""
        if self._exit_handle is not None:
            self._exit_handle.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.abort()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def wait_idle(self) -> None:
        """Return once the engine has no running or waiting request (or the engine loop died)."""
        while self.engine.has_work and not self.dead:
            self._idle.clear()
            await self._idle.wait()

    def _exit_now(self) -> None:
        print(
            f"rllmtop sim: exiting after {self.options.faults.exit_after} s (--exit-after)", file=sys.stderr
        )
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)

    def _make_conn(self) -> Connection:
        conn = Connection(self._handle, self._server_header)
        self._conns.add(conn)
        conn.on_close.append(lambda: self._conns.discard(conn))
        return conn

    # ---- time ---------------------------------------------------------------------------------
    def model_now(self) -> float:
        return (self.loop.time() - self._t0) * self.speed

    def _server_stats(self) -> dict[str, Any]:
        return {
            "lag": self.lag,
            "lag_histogram": self.lag_hist,
            "resyncs": self.resyncs,
            "drift": self.drift,
            "speed": self.speed,
            "open_streams": len(self._streams),
        }

    async def _engine_loop(self) -> None:
        loop = self.loop
        engine = self.engine
        speed = self.speed
        tolerance = self.options.catch_up_seconds
        t0 = self._t0
        sched: float | None = None  # wall time the next step starts on the model's schedule
        try:
            while True:
                if not engine.has_work:
                    if sched is not None:
                        self._behind(loop.time() - sched, tolerance)
                    sched = None
                    self.lag = 0.0
                    self._idle.set()
                    self._wake.clear()
                    await self._wake.wait()
                    self._idle.clear()
                    continue
                wall = loop.time()
                if sched is None:  # woken by an arrival: the schedule starts at the first arrival
                    sched = min(wall, t0 + engine.waiting[0].t_arrival / speed)
                if self._behind(wall - sched, tolerance):
                    sched = wall
                step = engine.step((sched - t0) * speed)
                if step.num_reqs == 0:  # nothing schedulable (cannot happen with a valid config)
                    raise RuntimeError("engine has work but scheduled nothing")
                end = t0 + (step.start + step.duration) / speed
                delay = end - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    await asyncio.sleep(0)
                now = loop.time()
                lag = now - end
                self.lag = lag if lag > 0 else 0.0
                self.lag_hist.observe(self.lag)
                self._emit(step.emitted, now)
                sched = end
        except asyncio.CancelledError:
            raise
        except Exception:
            self.dead = True
            self._idle.set()
            print("rllmtop sim: the engine loop died:", file=sys.stderr)
            traceback.print_exc()
            for st in list(self._streams):
                st.closed = True
                st.conn.abort()
            self._streams.clear()

    def _behind(self, late: float, tolerance: float) -> bool:
        """Account for being ``late`` wall seconds behind the schedule: beyond ``tolerance`` the model
        clock is stretched (the caller restarts the schedule from now) and the model seconds lost are
        added to the drift. Returns whether it stretched."""
        if late <= tolerance:
            return False
        self.drift += late * self.speed
        self.resyncs += 1
        return True

    def _emit(self, emitted: list[tuple[Request, int]], now: float) -> None:
        pj = outputs.ensure_piece_bytes()
        for req, n in emitted:
            st = req.user
            if st is not None:
                st.emit(req, n, pj, now)  # type: ignore[attr-defined]

    def stream_closed(self, st: _Stream) -> None:
        self._streams.discard(st)
        if st.close_cb is not None:
            with contextlib.suppress(ValueError):
                st.conn.on_close.remove(st.close_cb)
            st.close_cb = None

    # ---- HTTP ---------------------------------------------------------------------------------
    def _handle(self, req: HttpRequest, conn: Connection) -> None:
        try:
            self._route(req, conn)
        except _ApiError as e:
            conn.respond(e.status, _error_body(e.status, e.message, e.param))
        except Exception as e:  # nothing a client sends may crash the server
            traceback.print_exc()
            conn.respond(500, _error_body(500, f"internal error: {type(e).__name__}"))

    def _route(self, req: HttpRequest, conn: Connection) -> None:
        path = req.path.rstrip("/") or "/"
        get_routes = {
            "/health": self._health,
            "/ping": self._health,
            "/version": self._version,
            "/v1/models": self._models,
            "/metrics": self._metrics,
        }
        post_routes = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
        key = self.options.api_key
        if key and path.startswith("/v1"):
            given = req.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                conn.respond(401, b'{"error":"Unauthorized"}')
                return
        if path in get_routes:
            if req.method not in ("GET", "HEAD"):
                conn.respond(405, b'{"detail":"Method Not Allowed"}')
                return
            get_routes[path](conn)
            return
        if path in post_routes:
            if req.method != "POST":
                conn.respond(405, b'{"detail":"Method Not Allowed"}')
                return
            self._completion(req, conn, post_routes[path])
            return
        conn.respond(404, b'{"detail":"Not Found"}')

    def _health(self, conn: Connection) -> None:
        if self.dead or self._task is None or self._task.done():
            conn.respond(503, _error_body(503, "the engine loop is not running"))
        else:
            conn.respond(200, b"", content_type="text/plain; charset=utf-8")

    def _version(self, conn: Connection) -> None:
        body = {
            "version": __version__,
            "engine": "rllmtop-sim",
            "simulator": True,
            "emulates": "vllm 0.33",
            "profile": self.options.profile.name,
        }
        conn.respond(200, orjson.dumps(body))

    def _models(self, conn: Connection) -> None:
        prof = self.options.profile
        card = {
            "id": self.model_name,
            "object": "model",
            "created": int(self.started),
            "owned_by": "vllm",
            "root": prof.model.name,
            "parent": None,
            "max_model_len": self.config.max_model_len,
            "permission": [
                {
                    "id": "modelperm-rllmtop-sim",
                    "object": "model_permission",
                    "created": int(self.started),
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
        conn.respond(200, orjson.dumps({"object": "list", "data": [card]}))

    def _metrics(self, conn: Connection) -> None:
        conn.respond(
            200, generate_latest(self.registry), content_type="text/plain; version=0.0.4; charset=utf-8"
        )

    # ---- completions --------------------------------------------------------------------------
    def _completion(self, http: HttpRequest, conn: Connection, api: str) -> None:
        if self.dead:
            raise _ApiError(500, "the engine loop is not running")
        try:
            body = orjson.loads(http.body)
        except orjson.JSONDecodeError as e:
            raise _ApiError(400, f"invalid JSON body: {e}") from None
        if not isinstance(body, dict):
            raise _ApiError(400, "the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.model_name:
            raise _ApiError(404, f"The model `{model}` does not exist.", "model")
        stream = _opt(body, "stream", bool, False)
        n = _opt(body, "n", int, 1)
        if n != 1:
            raise _ApiError(400, "n must be 1: the rllmtop simulator generates one choice per request", "n")
        seed = _opt(body, "seed", int, None)
        want_ids = _opt(body, "return_token_ids", bool, False)
        so = body.get("stream_options")
        include_usage = False
        if so is not None:
            if not isinstance(so, dict):
                raise _ApiError(400, "stream_options must be an object", "stream_options")
            if not stream:
                raise _ApiError(
                    400, "Stream options can only be defined when `stream=True`.", "stream_options"
                )
            include_usage = _opt(so, "include_usage", bool, False)
        controls = _controls(body, http.headers, api)
        thinking = controls.thinking
        if api == "chat":
            messages, user_text = _messages(body)
            text = render_chat(messages, thinking=thinking, reasons=self.reasons)
        else:
            text = _prompt(body)
            user_text = text
        prompt_ids = tokenize(text, self.config.prompt_token_scale)
        max_len = self.config.max_model_len
        n_prompt = len(prompt_ids)
        if n_prompt >= max_len:
            raise _ApiError(
                400,
                f"This model's maximum context length is {max_len} tokens. However, your request has "
                f"{n_prompt} input tokens. Please reduce the length of the input messages.",
                "messages" if api == "chat" else "prompt",
            )
        mt_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = _opt(body, mt_name, int, None)
        if max_tokens is None:
            max_tokens = max_len - n_prompt
        elif max_tokens < 1:
            raise _ApiError(400, f"{mt_name} must be at least 1, got {max_tokens}.", mt_name)
        elif max_tokens > max_len - n_prompt:
            raise _ApiError(
                400,
                f"'{mt_name}' is too large: {max_tokens}. This model's maximum context length is {max_len} "
                f"tokens and your request has {n_prompt} input tokens ({max_tokens} > {max_len} - {n_prompt}).",
                mt_name,
            )
        # faults, decided per request from its seed (reproducible) or the arrival counter
        f = self.options.faults
        fault_rng = None
        if f.error_rate or f.rate_limit_rate or f.stall_rate or f.drop_rate:
            import random

            self._fault_counter += 1
            key = request_key(
                self.options.seed, seed, text, 0 if seed is not None else self._fault_counter, "fault"
            )
            fault_rng = random.Random(key)
            u = fault_rng.random()
            if u < f.rate_limit_rate:
                raise _ApiError(
                    429, "Too many requests (simulated by the rllmtop simulator's fault injection)"
                )
            if u < f.rate_limit_rate + f.error_rate:
                raise _ApiError(
                    500, "Internal server error (simulated by the rllmtop simulator's fault injection)"
                )
        plan = self.factory.plan(
            text,
            max_tokens=max_tokens,
            request_seed=seed,
            thinking=thinking,
            analyze=user_text,
            difficulty=controls.difficulty,
            effort=controls.effort,
            thinking_budget=controls.thinking_budget,
            ignore_eos=controls.ignore_eos,
        )
        st = _Stream(self, conn, api, stream, self.model_name)
        st.include_usage = include_usage
        st.want_ids = want_ids
        st.inline = self.inline and api == "chat"
        st.prepare(self.options.reasoning_field)
        if fault_rng is not None and plan.n_tokens >= 2:
            if fault_rng.random() < f.stall_rate:
                st.stall_at = max(1, int(plan.n_tokens * fault_rng.uniform(0.2, 0.8)))
            if fault_rng.random() < f.drop_rate:
                st.drop_at = max(1, int(plan.n_tokens * fault_rng.uniform(0.2, 0.8)))
        req = Request(st.rid, prompt_ids, plan, max_tokens, user=st)
        self._streams.add(st)
        st.close_cb = lambda: self._disconnected(st, req)
        conn.on_close.append(st.close_cb)
        if stream:
            conn.start_stream()
        self.engine.add(req, self.model_now())
        self._wake.set()

    def _disconnected(self, st: _Stream, req: Request) -> None:
        if not st.closed:
            st.closed = True
            self.engine.abort(req, self.model_now())
            self._streams.discard(st)


@dataclass(frozen=True)
class _Controls:
    """What a request asks of the model besides its prompt (see :func:`_controls`)."""

    thinking: bool = True
    difficulty: str | None = None
    effort: str | None = None
    thinking_budget: int | None = None
    ignore_eos: bool = False


def _controls(body: dict[str, Any], headers: dict[str, str], api: str) -> _Controls:
    """Reasoning controls of a request.

    Header ``x-rllmtop-difficulty: easy|medium|hard|mcq`` (other values ignored, as real engines ignore
    the header); ``reasoning_effort`` "low"|"medium"|"high" (chat, like vLLM; ignored on completions);
    ``thinking_token_budget`` and ``chat_template_kwargs.thinking_budget`` (integers >= 0; the smaller
    wins); ``chat_template_kwargs.enable_thinking``; ``ignore_eos``.
    """
    difficulty = headers.get("x-rllmtop-difficulty", "").strip().lower()
    budgets = []
    top = _opt(body, "thinking_token_budget", int, None)
    if top is not None:
        if top < 0:
            raise _ApiError(400, f"thinking_token_budget must be >= 0, got {top}", "thinking_token_budget")
        budgets.append(top)
    thinking = True
    effort = None
    if api == "chat":
        ctk = body.get("chat_template_kwargs")
        if ctk is not None:
            if not isinstance(ctk, dict):
                raise _ApiError(400, "chat_template_kwargs must be an object", "chat_template_kwargs")
            thinking = _opt(ctk, "enable_thinking", bool, True)
            tb = _opt(ctk, "thinking_budget", int, None)
            if tb is not None:
                if tb < 0:
                    raise _ApiError(
                        400,
                        f"chat_template_kwargs.thinking_budget must be >= 0, got {tb}",
                        "chat_template_kwargs",
                    )
                budgets.append(tb)
        effort = _opt(body, "reasoning_effort", str, None)
        if effort is not None and effort not in EFFORT_LEVELS:
            raise _ApiError(
                400,
                f"reasoning_effort must be one of {', '.join(EFFORT_LEVELS)}, got {effort!r}",
                "reasoning_effort",
            )
    return _Controls(
        thinking=thinking,
        difficulty=difficulty if difficulty in TIERS else None,
        effort=effort,
        thinking_budget=min(budgets) if budgets else None,
        ignore_eos=_opt(body, "ignore_eos", bool, False),
    )


def _opt(obj: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    v = obj.get(name)
    if v is None:
        return default
    ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
    if not ok:
        tname = {bool: "a boolean", int: "an integer", str: "a string"}.get(kind, kind.__name__)
        raise _ApiError(400, f"{name} must be {tname}, got {v!r}", name)
    return v


def _content_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise _ApiError(400, f"{where}: only text content parts are supported", "messages")
            parts.append(part["text"])
        return "".join(parts)
    raise _ApiError(400, f"{where}: content must be a string or a list of text parts", "messages")


def _messages(body: dict[str, Any]) -> tuple[list[tuple[str, str]], str]:
    msgs = body.get("messages")
    if msgs is None:
        raise _ApiError(400, "Field required: messages", "messages")
    if not isinstance(msgs, list) or not msgs:
        raise _ApiError(400, "messages must be a non-empty list", "messages")
    out: list[tuple[str, str]] = []
    user_text = ""
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _ApiError(400, f"messages[{i}] must be an object with a role", "messages")
        role = m["role"]
        if role not in ("system", "user", "assistant", "developer", "tool"):
            raise _ApiError(400, f"messages[{i}].role {role!r} is not a known role", "messages")
        text = _content_text(m.get("content"), f"messages[{i}]")
        out.append(("system" if role == "developer" else role, text))
        if role == "user":
            user_text = text
    return out, user_text


def _prompt(body: dict[str, Any]) -> str:
    p = body.get("prompt")
    if p is None:
        raise _ApiError(400, "Field required: prompt", "prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]
    if not isinstance(p, str):
        raise _ApiError(400, "prompt must be a string (one prompt per request in the simulator)", "prompt")
    return p


@contextlib.asynccontextmanager
async def serve_in_background(options: ServerOptions) -> AsyncIterator[str]:
    """Run a :class:`SimServer` in the current event loop; yields its base URL."""
    server = SimServer(options)
    url = await server.start()
    try:
        yield url
    finally:
        await server.stop()


@contextlib.contextmanager
def serve_in_thread(options: ServerOptions) -> Iterator[str]:
    """Run a :class:`SimServer` on its own event loop in a daemon thread; yields its base URL."""
    started = threading.Event()
    box: dict[str, Any] = {}
    loop = asyncio.new_event_loop()

    async def main() -> None:
        try:
            server = SimServer(options)
            box["url"] = await server.start()
        except BaseException as e:
            box["error"] = e
            started.set()
            return
        box["stop"] = asyncio.Event()
        started.set()
        await box["stop"].wait()
        await server.stop()

    t = threading.Thread(target=loop.run_until_complete, args=(main(),), name="rllmtop-sim", daemon=True)
    t.start()
    started.wait()
    if "error" in box:
        t.join()
        loop.close()
        raise box["error"]
    try:
        yield box["url"]
    finally:
        loop.call_soon_threadsafe(box["stop"].set)
        t.join(5)
        loop.close()
