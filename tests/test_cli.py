"""Every subcommand through the real entry point (a subprocess, as a user runs it): outputs, exit codes,
and one clear message (no traceback) for each user error."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rllmtop.events import SessionState
from rllmtop.record.reader import open_recording

FAST = """
name = "cli-fast"
seed = 3
[engine]
kind = "sim"
profile = "rllm-7b"
speed = 40
[arrival]
process = "gamma"
rate = 20
burstiness = 0.5
[load]
num_prompts = 8
[[classes]]
name = "easy"
prompts = {{ builtin = "math-easy" }}
max_tokens = 512
{extra}
"""


def rllmtop(
    *args: str, timeout: float = 90, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rllmtop", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def assert_user_error(p: subprocess.CompletedProcess[str], *needles: str, code: int = 2) -> None:
    assert p.returncode == code, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("rllmtop: "), p.stderr
    for n in needles:
        assert n in p.stderr, p.stderr


def scenario(tmp_path: Path, extra: str = "") -> Path:
    f = tmp_path / "fast.toml"
    f.write_text(FAST.format(extra=extra))
    return f


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------- basics


def test_version_and_help() -> None:
    p = rllmtop("--version")
    assert p.returncode == 0 and p.stdout.startswith("rllmtop ")
    p = rllmtop("--help")
    assert p.returncode == 0
    for cmd in ("run", "attach", "launch", "replay", "export", "report", "compare", "scenarios", "sim"):
        assert cmd in p.stdout


def test_scenarios_lists_the_shipped_ones() -> None:
    p = rllmtop("scenarios")
    assert p.returncode == 0
    names = [line.split()[0] for line in p.stdout.splitlines() if line.strip()]
    for name in ("default", "stragglers", "pilot-llm-vs-rllm", "opt-kv-fp8"):
        assert name in names


def test_tui_without_a_terminal_says_to_use_headless(tmp_path: Path) -> None:
    assert_user_error(rllmtop("run", str(scenario(tmp_path)), "--no-record"), "TTY", "--headless")
    p = rllmtop("run")
    assert p.returncode == 2 and "Traceback" not in p.stderr  # argparse usage error


# ---------------------------------------------------------------------------------------------- run


def test_run_headless_records_and_summarises(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    p = rllmtop("run", str(scenario(tmp_path)), "--headless", "--record", str(db))
    assert p.returncode == 0, p.stderr
    assert "rllmtop: done" in p.stdout
    assert "simulated (speed 40); every time below is on that clock" in p.stdout  # which clock, said
    assert "TTFVT p50/90/99" in p.stdout and "easy" in p.stdout
    assert f"recording: {db}" in p.stdout
    rec = open_recording(db)
    assert rec.status is SessionState.DONE
    assert len(rec.requests()) == 8
    assert rec.info.engine_kind == "sim" and rec.info.engine_version
    assert ("event_loop", "uvloop") in rec.info.extra  # the fast loop is the default where installed


def test_run_exit_code_1_when_an_slo_is_missed(tmp_path: Path) -> None:
    p = rllmtop("run", str(scenario(tmp_path, "[slo]\ne2e_p99 = 0.0001")), "--headless", "--no-record")
    assert p.returncode == 1, p.stderr
    assert "SLO missed: e2e_p99" in p.stdout


def test_cli_overrides_reach_the_run(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    p = rllmtop(
        "run", str(scenario(tmp_path)), "--headless", "--num-prompts", "3", "--seed", "9", "--record", str(db)
    )
    assert p.returncode == 0, p.stderr
    rec = open_recording(db)
    assert len(rec.requests()) == 3 and rec.info.seed == 9


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ('name = "x"\n[arrival]\nrate = "fast"\n', ["arrival.rate", "fast"]),
        ('name = "x"\n[enigne]\nkind = "sim"\n', ["enigne", "engine"]),
        ("name = [\n", ["bad.toml"]),
    ],
)
def test_bad_scenario_files_name_file_and_field(tmp_path: Path, body: str, needles: list[str]) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(body)
    assert_user_error(rllmtop("run", str(f), "--headless", "--no-record"), "bad.toml", *needles)


def test_unknown_scenario_and_bad_override(tmp_path: Path) -> None:
    assert_user_error(rllmtop("run", "no-such-scenario", "--headless"), "no-such-scenario")
    assert_user_error(
        rllmtop("run", str(scenario(tmp_path)), "--headless", "--request-rate", "-3", "--no-record"),
        "--request-rate",
    )


def test_api_key_is_used_but_never_recorded(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    secret = "sk-test-never-store-me-123"
    p = rllmtop(
        "run", str(scenario(tmp_path)), "--headless", "--record", str(db), env={"OPENAI_API_KEY": secret}
    )
    assert p.returncode == 0, p.stderr
    assert secret not in p.stdout + p.stderr
    for f in tmp_path.glob("k.db*"):
        assert secret.encode() not in f.read_bytes()


# ---------------------------------------------------------------------------------------------- attach


def test_attach_to_an_unreachable_url_is_one_clear_message(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    db = tmp_path / "a.db"
    p = rllmtop("attach", url, "--headless", "--record", str(db))
    assert p.returncode == 2
    assert "Traceback" not in p.stderr + p.stdout
    assert url in p.stdout + p.stderr
    assert open_recording(db).status is SessionState.FAILED


def test_attach_with_load_against_an_outside_server(outside_sim: str, tmp_path: Path) -> None:
    url = outside_sim
    db = tmp_path / "attach.db"
    p = rllmtop("attach", url, "--scenario", str(scenario(tmp_path)), "--headless", "--record", str(db))
    assert p.returncode == 0, p.stderr
    rec = open_recording(db)
    assert len(rec.requests()) == 8
    assert rec.samples(names=["kv_cache_usage"])  # scraped the outside server's /metrics


def test_attach_without_load_watches_until_interrupted(outside_sim: str, tmp_path: Path) -> None:
    url = outside_sim
    db = tmp_path / "watch.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rllmtop", "attach", url, "--headless", "--record", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # wait until it is watching, then Ctrl-C
        if "running" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "interrupted" in out
    assert open_recording(db).status is SessionState.INTERRUPTED


# ---------------------------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_stops_sending_drains_and_records(tmp_path: Path) -> None:
    long = (
        FAST.format(extra="").replace("num_prompts = 8", "duration = 600").replace("speed = 40", "speed = 2")
    )
    f = tmp_path / "long.toml"
    f.write_text(long)
    db = tmp_path / "int.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rllmtop", "run", str(f), "--headless", "--record", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "running" in line:
            break
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)  # second Ctrl-C: cancel in-flight at once
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    rec = open_recording(db)
    assert rec.status is SessionState.INTERRUPTED
    # nothing sent was lost: every request the run sent is in the file, ended one way or another
    assert all(r.status.value in ("ok", "error", "cancelled") for r in rec.requests())


# ---------------------------------------------------------------------------------------------- launch


def test_launch_that_fails_to_start_is_a_clear_failure(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    p = rllmtop(
        "launch",
        "vllm",
        "some/model",
        "--headless",
        "--record",
        str(db),
        "--command",
        f"{sys.executable} -c 'import os, sys; print(\"boom: no GPU, nice\", os.nice(0)); sys.exit(3)'",
        "--startup-timeout",
        "30",
        "--nice",
        "10",
        "--",
        "--max-model-len",
        "777",
    )
    assert p.returncode == 2
    assert "Traceback" not in p.stdout + p.stderr
    assert "boom: no GPU" in p.stdout + p.stderr  # the engine's last log lines are shown
    assert f"nice {os.nice(0) + 10}" in p.stdout + p.stderr  # --nice reached the engine
    assert_user_error(
        rllmtop("launch", "vllm", "m", "--headless", "--no-record", "--nice", "20"), "--nice 20"
    )
    rec = open_recording(db)
    assert rec.status is SessionState.FAILED
    assert any("boom: no GPU" in e.text for e in rec.logs())
    cmd = rec.info.launch_command
    assert "--headless" not in cmd  # rllmtop's own flags stay rllmtop's
    assert cmd[-2:] == ("--max-model-len", "777")  # everything after `--` goes to the engine


# ---------------------------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("rec")
    db = d / "r.db"
    p = rllmtop("run", str(scenario(d)), "--headless", "--record", str(db))
    assert p.returncode == 0, p.stderr
    return db


def test_replay_headless_prints_the_recorded_summary(recorded: Path) -> None:
    p = rllmtop("replay", str(recorded), "--headless")
    assert p.returncode == 0, p.stderr
    assert "cli-fast on sim" in p.stdout and "TTFVT" in p.stdout
    assert "times in simulated seconds (speed 40)" in p.stdout


def test_replay_errors(tmp_path: Path, recorded: Path) -> None:
    assert_user_error(rllmtop("replay", str(tmp_path / "missing.db"), "--headless"), "missing.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    assert_user_error(rllmtop("replay", str(junk), "--headless"), "junk.db")
    assert_user_error(rllmtop("replay", str(recorded), "--speed", "100"), "--speed")


def test_export_report_and_compare(tmp_path: Path, recorded: Path) -> None:
    p = rllmtop("export", str(recorded), "--format", "jsonl", "--out", str(tmp_path / "x"))
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "x" / "requests.jsonl").read_text().count("\n") == 8
    p = rllmtop("report", str(recorded), "--out", str(tmp_path / "rep"))
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "rep" / "index.html").stat().st_size > 1000
    p = rllmtop("compare", str(recorded), str(recorded), "--out", str(tmp_path / "cmp"))
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "cmp" / "index.html").exists()
    assert_user_error(rllmtop("compare", str(recorded)), "two recordings")


def test_sim_subcommand_is_the_simulators_cli() -> None:
    p = rllmtop("sim", "profiles")
    assert p.returncode == 0
    assert "rllm-7b" in p.stdout and "llm-7b" in p.stdout


def test_bad_scrape_interval_and_record_targets_are_refused(tmp_path: Path) -> None:
    sc = str(scenario(tmp_path))
    for bad in ("nan", "0", "-1", "inf", "1000"):
        p = rllmtop("run", sc, "--headless", "--no-record", "--scrape-interval", bad)
        assert_user_error(p, "--scrape-interval", "out of range")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert_user_error(rllmtop("run", sc, "--headless", "--record", str(fifo)), "not a regular file")
    assert_user_error(rllmtop("run", sc, "--headless", "--record", str(tmp_path)), "a directory")
    assert_user_error(rllmtop("run", sc, "--headless", "--record", "/dev/null"), "not a regular file")


def test_attach_and_launch_help_offer_only_what_applies() -> None:
    for cmd in ("attach", "launch"):
        out = rllmtop(cmd, "--help").stdout
        assert "--speed" not in out and "--profile" not in out and "--base-url" not in out, out
        assert "--request-rate" in out and "--duration" in out
    run = rllmtop("run", "--help").stdout
    assert "--speed" in run and "--profile" in run and "--base-url" in run
    export = rllmtop("export", "--help").stdout
    assert "default csv" in export
    assert "baseline" in rllmtop("compare", "--help").stdout


def test_attach_headless_duration_ends_without_a_scenario(outside_sim: str, tmp_path: Path) -> None:
    db = tmp_path / "watch.db"
    p = rllmtop("attach", outside_sim, "--headless", "--duration", "2", "--record", str(db), timeout=60)
    assert p.returncode == 0, p.stderr
    rec = open_recording(db)
    assert rec.status is SessionState.DONE and len(rec.scrapes()) >= 3


def test_the_simulator_starts_beside_a_folder_named_rllmtop(tmp_path: Path) -> None:
    """The parent of a clone holds a folder `rllmtop`: children must not import it instead of the package."""
    script = Path(sys.executable).with_name("rllmtop")
    if not script.exists():
        pytest.skip("no rllmtop console script next to this Python")
    (tmp_path / "rllmtop").mkdir()
    (tmp_path / "rllmtop" / "__init__.py").write_text("raise ImportError('the wrong rllmtop')\n")
    sc = scenario(tmp_path)
    p = subprocess.run(
        [str(script), "run", str(sc), "--headless", "--no-record"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 0, p.stderr


def test_sigkill_keeps_every_request_sent_with_its_state_at_the_last_commit(tmp_path: Path) -> None:
    """Issue 11.2: killed mid-run, the file holds every request sent before the last commit (0.5 s), the ones
    still in flight included, with their progress then; the engine goes with rllmtop (its guard)."""
    import time

    from rllmtop.events import RequestStatus
    from rllmtop.scenario import load_scenario
    from rllmtop.workload.schedule import Schedule

    body = (
        FAST.format(extra="")
        .replace("num_prompts = 8", "num_prompts = 400")
        .replace("speed = 40", "speed = 1")
        .replace('process = "gamma"\nrate = 20\nburstiness = 0.5', 'process = "constant"\nrate = 10')
        .replace("max_tokens = 512", "max_tokens = 4096")
        .replace("math-easy", "math-hard")
    )
    f = tmp_path / "kill.toml"
    f.write_text(body)
    db = tmp_path / "kill.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rllmtop", "run", str(f), "--headless", "--record", str(db)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "] running" in line:
            break
    time.sleep(4.0)  # let a few dozen requests go out (the schedule is the clock here, not an event)
    killed_at = time.time()
    proc.kill()
    proc.wait(30)
    rec = open_recording(db)
    assert rec.status is SessionState.INCOMPLETE
    t_kill = killed_at - rec.info.started_at
    sched = Schedule(load_scenario(str(f)))
    rows = {r.rid: r for r in rec.requests()}
    runner_start = min(r.t_scheduled for r in rows.values())  # the schedule's t=0 on the session clock
    due = [
        int(rid)
        for c in sched.chunks()
        for rid, t in zip(c.rids, c.times, strict=True)
        if runner_start + float(t) < t_kill - 1.5  # sent at least three commit intervals before the kill
    ]
    assert len(due) >= 20
    missing = [rid for rid in due if rid not in rows]
    assert missing == [], f"{len(missing)} requests sent before the last commit are not in the file"
    in_flight = [r for r in rows.values() if r.status is RequestStatus.IN_FLIGHT]
    assert in_flight, "hard requests at speed 1 run for seconds: some were in flight at the kill"
    assert any(r.reasoning_tokens > 0 for r in in_flight)  # their progress at the last commit is kept


def test_a_bad_trace_is_refused_before_any_engine_starts(tmp_path: Path) -> None:
    """The schedule's files are read and checked before the engine is launched: one message naming the
    file and column, and no engine start-up line (before, the simulator started first)."""
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp,x\nabc,1\n")
    f = tmp_path / "bt.toml"
    f.write_text(
        f'name = "bt"\n[engine]\nkind = "sim"\n[arrival]\nprocess = "trace"\ntrace_file = "{trace}"\n'
        'trace_format = "burstgpt"\n[[classes]]\nname = "a"\nprompts = "math-easy"\nmax_tokens = 64\n'
    )
    p = rllmtop("run", str(f), "--headless", "--no-record")
    assert_user_error(p, str(trace), "Timestamp")
    assert "starting" not in p.stderr and "engine:" not in p.stderr
