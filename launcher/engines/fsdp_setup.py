"""The FSDP engine's rank-side set-up (imported only inside a rank): FSDP for real on CPU, a check that every
parameter is sharded, and a final save that gathers the whole model (checkpoints stay sharded DCP)."""

from __future__ import annotations

import copy

from transformers import TrainerCallback


def after_process_group(plan: dict) -> None:
    """On CPU accelerate would run DDP in place of FSDP; before the Trainer builds its Accelerator."""
    if plan["world"]["device"] == "cpu":
        from launcher.compat import fsdp_on_cpu

        fsdp_on_cpu()


class ShardCheck(TrainerCallback):
    """Once the Trainer has wrapped the model: every parameter is a DTensor (a run that fell back to DDP stops
    here), and each rank logs the share of the parameters it holds."""

    def __init__(self, trainer, rank: int):
        self.trainer, self.rank = trainer, rank

    def on_train_begin(self, args, state, control, **kwargs):
        from torch.distributed.tensor import DTensor

        params = dict(self.trainer.model.named_parameters())
        whole = [name for name, param in params.items() if not isinstance(param, DTensor)]
        if whole or not self.trainer.accelerator.is_fsdp2:
            raise RuntimeError(
                f"distributed.engine: fsdp, but accelerate runs {self.trainer.accelerator.distributed_type} and "
                f"{len(whole)} of {len(params)} parameters are not sharded (first: {whole[:1]})"
            )
        held = sum(param.to_local().numel() for param in params.values())
        total = sum(param.numel() for param in params.values())
        print(
            f"[launcher] fsdp: rank {self.rank} holds {held:,} of {total:,} parameter elements "
            f"({held / total:.1%}) in {len(params)} DTensors",
            flush=True,
        )


def describe_checkpoint(trainer, output_dir: str) -> None:
    """Beside a checkpoint's DCP shards, what `launch consolidate` needs to make them an adapter or a model dir:
    the adapter's config (as PEFT saves it, for inference) or the model's, and the tokenizer (rank 0)."""
    if not trainer.args.should_save:
        return
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "peft_config"):
        config = copy.copy(model.peft_config["default"])
        config.inference_mode = True
        config.save_pretrained(output_dir)
    else:
        model.config.save_pretrained(output_dir)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(output_dir)
    if trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(output_dir)


def prepare_trainer(trainer, plan: dict, rank: int) -> None:
    trainer.add_callback(ShardCheck(trainer, rank))
    if plan["mesh"]["sequence_parallel"] > 1:
        from launcher.engines.fsdp_sequence_parallel import split_sequences

        split_sequences(trainer, plan["mesh"]["sequence_parallel"])
    save_checkpoint_model = trainer.save_model

    def save_model(output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Checkpoints (_internal_call) are sharded DCP; the final save is the gathered model or adapter."""
        if _internal_call:
            save_checkpoint_model(output_dir, _internal_call)  # the Trainer then writes the DCP shards
            return describe_checkpoint(trainer, output_dir or trainer.args.output_dir)
        plugin = trainer.accelerator.state.fsdp_plugin
        sharded = plugin.state_dict_type
        plugin.set_state_dict_type("FULL_STATE_DICT")
        try:
            save_checkpoint_model(output_dir, _internal_call)
        finally:
            plugin.set_state_dict_type(sharded)

    trainer.save_model = save_model
