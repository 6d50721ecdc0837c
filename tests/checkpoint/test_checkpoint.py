"""Offline consolidation of ZeRO shards (adapter, prefix and full runs) checked bitwise against
DeepSpeed's own zero_to_fp32 and the artefact the run saved at the end; streaming merge of
LoRA / rsLoRA / DoRA adapters checked against PEFT's merge_and_unload and base+adapter logits."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import FULL_ZERO2_RUN, LORA_ZERO3_RUN, run_launch

pytestmark = pytest.mark.multiproc

# ZeRO-2: the launcher refuses prefix tuning under ZeRO-3 (PEFT's save would hang)
PREFIX_ZERO2_RUN = (
    "method={name: prefix, num_virtual_tokens: 4, prefix_projection: true}",
    "distributed.zero=2",
    "train.gradient_checkpointing=false",
    "train.max_steps=2",
    "train.save_steps=2",
    "train.logging_steps=1",
)


@pytest.fixture(scope="module")
def zero3_run(tiny_run) -> Path:
    """LoRA under ZeRO-3, 6 steps (the uninterrupted run of the resume test)."""
    return tiny_run(*LORA_ZERO3_RUN)


def _zero_to_fp32(checkpoint: Path, out: Path, *flags: str) -> dict[str, torch.Tensor]:
    """The zero_to_fp32.py script DeepSpeed wrote into the checkpoint, run as a user would."""
    subprocess.run(
        [
            sys.executable,
            str(checkpoint / "zero_to_fp32.py"),
            str(checkpoint),
            str(out),
            "--safe_serialization",
            *flags,
        ],
        check=True,
        capture_output=True,
        env={"DS_ACCELERATOR": "cpu", "PATH": "/usr/bin:/bin"},
    )
    return _load_dir(out)


def _load_dir(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def _consolidate(checkpoint: Path, out: Path, *flags: str) -> None:
    proc = run_launch(["consolidate", str(checkpoint), "--out", str(out), *flags])
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_consolidated_adapter_equals_zero_to_fp32_and_the_saved_adapter(zero3_run, tmp_path):
    checkpoint = zero3_run / "checkpoint-6"
    _consolidate(checkpoint, tmp_path / "adapter")
    ours = load_file(tmp_path / "adapter" / "adapter_model.safetensors")

    reference = _zero_to_fp32(checkpoint, tmp_path / "ds", "--exclude_frozen_parameters")
    assert len(reference) == len(ours)
    for name, tensor in reference.items():
        assert torch.equal(ours[name.replace(".default.", ".")], tensor), name

    # the adapter the run saved at the end (same step), gathered by the Trainer
    final = load_file(zero3_run / "adapter_model.safetensors")
    assert ours.keys() == final.keys()
    assert all(torch.equal(ours[k], final[k]) for k in final)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


def test_consolidated_full_model_equals_zero_to_fp32_and_the_saved_model(tiny_run, tmp_path):
    from transformers import AutoModelForCausalLM

    run = tiny_run(*FULL_ZERO2_RUN)
    _consolidate(run / "checkpoint-6", tmp_path / "model", "--shard-size", "2MB")
    ours = _load_dir(tmp_path / "model")
    assert len(list((tmp_path / "model").glob("model-*-of-*.safetensors"))) > 1  # sharded as asked
    reference = _zero_to_fp32(run / "checkpoint-6", tmp_path / "ds")
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    final = load_file(run / "model.safetensors")
    assert all(torch.equal(ours[k], v) for k, v in final.items())
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32)
    assert torch.equal(model.state_dict()["lm_head.weight"], final["lm_head.weight"])
    assert (tmp_path / "model" / "tokenizer_config.json").is_file()


def test_consolidated_prefix_adapter_equals_the_saved_adapter(tiny_run, tmp_path):
    from peft import PrefixTuningConfig
    from peft.tuners.prefix_tuning import PrefixEncoder

    run = tiny_run(*PREFIX_ZERO2_RUN)
    _consolidate(run / "checkpoint-2", tmp_path / "adapter")
    ours = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    final = load_file(run / "adapter_model.safetensors")
    assert ours.keys() == final.keys() == {"prompt_embeddings"}
    assert torch.equal(ours["prompt_embeddings"], final["prompt_embeddings"])
    # and it is the prompt encoder DeepSpeed's zero_to_fp32 recovers, run over the virtual tokens
    reference = _zero_to_fp32(run / "checkpoint-2", tmp_path / "ds", "--exclude_frozen_parameters")
    config = json.loads((run / "adapter_config.json").read_text())
    fields = {k: v for k, v in config.items() if k in PrefixTuningConfig.__dataclass_fields__}
    encoder = PrefixEncoder(PrefixTuningConfig(**{**fields, "inference_mode": False}))
    encoder.load_state_dict({k.removeprefix("prompt_encoder.default."): v for k, v in reference.items()})
    with torch.no_grad():
        assert torch.equal(encoder(torch.arange(4).unsqueeze(0))[0], ours["prompt_embeddings"])


def test_consolidate_refuses_a_folder_without_shards(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_launch(["consolidate", str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    assert proc.returncode == 2
    assert "no DeepSpeed ZeRO shards" in proc.stderr and "Traceback" not in proc.stderr


# ---- merge ----


def _base_dir() -> Path:
    from launcher.model.builtin import materialize

    return Path(materialize("builtin:tiny-qwen2"))


def _base():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(_base_dir(), dtype=torch.float32)


def _trained_like_adapter(folder: Path, **lora: object) -> Path:
    """A LoRA adapter over the tiny base whose B (and DoRA magnitudes) are non-zero, as after training."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_base(), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", **lora))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.01)
    model.save_pretrained(folder)
    return folder


