"""Arrival traces: send times, and per-request input/output lengths from the common public formats.

The user's own files (nothing is downloaded). ``arrival.trace_format`` fixes the columns:

- ``timestamps``: CSV with a header row (column ``trace_column``, seconds) or JSON lines (objects with that
  key, or bare numbers), by the file's extension. Times only.
- ``burstgpt``: CSV; ``Timestamp`` (seconds) -> time, ``Request tokens`` -> input length, ``Response
  tokens`` -> output length.
- ``mooncake``: JSON lines; ``timestamp`` (milliseconds) -> time, ``input_length``, ``output_length``,
  ``hash_ids`` (optional).
- ``azure``: CSV (Azure LLM inference traces); ``TIMESTAMP`` (date and time, e.g. ``2023-11-16
  18:15:46.6805900``, an optional ``Z`` / ``+HH:MM`` offset) -> time, ``ContextTokens`` -> input length,
  ``GeneratedTokens`` -> output length.

Mooncake rows may carry ``hash_ids``: the hashes of the prompt's 512-token blocks, equal where requests share
a prefix (``rllmtop.workload.synth`` turns them into shared text). Other columns (BurstGPT's ``Model``,
``Total tokens``, ``Log Type``) are ignored. Rows are sorted by time (stably) and the first is t = 0. A row
whose output length is 0 is left out and counted (BurstGPT marks failed requests so; no engine can be asked
for 0 tokens). Values are checked as they are read: one UserError names the file, the line, the column and
the value.

The trace is read once per file version (cached by path, size and modification time) and held as arrays:
about 24 bytes a request, plus 8 per hash id.
"""

from __future__ import annotations

import csv
import datetime
import functools
import io
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from rllmtop.errors import UserError
from rllmtop.scenario import MAX_REQUESTS, MAX_RUN_SECONDS, ArrivalSpec

__all__ = ["COLUMNS", "Trace", "check_bounds", "load_trace", "read_trace", "trace_times"]

COLUMNS: dict[str, tuple[str, str | None, str | None]] = {
    "burstgpt": ("Timestamp", "Request tokens", "Response tokens"),
    "mooncake": ("timestamp", "input_length", "output_length"),
    "azure": ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
}
"""(time, input length, output length) column of each format with lengths."""

_MAX_LENGTH = 10_000_000  # tokens in one request's input or output (MAX_TOKENS)
_HINTS = {
    "timestamps": "every row needs a number of seconds in that column",
    "burstgpt": "BurstGPT rows: Timestamp (seconds), Request tokens and Response tokens (integers >= 0)",
    "mooncake": "Mooncake lines: {timestamp (ms), input_length, output_length, hash_ids: [integers]}",
    "azure": "Azure rows: TIMESTAMP (YYYY-MM-DD HH:MM:SS.fffffff), ContextTokens, GeneratedTokens",
}
_DATETIME = re.compile(
    r"\s*(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?\s*(Z|[+-]\d{2}:?\d{2})?\s*"
)


@dataclass(frozen=True, eq=False)
class Trace:
    """One trace file's requests, sorted by time. Arrays are read-only."""

    path: str
    format: str
    times: np.ndarray  # float64 seconds from the first request, ascending (before time/rate scaling)
    input_tokens: np.ndarray | None = None  # int64 per request (formats with lengths)
    output_tokens: np.ndarray | None = None
    hash_offsets: np.ndarray | None = None  # int64, len + 1: request i's hash ids are flat[off[i]:off[i+1]]
    hash_flat: np.ndarray | None = None
    skipped: int = 0  # rows left out: output length 0

    def __len__(self) -> int:
        return int(self.times.size)

    @property
    def has_lengths(self) -> bool:
        return self.input_tokens is not None

    def hash_ids(self, i: int) -> np.ndarray:
        """Request ``i``'s block hashes (empty when the trace has none)."""
        if self.hash_offsets is None or self.hash_flat is None:
            return _EMPTY
        return self.hash_flat[self.hash_offsets[i] : self.hash_offsets[i + 1]]

    def describe(self, k: int | None = None) -> str:
        """One line about the first ``k`` requests (all by default), for the run's log."""
        k = len(self) if k is None else min(k, len(self))
        name = Path(self.path).name
        out = (
            f"trace {name} ({self.format}): {k} requests over {float(self.times[k - 1]) if k else 0.0:.1f} s"
        )
        if self.input_tokens is not None and self.output_tokens is not None and k:
            i, o = self.input_tokens[:k], self.output_tokens[:k]
            out += (
                f", input {int(i.min())}-{int(i.max())} tokens (median {int(np.median(i))}), "
                f"output {int(o.min())}-{int(o.max())} (median {int(np.median(o))})"
            )
        if self.hash_offsets is not None and self.hash_flat is not None and k:
            n_blocks = int(self.hash_offsets[k])
            distinct = int(np.unique(self.hash_flat[:n_blocks]).size) if n_blocks else 0
            out += f", {n_blocks} prompt blocks of which {distinct} distinct"
        if self.skipped:
            out += f"; {self.skipped} row(s) with output length 0 left out"
        return out


