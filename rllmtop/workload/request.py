"""What one request is on the wire: the OpenAI JSON body, the endpoint path, rllmtop's own header.

Wire conventions agreed with the simulator (real engines ignore what they do not know): a class's
declared difficulty goes in the header ``x-rllmtop-difficulty: easy|medium|hard|mcq``; ``reasoning_effort``
("low" | "medium" | "high") is a top-level body field (the OpenAI/vLLM name); a reasoning budget is
top-level ``thinking_token_budget`` (vLLM's name) and ``chat_template_kwargs.thinking_budget`` (SGLang's);
``ignore_eos: true`` is top-level (vLLM, the simulator); ``chat_template_kwargs`` is the class's own,
merged over ``enable_thinking``. A later turn of a conversation carries its history as alternating user
and assistant messages, the assistant's being the visible answer only (R1 / Qwen3 chat templates drop the
reasoning of earlier turns, and their documentation asks clients not to send it back).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson

__all__ = [
    "DIFFICULTIES",
    "DIFFICULTY_HEADER",
    "build_request_body",
    "difficulty_header",
    "endpoint_path",
    "template_kwargs",
]

DIFFICULTY_HEADER = "x-rllmtop-difficulty"
DIFFICULTIES = ("easy", "medium", "hard", "mcq")
_HEADER_LINES = {d: f"{DIFFICULTY_HEADER}: {d}\r\n".encode() for d in DIFFICULTIES}


def difficulty_header(tier: str | None) -> bytes:
    """The header line telling the simulator a request's tier (b"" for no tier, or one it does not know)."""
    return _HEADER_LINES.get(tier or "", b"")


def endpoint_path(base_url: str, api: str) -> str:
    """The request path for ``api`` ("chat" | "completions") under ``base_url`` (with or without /v1)."""
    prefix = urlsplit(base_url).path.rstrip("/")
    if not prefix.endswith("/v1"):
        prefix += "/v1"
    return prefix + ("/chat/completions" if api == "chat" else "/completions")


def template_kwargs(
    thinking: bool,
    thinking_budget: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``chat_template_kwargs`` of a chat request: ``enable_thinking`` (and ``thinking_budget``), then the
    class's own keys over them (a class that sets ``enable_thinking`` itself wins)."""
    kw: dict[str, Any] = {"enable_thinking": thinking}
    if thinking_budget is not None:
        kw["thinking_budget"] = thinking_budget
    if extra:
        kw.update(extra)
    return kw


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
    reasoning_effort: str | None = None,
    thinking_budget: int | None = None,
    ignore_eos: bool = False,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    history: Sequence[tuple[str, str]] = (),
) -> bytes:
    """The JSON body of one streamed request (usage requested in the final chunk). ``history``: the
    (user, answer) pairs of the conversation's earlier turns (chat API)."""
    body: dict[str, Any] = {"model": model}
    if api == "chat":
        msgs = [{"role": "system", "content": system}] if system else []
        for user, answer in history:
            msgs.append({"role": "user", "content": user})
            msgs.append({"role": "assistant", "content": answer})
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
    if reasoning_effort is not None:
        body["reasoning_effort"] = reasoning_effort
    if thinking_budget is not None:
        body["thinking_token_budget"] = thinking_budget
    if ignore_eos:
        body["ignore_eos"] = True
    if api == "chat":
        body["chat_template_kwargs"] = template_kwargs(thinking, thinking_budget, chat_template_kwargs)
    if return_token_ids:
        body["return_token_ids"] = True
    return orjson.dumps(body)
