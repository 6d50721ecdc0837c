"""The launcher's own optimizers (launcher/recipe/optimizers.py OWN_OPTIMIZERS), each built from its authors' package or
torch: GaLore (galore-torch), APOLLO (apollo-torch), BAdam (badam), Adam-mini (adam-mini), Muon (torch.optim.Muon).

Trainer.create_optimizer calls the factory `install` sets, so the scheduler, gradient clipping, checkpoints and
resume see the optimizer as they see transformers' own. Each takes transformers' AdamW arguments (lr, betas, eps)
and train.weight_decay, with transformers' split of the parameters that decay (not biases, not norms).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from launcher.errors import RecipeError
from launcher.recipe.optimizers import ALL_LINEAR, OWN_OPTIMIZERS

if TYPE_CHECKING:
    from transformers import Trainer

Groups = list[dict[str, Any]]


def install(trainer: Trainer, recipe: Mapping[str, Any]) -> None:
    """The recipe's train.optimizer as the trainer's optimizer, where it is one of the launcher's own."""
    if recipe["train"]["optimizer"] in OWN_OPTIMIZERS:
        trainer.optimizer_cls_and_kwargs = (_factory, {"trainer": trainer, "train": recipe["train"]})


def _factory() -> Callable[..., torch.optim.Optimizer]:
    return build_optimizer


def build_optimizer(model: nn.Module, trainer: Trainer, train: Mapping[str, Any]) -> torch.optim.Optimizer:
    """train.optimizer over the model's trainable parameters, on the trainer's AdamW arguments."""
    _, adam = trainer.get_optimizer_cls_and_kwargs(trainer.args, model)  # lr, betas, eps
    decay = set(trainer.get_decay_parameter_names(model))
    return BUILDERS[train["optimizer"]](model, train, adam, decay)


def _trainable(model: nn.Module, skip: Collection[int] = ()) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in skip]


