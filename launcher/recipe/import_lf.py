"""`launch import-lf`: a LLaMA-Factory training YAML as a recipe.

One table, LF_KEYS, says for every LLaMA-Factory argument which recipe key(s) it becomes and how
the value converts; `import_lf` applies it and `recipe._suggest` reads it for "did you mean"
hints on LF names, and docs/import_lf.md shows it (a test keeps the three in step). Torch-free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from launcher.data.templates import LF_TEMPLATES
from launcher.errors import LFImportError, RecipeError, shown
from launcher.recipe.load import check_value
from launcher.recipe.schedule import KWARGS as SCHEDULE_KWARGS
from launcher.recipe.schema import ROPE_TYPES, SCHEMA, all_keys
from launcher.recipe.yaml_text import YamlRefusal, load_yaml_text
from launcher.util.config_file import read_config_text
from launcher.util.json_object import read_json_object
from launcher.util.timeouts import MAX_TIMEOUT_MINUTES

FLAT_KEYS = all_keys()


Setter = Callable[[Any, dict], dict]  # (LF value, whole LF config) -> {dotted recipe key: value}


@dataclass(frozen=True)
class LFKey:
    targets: tuple[str, ...]  # recipe keys it may set (hints and docs)
    convert: Setter | None = None  # None: the value as it is, into targets[0]
    note: str = ""


def _comma_list(value: Any) -> list[str]:
    """LF writes lists as 'a,b' strings; YAML lists (of names) are accepted too."""
    items = value if isinstance(value, list) else str(value).split(",")
    if any(isinstance(item, (list, dict)) for item in items):
        raise TypeError("a list of lists")
    return [str(item).strip() for item in items if str(item).strip()]


def _targets(value: Any) -> str | list[str]:
    """LF's target modules: `all`, or the names of 'a,b'."""
    return "all" if value == "all" else _comma_list(value)


def _to(key: str, fn: Callable[[Any], Any]) -> Setter:
    return lambda value, lf: {key: fn(value)}


def _when_true(key: str, value_if_true: Any) -> Setter:
    return lambda value, lf: {key: value_if_true} if value else {}


LF_STAGES = {"pt": "pt", "sft": "sft", "rm": "rm", "ppo": "ppo", "dpo": "dpo", "kto": "kto"}
# LF's template names are registered here with LF's own rendering and labels (data/templates.py); no LF name maps
# to auto: the model's own chat template is masked by this launcher's rule, not LF's, so it trains other labels
# LF's bitsandbytes under both its names; the other quantization_method values quantize with other libraries
LF_BNB = ("bnb", "bitsandbytes")
LF_ATTN = {"fa2": "flash_attention_2", "sdpa": "sdpa", "disabled": "eager", "auto": "sdpa"}
LF_ENGINES = {"huggingface": "hf", "vllm": "vllm"}


class Unmapped(Exception):
    """A value with no recipe equivalent: the reason."""


class Note(str):
    """A reason for leaving a key out that changes nothing LF would train (LF ignores the key too)."""


NO_KEY = "no equivalent recipe key"
NOTE = "#note"  # a converter's note beside the keys it sets: a value written as another that trains the same


def _stage(value: Any, lf: dict) -> dict:
    if value not in LF_STAGES:
        raise Unmapped(f"stage {shown(value)} is not one of LF's {sorted(LF_STAGES)}")
    return {"stage": LF_STAGES[value]}


def _finetuning_type(value: Any, lf: dict) -> dict:
    if value not in ("lora", "freeze", "full", "oft"):
        raise Unmapped(
            f"finetuning_type {shown(value)} has no method here (lora, freeze, full, oft; prefix is recipe-only)"
        )
    return {"method.name": value}


def _oft_target(value: Any, lf: dict) -> dict:
    """LF parses oft_target but its OFT adapts lora_target's modules (model/adapter.py): say which one trains."""
    if _targets(value) == _targets(lf.get("lora_target", "all")):
        return {}  # lora_target sets method.target to the same modules
    raise Unmapped(
        f"oft_target {one_line(value)}: LF ignores it, its OFT adapts lora_target's modules "
        f"({one_line(lf.get('lora_target', 'all'))}), so the recipe would train other modules than LF did. Fix: set "
        "lora_target to the modules LF should adapt (it then trains them too) and remove oft_target"
    )


def _llama_pro(value: Any, lf: dict) -> dict:
    if not value:
        return {}
    method = lf.get("finetuning_type", "lora")
    if method != "freeze":
        raise Unmapped(
            f"use_llama_pro with finetuning_type {one_line(method)}: LF then limits the {one_line(method)} adapter to the "
            "expanded blocks, which method.target cannot select by layer here. Fix: finetuning_type: freeze "
            "(LF's own LLaMA Pro example), or remove use_llama_pro"
        )
    return {"method.llama_pro": True}


