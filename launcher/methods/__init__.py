"""Fine-tuning methods: each module has one `apply(model, method_cfg, recipe) -> model`."""

from __future__ import annotations

from launcher.methods import freeze, full, lora, prefix

__all__ = ["METHODS", "apply_method", "count_parameters"]

METHODS = {
    "full": full.apply,
    "freeze": freeze.apply,
    "lora": lora.apply,
    "prefix": prefix.apply,
}


def apply_method(model, recipe: dict):
    """Make the model trainable with the recipe's method."""
    return METHODS[recipe["method"]["name"]](model, recipe["method"], recipe)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; ZeRO-3 partitions report their full size via ds_numel."""
    trainable = total = 0
    for param in model.parameters():
        numel = getattr(param, "ds_numel", None) or param.numel()
        total += numel
        if param.requires_grad:
            trainable += numel
    return trainable, total
