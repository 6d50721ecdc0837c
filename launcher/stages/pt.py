"""Continued pre-training: causal-LM loss on every token of plain-text corpora, in cutoff_len
blocks of EOS-joined documents (launcher/data/blocks.py), through transformers' Trainer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from transformers import Trainer, TrainingArguments

from launcher.data.blocks import block_data
from launcher.data.cache import wait_s
from launcher.data.collate import PaddingCollator
from launcher.data.splits import train_and_eval
from launcher.kernels.trainer import lm_trainer

if TYPE_CHECKING:
    from launcher.plan.types import Plan


def build_trainer(plan: Plan, args: TrainingArguments, model, tokenizer, callbacks: list) -> tuple[Trainer, dict]:
    """The pre-training Trainer and a summary of its data (documents, blocks, tokens)."""
    recipe = plan["recipe"]
    data_cfg = recipe["data"]
    data, rows, eval_rows = train_and_eval(
        recipe,
        lambda names: block_data(names, data_cfg, tokenizer, wait_s(recipe)),
        lambda data: f"no text in {data_cfg['datasets']}",
    )
    summary = {
        "examples": len(rows),
        "eval_examples": len(eval_rows),
        "dropped": 0,
        "skipped_bad_rows": data.skipped,
        "tokens": sum(len(b["input_ids"]) for b in rows),
        "documents": data.documents,
        "tail_tokens": data.tail_tokens,
    }
    # blocks are all cutoff_len long: nothing to pad (only a corpus shorter than one block is a shorter block)
    collator = PaddingCollator(
        tokenizer.pad_token_id,
        "none",
        pad_to_multiple_of=1,
        sequence_parallel=plan["mesh"]["sequence_parallel"],
        cutoff_len=data_cfg["cutoff_len"],
    )
    trainer = lm_trainer(plan, args, model, tokenizer, callbacks, rows, eval_rows, collator)
    return trainer, summary
