"""Method freeze: the last (or first) N decoder layers train, the rest stays frozen."""

from launcher.keys import Key
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


SPEC = MethodSpec(adapter="launcher.methods.freeze", check=check, keys=KEYS)
