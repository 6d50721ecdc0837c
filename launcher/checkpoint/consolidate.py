"""`launch consolidate`: a ZeRO-sharded checkpoint -> PEFT adapter or HF model dir, offline on CPU.

DeepSpeed owns its shard format, so its zero_to_fp32 reader rebuilds the fp32 master weights;
this module only maps them to the artefact the run would have saved: PEFT's key names and
adapter_config.json for adapter runs, a sharded safetensors model dir for full runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from launcher.checkpoint.paths import require_empty_dir

ADAPTER_NAME = "default"
COPIED_FILES = ("adapter_config.json", "config.json", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


class ConsolidateError(ValueError):
    """A checkpoint that cannot be consolidated; the message says why and what to do."""


def zero_tag(checkpoint: Path) -> str:
    """The global_step folder DeepSpeed wrote in this checkpoint (from its `latest` file)."""
    latest = checkpoint / "latest"
    if latest.is_file():
        tag = latest.read_text().strip()
    else:
        tags = sorted(p.name for p in checkpoint.glob("global_step*") if p.is_dir())
        if not tags:
            raise ConsolidateError(f"{checkpoint} holds no DeepSpeed ZeRO shards (no `latest` file, no global_step* "
                                   "folder). Fix: pass an output.dir/checkpoint-<step> folder of a DeepSpeed run")
        tag = tags[-1]
    if not (checkpoint / tag).is_dir():
        raise ConsolidateError(f"{checkpoint}/latest names {tag!r}, which is missing: the checkpoint is incomplete")
    return tag


def peft_key(name: str) -> str:
    """Trainer-side parameter name -> the key PEFT stores in adapter_model.safetensors."""
    if ".lora_" not in name:
        raise ConsolidateError(f"trainable parameter {name!r} is not a LoRA weight; consolidating this kind of "
                               "adapter is not supported yet")
    return name.replace(f".{ADAPTER_NAME}.", ".")


def consolidate(checkpoint: str | Path, out: str | Path, max_shard_size: str = "5GB") -> Path:
    """Write the consolidated adapter (LoRA runs) or model (full runs) of `checkpoint` into `out`."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from huggingface_hub import save_torch_state_dict
    from safetensors.torch import save_file

    checkpoint, out = Path(checkpoint), Path(out)
    if not checkpoint.is_dir():
        raise ConsolidateError(f"checkpoint {checkpoint} is not a folder. Fix: pass output.dir/checkpoint-<step>")
    require_empty_dir(out)
    tag = zero_tag(checkpoint)
    is_adapter = (checkpoint / "adapter_config.json").is_file()
    # frozen base weights are not in an adapter; a full run's are all trainable
    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=tag, exclude_frozen_parameters=is_adapter)
    out.mkdir(parents=True, exist_ok=True)
    if is_adapter:
        save_file({peft_key(k): v.contiguous() for k, v in state.items()}, str(out / "adapter_model.safetensors"))
    else:
        save_torch_state_dict({k: v.contiguous() for k, v in state.items()}, str(out), max_shard_size=max_shard_size)
    for name in COPIED_FILES:
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, out / name)
    return out
