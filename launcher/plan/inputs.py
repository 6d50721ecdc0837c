"""The files a recipe reads, checked at plan time: its datasets, and the outputs of earlier pipeline stages
(model.adapter, train.reward_model)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.data.datasets import resolve_dataset
from launcher.errors import DataError, RecipeError

if TYPE_CHECKING:
    from launcher.recipe.types import Recipe


def check_datasets(recipe: Recipe) -> None:
    """Every named dataset resolves to existing files now, not inside the ranks later."""
    data = recipe["data"]
    for key in ("datasets", "eval_datasets"):
        for name in data[key]:
            try:
                resolve_dataset(name, data["dataset_dir"])
            except DataError as err:
                raise RecipeError(f"data.{key}: {err}") from None


def _check_adapter(recipe: Recipe) -> None:
    """model.adapter is a saved PEFT adapter (an earlier stage's output.dir), not found only inside the ranks."""
    adapter = recipe["model"]["adapter"]
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise RecipeError(
            f"model.adapter = {adapter!r}: no adapter_config.json there. Fix: point it at the output.dir "
            "of a finished LoRA run (it holds adapter_config.json + adapter_model.safetensors)"
        )


def _check_reward_model(recipe: Recipe) -> None:
    """PPO's train.reward_model is a finished stage: rm run (its plan.json and saved model) on the same base."""
    where = recipe["train"].get("reward_model")
    if where is None:
        return
    folder = Path(where)
    if not folder.is_dir():
        raise RecipeError(
            f"train.reward_model = {where!r}: no such directory. Fix: run a stage: rm recipe first "
            "(e.g. recipes/rm_tiny.yaml) and set train.reward_model to its output.dir"
        )
    try:
        rm_recipe = json.loads((folder / "plan.json").read_text())["recipe"]
    except (OSError, ValueError, KeyError):
        rm_recipe = None
    if rm_recipe is None or rm_recipe.get("stage") != "rm":
        raise RecipeError(
            f"train.reward_model = {where!r} is not the output.dir of a stage: rm run (no plan.json with "
            "stage: rm). Fix: point it at a reward model run's output.dir"
        )
    if not ((folder / "adapter_config.json").is_file() or (folder / "config.json").is_file()):
        raise RecipeError(
            f"train.reward_model = {where!r}: the rm run saved no model there (unfinished?). "
            "Fix: let it finish, or `launch consolidate` its last checkpoint into that folder"
        )
    if (folder / "adapter_config.json").is_file() and rm_recipe["model"]["path"] != recipe["model"]["path"]:
        raise RecipeError(
            f"train.reward_model = {where!r} is an adapter over {rm_recipe['model']['path']}, but "
            f"model.path is {recipe['model']['path']}. Fix: train the reward model on the same model.path"
        )


# Folders a recipe reads that an earlier pipeline stage writes, and their checks.
STAGE_INPUTS = (("model", "adapter", _check_adapter), ("train", "reward_model", _check_reward_model))


def check_stage_inputs(recipe: Recipe, allow_pending: bool) -> list[str]:
    """Check the earlier stages' outputs the recipe names. With allow_pending (`launch plan`,
    `launch sbatch`), a folder that does not exist yet is a note, not a refusal, so a whole
    pt -> sft -> dpo pipeline plans before its first stage has run; training refuses it."""
    pending = []
    named: Mapping[str, Any] = recipe  # STAGE_INPUTS names its keys as text
    for section, key, check in STAGE_INPUTS:
        try:
            check(recipe)
        except RecipeError:
            if not allow_pending or Path(named[section][key]).exists():
                raise
            pending.append(
                f"{section}.{key} = {named[section][key]!r} does not exist yet: run the stage that writes it first"
            )
    return pending
