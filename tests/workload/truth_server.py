"""A ground-truth SSE server: it knows when it wrote every chunk, and what every chunk was.

Each request's stream shape is chosen by its ``model`` (one of :data:`MODES`); every chunk is written with
``transport.write`` and stamped with ``time.monotonic()`` right before, so a client's stamps can be compared
to the moment the bytes left (both read the same CLOCK_MONOTONIC). The truth of each request is kept by
its body's ``seed`` (rllmtop sends ``request_seed(seed, rid)``):

- ``t_recv``: the request was read whole (the client's successful write is just before);
- ``t_first_token``: the first chunk with text or token ids (an empty delta is no token's time: the
  client's rule, which the server applies to its own chunks);
- ``t_first_visible``: the first chunk with non-empty answer text;
- ``t_done``: ``data: [DONE]`` was written;
- ``reasoning`` / ``answer``: tokens of each phase (a chunk's phase is the field that carries it; inline,
  the tags belong to the think block).

Run it as its own process (so its timing does not share a GIL or a loop with the client):
``python tests/workload/truth_server.py --port 0 [--gap S] [--cpu N]`` prints ``listening on URL``;
``GET /truths`` returns every truth as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

MODES = (
    "reasoning",  # delta.reasoning (vLLM >= 0.16), empty reasoning delta at </think>, usage with reasoning
    "reasoning_content",  # delta.reasoning_content (SGLang), usage without a reasoning count
    "inline",  # <think>...</think> in content (no reasoning parser)
    "template",  # the chat template opened <think>: content reasoning, </think>, answer
    "content-first",  # thinking on, answer in content only, no field, cut by length, usage reasoning 0
    "stray-close",  # reasoning field, and a literal </think> inside the answer
    "empty-deltas",  # vLLM's partial-UTF-8 empty deltas in both phases (one right before the answer)
    "multi-token",  # chunks of several tokens with token_ids
    "multi-token-noids",  # chunks of several tokens, no ids; the engine's usage gives the split
    "usage-reasoning-0",  # vLLM 0.32 with a template-opened block: usage says reasoning_tokens 0
    "straddle",  # one chunk carries the end of reasoning and the start of the answer
)
EXACT = frozenset(MODES) - {"content-first", "usage-reasoning-0", "straddle"}
"""Modes whose split the client can know exactly; the others must be flagged (tokens_exact False)."""


@dataclass
class Truth:
    mode: str
    t_recv: float
    t_first_token: float | None = None
    t_first_visible: float | None = None
    t_done: float | None = None
    reasoning: int = 0
    answer: int = 0
    writes: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class _Chunk:
    delta: dict[str, Any] | None  # None: the usage chunk
    phase: str = ""  # "r" | "a" | "" (no token)
    tokens: int = 1
    ids: bool = False
    finish: str | None = None


def _plan(mode: str, nr: int, na: int) -> tuple[list[_Chunk], int | None]:
    """The chunks of one response and the usage reasoning count to report (None: none)."""
    R, A = "r", "a"
    out: list[_Chunk] = [_Chunk({"role": "assistant", "content": ""}, "", 0)]
    reason = [f" r{i}" for i in range(nr)]
    answer = [f" a{j}" for j in range(na)]
    ur: int | None = None
    if mode in ("reasoning", "reasoning_content", "usage-reasoning-0", "stray-close"):
        key = "reasoning_content" if mode == "reasoning_content" else "reasoning"
        out += [_Chunk({key: t}, R) for t in reason]
        out.append(_Chunk({key: ""}, R))  # </think>: a token of the think block, no text
        if mode == "stray-close":
            half = na // 2
            answer = [*answer[:half], "</think>", *answer[half:]]
        out += [_Chunk({"content": t}, A) for t in answer]
        if mode == "reasoning":
            ur = nr + 1
        elif mode == "usage-reasoning-0":
            ur = 0
    elif mode == "inline":
        out.append(_Chunk({"content": "<think>"}, R))
        out += [_Chunk({"content": t}, R) for t in reason]
        out.append(_Chunk({"content": "</think>"}, R))
        out += [_Chunk({"content": t}, A) for t in answer]
    elif mode == "template":
        out += [_Chunk({"content": t}, R) for t in reason]
        out.append(_Chunk({"content": "</think>"}, R))
        out += [_Chunk({"content": t}, A) for t in answer]
    elif mode == "content-first":
        out += [_Chunk({"content": t}, A) for t in [*reason, *answer]]
        ur = 0
    elif mode == "empty-deltas":
        out.append(_Chunk({"reasoning": ""}, R))  # a partial UTF-8 token before any text
        for i, t in enumerate(reason):
            out.append(_Chunk({"reasoning": t}, R))
            if i % 4 == 3:
                out.append(_Chunk({"reasoning": ""}, R))
        out.append(_Chunk({"content": ""}, A))  # right before the first visible text
        for j, t in enumerate(answer):
            out.append(_Chunk({"content": t}, A))
            if j % 3 == 1:
                out.append(_Chunk({"content": ""}, A))
    elif mode in ("multi-token", "multi-token-noids"):
        ids = mode == "multi-token"
        out += [_Chunk({"reasoning": t}, R, 3, ids) for t in reason]
        out += [_Chunk({"content": t}, A, 2, ids) for t in answer]
        ur = 3 * nr
    elif mode == "straddle":
        out += [_Chunk({"reasoning": t}, R) for t in reason[:-1]]
        out.append(_Chunk({"reasoning": reason[-1], "content": answer[0]}, "ra", 2))
        out += [_Chunk({"content": t}, A) for t in answer[1:]]
        ur = nr
    else:
        raise ValueError(f"unknown mode {mode!r}")
    last = len(out) - 1
    fin = "length" if mode == "content-first" else "stop"
    out[last] = _Chunk(out[last].delta, out[last].phase, out[last].tokens, out[last].ids, fin)
    return out, ur


def _event(obj: Any) -> bytes:
    data = b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


class TruthServer:
    """See the module doc. ``gap``: seconds between chunks; ``nr``/``na``: reasoning/answer text chunks."""

    def __init__(self, *, gap: float = 0.002, nr: int = 8, na: int = 4, port: int = 0) -> None:
        self.gap = gap
        self.nr = nr
        self.na = na
        self.port = port
        self.url = ""
        self.truths: dict[int, Truth] = {}
        self._stop: asyncio.Event | None = None

    async def serve(self, announce: bool = False) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._conn, "127.0.0.1", self.port)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        if announce:
            print(f"listening on {self.url}", flush=True)
        async with server:
            await self._stop.wait()

    # --------------------------------------------------------------------------------------- serving

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                n = 0
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    if k.strip().lower() == "content-length":
                        n = int(v.strip())
                raw = await reader.readexactly(n) if n else b""
                t_recv = time.monotonic()
                if method == "GET" and path == "/truths":
                    body = json.dumps({str(k): asdict(v) for k, v in self.truths.items()}).encode()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                        % (len(body), body)
                    )
                    await writer.drain()
                    continue
                await self._stream(json.loads(raw), writer, t_recv)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _stream(self, body: dict[str, Any], writer: asyncio.StreamWriter, t_recv: float) -> None:
        mode = str(body.get("model"))
        chunks, ur = _plan(mode, self.nr, self.na)
        truth = Truth(mode, t_recv)
        self.truths[int(body.get("seed", len(self.truths)))] = truth
        tr = writer.transport
        tr.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        mono = time.monotonic
        total = 0
        for i, ch in enumerate(chunks):
            assert ch.delta is not None
            c: dict[str, Any] = {"index": 0, "delta": ch.delta, "finish_reason": ch.finish}
            if ch.ids:
                c["token_ids"] = list(range(total, total + ch.tokens))
            ev = _event({"id": "t", "object": "chat.completion.chunk", "choices": [c]})
            now = mono()  # stamped just before the write: no reader can see the bytes earlier
            tr.write(ev)
            truth.writes.append(now)
            text = any(isinstance(v, str) and v for k, v in ch.delta.items() if k != "role")
            if ch.tokens and (text or ch.ids) and truth.t_first_token is None:
                truth.t_first_token = now
            if ch.delta.get("content") and "a" in ch.phase and truth.t_first_visible is None:
                truth.t_first_visible = now
            if ch.phase == "ra":
                truth.reasoning += 1
                truth.answer += ch.tokens - 1
            elif ch.phase == "r":
                truth.reasoning += ch.tokens
            elif ch.phase == "a":
                truth.answer += ch.tokens
            total += ch.tokens
            if i < len(chunks) - 1:
                await asyncio.sleep(self.gap)
        u: dict[str, Any] = {"prompt_tokens": 7, "completion_tokens": total, "total_tokens": total + 7}
        if ur is not None:
            u["completion_tokens_details"] = {"reasoning_tokens": ur}
        tr.write(_event({"id": "t", "object": "chat.completion.chunk", "choices": [], "usage": u}))
        await asyncio.sleep(self.gap)
        truth.t_done = mono()
        tr.write(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
        await writer.drain()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--gap", type=float, default=0.002)
    ap.add_argument("--nr", type=int, default=8)
    ap.add_argument("--na", type=int, default=4)
    ap.add_argument("--cpu", type=int, default=None)
    args = ap.parse_args(argv)
    if args.cpu is not None:
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setaffinity(0, {args.cpu})
    srv = TruthServer(gap=args.gap, nr=args.nr, na=args.na, port=args.port)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(srv.serve(announce=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
