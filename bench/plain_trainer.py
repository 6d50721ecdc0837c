"""The reference for bench/overhead.py: LoRA SFT under DeepSpeed ZeRO-3 with a bare HF Trainer.

What a user would write by hand instead of using the launcher: no plan, no worker, no
launcher callbacks, no TensorBoard. Only the data path (launcher.data) is shared, so both
runs train on byte-identical batches. CPU + gloo only, like the launcher on a GPU-less box.

    python -m torch.distributed.run --nproc-per-node=2 --master-port=PORT bench/plain_trainer.py \\
        --model-dir DIR --deepspeed ds_config.json --output-dir OUT --max-steps 30
"""

from __future__ import annotations

import argparse

import deepspeed
import torch
import torch.distributed as dist
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, set_seed

from launcher.data.collate import PaddingCollator
from launcher.data.pipeline import build_sft_data


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="local HF model dir (materialized builtin:tiny-qwen2)")
    parser.add_argument("--deepspeed", required=True, help="DeepSpeed config JSON with no 'auto' left")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--dataset", nargs="+", default=["demo_sft"], help="dataset names in dataset_info.json")
    parser.add_argument("--dataset-dir", default="data")
    parser.add_argument("--cutoff-len", type=int, default=256)
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--scheduler", default="cosine")
    parser.add_argument("--optim", default="adamw_torch", help="not the Trainer's default (adamw_torch_fused)")
    parser.add_argument("--warmup", type=float, default=0.05, help="warmup steps; < 1 is a ratio of max steps")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--logging-steps", type=int, default=5)
    parser.add_argument("--save-steps", type=int, default=100000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-alpha", type=float, default=16.0)
    return parser.parse_args()


def training_arguments(args: argparse.Namespace) -> TrainingArguments:
    # Built before the model: with ZeRO-3 in the args, from_pretrained partitions at load (zero.Init).
    return TrainingArguments(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        max_steps=args.max_steps,
        lr_scheduler_type=args.scheduler,
        optim=args.optim,
        warmup_steps=args.warmup,
        activation_checkpointing=args.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        seed=args.seed,
        logging_steps=args.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=args.save_steps,
        deepspeed=args.deepspeed,
        use_cpu=True,
        ddp_backend="gloo",
        report_to="none",
        remove_unused_columns=False,  # the collator needs "labels"; the dataset is a plain list
    )


def main() -> None:
    args = parse_args()
    training_args = training_arguments(args)
    _ = training_args.device  # creates the gloo process group now, so zero.Init sees the world size
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)  # DeepSpeed's comm must wrap it on CPU
    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32, attn_implementation="sdpa")
    lora = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_dropout=0.0,
        target_modules="all-linear",
    )
    model = get_peft_model(model, lora)
    data_cfg = {
        "dataset_dir": args.dataset_dir,
        "max_samples": None,
        "cutoff_len": args.cutoff_len,
        "train_on_prompt": False,
        "mask_history": False,
    }
    data = build_sft_data(args.dataset, data_cfg, tokenizer)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data.examples,
        data_collator=PaddingCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(args.output_dir)  # every rank: gathers the ZeRO-3 shards of the adapter
    if trainer.is_world_process_zero():
        trainer.save_state()
        tokenizer.save_pretrained(args.output_dir)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
