"""Exact resume: a run that crashes (or is SIGKILLed in the middle of a save) and is started
again with train.resume: auto reaches the same loss at every later step and the same final
weights as an uninterrupted run (CPU, fp32). Checkpoints appear only when complete, rotation
keeps the newest complete one, and a resume into another world size is refused at launch. A finished
run started again is complete and changes nothing; a resumed run never steps past its last step."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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
    # full fine-tuning with the plain loss: the chunked one gathers the trained head for every slice under ZeRO-3,
    # 50% longer on this CPU (LoRA resumes with the chunked loss; full with it was checked by hand)
    [LORA_ZERO3_RUN, (*LORA_ZERO3_RUN, "method={name: full}", "train.loss_kernel=plain"), FSDP_LORA_RUN],
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


def _finished_copy(tiny_run, tmp_path: Path) -> Path:
    """A copy of the session's finished 6-step ZeRO-3 LoRA run (checkpoints 3 and 6, the final save)."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run(*LORA_ZERO3_RUN), out)
    return out


def _files(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under folder: its content hash and mtime."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_a_finished_run_started_again_is_complete_and_changes_nothing(tmp_path, tiny_run):
    """The old launch resumed checkpoint-6 and trained a step 7 of 6 into the final adapter."""
    out = _finished_copy(tiny_run, tmp_path)
    before = _files(out)
    proc = run_launch(_launch_args(out, *LORA_ZERO3_RUN))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "already complete" in proc.stdout and "checkpoint-6, both at step 6" in proc.stdout
    assert _files(out) == before


def test_a_checkpoint_past_the_recipes_last_step_is_refused(tmp_path, tiny_run):
    out = _finished_copy(tiny_run, tmp_path)
    before = _files(out)
    proc = run_launch(_launch_args(out, *LORA_ZERO3_RUN, "train.max_steps=4"))
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "checkpoint-6 is at step 6, past the last step of this recipe (train.max_steps = 4)" in proc.stderr
    assert "Fix: train.max_steps above 6" in proc.stderr and "Traceback" not in proc.stderr
    assert _files(out) == before


def _schedule(max_steps: int) -> list[float]:
    """The learning rate each step trains at, by transformers' own scheduler over recipes/sft_tiny.yaml's
    schedule (lr, cosine, warmup_ratio) for a run of max_steps."""
    from transformers import TrainingArguments, get_scheduler

    args = TrainingArguments(output_dir="unused", learning_rate=5.0e-3, warmup_steps=0.05, report_to=[])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    schedule = get_scheduler("cosine", optimizer, args.get_warmup_steps(max_steps), max_steps)
    rates = []
    for _ in range(max_steps):
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    return rates


def test_a_resume_that_raises_max_steps_trains_on_the_new_schedule(tmp_path, tiny_run):
    """Resumed from the end of a 6-step run with train.max_steps=8, step 7 used to train at the old schedule's
    last rate, 0."""
    out = _finished_copy(tiny_run, tmp_path)
    proc = run_launch(_launch_args(out, *LORA_ZERO3_RUN, "train.max_steps=8"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    records = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    rates = {record["step"]: record["learning_rate"] for record in records if "learning_rate" in record}
    assert [rates[7], rates[8]] == pytest.approx(_schedule(8)[6:], rel=1e-6)
    assert rates[7] > 0


def test_a_run_that_crashed_after_its_last_checkpoint_finishes_without_another_step(tmp_path, tiny_run):
    """checkpoint-6 published, then the final save crashed: the relaunch saves checkpoint-6's weights as the
    final adapter and trains nothing (the Trainer alone would take a step 7 of 6)."""
    straight = tiny_run(*LORA_ZERO3_RUN)
    out = _finished_copy(tiny_run, tmp_path)
    for name in ("trainer_state.json", "adapter_model.safetensors"):  # the final save had not happened
        (out / name).unlink()
    proc = run_launch(_launch_args(out, *LORA_ZERO3_RUN))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "resumed at step 6, the run's last (of 6): no step trained" in proc.stdout
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and max(entry["step"] for entry in state["log_history"]) == 6
    expected, got = load_file(straight / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(got[key], value) for key, value in expected.items())
    again = run_launch(_launch_args(out, *LORA_ZERO3_RUN))
    assert again.returncode == 0 and "already complete" in again.stdout, again.stdout[-3000:] + again.stderr[-3000:]


def test_resume_of_fsdp_shards_into_another_world_size_is_refused_at_launch(tmp_path, tiny_run):
    checkpoint = tiny_run(*FSDP_LORA_RUN) / "checkpoint-6"
    proc = run_launch(
        _launch_args(tmp_path / "one", *FSDP_LORA_RUN, "distributed.nproc_per_node=1", f"train.resume={checkpoint}")
    )
    assert proc.returncode == 2
    assert "written by 2 ranks (FSDP2 shards)" in proc.stderr and "this plan has 1" in proc.stderr, proc.stderr
    assert "Fix:" in proc.stderr and "Traceback" not in proc.stderr and not (tmp_path / "one").exists()


GRPO_RUN = (
    "train.max_steps=4",
    "train.save_steps=2",
    "train.max_new_tokens=8",
    "train.completions_log_steps=1",
    "train.num_generations=8",
    "train.micro_batch_size=8",
)


def _grpo(out: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    args = ["recipes/grpo_tiny.yaml", f"output.dir={out}", f"distributed.master_port={free_port()}", *GRPO_RUN]
    return run_launch(args, env=env)


def _grpo_log(out: Path) -> list[tuple[int, float, float]]:
    records = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["reward"]) for r in records]


def _samples(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]


def test_resumed_grpo_run_equals_uninterrupted_run(tmp_path, warm):
    """GRPO samples its completions: the resumed steps draw the same ones (each rank's RNG state is in the
    checkpoint), so rewards, losses, the adapter and completions.jsonl (the interrupted run's records past
    the checkpoint dropped, not repeated) equal the uninterrupted run's."""
    straight, out = tmp_path / "straight", tmp_path / "resumed"
    assert _grpo(straight).returncode == 0
    crashed = _grpo(out, env={"LAUNCHER_FAIL_RANK": "1", "LAUNCHER_FAIL_STEP": "4"})
    assert crashed.returncode != 0 and (out / "checkpoint-2").is_dir()
    assert {r["step"] for r in _samples(out)} == {1, 2, 3}  # step 3 sampled past the checkpoint, sampled again
    resumed = _grpo(out)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert "checkpoint-2" in resumed.stdout
    expected, got = _grpo_log(straight), _grpo_log(out)
    assert [step for step, _, _ in got] == [step for step, _, _ in expected] == list(range(1, 5))
    # the rewards score the sampled completions; the loss is near 0 on policy, the adapter carries the updates
    assert [reward for _, _, reward in got] == pytest.approx([reward for _, _, reward in expected], abs=1e-6)
    assert [loss for _, loss, _ in got] == pytest.approx([loss for _, loss, _ in expected], abs=1e-6)
    assert _samples(out) == _samples(straight)
    weights, resumed_weights = (
        load_file(straight / "adapter_model.safetensors"),
        load_file(out / "adapter_model.safetensors"),
    )
    for key, value in weights.items():
        assert torch.allclose(resumed_weights[key], value, atol=1e-6), key
