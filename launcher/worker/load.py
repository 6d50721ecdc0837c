"""What a rank builds from its plan before training: the TrainingArguments and the model.

Separate from the Run's phases because tests and benchmarks build them on their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from launcher.model.rope import rope_scaled_config
from launcher.recipe.optimizers import trainer_optim
from launcher.recipe.schedule import trainer_schedule
from launcher.registry import SCORE_HEAD, engine_spec, stage_spec
from launcher.util.timeouts import recipe_timeout_s

if TYPE_CHECKING:
    from launcher.plan.types import Plan


def training_arguments(plan: Plan):
    """TrainingArguments from the plan; created before the model so ZeRO-3 partitions at load."""
    from transformers import TrainingArguments

    recipe = plan["recipe"]
    train, dist = recipe["train"], recipe["distributed"]
    on_cpu = plan["world"]["device"] == "cpu"
    has_eval = bool(recipe["data"]["eval_datasets"]) or recipe["data"]["val_size"] > 0
    return TrainingArguments(
        output_dir=plan["output_dir"],
        per_device_train_batch_size=train["micro_batch_size"],
        gradient_accumulation_steps=train["grad_accum"],
        learning_rate=train["lr"],
        num_train_epochs=train["epochs"],
        max_steps=train["max_steps"] or -1,
        **trainer_schedule(train),
        weight_decay=train["weight_decay"],
        max_grad_norm=train["max_grad_norm"],
        optim=trainer_optim(train["optimizer"]),
        activation_checkpointing=train["gradient_checkpointing"],
        activation_checkpointing_kwargs={"use_reentrant": False},
        neftune_noise_alpha=train["neftune_alpha"],
        seed=train["seed"],
        data_seed=train["seed"],
        logging_steps=train["logging_steps"],
        logging_first_step=True,
        save_strategy="steps",
        save_steps=train["save_steps"],
        # with eval data (eval_datasets or val_size): every eval_steps, else at each epoch end
        eval_strategy=("steps" if train["eval_steps"] else "epoch") if has_eval else "no",
        eval_steps=train["eval_steps"],
        per_device_eval_batch_size=train["eval_batch_size"] or train["micro_batch_size"],
        bf16=plan["dtype"] == "bf16",
        fp16=plan["dtype"] == "fp16",
        **engine_spec(dist["engine"]).trainer_args(plan),
        ddp_timeout=int(recipe_timeout_s(plan["recipe"])),
        ddp_backend=plan["world"]["backend"],
        use_cpu=on_cpu,
        report_to=[],  # TensorBoard is added explicitly, after the throughput callback
        disable_tqdm=True,  # rank 0 shows launcher.monitoring.progress instead
        logging_nan_inf_filter=False,  # a NaN loss is logged as NaN (and caught by the bad-step guard)
        remove_unused_columns=False,
        dataloader_num_workers=0,
        save_only_model=False,
    )


def load_model(plan: Plan, model_dir: str):
    """The plan's base model from model_dir: its dtype, attention kernel, head (a score head for a reward
    model), k-bit quantization and fused loss; no method applied yet."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from launcher.model.dtypes import torch_dtype

    recipe = plan["recipe"]
    dtype = torch_dtype(plan["dtype"])
    quant, extra = recipe["model"]["quantization"], {}
    if quant is not None:  # QLoRA: bitsandbytes quantizes the linear layers while loading
        from transformers import BitsAndBytesConfig

        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=quant["bits"] == 4,
            load_in_8bit=quant["bits"] == 8,
            bnb_4bit_quant_type=quant["type"],
            bnb_4bit_use_double_quant=quant["double_quant"],
            bnb_4bit_compute_dtype=dtype,
        )
        # no device_map: transformers quantizes onto the current device, which TrainingArguments set per rank
    rope = plan["context"]["rope_scaling"]
    if rope is not None:
        extra["config"] = rope_scaled_config(model_dir, rope, recipe["model"]["trust_remote_code"])
    auto = AutoModelForCausalLM
    if stage_spec(recipe["stage"]).head == SCORE_HEAD:  # a reward model: the LM with a one-score head on its last token
        auto, extra["num_labels"] = AutoModelForSequenceClassification, 1
    model = auto.from_pretrained(
        model_dir,
        dtype=dtype,
        attn_implementation=plan["kernels"]["attn"],
        trust_remote_code=recipe["model"]["trust_remote_code"],
        **extra,
    )
    if quant is not None and quant["bits"] == 4:  # evaluation runs no-grad forwards on it
        from launcher.compat import bnb_cpu_kernel_where_it_fits

        bnb_cpu_kernel_where_it_fits(model)
    if plan["kernels"]["loss"] == "liger":
        from launcher.kernels.compile import apply_liger

        apply_liger(model)
    return model
