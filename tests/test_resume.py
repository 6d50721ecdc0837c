"""Exact resume: a run that crashes after a checkpoint and is started again with
train.resume: auto reaches the same loss at every later step and the same final adapter
as an uninterrupted run (CPU, fp32)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import free_port, run_launch


def _run(out: Path, zero: int, env: dict | None = None):
    return run_launch(["recipes/sft_tiny.yaml", f"output.dir={out}", f"distributed.master_port={free_port()}",
                       f"distributed.zero={zero}", "train.max_steps=6", "train.save_steps=3", "train.logging_steps=1"],
                      env=env)


def _losses(out: Path) -> list[tuple[int, float]]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]


@pytest.mark.parametrize("zero", [2, 3])
def test_resumed_run_equals_uninterrupted_run(zero, tmp_path, warm):
    assert _run(tmp_path / "straight", zero).returncode == 0

    crashed = _run(tmp_path / "resumed", zero, env={"LAUNCHER_FAIL_RANK": "1", "LAUNCHER_FAIL_STEP": "4"})
    assert crashed.returncode != 0
    assert (tmp_path / "resumed" / "checkpoint-3").is_dir() and not (tmp_path / "resumed" / "checkpoint-6").exists()
    resumed = _run(tmp_path / "resumed", zero)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert "resuming from" in resumed.stdout and "checkpoint-3" in resumed.stdout

    resumed_losses, straight_losses = _losses(tmp_path / "resumed"), _losses(tmp_path / "straight")
    assert [step for step, _ in resumed_losses] == [step for step, _ in straight_losses] == list(range(1, 7))
    assert [loss for _, loss in resumed_losses] == pytest.approx([loss for _, loss in straight_losses], abs=1e-6)
    straight = load_file(tmp_path / "straight" / "adapter_model.safetensors")
    again = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    for key, value in straight.items():
        assert torch.allclose(again[key], value, atol=1e-6), key
