"""Method lora: a PEFT LoRA adapter (variants DoRA, rsLoRA, PiSSA; LoRA+; over a k-bit base, QLoRA)."""

from collections.abc import Mapping
from typing import Any

from launcher.model.module_names import lora_targets_error, matches, missing_modules_error
from launcher.model.shape import Shape, Tensor
from launcher.registry import Key, MethodSpec, Refuse, engine_spec, sharded_by


def check(recipe: dict, origins: dict[str, str], refuse: Refuse) -> None:
    method, dist = recipe["method"], recipe["distributed"]
    if method["variant"] == "pissa":
        if engine_spec(dist["engine"]).shards_parameters(dist):
            key, setting, fix = sharded_by(dist)
            why = (
                "which ZeRO-3 has already partitioned at load"
                if key == "distributed.zero"
                else "and is tested only with whole weights on every rank"
            )
            refuse(
                "method.variant",
                f"method.variant: pissa cannot run with {setting} (PiSSA initialises the adapter "
                f"from an SVD of each full base weight, {why}). Fix: {fix}, or method.variant: lora",
            )
        if recipe["model"]["adapter"] is not None:
            refuse(
                "method.variant",
                "method.variant: pissa cannot continue model.adapter (PiSSA initialises a new "
                "adapter from the base's singular vectors). Fix: remove method.variant or model.adapter",
            )
        if recipe["model"]["quantization"] is not None:
            refuse(
                "method.variant",
                "method.variant: pissa cannot run with model.quantization (the residual base would be "
                "re-quantized, so the saved adapter could not reproduce the trained model over the "
                "original base). Fix: remove model.quantization, or method.variant: lora",
            )
    if method["target"] == []:
        refuse(
            "method.target",
            "method.target: [] adapts no module, so LoRA would have nothing to train. "
            "Fix: name modules, e.g. method.target: [q_proj, v_proj], or method.target: all",
        )
    if method["loraplus_ratio"] is not None and dist["offload"] != "none" and dist["engine"] == "deepspeed":
        refuse(
            "method.loraplus_ratio",
            f"method.loraplus_ratio cannot run with distributed.offload: {dist['offload']} "
            "(ZeRO-Offload steps with DeepSpeed's own CPU Adam, which has no LoRA+ groups). "
            "Fix: set distributed.offload: none or remove method.loraplus_ratio",
        )


KEYS = {  # method.*
    "rank": Key("int", 8, "LoRA rank", low=1),
    "alpha": Key("float", 16, "LoRA alpha (scaling = alpha / rank)", low=0, low_inclusive=False),
    "dropout": Key("float", 0.0, "LoRA dropout", low=0, high=1, high_inclusive=False),
    "target": Key(
        "str_list",
        "all",
        "modules to adapt: all linear layers except the output head, or a list of names",
        literals=("all",),
    ),
    "variant": Key("str", "lora", "LoRA variant", choices=("lora", "dora", "rslora", "pissa")),
    "loraplus_ratio": Key(
        "float",
        None,
        "LoRA+ learning-rate multiplier for the B matrices",
        nullable=True,
        low=0,
        low_inclusive=False,
    ),
    "additional_target": Key(
        "str_list",
        None,
        "modules trained fully beside the adapter (e.g. embed_tokens)",
        nullable=True,
    ),
}


def split(shape: Shape, base: list[Tensor], method: Mapping[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
    """The base is frozen; trained are the adapter tensors PEFT adds: A (r x in) and B (out x r) per targeted
    linear layer, DoRA's magnitude vector, and full copies of `additional_target` modules."""
    r, target = method["rank"], method["target"]
    out = []
    for t in base:
        module = t.name.rsplit(".", 1)[0]
        # PEFT matches a target name against the end of the module's dotted name
        named = target != "all" and t.cols > 1 and any(module == m or module.endswith("." + m) for m in target)
        if not (t.linear if target == "all" else named) or not t.name.endswith(".weight"):
            continue
        out += [Tensor(module + ".lora_A.weight", r, t.cols), Tensor(module + ".lora_B.weight", t.rows, r)]
        if method["variant"] == "dora":
            out.append(Tensor(module + ".lora_magnitude_vector", t.rows))
    extra = method["additional_target"] or []
    return base, out + [Tensor(t.name + ".modules_to_save", t.rows, t.cols) for t in base if matches(t.name, extra)]


def model_check(method: Mapping[str, Any], shapes: dict[str, list[int]], model_path: str) -> str | None:
    """Targets no linear or embedding module of the model has; modules to save it lacks."""
    error = None if method["target"] == "all" else lora_targets_error("method.target", method["target"], shapes)
    if error is None and method["additional_target"]:
        error = missing_modules_error("method.additional_target", method["additional_target"], list(shapes))
    return error


def notes(recipe: Mapping[str, Any]) -> list[str]:
    """ZeRO-3 over a 4-bit base: what tests/methods/test_methods.py verifies, and what no test here can."""
    quant, dist = recipe["model"]["quantization"], recipe["distributed"]
    if quant is None or quant["bits"] != 4 or dist["engine"] != "deepspeed" or dist["zero"] != 3:
        return []
    return [
        "ZeRO-3 + 4-bit QLoRA: verified on CPU here (2 processes: it trains, and the adapter reloads over the "
        "quantized base with the trained model's logits; docs/methods.md). On GPU, ZeRO-3 partitions 4-bit "
        "weights only when bitsandbytes' bnb_4bit_quant_storage matches the compute dtype, which the launcher "
        "does not set: not run or measured on GPU."
    ]


SPEC = MethodSpec(
    adapter="launcher.methods.lora",
    split=split,
    check=check,
    model_check=model_check,
    keys=KEYS,
    continues_adapter=True,
    kbit_base=True,
    notes=notes,
)
