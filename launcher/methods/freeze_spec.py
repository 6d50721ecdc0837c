"""Method freeze: the last (or first) N decoder layers train, the rest stays frozen."""

from launcher.keys import Key
from launcher.memory import Shape, Tensor, layer_prefix
from launcher.module_names import freeze_error, layer_list, matches, model_layer_count
from launcher.registry import MethodSpec, Refuse


def check(r: dict, origins: dict[str, str], refuse: Refuse) -> None:
    if r["method"]["trainable_layers"] == 0:
        refuse(
            "method.trainable_layers",
            "method.trainable_layers: 0 trains no layer. Fix: +N for the last N decoder layers, -N for the first N",
        )


KEYS = {  # method.*
    "trainable_layers": Key("int", 2, "+N trains the last N decoder layers, -N the first N"),
    "trainable_modules": Key("str_list", "all", "modules inside the trainable layers", literals=("all",)),
    "extra_modules": Key(
        "str_list",
        None,
        "modules outside the layers to train (embed_tokens, lm_head, norm)",
        nullable=True,
    ),
}


def split(shape: Shape, base: list[Tensor], method: dict) -> tuple[list[Tensor], list[Tensor]]:
    """The chosen layers' tensors (of trainable_modules) and the extra modules train; the rest is frozen."""
    n = max(-shape.layers, min(shape.layers, method["trainable_layers"]))
    layers = range(shape.layers - n, shape.layers) if n > 0 else range(-n)
    prefixes = tuple(layer_prefix(shape, i) for i in layers)
    modules, extra = method["trainable_modules"], method["extra_modules"] or []
    chosen = [t for t in base if t.name.startswith(prefixes) and (modules == "all" or matches(t.name, modules))]
    trainable = chosen + [t for t in base if ".layers." not in t.name and matches(t.name, extra)]
    names = {t.name for t in trainable}
    return [t for t in base if t.name not in names], trainable


def model_check(method: dict, shapes: dict[str, list[int]], model_path: str) -> str | None:
    """Layers beyond the model's count, modules its layers (or the rest of it) lack."""
    names, count = list(shapes), model_layer_count(model_path)
    prefix = layer_list(names, count) if count else None
    return None if prefix is None else freeze_error(method, prefix, count, names, model_path)


SPEC = MethodSpec(adapter="launcher.methods.freeze", split=split, check=check, model_check=model_check, keys=KEYS)
