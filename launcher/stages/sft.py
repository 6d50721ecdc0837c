"""Supervised fine-tuning: causal-LM loss on the assistant tokens, through transformers' Trainer."""

from __future__ import annotations

import random

import torch
from transformers import Trainer, TrainingArguments

from launcher.data.cache import wait_s
from launcher.data.collate import PaddingCollator
from launcher.data.packing import pack_examples
from launcher.data.pipeline import sft_data
from launcher.eval_generate import install as install_generate_metrics
from launcher.kernels.trainer import KernelTrainer

MASK_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def split_validation(examples: list, val_size: float, seed: int) -> tuple[list, list]:
    """A seeded random share of the examples held out for evaluation: (train, eval)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = max(1, round(val_size * len(examples)))
    if held >= len(examples):
        raise SystemExit(f"data.val_size={val_size} leaves no training examples out of {len(examples)}")
    held_out = set(order[:held])
    return ([e for i, e in enumerate(examples) if i not in held_out], [examples[i] for i in sorted(held_out)])


def build_trainer(plan: dict, args: TrainingArguments, model, tokenizer, callbacks: list) -> tuple[Trainer, dict]:
    """The SFT Trainer and a summary of its data (example and token counts)."""
    recipe = plan["recipe"]
    data_cfg, template = recipe["data"], recipe["model"]["template"]
    wait = wait_s(recipe)  # for the rank building the data cache
    train = sft_data(data_cfg["datasets"], data_cfg, tokenizer, template, wait)
    if not train.examples:
        raise SystemExit(f"no trainable examples in {data_cfg['datasets']} "
                         f"({train.dropped} dropped with no answer token within data.cutoff_len={data_cfg['cutoff_len']})")
    rows, eval_rows = train.examples, []
    if data_cfg["eval_datasets"]:
        eval_rows = sft_data(data_cfg["eval_datasets"], data_cfg, tokenizer, template, wait).examples
    elif data_cfg["val_size"] > 0:
        rows, eval_rows = split_validation(rows, data_cfg["val_size"], recipe["train"]["seed"])
    summary = {"examples": len(rows), "eval_examples": len(eval_rows), "dropped": train.dropped,
               "skipped_bad_rows": train.skipped, "tokens": sum(len(e["input_ids"]) for e in rows)}
    if data_cfg["packing"] != "none":
        packed = pack_examples(rows, data_cfg["cutoff_len"])
        rows, summary["packed_rows"], summary["packing_efficiency"] = packed.rows, len(packed.rows), packed.efficiency
        eval_rows = pack_examples(eval_rows, data_cfg["cutoff_len"]).rows if eval_rows else []
    collator = PaddingCollator(tokenizer.pad_token_id, data_cfg["packing"], plan["kernels"]["padding_free"],
                               mask_dtype=MASK_DTYPES[plan["dtype"]])
    trainer = KernelTrainer(model=model, args=args, train_dataset=rows, eval_dataset=eval_rows or None,
                            data_collator=collator, processing_class=tokenizer, callbacks=callbacks,
                            kernels=plan["kernels"], max_tokens=recipe["train"]["micro_batch_size"] * data_cfg["cutoff_len"])
    install_generate_metrics(trainer, recipe)
    return trainer, summary
