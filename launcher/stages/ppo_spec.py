"""Stage ppo (RLHF): a LoRA policy samples replies to prompts, scored by an rm run's model."""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from launcher.data.kinds import PROMPT_KINDS
from launcher.errors import RecipeError
from launcher.registry import Key, Refuse, StageSpec


def check(recipe: dict, origins: dict[str, str], refuse: Refuse) -> None:
    """Combinations that cannot work (docs/stages.md)."""
    method = recipe["method"]["name"]
    if method != "lora":
        refuse(
            "method.name",
            f"stage: ppo needs method.name: lora, got {method} (policy, value head and reference share "
            "one model: the reference is the policy with its adapter disabled, so no second full copy "
            "is held). Fix: set method.name: lora",
        )
    if recipe["method"].get("variant") == "pissa":
        refuse(
            "method.variant",
            "method.variant: pissa cannot run with stage: ppo (the KL reference is the policy with "
            "its adapter disabled, which under PiSSA is the residual base, not the model). "
            "Fix: set method.variant: lora",
        )
    if recipe["train"]["reward_model"] is None:
        refuse(
            "train.reward_model",
            "stage: ppo needs train.reward_model, the output.dir of a stage: rm run. "
            "Fix: train one (e.g. recipes/rm_tiny.yaml) and set train.reward_model to its output.dir",
        )
    refuse_rollout_misfits(recipe, refuse, "the reward model's score, logged as ppo/score")


def refuse_rollout_misfits(recipe: dict, refuse: Refuse, progress: str) -> None:
    """What no stage that samples its own replies (ppo, grpo) can run with: parameter offload, an evaluation pass."""
    dist, data, stage = recipe["distributed"], recipe["data"], recipe["stage"]
    if dist["offload"] == "all":
        refuse(
            "distributed.offload",
            f"distributed.offload: all cannot run with stage: {stage} (every rollout gathers the whole "
            "policy onto each device to generate, which undoes parameter offload). "
            "Fix: set distributed.offload: optimizer or none",
        )
    if data["eval_datasets"] or data["val_size"] > 0:
        refuse(
            "data.eval_datasets" if data["eval_datasets"] else "data.val_size",
            f"stage: {stage} has no evaluation pass (its progress is {progress}). "
            "Fix: remove data.eval_datasets and data.val_size",
        )


def check_reward_model(recipe: Mapping[str, Any]) -> None:
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


KEYS = {  # train.*
    "reward_model": Key(
        "str",
        None,
        "PPO rewards, and GRPO's `reward_model` reward: the output.dir of a stage: rm run on the same model.path",
        nullable=True,
    ),
    "max_new_tokens": Key(
        "int", 128, "PPO/GRPO generation: longest sampled reply (GRPO: max completion length)", low=1
    ),
    "temperature": Key("float", 1.0, "PPO/GRPO generation: sampling temperature", low=0, low_inclusive=False),
    "top_k": Key("int", 0, "PPO/GRPO generation: sample among the k likeliest tokens (0 = all)", low=0),
    "top_p": Key("float", 1.0, "PPO/GRPO generation: nucleus sampling mass", low=0, high=1, low_inclusive=False),
    "kl_coef": Key(
        "float",
        0.05,
        "PPO/GRPO: per-token KL penalty against the reference policy (GRPO's beta; 0 = no reference forward)",
        low=0,
    ),
    "ppo_clip": Key(
        "float",
        0.2,
        "PPO/GRPO: clip range epsilon of the policy ratio (PPO: also of the value update; GRPO: the lower one, see train.clip_high)",
        low=0,
        low_inclusive=False,
    ),
    "vf_coef": Key("float", 0.1, "PPO: weight of the value loss", low=0),
    "ppo_epochs": Key(
        "int",
        1,
        "PPO/GRPO: optimizer passes over each rollout (the prompts' batch is replayed; GRPO's num_iterations, mu)",
        low=1,
    ),
}


SPEC = StageSpec(
    kinds=PROMPT_KINDS,
    rows="launcher.data.preview:PROMPT_ROWS",
    trainer="launcher.stages.ppo:build_trainer",
    check=check,
    keys=KEYS,
    inputs=(("train", "reward_model", check_reward_model),),
)
