"""The SSE parser's truth rules (issue 10.1) and its defence against wrong-typed wire values (issue 11.3).

Each case is a stream shape seen from a real engine or a broken one, fed to ChatStream with known times.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from rllmtop.workload.sse import ChatStream

from .sse_server import chunk, usage


def feed(*objs: Any, done: bool = True, **kw: Any) -> ChatStream:
    """Each event read at its own time: event i at t = 100 + i (so a stamp names its event)."""
    st = ChatStream(**kw)
    t = 100.0
    for o in objs:
        st.feed(o if isinstance(o, bytes) else b"data: " + orjson.dumps(o) + b"\n\n", t)
        t += 1
    if done:
        st.feed(b"data: [DONE]\n\n", t)
    st.finish(t + 1)
    return st


ROLE = chunk({"role": "assistant", "content": ""})


# ---------------------------------------------------------------------------------- visible = non-empty


def test_empty_content_deltas_stamp_nothing_and_count_when_usage_says_so() -> None:
    """vLLM sends {"content": ""} for partial UTF-8: before this change TTFVT was stamped on it."""
    st = feed(
        ROLE,  # t=100
        chunk({"reasoning": "a"}),  # 101: first token
        chunk({"reasoning": ""}),  # 102: </think>, empty
        chunk({"content": ""}),  # 103: partial UTF-8: not visible
        chunk({"content": "\u00e9t\u00e9"}),  # 104: first visible
        chunk({"content": ""}),  # 105
        chunk({"content": "!"}, "stop"),  # 106
        usage(5, 6),
    )
    assert st.t_first_token == 101 and st.t_first_visible == 104
    assert st.chunks == 3 and len(st.gaps) == 2  # token-bearing chunks only
    # 3 text chunks + 3 silent ones = 6 = usage: counted in the phase of the field that carried them
    assert (st.reasoning_tokens, st.answer_tokens, st.tokens_exact) == (2, 4, True)
    assert st.reasoning_mode == "field" and st.split_note == ""


def test_empty_deltas_with_token_ids_are_tokens_but_not_visible() -> None:
    st = feed(
        ROLE,
        chunk({"content": ""}, token_ids=[7]),  # 101: a token, no text
        chunk({"content": "x"}, token_ids=[8]),  # 102
        chunk({"content": "y"}, "stop", token_ids=[9, 10]),
        usage(5, 4),
        thinking=False,
    )
    assert st.t_first_token == 101 and st.t_first_visible == 102
    assert (st.reasoning_tokens, st.answer_tokens, st.tokens_exact) == (0, 4, True)


def test_empty_deltas_without_usage_count_nothing() -> None:
    st = feed(ROLE, chunk({"reasoning": ""}), chunk({"content": "a"}), chunk({"content": ""}, "stop"))
    assert (st.reasoning_tokens, st.answer_tokens, st.chunks) == (0, 1, 1)
    assert st.t_first_token == st.t_first_visible == 102
    assert not st.tokens_exact and "no usage" in st.split_note


# ------------------------------------------------------------------------------------ reasoning modes


def test_stray_close_tag_in_a_reasoning_field_stream_is_answer() -> None:
    """A literal </think> in delta.content made the answer before it reasoning and TTFVT late."""
    st = feed(
        ROLE,
        chunk({"reasoning": "think"}),  # 101
        chunk({"reasoning": "ing"}),  # 102
        chunk({"content": "The tag "}),  # 103: first visible
        chunk({"content": "</think>"}),  # 104: answer text
        chunk({"content": " closes it."}, "stop"),
        usage(5, 5, 2),
    )
    assert st.t_first_visible == 103 and st.t_first_reasoning == 101 and st.t_last_reasoning == 102
    assert (st.reasoning_tokens, st.answer_tokens, st.tokens_exact) == (2, 3, True)
    assert st.answer_text() == "The tag </think> closes it." and st.reasoning_mode == "field"


def test_content_before_a_reasoning_field_is_answer_unless_a_tag_said_otherwise() -> None:
    """Inline parsing applies only while no reasoning field was seen: content counted tentatively as
    reasoning is settled as answer by the first reasoning field (no tag was evidence of reasoning)."""
    st = feed(
        ROLE,
        chunk({"content": "Answer "}),  # 101: tentative (thinking on, no tag)
        chunk({"reasoning": "late"}),  # 102: the server parses reasoning: 101 was answer
        chunk({"content": "more"}, "stop"),  # 103
        usage(5, 3),
    )
    assert (st.reasoning_tokens, st.answer_tokens, st.tokens_exact) == (1, 2, True)
    assert st.t_first_visible == 101 and st.t_first_reasoning == 102 and st.reasoning_mode == "field"
    assert st.answer_text() == "Answer more"
    # a </think> before the field was evidence: what it closed stays reasoning
    st = feed(
        ROLE,
        chunk({"content": "hm"}),
        chunk({"content": "</think>"}),
        chunk({"reasoning": "late"}),
        chunk({"content": "more"}, "stop"),
        usage(5, 4),
    )
    assert (st.reasoning_tokens, st.answer_tokens) == (3, 1) and st.t_first_visible == 104


def test_content_first_with_thinking_on_cut_by_length_is_answer_flagged() -> None:
    """vLLM 0.32: thinking on, no reasoning field at all, content, finish length, usage reasoning 0.
    Before: every token counted as reasoning, TTFVT missing, tokens_exact True."""
    st = feed(
        ROLE,
        chunk({"content": "It "}),  # 101
        chunk({"content": "is "}),
        chunk({"content": "four"}, "length"),
        usage(5, 3, 0),
        thinking=True,
    )
    assert (st.reasoning_tokens, st.answer_tokens) == (0, 3)
    assert st.t_first_visible == 101 and st.t_first_reasoning is None
    assert st.reasoning_mode == "none" and not st.tokens_exact
    assert "counted as answer" in st.split_note and "chat template" in st.split_note
    assert st.answer_text() == "It is four"


def test_content_first_that_finished_is_answer_exactly() -> None:
    st = feed(ROLE, chunk({"content": "It "}), chunk({"content": "is 4"}, "stop"), usage(5, 2), thinking=True)
    assert (st.reasoning_tokens, st.answer_tokens, st.tokens_exact) == (0, 2, True)
    assert st.t_first_visible == 101 and st.reasoning_mode == "none"


def test_template_opened_block_is_reasoning_up_to_its_close_tag() -> None:
    st = feed(
        ROLE,
        chunk({"content": "Hmm, "}),  # 101
        chunk({"content": "2+2=4."}),  # 102
        chunk({"content": "</think>"}),  # 103
        chunk({"content": "\\boxed{4}"}, "stop"),  # 104
        usage(5, 4),
    )
    assert (st.reasoning_tokens, st.answer_tokens, st.tokens_exact) == (3, 1, True)
    assert st.t_first_token == st.t_first_reasoning == 101 and st.t_first_visible == 104
    assert st.reasoning_mode == "template" and st.answer_text() == "\\boxed{4}"


def test_template_block_with_usage_reasoning_zero_is_flagged_in_words() -> None:
    """vLLM 0.32 reports reasoning_tokens 0 when the chat template opened the think block."""
    st = feed(
        ROLE,
        chunk({"reasoning": "a"}),
        chunk({"reasoning": "b"}),
        chunk({"reasoning": ""}),
        chunk({"content": "c"}, "stop"),
        usage(5, 4, 0),
    )
    assert (st.reasoning_tokens, st.answer_tokens) == (3, 1) and st.usage_reasoning == 0
    assert not st.tokens_exact
    assert st.split_note == "engine's usage reasoning_tokens=0 disagrees with 3 reasoning tokens streamed"


def test_inline_tags_set_inline_mode() -> None:
    st = feed(
        ROLE, chunk({"content": "<think>x"}), chunk({"content": "</think>"}), chunk({"content": "y"}, "stop")
    )
    assert st.reasoning_mode == "inline" and (st.reasoning_tokens, st.answer_tokens) == (2, 1)
    assert st.t_first_visible == 103


def test_engine_split_is_used_when_it_fits_the_stream() -> None:
    """vLLM does not count </think> (sent as an empty reasoning delta) as reasoning; multi-token chunks
    without ids: the engine's count fills what the chunks cannot show."""
    st = feed(
        chunk({"reasoning": "ab"}, token_ids=[1, 2]),
        chunk({"reasoning": ""}, token_ids=[3]),  # </think>: counted by vLLM as not reasoning
        chunk({"content": "c"}, "stop", token_ids=[4]),
        usage(5, 4, 2),
    )
    assert (st.reasoning_tokens, st.answer_tokens, st.tokens_exact) == (2, 2, True)
    # the engine claims more reasoning than the stream could hold: disagreement, stream kept
    st = feed(
        chunk({"reasoning": "ab"}, token_ids=[1, 2]),
        chunk({"content": "c"}, "stop", token_ids=[4]),
        usage(5, 3, 3),
    )
    assert (st.reasoning_tokens, st.answer_tokens, st.tokens_exact) == (2, 1, False)
    assert "reasoning_tokens=3 disagrees with 2" in st.split_note


