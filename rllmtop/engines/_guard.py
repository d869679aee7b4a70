"""The engine's guard: a tiny stdlib-only parent that makes sure a launched engine never outlives rllmtop.

Run as ``python -I _guard.py GRACE PARENT_PID NICE -- ENGINE ARGV...`` by :mod:`rllmtop.engines.launcher`,
which starts it as the leader of a new session and process group. The guard:

* asks the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``) and also treats EOF on its
  stdin (a pipe only rllmtop holds) as "rllmtop is gone" -- either way even ``kill -9`` of rllmtop tears
  the engine down;
* becomes a child subreaper (``PR_SET_CHILD_SUBREAPER``), so the engine's orphaned workers are
  re-parented to it and reaped here rather than left behind;
* with NICE > 0, lowers the CPU priority of its session before the engine starts: the session's
  autogroup (``/proc/self/autogroup``; with autogroups the kernel shares CPU between sessions, and a
  task's own nice value counts only inside its session) and its own nice value, which the engine and
  its workers inherit. Measured with a CPU vLLM on 2 cores: at 0, rllmtop's client waited up to 5.5 s
  on the run queue; at 10, at most 18 ms;
* starts the engine in the guard's own process group (so one group signal from rllmtop reaches both),
  with stdin on /dev/null and stdout/stderr inherited;
* on SIGTERM/SIGINT/SIGHUP, lifeline EOF, or the engine exiting on its own: SIGTERM to the whole group,
  then after GRACE seconds SIGKILL to every process left in the group or re-parented to it;
* exits once no descendant is left, with the engine's exit status (a signal death is re-raised), so its
  parent sees the same return code it would have seen for the engine itself.

Linux gives the full guarantee; elsewhere the prctl parts are skipped and the lifeline pipe remains.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
EXIT_CANNOT_START = 127
_KILL_ROUND = 0.1  # seconds between SIGKILL rounds once the grace period is over


def _prctl(option: int, arg: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, arg, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _say(msg: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"rllmtop-guard: {msg}\n".encode())


def _leftovers(me: int, pgid: int) -> list[int]:
    """Processes still in our group or re-parented to us (not counting us and zombies)."""
    found: list[int] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) < 3 or fields[0] == b"Z":
            continue
        if int(fields[1]) == me or int(fields[2]) == pgid:
            found.append(int(name))
    return found


def _signal_all(me: int, pgid: int, sig: int) -> None:
    pids = _leftovers(me, pgid)
    if not pids and not os.path.isdir("/proc"):
        # no /proc: the group signal is all we have (it reaches us too; our handlers cope with TERM)
        with contextlib.suppress(OSError):
            os.killpg(pgid, sig)
        return
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def _lower_priority(nice: int) -> None:
    """Give this session (and so the engine) ``nice``: the autogroup where the kernel has them, and the
    process's own value either way. A refusal is said, not fatal: the engine then runs unchanged."""
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))
    except FileNotFoundError:
        pass  # no autogroups (or not Linux): the nice value below is what counts
    except OSError as e:
        _say(f"cannot set the session's autogroup nice to {nice}: {e.strerror or e}")
    try:
        os.nice(nice)
    except OSError as e:
        _say(f"cannot lower the engine's priority by {nice}: {e.strerror or e}")


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[3] != "--":
        _say("usage: _guard.py GRACE PARENT_PID NICE -- COMMAND [ARGS...]")
        return 2
    grace = float(argv[0])
    parent = int(argv[1])
    nice = int(argv[2])
    cmd = argv[4:]
    me = os.getpid()
    pgid = os.getpgrp()

    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # rllmtop died before we could ask to be told
        _say("rllmtop exited before the engine started; not starting it")
        return 1
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    if nice > 0:
        _lower_priority(nice)

    stop = False

    def on_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_stop)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # only to wake the selector

    try:
        engine = os.posix_spawnp(
            cmd[0],
            cmd,
            dict(os.environ),
            file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)],
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT, signal.SIGHUP),
            setsigmask=(),
        )
    except OSError as e:
        _say(f"cannot start {cmd[0]!r}: {e.strerror or e}")
        return EXIT_CANNOT_START

    sel = selectors.DefaultSelector()
    sel.register(wake_r, selectors.EVENT_READ)
    with contextlib.suppress(OSError, ValueError):  # no stdin to watch when run by hand: PDEATHSIG remains
        sel.register(0, selectors.EVENT_READ)

    status: int | None = None
    tearing_down = False
    kill_at: float | None = None

    while True:
        # reap everything that ended: the engine and any orphan re-parented to us
        no_children = False
        while True:
            try:
                pid, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                no_children = True
                break
            if pid == 0:
                break
            if pid == engine:
                status = st
        if no_children and (status is not None or tearing_down):
            break
        if not tearing_down and (stop or status is not None):
            tearing_down = True
            kill_at = time.monotonic() + grace
            # asked to stop, or the engine ended on its own and its workers must not linger
            _signal_all(me, pgid, signal.SIGTERM)
        timeout: float | None = None
        if kill_at is not None:
            left = kill_at - time.monotonic()
            if left <= 0:
                if not no_children:
                    _say(f"processes still running {grace:g}s after SIGTERM; sending SIGKILL")
                _signal_all(me, pgid, signal.SIGKILL)
                kill_at = time.monotonic() + _KILL_ROUND
                left = _KILL_ROUND
            timeout = left
        for key, _ in sel.select(timeout):
            if key.fd == 0:
                try:
                    data = os.read(0, 4096)
                except OSError:
                    data = b""
                if not data:  # rllmtop closed the lifeline or died
                    stop = True
                    sel.unregister(0)
            else:
                with contextlib.suppress(OSError):
                    while os.read(wake_r, 512):
                        pass

    if status is None:
        return 1
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.set_wakeup_fd(-1)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(me, sig)
        return 128 + sig
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
