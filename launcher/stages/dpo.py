"""DPO and its pairwise variants through TRL's DPOTrainer: train.pref_loss sigmoid (DPO), ipo, hinge,
with train.pref_beta and an optional SFT term (train.pref_ftx). The reference-free losses
(simpo, orpo) run in launcher/stages/orpo.py's trainer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from transformers import TrainingArguments
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from launcher.compat import PreparedRows, TrainedAdapterOnly
from launcher.data.pairs import pair_data
from launcher.stages import orpo
from launcher.stages.trl_config import trl_config
from launcher.stages.trl_glue import preference_trainer, reference_is_base

if TYPE_CHECKING:
    from launcher.plan.types import Plan
    from launcher.recipe.types import TrainSection


class PretokenizedDPOTrainer(PreparedRows, TrainedAdapterOnly, DPOTrainer):
    """DPOTrainer over rows launcher.data.pairs tokenized with the recipe's template (TRL would re-render them)."""


def dpo_config(args: TrainingArguments, train: TrainSection) -> DPOConfig:
    """pref_loss and pref_beta as TRL's loss_type and beta; pref_ftx as a weighted "sft" loss beside it."""
    losses, weights = [train["pref_loss"]], [1.0]
    if train["pref_ftx"] > 0:
        losses, weights = losses + ["sft"], weights + [train["pref_ftx"]]
    return trl_config(
        args,
        DPOConfig,
        max_length=None,
        disable_dropout=False,
        beta=train["pref_beta"],
        loss_type=losses,
        loss_weights=weights,
    )


def build_trainer(plan: Plan, args: TrainingArguments, model, tokenizer, callbacks: list):
    """The DPO trainer (reference: the adapter disabled for a new LoRA adapter, a frozen copy otherwise) and its data summary."""
    recipe = plan["recipe"]
    if recipe["train"]["pref_loss"] in orpo.REFERENCE_FREE:
        return orpo.build_trainer(plan, args, model, tokenizer, callbacks)
    config = dpo_config(args, recipe["train"])
    trainer, summary = preference_trainer(
        PretokenizedDPOTrainer, DataCollatorForPreference, pair_data, plan, config, model, tokenizer, callbacks
    )
    reference_is_base(trainer, recipe)
    return trainer, summary
