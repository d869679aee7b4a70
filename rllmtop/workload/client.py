"""One streamed OpenAI chat/completions request: HTTP/1.1, SSE, and the reasoning/answer split.

This is the load generator's hot path and the one place SSE is parsed. It is a lean asyncio client: a
``BufferedProtocol`` per keep-alive connection reads into one buffer shared by the pool (no allocation per
read), decodes chunked transfer encoding, reassembles SSE events across reads and parses each with orjson,
all inside the read callback: no coroutine, task or future is touched per chunk. ``bench/bench_client.py``
measures it against aiohttp (the way ``vllm bench serve`` streams) and plain httpx.

Reasoning vs answer: ``delta.reasoning`` (vLLM >= 0.16), ``delta.reasoning_content`` (SGLang, vLLM <= 0.11),
or ``<think>...</think>`` inline in ``content`` when the server runs no reasoning parser (tags may be split
across chunks; a template that injects ``<think>`` into the prompt leaves only the closing tag). Counts: one
token per token-bearing chunk, or ``len(token_ids)`` when the server sends ids, then reconciled with
``usage``: the engine's ``completion_tokens`` is the total, its reasoning count is trusted only when
non-zero (vLLM 0.32 reports 0 when the template opened the think block), and ``tokens_exact`` says whether
the split is known exactly.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from array import array
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import orjson

from rllmtop.errors import UserError

__all__ = [
    "ChatStream",
    "HttpClient",
    "RequestFailed",
    "build_request_body",
    "endpoint_path",
]

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError
_monotonic = time.monotonic

_START, _THINK, _ANSWER = 0, 1, 2
_OPEN, _CLOSE = "<think>", "</think>"


class RequestFailed(Exception):
    """The request ended in an error; ``str()`` is one line for the record."""


def _tag_prefix_len(s: str, tag: str) -> int:
    """Length of the longest suffix of ``s`` that is a proper prefix of ``tag``."""
    for k in range(min(len(tag) - 1, len(s)), 0, -1):
        if s.endswith(tag[:k]):
            return k
    return 0


class ChatStream:
    """Parser and per-request facts of one streamed completion (chat or completions API).

    Feed it the response body (``feed``: raw SSE bytes at monotonic time ``now``) and call ``finish`` at
    the end. Times are ``time.monotonic()`` values. ``on_first_token`` / ``on_first_visible`` are called
    once, from inside ``feed``.
    """

    __slots__ = (
        "_answer_parts",
        "_buf",
        "_carry",
        "_ids_all",
        "_implicit",
        "_implicit_parts",
        "_keep_answer",
        "_last",
        "_mode",
        "_parser_seen",
        "_split",
        "_thinking",
        "answer_tokens",
        "chunks",
        "completion_tokens",
        "done",
        "error",
        "finish_reason",
        "gaps",
        "on_first_token",
        "on_first_visible",
        "prompt_tokens",
        "reasoning_tokens",
        "t_done",
        "t_first_reasoning",
        "t_first_token",
        "t_first_visible",
        "t_last_reasoning",
        "tokens_exact",
        "tokens_per_chunk",
        "usage_reasoning",
    )

    def __init__(self, *, thinking: bool = True, keep_answer: bool = True) -> None:
        self._thinking = thinking
        self._keep_answer = keep_answer
        self._buf = b""
        self._mode = _START
        self._carry = ""
        self._implicit = False  # inline reasoning without an opening tag (template injected <think>)
        self._implicit_parts: list[str] = []
        self._parser_seen = False  # the server sent a reasoning field: content is the answer
        self._answer_parts: list[str] = []
        self._ids_all = True
        self._split = False  # a chunk carried both reasoning and answer (split is a guess)
        self._last = 0.0
        self.on_first_token: Callable[[float], None] | None = None
        self.on_first_visible: Callable[[float], None] | None = None
        self.t_first_token: float | None = None
        self.t_first_reasoning: float | None = None
        self.t_last_reasoning: float | None = None
        self.t_first_visible: float | None = None
        self.t_done: float | None = None
        self.reasoning_tokens = 0
        self.answer_tokens = 0
        self.chunks = 0
        self.gaps = array("I")
        self.tokens_per_chunk: array | None = None
        self.finish_reason: str | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.usage_reasoning: int | None = None
        self.tokens_exact = False
        self.done = False
        self.error: str | None = None

    # ------------------------------------------------------------------------------------------- SSE

    def feed(self, data: bytes, now: float) -> None:
        """Consume response-body bytes; events split across reads are reassembled."""
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        start = 0
        find = buf.find
        while not self.done:
            end = find(b"\n\n", start)
            if end < 0:
                break
            if buf.startswith(b"data: ", start) and find(b"\n", start, end) < 0:
                self._data(buf[start + 6 : end], now)
            else:
                self._event(buf[start:end], now)
            start = end + 2
        self._buf = buf[start:] if start < len(buf) else b""
        if len(self._buf) > 8 << 20:
            self.fail("SSE event larger than 8 MiB (not an event stream?)")

    def _event(self, ev: bytes, now: float) -> None:
        """The general SSE path: several lines, comments, ``event:`` fields, ``data:`` without a space."""
        data: list[bytes] = []
        name = b""
        for line in ev.split(b"\n"):
            if not line or line.startswith(b":"):
                continue
            key, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if key == b"data":
                data.append(value)
            elif key == b"event":
                name = value
        if not data:
            return
        payload = b"\n".join(data)
        if name == b"error":
            self.fail(f"server sent an error event: {payload[:200].decode('utf-8', 'replace')}")
            return
        self._data(payload, now)

    def _data(self, payload: bytes, now: float) -> None:
        if payload == b"[DONE]":
            self.done = True
            self.t_done = now
            return
        try:
            d = _loads(payload)
        except _JSONDecodeError:
            self.fail(
                f"malformed SSE chunk after {self.chunks} chunks: {payload[:80].decode('utf-8', 'replace')!r}"
            )
            return
        if type(d) is not dict:
            self.fail(f"malformed SSE chunk (not an object): {payload[:80].decode('utf-8', 'replace')!r}")
            return
        choices = d.get("choices")
        if choices:
            c = choices[0]
            if type(c) is not dict:
                self.fail("malformed SSE chunk: choices[0] is not an object")
                return
            self._choice(c, c.get("delta"), now)
        usage = d.get("usage")
        if usage:
            self._usage(usage)
        elif not choices:
            err = d.get("error")
            if err is not None:
                self.fail(f"server error mid-stream: {_error_text(d)}")

    def _choice(self, c: dict[str, Any], delta: Any, now: float) -> None:
        if delta is not None:  # chat
            if type(delta) is not dict:
                self.fail("malformed SSE chunk: delta is not an object")
                return
            r = delta.get("reasoning")
            if r is None:
                r = delta.get("reasoning_content")
            content = delta.get("content")
        else:  # completions
            r = None
            content = c.get("text")
        ids = c.get("token_ids")
        if ids:
            n = len(ids)
        else:
            n = 1
            self._ids_all = False
        fr = c.get("finish_reason")
        if fr:
            self.finish_reason = fr
        if r is not None and (r or not content):
            self._parser_seen = True
            if content:  # one chunk straddles </think>
                self._straddle(now, n, content)
            else:
                self._tokens(now, n)
        elif content is not None:
            if not content and ids is None and delta is not None and "role" in delta:
                return  # the opening role chunk carries no token
            if self._parser_seen or self._mode == _ANSWER:
                self._visible(now, n, content)
            else:
                self._inline(now, n, content)
        elif ids:
            if self._mode == _ANSWER:
                self._visible(now, n, "")
            else:
                self._tokens(now, n)

    # -------------------------------------------------------------------------------------- counting

    def _tick(self, now: float, n: int) -> None:
        if self.t_first_token is None:
            self.t_first_token = now
            if self.on_first_token is not None:
                self.on_first_token(now)
        else:
            self.gaps.append(min(int((now - self._last) * 1e6), 0xFFFFFFFF))
        self._last = now
        if n != 1 and self.tokens_per_chunk is None:
            self.tokens_per_chunk = array("H", [1] * self.chunks)
        if self.tokens_per_chunk is not None:
            self.tokens_per_chunk.append(min(n, 0xFFFF))
        self.chunks += 1

    def _tokens(self, now: float, n: int) -> None:
        """One chunk of ``n`` reasoning tokens."""
        self._tick(now, n)
        if self.t_first_reasoning is None:
            self.t_first_reasoning = now
        self.t_last_reasoning = now
        self.reasoning_tokens += n

    def _first_visible(self, now: float) -> None:
        self.t_first_visible = now
        if self.on_first_visible is not None:
            self.on_first_visible(now)

    def _visible(self, now: float, n: int, text: str) -> None:
        """One chunk of ``n`` answer tokens."""
        self._mode = _ANSWER
        self._tick(now, n)
        if self.t_first_visible is None:
            self._first_visible(now)
        self.answer_tokens += n
        if self._keep_answer and text:
            self._answer_parts.append(text)

    def _straddle(self, now: float, n: int, text: str) -> None:
        """One chunk that ends reasoning and starts the answer (the split is a guess: 1 + rest)."""
        n = max(n, 2)
        self._split = True
        self._tick(now, n)
        if self.t_first_reasoning is None:
            self.t_first_reasoning = now
        self.t_last_reasoning = now
        self.reasoning_tokens += 1
        self.answer_tokens += n - 1
        self._mode = _ANSWER
        if self.t_first_visible is None:
            self._first_visible(now)
        if self._keep_answer and text:
            self._answer_parts.append(text)

    def _inline(self, now: float, n: int, text: str) -> None:
        """Content from a server without a reasoning parser: find <think> ... </think> in the text."""
        if self._mode != _START:
            self._think_text(now, n, text)
            return
        s = self._carry + text
        stripped = s.lstrip()
        if stripped.startswith(_OPEN):
            self._mode = _THINK
            self._carry = ""
            self._think_text(now, n, stripped[len(_OPEN) :])
            return
        if not stripped or _OPEN.startswith(stripped):  # whitespace or "<th" so far: undecided
            self._carry = s
            self._tokens(now, n)
            return
        self._carry = ""
        if self._thinking:  # reasoning first, its opening tag was in the prompt: wait for </think>
            self._mode = _THINK
            self._implicit = True
            self._think_text(now, n, s)
        else:
            if self.reasoning_tokens:  # the undecided chunks were answer after all
                self._reclassify()
            self._visible(now, n, s)

    def _think_text(self, now: float, n: int, text: str) -> None:
        s = self._carry + text
        i = s.find(_CLOSE)
        if i < 0:
            self._carry = s[len(s) - _tag_prefix_len(s, _CLOSE) :]
            if self._implicit:
                self._implicit_parts.append(text)
            self._tokens(now, n)
            return
        self._carry = ""
        self._implicit_parts.clear()
        self._implicit = False
        after = s[i + len(_CLOSE) :].lstrip("\n")
        if after.strip():
            self._straddle(now, n, after)
        else:
            self._tokens(now, n)
            self._mode = _ANSWER

    def _reclassify(self, *texts: str) -> None:
        """Everything counted as reasoning so far was answer (there was no think block)."""
        self.answer_tokens += self.reasoning_tokens
        self.reasoning_tokens = 0
        self.t_first_reasoning = None
        self.t_last_reasoning = None
        if self._keep_answer:
            self._answer_parts = [*self._implicit_parts, *texts, *self._answer_parts]
        self._implicit_parts = []
        if self.t_first_visible is None and self.t_first_token is not None:
            self._first_visible(self.t_first_token)

    # ------------------------------------------------------------------------------------------ end

    def _usage(self, usage: Any) -> None:
        if type(usage) is not dict:
            return
        pt = usage.get("prompt_tokens")
        ct = usage.get("completion_tokens")
        if isinstance(pt, int):
            self.prompt_tokens = pt
        if isinstance(ct, int):
            self.completion_tokens = ct
        details = usage.get("completion_tokens_details")
        rt = details.get("reasoning_tokens") if type(details) is dict else None
        if rt is None:
            rt = usage.get("reasoning_tokens")
        if isinstance(rt, int):
            self.usage_reasoning = rt

    def feed_json(self, obj: Any, now: float) -> None:
        """A non-streamed completion (a server that ignored ``stream``)."""
        c = obj.get("choices") if type(obj) is dict else None
        c = c[0] if isinstance(c, list) and c else None
        if type(c) is not dict:
            self.fail("response is neither an event stream nor a completion")
            return
        msg = c.get("message")
        if type(msg) is dict:
            r = msg.get("reasoning") or msg.get("reasoning_content")
            text = msg.get("content") or ""
        else:
            r, text = None, c.get("text") or ""
        self._ids_all = False
        if r:
            self._parser_seen = True
            self._straddle(now, 2, text) if text else self._tokens(now, 1)
        else:
            self._inline(now, 1, str(text))
        self.finish_reason = c.get("finish_reason")
        self._usage(obj.get("usage"))
        self.done = True
        self.t_done = now

    def fail(self, error: str) -> None:
        if self.error is None:
            self.error = error
        self.done = True

    def finish(self, now: float) -> None:
        """Close the books: settle inline reasoning and reconcile counts with usage."""
        if self.t_done is None:
            self.t_done = now
        if self._implicit and self._mode == _THINK and self.finish_reason == "stop":
            self._reclassify()  # a finished answer without a closing tag: it never was reasoning
            self._implicit = False
            self._mode = _ANSWER
        elif self._mode == _START and self.reasoning_tokens and not self._parser_seen:
            self._reclassify(self._carry)  # only whitespace or a partial tag arrived: answer
            self._mode = _ANSWER
        if self.t_first_reasoning is not None and self.t_last_reasoning is None:
            self.t_last_reasoning = self.t_first_reasoning
        seen = self.reasoning_tokens + self.answer_tokens
        exact = self._ids_all and self.chunks > 0 and not self._split
        ct = self.completion_tokens
        ur = self.usage_reasoning
        if ct is not None:
            if ur is not None and 0 < ur <= ct:
                self.reasoning_tokens, self.answer_tokens = ur, ct - ur
                exact = True
            elif seen == ct:
                exact = exact or (not self._split)
            else:
                if seen > 0:
                    r = round(self.reasoning_tokens * ct / seen)
                    if self.reasoning_tokens and r == 0:
                        r = 1 if ct > 0 else 0
                    self.reasoning_tokens, self.answer_tokens = r, ct - r
                else:
                    self.answer_tokens = ct
                exact = False
        self.tokens_exact = exact

    def answer_text(self) -> str:
        return "".join(self._answer_parts)


def _error_text(obj: Any) -> str:
    if type(obj) is dict:
        err = obj.get("error")
        if type(err) is dict:
            msg = err.get("message") or err.get("type") or str(err)
            return str(msg)
        if isinstance(err, str):
            return err
        for k in ("message", "detail"):
            if obj.get(k):
                return str(obj[k])
    return str(obj)[:200]


# =========================================================================================== HTTP/1.1


class _Exchange:
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
                msg = _error_text(_loads(body))
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
        self.exchange: _Exchange | None = None
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
        ex.feed(data, now)

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


def endpoint_path(base_url: str, api: str) -> str:
    """The request path for ``api`` ("chat" | "completions") under ``base_url`` (with or without /v1)."""
    prefix = urlsplit(base_url).path.rstrip("/")
    if not prefix.endswith("/v1"):
        prefix += "/v1"
    return prefix + ("/chat/completions" if api == "chat" else "/completions")


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

    def request_bytes(self, path: str, body: bytes) -> bytes:
        """The whole HTTP request for a POST of ``body`` to ``path``."""
        return b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (
            path.encode(),
            self._head,
            len(body),
            body,
        )

    def _idle_conn(self) -> _Conn | None:
        while self._idle:
            c = self._idle.pop()
            if not c.closed:
                return c
        return None

    def _send_on(self, conn: _Conn, request: bytes, stream: ChatStream) -> _Exchange:
        ex = _Exchange(stream, asyncio.get_running_loop().create_future())
        ex.conn = conn
        conn.exchange = ex
        assert conn.transport is not None
        conn.transport.write(request)
        return ex

    def send_now(self, request: bytes, stream: ChatStream) -> _Exchange | None:
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
        exchange_out: list[_Exchange] | None = None,
        started: _Exchange | None = None,
    ) -> int:
        """Send ``request`` (see :meth:`request_bytes`) and feed the response to ``stream`` until it ends.

        ``started``: an exchange already written by :meth:`send_now`. Returns the HTTP status (0 if none
        was received). Transport errors end up in ``stream.error``; nothing is raised except
        CancelledError. ``exchange_out`` receives the live exchange (so the caller can :meth:`abort` it).
        """
        ex = started
        for attempt in (0, 1):
            if ex is None:
                conn = self._idle_conn()
                if conn is None:
                    try:
                        conn = await self._connect()
                    except RequestFailed as e:
                        stream.fail(str(e))
                        return 0
                ex = self._send_on(conn, request, stream)
                if on_sent is not None and attempt == 0:
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
    def abort(exchange: _Exchange, reason: str) -> None:
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


def build_request_body(
    *,
    api: str,
    model: str,
    prompt: str,
    max_tokens: int,
    temperature: float,
    top_p: float | None = None,
    thinking: bool = True,
    system: str | None = None,
    seed: int | None = None,
    return_token_ids: bool = False,
) -> bytes:
    """The JSON body of one streamed request (usage requested in the final chunk)."""
    body: dict[str, Any] = {"model": model}
    if api == "chat":
        msgs = [{"role": "system", "content": system}] if system else []
        msgs.append({"role": "user", "content": prompt})
        body["messages"] = msgs
    else:
        body["prompt"] = prompt
    body["max_tokens"] = max_tokens
    body["temperature"] = temperature
    if top_p is not None:
        body["top_p"] = top_p
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    if seed is not None:
        body["seed"] = seed
    if api == "chat":
        body["chat_template_kwargs"] = {"enable_thinking": thinking}
    if return_token_ids:
        body["return_token_ids"] = True
    return orjson.dumps(body)
