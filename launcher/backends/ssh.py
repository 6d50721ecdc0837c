"""Hostfile fan-out: node 0 runs here, every other node is started over ssh.

Each remote node runs `python -m launcher.backends.remote_node` in the same working
directory and interpreter path as here (the usual cluster layout: shared or identical
installs). The plan and the forwarded environment travel as one JSON line on the ssh
session's stdin, never through a shell; the only remote shell command is built with
shlex.quote. Every node's output is prefixed with its host. When one node fails, or the
user presses Ctrl-C, every node is stopped: remote nodes see their stdin close and kill
their process tree, the local node's process group is stopped, ssh clients last.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from launcher.backends.lifeline import die_with_us, supervisor_env
from launcher.backends.local import GRACE_SECONDS, Interrupted, interrupt, prebuild_ops, stop_group
from launcher.backends.proctree import become_subreaper, kill_descendants
from launcher.errors import RecipeError, listing

if TYPE_CHECKING:
    from launcher.plan.types import NodeCommand, Plan
    from launcher.recipe.types import DistributedSection

CONNECT_TIMEOUT = 10  # seconds for ssh to reach a host
POLL_SECONDS = 0.2
SETTLE_SECONDS = 5  # after a first node failure, to see which others fail with it


def ssh_argv(dist: DistributedSection, host: str) -> list[str]:
    """ssh up to the host name: never prompts (BatchMode), gives up on a dead host, notices a dropped link."""
    argv = [
        "ssh",
        "-T",
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={CONNECT_TIMEOUT}",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=4",
    ]
    if dist["ssh_port"] is not None:
        argv += ["-p", str(dist["ssh_port"])]
    return [*argv, *dist["ssh_options"], host]


def remote_command(cwd: str) -> str:
    """The one shell line the remote login shell runs, every part quoted."""
    return f"cd {shlex.quote(cwd)} && exec {shlex.quote(sys.executable)} -m launcher.backends.remote_node"


def forwarded_env(dist: DistributedSection) -> dict[str, str]:
    """The values of distributed.env_forward in this shell (unset names are not sent; the names were
    checked by build_plan)."""
    return {name: os.environ[name] for name in dist["env_forward"] if name in os.environ}


def _check_host(dist: DistributedSection, host: str) -> str | None:
    """Why the host cannot be used, or None: its name must resolve and ssh must log in without a prompt."""
    config = subprocess.run([*ssh_argv(dist, host)[:-1], "-G", host], capture_output=True, text=True, timeout=30)
    real = next((line.split(None, 1)[1] for line in config.stdout.splitlines() if line.startswith("hostname ")), host)
    try:
        socket.getaddrinfo(real, None)
    except socket.gaierror as err:
        return f"unknown host {host}" + (f" (ssh config hostname {real})" if real != host else "") + f": {err.strerror}"
    probe = subprocess.run(
        [*ssh_argv(dist, host), "true"],
        capture_output=True,
        text=True,
        timeout=CONNECT_TIMEOUT + 20,
        stdin=subprocess.DEVNULL,
    )
    if probe.returncode != 0:
        detail = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else f"exit code {probe.returncode}"
        return f"cannot ssh to {host}: {detail}"
    return None


def check_hosts(plan: Plan) -> None:
    """Before anything starts: every remote host resolves and accepts ssh (in parallel)."""
    dist = plan["recipe"]["distributed"]
    hosts = [node["host"] for node in plan["nodes"][1:]]
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(hosts)))) as pool:
        problems = [p for p in pool.map(lambda h: _check_host(dist, h), hosts) if p]
    if problems:
        raise RecipeError(
            f"distributed.hostfile {dist['hostfile']}: "
            + listing(problems, sep="; ")
            + ". Fix: check the host names, distributed.ssh_port / ssh_options, and that "
            "`ssh HOST true` works from here without a password prompt"
        )


@dataclass
class NodeRun:
    node_rank: int
    host: str
    proc: subprocess.Popen

    @property
    def remote(self) -> bool:
        return self.node_rank > 0


def _stream(run: NodeRun, lock: threading.Lock) -> None:
    """Copy a node's output to ours, each line prefixed with its host."""
    assert run.proc.stdout is not None  # started with stdout=PIPE
    for line in iter(run.proc.stdout.readline, ""):
        with lock:
            sys.stdout.write(f"[{run.host}] {line}" if line.endswith("\n") else f"[{run.host}] {line}\n")
            sys.stdout.flush()


