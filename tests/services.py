"""Real services for the multi-node tests, started and stopped by fixtures: an OpenSSH server on
loopback with a generated key, and a single-node SLURM cluster (munged, slurmctld, slurmd).

The binaries are installed before pytest by .ci/services.sh (`make test` runs it); a fixture only checks them.
Every daemon runs in the foreground as our child and is stopped when its fixture ends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import free_port, run_launch

SSHD = "/usr/sbin/sshd"
SSH_BINARIES = (SSHD, "/usr/bin/ssh", "/usr/bin/ssh-keygen")
SLURM_BINARIES = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/sbatch", "/usr/sbin/munged")


def require_binaries(binaries: tuple[str, ...]) -> None:
    """Fail the test (never install) when a service binary is missing: set-up is .ci/services.sh's job."""
    missing = [b for b in binaries if not Path(b).exists()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed. Fix: run .ci/services.sh as root (it apt-get installs "
            f"openssh-server, openssh-client, slurm-wlm, slurm-client and munge); `make test` runs it"
        )


def wait_for_port(host: str, port: int, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {host}:{port} within {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@dataclass
class SshServer:
    port: int
    key: Path
    hosts: tuple[str, ...] = ("127.0.0.1", "127.0.0.2")

    def recipe_overrides(self) -> list[str]:
        """The recipe keys that make `launch` reach this server: port, key, throwaway known_hosts."""
        options = [
            "-i",
            str(self.key),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
        ]
        return [f"distributed.ssh_port={self.port}", f"distributed.ssh_options=[{', '.join(options)}]"]


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """sshd on 127.0.0.1 and 127.0.0.2 at a free port, accepting one generated key for this user."""
    require_binaries(SSH_BINARIES)
    root = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    port = free_port()
    server = SshServer(port=port, key=root / "client_key")
    (root / "sshd_config").write_text(
        "\n".join(
            [
                f"Port {port}",
                *(f"ListenAddress {h}" for h in server.hosts),
                f"HostKey {root / 'host_key'}",
                f"AuthorizedKeysFile {root / 'authorized_keys'}",
                f"PidFile {root / 'sshd.pid'}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                "StrictModes no",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    with open(root / "sshd.log", "w") as log:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stderr=log)
        try:
            wait_for_port("127.0.0.1", port, proc, "sshd")
            yield server
        finally:
            stop(proc)


@dataclass
class SlurmCluster:
    conf: Path
    env: dict[str, str] = field(default_factory=dict)

    def submit_tiny(self, out: Path, script: Path, *overrides: str) -> str:
        """`launch sbatch --submit` of recipes/sft_tiny.yaml on this one-node cluster, 2 CPU processes; the job id."""
        proc = run_launch(
            ["sbatch", "recipes/sft_tiny.yaml", f"output.dir={out}", f"distributed.master_port={free_port()}",
             "distributed.nproc_per_node=2", "slurm={nodes: 1, gpus_per_node: 0}", *overrides,
             "--script", str(script), "--submit"],
            env=self.env,
            timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout.strip().splitlines()[-1]

    def wait_job(self, job_id: str, timeout: float) -> str:
        """Poll until the job leaves the queue; return its final state (COMPLETED, FAILED, ...)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, env=self.env, timeout=30
            ).stdout
            state = next((f.split("=", 1)[1] for f in out.split() if f.startswith("JobState=")), "")
            if state and state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
                return state
            time.sleep(1)
        subprocess.run(["scancel", job_id], env=self.env, timeout=30)
        raise TimeoutError(f"SLURM job {job_id} still running after {timeout} s (cancelled)")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A one-node SLURM cluster on this machine: CPU node, no cgroups, its own munge socket and key."""
    require_binaries(SLURM_BINARIES)
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    socket_path = root / "munge.sock"
    host = socket.gethostname().split(".")[0]
    ctld_port, slurmd_port = free_port(), free_port()
    conf = root / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "ClusterName=launchertest",
                f"SlurmctldHost={host}(127.0.0.1)",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"SlurmctldPort={ctld_port}",
                f"SlurmdPort={slurmd_port}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={socket_path}",
                f"StateSaveLocation={root / 'state'}",
                f"SlurmdSpoolDir={root / 'spool'}",
                f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'slurmd.pid'}",
                # no cgroups: the test machine may be a container without a writable cgroup tree
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "SwitchType=switch/none",
                "MpiDefault=none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_CPU",
                "ReturnToService=2",
                "SchedulerType=sched/backfill",
                "SlurmctldTimeout=30",
                "SlurmdTimeout=30",
                "InactiveLimit=0",
                "KillWait=10",
                "MinJobAge=300",
                "SlurmctldDebug=info",
                "SlurmdDebug=info",
                f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN",
                f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES",
                "",
            ]
        )
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    procs = []
    logs = {name: open(root / f"{name}.log", "w") for name in ("slurmctld", "slurmd")}
    try:
        munged = subprocess.Popen(
            [
                "munged",
                "-F",
                "--force",
                f"--socket={socket_path}",
                f"--key-file={key}",
                f"--pid-file={root / 'munged.pid'}",
                f"--seed-file={root / 'munged.seed'}",
                f"--log-file={root / 'munged.log'}",
            ],
            stderr=subprocess.DEVNULL,
        )
        procs.append(munged)
        deadline = time.monotonic() + 30
        while not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        ctld = subprocess.Popen(
            ["slurmctld", "-D", "-i", "-c"], env=env, stdout=logs["slurmctld"], stderr=subprocess.STDOUT
        )
        procs.append(ctld)
        wait_for_port("127.0.0.1", ctld_port, ctld, "slurmctld")
        slurmd = subprocess.Popen(
            ["slurmd", "-D", "-N", host], env=env, stdout=logs["slurmd"], stderr=subprocess.STDOUT
        )
        procs.append(slurmd)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the node registers and becomes schedulable
            state = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=env, timeout=30
            ).stdout.strip()
            if state in ("idle", "mixed", "allocated"):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the SLURM node did not become idle (state {state!r}); see {root}/slurmd.log")
        yield SlurmCluster(conf=conf, env=env)
    finally:
        for proc in reversed(procs):
            stop(proc)
        for log in logs.values():
            log.close()