def _template(value: Any, lf: dict) -> dict:
    if value in LF_TEMPLATES:
        return {"model.template": value}
    raise Unmapped(
        f"template {one_line(value)}: LF's format of that name is not registered here, so the model would learn "
        "another chat format. Fix: template: auto (the model's own chat template; check its text and labels with "
        f"`launch data`), or one of LF's templates registered here: {', '.join(LF_TEMPLATES)}"
    )


def _attn(value: Any, lf: dict) -> dict:
    if value not in LF_ATTN:
        raise Unmapped(f"flash_attn {shown(value)} is not one of {sorted(LF_ATTN)}")
    return {"model.attn": LF_ATTN[value]}


def _engine(value: Any, lf: dict) -> dict:
    if value not in LF_ENGINES:
        raise Unmapped(f"infer_backend {shown(value)}: `launch eval` generates with {' or '.join(LF_ENGINES)} only")
    return {"eval.engine": LF_ENGINES[value]}


def _quantization(value: Any, lf: dict) -> dict:
    method = lf.get("quantization_method", "bnb")
    if method not in LF_BNB:
        raise Unmapped(
            f"quantization_method {method}: LF quantizes the base with {method}; only bitsandbytes k-bit bases are "
            "supported here. Fix: quantization_method: bnb, or quantize with that library yourself and train "
            "LoRA on the result without quantization_bit"
        )
    if int(value) not in (4, 8):
        raise Unmapped(f"quantization_bit {shown(value)}: bitsandbytes QLoRA takes 4 or 8")
    return {"model.quantization.bits": int(value)}


def _packing(value: Any, lf: dict) -> dict:
    if lf.get("neat_packing"):
        return {"data.packing": "neat"}
    return {"data.packing": "greedy" if value else "none"}


def _variant(name: str) -> Setter:
    return _when_true("method.variant", name)


def _max_steps(value: Any, lf: dict) -> dict:
    return {"train.max_steps": int(value)} if int(value) > 0 else {}  # LF/HF default -1 = use epochs


def _warmup_steps(value: Any, lf: dict) -> dict:
    """HF's warmup_steps wins over warmup_ratio when both are set; the recipe takes one of them."""
    return {"train.warmup_steps": int(value), "train.warmup_ratio": 0.0} if value else {}


def _scheduler_kwargs(value: Any, lf: dict) -> dict:
    """lr_scheduler_kwargs: each argument as the recipe key the scheduler takes it from."""
    name = lf.get("lr_scheduler_type", LF_DEFAULTS["lr_scheduler_type"])
    ours = {hf: key for key, hf in SCHEDULE_KWARGS.get(name, {}).items()}
    if not isinstance(value, dict) or set(value) - set(ours):
        raise Unmapped(
            f"lr_scheduler_kwargs {shown(value)}: lr_scheduler_type {name} takes "
            f"{', '.join(ours) or 'no arguments'} here"
        )
    return {f"train.{ours[hf]}": item for hf, item in value.items()}


def _scheduler(value: Any, lf: dict) -> dict:
    if value not in FLAT_KEYS["train.scheduler"].choices:
        raise Unmapped(
            f"lr_scheduler_type {shown(value)}: supported are {', '.join(FLAT_KEYS['train.scheduler'].choices)}"
        )
    return {"train.scheduler": value}


# LF's optimizer switches in the order its create_custom_optimizer tries them (the first one set builds the
# optimizer), each with the train.optimizer it becomes (LoRA+ is method.loraplus_ratio)
LF_OPTIMIZERS = {
    "use_galore": "galore_adamw",
    "use_apollo": "apollo_adamw",
    "loraplus_lr_ratio": None,
    "use_badam": "badam",
    "use_adam_mini": "adam_mini",
    "use_muon": "muon",
}
# the switches whose optimizer LF builds on `optim` (its class and arguments): AdamW only here
ON_OPTIM = ("use_galore", "use_apollo", "use_badam")
LF_ADAMW = ("adamw_torch", "adamw_torch_fused")
# LF optim values that are another kernel of a recipe optimizer's update (transformers 5's default optim is fused)
LF_OPTIM_KERNELS = {"adamw_torch_fused": "adamw_torch"}


def _switch(lf: dict) -> str | None:
    """The LF optimizer switch that builds LF's optimizer, if any."""
    return next((flag for flag in LF_OPTIMIZERS if lf.get(flag)), None)


