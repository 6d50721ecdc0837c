"""GRPO through TRL's GRPOTrainer: for each prompt train.num_generations completions are sampled (transformers'
generate, or colocated vLLM: the plan's rollout_engine), scored by the train.rewards functions
(launcher/stages/grpo_rewards.py), and trained with the loss variant train.loss_type.

The prompts are the recipe's, tokenized with its template (launcher/data/prompts.py, through the data cache):
TRL would render them again, so each prompt's ids are looked up by its text (compat.PretokenizedPrompts). The
reference model (train.kl_coef > 0) is, as in dpo, the model with a new adapter disabled, a frozen copy of a
continued adapter (model.adapter), or for full training a second copy TRL loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from datasets import Dataset
from transformers import TrainingArguments
from trl import GRPOConfig, GRPOTrainer

from launcher.compat import PretokenizedPrompts, TrainedAdapterOnly
from launcher.data.preview import decode
from launcher.data.prompts import answer_data, rollout_prompts, rollout_summary
from launcher.errors import RecipeError
from launcher.monitoring.completions import SamplesOnResume, append_samples
from launcher.stages import grpo_rewards
from launcher.stages.trl_config import trl_config
from launcher.stages.trl_glue import reference_is_base

if TYPE_CHECKING:
    from launcher.plan.types import Plan
    from launcher.recipe.types import Recipe


class RolloutCounts:
    """GRPO's collator passes the prompt rows on (TRL samples and pads after it); its counters, read by the
    throughput logger, are filled by the trainer with what each training forward ran (rollout_counts)."""

    def __init__(self):
        self.tokens = self.trained_tokens = self.slots = self.attention_pairs = 0

    def __call__(self, examples: list[dict]) -> list[dict]:
        return examples


def rollout_counts(prompt_mask: torch.Tensor, completion_mask: torch.Tensor) -> list[int]:
    """Tokens, trained (completion) tokens, batch slots and attention pairs of one padded prompt + completion batch."""
    lengths = prompt_mask.sum(1) + completion_mask.sum(1)
    slots = prompt_mask.numel() + completion_mask.numel()
    return [int(lengths.sum()), int(completion_mask.sum()), slots, int((lengths * lengths).sum())]


class LauncherGRPOTrainer(PretokenizedPrompts, TrainedAdapterOnly, GRPOTrainer):
    """GRPOTrainer over our tokenized prompts; counts its rollouts for the throughput logger and writes sampled
    completions to output.dir/completions.jsonl every `completions_every` steps."""

    def __init__(self, *args, prompt_ids: dict[str, list[int]], completions_every: int, **kwargs):
        self.prompt_ids = prompt_ids
        self.completions_every = completions_every
        super().__init__(*args, **kwargs)

    def prompt_token_ids(self, prompts: list[str]) -> list[list[int]]:
        return [self.prompt_ids[text] for text in prompts]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training and hasattr(self.data_collator, "add"):  # the worker's consumed-token counter
            self.data_collator.add(rollout_counts(inputs["prompt_mask"], inputs["completion_mask"]))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        super().log(logs, start_time)
        step = self.state.global_step
        if (
            "loss" in logs
            and step % self.completions_every == 0
            and self.is_world_process_zero()
            and self._logs["completion"]
        ):
            append_samples(
                self.args.output_dir,
                step,
                list(self._logs["prompt"]),
                list(self._logs["completion"]),
                {name: list(values) for name, values in self._logs["rewards"].items()},
                list(self._logs["advantages"]),
            )


def grpo_config(args: TrainingArguments, train: Mapping[str, Any], engine: str) -> GRPOConfig:
    """The recipe's train.* GRPO keys as TRL's GRPOConfig fields."""
    return trl_config(
        args,
        GRPOConfig,
        num_generations=train["num_generations"],
        max_completion_length=train["max_new_tokens"],
        temperature=train["temperature"],
        top_p=train["top_p"],
        top_k=train["top_k"],
        beta=train["kl_coef"],
        epsilon=train["ppo_clip"],
        epsilon_high=train["clip_high"],
        num_iterations=train["ppo_epochs"],
        loss_type=train["loss_type"],
        # LUSPO scales GSPO's sequence-level ratio (TRL warns on token level)
        importance_sampling_level="sequence" if train["loss_type"] == "luspo" else "token",
        scale_rewards=train["reward_scaling"],
        mask_truncated_completions=train["mask_truncated"],
        reward_weights=train["reward_weights"],
        use_vllm=engine == "vllm",
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=train["vllm_gpu_memory"],
        log_completions=False,  # ours: launcher/monitoring/completions.py (TRL's writes parquet and prints tables)
    )


def reward_functions(plan: Plan, args: TrainingArguments, model, tokenizer) -> tuple[list, list]:
    """(each train.rewards entry's reward function or model, their tokenizers: ours for a model, else None)."""
    recipe = plan["recipe"]
    functions: list = []
    tokenizers: list = []
    for entry in recipe["train"]["rewards"]:
        source = grpo_rewards.parsed(entry)
        if source.kind == "builtin":
            functions.append(grpo_rewards.builtin_reward(entry, recipe["train"]))
        elif source.kind == "file":
            functions.append(grpo_rewards.load_user_function(plan["stage"]["reward_files"][entry], source.function))
        else:
            functions.append(reward_model(recipe, args, model, tokenizer))
        tokenizers.append(tokenizer if source.kind == "model" else None)
    return functions, tokenizers


def reward_model(recipe: Recipe, args: TrainingArguments, model, tokenizer):
    """train.reward_model loaded as ppo loads it, logged as rewards/reward_model/*: TRL scores prompt + completion."""
    from launcher.model.builtin import local_model_path
    from launcher.stages.ppo import load_reward_model

    where = recipe["train"]["reward_model"]
    if where is None:  # grpo_spec refuses `reward_model` among train.rewards without it
        raise RecipeError("train.rewards names reward_model, but train.reward_model is not set. Fix: set it")
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    scorer = load_reward_model(where, local_model_path(recipe["model"]["path"]), recipe, dtype, args)
    scorer.config.pad_token_id = tokenizer.pad_token_id
    scorer.config._name_or_path = grpo_rewards.MODEL  # TRL names a model reward by it
    return scorer


def build_trainer(plan: Plan, args: TrainingArguments, model, tokenizer, callbacks: list):
    """The GRPO trainer over the recipe's prompts and answers, and its data summary."""
    recipe = plan["recipe"]
    train = recipe["train"]
    prompts, rows = rollout_prompts(recipe, tokenizer, answer_data)
    texts = [decode(tokenizer, row["input_ids"]) for row in rows]
    functions, tokenizers = reward_functions(plan, args, model, tokenizer)
    trainer = LauncherGRPOTrainer(
        model=model,
        reward_funcs=functions,
        args=grpo_config(args, train, plan["stage"]["rollout_engine"]),
        train_dataset=Dataset.from_list([{"prompt": t, "answer": row["answer"]} for t, row in zip(texts, rows)]),
        processing_class=tokenizer,
        reward_processing_classes=tokenizers,
        callbacks=callbacks,
        prompt_ids={text: row["input_ids"] for text, row in zip(texts, rows)},
        completions_every=train["completions_log_steps"] or train["logging_steps"],
    )
    trainer.data_collator = RolloutCounts()
    trainer.add_callback(SamplesOnResume(args.output_dir))
    reference_is_base(trainer, recipe)
    return trainer, rollout_summary(prompts, rows)
