"""Method freeze: the last (or first) N decoder layers train, the rest stays frozen."""

from launcher.registry import MethodSpec, Refuse


def check(r: dict, origins: dict[str, str], refuse: Refuse) -> None:
    if r["method"]["trainable_layers"] == 0:
        refuse(
            "method.trainable_layers",
            "method.trainable_layers: 0 trains no layer. Fix: +N for the last N decoder layers, -N for the first N",
        )


SPEC = MethodSpec(adapter="launcher.methods.freeze", check=check)
