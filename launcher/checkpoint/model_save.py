"""Model saves under DeepSpeed ZeRO-0/1/2 without a second copy of the model in memory.

transformers' Trainer.save_model (the final save and every checkpoint) asks accelerate for the
state dict, which under ZeRO-0/1/2 clones every tensor of the model into CPU memory on every
rank (DeepSpeed's clone_tensors_for_torch_save: torch.save would otherwise write the whole flat
buffer a ZeRO-1/2 parameter is a view of). That is the whole base model once more per rank at
every save even when only a LoRA adapter is written: host memory a planner has to reserve, or
an out-of-memory kill at the first checkpoint. save_pretrained writes safetensors, which store
only each view's own bytes, so rank 0 saves from the live tensors instead. ZeRO-3 keeps the
Trainer's path (its parameters must be gathered)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from launcher.compat import rank_save
from launcher.registry import engine_spec

if TYPE_CHECKING:
    from launcher.plan.types import Plan


def save_from_live_tensors(trainer, plan: Plan) -> None:
    """Replace trainer.save_model (also used for checkpoints) where the engine keeps whole weights on rank 0."""
    dist = plan["recipe"]["distributed"]  # zero: the user's DeepSpeed JSON's stage too (ds_user_config)
    if not engine_spec(dist["engine"]).live_tensor_save(dist):
        return

    def save_model(output_dir: str | None = None, _internal_call: bool = False) -> None:
        if trainer.args.should_save:
            rank_save(trainer, output_dir or trainer.args.output_dir)

    trainer.save_model = save_model
