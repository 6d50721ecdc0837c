"""Method lora: a PEFT LoRA adapter (variants DoRA, rsLoRA, PiSSA; LoRA+; over a k-bit base, QLoRA)."""

from launcher.keys import Key
from launcher.registry import MethodSpec, Refuse


def check(r: dict, origins: dict[str, str], refuse: Refuse) -> None:
    method, dist = r["method"], r["distributed"]
    if method["variant"] == "pissa":
        if dist["engine"] == "deepspeed" and dist["zero"] == 3:
            refuse(
                "method.variant",
                "method.variant: pissa cannot run with distributed.zero: 3 (PiSSA initialises the adapter "
                "from an SVD of each full base weight, which ZeRO-3 has already partitioned at load). "
                "Fix: set distributed.zero: 2, or method.variant: lora",
            )
        if r["model"]["adapter"] is not None:
            refuse(
                "method.variant",
                "method.variant: pissa cannot continue model.adapter (PiSSA initialises a new "
                "adapter from the base's singular vectors). Fix: remove method.variant or model.adapter",
            )
        if r["model"]["quantization"] is not None:
            refuse(
                "method.variant",
                "method.variant: pissa cannot run with model.quantization (the residual base would be "
                "re-quantized, so the saved adapter could not reproduce the trained model over the "
                "original base). Fix: remove model.quantization, or method.variant: lora",
            )
    if method["loraplus_ratio"] is not None and dist["offload"] != "none":
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


SPEC = MethodSpec(adapter="launcher.methods.lora", check=check, keys=KEYS, continues_adapter=True, kbit_base=True)
