"""The memory estimate of a plan and `distributed.zero: auto` resolved by it (launcher/plan/memory.py estimates)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from launcher.errors import RecipeError
from launcher.plan.devices import host_memory_gb
from launcher.plan.memory import estimate as estimate_memory
from launcher.plan.memory import pick_auto
from launcher.recipe.load import combination_error

if TYPE_CHECKING:
    from launcher.plan.types import Gpus, Memory, World
    from launcher.recipe.types import Recipe


def memory_plan(recipe: Recipe, world: World, gpus: Gpus, dtype: str) -> tuple[Recipe, Memory]:
    """(recipe with distributed.zero: auto resolved, the memory estimate). Device memory:
    distributed.device_memory_gb, else the smallest visible GPU's (nvidia-smi), else on CPU
    the host RAM shared by the node's processes."""
    dist = recipe["distributed"]
    gpu_memory = [gb for gb in gpus["memory_gb"] if gb > 0]
    host = host_memory_gb()
    host_per_process = host / world["nproc_per_node"] if host else None
    memory_gb: float | None
    if dist["device_memory_gb"] is not None:
        memory_gb, source = dist["device_memory_gb"], "distributed.device_memory_gb"
    elif world["device"] == "cuda":
        memory_gb, source = min(gpu_memory, default=None), "nvidia-smi memory.total"
    else:
        memory_gb, source = host_per_process, f"host RAM / {world['nproc_per_node']} processes"

    def refusal(zero: int, offload: str) -> str | None:
        return combination_error({**recipe, "distributed": {**dist, "zero": zero, "offload": offload}})

    memory = estimate_memory(
        recipe,
        world["world_size"],
        world["device"],
        dtype,
        memory_gb,
        source,
        refusal,
        host_per_process if world["device"] == "cuda" else None,
    )
    if dist["zero"] != "auto":
        return recipe, memory
    if "shape" not in memory:
        raise RecipeError(
            f"distributed.zero: auto needs the model's shape, and {recipe['model']['path']} has "
            f"{memory['shape_source']}. Fix: set distributed.zero: 0-3, or model.path to a local model dir"
        )
    if memory_gb is None:
        raise RecipeError(
            "distributed.zero: auto needs the device memory, which could not be detected. "
            "Fix: set distributed.device_memory_gb (GiB per device)"
        )
    chosen = pick_auto(memory)
    if chosen is None:
        smallest = min((o for o in memory["options"] if not o["refused"]), key=lambda o: o["total_gb"])
        raise RecipeError(
            f"distributed.zero: auto: no ZeRO stage or offload fits {recipe['model']['path']} ({recipe['method']['name']}) "
            f"in {memory_gb:.1f} GiB per device; the smallest option, {smallest['label']}, needs about "
            f"{smallest['total_gb']:.1f} GiB (see `launch plan`). Fix: more devices (distributed.nproc_per_node, "
            "distributed.nnodes), a smaller train.micro_batch_size or data.cutoff_len, "
            "train.gradient_checkpointing: true, or method.name: lora / model.quantization"
        )
    memory["auto"] = {"zero": chosen["zero"], "offload": chosen["offload"]}
    return {**recipe, "distributed": {**dist, "zero": chosen["zero"], "offload": chosen["offload"]}}, memory
