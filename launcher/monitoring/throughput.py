"""Trainer callbacks: throughput, MFU, padding efficiency and memory scalars; the guard that no resumed
run steps past its end; the fault-injection hook the crash test uses."""

from __future__ import annotations

import os
import resource
import time
from collections import deque
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from launcher.monitoring.flops import ModelFlops, device_peak_flops

if TYPE_CHECKING:
    from launcher.plan.types import Plan

COUNTERS = ("tokens", "trained_tokens", "slots", "attention_pairs")  # PaddingCollator's counters
GIB = 2**30


def all_reduce(values: list[float], device: torch.device, op=dist.ReduceOp.SUM) -> list[float]:
    """Reduce a few numbers over ranks (on the device: NCCL takes no CPU tensors)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=op)
    return tensor.tolist()


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated GPU memory, or on CPU the process's peak resident set (ru_maxrss is KiB on Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class ConsumedCounts:
    """Counts (COUNTERS) of the training batches the model has actually run, so a rate over an
    interval is not skewed by the dataloader fetching ahead (across epoch ends too).

    Wraps the Trainer's collator while the training dataloader is built (`unwrap` at train
    begin: evaluation dataloaders get a view that queues nothing). Each collated training batch is
    queued; each gradient-enabled training forward takes the oldest one (evaluation forwards
    and reference-model forwards under no_grad take none).
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self.collator = trainer.data_collator
        self.queued: deque[list[int]] = deque(maxlen=64)
        self.totals = [0] * len(COUNTERS)
        trainer.model.register_forward_pre_hook(self._consume)
        trainer.data_collator = self

    def unwrap(self) -> None:
        """Called once the training dataloader exists: evaluation dataloaders collate through a view
        that queues nothing."""
        self.trainer.data_collator = _EvaluationView(self)

    def __getattr__(self, name):  # the wrapped collator's own attributes stay reachable
        if name == "collator":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.collator, name)

    def _cumulative(self) -> list[int]:
        return [getattr(self.collator, name) for name in COUNTERS]

    def __call__(self, examples):
        before = self._cumulative()
        batch = self.collator(examples)
        self.queued.append([after - was for after, was in zip(self._cumulative(), before)])
        return batch

    def add(self, counts: list[int]) -> None:
        """Counts (COUNTERS) of tokens made after collation and run now (PPO's sampled replies)."""
        self.totals = [total + count for total, count in zip(self.totals, counts)]

    def _consume(self, module, args):
        if module.training and torch.is_grad_enabled() and self.queued:
            self.totals = [total + count for total, count in zip(self.totals, self.queued.popleft())]


class _EvaluationView:
    """The Trainer's collator after the training dataloader is built: collates without queuing;
    `add` still reaches the counts."""

    def __init__(self, counts: ConsumedCounts):
        self.counts = counts

    def __call__(self, examples):
        return self.counts.collator(examples)

    def add(self, counts: list[int]) -> None:
        self.counts.add(counts)

    def __getattr__(self, name):
        if name == "counts":
            raise AttributeError(name)
        return getattr(self.counts.collator, name)


