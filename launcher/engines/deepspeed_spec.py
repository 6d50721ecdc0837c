"""Engine deepspeed: DeepSpeed ZeRO stages 0-3, optimizer/parameter offload to the CPU."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from launcher.engines import refuse_offload_beside_auto
from launcher.engines.deepspeed_config import deepspeed_config
from launcher.registry import EngineSpec, Refuse

# The options `distributed.zero: auto` tries, fastest first: less partitioning means less
# communication, and offloading moves the optimizer step (then the parameters) to the CPU.
AUTO_ORDER = ((0, "none"), (1, "none"), (2, "none"), (3, "none"), (2, "optimizer"), (3, "optimizer"), (3, "all"))


def check(recipe: dict, origins: dict[str, str], refuse: Refuse) -> None:
    dist = recipe["distributed"]
    refuse_offload_beside_auto(dist, refuse)
    if dist["offload"] == "none":
        return
    if dist["zero"] == 0:
        refuse(
            "distributed.offload",
            f"distributed.offload: {dist['offload']} needs DeepSpeed ZeRO 1-3 "
            f"(got engine {dist['engine']}, zero {dist['zero']}). Fix: set distributed.zero: 2 or 3",
        )
    if dist["offload"] == "all" and dist["zero"] != 3:
        refuse(
            "distributed.offload",
            f"distributed.offload: all (parameters too) needs distributed.zero: 3, got {dist['zero']}. "
            "Fix: set distributed.zero: 3, or distributed.offload: optimizer",
        )
    if recipe["train"]["optimizer"] != "adamw_torch":
        refuse(
            "train.optimizer",
            f"train.optimizer: {recipe['train']['optimizer']} cannot run with distributed.offload: "
            f"{dist['offload']} (ZeRO-Offload steps with DeepSpeed's CPU Adam). "
            "Fix: set train.optimizer: adamw_torch or distributed.offload: none",
        )


def memory_options(dist: Mapping[str, Any]) -> list[tuple]:
    """Every stage/offload pair `zero: auto` may pick, and the recipe's own where it is none of them."""
    own = (dist["zero"], dist["offload"])
    return list(AUTO_ORDER) + ([own] if dist["zero"] != "auto" and own not in AUTO_ORDER else [])


def trainer_args(plan: Mapping[str, Any]) -> dict:
    from launcher.engines.sequence_parallel import parallelism_args

    return {"deepspeed": plan["deepspeed"], **parallelism_args(plan)}


SPEC = EngineSpec(
    config=deepspeed_config,
    memory_options=memory_options,
    trainer_args=trainer_args,
    # ZeRO's optimizers and DeepSpeed's bf16 optimizer keep an fp32 master copy of what trains
    master_weights=True,
    shards_parameters=lambda dist: dist["zero"] == 3,
    # ZeRO-0/1/2 parameters are whole on every rank: rank 0 saves them as they are (checkpoint/model_save.py)
    live_tensor_save=lambda dist: dist["zero"] != 3,
    # on CPU accelerate sets up plain gloo; DeepSpeed's comm layer must wrap it too
    after_process_group="launcher.engines.deepspeed_setup:init_comm",
    check=check,
)
