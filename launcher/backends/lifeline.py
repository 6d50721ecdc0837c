"""Nothing outlives the launcher: every process of a run dies with it, even under kill -9.

torchrun, accelerate and the deepspeed launcher each start the ranks in their own way (torchrun
gives every rank a session of its own), and between us and a rank sit agents we do not
control, so no process-group kill or parent-death signal of ours reaches every rank. Two links:

- the processes the launcher starts itself (the engine, the op prebuild) get the kernel's
  parent-death signal: SIGKILL the moment the launcher's thread that started them ends;
- every rank watches the launcher through LAUNCHER_SUPERVISOR ("pid:start time", inherited
  through any engine's environment): a daemon thread ends the rank within POLL_SECONDS of the
  launcher's death. The start time tells a recycled pid from the launcher.

A rank's log tee ends by itself at EOF, once its rank is gone (launcher/monitoring/ranklog.py).
Linux only, like the rest of the process handling; elsewhere both links are absent.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

SUPERVISOR_ENV = "LAUNCHER_SUPERVISOR"
POLL_SECONDS = 0.5
PR_SET_PDEATHSIG = 1
_prctl: Callable[..., int] | None
try:  # resolved now: after fork, in a threaded parent, dlsym could wait on a lock a vanished thread holds
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), or None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]  # fields resume at field 3 (state); 22 is starttime


def supervisor_env() -> dict[str, str]:
    """The environment entry that makes every rank below this process die with it."""
    return {SUPERVISOR_ENV: f"{os.getpid()}:{_start_time(os.getpid())}"}


def die_with_us() -> Callable[[], None] | None:
    """A Popen preexec_fn: the child gets SIGKILL when the calling thread of this process ends."""
    if _prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(128 + signal.SIGKILL)

    return preexec


def _watch(pid: int, started: str) -> None:
    while _start_time(pid) == started:
        time.sleep(POLL_SECONDS)
    os.write(2, f"[launcher] the launcher (pid {pid}) is gone: this rank stops\n".encode())
    os._exit(128 + signal.SIGKILL)


def watch_launcher() -> None:
    """In a rank: end this process soon after the launcher that started the run ends, however it ended."""
    token = os.environ.get(SUPERVISOR_ENV)
    if not token:  # started by hand, outside `launch`
        return
    pid, started = token.split(":", 1)
    if _start_time(int(pid)) != started:
        print(f"[launcher] the launcher (pid {pid}) is gone before this rank started", file=sys.stderr, flush=True)
        os._exit(128 + signal.SIGKILL)
    threading.Thread(target=_watch, args=(int(pid), started), daemon=True, name="launcher-watch").start()
