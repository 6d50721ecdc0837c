"""What vLLM can take as an adapter (`eval.engine: vllm`, `launch serve --engine vllm`): a plain LoRA adapter, which
it loads as a LoRARequest / --lora-modules over the base as saved. Checked from adapter_config.json and the run's
plan.json before vLLM is imported or any model is read."""

from __future__ import annotations

from pathlib import Path

from launcher.checkpoint.inputs import ADAPTER_CONFIG, base_loading, read_json


def vllm_adapter_refusal(adapter: str, hf_engine: str) -> str | None:
    """Why vLLM cannot serve `adapter` as it is, with the fix (`hf_engine`: how this command picks transformers
    instead), or None for a plain LoRA adapter over a base loaded as saved."""
    config = read_json(Path(adapter) / ADAPTER_CONFIG)
    peft_type = config.get("peft_type")
    rope = base_loading(adapter).rope_scaling
    if peft_type != "LORA":
        why = f"is an adapter of peft_type {peft_type} (its {ADAPTER_CONFIG}), and vLLM loads LoRA adapters only"
    elif config.get("use_dora"):
        why = f"is a DoRA adapter (use_dora in its {ADAPTER_CONFIG}), which vLLM does not load"
    elif rope:
        why = (
            f"trained under RoPE scaling ({rope['rope_type']} x{rope['factor']}, its run's plan.json), which vLLM "
            "would not set on the base it loads as saved"
        )
    else:
        return None
    from launcher.checkpoint.merge import ADAPTER_UPDATES  # lazily: merge imports torch

    merge = (
        ", or `launch merge` it into its base and pass the merged model alone" if peft_type in ADAPTER_UPDATES else ""
    )
    return f"{adapter} {why}. Fix: {hf_engine} (transformers loads it as trained){merge}"
