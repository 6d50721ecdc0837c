"""`launch merge`: fold a LoRA adapter into its base and write a plain HF model dir."""

from __future__ import annotations

from pathlib import Path

from launcher.checkpoint.paths import require_empty_dir

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def merge(base: str, adapter: str, out: str | Path, dtype: str = "fp32", shard_size: str = "5GB") -> Path:
    """base + adapter -> `out`: sharded safetensors, config, generation config, tokenizer (with chat template)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launcher.builtin import local_model_path

    out = Path(out)
    require_empty_dir(out)
    base_dir = local_model_path(base)
    # merge in fp32 so rounding happens once, at the final cast
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged = merged.to(getattr(torch, DTYPES[dtype]))
    merged.save_pretrained(out, max_shard_size=shard_size)
    tokenizer_source = adapter if (Path(adapter) / "tokenizer_config.json").is_file() else base_dir
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(out)
    return out
