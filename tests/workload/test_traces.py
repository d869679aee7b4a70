"""Trace files: each format's column mapping read from the shipped samples, the checks on bad rows, the run
limits, scaling; the samples are exactly what the project's generator writes."""

from __future__ import annotations

import csv
import datetime
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rllmtop.errors import UserError
from rllmtop.scenario import ArrivalSpec, load_scenario
from rllmtop.workload import traces
from rllmtop.workload.arrivals import schedule
from rllmtop.workload.schedule import preflight
from rllmtop.workload.traces import read_trace

from .make_trace_samples import SAMPLES

ROOT = Path(__file__).resolve().parents[2] / "scenarios" / "traces"
FLEET = ROOT.parent / "fleet-trace.jsonl"


def test_shipped_samples_are_the_generators_output() -> None:
    for name, make in SAMPLES.items():
        assert (ROOT / name).read_text() == make(), f"{name} differs from make_trace_samples.py"


def test_burstgpt_mapping() -> None:
    with (ROOT / "burstgpt-sample.csv").open() as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if int(r["Response tokens"]) > 0]
    assert len(kept) < len(rows), "the sample has failed rows (Response tokens = 0)"
    kept.sort(key=lambda r: float(r["Timestamp"]))
    tr = read_trace(ROOT / "burstgpt-sample.csv", "burstgpt")
    assert len(tr) == len(kept) and tr.skipped == len(rows) - len(kept)
    t0 = float(kept[0]["Timestamp"])
    np.testing.assert_allclose(tr.times, [float(r["Timestamp"]) - t0 for r in kept])
    assert tr.input_tokens is not None and tr.output_tokens is not None
    assert tr.input_tokens.tolist() == [int(r["Request tokens"]) for r in kept]
    assert tr.output_tokens.tolist() == [int(r["Response tokens"]) for r in kept]
    assert tr.hash_offsets is None and tr.hash_ids(0).size == 0
    assert "left out" in tr.describe()


