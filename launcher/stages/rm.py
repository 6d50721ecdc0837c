"""Reward modelling: the LM with a one-score head (AutoModelForSequenceClassification, num_labels=1)
trained with TRL's RewardTrainer: loss -logsigmoid(r_chosen - r_rejected) on preference pairs,
accuracy and margin logged in train and eval. With LoRA, PEFT's sequence-classification task
keeps the score head in modules_to_save, so the saved adapter holds it and reloads for PPO."""

from __future__ import annotations

from typing import TYPE_CHECKING

from transformers import TrainingArguments
from trl import RewardConfig, RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference

from launcher.data.pairs import scored_pairs
from launcher.stages.trl_config import trl_config
from launcher.stages.trl_glue import preference_trainer

if TYPE_CHECKING:
    from launcher.plan.types import Plan

SCORE_MODULE = "score"  # the head transformers' *ForSequenceClassification models put on the last token


def train_score_head(model) -> None:
    """The head is new: it is always trained (freeze tuning would leave it frozen at its random init)."""
    for name, param in model.named_parameters():
        if f".{SCORE_MODULE}." in f".{name}" and "original_module" not in name:
            param.requires_grad_(True)


def build_trainer(plan: Plan, args: TrainingArguments, model, tokenizer, callbacks: list) -> tuple[RewardTrainer, dict]:
    """TRL's RewardTrainer over the recipe's preference pairs, and a summary of its data."""
    train_score_head(model)
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token
    config = trl_config(args, RewardConfig, max_length=None, disable_dropout=False)
    return preference_trainer(
        RewardTrainer, DataCollatorForPreference, scored_pairs, plan, config, model, tokenizer, callbacks
    )
