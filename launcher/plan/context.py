"""The model's context length for the plan: its max_position_embeddings, or with model.rope_scaling that
factor x original_max_position_embeddings; data.cutoff_len must fit it. Torch-free: the builtin or local
config.json is read as JSON (a hub model's is not at hand before download: its own length is not checked)."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

from launcher.errors import RecipeError
from launcher.model.shape import config_file

if TYPE_CHECKING:
    from launcher.plan.types import Context
    from launcher.recipe.types import Recipe


def _model_context(model_path: str) -> int | None:
    path = config_file(model_path)
    length = json.loads(path.read_text()).get("max_position_embeddings") if path is not None else None
    return length if isinstance(length, int) else None


def context_plan(recipe: Recipe) -> Context:
    """The context data.cutoff_len must fit, and the rope parameters the worker sets on the model's config."""
    model_length, cutoff = _model_context(recipe["model"]["path"]), recipe["data"]["cutoff_len"]
    rope = recipe["model"]["rope_scaling"]
    if rope is None:
        if model_length is not None and cutoff > model_length:
            raise RecipeError(
                f"data.cutoff_len {cutoff} is longer than the model's context (max_position_embeddings "
                f"{model_length}). Fix: data.cutoff_len <= {model_length}, or model.rope_scaling: {{type: linear}} "
                f"(factor ceil({cutoff}/{model_length}) = {math.ceil(cutoff / model_length)})"
            )
        return {"max_position_embeddings": model_length, "length": model_length, "rope_scaling": None}
    original = rope["original_max_position_embeddings"] or model_length
    if original is None:
        raise RecipeError(
            f"model.rope_scaling: the original context of {recipe['model']['path']} is not known before download. "
            "Fix: set model.rope_scaling.original_max_position_embeddings (its config.json's max_position_embeddings)"
        )
    factor = rope["factor"] or float(max(1, math.ceil(cutoff / original)))  # LLaMA-Factory's derivation
    length = int(factor * original)
    if cutoff > length:
        raise RecipeError(
            f"data.cutoff_len {cutoff} is longer than model.rope_scaling's context (factor {factor} x "
            f"original_max_position_embeddings {original} = {length}). Fix: model.rope_scaling.factor >= "
            f"{math.ceil(cutoff / original)}, or data.cutoff_len <= {length}"
        )
    return {
        "max_position_embeddings": model_length,
        "length": length,
        "rope_scaling": {"rope_type": rope["type"], "factor": factor, "original_max_position_embeddings": original},
    }
