"""The one SSE parser: a streamed OpenAI completion's events, its reasoning/answer split and its counts.

Pure (no I/O, no clock of its own): :class:`ChatStream` is fed response-body bytes with the monotonic time
they were read (``rllmtop.workload.http`` does that from its read callback) and keeps the request's facts.
Events split across reads are reassembled; each ``data:`` payload is parsed with orjson, no coroutine or
allocation beyond the parsed object per chunk.

What a token is. A *token-bearing chunk* carries non-empty text (reasoning or content) or ``token_ids``;
it counts one token, or ``len(token_ids)``. A chunk whose text is empty and that carries no ids (vLLM sends
``{"content": ""}`` for partial UTF-8, ``{"reasoning": ""}`` at ``</think>``) is *silent*: it stamps no
time (neither TTFT nor TTFVT) and counts no token while streaming; at the end, if the engine's usage says
the chunks were short by at least that many tokens, the silent chunks are counted in the phase of the field
that carried them. A *visible* token is non-empty answer text: TTFVT is the first one.

How reasoning is told from the answer, decided per request and recorded as ``reasoning_mode``:

- ``"field"``: the stream showed a reasoning field (``delta.reasoning``, vLLM >= 0.16;
  ``delta.reasoning_content``, SGLang and vLLM <= 0.11). From then on ``content`` is answer, always (a
  literal ``</think>`` in it is answer text).
- ``"inline"``: no reasoning field, ``content`` opened with ``<think>``: the block up to ``</think>`` is
  reasoning (tags may be split across chunks).
- ``"template"``: no reasoning field and no opening tag, but a later ``</think>`` in ``content``: the chat
  template opened the block in the prompt; everything before the closing tag was reasoning.
- ``"none"``: no evidence of reasoning: all content is answer. With thinking on, content without any tag is
  counted as reasoning *tentatively* while it streams (a template-opened block looks like this until its
  ``</think>``) and settled as answer at the end; when the stream was cut (``finish_reason`` not ``stop``)
  that is a guess, said in ``split_note``.

Counts are reconciled with the engine's ``usage`` at the end: ``completion_tokens`` is the total; a
reasoning count it reports is kept as ``usage_reasoning`` and used to split a total the chunks cannot
account for when it fits what was streamed. ``tokens_exact`` is False whenever the split was inferred, the
chunks and the usage disagree, or the engine's reasoning count disagrees with the stream's (vLLM 0.32
reports 0 when the chat template opened the think block); ``split_note`` says which, in words.

Wire values are checked where they enter: a field of the wrong type, a negative or absurd count, a chunk
without ``choices``, a stream without a token: the request fails with an error naming the chunk and field
(``malformed SSE chunk 3: delta.content is a number``); nothing raises.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["ChatStream", "error_text"]

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError

_START, _THINK, _ANSWER = 0, 1, 2
_OPEN, _CLOSE = "<think>", "</think>"
_NOKEY: Any = object()
_MAX_COUNT = 1 << 31  # a token count above this is not a count
_PER_CHUNK = 256  # tokens one chunk may stand for (speculative decoding, batched streaming) at most
_MAX_EVENT = 8 << 20


def _kind(v: object) -> str:
    """What a wrong-typed wire value is, for an error message."""
    if v is None:
        return "null"
    t = type(v)
    if t is bool:
        return "a boolean"
    if t is int or t is float:
        return "a number"
    if t is str:
        return "a string"
    if t is list:
        return "a list"
    if t is dict:
        return "an object"
    return t.__name__


def _count_problem(v: object, limit: int | None = None, limit_name: str = "") -> str | None:
    """Why ``v`` is not a token count (None when it is one)."""
    if type(v) is not int:
        return f"is {_kind(v)}, not a count"
    if v < 0:
        return f"is {v} (negative)"
    if v >= _MAX_COUNT:
        return f"is {v} (absurd)"
    if limit is not None and v > limit:
        return f"is {v}, more than {limit_name}={limit}"
    return None


def _tag_prefix_len(s: str, tag: str) -> int:
    """Length of the longest suffix of ``s`` that is a proper prefix of ``tag``."""
    for k in range(min(len(tag) - 1, len(s)), 0, -1):
        if s.endswith(tag[:k]):
            return k
    return 0


def error_text(obj: Any) -> str:
    """The message of an OpenAI-style error object (or whatever the server sent), one line."""
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


class ChatStream:
    """Parser and per-request facts of one streamed completion (chat or completions API).

    Feed it the response body (``feed``: raw SSE bytes read at monotonic time ``now``) and call ``finish``
    at the end. Times are ``time.monotonic()`` values; ``gaps`` are microseconds x ``gap_scale`` (the
    session clock's speed, so the blob is in session time). ``on_first_token`` / ``on_first_visible`` are
    called once, from inside ``feed`` (or from ``finish``, when the end settles a tentative split).
    ``max_tokens``: the request's limit, a bound for the engine's usage count.
    """

    __slots__ = (
        "_answer_parts",
        "_blank_a",
        "_blank_r",
        "_buf",
        "_carry",
        "_closed",
        "_events",
        "_field",
        "_gap_us",
        "_guess",
        "_ids_all",
        "_implicit",
        "_implicit_parts",
        "_keep_answer",
        "_last",
        "_max_tokens",
        "_mode",
        "_opened",
        "_silent_a",
        "_silent_r",
        "_split",
        "_t_text",
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
        "reasoning_mode",
        "reasoning_tokens",
        "split_note",
        "t_done",
        "t_first_reasoning",
        "t_first_token",
        "t_first_visible",
        "t_last_reasoning",
        "tokens_exact",
        "tokens_per_chunk",
        "usage_reasoning",
    )

    def __init__(
        self,
        *,
        thinking: bool = True,
        keep_answer: bool = True,
        gap_scale: float = 1.0,
        max_tokens: int | None = None,
    ) -> None:
        self._thinking = thinking
        self._keep_answer = keep_answer
        self._gap_us = 1e6 * gap_scale
        self._max_tokens = max_tokens
        self._buf = b""
        self._events = 0  # data events seen (for error messages: "chunk N")
        self._mode = _START
        self._carry = ""
        self._field = False  # the server sent a reasoning field: content is the answer
        self._opened = False  # content opened with <think>
        self._closed = False  # a </think> closed a block the template opened
        self._implicit = False  # content counted as reasoning tentatively (no tag yet)
        self._implicit_parts: list[str] = []
        self._answer_parts: list[str] = []
        self._ids_all = True  # every token-bearing chunk carried token_ids
        self._split = False  # a chunk carried both reasoning and answer (split is a guess)
        self._guess = False  # the end settled a tentative split on a cut stream (a guess)
        self._silent_r = 0  # empty reasoning deltas without ids
        self._silent_a = 0  # empty content deltas without ids
        self._blank_r = 0  # reasoning tokens of deltas with ids but no text (their phase is the field's)
        self._blank_a = 0  # answer tokens of deltas with ids but no text
        self._last = 0.0
        self._t_text: float | None = None  # first content text read while no reasoning field was seen
        self.on_first_token: Callable[[float], None] | None = None
        self.on_first_visible: Callable[[float], None] | None = None
        self.t_first_token: float | None = None
        self.t_first_reasoning: float | None = None
        self.t_last_reasoning: float | None = None
        self.t_first_visible: float | None = None
        self.t_done: float | None = None
        self.reasoning_tokens = 0
        self.answer_tokens = 0
        self.chunks = 0  # token-bearing chunks
        self.gaps = array("I")
        self.tokens_per_chunk: array | None = None
        self.finish_reason: str | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.usage_reasoning: int | None = None
        self.tokens_exact = False
        self.reasoning_mode = ""
        self.split_note = ""
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
        if len(self._buf) > _MAX_EVENT:
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

    def _bad(self, what: str) -> None:
        self.fail(f"malformed SSE chunk {self._events}: {what}")

    def _data(self, payload: bytes, now: float) -> None:
        self._events += 1
        if payload == b"[DONE]":
            self.done = True
            self.t_done = now
            return
        try:
            d = _loads(payload)
        except _JSONDecodeError:
            self._bad(f"not JSON: {payload[:80].decode('utf-8', 'replace')!r}")
            return
        if type(d) is not dict:
            self._bad(f"not an object but {_kind(d)}: {payload[:80].decode('utf-8', 'replace')!r}")
            return
        choices = d.get("choices")
        if choices is not None:
            if type(choices) is not list:
                self._bad(f"choices is {_kind(choices)}")
                return
            if choices:
                c = choices[0]
                if type(c) is not dict:
                    self._bad(f"choices[0] is {_kind(c)}")
                    return
                self._choice(c, now)
                if self.done:
                    return
        usage = d.get("usage")
        if usage is not None:
            self._usage(usage)
        elif choices is None:
            if d.get("error") is not None:
                self.fail(f"server error mid-stream: {error_text(d)}")
            else:
                self._bad("no choices")

    def _choice(self, c: dict[str, Any], now: float) -> None:
        delta = c.get("delta", _NOKEY)
        if delta is _NOKEY:  # completions API
            r = None
            content = c.get("text")
            if content is not None and type(content) is not str:
                self._bad(f"choices[0].text is {_kind(content)}")
                return
        else:
            if type(delta) is not dict:
                self._bad(f"delta is {_kind(delta)}")
                return
            r = delta.get("reasoning")
            if r is None:
                r = delta.get("reasoning_content")
                if r is not None and type(r) is not str:
                    self._bad(f"delta.reasoning_content is {_kind(r)}")
                    return
            elif type(r) is not str:
                self._bad(f"delta.reasoning is {_kind(r)}")
                return
            content = delta.get("content")
            if content is not None and type(content) is not str:
                self._bad(f"delta.content is {_kind(content)}")
                return
        ids = c.get("token_ids")
        if ids is None:
            k = 0
        elif type(ids) is list:
            k = len(ids)
        else:
            self._bad(f"token_ids is {_kind(ids)}")
            return
        fr = c.get("finish_reason")
        if fr is not None:
            if type(fr) is not str:
                self._bad(f"finish_reason is {_kind(fr)}")
                return
            if fr:
                self.finish_reason = fr
        if r is not None:  # a reasoning field: the server runs a reasoning parser
            if not self._field:
                self._field_seen()
            if r:
                if content:  # one chunk straddles </think>
                    self._straddle(now, k, content)
                else:
                    self._reasoning(now, k)
            elif content:
                self._visible(now, k, content)
            elif k:
                self._blank_r += k
                self._reasoning(now, k)
            else:
                self._silent_r += 1
        elif content:
            if self._field or self._mode == _ANSWER:
                self._visible(now, k, content)
            else:
                self._inline(now, k, content)
        elif content is None:
            if k:  # ids without text: tokens of the current phase
                self._current(now, k)
        elif k:  # "" with ids: tokens, not visible text
            if self._field:
                self._answer_ids(now, k)
            else:
                self._current(now, k)
        elif delta is not _NOKEY and "role" in delta:
            return  # the opening role chunk carries no token
        elif self._field or self._mode == _ANSWER:
            self._silent_a += 1
        else:
            self._silent_r += 1  # tentative like the rest of this phase: settled by the end

    # -------------------------------------------------------------------------------------- counting

    def _tick(self, now: float, k: int) -> int:
        """A token-bearing chunk: ``k`` token ids (0: none sent, one token assumed). Returns its tokens."""
        if k:
            n = k
        else:
            n = 1
            self._ids_all = False
        if self.t_first_token is None:
            self.t_first_token = now
            if self.on_first_token is not None:
                self.on_first_token(now)
        else:
            self.gaps.append(min(int((now - self._last) * self._gap_us), 0xFFFFFFFF))
        self._last = now
        if n != 1 and self.tokens_per_chunk is None:
            self.tokens_per_chunk = array("H", [1] * self.chunks)
        if self.tokens_per_chunk is not None:
            self.tokens_per_chunk.append(min(n, 0xFFFF))
        self.chunks += 1
        return n

    def _reasoning(self, now: float, k: int) -> None:
        """One chunk of reasoning tokens."""
        self.reasoning_tokens += self._tick(now, k)
        if self.t_first_reasoning is None:
            self.t_first_reasoning = now
        self.t_last_reasoning = now

    def _answer_ids(self, now: float, k: int) -> None:
        """Answer tokens without visible text (ids on an empty delta)."""
        self._mode = _ANSWER
        self._blank_a += k
        self.answer_tokens += self._tick(now, k)

    def _current(self, now: float, k: int) -> None:
        """Tokens without text: counted in the phase the stream is in."""
        if self._mode == _ANSWER:
            self._answer_ids(now, k)
        else:
            self._blank_r += k
            self._reasoning(now, k)

    def _first_visible(self, now: float) -> None:
        self.t_first_visible = now
        if self.on_first_visible is not None:
            self.on_first_visible(now)

    def _visible(self, now: float, k: int, text: str) -> None:
        """One chunk of answer text."""
        self._mode = _ANSWER
        self.answer_tokens += self._tick(now, k)
        if self.t_first_visible is None:
            self._first_visible(now)
        if self._keep_answer:
            self._answer_parts.append(text)

    def _straddle(self, now: float, k: int, text: str) -> None:
        """One chunk that ends reasoning and starts the answer (the split is a guess: 1 + rest)."""
        n = max(k, 2)
        self._split = True
        self._tick(now, n)
        if not k:
            self._ids_all = False
        if self.t_first_reasoning is None:
            self.t_first_reasoning = now
        self.t_last_reasoning = now
        self.reasoning_tokens += 1
        self.answer_tokens += n - 1
        self._mode = _ANSWER
        if self.t_first_visible is None:
            self._first_visible(now)
        if self._keep_answer:
            self._answer_parts.append(text)

    def _field_seen(self) -> None:
        """The first reasoning field: inline parsing stops; tentative reasoning so far was answer."""
        self._field = True
        if self._implicit or (self._mode == _START and self.reasoning_tokens):
            self._reclassify(self._carry if self._mode == _START else "")
            self._mode = _ANSWER
        self._implicit = False
        self._carry = ""

    def _inline(self, now: float, k: int, text: str) -> None:
        """Content while no reasoning field was seen: find <think> ... </think> in the text."""
        if self._t_text is None:
            self._t_text = now  # where the answer starts if this turns out to be no think block
        if self._mode != _START:
            self._think_text(now, k, text)
            return
        s = self._carry + text
        stripped = s.lstrip()
        if stripped.startswith(_OPEN):
            self._mode = _THINK
            self._opened = True
            self._carry = ""  # undecided whitespace before the tag: counted in the block
            self._think_text(now, k, stripped[len(_OPEN) :])
            return
        if not stripped or _OPEN.startswith(stripped):  # whitespace or "<th" so far: undecided
            self._carry = s
            self._reasoning(now, k)
            return
        self._carry = ""
        if self._thinking:  # maybe reasoning whose opening tag was in the prompt: wait for </think>
            self._mode = _THINK
            self._implicit = True
            self._think_text(now, k, s)
        else:
            if self.reasoning_tokens:  # the undecided chunks were answer after all
                self._reclassify()
            self._visible(now, k, s)

    def _think_text(self, now: float, k: int, text: str) -> None:
        s = self._carry + text
        i = s.find(_CLOSE)
        if i < 0:
            self._carry = s[len(s) - _tag_prefix_len(s, _CLOSE) :]
            if self._implicit and self._keep_answer:
                self._implicit_parts.append(text)
            self._reasoning(now, k)
            return
        self._carry = ""
        if self._implicit:  # the template opened the block: its closing tag is the evidence
            self._closed = True
            self._implicit = False
        self._implicit_parts.clear()
        after = s[i + len(_CLOSE) :].lstrip("\n")
        if after.strip():
            self._straddle(now, k, after)
        else:
            self._reasoning(now, k)
            self._mode = _ANSWER

    def _reclassify(self, *texts: str) -> None:
        """Everything counted as reasoning so far was answer (it was tentative: no tag, no field)."""
        self.answer_tokens += self.reasoning_tokens
        self.reasoning_tokens = 0
        self._silent_a += self._silent_r
        self._silent_r = 0
        self._blank_a += self._blank_r
        self._blank_r = 0
        self.t_first_reasoning = None
        self.t_last_reasoning = None
        if self._keep_answer:
            self._answer_parts = [*self._implicit_parts, *texts, *self._answer_parts]
        self._implicit_parts = []
        self._implicit = False
        if self.t_first_visible is None and self._t_text is not None:
            self._first_visible(self._t_text)

    # ------------------------------------------------------------------------------------------ end

    def _usage(self, usage: Any) -> None:
        if type(usage) is not dict:
            self._bad(f"usage is {_kind(usage)}")
            return
        pt = usage.get("prompt_tokens")
        if pt is not None:
            why = _count_problem(pt)
            if why:
                self._bad(f"usage.prompt_tokens {why}")
                return
            self.prompt_tokens = pt
        ct = usage.get("completion_tokens")
        if ct is not None:
            why = _count_problem(ct)
            # more than asked for *and* far more than the stream could have carried: not a count
            bound = _PER_CHUNK * (self.chunks + self._silent_r + self._silent_a + 1)
            if why is None and self._max_tokens is not None and ct > max(self._max_tokens, bound):
                why = f"is {ct}, more than max_tokens={self._max_tokens} and {_PER_CHUNK} per chunk streamed"
            if why:
                self._bad(f"usage.completion_tokens {why}")
                return
            self.completion_tokens = ct
        details = usage.get("completion_tokens_details")
        rt = None
        where = "usage.completion_tokens_details.reasoning_tokens"
        if details is not None:
            if type(details) is not dict:
                self._bad(f"usage.completion_tokens_details is {_kind(details)}")
                return
            rt = details.get("reasoning_tokens")
        if rt is None:
            rt = usage.get("reasoning_tokens")
            where = "usage.reasoning_tokens"
        if rt is not None:
            why = _count_problem(rt, self.completion_tokens, "completion_tokens")
            if why:
                self._bad(f"{where} {why}")
                return
            self.usage_reasoning = rt

    def feed_json(self, obj: Any, now: float) -> None:
        """A non-streamed completion (a server that ignored ``stream``): one chunk of everything."""
        choices = obj.get("choices") if type(obj) is dict else None
        c = choices[0] if type(choices) is list and choices else None
        if type(c) is not dict:
            self.fail("response is neither an event stream nor a completion")
            return
        self._events += 1
        msg = c.get("message", _NOKEY)
        if msg is not _NOKEY:
            if type(msg) is not dict:
                self.fail(f"malformed completion: choices[0].message is {_kind(msg)}")
                return
            c = {"delta": msg, "finish_reason": c.get("finish_reason"), "token_ids": c.get("token_ids")}
        self._choice(c, now)
        if self.done:
            return
        usage = obj.get("usage")
        if usage is not None:
            self._usage(usage)
        self.done = True
        self.t_done = now

    def fail(self, error: str) -> None:
        if self.error is None:
            self.error = error
        self.done = True

    def finish(self, now: float) -> None:
        """Close the books: settle a tentative split, reconcile counts with usage, say how exact they are."""
        if self.t_done is None:
            self.t_done = now
        if not self._field and (self._implicit or (self._mode == _START and self.reasoning_tokens)):
            # content counted as reasoning with no tag to show for it: it was answer
            self._guess = self._thinking and self.finish_reason != "stop"
            self._reclassify(self._carry if self._mode == _START else "")
            self._mode = _ANSWER
        if self.t_first_reasoning is not None and self.t_last_reasoning is None:
            self.t_last_reasoning = self.t_first_reasoning
        if self.error is None and self.chunks == 0:
            what = "only [DONE]" if self._events == 1 and self.done else f"{self._events} events"
            self.error = f"stream carried no token ({what}; finish_reason {self.finish_reason!r})"
        if self.chunks:
            self.reasoning_mode = (
                "field"
                if self._field
                else "inline"
                if self._opened
                else "template"
                if self._closed
                else "none"
            )
        self._reconcile()

    def _reconcile(self) -> None:
        notes: list[str] = []
        exact = self.chunks > 0
        if self._split:
            exact = False
            notes.append("a chunk carried both reasoning and answer: split as 1 reasoning token + the rest")
        if self._guess:
            exact = False
            notes.append(
                "thinking on, no reasoning field and no <think> or </think> in the content, and the stream "
                "was cut: counted as answer (it was reasoning if the chat template opened a think block)"
            )
        r, a = self.reasoning_tokens, self.answer_tokens
        ct, ur = self.completion_tokens, self.usage_reasoning
        if ct is None:
            if not self._ids_all:
                exact = False
                notes.append("no usage from the engine: one token per chunk assumed")
        else:
            short = ct - r - a
            silent = self._silent_r + self._silent_a
            if (
                ur is not None
                and ur >= r - self._blank_r
                and ct - ur >= a - self._blank_a
                and not (short and self._ids_all)
            ):
                # the engine's split fits what the text showed, and fills what the chunks could not:
                # multi-token chunks, tokens without text (vLLM sends </think> as an empty reasoning
                # delta and does not count it as reasoning)
                r, a = ur, ct - ur
                short = 0
            elif short > 0 and 0 < silent <= short:  # empty deltas were tokens (partial UTF-8, </think>)
                r += self._silent_r
                a += self._silent_a
                short -= silent
            streamed = r
            if short:
                exact = False
                seen = r + a
                notes.append(
                    f"engine's usage completion_tokens={ct} but {seen} tokens streamed in {self.chunks} "
                    "chunks: split scaled to the usage"
                )
                if seen > 0:
                    rr = round(r * ct / seen)
                    if r and rr == 0 and ct > 0:
                        rr = 1
                    r, a = rr, ct - rr
                else:
                    r, a = 0, ct
            if ur is not None and ur != r:
                exact = False
                notes.append(
                    f"engine's usage reasoning_tokens={ur} disagrees with {streamed} reasoning tokens streamed"
                )
        self.reasoning_tokens, self.answer_tokens = r, a
        self.tokens_exact = exact
        self.split_note = "; ".join(notes)

    def answer_text(self) -> str:
        return "".join(self._answer_parts)
