"""Rank 0's progress display, in place of the Trainer's tqdm bar and dict printer.

Each training log and each evaluation prints one plain line, which reads well in a file (CI,
`> file`, a SLURM log, the rank log). On a terminal those lines scroll above a rich progress
bar (step/total, loss, tokens/s, elapsed, ETA). Other ranks show nothing.
"""

from __future__ import annotations

import time
from datetime import timedelta

from transformers import TrainerCallback

from launcher.monitoring.history import elapsed_and_eta


def _duration(seconds: float | None) -> str:
    return "?" if seconds is None else str(timedelta(seconds=round(seconds)))


def train_line(logs: dict) -> str:
    parts = [f"loss {logs['loss']:.4f}"]
    if "learning_rate" in logs:
        parts.append(f"lr {logs['learning_rate']:.3g}")
    if "grad_norm" in logs:
        parts.append(f"grad_norm {logs['grad_norm']:.3g}")
    if "tokens_per_second" in logs:
        parts.append(f"{logs['tokens_per_second']:,.0f} tokens/s")
    if "mfu" in logs:
        parts.append(f"MFU {logs['mfu']:.1%}")
    return " | ".join(parts)


class ProgressCallback(TrainerCallback):
    def __init__(self, terminal: bool, width: int | None = None):
        self.terminal = terminal
        self.width = width
        self.progress = None
        self.task = None
        self.started = (time.time(), 0)

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = (time.time(), state.global_step)
        if not self.terminal:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(
            force_terminal=True, width=self.width
        )  # stdout is the rank-log pipe, the user sees a terminal
        self.progress = Progress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            refresh_per_second=2,
        )
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, stats="")
        self.progress.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not ("loss" in logs or "eval_loss" in logs):
            return
        if "loss" in logs and self.progress is not None:
            self.progress.update(self.task, stats=train_line(logs))
        elapsed, eta = elapsed_and_eta(state, self.started)
        if "loss" in logs:
            line = (
                f"[train] step {state.global_step}/{state.max_steps} | {train_line(logs)} | "
                f"elapsed {_duration(elapsed)} | ETA {_duration(eta)}"
            )
        else:
            line = f"[eval] step {state.global_step}/{state.max_steps} | eval_loss {logs['eval_loss']:.4f}"
        if self.progress is not None:
            self.progress.console.print(line, markup=False, highlight=False)  # above the bar; kept in the rank log
        else:
            print(line, flush=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
