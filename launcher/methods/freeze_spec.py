"""Method freeze: the last (or first) N decoder layers train, the rest stays frozen."""

from collections.abc import Mapping
from typing import Any

from launcher.model.module_names import freeze_error, freeze_trainable, layer_list, model_layer_count
from launcher.model.shape import Shape, Tensor, layer_list_name
from launcher.registry import Key, MethodSpec, Refuse


def check(recipe: dict, origins: dict[str, str], refuse: Refuse) -> None:
    method = recipe["method"]
    if method["trainable_layers"] == 0 and not method["extra_modules"]:
        refuse(
            "method.trainable_layers",
            "method.trainable_layers: 0 without method.extra_modules trains nothing. Fix: +N for the last N "
            "decoder layers, -N for the first N, or method.extra_modules: [lm_head] to train only the output "
            "head (linear probing)",
        )
    if method["llama_pro"] and method["trainable_layers"] < 1:
        refuse(
            "method.llama_pro",
            f"method.llama_pro with method.trainable_layers: {method['trainable_layers']}: LLaMA Pro trains "
            "the N blocks `launch expand` interleaved, so N counts them and must be positive. Fix: set "
            "method.trainable_layers to the --blocks given to `launch expand`",
        )


KEYS = {  # method.*
    "trainable_layers": Key(
        "int", 2, "+N trains the last N decoder layers, -N the first N, 0 none (only extra_modules: linear probing)"
    ),
    "trainable_modules": Key("str_list", "all", "modules inside the trainable layers", literals=("all",)),
    "extra_modules": Key(
        "str_list",
        None,
        "modules outside the layers to train (embed_tokens, lm_head, norm)",
        nullable=True,
    ),
    "llama_pro": Key(
        "bool",
        False,
        "LLaMA Pro: trainable_layers counts the blocks `launch expand` interleaved (the last of every "
        "layers / N layers trains) instead of the last N layers",
    ),
}


def split(shape: Shape, base: list[Tensor], method: Mapping[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
    """What methods/freeze.py trains of the loaded model (module_names.freeze_trainable); the rest is frozen."""
    chosen = freeze_trainable(method, layer_list_name(shape), shape.layers, [t.name for t in base])
    return [t for t in base if t.name not in chosen], [t for t in base if t.name in chosen]


def model_check(method: Mapping[str, Any], shapes: dict[str, list[int]], model_path: str) -> str | None:
    """Layers beyond the model's count, modules its layers (or the rest of it) lack."""
    names, count = list(shapes), model_layer_count(model_path)
    prefix = layer_list(names, count) if count else None
    return None if prefix is None or count is None else freeze_error(method, prefix, count, names, model_path)


SPEC = MethodSpec(adapter="launcher.methods.freeze", split=split, check=check, model_check=model_check, keys=KEYS)
