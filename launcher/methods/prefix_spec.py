"""Method prefix: trainable key/value prefixes in every layer (PEFT prefix tuning / P-tuning v2)."""

from launcher.keys import Key
from launcher.registry import MethodSpec, Refuse


def check(r: dict, origins: dict[str, str], refuse: Refuse) -> None:
    dist = r["distributed"]
    if r["train"]["gradient_checkpointing"]:
        refuse(
            "train.gradient_checkpointing",
            "train.gradient_checkpointing: true cannot run with method.name: prefix "
            "(PEFT's prefix tuning does not work with gradient checkpointing). "
            "Fix: set train.gradient_checkpointing: false",
        )
    if dist["engine"] == "deepspeed" and dist["zero"] == 3:
        refuse(
            "distributed.zero",
            "distributed.zero: 3 cannot save method.name: prefix (PEFT computes the saved prefix "
            "on rank 0 alone from ZeRO-3-partitioned weights, which hangs). Fix: set distributed.zero: 2",
        )


KEYS = {  # method.*
    "num_virtual_tokens": Key("int", 16, "prefix length", low=1),
    "prefix_projection": Key("bool", False, "reparameterise the prefix through an MLP (P-tuning v2 style)"),
}


SPEC = MethodSpec(adapter="launcher.methods.prefix", check=check, keys=KEYS, virtual_tokens=True)
