"""transformers' Trainer with the plan's kernels: padding-free packed rows get their sample
separation built on the device (attention.py), and train.loss_kernel: chunked computes the loss
without whole logits (loss.py). plain and liger (patched into the model at load) keep the
Trainer's own loss, or under sft's train.sft_loss: dft the Trainer's compute_loss_func (dft.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import Trainer

from launcher.kernels.attention import packed_attention_inputs, without_right_padding_mask
from launcher.kernels.dft import dft_loss
from launcher.kernels.loss import chunk_count, chunked_cross_entropy, final_hidden_states, group_mean


def _unwrapped(model):
    """The base model inside DDP / DeepSpeed engine and PEFT wrappers."""
    inner = model
    while hasattr(inner, "module"):  # DDP / DeepSpeed engine
        inner = inner.module
    if hasattr(inner, "get_base_model"):  # PEFT
        inner = inner.get_base_model()
    return inner


def output_head(model):
    """The LM head of the (possibly PEFT- or engine-wrapped) model."""
    return _unwrapped(model).get_output_embeddings()


def unwrapped_config(model):
    return getattr(_unwrapped(model), "config", None)


class KernelTrainer(Trainer):
    """Trainer whose compute_loss follows plan["kernels"]."""

    def __init__(self, *args, kernels: dict, max_tokens: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.kernels = kernels
        self.chunks = chunk_count(max_tokens)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = packed_attention_inputs(inputs, self.kernels["attn"])
        routed = bool(getattr(unwrapped_config(model), "output_router_logits", False))
        inputs = without_right_padding_mask(inputs, self.kernels["attn"], routed)
        if self.kernels["loss"] != "chunked" or return_outputs or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels", None)  # DeepSpeed's sequence-parallel loader leaves shift_labels only
        shift_labels = inputs.pop("shift_labels", None)  # a sequence-parallel shard's targets
        hidden = final_hidden_states(model, inputs)
        head = output_head(model)
        if self.get_sp_size() > 1:  # DeepSpeed's sequence parallelism (fsdp's has no parallelism_config)
            summed = chunked_cross_entropy(hidden, head, labels, self.chunks, 1, shift_labels)
            return group_mean(summed, shift_labels)
        loss = chunked_cross_entropy(hidden, head, labels, self.chunks, num_items_in_batch, shift_labels)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # as Trainer.compute_loss does: the token count spans every rank, DDP averages the gradients
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return loss


def lm_trainer(
    plan: Mapping[str, Any], args, model, tokenizer, callbacks: list, rows: list, eval_rows: list, collator
) -> KernelTrainer:
    """The pt/sft trainer over these rows: the plan's kernels, the chunked loss sized for a full micro-batch."""
    recipe = plan["recipe"]
    return KernelTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        eval_dataset=eval_rows or None,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
        kernels=plan["kernels"],
        max_tokens=recipe["train"]["micro_batch_size"] * recipe["data"]["cutoff_len"],
        compute_loss_func=dft_loss if recipe["train"].get("sft_loss") == "dft" else None,  # with the plain kernel
    )
