"""Ulysses sequence parallelism trained for real on CPU over gloo (issue 25): two ranks that each hold half of
every sequence train exactly as one process holding the whole sequence, in the loss and in the logged gradient
norm (a sum of the two ranks' gradients instead of their average would double it; AdamW and clipping hide that
in the loss)."""

from __future__ import annotations

import math

import pytest

from tests.engines.test_fsdp import _steps
from tests.worker.test_e2e import _train

pytestmark = pytest.mark.multiproc

# one sequence an optimizer step, in the same order: fp32, no clipping, so a wrong gradient scale shows in both
ONE_SEQUENCE = (
    "train.micro_batch_size=1",
    "train.grad_accum=1",
    "train.max_steps=3",
    "train.logging_steps=1",
    "train.save_steps=1000",
    "train.max_grad_norm=0",
    "distributed.zero=3",
    "data.cutoff_len=128",  # every row of a sequence-parallel group is padded to it
)


def test_two_ranks_splitting_each_sequence_train_as_one_process(tmp_path):
    split, proc = _train(tmp_path, "sp2", [*ONE_SEQUENCE, "distributed.sequence_parallel=2"])
    assert proc.returncode == 0, proc.stderr[-5000:]
    whole, proc = _train(tmp_path, "one", [*ONE_SEQUENCE, "distributed.nproc_per_node=1"])
    assert proc.returncode == 0, proc.stderr[-5000:]
    got, expected = _steps(split), _steps(whole)
    assert len(got) == len(expected) == 3
    for step, (values, reference) in enumerate(zip(got, expected), 1):
        close = all(math.isclose(v, r, rel_tol=1e-5, abs_tol=1e-5) for v, r in zip(values, reference))
        assert close, f"step {step}: (loss, grad_norm) sp=2 {got} vs one process {expected}"
