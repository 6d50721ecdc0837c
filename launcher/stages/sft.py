"""Supervised fine-tuning: causal-LM loss on the assistant tokens, through transformers' Trainer."""

from __future__ import annotations

import torch
from transformers import Trainer, TrainingArguments

from launcher.data.collate import PaddingCollator
from launcher.data.packing import pack_examples
from launcher.data.pipeline import build_sft_data

MASK_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def build_trainer(plan: dict, args: TrainingArguments, model, tokenizer, callbacks: list) -> tuple[Trainer, dict]:
    """The SFT Trainer and a summary of its data (example and token counts)."""
    data_cfg = plan["recipe"]["data"]
    train = build_sft_data(data_cfg["datasets"], data_cfg, tokenizer, plan["recipe"]["model"]["template"])
    if not train.examples:
        raise SystemExit(f"no trainable examples in {data_cfg['datasets']} "
                         f"({train.dropped} dropped with no answer token within data.cutoff_len={data_cfg['cutoff_len']})")
    summary = {"examples": len(train.examples), "dropped": train.dropped, "skipped_bad_rows": train.skipped,
               "tokens": sum(len(e["input_ids"]) for e in train.examples)}
    rows = train.examples
    if data_cfg["packing"] != "none":
        packed = pack_examples(train.examples, data_cfg["cutoff_len"])
        rows, summary["packed_rows"], summary["packing_efficiency"] = packed.rows, len(packed.rows), packed.efficiency
    collator = PaddingCollator(tokenizer.pad_token_id, data_cfg["packing"],
                               block_mask=plan["recipe"]["model"]["attn"] != "flash_attention_2",
                               mask_dtype=MASK_DTYPES[plan["dtype"]])
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator,
                      processing_class=tokenizer, callbacks=callbacks)
    return trainer, summary
