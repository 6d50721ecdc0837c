"""Supervised fine-tuning: causal-LM loss on the assistant tokens, through transformers' Trainer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transformers import Trainer, TrainingArguments

from launcher.data.cache import wait_s
from launcher.data.collate import PaddingCollator
from launcher.data.packing import pack_examples
from launcher.data.pipeline import sft_data
from launcher.data.splits import train_and_eval
from launcher.infer.eval_callback import install as install_generate_metrics
from launcher.kernels.trainer import lm_trainer
from launcher.model.dtypes import torch_dtype

if TYPE_CHECKING:
    from launcher.plan.types import Plan


def build_trainer(plan: Plan, args: TrainingArguments, model, tokenizer, callbacks: list) -> tuple[Trainer, dict]:
    """The SFT Trainer and a summary of its data (example and token counts)."""
    recipe = plan["recipe"]
    data_cfg, template = recipe["data"], recipe["model"]["template"]
    train, rows, eval_rows = train_and_eval(
        recipe,
        lambda names: sft_data(names, data_cfg, tokenizer, template, wait_s(recipe)),
        lambda data: (
            f"no trainable examples in {data_cfg['datasets']} ({data.dropped} dropped with no "
            f"answer token within data.cutoff_len={data_cfg['cutoff_len']})"
        ),
    )
    summary: dict[str, Any] = {
        "examples": len(rows),
        "eval_examples": len(eval_rows),
        "dropped": train.dropped,
        "skipped_bad_rows": train.skipped,
        "tokens": sum(len(e["input_ids"]) for e in rows),
    }
    if data_cfg["packing"] != "none":
        packed = pack_examples(rows, data_cfg["cutoff_len"])
        rows, summary["packed_rows"], summary["packing_efficiency"] = packed.rows, len(packed.rows), packed.efficiency
        eval_rows = pack_examples(eval_rows, data_cfg["cutoff_len"]).rows if eval_rows else []
    collator = PaddingCollator(
        tokenizer.pad_token_id,
        data_cfg["packing"],
        plan["kernels"]["padding_free"],
        mask_dtype=torch_dtype(plan["dtype"]),
        sequence_parallel=plan["mesh"]["sequence_parallel"],
        cutoff_len=data_cfg["cutoff_len"],
    )
    trainer = lm_trainer(plan, args, model, tokenizer, callbacks, rows, eval_rows, collator)
    install_generate_metrics(trainer, recipe)
    return trainer, summary
