"""Defaults that fit a person's habits (issue 16): what a user leaves out is taken from what the
recipe already says, and a half-given multi-node setting says what else it needs."""

from __future__ import annotations

import re
import socket
import subprocess

import pytest

from launcher.recipe.load import load_recipe
from launcher.recipe.schema import DEFAULT_MASTER_PORT
from tests.conftest import ROOT, run_launch

TINY = "recipes/sft_tiny.yaml"


@pytest.mark.unit
def test_sbatch_without_a_slurm_section_takes_nodes_and_gpus_from_distributed(tmp_path):
    script = tmp_path / "job.sbatch"
    proc = run_launch(
        ["sbatch", TINY, "distributed.nnodes=2", "distributed.nproc_per_node=4", "--script", str(script)], timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    text = script.read_text()
    assert "#SBATCH --nodes=2\n" in text and "#SBATCH --gpus-per-node=4\n" in text
    assert "--partition" not in text and "--account" not in text  # the cluster's defaults


@pytest.mark.unit
def test_sbatch_asks_for_no_guessed_gpus(tmp_path):
    """nproc_per_node auto (decided on the node) and no slurm section: the GPUs to ask for are unknown, so the
    script is refused rather than asking 8 GPUs of a CPU cluster; slurm.gpus_per_node 0 asks for none."""
    script = tmp_path / "job.sbatch"
    proc = run_launch(["sbatch", TINY, "--script", str(script)], timeout=60)
    assert proc.returncode == 2 and not script.exists(), proc.stderr
    assert "distributed.nproc_per_node is auto" in proc.stderr and "slurm={gpus_per_node: N}" in proc.stderr
    proc = run_launch(["sbatch", TINY, "slurm={gpus_per_node: 0}", "--script", str(script)], timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--gpus" not in script.read_text()


def _plan(*args: str) -> subprocess.CompletedProcess:
    return run_launch(["plan", TINY, *args], timeout=60)


@pytest.mark.multiproc
def test_single_node_without_a_port_takes_a_free_one_when_29500_is_busy(tmp_path):
    with socket.socket() as busy:
        try:
            busy.bind(("", DEFAULT_MASTER_PORT))
            busy.listen(1)
        except OSError:
            pass  # already held by something else: busy either way
        proc = _plan()
        assert proc.returncode == 0, proc.stderr
        port = int(re.search(r"rendezvous: [\d.]+:(\d+)", proc.stdout).group(1))
        assert port != DEFAULT_MASTER_PORT
        run = run_launch([TINY, "distributed.engine=ddp", "train.max_steps=1", f"output.dir={tmp_path / 'run'}"])
        assert run.returncode == 0, run.stderr[-3000:]
        explicit = run_launch(
            [TINY, f"distributed.master_port={DEFAULT_MASTER_PORT}", f"output.dir={tmp_path / 'x'}"], timeout=60
        )
    assert explicit.returncode == 2 and "already in use" in explicit.stderr  # a port the user named is still checked


@pytest.mark.unit
def test_nnodes_defaults_to_the_hostfiles_hosts():
    proc = _plan("distributed.hostfile=hostfiles/loopback.txt")
    assert proc.returncode == 0, proc.stderr
    assert "nodes: 2 x 1 processes" in proc.stdout
    assert f"rendezvous: 127.0.0.1:{DEFAULT_MASTER_PORT}" in proc.stdout  # several nodes agree on the fixed port
    wrong = _plan("distributed.hostfile=hostfiles/loopback.txt", "distributed.nnodes=3")
    assert wrong.returncode == 2 and "selects 2 host(s)" in wrong.stderr


@pytest.mark.multiproc
def test_a_node_rank_alone_names_the_two_keys_it_needs(tmp_path):
    proc = run_launch([TINY, "--node-rank", "1", f"output.dir={tmp_path / 'run'}"], timeout=60)
    assert proc.returncode == 2
    assert "distributed.nnodes" in proc.stderr and "distributed.master_addr" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.unit
def test_switching_method_by_override_drops_the_recipes_lora_keys_in_one_line():
    proc = _plan("method.name=freeze")
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "dropped" in line]
    assert len(notes) == 1 and "method.rank" in notes[0] and "method.target" in notes[0]
    assert "  name: freeze" in proc.stdout and "  rank:" not in proc.stdout


@pytest.mark.unit
def test_lora_keys_beside_a_freeze_the_file_names_are_still_refused(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {path: builtin:tiny-qwen2}\nmethod: {name: freeze, rank: 8}\n")
    proc = run_launch(["plan", str(recipe)], timeout=60)
    assert proc.returncode == 2 and "method.rank is only valid with method.name: lora" in proc.stderr


@pytest.mark.unit
def test_qlora_is_lora_over_a_4_bit_base():
    recipe = load_recipe(ROOT / TINY, ["method.name=qlora"])
    assert recipe["method"]["name"] == "lora"
    assert recipe["model"]["quantization"] == {"bits": 4, "type": "nf4", "double_quant": True}


@pytest.mark.unit
def test_ddp_means_zero_off_unless_the_user_set_zero(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {path: builtin:tiny-qwen2}\ndistributed: {engine: ddp}\n")
    assert load_recipe(recipe)["distributed"]["zero"] == 0
    assert load_recipe(ROOT / TINY, ["distributed.engine=ddp"])["distributed"]["zero"] == 0  # file's zero: 3, switched
    proc = run_launch(["plan", TINY, "distributed.engine=ddp", "distributed.zero=2"], timeout=60)
    assert proc.returncode == 2 and "needs distributed.engine: deepspeed" in proc.stderr  # both named: a conflict
