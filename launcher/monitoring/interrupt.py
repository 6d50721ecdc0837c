"""SIGTERM stops training at the next step boundary, with a checkpoint to resume from.

The launcher's stop (SIGTERM or Ctrl-C to `launch`, SLURM's preemption or time limit) reaches
the ranks as SIGTERM through their engine. Dying at once would lose everything since the last
checkpoint; instead the handler only raises a flag. At each step end the ranks all-reduce it
(every rank must stop at the same step: a rank that left early would hang the others'
collectives), and once it is set the Trainer saves checkpoint-<step> (complete or absent, see
launcher/checkpoint/atomic.py) and leaves the loop. The worker then skips the final save (the
run did not finish) and exits 143; `launch` with the same recipe resumes from the checkpoint
(train.resume: auto). The launcher SIGKILLs what is left after its grace period
(backends/local.py GRACE_SECONDS): a save that takes longer is lost, never half-written.

Outside the training loop SIGTERM keeps its default action: before it nothing is worth saving,
after it there is no step end to stop at.
"""

from __future__ import annotations

import os
import signal

import torch.distributed as dist
from transformers import TrainerCallback

from launcher.errors import RunStopped
from launcher.monitoring.throughput import all_reduce


class StoppedBySignal(RunStopped):
    """Raised by the worker after a SIGTERM stop; the message names the checkpoint."""

    code = 128 + signal.SIGTERM


class StopOnSignal(TrainerCallback):
    def __init__(self, rank: int):
        self.rank = rank
        self.requested = False  # set by the signal handler on this rank
        self.stopped_at: str | None = None  # the checkpoint the stop saved

    def _request(self, signum, _frame) -> None:
        self.requested = True

    def on_train_begin(self, args, state, control, **kwargs):
        signal.signal(signal.SIGTERM, self._request)

    def on_train_end(self, args, state, control, **kwargs):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # past the loop there is no step end to stop at

    def on_step_end(self, args, state, control, **kwargs):
        requested = all_reduce([float(self.requested)], args.device, op=dist.ReduceOp.MAX)[0] > 0
        if requested and self.stopped_at is None:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")

    def message(self) -> str:
        return (
            f"stopped by SIGTERM: {self.stopped_at} holds the state to resume from; "
            "run the same recipe again to continue (train.resume=auto)"
        )
