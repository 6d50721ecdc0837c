"""Freeze tuning: train the last (or first) N decoder layers, optionally only some modules in
them, plus named modules outside the layers; everything else stays frozen."""

from __future__ import annotations

import os
import re
from collections import defaultdict
from typing import TYPE_CHECKING

from torch import nn

from launcher.errors import MethodError
from launcher.model.module_names import freeze_error, freeze_trainable

if TYPE_CHECKING:
    from launcher.recipe.types import MethodSection, Recipe


def _decoder_layers(model: nn.Module) -> tuple[str, int]:
    """(dotted name, length) of the ModuleList holding the decoder layers, for any architecture."""
    count = model.config.get_text_config().num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return name, count
    raise MethodError(
        f"method.name = freeze: no list of {count} decoder layers found in "
        f"{type(model).__name__}. Fix: use method.name: lora or full for this model"
    )


def _summary(names: list[str]) -> list[str]:
    """Trainable names with layer indices folded: model.layers.{2,3}.mlp.up_proj.weight."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name in names:
        match = re.search(r"\.(\d+)\.", name)
        key = name if match is None else name[: match.start()] + ".{}." + name[match.end() :]
        groups[key].append(match.group(1) if match else "")
    return [key.replace("{}", "{" + ",".join(idx) + "}") for key, idx in groups.items()]


def apply(model: nn.Module, method: MethodSection, recipe: Recipe) -> nn.Module:
    """Freeze all parameters, then unfreeze the selected layers' modules and the extra modules."""
    prefix, count = _decoder_layers(model)
    all_names = [name for name, _ in model.named_parameters()]
    error = freeze_error(method, prefix, count, all_names, recipe["model"]["path"])
    if error:
        raise MethodError(error)
    chosen = freeze_trainable(method, prefix, count, all_names)
    for name, param in model.named_parameters():
        param.requires_grad_(name in chosen)
    if os.environ.get("RANK", "0") == "0":
        print(
            "[launcher] freeze: trainable parameters:\n  "
            + "\n  ".join(_summary([name for name in all_names if name in chosen])),
            flush=True,
        )
    return model
