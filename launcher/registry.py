"""The registries: every stage and method name, mapped to the torch-free module that specifies it.

This is the single source of the names: the schema's choices, `launch plan`'s checks, `launch
data` and the worker all look a stage or method up here. A spec module defines SPEC (a StageSpec
or MethodSpec); the part that builds the trainer or adapter is named by a "module:function"
string and imported only when a run needs it, so the planner stays torch-free.

Adding a stage: its spec module (which names its trainer and declares its own recipe keys) and one
line in STAGES.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from launcher.keys import Key

if TYPE_CHECKING:
    from launcher.memory import Shape, Tensor

LM_HEAD, SCORE_HEAD = "lm", "score"  # StageSpec.head: the causal LM, or one score per sequence (a reward model)
Refuse = Callable[[str, str], None]  # refuse(dotted key, message): raises the recipe error at that key's origin


def no_check(recipe: dict, origins: dict[str, str], refuse: Refuse) -> None:
    """A spec without cross-key rules."""


@dataclass(frozen=True)
class StageSpec:
    """What the launcher knows about a stage before torch is imported.

    kinds: dataset kinds it reads (launcher/data/kinds.py KIND_NEEDS); None: the text of any dataset's rows
    data: its row format in launcher/data/formats_registry (what `launch data` shows and the trainer reads)
    trainer: "module:function" building (trainer, data summary) from (plan, args, model, tokenizer, callbacks)
    head: the model it loads: LM_HEAD (causal LM) or SCORE_HEAD (one score on its last token, a reward model)
    lm_loss: its trainer computes the causal-LM loss itself (launcher/kernels/trainer.py), so
        train.loss_kernel applies to it
    imports_datasets: its trainer needs the datasets library (TRL's do); the others' ranks never import it
        (launcher/lean_imports.py)
    packs: its rows are packed as data.packing says (any other stage refuses data.packing: it would train unpacked)
    check: its cross-key rules, check(resolved recipe, origins, refuse)
    keys: the train.* keys only this stage reads; the schema makes each valid only under the stages declaring it
    """

    kinds: tuple[str, ...] | None
    data: str
    trainer: str
    head: str = LM_HEAD
    lm_loss: bool = False
    imports_datasets: bool = True
    packs: bool = False
    check: Callable[[dict, dict[str, str], Refuse], None] = no_check
    keys: Mapping[str, Key] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    """A fine-tuning method: its cross-key rules (torch-free) and the module that applies it.

    adapter: the module with apply(model, method_cfg, recipe) -> model, and optional hooks the
    worker calls: after_apply(model, plan, rank), prepare_trainer(trainer, recipe), after_save(plan).
    split: split(shape, base tensors, method section) -> (frozen, trainable) tensors, as the memory planner
        counts them (launcher/memory.py): which base tensors train, which the method adds
    model_check: model_check(method section, the model's parameter shapes, model.path) -> a refusal or None,
        for method keys naming modules or layers the model lacks (`launch plan`, before any rank loads it)
    keys: the method.* keys only this method reads (valid only under method.name: it, as the schema says)
    continues_adapter: it can train a saved adapter further (model.adapter)
    kbit_base: it trains over a k-bit quantized base (model.quantization, QLoRA)
    virtual_tokens: PEFT's forward feeds it virtual tokens (prefix tuning): a fused loss bypasses them and
        compiled layers recompile as they grow, so train.loss_kernel keeps the plain loss and train.compile is refused
    notes: notes(resolved recipe) -> lines `launch plan` prints under "# notes": what is verified of a combination
        it allows, and what is not
    """

    adapter: str
    split: Callable[[Shape, list[Tensor], dict], tuple[list[Tensor], list[Tensor]]]
    check: Callable[[dict, dict[str, str], Refuse], None] = no_check
    model_check: Callable[[dict, dict[str, list[int]], str], str | None] | None = None
    keys: Mapping[str, Key] = field(default_factory=dict)
    continues_adapter: bool = False
    kbit_base: bool = False
    virtual_tokens: bool = False
    notes: Callable[[dict], list[str]] = lambda recipe: []


def methods_with(feature: str) -> list[str]:
    """The registered methods whose spec has `feature` (a MethodSpec flag), in registry order."""
    return [name for name in METHODS if getattr(method_spec(name), feature)]


def stages_with(feature: str) -> list[str]:
    """The registered stages whose spec has `feature` (a StageSpec flag), in registry order."""
    return [name for name in STAGES if getattr(stage_spec(name), feature)]


STAGES: dict[str, str] = {
    "pt": "launcher.stages.pt_spec",
    "sft": "launcher.stages.sft_spec",
    "rm": "launcher.stages.rm_spec",
    "dpo": "launcher.stages.dpo_spec",
    "kto": "launcher.stages.kto_spec",
    "orpo": "launcher.stages.orpo_spec",
    "ppo": "launcher.stages.ppo_spec",
}
METHODS: dict[str, str] = {
    "full": "launcher.methods.full_spec",
    "freeze": "launcher.methods.freeze_spec",
    "lora": "launcher.methods.lora_spec",
    "prefix": "launcher.methods.prefix_spec",
}


def stage_spec(name: str) -> StageSpec:
    """The spec of a registered stage (the recipe's schema admits only those)."""
    return importlib.import_module(STAGES[name]).SPEC


def method_spec(name: str) -> MethodSpec:
    """The spec of a registered method."""
    return importlib.import_module(METHODS[name]).SPEC


def resolve(target: str) -> Any:
    """The object a "module:attribute" string names, its module imported now."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


class _Trainers(Mapping):
    """Stage name -> its build_trainer, imported at lookup (only a worker looks one up)."""

    def __getitem__(self, name: str) -> Callable:
        return resolve(stage_spec(name).trainer)

    def __iter__(self) -> Iterator[str]:
        return iter(STAGES)

    def __len__(self) -> int:
        return len(STAGES)


TRAINERS: Mapping[str, Callable] = _Trainers()
