"""The optimizer's recipe keys (train.optimizer and the arguments of GaLore, APOLLO, BAdam and Muon), their cross-key
rules, and the name transformers' TrainingArguments receive. Torch-free: the recipe side validates, the rank builds
(launcher/worker/optimizers.py)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from typing import Any

from launcher.model.shape import Shape
from launcher.registry import Key

# transformers' own optimizer names, built by Trainer.create_optimizer
TRAINER_OPTIMIZERS = ("adamw_torch", "adamw_8bit", "paged_adamw_8bit", "adafactor")
# built by the rank from its authors' package (launcher/worker/optimizers.py) on transformers' AdamW arguments
OWN_OPTIMIZERS = ("galore_adamw", "apollo_adamw", "badam", "adam_mini", "muon")
# import bitsandbytes (galore_torch and apollo_torch import their 8-bit AdamW at package import)
BNB_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit", "galore_adamw", "apollo_adamw")
ALL_LINEAR = "all"


def _for(*optimizers: str) -> tuple[str, tuple[str, ...]]:
    return ("train.optimizer", optimizers)


def _low_rank(doc: str, rank: int, scale: float, proj_types: tuple[str, ...], extra: dict[str, Key]) -> dict[str, Key]:
    """GaLore's and APOLLO's shared fields (their defaults are LLaMA-Factory's)."""
    return {
        "target": Key(
            "str_list",
            [ALL_LINEAR],
            f"linear modules whose weights {doc} (a name matches a module whose dotted name contains it); "
            "all = every linear layer but the output head",
            commas=True,
        ),
        "rank": Key("int", rank, "rank of the gradient projection", low=1),
        "update_interval": Key("int", 200, "optimizer steps between recomputations of the projection", low=1),
        "scale": Key("float", scale, "scale of the projected update", low=0, low_inclusive=False),
        "proj_type": Key("str", "std", "which side of the weight the projection takes", choices=proj_types),
        **extra,
    }


KEYS = {  # train.*
    "optimizer": Key(
        "str",
        "adamw_torch",
        "optimizer: transformers' (adamw_torch, adamw_8bit, paged_adamw_8bit, adafactor) or GaLore, APOLLO, BAdam, "
        "Adam-mini, Muon from their authors' packages and torch (docs/optimizers.md); each one's arguments are the "
        "train section named after it",
        choices=TRAINER_OPTIMIZERS + OWN_OPTIMIZERS,
    ),
    "galore": Key(
        "section",
        {},
        "GaLore (galore-torch's GaLoreAdamW): AdamW on low-rank projections of the target weights' gradients",
        fields=_low_rank("GaLore projects", 16, 2.0, ("std", "reverse_std", "right", "left", "full"), {}),
        only_for=_for("galore_adamw"),
    ),
    "apollo": Key(
        "section",
        {},
        "APOLLO (apollo-torch's APOLLOAdamW): AdamW's update scaled per channel from a low-rank auxiliary state",
        fields=_low_rank(
            "APOLLO scales",
            16,
            32.0,
            ("std", "right", "left"),
            {
                "proj": Key("str", "random", "the projection: random or svd", choices=("random", "svd")),
                "scale_type": Key("str", "channel", "scaling per channel or per tensor", choices=("channel", "tensor")),
                "scale_front": Key("bool", False, "limit the norm growth before the scaling, not after"),
            },
        ),
        only_for=_for("apollo_adamw"),
    ),
    "badam": Key(
        "section",
        {},
        "BAdam (badam's BlockOptimizer, layer-wise): AdamW on one decoder layer at a time, the others frozen",
        fields={
            "switch_mode": Key(
                "str",
                "ascending",
                "the order of the layers that train",
                choices=("ascending", "descending", "random", "fixed"),
            ),
            "switch_interval": Key("int", 50, "optimizer steps before the next layer trains", low=1),
            "start_block": Key(
                "int", None, "the first layer to train, from 0 (null = the switch mode's first)", nullable=True, low=0
            ),
        },
        only_for=_for("badam"),
    ),
    "muon": Key(
        "section",
        {},
        "Muon (torch.optim.Muon) on the decoder's weight matrices; AdamW (torch.optim.AdamW) on the embeddings, the "
        "output head and every 1-D parameter, which Muon cannot orthogonalise",
        fields={
            "momentum": Key(
                "float", 0.95, "momentum of the orthogonalised update", low=0, high=1, high_inclusive=False
            ),
            "ns_steps": Key("int", 5, "Newton-Schulz iterations", low=1),
            "adjust_lr": Key(
                "str",
                "match_rms_adamw",
                "match_rms_adamw: 0.2 x lr x sqrt(max dim), so train.lr and weight decay tuned for AdamW carry over "
                "(Moonshot's, LLaMA-Factory's); original: Keller Jordan's sqrt(max(1, rows/cols))",
                choices=("match_rms_adamw", "original"),
            ),
        },
        only_for=_for("muon"),
    ),
}

# what each optimizer of the launcher's own cannot run with: (the methods it trains with, why)
METHODS = {
    "galore_adamw": (("full", "freeze"), "it projects the gradients of the model's own linear weights"),
    "apollo_adamw": (("full", "freeze"), "it scales the updates of the model's own linear weights"),
    "badam": (("full",), "it chooses which layer trains itself, step by step"),
    "adam_mini": (("full", "freeze"), "it assigns its learning rates by the model's own parameter names and shapes"),
}
# the module each imports and the package that installs it (pyproject's `optim` extra)
PACKAGES = {
    "galore_adamw": ("galore_torch", "galore-torch"),
    "apollo_adamw": ("apollo_torch", "apollo-torch"),
    "badam": ("badam", "badam"),
    "adam_mini": ("adam_mini", "adam-mini"),
}
ENGINE_REASON = {
    "galore_adamw": "its projection needs each weight's whole 2-D gradient, which DeepSpeed's flat partitions and FSDP's "
    "shards split (LLaMA-Factory refuses GaLore with DeepSpeed too)",
    "apollo_adamw": "its projection needs each weight's whole 2-D gradient, which DeepSpeed's flat partitions and FSDP's "
    "shards split (LLaMA-Factory refuses APOLLO with DeepSpeed too)",
    "badam": "it freezes and unfreezes layers during the run, which DeepSpeed's and FSDP's partitions are built once for",
    "adam_mini": "it finds its blocks by parameter name and shape, which DeepSpeed's flat partitions and FSDP's shards "
    "do not keep",
    "muon": "Newton-Schulz orthogonalises each weight matrix whole, which DeepSpeed's flat partitions and FSDP's shards "
    "split",
}


def check(r: Mapping[str, Any], origins: Mapping[str, str], refuse: Callable[[str, str], None]) -> None:
    """The launcher's own optimizers where they cannot work: another engine, a method they do not train, several
    processes for BAdam, LoRA+'s own optimizer beside them."""
    name, method, dist = r["train"]["optimizer"], r["method"], r["distributed"]
    if name not in OWN_OPTIMIZERS:
        return
    module, package = PACKAGES.get(name, ("torch", "torch"))
    if importlib.util.find_spec(module) is None:
        refuse(
            "train.optimizer",
            f"train.optimizer: {name} needs the {package} package, which is not installed. "
            f"Fix: pip install 'llm-launcher[optim]' (or {package})",
        )
    if dist["engine"] != "ddp":
        refuse(
            "train.optimizer",
            f"train.optimizer: {name} cannot run under distributed.engine: {dist['engine']}: {ENGINE_REASON[name]}. "
            "Fix: set distributed.engine: ddp, or train.optimizer: adamw_torch",
        )
    methods, why = METHODS.get(name, (None, ""))
    if methods is not None and method["name"] not in methods:
        refuse(
            "train.optimizer",
            f"train.optimizer: {name} cannot train method.name: {method['name']}: {why}. "
            f"Fix: set method.name: {' or '.join(methods)}, or train.optimizer: adamw_torch",
        )
    if method.get("loraplus_ratio") is not None:
        refuse(
            "method.loraplus_ratio",
            f"method.loraplus_ratio builds LoRA+'s own optimizer, which train.optimizer: {name} would replace. "
            "Fix: remove method.loraplus_ratio, or set train.optimizer: adamw_torch",
        )
    if name == "badam" and (dist["nproc_per_node"] != 1 or (dist["nnodes"] or 1) > 1):
        refuse(
            "train.optimizer",
            f"train.optimizer: badam runs in one process here (distributed.nproc_per_node: {dist['nproc_per_node']}, "
            f"nnodes: {dist['nnodes']}): BAdam trains one layer at a time, and DDP's gradient buckets are built once "
            "for a fixed set of trainable parameters (LLaMA-Factory's multi-GPU BAdam rests on DeepSpeed ZeRO-3 "
            "internals, not supported here). Fix: set distributed.nproc_per_node: 1 (and one node), or another "
            "train.optimizer",
        )


LOW_RANK_SECTIONS = {"galore_adamw": "galore", "apollo_adamw": "apollo"}


def model_refusal(train: Mapping[str, Any], shape: Shape | None, shapes: dict[str, list[int]] | None) -> str | None:
    """train.optimizer's needs of the model (its config's shape, its parameters' names and shapes, where known):
    Adam-mini's equal heads, GaLore's and APOLLO's target modules."""
    name = train["optimizer"]
    if name == "adam_mini" and shape is not None:
        head_dim = shape.head_dim or shape.hidden // shape.heads
        if head_dim * shape.heads != shape.hidden or shape.heads % shape.kv_heads:
            return (
                f"train.optimizer: adam_mini splits the attention weights into heads of hidden_size / "
                f"num_attention_heads values, and this model's heads are not that ({shape.heads} heads of "
                f"{head_dim}, hidden size {shape.hidden}, {shape.kv_heads} key/value heads). "
                "Fix: set train.optimizer: adamw_torch (or another optimizer)"
            )
    section = LOW_RANK_SECTIONS.get(name)
    if section is None or shapes is None or train[section]["target"] == [ALL_LINEAR]:
        return None
    matrices = {
        param.rsplit(".", 1)[0] for param, dims in shapes.items() if param.endswith(".weight") and len(dims) == 2
    }
    unmatched = [t for t in train[section]["target"] if not any(t in module for module in matrices)]
    if unmatched:
        return (
            f"train.{section}.target: {unmatched} name no weight matrix of the model. Fix: name its linear "
            f"modules (e.g. q_proj, down_proj; `launch plan` lists the trainable ones) or [{ALL_LINEAR}]"
        )
    return None


def trainer_optim(name: str) -> str:
    """TrainingArguments.optim: the launcher's own optimizers take transformers' AdamW arguments (lr, betas, eps)."""
    return name if name in TRAINER_OPTIMIZERS else "adamw_torch"
