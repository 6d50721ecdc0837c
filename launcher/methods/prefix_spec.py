"""Method prefix: trainable key/value prefixes in every layer (PEFT prefix tuning / P-tuning v2)."""

from collections.abc import Mapping
from typing import Any

from launcher.model.shape import Shape, Tensor
from launcher.registry import Key, MethodSpec, Refuse, engine_spec, sharded_by


def check(recipe: dict, origins: dict[str, str], refuse: Refuse) -> None:
    dist = recipe["distributed"]
    if recipe["train"]["gradient_checkpointing"]:
        refuse(
            "train.gradient_checkpointing",
            "train.gradient_checkpointing: true cannot run with method.name: prefix "
            "(PEFT's prefix tuning does not work with gradient checkpointing). "
            "Fix: set train.gradient_checkpointing: false",
        )
    if engine_spec(dist["engine"]).shards_parameters(dist):
        key, setting, fix = sharded_by(dist)
        refuse(
            key,
            f"{setting} cannot save method.name: prefix (PEFT computes the saved prefix "
            f"on rank 0 alone from weights sharded over the ranks, which hangs). Fix: {fix}",
        )


KEYS = {  # method.*
    "num_virtual_tokens": Key("int", 16, "prefix length", low=1),
    "prefix_projection": Key("bool", False, "reparameterise the prefix through an MLP (P-tuning v2 style)"),
}


def split(shape: Shape, base: list[Tensor], method: Mapping[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
    """The base is frozen; trained is PEFT's PrefixEncoder: token_dim = head_dim x kv heads; a key and a value per layer."""
    tokens, dim, flat = method["num_virtual_tokens"], shape.kv_dim, 2 * shape.layers * shape.kv_dim
    if not method["prefix_projection"]:
        return base, [Tensor("prefix_encoder.embedding.weight", tokens, flat)]
    return base, [
        Tensor("prefix_encoder.embedding.weight", tokens, dim),
        Tensor("prefix_encoder.transform.0.weight", dim, dim),
        Tensor("prefix_encoder.transform.0.bias", dim),
        Tensor("prefix_encoder.transform.2.weight", flat, dim),
        Tensor("prefix_encoder.transform.2.bias", flat),
    ]


SPEC = MethodSpec(adapter="launcher.methods.prefix", split=split, check=check, keys=KEYS, virtual_tokens=True)
