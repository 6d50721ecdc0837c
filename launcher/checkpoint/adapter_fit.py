"""Does a LoRA adapter fit a base model? Decided from the two safetensors headers, before either is loaded.

`launch chat` and `launch serve` ask this before loading the base (minutes for a large model): an adapter
trained on a base of another shape is refused naming the first weight that differs. Where the base's
shapes are unknown without loading it (a hub id, .bin weights), None: PEFT's own load then catches it
(chat.attach_adapter). Torch-free.
"""

from __future__ import annotations

from pathlib import Path

from launcher.checkpoint.inputs import ADAPTER_WEIGHTS, adapter_config, safetensors_header
from launcher.model.module_names import parameter_shapes

PEFT_PREFIX = "base_model.model."
# a LoRA part's axis that meets the base weight: lora_A is (rank, in), lora_B (out, rank); the base is (out, in)
LORA_PARTS = {".lora_A.weight": ("input", -1), ".lora_B.weight": ("output", 0)}


def _misfit(name: str, shape: list[int], base: dict[str, list[int]], fan_in_fan_out: bool) -> str | None:
    """Why one adapter tensor does not fit the base (None when it does, or is of a kind not checked here)."""
    for suffix, (side, axis) in LORA_PARTS.items():
        if name.endswith(suffix):
            weight = name.removesuffix(suffix) + ".weight"
            if weight not in base:
                return f"it adapts {weight}, which the base does not have"
            base_axis = -1 - axis if fan_in_fan_out else axis  # a Conv1D base stores (in, out)
            if len(base[weight]) != 2 or shape[axis] != base[weight][base_axis]:
                return f"{weight} is {tuple(base[weight])} in the base, the adapter's {side} side is {shape[axis]}"
            return None
    if name in base and base[name] != shape:  # a fully trained copy (modules_to_save) replaces the base tensor
        return f"{name} is {tuple(base[name])} in the base and {tuple(shape)} in the adapter"
    return None


def adapter_fit_error(model_path: str, adapter: str | Path) -> str | None:
    """The refusal for an adapter whose tensors do not fit the base `model_path`, or None."""
    fan_in_fan_out = bool(adapter_config(Path(adapter)).get("fan_in_fan_out"))  # a damaged adapter: refused here
    base = parameter_shapes(model_path)
    if base is None:
        return None
    for key, info in safetensors_header(Path(adapter) / ADAPTER_WEIGHTS).items():
        if key == "__metadata__":
            continue
        why = _misfit(key.removeprefix(PEFT_PREFIX), info["shape"], base, fan_in_fan_out)
        if why:
            return (
                f"adapter {adapter} does not fit the model {model_path}: {why}. "
                "Fix: pass the base model the adapter was trained on"
            )
    return None
