"""The worker wire: records survive encode/pickle/decode exactly; frames survive any split of the byte
stream; a corrupt stream is refused, not misread. The auto rule and the small helpers."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import pickle
import random
from pathlib import Path
from typing import Any

import pytest

from rllmtop.events import (
    ClientHealth,
    LogEvent,
    Record,
    RequestEvent,
    RequestKind,
    RequestRecord,
    RequestStatus,
    encode_gaps,
)
from rllmtop.scenario import load_scenario
from rllmtop.workload import workers as W


def _record(rng: random.Random, rid: int) -> RequestRecord:
    def t() -> float | None:
        return None if rng.random() < 0.2 else rng.uniform(-1e3, 1e6)

    return RequestRecord(
        rid=rid,
        cls=rng.choice(["m", "e", "ü-class", ""]),
        difficulty=rng.choice(["easy", "hard", ""]),
        prompt_id=f"p/{rng.randrange(10**6)}",
        t_scheduled=rng.uniform(0, 1e5),
        t_dispatch=t(),
        t_start=t(),
        connect_s=t(),
        t_sent=t(),
        t_first_token=t(),
        t_done=t(),
        prompt_tokens=rng.choice([None, rng.randrange(10**6)]),
        reasoning_tokens=rng.randrange(10**5),
        answer_tokens=rng.randrange(10**5),
        tokens_exact=rng.random() < 0.5,
        reasoning_mode=rng.choice(["field", "inline", ""]),
        finish_reason=rng.choice([None, "stop", "length"]),
        status=rng.choice(list(RequestStatus)),
        http_status=rng.choice([None, 200, 500]),
        error=rng.choice([None, "boom", "x" * 500]),
        answer_text=rng.choice([None, "42", "\x00\n"]),
        correct=rng.choice([None, True, False]),
        gaps=encode_gaps([rng.randrange(10**6) for _ in range(rng.randrange(5))]),
        worker=rng.randrange(1, 9),
        conversation=rng.choice([None, rng.randrange(100)]),
        turn=rng.randrange(3),
    )


def _records(seed: int, n: int) -> list[Record]:
    rng = random.Random(seed)
    out: list[Record] = []
    for i in range(n):
        kind = rng.choice(list(RequestKind))
        rec = _record(rng, i) if kind in (RequestKind.SENT, RequestKind.DONE, RequestKind.FAILED) else None
        out.append(
            RequestEvent(kind, rng.uniform(0, 1e4), i, "m", rng.randrange(99), rng.randrange(99), "d", rec, 3)
        )
        if rng.random() < 0.1:
            out.append(ClientHealth(1.0, 0.25, 0.001, 0.0001, worker=3, cpu_s=0.1))
        if rng.random() < 0.05:
            out.append(LogEvent(2.0, "client", "warning", "text"))
    return out


@pytest.mark.parametrize("seed", range(300))
def test_records_survive_the_wire_exactly(seed: int) -> None:
    recs = _records(seed, 20)
    msg = ("batch", (1, 2, 3, 4, 5, False), W.encode_items(recs))
    frame = W.pack(msg)
    back = W.unpack(frame[4:])
    assert back[0] == "batch" and back[1] == (1, 2, 3, 4, 5, False)
    assert W.decode_items(back[2]) == recs


def test_the_node_is_stamped_on_request_records() -> None:
    recs = [r for r in _records(1, 50) if isinstance(r, RequestEvent) and r.record is not None]
    out = W.decode_items(pickle.loads(pickle.dumps(W.encode_items(recs))), node="n1")
    assert all(isinstance(r, RequestEvent) and r.record is not None and r.record.node == "n1" for r in out)
    assert [dataclasses.replace(r.record, node="") for r in out] == [r.record for r in recs]  # type: ignore[union-attr]


async def test_frames_survive_any_split_and_refuse_a_corrupt_stream() -> None:
    recs = [_records(i, 5) for i in range(30)]
    msgs = [("batch", (i, 0, 0, 0, 0, False), W.encode_items(r)) for i, r in enumerate(recs)]
    stream = b"".join(W.pack(m) for m in msgs)
    rng = random.Random(5)
    for _ in range(20):
        got: list[tuple[Any, ...]] = []
        lost: list[str] = []
        f = W._Frames(got.append, lost.append)
        i = 0
        while i < len(stream):
            step = rng.choice([1, 2, 3, 7, 100, 4096])
            f.data_received(stream[i : i + step])
            i += step
        assert [(m[0], m[1], W.decode_items(m[2])) for m in got] == [
            ("batch", (i, 0, 0, 0, 0, False), r) for i, r in enumerate(recs)
        ]
        assert not lost
    got, lost = [], []
    f = W._Frames(got.append, lost.append)
    f.data_received(b"\xff\xff\xff\xff" + b"x" * 10)  # 4 GiB announced
    assert not got and lost and "corrupt" in lost[0]
    got, lost = [], []
    f = W._Frames(got.append, lost.append)
    f.data_received(W._HEADER.pack(5) + b"hello")  # not a pickle
    assert not got and lost and "unreadable" in lost[0]
    got, lost = [], []
    f = W._Frames(got.append, lost.append)
    body = pickle.dumps(["not", "a", "tuple"])
    f.data_received(W._HEADER.pack(len(body)) + body)
    assert not got and lost
    await asyncio.sleep(0)


def _sc(tmp_path: Path, arrival: str, load: str = "", tokens: int = 1000) -> Any:
    f = tmp_path / "a.toml"
    f.write_text(
        f"seed = 1\n[arrival]\n{arrival}\n[load]\n{load or 'num_prompts = 100000'}\n"
        f'[[classes]]\nprompts = "math-easy"\nmax_tokens = {tokens}\n'
    )
    return load_scenario(str(f))


def test_auto_picks_workers_from_chunks_and_streams_within_the_cpus(tmp_path: Path) -> None:
    # 10 req/s x 1,000 tokens = 10,000 chunks/s: one worker
    n, why = W.auto_workers(_sc(tmp_path, 'process = "poisson"\nrate = 10'), cpus=8)
    assert n == 1 and "10,000 chunks/s" in why and "8 CPU" in why
    # 100 req/s x 1,000 = 100,000 chunks/s: ceil(100,000 / CHUNKS_PER_WORKER)
    n, _ = W.auto_workers(_sc(tmp_path, 'process = "poisson"\nrate = 100'), cpus=8)
    assert n == math.ceil(100_000 / W.CHUNKS_PER_WORKER)
    n, _ = W.auto_workers(_sc(tmp_path, 'process = "poisson"\nrate = 100'), cpus=2)
    assert n == 2  # at most the CPUs
    # a cap of 6,000 streams: workers of STREAMS_PER_WORKER
    n, why = W.auto_workers(
        _sc(tmp_path, 'process = "poisson"\nrate = 1', "num_prompts = 100000\nmax_concurrency = 6000"),
        cpus=16,
    )
    assert n == math.ceil(6000 / W.STREAMS_PER_WORKER) and "6,000 streams" in why
    # everything at once: the burst is the stream count
    n, _ = W.auto_workers(_sc(tmp_path, 'process = "poisson"\nrate = inf', "num_prompts = 3000"), cpus=16)
    assert n == math.ceil(3000 / W.STREAMS_PER_WORKER)
    # phases: the busiest phase decides (90 req/s x 1,000 tokens)
    phases = 'process = "phases"\nphases = [{duration = 10, rate = 1}, {duration = 10, rate = 90}]'
    n, _ = W.auto_workers(_sc(tmp_path, phases), cpus=16)
    assert n == math.ceil(90_000 / W.CHUNKS_PER_WORKER)


def test_exit_codes_and_stderr_tails_read_as_words(tmp_path: Path) -> None:
    assert W._exit_text(-9) == "exit code -9 (SIGKILL)"
    assert W._exit_text(1) == "exit code 1"
    assert W._exit_text(None) == "it stopped answering"
    f = tmp_path / "err"
    f.write_text("Traceback (most recent call last):\n  ...\nMemoryError: out of memory\n\n")
    assert W._last_line(str(f)) == "MemoryError: out of memory"
    f.write_text("boom --api-key sk-secret123\n")
    assert "sk-secret123" not in W._last_line(str(f))
    assert W._last_line(str(tmp_path / "missing")) == ""


def test_a_large_or_uncertain_node_clock_offset_is_warned_in_words(tmp_path: Path) -> None:
    from rllmtop.clock import Clock
    from rllmtop.workload.ray_workers import OFFSET_WARN, RaySender

    from .helpers import scenario

    logged: list[LogEvent] = []
    s = RaySender(
        scenario(tmp_path, n=5),
        address="auto",
        base_url="http://127.0.0.1:1",
        model="m",
        api_key=None,
        clock=Clock(),
        publish=lambda r: logged.append(r) if isinstance(r, LogEvent) else None,
    )
    w = W._Worker(id=1, planned=5, node="abc123")
    s._note_offset(w, OFFSET_WARN / 2, 0.0004, "10.0.0.2")  # small and well measured: nothing to say
    assert not s.warnings and not [e for e in logged if e.level == "warning"]
    s._note_offset(w, 0.0421, 0.0004, "10.0.0.2")
    assert len(s.warnings) == 1
    assert "node abc123 (10.0.0.2)'s clock is +42.1 ms off" in s.warnings[0] and "chrony/NTP" in s.warnings[0]
    s._note_offset(w, 0.0, 0.030, "10.0.0.2")  # a 30 ms round trip: known to +-15 ms only
    assert len(s.warnings) == 2 and "only known to ± 15.0 ms" in s.warnings[1]
    assert [e.text for e in logged if e.level == "warning"] == s.warnings


def test_a_workers_peak_memory_is_its_own_not_its_parents() -> None:
    import subprocess
    import sys

    ballast = bytearray(300 << 20)  # the parent's peak RSS: >= 300 MiB (pages touched below)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    code = "from rllmtop.workload.workers import _max_rss_kb; print(_max_rss_kb())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    del ballast
    kib = int(out.stdout)
    assert 0 < kib < 150 * 1024  # a fresh interpreter importing rllmtop: tens of MiB, not the parent's 300