def _optimizer(value: Any, lf: dict) -> dict:
    switch = _switch(lf)
    if switch in ON_OPTIM and value not in LF_ADAMW:
        raise Unmapped(
            f"optim {shown(value)} with {switch}: LF builds {switch.removeprefix('use_')} on that optimizer; here it "
            f"runs on AdamW only. Fix: optim: adamw_torch"
        )
    if switch is not None and switch != "loraplus_lr_ratio":
        return {}  # the switch sets train.optimizer
    if value in LF_OPTIM_KERNELS:
        same = LF_OPTIM_KERNELS[value]
        return {
            "train.optimizer": same,
            NOTE: f"{value} is written as train.optimizer: {same}, the same update in torch's foreach kernel "
            "instead of the fused one (speed only)",
        }
    if value not in FLAT_KEYS["train.optimizer"].choices:
        raise Unmapped(
            f"optim {shown(value)}: supported are {', '.join([*FLAT_KEYS['train.optimizer'].choices, *LF_OPTIM_KERNELS])}"
        )
    return {"train.optimizer": value}


def _optimizer_switch(flag: str) -> Setter:
    def convert(value: Any, lf: dict) -> dict:
        if not value:
            return {}
        if _switch(lf) != flag:
            raise Unmapped(
                f"{flag}: LF builds its optimizer from {_switch(lf)} first and ignores {flag}. Fix: remove one of them"
            )
        # LF's BAdam without DeepSpeed ZeRO-3 runs on one device (it refuses several)
        return {
            "train.optimizer": LF_OPTIMIZERS[flag],
            **({"distributed.nproc_per_node": 1} if flag == "use_badam" else {}),
        }

    return convert


def _refused_when(bad: Callable[[Any], bool], why: str) -> Setter:
    """A key whose value `bad` names has no equivalent here (the others need no recipe key)."""

    def convert(value: Any, lf: dict) -> dict:
        if bad(value):
            raise Unmapped(why)
        return {}

    return convert


def _layerwise(name: str) -> Setter:
    return _refused_when(
        bool,
        f"{name}: true steps each parameter inside its own gradient hook (unclipped, one micro batch per step), "
        f"which is not offered here. Fix: {name}: false (the whole model steps once per optimizer step, clipped, "
        "with more memory for the gradients)",
    )


def _target_list(key: str) -> Setter:
    """An optimizer's target modules: ["all"], or the names of 'a,b'."""
    return _to(key, lambda v: ["all"] if v == "all" else _comma_list(v))


def _switch_interval(value: Any, lf: dict) -> dict:
    if int(value) < 1:
        raise Unmapped(
            f"badam_switch_interval {shown(value)}: LF means it to keep one block, the badam package switches every "
            "step with it. Fix: badam_switch_mode: fixed with a positive badam_switch_interval"
        )
    return {"train.badam.switch_interval": int(value)}


def _precision(name: str) -> Setter:
    return _when_true("model.dtype", name)


def _pref_loss(value: Any, lf: dict) -> dict:
    if value not in FLAT_KEYS["train.pref_loss"].choices:
        raise Unmapped(f"pref_loss {shown(value)}: supported are {', '.join(FLAT_KEYS['train.pref_loss'].choices)}")
    return {"train.pref_loss": value}


DS_STAGE = re.compile(r"z(?:ero)?_?(\d)")


def deepspeed_json(value: Any, base: Path | None) -> Path:
    """Where LF's `deepspeed:` file is (relative paths start at base)."""
    path = Path(str(value))
    return base / path if base is not None and not path.is_absolute() else path


def _deepspeed(value: Any, lf: dict, base: Path | None = None) -> dict:
    """The DeepSpeed JSON's ZeRO stage and offload; LF's example names (ds_z3_offload_config.json) if the file is absent."""
    path = deepspeed_json(value, base)
    if path.exists():
        from launcher.recipe.ds_user_config import zero_and_offload

        fix = "point deepspeed: at a DeepSpeed JSON object, or leave it out for plain DDP"
        try:  # an unreadable or invalid JSON is refused by name, as distributed.deepspeed_config's is
            stage, offload = zero_and_offload(read_json_object(path, LFImportError, fix, "deepspeed"), str(path))
        except RecipeError as err:
            raise LFImportError(f"{err} (deepspeed)") from None
    else:
        match = DS_STAGE.search(path.name)
        if not match:
            raise Unmapped(
                f"deepspeed {shown(value)}: no such file and its name does not say the ZeRO stage; "
                "set distributed.zero and distributed.offload"
            )
        stage, offload_opt = int(match.group(1)), "offload" in path.name
        offload = "all" if offload_opt and stage == 3 else "optimizer" if offload_opt else "none"
    return {"distributed.engine": "deepspeed", "distributed.zero": stage, "distributed.offload": offload}


