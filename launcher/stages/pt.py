"""Continued pre-training: causal-LM loss on every token of plain-text corpora, in cutoff_len
blocks of EOS-joined documents (launcher/data/blocks.py), through transformers' Trainer."""

from __future__ import annotations

from transformers import Trainer, TrainingArguments

from launcher.data.blocks import block_data
from launcher.data.cache import wait_s
from launcher.data.collate import PaddingCollator
from launcher.kernels.trainer import KernelTrainer
from launcher.stages.sft import split_validation


def build_trainer(plan: dict, args: TrainingArguments, model, tokenizer, callbacks: list) -> tuple[Trainer, dict]:
    """The pre-training Trainer and a summary of its data (documents, blocks, tokens)."""
    recipe = plan["recipe"]
    data_cfg = recipe["data"]
    data = block_data(data_cfg["datasets"], data_cfg, tokenizer, wait_s(recipe))
    if not data.blocks:
        raise SystemExit(f"no text in {data_cfg['datasets']}")
    rows, eval_rows = data.blocks, []
    if data_cfg["eval_datasets"]:
        eval_rows = block_data(data_cfg["eval_datasets"], data_cfg, tokenizer, wait_s(recipe)).blocks
    elif data_cfg["val_size"] > 0:
        rows, eval_rows = split_validation(rows, data_cfg["val_size"], recipe["train"]["seed"])
    summary = {"examples": len(rows), "eval_examples": len(eval_rows), "dropped": 0, "skipped_bad_rows": data.skipped,
               "tokens": sum(len(b["input_ids"]) for b in rows), "documents": data.documents,
               "tail_tokens": data.tail_tokens}
    # blocks are all cutoff_len long: nothing to pad (only a corpus shorter than one block is a shorter block)
    collator = PaddingCollator(tokenizer.pad_token_id, "none", pad_to_multiple_of=1)
    trainer = KernelTrainer(model=model, args=args, train_dataset=rows, eval_dataset=eval_rows or None,
                            data_collator=collator, processing_class=tokenizer, callbacks=callbacks,
                            kernels=plan["kernels"], max_tokens=recipe["train"]["micro_batch_size"] * data_cfg["cutoff_len"])
    return trainer, summary
