"""LoRA through PEFT: rank, alpha, dropout, target modules, variants (DoRA, rsLoRA, PiSSA),
LoRA+ and fully trained extra modules; over a k-bit base this is QLoRA."""

from __future__ import annotations

from peft import LoraConfig, PeftModel, TaskType, get_peft_model, prepare_model_for_kbit_training
from peft.optimizers import create_loraplus_optimizer
from torch import nn


def apply(model: nn.Module, method: dict, recipe: dict) -> PeftModel:
    """Wrap the model with a LoRA adapter; the base stays frozen."""
    if recipe["model"]["quantization"] is not None:
        # QLoRA: freezes the k-bit base, upcasts norms and the output head to fp32, and makes
        # the input embeddings require grads so checkpointed layers pass gradients to the adapter
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=recipe["train"]["gradient_checkpointing"],
            gradient_checkpointing_kwargs={"use_reentrant": False})
    target = method["target"]
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=method["rank"],
        lora_alpha=method["alpha"],
        lora_dropout=method["dropout"],
        # PEFT's "all-linear" = every linear layer (k-bit ones included) except the output head
        target_modules="all-linear" if target == "all" else target,
        use_dora=method["variant"] == "dora",
        use_rslora=method["variant"] == "rslora",
        init_lora_weights="pissa" if method["variant"] == "pissa" else True,
        modules_to_save=method["additional_target"],
    )
    return get_peft_model(model, config)


def _loraplus_factory():
    return create_loraplus_optimizer


def loraplus_optimizer(trainer, ratio: float) -> tuple:
    """Trainer.optimizer_cls_and_kwargs for LoRA+: PEFT's optimizer with the B matrices at
    ratio x lr, built on the optimizer train.optimizer names. Trainer.create_optimizer calls
    the factory on both its plain and its DeepSpeed path (a ready optimizer would be dropped
    by deepspeed_init)."""
    optimizer_cls, kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, trainer.model)
    return _loraplus_factory, {**kwargs, "optimizer_cls": optimizer_cls, "loraplus_lr_ratio": ratio,
                               "loraplus_weight_decay": trainer.args.weight_decay}
