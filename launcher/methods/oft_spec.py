"""Method oft: a PEFT OFT adapter (orthogonal fine-tuning: each targeted linear layer's input is rotated by a
trainable block-diagonal orthogonal matrix; the base stays frozen; over a k-bit base, QOFT)."""

from collections.abc import Mapping
from typing import Any

from launcher.methods.lora_spec import KEYS as LORA_KEYS
from launcher.model.module_names import (
    layer_list,
    lora_targets_error,
    matches,
    missing_modules_error,
    model_layer_count,
)
from launcher.model.shape import Shape, Tensor
from launcher.registry import Key, MethodSpec, Refuse

DEFAULT_BLOCK_SIZE = 32


def check(recipe: dict, origins: dict[str, str], refuse: Refuse) -> None:
    method = recipe["method"]
    if (method["blocks"] == 0) == (method["block_size"] == 0):
        refuse(
            "method.blocks",
            f"method.blocks: {method['blocks']} with method.block_size: {method['block_size']}: OFT takes exactly "
            "one of them (blocks x block_size = each layer's input width, so one sets the other). Fix: "
            f"method.block_size: {DEFAULT_BLOCK_SIZE} with method.blocks: 0, or method.blocks: N with method.block_size: 0",
        )
    if method["target"] == []:
        refuse(
            "method.target",
            "method.target: [] adapts no module, so OFT would have nothing to train. "
            "Fix: name modules, e.g. method.target: [q_proj, v_proj], or method.target: all",
        )


KEYS = {  # method.*; target and additional_target are LoRA's keys (the same meaning)
    "block_size": Key(
        "int",
        DEFAULT_BLOCK_SIZE,
        "OFT: size of each orthogonal block (PEFT's oft_block_size); 0: set by method.blocks",
        low=0,
    ),
    "blocks": Key("int", 0, "OFT: blocks per layer (PEFT's r, LF's oft_rank); 0: set by method.block_size", low=0),
    "module_dropout": Key(
        "float",
        0.0,
        "OFT: share of blocks set to the identity in each training step",
        low=0,
        high=1,
        high_inclusive=False,
    ),
    "coft": Key("bool", False, "OFT: constrained OFT, each rotation kept within method.eps of the identity"),
    "eps": Key("float", 6e-5, "OFT: COFT's bound on the rotation (only with method.coft)", low=0, low_inclusive=False),
    "block_share": Key("bool", False, "OFT: one rotation shared by all blocks of a layer"),
    "cayley_neumann": Key(
        "bool", True, "OFT: the Cayley transform by a Neumann series (PEFT's default, faster); false: exact inverse"
    ),
    "neumann_terms": Key("int", 5, "OFT: terms of the Neumann series", low=1),
    "target": LORA_KEYS["target"],
    "additional_target": LORA_KEYS["additional_target"],
}


def _targeted(weights: dict[str, int], method: Mapping[str, Any], layers: str | None) -> dict[str, int]:
    """module -> input width of each linear weight OFT adapts: `all` = the decoder layers' linear weights
    (PEFT's all-linear), else the modules named as PEFT matches them (the name or its dotted tail)."""
    target = method["target"]
    if target == "all":
        return {m: cols for m, cols in weights.items() if layers is not None and m.startswith(layers + ".")}
    return {m: cols for m, cols in weights.items() if any(m == t or m.endswith("." + t) for t in target)}


def block_size_for(width: int, method: Mapping[str, Any]) -> int:
    """The block size OFT uses on a layer of input width `width` (exact: check refused what does not divide)."""
    return method["block_size"] or width // method["blocks"]


def split(shape: Shape, base: list[Tensor], method: Mapping[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
    """The base is frozen; trained is one (blocks x b(b-1)/2) skew-symmetric parameter per adapted linear layer
    (b = block size; one block with block_share), and full copies of `additional_target` modules."""
    weights = {t.name.removesuffix(".weight"): t.cols for t in base if t.linear}
    layers = layer_list([t.name for t in base], shape.layers)
    out = []
    for module, width in _targeted(weights, method, layers).items():
        b = block_size_for(width, method)
        out.append(Tensor(module + ".oft_R.weight", 1 if method["block_share"] else width // b, b * (b - 1) // 2))
    extra = method["additional_target"] or []
    return base, out + [Tensor(t.name + ".modules_to_save", t.rows, t.cols) for t in base if matches(t.name, extra)]


def model_check(method: Mapping[str, Any], shapes: dict[str, list[int]], model_path: str) -> str | None:
    """Targets the model lacks; a block size (or block count) that does not divide a targeted layer's input width
    (PEFT would silently pick another one); modules to save it lacks."""
    error = None if method["target"] == "all" else lora_targets_error("method.target", method["target"], shapes)
    if error is None:
        error = block_error(method, shapes, model_layer_count(model_path))
    if error is None and method["additional_target"]:
        error = missing_modules_error("method.additional_target", method["additional_target"], list(shapes))
    return error


def block_error(method: Mapping[str, Any], shapes: dict[str, list[int]], count: int | None) -> str | None:
    """The refusal for a block size or count that does not divide the input width of a layer OFT adapts, or None
    (shapes: parameter name -> shape; count: the model's decoder layers)."""
    layers = layer_list(list(shapes), count) if count else None
    weights = {n.removesuffix(".weight"): s[1] for n, s in shapes.items() if n.endswith(".weight") and len(s) == 2}
    key, value = (
        ("method.block_size", method["block_size"]) if method["block_size"] else ("method.blocks", method["blocks"])
    )
    for module, width in _targeted(weights, method, layers).items():
        if width % value or value > width:
            widths = sorted(set(_targeted(weights, method, layers).values()))
            return (
                f"{key} = {value} does not divide the input width {width} of {module} (PEFT would silently change "
                "it for that layer). Fix: a divisor of every adapted layer's input width "
                f"{widths}, or method.target naming layers it divides"
            )
    return None


SPEC = MethodSpec(
    adapter="launcher.methods.oft", split=split, check=check, model_check=model_check, keys=KEYS, kbit_base=True
)