def _generation(name: str) -> Setter:
    """LF's generating arguments: PPO's rollouts under stage ppo, `launch eval`'s otherwise."""
    return lambda value, lf: {f"{'train' if lf.get('stage') == 'ppo' else 'eval'}.{name}": value}


def _timeout(value: Any, lf: dict) -> dict:
    """LF's examples' 180000000 s (meaning "never") is capped at the OS's longest wait."""
    return {"distributed.timeout_minutes": min(MAX_TIMEOUT_MINUTES, max(1, -(-int(value) // 60)))}


def _rope_scaling(value: Any, lf: dict) -> dict:
    """LF's factor is ceil(cutoff_len / max_position_embeddings): the recipe's null factor derives the same."""
    if value is None:
        return {}
    if value in ROPE_TYPES:
        return {"model.rope_scaling.type": value}
    raise Unmapped(f"rope_scaling {shown(value)}: LF's types are {', '.join(ROPE_TYPES)}")


def _dft(value: Any, lf: dict) -> dict:
    """LF's SFT trainer alone reads use_dft_loss: other stages train as without it."""
    return {"train.sft_loss": "dft"} if value and lf.get("stage", "sft") == "sft" else {}


def _loggers(lf: dict) -> list[str]:
    """LF's report_to (ours: TensorBoard without it) and its use_swanlab, which adds swanlab."""
    loggers = _comma_list(lf["report_to"]) if "report_to" in lf else ["tensorboard"]
    if lf.get("use_swanlab"):
        loggers = [name for name in loggers if name not in ("none", "swanlab")] + ["swanlab"]
    return loggers


def _report_to(value: Any, lf: dict) -> dict:
    """LF passes report_to to transformers; the same names here log offline into output.dir."""
    loggers = _loggers(lf)
    if set(loggers) <= set(all_keys()["output.report_to"].choices):
        return {"output.report_to": loggers}
    raise Unmapped(
        f"report_to {shown(value)}: tensorboard, wandb, mlflow and swanlab (offline) or none are wired here; "
        "TensorBoard is the default"
    )


def _use_swanlab(value: Any, lf: dict) -> dict:
    """swanlab logs offline here: LF's cloud mode (an API key, a login) has no equivalent."""
    if not value:
        return {}
    if lf.get("swanlab_api_key") or lf.get("swanlab_mode", "cloud") == "cloud":
        raise Unmapped(
            "use_swanlab logs to SwanLab's cloud (swanlab_mode cloud or a swanlab_api_key: a login); swanlab logs "
            "offline into output.dir/swanlog here. Fix: swanlab_mode: local and no swanlab_api_key, and "
            "`swanlab sync` the run afterwards"
        )
    return _report_to(lf.get("report_to"), lf)


def _eval_strategy(value: Any, lf: dict) -> dict:
    if value in ("no", "steps") or value is None:
        return {}
    raise Unmapped(f"eval_strategy {shown(value)}: evaluation runs every train.eval_steps steps only")


def _resume(value: Any, lf: dict) -> dict:
    return {"train.resume": str(value)} if value else {}


# LF argument -> recipe key(s). Keys listed in IMPLIED need none (what `launch` always does).
LF_KEYS: dict[str, LFKey] = {
    "model_name_or_path": LFKey(("model.path",)),
    "adapter_name_or_path": LFKey(("model.adapter",)),
    "template": LFKey(("model.template",), _template, "LF's own rendering: " + ", ".join(LF_TEMPLATES)),
    "trust_remote_code": LFKey(("model.trust_remote_code",)),
    "flash_attn": LFKey(("model.attn",), _attn, "fa2 -> flash_attention_2, disabled -> eager"),
    "bf16": LFKey(("model.dtype",), _precision("bf16")),
    "pure_bf16": LFKey(("model.dtype",), _precision("bf16")),
    "fp16": LFKey(("model.dtype",), _precision("fp16")),
    "quantization_bit": LFKey(
        ("model.quantization.bits",), _quantization, "QLoRA / QOFT: finetuning_type lora or oft + 4/8-bit base"
    ),
    "quantization_type": LFKey(("model.quantization.type",)),
    "double_quantization": LFKey(("model.quantization.double_quant",)),
    "rope_scaling": LFKey(
        ("model.rope_scaling.type",), _rope_scaling, "factor null: derived from cutoff_len as LF does"
    ),
    "stage": LFKey(("stage",), _stage),
    "use_dft_loss": LFKey(("train.sft_loss",), _dft, "true -> dft (stage sft; LF's other stages ignore it)"),
    "finetuning_type": LFKey(("method.name",), _finetuning_type),
    "lora_rank": LFKey(("method.rank",)),
    "lora_alpha": LFKey(("method.alpha",)),
    "lora_dropout": LFKey(("method.dropout",)),
    "lora_target": LFKey(("method.target",), _to("method.target", _targets)),
    "additional_target": LFKey(("method.additional_target",), _to("method.additional_target", _comma_list)),
    "use_dora": LFKey(("method.variant",), _variant("dora")),
    "use_rslora": LFKey(("method.variant",), _variant("rslora")),
    "pissa_init": LFKey(("method.variant",), _variant("pissa")),
    "loraplus_lr_ratio": LFKey(("method.loraplus_ratio",)),
    "freeze_trainable_layers": LFKey(("method.trainable_layers",)),
    "freeze_trainable_modules": LFKey(
        ("method.trainable_modules",),
        _to("method.trainable_modules", lambda v: "all" if v == "all" else _comma_list(v)),
    ),
    "freeze_extra_modules": LFKey(("method.extra_modules",), _to("method.extra_modules", _comma_list)),
    "use_llama_pro": LFKey(
        ("method.llama_pro",),
        _llama_pro,
        "freeze only; model_name_or_path is the expanded model (`launch expand` = LF's scripts/llama_pro.py)",
    ),
    "oft_rank": LFKey(("method.blocks",)),
    "oft_block_size": LFKey(("method.block_size",)),
    "module_dropout": LFKey(("method.module_dropout",)),
    "oft_target": LFKey(
        ("method.target",), _oft_target, "LF's OFT adapts lora_target's modules; another value refused"
    ),
    "dataset": LFKey(("data.datasets",), _to("data.datasets", _comma_list), "'a,b' -> [a, b]"),
    "eval_dataset": LFKey(("data.eval_datasets",), _to("data.eval_datasets", _comma_list)),
    "dataset_dir": LFKey(("data.dataset_dir",)),
    "cutoff_len": LFKey(("data.cutoff_len",)),
    "max_samples": LFKey(("data.max_samples",)),
    "val_size": LFKey(("data.val_size",)),
    "packing": LFKey(("data.packing",), _packing, "true -> greedy"),
    "neat_packing": LFKey(("data.packing",), _when_true("data.packing", "neat"), "true -> neat"),
    "train_on_prompt": LFKey(("data.train_on_prompt",)),
    "mask_history": LFKey(("data.mask_history",)),
    "preprocessing_num_workers": LFKey(("data.num_workers",)),
    "learning_rate": LFKey(("train.lr",), _to("train.lr", float)),
    "num_train_epochs": LFKey(("train.epochs",), _to("train.epochs", float)),
    "max_steps": LFKey(("train.max_steps",), _max_steps, "-1 -> epochs decide"),
    "per_device_train_batch_size": LFKey(("train.micro_batch_size",)),
    "gradient_accumulation_steps": LFKey(("train.grad_accum",)),
    "lr_scheduler_type": LFKey(("train.scheduler",), _scheduler),
    "warmup_ratio": LFKey(("train.warmup_ratio",)),
    "warmup_steps": LFKey(("train.warmup_steps",), _warmup_steps, "in place of warmup_ratio, as in HF"),
    "lr_scheduler_kwargs": LFKey(
        ("train.scheduler",),
        _scheduler_kwargs,
        "each argument as its train key (min_lr_rate -> train.min_lr_ratio, ...)",
    ),
    "per_device_eval_batch_size": LFKey(("train.eval_batch_size",)),
    "weight_decay": LFKey(("train.weight_decay",)),
    "max_grad_norm": LFKey(("train.max_grad_norm",)),
    "optim": LFKey(
        ("train.optimizer",),
        _optimizer,
        "adamw_torch_fused -> adamw_torch (the same update, another kernel; a note); under "
        "use_galore/use_apollo/use_badam: adamw_torch only",
    ),
    "use_galore": LFKey(("train.optimizer",), _optimizer_switch("use_galore"), "true -> galore_adamw"),
    "galore_target": LFKey(("train.galore.target",), _target_list("train.galore.target"), "'a,b' -> [a, b]"),
    "galore_rank": LFKey(("train.galore.rank",)),
    "galore_update_interval": LFKey(("train.galore.update_interval",)),
    "galore_scale": LFKey(("train.galore.scale",), _to("train.galore.scale", float)),
    "galore_proj_type": LFKey(("train.galore.proj_type",)),
    "galore_layerwise": LFKey(("train.optimizer",), _layerwise("galore_layerwise"), "true refused"),
    "use_apollo": LFKey(("train.optimizer",), _optimizer_switch("use_apollo"), "true -> apollo_adamw"),
    "apollo_target": LFKey(("train.apollo.target",), _target_list("train.apollo.target"), "'a,b' -> [a, b]"),
    "apollo_rank": LFKey(("train.apollo.rank",)),
    "apollo_update_interval": LFKey(("train.apollo.update_interval",)),
    "apollo_scale": LFKey(("train.apollo.scale",), _to("train.apollo.scale", float)),
    "apollo_proj": LFKey(("train.apollo.proj",)),
    "apollo_proj_type": LFKey(("train.apollo.proj_type",)),
    "apollo_scale_type": LFKey(("train.apollo.scale_type",)),
    "apollo_scale_front": LFKey(
        ("train.apollo.scale_front",),
        lambda value, lf: {},
        "not mapped: LF puts it in a parameter group, where apollo-torch never reads it (LF trains without it)",
    ),
    "apollo_layerwise": LFKey(("train.optimizer",), _layerwise("apollo_layerwise"), "true refused"),
    "use_badam": LFKey(
        ("train.optimizer", "distributed.nproc_per_node"),
        _optimizer_switch("use_badam"),
        "true -> badam, on one process (LF's BAdam without ZeRO-3 runs on one device)",
    ),
    "badam_mode": LFKey(
        ("train.optimizer",),
        _refused_when(
            lambda v: v != "layer",
            "badam_mode: ratio (BAdam's BlockOptimizerRatio, sparse masks inside each weight) is not offered; "
            "train.optimizer: badam is the layer-wise BlockOptimizer. Fix: badam_mode: layer",
        ),
        "layer only",
    ),
    "badam_start_block": LFKey(("train.badam.start_block",)),
    "badam_switch_mode": LFKey(("train.badam.switch_mode",)),
    "badam_switch_interval": LFKey(("train.badam.switch_interval",), _switch_interval, "-1 refused"),
    "badam_update_ratio": LFKey(("train.optimizer",), lambda value, lf: {}, "ratio mode only (refused)"),
    "badam_mask_mode": LFKey(("train.optimizer",), lambda value, lf: {}, "ratio mode only (refused)"),
    "use_adam_mini": LFKey(("train.optimizer",), _optimizer_switch("use_adam_mini"), "true -> adam_mini"),
    "use_muon": LFKey(("train.optimizer",), _optimizer_switch("use_muon"), "true -> muon (adjust_lr: match_rms_adamw)"),
    "disable_gradient_checkpointing": LFKey(
        ("train.gradient_checkpointing",), _to("train.gradient_checkpointing", lambda v: not v)
    ),
    "neftune_noise_alpha": LFKey(("train.neftune_alpha",)),
    "seed": LFKey(("train.seed",)),
    "logging_steps": LFKey(("train.logging_steps",)),
    "save_steps": LFKey(("train.save_steps",)),
    "save_total_limit": LFKey(("train.save_total_limit",)),
    "eval_steps": LFKey(("train.eval_steps",)),
    "eval_strategy": LFKey(("train.eval_steps",), _eval_strategy, "steps: train.eval_steps decides"),
    "resume_from_checkpoint": LFKey(("train.resume",), _resume),
    "pref_beta": LFKey(("train.pref_beta",)),
    "pref_loss": LFKey(("train.pref_loss",), _pref_loss, "orpo/simpo as DPO losses"),
    "pref_ftx": LFKey(("train.pref_ftx",)),
    "simpo_gamma": LFKey(("train.simpo_gamma",)),
    "kto_chosen_weight": LFKey(("train.kto_desirable_weight",)),
    "kto_rejected_weight": LFKey(("train.kto_undesirable_weight",)),
    "reward_model": LFKey(("train.reward_model",), note="must be an output.dir of a stage: rm run of this launcher"),
    "ppo_epochs": LFKey(("train.ppo_epochs",)),
    "max_new_tokens": LFKey(
        ("eval.max_new_tokens", "train.max_new_tokens"), _generation("max_new_tokens"), "train.* under stage ppo"
    ),
    "top_k": LFKey(("eval.top_k", "train.top_k"), _generation("top_k"), "train.* under stage ppo"),
    "top_p": LFKey(("eval.top_p", "train.top_p"), _generation("top_p"), "train.* under stage ppo"),
    "temperature": LFKey(
        ("eval.temperature", "train.temperature"), _generation("temperature"), "train.* under stage ppo"
    ),
    "do_sample": LFKey(("eval.do_sample",)),
    "infer_backend": LFKey(("eval.engine",), _engine, "huggingface -> hf"),
    "deepspeed": LFKey(
        ("distributed.engine", "distributed.zero", "distributed.offload"),
        None,
        "the JSON's zero_optimization stage and offload devices; absent -> engine: ddp",
    ),
    "ddp_timeout": LFKey(
        ("distributed.timeout_minutes",), _timeout, "seconds -> minutes, capped at the OS's longest wait (24.8 days)"
    ),
    "output_dir": LFKey(("output.dir",)),
    "overwrite_output_dir": LFKey(("output.overwrite",)),
    "report_to": LFKey(("output.report_to",), _report_to),
    "use_swanlab": LFKey(("output.report_to",), _use_swanlab, "true -> swanlab in output.report_to (offline)"),
}
# LLaMA-Factory's (and HF TrainingArguments') defaults where they differ from the recipe's, so an LF config
# that leaves a key out trains as it did there.
LF_DEFAULTS = {
    "learning_rate": 5e-5,
    "num_train_epochs": 3.0,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "lr_scheduler_type": "linear",
    "warmup_ratio": 0.0,
    "logging_steps": 500,
    "cutoff_len": 2048,
}
# LF arguments that need no recipe key: what `launch` does anyway.
IMPLIED = {
    "do_train": "launch trains",
    "plot_loss": "loss.png is always written",
    "overwrite_cache": "the data cache is keyed by content; a change rebuilds it",
    "quantization_method": "bnb (bitsandbytes) is the k-bit backend; others refused (checked with quantization_bit)",
    "dataloader_num_workers": "the data is tokenized before training; data.num_workers sets the tokenizing processes",
}


def lf_hint(name: str) -> str | None:
    """The recipe key for an LF argument name (for "did you mean"), or None."""
    spec = LF_KEYS.get(name)
    return spec.targets[0] if spec else None


def _set(recipe: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = recipe
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _active(dotted: str, values: dict[str, Any]) -> tuple[bool, str]:
    """Whether a recipe key applies with the other mapped values (schema only_for), and why not."""
    parts = dotted.split(".")
    for end in range(len(parts), 1, -1):  # the key's rule, then its sections'
        key = FLAT_KEYS.get(".".join(parts[:end]))
        if key is None or key.only_for is None:
            continue
        selector, allowed = key.only_for
        current = values.get(selector, FLAT_KEYS[selector].default)
        if current not in allowed:
            need = " or ".join(map(str, allowed))
            return False, f"{dotted} applies only with {selector}: {need} (this config: {current})"
    return True, ""


def _convert(name: str, value: Any, lf: dict, base: Path | None, where: str) -> dict:
    """{recipe key: value} of one LF argument; Unmapped when it has no equivalent. A value of a kind the
    conversion cannot take (`lora_rank: eight`, `dataset: [[a]]`) is refused naming the key."""
    spec = LF_KEYS[name]
    try:
        if name == "deepspeed":
            return _deepspeed(value, lf, base)
        return {spec.targets[0]: value} if spec.convert is None else spec.convert(value, lf)
    except (TypeError, ValueError):
        raise LFImportError(
            f"{where}: {name} = {shown(value)}: not a value {name} can take. Fix: correct it in the "
            "LLaMA-Factory YAML (LF's documentation gives each argument's type)"
        ) from None


def _checked(values: dict[str, Any], sources: dict[str, str], where) -> None:
    """Each mapped value checked as the recipe will check it (method.rank: 'eight' refused now, by its LF name)."""
    for dotted, value in values.items():
        try:
            check_value(dotted, value, f"{where(sources.get(dotted, dotted))}: {sources.get(dotted, dotted)}")
        except RecipeError as err:
            raise LFImportError(str(err)) from None


def import_lf(
    lf: dict, base: Path | None = None, origins: dict[str, str] | None = None
) -> tuple[dict, list[tuple[str, str]]]:
    """(recipe dict, [(LF key, why it was not mapped)]). `base`: folder the LF paths are relative to;
    origins: read_lf's file:line of each LF key, for messages."""
    origins = origins or {}

    def where(name: str) -> str:
        return origins.get(str(name)) or origins.get("", "the LLaMA-Factory YAML")

    values: dict[str, Any] = {}
    sources: dict[str, str] = {"method.alpha": "lora_rank"}  # recipe key -> the LF key it came from
    unmapped: list[tuple[str, str]] = []
    if not any(lf.get(name) for name in ("bf16", "pure_bf16", "fp16")):
        values["model.dtype"] = "fp32"  # LF trains in fp32 unless told otherwise
    rank = lf.get("lora_rank")
    if type(rank) is int and "lora_alpha" not in lf and lf.get("finetuning_type", "lora") == "lora":
        values["method.alpha"] = 2 * rank  # LF's default alpha is twice the rank (another rank is refused below)
    for name, value in {**LF_DEFAULTS, **lf}.items():
        if name in IMPLIED:
            continue
        if name not in LF_KEYS:
            unmapped.append((name, NO_KEY))
            continue
        try:
            mapped = _convert(name, value, lf, base, where(name))
        except Unmapped as why:
            unmapped.append((name, str(why)))
            continue
        if note := mapped.pop(NOTE, None):
            unmapped.append((name, Note(note)))
        for dotted, converted in mapped.items():
            values[dotted], sources[dotted] = converted, name
    if "deepspeed" not in lf:  # LF without a DeepSpeed config is plain DDP (torchrun)
        values.update({"distributed.engine": "ddp", "distributed.zero": 0})
    if values.get("stage") == "dpo" and values.get("train.pref_loss") == "orpo":
        values["stage"] = "orpo"  # LF's ORPO is a DPO loss; the recipe has its own stage
        del values["train.pref_loss"]
    active = {}
    for dotted, value in values.items():
        ok, reason = _active(dotted, values)
        if ok:
            active[dotted] = value
        elif sources.get(dotted, "") in lf:  # an LF default that does not apply is no news
            unmapped.append((sources[dotted], Note(reason)))
    _checked(active, sources, where)
    recipe: dict = {}
    for dotted, value in active.items():
        _set(recipe, dotted, value)
    return recipe, unmapped


def read_lf(path: Path) -> tuple[dict, dict[str, str]]:
    """An LF YAML's arguments and the file:line of each; read as a recipe is (config_file.py's bounds,
    recipe_yaml.py's refusals: duplicate keys, recursive or exploding aliases)."""
    fix = "pass a LLaMA-Factory YAML"
    try:
        lf, origins = load_yaml_text(read_config_text(path, LFImportError, fix), str(path))
    except YamlRefusal as err:
        raise LFImportError(str(err)) from None
    except yaml.YAMLError as err:
        raise LFImportError(f"{path}: not YAML ({shown(str(err), 400)}). Fix: {fix}") from None
    if not isinstance(lf, dict):
        raise LFImportError(f"{path}: expected a mapping of LLaMA-Factory arguments. Fix: {fix}")
    return lf, origins


def lf_inputs(source: Path, lf: dict, recipe: dict, base: Path) -> list[tuple[str, Path]]:
    """What import-lf read, and what a run of the recipe it wrote reads: --out never lands on any."""
    from launcher.recipe.inputs import run_inputs

    inputs = [("the LLaMA-Factory YAML", source)]
    if "deepspeed" in lf:
        inputs.append(("its deepspeed JSON", deepspeed_json(lf["deepspeed"], base)))
    return inputs + run_inputs(recipe)


def one_line(text: object) -> str:
    """A name or reason as a comment (or log) line holds it: bounded, and a newline in an LF key
    escaped, so it cannot end the comment and write recipe keys of its own."""
    text = str(text) if str(text).isprintable() else shown(str(text))
    return text if len(text) <= 200 else text[:197] + "..."


def unmapped_lines(unmapped: list[tuple[str, str]]) -> list[str]:
    """'key: why' per LF key left out, each on one line."""
    return [f"{one_line(name)}: {one_line(why)}" for name, why in unmapped]


def render(recipe: dict, unmapped: list[tuple[str, str]], source: Path) -> str:
    """The recipe as YAML, headed by comments naming the source and each key left out."""
    lines = [f"# imported from {one_line(source)} by `launch import-lf`"]
    if unmapped:
        lines.append("# LLaMA-Factory keys not mapped:")
        lines += [f"#   {line}" for line in unmapped_lines(unmapped)]
    ordered = {name: recipe[name] for name in SCHEMA if name in recipe}  # the schema's section order
    return "\n".join(lines) + "\n" + yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True)


def mapping_table() -> str:
    """docs/import_lf.md's table, from LF_KEYS."""
    rows = ["| LLaMA-Factory key | recipe key | conversion |", "|---|---|---|"]
    rows += [
        f"| `{name}` | {', '.join(f'`{t}`' for t in spec.targets)} | {spec.note} |" for name, spec in LF_KEYS.items()
    ]
    rows += [f"| `{name}` | (none needed) | {why} |" for name, why in IMPLIED.items()]
    return "\n".join(rows)