def test_mooncake_mapping_and_hash_ids() -> None:
    rows = [json.loads(x) for x in (ROOT / "mooncake-sample.jsonl").read_text().splitlines()]
    tr = read_trace(ROOT / "mooncake-sample.jsonl", "mooncake")
    assert len(tr) == len(rows) and tr.skipped == 0
    np.testing.assert_allclose(tr.times, [(r["timestamp"] - rows[0]["timestamp"]) / 1000 for r in rows])
    assert tr.input_tokens is not None and tr.output_tokens is not None
    assert tr.input_tokens.tolist() == [r["input_length"] for r in rows]
    assert tr.output_tokens.tolist() == [r["output_length"] for r in rows]
    for i, r in enumerate(rows):
        assert tr.hash_ids(i).tolist() == r["hash_ids"]
        assert len(r["hash_ids"]) == -(-r["input_length"] // 512)
    shared = sum(1 for r in rows if r["hash_ids"][0] < 1000)
    assert 50 < shared < 150, "a third of the sample opens with a shared document"


def test_azure_mapping_and_datetimes() -> None:
    with (ROOT / "azure-sample.csv").open() as f:
        rows = list(csv.DictReader(f))
    tr = read_trace(ROOT / "azure-sample.csv", "azure")
    assert len(tr) == len(rows)

    def secs(s: str) -> float:  # Python's own reading of the first 6 fractional digits, for comparison
        return datetime.datetime.fromisoformat(s[:26]).timestamp()

    expect = [secs(r["TIMESTAMP"]) - secs(rows[0]["TIMESTAMP"]) for r in rows]
    np.testing.assert_allclose(tr.times, expect, atol=2e-6)
    assert tr.input_tokens is not None and tr.output_tokens is not None
    assert tr.input_tokens.tolist() == [int(r["ContextTokens"]) for r in rows]
    assert tr.output_tokens.tolist() == [int(r["GeneratedTokens"]) for r in rows]


def test_azure_offsets_and_day_boundaries(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    p.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-02-28 23:59:59.5,10,5\n"
        "2024-02-29T00:00:00.2500000Z,10,5\n"
        "2024-03-01 01:00:00+01:00,10,5\n"
    )
    np.testing.assert_allclose(read_trace(p, "azure").times, [0.0, 0.75, 86400.5])


def test_unsorted_rows_keep_their_lengths(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    rows = [
        {"timestamp": 3000, "input_length": 30, "output_length": 3, "hash_ids": [3]},
        {"timestamp": 1000, "input_length": 10, "output_length": 1, "hash_ids": [1, 11]},
        {"timestamp": 2000, "input_length": 20, "output_length": 2},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tr = read_trace(p, "mooncake")
    assert tr.times.tolist() == [0.0, 1.0, 2.0]
    assert tr.input_tokens is not None and tr.input_tokens.tolist() == [10, 20, 30]
    assert [tr.hash_ids(i).tolist() for i in range(3)] == [[1, 11], [], [3]]
    assert not tr.times.flags.writeable


def test_scales_and_cuts() -> None:
    base = ArrivalSpec(
        process="trace", trace_file=str(ROOT / "mooncake-sample.jsonl"), trace_format="mooncake"
    )
    t = schedule(base, None, None, 0)
    for kw, factor in (
        ({"rate_scale": 2.0}, 0.5),
        ({"time_scale": 3.0}, 3.0),
        (
            {"time_scale": 2.0, "rate_scale": 4.0},
            0.5,
        ),
    ):
        spec = ArrivalSpec(**{**base.__dict__, **kw})
        np.testing.assert_allclose(schedule(spec, None, None, 0), t * factor)
    assert schedule(base, 10, None, 0).size == 10
    cut = schedule(base, None, 30.0, 0)
    assert cut.size == int(np.count_nonzero(t < 30.0)) and cut.max() < 30.0


def test_fleet_trace_reads_lengths() -> None:
    tr = read_trace(FLEET, "mooncake")
    assert len(tr) == 240 and tr.input_tokens is not None and tr.output_tokens is not None
    assert set(tr.input_tokens.tolist()) == {256, 4096} and set(tr.output_tokens.tolist()) == {256, 8192}
    assert all(tr.output_tokens[i] == 8192 for i in range(0, 240, 4))


# ------------------------------------------------------------------------------------------- bad input


def _fail(tmp_path: Path, text: str, fmt: str, name: str = "t.csv") -> UserError:
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(UserError) as ei:
        read_trace(p, fmt)
    e = ei.value
    assert "\n" not in e.what and e.hint and str(p.name) in e.what
    return e


@pytest.mark.parametrize(
    ("fmt", "name", "text", "says"),
    [
        ("burstgpt", "t.csv", "Timestamp,Request tokens\n1,2\n", "no column 'Response tokens'"),
        (
            "burstgpt",
            "t.csv",
            "Timestamp,Request tokens,Response tokens\n1,x,3\n",
            "line 2: Request tokens is 'x'",
        ),
        (
            "burstgpt",
            "t.csv",
            "Timestamp,Request tokens,Response tokens\n1,2,3\n2,-4,3\n",
            "line 3: Request tokens is -4",
        ),
        ("burstgpt", "t.csv", "Timestamp,Request tokens,Response tokens\n1,2.5,3\n", "not a whole number"),
        ("burstgpt", "t.csv", "Timestamp,Request tokens,Response tokens\nnan,2,3\n", "not a finite number"),
        ("burstgpt", "t.csv", "Timestamp,Request tokens,Response tokens\nsoon,2,3\n", "Timestamp is 'soon'"),
        ("burstgpt", "t.csv", "Timestamp,Request tokens,Response tokens\n1,2\n", "line 2: has 2 fields"),
        ("burstgpt", "t.csv", "Timestamp,Request tokens,Response tokens\n1,99999999999,3\n", "MAX_TOKENS"),
        ("burstgpt", "t.csv", "Timestamp,Request tokens,Response tokens\n1,2,0\n", "has no requests (1 with"),
        ("mooncake", "t.jsonl", '{"timestamp": 1, "input_length": 2}\n', "line 1: no 'output_length'"),
        ("mooncake", "t.jsonl", "[1, 2, 3]\n", "not a JSON object"),
        (
            "mooncake",
            "t.jsonl",
            '{"timestamp": 1, "input_length": 2, "output_length": 3}\n{oops\n',
            "line 2: not JSON",
        ),
        (
            "mooncake",
            "t.jsonl",
            '{"timestamp": "x", "input_length": 2, "output_length": 3}\n',
            "timestamp is 'x'",
        ),
        ("mooncake", "t.jsonl", '{"timestamp": 1, "input_length": true, "output_length": 3}\n', "a boolean"),
        (
            "mooncake",
            "t.jsonl",
            '{"timestamp": 1, "input_length": 2, "output_length": 3, "hash_ids": 7}\n',
            "hash_ids is 7",
        ),
        (
            "mooncake",
            "t.jsonl",
            '{"timestamp": 1, "input_length": 2, "output_length": 3, "hash_ids": [1.5]}\n',
            "hash_ids holds 1.5",
        ),
        (
            "mooncake",
            "t.jsonl",
            '{"timestamp": 1, "input_length": 2, "output_length": 3, "hash_ids": [99999999999999999999]}\n',
            "64-bit",
        ),
        (
            "azure",
            "t.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-13-01 00:00:00,1,1\n",
            "no such date",
        ),
        ("azure", "t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,1\n", "not a date and time"),
        (
            "azure",
            "t.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-01 25:00:00,1,1\n",
            "no such time",
        ),
        ("azure", "t.csv", "time,ContextTokens\n1,1\n", "no column 'TIMESTAMP'"),
        ("timestamps", "t.csv", "", "no column 'timestamp'"),
    ],
)
def test_bad_rows_say_where(tmp_path: Path, fmt: str, name: str, text: str, says: str) -> None:
    assert says in _fail(tmp_path, text, fmt, name).what


def test_limits_when_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "long.csv"
    p.write_text("timestamp\n0\n86400\n700000\n")  # over 8 days
    spec = ArrivalSpec(process="trace", trace_file=str(p))
    with pytest.raises(UserError) as ei:
        schedule(spec, None, None, 0)
    assert "spans 700,000 s" in ei.value.what and "MAX_RUN_SECONDS" in ei.value.what
    assert "load.duration" in ei.value.hint
    assert schedule(spec, 2, None, 0).size == 2  # the part a run replays is what is checked
    assert schedule(spec, None, 90000.0, 0).size == 2
    fast = ArrivalSpec(process="trace", trace_file=str(p), rate_scale=2.0)
    assert schedule(fast, None, None, 0).size == 3
    monkeypatch.setattr(traces, "MAX_REQUESTS", 2)
    with pytest.raises(UserError) as ei:
        schedule(fast, None, None, 0)
    assert "plans 3 requests" in ei.value.what and "MAX_REQUESTS" in ei.value.what


def test_fuzzed_samples_parse_or_fail_cleanly(tmp_path: Path) -> None:
    """A few hundred seeded corruptions of the shipped samples: a trace or one UserError, nothing else."""
    rnd = random.Random(16)
    junk = ["", ",", "-1", "1e309", "nan", '"', "\x00", "é", "[", "{}", "99999999999999999999", " ", "\n"]
    cases = 0
    for name, fmt in (
        ("burstgpt-sample.csv", "burstgpt"),
        ("mooncake-sample.jsonl", "mooncake"),
        ("azure-sample.csv", "azure"),
    ):
        lines = (ROOT / name).read_text().splitlines()[:40]
        for k in range(120):
            ls = list(lines)
            for _ in range(rnd.randint(1, 3)):
                i = rnd.randrange(len(ls))
                s = ls[i]
                j = rnd.randrange(len(s) + 1)
                cut = rnd.randrange(0, 4)
                ls[i] = s[:j] + rnd.choice(junk) + s[j + cut :]
            p = tmp_path / f"{k}-{name}"
            p.write_bytes("\n".join(ls).encode("utf-8", "surrogatepass"))
            try:
                tr = read_trace(p, fmt)
            except UserError as e:
                assert "\n" not in e.what and e.hint
            else:
                assert len(tr) > 0 and np.all(np.isfinite(tr.times)) and tr.times[0] == 0.0
                assert tr.input_tokens is not None and tr.output_tokens is not None
                assert tr.input_tokens.min() >= 0 and tr.output_tokens.min() >= 1
            cases += 1
    assert cases == 360


def test_preflight_names_the_bad_row_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "bg.csv").write_text("Timestamp,Request tokens,Response tokens\n0.5,12,30\n1.0,abc,30\n")
    sc_path = tmp_path / "s.toml"
    sc_path.write_text(
        "[arrival]\nprocess = 'trace'\ntrace_file = 'bg.csv'\ntrace_format = 'burstgpt'\n"
        "[[classes]]\nname = 't'\nprompts = 'math-easy'\nmax_tokens = 256\n"
    )
    sc = load_scenario(str(sc_path))  # the loader checks the file is there, not its rows
    with pytest.raises(UserError) as ei:
        preflight(sc)
    assert (
        ei.value.what
        == f"arrival trace {tmp_path / 'bg.csv'}, line 3: Request tokens is 'abc', not a token count"
    )
    assert "Request tokens" in ei.value.hint
    (tmp_path / "bg.csv").write_text("Timestamp,Request tokens,Response tokens\n0.5,12,30\n1.0,7,30\n")
    preflight(sc)


@pytest.mark.slow
def test_bad_trace_from_the_cli_is_one_message(tmp_path: Path) -> None:
    """The whole path: `rllmtop run` on a scenario whose trace has a bad row ends with exit code 2 and the
    message naming file, line and column, no traceback (today after the simulator started: the trace is
    read when sending starts unless the command calls schedule.preflight first)."""
    (tmp_path / "bg.csv").write_text("Timestamp,Request tokens,Response tokens\n0.5,12,30\n1.0,abc,30\n")
    (tmp_path / "bad.toml").write_text(
        "[engine]\nkind = 'sim'\nspeed = 20\n[arrival]\nprocess = 'trace'\ntrace_file = 'bg.csv'\n"
        "trace_format = 'burstgpt'\n[[classes]]\nname = 't'\nprompts = 'math-easy'\nmax_tokens = 256\n"
    )
    cmd = [sys.executable, "-m", "rllmtop", "run", str(tmp_path / "bad.toml"), "--headless", "--no-record"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 2 and "Traceback" not in out, out
    assert f"arrival trace {tmp_path / 'bg.csv'}, line 3: Request tokens is 'abc', not a token count" in out
