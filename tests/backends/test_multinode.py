"""Many machines, for real: two torchrun agents rendezvousing on loopback (manual node ranks),
hostfile fan-out through a real sshd, a real one-node SLURM cluster running `launch sbatch`,
and torchrun's elastic restart resuming from the last complete checkpoint. Every trained
adapter is compared with one uninterrupted single-node run of the same global batch and seed.
Refusals (bad hostfiles, hosts, ports) are checked before any process starts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from launcher.checkpoint.manifest import read_manifests
from launcher.cli import main as launch_main
from launcher.plan import node_plan_file
from tests.conftest import ROOT, free_port, run_launch, wait_timed
from tests.services import slurm, sshd  # noqa: F401  (fixtures)

TINY = "recipes/sft_tiny.yaml"
# world 2 everywhere (2x1 or 1x2 processes), micro 2 x accum 1: global batch 4, 6 steps, checkpoint at 3;
# ZeRO-3, where every rank writes its own model shard: what a node without a shared disk has to publish
SMALL = [
    "distributed.zero=3",
    "train.max_steps=6",
    "data.cutoff_len=64",
    "data.max_samples=32",
    "train.micro_batch_size=2",
    "train.grad_accum=1",
    "train.save_steps=3",
    "train.logging_steps=1",
    "output.report_to=[none]",
]
TWO_NODES = ["distributed.nnodes=2", "distributed.nproc_per_node=1"]


def _popen_launch(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "launcher.cli", *args],
        cwd=ROOT,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _assert_same_adapter(out: Path, reference: Path) -> None:
    expected, got = load_file(reference / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.allclose(got[key], value, rtol=1e-4, atol=1e-6), f"{key} differs from the single-node run"
    assert any(v.abs().sum() > 0 for k, v in got.items() if "lora_B" in k), "adapter never trained"


def _plan_paths(out: Path, nnodes: int) -> list[str]:
    return [node_plan_file(str(out.resolve()), k) for k in range(nnodes)]


def _leftovers(patterns: list[str]) -> str:
    found = []
    for pattern in patterns:
        found += subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout.splitlines()
    return "\n".join(line for line in found if "pgrep" not in line)


def _rank_pid(plan_file: str, rank: int, timeout: float = 300) -> int:
    """pid of the worker process of one global rank (not its torchrun agent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                if (
                    b"launcher.worker" not in cmdline
                    or plan_file.encode() not in cmdline
                    or b"torch.distributed.run" in cmdline
                ):
                    continue
                if f"RANK={rank}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                    return int(proc.name)
            except OSError:
                continue
        time.sleep(0.2)
    raise TimeoutError(f"no rank {rank} worker for {plan_file}")


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"run ended before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.05)


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_rank():
    """Two "nodes" of one rank on this machine would each take all its cores, the single-node reference's two
    ranks half each: other matmul kernels, other rounding, which Adam amplifies where gradients are near zero.
    Every run here gets one thread per rank (the plan takes the shell's OMP_NUM_THREADS)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory, warm):
    """The uninterrupted single-node run: 1 node x 2 processes, ZeRO-3 LoRA."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = run_launch(
        [TINY, f"output.dir={out}", f"distributed.master_port={free_port()}", "distributed.nproc_per_node=2", *SMALL]
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


@pytest.mark.multiproc
def test_two_agents_with_node_ranks_equal_one_node(reference, tmp_path):
    """Way 1: the same `launch` on two "nodes" with --node-rank / NODE_RANK; c10d rendezvous on loopback."""
    out, port = tmp_path / "run", free_port()
    args = [
        TINY,
        f"output.dir={out}",
        f"distributed.master_port={port}",
        "distributed.master_addr=127.0.0.1",
        *TWO_NODES,
        *SMALL,
    ]
    node1 = _popen_launch(args, tmp_path / "node1.log", env={"NODE_RANK": "1"})
    node0 = _popen_launch([*args, "--node-rank", "0"], tmp_path / "node0.log")
    codes = [node0.wait(timeout=600), node1.wait(timeout=600)]
    logs = {k: (tmp_path / f"node{k}.log").read_text() for k in (0, 1)}
    assert codes == [0, 0], logs[0][-4000:] + "\n----- node 1\n" + logs[1][-4000:]
    assert f"node 1 of 2, rendezvous 127.0.0.1:{port}" in logs[1]
    plan1 = _plan_paths(out, 2)[1]
    assert f"plan: {plan1}" in logs[1], "node 1 reads its own node-local plan copy"
    assert not Path(plan1).exists(), "node 1 removes its plan copy after the run"
    _assert_same_adapter(out, reference)
    # one disk: node 0 alone publishes (node 1 saw node 0's mark), its manifest covers both nodes' files
    for step in (3, 6):
        assert [m["nodes"] for m in read_manifests(out / f"checkpoint-{step}")] == [[0, 1]]


def _node_files(checkpoint: Path) -> tuple[list[str], list[str]]:
    """(manifest names, per-rank shard files) of a published checkpoint on one node's disk: ZeRO's model and
    optimizer states, or FSDP2's DCP files (each rank's __R_0.distcp; the .metadata is the coordinator's, rank 0)."""
    shards = [*checkpoint.glob("global_step6/zero_pp_rank_*"), *checkpoint.glob("*/__*.distcp")]
    return (
        sorted(p.name for p in checkpoint.glob("launcher-manifest-node*.json")),
        sorted(str(p.relative_to(checkpoint)) for p in shards),
    )


NODE_SHARDS = {  # engine case -> the recipe overrides and the shard files rank R publishes
    "zero3": (
        [],
        [
            "global_step6/zero_pp_rank_{r}_mp_rank_00_model_states.pt",
            "global_step6/zero_pp_rank_{r}_mp_rank_00_optim_states.pt",
        ],
    ),
    "fsdp": (
        ["distributed.engine=fsdp", "distributed.zero=0"],
        ["optimizer_0/__{r}_0.distcp", "pytorch_model_fsdp_0/__{r}_0.distcp"],
    ),
}


@pytest.mark.multiproc
@pytest.mark.skipif(os.geteuid() != 0, reason="a private mount namespace (unshare --mount) needs root")
@pytest.mark.parametrize("engine", list(NODE_SHARDS))
def test_nodes_without_a_shared_disk_publish_their_own_shards(reference, tmp_path, engine):
    """Node 1 runs in its own mount namespace with another folder bind-mounted at output.dir, as on a
    machine without the shared file system: each node publishes and rotates (save_total_limit=1) its own
    ranks' files; gathered into one folder, they consolidate and resume (ZeRO-3: to the uninterrupted
    single-node run; FSDP2, whose sums differ from ZeRO's in the last bits: to the run's own final save)."""
    engine_args, shard_files = NODE_SHARDS[engine]
    out, disk1, port = tmp_path / "run", tmp_path / "node1-disk", free_port()
    out.mkdir()
    disk1.mkdir()
    args = [
        TINY,
        f"output.dir={out}",
        f"distributed.master_port={port}",
        "distributed.master_addr=127.0.0.1",
        *TWO_NODES,
        *SMALL,
        *engine_args,
        "train.save_total_limit=1",
    ]
    own_disk = [
        "unshare",
        "--mount",
        "sh",
        "-c",
        'mount --bind "$1" "$2" && shift 2 && exec "$@"',
        "sh",
        str(disk1),
        str(out),
        sys.executable,
        "-m",
        "launcher.cli",
    ]
    node1 = subprocess.Popen(
        [*own_disk, *args, "--node-rank", "1"],
        cwd=ROOT,
        stdout=open(tmp_path / "node1.log", "w"),
        stderr=subprocess.STDOUT,
    )
    node0 = _popen_launch([*args, "--node-rank", "0"], tmp_path / "node0.log")
    codes = [node0.wait(timeout=600), node1.wait(timeout=600)]
    logs = {k: (tmp_path / f"node{k}.log").read_text() for k in (0, 1)}
    assert codes == [0, 0], logs[0][-4000:] + "\n----- node 1\n" + logs[1][-4000:]
    for disk, rank in ((out, 0), (disk1, 1)):
        assert sorted(p.name for p in disk.glob("checkpoint-*")) == ["checkpoint-6"], f"node {rank} rotation"
        assert not (disk / "tmp-checkpoints").exists()
        manifests, shards = _node_files(disk / "checkpoint-6")
        assert manifests == [f"launcher-manifest-node{rank}.json"]
        assert shards == [name.format(r=rank) for name in shard_files]
    single = [TINY, "distributed.nproc_per_node=2", *SMALL, *engine_args]
    if engine == "zero3":  # the manifests' check, the same for every engine
        partial = run_launch([*single, f"output.dir={tmp_path / 'partial'}", f"train.resume={out / 'checkpoint-6'}"])
        assert partial.returncode == 2 and "node(s) [1] published theirs on their own disks" in partial.stderr

    gathered = tmp_path / "gathered" / "checkpoint-6"
    shutil.copytree(out / "checkpoint-6", gathered)
    shutil.copytree(disk1 / "checkpoint-6", gathered, dirs_exist_ok=True)
    consolidated = run_launch(["consolidate", str(gathered), "--out", str(tmp_path / "adapter")])
    assert consolidated.returncode == 0, consolidated.stderr[-3000:]
    _assert_same_adapter(tmp_path / "adapter", out)
    resumed = run_launch(
        [
            *single,
            f"output.dir={tmp_path / 'resumed'}",
            f"distributed.master_port={free_port()}",
            f"train.resume={gathered}",
        ]
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    _assert_same_adapter(tmp_path / "resumed", reference if engine == "zero3" else out)


def _hostfile(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hosts.txt"
    path.write_text(text)
    return path


@pytest.mark.services
def test_hostfile_fan_out_over_ssh_equals_one_node(reference, sshd, tmp_path):
    """Way 2: `launch` on the first host starts node 1 on 127.0.0.2 through a real sshd."""
    hosts = _hostfile(
        tmp_path, "# two loopback addresses of this machine\n127.0.0.1 slots=1\n127.0.0.2 slots=1  # node 1\n"
    )
    out = tmp_path / "run"
    proc = run_launch(
        [
            TINY,
            f"output.dir={out}",
            f"distributed.master_port={free_port()}",
            f"distributed.hostfile={hosts}",
            "distributed.nnodes=2",
            "distributed.env_forward=[LAUNCHER_TEST_MARK]",
            *sshd.recipe_overrides(),
            *SMALL,
        ],
        env={"LAUNCHER_TEST_MARK": "forwarded"},
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert "[127.0.0.2] " in proc.stdout and "[127.0.0.1] " in proc.stdout, (
        "each node's output is prefixed with its host"
    )
    _assert_same_adapter(out, reference)
    assert _leftovers(_plan_paths(out, 2)) == ""


def _long_run_on_two_ssh_nodes(tmp_path: Path, sshd, out: Path, *overrides: str) -> list[str]:
    """launch arguments of a 500-step run into `out` on two loopback "hosts", node 1 started through sshd."""
    hosts = _hostfile(tmp_path, "127.0.0.1 slots=1\n127.0.0.2 slots=1\n")
    return [
        TINY,
        f"output.dir={out}",
        f"distributed.master_port={free_port()}",
        f"distributed.hostfile={hosts}",
        "distributed.nnodes=2",
        *sshd.recipe_overrides(),
        *SMALL,
        "train.max_steps=500",
        *overrides,
    ]


@pytest.mark.services
def test_killed_remote_node_stops_every_node(sshd, tmp_path, warm):
    """SIGKILL the rank on the ssh-started node mid-run: the launcher names the node, exits non-zero
    within 60 s, and no process of the run is left on either "host"."""
    out = tmp_path / "run"
    args = _long_run_on_two_ssh_nodes(tmp_path, sshd, out, "train.save_steps=2")
    log = tmp_path / "launch.log"
    proc = _popen_launch(args, log)
    try:
        _wait_for(out / "checkpoint-2" / "trainer_state.json", proc)  # training is under way
        remote_plan = _plan_paths(out, 2)[1]
        os.kill(_rank_pid(remote_plan, rank=1), signal.SIGKILL)
        code, took = wait_timed(proc, 120)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    assert code != 0, output[-5000:]
    assert took < 60, f"the launcher outlived the killed node by {took:.0f} s"
    assert "node 1 (127.0.0.2) failed with exit code" in output, output[-5000:]
    assert _leftovers([*_plan_paths(out, 2), "launcher.backends.remote_node"]) == ""


@pytest.mark.services
def test_ctrl_c_stops_every_node(sshd, tmp_path, warm):
    """SIGINT to the launcher (Ctrl-C) once both nodes run their ranks: every node stops, nothing is left."""
    out = tmp_path / "run"
    proc = _popen_launch(_long_run_on_two_ssh_nodes(tmp_path, sshd, out), tmp_path / "launch.log")
    try:
        for plan_file, rank in zip(_plan_paths(out, 2), (0, 1)):
            _rank_pid(plan_file, rank)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 128 + signal.SIGINT and "interrupted: stopping every node" in (tmp_path / "launch.log").read_text()
    assert _leftovers([*_plan_paths(out, 2), "launcher.backends.remote_node"]) == ""


@pytest.mark.multiproc
def test_elastic_restart_resumes_from_last_checkpoint(reference, tmp_path):
    """Way 4: max_restarts 1; SIGKILL rank 1 after checkpoint-3: torchrun restarts the group, train.resume
    auto continues from checkpoint-3, and the final adapter equals the uninterrupted run's."""
    out = tmp_path / "run"
    log = tmp_path / "launch.log"
    proc = _popen_launch(
        [
            TINY,
            f"output.dir={out}",
            f"distributed.master_port={free_port()}",
            "distributed.max_restarts=1",
            "distributed.nproc_per_node=2",
            *SMALL,
        ],
        log,
    )
    checkpoint = out / "checkpoint-3" / "trainer_state.json"
    try:
        _wait_for(out / "plan.json", proc)
        rank1 = _rank_pid(str(out / "plan.json"), rank=1)  # found before the checkpoint: the kill follows it at once
        _wait_for(checkpoint, proc)
        os.kill(rank1, signal.SIGKILL)
        saved = checkpoint.stat()
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    assert code == 0, output[-6000:]
    assert "exitcode: -9" in output, "torchrun did not see the killed rank"
    # resumed, not retrained from step 0: checkpoint-3 was not written again
    assert (checkpoint.stat().st_ino, checkpoint.stat().st_mtime_ns) == (saved.st_ino, saved.st_mtime_ns)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and [e["step"] for e in state["log_history"] if "loss" in e] == list(range(1, 7))
    _assert_same_adapter(out, reference)


@pytest.mark.services
def test_sbatch_job_runs_on_a_real_slurm_cluster(reference, slurm, tmp_path):
    """Way 3: `launch sbatch --submit` on a one-node CPU cluster, to an output dir whose name would
    break an unquoted script; the job trains the same adapter and its log shows the run."""
    out = tmp_path / "we$ird dir; 'quoted'"
    script = tmp_path / "job.sbatch"
    job = slurm.submit_tiny(out, script, *SMALL)
    assert "--gpus" not in script.read_text(), "a CPU-only job must not ask for GPUs"
    state = slurm.wait_job(job, timeout=600)
    job_log = (tmp_path / f"job-{job}.out").read_text()
    assert state == "COMPLETED", job_log[-5000:]
    assert f"SLURM job {job}: 1 node(s)" in job_log and "[launch] node 0 of 1" in job_log
    _assert_same_adapter(out, reference)


@pytest.mark.unit
def test_sbatch_script_is_valid_bash_and_quotes_hostile_values(tmp_path):
    hostile = "x'; touch /tmp/pwned; echo '$(id)"
    script = tmp_path / "job.sbatch"
    code = launch_main(
        [
            "sbatch",
            TINY,
            f"output.dir={tmp_path / hostile}",
            "train.lr=1e-4",
            "slurm={nodes: 2, gpus_per_node: 8, partition: gpu, account: proj-1, time: '1-00:00:00', "
            "extra: [--exclusive, '#SBATCH --mem=0']}",
            "--script",
            str(script),
        ]
    )
    assert code == 0
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    sbatch_lines = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --nodes=2" in sbatch_lines and "#SBATCH --gpus-per-node=8" in sbatch_lines
    assert "#SBATCH --exclusive" in sbatch_lines and "#SBATCH --mem=0" in sbatch_lines
    assert not any("$" in line for line in sbatch_lines), "sbatch does not expand variables in #SBATCH lines"
    srun = next(line for line in text.splitlines() if line.startswith("srun "))
    import shlex

    words = shlex.split(srun)  # the shell's own reading of the line: the hostile value is one literal word
    assert f"output.dir={tmp_path / hostile}" in words


@pytest.mark.unit
@pytest.mark.parametrize(
    "slurm_section,problem",
    [
        ("{partition: 'gpu;reboot'}", "slurm.partition"),
        ("{time: '1 day'}", "slurm.time"),
        ("{extra: ['--comment=$HOME']}", "slurm.extra"),
        ("{extra: ['echo hi']}", "slurm.extra"),
    ],
)
def test_sbatch_refuses_values_it_cannot_write_literally(slurm_section, problem, tmp_path, capsys):
    code = launch_main(["sbatch", TINY, f"slurm={slurm_section}", "--script", str(tmp_path / "job.sbatch")])
    assert code == 2 and problem in capsys.readouterr().err
    assert not (tmp_path / "job.sbatch").exists()


@pytest.mark.unit
@pytest.mark.parametrize(
    "text,extra,problem",
    [
        ("127.0.0.1 slots=1\nnode2 slot=1\n", [], "hosts.txt:2: 'node2 slot=1' is not a hostfile line"),
        ("127.0.0.1 slots=1\nnode2 slots=0\n", [], "hosts.txt:2: node2 slots=0"),
        ("127.0.0.1 slots=1\nnode2;reboot slots=1\n", [], "hosts.txt:2: host 'node2;reboot' is not a plain host name"),
        ("127.0.0.1 slots=1\n-oProxyCommand=x slots=1\n", [], "is not a plain host name"),
        (
            "127.0.0.1 slots=1\n127.0.0.2 slots=1\n127.0.0.3 slots=1\n",
            [],
            "distributed.nnodes = 2 but distributed.hostfile",
        ),
        ("127.0.0.1 slots=1\n127.0.0.2 slots=2\n", [], "different slots"),
        (
            "127.0.0.1 slots=1\n127.0.0.2 slots=1\n",
            ["--include", "127.0.0.1,node9"],
            "--include 127.0.0.1,node9: node9 not in the hostfile",
        ),
        ("127.0.0.1 slots=1\nno-such-host.invalid slots=1\n", [], "unknown host no-such-host.invalid"),
    ],
)
def test_bad_hostfiles_are_refused_before_launch(text, extra, problem, tmp_path, capsys):
    hosts = _hostfile(tmp_path, text)
    out = tmp_path / "run"
    code = launch_main(
        [
            TINY,
            f"output.dir={out}",
            f"distributed.hostfile={hosts}",
            "distributed.nnodes=2",
            f"distributed.master_port={free_port()}",
            *extra,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert problem in err and err.count("\n") == 1, err
    assert not out.exists(), "nothing may start (or be written) for a refused hostfile"


@pytest.mark.multiproc
def test_port_in_use_is_refused_before_launch(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = run_launch([TINY, f"output.dir={tmp_path / 'run'}", f"distributed.master_port={port}"], timeout=60)
    assert proc.returncode == 2
    assert f"distributed.master_port = {port} is already in use" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.unit
def test_manual_nodes_need_a_master_and_a_node_rank(tmp_path, capsys):
    assert launch_main([TINY, "distributed.nnodes=2"]) == 2
    assert "needs distributed.master_addr" in capsys.readouterr().err
    assert launch_main([TINY, "distributed.nnodes=2", "distributed.master_addr=10.1.2.3"]) == 2
    assert "--node-rank K" in capsys.readouterr().err
    assert launch_main([TINY, "distributed.nnodes=2", "distributed.master_addr=10.1.2.3", "--node-rank", "2"]) == 2
    assert "--node-rank 2 is outside 0..1" in capsys.readouterr().err


@pytest.mark.unit
def test_plan_prints_every_nodes_command(tmp_path, capsys):
    hosts = _hostfile(tmp_path, "127.0.0.1 slots=1\n127.0.0.2 slots=1\n127.0.0.3 slots=1\n")
    assert (
        launch_main(["plan", TINY, f"distributed.hostfile={hosts}", "distributed.nnodes=2", "--exclude", "127.0.0.2"])
        == 0
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("node ")]
    assert len(lines) == 2
    assert (
        lines[0].startswith("node 0 on 127.0.0.1")
        and "--node-rank=0" in lines[0]
        and "--master-addr=127.0.0.1" in lines[0]
    )
    assert lines[1].startswith("node 1 on 127.0.0.3") and "--node-rank=1" in lines[1] and "plan-node1.json" in lines[1]


@pytest.mark.unit
def test_slurm_jobs_that_would_hang_are_refused():
    """`launch` once in the batch script of a 2-node job, or srun with several tasks per node: the
    nodes would never all join. The environment is what SLURM sets in each case."""
    from launcher.backends.slurm import allocation
    from launcher.recipe.load import RecipeError

    batch = {"SLURM_JOB_ID": "7", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_NODEID": "0"}
    with pytest.raises(RecipeError, match="srun --ntasks-per-node=1 launch RECIPE"):
        allocation(batch)
    step = {
        **batch,
        "SLURM_STEP_ID": "0",
        "SLURM_STEP_NUM_NODES": "2",
        "SLURM_STEP_NUM_TASKS": "4",
        "SLURM_NODEID": "1",
        "SLURM_STEP_NODELIST": "n[1-2]",
    }
    with pytest.raises(RecipeError, match="runs 4 tasks on 2 node"):
        allocation(step)
    assert allocation({**step, "SLURM_STEP_NUM_TASKS": "2"}) == {
        "job_id": "7",
        "nnodes": 2,
        "node_rank": 1,
        "nodelist": "n[1-2]",
    }