_EMPTY = np.empty(0, dtype=np.int64)
_EMPTY.flags.writeable = False


# ------------------------------------------------------------------------------------------ reading


def read_trace(path: str | Path, fmt: str = "timestamps", column: str = "timestamp") -> Trace:
    """The trace at ``path`` in format ``fmt`` (see the module doc); read once per file version."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise UserError(
            f"cannot read arrival trace {p}: {e.strerror or e}", "check arrival.trace_file"
        ) from e
    if fmt not in ("timestamps", *COLUMNS):
        raise ValueError(f"unknown trace format {fmt!r}")
    return _read_cached(str(p), fmt, column, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_cached(path: str, fmt: str, column: str, size: int, mtime_ns: int) -> Trace:
    return _Reader(Path(path), fmt, column).read()


def load_trace(path: str | Path, column: str = "timestamp") -> np.ndarray:
    """Timestamps from a CSV (header row) or JSONL file, sorted and shifted to start at 0 (seconds).

    BurstGPT's CSV uses ``column = "Timestamp"``. A JSONL line may also be a bare number."""
    return read_trace(path, "timestamps", column).times


def trace_times(spec: ArrivalSpec) -> np.ndarray:
    """The send times of ``spec``'s trace: its timestamps x ``time_scale`` / ``rate_scale``."""
    if spec.trace_file is None:
        raise UserError("arrival.process = 'trace' needs arrival.trace_file", "set trace_file = 'times.csv'")
    t = read_trace(spec.trace_file, spec.trace_format, spec.trace_column).times
    factor = spec.time_scale / spec.rate_scale
    return t * factor if factor != 1.0 else t


def check_bounds(spec: ArrivalSpec, k: int, span: float, turns: int = 1) -> None:
    """The part of a trace a run replays (``k`` requests over ``span`` seconds, scaled and cut, each of up
    to ``turns`` turns) within the run limits, or a UserError."""
    name = Path(spec.trace_file or "").name
    if k * turns > MAX_REQUESTS:
        per = f" x up to {turns} turns = {k * turns:,}" if turns > 1 else ""
        raise UserError(
            f"arrival trace {name} plans {k:,} requests{per}: allowed at most {MAX_REQUESTS:,} in one run "
            "(MAX_REQUESTS)",
            "set load.num_prompts or load.duration to replay part of it",
        )
    if span > MAX_RUN_SECONDS:
        scale = spec.time_scale / spec.rate_scale
        how = f" (after time_scale / rate_scale = {scale:g})" if scale != 1.0 else ""
        raise UserError(
            f"arrival trace {name} spans {span:,.0f} s{how}: allowed at most {MAX_RUN_SECONDS:,.0f} s of "
            "sending (MAX_RUN_SECONDS, 7 days)",
            "set load.duration or load.num_prompts to replay part of it, or raise arrival.rate_scale",
        )


