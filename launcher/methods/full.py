"""Full fine-tuning: every parameter of the model trains."""

from __future__ import annotations

from torch import nn


def apply(model: nn.Module, method: dict, recipe: dict) -> nn.Module:
    """Mark every parameter trainable (a loaded checkpoint may carry frozen ones)."""
    return model.requires_grad_(True)
