"""distributed.sequence_parallel's rules over the other recipe keys (those the world size and the model's
heads decide are the planner's: launcher/plan/mesh.py)."""

from __future__ import annotations

from launcher.registry import Refuse, method_spec, stage_spec, stages_with

KEY = "distributed.sequence_parallel"
# the attention kernels each engine's Ulysses runs around: DeepSpeed's wrapper (UlyssesSPAttentionHF), the
# launcher's exchange under fsdp (launcher/engines/ulysses.py)
ENGINE_ATTENTION = {"deepspeed": ("sdpa", "flash_attention_2"), "fsdp": ("sdpa",)}


def check(r: dict, refuse: Refuse) -> None:
    """Refuse what Ulysses sequence parallelism (degree > 1, or auto where it could pick one) cannot run with."""
    dist, sp = r["distributed"], r["distributed"]["sequence_parallel"]
    if sp == 1 or sp == "auto":  # auto picks 1 where a degree above it is refused (launcher/plan/mesh.py)
        return
    said = f"{KEY}: {sp}"
    if dist["engine"] not in ENGINE_ATTENTION:
        refuse(
            KEY,
            f"{said} runs under distributed.engine: deepspeed (DeepSpeed's Ulysses, ALST) or fsdp (the launcher's "
            f"Ulysses exchange); distributed.engine: {dist['engine']} has none (torch's context_parallel has no CPU "
            "kernels). Fix: set distributed.engine: fsdp (or deepspeed with distributed.zero: 3), "
            "or distributed.sequence_parallel: 1",
        )
        return
    if dist["engine"] == "deepspeed":
        _deepspeed(r, said, refuse)
    if not stage_spec(r["stage"]).lm_loss:
        able = " or ".join(stages_with("lm_loss"))
        refuse(
            KEY,
            f"{said} runs stage {able} (one causal-LM loss over the sequence shards); stage {r['stage']} computes "
            "its loss in TRL over whole sequences, and its other models would go through the Ulysses attention "
            f"too. Fix: set stage: {able}, or distributed.sequence_parallel: 1",
        )
    method = r["method"]["name"]
    if method_spec(method).virtual_tokens:
        refuse(
            KEY,
            f"{said} cannot run method.name: {method}: its virtual tokens are prepended to every rank's shard, "
            "so the shards no longer tile one sequence. Fix: set method.name: lora, or distributed.sequence_parallel: 1",
        )
    attention = ENGINE_ATTENTION[dist["engine"]]
    if r["model"]["attn"] not in ("auto", *attention):
        refuse(
            "model.attn",
            f"model.attn: {r['model']['attn']} cannot run under {said} with distributed.engine: {dist['engine']}: "
            f"its Ulysses attention wraps {' or '.join(attention)}. Fix: set model.attn: auto",
        )
    if r["train"].get("sft_loss") == "dft":
        refuse(
            "train.sft_loss",
            f"train.sft_loss: dft cannot run under {said}: it weighs each token by its probability from the "
            "whole logits, which no shard's loss computes. Fix: set train.sft_loss: ce, or "
            "distributed.sequence_parallel: 1",
        )
    if r["train"]["loss_kernel"] == "liger":  # its patched forward is not tested on sequence shards (CUDA only)
        refuse(
            "train.loss_kernel",
            f"train.loss_kernel: liger cannot run under {said}: liger-kernel's patched loss has not been proven on "
            "sequence shards here. Fix: set train.loss_kernel: chunked (or auto: chunked for a vocabulary of 32,000 "
            "or more; each shard's logits a slice at a time)",
        )


def _deepspeed(r: dict, said: str, refuse: Refuse) -> None:
    """What DeepSpeed's Ulysses alone cannot run with."""
    zero = r["distributed"]["zero"]
    if zero not in (3, "auto"):
        refuse(
            KEY,
            f"{said} needs distributed.zero: 3 (got {zero}): every sequence-parallel rank backpropagates "
            "the whole all-gathered loss, and only ZeRO-3's reduce-scatter averages those gradients; ZeRO 0-2 sum "
            "them, so gradients, the logged grad_norm and clipping are N times too large (DeepSpeed issue #5248). "
            "Fix: set distributed.zero: 3 (or auto), or distributed.sequence_parallel: 1",
        )
    if r["data"]["packing"] == "neat":
        refuse(
            KEY,
            f"{said} cannot keep neat-packed samples apart under distributed.engine: deepspeed: DeepSpeed's Ulysses "
            "attention drops the 4-D mask that does it. Fix: set distributed.engine: fsdp (its Ulysses attention "
            "masks each sample from the whole row's position_ids), or data.packing: greedy or none",
        )