def test_chunk_counts_short_of_usage_without_a_reasoning_count_are_scaled_and_said() -> None:
    st = feed(chunk({"reasoning": "ab"}), chunk({"content": "cd"}, "stop"), usage(5, 8))
    assert st.reasoning_tokens + st.answer_tokens == 8 and not st.tokens_exact
    assert "completion_tokens=8 but 2 tokens streamed in 2 chunks" in st.split_note


# ------------------------------------------------------------------------------ wrong-typed wire values

BAD: list[tuple[object, str]] = [
    ({"choices": {"0": {"delta": {"content": "x"}}}}, "choices is an object"),
    ({"choices": [3]}, "choices[0] is a number"),
    ({"choices": [{"delta": None}]}, "delta is null"),
    ({"choices": [{"delta": "x"}]}, "delta is a string"),
    ({"choices": [{"delta": {"content": 3}}]}, "delta.content is a number"),
    ({"choices": [{"delta": {"content": ["a"]}}]}, "delta.content is a list"),
    ({"choices": [{"delta": {"reasoning": {"t": 1}}}]}, "delta.reasoning is an object"),
    ({"choices": [{"delta": {"reasoning_content": 1.5}}]}, "delta.reasoning_content is a number"),
    ({"choices": [{"delta": {"content": "x"}, "token_ids": 5}]}, "token_ids is a number"),
    ({"choices": [{"delta": {"content": "x"}, "token_ids": "1,2"}]}, "token_ids is a string"),
    ({"choices": [{"delta": {"content": "x"}, "finish_reason": {"r": 1}}]}, "finish_reason is an object"),
    ({"choices": [{"delta": {"content": "x"}, "finish_reason": ["stop"]}]}, "finish_reason is a list"),
    ({"choices": [{"text": 7}]}, "choices[0].text is a number"),
    ({"id": "x", "object": "chat.completion.chunk"}, "no choices"),
    ({"choices": [], "usage": {"completion_tokens": -100}}, "usage.completion_tokens is -100 (negative)"),
    (
        {"choices": [], "usage": {"completion_tokens": 10**12}},
        "usage.completion_tokens is 1000000000000 (absurd)",
    ),
    (
        {"choices": [], "usage": {"completion_tokens": "9"}},
        "usage.completion_tokens is a string, not a count",
    ),
    (
        {"choices": [], "usage": {"completion_tokens": True}},
        "usage.completion_tokens is a boolean, not a count",
    ),
    ({"choices": [], "usage": {"prompt_tokens": -1}}, "usage.prompt_tokens is -1 (negative)"),
    ({"choices": [], "usage": [1]}, "usage is a list"),
    (
        {
            "choices": [],
            "usage": {"completion_tokens": 3, "completion_tokens_details": {"reasoning_tokens": 5}},
        },
        "usage.completion_tokens_details.reasoning_tokens is 5, more than completion_tokens=3",
    ),
    (
        {"choices": [], "usage": {"completion_tokens_details": 4}},
        "usage.completion_tokens_details is a number",
    ),
]


