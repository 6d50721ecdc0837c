"""Atomic checkpoints: a checkpoint-N folder appears in output.dir only once every rank has
written all of it.

The Trainer writes a checkpoint in place, file by file and rank by rank, so a run killed during
a save would leave a checkpoint-N that looks newest and fails to resume. Here the Trainer
writes into output.dir/tmp-checkpoints/checkpoint-N instead (its `_get_output_dir` hook, which
every save path, TRL's included, goes through); after all ranks reach `on_save`, rank 0 fsyncs
the files and renames the folder to output.dir/checkpoint-N (one rename on one filesystem), then
rotates old checkpoints for `train.save_total_limit`. The Trainer's own rotation stays off: it
counts the checkpoint still being written and could delete the newest complete one.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch.distributed as dist
from transformers import TrainerCallback

from launcher.checkpoint.paths import STAGING_DIR, complete_checkpoints
from launcher.checkpoint.staging import publish

STALL_ENV = "LAUNCHER_STALL_SAVE_STEP"  # fault injection: rank 1 stalls at the start of this step's save


def rotate(output_dir: Path, keep: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond `keep`; the newest ones always stay."""
    if keep is None:
        return []
    doomed = [path for _, path in complete_checkpoints(output_dir)[:-keep]]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


class AtomicCheckpoints(TrainerCallback):
    """Stage, publish and rotate the Trainer's checkpoints; `install` hooks it into a Trainer."""

    def __init__(self, output_dir: str | Path, save_total_limit: int | None, rank: int):
        self.output_dir = Path(output_dir)
        self.staging = self.output_dir / STAGING_DIR
        self.keep = save_total_limit
        self.rank = rank
        self.stall_step = int(os.environ.get(STALL_ENV, "-1"))
        self.trainer = None

    def install(self, trainer) -> None:
        if trainer.args.save_total_limit is not None:
            raise ValueError("AtomicCheckpoints rotates checkpoints itself: leave TrainingArguments.save_total_limit unset")
        self.trainer = trainer
        trainer._get_output_dir = self._staging_dir  # every checkpoint save asks this for its parent folder
        trainer.add_callback(self)

    def _staging_dir(self, trial=None) -> str:
        if self.rank == 1 and self.trainer.state.global_step == self.stall_step:
            print(f"[launcher] {STALL_ENV}: rank 1 stalls in the save of step {self.stall_step}", flush=True)
            time.sleep(3600)
        return str(self.staging)

    def on_train_begin(self, args, state, control, **kwargs):
        if self.rank == 0 and self.staging.exists():  # partial saves of a run that was killed
            print(f"[launcher] removing incomplete checkpoints in {self.staging}", flush=True)
            shutil.rmtree(self.staging)

    def on_train_end(self, args, state, control, **kwargs):
        if self.rank == 0 and self.staging.is_dir() and not any(self.staging.iterdir()):
            self.staging.rmdir()

    def on_save(self, args, state, control, **kwargs):
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank has written its shards (bounded by the process group timeout)
        if self.rank != 0:
            return
        name = f"checkpoint-{state.global_step}"
        publish(self.staging / name, self.output_dir / name)
        for path in rotate(self.output_dir, self.keep):
            print(f"[launcher] save_total_limit={self.keep}: deleted {path.name}", flush=True)
