"""KTO through TRL's KTOTrainer: unpaired replies tagged desirable or not (kto_tag), with
train.pref_beta and train.kto_desirable_weight / kto_undesirable_weight."""

from __future__ import annotations

from typing import TYPE_CHECKING

from transformers import TrainingArguments
from trl import KTOConfig, KTOTrainer
from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

from launcher.compat import PreparedRows, TrainedAdapterOnly, set_train_batch_size
from launcher.data.pairs import kto_data
from launcher.stages.trl_config import trl_config
from launcher.stages.trl_glue import preference_trainer, reference_is_base

if TYPE_CHECKING:
    from launcher.plan.types import Plan

KL_RUN = 2  # fewest rows a KL completion is rotated among: with one, a row would be paired with itself


class PretokenizedKTOTrainer(PreparedRows, TrainedAdapterOnly, KTOTrainer):
    """KTOTrainer over rows launcher.data.pairs tokenized with the recipe's template.

    TRL's own preparation would re-render the rows; its last step, the mismatched completions the
    KL term is estimated from, is kept as TRL defines it: within each run of micro_batch_size rows,
    row i is paired with the completion of row i-1 (the first with the last), and rows are read in
    order (train_sampling_strategy sequential) so those runs are the micro batches.

    Micro batch 1 (LLaMA-Factory's examples use it): TRL refuses it, since rotating one row pairs it
    with its own completion. Here the runs are then of two rows, so each row's KL completion is its
    neighbour's, a mismatched pair from another micro batch (as LLaMA-Factory takes them from other rows).
    """

    def __init__(self, *args, **kwargs):
        config = kwargs["args"]
        micro = config.per_device_train_batch_size
        config.per_device_train_batch_size = max(micro, KL_RUN)  # past TRL's guard against micro batch 1 only
        try:
            super().__init__(*args, **kwargs)
        finally:
            config.per_device_train_batch_size = micro
        set_train_batch_size(self, config.train_batch_size)  # Trainer.__init__ read it from the raised value

    def prepare_rows(self, dataset, args):
        def rotate(batch: dict) -> dict:
            batch["KL_completion_ids"] = batch["completion_ids"][-1:] + batch["completion_ids"][:-1]
            return batch

        return dataset.map(rotate, batched=True, batch_size=max(args.per_device_train_batch_size, KL_RUN))


def build_trainer(plan: Plan, args: TrainingArguments, model, tokenizer, callbacks: list):
    """The KTO trainer (reference as in DPO: adapter disabled, or a frozen copy of a continued adapter) and its data summary."""
    recipe = plan["recipe"]
    train = recipe["train"]
    config = trl_config(
        args,
        KTOConfig,
        max_length=None,
        disable_dropout=False,
        beta=train["pref_beta"],
        desirable_weight=train["kto_desirable_weight"],
        undesirable_weight=train["kto_undesirable_weight"],
        train_sampling_strategy="sequential",
    )
    trainer, summary = preference_trainer(
        PretokenizedKTOTrainer, DataCollatorForUnpairedPreference, kto_data, plan, config, model, tokenizer, callbacks
    )
    reference_is_base(trainer, recipe)
    return trainer, summary
