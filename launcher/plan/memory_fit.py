"""The memory estimate of a plan and `distributed.zero: auto` resolved by it (launcher/plan/memory.py estimates)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from launcher.errors import RecipeError
from launcher.model.shape import model_shape
from launcher.plan.devices import host_memory_gb
from launcher.plan.memory import estimate as estimate_memory
from launcher.plan.memory import pick_auto
from launcher.plan.mesh import candidate_degrees, check_degree, mesh
from launcher.recipe.load import combination_error

if TYPE_CHECKING:
    from launcher.plan.types import Gpus, Memory, Mesh, World
    from launcher.recipe.types import Recipe


def memory_plan(recipe: Recipe, world: World, gpus: Gpus, dtype: str) -> tuple[Recipe, Memory, Mesh]:
    """(recipe with distributed.zero and sequence_parallel: auto resolved, the memory estimate, the mesh).
    Device memory: distributed.device_memory_gb, else the smallest visible GPU's (nvidia-smi), else on CPU
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

    def estimate(recipe: Recipe) -> Memory:
        dist = recipe["distributed"]

        def refusal(zero: int, offload: str) -> str | None:
            return combination_error({**recipe, "distributed": {**dist, "zero": zero, "offload": offload}})

        return estimate_memory(
            recipe,
            world["world_size"],
            world["device"],
            dtype,
            memory_gb,
            source,
            refusal,
            host_per_process if world["device"] == "cuda" else None,
        )

    recipe, memory, plan_mesh = _sequence_parallel(recipe, world, memory_gb, estimate)
    dist = recipe["distributed"]
    if dist["zero"] != "auto":
        return recipe, memory, plan_mesh
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
    return {**recipe, "distributed": {**dist, "zero": chosen["zero"], "offload": chosen["offload"]}}, memory, plan_mesh


def _fits(memory: Memory, dist: Mapping[str, Any]) -> bool:
    """Whether the recipe's option (or, under zero: auto, any option it may pick) fits the device."""
    if dist["zero"] == "auto":
        return pick_auto(memory) is not None
    return any(o["fits"] for o in memory["options"] if (o["zero"], o["offload"]) == (dist["zero"], dist["offload"]))


def _sequence_parallel(
    recipe: Recipe, world: World, memory_gb: float | None, estimate: Callable[[Recipe], Memory]
) -> tuple[Recipe, Memory, Mesh]:
    """The sequence-parallel degree (auto: the smallest the recipe and the model allow at which it fits),
    the recipe with it, its memory estimate and the mesh."""
    dist, world_size = recipe["distributed"], world["world_size"]
    shape, shape_source = model_shape(recipe["model"]["path"])
    if dist["sequence_parallel"] != "auto":
        check_degree(dist["sequence_parallel"], world_size, shape, recipe["model"]["path"])
        return recipe, estimate(recipe), mesh(world_size, dist["sequence_parallel"], "distributed.sequence_parallel")
    if shape is None or memory_gb is None:
        missing = f"the model's shape ({shape_source})" if shape is None else "the device memory"
        raise RecipeError(
            f"distributed.sequence_parallel: auto needs {missing}, which is unknown. Fix: set "
            "distributed.sequence_parallel to a degree (1: none), or "
            + ("model.path to a local model dir" if shape is None else "distributed.device_memory_gb")
        )

    def with_degree(sp: int) -> Recipe:
        return {**recipe, "distributed": {**dist, "sequence_parallel": sp}}

    allowed = [sp for sp in candidate_degrees(world_size, shape) if combination_error(dict(with_degree(sp))) is None]
    tried: list[str] = []
    for sp in allowed:
        memory = estimate(with_degree(sp))
        if _fits(memory, dist):
            why = f"auto: the smallest degree at which data.cutoff_len {recipe['data']['cutoff_len']} fits"
            return (
                with_degree(sp),
                memory,
                mesh(world_size, sp, why + (f" ({', '.join(tried)} do not)" if tried else "")),
            )
        smallest = min((o["total_gb"] for o in memory["options"] if not o["refused"]), default=float("inf"))
        tried.append(f"{sp}: {smallest:.1f} GiB > {memory_gb:.1f}")
    sp = allowed[-1]  # none fits: the largest, and fit_refusal says why training refuses it
    why = (
        f"auto: no degree fits data.cutoff_len {recipe['data']['cutoff_len']} ({', '.join(tried)}); the largest allowed"
    )
    return with_degree(sp), estimate(with_degree(sp)), mesh(world_size, sp, why)
