"""Trainer callbacks: throughput scalars and the fault-injection hook the crash test uses."""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist
from transformers import TrainerCallback


class ThroughputCallback(TrainerCallback):
    """Adds tokens/s (all and trained), samples/s and step time, summed over ranks, to each log.

    Registered before the TensorBoard callback so the scalars reach the event file.
    """

    def __init__(self, collator):
        self.collator = collator
        self.last = None  # (time, tokens, trained tokens, step) at the previous log

    def _snapshot(self, step: int) -> tuple[float, float, float, int]:
        counts = torch.tensor([self.collator.tokens, self.collator.trained_tokens], dtype=torch.float64)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)  # on every rank: on_log runs on all of them at the same step
        return time.perf_counter(), counts[0].item(), counts[1].item(), step

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = self._snapshot(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs or self.last is None:
            return
        now = self._snapshot(state.global_step)
        elapsed = max(now[0] - self.last[0], 1e-9)
        steps = max(now[3] - self.last[3], 1)
        world = args.world_size
        logs["tokens_per_second"] = (now[1] - self.last[1]) / elapsed
        logs["trained_tokens_per_second"] = (now[2] - self.last[2]) / elapsed
        logs["samples_per_second"] = steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * world / elapsed
        logs["step_time"] = elapsed / steps
        self.last = now


class FaultInjectionCallback(TrainerCallback):
    """Raise on one rank at one step (env LAUNCHER_FAIL_RANK / LAUNCHER_FAIL_STEP), to test failure handling."""

    def __init__(self, rank: int):
        self.fail_rank = int(os.environ.get("LAUNCHER_FAIL_RANK", "-1"))
        self.fail_step = int(os.environ.get("LAUNCHER_FAIL_STEP", "1"))
        self.rank = rank

    def on_step_end(self, args, state, control, **kwargs):
        if self.rank == self.fail_rank and state.global_step >= self.fail_step:
            raise RuntimeError(f"injected failure on rank {self.rank} at step {state.global_step} "
                               f"(LAUNCHER_FAIL_RANK) at unix time {time.time():.3f}")
