"""Dynamic Fine-Tuning's loss (train.sft_loss: dft; LLaMA-Factory's use_dft_loss): each trained token's
cross-entropy weighted by the model's own probability of that token, detached, so confidently predicted tokens
keep their weight and improbable ones no longer dominate the gradient. Normalised as transformers' causal-LM
loss: the sum over trained tokens divided by num_items_in_batch (the Trainer's count across grad-accum and ranks),
or by this batch's trained tokens without it. The Trainer's compute_loss_func, so it needs the full logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from launcher.data.tokenize import IGNORE_INDEX


def dft_loss(outputs, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
    logits = outputs["logits"][:, :-1].float()  # position t predicts token t + 1
    targets = labels[:, 1:].to(logits.device)
    trained = targets != IGNORE_INDEX
    cross_entropy = F.cross_entropy(logits[trained], targets[trained], reduction="none")
    weighted = (cross_entropy * torch.exp(-cross_entropy).detach()).sum()
    count = num_items_in_batch if num_items_in_batch is not None else trained.sum().clamp(min=1)
    if isinstance(count, torch.Tensor):  # the Trainer's count may sit on another device
        count = count.to(weighted.device)
    return weighted / count
