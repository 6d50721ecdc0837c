"""Atomic checkpoints: a checkpoint-N folder appears in output.dir only once every rank has
written all of it.

The Trainer writes a checkpoint in place, file by file and rank by rank, so a run killed during
a save would leave a checkpoint-N that looks newest and fails to resume. Here the Trainer
writes into output.dir/tmp-checkpoints/checkpoint-N instead (its `_get_output_dir` hook, which
every save path, TRL's included, goes through); after all ranks reach `on_save`, rank 0 fsyncs
the files and renames the folder to output.dir/checkpoint-N (one rename on one filesystem), then
rotates old checkpoints for `train.save_total_limit`. The Trainer's own rotation stays off: it
counts the checkpoint still being written and could delete the newest complete one.

Before the rename the publisher writes the checkpoint's checksum manifest (manifest.py), which
`launch` checks before it resumes from it.

Several nodes: each node's local rank 0 drops a mark `tmp-checkpoints/.nodes/node-K` at the start
of training; after a barrier, a node that sees the mark of a lower node shares that node's disk and
leaves publishing to it. So on a shared output.dir node 0 alone publishes (no two nodes rename the
same folder), and without one every node publishes and rotates its own ranks' files, the same way.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist
from transformers import TrainerCallback

from launcher.checkpoint.manifest import write_manifest
from launcher.checkpoint.paths import STAGING_DIR, complete_checkpoints
from launcher.checkpoint.staging import publish
from launcher.compat import stage_checkpoints

STALL_ENV = "LAUNCHER_STALL_SAVE_STEP"  # fault injection: rank 1 stalls at the start of this step's save
NODE_MARKS = ".nodes"  # inside tmp-checkpoints: one mark per node that sees this disk


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # bounded by the process group timeout


def rotate(output_dir: Path, keep: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond `keep`; the newest ones always stay."""
    if keep is None:
        return []
    doomed = [path for _, path in complete_checkpoints(output_dir)[:-keep]]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


class AtomicCheckpoints(TrainerCallback):
    """Stage, publish and rotate the Trainer's checkpoints; `install` hooks it into a Trainer.

    `run` is what the manifests record (resume.run_identity, with this run's run_id); its
    nproc_per_node places the rank on its node."""

    def __init__(self, output_dir: str | Path, save_total_limit: int | None, rank: int, run: dict):
        self.output_dir = Path(output_dir)
        self.staging = self.output_dir / STAGING_DIR
        self.keep = save_total_limit
        self.rank = rank
        self.run = run
        self.node, self.local_rank = divmod(rank, run["nproc_per_node"])
        self.nodes: list[int] = []  # the nodes whose files this node publishes; empty: another node does
        self.stall_step = int(os.environ.get(STALL_ENV, "-1"))
        self.trainer: Any = None  # the transformers Trainer, set by install()

    def install(self, trainer) -> None:
        if trainer.args.save_total_limit is not None:
            raise ValueError(
                "AtomicCheckpoints rotates checkpoints itself: leave TrainingArguments.save_total_limit unset"
            )
        self.trainer = trainer
        stage_checkpoints(trainer, self._staging_dir)  # every checkpoint save asks this for its parent folder
        trainer.add_callback(self)

    def _staging_dir(self, trial=None) -> str:
        if self.rank == 1 and self.trainer.state.global_step == self.stall_step:
            print(f"[launcher] {STALL_ENV}: rank 1 stalls in the save of step {self.stall_step}", flush=True)
            time.sleep(3600)
        return str(self.staging)

    def on_train_begin(self, args, state, control, **kwargs):
        marks = self.staging / NODE_MARKS
        if self.local_rank == 0:  # partial saves of a run that was killed; glob: another node may be removing them
            if any(path.name != NODE_MARKS for path in self.staging.glob("*")):
                print(f"[launcher] removing incomplete checkpoints in {self.staging}", flush=True)
            shutil.rmtree(self.staging, ignore_errors=True)
        _barrier()
        if self.local_rank == 0:
            marks.mkdir(parents=True, exist_ok=True)
            (marks / f"node-{self.node}").touch()
        _barrier()
        if self.local_rank == 0:
            seen = sorted(int(path.name.removeprefix("node-")) for path in marks.iterdir())
            self.nodes = seen if seen[0] == self.node else []

    def on_train_end(self, args, state, control, **kwargs):
        marks = self.staging / NODE_MARKS
        if self.local_rank == 0:
            (marks / f"node-{self.node}").unlink(missing_ok=True)
        _barrier()
        if self.nodes:
            for folder in (marks, self.staging):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()

    def on_save(self, args, state, control, **kwargs):
        _barrier()  # every rank has written its shards
        name = f"checkpoint-{state.global_step}"
        if not self.nodes or not (self.staging / name).is_dir():
            return
        write_manifest(self.staging / name, self.node, self.nodes, self.run)
        publish(self.staging / name, self.output_dir / name)
        for path in rotate(self.output_dir, self.keep):
            print(f"[launcher] save_total_limit={self.keep}: deleted {path.name}", flush=True)
