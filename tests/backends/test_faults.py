"""Stopping a run from outside, through the real CLI and real processes: a kill -9 of `launch`
leaves no process of the run behind (every engine, and a hostfile run over a real sshd), and a
SIGTERM stops the run within 10 s with a checkpoint that a second `launch` resumes from."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from launcher.plan import node_plan_file
from tests.conftest import ROOT, free_port, wait_timed
from tests.services import slurm, sshd  # noqa: F401  (fixtures)

TINY = "recipes/sft_tiny.yaml"
# a run that would train for hours: small steps, no scheduled checkpoint, a step logged each time
ENDLESS = [
    "train.max_steps=100000",
    "train.save_steps=100000",
    "train.logging_steps=1",
    "data.cutoff_len=64",
    "train.micro_batch_size=2",
    "train.grad_accum=1",
    "train.gradient_checkpointing=false",
    "output.report_to=[none]",
]
STOP_BOUND = 10  # seconds: the bound for both the kill -9 and the SIGTERM stop


def _start(out: Path, log: Path, *overrides: str) -> subprocess.Popen:
    args = [TINY, f"output.dir={out}", f"distributed.master_port={free_port()}", *ENDLESS, *overrides]
    return subprocess.Popen(
        [sys.executable, "-m", "launcher.cli", *args], cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT
    )


def _wait_for_steps(proc: subprocess.Popen | None, log: Path, steps: int = 2, timeout: float = 600) -> None:
    """Until `log` shows `steps` training steps; `proc` (when we started it) must not end before."""
    deadline = time.monotonic() + timeout
    while not log.exists() or log.read_text(errors="replace").count("[train] step ") < steps:
        assert proc is None or proc.poll() is None, f"the run ended before training:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no training step within {timeout} s:\n{log.read_text()[-4000:]}"
        time.sleep(0.2)


def _cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


def _survivors(tree: list[psutil.Process], out: Path, within: float, marks: tuple[str, ...] = ()) -> list[str]:
    """Processes of the run still alive after `within` seconds: the tree seen before the stop, and
    anything whose command line names the run's output dir (its engine, ranks and log tees) or a mark."""
    deadline = time.monotonic() + within
    while True:
        alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        alive += [
            p
            for p in psutil.process_iter()
            if p not in alive and any(mark in _cmdline(p) for mark in (str(out), *marks))
        ]
        if not alive or time.monotonic() >= deadline:
            return [f"{p.pid} {_cmdline(p)[:200]}" for p in alive if p.is_running()]
        time.sleep(0.2)


def _tree(proc: subprocess.Popen, out: Path) -> list[psutil.Process]:
    """Every process below `launch`, with at least the engine, both ranks and their log tees."""
    tree = psutil.Process(proc.pid).children(recursive=True)
    workers = [p for p in tree if "launcher.worker" in _cmdline(p)]
    tees = [p for p in tree if "launcher.monitoring.ranklog" in _cmdline(p)]
    assert len(workers) >= 2 and len(tees) >= 2, [_cmdline(p)[:120] for p in tree]
    return tree


def _kill_launcher_and_check(proc: subprocess.Popen, out: Path, log: Path) -> None:
    tree = _tree(proc, out)
    proc.kill()
    proc.wait(timeout=5)
    left = _survivors(tree, out, STOP_BOUND)
    for pid in (p.pid for p in tree):  # leave nothing behind for the next test whatever happened
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, (
        f"alive {STOP_BOUND} s after kill -9 of launch:\n" + "\n".join(left) + "\n" + log.read_text()[-3000:]
    )


@pytest.mark.multiproc
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate", "deepspeed"])
def test_kill_9_of_launch_leaves_no_process(launcher, tmp_path, warm):
    """Each engine starts its ranks its own way (torchrun: a session each); all must die with `launch`."""
    out, log = tmp_path / "run", tmp_path / "launch.log"
    proc = _start(out, log, f"distributed.launcher={launcher}")
    try:
        _wait_for_steps(proc, log)
        _kill_launcher_and_check(proc, out, log)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.services
