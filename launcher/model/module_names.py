"""A model's parameter names and shapes without torch, and the module-name rules the methods apply.

Names come from the safetensors headers of a local model folder (each file starts with an 8-byte
length and a JSON header of tensor names, dtypes and shapes), or, for the builtin model, from its
committed config through the memory planner's layout. `launch plan` checks method modules against
them; methods/freeze.py applies the same rules to the loaded model.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from launcher.model.builtin import builtin_config_path, is_builtin

HEADER_LIMIT = 100 * 1024 * 1024  # a header larger than this is no safetensors file


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > HEADER_LIMIT:
            raise ValueError(f"{path}: not a safetensors file")
        header = json.loads(handle.read(length))
    return {name: info["shape"] for name, info in header.items() if name != "__metadata__"}


def _missing_shard(folder: Path) -> bool:
    """A shard the model's safetensors index names is not in the folder."""
    try:
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        return any(not (folder / name).is_file() for name in set(index["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False  # no index (one file) or an unreadable one: the loader's checks report it


def parameter_shapes(model_path: str) -> dict[str, list[int]] | None:
    """Parameter name -> shape of a builtin model or a local folder of safetensors; None where unknown
    without loading (a hub id, .bin weights, an architecture the planner does not know)."""
    if is_builtin(model_path):
        from launcher.model.shape import base_tensors, shape_from_config

        shape = shape_from_config(json.loads(builtin_config_path(model_path).read_text()))
        if shape is None:  # a builtin of a layout the planner does not know
            return None
        return {t.name: [t.rows, t.cols] if t.cols > 1 else [t.rows] for t in base_tensors(shape)}
    files = sorted(Path(model_path).glob("*.safetensors")) if Path(model_path).is_dir() else []
    if _missing_shard(Path(model_path)):
        return None  # an incomplete model: the loader names the missing shard, not a shape check
    shapes: dict[str, list[int]] = {}
    try:
        for file in files:
            shapes.update(_safetensors_shapes(file))
    except (OSError, ValueError, struct.error):
        return None  # unreadable: the worker's loader reports it
    return shapes or None


def matches(name: str, modules: list[str]) -> bool:
    """True when a dotted parameter name contains one of the module names as whole segments."""
    return any(f".{m}." in f".{name}" for m in modules)


def module_names(names: list[str]) -> list[str]:
    """Every module segment of some parameter names, for 'use one of' hints."""
    return sorted({seg for n in names for seg in n.split(".")[:-1] if not seg.isdigit()})


def missing_modules_error(key: str, wanted: list[str], names: list[str]) -> str | None:
    """The refusal for module names that match no parameter, or None when all match."""
    missing = [m for m in wanted if not any(matches(n, [m]) for n in names)]
    if not missing:
        return None
    return f"{key} = {wanted}: no parameter matches {missing}. Fix: use names from {module_names(names)}"


def trainable_layer_ids(method: Mapping[str, Any], count: int) -> range:
    """The decoder layers method freeze trains: the last N (trainable_layers: +N), the first N (-N), or with
    llama_pro the N blocks `launch expand` interleaved, the last of every count / N layers (LLaMA-Factory's rule)."""
    n = method["trainable_layers"]
    if method.get("llama_pro"):
        return range(count // n - 1, count, count // n)
    return range(count - n, count) if n > 0 else range(-n)


def freeze_groups(prefix: str, count: int, method: Mapping[str, Any], names: list[str]) -> tuple[list[str], list[str]]:
    """(names in the trainable layers, names outside the decoder-layer list `prefix` of `count` layers)."""
    starts = tuple(f"{prefix}.{i}." for i in trainable_layer_ids(method, count))
    return [x for x in names if x.startswith(starts)], [x for x in names if not x.startswith(prefix + ".")]


def freeze_trainable(method: Mapping[str, Any], prefix: str, count: int, names: list[str]) -> set[str]:
    """The parameter names method freeze trains: trainable_modules (or all) of the chosen layers of the decoder-layer
    list `prefix` of `count` layers, and extra_modules outside that list."""
    layer_names, outside = freeze_groups(prefix, count, method, names)
    modules, extra = method["trainable_modules"], method["extra_modules"] or []
    chosen = {name for name in layer_names if modules == "all" or matches(name, modules)}
    return chosen | {name for name in outside if matches(name, extra)}


def freeze_error(method: Mapping[str, Any], prefix: str, count: int, names: list[str], model_path: str) -> str | None:
    """The refusal for freeze keys this model cannot satisfy (layers beyond its count, modules it lacks), or None."""
    n = method["trainable_layers"]
    if abs(n) > count:
        return (
            f"method.trainable_layers = {n}, but {model_path} has {count} decoder layers. "
            f"Fix: set method.trainable_layers between -{count} and {count}"
        )
    if method.get("llama_pro") and count % n:
        return (
            f"method.trainable_layers = {n} with method.llama_pro: {model_path} has {count} decoder layers, which "
            f"{n} interleaved blocks cannot split evenly (one new block after every layers / N). Fix: the N given "
            "to `launch expand` for this model"
        )
    layer_names, outside = freeze_groups(prefix, count, method, names)
    if method["trainable_modules"] != "all":
        error = missing_modules_error("method.trainable_modules", method["trainable_modules"], layer_names)
        if error:
            return error
    return missing_modules_error("method.extra_modules", method["extra_modules"] or [], outside)


def model_layer_count(model_path: str) -> int | None:
    """num_hidden_layers (or num_layers) of a builtin model or a local folder's config.json."""
    config_file = builtin_config_path(model_path) if is_builtin(model_path) else Path(model_path) / "config.json"
    config = json.loads(config_file.read_text())
    text = config.get("text_config") or config  # multimodal configs nest the language model's
    return text.get("num_hidden_layers") or text.get("num_layers")


def layer_list(names: list[str], count: int) -> str | None:
    """The dotted prefix of the list of `count` numbered decoder layers among parameter names (model.layers)."""
    found: dict[str, set[int]] = {}
    for name in names:
        match = re.match(r"(.+?)\.(\d+)\.", name)
        if match:
            found.setdefault(match[1], set()).add(int(match[2]))
    return next((prefix for prefix, indices in found.items() if len(indices) == count), None)


def lora_targets_error(key: str, wanted: list[str], shapes: dict[str, list[int]]) -> str | None:
    """The refusal for LoRA targets no adaptable module (a 2-D weight: linear or embedding) has, as PEFT
    matches them (the module's name, or its dotted tail), or None when every target is found."""
    adaptable = [
        name[: -len(".weight")] for name, shape in shapes.items() if name.endswith(".weight") and len(shape) == 2
    ]
    missing = [t for t in wanted if not any(m == t or m.endswith("." + t) for m in adaptable)]
    if not missing:
        return None
    hint = sorted({m.split(".")[-1] for m in adaptable})
    return (
        f"{key} = {wanted}: the model has no linear or embedding module {missing}. Fix: use names from {hint}, or all"
    )
