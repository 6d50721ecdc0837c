"""End to end through the real `launch` CLI: 2-process LoRA SFT of the tiny model under
DeepSpeed ZeRO-2 and ZeRO-3, with each of the three launchers, and a crashing rank."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import SHORT_RUN, free_port, run_launch

pytestmark = pytest.mark.multiproc

TINY = "recipes/sft_tiny.yaml"
SCALARS = ("train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_second")


def _train(tmp_path: Path, name: str, overrides: list[str], env: dict | None = None, timeout: int = 600):
    out = tmp_path / name
    proc = run_launch(
        [TINY, f"output.dir={out}", f"distributed.master_port={free_port()}", *overrides], timeout=timeout, env=env
    )
    return out, proc


def _losses(out: Path) -> list[float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def _check_adapter(out: Path) -> None:
    """The saved adapter holds trained weights and loads with PEFT onto the base."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from launcher.model.builtin import materialize

    weights = load_file(out / "adapter_model.safetensors")
    lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
    assert lora_b, "adapter has no LoRA B matrices"
    # PEFT initialises every B to zero: a non-zero B everywhere means trained values were
    # gathered from the ZeRO shards, not empty placeholders or the initial state.
    for key, value in lora_b.items():
        assert value.numel() > 0, f"{key} is empty (ZeRO-3 partition saved instead of the gathered weight)"
        assert value.abs().sum() > 0, f"{key} still holds its initial zeros"
    base_dir = materialize("builtin:tiny-qwen2")
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        base_logits = base(ids).logits
        tuned = PeftModel.from_pretrained(base, str(out))
        tuned_logits = tuned(ids).logits
    assert not torch.allclose(base_logits, tuned_logits), "adapter loaded but changes nothing"


def _tensorboard_tags(out: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_files = list((out / "runs").glob("events.out.tfevents.*"))
    assert event_files, "no TensorBoard event file"
    accumulator = EventAccumulator(str(out / "runs"))
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])


