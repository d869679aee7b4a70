"""A minimal vLLM-shaped SSE server for client benchmarks (run as its own process, ideally on its own core).

    python bench/sse_server.py --port 0 [--cpu 1]

prints ``listening on http://127.0.0.1:PORT`` and serves POSTs whose JSON body holds a ``bench`` object:

- ``n``: chunks to stream; ``per_write``: events per socket write (flat-out mode);
- ``interval``: seconds between chunks (paced mode, 0 = flat out). Paced streams are written by one global
  ticker, all due streams in one batch per tick, like an engine iteration;
- ``stamp``: put the server's ``time.monotonic()`` at write time in ``delta.content`` ("<t>;") so the client
  side can compute delivery lag per chunk (both processes read the same CLOCK_MONOTONIC).

Each SSE event is one HTTP chunk, like uvicorn. The stream ends with a usage chunk and ``data: [DONE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import os
import signal
import sys
import time

_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
_PREFIX = (
    b'data: {"id":"chatcmpl-97fd9fc122501bae","object":"chat.completion.chunk","created":1795343957,'
    b'"model":"bench","choices":[{"index":0,"delta":{"content":"'
)
_SUFFIX = b'"},"logprobs":null,"finish_reason":null,"token_ids":null}]}\n\n'


def _event(content: bytes) -> bytes:
    ev = _PREFIX + content + _SUFFIX
    return b"%x\r\n%s\r\n" % (len(ev), ev)


_TOKEN = _event(b" tok")
_ROLE = (
    b'data: {"id":"chatcmpl-97fd9fc122501bae","object":"chat.completion.chunk","created":1795343957,'
    b'"model":"bench","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
    b'"finish_reason":null}]}\n\n'
)
_ROLE_CHUNK = b"%x\r\n%s\r\n" % (len(_ROLE), _ROLE)


def _tail(n: int) -> bytes:
    last = (
        b'data: {"id":"chatcmpl-97fd9fc122501bae","object":"chat.completion.chunk","created":1795343957,'
        b'"model":"bench","choices":[],"usage":{"prompt_tokens":13,"total_tokens":%d,"completion_tokens":%d}}\n\n'
        % (n + 13, n)
    )
    done = b"data: [DONE]\n\n"
    return b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(last), last, len(done), done)


class _Proto(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.paused: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def pause_writing(self) -> None:
        self.paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.paused is not None and not self.paused.done():
            self.paused.set_result(None)
        self.paused = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.paused is not None and not self.paused.done():
            self.paused.set_result(None)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = self.buf[:i].decode("latin-1").lower()
            n = 0
            for line in head.split("\r\n"):
                if line.startswith("content-length:"):
                    n = int(line.split(":", 1)[1])
            if len(self.buf) < i + 4 + n:
                return
            body = json.loads(self.buf[i + 4 : i + 4 + n] or b"{}")
            self.buf = self.buf[i + 4 + n :]
            self.server.start(self, body.get("bench") or {})


class Server:
    def __init__(self, default: dict[str, float] | None = None) -> None:
        self.default = default or {}
        self.heap: list[tuple[float, int, _Stream]] = []
        self.wake = asyncio.Event()
        self.seq = 0

    def start(self, proto: _Proto, spec: dict[str, float]) -> None:
        assert proto.transport is not None
        spec = {**self.default, **spec}
        proto.transport.write(_HEAD + _ROLE_CHUNK)
        st = _Stream(proto, int(spec.get("n", 100)), int(spec.get("per_write", 4)), bool(spec.get("stamp")))
        interval = float(spec.get("interval", 0.0))
        if interval <= 0:
            asyncio.get_running_loop().create_task(st.flat_out())
        else:
            st.interval = interval
            self.seq += 1
            heapq.heappush(self.heap, (time.monotonic() + interval, self.seq, st))
            self.wake.set()

    async def ticker(self) -> None:
        """Write every due paced stream's next chunk, all in one pass per wake-up."""
        while True:
            if not self.heap:
                self.wake.clear()
                await self.wake.wait()
                continue
            now = time.monotonic()
            due = self.heap[0][0]
            if due > now:
                await asyncio.sleep(min(due - now, 0.05))
                continue
            while self.heap and self.heap[0][0] <= now:
                t, _, st = heapq.heappop(self.heap)
                if st.step(now):
                    self.seq += 1
                    heapq.heappush(self.heap, (t + st.interval, self.seq, st))


class _Stream:
    def __init__(self, proto: _Proto, n: int, per_write: int, stamp: bool) -> None:
        self.proto = proto
        self.n = n
        self.left = n
        self.per_write = per_write
        self.stamp = stamp
        self.interval = 0.0

    def step(self, now: float) -> bool:
        tr = self.proto.transport
        if tr is None:
            return False
        ev = _event(b"%.6f;" % now) if self.stamp else _TOKEN
        self.left -= 1
        if self.left <= 0:
            tr.write(ev + _tail(self.n))
            return False
        tr.write(ev)
        return True

    async def flat_out(self) -> None:
        block = _TOKEN * self.per_write
        while self.left > 0:
            tr = self.proto.transport
            if tr is None:
                return
            k = min(self.per_write, self.left)
            self.left -= k
            if self.stamp:
                now = time.monotonic()
                tr.write(b"".join(_event(b"%.6f;" % now) for _ in range(k)))
            else:
                tr.write(block if k == self.per_write else _TOKEN * k)
            if self.proto.paused is not None:
                await self.proto.paused
            else:
                await asyncio.sleep(0)
        if self.proto.transport is not None:
            self.proto.transport.write(_tail(self.n))


async def main_async(port: int, default: dict[str, float]) -> None:
    server = Server(default)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: _Proto(server), "127.0.0.1", port, backlog=4096)
    print(f"listening on http://127.0.0.1:{srv.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ticker = loop.create_task(server.ticker())
    await stop.wait()
    ticker.cancel()
    srv.close()


def _raise_nofile() -> None:
    """Thousands of streams need thousands of sockets: lift the soft descriptor limit to the hard one."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU")
    ap.add_argument(
        "--n", type=int, default=100, help="chunks per stream when the request has no bench object"
    )
    ap.add_argument(
        "--interval", type=float, default=0.0, help="seconds between chunks (0 = flat out), default"
    )
    ap.add_argument("--per-write", type=int, default=4, help="events per write in flat-out mode, default")
    args = ap.parse_args(argv)
    _raise_nofile()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {args.cpu})
    asyncio.run(main_async(args.port, {"n": args.n, "interval": args.interval, "per_write": args.per_write}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
