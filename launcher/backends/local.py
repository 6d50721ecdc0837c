"""Run one node's command of a plan on this machine and supervise it.

The engine (torchrun / accelerate / deepspeed) owns the ranks: when one fails it stops the
others. We own the engine: it runs in its own process group, and Ctrl-C or SIGTERM to the
launcher stops that group: SIGTERM, which the engine passes to the ranks (they save a
checkpoint at the next step end and leave, launcher/monitoring/interrupt.py), then SIGKILL
after GRACE_SECONDS. A kill -9 of the launcher takes the engine and the ranks with it
(backends/lifeline.py), so no process outlives the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from launcher.backends.lifeline import die_with_us, supervisor_env

if TYPE_CHECKING:
    from launcher.plan.types import Plan

GRACE_SECONDS = 20  # for the ranks' last step and checkpoint after SIGTERM


class Interrupted(Exception):
    """SIGINT/SIGTERM reached the launcher; args[0] is the signal number."""


def interrupt(signum, _frame):
    raise Interrupted(signum)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after a grace period."""
    for sig, wait in ((signal.SIGTERM, GRACE_SECONDS), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            if sig == signal.SIGKILL:
                return
        except subprocess.TimeoutExpired:
            continue
    try:  # stragglers of the group after the leader exited (e.g. a rank ignoring SIGTERM)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def prebuild_ops(plan: Plan, env: dict[str, str]) -> None:
    """Compile DeepSpeed's CPU ops in one process before the ranks race to do it."""
    from launcher.backends.prebuild import already_built, ops_for

    ops = ops_for(plan)
    if ops and not already_built(ops, env["TORCH_EXTENSIONS_DIR"]):
        print(f"[launch] preparing DeepSpeed CPU ops {', '.join(ops)} (compiled once, cached)", flush=True)
        subprocess.run(
            [sys.executable, "-m", "launcher.backends.prebuild", *ops], env=env, check=True, preexec_fn=die_with_us()
        )


def run_node(plan: Plan, node_rank: int) -> int:
    """Start node `node_rank`'s command with the plan's environment; return its exit code."""
    argv = plan["nodes"][node_rank]["argv"]
    env = {**os.environ, **plan["env"], **supervisor_env()}
    prebuild_ops(plan, env)
    started = time.time()
    proc = subprocess.Popen(argv, env=env, start_new_session=True, preexec_fn=die_with_us())
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    except Interrupted as stop:
        # stopped here, not in the handler: a wait inside the handler could never reap the engine
        # (the interrupted wait holds Popen's lock) and always sat out both timeouts, 25 s
        for sig in previous:  # a second Ctrl-C must not cut the stop short (it is bounded)
            signal.signal(sig, signal.SIG_IGN)
        print("[launch] stopping: the ranks save a checkpoint at the end of their step", file=sys.stderr, flush=True)
        stop_group(proc)
        sys.exit(128 + stop.args[0])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    stop_group(proc)
    if code != 0:  # the first failing rank's own last lines, after the engine's summary and other ranks' noise
        from launcher.monitoring.ranklog import failure_report

        report = failure_report(plan["output_dir"], started)
        if report:
            print(report, file=sys.stderr, flush=True)
    return code