@pytest.mark.parametrize("zero,packing", [(2, "neat"), (3, "none")])
def test_lora_sft_two_processes(zero, packing, tmp_path, warm):
    out, proc = _train(
        tmp_path,
        f"zero{zero}",
        [
            f"distributed.zero={zero}",
            "train.max_steps=10",
            f"data.packing={packing}",
            "train.logging_steps=2",
            "train.save_steps=5",
            "data.val_size=0.1",
            "train.eval_steps=5",
        ],
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    plan = json.loads((out / "plan.json").read_text())
    assert plan["deepspeed"]["zero_optimization"]["stage"] == zero
    assert plan["world"]["world_size"] == 2
    losses = _losses(out)
    assert len(losses) >= 4
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, f"loss did not go down: {losses}"
    _check_adapter(out)
    assert set(SCALARS) | {"eval/loss"} <= _tensorboard_tags(out)
    evals = [
        e["eval_loss"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "eval_loss" in e
    ]
    assert len(evals) == 2 and evals[1] < evals[0], f"held-out loss should fall: {evals}"
    assert (out / "checkpoint-5" / "trainer_state.json").is_file()


def test_each_launcher_runs_the_tiny_recipe_with_the_same_result(tmp_path, tiny_run):
    """torchrun, accelerate and the deepspeed launcher start the same worker from the same
    plan: each run succeeds, saves a loadable adapter, and logs identical losses."""
    run = ("distributed.zero=2", *SHORT_RUN)
    outs = {"torchrun": tiny_run(*run)}  # the recipe's launcher
    for launcher in ("accelerate", "deepspeed"):
        outs[launcher], proc = _train(tmp_path, launcher, [f"distributed.launcher={launcher}", *run])
        assert proc.returncode == 0, f"{launcher}:\n" + proc.stdout[-3000:] + proc.stderr[-5000:]
    losses = {}
    for launcher, out in outs.items():
        assert json.loads((out / "plan.json").read_text())["recipe"]["distributed"]["launcher"] == launcher
        losses[launcher] = _losses(out)
        _check_adapter(out)
    assert len(losses["torchrun"]) == 6
    assert losses["accelerate"] == pytest.approx(losses["torchrun"], rel=1e-5)
    assert losses["deepspeed"] == pytest.approx(losses["torchrun"], rel=1e-5)


def test_qwen2_recipe_runs_on_the_tiny_model(tmp_path, warm):
    """The real Qwen2-7B recipe (bf16, ZeRO-3, cutoff 2048) runs when pointed at the tiny model."""
    proc = run_launch(
        [
            "recipes/sft_qwen2.yaml",
            "model.path=builtin:tiny-qwen2",
            "train.max_steps=5",
            f"output.dir={tmp_path / 'qwen2'}",
            f"distributed.master_port={free_port()}",
            "train.grad_accum=2",
            "train.logging_steps=1",
        ],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert len(_losses(tmp_path / "qwen2")) == 5
    config = json.loads((tmp_path / "qwen2" / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["lora_alpha"] == 32


def test_crashing_rank_ends_the_job_with_its_traceback(tmp_path, warm):
    out, proc = _train(
        tmp_path,
        "crash",
        ["train.max_steps=50", "train.logging_steps=1"],
        env={"LAUNCHER_FAIL_RANK": "1", "LAUNCHER_FAIL_STEP": "2"},
        timeout=300,
    )
    ended = time.time()
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    failure = re.search(r"injected failure on rank 1 at step 2 \(LAUNCHER_FAIL_RANK\) at unix time ([0-9.]+)", output)
    assert failure, output[-5000:]
    assert "Traceback" in output and "Root Cause" in output
    assert ended - float(failure.group(1)) < 60, "the job outlived its failed rank by more than 60 s"
    leftovers = subprocess.run(["pgrep", "-f", str(out / "plan.json")], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", f"processes outlived the failed run: {leftovers.stdout}"
    # the failed rank's own log, tail printed last by the launcher, ahead of its failure line
    assert "injected failure on rank 1" in (out / "logs" / "rank-1.log").read_text()
    report = proc.stderr.split(f"[launch] rank-1 failed first; its last lines ({out / 'logs' / 'rank-1.log'}", 1)
    assert len(report) == 2, proc.stderr[-5000:]
    assert "injected failure on rank 1 at step 2" in report[1].split("[launch] run failed")[0]


def test_loss_is_normalised_per_token_over_the_global_batch(tmp_path, warm):
    """micro 4 x accum 1 x world 1 and micro 1 x accum 2 x world 2 see the same 4 samples per
    step. With the loss averaged over the global batch's trained tokens (not per micro batch
    or per rank), both compute the same gradient: equal loss and gradient norm at every step.
    (Weights are not compared: Adam's first steps are sign-like on lora_A's near-zero grads.)"""
    logs = {}
    for name, layout in {
        "w1": ["distributed.nproc_per_node=1", "train.micro_batch_size=4", "train.grad_accum=1"],
        "w2": ["distributed.nproc_per_node=2", "train.micro_batch_size=1", "train.grad_accum=2"],
    }.items():
        out, proc = _train(
            tmp_path, name, [*layout, "distributed.zero=2", "train.max_steps=3", "train.logging_steps=1"]
        )
        assert proc.returncode == 0, proc.stderr[-5000:]
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        logs[name] = [(e["loss"], e["grad_norm"]) for e in history if "grad_norm" in e]
    assert len(logs["w1"]) == 3
    for (loss1, norm1), (loss2, norm2) in zip(logs["w1"], logs["w2"]):
        assert loss2 == pytest.approx(loss1, rel=1e-4)
        assert norm2 == pytest.approx(norm1, rel=1e-4)


def test_op_prebuild_is_skipped_only_while_its_record_is_current(tmp_path, warm):
    """The launcher skips the op-build process when the cache folder records these ops built against
    the installed torch/DeepSpeed with their libraries present; anything else builds again."""
    import shutil

    from launcher.backends.prebuild import STAMP, already_built
    from launcher.plan import torch_extensions_dir

    cache = Path(torch_extensions_dir())
    assert already_built(["ShareMemCommBuilder"], str(cache))  # the warm fixture built and recorded it
    assert not already_built(["ShareMemCommBuilder"], str(tmp_path))  # nothing recorded there
    stamp = json.loads((cache / STAMP).read_text())
    copy = tmp_path / "copy"
    shutil.copytree(cache, copy, ignore=shutil.ignore_patterns("*.o"))
    (copy / STAMP).write_text(
        json.dumps({**stamp, "libraries": [str(copy / Path(f).relative_to(cache)) for f in stamp["libraries"]]})
    )
    assert already_built(["ShareMemCommBuilder"], str(copy))
    for library in copy.glob("*/*.so"):
        library.unlink()  # a cleaned cache
    assert not already_built(["ShareMemCommBuilder"], str(copy))
    (cache / STAMP).write_text(json.dumps({**stamp, "versions": {**stamp["versions"], "deepspeed": "0.0.1"}}))
    try:  # an upgraded DeepSpeed
        assert not already_built(["ShareMemCommBuilder"], str(cache))
    finally:
        (cache / STAMP).write_text(json.dumps(stamp))
