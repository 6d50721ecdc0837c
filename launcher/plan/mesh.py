"""The device mesh: data-parallel x sequence-parallel ranks. The rules the world size and the model's heads
decide (distributed.sequence_parallel's recipe-only rules: launcher/recipe/sequence_parallel.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from launcher.errors import RecipeError
from launcher.recipe.sequence_parallel import KEY

if TYPE_CHECKING:
    from launcher.model.shape import Shape
    from launcher.plan.types import Mesh


def degree_refusal(sp: int, world_size: int, shape: Shape | None) -> str | None:
    """Why `sp` ranks cannot split each sequence of this model in this world, or None. Ulysses gives each rank
    heads / sp query heads after the all-to-all, and kv_heads / sp KV heads (or one, replicated, where the KV
    heads divide sp)."""
    if sp == 1:
        return None
    if shape is not None and shape.heads % sp:
        return (
            f"{KEY}: {sp} does not divide the model's {shape.heads} attention heads (each rank attends with "
            f"heads / {sp} of them). Fix: a degree that divides {shape.heads}"
        )
    if shape is not None and shape.kv_heads % sp and sp % shape.kv_heads:
        return (
            f"{KEY}: {sp} and the model's {shape.kv_heads} KV heads do not divide one another (Ulysses splits the "
            f"KV heads over the ranks, or replicates them where they divide {sp}). Fix: a degree that divides "
            f"{shape.kv_heads} or is a multiple of it"
        )
    if world_size % sp:
        return (
            f"{KEY}: {sp} does not divide the world size {world_size} (the ranks form data-parallel groups of "
            f"{sp}). Fix: a degree that divides {world_size}, or another distributed.nproc_per_node / nnodes"
        )
    return None


def check_degree(sp: int, world_size: int, shape: Shape | None, model: str) -> None:
    """Refuse a fixed degree the world or the model cannot take; the heads must be known for a degree above 1."""
    if sp > 1 and shape is None:
        raise RecipeError(
            f"{KEY}: {sp} needs the model's attention heads, and the shape of {model} is unknown offline. "
            "Fix: set model.path to a local model dir (with config.json), or distributed.sequence_parallel: 1"
        )
    refusal = degree_refusal(sp, world_size, shape)
    if refusal:
        raise RecipeError(refusal)


def candidate_degrees(world_size: int, shape: Shape) -> list[int]:
    """The degrees `sequence_parallel: auto` may pick, smallest first."""
    return [sp for sp in range(1, world_size + 1) if degree_refusal(sp, world_size, shape) is None]


def mesh(world_size: int, sp: int, reason: str) -> Mesh:
    return {"data_parallel": world_size // sp, "sequence_parallel": sp, "reason": reason}


def format_mesh(plan_mesh: Mesh, sharded: bool) -> str:
    """The mesh line of `launch plan`; `sharded`: the engine shards the parameters, over the whole world (the
    sequence-parallel ranks of a group train one model, so they share its shards as the groups do)."""
    dp, sp = plan_mesh["data_parallel"], plan_mesh["sequence_parallel"]
    split = f": each sequence split over {sp} ranks" if sp > 1 else ""
    shards = f"; parameters sharded over all {dp * sp} ranks" if sharded and dp * sp > 1 else ""
    return f"mesh: data-parallel {dp} x sequence-parallel {sp}{split}{shards} ({plan_mesh['reason']})"
