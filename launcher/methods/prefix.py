"""Prefix tuning / P-tuning v2 through PEFT: trainable key/value prefixes in every layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from peft import PeftModel, PrefixTuningConfig, TaskType, get_peft_model
from torch import nn

from launcher.compat import prompt_learning_generates_with_its_cache

if TYPE_CHECKING:
    from launcher.recipe.types import MethodSection, Recipe


def apply(model: nn.Module, method: MethodSection, recipe: Recipe) -> PeftModel:
    """Wrap the model with `num_virtual_tokens` trainable past key/values per layer; the base
    stays frozen. prefix_projection reparameterises them through a 2-layer MLP (P-tuning v2)
    whose output, not the MLP, is what the saved adapter holds."""
    config = PrefixTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=method["num_virtual_tokens"],
        prefix_projection=method["prefix_projection"],
    )
    model = get_peft_model(model, config)
    prompt_learning_generates_with_its_cache(model)  # train.eval_generate's replies use the prefix
    return model