def _ids() -> torch.Tensor:
    return torch.randint(3, 2048, (2, 24), generator=torch.Generator().manual_seed(0))


VARIANTS = {
    "lora+modules_to_save": {"modules_to_save": ["embed_tokens"]},
    "rslora": {"use_rslora": True},
    "dora": {"use_dora": True},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_streaming_merge_equals_peft_merge_and_unload(variant, tmp_path, warm):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from launcher.checkpoint.merge import merge

    adapter = _trained_like_adapter(tmp_path / "adapter", **VARIANTS[variant])
    assert merge("builtin:tiny-qwen2", adapter, tmp_path / "merged", shard_size="1MB") == []
    assert (tmp_path / "merged" / "model.safetensors.index.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)  # plain transformers

    with_adapter = PeftModel.from_pretrained(_base(), str(adapter))
    with torch.no_grad():
        got, expected = merged(_ids()).logits, with_adapter(_ids()).logits
        # merged (x @ (W + BA)) and unmerged (x @ W + x @ A @ B) round differently: fp32 tolerance
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-5)
        peft_merged = with_adapter.merge_and_unload()
        torch.testing.assert_close(got, peft_merged(_ids()).logits, rtol=0, atol=1e-6)
    reference, ours = peft_merged.state_dict(), merged.state_dict()
    assert ours.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_merge_of_a_trained_adapter_through_the_cli(zero3_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    proc = run_launch(
        [
            "merge",
            "--base",
            "builtin:tiny-qwen2",
            "--adapter",
            str(zero3_run),
            "--out",
            str(tmp_path / "merged"),
            "--dtype",
            "bf16",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert merged.dtype == torch.bfloat16 and not any("lora" in name for name in merged.state_dict())
    with_adapter = PeftModel.from_pretrained(_base(), str(zero3_run))
    with torch.no_grad():
        expected = with_adapter(_ids()).logits
        got = merged.float()(_ids()).logits
    assert (got - expected).abs().max() < 0.1 * expected.abs().max()  # bf16 rounding only
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert (
        tokenizer.chat_template
        and (tmp_path / "merged" / "generation_config.json").is_file()
        == (_base_dir() / "generation_config.json").is_file()
    )


def test_merge_of_a_reward_model_adapter_says_what_it_is(tmp_path, warm):
    """Given the very base it trained on, a stage rm adapter (SEQ_CLS: LoRA + a score head) is refused as a
    reward model, not as an adapter of another base."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    scorer = AutoModelForSequenceClassification.from_pretrained(_base_dir(), num_labels=1, dtype=torch.float32)
    adapter = tmp_path / "rm"
    get_peft_model(scorer, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules="all-linear")).save_pretrained(
        adapter
    )
    proc = run_launch(
        ["merge", "--base", "builtin:tiny-qwen2", "--adapter", str(adapter), "--out", str(tmp_path / "m")]
    )
    assert proc.returncode == 2 and "is a reward model's adapter" in proc.stderr, proc.stderr
    assert "the base model the adapter was trained on" not in proc.stderr and "train.reward_model" in proc.stderr


def test_merge_into_a_quantized_base_is_refused_and_qlora_adapters_are_named(tmp_path, warm):
    from launcher.checkpoint.merge import merge

    adapter = _trained_like_adapter(tmp_path / "adapter")
    quantized = tmp_path / "quantized"
    shutil.copytree(_base_dir(), quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (quantized / "config.json").write_text(json.dumps(config))
    proc = run_launch(["merge", "--base", str(quantized), "--adapter", str(adapter), "--out", str(tmp_path / "m")])
    assert proc.returncode == 2 and "is quantized (bitsandbytes)" in proc.stderr and "Fix:" in proc.stderr
    assert "Traceback" not in proc.stderr

    (adapter / "plan.json").write_text(json.dumps({"recipe": {"model": {"quantization": {"bits": 4, "type": "nf4"}}}}))
    notes = merge("builtin:tiny-qwen2", adapter, tmp_path / "merged")
    assert len(notes) == 1 and "QLoRA" in notes[0] and "full-precision base" in notes[0]
