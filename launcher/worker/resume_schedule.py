"""A resumed run's learning rate follows this run's schedule from its first step.

The scheduler is built for this run's length (train.max_steps or epochs) and then takes the checkpoint's state,
and the optimizer takes the checkpoint's learning rates: the first resumed step trains at the rate the old run
had at that step. After a raise of train.max_steps from the old run's end, that rate is the old schedule's last,
0 for cosine and linear; the scheduler corrects it only after that step."""

from __future__ import annotations

from torch.optim.lr_scheduler import LambdaLR
from transformers import TrainerCallback


class ScheduleFromTheResumedStep(TrainerCallback):
    """At the start of a resumed run (the checkpoint loaded), set the optimizer's rates to what this run's schedule
    gives at the resumed step. A schedule that reads metrics (reduce_lr_on_plateau) keeps its restored state."""

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        schedule = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate wraps it under DeepSpeed
        if state.global_step == 0 or not isinstance(schedule, LambdaLR):
            return
        schedule.last_epoch -= 1
        schedule.step()  # recomputes each group's rate at last_epoch from this run's lambdas, as the scheduler does
