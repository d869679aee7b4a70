"""Encodings shared by the writer and the reader: labels, bucket counts, bounds, and row checksums.

A row's checksum is ``zlib.crc32`` of ``marshal.dumps(row, 2)`` of the row's stored values as a tuple
(then of its blobs). Marshal format 2 is canonical for exactly the types the writer binds (int, float,
str, bytes, None): no back-references, no interning flags, floats as their 8 bytes. SQLite gives back the
same values, so the reader recomputes the same checksum from what it reads. The encoding is part of the
file format: changing it is a schema change. The writer therefore
binds nothing else (no bools, enums, numpy scalars or NaN: NaN is stored as NULL, -0.0 as 0.0), and a
REAL column always gets a float (SQLite may keep an integral REAL as an integer on disk; it reads back as
a float either way).

Decoders never raise: a value they cannot read gives None and the caller records a problem.
"""

from __future__ import annotations

import json
import marshal
import math
import zlib
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

from rllmtop.events import Labels

__all__ = [
    "bounds_blob",
    "decode_bounds",
    "decode_counts",
    "encode_counts",
    "labels_from",
    "labels_json",
    "row_crc",
    "scrape_crc",
]


_FORMAT = 2  # marshal format: 3 and later add back-references and interning flags (not canonical)


def _canon(values: Any) -> bytes:
    try:
        return marshal.dumps(values, _FORMAT)
    except ValueError:  # a type marshal cannot write (a damaged file's odd value): its text
        return repr(values).encode("utf-8", "surrogatepass")


def row_crc(row: Sequence[Any], *blobs: bytes | None) -> int:
    """Checksum of one stored row (without its crc column) and any blobs that belong to it."""
    c = zlib.crc32(_canon(tuple(row)))
    for b in blobs:
        if b:
            c = zlib.crc32(b, c)
    return c


def scrape_crc(
    row: Sequence[Any],
    samples: Iterable[tuple[int, float | None]],
    hists: Iterable[tuple[int, bytes, float | None, float | None]],
) -> int:
    """Checksum of a scrape row, its samples ``(series, value)`` and histograms ``(series, counts, sum,
    count)``, each in series order."""
    c = zlib.crc32(_canon(tuple(row)))
    c = zlib.crc32(_canon(tuple(samples)), c)
    for sid, counts, s, n in hists:
        c = zlib.crc32(_canon((sid, s, n)), c)
        if isinstance(counts, bytes):
            c = zlib.crc32(counts, c)
    return c


def labels_json(labels: Labels) -> str:
    return json.dumps([list(p) for p in labels], separators=(",", ":"))


def labels_from(text: Any) -> Labels | None:
    """Labels from their JSON text; None when the text is not a list of [key, value] string pairs."""
    if not isinstance(text, str):
        return None
    try:
        v = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(v, list):
        return None
    out = []
    for p in v:
        if not (isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], str)):
            return None
        out.append((p[0], p[1]))
    return tuple(out)


def encode_counts(counts: Sequence[float]) -> bytes:
    """Cumulative bucket counts (finite, >= 0: the writer checked) as a tagged array."""
    if all(c == int(c) and c <= 0xFFFFFFFF for c in counts):
        return b"\x01" + array("I", (int(c) for c in counts)).tobytes()
    return b"\x02" + array("d", counts).tobytes()


def decode_counts(blob: Any) -> tuple[float, ...] | None:
    if not isinstance(blob, bytes) or not blob:
        return None
    tag, body = blob[:1], blob[1:]
    a: array[Any]
    if tag == b"\x01" and len(body) % 4 == 0:
        a = array("I")
    elif tag == b"\x02" and len(body) % 8 == 0:
        a = array("d")
    else:
        return None
    a.frombytes(body)
    return tuple(float(x) for x in a)


def bounds_blob(bounds: Sequence[float]) -> bytes:
    return array("d", bounds).tobytes()


def decode_bounds(blob: Any) -> tuple[float, ...] | None:
    if not isinstance(blob, bytes) or len(blob) % 8:
        return None
    a = array("d")
    a.frombytes(blob)
    b = tuple(a)
    if any(math.isnan(x) for x in b):
        return None
    return b
