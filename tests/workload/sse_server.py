"""A tiny scriptable HTTP/1.1 server on 127.0.0.1 for the client and runner tests.

Each request's JSON body is parsed and handed, with a :class:`Reply`, to the test's handler coroutine,
which writes whatever bytes the case needs (well-formed SSE, errors, malformed chunks, drops, stalls).
Keep-alive is supported so connection reuse is exercised.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Handler = Callable[[dict[str, Any], "Reply"], Awaitable[None]]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    raw: bytes
    conn_id: int


class Reply:
    """Writes one response. ``chunked`` framing unless ``start(..., length=...)``."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.w = writer
        self.closed = False
        self.chunked = True

    async def start(
        self,
        status: int = 200,
        ctype: str = "text/event-stream",
        *,
        length: int | None = None,
        close: bool = False,
    ) -> None:
        head = f"HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\n"
        if length is None:
            head += "transfer-encoding: chunked\r\n"
        else:
            head += f"content-length: {length}\r\n"
            self.chunked = False
        if close:
            head += "connection: close\r\n"
        self.w.write(head.encode() + b"\r\n")
        await self.w.drain()

    async def raw(self, data: bytes) -> None:
        """Body bytes, framed as one HTTP chunk when chunked."""
        if self.chunked:
            self.w.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.w.write(data)
        await self.w.drain()

    async def wire(self, data: bytes) -> None:
        """Bytes exactly as given (framing included by the caller)."""
        self.w.write(data)
        await self.w.drain()

    async def event(self, obj: Any) -> None:
        await self.raw(b"data: " + json.dumps(obj).encode() + b"\n\n")

    async def end(self) -> None:
        if self.chunked:
            self.w.write(b"0\r\n\r\n")
        await self.w.drain()

    def drop(self) -> None:
        self.closed = True
        self.w.transport.abort()

    async def json(self, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        await self.start(status, "application/json", length=len(body))
        await self.raw(body)


def chunk(
    delta: dict[str, Any], finish: str | None = None, token_ids: list[int] | None = None
) -> dict[str, Any]:
    c: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
    if token_ids is not None:
        c["token_ids"] = token_ids
    return {"id": "x", "object": "chat.completion.chunk", "choices": [c]}


def usage(prompt: int, completion: int, reasoning: int | None = None) -> dict[str, Any]:
    u: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if reasoning is not None:
        u["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return {"id": "x", "object": "chat.completion.chunk", "choices": [], "usage": u}


async def reasoning_then_answer(
    reply: Reply,
    n_reasoning: int,
    answer: list[str],
    *,
    field_name: str = "reasoning",
    report_reasoning: bool = True,
    finish: str = "stop",
    pace: float = 0.0,
) -> None:
    """A well-formed vLLM-style stream: role chunk, reasoning, empty </think> chunk, answer, usage, [DONE]."""
    await reply.start()
    await reply.event(chunk({"role": "assistant", "content": ""}))
    for i in range(n_reasoning):
        await reply.event(chunk({field_name: f" r{i}"}))
        if pace:
            await asyncio.sleep(pace)
    await reply.event(chunk({field_name: ""}))
    for j, piece in enumerate(answer):
        await reply.event(chunk({"content": piece}, finish if j == len(answer) - 1 else None))
        if pace:
            await asyncio.sleep(pace)
    total = n_reasoning + 1 + len(answer)
    await reply.event(usage(10, total, n_reasoning + 1 if report_reasoning else 0))
    await reply.raw(b"data: [DONE]\n\n")
    await reply.end()


@dataclass
class SseServer:
    handler: Handler
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    active: int = 0
    max_active: int = 0
    url: str = ""
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> SseServer:
        self._server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t
        await self._server.wait_closed()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        conn_id = self.connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                n = int(headers.get("content-length", "0"))
                raw = await reader.readexactly(n) if n else b""
                body = json.loads(raw) if raw else {}
                self.seen.append(Seen(method, path, headers, body, raw, conn_id))
                reply = Reply(writer)
                self.active += 1
                self.max_active = max(self.max_active, self.active)
                try:
                    await self.handler(body, reply)
                finally:
                    self.active -= 1
                if reply.closed:
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()
