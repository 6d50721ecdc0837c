"""Stage grpo (online RL with verifiable rewards): groups of sampled completions per prompt, scored by rule,
model or user rewards (launcher/stages/grpo_rewards.py), trained by TRL's GRPOTrainer and its loss variants."""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from launcher.data.kinds import PROMPT_KINDS
from launcher.errors import RecipeError
from launcher.registry import Key, Refuse, StageSpec, method_spec
from launcher.stages import grpo_rewards
from launcher.stages.ppo_spec import KEYS as PPO_KEYS
from launcher.stages.ppo_spec import check_reward_model, refuse_rollout_misfits

# TRL 1.16's GRPOConfig.loss_type values
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
ENTRY_FORMS = f"{', '.join(grpo_rewards.BUILTIN)}, {grpo_rewards.MODEL}, or path/to/file.py:function"


def check(recipe: dict, origins: dict[str, str], refuse: Refuse) -> None:
    """Combinations that cannot work (docs/stages.md, GRPO)."""
    train = recipe["train"]
    refuse_rollout_misfits(recipe, refuse, "the reward, logged as reward and rewards/<name>/mean")
    if method_spec(recipe["method"]["name"]).virtual_tokens:
        refuse(
            "method.name",
            f"method.name: {recipe['method']['name']} cannot train stage: grpo (TRL's GRPO computes log-probabilities "
            "from the LM head's weight directly, past the virtual tokens). Fix: use method.name: lora, freeze or full",
        )
    check_rewards(train, refuse)
    try:
        re.compile(train["format_pattern"])
    except re.error as err:
        refuse(
            "train.format_pattern",
            f"train.format_pattern = {train['format_pattern']!r} is no regex ({err}). Fix: correct it",
        )


def check_rewards(train: dict, refuse: Refuse) -> None:
    """Every train.rewards entry names a reward that exists; weights, one per reward; the reward model used iff set."""
    entries = train["rewards"]
    if len(set(entries)) < len(entries):
        refuse(
            "train.rewards",
            f"train.rewards = {entries} names a reward twice. Fix: list each once, weigh it with train.reward_weights",
        )
    for entry in entries:
        source = grpo_rewards.parse(entry)
        if source is None:
            refuse(
                "train.rewards", f"train.rewards entry {entry!r} is none of {ENTRY_FORMS}. Fix: use one of these forms"
            )
        elif source.kind == "file":
            problem = grpo_rewards.user_function_problem(Path(source.path), source.function)
            if problem:
                refuse(
                    "train.rewards",
                    f"train.rewards entry {entry!r}: {source.path} (from the current folder {Path.cwd()}) {problem}. "
                    "Fix: point it at a file that defines `def NAME(completions, **kwargs)` returning one float per completion",
                )
    weights = train["reward_weights"]
    if weights is not None and len(weights) != len(entries):
        refuse(
            "train.reward_weights",
            f"train.reward_weights has {len(weights)} weights for {len(entries)} rewards {entries}. "
            "Fix: give one weight per train.rewards entry, in the same order",
        )
    uses_model = grpo_rewards.MODEL in entries
    if uses_model and train["reward_model"] is None:
        refuse(
            "train.rewards",
            "train.rewards lists reward_model but train.reward_model is not set. "
            "Fix: set train.reward_model to a stage: rm run's output.dir",
        )
    if not uses_model and train["reward_model"] is not None:
        refuse(
            "train.reward_model",
            f"train.reward_model is set but train.rewards {entries} does not use it. "
            "Fix: add reward_model to train.rewards, or remove train.reward_model",
        )


def batch_refusal(micro: int, grad_accum: int, world_size: int, generations: int) -> str | None:
    """Why a step's completions (micro x grad_accum x world) cannot hold whole groups of `generations`; None: they can."""
    completions = micro * grad_accum * world_size
    if completions % generations == 0:
        return None
    step = generations // math.gcd(generations, micro * world_size)  # grad_accum must be a multiple of this
    divisors = [g for g in range(2, completions + 1) if completions % g == 0]
    return (
        f"train.num_generations = {generations} must divide the completions of one optimizer step: "
        f"train.micro_batch_size {micro} x train.grad_accum {grad_accum} x world size {world_size} = {completions} "
        f"(each step trains whole groups of completions of the same prompts). Fix: set train.grad_accum to a "
        f"multiple of {step} (e.g. {step * math.ceil(grad_accum / step)})"
        + (f", or train.num_generations to one of {divisors}" if divisors else "")
    )


def rollout_engine(requested: str, on_gpu: bool) -> tuple[str, str]:
    """(hf | vllm, why) for train.rollout_engine; vllm refused where it cannot run."""
    installed = importlib.util.find_spec("vllm") is not None
    if requested == "vllm" and not on_gpu:
        raise RecipeError(
            "train.rollout_engine = 'vllm' needs a GPU and this plan runs on CPU. "
            "Fix: set train.rollout_engine: hf (transformers' generate) or auto"
        )
    if requested == "vllm" and not installed:
        raise RecipeError(
            "train.rollout_engine = 'vllm' but vLLM is not installed. "
            "Fix: pip install vllm (a build matching your torch and CUDA), or set train.rollout_engine: hf"
        )
    if requested == "hf":
        return "hf", "train.rollout_engine: hf"
    if requested == "vllm":
        return "vllm", "train.rollout_engine: vllm (colocated with each rank)"
    if on_gpu and installed:
        return "vllm", "auto: a GPU and vLLM are here (colocated with each rank)"
    return "hf", "auto: " + ("vLLM is not installed" if on_gpu else "no GPU") + ", so transformers' generate"


