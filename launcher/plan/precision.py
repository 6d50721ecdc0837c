"""What the visible hardware runs: the dtype `auto` picks, the precisions it refuses, the kernel choice."""

from __future__ import annotations

from typing import TYPE_CHECKING

from launcher.errors import RecipeError
from launcher.kernels.choice import kernel_plan
from launcher.model.shape import model_shape

if TYPE_CHECKING:
    from launcher.kernels.choice import Kernels
    from launcher.plan.types import Gpus
    from launcher.recipe.types import Recipe


def resolve_dtype(dtype: str, gpus: Gpus) -> str:
    """auto -> bf16 on GPUs that have it (Ampere+), fp16 on older ones, fp32 on CPU."""
    if dtype != "auto":
        return dtype
    if not gpus["count"]:
        return "fp32"
    return "bf16" if all(cap == 0 or cap >= 8.0 for cap in gpus["compute_caps"]) else "fp16"


def check_device(recipe: Recipe, gpus: Gpus) -> None:
    """Refuse precisions and kernels the visible hardware cannot run."""
    dtype = recipe["model"]["dtype"]
    if gpus["count"]:
        # bf16 needs Ampere (compute capability 8.0) or newer; older GPUs emulate it or fail in kernels
        old = [f"{name} (compute {cap:.1f})" for name, cap in zip(gpus["names"], gpus["compute_caps"]) if 0 < cap < 8.0]
        if dtype == "bf16" and old:
            raise RecipeError(
                f"model.dtype = 'bf16' needs compute capability 8.0+ (Ampere or newer); visible: "
                f"{', '.join(old)}. Fix: model.dtype=fp16 (loss scaling on) or fp32"
            )
        return
    if dtype == "fp16":
        raise RecipeError(
            "model.dtype = 'fp16' needs a CUDA GPU and none is visible. Fix: model.dtype=bf16 or fp32 on CPU"
        )


def plan_kernels(recipe: Recipe, on_gpu: bool) -> Kernels:
    """Attention / loss kernel and compile choice (launcher/kernels/choice.py), refusals as RecipeError."""
    shape, _ = model_shape(recipe["model"]["path"])
    return kernel_plan(recipe, on_gpu, shape.vocab if shape else None)
