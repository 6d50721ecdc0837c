"""The optimizer steps an epoch-based run will take, known only once its data is built: a train.epochs that
gives less than one would still run the Trainer's one rounded-up step (at a warmup's lr 0), so it is refused."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from launcher.errors import RecipeError

if TYPE_CHECKING:
    from transformers import Trainer


def refuse_less_than_one_step(trainer: Trainer, epochs: float, max_steps: int | None) -> None:
    """Raise a RecipeError naming train.epochs, the steps, the rows and the global batch when epochs train < 1 step."""
    if max_steps:  # train.max_steps overrides epochs
        return
    args = trainer.args
    batches = len(trainer.get_train_dataloader())  # this rank's batches per epoch, as trainer.train counts them
    per_epoch = math.ceil(batches / args.gradient_accumulation_steps)  # a partial accumulation is one update
    steps = per_epoch * epochs
    if steps >= 1:
        return
    global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    raise RecipeError(
        f"train.epochs = {epochs:g} gives {steps:.3g} optimizer steps ({len(trainer.train_dataset)} training rows, "
        f"global batch {global_batch}, {per_epoch} steps an epoch): less than one step trains nothing. "
        f"Fix: raise train.epochs to at least {1 / per_epoch:g}, or set train.max_steps"
    )
