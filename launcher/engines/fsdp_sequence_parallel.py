"""Ulysses sequence parallelism under FSDP2 (imported only inside a rank). The mesh is data-parallel groups of N
consecutive ranks; FSDP still shards over the whole world (every rank holds the same model, so its gradient is a
share of the one gradient, and FSDP's average over all ranks is right once each rank's loss is scaled as below).
Each group trains the same batch: every rank of it takes 1/N of each row (labels shifted over the whole row first,
position_ids kept whole-row), attends through the exchange (engines/ulysses.py), and its loss is its shard's token
sum over the global token count."""

from __future__ import annotations

import torch.distributed as dist
import torch.nn.functional as F

from launcher.compat import share_batches_within_groups
from launcher.data.tokenize import IGNORE_INDEX
from launcher.engines.ulysses import use_ulysses


def _own_group(degree: int):
    """The process group of this rank's N consecutive ranks (every rank creates every group, in order)."""
    rank, groups = dist.get_rank(), {}
    for start in range(0, dist.get_world_size(), degree):
        groups[start] = dist.new_group(list(range(start, start + degree)))
    return groups[rank - rank % degree]


def shard(inputs: dict, degree: int, index: int) -> dict:
    """Rank `index` of the group's part of whole rows (padded to a multiple of N by the collator), labels shifted
    over the whole rows first: each token's target is the next token, even across a shard boundary."""
    shifted = F.pad(inputs["labels"][:, 1:], (0, 1), value=IGNORE_INDEX)
    width = shifted.shape[1] // degree
    part = slice(index * width, (index + 1) * width)
    # contiguous: a column slice of several rows is not, and transformers' loss views the labels flat
    labels = shifted[:, part].contiguous()
    return {
        "input_ids": inputs["input_ids"][:, part].contiguous(),
        "position_ids": inputs["position_ids"][:, part].contiguous(),
        "labels": labels,
        "shift_labels": labels,
    }


def _sharded_loss(trainer, degree: int, index: int):
    """trainer.compute_loss over this rank's shard: its token sum over the global count of target tokens. The
    Trainer counts them over every rank (each group's rows N times, hence / N) and multiplies the loss by the world
    size, which FSDP's average over the world takes back: the gradient is that of the mean over the data."""
    whole_rows = trainer.compute_loss

    def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:  # eval: whole rows on every rank, plain attention
            return whole_rows(model, inputs, return_outputs, num_items_in_batch)
        if num_items_in_batch is None or not trainer.args.average_tokens_across_devices:
            raise RuntimeError(
                "distributed.sequence_parallel under fsdp weighs each shard's loss by the target tokens the Trainer "
                f"counts over all ranks, and {type(trainer.accelerator.unwrap_model(model)).__name__} takes no "
                "num_items_in_batch (its forward has no **kwargs). Fix: distributed.engine: deepspeed"
            )
        return whole_rows(model, shard(inputs, degree, index), return_outputs, num_items_in_batch / degree)

    return compute_loss


def split_sequences(trainer, degree: int) -> None:
    """Ulysses on the trained model only, the group's ranks fed the same batches, the loss over the shards."""
    group = _own_group(degree)
    index = dist.get_rank(group)
    use_ulysses(trainer.model, group)

    train_loader = trainer.get_train_dataloader

    def get_train_dataloader():
        loader = train_loader()
        share_batches_within_groups(loader, degree)
        return loader

    trainer.get_train_dataloader = get_train_dataloader
    trainer.compute_loss = _sharded_loss(trainer, degree, index)
