"""Supervised fine-tuning: causal-LM loss on the assistant tokens, through transformers' Trainer."""

from __future__ import annotations

from transformers import Trainer, TrainingArguments

from launcher.data.collate import PaddingCollator
from launcher.data.pipeline import build_sft_data


def build_trainer(plan: dict, args: TrainingArguments, model, tokenizer, callbacks: list) -> tuple[Trainer, dict]:
    """The SFT Trainer and a summary of its data (example and token counts)."""
    data_cfg = plan["recipe"]["data"]
    train = build_sft_data(data_cfg["datasets"], data_cfg, tokenizer, plan["recipe"]["model"]["template"])
    if not train.examples:
        raise SystemExit(f"no trainable examples in {data_cfg['datasets']} "
                         f"({train.dropped} dropped with no answer token within data.cutoff_len={data_cfg['cutoff_len']})")
    collator = PaddingCollator(tokenizer.pad_token_id)
    trainer = Trainer(model=model, args=args, train_dataset=train.examples, data_collator=collator,
                      processing_class=tokenizer, callbacks=callbacks)
    summary = {"examples": len(train.examples), "dropped": train.dropped, "skipped_bad_rows": train.skipped,
               "tokens": sum(len(e["input_ids"]) for e in train.examples)}
    return trainer, summary
