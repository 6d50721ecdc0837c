"""The registries: every stage, method and engine name, mapped to the torch-free module that specifies it.

This is the single source of the names: the schema's choices, `launch plan`'s checks, `launch
data` and the worker all look a stage or method up here. A spec module defines SPEC (a StageSpec
or MethodSpec); the part that builds the trainer or adapter is named by a "module:function"
string and imported only when a run needs it, so the planner stays torch-free.

Adding a stage: its spec module (which names its trainer and declares its own recipe keys) and one
line in STAGES; a method or an engine likewise (METHODS, ENGINES).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from launcher.model.shape import Shape, Tensor


@dataclass(frozen=True)
class Key:
    """One recipe key.

    kind: int | float | bool | str | str_list | float_list | section (a list item meets low/high)
    literals: extra string values accepted besides the kind (e.g. "auto" for an int key)
    only_for: (selector key, allowed values): the key is only valid when the selector
        (a dotted key, e.g. "method.name") has one of these values; its default applies only then.
    guess: offer the closest choice by spelling for a value that is none of them (off where a
        near name is a different thing, e.g. the llama2 template is not llama3's format).
    commas: a str_list given as one string "a,b" means [a, b].
    """

    kind: str
    default: Any = None
    doc: str = ""
    choices: Collection = ()  # a tuple, or a registry's live view of names
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    nullable: bool = False
    literals: tuple = ()
    only_for: tuple[str, tuple] | None = None
    fields: dict[str, "Key"] = field(default_factory=dict)
    guess: bool = True
    commas: bool = False  # str_list: one string is split at commas (LLaMA-Factory's `dataset: a,b`)


LM_HEAD, SCORE_HEAD = "lm", "score"  # StageSpec.head: the causal LM, or one score per sequence (a reward model)
# (section, key, check(recipe)): a folder an earlier stage writes that a recipe reads, and its check
StageInput = tuple[str, str, Callable[[Mapping[str, Any]], None]]
Refuse = Callable[[str, str], None]  # refuse(dotted key, message): raises the recipe error at that key's origin


def no_check(recipe: dict, origins: dict[str, str], refuse: Refuse) -> None:
    """A spec without cross-key rules."""


@dataclass(frozen=True)
class StageSpec:
    """What the launcher knows about a stage before torch is imported.

    kinds: dataset kinds it reads (launcher/data/kinds.py KIND_NEEDS); None: the text of any dataset's rows
    rows: "module:NAME" of its row format (a StageView of launcher/data/preview.py: what `launch data` shows,
        built by the builder the trainer reads its rows through)
    trainer: "module:function" building (trainer, data summary) from (plan, args, model, tokenizer, callbacks)
    head: the model it loads: LM_HEAD (causal LM) or SCORE_HEAD (one score on its last token, a reward model)
    lm_loss: its trainer computes the causal-LM loss itself (launcher/kernels/trainer.py), so
        train.loss_kernel applies to it
    imports_datasets: its trainer needs the datasets library (TRL's do); the others' ranks never import it
        (launcher/worker/lean_imports.py)
    packs: its rows are packed as data.packing says (any other stage refuses data.packing: it would train unpacked)
    check: its cross-key rules, check(resolved recipe, origins, refuse)
    keys: the train.* keys only this stage reads; the schema makes each valid only under the stages declaring it
    inputs: (section, key, check(recipe)) for each folder an earlier stage writes that this stage reads (its
        train.* key): `launch plan` checks it before launch, or notes it pending where it does not exist yet
    plan: plan(recipe, world, cwd) -> the stage's own part of the plan (plan["stage"]: JSON, what its ranks read
        and `launch plan` prints as "key: value" lines), refusing (RecipeError) what depends on the world
        (world size, device); None: the stage has none
    """

    kinds: tuple[str, ...] | None
    rows: str
    trainer: str
    head: str = LM_HEAD
    lm_loss: bool = False
    imports_datasets: bool = True
    packs: bool = False
    check: Callable[[dict, dict[str, str], Refuse], None] = no_check
    keys: Mapping[str, Key] = field(default_factory=dict)
    inputs: tuple[StageInput, ...] = ()
    plan: Callable[[Mapping[str, Any], Mapping[str, Any], str], dict] | None = None


@dataclass(frozen=True)
class MethodSpec:
    """A fine-tuning method: its cross-key rules (torch-free) and the module that applies it.

    adapter: the module with apply(model, method_cfg, recipe) -> model, and optional hooks the
    worker calls: after_apply(model, plan, rank), prepare_trainer(trainer, recipe), after_save(plan).
    split: split(shape, base tensors, method section) -> (frozen, trainable) tensors, as the memory planner
        counts them (launcher/plan/memory.py): which base tensors train, which the method adds
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
    split: Callable[[Shape, list[Tensor], Mapping[str, Any]], tuple[list[Tensor], list[Tensor]]]
    check: Callable[[dict, dict[str, str], Refuse], None] = no_check
    model_check: Callable[[Mapping[str, Any], dict[str, list[int]], str], str | None] | None = None
    keys: Mapping[str, Key] = field(default_factory=dict)
    continues_adapter: bool = False
    kbit_base: bool = False
    virtual_tokens: bool = False
    notes: Callable[[Mapping[str, Any]], list[str]] = lambda recipe: []


@dataclass(frozen=True)
class EngineSpec:
    """A training engine (how the ranks shard and step): what the planner, the methods and the worker ask of it.

    config: config(recipe, world_size, dtype, on_gpu) -> the engine's config for plan.json (plan[config_key]),
        or None for an engine that needs none
    config_key: the plan.json key of its config ("deepspeed" is None where another engine's config is there)
    memory_options: memory_options(distributed section) -> the (zero stage, offload) options the memory table
        shows and `distributed.zero: auto` chooses from
    label: label(zero, offload) -> an option's name in the memory table and the launch line
    implied_zero: the distributed.zero the engine implies where the recipe sets none (ZeRO stages are DeepSpeed's)
    shards_all: it shards parameters, gradients and optimizer state over the world itself, whatever
        distributed.zero says (FSDP): the memory planner counts it as ZeRO-3 without DeepSpeed's buffers
    master_weights: its optimizer keeps an fp32 master copy of what trains (the memory planner counts it)
    shards_parameters: shards_parameters(distributed section) -> whether each rank holds only part of every
        weight (ZeRO-3): methods that need whole weights at load or save ask this
    live_tensor_save: live_tensor_save(distributed section) -> whether rank 0 saves from the live tensors
        (launcher/checkpoint/model_save.py) instead of the Trainer's gathered copy
    trainer_args: trainer_args(plan) -> its TrainingArguments keywords
    after_process_group: "module:function" the worker calls with the plan once the process group is up, or None
    prepare_trainer: "module:function" the worker calls with (trainer, plan, rank) once the trainer is built, or None
    check: its cross-key rules over the distributed.* keys, check(resolved recipe, origins, refuse)
    """

    config: Callable[[Mapping[str, Any], int, str, bool], dict | None]
    memory_options: Callable[[Mapping[str, Any]], list[tuple[Any, str]]]
    trainer_args: Callable[[Mapping[str, Any]], dict]
    config_key: str = "deepspeed"
    label: Callable[[Any, str], str] = lambda zero, offload: (
        f"ZeRO-{zero}" + ("" if offload == "none" else f" + offload {offload}")
    )
    implied_zero: int | None = None
    shards_all: bool = False
    master_weights: bool = False
    shards_parameters: Callable[[Mapping[str, Any]], bool] = lambda dist: False
    live_tensor_save: Callable[[Mapping[str, Any]], bool] = lambda dist: False
    after_process_group: str | None = None
    prepare_trainer: str | None = None
    check: Callable[[dict, dict[str, str], Refuse], None] = no_check


def sharded_by(dist: dict) -> tuple[str, str, str]:
    """What shards every weight, for a method's refusal: (its key, "key: value", the fix that keeps weights whole)."""
    if engine_spec(dist["engine"]).shards_all:
        return (
            "distributed.engine",
            f"distributed.engine: {dist['engine']}",
            "set distributed.engine: deepspeed with distributed.zero: 2",
        )
    return "distributed.zero", f"distributed.zero: {dist['zero']}", "set distributed.zero: 2"


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
    "grpo": "launcher.stages.grpo_spec",
}
METHODS: dict[str, str] = {
    "full": "launcher.methods.full_spec",
    "freeze": "launcher.methods.freeze_spec",
    "lora": "launcher.methods.lora_spec",
    "prefix": "launcher.methods.prefix_spec",
    "oft": "launcher.methods.oft_spec",
}


ENGINES: dict[str, str] = {
    "deepspeed": "launcher.engines.deepspeed_spec",
    "ddp": "launcher.engines.ddp_spec",
    "fsdp": "launcher.engines.fsdp_spec",
}


def stage_spec(name: str) -> StageSpec:
    """The spec of a registered stage (the recipe's schema admits only those)."""
    return importlib.import_module(STAGES[name]).SPEC


def method_spec(name: str) -> MethodSpec:
    """The spec of a registered method."""
    return importlib.import_module(METHODS[name]).SPEC


def engine_spec(name: str) -> EngineSpec:
    """The spec of a registered engine."""
    return importlib.import_module(ENGINES[name]).SPEC


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
