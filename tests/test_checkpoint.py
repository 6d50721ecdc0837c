"""Offline consolidation of ZeRO-3 shards into a PEFT adapter, and merging it into the base,
checked against DeepSpeed's own zero_to_fp32 script and PEFT's base+adapter logits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import free_port, run_launch


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory, warm) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "run"
    proc = run_launch(["recipes/sft_tiny.yaml", f"output.dir={out}", f"distributed.master_port={free_port()}",
                       "distributed.zero=3", "train.max_steps=4", "train.save_steps=4", "train.logging_steps=2"])
    assert proc.returncode == 0, proc.stderr[-5000:]
    return out


def test_consolidated_adapter_equals_zero_to_fp32_and_the_saved_adapter(zero3_run, tmp_path):
    checkpoint = zero3_run / "checkpoint-4"
    proc = run_launch(["consolidate", str(checkpoint), "--out", str(tmp_path / "adapter")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = load_file(tmp_path / "adapter" / "adapter_model.safetensors")

    # oracle 1: the zero_to_fp32.py script DeepSpeed wrote into the checkpoint
    subprocess.run([sys.executable, str(checkpoint / "zero_to_fp32.py"), str(checkpoint), str(tmp_path / "ds"),
                    "--safe_serialization", "--exclude_frozen_parameters"], check=True, capture_output=True,
                   env={"DS_ACCELERATOR": "cpu", "PATH": "/usr/bin:/bin"})
    reference = load_file(tmp_path / "ds" / "model.safetensors")
    assert len(reference) == len(ours)
    for name, tensor in reference.items():
        assert torch.equal(ours[name.replace(".default.", ".")], tensor), name

    # oracle 2: the adapter the run saved at the end (same step), gathered by the Trainer
    final = load_file(zero3_run / "adapter_model.safetensors")
    assert ours.keys() == final.keys()
    assert all(torch.equal(ours[k], final[k]) for k in final)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


def test_merged_model_reproduces_base_plus_adapter(zero3_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from launcher.builtin import materialize

    proc = run_launch(["merge", "--base", "builtin:tiny-qwen2", "--adapter", str(zero3_run),
                       "--out", str(tmp_path / "merged")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(materialize("builtin:tiny-qwen2"), dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, str(zero3_run))
    ids = torch.randint(3, 2048, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = with_adapter(ids).logits, merged(ids).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert not any("lora" in name for name in merged.state_dict())
    assert (tmp_path / "merged" / "tokenizer_config.json").is_file()


def test_consolidate_refuses_a_folder_without_shards(tmp_path):
    proc = run_launch(["consolidate", str(tmp_path), "--out", str(tmp_path / "out")])
    assert proc.returncode == 2
    assert "no DeepSpeed ZeRO shards" in proc.stderr and "Traceback" not in proc.stderr