def _host(node: NodeCommand) -> str:
    """The host of a hostfile plan's node (build_plan names one for every node of such a plan)."""
    assert node["host"] is not None, f"node {node['node_rank']} of a hostfile plan has no host"
    return node["host"]


def _start(plan: Plan, runs: list[NodeRun]) -> None:
    """Start node 0 here and the others over ssh, appending each to runs as soon as it exists."""
    dist = plan["recipe"]["distributed"]
    env = {**os.environ, **plan["env"], **supervisor_env()}
    pipes: dict[str, Any] = dict(
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1, start_new_session=True
    )  # Ctrl-C reaches only us; we stop the nodes in order
    runs.append(
        NodeRun(
            0,
            _host(plan["nodes"][0]),
            subprocess.Popen(plan["nodes"][0]["argv"], env=env, preexec_fn=die_with_us(), **pipes),
        )
    )
    header = {"plan": plan, "env": forwarded_env(dist)}
    for node in plan["nodes"][1:]:
        proc = subprocess.Popen(
            [*ssh_argv(dist, _host(node)), remote_command(os.getcwd())], stdin=subprocess.PIPE, **pipes
        )
        runs.append(NodeRun(node["node_rank"], _host(node), proc))
        assert proc.stdin is not None  # started with stdin=PIPE
        try:
            proc.stdin.write(json.dumps({**header, "node_rank": node["node_rank"]}) + "\n")
            proc.stdin.flush()
        except BrokenPipeError:  # ssh already gave up: its exit code and message are reported below
            pass


def _stop_all(runs: list[NodeRun]) -> None:
    """Remote nodes stop when their stdin closes; the local group is stopped here; ssh clients last."""
    for run in runs:
        if run.remote and run.proc.stdin and not run.proc.stdin.closed:
            try:
                run.proc.stdin.close()
            except BrokenPipeError:
                pass
    stop_group(runs[0].proc)
    deadline = time.monotonic() + GRACE_SECONDS + 10
    for run in runs[1:]:
        try:
            run.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:  # the remote end did not answer: dropping the link stops it too
            stop_group(run.proc)
    kill_descendants()


def _supervise(runs: list[NodeRun]) -> list[NodeRun]:
    """Wait until every node succeeded (returns []) or one failed. A rank's death breaks its peers'
    collectives on the other nodes within moments, so failures seen in a short window after the
    first are returned too, in the order they were seen: the cause is among them, usually first."""
    failed: list[NodeRun] = []
    settle_until = None
    while True:
        failed += [r for r in runs if r not in failed and r.proc.poll() not in (None, 0)]
        if failed and settle_until is None:
            settle_until = time.monotonic() + SETTLE_SECONDS
        if settle_until is not None and (
            time.monotonic() >= settle_until or all(r.proc.poll() is not None for r in runs)
        ):
            return failed
        if all(r.proc.poll() == 0 for r in runs):
            return []
        time.sleep(POLL_SECONDS)


def run_hostfile(plan: Plan) -> int:
    """Start every node of a hostfile plan (hosts already checked), supervise them, stop all when one
    fails; return the exit code."""
    become_subreaper()
    prebuild_ops(plan, {**os.environ, **plan["env"]})
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    lock = threading.Lock()
    runs: list[NodeRun] = []
    streams: list[threading.Thread] = []
    code = 0
    try:
        _start(plan, runs)
        for run in runs:
            streams.append(threading.Thread(target=_stream, args=(run, lock), daemon=True))
            streams[-1].start()
        failed = _supervise(runs)
        if failed:
            code = failed[0].proc.returncode
            for run in failed:
                how = (
                    "could not be reached or lost its ssh link"
                    if run.remote and run.proc.returncode == 255
                    else "failed"
                )
                print(
                    f"[launch] node {run.node_rank} ({run.host}) {how} with exit code {run.proc.returncode}",
                    file=sys.stderr,
                    flush=True,
                )
            print("[launch] stopping the other nodes", file=sys.stderr, flush=True)
    except Interrupted as stop_signal:
        code = 128 + stop_signal.args[0]
        print("[launch] interrupted: stopping every node", file=sys.stderr, flush=True)
    finally:
        for sig in previous:  # a second Ctrl-C must not cut the teardown short (it is bounded by the grace period)
            signal.signal(sig, signal.SIG_IGN)
        if runs:
            _stop_all(runs)
            for thread in streams:
                thread.join(timeout=5)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code
