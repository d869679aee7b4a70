"""`rllmtop sim serve|profiles` as a user runs it: subprocesses, signals, exit codes, messages."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rllmtop.cli import main as rllmtop_main
from rllmtop.sim.cli import main as sim_main

LINE = re.compile(r"Starting rllmtop sim server on (http://127\.0\.0\.1:(\d+))")


def start(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "rllmtop.sim", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the server is listening (or died)
    m = LINE.search(line)
    if m is None:
        proc.kill()
        raise AssertionError(f"no startup line: {line!r} {proc.communicate()[1]}")
    return proc, m.group(1)


@pytest.fixture
def served() -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc, url = start("--speed", "200")
    try:
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_then_exit_promptly_on_signals(served: tuple[subprocess.Popen[str], str], sig: int) -> None:
    proc, url = served
    assert httpx.get(url + "/health").status_code == 200
    r = httpx.post(
        url + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "Compute $1+2$."}], "max_tokens": 20},
    )
    assert r.json()["usage"]["completion_tokens"] == 20
    t0 = time.monotonic()
    proc.send_signal(sig)
    assert proc.wait(timeout=5) == 0
    assert time.monotonic() - t0 < 2.0


def test_signal_during_a_stream(served: tuple[subprocess.Popen[str], str]) -> None:
    proc, url = served
    body = {"messages": [{"role": "user", "content": "Compute $1+2$."}], "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body) as r:
        next(r.iter_bytes())
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    assert time.monotonic() - t0 < 2.0


def test_exit_after_exits_with_code_1() -> None:
    proc, _ = start("--exit-after", "0.3")
    try:
        assert proc.wait(timeout=10) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
    assert "--exit-after" in err


def test_flags_reach_the_server(tmp_path: Path) -> None:
    prof = tmp_path / "p.toml"
    prof.write_text('base = "rllm-7b"\nname = "tiny"\n[serving]\nmax_num_seqs = 7\n')
    proc, url = start(
        "--profile-file",
        str(prof),
        "--served-model-name",
        "m",
        "--kv-cache-dtype",
        "fp8",
        "--num-gpu-blocks-override",
        "4096",
        "--block-size",
        "32",
        "--max-model-len",
        "8192",
        "--no-enable-prefix-caching",
        "--speculative-config",
        '{"method": "ngram", "num_speculative_tokens": 2}',
        "--reasoning-field",
        "reasoning_content",
        "--seed",
        "5",
        "--speed",
        "100",
    )
    try:
        metrics = httpx.get(url + "/metrics").text
        assert 'num_gpu_blocks="4096"' in metrics and 'block_size="32"' in metrics
        assert 'enable_prefix_caching="False"' in metrics and 'cache_dtype="fp8"' in metrics
        assert 'model_name="m"' in metrics and "vllm:spec_decode_num_drafts_total" in metrics
        assert httpx.get(url + "/v1/models").json()["data"][0]["max_model_len"] == 8192
        r = httpx.post(
            url + "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 50},
        )
        assert "reasoning_content" in r.json()["choices"][0]["message"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        proc.communicate()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "nope"], "unknown simulator profile 'nope'"),
        (["--speculative-config", "{bad"], "not valid JSON"),
        (["--quantization", "nf9"], "not simulated"),
        (["--num-gpu-blocks-override", "10"], "fewer than max_model_len"),
        (["--profile", "rllm-7b", "--profile-file", "x.toml"], "both set"),
        (["--port", "70000"], "out of range"),
        (["--max-model-len", "100000"], "max-model-len"),
    ],
)
def test_user_errors_are_one_line_and_a_hint(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sim_main(["serve", *args]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and message in err[0] and err[1].startswith("  hint: ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--speed", "0"], "--speed: 0 must be a positive number"),
        (["--fault-error-rate", "2"], "--fault-error-rate: 2 is not a fraction"),
        (["--kv-cache-dtype", "int3"], "invalid choice"),
        (["--max-num-seqs", "zero"], "is not an integer"),
    ],
)
def test_bad_flag_values(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        sim_main(["serve", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_port_in_use_is_a_user_error(served: tuple[subprocess.Popen[str], str]) -> None:
    _, url = served
    port = url.rsplit(":", 1)[1]
    r = subprocess.run(
        [sys.executable, "-m", "rllmtop.sim", "serve", "--port", port],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "cannot listen" in r.stderr and "--port" in r.stderr


def test_profiles_listing_through_the_top_level_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert rllmtop_main(["sim", "profiles"]) == 0
    out = capsys.readouterr().out
    for name in ("rllm-7b", "llm-7b", "rllm-1.5b", "rllm-14b", "rllm-32b"):
        assert re.search(rf"^{re.escape(name)}\b", out, re.MULTILINE), name
    assert "A100-SXM4-40GB" in out and "2x H100-SXM5-80GB" in out and "KV TOKENS" in out
    assert "gpu_memory_utilization 0.92" in out
    assert sim_main([]) == 2


def test_the_core_stays_independent() -> None:
    code = (
        "import sys, rllmtop.sim.server, rllmtop.sim.cli, rllmtop.sim.virtual\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('textual', 'rich') or m.startswith(("
        "'rllmtop.workload', 'rllmtop.metrics', 'rllmtop.record', 'rllmtop.tui'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


def test_sim_help_names_calibrate(capsys: pytest.CaptureFixture[str]) -> None:
    """`calibrate` lives on the client side (rllmtop.calibrate) but is reached as `rllmtop sim calibrate`:
    the simulator's own help says so."""
    with pytest.raises(SystemExit) as e:
        rllmtop_main(["sim", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "rllmtop sim calibrate REC.db" in out and "-o profile.toml" in out
