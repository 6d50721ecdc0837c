"""Exact resume: a run that crashes (or is SIGKILLed in the middle of a save) and is started
again with train.resume: auto reaches the same loss at every later step and the same final
weights as an uninterrupted run (CPU, fp32). Checkpoints appear only when complete, rotation
keeps the newest complete one, and a resume into another world size is refused at launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import FSDP_LORA_RUN, FULL_ZERO2_RUN, LORA_ZERO3_RUN, ROOT, free_port, run_launch

pytestmark = pytest.mark.multiproc


def _launch_args(out: Path, *overrides: str) -> list[str]:
    return ["recipes/sft_tiny.yaml", f"output.dir={out}", f"distributed.master_port={free_port()}", *overrides]


def _losses(out: Path) -> list[tuple[int, float]]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]


def _assert_same_run(resumed: Path, straight: Path, weights: str) -> None:
    resumed_losses, straight_losses = _losses(resumed), _losses(straight)
    assert [step for step, _ in resumed_losses] == [step for step, _ in straight_losses] == list(range(1, 7))
    assert [loss for _, loss in resumed_losses] == pytest.approx([loss for _, loss in straight_losses], abs=1e-6)
    expected, got = load_file(straight / weights), load_file(resumed / weights)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.allclose(got[key], value, atol=1e-6), key


@pytest.mark.parametrize(
    "run",
    [LORA_ZERO3_RUN, (*LORA_ZERO3_RUN, "method={name: full}"), FSDP_LORA_RUN],
    ids=["zero3-lora", "zero3-full", "fsdp-lora"],
)
def test_resumed_run_equals_uninterrupted_run(run, tmp_path, tiny_run):
    # ZeRO-2 resumes in the SIGKILL-during-save test below (full fine-tuning): the optimizer states are
    # sharded under both stages, the weights only under ZeRO-3; FSDP2 resumes from sharded DCP
    method = "full" if "method={name: full}" in run else "lora"
    straight = tiny_run(*run)
    out = tmp_path / "resumed"
    crashed = run_launch(_launch_args(out, *run), env={"LAUNCHER_FAIL_RANK": "1", "LAUNCHER_FAIL_STEP": "4"})
    assert crashed.returncode != 0
    assert (out / "checkpoint-3").is_dir() and not (out / "checkpoint-6").exists()
    resumed = run_launch(_launch_args(out, *run))
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert "resuming from" in resumed.stdout and "checkpoint-3" in resumed.stdout
    _assert_same_run(out, straight, "model.safetensors" if method == "full" else "adapter_model.safetensors")


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launch process and every process under it (the ranks live in their own group)."""
    root = psutil.Process(proc.pid)
    for process in [root, *root.children(recursive=True)]:
        process.kill()
    proc.wait(timeout=30)


def test_sigkill_during_a_save_resumes_from_the_previous_complete_checkpoint(tmp_path, tiny_run):
    """Full fine-tuning, ZeRO-2, save_total_limit=1: killed while checkpoint-6 is half written."""
    straight = tiny_run(*FULL_ZERO2_RUN)
    out = tmp_path / "killed"
    args = [*FULL_ZERO2_RUN, "train.save_total_limit=1"]
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "launcher.cli", *_launch_args(out, *args)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "LAUNCHER_STALL_SAVE_STEP": "6"},
        )
        staged = out / "tmp-checkpoints" / "checkpoint-6"
        deadline = time.monotonic() + 300
        while not (staged.is_dir() and any(staged.iterdir())) and proc.poll() is None:
            assert time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(1.0)  # rank 0 goes on writing its part; rank 1 has written nothing
        _kill_tree(proc)
    assert any(staged.iterdir()), "the kill must land inside the save"
    assert not (out / "checkpoint-6").exists()
    assert (out / "checkpoint-3" / "trainer_state.json").is_file(), "rotation deleted the newest complete checkpoint"

    resumed = run_launch(_launch_args(out, *args))
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert "resuming from" in resumed.stdout and "checkpoint-3" in resumed.stdout
    _assert_same_run(out, straight, "model.safetensors")
    # the finished run published checkpoint-6, then rotation dropped checkpoint-3; no staging left
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6"]
    assert not (out / "tmp-checkpoints").exists()


def test_resume_into_another_world_size_is_refused_at_launch(tmp_path, tiny_run):
    checkpoint = tiny_run(*FULL_ZERO2_RUN) / "checkpoint-6"
    proc = run_launch(
        _launch_args(tmp_path / "one", *FULL_ZERO2_RUN, "distributed.nproc_per_node=1", f"train.resume={checkpoint}")
    )
    assert proc.returncode == 2
    assert "written by 2 ranks" in proc.stderr and "this plan has 1" in proc.stderr and "Fix:" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "one").exists()


def test_resume_of_fsdp_shards_into_another_world_size_is_refused_at_launch(tmp_path, tiny_run):
    checkpoint = tiny_run(*FSDP_LORA_RUN) / "checkpoint-6"
    proc = run_launch(
        _launch_args(tmp_path / "one", *FSDP_LORA_RUN, "distributed.nproc_per_node=1", f"train.resume={checkpoint}")
    )
    assert proc.returncode == 2
    assert "written by 2 ranks (FSDP2 shards)" in proc.stderr and "this plan has 1" in proc.stderr, proc.stderr
    assert "Fix:" in proc.stderr and "Traceback" not in proc.stderr and not (tmp_path / "one").exists()
