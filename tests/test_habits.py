"""Defaults that fit a person's habits (issue 16): what a user leaves out is taken from what the
recipe already says, and a half-given multi-node setting says what else it needs."""

from __future__ import annotations

from tests.conftest import run_launch

TINY = "recipes/sft_tiny.yaml"


def test_sbatch_without_a_slurm_section_takes_nodes_and_gpus_from_distributed(tmp_path):
    script = tmp_path / "job.sbatch"
    proc = run_launch(["sbatch", TINY, "distributed.nnodes=2", "distributed.nproc_per_node=4", "--script", str(script)],
                      timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = script.read_text()
    assert "#SBATCH --nodes=2\n" in text and "#SBATCH --gpus-per-node=4\n" in text
    assert "--partition" not in text and "--account" not in text  # the cluster's defaults
