"""The streaming client: SSE parsing and the reasoning split on captured and synthetic streams, then over
real HTTP on 127.0.0.1 (keep-alive, framing split anywhere, errors, drops, malformed chunks)."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from pathlib import Path

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from rllmtop.events import decode_gaps, encode_gaps
from rllmtop.workload.http import HttpClient
from rllmtop.workload.request import build_request_body, endpoint_path
from rllmtop.workload.sse import ChatStream

from .sse_server import Reply, SseServer, chunk, reasoning_then_answer, usage

FIXTURES = Path(__file__).parent / "fixtures" / "vllm-0.32-cpu"
STREAM = (FIXTURES / "stream.txt").read_bytes()
WITH_CONTENT = (FIXTURES / "stream_with_content.txt").read_bytes()


def run(data: bytes, splits: list[int] | None = None, **kw: bool) -> ChatStream:
    st = ChatStream(**kw)
    t = 100.0
    if splits is None:
        st.feed(data, t)
    else:
        cuts = sorted({s % (len(data) + 1) for s in splits})
        prev = 0
        for c in [*cuts, len(data)]:
            st.feed(data[prev:c], t)
            prev = c
            t += 0.001
    st.finish(t + 1)
    return st


def sse(*objs: object, done: bool = True) -> bytes:
    out = b"".join(b"data: " + orjson.dumps(o) + b"\n\n" for o in objs)
    return out + (b"data: [DONE]\n\n" if done else b"")


# ------------------------------------------------------------------------------------- captured streams


def test_vllm_reasoning_only_stream() -> None:
    st = run(STREAM)
    assert st.error is None and st.done
    assert (st.reasoning_tokens, st.answer_tokens, st.completion_tokens) == (64, 0, 64)
    # 63 reasoning chunks with text + one empty one (a silent token, counted because usage says 64);
    # vLLM's usage says reasoning_tokens 0 (the template opened <think>): the disagreement is said
    assert st.chunks == 63 and st.usage_reasoning == 0 and st.reasoning_mode == "field"
    assert not st.tokens_exact
    assert st.split_note == "engine's usage reasoning_tokens=0 disagrees with 64 reasoning tokens streamed"
    assert st.finish_reason == "length" and st.t_first_visible is None
    assert st.t_first_reasoning == st.t_first_token and st.t_last_reasoning is not None
    assert st.prompt_tokens == 13 and st.answer_text() == ""


def test_vllm_stream_with_content_reconciles_usage() -> None:
    st = run(WITH_CONTENT)
    # 18 reasoning chunks with text, one empty at </think>, 42 content chunks with text and 2 empty ones
    # (partial UTF-8) for 64 tokens: 60 token-bearing chunks; the 3 silent ones are counted in their phase
    # (usage is short of them), one token is unaccounted: the split is scaled, and usage's reasoning 0
    # (template-opened <think>) disagrees with the stream
    assert st.chunks == 60 and st.completion_tokens == 64 and st.usage_reasoning == 0
    assert st.reasoning_tokens + st.answer_tokens == 64
    assert st.reasoning_tokens == 19 and not st.tokens_exact
    assert "disagrees with 19 reasoning tokens streamed" in st.split_note
    assert "completion_tokens=64 but 63 tokens streamed" in st.split_note
    assert st.t_first_visible is not None and st.t_first_token is not None
    assert st.t_first_token <= st.t_first_visible
    assert st.answer_text().startswith("ge")


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 20000), max_size=40))
def test_any_read_split_gives_the_same_result(splits: list[int]) -> None:
    for data in (STREAM, WITH_CONTENT):
        whole, parts = run(data), run(data, splits)
        assert parts.error is None
        assert (parts.reasoning_tokens, parts.answer_tokens, parts.chunks, parts.finish_reason) == (
            whole.reasoning_tokens,
            whole.answer_tokens,
            whole.chunks,
            whole.finish_reason,
        )
        assert parts.answer_text() == whole.answer_text()
        assert len(parts.gaps) == parts.chunks - 1


def test_crlf_comments_and_multiline_events() -> None:
    body = (
        b": keep-alive\r\n\r\n"
        b"data:" + orjson.dumps(chunk({"reasoning_content": "hm"})) + b"\r\n\r\n"
        b"event: message\ndata: " + orjson.dumps(chunk({"content": "4"}, "stop")) + b"\n\n"
        b"data: [DONE]\r\n\r\n"
    )
    st = run(body, [5, 17, 60, 61, 62])
    assert st.error is None and (st.reasoning_tokens, st.answer_tokens) == (1, 1)
    lines = b'data: {"choices": [{"index": 0,\ndata: "delta": {"content": "x"}}]}\n\ndata: [DONE]\n\n'
    assert run(lines, thinking=False).answer_tokens == 1


# ------------------------------------------------------------------------------------- reasoning fields


def test_reasoning_content_and_deprecated_duplicate_are_counted_once() -> None:
    body = sse(
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning": "a", "reasoning_content": "a"}),
        chunk({"reasoning": "b", "reasoning_content": "b", "content": None}),
        chunk({"content": "The answer is \\boxed{3}"}, "stop"),
        usage(5, 3, 2),
    )
    st = run(body)
    assert (st.reasoning_tokens, st.answer_tokens, st.tokens_exact) == (2, 1, True)
    assert st.answer_text() == "The answer is \\boxed{3}"


def test_usage_reasoning_is_trusted_when_nonzero() -> None:
    body = sse(chunk({"reasoning": "ab"}), chunk({"content": "x"}, "stop"), usage(5, 7, 5))
    st = run(body)
    assert (st.reasoning_tokens, st.answer_tokens, st.tokens_exact) == (5, 2, True)


def test_token_ids_give_exact_multi_token_counts() -> None:
    body = sse(
        chunk({"reasoning": "abc"}, token_ids=[1, 2, 3]),
        chunk({"reasoning": ""}, token_ids=[4]),
        chunk({"content": "xy"}, "stop", token_ids=[5, 6]),
        usage(5, 6),
    )
    st = run(body, [40])
    assert (st.reasoning_tokens, st.answer_tokens, st.chunks, st.tokens_exact) == (4, 2, 3, True)
    assert st.tokens_per_chunk is not None and list(st.tokens_per_chunk) == [3, 1, 2]
    gaps, tokens = decode_gaps(encode_gaps(st.gaps, st.tokens_per_chunk))
    assert len(gaps) == 2 and tokens is not None and list(tokens) == [3, 1, 2]


def test_chunk_straddling_the_end_of_reasoning() -> None:
    body = sse(
        chunk({"reasoning": "x"}),
        chunk({"reasoning": "y", "content": "z"}, token_ids=[1, 2, 3]),
        chunk({"content": "w"}, "stop"),
    )
    st = run(body)
    assert (st.reasoning_tokens, st.answer_tokens, st.chunks) == (2, 3, 3)
    assert not st.tokens_exact and st.t_first_visible is not None


def test_completions_api_text() -> None:
    body = sse(
        {"choices": [{"index": 0, "text": "<think>hm</think>"}]},
        {"choices": [{"index": 0, "text": "\\boxed{2}", "finish_reason": "stop"}]},
    )
    st = run(body)
    assert (st.reasoning_tokens, st.answer_tokens) == (1, 1) and st.answer_text() == "\\boxed{2}"


# --------------------------------------------------------------------------------- inline <think> tags


def content_stream(pieces: list[str], finish: str = "stop", completion: int | None = None) -> bytes:
    objs: list[object] = [chunk({"role": "assistant", "content": ""})]
    objs += [chunk({"content": p}, finish if i == len(pieces) - 1 else None) for i, p in enumerate(pieces)]
    if completion is not None:
        objs.append(usage(3, completion))
    return sse(*objs)


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(1, 60), max_size=12), lead=st.sampled_from(["", "\n", "  "]))
def test_inline_think_tags_split_anywhere(cuts: list[int], lead: str) -> None:
    text = lead + "<think>Let me think: 2+2.\nIt is 4.</think>\n\nThe answer is \\boxed{4}."
    bounds = sorted({c % len(text) for c in cuts} | {0, len(text)})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    st = run(content_stream(pieces))
    close = text.index("</think>") + len("</think>")
    # every piece that starts before the end of </think> is reasoning, except one that also carries answer text
    answer_text = st.answer_text()
    assert answer_text.strip() == "The answer is \\boxed{4}."
    assert st.reasoning_tokens >= 1 and st.answer_tokens >= 1
    assert st.reasoning_tokens + st.answer_tokens == len(pieces) + sum(
        1 for a, b in itertools.pairwise(bounds) if a < close < b and text[close:b].strip()
    )
    assert st.t_first_reasoning is not None and st.t_first_visible is not None
    assert st.t_first_reasoning <= st.t_first_visible


def test_implicit_think_block_opened_by_the_template() -> None:
    st = run(content_stream(["Hmm, ", "2+2 is 4.", "</think>", "\n\n\\boxed{4}"]), thinking=True)
    assert (st.reasoning_tokens, st.answer_tokens) == (3, 1)
    assert st.answer_text().strip() == "\\boxed{4}"


def test_no_think_block_after_all_is_answer() -> None:
    st = run(content_stream(["The sum", " is ", "\\boxed{4}"], completion=3), thinking=True)
    assert (st.reasoning_tokens, st.answer_tokens) == (0, 3)
    assert st.t_first_visible == st.t_first_token and st.t_first_reasoning is None
    assert st.answer_text() == "The sum is \\boxed{4}"


def test_cut_while_reasoning_inline_stays_reasoning() -> None:
    st = run(content_stream(["<think>", "long ", "thought"], finish="length"), thinking=True)
    assert (st.reasoning_tokens, st.answer_tokens, st.t_first_visible) == (3, 0, None)


def test_thinking_off_content_is_answer() -> None:
    st = run(content_stream(["\n", "4"]), thinking=False)
    assert (st.reasoning_tokens, st.answer_tokens) == (0, 2) and st.answer_text() == "\n4"


# ---------------------------------------------------------------------------------------------- failures


def test_malformed_chunk_fails_the_request_and_stops() -> None:
    body = (
        sse(chunk({"reasoning": "a"}), done=False)
        + b'data: {"choices": [{"delta": \n\n'
        + sse(chunk({"content": "x"}))
    )
    st = run(body)
    assert st.error is not None and st.error.startswith("malformed SSE chunk 2: not JSON")
    assert st.answer_tokens == 0
    assert "not an object" in (run(b"data: [1, 2]\n\n").error or "")


def test_error_object_mid_stream() -> None:
    body = sse(chunk({"reasoning": "a"}), {"error": {"message": "engine crashed", "code": 500}}, done=False)
    st = run(body)
    assert st.error == "server error mid-stream: engine crashed"
    st = run(b"event: error\ndata: boom\n\n")
    assert st.error is not None and "boom" in st.error


def test_request_body() -> None:
    body = json.loads(
        build_request_body(
            api="chat",
            model="m",
            prompt="q",
            max_tokens=9,
            temperature=0.6,
            thinking=False,
            system="s",
            seed=7,
            return_token_ids=True,
        )
    )
    assert body["messages"] == [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    assert body["stream"] and body["stream_options"] == {"include_usage": True}
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert (body["seed"], body["max_tokens"], body["return_token_ids"]) == (7, 9, True)
    comp = json.loads(
        build_request_body(api="completions", model="m", prompt="q", max_tokens=9, temperature=0)
    )
    assert comp["prompt"] == "q" and "messages" not in comp and "chat_template_kwargs" not in comp
    assert "seed" not in comp and "top_p" not in comp
    assert endpoint_path("http://h:1", "chat") == "/v1/chat/completions"
    assert endpoint_path("http://h:1/proxy/v1/", "completions") == "/proxy/v1/completions"


# ===================================================================================== over real HTTP


async def post(client: HttpClient, **kw: bool) -> tuple[int, ChatStream]:
    st = ChatStream(**kw)
    body = build_request_body(api="chat", model="m", prompt="p", max_tokens=10, temperature=0)
    status = await client.post_stream(client.request_bytes("/v1/chat/completions", body), st)
    st.finish(asyncio.get_running_loop().time())
    return status, st


async def test_keep_alive_reuse_and_auth_header() -> None:
    async def h(body: dict, reply: Reply) -> None:
        await reasoning_then_answer(reply, 3, ["\\boxed{1}"])

    async with SseServer(h) as srv:
        client = HttpClient(srv.url, "sk-test-123")
        for _ in range(5):
            status, st = await post(client)
            assert status == 200 and st.error is None
            assert (st.reasoning_tokens, st.answer_tokens, st.tokens_exact) == (4, 1, True)
        assert srv.connections == 1 and client.connections_opened == 1
        seen = srv.seen[0]
        assert seen.headers["authorization"] == "Bearer sk-test-123"
        assert b"sk-test-123" not in seen.raw
        assert seen.path == "/v1/chat/completions" and seen.headers["accept"] == "text/event-stream"
        client.close()


async def test_framing_split_byte_by_byte() -> None:
    async def h(body: dict, reply: Reply) -> None:
        events = sse(chunk({"reasoning": "a"}), chunk({"content": "b"}, "stop"), usage(1, 2, 1))
        wire = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        for piece in (events[:30], events[30:]):
            wire += b"%x;ext=1\r\n%s\r\n" % (len(piece), piece)
        wire += b"0\r\nx-trailer: 1\r\n\r\n"
        for i in range(len(wire)):
            await reply.wire(wire[i : i + 1])

    async with SseServer(h) as srv:
        client = HttpClient(srv.url)
        for _ in range(2):
            status, st = await post(client)
            assert (status, st.error, st.reasoning_tokens, st.answer_tokens) == (200, None, 1, 1)
        assert srv.connections == 1
        client.close()


async def test_content_length_and_close_delimited_bodies() -> None:
    body = sse(chunk({"content": "4"}, "stop"))

    async def h(req: dict, reply: Reply) -> None:
        if req["max_tokens"] == 10 and len(srv.seen) == 1:
            await reply.start(length=len(body))
            await reply.raw(body)
        else:
            await reply.wire(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n" + body)
            reply.drop()

    async with SseServer(h) as srv:
        client = HttpClient(srv.url)
        for _ in range(2):
            status, st = await post(client)
            assert (status, st.error, st.answer_tokens) == (200, None, 1)
        client.close()


async def test_http_errors_with_openai_bodies() -> None:
    async def h(body: dict, reply: Reply) -> None:
        n = len(srv.seen)
        if n == 1:
            await reply.json(500, {"error": {"message": "Internal  server\nerror", "type": "InternalError"}})
        elif n == 2:
            await reply.json(429, {"object": "error", "message": "Too many requests", "code": 429})
        elif n == 3:
            await reply.start(404, "text/plain", length=9)
            await reply.raw(b"not found")
        else:
            await reasoning_then_answer(reply, 1, ["ok"])

    async with SseServer(h) as srv:
        client = HttpClient(srv.url)
        status, st = await post(client)
        assert status == 500 and st.error == "HTTP 500: Internal server error"
        status, st = await post(client)
        assert status == 429 and st.error == "HTTP 429: Too many requests"
        status, st = await post(client)
        assert status == 404 and st.error == "HTTP 404: not found"
        status, st = await post(client)
        assert status == 200 and st.error is None
        assert srv.connections == 1  # error responses with a complete body keep the connection
        client.close()


async def test_drop_mid_stream_and_malformed_chunk() -> None:
    async def h(body: dict, reply: Reply) -> None:
        n = len(srv.seen)
        await reply.start()
        await reply.event(chunk({"reasoning": "a"}))
        await reply.event(chunk({"reasoning": "b"}))
        if n == 1:
            reply.drop()
            return
        if n == 2:
            await reply.raw(b"data: {not json}\n\n")
            return  # the server keeps the connection open; the client must stop reading it
        await reply.event(chunk({"content": "c"}, "stop"))
        await reply.raw(b"data: [DONE]\n\n")
        await reply.end()

    async with SseServer(h) as srv:
        client = HttpClient(srv.url)
        status, st = await post(client)
        assert status == 200 and st.error is not None
        assert "mid-stream after 2 chunks" in st.error and st.reasoning_tokens == 2
        status, st = await post(client)
        assert st.error is not None and st.error == "malformed SSE chunk 3: not JSON: '{not json}'"
        status, st = await post(client)
        assert st.error is None and st.answer_tokens == 1
        assert srv.connections == 3  # neither failed connection was reused
        client.close()


async def test_stale_keep_alive_connection_is_retried_once() -> None:
    async def h(body: dict, reply: Reply) -> None:
        if len(srv.seen) == 2:
            reply.drop()  # the server closes a kept-alive connection without answering
            return
        await reasoning_then_answer(reply, 1, ["x"])

    async with SseServer(h) as srv:
        client = HttpClient(srv.url)
        status, st = await post(client)
        assert st.error is None
        status, st = await post(client)
        assert status == 200 and st.error is None and st.answer_tokens == 1
        assert len(srv.seen) == 3 and [s.conn_id for s in srv.seen] == [1, 1, 2]
        client.close()


async def test_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = HttpClient(f"http://127.0.0.1:{port}")
    status, st = await post(client)
    assert (
        status == 0
        and st.error is not None
        and st.error.startswith(f"cannot connect to http://127.0.0.1:{port}")
    )


async def test_non_streamed_json_completion() -> None:
    async def h(body: dict, reply: Reply) -> None:
        await reply.json(
            200,
            {
                "choices": [
                    {"message": {"reasoning_content": "hm", "content": "\\boxed{4}"}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 9},
            },
        )

    async with SseServer(h) as srv:
        client = HttpClient(srv.url)
        status, st = await post(client)
        assert status == 200 and st.error is None
        assert st.reasoning_tokens + st.answer_tokens == 9 and st.answer_text() == "\\boxed{4}"
        client.close()


async def test_abort_closes_a_stalled_stream() -> None:
    gate = asyncio.Event()

    async def h(body: dict, reply: Reply) -> None:
        await reply.start()
        await reply.event(chunk({"reasoning": "a"}))
        await gate.wait()

    async with SseServer(h) as srv:
        client = HttpClient(srv.url)
        st = ChatStream()
        holder: list = []
        body = build_request_body(api="chat", model="m", prompt="p", max_tokens=10, temperature=0)
        first = asyncio.Event()
        st.on_first_token = lambda t: first.set()
        task = asyncio.create_task(
            client.post_stream(client.request_bytes("/v1/chat/completions", body), st, exchange_out=holder)
        )
        await asyncio.wait_for(first.wait(), 10)
        HttpClient.abort(holder[0], "timed out after 1 s")
        assert await task == 200
        assert st.error == "timed out after 1 s" and st.reasoning_tokens == 1
        gate.set()
        client.close()


async def test_due_sends_run_from_the_read_path() -> None:
    """The runner's pacer is also driven from reads, so a storm of reads cannot delay a due send."""
    async with SseServer(_answer_one) as srv:
        client = HttpClient(srv.url)
        calls: list[float] = []

        def due() -> None:
            calls.append(client.due_at)
            client.due_at = float("inf")

        client.on_due = due
        client.due_at = 0.0  # already due
        status, _ = await post(client)
        assert status == 200 and calls == [0.0]
        # a warm connection takes a request synchronously
        req = client.request_bytes("/v1/chat/completions", b"{}")
        st2 = ChatStream()
        ex = client.send_now(req, st2)
        assert ex is not None and srv.connections == 1
        assert await client.post_stream(req, st2, started=ex) == 200 and st2.error is None
        client.close()


async def _answer_one(body: dict, reply: Reply) -> None:
    await reasoning_then_answer(reply, 1, ["x"])