def _decay_groups(named: list[tuple[str, nn.Parameter]], decay: set[str], weight_decay: float) -> Groups:
    """transformers' two groups: weight decay on the weights, none on biases and norms (empty ones left out)."""
    groups = [
        {"params": [p for n, p in named if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def _output_head(model: nn.Module) -> set[int]:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {id(p) for p in head.parameters()} if head is not None else set()


def low_rank_weights(model: nn.Module, targets: list[str], key: str) -> list[nn.Parameter]:
    """The trainable weights of the linear layers `targets` names (all: every one but the output head), as
    LLaMA-Factory picks them for GaLore and APOLLO."""
    head = _output_head(model)
    chosen = [
        module.weight
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and module.weight.requires_grad
        and id(module.weight) not in head
        and (targets == [ALL_LINEAR] or any(t in name for t in targets))
    ]
    if not chosen:
        raise RecipeError(
            f"{key}: {targets} names no trainable linear layer of the model. Fix: name linear modules of its layers "
            f"(e.g. q_proj, down_proj) or [{ALL_LINEAR}]"
        )
    return chosen


def _low_rank_groups(model: nn.Module, train: Mapping[str, Any], decay: set[str], section: str) -> Groups:
    """GaLore's or APOLLO's groups: the target weights projected, transformers' decay groups for the rest."""
    cfg = train[section]
    weights = low_rank_weights(model, cfg["target"], f"train.{section}.target")
    projected = {
        "params": weights,
        "weight_decay": train["weight_decay"],
        "rank": cfg["rank"],
        "update_proj_gap": cfg["update_interval"],
        "scale": cfg["scale"],
        "proj_type": cfg["proj_type"],
    }
    return [*_decay_groups(_trainable(model, {id(w) for w in weights}), decay, train["weight_decay"]), projected]


def _galore(model: nn.Module, train: Mapping[str, Any], adam: dict, decay: set[str]) -> torch.optim.Optimizer:
    from galore_torch import GaLoreAdamW

    return GaLoreAdamW(_low_rank_groups(model, train, decay, "galore"), **adam, no_deprecation_warning=True)


def _apollo(model: nn.Module, train: Mapping[str, Any], adam: dict, decay: set[str]) -> torch.optim.Optimizer:
    """APOLLO reads its projection and scaling from the projected group, scale_front from its constructor."""
    from apollo_torch import APOLLOAdamW

    cfg = train["apollo"]
    *rest, projected = _low_rank_groups(model, train, decay, "apollo")
    projected |= {"proj": cfg["proj"], "scale_type": cfg["scale_type"]}
    return APOLLOAdamW([*rest, projected], **adam, scale_front=cfg["scale_front"])


def _badam(model: nn.Module, train: Mapping[str, Any], adam: dict, decay: set[str]) -> torch.optim.Optimizer:
    """BAdam's layer-wise BlockOptimizer over torch's AdamW; it freezes all but the current layer itself."""
    from badam import BlockOptimizer

    class BlockOptimizerSkippingBadSteps(BlockOptimizer):
        """BAdam asserts that every parameter of the active layer has a gradient: a step whose gradients the NaN
        guard dropped (launcher/monitoring/health.py) is skipped here, as the other optimizers skip it."""

        def step(self, *args, **kwargs) -> None:
            if any(p.grad is not None for p in self.param_idx2lp.values()):
                super().step(*args, **kwargs)

    cfg = train["badam"]
    # BlockOptimizer builds each layer's groups from the base optimizer's defaults: its weight decay must be there
    base = torch.optim.AdamW(
        _decay_groups(_trainable(model), decay, train["weight_decay"]), weight_decay=train["weight_decay"], **adam
    )
    return BlockOptimizerSkippingBadSteps(
        base_optimizer=base,
        named_parameters_list=list(model.named_parameters()),
        switch_block_every=cfg["switch_interval"],
        start_block=cfg["start_block"],
        switch_mode=cfg["switch_mode"],
        verbose=0,
    )


def _adam_mini(model: nn.Module, train: Mapping[str, Any], adam: dict, decay: set[str]) -> torch.optim.Optimizer:
    """Adam-mini: one learning rate per block (attention head, neuron), found by parameter name; the model's config
    gives the heads."""
    from adam_mini import Adam_mini

    config = model.config
    return Adam_mini(
        named_parameters=_trainable(model),
        weight_decay=train["weight_decay"],
        dim=config.hidden_size,
        n_heads=config.num_attention_heads,
        n_kv_heads=getattr(config, "num_key_value_heads", None),
        verbose=False,
        **adam,
    )


def muon_matrices(model: nn.Module) -> list[nn.Parameter]:
    """What Muon trains: the trainable 2-D weights but the input embeddings and the output head (Muon's authors and
    LLaMA-Factory leave those to AdamW)."""
    outer = _output_head(model) | {id(p) for p in model.get_input_embeddings().parameters()}
    return [p for _, p in _trainable(model, outer) if p.ndim == 2]


class MuonWithAdamW(torch.optim.Optimizer):
    """torch's Muon on the matrices, torch's AdamW on the rest (either may have nothing to train: LoRA trains
    matrices only), stepped, scheduled and saved as one optimizer: its param_groups are the parts' own, so the
    scheduler's rate reaches both."""

    def __init__(self, *parts: torch.optim.Optimizer):
        self.parts = parts
        super().__init__([p for part in self.parts for g in part.param_groups for p in g["params"]], {})
        self.param_groups = [g for part in self.parts for g in part.param_groups]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure() if closure is not None else None
        for part in self.parts:
            part.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for part, state in zip(self.parts, state_dict["parts"], strict=True):
            part.load_state_dict(state)


def _muon(model: nn.Module, train: Mapping[str, Any], adam: dict, decay: set[str]) -> torch.optim.Optimizer:
    cfg = train["muon"]
    matrices = muon_matrices(model)
    rest = _decay_groups(_trainable(model, {id(p) for p in matrices}), decay, train["weight_decay"])
    parts: list[torch.optim.Optimizer] = []
    if matrices:
        parts.append(
            torch.optim.Muon(
                matrices,
                lr=adam["lr"],
                weight_decay=train["weight_decay"],
                momentum=cfg["momentum"],
                ns_steps=cfg["ns_steps"],
                adjust_lr_fn=cfg["adjust_lr"],
            )
        )
    if rest:
        parts.append(torch.optim.AdamW(rest, **adam))
    return MuonWithAdamW(*parts)


BUILDERS: dict[str, Callable[[nn.Module, Mapping[str, Any], dict, set[str]], torch.optim.Optimizer]] = {
    "galore_adamw": _galore,
    "apollo_adamw": _apollo,
    "badam": _badam,
    "adam_mini": _adam_mini,
    "muon": _muon,
}
