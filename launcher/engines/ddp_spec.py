"""Engine ddp: plain PyTorch DistributedDataParallel through the Trainer; every rank holds everything."""

from __future__ import annotations

from launcher.registry import EngineSpec, Refuse


def check(recipe: dict, origins: dict[str, str], refuse: Refuse) -> None:
    dist = recipe["distributed"]
    if dist["zero"] != 0:
        refuse(
            "distributed.zero",
            f"distributed.zero: {dist['zero']} needs distributed.engine: deepspeed (got ddp). "
            "Fix: set distributed.engine: deepspeed, or distributed.zero: 0 for plain DDP",
        )
    if dist["offload"] != "none":
        refuse(
            "distributed.offload",
            f"distributed.offload: {dist['offload']} needs DeepSpeed ZeRO 1-3 "
            f"(got engine {dist['engine']}, zero {dist['zero']}). Fix: set distributed.zero: 2 or 3",
        )


SPEC = EngineSpec(
    config=lambda recipe, world_size, dtype, on_gpu: None,
    memory_options=lambda dist: [(0, "none")],
    trainer_args=lambda plan: {},
    label=lambda zero, offload: "DDP",
    implied_zero=0,
    check=check,
)
