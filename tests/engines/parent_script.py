"""A stand-in for rllmtop that launches a fake engine, for the signal tests.

python parent_script.py BEHAVIOUR GRACE -- FAKE_ENGINE_ARGS...

Prints every LogEvent as ``LOG <source> <text>`` and ``READY pgid=N`` once the engine serves, then:
  exception     raise inside ``async with EngineProcess(...)`` (exits 1 via the traceback)
  wait          wait forever (the test sends SIGINT or SIGKILL, or SIGTERM with the default action)
  term-handler  wait forever with a SIGTERM handler that cancels the main task, as the session does
  wait-died     wait for the engine to die on its own, print ``DIED rc=N`` and exit 0
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from rllmtop.clock import Clock
from rllmtop.engines.launch_args import LaunchPlan
from rllmtop.engines.launcher import EngineProcess, reap_all
from rllmtop.events import LogEvent, Record

FAKE = str(Path(__file__).with_name("fake_engine.py"))


def publish(rec: Record) -> None:
    if isinstance(rec, LogEvent):
        print(f"LOG {rec.source} {rec.text}", flush=True)


async def main(behaviour: str, grace: float, fake_args: list[str]) -> int:
    port = int(fake_args[1])
    argv = (sys.executable, FAKE, *fake_args)
    plan = LaunchPlan(
        kind="vllm",
        argv=argv,
        env={},
        host="127.0.0.1",
        port=port,
        base_url=f"http://127.0.0.1:{port}",
        redacted_argv=argv,
    )
    task = asyncio.current_task()
    assert task is not None
    if behaviour == "term-handler":

        def on_term() -> None:
            reap_all()  # what a session's signal handler does first: nothing may outlive us
            task.cancel()

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_term)
    async with EngineProcess(plan, clock=Clock(), publish=publish, name="fake", grace=grace) as engine:
        await engine.wait_ready(30.0)
        print(f"READY pgid={engine.pgid}", flush=True)
        if behaviour == "exception":
            raise RuntimeError("boom in the parent")
        if behaviour == "wait-died":
            await engine.died.wait()
            print(f"DIED rc={engine.returncode}", flush=True)
            return 0
        await asyncio.Event().wait()
    return 0


if __name__ == "__main__":
    behaviour, grace_s, sep, *rest = sys.argv[1:]
    assert sep == "--"
    sys.exit(asyncio.run(main(behaviour, float(grace_s), rest)))
