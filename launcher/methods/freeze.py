"""Freeze tuning: train the last (or first) N decoder layers, optionally only some modules in
them, plus named modules outside the layers; everything else stays frozen."""

from __future__ import annotations

import os
import re
from collections import defaultdict

from torch import nn

from launcher.methods.errors import MethodError


def _decoder_layers(model: nn.Module) -> tuple[str, int]:
    """(dotted name, length) of the ModuleList holding the decoder layers, for any architecture."""
    count = model.config.get_text_config().num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return name, count
    raise MethodError(f"method.name = freeze: no list of {count} decoder layers found in "
                      f"{type(model).__name__}. Fix: use method.name: lora or full for this model")


def _matches(name: str, modules: list[str]) -> bool:
    """True when a dotted parameter name contains one of the module names as whole segments."""
    return any(f".{m}." in f".{name}" for m in modules)


def _module_names(names: list[str]) -> list[str]:
    """Every module segment of some parameter names, for 'use one of' hints."""
    return sorted({seg for n in names for seg in n.split(".")[:-1] if not seg.isdigit()})


def _check_found(key: str, wanted: list[str], names: list[str]) -> None:
    missing = [m for m in wanted if not any(_matches(n, [m]) for n in names)]
    if missing:
        raise MethodError(f"{key} = {wanted}: no parameter matches {missing}. "
                          f"Fix: use names from {_module_names(names)}")


def _summary(names: list[str]) -> list[str]:
    """Trainable names with layer indices folded: model.layers.{2,3}.mlp.up_proj.weight."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name in names:
        match = re.search(r"\.(\d+)\.", name)
        key = name if match is None else name[:match.start()] + ".{}." + name[match.end():]
        groups[key].append(match.group(1) if match else "")
    return [key.replace("{}", "{" + ",".join(idx) + "}") for key, idx in groups.items()]


def apply(model: nn.Module, method: dict, recipe: dict) -> nn.Module:
    """Freeze all parameters, then unfreeze the selected layers' modules and the extra modules."""
    prefix, count = _decoder_layers(model)
    n = method["trainable_layers"]
    if abs(n) > count:
        raise MethodError(f"method.trainable_layers = {n}, but {recipe['model']['path']} has {count} decoder layers. "
                          f"Fix: set method.trainable_layers between -{count} and {count}")
    layers = range(count - n, count) if n > 0 else range(-n)
    in_layers = {i: f"{prefix}.{i}." for i in layers}
    all_names = [name for name, _ in model.named_parameters()]
    layer_names = [name for name in all_names if any(name.startswith(p) for p in in_layers.values())]
    outside = [name for name in all_names if not name.startswith(prefix + ".")]
    modules, extra = method["trainable_modules"], method["extra_modules"] or []
    if modules != "all":
        _check_found("method.trainable_modules", modules, layer_names)
    _check_found("method.extra_modules", extra, outside)

    chosen = {name for name in layer_names if modules == "all" or _matches(name, modules)}
    chosen |= {name for name in outside if _matches(name, extra)}
    for name, param in model.named_parameters():
        param.requires_grad_(name in chosen)
    if os.environ.get("RANK", "0") == "0":
        print("[launcher] freeze: trainable parameters:\n  " + "\n  ".join(_summary(
            [name for name in all_names if name in chosen])), flush=True)
    return model
