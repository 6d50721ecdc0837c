"""The files a recipe reads, checked at plan time: its datasets, and the outputs of earlier pipeline stages
(model.adapter, and each stage's own StageSpec.inputs such as ppo's train.reward_model)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.data.datasets import resolve_dataset
from launcher.errors import DataError, RecipeError
from launcher.registry import StageInput, stage_spec

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


def _check_adapter(recipe: Mapping[str, Any]) -> None:
    """model.adapter is a saved PEFT adapter (an earlier stage's output.dir), not found only inside the ranks."""
    adapter = recipe["model"]["adapter"]
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise RecipeError(
            f"model.adapter = {adapter!r}: no adapter_config.json there. Fix: point it at the output.dir "
            "of a finished LoRA run (it holds adapter_config.json + adapter_model.safetensors)"
        )


# Folders any recipe may read that an earlier pipeline stage writes, and their checks; a stage adds its own
# (StageSpec.inputs, e.g. ppo's train.reward_model).
STAGE_INPUTS: tuple[StageInput, ...] = (("model", "adapter", _check_adapter),)


def check_stage_inputs(recipe: Recipe, allow_pending: bool) -> list[str]:
    """Check the earlier stages' outputs the recipe names. With allow_pending (`launch plan`,
    `launch sbatch`), a folder that does not exist yet is a note, not a refusal, so a whole
    pt -> sft -> dpo pipeline plans before its first stage has run; training refuses it."""
    pending = []
    named: Mapping[str, Any] = recipe  # STAGE_INPUTS names its keys as text
    for section, key, check in (*STAGE_INPUTS, *stage_spec(recipe["stage"]).inputs):
        try:
            check(recipe)
        except RecipeError:
            if not allow_pending or Path(named[section][key]).exists():
                raise
            pending.append(
                f"{section}.{key} = {named[section][key]!r} does not exist yet: run the stage that writes it first"
            )
    return pending
