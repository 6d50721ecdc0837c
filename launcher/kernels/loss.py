"""Chunked linear cross-entropy: the LM head and the loss computed a slice of tokens at a time,
each slice recomputed in backward, so the full (tokens x vocabulary) logits never exist. Within
a slice the cross-entropy writes its gradient into the logits' own buffer, so a slice costs one
(tokens x vocabulary) fp32 tensor, not the three (logits, log-softmax, its gradient) of autograd's.

Same value as transformers' causal-LM loss: the sum of the trained tokens' cross-entropy (in
fp32) over num_items_in_batch (the Trainer's token count across grad-accum and ranks), or the
mean over this batch's trained tokens without it.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from launcher.data.tokenize import IGNORE_INDEX

CHUNK_TOKENS = 512  # 512 x 152k-vocab fp32 logits: 0.3 GB live at a time instead of the whole batch's


def chunk_count(max_tokens: int) -> int:
    """A fixed number of slices per micro-batch (from its largest possible size), so every rank
    calls the LM head equally often: ZeRO-3 gathers its weight once per call."""
    return max(1, -(-max_tokens // CHUNK_TOKENS))


class _InPlaceCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of fp32 logits (T, V) whose backward needs no second buffer: the
    forward turns the logits into their gradient, softmax - one_hot(target), in place. Safe
    because nothing else reads the logits: the LM head's backward needs its input and weight only."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(targets.numel(), device=targets.device)
        target_logits = logits[rows, targets]
        peak = logits.amax(-1, keepdim=True)
        softmax = logits.sub_(peak).exp_()  # in place, where logsumexp() would allocate a (T, V) temporary
        normaliser = softmax.sum(-1, keepdim=True)
        loss = (normaliser.log() + peak).squeeze(-1).sub(target_logits).sum()
        gradient = softmax.div_(normaliser)
        gradient[rows, targets] -= 1
        ctx.save_for_backward(gradient)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        (gradient,) = ctx.saved_tensors
        return gradient.mul_(grad_loss), None  # used once: the buffer becomes the returned gradient


def _summed_cross_entropy(lm_head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # .float(): the HF loss's upcast of half-precision logits (fp32 ones are the head's fresh output)
    return _InPlaceCrossEntropy.apply(lm_head(hidden).float(), targets)


def chunked_cross_entropy(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    labels: torch.Tensor | None,
    chunks: int,
    num_items_in_batch: torch.Tensor | int | None = None,
    shift_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal-LM loss from the final hidden states (B, N, H) and labels (B, N) (unshifted, as
    the model takes them): hidden[t] predicts labels[t + 1]. shift_labels (B, N), as transformers'
    loss takes them, are the targets already shifted: hidden[t] predicts shift_labels[t] (a sequence
    parallel shard's, whose last target is the next shard's first token)."""
    if shift_labels is not None:
        targets, hidden = shift_labels.reshape(-1), hidden.reshape(-1, hidden.size(-1))
    elif labels is not None:
        targets = labels[:, 1:].reshape(-1)
        hidden = hidden[:, :-1].reshape(-1, hidden.size(-1))
    else:
        raise ValueError("chunked_cross_entropy needs labels or shift_labels")
    trained = targets != IGNORE_INDEX  # untrained tokens (prompts, padding) need no logits at all
    hidden, targets = hidden[trained], targets[trained]
    # determinism_check off: under ZeRO-3 the slice is recomputed (in the loss's backward) while the head is
    # gathered only for its own forward, so the weight torch saved shows its partitioned shape when checked
    # afterwards; the head's backward gathers it again before using it (losses and grad norms equal the plain
    # loss's under ZeRO-3, full fine-tuning; the check raised CheckpointError on the first backward)
    total = sum(
        checkpoint(_summed_cross_entropy, lm_head, part, goal, use_reentrant=False, determinism_check="none")
        for part, goal in zip(hidden.tensor_split(chunks), targets.tensor_split(chunks))
    )
    if num_items_in_batch is None:
        return total / trained.sum().clamp(min=1)
    return total / num_items_in_batch


def group_mean(summed: torch.Tensor, shift_labels: torch.Tensor) -> torch.Tensor:
    """DeepSpeed sequence parallelism: the mean loss over the target tokens of the whole group's rows, from this
    shard's summed loss, as the Trainer's own sequence-parallel loss weighs the shards' means (a shard of prompt
    or padding only adds 0). The gather is differentiable: each shard's gradient is its share of the mean's."""
    import torch.distributed.nn.functional as distributed
    from deepspeed.utils import groups

    group = groups._get_sequence_parallel_group()
    trained = (shift_labels != IGNORE_INDEX).sum()
    sums = torch.stack(distributed.all_gather(summed, group=group))
    counts = torch.stack(distributed.all_gather(trained, group=group))
    return sums.sum() / counts.sum().clamp(min=1)


def final_hidden_states(model, inputs: dict) -> torch.Tensor:
    """The decoder's output (after the final norm) through the model's own forward, so every
    wrapper (DDP, DeepSpeed, PEFT) sees a normal call; the LM head is applied to no token."""
    outputs = model(
        **inputs,
        logits_to_keep=torch.empty(0, dtype=torch.long, device=inputs["input_ids"].device),
        output_hidden_states=True,
        use_cache=False,
    )
    return outputs.hidden_states[-1]
