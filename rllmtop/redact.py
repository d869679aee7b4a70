"""The one secret rule: what counts as a secret, and how it is hidden everywhere rllmtop prints or records.

A *secret name* is a flag, environment variable, header or key whose last part (split on ``-``, ``_``,
``.``) is ``key``, ``apikey``, ``token``, ``secret``, ``password``/``passwd``/``pwd``, ``credential(s)``,
``authorization``, ``cookie`` or ``auth``, or with ``apikey``/``password``/``passwd``/``secret`` anywhere:
``--api-key``, ``--key``, ``HF_TOKEN``, ``--hf-token``, ``--credentials``, ``x-api-key``,
``AWS_SECRET_ACCESS_KEY``. Plurals, longer words and other last parts are not: ``max_tokens``,
``TOKENIZERS_PARALLELISM``, ``--max-num-batched-tokens``, ``return_token_ids``, ``--api-key-file``.

Secret *values* are the value of a secret name (``--api-key X``, ``--api-key=X``, ``HF_TOKEN=X``,
``api_key = "X"``, ``'token': 'X'``, ``Authorization: X``), the credentials after ``Bearer``/``Basic``,
the password of a URL (``http://user:PASSWORD@host``), OpenAI-style ``sk-...`` keys, and any value the
caller names explicitly (the ``--api-key`` in use). Every function here is linear in its input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = [
    "REDACTED",
    "is_secret_name",
    "redact_argv",
    "redact_env",
    "redact_text",
    "redact_url",
    "secret_values",
]

REDACTED = "***"

_PARTS = frozenset(
    {
        "key",
        "apikey",
        "token",
        "secret",
        "password",
        "passwd",
        "pwd",
        "credential",
        "credentials",
        "authorization",
        "auth",
        "cookie",
    }
)
_ANYWHERE = frozenset({"apikey", "password", "passwd", "secret"})
_SPLIT = re.compile(r"[-_.]+")


def is_secret_name(name: str) -> bool:
    """True for a name (flag with or without dashes, env var, key, header) whose value is a secret."""
    name = name.strip().lstrip("-").strip("'\"").lower()
    if not name or len(name) > 200:
        return False
    parts = [p for p in _SPLIT.split(name) if p]
    return bool(parts) and (parts[-1] in _PARTS or any(p in _ANYWHERE for p in parts))


# free-text patterns; every name match starts at a word boundary and uses possessive quantifiers,
# so no input makes them backtrack (the old per-module regexes took 4.5 s on 40 KB of "a-a-a-...")
_AUTH = re.compile(r"(?i)(?<![\w.-])(bearer|basic|token)(\s++)([^\s'\",;]++)")
_HEADER = re.compile(
    r"(?i)(?<![\w-])((?:proxy-)?authorization|x-api-key|api-key|cookie)(\s*+:\s*+)([^\r\n]++)"
)
_FLAG = re.compile(r"(?<![\w.-])(--?[A-Za-z][\w.-]*+)(=|\s++)(?!-)([^\s'\",;]++)")
_KEYVAL = re.compile(
    r"(?<![\w.-])(['\"]?)([A-Za-z_][\w.-]*+)\1(\s*+[:=]\s*+)(?:(['\"])((?:(?!\4)[^\\\n]|\\.)*+)\4|([^\s'\",;]++))"
)
_URL_USER = re.compile(r"(?i)(?<![a-z0-9+.-])([a-z][a-z0-9+.-]*+://)([^/\s@:]*+):([^/\s@]*+)@")
_SCHEME = re.compile(r"(?i)bearer|basic|token")
_DONE_AUTH = re.compile(r"(?i)(bearer|basic|token)\s+\*\*\*\s*$")
_OPENAI_KEY = re.compile(r"\bsk-[A-Za-z0-9_-]{8,}+")


def _sub_flag(m: re.Match[str]) -> str:
    return f"{m.group(1)}{m.group(2)}{REDACTED}" if is_secret_name(m.group(1)) else m.group(0)


def _sub_header(m: re.Match[str]) -> str:
    if _DONE_AUTH.match(m.group(3)):  # "Bearer ***": the scheme stays readable
        return m.group(0)
    return f"{m.group(1)}{m.group(2)}{REDACTED}"


def _sub_keyval(m: re.Match[str]) -> str:
    value = m.group(5 if m.group(4) else 6)
    if not is_secret_name(m.group(2)) or value in ("", REDACTED) or _SCHEME.fullmatch(value):
        return m.group(0)
    q = m.group(4) or ""
    return f"{m.group(1)}{m.group(2)}{m.group(1)}{m.group(3)}{q}{REDACTED}{q}"


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Hide every secret value in free text (log lines, error messages, scenario TOML, repr()s)."""
    if not text:
        return text
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, REDACTED)
    text = _URL_USER.sub(lambda m: f"{m.group(1)}{m.group(2)}:{REDACTED}@", text)
    text = _AUTH.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _HEADER.sub(_sub_header, text)
    text = _FLAG.sub(_sub_flag, text)
    text = _KEYVAL.sub(_sub_keyval, text)
    return _OPENAI_KEY.sub(REDACTED, text)


def redact_url(url: str) -> str:
    """A URL without its credentials (``user:password@``) and with secret-named query parameters hidden."""
    if not url:
        return url
    try:
        p = urlsplit(url)
        _ = p.port  # raises on a malformed port
    except ValueError:
        return redact_text(url)
    netloc = p.netloc.rsplit("@", 1)[-1]  # credentials are never needed to show where a URL points
    query = p.query
    if query:
        query = urlencode([(k, REDACTED if is_secret_name(k) else v) for k, v in parse_qsl(query, True)])
    return urlunsplit((p.scheme, netloc, p.path, query, p.fragment))


def _argv_walk(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    out: list[str] = []
    found: list[str] = []
    hide_next = False
    for a in argv:
        a = str(a)
        if hide_next:
            hide_next = False
            found.append(a)
            out.append(REDACTED)
            continue
        name, eq, value = a.partition("=")
        if eq and is_secret_name(name) and (name.startswith("-") or re.fullmatch(r"[A-Za-z_]\w*", name)):
            found.append(value)
            out.append(f"{name}={REDACTED}")
        elif a.startswith("-") and not eq and is_secret_name(a):
            hide_next = True
            out.append(a)
        else:
            out.append(redact_text(a))
    return out, found


def redact_argv(argv: Sequence[str]) -> tuple[str, ...]:
    """A command line with secret values replaced by ``***``: ``--api-key X``, ``--key=X``,
    ``HF_TOKEN=X``, ``--credentials X``, URL passwords, ``Bearer X``."""
    return tuple(_argv_walk(argv)[0])


def redact_env(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Sorted ``(name, value)`` pairs, the values of secret names replaced by ``***``."""
    return tuple((k, REDACTED if is_secret_name(k) else redact_text(str(env[k]))) for k in sorted(env))


def secret_values(argv: Sequence[str] = (), env: Mapping[str, str] | None = None) -> list[str]:
    """The secret values given in ``argv`` and ``env``, to scrub from whatever the program prints
    (an engine echoing its own command line)."""
    found = _argv_walk(argv)[1]
    for k, v in (env or {}).items():
        if is_secret_name(k) and v:
            found.append(str(v))
    for a in [*map(str, argv), *(str(v) for v in (env or {}).values())]:
        found += [m.group(3) for m in _URL_USER.finditer(a)]
        found += [m.group(3) for m in _AUTH.finditer(a)]
        found += [m.group(0) for m in _OPENAI_KEY.finditer(a)]
    return [s for s in found if s and s != REDACTED]
