"""OFT through PEFT: each targeted linear layer's input rotated by a trainable block-diagonal orthogonal
matrix (block size or block count, COFT, block sharing, Cayley-Neumann), plus fully trained extra modules;
over a k-bit base this is QOFT."""

from __future__ import annotations

from typing import TYPE_CHECKING

from peft import OFTConfig, PeftModel, TaskType, get_peft_model
from torch import nn

from launcher.errors import MethodError
from launcher.methods.lora import prepare_kbit_base
from launcher.methods.oft_spec import block_error
from launcher.model.module_names import lora_targets_error
from launcher.registry import SCORE_HEAD, stage_spec

if TYPE_CHECKING:
    from launcher.recipe.types import MethodSection, Recipe


def oft_config(method: MethodSection, recipe: Recipe) -> OFTConfig:
    """PEFT's OFTConfig for the recipe's method.* keys."""
    target = method["target"]
    return OFTConfig(
        # SEQ_CLS (the reward model) keeps the new score head in modules_to_save, so the adapter holds it
        task_type=TaskType.SEQ_CLS if stage_spec(recipe["stage"]).head == SCORE_HEAD else TaskType.CAUSAL_LM,
        r=method["blocks"],
        oft_block_size=method["block_size"],
        module_dropout=method["module_dropout"],
        coft=method["coft"],
        eps=method["eps"],
        block_share=method["block_share"],
        use_cayley_neumann=method["cayley_neumann"],
        num_cayley_neumann_terms=method["neumann_terms"],
        # PEFT's "all-linear" = every linear layer except the output head
        target_modules="all-linear" if target == "all" else target,
        modules_to_save=method["additional_target"],
    )


def apply(model: nn.Module, method: MethodSection, recipe: Recipe) -> PeftModel:
    """Wrap the model with an OFT adapter; the base stays frozen (over a k-bit base: QOFT). The planner checked
    local and builtin models' targets and block sizes; a hub model is first seen here."""
    model = prepare_kbit_base(model, recipe)
    shapes = {name: list(getattr(p, "ds_shape", p.shape)) for name, p in model.named_parameters()}  # ZeRO-3: full
    error = None if method["target"] == "all" else lora_targets_error("method.target", method["target"], shapes)
    # input widths from the modules: a k-bit weight is stored packed, a ZeRO-3 one partitioned
    linear = {
        f"{name}.weight": [m.out_features, m.in_features]
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
    }
    error = error or block_error(method, linear, model.config.get_text_config().num_hidden_layers)
    if error:
        raise MethodError(error)
    try:
        return get_peft_model(model, oft_config(method, recipe))
    except TypeError as err:  # a targeted module of a kind PEFT's OFT has no layer for (e.g. GPT-2's Conv1D)
        raise MethodError(
            f"method.name: oft cannot adapt {type(model).__name__}: {err}. Fix: method.target naming its "
            "nn.Linear modules, or method.name: lora"
        ) from None
