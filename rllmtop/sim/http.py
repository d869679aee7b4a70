"""A lean asyncio HTTP/1.1 server protocol: keep-alive, Content-Length and chunked bodies, chunked
streaming responses. No framework: the simulator streams tens of thousands of SSE events a second and
a framework's per-event cost would be the bottleneck.

Requests on one connection are handled one at a time (a pipelined request waits for the previous
response). Handlers are plain callables that answer through the :class:`Connection` methods.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import cast

__all__ = ["Connection", "HttpRequest"]

MAX_HEAD = 64 * 1024
MAX_BODY = 32 * 1024 * 1024
_REASONS = {s.value: s.phrase for s in HTTPStatus}


@dataclass
class HttpRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool = True
    t_received: float = 0.0  # loop.time() when the request was complete
    extra: dict[str, object] = field(default_factory=dict)


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _decode_chunked(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """(body, end offset) of a chunked body starting at ``start``, or None if incomplete."""
    out = bytearray()
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _BadRequest(400, "invalid chunk size in a chunked request body") from None
        pos = eol + 2
        if size == 0:
            # skip trailers up to the empty line
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                if eol == pos:
                    return bytes(out), eol + 2
                pos = eol + 2
        if len(out) + size > MAX_BODY:
            raise _BadRequest(413, "request body too large")
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos : pos + size]
        pos += size + 2


class Connection(asyncio.Protocol):
    """One client connection. ``handler(request, connection)`` must eventually answer with
    :meth:`respond` or :meth:`start_stream` ... :meth:`end_stream` (or :meth:`abort`)."""

    def __init__(self, handler: Callable[[HttpRequest, Connection], None], server_header: bytes) -> None:
        self._handler = handler
        self._server_header = server_header
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._busy = False
        self._keep_alive = True
        self._sent_continue = False
        self._head_only = False
        self.closed = False
        self.on_close: list[Callable[[], None]] = []
        self._loop = asyncio.get_running_loop()

    # ---- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's are not asyncio.Transport subclasses, so no isinstance check)
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.transport.set_write_buffer_limits(high=64 * 1024 * 1024)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy:
            self._parse()

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        callbacks, self.on_close = self.on_close, []
        for cb in callbacks:
            cb()

    # ---- parsing ------------------------------------------------------------------------------
    def _parse(self) -> None:
        if self.closed or self._busy:
            return
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                self._fail(431, "request header too large")
            return
        try:
            req, consumed = self._parse_head_and_body(end)
        except _BadRequest as e:
            self._fail(e.status, e.message)
            return
        if req is None:
            return
        del buf[:consumed]
        self._busy = True
        self._keep_alive = req.keep_alive
        self._head_only = req.method == "HEAD"
        req.t_received = self._loop.time()
        self._handler(req, self)

    def _parse_head_and_body(self, end: int) -> tuple[HttpRequest | None, int]:
        buf = self._buf
        try:
            head = bytes(buf[:end]).decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
            raise _BadRequest(400, "invalid request head") from None
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, "invalid request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequest(400, "invalid header line")
            headers[name.strip().lower()] = value.strip()
        conn_hdr = headers.get("connection", "").lower()
        keep_alive = "close" not in conn_hdr if version == "HTTP/1.1" else "keep-alive" in conn_hdr
        body_start = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            decoded = _decode_chunked(buf, body_start)
            if decoded is None:
                self._maybe_continue(headers)
                return None, 0
            body, consumed = decoded
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                raise _BadRequest(400, "invalid Content-Length") from None
            if length < 0 or length > MAX_BODY:
                raise _BadRequest(413, "request body too large")
            if len(buf) < body_start + length:
                self._maybe_continue(headers)
                return None, 0
            body = bytes(buf[body_start : body_start + length])
            consumed = body_start + length
        self._sent_continue = False
        path, _, query = target.partition("?")
        return HttpRequest(method, path, query, headers, body, keep_alive), consumed

    def _maybe_continue(self, headers: dict[str, str]) -> None:
        if headers.get("expect", "").lower() == "100-continue" and not self._sent_continue:
            self._sent_continue = True
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _fail(self, status: int, message: str) -> None:
        self._keep_alive = False
        self._busy = True
        body = b'{"detail":"' + message.encode() + b'"}'
        self.respond(status, body)

    # ---- responses ----------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def _head(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if not self._keep_alive:
            lines.append("connection: close")
        return ("\r\n".join(lines) + "\r\n").encode("latin-1") + self._server_header + b"\r\n"

    def respond(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        """Send a complete response and finish the request."""
        hdrs = [("content-type", content_type), ("content-length", str(len(body)))]
        if headers:
            hdrs += headers
        self._write(self._head(status, hdrs) + (b"" if self._head_only else body))
        self._done()

    def start_stream(self, status: int = 200, content_type: str = "text/event-stream; charset=utf-8") -> None:
        self._write(self._head(status, [("content-type", content_type), ("transfer-encoding", "chunked")]))

    def write_chunk(self, data: bytes) -> None:
        """One HTTP chunk (``data`` must not be empty)."""
        if not self.closed and self.transport is not None:
            self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    def end_stream(self, last: bytes = b"") -> None:
        if last:
            self._write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(last), last))
        else:
            self._write(b"0\r\n\r\n")
        self._done()

    def abort(self) -> None:
        """Drop the connection (no more bytes, no clean end)."""
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    @property
    def buffered(self) -> int:
        return 0 if self.transport is None or self.closed else self.transport.get_write_buffer_size()

    def _done(self) -> None:
        self._busy = False
        if not self._keep_alive:
            self.close()
            return
        if self._buf:
            self._loop.call_soon(self._parse)