class _Reader:
    """Reads one file into growing typed arrays (no Python object per row kept)."""

    def __init__(self, path: Path, fmt: str, column: str) -> None:
        self.path = path
        self.fmt = fmt
        self.column = column
        self.times = np.empty(0)
        self.where = ""

    def fail(self, what: str) -> UserError:
        at = f", {self.where}" if self.where else ""
        return UserError(f"arrival trace {self.path}{at}: {what}", _HINTS[self.fmt])

    def read(self) -> Trace:
        fmt = self.fmt
        try:
            f = self.path.open("rb")
        except OSError as e:
            raise UserError(
                f"cannot read arrival trace {self.path}: {e.strerror or e}", "check arrival.trace_file"
            ) from e
        t: list[float] = []
        ins: list[int] = []
        outs: list[int] = []
        offsets: list[int] = [0]
        flat: list[int] = []
        skipped = 0
        with f:
            if fmt == "mooncake" or (fmt == "timestamps" and self._jsonl()):
                rows: Iterator[Any] = self._json_rows(f)
            else:
                rows = self._csv_rows(f)
            for row in rows:
                if fmt == "timestamps":
                    t.append(self._time(row))
                    continue
                out = self._count(row, 2)
                if out == 0:
                    skipped += 1
                    continue
                t.append(self._time(row))
                ins.append(self._count(row, 1))
                outs.append(out)
                if fmt == "mooncake":
                    flat.extend(self._hashes(row))
                    offsets.append(len(flat))
        self.where = ""
        times = np.asarray(t, dtype=float)
        if times.size == 0:
            more = f" ({skipped} with output length 0 left out)" if skipped else ""
            what = "timestamps" if fmt == "timestamps" else "requests"
            raise UserError(
                f"arrival trace {self.path} has no {what}{more}", "add rows, or pick another file"
            )
        if not np.all(np.isfinite(times)):
            raise self.fail("has a non-finite timestamp")
        order = None
        if times.size > 1 and np.any(np.diff(times) < 0):
            order = np.argsort(times, kind="stable")
            times = times[order]
        times = times - times[0]
        tr: dict[str, Any] = {}
        if fmt != "timestamps":
            i_arr, o_arr = np.asarray(ins, dtype=np.int64), np.asarray(outs, dtype=np.int64)
            if order is not None:
                i_arr, o_arr = i_arr[order], o_arr[order]
            tr["input_tokens"], tr["output_tokens"] = i_arr, o_arr
            if fmt == "mooncake" and flat:
                off = np.asarray(offsets, dtype=np.int64)
                fl = np.asarray(flat, dtype=np.int64)
                if order is not None:
                    lens = np.diff(off)[order]
                    fl = np.concatenate([fl[off[j] : off[j + 1]] for j in order.tolist()])
                    off = np.concatenate(([0], np.cumsum(lens)))
                tr["hash_offsets"], tr["hash_flat"] = off, fl
        for a in (times, *tr.values()):
            a.flags.writeable = False
        return Trace(str(self.path), fmt, times, skipped=skipped, **tr)

    def _jsonl(self) -> bool:
        return self.path.suffix.lower() in (".jsonl", ".ndjson", ".json")

    def _json_rows(self, f: io.BufferedReader) -> Iterator[Any]:
        for lineno, line in enumerate(f, 1):
            self.where = f"line {lineno}"
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise self.fail(f"not JSON ({e})") from e
            if self.fmt == "mooncake" and type(obj) is not dict:
                raise self.fail("not a JSON object")
            yield obj

    def _csv_rows(self, f: io.BufferedReader) -> Iterator[Any]:
        text = io.TextIOWrapper(f, encoding="utf-8-sig", newline="")
        reader = csv.reader(text)
        try:
            header = next(reader, None)
        except (csv.Error, UnicodeDecodeError) as e:
            raise self.fail(f"not a CSV file ({e})") from e
        need = (self.column,) if self.fmt == "timestamps" else tuple(c for c in COLUMNS[self.fmt] if c)
        names = [h.strip() for h in header or []]
        missing = [c for c in need if c not in names]
        if missing:
            have = ", ".join(names) or "(no header row)"
            fix = (
                "set arrival.trace_column to the timestamp column"
                if self.fmt == "timestamps"
                else f"a {self.fmt} CSV has the columns {', '.join(need)}; check arrival.trace_format"
            )
            raise UserError(
                f"arrival trace {self.path} has no column {missing[0]!r} (columns: {have[:300]})", fix
            )
        idx = [names.index(c) for c in need]
        width = max(idx) + 1
        try:
            for row in reader:
                self.where = f"line {reader.line_num}"
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) < width:
                    raise self.fail(f"has {len(row)} fields, the header {len(names)}")
                yield [row[i] for i in idx]
        except (csv.Error, UnicodeDecodeError) as e:
            raise self.fail(f"not readable as CSV ({e})") from e

    def _field(self, row: Any, k: int) -> Any:
        """Column ``k`` (0 time, 1 input, 2 output) of a row (a list of strings, or a JSON value)."""
        if type(row) is list:
            return row[k]
        if self.fmt == "timestamps":
            if isinstance(row, int | float) and not isinstance(row, bool):
                return row
            if type(row) is not dict:
                raise self.fail(f"neither a number nor an object with {self.column!r}")
            name = self.column
        else:
            name = COLUMNS[self.fmt][k] or ""
        if name not in row:
            raise self.fail(f"no {name!r}")
        return row[name]

    def _time(self, row: Any) -> float:
        v = self._field(row, 0)
        name = self.column if self.fmt == "timestamps" else COLUMNS[self.fmt][0]
        if self.fmt == "azure":
            return self._datetime(v, name)
        if isinstance(v, str):
            try:
                x = float(v)
            except ValueError:
                raise self.fail(f"{name} is {v[:40]!r}, not a number of seconds") from None
        elif isinstance(v, int | float) and not isinstance(v, bool):
            x = float(v)
        else:
            raise self.fail(f"{name} is {_kind(v)}, not a number")
        if not math.isfinite(x):
            raise self.fail(f"{name} is {x}, not a finite number")
        return x / 1000.0 if self.fmt == "mooncake" else x

    def _datetime(self, v: Any, name: str) -> float:
        if not isinstance(v, str):
            raise self.fail(f"{name} is {_kind(v)}, not a date and time")
        m = _DATETIME.fullmatch(v)
        if m is None:
            raise self.fail(f"{name} is {v[:40]!r}, not a date and time (YYYY-MM-DD HH:MM:SS.fff)")
        y, mo, d, h, mi, s, frac, tz = m.groups()
        try:
            day = datetime.date(int(y), int(mo), int(d)).toordinal()
        except ValueError:
            raise self.fail(f"{name} is {v[:40]!r}: no such date") from None
        if int(h) > 23 or int(mi) > 59 or int(s) > 60:
            raise self.fail(f"{name} is {v[:40]!r}: no such time")
        x = (day - 738_000) * 86400.0 + int(h) * 3600 + int(mi) * 60 + int(s)
        if frac:
            x += int(frac[:9]) / 10 ** len(frac[:9])
        if tz and tz != "Z":
            sign = -1 if tz[0] == "-" else 1
            digits = tz[1:].replace(":", "")
            x -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
        return x

    def _count(self, row: Any, k: int) -> int:
        v = self._field(row, k)
        name = COLUMNS[self.fmt][k]
        if isinstance(v, str):
            s = v.strip()
            try:
                x = int(s)
            except ValueError:
                try:
                    f = float(s)
                except ValueError:
                    raise self.fail(f"{name} is {v[:40]!r}, not a token count") from None
                if not (math.isfinite(f) and f.is_integer()):
                    raise self.fail(f"{name} is {v[:40]!r}, not a whole number of tokens") from None
                x = int(f)
        elif type(v) is int:
            x = v
        elif type(v) is float and math.isfinite(v) and v.is_integer():
            x = int(v)
        else:
            raise self.fail(f"{name} is {_kind(v)}, not a token count")
        if x < 0:
            raise self.fail(f"{name} is {x}, a negative token count")
        if x > _MAX_LENGTH:
            raise self.fail(f"{name} is {x:,} tokens, more than {_MAX_LENGTH:,} (MAX_TOKENS)")
        return x

    def _hashes(self, row: dict[str, Any]) -> list[int]:
        h = row.get("hash_ids")
        if h is None:
            return []
        if type(h) is not list:
            raise self.fail(f"hash_ids is {_kind(h)}, not a list of integers")
        for x in h:
            if type(x) is not int or not -(2**63) <= x < 2**63:
                raise self.fail(
                    f"hash_ids holds {_kind(x) if type(x) is not int else x}, not a 64-bit integer"
                )
        return h


def _kind(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return repr(v[:40])
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__
