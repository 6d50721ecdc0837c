"""Optimizers, learning-rate schedules and NEFTune: the recipe's train.optimizer / scheduler /
neftune_alpha reach the Trainer the worker builds (TrainingArguments from the plan), in one
process. The 2-process DeepSpeed path of the same TrainingArguments is covered by the e2e runs."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import Trainer, TrainerCallback

from launcher.data.collate import PaddingCollator
from launcher.plan import build_plan
from launcher.recipe.load import load_recipe
from launcher.worker.load import training_arguments
from tests.conftest import ROOT
from tests.methods.test_methods import _base
from tests.worker.test_e2e import TINY

LR, STEPS, WARMUP = 1e-3, 20, 0.2


def _trainer(tmp_path, overrides: list[str], rows: list[dict] | None = None, callbacks=()) -> Trainer:
    from launcher.methods import apply_method

    recipe = load_recipe(
        ROOT / TINY,
        [
            "distributed.engine=ddp",
            "distributed.zero=0",
            f"train.lr={LR}",
            f"train.warmup_ratio={WARMUP}",
            f"output.dir={tmp_path}",
            *overrides,
        ],
    )
    plan = build_plan(recipe)
    plan["world"]["backend"] = None  # one process here, not started by torchrun: no process group to join
    model = apply_method(_base(), recipe)
    return Trainer(
        model=model,
        args=training_arguments(plan),
        train_dataset=rows,
        data_collator=PaddingCollator(0, "none", mask_dtype=torch.float32),
        callbacks=list(callbacks),
    )


@pytest.mark.multiproc
@pytest.mark.parametrize(
    "name,cls",
    [
        ("adamw_torch", "torch.optim.adamw.AdamW"),
        ("adamw_8bit", "bitsandbytes.optim.adamw.AdamW"),  # optim_bits=8
        ("paged_adamw_8bit", "bitsandbytes.optim.adamw.AdamW"),
        ("adafactor", "transformers.optimization.Adafactor"),
    ],
)
def test_train_optimizer_selects_that_optimizer_and_it_steps(name, cls, tmp_path):
    trainer = _trainer(tmp_path, [f"train.optimizer={name}", "method={name: full}"])
    optimizer = trainer.create_optimizer()
    assert f"{type(optimizer).__module__}.{type(optimizer).__name__}" == cls
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in trainable}
    ids = torch.tensor([[1, 5, 9, 300, 2]])
    before = [p.detach().clone() for p in trainable]
    trainer.model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, trainable)), f"{name} changed no parameter"
    if "8bit" in name:  # the moments really are kept in 8 bits; bitsandbytes keeps tensors under 4096 values
        # in fp32, and the Trainer keeps embeddings in 32-bit state for stability
        embedding = trainer.model.get_input_embeddings().weight
        large = [state for p, state in optimizer.state.items() if p.numel() >= 4096 and p is not embedding]
        assert large and all(state["state1"].dtype == torch.uint8 for state in large)
        assert optimizer.state[embedding]["state1"].dtype == torch.float32
        assert optimizer.is_paged == name.startswith("paged")


def _expected_lr(schedule: str, step: int) -> float:
    """The schedules' definitions, by hand: linear warmup, then constant, linear decay or half a cosine."""
    warmup = math.ceil(WARMUP * STEPS)
    if step < warmup:
        return LR * step / warmup
    progress = (step - warmup) / (STEPS - warmup)
    return {
        "constant_with_warmup": LR,
        "linear": LR * (1 - progress),
        "cosine": LR * 0.5 * (1 + math.cos(math.pi * progress)),
    }[schedule]


@pytest.mark.unit
@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant_with_warmup"])
def test_scheduler_follows_its_definition(schedule, tmp_path):
    trainer = _trainer(tmp_path, [f"train.scheduler={schedule}"])
    scheduler = trainer.create_scheduler(num_training_steps=STEPS, optimizer=trainer.create_optimizer())
    lrs = []
    for _ in range(STEPS):
        lrs.append(scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([_expected_lr(schedule, k) for k in range(STEPS)], abs=1e-12)


class _EmbeddingProbe(TrainerCallback):
    """Records what the input embedding layer hands to the decoder during training (hooks
    registered at train begin run after NEFTune's, which the Trainer adds just before)."""

    def __init__(self):
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        embed = model.get_input_embeddings()
        embed.register_forward_hook(lambda module, inputs, out: self.seen.append((inputs[0], out.detach().clone())))


@pytest.mark.multiproc
def test_neftune_adds_uniform_noise_of_alpha_over_sqrt_length_times_width(tmp_path):
    alpha, ids = 5.0, [1, 7, 42, 300, 1000, 5, 2]
    probe = _EmbeddingProbe()
    trainer = _trainer(
        tmp_path,
        [
            f"train.neftune_alpha={alpha}",
            "train.max_steps=1",
            "train.grad_accum=1",
            "train.gradient_checkpointing=false",
        ],
        rows=[{"input_ids": ids, "labels": ids}],
        callbacks=[probe],
    )
    trainer.train()
    token_ids, noisy = probe.seen[0]
    clean = trainer.model.get_input_embeddings().weight.detach()[token_ids]
    noise = noisy - clean
    bound = alpha / math.sqrt(noisy.shape[1] * noisy.shape[2])  # NEFTune: U(-a/sqrt(L d), a/sqrt(L d))
    assert noise.abs().max() <= bound * (1 + 1e-5)
    assert noise.abs().max() > 0.9 * bound and noise.std() > 0.5 * bound / math.sqrt(3)
