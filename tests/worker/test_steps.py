"""A train.epochs too small for one optimizer step is refused by every rank once the data is built (the step
count needs the training rows), as one line and exit 2, before anything trains."""

from __future__ import annotations

import pytest

from tests.conftest import free_port, run_launch

pytestmark = pytest.mark.multiproc


def test_epochs_below_one_step_are_refused_before_training(tmp_path, warm):
    out = tmp_path / "tiny"
    proc = run_launch(
        ["recipes/sft_tiny.yaml", f"output.dir={out}", f"distributed.master_port={free_port()}", "train.epochs=1e-12"]
    )
    assert proc.returncode != 0  # the ranks exit 2; torchrun reports its own code
    # 284 rows over 2 ranks at micro batch 8, grad_accum 1: ceil(142 / 8) = 18 steps an epoch
    line = (
        "[launcher] plan error: train.epochs = 1e-12 gives 1.8e-11 optimizer steps (284 training rows, global batch "
        "16, 18 steps an epoch): less than one step trains nothing. Fix: raise train.epochs to at least 0.0555556, "
        "or set train.max_steps"
    )
    assert line in proc.stderr, proc.stderr[-3000:]
    for log in sorted((out / "logs").glob("rank-*.log")):  # every rank refuses: one line, no traceback
        text = log.read_text()
        assert text.count(line) == 1 and "Traceback" not in text, text[-3000:]
    assert not list(out.glob("checkpoint-*")) and not (out / "adapter_model.safetensors").exists()
    assert not (out / "trainer_state.json").exists()
