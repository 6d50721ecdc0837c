"""LoRA through PEFT: rank, alpha, dropout, target modules and variants."""

from __future__ import annotations

from peft import LoraConfig, TaskType, get_peft_model


def apply(model, method: dict, recipe: dict):
    """Wrap the model with a LoRA adapter; the base stays frozen."""
    target = method["target"]
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=method["rank"],
        lora_alpha=method["alpha"],
        lora_dropout=method["dropout"],
        # PEFT's "all-linear" = every linear layer except the output head, for any architecture
        target_modules="all-linear" if target == "all" else target,
        use_dora=method["variant"] == "dora",
        use_rslora=method["variant"] == "rslora",
        init_lora_weights="pissa" if method["variant"] == "pissa" else True,
        modules_to_save=method["additional_target"],
    )
    return get_peft_model(model, config)
