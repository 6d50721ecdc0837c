"""Reference-free preference losses: ORPO (stage orpo, or stage dpo with pref_loss: orpo) and
SimPO (stage dpo, pref_loss: simpo). No reference model is loaded or run.

Both score a reply by its average log-probability per token. The losses are TRL's own:
ORPOTrainer.odds_ratio_loss and CPOTrainer.cpo_loss (loss_type simpo), called on this trainer,
which carries the attributes they read (beta, simpo_gamma, loss_type, ...). TRL's ORPO/CPO
trainers themselves (trl.experimental) re-tokenize text rows; this one takes our rows and
collates them with TRL's DPO collator.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import torch
from transformers import Trainer, TrainingArguments
from trl.experimental.cpo import CPOTrainer
from trl.experimental.orpo import ORPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import add_fused_lm_head

from launcher.data.pairs import pair_data
from launcher.stages.trl_glue import preference_trainer

if TYPE_CHECKING:
    from launcher.plan.types import Plan

REFERENCE_FREE = ("orpo", "simpo")


class ReferenceFreeTrainer(Trainer):
    """Pairwise loss on the policy alone. Batches are [chosen..., rejected...] (TRL's DataCollatorForPreference).

    orpo:  NLL(chosen) - mean(beta * logsigmoid(log odds ratio))        (beta = ORPO's lambda)
    simpo: mean(-logsigmoid(beta * (avg_chosen - avg_rejected) - gamma)) + ftx * NLL(chosen)
    """

    loss_is_scaled_for_ga = False  # a mean per pair: the Trainer divides it by grad_accum

    def __init__(self, *args, loss: str, beta: float, gamma: float = 0.0, ftx: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_type, self.beta, self.simpo_gamma = loss, beta, gamma
        self.ftx = 1.0 if loss == "orpo" else ftx  # ORPO's loss holds the NLL term with weight 1
        self.alpha, self.label_smoothing = 0.0, 0.0  # CPOTrainer.cpo_loss: no AlphaPO transform, no label smoothing
        self._metrics: dict[str, defaultdict[str, list]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        unwrapped = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        add_fused_lm_head(unwrapped)  # per-token log-probs without materialising the logits

    def pair_losses(self, chosen_avg: torch.Tensor, rejected_avg: torch.Tensor):
        """(per-pair losses to minimise, chosen rewards, rejected rewards) from TRL's loss functions."""
        if self.loss_type == "orpo":
            ratio_losses, chosen_rewards, rejected_rewards, _, _ = ORPOTrainer.odds_ratio_loss(
                self, chosen_avg, rejected_avg
            )
            return -ratio_losses, chosen_rewards, rejected_rewards
        return CPOTrainer.cpo_loss(self, chosen_avg, rejected_avg)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        completion = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion == 0, -100)
        outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            labels=labels,
            fused_lm_head=True,
            use_cache=False,
        )
        shifted = completion[:, 1:]
        per_token = outputs.log_probs[:, -shifted.size(1) :]
        sums, counts = per_token.sum(1), shifted.sum(1).clamp(min=1)
        chosen_avg, rejected_avg = (sums / counts).chunk(2)
        losses, chosen_rewards, rejected_rewards = self.pair_losses(chosen_avg, rejected_avg)
        chosen_nll = -sums.chunk(2)[0].sum() / counts.chunk(2)[0].sum()  # mean over the chosen replies' tokens
        loss = losses.mean() + self.ftx * chosen_nll
        gather = self.accelerator.gather_for_metrics
        chosen_rewards, rejected_rewards = gather(chosen_rewards), gather(rejected_rewards)
        metrics = self._metrics[mode]
        metrics["rewards/chosen"].append(chosen_rewards.mean().item())
        metrics["rewards/rejected"].append(rejected_rewards.mean().item())
        metrics["rewards/accuracies"].append((chosen_rewards > rejected_rewards).float().mean().item())
        metrics["rewards/margins"].append((chosen_rewards - rejected_rewards).mean().item())
        metrics["nll_loss"].append(gather(chosen_nll.detach()).mean().item())
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        prefix = "eval_" if mode == "eval" else ""
        logs.update({prefix + key: sum(values) / len(values) for key, values in self._metrics[mode].items() if values})
        self._metrics[mode].clear()
        super().log(logs, start_time)


def build_trainer(plan: Plan, args: TrainingArguments, model, tokenizer, callbacks: list):
    """ORPO (stage orpo or pref_loss orpo) or SimPO (pref_loss simpo) and the data summary."""
    recipe = plan["recipe"]
    train = recipe["train"]
    loss = "orpo" if recipe["stage"] == "orpo" else train["pref_loss"]
    return preference_trainer(
        ReferenceFreeTrainer,
        DataCollatorForPreference,
        pair_data,
        plan,
        args,
        model,
        tokenizer,
        callbacks,
        loss=loss,
        beta=train["pref_beta"],
        gamma=train.get("simpo_gamma", 0.0),
        ftx=train.get("pref_ftx", 0.0),
    )
