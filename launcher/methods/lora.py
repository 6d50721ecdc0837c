"""LoRA through PEFT: rank, alpha, dropout, target modules, variants (DoRA, rsLoRA, PiSSA),
LoRA+ and fully trained extra modules; over a k-bit base this is QLoRA."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model, prepare_model_for_kbit_training
from peft.optimizers import create_loraplus_optimizer
from peft.utils import SAFETENSORS_WEIGHTS_NAME as ADAPTER_WEIGHTS
from safetensors.torch import load_file, save_file
from torch import nn

from launcher.checkpoint.paths import PISSA_INIT_DIR
from launcher.errors import MethodError
from launcher.model.module_names import lora_targets_error
from launcher.registry import SCORE_HEAD, stage_spec

if TYPE_CHECKING:
    from launcher.plan.types import Plan
    from launcher.recipe.types import MethodSection, Recipe

PISSA_SVD = "pissa_niter_16"  # PEFT's fast randomized SVD (16 subspace iterations), as LLaMA-Factory defaults to


def prepare_kbit_base(model: nn.Module, recipe: Recipe) -> nn.Module:
    """Over a k-bit base (QLoRA, QOFT): freeze it, upcast norms and the output head to fp32, and make the input
    embeddings require grads so checkpointed layers pass gradients to the adapter. Other bases as they are."""
    if recipe["model"]["quantization"] is None:
        return model
    return prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=recipe["train"]["gradient_checkpointing"],
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )


def apply(model: nn.Module, method: MethodSection, recipe: Recipe) -> PeftModel:
    """Wrap the model with a LoRA adapter; the base stays frozen."""
    model = prepare_kbit_base(model, recipe)
    target = method["target"]
    if target != "all":  # the planner checked local and builtin models; a hub model is first seen here
        shapes = {
            name: list(getattr(p, "ds_shape", p.shape)) for name, p in model.named_parameters()
        }  # ZeRO-3: full shape
        error = lora_targets_error("method.target", target, shapes)
        if error:
            raise MethodError(error)
    config = LoraConfig(
        # SEQ_CLS (the reward model) keeps the new score head in modules_to_save, so the adapter holds it
        task_type=TaskType.SEQ_CLS if stage_spec(recipe["stage"]).head == SCORE_HEAD else TaskType.CAUSAL_LM,
        r=method["rank"],
        lora_alpha=method["alpha"],
        lora_dropout=method["dropout"],
        # PEFT's "all-linear" = every linear layer (k-bit ones included) except the output head
        target_modules="all-linear" if target == "all" else target,
        use_dora=method["variant"] == "dora",
        use_rslora=method["variant"] == "rslora",
        init_lora_weights=PISSA_SVD if method["variant"] == "pissa" else True,
        modules_to_save=method["additional_target"],
    )
    if method["variant"] == "pissa":  # the randomized SVD must give every rank (and a resume) the same split
        torch.manual_seed(recipe["train"]["seed"])
    return get_peft_model(model, config)


def convert_pissa_to_lora(adapter_dir: str | Path, init_dir: str | Path) -> None:
    """Rewrite a trained PiSSA adapter in place as a plain LoRA adapter over the original base.

    PiSSA trains over W_res = W - B0 A0, so the trained model is W + (B A - B0 A0): that is a
    rank-2r LoRA with A' = [A; A0] and B' = [B, -B0] (PEFT's own conversion does the same), and
    alpha doubles so that alpha / r keeps the trained scaling. Fully trained extra modules stay.
    """
    adapter_dir = Path(adapter_dir)
    trained, initial = load_file(adapter_dir / ADAPTER_WEIGHTS), load_file(Path(init_dir) / ADAPTER_WEIGHTS)
    for name, value in trained.items():
        if ".lora_A." in name:
            trained[name] = torch.cat([value, initial[name]], dim=0)
        elif ".lora_B." in name:
            trained[name] = torch.cat([value, -initial[name]], dim=1)
    save_file(trained, adapter_dir / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    config_file = adapter_dir / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config.update(
        r=2 * config["r"],
        lora_alpha=2 * config["lora_alpha"] if not config["use_rslora"] else math.sqrt(2) * config["lora_alpha"],
        init_lora_weights=True,
    )
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _loraplus_factory():
    return create_loraplus_optimizer


def loraplus_optimizer(trainer, ratio: float) -> tuple:
    """Trainer.optimizer_cls_and_kwargs for LoRA+: PEFT's optimizer with the B matrices at
    ratio x lr, built on the optimizer train.optimizer names. Trainer.create_optimizer calls
    the factory on both its plain and its DeepSpeed path (a ready optimizer would be dropped
    by deepspeed_init)."""
    optimizer_cls, kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, trainer.model)
    return _loraplus_factory, {
        **kwargs,
        "optimizer_cls": optimizer_cls,
        "loraplus_lr_ratio": ratio,
        "loraplus_weight_decay": trainer.args.weight_decay,
    }


# The worker's hooks (launcher/registry.py MethodSpec)


def after_apply(model, plan: Plan, rank: int) -> None:
    """PiSSA: save the initial adapter, to convert the trained one back to plain LoRA at the end."""
    if plan["recipe"]["method"]["variant"] == "pissa" and rank == 0:
        model.save_pretrained(Path(plan["output_dir"]) / PISSA_INIT_DIR)


def prepare_trainer(trainer, recipe: Recipe) -> None:
    """LoRA+: the B matrices' learning rate raised by method.loraplus_ratio."""
    if recipe["method"]["loraplus_ratio"] is not None:
        trainer.optimizer_cls_and_kwargs = loraplus_optimizer(trainer, recipe["method"]["loraplus_ratio"])


def after_save(plan: Plan) -> None:
    """PiSSA (on the saving rank, after the model is saved): the adapter rewritten as plain LoRA over the original base."""
    if plan["recipe"]["method"]["variant"] == "pissa":
        convert_pissa_to_lora(plan["output_dir"], Path(plan["output_dir"]) / PISSA_INIT_DIR)
        print("[launcher] PiSSA adapter converted to plain LoRA (rank doubled) over the original base", flush=True)