class ThroughputCallback(TrainerCallback):
    """Adds to each training log, aggregated over ranks: tokens/s (all and trained), samples/s,
    step time, MFU, padding efficiency and peak memory.

    Registered before the TensorBoard callback so the scalars reach the event file. on_log
    runs on every rank at the same step, so the all-reduces meet. The time spent evaluating
    and writing checkpoints is left out of the rates.
    """

    def __init__(self, counts: ConsumedCounts, flops: ModelFlops, dtype: torch.dtype, rank: int, copies: int = 1):
        self.counts = counts
        self.copies = copies  # ranks that collate each batch (all of a sequence-parallel group under fsdp)
        self.flops = flops
        self.dtype = dtype
        self.rank = rank
        self.total_peak: float | None = None  # sum over ranks of each device's peak FLOP/s
        self.last: tuple[float, list[float], int] | None = None  # (training clock, counts, step) at the last log
        self.paused = 0.0  # seconds spent evaluating and saving
        self.step_end = 0.0

    def _training_clock(self) -> float:
        return time.perf_counter() - self.paused

    def on_train_begin(self, args, state, control, **kwargs):
        self.counts.unwrap()
        peak, source = device_peak_flops(args.device, self.dtype)
        self.total_peak = all_reduce([peak if peak else float("nan")], args.device)[0]
        if self.total_peak != self.total_peak:  # NaN: some device's peak is unknown
            self.total_peak = None
        if self.rank == 0:
            per_token = self.flops.flops(1, 0) / 1e9
            reference = (
                f"{peak / 1e12:.3g} TFLOP/s per device ({source})"
                if peak
                else f"none ({source}): train/mfu is not logged"
            )
            print(
                f"[launcher] MFU: {per_token:.3g} GFLOP per token + attention "
                f"({self.flops.trained:,} trained and {self.flops.frozen:,} frozen linear weights); peak {reference}",
                flush=True,
            )
        self.last = (self._training_clock(), all_reduce(self.counts.totals, args.device), state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.step_end = time.perf_counter()

    def _pause_since_step_end(self) -> None:
        # evaluation and saving run after the step's end (and its log); nothing of the next step has run yet
        now = time.perf_counter()
        self.paused += now - self.step_end
        self.step_end = now

    def on_evaluate(self, args, state, control, **kwargs):
        self._pause_since_step_end()

    def on_save(self, args, state, control, **kwargs):
        self._pause_since_step_end()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs or self.last is None:
            return
        clock, counts, step = self._training_clock(), all_reduce(self.counts.totals, args.device), state.global_step
        memory = all_reduce([peak_memory_bytes(args.device)], args.device, op=dist.ReduceOp.MAX)[0]
        elapsed = max(clock - self.last[0], 1e-9)
        steps = max(step - self.last[2], 1)
        tokens, trained, slots, pairs = ((now - before) / self.copies for now, before in zip(counts, self.last[1]))
        logs["tokens_per_second"] = tokens / elapsed
        logs["trained_tokens_per_second"] = trained / elapsed
        logs["samples_per_second"] = (
            steps
            * args.per_device_train_batch_size
            * args.gradient_accumulation_steps
            * args.world_size
            / self.copies
            / elapsed
        )
        logs["step_time"] = elapsed / steps
        if slots > 0:
            logs["padding_efficiency"] = tokens / slots
        if self.total_peak:
            logs["mfu"] = self.flops.flops(tokens, pairs) / elapsed / self.total_peak
        logs["peak_memory_gib"] = memory / GIB
        self.last = (clock, counts, step)


class FaultInjectionCallback(TrainerCallback):
    """Raise on one rank at one step (env LAUNCHER_FAIL_RANK / LAUNCHER_FAIL_STEP), to test failure handling."""

    def __init__(self, rank: int):
        self.fail_rank = int(os.environ.get("LAUNCHER_FAIL_RANK", "-1"))
        self.fail_step = int(os.environ.get("LAUNCHER_FAIL_STEP", "1"))
        self.rank = rank

    def on_step_end(self, args, state, control, **kwargs):
        if self.rank == self.fail_rank and state.global_step >= self.fail_step:
            raise RuntimeError(
                f"injected failure on rank {self.rank} at step {state.global_step} "
                f"(LAUNCHER_FAIL_RANK) at unix time {time.time():.3f}"
            )


class RunAtItsEnd(Exception):
    """Raised where the Trainer would step past its last step (NoStepPastTheEnd)."""


class NoStepPastTheEnd(TrainerCallback):
    """Resumed from a checkpoint at its last step, the Trainer still takes one more step (its loop asks whether
    to stop only after a step): stop it before that step, on every rank alike (they share the state)."""

    def on_step_begin(self, args, state, control, **kwargs):
        if 0 < state.max_steps <= state.global_step:
            raise RunAtItsEnd(
                f"resumed at step {state.global_step}, the run's last (of {state.max_steps}): no step trained"
            )


def install_monitoring(trainer, plan: Plan, rank: int, terminal: bool, width: int | None):
    """The run-time monitoring callbacks, in on_log order: the throughput scalars first (they add
    to the logs that TensorBoard, the history and the progress display read). Returns the bad-step
    guard, which the worker asks whether the run was stopped."""
    from transformers import PrinterCallback

    from launcher.model.dtypes import torch_dtype
    from launcher.monitoring.flops import model_flops
    from launcher.monitoring.health import BadStepGuard
    from launcher.monitoring.history import HistoryCallback
    from launcher.monitoring.progress import ProgressCallback

    dtype = torch_dtype(plan["dtype"])
    # under fsdp the ranks of a sequence-parallel group collate the same rows (engines/fsdp_sequence_parallel.py)
    copies = plan["mesh"]["sequence_parallel"] if plan["recipe"]["distributed"]["engine"] == "fsdp" else 1
    counts = ConsumedCounts(trainer)
    trainer.add_callback(ThroughputCallback(counts, model_flops(trainer.model), dtype, rank, copies))
    guard = BadStepGuard(trainer, plan["recipe"]["train"]["max_bad_steps"], rank)
    trainer.add_callback(guard)
    trainer.remove_callback(PrinterCallback)  # TrainingArguments(disable_tqdm=True): replaced by ours
    if rank == 0:
        trainer.add_callback(HistoryCallback(plan["output_dir"]))
        trainer.add_callback(ProgressCallback(terminal, width))
    return guard