def test_kill_9_of_launch_stops_a_hostfile_run(sshd, tmp_path, warm):
    """Node 0's `launch` killed: its ranks die with it, and the node started over ssh stops too."""
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("127.0.0.1 slots=1\n127.0.0.2 slots=1\n")
    out, log = tmp_path / "run", tmp_path / "launch.log"
    proc = _start(out, log, f"distributed.hostfile={hosts}", "distributed.nnodes=2", *sshd.recipe_overrides())
    try:
        _wait_for_steps(proc, log)
        # node 1's processes hang below sshd: its ranks name their node-local plan, and remote_node is their parent
        remote_plan = node_plan_file(str(out.resolve()), 1)
        remote = [p for p in psutil.process_iter() if remote_plan in _cmdline(p)]
        remote_node = {p.parent() for p in remote} - set(remote)
        assert [p for p in remote_node if "launcher.backends.remote_node" in _cmdline(p)], [_cmdline(p) for p in remote]
        tree = psutil.Process(proc.pid).children(recursive=True) + remote + list(remote_node)
        proc.kill()
        proc.wait(timeout=5)
        # the remote node stops the graceful way (its ssh stdin closed): its grace period bounds it
        left = _survivors(tree, out, 30, marks=(remote_plan,))
        assert not left, "alive 30 s after kill -9 of node 0's launch:\n" + "\n".join(left)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.services
def test_kill_9_of_launch_inside_a_slurm_job_leaves_no_process(slurm, tmp_path, warm):
    """`launch sbatch --submit`: the job's `launch` (the srun task) killed with -9, its engine and
    ranks must go too, whatever SLURM's process tracking does with the step."""
    out, script = tmp_path / "run", tmp_path / "job.sbatch"
    job = slurm.submit_tiny(out, script, *ENDLESS)
    log = tmp_path / f"job-{job}.out"
    try:
        _wait_for_steps(None, log)
        job_launch = [
            p
            for p in psutil.process_iter()
            if p.name().startswith("python")  # not srun's own line
            and "launcher.cli train" in _cmdline(p)
            and str(out) in _cmdline(p)
        ]
        assert len(job_launch) == 1, [_cmdline(p)[:200] for p in job_launch]
        tree = job_launch[0].children(recursive=True)
        assert len([p for p in tree if "launcher.worker" in _cmdline(p)]) >= 2, [_cmdline(p)[:120] for p in tree]
        job_launch[0].kill()
        left = _survivors(tree, out, STOP_BOUND)
        for p in tree:
            if p.is_running():
                p.kill()
        assert not left, f"alive {STOP_BOUND} s after kill -9 of the job's launch:\n" + "\n".join(left)
    finally:
        subprocess.run(["scancel", job], env=slurm.env, timeout=30)


@pytest.mark.multiproc
def test_sigterm_stops_within_10_s_with_a_checkpoint_that_resumes(tmp_path, warm):
    out, log = tmp_path / "run", tmp_path / "launch.log"
    proc = _start(out, log)
    try:
        _wait_for_steps(proc, log)
        tree = _tree(proc, out)
        proc.send_signal(signal.SIGTERM)
        code, took = wait_timed(proc, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    assert code == 128 + signal.SIGTERM, output[-4000:]
    assert took < STOP_BOUND, f"launch took {took:.1f} s to stop after SIGTERM:\n{output[-4000:]}"
    assert not _survivors(tree, out, 0)
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(checkpoints) == 1, f"the stop saves one checkpoint (no step reached save_steps): {checkpoints}"
    step = int(checkpoints[0].name.split("-")[1])
    assert step >= 2 and f"stopped by SIGTERM: {checkpoints[0]}" in output, output[-4000:]
    assert not (out / "adapter_model.safetensors").exists(), "an interrupted run must not look finished"

    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "launcher.cli",
            TINY,
            f"output.dir={out}",
            f"distributed.master_port={free_port()}",
            *ENDLESS,
            f"train.max_steps={step + 2}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"[launch] resuming from {checkpoints[0]}" in resumed.stdout
    assert "[train] step 1/" not in resumed.stdout and f"[train] step {step + 1}/{step + 2}" in resumed.stdout, (
        f"the second run continues after step {step}:\n{resumed.stdout[-3000:]}"
    )
    logged = [json.loads(line)["step"] for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert logged == sorted(set(logged)) and logged[-1] == step + 2, logged
    assert (out / "adapter_model.safetensors").exists()
