"""Full fine-tuning: every parameter of the model trains."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from launcher.recipe.types import MethodSection, Recipe


def apply(model: nn.Module, method: MethodSection, recipe: Recipe) -> nn.Module:
    """Mark every parameter trainable (a loaded checkpoint may carry frozen ones)."""
    return model.requires_grad_(True)
