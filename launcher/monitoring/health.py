"""Stop training on garbage: a step whose loss or gradient norm is NaN/Inf is a bad step; after
`train.max_bad_steps` consecutive ones the run saves a checkpoint and stops.

Guarantee: a bad step's update is never applied, so the checkpoint written at the stop holds
the model and optimizer state of the last good step. DeepSpeed ZeRO skips a step whose
gradient norm is not finite (ZeRO-3 always; ZeRO-1/2 in fp32 and fp16, and in bf16 when the
config's bf16.check_grad_overflow is set, as the plan does); without DeepSpeed this guard
drops the gradients before the optimizer step, so the optimizer does not touch any weight.
The one engine path that applies a bad update is DeepSpeed with ZeRO-0 in fp32 (a plain
optimizer): there the guard stops at the first bad step without saving, and the latest
checkpoint saved before it is the last good state.
What still advances on a bad step: the step counter, the data position and (without
DeepSpeed) the learning-rate schedule.

In fp16 a non-finite gradient with a finite loss is the loss scaler's business (it skips the
step and lowers the scale; a few such steps are normal while it calibrates), so there only a
non-finite loss makes a step bad.

Fault injection for the tests: LAUNCHER_NAN_STEP=k makes the loss NaN on every step from
optimizer step k on (on rank LAUNCHER_NAN_RANK only, when set).
"""

from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from launcher.errors import RunStopped

NAN_STEP_ENV, NAN_RANK_ENV = "LAUNCHER_NAN_STEP", "LAUNCHER_NAN_RANK"


class TrainingStopped(RunStopped):
    """Raised by the worker after the guard stopped the run; the message says why and what to do."""

    code = 3


def _padding_shard(kwargs: dict) -> bool:
    """A sequence-parallel shard (its labels come pre-shifted) without one trained token: its own mean loss is
    0/0, which the group's token-weighted loss gives weight 0 (transformers' deepspeed_sp_compute_loss)."""
    shift_labels = kwargs.get("shift_labels")
    return shift_labels is not None and not bool((shift_labels != -100).any())


class BadStepGuard(TrainerCallback):
    """Watches every optimizer step's loss (all micro batches, all ranks) and gradient norm."""

    def __init__(self, trainer, max_bad_steps: int, rank: int):
        self.trainer = trainer
        self.max_bad_steps = max_bad_steps
        self.rank = rank
        self.loss_bad = torch.zeros((), dtype=torch.bool)  # any non-finite micro-batch loss in this step
        self.bad_steps: list[int] = []  # the current run of consecutive bad steps
        self.last_good_step = 0
        self.stopped_at: str | None = None  # the checkpoint saved at the stop
        self.damaged = False  # the engine applied a bad update (DeepSpeed ZeRO-0 fp32)
        self.step_is_bad = False
        self.check_grad_norm = not trainer.args.fp16
        nan_rank = int(os.environ.get(NAN_RANK_ENV, "-1"))
        self.nan_from = int(os.environ.get(NAN_STEP_ENV, "0")) if nan_rank in (-1, rank) else 0
        trainer.model.register_forward_hook(self._check_loss, with_kwargs=True)

    def _check_loss(self, module, args, kwargs, output):
        loss = getattr(output, "loss", None)
        if not module.training or loss is None or _padding_shard(kwargs):
            return None
        if self.nan_from and self.trainer.state.global_step + 1 >= self.nan_from:
            output.loss = loss * float("nan")  # fault injection: the poisoned loss also poisons the gradients
        self.loss_bad = self.loss_bad.to(loss.device) | ~torch.isfinite(output.loss.detach())
        return output

    def _grad_norm(self) -> float:
        """This step's global gradient norm: DeepSpeed already stepped inside backward and kept it;
        otherwise the gradients are still in the parameters."""
        if self.trainer.is_deepspeed_enabled:
            norm = self.trainer.model_wrapped.get_global_grad_norm()
            return 0.0 if norm is None else float(norm)
        grads = [p.grad for p in self.trainer.model.parameters() if p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        bad = self.loss_bad.to(args.device).to(torch.float32)
        if self.check_grad_norm and not math.isfinite(self._grad_norm()):
            bad += 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)  # every rank must take the same decision
        self.loss_bad = torch.zeros((), dtype=torch.bool)
        self.step_is_bad = bool(bad.item() > 0)
        if self.step_is_bad and self.trainer.is_deepspeed_enabled:
            self.damaged = self.trainer.model_wrapped.was_step_applied()
        elif self.step_is_bad:
            self.trainer.model.zero_grad(set_to_none=True)  # the optimizer skips parameters without gradients

    def on_step_end(self, args, state, control, **kwargs):
        if not self.step_is_bad:
            self.bad_steps, self.last_good_step = [], state.global_step
            return
        self.bad_steps.append(state.global_step)
        if self.rank == 0:
            outcome = "update APPLIED (DeepSpeed ZeRO-0 in fp32)" if self.damaged else "update skipped"
            print(
                f"[launcher] step {state.global_step}: loss or gradient norm is NaN/Inf, {outcome} "
                f"({len(self.bad_steps)} consecutive bad steps, stop at train.max_bad_steps={self.max_bad_steps})",
                flush=True,
            )
        if self.damaged:
            control.should_training_stop = True  # no save: the weights already took the bad update
        elif len(self.bad_steps) >= self.max_bad_steps:
            control.should_save = True  # collective: all ranks agree, the flag was all-reduced
            control.should_training_stop = True
            self.stopped_at = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")

    @property
    def stopped(self) -> bool:
        return self.damaged or self.stopped_at is not None

    def stop_message(self) -> str:
        steps = f"{self.bad_steps[0]}-{self.bad_steps[-1]}" if len(self.bad_steps) > 1 else f"{self.bad_steps[0]}"
        if self.damaged:
            from launcher.checkpoint.paths import latest_checkpoint

            latest = latest_checkpoint(self.trainer.args.output_dir)
            where = (
                "DeepSpeed applied the bad update (ZeRO-0 in fp32 does not skip non-finite steps), so nothing "
                f"was saved: the last good state is {latest or 'not saved (no checkpoint yet)'}"
            )
        else:
            where = (
                f"{self.stopped_at} holds the model and optimizer state of the last good step "
                f"{self.last_good_step} (the bad updates were skipped)"
            )
        return (
            f"stopped: loss or gradient norm NaN/Inf at {len(self.bad_steps)} consecutive steps ({steps}; "
            f"train.max_bad_steps={self.max_bad_steps}). {where}. Fix: lower train.lr or train.max_grad_norm, "
            "check the data near these steps, or train in bf16/fp32 instead of fp16; then resume (train.resume=auto)"
        )