@pytest.mark.parametrize(("bad", "why"), BAD)
def test_wrong_typed_fields_fail_the_request_naming_the_field(bad: object, why: str) -> None:
    st = feed(ROLE, chunk({"reasoning": "a"}), bad, chunk({"content": "b"}, "stop"), usage(5, 2))
    assert st.error == f"malformed SSE chunk 3: {why}"
    assert st.done and st.answer_tokens == 0  # nothing after the bad chunk was read


def test_usage_over_max_tokens_is_absurd_only_when_the_stream_cannot_hold_it() -> None:
    st = feed(chunk({"content": "a"}, "stop"), usage(5, 100_000), max_tokens=16)
    assert st.error == (
        "malformed SSE chunk 2: usage.completion_tokens is 100000, more than max_tokens=16 and 256 per chunk streamed"
    )
    # a server that ignored max_tokens but streamed what it counts: kept (bench/sse_server.py does that)
    st = feed(*[chunk({"content": "a"}) for _ in range(40)], chunk({}, "stop"), usage(5, 40), max_tokens=16)
    assert st.error is None and st.answer_tokens == 40


@pytest.mark.parametrize(
    ("events", "why"),
    [
        ((), "stream carried no token (only [DONE]; finish_reason None)"),
        ((ROLE, chunk({}, "stop")), "stream carried no token (3 events; finish_reason 'stop')"),
        ((chunk({"content": ""}), usage(5, 0)), "stream carried no token (3 events; finish_reason None)"),
    ],
)
def test_a_stream_without_a_token_is_not_ok(events: tuple[Any, ...], why: str) -> None:
    assert feed(*events).error == why


def test_garbage_never_raises() -> None:
    for raw in (
        b"data: \xff\xfe\n\n",
        b"data: 1e999999\n\n",
        b"data: " + b"[" * 5000 + b"\n\n",
        b"data: null\n\n",
    ):
        st = feed(raw)
        assert st.error is not None and st.error.startswith("malformed SSE chunk 1: "), st.error
