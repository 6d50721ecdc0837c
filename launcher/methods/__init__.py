"""Fine-tuning methods. Each is registered in launcher/registry.py by its torch-free spec module
(<name>_spec.py) naming its adapter module (<name>.py: `apply(model, method_cfg, recipe) -> model`,
plus optional worker hooks, see registry.MethodSpec). Nothing heavy is imported here."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from launcher.registry import method_spec

if TYPE_CHECKING:
    from launcher.recipe.types import Recipe

__all__ = ["apply_method", "call_hook", "count_parameters"]


def _adapter(recipe: Recipe):
    return importlib.import_module(method_spec(recipe["method"]["name"]).adapter)


def apply_method(model, recipe: Recipe):
    """Make the model trainable with the recipe's method."""
    return _adapter(recipe).apply(model, recipe["method"], recipe)


def call_hook(recipe: Recipe, hook: str, *args) -> None:
    """The recipe's method's worker hook (after_apply, prepare_trainer, after_save), where it defines one."""
    function = getattr(_adapter(recipe), hook, None)
    if function is not None:
        function(*args)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; ZeRO-3 partitions report their full size via ds_numel."""
    trainable = total = 0
    for param in model.parameters():
        numel = getattr(param, "ds_numel", None) or param.numel()
        total += numel
        if param.requires_grad:
            trainable += numel
    return trainable, total