def plan(recipe: Mapping[str, Any], world: Mapping[str, Any], cwd: str) -> dict:
    """The batch arithmetic (refused when a step cannot hold whole groups), the rollout engine and why,
    and the rewards with each user file's absolute path."""
    train = recipe["train"]
    refusal = batch_refusal(
        train["micro_batch_size"], train["grad_accum"], world["world_size"], train["num_generations"]
    )
    if refusal:
        raise RecipeError(refusal)
    engine, why = rollout_engine(train["rollout_engine"], world["device"] == "cuda")
    completions = train["micro_batch_size"] * train["grad_accum"] * world["world_size"]
    files = {
        source.entry: str(Path(cwd, source.path).resolve())
        for source in map(grpo_rewards.parsed, train["rewards"])
        if source.kind == "file"
    }
    return {
        "rollout_engine": engine,
        "rollout_why": why,
        "completions_per_step": completions,
        "prompts_per_step": completions // train["num_generations"],
        "rewards": train["rewards"],
        "reward_files": files,
    }


KEYS = {  # train.*
    **{
        name: PPO_KEYS[name]
        for name in (
            "reward_model",
            "max_new_tokens",
            "temperature",
            "top_k",
            "top_p",
            "kl_coef",
            "ppo_clip",
            "ppo_epochs",
        )
    },
    "num_generations": Key(
        "int",
        8,
        "GRPO: completions sampled per prompt (a group; advantages are relative within it). It must divide "
        "micro_batch_size x grad_accum x world size, the completions of one optimizer step (`launch plan` refuses otherwise)",
        low=2,
    ),
    "clip_high": Key(
        "float",
        None,
        "GRPO: upper clip epsilon of the policy ratio (DAPO's clip-higher, e.g. 0.28); null = train.ppo_clip",
        nullable=True,
        low=0,
        low_inclusive=False,
    ),
    "loss_type": Key(
        "str",
        "dapo",
        "GRPO loss (TRL's loss_type): grpo (mean over each sequence, then over sequences), dr_grpo (sum over "
        "tokens / (completions x max_new_tokens)), dapo (sum / the step's completion tokens), bnpo (sum / the "
        "micro batch's completion tokens), cispo, sapo, luspo (sequence-level ratios), vespo",
        choices=LOSS_TYPES,
    ),
    "reward_scaling": Key(
        "str",
        "group",
        "GRPO advantages: (reward - group mean) divided by the group's std (group), the step's std (batch), "
        "or not divided (none, as Dr. GRPO recommends)",
        choices=("group", "batch", "none"),
    ),
    "mask_truncated": Key(
        "bool", False, "GRPO: completions cut at max_new_tokens (no EOS) get no loss (DAPO's overlong filtering)"
    ),
    "rewards": Key(
        "str_list",
        ["accuracy", "format"],
        "GRPO rewards, summed with train.reward_weights: accuracy (final answer = the row's answer), format "
        "(matches train.format_pattern), length (1 - tokens/max_new_tokens), reward_model (train.reward_model's "
        "score), or path/to/file.py:function (YOUR code, run in every rank; path from the current folder)",
    ),
    "reward_weights": Key(
        "float_list", None, "GRPO: one weight per train.rewards entry (null = all 1.0)", nullable=True
    ),
    "format_pattern": Key(
        "str",
        grpo_rewards.FORMAT_PATTERN,
        "GRPO `format` reward: a Python regex the whole completion must match (`.` matches newlines)",
    ),
    "rollout_engine": Key(
        "str",
        "auto",
        "GRPO rollouts: hf (transformers' generate, any device), vllm (colocated vLLM on each GPU, weights "
        "synced every step), auto = vllm on a GPU where vLLM is installed, else hf (`launch plan` says which)",
        choices=("auto", "hf", "vllm"),
    ),
    "vllm_gpu_memory": Key(
        "float",
        0.3,
        "GRPO with vllm rollouts: share of each GPU's memory the colocated vLLM engine takes",
        low=0,
        high=1,
        low_inclusive=False,
    ),
    "completions_log_steps": Key(
        "int",
        None,
        "GRPO: every N steps append a few sampled prompts, completions and their rewards to "
        "output.dir/completions.jsonl (null = every train.logging_steps)",
        nullable=True,
        low=1,
    ),
}


SPEC = StageSpec(
    kinds=PROMPT_KINDS,
    rows="launcher.data.preview:ANSWER_ROWS",
    trainer="launcher.stages.grpo:build_trainer",
    check=check,
    keys=KEYS,
    inputs=(("train", "reward_model", check_reward_model),),
    plan=plan,
)
