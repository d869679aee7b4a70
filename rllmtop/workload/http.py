"""The HTTP/1.1 transport of the load generator: keep-alive connections, streamed POSTs, framing.

A lean asyncio client: a ``BufferedProtocol`` per keep-alive connection reads into one buffer shared by the
pool (no allocation per read), decodes chunked transfer encoding and hands body bytes to the request's
:class:`~rllmtop.workload.sse.ChatStream`, all inside the read callback: no coroutine, task or future is
touched per chunk. Nothing raises out of the read callback: a parser bug ends that request with an error.
``bench/bench_client.py`` measures it against aiohttp (the way ``vllm bench serve`` streams) and plain httpx.

Timing facts for the request record: ``post_stream`` reports the seconds spent opening a connection
(``on_connect``, not called on a warm keep-alive connection) and the monotonic time of each write of the
request (``on_sent``: a retry after a dead keep-alive connection writes, and reports, again).
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import orjson

from rllmtop.errors import UserError
from rllmtop.workload.sse import ChatStream, error_text

__all__ = ["Exchange", "HttpClient", "RequestFailed"]

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError
_monotonic = time.monotonic


class RequestFailed(Exception):
    """The request ended in an error; ``str()`` is one line for the record."""


class Exchange:
    """One request/response on a connection: response head, body framing, hand-off to the ChatStream."""

    __slots__ = (
        "_chunk_need",
        "_err_body",
        "_head",
        "_json_body",
        "_pending",
        "body_done",
        "conn",
        "future",
        "got_bytes",
        "keep_alive",
        "length_left",
        "mode",
        "status",
        "stream",
    )

    def __init__(self, stream: ChatStream, future: asyncio.Future[None]) -> None:
        self.stream = stream
        self.future = future
        self.conn: _Conn | None = None
        self._head = b""
        self._pending = b""
        self._chunk_need = 0  # bytes of chunk data still expected; -1 = expect CRLF; -2 = trailers
        self._err_body: list[bytes] = []
        self._json_body: list[bytes] | None = None
        self.mode = 0  # 0 head, 1 chunked, 2 content-length, 3 until close
        self.status = 0
        self.keep_alive = True
        self.length_left = 0
        self.body_done = False
        self.got_bytes = False

    def feed(self, data: bytes, now: float) -> None:
        self.got_bytes = True
        if self.mode == 1:
            body = self._dechunk(data)
        elif self.mode == 0:
            head = self._head + data
            i = head.find(b"\r\n\r\n")
            if i < 0:
                if len(head) > 65536:
                    self.end(f"response head larger than 64 KiB from {self._peer()}", now)
                else:
                    self._head = head
                return
            self._head = b""
            if not self._parse_head(head[:i], now):
                return
            rest = head[i + 4 :]
            if not rest and not self.body_done:
                return
            body = self._dechunk(rest) if self.mode == 1 else self._count(rest)
        else:
            body = self._count(data)
        if body:
            if self.status == 200:
                if self._json_body is not None:
                    self._json_body.append(body)
                else:
                    self.stream.feed(body, now)
            elif sum(map(len, self._err_body)) < 65536:
                self._err_body.append(body)
        if self.body_done:
            self.end(None, now)
        elif self.stream.done and self.status == 200 and self.stream.error is not None:
            self.end(None, now)  # malformed stream: stop reading it, the connection is not reused

    def _count(self, data: bytes) -> bytes:
        if self.mode == 2:
            if len(data) >= self.length_left:
                data = data[: self.length_left]
                self.body_done = True
            self.length_left -= len(data)
        return data

    def _dechunk(self, data: bytes) -> bytes:
        buf = self._pending + data if self._pending else data
        pos = 0
        n = len(buf)
        out: list[bytes] = []
        need = self._chunk_need
        while True:
            if need > 0:
                take = n - pos if n - pos < need else need
                out.append(buf[pos : pos + take])
                pos += take
                need -= take
                if need:
                    break
                need = -1
            if need == -1:
                if n - pos < 2:
                    break
                pos += 2  # the CRLF after chunk data
                need = 0
            if need == -2:  # trailers after the last chunk, up to an empty line
                j = buf.find(b"\r\n", pos)
                if j < 0:
                    break
                if j == pos:
                    pos = j + 2
                    self.body_done = True
                    break
                pos = j + 2
                continue
            j = buf.find(b"\r\n", pos)
            if j < 0:
                break
            line = buf[pos:j]
            try:
                size = int(line.split(b";", 1)[0], 16)
            except ValueError:
                self.body_done = True
                self.keep_alive = False
                self.stream.fail(f"bad chunked encoding from {self._peer()}: {line[:40]!r}")
                pos = n
                break
            pos = j + 2
            if size == 0:
                need = -2
                continue
            need = size
        self._chunk_need = need
        self._pending = buf[pos:] if pos < n else b""
        return out[0] if len(out) == 1 else b"".join(out)

    def _parse_head(self, head: bytes, now: float) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        try:
            self.status = int(parts[1])
        except (IndexError, ValueError):
            self.end(f"not an HTTP response from {self._peer()}: {lines[0][:60]!r}", now)
            return False
        chunked = False
        length: int | None = None
        ctype = b""
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            v = v.strip()
            if k == b"transfer-encoding":
                chunked = b"chunked" in v.lower()
            elif k == b"content-length":
                try:
                    length = int(v)
                except ValueError:
                    length = None
            elif k == b"connection":
                if v.lower() == b"close":
                    self.keep_alive = False
            elif k == b"content-type":
                ctype = v.lower()
        if parts[0] == b"HTTP/1.0":
            self.keep_alive = False
        if chunked:
            self.mode = 1
        elif length is not None:
            self.mode = 2
            self.length_left = length
            if length == 0:
                self.body_done = True
        else:
            self.mode = 3
            self.keep_alive = False
        if self.status == 200 and ctype.startswith(b"application/json"):
            self._json_body = []
        return True

    def _peer(self) -> str:
        return self.conn.peer if self.conn is not None else "server"

    def end(self, error: str | None, now: float) -> None:
        """The exchange is over: settle the stream and wake the waiting request."""
        if self.future.done():
            return
        st = self.stream
        if error is not None:
            st.fail(error)
            self.keep_alive = False
        elif self.status != 200:
            body = b"".join(self._err_body)
            try:
                msg = error_text(_loads(body))
            except _JSONDecodeError:
                msg = body[:200].decode("utf-8", "replace").strip() or "(empty body)"
            st.fail(f"HTTP {self.status}: {' '.join(msg.split())[:300]}")
        elif self._json_body is not None:
            try:
                st.feed_json(_loads(b"".join(self._json_body)), now)
            except _JSONDecodeError:
                st.fail("response body is not JSON")
        elif st.error is not None:
            self.keep_alive = False
        elif not st.done:
            if st.finish_reason is None:
                st.fail(f"stream ended without [DONE] or a finish_reason after {st.chunks} chunks")
            else:
                st.done = True
        if not self.body_done:
            self.keep_alive = False
        self.future.set_result(None)

    def lost(self, exc: BaseException | None, now: float) -> None:
        if self.future.done():
            return
        if self.mode == 3 and not self.body_done:  # body delimited by the close
            self.body_done = True
            self.end(None, now)
            return
        st = self.stream
        if st.done and st.error is None and self.status == 200:
            self.keep_alive = False
            self.end(None, now)  # [DONE] arrived; only the chunk terminator was missing
            return
        what = f": {exc}" if exc else ""
        if self.status == 0:
            self.end(f"connection closed by {self._peer()} before a response{what}", now)
        else:
            self.end(f"connection closed by {self._peer()} mid-stream after {st.chunks} chunks{what}", now)


def _nothing() -> None:
    pass


class _Conn(asyncio.BufferedProtocol):
    __slots__ = ("client", "closed", "exchange", "peer", "reused", "transport")

    def __init__(self, client: HttpClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.closed = False
        self.reused = False
        self.peer = client.peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.client._rbuf

    def buffer_updated(self, nbytes: int) -> None:
        now = _monotonic()
        client = self.client
        data = client._rbuf[:nbytes].tobytes()
        if now >= client.due_at:  # a send is due: do it first (a storm of reads must not delay it)
            client.on_due()
        ex = self.exchange
        if ex is None:  # bytes on an idle connection: the server is confused; drop the connection
            self.close()
            return
        try:
            ex.feed(data, now)
        except Exception as e:  # a parser defect ends this request, never the transport's callback
            ex.keep_alive = False
            ex.end(f"internal error reading the response from {self.peer}: {e!r}", now)
            self.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        ex = self.exchange
        if ex is not None:
            ex.lost(exc, _monotonic())
        self.client._forget(self)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abort()


class HttpClient:
    """Keep-alive HTTP/1.1 connections to one server, for streamed POSTs. One per event loop."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        connect_timeout: float = 30.0,
        user_agent: str = "rllmtop",
        read_buffer: int = 256 * 1024,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"not an http(s) URL: {base_url!r}", "use http://HOST:PORT")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.peer = f"{parts.scheme}://{self.host}:{self.port}"
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.connect_timeout = connect_timeout
        host_header = self.host if parts.port is None else f"{self.host}:{parts.port}"
        head = f"Host: {host_header}\r\nUser-Agent: {user_agent}\r\nAccept: text/event-stream\r\n"
        head += "Content-Type: application/json\r\n"
        if api_key:
            head += f"Authorization: Bearer {api_key}\r\n"
        self._head = head.encode("latin-1")
        self._rbuf = memoryview(bytearray(read_buffer))
        self._idle: list[_Conn] = []
        self._all: set[_Conn] = set()
        self.connections_opened = 0
        self.due_at = math.inf  # see on_due
        self.on_due: Callable[[], None] = _nothing
        """Called from the read path once ``time.monotonic()`` passes ``due_at`` (the runner's next send)."""

    def _forget(self, conn: _Conn) -> None:
        self._all.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        conn = _Conn(self)
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: conn,
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl else None,
                ),
                self.connect_timeout,
            )
        except TimeoutError as e:
            raise RequestFailed(
                f"cannot connect to {self.peer}: no answer within {self.connect_timeout:g} s"
            ) from e
        except OSError as e:
            raise RequestFailed(f"cannot connect to {self.peer}: {e.strerror or e}") from e
        self._all.add(conn)
        self.connections_opened += 1
        return conn

    def request_bytes(self, path: str, body: bytes, headers: bytes = b"") -> bytes:
        """The whole HTTP request for a POST of ``body`` to ``path``; ``headers``: extra header lines, each
        ending in CRLF (checked by the caller: no CR/LF inside a value)."""
        return b"POST %s HTTP/1.1\r\n%s%sContent-Length: %d\r\n\r\n%s" % (
            path.encode(),
            self._head,
            headers,
            len(body),
            body,
        )

    def _idle_conn(self) -> _Conn | None:
        while self._idle:
            c = self._idle.pop()
            if not c.closed:
                return c
        return None

    def _send_on(self, conn: _Conn, request: bytes, stream: ChatStream) -> Exchange:
        ex = Exchange(stream, asyncio.get_running_loop().create_future())
        ex.conn = conn
        conn.exchange = ex
        assert conn.transport is not None
        conn.transport.write(request)
        return ex

    def send_now(self, request: bytes, stream: ChatStream) -> Exchange | None:
        """Write ``request`` at once on an idle keep-alive connection (no await), or None if there is none.

        Pass the exchange to :meth:`post_stream` (``started=``) to follow the response.
        """
        conn = self._idle_conn()
        return None if conn is None else self._send_on(conn, request, stream)

    async def post_stream(
        self,
        request: bytes,
        stream: ChatStream,
        *,
        on_sent: Callable[[float], None] | None = None,
        on_connect: Callable[[float], None] | None = None,
        exchange_out: list[Exchange] | None = None,
        started: Exchange | None = None,
    ) -> int:
        """Send ``request`` (see :meth:`request_bytes`) and feed the response to ``stream`` until it ends.

        ``started``: an exchange already written by :meth:`send_now`. ``on_connect(seconds)``: a new
        connection was opened (or failed to open) in that many wall seconds. ``on_sent(monotonic)``: the
        request was written; called again when a dead keep-alive connection made it write once more on a
        fresh one (the later call is the write that counts). Returns the HTTP status (0 if none was
        received). Transport errors end up in ``stream.error``; nothing is raised except CancelledError.
        ``exchange_out`` receives the live exchange (so the caller can :meth:`abort` it).
        """
        ex = started
        for attempt in (0, 1):
            if ex is None:
                conn = self._idle_conn()
                if conn is None:
                    t0 = _monotonic()
                    try:
                        conn = await self._connect()
                    except RequestFailed as e:
                        if on_connect is not None:
                            on_connect(_monotonic() - t0)
                        stream.fail(str(e))
                        return 0
                    if on_connect is not None:
                        on_connect(_monotonic() - t0)
                ex = self._send_on(conn, request, stream)
                if on_sent is not None:
                    on_sent(_monotonic())
            conn = ex.conn
            assert conn is not None
            if exchange_out is not None:
                exchange_out[:] = [ex]
            try:
                await ex.future
            except BaseException:  # cancelled: the response is abandoned, so is the connection
                conn.exchange = None
                conn.close()
                raise
            conn.exchange = None
            stale = (
                conn.reused and not ex.got_bytes and ex.status == 0 and stream.chunks == 0 and stream.error
            )
            if stale and attempt == 0:
                # a keep-alive connection the server had already closed: once more on a fresh one
                stream.error = None
                stream.done = False
                ex = None
                continue
            if ex.keep_alive and ex.body_done and not conn.closed:
                conn.reused = True
                self._idle.append(conn)
            else:
                conn.close()
            return ex.status
        return 0

    @staticmethod
    def abort(exchange: Exchange, reason: str) -> None:
        """End a live exchange now (timeout, cancellation): its connection is closed."""
        if exchange.future.done():
            return
        exchange.keep_alive = False
        exchange.end(reason, _monotonic())
        if exchange.conn is not None:
            exchange.conn.close()

    def close(self) -> None:
        for c in list(self._all):
            c.close()
        self._idle.clear()
        self._all.clear()
