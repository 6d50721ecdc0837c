"""`launch chat --dtype`: the model loads in the dtype asked for; auto is the dtype the adapter's run
trained in (its plan.json), else fp32 on CPU; fp16 without a GPU is refused with the fix."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from launcher.infer.chat import load_for_chat
from tests.conftest import LORA_ZERO3_RUN, run_launch

pytestmark = pytest.mark.multiproc


def _adapter_trained_in(tmp_path, run, dtype: str):
    folder = tmp_path / f"adapter-{dtype}"
    shutil.copytree(run, folder, ignore=shutil.ignore_patterns("checkpoint-*", "runs", "logs", "tmp-checkpoints"))
    plan = json.loads((folder / "plan.json").read_text())
    plan["dtype"] = dtype
    (folder / "plan.json").write_text(json.dumps(plan))
    return folder


def test_auto_takes_the_runs_training_dtype(tiny_run, tmp_path):
    run = tiny_run(*LORA_ZERO3_RUN)
    model, _ = load_for_chat("builtin:tiny-qwen2", str(run))  # the tiny run trained in fp32
    assert model.dtype == torch.float32
    model, _ = load_for_chat("builtin:tiny-qwen2", str(_adapter_trained_in(tmp_path, run, "bf16")))
    assert model.dtype == torch.bfloat16
    model, _ = load_for_chat("builtin:tiny-qwen2", None, dtype="bf16")
    assert model.dtype == torch.bfloat16


def test_cli_says_the_dtype_and_refuses_fp16_on_cpu():
    proc = run_launch(
        ["chat", "--model", "builtin:tiny-qwen2", "--dtype", "bf16", "--prompt", "hi", "--max-new-tokens", "4"],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "in bf16 on cpu" in proc.stderr and "assistant>" in proc.stdout
    proc = run_launch(["chat", "--model", "builtin:tiny-qwen2", "--dtype", "fp16", "--prompt", "hi"], timeout=300)
    assert proc.returncode == 2 and "--dtype fp16 needs a CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr
