"""The DeepSpeed config of a plan: a bundled template (launcher/ds_configs/) or the user's JSON, every "auto"
filled from the recipe and the model's width."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from launcher.errors import RecipeError
from launcher.model.builtin import builtin_config_path, is_builtin
from launcher.model.shape import model_shape
from launcher.recipe.ds_user_config import RUNTIME_AUTO, user_template

DS_CONFIG_DIR = Path(__file__).resolve().parent.parent / "ds_configs"  # package data: a wheel carries it


def model_hidden_size(model_path: str) -> int | None:
    """hidden_size from a builtin or local config.json, or the table of known hub models."""
    if is_builtin(model_path):
        config_file = builtin_config_path(model_path)
    else:
        config_file = Path(model_path) / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        return config.get("hidden_size") or config.get("n_embd") or config.get("d_model")
    shape, _ = model_shape(model_path)  # the memory planner's table of common hub models
    return shape.hidden if shape else None


def _fill_auto(node, values: dict, path: str = ""):
    """Replace every "auto" in a DeepSpeed config by values[dotted path]."""
    if isinstance(node, dict):
        return {k: _fill_auto(v, values, f"{path}.{k}" if path else k) for k, v in node.items()}
    if node == "auto":
        if path in RUNTIME_AUTO:  # the Trainer fills it once it knows the number of steps
            return node
        if path not in values:
            raise KeyError(f"no value for DeepSpeed auto field {path}")
        return values[path]
    return node


def deepspeed_config(recipe: Mapping[str, Any], world_size: int, dtype: str, on_gpu: bool) -> dict:
    """The resolved DeepSpeed config for the recipe."""
    dist, train = recipe["distributed"], recipe["train"]
    hidden = model_hidden_size(recipe["model"]["path"])
    sp = dist["sequence_parallel"]
    values = {
        "train_batch_size": train["micro_batch_size"] * train["grad_accum"] * world_size,
        "train_micro_batch_size_per_gpu": train["micro_batch_size"],
        "gradient_accumulation_steps": train["grad_accum"],
        "gradient_clipping": train["max_grad_norm"],
        "bf16.enabled": dtype == "bf16",
        "fp16.enabled": dtype == "fp16",
        # DeepSpeed's own defaults when the model's width is unknown offline
        "zero_optimization.reduce_bucket_size": hidden * hidden if hidden else 500_000_000,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden * hidden) if hidden else 50_000_000,
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden if hidden else 100_000,
        "optimizer.params.lr": train["lr"],
        "optimizer.params.betas": [0.9, 0.999],
        "optimizer.params.eps": 1e-8,
        "optimizer.params.weight_decay": train["weight_decay"],
        "zero_optimization.stage": dist["zero"],
        "scheduler.params.warmup_min_lr": 0,
        "scheduler.params.warmup_max_lr": train["lr"],
    }
    if dist["deepspeed_config"]:  # the user's own JSON: its explicit values checked against the recipe
        template = user_template(dist["deepspeed_config"], values)
    else:
        name = f"zero{dist['zero']}" + ("" if dist["offload"] == "none" else f"_offload_{dist['offload']}")
        template = json.loads((DS_CONFIG_DIR / f"{name}.json").read_text())
    config = _fill_auto(template, values)
    if not on_gpu:  # pinned host memory needs CUDA
        for part in ("offload_optimizer", "offload_param"):
            if part in config.get("zero_optimization", {}):
                config["zero_optimization"][part]["pin_memory"] = False
    if dtype != "fp16":
        config.pop("fp16", None)
    if sp > 1:
        _pin_reduce_scatter(config["zero_optimization"], dist)
        # a group of sp ranks trains one micro batch: DeepSpeed counts the data-parallel ranks, by this key at
        # zero.Init (before the Ulysses groups exist); accelerate sets train_batch_size from them at initialize
        config["sequence_parallel_size"] = sp
        config.pop("train_batch_size")
    return config


def _pin_reduce_scatter(zero: dict, dist: Mapping[str, Any]) -> None:
    """Under sequence parallelism only ZeRO-3's reduce-scatter averages the gradients of the ranks that share a
    sequence; its other path sums them (sp times too large: DeepSpeed issue #5248)."""
    if zero.get("reduce_scatter", True) is not True:
        raise RecipeError(
            f"{dist['deepspeed_config']}: zero_optimization.reduce_scatter = false, but distributed.sequence_parallel: "
            f"{dist['sequence_parallel']} needs it true: without it ZeRO-3 sums the gradients of the ranks that share "
            "a sequence instead of averaging them (N times too large, DeepSpeed issue #5248). "
            "Fix: set reduce_scatter to true (or remove it) in that file, or distributed.sequence_parallel: 1"
        )
    zero["reduce_scatter"] = True
