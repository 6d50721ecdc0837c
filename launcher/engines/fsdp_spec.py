"""Engine fsdp: PyTorch FSDP2 (`fully_shard`, every parameter a DTensor sharded over all ranks) through
accelerate's FSDP2 plugin. Parameters, gradients and optimizer state are sharded as under ZeRO-3, by the
engine itself: distributed.zero is 0 (no DeepSpeed stage), distributed.offload: all moves the shards to the CPU."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from launcher.engines import refuse_offload_beside_auto
from launcher.registry import EngineSpec, Refuse


def fsdp_config(recipe: Mapping[str, Any], world_size: int, dtype: str, on_gpu: bool) -> dict:
    """TrainingArguments(fsdp_config=...): FSDP2, one unit per decoder layer (accelerate takes the layer class
    from the model's _no_split_modules), sharded DCP checkpoints. Mixed precision follows the plan's dtype
    (the Trainer's bf16/fp16 flags set the plugin's MixedPrecisionPolicy; what trains is kept in fp32)."""
    return {
        "version": 2,
        "reshard_after_forward": True,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "state_dict_type": "SHARDED_STATE_DICT",
        # CPUOffloadPolicy pins host memory, which needs an accelerator (torch raises "Cannot access accelerator
        # device" on a CPU-only machine); there the host is the device and offloading moves nothing
        "cpu_offload": recipe["distributed"]["offload"] == "all" and on_gpu,
        "cpu_ram_efficient_loading": False,
    }


def check(recipe: dict, origins: dict[str, str], refuse: Refuse) -> None:
    dist = recipe["distributed"]
    if dist["zero"] not in (0, "auto"):
        refuse(
            "distributed.zero",
            f"distributed.zero: {dist['zero']} is a DeepSpeed ZeRO stage; distributed.engine: fsdp shards "
            "parameters, gradients and optimizer state itself (as ZeRO-3 does). Fix: remove distributed.zero "
            "(or set it to 0), or set distributed.engine: deepspeed",
        )
    refuse_offload_beside_auto(dist, refuse)
    if dist["offload"] == "optimizer":
        refuse(
            "distributed.offload",
            "distributed.offload: optimizer is DeepSpeed's; FSDP2 offloads parameters, gradients and optimizer "
            "state together (CPUOffloadPolicy). Fix: set distributed.offload: all, or distributed.engine: deepspeed",
        )
    if recipe["model"]["quantization"] is not None:
        refuse(
            "model.quantization",
            "model.quantization (QLoRA) cannot run with distributed.engine: fsdp: bitsandbytes stores k-bit weights "
            "as integers, which fully_shard cannot turn into DTensors (accelerate leaves them unsharded, whole on "
            "every rank). Fix: set distributed.engine: deepspeed, or remove model.quantization",
        )
    if recipe["stage"] == "ppo":
        refuse(
            "distributed.engine",
            "distributed.engine: fsdp cannot run stage: ppo (its rollouts generate from the policy, the reference "
            "and the reward model outside the Trainer's step, which FSDP2's sharded forward is not built or tested "
            "for here). Fix: set distributed.engine: deepspeed",
        )
    if dist["launcher"] == "deepspeed":
        refuse(
            "distributed.launcher",
            "distributed.launcher: deepspeed starts DeepSpeed ranks; distributed.engine: fsdp runs under "
            "torchrun or accelerate. Fix: set distributed.launcher: torchrun",
        )


def memory_options(dist: Mapping[str, Any]) -> list[tuple[Any, str]]:
    """Everything on the devices, or (offload: all) the shards and the optimizer step on the CPU."""
    return [(0, "none"), (0, "all")]


def trainer_args(plan: Mapping[str, Any]) -> dict:
    return {"fsdp": True, "fsdp_config": dict(plan["fsdp"])}  # a copy: TrainingArguments rewrites it


SPEC = EngineSpec(
    config=fsdp_config,
    config_key="fsdp",
    memory_options=memory_options,
    trainer_args=trainer_args,
    label=lambda zero, offload: "FSDP2" + ("" if offload == "none" else " + offload all"),
    implied_zero=0,
    shards_parameters=lambda dist: True,
    shards_all=True,
    # on CPU accelerate would quietly run DDP instead (launcher/compat.py: fsdp_on_cpu)
    after_process_group="launcher.engines.fsdp_setup:after_process_group",
    prepare_trainer="launcher.engines.fsdp_setup:prepare_trainer",
    check=check,
)
