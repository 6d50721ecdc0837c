"""What the TRL-based preference stages (dpo, kto, orpo) share: our pre-tokenized rows as
datasets, TRL's collators with the throughput logger's counters, the reference model choice."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import torch
from datasets import Dataset

from launcher.data.cache import wait_s
from launcher.data.splits import train_and_eval

if TYPE_CHECKING:
    from launcher.plan.types import Plan
    from launcher.recipe.types import Recipe


class CountingCollator:
    """Wraps a TRL collator and counts what it serves, as launcher.data.collate.PaddingCollator does,
    for the throughput logger: tokens, trained (completion) tokens, batch slots, attention pairs."""

    def __init__(self, inner):
        self.inner = inner
        self.tokens = self.trained_tokens = self.slots = self.attention_pairs = 0

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.inner(examples)
        lengths = batch["attention_mask"].sum(1)
        self.tokens += int(lengths.sum())
        # completion tokens; a reward model's batch has no completion mask: every token feeds its score
        self.trained_tokens += int(batch.get("completion_mask", batch["attention_mask"]).sum())
        self.slots += batch["input_ids"].numel()
        self.attention_pairs += int((lengths * lengths).sum())
        return batch


def preference_data(plan: Plan, tokenizer, build) -> tuple[Dataset, Dataset | None, dict]:
    """Train and eval datasets built by build(names, data_cfg, tokenizer, template) (launcher.data.pairs),
    eval from data.eval_datasets or a seeded data.val_size split; and the worker's data summary."""
    recipe = plan["recipe"]
    data_cfg, template = recipe["data"], recipe["model"]["template"]
    train, rows, eval_rows = train_and_eval(
        recipe,
        lambda names: build(names, data_cfg, tokenizer, template),
        lambda data: f"no usable examples in {data_cfg['datasets']} ({data.dropped} dropped: empty reply)",
    )
    summary = {
        "examples": len(rows),
        "eval_examples": len(eval_rows),
        "dropped": train.dropped,
        "truncated": train.truncated,
        "skipped_bad_rows": train.skipped,
        "tokens": sum(len(v) for row in rows for k, v in row.items() if k.endswith("_ids")),
    }
    return Dataset.from_list(rows), (Dataset.from_list(eval_rows) if eval_rows else None), summary


def preference_trainer(
    trainer_class, collator_class, build, plan: Plan, args, model, tokenizer, callbacks: list, **extra
):
    """trainer_class over the rows build(names, data_cfg, tokenizer, template, timeout_s=...) makes, collated
    by TRL's collator_class with our counters; extra keyword arguments go to trainer_class. Returns it and the
    data summary."""
    train_data, eval_data, summary = preference_data(plan, tokenizer, partial(build, timeout_s=wait_s(plan["recipe"])))
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        processing_class=tokenizer,
        callbacks=callbacks,
        data_collator=CountingCollator(collator_class(pad_token_id=tokenizer.pad_token_id)),
        **extra,
    )
    return trainer, summary


def reference_is_base(trainer, recipe: Recipe) -> None:
    """A fresh adapter: the reference is the model with the adapter disabled, not a copy of it.

    TRL keeps a frozen copy of a PeftModel's adapter named "ref" as the reference, which is what a
    continued adapter (model.adapter) needs: the previous stage's model. A new LoRA adapter starts
    as a no-op, so the copy is dropped and TRL falls back to disabling the adapter. PiSSA's is not
    (the base holds only the residual of the weights), so it keeps the copy."""
    peft_config = getattr(trainer.model, "peft_config", {})
    fresh = recipe["model"]["adapter"] is None and recipe["method"].get("variant") != "pissa"
    if fresh and "ref" in peft_config:
        trainer.model.delete_adapter("ref")
